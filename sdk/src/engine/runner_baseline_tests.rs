//! Baselines inferred from the parent's `memory.events` (plain files in a
//! temporary folder; inotify works on them): when a child's file is read
//! and when it is not.

use std::path::{Path, PathBuf};

use super::super::tests::{cgroup, config};
use super::*;
use crate::cgroup::{CgroupFs, MemoryEvents};
use crate::engine::local_events::Baselines;
use crate::engine::{CgroupMeta, Class, Handler, Plan, View};
use crate::events::DirChange;

struct Nothing;

impl Handler for Nothing {
    fn name(&self) -> &'static str {
        "nothing"
    }
    fn classify(&mut self, meta: &CgroupMeta<'_>) -> Class {
        meta.parent_class.unwrap_or_default()
    }
    fn decide(&mut self, _view: &mut View<'_>, _plan: &mut Plan) {}
}

const ZERO_EVENTS: &str = "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n";
/// What every child's own file holds: not zero, so a baseline read from it
/// and one inferred differ.
const CHILD_LOCAL: &str = "low 0\nhigh 7\nmax 0\noom 0\noom_kill 0\n";
const CHILDREN: usize = 5;
/// Each child's file read, besides the root's own at start: nothing inferred.
const EACH_CHILD_READ: Baselines = Baselines {
    read: 1 + CHILDREN as u64,
    inferred: 0,
};

/// A managed root `/p` (below the mount root, which has no
/// `memory.events`) whose `memory.events` is `parent_events`, watched by a
/// runner with memory events on; the mount's rule as `hierarchical` says.
/// Then `CHILDREN` children created, not yet attached.
fn runner_on(parent_events: &str, hierarchical: bool) -> (tempfile::TempDir, Runner) {
    let tmp = tempfile::tempdir().unwrap();
    cgroup(tmp.path());
    let p = tmp.path().join("p");
    cgroup(&p);
    std::fs::write(p.join("memory.events"), parent_events).unwrap();
    std::fs::write(p.join("memory.events.local"), ZERO_EVENTS).unwrap();
    let fs = CgroupFs::from_dir_unchecked(tmp.path());
    let mut cfg = config(&p);
    cfg.memory_events = true;
    let mut runner = Runner::with_fs(cfg, Box::new(Nothing), fs).unwrap();
    runner
        .engine
        .host_mut()
        .assume_events_mount(&p, hierarchical);
    for i in 0..CHILDREN {
        let c = p.join(format!("c{i}"));
        cgroup(&c);
        std::fs::write(c.join("memory.events.local"), CHILD_LOCAL).unwrap();
    }
    (tmp, runner)
}

fn child(i: usize) -> PathBuf {
    PathBuf::from(format!("/p/c{i}"))
}

/// Attaches every child in one batch, as the directory watch would.
fn attach_all(runner: &mut Runner) {
    for i in 0..CHILDREN {
        runner.dir_changes.push((DirChange::Created, child(i)));
    }
    runner.apply_dir_changes();
    assert_eq!(runner.engine().tree().len(), CHILDREN + 1);
}

fn baselines(runner: &Runner) -> Baselines {
    runner.local.as_ref().unwrap().baselines()
}

/// The baseline `high` of every child.
fn highs(runner: &Runner) -> Vec<Option<u64>> {
    (0..CHILDREN)
        .map(|i| {
            let id = runner.engine().tree().lookup(&child(i)).unwrap();
            runner.local.as_ref().unwrap().baseline(id).unwrap().high
        })
        .collect()
}

