//! Deciding: the snapshot a handler sees, asking it, and turning its plan
//! into an outcome (nothing to do, refused, averted on re-check, dry run,
//! or acting).

use std::time::Instant;

use super::guard::FREES_NOTHING;
use super::handler::Handler;
use super::host::Host;
use super::plan::Plan;
use super::snapshot::{View, read_usage_once};
use super::trigger::Trigger;
use super::types::CgroupId;
use super::{Engine, Outcome, Phase};

/// How many times one decision asks the handler again after every step of
/// its plan was refused (each time with the refused targets excluded).
const DECIDE_ROUNDS: usize = 4;

impl<H: Host> Engine<H> {
    /// Fills the snapshot for `scope`: the cgroups in it (parents before
    /// children, walked from `scope` down: no pass over the whole tree),
    /// their usage (only the scope's when the handler reads usage on
    /// demand), system numbers.
    pub(super) fn snapshot(&mut self, scope: CgroupId) {
        self.snap.reset();
        self.snap.scope = Some(scope);
        if self.tree.node(scope).is_some() {
            self.snap.in_scope.push(scope);
        }
        // Breadth first, with `in_scope` itself as the queue.
        let mut i = 0;
        while i < self.snap.in_scope.len() {
            let id = self.snap.in_scope[i];
            for &c in self.tree.children(id) {
                if self.snap.in_scope.len() < self.snap.in_scope.capacity() {
                    self.snap.in_scope.push(c);
                }
            }
            i += 1;
        }
        let every = !self.handler.usage_on_demand();
        let n = if every { self.snap.in_scope.len() } else { 1 };
        for i in 0..n.min(self.snap.in_scope.len()) {
            let id = self.snap.in_scope[i];
            read_usage_once(&mut self.tree, &mut self.snap, &mut self.host, id);
        }
        let _ = self.host.read_system(&mut self.snap.system);
    }

    /// Reads the detail of `id` into the tree (errors leave it as it was).
    pub(super) fn read_detail(&mut self, id: CgroupId) -> Option<()> {
        let st = self.tree.detail_mut(id)?;
        self.host.read_detail(id, st).ok()
    }

    /// Reads the usage of `id` for this decision unless the snapshot has it
    /// (a handler reading usage on demand may not have read a cgroup the
    /// loop needs: a plan's target, the tree a kill widens to).
    pub(super) fn usage_now(&mut self, id: CgroupId) {
        read_usage_once(&mut self.tree, &mut self.snap, &mut self.host, id);
    }

    /// Asks the handler for a plan for the episode's scope, filters it
    /// through the protection rules (asking again, with the refused targets
    /// excluded, a bounded number of times), and acts on what is left.
    pub(super) fn decide_and_act(&mut self, at: Instant) {
        let Some(scope) = self.episode.scope else {
            return;
        };
        self.snapshot(scope);
        self.read_detail(scope);
        let trigger = self.episode.trigger;
        let trigger = if self.episode.escalations > 0 {
            Trigger::Escalation {
                cgroup: scope,
                attempt: self.episode.escalations,
            }
        } else {
            trigger
        };
        // A plan whose steps are all refused is retried with the refused
        // targets excluded, a bounded number of times.
        let mut decided = self.host.now();
        for round in 0..DECIDE_ROUNDS {
            self.plan.clear();
            self.ask_handler(&trigger, at, |h, view, plan| h.decide(view, plan));
            decided = self.host.now();
            if round == 0 {
                self.record_before(scope);
            }
            self.episode.plan.clone_from(&self.plan);
            if self.plan.is_empty() {
                break;
            }
            self.filter_plan();
            if !self.plan.is_empty() {
                break;
            }
        }
        self.episode.timings.decided = Some(decided);
        let recheck = self.cfg.recheck && self.episode.escalations == 0;
        self.act_on_plan(scope, decided, recheck);
    }

    /// Runs the decided (and already filtered) plan in `self.plan`:
    /// re-check, dry run, or the steps.
    pub(super) fn act_on_plan(&mut self, scope: CgroupId, decided: Instant, recheck: bool) {
        if self.plan.is_empty() {
            let refused = || self.episode.refusals.iter().flatten();
            if self.episode.passed_over > 0 {
                // Victims were chosen but none could be signalled.
                self.finish(Outcome::Failed, decided);
            } else if refused().any(|r| r.reason == FREES_NOTHING) {
                tracing::info!(
                    episode = self.episode.id,
                    "nothing to do: no candidate's kill would free a meaningful amount"
                );
                self.finish(Outcome::NoAction, decided);
            } else if self.episode.refusals.iter().any(Option::is_some) {
                self.stats.refused += 1;
                self.finish(Outcome::Refused, decided);
            } else {
                self.finish(Outcome::NoAction, decided);
            }
            return;
        }
        if recheck && self.resolved_on_recheck(scope) {
            self.stats.averted += 1;
            self.finish(Outcome::AvertedOnRecheck, self.host.now());
            return;
        }
        if self.cfg.dry_run {
            tracing::info!(
                episode = self.episode.id,
                handler = self.handler.name(),
                reason = self.plan.reason(),
                plan = ?self.plan,
                "dry run: would act"
            );
            self.finish(Outcome::DryRun, decided);
            return;
        }
        self.hooks.fired = false;
        self.phase = Phase::Acting {
            scope,
            step: 0,
            wait: None,
        };
        self.run_steps(self.host.now());
    }

    pub(super) fn record_before(&mut self, scope: CgroupId) {
        if let Some(s) = self.tree.stats(scope) {
            self.episode.scope_before = s;
        }
        self.episode.system_before = self.snap.system;
        if self
            .host
            .read_memory_stat(scope, &mut self.episode.scope_stat_before)
            .is_err()
        {
            self.episode.scope_stat_before.other.clear();
        }
        self.episode.record_top(&self.snap.procs);
    }

    /// Lends the handler a [`View`] of the current snapshot and the plan.
    pub(super) fn ask_handler(
        &mut self,
        trigger: &Trigger,
        at: Instant,
        f: impl FnOnce(&mut dyn Handler, &mut View<'_>, &mut Plan),
    ) {
        let mut view = View {
            trigger,
            tree: &mut self.tree,
            snap: &mut self.snap,
            host: &mut self.host,
            excluded: &self.excluded,
            now: at,
        };
        f(&mut *self.handler, &mut view, &mut self.plan);
    }
}
