//! The loop's registry of the cgroups it manages.
//!
//! Cgroups come and go (containers start and stop); each gets a
//! [`CgroupId`] — a slot index plus a generation — so a stale id held across
//! a removal can never name the cgroup that later reuses the slot.
//! Classification (priority tier, protection) is computed once, when a
//! cgroup appears, so the decision path only reads numbers.
//!
//! Every cgroup keeps its usage (`memory.current`, swap: 16 bytes); the
//! rest of [`CgroupStats`] (limits, events, PSI: 270 bytes) is read for a
//! few cgroups a decision (the scope, what a handler asks for), so it lives
//! in a small table of recent details instead of in every node: at 10,000
//! cgroups that is 2.5 MiB less to keep resident.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::types::{CgroupId, CgroupStats, XattrInfo};

/// How a handler (and the loop) treats a cgroup, decided when it appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Class {
    /// Higher is more important; the lowest tier is killed first.
    pub priority: i32,
    /// Never killed, throttled or frozen by the loop.
    pub protected: bool,
}

/// What the loop knows of a cgroup when it appears, for classification.
#[derive(Debug, Clone)]
pub struct CgroupMeta<'a> {
    /// Path within the hierarchy, e.g. `/kubepods.slice/kubepods-besteffort.slice/…`.
    pub path: &'a Path,
    /// Depth below the managed root (the root itself is 0).
    pub depth: u16,
    /// `oomkit.priority` from a trusted xattr (see [`XattrTrust`]), if set and valid.
    pub xattr_priority: Option<i32>,
    /// `oomkit.protected` from a trusted xattr set to `1`.
    pub xattr_protected: bool,
    /// The class of the parent (children inherit unless the handler says otherwise).
    pub parent_class: Option<Class>,
    /// The directory belongs to neither root nor the managed root's owner:
    /// a delegated subtree, whose names and `user.` xattrs a tenant
    /// chooses. Handlers must not let such a cgroup rise above its parent.
    pub delegated: bool,
}

/// Which xattrs on a cgroup directory are believed.
///
/// `trusted.*` needs CAP_SYS_ADMIN to set, so it is always believed. `user.*`
/// can be set by the directory's owner — in a delegated subtree, by the
/// container itself — so it is believed only when the directory belongs to
/// root or to the owner of the managed root: a container cannot exempt itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum XattrTrust {
    /// Read `trusted.oomkit.*` only.
    TrustedOnly,
    /// Also `user.oomkit.*` under the owner rule above.
    TrustedAndOwnedUser,
}

impl XattrTrust {
    /// Reads xattr `key` of `cg` under both namespaces by this rule:
    /// `trusted.` always, `user.` only with [`TrustedAndOwnedUser`](Self::TrustedAndOwnedUser)
    /// and a directory owned by root or by `root_owner` (the managed root's
    /// owner).
    pub(crate) fn read(
        self,
        cg: &crate::cgroup::Cgroup,
        key: &str,
        root_owner: Option<u32>,
    ) -> Option<Vec<u8>> {
        if let Ok(Some(v)) = cg.xattr(&format!("trusted.{key}")) {
            return Some(v);
        }
        if self == XattrTrust::TrustedAndOwnedUser {
            let owner = cg.owner_uid().ok()?;
            if owner == 0 || Some(owner) == root_owner {
                if let Ok(Some(v)) = cg.xattr(&format!("user.{key}")) {
                    return Some(v);
                }
            }
        }
        None
    }
}

#[derive(Debug)]
pub(crate) struct Node {
    /// Exactly as long as the path (no spare capacity): one heap block of
    /// the path's size per cgroup.
    pub(crate) path: Box<Path>,
    pub(crate) parent: Option<CgroupId>,
    pub(crate) depth: u16,
    pub(crate) class: Class,
    usage: Usage,
    pub(crate) xattr: XattrInfo,
    /// Children, so a removal walks only the removed subtree.
    children: Vec<CgroupId>,
    /// Position in the parent's `children`.
    pos: u32,
    /// The next node whose path has the same hash ([`NO_NODE`] ends the
    /// chain): the path index holds no second copy of every path.
    next_same: u32,
    generation: u32,
    live: bool,
}

