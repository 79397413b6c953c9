//! The monitor driven with a fake clock and synthetic series.

use super::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn reading(avail: u64) -> MachineReading {
    MachineReading {
        mem_total: GIB,
        mem_available: avail,
        ..Default::default()
    }
}

/// Drives a monitor with a fake clock: each step advances by
/// `next_interval` (as the timer would), reading `f(elapsed)`.
fn run(
    cfg: MachineConfig,
    until: Duration,
    mut f: impl FnMut(Duration) -> MachineReading,
) -> (MachineMonitor, Vec<(Duration, MachineChange)>) {
    let t0 = Instant::now();
    let mut m = MachineMonitor::new(cfg);
    let mut changes = Vec::new();
    let mut t = Duration::ZERO;
    while t <= until {
        if let Some(c) = m.observe(t0 + t, &f(t)) {
            changes.push((t, c));
        }
        t += m.next_interval();
    }
    (m, changes)
}

#[test]
fn lots_of_headroom_means_few_wakeups() {
    let (m, changes) = run(MachineConfig::default(), Duration::from_secs(600), |_| {
        reading(900 * MIB)
    });
    assert!(changes.is_empty());
    // 800 MiB above `low` at 1 GiB/s: one sample every ~0.78 s, so
    // about 770 samples in 10 minutes, far fewer than one per 100 ms.
    let per_s = m.samples() as f64 / 600.0;
    assert!(per_s < 1.5, "{per_s} samples/s");
    let cfg = MachineConfig {
        max_fill_rate: 100 * MIB,
        ..Default::default()
    };
    let (m, _) = run(cfg, Duration::from_secs(600), |_| reading(900 * MIB));
    // 798 MiB above `low` at 100 MiB/s: one sample per ~8 s.
    assert!(m.samples() <= 77, "{} samples", m.samples());
}

#[test]
fn a_held_low_fires_right_after_its_minimum_duration() {
    let mut cfg = MachineConfig::default();
    let low = cfg.low.resolve(GIB);
    let avail = low - 4 * MIB;
    // A fill rate that spaces readings 90 ms apart (the gap down to
    // `critical` at that rate), which does not divide `min_duration`:
    // on that grid alone `LOW` would fire at 540 ms.
    let gap = avail - cfg.critical.resolve(GIB);
    cfg.max_fill_rate = gap * 100 / 9;
    // Under `low` from t = 0 (read at once), staying there.
    let (_, changes) = run(cfg, Duration::from_secs(3), |_| reading(avail));
    let (at, c) = changes.first().copied().expect("LOW fired");
    assert!(c.fired.contains(Signals::LOW), "{c:?}");
    assert!(at >= cfg.min_duration, "fired at {at:?}");
    assert!(
        at <= cfg.min_duration + cfg.min_interval,
        "fired at {at:?}, later than {:?} + one min_interval",
        cfg.min_duration
    );
}

#[test]
fn near_the_edge_samples_every_few_ms() {
    let cfg = MachineConfig::default();
    let mut m = MachineMonitor::new(cfg);
    let t0 = Instant::now();
    // 2 MiB above low (~102 MiB on 1 GiB): at 1 GiB/s, 2 ms -> min_interval.
    m.observe(t0, &reading(cfg.low.resolve(GIB) + 2 * MIB));
    assert_eq!(m.next_interval(), cfg.min_interval);
    // Far away: long sleeps.
    m.observe(t0 + Duration::from_secs(1), &reading(1000 * MIB));
    assert!(m.next_interval() > Duration::from_millis(500));
}

#[test]
fn a_leak_fires_low_then_critical_in_time() {
    // 20 MiB/s leak from 400 MiB available.
    let (_, changes) = run(MachineConfig::default(), Duration::from_secs(30), |t| {
        reading((400 * MIB).saturating_sub((t.as_secs_f64() * 20.0 * MIB as f64) as u64))
    });
    let low_at = changes
        .iter()
        .find(|(_, c)| c.fired.contains(Signals::LOW))
        .map(|(t, _)| *t)
        .unwrap();
    // Crosses low (~102.4 MiB) at ~14.9 s, fires after min_duration.
    let crossing = (400.0 - 102.4) / 20.0;
    let late = low_at.as_secs_f64() - crossing;
    assert!(
        (0.5..0.7).contains(&late),
        "LOW fired {late} s after the crossing"
    );
    let crit_at = changes
        .iter()
        .find(|(_, c)| c.fired.contains(Signals::CRITICAL))
        .map(|(t, _)| *t)
        .unwrap();
    let crossing = (400.0 - 51.2) / 20.0;
    let late = crit_at.as_secs_f64() - crossing;
    assert!((0.0..0.1).contains(&late), "CRITICAL fired {late} s late");
    let (_, c) = changes
        .iter()
        .find(|(_, c)| c.fired.contains(Signals::LOW))
        .unwrap();
    assert!(c.sample.fill_rate > 15 * MIB as i64, "{:?}", c.sample);
}

