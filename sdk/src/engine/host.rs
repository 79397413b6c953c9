//! The loop's view of the kernel, as two traits: what it observes and what
//! it does.
//!
//! Like aya's `sys` module, every effect the loop has on the system goes
//! through a host, so the policy (episodes, progress, re-check,
//! escalation, protection) is tested against a fake without a kernel, and
//! the real implementation ([`super::KernelHost`]) stays a thin mapping onto
//! the SDK's primitives. [`Observe`] reads; [`Act`] changes things; a
//! [`Host`] is both. Handlers only ever get the observing half (through
//! [`super::View`]). Methods a small host (a benchmark's, a test's) has no
//! use for have defaults; the acting ones default to an error, so a host
//! that cannot act never pretends it did.
//!
//! Policy that is not about the kernel — waiting for a heap profile,
//! running a program before a kill — is a [`super::PrekillHook`], not a
//! host method.

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::Instant;

use crate::cgroup::{Limit, MemoryStat};
use crate::error::{Error, Result};

use super::types::{CgroupId, CgroupStats, ProcSample, SystemStats, XattrInfo};

/// A kill in flight, to be waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
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
        /// Processes with `oom_score_adj -1000` the kill left alive: the
        /// group was killed member by member, skipping them, as the
        /// kernel's own group OOM kill does, instead of with `cgroup.kill`.
        /// 0 when the whole group was killed. The victim has exited once
        /// only these are left.
        spared: u32,
    },
}

impl Victim {
    /// The victim's cgroup.
    pub fn cgroup(&self) -> CgroupId {
        match *self {
            Victim::Process { cgroup, .. } | Victim::Cgroup { cgroup, .. } => cgroup,
        }
    }
}

/// What the loop reads of the system.
///
/// Methods that read append or overwrite into caller storage, so a real host
/// can implement them without allocating.
pub trait Observe {
    /// Monotonic time.
    fn now(&self) -> Instant {
        Instant::now()
    }

    /// A cgroup entered the managed tree: open what is needed to watch and
    /// act on it, and read its trusted xattrs. Allocation is fine here.
    fn attach(&mut self, id: CgroupId, path: &Path) -> Result<XattrInfo>;

    /// A cgroup left the tree.
    fn detach(&mut self, id: CgroupId) {
        let _ = id;
    }

    /// Reads `memory.current` and `memory.swap.current` into `out`.
    fn read_usage(&mut self, id: CgroupId, out: &mut CgroupStats) -> Result<()>;

    /// Reads limits, `memory.events.local`, `memory.oom.group`, `populated`,
    /// `pgsteal` and `memory.pressure` into `out` (fields the kernel lacks
    /// stay `None`). By default nothing: every field stays as it was.
    fn read_detail(&mut self, id: CgroupId, out: &mut CgroupStats) -> Result<()> {
        let _ = (id, out);
        Ok(())
    }

    /// Reads `memory.stat` into `out`, reusing its storage. By default
    /// nothing.
    fn read_memory_stat(&mut self, id: CgroupId, out: &mut MemoryStat) -> Result<()> {
        let _ = (id, out);
        Ok(())
    }

    /// Appends the processes directly in the cgroup to `out`; processes that
    /// exit mid-scan are skipped.
    fn read_processes(&mut self, id: CgroupId, out: &mut Vec<ProcSample>) -> Result<()>;

    /// Reads system-wide numbers. By default nothing.
    fn read_system(&mut self, out: &mut SystemStats) -> Result<()> {
        let _ = out;
        Ok(())
    }

    /// Our own PID.
    fn own_pid(&self) -> i32 {
        std::process::id() as i32
    }

    /// Our own cgroup's hierarchy path, if known.
    fn own_cgroup(&self) -> Option<&Path> {
        None
    }

