//! The `mlockall` step: which pages the handler keeps in RAM, against
//! which `RLIMIT_MEMLOCK`.
//!
//! The longest step of [`super::enter`], and the only one a caller may
//! defer ([`lock_memory`]), so it has its own module: choosing the flags,
//! raising the limit, checking the address space against it, and for
//! [`MlockMode::Resident`] finding and locking the resident pages.

use std::os::unix::fs::FileExt;

use rustix::mm::MlockAllFlags;
use rustix::process::{Resource, Rlimit};

use super::{MlockMode, ReserveConfig, Step, StepStatus};
use crate::proc::{self, Capability, ProcDir};

fn fmt_limit(v: Option<u64>) -> String {
    v.map_or_else(|| "unlimited".to_owned(), |b| format!("{b} bytes"))
}

/// The `mlockall` step of `cfg`, on its own: for a caller that deferred it
/// ([`ReserveConfig::defer_mlock`]) until its hot path was warm. Put the
/// result into the report with [`ReserveReport::set`](super::ReserveReport::set).
pub fn lock_memory(cfg: &ReserveConfig) -> Step {
    Step {
        name: "mlockall",
        status: step_mlock(cfg),
    }
}

pub(super) fn step_mlock(cfg: &ReserveConfig) -> StepStatus {
    let Some(flags) = mlock_flags(cfg.mlock) else {
        return StepStatus::Skipped("not requested".into());
    };
    let status = ProcDir::open_self().and_then(|d| d.status()).ok();
    let ipc_lock = proc::has_capability(Capability::IpcLock);
    // What will count as locked: the address space, or (Resident) what is resident.
    let vm_size = if cfg.mlock == MlockMode::Resident {
        status.and_then(|s| s.vm_rss).unwrap_or(0)
    } else {
        status.and_then(|s| s.vm_size).unwrap_or(0)
    };
    let (lim, note) = raise_memlock(cfg.raise_memlock_limit);
    if !ipc_lock {
        if let Some(soft) = lim.current {
            if vm_size > soft {
                return StepStatus::Denied(format!(
                    "RLIMIT_MEMLOCK is {soft} bytes but the address space is {vm_size} bytes; \
                     needs CAP_IPC_LOCK or a memlock limit of at least that{note}"
                ));
            }
        }
    }
    let mode = match cfg.mlock {
        MlockMode::AllOnFault => "MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT",
        MlockMode::Resident => "MCL_FUTURE",
        _ => "MCL_CURRENT|MCL_FUTURE",
    };
    match rustix::mm::mlockall(flags) {
        Ok(()) => after_mlockall(cfg.mlock, mode, ipc_lock, lim.current, note),
        Err(e) => StepStatus::Denied(format!(
            "mlockall({mode}): {e}; RLIMIT_MEMLOCK {}, address space {vm_size} bytes, \
             CAP_IPC_LOCK {}{note}",
            fmt_limit(lim.current),
            if ipc_lock { "held" } else { "missing" }
        )),
    }
}

/// The `mlockall` flags of `mode`; `None` for [`MlockMode::Off`].
fn mlock_flags(mode: MlockMode) -> Option<MlockAllFlags> {
    Some(match mode {
        MlockMode::Off => return None,
        MlockMode::All => MlockAllFlags::CURRENT | MlockAllFlags::FUTURE,
        MlockMode::AllOnFault => {
            MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT
        }
        MlockMode::Resident => MlockAllFlags::FUTURE,
    })
}

/// `RLIMIT_MEMLOCK` after raising its soft limit when `raise` asks for it
/// (to infinity with `CAP_SYS_RESOURCE`, else to the hard limit), and a
/// note for the report saying what changed or failed.
fn raise_memlock(raise: bool) -> (Rlimit, String) {
    let sys_resource = proc::has_capability(Capability::SysResource);
    let lim = rustix::process::getrlimit(Resource::Memlock);
    if !raise || lim.current.is_none() {
        return (lim, String::new());
    }
    let target = if sys_resource {
        Rlimit {
            current: None,
            maximum: None,
        }
    } else {
        Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        }
    };
    if target.current == lim.current {
        return (lim, String::new());
    }
    match rustix::process::setrlimit(Resource::Memlock, target) {
        Ok(()) => {
            let note = format!(
                "; RLIMIT_MEMLOCK raised from {} to {}",
                fmt_limit(lim.current),
                fmt_limit(target.current)
            );
            (target, note)
        }
        Err(e) => (lim, format!("; raising RLIMIT_MEMLOCK failed: {e}")),
    }
}