/// The end of a chain of [`Node::next_same`].
const NO_NODE: u32 = u32::MAX;

/// `memory.current` and `memory.swap.current` of a node, [`Usage::NONE`]
/// for not read (or not provided).
#[derive(Debug, Clone, Copy)]
struct Usage {
    current: u64,
    swap: u64,
}

impl Usage {
    const NONE: u64 = u64::MAX;
    const UNREAD: Usage = Usage {
        current: Self::NONE,
        swap: Self::NONE,
    };

    fn of(st: &CgroupStats) -> Self {
        let pack = |v: Option<u64>| v.unwrap_or(Self::NONE);
        Usage {
            current: pack(st.current),
            swap: pack(st.swap_current),
        }
    }

    fn into_stats(self, st: &mut CgroupStats) {
        let unpack = |v: u64| (v != Self::NONE).then_some(v);
        st.current = unpack(self.current);
        st.swap_current = unpack(self.swap);
    }
}

/// How many cgroups keep their detail (everything but usage) at a time:
/// one decision reads the detail of its scope and of the few cgroups a
/// handler asks about. Past this, the oldest is forgotten.
const DETAILS: usize = 32;

/// The detail of recently read cgroups, by id (a stale id matches nothing).
#[derive(Debug)]
struct Details {
    entries: Vec<(CgroupId, CgroupStats)>,
    /// The entry replaced next once full.
    next: usize,
}

impl Details {
    fn get(&self, id: CgroupId) -> Option<&CgroupStats> {
        self.entries.iter().find(|e| e.0 == id).map(|e| &e.1)
    }

    /// The entry of `id`, made (empty) if it has none. No allocation:
    /// the table is sized once.
    fn entry(&mut self, id: CgroupId) -> &mut CgroupStats {
        let at = match self.entries.iter().position(|e| e.0 == id) {
            Some(i) => i,
            None if self.entries.len() < self.entries.capacity() => {
                self.entries.push((id, CgroupStats::default()));
                self.entries.len() - 1
            }
            None => {
                let i = self.next % self.entries.len().max(1);
                self.next = i + 1;
                if let Some(e) = self.entries.get_mut(i) {
                    *e = (id, CgroupStats::default());
                }
                i
            }
        };
        &mut self.entries[at].1
    }
}

impl Default for Details {
    fn default() -> Self {
        Details {
            entries: Vec::with_capacity(DETAILS),
            next: 0,
        }
    }
}

/// The key of a path in the path index (collisions are resolved along the
/// chain by comparing paths): SipHash of its canonical bytes (`/a/b`), so
/// paths that compare equal (`/a//b/`, `/a/./b`) have one key. A path
/// already canonical, as every path the runner builds is, is hashed in one
/// `write` (issue 12: several lookups per cgroup at start, and `Path`'s
/// own `Hash` writes each component on its own).
fn path_key(path: &Path) -> u64 {
    use std::hash::Hasher;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Component;
    let mut h = std::hash::DefaultHasher::new();
    let bytes = path.as_os_str().as_bytes();
    if crate::util::is_canonical_path(bytes) {
        h.write(bytes);
    } else {
        // The same bytes, written as `components` sees the path.
        let mut sep = false;
        for c in path.components() {
            if let Component::RootDir = c {
                h.write(b"/");
                continue;
            }
            if sep {
                h.write(b"/");
            }
            h.write(c.as_os_str().as_bytes());
            sep = true;
        }
    }
    h.finish()
}

/// The managed cgroups.
#[derive(Debug, Default)]
pub struct Tree {
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// [`path_key`] → first node of its chain.
    by_path: HashMap<u64, u32>,
    details: Details,
    live: usize,
}

