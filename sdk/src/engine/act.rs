//! Acting: running a plan's steps, waiting for each victim to exit and
//! its memory to come back, escalating when one does not die in time, and
//! ending the episode.
//!
//! One kill per episode: while a victim is waited for, new events do not
//! cause another kill (they are counted as suppressed). Every wait has a
//! deadline; a victim stuck past it (D state) is excluded and the handler
//! asked again, up to `max_escalations` times.

use std::path::Path;
use std::time::Instant;

use crate::error::{Error, Result};

use super::host::{Host, Victim};
use super::plan::Action;
use super::prekill::PrekillTarget;
use super::types::{CgroupId, CgroupStats, ProcSample};
use super::{Engine, Outcome, Phase, VictimRecord, VictimWait, Wait};

/// Victims whose kill signalled nothing that one episode passes over before
/// giving up (below the room for exclusions).
pub(super) const MAX_PASSED_OVER: u32 = 4;

impl<H: Host> Engine<H> {
    /// Applies a step that needs no waiting (limits, freezing).
    pub(super) fn apply_simple(&mut self, action: &Action, at: Instant) -> Result<()> {
        match *action {
            Action::SetHigh { cgroup, limit } => self.host.set_high(cgroup, limit),
            Action::Freeze { cgroup, frozen } => self.host.set_frozen(cgroup, frozen),
            Action::RaiseMax {
                cgroup,
                limit,
                duration,
            } => self.raise_max(cgroup, limit, at + duration),
            _ => Ok(()),
        }
    }

    /// Runs plan steps from the current one until one must be waited for.
    pub(super) fn run_steps(&mut self, at: Instant) {
        self.acting_seen = at;
        loop {
            let Phase::Acting {
                scope,
                step,
                wait: None,
            } = self.phase
            else {
                return;
            };
            let Some(s) = self.plan.step(step).copied() else {
                self.finish(Outcome::Acted, at);
                return;
            };
            if s.action.is_kill() {
                if let Some(pid) = self.host.external_kill() {
                    self.adopt_external_kill(pid, scope, at);
                    return;
                }
            }
            let deadline = at
                + if s.deadline.is_zero() {
                    self.cfg.kill_deadline
                } else {
                    s.deadline
                };
            let mut wait = None;
            let result = self.run_step(&s.action, scope, at, deadline, &mut wait);
            tracing::info!(
                episode = self.episode.id,
                action = s.action.name(),
                ok = result.is_ok(),
                reason = self.plan.reason(),
                "action"
            );
            if let Err(e) = result {
                self.episode.last_error = Some(e.to_string());
                if s.action.is_kill() {
                    self.pass_over(&s.action, &e, at);
                    return;
                }
            }
            self.phase = Phase::Acting {
                scope,
                step: if wait.is_some() { step } else { step + 1 },
                wait,
            };
            if wait.is_some() {
                return;
            }
        }
    }

    /// Starts one step; `wait` is set when the step must be waited for.
    fn run_step(
        &mut self,
        action: &Action,
        scope: CgroupId,
        at: Instant,
        deadline: Instant,
        wait: &mut Option<Wait>,
    ) -> Result<()> {
        if action.is_kill() && !self.hooks.fired {
            if let Some(deadline) = self.fire_hooks(action, None, at, deadline) {
                *wait = Some(Wait::Prekill {
                    deadline,
                    advance: false,
                });
                return Ok(());
            }
        }
        match *action {
            Action::KillProcess { cgroup, pid } => {
                let footprint = self
                    .snap
                    .procs
                    .iter()
                    .find(|p| p.pid == pid)
                    .map_or(0, ProcSample::footprint);
                let r = self.host.kill_process(cgroup, pid);
                self.start_kill(r, footprint, scope, deadline, wait)
            }
            Action::KillCgroup { cgroup } => {
                let footprint = self.tree.stats(cgroup).map_or(0, |s| s.footprint());
                let r = self.host.kill_cgroup(cgroup);
                self.start_kill(r, footprint, scope, deadline, wait)
            }
            Action::KillTree { cgroup } => {
                let target = self.oom_group_target(cgroup);
                self.usage_now(target);
                let footprint = self.tree.stats(target).map_or(0, |s| s.footprint());
                let r = self.host.kill_cgroup(target);
                self.start_kill(r, footprint, scope, deadline, wait)
            }
            Action::CaptureDiagnostics {
                cgroup,
                pid,
                signal,
            } => {
                // Hooks first, so they can note what exists before the process reacts.
                let hooks = if self.hooks.fired {
                    None
                } else {
                    self.fire_hooks(action, Some(signal), at, deadline)
                };
                let r = self.host.signal(cgroup, pid, signal);
                match (&r, hooks) {
                    (Ok(()), Some(deadline)) => {
                        *wait = Some(Wait::Prekill {
                            deadline,
                            advance: true,
                        })
                    }
                    _ => self.hooks.cancel(),
                }
                r
            }
            ref a => self.apply_simple(a, at),
        }
    }

