//! The memory controller's files of one cgroup, typed: `memory.current`, the limits, events,
//! `memory.stat`, PSI, and the writes that set limits, kill and reclaim.

use std::ffi::CStr;

use super::*;

impl Cgroup {
    // ----- typed reads -----

    /// `memory.current`: bytes charged to the cgroup and its descendants.
    pub fn memory_current(&self) -> Result<u64> {
        self.read_parsed(MEMORY_CURRENT, parse::single_u64)
    }

    /// `memory.peak` (5.19+): the high-water mark of `memory.current`.
    pub fn memory_peak(&self) -> Result<u64> {
        self.read_parsed(MEMORY_PEAK, parse::single_u64)
    }

    /// `memory.min`: hard protection from reclaim.
    pub fn memory_min(&self) -> Result<Limit> {
        self.read_parsed(MEMORY_MIN, parse::limit)
    }

    /// `memory.low`: best-effort protection from reclaim.
    pub fn memory_low(&self) -> Result<Limit> {
        self.read_parsed(MEMORY_LOW, parse::limit)
    }

    /// `memory.high`: the throttle limit.
    pub fn memory_high(&self) -> Result<Limit> {
        self.read_parsed(MEMORY_HIGH, parse::limit)
    }

    /// `memory.max`: the hard limit; beyond it the kernel OOM-kills in the cgroup.
    pub fn memory_max(&self) -> Result<Limit> {
        self.read_parsed(MEMORY_MAX, parse::limit)
    }

    /// `memory.swap.current`: swap used by the cgroup.
    pub fn swap_current(&self) -> Result<u64> {
        self.read_parsed(MEMORY_SWAP_CURRENT, parse::single_u64)
    }

    /// `memory.swap.max`.
    pub fn swap_max(&self) -> Result<Limit> {
        self.read_parsed(MEMORY_SWAP_MAX, parse::limit)
    }

    /// `memory.events`: hierarchical counters (this cgroup and descendants).
    pub fn memory_events(&self) -> Result<MemoryEvents> {
        self.read_parsed(MEMORY_EVENTS, parse::memory_events)
    }

    /// `memory.events.local`: counters of this cgroup alone.
    pub fn memory_events_local(&self) -> Result<MemoryEvents> {
        // One seq_file record: one `pread` reads it whole.
        let mut buf = [0u8; SMALL_READ];
        let data = self.read_one_piece(MEMORY_EVENTS_LOCAL, &mut buf)?;
        parse::memory_events(data).map_err(|source| Error::Parse {
            path: self.file_path(MEMORY_EVENTS_LOCAL),
            source,
        })
    }

    /// Whether every counter of `memory.events` (hierarchical: this cgroup
    /// and all its descendants, live or removed, unless the mount has
    /// `memory_localevents`) is zero, keys this SDK does not know included.
    pub(crate) fn memory_events_all_zero(&self) -> Result<bool> {
        let mut buf = [0u8; SMALL_READ];
        let data = self.read_one_piece(MEMORY_EVENTS, &mut buf)?;
        parse::counters_all_zero(data).map_err(|source| Error::Parse {
            path: self.file_path(MEMORY_EVENTS),
            source,
        })
    }

    /// `memory.stat`.
    pub fn memory_stat(&self) -> Result<MemoryStat> {
        let mut st = MemoryStat::default();
        self.memory_stat_into(&mut st)?;
        Ok(st)
    }

    /// `memory.stat` into a reused value (see `parse::memory_stat_into`).
    pub fn memory_stat_into(&self, out: &mut MemoryStat) -> Result<()> {
        let mut buf = [0u8; SMALL_READ];
        let data = self.read_into(MEMORY_STAT, &mut buf)?;
        parse::memory_stat_into(data, out).map_err(|source| Error::Parse {
            path: self.file_path(MEMORY_STAT),
            source,
        })
    }

    /// `memory.pressure`: PSI of this cgroup.
    pub fn memory_pressure(&self) -> Result<Pressure> {
        self.read_parsed(MEMORY_PRESSURE, parse::pressure)
    }

    /// `memory.oom.group`: whether the kernel kills the whole group on OOM.
    pub fn oom_group(&self) -> Result<bool> {
        self.read_parsed(MEMORY_OOM_GROUP, parse::bool01)
    }

    // ----- writes -----

    fn write_limit(&self, name: &CStr, limit: Limit) -> Result<()> {
        let mut b = [0u8; 20];
        let data: &[u8] = match limit {
            Limit::Max => b"max",
            Limit::Bytes(v) => fmt_u64(&mut b, v),
        };
        self.write_raw(name, data)
    }

    /// Sets `memory.min`.
    pub fn set_memory_min(&self, limit: Limit) -> Result<()> {
        self.write_limit(MEMORY_MIN, limit)
    }

    /// Sets `memory.low`.
    pub fn set_memory_low(&self, limit: Limit) -> Result<()> {
        self.write_limit(MEMORY_LOW, limit)
    }

    /// Sets `memory.high` (throttling).
    pub fn set_memory_high(&self, limit: Limit) -> Result<()> {
        self.write_limit(MEMORY_HIGH, limit)
    }

    /// Sets `memory.max`.
    pub fn set_memory_max(&self, limit: Limit) -> Result<()> {
        self.write_limit(MEMORY_MAX, limit)
    }

    /// Sets `memory.swap.max`.
    pub fn set_swap_max(&self, limit: Limit) -> Result<()> {
        self.write_limit(MEMORY_SWAP_MAX, limit)
    }

    /// Sets `memory.oom.group`.
    pub fn set_oom_group(&self, on: bool) -> Result<()> {
        self.write_raw(MEMORY_OOM_GROUP, if on { b"1" } else { b"0" })
    }

    /// Writes `cgroup.freeze` (1 freezes, 0 thaws). Freezing is
    /// asynchronous: `cgroup.events` says `frozen 1` once it took effect.
    pub fn set_frozen(&self, frozen: bool) -> Result<()> {
        self.write_raw(CGROUP_FREEZE, if frozen { b"1" } else { b"0" })
    }

    /// Writes `1` to `cgroup.kill` (5.14+): SIGKILL to every process of the
    /// cgroup and its descendants, atomically with respect to forks.
    /// Returns [`Error::Unsupported`] on older kernels.
    pub fn write_kill(&self) -> Result<()> {
        self.write_raw(CGROUP_KILL, b"1")
    }

    /// Asks the kernel to reclaim `bytes` from the cgroup (`memory.reclaim`,
    /// 5.19+). The kernel answers `EAGAIN` if it could not reclaim that much.
    pub fn reclaim(&self, bytes: u64) -> Result<()> {
        let mut b = [0u8; 20];
        let v = fmt_u64(&mut b, bytes);
        self.write_raw(MEMORY_RECLAIM, v)
    }
}
