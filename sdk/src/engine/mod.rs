//! The reserve-aware handler loop: episodes, progress, re-check, escalation.
//!
//! Two decades of kernel OOM debate left a few lessons this module encodes:
//!
//! - **Decide, then re-check.** Between the event and the decision, reclaim
//!   may have caught up. Before acting, the loop re-reads the signal (usage
//!   against limits, stall since the last sample); if it resolved, the
//!   episode is recorded as averted and nothing happens.
//! - **Judge by progress, not free memory.** While reclaim makes progress
//!   (`pgsteal` rising, `memory.current` falling) the loop holds off, unless
//!   the *full* stall (no task making progress) stays above a threshold for
//!   a set time. A `max`/`oom` event means reclaim already failed: no wait.
//! - **One kill per episode.** After a kill the loop waits until the victim
//!   has exited and its memory has come back, with a deadline; pressure
//!   events meanwhile do not cause a second kill. A victim that does not die
//!   in time (stuck in D state) is excluded and the handler is asked again.
//! - **Userspace knows priorities; the kernel stays the fallback.** Handlers
//!   ([`Handler`]) hold the policy; the loop enforces what no policy may do
//!   (kill PID 1, kernel threads, itself, its own cgroup or an ancestor, or
//!   anything protected) and never removes `memory.max`.
//!
//! The [`Engine`] is a state machine over a [`Host`]: inputs are events and
//! ticks, outputs are effects through the host and the time it next wants a
//! tick (`None` when idle: no timer wakeups when nothing happens). The
//! runner ([`Runner`]) connects it to a [`crate::events::Watcher`] and the
//! real kernel; tests connect it to a fake host.

mod handler;
mod host;
#[cfg(feature = "serde")]
pub mod incident;
mod kernel;
mod plan;
mod runner;
mod snapshot;
mod tree;
mod watchdog;

#[cfg(any(test, feature = "testing"))]
pub mod fake;
#[cfg(test)]
mod tests;

pub use handler::Handler;
pub use host::{Host, Victim, XattrInfo};
pub use kernel::KernelHost;
pub use plan::{Action, MAX_STEPS, Plan, PlanFull, REASON_MAX, ReasonWriter, Step};
pub use runner::{PsiConfig, Runner, RunnerConfig, Turn};
pub use snapshot::{CgroupStats, Excluded, ProcSample, SystemStats, View};
pub use tree::{CgroupId, CgroupMeta, Class, Tree, XattrTrust};
pub use watchdog::WatchdogConfig;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cgroup::{Limit, MemoryEvents, MemoryStat};
use crate::error::{Error, Result};

use snapshot::Snapshot;

/// Why the loop is asking a handler.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Trigger {
    /// Counters of a cgroup's `memory.events` rose.
    MemoryEvents {
        /// The cgroup.
        cgroup: CgroupId,
        /// How much each counter rose.
        delta: MemoryEvents,
    },
    /// A PSI trigger fired on a cgroup (`None`: system-wide `/proc/pressure/memory`).
    Pressure {
        /// The cgroup, or `None` for the system.
        cgroup: Option<CgroupId>,
    },
    /// The previous victim of this episode did not die in time.
    Escalation {
        /// The episode's scope.
        cgroup: CgroupId,
        /// 1 for the first escalation.
        attempt: u32,
    },
    /// A quiet-time tick (for handlers that release throttles).
    Tick,
}

impl Trigger {
    /// True when reclaim has already failed (`max`/`oom` counters rose): no
    /// point waiting for progress.
    pub fn is_urgent(&self) -> bool {
        match self {
            Trigger::MemoryEvents { delta, .. } => {
                delta.oom.unwrap_or(0) > 0 || delta.max.unwrap_or(0) > 0
            }
            Trigger::Escalation { .. } => true,
            _ => false,
        }
    }
}

