//! Finding the cgroup2 hierarchy and resolving paths in it.
//!
//! A process may live in a cgroup namespace (every container does), so the
//! paths in `/proc/self/cgroup` are relative to the namespace root, and the
//! `root` field of the cgroup2 entry in `/proc/self/mountinfo` says which
//! part of the hierarchy a mount shows. We resolve a hierarchy path against
//! the mount whose root contains it, and refuse paths the mount cannot show
//! (they print as `/../…` in a namespace) rather than guessing.

use std::path::{Path, PathBuf};
use std::str::Split;

use crate::error::{Error, Op, Result};

use super::Cgroup;

/// One cgroup2 entry of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Which cgroup of the hierarchy (relative to our namespace root) the
    /// mount point shows; `/` for the whole (namespaced) hierarchy.
    pub root: PathBuf,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0');
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 lines of a mountinfo file, each split at ` - `: the fields
/// before it (mount id, parent id, `major:minor`, root, mount point, …)
/// and those after the file system type (source, super options).
fn cgroup2_lines(text: &str) -> impl Iterator<Item = (Split<'_, char>, Split<'_, char>)> {
    text.lines().filter_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let mut post = post.split(' ');
        (post.next()? == "cgroup2").then(|| (pre.split(' '), post))
    })
}

/// Parses the cgroup2 entries of a mountinfo file; other lines are ignored.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    cgroup2_lines(text)
        .filter_map(|(mut f, _)| {
            let root = f.nth(3)?;
            let mount_point = f.next()?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(mount_point)),
                root: PathBuf::from(unescape(root)),
            })
        })
        .collect()
}

