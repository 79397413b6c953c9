//! Policy tests of the loop against a fake host: no kernel needed.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::{Path, PathBuf};
use std::time::Duration;

use oomkit::cgroup::{Limit, MemoryEvents};
use oomkit::engine::*;
use oomkit_testing::{FakeHost, Rig, ev, proc};

/// Kills the largest process of the lowest priority in scope.
struct Largest {
    /// Overrides: act on this (path, pid) instead.
    force: Option<Action>,
}

impl Handler for Largest {
    fn name(&self) -> &'static str {
        "largest"
    }
    fn decide(&mut self, view: &mut View<'_>, plan: &mut Plan) {
        if let Some(a) = self.force {
            let _ = plan.push(a, Duration::ZERO);
            return;
        }
        let mut best: Option<(i32, u64, CgroupId, i32)> = None;
        let ids: Vec<CgroupId> = view.cgroups().to_vec();
        for id in ids {
            let prio = view.class(id).map_or(0, |c| c.priority);
            let procs = view.processes(id).map(<[_]>::to_vec).unwrap_or_default();
            for p in procs {
                if view.excluded().has_pid(p.pid) {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some((bp, bf, _, _)) => {
                        (prio, std::cmp::Reverse(p.footprint())) < (bp, std::cmp::Reverse(bf))
                    }
                };
                if better {
                    best = Some((prio, p.footprint(), id, p.pid));
                }
            }
        }
        if let Some((_, _, cgroup, pid)) = best {
            let _ = plan.push(Action::KillProcess { cgroup, pid }, Duration::ZERO);
            plan.set_reason("largest process");
        }
    }
}

/// A [`rig`] over [`two_jobs`] with `memory.high` of `/batch` at `high_mib`.
fn batch_over_high(cfg: EngineConfig, high_mib: u64) -> Rig {
    rig(
        cfg,
        |h| {
            two_jobs(h);
            h.cg("/batch").high = Some(Limit::Bytes(high_mib << 20));
        },
        None,
    )
}

/// [`batch_over_high`] at 400 MiB, no re-check, with 430 MiB charged to the
/// batch job: pressured.
fn batch_pressured() -> Rig {
    let cfg = EngineConfig {
        recheck: false,
        ..EngineConfig::default()
    };
    let mut r = batch_over_high(cfg, 400);
    r.host().cg("/batch").procs[0].rss = 380 << 20;
    r
}

/// A rig whose handler is [`Largest`] (or the forced action).
fn rig(cfg: EngineConfig, setup: impl FnOnce(&mut FakeHost), force: Option<Action>) -> Rig {
    Rig::new(cfg, setup, Box::new(Largest { force }))
}

fn two_jobs(h: &mut FakeHost) {
    h.cg("/batch").procs = vec![proc(100, 300), proc(101, 50)];
    h.cg("/svc").procs = vec![proc(200, 500)];
    h.cg("/system/oomkit").procs = vec![proc(4242, 5)];
}

/// A heap-profile-like handler for PID 100 in scope: raise `memory.max` to 600 MiB (if `raise`),
/// ask for a dump with signal 12 and wait `capture_wait`, then kill (if `kill`).
struct Profile {
    raise: bool,
    capture_wait: Duration,
    kill: bool,
}

impl Handler for Profile {
    fn name(&self) -> &'static str {
        "profile"
    }
    fn decide(&mut self, view: &mut View<'_>, plan: &mut Plan) {
        let cgroup = view.scope().unwrap();
        if self.raise {
            let _ = plan.push(
                Action::RaiseMax {
                    cgroup,
                    limit: 600 << 20,
                    duration: Duration::from_secs(10),
                },
                Duration::ZERO,
            );
        }
        let _ = plan.push(
            Action::CaptureDiagnostics {
                cgroup,
                pid: 100,
                signal: 12,
            },
            self.capture_wait,
        );
        if self.kill {
            let _ = plan.push(Action::KillProcess { cgroup, pid: 100 }, Duration::ZERO);
        }
    }
}

/// An engine (no re-check) over [`two_jobs`] with `/batch` limited to 360 MiB, running `h`.
fn batch_with_a_limit(h: Profile) -> (Engine<FakeHost>, CgroupId) {
    let mut host = FakeHost::new();
    two_jobs(&mut host);
    host.cg("/batch").max = Some(Limit::Bytes(360 << 20));
    let cfg = EngineConfig {
        recheck: false,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg, host, Box::new(h), Path::new("/")).unwrap();
    let batch = e.add_cgroup(Path::new("/batch")).unwrap();
    (e, batch)
}

/// A `max` event on `cgroup`, now.
fn fire(e: &mut Engine<FakeHost>, cgroup: CgroupId) {
    let at = e.host().now();
    e.on_event(
        Trigger::MemoryEvents {
            cgroup,
            delta: ev(0, 1, 1),
        },
        at,
    );
}

/// One second of 20 ms ticks.
fn tick_for_a_second(e: &mut Engine<FakeHost>) {
    for _ in 0..50 {
        e.host().advance(Duration::from_millis(20));
        let at = e.host().now();
        e.on_tick(at);
    }
}

/// [`fire`], then [`tick_for_a_second`].
fn raise_and_tick(e: &mut Engine<FakeHost>, cgroup: CgroupId) {
    fire(e, cgroup);
    tick_for_a_second(e);
}

#[test]
fn urgent_event_kills_at_once_and_waits_for_memory() {
    let mut r = rig(EngineConfig::default(), two_jobs, None);
    r.event("/batch", ev(0, 1, 1));
    let kills = r.host().kills();
    assert_eq!(kills.len(), 1, "killed exactly once: {kills:?}");
    assert_eq!(
        kills[0].1, 100,
        "the largest process of the signalled scope"
    );
    assert!(r.engine.in_episode());
    let eps = r.run(Duration::from_secs(10));
    assert_eq!(eps.len(), 1);
    let e = &eps[0];
    assert_eq!(e.outcome, Some(Outcome::Acted));
    let t = e.timings;
    assert!(t.event_seen <= t.decided && t.decided <= t.signal_sent);
    assert!(t.signal_sent <= t.victim_exited && t.victim_exited <= t.memory_back);
    assert_eq!(r.engine.stats().kills, 1);
    assert_eq!(
        r.engine.next_wake(),
        None,
        "idle after cooldown: no timer wakeups"
    );
}

