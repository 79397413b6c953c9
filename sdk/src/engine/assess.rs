//! Judging an episode by progress, not by free memory.
//!
//! Between the first event and a decision the loop samples the scope every
//! `sample_interval`: while reclaim makes progress (`memory.current`
//! falling, `pgsteal` rising) it holds off, unless the *full* stall stays
//! above `full_stall_threshold` for `stall_sustain`. Pressure that goes
//! away ends the episode as resolved. After the decision, one more reading
//! (the re-check) may still find the pressure gone.
//!
//! **Reclaim that churns is not progress.** Rising `pgsteal` is exactly what
//! thrashing looks like: the file working set evicted and read back at once.
//! With the machine-wide early warning in the loop, reclaim counts as
//! progress only while refaults stay under [`CHURN_RATIO`] of the reclaimed
//! rate and anonymous memory is not growing while the headroom shrinks
//! ([`MachineSample::churning`](crate::events::MachineSample::churning)).
//! Episodes the machine source started are judged by the machine: over
//! once its signals are cleared (its hysteresis), at once on `critical`,
//! as soon as reclaim churns under `low` or thrashing, and on a PSI stall
//! alone only when the full stall is sustained (an allocation burst with
//! headroom to spare stalls too, and needs no kill).

use std::time::Instant;

use crate::events::Signals;

use super::host::Host;
use super::trigger::Trigger;
use super::types::{CgroupId, CgroupStats};
use super::{Engine, Outcome, Phase, Sample};

/// Refaults at this share of the reclaimed rate (or more) make reclaim
/// "churn" rather than free memory.
pub const CHURN_RATIO: f64 = 0.5;

impl<H: Host> Engine<H> {
    fn machine_churning(&self) -> bool {
        self.machine.is_some_and(|(_, s)| s.churning(CHURN_RATIO))
    }

    fn machine_episode(&self) -> bool {
        matches!(self.episode.trigger, Trigger::Machine { .. })
    }

    /// Reads the usage and the detail of `scope` into the tree; a failed
    /// usage read leaves its usage as it was, and is returned.
    fn read_scope(&mut self, scope: CgroupId) -> crate::Result<()> {
        let mut st = CgroupStats::default();
        let usage = self.host.read_usage(scope, &mut st);
        if usage.is_ok() {
            self.tree.set_usage(scope, &st);
        }
        self.read_detail(scope);
        usage
    }

    pub(super) fn sample(&mut self, scope: CgroupId, at: Instant) -> Option<Sample> {
        let _ = self.read_scope(scope);
        let st = self.tree.stats(scope)?;
        let full_us = match st.pressure {
            Some(p) => p.full.map(|f| f.total_us),
            None => {
                let _ = self.host.read_system(&mut self.snap.system);
                self.snap
                    .system
                    .pressure
                    .and_then(|p| p.full.map(|f| f.total_us))
            }
        };
        Some(Sample {
            at,
            current: st.current.unwrap_or(0),
            pgsteal: st.pgsteal,
            full_us,
        })
    }

    pub(super) fn start_episode(&mut self, trigger: Trigger, at: Instant) {
        let Some(scope) = self.scope_of(&trigger) else {
            return;
        };
        self.begin_episode(trigger, scope, at);
        self.decide_or_assess(trigger, scope, at, 0);
    }

    /// An urgent trigger (or a loop that is not progress-aware) goes
    /// straight to a decision; any other starts assessing `scope` from a
    /// fresh sample, with `events` already counted since it.
    fn decide_or_assess(&mut self, trigger: Trigger, scope: CgroupId, at: Instant, events: u32) {
        if !self.cfg.progress_aware || trigger.is_urgent() {
            self.decide_and_act(at);
            return;
        }
        let Some(s) = self.sample(scope, at) else {
            self.finish(Outcome::Resolved, at);
            return;
        };
        self.phase = Phase::Assessing {
            scope,
            first: s,
            last: s,
            stalled_since: None,
            events_since_sample: events,
        };
    }

