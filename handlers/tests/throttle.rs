//! Throttle over a real `Engine` and the SDK's `FakeHost`: squeeze, release, kill.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Rig, eager, ev};
use oomkit::cgroup::Limit;
use oomkit::engine::{EngineConfig, Outcome};
use oomkit_handlers::classify::{Classifier, Rule};
use oomkit_handlers::priority::Granularity;
use oomkit_handlers::throttle::{Throttle, ThrottleConfig};
use oomkit_testing::{FakeHost, proc};

const MIB: u64 = 1 << 20;

fn cfg() -> ThrottleConfig {
    ThrottleConfig {
        step_fraction: 0.8,
        floor_bytes: 100 * MIB,
        step_interval: Duration::from_secs(1),
        kill_after: Duration::from_secs(10),
        release_below: 0.8,
        kill: Granularity::Cgroup,
        ..ThrottleConfig::default()
    }
}

fn throttle(cfg: ThrottleConfig) -> Box<Throttle> {
    let rules = vec![
        Rule {
            glob: "/batch/**".into(),
            priority: Some(-10),
            protected: false,
        },
        Rule {
            glob: "/svc".into(),
            priority: Some(10),
            protected: false,
        },
    ];
    Box::new(Throttle::new(cfg, Classifier::new(rules, None, 0).unwrap()))
}

fn node(h: &mut FakeHost) {
    h.cg("/batch/leaky").procs = vec![proc(100, 1000)];
    h.cg("/svc").procs = vec![proc(200, 200)];
}

fn engine_cfg() -> EngineConfig {
    EngineConfig {
        quiet_tick: Duration::from_millis(500),
        ..eager()
    }
}

fn high(r: &mut Rig, path: &str) -> Option<Limit> {
    r.host().cg(path).high
}

/// A `high` event on the root, then the episode runs out.
fn pressure(r: &mut Rig) -> Vec<oomkit::engine::Episode> {
    r.event("/", ev(1, 0, 0));
    r.run(Duration::from_millis(300))
}

#[test]
fn steps_down_then_releases_step_by_step() {
    let mut r = Rig::new(engine_cfg(), node, throttle(cfg()));
    let eps = pressure(&mut r);
    assert_eq!(eps[0].outcome, Some(Outcome::Acted));
    assert_eq!(high(&mut r, "/batch/leaky"), Some(Limit::Bytes(800 * MIB)));
    assert_eq!(high(&mut r, "/svc"), None, "the higher tier is left alone");
    assert!(r.kills().is_empty());

    // Still pressing: one more step after the step interval, not before.
    pressure(&mut r);
    assert_eq!(high(&mut r, "/batch/leaky"), Some(Limit::Bytes(800 * MIB)));
    r.advance(Duration::from_millis(800), Duration::from_millis(100));
    pressure(&mut r);
    assert_eq!(high(&mut r, "/batch/leaky"), Some(Limit::Bytes(640 * MIB)));

    // Pressure falls: usage well under the throttle. Released one step per
    // step interval: 640 → 800 → back to the original (max).
    r.host().cg("/batch/leaky").procs[0].rss = 300 * MIB;
    r.advance(Duration::from_millis(1100), Duration::from_millis(100));
    assert_eq!(high(&mut r, "/batch/leaky"), Some(Limit::Bytes(800 * MIB)));
    r.advance(Duration::from_millis(1100), Duration::from_millis(100));
    assert_eq!(high(&mut r, "/batch/leaky"), Some(Limit::Max));
    r.advance(Duration::from_secs(5), Duration::from_millis(100));
    assert!(r.kills().is_empty());
    assert_eq!(
        r.engine.next_wake(),
        None,
        "nothing throttled: no more ticks"
    );
}

#[test]
fn never_below_the_floor() {
    let mut c = cfg();
    c.kill_after = Duration::from_secs(3600);
    let mut r = Rig::new(engine_cfg(), node, throttle(c));
    for _ in 0..40 {
        pressure(&mut r);
        r.advance(Duration::from_millis(400), Duration::from_millis(400));
    }
    assert_eq!(high(&mut r, "/batch/leaky"), Some(Limit::Bytes(100 * MIB)));
    assert!(r.kills().is_empty());
}

#[test]
fn kills_when_throttling_fails_within_the_deadline() {
    let mut r = Rig::new(engine_cfg(), node, throttle(cfg()));
    pressure(&mut r);
    // Keeps pressing: in the fake, usage is what its processes hold.
    for _ in 0..6 {
        r.advance(Duration::from_millis(1200), Duration::from_millis(1200));
        pressure(&mut r);
        assert!(r.kills().is_empty(), "not before the deadline");
    }
    r.advance(Duration::from_secs(3), Duration::from_secs(3));
    let eps = pressure(&mut r);
    assert_eq!(r.kills(), vec![(0, "/batch/leaky".to_string())]);
    assert!(
        eps[0].plan.reason().contains("without containing it"),
        "{}",
        eps[0].plan.reason()
    );
    assert_eq!(
        high(&mut r, "/batch/leaky"),
        Some(Limit::Max),
        "the original limit is restored after the kill"
    );
    assert_eq!(high(&mut r, "/svc"), None);
}

