//! Typed values of the `/proc` files.
//!
//! Sizes are **bytes** (the kernel prints `kB`; we multiply), page counts
//! say so in their name. A field the file did not contain is `None`.

#[cfg(feature = "serde")]
use serde::Serialize;

/// `TASK_COMM_LEN`: the kernel keeps a task name in 16 bytes with its NUL.
pub const COMM_LEN: usize = 16;

/// A task name (`comm`) stored inline: no allocation on the hot path.
///
/// Names longer than 16 bytes (kernel threads such as
/// `kworker/R-kvfree_rcu_reclaim` print longer names in `/proc`) are cut
/// at 16 bytes. `status` shows `\n` and `\\` escaped; the bytes are kept
/// as the kernel printed them.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Comm {
    bytes: [u8; COMM_LEN],
    len: u8,
}

impl Comm {
    /// A name from raw bytes, cut at [`COMM_LEN`].
    pub fn new(name: &[u8]) -> Self {
        let len = name.len().min(COMM_LEN);
        let mut bytes = [0u8; COMM_LEN];
        bytes[..len].copy_from_slice(&name[..len]);
        Comm {
            bytes,
            len: len as u8,
        }
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The name as text when it is valid UTF-8 (a cut may split a
    /// character: then the valid prefix).
    pub fn as_str(&self) -> &str {
        valid_prefix(self.as_bytes())
    }
}

/// The name in a NUL-padded `comm` buffer (as a [`crate::engine::ProcSample`]
/// keeps it): the bytes up to the first NUL, as text by the rule of
/// [`Comm::as_str`]. The one place that decodes such a buffer.
pub fn padded_comm_str(padded: &[u8; COMM_LEN]) -> &str {
    let end = padded.iter().position(|b| *b == 0).unwrap_or(COMM_LEN);
    valid_prefix(&padded[..end])
}

/// The longest valid UTF-8 prefix of `b`.
fn valid_prefix(b: &[u8]) -> &str {
    match std::str::from_utf8(b) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or(""),
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(feature = "serde")]
impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The fields of `/proc/PID/status` a handler needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct ProcStatus {
    /// `Name`.
    pub name: Comm,
    /// The state letter of `State` (`R`, `S`, `D`, `Z`, `X`, `I` …).
    pub state: Option<u8>,
    /// `Tgid`: the process ID.
    pub tgid: Option<i32>,
    /// `PPid`.
    pub ppid: Option<i32>,
    /// Real UID (first column of `Uid`).
    pub uid: Option<u32>,
    /// Effective UID (second column of `Uid`).
    pub euid: Option<u32>,
    /// `Kthread` (6.x kernels): 1 for kernel threads.
    pub kthread: Option<bool>,
    /// `VmSize`, bytes.
    pub vm_size: Option<u64>,
    /// `VmLck`: mlocked memory, bytes.
    pub vm_lck: Option<u64>,
    /// `VmHWM`: peak RSS, bytes.
    pub vm_hwm: Option<u64>,
    /// `VmRSS`, bytes (= `RssAnon + RssFile + RssShmem`).
    pub vm_rss: Option<u64>,
    /// `RssAnon`, bytes (4.5+).
    pub rss_anon: Option<u64>,
    /// `RssFile`, bytes (4.5+).
    pub rss_file: Option<u64>,
    /// `RssShmem`, bytes (4.5+).
    pub rss_shmem: Option<u64>,
    /// `VmSwap`, bytes.
    pub vm_swap: Option<u64>,
    /// `Threads`.
    pub threads: Option<u32>,
    /// `CapEff`: effective capability mask.
    pub cap_eff: Option<u64>,
}

impl ProcStatus {
    /// True for a zombie (`Z`) or dead (`X`) task: it has exited.
    pub fn has_exited(&self) -> bool {
        matches!(self.state, Some(b'Z' | b'X'))
    }

    /// Whether the effective capability `cap` (bit number, see
    /// `capability.h`; e.g. 24 for `CAP_SYS_RESOURCE`) is held.
    pub fn has_capability(&self, cap: u32) -> Option<bool> {
        self.cap_eff.map(|m| cap < 64 && m & (1 << cap) != 0)
    }
}

/// The fields of `/proc/PID/stat` a handler needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct ProcStat {
    /// Field 1, `pid`.
    pub pid: i32,
    /// Field 2, `comm`.
    pub comm: Comm,
    /// Field 3, `state`.
    pub state: u8,
    /// Field 4, `ppid`.
    pub ppid: i32,
    /// Field 9, `flags` (`PF_*`; see `PF_KTHREAD` in `proc::parse`).
    pub flags: u32,
    /// Field 10, minor faults.
    pub minflt: u64,
    /// Field 12, major faults.
    pub majflt: u64,
    /// Field 14, user time in clock ticks.
    pub utime: u64,
    /// Field 15, system time in clock ticks.
    pub stime: u64,
    /// Field 19, nice value.
    pub nice: i32,
    /// Field 20, number of threads.
    pub num_threads: u32,
    /// Field 22, start time after boot in clock ticks: with the PID, an
    /// identity that survives PID reuse.
    pub starttime: u64,
    /// Field 23, virtual size in bytes.
    pub vsize: u64,
    /// Field 24, resident set in pages.
    pub rss_pages: u64,
    /// Field 40, real-time priority.
    pub rt_priority: Option<u32>,
    /// Field 41, scheduling policy (`SCHED_OTHER` 0, `SCHED_FIFO` 1 …).
    pub policy: Option<u32>,
}

impl ProcStat {
    /// True for kernel threads (`PF_KTHREAD`).
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & super::parse::PF_KTHREAD != 0
    }
}