/// Tuning of the loop. The defaults suit a node daemon.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Log and record decisions, kill nothing, change nothing.
    pub dry_run: bool,
    /// Wait for reclaim progress before acting on `high` events and PSI.
    pub progress_aware: bool,
    /// How often to sample while assessing progress.
    pub sample_interval: Duration,
    /// Full-stall share of wall time (0–1) counted as "stalled".
    pub full_stall_threshold: f64,
    /// Act despite progress once stalled this long.
    pub stall_sustain: Duration,
    /// Give up assessing (as averted) after this long without a decision.
    pub assess_limit: Duration,
    /// Re-check the signal after deciding, before acting.
    pub recheck: bool,
    /// Usage below this share of the effective limit counts as resolved.
    pub resolved_usage_ratio: f64,
    /// Default time for a victim to exit and its memory to come back.
    pub kill_deadline: Duration,
    /// Share of the victim's footprint that must come back to count as "memory back".
    pub memory_back_ratio: f64,
    /// Tick while waiting for a victim.
    pub acting_tick: Duration,
    /// Quiet time after an episode before a new one starts.
    pub cooldown: Duration,
    /// Victims that may fail to die before the episode is given up.
    pub max_escalations: u32,
    /// Tick for handlers that want quiet ticks.
    pub quiet_tick: Duration,
    /// Pre-allocated room for cgroups.
    pub max_cgroups: usize,
    /// Pre-allocated room for process samples per decision.
    pub max_processes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            dry_run: false,
            progress_aware: true,
            sample_interval: Duration::from_millis(100),
            full_stall_threshold: 0.10,
            stall_sustain: Duration::from_secs(1),
            assess_limit: Duration::from_secs(30),
            recheck: true,
            resolved_usage_ratio: 0.90,
            kill_deadline: Duration::from_secs(5),
            memory_back_ratio: 0.5,
            acting_tick: Duration::from_millis(20),
            cooldown: Duration::from_millis(250),
            max_escalations: 3,
            quiet_tick: Duration::from_secs(1),
            max_cgroups: 1024,
            max_processes: 8192,
        }
    }
}

impl EngineConfig {
    /// Checks the values, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &'static str, reason: &str| {
            Err(Error::InvalidArgument {
                what,
                reason: reason.to_owned(),
            })
        };
        if !(0.0..=1.0).contains(&self.full_stall_threshold) {
            return bad("full_stall_threshold", "must be between 0 and 1");
        }
        if !(0.0..=1.0).contains(&self.resolved_usage_ratio) {
            return bad("resolved_usage_ratio", "must be between 0 and 1");
        }
        if !(0.0..=1.0).contains(&self.memory_back_ratio) {
            return bad("memory_back_ratio", "must be between 0 and 1");
        }
        if self.sample_interval.is_zero() || self.acting_tick.is_zero() || self.quiet_tick.is_zero()
        {
            return bad("tick intervals", "must be greater than zero");
        }
        if self.kill_deadline.is_zero() {
            return bad("kill_deadline", "must be greater than zero");
        }
        Ok(())
    }
}

/// How an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Outcome {
    /// Pressure resolved while assessing progress.
    Resolved,
    /// The re-check after deciding found the pressure gone.
    AvertedOnRecheck,
    /// The handler chose to do nothing.
    NoAction,
    /// Dry run: the plan was logged, nothing done.
    DryRun,
    /// The plan ran; victims exited and memory came back.
    Acted,
    /// The plan ran but memory did not come back in time.
    ActedMemoryNotBack,
    /// Every step was refused by the loop's protection rules.
    Refused,
    /// Victims did not die and escalations ran out, or an action failed.
    Failed,
}

/// One victim of an episode.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct VictimRecord {
    /// What was killed.
    pub victim: Victim,
    /// Its footprint when chosen (RSS + swap, or memory.current + swap).
    pub footprint: u64,
    /// It did not exit before its deadline.
    pub escalated: bool,
}

/// Timestamps of an episode (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// The first event of the episode was seen.
    pub event_seen: Option<Instant>,
    /// The (last) plan was decided.
    pub decided: Option<Instant>,
    /// The first kill signal was sent.
    pub signal_sent: Option<Instant>,
    /// The last victim exited.
    pub victim_exited: Option<Instant>,
    /// Memory came back.
    pub memory_back: Option<Instant>,
    /// The episode ended.
    pub ended: Option<Instant>,
}

impl Timings {
    /// Milliseconds from the event to `t`.
    pub fn ms_since_event(&self, t: Option<Instant>) -> Option<f64> {
        Some(t?.checked_duration_since(self.event_seen?)?.as_secs_f64() * 1000.0)
    }
}

/// A step the loop refused, and why.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Refusal {
    /// The step.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub action: Action,
    /// Why.
    pub reason: &'static str,
}

/// Everything about one episode, kept in pre-allocated storage while it
/// runs, handed to the runner when it ends (for logs and incident records).
#[derive(Debug, Clone)]
pub struct Episode {
    /// Sequence number.
    pub id: u64,
    /// The first trigger.
    pub trigger: Trigger,
    /// Hierarchy path of the scope, filled when the episode ends.
    pub scope_path: Option<PathBuf>,
    /// The scope.
    pub scope: Option<CgroupId>,
    /// How it ended.
    pub outcome: Option<Outcome>,
    /// The last plan decided.
    pub plan: Plan,
    /// Victims, in order.
    pub victims: [Option<VictimRecord>; 4],
    /// Refused steps.
    pub refusals: [Option<Refusal>; 4],
    /// Scope stats before acting.
    pub scope_before: CgroupStats,
    /// Scope `memory.stat` before acting.
    pub scope_stat_before: MemoryStat,
    /// System numbers before acting.
    pub system_before: SystemStats,
    /// Largest processes in scope before acting (by RSS + swap).
    pub top_processes: [Option<ProcSample>; 10],
    /// Timestamps.
    pub timings: Timings,
    /// Times the victim did not die in time.
    pub escalations: u32,
    /// The last error met while acting.
    pub last_error: Option<String>,
}

