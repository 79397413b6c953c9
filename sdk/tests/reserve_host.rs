//! Reserve steps on this host, read back with `verify()`. One process-wide
//! test (mlockall and oom_score_adj affect the whole test binary), plus an
//! unprivileged re-run of this binary (`setpriv` to nobody) that must still
//! run and report itself degraded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use oomkit::cgroup::CgroupFs;
use oomkit::reserve::{self, MlockMode, ReserveCgroup, ReserveConfig, ReservedBuffer, StepStatus};

#[path = "common/skip.rs"]
mod skip;

const CHILD_ENV: &str = "OOMKIT_RESERVE_CHILD";

#[test]
fn enter_and_verify() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let child = d.path().join("oomkit-handler");
    std::fs::create_dir(&child).unwrap();
    for f in ["cgroup.procs", "memory.min", "memory.low"] {
        std::fs::write(child.join(f), "").unwrap();
    }
    let parent = CgroupFs::from_dir_unchecked(d.path()).root().unwrap();
    let cfg = ReserveConfig {
        sched_fifo: Some(1),
        cgroup: Some(ReserveCgroup {
            parent,
            name: "oomkit-handler".into(),
            memory_min: 64 << 20,
            memory_low: Some(128 << 20),
        }),
        ..ReserveConfig::default()
    };
    let buf = ReservedBuffer::new(1 << 20);
    assert_eq!(buf.len(), 1 << 20);
    let report = reserve::enter(&cfg);
    println!("{report}");
    let st = reserve::verify().unwrap();
    println!("{st:?}");

    // The synthetic cgroup step writes plain files.
    assert!(report.granted("cgroup"), "{report}");
    assert_eq!(
        std::fs::read_to_string(child.join("cgroup.procs")).unwrap(),
        std::process::id().to_string()
    );
    assert_eq!(
        std::fs::read_to_string(child.join("memory.min")).unwrap(),
        "67108864"
    );
    assert_eq!(
        std::fs::read_to_string(child.join("memory.low")).unwrap(),
        "134217728"
    );
    assert!(report.granted("stack"));

    // Each step's report agrees with the kernel's state.
    if report.granted("mlockall") {
        assert!(st.vm_lck > 0, "{st:?}");
        assert!(st.vm_lck >= st.vm_rss / 2, "most of RSS locked: {st:?}");
    }
    match report.step("oom_score_adj") {
        Some(StepStatus::Granted(_)) => assert_eq!(st.oom_score_adj, -1000),
        Some(StepStatus::Denied(why)) => {
            assert_ne!(st.oom_score_adj, -1000);
            assert!(why.contains("CAP_SYS_RESOURCE"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    if report.granted("nice") {
        assert_eq!(st.nice, -10);
    }
    if report.granted("sched_fifo") {
        assert_eq!(st.sched_policy, Some(1));
        assert_eq!(st.rt_priority, Some(1));
    }
    match report.step("io_flusher") {
        Some(StepStatus::Granted(_)) => assert_eq!(st.io_flusher, Some(true)),
        Some(StepStatus::Denied(why)) => assert!(why.contains("CAP_SYS_RESOURCE"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(report.degraded(), report.to_string().contains("DENIED"));
    // Still works afterwards (allocation under MCL_FUTURE).
    let v = vec![1u8; 4 << 20];
    assert_eq!(v.iter().map(|b| u64::from(*b)).sum::<u64>(), 4 << 20);
    // Back to SCHED_OTHER for the rest of this thread's life.
    let _ = reserve::enter(&ReserveConfig {
        mlock: MlockMode::Off,
        stack_prefault: 0,
        oom_score_adj: None,
        nice: Some(0),
        sched_fifo: None,
        io_flusher: false,
        ..ReserveConfig::default()
    });
}

#[test]
fn prefault_is_capped() {
    assert_eq!(reserve::prefault_stack(0), 0);
    assert_eq!(reserve::prefault_stack(64 << 10), 64 << 10);
    assert!(reserve::prefault_stack(usize::MAX) <= reserve::MAX_STACK_PREFAULT);
}

/// Entry point of the unprivileged re-run.
#[test]
fn child_mode() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    // Start from nice 0 whatever the parent runs at (a CI job may run raised, e.g. at
    // nice -10, and then "-10" would be granted as no change): raising the nice value needs no
    // privilege, and this test is about what lowering it again is refused.
    let _ = rustix::process::setpriority_process(None, 0);
    let report = reserve::enter(&ReserveConfig::default());
    print!("REPORT\n{report}");
}

#[test]
fn unprivileged_run_is_degraded_but_runs() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = match std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&exe)
        .args(["--exact", "child_mode", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            return skip::skip(&format!("cannot run setpriv: {e}"));
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
    if !text.contains("REPORT") {
        return skip::skip("the test binary is not runnable as nobody (65534)");
    }
    assert!(out.status.success());
    assert!(text.contains("reserve: DEGRADED"), "{text}");
    for step in ["oom_score_adj", "nice", "io_flusher"] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(step))
            .unwrap();
        assert!(line.contains("DENIED"), "{line}");
    }
    let ml = text.lines().find(|l| l.contains("mlockall")).unwrap();
    assert!(
        ml.contains("DENIED") && ml.contains("RLIMIT_MEMLOCK"),
        "{ml}"
    );
    let _ = Duration::ZERO;
}
