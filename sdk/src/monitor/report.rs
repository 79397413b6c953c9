//! What an [`OomMonitor`](super::OomMonitor) reports.

use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::cgroup::{MemoryEventKind, MemoryEvents};

use super::KillRecord;

/// Whose limit fired, seen from the container.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum Level {
    /// The container's own `memory.max`.
    Container,
    /// The limit of a cgroup inside the container (the container's
    /// `memory.events` `oom` rose, its `memory.events.local` did not).
    Inside,
    /// The parent's (the pod's) limit.
    Pod {
        /// Hierarchy path of the pod cgroup.
        path: PathBuf,
    },
    /// The limit of an ancestor above the pod, up to the boundary.
    Ancestor {
        /// Hierarchy path of that ancestor.
        path: PathBuf,
        /// 2 for the grandparent, and so on.
        generations: u32,
    },
    /// No limit between the container and the boundary: an ancestor above
    /// the boundary, or the whole machine ran out of memory.
    Outside,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::Container => f.write_str("container"),
            Level::Inside => f.write_str("a cgroup inside the container"),
            Level::Pod { path } => write!(f, "pod {}", path.display()),
            Level::Ancestor { path, generations } => {
                write!(f, "ancestor {} ({generations} up)", path.display())
            }
            Level::Outside => f.write_str("outside the boundary (or system-wide)"),
        }
    }
}

/// Whether a report's victim list is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum VictimsStatus {
    /// One logged victim per `oom_kill` counted.
    Complete,
    /// Fewer log lines than kills were found within the grace period (the
    /// kernel log overflowed, or a line could not be matched to the cgroup).
    Incomplete {
        /// Kills counted without a matching line.
        missing: u64,
    },
    /// The kernel log is not read ([`MonitorOptions::kernel_log`](super::MonitorOptions) is off).
    NotRead,
    /// The kernel log could not be opened; the text says why.
    Unavailable(String),
}

/// One OOM episode of the container.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct OomReport {
    /// The container's cgroup (hierarchy path).
    pub cgroup: PathBuf,
    /// Whose limit fired.
    pub level: Level,
    /// How much each counter of the container's `memory.events` rose
    /// (`high` and `max` since the previous report included).
    pub rose: MemoryEvents,
    /// The container's processes the kernel killed, as logged.
    pub victims: Vec<KillRecord>,
    /// Whether `victims` is complete.
    pub victims_status: VictimsStatus,
    /// When the monitor first saw the OOM (wall clock).
    pub first_seen: SystemTime,
    /// When the report was complete.
    pub reported: SystemTime,
}

impl fmt::Display for OomReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OOM in {}: limit of {} fired",
            self.cgroup.display(),
            self.level
        )?;
        let rose: Vec<String> = MemoryEventKind::ALL
            .into_iter()
            .filter_map(|k| {
                self.rose
                    .get(k)
                    .filter(|v| *v > 0)
                    .map(|v| format!("{} +{v}", k.key()))
            })
            .collect();
        write!(f, " ({})", rose.join(", "))?;
        match &self.victims_status {
            VictimsStatus::NotRead => {}
            VictimsStatus::Unavailable(why) => write!(f, ", victims unknown: {why}")?,
            s => {
                let v: Vec<String> = self
                    .victims
                    .iter()
                    .map(|k| format!("{} ({})", k.pid, k.comm))
                    .collect();
                write!(f, ", killed {}", v.join(", "))?;
                if let VictimsStatus::Incomplete { missing } = s {
                    write!(f, " and {missing} not in the kernel log")?;
                }
            }
        }
        Ok(())
    }
}

/// The container's counters when it became empty.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum FinalCounters {
    /// Read after the last process exited.
    Read {
        /// `memory.events` as read.
        events: MemoryEvents,
        /// How much each counter rose since the monitor was opened.
        since_start: MemoryEvents,
    },
    /// The cgroup was removed before the final reading; the counters are
    /// derived from the parent's: its `memory.events` rise minus its own
    /// (`memory.events.local`) rise and every other child's (exact unless a
    /// sibling counted at the very instant of a read).
    Derived {
        /// The container's final `memory.events`, derived.
        events: MemoryEvents,
        /// How much each counter rose since the monitor was opened.
        since_start: MemoryEvents,
        /// The parent they were derived from (hierarchy path).
        from: PathBuf,
        /// What the container's own file said at the last successful read.
        last_seen: MemoryEvents,
    },
    /// The cgroup was removed before the final reading and the counters
    /// could not be derived (a sibling was removed meanwhile, or the parent
    /// is gone too): these are the last counters seen, which may miss the
    /// last events.
    Gone {
        /// The last reading.
        last_seen: MemoryEvents,
    },
}

/// Emitted once, when the container's cgroup became empty (or gone), or by
/// [`OomMonitor::finish`](super::OomMonitor::finish).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct FinalReport {
    /// The container's cgroup (hierarchy path).
    pub cgroup: PathBuf,
    /// The counters.
    pub counters: FinalCounters,
    /// When they were taken.
    pub at: SystemTime,
}

impl FinalReport {
    /// OOM kills in the container since the monitor was opened, if the final
    /// counters were read (`None` when the cgroup was gone first).
    pub fn oom_kills(&self) -> Option<u64> {
        match &self.counters {
            FinalCounters::Read { since_start, .. }
            | FinalCounters::Derived { since_start, .. } => Some(since_start.oom_kill.unwrap_or(0)),
            FinalCounters::Gone { .. } => None,
        }
    }
}

impl fmt::Display for FinalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.counters {
            FinalCounters::Read {
                events,
                since_start,
            } => write!(
                f,
                "{} is empty: oom +{} oom_kill +{} (memory.events oom {} oom_kill {})",
                self.cgroup.display(),
                since_start.oom.unwrap_or(0),
                since_start.oom_kill.unwrap_or(0),
                events.oom.unwrap_or(0),
                events.oom_kill.unwrap_or(0)
            ),
            FinalCounters::Derived {
                events,
                since_start,
                from,
                ..
            } => write!(
                f,
                "{} was removed before its final memory.events could be read; derived from {}: oom +{} oom_kill +{} (oom {} oom_kill {})",
                self.cgroup.display(),
                from.display(),
                since_start.oom.unwrap_or(0),
                since_start.oom_kill.unwrap_or(0),
                events.oom.unwrap_or(0),
                events.oom_kill.unwrap_or(0)
            ),
            FinalCounters::Gone { last_seen } => write!(
                f,
                "{} was removed before its final memory.events could be read; last seen oom {} oom_kill {}",
                self.cgroup.display(),
                last_seen.oom.unwrap_or(0),
                last_seen.oom_kill.unwrap_or(0)
            ),
        }
    }
}

/// What [`OomMonitor::process`](super::OomMonitor::process) returns.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum MonitorEvent {
    /// An OOM episode.
    Oom(OomReport),
    /// The cgroup became empty (or was removed): the final counters.
    Unpopulated(FinalReport),
}
