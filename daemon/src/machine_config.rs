//! `[signals.machine]`: the machine-wide early warning in the daemon's config, with its own
//! validation.
//!
//! Why a section of its own: on a swapless machine with no `memory.high` anywhere (a default
//! Kubernetes node, most hosts) no cgroup event comes before the kernel's OOM killer, so this
//! source is what lets the daemon act first. It is on by default; the thresholds are the SDK's
//! defaults ([`oomkit::events::MachineConfig`]), chosen from the calibration runs of
//! `integration/src/tests/machine.rs`.
//!
//! ```toml
//! [signals.machine]
//! enabled = true
//! low = "10%"               # headroom (MemAvailable + free swap) under this for min_duration_ms
//! critical = "5%"           # ... or under this at once
//! clear = "15%"             # back above this: the episode's signal is gone (hysteresis)
//! min_duration_ms = 500
//! max_fill_rate = "1GiB"    # per second: how far ahead the next sample may be
//! thrash_ratio = 0.5        # refaults / reclaimed pages that count as thrashing
//! psi_window_ms = 1000      # PSI triggers on /proc/pressure/memory that wake the source early
//! ```

use std::time::Duration;

use oomkit::events::{Level, MachineConfig, MachineWatchConfig, PsiThreshold};
use serde::Deserialize;

use crate::config::parse_size;

/// A memory level: `"90%"` of the machine, or a size (`"512MiB"`, a byte count).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelSetting(pub Level);

impl<'de> Deserialize<'de> for LevelSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(LevelSetting(Level::Bytes(n))),
            Raw::S(s) => parse_level(&s)
                .map(LevelSetting)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"90%"`, `"12.5%"` or a size.
pub fn parse_level(s: &str) -> Result<Level, String> {
    let t = s.trim();
    match t.strip_suffix('%') {
        Some(p) => {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("`{s}` is not a percentage (e.g. \"10%\")"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("`{s}` is not between 0% and 100%"));
            }
            Ok(Level::Fraction(v / 100.0))
        }
        None => parse_size(t).map(Level::Bytes),
    }
}

/// `[signals.machine]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MachineSection {
    /// Watch the machine's headroom, refaults and PSI.
    pub enabled: bool,
    /// Headroom under this, held `min_duration_ms`, is an emergency.
    pub low: LevelSetting,
    /// Headroom under this is an emergency at once.
    pub critical: LevelSetting,
    /// Headroom back above this clears the signal.
    pub clear: LevelSetting,
    /// How long `low` and thrashing must hold.
    #[serde(deserialize_with = "crate::config::millis")]
    pub min_duration_ms: u64,
    /// Assumed fastest shrink of the headroom, per second.
    pub max_fill_rate: LevelSetting,
    /// Refaults at least this share of reclaimed pages are thrashing.
    pub thrash_ratio: f64,
    /// Window of the two PSI triggers (`some` 10 %, `full` 5 % of it) that wake the source; 0:
    /// none. Under 2000 ms needs `CAP_SYS_RESOURCE` (the daemon runs as root).
    #[serde(deserialize_with = "crate::config::millis")]
    pub psi_window_ms: u64,
}

impl Default for MachineSection {
    fn default() -> Self {
        let d = MachineConfig::default();
        MachineSection {
            enabled: true,
            low: LevelSetting(d.low),
            critical: LevelSetting(d.critical),
            clear: LevelSetting(d.clear),
            min_duration_ms: u64::try_from(d.min_duration.as_millis()).unwrap_or(500),
            max_fill_rate: LevelSetting(Level::Bytes(d.max_fill_rate)),
            thrash_ratio: d.thrash_ratio,
            psi_window_ms: 1000,
        }
    }
}

