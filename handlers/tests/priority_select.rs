//! Priority-kill's selection, which reads only the cgroups that can win,
//! against a straightforward reference that reads everything, on random
//! trees through a real `Engine` over the SDK's `FakeHost`: tiers from
//! xattrs, protected and unkillable members, oomkit's own cgroup, cgroups
//! that vanished, victims that do not die (escalation), process, cgroup
//! and tree granularity, a size floor, and a scratch table too small for
//! the tree.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Rig, eager, urgent};
use oomkit::engine::XattrInfo;
use oomkit::engine::{CgroupId, CgroupMeta, Class, Handler, Plan, View};
use oomkit::kill::never_kill;
use oomkit_handlers::classify::Classifier;
use oomkit_handlers::priority::{Choice, Granularity, PriorityKill, PriorityKillConfig};
use oomkit_testing::{FakeHost, proc};

/// A small deterministic generator (xorshift64*), so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
}

/// The policy as written: big enough first, then the lowest tier, then the
/// largest; the first in the view's order among equals.
fn better(min: u64, a: &Choice, b: &Choice) -> bool {
    let (big_a, big_b) = (a.footprint >= min, b.footprint >= min);
    if big_a != big_b {
        return big_a;
    }
    if a.priority != b.priority {
        return a.priority < b.priority;
    }
    a.footprint > b.footprint
}

/// Every cgroup in scope read, every candidate compared.
fn reference(view: &mut View<'_>, granularity: Granularity, min: u64) -> Option<Choice> {
    let own_pid = view.own_pid();
    let excluded = view.excluded().clone();
    let ids = view.cgroups().to_vec();
    let mut best: Option<Choice> = None;
    for &id in &ids {
        let class = view.class(id).unwrap();
        let mut up = Some(id);
        let mut below_excluded = false;
        while let Some(c) = up {
            below_excluded |= excluded.has_cgroup(c);
            up = view.parent(c);
        }
        if class.protected || below_excluded {
            continue;
        }
        let mut offer = |c: Choice| {
            if best.is_none_or(|b| better(min, &c, &b)) {
                best = Some(c);
            }
        };
        if granularity == Granularity::Process {
            let Ok(procs) = view.processes(id) else {
                continue;
            };
            for p in procs.iter().copied() {
                if never_kill(p.pid, own_pid, p.kernel_thread, p.oom_score_adj).is_some()
                    || excluded.has_pid(p.pid)
                {
                    continue;
                }
                offer(Choice {
                    cgroup: id,
                    pid: Some(p.pid),
                    priority: class.priority,
                    footprint: p.footprint(),
                    comm: p.comm,
                });
            }
        } else {
            if ids.iter().any(|&c| view.parent(c) == Some(id)) {
                continue; // not a leaf
            }
            let st = view.usage(id).unwrap();
            if st.current.is_none() {
                continue;
            }
            offer(Choice {
                cgroup: id,
                pid: None,
                priority: class.priority,
                footprint: st.footprint(),
                comm: [0; 16],
            });
        }
    }
    best
}

type Seen = Arc<Mutex<Vec<(Option<Choice>, Option<Choice>)>>>;

/// Asks the fast selection first (it reads on demand), then the reference;
/// plans the fast one's kill.
struct Compare {
    fast: PriorityKill,
    granularity: Granularity,
    min: u64,
    seen: Seen,
}

impl Handler for Compare {
    fn name(&self) -> &'static str {
        "compare"
    }
    fn classify(&mut self, meta: &CgroupMeta<'_>) -> Class {
        self.fast.classify(meta)
    }
    fn decide(&mut self, view: &mut View<'_>, plan: &mut Plan) {
        let fast = self.fast.choose(view);
        let slow = reference(view, self.granularity, self.min);
        self.seen.lock().unwrap().push((fast, slow));
        if let Some(c) = fast {
            self.fast.plan_kill(view, &c, plan);
        }
    }
    fn usage_on_demand(&self) -> bool {
        true
    }
}

