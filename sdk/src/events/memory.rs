//! `memory.events` / `memory.events.local` as an event source.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use crate::cgroup::files::{MEMORY_EVENTS, MEMORY_EVENTS_LOCAL};
use crate::cgroup::{Cgroup, CgroupFile, MemoryEventKind, MemoryEvents, parse};
use crate::error::Result;

use super::{ReadFail, SourceFailure, pread_all};

/// Size of the read buffer: `memory.events` is about 120 bytes today; new
/// keys keep appearing, so leave plenty of room.
const BUF: usize = 1024;

/// Which of the two event files to watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Scope {
    /// `memory.events`: this cgroup and all its descendants. `oom_kill`
    /// rises here when a process in any descendant is killed.
    Hierarchical,
    /// `memory.events.local`: this cgroup alone.
    Local,
}

/// What changed in `memory.events(.local)` since the previous reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct MemoryEventsChange {
    /// The counters as just read.
    pub current: MemoryEvents,
    /// How much each counter rose since the previous reading (`None` for a
    /// counter this kernel does not report). A counter that went down is
    /// treated as reset (see [`MemoryEvents::delta_since`]).
    pub delta: MemoryEvents,
}

impl MemoryEventsChange {
    /// How much `kind` rose (0 if it did not, or is not reported).
    pub fn rose_by(&self, kind: MemoryEventKind) -> u64 {
        self.delta.get(kind).unwrap_or(0)
    }

    /// The counters that rose, with the amount, in file order.
    pub fn rose(&self) -> impl Iterator<Item = (MemoryEventKind, u64)> + '_ {
        MemoryEventKind::ALL
            .into_iter()
            .filter_map(|k| self.delta.get(k).filter(|v| *v > 0).map(|v| (k, v)))
    }
}

/// Watches `memory.events` or `memory.events.local` of one cgroup.
///
/// The file is opened once; the kernel wakes pollers of that fd with
/// `POLLPRI` when a counter changes (rate-limited to about one wakeup per
/// 10 ms, with changes in between coalesced). After each wakeup,
/// [`refresh`](Self::refresh) `pread`s the file at offset 0 into a fixed
/// buffer, parses it without allocating and reports which counters rose
/// and by how much.
///
/// Use it through a [`Watcher`](super::Watcher), or poll its fd
/// ([`AsFd`]) for `POLLPRI` yourself and call `refresh` after each wakeup.
///
/// ```no_run
/// use oomkit::Cgroup;
/// use oomkit::events::{MemoryEventKind, MemoryEventsWatch, Scope};
/// use rustix::event::{PollFd, PollFlags, poll};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cg = Cgroup::open("/sys/fs/cgroup/batch.slice")?;
/// let mut w = MemoryEventsWatch::open(&cg, Scope::Local)?;
/// loop {
///     let mut fds = [PollFd::new(&w, PollFlags::PRI)];
///     poll(&mut fds, None)?;
///     if let Some(ch) = w.refresh()? {
///         for (kind, by) in ch.rose() {
///             println!("{} +{by}", kind.key());
///         }
///         if ch.rose_by(MemoryEventKind::Oom) > 0 {
///             println!("batch.slice hit memory.max");
///         }
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryEventsWatch {
    file: CgroupFile,
    scope: Scope,
    last: MemoryEvents,
}

impl MemoryEventsWatch {
    /// Opens `memory.events` (or `.local`) of `cg` and takes the baseline
    /// reading. Reading once through the fd also acknowledges any change the
    /// kernel flagged before we opened it, so the first wakeup is a real one.
    pub fn open(cg: &Cgroup, scope: Scope) -> Result<Self> {
        let name = match scope {
            Scope::Hierarchical => MEMORY_EVENTS,
            Scope::Local => MEMORY_EVENTS_LOCAL,
        };
        let file = cg.open_file(name)?;
        let mut w = MemoryEventsWatch {
            file,
            scope,
            last: MemoryEvents::default(),
        };
        w.last = w.read_raw().map_err(|e| e.into_error(w.file.path()))?;
        Ok(w)
    }

    fn read_raw(&mut self) -> Result<MemoryEvents, ReadFail> {
        // On the stack: a buffer per watch would cost 1 KiB per cgroup.
        let mut buf = [0u8; BUF];
        let data = pread_all(&self.file, &mut buf[..])?;
        parse::memory_events(data).map_err(|e| ReadFail::Failed(SourceFailure::Parse(e)))
    }

    /// The allocation-free core of [`refresh`](Self::refresh).
    pub(crate) fn refresh_raw(&mut self) -> Result<Option<MemoryEventsChange>, ReadFail> {
        let current = self.read_raw()?;
        let delta = current.delta_since(&self.last);
        self.last = current;
        Ok(delta.any().then_some(MemoryEventsChange { current, delta }))
    }

    /// Re-reads the file and diffs it against the previous reading.
    ///
    /// `Ok(None)` when no counter rose (a spurious or already-seen wakeup).
    /// [`Error::CgroupGone`](crate::Error::CgroupGone) once the cgroup was
    /// removed. Does not allocate unless it fails.
    pub fn refresh(&mut self) -> Result<Option<MemoryEventsChange>> {
        self.refresh_raw()
            .map_err(|e| e.into_error(self.file.path()))
    }

    /// The latest reading.
    pub fn last(&self) -> &MemoryEvents {
        &self.last
    }

    /// Which file is watched.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

impl AsFd for MemoryEventsWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::CgroupFs;
    use crate::error::{ParseError, ParseErrorKind};

    #[test]
    fn refresh_reports_only_rises() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("memory.events.local"),
            b"low 0\nhigh 1\nmax 0\noom 0\noom_kill 0\n",
        )
        .unwrap();
        let cg = CgroupFs::from_dir_unchecked(dir.path()).root().unwrap();
        let mut w = MemoryEventsWatch::open(&cg, Scope::Local).unwrap();
        assert_eq!(w.last().high, Some(1));
        assert_eq!(w.refresh_raw(), Ok(None));
        std::fs::write(
            dir.path().join("memory.events.local"),
            b"low 0\nhigh 4\nmax 0\noom 1\noom_kill 0\n",
        )
        .unwrap();
        let ch = w.refresh_raw().unwrap().unwrap();
        assert_eq!(
            ch.rose().collect::<Vec<_>>(),
            vec![(MemoryEventKind::High, 3), (MemoryEventKind::Oom, 1)]
        );
        // Garbage: a Copy parse failure, and the previous reading is kept.
        std::fs::write(dir.path().join("memory.events.local"), b"high x\n").unwrap();
        assert_eq!(
            w.refresh_raw(),
            Err(ReadFail::Failed(SourceFailure::Parse(ParseError::new(
                1,
                ParseErrorKind::InvalidNumber
            ))))
        );
        assert_eq!(w.last().high, Some(4));
    }
}
