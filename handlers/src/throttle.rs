//! The throttle handler: squeeze first, kill only if squeezing fails.
//!
//! A kill loses work; often a leaking or bursting workload only needs to be
//! kept from taking everyone else down with it. `memory.high` is the
//! kernel's own tool for that: above it, the cgroup's allocations are
//! throttled and reclaimed from, but nothing is killed. This handler, when
//! asked, picks the cgroup to squeeze (lowest tier, largest leaf, like
//! [`crate::priority`]) and lowers its `memory.high` to a fraction of its
//! current usage, one step per episode and never below a floor; at the
//! floor it can freeze the cgroup instead. On quiet ticks
//! ([`Handler::on_quiet_tick`]) it gives memory back step by step once the
//! cgroup stays below its throttle (or, for a frozen one, once the managed
//! root's pressure has fallen), ending at the original `memory.high`.
//!
//! If a throttle has not contained the cgroup within `kill_after` — it is
//! still pressing against its lowered limit, or frozen, when the loop asks
//! again — the handler kills it, then restores the original limit so a
//! restarted workload in the same cgroup does not start squeezed.
//!
//! State lives in a fixed-capacity table sized at construction; `decide`
//! and `on_quiet_tick` do not allocate. A throttle the loop refused or did
//! not apply (protected target, dry run, oomkit's own cgroup) is noticed on
//! the next look — the limit read back is not the one set — and forgotten,
//! so the handler never "releases" a limit it never lowered.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use oomkit::cgroup::Limit;
use oomkit::engine::{Action, CgroupId, CgroupMeta, Class, Handler, Plan, View};

use crate::classify::Classifier;
use crate::priority::{Granularity, PriorityKill, PriorityKillConfig, below_excluded};

/// Settings of [`Throttle`].
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleConfig {
    /// Each step sets `memory.high` to this fraction of current usage (0–1).
    pub step_fraction: f64,
    /// `memory.high` is never set below this, bytes.
    pub floor_bytes: u64,
    /// Minimum time between two steps (down or up) on one cgroup.
    pub step_interval: Duration,
    /// Freeze the cgroup once its `memory.high` is at the floor.
    pub freeze_at_floor: bool,
    /// Kill if the cgroup is still pressing its throttle this long after the first step.
    pub kill_after: Duration,
    /// A cgroup counts as contained (and is released a step) when its usage
    /// is below this fraction of its throttle (0–1).
    pub release_below: f64,
    /// A frozen cgroup is thawed once the managed root's `some` avg10
    /// pressure is below this (percent); with no pressure data, at once.
    pub thaw_below_avg10: f64,
    /// What the kill takes when throttling failed.
    pub kill: Granularity,
    /// How many cgroups can be throttled at once.
    pub max_throttled: usize,
    /// Victim choice settings (min size, kill deadline, scratch size).
    pub choice: PriorityKillConfig,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            step_fraction: 0.8,
            floor_bytes: 64 << 20,
            step_interval: Duration::from_secs(1),
            freeze_at_floor: false,
            kill_after: Duration::from_secs(30),
            release_below: 0.8,
            thaw_below_avg10: 5.0,
            kill: Granularity::Cgroup,
            max_throttled: 64,
            choice: PriorityKillConfig {
                granularity: Granularity::Cgroup,
                ..PriorityKillConfig::default()
            },
        }
    }
}

/// One throttled cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// The cgroup.
    pub cgroup: CgroupId,
    /// When the first step was planned.
    pub started: Instant,
    /// When the last step (down or up) was planned.
    pub last_step: Instant,
    /// `memory.high` before the first step.
    pub original: Limit,
    /// Usage when the first step was planned.
    pub usage_at_start: u64,
    /// The throttle last planned, bytes.
    pub limit: u64,
    /// Frozen by this handler.
    pub frozen: bool,
    /// Killed; the original limit is to be restored.
    pub killed: bool,
}

impl Throttled {
    /// The `memory.high` this handler expects to read back.
    pub fn expected_high(&self) -> Limit {
        if self.original.bytes() == Some(self.limit)
            || self.original == Limit::Max && self.limit == u64::MAX
        {
            self.original
        } else {
            Limit::Bytes(self.limit)
        }
    }
}

