//! Typed values of the cgroup-v2 memory files.
//!
//! Every counter that a kernel may lack is an `Option`: a field an older
//! kernel does not report is `None`, never `0`, because "no `oom_group_kill`
//! counter" and "no group kill happened" mean different things to a handler.

#[cfg(feature = "serde")]
use serde::Serialize;

/// A memory limit as written in `memory.min/low/high/max` and `memory.swap.max`.
///
/// ```
/// use oomkit::cgroup::Limit;
/// let l = Limit::Bytes(268435456);
/// assert!(l.is_reached_by(300 << 20));
/// assert_eq!(Limit::Max.bytes(), None);
/// assert_eq!(l.to_string(), "268435456");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub enum Limit {
    /// A limit in bytes.
    Bytes(u64),
    /// No limit (`max`).
    Max,
}

impl Limit {
    /// The limit in bytes, `None` for [`Limit::Max`].
    pub fn bytes(self) -> Option<u64> {
        match self {
            Limit::Bytes(b) => Some(b),
            Limit::Max => None,
        }
    }

    /// True when `usage` is at or above this limit.
    pub fn is_reached_by(self, usage: u64) -> bool {
        matches!(self, Limit::Bytes(b) if usage >= b)
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Bytes(b) => write!(f, "{b}"),
            Limit::Max => f.write_str("max"),
        }
    }
}

/// Counters of `memory.events` or `memory.events.local`.
///
/// `None` means this kernel does not report the counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct MemoryEvents {
    /// Reclaim below `memory.low` (the cgroup was under memory pressure despite protection).
    pub low: Option<u64>,
    /// Usage went over `memory.high`; processes were throttled and made to reclaim.
    pub high: Option<u64>,
    /// Usage was about to go over `memory.max`.
    pub max: Option<u64>,
    /// The cgroup hit its limit and reclaim failed (an OOM condition).
    pub oom: Option<u64>,
    /// Processes in the cgroup were killed by the kernel OOM killer.
    pub oom_kill: Option<u64>,
    /// The kernel killed the whole group (`memory.oom.group`); since 5.17.
    pub oom_group_kill: Option<u64>,
    /// Network sockets were throttled for memory (7.x).
    pub sock_throttled: Option<u64>,
}

/// Which counter of [`MemoryEvents`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum MemoryEventKind {
    /// `low`
    Low,
    /// `high`
    High,
    /// `max`
    Max,
    /// `oom`
    Oom,
    /// `oom_kill`
    OomKill,
    /// `oom_group_kill`
    OomGroupKill,
    /// `sock_throttled`
    SockThrottled,
}

impl MemoryEventKind {
    /// All kinds, in file order.
    pub const ALL: [MemoryEventKind; 7] = [
        MemoryEventKind::Low,
        MemoryEventKind::High,
        MemoryEventKind::Max,
        MemoryEventKind::Oom,
        MemoryEventKind::OomKill,
        MemoryEventKind::OomGroupKill,
        MemoryEventKind::SockThrottled,
    ];

    /// The key as spelled in the file.
    pub fn key(self) -> &'static str {
        match self {
            MemoryEventKind::Low => "low",
            MemoryEventKind::High => "high",
            MemoryEventKind::Max => "max",
            MemoryEventKind::Oom => "oom",
            MemoryEventKind::OomKill => "oom_kill",
            MemoryEventKind::OomGroupKill => "oom_group_kill",
            MemoryEventKind::SockThrottled => "sock_throttled",
        }
    }
}

impl MemoryEvents {
    /// The counter of `kind`.
    pub fn get(&self, kind: MemoryEventKind) -> Option<u64> {
        match kind {
            MemoryEventKind::Low => self.low,
            MemoryEventKind::High => self.high,
            MemoryEventKind::Max => self.max,
            MemoryEventKind::Oom => self.oom,
            MemoryEventKind::OomKill => self.oom_kill,
            MemoryEventKind::OomGroupKill => self.oom_group_kill,
            MemoryEventKind::SockThrottled => self.sock_throttled,
        }
    }

