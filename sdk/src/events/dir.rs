//! Child cgroups created and removed, through inotify.

use std::collections::{HashMap, VecDeque};
use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;

pub use super::child_name::ChildName;
use crate::cgroup::Cgroup;
use crate::error::{Error, Op, Result};
use crate::util::{PATH_MAX, io_err};

use super::watch_at::proc_fd_path;
use super::{EventKind, SourceFailure};

/// The longest name of a directory entry (`NAME_MAX`).
pub const NAME_MAX: usize = crate::util::NAME_MAX;
/// The deepest recursion a [`DirWatch`] accepts.
const MAX_DEPTH: u32 = 16;
/// Size of `struct inotify_event` without the name.
const EVENT_HEADER: usize = 16;
/// Read buffer for the inotify fd: room for at least 15 events with names of
/// `NAME_MAX` bytes (the kernel refuses a buffer too small for one).
const INOTIFY_BUF: usize = 4096;

/// A directory watched by a [`DirWatch`]: [`DirId::ROOT`] for the directory
/// the watch was created on, others for nested directories of a recursive
/// watch. Ids of removed directories are reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct DirId(u32);

impl DirId {
    /// The directory the watch was created on.
    pub const ROOT: DirId = DirId(0);

    /// The raw index.
    pub fn index(self) -> u32 {
        self.0
    }
}

/// Whether a child appeared or disappeared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum DirChange {
    /// `mkdir` (or renamed into the directory).
    Created,
    /// `rmdir` (or renamed away).
    Removed,
}

/// A child directory created or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct DirEvent {
    /// Created or removed.
    pub change: DirChange,
    /// The directory it is in ([`DirWatch::rel_path`] gives its path).
    pub parent: DirId,
    /// How deep the child is below the watched directory: 1 for its own
    /// children.
    pub depth: u32,
    /// The child's name.
    pub name: ChildName,
}

/// Options of a [`DirWatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirWatchOptions {
    /// How many levels of children to report: 1 reports the children of the
    /// directory, 2 also their children, and so on (at most 16).
    pub depth: u32,
    /// Report the children that exist when the watch is created as
    /// [`DirChange::Created`]; otherwise only later changes are reported.
    pub report_existing: bool,
    /// How many events may wait in the watch's own queue (created for
    /// children found by scanning a new directory, see below). Beyond it,
    /// events are dropped and [`EventKind::DirOverflow`] reported.
    pub queue: usize,
    /// Directories to pre-allocate watch slots for (recursive watches),
    /// with 32 bytes of name each; more (or longer names) are possible but
    /// allocate.
    pub max_dirs: usize,
}

impl Default for DirWatchOptions {
    fn default() -> Self {
        DirWatchOptions {
            depth: 1,
            report_existing: false,
            queue: 64,
            max_dirs: 64,
        }
    }
}

#[derive(Debug)]
struct Node {
    wd: i32,
    parent: u32,
    depth: u32,
    /// The next node whose (parent, name) has the same hash ([`NO_NODE`]
    /// ends the chain), so [`DirWatch::find_child`] does not scan.
    next_same: u32,
    /// The name, in [`DirWatch::names`]: a few bytes a directory instead
    /// of an inline [`ChildName`] of 256.
    name_at: u32,
    name_len: u8,
}

/// The end of a chain of [`Node::next_same`].
const NO_NODE: u32 = u32::MAX;
/// Bytes of name room per directory reserved up front (cgroup names are
/// short; systemd's scopes and slices are a few dozen bytes).
const NAME_ROOM: usize = 32;
/// Names of removed directories are reclaimed beyond this many bytes.
const NAME_GARBAGE: usize = 4096;

/// FNV-1a of a node's parent and name: the key of the (parent, name)
/// index. Collisions are resolved by comparing along the chain.
fn name_key(parent: u32, name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parent.to_ne_bytes().iter().chain(name) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

// Transient, on the stack only: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Record {
    Event {
        wd: i32,
        mask: ReadFlags,
        name: Option<ChildName>,
    },
    /// The buffer held something that is not an inotify event: resync.
    Malformed,
    /// Nothing more to read now.
    Empty,
    Failed(SourceFailure),
}

