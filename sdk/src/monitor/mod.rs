//! An OOM monitor for one container's cgroup, made to be embedded in a
//! container runtime, plus the exit-reason helper runtimes need
//! ([`exit_reason`]).
//!
//! # What runtimes get wrong, and why this module is built as it is
//!
//! * **The pod's limit fired, not the container's.** A watcher of the
//!   container's `oom` counter misses it: `oom` rises in the cgroup whose
//!   limit was hit and its ancestors, never below. What does rise in the
//!   container is `oom_kill` (counted at the victim's cgroup and up). So
//!   the monitor reports on `oom`, `oom_kill` *or* `oom_group_kill` of the
//!   container's `memory.events`, and finds the [`Level`] whose limit fired
//!   from the cgroup named by the kernel log (`oom_memcg`), or else from
//!   which `memory.events.local` `oom` rose along the path from the
//!   container up to a boundary the runtime gives (the pod, `kubepods` …).
//! * **Which process died.** `memory.events` says *that* the kernel killed,
//!   never *whom*; the kernel log does ([`KillRecord`], from `/dev/kmsg`).
//!   Lines are matched to the container by the victim's cgroup. The kernel
//!   raises the counter before it logs the kill, so a report waits for its
//!   victims' lines up to a grace period ([`MonitorOptions::victim_grace`]);
//!   without permission to read the log it says so
//!   ([`KernelLogAccess::Unavailable`]) and carries counters only.
//! * **The final count is lost when the cgroup is removed.** Once the last
//!   process exits (`cgroup.events` `populated 0`) systemd or the runtime
//!   removes the directory, and `memory.events` with it. The monitor re-reads
//!   the counters at every change notification, again on the `populated 0`
//!   notification, and on [`OomMonitor::finish`], which a runtime calls
//!   *before* it removes the cgroup. If the directory was already gone at the
//!   last read, the [`FinalReport`] says so ([`FinalCounters::Gone`]) with the
//!   last counters seen, never a silent 0.
//!
//! **No thread of its own.** The monitor is one epoll fd ([`AsFd`]) holding
//! the container's `memory.events` and `cgroup.events` (`POLLPRI`) and
//! `/dev/kmsg` (`POLLIN`): put it into the runtime's epoll set or tokio
//! reactor, call [`OomMonitor::process`] when it is readable, and also when
//! [`OomMonitor::next_timeout`] has passed (a report waiting for its
//! victims' log lines).
//!
//! ```no_run
//! use oomkit::Cgroup;
//! use oomkit::monitor::{MonitorEvent, MonitorOptions, OomMonitor};
//!
//! # fn main() -> oomkit::Result<()> {
//! let ctr = Cgroup::open("/sys/fs/cgroup/kubepods/pod1/ctr1")?;
//! let mut m = OomMonitor::open(&ctr, MonitorOptions::default())?;
//! loop {
//!     for ev in m.wait(None)? {
//!         match ev {
//!             MonitorEvent::Oom(r) => println!("{r}"),
//!             MonitorEvent::Unpopulated(f) => {
//!                 println!("{f}");
//!                 return Ok(());
//!             }
//!             other => println!("{other:?}"),
//!         }
//!     }
//! }
//! # }
//! ```
//!
//! This file opens and drives the monitor; `counting` turns counters and the kernel log into
//! reports, `parent_base` derives a gone container's final counters from its parent's, `kmsg`
//! reads `/dev/kmsg`, `report` holds the types reported, `exit` the exit reason.

mod counting;
mod exit;
mod kmsg;
mod parent_base;
mod report;

#[cfg(feature = "tokio")]
mod async_monitor;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::io::Errno;

use crate::cgroup::{Cgroup, MemoryEventKind, MemoryEvents};
use crate::error::{Error, Result};
use crate::events::{CgroupEventsWatch, MemoryEventsWatch, Scope};
use crate::util::io_err;

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use async_monitor::AsyncOomMonitor;
pub use exit::{ExitReason, exit_reason, exit_reason_from_cgroup};
pub use kmsg::{KernelLogAccess, KillRecord};
pub use report::{FinalCounters, FinalReport, Level, MonitorEvent, OomReport, VictimsStatus};

