//! The thresholds and sampling bounds of the machine-wide early warning, and the
//! levels they are given in (bytes or a share of the machine).

use std::time::Duration;

/// A memory amount either absolute or relative to the machine's total
/// (`MemTotal` plus `SwapTotal`).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Level {
    /// Bytes.
    Bytes(u64),
    /// A share of the total, 0–1.
    Fraction(f64),
}

impl Level {
    /// The amount in bytes for a machine of `total` bytes.
    pub fn resolve(self, total: u64) -> u64 {
        match self {
            Level::Bytes(b) => b,
            Level::Fraction(f) => (total as f64 * f.clamp(0.0, 1.0)) as u64,
        }
    }

    fn valid(self) -> bool {
        match self {
            Level::Bytes(_) => true,
            Level::Fraction(f) => (0.0..=1.0).contains(&f),
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Level::Bytes(b) => write!(f, "{b} bytes"),
            Level::Fraction(x) => write!(f, "{:.1}%", x * 100.0),
        }
    }
}

/// Thresholds and sampling bounds of the machine-wide early warning. The
/// defaults are chosen from the calibration runs recorded in
/// `integration/README.md` (a 1 GiB swapless guest, four kernels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineConfig {
    /// Headroom under this, held for `min_duration`, fires [`Signals::LOW`](super::Signals::LOW).
    pub low: Level,
    /// Headroom under this fires [`Signals::CRITICAL`](super::Signals::CRITICAL) at once.
    pub critical: Level,
    /// Headroom must come back above this to clear `LOW`/`CRITICAL`
    /// (hysteresis; at least `low`).
    pub clear: Level,
    /// How long `LOW` and `THRASHING` must hold before they fire: a short
    /// dip does not count.
    pub min_duration: Duration,
    /// The fastest the headroom is assumed to shrink, bytes per second;
    /// sets how far ahead the next sample may be.
    pub max_fill_rate: u64,
    /// Shortest time between samples.
    pub min_interval: Duration,
    /// Longest time between samples.
    pub max_interval: Duration,
    /// Longest time between samples while the kernel reclaims, a signal is
    /// pending or one fires.
    pub busy_interval: Duration,
    /// Rates (fill, refault, reclaim) are measured over at least this long.
    pub rate_window: Duration,
    /// Refaults at least this share of reclaimed pages count as thrashing.
    pub thrash_ratio: f64,
    /// ... provided refaults bring back at least this much per second.
    pub thrash_min_rate: Level,
    /// PSI stall shares are measured over this window.
    pub stall_window: Duration,
    /// PSI `some` share of wall time (0–1) that counts as stalled.
    pub stall_some: f64,
    /// PSI `full` share of wall time (0–1) that counts as stalled.
    pub stall_full: f64,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            low: Level::Fraction(0.10),
            critical: Level::Fraction(0.05),
            clear: Level::Fraction(0.15),
            min_duration: Duration::from_millis(500),
            max_fill_rate: 1 << 30,
            min_interval: Duration::from_millis(5),
            max_interval: Duration::from_secs(10),
            busy_interval: Duration::from_millis(100),
            rate_window: Duration::from_millis(250),
            thrash_ratio: 0.5,
            thrash_min_rate: Level::Fraction(0.01),
            stall_window: Duration::from_millis(500),
            stall_some: 0.30,
            stall_full: 0.10,
        }
    }
}

impl MachineConfig {
    /// Checks the values, naming the bad one.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |what: &'static str, reason: String| {
            Err(crate::Error::InvalidArgument { what, reason })
        };
        for (what, l) in [
            ("low", self.low),
            ("critical", self.critical),
            ("clear", self.clear),
            ("thrash_min_rate", self.thrash_min_rate),
        ] {
            if !l.valid() {
                return bad(what, format!("{l} is not a share between 0 and 100%"));
            }
        }
        for (what, x) in [
            ("thrash_ratio", self.thrash_ratio),
            ("stall_some", self.stall_some),
            ("stall_full", self.stall_full),
        ] {
            if !(x > 0.0 && x <= 1.0) {
                return bad(what, format!("{x} is not a share in (0, 1]"));
            }
        }
        if self.min_interval < Duration::from_millis(1) {
            return bad("min_interval", "must be at least 1 ms".to_owned());
        }
        if self.max_interval < self.min_interval || self.busy_interval < self.min_interval {
            return bad(
                "max_interval",
                "max_interval and busy_interval must not be shorter than min_interval".to_owned(),
            );
        }
        if self.max_fill_rate == 0 {
            return bad("max_fill_rate", "must be more than 0".to_owned());
        }
        if self.stall_window.is_zero() || self.rate_window.is_zero() {
            return bad(
                "stall_window",
                "stall_window and rate_window must be more than 0".to_owned(),
            );
        }
        Ok(())
    }
}