#[test]
fn contained_cgroup_is_not_killed_after_the_deadline() {
    let mut r = Rig::new(engine_cfg(), node, throttle(cfg()));
    pressure(&mut r);
    // It shrinks well under its throttle; pressure at the root continues.
    r.host().cg("/batch/leaky").procs[0].rss = 500 * MIB;
    r.advance(Duration::from_secs(12), Duration::from_secs(12));
    let _ = pressure(&mut r);
    assert!(r.kills().is_empty(), "{:?}", r.kills());
}

#[test]
fn freezes_at_the_floor_and_thaws_when_calm() {
    let mut c = cfg();
    c.floor_bytes = 900 * MIB;
    c.freeze_at_floor = true;
    let mut r = Rig::new(engine_cfg(), node, throttle(c));
    pressure(&mut r);
    assert_eq!(high(&mut r, "/batch/leaky"), Some(Limit::Bytes(900 * MIB)));
    r.advance(Duration::from_millis(1100), Duration::from_millis(1100));
    pressure(&mut r);
    let log: Vec<&str> = r.host().log.iter().map(|l| l.0).collect();
    assert_eq!(log.last(), Some(&"freeze"), "{log:?}");
    // The fake reports no root pressure: thawed on the next quiet tick after the interval.
    r.advance(Duration::from_millis(1500), Duration::from_millis(100));
    let log: Vec<&str> = r.host().log.iter().map(|l| l.0).collect();
    assert!(log.contains(&"thaw"), "{log:?}");
}

#[test]
fn dry_run_throttles_nothing_and_releases_nothing() {
    let mut r = Rig::new(
        EngineConfig {
            dry_run: true,
            ..engine_cfg()
        },
        node,
        throttle(cfg()),
    );
    pressure(&mut r);
    r.advance(Duration::from_secs(5), Duration::from_millis(100));
    assert!(r.host().log.is_empty(), "{:?}", r.host().log);
}

#[test]
fn refused_throttle_is_forgotten() {
    // The lowest tier's leaf is oomkit's own cgroup: the loop refuses to
    // squeeze it, the handler squeezes the next candidate and never
    // "releases" a limit it did not set.
    let mut r = Rig::new(
        engine_cfg(),
        |h| {
            node(h);
            h.cg("/batch/oomkit").procs = vec![proc(300, 2000)];
        },
        throttle(cfg()),
    );
    r.host().own_cgroup = "/batch/oomkit".into();
    pressure(&mut r);
    assert_eq!(high(&mut r, "/batch/oomkit"), None);
    assert_eq!(high(&mut r, "/batch/leaky"), Some(Limit::Bytes(800 * MIB)));
    r.host().cg("/batch/leaky").procs[0].rss = 100 * MIB;
    r.advance(Duration::from_secs(5), Duration::from_millis(100));
    assert_eq!(high(&mut r, "/batch/oomkit"), None);
    assert_eq!(high(&mut r, "/batch/leaky"), Some(Limit::Max));
}

#[test]
fn kills_on_quiet_ticks_when_no_event_asks_again() {
    let mut r = Rig::new(engine_cfg(), node, throttle(cfg()));
    pressure(&mut r);
    assert_eq!(high(&mut r, "/batch/leaky"), Some(Limit::Bytes(800 * MIB)));
    // No further events: a reclaiming cgroup may never trigger `decide`
    // again, so the deadline must be noticed on quiet ticks alone.
    r.advance(Duration::from_secs(9), Duration::from_millis(500));
    assert!(r.kills().is_empty(), "not before the deadline");
    r.advance(Duration::from_secs(3), Duration::from_millis(500));
    assert_eq!(r.kills(), vec![(0, "/batch/leaky".to_string())]);
}

#[test]
fn shutdown_releases_every_throttle() {
    let mut r = Rig::new(engine_cfg(), node, throttle(cfg()));
    pressure(&mut r);
    assert_eq!(high(&mut r, "/batch/leaky"), Some(Limit::Bytes(800 * MIB)));
    r.engine.shutdown();
    assert_eq!(high(&mut r, "/batch/leaky"), Some(Limit::Max));
    assert!(r.kills().is_empty(), "shutdown never kills");
    assert_eq!(r.engine.next_wake(), None, "nothing left throttled");
}
