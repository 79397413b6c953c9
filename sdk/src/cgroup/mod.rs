//! Typed access to a cgroup's memory files through a directory fd.
//!
//! A [`Cgroup`] holds an open fd of its directory and opens every file with
//! `openat(2)` relative to it. If the cgroup is removed and a new one created
//! under the same name, our fd still refers to the old, dead one: reads fail
//! with [`Error::CgroupGone`] instead of silently reporting a different
//! cgroup's numbers — the mix-up a path-based reader cannot rule out.
//!
//! `ENOENT` is ambiguous in cgroupfs: the file may be missing because this
//! kernel lacks it (`cgroup.kill` before 5.14) or because the whole cgroup
//! went away. We tell them apart by checking `cgroup.procs`, which every
//! cgroup has, and answer [`Error::Unsupported`] or [`Error::CgroupGone`].
//!
//! The parsers themselves are pure functions in `parse`, tested on files
//! captured from real kernels.
//!
//! This file opens a cgroup and maps errors; `memory` has the typed memory
//! files, `hierarchy` processes, children and xattrs, `file` a control file
//! kept open.

#[cfg(feature = "cgroups-rs")]
mod interop;
pub mod mount;
// The raw parsers are public only with the `parsers` feature (fixture
// tests, benchmarks): they are not API a runtime should build on.
mod file;
pub(crate) mod hierarchy;
mod memory;
mod parked;
#[cfg(feature = "parsers")]
pub mod parse;
#[cfg(not(feature = "parsers"))]
pub(crate) mod parse;
mod types;

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

pub use mount::CgroupFs;
pub(crate) use parked::ParkedCgroup;
pub use types::*;

use crate::error::{Error, Op, ParseError, ParseErrorKind, Result};
use crate::fs::{self, ReadError};
use crate::util::{fmt_u64, io_err};

/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// Names of the files this crate reads and writes.
pub mod files {
    #![allow(missing_docs)]
    use std::ffi::CStr;
    pub const CGROUP_PROCS: &CStr = c"cgroup.procs";
    pub const CGROUP_EVENTS: &CStr = c"cgroup.events";
    pub const CGROUP_FREEZE: &CStr = c"cgroup.freeze";
    pub const CGROUP_KILL: &CStr = c"cgroup.kill";
    pub const CGROUP_CONTROLLERS: &CStr = c"cgroup.controllers";
    pub const CGROUP_SUBTREE_CONTROL: &CStr = c"cgroup.subtree_control";
    pub const CGROUP_PRESSURE: &CStr = c"cgroup.pressure";
    pub const MEMORY_CURRENT: &CStr = c"memory.current";
    pub const MEMORY_PEAK: &CStr = c"memory.peak";
    pub const MEMORY_MIN: &CStr = c"memory.min";
    pub const MEMORY_LOW: &CStr = c"memory.low";
    pub const MEMORY_HIGH: &CStr = c"memory.high";
    pub const MEMORY_MAX: &CStr = c"memory.max";
    pub const MEMORY_SWAP_CURRENT: &CStr = c"memory.swap.current";
    pub const MEMORY_SWAP_MAX: &CStr = c"memory.swap.max";
    pub const MEMORY_SWAP_PEAK: &CStr = c"memory.swap.peak";
    pub const MEMORY_EVENTS: &CStr = c"memory.events";
    pub const MEMORY_EVENTS_LOCAL: &CStr = c"memory.events.local";
    pub const MEMORY_STAT: &CStr = c"memory.stat";
    pub const MEMORY_PRESSURE: &CStr = c"memory.pressure";
    pub const MEMORY_OOM_GROUP: &CStr = c"memory.oom.group";
    pub const MEMORY_RECLAIM: &CStr = c"memory.reclaim";
}
use files::*;

/// The largest control file we read in one go (`cgroup.procs` of a large
/// cgroup can exceed this; it is read through [`Cgroup::procs_into`]).
const SMALL_READ: usize = 8192;

/// An open cgroup-v2 directory.
///
/// ```no_run
/// use oomkit::cgroup::{Cgroup, Limit};
/// # fn main() -> oomkit::Result<()> {
/// let cg = Cgroup::open("/sys/fs/cgroup/system.slice/db.service")?;
/// let current = cg.memory_current()?;
/// if let Limit::Bytes(max) = cg.memory_max()? {
///     println!("{} uses {current} of {max} bytes", cg.path().display());
/// }
/// let ev = cg.memory_events()?;
/// println!("kernel OOM kills so far: {:?}", ev.oom_kill);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Cgroup {
    dir: OwnedFd,
    // Shared, so a handle opened again on demand (`ParkedCgroup::open`)
    // allocates nothing.
    path: Arc<Path>,
    hierarchy_path: Arc<Path>,
    verified: bool,
}

