//! The only module with `unsafe` code: raw system calls that neither std nor
//! rustix wrap. Everything else in the crate calls through here or through
//! rustix's safe API.
//!
//! Each function names its syscall and links the man page.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

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

/// [`unshare(2)`](https://man7.org/linux/man-pages/man2/unshare.2.html)
/// `CLONE_FS`: the calling thread gets a filesystem context of its own
/// (working directory, root, umask), so its `chdir`/`fchdir` moves no other
/// thread's working directory, and theirs no longer move its.
pub(crate) fn unshare_fs() -> io::Result<()> {
    // SAFETY: rustix marks `unshare` unsafe because `CLONE_FILES` would give
    // the thread a private fd table, in which fds other threads hold could
    // be stale. Only `CLONE_FS` is passed: the fd table stays shared; the
    // working directory, root and umask are plain values no memory safety
    // depends on.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
        .map_err(io::Error::from)
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

/// [`prctl(2)`](https://man7.org/linux/man-pages/man2/prctl.2.html)
/// `PR_SET_THP_DISABLE`: no transparent huge pages for this process from
/// now on (inherited by children, kept across `execve`). With THP on
/// `always`, touching one byte of a large allocation can fault in 2 MiB.
pub(crate) fn disable_thp() -> io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes integers only and touches no memory
    // of ours.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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

// ----- spawning into a cgroup (see `crate::spawn`) -----

use std::ffi::CStr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::raw::c_char;

/// `CLONE_PIDFD` from `linux/sched.h`.
const CLONE_PIDFD: u64 = 0x1000;
/// `CLONE_INTO_CGROUP` from `linux/sched.h` (5.7+).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of `linux/sched.h` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`, 88 bytes).
/// Defined here rather than taken from libc so the layout is the kernel's on every target.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Everything the child of a fork needs, prepared by the parent, so that the
/// child only makes async-signal-safe system calls: after a fork in a
/// multi-threaded process the child may not allocate or take locks (another
/// thread may have held the allocator's lock at the moment of the fork).
pub(crate) struct ExecPlan<'a> {
    /// The program, already resolved against `PATH`.
    pub path: &'a CStr,
    /// NULL-terminated argument vector (pointers into CStrings the caller keeps alive).
    pub argv: &'a [*const c_char],
    /// NULL-terminated environment.
    pub envp: &'a [*const c_char],
    /// Fds to install as 0, 1, 2 (−1: inherit). The caller makes sure none of them is 0, 1 or 2.
    pub stdio: [RawFd; 3],
    /// `cgroup.procs` of the target, opened for writing, or −1 when the kernel
    /// already placed the child (`CLONE_INTO_CGROUP`).
    pub procs_fd: RawFd,
    /// Write end of a `CLOEXEC` pipe: the child reports a failure before or in
    /// `execve` as 5 bytes (step, errno); a successful exec closes it silently.
    pub err_fd: RawFd,
}

/// The step of the child at which it failed (first byte of the error report).
pub(crate) const STEP_JOIN_CGROUP: u8 = 1;
/// Installing stdio fds failed.
pub(crate) const STEP_STDIO: u8 = 2;
/// `execve` failed.
pub(crate) const STEP_EXEC: u8 = 3;

/// Reports `step` and the current errno on the error pipe and exits, without
/// returning. Async-signal-safe.
fn child_fail(err_fd: RawFd, step: u8) -> ! {
    let e = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let b = e.to_le_bytes();
    let msg = [step, b[0], b[1], b[2], b[3]];
    // SAFETY: `msg` is a live 5-byte buffer; write(2) on any fd number is
    // memory-safe (a bad fd only fails).
    let _ = unsafe { libc::write(err_fd, msg.as_ptr().cast(), msg.len()) };
    // SAFETY: _exit(2) ends the child without running atexit handlers or
    // touching the parent's state; always sound.
    unsafe { libc::_exit(127) }
}

