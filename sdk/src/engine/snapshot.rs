//! What the loop reads before a decision, in storage allocated up front.
//!
//! Reading every file of every cgroup on each event would not scale to
//! 10,000 cgroups, so the snapshot is two-level: a cheap [`CgroupStats`]
//! (`memory.current`, `memory.swap.current`) for every cgroup in scope, and
//! the detail (limits, `memory.events.local`, `memory.stat`, PSI, processes)
//! only where a decision needs it — read lazily through [`View`].
//!
//! A handler that does not need every cgroup's usage (one that orders by
//! tier first, then size) says so with [`Handler::usage_on_demand`]: then
//! the snapshot reads only the scope, and [`View::usage`] reads a cgroup
//! the first time the handler asks in this decision. At 10,000 cgroups the
//! reads, not the policy, are what a decision costs.
//!
//! [`Handler::usage_on_demand`]: super::Handler::usage_on_demand

use std::path::Path;
use std::time::Instant;

use crate::error::Result;

use super::host::Observe;
use super::tree::{Class, Tree};
use super::trigger::Trigger;
use super::types::{CgroupId, CgroupStats, ProcSample, SystemStats};

/// Things the handler must not pick again in this episode (victims that did
/// not die in time, refused targets).
#[derive(Debug, Clone, Default)]
pub struct Excluded {
    pub(crate) cgroups: [Option<CgroupId>; EXCLUDED_MAX],
    pub(crate) pids: [Option<i32>; EXCLUDED_MAX],
}

/// How many cgroups, and how many processes, one episode can exclude; more
/// are not remembered (escalations are bounded well below this).
pub(crate) const EXCLUDED_MAX: usize = 8;

impl Excluded {
    pub(crate) fn clear(&mut self) {
        *self = Excluded::default();
    }

    pub(crate) fn add_cgroup(&mut self, id: CgroupId) {
        if let Some(s) = self.cgroups.iter_mut().find(|s| s.is_none()) {
            *s = Some(id);
        }
    }

    pub(crate) fn add_pid(&mut self, pid: i32) {
        if let Some(s) = self.pids.iter_mut().find(|s| s.is_none()) {
            *s = Some(pid);
        }
    }

    /// True when the cgroup must not be picked.
    pub fn has_cgroup(&self, id: CgroupId) -> bool {
        self.cgroups.contains(&Some(id))
    }

    /// True when the process must not be picked.
    pub fn has_pid(&self, pid: i32) -> bool {
        self.pids.contains(&Some(pid))
    }
}

/// Pre-allocated storage behind a [`View`].
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) scope: Option<CgroupId>,
    pub(crate) in_scope: Vec<CgroupId>,
    pub(crate) procs: Vec<ProcSample>,
    /// (cgroup, start, len) into `procs`.
    /// (cgroup, start, len) into `procs`, in the order read.
    pub(crate) proc_index: Vec<(CgroupId, u32, u32)>,
    /// Position in `proc_index` plus one by cgroup slot (0: none), so
    /// lookups are O(1); zeroed, so a slot never asked about is never
    /// written (its page stays unallocated).
    pub(crate) proc_slot: Vec<u32>,
    /// One bit per cgroup slot: its usage was read for this snapshot.
    fresh: Vec<u64>,
    pub(crate) system: SystemStats,
}

impl Snapshot {
    pub(crate) fn with_capacity(cgroups: usize, procs: usize) -> Self {
        Snapshot {
            scope: None,
            in_scope: Vec::with_capacity(cgroups),
            procs: Vec::with_capacity(procs),
            proc_index: Vec::with_capacity(cgroups),
            proc_slot: vec![0; cgroups],
            fresh: vec![0; cgroups.div_ceil(64)],
            system: SystemStats::default(),
        }
    }

    /// True when the usage of `id` was read for this snapshot.
    pub(crate) fn is_fresh(&self, id: CgroupId) -> bool {
        self.fresh
            .get(id.index() / 64)
            .is_some_and(|w| w & (1 << (id.index() % 64)) != 0)
    }

    fn set_fresh(&mut self, id: CgroupId) {
        if let Some(w) = self.fresh.get_mut(id.index() / 64) {
            *w |= 1 << (id.index() % 64);
        }
    }

    /// Makes room for `cgroups` cgroups in scope and for slot `slot`
    /// (grown here, off the decision path, so a snapshot never allocates).
    pub(crate) fn reserve_for(&mut self, cgroups: usize, slot: usize) {
        if self.in_scope.capacity() < cgroups {
            self.in_scope.reserve(cgroups - self.in_scope.len());
        }
        if self.proc_index.capacity() < cgroups {
            self.proc_index.reserve(cgroups - self.proc_index.len());
        }
        if self.proc_slot.len() <= slot {
            self.proc_slot.resize(slot + 1, 0);
        }
        if self.fresh.len() <= slot / 64 {
            self.fresh.resize(slot / 64 + 1, 0);
        }
    }

    pub(crate) fn reset(&mut self) {
        self.scope = None;
        self.in_scope.clear();
        self.procs.clear();
        for (id, _, _) in &self.proc_index {
            if let Some(s) = self.proc_slot.get_mut(id.index()) {
                *s = 0;
            }
        }
        self.proc_index.clear();
        self.fresh.fill(0);
        self.system = SystemStats::default();
    }
}