/// An open control file of a cgroup, re-read with `pread` at offset 0.
///
/// Event sources keep these open for the life of a watch: re-reading an open
/// fd allocates nothing and cannot pick up a different cgroup.
#[derive(Debug)]
pub struct CgroupFile {
    fd: OwnedFd,
    path: PathBuf,
}

fn to_cstring(path: &Path, name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| Error::InvalidPath {
        path: path.join(name),
        reason: "name contains a NUL byte",
    })
}

fn check_child_name(parent: &Path, name: &OsStr) -> Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(Error::InvalidPath {
            path: parent.join(name),
            reason: "child cgroup name must be a single path component",
        });
    }
    Ok(())
}

impl Cgroup {
    /// Opens the cgroup at filesystem path `path`, which must lie under the
    /// cgroup2 mount found in `/proc/self/mountinfo`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        CgroupFs::discover()?.open(path)
    }

    /// The cgroup this process is in.
    pub fn current() -> Result<Self> {
        CgroupFs::discover()?.of_process(None)
    }

    pub(crate) fn open_dir(fs_path: &Path, hierarchy_path: PathBuf, verify: bool) -> Result<Self> {
        let cg = Self::open_dir_unchecked(fs_path, hierarchy_path, verify)?;
        if verify {
            cg.check_magic()?;
        }
        Ok(cg)
    }

    /// A handle of `dir`, opened by the caller at `fs_path` (no check).
    fn from_parts(
        dir: OwnedFd,
        fs_path: Arc<Path>,
        hierarchy_path: Arc<Path>,
        verify: bool,
    ) -> Self {
        Cgroup {
            dir,
            path: fs_path,
            hierarchy_path,
            verified: verify,
        }
    }

    /// [`Cgroup::open_dir`] without the cgroup2 check (`fstatfs(2)`): the
    /// caller makes it, or knows the directory's device passed it.
    fn open_dir_unchecked(fs_path: &Path, hierarchy_path: PathBuf, verify: bool) -> Result<Self> {
        mount::check_clean_absolute(fs_path)?;
        let dir = rustix::fs::openat(
            rustix::fs::CWD,
            fs_path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            fs::cgroup_errno(fs_path, e, |e| match e {
                Errno::NOTDIR => Error::InvalidPath {
                    path: fs_path.to_owned(),
                    reason: "not a directory",
                },
                e => Error::io(fs_path, Op::Open, io_err(e)),
            })
        })?;
        Ok(Cgroup {
            dir,
            path: fs_path.into(),
            hierarchy_path: hierarchy_path.into(),
            verified: verify,
        })
    }

    fn check_magic(&self) -> Result<()> {
        let st = rustix::fs::fstatfs(&self.dir)
            .map_err(|e| Error::io(&*self.path, Op::Stat, io_err(e)))?;
        #[allow(clippy::unnecessary_cast)]
        let magic = (st.f_type as u64) & 0xffff_ffff;
        if magic != CGROUP2_SUPER_MAGIC {
            return Err(Error::InvalidPath {
                path: self.path.to_path_buf(),
                reason: "not on a cgroup2 filesystem",
            });
        }
        Ok(())
    }

    /// The filesystem path it was opened at (for messages; all access goes
    /// through the directory fd).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path within the hierarchy, as `/proc/PID/cgroup` prints it.
    pub fn hierarchy_path(&self) -> &Path {
        &self.hierarchy_path
    }

    /// True for the root of the mount (which lacks `memory.current`, `memory.max` …).
    pub fn is_mount_root(&self) -> bool {
        self.path.parent().is_none() || *self.hierarchy_path == *Path::new("/")
    }

    /// The directory fd.
    pub fn dir_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// The parent directory, opened through `..` of this one (`openat(2)`:
    /// its very parent, without a path walk). `None` at the mount root.
    pub(crate) fn open_parent(&self) -> Result<Option<Cgroup>> {
        let (Some(path), Some(hier)) = (self.path.parent(), self.hierarchy_path.parent()) else {
            return Ok(None);
        };
        if self.is_mount_root() {
            return Ok(None);
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let dir = rustix::fs::openat(&self.dir, c"..", flags, Mode::empty())
            .map_err(|e| Error::io(path, Op::Open, io_err(e)))?;
        Ok(Some(Self::from_parts(
            dir,
            path.into(),
            hier.into(),
            self.verified,
        )))
    }

    /// A second handle on the same directory.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Cgroup {
            dir: self
                .dir
                .try_clone()
                .map_err(|e| Error::io(&*self.path, Op::Open, e))?,
            path: self.path.clone(),
            hierarchy_path: self.hierarchy_path.clone(),
            verified: self.verified,
        })
    }

    /// Path of a file of this cgroup, for messages.
    pub fn file_path(&self, name: &CStr) -> PathBuf {
        self.path.join(name.to_string_lossy().as_ref())
    }

    /// Tells apart "file missing" from "cgroup gone" after an `ENOENT`.
    fn missing(&self, name: &CStr) -> Error {
        match rustix::fs::statat(&self.dir, CGROUP_PROCS, AtFlags::empty()) {
            Ok(_) => Error::Unsupported {
                path: self.file_path(name),
            },
            Err(_) => Error::CgroupGone {
                path: self.path.to_path_buf(),
            },
        }
    }

    fn map_err(&self, name: &CStr, op: Op, e: Errno) -> Error {
        self.file_errno(name, e, |e| Error::io(self.file_path(name), op, io_err(e)))
    }

    /// A control file's errno: `ENOENT` in a live cgroup is a file this kernel does not provide
    /// ([`Cgroup::missing`] tells), the rest is [`fs::cgroup_errno`].
    fn file_errno(&self, name: &CStr, e: Errno, other: impl FnOnce(Errno) -> Error) -> Error {
        match e {
            Errno::NOENT => self.missing(name),
            e => fs::cgroup_errno(&self.path, e, other),
        }
    }

    fn open_flags(&self, name: &CStr, flags: OFlags) -> Result<OwnedFd> {
        rustix::fs::openat(
            &self.dir,
            name,
            flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| self.map_err(name, Op::Open, e))
    }

    /// Opens a control file for repeated reads (event sources use this).
    pub fn open_file(&self, name: &CStr) -> Result<CgroupFile> {
        Ok(CgroupFile {
            fd: self.open_flags(name, OFlags::RDONLY)?,
            path: self.file_path(name),
        })
    }

    /// Opens a control file read-write (PSI triggers are written to the fd
    /// that is then polled).
    pub fn open_file_rw(&self, name: &CStr) -> Result<CgroupFile> {
        Ok(CgroupFile {
            fd: self.open_flags(name, OFlags::RDWR)?,
            path: self.file_path(name),
        })
    }

    /// Reads a whole control file into `buf`, returning the filled part. No
    /// allocation; a file larger than `buf` is a [`ParseErrorKind::TooLarge`] error.
    pub fn read_into<'b>(&self, name: &CStr, buf: &'b mut [u8]) -> Result<&'b [u8]> {
        self.read_with(name, buf, |fd, b| fs::pread_all(fd, b))
    }

    /// [`Cgroup::read_into`] for a control file the kernel generates in one
    /// piece (see `fs::pread_one_piece`): one `pread` instead of two.
    pub(crate) fn read_one_piece<'b>(&self, name: &CStr, buf: &'b mut [u8]) -> Result<&'b [u8]> {
        self.read_with(name, buf, |fd, b| fs::pread_one_piece(fd, b))
    }

    /// Opens control file `name` and fills `buf` with `read`, mapping a full
    /// buffer and an OS error to this cgroup's errors naming the file.
    fn read_with<'b>(
        &self,
        name: &CStr,
        buf: &'b mut [u8],
        read: impl FnOnce(&OwnedFd, &mut [u8]) -> std::result::Result<usize, ReadError>,
    ) -> Result<&'b [u8]> {
        let fd = self.open_flags(name, OFlags::RDONLY)?;
        match read(&fd, buf) {
            Ok(n) => Ok(&buf[..n]),
            Err(ReadError::TooLarge) => Err(Error::Parse {
                path: self.file_path(name),
                source: ParseError::new(1, ParseErrorKind::TooLarge),
            }),
            Err(ReadError::Os(e)) => Err(self.map_err(name, Op::Read, e)),
        }
    }

    /// Reads a whole control file of any size.
    pub fn read_raw(&self, name: &CStr) -> Result<Vec<u8>> {
        let fd = self.open_flags(name, OFlags::RDONLY)?;
        let mut out = Vec::new();
        fs::read_to_end(&fd, &mut out).map_err(|e| self.map_err(name, Op::Read, e))?;
        Ok(out)
    }

    fn read_parsed<T>(
        &self,
        name: &CStr,
        parse: impl FnOnce(&[u8]) -> Result<T, ParseError>,
    ) -> Result<T> {
        let mut buf = [0u8; SMALL_READ];
        let data = self.read_into(name, &mut buf)?;
        parse(data).map_err(|source| Error::Parse {
            path: self.file_path(name),
            source,
        })
    }

    /// Writes `data` to a control file in one `write(2)`.
    pub fn write_raw(&self, name: &CStr, data: &[u8]) -> Result<()> {
        let wrap = |e: Errno| {
            self.file_errno(name, e, |e| Error::Write {
                path: self.file_path(name),
                data: String::from_utf8_lossy(data).into_owned(),
                source: io_err(e),
            })
        };
        let fd = rustix::fs::openat(
            &self.dir,
            name,
            OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(wrap)?;
        let n = rustix::io::write(&fd, data).map_err(wrap)?;
        if n != data.len() {
            return Err(wrap(Errno::IO));
        }
        Ok(())
    }
}

impl AsFd for Cgroup {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }
}