/// `/proc/PID/statm`, in pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct Statm {
    /// Total program size.
    pub size: u64,
    /// Resident set.
    pub resident: u64,
    /// Resident file-backed and shared pages (`RssFile + RssShmem`).
    pub shared: u64,
    /// Text (code).
    pub text: u64,
    /// Data and stack.
    pub data: u64,
}

/// `/proc/PID/smaps_rollup`, bytes. Reading it takes the target's mmap
/// lock: do it only on request, never for every process in a hot loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct SmapsRollup {
    /// `Rss`.
    pub rss: Option<u64>,
    /// `Pss`: proportional set size (shared pages divided among sharers).
    pub pss: Option<u64>,
    /// `Pss_Anon`.
    pub pss_anon: Option<u64>,
    /// `Pss_File`.
    pub pss_file: Option<u64>,
    /// `Pss_Shmem`.
    pub pss_shmem: Option<u64>,
    /// `Anonymous`.
    pub anonymous: Option<u64>,
    /// `Swap`.
    pub swap: Option<u64>,
    /// `SwapPss`.
    pub swap_pss: Option<u64>,
    /// `Locked`.
    pub locked: Option<u64>,
}

macro_rules! opt_struct {
    ($(#[$doc:meta])* $name:ident { $( $(#[$fdoc:meta])* $field:ident ),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[cfg_attr(feature = "serde", derive(Serialize))]
        pub struct $name {
            $( $(#[$fdoc])* pub $field: Option<u64>, )*
        }
    };
}

opt_struct!(
    /// `/proc/meminfo`, bytes.
    MemInfo {
        /// `MemTotal`.
        mem_total,
        /// `MemFree`.
        mem_free,
        /// `MemAvailable`: the kernel's estimate of memory available without swapping.
        mem_available,
        /// `Buffers`.
        buffers,
        /// `Cached`: page cache (without swap cache).
        cached,
        /// `SwapCached`.
        swap_cached,
        /// `Active`.
        active,
        /// `Inactive`.
        inactive,
        /// `Active(anon)`.
        active_anon,
        /// `Inactive(anon)`.
        inactive_anon,
        /// `Active(file)`.
        active_file,
        /// `Inactive(file)`.
        inactive_file,
        /// `Unevictable`.
        unevictable,
        /// `Mlocked`.
        mlocked,
        /// `SwapTotal`.
        swap_total,
        /// `SwapFree`.
        swap_free,
        /// `Zswap`: compressed pool size.
        zswap,
        /// `Zswapped`: uncompressed size of what is in zswap.
        zswapped,
        /// `Dirty`.
        dirty,
        /// `Writeback`.
        writeback,
        /// `AnonPages`.
        anon_pages,
        /// `Mapped`.
        mapped,
        /// `Shmem`.
        shmem,
        /// `KReclaimable`.
        kreclaimable,
        /// `Slab`.
        slab,
        /// `SReclaimable`.
        sreclaimable,
        /// `SUnreclaim`.
        sunreclaim,
        /// `KernelStack`.
        kernel_stack,
        /// `PageTables`.
        page_tables,
        /// `CommitLimit`.
        commit_limit,
        /// `Committed_AS`.
        committed_as,
    }
);

opt_struct!(
    /// An excerpt of `/proc/vmstat`: counts of pages or events since boot.
    VmStat {
        /// Pages scanned by kswapd.
        pgscan_kswapd,
        /// Pages scanned by direct reclaim.
        pgscan_direct,
        /// Pages scanned by khugepaged.
        pgscan_khugepaged,
        /// Pages scanned by proactive reclaim (`memory.reclaim`; 6.x).
        pgscan_proactive,
        /// Direct reclaimers throttled.
        pgscan_direct_throttle,
        /// Anonymous pages scanned.
        pgscan_anon,
        /// File pages scanned.
        pgscan_file,
        /// Pages reclaimed by kswapd.
        pgsteal_kswapd,
        /// Pages reclaimed by direct reclaim.
        pgsteal_direct,
        /// Pages reclaimed by khugepaged.
        pgsteal_khugepaged,
        /// Pages reclaimed proactively.
        pgsteal_proactive,
        /// Anonymous pages reclaimed.
        pgsteal_anon,
        /// File pages reclaimed.
        pgsteal_file,
        /// Major faults.
        pgmajfault,
        /// Pages swapped in.
        pswpin,
        /// Pages swapped out.
        pswpout,
        /// Refaults (kernels before 5.9, which do not split anon/file).
        workingset_refault,
        /// Refaults of anonymous pages (5.9+).
        workingset_refault_anon,
        /// Refaults of file pages (5.9+).
        workingset_refault_file,
        /// Refaulted pages found to belong to the working set and activated
        /// (kernels before 5.9).
        workingset_activate,
        /// Refaulted anonymous pages activated as working set (5.9+).
        workingset_activate_anon,
        /// Refaulted file pages activated as working set (5.9+).
        workingset_activate_file,
        /// Direct reclaim stalls in ZONE_NORMAL.
        allocstall_normal,
        /// Direct reclaim stalls in ZONE_MOVABLE.
        allocstall_movable,
        /// Compaction stalls.
        compact_stall,
        /// Kernel OOM kills (4.13+).
        oom_kill,
    }
);

impl VmStat {
    /// Pages scanned by all reclaimers.
    pub fn pgscan(&self) -> u64 {
        [
            self.pgscan_kswapd,
            self.pgscan_direct,
            self.pgscan_khugepaged,
            self.pgscan_proactive,
        ]
        .iter()
        .flatten()
        .sum()
    }

    /// Pages reclaimed by all reclaimers.
    pub fn pgsteal(&self) -> u64 {
        [
            self.pgsteal_kswapd,
            self.pgsteal_direct,
            self.pgsteal_khugepaged,
            self.pgsteal_proactive,
        ]
        .iter()
        .flatten()
        .sum()
    }

    /// Refaults that the kernel judged part of the working set (refault
    /// distance within the active list) and activated: pages evicted too
    /// early. A reader cycling once through more data than memory refaults
    /// too, but from too far back to be activated; `None` on a kernel that
    /// reports no activation counter.
    pub fn activations(&self) -> Option<u64> {
        match (self.workingset_activate_anon, self.workingset_activate_file) {
            (None, None) => self.workingset_activate,
            (a, f) => Some(a.unwrap_or(0) + f.unwrap_or(0)),
        }
    }

    /// Refaults, anonymous and file (or the pre-5.9 single counter).
    pub fn refaults(&self) -> u64 {
        match (self.workingset_refault_anon, self.workingset_refault_file) {
            (None, None) => self.workingset_refault.unwrap_or(0),
            (a, f) => a.unwrap_or(0) + f.unwrap_or(0),
        }
    }
}

/// One process of a cgroup as a handler sees it when choosing a victim.
///
/// Memory sizes are bytes and `0` when the process has no address space
/// (kernel threads).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct ProcessInfo {
    /// Process ID (in the reader's PID namespace).
    pub pid: i32,
    /// Parent process ID.
    pub ppid: i32,
    /// Task name.
    pub comm: Comm,
    /// State letter (`R`, `S`, `D` …).
    pub state: u8,
    /// Real UID.
    pub uid: u32,
    /// Effective UID.
    pub euid: u32,
    /// A kernel thread (no user address space; cannot be killed usefully).
    pub kernel_thread: bool,
    /// Resident set: `rss_anon + rss_file + rss_shmem`.
    pub rss: u64,
    /// Resident anonymous memory: freed when the process dies.
    pub rss_anon: u64,
    /// Resident file-backed memory (page cache mapped by the process).
    pub rss_file: u64,
    /// Resident shared memory (`shmem`/tmpfs mappings). When only `statm`
    /// was available (kernels before 4.5) this is 0 and `rss_file` holds
    /// file and shared memory together.
    pub rss_shmem: u64,
    /// Swapped-out anonymous memory.
    pub swap: u64,
    /// mlocked memory.
    pub locked: u64,
    /// `/proc/PID/oom_score_adj`.
    pub oom_score_adj: i16,
    /// `smaps_rollup`, when requested ([`ScanOptions::smaps_rollup`](super::ScanOptions)).
    pub smaps: Option<SmapsRollup>,
    /// Arguments, when requested ([`ScanOptions::cmdline`](super::ScanOptions)).
    pub cmdline: Option<Vec<String>>,
}

impl ProcessInfo {
    /// What killing the process would free at most: anonymous memory
    /// (resident and swapped) and shared memory only it maps. Page cache is
    /// left out: it stays cached after the process dies.
    pub fn freeable(&self) -> u64 {
        self.rss_anon
            .saturating_add(self.swap)
            .saturating_add(self.rss_shmem)
    }

    /// `comm` as text.
    pub fn name(&self) -> &str {
        self.comm.as_str()
    }
}
