//! The node table of a [`DirWatch`]: which watch descriptor and which
//! (parent, name) is which watched directory, adding a child's watch,
//! dropping a subtree, and keeping the back-to-back name table compact.
//! Apart from `dir.rs` so the inotify event handling reads on its own;
//! both sides share the table's fields.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::inotify;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir};
use rustix::io::Errno;

use super::super::watch_at::{OwnCwd, add_watch_at};
use super::*;

impl DirWatch {
    pub(super) fn find_wd(&self, wd: i32) -> Option<u32> {
        self.by_wd.get(&wd).copied()
    }

    /// The name of node `i` (empty for the root or an unknown node).
    pub(super) fn name_of(&self, i: u32) -> &[u8] {
        self.node(i)
            .and_then(|n| {
                let at = n.name_at as usize;
                self.names.get(at..at + usize::from(n.name_len))
            })
            .unwrap_or(&[])
    }

    pub(super) fn find_child(&self, parent: u32, name: &ChildName) -> Option<u32> {
        let name = name.as_bytes();
        let mut i = self.by_name.get(&name_key(parent, name)).copied()?;
        while i != NO_NODE {
            let n = self.node(i)?;
            if n.parent == parent && n.depth > 0 && self.name_of(i) == name {
                return Some(i);
            }
            i = n.next_same;
        }
        None
    }

    /// Removes node `idx` from the (parent, name) and wd indexes.
    pub(super) fn unindex(&mut self, idx: u32) {
        let Some((wd, key, next)) = self
            .node(idx)
            .map(|n| (n.wd, name_key(n.parent, self.name_of(idx)), n.next_same))
        else {
            return;
        };
        if self.by_wd.get(&wd) == Some(&idx) {
            self.by_wd.remove(&wd);
        }
        if idx == 0 {
            return;
        }
        let mut prev = NO_NODE;
        let mut i = self.by_name.get(&key).copied().unwrap_or(NO_NODE);
        while i != NO_NODE && i != idx {
            prev = i;
            i = self.node(i).map_or(NO_NODE, |n| n.next_same);
        }
        if i != idx {
            return;
        }
        if prev == NO_NODE {
            if next == NO_NODE {
                self.by_name.remove(&key);
            } else {
                self.by_name.insert(key, next);
            }
        } else if let Some(Some(p)) = self.nodes.get_mut(prev as usize) {
            p.next_same = next;
        }
    }

    pub(super) fn drop_node(&mut self, idx: u32) {
        self.unindex(idx);
        if idx != 0 {
            self.garbage += self.name_of(idx).len();
        }
        if let Some(slot) = usize::try_from(idx)
            .ok()
            .and_then(|i| self.nodes.get_mut(i))
        {
            if slot.take().is_some() {
                self.free.push(idx);
            }
        }
        if self.garbage > NAME_GARBAGE && self.garbage * 2 > self.names.len() {
            self.compact_names();
        }
    }

    /// Copies the names of the watched directories into a new table
    /// without the removed ones (one allocation, after a burst of
    /// removals; never on creation).
    pub(super) fn compact_names(&mut self) {
        let mut names = Vec::with_capacity(self.names.capacity());
        for n in self.nodes.iter_mut().flatten() {
            let at = n.name_at as usize;
            let name = self
                .names
                .get(at..at + usize::from(n.name_len))
                .unwrap_or(&[]);
            n.name_at = u32::try_from(names.len()).unwrap_or(u32::MAX);
            names.extend_from_slice(name);
        }
        self.names = names;
        self.garbage = 0;
    }

    /// Stops watching `idx` and everything below it.
    pub(super) fn forget_subtree(&mut self, idx: u32) {
        let mut i = 0;
        while i < self.nodes.len() {
            let child = self.nodes[i]
                .as_ref()
                .is_some_and(|n| n.parent == idx && n.depth > 0)
                && i != idx as usize;
            if child {
                if let Ok(c) = u32::try_from(i) {
                    self.forget_subtree(c);
                }
            }
            i += 1;
        }
        if let Some(n) = self.node(idx) {
            // Fails with EINVAL when the kernel already dropped the watch.
            let _ = inotify::remove_watch(&self.inotify, n.wd);
        }
        self.drop_node(idx);
    }

