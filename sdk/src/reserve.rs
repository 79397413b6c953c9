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

use std::fmt;

use rustix::io::Errno;
use rustix::mm::MlockAllFlags;
use rustix::process::{Resource, Rlimit};

use crate::cgroup::{Cgroup, Limit};
use crate::error::{Error, Result};
use crate::proc::{self, Capability, ProcDir};

/// Largest stack region [`prefault_stack`] touches.
pub const MAX_STACK_PREFAULT: usize = 8 << 20;
const FRAME: usize = 4096;

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
    /// whole, and elsewhere of the pages resident when the lock is taken
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
    /// Short name: `cgroup`, `mlockall`, `stack`, `oom_score_adj`, `nice`,
    /// `sched_fifo`, `io_flusher`.
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

fn fmt_limit(v: Option<u64>) -> String {
    v.map_or_else(|| "unlimited".to_owned(), |b| format!("{b} bytes"))
}

fn why(e: Errno, need: &str) -> String {
    match e {
        Errno::PERM | Errno::ACCESS => format!("{e}: needs {need}"),
        e => format!("{e}"),
    }
}

/// Applies `cfg` to this process (and, for per-thread steps, the calling
/// thread). Never fails: every step reports its own outcome.
pub fn enter(cfg: &ReserveConfig) -> ReserveReport {
    let mut r = ReserveReport::default();
    r.push("cgroup", step_cgroup(cfg.cgroup.as_ref()));
    r.push(
        "malloc_arenas",
        if cfg.mlock == MlockMode::Off {
            StepStatus::Skipped("no mlockall".into())
        } else if crate::sys::limit_malloc_arenas(1) {
            // Before anything is locked: a thread's own arena would reserve
            // 64 MiB of locked (never resident) address space.
            StepStatus::Granted("one malloc arena for all threads".into())
        } else {
            StepStatus::Skipped("not glibc".into())
        },
    );
    r.push(
        "mlockall",
        if cfg.defer_mlock && cfg.mlock != MlockMode::Off {
            StepStatus::Skipped("deferred until after the warm-up (lock_memory)".into())
        } else {
            step_mlock(cfg)
        },
    );
    r.push(
        "stack",
        if cfg.stack_prefault == 0 {
            StepStatus::Skipped("not requested".into())
        } else {
            let n = prefault_stack(cfg.stack_prefault);
            StepStatus::Granted(format!("touched {} KiB of this thread's stack", n >> 10))
        },
    );
    r.push(
        "oom_score_adj",
        match cfg.oom_score_adj {
            None => StepStatus::Skipped("not requested".into()),
            Some(v) => match ProcDir::open_self().and_then(|d| d.set_oom_score_adj(v)) {
                Ok(()) => StepStatus::Granted(format!("{v}")),
                Err(Error::Write { source, .. }) => StepStatus::Denied(format!(
                    "{source}: lowering oom_score_adj needs CAP_SYS_RESOURCE"
                )),
                Err(e) => StepStatus::Denied(e.to_string()),
            },
        },
    );
    r.push(
        "nice",
        match cfg.nice {
            None => StepStatus::Skipped("not requested".into()),
            Some(n) => match rustix::process::setpriority_process(None, n) {
                Ok(()) => StepStatus::Granted(format!("{n} (this thread)")),
                Err(e) => StepStatus::Denied(why(e, "CAP_SYS_NICE or RLIMIT_NICE")),
            },
        },
    );
    r.push(
        "sched_fifo",
        match cfg.sched_fifo {
            None => StepStatus::Skipped("not requested".into()),
            Some(p) => match crate::sys::set_fifo(Some(p)) {
                Ok(()) => StepStatus::Granted(format!("priority {p} (this thread)")),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EPERM) => {
                        StepStatus::Denied(format!("{e}: needs CAP_SYS_NICE or RLIMIT_RTPRIO"))
                    }
                    _ => StepStatus::Denied(e.to_string()),
                },
            },
        },
    );
    r.push(
        "io_flusher",
        if !cfg.io_flusher {
            StepStatus::Skipped("not requested".into())
        } else {
            match rustix::process::configure_io_flusher_behavior(true) {
                Ok(()) => StepStatus::Granted("PR_SET_IO_FLUSHER (this thread)".into()),
                Err(Errno::INVAL) => {
                    StepStatus::Denied("EINVAL: kernel before 5.6 lacks PR_SET_IO_FLUSHER".into())
                }
                Err(e) => StepStatus::Denied(why(e, "CAP_SYS_RESOURCE")),
            }
        },
    );
    r
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

