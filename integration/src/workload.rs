//! Helper processes for tests, run by re-executing the guest binary (`oomkit-guest workload …`).
//!
//! A workload is started inside the cgroup it was given by the SDK's `Spawn::spawn_into`
//! (`clone3(CLONE_INTO_CGROUP)`, or `cgroup.procs` written by the child before `execve`), so it
//! is charged there from its first instruction; it prints `ready <pid>`, then does its job,
//! printing progress lines on stdout:
//!
//! * `hog <MiB> <step MiB> <hold|exit|grow>`: allocate and touch memory in steps, printing
//!   `allocated <MiB>` after each; then hold it until killed, exit, or (`grow`) keep allocating
//!   until killed;
//! * `forkstorm`: every process keeps forking (bounded by the cgroup's `pids.max`), so the group
//!   always has new members while someone tries to kill it;
//! * `sleep`: do nothing until killed;
//! * `forkalloc <children> <MiB each>`: fork that many children, each allocating and touching its
//!   share and then holding it (`forked <n>` once all are started), like a parallel build;
//! * `latency <period ms> <KiB> <duration ms>`: every period, map, touch and unmap a fresh
//!   region and time it (the charge path a neighbour's allocations take under pressure); at the
//!   end print `latency n=… p50_us=… p99_us=… max_us=…`, then hold;
//! * `rate <step MiB> <MiB/s> <cap MiB>`: grow in steps at about that rate (a batch job or a
//!   leak), printing `allocated <MiB>`, up to the cap (0: none), then hold;
//! * `heartbeat <period ms>`: sleep one period at a time and measure how late each wakeup came;
//!   print `hb <beats> <worst lateness µs> <worst of these 20 beats µs>` every 20 beats (the "protected process" of the
//!   machine-wide scenarios);
//! * `reread <MiB>`: read the first MiB of the scratch disk ([`SCRATCH_DISK`]) through the page
//!   cache, over and over, printing `pass <n> <ms>` after each pass: a file-backed working set;
//! * `stream <passes>`: read the whole scratch disk through the page cache that many times,
//!   printing `streamed <n>` after each pass, then hold: one pass is a backup-like reader that
//!   fills memory with cold cache (a second pass over more than memory refaults: that is
//!   thrashing);
//! * `burst <MiB> <hold ms> <pause ms>`: allocate and touch, hold, free, pause, repeat, printing
//!   `burst <n>` after each free;
//! * `exec <program> <args…>`: print `ready`, then exec the program (which so starts in the
//!   cgroup: the `oomkit` daemon, the `heap_victim` demo).
//!
//! The test side ([`Workload`]) waits on those lines with deadlines instead of sleeping.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use oomkit::Cgroup;
use oomkit::spawn::{Spawn, SpawnedChild};

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
    /// Allocate `mib` MiB, then wait in D state (`wait_for_vfork_done`, uninterruptible but
    /// killable) on a `CLONE_VFORK` child that freed its copy and never execs; the child
    /// says `dstate` and sleeps.
    DState { mib: u64 },
    /// Fork `children` processes, each allocating `mib` MiB and holding it.
    ForkAlloc { children: u32, mib: u64 },
    /// Grow in `step_mib` steps at about `mib_per_s`, up to `cap_mib` (0: until killed), then
    /// hold.
    HogRate {
        step_mib: u64,
        mib_per_s: u64,
        cap_mib: u64,
    },
    /// Sleep `period_ms` at a time and report the worst lateness.
    Heartbeat { period_ms: u64 },
    /// Re-read the first `mib` MiB of the scratch disk through the page cache.
    Reread { mib: u64 },
    /// Stream the whole scratch disk through the page cache `passes` times, then hold.
    Stream { passes: u32 },
    /// Allocate `mib`, hold `hold_ms`, free, pause `pause_ms`, repeat.
    Burst {
        mib: u64,
        hold_ms: u64,
        pause_ms: u64,
    },
    /// Time a map/touch/unmap of `kib` KiB every `period_ms` for `duration_ms`, then report.
    Latency {
        period_ms: u64,
        kib: u64,
        duration_ms: u64,
    },
}

