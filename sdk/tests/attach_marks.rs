//! Attaching a cgroup reads its oomkit xattrs only where `flistxattr` lists
//! one (issue 12: one call instead of three reads per cgroup at start-up):
//! a priority mark still classifies, a raised `memory.max` left by a run
//! that died is still restored, and a cgroup without marks gets neither.
//! Runs the real `KernelHost` on a synthetic tree in a temporary folder
//! (`trusted.*` xattrs need `CAP_SYS_ADMIN`, which root has here).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use oomkit::cgroup::CgroupFs;
use oomkit::engine::{Engine, EngineConfig, Handler, KernelHost, Plan, View, XattrTrust};

struct Nothing;

impl Handler for Nothing {
    fn name(&self) -> &'static str {
        "nothing"
    }
    fn decide(&mut self, _: &mut View<'_>, _: &mut Plan) {}
}

fn cgroup(root: &Path, name: &str, max: &str) -> std::path::PathBuf {
    let d = root.join(name);
    std::fs::create_dir(&d).unwrap();
    for (f, v) in [
        ("cgroup.procs", ""),
        ("memory.current", "4096\n"),
        ("memory.max", max),
        ("memory.events.local", "high 0\nmax 0\noom 0\noom_kill 0\n"),
    ] {
        std::fs::write(d.join(f), v).unwrap();
    }
    d
}

fn set(dir: &Path, key: &str, value: &[u8]) {
    rustix::fs::setxattr(dir, key, value, rustix::fs::XattrFlags::empty()).unwrap();
}

#[test]
fn marks_are_read_where_listed_and_only_there() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("cgroup.procs"), "").unwrap();
    let svc = cgroup(tmp.path(), "svc", "max\n");
    set(&svc, "trusted.oomkit.priority", b"50");
    let job = cgroup(tmp.path(), "job", "209715200\n");
    set(&job, "trusted.oomkit.raised", b"104857600 209715200");
    // Same raised value in the file, but no record: nothing to restore.
    let plain = cgroup(tmp.path(), "plain", "209715200\n");
    set(&plain, "user.other", b"1");

    let fs = CgroupFs::from_dir_unchecked(tmp.path());
    let mut host = KernelHost::new(fs, XattrTrust::TrustedOnly, 8, 8);
    host.set_own_cgroup(Some("/elsewhere/oomkit".into()));
    let cfg = EngineConfig {
        max_cgroups: 8,
        max_processes: 8,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(cfg, host, Box::new(Nothing), Path::new("/")).unwrap();
    let ids: Vec<_> = ["/svc", "/job", "/plain"]
        .iter()
        .map(|p| engine.add_cgroup(Path::new(p)).unwrap())
        .collect();

    let class = |i: usize| engine.tree().class(ids[i]).unwrap();
    assert_eq!(class(0).priority, 50, "the priority mark classifies");
    assert_eq!(class(1).priority, 0);
    assert_eq!(class(2).priority, 0);
    assert_eq!(
        std::fs::read_to_string(job.join("memory.max")).unwrap(),
        "104857600\n",
        "the raised memory.max is put back"
    );
    assert!(
        rustix::fs::getxattr(job.as_path(), "trusted.oomkit.raised", &mut [0u8; 64][..]).is_err(),
        "the record is removed"
    );
    assert_eq!(
        std::fs::read_to_string(plain.join("memory.max")).unwrap(),
        "209715200\n",
        "no record, no restore"
    );
}