/// The `mlockall` step of `cfg`, on its own: for a caller that deferred it
/// ([`ReserveConfig::defer_mlock`]) until its hot path was warm. Put the
/// result into the report with [`ReserveReport::set`].
pub fn lock_memory(cfg: &ReserveConfig) -> Step {
    Step {
        name: "mlockall",
        status: step_mlock(cfg),
    }
}

fn step_mlock(cfg: &ReserveConfig) -> StepStatus {
    let flags = match cfg.mlock {
        MlockMode::Off => return StepStatus::Skipped("not requested".into()),
        MlockMode::All => MlockAllFlags::CURRENT | MlockAllFlags::FUTURE,
        MlockMode::AllOnFault => {
            MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT
        }
        MlockMode::Resident => MlockAllFlags::FUTURE,
    };
    let status = ProcDir::open_self().and_then(|d| d.status()).ok();
    let ipc_lock = proc::has_capability(Capability::IpcLock);
    let sys_resource = proc::has_capability(Capability::SysResource);
    // What will count as locked: the address space, or (Resident) what is resident.
    let vm_size = if cfg.mlock == MlockMode::Resident {
        status.and_then(|s| s.vm_rss).unwrap_or(0)
    } else {
        status.and_then(|s| s.vm_size).unwrap_or(0)
    };
    let mut lim = rustix::process::getrlimit(Resource::Memlock);
    let mut note = String::new();
    if cfg.raise_memlock_limit && lim.current.is_some() {
        let target = if sys_resource {
            Rlimit {
                current: None,
                maximum: None,
            }
        } else {
            Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            }
        };
        if target.current != lim.current {
            match rustix::process::setrlimit(Resource::Memlock, target) {
                Ok(()) => {
                    note = format!(
                        "; RLIMIT_MEMLOCK raised from {} to {}",
                        fmt_limit(lim.current),
                        fmt_limit(target.current)
                    );
                    lim = target;
                }
                Err(e) => note = format!("; raising RLIMIT_MEMLOCK failed: {e}"),
            }
        }
    }
    if !ipc_lock {
        if let Some(soft) = lim.current {
            if vm_size > soft {
                return StepStatus::Denied(format!(
                    "RLIMIT_MEMLOCK is {soft} bytes but the address space is {vm_size} bytes; \
                     needs CAP_IPC_LOCK or a memlock limit of at least that{note}"
                ));
            }
        }
    }
    let mode = match cfg.mlock {
        MlockMode::AllOnFault => "MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT",
        MlockMode::Resident => "MCL_FUTURE",
        _ => "MCL_CURRENT|MCL_FUTURE",
    };
    match rustix::mm::mlockall(flags) {
        Ok(()) => {
            if cfg.mlock == MlockMode::Resident {
                match lock_resident() {
                    Ok((bytes, ranges, None)) => {
                        note = format!(
                            "; mlock of the {} KiB resident in {ranges} ranges{note}",
                            bytes >> 10
                        )
                    }
                    Ok((bytes, ranges, Some(failed))) => {
                        return StepStatus::Denied(format!(
                            "mlock of the {} KiB resident in {ranges} ranges, but {failed}; \
                             MCL_FUTURE holds{note}",
                            bytes >> 10
                        ));
                    }
                    Err(e) => {
                        return StepStatus::Denied(format!(
                            "mlock of the resident pages: {e}; MCL_FUTURE holds{note}"
                        ));
                    }
                }
            }
            let warn = match (ipc_lock, lim.current) {
                (false, Some(soft)) => {
                    format!("; mappings beyond RLIMIT_MEMLOCK ({soft} bytes) will now fail")
                }
                _ => String::new(),
            };
            StepStatus::Granted(format!(
                "{mode}{}{note}{warn}",
                if ipc_lock { " (CAP_IPC_LOCK)" } else { "" }
            ))
        }
        Err(e) => StepStatus::Denied(format!(
            "mlockall({mode}): {e}; RLIMIT_MEMLOCK {}, address space {vm_size} bytes, \
             CAP_IPC_LOCK {}{note}",
            fmt_limit(lim.current),
            if ipc_lock { "held" } else { "missing" }
        )),
    }
}

/// Drops the pages of this process's read-only file mappings (program
/// text, read-only data) from its page tables, so that start-up code does
/// not stay resident; what runs next maps its pages again from the page
/// cache. Meant right before a warm-up and [`lock_memory`] with
/// [`MlockMode::Resident`], while no other thread runs and nothing is
/// locked. Returns the bytes that were resident in those mappings.
pub fn drop_start_up_pages() -> std::io::Result<usize> {
    crate::sys::drop_clean_file_pages()
}

