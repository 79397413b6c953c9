//! A warm-up decision: the decision path made resident before it is needed.
//!
//! With `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)` a page is locked
//! once it has been touched, and a page never touched is not resident at
//! all. That keeps the handler small at rest (its start-up code and unused
//! table room cost nothing), but a page of the decision path touched for
//! the first time during an OOM would have to be read from disk (a major
//! fault) or allocated exactly when memory is gone. So, once the tree is
//! known, the runner asks for one decision over the whole managed tree as
//! an urgent event at the root would (snapshot, detail, a progress sample,
//! the handler's `decide`, the plan filter, the record of the largest
//! processes, the re-check read, the host's kill-path calls on oomkit's own
//! pidfd), logs what it would have done, and throws it away: nothing is
//! acted on, and no episode or counter changes.

use std::time::{Duration, Instant};

use crate::cgroup::MemoryEvents;

use super::host::Host;
use super::trigger::Trigger;
use super::{Engine, Phase};

/// What [`Engine::warm_up`] went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarmUp {
    /// Cgroups in the snapshot.
    pub cgroups: usize,
    /// Processes the handler read.
    pub processes: usize,
    /// Steps the handler planned (none were taken).
    pub planned: usize,
    /// Of those, steps the plan filter would have kept.
    pub kept: usize,
    /// The snapshot and the handler's `decide`: what selecting a victim
    /// over this tree costs.
    pub selection: Duration,
}

impl<H: Host> Engine<H> {
    /// Runs one decision over the managed tree without acting on it, so
    /// the code and data of the decision path are resident (see the module
    /// docs). Does nothing (`None`) during an episode or without a root.
    pub fn warm_up(&mut self) -> Option<WarmUp> {
        let root = self.root?;
        if !matches!(self.phase, Phase::Idle) {
            return None;
        }
        let at: Instant = self.host.now();
        let trigger = Trigger::MemoryEvents {
            cgroup: root,
            delta: MemoryEvents {
                max: Some(1),
                ..MemoryEvents::default()
            },
        };
        let _ = self.sample(root, at);
        let started = self.host.now();
        self.snapshot(root);
        self.read_detail(root);
        self.plan.clear();
        self.ask_handler(&trigger, at, |h, view, plan| h.decide(view, plan));
        let selection = self.host.now().saturating_duration_since(started);
        self.record_before(root);
        let planned = self.plan.len();
        self.filter_plan();
        let kept = self.plan.len();
        tracing::info!(
            handler = self.handler.name(),
            cgroups = self.snap.in_scope.len(),
            processes = self.snap.procs.len(),
            planned,
            kept,
            selection_us = selection.as_micros() as u64,
            reason = self.plan.reason(),
            plan = ?self.plan,
            "warm-up decision (not acted on)"
        );
        self.host.warm_up();
        let done = WarmUp {
            cgroups: self.snap.in_scope.len(),
            processes: self.snap.procs.len(),
            planned,
            kept,
            selection,
        };
        // Nothing of it stays: the next episode starts from a clean slate.
        self.plan.clear();
        self.excluded.clear();
        self.episode.refusals = Default::default();
        self.snap.reset();
        Some(done)
    }
}