    /// A process killed outside the loop (by the watchdog while the loop
    /// was stalled) since the last call: the loop adopts it as its
    /// episode's kill instead of killing another.
    fn external_kill(&mut self) -> Option<i32> {
        None
    }

    /// How many child cgroups `id` has on disk (`None`: unknown). The loop
    /// refuses a group kill whose target has more than it tracks.
    fn child_dirs(&self, _id: CgroupId) -> Option<usize> {
        None
    }

    /// The record [`Act::mark_raised`] left on `id` — `(old, raised)` — if
    /// any: a raise a previous run did not restore (it died). By default none.
    fn raised_mark(&mut self, id: CgroupId) -> Option<(Limit, Limit)> {
        let _ = id;
        None
    }
}

/// Refuses an acting method a host does not implement.
fn cannot(op: &'static str) -> Error {
    Error::HostCannot { op }
}

/// What the loop does to the system.
pub trait Act {
    /// Touches the code of the kill path without killing anything, for
    /// [`Engine::warm_up`](super::Engine::warm_up). The default does nothing.
    fn warm_up(&mut self) {}

    /// SIGKILLs `pid` through a pidfd after confirming it is still in `id`,
    /// then releases its memory (`process_mrelease`) where supported.
    fn kill_process(&mut self, id: CgroupId, pid: i32) -> Result<Victim> {
        let _ = (id, pid);
        Err(cannot("kill_process"))
    }

    /// Kills every process in the cgroup and its descendants, except those
    /// with `oom_score_adj -1000` (counted in [`Victim::Cgroup`]'s
    /// `spared`). A group holding nothing else signals nothing: an error.
    fn kill_cgroup(&mut self, id: CgroupId) -> Result<Victim> {
        let _ = id;
        Err(cannot("kill_cgroup"))
    }

    /// True once the victim has exited (process reaped / cgroup unpopulated).
    fn victim_exited(&mut self, victim: &Victim) -> Result<bool> {
        let _ = victim;
        Ok(true)
    }

    /// An fd that becomes readable when the victim exits, for the runner's
    /// epoll. By default none: the loop polls on its acting ticks.
    fn victim_fd(&self, victim: &Victim) -> Option<BorrowedFd<'_>> {
        let _ = victim;
        None
    }

    /// Forgets a victim (closes its pidfd).
    fn release_victim(&mut self, victim: &Victim) {
        let _ = victim;
    }

    /// Writes `memory.high`.
    fn set_high(&mut self, id: CgroupId, limit: Limit) -> Result<()> {
        let _ = (id, limit);
        Err(cannot("set_high"))
    }

    /// Writes `memory.max`.
    fn set_max(&mut self, id: CgroupId, limit: Limit) -> Result<()> {
        let _ = (id, limit);
        Err(cannot("set_max"))
    }

    /// Records on the cgroup, where only a privileged process can write and
    /// where it outlives this process, that its `memory.max` is being raised
    /// from `old` to `raised`, so the next run restores it if this one dies
    /// first. By default nothing is recorded.
    fn mark_raised(&mut self, id: CgroupId, old: Limit, raised: Limit) -> Result<()> {
        let _ = (id, old, raised);
        Ok(())
    }

    /// Removes the record of [`Act::mark_raised`]. By default nothing.
    fn clear_raised(&mut self, id: CgroupId) {
        let _ = id;
    }

    /// Writes `cgroup.freeze`.
    fn set_frozen(&mut self, id: CgroupId, frozen: bool) -> Result<()> {
        let _ = (id, frozen);
        Err(cannot("set_frozen"))
    }

    /// Sends `signal` to `pid` (through a pidfd, after confirming membership of `id`).
    fn signal(&mut self, id: CgroupId, pid: i32, signal: i32) -> Result<()> {
        let _ = (id, pid, signal);
        Err(cannot("signal"))
    }
}

/// A host the loop can run on: it observes and acts.
pub trait Host: Observe + Act {}

impl<T: Observe + Act> Host for T {}
