//! Temporary `memory.max` raises, and putting the old limit back.
//!
//! A handler may raise a cgroup's `memory.max` for a while (room for a job
//! to checkpoint) instead of killing. The old limit is remembered here and
//! written back when the time is up, when the episode ends, or when the
//! loop shuts down, whichever comes first. The loop never removes
//! `memory.max` (see `guard`); this module only ever writes back a value
//! that was there before.

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
        self.host.set_max(cgroup, Limit::Bytes(limit))?;
        self.restores.remember(Restore {
            cgroup,
            limit: old,
            at: until,
        });
        Ok(())
    }
}
