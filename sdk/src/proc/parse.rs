//! Pure parsers for the `/proc` files a userspace OOM handler reads.
//!
//! Each takes the raw bytes of a file and returns a typed value or a
//! [`ParseError`] naming the line. None of them allocates except
//! [`cmdline`], so they run on the hot path.
//!
//! Rules (the kernel keeps adding keys to these files):
//! - unknown keys are ignored;
//! - a known key whose value is not a number is an error naming the line;
//! - sizes the kernel prints in `kB` are returned in **bytes**;
//! - a last line without its newline is tolerated (callers that had to cut a
//!   large file short drop the partial line first, see [`complete_lines`]).

use super::types::{Comm, MemInfo, ProcStat, ProcStatus, SmapsRollup, Statm, VmStat};
use crate::cgroup::parse::u64_digits;
use crate::error::{ParseError, ParseErrorKind};

type R<T> = Result<T, ParseError>;

fn err(line: u32, kind: ParseErrorKind) -> ParseError {
    ParseError::new(line, kind)
}

/// `PF_KTHREAD` in the `flags` field of `/proc/PID/stat` (`include/linux/sched.h`).
pub const PF_KTHREAD: u32 = 0x0020_0000;

use crate::cgroup::parse::{lines, trim};

/// The part of `data` up to and including its last newline: what is left
/// of a file read into a buffer too small for it, without the cut line.
pub fn complete_lines(data: &[u8]) -> &[u8] {
    match data.iter().rposition(|b| *b == b'\n') {
        Some(p) => &data[..=p],
        None => &[],
    }
}

/// Parses a signed decimal integer.
fn i64_digits(s: &[u8]) -> Option<i64> {
    match s {
        [b'-', rest @ ..] => {
            let v = u64_digits(rest)?;
            if v <= i64::MAX as u64 + 1 {
                Some((v as i64).wrapping_neg())
            } else {
                None
            }
        }
        _ => i64::try_from(u64_digits(s)?).ok(),
    }
}

/// Splits a `Key:\tvalue` line (status, meminfo, smaps_rollup).
fn colon_kv(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let p = line.iter().position(|b| *b == b':')?;
    let k = &line[..p];
    if k.is_empty() {
        return None;
    }
    Some((k, trim(&line[p + 1..])))
}

/// A `1234 kB` value in bytes.
fn kb(v: &[u8]) -> Option<u64> {
    let n = v.strip_suffix(b"kB").map(trim).unwrap_or(v);
    u64_digits(n)?.checked_mul(1024)
}

/// `/proc/PID/status`.
///
/// `Name` is required (anything else is not a status file); every other
/// field is optional: kernel threads and zombies have no `Vm*` lines, and
/// `Kthread` exists only since 6.x.
pub fn status(data: &[u8]) -> R<ProcStatus> {
    let mut st = ProcStatus::default();
    let mut have_name = false;
    let mut any = false;
    for (n, line) in lines(data) {
        any = true;
        let (k, v) = colon_kv(line).ok_or(err(n, ParseErrorKind::MalformedLine))?;
        let bad = err(n, ParseErrorKind::InvalidNumber);
        match k {
            b"Name" => {
                st.name = Comm::new(v);
                have_name = true;
            }
            b"State" => st.state = v.first().copied(),
            b"Tgid" => st.tgid = Some(i32::try_from(i64_digits(v).ok_or(bad)?).map_err(|_| bad)?),
            b"PPid" => st.ppid = Some(i32::try_from(i64_digits(v).ok_or(bad)?).map_err(|_| bad)?),
            b"Uid" => {
                let mut it = v
                    .split(|b| b.is_ascii_whitespace())
                    .filter(|s| !s.is_empty());
                let real = it.next().and_then(u64_digits).ok_or(bad)?;
                let eff = it.next().and_then(u64_digits).unwrap_or(real);
                st.uid = Some(u32::try_from(real).map_err(|_| bad)?);
                st.euid = Some(u32::try_from(eff).map_err(|_| bad)?);
            }
            b"Kthread" => {
                st.kthread = Some(match v {
                    b"0" => false,
                    b"1" => true,
                    _ => return Err(bad),
                })
            }
            b"VmSize" => st.vm_size = Some(kb(v).ok_or(bad)?),
            b"VmLck" => st.vm_lck = Some(kb(v).ok_or(bad)?),
            b"VmHWM" => st.vm_hwm = Some(kb(v).ok_or(bad)?),
            b"VmRSS" => st.vm_rss = Some(kb(v).ok_or(bad)?),
            b"RssAnon" => st.rss_anon = Some(kb(v).ok_or(bad)?),
            b"RssFile" => st.rss_file = Some(kb(v).ok_or(bad)?),
            b"RssShmem" => st.rss_shmem = Some(kb(v).ok_or(bad)?),
            b"VmSwap" => st.vm_swap = Some(kb(v).ok_or(bad)?),
            b"Threads" => {
                st.threads = Some(u32::try_from(u64_digits(v).ok_or(bad)?).map_err(|_| bad)?)
            }
            b"CapEff" => st.cap_eff = Some(hex_u64(v).ok_or(bad)?),
            _ => {}
        }
    }
    if !any {
        return Err(err(1, ParseErrorKind::Empty));
    }
    if !have_name {
        return Err(err(1, ParseErrorKind::MissingKey("Name")));
    }
    Ok(st)
}

