//! Under `mlockall(MCL_FUTURE)`, a new thread's malloc arena must not add
//! tens of MiB of locked-but-never-resident address space (the daemon's
//! watchdog thread did: VmLck 108 MiB against VmRSS 44 MiB in the benchmark).
//!
//! `harness = false`: reserve mode is entered, as the daemon does, on the
//! main thread before any other thread exists (libtest would have started
//! worker threads, with arenas of their own, already).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use oomkit::reserve::{self, ReserveConfig};

#[path = "common/skip.rs"]
mod skip;

fn kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn main() {
    a_thread_does_not_lock_an_unused_arena();
    println!("test result: ok. 1 passed; 0 failed");
}

fn a_thread_does_not_lock_an_unused_arena() {
    let rep = reserve::enter(&ReserveConfig {
        nice: None,
        oom_score_adj: None,
        io_flusher: false,
        ..ReserveConfig::default()
    });
    if !rep.granted("mlockall") {
        return skip::skip_named(
            "a_thread_does_not_lock_an_unused_arena",
            &format!("mlockall not granted here: {rep}"),
        );
    }
    assert!(rep.granted("malloc_arenas"), "{rep}");
    std::thread::spawn(|| std::hint::black_box(vec![1u8; 4096]))
        .join()
        .unwrap();
    let (lck, rss) = (kib("VmLck:"), kib("VmRSS:"));
    // Locked mappings are faulted in; what is locked but not resident must
    // stay small (a glibc arena reservation alone is 64 MiB).
    assert!(lck <= rss + 8 * 1024, "VmLck {lck} kB vs VmRSS {rss} kB");
}