impl Episode {
    fn new() -> Self {
        Episode {
            id: 0,
            trigger: Trigger::Tick,
            scope_path: None,
            scope: None,
            outcome: None,
            plan: Plan::new(),
            victims: [None; 4],
            refusals: [None; 4],
            scope_before: CgroupStats::default(),
            scope_stat_before: MemoryStat {
                other: Vec::with_capacity(128),
                ..MemoryStat::default()
            },
            system_before: SystemStats::default(),
            top_processes: [None; 10],
            timings: Timings::default(),
            escalations: 0,
            last_error: None,
        }
    }

    fn start(&mut self, id: u64, trigger: Trigger, at: Instant) {
        self.id = id;
        self.trigger = trigger;
        self.scope_path = None;
        self.scope = None;
        self.outcome = None;
        self.plan.clear();
        self.victims = [None; 4];
        self.refusals = [None; 4];
        self.scope_before = CgroupStats::default();
        self.system_before = SystemStats::default();
        self.top_processes = [None; 10];
        self.timings = Timings {
            event_seen: Some(at),
            ..Timings::default()
        };
        self.escalations = 0;
        self.last_error = None;
    }

    /// True when the loop killed something (or would have, in a dry run).
    pub fn is_action(&self) -> bool {
        matches!(
            self.outcome,
            Some(
                Outcome::Acted
                    | Outcome::ActedMemoryNotBack
                    | Outcome::DryRun
                    | Outcome::Refused
                    | Outcome::Failed
            )
        ) || !self.plan.is_empty() && self.outcome != Some(Outcome::AvertedOnRecheck)
    }
}

/// Counters over the life of the loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct EngineStats {
    /// Episodes started.
    pub episodes: u64,
    /// Kills sent.
    pub kills: u64,
    /// Episodes averted (resolved while assessing or on re-check).
    pub averted: u64,
    /// Victims that did not die in time.
    pub escalations: u64,
    /// Steps refused by protection rules.
    pub refused: u64,
    /// Kernel OOM kills seen in `memory.events` (`oom_kill` deltas): each one
    /// is a time userspace was too late or chose not to act.
    pub kernel_oom_kills: u64,
    /// Events ignored because an episode was already acting.
    pub suppressed: u64,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    current: u64,
    pgsteal: Option<u64>,
    full_us: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
enum Wait {
    Victim {
        victim: Victim,
        deadline: Instant,
        exited_at: Option<Instant>,
        scope_before: u64,
        footprint: u64,
    },
    Diagnostics {
        since: Instant,
        deadline: Instant,
    },
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Idle,
    Assessing {
        scope: CgroupId,
        first: Sample,
        last: Sample,
        stalled_since: Option<Instant>,
        events_since_sample: u32,
    },
    Acting {
        scope: CgroupId,
        step: usize,
        wait: Option<Wait>,
    },
    Cooldown {
        until: Instant,
    },
}

#[derive(Debug, Clone, Copy)]
struct Restore {
    cgroup: CgroupId,
    limit: Limit,
    at: Instant,
}

/// The handler loop's state machine. See the module docs.
pub struct Engine<H: Host> {
    cfg: EngineConfig,
    host: H,
    handler: Box<dyn Handler>,
    tree: Tree,
    root: Option<CgroupId>,
    snap: Snapshot,
    plan: Plan,
    excluded: Excluded,
    phase: Phase,
    episode: Episode,
    finished: Option<Episode>,
    stats: EngineStats,
    restores: [Option<Restore>; 4],
    next_episode: u64,
    last_quiet_tick: Option<Instant>,
    /// When the acting phase was last advanced: the next acting tick is
    /// due `acting_tick` after it (an absolute time, stable across calls).
    acting_seen: Instant,
}