use kmsg::KernelLog;
use parent_base::ParentBase;

/// How an [`OomMonitor`] watches.
#[derive(Debug, Clone)]
pub struct MonitorOptions {
    /// The highest ancestor (filesystem path of a cgroup above the
    /// container, inclusive) whose limit is attributed to a [`Level`]; a
    /// limit above it is [`Level::Outside`]. `None`: the container's parent
    /// (the pod).
    pub boundary: Option<PathBuf>,
    /// Read `/dev/kmsg` for the victims (default `true`).
    pub kernel_log: bool,
    /// How long a report waits for the kernel log lines of its victims
    /// after the counters rose (default 2 s).
    pub victim_grace: Duration,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        MonitorOptions {
            boundary: None,
            kernel_log: true,
            victim_grace: Duration::from_secs(2),
        }
    }
}

/// One cgroup on the path from the container up to the boundary.
#[derive(Debug)]
struct LevelWatch {
    cg: Cgroup,
    /// `memory.events.local` at the last report (or at open).
    base: MemoryEvents,
}

/// A report collecting its counters and victims.
#[derive(Debug)]
struct Pending {
    rose: MemoryEvents,
    level: Level,
    /// Distinct victims (the group kill of 5.x/6.x kills, logs and counts
    /// the first victim twice).
    victims: Vec<KillRecord>,
    /// Kill lines matched, to compare with `oom_kill`.
    lines: u64,
    /// A level has `memory.oom.group` set: the kernel kills the group one
    /// process at a time after the first victim, so counters and lines read
    /// mid-way look complete; such a report waits for the container to empty
    /// (or the grace period).
    group: bool,
    first_seen: SystemTime,
    deadline: Instant,
}

/// Watches one container's cgroup for OOM kills (see the [module docs](self)).
#[derive(Debug)]
pub struct OomMonitor {
    container: Cgroup,
    hier: MemoryEventsWatch,
    populated: CgroupEventsWatch,
    /// `levels[0]` is the container, then its parent, … up to the boundary.
    levels: Vec<LevelWatch>,
    /// `memory.events` at open, for the final report's totals.
    start: MemoryEvents,
    /// The parent's counters at open, to derive the final counters if the
    /// container's directory is removed before they could be read.
    parent: Option<ParentBase>,
    /// Rises of `high`/`max` since the last report, folded into the next.
    quiet: MemoryEvents,
    log: KernelLog,
    pending: Option<Pending>,
    /// Set once the cgroup's files could not be read any more.
    gone: bool,
    /// The final report was produced.
    finished: bool,
    epoll: Option<OwnedFd>,
    opts: MonitorOptions,
}

const TOKEN_MEMORY: u64 = 1;
const TOKEN_POPULATED: u64 = 2;
const TOKEN_KMSG: u64 = 3;

