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

mod config;
mod reading;
#[cfg(test)]
mod tests;

pub use config::{Level, MachineConfig};
pub use reading::{MachineChange, MachineReading, MachineSample, Signals};

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

    /// Whether a reading taken at `now` measures the rates: there is no
    /// reference reading yet, or `rate_window` has passed since it. Only
    /// such a reading uses the counters of `/proc/vmstat` (refaults,
    /// reclaim, scans); any other may carry the previous ones, so a source
    /// sampling every few milliseconds near the edge reads that file (about
    /// 4 KiB of text the kernel formats on each read) once per window
    /// instead of at every sample.
    pub fn rates_due(&self, now: Instant) -> bool {
        self.rate_mark
            .is_none_or(|m| now.saturating_duration_since(m.at) >= self.cfg.rate_window)
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
        self.update_rates(now, r);
        self.update_stall_shares(now, r);
        let s = self.sample;
        let before = self.active;
        self.judge_headroom(now, &s);
        self.judge_thrashing(now, &s);
        self.judge_stall(&s);
        let after = self.active;
        (after != before).then_some(MachineChange {
            fired: Signals(after.0 & !before.0),
            cleared: Signals(before.0 & !after.0),
            active: after,
            sample: s,
        })
    }

    /// Rates over at least `rate_window`, from the reference reading.
    fn update_rates(&mut self, now: Instant, r: &MachineReading) {
        if !self.rates_due(now) {
            return;
        }
        let Some(m) = self.rate_mark else {
            self.rate_mark = Some(Mark {
                at: now,
                reading: *r,
            });
            return;
        };
        let dt = now.saturating_duration_since(m.at);
        let s = &mut self.sample;
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

    /// PSI shares over at least `stall_window`, from the reference reading.
    fn update_stall_shares(&mut self, now: Instant, r: &MachineReading) {
        let Some(m) = self.stall_mark else {
            self.stall_mark = Some(Mark {
                at: now,
                reading: *r,
            });
            return;
        };
        let dt = now.saturating_duration_since(m.at);
        if dt < self.cfg.stall_window {
            return;
        }
        let us = dt.as_micros() as f64;
        let share = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => (b.saturating_sub(a) as f64 / us).min(1.0) as f32,
            _ => 0.0,
        };
        self.sample.some_share = share(m.reading.some_us, r.some_us);
        self.sample.full_share = share(m.reading.full_us, r.full_us);
        self.stall_mark = Some(Mark {
            at: now,
            reading: *r,
        });
    }

    /// CRITICAL and LOW, from the headroom; both clear above `clear`.
    fn judge_headroom(&mut self, now: Instant, s: &MachineSample) {
        let clear = self.cfg.clear.resolve(s.total).max(s.low);
        // CRITICAL: at once.
        if s.headroom < s.critical {
            self.active.set(Signals::CRITICAL, true);
        } else if s.headroom >= clear {
            self.active.set(Signals::CRITICAL, false);
        }
        // LOW: held for `min_duration`.
        if s.headroom < s.low {
            let since = *self.low.since.get_or_insert(now);
            if now.saturating_duration_since(since) >= self.cfg.min_duration {
                self.active.set(Signals::LOW, true);
            }
        } else {
            self.low.since = None;
            if s.headroom >= clear {
                self.active.set(Signals::LOW, false);
            }
        }
    }

    /// THRASHING: refaults close to the reclaim rate, and enough of them.
    fn judge_thrashing(&mut self, now: Instant, s: &MachineSample) {
        let cfg = self.cfg;
        let min_rate = cfg.thrash_min_rate.resolve(s.total) as f64;
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
    }

    /// STALLED: the PSI share over the stall window (itself the smoothing).
    fn judge_stall(&mut self, s: &MachineSample) {
        let (some, full) = (f64::from(s.some_share), f64::from(s.full_share));
        if some >= self.cfg.stall_some || full >= self.cfg.stall_full {
            self.active.set(Signals::STALLED, true);
        } else if some < self.cfg.stall_some / 2.0 && full < self.cfg.stall_full / 2.0 {
            self.active.set(Signals::STALLED, false);
        }
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