#[test]
fn progress_holds_off_and_resolution_averts() {
    let cfg = EngineConfig {
        recheck: false,
        ..EngineConfig::default()
    };
    let mut r = batch_over_high(cfg, 400);
    r.event("/batch", ev(1, 0, 0));
    assert!(
        r.host().kills().is_empty(),
        "a high event alone must not kill at once"
    );
    // Reclaim makes progress: usage falls below the limit.
    r.host().cg("/batch").procs[0].rss = 200 << 20;
    r.host().cg("/batch").pgsteal += 1000;
    let eps = r.run(Duration::from_secs(5));
    assert!(r.host().kills().is_empty());
    assert_eq!(eps.last().and_then(|e| e.outcome), Some(Outcome::Resolved));
    assert_eq!(r.engine.stats().averted, 1);
}

#[test]
fn no_progress_kills_after_one_sample() {
    let mut r = batch_over_high(EngineConfig::default(), 300);
    r.event("/batch", ev(1, 0, 0));
    assert!(r.host().kills().is_empty());
    // Usage keeps rising, nothing reclaimed.
    r.host().cg("/batch").procs[0].rss = 330 << 20;
    let eps = r.run(Duration::from_secs(5));
    assert_eq!(r.host().kills().len(), 1);
    assert_eq!(eps[0].outcome, Some(Outcome::Acted));
}

#[test]
fn sustained_full_stall_kills_despite_progress() {
    let cfg = EngineConfig {
        stall_sustain: Duration::from_millis(500),
        recheck: false,
        ..EngineConfig::default()
    };
    let mut r = batch_over_high(cfg, 300);
    r.event("/batch", ev(1, 0, 0));
    // Each 100 ms: reclaim steals a little (progress) but every task is
    // stalled half the time (50% full stall, above the 10% threshold).
    for _ in 0..4 {
        let h = r.host();
        h.cg("/batch").pgsteal += 10;
        h.cg("/batch").full_us += 50_000;
        h.advance(Duration::from_millis(100));
        let at = h.now();
        r.engine.on_tick(at);
        assert!(
            r.host().kills().is_empty(),
            "not before the stall is sustained"
        );
    }
    for _ in 0..3 {
        let h = r.host();
        h.cg("/batch").pgsteal += 10;
        h.cg("/batch").full_us += 50_000;
        h.advance(Duration::from_millis(100));
        let at = h.now();
        r.engine.on_tick(at);
    }
    assert_eq!(r.host().kills().len(), 1, "stall sustained past 500 ms");
}

#[test]
fn progress_awareness_can_be_disabled() {
    let cfg = EngineConfig {
        progress_aware: false,
        recheck: false,
        ..EngineConfig::default()
    };
    let mut r = rig(cfg, two_jobs, None);
    r.event("/batch", ev(1, 0, 0));
    assert_eq!(r.host().kills().len(), 1);
}

#[test]
fn recheck_averts_when_pressure_resolved_meanwhile() {
    struct Resolving;
    impl Handler for Resolving {
        fn name(&self) -> &'static str {
            "resolving"
        }
        fn decide(&mut self, view: &mut View<'_>, plan: &mut Plan) {
            let cg = view.scope().unwrap();
            let _ = plan.push(
                Action::KillProcess {
                    cgroup: cg,
                    pid: 100,
                },
                Duration::ZERO,
            );
        }
    }
    let mut host = FakeHost::new();
    two_jobs(&mut host);
    host.cg("/batch").max = Some(Limit::Bytes(400 << 20));
    let mut e = Engine::new(
        EngineConfig::default(),
        host,
        Box::new(Resolving),
        Path::new("/"),
    )
    .unwrap();
    let batch = e.add_cgroup(Path::new("/batch")).unwrap();
    // The limit was raised by someone else after the event: usage is now far below.
    e.host_mut().cg("/batch").max = Some(Limit::Bytes(4 << 30));
    let at = e.host().now();
    e.on_event(
        Trigger::MemoryEvents {
            cgroup: batch,
            delta: ev(0, 1, 1),
        },
        at,
    );
    assert!(
        e.host().kills().is_empty(),
        "resolved before acting: nothing killed"
    );
    let ep = e.take_finished().unwrap();
    assert_eq!(ep.outcome, Some(Outcome::AvertedOnRecheck));
    assert_eq!(e.stats().averted, 1);
}

#[test]
fn never_kills_twice_for_one_episode() {
    let mut r = rig(EngineConfig::default(), two_jobs, None);
    r.event("/batch", ev(0, 1, 1));
    for _ in 0..5 {
        r.event("/batch", ev(0, 1, 1));
        r.event("/svc", ev(0, 1, 1));
    }
    assert_eq!(r.host().kills().len(), 1);
    assert_eq!(r.engine.stats().suppressed, 10);
}

#[test]
fn stuck_victim_escalates_to_next_candidate() {
    let mut r = rig(
        EngineConfig::default(),
        |h| {
            two_jobs(h);
            h.stuck.push(100);
        },
        None,
    );
    r.event("/batch", ev(0, 1, 1));
    let eps = r.run(Duration::from_secs(30));
    let kills = r.host().kills();
    assert_eq!(
        kills.iter().map(|k| k.1).collect::<Vec<_>>(),
        vec![100, 101]
    );
    let e = &eps[0];
    assert_eq!(e.escalations, 1);
    assert!(e.victims[0].unwrap().escalated);
    assert!(!e.victims[1].unwrap().escalated);
    assert_eq!(e.outcome, Some(Outcome::Acted));
}

