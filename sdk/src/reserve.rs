//! Keeping the handler alive when the machine has no memory left.
//!
//! An OOM handler runs exactly when allocations fail and page cache —
//! including its own code — is being evicted. If it has to fault in a page
//! of its binary or grow its heap, it stalls with everyone else and acts too
//! late. [`enter`] applies the usual defences, each reported as
//! [`Granted`](StepStatus::Granted), [`Denied`](StepStatus::Denied) or
//! [`Skipped`](StepStatus::Skipped) so an unprivileged container still runs,
//! degraded, and says so in its log:
//!
//! 1. move into a dedicated cgroup with `memory.min` (and `memory.low`) set —
//!    the userspace form of the proposed `memory.oom_reserve_in_bytes` —
//!    *first*, so the pages touched below are charged to the protected group;
//! 2. [`mlockall(2)`](https://man7.org/linux/man-pages/man2/mlockall.2.html)
//!    (`MCL_CURRENT|MCL_FUTURE`, optionally `MCL_ONFAULT`), or
//!    [`MlockMode::Resident`]: `mlock(2)` of exactly the pages resident now
//!    plus `MCL_FUTURE` — checked against `RLIMIT_MEMLOCK` first, raising
//!    the soft limit when allowed;
//!    with [`MlockMode::Resident`], no transparent huge pages for the
//!    process (`PR_SET_THP_DISABLE`), so a touched byte costs a page, not
//!    2 MiB;
//! 3. pre-fault a region of the calling thread's stack;
//! 4. `oom_score_adj` −1000 (the kernel OOM killer never picks us);
//! 5. nice and optional `SCHED_FIFO` for the calling thread;
//! 6. `PR_SET_IO_FLUSHER` for the calling thread (its allocations do not
//!    recurse into I/O, and it is not throttled as a writer).
//!
//! Steps 3, 5 and 6 are per-thread: call [`enter`] on the handler thread.
//!
//! Why [`MlockMode::Resident`] exists: `MCL_CURRENT` populates and locks
//! every mapping — the whole text of a static binary, table room never
//! used — so the handler costs its address space on every node; with
//! `MCL_ONFAULT` the kernel still counts the whole address space as locked
//! (`VmLck`). Locking the program's own code and read-only data, and
//! elsewhere what a warm-up decision touched, costs what the handler uses
//! and keeps the decision path in RAM. A caller that runs such
//! a warm-up sets [`ReserveConfig::defer_mlock`] and calls [`lock_memory`]
//! after it (the runner does).
//! [`verify`] reads the state back for tests and logs.
//!
//! The file answers "which protections did the handler get?"; its child
//! modules hold the longer answers: `mlock` the `mlockall` step, `exe` the
//! parts of the program's file left unlocked, `stack` the memory touched up
//! front, `state` the read-back.

use std::fmt;

use rustix::io::Errno;

use crate::cgroup::{Cgroup, Limit};
use crate::error::{Error, Result};
use crate::proc::ProcDir;

mod exe;
mod mlock;
mod stack;
mod state;

pub use mlock::{drop_start_up_pages, lock_memory};
pub use stack::{ReservedBuffer, prefault_stack};
pub use state::{ReserveState, verify};

/// Largest stack region [`prefault_stack`] touches.
pub const MAX_STACK_PREFAULT: usize = 8 << 20;

/// Which `mlockall` to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MlockMode {
    /// Do not lock memory.
    Off,
    /// `MCL_CURRENT | MCL_FUTURE`: everything mapped now and later is
    /// resident and locked.
    All,
    /// `MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT` (4.4+): lock pages as they
    /// are touched instead of populating every mapping at once (the kernel
    /// still counts every mapping in `VmLck`).
    AllOnFault,
    /// `mlock(2)` of the program's own file mappings (code, read-only data)
    /// whole but for the unwind tables and what only start-up reads
    /// (`.eh_frame`, `.gcc_except_table`, `.rela.dyn`, …, and a section
    /// `.text.oomkit_cold` of start-up-only code if the program links one),
    /// and elsewhere of the pages resident when the lock is taken
    /// (the present bit of `/proc/self/pagemap`: heap, stacks, tables, shared
    /// libraries), then `MCL_FUTURE` for everything mapped later. Take it
    /// after touching the hot path (see the module docs).
    Resident,
}

/// The dedicated cgroup to move into.
#[derive(Debug)]
pub struct ReserveCgroup {
    /// The parent (must have `+memory` in `cgroup.subtree_control`).
    pub parent: Cgroup,
    /// The child's name (created if missing).
    pub name: String,
    /// `memory.min`: memory the kernel never reclaims from the handler.
    pub memory_min: u64,
    /// `memory.low`, if wanted.
    pub memory_low: Option<u64>,
}

