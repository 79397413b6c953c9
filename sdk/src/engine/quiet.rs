//! The loop outside an episode: quiet ticks and shutdown.
//!
//! A handler that throttles (`memory.high`, freezing) must also let go, so
//! it is given quiet ticks while nothing happens and one last word before
//! the loop stops or the handler is replaced. Its non-kill steps run under
//! the same protection rules as in an episode; a kill planned on a quiet
//! tick becomes an episode of its own.

use std::time::Instant;

use super::Engine;
use super::host::Host;
use super::trigger::Trigger;

/// How many times shutdown asks the handler for more steps: a plan holds at
/// most [`super::MAX_STEPS`], and a handler with many throttles to release
/// needs several plans, but a handler that never says "done" must not keep
/// the loop from stopping.
const SHUTDOWN_ROUNDS: usize = 256;

impl<H: Host> Engine<H> {
    /// A tick with no episode: lets a handler that wants ticks release
    /// throttles (or, if one failed to contain its cgroup, kill).
    pub(super) fn quiet_tick(&mut self, at: Instant) {
        if !self.handler.wants_ticks() {
            return;
        }
        if self
            .last_quiet_tick
            .is_some_and(|t| at.saturating_duration_since(t) < self.cfg.quiet_tick)
        {
            return;
        }
        self.last_quiet_tick = Some(at);
        let Some(root) = self.root else { return };
        self.snapshot(root);
        self.plan.clear();
        let trigger = Trigger::Tick;
        self.ask_handler(&trigger, at, |h, view, plan| h.on_quiet_tick(view, plan));
        if self.plan.is_empty() {
            return;
        }
        if self.plan.kills() {
            // A kill planned on a quiet tick (a throttle that failed to
            // contain its cgroup in time) runs as an episode of its own,
            // with the same protection rules, waiting and records.
            self.begin_episode(Trigger::Tick, root, at);
            self.record_before(root);
            self.episode.plan.clone_from(&self.plan);
            self.filter_plan();
            let decided = self.host.now();
            self.episode.timings.decided = Some(decided);
            self.act_on_plan(root, decided, false);
            return;
        }
        self.apply_outside_episode(at, "quiet tick");
    }

    /// Applies the non-kill steps of `self.plan` outside an episode (quiet
    /// ticks, shutdown), under the same protection rules.
    fn apply_outside_episode(&mut self, at: Instant, when: &'static str) {
        let own_pid = self.host.own_pid();
        let plan = self.plan.clone();
        for step in plan.steps() {
            if step.action.is_kill() {
                continue;
            }
            if let Some(reason) = self.refusal(&step.action, own_pid) {
                tracing::warn!(action = step.action.name(), reason, when, "step refused");
                self.stats.refused += 1;
                continue;
            }
            if self.cfg.dry_run {
                tracing::info!(action = step.action.name(), when, "dry run: would apply");
                continue;
            }
            if let Err(e) = self.apply_simple(&step.action, at) {
                tracing::warn!(error = %e, action = step.action.name(), when, "action failed");
            }
        }
    }

    /// Lets the handler undo what it changed (release throttles, thaw) and
    /// restores temporarily raised limits. Called before the loop stops and
    /// before a handler is replaced on reload. Kills are never run here.
    pub fn shutdown(&mut self) {
        let at = self.host.now();
        self.restore_limits(None);
        let Some(root) = self.root else { return };
        self.snapshot(root);
        let trigger = Trigger::Tick;
        // A plan holds a few steps; ask until the handler has nothing left.
        for _ in 0..SHUTDOWN_ROUNDS {
            self.plan.clear();
            self.ask_handler(&trigger, at, |h, view, plan| h.on_shutdown(view, plan));
            if self.plan.is_empty() {
                break;
            }
            self.apply_outside_episode(at, "shutdown");
        }
    }
}