#[test]
fn protection_rules_refuse_forbidden_targets() {
    let setup = |h: &mut FakeHost| {
        two_jobs(h);
        h.cg("/svc").xattr.protected = true;
    };
    // Ids are assigned in path order, so a probe rig gives the same ids.
    let probe = rig(EngineConfig::default(), setup, None);
    let cases: Vec<(&str, Action)> = vec![
        (
            "pid 1",
            Action::KillProcess {
                cgroup: probe.id("/batch"),
                pid: 1,
            },
        ),
        (
            "itself",
            Action::KillProcess {
                cgroup: probe.id("/batch"),
                pid: 4242,
            },
        ),
        (
            "own cgroup",
            Action::KillProcess {
                cgroup: probe.id("/system/oomkit"),
                pid: 77,
            },
        ),
        (
            "ancestor of own cgroup",
            Action::KillCgroup {
                cgroup: probe.id("/system"),
            },
        ),
        (
            "root",
            Action::KillTree {
                cgroup: probe.id("/"),
            },
        ),
        (
            "protected",
            Action::KillCgroup {
                cgroup: probe.id("/svc"),
            },
        ),
        (
            "freeze an ancestor of own cgroup",
            Action::Freeze {
                cgroup: probe.id("/system"),
                frozen: true,
            },
        ),
        (
            "throttle an ancestor of own cgroup",
            Action::SetHigh {
                cgroup: probe.id("/system"),
                limit: Limit::Bytes(1 << 20),
            },
        ),
        (
            "unlimited max",
            Action::RaiseMax {
                cgroup: probe.id("/batch"),
                limit: u64::MAX,
                duration: Duration::from_secs(1),
            },
        ),
    ];
    for (name, action) in cases {
        let mut r = rig(EngineConfig::default(), setup, Some(action));
        assert_eq!(r.id("/batch"), probe.id("/batch"));
        r.event("/batch", ev(0, 1, 1));
        let ep = r.engine.take_finished();
        assert!(
            r.host().log.is_empty(),
            "{name}: nothing may be done: {:?}",
            r.host().log
        );
        assert_eq!(ep.and_then(|e| e.outcome), Some(Outcome::Refused), "{name}");
        assert_eq!(r.engine.stats().refused, 1, "{name}");
    }
}

#[test]
fn kernel_threads_and_unkillable_processes_are_refused() {
    let mut r = rig(
        EngineConfig::default(),
        |h| {
            h.cg("/batch").procs = vec![
                ProcSample {
                    kernel_thread: true,
                    ..proc(300, 900)
                },
                ProcSample {
                    oom_score_adj: -1000,
                    ..proc(301, 800)
                },
                proc(302, 10),
            ];
        },
        None,
    );
    r.event("/batch", ev(0, 1, 1));
    let _ = r.run(Duration::from_secs(10));
    let kills: Vec<i32> = r.host().kills().iter().map(|k| k.1).collect();
    assert_eq!(
        kills,
        vec![302],
        "refused targets are excluded and the handler asked again"
    );
}

#[test]
fn dry_run_kills_nothing_and_records_the_plan() {
    let cfg = EngineConfig {
        dry_run: true,
        ..EngineConfig::default()
    };
    let mut r = rig(cfg, two_jobs, None);
    r.event("/batch", ev(0, 1, 1));
    assert!(r.host().log.is_empty(), "dry run: no effect at all");
    let ep = r.engine.take_finished().unwrap();
    assert_eq!(ep.outcome, Some(Outcome::DryRun));
    assert!(ep.plan.kills());
    assert_eq!(ep.plan.reason(), "largest process");
}

#[test]
fn kill_tree_honours_oom_group_ancestors() {
    let setup = |h: &mut FakeHost| {
        h.cg("/pod").oom_group = true;
        h.cg("/pod/ctr").oom_group = true;
        h.cg("/pod/ctr").procs = vec![proc(500, 100)];
        h.cg("/pod/side").procs = vec![proc(501, 10)];
    };
    let ctr = rig(EngineConfig::default(), setup, None).id("/pod/ctr");
    let mut r = rig(
        EngineConfig::default(),
        setup,
        Some(Action::KillTree { cgroup: ctr }),
    );
    r.event("/pod/ctr", ev(0, 1, 1));
    let kills = r.host().kills();
    assert_eq!(kills.len(), 1);
    assert_eq!(
        kills[0].2,
        PathBuf::from("/pod"),
        "the whole oom.group tree"
    );
}

#[test]
fn raised_limit_is_restored_when_the_episode_ends() {
    let (mut e, batch) = batch_with_a_limit(Profile {
        raise: true,
        capture_wait: Duration::from_secs(2),
        kill: true,
    });
    raise_and_tick(&mut e, batch);
    let log: Vec<(&str, i32)> = e.host().log.iter().map(|l| (l.0, l.1)).collect();
    assert_eq!(
        log,
        vec![
            ("set_max", 600),
            ("signal", 100),
            ("kill_process", 100),
            ("set_max", 360)
        ]
    );
    assert_eq!(e.take_finished().unwrap().outcome, Some(Outcome::Acted));
}

#[test]
fn oom_kill_deltas_are_counted_not_acted_on() {
    let mut r = rig(EngineConfig::default(), two_jobs, None);
    let root = r.id("/");
    let at = r.engine.host().now();
    let d = MemoryEvents {
        oom_kill: Some(2),
        ..ev(0, 0, 0)
    };
    r.engine.on_event(
        Trigger::MemoryEvents {
            cgroup: root,
            delta: d,
        },
        at,
    );
    assert_eq!(r.engine.stats().kernel_oom_kills, 2);
    assert!(!r.engine.in_episode());
    assert!(r.host().kills().is_empty());
}

#[test]
fn config_validation_names_the_field() {
    let cfg = EngineConfig {
        full_stall_threshold: 2.0,
        ..EngineConfig::default()
    };
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("full_stall_threshold"), "{err}");
}

/// Throttles on quiet ticks, kills on the third, and releases on shutdown.
struct Ticker {
    ticks: u32,
    target: Option<CgroupId>,
}

impl Handler for Ticker {
    fn name(&self) -> &'static str {
        "ticker"
    }
    fn decide(&mut self, _view: &mut View<'_>, _plan: &mut Plan) {}
    fn wants_ticks(&self) -> bool {
        true
    }
    fn on_quiet_tick(&mut self, view: &mut View<'_>, plan: &mut Plan) {
        self.ticks += 1;
        let Some(cg) = self.target else { return };
        let _ = view;
        if self.ticks < 3 {
            let _ = plan.push(
                Action::SetHigh {
                    cgroup: cg,
                    limit: Limit::Bytes(100 << 20),
                },
                Duration::ZERO,
            );
        } else if self.ticks == 3 {
            let _ = plan.push(Action::KillCgroup { cgroup: cg }, Duration::ZERO);
        }
    }
    fn on_shutdown(&mut self, _view: &mut View<'_>, plan: &mut Plan) {
        // Asked until it plans nothing: release once.
        if let Some(cg) = self.target.take() {
            let _ = plan.push(
                Action::SetHigh {
                    cgroup: cg,
                    limit: Limit::Max,
                },
                Duration::ZERO,
            );
            let _ = plan.push(Action::KillCgroup { cgroup: cg }, Duration::ZERO);
        }
    }
}