/// Locks the program's own file mappings whole (its code and read-only
/// data, faulted in if needed), and of every other mapping the pages that
/// are resident now: the present bit (63) of each page's
/// `/proc/self/pagemap` entry, readable without privileges, over every
/// mapping of `/proc/self/maps` except the kernel's special ones; runs of
/// present pages are `mlock`ed one range at a time.
/// Returns the bytes locked, the number of ranges and what failed.
fn lock_resident() -> std::result::Result<(usize, usize, Option<String>), String> {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read("/proc/self/maps").map_err(|e| format!("/proc/self/maps: {e}"))?;
    let pagemap = std::fs::File::open("/proc/self/pagemap")
        .map_err(|e| format!("/proc/self/pagemap: {e}"))?;
    let page = rustix::param::page_size();
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.into_os_string().into_encoded_bytes())
        .unwrap_or_default();
    let mut ranges = Vec::new();
    let mut entries = vec![0u8; 8 * 512];
    for line in maps.split(|b| *b == b'\n') {
        let mut f = line.split(|b| *b == b' ').filter(|x| !x.is_empty());
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let name = f.nth(3).unwrap_or_default();
        if matches!(
            name,
            b"[vdso]" | b"[vvar]" | b"[vvar_vclock]" | b"[vsyscall]"
        ) || perms.first() != Some(&b'r')
        {
            continue;
        }
        let Some(dash) = range.iter().position(|b| *b == b'-') else {
            continue;
        };
        let hex = |s: &[u8]| usize::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok();
        let (Some(start), Some(end)) = (hex(&range[..dash]), hex(&range[dash + 1..])) else {
            continue;
        };
        // The program's own code and read-only data are locked whole: a
        // warm-up cannot reach every line of the kill path (error and log
        // branches), and a page of it read back from disk during an OOM is
        // the stall reserve mode exists to prevent.
        if !exe.is_empty() && name == exe.as_slice() {
            ranges.push((start, end));
            continue;
        }
        let mut run: Option<usize> = None;
        let mut at = start;
        while at < end {
            let n = ((end - at) / page).min(entries.len() / 8);
            let buf = &mut entries[..n * 8];
            let off = (at / page * 8) as u64;
            pagemap
                .read_exact_at(buf, off)
                .map_err(|e| format!("/proc/self/pagemap at {at:#x}: {e}"))?;
            for (i, e) in buf.chunks_exact(8).enumerate() {
                let present = e[7] & 0x80 != 0;
                let addr = at + i * page;
                match (present, run) {
                    (true, None) => run = Some(addr),
                    (false, Some(s)) => {
                        ranges.push((s, addr));
                        run = None;
                    }
                    _ => {}
                }
            }
            at += n * page;
        }
        if let Some(s) = run {
            ranges.push((s, end));
        }
    }
    // A range can fail when an allocation was freed since the maps were
    // read (ENOMEM), or when the memlock limit is reached (ENOMEM too):
    // the rest is still locked, and the caller reports what was not.
    let mut bytes = 0;
    let mut failed = None;
    for (s, e) in &ranges {
        match crate::sys::mlock_range(*s, e - s) {
            Ok(()) => bytes += e - s,
            Err(err) => {
                failed
                    .get_or_insert_with(|| (0usize, format!("mlock({s:#x}, {}): {err}", e - s)))
                    .0 += 1;
            }
        }
    }
    match failed {
        Some((n, first)) if bytes == 0 => Err(format!("{n} ranges failed, first {first}")),
        Some((n, first)) => Ok((
            bytes,
            ranges.len(),
            Some(format!("{n} ranges not locked, first {first}")),
        )),
        None => Ok((bytes, ranges.len(), None)),
    }
}

#[inline(never)]
fn touch_frames(frames: usize) -> u8 {
    let mut frame = [0u8; FRAME];
    std::hint::black_box(&mut frame);
    let below = if frames > 1 {
        touch_frames(frames - 1)
    } else {
        0
    };
    frame[usize::from(below)] = below.wrapping_add(1);
    std::hint::black_box(&frame)[usize::from(below)]
}

