//! Inotify watches on a name inside a directory held open.
//!
//! Why this exists: [`inotify_add_watch(2)`] takes a path, not a directory
//! fd, yet a watch must land on the very directory a handle holds open, not
//! on whatever a tenant has put at its path since (a cgroup removed and
//! re-created under the same name). Two paths lead through the open fd:
//!
//! - `/proc/self/fd/N/name`: works on any thread, but procfs looks up
//!   `self`, the pid, `fd` and `N` again for every watch. At 10,000 sibling
//!   cgroups under TCG (6.1) a watch of `memory.events.local` cost 19–33 µs
//!   that way.
//! - `fchdir(N)`, then `name` relative to the working directory: just as
//!   exact, and about 12–14 µs plus 1.8 µs for the `fchdir` in the same
//!   guest. But a working directory is shared by every thread of the
//!   process, so `fchdir` is only allowed on a thread with a filesystem
//!   context of its own (`unshare(CLONE_FS)`): an [`OwnCwd`].
//!
//! Giving a thread its own working directory changes that thread for good
//! (a later `chdir` on it no longer moves the other threads, nor theirs
//! it), so a library does it only when asked: the runner makes an
//! [`OwnCwd`] only with `RunnerConfig::own_cwd` (on in
//! `RunnerConfig::daemon`). It is used only on the thread that made it (a
//! runner moved to another thread falls back to `/proc/self/fd`, which
//! moves nothing), and [`OwnCwd::restore`] puts the working directory back
//! before the runner's calls return.
//!
//! [`inotify_add_watch(2)`]: https://man7.org/linux/man-pages/man2/inotify_add_watch.2.html

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::inotify::{self, WatchFlags};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::util::fmt_u64;

/// The calling thread's own working directory (see the module docs): made
/// by [`OwnCwd::new`] on the thread it is for.
#[derive(Debug)]
pub(crate) struct OwnCwd {
    /// The thread it was made on (the only one whose working directory is
    /// its own).
    tid: rustix::thread::Pid,
    /// The working directory when it was made (`O_PATH`), to go back to.
    home: OwnedFd,
    /// Whether the working directory left `home` since the last restore.
    moved: AtomicBool,
}