/// What [`enter`] does.
#[derive(Debug)]
pub struct ReserveConfig {
    /// `mlockall` mode.
    pub mlock: MlockMode,
    /// Raise `RLIMIT_MEMLOCK`'s soft limit (to infinity with
    /// `CAP_SYS_RESOURCE`, else to the hard limit) before locking.
    pub raise_memlock_limit: bool,
    /// Bytes of the calling thread's stack to pre-fault (0 to skip; capped
    /// by [`prefault_stack`] at what the thread's stack has room for).
    pub stack_prefault: usize,
    /// `oom_score_adj` to set (−1000: never chosen by the kernel).
    pub oom_score_adj: Option<i16>,
    /// Nice value for the calling thread.
    pub nice: Option<i32>,
    /// `SCHED_FIFO` priority (1…99) for the calling thread.
    pub sched_fifo: Option<i32>,
    /// `PR_SET_IO_FLUSHER` for the calling thread (5.6+, `CAP_SYS_RESOURCE`).
    pub io_flusher: bool,
    /// A dedicated cgroup with `memory.min`.
    pub cgroup: Option<ReserveCgroup>,
    /// Leave the `mlockall` step to a later [`lock_memory`] call (after a
    /// warm-up); [`enter`] reports it as skipped.
    pub defer_mlock: bool,
}

impl Default for ReserveConfig {
    /// mlockall(CURRENT|FUTURE) raising the limit, 256 KiB of stack,
    /// oom_score_adj −1000, nice −10, no FIFO, IO_FLUSHER, no cgroup.
    fn default() -> Self {
        ReserveConfig {
            mlock: MlockMode::All,
            raise_memlock_limit: true,
            stack_prefault: 256 << 10,
            oom_score_adj: Some(-1000),
            nice: Some(-10),
            sched_fifo: None,
            io_flusher: true,
            cgroup: None,
            defer_mlock: false,
        }
    }
}

/// The result of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepStatus {
    /// Applied; the text says what.
    Granted(String),
    /// Refused (usually a missing capability); the text says why.
    Denied(String),
    /// Not asked for, or not applicable.
    Skipped(String),
}

/// One step of [`enter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Short name: `cgroup`, `malloc_arenas`, `thp`, `mlockall`, `stack`,
    /// `oom_score_adj`, `nice`, `sched_fifo`, `io_flusher`.
    pub name: &'static str,
    /// What happened.
    pub status: StepStatus,
}

/// What [`enter`] achieved, step by step. `Display` prints a table for logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReserveReport {
    /// The steps in the order applied.
    pub steps: Vec<Step>,
}

impl ReserveReport {
    /// The step called `name`.
    pub fn step(&self, name: &str) -> Option<&StepStatus> {
        self.steps
            .iter()
            .find(|s| s.name == name)
            .map(|s| &s.status)
    }

    /// Whether step `name` was granted.
    pub fn granted(&self, name: &str) -> bool {
        matches!(self.step(name), Some(StepStatus::Granted(_)))
    }

    /// True when any step was denied: the handler runs without part of its
    /// protection.
    pub fn degraded(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.status, StepStatus::Denied(_)))
    }

    fn push(&mut self, name: &'static str, status: StepStatus) {
        self.steps.push(Step { name, status });
    }

    /// Replaces the outcome of step `name` (appends it if missing): a
    /// deferred step taken later, by [`lock_memory`].
    pub fn set(&mut self, step: Step) {
        match self.steps.iter_mut().find(|s| s.name == step.name) {
            Some(s) => *s = step,
            None => self.steps.push(step),
        }
    }
}

impl fmt::Display for ReserveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "reserve: {}",
            if self.degraded() { "DEGRADED" } else { "ok" }
        )?;
        for s in &self.steps {
            let (word, text) = match &s.status {
                StepStatus::Granted(t) => ("granted", t),
                StepStatus::Denied(t) => ("DENIED", t),
                StepStatus::Skipped(t) => ("skipped", t),
            };
            writeln!(f, "  {:<14} {:<8} {}", s.name, word, text)?;
        }
        Ok(())
    }
}

fn why(e: Errno, need: &str) -> String {
    match e {
        Errno::PERM | Errno::ACCESS => format!("{e}: needs {need}"),
        e => format!("{e}"),
    }
}

/// Caps glibc's malloc arenas at one
/// ([`mallopt(3)`](https://man7.org/linux/man-pages/man3/mallopt.3.html)
/// `M_ARENA_MAX`), as [`enter`] does before it locks memory. For a program
/// that starts threads of its own before it enters reserve mode: a thread
/// that allocates before the cap gets an arena of its own, 64 MiB of address
/// space that `mlockall(MCL_FUTURE)` then counts as locked. Process-wide,
/// so only on request. Returns whether the C library took it (glibc only).
pub fn limit_malloc_arenas() -> bool {
    crate::sys::limit_malloc_arenas(1)
}

/// Applies `cfg` to this process (and, for per-thread steps, the calling
/// thread). Never fails: every step reports its own outcome.
pub fn enter(cfg: &ReserveConfig) -> ReserveReport {
    let mut r = ReserveReport::default();
    r.push("cgroup", step_cgroup(cfg.cgroup.as_ref()));
    r.push("malloc_arenas", step_malloc_arenas(cfg.mlock));
    r.push("thp", step_thp(cfg.mlock));
    r.push(
        "mlockall",
        if cfg.defer_mlock && cfg.mlock != MlockMode::Off {
            StepStatus::Skipped("deferred until after the warm-up (lock_memory)".into())
        } else {
            mlock::step_mlock(cfg)
        },
    );
    r.push("stack", step_stack(cfg.stack_prefault));
    r.push("oom_score_adj", step_oom_score_adj(cfg.oom_score_adj));
    r.push("nice", step_nice(cfg.nice));
    r.push("sched_fifo", step_sched_fifo(cfg.sched_fifo));
    r.push("io_flusher", step_io_flusher(cfg.io_flusher));
    r
}