/// Watches a cgroup directory for child cgroups created and removed
/// (inotify `IN_CREATE`/`IN_DELETE` of directories, renames as
/// `IN_MOVED_TO`/`IN_MOVED_FROM`), optionally recursively to a depth, so a
/// daemon can follow new containers.
///
/// `mkdir`/`rmdir` queue their inotify events during the syscall, so a
/// change is readable as soon as the syscall returned. When the kernel's
/// queue overflows (`IN_Q_OVERFLOW`), [`EventKind::DirOverflow`] tells the
/// caller to list the directory again. When the watched directory itself is
/// removed (`IN_DELETE_SELF`/`IN_IGNORED`), [`EventKind::Gone`] is reported —
/// note that the kernel sends those only once the last reference to the
/// directory is dropped, so while anyone (including a [`Cgroup`] handle of
/// yours) holds the directory open they are delayed. The watch itself holds
/// no fd of any watched directory for that reason.
///
/// Names are carried inline in events ([`ChildName`]) and all buffers are
/// allocated when the watch is created (see
/// [`DirWatchOptions::max_dirs`]); the names of watched directories are
/// kept back to back in one table, which a burst of removals compacts.
///
/// When a new directory appears in a recursive watch, it is watched and
/// then listed, so children created before the watch was in place are
/// reported too; a child created in that instant may be reported twice.
/// Treat `Created` for a name already known as a no-op.
///
/// ```
/// use oomkit::events::{DirChange, DirWatch, DirWatchOptions, EventKind};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let tmp = tempfile::tempdir()?;
/// let mut w = DirWatch::open_path(tmp.path(), DirWatchOptions::default())?;
/// std::fs::create_dir(tmp.path().join("job-1"))?;
/// match w.next_event() {
///     Some(EventKind::Dir(ev)) => {
///         assert_eq!(ev.change, DirChange::Created);
///         assert_eq!(ev.name, "job-1");
///     }
///     other => panic!("unexpected {other:?}"),
/// }
/// assert_eq!(w.next_event(), None);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DirWatch {
    inotify: OwnedFd,
    path: PathBuf,
    opts: DirWatchOptions,
    nodes: Vec<Option<Node>>,
    free: Vec<u32>,
    /// Watch descriptor → node: an event finds its directory without a
    /// scan (10,000 watched directories at depth 2).
    by_wd: HashMap<i32, u32>,
    /// [`name_key`] → first node of its chain: a new directory is checked
    /// against the known ones without a scan.
    by_name: HashMap<u64, u32>,
    /// The names of the watched directories, back to back; the bytes of
    /// removed ones (`garbage`) are reclaimed when they are most of it.
    names: Vec<u8>,
    garbage: usize,
    buf: Box<[u8]>,
    pos: usize,
    filled: usize,
    queue: VecDeque<EventKind>,
    overflowed: bool,
    gone: bool,
}

fn watch_mask() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::DELETE_SELF
        | WatchFlags::ONLYDIR
}

impl DirWatch {
    /// Watches the directory of `cg`.
    pub fn new(cg: &Cgroup, opts: DirWatchOptions) -> Result<Self> {
        Self::of_cgroup(cg, opts, true)
    }

    /// [`Self::new`] watching only the directory itself (unless
    /// `opts.report_existing`): the directories below that exist are the
    /// caller's to add with [`Self::watch_open_dir`] as it opens them.
    pub(crate) fn new_unscanned(cg: &Cgroup, opts: DirWatchOptions) -> Result<Self> {
        Self::of_cgroup(cg, opts, opts.report_existing)
    }

    fn of_cgroup(cg: &Cgroup, opts: DirWatchOptions, scan: bool) -> Result<Self> {
        // Watch the very directory the handle refers to, through its fd, so
        // a cgroup recreated under the same path is not picked up instead.
        let mut b = [0u8; 32];
        let proc_path = proc_fd_path(&mut b, cg.dir_fd(), b"");
        Self::create(cg.path(), proc_path, opts, scan)
    }

    /// Watches the directory at `path` (any filesystem; tests use a
    /// temporary directory).
    pub fn open_path(path: impl AsRef<Path>, opts: DirWatchOptions) -> Result<Self> {
        Self::create(path.as_ref(), None, opts, true)
    }