/// Plans `memory.high = limit` on `cgroup`.
fn push_high(plan: &mut Plan, cgroup: CgroupId, limit: Limit) {
    let _ = plan.push(Action::SetHigh { cgroup, limit }, Duration::ZERO);
}

/// Plans freezing (or thawing) `cgroup`.
fn push_freeze(plan: &mut Plan, cgroup: CgroupId, frozen: bool) {
    let _ = plan.push(Action::Freeze { cgroup, frozen }, Duration::ZERO);
}

/// Plans what undoes a throttle: thaw (if frozen), then the original `memory.high`.
fn push_restore(plan: &mut Plan, t: &Throttled) {
    if t.frozen {
        push_freeze(plan, t.cgroup, false);
    }
    push_high(plan, t.cgroup, t.original);
}

/// The throttle handler. See the module docs.
#[derive(Debug, Clone)]
pub struct Throttle {
    cfg: ThrottleConfig,
    chooser: PriorityKill,
    active: Vec<Throttled>,
}

impl Throttle {
    /// A handler classifying with `classifier`.
    pub fn new(cfg: ThrottleConfig, classifier: Classifier) -> Self {
        let mut choice = cfg.choice.clone();
        choice.granularity = Granularity::Cgroup;
        Throttle {
            chooser: PriorityKill::new(choice, classifier),
            active: Vec::with_capacity(cfg.max_throttled),
            cfg,
        }
    }

    /// [`Throttle::new`], reporting a failed reservation of its tables
    /// (`max_cgroups`, `max_throttled`) instead of aborting the process.
    pub fn try_new(
        cfg: ThrottleConfig,
        classifier: Classifier,
    ) -> Result<Self, std::collections::TryReserveError> {
        let mut choice = cfg.choice.clone();
        choice.granularity = Granularity::Cgroup;
        let mut active = Vec::new();
        active.try_reserve_exact(cfg.max_throttled)?;
        Ok(Throttle {
            chooser: PriorityKill::try_new(choice, classifier)?,
            active,
            cfg,
        })
    }

    /// The cgroups currently throttled.
    pub fn throttled(&self) -> &[Throttled] {
        &self.active
    }

    fn find(&self, id: CgroupId) -> Option<usize> {
        self.active.iter().position(|t| t.cgroup == id)
    }

    /// False when the limit read back is not the one planned (the step was
    /// refused, failed, or this is a dry run): the entry is stale.
    fn applied(view: &mut View<'_>, t: &Throttled) -> bool {
        match view.detail(t.cgroup) {
            Some(st) => t.frozen || st.high.unwrap_or(Limit::Max) == t.expected_high(),
            None => false,
        }
    }

    fn step_down(&self, current: u64, from: u64) -> u64 {
        let target = (current.min(from) as f64 * self.cfg.step_fraction) as u64;
        target.max(self.cfg.floor_bytes)
    }

    /// True when the throttled cgroup no longer presses against its limit.
    fn contained(&self, view: &View<'_>, t: &Throttled) -> bool {
        if t.frozen {
            return false;
        }
        view.stats(t.cgroup)
            .and_then(|s| s.current)
            .is_some_and(|cur| (cur as f64) < t.limit as f64 * self.cfg.release_below)
    }

