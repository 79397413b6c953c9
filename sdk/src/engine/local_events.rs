//! `memory.events.local` of every managed cgroup through one inotify fd.
//!
//! Why: an fd per cgroup polled for `POLLPRI` cost 10,000 fds at 10,000
//! cgroups. When a counter changes, the kernel's `cgroup_file_notify()`
//! wakes pollers and also raises inotify `IN_MODIFY` on the file (from a
//! workqueue, after the pollers; rate-limited to about one per 10 ms per
//! file, like the wakeup). One inotify watch per file carries the same
//! signal without an fd. After each `IN_MODIFY` the file is read through
//! the cgroup's directory, opened for it (`KernelHost` keeps no directory
//! fd: `openat` + `fstat` of the directory, `openat` + `pread` of the file,
//! `close` of both), and compared
//! with the last counters, as [`MemoryEventsWatch`](crate::events::MemoryEventsWatch)
//! does with its own fd.
//!
//! The watch is added by name inside the directory the cgroup's handle
//! holds open (`events::watch_at`): by `fchdir` on a runner thread with a
//! working directory of its own, otherwise through `/proc/self/fd`.
//!
//! Each watch is added before its baseline is taken (read, or for the
//! siblings of a batch inferred zero from their parent's `memory.events`:
//! `runner_baseline.rs`), so an event is either in the baseline or raises
//! `IN_MODIFY` on a watch already there. (Reading first, as before, missed
//! an event between the read and the watch until the cgroup's next one.)
//!
//! A watch can fail where an fd would not: the per-user inotify watch
//! limit (`fs.inotify.max_user_watches`, 8192 by default before 5.11, and
//! shared with every other process of the user) gives `ENOSPC`. The runner
//! then watches that cgroup with an fd ([`add`](LocalEvents::add) says
//! so), so no cgroup goes unwatched.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;

use crate::cgroup::{Cgroup, MemoryEvents};
use crate::error::{Error, Result};
use crate::events::dir::inotify_record;
use crate::events::watch_at::{OwnCwd, add_watch_at};
use crate::util::io_err;

use super::kernel::KernelHost;
use super::trigger::Trigger;
use super::types::CgroupId;

/// Read buffer for the inotify fd: `IN_MODIFY` of a watched file carries
/// no name, so 16 bytes an event — 256 events a read.
const BUF: usize = 4096;

/// Every counter the SDK knows at zero: a baseline inferred, not read
/// (a counter the child's file lacks stays absent in its reads, and so in
/// every delta).
const ZERO: MemoryEvents = MemoryEvents {
    low: Some(0),
    high: Some(0),
    max: Some(0),
    oom: Some(0),
    oom_kill: Some(0),
    oom_group_kill: Some(0),
    sock_throttled: Some(0),
};

/// How baselines were taken: read from each file, or inferred zero from
/// the parent's `memory.events` (for the `start-up phases` line and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Baselines {
    /// `memory.events.local` read.
    pub(crate) read: u64,
    /// Inferred zero without a read.
    pub(crate) inferred: u64,
}

/// The `wd` of a [`Watched`] whose watch went to another id.
const NO_WATCH: i32 = -1;

#[derive(Debug, Clone, Copy)]
struct Watched {
    id: CgroupId,
    wd: i32,
    last: MemoryEvents,
}

/// Why [`LocalEvents::add`] did not watch a cgroup.
#[derive(Debug)]
pub(crate) enum AddError {
    /// No inotify watch could be added (watch limit, no such file on this
    /// filesystem …): watch the cgroup some other way.
    NoWatch(Errno),
    /// The file could not be read (gone, unsupported, malformed).
    Read(Error),
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct LocalEvents {
    inotify: OwnedFd,
    /// By cgroup slot (`CgroupId::index`).
    slots: Vec<Option<Watched>>,
    by_wd: HashMap<i32, u32>,
    buf: Box<[u8]>,
    baselines: Baselines,
}

impl LocalEvents {
    /// One inotify instance, tables with room for `n` cgroups.
    pub(crate) fn new(n: usize) -> Result<Self> {
        let inotify = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)
            .map_err(|e| Error::sys("inotify_init1", io_err(e)))?;
        Ok(LocalEvents {
            inotify,
            slots: Vec::with_capacity(n),
            by_wd: HashMap::with_capacity(n),
            buf: vec![0u8; BUF].into_boxed_slice(),
            baselines: Baselines::default(),
        })
    }

