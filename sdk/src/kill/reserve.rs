//! File descriptors kept for kills.
//!
//! A kill opens files: a pidfd (`pidfd_open`), `/proc/PID/cgroup` for the
//! membership check, `cgroup.kill` or `cgroup.freeze`, `cgroup.procs`. If
//! the process has no fd left — a tenant created thousands of cgroups and
//! each tracked one holds fds — every one of those fails with `EMFILE` and
//! nothing can be killed. Two defences, both here:
//!
//! * [`tracked_cap`]: the loop tracks no more cgroups than the open-file
//!   limit allows while leaving [`KILL_FD_HEADROOM`] fds free for the
//!   decision (reading `/proc` and cgroup files) and the kill;
//! * [`FdReserve`]: a few placeholder fds (`O_PATH` opens of `/`), taken up
//!   front and closed just before a kill's own opens, then taken again, so
//!   even an fd leak elsewhere (another thread, a library) leaves the kill
//!   path its fds.

use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rustix::fs::{Mode, OFlags};

/// Placeholder fds an [`FdReserve`] holds.
pub(crate) const RESERVED_FDS: usize = 16;

/// Fds the cgroup cap leaves free beyond the tracked cgroups' own and the
/// process's fds at start: the decision's transient opens (`/proc/PID/*`,
/// cgroup files of a scope), a kill's (pidfds of a group's members), the
/// [`FdReserve`] and slack for the rest of the process.
pub(crate) const KILL_FD_HEADROOM: usize = 256;

/// How many cgroups may be tracked: `max_cgroups`, or fewer when the soft
/// open-file limit `nofile` (minus the `in_use` fds and
/// [`KILL_FD_HEADROOM`]) holds fewer at `per_cgroup` fds each. At least 1
/// (the managed root).
pub(crate) fn tracked_cap(
    max_cgroups: usize,
    nofile: Option<u64>,
    in_use: usize,
    per_cgroup: usize,
) -> usize {
    let Some(nofile) = nofile.and_then(|n| usize::try_from(n).ok()) else {
        return max_cgroups.max(1);
    };
    let free = nofile.saturating_sub(in_use.saturating_add(KILL_FD_HEADROOM));
    (free / per_cgroup.max(1)).clamp(1, max_cgroups.max(1))
}

/// [`tracked_cap`] for this process now: its soft `RLIMIT_NOFILE` and the
/// fds listed in `/proc/self/fd`.
pub(crate) fn tracked_cap_now(max_cgroups: usize, per_cgroup: usize) -> usize {
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let in_use = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
    tracked_cap(max_cgroups, nofile, in_use, per_cgroup)
}

/// Placeholder fds held for the kill path. See the module docs.
#[derive(Debug)]
pub(crate) struct FdReserve {
    // A mutex (never contended: one owner) so a host holding it stays `Sync`.
    spare: Mutex<Vec<OwnedFd>>,
    want: usize,
}

/// While alive, the reserve's fds are closed (free for the kill's opens);
/// dropping it takes them again (as many as can be had).
#[derive(Debug)]
pub(crate) struct Released<'a>(&'a FdReserve);

fn placeholder() -> Option<OwnedFd> {
    rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

impl FdReserve {
    /// Takes up to `want` placeholder fds (fewer if the process has fewer free).
    pub(crate) fn new(want: usize) -> Self {
        let r = FdReserve {
            spare: Mutex::new(Vec::with_capacity(want)),
            want,
        };
        r.refill();
        r
    }

    fn spare(&self) -> MutexGuard<'_, Vec<OwnedFd>> {
        self.spare.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refill(&self) {
        let mut spare = self.spare();
        while spare.len() < self.want {
            match placeholder() {
                Some(fd) => spare.push(fd),
                None => break,
            }
        }
    }

    /// Placeholders held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.spare().len()
    }

    /// Closes the placeholders until the returned guard is dropped. The
    /// vector keeps its storage: no allocation either way.
    pub(crate) fn release(&self) -> Released<'_> {
        self.spare().clear();
        Released(self)
    }
}

impl Drop for Released<'_> {
    fn drop(&mut self) {
        self.0.refill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_headroom_for_kills() {
        // 4096 fds, 100 in use, 3 per cgroup: (4096 - 100 - 256) / 3.
        assert_eq!(tracked_cap(100_000, Some(4096), 100, 3), 1246);
        assert_eq!(tracked_cap(1000, Some(4096), 100, 3), 1000);
        assert_eq!(tracked_cap(1000, None, 100, 3), 1000);
        // Nothing left: still the root.
        assert_eq!(tracked_cap(1000, Some(64), 100, 3), 1);
    }

    #[test]
    fn released_fds_come_back() {
        let r = FdReserve::new(4);
        assert_eq!(r.held(), 4);
        {
            let _g = r.release();
            assert_eq!(r.held(), 0);
        }
        assert_eq!(r.held(), 4);
    }
}