/// An engine over [`two_jobs`] whose [`Ticker`] works on the cgroup at `path`.
fn ticking_on(path: &str) -> Engine<FakeHost> {
    let mut host = FakeHost::new();
    two_jobs(&mut host);
    let ticker = |target| Box::new(Ticker { ticks: 0, target });
    let mut e = Engine::new(EngineConfig::default(), host, ticker(None), Path::new("/")).unwrap();
    let id = e.add_cgroup(Path::new(path)).unwrap();
    e.replace_handler(ticker(Some(id)), EngineConfig::default());
    e
}

#[test]
fn quiet_tick_kills_run_as_episodes_and_shutdown_releases() {
    let mut e = ticking_on("/batch");
    let mut episodes = Vec::new();
    for _ in 0..6 {
        let wake = e.next_wake().expect("a handler that wants ticks gets them");
        let now = e.host().now();
        e.host()
            .advance(wake.saturating_duration_since(now) + Duration::from_millis(1));
        let at = e.host().now();
        e.on_tick(at);
        episodes.extend(e.take_finished());
    }
    let log: Vec<&str> = e.host().log.iter().map(|l| l.0).collect();
    assert_eq!(log, vec!["set_high", "set_high", "kill_cgroup"], "{log:?}");
    assert_eq!(episodes.len(), 1);
    assert_eq!(episodes[0].outcome, Some(Outcome::Acted));
    assert_eq!(episodes[0].trigger, Trigger::Tick);
    e.host_mut().log.clear();
    e.shutdown();
    let log: Vec<&str> = e.host().log.iter().map(|l| l.0).collect();
    assert_eq!(log, vec!["set_high"], "shutdown releases but never kills");
}

#[test]
fn quiet_tick_steps_obey_protection_rules() {
    let mut e = ticking_on("/system");
    let wake = e.next_wake().unwrap();
    let now = e.host().now();
    e.host()
        .advance(wake.saturating_duration_since(now) + Duration::from_millis(1));
    let at = e.host().now();
    e.on_tick(at);
    assert!(
        e.host().log.is_empty(),
        "throttling oomkit's own ancestor is refused"
    );
    assert_eq!(e.stats().refused, 1);
}

// ---------------------------------------------------------------------------
// The machine-wide early warning (issue 9).

fn machine(headroom_mib: u64, fill_mib_s: i64, anon_mib_s: i64) -> oomkit::events::MachineSample {
    oomkit::events::MachineSample {
        total: 1 << 30,
        headroom: headroom_mib << 20,
        low: 100 << 20,
        critical: 50 << 20,
        fill_rate: fill_mib_s << 20,
        anon_rate: anon_mib_s << 20,
        ..Default::default()
    }
}

fn machine_event(r: &mut Rig, signals: oomkit::events::Signals, s: oomkit::events::MachineSample) {
    r.engine.on_machine(signals, s);
    let at = r.engine.host().now();
    r.engine
        .on_event(Trigger::Machine { signals, sample: s }, at);
}

#[test]
fn machine_low_with_anon_growing_kills_the_lowest_tier_at_the_root() {
    use oomkit::events::Signals;
    let mut r = rig(EngineConfig::default(), two_jobs, None);
    // LOW: anon grows as fast as the headroom shrinks: no progress. The
    // source held LOW for its minimum duration already, and the sample that
    // fired it shows the churn: acted on at once, not one sample later.
    machine_event(&mut r, Signals::LOW, machine(90, 20, 20));
    assert_eq!(
        r.host().kills().len(),
        1,
        "LOW with anon eating the headroom is urgent"
    );
    let eps = r.run(Duration::from_secs(5));
    let kills = r.kills();
    assert_eq!(kills.len(), 1, "{kills:?}");
    assert_eq!(kills[0].0, 200, "the largest process in the managed root");
    assert_eq!(eps[0].outcome, Some(Outcome::Acted));
    assert!(matches!(eps[0].trigger, Trigger::Machine { .. }));
}

#[test]
fn machine_low_without_churn_is_assessed_first() {
    use oomkit::events::Signals;
    let mut r = rig(EngineConfig::default(), two_jobs, None);
    // LOW while the headroom shrinks through page cache, anon stable.
    let mut s = machine(90, 10, 0);
    s.steal_rate = 40 << 20;
    machine_event(&mut r, Signals::LOW, s);
    assert!(r.host().kills().is_empty(), "not urgent without churn");
    assert!(r.engine.in_episode(), "assessed");
}

#[test]
fn machine_critical_is_urgent() {
    use oomkit::events::Signals;
    let mut r = rig(EngineConfig::default(), two_jobs, None);
    machine_event(
        &mut r,
        Signals::LOW | Signals::CRITICAL,
        machine(40, 20, 20),
    );
    assert_eq!(r.host().kills().len(), 1, "CRITICAL acts at once");
}

#[test]
fn machine_reclaim_of_cold_cache_is_progress_and_clearing_resolves() {
    use oomkit::events::Signals;
    let mut r = rig(EngineConfig::default(), two_jobs, None);
    // Headroom growing (cold cache reclaimed), anon stable, few refaults.
    let mut s = machine(95, -10, 0);
    s.steal_rate = 40 << 20;
    s.refault_rate = 1 << 20;
    machine_event(&mut r, Signals::LOW, s);
    let eps = r.advance(Duration::from_millis(500), Duration::from_millis(50));
    assert!(eps.is_empty() && r.host().kills().is_empty());
    // The monitor's hysteresis clears the signal: the episode resolves.
    r.engine.on_machine(Signals::NONE, machine(200, -10, 0));
    let eps = r.run(Duration::from_secs(2));
    assert!(r.host().kills().is_empty());
    assert_eq!(eps.last().and_then(|e| e.outcome), Some(Outcome::Resolved));
}

#[test]
fn machine_thrashing_is_no_progress_even_with_reclaim() {
    use oomkit::events::Signals;
    let mut r = rig(EngineConfig::default(), two_jobs, None);
    // Reclaim runs and the headroom even grows a little, but refaults
    // match the reclaimed rate: the working set is evicted and read back.
    let mut s = machine(150, -1, 0);
    s.steal_rate = 100 << 20;
    s.refault_rate = 90 << 20;
    machine_event(&mut r, Signals::THRASHING, s);
    r.run(Duration::from_secs(2));
    assert_eq!(r.host().kills().len(), 1);
}