    /// Whether `trigger`, arriving while a machine-triggered episode is
    /// still assessing, takes that episode over: a cgroup's limit warning
    /// (`memory.events`). The machine episode judges by the machine's
    /// signals alone, and with headroom to spare it may watch a stall for
    /// up to `assess_limit`; a cgroup at its limit meanwhile is an emergency
    /// of its own (measured: a stall from filling the machine held off a
    /// batch job's `memory.high` warning for 30 s). A PSI trigger does not
    /// take over: on the managed root it says what the machine's stall
    /// signal says already.
    pub(super) fn cgroup_takes_over(&self, trigger: &Trigger) -> bool {
        self.machine_episode() && matches!(trigger, Trigger::MemoryEvents { .. })
    }

    /// The episode (still assessing, nothing done) continues as `trigger`'s:
    /// its trigger and scope, judged by that trigger's rules from a fresh
    /// sample. One episode at a time still holds: it is the same episode.
    pub(super) fn retarget(&mut self, trigger: Trigger, at: Instant) {
        let Some(scope) = self.scope_of(&trigger) else {
            return;
        };
        tracing::info!(
            episode = self.episode.id,
            "a cgroup's own warning takes over the machine-wide episode"
        );
        self.episode.trigger = trigger;
        self.episode.scope = Some(scope);
        self.decide_or_assess(trigger, scope, at, 1);
    }

    fn stall_fraction(a: &Sample, b: &Sample) -> Option<f64> {
        let dt = b.at.checked_duration_since(a.at)?.as_micros() as f64;
        if dt <= 0.0 {
            return None;
        }
        let d = b.full_us?.checked_sub(a.full_us?)? as f64;
        Some((d / dt).min(1.0))
    }

    pub(super) fn assess(&mut self, at: Instant) {
        let Phase::Assessing {
            scope,
            first,
            last,
            stalled_since,
            events_since_sample,
        } = self.phase
        else {
            return;
        };
        if at.saturating_duration_since(last.at) < self.cfg.sample_interval / 4 {
            return;
        }
        let Some(now) = self.sample(scope, at) else {
            self.finish(Outcome::Resolved, at);
            return;
        };
        let stall = Self::stall_fraction(&last, &now).unwrap_or(0.0);
        let stalled = stall >= self.cfg.full_stall_threshold;
        let stalled_since = if stalled {
            stalled_since.or(Some(last.at))
        } else {
            None
        };
        let sustained = stalled_since
            .is_some_and(|s| at.saturating_duration_since(s) >= self.cfg.stall_sustain);
        if self.machine_episode() {
            self.assess_machine(at, scope, first, now, stalled_since, sustained);
            return;
        }
        let falling = now.current < last.current;
        let reclaiming = match (last.pgsteal, now.pgsteal) {
            (Some(a), Some(b)) => b > a && now.current <= last.current,
            _ => false,
        };
        let progress = (falling || reclaiming) && !self.machine_churning();
        let stats = self.tree.stats(scope).unwrap_or_default();
        let over_limit = stats
            .effective_limit()
            .is_some_and(|l| now.current as f64 >= l as f64 * self.cfg.resolved_usage_ratio);
        let pressured =
            over_limit || events_since_sample > 0 || stall >= self.cfg.full_stall_threshold / 2.0;
        tracing::debug!(
            stall,
            progress,
            pressured,
            current = now.current,
            "assessing"
        );
        if !pressured {
            self.stats.averted += 1;
            self.finish(Outcome::Resolved, at);
            return;
        }
        if !progress || sustained {
            self.decide_and_act(at);
            return;
        }
        if at.saturating_duration_since(first.at) >= self.cfg.assess_limit {
            self.stats.averted += 1;
            self.finish(Outcome::Resolved, at);
            return;
        }
        self.phase = Phase::Assessing {
            scope,
            first,
            last: now,
            stalled_since,
            events_since_sample: 0,
        };
    }

