//! Which cgroups the loop manages, and how each is classified.
//!
//! Cgroups enter the tree when the engine starts (the root) and when the
//! runner sees a directory appear (a new container); they are classified
//! once, there, by the handler, so the decision path only reads numbers. A
//! reload classifies every cgroup again with the new handler.

use std::path::Path;

use crate::error::{Error, Result};

use super::handler::Handler;
use super::host::Host;
use super::tree::{CgroupMeta, Class, Tree};
use super::types::{CgroupId, XattrInfo};
use super::{Engine, EngineConfig};

/// Asks `handler` for the class of `id` (whose parent, if any, is already
/// classified) and stores it with the xattrs `x` it was decided from.
pub(super) fn classify(
    handler: &mut dyn Handler,
    tree: &mut Tree,
    id: CgroupId,
    x: XattrInfo,
) -> Class {
    let Some(n) = tree.node(id) else {
        return Class::default();
    };
    let class = handler.classify(&CgroupMeta {
        path: &n.path,
        depth: n.depth,
        xattr_priority: x.priority,
        xattr_protected: x.protected,
        parent_class: n.parent.and_then(|p| tree.class(p)),
        delegated: x.delegated,
    });
    if let Some(n) = tree.node_mut(id) {
        n.class = class;
        n.xattr = x;
    }
    class
}

impl<H: Host> Engine<H> {
    /// Adds a cgroup below a managed one (a new container). Off the hot path.
    pub fn add_cgroup(&mut self, path: &Path) -> Result<CgroupId> {
        if let Some(id) = self.tree.lookup(path) {
            return Ok(id);
        }
        let parent_path = crate::util::path_parent(path).ok_or_else(|| Error::InvalidPath {
            path: path.to_owned(),
            reason: "has no parent in the managed tree",
        })?;
        let parent = match self.tree.lookup(parent_path) {
            Some(p) => p,
            None => self.add_cgroup(parent_path)?,
        };
        let id = self
            .tree
            .insert(path.to_path_buf(), Some(parent), Class::default());
        let x = match self.host.attach(id, path) {
            Ok(x) => x,
            Err(e) => {
                self.tree.remove(id);
                return Err(e);
            }
        };
        let class = classify(&mut *self.handler, &mut self.tree, id, x);
        self.snap.reserve_for(self.tree.len(), id.index());
        self.recover_raise(id);
        tracing::debug!(cgroup = %path.display(), priority = class.priority, protected = class.protected, "cgroup added");
        Ok(id)
    }

    /// Replaces the handler and tuning (configuration reload) and classifies
    /// every cgroup again with the new handler. An episode in progress
    /// finishes under the old plan.
    pub fn replace_handler(&mut self, handler: Box<dyn Handler>, cfg: EngineConfig) {
        // The old handler releases what it holds (throttles, freezes) first.
        self.shutdown();
        self.handler = handler;
        self.cfg = cfg;
        // Parents first: a child's class may inherit its parent's.
        let mut ids: Vec<CgroupId> = self.tree.ids().collect();
        ids.sort_by_key(|id| self.tree.node(*id).map_or(0, |n| n.depth));
        for id in ids {
            let Some(x) = self.tree.node(id).map(|n| n.xattr) else {
                continue;
            };
            classify(&mut *self.handler, &mut self.tree, id, x);
        }
    }

    /// Removes a cgroup (and descendants) that disappeared.
    pub fn remove_cgroup(&mut self, path: &Path) {
        if let Some(id) = self.tree.lookup(path) {
            if Some(id) == self.root {
                return;
            }
            for gone in self.tree.remove(id) {
                self.host.detach(gone);
            }
        }
    }
}
