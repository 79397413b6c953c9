//! Final counters for a container whose directory is already gone, derived from its parent's.

use std::ffi::OsString;

use super::*;

/// The parent's `memory.events` (hierarchical and local) and each other
/// child's, taken when the monitor opened.
///
/// The parent's hierarchical counters are its own local ones plus every
/// child's (removed children included: the parent keeps counting what they
/// raised). So if the container's directory is gone at the last read, its
/// final counters are its counters at open plus the parent's rise, minus the
/// parent's own (local) rise, minus each other child's rise — exact unless a
/// sibling was removed meanwhile (its last counters are unknown), which is
/// checked.
#[derive(Debug)]
pub(super) struct ParentBase {
    pub(super) cg: Cgroup,
    hier: MemoryEvents,
    local: MemoryEvents,
    siblings: Vec<(OsString, MemoryEvents)>,
    own_name: OsString,
}

/// More siblings than this and the derivation is not prepared (each would
/// be read at open and at the end).
pub(super) const MAX_SIBLINGS: usize = 256;

impl ParentBase {
    pub(super) fn take(container: &Cgroup) -> Option<ParentBase> {
        let cg = container.parent().ok()??;
        if cg.is_mount_root() {
            return None;
        }
        let own_name = container.path().file_name()?.to_owned();
        let names = cg.children().ok()?;
        if names.len() > MAX_SIBLINGS {
            return None;
        }
        let mut siblings = Vec::with_capacity(names.len());
        for n in names.into_iter().filter(|n| *n != own_name) {
            let ev = cg.child(&n).ok()?.memory_events().ok()?;
            siblings.push((n, ev));
        }
        Some(ParentBase {
            hier: cg.memory_events().ok()?,
            local: cg.memory_events_local().ok()?,
            cg,
            siblings,
            own_name,
        })
    }

    /// The container's counters now, from the parent's (see the type docs);
    /// `None` when a sibling was removed meanwhile or a read failed.
    pub(super) fn derive(&self, container_at_open: &MemoryEvents) -> Option<MemoryEvents> {
        let hier = self.cg.memory_events().ok()?;
        let local = self.cg.memory_events_local().ok()?;
        let names = self.cg.children().ok()?;
        if self.siblings.iter().any(|(n, _)| !names.contains(n)) {
            return None;
        }
        let mut out = MemoryEvents::default();
        for k in MemoryEventKind::ALL {
            let (Some(h1), Some(h0), Some(l1), Some(l0), Some(c0)) = (
                hier.get(k),
                self.hier.get(k),
                local.get(k),
                self.local.get(k),
                container_at_open.get(k),
            ) else {
                continue;
            };
            let mut v =
                i128::from(c0) + i128::from(h1) - i128::from(h0) - i128::from(l1) + i128::from(l0);
            // Every other child now (a child created since counts from 0; a
            // new cgroup under our old name is another cgroup).
            for n in names.iter() {
                let now = self
                    .cg
                    .child(n)
                    .ok()?
                    .memory_events()
                    .ok()?
                    .get(k)
                    .unwrap_or(0);
                let before = self
                    .siblings
                    .iter()
                    .find(|(s, _)| s == n && *n != self.own_name)
                    .and_then(|(_, e)| e.get(k))
                    .unwrap_or(0);
                v -= i128::from(now) - i128::from(before);
            }
            *out.slot(k) = Some(u64::try_from(v).ok()?);
        }
        Some(out)
    }
}