impl<H: Host> Engine<H> {
    /// A loop managing the subtree at hierarchy path `root`.
    pub fn new(
        cfg: EngineConfig,
        mut host: H,
        handler: Box<dyn Handler>,
        root: &Path,
    ) -> Result<Self> {
        cfg.validate()?;
        let mut tree = Tree::with_capacity(cfg.max_cgroups);
        let mut handler = handler;
        let root_id = tree.insert(root.to_path_buf(), None, Class::default());
        let x = host.attach(root_id, root)?;
        let class = handler.classify(&CgroupMeta {
            path: root,
            depth: 0,
            xattr_priority: x.priority,
            xattr_protected: x.protected,
            parent_class: None,
        });
        if let Some(n) = tree.node_mut(root_id) {
            n.class = class;
            n.xattr = x;
        }
        Ok(Engine {
            snap: Snapshot::with_capacity(cfg.max_cgroups, cfg.max_processes),
            cfg,
            host,
            handler,
            tree,
            root: Some(root_id),
            plan: Plan::new(),
            excluded: Excluded::default(),
            phase: Phase::Idle,
            episode: Episode::new(),
            finished: None,
            stats: EngineStats::default(),
            restores: [None; 4],
            next_episode: 1,
            last_quiet_tick: None,
            acting_seen: Instant::now(),
        })
    }

    /// The managed tree.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The managed root.
    pub fn root(&self) -> Option<CgroupId> {
        self.root
    }

    /// The host.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The host, mutably.
    pub fn host_mut(&mut self) -> &mut H {
        &mut self.host
    }

    /// Lifetime counters.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// The handler's name.
    pub fn handler_name(&self) -> &'static str {
        self.handler.name()
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// True while an episode is being assessed or acted on.
    pub fn in_episode(&self) -> bool {
        matches!(self.phase, Phase::Assessing { .. } | Phase::Acting { .. })
    }

    /// The victim being waited for, if any (the runner polls its fd).
    pub fn pending_victim(&self) -> Option<Victim> {
        match self.phase {
            Phase::Acting {
                wait: Some(Wait::Victim { victim, .. }),
                ..
            } => Some(victim),
            _ => None,
        }
    }

    /// Takes the record of the episode that just ended, if any.
    pub fn take_finished(&mut self) -> Option<Episode> {
        self.finished.take()
    }

    /// Adds a cgroup below a managed one (a new container). Off the hot path.
    pub fn add_cgroup(&mut self, path: &Path) -> Result<CgroupId> {
        if let Some(id) = self.tree.lookup(path) {
            return Ok(id);
        }
        let parent_path = path.parent().ok_or_else(|| Error::InvalidPath {
            path: path.to_owned(),
            reason: "has no parent in the managed tree",
        })?;
        let parent = match self.tree.lookup(parent_path) {
            Some(p) => p,
            None => self.add_cgroup(parent_path)?,
        };
        let id = self
            .tree
            .insert(path.to_path_buf(), Some(parent), Class::default());
        let x = match self.host.attach(id, path) {
            Ok(x) => x,
            Err(e) => {
                self.tree.remove(id);
                return Err(e);
            }
        };
        let parent_class = self.tree.class(parent);
        let depth = self.tree.node(id).map_or(0, |n| n.depth);
        let class = self.handler.classify(&CgroupMeta {
            path,
            depth,
            xattr_priority: x.priority,
            xattr_protected: x.protected,
            parent_class,
        });
        if let Some(n) = self.tree.node_mut(id) {
            n.class = class;
            n.xattr = x;
        }
        tracing::debug!(cgroup = %path.display(), priority = class.priority, protected = class.protected, "cgroup added");
        Ok(id)
    }

    /// Replaces the handler and tuning (configuration reload) and classifies
    /// every cgroup again with the new handler. An episode in progress
    /// finishes under the old plan.
    pub fn replace_handler(&mut self, handler: Box<dyn Handler>, cfg: EngineConfig) {
        // The old handler releases what it holds (throttles, freezes) first.
        self.shutdown();
        self.handler = handler;
        self.cfg = cfg;
        let mut ids: Vec<CgroupId> = self.tree.ids().collect();
        ids.sort_by_key(|id| self.tree.node(*id).map_or(0, |n| n.depth));
        for id in ids {
            let Some(n) = self.tree.node(id) else {
                continue;
            };
            let (path, depth, x, parent) = (n.path.clone(), n.depth, n.xattr, n.parent);
            let parent_class = parent.and_then(|p| self.tree.class(p));
            let class = self.handler.classify(&CgroupMeta {
                path: &path,
                depth,
                xattr_priority: x.priority,
                xattr_protected: x.protected,
                parent_class,
            });
            if let Some(n) = self.tree.node_mut(id) {
                n.class = class;
            }
        }
    }

    /// Removes a cgroup (and descendants) that disappeared.
    pub fn remove_cgroup(&mut self, path: &Path) {
        if let Some(id) = self.tree.lookup(path) {
            if Some(id) == self.root {
                return;
            }
            for gone in self.tree.remove(id) {
                self.host.detach(gone);
            }
        }
    }

