//! Heap-profile over a real `Engine` and the SDK's `FakeHost`: raise → capture → kill.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Rig, eager, urgent};
use oomkit::cgroup::Limit;
use oomkit::engine::{Action, Outcome, ProcSample};
use oomkit_handlers::classify::Classifier;
use oomkit_handlers::heap_profile::{HeapProfile, HeapProfileConfig};
use oomkit_handlers::priority::{Granularity, PriorityKill, PriorityKillConfig};
use oomkit_testing::{FakeHost, proc};

const MIB: u64 = 1 << 20;

fn named(pid: i32, rss_mib: u64, comm: &str) -> ProcSample {
    let mut p = proc(pid, rss_mib);
    p.comm = [0; 16];
    p.comm[..comm.len()].copy_from_slice(comm.as_bytes());
    p
}

fn handler(cfg: HeapProfileConfig, granularity: Granularity) -> Box<HeapProfile> {
    let inner = PriorityKill::new(
        PriorityKillConfig {
            granularity,
            ..PriorityKillConfig::default()
        },
        Classifier::default(),
    );
    Box::new(HeapProfile::new(cfg, inner).unwrap())
}

fn cfg() -> HeapProfileConfig {
    HeapProfileConfig {
        signal: libc::SIGUSR2,
        cgroups: vec!["/apps/*".into()],
        comms: vec!["web".into(), "heap_victim".into()],
        headroom_bytes: 64 * MIB,
        budget_bytes: 100 * MIB,
        raise_for: Duration::from_secs(5),
        dump_deadline: Duration::from_secs(2),
    }
}

fn node(h: &mut FakeHost) {
    h.cg("/apps").max = Some(Limit::Bytes(1000 * MIB));
    h.cg("/apps/web").max = Some(Limit::Bytes(500 * MIB));
    h.cg("/apps/web").procs = vec![named(100, 480, "web")];
    h.cg("/jobs/x").procs = vec![named(200, 300, "heap_victim")];
    h.cg("/jobs/y").procs = vec![named(300, 900, "other")];
}

fn log(r: &mut Rig) -> Vec<(&'static str, i32, String)> {
    r.host()
        .log
        .iter()
        .map(|l| (l.0, l.1, l.2.display().to_string()))
        .collect()
}

#[test]
fn raise_then_capture_then_kill_then_restore() {
    let mut r = Rig::new(eager(), node, handler(cfg(), Granularity::Process));
    r.event("/apps", urgent());
    let eps = r.run(Duration::from_secs(20));
    assert_eq!(
        log(&mut r),
        vec![
            ("set_max", 564, "/apps/web".into()),
            ("set_max", 1064, "/apps".into()),
            ("signal", 100, "/apps/web".into()),
            ("kill_process", 100, "/apps/web".into()),
            ("set_max", 500, "/apps/web".into()),
            ("set_max", 1000, "/apps".into()),
        ],
        "headroom on the victim and its limited ancestors up to the scope, \
         then the signal, then the kill, then the limits restored"
    );
    let ep = &eps[0];
    assert_eq!(ep.outcome, Some(Outcome::Acted));
    let steps: Vec<&str> = ep.plan.steps().map(|s| s.action.name()).collect();
    assert_eq!(
        steps,
        vec![
            "raise_max",
            "raise_max",
            "capture_diagnostics",
            "kill_process"
        ]
    );
    let capture = ep.plan.step(2).unwrap();
    assert_eq!(capture.deadline, Duration::from_secs(2));
    assert!(matches!(
        capture.action,
        Action::CaptureDiagnostics { signal, .. } if signal == libc::SIGUSR2
    ));
    assert!(
        ep.plan
            .reason()
            .starts_with("heap profile of 100 (web) first"),
        "{}",
        ep.plan.reason()
    );
}

/// Issue 10, defect 17 (third point): a process names itself (`comm` is
/// set with `prctl(PR_SET_NAME)`), so a listed name outside the configured
/// cgroups gets no headroom and no dump delay: it is simply killed.
#[test]
fn a_listed_comm_outside_the_globs_is_just_killed() {
    let mut r = Rig::new(eager(), node, handler(cfg(), Granularity::Process));
    // Without the larger `other`, the victim is `heap_victim`: its comm is
    // listed, its cgroup matches no glob.
    r.host().cg("/jobs/y").procs.clear();
    r.event("/jobs", urgent());
    r.run(Duration::from_secs(20));
    assert_eq!(log(&mut r), vec![("kill_process", 200, "/jobs/x".into())]);
}