/// The report once `mlockall` succeeded: for [`MlockMode::Resident`] the
/// resident pages are locked now; a soft memlock limit without
/// `CAP_IPC_LOCK` is warned about.
fn after_mlockall(
    mlock: MlockMode,
    mode: &str,
    ipc_lock: bool,
    soft_limit: Option<u64>,
    mut note: String,
) -> StepStatus {
    if mlock == MlockMode::Resident {
        match lock_resident() {
            Ok((bytes, ranges, None)) => {
                note = format!(
                    "; mlock of the {} KiB resident in {ranges} ranges{note}",
                    bytes >> 10
                )
            }
            Ok((bytes, ranges, Some(failed))) => {
                return StepStatus::Denied(format!(
                    "mlock of the {} KiB resident in {ranges} ranges, but {failed}; \
                     MCL_FUTURE holds{note}",
                    bytes >> 10
                ));
            }
            Err(e) => {
                return StepStatus::Denied(format!(
                    "mlock of the resident pages: {e}; MCL_FUTURE holds{note}"
                ));
            }
        }
    }
    let warn = match (ipc_lock, soft_limit) {
        (false, Some(soft)) => {
            format!("; mappings beyond RLIMIT_MEMLOCK ({soft} bytes) will now fail")
        }
        _ => String::new(),
    };
    StepStatus::Granted(format!(
        "{mode}{}{note}{warn}",
        if ipc_lock { " (CAP_IPC_LOCK)" } else { "" }
    ))
}

/// Drops the pages of this process's read-only file mappings (program
/// text, read-only data) from its page tables, so that start-up code does
/// not stay resident; what runs next maps its pages again from the page
/// cache. Meant right before a warm-up and [`lock_memory`] with
/// [`MlockMode::Resident`], while no other thread runs and nothing is
/// locked. Returns the bytes that were resident in those mappings.
pub fn drop_start_up_pages() -> std::io::Result<usize> {
    crate::sys::drop_clean_file_pages()
}

/// Locks the program's own file mappings whole (its code and read-only
/// data, faulted in if needed) but for its unwind and start-up tables
/// (`exe`), and of every other mapping the pages that are resident now:
/// the present bit (63) of each page's
/// `/proc/self/pagemap` entry, readable without privileges, over every
/// mapping of `/proc/self/maps` except the kernel's special ones; runs of
/// present pages are `mlock`ed one range at a time.
/// Returns the bytes locked, the number of ranges and what failed.
fn lock_resident() -> std::result::Result<(usize, usize, Option<String>), String> {
    let maps = std::fs::read("/proc/self/maps").map_err(|e| format!("/proc/self/maps: {e}"))?;
    let pagemap = std::fs::File::open("/proc/self/pagemap")
        .map_err(|e| format!("/proc/self/pagemap: {e}"))?;
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.into_os_string().into_encoded_bytes())
        .unwrap_or_default();
    // Unreadable section headers only cost memory: everything is locked.
    let cold = std::fs::File::open("/proc/self/exe")
        .map_err(|e| format!("/proc/self/exe: {e}"))
        .and_then(|f| super::exe::cold_ranges(&f))
        .unwrap_or_default();
    let mut resident = Resident {
        pagemap,
        page: rustix::param::page_size(),
        entries: vec![0u8; 8 * 512],
        ranges: Vec::new(),
    };
    for line in maps.split(|b| *b == b'\n') {
        let Some(m) = lockable_mapping(line) else {
            continue;
        };
        // The program's own code and read-only data are locked whole: a
        // warm-up cannot reach every line of the kill path (error and log
        // branches), and a page of it read back from disk during an OOM is
        // the stall reserve mode exists to prevent. Only the unwind and
        // start-up sections are left out (`exe`).
        if !exe.is_empty() && m.name == exe.as_slice() {
            let hot = super::exe::hot_parts(m.start, m.end, m.offset, &cold, resident.page);
            resident.ranges.extend(hot);
            continue;
        }
        resident.add_present_runs(m.start, m.end)?;
    }
    mlock_ranges(&resident.ranges)
}