impl MachineSection {
    /// The SDK source's configuration (`None` when disabled).
    pub fn watch_config(&self) -> Option<MachineWatchConfig> {
        if !self.enabled {
            return None;
        }
        let monitor = MachineConfig {
            low: self.low.0,
            critical: self.critical.0,
            clear: self.clear.0,
            min_duration: Duration::from_millis(self.min_duration_ms),
            max_fill_rate: match self.max_fill_rate.0 {
                Level::Bytes(b) => b,
                // A share of the machine per second; resolved against 1 TiB is meaningless,
                // validation rejects it.
                Level::Fraction(_) => MachineConfig::default().max_fill_rate,
            },
            thrash_ratio: self.thrash_ratio,
            ..MachineConfig::default()
        };
        let triggers = if self.psi_window_ms == 0 {
            Vec::new()
        } else {
            let mut w = Duration::from_millis(self.psi_window_ms);
            if !oomkit::events::has_cap_sys_resource() {
                // Without CAP_SYS_RESOURCE the kernel (6.5+, and stable
                // backports) takes only multiples of 2 s.
                w = Duration::from_millis(self.psi_window_ms.div_ceil(2000) * 2000);
            }
            vec![PsiThreshold::some(w / 10, w), PsiThreshold::full(w / 20, w)]
        };
        Some(MachineWatchConfig {
            monitor,
            triggers,
            ..Default::default()
        })
    }
}

/// Checks `[signals.machine]`: problems as (dotted key, message), and warnings.
/// `other_sources` says whether `memory.events` or a PSI trigger is configured, for the warning
/// that nothing can fire before the kernel.
pub fn validate(
    machine: &MachineSection,
    other_sources: bool,
    bad: &mut Vec<(String, String)>,
    warn: &mut Vec<String>,
) {
    let mut err = |k: &str, m: String| bad.push((format!("signals.machine.{k}"), m));
    if machine.enabled {
        if matches!(machine.max_fill_rate.0, Level::Fraction(_)) {
            err(
                "max_fill_rate",
                "must be a size per second (e.g. \"1GiB\"), not a percentage".into(),
            );
        }
        if machine.psi_window_ms != 0 && !(500..=10_000).contains(&machine.psi_window_ms) {
            err(
                "psi_window_ms",
                format!(
                    "must be 0 (no trigger) or between 500 and 10000 (got {})",
                    machine.psi_window_ms
                ),
            );
        }
        check_levels(machine, &mut err);
        warn_enabled(machine, warn);
    } else if !other_sources {
        warn.push(
            "signals.machine is disabled and neither memory.events nor a PSI trigger can fire \
             before the kernel on a machine without swap or memory.high: the kernel's OOM \
             killer will act first"
                .into(),
        );
    } else {
        warn.push(
            "signals.machine is disabled: without swap and without a memory.high somewhere, no \
             cgroup event comes before the kernel's OOM killer"
                .into(),
        );
    }
}

/// The headroom levels as one watch configuration: each valid, and (when all are fractions,
/// which order the same on every machine) `critical <= low <= clear`.
fn check_levels(machine: &MachineSection, err: &mut impl FnMut(&str, String)) {
    if let Some(cfg) = machine.watch_config() {
        if let Err(e) = cfg.monitor.validate() {
            err("thresholds", e.to_string());
        }
        let total = 1u64 << 40;
        let (low, crit, clear) = (
            machine.low.0.resolve(total),
            machine.critical.0.resolve(total),
            machine.clear.0.resolve(total),
        );
        let all_fractions = [machine.low.0, machine.critical.0, machine.clear.0]
            .iter()
            .all(|l| matches!(l, Level::Fraction(_)));
        if all_fractions && (crit > low || clear < low) {
            err(
                "low",
                format!(
                    "levels must order critical <= low <= clear (got critical {}, low {}, clear {})",
                    machine.critical.0, machine.low.0, machine.clear.0
                ),
            );
        }
    }
}