    /// Watches `memory.events.local` of `cg` as cgroup `id` (the file of
    /// the very directory `cg` holds open, through `/proc/self/fd`), then
    /// reads its counters as the baseline. In that order: an event before
    /// the read is in the baseline (history, as every event before the
    /// start), one after it raises `IN_MODIFY` on the watch already there,
    /// so none falls between the two unseen.
    pub(crate) fn add(
        &mut self,
        id: CgroupId,
        cg: &Cgroup,
        own: Option<&OwnCwd>,
    ) -> std::result::Result<(), AddError> {
        self.add_unread(id, cg, own)?;
        match cg.memory_events_local() {
            Ok(ev) => {
                self.set_baseline(id, Some(ev));
                Ok(())
            }
            Err(e) => {
                self.remove(id);
                Err(AddError::Read(e))
            }
        }
    }

    /// Watches `memory.events.local` of `cg` as cgroup `id` with an all-zero
    /// baseline, reading nothing: for the caller to confirm the baseline
    /// ([`set_baseline`](Self::set_baseline)) or drop the watch (see
    /// `baseline`). No such file: the file's own read error. The watch
    /// goes through the directory `cg` holds open, by `fchdir` with `own`
    /// (see [`add_watch_at`]).
    pub(crate) fn add_unread(
        &mut self,
        id: CgroupId,
        cg: &Cgroup,
        own: Option<&OwnCwd>,
    ) -> std::result::Result<(), AddError> {
        let wd = match add_watch_at(
            self.inotify.as_fd(),
            cg.dir_fd(),
            crate::cgroup::files::MEMORY_EVENTS_LOCAL,
            WatchFlags::MODIFY,
            own,
        ) {
            Ok(wd) => wd,
            // No memory controller here: the read names the file and says so.
            Err(Errno::NOENT) => {
                return Err(AddError::Read(cg.memory_events_local().err().unwrap_or(
                    Error::Unsupported {
                        path: cg.file_path(crate::cgroup::files::MEMORY_EVENTS_LOCAL),
                    },
                )));
            }
            Err(e) => return Err(AddError::NoWatch(e)),
        };
        let i = id.index();
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        if let Some(old) = self.slots[i].take() {
            self.forget(old);
        }
        // inotify gives a file watched already the watch it has: another
        // id reached the same directory (renamed since it was attached,
        // its removal not yet applied, as after an overflow). The watch
        // moves to this id, the one attached now; the other keeps none, so
        // its removal does not take this id's watch with it.
        if let Some(&other) = self.by_wd.get(&wd) {
            if let Some(w) = self.slots.get_mut(other as usize).and_then(Option::as_mut) {
                w.wd = NO_WATCH;
            }
        }
        self.slots[i] = Some(Watched { id, wd, last: ZERO });
        self.by_wd.insert(wd, id.idx);
        Ok(())
    }

    /// Sets the baseline of watched cgroup `id`: `Some` read from its file,
    /// `None` inferred zero (as [`add_unread`](Self::add_unread) left it).
    pub(crate) fn set_baseline(&mut self, id: CgroupId, read: Option<MemoryEvents>) {
        let Some(w) = self
            .slots
            .get_mut(id.index())
            .and_then(Option::as_mut)
            .filter(|w| w.id == id)
        else {
            return;
        };
        match read {
            Some(ev) => {
                w.last = ev;
                self.baselines.read += 1;
            }
            None => {
                w.last = ZERO;
                self.baselines.inferred += 1;
            }
        }
    }

    /// The counters `id` is compared with (for tests).
    #[cfg(test)]
    pub(crate) fn baseline(&self, id: CgroupId) -> Option<MemoryEvents> {
        self.get(id).map(|w| w.last)
    }

    /// How the baselines so far were taken.
    pub(crate) fn baselines(&self) -> Baselines {
        self.baselines
    }

    /// True when `id` is watched here.
    pub(crate) fn contains(&self, id: CgroupId) -> bool {
        self.get(id).is_some()
    }

    fn get(&self, id: CgroupId) -> Option<&Watched> {
        self.slots
            .get(id.index())
            .and_then(Option::as_ref)
            .filter(|w| w.id == id)
    }

    /// Stops watching `id` (removed from the tree).
    pub(crate) fn remove(&mut self, id: CgroupId) {
        let Some(slot) = self.slots.get_mut(id.index()) else {
            return;
        };
        if slot.is_some_and(|w| w.id == id) {
            if let Some(w) = slot.take() {
                self.forget(w);
            }
        }
    }

    fn forget(&mut self, w: Watched) {
        if w.wd == NO_WATCH {
            // Its watch went to another id (see `add_unread`).
            return;
        }
        if self.by_wd.get(&w.wd) == Some(&w.id.idx) {
            self.by_wd.remove(&w.wd);
        }
        // Fails with EINVAL when the kernel dropped the watch already.
        let _ = inotify::remove_watch(&self.inotify, w.wd);
    }

