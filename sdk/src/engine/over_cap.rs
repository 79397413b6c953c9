//! Which cgroups the tree tracks once it is at its cap: by usage, not by
//! who came first.
//!
//! Beyond the cap (`max_cgroups`, or what the open-file limit holds with
//! fds kept for kills) a new cgroup stays untracked. Left at that, a tenant
//! could create thousands of empty cgroups first and grow its hog in the
//! next one, which the loop would never see. So every
//! [`REBALANCE_EVERY`] the runner reads `memory.current` of up to
//! [`READS_PER_ROUND`] untracked cgroups (round robin), and when the largest
//! uses clearly more than the smallest tracked, unprotected leaf, the two
//! trade places. Work per round is bounded; nothing is read while the tree
//! is under its cap.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::Runner;
use crate::engine::guard::MIN_VICTIM_FREE;
use crate::engine::host::Observe;
use crate::engine::types::{CgroupId, CgroupStats};

/// How often untracked cgroups are looked at.
pub(super) const REBALANCE_EVERY: Duration = Duration::from_secs(1);
/// Untracked cgroups read per round.
pub(super) const READS_PER_ROUND: usize = 64;

/// Whether an untracked cgroup using `admit` bytes should take the place of
/// a tracked leaf using `evict`: it must use at least what a kill must free,
/// and twice the leaf's usage plus that much, so two similar cgroups do not
/// trade places back and forth.
pub(super) fn worth_swapping(admit: u64, evict: u64) -> bool {
    admit >= MIN_VICTIM_FREE && admit > evict.saturating_mul(2).saturating_add(MIN_VICTIM_FREE)
}

impl Runner {
    /// One round of the rebalance (see the module docs); `now` paces it.
    pub(super) fn rebalance_over_cap(&mut self, now: Instant) {
        if self.over_cap.is_empty() || now < self.next_rebalance {
            return;
        }
        self.next_rebalance = now + REBALANCE_EVERY;
        let Some((admit, admit_use)) = self.largest_untracked() else {
            return;
        };
        let Some((evict, evict_use)) = self.smallest_tracked_leaf() else {
            return;
        };
        if !worth_swapping(admit_use, evict_use) {
            return;
        }
        let Some(evict_path) = self.engine.tree().path(evict).map(|p| p.to_path_buf()) else {
            return;
        };
        tracing::warn!(
            tracked = %admit.display(),
            usage = admit_use,
            untracked = %evict_path.display(),
            its_usage = evict_use,
            "at the cgroup cap: tracking a larger cgroup instead of a smaller one"
        );
        let mut removed = std::collections::HashSet::new();
        self.remove_child(&evict_path, &mut removed);
        self.forget_targets(&mut removed);
        self.add_child(&admit);
        if self.engine.tree().lookup(&admit).is_some() {
            self.over_cap.remove(&admit);
        }
        self.over_cap.insert(evict_path);
    }

    /// The untracked cgroup (whose parent is tracked) with the largest
    /// `memory.current` among the next [`READS_PER_ROUND`].
    fn largest_untracked(&mut self) -> Option<(PathBuf, u64)> {
        let n = self.over_cap.len();
        let start = self.rebalance_cursor % n.max(1);
        self.rebalance_cursor = start + READS_PER_ROUND;
        let fs = self.engine.host().fs();
        let tree = self.engine.tree();
        let mut best: Option<(PathBuf, u64)> = None;
        for p in self
            .over_cap
            .iter()
            .cycle()
            .skip(start)
            .take(READS_PER_ROUND.min(n))
        {
            if p.parent().is_none_or(|q| tree.lookup(q).is_none()) {
                continue;
            }
            let Ok(used) = fs.open_hierarchy(p).and_then(|c| c.memory_current()) else {
                continue;
            };
            if best.as_ref().is_none_or(|(_, b)| used > *b) {
                best = Some((p.clone(), used));
            }
        }
        best
    }

    /// The tracked leaf (not the root, not protected, not holding oomkit)
    /// with the smallest `memory.current`.
    fn smallest_tracked_leaf(&mut self) -> Option<(CgroupId, u64)> {
        let root = self.engine.root();
        let own = self.engine.host().own_cgroup().map(|p| p.to_path_buf());
        let leaves: Vec<CgroupId> = {
            let tree = self.engine.tree();
            tree.ids()
                .filter(|&id| Some(id) != root && tree.children(id).is_empty())
                .filter(|&id| !tree.class(id).is_some_and(|c| c.protected))
                .filter(|&id| {
                    !own.as_ref()
                        .is_some_and(|o| tree.path(id).is_some_and(|p| o.starts_with(p)))
                })
                .collect()
        };
        let mut best: Option<(CgroupId, u64)> = None;
        for id in leaves {
            let mut st = CgroupStats::default();
            if self.engine.host_mut().read_usage(id, &mut st).is_err() {
                continue;
            }
            let used = st.current.unwrap_or(0);
            if best.is_none_or(|(_, b)| used < b) {
                best = Some((id, used));
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_clearly_larger_cgroup_takes_a_place() {
        assert!(!worth_swapping(0, 0), "empty for empty: no churn");
        assert!(!worth_swapping(MIN_VICTIM_FREE - 1, 0));
        assert!(worth_swapping(100 << 20, 0));
        assert!(!worth_swapping(100 << 20, 60 << 20));
        assert!(worth_swapping(200 << 20, 60 << 20));
    }
}