/// The `0::PATH` entry of a `/proc/PID/cgroup` file: the process's cgroup in
/// the unified hierarchy, relative to the reader's cgroup namespace.
pub fn parse_proc_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Rejects relative paths and `..` components (a `.` inside the path is
/// what [`Path::components`] drops, so it is let through).
pub(crate) fn check_clean_absolute(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if !bytes.starts_with(b"/") {
        return Err(Error::InvalidPath {
            path: path.to_owned(),
            reason: "cgroup path must be absolute",
        });
    }
    // One pass over the bytes: a `..` is a component wherever it stands.
    if bytes.split(|&b| b == b'/').any(|c| c == b"..") {
        return Err(Error::InvalidPath {
            path: path.to_owned(),
            reason: "cgroup path must not contain `.` or `..`",
        });
    }
    Ok(())
}

/// A cgroup2 hierarchy as this process sees it: a mount point and the part
/// of the hierarchy it shows.
#[derive(Debug, Clone)]
pub struct CgroupFs {
    mount_point: PathBuf,
    root: PathBuf,
    verify: bool,
}

impl CgroupFs {
    /// Finds the cgroup2 mount in `/proc/self/mountinfo`, preferring one
    /// that shows the whole (namespaced) hierarchy, then `/sys/fs/cgroup`.
    pub fn discover() -> Result<Self> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, Op::Read, e))?;
        let mounts = parse_mountinfo(&text);
        let best = mounts
            .iter()
            .max_by_key(|m| {
                (
                    m.root == Path::new("/"),
                    m.mount_point == Path::new("/sys/fs/cgroup"),
                )
            })
            .ok_or(Error::InvalidPath {
                path: path.to_owned(),
                reason: "no cgroup2 filesystem is mounted (is the memory controller on cgroup v1?)",
            })?;
        Ok(CgroupFs {
            mount_point: best.mount_point.clone(),
            root: best.root.clone(),
            verify: true,
        })
    }

    /// Treats `dir` as the root of a cgroup2 hierarchy without checking that
    /// it is one. For tests and benchmarks on synthetic trees in a temporary
    /// folder; writes go to plain files there.
    pub fn from_dir_unchecked(dir: impl Into<PathBuf>) -> Self {
        CgroupFs {
            mount_point: dir.into(),
            root: PathBuf::from("/"),
            verify: false,
        }
    }

    /// The mount point.
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// Maps a hierarchy path (as in `/proc/PID/cgroup`) to a filesystem path.
    pub fn fs_path(&self, hierarchy_path: impl AsRef<Path>) -> Result<PathBuf> {
        let hp = hierarchy_path.as_ref();
        check_clean_absolute(hp)?;
        let rel = hp
            .strip_prefix(&self.root)
            .map_err(|_| Error::InvalidPath {
                path: hp.to_owned(),
                reason: "cgroup is outside the part of the hierarchy this mount shows",
            })?;
        // Sized once: `join` grew the buffer twice for each of 10,000
        // cgroups attached at start (issue 12).
        let (mount, rel) = (self.mount_point.as_os_str(), rel.as_os_str());
        let mut out = PathBuf::with_capacity(mount.len() + 1 + rel.len());
        out.push(mount);
        if !rel.is_empty() {
            out.push(rel);
        }
        Ok(out)
    }

    /// Maps a filesystem path under the mount to its hierarchy path.
    pub fn hierarchy_path(&self, fs_path: &Path) -> Result<PathBuf> {
        check_clean_absolute(fs_path)?;
        let rel = fs_path
            .strip_prefix(&self.mount_point)
            .map_err(|_| Error::InvalidPath {
                path: fs_path.to_owned(),
                reason: "path is not under the cgroup2 mount",
            })?;
        Ok(self.root.join(rel))
    }

    /// Opens the cgroup at a filesystem path under the mount.
    pub fn open(&self, fs_path: impl AsRef<Path>) -> Result<Cgroup> {
        let fs_path = fs_path.as_ref();
        let hp = self.hierarchy_path(fs_path)?;
        Cgroup::open_dir(fs_path, hp, self.verify)
    }

    /// Opens the cgroup at a hierarchy path such as `/system.slice/foo.service`.
    /// The path is bytes, not text (a cgroup name need not be UTF-8).
    pub fn open_hierarchy(&self, hierarchy_path: impl AsRef<Path>) -> Result<Cgroup> {
        let hierarchy_path = hierarchy_path.as_ref();
        let fs = self.fs_path(hierarchy_path)?;
        Cgroup::open_dir(&fs, hierarchy_path.to_path_buf(), self.verify)
    }

    /// [`CgroupFs::open_hierarchy`] with the directory's `fstat(2)`, for a
    /// caller that needs it anyway (identity, owner): the cgroup2 check
    /// (`fstatfs(2)`) is skipped when the directory is on `checked_dev`, a
    /// device that passed it before (one device, one superblock: the same
    /// cgroup2 filesystem). Attaching 10,000 cgroups then checks the mount
    /// once, not 10,000 times.
    pub(crate) fn open_hierarchy_stat(
        &self,
        hierarchy_path: &Path,
        checked_dev: Option<u64>,
    ) -> Result<(Cgroup, rustix::fs::Stat)> {
        let fs = self.fs_path(hierarchy_path)?;
        let cg = Cgroup::open_dir_unchecked(&fs, hierarchy_path.to_path_buf(), self.verify)?;
        let st = self.stat_checked(&cg, checked_dev)?;
        Ok((cg, st))
    }

    /// [`CgroupFs::open_hierarchy_stat`] through `parent`, the open
    /// directory of the cgroup's parent: `openat(2)` of its last name
    /// instead of the whole path. `Ok(None)` when that fails (the name is
    /// not there, or is no directory): the caller opens by path, whose
    /// error names the cgroup.
    pub(crate) fn open_hierarchy_stat_in(
        &self,
        parent: std::os::fd::BorrowedFd<'_>,
        hierarchy_path: &Path,
        checked_dev: Option<u64>,
    ) -> Result<Option<(Cgroup, rustix::fs::Stat)>> {
        let fs = self.fs_path(hierarchy_path)?;
        // The name as a C string on the stack (a longer one is no cgroup
        // name: the open by path says what is wrong with it).
        let mut c = [0u8; crate::util::NAME_MAX + 1];
        let Some(name) = crate::util::path_file_name(&fs)
            .and_then(|n| crate::util::stack_cstr(&mut c, n.as_encoded_bytes()))
        else {
            return Ok(None);
        };
        let flags = rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::CLOEXEC
            | rustix::fs::OFlags::NOFOLLOW;
        let Ok(dir) = rustix::fs::openat(parent, name, flags, rustix::fs::Mode::empty()) else {
            return Ok(None);
        };
        let cg = Cgroup::from_parts(dir, fs.into(), hierarchy_path.into(), self.verify);
        let st = self.stat_checked(&cg, checked_dev)?;
        Ok(Some((cg, st)))
    }

    /// The `fstat(2)` of `cg`'s directory, after the cgroup2 check unless
    /// its device is `checked_dev` (see [`CgroupFs::open_hierarchy_stat`]).
    fn stat_checked(&self, cg: &Cgroup, checked_dev: Option<u64>) -> Result<rustix::fs::Stat> {
        let st = cg.dir_stat()?;
        if self.verify && checked_dev != Some(stat_dev(&st)) {
            cg.check_magic()?;
        }
        Ok(st)
    }

    /// The root of the mount.
    pub fn root(&self) -> Result<Cgroup> {
        Cgroup::open_dir(&self.mount_point, self.root.clone(), self.verify)
    }

    /// The cgroup process `pid` is in (`None` for ourselves).
    pub fn of_process(&self, pid: Option<i32>) -> Result<Cgroup> {
        let path = match pid {
            Some(p) => PathBuf::from(format!("/proc/{p}/cgroup")),
            None => PathBuf::from("/proc/self/cgroup"),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| match (e.kind(), pid) {
            (std::io::ErrorKind::NotFound, Some(p)) => Error::ProcessGone { pid: p },
            _ => Error::io(&path, Op::Read, e),
        })?;
        let hp = parse_proc_cgroup(&text).ok_or(Error::InvalidPath {
            path: path.clone(),
            reason: "no cgroup-v2 (`0::`) entry",
        })?;
        self.open_hierarchy(hp)
    }
}

