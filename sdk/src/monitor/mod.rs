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

mod exit;
mod kmsg;
mod report;

#[cfg(feature = "tokio")]
mod async_monitor;

use std::ffi::OsString;
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

/// The parent's `memory.events` (hierarchical and local) and each other
/// child's, taken when the monitor opened.
///
/// The parent's hierarchical counters are its own local ones plus every
/// child's (removed children included: the parent keeps counting what they
/// raised). So if the container's directory is gone at the last read, its
/// final counters are its counters at open plus the parent's rise, minus the
/// parent's own (local) rise, minus each other child's rise — exact unless a
/// sibling was removed meanwhile (its last counters are unknown), which is
/// checked.
#[derive(Debug)]
struct ParentBase {
    cg: Cgroup,
    hier: MemoryEvents,
    local: MemoryEvents,
    siblings: Vec<(OsString, MemoryEvents)>,
    own_name: OsString,
}

/// More siblings than this and the derivation is not prepared (each would
/// be read at open and at the end).
const MAX_SIBLINGS: usize = 256;

impl ParentBase {
    fn take(container: &Cgroup) -> Option<ParentBase> {
        let cg = container.parent().ok()??;
        if cg.is_mount_root() {
            return None;
        }
        let own_name = container.path().file_name()?.to_owned();
        let names = cg.children().ok()?;
        if names.len() > MAX_SIBLINGS {
            return None;
        }
        let mut siblings = Vec::with_capacity(names.len());
        for n in names.into_iter().filter(|n| *n != own_name) {
            let ev = cg.child(&n).ok()?.memory_events().ok()?;
            siblings.push((n, ev));
        }
        Some(ParentBase {
            hier: cg.memory_events().ok()?,
            local: cg.memory_events_local().ok()?,
            cg,
            siblings,
            own_name,
        })
    }

    /// The container's counters now, from the parent's (see the type docs);
    /// `None` when a sibling was removed meanwhile or a read failed.
    fn derive(&self, container_at_open: &MemoryEvents) -> Option<MemoryEvents> {
        let hier = self.cg.memory_events().ok()?;
        let local = self.cg.memory_events_local().ok()?;
        let names = self.cg.children().ok()?;
        if self.siblings.iter().any(|(n, _)| !names.contains(n)) {
            return None;
        }
        let mut out = MemoryEvents::default();
        for k in MemoryEventKind::ALL {
            let (Some(h1), Some(h0), Some(l1), Some(l0), Some(c0)) = (
                hier.get(k),
                self.hier.get(k),
                local.get(k),
                self.local.get(k),
                container_at_open.get(k),
            ) else {
                continue;
            };
            let mut v =
                i128::from(c0) + i128::from(h1) - i128::from(h0) - i128::from(l1) + i128::from(l0);
            // Every other child now (a child created since counts from 0; a
            // new cgroup under our old name is another cgroup).
            for n in names.iter() {
                let now = self
                    .cg
                    .child(n)
                    .ok()?
                    .memory_events()
                    .ok()?
                    .get(k)
                    .unwrap_or(0);
                let before = self
                    .siblings
                    .iter()
                    .find(|(s, _)| s == n && *n != self.own_name)
                    .and_then(|(_, e)| e.get(k))
                    .unwrap_or(0);
                v -= i128::from(now) - i128::from(before);
            }
            *out.slot(k) = Some(u64::try_from(v).ok()?);
        }
        Some(out)
    }
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