/// A random tree of up to 80 cgroups, four levels deep.
fn random_tree(rng: &mut Rng, h: &mut FakeHost) -> Vec<String> {
    let mut paths = vec!["/".to_string()];
    let mut pid = 1000;
    let n = 3 + rng.below(78);
    for k in 0..n {
        let parent = paths[rng.below(paths.len() as u64) as usize].clone();
        if parent.matches('/').count() >= 4 {
            continue;
        }
        let path = if parent == "/" {
            format!("/n{k}")
        } else {
            format!("{parent}/n{k}")
        };
        paths.push(path);
    }
    if rng.chance(30) {
        // oomkit's own cgroup: never a victim, nor what holds it.
        paths.push("/system".into());
        paths.push("/system/oomkit".into());
    }
    for path in &paths {
        let cg = h.cg(path);
        for _ in 0..rng.below(4) {
            let mut p = proc(pid, rng.pick(&[1, 2, 3, 4, 8, 16, 32]));
            if rng.chance(8) {
                p.oom_score_adj = -1000;
            }
            cg.procs.push(p);
            pid += 1;
        }
        cg.current = rng.pick(&[0, 0, 1, 5, 12]) << 20;
        cg.xattr = XattrInfo {
            priority: rng.chance(30).then(|| rng.pick(&[-20, -10, 0, 10])),
            protected: rng.chance(6),
            delegated: false,
        };
    }
    paths
}

/// One random case: a tree, some of it vanished and some victims stuck,
/// and up to three episodes at the root. Returns the decisions compared.
fn case(seed: u64) -> usize {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let granularity = rng.pick(&[Granularity::Process, Granularity::Cgroup, Granularity::Tree]);
    let min = rng.pick(&[0, 8 << 20, 40 << 20]);
    // A table smaller than the tree sends the search to its full scan.
    let max_cgroups = rng.pick(&[1024, 1024, 4]);
    let seen: Seen = Arc::default();
    let fast = PriorityKill::new(
        PriorityKillConfig {
            granularity,
            min_victim_bytes: min,
            max_cgroups,
            ..PriorityKillConfig::default()
        },
        Classifier::new(vec![], None, 0).unwrap(),
    );
    let compare = Compare {
        fast,
        granularity,
        min,
        seen: seen.clone(),
    };
    let mut paths = Vec::new();
    let mut r = Rig::new(
        eager(),
        |h| paths = random_tree(&mut rng, h),
        Box::new(compare),
    );
    // Vanished between the walk and the decision: the loop still has them.
    for p in paths.iter().skip(1) {
        if rng.chance(8) {
            r.host().cgs.remove(std::path::Path::new(p));
        }
    }
    let pids: Vec<i32> = r
        .host()
        .cgs
        .values()
        .flat_map(|c| c.procs.iter().map(|p| p.pid))
        .collect();
    for pid in pids {
        if rng.chance(10) {
            r.host().stuck.push(pid);
        }
    }
    for _ in 0..3 {
        r.event("/", urgent());
        r.run(Duration::from_secs(30));
    }
    let seen = seen.lock().unwrap();
    for (i, (fast, slow)) in seen.iter().enumerate() {
        assert_eq!(
            fast, slow,
            "seed {seed}, decision {i}: {granularity:?}, min {min}, table {max_cgroups}"
        );
    }
    seen.len()
}

#[test]
fn fast_selection_picks_what_a_full_scan_picks_on_random_trees() {
    let mut decisions = 0;
    for seed in 0..600 {
        decisions += case(seed);
    }
    // Escalations and refused victims ask again: more decisions than cases.
    assert!(decisions > 1500, "only {decisions} decisions compared");
}

fn tiered(h: &mut FakeHost, tiers: usize, per_tier: usize) {
    for t in 0..tiers {
        let tier = format!("/t{t}");
        h.cg(&tier).xattr.priority = Some(t as i32 * 10);
        for i in 0..per_tier {
            h.cg(&format!("{tier}/c{i}")).procs = vec![proc((t * 100 + i) as i32 + 1000, 8)];
        }
    }
}

