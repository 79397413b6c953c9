//! Process introspection: who is in a cgroup and what they hold.
//!
//! A [`ProcDir`] is an open `/proc/PID` directory. Every file of the process
//! is opened relative to it, so all the reads of one [`ProcessInfo`] describe
//! the same process: if it exits and its PID is reused meanwhile, the reads
//! fail with [`Error::ProcessGone`] instead of mixing two processes.
//!
//! The hot path — list a cgroup, read every member's memory — is
//! allocation-free: [`scan_into`] streams `cgroup.procs` through a stack
//! buffer, reads `/proc/PID/status` (never `smaps_rollup`, which takes the
//! victim's mmap lock, unless asked) into another, and fills a reused
//! `Vec<ProcessInfo>` whose names are stored inline ([`Comm`]). A process
//! that exits mid-scan is skipped.
//!
//! ```no_run
//! use oomkit::{Cgroup, proc};
//! # fn main() -> oomkit::Result<()> {
//! let cg = Cgroup::open("/sys/fs/cgroup/batch.slice")?;
//! let mut procs = Vec::with_capacity(256);
//! proc::scan_into(&cg, &mut procs)?;
//! if let Some(big) = procs.iter().max_by_key(|p| p.freeable()) {
//!     println!("{} ({}) holds {} bytes", big.pid, big.comm, big.freeable());
//! }
//! # Ok(()) }
//! ```

// The raw parsers are public only with the `parsers` feature (fixture
// tests, benchmarks): they are not API a runtime should build on.
#[cfg(feature = "parsers")]
pub mod parse;
#[cfg(not(feature = "parsers"))]
pub(crate) mod parse;
mod types;

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

pub use types::*;

use crate::cgroup::Cgroup;
use crate::error::{Error, Op, ParseError, ParseErrorKind, Result};
use crate::fs;
use crate::util::{fmt_u64, io_err};

/// Buffer for `/proc/PID/status` (about 1.5 KiB; long `Groups` or
/// `Mems_allowed` lines on big machines can exceed it, then the cut tail —
/// after the fields we use — is dropped).
const STATUS_BUF: usize = 8192;
/// Buffer for the small files (`stat`, `statm`, `oom_score_adj`, `cgroup`).
const SMALL_BUF: usize = 4096;

/// Options of a process read or a cgroup scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOptions {
    /// Read `/proc/PID/cmdline` (allocates a `Vec<String>` per process).
    pub cmdline: bool,
    /// Read `/proc/PID/smaps_rollup` for PSS. Expensive, and it takes each
    /// process's mmap lock — which an allocating victim in direct reclaim
    /// may hold: do not use it while the machine is thrashing.
    pub smaps_rollup: bool,
    /// Keep kernel threads in the result (the root cgroup lists them).
    pub kernel_threads: bool,
}

impl Default for ScanOptions {
    /// Memory and identity only: no cmdline, no smaps, no kernel threads.
    fn default() -> Self {
        ScanOptions {
            cmdline: false,
            smaps_rollup: false,
            kernel_threads: false,
        }
    }
}

/// What a scan saw besides the processes it returned.
#[derive(Debug, Default)]
pub struct ScanSummary {
    /// PIDs listed in `cgroup.procs`.
    pub listed: usize,
    /// Processes returned.
    pub added: usize,
    /// Processes that exited between the listing and the read.
    pub gone: usize,
    /// Kernel threads left out.
    pub kernel_threads: usize,
    /// Processes left out because a read failed for another reason
    /// (permissions, malformed file); the first such error is kept.
    pub failed: usize,
    /// The first non-race error met, if any.
    pub first_error: Option<Error>,
}

fn proc_path(pid: Option<i32>, name: &CStr) -> PathBuf {
    let mut p = match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}")),
        None => PathBuf::from("/proc/self"),
    };
    p.push(name.to_string_lossy().as_ref());
    p
}

/// An open `/proc/PID` directory.
#[derive(Debug)]
pub struct ProcDir {
    fd: OwnedFd,
    /// `None` for `/proc/self` and `/proc/thread-self`.
    pid: Option<i32>,
}