/// The device of a `fstat(2)` result (`st_dev`'s width differs between targets).
pub(crate) fn stat_dev(st: &rustix::fs::Stat) -> u64 {
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    let dev = st.st_dev as u64;
    dev
}

/// Whether the cgroup2 mount of device `dev` (an `st_dev`) counts every
/// memory event of a cgroup in the hierarchical `memory.events` of it and
/// of each ancestor as well as in its own `memory.events.local` (the
/// kernel's `memcg_memory_event`): true unless mounted with
/// `memory_localevents`, which makes `memory.events` local too. From the
/// super options of its line in `/proc/self/mountinfo`; `false` when that
/// cannot be read or has no cgroup2 line for the device (nothing may be
/// inferred then).
pub(crate) fn memory_events_hierarchical(dev: u64) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|text| local_events_option(&text, dev))
        .is_some_and(|local| !local)
}

/// Whether the cgroup2 line of device `dev` in mountinfo `text` has the
/// `memory_localevents` super option (`None`: no cgroup2 line for it).
fn local_events_option(text: &str, dev: u64) -> Option<bool> {
    let want = format!("{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev));
    cgroup2_lines(text).find_map(|(mut pre, mut post)| {
        if pre.nth(2)? != want {
            return None;
        }
        let opts = post.nth(1).unwrap_or("");
        Some(opts.split(',').any(|o| o == "memory_localevents"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "\
24 29 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
40 24 0:27 / /sys/fs/cgroup/memory rw shared:10 - cgroup cgroup rw,memory
";

    #[test]
    fn finds_cgroup2_and_ignores_v1() {
        let m = parse_mountinfo(HOST);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_point, Path::new("/sys/fs/cgroup"));
        assert_eq!(m[0].root, Path::new("/"));
    }

    #[test]
    fn the_local_events_option_of_a_device() {
        let dev = rustix::fs::makedev(0, 26);
        assert_eq!(local_events_option(HOST, dev), Some(false));
        let local = HOST.replace("memory_recursiveprot", "memory_localevents");
        assert_eq!(local_events_option(&local, dev), Some(true));
        // The cgroup v1 line of another device, and no line at all.
        assert_eq!(local_events_option(HOST, rustix::fs::makedev(0, 27)), None);
        assert_eq!(local_events_option("", dev), None);
    }

    #[test]
    fn unescapes_mount_points() {
        let m = parse_mountinfo("1 2 0:1 /a\\040b /mnt/my\\040cg rw - cgroup2 none rw\n");
        assert_eq!(m[0].mount_point, Path::new("/mnt/my cg"));
        assert_eq!(m[0].root, Path::new("/a b"));
    }

    #[test]
    fn fs_paths_under_the_whole_hierarchy() {
        let fs = CgroupFs {
            mount_point: "/sys/fs/cgroup".into(),
            root: "/".into(),
            verify: false,
        };
        for (hier, fs_path) in [
            ("/", "/sys/fs/cgroup"),
            ("/a", "/sys/fs/cgroup/a"),
            ("/a/b..c/..d", "/sys/fs/cgroup/a/b..c/..d"),
        ] {
            assert_eq!(fs.fs_path(hier).unwrap(), Path::new(fs_path), "{hier}");
        }
        for bad in ["/..", "/a/..", "/a/../b", "a", ""] {
            assert!(fs.fs_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn namespace_root_mapping() {
        let fs = CgroupFs {
            mount_point: "/sys/fs/cgroup".into(),
            root: "/kubepods/pod1".into(),
            verify: false,
        };
        assert_eq!(
            fs.fs_path("/kubepods/pod1/ctr").unwrap(),
            Path::new("/sys/fs/cgroup/ctr")
        );
        assert!(fs.fs_path("/system.slice").is_err());
        assert!(fs.fs_path("/kubepods/pod1/../x").is_err());
        assert!(fs.fs_path("relative").is_err());
        assert_eq!(
            fs.hierarchy_path(Path::new("/sys/fs/cgroup/ctr")).unwrap(),
            Path::new("/kubepods/pod1/ctr")
        );
        assert!(fs.hierarchy_path(Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn proc_cgroup_line() {
        assert_eq!(parse_proc_cgroup("0::/user.slice\n"), Some("/user.slice"));
        assert_eq!(parse_proc_cgroup("4:memory:/x\n0::/a/b\n"), Some("/a/b"));
        assert_eq!(parse_proc_cgroup("4:memory:/x\n"), None);
    }
}
