//! The `Cgroup` handle on synthetic trees: errors name the file and the
//! problem, races are distinct variants, and a cgroup removed and recreated
//! under the same name is never mixed up with the new one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use oomkit::cgroup::{CgroupFs, Limit, files};
use oomkit::{Error, ParseErrorKind};

fn tree() -> (tempfile::TempDir, CgroupFs) {
    let dir = tempfile::tempdir().unwrap();
    let cg = dir.path().join("job");
    std::fs::create_dir(&cg).unwrap();
    std::fs::write(cg.join("cgroup.procs"), "").unwrap();
    std::fs::write(cg.join("memory.current"), "1048576\n").unwrap();
    std::fs::write(cg.join("memory.max"), "max\n").unwrap();
    std::fs::write(cg.join("memory.high"), "123x\n").unwrap();
    std::fs::write(cg.join("memory.events"), "low 0\nhigh 1\nmax oops\n").unwrap();
    let fs = CgroupFs::from_dir_unchecked(dir.path());
    (dir, fs)
}

#[test]
fn typed_reads_and_writes() {
    let (dir, fs) = tree();
    let cg = fs.open(dir.path().join("job")).unwrap();
    assert_eq!(cg.memory_current().unwrap(), 1 << 20);
    assert_eq!(cg.memory_max().unwrap(), Limit::Max);
    cg.set_memory_high(Limit::Bytes(64 << 20)).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("job/memory.high")).unwrap(),
        "67108864"
    );
    assert_eq!(cg.hierarchy_path(), Path::new("/job"));
}

#[test]
fn malformed_values_name_file_and_line() {
    let (dir, fs) = tree();
    let cg = fs.open(dir.path().join("job")).unwrap();
    let e = cg.memory_high().unwrap_err();
    match &e {
        Error::Parse { path, source } => {
            assert!(path.ends_with("job/memory.high"));
            assert_eq!(source.line, 1);
            assert_eq!(source.kind, ParseErrorKind::InvalidNumber);
        }
        other => panic!("{other:?}"),
    }
    let msg = cg.memory_events().unwrap_err().to_string();
    assert!(
        msg.contains("memory.events") && msg.contains("line 3"),
        "{msg}"
    );
}

#[test]
fn missing_file_is_unsupported_and_names_it() {
    let (dir, fs) = tree();
    let cg = fs.open(dir.path().join("job")).unwrap();
    let e = cg.memory_peak().unwrap_err();
    assert!(e.is_unsupported(), "{e:?}");
    assert!(e.to_string().contains("memory.peak"), "{e}");
    assert!(!cg.has_file(files::CGROUP_KILL).unwrap());
    let e = cg.write_kill().unwrap_err();
    assert!(
        e.is_unsupported(),
        "no cgroup.kill: the caller falls back, nothing is killed"
    );
}

#[test]
fn removed_cgroup_is_gone_even_if_recreated_under_the_same_name() {
    let (dir, fs) = tree();
    let job = dir.path().join("job");
    let cg = fs.open(&job).unwrap();
    std::fs::remove_dir_all(&job).unwrap();
    let e = cg.memory_current().unwrap_err();
    assert!(e.is_gone(), "{e:?}");
    // A new cgroup under the same name: the old handle must not read it.
    std::fs::create_dir(&job).unwrap();
    std::fs::write(job.join("cgroup.procs"), "").unwrap();
    std::fs::write(job.join("memory.current"), "999\n").unwrap();
    let e = cg.memory_current().unwrap_err();
    assert!(
        e.is_gone(),
        "the old handle reads through its own fd: {e:?}"
    );
    let fresh = fs.open(&job).unwrap();
    assert_eq!(fresh.memory_current().unwrap(), 999);
}

#[test]
fn paths_outside_the_mount_or_with_dotdot_are_refused() {
    let (dir, fs) = tree();
    for bad in [
        dir.path().join("job/../job"),
        Path::new("/etc").to_path_buf(),
        Path::new("relative/job").to_path_buf(),
    ] {
        let e = fs.open(&bad).unwrap_err();
        assert!(matches!(e, Error::InvalidPath { .. }), "{bad:?}: {e:?}");
    }
    let job = fs.open(dir.path().join("job")).unwrap();
    for bad in ["..", ".", "a/b", ""] {
        assert!(
            matches!(job.child(bad).unwrap_err(), Error::InvalidPath { .. }),
            "{bad:?}"
        );
    }
    assert!(job.child("nope").unwrap_err().is_gone());
}

#[test]
fn real_cgroup2_check_refuses_other_filesystems() {
    // `Cgroup::open` verifies the filesystem magic; a temp dir is not cgroup2.
    let dir = tempfile::tempdir().unwrap();
    let e = oomkit::cgroup::Cgroup::open(dir.path()).unwrap_err();
    assert!(matches!(e, Error::InvalidPath { .. }), "{e:?}");
}

#[test]
fn children_and_pids() {
    let (dir, fs) = tree();
    let root = fs.root().unwrap();
    std::fs::create_dir(dir.path().join("b")).unwrap();
    std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
    assert_eq!(
        root.children().unwrap(),
        vec![std::ffi::OsString::from("b"), "job".into()]
    );
    // A large cgroup.procs is read in chunks without losing lines.
    let pids: Vec<i32> = (1..5000).collect();
    let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
    std::fs::write(dir.path().join("job/cgroup.procs"), text).unwrap();
    let job = fs.open(dir.path().join("job")).unwrap();
    assert_eq!(job.procs().unwrap(), pids);
    std::fs::write(dir.path().join("job/cgroup.procs"), "12\nx\n").unwrap();
    let msg = job.procs().unwrap_err().to_string();
    assert!(
        msg.contains("cgroup.procs") && msg.contains("line 2"),
        "{msg}"
    );
}