impl ProcDir {
    /// Opens `/proc/PID`. A PID that does not exist is [`Error::ProcessGone`].
    /// Allocation-free.
    pub fn open(pid: i32) -> Result<Self> {
        if pid <= 0 {
            return Err(Error::ProcessGone { pid });
        }
        // "/proc/" + 10 digits + NUL
        let mut path = [0u8; 32];
        path[..6].copy_from_slice(b"/proc/");
        let mut digits = [0u8; 20];
        let d = fmt_u64(&mut digits, pid as u64);
        path[6..6 + d.len()].copy_from_slice(d);
        let cpath = CStr::from_bytes_until_nul(&path).map_err(|_| Error::ProcessGone { pid })?;
        let fd = rustix::fs::openat(
            rustix::fs::CWD,
            cpath,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            fs::proc_errno(Some(pid), e, |e| {
                Error::io(format!("/proc/{pid}"), Op::Open, io_err(e))
            })
        })?;
        Ok(ProcDir { fd, pid: Some(pid) })
    }

    /// Opens `/proc/self`.
    pub fn open_self() -> Result<Self> {
        Self::open_special(c"/proc/self")
    }

    /// Opens `/proc/thread-self`: per-thread values (nice, scheduling
    /// policy) of the calling thread.
    pub fn open_thread_self() -> Result<Self> {
        Self::open_special(c"/proc/thread-self")
    }

    fn open_special(path: &CStr) -> Result<Self> {
        let fd = rustix::fs::openat(
            rustix::fs::CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(path.to_string_lossy().as_ref(), Op::Open, io_err(e)))?;
        Ok(ProcDir { fd, pid: None })
    }

    /// The PID (our own for `/proc/self`).
    pub fn pid(&self) -> i32 {
        self.pid
            .unwrap_or_else(|| rustix::process::getpid().as_raw_nonzero().get())
    }

    fn err(&self, name: &CStr, op: Op, e: Errno) -> Error {
        fs::proc_errno(self.pid, e, |e| {
            Error::io(proc_path(self.pid, name), op, io_err(e))
        })
    }

    fn parse_err(&self, name: &CStr, source: ParseError) -> Error {
        Error::Parse {
            path: proc_path(self.pid, name),
            source,
        }
    }

    fn open_file(&self, name: &CStr) -> Result<OwnedFd> {
        rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| self.err(name, Op::Open, e))
    }

    /// Reads file `name` of the process into `buf`. Returns the bytes and
    /// whether the file was cut at `buf.len()`. Allocation-free on success.
    pub fn read_prefix<'b>(&self, name: &CStr, buf: &'b mut [u8]) -> Result<(&'b [u8], bool)> {
        let fd = self.open_file(name)?;
        let (n, full) = fs::read_prefix(&fd, buf).map_err(|e| self.err(name, Op::Read, e))?;
        Ok((&buf[..n], full))
    }

    /// Reads a whole file into `buf`; a file larger than `buf` is a
    /// [`ParseErrorKind::TooLarge`] error. Allocation-free on success.
    pub fn read_into<'b>(&self, name: &CStr, buf: &'b mut [u8]) -> Result<&'b [u8]> {
        match self.read_prefix(name, buf)? {
            (data, false) => Ok(data),
            (_, true) => Err(self.parse_err(name, ParseError::new(1, ParseErrorKind::TooLarge))),
        }
    }

    fn parsed<T>(
        &self,
        name: &CStr,
        parse: impl FnOnce(&[u8]) -> std::result::Result<T, ParseError>,
    ) -> Result<T> {
        let mut buf = [0u8; SMALL_BUF];
        let data = self.read_into(name, &mut buf)?;
        parse(data).map_err(|e| self.parse_err(name, e))
    }

    /// `/proc/PID/status` (see `parse::status`). Allocation-free.
    pub fn status(&self) -> Result<ProcStatus> {
        let mut buf = [0u8; STATUS_BUF];
        let (data, cut) = self.read_prefix(c"status", &mut buf)?;
        let data = if cut {
            parse::complete_lines(data)
        } else {
            data
        };
        parse::status(data).map_err(|e| self.parse_err(c"status", e))
    }

    /// `/proc/PID/stat` (see `parse::stat`). Allocation-free.
    pub fn stat(&self) -> Result<ProcStat> {
        self.parsed(c"stat", parse::stat)
    }

    /// `/proc/PID/statm`. Allocation-free.
    pub fn statm(&self) -> Result<Statm> {
        self.parsed(c"statm", parse::statm)
    }

    /// `/proc/PID/oom_score_adj`. Allocation-free.
    pub fn oom_score_adj(&self) -> Result<i16> {
        self.parsed(c"oom_score_adj", parse::oom_score)
    }

    /// `/proc/PID/oom_score`: the kernel OOM killer's current badness.
    pub fn oom_score(&self) -> Result<i16> {
        self.parsed(c"oom_score", parse::oom_score)
    }

    /// Writes `/proc/PID/oom_score_adj` (−1000…1000; lowering it needs
    /// `CAP_SYS_RESOURCE`).
    pub fn set_oom_score_adj(&self, value: i16) -> Result<()> {
        if !(-1000..=1000).contains(&value) {
            return Err(Error::InvalidArgument {
                what: "oom_score_adj",
                reason: format!("{value} is outside -1000..=1000"),
            });
        }
        let name = c"oom_score_adj";
        let mut b = [0u8; 21];
        let mut digits = [0u8; 20];
        let d = fmt_u64(&mut digits, u64::from(value.unsigned_abs()));
        let mut n = 0;
        if value < 0 {
            b[0] = b'-';
            n = 1;
        }
        b[n..n + d.len()].copy_from_slice(d);
        let data = &b[..n + d.len()];
        let wrap = |e: Errno| {
            fs::proc_errno(self.pid, e, |e| Error::Write {
                path: proc_path(self.pid, name),
                data: String::from_utf8_lossy(data).into_owned(),
                source: io_err(e),
            })
        };
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(wrap)?;
        rustix::io::write(&fd, data).map_err(wrap)?;
        Ok(())
    }

    /// `/proc/PID/cmdline`, NUL-separated arguments. Allocates.
    pub fn cmdline(&self) -> Result<Vec<String>> {
        let name = c"cmdline";
        let fd = self.open_file(name)?;
        let mut out = Vec::new();
        fs::read_to_end(&fd, &mut out).map_err(|e| self.err(name, Op::Read, e))?;
        Ok(parse::cmdline(&out))
    }

    /// `/proc/PID/smaps_rollup` (4.14+). Takes the process's mmap lock.
    pub fn smaps_rollup(&self) -> Result<SmapsRollup> {
        self.parsed(c"smaps_rollup", parse::smaps_rollup)
    }

    /// Whether the process is (now) in `cg`, by its `0::` line in
    /// `/proc/PID/cgroup`. Allocation-free.
    ///
    /// Both sides are paths relative to *our* cgroup namespace.
    pub fn in_cgroup(&self, cg: &Cgroup) -> Result<bool> {
        let mut buf = [0u8; SMALL_BUF];
        let data = self.read_into(c"cgroup", &mut buf)?;
        let Some(path) = parse::cgroup_v2_path(data) else {
            return Err(self.parse_err(
                c"cgroup",
                ParseError::new(1, ParseErrorKind::MissingKey("0::")),
            ));
        };
        Ok(path == cg.hierarchy_path().as_os_str().as_bytes())
    }

    /// Everything a victim choice needs about the process (see
    /// [`ProcessInfo`]). A zombie counts as gone. Allocation-free unless
    /// `opts.cmdline` is set.
    pub fn info(&self, opts: &ScanOptions) -> Result<ProcessInfo> {
        let st = self.status()?;
        if st.has_exited() {
            return Err(Error::ProcessGone { pid: self.pid() });
        }
        let kernel_thread = match st.kthread {
            Some(k) => k,
            // Before `Kthread:` (6.x): PF_KTHREAD in the stat flags.
            None => self.stat()?.is_kernel_thread(),
        };
        let mut p = ProcessInfo {
            pid: st.tgid.unwrap_or_else(|| self.pid()),
            ppid: st.ppid.unwrap_or(0),
            comm: st.name,
            state: st.state.unwrap_or(b'?'),
            uid: st.uid.unwrap_or(0),
            euid: st.euid.unwrap_or(0),
            kernel_thread,
            swap: st.vm_swap.unwrap_or(0),
            locked: st.vm_lck.unwrap_or(0),
            ..ProcessInfo::default()
        };
        if !kernel_thread {
            match (st.rss_anon, st.rss_file, st.rss_shmem) {
                (Some(a), Some(f), Some(s)) => {
                    p.rss_anon = a;
                    p.rss_file = f;
                    p.rss_shmem = s;
                    p.rss = st.vm_rss.unwrap_or(a + f + s);
                }
                _ => {
                    // Before 4.5 (or a status cut short): statm.
                    let m = self.statm()?;
                    let page = rustix::param::page_size() as u64;
                    p.rss = m.resident * page;
                    p.rss_file = m.shared * page;
                    p.rss_anon = m.resident.saturating_sub(m.shared) * page;
                }
            }
        }
        p.oom_score_adj = self.oom_score_adj()?;
        if opts.smaps_rollup && !kernel_thread {
            p.smaps = match self.smaps_rollup() {
                Ok(s) => Some(s),
                Err(e) if e.is_gone() => return Err(e),
                // Permission (ptrace access mode) or an old kernel: no PSS.
                Err(_) => None,
            };
        }
        if opts.cmdline {
            p.cmdline = Some(self.cmdline()?);
        }
        Ok(p)
    }
}

