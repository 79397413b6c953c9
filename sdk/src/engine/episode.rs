//! What the loop remembers of one episode, and its lifetime counters.
//!
//! An episode runs from the first event to memory back (or giving up). Its
//! record lives in storage allocated once, with fixed room for victims,
//! refusals and the largest processes, so keeping it costs nothing on the
//! hot path; it is cloned for the runner only when the episode ends.

use std::path::PathBuf;
use std::time::Instant;

use crate::cgroup::MemoryStat;

use super::Engine;
use super::host::{Host, Victim};
use super::plan::{Action, Plan};
use super::trigger::Trigger;
use super::types::{CgroupId, CgroupStats, ProcSample, SystemStats};

/// Room for victims in one episode's record (the first kill and up to three
/// escalations with the default `max_escalations`).
pub(crate) const MAX_VICTIMS: usize = 4;
/// Room for refused steps in one episode's record.
pub(crate) const MAX_REFUSALS: usize = 4;
/// How many of the largest processes in scope an episode records.
pub(crate) const TOP_PROCESSES: usize = 10;
/// Room for `memory.stat` keys this crate does not name, reserved once.
const STAT_KEYS_ROOM: usize = 128;

/// How an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
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
    pub victims: [Option<VictimRecord>; MAX_VICTIMS],
    /// Refused steps.
    pub refusals: [Option<Refusal>; MAX_REFUSALS],
    /// Scope stats before acting.
    pub scope_before: CgroupStats,
    /// Scope `memory.stat` before acting.
    pub scope_stat_before: MemoryStat,
    /// System numbers before acting.
    pub system_before: SystemStats,
    /// Largest processes in scope before acting (by RSS + swap).
    pub top_processes: [Option<ProcSample>; TOP_PROCESSES],
    /// Timestamps.
    pub timings: Timings,
    /// Times the victim did not die in time.
    pub escalations: u32,
    /// The last error met while acting.
    pub last_error: Option<String>,
}

impl Episode {
    pub(super) fn new() -> Self {
        Episode {
            id: 0,
            trigger: Trigger::Tick,
            scope_path: None,
            scope: None,
            outcome: None,
            plan: Plan::new(),
            victims: [None; MAX_VICTIMS],
            refusals: [None; MAX_REFUSALS],
            scope_before: CgroupStats::default(),
            scope_stat_before: MemoryStat {
                other: Vec::with_capacity(STAT_KEYS_ROOM),
                ..MemoryStat::default()
            },
            system_before: SystemStats::default(),
            top_processes: [None; TOP_PROCESSES],
            timings: Timings::default(),
            escalations: 0,
            last_error: None,
        }
    }

    pub(super) fn start(&mut self, id: u64, trigger: Trigger, at: Instant) {
        self.id = id;
        self.trigger = trigger;
        self.scope_path = None;
        self.scope = None;
        self.outcome = None;
        self.plan.clear();
        self.victims = [None; MAX_VICTIMS];
        self.refusals = [None; MAX_REFUSALS];
        self.scope_before = CgroupStats::default();
        self.system_before = SystemStats::default();
        self.top_processes = [None; TOP_PROCESSES];
        self.timings = Timings {
            event_seen: Some(at),
            ..Timings::default()
        };
        self.escalations = 0;
        self.last_error = None;
    }

    /// Records a victim (beyond [`MAX_VICTIMS`], only the counters know).
    pub(super) fn add_victim(&mut self, v: VictimRecord) {
        if let Some(slot) = self.victims.iter_mut().find(|v| v.is_none()) {
            *slot = Some(v);
        }
    }

    /// Marks the latest record of `victim` as not having died in time.
    pub(super) fn mark_escalated(&mut self, victim: Victim) {
        if let Some(v) = self
            .victims
            .iter_mut()
            .flatten()
            .rev()
            .find(|v| v.victim == victim)
        {
            v.escalated = true;
        }
    }

    /// Records a refused step (beyond [`MAX_REFUSALS`], only the counters know).
    pub(super) fn add_refusal(&mut self, r: Refusal) {
        if let Some(slot) = self.refusals.iter_mut().find(|r| r.is_none()) {
            *slot = Some(r);
        }
    }

    /// Keeps the [`TOP_PROCESSES`] largest of `procs` by footprint, largest
    /// first (an insertion into fixed storage: no allocation).
    pub(super) fn record_top(&mut self, procs: &[ProcSample]) {
        let mut top = [None; TOP_PROCESSES];
        for p in procs {
            let pos = top
                .iter()
                .position(|t: &Option<ProcSample>| t.is_none_or(|t| t.footprint() < p.footprint()));
            if let Some(i) = pos {
                // Shift the smaller ones down one place; the last falls off.
                top.copy_within(i..TOP_PROCESSES - 1, i + 1);
                top[i] = Some(*p);
            }
        }
        self.top_processes = top;
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

impl<H: Host> Engine<H> {
    /// Starts a new episode record for `trigger` on `scope`.
    pub(super) fn begin_episode(&mut self, trigger: Trigger, scope: CgroupId, at: Instant) {
        self.stats.episodes += 1;
        self.episode.start(self.next_episode, trigger, at);
        self.next_episode += 1;
        self.episode.scope = Some(scope);
        self.excluded.clear();
    }
}