    /// When the engine next wants [`Engine::on_tick`]; `None`: only events.
    pub fn next_wake(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Idle => None,
            Phase::Assessing { last, .. } => Some(last.at + self.cfg.sample_interval),
            Phase::Acting { wait, .. } => match wait {
                Some(Wait::Victim { deadline, .. }) | Some(Wait::Diagnostics { deadline, .. }) => {
                    Some((self.acting_seen + self.cfg.acting_tick).min(deadline))
                }
                None => Some(self.acting_seen),
            },
            Phase::Cooldown { until } => Some(until),
        };
        let restore = self.restores.iter().flatten().map(|r| r.at).min();
        let quiet = if self.handler.wants_ticks() && matches!(self.phase, Phase::Idle) {
            // The first quiet tick is due at once; then one per interval.
            Some(
                self.last_quiet_tick
                    .map_or_else(|| self.host.now(), |t| t + self.cfg.quiet_tick),
            )
        } else {
            None
        };
        [phase, restore, quiet].into_iter().flatten().min()
    }

    fn scope_of(&self, trigger: &Trigger) -> Option<CgroupId> {
        match *trigger {
            Trigger::MemoryEvents { cgroup, .. } | Trigger::Escalation { cgroup, .. } => {
                Some(cgroup)
            }
            Trigger::Pressure { cgroup } => cgroup.or(self.root),
            Trigger::Tick => self.root,
        }
    }

    /// Feeds an event. `at` is when it was seen (for timings).
    pub fn on_event(&mut self, trigger: Trigger, at: Instant) {
        if let Trigger::MemoryEvents { delta, cgroup } = trigger {
            let kills = delta.oom_kill.unwrap_or(0);
            if kills > 0 && Some(cgroup) == self.root {
                // Counted once, at the managed root (hierarchical counters).
                self.stats.kernel_oom_kills += kills;
            }
            if kills > 0 {
                tracing::warn!(
                    cgroup = %self.tree.path(cgroup).map(Path::display).map(|d| d.to_string()).unwrap_or_default(),
                    kills,
                    "the kernel OOM killer fired"
                );
            }
            let starts = delta.high.unwrap_or(0) + delta.max.unwrap_or(0) + delta.oom.unwrap_or(0);
            if starts == 0 {
                return;
            }
        }
        match self.phase {
            Phase::Acting { .. } => {
                self.stats.suppressed += 1;
            }
            Phase::Assessing {
                ref mut events_since_sample,
                ..
            } => {
                *events_since_sample += 1;
                if trigger.is_urgent() {
                    self.decide_and_act(at);
                } else {
                    self.assess(at);
                }
            }
            Phase::Cooldown { until } if at < until => {
                self.stats.suppressed += 1;
            }
            Phase::Idle | Phase::Cooldown { .. } => self.start_episode(trigger, at),
        }
    }

    /// Advances timers: progress samples, victim waits, cooldown, restores.
    pub fn on_tick(&mut self, at: Instant) {
        self.run_restores(at);
        match self.phase {
            Phase::Idle => self.quiet_tick(at),
            Phase::Assessing { .. } => self.assess(at),
            Phase::Acting { .. } => self.poll_acting(at),
            Phase::Cooldown { until } => {
                if at >= until {
                    self.phase = Phase::Idle;
                }
            }
        }
    }

    fn run_restores(&mut self, at: Instant) {
        for slot in 0..self.restores.len() {
            if let Some(r) = self.restores[slot] {
                if at >= r.at {
                    self.restores[slot] = None;
                    if let Err(e) = self.host.set_max(r.cgroup, r.limit) {
                        tracing::warn!(error = %e, "restoring memory.max failed");
                    }
                }
            }
        }
    }

    fn quiet_tick(&mut self, at: Instant) {
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
            self.stats.episodes += 1;
            self.episode.start(self.next_episode, Trigger::Tick, at);
            self.next_episode += 1;
            self.episode.scope = Some(root);
            self.excluded.clear();
            self.record_before(root);
            self.episode.plan.clone_from(&self.plan);
            self.filter_plan();
            let decided = self.host.now();
            self.episode.timings.decided = Some(decided);
            self.act_on_plan(root, at, decided, false);
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
        for slot in 0..self.restores.len() {
            if let Some(r) = self.restores[slot].take() {
                if let Err(e) = self.host.set_max(r.cgroup, r.limit) {
                    tracing::warn!(error = %e, "restoring memory.max failed");
                }
            }
        }
        let Some(root) = self.root else { return };
        self.snapshot(root);
        let trigger = Trigger::Tick;
        // A plan holds a few steps; ask until the handler has nothing left.
        for _ in 0..256 {
            self.plan.clear();
            self.ask_handler(&trigger, at, |h, view, plan| h.on_shutdown(view, plan));
            if self.plan.is_empty() {
                break;
            }
            self.apply_outside_episode(at, "shutdown");
        }
    }

    /// Lends the handler a [`View`] of the current snapshot and the plan.
    fn ask_handler(
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

    fn sample(&mut self, scope: CgroupId, at: Instant) -> Option<Sample> {
        let node = self.tree.node_mut(scope)?;
        let _ = self.host.read_usage(scope, &mut node.stats);
        let _ = self.host.read_detail(scope, &mut node.stats);
        let st = node.stats;
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

    fn start_episode(&mut self, trigger: Trigger, at: Instant) {
        let Some(scope) = self.scope_of(&trigger) else {
            return;
        };
        self.stats.episodes += 1;
        self.episode.start(self.next_episode, trigger, at);
        self.next_episode += 1;
        self.episode.scope = Some(scope);
        self.excluded.clear();
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
            events_since_sample: 0,
        };
    }

    fn stall_fraction(a: &Sample, b: &Sample) -> Option<f64> {
        let dt = b.at.checked_duration_since(a.at)?.as_micros() as f64;
        if dt <= 0.0 {
            return None;
        }
        let d = b.full_us?.checked_sub(a.full_us?)? as f64;
        Some((d / dt).min(1.0))
    }

    fn assess(&mut self, at: Instant) {
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
        let falling = now.current < last.current;
        let reclaiming = match (last.pgsteal, now.pgsteal) {
            (Some(a), Some(b)) => b > a && now.current <= last.current,
            _ => false,
        };
        let progress = falling || reclaiming;
        let stats = self.tree.stats(scope).copied().unwrap_or_default();
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
        let sustained = stalled_since
            .is_some_and(|s| at.saturating_duration_since(s) >= self.cfg.stall_sustain);
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

    /// Fills the snapshot for `scope`: usage of every cgroup in it, system numbers.
    fn snapshot(&mut self, scope: CgroupId) {
        self.snap.reset();
        self.snap.scope = Some(scope);
        for id in self.tree.ids() {
            if self.tree.is_within(id, scope)
                && self.snap.in_scope.len() < self.snap.in_scope.capacity()
            {
                self.snap.in_scope.push(id);
            }
        }
        let tree = &self.tree;
        self.snap
            .in_scope
            .sort_unstable_by_key(|id| tree.node(*id).map_or(0, |n| n.depth));
        for i in 0..self.snap.in_scope.len() {
            let id = self.snap.in_scope[i];
            if let Some(n) = self.tree.node_mut(id) {
                if let Err(e) = self.host.read_usage(id, &mut n.stats) {
                    if !e.is_gone() {
                        tracing::debug!(error = %e, "reading usage failed");
                    }
                    n.stats.current = None;
                }
            }
        }
        let _ = self.host.read_system(&mut self.snap.system);
    }

    fn decide_and_act(&mut self, at: Instant) {
        let Some(scope) = self.episode.scope else {
            return;
        };
        self.snapshot(scope);
        if let Some(n) = self.tree.node_mut(scope) {
            let _ = self.host.read_detail(scope, &mut n.stats);
        }
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
        for round in 0..4 {
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
        self.act_on_plan(scope, at, decided, recheck);
    }

    /// Runs the decided (and already filtered) plan in `self.plan`:
    /// re-check, dry run, or the steps.
    fn act_on_plan(&mut self, scope: CgroupId, at: Instant, decided: Instant, recheck: bool) {
        if self.plan.is_empty() {
            if self.episode.refusals.iter().any(Option::is_some) {
                self.stats.refused += 1;
                self.finish(Outcome::Refused, decided);
            } else {
                self.finish(Outcome::NoAction, decided);
            }
            return;
        }
        if recheck && self.resolved_on_recheck(scope, at) {
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
        self.phase = Phase::Acting {
            scope,
            step: 0,
            wait: None,
        };
        self.run_steps(self.host.now());
    }

    fn record_before(&mut self, scope: CgroupId) {
        if let Some(s) = self.tree.stats(scope) {
            self.episode.scope_before = *s;
        }
        self.episode.system_before = self.snap.system;
        if self
            .host
            .read_memory_stat(scope, &mut self.episode.scope_stat_before)
            .is_err()
        {
            self.episode.scope_stat_before.other.clear();
        }
        let mut top = [None; 10];
        for p in &self.snap.procs {
            let pos = top
                .iter()
                .position(|t: &Option<ProcSample>| t.is_none_or(|t| t.footprint() < p.footprint()));
            if let Some(i) = pos {
                top.copy_within(i..9, i + 1);
                top[i] = Some(*p);
            }
        }
        self.episode.top_processes = top;
    }

    /// Removes steps no policy may take. Returns nothing: refusals are recorded.
    fn filter_plan(&mut self) {
        let own_pid = self.host.own_pid();
        let mut kept = Plan::new();
        let _ = std::fmt::Write::write_str(&mut kept.reason_writer(), self.plan.reason());
        let plan = self.plan.clone();
        for step in plan.steps() {
            match self.refusal(&step.action, own_pid) {
                None => {
                    let _ = kept.push(step.action, step.deadline);
                }
                Some(reason) => {
                    tracing::warn!(action = step.action.name(), reason, "step refused");
                    if let Some(slot) = self.episode.refusals.iter_mut().find(|r| r.is_none()) {
                        *slot = Some(Refusal {
                            action: step.action,
                            reason,
                        });
                    }
                    // A refused process excludes that process only; a
                    // refused group action excludes the group.
                    match step.action {
                        Action::KillProcess { pid, .. }
                        | Action::CaptureDiagnostics { pid, .. } => self.excluded.add_pid(pid),
                        a => self.excluded.add_cgroup(a.cgroup()),
                    }
                }
            }
        }
        self.plan = kept;
    }

    fn refusal(&self, action: &Action, own_pid: i32) -> Option<&'static str> {
        let cg = action.cgroup();
        let Some(path) = self.tree.path(cg) else {
            return Some("cgroup is not in the managed tree (gone?)");
        };
        let own = self.host.own_cgroup();
        let contains_self = own.is_some_and(|o| o.starts_with(path));
        let touches = matches!(
            action,
            Action::KillCgroup { .. }
                | Action::KillTree { .. }
                | Action::Freeze { frozen: true, .. }
                | Action::SetHigh { .. }
        );
        if touches && contains_self {
            return Some("target contains oomkit's own cgroup");
        }
        if matches!(
            action,
            Action::KillCgroup { .. }
                | Action::KillTree { .. }
                | Action::Freeze { frozen: true, .. }
        ) && self.tree.subtree_protected(cg)
        {
            return Some("target is or contains a protected cgroup");
        }
        if let Action::KillProcess { pid, .. } | Action::CaptureDiagnostics { pid, .. } = *action {
            if pid <= 1 {
                return Some("never PID 1 or an invalid PID");
            }
            if pid == own_pid {
                return Some("never oomkit itself");
            }
            if own.is_some_and(|o| o == path) {
                return Some("process is in oomkit's own cgroup");
            }
            if self.tree.class(cg).is_some_and(|c| c.protected) {
                return Some("process is in a protected cgroup");
            }
            if let Some(p) = self.snap.procs.iter().find(|p| p.pid == pid) {
                if p.kernel_thread {
                    return Some("never a kernel thread");
                }
                if p.oom_score_adj == -1000 {
                    return Some("process has oom_score_adj -1000");
                }
            }
        }
        if let Action::RaiseMax { limit, .. } = *action {
            if limit == u64::MAX {
                return Some("memory.max is never removed");
            }
        }
        None
    }

    fn resolved_on_recheck(&mut self, scope: CgroupId, decided_from: Instant) -> bool {
        let Some(node) = self.tree.node_mut(scope) else {
            return true;
        };
        let before = node.stats;
        if self.host.read_usage(scope, &mut node.stats).is_err() {
            return false;
        }
        let _ = self.host.read_detail(scope, &mut node.stats);
        let now = node.stats;
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
        let _ = decided_from;
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

    fn apply_simple(&mut self, action: &Action, at: Instant) -> Result<()> {
        match *action {
            Action::SetHigh { cgroup, limit } => self.host.set_high(cgroup, limit),
            Action::Freeze { cgroup, frozen } => self.host.set_frozen(cgroup, frozen),
            Action::RaiseMax {
                cgroup,
                limit,
                duration,
            } => {
                let mut st = CgroupStats::default();
                self.host.read_detail(cgroup, &mut st)?;
                let old = st.max.unwrap_or(Limit::Max);
                if old.bytes().is_some_and(|b| b >= limit) {
                    return Ok(());
                }
                self.host.set_max(cgroup, Limit::Bytes(limit))?;
                if let Some(slot) = self.restores.iter_mut().find(|r| r.is_none()) {
                    *slot = Some(Restore {
                        cgroup,
                        limit: old,
                        at: at + duration,
                    });
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Runs plan steps from the current one until one must be waited for.
    fn run_steps(&mut self, at: Instant) {
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
            let deadline = at
                + if s.deadline.is_zero() {
                    self.cfg.kill_deadline
                } else {
                    s.deadline
                };
            let mut wait = None;
            let result = match s.action {
                Action::KillProcess { cgroup, pid } => {
                    let footprint = self
                        .snap
                        .procs
                        .iter()
                        .find(|p| p.pid == pid)
                        .map_or(0, ProcSample::footprint);
                    let r = self.host.kill_process(cgroup, pid);
                    self.start_kill(r, footprint, scope, deadline, &mut wait)
                }
                Action::KillCgroup { cgroup } => {
                    let footprint = self.tree.stats(cgroup).map_or(0, CgroupStats::footprint);
                    let r = self.host.kill_cgroup(cgroup);
                    self.start_kill(r, footprint, scope, deadline, &mut wait)
                }
                Action::KillTree { cgroup } => {
                    let target = self.oom_group_target(cgroup);
                    let footprint = self.tree.stats(target).map_or(0, CgroupStats::footprint);
                    let r = self.host.kill_cgroup(target);
                    self.start_kill(r, footprint, scope, deadline, &mut wait)
                }
                Action::CaptureDiagnostics {
                    cgroup,
                    pid,
                    signal,
                } => {
                    let r = self.host.signal(cgroup, pid, signal);
                    if r.is_ok() {
                        wait = Some(Wait::Diagnostics {
                            since: at,
                            deadline,
                        });
                    }
                    r
                }
                ref a => self.apply_simple(a, at),
            };
            tracing::info!(
                episode = self.episode.id,
                action = s.action.name(),
                ok = result.is_ok(),
                reason = self.plan.reason(),
                "action"
            );
            if let Err(e) = result {
                self.episode.last_error = Some(e.to_string());
                if s.action.is_kill() && !e.is_gone() {
                    self.escalate(at);
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

    fn start_kill(
        &mut self,
        r: Result<Victim>,
        footprint: u64,
        scope: CgroupId,
        deadline: Instant,
        wait: &mut Option<Wait>,
    ) -> Result<()> {
        let victim = r?;
        let sent = self.host.now();
        self.stats.kills += 1;
        self.episode.timings.signal_sent.get_or_insert(sent);
        if let Some(slot) = self.episode.victims.iter_mut().find(|v| v.is_none()) {
            *slot = Some(VictimRecord {
                victim,
                footprint,
                escalated: false,
            });
        }
        let scope_before = self.tree.stats(scope).and_then(|s| s.current).unwrap_or(0);
        *wait = Some(Wait::Victim {
            victim,
            deadline,
            exited_at: None,
            scope_before,
            footprint,
        });
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

    fn poll_acting(&mut self, at: Instant) {
        self.acting_seen = at;
        let Phase::Acting { scope, step, wait } = self.phase else {
            return;
        };
        match wait {
            None => self.run_steps(at),
            Some(Wait::Diagnostics { since, deadline }) => {
                if self.host.diagnostics_ready(since) || at >= deadline {
                    self.phase = Phase::Acting {
                        scope,
                        step: step + 1,
                        wait: None,
                    };
                    self.run_steps(at);
                }
            }
            Some(Wait::Victim {
                victim,
                deadline,
                exited_at,
                scope_before,
                footprint,
            }) => {
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
                        wait: Some(Wait::Victim {
                            victim,
                            deadline,
                            exited_at,
                            scope_before,
                            footprint,
                        }),
                    };
                    return;
                }
                if at >= deadline {
                    tracing::warn!(
                        episode = self.episode.id,
                        ?victim,
                        "victim did not exit in time; escalating"
                    );
                    if let Some(v) = self
                        .episode
                        .victims
                        .iter_mut()
                        .flatten()
                        .rev()
                        .find(|v| v.victim == victim)
                    {
                        v.escalated = true;
                    }
                    match victim {
                        Victim::Process { pid, .. } => self.excluded.add_pid(pid),
                        Victim::Cgroup { cgroup } => self.excluded.add_cgroup(cgroup),
                    }
                    self.host.release_victim(&victim);
                    self.stats.escalations += 1;
                    self.escalate(at);
                }
            }
        }
    }

    fn escalate(&mut self, at: Instant) {
        self.episode.escalations += 1;
        if self.episode.escalations > self.cfg.max_escalations {
            self.finish(Outcome::Failed, at);
            return;
        }
        self.phase = Phase::Idle;
        self.decide_and_act(at);
    }

    fn finish(&mut self, outcome: Outcome, at: Instant) {
        self.episode.outcome = Some(outcome);
        self.episode.timings.ended = Some(at);
        // Restore temporary limits raised for this episode now.
        for slot in 0..self.restores.len() {
            if let Some(r) = self.restores[slot].take() {
                if let Err(e) = self.host.set_max(r.cgroup, r.limit) {
                    tracing::warn!(error = %e, "restoring memory.max failed");
                }
            }
        }
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