impl OwnCwd {
    /// Gives the calling thread a filesystem context of its own
    /// ([`unshare(2)`](https://man7.org/linux/man-pages/man2/unshare.2.html)
    /// `CLONE_FS`) and remembers its working directory. Errors: the
    /// working directory cannot be opened, or `unshare` is refused (a
    /// seccomp filter may): then nothing changed.
    pub(crate) fn new() -> std::io::Result<Self> {
        let home = rustix::fs::open(
            c".",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        crate::sys::unshare_fs()?;
        Ok(OwnCwd {
            tid: rustix::thread::gettid(),
            home,
            moved: AtomicBool::new(false),
        })
    }

    /// Whether the calling thread is the one whose working directory this
    /// is: only there does [`add_watch_at`] use it.
    pub(crate) fn usable(&self) -> bool {
        rustix::thread::gettid() == self.tid
    }

    /// Puts the working directory back where it was when this was made, if
    /// a watch moved it (on the owning thread; elsewhere nothing moved).
    pub(crate) fn restore(&self) {
        if self.usable() && self.moved.swap(false, Ordering::Relaxed) {
            // Fails only if `home` was removed: the directory stays private
            // to this thread either way.
            let _ = rustix::process::fchdir(&self.home);
        }
    }
}

/// Watches `name` (`"."`: the directory itself) inside the directory `dir`
/// holds open, on `inotify`: with `own` on its thread by `fchdir` and the
/// bare name, otherwise through `/proc/self/fd`. The working directory is
/// left in `dir` until [`OwnCwd::restore`].
pub(crate) fn add_watch_at(
    inotify: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: &CStr,
    mask: WatchFlags,
    own: Option<&OwnCwd>,
) -> rustix::io::Result<i32> {
    if let Some(own) = own.filter(|o| o.usable()) {
        own.moved.store(true, Ordering::Relaxed);
        if rustix::process::fchdir(dir).is_ok() {
            return inotify::add_watch(inotify, name, mask);
        }
    }
    let mut b = [0u8; 32 + crate::events::dir::NAME_MAX + 2];
    let path = proc_fd_path(&mut b, dir, name.to_bytes()).ok_or(Errno::NAMETOOLONG)?;
    inotify::add_watch(inotify, path, mask)
}

/// `/proc/self/fd/N` for `fd` (and `/name` if `name` is not empty), in
/// `buf`, as a C string; `None` if it does not fit.
pub(crate) fn proc_fd_path<'b>(
    buf: &'b mut [u8],
    fd: BorrowedFd<'_>,
    name: &[u8],
) -> Option<&'b CStr> {
    let raw = u64::try_from(fd.as_raw_fd()).ok()?;
    let mut n = [0u8; 20];
    let digits = fmt_u64(&mut n, raw);
    let mut len = 0usize;
    let mut put = |s: &[u8]| -> Option<()> {
        buf.get_mut(len..len + s.len())?.copy_from_slice(s);
        len += s.len();
        Some(())
    };
    put(b"/proc/self/fd/")?;
    put(digits)?;
    if !name.is_empty() {
        put(b"/")?;
        put(name)?;
    }
    put(b"\0")?;
    CStr::from_bytes_with_nul(buf.get(..len)?).ok()
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use rustix::fs::inotify::CreateFlags;

    use super::*;

    fn inotify() -> OwnedFd {
        inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).unwrap()
    }

    #[test]
    fn proc_fd_paths() {
        let f = std::fs::File::open("/").unwrap();
        let mut b = [0u8; 64];
        let p = proc_fd_path(&mut b, f.as_fd(), b"").unwrap();
        assert_eq!(
            p.to_str().unwrap(),
            format!("/proc/self/fd/{}", f.as_raw_fd())
        );
        let p = proc_fd_path(&mut b, f.as_fd(), b"memory.events.local").unwrap();
        assert_eq!(
            p.to_str().unwrap(),
            format!("/proc/self/fd/{}/memory.events.local", f.as_raw_fd())
        );
        let mut small = [0u8; 16];
        assert!(
            proc_fd_path(&mut small, f.as_fd(), b"x").is_none(),
            "too long"
        );
    }

    /// Both ways land on the file of the directory held open, even after
    /// its path leads elsewhere; the working directory comes back.
    #[test]
    fn a_watch_lands_in_the_open_directory_not_at_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("f"), "").unwrap();
        let dir = rustix::fs::open(
            &a,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        // The path now names another directory with the same file.
        std::fs::rename(&a, tmp.path().join("moved")).unwrap();
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("f"), "").unwrap();
        // A thread of its own, so the test process's cwd stays put.
        std::thread::spawn(move || {
            let own = OwnCwd::new().unwrap();
            let before = std::env::current_dir().unwrap();
            for own in [None, Some(&own)] {
                let ino = inotify();
                let wd =
                    add_watch_at(ino.as_fd(), dir.as_fd(), c"f", WatchFlags::MODIFY, own).unwrap();
                std::fs::write(tmp.path().join("a/f"), "x").unwrap();
                let mut buf = [0u8; 256];
                assert_eq!(
                    rustix::io::read(&ino, &mut buf[..]),
                    Err(Errno::AGAIN),
                    "no event from the file now at the path"
                );
                std::fs::write(tmp.path().join("moved/f"), "x").unwrap();
                let n = rustix::io::read(&ino, &mut buf[..]).unwrap();
                let (got, _, _, _) = crate::events::dir::inotify_record(&buf[..n]).unwrap();
                assert_eq!(got, wd, "the event of the open directory's file");
            }
            assert_ne!(std::env::current_dir().unwrap(), before, "fchdir moved it");
            own.restore();
            assert_eq!(std::env::current_dir().unwrap(), before, "restored");
        })
        .join()
        .unwrap();
    }

    /// On another thread than its own, an `OwnCwd` moves no working
    /// directory: the watch goes through `/proc/self/fd`.
    #[test]
    fn another_thread_does_not_fchdir() {
        let own = OwnCwd::new_for_tests_elsewhere();
        let tmp = tempfile::tempdir().unwrap();
        let dir = rustix::fs::open(
            tmp.path(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let before = std::env::current_dir().unwrap();
        let ino = inotify();
        add_watch_at(
            ino.as_fd(),
            dir.as_fd(),
            c".",
            WatchFlags::CREATE,
            Some(&own),
        )
        .unwrap();
        assert_eq!(std::env::current_dir().unwrap(), before);
        assert!(!own.moved.load(Ordering::Relaxed));
    }

    impl OwnCwd {
        /// An `OwnCwd` made on another thread (which then ended).
        fn new_for_tests_elsewhere() -> Self {
            std::thread::spawn(|| OwnCwd::new().unwrap())
                .join()
                .unwrap()
        }
    }
}
