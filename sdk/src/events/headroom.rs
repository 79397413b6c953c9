//! The machine-wide early warning, as pure logic: readings in, signal
//! changes and the next sample time out.
//!
//! # Why
//!
//! A swapless machine with no `memory.high` anywhere gives no cgroup event
//! before the kernel's OOM killer acts, and PSI memory pressure rises only
//! in the last seconds (measured: about 2 s before the kill, 20 s after a
//! leak began). What does move early is `MemAvailable` (the kernel's own
//! estimate of memory that can be had without swapping) and, when the file
//! working set starts to thrash, the refault counters of `/proc/vmstat`:
//! pages evicted and read back almost at once are reclaim that does not
//! make progress. (A reader cycling over and over through more data than
//! memory refaults too, and is counted as thrashing: it is one. A reader
//! streaming data once, like a backup, does not refault. The kernel's
//! activation counters, which could tell the two apart, activated a
//! re-reader's refaults in some calibration runs and not in others.) This module turns periodic readings of `/proc/meminfo`,
//! `/proc/vmstat` and `/proc/pressure/memory` into four signals:
//!
//! | signal | on | off (hysteresis) |
//! |---|---|---|
//! | [`Signals::LOW`] | headroom below `low` for `min_duration` | headroom back above `clear` |
//! | [`Signals::CRITICAL`] | headroom below `critical` (at once) | headroom back above `clear` |
//! | [`Signals::THRASHING`] | refaults ≥ `thrash_ratio` × reclaim and ≥ `thrash_min_rate`, for `min_duration` | under half of either |
//! | [`Signals::STALLED`] | PSI `some`/`full` share of wall time over `stall_window` above its bound | both under half their bound |
//!
//! *Headroom* is `MemAvailable` plus free swap where the machine has swap.
//!
//! # Sampling adaptively
//!
//! Reading `/proc/meminfo` costs a few microseconds, but waking an idle
//! machine every 100 ms is what makes a daemon show up in power profiles.
//! The monitor derives the next sample time from the headroom left above
//! the next threshold and a maximum fill rate (`max_fill_rate`, or twice
//! the observed rate if that is higher): a machine with 80 % free and a
//! 1 GiB/s bound on 16 GiB sleeps for `max_interval`; one 20 MiB from the
//! edge is read every few milliseconds. While the kernel is reclaiming
//! (`pgscan` rose), while a signal is pending its minimum duration, and
//! while one fires, the interval is capped so the rates stay fresh.
//!
//! Time is injected ([`MachineMonitor::observe`] takes the `Instant` of the
//! reading), so the logic is tested with a fake clock and synthetic series.

use std::time::{Duration, Instant};

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
    /// Headroom under this, held for `min_duration`, fires [`Signals::LOW`].
    pub low: Level,
    /// Headroom under this fires [`Signals::CRITICAL`] at once.
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

/// A set of machine signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Signals(u8);

impl Signals {
    /// No signal.
    pub const NONE: Signals = Signals(0);
    /// Headroom under `low` for `min_duration`.
    pub const LOW: Signals = Signals(1);
    /// Headroom under `critical`.
    pub const CRITICAL: Signals = Signals(2);
    /// The file working set thrashes: pages come back as fast as reclaim
    /// takes them.
    pub const THRASHING: Signals = Signals(4);
    /// PSI stall share above its bound.
    pub const STALLED: Signals = Signals(8);
    const ALL: [(Signals, &'static str); 4] = [
        (Signals::LOW, "low"),
        (Signals::CRITICAL, "critical"),
        (Signals::THRASHING, "thrashing"),
        (Signals::STALLED, "stalled"),
    ];

    /// True when every signal of `o` is in `self`.
    pub fn contains(self, o: Signals) -> bool {
        self.0 & o.0 == o.0
    }

    /// True when some signal of `o` is in `self`.
    pub fn intersects(self, o: Signals) -> bool {
        self.0 & o.0 != 0
    }

    /// True for the empty set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn set(&mut self, o: Signals, on: bool) {
        if on {
            self.0 |= o.0;
        } else {
            self.0 &= !o.0;
        }
    }

