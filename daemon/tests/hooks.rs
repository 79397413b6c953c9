//! Kill hooks run as real processes: the victim's details in the environment, the record on
//! stdin, and a hook that overruns its deadline is SIGKILLed (the caller gets `TimedOut`
//! instead of waiting for it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use oomkit::engine::incident::Incident;
use oomkit_daemon::hooks::{self, HookOutcome};

fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn incident() -> Incident {
    let uid = "0f4e2c1a_9b7d_4c3e_8f21_6a5b4c3d2e1f";
    let cg = format!(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-4b8c9d0e1f2a3b4c.scope"
    );
    serde_json::from_value(serde_json::json!({
        "format": "oomkit-incident/1", "seq": 0, "written_unix_ms": 0, "episode": 4,
        "handler": "priority-kill", "dry_run": false,
        "trigger": {"kind": "pressure", "cgroup": null, "counters": {}, "attempt": null},
        "scope": "/", "outcome": "acted", "reason": "tier -300, largest",
        "plan": [], "refused": [],
        "victims": [{"kind": "process", "pid": 4242, "comm": "batch", "cgroup": cg,
                     "footprint_bytes": 1048576, "escalated": false}],
        "would_kill": [], "escalations": 0, "error": null,
        "timings_ms": {"decided": null, "signal_sent": null, "victim_exited": null, "memory_back": null, "ended": null},
        "before": {"at_ms": null, "memory_current": null, "swap_current": null, "memory_high": null,
                   "memory_max": null, "headroom_bytes": null, "psi_some_avg10": null, "psi_full_avg10": null},
        "after": null, "memory_stat": {},
        "system": {"mem_total": null, "mem_available": null, "swap_free": null, "psi_some_avg10": null,
                   "psi_full_avg10": null, "oom_kill": null},
        "top_processes": [], "truncated": false
    }))
    .unwrap()
}

#[test]
fn a_hook_gets_the_victim_in_its_environment_and_the_record_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let hook = script(
        dir.path(),
        "hook",
        &format!(
            "env | grep ^OOMKIT_ | sort > {0}.env; cat > {0}.json",
            out.display()
        ),
    );
    hooks::check(&hook).unwrap();
    let inc = incident();
    let r = hooks::run(
        &hook,
        &hooks::env("post-kill", &inc),
        serde_json::to_vec(&inc).unwrap(),
        Duration::from_secs(30),
    );
    assert!(
        matches!(r, HookOutcome::Exited(st) if st.success()),
        "{r:?}"
    );
    let env = std::fs::read_to_string(out.with_extension("env")).unwrap();
    for want in [
        "OOMKIT_HOOK=post-kill",
        "OOMKIT_EPISODE=4",
        "OOMKIT_OUTCOME=acted",
        "OOMKIT_VICTIM_PID=4242",
        "OOMKIT_VICTIM_COMM=batch",
        "OOMKIT_VICTIM_BYTES=1048576",
        "OOMKIT_POD_UID=0f4e2c1a-9b7d-4c3e-8f21-6a5b4c3d2e1f",
        "OOMKIT_CONTAINER_ID=4b8c9d0e1f2a3b4c",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} missing:\n{env}");
    }
    let back: Incident =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(back, inc);
}

#[test]
fn a_hook_past_its_deadline_is_killed_and_a_failing_one_reported() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    // Never reads stdin, never exits on its own.
    let slow = script(
        dir.path(),
        "slow",
        &format!("echo $$ > {}; exec sleep 600", pidfile.display()),
    );
    let big = vec![b'x'; 1 << 20];
    let r = hooks::run(&slow, &[], big, Duration::from_millis(300));
    assert!(matches!(r, HookOutcome::TimedOut), "{r:?}");
    // It was killed and reaped: its PID no longer exists (or is not that hook).
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let cmdline =
        std::fs::read_to_string(format!("/proc/{}/cmdline", pid.trim())).unwrap_or_default();
    assert!(!cmdline.contains("sleep"), "the hook still runs: {cmdline}");
    let failing = script(dir.path(), "failing", "exit 3");
    let r = hooks::run(&failing, &[], Vec::new(), Duration::from_secs(30));
    assert!(
        matches!(r, HookOutcome::Exited(st) if st.code() == Some(3)),
        "{r:?}"
    );
    let r = hooks::run(
        &dir.path().join("missing"),
        &[],
        Vec::new(),
        Duration::from_secs(1),
    );
    assert!(matches!(r, HookOutcome::Failed(_)), "{r:?}");
}

