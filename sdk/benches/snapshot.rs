//! A snapshot of one cgroup: the real [`KernelHost`] reading a synthetic
//! cgroup whose files are the 7.2 kernel's, copied from `sdk/fixtures/`
//! into a temporary folder (plain files stand in for cgroupfs, so this
//! measures the SDK's open/read/parse path, not kernfs itself).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use oomkit::cgroup::{CgroupFs, MemoryStat};
use oomkit::engine::{
    CgroupStats, Engine, EngineConfig, Handler, KernelHost, Observe, Plan, View, XattrTrust,
};

const RELEASE: &str = "7.2.13+deb14-cloud-amd64";

struct Nothing;

impl Handler for Nothing {
    fn name(&self) -> &'static str {
        "nothing"
    }
    fn decide(&mut self, _view: &mut View<'_>, _plan: &mut Plan) {}
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn bench_snapshot(c: &mut Criterion) {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(RELEASE);
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixtures.join("root"), tmp.path());
    copy_dir(&fixtures.join("child"), &tmp.path().join("c"));
    let fs = CgroupFs::from_dir_unchecked(tmp.path());
    let host = KernelHost::new(fs, XattrTrust::TrustedOnly, 16, 64);
    let cfg = EngineConfig {
        max_cgroups: 16,
        max_processes: 64,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(cfg, host, Box::new(Nothing), Path::new("/")).unwrap();
    let id = engine.add_cgroup(Path::new("/c")).unwrap();
    let host = engine.host_mut();
    let mut st = CgroupStats::default();
    let mut stat = MemoryStat {
        other: Vec::with_capacity(128),
        ..MemoryStat::default()
    };

    let mut g = c.benchmark_group("snapshot");
    g.bench_function("read_usage", |b| {
        b.iter(|| host.read_usage(id, &mut st).unwrap())
    });
    g.bench_function("read_detail", |b| {
        b.iter(|| host.read_detail(id, &mut st).unwrap())
    });
    g.bench_function("read_memory_stat", |b| {
        b.iter(|| host.read_memory_stat(id, &mut stat).unwrap())
    });
    g.bench_function("one_cgroup", |b| {
        b.iter(|| {
            host.read_usage(id, &mut st).unwrap();
            host.read_detail(id, &mut st).unwrap();
        })
    });
    g.finish();
    assert!(st.current.is_some() && st.pressure.is_some() && st.pgsteal.is_some());
}

criterion_group!(benches, bench_snapshot);
criterion_main!(benches);
