//! The plain values every part of the loop shares: a cgroup's id, the
//! numbers read from its files, a process sample, system numbers, and the
//! trusted xattrs read when a cgroup appears.
//!
//! They live here, below `tree`, `snapshot` and `host`, so those modules
//! depend on this one instead of on each other: the host fills these values,
//! the tree stores them, the snapshot lends them to handlers.

use crate::cgroup::{Limit, MemoryEvents, Pressure};
use crate::proc::{MemInfo, VmStat, padded_comm_str};

/// Identifies a cgroup in the loop's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CgroupId {
    pub(super) idx: u32,
    pub(super) generation: u32,
}

impl CgroupId {
    /// The slot index (dense, for side tables).
    pub fn index(self) -> usize {
        self.idx as usize
    }

    #[cfg(test)]
    pub(crate) fn for_tests(idx: u32) -> Self {
        CgroupId { idx, generation: 0 }
    }
}

/// Numbers read from one cgroup's files. `None`: not read, or not provided.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CgroupStats {
    /// `memory.current`.
    pub current: Option<u64>,
    /// `memory.swap.current`.
    pub swap_current: Option<u64>,
    /// `memory.high`.
    pub high: Option<Limit>,
    /// `memory.max`.
    pub max: Option<Limit>,
    /// `memory.oom.group`.
    pub oom_group: Option<bool>,
    /// `memory.events.local`.
    pub events_local: Option<MemoryEvents>,
    /// `populated` of `cgroup.events`.
    pub populated: Option<bool>,
    /// `pgsteal` of `memory.stat` (reclaim progress).
    pub pgsteal: Option<u64>,
    /// `memory.pressure`.
    pub pressure: Option<Pressure>,
}

impl CgroupStats {
    /// What killing everything in the cgroup would free, by the numbers
    /// available: `memory.current` plus swap.
    pub fn footprint(&self) -> u64 {
        self.current.unwrap_or(0) + self.swap_current.unwrap_or(0)
    }

    /// The lower of `memory.high` and `memory.max`, if either is set.
    pub fn effective_limit(&self) -> Option<u64> {
        let h = self.high.and_then(Limit::bytes);
        let m = self.max.and_then(Limit::bytes);
        match (h, m) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// One process as the loop saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ProcSample {
    /// PID.
    pub pid: i32,
    /// Resident memory, bytes.
    pub rss: u64,
    /// Swapped-out memory, bytes.
    pub swap: u64,
    /// `oom_score_adj`.
    pub oom_score_adj: i16,
    /// Effective uid.
    pub uid: u32,
    /// A kernel thread (never killed).
    pub kernel_thread: bool,
    /// `comm`, NUL-padded.
    #[cfg_attr(feature = "serde", serde(serialize_with = "ser_comm"))]
    pub comm: [u8; 16],
}

#[cfg(feature = "serde")]
fn ser_comm<S: serde::Serializer>(c: &[u8; 16], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(padded_comm_str(c))
}

impl ProcSample {
    /// What killing it frees: RSS plus swap (not virtual size).
    pub fn footprint(&self) -> u64 {
        self.rss + self.swap
    }

    /// `comm` as text.
    pub fn comm(&self) -> &str {
        padded_comm_str(&self.comm)
    }
}

/// System-wide numbers (`/proc/meminfo`, `/proc/vmstat`, `/proc/pressure/memory`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SystemStats {
    /// `/proc/meminfo`.
    pub meminfo: Option<MemInfo>,
    /// An excerpt of `/proc/vmstat` (reclaim, swap, `oom_kill`).
    pub vmstat: Option<VmStat>,
    /// System memory PSI.
    pub pressure: Option<Pressure>,
}

/// Trusted classification data read from a cgroup's xattrs when it appears.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XattrInfo {
    /// `oomkit.priority`.
    pub priority: Option<i32>,
    /// `oomkit.protected` = `1`.
    pub protected: bool,
}