    /// The names of the signals in the set.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::ALL
            .into_iter()
            .filter(move |(s, _)| self.contains(*s))
            .map(|(_, n)| n)
    }
}

impl std::ops::BitOr for Signals {
    type Output = Signals;
    fn bitor(self, o: Signals) -> Signals {
        Signals(self.0 | o.0)
    }
}

impl std::fmt::Display for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, n) in self.names().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            f.write_str(n)?;
        }
        Ok(())
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Signals {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

/// One reading of the machine, in bytes and microseconds (what
/// [`MachineReading::from_proc`] makes of `/proc/meminfo`, `/proc/vmstat`
/// and `/proc/pressure/memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MachineReading {
    /// `MemTotal`.
    pub mem_total: u64,
    /// `MemAvailable`.
    pub mem_available: u64,
    /// `SwapTotal` (0 without swap).
    pub swap_total: u64,
    /// `SwapFree`.
    pub swap_free: u64,
    /// `AnonPages`.
    pub anon: u64,
    /// `Active(file)` + `Inactive(file)`.
    pub file: u64,
    /// Refaulted bytes since boot (`workingset_refault_*`).
    pub refaults: u64,
    /// Refaulted bytes the kernel activated as working set since boot
    /// (`workingset_activate_*`; `None` where the kernel has no counter).
    pub activations: Option<u64>,
    /// Reclaimed bytes since boot (`pgsteal_*`).
    pub steal: u64,
    /// Scanned bytes since boot (`pgscan_*`).
    pub scan: u64,
    /// PSI memory `some` total, µs (`None` without PSI).
    pub some_us: Option<u64>,
    /// PSI memory `full` total, µs.
    pub full_us: Option<u64>,
}

impl MachineReading {
    /// Builds a reading from the parsed proc files. `None` when
    /// `/proc/meminfo` lacks `MemTotal` or `MemAvailable` (kernels before
    /// 3.14), without which there is no headroom to judge.
    pub fn from_proc(
        mem: &crate::proc::MemInfo,
        vm: &crate::proc::VmStat,
        psi: Option<&crate::cgroup::Pressure>,
        page_size: u64,
    ) -> Option<Self> {
        Some(MachineReading {
            mem_total: mem.mem_total?,
            mem_available: mem.mem_available?,
            swap_total: mem.swap_total.unwrap_or(0),
            swap_free: mem.swap_free.unwrap_or(0),
            anon: mem.anon_pages.unwrap_or(0),
            file: mem.active_file.unwrap_or(0) + mem.inactive_file.unwrap_or(0),
            refaults: vm.refaults().saturating_mul(page_size),
            activations: vm.activations().map(|a| a.saturating_mul(page_size)),
            steal: vm.pgsteal().saturating_mul(page_size),
            scan: vm.pgscan().saturating_mul(page_size),
            some_us: psi.map(|p| p.some.total_us),
            full_us: psi.and_then(|p| p.full.map(|f| f.total_us)),
        })
    }

    /// Headroom: `MemAvailable` plus free swap.
    pub fn headroom(&self) -> u64 {
        self.mem_available.saturating_add(self.swap_free)
    }

    /// `MemTotal` plus `SwapTotal`.
    pub fn total(&self) -> u64 {
        self.mem_total.saturating_add(self.swap_total)
    }
}

/// What the monitor made of the latest reading: levels and rates. Rates
/// are per second over at least `rate_window`; 0 until two readings that
/// far apart exist.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct MachineSample {
    /// `MemTotal` + `SwapTotal`, bytes.
    pub total: u64,
    /// Headroom (`MemAvailable` + free swap), bytes.
    pub headroom: u64,
    /// The `low` threshold in bytes for this machine.
    pub low: u64,
    /// The `critical` threshold in bytes.
    pub critical: u64,
    /// `AnonPages`, bytes.
    pub anon: u64,
    /// File LRU pages, bytes.
    pub file: u64,
    /// How fast the headroom shrinks, bytes/s (negative: it grows).
    pub fill_rate: i64,
    /// How fast anonymous memory grows, bytes/s (negative: it shrinks).
    pub anon_rate: i64,
    /// Refaults, bytes/s.
    pub refault_rate: u64,
    /// Refaults the kernel activated as working set, bytes/s (0 where it
    /// does not count them). Reported, not judged: in the calibration runs
    /// a re-reader's refaults were activated in some runs and not in
    /// others, on the same kernel.
    pub activate_rate: u64,
    /// Reclaimed, bytes/s.
    pub steal_rate: u64,
    /// Scanned, bytes/s.
    pub scan_rate: u64,
    /// PSI `some` share of wall time over the last stall window (0–1).
    pub some_share: f32,
    /// PSI `full` share of wall time over the last stall window (0–1).
    pub full_share: f32,
}