impl OomMonitor {
    /// Starts watching `container`: opens its `memory.events`,
    /// `cgroup.events`, the `memory.events.local` of each level up to the
    /// boundary and `/dev/kmsg`, and takes the baselines. Create it before
    /// the container's first process starts, so no kill is missed.
    pub fn open(container: &Cgroup, opts: MonitorOptions) -> Result<Self> {
        let mut m = Self::open_unregistered(container, opts)?;
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(|e| Error::sys("epoll_create1", io_err(e)))?;
        let add = |fd: BorrowedFd<'_>, token: u64, flags: EventFlags, path: &Path| {
            epoll::add(&ep, fd, EventData::new_u64(token), flags)
                .map_err(|e| Error::io(path, crate::error::Op::Watch, io_err(e)))
        };
        add(m.hier.as_fd(), TOKEN_MEMORY, EventFlags::PRI, m.hier.path())?;
        add(
            m.populated.as_fd(),
            TOKEN_POPULATED,
            EventFlags::PRI,
            m.populated.path(),
        )?;
        if let Some(fd) = m.log.fd() {
            add(fd, TOKEN_KMSG, EventFlags::IN, Path::new("/dev/kmsg"))?;
        }
        m.epoll = Some(ep);
        Ok(m)
    }

    /// Everything but the epoll registration (synthetic trees in tests are
    /// plain files, which epoll refuses).
    fn open_unregistered(container: &Cgroup, opts: MonitorOptions) -> Result<Self> {
        let container = container.try_clone()?;
        let hier = MemoryEventsWatch::open(&container, Scope::Hierarchical)?;
        let populated = CgroupEventsWatch::open(&container)?;
        let mut levels = vec![LevelWatch {
            base: container.memory_events_local()?,
            cg: container.try_clone()?,
        }];
        let boundary = match &opts.boundary {
            Some(b) => Some(b.clone()),
            None => container.path().parent().map(Path::to_path_buf),
        };
        if let Some(boundary) = boundary {
            if !container.path().starts_with(&boundary) || boundary == container.path() {
                return Err(Error::InvalidArgument {
                    what: "boundary",
                    reason: format!(
                        "{} is not an ancestor of {}",
                        boundary.display(),
                        container.path().display()
                    ),
                });
            }
            while let Some(last) = levels.last() {
                if last.cg.path() == boundary {
                    break;
                }
                let Some(parent) = last.cg.parent()? else {
                    break;
                };
                if parent.is_mount_root() {
                    // The root has no memory.events.local: a limit there
                    // does not exist (the whole machine is Outside).
                    break;
                }
                levels.push(LevelWatch {
                    base: parent.memory_events_local()?,
                    cg: parent,
                });
            }
        }
        let start = *hier.last();
        let parent = ParentBase::take(&container);
        Ok(OomMonitor {
            container,
            hier,
            populated,
            levels,
            start,
            parent,
            quiet: MemoryEvents::default(),
            log: KernelLog::open(opts.kernel_log),
            pending: None,
            gone: false,
            finished: false,
            epoll: None,
            opts,
        })
    }

    /// The container's cgroup.
    pub fn cgroup(&self) -> &Cgroup {
        &self.container
    }

    /// Whether victims can be named (the kernel log is readable).
    pub fn kernel_log(&self) -> &KernelLogAccess {
        self.log.access()
    }

    /// How long until [`process`](Self::process) must be called even if the
    /// fd did not become readable (a report is waiting for its victims'
    /// log lines); `None` when nothing waits.
    pub fn next_timeout(&self) -> Option<Duration> {
        self.pending
            .as_ref()
            .map(|p| p.deadline.saturating_duration_since(Instant::now()))
    }

    /// Blocks until something happened or `timeout` passed, then
    /// [`process`](Self::process)es. For a thread of the caller's; in an
    /// event loop, poll the fd instead.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Vec<MonitorEvent>> {
        let limit = match (timeout, self.next_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(ep) = &self.epoll {
            let ts = limit.map(|d| rustix::event::Timespec {
                tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(d.subsec_nanos()),
            });
            let mut buf = [epoll::Event {
                flags: EventFlags::empty(),
                data: EventData::new_u64(0),
            }; 4];
            let n = match epoll::wait(ep, &mut buf[..], ts.as_ref()) {
                Ok(n) => n,
                Err(Errno::INTR) => 0,
                Err(e) => return Err(Error::sys("epoll_wait", io_err(e))),
            };
            let populated = buf
                .get(..n)
                .is_some_and(|b| b.iter().any(|e| e.data.u64() == TOKEN_POPULATED));
            return self.process_ready(populated);
        }
        self.process()
    }

    /// Reads everything that changed (without blocking) and returns the
    /// reports that are complete: call it when the fd is readable and when
    /// [`next_timeout`](Self::next_timeout) has passed. Re-reading is
    /// idempotent, so an extra call is harmless.
    pub fn process(&mut self) -> Result<Vec<MonitorEvent>> {
        let populated_changed = self.populated_flagged();
        self.process_ready(populated_changed)
    }

    /// Whether the kernel flagged `cgroup.events` as changed (an
    /// `epoll_wait` with zero timeout on the monitor's own epoll fd, whose
    /// level-triggered entries stay until we re-read the files).
    fn populated_flagged(&self) -> bool {
        let Some(ep) = &self.epoll else {
            return true;
        };
        let mut buf = [epoll::Event {
            flags: EventFlags::empty(),
            data: EventData::new_u64(0),
        }; 4];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match epoll::wait(ep, &mut buf[..], Some(&zero)) {
            Ok(n) => buf
                .get(..n)
                .is_some_and(|b| b.iter().any(|e| e.data.u64() == TOKEN_POPULATED)),
            Err(_) => true,
        }
    }

    fn process_ready(&mut self, populated_changed: bool) -> Result<Vec<MonitorEvent>> {
        let mut out = Vec::new();
        if self.finished {
            return Ok(out);
        }
        // When cgroup.events changed, the container may have just become
        // empty and a remover (systemd, the runtime) may be about to take
        // the directory: read the counters first, before anything else.
        // Read after that notification, they are final (they only move
        // while the cgroup has processes).
        let early = populated_changed && {
            self.read_counters()?;
            !self.gone
        };
        let unpopulated = match self.populated.refresh() {
            Ok(Some(ch)) => ch.became_unpopulated(),
            Ok(None) => false,
            Err(e) if e.is_gone() => {
                self.gone = true;
                true
            }
            Err(e) => return Err(e),
        };
        if !(unpopulated && early) {
            self.read_counters()?;
        }
        self.log.drain();
        self.collect_victims();
        let now = Instant::now();
        let due = match &self.pending {
            Some(p) => {
                let expected = p.rose.oom_kill.unwrap_or(0);
                // The kernel counts `oom` before it picks and kills a victim
                // (`oom_kill`), and logs the kill after counting it: a report
                // is complete once a kill was counted and, with the kernel
                // log, every counted kill was logged. A group kill continues
                // after the first victim, so it waits for the container to
                // empty (or the grace period).
                let logged = *self.log.access() != KernelLogAccess::Readable || p.lines >= expected;
                let complete = !p.group && expected > 0 && logged;
                complete || now >= p.deadline || unpopulated || self.gone
            }
            None => false,
        };
        if due {
            if let Some(r) = self.take_report() {
                out.push(MonitorEvent::Oom(r));
            }
        }
        if unpopulated || self.gone {
            if unpopulated && early {
                // The early read succeeded: final, even if the directory
                // went away right after it.
                self.gone = false;
            }
            out.push(MonitorEvent::Unpopulated(self.final_report()));
        }
        Ok(out)
    }

    /// Takes the final report now: re-reads `memory.events` (call it after
    /// the container's init was reaped and *before* removing the cgroup),
    /// and flushes a report still waiting for victims. Afterwards the
    /// monitor reports nothing more.
    pub fn finish(&mut self) -> Result<(Option<OomReport>, FinalReport)> {
        if !self.finished {
            self.log.drain();
            self.read_counters()?;
            self.collect_victims();
        }
        let oom = self.take_report();
        Ok((oom, self.final_report()))
    }

    #[cfg(test)]
    fn log_mut(&mut self) -> &mut KernelLog {
        &mut self.log
    }
}

impl AsFd for OomMonitor {
    /// The epoll fd: readable when the container's counters, its
    /// `populated` state or the kernel log changed.
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.epoll {
            Some(ep) => ep.as_fd(),
            // Only monitors built for tests lack one; their counters fd
            // stands in.
            None => self.hier.as_fd(),
        }
    }
}

impl AsRawFd for OomMonitor {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests;