/// Bytes of stack left below the current frame of the calling thread,
/// from the mapping that holds it in `/proc/thread-self/maps` (the main
/// thread's `[stack]` may grow to `RLIMIT_STACK`). `None` if not found.
fn stack_room() -> Option<usize> {
    let here = 0u8;
    let sp = std::ptr::addr_of!(here) as usize;
    let maps = std::fs::read("/proc/thread-self/maps").ok()?;
    for line in maps.split(|b| *b == b'\n') {
        let mut f = line.split(|b| *b == b' ').filter(|x| !x.is_empty());
        let range = f.next()?;
        let dash = range.iter().position(|b| *b == b'-')?;
        let hex = |s: &[u8]| usize::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok();
        let (start, end) = (hex(&range[..dash])?, hex(&range[dash + 1..])?);
        if (start..end).contains(&sp) {
            let is_main_stack = line.ends_with(b"[stack]");
            return Some(if is_main_stack {
                let limit = rustix::process::getrlimit(Resource::Stack)
                    .current
                    .map_or(MAX_STACK_PREFAULT, |v| {
                        usize::try_from(v).unwrap_or(usize::MAX)
                    });
                limit.saturating_sub(end - sp)
            } else {
                sp - start
            });
        }
    }
    None
}

/// Touches about `bytes` of the calling thread's stack below the current
/// frame, so those pages are resident (and, after `mlockall`, locked)
/// before memory runs out. Safe code: a recursion of 4 KiB frames.
///
/// Capped at [`MAX_STACK_PREFAULT`] and at the room the calling thread's
/// stack has left (found in `/proc/thread-self/maps`) minus a 64 KiB
/// margin; if that cannot be found, at 64 KiB. Returns the bytes touched.
pub fn prefault_stack(bytes: usize) -> usize {
    let room = stack_room().map_or(64 << 10, |r| r.saturating_sub(64 << 10));
    let n = bytes.min(MAX_STACK_PREFAULT).min(room) / FRAME;
    if n > 0 {
        std::hint::black_box(touch_frames(n));
    }
    n * FRAME
}

/// A heap buffer allocated and touched up front, so using it later needs
/// no allocation and no page fault (resident; locked after `mlockall`).
#[derive(Debug)]
pub struct ReservedBuffer {
    buf: Box<[u8]>,
}

impl ReservedBuffer {
    /// Allocates `size` bytes and writes to every page.
    pub fn new(size: usize) -> Self {
        let mut buf = vec![0u8; size].into_boxed_slice();
        let page = rustix::param::page_size();
        let b = std::hint::black_box(&mut buf[..]);
        let mut i = 0;
        while i < b.len() {
            b[i] = 0x5a;
            i += page;
        }
        std::hint::black_box(&buf);
        ReservedBuffer { buf }
    }

    /// The buffer.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True for a zero-length buffer.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// The reserve-related state of this process and the calling thread, read
/// back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveState {
    /// `VmLck` of `/proc/self/status`: locked bytes.
    pub vm_lck: u64,
    /// `VmRSS`.
    pub vm_rss: u64,
    /// `/proc/self/oom_score_adj`.
    pub oom_score_adj: i16,
    /// `PR_GET_IO_FLUSHER` of the calling thread (`None` when unreadable:
    /// before 5.6, or without `CAP_SYS_RESOURCE`, which even the read needs).
    pub io_flusher: Option<bool>,
    /// Nice value of the calling thread.
    pub nice: i32,
    /// Scheduling policy of the calling thread (0 other, 1 FIFO, 2 RR …).
    pub sched_policy: Option<u32>,
    /// Real-time priority of the calling thread.
    pub rt_priority: Option<u32>,
    /// Our cgroup (the `0::` path of `/proc/self/cgroup`).
    pub cgroup: Option<String>,
    /// `RLIMIT_MEMLOCK` soft limit (`None` = unlimited).
    pub memlock_limit: Option<u64>,
}

/// Reads back what [`enter`] is meant to have set.
pub fn verify() -> Result<ReserveState> {
    let me = ProcDir::open_self()?;
    let st = me.status()?;
    let adj = me.oom_score_adj()?;
    let mut buf = [0u8; 4096];
    let cgroup = crate::proc::parse::cgroup_v2_path(me.read_into(c"cgroup", &mut buf)?)
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let thread = ProcDir::open_thread_self()?.stat()?;
    Ok(ReserveState {
        vm_lck: st.vm_lck.unwrap_or(0),
        vm_rss: st.vm_rss.unwrap_or(0),
        oom_score_adj: adj,
        io_flusher: rustix::process::is_io_flusher().ok(),
        nice: thread.nice,
        sched_policy: thread.policy,
        rt_priority: thread.rt_priority,
        cgroup,
        memlock_limit: rustix::process::getrlimit(Resource::Memlock).current,
    })
}
