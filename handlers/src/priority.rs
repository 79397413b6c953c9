//! The priority-kill handler: the lowest tier goes first, the largest within it.
//!
//! The kernel's OOM killer picks by size (`oom_badness`), tempered only by
//! `oom_score_adj`; it cannot know that a batch job is cheaper to lose than
//! the database. This handler orders victims by the class each cgroup got
//! when it appeared (see [`crate::classify`] for where tiers come from and
//! their precedence), and within the lowest tier kills the largest: RSS +
//! swap for a process, `memory.current` + swap for a cgroup — what a kill
//! actually gives back, not virtual size.
//!
//! How much to kill is a deployment choice ([`Granularity`]): one process
//! (least collateral), a leaf cgroup (a whole container, so no half-dead
//! workload lingers), or the tree the kernel itself would kill honouring
//! `memory.oom.group` ([`Action::KillTree`]).
//!
//! [`PriorityKill::decide`](oomkit::engine::Handler::decide) runs on the hot
//! path, when memory is short: it walks `view.cgroups()` by index, keeps its
//! scratch pre-sized at construction, and formats its reason into the
//! plan's inline buffer — it does not allocate. It reads usage on demand
//! ([`Handler::usage_on_demand`]): at cgroup granularity only the lowest
//! tiers, and within a tier only the subtrees that can hold the largest
//! (see [`descent`]).

use std::fmt::Write as _;
use std::time::Duration;

use oomkit::engine::{Action, CgroupId, CgroupMeta, Class, Handler, Plan, View};
use oomkit::kill::never_kill;

use crate::classify::Classifier;

mod descent;

use descent::Descent;

/// How much one kill takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Granularity {
    /// The largest process of the lowest tier ([`Action::KillProcess`]).
    #[default]
    Process,
    /// The largest leaf cgroup of the lowest tier ([`Action::KillCgroup`]).
    Cgroup,
    /// The largest leaf cgroup of the lowest tier, widened to the highest
    /// ancestor with `memory.oom.group=1` like the kernel does ([`Action::KillTree`]).
    Tree,
}

/// Settings of [`PriorityKill`].
#[derive(Debug, Clone, PartialEq)]
pub struct PriorityKillConfig {
    /// What one kill takes.
    pub granularity: Granularity,
    /// Candidates smaller than this are passed over while any candidate at
    /// least this large exists (so a 1 MiB sidecar in the lowest tier does
    /// not die for a 10 GiB hog one tier up). 0 disables.
    pub min_victim_bytes: u64,
    /// Time for the victim to die and its memory to come back;
    /// [`Duration::ZERO`] uses the engine's `kill_deadline`.
    pub kill_deadline: Duration,
    /// Size of the per-cgroup scratch table; set it to the engine's
    /// `max_cgroups`. Cgroups past it are still handled, more slowly.
    pub max_cgroups: usize,
}

impl Default for PriorityKillConfig {
    fn default() -> Self {
        PriorityKillConfig {
            granularity: Granularity::Process,
            min_victim_bytes: 0,
            kill_deadline: Duration::ZERO,
            max_cgroups: 1024,
        }
    }
}

/// A chosen victim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// The victim's cgroup (a leaf for cgroup and tree granularity).
    pub cgroup: CgroupId,
    /// The process, for process granularity.
    pub pid: Option<i32>,
    /// Its tier.
    pub priority: i32,
    /// What killing it frees, bytes.
    pub footprint: u64,
    /// `comm` of the process (NUL-padded; zeros for cgroup victims).
    pub comm: [u8; 16],
}

impl Choice {
    /// `comm` as text (empty for cgroup victims).
    pub fn comm(&self) -> &str {
        oomkit::proc::padded_comm_str(&self.comm)
    }
}

/// Orders candidates: big-enough first, then lowest tier, then largest.
fn better(min: u64, a: &Choice, b: &Choice) -> bool {
    let big_a = a.footprint >= min;
    let big_b = b.footprint >= min;
    if big_a != big_b {
        return big_a;
    }
    if a.priority != b.priority {
        return a.priority < b.priority;
    }
    a.footprint > b.footprint
}

/// A cgroup whose processes may be victims: (cgroup, tier, the most a
/// process in it can free, position in the view's order).
type Candidate = (CgroupId, i32, u64, u32);

/// The priority-kill handler. See the module docs.
#[derive(Debug, Clone)]
pub struct PriorityKill {
    cfg: PriorityKillConfig,
    classifier: Classifier,
    /// Cgroup granularity: the best-first search's scratch (pre-sized).
    descent: Descent,
    /// Process granularity: the candidate cgroups, best first (pre-sized).
    order: Vec<Candidate>,
}