#[test]
fn cgroup_reclaim_that_churns_is_not_progress() {
    // The "34 episodes all Resolved" case: pgsteal rises (progress by the
    // old rule) while the machine source sees refaults at the steal rate.
    let mut r = batch_pressured();
    let mut s = machine(150, 0, 0);
    s.steal_rate = 100 << 20;
    s.refault_rate = 95 << 20;
    r.engine.on_machine(oomkit::events::Signals::NONE, s);
    r.event("/batch", ev(1, 0, 0));
    r.host().cg("/batch").pgsteal += 1000;
    r.run(Duration::from_secs(5));
    assert_eq!(r.host().kills().len(), 1, "churn is not progress");
}

#[test]
fn a_kill_that_frees_nothing_is_refused_and_the_episode_is_nothing_to_do() {
    use oomkit::events::Signals;
    let mut r = rig(
        EngineConfig::default(),
        |h| {
            // A page-cache reader: its cgroup is charged, its process holds ~nothing.
            h.cg("/reader").procs = vec![proc(300, 0)];
            h.cg("/system/oomkit").procs = vec![proc(4242, 5)];
        },
        None,
    );
    machine_event(&mut r, Signals::CRITICAL, machine(40, 20, 0));
    let eps = r.run(Duration::from_secs(2));
    assert!(r.host().kills().is_empty(), "{:?}", r.kills());
    let e = eps.last().unwrap();
    assert_eq!(e.outcome, Some(Outcome::NoAction));
    assert!(
        e.refusals
            .iter()
            .flatten()
            .any(|f| f.reason.contains("free (nearly) nothing"))
    );
}

#[test]
fn machine_stall_alone_with_headroom_waits_for_a_sustained_stall() {
    use oomkit::events::Signals;
    let mut r = rig(EngineConfig::default(), two_jobs, None);
    // A burst: anon grows fast and PSI stalls, but the headroom is ample.
    machine_event(&mut r, Signals::STALLED, machine(200, 300, 300));
    let eps = r.advance(Duration::from_millis(600), Duration::from_millis(50));
    assert!(r.host().kills().is_empty(), "{eps:?}");
    r.engine.on_machine(Signals::NONE, machine(250, -300, -300));
    let eps = r.run(Duration::from_secs(2));
    assert!(r.host().kills().is_empty());
    assert_eq!(eps.last().and_then(|e| e.outcome), Some(Outcome::Resolved));
}

#[test]
fn a_cgroup_warning_during_a_machine_watch_takes_the_episode_over() {
    use oomkit::events::Signals;
    let mut r = batch_pressured();
    // A machine-wide stall with headroom to spare: watched, not acted on.
    let mut s = machine(230, 0, 0);
    s.steal_rate = 140 << 20;
    machine_event(&mut r, Signals::STALLED, s);
    let eps = r.advance(Duration::from_millis(300), Duration::from_millis(50));
    assert!(eps.is_empty() && r.host().kills().is_empty(), "{eps:?}");
    // Meanwhile a cgroup's own limit warns: its emergency does not wait
    // for the machine episode to time out.
    r.event("/batch", ev(1, 0, 0));
    let eps = r.run(Duration::from_secs(5));
    assert_eq!(r.host().kills().len(), 1, "{eps:?}");
    let e = eps.last().unwrap();
    assert!(
        matches!(e.trigger, Trigger::MemoryEvents { .. }),
        "{:?}",
        e.trigger
    );
}

/// A machine episode driven through `ticks` ticks of 100 ms, the root's full stall at half of
/// wall time (far above the threshold) and the machine source reporting `signals` with `s`.
fn stall_for(
    r: &mut Rig,
    ticks: u32,
    signals: oomkit::events::Signals,
    s: oomkit::events::MachineSample,
) {
    for _ in 0..ticks {
        let h = r.host();
        h.cg("/").full_us += 50_000;
        h.advance(Duration::from_millis(100));
        let at = h.now();
        r.engine.on_machine(signals, s);
        r.engine.on_tick(at);
    }
}

#[test]
fn machine_sustained_stall_while_cold_cache_is_reclaimed_with_headroom_kills_nothing() {
    use oomkit::events::Signals;
    let cfg = EngineConfig {
        stall_sustain: Duration::from_millis(500),
        recheck: false,
        ..EngineConfig::default()
    };
    // A backup streaming through the cache on a busy host: PSI stalls for
    // seconds, the kernel reclaims cold cache, anon is stable, half of the
    // machine is still available (measured on 7.2: 231 MiB of 460).
    let mut r = rig(cfg.clone(), two_jobs, None);
    let mut s = machine(230, 0, 0);
    s.steal_rate = 140 << 20;
    machine_event(&mut r, Signals::STALLED, s);
    stall_for(&mut r, 15, Signals::STALLED, s);
    assert!(r.host().kills().is_empty(), "{:?}", r.kills());
    // The same sustained stall with the headroom under `low`: acted on.
    let mut r = rig(cfg, two_jobs, None);
    let mut low = machine(90, 0, 0);
    low.steal_rate = 140 << 20;
    machine_event(&mut r, Signals::STALLED, low);
    stall_for(&mut r, 15, Signals::STALLED, low);
    assert_eq!(
        r.host().kills().len(),
        1,
        "a sustained stall at low headroom"
    );
}

/// What a [`Recorder`] was told at each fire: (pid, signal, escalation).
type Fired = std::rc::Rc<std::cell::RefCell<Vec<(Option<i32>, Option<i32>, u32)>>>;

/// A pre-kill hook that records what it was told and finishes after
/// `polls` polls (never, with `None`).
struct Recorder {
    seen: Fired,
    wait: Option<Duration>,
    polls: Option<u32>,
}

impl PrekillHook for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn fire(&mut self, target: &PrekillTarget<'_>) -> Option<Duration> {
        self.seen
            .borrow_mut()
            .push((target.pid, target.signal, target.escalation));
        self.wait
    }
    fn poll(&mut self) -> bool {
        match &mut self.polls {
            Some(0) => true,
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }
}