    /// Re-reads the container's `memory.events`; starts or extends the
    /// pending report when an OOM counter rose.
    fn read_counters(&mut self) -> Result<()> {
        if self.gone {
            return Ok(());
        }
        let ch = match self.hier.refresh() {
            Ok(c) => c,
            Err(e) if e.is_gone() => {
                self.gone = true;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let Some(ch) = ch else { return Ok(()) };
        let oomish = [
            MemoryEventKind::Oom,
            MemoryEventKind::OomKill,
            MemoryEventKind::OomGroupKill,
        ]
        .iter()
        .any(|k| ch.rose_by(*k) > 0);
        if !oomish {
            self.quiet.accumulate(&ch.delta);
            return Ok(());
        }
        match &mut self.pending {
            Some(p) => p.rose.accumulate(&ch.delta),
            None => {
                let mut rose = std::mem::take(&mut self.quiet);
                rose.accumulate(&ch.delta);
                let level = self.level_from_counters(&rose);
                self.pending = Some(Pending {
                    rose,
                    level,
                    victims: Vec::new(),
                    lines: 0,
                    group: self.group_kill_possible(),
                    first_seen: SystemTime::now(),
                    deadline: Instant::now() + self.opts.victim_grace,
                });
            }
        }
        Ok(())
    }

    /// Whether the container or an ancestor up to the boundary has
    /// `memory.oom.group` set (an unreadable file counts as no).
    fn group_kill_possible(&self) -> bool {
        self.levels
            .iter()
            .any(|l| l.cg.oom_group().unwrap_or(false))
    }

    /// The lowest level whose own `oom` counter rose since the last report.
    fn level_from_counters(&mut self, rose: &MemoryEvents) -> Level {
        let mut found = None;
        for (i, l) in self.levels.iter_mut().enumerate() {
            let Ok(now) = l.cg.memory_events_local() else {
                continue;
            };
            let d = now.delta_since(&l.base).oom.unwrap_or(0);
            l.base = now;
            if d > 0 && found.is_none() {
                found = Some(i);
            }
        }
        match found {
            Some(i) => self.level_at(i),
            None if rose.oom.unwrap_or(0) > 0 => Level::Inside,
            None => Level::Outside,
        }
    }

    fn level_at(&self, i: usize) -> Level {
        let path = self
            .levels
            .get(i)
            .map(|l| l.cg.hierarchy_path().to_path_buf())
            .unwrap_or_default();
        match i {
            0 => Level::Container,
            1 => Level::Pod { path },
            _ => Level::Ancestor {
                path,
                generations: u32::try_from(i).unwrap_or(u32::MAX),
            },
        }
    }

    /// The level the kernel log names (`oom_memcg`), when it does.
    fn level_from_log(&self, oom_memcg: &Path) -> Level {
        if let Some(i) = self
            .levels
            .iter()
            .position(|l| l.cg.hierarchy_path() == oom_memcg)
        {
            return self.level_at(i);
        }
        if oom_memcg.starts_with(self.container.hierarchy_path()) {
            Level::Inside
        } else {
            Level::Outside
        }
    }

    /// Moves the logged kills of the container's processes into the
    /// pending report (starting one if the log was faster than the counter).
    fn collect_victims(&mut self) {
        let kills = self.log.take_kills_in(self.container.hierarchy_path());
        if kills.is_empty() {
            return;
        }
        if self.pending.is_none() {
            let rose = std::mem::take(&mut self.quiet);
            let level = self.level_from_counters(&rose);
            self.pending = Some(Pending {
                rose,
                level,
                victims: Vec::new(),
                lines: 0,
                group: self.group_kill_possible(),
                first_seen: SystemTime::now(),
                deadline: Instant::now() + self.opts.victim_grace,
            });
        }
        let logged_level = kills
            .iter()
            .find_map(|k| k.oom_memcg.as_deref())
            .map(|m| self.level_from_log(m));
        if let Some(p) = &mut self.pending {
            if let Some(l) = logged_level {
                p.level = l;
            }
            for k in kills {
                p.lines += 1;
                if !p.victims.iter().any(|v| v.pid == k.pid) {
                    p.victims.push(k);
                }
            }
        }
    }

    fn take_report(&mut self) -> Option<OomReport> {
        let p = self.pending.take()?;
        let expected = p.rose.oom_kill.unwrap_or(0);
        let victims_status = match self.log.access() {
            KernelLogAccess::Readable if p.lines >= expected => VictimsStatus::Complete,
            KernelLogAccess::Readable => VictimsStatus::Incomplete {
                missing: expected - p.lines,
            },
            KernelLogAccess::Off => VictimsStatus::NotRead,
            KernelLogAccess::Unavailable(why) => VictimsStatus::Unavailable(why.clone()),
        };
        Some(OomReport {
            cgroup: self.container.hierarchy_path().to_path_buf(),
            level: p.level,
            rose: p.rose,
            victims: p.victims,
            victims_status,
            first_seen: p.first_seen,
            reported: SystemTime::now(),
        })
    }

    fn final_report(&mut self) -> FinalReport {
        self.finished = true;
        let last = *self.hier.last();
        FinalReport {
            cgroup: self.container.hierarchy_path().to_path_buf(),
            counters: if self.gone {
                match self.parent.as_ref().and_then(|p| p.derive(&self.start)) {
                    Some(events) => FinalCounters::Derived {
                        events,
                        since_start: events.delta_since(&self.start),
                        from: self
                            .parent
                            .as_ref()
                            .map(|p| p.cg.hierarchy_path().to_path_buf())
                            .unwrap_or_default(),
                        last_seen: last,
                    },
                    None => FinalCounters::Gone { last_seen: last },
                }
            } else {
                FinalCounters::Read {
                    events: last,
                    since_start: last.delta_since(&self.start),
                }
            },
            at: SystemTime::now(),
        }
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
