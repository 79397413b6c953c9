//! Batches of attaches on a [`KernelHost`]: the runner attaches the
//! directory changes of a turn (at start, thousands of siblings) as one
//! batch, and within it the owner of a parent directory is read once for
//! all its children instead of a `statat(..)` each (issue 12: one system
//! call fewer per cgroup at start-up, each slow under emulation).
//!
//! Why that is as safe as reading it per child: the owner only says
//! whether a tenant chose the child's name (`XattrInfo::delegated`), and
//! it is a reading at one instant either way; within a batch it is the
//! reading at the batch's first child under that parent. A removal in
//! the batch (the parent may come back as another directory at its path)
//! and the parent's own attach drop it, and the batch's end forgets it,
//! so a `chown` of the parent is seen by the first attach of the next
//! batch. Outside a batch (`Engine::add_cgroup` used directly) the owner
//! is read for each child, as before.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::cgroup::Cgroup;
use crate::error::Result;

use super::CgroupId;
use super::KernelHost;

/// The parent directory of the batch's last attach: open, with its owner.
#[derive(Debug)]
pub(super) struct BatchParent {
    /// Its hierarchy path.
    hier: PathBuf,
    /// `..` of the first child attached under it in this batch.
    fd: OwnedFd,
    uid: u32,
}

impl KernelHost {
    /// Starts a batch of attaches (the runner's directory changes of one
    /// turn): within it, the parent directory of the cgroups attached is
    /// opened and its owner read once for all its children, not once each
    /// (see the module docs and [`Self::end_batch`]).
    pub(crate) fn begin_batch(&mut self) {
        self.batch = Some(None);
    }

    /// Ends the batch and closes the parent it kept: the next attach reads
    /// its parent's owner again, so a delegation (a `chown` of the parent)
    /// is seen by the first attach after the batch it happened in.
    pub(crate) fn end_batch(&mut self) {
        self.batch = None;
    }

    /// Reads, once per device, whether the cgroup2 mount of `dev` counts
    /// every memory event in the ancestors' `memory.events` too.
    pub(super) fn note_events_mount(&mut self, dev: u64) {
        if self.events_mount.is_none_or(|(d, _)| d != dev) {
            let hierarchical = crate::cgroup::mount::memory_events_hierarchical(dev);
            self.events_mount = Some((dev, hierarchical));
        }
    }

    /// Whether, on the device of the cgroups attached, a parent's
    /// `memory.events` counts every event of its descendants (no
    /// `memory_localevents` mount option; see `baseline`): all zero there
    /// means all zero in each child's `memory.events.local`.
    pub(crate) fn memory_events_hierarchical(&self) -> bool {
        self.events_mount.is_some_and(|(_, h)| h)
    }

    /// The link count of the directory of `id` from its attach's `fstat`,
    /// while its handle is the one kept (until the next attach or
    /// [`Self::take_attached`]).
    pub(crate) fn attached_links(&self, id: CgroupId) -> Option<u64> {
        self.cgroups.last_links(id)
    }

    /// For tests on plain files: the mount's rule as if read from
    /// mountinfo for the device of `dir`.
    #[cfg(test)]
    pub(crate) fn assume_events_mount(&mut self, dir: &Path, hierarchical: bool) {
        let st = rustix::fs::stat(dir).unwrap();
        self.events_mount = Some((crate::cgroup::mount::stat_dev(&st), hierarchical));
    }

    pub(super) fn forget_parent(&mut self) {
        if let Some(slot) = &mut self.batch {
            *slot = None;
        }
    }

    /// Whether `path` is the parent kept in this batch.
    pub(super) fn is_batch_parent(&self, path: &Path) -> bool {
        matches!(&self.batch, Some(Some(p)) if p.hier == path)
    }

    /// Opens the cgroup at hierarchy path `path` for its attach, with its
    /// directory's `fstat`: within a batch, through the parent kept open
    /// (`openat` of one name, not of the whole path); otherwise, or when
    /// the name is not there (removed, or the parent moved), by path, which
    /// tells a removed cgroup apart.
    pub(super) fn open_for_attach(&mut self, path: &Path) -> Result<(Cgroup, rustix::fs::Stat)> {
        if let Some(Some(p)) = &self.batch {
            if crate::util::path_parent(path) == Some(p.hier.as_path()) {
                if let Some(found) =
                    self.fs
                        .open_hierarchy_stat_in(p.fd.as_fd(), path, self.checked_dev)?
                {
                    return Ok(found);
                }
            }
        }
        self.fs.open_hierarchy_stat(path, self.checked_dev)
    }

