//! Kill primitives: pidfd-based signals with `process_mrelease`, and group
//! kills with `cgroup.kill` or a freeze-and-signal fallback.
//!
//! A PID read from `cgroup.procs` may belong to a different process by the
//! time we act: the first one exited, was reaped, and its number was given to
//! a newcomer. [`Pidfd`] closes that race. A pidfd pins one process for good;
//! after opening it, [`Pidfd::open_in`] re-checks that the process is (still)
//! in the expected cgroup, and every later signal goes to the pinned process
//! or fails with [`Error::ProcessGone`] — never to a stranger. `kill(2)` on a
//! bare PID is never used.
//!
//! The hot path is allocation-free: [`Pidfd::open`], [`Pidfd::open_in`],
//! [`Pidfd::send_signal`], [`Pidfd::try_mrelease`], [`Pidfd::wait_exit`],
//! [`Pidfd::is_alive`] and [`kill_process`] allocate nothing when they
//! succeed or meet [`Error::ProcessGone`].
//!
//! ```no_run
//! use std::time::Duration;
//! use oomkit::{Cgroup, kill::{self, KillOptions, Pidfd}};
//! # fn main() -> oomkit::Result<()> {
//! let cg = Cgroup::open("/sys/fs/cgroup/batch.slice")?;
//! let pid = cg.procs()?[0];
//! match Pidfd::open_in(&cg, pid) {
//!     Ok(victim) => {
//!         let out = kill::kill_process(&victim, &KillOptions::default())?;
//!         println!("{pid}: exited={} mrelease={:?}", out.exited, out.mreleased);
//!     }
//!     Err(e) if e.is_gone() => println!("{pid} already left"),
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```

mod group;
mod reap;
mod reserve;
mod signal;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags};

pub(crate) use group::members;
pub use group::{
    GroupKillOptions, GroupKillOutcome, GroupKillPath, check_group_target, kill_cgroup,
    wait_for_cgroup_events,
};
pub use reap::{Reaped, Renice};
pub(crate) use reserve::{FdReserve, RESERVED_FDS, tracked_cap_now};
pub use signal::Signal;

use crate::cgroup::Cgroup;
use crate::error::{Error, Result};
use crate::proc::ProcDir;

/// A process pinned by a pidfd
/// ([`pidfd_open(2)`](https://man7.org/linux/man-pages/man2/pidfd_open.2.html), 5.3+).
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    pid: i32,
}

/// Where a process is relative to the cgroup we expected it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// It is in the cgroup.
    Member,
    /// It is alive but in another cgroup (moved, or the PID we read was
    /// stale and is now someone else's — who is not signalled).
    Elsewhere,
}

/// The result of a `process_mrelease` attempt, as data: no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum Mrelease {
    /// Not attempted.
    NotRequested,
    /// The address space was reaped.
    Done,
    /// The kernel lacks `process_mrelease` (before 5.15, or seccomp).
    Unsupported,
    /// The process had already released its memory (`ESRCH`: no mm left).
    AlreadyExited,
    /// The process is not dying (`EINVAL`): SIGKILL was not delivered, or
    /// its address space is shared with a live process (`CLONE_VM`).
    NotDying,
    /// Another error, with its errno.
    Failed(i32),
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: d.subsec_nanos().into(),
    }
}

/// Why oomkit may never kill this process, or `None` when it may: PID 1
/// (or an invalid PID), oomkit itself, a kernel thread, or a process the
/// administrator exempted with `oom_score_adj -1000`. The one decision the
/// loop's guard, the priority handler and the watchdog all apply (the
/// cgroup rules — protected, oomkit's own — are the guard's).
pub fn never_kill(
    pid: i32,
    own_pid: i32,
    kernel_thread: bool,
    oom_score_adj: i16,
) -> Option<&'static str> {
    if pid <= 1 {
        return Some("never PID 1 or an invalid PID");
    }
    if pid == own_pid {
        return Some("never oomkit itself");
    }
    if kernel_thread {
        return Some("never a kernel thread");
    }
    if oom_score_adj <= OOM_SCORE_ADJ_MIN {
        return Some("process has oom_score_adj -1000");
    }
    None
}

/// `OOM_SCORE_ADJ_MIN`: the kernel never picks such a process; neither do we.
pub(crate) const OOM_SCORE_ADJ_MIN: i16 = -1000;

fn is_guarded(pid: i32) -> bool {
    pid == 1 || pid == rustix::process::getpid().as_raw_nonzero().get()
}

impl Pidfd {
    /// Opens a pidfd for `pid` (a process, not a thread ID). A PID that
    /// does not exist (or is not positive) is [`Error::ProcessGone`]. Allocation-free on success
    /// and on `ProcessGone`.
    pub fn open(pid: i32) -> Result<Self> {
        // `Pid::from_raw` asserts non-negative input: check first.
        if pid <= 0 {
            return Err(Error::ProcessGone { pid });
        }
        let p = Pid::from_raw(pid).ok_or(Error::ProcessGone { pid })?;
        match rustix::process::pidfd_open(p, PidfdFlags::empty()) {
            Ok(fd) => Ok(Pidfd { fd, pid }),
            Err(Errno::SRCH) => Err(Error::ProcessGone { pid }),
            Err(Errno::NOSYS) => Err(Error::SyscallUnsupported { call: "pidfd_open" }),
            Err(Errno::INVAL) => Err(Error::InvalidArgument {
                what: "pid",
                reason: format!("{pid} is not a thread-group leader"),
            }),
            Err(e) => Err(Error::sys("pidfd_open", e)),
        }
    }

    /// Opens a pidfd for `pid` — typically read from `cgroup.procs` — and
    /// confirms that the pinned process is a member of `cg` (its
    /// `/proc/PID/cgroup` names `cg.hierarchy_path()`). A process that left
    /// the cgroup, or a PID now used by a process elsewhere, is reported as
    /// [`Error::ProcessGone`] and nothing is signalled. Allocation-free on
    /// success and on `ProcessGone`.
    pub fn open_in(cg: &Cgroup, pid: i32) -> Result<Self> {
        let p = Self::open(pid)?;
        match p.membership(cg)? {
            Membership::Member => Ok(p),
            Membership::Elsewhere => Err(Error::ProcessGone { pid }),
        }
    }

    /// Whether the pinned process is in `cg`.
    ///
    /// Reads `/proc/PID/cgroup` and then checks that the pinned process is
    /// still alive: a live process keeps its PID, so the file read was its
    /// own. A dead one is [`Error::ProcessGone`]. Allocation-free.
    pub fn membership(&self, cg: &Cgroup) -> Result<Membership> {
        let inside = ProcDir::open(self.pid)?.in_cgroup(cg)?;
        if !self.is_alive()? {
            return Err(Error::ProcessGone { pid: self.pid });
        }
        Ok(if inside {
            Membership::Member
        } else {
            Membership::Elsewhere
        })
    }

    /// The PID (in our PID namespace).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `sig` to the pinned process
    /// ([`pidfd_send_signal(2)`](https://man7.org/linux/man-pages/man2/pidfd_send_signal.2.html)).
    ///
    /// Refuses PID 1 and this process ([`Error::InvalidArgument`]). A
    /// process that has been reaped is [`Error::ProcessGone`] (a zombie
    /// accepts the signal and ignores it). Allocation-free on success and
    /// on `ProcessGone`.
    pub fn send_signal(&self, sig: Signal) -> Result<()> {
        if is_guarded(self.pid) {
            return Err(Error::InvalidArgument {
                what: "signal target",
                reason: format!("refusing to signal PID {} (init or ourselves)", self.pid),
            });
        }
        match rustix::process::pidfd_send_signal(&self.fd, sig.to_rustix()) {
            Ok(()) => Ok(()),
            Err(Errno::SRCH) => Err(Error::ProcessGone { pid: self.pid }),
            Err(Errno::NOSYS) => Err(Error::SyscallUnsupported {
                call: "pidfd_send_signal",
            }),
            Err(e) => Err(Error::sys("pidfd_send_signal", e)),
        }
    }

    /// `SIGKILL`.
    pub fn kill(&self) -> Result<()> {
        self.send_signal(Signal::KILL)
    }

    /// [`process_mrelease(2)`](https://man7.org/linux/man-pages/man2/process_mrelease.2.html)
    /// (5.15+): reaps the address space of the process, which must be dying
    /// from SIGKILL, so its memory returns now instead of when it finishes
    /// exiting (it may be stuck in `D` state). Retries `EAGAIN`/`EINTR` a
    /// few times. Allocation-free.
    pub fn try_mrelease(&self) -> Mrelease {
        let mut tries = 0;
        loop {
            match crate::sys::process_mrelease(&self.fd) {
                Ok(()) => return Mrelease::Done,
                Err(e) => match e.raw_os_error() {
                    Some(libc::ENOSYS) => return Mrelease::Unsupported,
                    Some(libc::ESRCH) => return Mrelease::AlreadyExited,
                    Some(libc::EINVAL) => return Mrelease::NotDying,
                    Some(libc::EAGAIN | libc::EINTR) if tries < 3 => tries += 1,
                    Some(errno) => return Mrelease::Failed(errno),
                    None => return Mrelease::Failed(0),
                },
            }
        }
    }

    /// [`try_mrelease`](Self::try_mrelease) as a `Result`: `Unsupported`
    /// is [`Error::SyscallUnsupported`], `AlreadyExited` is [`Error::ProcessGone`],
    /// `NotDying` is [`Error::InvalidArgument`].
    pub fn mrelease(&self) -> Result<()> {
        match self.try_mrelease() {
            Mrelease::Done => Ok(()),
            Mrelease::NotRequested => Ok(()),
            Mrelease::Unsupported => Err(Error::SyscallUnsupported {
                call: "process_mrelease",
            }),
            Mrelease::AlreadyExited => Err(Error::ProcessGone { pid: self.pid }),
            Mrelease::NotDying => Err(Error::InvalidArgument {
                what: "process_mrelease target",
                reason: format!("process {} is not dying (send SIGKILL first)", self.pid),
            }),
            Mrelease::Failed(errno) => Err(Error::sys(
                "process_mrelease",
                std::io::Error::from_raw_os_error(errno),
            )),
        }
    }

    /// Waits until the process has exited or `deadline` passes, by polling
    /// the pidfd for `POLLIN`
    /// ([`poll(2)`](https://man7.org/linux/man-pages/man2/poll.2.html)).
    /// Returns whether it exited. A zombie has exited. Allocation-free.
    pub fn wait_exit(&self, deadline: Instant) -> Result<bool> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = timespec(left);
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(0) if left.is_zero() => return Ok(false),
                Ok(0) => continue,
                Ok(_) => {
                    let r = fds[0].revents();
                    if r.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                        return Ok(true);
                    }
                    if left.is_zero() {
                        return Ok(false);
                    }
                }
                Err(Errno::INTR) => continue,
                Err(e) => return Err(Error::sys("poll", e)),
            }
        }
    }

    /// True until the process exits (a zombie is not alive). Allocation-free.
    pub fn is_alive(&self) -> Result<bool> {
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        loop {
            match rustix::event::poll(&mut fds, Some(&timespec(Duration::ZERO))) {
                Ok(0) => return Ok(true),
                Ok(_) => {
                    return Ok(!fds[0]
                        .revents()
                        .intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR));
                }
                Err(Errno::INTR) => continue,
                Err(e) => return Err(Error::sys("poll", e)),
            }
        }
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// How [`kill_process`] kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillOptions {
    /// Send SIGTERM first and wait this long for the process to exit
    /// before SIGKILL. `None`: SIGKILL at once.
    pub grace: Option<Duration>,
    /// Reap the address space with `process_mrelease` right after SIGKILL.
    pub mrelease: bool,
    /// How long to wait for the exit after SIGKILL.
    pub deadline: Duration,
}

impl Default for KillOptions {
    /// SIGKILL at once, mrelease, wait up to 1 s.
    fn default() -> Self {
        KillOptions {
            grace: None,
            mrelease: true,
            deadline: Duration::from_secs(1),
        }
    }
}

/// What [`kill_process`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillOutcome {
    /// The PID.
    pub pid: i32,
    /// When the first signal was sent.
    pub signalled_at: Instant,
    /// SIGTERM was sent.
    pub sigterm_sent: bool,
    /// SIGKILL was sent (not needed if SIGTERM sufficed).
    pub sigkill_sent: bool,
    /// The `process_mrelease` result.
    pub mreleased: Mrelease,
    /// The process exited before the deadline.
    pub exited: bool,
    /// Time from the first signal to the observed exit.
    pub exited_after: Option<Duration>,
}

/// Kills the pinned process: SIGTERM and a grace period if asked, then
/// SIGKILL, `process_mrelease`, and a wait for the exit.
///
/// A process already exited is [`Error::ProcessGone`] (a normal race).
/// One that exits during the grace period is not sent SIGKILL.
/// Allocation-free on success and on `ProcessGone`.
pub fn kill_process(victim: &Pidfd, opts: &KillOptions) -> Result<KillOutcome> {
    let pid = victim.pid();
    if !victim.is_alive()? {
        return Err(Error::ProcessGone { pid });
    }
    let mut out = KillOutcome {
        pid,
        signalled_at: Instant::now(),
        sigterm_sent: false,
        sigkill_sent: false,
        mreleased: Mrelease::NotRequested,
        exited: false,
        exited_after: None,
    };
    let exited = |out: &mut KillOutcome| {
        out.exited = true;
        out.exited_after = Some(out.signalled_at.elapsed());
    };
    if let Some(grace) = opts.grace {
        victim.send_signal(Signal::TERM)?;
        out.sigterm_sent = true;
        if victim.wait_exit(out.signalled_at + grace)? {
            exited(&mut out);
            return Ok(out);
        }
    }
    let killed_at = Instant::now();
    match victim.send_signal(Signal::KILL) {
        Ok(()) => out.sigkill_sent = true,
        // Reaped between SIGTERM and SIGKILL: it exited.
        Err(Error::ProcessGone { .. }) if out.sigterm_sent => {
            exited(&mut out);
            return Ok(out);
        }
        Err(e) => return Err(e),
    }
    if !out.sigterm_sent {
        out.signalled_at = killed_at;
    }
    if opts.mrelease {
        out.mreleased = victim.try_mrelease();
    }
    if victim.wait_exit(killed_at + opts.deadline)? {
        exited(&mut out);
    }
    Ok(out)
}

/// [`kill_process`] on a PID: opens the pidfd first. Prefer
/// [`kill_member`] for PIDs read from a cgroup.
pub fn kill_pid(pid: i32, opts: &KillOptions) -> Result<KillOutcome> {
    kill_process(&Pidfd::open(pid)?, opts)
}

/// [`kill_process`] on a PID read from `cg`'s `cgroup.procs`, after
/// checking it is (still) a member ([`Pidfd::open_in`]).
pub fn kill_member(cg: &Cgroup, pid: i32, opts: &KillOptions) -> Result<KillOutcome> {
    kill_process(&Pidfd::open_in(cg, pid)?, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_init_and_self() {
        assert!(is_guarded(1));
        assert!(is_guarded(std::process::id() as i32));
        assert!(!is_guarded(2));
    }

    #[test]
    fn timespec_conversion() {
        let t = timespec(Duration::new(3, 5));
        assert_eq!((t.tv_sec, t.tv_nsec), (3, 5));
        assert_eq!(timespec(Duration::MAX).tv_sec, i64::MAX);
    }
}