fn step_malloc_arenas(mlock: MlockMode) -> StepStatus {
    if mlock == MlockMode::Off {
        StepStatus::Skipped("no mlockall".into())
    } else if crate::sys::limit_malloc_arenas(1) {
        // Before anything is locked: a thread's own arena would reserve
        // 64 MiB of locked (never resident) address space.
        StepStatus::Granted("one malloc arena for all threads".into())
    } else {
        StepStatus::Skipped("not glibc".into())
    }
}

fn step_thp(mlock: MlockMode) -> StepStatus {
    if mlock != MlockMode::Resident {
        return StepStatus::Skipped("only with MlockMode::Resident".into());
    }
    // Before the warm-up: what it touches is what gets locked, and with
    // THP on `always` one touched byte of a large table is a resident (and
    // then locked) 2 MiB huge page.
    match crate::sys::disable_thp() {
        Ok(()) => StepStatus::Granted("PR_SET_THP_DISABLE (inherited by children)".into()),
        Err(e) => StepStatus::Denied(format!("PR_SET_THP_DISABLE: {e}")),
    }
}

fn step_stack(bytes: usize) -> StepStatus {
    if bytes == 0 {
        StepStatus::Skipped("not requested".into())
    } else {
        let n = prefault_stack(bytes);
        StepStatus::Granted(format!("touched {} KiB of this thread's stack", n >> 10))
    }
}

fn step_oom_score_adj(adj: Option<i16>) -> StepStatus {
    let Some(v) = adj else {
        return StepStatus::Skipped("not requested".into());
    };
    match ProcDir::open_self().and_then(|d| d.set_oom_score_adj(v)) {
        Ok(()) => StepStatus::Granted(format!("{v}")),
        Err(Error::Write { source, .. }) => StepStatus::Denied(format!(
            "{source}: lowering oom_score_adj needs CAP_SYS_RESOURCE"
        )),
        Err(e) => StepStatus::Denied(e.to_string()),
    }
}

fn step_nice(nice: Option<i32>) -> StepStatus {
    let Some(n) = nice else {
        return StepStatus::Skipped("not requested".into());
    };
    match rustix::process::setpriority_process(None, n) {
        Ok(()) => StepStatus::Granted(format!("{n} (this thread)")),
        Err(e) => StepStatus::Denied(why(e, "CAP_SYS_NICE or RLIMIT_NICE")),
    }
}

fn step_sched_fifo(prio: Option<i32>) -> StepStatus {
    let Some(p) = prio else {
        return StepStatus::Skipped("not requested".into());
    };
    match crate::sys::set_fifo(Some(p)) {
        Ok(()) => StepStatus::Granted(format!("priority {p} (this thread)")),
        Err(e) => match e.raw_os_error() {
            Some(libc::EPERM) => {
                StepStatus::Denied(format!("{e}: needs CAP_SYS_NICE or RLIMIT_RTPRIO"))
            }
            _ => StepStatus::Denied(e.to_string()),
        },
    }
}

fn step_io_flusher(wanted: bool) -> StepStatus {
    if !wanted {
        return StepStatus::Skipped("not requested".into());
    }
    match rustix::process::configure_io_flusher_behavior(true) {
        Ok(()) => StepStatus::Granted("PR_SET_IO_FLUSHER (this thread)".into()),
        Err(Errno::INVAL) => {
            StepStatus::Denied("EINVAL: kernel before 5.6 lacks PR_SET_IO_FLUSHER".into())
        }
        Err(e) => StepStatus::Denied(why(e, "CAP_SYS_RESOURCE")),
    }
}

fn step_cgroup(c: Option<&ReserveCgroup>) -> StepStatus {
    let Some(c) = c else {
        return StepStatus::Skipped("not requested".into());
    };
    let run = || -> Result<String> {
        let child = c.parent.create_child(&c.name)?;
        child.set_memory_min(Limit::Bytes(c.memory_min))?;
        if let Some(low) = c.memory_low {
            child.set_memory_low(Limit::Bytes(low))?;
        }
        child.add_process(rustix::process::getpid().as_raw_nonzero().get())?;
        Ok(format!(
            "moved into {} with memory.min {}{}",
            child.path().display(),
            c.memory_min,
            c.memory_low
                .map(|l| format!(", memory.low {l}"))
                .unwrap_or_default()
        ))
    };
    match run() {
        Ok(t) => StepStatus::Granted(t),
        Err(e @ Error::Unsupported { .. }) => StepStatus::Denied(format!(
            "{e} (is +memory enabled in the parent's cgroup.subtree_control?)"
        )),
        Err(e) => StepStatus::Denied(e.to_string()),
    }
}
