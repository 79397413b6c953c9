//! The loop's registry of the cgroups it manages.
//!
//! Cgroups come and go (containers start and stop); each gets a
//! [`CgroupId`] — a slot index plus a generation — so a stale id held across
//! a removal can never name the cgroup that later reuses the slot.
//! Classification (priority tier, protection) is computed once, when a
//! cgroup appears, so the decision path only reads numbers.

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

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) path: PathBuf,
    pub(crate) parent: Option<CgroupId>,
    pub(crate) depth: u16,
    pub(crate) class: Class,
    pub(crate) stats: CgroupStats,
    pub(crate) xattr: XattrInfo,
    generation: u32,
    live: bool,
}

/// The managed cgroups.
#[derive(Debug, Default)]
pub struct Tree {
    nodes: Vec<Node>,
    free: Vec<u32>,
    by_path: HashMap<PathBuf, CgroupId>,
}

impl Tree {
    /// An empty tree with room for `n` cgroups before it reallocates.
    pub fn with_capacity(n: usize) -> Self {
        Tree {
            nodes: Vec::with_capacity(n),
            free: Vec::with_capacity(n),
            by_path: HashMap::with_capacity(n),
        }
    }

    /// Adds a cgroup (its parent, if any, must be in the tree already).
    pub(crate) fn insert(
        &mut self,
        path: PathBuf,
        parent: Option<CgroupId>,
        class: Class,
    ) -> CgroupId {
        if let Some(id) = self.by_path.get(&path) {
            return *id;
        }
        let depth = parent.and_then(|p| self.node(p)).map_or(0, |p| p.depth + 1);
        let node = |generation| Node {
            path: path.clone(),
            parent,
            depth,
            class,
            stats: CgroupStats::default(),
            xattr: Default::default(),
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
        self.by_path.insert(path, id);
        id
    }

    /// Removes a cgroup and its descendants; returns the removed ids.
    pub(crate) fn remove(&mut self, id: CgroupId) -> Vec<CgroupId> {
        let Some(root) = self.node(id) else {
            return Vec::new();
        };
        let prefix = root.path.clone();
        let gone: Vec<CgroupId> = self
            .ids()
            .filter(|c| self.node(*c).is_some_and(|n| n.path.starts_with(&prefix)))
            .collect();
        for c in &gone {
            let n = &mut self.nodes[c.index()];
            n.live = false;
            self.by_path.remove(&n.path);
            self.free.push(c.idx);
        }
        gone
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
        self.by_path.get(path).copied()
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
        self.by_path.len()
    }

    /// True when nothing is managed.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// The hierarchy path of a cgroup.
    pub fn path(&self, id: CgroupId) -> Option<&Path> {
        self.node(id).map(|n| n.path.as_path())
    }

    /// The parent of a cgroup (`None` for the managed root).
    pub fn parent(&self, id: CgroupId) -> Option<CgroupId> {
        self.node(id).and_then(|n| n.parent)
    }

    /// The class of a cgroup.
    pub fn class(&self, id: CgroupId) -> Option<Class> {
        self.node(id).map(|n| n.class)
    }

    /// The stats last read for a cgroup.
    pub fn stats(&self, id: CgroupId) -> Option<&CgroupStats> {
        self.node(id).map(|n| &n.stats)
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
    pub fn subtree_protected(&self, a: CgroupId) -> bool {
        self.ids()
            .any(|c| self.is_within(c, a) && self.class(c).is_some_and(|k| k.protected))
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