fn hex_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v = 0u64;
    for &b in s {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// `/proc/PID/stat`: one line, `pid (comm) state ppid … flags …`.
///
/// `comm` may contain spaces and parentheses, so it is taken between the
/// first `(` and the *last* `)`. Fields up to `rss` (24) are required;
/// `rt_priority` and `policy` (40, 41) are optional.
pub fn stat(data: &[u8]) -> R<ProcStat> {
    let data = trim(data);
    if data.is_empty() {
        return Err(err(1, ParseErrorKind::Empty));
    }
    let malformed = err(1, ParseErrorKind::MalformedLine);
    let bad = err(1, ParseErrorKind::InvalidNumber);
    let open = data.iter().position(|b| *b == b'(').ok_or(malformed)?;
    let close = data.iter().rposition(|b| *b == b')').ok_or(malformed)?;
    if close < open {
        return Err(malformed);
    }
    let pid = i32::try_from(i64_digits(trim(&data[..open])).ok_or(bad)?).map_err(|_| bad)?;
    let comm = Comm::new(&data[open + 1..close]);
    // Field n (1-based, as in proc(5)) is rest[n - 3].
    let mut rest = [&b""[..]; 39];
    let mut count = 0;
    for f in data[close + 1..]
        .split(|b| b.is_ascii_whitespace())
        .filter(|s| !s.is_empty())
    {
        if count < rest.len() {
            rest[count] = f;
        }
        count += 1;
    }
    if count < 22 {
        return Err(err(1, ParseErrorKind::MissingKey("rss")));
    }
    let field = |n: usize| rest[n - 3];
    let u = |n: usize| u64_digits(field(n)).ok_or(bad);
    let i = |n: usize| i64_digits(field(n)).ok_or(bad);
    let state = match field(3) {
        [c] => *c,
        _ => return Err(malformed),
    };
    let opt_u32 = |n: usize| -> R<Option<u32>> {
        if count > n - 3 {
            Ok(Some(u32::try_from(u(n)?).map_err(|_| bad)?))
        } else {
            Ok(None)
        }
    };
    Ok(ProcStat {
        pid,
        comm,
        state,
        ppid: i32::try_from(i(4)?).map_err(|_| bad)?,
        flags: u32::try_from(u(9)?).map_err(|_| bad)?,
        minflt: u(10)?,
        majflt: u(12)?,
        utime: u(14)?,
        stime: u(15)?,
        nice: i32::try_from(i(19)?).map_err(|_| bad)?,
        num_threads: u32::try_from(u(20)?).map_err(|_| bad)?,
        starttime: u(22)?,
        vsize: u(23)?,
        rss_pages: u(24)?,
        rt_priority: opt_u32(40)?,
        policy: opt_u32(41)?,
    })
}

/// `/proc/PID/statm`: sizes in pages (`size resident shared text lib data dt`).
pub fn statm(data: &[u8]) -> R<Statm> {
    let data = trim(data);
    if data.is_empty() {
        return Err(err(1, ParseErrorKind::Empty));
    }
    let mut v = [0u64; 7];
    let mut n = 0;
    for f in data
        .split(|b| b.is_ascii_whitespace())
        .filter(|s| !s.is_empty())
    {
        if n == v.len() {
            return Err(err(1, ParseErrorKind::MalformedLine));
        }
        v[n] = u64_digits(f).ok_or(err(1, ParseErrorKind::InvalidNumber))?;
        n += 1;
    }
    if n < 6 {
        return Err(err(1, ParseErrorKind::MalformedLine));
    }
    Ok(Statm {
        size: v[0],
        resident: v[1],
        shared: v[2],
        text: v[3],
        data: v[5],
    })
}

/// `/proc/PID/oom_score_adj` (−1000…1000) or `/proc/PID/oom_score` (0…2000).
pub fn oom_score(data: &[u8]) -> R<i16> {
    let mut it = lines(data);
    let (n, line) = it.next().ok_or(err(1, ParseErrorKind::Empty))?;
    if let Some((n2, _)) = it.next() {
        return Err(err(n2, ParseErrorKind::MalformedLine));
    }
    let v = i64_digits(trim(line)).ok_or(err(n, ParseErrorKind::InvalidNumber))?;
    if !(-1000..=2000).contains(&v) {
        return Err(err(n, ParseErrorKind::InvalidNumber));
    }
    Ok(v as i16)
}

/// `/proc/PID/cmdline`: NUL-separated arguments, decoded lossily.
///
/// A process that rewrote its argument area (`setproctitle`) may present one
/// space-separated string; it is returned as one argument. Kernel threads
/// and zombies have an empty cmdline, returned as an empty vector.
pub fn cmdline(data: &[u8]) -> Vec<String> {
    let data = data.strip_suffix(b"\0").unwrap_or(data);
    if data.is_empty() {
        return Vec::new();
    }
    data.split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// The path of the `0::` (cgroup v2) entry of `/proc/PID/cgroup`, relative
/// to the reader's cgroup namespace, without allocating.
///
/// Only the line's newline is removed, nothing else: the kernel rejects
/// only `\n` in cgroup names, so `"job "` is a valid name, and a trimmed
/// path would fail every membership check of that cgroup's processes.
pub fn cgroup_v2_path(data: &[u8]) -> Option<&[u8]> {
    data.split(|b| *b == b'\n')
        .find_map(|l| l.strip_prefix(b"0::"))
}

macro_rules! kv_struct_parser {
    ($(#[$doc:meta])* $name:ident, $ty:ident, kb = $kb:literal, sep = $sep:ident,
     { $( $field:ident = $key:literal ),* $(,)? }) => {
        $(#[$doc])*
        pub fn $name(data: &[u8]) -> R<$ty> {
            let mut out = $ty::default();
            let mut any = false;
            for (n, line) in lines(data) {
                let Some((k, v)) = $sep(line) else {
                    return Err(err(n, ParseErrorKind::MalformedLine));
                };
                any = true;
                let (slot, name) = match k {
                    $( $key => (&mut out.$field, stringify!($field)), )*
                    _ => continue,
                };
                if slot.is_some() {
                    return Err(err(n, ParseErrorKind::DuplicateKey(name)));
                }
                let parsed = if $kb { kb(v) } else { u64_digits(v) };
                *slot = Some(parsed.ok_or(err(n, ParseErrorKind::InvalidNumber))?);
            }
            if !any {
                return Err(err(1, ParseErrorKind::Empty));
            }
            Ok(out)
        }
    };
}

/// Splits a `key value` line (vmstat).
fn space_kv(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let line = trim(line);
    let p = line.iter().position(|b| *b == b' ')?;
    let (k, v) = line.split_at(p);
    let v = trim(v);
    if k.is_empty() || v.is_empty() {
        return None;
    }
    Some((k, v))
}

kv_struct_parser!(
    /// `/proc/meminfo`. Sizes in bytes; unknown keys (and the
    /// `HugePages_*` counts) are ignored.
    meminfo, MemInfo, kb = true, sep = colon_kv, {
    mem_total = b"MemTotal",
    mem_free = b"MemFree",
    mem_available = b"MemAvailable",
    buffers = b"Buffers",
    cached = b"Cached",
    swap_cached = b"SwapCached",
    active = b"Active",
    inactive = b"Inactive",
    active_anon = b"Active(anon)",
    inactive_anon = b"Inactive(anon)",
    active_file = b"Active(file)",
    inactive_file = b"Inactive(file)",
    unevictable = b"Unevictable",
    mlocked = b"Mlocked",
    swap_total = b"SwapTotal",
    swap_free = b"SwapFree",
    zswap = b"Zswap",
    zswapped = b"Zswapped",
    dirty = b"Dirty",
    writeback = b"Writeback",
    anon_pages = b"AnonPages",
    mapped = b"Mapped",
    shmem = b"Shmem",
    kreclaimable = b"KReclaimable",
    slab = b"Slab",
    sreclaimable = b"SReclaimable",
    sunreclaim = b"SUnreclaim",
    kernel_stack = b"KernelStack",
    page_tables = b"PageTables",
    commit_limit = b"CommitLimit",
    committed_as = b"Committed_AS",
});

kv_struct_parser!(
    /// An excerpt of `/proc/vmstat`: reclaim, swap, refault and OOM
    /// counters. Counters are counts (pages or events); unknown keys are
    /// ignored.
    vmstat, VmStat, kb = false, sep = space_kv, {
    pgscan_kswapd = b"pgscan_kswapd",
    pgscan_direct = b"pgscan_direct",
    pgscan_khugepaged = b"pgscan_khugepaged",
    pgscan_proactive = b"pgscan_proactive",
    pgscan_direct_throttle = b"pgscan_direct_throttle",
    pgscan_anon = b"pgscan_anon",
    pgscan_file = b"pgscan_file",
    pgsteal_kswapd = b"pgsteal_kswapd",
    pgsteal_direct = b"pgsteal_direct",
    pgsteal_khugepaged = b"pgsteal_khugepaged",
    pgsteal_proactive = b"pgsteal_proactive",
    pgsteal_anon = b"pgsteal_anon",
    pgsteal_file = b"pgsteal_file",
    pgmajfault = b"pgmajfault",
    pswpin = b"pswpin",
    pswpout = b"pswpout",
    workingset_refault = b"workingset_refault",
    workingset_refault_anon = b"workingset_refault_anon",
    workingset_refault_file = b"workingset_refault_file",
    workingset_activate = b"workingset_activate",
    workingset_activate_anon = b"workingset_activate_anon",
    workingset_activate_file = b"workingset_activate_file",
    allocstall_normal = b"allocstall_normal",
    allocstall_movable = b"allocstall_movable",
    compact_stall = b"compact_stall",
    oom_kill = b"oom_kill",
});

/// `/proc/PID/smaps_rollup`: the first (address range) line is skipped.
pub fn smaps_rollup(data: &[u8]) -> R<SmapsRollup> {
    let mut out = SmapsRollup::default();
    let mut any = false;
    for (n, line) in lines(data) {
        let Some((k, v)) = colon_kv(line) else {
            return Err(err(n, ParseErrorKind::MalformedLine));
        };
        if k.contains(&b' ') {
            // The `start-end ---p 00000000 00:00 0 [rollup]` header.
            continue;
        }
        any = true;
        let slot = match k {
            b"Rss" => &mut out.rss,
            b"Pss" => &mut out.pss,
            b"Pss_Anon" => &mut out.pss_anon,
            b"Pss_File" => &mut out.pss_file,
            b"Pss_Shmem" => &mut out.pss_shmem,
            b"Anonymous" => &mut out.anonymous,
            b"Swap" => &mut out.swap,
            b"SwapPss" => &mut out.swap_pss,
            b"Locked" => &mut out.locked,
            _ => continue,
        };
        *slot = Some(kb(v).ok_or(err(n, ParseErrorKind::InvalidNumber))?);
    }
    if !any {
        return Err(err(1, ParseErrorKind::Empty));
    }
    Ok(out)
}
