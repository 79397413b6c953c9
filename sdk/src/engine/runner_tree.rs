//! How the [`Runner`] keeps its tree in step with the cgroup filesystem:
//! the walk at start (and after the directory watch lost events), the
//! directory changes applied a bounded number per turn, each cgroup's
//! `memory.events.local` watch, and the watchdog's copy of the table.
//!
//! At start the directory watch holds only the root; the walk adds the
//! watch of each directory within depth as it attaches it, through the fd
//! the attach opened (issue 12: each cgroup's name is looked up once, not
//! once by the watch's own scan and again by the attach; kernfs lookups
//! and inode instantiation are most of the start-up under emulation).
//! Off the decision path: nothing here runs between an event and a kill.

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use crate::cgroup::Cgroup;
use crate::cgroup::hierarchy::for_each_child_in;
use crate::error::Result;
use crate::events::{DirChange, Scope, Source};

use super::super::CgroupId;
use super::super::local_events::AddError;
use super::super::watchdog::Target;
use super::{Binding, DIR_CHANGES_PER_TURN, EXTRA_SOURCES, Runner};

/// Lists the directories below `dir` (at `path`, `depth` levels below the
/// root) down to `max` levels into `found`, parents before their children;
/// a directory that cannot be listed goes to `unlisted` (nothing below it
/// is judged gone). One `openat` and `getdents64` per directory that may
/// have subdirectories (a leaf is told by its link count, one `statat`),
/// and at most `max` fds open at once.
fn list_tree(
    dir: BorrowedFd<'_>,
    path: &Path,
    depth: u32,
    max: u32,
    found: &mut Vec<PathBuf>,
    unlisted: &mut Vec<PathBuf>,
) {
    use rustix::fs::{AtFlags, Mode, OFlags};
    use rustix::io::Errno;
    use std::os::unix::ffi::OsStrExt;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    let listed = for_each_child_in(dir, &mut buf, |name| {
        let child = path.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
        // A link count of 2 (kernfs counts subdirectories): nothing below.
        let leaf = || {
            rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| st.st_nlink == 2)
        };
        if depth < max && !leaf() {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
            match rustix::fs::openat(dir, name, flags, Mode::empty()) {
                Ok(fd) => {
                    found.push(child.clone());
                    list_tree(fd.as_fd(), &child, depth + 1, max, found, unlisted);
                    return;
                }
                // Removed meanwhile: its removal event follows.
                Err(Errno::NOENT) | Err(Errno::NODEV) => return,
                Err(e) => {
                    tracing::warn!(cgroup = %child.display(), error = %e, "listing a cgroup failed");
                    unlisted.push(child.clone());
                }
            }
        }
        found.push(child);
    });
    match listed {
        Ok(_) | Err(Errno::NOENT) | Err(Errno::NODEV) => {}
        Err(e) => {
            tracing::warn!(cgroup = %path.display(), error = %e, "listing a cgroup failed");
            unlisted.push(path.to_path_buf());
        }
    }
}