    /// The owner of the parent directory of `cg` (`None`: the mount root,
    /// or it could not be read). Read now through `..` of the open
    /// directory (its very parent, without a path walk), except that
    /// within a batch it is read once per parent: its owner as of the
    /// batch's first child under it, whose `..` is kept open for the
    /// siblings' attaches.
    pub(super) fn parent_owner(&mut self, cg: &Cgroup) -> Option<u32> {
        let parent = crate::util::path_parent(cg.hierarchy_path())?;
        let Some(slot) = &mut self.batch else {
            return rustix::fs::statat(cg.dir_fd(), c"..", rustix::fs::AtFlags::empty())
                .ok()
                .map(|st| st.st_uid);
        };
        if let Some(p) = slot {
            if p.hier == parent {
                return Some(p.uid);
            }
        }
        let fd = rustix::fs::openat(
            cg.dir_fd(),
            c"..",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let uid = rustix::fs::fstat(&fd).ok()?.st_uid;
        *slot = Some(BatchParent {
            hier: parent.to_path_buf(),
            fd,
            uid,
        });
        Some(uid)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::chown;
    use std::path::Path;

    use super::*;
    use crate::cgroup::CgroupFs;
    use crate::engine::host::Observe;
    use crate::engine::{CgroupId, XattrTrust};

    fn dir(p: &Path) {
        std::fs::create_dir_all(p).unwrap();
        std::fs::write(p.join("cgroup.procs"), "").unwrap();
    }

    /// A tree of `children` under a temporary root, and a host on it with
    /// the root and `/p` attached (outside a batch).
    fn host_with(children: &[&str]) -> (tempfile::TempDir, KernelHost) {
        let tmp = tempfile::tempdir().unwrap();
        dir(tmp.path());
        for c in children {
            dir(&tmp.path().join(c));
        }
        let fs = CgroupFs::from_dir_unchecked(tmp.path());
        let mut host = KernelHost::new(fs, XattrTrust::TrustedAndOwnedUser, 8, 8);
        assert!(!delegated(&mut host, 0, "/"));
        assert!(!delegated(&mut host, 1, "/p"));
        (tmp, host)
    }

    /// Attaches `p` as cgroup `i`: whether its name was a tenant's.
    fn delegated(h: &mut KernelHost, i: u32, p: &str) -> bool {
        h.attach(CgroupId::for_tests(i), Path::new(p))
            .unwrap()
            .delegated
    }

    /// Root runs the host tests: the tree is root's, a tenant gets
    /// uid 4242 by `chown`.
    #[test]
    fn a_parent_chowned_between_batches_delegates_the_next_child() {
        let (tmp, mut host) = host_with(&["p", "p/a", "p/b", "p/c"]);
        host.begin_batch();
        assert!(!delegated(&mut host, 2, "/p/a"));
        // Within the batch: the owner read for `a` stands for `b`.
        chown(tmp.path().join("p"), Some(4242), None).unwrap();
        assert!(!delegated(&mut host, 3, "/p/b"), "one reading per batch");
        host.end_batch();
        host.begin_batch();
        assert!(
            delegated(&mut host, 4, "/p/c"),
            "the next batch reads it again"
        );
        host.end_batch();
        // Outside a batch: read for each child.
        chown(tmp.path().join("p"), Some(0), None).unwrap();
        assert!(!delegated(&mut host, 5, "/p/a"));
        chown(tmp.path().join("p"), Some(4242), None).unwrap();
        assert!(delegated(&mut host, 6, "/p/b"));
    }

    #[test]
    fn a_removal_in_the_batch_forgets_the_owner() {
        let (tmp, mut host) = host_with(&["p", "p/a", "p/b"]);
        host.begin_batch();
        assert!(!delegated(&mut host, 2, "/p/a"));
        chown(tmp.path().join("p"), Some(4242), None).unwrap();
        host.detach(CgroupId::for_tests(2));
        assert!(
            delegated(&mut host, 3, "/p/b"),
            "read again after a removal"
        );
        host.end_batch();
    }
}
