//! Issue 10, defect 14: every group-kill path refuses a cgroup holding this
//! process or PID 1, `cgroup.kill` included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use oomkit::Error;
use oomkit::cgroup::CgroupFs;
use oomkit::engine::{Act, Engine, EngineConfig, Handler, KernelHost, Plan, View, XattrTrust};

struct Nothing;

impl Handler for Nothing {
    fn name(&self) -> &'static str {
        "nothing"
    }
    fn decide(&mut self, _: &mut View<'_>, _: &mut Plan) {}
}

/// The hierarchy path of this process's cgroup.
fn own_cgroup() -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .to_string()
}

#[test]
fn cgroup_kill_write_refuses_a_cgroup_holding_this_process() {
    // A synthetic tree whose cgroup has our real hierarchy path, so the
    // guard's /proc/self/cgroup check matches it; with a `cgroup.kill`
    // file, the host takes the non-blocking `cgroup.kill` path.
    let tmp = tempfile::tempdir().unwrap();
    let own = own_cgroup();
    let dir = tmp.path().join(own.trim_start_matches('/'));
    std::fs::create_dir_all(&dir).unwrap();
    for (f, v) in [
        ("cgroup.procs", format!("{}\n", std::process::id())),
        ("cgroup.kill", String::new()),
        ("cgroup.events", "populated 1\nfrozen 0\n".into()),
        ("memory.events.local", "oom 0\n".into()),
    ] {
        std::fs::write(dir.join(f), v).unwrap();
    }
    let fs = CgroupFs::from_dir_unchecked(tmp.path());
    let mut host = KernelHost::new(fs, XattrTrust::TrustedOnly, 8, 8);
    // The engine's own-cgroup rule is a separate line of defence: take it
    // out of the way to test the host's.
    host.set_own_cgroup(Some("/elsewhere/oomkit".into()));
    let cfg = EngineConfig {
        max_cgroups: 8,
        max_processes: 8,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(cfg, host, Box::new(Nothing), Path::new(&own)).unwrap();
    let id = engine.root().unwrap();
    let e = engine.host_mut().kill_cgroup(id).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    assert!(e.to_string().contains("this process"), "{e}");
    assert_eq!(
        std::fs::read_to_string(dir.join("cgroup.kill")).unwrap(),
        "",
        "cgroup.kill must not be written"
    );
}