    /// Fires the pre-kill hooks for `action`'s target; the time to wait for
    /// them until (never past the step's `deadline`), if any asked.
    fn fire_hooks(
        &mut self,
        action: &Action,
        signal: Option<i32>,
        at: Instant,
        deadline: Instant,
    ) -> Option<Instant> {
        let cgroup = action.cgroup();
        let pid = match *action {
            Action::KillProcess { pid, .. } | Action::CaptureDiagnostics { pid, .. } => Some(pid),
            _ => None,
        };
        let path = self.tree.path(cgroup)?;
        let target = PrekillTarget {
            cgroup,
            path,
            pid,
            signal,
            escalation: self.episode.escalations,
        };
        let wait = self.hooks.fire(&target)?;
        Some(at.checked_add(wait).map_or(deadline, |t| t.min(deadline)))
    }

    fn start_kill(
        &mut self,
        r: Result<Victim>,
        footprint: u64,
        scope: CgroupId,
        deadline: Instant,
        wait: &mut Option<Wait>,
    ) -> Result<()> {
        let victim = r?;
        if let Victim::Cgroup { cgroup, spared } = victim {
            if spared > 0 {
                tracing::warn!(
                    episode = self.episode.id,
                    cgroup = %self.tree.path(cgroup).map(Path::display).map(|d| d.to_string()).unwrap_or_default(),
                    spared,
                    "group kill spared processes with oom_score_adj -1000 (killed member by member)"
                );
            }
        }
        let sent = self.host.now();
        self.stats.kills += 1;
        self.episode.timings.signal_sent.get_or_insert(sent);
        self.episode.add_victim(VictimRecord {
            victim,
            footprint,
            escalated: false,
        });
        let scope_before = self.tree.stats(scope).and_then(|s| s.current).unwrap_or(0);
        *wait = Some(Wait::Victim(VictimWait {
            victim,
            deadline,
            exited_at: None,
            scope_before,
            footprint,
        }));
        Ok(())
    }

    /// The highest ancestor of `cg` (within the managed tree) that has
    /// `memory.oom.group=1` in an unbroken chain; `cg` itself if none.
    fn oom_group_target(&mut self, cg: CgroupId) -> CgroupId {
        let mut target = cg;
        let mut cur = Some(cg);
        while let Some(c) = cur {
            let mut st = CgroupStats::default();
            if self.host.read_detail(c, &mut st).is_err() || st.oom_group != Some(true) {
                break;
            }
            if !self.tree.subtree_protected(c)
                && !self
                    .host
                    .own_cgroup()
                    .is_some_and(|o| self.tree.path(c).is_some_and(|p| o.starts_with(p)))
            {
                target = c;
            }
            cur = self.tree.parent(c);
        }
        target
    }

    pub(super) fn poll_acting(&mut self, at: Instant) {
        self.acting_seen = at;
        let Phase::Acting { scope, step, wait } = self.phase else {
            return;
        };
        match wait {
            None => self.run_steps(at),
            Some(Wait::Prekill { deadline, advance }) => {
                if self.hooks.poll() || at >= deadline {
                    self.hooks.cancel();
                    self.phase = Phase::Acting {
                        scope,
                        step: step + usize::from(advance),
                        wait: None,
                    };
                    self.run_steps(at);
                }
            }
            Some(Wait::Victim(w)) => self.poll_victim(scope, step, at, w),
        }
    }