    fn kill(&mut self, view: &mut View<'_>, i: usize, plan: &mut Plan) -> bool {
        let t = self.active[i];
        let target = t.cgroup;
        let granularity = self.cfg.kill;
        let choice = self
            .chooser
            .choose_where(view, granularity, |v, id| v.is_within(id, target));
        let Some(choice) = choice else {
            return false;
        };
        self.chooser.plan_kill_as(view, &choice, granularity, plan);
        if plan.is_empty() {
            return false;
        }
        // Restore after the victim is gone, so a restart is not born squeezed.
        push_restore(plan, &t);
        let _ = write!(
            plan.reason_writer(),
            "; throttled {} s without containing it",
            view.now().saturating_duration_since(t.started).as_secs()
        );
        self.active[i].killed = true;
        true
    }
    /// Forgets stale entries in scope: gone, or the step was refused or not applied.
    fn forget_stale(&mut self, view: &mut View<'_>) {
        let scope = view.scope();
        let mut i = 0;
        while i < self.active.len() {
            let t = self.active[i];
            let in_scope = scope.is_some_and(|s| view.is_within(t.cgroup, s));
            let stale = !t.killed
                && (view.stats(t.cgroup).is_none() || in_scope && !Self::applied(view, &t));
            if stale {
                self.active.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Plans a kill for the first throttle in scope past `kill_after` that has not contained
    /// its cgroup; true if it did.
    fn kill_overdue(&mut self, view: &mut View<'_>, plan: &mut Plan) -> bool {
        let now = view.now();
        let scope = view.scope();
        for i in 0..self.active.len() {
            let t = self.active[i];
            let in_scope = scope.is_some_and(|s| view.is_within(t.cgroup, s));
            if !in_scope || t.killed || below_excluded(view, t.cgroup) {
                continue;
            }
            if now.saturating_duration_since(t.started) >= self.cfg.kill_after
                && !self.contained(view, &t)
                && self.kill(view, i, plan)
            {
                return true;
            }
        }
        false
    }

    /// The lowest-tier, largest cgroup that can still be squeezed.
    fn squeeze_target(&mut self, view: &mut View<'_>) -> Option<CgroupId> {
        let floor = self.cfg.floor_bytes;
        let freeze = self.cfg.freeze_at_floor;
        let fraction = self.cfg.step_fraction;
        let active = &self.active;
        // Nothing more to do on a cgroup already frozen or killed, or at the
        // floor with freezing off; a new cgroup below the floor cannot be squeezed.
        let squeezable = |v: &View<'_>, id: CgroupId| {
            if let Some(t) = active.iter().find(|t| t.cgroup == id) {
                return !(t.killed || t.frozen || t.limit <= floor && !freeze);
            }
            let cur = v.stats(id).and_then(|s| s.current).unwrap_or(0);
            freeze || (cur as f64 * fraction) as u64 > floor
        };
        self.chooser
            .choose_where(view, Granularity::Cgroup, squeezable)
            .map(|c| c.cgroup)
    }

    /// The next step on throttle `i` (usage `current`): a lower `memory.high`, else a freeze at
    /// the floor. False when it is too soon or nothing is left to do.
    fn step(&mut self, view: &View<'_>, i: usize, current: u64, plan: &mut Plan) -> bool {
        let now = view.now();
        let t = self.active[i];
        if now.saturating_duration_since(t.last_step) < self.cfg.step_interval {
            return false;
        }
        let next = self.step_down(current, t.limit);
        if next < t.limit {
            push_high(plan, t.cgroup, Limit::Bytes(next));
            self.active[i].limit = next;
        } else if self.cfg.freeze_at_floor && !t.frozen {
            push_freeze(plan, t.cgroup, true);
            self.active[i].frozen = true;
        } else {
            return false;
        }
        self.active[i].last_step = now;
        let _ = write!(
            plan.reason_writer(),
            "throttle step: memory.high {} MiB",
            self.active[i].limit >> 20
        );
        true
    }

    /// Starts throttling `id` (usage `current`) with its first step. False when the table is
    /// full (the kernel's limits stay the backstop) or nothing can be lowered or frozen.
    fn start(&mut self, view: &mut View<'_>, id: CgroupId, current: u64, plan: &mut Plan) -> bool {
        if self.active.len() == self.active.capacity() {
            return false;
        }
        let now = view.now();
        let original = view.detail(id).and_then(|s| s.high).unwrap_or(Limit::Max);
        let from = original.bytes().unwrap_or(u64::MAX);
        let next = self.step_down(current, from);
        let lowered = next < current.min(from);
        let frozen = !lowered && self.cfg.freeze_at_floor;
        if lowered {
            push_high(plan, id, Limit::Bytes(next));
        } else if frozen {
            push_freeze(plan, id, true);
        } else {
            return false;
        }
        self.active.push(Throttled {
            cgroup: id,
            started: now,
            last_step: now,
            original,
            usage_at_start: current,
            limit: if lowered { next } else { from },
            frozen,
            killed: false,
        });
        let _ = write!(
            plan.reason_writer(),
            "throttle start: memory.high {} MiB (usage {} MiB) on ",
            next >> 20,
            current >> 20
        );
        true
    }

    /// One quiet tick for throttle `i`: thaw when the root is calm, kill when it was throttled
    /// too long without containing it, else raise its limit a step (or give the original
    /// back).
    fn release_step(
        &mut self,
        view: &mut View<'_>,
        i: usize,
        root_calm: bool,
        plan: &mut Plan,
    ) -> Release {
        let now = view.now();
        let t = self.active[i];
        if view.stats(t.cgroup).is_none() {
            return Release::Drop;
        }
        if t.killed {
            push_restore(plan, &t);
            return Release::Drop;
        }
        if !Self::applied(view, &t) {
            return Release::Drop;
        }
        if now.saturating_duration_since(t.last_step) < self.cfg.step_interval {
            return Release::Keep;
        }
        if t.frozen {
            if root_calm {
                push_freeze(plan, t.cgroup, false);
                self.active[i].frozen = false;
                self.active[i].last_step = now;
            }
            return Release::Keep;
        }
        if !self.contained(view, &t) {
            // Throttled too long without containing it: the loop runs a
            // kill planned here as an episode of its own (a reclaiming
            // cgroup looks like progress, so `decide` may never be asked).
            if now.saturating_duration_since(t.started) >= self.cfg.kill_after
                && plan.is_empty()
                && self.kill(view, i, plan)
            {
                return Release::Killed;
            }
            return Release::Keep;
        }
        let up = (t.limit as f64 / self.cfg.step_fraction) as u64;
        if up >= t.usage_at_start || t.original.bytes().is_some_and(|o| up >= o) {
            push_high(plan, t.cgroup, t.original);
            return Release::Drop;
        }
        push_high(plan, t.cgroup, Limit::Bytes(up));
        self.active[i].limit = up;
        self.active[i].last_step = now;
        Release::Keep
    }
}

/// What a quiet tick did with one throttle.
enum Release {
    /// Still throttled: look at the next one.
    Keep,
    /// Released or gone: forget it.
    Drop,
    /// A kill was planned: the tick ends.
    Killed,
}

impl Handler for Throttle {
    fn name(&self) -> &'static str {
        "throttle"
    }

    fn classify(&mut self, meta: &CgroupMeta<'_>) -> Class {
        self.chooser.classifier_mut().classify(meta)
    }

    fn decide(&mut self, view: &mut View<'_>, plan: &mut Plan) {
        self.forget_stale(view);
        // 1. A throttle past its deadline that has not contained its cgroup: kill.
        if self.kill_overdue(view, plan) {
            return;
        }
        // 2. Squeeze the lowest-tier, largest leaf that can still be squeezed.
        let Some(id) = self.squeeze_target(view) else {
            return;
        };
        let current = view.stats(id).and_then(|s| s.current).unwrap_or(0);
        let acted = match self.find(id) {
            Some(i) => self.step(view, i, current, plan),
            None => self.start(view, id, current, plan),
        };
        if acted {
            if let Some(p) = view.path(id) {
                let _ = write!(plan.reason_writer(), "{}", p.display());
            }
        }
    }

    fn on_quiet_tick(&mut self, view: &mut View<'_>, plan: &mut Plan) {
        let root_calm = match view
            .scope()
            .and_then(|s| view.detail(s))
            .and_then(|s| s.pressure)
        {
            Some(p) => p.some.avg10 < self.cfg.thaw_below_avg10,
            None => true,
        };
        let mut i = 0;
        while i < self.active.len() {
            if plan.len() + 2 > oomkit::engine::MAX_STEPS {
                break;
            }
            match self.release_step(view, i, root_calm, plan) {
                Release::Keep => i += 1,
                Release::Drop => {
                    self.active.swap_remove(i);
                }
                Release::Killed => return,
            }
        }
        if !plan.is_empty() {
            plan.set_reason("throttle release");
        }
    }

    fn on_shutdown(&mut self, _view: &mut View<'_>, plan: &mut Plan) {
        // Give every throttled cgroup its original limit back (and thaw),
        // as many as fit in one plan; the loop asks again until none is left.
        while let Some(t) = self.active.last().copied() {
            let need = if t.frozen { 2 } else { 1 };
            if plan.len() + need > oomkit::engine::MAX_STEPS {
                break;
            }
            push_restore(plan, &t);
            self.active.pop();
        }
        if !plan.is_empty() {
            plan.set_reason("throttle released on shutdown");
        }
    }

    fn wants_ticks(&self) -> bool {
        !self.active.is_empty()
    }
}