/// Reads the usage of `id` into its tree node unless this snapshot already
/// has it (a read that fails leaves `current` at `None`: gone, or
/// unreadable). The one place the loop and [`View::usage`] read usage.
pub(crate) fn read_usage_once(
    tree: &mut Tree,
    snap: &mut Snapshot,
    host: &mut dyn Observe,
    id: CgroupId,
) {
    if snap.is_fresh(id) || tree.node(id).is_none() {
        return;
    }
    let mut st = CgroupStats::default();
    if let Err(e) = host.read_usage(id, &mut st) {
        if !e.is_gone() {
            tracing::debug!(error = %e, "reading usage failed");
        }
        st.current = None;
    }
    tree.set_usage(id, &st);
    snap.set_fresh(id);
}

/// What a handler sees when deciding: the trigger, the cgroups in scope
/// with their stats, and processes on request. The loop does all I/O.
pub struct View<'a> {
    pub(crate) trigger: &'a Trigger,
    pub(crate) tree: &'a mut Tree,
    pub(crate) snap: &'a mut Snapshot,
    pub(crate) host: &'a mut dyn Observe,
    pub(crate) excluded: &'a Excluded,
    pub(crate) now: Instant,
}

impl View<'_> {
    /// Why the loop is asking.
    pub fn trigger(&self) -> &Trigger {
        self.trigger
    }

    /// When the snapshot was taken.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The cgroup whose subtree is in scope.
    pub fn scope(&self) -> Option<CgroupId> {
        self.snap.scope
    }

    /// The cgroups in scope (the scope and its descendants), parents before children.
    pub fn cgroups(&self) -> &[CgroupId] {
        &self.snap.in_scope
    }

    /// Stats of a cgroup (`current` and `swap_current` for all in scope,
    /// unless the handler reads usage on demand: then only after
    /// [`View::usage`]; more after [`View::detail`], kept for the few
    /// cgroups read in detail lately).
    pub fn stats(&self, id: CgroupId) -> Option<CgroupStats> {
        self.tree.stats(id)
    }

    /// Stats of a cgroup with `current` and `swap_current` read for this
    /// decision: read now unless already read (see
    /// [`Handler::usage_on_demand`](super::Handler::usage_on_demand)).
    /// `current` is `None` when the cgroup vanished or its file could not
    /// be read. No allocation.
    pub fn usage(&mut self, id: CgroupId) -> Option<CgroupStats> {
        read_usage_once(self.tree, self.snap, self.host, id);
        self.tree.stats(id)
    }

    /// Reads the detail (limits, events, oom.group, pgsteal, PSI) of a
    /// cgroup; its stats with it. `None` when it is not managed or the read
    /// failed.
    pub fn detail(&mut self, id: CgroupId) -> Option<CgroupStats> {
        let st = self.tree.detail_mut(id)?;
        if self.host.read_detail(id, st).is_err() {
            return None;
        }
        self.tree.stats(id)
    }

    /// The class (priority, protection) of a cgroup.
    pub fn class(&self, id: CgroupId) -> Option<Class> {
        self.tree.class(id)
    }

    /// The hierarchy path of a cgroup.
    pub fn path(&self, id: CgroupId) -> Option<&Path> {
        self.tree.path(id)
    }

    /// The parent of a cgroup.
    pub fn parent(&self, id: CgroupId) -> Option<CgroupId> {
        self.tree.parent(id)
    }

    /// The child cgroups of a cgroup (in scope when it is), in no
    /// particular order.
    pub fn children(&self, id: CgroupId) -> &[CgroupId] {
        self.tree.children(id)
    }

    /// True when `a` is `b` or below it.
    pub fn is_within(&self, a: CgroupId, b: CgroupId) -> bool {
        self.tree.is_within(a, b)
    }

    /// True when the cgroup has no children in the tree. O(1).
    pub fn is_leaf(&self, id: CgroupId) -> bool {
        self.tree.children(id).is_empty()
    }

    /// System-wide numbers.
    pub fn system(&self) -> &SystemStats {
        &self.snap.system
    }

    /// What must not be picked again in this episode.
    pub fn excluded(&self) -> &Excluded {
        self.excluded
    }

    /// oomkit's own PID (never a victim; see [`crate::kill::never_kill`]).
    pub fn own_pid(&self) -> i32 {
        self.host.own_pid()
    }

    /// The processes directly in a cgroup, read on first request. A cgroup
    /// that vanished, or whose processes all exited, gives an empty slice.
    pub fn processes(&mut self, id: CgroupId) -> Result<&[ProcSample]> {
        let cached = self
            .snap
            .proc_slot
            .get(id.index())
            .and_then(|&i| i.checked_sub(1))
            .and_then(|i| self.snap.proc_index.get(i as usize))
            .filter(|(c, _, _)| *c == id);
        if let Some(&(_, start, len)) = cached {
            return Ok(&self.snap.procs[start as usize..(start + len) as usize]);
        }
        let start = self.snap.procs.len();
        match self.host.read_processes(id, &mut self.snap.procs) {
            Ok(()) => {}
            Err(e) if e.is_gone() => self.snap.procs.truncate(start),
            Err(e) => {
                self.snap.procs.truncate(start);
                return Err(e);
            }
        }
        let len = self.snap.procs.len() - start;
        let at = self.snap.proc_index.len() as u32 + 1;
        self.snap.proc_index.push((id, start as u32, len as u32));
        if self.snap.proc_slot.len() <= id.index() {
            self.snap.proc_slot.resize(id.index() + 1, 0);
        }
        if let Some(s) = self.snap.proc_slot.get_mut(id.index()) {
            *s = at;
        }
        Ok(&self.snap.procs[start..])
    }
}