impl Runner {
    pub(super) fn watch_cgroup(&mut self, id: CgroupId, cg: &Cgroup) -> Result<()> {
        if !self.memory_events {
            return Ok(());
        }
        let infer = self.local.is_some() && self.may_infer_baseline(cg);
        if let Some(local) = &mut self.local {
            let own = self.own_cwd.as_ref();
            let added = if infer {
                local.add_unread(id, cg, own)
            } else {
                local.add(id, cg, own)
            };
            match added {
                Ok(()) => {
                    if infer {
                        self.baseline_pending(id);
                    }
                    return Ok(());
                }
                // The mount root has no memory.events: nothing to watch there.
                Err(AddError::Read(e)) if e.is_unsupported() => return Ok(()),
                Err(AddError::Read(e)) => return Err(e),
                Err(AddError::NoWatch(errno)) => {
                    if !self.local_fallback {
                        self.local_fallback = true;
                        tracing::warn!(
                            error = %errno,
                            cgroup = %cg.path().display(),
                            "no inotify watch for memory.events.local (fs.inotify.max_user_watches?); \
                             such cgroups are watched with an fd each"
                        );
                    }
                }
            }
        }
        match self.watcher.add_memory_events(cg, Scope::Local) {
            Ok(tok) => {
                self.bindings.insert(tok, Binding::MemoryEvents(id));
                self.events_token.insert(id, tok);
                // Room for the victim's pidfd and caller fds, so the turn
                // that kills never grows the table.
                self.bindings.reserve(EXTRA_SOURCES);
                Ok(())
            }
            // The mount root has no memory.events: nothing to watch there.
            Err(e) if e.is_unsupported() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Gives the watchdog the whole table again (after a reload changed
    /// classes: a cgroup protected by the reload must be protected from
    /// the watchdog too).
    pub(super) fn republish_targets(&self) {
        let Some(wd) = &self.watchdog else { return };
        if let Ok(mut t) = wd.shared().targets.lock() {
            t.clear();
        }
        let ids: Vec<CgroupId> = self.engine.tree().ids().collect();
        for id in ids {
            self.publish_target(id);
        }
    }

    pub(super) fn publish_target(&self, id: CgroupId) {
        let Some(wd) = &self.watchdog else { return };
        let (Some(class), Some(path), Some(cg)) = (
            self.engine.tree().class(id),
            self.engine.tree().path(id),
            self.engine.host().parked(id),
        ) else {
            return;
        };
        if let Ok(mut t) = wd.shared().targets.lock() {
            t.push(Target {
                cg,
                path: path.to_path_buf(),
                priority: class.priority,
                protected: class.protected,
            });
        }
    }

    pub(super) fn add_child(&mut self, hier: &Path) {
        if let Some(id) = self.engine.tree().lookup(hier) {
            if hier == self.root_hier || self.handle_is_current(id) {
                return;
            }
            // Re-created at a known path, its removal lost: rebind.
            tracing::info!(cgroup = %hier.display(), "cgroup re-created; attaching the new one");
            let mut removed = HashSet::new();
            self.remove_child(hier, &mut removed);
            self.forget_targets(&mut removed);
        }
        // A hard cap: each tracked cgroup holds fds, and the fds a kill
        // needs (pidfds, cgroup files) must still be there.
        // `hier` itself is not in the tree (looked up above, or removed).
        let mut missing = 1;
        let mut up = crate::util::path_parent(hier);
        while let Some(a) = up.filter(|a| self.engine.tree().lookup(a).is_none()) {
            missing += 1;
            up = crate::util::path_parent(a);
        }
        let cap = self.engine.config().max_cgroups.min(self.fd_cap);
        if self.engine.tree().len() + missing > cap {
            if self.over_cap.is_empty() {
                tracing::warn!(
                    max_cgroups = self.engine.config().max_cgroups,
                    open_file_cap = self.fd_cap,
                    cgroup = %hier.display(),
                    "cgroup cap reached (max_cgroups, or what the open-file limit holds with fds kept for kills): further cgroups stay untracked (and no group kill covers them)"
                );
            }
            self.over_cap.insert(hier.to_path_buf());
            self.list_attached(hier, None, false);
            return;
        }
        match self.engine.add_cgroup(hier) {
            Ok(id) => {
                if self.events_token.contains_key(&id)
                    || self.local.as_ref().is_some_and(|l| l.contains(id))
                {
                    return;
                }
                let links = self.engine.host().attached_links(id);
                let Ok(cg) = self.engine.host_mut().take_attached(id) else {
                    return;
                };
                if let Err(e) = self.watch_cgroup(id, &cg) {
                    if !e.is_gone() {
                        tracing::warn!(error = %e, "watching a new cgroup failed");
                    }
                }
                self.publish_target(id);
                let watched = self.watch_dir(hier, &cg);
                self.list_attached(
                    hier,
                    Some((&cg, watched.unwrap_or(links))),
                    watched.is_some(),
                );
            }
            Err(e) if e.is_gone() => {}
            Err(e) => {
                tracing::warn!(cgroup = %hier.display(), error = %e, "adding a cgroup failed");
                self.list_attached(hier, None, false);
            }
        }
    }

    /// The walk at start, when the tree holds only the root: lists the
    /// root's children, and each directory below is listed when it is
    /// attached ([`Self::list_attached`]), whose `fstat` has told a leaf
    /// by its link count already. A walk of the whole tree first read
    /// that with a `statat` per cgroup (10,000 at 10,000 cgroups); at
    /// start nothing is tracked, so nothing is to be judged gone.
    pub(super) fn walk_at_start(&mut self) {
        let Ok(root) = self.root_cgroup() else { return };
        self.list_on_attach = true;
        let hier = self.root_hier.clone();
        self.list_children(&hier, &root);
    }

    /// At start ([`Self::walk_at_start`]), or later when its directory
    /// watch was added only now (`watched`: the directory watch missed its
    /// creation, in an overflow), after `hier` was attached (`Some`: its
    /// open directory and link count) or not (over the cap, an error: it
    /// is opened by path, as a whole walk would have listed it): queues its
    /// subdirectories within `depth` as created.
    fn list_attached(
        &mut self,
        hier: &Path,
        attached: Option<(&Cgroup, Option<u64>)>,
        watched: bool,
    ) {
        if !self.list_on_attach && !watched {
            return;
        }
        match attached {
            // kernfs (and tmpfs) count subdirectories in the link count.
            Some((_, Some(2))) => {}
            Some((cg, _)) => self.list_children(hier, cg),
            None => {
                if let Ok(cg) = self.engine.host().fs().open_hierarchy(hier) {
                    self.watch_dir(hier, &cg);
                    self.list_children(hier, &cg);
                }
            }
        }
    }

    /// Adds the watch of `cg`'s directory (at `hier`) through the fd the
    /// attach opened, if the directory watch has none and it lies above the
    /// last level: at start, where the directory watch was made without a
    /// scan of what exists ([`Self::follow_tree`]), instead of a second
    /// lookup of each name; later, for a directory whose creation the watch
    /// missed (an overflow, then the rescan), which would otherwise never
    /// report its children. `Some`: a watch was added, with the link count
    /// read again after it (a subdirectory made before the watch is then
    /// listed, one made after it is reported); `None`: none added.
    fn watch_dir(&mut self, hier: &Path, cg: &Cgroup) -> Option<Option<u64>> {
        let (Some(tok), Ok(rel)) = (self.dir_token, hier.strip_prefix(&self.root_hier)) else {
            return None;
        };
        let Some(Source::Dir(dir)) = self.watcher.source_mut(tok) else {
            return None;
        };
        if !dir.watch_open_dir(rel, cg.dir_fd(), self.own_cwd.as_ref()) {
            return None;
        }
        // `nlink_t` is u32 on some targets.
        #[allow(clippy::useless_conversion)]
        let links = rustix::fs::fstat(cg.dir_fd())
            .ok()
            .map(|st| u64::from(st.st_nlink));
        Some(links)
    }

    /// Queues the directories directly below `cg` (at `hier`) as created,
    /// if they are within `depth`: one `getdents64`, no `stat` each.
    fn list_children(&mut self, hier: &Path, cg: &Cgroup) {
        let Ok(rel) = hier.strip_prefix(&self.root_hier) else {
            return;
        };
        let level = u32::try_from(rel.components().count()).unwrap_or(u32::MAX);
        if level >= self.depth {
            return;
        }
        let mut found = Vec::new();
        let mut unlisted = Vec::new();
        list_tree(
            cg.dir_fd(),
            hier,
            level + 1,
            level + 1,
            &mut found,
            &mut unlisted,
        );
        self.dir_changes
            .extend(found.into_iter().map(|p| (DirChange::Created, p)));
    }

    /// Removes `hier` and its subtree from the tree and the event sources;
    /// their paths go to `removed` for the watchdog's table.
    pub(super) fn remove_child(&mut self, hier: &Path, removed: &mut HashSet<PathBuf>) {
        if !self.over_cap.is_empty() {
            self.over_cap.retain(|p| !p.starts_with(hier));
        }
        let Some(top) = self.engine.tree().lookup(hier) else {
            return;
        };
        for id in self.engine.tree().subtree(top) {
            if let Some(tok) = self.events_token.remove(&id) {
                self.bindings.remove(&tok);
                let _ = self.watcher.remove(tok);
            }
            if let Some(local) = &mut self.local {
                local.remove(id);
            }
            if let Some(p) = self.engine.tree().path(id) {
                removed.insert(p.to_path_buf());
            }
        }
        self.engine.remove_cgroup(hier);
    }

    /// Applies up to [`DIR_CHANGES_PER_TURN`] queued directory changes, in
    /// order; removals are batched (one pass over the watchdog's table).
    pub(super) fn apply_dir_changes(&mut self) {
        let k = self.dir_changes.len().min(DIR_CHANGES_PER_TURN);
        let batch: Vec<(DirChange, PathBuf)> = self.dir_changes.drain(..k).collect();
        let mut removed: HashSet<PathBuf> = HashSet::new();
        self.engine.host_mut().begin_batch();
        self.begin_siblings();
        for (change, path) in &batch {
            match change {
                DirChange::Created => {
                    if !removed.is_empty() {
                        // A re-creation after a removal in this batch: the
                        // removal must reach the watchdog first.
                        self.forget_targets(&mut removed);
                    }
                    self.add_child(path);
                }
                DirChange::Removed => {
                    self.settle_siblings();
                    self.remove_child(path, &mut removed)
                }
            }
        }
        self.end_siblings();
        self.engine.host_mut().end_batch();
        self.forget_targets(&mut removed);
        if let Some(own) = &self.own_cwd {
            own.restore();
        }
    }

    /// Drops the watchdog targets of removed paths, in one pass.
    pub(super) fn forget_targets(&mut self, removed: &mut HashSet<PathBuf>) {
        if removed.is_empty() {
            return;
        }
        if let Some(wd) = &self.watchdog {
            if let Ok(mut t) = wd.shared().targets.lock() {
                t.retain(|t| !removed.contains(&t.path));
            }
        }
        removed.clear();
    }

    /// Lists the tree below the root, to `depth`, after the directory
    /// watch lost events (overflow) and at start: queues what is missing as
    /// created and what is gone as removed, so no stale entry keeps its fds
    /// or its path bound to a dead directory.
    pub(super) fn rescan_pending(&mut self) {
        let Ok(root) = self.root_cgroup() else { return };
        let mut seen: HashSet<PathBuf> = HashSet::with_capacity(self.engine.tree().len());
        // Below a directory that could not be listed nothing is judged gone.
        let mut unlisted: Vec<PathBuf> = Vec::new();
        seen.insert(self.root_hier.clone());
        let mut found = Vec::with_capacity(self.engine.tree().len());
        list_tree(
            root.dir_fd(),
            &self.root_hier,
            1,
            self.depth,
            &mut found,
            &mut unlisted,
        );
        for child_path in found {
            seen.insert(child_path.clone());
            self.dir_changes.push((DirChange::Created, child_path));
        }
        let tree = self.engine.tree();
        for id in tree.ids() {
            let Some(p) = tree.path(id) else { continue };
            if !seen.contains(p) && !unlisted.iter().any(|u| p.starts_with(u)) {
                self.dir_changes.push((DirChange::Removed, p.to_path_buf()));
            }
        }
    }

    /// Whether the cgroup the host knows as `id` is the directory now at
    /// its path (not a removed one whose path was reused): opening it
    /// checks the directory's identity.
    pub(super) fn handle_is_current(&self, id: CgroupId) -> bool {
        self.engine.host().handle(id).is_ok()
    }
}
