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

mod act;
mod assess;
mod cgroups;
mod config;
mod decide;
mod episode;
mod guard;
mod handler;
mod handles;
mod host;
#[cfg(feature = "serde")]
pub mod incident;
mod incident_config;
mod kernel;
mod local_events;
mod plan;
mod prekill;
mod quiet;
mod restore;
mod runner;
mod runner_config;
mod snapshot;
mod tree;
mod trigger;
mod types;
mod warm;
mod watchdog;

pub use assess::CHURN_RATIO;
pub use config::{EngineConfig, INITIAL_CGROUPS};
pub use episode::{EngineStats, Episode, Outcome, Refusal, Timings, VictimRecord};
pub use guard::MIN_VICTIM_FREE;
pub use handler::Handler;
pub use host::{Act, Host, Observe, Victim};
pub use incident_config::IncidentConfig;
pub use kernel::KernelHost;
pub use plan::{Action, MAX_STEPS, Plan, PlanFull, REASON_MAX, ReasonWriter, Step};
pub use prekill::{PrekillHook, PrekillTarget};
pub use runner::{PsiConfig, Runner, RunnerConfig, Turn};
pub use snapshot::{Excluded, View};
pub use tree::{CgroupMeta, Class, Tree, XattrTrust};
pub use trigger::Trigger;
pub use types::{CgroupId, CgroupStats, ProcSample, SystemStats, XattrInfo};
pub use warm::WarmUp;
pub use watchdog::WatchdogConfig;

use std::path::Path;
use std::time::Instant;

use crate::error::Result;
use crate::events::{MachineSample, Signals};

use restore::Restores;
use snapshot::Snapshot;

/// One progress sample of the scope while assessing.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    current: u64,
    pgsteal: Option<u64>,
    full_us: Option<u64>,
}

/// A kill in flight: until the victim exits and its memory comes back.
#[derive(Debug, Clone, Copy)]
struct VictimWait {
    victim: Victim,
    deadline: Instant,
    /// When it was seen gone (memory may still be coming back).
    exited_at: Option<Instant>,
    /// The scope's `memory.current` when the kill was sent.
    scope_before: u64,
    /// What the victim was expected to free.
    footprint: u64,
}

/// What an acting step waits for before the next one runs.
#[derive(Debug, Clone, Copy)]
enum Wait {
    Victim(VictimWait),
    /// Pre-kill hooks; then the same step again (a kill) or the next one.
    Prekill {
        deadline: Instant,
        advance: bool,
    },
}

/// Where the state machine is: idle, assessing progress, acting on a
/// plan, or cooling down after an episode that acted.
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
    restores: Restores,
    hooks: prekill::Hooks,
    next_episode: u64,
    last_quiet_tick: Option<Instant>,
    /// When the acting phase was last advanced: the next acting tick is
    /// due `acting_tick` after it (an absolute time, stable across calls).
    acting_seen: Instant,
    /// The machine-wide early warning's latest judgement (signals firing,
    /// levels and rates), fed by the runner; `None` without that source.
    machine: Option<(Signals, MachineSample)>,
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
        let mut tree = Tree::with_capacity(cfg.initial_cgroups());
        let mut handler = handler;
        let root_id = tree.insert(root.to_path_buf(), None, Class::default());
        let x = host.attach(root_id, root)?;
        cgroups::classify(&mut *handler, &mut tree, root_id, x);
        Ok(Engine {
            snap: Snapshot::with_capacity(cfg.initial_cgroups(), cfg.max_processes),
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
            restores: Restores::default(),
            hooks: prekill::Hooks::default(),
            next_episode: 1,
            last_quiet_tick: None,
            acting_seen: Instant::now(),
            machine: None,
        })
    }

    /// Adds a hook run before kills (see [`PrekillHook`]).
    pub fn add_prekill_hook(&mut self, hook: Box<dyn PrekillHook>) {
        self.hooks.add(hook);
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
                wait: Some(Wait::Victim(VictimWait { victim, .. })),
                ..
            } => Some(victim),
            _ => None,
        }
    }

    /// True when an episode ended and its record waits for
    /// [`Engine::take_finished`].
    pub fn has_finished(&self) -> bool {
        self.finished.is_some()
    }

    /// Takes the record of the episode that just ended, if any.
    pub fn take_finished(&mut self) -> Option<Episode> {
        self.finished.take()
    }

    /// When the engine next wants [`Engine::on_tick`]; `None`: only events.
    pub fn next_wake(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Idle => None,
            Phase::Assessing { last, .. } => Some(last.at + self.cfg.sample_interval),
            Phase::Acting { wait, .. } => match wait {
                Some(Wait::Victim(VictimWait { deadline, .. }))
                | Some(Wait::Prekill { deadline, .. }) => {
                    Some((self.acting_seen + self.cfg.acting_tick).min(deadline))
                }
                None => Some(self.acting_seen),
            },
            Phase::Cooldown { until } => Some(until),
        };
        let restore = self.restores.next_due();
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
            Trigger::Machine { .. } | Trigger::Tick => self.root,
        }
    }

    /// Feeds the machine-wide early warning's latest judgement: the signals
    /// firing now and the sample behind them. Progress assessment and the
    /// re-check of machine-triggered episodes use it, and every episode's
    /// progress check uses its refault and anon rates to tell reclaim that
    /// frees from reclaim that churns.
    pub fn on_machine(&mut self, active: Signals, sample: MachineSample) {
        self.machine = Some((active, sample));
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
            Phase::Assessing { .. } if self.cgroup_takes_over(&trigger) => {
                self.retarget(trigger, at);
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
        self.restore_limits(Some(at));
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
}