/// One urgent dry-run decision at cgroup granularity over the tree `setup`
/// builds: the rig, the victim and how many usages the decision read.
fn one_cgroup_decision(setup: impl FnOnce(&mut FakeHost)) -> (Rig, CgroupId, usize) {
    let pk = PriorityKill::new(
        PriorityKillConfig {
            granularity: Granularity::Cgroup,
            ..PriorityKillConfig::default()
        },
        Classifier::new(vec![], None, 0).unwrap(),
    );
    let mut cfg = eager();
    cfg.dry_run = true;
    let mut r = Rig::new(cfg, setup, Box::new(pk));
    let before = r.host().usage_reads;
    r.event("/", urgent());
    let ep = r.run(Duration::from_secs(5));
    let reads = r.host().usage_reads - before;
    assert_eq!(ep.len(), 1);
    let victim = ep[0].plan.steps().next().unwrap().action.cgroup();
    (r, victim, reads)
}

/// The lowest tier is read, the others are not: at cgroup granularity a
/// decision over 5 tiers of 20 leaves reads the scope, the lowest tier's
/// parent and its 20 leaves (22 reads, not 106).
#[test]
fn cgroup_selection_reads_only_the_lowest_tier() {
    let (r, victim, reads) = one_cgroup_decision(|h| tiered(h, 5, 20));
    assert!(
        r.engine.tree().path(victim).unwrap().starts_with("/t0"),
        "{:?}",
        r.engine.tree().path(victim)
    );
    assert_eq!(reads, 22, "reads of one decision");
}

/// Within a tier, a subtree whose usage is below the best leaf found is
/// not read: two groups of 10 leaves, one of them 10 times as large.
#[test]
fn cgroup_selection_skips_subtrees_that_cannot_win() {
    let (r, victim, reads) = one_cgroup_decision(|h| {
        for i in 0..10 {
            h.cg(&format!("/big/c{i}")).procs = vec![proc(1000 + i, 100 + i as u64)];
            h.cg(&format!("/small/c{i}")).procs = vec![proc(2000 + i, 5)];
        }
    });
    assert_eq!(r.id("/big/c9"), victim);
    // The scope, both groups, the large group's 10 leaves; not the small one's.
    assert_eq!(reads, 13, "reads of one decision");
}

/// The search's marks are cleared every 255 tiers searched: with a size
/// floor no candidate reaches, each decision marks all 6 tiers, and 100
/// decisions go through the clearing twice, still picking what a full scan
/// picks.
#[test]
fn fast_selection_survives_many_rounds() {
    let seen: Seen = Arc::default();
    let min = 1 << 40;
    let compare = Compare {
        fast: PriorityKill::new(
            PriorityKillConfig {
                granularity: Granularity::Cgroup,
                min_victim_bytes: min,
                ..PriorityKillConfig::default()
            },
            Classifier::new(vec![], None, 0).unwrap(),
        ),
        granularity: Granularity::Cgroup,
        min,
        seen: seen.clone(),
    };
    let mut cfg = eager();
    cfg.dry_run = true;
    // Higher tiers hold larger leaves: a stale mark taken for one of this
    // round's would pick a leaf of the wrong tier.
    let setup = |h: &mut FakeHost| {
        for t in 0..6 {
            h.cg(&format!("/t{t}")).xattr.priority = Some(t * 10);
            for i in 0..7 {
                let pid = 1000 + t * 10 + i;
                h.cg(&format!("/t{t}/c{i}")).procs = vec![proc(pid, 4 + 8 * t as u64 + i as u64)];
            }
        }
    };
    let mut r = Rig::new(cfg, setup, Box::new(compare));
    for _ in 0..100 {
        r.event("/", urgent());
        r.run(Duration::from_secs(5));
        r.host().advance(Duration::from_secs(60));
    }
    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 100, "{} decisions", seen.len());
    for (i, (fast, slow)) in seen.iter().enumerate() {
        assert!(fast.is_some(), "decision {i}: a victim below the floor");
        assert_eq!(fast, slow, "decision {i}");
    }
}
