//! Pollable event sources and one [`Watcher`] multiplexing them.
//!
//! A userspace OOM handler must react within milliseconds to what the kernel
//! says about memory, and must keep reacting when the machine has no memory
//! left. This module gives it four kinds of *sources*, each a file
//! descriptor the kernel wakes, and a [`Watcher`] (one epoll instance) that
//! turns wakeups into typed [`Event`]s:
//!
//! | source | file | wakes when |
//! |---|---|---|
//! | [`MemoryEventsWatch`] | `memory.events` / `memory.events.local` | a counter (`high`, `max`, `oom`, `oom_kill` …) changed |
//! | [`PsiTrigger`] | `memory.pressure`, `/proc/pressure/memory`, any PSI file | stall time over a window crossed a threshold |
//! | [`CgroupEventsWatch`] | `cgroup.events` | `populated` or `frozen` changed |
//! | [`DirWatch`] | a cgroup directory (inotify) | child cgroups created or removed |
//! | [`MachineWatch`] | `/proc/meminfo`, `/proc/vmstat`, `/proc/pressure/memory` (timerfd + PSI triggers) | headroom, thrashing or stall signals of the whole machine changed |
//!
//! plus any fd of the caller's ([`Watcher::add_fd`]): an eventfd to wake the
//! loop, a timerfd for heartbeats.
//!
//! # Why it is built this way
//!
//! **No threads, no signal handlers.** Every source is an fd with no thread
//! of its own. The watcher is one epoll fd ([`Watcher`] implements
//! [`AsFd`]), so a container runtime can put it into its
//! own epoll loop or tokio reactor (feature `tokio`: `AsyncWatcher`), and a
//! dedicated handler thread can block in [`Watcher::wait`]. Nothing here
//! spawns, and nothing touches process-wide signal state.
//!
//! **A wakeup means "re-read", not "one event".** The kernel notifies a
//! change of `memory.events`, `memory.events.local` and `cgroup.events` via
//! `cgroup_file_notify()`, rate-limited to about one notification per file
//! per 10 ms; pending notifications coalesce. So a source keeps the file
//! open, `pread`s it at offset 0 into a fixed buffer after each wakeup, and
//! diffs against the previous reading: the [`MemoryEventsChange`] says by
//! how much each counter rose, however many increments one wakeup covered.
//!
//! **Why `pread` at offset 0 on a fd kept open.** cgroupfs files are
//! seq_files generated on read: reading from offset 0 regenerates the
//! content. Keeping the fd open (rather than re-opening by path) means no
//! allocation, no path lookup, and no chance to read a *different* cgroup
//! that was created under the same name after ours was removed. And the
//! kernel's "changed" flag behind `POLLPRI` is per open file and is cleared
//! by reading through that same fd (`kernfs_seq_show` records the event
//! count it has shown), so the read must go through the polled fd.
//!
//! **Level-triggered, `EPOLLPRI` only.** `kernfs_fop_poll` always reports
//! `POLLIN|POLLOUT` (`DEFAULT_POLLMASK`) and adds `POLLERR|POLLPRI` while the
//! open file has not seen the latest change. Registering `EPOLLIN` would make
//! the fd ready forever, so kernfs sources register `EPOLLPRI` (`EPOLLERR`
//! is always reported by epoll). We use level-triggered mode on purpose:
//! the condition is cleared by our own re-read, so a level-triggered fd is
//! reported once per change; and if a re-read fails transiently the change
//! is not lost — the fd stays ready and the next [`Watcher::wait`] retries.
//! With `EPOLLET` a wakeup consumed by a failed read would be gone until the
//! next kernel notification. PSI triggers clear their "fired" flag inside
//! `poll` itself (`psi_trigger_poll` does `cmpxchg(&t->event, 1, 0)`), so
//! they are reported once per firing in either mode. The one state that
//! level-triggered mode would report forever is a *dead* file: a kernfs file
//! of a removed cgroup, or a PSI trigger whose cgroup was removed, polls as
//! `POLLERR|POLLPRI` permanently. The watcher therefore deregisters a source
//! the moment it reports [`EventKind::Gone`] for it.
//!
//! **Allocation-free after warm-up.** All buffers (epoll events, the event
//! batch, each source's read buffer, inotify buffers, names of child
//! cgroups) are sized when the watcher and its sources are created; `wait`
//! and the re-reads behind it do not touch the heap on their success paths.
//! (Constructing an [`Error`](crate::Error), which carries a path, does
//! allocate; inside `wait` per-source failures are reported as the `Copy`
//! [`SourceFailure`] instead.)
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use oomkit::Cgroup;
//! use oomkit::events::{EventKind, MemoryEventKind, PsiThreshold, Scope, Watcher};
//!
//! # fn main() -> oomkit::Result<()> {
//! let cg = Cgroup::open("/sys/fs/cgroup/workload.slice")?;
//! let mut w = Watcher::with_capacity(16)?;
//! let mem = w.add_memory_events(&cg, Scope::Hierarchical)?;
//! let psi = w.add_psi(&cg, PsiThreshold::some(Duration::from_millis(150), Duration::from_secs(2)))?;
//! loop {
//!     for ev in w.wait(None)? {
//!         match &ev.kind {
//!             EventKind::MemoryEvents(ch) if ev.token == mem => {
//!                 if ch.rose_by(MemoryEventKind::OomKill) > 0 {
//!                     println!("kernel OOM killer acted: {:?}", ch.current);
//!                 }
//!             }
//!             EventKind::Pressure(p) if ev.token == psi => println!("memory pressure: {p:?}"),
//!             EventKind::Gone => println!("{:?}: cgroup removed", ev.token),
//!             other => println!("{other:?}"),
//!         }
//!     }
//! }
//! # }
//! ```