/// A readable mapping of `/proc/self/maps`.
struct Mapping<'a> {
    start: usize,
    end: usize,
    /// Offset in the mapped file.
    offset: u64,
    name: &'a [u8],
}

/// The readable mapping of a `/proc/self/maps` line, `None` for the
/// kernel's special mappings, unreadable ones and lines that do not parse.
fn lockable_mapping(line: &[u8]) -> Option<Mapping<'_>> {
    let mut f = line.split(|b| *b == b' ').filter(|x| !x.is_empty());
    let (range, perms, offset) = (f.next()?, f.next()?, f.next()?);
    let name = f.nth(2).unwrap_or_default();
    if matches!(
        name,
        b"[vdso]" | b"[vvar]" | b"[vvar_vclock]" | b"[vsyscall]"
    ) || perms.first() != Some(&b'r')
    {
        return None;
    }
    let dash = range.iter().position(|b| *b == b'-')?;
    let hex = |s: &[u8]| usize::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok();
    Some(Mapping {
        start: hex(&range[..dash])?,
        end: hex(&range[dash + 1..])?,
        offset: u64::from_str_radix(std::str::from_utf8(offset).ok()?, 16).ok()?,
        name,
    })
}

/// The ranges to lock, gathered from `/proc/self/pagemap`.
struct Resident {
    pagemap: std::fs::File,
    page: usize,
    entries: Vec<u8>,
    ranges: Vec<(usize, usize)>,
}

impl Resident {
    /// Adds the runs of present pages of `start..end`.
    fn add_present_runs(&mut self, start: usize, end: usize) -> Result<(), String> {
        let page = self.page;
        let mut run: Option<usize> = None;
        let mut at = start;
        while at < end {
            let n = ((end - at) / page).min(self.entries.len() / 8);
            let buf = &mut self.entries[..n * 8];
            let off = (at / page * 8) as u64;
            self.pagemap
                .read_exact_at(buf, off)
                .map_err(|e| format!("/proc/self/pagemap at {at:#x}: {e}"))?;
            for (i, e) in buf.chunks_exact(8).enumerate() {
                let present = e[7] & 0x80 != 0;
                let addr = at + i * page;
                match (present, run) {
                    (true, None) => run = Some(addr),
                    (false, Some(s)) => {
                        self.ranges.push((s, addr));
                        run = None;
                    }
                    _ => {}
                }
            }
            at += n * page;
        }
        if let Some(s) = run {
            self.ranges.push((s, end));
        }
        Ok(())
    }
}

/// `mlock`s each range. A range can fail when an allocation was freed
/// since the maps were read (ENOMEM), or when the memlock limit is reached
/// (ENOMEM too): the rest is still locked, and the caller reports what was
/// not. Returns the bytes locked, the number of ranges and what failed.
fn mlock_ranges(
    ranges: &[(usize, usize)],
) -> std::result::Result<(usize, usize, Option<String>), String> {
    let mut bytes = 0;
    let mut failed = None;
    for (s, e) in ranges {
        match crate::sys::mlock_range(*s, e - s) {
            Ok(()) => bytes += e - s,
            Err(err) => {
                failed
                    .get_or_insert_with(|| (0usize, format!("mlock({s:#x}, {}): {err}", e - s)))
                    .0 += 1;
            }
        }
    }
    match failed {
        Some((n, first)) if bytes == 0 => Err(format!("{n} ranges failed, first {first}")),
        Some((n, first)) => Ok((
            bytes,
            ranges.len(),
            Some(format!("{n} ranges not locked, first {first}")),
        )),
        None => Ok((bytes, ranges.len(), None)),
    }
}
