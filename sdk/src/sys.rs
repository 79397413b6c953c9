//! The only module with `unsafe` code: raw system calls that neither std nor
//! rustix wrap. Everything else in the crate calls through here or through
//! rustix's safe API.
//!
//! Each function names its syscall and links the man page.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// [`process_mrelease(2)`](https://man7.org/linux/man-pages/man2/process_mrelease.2.html)
/// (5.15+): reap the address space of a process that is dying from SIGKILL,
/// as the kernel's oom_reaper does, so its memory returns without waiting for
/// the process to finish exiting.
pub(crate) fn process_mrelease(pidfd: impl AsFd) -> io::Result<()> {
    let fd = pidfd.as_fd().as_raw_fd();
    // SAFETY: the syscall takes an fd number and a flags word, reads no
    // memory of ours, and `fd` is a live fd borrowed for the call.
    let r = unsafe { libc::syscall(libc::SYS_process_mrelease, fd, 0u32) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// [`mallopt(3)`](https://man7.org/linux/man-pages/man3/mallopt.3.html)
/// `M_ARENA_MAX`: caps glibc's malloc arenas at `n`. Every thread that
/// allocates otherwise gets an arena that reserves 64 MiB of address space;
/// under `mlockall(MCL_FUTURE)` that reservation counts as locked memory
/// although it is never resident. Returns whether glibc accepted it (other
/// C libraries: `false`).
pub(crate) fn limit_malloc_arenas(n: i32) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt takes two integers, touches no memory of ours,
        // and M_ARENA_MAX is a valid parameter for glibc.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = n;
        false
    }
}

/// [`sched_setscheduler(2)`](https://man7.org/linux/man-pages/man2/sched_setscheduler.2.html)
/// for the calling thread with `SCHED_FIFO` at `priority`, or back to
/// `SCHED_OTHER` when `priority` is `None`.
pub(crate) fn set_fifo(priority: Option<i32>) -> io::Result<()> {
    let (policy, prio) = match priority {
        Some(p) => (libc::SCHED_FIFO, p),
        None => (libc::SCHED_OTHER, 0),
    };
    let param = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: `param` is a valid, initialised sched_param that lives across
    // the call; pid 0 means the calling thread.
    let r = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// [`process_mrelease(2)`](https://man7.org/linux/man-pages/man2/process_mrelease.2.html)
/// on fd −1, to probe for the syscall without a target: `EBADF` means the
/// kernel has it, `ENOSYS` that it does not (or a seccomp filter hides it).
pub(crate) fn process_mrelease_probe() -> io::Error {
    // SAFETY: the syscall takes an fd number and a flags word and reads no
    // memory of ours; −1 is never a valid fd, so nothing is acted upon.
    let r = unsafe { libc::syscall(libc::SYS_process_mrelease, -1i32, 0u32) };
    if r == 0 {
        // Cannot happen with fd −1; report it as "present".
        io::Error::from_raw_os_error(libc::EBADF)
    } else {
        io::Error::last_os_error()
    }
}

/// [`mlock(2)`](https://man7.org/linux/man-pages/man2/mlock.2.html) of the
/// address range `[start, start + len)` of this process: its pages stay in
/// RAM (resident ones are locked as they are; others are faulted in first).
pub(crate) fn mlock_range(start: usize, len: usize) -> io::Result<()> {
    // SAFETY: mlock reads and writes no memory through the pointer; it only
    // changes how the kernel treats the pages of the range, and a range that
    // is not mapped is an error (ENOMEM), not undefined behaviour.
    unsafe { rustix::mm::mlock(start as *mut std::ffi::c_void, len) }.map_err(io::Error::from)
}

/// [`getrusage(2)`](https://man7.org/linux/man-pages/man2/getrusage.2.html)
/// `RUSAGE_SELF`: the major page faults (`ru_majflt`: pages read from disk)
/// of this process so far; 0 if the call fails.
pub(crate) fn major_faults() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `struct rusage` to the pointer, which
    // points to room for exactly that.
    let r = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if r != 0 {
        return 0;
    }
    // SAFETY: zero-initialised and then filled by the successful call; every
    // field of `rusage` is an integer, for which any bits are valid.
    let ru = unsafe { ru.assume_init() };
    u64::try_from(ru.ru_majflt).unwrap_or(0)
}

/// [`madvise(2)`](https://man7.org/linux/man-pages/man2/madvise.2.html)
/// `MADV_DONTNEED` over every read-only file mapping of this process that
/// holds no private copy of a page (`Anonymous: 0 kB` in
/// `/proc/self/smaps`): its pages leave this process's page tables, stay in
/// the page cache, and the next access maps the same bytes again (a minor
/// fault). Code that ran once at start-up then no longer counts in the
/// resident set. Returns the bytes that were resident in those mappings.
///
/// Call it while no other thread runs and nothing is locked.
pub(crate) fn drop_clean_file_pages() -> io::Result<usize> {
    let smaps = std::fs::read("/proc/self/smaps")?;
    let mut targets: Vec<(usize, usize, usize)> = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    let mut rss = 0usize;
    let kib = |l: &[u8]| -> usize {
        std::str::from_utf8(l)
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(usize::MAX)
    };
    for line in smaps.split(|b| *b == b'\n') {
        if let Some(v) = line.strip_prefix(b"Rss:") {
            rss = kib(v);
        } else if let Some(v) = line.strip_prefix(b"Anonymous:") {
            // Only a mapping none of whose pages is a private copy: dropping
            // it loses nothing.
            if let Some((s, e)) = current.take() {
                if kib(v) == 0 && rss > 0 && rss != usize::MAX {
                    targets.push((s, e, rss << 10));
                }
            }
        } else if let Some((range, rest)) = split_maps_header(line) {
            current = None;
            let mut f = rest.split(|b| *b == b' ').filter(|x| !x.is_empty());
            let perms = f.next().unwrap_or_default();
            let name = f.nth(3).unwrap_or_default();
            let read_only = perms.first() == Some(&b'r') && perms.get(1) == Some(&b'-');
            if read_only && name.first() == Some(&b'/') {
                current = Some(range);
            }
        }
    }
    let mut dropped = 0;
    for (s, e, bytes) in targets {
        // SAFETY: [s, e) is a whole read-only file mapping of this process
        // without private (anonymous) pages, found just above while no other
        // thread runs: nothing in it can be written, and after MADV_DONTNEED
        // every access reads the same bytes from the same file pages again.
        // No memory is freed or changed as seen by any Rust reference.
        let r = unsafe {
            rustix::mm::madvise(
                s as *mut std::ffi::c_void,
                e - s,
                rustix::mm::Advice::LinuxDontNeed,
            )
        };
        if r.is_ok() {
            dropped += bytes;
        }
    }
    Ok(dropped)
}

/// The address range of a `/proc/PID/maps`-style header line
/// (`start-end perms offset dev inode [name]`) and the rest of the line.
fn split_maps_header(line: &[u8]) -> Option<((usize, usize), &[u8])> {
    let sp = line.iter().position(|b| *b == b' ')?;
    let (range, rest) = line.split_at(sp);
    let dash = range.iter().position(|b| *b == b'-')?;
    let hex = |s: &[u8]| usize::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok();
    Some(((hex(&range[..dash])?, hex(&range[dash + 1..])?), rest))
}