fn recorder(wait: Option<Duration>, polls: Option<u32>) -> (Box<Recorder>, Fired) {
    let seen = std::rc::Rc::default();
    let hook = Recorder {
        seen: std::rc::Rc::clone(&seen),
        wait,
        polls,
    };
    (Box::new(hook), seen)
}

#[test]
fn prekill_hook_delays_the_kill_until_it_is_done() {
    let mut r = rig(EngineConfig::default(), two_jobs, None);
    let (hook, seen) = recorder(Some(Duration::from_secs(2)), Some(3));
    r.engine.add_prekill_hook(hook);
    r.event("/batch", ev(0, 1, 1));
    assert!(
        r.host().kills().is_empty(),
        "no kill before the hook is done"
    );
    assert_eq!(*seen.borrow(), vec![(Some(100), None, 0)]);
    let eps = r.run(Duration::from_secs(10));
    assert_eq!(r.host().kills().len(), 1, "then exactly one kill");
    assert_eq!(eps[0].outcome, Some(Outcome::Acted));
    assert_eq!(seen.borrow().len(), 1, "fired once per plan");
}

#[test]
fn prekill_hook_that_never_finishes_only_delays_the_kill() {
    let mut r = rig(EngineConfig::default(), two_jobs, None);
    let (hook, _) = recorder(Some(Duration::from_millis(500)), None);
    r.engine.add_prekill_hook(hook);
    r.event("/batch", ev(0, 1, 1));
    assert!(r.host().kills().is_empty());
    r.advance(Duration::from_millis(400), Duration::from_millis(20));
    assert!(r.host().kills().is_empty(), "still within the hook's wait");
    r.advance(Duration::from_millis(200), Duration::from_millis(20));
    assert_eq!(r.host().kills().len(), 1, "killed once the wait ran out");
}

#[test]
fn prekill_hooks_fire_before_the_diagnostics_signal_and_not_again() {
    let profile = Profile {
        raise: false,
        capture_wait: Duration::from_secs(2),
        kill: true,
    };
    let mut r = Rig::new(EngineConfig::default(), two_jobs, Box::new(profile));
    let (hook, seen) = recorder(Some(Duration::from_secs(5)), Some(2));
    r.engine.add_prekill_hook(hook);
    r.event("/batch", ev(0, 1, 1));
    assert_eq!(*seen.borrow(), vec![(Some(100), Some(12), 0)]);
    let log: Vec<&str> = r.host().log.iter().map(|l| l.0).collect();
    assert!(log.contains(&"signal"), "{log:?}");
    assert!(r.host().kills().is_empty(), "waiting for the hook");
    r.run(Duration::from_secs(10));
    assert_eq!(r.host().kills().len(), 1);
    assert_eq!(seen.borrow().len(), 1, "not fired again before the kill");
}

/// The victims an episode recorded, as PIDs (0 for cgroups).
fn victim_pids(e: &Episode) -> Vec<i32> {
    e.victims
        .iter()
        .flatten()
        .map(|v| match v.victim {
            Victim::Process { pid, .. } => pid,
            _ => 0,
        })
        .collect()
}

/// Issue 10, defect 2: a victim whose membership check fails (a cgroup
/// name with whitespace did that) is excluded and the next one chosen; the
/// episode is not recorded as acted with nothing killed.
#[test]
fn a_victim_failing_the_membership_check_is_passed_over() {
    let mut r = rig(
        EngineConfig::default(),
        |h| {
            two_jobs(h);
            h.not_member = vec![100];
        },
        None,
    );
    r.event("/batch", ev(0, 1, 1));
    let eps = r.run(Duration::from_secs(10));
    assert_eq!(eps.len(), 1);
    assert_eq!(victim_pids(&eps[0]), vec![101], "{eps:?}");
    assert_eq!(eps[0].outcome, Some(Outcome::Acted));
    assert_eq!(r.engine.stats().kills, 1);
    // Nothing killable at all: not "acted".
    let mut r = rig(
        EngineConfig::default(),
        |h| {
            two_jobs(h);
            h.not_member = vec![100, 101];
        },
        None,
    );
    r.event("/batch", ev(0, 1, 1));
    let eps = r.run(Duration::from_secs(10));
    assert_eq!(eps.len(), 1);
    assert!(victim_pids(&eps[0]).is_empty());
    assert_eq!(eps[0].outcome, Some(Outcome::Failed), "{eps:?}");
    assert_eq!(r.engine.stats().kills, 0);
}

/// Issue 10, defect 7: a kill error other than "gone" (EMFILE, EPERM)
/// excludes that victim instead of retrying it until the episode fails.
#[test]
fn a_kill_error_excludes_the_victim() {
    let mut r = rig(
        EngineConfig::default(),
        |h| {
            two_jobs(h);
            h.kill_errno = vec![(100, rustix::io::Errno::MFILE)];
        },
        None,
    );
    r.event("/batch", ev(0, 1, 1));
    let eps = r.run(Duration::from_secs(10));
    assert_eq!(eps.len(), 1);
    assert_eq!(victim_pids(&eps[0]), vec![101], "{eps:?}");
    assert_eq!(eps[0].outcome, Some(Outcome::Acted));
    let tries = r.kills().iter().filter(|k| k.0 == 100).count();
    assert_eq!(tries, 1, "the failing victim is tried once");
}

/// Issue 10, defect 3: when the watchdog killed during a stall, the loop
/// adopts that kill as the episode's instead of killing a second victim.
#[test]
fn a_watchdog_kill_is_the_episodes_kill() {
    let mut r = rig(EngineConfig::default(), two_jobs, None);
    r.host().external_kills = vec![200];
    r.event("/batch", ev(0, 1, 1));
    let eps = r.run(Duration::from_secs(10));
    assert!(r.host().kills().is_empty(), "{:?}", r.host().kills());
    assert_eq!(eps.len(), 1);
    assert_eq!(victim_pids(&eps[0]), vec![200]);
    assert_eq!(eps[0].outcome, Some(Outcome::Acted));
}