#[test]
fn a_short_dip_does_not_fire_and_hysteresis_holds() {
    let cfg = MachineConfig::default();
    // 300 ms below low (but above critical), then back.
    let (_, changes) = run(cfg, Duration::from_secs(5), |t| {
        let ms = t.as_millis();
        if (1000..1300).contains(&ms) {
            reading(80 * MIB)
        } else {
            reading(600 * MIB)
        }
    });
    assert!(changes.is_empty(), "{changes:?}");
    // Fires after holding, stays on between low and clear, clears above clear.
    let (_, changes) = run(cfg, Duration::from_secs(10), |t| match t.as_millis() {
        0..1000 => reading(600 * MIB),
        1000..3000 => reading(80 * MIB),
        3000..6000 => reading(120 * MIB), // above low, below clear (~154 MiB)
        _ => reading(600 * MIB),
    });
    let kinds: Vec<_> = changes
        .iter()
        .map(|(t, c)| (t.as_millis() / 100, c.fired, c.cleared))
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert_eq!(kinds[0].1, Signals::LOW);
    // The drop is instant (faster than `max_fill_rate`), so it is seen
    // at the next sample, up to ~0.5 s late, then held 0.5 s.
    assert!((15..=21).contains(&kinds[0].0), "{kinds:?}");
    assert_eq!(kinds[1].2, Signals::LOW);
    assert!((60..=61).contains(&kinds[1].0), "{kinds:?}");
}

#[test]
fn thrashing_is_refaults_close_to_reclaim_and_streaming_is_not() {
    let cfg = MachineConfig::default();
    // Thrash: reclaim 40 MiB/s, refaults 36 MiB/s, headroom moderate.
    let (_, changes) = run(cfg, Duration::from_secs(5), |t| {
        let s = t.as_secs_f64();
        MachineReading {
            steal: (s * 40.0 * MIB as f64) as u64,
            scan: (s * 80.0 * MIB as f64) as u64,
            refaults: (s * 36.0 * MIB as f64) as u64,
            ..reading(250 * MIB)
        }
    });
    let (at, c) = changes.first().unwrap();
    assert_eq!(c.fired, Signals::THRASHING);
    assert!(at.as_secs_f64() < 1.2, "{at:?}");
    assert!(c.sample.churning(cfg.thrash_ratio));
    // Streaming: the same reclaim, refaults near zero: no signal.
    let (_, changes) = run(cfg, Duration::from_secs(5), |t| {
        let s = t.as_secs_f64();
        MachineReading {
            steal: (s * 40.0 * MIB as f64) as u64,
            scan: (s * 80.0 * MIB as f64) as u64,
            refaults: (s * 0.1 * MIB as f64) as u64,
            ..reading(250 * MIB)
        }
    });
    assert!(changes.is_empty(), "{changes:?}");
}

#[test]
fn reclaim_caps_the_interval() {
    let cfg = MachineConfig::default();
    let (m, _) = run(cfg, Duration::from_secs(3), |t| MachineReading {
        scan: (t.as_secs_f64() * 10.0 * MIB as f64) as u64,
        ..reading(900 * MIB)
    });
    assert!(m.next_interval() <= cfg.busy_interval);
}

#[test]
fn pressure_share_fires_stalled() {
    let cfg = MachineConfig::default();
    // 40 % `some` stall from 2 s on.
    let (_, changes) = run(cfg, Duration::from_secs(5), |t| {
        let stalled = t.saturating_sub(Duration::from_secs(2)).as_micros() as u64;
        MachineReading {
            some_us: Some(stalled * 4 / 10),
            full_us: Some(0),
            ..reading(600 * MIB)
        }
    });
    let (at, c) = changes.first().unwrap();
    assert_eq!(c.fired, Signals::STALLED);
    assert!((2.0..3.2).contains(&at.as_secs_f64()), "{at:?}");
}

#[test]
fn anon_growth_with_shrinking_headroom_is_churn() {
    let s = MachineSample {
        fill_rate: 20 * MIB as i64,
        anon_rate: 20 * MIB as i64,
        steal_rate: 50 * MIB,
        ..Default::default()
    };
    assert!(s.churning(0.5));
    let cold = MachineSample {
        fill_rate: -(5 * MIB as i64),
        anon_rate: 0,
        steal_rate: 50 * MIB,
        refault_rate: MIB,
        ..Default::default()
    };
    assert!(!cold.churning(0.5));
}

#[test]
fn swap_counts_as_headroom_and_levels_resolve() {
    let r = MachineReading {
        mem_total: GIB,
        mem_available: 100 * MIB,
        swap_total: GIB,
        swap_free: 500 * MIB,
        ..Default::default()
    };
    assert_eq!(r.headroom(), 600 * MIB);
    assert_eq!(Level::Fraction(0.5).resolve(r.total()), GIB);
    assert_eq!(Level::Bytes(7).resolve(r.total()), 7);
}

#[test]
fn validate_names_the_bad_value() {
    let cfg = MachineConfig {
        low: Level::Fraction(1.5),
        ..Default::default()
    };
    assert!(cfg.validate().unwrap_err().to_string().contains("low"));
    let cfg = MachineConfig {
        min_interval: Duration::ZERO,
        ..Default::default()
    };
    assert!(
        cfg.validate()
            .unwrap_err()
            .to_string()
            .contains("min_interval")
    );
    MachineConfig::default().validate().unwrap();
}
