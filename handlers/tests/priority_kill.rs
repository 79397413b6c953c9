//! Priority-kill over a real `Engine` and the SDK's `FakeHost`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Rig, eager, urgent};
use oomkit::engine::{EngineConfig, Outcome};
use oomkit_handlers::classify::{Classifier, QosPriorities, Rule};
use oomkit_handlers::priority::{Granularity, PriorityKill, PriorityKillConfig};
use oomkit_testing::{FakeHost, proc};

fn handler(rules: Vec<Rule>, granularity: Granularity) -> Box<PriorityKill> {
    let classifier = Classifier::new(rules, Some(QosPriorities::default()), 0).unwrap();
    Box::new(PriorityKill::new(
        PriorityKillConfig {
            granularity,
            ..PriorityKillConfig::default()
        },
        classifier,
    ))
}

fn rule(glob: &str, priority: Option<i32>, protected: bool) -> Rule {
    Rule {
        glob: glob.into(),
        priority,
        protected,
    }
}

/// A node with one pod per QoS class and a system service. The biggest
/// process is in the guaranteed pod, the smallest in the BestEffort one.
fn k8s_node(h: &mut FakeHost) {
    h.cg("/kubepods/besteffort/podbe/ctr").procs = vec![proc(100, 100)];
    h.cg("/kubepods/burstable/podbu/ctr").procs = vec![proc(200, 500)];
    h.cg("/kubepods/podgu/ctr").procs = vec![proc(300, 900)];
    h.cg("/system.slice/sshd.service").procs = vec![proc(400, 50)];
}

/// One urgent episode at the root; returns the PIDs killed in it.
fn episode(r: &mut Rig) -> Vec<i32> {
    let before = r.kills().len();
    r.event("/", urgent());
    r.run(Duration::from_secs(10));
    r.kills()[before..].iter().map(|k| k.0).collect()
}

#[test]
fn besteffort_before_burstable_before_system_before_guaranteed() {
    let mut r = Rig::new(eager(), k8s_node, handler(vec![], Granularity::Process));
    assert_eq!(
        episode(&mut r),
        vec![100],
        "BestEffort first, though smallest"
    );
    assert_eq!(episode(&mut r), vec![200], "then Burstable");
    assert_eq!(episode(&mut r), vec![400], "then system services (tier 0)");
    assert_eq!(episode(&mut r), vec![300], "Guaranteed last");
}

#[test]
fn systemd_driver_paths_are_understood() {
    let mut r = Rig::new(
        eager(),
        |h| {
            h.cg("/kubepods.slice/kubepods-pod1.slice/cri-a.scope")
                .procs = vec![proc(300, 900)];
            h.cg("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2.slice/cri-b.scope")
                .procs = vec![proc(200, 500)];
            h.cg("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod3.slice/cri-c.scope")
                .procs = vec![proc(100, 10)];
        },
        handler(vec![], Granularity::Process),
    );
    assert_eq!(episode(&mut r), vec![100]);
    assert_eq!(episode(&mut r), vec![200]);
    assert_eq!(episode(&mut r), vec![300]);
}

#[test]
fn config_glob_beats_qos() {
    // The burstable pod is declared expendable by the operator.
    let rules = vec![rule("/kubepods/burstable/podbu", Some(-1000), false)];
    let mut r = Rig::new(eager(), k8s_node, handler(rules, Granularity::Process));
    assert_eq!(
        episode(&mut r),
        vec![200],
        "rule on the pod, inherited by its container"
    );
    assert_eq!(episode(&mut r), vec![100]);
}

#[test]
fn xattr_beats_config_glob() {
    let rules = vec![rule("/kubepods/burstable/**", Some(-1000), false)];
    let mut r = Rig::new(
        eager(),
        |h| {
            k8s_node(h);
            // The trusted xattr says this container matters.
            h.cg("/kubepods/burstable/podbu/ctr").xattr.priority = Some(1000);
        },
        handler(rules, Granularity::Process),
    );
    assert_eq!(
        episode(&mut r),
        vec![100],
        "BestEffort, not the xattr-raised container"
    );
    assert_eq!(episode(&mut r), vec![400]);
    assert_eq!(episode(&mut r), vec![300]);
    assert_eq!(
        episode(&mut r),
        vec![200],
        "xattr priority 1000 is the highest tier"
    );
}

#[test]
fn protected_is_never_chosen() {
    let rules = vec![rule("/kubepods/burstable/**", None, true)];
    let mut r = Rig::new(
        EngineConfig {
            max_escalations: 0,
            ..eager()
        },
        |h| {
            k8s_node(h);
            h.cg("/kubepods/besteffort/podbe").xattr.protected = true;
            h.cg("/kubepods/podgu").xattr.protected = true;
            h.cg("/system.slice").xattr.protected = true;
        },
        handler(rules, Granularity::Process),
    );
    r.event("/", urgent());
    let eps = r.run(Duration::from_secs(10));
    assert!(r.kills().is_empty(), "{:?}", r.kills());
    assert_eq!(eps[0].outcome, Some(Outcome::NoAction));
    assert_eq!(
        r.engine.stats().refused,
        0,
        "the handler skipped them itself"
    );
}