/// With names only (no `cgroups`), the name decides (check-config warns).
#[test]
fn comms_alone_match_anywhere() {
    let only_comms = HeapProfileConfig {
        cgroups: Vec::new(),
        ..cfg()
    };
    let mut r = Rig::new(eager(), node, handler(only_comms, Granularity::Process));
    r.host().cg("/jobs/y").procs.clear();
    r.event("/jobs", urgent());
    r.run(Duration::from_secs(20));
    assert_eq!(
        log(&mut r),
        vec![
            ("signal", 200, "/jobs/x".into()),
            ("kill_process", 200, "/jobs/x".into()),
        ],
        "no limit to raise in /jobs: capture and kill only"
    );
}

#[test]
fn non_matching_victim_is_just_killed() {
    let mut r = Rig::new(eager(), node, handler(cfg(), Granularity::Process));
    r.event("/jobs", urgent());
    r.run(Duration::from_secs(20));
    assert_eq!(log(&mut r), vec![("kill_process", 300, "/jobs/y".into())]);
}

#[test]
fn escalation_kills_without_asking_again() {
    let mut r = Rig::new(
        eager(),
        |h| {
            node(h);
            h.cg("/apps/web").procs.push(named(101, 10, "web"));
            h.stuck.push(100);
        },
        handler(cfg(), Granularity::Process),
    );
    r.event("/apps", urgent());
    r.run(Duration::from_secs(30));
    let signals: Vec<i32> = log(&mut r)
        .iter()
        .filter(|l| l.0 == "signal")
        .map(|l| l.1)
        .collect();
    assert_eq!(signals, vec![100], "one profile request per episode");
    assert_eq!(
        r.kills().iter().map(|k| k.0).collect::<Vec<_>>(),
        vec![100, 101]
    );
}

#[test]
fn headroom_comes_out_of_a_budget() {
    let mut r = Rig::new(eager(), node, handler(cfg(), Granularity::Process));
    r.event("/apps", urgent());
    // Not long enough for the 5 s grant to expire: the second incident gets
    // what is left of the 100 MiB budget (36 MiB).
    r.run(Duration::from_millis(1500));
    r.host().cg("/apps/web").procs = vec![named(102, 480, "web")];
    r.engine.host().advance(Duration::from_millis(500));
    r.event("/apps", urgent());
    r.run(Duration::from_secs(20));
    let raises: Vec<(i32, String)> = log(&mut r)
        .into_iter()
        .filter(|l| l.0 == "set_max")
        .map(|l| (l.1, l.2))
        .collect();
    assert_eq!(
        raises[..2],
        [(564, "/apps/web".to_string()), (1064, "/apps".to_string())]
    );
    assert!(
        raises.contains(&(536, "/apps/web".to_string())),
        "second grant is 36 MiB: {raises:?}"
    );
}

#[test]
fn cgroup_granularity_profiles_the_largest_process_then_kills_the_cgroup() {
    let mut r = Rig::new(
        eager(),
        |h| {
            node(h);
            h.cg("/apps/web").procs.push(named(101, 10, "helper"));
        },
        handler(cfg(), Granularity::Cgroup),
    );
    r.event("/apps", urgent());
    r.run(Duration::from_secs(20));
    let l: Vec<(&str, i32)> = log(&mut r).iter().map(|l| (l.0, l.1)).collect();
    assert_eq!(
        l,
        vec![
            ("set_max", 564),
            ("set_max", 1064),
            ("signal", 100),
            ("kill_cgroup", 0),
            ("set_max", 500),
            ("set_max", 1000)
        ]
    );
}

#[test]
fn dump_watch_waits_for_a_new_file_that_stopped_growing() {
    use oomkit::engine::{PrekillHook, PrekillTarget};
    use oomkit_handlers::heap_profile::DumpWatch;
    let r = Rig::new(eager(), node, handler(cfg(), Granularity::Process));
    let cgroup = r.engine.root().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("old.heap"), b"heap_v2/old").unwrap();
    let mut watch = DumpWatch::new(dir.path().to_path_buf());
    let mut target = PrekillTarget {
        cgroup,
        path: std::path::Path::new("/apps/web"),
        pid: Some(100),
        signal: None,
        escalation: 0,
    };
    assert_eq!(watch.fire(&target), None, "a plain kill is not held up");
    target.signal = Some(libc::SIGUSR2);
    assert!(
        watch.fire(&target).is_some(),
        "a profile request is waited for"
    );
    assert!(!watch.poll(), "the old file does not count");
    std::fs::write(dir.path().join(".new.heap.tmp"), b"heap_v2/partial").unwrap();
    assert!(!watch.poll(), "a hidden file is still being written");
    std::fs::rename(
        dir.path().join(".new.heap.tmp"),
        dir.path().join("new.heap"),
    )
    .unwrap();
    // Same mtime resolution may order the two files either way: make the new one newer.
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .append(true)
        .open(dir.path().join("new.heap"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert!(!watch.poll(), "seen once: it may still grow");
    assert!(watch.poll(), "unchanged on the second look: done");
}
