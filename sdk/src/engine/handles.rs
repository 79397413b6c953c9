//! The cgroups a [`KernelHost`](super::KernelHost) has attached, held
//! without an fd each: a [`ParkedCgroup`] per cgroup (paths and directory
//! identity), opened on demand and closed after use.
//!
//! Why: a directory fd per cgroup cost as many fds as cgroups (10,000 at
//! 10,000), for a directory most cgroups never need between attach and
//! removal: the snapshot reads `memory.current` through its own kept fd,
//! events come through inotify. The directory is needed for a decision's
//! detail reads, a kill, a limit: one `openat` + `fstat` then
//! (`ParkedCgroup::open` says why the `fstat`). The handle of the cgroup
//! attached last stays open until the next attach, so attaching (xattrs,
//! a raised limit's record, its event watch) opens each directory once.
//! Also here: which optional files a cgroup has ([`Present`]), learnt at
//! attach so no read goes through its directory to find a file missing.

use std::ops::Deref;

use crate::cgroup::{Cgroup, ParkedCgroup, files};
use crate::error::{Error, Result};

use super::types::CgroupId;

/// A cgroup's directory, open while this lives (or the kept handle of the
/// cgroup attached last).
#[derive(Debug)]
pub(crate) enum Handle<'a> {
    Kept(&'a Cgroup),
    Opened(Cgroup),
}

impl Deref for Handle<'_> {
    type Target = Cgroup;

    fn deref(&self) -> &Cgroup {
        match self {
            Handle::Kept(c) => c,
            Handle::Opened(c) => c,
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Handles {
    parked: Vec<Option<ParkedCgroup>>,
    last: Option<(CgroupId, Cgroup)>,
    /// The link count of the kept handle's directory, from its `fstat`.
    last_links: u64,
}

impl Handles {
    /// Room for `n` cgroups.
    pub(crate) fn with_capacity(n: usize) -> Self {
        Handles {
            parked: Vec::with_capacity(n),
            last: None,
            last_links: 0,
        }
    }

    /// Records `cg` as cgroup `id`, `st` its directory's `fstat` (it stays
    /// open until the next attach).
    pub(crate) fn insert(&mut self, id: CgroupId, cg: Cgroup, st: &rustix::fs::Stat) {
        let parked = cg.park_as(st);
        let i = id.index();
        if self.parked.len() <= i {
            self.parked.resize_with(i + 1, || None);
        }
        self.parked[i] = Some(parked);
        self.last = Some((id, cg));
        #[allow(clippy::useless_conversion)]
        let links = u64::from(st.st_nlink);
        self.last_links = links;
    }

    /// The link count of `id`'s directory when it was attached, if it is
    /// the kept handle's: kernfs counts subdirectories in it, so 2 means
    /// none.
    pub(crate) fn last_links(&self, id: CgroupId) -> Option<u64> {
        self.last
            .as_ref()
            .filter(|(l, _)| *l == id)
            .map(|_| self.last_links)
    }

    /// Forgets cgroup `id`.
    pub(crate) fn remove(&mut self, id: CgroupId) {
        if let Some(slot) = self.parked.get_mut(id.index()) {
            *slot = None;
        }
        if self.last.as_ref().is_some_and(|(l, _)| *l == id) {
            self.last = None;
        }
    }

    /// The kept handle, if it is `id`'s.
    pub(crate) fn take_last(&mut self, id: CgroupId) -> Option<Cgroup> {
        match self.last.take() {
            Some((l, cg)) if l == id => Some(cg),
            other => {
                self.last = other;
                None
            }
        }
    }

    /// Whether `id` is attached.
    pub(crate) fn contains(&self, id: CgroupId) -> bool {
        self.parked.get(id.index()).is_some_and(Option::is_some)
    }

    /// Opens cgroup `id`'s directory: [`Error::CgroupDetached`] when it is
    /// not attached, [`Error::CgroupGone`] when it was removed (or another
    /// cgroup took its path). Allocates nothing unless it fails.
    pub(crate) fn get(&self, id: CgroupId) -> Result<Handle<'_>> {
        if let Some((l, cg)) = &self.last {
            if *l == id {
                return Ok(Handle::Kept(cg));
            }
        }
        let parked = self
            .parked
            .get(id.index())
            .and_then(Option::as_ref)
            .ok_or(Error::CgroupDetached { index: id.index() })?;
        parked.open().map(Handle::Opened)
    }

    /// The parked cgroup `id` (no fd), for another thread to open on demand.
    pub(crate) fn parked(&self, id: CgroupId) -> Option<&ParkedCgroup> {
        self.parked.get(id.index()).and_then(Option::as_ref)
    }
}

/// Which optional files a cgroup has, learnt once at attach: the mount root
/// lacks `memory.current` and the limits, old kernels lack others. Skipping
/// them keeps the hot path free of the (allocating) `Unsupported` errors.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Present {
    pub(crate) current: bool,
    pub(crate) swap: bool,
    pub(crate) high: bool,
    pub(crate) max: bool,
    pub(crate) oom_group: bool,
    pub(crate) events_local: bool,
    pub(crate) cgroup_events: bool,
    pub(crate) pressure: bool,
    pub(crate) stat: bool,
    /// Some xattr named `oomkit.*` was listed at attach (per cgroup, not
    /// learnt from a sibling).
    pub(crate) marked: bool,
}

impl Present {
    pub(crate) fn probe(cg: &Cgroup) -> Self {
        let has = |f| cg.has_file(f).unwrap_or(false);
        Present {
            current: has(files::MEMORY_CURRENT),
            swap: has(files::MEMORY_SWAP_CURRENT),
            high: has(files::MEMORY_HIGH),
            max: has(files::MEMORY_MAX),
            oom_group: has(files::MEMORY_OOM_GROUP),
            events_local: has(files::MEMORY_EVENTS_LOCAL),
            cgroup_events: has(files::CGROUP_EVENTS),
            pressure: has(files::MEMORY_PRESSURE),
            stat: has(files::MEMORY_STAT),
            marked: false,
        }
    }
}