    pub(crate) fn slot(&mut self, kind: MemoryEventKind) -> &mut Option<u64> {
        match kind {
            MemoryEventKind::Low => &mut self.low,
            MemoryEventKind::High => &mut self.high,
            MemoryEventKind::Max => &mut self.max,
            MemoryEventKind::Oom => &mut self.oom,
            MemoryEventKind::OomKill => &mut self.oom_kill,
            MemoryEventKind::OomGroupKill => &mut self.oom_group_kill,
            MemoryEventKind::SockThrottled => &mut self.sock_throttled,
        }
    }

    /// How much each counter rose since `earlier`.
    ///
    /// ```
    /// # #[cfg(feature = "parsers")] {
    /// use oomkit::cgroup::parse; // public with the `parsers` feature
    /// let before = parse::memory_events(b"low 0\nhigh 3\nmax 0\noom 0\noom_kill 0\n").unwrap();
    /// let after = parse::memory_events(b"low 0\nhigh 7\nmax 1\noom 1\noom_kill 1\n").unwrap();
    /// let d = after.delta_since(&before);
    /// assert_eq!(d.high, Some(4));
    /// assert_eq!(d.oom_kill, Some(1));
    /// assert_eq!(d.oom_group_kill, None); // not in this (5.10-style) file: None, never 0
    /// # }
    /// ```
    ///
    /// A counter absent in either reading gives `None`. A counter that went
    /// *down* (which only happens if the cgroup was removed and recreated, or
    /// in a fake tree) is reported as the new value, treating it as a reset.
    pub fn delta_since(&self, earlier: &MemoryEvents) -> MemoryEvents {
        let mut out = MemoryEvents::default();
        for k in MemoryEventKind::ALL {
            *out.slot(k) = match (self.get(k), earlier.get(k)) {
                (Some(now), Some(before)) if now >= before => Some(now - before),
                (Some(now), Some(_)) => Some(now),
                _ => None,
            };
        }
        out
    }

    /// Adds `delta` to these counters (summing the deltas of several
    /// wakeups). A counter absent in `delta` is left as it is.
    pub fn accumulate(&mut self, delta: &MemoryEvents) {
        for k in MemoryEventKind::ALL {
            if let Some(d) = delta.get(k) {
                let slot = self.slot(k);
                *slot = Some(slot.unwrap_or(0).saturating_add(d));
            }
        }
    }

    /// True when any counter is non-zero (useful on a delta).
    pub fn any(&self) -> bool {
        MemoryEventKind::ALL
            .iter()
            .any(|k| self.get(*k).is_some_and(|v| v > 0))
    }
}

/// `populated` and `frozen` of `cgroup.events`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct CgroupEvents {
    /// The cgroup or a descendant has live processes.
    pub populated: Option<bool>,
    /// The cgroup is frozen (`cgroup.freeze` took effect); since 5.2.
    pub frozen: Option<bool>,
}

/// One line of a PSI file (`some` or `full`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct PressureLine {
    /// Share of wall time stalled, percent, over the last 10 s.
    pub avg10: f64,
    /// Over the last 60 s.
    pub avg60: f64,
    /// Over the last 300 s.
    pub avg300: f64,
    /// Total stall time in microseconds.
    pub total_us: u64,
}

/// `memory.pressure` or `/proc/pressure/memory`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct Pressure {
    /// Some tasks stalled on memory.
    pub some: PressureLine,
    /// All non-idle tasks stalled at once: no progress at all. `None` if the
    /// file has no `full` line (never for memory on supported kernels).
    pub full: Option<PressureLine>,
}

/// Maximum length of a `memory.stat` key kept in [`MemoryStat::other`].
pub const STAT_KEY_MAX: usize = 40;

/// A `memory.stat` key not known to this crate, stored inline so parsing into
/// a pre-sized [`MemoryStat`] does not allocate.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StatKey {
    len: u8,
    bytes: [u8; STAT_KEY_MAX],
}

