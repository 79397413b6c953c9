//! A cgroup's place in the hierarchy: its processes, children and parent, creating and
//! removing children, moving a process in, its owner and xattrs.

use std::ffi::{CStr, OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::*;

impl Cgroup {
    /// `cgroup.events`: `populated` and `frozen`.
    pub fn cgroup_events(&self) -> Result<CgroupEvents> {
        self.read_parsed(CGROUP_EVENTS, parse::cgroup_events)
    }

    /// `cgroup.controllers`: controllers available in this cgroup.
    pub fn controllers(&self) -> Result<Vec<String>> {
        let data = self.read_raw(CGROUP_CONTROLLERS)?;
        parse::controllers(&data).map_err(|source| Error::Parse {
            path: self.file_path(CGROUP_CONTROLLERS),
            source,
        })
    }

    /// `cgroup.procs`: the PIDs directly in this cgroup.
    pub fn procs(&self) -> Result<Vec<i32>> {
        let mut v = Vec::new();
        self.procs_into(&mut v)?;
        Ok(v)
    }

    /// `cgroup.procs` into `out` (cleared first). With enough capacity in
    /// `out`, no allocation.
    pub fn procs_into(&self, out: &mut Vec<i32>) -> Result<()> {
        out.clear();
        self.for_each_pid(|pid| out.push(pid)).map(|_| ())
    }

    /// Calls `f` for every PID in `cgroup.procs`, streaming the file through
    /// a stack buffer: any number of PIDs, no allocation. Returns the count.
    pub fn for_each_pid(&self, f: impl FnMut(i32)) -> Result<usize> {
        let fd = self.open_flags(CGROUP_PROCS, OFlags::RDONLY)?;
        pids_in(fd.as_fd(), f).map_err(|e| match e {
            PidsError::Read(e) => self.map_err(CGROUP_PROCS, Op::Read, e),
            PidsError::Parse(source) => Error::Parse {
                path: self.file_path(CGROUP_PROCS),
                source,
            },
        })
    }

    /// Names of the child cgroups, sorted by their bytes. Names are bytes,
    /// not text: a tenant may choose one that is not UTF-8, and its subtree
    /// must not become invisible.
    pub fn children(&self) -> Result<Vec<OsString>> {
        let list = reopen(self.dir.as_fd()).map_err(|e| self.map_err(c".", Op::ReadDir, e))?;
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut out = Vec::new();
        for_each_child_in(list.as_fd(), &mut buf, |name| {
            out.push(OsStr::from_bytes(name.to_bytes()).to_os_string());
        })
        .map_err(|e| {
            fs::cgroup_errno(&self.path, e, |e| {
                Error::io(&*self.path, Op::ReadDir, io_err(e))
            })
        })?;
        out.sort();
        Ok(out)
    }

    /// How many child cgroups there are: [`Cgroup::children`] without
    /// collecting the names, so without allocating.
    pub(crate) fn child_count(&self) -> Result<usize> {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
        reopen(self.dir.as_fd())
            .and_then(|list| for_each_child_in(list.as_fd(), &mut buf, |_| {}))
            .map_err(|e| self.map_err(c".", Op::ReadDir, e))
    }

    /// Opens the child cgroup `name` (any bytes but `/` and NUL).
    pub fn child(&self, name: impl AsRef<OsStr>) -> Result<Cgroup> {
        let name = name.as_ref();
        check_child_name(&self.path, name)?;
        let c = to_cstring(&self.path, name)?;
        let path = self.path.join(name);
        let dir = rustix::fs::openat(
            &self.dir,
            c.as_c_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| fs::cgroup_errno(&path, e, |e| Error::io(&path, Op::Open, io_err(e))))?;
        Ok(Cgroup {
            dir,
            hierarchy_path: self.hierarchy_path.join(name).into(),
            path: path.into(),
            verified: self.verified,
        })
    }

    /// The parent cgroup, opened through `..` of this directory (so it is
    /// the parent of *this* cgroup even if paths were renamed meanwhile);
    /// `None` for the root of the mount.
    pub fn parent(&self) -> Result<Option<Cgroup>> {
        if self.is_mount_root() {
            return Ok(None);
        }
        let (Some(path), Some(hierarchy_path)) = (self.path.parent(), self.hierarchy_path.parent())
        else {
            return Ok(None);
        };
        let dir = rustix::fs::openat(
            &self.dir,
            c"..",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.map_err_path(path, Op::Open, e))?;
        Ok(Some(Cgroup {
            dir,
            path: path.into(),
            hierarchy_path: hierarchy_path.into(),
            verified: self.verified,
        }))
    }

    /// Creates the child cgroup `name` (`mkdir`) and opens it. An existing
    /// child is opened as it is.
    pub fn create_child(&self, name: impl AsRef<OsStr>) -> Result<Cgroup> {
        let name = name.as_ref();
        check_child_name(&self.path, name)?;
        let c = to_cstring(&self.path, name)?;
        match rustix::fs::mkdirat(&self.dir, c.as_c_str(), Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => self.child(name),
            Err(e) => Err(self.map_err_path(&self.path.join(name), Op::Open, e)),
        }
    }

    /// Removes the child cgroup `name` (`rmdir`; it must have no processes
    /// and no children).
    pub fn remove_child(&self, name: impl AsRef<OsStr>) -> Result<()> {
        let name = name.as_ref();
        check_child_name(&self.path, name)?;
        let c = to_cstring(&self.path, name)?;
        rustix::fs::unlinkat(&self.dir, c.as_c_str(), AtFlags::REMOVEDIR)
            .map_err(|e| self.map_err_path(&self.path.join(name), Op::Write, e))
    }

    fn map_err_path(&self, path: &Path, op: Op, e: Errno) -> Error {
        match e {
            Errno::NODEV => Error::CgroupGone {
                path: self.path.to_path_buf(),
            },
            e => Error::io(path, op, io_err(e)),
        }
    }

    /// Sets an extended attribute of the cgroup directory
    /// ([`fsetxattr(2)`](https://man7.org/linux/man-pages/man2/fsetxattr.2.html));
    /// `trusted.*` needs `CAP_SYS_ADMIN`.
    pub fn set_xattr(&self, name: &str, value: &[u8]) -> Result<()> {
        let c = to_cstring(&self.path, OsStr::new(name))?;
        rustix::fs::fsetxattr(
            &self.dir,
            c.as_c_str(),
            value,
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(|e| self.map_err_path(&self.path, Op::SetXattr, e))
    }

    /// Removes an extended attribute of the cgroup directory
    /// ([`fremovexattr(2)`](https://man7.org/linux/man-pages/man2/fremovexattr.2.html));
    /// one that is not set is no error.
    pub fn remove_xattr(&self, name: &str) -> Result<()> {
        let c = to_cstring(&self.path, OsStr::new(name))?;
        match rustix::fs::fremovexattr(&self.dir, c.as_c_str()) {
            Ok(()) | Err(Errno::NODATA) => Ok(()),
            Err(e) => Err(self.map_err_path(&self.path, Op::SetXattr, e)),
        }
    }

    /// Reads an extended attribute of the cgroup directory (`trusted.*` or
    /// `user.*`), `None` if it is not set.
    pub fn xattr(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let c = to_cstring(&self.path, OsStr::new(name))?;
        let mut buf = vec![0u8; 256];
        loop {
            match rustix::fs::fgetxattr(&self.dir, c.as_c_str(), &mut buf[..]) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(Some(buf));
                }
                Err(Errno::NODATA) | Err(Errno::OPNOTSUPP) => return Ok(None),
                Err(Errno::RANGE) if buf.len() < 65536 => buf.resize(buf.len() * 4, 0),
                Err(e) => return Err(self.map_err_path(&self.path, Op::GetXattr, e)),
            }
        }
    }

    /// Whether the directory may have an extended attribute whose name
    /// contains `needle` (`flistxattr(2)`, one call for all of them): false
    /// only when the list, read whole, has none. The list holds only the
    /// names this process may read (`trusted.*` needs `CAP_SYS_ADMIN`).
    pub(crate) fn may_have_xattr(&self, needle: &[u8]) -> bool {
        let mut buf = [0u8; 1024];
        match rustix::fs::flistxattr(&self.dir, &mut buf[..]) {
            Ok(n) => buf[..n]
                .split(|b| *b == 0)
                .any(|name| name.windows(needle.len()).any(|w| w == needle)),
            Err(Errno::OPNOTSUPP) => false,
            // Too many names for the buffer (ERANGE), or unknown: read them.
            Err(_) => true,
        }
    }

    /// The owner (uid) of the cgroup directory: delegated cgroups belong to
    /// the user they were delegated to.
    pub fn owner_uid(&self) -> Result<u32> {
        rustix::fs::fstat(&self.dir)
            .map(|st| st.st_uid)
            .map_err(|e| self.map_err_path(&self.path, Op::Stat, e))
    }

    /// Moves process `pid` into this cgroup (`cgroup.procs`).
    pub fn add_process(&self, pid: i32) -> Result<()> {
        let mut b = [0u8; 20];
        let v = fmt_u64(
            &mut b,
            u64::try_from(pid).map_err(|_| Error::InvalidArgument {
                what: "pid",
                reason: format!("{pid} is not a valid PID"),
            })?,
        );
        self.write_raw(CGROUP_PROCS, v)
    }

    /// Enables controllers for the children (`+memory` … in `cgroup.subtree_control`).
    pub fn enable_subtree_controllers(&self, controllers: &[&str]) -> Result<()> {
        let data: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
        self.write_raw(CGROUP_SUBTREE_CONTROL, data.join(" ").as_bytes())
    }

    /// Whether a control file exists in this (live) cgroup.
    pub fn has_file(&self, name: &CStr) -> Result<bool> {
        match rustix::fs::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(Errno::NOENT) => match self.missing(name) {
                Error::Unsupported { .. } => Ok(false),
                e => Err(e),
            },
            Err(e) => Err(self.map_err(name, Op::Stat, e)),
        }
    }
}