    /// An episode the machine source started: judged by the machine's
    /// signals and rates (see the module docs).
    fn assess_machine(
        &mut self,
        at: Instant,
        scope: CgroupId,
        first: Sample,
        now: Sample,
        stalled_since: Option<Instant>,
        sustained: bool,
    ) {
        let Some((active, m)) = self.machine else {
            self.stats.averted += 1;
            self.finish(Outcome::Resolved, at);
            return;
        };
        if active.is_empty() {
            tracing::info!(
                headroom = m.headroom,
                "machine signals cleared while assessing"
            );
            self.stats.averted += 1;
            self.finish(Outcome::Resolved, at);
            return;
        }
        // Reclaim of cold cache with stable anon is progress, even while
        // the headroom stays low; churn (working set refaulting, anon eating
        // the headroom) is not.
        let progress = !m.churning(CHURN_RATIO);
        tracing::debug!(
            signals = %active,
            progress,
            headroom = m.headroom,
            fill_rate = m.fill_rate,
            anon_rate = m.anon_rate,
            refault_rate = m.refault_rate,
            steal_rate = m.steal_rate,
            "assessing the machine"
        );
        // Stall alone (PSI) with headroom to spare is not an emergency: a
        // burst stalls too. It acts only when sustained, and then only if
        // reclaim is not making progress or the headroom is low: a long
        // stall while cold cache is reclaimed with the headroom to spare (a
        // backup streaming through the cache on a slow or busy host) is the
        // kernel doing its work, and no kill would shorten it. Low headroom
        // and thrashing act as soon as reclaim churns.
        let acute = active.intersects(Signals::LOW | Signals::CRITICAL | Signals::THRASHING);
        let stall_counts = sustained && (!progress || m.headroom < m.low);
        if active.contains(Signals::CRITICAL) || (acute && !progress) || stall_counts {
            self.decide_and_act(at);
            return;
        }
        if at.saturating_duration_since(first.at) >= self.cfg.assess_limit {
            self.stats.averted += 1;
            self.finish(Outcome::Resolved, at);
            return;
        }
        self.phase = Phase::Assessing {
            scope,
            first,
            last: now,
            stalled_since,
            events_since_sample: 0,
        };
    }

    /// The re-check between deciding and acting: true when the pressure is
    /// gone (usage well under the limit, or the full stall has eased; for a
    /// machine-triggered episode: the machine's signals cleared).
    pub(super) fn resolved_on_recheck(&mut self, scope: CgroupId) -> bool {
        if self.machine_episode() {
            return self.machine.is_some_and(|(active, _)| active.is_empty());
        }
        let Some(before) = self.tree.stats(scope) else {
            return true;
        };
        if self.read_scope(scope).is_err() {
            return false;
        }
        let Some(now) = self.tree.stats(scope) else {
            return true;
        };
        // Usage criterion: back well under the effective limit.
        if let (Some(limit), Some(cur)) = (now.effective_limit(), now.current) {
            if (cur as f64) < limit as f64 * self.cfg.resolved_usage_ratio {
                tracing::info!(current = cur, limit, "re-check: usage back under the limit");
                return true;
            }
            return false;
        }
        // Stall criterion (no limit on the scope): full stall since the
        // episode's last sample, if that is long enough ago to mean anything.
        let full = |s: &CgroupStats| s.pressure.and_then(|p| p.full).map(|f| f.total_us);
        let (Some(a), Some(b)) = (full(&before), full(&now)) else {
            return false;
        };
        let Phase::Assessing { last, .. } = self.phase else {
            return false;
        };
        let dt = self.host.now().saturating_duration_since(last.at);
        if dt < self.cfg.sample_interval / 2 {
            return false;
        }
        let frac = b.saturating_sub(a) as f64 / dt.as_micros().max(1) as f64;
        frac < self.cfg.full_stall_threshold / 2.0
    }
}