impl StatKey {
    pub(crate) fn new(key: &[u8]) -> Option<Self> {
        if key.len() > STAT_KEY_MAX || std::str::from_utf8(key).is_err() {
            return None;
        }
        let mut bytes = [0u8; STAT_KEY_MAX];
        bytes[..key.len()].copy_from_slice(key);
        Some(StatKey {
            len: key.len() as u8,
            bytes,
        })
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        // Constructed only from valid UTF-8 (checked in `new`).
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }
}

impl std::fmt::Debug for StatKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(feature = "serde")]
impl Serialize for StatKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

macro_rules! memory_stat {
    ($( $(#[$doc:meta])* $field:ident ),* $(,)?) => {
        /// `memory.stat`: the keys a handler needs, typed; every other key
        /// kept in [`MemoryStat::other`] in file order.
        ///
        /// Sizes are bytes, event counters are counts. A key the kernel does
        /// not report is `None`.
        #[derive(Debug, Clone, Default, PartialEq)]
        #[cfg_attr(feature = "serde", derive(Serialize))]
        pub struct MemoryStat {
            $( $(#[$doc])* pub $field: Option<u64>, )*
            /// Keys not typed above, in file order (new kernels keep adding them).
            pub other: Vec<(StatKey, u64)>,
        }

        impl MemoryStat {
            pub(crate) fn known_slot(&mut self, key: &[u8]) -> Option<&mut Option<u64>> {
                match key {
                    $( k if k == stringify!($field).as_bytes() => Some(&mut self.$field), )*
                    _ => None,
                }
            }

            /// Looks a key up by its name in the file, typed or not.
            pub fn get(&self, key: &str) -> Option<u64> {
                match key {
                    $( stringify!($field) => self.$field, )*
                    _ => self.other.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| *v),
                }
            }
        }
    };
}

memory_stat! {
    /// Anonymous memory (heap, stack, private mappings), bytes.
    anon,
    /// Page cache, bytes.
    file,
    /// Kernel memory, bytes (5.18+ reports it; older kernels lack it).
    kernel,
    /// Kernel stacks, bytes.
    kernel_stack,
    /// Page tables, bytes.
    pagetables,
    /// Network socket buffers, bytes.
    sock,
    /// Shared memory and tmpfs, bytes.
    shmem,
    /// Dirty page cache waiting for writeback, bytes.
    file_dirty,
    /// Page cache under writeback, bytes.
    file_writeback,
    /// Anonymous memory on the inactive LRU, bytes.
    inactive_anon,
    /// Anonymous memory on the active LRU, bytes.
    active_anon,
    /// Page cache on the inactive LRU, bytes.
    inactive_file,
    /// Page cache on the active LRU, bytes.
    active_file,
    /// Unevictable memory (mlocked and the like), bytes.
    unevictable,
    /// Reclaimable slab, bytes.
    slab_reclaimable,
    /// Unreclaimable slab, bytes.
    slab_unreclaimable,
    /// Slab in total, bytes.
    slab,
    /// Memory held in zswap's compressed pool, bytes.
    zswap,
    /// Pages scanned by reclaim.
    pgscan,
    /// Pages reclaimed.
    pgsteal,
    /// Pages scanned by kswapd.
    pgscan_kswapd,
    /// Pages scanned by direct reclaim (6.1+).
    pgscan_direct,
    /// Pages reclaimed by kswapd.
    pgsteal_kswapd,
    /// Pages reclaimed by direct reclaim (6.1+).
    pgsteal_direct,
    /// Page faults.
    pgfault,
    /// Major page faults (needed I/O).
    pgmajfault,
    /// Refaults of evicted anonymous pages.
    workingset_refault_anon,
    /// Refaults of evicted page-cache pages.
    workingset_refault_file,
    /// Pages swapped in (7.x).
    pswpin,
    /// Pages swapped out (7.x).
    pswpout,
}