impl WorkloadKind {
    pub(crate) fn args(self) -> Vec<String> {
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
            WorkloadKind::HogRate {
                step_mib,
                mib_per_s,
                cap_mib,
            } => vec![
                "rate".into(),
                step_mib.to_string(),
                mib_per_s.to_string(),
                cap_mib.to_string(),
            ],
            WorkloadKind::Heartbeat { period_ms } => {
                vec!["heartbeat".into(), period_ms.to_string()]
            }
            WorkloadKind::Reread { mib } => vec!["reread".into(), mib.to_string()],
            WorkloadKind::Stream { passes } => vec!["stream".into(), passes.to_string()],
            WorkloadKind::Burst {
                mib,
                hold_ms,
                pause_ms,
            } => vec![
                "burst".into(),
                mib.to_string(),
                hold_ms.to_string(),
                pause_ms.to_string(),
            ],
            WorkloadKind::ForkStorm => vec!["forkstorm".into()],
            WorkloadKind::Sleep => vec!["sleep".into()],
            WorkloadKind::DState { mib } => vec!["dstate".into(), mib.to_string()],
            WorkloadKind::ForkAlloc { children, mib } => {
                vec!["forkalloc".into(), children.to_string(), mib.to_string()]
            }
            WorkloadKind::Latency {
                period_ms,
                kib,
                duration_ms,
            } => vec![
                "latency".into(),
                period_ms.to_string(),
                kib.to_string(),
                duration_ms.to_string(),
            ],
        }
    }
}

/// The guest's scratch disk (an emulated NVMe drive, see `xtask/src/qemu.rs`), read through the
/// page cache by the `reread` and `stream` workloads.
pub const SCRATCH_DISK: &str = "/dev/nvme0n1";

/// A running workload; killed (SIGKILL) and reaped on drop.
pub struct Workload {
    child: SpawnedChild,
    pid: i32,
    lines: mpsc::Receiver<String>,
    /// The last stdout lines received, for failure messages.
    recent: VecDeque<String>,
    /// The last stderr lines (when stderr is not a log file given by the caller), for failure
    /// messages: a workload that fails says why there.
    stderr: Arc<Mutex<VecDeque<String>>>,
}

/// How many lines of each stream a failure message quotes.
const TAIL_LINES: usize = 8;

fn push_tail(q: &mut VecDeque<String>, line: String) {
    if q.len() == TAIL_LINES {
        q.pop_front();
    }
    q.push_back(line);
}

/// How long a workload may take to start and report `ready` (TCG is slow; exec of a static
/// binary from the initramfs is still well under a second).
const READY_TIMEOUT: Duration = Duration::from_secs(20);

impl Workload {
    /// Start `kind` in cgroup directory `cg`; returns once it reported `ready` from inside it.
    pub fn spawn(cg: &Path, kind: WorkloadKind) -> Result<Self, Fail> {
        Self::start(cg, &kind.args(), None, &format!("{kind:?}"))
    }

    /// Start `program args…` in cgroup directory `cg` (it is placed there before it execs, so
    /// it is charged there from its first allocation); its stderr goes to `stderr` (a log file)
    /// or is inherited. Returns once the helper reported `ready` from inside the cgroup.
    pub fn spawn_exec(
        cg: &Path,
        program: &Path,
        args: &[String],
        stderr: Option<std::fs::File>,
    ) -> Result<Self, Fail> {
        let mut argv = vec!["exec".to_string(), program.display().to_string()];
        argv.extend(args.iter().cloned());
        Self::start(
            cg,
            &argv,
            stderr.map(OwnedFd::from),
            &program.display().to_string(),
        )
    }

