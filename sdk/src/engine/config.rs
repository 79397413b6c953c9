//! The loop's tuning, with defaults for a node daemon and one check.

use std::time::Duration;

use crate::error::{Error, Result};

/// Room the loop's per-cgroup tables get up front (at most `max_cgroups`);
/// they grow with the tree beyond it.
pub const INITIAL_CGROUPS: usize = 64;

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
    /// Most cgroups expected: caps the directory watch, and sizes the
    /// tables up to [`INITIAL_CGROUPS`]; past that they grow as cgroups are
    /// added (off the decision path), so a node pays for the cgroups it
    /// has, not for this bound.
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
    /// The room per-cgroup tables get up front: `max_cgroups`, at most
    /// [`INITIAL_CGROUPS`].
    pub fn initial_cgroups(&self) -> usize {
        self.max_cgroups.clamp(1, INITIAL_CGROUPS)
    }

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