#[test]
fn an_unsafe_hook_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hook = script(dir.path(), "hook", "true");
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(
        hooks::check(&hook)
            .unwrap_err()
            .contains("writable by group or others")
    );
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(
        hooks::check(&hook)
            .unwrap_err()
            .contains("not an executable")
    );
}

/// The root's id, from an engine over the fake host (ids are only made by a tree).
fn some_cgroup() -> oomkit::engine::CgroupId {
    let rig = oomkit_testing::Rig::new(
        oomkit::engine::EngineConfig::default(),
        |_| {},
        Box::new(oomkit_handlers::PriorityKill::new(
            oomkit_handlers::PriorityKillConfig::default(),
            oomkit_handlers::Classifier::new(Vec::new(), None, 0).unwrap(),
        )),
    );
    rig.engine.root().unwrap()
}

/// Waits (bounded) until `cond` holds; the hook runs on its own thread.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_pre_kill_hook_is_fired_then_polled_and_never_outlives_its_deadline() {
    use oomkit::engine::{PrekillHook, PrekillTarget};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pre.env");
    let quick = script(
        dir.path(),
        "quick",
        &format!("env | grep ^OOMKIT_ | sort > {}", out.display()),
    );
    let cg = some_cgroup();
    let path = Path::new(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f4e2c1a_9b7d_4c3e_8f21_6a5b4c3d2e1f.slice/cri-containerd-4b8c9d0e1f2a3b4c.scope",
    );
    let target = PrekillTarget {
        cgroup: cg,
        path,
        pid: Some(77),
        signal: None,
        escalation: 0,
    };
    let mut h = hooks::PreKillExec::start(quick, Duration::from_secs(30)).unwrap();
    assert_eq!(h.fire(&target), Some(Duration::from_secs(30)));
    let h = std::sync::Mutex::new(h);
    eventually("the quick hook", || h.lock().unwrap().poll());
    let env = std::fs::read_to_string(&out).unwrap();
    for want in [
        "OOMKIT_HOOK=pre-kill",
        "OOMKIT_VICTIM_PID=77",
        "OOMKIT_ESCALATION=0",
        "OOMKIT_POD_UID=0f4e2c1a-9b7d-4c3e-8f21-6a5b4c3d2e1f",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} missing:\n{env}");
    }

    // A hook that never ends: polled as pending, then done once its deadline killed it.
    let pidfile = dir.path().join("slow.pid");
    let slow = script(
        dir.path(),
        "slow",
        &format!("echo $$ > {}; exec sleep 600", pidfile.display()),
    );
    let mut h = hooks::PreKillExec::start(slow, Duration::from_millis(500)).unwrap();
    assert_eq!(h.fire(&target), Some(Duration::from_millis(500)));
    eventually("the slow hook to start", || pidfile.exists());
    assert!(!h.poll(), "still running before its deadline");
    // Busy with the first kill: a second one is not made to wait for it.
    assert_eq!(h.fire(&target), None);
    let h = std::sync::Mutex::new(h);
    eventually("the slow hook's deadline", || h.lock().unwrap().poll());
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let cmdline =
        std::fs::read_to_string(format!("/proc/{}/cmdline", pid.trim())).unwrap_or_default();
    assert!(!cmdline.contains("sleep"), "the slow hook still runs");
}
