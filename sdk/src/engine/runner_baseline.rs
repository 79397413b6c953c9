//! Baselines of `memory.events.local` inferred instead of read, for the
//! siblings a batch of directory changes attaches (issue 12: opening,
//! reading and closing each file cost about 40 % of attaching 10,000
//! cgroups under emulation).
//!
//! Why it is exact: the kernel counts every memory event of a cgroup in
//! its own `memory.events.local` and in the hierarchical `memory.events`
//! of it and of each ancestor (`memcg_memory_event`), unless the cgroup2
//! mount has the `memory_localevents` option (then `memory.events` is
//! local too). The counters only grow, and a removed child's events stay
//! counted in its ancestors. So when a parent's `memory.events` reads all
//! zero — every counter, keys this SDK does not know included — every
//! child's `memory.events.local` is all zero.
//!
//! How it stays free of races: for the children of one parent attached in
//! a row within a batch, the parent's `memory.events` is read (all zero,
//! or the children are read one by one as outside a batch), then each
//! child's inotify watch is added, then the parent's `memory.events` is
//! read again. Only if that second read is all zero too does each child
//! keep zero as its baseline: an event in a child before its watch would
//! show in the second read, and one after it raises `IN_MODIFY` on the
//! watch. Otherwise (a counter moved, a read failed) each child's file is
//! read now, after its watch, as [`LocalEvents::add`] does. The one
//! window left is the kernel's own: it raises a child's local counter
//! (and its notification) a few instructions before its ancestors'
//! hierarchical ones, so an event whose task is preempted right between
//! the two, across a child's watch and the second read, is seen at the
//! child's next event, as any event was before the watch came first.
//!
//! Outside a batch (a cgroup attached alone), under `memory_localevents`,
//! at the mount root (no `memory.events`) or for a parent whose read
//! fails, each child's file is read.
//!
//! [`LocalEvents::add`]: super::super::local_events::LocalEvents::add

use std::path::PathBuf;

use crate::cgroup::Cgroup;

use super::super::CgroupId;
use super::Runner;

/// The children of one parent attached in a row within a batch.
#[derive(Debug)]
pub(super) struct Siblings {
    /// The parent's hierarchy path.
    parent_hier: PathBuf,
    /// The parent, open, when its `memory.events` read all zero before
    /// the children's watches (`None`: each child's file is read).
    parent: Option<Cgroup>,
    /// Watched children whose baseline waits for the second read.
    pending: Vec<CgroupId>,
}

impl Runner {
    /// Starts a batch: the siblings attached in it may have their
    /// baselines inferred (see the module docs).
    pub(super) fn begin_siblings(&mut self) {
        self.siblings = Some(None);
    }

    /// Settles the last siblings and ends the batch.
    pub(super) fn end_siblings(&mut self) {
        self.settle_siblings();
        self.siblings = None;
    }

    /// Whether the baseline of `cg`, about to be watched, may wait for its
    /// parent's second read: within a batch, on a mount whose
    /// `memory.events` is hierarchical, with the parent's `memory.events`
    /// all zero before the first watch of its children in a row (read
    /// here, once per row).
    pub(super) fn may_infer_baseline(&mut self, cg: &Cgroup) -> bool {
        if self.siblings.is_none() || !self.engine.host().memory_events_hierarchical() {
            return false;
        }
        let Some(parent_hier) = crate::util::path_parent(cg.hierarchy_path()) else {
            return false;
        };
        if let Some(Some(s)) = &self.siblings {
            if s.parent_hier == parent_hier {
                return s.parent.is_some();
            }
        }
        self.settle_siblings();
        let parent = cg
            .open_parent()
            .ok()
            .flatten()
            .filter(|p| matches!(p.memory_events_all_zero(), Ok(true)));
        let zero = parent.is_some();
        self.siblings = Some(Some(Siblings {
            parent_hier: parent_hier.to_path_buf(),
            parent,
            pending: Vec::new(),
        }));
        zero
    }

    /// `id` is watched with its baseline waiting for the second read.
    pub(super) fn baseline_pending(&mut self, id: CgroupId) {
        if let Some(Some(s)) = &mut self.siblings {
            s.pending.push(id);
        }
    }

    /// Reads the parent's `memory.events` again: all zero, the waiting
    /// children keep zero as their baseline; otherwise each child's file
    /// is read now, after its watch. Then no row is open.
    pub(super) fn settle_siblings(&mut self) {
        let Some(Some(s)) = self.siblings.as_mut().map(Option::take) else {
            return;
        };
        if s.pending.is_empty() {
            return;
        }
        let zero = s
            .parent
            .as_ref()
            .is_some_and(|p| matches!(p.memory_events_all_zero(), Ok(true)));
        let Some(local) = &mut self.local else { return };
        for id in s.pending {
            if !local.contains(id) {
                continue;
            }
            if zero {
                local.set_baseline(id, None);
                continue;
            }
            let host = self.engine.host();
            match host.handle(id).and_then(|cg| cg.memory_events_local()) {
                Ok(ev) => local.set_baseline(id, Some(ev)),
                Err(e) => {
                    local.remove(id);
                    if !e.is_gone() && !e.is_unsupported() {
                        tracing::warn!(error = %e, "watching a new cgroup failed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "runner_baseline_tests.rs"]
mod tests;