impl AsFd for ProcDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Reads [`ProcessInfo`] of one process (memory and identity; see
/// [`ProcDir::info`] for options). Allocation-free.
pub fn process_info(pid: i32) -> Result<ProcessInfo> {
    ProcDir::open(pid)?.info(&ScanOptions::default())
}

/// Calls `f` for every PID in `cg`'s `cgroup.procs`, streaming the file
/// through a stack buffer (no allocation, any number of PIDs).
pub fn for_each_pid(cg: &Cgroup, f: impl FnMut(i32)) -> Result<usize> {
    cg.for_each_pid(f)
}

/// Reads every process directly in `cg` into `out` (cleared first) with
/// [`ScanOptions::default`]. See [`scan_into_with`].
pub fn scan_into(cg: &Cgroup, out: &mut Vec<ProcessInfo>) -> Result<ScanSummary> {
    scan_into_with(cg, out, &ScanOptions::default())
}

/// Reads every process directly in `cg` (not in its descendants) into
/// `out`, which is cleared first and reused: with enough capacity and
/// without `cmdline`, no allocation. Processes that exit meanwhile are
/// skipped and counted; other per-process failures are skipped, counted
/// and the first is kept in the summary. Only a failure to list the
/// cgroup is an error.
pub fn scan_into_with(
    cg: &Cgroup,
    out: &mut Vec<ProcessInfo>,
    opts: &ScanOptions,
) -> Result<ScanSummary> {
    out.clear();
    let mut sum = ScanSummary::default();
    sum.listed = for_each_pid(cg, |pid| {
        match ProcDir::open(pid).and_then(|d| d.info(opts)) {
            Ok(p) if p.kernel_thread && !opts.kernel_threads => sum.kernel_threads += 1,
            Ok(p) => {
                out.push(p);
                sum.added += 1;
            }
            Err(e) if e.is_gone() => sum.gone += 1,
            Err(e) => {
                sum.failed += 1;
                if sum.first_error.is_none() {
                    sum.first_error = Some(e);
                }
            }
        }
    })?;
    Ok(sum)
}

fn read_system<T>(
    path: &'static CStr,
    buf: &mut [u8],
    parse: impl FnOnce(&[u8]) -> std::result::Result<T, ParseError>,
) -> Result<T> {
    let p = || PathBuf::from(path.to_string_lossy().as_ref());
    let fd = rustix::fs::openat(
        rustix::fs::CWD,
        path,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(p(), Op::Open, io_err(e)))?;
    let (filled, full) =
        fs::read_prefix(&fd, buf).map_err(|e| Error::io(p(), Op::Read, io_err(e)))?;
    if full {
        return Err(Error::Parse {
            path: p(),
            source: ParseError::new(1, ParseErrorKind::TooLarge),
        });
    }
    parse(&buf[..filled]).map_err(|source| Error::Parse { path: p(), source })
}

/// A capability the SDK checks for itself (numbers from `capability.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Capability {
    /// `CAP_IPC_LOCK`: `mlockall` beyond `RLIMIT_MEMLOCK`.
    IpcLock,
    /// `CAP_SYS_NICE`: negative nice, real-time scheduling.
    SysNice,
    /// `CAP_SYS_RESOURCE`: lowering `oom_score_adj`, `PR_SET_IO_FLUSHER`,
    /// raising hard limits, PSI windows that are not multiples of 2 s.
    SysResource,
}

/// Whether the calling thread has `cap` in its effective set
/// (`capget(2)`): the one check of our own privileges. This is the raw
/// bit: root in a user namespace has it, root with it dropped does not.
pub fn has_capability(cap: Capability) -> bool {
    use rustix::thread::CapabilitySet as Set;
    let bit = match cap {
        Capability::IpcLock => Set::IPC_LOCK,
        Capability::SysNice => Set::SYS_NICE,
        Capability::SysResource => Set::SYS_RESOURCE,
    };
    rustix::thread::capabilities(None).is_ok_and(|c| c.effective.contains(bit))
}

/// `/proc/meminfo`. Allocation-free.
pub fn meminfo() -> Result<MemInfo> {
    let mut buf = [0u8; 8192];
    read_system(c"/proc/meminfo", &mut buf, parse::meminfo)
}

/// An excerpt of `/proc/vmstat` (see [`VmStat`]). Allocation-free.
pub fn vmstat() -> Result<VmStat> {
    let mut buf = [0u8; 16384];
    read_system(c"/proc/vmstat", &mut buf, parse::vmstat)
}
