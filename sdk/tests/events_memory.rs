//! `memory.events` and `cgroup.events` sources on a synthetic tree of plain
//! files: the re-read and diff logic, and what the watcher does with files
//! that cannot be polled. (Kernfs wakeups need a real cgroup2 mount: VM.)
// A test crate: its helper functions (outside `#[test]`) may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use oomkit::cgroup::{CgroupFs, MemoryEventKind};
use oomkit::events::{CgroupEventsWatch, MemoryEventsWatch, Scope, Watcher};
use oomkit::{Error, Op};

fn tree() -> (tempfile::TempDir, CgroupFs) {
    let dir = tempfile::tempdir().unwrap();
    let fs = CgroupFs::from_dir_unchecked(dir.path());
    (dir, fs)
}

fn write(dir: &Path, name: &str, data: &str) {
    std::fs::write(dir.join(name), data).unwrap();
}

const V6_1: &str = "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n";

#[test]
fn hierarchical_and_local_are_separate_files() {
    let (dir, fs) = tree();
    let cg_dir = dir.path().join("job");
    std::fs::create_dir(&cg_dir).unwrap();
    write(&cg_dir, "cgroup.procs", "");
    write(&cg_dir, "memory.events", V6_1);
    write(&cg_dir, "memory.events.local", V6_1);
    let cg = fs.open(&cg_dir).unwrap();
    let mut h = MemoryEventsWatch::open(&cg, Scope::Hierarchical).unwrap();
    let mut l = MemoryEventsWatch::open(&cg, Scope::Local).unwrap();
    assert_eq!(h.scope(), Scope::Hierarchical);
    assert!(h.path().ends_with("job/memory.events"));
    assert!(l.path().ends_with("job/memory.events.local"));

    // A kill in a descendant: only the hierarchical file moves.
    write(
        &cg_dir,
        "memory.events",
        "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\noom_group_kill 0\n",
    );
    let ch = h.refresh().unwrap().expect("counters rose");
    assert_eq!(ch.rose_by(MemoryEventKind::OomKill), 2);
    assert_eq!(ch.rose_by(MemoryEventKind::Max), 3);
    assert_eq!(ch.rose_by(MemoryEventKind::High), 0);
    assert_eq!(ch.current.oom_kill, Some(2));
    assert_eq!(ch.delta.oom_group_kill, Some(0));
    assert_eq!(l.refresh().unwrap(), None);
    // Re-reading without a change (a coalesced or spurious wakeup).
    assert_eq!(h.refresh().unwrap(), None);
}

#[test]
fn old_and_new_kernels_keys() {
    let (dir, fs) = tree();
    // 5.10: no oom_group_kill; a future key is ignored.
    write(
        dir.path(),
        "memory.events",
        "low 0\nhigh 1\nmax 0\noom 0\noom_kill 0\n",
    );
    let cg = fs.root().unwrap();
    let mut w = MemoryEventsWatch::open(&cg, Scope::Hierarchical).unwrap();
    write(
        dir.path(),
        "memory.events",
        "low 0\nhigh 9\nmax 0\noom 0\noom_kill 0\nsome_future_key 5\n",
    );
    let ch = w.refresh().unwrap().unwrap();
    assert_eq!(ch.delta.oom_group_kill, None, "absent on 5.10: None, not 0");
    assert_eq!(
        ch.rose().collect::<Vec<_>>(),
        vec![(MemoryEventKind::High, 8)]
    );
    // A counter going down (recreated cgroup, fake tree) counts as reset.
    write(
        dir.path(),
        "memory.events",
        "low 0\nhigh 2\nmax 0\noom 0\noom_kill 0\n",
    );
    let ch = w.refresh().unwrap().unwrap();
    assert_eq!(ch.rose_by(MemoryEventKind::High), 2);
    assert_eq!(w.last().high, Some(2));
}

#[test]
fn refresh_errors_name_the_file() {
    let (dir, fs) = tree();
    write(dir.path(), "memory.events", V6_1);
    let cg = fs.root().unwrap();
    let mut w = MemoryEventsWatch::open(&cg, Scope::Hierarchical).unwrap();
    write(dir.path(), "memory.events", "low 0\nhigh\n");
    let e = w.refresh().unwrap_err();
    assert!(matches!(e, Error::Parse { .. }), "{e}");
    assert!(e.to_string().contains("memory.events: line 2"), "{e}");
    // Larger than the fixed buffer: an error, not a truncated reading.
    let huge: String = (0..200).map(|i| format!("key_{i} {i}\n")).collect();
    write(dir.path(), "memory.events", &huge);
    let e = w.refresh().unwrap_err();
    assert!(e.to_string().contains("larger than the read buffer"), "{e}");
}

#[test]
fn missing_file_is_unsupported_and_missing_cgroup_is_gone() {
    let (dir, fs) = tree();
    let cg_dir = dir.path().join("a");
    std::fs::create_dir(&cg_dir).unwrap();
    write(&cg_dir, "cgroup.procs", "");
    let cg = fs.open(&cg_dir).unwrap();
    // memory controller not enabled for this cgroup.
    let e = MemoryEventsWatch::open(&cg, Scope::Local).unwrap_err();
    assert!(e.is_unsupported(), "{e}");
    // The whole cgroup went away under the handle.
    std::fs::remove_file(cg_dir.join("cgroup.procs")).unwrap();
    std::fs::remove_dir(&cg_dir).unwrap();
    let e = CgroupEventsWatch::open(&cg).unwrap_err();
    assert!(e.is_gone(), "{e}");
}

#[test]
fn watcher_refuses_regular_files_with_a_clear_error() {
    // epoll refuses regular files (EPERM): the kernfs POLLPRI path needs a
    // real cgroup2 mount. The error must say which file and that it was the
    // watch registration that failed.
    let (dir, fs) = tree();
    write(dir.path(), "memory.events", V6_1);
    write(dir.path(), "cgroup.events", "populated 1\nfrozen 0\n");
    let cg = fs.root().unwrap();
    let mut w = Watcher::with_capacity(4).unwrap();
    for e in [
        w.add_memory_events(&cg, Scope::Hierarchical).unwrap_err(),
        w.add_cgroup_events(&cg).unwrap_err(),
    ] {
        match &e {
            Error::Io {
                op: Op::Watch,
                source,
                path,
            } => {
                assert_eq!(source.raw_os_error(), Some(libc_eperm()));
                assert!(path.starts_with(dir.path()), "{e}");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(w.is_empty(), "a failed add leaves nothing behind");
}

fn libc_eperm() -> i32 {
    rustix::io::Errno::PERM.raw_os_error()
}

#[test]
fn cgroup_events_populated_transitions() {
    let (dir, fs) = tree();
    write(dir.path(), "cgroup.events", "populated 1\nfrozen 0\n");
    let cg = fs.root().unwrap();
    let mut w = CgroupEventsWatch::open(&cg).unwrap();
    assert_eq!(w.last().populated, Some(true));
    write(dir.path(), "cgroup.events", "populated 0\nfrozen 0\n");
    let ch = w.refresh().unwrap().unwrap();
    assert!(ch.became_unpopulated());
    assert_eq!(ch.previous.populated, Some(true));
    assert_eq!(w.refresh().unwrap(), None);
}
