//! Parsing the kernel's memory files, on files captured from real kernels
//! (`sdk/fixtures/<release>/`): `memory.events`, `memory.stat` (reusing its
//! storage, as the loop does) and `memory.pressure`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use oomkit::cgroup::{MemoryStat, parse};

/// The fixture releases to measure on: the oldest and the newest kernel
/// (memory.stat grows from ~40 keys on 5.10 to ~75 on 7.2).
const RELEASES: [&str; 2] = ["5.10.0-32-cloud-amd64", "7.2.13+deb14-cloud-amd64"];

fn fixture(release: &str, rel: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(release)
        .join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn short(release: &str) -> &str {
    release.split('-').next().unwrap_or(release)
}

fn bench_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    for rel in RELEASES {
        let events = fixture(rel, "child/memory.events");
        g.throughput(Throughput::Bytes(events.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("memory.events", short(rel)),
            &events,
            |b, d| b.iter(|| parse::memory_events(black_box(d)).unwrap()),
        );
        let stat = fixture(rel, "child/memory.stat");
        let mut out = MemoryStat {
            other: Vec::with_capacity(128),
            ..MemoryStat::default()
        };
        g.throughput(Throughput::Bytes(stat.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("memory.stat", short(rel)),
            &stat,
            |b, d| b.iter(|| parse::memory_stat_into(black_box(d), &mut out).unwrap()),
        );
        let psi = fixture(rel, "child/memory.pressure");
        g.throughput(Throughput::Bytes(psi.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("memory.pressure", short(rel)),
            &psi,
            |b, d| b.iter(|| parse::pressure(black_box(d)).unwrap()),
        );
    }
    g.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