mod cgroup_events;
mod child_name;
pub(crate) mod dir;
mod headroom;
mod machine;
mod memory;
mod psi;
pub(crate) mod watch_at;
mod watcher;

#[cfg(feature = "tokio")]
pub(crate) mod async_watcher;

use std::os::fd::AsFd;

use rustix::io::Errno;

pub use crate::cgroup::{CgroupEvents, MemoryEventKind, MemoryEvents, Pressure};
use crate::error::{Op, ParseError, ParseErrorKind};
use crate::fs::ReadError;

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use async_watcher::AsyncWatcher;
pub use cgroup_events::{CgroupEventsChange, CgroupEventsWatch};
pub use dir::{ChildName, DirChange, DirEvent, DirId, DirWatch, DirWatchOptions, NAME_MAX};
pub use headroom::{
    Level, MachineChange, MachineConfig, MachineMonitor, MachineReading, MachineSample, Signals,
};
pub use machine::{MachinePaths, MachineStats, MachineWatch, MachineWatchConfig};
pub use memory::{MemoryEventsChange, MemoryEventsWatch, Scope};
pub use psi::{PsiStall, PsiThreshold, PsiTrigger, has_cap_sys_resource};
pub use watcher::{Events, Source, Watcher};

/// Identifies a source in a [`Watcher`]; every [`Event`] carries the token
/// of the source it came from.
///
/// Tokens are either assigned by the watcher (the `add_*` methods) or chosen
/// by the caller ([`Watcher::add_with_token`], [`Watcher::add_fd`]); a token
/// is unique among the sources of one watcher at any time. Assigned tokens
/// are at least 2^63, so caller-chosen tokens below that never collide with
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Token(pub u64);

/// One thing that happened, tagged with the source's [`Token`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Event {
    /// The source it came from.
    pub token: Token,
    /// What happened.
    pub kind: EventKind,
}

/// What a source reported.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum EventKind {
    /// Counters of `memory.events(.local)` rose (from a [`MemoryEventsWatch`]).
    MemoryEvents(MemoryEventsChange),
    /// A PSI trigger fired (from a [`PsiTrigger`]); carries the pressure
    /// file as re-read right after, or `None` if that re-read failed (the
    /// trigger did fire).
    Pressure(Option<Pressure>),
    /// `populated` or `frozen` changed (from a [`CgroupEventsWatch`]).
    CgroupEvents(CgroupEventsChange),
    /// A child directory was created or removed (from a [`DirWatch`]).
    Dir(DirEvent),
    /// The kernel's inotify queue overflowed, or more changes arrived at once
    /// than a [`DirWatch`] could queue: some child creations or removals were
    /// lost. List the directory again.
    DirOverflow,
    /// A caller's fd ([`Watcher::add_fd`]) is ready.
    Fd(Readiness),
    /// Machine-wide signals fired or cleared (from a [`MachineWatch`]).
    Machine(MachineChange),
    /// The cgroup (or watched directory) of this source was removed. The
    /// watcher has stopped polling the source; [`Watcher::remove`] it.
    Gone,
    /// Re-reading or servicing the source failed; the source stays
    /// registered and is retried on its next wakeup.
    Failed(SourceFailure),
}

/// Why a source could not be serviced, without allocation (the path is
/// available from the source itself, e.g. [`MemoryEventsWatch::path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceFailure {
    /// The file's content did not parse.
    Parse(ParseError),
    /// A system call failed with this `errno`.
    Io {
        /// What we were doing.
        op: Op,
        /// The raw OS error number.
        errno: i32,
    },
}

impl SourceFailure {
    pub(crate) fn io(op: Op, e: Errno) -> Self {
        SourceFailure::Io {
            op,
            errno: e.raw_os_error(),
        }
    }

    /// The OS error, for `Io` failures.
    pub fn os_error(&self) -> Option<std::io::Error> {
        match self {
            SourceFailure::Io { errno, .. } => Some(std::io::Error::from_raw_os_error(*errno)),
            SourceFailure::Parse(_) => None,
        }
    }
}