    /// Waits for a victim to exit and its memory to come back: then the
    /// next step; memory not back by the deadline ends the episode; a victim
    /// still alive at the deadline is excluded and the handler asked again.
    fn poll_victim(&mut self, scope: CgroupId, step: usize, at: Instant, w: VictimWait) {
        let VictimWait {
            victim,
            deadline,
            exited_at,
            scope_before,
            footprint,
        } = w;
        let exited_at = match exited_at {
            Some(t) => Some(t),
            None => match self.host.victim_exited(&victim) {
                Ok(true) | Err(_) => Some(self.host.now()),
                Ok(false) => None,
            },
        };
        if let Some(t) = exited_at {
            self.episode.timings.victim_exited = Some(t);
            let mut st = CgroupStats::default();
            let back = match self.host.read_usage(scope, &mut st) {
                Ok(()) => {
                    let now = st.current.unwrap_or(0);
                    let need = (footprint as f64 * self.cfg.memory_back_ratio) as u64;
                    scope_before.saturating_sub(now) >= need
                }
                Err(_) => true,
            };
            if back {
                self.episode.timings.memory_back = Some(self.host.now());
                self.host.release_victim(&victim);
                self.phase = Phase::Acting {
                    scope,
                    step: step + 1,
                    wait: None,
                };
                self.run_steps(at);
                return;
            }
            if at >= deadline {
                self.host.release_victim(&victim);
                self.finish(Outcome::ActedMemoryNotBack, at);
                return;
            }
            self.phase = Phase::Acting {
                scope,
                step,
                wait: Some(Wait::Victim(VictimWait { exited_at, ..w })),
            };
            return;
        }
        if at >= deadline {
            tracing::warn!(
                episode = self.episode.id,
                ?victim,
                "victim did not exit in time; escalating"
            );
            self.episode.mark_escalated(victim);
            match victim {
                Victim::Process { pid, .. } => self.excluded.add_pid(pid),
                Victim::Cgroup { cgroup, .. } => self.excluded.add_cgroup(cgroup),
            }
            self.host.release_victim(&victim);
            self.stats.escalations += 1;
            self.escalate(at);
        }
    }

    /// The watchdog killed `pid` while this turn was stalled: that is the
    /// episode's kill, not a reason for a second one.
    fn adopt_external_kill(&mut self, pid: i32, scope: CgroupId, at: Instant) {
        tracing::warn!(
            episode = self.episode.id,
            pid,
            "the watchdog killed while the loop was stalled; adopting its kill"
        );
        self.episode.timings.signal_sent.get_or_insert(at);
        self.episode.add_victim(VictimRecord {
            // No pidfd of ours: the slot is out of range, so it counts as exited.
            victim: Victim::Process {
                pid,
                slot: u32::MAX,
                cgroup: scope,
            },
            footprint: 0,
            escalated: false,
        });
        self.finish(Outcome::Acted, at);
    }

    /// A kill that signalled nothing: the target was gone or failed its
    /// membership check (it is not where the snapshot saw it), or the kill
    /// failed otherwise (EMFILE, EPERM). Either way retrying it cannot
    /// help: it is excluded and the handler asked again, at most
    /// [`MAX_PASSED_OVER`] times per episode. The episode counts as acted
    /// only once something was signalled.
    fn pass_over(&mut self, action: &Action, e: &Error, at: Instant) {
        tracing::warn!(
            episode = self.episode.id,
            action = action.name(),
            error = %e,
            "kill signalled nothing; passing over this victim"
        );
        match *action {
            Action::KillProcess { pid, .. } => self.excluded.add_pid(pid),
            Action::KillCgroup { cgroup } | Action::KillTree { cgroup } => {
                self.excluded.add_cgroup(cgroup);
            }
            _ => {}
        }
        self.episode.passed_over += 1;
        if self.episode.passed_over > MAX_PASSED_OVER {
            self.finish(Outcome::Failed, at);
            return;
        }
        self.phase = Phase::Idle;
        self.decide_and_act(at);
    }

    pub(super) fn escalate(&mut self, at: Instant) {
        self.episode.escalations += 1;
        if self.episode.escalations > self.cfg.max_escalations {
            self.finish(Outcome::Failed, at);
            return;
        }
        self.phase = Phase::Idle;
        self.decide_and_act(at);
    }

    pub(super) fn finish(&mut self, outcome: Outcome, at: Instant) {
        self.episode.outcome = Some(outcome);
        self.episode.timings.ended = Some(at);
        // Restore temporary limits raised for this episode now.
        self.restore_limits(None);
        let acted = !matches!(
            outcome,
            Outcome::Resolved | Outcome::AvertedOnRecheck | Outcome::NoAction
        );
        self.phase = if acted {
            Phase::Cooldown {
                until: at + self.cfg.cooldown,
            }
        } else {
            Phase::Idle
        };
        // Off the hot path from here: the kill (if any) has been sent.
        self.episode.scope_path = self
            .episode
            .scope
            .and_then(|s| self.tree.path(s))
            .map(Path::to_path_buf);
        tracing::info!(
            episode = self.episode.id,
            outcome = ?outcome,
            handler = self.handler.name(),
            scope = %self.episode.scope_path.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default(),
            reason = self.episode.plan.reason(),
            "episode ended"
        );
        self.finished = Some(self.episode.clone());
    }
}