impl MachineSample {
    /// Reclaim is churning rather than freeing: refaults reach `ratio` of
    /// the reclaimed rate (pages evicted come back at once), or
    /// anonymous memory grows while the headroom shrinks (reclaim of cache
    /// only postpones the end). Rates under 0.1 % of the total per second
    /// are noise.
    pub fn churning(&self, ratio: f64) -> bool {
        let noise = (self.total / 1000) as f64;
        let ws = self.refault_rate as f64;
        let thrash = ws > noise && ws >= self.steal_rate as f64 * ratio;
        let anon_eats = self.anon_rate as f64 > noise && self.fill_rate as f64 > noise;
        thrash || anon_eats
    }

    /// Seconds until the headroom reaches `critical` at the current fill
    /// rate (`None` when it is not shrinking).
    pub fn seconds_to_critical(&self) -> Option<f64> {
        (self.fill_rate > 0)
            .then(|| self.headroom.saturating_sub(self.critical) as f64 / self.fill_rate as f64)
    }
}

/// A change of the machine's signals.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct MachineChange {
    /// Signals that started firing with this reading.
    pub fired: Signals,
    /// Signals that stopped.
    pub cleared: Signals,
    /// Signals firing after this reading.
    pub active: Signals,
    /// The reading as judged.
    pub sample: MachineSample,
}

/// One signal's state: since when its "on" condition holds, and whether it
/// fires.
#[derive(Debug, Clone, Copy, Default)]
struct Cond {
    since: Option<Instant>,
}

/// The reference reading rates are measured against.
#[derive(Debug, Clone, Copy)]
struct Mark {
    at: Instant,
    reading: MachineReading,
}

/// The machine-wide early-warning state machine. Feed it readings with
/// [`observe`](Self::observe); ask when to read next with
/// [`next_sample`](Self::next_sample). Allocation-free.
#[derive(Debug, Clone)]
pub struct MachineMonitor {
    cfg: MachineConfig,
    active: Signals,
    low: Cond,
    thrash: Cond,
    rate_mark: Option<Mark>,
    stall_mark: Option<Mark>,
    last_at: Option<Instant>,
    sample: MachineSample,
    samples: u64,
}