    fn start(
        cg: &Path,
        args: &[String],
        stderr: Option<OwnedFd>,
        what: &str,
    ) -> Result<Self, Fail> {
        let cgroup =
            Cgroup::open(cg).map_err(|e| Fail(format!("open cgroup {}: {e}", cg.display())))?;
        let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| Fail(format!("pipe: {e}")))?;
        let null = std::fs::File::open("/dev/null").map_err(|e| Fail(format!("/dev/null: {e}")))?;
        let mut spawn = Spawn::new("/proc/self/exe")
            .arg("workload")
            .arg(cg)
            .args(args)
            .stdin(null)
            .stdout(wr);
        let err_tail = Arc::new(Mutex::new(VecDeque::new()));
        let err_read = match stderr {
            Some(err) => {
                spawn = spawn.stderr(err);
                None
            }
            None => {
                let (er, ew) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .map_err(|e| Fail(format!("pipe: {e}")))?;
                spawn = spawn.stderr(ew);
                Some(er)
            }
        };
        let child = spawn
            .spawn_into(&cgroup)
            .map_err(|e| Fail(format!("spawn workload {what} into {}: {e}", cg.display())))?;
        let pid = child.pid();
        let (tx, rx) = mpsc::channel();
        let out = std::fs::File::from(rd);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        if let Some(er) = err_read {
            // Kept for failure messages and passed on to the runner's stderr (the console log)
            // as before.
            let tail = Arc::clone(&err_tail);
            std::thread::spawn(move || {
                for line in BufReader::new(std::fs::File::from(er)).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("{line}");
                    if let Ok(mut q) = tail.lock() {
                        push_tail(&mut q, line);
                    }
                }
            });
        }
        let mut w = Self {
            child,
            pid,
            lines: rx,
            recent: VecDeque::new(),
            stderr: err_tail,
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
                    push_tail(&mut self.recent, l.clone());
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return Ok(rest.trim().to_string());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let tail = self.tail();
                    return Err(Fail(format!(
                        "workload {} printed no `{prefix}` within {timeout:?}; {tail}",
                        self.pid
                    )));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let tail = self.ended_tail();
                    return Err(Fail(format!(
                        "workload {} ended before printing `{prefix}`; {tail}",
                        self.pid
                    )));
                }
            }
        }
    }

    /// The next already-printed stdout line, whatever it starts with, without waiting.
    pub fn try_next_line(&mut self) -> Option<String> {
        let l = self.lines.try_recv().ok()?;
        push_tail(&mut self.recent, l.clone());
        Some(l)
    }

    /// The rest of the next already-printed stdout line starting with `prefix`, without
    /// waiting; lines before it that do not match are dropped.
    pub fn try_line(&mut self, prefix: &str) -> Option<String> {
        while let Ok(l) = self.lines.try_recv() {
            push_tail(&mut self.recent, l.clone());
            if let Some(rest) = l.strip_prefix(prefix) {
                return Some(rest.trim().to_string());
            }
        }
        None
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
                Ok(l) => push_tail(&mut self.recent, l),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
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

    /// For failure messages: the exit status if it has ended, and the last lines it printed
    /// on stdout and stderr.
    pub fn tail(&mut self) -> String {
        let status = self
            .try_exited()
            .map_or_else(|| "running".to_string(), |st| st.to_string());
        let err = self
            .stderr
            .lock()
            .map(|q| q.iter().cloned().collect::<Vec<_>>().join(" | "))
            .unwrap_or_default();
        let out = self.recent.iter().cloned().collect::<Vec<_>>().join(" | ");
        format!("status {status}; last stdout [{out}]; stderr [{err}]")
    }

    /// [`Self::tail`] of a workload whose stdout closed: waits up to 2 s for it to be reaped
    /// (stdout closes as it exits, just before the status is there), so the message says how
    /// it ended (an exit code, or the signal that killed it).
    fn ended_tail(&mut self) -> String {
        let end = Instant::now() + Duration::from_secs(2);
        while self.try_exited().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.tail()
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
            "usage: workload <cgroup dir> <hog|forkstorm|sleep|forkalloc|latency|exec> …".into(),
        ));
    };
    // Killable by the OOM killer whatever the parent's setting (the runner has -1000).
    std::fs::write("/proc/self/oom_score_adj", "0")
        .map_err(|e| Fail(format!("reset oom_score_adj: {e}")))?;
    // Spawn::spawn_into placed us in the cgroup before exec; check rather than move.
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| Fail(format!("read /proc/self/cgroup: {e}")))?;
    // Only the final newline goes: a cgroup name may end in whitespace (`job `), and trimming
    // it would misplace the workload (the adversarial tests use such names).
    let own = own
        .strip_suffix('\n')
        .unwrap_or(&own)
        .strip_prefix("0::")
        .unwrap_or("");
    if !Path::new(cg).ends_with(own.trim_start_matches('/')) || own.is_empty() {
        return Err(Fail(format!("workload for {cg} runs in cgroup {own:?}")));
    }
    if kind != "exec" {
        // Named after its cgroup (`service`, `batch`, …) rather than `exe`, so the daemon's
        // reasons and the kernel's OOM reports say which workload it is.
        let name = Path::new(cg)
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(15).collect::<String>())
            .unwrap_or_default();
        if let Ok(c) = std::ffi::CString::new(name) {
            let _ = rustix::thread::set_name(&c);
        }
    }
    say(&format!("ready {}", std::process::id()));
    match (kind.as_str(), rest) {
        ("hog", [mib, step, mode]) => {
            let mib: u64 = mib.parse()?;
            let step: u64 = step.parse()?;
            hog(mib, step.max(1), mode)
        }
        ("rate", [step, rate, cap]) => hog_rate(step.parse()?, rate.parse()?, cap.parse()?),
        ("heartbeat", [period]) => heartbeat(period.parse()?),
        ("reread", [mib]) => reread(mib.parse()?),
        ("stream", [passes]) => stream(passes.parse()?),
        ("burst", [mib, hold, pause]) => burst(mib.parse()?, hold.parse()?, pause.parse()?),
        ("forkstorm", []) => forkstorm(),
        ("sleep", []) => sleep_forever(),
        ("dstate", [mib]) => dstate(mib.parse()?),
        ("forkalloc", [n, mib]) => forkalloc(n.parse()?, mib.parse()?),
        ("latency", [period, kib, duration]) => {
            latency(period.parse()?, kib.parse()?, duration.parse()?)
        }
        ("exec", [program, args @ ..]) => {
            use std::os::unix::process::CommandExt;
            // Only returns on failure.
            let e = Command::new(program).args(args).exec();
            Err(Fail(format!("exec {program}: {e}")))
        }
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

/// Allocates and touches `mib` MiB (1 MiB chunks).
fn touch(mib: u64, into: &mut Vec<Vec<u8>>) {
    for _ in 0..mib {
        let mut chunk: Vec<u8> = vec![0; 1 << 20];
        for i in (0..chunk.len()).step_by(4096) {
            chunk[i] = 1;
        }
        std::hint::black_box(&chunk);
        into.push(chunk);
    }
}

fn hog_rate(step: u64, rate: u64, cap: u64) -> Result<(), Fail> {
    let step = step.max(1);
    let rate = rate.max(1);
    let start = Instant::now();
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut total = 0u64;
    while cap == 0 || total < cap {
        // Pace against the start, so slow steps (reclaim stalls) do not lower the rate.
        let due = start + Duration::from_secs_f64(total as f64 / rate as f64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let this = if cap == 0 {
            step
        } else {
            step.min(cap - total)
        };
        touch(this, &mut held);
        total += this;
        say(&format!("allocated {total}"));
    }
    say(&format!("done {total}"));
    std::hint::black_box(&held);
    sleep_forever()
}

/// A beat at least this late (µs) is reported on its own line (`hbl <late> <vm>`) when it
/// happens (an unloaded guest's beats are well under it).
const LATE_REPORT_US: u64 = 2_000;

/// The probe's period: how finely it can tell when the guest itself could not run.
const PROBE_PERIOD: Duration = Duration::from_millis(5);
/// A probe wake-up at least this late marks the guest as not running on time.
const PROBE_LATE: Duration = Duration::from_millis(1);

/// When the guest's CPU did not run even a `SCHED_FIFO` thread on time: the intervals
/// `[due, woke)` of the probe's late wake-ups, the last few hundred.
type Unrun = std::sync::Arc<Mutex<VecDeque<(Instant, Instant)>>>;

/// Starts the probe thread: `SCHED_FIFO` 50, waking every [`PROBE_PERIOD`]. Under qemu TCG the
/// vCPU is a host thread, and when the host deschedules it the whole guest stops: every beat
/// due then is late, whatever the guest's scheduler and handlers do. A real-time thread that
/// is itself late was not run by anyone, so the overlap of its late intervals with a
/// heartbeat stall is the part no guest process caused (the host, or the guest's kernel with
/// interrupts off). `None` when the guest refuses `SCHED_FIFO`.
fn start_probe() -> Option<Unrun> {
    let unrun: Unrun = std::sync::Arc::new(Mutex::new(VecDeque::with_capacity(512)));
    let (tx, rx) = mpsc::channel();
    let shared = unrun.clone();
    std::thread::spawn(move || {
        let report = oomkit::reserve::enter(&oomkit::reserve::ReserveConfig {
            mlock: oomkit::reserve::MlockMode::Off,
            raise_memlock_limit: false,
            stack_prefault: 0,
            oom_score_adj: None,
            nice: None,
            sched_fifo: Some(50),
            io_flusher: false,
            cgroup: None,
            defer_mlock: false,
        });
        let fifo = report.granted("sched_fifo");
        let _ = tx.send(fifo);
        if !fifo {
            return;
        }
        let mut due = Instant::now() + PROBE_PERIOD;
        loop {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let woke = Instant::now();
            if woke.saturating_duration_since(due) >= PROBE_LATE {
                if let Ok(mut q) = shared.lock() {
                    if q.len() == q.capacity() {
                        q.pop_front();
                    }
                    q.push_back((due, woke));
                }
            }
            due = woke + PROBE_PERIOD;
        }
    });
    rx.recv().ok().filter(|&f| f).map(|_| unrun)
}

/// How much of `[from, to)` the probe marked as the guest not running (µs).
fn unrun_within(unrun: &Unrun, from: Instant, to: Instant) -> u64 {
    let Ok(q) = unrun.lock() else { return 0 };
    let mut sum = Duration::ZERO;
    for &(a, b) in q.iter() {
        let (a, b) = (a.max(from), b.min(to));
        sum += b.saturating_duration_since(a);
    }
    u64::try_from(sum.as_micros()).unwrap_or(u64::MAX)
}

fn heartbeat(period_ms: u64) -> Result<(), Fail> {
    let period = Duration::from_millis(period_ms.max(1));
    let probe = start_probe();
    let mut worst = 0u64;
    let mut window = 0u64;
    let mut beats = 0u64;
    let mut next = Instant::now() + period;
    loop {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        let late = now.saturating_duration_since(next);
        let late = u64::try_from(late.as_micros())?;
        worst = worst.max(late);
        window = window.max(late);
        beats += 1;
        if late >= LATE_REPORT_US {
            let vm = probe.as_ref().map_or(0, |u| unrun_within(u, next, now));
            // At once, so the reader can place the stall in time (the bench's timeline).
            say(&format!("hbl {late} {vm}"));
        }
        if beats % 20 == 0 {
            say(&format!("hb {beats} {worst} {window}"));
            window = 0;
        }
        // The next beat is one period after this one really happened: a stall is counted once.
        next = Instant::now() + period;
    }
}

fn open_disk() -> Result<std::fs::File, Fail> {
    std::fs::File::open(SCRATCH_DISK).map_err(|e| Fail(format!("open {SCRATCH_DISK}: {e}")))
}

/// Reads `[0, len)` of the disk through the page cache in 1 MiB reads; `len` 0: to the end.
fn read_through(f: &std::fs::File, len: u64, buf: &mut [u8]) -> Result<u64, Fail> {
    use std::os::unix::fs::FileExt;
    let mut off = 0u64;
    while len == 0 || off < len {
        let n = f
            .read_at(buf, off)
            .map_err(|e| Fail(format!("read {SCRATCH_DISK} at {off}: {e}")))?;
        if n == 0 {
            break;
        }
        std::hint::black_box(&buf[..n]);
        off += n as u64;
    }
    Ok(off)
}

fn reread(mib: u64) -> Result<(), Fail> {
    let f = open_disk()?;
    let mut buf = vec![0u8; 1 << 20];
    for n in 1u64.. {
        let t = Instant::now();
        read_through(&f, mib << 20, &mut buf)?;
        say(&format!("pass {n} {}", t.elapsed().as_millis()));
    }
    Ok(())
}

fn stream(passes: u32) -> Result<(), Fail> {
    let f = open_disk()?;
    let mut buf = vec![0u8; 1 << 20];
    for n in 1..=passes {
        read_through(&f, 0, &mut buf)?;
        say(&format!("streamed {n}"));
    }
    sleep_forever()
}

fn burst(mib: u64, hold_ms: u64, pause_ms: u64) -> Result<(), Fail> {
    for n in 1u64.. {
        let mut held = Vec::new();
        touch(mib, &mut held);
        std::thread::sleep(Duration::from_millis(hold_ms));
        drop(held);
        say(&format!("burst {n}"));
        std::thread::sleep(Duration::from_millis(pause_ms));
    }
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

fn forkalloc(children: u32, mib: u64) -> Result<(), Fail> {
    // A start barrier: every child waits until the parent has forked them all (the pipe's
    // write end closes), so the storm is whole before memory runs short. Without it a slow
    // vCPU let the first children cross the limit while the parent was still forking, and
    // the kill of the build raced the parent's `forked` line.
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two fds into the live two-element array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(Fail(format!("pipe: {}", std::io::Error::last_os_error())));
    }
    let [gate_read, gate_write] = fds;
    for _ in 0..children {
        // SAFETY: this process is single-threaded (the workload never spawns threads), so the
        // child may run arbitrary code; it only waits on the gate, allocates and sleeps.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Fail(format!("fork: {}", std::io::Error::last_os_error())));
        }
        if pid == 0 {
            // The child: wait for the gate to open (EOF once the parent closed its write end
            // and no sibling holds it), then allocate its share in 1 MiB steps and hold it.
            // Its output would interleave with its siblings', so it stays quiet.
            let mut b = 0u8;
            // SAFETY: closing this process's own copy of the write end.
            unsafe { libc::close(gate_write) };
            // SAFETY: reading at most one byte into a live u8.
            unsafe { libc::read(gate_read, std::ptr::addr_of_mut!(b).cast(), 1) };
            let r = touch_and_hold(mib);
            std::process::exit(i32::from(r.is_err()));
        }
    }
    // SAFETY: closing fds this process owns (the children hold their own copies).
    unsafe { libc::close(gate_write) };
    // SAFETY: as above.
    unsafe { libc::close(gate_read) };
    say(&format!("forked {children}"));
    // The parent holds nothing and waits for its children (killed with the cgroup).
    // SAFETY: wait with a null status pointer is always sound.
    while unsafe { libc::wait(std::ptr::null_mut()) } > 0 {}
    sleep_forever()
}

fn touch_and_hold(mib: u64) -> Result<(), Fail> {
    let mut held: Vec<Vec<u8>> = Vec::new();
    for _ in 0..mib {
        let mut chunk: Vec<u8> = vec![0; 1 << 20];
        for i in (0..chunk.len()).step_by(4096) {
            chunk[i] = 1;
        }
        held.push(chunk);
    }
    std::hint::black_box(&held);
    sleep_forever()
}

fn latency(period_ms: u64, kib: u64, duration_ms: u64) -> Result<(), Fail> {
    let len = usize::try_from(kib)? << 10;
    let period = Duration::from_millis(period_ms);
    let end = Instant::now() + Duration::from_millis(duration_ms);
    let mut samples: Vec<u64> =
        Vec::with_capacity(usize::try_from(duration_ms / period_ms.max(1))? + 1);
    while Instant::now() < end {
        let t = Instant::now();
        // A fresh anonymous mapping each time, so every page is a new fault and a new charge
        // (a malloc'd buffer would be reused and charged only once).
        // SAFETY: an anonymous private mapping with no address hint has no preconditions.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Fail(format!("mmap: {}", std::io::Error::last_os_error())));
        }
        {
            // SAFETY: `p` is a fresh, writable, private mapping of `len` bytes that nothing
            // else references; the slice ends before it is unmapped.
            let buf = unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) };
            for off in (0..len).step_by(4096) {
                buf[off] = 1;
            }
            std::hint::black_box(&mut *buf);
        }
        // SAFETY: `p` and `len` are exactly the mapping created above, unmapped once.
        unsafe { libc::munmap(p, len) };
        samples.push(u64::try_from(t.elapsed().as_micros())?);
        std::thread::sleep(period.saturating_sub(t.elapsed()));
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).copied().unwrap_or(0)
    };
    say(&format!(
        "latency n={} p50_us={} p99_us={} max_us={}",
        samples.len(),
        at(0.5),
        at(0.99),
        samples.last().copied().unwrap_or(0)
    ));
    sleep_forever()
}

fn dstate(mib: u64) -> Result<(), Fail> {
    let mut held = Vec::new();
    touch(mib, &mut held);
    // clone(CLONE_VFORK) without CLONE_VM: the child gets a copy-on-write copy (as with fork),
    // and this process waits in `wait_for_vfork_done` — state D, killable — until the child
    // execs or exits, which it never does.
    // SAFETY: a raw clone without CLONE_VM and without a new stack behaves as fork; this
    // process is single-threaded (the workload never spawns threads), so the child may run
    // arbitrary code.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_VFORK | libc::SIGCHLD,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(Fail(format!(
            "clone(CLONE_VFORK): {}",
            std::io::Error::last_os_error()
        )));
    }
    if pid == 0 {
        // The child: give back its copy of the memory (so the parent is the largest), say so
        // and sleep; the parent stays in D state meanwhile.
        drop(held);
        say(&format!("dstate {}", std::process::id()));
        let _ = sleep_forever();
        std::process::exit(0);
    }
    // Released only when the child dies.
    std::hint::black_box(&held);
    say("released");
    sleep_forever()
}

fn sleep_forever() -> Result<(), Fail> {
    loop {
        std::thread::park();
    }
}