impl PriorityKill {
    /// A handler classifying with `classifier`.
    pub fn new(cfg: PriorityKillConfig, classifier: Classifier) -> Self {
        PriorityKill {
            descent: Descent::with_capacity(cfg.max_cgroups),
            order: Vec::with_capacity(cfg.max_cgroups),
            cfg,
            classifier,
        }
    }

    /// [`PriorityKill::new`], reporting a failed reservation of its
    /// `max_cgroups`-sized tables instead of aborting the process (a
    /// daemon reloading its config must survive a bad size).
    pub fn try_new(
        cfg: PriorityKillConfig,
        classifier: Classifier,
    ) -> Result<Self, std::collections::TryReserveError> {
        let descent = Descent::try_with_capacity(cfg.max_cgroups)?;
        let mut order = Vec::new();
        order.try_reserve_exact(cfg.max_cgroups)?;
        Ok(PriorityKill {
            descent,
            order,
            cfg,
            classifier,
        })
    }

    /// The settings.
    pub fn config(&self) -> &PriorityKillConfig {
        &self.cfg
    }

    /// The classifier.
    pub fn classifier_mut(&mut self) -> &mut Classifier {
        &mut self.classifier
    }

    /// Picks a victim in scope with this handler's granularity. No allocation.
    pub fn choose(&mut self, view: &mut View<'_>) -> Option<Choice> {
        self.choose_where(view, self.cfg.granularity, |_, _| true)
    }

    /// Picks a victim among the cgroups in scope for which `keep` is true.
    /// Protected cgroups, excluded ones (and anything below an excluded
    /// cgroup) and excluded processes are always skipped. No allocation.
    pub fn choose_where(
        &mut self,
        view: &mut View<'_>,
        granularity: Granularity,
        keep: impl Fn(&View<'_>, CgroupId) -> bool,
    ) -> Option<Choice> {
        if granularity == Granularity::Process {
            return self.choose_process(view, keep);
        }
        let min = self.cfg.min_victim_bytes;
        let candidate = |v: &View<'_>, id: CgroupId| {
            let class = v.class(id)?;
            let ok = !class.protected && v.is_leaf(id) && !below_excluded(v, id) && keep(v, id);
            ok.then_some(class.priority)
        };
        match self.descent.choose(view, min, candidate) {
            Ok(c) => c,
            Err(descent::TooMany) => scan_leaves(view, min, candidate),
        }
    }

    /// Process granularity without reading every process of the scope:
    /// visit cgroups best-first by what they could hold (a process's RSS +
    /// swap is bounded by its cgroup's `memory.current` + swap), and stop at
    /// the first cgroup that cannot beat the best process found so far. On
    /// 1,000 cgroups of 10 processes this reads a handful of `/proc` entries
    /// instead of 10,000.
    fn choose_process(
        &mut self,
        view: &mut View<'_>,
        keep: impl Fn(&View<'_>, CgroupId) -> bool,
    ) -> Option<Choice> {
        let min = self.cfg.min_victim_bytes;
        // Two fixed arrays: copying them does not allocate, and frees the
        // view for `processes()` below.
        let excluded = view.excluded().clone();
        let own_pid = view.own_pid();
        self.order_by_bound(view, keep);
        let as_choice = |&(cgroup, priority, footprint, _): &Candidate| Choice {
            cgroup,
            pid: None,
            priority,
            footprint,
            comm: [0; 16],
        };
        // (choice, position of its cgroup in the view's order)
        let mut best: Option<(Choice, u32)> = None;
        for k in 0..self.order.len() {
            let entry = self.order[k];
            if let Some((b, _)) = best {
                if better(min, &b, &as_choice(&entry)) {
                    break; // no process here (nor in any later cgroup) can win or tie
                }
            }
            let (id, priority, _, pos) = entry;
            let Ok(procs) = view.processes(id) else {
                continue;
            };
            for p in procs {
                if never_kill(p.pid, own_pid, p.kernel_thread, p.oom_score_adj).is_some()
                    || excluded.has_pid(p.pid)
                {
                    continue;
                }
                let c = Choice {
                    cgroup: id,
                    pid: Some(p.pid),
                    priority,
                    footprint: p.footprint(),
                    comm: p.comm,
                };
                // A tie goes to the cgroup first in the view's order, and
                // within it to the first process listed.
                let wins = best.is_none_or(|(b, at)| {
                    better(min, &c, &b) || (!better(min, &b, &c) && pos < at)
                });
                if wins {
                    best = Some((c, pos));
                }
            }
        }
        best.map(|(c, _)| c)
    }

    /// Fills `order` with the cgroups whose processes may be victims, best
    /// bound first (among equals, the view's order).
    fn order_by_bound(&mut self, view: &mut View<'_>, keep: impl Fn(&View<'_>, CgroupId) -> bool) {
        let min = self.cfg.min_victim_bytes;
        self.order.clear();
        for i in 0..view.cgroups().len() {
            let id = view.cgroups()[i];
            let Some(class) = view.class(id) else {
                continue;
            };
            if class.protected || below_excluded(view, id) || !keep(view, id) {
                continue;
            }
            // Unknown usage (the mount root has no memory.current): no bound.
            let bound = view.usage(id).map_or(u64::MAX, |st| {
                st.current.map_or(u64::MAX, |_| st.footprint())
            });
            if bound == 0 {
                continue;
            }
            self.order.push((id, class.priority, bound, i as u32));
        }
        let key = |&(cgroup, priority, footprint, _): &Candidate| Choice {
            cgroup,
            pid: None,
            priority,
            footprint,
            comm: [0; 16],
        };
        self.order.sort_unstable_by(|a, b| {
            let (ca, cb) = (key(a), key(b));
            if better(min, &ca, &cb) {
                std::cmp::Ordering::Less
            } else if better(min, &cb, &ca) {
                std::cmp::Ordering::Greater
            } else {
                a.3.cmp(&b.3)
            }
        });
    }

