//! A cgroup known without an fd held open: its paths and the identity of
//! its directory, opened again on demand ([`ParkedCgroup::open`]).
//!
//! Why: a directory fd kept per managed cgroup cost 10,000 fds at 10,000
//! cgroups, and fds are what a kill needs when a tenant floods the tree. The
//! loop opens a cgroup's directory only for what needs it (reading its
//! files for a decision, a kill, a limit) and closes it right after.
//!
//! Opening by path could reach a *different* cgroup: the one created at the
//! same path after ours was removed. A kept fd ruled that out (it stays on
//! the dead directory, whose reads fail with `ENODEV`); here the device and
//! inode number of the directory (on cgroup2 the inode number is the
//! cgroup's id, never reused while the system runs) are recorded when the
//! cgroup is parked and compared after each `openat(2)` with `fstat(2)`: a
//! mismatch is [`Error::CgroupGone`], as the kept fd's reads were.
//!
//! Opening allocates nothing (the path is made a C string on the stack, the
//! paths are shared), so the kill path may open on demand; where fds are
//! short the kill path closes its reserve first (`kill::reserve`).

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};

use super::Cgroup;
use crate::error::{Error, Op, Result};
use crate::fs;
use crate::util::{PATH_MAX, io_err};

/// See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct ParkedCgroup {
    path: Arc<Path>,
    hierarchy_path: Arc<Path>,
    dev: u64,
    ino: u64,
    verified: bool,
}

impl Cgroup {
    /// What it takes to open this cgroup again later without keeping its
    /// fd (`fstat(2)` of the directory for its identity).
    #[cfg(test)]
    pub(crate) fn park(&self) -> Result<ParkedCgroup> {
        Ok(self.park_as(&self.dir_stat()?))
    }

    /// `fstat(2)` of the directory.
    pub(crate) fn dir_stat(&self) -> Result<rustix::fs::Stat> {
        rustix::fs::fstat(&self.dir).map_err(|e| {
            fs::cgroup_errno(&self.path, e, |e| {
                Error::io(&*self.path, Op::Stat, io_err(e))
            })
        })
    }

    /// [`Cgroup::park`] with the directory's `fstat` already taken.
    pub(crate) fn park_as(&self, st: &rustix::fs::Stat) -> ParkedCgroup {
        ParkedCgroup {
            path: self.path.clone(),
            hierarchy_path: self.hierarchy_path.clone(),
            #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
            dev: st.st_dev as u64,
            #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
            ino: st.st_ino as u64,
            verified: self.verified,
        }
    }
}

impl ParkedCgroup {
    /// Opens the directory again (`openat(2)` + `fstat(2)`): the very cgroup
    /// that was parked, or [`Error::CgroupGone`] when it was removed (or a
    /// new one took its path). Allocates nothing unless it fails.
    pub(crate) fn open(&self) -> Result<Cgroup> {
        let mut buf = [0u8; PATH_MAX];
        let c = crate::util::stack_cstr(&mut buf, self.path.as_os_str().as_bytes()).ok_or_else(
            || Error::InvalidPath {
                path: self.path.to_path_buf(),
                reason: "longer than PATH_MAX or holds a NUL byte",
            },
        )?;
        let dir = rustix::fs::openat(
            rustix::fs::CWD,
            c,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| {
            fs::cgroup_errno(&self.path, e, |e| {
                Error::io(&*self.path, Op::Open, io_err(e))
            })
        })?;
        let st = rustix::fs::fstat(&dir).map_err(|e| {
            fs::cgroup_errno(&self.path, e, |e| {
                Error::io(&*self.path, Op::Stat, io_err(e))
            })
        })?;
        #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
        let same = st.st_dev as u64 == self.dev && st.st_ino as u64 == self.ino;
        if !same {
            return Err(Error::CgroupGone {
                path: self.path.to_path_buf(),
            });
        }
        Ok(Cgroup {
            dir,
            path: self.path.clone(),
            hierarchy_path: self.hierarchy_path.clone(),
            verified: self.verified,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (tempfile::TempDir, super::super::CgroupFs) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/cgroup.procs"), "").unwrap();
        let fs = super::super::CgroupFs::from_dir_unchecked(dir.path());
        (dir, fs)
    }

    #[test]
    fn opens_the_same_directory_again() {
        let (dir, fs) = fixture();
        let cg = fs.open(dir.path().join("a")).unwrap();
        let parked = cg.park().unwrap();
        drop(cg);
        let again = parked.open().unwrap();
        assert_eq!(again.path(), dir.path().join("a"));
        assert_eq!(again.hierarchy_path(), Path::new("/a"));
        assert!(again.has_file(super::super::files::CGROUP_PROCS).unwrap());
    }

    #[test]
    fn a_directory_recreated_at_the_path_is_not_ours() {
        let (dir, fs) = fixture();
        let old = fs.open(dir.path().join("a")).unwrap();
        let parked = old.park().unwrap();
        // `old` stays open: the removed directory keeps its inode, so the
        // new one cannot get the same number.
        std::fs::remove_file(dir.path().join("a/cgroup.procs")).unwrap();
        std::fs::remove_dir(dir.path().join("a")).unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        let e = parked.open().unwrap_err();
        assert!(e.is_gone(), "{e}");
        assert!(e.to_string().contains("/a"), "{e}");
        drop(old);
    }

    #[test]
    fn a_removed_directory_is_gone() {
        let (dir, fs) = fixture();
        let parked = fs.open(dir.path().join("a")).unwrap().park().unwrap();
        std::fs::remove_file(dir.path().join("a/cgroup.procs")).unwrap();
        std::fs::remove_dir(dir.path().join("a")).unwrap();
        let e = parked.open().unwrap_err();
        assert!(e.is_gone(), "{e}");
    }

    #[test]
    fn the_xattr_list_tells_unmarked_directories() {
        let (dir, fs) = fixture();
        let cg = fs.open(dir.path().join("a")).unwrap();
        assert!(!cg.may_have_xattr(b"oomkit."));
        rustix::fs::setxattr(
            dir.path().join("a").as_path(),
            "user.other",
            b"1",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        assert!(!cg.may_have_xattr(b"oomkit."), "another key is no mark");
        rustix::fs::setxattr(
            dir.path().join("a").as_path(),
            "user.oomkit.priority",
            b"5",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        assert!(cg.may_have_xattr(b"oomkit."));
    }
}