    /// Writes the absolute path of node `idx` (plus `/name`) into `buf` as a
    /// C string, without allocating.
    pub(super) fn node_path<'b>(
        &self,
        buf: &'b mut [u8; PATH_MAX],
        idx: u32,
        name: Option<&ChildName>,
    ) -> Option<&'b CStr> {
        let mut chain = [0u32; MAX_DEPTH as usize + 1];
        let mut n = 0;
        let mut i = idx;
        while i != 0 {
            *chain.get_mut(n)? = i;
            n += 1;
            i = self.node(i)?.parent;
        }
        let mut len = 0usize;
        let mut put = |s: &[u8]| -> Option<()> {
            buf.get_mut(len..len + s.len())?.copy_from_slice(s);
            len += s.len();
            Some(())
        };
        put(self.path.as_os_str().as_encoded_bytes())?;
        for &c in chain.get(..n)?.iter().rev() {
            put(b"/")?;
            put(self.name_of(c))?;
        }
        if let Some(name) = name {
            put(b"/")?;
            put(name.as_bytes())?;
        }
        put(b"\0")?;
        CStr::from_bytes_with_nul(buf.get(..len)?).ok()
    }

    /// Adds node `name` below `parent`, watched as `wd`; its index.
    fn insert_node(&mut self, parent: u32, name: &ChildName, wd: i32, depth: u32) -> u32 {
        let key = name_key(parent, name.as_bytes());
        let node = Node {
            wd,
            parent,
            depth,
            next_same: self.by_name.get(&key).copied().unwrap_or(NO_NODE),
            name_at: u32::try_from(self.names.len()).unwrap_or(u32::MAX),
            name_len: u8::try_from(name.as_bytes().len()).unwrap_or(u8::MAX),
        };
        self.names.extend_from_slice(name.as_bytes());
        let idx = match self.free.pop() {
            Some(i) => {
                if let Some(slot) = self.nodes.get_mut(i as usize) {
                    *slot = Some(node);
                }
                i
            }
            None => {
                self.nodes.push(Some(node));
                u32::try_from(self.nodes.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.by_name.insert(key, idx);
        self.by_wd.insert(wd, idx);
        idx
    }

    /// Watches the directory `dir` holds open as the one at `rel` below the
    /// watched root, if its parent is watched, it is not yet, and it lies
    /// above the last level (its children are reported). The watch is on
    /// `"."` inside it (see `watch_at`: by `fchdir` with `own` on its
    /// thread): the caller's own open of the directory serves, instead of
    /// another lookup of its name. Nothing below it is listed; whoever
    /// lists it does so after this returns `true` (a subdirectory made
    /// before the watch is in that listing, one made after it is
    /// reported). Watch errors other than "gone" are reported as
    /// [`EventKind::Failed`], as for a watch added on an event.
    pub(crate) fn watch_open_dir(
        &mut self,
        rel: &Path,
        dir: BorrowedFd<'_>,
        own: Option<&OwnCwd>,
    ) -> bool {
        let mut parent = 0u32;
        let mut names = rel.components().peekable();
        let name = loop {
            let Some(std::path::Component::Normal(c)) = names.next() else {
                return false;
            };
            let Some(name) = ChildName::new(c.as_encoded_bytes()) else {
                return false;
            };
            if names.peek().is_none() {
                break name;
            }
            match self.find_child(parent, &name) {
                Some(i) => parent = i,
                None => return false,
            }
        };
        let depth = self.node(parent).map_or(0, |n| n.depth) + 1;
        if depth >= self.opts.depth || self.find_child(parent, &name).is_some() {
            return false;
        }
        let mask = watch_mask() | WatchFlags::DONT_FOLLOW;
        match add_watch_at(self.inotify.as_fd(), dir, c".", mask, own) {
            // inotify gives a directory watched already (under another
            // name: renamed since it was opened) the watch it has: that
            // node keeps it.
            Ok(wd) if self.by_wd.contains_key(&wd) => false,
            Ok(wd) => {
                self.insert_node(parent, &name, wd, depth);
                true
            }
            // Removed already: its removal event follows.
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => false,
            Err(e) => {
                self.push(EventKind::Failed(SourceFailure::io(Op::Watch, e)));
                false
            }
        }
    }

    /// Starts watching child `name` of node `parent`, then lists it for
    /// children that appeared before the watch was in place (reporting them
    /// if `report`).
    pub(super) fn watch_child(&mut self, parent: u32, name: ChildName, report: bool) {
        self.watch_child_in(parent, name, report, None);
    }

    /// [`Self::watch_child`] from a listing of the parent: `parent_fd` is
    /// the parent's open directory, through which the child's link count
    /// is read (one path component to look up instead of the whole path).
    fn watch_child_in(
        &mut self,
        parent: u32,
        name: ChildName,
        report: bool,
        parent_fd: Option<BorrowedFd<'_>>,
    ) {
        if self.find_child(parent, &name).is_some() {
            return;
        }
        let mut pb = [0u8; PATH_MAX];
        let Some(path) = self.node_path(&mut pb, parent, Some(&name)) else {
            self.push(EventKind::Failed(SourceFailure::io(
                Op::Watch,
                Errno::NAMETOOLONG,
            )));
            return;
        };
        let wd =
            match inotify::add_watch(&self.inotify, path, watch_mask() | WatchFlags::DONT_FOLLOW) {
                Ok(wd) => wd,
                // Removed (or replaced by a non-directory) already: its
                // removal event follows.
                Err(Errno::NOENT) | Err(Errno::NOTDIR) => return,
                Err(e) => {
                    self.push(EventKind::Failed(SourceFailure::io(Op::Watch, e)));
                    return;
                }
            };
        let depth = self.node(parent).map_or(0, |n| n.depth) + 1;
        let idx = self.insert_node(parent, &name, wd, depth);
        if !report && depth + 1 >= self.opts.depth {
            // Its children would be neither reported nor watched (they lie
            // at the last level): no `stat`, no listing. At start-up over
            // 10,000 siblings at depth 2 that is 10,000 `statat`s fewer.
            return;
        }
        // The link count is read after the watch is in place: a
        // subdirectory created after it is reported by the watch.
        let leaf = parent_fd.map(|fd| {
            rustix::fs::statat(fd, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| st.st_nlink == 2)
        });
        if leaf == Some(true) {
            return;
        }
        if let Err(e) = self.scan_known(idx, report, leaf.is_some()) {
            if e != Errno::NOENT {
                self.push(EventKind::Failed(SourceFailure::io(Op::ReadDir, e)));
            }
        }
    }

    /// Lists directory `idx` (unless its link count says it has no
    /// subdirectories, see [`may_have_subdirs`]): reports its subdirectories (if `report`) and
    /// watches those within the depth.
    pub(super) fn scan(&mut self, idx: u32, report: bool) -> rustix::io::Result<()> {
        self.scan_known(idx, report, false)
    }

    /// [`Self::scan`]; `checked`: the link count was read already and said
    /// it may have subdirectories.
    fn scan_known(&mut self, idx: u32, report: bool, checked: bool) -> rustix::io::Result<()> {
        let mut pb = [0u8; PATH_MAX];
        let path = self
            .node_path(&mut pb, idx, None)
            .ok_or(Errno::NAMETOOLONG)?;
        if !checked && !may_have_subdirs(path) {
            return Ok(());
        }
        let fd = rustix::fs::openat(
            rustix::fs::CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )?;
        let depth = self.node(idx).map_or(0, |n| n.depth) + 1;
        let mut dbuf = [MaybeUninit::<u8>::uninit(); 2048];
        let mut dir = RawDir::new(&fd, &mut dbuf);
        while let Some(entry) = dir.next() {
            let entry = entry?;
            let cname = entry.file_name();
            let bytes = cname.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let is_dir = match entry.file_type() {
                FileType::Directory => true,
                FileType::Unknown => rustix::fs::statat(&fd, cname, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory),
                _ => false,
            };
            let Some(name) = ChildName::new(bytes).filter(|_| is_dir) else {
                continue;
            };
            if report {
                self.push(EventKind::Dir(DirEvent {
                    change: DirChange::Created,
                    parent: DirId(idx),
                    depth,
                    name,
                }));
            }
            if depth < self.opts.depth {
                self.watch_child_in(idx, name, report, Some(fd.as_fd()));
            }
        }
        Ok(())
    }
}

/// False when a directory's link count says it has no subdirectories: 2
/// (itself and `.`), as kernfs (cgroupfs) and tmpfs count them. One
/// `stat(2)` instead of `openat` + `getdents64` + `close` for each leaf of
/// a tree of thousands of cgroups. Filesystems that do not count (btrfs
/// reports 1) and a failed `stat` say "maybe": the directory is listed. A
/// subdirectory created after the `stat` is reported by the watch, which is
/// in place before the listing.
fn may_have_subdirs(path: &CStr) -> bool {
    rustix::fs::stat(path).map_or(true, |st| st.st_nlink != 2)
}
