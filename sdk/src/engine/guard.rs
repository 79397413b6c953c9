//! The rules no policy may break, and the plan filter that enforces them.
//!
//! A handler proposes; the loop refuses steps that would kill PID 1, a
//! kernel thread, oomkit itself, its own cgroup or an ancestor of it,
//! anything protected (by class or `oom_score_adj -1000`), or that would
//! remove `memory.max`, or group-kill a cgroup with descendants the loop
//! does not track. A refused step excludes its target, so the handler can
//! be asked again for something else.
//!
//! **A kill must free something.** A process whose resident set and swap
//! are under [`MIN_VICTIM_FREE`] (a reader whose cgroup's usage is page
//! cache, which outlives it), or a cgroup charged less than that, is
//! refused: killing it costs a process and gives the emergency nothing. If
//! that leaves no candidate, the episode ends as "nothing to do".

use crate::kill;

use super::host::Host;
use super::plan::{Action, Plan};
use super::{Engine, Refusal};

/// The least a kill must free to be taken: a victim under this frees
/// (nearly) nothing.
pub const MIN_VICTIM_FREE: u64 = 4 << 20;

/// The refusal reason of a kill that would free (nearly) nothing.
pub(super) const FREES_NOTHING: &str = "the kill would free (nearly) nothing";

impl<H: Host> Engine<H> {
    /// Removes steps no policy may take. Returns nothing: refusals are recorded.
    pub(super) fn filter_plan(&mut self) {
        let own_pid = self.host.own_pid();
        // What the refusal rules read of a target is from this decision.
        for i in 0..self.plan.len() {
            let target = self.plan.steps().nth(i).map(|s| s.action.cgroup());
            if let Some(cg) = target {
                self.usage_now(cg);
            }
        }
        let mut kept = Plan::new();
        let _ = std::fmt::Write::write_str(&mut kept.reason_writer(), self.plan.reason());
        let plan = self.plan.clone();
        for step in plan.steps() {
            match self.refusal(&step.action, own_pid) {
                None => {
                    let _ = kept.push(step.action, step.deadline);
                }
                Some(reason) => {
                    tracing::warn!(action = step.action.name(), reason, "step refused");
                    self.episode.add_refusal(Refusal {
                        action: step.action,
                        reason,
                    });
                    // A refused process excludes that process only; a
                    // refused group action excludes the group.
                    match step.action {
                        Action::KillProcess { pid, .. }
                        | Action::CaptureDiagnostics { pid, .. } => self.excluded.add_pid(pid),
                        a => self.excluded.add_cgroup(a.cgroup()),
                    }
                }
            }
        }
        self.plan = kept;
    }

    /// Whether `cg` or a descendant has more child cgroups on disk than
    /// the tree holds (a failed watch, or below `depth`): a group kill
    /// would take them unseen, protected or not.
    fn untracked_below(&self, cg: super::types::CgroupId) -> bool {
        let kids = self.tree.children(cg);
        self.host.child_dirs(cg).is_some_and(|n| n > kids.len())
            || kids.iter().any(|&k| self.untracked_below(k))
    }

    /// Why no policy may take `action`, or `None` when it may.
    pub(super) fn refusal(&self, action: &Action, own_pid: i32) -> Option<&'static str> {
        let cg = action.cgroup();
        let Some(path) = self.tree.path(cg) else {
            return Some("cgroup is not in the managed tree (gone?)");
        };
        let own = self.host.own_cgroup();
        let contains_self = own.is_some_and(|o| o.starts_with(path));
        let touches = matches!(
            action,
            Action::KillCgroup { .. }
                | Action::KillTree { .. }
                | Action::Freeze { frozen: true, .. }
                | Action::SetHigh { .. }
        );
        if touches && contains_self {
            return Some("target contains oomkit's own cgroup");
        }
        if matches!(
            action,
            Action::KillCgroup { .. }
                | Action::KillTree { .. }
                | Action::Freeze { frozen: true, .. }
        ) && self.tree.subtree_protected(cg)
        {
            return Some("target is or contains a protected cgroup");
        }
        if matches!(action, Action::KillCgroup { .. } | Action::KillTree { .. })
            && self.untracked_below(cg)
        {
            return Some("target has descendants the loop does not track");
        }
        if let Action::KillProcess { pid, .. } | Action::CaptureDiagnostics { pid, .. } = *action {
            // What the snapshot knows of the process (nothing: the PID rules only).
            let (kthread, adj) = self
                .snap
                .procs
                .iter()
                .find(|p| p.pid == pid)
                .map_or((false, 0), |p| (p.kernel_thread, p.oom_score_adj));
            if let Some(reason) = kill::never_kill(pid, own_pid, kthread, adj) {
                return Some(reason);
            }
            if own.is_some_and(|o| o == path) {
                return Some("process is in oomkit's own cgroup");
            }
            if self.tree.class(cg).is_some_and(|c| c.protected) {
                return Some("process is in a protected cgroup");
            }
            let frees = self
                .snap
                .procs
                .iter()
                .find(|p| p.pid == pid)
                .map(|p| p.footprint());
            if matches!(action, Action::KillProcess { .. })
                && frees.is_some_and(|f| f < MIN_VICTIM_FREE)
            {
                return Some(FREES_NOTHING);
            }
        }
        if let Action::KillCgroup { .. } | Action::KillTree { .. } = *action {
            let charged = self
                .tree
                .stats(cg)
                .and_then(|s| s.current.map(|c| c + s.swap_current.unwrap_or(0)));
            if charged.is_some_and(|c| c < MIN_VICTIM_FREE) {
                return Some(FREES_NOTHING);
            }
        }
        if let Action::RaiseMax { limit, .. } = *action {
            if limit == u64::MAX {
                return Some("memory.max is never removed");
            }
        }
        None
    }
}