#[test]
fn an_all_zero_parent_reads_no_child() {
    let (tmp, mut runner) = runner_on(ZERO_EVENTS, true);
    assert_eq!(baselines(&runner).read, 1, "the root's own, at start");
    attach_all(&mut runner);
    assert_eq!(
        baselines(&runner),
        Baselines {
            read: 1,
            inferred: CHILDREN as u64
        }
    );
    assert_eq!(highs(&runner), vec![Some(0); CHILDREN]);
    // A child attached alone (outside a batch) is read.
    let alone = tmp.path().join("p/alone");
    cgroup(&alone);
    std::fs::write(alone.join("memory.events.local"), CHILD_LOCAL).unwrap();
    runner.add_child(Path::new("/p/alone"));
    assert_eq!(runner.engine().tree().len(), CHILDREN + 2);
    assert_eq!(baselines(&runner).read, 2);
}

#[test]
fn a_nonzero_parent_reads_each_child() {
    // A counter the SDK does not know counts too.
    let (_tmp, mut runner) = runner_on("low 0\nhigh 0\nmax 0\nnew_event 1\n", true);
    attach_all(&mut runner);
    assert_eq!(baselines(&runner), EACH_CHILD_READ);
    assert_eq!(highs(&runner), vec![Some(7); CHILDREN]);
}

#[test]
fn a_parent_that_changes_between_its_two_reads_reads_each_child() {
    let (tmp, mut runner) = runner_on(ZERO_EVENTS, true);
    runner.engine.host_mut().begin_batch();
    runner.begin_siblings();
    for i in 0..CHILDREN {
        runner.add_child(&child(i));
        if i == 1 {
            // An event below the parent after its first read.
            let events = tmp.path().join("p/memory.events");
            std::fs::write(events, "low 0\nhigh 1\nmax 0\noom 0\noom_kill 0\n").unwrap();
        }
    }
    assert_eq!(
        baselines(&runner).read,
        1,
        "nothing read before the second read"
    );
    runner.end_siblings();
    runner.engine.host_mut().end_batch();
    assert_eq!(baselines(&runner), EACH_CHILD_READ);
    assert_eq!(highs(&runner), vec![Some(7); CHILDREN]);
}

#[test]
fn memory_localevents_reads_each_child() {
    let (_tmp, mut runner) = runner_on(ZERO_EVENTS, false);
    attach_all(&mut runner);
    assert_eq!(baselines(&runner), EACH_CHILD_READ);
}

#[test]
fn a_child_without_the_file_is_not_watched() {
    let (tmp, mut runner) = runner_on(ZERO_EVENTS, true);
    std::fs::remove_file(tmp.path().join("p/c3/memory.events.local")).unwrap();
    attach_all(&mut runner);
    let id = runner.engine().tree().lookup(&child(3)).unwrap();
    assert!(runner.local.as_ref().unwrap().baseline(id).is_none());
    assert!(!runner.events_token.contains_key(&id), "no fd either");
    assert_eq!(baselines(&runner).inferred, CHILDREN as u64 - 1);
}

/// An inferred baseline is a real one: a later change of the child's
/// file is reported as the rise from zero.
#[test]
fn an_inferred_baseline_reports_the_next_event() {
    let (tmp, mut runner) = runner_on(ZERO_EVENTS, true);
    attach_all(&mut runner);
    let id = runner.engine().tree().lookup(&child(2)).unwrap();
    std::fs::write(
        tmp.path().join("p/c2/memory.events.local"),
        "low 0\nhigh 1\nmax 0\noom 0\noom_kill 0\n",
    )
    .unwrap();
    let mut out = Vec::new();
    let host = runner.engine.host();
    runner
        .local
        .as_mut()
        .unwrap()
        .drain(host, std::time::Instant::now(), &mut out);
    let rose: Vec<(CgroupId, MemoryEvents)> = out
        .iter()
        .filter_map(|(t, _)| match t {
            crate::engine::Trigger::MemoryEvents { cgroup, delta } => Some((*cgroup, *delta)),
            _ => None,
        })
        .collect();
    assert_eq!(rose.len(), 1, "{rose:?}");
    assert_eq!(rose[0].0, id);
    assert_eq!(rose[0].1.high, Some(1));
}
