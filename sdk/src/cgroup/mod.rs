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

#[cfg(feature = "cgroups-rs")]
mod interop;
pub mod mount;
// The raw parsers are public only with the `parsers` feature (fixture
// tests, benchmarks): they are not API a runtime should build on.
#[cfg(feature = "parsers")]
pub mod parse;
#[cfg(not(feature = "parsers"))]
pub(crate) mod parse;
mod types;

use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

pub use mount::CgroupFs;
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
    path: PathBuf,
    hierarchy_path: PathBuf,
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
        mount::check_clean_absolute(fs_path)?;
        let dir = rustix::fs::openat(
            rustix::fs::CWD,
            fs_path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOENT | Errno::NODEV => Error::CgroupGone {
                path: fs_path.to_owned(),
            },
            Errno::NOTDIR => Error::InvalidPath {
                path: fs_path.to_owned(),
                reason: "not a directory",
            },
            e => Error::io(fs_path, Op::Open, io_err(e)),
        })?;
        let cg = Cgroup {
            dir,
            path: fs_path.to_owned(),
            hierarchy_path,
            verified: verify,
        };
        if verify {
            cg.check_magic()?;
        }
        Ok(cg)
    }

    fn check_magic(&self) -> Result<()> {
        let st = rustix::fs::fstatfs(&self.dir)
            .map_err(|e| Error::io(&self.path, Op::Stat, io_err(e)))?;
        #[allow(clippy::unnecessary_cast)]
        let magic = (st.f_type as u64) & 0xffff_ffff;
        if magic != CGROUP2_SUPER_MAGIC {
            return Err(Error::InvalidPath {
                path: self.path.clone(),
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
        self.path.parent().is_none() || self.hierarchy_path == Path::new("/")
    }

    /// The directory fd.
    pub fn dir_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// A second handle on the same directory.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Cgroup {
            dir: self
                .dir
                .try_clone()
                .map_err(|e| Error::io(&self.path, Op::Open, e))?,
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
                path: self.path.clone(),
            },
        }
    }

    fn map_err(&self, name: &CStr, op: Op, e: Errno) -> Error {
        match e {
            Errno::NOENT => self.missing(name),
            Errno::NODEV => Error::CgroupGone {
                path: self.path.clone(),
            },
            e => Error::io(self.file_path(name), op, io_err(e)),
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
        let fd = self.open_flags(name, OFlags::RDONLY)?;
        match fs::pread_all(&fd, buf) {
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
        let wrap = |e: Errno| match e {
            Errno::NOENT => self.missing(name),
            Errno::NODEV => Error::CgroupGone {
                path: self.path.clone(),
            },
            e => Error::Write {
                path: self.file_path(name),
                data: String::from_utf8_lossy(data).into_owned(),
                source: io_err(e),
            },
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

    // ----- typed reads -----

    /// `memory.current`: bytes charged to the cgroup and its descendants.
    pub fn memory_current(&self) -> Result<u64> {
        self.read_parsed(MEMORY_CURRENT, parse::single_u64)
    }

    /// `memory.peak` (5.19+): the high-water mark of `memory.current`.
    pub fn memory_peak(&self) -> Result<u64> {
        self.read_parsed(MEMORY_PEAK, parse::single_u64)
    }

    /// `memory.min`: hard protection from reclaim.
    pub fn memory_min(&self) -> Result<Limit> {
        self.read_parsed(MEMORY_MIN, parse::limit)
    }

    /// `memory.low`: best-effort protection from reclaim.
    pub fn memory_low(&self) -> Result<Limit> {
        self.read_parsed(MEMORY_LOW, parse::limit)
    }

    /// `memory.high`: the throttle limit.
    pub fn memory_high(&self) -> Result<Limit> {
        self.read_parsed(MEMORY_HIGH, parse::limit)
    }

    /// `memory.max`: the hard limit; beyond it the kernel OOM-kills in the cgroup.
    pub fn memory_max(&self) -> Result<Limit> {
        self.read_parsed(MEMORY_MAX, parse::limit)
    }

    /// `memory.swap.current`: swap used by the cgroup.
    pub fn swap_current(&self) -> Result<u64> {
        self.read_parsed(MEMORY_SWAP_CURRENT, parse::single_u64)
    }

    /// `memory.swap.max`.
    pub fn swap_max(&self) -> Result<Limit> {
        self.read_parsed(MEMORY_SWAP_MAX, parse::limit)
    }

    /// `memory.events`: hierarchical counters (this cgroup and descendants).
    pub fn memory_events(&self) -> Result<MemoryEvents> {
        self.read_parsed(MEMORY_EVENTS, parse::memory_events)
    }

    /// `memory.events.local`: counters of this cgroup alone.
    pub fn memory_events_local(&self) -> Result<MemoryEvents> {
        self.read_parsed(MEMORY_EVENTS_LOCAL, parse::memory_events)
    }

    /// `memory.stat`.
    pub fn memory_stat(&self) -> Result<MemoryStat> {
        let mut st = MemoryStat::default();
        self.memory_stat_into(&mut st)?;
        Ok(st)
    }

    /// `memory.stat` into a reused value (see `parse::memory_stat_into`).
    pub fn memory_stat_into(&self, out: &mut MemoryStat) -> Result<()> {
        let mut buf = [0u8; SMALL_READ];
        let data = self.read_into(MEMORY_STAT, &mut buf)?;
        parse::memory_stat_into(data, out).map_err(|source| Error::Parse {
            path: self.file_path(MEMORY_STAT),
            source,
        })
    }

    /// `memory.pressure`: PSI of this cgroup.
    pub fn memory_pressure(&self) -> Result<Pressure> {
        self.read_parsed(MEMORY_PRESSURE, parse::pressure)
    }

    /// `memory.oom.group`: whether the kernel kills the whole group on OOM.
    pub fn oom_group(&self) -> Result<bool> {
        self.read_parsed(MEMORY_OOM_GROUP, parse::bool01)
    }

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
    pub fn for_each_pid(&self, mut f: impl FnMut(i32)) -> Result<usize> {
        let fd = self.open_flags(CGROUP_PROCS, OFlags::RDONLY)?;
        let mut buf = [0u8; 4096];
        let mut carry = 0usize;
        let mut line_base = 0u32;
        let mut count = 0usize;
        loop {
            let n = match rustix::io::read(&fd, &mut buf[carry..]) {
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(self.map_err(CGROUP_PROCS, Op::Read, e)),
            };
            let filled = carry + n;
            // Parse complete lines; keep a partial last line for the next read.
            let end = if n == 0 {
                filled
            } else {
                match buf[..filled].iter().rposition(|b| *b == b'\n') {
                    Some(p) => p + 1,
                    None if filled == buf.len() => {
                        return Err(Error::Parse {
                            path: self.file_path(CGROUP_PROCS),
                            source: ParseError::new(line_base + 1, ParseErrorKind::MalformedLine),
                        });
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
                Error::Parse {
                    path: self.file_path(CGROUP_PROCS),
                    source,
                }
            })?;
            line_base += buf[..end].iter().filter(|b| **b == b'\n').count() as u32;
            buf.copy_within(end..filled, 0);
            carry = filled - end;
            if n == 0 {
                return Ok(count);
            }
        }
    }

    /// Names of the child cgroups, sorted by their bytes. Names are bytes,
    /// not text: a tenant may choose one that is not UTF-8, and its subtree
    /// must not become invisible.
    pub fn children(&self) -> Result<Vec<OsString>> {
        let dup = rustix::fs::openat(
            &self.dir,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.map_err(c".", Op::ReadDir, e))?;
        let mut dir = rustix::fs::Dir::read_from(&dup)
            .map_err(|e| Error::io(&self.path, Op::ReadDir, io_err(e)))?;
        let mut out = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| match e {
                Errno::NOENT | Errno::NODEV => Error::CgroupGone {
                    path: self.path.clone(),
                },
                e => Error::io(&self.path, Op::ReadDir, io_err(e)),
            })?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let is_dir = match entry.file_type() {
                rustix::fs::FileType::Directory => true,
                rustix::fs::FileType::Unknown => {
                    rustix::fs::statat(&self.dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                        .map(|st| {
                            rustix::fs::FileType::from_raw_mode(st.st_mode)
                                == rustix::fs::FileType::Directory
                        })
                        .unwrap_or(false)
                }
                _ => false,
            };
            if is_dir {
                out.push(OsStr::from_bytes(name).to_os_string());
            }
        }
        out.sort();
        Ok(out)
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
        .map_err(|e| match e {
            Errno::NOENT | Errno::NODEV => Error::CgroupGone { path: path.clone() },
            e => Error::io(&path, Op::Open, io_err(e)),
        })?;
        Ok(Cgroup {
            dir,
            hierarchy_path: self.hierarchy_path.join(name),
            path,
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
            path: path.to_owned(),
            hierarchy_path: hierarchy_path.to_owned(),
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
                path: self.path.clone(),
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

    /// The owner (uid) of the cgroup directory: delegated cgroups belong to
    /// the user they were delegated to.
    pub fn owner_uid(&self) -> Result<u32> {
        rustix::fs::fstat(&self.dir)
            .map(|st| st.st_uid)
            .map_err(|e| self.map_err_path(&self.path, Op::Stat, e))
    }

    // ----- writes -----

    fn write_limit(&self, name: &CStr, limit: Limit) -> Result<()> {
        let mut b = [0u8; 20];
        let data: &[u8] = match limit {
            Limit::Max => b"max",
            Limit::Bytes(v) => fmt_u64(&mut b, v),
        };
        self.write_raw(name, data)
    }

    /// Sets `memory.min`.
    pub fn set_memory_min(&self, limit: Limit) -> Result<()> {
        self.write_limit(MEMORY_MIN, limit)
    }

    /// Sets `memory.low`.
    pub fn set_memory_low(&self, limit: Limit) -> Result<()> {
        self.write_limit(MEMORY_LOW, limit)
    }

    /// Sets `memory.high` (throttling).
    pub fn set_memory_high(&self, limit: Limit) -> Result<()> {
        self.write_limit(MEMORY_HIGH, limit)
    }

    /// Sets `memory.max`.
    pub fn set_memory_max(&self, limit: Limit) -> Result<()> {
        self.write_limit(MEMORY_MAX, limit)
    }

    /// Sets `memory.swap.max`.
    pub fn set_swap_max(&self, limit: Limit) -> Result<()> {
        self.write_limit(MEMORY_SWAP_MAX, limit)
    }

    /// Sets `memory.oom.group`.
    pub fn set_oom_group(&self, on: bool) -> Result<()> {
        self.write_raw(MEMORY_OOM_GROUP, if on { b"1" } else { b"0" })
    }

    /// Writes `cgroup.freeze` (1 freezes, 0 thaws). Freezing is
    /// asynchronous: `cgroup.events` says `frozen 1` once it took effect.
    pub fn set_frozen(&self, frozen: bool) -> Result<()> {
        self.write_raw(CGROUP_FREEZE, if frozen { b"1" } else { b"0" })
    }

    /// Writes `1` to `cgroup.kill` (5.14+): SIGKILL to every process of the
    /// cgroup and its descendants, atomically with respect to forks.
    /// Returns [`Error::Unsupported`] on older kernels.
    pub fn write_kill(&self) -> Result<()> {
        self.write_raw(CGROUP_KILL, b"1")
    }

    /// Asks the kernel to reclaim `bytes` from the cgroup (`memory.reclaim`,
    /// 5.19+). The kernel answers `EAGAIN` if it could not reclaim that much.
    pub fn reclaim(&self, bytes: u64) -> Result<()> {
        let mut b = [0u8; 20];
        let v = fmt_u64(&mut b, bytes);
        self.write_raw(MEMORY_RECLAIM, v)
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

impl AsFd for Cgroup {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }
}

impl CgroupFile {
    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file from offset 0 into `buf` (no allocation).
    pub fn read_into<'b>(&self, buf: &'b mut [u8]) -> Result<&'b [u8]> {
        match fs::pread_all(&self.fd, buf) {
            Ok(n) => Ok(&buf[..n]),
            Err(ReadError::TooLarge) => Err(Error::Parse {
                path: self.path.clone(),
                source: ParseError::new(1, ParseErrorKind::TooLarge),
            }),
            Err(ReadError::Os(e)) => Err(self.err(Op::Read, e)),
        }
    }

    /// Writes `data` in one `write(2)` (PSI trigger registration).
    pub fn write(&self, data: &[u8]) -> Result<()> {
        let n = rustix::io::write(&self.fd, data).map_err(|e| match e {
            Errno::NODEV | Errno::NOENT => Error::CgroupGone {
                path: self.path.clone(),
            },
            e => Error::Write {
                path: self.path.clone(),
                data: String::from_utf8_lossy(data).into_owned(),
                source: io_err(e),
            },
        })?;
        if n != data.len() {
            return Err(Error::Write {
                path: self.path.clone(),
                data: String::from_utf8_lossy(data).into_owned(),
                source: io_err(Errno::IO),
            });
        }
        Ok(())
    }

    fn err(&self, op: Op, e: Errno) -> Error {
        match e {
            Errno::NODEV | Errno::NOENT => Error::CgroupGone {
                path: self.path.clone(),
            },
            e => Error::io(&self.path, op, io_err(e)),
        }
    }

    /// Opens a file that is not a cgroup control file (`/proc/pressure/memory`).
    pub fn open_path(path: impl AsRef<Path>, write: bool) -> Result<Self> {
        let path = path.as_ref();
        let flags = if write { OFlags::RDWR } else { OFlags::RDONLY };
        let fd = rustix::fs::openat(
            rustix::fs::CWD,
            path,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOENT => Error::Unsupported {
                path: path.to_owned(),
            },
            e => Error::io(path, Op::Open, io_err(e)),
        })?;
        Ok(CgroupFile {
            fd,
            path: path.to_owned(),
        })
    }
}

impl AsFd for CgroupFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