/// The child's side of a spawn: join the cgroup (fallback path), install
/// stdio, reset SIGPIPE (Rust ignores it in the parent and an ignored
/// disposition survives exec), exec. Only async-signal-safe calls, no
/// allocation, no locks.
fn child_exec(plan: &ExecPlan<'_>) -> ! {
    if plan.procs_fd >= 0 {
        // Writing "0" moves the writer itself (cgroup.procs, cgroup v2).
        // SAFETY: a live 1-byte static buffer; write(2) is async-signal-safe.
        let n = unsafe { libc::write(plan.procs_fd, b"0".as_ptr().cast(), 1) };
        if n != 1 {
            child_fail(plan.err_fd, STEP_JOIN_CGROUP);
        }
    }
    for (target, &fd) in (0..).zip(plan.stdio.iter()) {
        if fd < 0 {
            continue;
        }
        // SAFETY: dup2(2) on fd numbers is memory-safe and async-signal-safe;
        // the new fd does not carry FD_CLOEXEC.
        if unsafe { libc::dup2(fd, target) } < 0 {
            child_fail(plan.err_fd, STEP_STDIO);
        }
    }
    // SAFETY: signal(2) with SIG_DFL installs no handler code; async-signal-safe.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // SAFETY: `path` is a NUL-terminated string and `argv`/`envp` are
    // NULL-terminated arrays of pointers to NUL-terminated strings, all kept
    // alive by the parent's frame (the child has a copy of it); execve(2)
    // only returns on failure.
    unsafe { libc::execve(plan.path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr()) };
    child_fail(plan.err_fd, STEP_EXEC)
}

/// [`clone3(2)`](https://man7.org/linux/man-pages/man2/clone3.2.html) with
/// `CLONE_INTO_CGROUP | CLONE_PIDFD` (5.7+): the child starts life inside the
/// cgroup of `cgroup_dir` (never charged to the parent's cgroup, not even for
/// its first page) and the parent gets a pidfd. The child then runs `plan`
/// (stdio, exec). Returns the child's PID and pidfd.
///
/// `ENOSYS` (no clone3, or a seccomp profile that hides it), `E2BIG` or
/// `EINVAL` (a kernel that does not know `CLONE_INTO_CGROUP`) mean: use
/// [`fork_exec`] with `procs_fd` instead.
pub(crate) fn clone3_into_cgroup(
    cgroup_dir: BorrowedFdRaw,
    plan: &ExecPlan<'_>,
) -> io::Result<(i32, OwnedFd)> {
    let mut pidfd: i32 = -1;
    let args = CloneArgs {
        flags: CLONE_PIDFD | CLONE_INTO_CGROUP,
        pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_dir.0 as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size we pass and lives
    // across the call; `pidfd` is a live i32 the kernel writes. Without
    // CLONE_VM the child gets a copy of our address space and runs only
    // `child_exec` (async-signal-safe calls, no allocation) before execve or
    // _exit, which is the same contract as fork(2) in a threaded process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of!(args),
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match r {
        0 => child_exec(plan),
        pid if pid > 0 => {
            // SAFETY: with CLONE_PIDFD the kernel stored a new fd, owned by
            // nobody else, in `pidfd`.
            let fd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok((pid as i32, fd))
        }
        _ => Err(io::Error::last_os_error()),
    }
}

/// A raw directory fd number borrowed for one call (so `sys` callers need not
/// hand out `BorrowedFd` lifetimes across the fork).
#[derive(Clone, Copy)]
pub(crate) struct BorrowedFdRaw(pub RawFd);

impl<'a> From<BorrowedFd<'a>> for BorrowedFdRaw {
    fn from(fd: BorrowedFd<'a>) -> Self {
        BorrowedFdRaw(fd.as_raw_fd())
    }
}

/// [`fork(2)`](https://man7.org/linux/man-pages/man2/fork.2.html), then in
/// the child: write `0` to `plan.procs_fd` (`cgroup.procs` of the target), so
/// the child joins the cgroup before `execve` and the program is charged there
/// from its first instruction. The fallback for kernels before 5.7 and for
/// sandboxes that block clone3. Returns the child's PID.
pub(crate) fn fork_exec(plan: &ExecPlan<'_>) -> io::Result<i32> {
    // SAFETY: the child runs only `child_exec` (async-signal-safe calls, no
    // allocation, no locks) before execve or _exit.
    let pid = unsafe { libc::fork() };
    match pid {
        0 => child_exec(plan),
        p if p > 0 => Ok(p),
        _ => Err(io::Error::last_os_error()),
    }
}

/// [`waitpid(2)`](https://man7.org/linux/man-pages/man2/waitpid.2.html) for
/// one child: its raw wait status once it ended (`None` with `nohang` while
/// it runs). Retries on `EINTR`.
pub(crate) fn waitpid(pid: i32, nohang: bool) -> io::Result<Option<i32>> {
    let flags = if nohang { libc::WNOHANG } else { 0 };
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a live c_int the kernel writes; waitpid on a
        // PID touches no other memory of ours.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r == pid {
            return Ok(Some(status));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
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