impl Tree {
    /// An empty tree with room for `n` cgroups before it reallocates.
    pub fn with_capacity(n: usize) -> Self {
        Tree {
            nodes: Vec::with_capacity(n),
            free: Vec::with_capacity(n),
            by_path: HashMap::with_capacity(n),
            details: Details::default(),
            live: 0,
        }
    }

    /// Adds a cgroup (its parent, if any, must be in the tree already).
    pub(crate) fn insert(
        &mut self,
        path: PathBuf,
        parent: Option<CgroupId>,
        class: Class,
    ) -> CgroupId {
        if let Some(id) = self.lookup(&path) {
            return id;
        }
        let key = path_key(&path);
        let next_same = self.by_path.get(&key).copied().unwrap_or(NO_NODE);
        let parent = parent.filter(|p| self.node(*p).is_some());
        let depth = parent.and_then(|p| self.node(p)).map_or(0, |p| p.depth + 1);
        let pos = parent
            .and_then(|p| self.node(p))
            .map_or(0, |p| p.children.len() as u32);
        let path = path.into_boxed_path();
        let node = |generation| Node {
            path,
            parent,
            depth,
            class,
            usage: Usage::UNREAD,
            xattr: Default::default(),
            children: Vec::new(),
            pos,
            next_same,
            generation,
            live: true,
        };
        let id = match self.free.pop() {
            Some(idx) => {
                let generation = self.nodes[idx as usize].generation.wrapping_add(1);
                self.nodes[idx as usize] = node(generation);
                CgroupId { idx, generation }
            }
            None => {
                self.nodes.push(node(0));
                CgroupId {
                    idx: (self.nodes.len() - 1) as u32,
                    generation: 0,
                }
            }
        };
        self.by_path.insert(key, id.idx);
        self.live += 1;
        if let Some(p) = parent.and_then(|p| self.node_mut(p)) {
            p.children.push(id);
        }
        id
    }

    /// Removes a cgroup and its descendants; returns the removed ids. Walks
    /// the removed subtree only.
    pub(crate) fn remove(&mut self, id: CgroupId) -> Vec<CgroupId> {
        let gone = self.subtree(id);
        if gone.is_empty() {
            return gone;
        }
        // Unlink from the parent: swap-remove at the known position.
        if let Some((parent, pos)) = self.node(id).and_then(|n| Some((n.parent?, n.pos))) {
            let moved = self.node_mut(parent).and_then(|p| {
                let pos = pos as usize;
                if pos < p.children.len() {
                    p.children.swap_remove(pos);
                }
                p.children.get(pos).copied()
            });
            if let Some(m) = moved.and_then(|m| self.node_mut(m)) {
                m.pos = pos;
            }
        }
        for c in &gone {
            self.unindex(c.idx);
            let n = &mut self.nodes[c.index()];
            n.live = false;
            n.children = Vec::new();
            n.path = Box::from(Path::new(""));
            self.live -= 1;
            self.free.push(c.idx);
        }
        gone
    }

    /// Takes live node `idx` out of its path chain.
    fn unindex(&mut self, idx: u32) {
        let Some(n) = self.nodes.get(idx as usize) else {
            return;
        };
        let (key, next) = (path_key(&n.path), n.next_same);
        let mut prev = NO_NODE;
        let mut i = self.by_path.get(&key).copied().unwrap_or(NO_NODE);
        while i != NO_NODE && i != idx {
            prev = i;
            i = self.nodes.get(i as usize).map_or(NO_NODE, |n| n.next_same);
        }
        if i != idx {
            return;
        }
        if prev == NO_NODE {
            if next == NO_NODE {
                self.by_path.remove(&key);
            } else {
                self.by_path.insert(key, next);
            }
        } else if let Some(p) = self.nodes.get_mut(prev as usize) {
            p.next_same = next;
        }
    }

    /// The children of a cgroup (empty for an unknown id).
    pub fn children(&self, id: CgroupId) -> &[CgroupId] {
        self.node(id).map_or(&[], |n| n.children.as_slice())
    }