    fn create(path: &Path, via: Option<&CStr>, opts: DirWatchOptions, scan: bool) -> Result<Self> {
        if opts.depth == 0 || opts.depth > MAX_DEPTH {
            return Err(Error::InvalidArgument {
                what: "DirWatch depth",
                reason: format!("{} is not between 1 and {MAX_DEPTH}", opts.depth),
            });
        }
        let inotify = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)
            .map_err(|e| Error::sys("inotify_init1", io_err(e)))?;
        let add = |p: &CStr| inotify::add_watch(&inotify, p, watch_mask());
        let wd = match via.map(add) {
            Some(Ok(wd)) => wd,
            // No /proc: fall back to the path.
            _ => inotify::add_watch(&inotify, path, watch_mask()).map_err(|e| match e {
                Errno::NOENT => Error::CgroupGone {
                    path: path.to_owned(),
                },
                Errno::NOTDIR => Error::InvalidPath {
                    path: path.to_owned(),
                    reason: "not a directory",
                },
                e => Error::io(path, Op::Watch, io_err(e)),
            })?,
        };
        let mut nodes = Vec::with_capacity(opts.max_dirs.max(1));
        nodes.push(Some(Node {
            wd,
            parent: 0,
            depth: 0,
            next_same: NO_NODE,
            name_at: 0,
            name_len: 0,
        }));
        let mut by_wd = HashMap::with_capacity(opts.max_dirs.max(1));
        by_wd.insert(wd, 0);
        let mut w = DirWatch {
            inotify,
            path: path.to_owned(),
            opts,
            nodes,
            free: Vec::with_capacity(opts.max_dirs.max(1)),
            by_wd,
            by_name: HashMap::with_capacity(opts.max_dirs.max(1)),
            names: Vec::with_capacity(opts.max_dirs.max(1).saturating_mul(NAME_ROOM)),
            garbage: 0,
            buf: vec![0u8; INOTIFY_BUF].into_boxed_slice(),
            pos: 0,
            filled: 0,
            queue: VecDeque::with_capacity(opts.queue.max(1)),
            overflowed: false,
            gone: false,
        };
        if scan && (opts.depth > 1 || opts.report_existing) {
            w.scan(0, opts.report_existing)
                .map_err(|e| Error::io(path, Op::ReadDir, io_err(e)))?;
        }
        Ok(w)
    }

    /// The watched directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of a watched directory relative to [`path`](Self::path)
    /// (empty for [`DirId::ROOT`]); `None` for an id no longer watched.
    /// Allocates.
    pub fn rel_path(&self, id: DirId) -> Option<PathBuf> {
        let mut chain = Vec::new();
        let mut i = id.0;
        while i != 0 {
            let n = self.node(i)?;
            chain.push(i);
            i = n.parent;
        }
        let mut p = PathBuf::new();
        for &c in chain.iter().rev() {
            p.push(std::ffi::OsStr::from_bytes(self.name_of(c)));
        }
        Some(p)
    }

    /// How many directories are watched (1 for a non-recursive watch).
    pub fn watched_dirs(&self) -> usize {
        self.nodes.iter().filter(|n| n.is_some()).count()
    }

    /// True when events are buffered here (already read from the kernel
    /// but not yet returned), so the fd may not be readable although
    /// [`next_event`](Self::next_event) has more.
    pub fn has_pending(&self) -> bool {
        !self.queue.is_empty() || self.overflowed || self.pos < self.filled
    }

    fn node(&self, i: u32) -> Option<&Node> {
        self.nodes.get(usize::try_from(i).ok()?)?.as_ref()
    }

    /// The next change, or `None` when nothing more is available now (the
    /// fd is non-blocking). Returns [`EventKind::Dir`],
    /// [`EventKind::DirOverflow`], [`EventKind::Gone`] or
    /// [`EventKind::Failed`]. Allocation-free.
    pub fn next_event(&mut self) -> Option<EventKind> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Some(ev);
            }
            if self.overflowed {
                self.overflowed = false;
                return Some(EventKind::DirOverflow);
            }
            match self.next_record() {
                Record::Event { wd, mask, name } => self.handle(wd, mask, name),
                Record::Malformed => self.push(EventKind::DirOverflow),
                Record::Empty => return None,
                Record::Failed(f) => return Some(EventKind::Failed(f)),
            }
        }
    }

    fn next_record(&mut self) -> Record {
        if self.pos >= self.filled {
            if self.gone {
                return Record::Empty;
            }
            loop {
                match rustix::io::read(&self.inotify, &mut self.buf[..]) {
                    Ok(0) => return Record::Empty,
                    Ok(n) => {
                        self.filled = n;
                        self.pos = 0;
                        break;
                    }
                    Err(Errno::INTR) => continue,
                    Err(Errno::AGAIN) => return Record::Empty,
                    Err(e) => return Record::Failed(SourceFailure::io(Op::Read, e)),
                }
            }
        }
        let pos = self.pos;
        let Some((wd, mask, raw, len)) = self.buf.get(pos..self.filled).and_then(inotify_record)
        else {
            self.pos = self.filled;
            return Record::Malformed;
        };
        let name = ChildName::new(raw);
        self.pos = pos + len;
        Record::Event { wd, mask, name }
    }

    fn push(&mut self, ev: EventKind) {
        // Compare with our own bound, not `capacity()`, which may be larger
        // and which a push beyond would grow.
        if self.queue.len() >= self.opts.queue.max(1) {
            self.overflowed = true;
        } else {
            self.queue.push_back(ev);
        }
    }

    fn root_gone(&mut self) {
        if !self.gone {
            self.gone = true;
            self.push(EventKind::Gone);
        }
    }

    fn handle(&mut self, wd: i32, mask: ReadFlags, name: Option<ChildName>) {
        if mask.contains(ReadFlags::QUEUE_OVERFLOW) {
            self.push(EventKind::DirOverflow);
            return;
        }
        // Events of a watch we already dropped (rm_watch queues IN_IGNORED).
        let Some(idx) = self.find_wd(wd) else {
            return;
        };
        if mask.intersects(ReadFlags::IGNORED | ReadFlags::DELETE_SELF) {
            if idx == 0 {
                self.root_gone();
            } else if mask.contains(ReadFlags::IGNORED) {
                self.drop_node(idx);
            }
            return;
        }
        let (Some(name), true) = (name, mask.contains(ReadFlags::ISDIR)) else {
            return;
        };
        let depth = self.node(idx).map_or(0, |n| n.depth) + 1;
        let ev = |change| {
            EventKind::Dir(DirEvent {
                change,
                parent: DirId(idx),
                depth,
                name,
            })
        };
        if mask.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
            self.push(ev(DirChange::Created));
            if depth < self.opts.depth {
                self.watch_child(idx, name, true);
            }
        } else if mask.intersects(ReadFlags::DELETE | ReadFlags::MOVED_FROM) {
            self.push(ev(DirChange::Removed));
            if let Some(c) = self.find_child(idx, &name) {
                self.forget_subtree(c);
            }
        }
    }
}

/// The first `struct inotify_event` in `buf`: its wd, mask, name (up to
/// the first NUL; empty for an event on the watched object itself) and
/// its length in `buf`. `None` when `buf` does not hold a whole event.
pub(crate) fn inotify_record(buf: &[u8]) -> Option<(i32, ReadFlags, &[u8], usize)> {
    let h = buf.get(..EVENT_HEADER)?;
    let word = |i: usize| -> [u8; 4] {
        let mut w = [0u8; 4];
        if let Some(s) = h.get(i..i + 4) {
            w.copy_from_slice(s);
        }
        w
    };
    let wd = i32::from_ne_bytes(word(0));
    let mask = ReadFlags::from_bits_retain(u32::from_ne_bytes(word(4)));
    let len = u32::from_ne_bytes(word(12)) as usize;
    let raw = buf.get(EVENT_HEADER..EVENT_HEADER.checked_add(len)?)?;
    let name_len = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    Some((wd, mask, raw.get(..name_len)?, EVENT_HEADER + len))
}

impl AsFd for DirWatch {
    /// The inotify fd (readable when changes are queued).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }
}

#[path = "dir_tree.rs"]
mod tree;

#[cfg(test)]
#[path = "dir_tests.rs"]
mod tests;