    /// Appends the kill of `choice` to `plan` with this handler's
    /// granularity, and writes the reason. No allocation.
    pub fn plan_kill(&self, view: &View<'_>, choice: &Choice, plan: &mut Plan) {
        self.plan_kill_as(view, choice, self.cfg.granularity, plan);
    }

    /// Like [`PriorityKill::plan_kill`] with an explicit granularity.
    pub fn plan_kill_as(
        &self,
        view: &View<'_>,
        choice: &Choice,
        granularity: Granularity,
        plan: &mut Plan,
    ) {
        let action = match (granularity, choice.pid) {
            (Granularity::Process, Some(pid)) => Action::KillProcess {
                cgroup: choice.cgroup,
                pid,
            },
            (Granularity::Tree, _) => Action::KillTree {
                cgroup: choice.cgroup,
            },
            _ => Action::KillCgroup {
                cgroup: choice.cgroup,
            },
        };
        if plan.push(action, self.cfg.kill_deadline).is_err() {
            return;
        }
        write_reason(view, choice, plan);
    }
}

/// Appends "tier P, largest (N MiB) process PID (comm) in PATH" to the reason.
pub(crate) fn write_reason(view: &View<'_>, choice: &Choice, plan: &mut Plan) {
    let mut w = plan.reason_writer();
    let mib = choice.footprint >> 20;
    let _ = match choice.pid {
        Some(pid) => write!(
            w,
            "tier {}, largest ({} MiB) process {} ({}) in ",
            choice.priority,
            mib,
            pid,
            choice.comm()
        ),
        None => write!(w, "tier {}, largest ({} MiB) cgroup ", choice.priority, mib),
    };
    if let Some(p) = view.path(choice.cgroup) {
        let _ = write!(w, "{}", p.display());
    }
}

/// Every candidate leaf read, the best kept: what [`descent`] finds
/// without reading them all, for cgroups past its table.
fn scan_leaves(
    view: &mut View<'_>,
    min: u64,
    candidate: impl Fn(&View<'_>, CgroupId) -> Option<i32>,
) -> Option<Choice> {
    let mut best: Option<Choice> = None;
    for i in 0..view.cgroups().len() {
        let id = view.cgroups()[i];
        let Some(priority) = candidate(view, id) else {
            continue;
        };
        let Some(st) = view.usage(id) else { continue };
        if st.current.is_none() {
            continue; // gone, or unreadable
        }
        let c = Choice {
            cgroup: id,
            pid: None,
            priority,
            footprint: st.footprint(),
            comm: [0; 16],
        };
        if best.is_none_or(|b| better(min, &c, &b)) {
            best = Some(c);
        }
    }
    best
}

/// True when `id` or one of its ancestors is excluded for this episode.
pub(crate) fn below_excluded(view: &View<'_>, id: CgroupId) -> bool {
    let mut cur = Some(id);
    while let Some(c) = cur {
        if view.excluded().has_cgroup(c) {
            return true;
        }
        cur = view.parent(c);
    }
    false
}

impl Handler for PriorityKill {
    fn name(&self) -> &'static str {
        "priority-kill"
    }

    fn classify(&mut self, meta: &CgroupMeta<'_>) -> Class {
        self.classifier.classify(meta)
    }

    fn decide(&mut self, view: &mut View<'_>, plan: &mut Plan) {
        if let Some(c) = self.choose(view) {
            self.plan_kill(view, &c, plan);
        }
    }

    fn usage_on_demand(&self) -> bool {
        true
    }
}