    /// A cgroup and all its descendants (parents before children; empty
    /// for an unknown id).
    pub fn subtree(&self, id: CgroupId) -> Vec<CgroupId> {
        let mut out = Vec::new();
        if self.node(id).is_none() {
            return out;
        }
        out.push(id);
        let mut i = 0;
        while i < out.len() {
            out.extend_from_slice(self.children(out[i]));
            i += 1;
        }
        out
    }

    pub(crate) fn node(&self, id: CgroupId) -> Option<&Node> {
        self.nodes
            .get(id.index())
            .filter(|n| n.live && n.generation == id.generation)
    }

    pub(crate) fn node_mut(&mut self, id: CgroupId) -> Option<&mut Node> {
        self.nodes
            .get_mut(id.index())
            .filter(|n| n.live && n.generation == id.generation)
    }

    /// The id of a path, if managed.
    pub fn lookup(&self, path: &Path) -> Option<CgroupId> {
        let mut i = self.by_path.get(&path_key(path)).copied()?;
        while let Some(n) = self.nodes.get(i as usize) {
            if n.live && *n.path == *path {
                return Some(CgroupId {
                    idx: i,
                    generation: n.generation,
                });
            }
            i = n.next_same;
        }
        None
    }

    /// All live ids, in slot order.
    pub fn ids(&self) -> impl Iterator<Item = CgroupId> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.live)
            .map(|(i, n)| CgroupId {
                idx: i as u32,
                generation: n.generation,
            })
    }

    /// Number of live cgroups.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when nothing is managed.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The hierarchy path of a cgroup.
    pub fn path(&self, id: CgroupId) -> Option<&Path> {
        self.node(id).map(|n| &*n.path)
    }

    /// The parent of a cgroup (`None` for the managed root).
    pub fn parent(&self, id: CgroupId) -> Option<CgroupId> {
        self.node(id).and_then(|n| n.parent)
    }

    /// The class of a cgroup.
    pub fn class(&self, id: CgroupId) -> Option<Class> {
        self.node(id).map(|n| n.class)
    }

    /// The stats last read for a cgroup: its usage, and its detail if
    /// read lately.
    pub fn stats(&self, id: CgroupId) -> Option<CgroupStats> {
        let n = self.node(id)?;
        let mut st = self.details.get(id).copied().unwrap_or_default();
        n.usage.into_stats(&mut st);
        Some(st)
    }

    /// Stores the usage read for a cgroup (`current` and `swap_current`
    /// of `st`).
    pub(crate) fn set_usage(&mut self, id: CgroupId, st: &CgroupStats) {
        if let Some(n) = self.node_mut(id) {
            n.usage = Usage::of(st);
        }
    }

    /// Where the detail of a live cgroup is read into (see [`DETAILS`]).
    pub(crate) fn detail_mut(&mut self, id: CgroupId) -> Option<&mut CgroupStats> {
        self.node(id)?;
        Some(self.details.entry(id))
    }

    /// True when `a` is `b` or one of its descendants.
    pub fn is_within(&self, a: CgroupId, b: CgroupId) -> bool {
        let mut cur = Some(a);
        while let Some(c) = cur {
            if c == b {
                return true;
            }
            cur = self.parent(c);
        }
        false
    }

    /// True when `a` or any descendant of it is protected.
    /// Allocation-free (recursion as deep as the tree, at most 16 levels).
    pub fn subtree_protected(&self, a: CgroupId) -> bool {
        self.class(a).is_some_and(|k| k.protected)
            || self.children(a).iter().any(|&c| self.subtree_protected(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_generational() {
        let mut t = Tree::with_capacity(4);
        let root = t.insert("/".into(), None, Class::default());
        let a = t.insert("/a".into(), Some(root), Class::default());
        let a1 = t.insert("/a/1".into(), Some(a), Class::default());
        assert!(t.is_within(a1, root));
        assert!(!t.is_within(root, a1));
        let gone = t.remove(a);
        assert_eq!(gone.len(), 2);
        assert!(t.path(a1).is_none());
        let b = t.insert("/b".into(), Some(root), Class::default());
        assert!(
            b.index() == a.index() || b.index() == a1.index(),
            "slot reused"
        );
        assert_ne!(b, a);
        assert_ne!(b, a1);
        assert!(
            t.path(a).is_none() && t.path(a1).is_none(),
            "stale ids name nothing"
        );
        assert_eq!(t.path(b), Some(Path::new("/b")));
        assert_eq!(t.len(), 2);
    }

    /// Paths that compare equal are found under one key, whichever way
    /// they are spelt; the bytes are hashed whole only when canonical.
    #[test]
    fn a_path_is_found_however_it_is_spelt() {
        let mut t = Tree::with_capacity(4);
        let root = t.insert("/".into(), None, Class::default());
        let a = t.insert("/a".into(), Some(root), Class::default());
        let ab = t.insert("/a/b".into(), Some(a), Class::default());
        for spelt in ["/a/b", "/a//b", "/a/b/", "/a/./b", "//a/b/.", "/a/b//"] {
            assert_eq!(t.lookup(Path::new(spelt)), Some(ab), "{spelt}");
        }
        for spelt in ["/", "//", "/."] {
            assert_eq!(t.lookup(Path::new(spelt)), Some(root), "{spelt}");
        }
        for other in ["/a/b/c", "a/b", "/a/bb", "/a/../a/b"] {
            assert_eq!(t.lookup(Path::new(other)), None, "{other}");
        }
        for (b, canonical) in [
            (&b"/"[..], true),
            (b"/a/b", true),
            (b"a/b", true),
            (b"/a/", false),
            (b"/a//b", false),
            (b"/a/.", false),
            (b"./a", false),
            (b"", false),
        ] {
            assert_eq!(
                crate::util::is_canonical_path(b),
                canonical,
                "{}",
                String::from_utf8_lossy(b)
            );
        }
    }

    /// Issue 10, defect 4: the tree is indexed by parent, so a removal
    /// walks the removed subtree only (it scanned every cgroup: a burst of
    /// n removals was O(n²)); the index stays right through reuse.
    #[test]
    fn children_are_indexed_by_parent() {
        let mut t = Tree::with_capacity(8);
        let root = t.insert("/".into(), None, Class::default());
        let a = t.insert("/a".into(), Some(root), Class::default());
        let b = t.insert("/b".into(), Some(root), Class::default());
        let a1 = t.insert("/a/1".into(), Some(a), Class::default());
        let a2 = t.insert("/a/2".into(), Some(a), Class::default());
        let sorted = |mut v: Vec<CgroupId>| {
            v.sort_by_key(|c| c.index());
            v
        };
        assert_eq!(sorted(t.children(root).to_vec()), sorted(vec![a, b]));
        assert_eq!(sorted(t.children(a).to_vec()), sorted(vec![a1, a2]));
        assert_eq!(sorted(t.subtree(a)), sorted(vec![a, a1, a2]));
        assert_eq!(t.remove(a1), vec![a1]);
        assert_eq!(t.children(a), &[a2]);
        let gone = sorted(t.remove(a));
        assert_eq!(gone, sorted(vec![a, a2]));
        assert_eq!(t.children(root), &[b]);
        let c = t.insert("/c".into(), Some(root), Class::default());
        assert_eq!(sorted(t.children(root).to_vec()), sorted(vec![b, c]));
        assert!(t.children(a).is_empty(), "a stale id has no children");
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn protection_is_seen_from_ancestors() {
        let mut t = Tree::with_capacity(4);
        let root = t.insert("/".into(), None, Class::default());
        let a = t.insert("/a".into(), Some(root), Class::default());
        let _p = t.insert(
            "/a/db".into(),
            Some(a),
            Class {
                priority: 0,
                protected: true,
            },
        );
        assert!(t.subtree_protected(a));
        assert!(t.subtree_protected(root));
        let b = t.insert("/b".into(), Some(root), Class::default());
        assert!(!t.subtree_protected(b));
    }
}