/// Issue 10, defect 17: a raised `memory.max` is restored only if it still
/// holds the value oomkit wrote; a change made meanwhile (an operator, the
/// runtime) is kept.
#[test]
fn a_limit_changed_meanwhile_is_not_overwritten() {
    // A step that waits, so the raise lasts a while.
    let (mut e, batch) = batch_with_a_limit(Profile {
        raise: true,
        capture_wait: Duration::from_millis(500),
        kill: false,
    });
    // A dump that takes its whole deadline (a pre-kill hook that never
    // finishes), so the raise lasts while the operator changes the limit.
    let (hook, _seen) = recorder(Some(Duration::from_millis(500)), None);
    e.add_prekill_hook(hook);
    fire(&mut e, batch);
    assert_eq!(e.host_mut().cg("/batch").max, Some(Limit::Bytes(600 << 20)));
    // The operator sets its own limit while the raise lasts.
    e.host_mut().cg("/batch").max = Some(Limit::Bytes(1 << 30));
    tick_for_a_second(&mut e);
    assert_eq!(
        e.host_mut().cg("/batch").max,
        Some(Limit::Bytes(1 << 30)),
        "the operator's limit was overwritten"
    );
}

/// Issue 10, defect 12: a group kill is refused while the target has
/// descendants the loop does not track (a failed watch, or beyond
/// `depth`): they could be protected.
#[test]
fn group_kills_are_refused_over_untracked_descendants() {
    let setup = |h: &mut FakeHost| {
        h.cg("/pod").procs = vec![proc(300, 400)];
        h.cg("/pod/ctr").procs = vec![proc(301, 100)];
    };
    let mut r = rig(EngineConfig::default(), setup, None);
    let pod = r.id("/pod");
    // A child the loop never saw (its watch failed).
    r.host().cg("/pod/sshd").procs = vec![proc(302, 5)];
    r.engine.replace_handler(
        Box::new(Largest {
            force: Some(Action::KillCgroup { cgroup: pod }),
        }),
        EngineConfig::default(),
    );
    r.event("/pod", ev(0, 1, 1));
    let eps = r.run(Duration::from_secs(10));
    assert!(r.kills().is_empty(), "{:?}", r.kills());
    assert_eq!(eps[0].outcome, Some(Outcome::Refused));
    // Tracked, the same kill goes ahead.
    let mut r = rig(EngineConfig::default(), setup, None);
    let pod = r.id("/pod");
    r.engine.replace_handler(
        Box::new(Largest {
            force: Some(Action::KillCgroup { cgroup: pod }),
        }),
        EngineConfig::default(),
    );
    r.event("/pod", ev(0, 1, 1));
    r.run(Duration::from_secs(10));
    assert_eq!(r.kills().len(), 1);
}

#[test]
fn warm_up_decides_over_the_whole_tree_and_acts_on_nothing() {
    let mut r = rig(EngineConfig::default(), two_jobs, None);
    let w = r.engine.warm_up().expect("idle engine with a root");
    assert_eq!(w.cgroups, r.engine.tree().len(), "every managed cgroup");
    assert_eq!(w.processes, 4, "the handler read every process: {w:?}");
    assert_eq!(w.planned, 1, "the handler planned its kill: {w:?}");
    assert_eq!(w.kept, 1, "and the filter would have kept it: {w:?}");
    assert!(r.host().kills().is_empty(), "nothing killed");
    assert!(!r.engine.in_episode());
    assert!(!r.engine.has_finished(), "no episode recorded");
    assert_eq!(r.engine.stats().episodes, 0);
    assert_eq!(r.engine.next_wake(), None, "no timer armed");
    // The next real event decides as if no warm-up had happened.
    r.event("/batch", ev(0, 1, 1));
    let kills = r.host().kills();
    assert_eq!(kills.len(), 1, "{kills:?}");
    assert_eq!(kills[0].1, 100);
    let eps = r.run(Duration::from_secs(10));
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].id, 1, "the first episode");
    assert!(eps[0].refusals.iter().all(Option::is_none));
}

#[test]
fn warm_up_waits_while_an_episode_runs() {
    let mut r = rig(EngineConfig::default(), two_jobs, None);
    r.event("/batch", ev(0, 1, 1));
    assert!(r.engine.in_episode());
    assert_eq!(r.engine.warm_up(), None);
    assert_eq!(r.host().kills().len(), 1, "the episode's own kill only");
}

#[test]
fn tables_grow_past_their_initial_room() {
    let n = 3 * INITIAL_CGROUPS;
    let cfg = EngineConfig {
        max_cgroups: 10 * n,
        ..EngineConfig::default()
    };
    let mut r = rig(
        cfg,
        |h| {
            for i in 0..n {
                h.cg(&format!("/job{i}")).procs = vec![proc(1000 + i as i32, 1 + i as u64)];
            }
        },
        None,
    );
    let w = r.engine.warm_up().expect("idle");
    assert_eq!(w.cgroups, n + 1, "every cgroup is in the snapshot: {w:?}");
    // The largest process is in the last cgroup added.
    r.event("/", ev(0, 1, 1));
    let kills = r.host().kills();
    assert_eq!(kills.len(), 1, "{kills:?}");
    assert_eq!(kills[0].1, 1000 + n as i32 - 1, "{kills:?}");
}

/// Kills the largest cgroup holding processes that is not excluded.
struct LargestGroup;

impl Handler for LargestGroup {
    fn name(&self) -> &'static str {
        "largest-group"
    }
    fn decide(&mut self, view: &mut View<'_>, plan: &mut Plan) {
        let ids: Vec<CgroupId> = view.cgroups().to_vec();
        let mut best: Option<(u64, CgroupId)> = None;
        for id in ids {
            let busy = view.processes(id).is_ok_and(|p| !p.is_empty());
            if !busy
                || view.excluded().has_cgroup(id)
                || view.class(id).is_some_and(|c| c.protected)
            {
                continue;
            }
            let used = view.stats(id).and_then(|s| s.current).unwrap_or(0);
            if best.is_none_or(|(u, _)| used > u) {
                best = Some((used, id));
            }
        }
        let best = best.map(|(_, id)| id);
        if let Some(cgroup) = best {
            let _ = plan.push(Action::KillCgroup { cgroup }, Duration::ZERO);
            plan.set_reason("largest group");
        }
    }
}

/// A process with `oom_score_adj -1000`.
fn unkillable(pid: i32, rss_mib: u64) -> ProcSample {
    let mut p = proc(pid, rss_mib);
    p.oom_score_adj = -1000;
    p
}