impl std::fmt::Display for SourceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceFailure::Parse(p) => write!(f, "{p}"),
            SourceFailure::Io { op, errno } => {
                write!(
                    f,
                    "{op} failed: {}",
                    std::io::Error::from_raw_os_error(*errno)
                )
            }
        }
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for SourceFailure {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Which readiness a caller's fd is registered for ([`Watcher::add_fd`]).
///
/// Registration is level-triggered: a readable eventfd is reported by every
/// `wait` until the caller reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interest {
    /// `EPOLLIN`.
    pub readable: bool,
    /// `EPOLLOUT`.
    pub writable: bool,
    /// `EPOLLPRI`.
    pub priority: bool,
}

impl Interest {
    /// Readable (`EPOLLIN`): eventfds, timerfds, pipes, sockets.
    pub const READABLE: Interest = Interest {
        readable: true,
        writable: false,
        priority: false,
    };
    /// Writable (`EPOLLOUT`).
    pub const WRITABLE: Interest = Interest {
        readable: false,
        writable: true,
        priority: false,
    };
    /// Exceptional condition (`EPOLLPRI`), as kernfs and PSI files use.
    pub const PRIORITY: Interest = Interest {
        readable: false,
        writable: false,
        priority: true,
    };
}

impl std::ops::BitOr for Interest {
    type Output = Interest;
    fn bitor(self, o: Interest) -> Interest {
        Interest {
            readable: self.readable || o.readable,
            writable: self.writable || o.writable,
            priority: self.priority || o.priority,
        }
    }
}

/// How a caller's fd is ready ([`EventKind::Fd`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Readiness {
    /// `EPOLLIN`.
    pub readable: bool,
    /// `EPOLLOUT`.
    pub writable: bool,
    /// `EPOLLPRI`.
    pub priority: bool,
    /// `EPOLLHUP`/`EPOLLRDHUP`: the peer closed.
    pub hangup: bool,
    /// `EPOLLERR`.
    pub error: bool,
}

/// Why an allocation-free re-read did not produce a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFail {
    /// The file belongs to a removed cgroup (`ENODEV`, `ENOENT`).
    Gone,
    /// Anything else.
    Failed(SourceFailure),
}

impl ReadFail {
    /// Turns it into the crate's error type, naming `path`.
    pub(crate) fn into_error(self, path: &std::path::Path) -> crate::Error {
        match self {
            ReadFail::Gone => crate::Error::CgroupGone {
                path: path.to_owned(),
            },
            ReadFail::Failed(SourceFailure::Parse(source)) => crate::Error::Parse {
                path: path.to_owned(),
                source,
            },
            ReadFail::Failed(SourceFailure::Io { op, errno }) => crate::Error::Io {
                path: path.to_owned(),
                op,
                source: std::io::Error::from_raw_os_error(errno),
            },
        }
    }
}

/// `pread`s a whole file from offset 0 into `buf` without allocating.
///
/// `ENODEV` is what kernfs answers for a file of a removed cgroup; `ENOENT`
/// is mapped the same way for safety.
pub(crate) fn pread_all(fd: impl AsFd, buf: &mut [u8]) -> Result<&[u8], ReadFail> {
    match crate::fs::pread_all(fd, buf) {
        Ok(n) => Ok(&buf[..n]),
        Err(ReadError::TooLarge) => Err(ReadFail::Failed(SourceFailure::Parse(ParseError::new(
            1,
            ParseErrorKind::TooLarge,
        )))),
        Err(ReadError::Os(Errno::NODEV | Errno::NOENT)) => Err(ReadFail::Gone),
        Err(ReadError::Os(e)) => Err(ReadFail::Failed(SourceFailure::io(Op::Read, e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pread_all_reports_too_large_and_reads_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let mut big = [0u8; 64];
        assert_eq!(pread_all(&f, &mut big).unwrap(), b"0123456789");
        // Reading again starts at offset 0, not where the last read stopped.
        assert_eq!(pread_all(&f, &mut big).unwrap(), b"0123456789");
        let mut small = [0u8; 10];
        assert_eq!(
            pread_all(&f, &mut small),
            Err(ReadFail::Failed(SourceFailure::Parse(ParseError::new(
                1,
                ParseErrorKind::TooLarge
            ))))
        );
    }

    #[test]
    fn read_fail_maps_to_crate_errors() {
        let p = std::path::Path::new("/x/memory.events");
        assert!(ReadFail::Gone.into_error(p).is_gone());
        let e = ReadFail::Failed(SourceFailure::io(Op::Read, Errno::IO)).into_error(p);
        assert!(matches!(e, crate::Error::Io { op: Op::Read, .. }), "{e}");
        assert!(e.to_string().contains("/x/memory.events"));
    }

    #[test]
    fn interest_combines() {
        let i = Interest::READABLE | Interest::PRIORITY;
        assert!(i.readable && i.priority && !i.writable);
    }
}