    /// Reads every queued inotify event and, for each watched file that
    /// changed, re-reads it and pushes a trigger with the counters that
    /// rose, through `host`'s handle of the cgroup. After a queue overflow
    /// every watched file is read again. Allocation-free.
    pub(crate) fn drain(
        &mut self,
        host: &KernelHost,
        seen: Instant,
        out: &mut Vec<(Trigger, Instant)>,
    ) {
        let mut overflow = false;
        loop {
            let n = match rustix::io::read(&self.inotify, &mut self.buf[..]) {
                Ok(0) | Err(Errno::AGAIN) => break,
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the memory.events.local inotify fd failed");
                    break;
                }
            };
            let mut pos = 0;
            while let Some((wd, mask, _, len)) = self.buf.get(pos..n).and_then(inotify_record) {
                pos += len;
                if mask.contains(ReadFlags::QUEUE_OVERFLOW) {
                    overflow = true;
                    continue;
                }
                let Some(slot) = self.by_wd.get(&wd).copied() else {
                    continue;
                };
                if mask.contains(ReadFlags::IGNORED) {
                    // The file is gone (its cgroup removed): the directory
                    // watch removes the cgroup.
                    self.by_wd.remove(&wd);
                    continue;
                }
                if mask.contains(ReadFlags::MODIFY) {
                    self.refresh(slot as usize, host, seen, out);
                }
            }
        }
        if overflow {
            tracing::warn!("memory.events.local inotify queue overflowed; reading every cgroup");
            for i in 0..self.slots.len() {
                self.refresh(i, host, seen, out);
            }
        }
    }

    fn refresh(
        &mut self,
        slot: usize,
        host: &KernelHost,
        seen: Instant,
        out: &mut Vec<(Trigger, Instant)>,
    ) {
        let Some(w) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        match host.handle(w.id).and_then(|cg| cg.memory_events_local()) {
            Ok(current) => {
                let delta = current.delta_since(&w.last);
                w.last = current;
                if delta.any() {
                    out.push((
                        Trigger::MemoryEvents {
                            cgroup: w.id,
                            delta,
                        },
                        seen,
                    ));
                }
            }
            // Removed meanwhile: its removal follows.
            Err(e) if e.is_gone() => {}
            Err(e) => tracing::warn!(error = %e, "reading memory.events.local failed"),
        }
    }
}

impl AsFd for LocalEvents {
    /// The inotify fd (readable when a watched file changed).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::CgroupFs;

    /// The raw inotify events queued now: `(wd, mask)`.
    fn queued(l: &LocalEvents) -> Vec<(i32, ReadFlags)> {
        let mut buf = [0u8; 4096];
        let mut out = Vec::new();
        while let Ok(n) = rustix::io::read(&l.inotify, &mut buf) {
            let mut pos = 0;
            while let Some((wd, mask, _, len)) = buf.get(pos..n).and_then(inotify_record) {
                pos += len;
                out.push((wd, mask));
            }
        }
        out
    }

    #[test]
    fn a_file_reached_by_a_second_id_keeps_its_watch_when_the_first_goes() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("a");
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("memory.events.local");
        std::fs::write(&file, "low 0\n").unwrap();
        let fs = CgroupFs::from_dir_unchecked(d.path());
        // Two handles of one directory: the cgroup as first attached, and
        // again under the id it got when found anew (renamed meanwhile).
        let (first, second) = (CgroupId::for_tests(1), CgroupId::for_tests(2));
        let mut l = LocalEvents::new(4).unwrap();
        l.add_unread(first, &fs.open(&dir).unwrap(), None).unwrap();
        l.add_unread(second, &fs.open(&dir).unwrap(), None).unwrap();
        let wd = l.get(second).unwrap().wd;
        assert_eq!(l.by_wd.get(&wd), Some(&second.idx));
        // The first id's removal leaves the second id's watch in place.
        l.remove(first);
        assert!(l.contains(second));
        std::fs::write(&file, "low 1\n").unwrap();
        let events = queued(&l);
        assert!(
            events
                .iter()
                .any(|&(w, m)| w == wd && m.contains(ReadFlags::MODIFY)),
            "no IN_MODIFY on the second id's watch: {events:?}"
        );
        assert!(
            !events.iter().any(|&(_, m)| m.contains(ReadFlags::IGNORED)),
            "the watch was removed: {events:?}"
        );
        // Its own removal does remove it.
        l.remove(second);
        assert!(l.by_wd.is_empty());
        assert!(
            queued(&l)
                .iter()
                .any(|&(w, m)| w == wd && m.contains(ReadFlags::IGNORED))
        );
    }
}
