//! What the machine-wide early warning reads and reports: a reading of the
//! `/proc` files, the sample judged from it (levels and rates), the signals
//! and their changes.

/// A set of machine signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Signals(pub(super) u8);

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

    pub(super) fn set(&mut self, o: Signals, on: bool) {
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