/// Why [`pids_in`] stopped.
#[derive(Debug)]
pub(crate) enum PidsError {
    /// `read(2)` failed.
    Read(Errno),
    /// A line is not a PID.
    Parse(ParseError),
}

/// Calls `f` for every PID of the `cgroup.procs` open in `fd`, streaming it
/// through a stack buffer: any number of PIDs, no allocation (the errors
/// carry no path either: the caller names the file). Returns the count.
pub(crate) fn pids_in(
    fd: BorrowedFd<'_>,
    mut f: impl FnMut(i32),
) -> std::result::Result<usize, PidsError> {
    let mut buf = [0u8; 4096];
    let mut carry = 0usize;
    let mut line_base = 0u32;
    let mut count = 0usize;
    loop {
        let n = match rustix::io::read(fd, &mut buf[carry..]) {
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(PidsError::Read(e)),
        };
        let filled = carry + n;
        // Parse complete lines; keep a partial last line for the next read.
        let end = if n == 0 {
            filled
        } else {
            match buf[..filled].iter().rposition(|b| *b == b'\n') {
                Some(p) => p + 1,
                None if filled == buf.len() => {
                    return Err(PidsError::Parse(ParseError::new(
                        line_base + 1,
                        ParseErrorKind::MalformedLine,
                    )));
                }
                None => 0,
            }
        };
        parse::for_each_pid(&buf[..end], |pid| {
            count += 1;
            f(pid);
        })
        .map_err(|mut source| {
            source.line += line_base;
            PidsError::Parse(source)
        })?;
        line_base += buf[..end].iter().filter(|b| **b == b'\n').count() as u32;
        buf.copy_within(end..filled, 0);
        carry = filled - end;
        if n == 0 {
            return Ok(count);
        }
    }
}

