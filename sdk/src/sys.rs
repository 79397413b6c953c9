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
