//! After warm-up, a `Watcher` servicing a `MachineWatch` (timer expiry,
//! three `pread`s and parses of synthetic `/proc` files, the monitor's
//! judgement, re-arming the timer) makes no heap allocation; and the
//! signals it reports follow the files: `critical` fires when the headroom
//! drops under 5 % and clears when it comes back above 15 %.
//!
//! A single test in this file, with the shared per-thread counting
//! allocator.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use oomkit::events::{EventKind, MachinePaths, MachineWatchConfig, Signals, Source, Watcher};

#[path = "common/counting.rs"]
mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

fn meminfo(avail_kb: u64) -> String {
    format!(
        "MemTotal:        1000000 kB\nMemFree:         {avail_kb} kB\n\
         MemAvailable:    {avail_kb} kB\nAnonPages:        100000 kB\n\
         Active(file):      10000 kB\nInactive(file):    20000 kB\n\
         SwapTotal:             0 kB\nSwapFree:              0 kB\n"
    )
}

#[test]
fn machine_source_does_not_allocate_and_follows_the_files() {
    let (v, n) = counting::count(|| vec![1u8; 16]);
    assert!(
        n >= 1 && v.len() == 16,
        "the counting allocator is not in use"
    );

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("meminfo"), meminfo(500_000)).unwrap();
    std::fs::write(
        dir.join("vmstat"),
        "pgscan_kswapd 0\npgsteal_kswapd 0\nworkingset_refault_file 0\noom_kill 0\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("pressure"),
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n\
         full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    )
    .unwrap();
    let mut cfg = MachineWatchConfig {
        paths: MachinePaths {
            meminfo: dir.join("meminfo"),
            vmstat: dir.join("vmstat"),
            pressure: Some(dir.join("pressure")),
        },
        ..Default::default()
    };
    // Sample every 10 ms whatever the headroom, so the test is quick.
    cfg.monitor.min_interval = Duration::from_millis(10);
    cfg.monitor.max_interval = Duration::from_millis(10);
    cfg.monitor.busy_interval = Duration::from_millis(10);
    let mut w = Watcher::with_capacity(4).unwrap();
    let tok = w.add_machine(cfg).unwrap();

    let mut round = |i: usize, check: bool| {
        // Odd rounds: 2 % available (critical); even: 50 % (clear).
        let low = i % 2 == 1;
        std::fs::write(
            dir.join("meminfo"),
            meminfo(if low { 20_000 } else { 500_000 }),
        )
        .unwrap();
        let (got, n) = counting::count(|| {
            for _ in 0..500 {
                let evs = w.wait(Some(Duration::from_secs(10))).unwrap();
                if let Some(ev) = evs.iter().next() {
                    assert_eq!(ev.token, tok);
                    match ev.kind {
                        EventKind::Machine(ch) => return Some(ch),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            None
        });
        let ch = got.expect("no machine event within 500 waits");
        if low {
            assert!(ch.fired.contains(Signals::CRITICAL), "round {i}: {ch:?}");
            assert!(ch.active.contains(Signals::CRITICAL));
        } else {
            assert!(ch.cleared.contains(Signals::CRITICAL), "round {i}: {ch:?}");
            assert!(ch.active.is_empty(), "round {i}: {ch:?}");
        }
        if check {
            assert_eq!(n, 0, "round {i}: {n} heap allocations in wait");
        }
    };
    round(1, false);
    for i in 2..6 {
        round(i, true);
    }
    let Some(Source::Machine(m)) = w.source(tok) else {
        panic!("machine source missing")
    };
    assert!(m.stats().wakeups >= 5, "{:?}", m.stats());
    assert_eq!(m.stats().failures, 0);
}
