//! Why the loop asks a handler: the inputs that start or feed an episode.

use crate::cgroup::MemoryEvents;
use crate::events::{MachineSample, Signals};

use super::types::CgroupId;

/// Why the loop is asking a handler.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum Trigger {
    /// Counters of a cgroup's `memory.events` rose.
    MemoryEvents {
        /// The cgroup.
        cgroup: CgroupId,
        /// How much each counter rose.
        delta: MemoryEvents,
    },
    /// A PSI trigger fired on a cgroup (`None`: system-wide `/proc/pressure/memory`).
    Pressure {
        /// The cgroup, or `None` for the system.
        cgroup: Option<CgroupId>,
    },
    /// The machine-wide early warning ([`crate::events::MachineWatch`]) fired:
    /// the whole machine runs low (headroom, thrashing or stall), with or
    /// without any limit set. The scope is the managed root.
    Machine {
        /// The signals that fired.
        signals: Signals,
        /// The machine as judged when they fired.
        sample: MachineSample,
    },
    /// The previous victim of this episode did not die in time.
    Escalation {
        /// The episode's scope.
        cgroup: CgroupId,
        /// 1 for the first escalation.
        attempt: u32,
    },
    /// A quiet-time tick (for handlers that release throttles).
    Tick,
}

impl Trigger {
    /// True when reclaim has already failed (`max`/`oom` counters rose), the
    /// machine's headroom is under its critical level, or an acute machine
    /// signal (`LOW`, `THRASHING`) fired with reclaim already churning: no
    /// point waiting for progress. The last case is what the first machine
    /// assessment would decide on the same sample one `sample_interval`
    /// later; the source has already held the signal for its minimum
    /// duration, so that wait only delayed the kill.
    pub fn is_urgent(&self) -> bool {
        match self {
            Trigger::MemoryEvents { delta, .. } => {
                delta.oom.unwrap_or(0) > 0 || delta.max.unwrap_or(0) > 0
            }
            Trigger::Escalation { .. } => true,
            Trigger::Machine { signals, sample } => {
                signals.contains(Signals::CRITICAL)
                    || (signals.intersects(Signals::LOW | Signals::THRASHING)
                        && sample.churning(super::CHURN_RATIO))
            }
            _ => false,
        }
    }
}
