//! Temporary `memory.max` raises, and putting the old limit back.
//!
//! A handler may raise a cgroup's `memory.max` for a while (room for a job
//! to checkpoint) instead of killing. The old limit is remembered here and
//! written back when the time is up, when the episode ends, or when the
//! loop shuts down, whichever comes first — and only if the file still
//! holds the value oomkit wrote: a limit someone else set meanwhile stands.
//! The loop never removes `memory.max` (see `guard`); this module only ever
//! writes back a value that was there before.
//!
//! If the daemon dies while a limit is raised, the next run puts it back:
//! before writing the raise, the loop records `old raised` on the cgroup
//! itself ([`Act::mark_raised`]: the `trusted.oomkit.raised` xattr, which
//! only a process with `CAP_SYS_ADMIN` can write, so a tenant can neither
//! forge nor remove it). Every cgroup the loop attaches is checked for that
//! record: if `memory.max` still holds the raised value, the old one is
//! written back; either way the record is removed. A restore in this run
//! removes it too.
//!
//! [`Act::mark_raised`]: super::Act::mark_raised

use std::time::Instant;

use crate::cgroup::Limit;
use crate::error::Result;

use super::Engine;
use super::host::Host;
use super::types::{CgroupId, CgroupStats};

/// How many raised limits can wait for their restore at once; a raise
/// beyond this is applied but not restored automatically (plans hold few
/// steps, so this is not reached in practice).
pub(super) const MAX_RESTORES: usize = 4;

/// A raised `memory.max`, to be set back to `limit` at `at`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Restore {
    cgroup: CgroupId,
    limit: Limit,
    /// What oomkit wrote: restored only if the file still says this.
    raised: Limit,
    at: Instant,
}

/// The pending restores, in fixed storage.
#[derive(Debug, Default)]
pub(super) struct Restores {
    slots: [Option<Restore>; MAX_RESTORES],
}

impl Restores {
    /// When the next restore is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.slots.iter().flatten().map(|r| r.at).min()
    }

    fn remember(&mut self, r: Restore) {
        if let Some(slot) = self.slots.iter_mut().find(|r| r.is_none()) {
            *slot = Some(r);
        }
    }
}

impl<H: Host> Engine<H> {
    /// Sets back every raised limit due by `due` (`None`: all of them).
    pub(super) fn restore_limits(&mut self, due: Option<Instant>) {
        for slot in &mut self.restores.slots {
            let Some(r) = *slot else { continue };
            if due.is_some_and(|at| at < r.at) {
                continue;
            }
            *slot = None;
            self.host.clear_raised(r.cgroup);
            // Someone else (an operator, the runtime) may have set a limit
            // meanwhile: theirs stands.
            let mut st = CgroupStats::default();
            match self.host.read_detail(r.cgroup, &mut st) {
                Ok(()) if st.max == Some(r.raised) => {}
                Ok(()) => {
                    tracing::info!("memory.max was changed while raised; leaving the new value");
                    continue;
                }
                Err(e) => {
                    if !e.is_gone() {
                        tracing::warn!(error = %e, "reading memory.max before restoring it failed");
                    }
                    continue;
                }
            }
            if let Err(e) = self.host.set_max(r.cgroup, r.limit) {
                tracing::warn!(error = %e, "restoring memory.max failed");
            }
        }
    }

    /// Raises `memory.max` of `cgroup` to `limit` (never lowers it) and
    /// remembers the old value, to be restored at `until`.
    pub(super) fn raise_max(&mut self, cgroup: CgroupId, limit: u64, until: Instant) -> Result<()> {
        let mut st = CgroupStats::default();
        self.host.read_detail(cgroup, &mut st)?;
        let old = st.max.unwrap_or(Limit::Max);
        if old.bytes().is_some_and(|b| b >= limit) {
            return Ok(());
        }
        // Recorded first: a death between the two leaves a record whose
        // value the file does not hold, which the next run only removes.
        if let Err(e) = self.host.mark_raised(cgroup, old, Limit::Bytes(limit)) {
            tracing::warn!(error = %e, "recording the raise of memory.max failed; a restart will not restore it");
        }
        if let Err(e) = self.host.set_max(cgroup, Limit::Bytes(limit)) {
            self.host.clear_raised(cgroup);
            return Err(e);
        }
        self.restores.remember(Restore {
            cgroup,
            limit: old,
            raised: Limit::Bytes(limit),
            at: until,
        });
        Ok(())
    }

    /// A cgroup just attached: puts back a `memory.max` a previous run
    /// raised and did not restore (it died), if the file still holds the
    /// raised value, and removes the record either way.
    pub(super) fn recover_raise(&mut self, cgroup: CgroupId) {
        let Some((old, raised)) = self.host.raised_mark(cgroup) else {
            return;
        };
        let mut st = CgroupStats::default();
        match self.host.read_detail(cgroup, &mut st) {
            Ok(()) if st.max == Some(raised) => match self.host.set_max(cgroup, old) {
                Ok(()) => tracing::warn!(
                    cgroup = %self.tree.path(cgroup).map(|p| p.display().to_string()).unwrap_or_default(),
                    restored = %old,
                    "memory.max raised by a previous run restored"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "restoring a memory.max raised by a previous run failed")
                }
            },
            Ok(()) => {
                tracing::info!("memory.max raised by a previous run was changed since; leaving it")
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading memory.max raised by a previous run failed")
            }
        }
        self.host.clear_raised(cgroup);
    }
}