impl MachineMonitor {
    /// A monitor with `cfg` (validate it first: [`MachineConfig::validate`]).
    pub fn new(cfg: MachineConfig) -> Self {
        MachineMonitor {
            cfg,
            active: Signals::NONE,
            low: Cond::default(),
            thrash: Cond::default(),
            rate_mark: None,
            stall_mark: None,
            last_at: None,
            sample: MachineSample::default(),
            samples: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MachineConfig {
        &self.cfg
    }

    /// Signals firing now.
    pub fn active(&self) -> Signals {
        self.active
    }

    /// The latest judged reading.
    pub fn sample(&self) -> &MachineSample {
        &self.sample
    }

    /// Readings observed so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// A signal's condition holds but has not held for `min_duration` yet.
    pub fn pending(&self) -> bool {
        (self.low.since.is_some() && !self.active.contains(Signals::LOW))
            || (self.thrash.since.is_some() && !self.active.contains(Signals::THRASHING))
    }

    /// Judges a reading taken at `now`. Returns the change of signals, if
    /// any.
    pub fn observe(&mut self, now: Instant, r: &MachineReading) -> Option<MachineChange> {
        self.samples += 1;
        self.last_at = Some(now);
        let total = r.total();
        let cfg = self.cfg;
        let s = &mut self.sample;
        s.total = total;
        s.headroom = r.headroom();
        s.low = cfg.low.resolve(total);
        s.critical = cfg.critical.resolve(total);
        s.anon = r.anon;
        s.file = r.file;
        // Rates over at least `rate_window`.
        match self.rate_mark {
            None => {
                self.rate_mark = Some(Mark {
                    at: now,
                    reading: *r,
                })
            }
            Some(m) => {
                let dt = now.saturating_duration_since(m.at);
                if dt >= cfg.rate_window {
                    let secs = dt.as_secs_f64();
                    let per_s = |a: u64, b: u64| (b.saturating_sub(a) as f64 / secs) as u64;
                    let signed = |a: u64, b: u64| ((a as f64 - b as f64) / secs) as i64;
                    s.fill_rate = signed(m.reading.headroom(), r.headroom());
                    s.anon_rate = signed(r.anon, m.reading.anon);
                    s.refault_rate = per_s(m.reading.refaults, r.refaults);
                    s.activate_rate = match (m.reading.activations, r.activations) {
                        (Some(a), Some(b)) => per_s(a, b),
                        _ => 0,
                    };
                    s.steal_rate = per_s(m.reading.steal, r.steal);
                    s.scan_rate = per_s(m.reading.scan, r.scan);
                    self.rate_mark = Some(Mark {
                        at: now,
                        reading: *r,
                    });
                }
            }
        }
        // PSI shares over at least `stall_window`.
        match self.stall_mark {
            None => {
                self.stall_mark = Some(Mark {
                    at: now,
                    reading: *r,
                })
            }
            Some(m) => {
                let dt = now.saturating_duration_since(m.at);
                if dt >= cfg.stall_window {
                    let us = dt.as_micros() as f64;
                    let share = |a: Option<u64>, b: Option<u64>| match (a, b) {
                        (Some(a), Some(b)) => (b.saturating_sub(a) as f64 / us).min(1.0) as f32,
                        _ => 0.0,
                    };
                    s.some_share = share(m.reading.some_us, r.some_us);
                    s.full_share = share(m.reading.full_us, r.full_us);
                    self.stall_mark = Some(Mark {
                        at: now,
                        reading: *r,
                    });
                }
            }
        }
        let s = *s;
        let before = self.active;
        let clear = cfg.clear.resolve(total).max(s.low);

        // CRITICAL: at once; clears above `clear`.
        if s.headroom < s.critical {
            self.active.set(Signals::CRITICAL, true);
        } else if s.headroom >= clear {
            self.active.set(Signals::CRITICAL, false);
        }

        // LOW: held for `min_duration`; clears above `clear`.
        if s.headroom < s.low {
            let since = *self.low.since.get_or_insert(now);
            if now.saturating_duration_since(since) >= cfg.min_duration {
                self.active.set(Signals::LOW, true);
            }
        } else {
            self.low.since = None;
            if s.headroom >= clear {
                self.active.set(Signals::LOW, false);
            }
        }

        // THRASHING: refaults close to the reclaim rate, and enough of them.
        let min_rate = cfg.thrash_min_rate.resolve(total) as f64;
        let refault = s.refault_rate as f64;
        let steal = s.steal_rate as f64;
        if refault >= min_rate && refault >= cfg.thrash_ratio * steal && refault > 0.0 {
            let since = *self.thrash.since.get_or_insert(now);
            if now.saturating_duration_since(since) >= cfg.min_duration {
                self.active.set(Signals::THRASHING, true);
            }
        } else {
            self.thrash.since = None;
            if refault < min_rate / 2.0 || refault < cfg.thrash_ratio / 2.0 * steal {
                self.active.set(Signals::THRASHING, false);
            }
        }

        // STALLED: the PSI share over the stall window (itself the smoothing).
        let (some, full) = (f64::from(s.some_share), f64::from(s.full_share));
        if some >= cfg.stall_some || full >= cfg.stall_full {
            self.active.set(Signals::STALLED, true);
        } else if some < cfg.stall_some / 2.0 && full < cfg.stall_full / 2.0 {
            self.active.set(Signals::STALLED, false);
        }

        let after = self.active;
        (after != before).then_some(MachineChange {
            fired: Signals(after.0 & !before.0),
            cleared: Signals(before.0 & !after.0),
            active: after,
            sample: s,
        })
    }

    /// How long after the latest reading the next one is due: the time the
    /// headroom needs, at the maximum fill rate, to reach the next
    /// threshold below it; capped while the kernel reclaims, a signal is
    /// pending or fires; within `[min_interval, max_interval]`. Before the
    /// first reading: `min_interval`.
    pub fn next_interval(&self) -> Duration {
        let cfg = &self.cfg;
        if self.samples == 0 {
            return cfg.min_interval;
        }
        let s = &self.sample;
        let observed = u64::try_from(s.fill_rate).unwrap_or(0).saturating_mul(2);
        let rate = cfg.max_fill_rate.max(observed).max(1);
        let target = if s.headroom > s.low {
            s.low
        } else {
            s.critical
        };
        let gap = s.headroom.saturating_sub(target);
        let mut dt = Duration::from_secs_f64(gap as f64 / rate as f64)
            .clamp(cfg.min_interval, cfg.max_interval);
        let busy = s.scan_rate > 0 || self.pending() || !self.active.is_empty();
        if busy {
            dt = dt.min(cfg.busy_interval);
        }
        if self.pending() {
            // Confirm (or drop) a pending signal within a fraction of its
            // minimum duration, and read again right when it has held
            // that long: a quarter-duration grid alone fired a held `LOW`
            // up to a quarter too late.
            let mut cap = (cfg.min_duration / 4).max(cfg.min_interval);
            if let Some(due) = self.pending_due() {
                cap = cap.min(due.max(cfg.min_interval));
            }
            dt = dt.min(cap);
        }
        dt
    }

    /// Time from the latest reading until the earliest pending signal has
    /// held for `min_duration` (`None`: none pending, or already due).
    fn pending_due(&self) -> Option<Duration> {
        let last = self.last_at?;
        [
            (self.low.since, Signals::LOW),
            (self.thrash.since, Signals::THRASHING),
        ]
        .into_iter()
        .filter(|(_, sig)| !self.active.contains(*sig))
        .filter_map(|(since, _)| since)
        .map(|since| (since + self.cfg.min_duration).saturating_duration_since(last))
        .filter(|d| !d.is_zero())
        .min()
    }

    /// When the next reading is due (`None` before the first reading).
    pub fn next_sample(&self) -> Option<Instant> {
        self.last_at.map(|t| t + self.next_interval())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn reading(avail: u64) -> MachineReading {
        MachineReading {
            mem_total: GIB,
            mem_available: avail,
            ..Default::default()
        }
    }

    /// Drives a monitor with a fake clock: each step advances by
    /// `next_interval` (as the timer would), reading `f(elapsed)`.
    fn run(
        cfg: MachineConfig,
        until: Duration,
        mut f: impl FnMut(Duration) -> MachineReading,
    ) -> (MachineMonitor, Vec<(Duration, MachineChange)>) {
        let t0 = Instant::now();
        let mut m = MachineMonitor::new(cfg);
        let mut changes = Vec::new();
        let mut t = Duration::ZERO;
        while t <= until {
            if let Some(c) = m.observe(t0 + t, &f(t)) {
                changes.push((t, c));
            }
            t += m.next_interval();
        }
        (m, changes)
    }

    #[test]
    fn lots_of_headroom_means_few_wakeups() {
        let (m, changes) = run(MachineConfig::default(), Duration::from_secs(600), |_| {
            reading(900 * MIB)
        });
        assert!(changes.is_empty());
        // 800 MiB above `low` at 1 GiB/s: one sample every ~0.78 s, so
        // about 770 samples in 10 minutes, far fewer than one per 100 ms.
        let per_s = m.samples() as f64 / 600.0;
        assert!(per_s < 1.5, "{per_s} samples/s");
        let cfg = MachineConfig {
            max_fill_rate: 100 * MIB,
            ..Default::default()
        };
        let (m, _) = run(cfg, Duration::from_secs(600), |_| reading(900 * MIB));
        // 798 MiB above `low` at 100 MiB/s: one sample per ~8 s.
        assert!(m.samples() <= 77, "{} samples", m.samples());
    }

    #[test]
    fn a_held_low_fires_right_after_its_minimum_duration() {
        let mut cfg = MachineConfig::default();
        let low = cfg.low.resolve(GIB);
        let avail = low - 4 * MIB;
        // A fill rate that spaces readings 90 ms apart (the gap down to
        // `critical` at that rate), which does not divide `min_duration`:
        // on that grid alone `LOW` would fire at 540 ms.
        let gap = avail - cfg.critical.resolve(GIB);
        cfg.max_fill_rate = gap * 100 / 9;
        // Under `low` from t = 0 (read at once), staying there.
        let (_, changes) = run(cfg, Duration::from_secs(3), |_| reading(avail));
        let (at, c) = changes.first().copied().expect("LOW fired");
        assert!(c.fired.contains(Signals::LOW), "{c:?}");
        assert!(at >= cfg.min_duration, "fired at {at:?}");
        assert!(
            at <= cfg.min_duration + cfg.min_interval,
            "fired at {at:?}, later than {:?} + one min_interval",
            cfg.min_duration
        );
    }

    #[test]
    fn near_the_edge_samples_every_few_ms() {
        let cfg = MachineConfig::default();
        let mut m = MachineMonitor::new(cfg);
        let t0 = Instant::now();
        // 2 MiB above low (~102 MiB on 1 GiB): at 1 GiB/s, 2 ms -> min_interval.
        m.observe(t0, &reading(cfg.low.resolve(GIB) + 2 * MIB));
        assert_eq!(m.next_interval(), cfg.min_interval);
        // Far away: long sleeps.
        m.observe(t0 + Duration::from_secs(1), &reading(1000 * MIB));
        assert!(m.next_interval() > Duration::from_millis(500));
    }

    #[test]
    fn a_leak_fires_low_then_critical_in_time() {
        // 20 MiB/s leak from 400 MiB available.
        let (_, changes) = run(MachineConfig::default(), Duration::from_secs(30), |t| {
            reading((400 * MIB).saturating_sub((t.as_secs_f64() * 20.0 * MIB as f64) as u64))
        });
        let low_at = changes
            .iter()
            .find(|(_, c)| c.fired.contains(Signals::LOW))
            .map(|(t, _)| *t)
            .unwrap();
        // Crosses low (~102.4 MiB) at ~14.9 s, fires after min_duration.
        let crossing = (400.0 - 102.4) / 20.0;
        let late = low_at.as_secs_f64() - crossing;
        assert!(
            (0.5..0.7).contains(&late),
            "LOW fired {late} s after the crossing"
        );
        let crit_at = changes
            .iter()
            .find(|(_, c)| c.fired.contains(Signals::CRITICAL))
            .map(|(t, _)| *t)
            .unwrap();
        let crossing = (400.0 - 51.2) / 20.0;
        let late = crit_at.as_secs_f64() - crossing;
        assert!((0.0..0.1).contains(&late), "CRITICAL fired {late} s late");
        let (_, c) = changes
            .iter()
            .find(|(_, c)| c.fired.contains(Signals::LOW))
            .unwrap();
        assert!(c.sample.fill_rate > 15 * MIB as i64, "{:?}", c.sample);
    }

    #[test]
    fn a_short_dip_does_not_fire_and_hysteresis_holds() {
        let cfg = MachineConfig::default();
        // 300 ms below low (but above critical), then back.
        let (_, changes) = run(cfg, Duration::from_secs(5), |t| {
            let ms = t.as_millis();
            if (1000..1300).contains(&ms) {
                reading(80 * MIB)
            } else {
                reading(600 * MIB)
            }
        });
        assert!(changes.is_empty(), "{changes:?}");
        // Fires after holding, stays on between low and clear, clears above clear.
        let (_, changes) = run(cfg, Duration::from_secs(10), |t| match t.as_millis() {
            0..1000 => reading(600 * MIB),
            1000..3000 => reading(80 * MIB),
            3000..6000 => reading(120 * MIB), // above low, below clear (~154 MiB)
            _ => reading(600 * MIB),
        });
        let kinds: Vec<_> = changes
            .iter()
            .map(|(t, c)| (t.as_millis() / 100, c.fired, c.cleared))
            .collect();
        assert_eq!(kinds.len(), 2, "{kinds:?}");
        assert_eq!(kinds[0].1, Signals::LOW);
        // The drop is instant (faster than `max_fill_rate`), so it is seen
        // at the next sample, up to ~0.5 s late, then held 0.5 s.
        assert!((15..=21).contains(&kinds[0].0), "{kinds:?}");
        assert_eq!(kinds[1].2, Signals::LOW);
        assert!((60..=61).contains(&kinds[1].0), "{kinds:?}");
    }

    #[test]
    fn thrashing_is_refaults_close_to_reclaim_and_streaming_is_not() {
        let cfg = MachineConfig::default();
        // Thrash: reclaim 40 MiB/s, refaults 36 MiB/s, headroom moderate.
        let (_, changes) = run(cfg, Duration::from_secs(5), |t| {
            let s = t.as_secs_f64();
            MachineReading {
                steal: (s * 40.0 * MIB as f64) as u64,
                scan: (s * 80.0 * MIB as f64) as u64,
                refaults: (s * 36.0 * MIB as f64) as u64,
                ..reading(250 * MIB)
            }
        });
        let (at, c) = changes.first().unwrap();
        assert_eq!(c.fired, Signals::THRASHING);
        assert!(at.as_secs_f64() < 1.2, "{at:?}");
        assert!(c.sample.churning(cfg.thrash_ratio));
        // Streaming: the same reclaim, refaults near zero: no signal.
        let (_, changes) = run(cfg, Duration::from_secs(5), |t| {
            let s = t.as_secs_f64();
            MachineReading {
                steal: (s * 40.0 * MIB as f64) as u64,
                scan: (s * 80.0 * MIB as f64) as u64,
                refaults: (s * 0.1 * MIB as f64) as u64,
                ..reading(250 * MIB)
            }
        });
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn reclaim_caps_the_interval() {
        let cfg = MachineConfig::default();
        let (m, _) = run(cfg, Duration::from_secs(3), |t| MachineReading {
            scan: (t.as_secs_f64() * 10.0 * MIB as f64) as u64,
            ..reading(900 * MIB)
        });
        assert!(m.next_interval() <= cfg.busy_interval);
    }

    #[test]
    fn pressure_share_fires_stalled() {
        let cfg = MachineConfig::default();
        // 40 % `some` stall from 2 s on.
        let (_, changes) = run(cfg, Duration::from_secs(5), |t| {
            let stalled = t.saturating_sub(Duration::from_secs(2)).as_micros() as u64;
            MachineReading {
                some_us: Some(stalled * 4 / 10),
                full_us: Some(0),
                ..reading(600 * MIB)
            }
        });
        let (at, c) = changes.first().unwrap();
        assert_eq!(c.fired, Signals::STALLED);
        assert!((2.0..3.2).contains(&at.as_secs_f64()), "{at:?}");
    }

    #[test]
    fn anon_growth_with_shrinking_headroom_is_churn() {
        let s = MachineSample {
            fill_rate: 20 * MIB as i64,
            anon_rate: 20 * MIB as i64,
            steal_rate: 50 * MIB,
            ..Default::default()
        };
        assert!(s.churning(0.5));
        let cold = MachineSample {
            fill_rate: -(5 * MIB as i64),
            anon_rate: 0,
            steal_rate: 50 * MIB,
            refault_rate: MIB,
            ..Default::default()
        };
        assert!(!cold.churning(0.5));
    }

    #[test]
    fn swap_counts_as_headroom_and_levels_resolve() {
        let r = MachineReading {
            mem_total: GIB,
            mem_available: 100 * MIB,
            swap_total: GIB,
            swap_free: 500 * MIB,
            ..Default::default()
        };
        assert_eq!(r.headroom(), 600 * MIB);
        assert_eq!(Level::Fraction(0.5).resolve(r.total()), GIB);
        assert_eq!(Level::Bytes(7).resolve(r.total()), 7);
    }

    #[test]
    fn validate_names_the_bad_value() {
        let cfg = MachineConfig {
            low: Level::Fraction(1.5),
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("low"));
        let cfg = MachineConfig {
            min_interval: Duration::ZERO,
            ..Default::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("min_interval")
        );
        MachineConfig::default().validate().unwrap();
    }
}