/// Settings that are valid but leave the machine signals unable to warn in time.
fn warn_enabled(machine: &MachineSection, warn: &mut Vec<String>) {
    let zero = |l: Level| matches!(l, Level::Bytes(0)) || l == Level::Fraction(0.0);
    if zero(machine.low.0) && zero(machine.critical.0) {
        warn.push(format!(
            "signals.machine.low and signals.machine.critical are 0: the headroom signals \
             never fire, so a leak of anonymous memory is seen only {}; the kernel's OOM \
             killer will usually act first",
            if machine.psi_window_ms == 0 {
                "if it thrashes the file working set (signals.machine.psi_window_ms is 0 too)"
            } else {
                "by the PSI triggers, in its last seconds"
            }
        ));
    }
    if machine.min_duration_ms > 5000 {
        warn.push(format!(
            "signals.machine.min_duration_ms = {}: a leak of 20 MiB/s crosses from `low` to \
             the kernel's OOM kill in a few seconds on a small machine; the warning may come \
             too late",
            machine.min_duration_ms
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse() {
        assert_eq!(parse_level("90%").unwrap(), Level::Fraction(0.9));
        assert_eq!(parse_level(" 12.5 % ").unwrap(), Level::Fraction(0.125));
        assert_eq!(parse_level("512MiB").unwrap(), Level::Bytes(512 << 20));
        assert!(parse_level("150%").unwrap_err().contains("150%"));
        assert!(parse_level("lots").is_err());
    }

    #[test]
    fn defaults_are_the_sdk_defaults_and_valid() {
        let m = MachineSection::default();
        let c = m.watch_config().unwrap();
        assert_eq!(c.monitor, MachineConfig::default());
        assert_eq!(c.triggers.len(), 2);
        let (mut bad, mut warn) = (Vec::new(), Vec::new());
        validate(&m, true, &mut bad, &mut warn);
        assert!(bad.is_empty() && warn.is_empty(), "{bad:?} {warn:?}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let m = MachineSection {
            low: LevelSetting(Level::Fraction(0.02)),
            psi_window_ms: 100,
            max_fill_rate: LevelSetting(Level::Fraction(0.5)),
            ..Default::default()
        };
        let (mut bad, mut warn) = (Vec::new(), Vec::new());
        validate(&m, true, &mut bad, &mut warn);
        let keys: Vec<_> = bad.iter().map(|b| b.0.as_str()).collect();
        for k in [
            "signals.machine.low",
            "signals.machine.psi_window_ms",
            "signals.machine.max_fill_rate",
        ] {
            assert!(keys.contains(&k), "{k} missing in {bad:?}");
        }
    }

    #[test]
    fn nothing_can_fire_before_the_kernel_is_a_warning() {
        let off = MachineSection {
            enabled: false,
            ..Default::default()
        };
        let (mut bad, mut warn) = (Vec::new(), Vec::new());
        validate(&off, false, &mut bad, &mut warn);
        assert!(bad.is_empty());
        assert!(
            warn[0].contains("kernel's OOM killer will act first"),
            "{warn:?}"
        );
        let (mut bad, mut warn) = (Vec::new(), Vec::new());
        validate(&off, true, &mut bad, &mut warn);
        assert!(warn[0].contains("no cgroup event comes before"), "{warn:?}");
        // Enabled, but with its headroom levels at 0: only thrashing (and PSI) can fire.
        let blind = MachineSection {
            low: LevelSetting(Level::Fraction(0.0)),
            critical: LevelSetting(Level::Bytes(0)),
            clear: LevelSetting(Level::Fraction(0.0)),
            psi_window_ms: 0,
            ..Default::default()
        };
        let (mut bad, mut warn) = (Vec::new(), Vec::new());
        validate(&blind, true, &mut bad, &mut warn);
        assert!(bad.is_empty(), "{bad:?}");
        assert!(
            warn.iter()
                .any(|w| w.contains("headroom signals never fire") && w.contains("psi_window_ms")),
            "{warn:?}"
        );
    }
}