/// Calls `f` with the name of every subdirectory (a child cgroup) of the
/// directory `list` holds open, in directory order, read from `list`'s
/// offset through `buf`: no allocation, which the group kill's count of
/// its subtree relies on. `list` must be an fd opened for this listing
/// (one read to its end lists nothing again); a kept handle's directory
/// is listed through [`reopen`] of it. Returns the count.
pub(crate) fn for_each_child_in(
    list: BorrowedFd<'_>,
    buf: &mut [std::mem::MaybeUninit<u8>],
    mut f: impl FnMut(&CStr),
) -> std::result::Result<usize, Errno> {
    let mut entries = rustix::fs::RawDir::new(list, buf);
    let mut count = 0;
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let name = entry.file_name();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        let is_dir = match entry.file_type() {
            rustix::fs::FileType::Directory => true,
            rustix::fs::FileType::Unknown => {
                rustix::fs::statat(list, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
                    rustix::fs::FileType::from_raw_mode(st.st_mode)
                        == rustix::fs::FileType::Directory
                })
            }
            _ => false,
        };
        if is_dir {
            count += 1;
            f(name);
        }
    }
    Ok(count)
}

/// A new fd of the directory `dir` holds open (`"."`), for listing it
/// from the start without moving `dir`'s own offset.
pub(crate) fn reopen(dir: BorrowedFd<'_>) -> std::result::Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}