#[test]
fn largest_within_the_lowest_tier() {
    let mut r = Rig::new(
        eager(),
        |h| {
            h.cg("/kubepods/besteffort/poda/ctr").procs = vec![proc(100, 100), proc(101, 300)];
            h.cg("/kubepods/besteffort/podb/ctr").procs = vec![proc(102, 200)];
            h.cg("/kubepods/burstable/podc/ctr").procs = vec![proc(200, 4000)];
        },
        handler(vec![], Granularity::Process),
    );
    assert_eq!(episode(&mut r), vec![101]);
    assert_eq!(episode(&mut r), vec![102]);
    assert_eq!(episode(&mut r), vec![100]);
}

#[test]
fn min_victim_bytes_passes_over_tiny_low_tier_victims() {
    let classifier = Classifier::new(vec![], Some(QosPriorities::default()), 0).unwrap();
    let h = PriorityKill::new(
        PriorityKillConfig {
            min_victim_bytes: 200 << 20,
            ..PriorityKillConfig::default()
        },
        classifier,
    );
    let mut r = Rig::new(eager(), k8s_node, Box::new(h));
    assert_eq!(
        episode(&mut r),
        vec![200],
        "BestEffort's 100 MiB is below the minimum"
    );
}

#[test]
fn escalation_skips_the_stuck_victim() {
    let mut r = Rig::new(
        eager(),
        |h| {
            k8s_node(h);
            h.cg("/kubepods/besteffort/podbe/ctr").procs = vec![proc(100, 100), proc(101, 80)];
            h.stuck.push(100);
        },
        handler(vec![], Granularity::Process),
    );
    r.event("/", urgent());
    let eps = r.run(Duration::from_secs(30));
    assert_eq!(
        r.kills().iter().map(|k| k.0).collect::<Vec<_>>(),
        vec![100, 101]
    );
    assert_eq!(eps[0].escalations, 1);
    assert_eq!(eps[0].outcome, Some(Outcome::Acted));
}

#[test]
fn escalation_skips_the_stuck_cgroup() {
    let mut r = Rig::new(
        eager(),
        |h| {
            k8s_node(h);
            h.stuck.push(100);
        },
        handler(vec![], Granularity::Process),
    );
    // The stuck process is the only one of BestEffort: escalation moves up a tier.
    r.event("/", urgent());
    r.run(Duration::from_secs(30));
    assert_eq!(
        r.kills().iter().map(|k| k.0).collect::<Vec<_>>(),
        vec![100, 200]
    );
}

#[test]
fn cgroup_granularity_kills_the_leaf() {
    let mut r = Rig::new(eager(), k8s_node, handler(vec![], Granularity::Cgroup));
    r.event("/", urgent());
    r.run(Duration::from_secs(10));
    assert_eq!(
        r.kills(),
        vec![(0, "/kubepods/besteffort/podbe/ctr".to_string())]
    );
}

#[test]
fn tree_granularity_honours_oom_group() {
    let mut r = Rig::new(
        eager(),
        |h| {
            k8s_node(h);
            h.cg("/kubepods/besteffort/podbe").oom_group = true;
            h.cg("/kubepods/besteffort/podbe/ctr").oom_group = true;
            h.cg("/kubepods/besteffort/podbe/sidecar").procs = vec![proc(101, 5)];
        },
        handler(vec![], Granularity::Tree),
    );
    r.event("/", urgent());
    r.run(Duration::from_secs(10));
    assert_eq!(
        r.kills(),
        vec![(0, "/kubepods/besteffort/podbe".to_string())],
        "the whole pod, as the kernel would"
    );
}

#[test]
fn cgroup_granularity_skips_excluded_cgroups() {
    let mut r = Rig::new(
        eager(),
        |h| {
            h.cg("/kubepods/besteffort/poda/ctr").procs = vec![proc(100, 300)];
            h.cg("/kubepods/besteffort/podb/ctr").procs = vec![proc(101, 200)];
        },
        handler(vec![], Granularity::Cgroup),
    );
    // FakeHost empties killed cgroups at once, so exclusion is exercised
    // through a refusal: the first pick is oomkit's own cgroup, the loop
    // refuses it, excludes it and asks again.
    r.host().own_cgroup = "/kubepods/besteffort/poda/ctr".into();
    r.event("/", urgent());
    r.run(Duration::from_secs(10));
    assert_eq!(
        r.kills(),
        vec![(0, "/kubepods/besteffort/podb/ctr".to_string())]
    );
}

#[test]
fn the_reason_names_tier_size_and_path() {
    let mut r = Rig::new(eager(), k8s_node, handler(vec![], Granularity::Process));
    r.event("/", urgent());
    let eps = r.run(Duration::from_secs(10));
    let reason = eps[0].plan.reason().to_string();
    assert_eq!(
        reason,
        "tier -200, largest (100 MiB) process 100 (work) in /kubepods/besteffort/podbe/ctr"
    );
}

#[test]
fn best_first_search_still_finds_the_largest_process_of_the_tier() {
    // `many` uses more memory in all, but its processes are small; `one`
    // holds the single largest process. Both in the same (default) tier.
    let mut r = Rig::new(
        eager(),
        |h| {
            h.cg("/jobs/many").procs = (0..10).map(|i| proc(500 + i, 50)).collect();
            h.cg("/jobs/one").procs = vec![proc(600, 300)];
            h.cg("/jobs/tiny").procs = vec![proc(700, 1)];
        },
        handler(vec![], Granularity::Process),
    );
    assert_eq!(episode(&mut r), vec![600]);
    // Then the processes of `many` (all equal): one of them, not `tiny`.
    let next = episode(&mut r);
    assert_eq!(next.len(), 1);
    assert!((500..510).contains(&next[0]), "{next:?}");
}
