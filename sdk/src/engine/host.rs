//! The loop's whole view of the kernel, as one trait.
//!
//! Like aya's `sys` module, every effect the loop has on the system goes
//! through [`Host`], so the policy (episodes, progress, re-check,
//! escalation, protection) is tested against a fake without a kernel, and
//! the real implementation ([`super::KernelHost`]) stays a thin mapping onto
//! the SDK's primitives.

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::Instant;

use crate::cgroup::{Limit, MemoryStat};
use crate::error::Result;

use super::types::{CgroupId, CgroupStats, ProcSample, SystemStats, XattrInfo};

/// A kill in flight, to be waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Victim {
    /// One process, signalled through a pidfd kept in host slot `slot`.
    Process {
        /// The PID.
        pid: i32,
        /// The host's slot holding its pidfd.
        slot: u32,
        /// Its cgroup.
        cgroup: CgroupId,
    },
    /// A whole cgroup.
    Cgroup {
        /// The cgroup.
        cgroup: CgroupId,
    },
}

impl Victim {
    /// The victim's cgroup.
    pub fn cgroup(&self) -> CgroupId {
        match *self {
            Victim::Process { cgroup, .. } | Victim::Cgroup { cgroup } => cgroup,
        }
    }
}

/// Everything the loop does to the system.
///
/// Methods that read append or overwrite into caller storage, so a real host
/// can implement them without allocating.
pub trait Host {
    /// Monotonic time.
    fn now(&self) -> Instant;

    /// A cgroup entered the managed tree: open what is needed to watch and
    /// act on it, and read its trusted xattrs. Allocation is fine here.
    fn attach(&mut self, id: CgroupId, path: &Path) -> Result<XattrInfo>;

    /// A cgroup left the tree.
    fn detach(&mut self, id: CgroupId);

    /// Reads `memory.current` and `memory.swap.current` into `out`.
    fn read_usage(&mut self, id: CgroupId, out: &mut CgroupStats) -> Result<()>;

    /// Reads limits, `memory.events.local`, `memory.oom.group`, `populated`,
    /// `pgsteal` and `memory.pressure` into `out` (fields the kernel lacks stay `None`).
    fn read_detail(&mut self, id: CgroupId, out: &mut CgroupStats) -> Result<()>;

    /// Reads `memory.stat` into `out`, reusing its storage.
    fn read_memory_stat(&mut self, id: CgroupId, out: &mut MemoryStat) -> Result<()>;

    /// Appends the processes directly in the cgroup to `out`; processes that
    /// exit mid-scan are skipped.
    fn read_processes(&mut self, id: CgroupId, out: &mut Vec<ProcSample>) -> Result<()>;

    /// Reads system-wide numbers.
    fn read_system(&mut self, out: &mut SystemStats) -> Result<()>;

    /// SIGKILLs `pid` through a pidfd after confirming it is still in `id`,
    /// then releases its memory (`process_mrelease`) where supported.
    fn kill_process(&mut self, id: CgroupId, pid: i32) -> Result<Victim>;

    /// Kills every process in the cgroup and its descendants.
    fn kill_cgroup(&mut self, id: CgroupId) -> Result<Victim>;

    /// True once the victim has exited (process reaped / cgroup unpopulated).
    fn victim_exited(&mut self, victim: &Victim) -> Result<bool>;

    /// An fd that becomes readable when the victim exits, for the runner's epoll.
    fn victim_fd(&self, victim: &Victim) -> Option<BorrowedFd<'_>>;

    /// Forgets a victim (closes its pidfd).
    fn release_victim(&mut self, victim: &Victim);

    /// Writes `memory.high`.
    fn set_high(&mut self, id: CgroupId, limit: Limit) -> Result<()>;

    /// Writes `memory.max`.
    fn set_max(&mut self, id: CgroupId, limit: Limit) -> Result<()>;

    /// Writes `cgroup.freeze`.
    fn set_frozen(&mut self, id: CgroupId, frozen: bool) -> Result<()>;

    /// Sends `signal` to `pid` (through a pidfd, after confirming membership of `id`).
    fn signal(&mut self, id: CgroupId, pid: i32, signal: i32) -> Result<()>;

    /// True when diagnostics requested at `since` have arrived (a new file
    /// in the diagnostics folder).
    fn diagnostics_ready(&mut self, since: Instant) -> bool;

    /// Our own PID.
    fn own_pid(&self) -> i32;

    /// Our own cgroup's hierarchy path, if known.
    fn own_cgroup(&self) -> Option<&Path>;

    /// Touches the code of the kill path without killing anything, for
    /// [`Engine::warm_up`](super::Engine::warm_up). The default does nothing.
    fn warm_up(&mut self) {}
}
