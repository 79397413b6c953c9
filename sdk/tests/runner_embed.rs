//! A container runtime can embed the [`Runner`]: built from
//! [`RunnerConfig::new`] and turned with `run_once`, it changes nothing
//! process-wide — no locked memory (`VmLck`), no `oom_score_adj`, no nice
//! or scheduling policy, no rlimit, no `PR_SET_IO_FLUSHER`, no thread.
//!
//! Runs on the host against a synthetic cgroup tree (plain files in a
//! temporary folder) through [`Runner::with_fs`], which is `Runner::new` on
//! an explicit cgroup filesystem. The second half asks for reserve mode and
//! the watchdog explicitly and checks that the same probe sees them, so the
//! first half cannot pass by looking at nothing.
//!
//! One test in this file on purpose: the thread list must not see other
//! tests' threads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use oomkit::cgroup::CgroupFs;
use oomkit::engine::{Handler, Plan, Runner, RunnerConfig, View, WatchdogConfig};
use oomkit::reserve::{MlockMode, ReserveConfig};

/// Decides nothing: the test is about what the runner does around it.
struct Idle;

impl Handler for Idle {
    fn name(&self) -> &'static str {
        "idle"
    }
    fn decide(&mut self, _view: &mut View<'_>, _plan: &mut Plan) {}
}

/// What the process (and the calling thread) looks like from `/proc`.
#[derive(Debug, Clone, PartialEq)]
struct ProcessState {
    vm_lck: String,
    oom_score_adj: i32,
    /// Every rlimit, soft and hard.
    limits: String,
    /// Of the calling thread (nice and policy are per thread on Linux).
    nice: i64,
    policy: u64,
    io_flusher: String,
    /// Thread names, sorted.
    threads: Vec<String>,
    /// This thread's working directory.
    cwd: std::path::PathBuf,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn state() -> ProcessState {
    let status = read("/proc/self/status");
    let vm_lck = status
        .lines()
        .find(|l| l.starts_with("VmLck:"))
        .expect("VmLck in /proc/self/status")
        .to_owned();
    let stat = read("/proc/thread-self/stat");
    // Fields after the parenthesised comm start at field 3 (state).
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let field = |n: usize| fields[n - 3];
    let mut threads: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|e| {
            read(&format!("{}/comm", e.unwrap().path().display()))
                .trim()
                .to_owned()
        })
        .collect();
    threads.sort();
    ProcessState {
        vm_lck,
        oom_score_adj: read("/proc/self/oom_score_adj").trim().parse().unwrap(),
        limits: read("/proc/self/limits"),
        nice: field(19).parse().unwrap(),
        policy: field(41).parse().unwrap(),
        io_flusher: format!("{:?}", rustix::process::is_io_flusher()),
        threads,
        cwd: std::fs::read_link("/proc/thread-self/cwd").unwrap(),
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// The files the loop reads of a cgroup.
fn cgroup(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    write(dir, "cgroup.procs", "");
    write(dir, "memory.current", "1048576\n");
    write(dir, "memory.max", "max\n");
    write(dir, "memory.high", "max\n");
    write(dir, "cgroup.events", "populated 0\nfrozen 0\n");
}

/// Turns the runner until the new child is in its tree.
fn run_until_added(runner: &mut Runner, cgroups: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while runner.engine().tree().len() < cgroups {
        assert!(Instant::now() < deadline, "the new cgroup was never added");
        runner.run_once(Some(Duration::from_secs(1))).unwrap();
    }
}

#[test]
fn embedded_runner_changes_nothing_process_wide() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    cgroup(root);
    let fs = CgroupFs::from_dir_unchecked(root);
    let mut cfg = RunnerConfig::new(root);
    assert!(
        !cfg.own_cwd,
        "the calling thread's working directory stays shared"
    );
    // Plain files cannot be polled for POLLPRI; the directory watch is enough here.
    cfg.memory_events = false;
    cfg.engine.max_cgroups = 16;
    cfg.engine.max_processes = 64;

    let before = state();
    let mut runner = Runner::with_fs(cfg, Box::new(Idle), fs.clone()).unwrap();
    cgroup(&root.join("job"));
    run_until_added(&mut runner, 2);
    runner.run_once(Some(Duration::ZERO)).unwrap();
    assert_eq!(
        state(),
        before,
        "Runner::new + run_once changed the process"
    );
    assert!(runner.reserve_report().is_none(), "no reserve mode entered");
    drop(runner);

    // The same probe sees each opt-in: raising oom_score_adj and nice needs
    // no privilege, and the watchdog is a thread.
    let mut cfg = RunnerConfig::new(root);
    cfg.memory_events = false;
    cfg.engine.max_cgroups = 16;
    cfg.engine.max_processes = 64;
    cfg.reserve = Some(ReserveConfig {
        mlock: MlockMode::Off,
        raise_memlock_limit: false,
        stack_prefault: 0,
        oom_score_adj: Some((before.oom_score_adj + 1).min(1000) as i16),
        nice: Some((before.nice + 1).min(19) as i32),
        sched_fifo: None,
        io_flusher: false,
        cgroup: None,
        defer_mlock: false,
    });
    cfg.watchdog = Some(WatchdogConfig {
        timeout: Duration::from_secs(60),
    });
    let mut runner = Runner::with_fs(cfg, Box::new(Idle), fs).unwrap();
    cgroup(&root.join("job2"));
    run_until_added(&mut runner, 3);
    let after = state();
    assert!(runner.reserve_report().is_some());
    if before.oom_score_adj < 1000 {
        assert_ne!(after.oom_score_adj, before.oom_score_adj, "oom_score_adj");
    }
    if before.nice < 19 {
        assert_ne!(after.nice, before.nice, "nice");
    }
    // A new thread names itself only once it runs: count, do not match names.
    assert_eq!(
        after.threads.len(),
        before.threads.len() + 1,
        "the watchdog thread: {:?}",
        after.threads
    );
}
