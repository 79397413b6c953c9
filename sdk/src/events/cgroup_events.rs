//! `cgroup.events` (`populated`, `frozen`) as an event source.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use crate::cgroup::files::CGROUP_EVENTS;
use crate::cgroup::{Cgroup, CgroupEvents, CgroupFile, parse};
use crate::error::Result;

use super::{ReadFail, SourceFailure, pread_all};

const BUF: usize = 256;

/// A change of `cgroup.events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CgroupEventsChange {
    /// The previous reading.
    pub previous: CgroupEvents,
    /// The reading that differs from it.
    pub current: CgroupEvents,
}

impl CgroupEventsChange {
    /// `populated` went from 1 to 0: the last process of the cgroup and its
    /// descendants exited. After a kill this says the victim group is gone.
    pub fn became_unpopulated(&self) -> bool {
        self.previous.populated == Some(true) && self.current.populated == Some(false)
    }

    /// `populated` went from 0 to 1.
    pub fn became_populated(&self) -> bool {
        self.previous.populated == Some(false) && self.current.populated == Some(true)
    }

    /// `frozen` went from 0 to 1: a freeze requested through
    /// `cgroup.freeze` took effect.
    pub fn froze(&self) -> bool {
        self.previous.frozen == Some(false) && self.current.frozen == Some(true)
    }

    /// `frozen` went from 1 to 0.
    pub fn thawed(&self) -> bool {
        self.previous.frozen == Some(true) && self.current.frozen == Some(false)
    }
}

/// Watches `cgroup.events` of one cgroup for `populated`/`frozen` changes.
///
/// Same mechanics as [`MemoryEventsWatch`](super::MemoryEventsWatch): the
/// open fd is woken with `POLLPRI`, [`refresh`](Self::refresh) re-reads it
/// at offset 0 and compares. The kernel notifies each transition, but
/// rate-limited and coalesced: a quick 1 → 0 → 1 may show up as no change.
///
/// ```no_run
/// use oomkit::Cgroup;
/// use oomkit::events::{CgroupEventsWatch, EventKind, Watcher};
///
/// # fn main() -> oomkit::Result<()> {
/// let victim = Cgroup::open("/sys/fs/cgroup/batch.slice/job-42")?;
/// let mut w = Watcher::new()?;
/// let t = w.add_cgroup_events(&victim)?;
/// victim.write_kill()?;
/// 'wait: loop {
///     for ev in w.wait(None)? {
///         if let EventKind::CgroupEvents(ch) = ev.kind {
///             if ev.token == t && ch.current.populated == Some(false) {
///                 break 'wait;
///             }
///         }
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct CgroupEventsWatch {
    file: CgroupFile,
    last: CgroupEvents,
    /// Allocated once at creation (boxed to keep the source small in the
    /// watcher's slab).
    buf: Box<[u8; BUF]>,
}

impl CgroupEventsWatch {
    /// Opens `cgroup.events` of `cg` and takes the baseline reading.
    pub fn open(cg: &Cgroup) -> Result<Self> {
        let file = cg.open_file(CGROUP_EVENTS)?;
        let mut w = CgroupEventsWatch {
            file,
            last: CgroupEvents::default(),
            buf: Box::new([0; BUF]),
        };
        w.last = w.read_raw().map_err(|e| e.into_error(w.file.path()))?;
        Ok(w)
    }

    fn read_raw(&mut self) -> Result<CgroupEvents, ReadFail> {
        let data = pread_all(&self.file, &mut self.buf[..])?;
        parse::cgroup_events(data).map_err(|e| ReadFail::Failed(SourceFailure::Parse(e)))
    }

    pub(crate) fn refresh_raw(&mut self) -> Result<Option<CgroupEventsChange>, ReadFail> {
        let current = self.read_raw()?;
        let previous = self.last;
        self.last = current;
        Ok((current != previous).then_some(CgroupEventsChange { previous, current }))
    }

    /// Re-reads the file; `Ok(None)` if nothing changed since the previous
    /// reading. Does not allocate unless it fails.
    pub fn refresh(&mut self) -> Result<Option<CgroupEventsChange>> {
        self.refresh_raw()
            .map_err(|e| e.into_error(self.file.path()))
    }

    /// The latest reading.
    pub fn last(&self) -> &CgroupEvents {
        &self.last
    }

    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

impl AsFd for CgroupEventsWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::CgroupFs;

    #[test]
    fn transitions() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cgroup.events");
        std::fs::write(&f, b"populated 1\nfrozen 0\n").unwrap();
        let cg = CgroupFs::from_dir_unchecked(dir.path()).root().unwrap();
        let mut w = CgroupEventsWatch::open(&cg).unwrap();
        assert_eq!(w.refresh().unwrap(), None);
        std::fs::write(&f, b"populated 1\nfrozen 1\n").unwrap();
        let ch = w.refresh().unwrap().unwrap();
        assert!(ch.froze() && !ch.thawed() && !ch.became_unpopulated());
        std::fs::write(&f, b"populated 0\nfrozen 0\n").unwrap();
        let ch = w.refresh().unwrap().unwrap();
        assert!(ch.became_unpopulated() && ch.thawed() && !ch.became_populated());
        assert_eq!(w.last().populated, Some(false));
    }
}
