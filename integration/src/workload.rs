//! Helper processes for tests, run by re-executing the guest binary (`oomkit-guest workload …`).
//!
//! A workload first moves itself into the cgroup it was given (so it is charged there from its
//! first allocation), prints `ready <pid>`, then does its job, printing progress lines on stdout:
//!
//! * `hog <MiB> <step MiB> <hold|exit|grow>`: allocate and touch memory in steps, printing
//!   `allocated <MiB>` after each; then hold it until killed, exit, or (`grow`) keep allocating
//!   until killed;
//! * `forkstorm`: every process keeps forking (bounded by the cgroup's `pids.max`), so the group
//!   always has new members while someone tries to kill it;
//! * `sleep`: do nothing until killed.
//!
//! The test side ([`Workload`]) waits on those lines with deadlines instead of sleeping.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::Fail;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub enum WorkloadKind {
    /// Allocate `mib` MiB in `step_mib` steps, then hold it until killed.
    HogHold { mib: u64, step_mib: u64 },
    /// Allocate `mib` MiB in `step_mib` steps, then exit.
    HogExit { mib: u64, step_mib: u64 },
    /// Allocate in `step_mib` steps until killed.
    HogGrow { step_mib: u64 },
    /// Keep forking.
    ForkStorm,
    /// Sleep until killed.
    Sleep,
}

impl WorkloadKind {
    fn args(self) -> Vec<String> {
        match self {
            WorkloadKind::HogHold { mib, step_mib } => {
                vec![
                    "hog".into(),
                    mib.to_string(),
                    step_mib.to_string(),
                    "hold".into(),
                ]
            }
            WorkloadKind::HogExit { mib, step_mib } => {
                vec![
                    "hog".into(),
                    mib.to_string(),
                    step_mib.to_string(),
                    "exit".into(),
                ]
            }
            WorkloadKind::HogGrow { step_mib } => {
                vec![
                    "hog".into(),
                    "0".into(),
                    step_mib.to_string(),
                    "grow".into(),
                ]
            }
            WorkloadKind::ForkStorm => vec!["forkstorm".into()],
            WorkloadKind::Sleep => vec!["sleep".into()],
        }
    }
}

/// A running workload; killed (SIGKILL) and reaped on drop.
pub struct Workload {
    child: Child,
    pid: i32,
    lines: mpsc::Receiver<String>,
}

/// How long a workload may take to start and report `ready` (TCG is slow; exec of a static
/// binary from the initramfs is still well under a second).
const READY_TIMEOUT: Duration = Duration::from_secs(20);

impl Workload {
    /// Start `kind` in cgroup directory `cg`; returns once it reported `ready` from inside it.
    pub fn spawn(cg: &Path, kind: WorkloadKind) -> Result<Self, Fail> {
        let mut child = Command::new("/proc/self/exe")
            .arg("workload")
            .arg(cg)
            .args(kind.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Fail(format!("spawn workload {kind:?}: {e}")))?;
        let pid = i32::try_from(child.id()).map_err(|e| Fail(e.to_string()))?;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut w = Self {
            child,
            pid,
            lines: rx,
        };
        w.wait_line("ready", READY_TIMEOUT)?;
        Ok(w)
    }

    /// The workload's PID.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Wait for a stdout line starting with `prefix`; returns the rest of it. Fails on timeout or
    /// if the workload's stdout closed (it exited or was killed).
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Result<String, Fail> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return Ok(rest.trim().to_string());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(Fail(format!(
                        "workload {} printed no `{prefix}` within {timeout:?}",
                        self.pid
                    )));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.try_wait().ok().flatten();
                    return Err(Fail(format!(
                        "workload {} ended before printing `{prefix}` (status {status:?})",
                        self.pid
                    )));
                }
            }
        }
    }

    /// Wait (up to `timeout`) for the workload to exit; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus, Fail> {
        // stdout closes when the process (and any child holding it) is gone.
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().map_err(|e| Fail(e.to_string()))? {
                return Ok(st);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Fail(format!(
                    "workload {} still running after {timeout:?}",
                    self.pid
                )));
            }
            match self.lines.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = self.child.wait().map_err(|e| Fail(e.to_string()))?;
                    return Ok(st);
                }
            }
        }
    }

    /// Has it exited (reaped now if so)?
    pub fn try_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Entry point of `oomkit-guest workload <cgroup> <kind> …`. Returns the exit code.
pub fn main(args: &[String]) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("oomkit-guest workload: {}", e.0);
            2
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn run(args: &[String]) -> Result<(), Fail> {
    let [cg, kind, rest @ ..] = args else {
        return Err(Fail(
            "usage: workload <cgroup dir> <hog|forkstorm|sleep> …".into(),
        ));
    };
    // Killable by the OOM killer whatever the parent's setting (the runner has -1000).
    std::fs::write("/proc/self/oom_score_adj", "0")
        .map_err(|e| Fail(format!("reset oom_score_adj: {e}")))?;
    std::fs::write(Path::new(cg).join("cgroup.procs"), "0")
        .map_err(|e| Fail(format!("join cgroup {cg}: {e}")))?;
    say(&format!("ready {}", std::process::id()));
    match (kind.as_str(), rest) {
        ("hog", [mib, step, mode]) => {
            let mib: u64 = mib.parse()?;
            let step: u64 = step.parse()?;
            hog(mib, step.max(1), mode)
        }
        ("forkstorm", []) => forkstorm(),
        ("sleep", []) => sleep_forever(),
        _ => Err(Fail(format!("unknown workload {kind} {rest:?}"))),
    }
}

fn hog(mib: u64, step: u64, mode: &str) -> Result<(), Fail> {
    const MIB: usize = 1 << 20;
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut total = 0u64;
    loop {
        if mode != "grow" && total >= mib {
            break;
        }
        let this = if mode == "grow" {
            step
        } else {
            step.min(mib - total)
        };
        let len = usize::try_from(this)? * MIB;
        // A fresh zeroed mapping is zero-fill on demand: touch every page so it is charged.
        let mut chunk: Vec<u8> = vec![0; len];
        for i in (0..len).step_by(4096) {
            chunk[i] = 1;
        }
        std::hint::black_box(&chunk);
        held.push(chunk);
        total += this;
        say(&format!("allocated {total}"));
    }
    say(&format!("done {total}"));
    if mode == "hold" {
        sleep_forever()?;
    }
    std::hint::black_box(&held);
    Ok(())
}

fn forkstorm() -> Result<(), Fail> {
    // SAFETY: this process is single-threaded (the workload never spawns threads), so the child
    // of fork may run arbitrary code; it only loops here.
    loop {
        // SAFETY: see above; fork has no preconditions in a single-threaded process.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            // At pids.max: back off briefly so the VM stays responsive, then try again.
            std::thread::sleep(Duration::from_millis(5));
        } else if pid > 0 {
            // Parent: reap whatever exited, keep forking.
            // SAFETY: waitpid with WNOHANG and a null status pointer is always sound.
            while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        }
        // Both parent and child continue the loop.
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn sleep_forever() -> Result<(), Fail> {
    loop {
        std::thread::park();
    }
}