/// Issue 10, defect 8: a group kill spares processes with
/// `oom_score_adj -1000` as the kernel's own group kill does (the host
/// kills member by member, skipping them): the episode ends once the rest
/// have exited, without escalating, and the incident says how many were
/// spared. A group holding only such processes is passed over for the
/// next candidate.
#[test]
fn group_kills_spare_unkillable_processes_and_say_so() {
    let mut r = Rig::new(
        EngineConfig::default(),
        |h| {
            h.cg("/batch").procs = vec![proc(100, 300), unkillable(101, 50)];
            h.cg("/svc").procs = vec![proc(200, 100)];
        },
        Box::new(LargestGroup),
    );
    r.event("/", ev(0, 1, 1));
    let eps = r.run(Duration::from_secs(10));
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(eps[0].outcome, Some(Outcome::Acted), "{eps:?}");
    assert_eq!(eps[0].escalations, 0, "{eps:?}");
    let batch = r.id("/batch");
    let v: Vec<Victim> = eps[0].victims.iter().flatten().map(|v| v.victim).collect();
    assert_eq!(
        v,
        vec![Victim::Cgroup {
            cgroup: batch,
            spared: 1
        }]
    );
    let pids: Vec<i32> = r.host().cg("/batch").procs.iter().map(|p| p.pid).collect();
    assert_eq!(pids, vec![101], "the -1000 process survives, the rest died");
    let inc = oomkit::engine::incident::Incident::from_episode(
        &eps[0],
        r.engine.tree(),
        "largest-group",
        false,
    );
    assert_eq!(inc.victims.len(), 1);
    assert_eq!(inc.victims[0].kind, "cgroup");
    assert_eq!(inc.victims[0].spared, 1, "{inc:?}");

    // Only -1000 processes in the largest group: it is passed over.
    let mut r = Rig::new(
        EngineConfig::default(),
        |h| {
            h.cg("/batch").procs = vec![unkillable(100, 300)];
            h.cg("/svc").procs = vec![proc(200, 100)];
        },
        Box::new(LargestGroup),
    );
    r.event("/", ev(0, 1, 1));
    let eps = r.run(Duration::from_secs(10));
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(eps[0].outcome, Some(Outcome::Acted), "{eps:?}");
    assert_eq!(eps[0].passed_over, 1, "{eps:?}");
    let svc = r.id("/svc");
    let v: Vec<Victim> = eps[0].victims.iter().flatten().map(|v| v.victim).collect();
    assert_eq!(
        v,
        vec![Victim::Cgroup {
            cgroup: svc,
            spared: 0
        }]
    );
    assert_eq!(r.host().cg("/batch").procs.len(), 1, "never killed");
}

/// Raises `memory.max` of the scope to 600 MiB for 10 s, then waits on a
/// diagnostics step (a heap dump).
struct RaiseForDump;

impl Handler for RaiseForDump {
    fn name(&self) -> &'static str {
        "raise-for-dump"
    }
    fn decide(&mut self, view: &mut View<'_>, plan: &mut Plan) {
        let Some(cg) = view.scope() else { return };
        let _ = plan.push(
            Action::RaiseMax {
                cgroup: cg,
                limit: 600 << 20,
                duration: Duration::from_secs(10),
            },
            Duration::ZERO,
        );
        let _ = plan.push(
            Action::CaptureDiagnostics {
                cgroup: cg,
                pid: 100,
                signal: 12,
            },
            Duration::from_millis(500),
        );
    }
}

/// Issue 10, defect 17 (second point): a raise is recorded on the cgroup
/// before it is written, the record goes when the limit is restored, and a
/// record a dead run left behind makes the next run restore the limit when
/// it attaches the cgroup (only if the file still holds the raised value).
#[test]
fn a_limit_raised_before_a_restart_is_restored_at_start() {
    let mut host = FakeHost::new();
    two_jobs(&mut host);
    host.cg("/batch").max = Some(Limit::Bytes(360 << 20));
    let cfg = EngineConfig {
        recheck: false,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg.clone(), host, Box::new(RaiseForDump), Path::new("/")).unwrap();
    // A dump that takes its whole deadline, so the raise lasts a while.
    let (hook, _seen) = recorder(Some(Duration::from_millis(500)), None);
    e.add_prekill_hook(hook);
    let batch = e.add_cgroup(Path::new("/batch")).unwrap();
    let at = e.host().now();
    e.on_event(
        Trigger::MemoryEvents {
            cgroup: batch,
            delta: ev(0, 1, 1),
        },
        at,
    );
    assert_eq!(e.host_mut().cg("/batch").max, Some(Limit::Bytes(600 << 20)));
    assert_eq!(
        e.host().raised_marks.get(Path::new("/batch")),
        Some(&(Limit::Bytes(360 << 20), Limit::Bytes(600 << 20))),
        "the raise is recorded on the cgroup"
    );
    for _ in 0..800 {
        e.host().advance(Duration::from_millis(20));
        let at = e.host().now();
        e.on_tick(at);
    }
    assert_eq!(e.host_mut().cg("/batch").max, Some(Limit::Bytes(360 << 20)));
    assert!(e.host().raised_marks.is_empty(), "restored: record removed");

    // What a run that died while two limits were raised leaves behind; an
    // operator has since changed the second one.
    let mut host = FakeHost::new();
    two_jobs(&mut host);
    host.cg("/batch").max = Some(Limit::Bytes(600 << 20));
    host.cg("/svc").max = Some(Limit::Bytes(1 << 30));
    host.raised_marks.insert(
        PathBuf::from("/batch"),
        (Limit::Bytes(360 << 20), Limit::Bytes(600 << 20)),
    );
    host.raised_marks
        .insert(PathBuf::from("/svc"), (Limit::Max, Limit::Bytes(700 << 20)));
    let mut e = Engine::new(cfg, host, Box::new(RaiseForDump), Path::new("/")).unwrap();
    e.add_cgroup(Path::new("/batch")).unwrap();
    e.add_cgroup(Path::new("/svc")).unwrap();
    assert_eq!(
        e.host_mut().cg("/batch").max,
        Some(Limit::Bytes(360 << 20)),
        "the raise of the dead run is restored"
    );
    assert_eq!(
        e.host_mut().cg("/svc").max,
        Some(Limit::Bytes(1 << 30)),
        "a limit changed since stands"
    );
    assert!(
        e.host().raised_marks.is_empty(),
        "{:?}",
        e.host().raised_marks
    );
}
