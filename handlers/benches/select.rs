//! Victim selection: priority-kill's `decide` driven through an [`Engine`]
//! over 100, 1,000 and 10,000 leaf cgroups of 10 processes each, from the
//! event to the decided plan (dry run: nothing is killed).
//!
//! Two hosts:
//! - `kernel_host`: the real [`KernelHost`] on a synthetic tree in a
//!   temporary folder (plain files stand in for cgroupfs). Every
//!   `cgroup.procs` lists the same 10 real sleeping child processes, so
//!   process granularity reads `/proc` for real: 10 × N process reads.
//!   This is the whole hot path: snapshot of every cgroup in scope
//!   (`memory.current`, `memory.swap.current`), system numbers, the
//!   handler, the loop's protection filter.
//! - `mem_host`: an in-memory host (the policy and the loop alone, no
//!   I/O), to separate the cost of reading from the cost of deciding.
//!
//! Goal: under 10 ms for 10,000 cgroups.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use oomkit::cgroup::{CgroupFs, Limit, MemoryEvents};
use oomkit::engine::{
    Act, CgroupId, CgroupStats, Engine, EngineConfig, Host, KernelHost, Observe, Outcome,
    ProcSample, Trigger, Victim, XattrInfo, XattrTrust,
};
use oomkit_handlers::{Classifier, Granularity, PriorityKill, PriorityKillConfig, Rule};

const SIZES: [usize; 3] = [100, 1_000, 10_000];
const TIERS: usize = 10;
const PROCS: usize = 10;

fn leaf_path(i: usize) -> String {
    format!("/t{}/c{i}", i % TIERS)
}

fn handler(n: usize, granularity: Granularity) -> PriorityKill {
    let rules = (0..TIERS)
        .map(|t| Rule {
            glob: format!("/t{t}/**"),
            priority: Some(t as i32 * 10 - 50),
            protected: false,
        })
        .collect();
    PriorityKill::new(
        PriorityKillConfig {
            granularity,
            max_cgroups: n + 64,
            ..PriorityKillConfig::default()
        },
        Classifier::new(rules, None, 0).unwrap(),
    )
}

fn engine_config(n: usize) -> EngineConfig {
    EngineConfig {
        dry_run: true,
        progress_aware: false,
        recheck: false,
        max_cgroups: n + 64,
        max_processes: n * PROCS + 64,
        ..EngineConfig::default()
    }
}

fn oom_event(root: CgroupId) -> Trigger {
    Trigger::MemoryEvents {
        cgroup: root,
        delta: MemoryEvents {
            max: Some(1),
            oom: Some(1),
            ..MemoryEvents::default()
        },
    }
}

/// Runs `iters` decisions; each event comes a second after the last one,
/// past the cooldown.
fn decide_n<H: Host>(engine: &mut Engine<H>, iters: u64, clock: &mut Instant) -> Duration {
    let root = engine.root().unwrap();
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        // Past the cooldown, which starts at the (real) decision time.
        *clock = (*clock).max(Instant::now()) + Duration::from_secs(1);
        let t = Instant::now();
        engine.on_event(oom_event(root), *clock);
        total += t.elapsed();
        let ep = engine.take_finished().expect("the episode ended");
        assert_eq!(ep.outcome, Some(Outcome::DryRun), "{ep:?}");
    }
    total
}

struct Sleepers(Vec<std::process::Child>);

impl Drop for Sleepers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn synthetic_tree(root: &Path, n: usize, procs: &str) {
    write(root, "cgroup.procs", "");
    write(
        root,
        "memory.stat",
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../sdk/fixtures/7.2.13+deb14-cloud-amd64/child/memory.stat"),
        )
        .unwrap(),
    );
    for t in 0..TIERS {
        let d = root.join(format!("t{t}"));
        std::fs::create_dir(&d).unwrap();
        write(&d, "cgroup.procs", "");
        write(&d, "memory.current", "1\n");
    }
    for i in 0..n {
        let d = root.join(&leaf_path(i)[1..]);
        std::fs::create_dir(&d).unwrap();
        write(&d, "cgroup.procs", procs);
        write(
            &d,
            "memory.current",
            // Above the loop's frees-nothing floor (4 MiB), all different.
            &format!("{}\n", (4 << 20) + (i as u64 + 1) * 4096),
        );
        write(&d, "memory.swap.current", "0\n");
        write(&d, "memory.max", "max\n");
        write(&d, "memory.high", "max\n");
    }
}

fn raise_nofile() {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    );
}

fn bench_kernel_host(c: &mut Criterion) {
    raise_nofile();
    let sleepers = Sleepers(
        (0..PROCS)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("100000")
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    let procs: String = sleepers.0.iter().map(|c| format!("{}\n", c.id())).collect();
    let mut g = c.benchmark_group("select_kernel_host");
    g.sample_size(10);
    for n in SIZES {
        let tmp = tempfile::tempdir().unwrap();
        synthetic_tree(tmp.path(), n, &procs);
        for (gran, name) in [
            (Granularity::Cgroup, "cgroup"),
            (Granularity::Process, "process"),
        ] {
            let fs = CgroupFs::from_dir_unchecked(tmp.path());
            let mut host = KernelHost::new(fs, XattrTrust::TrustedOnly, n + 64, n * PROCS + 64);
            host.set_own_cgroup(Some("/oomkit.service".into()));
            let mut engine = Engine::new(
                engine_config(n),
                host,
                Box::new(handler(n, gran)),
                Path::new("/"),
            )
            .unwrap();
            for i in 0..n {
                engine.add_cgroup(Path::new(&leaf_path(i))).unwrap();
            }
            let mut clock = Instant::now();
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter_custom(|iters| decide_n(&mut engine, iters, &mut clock))
            });
        }
    }
    g.finish();
    drop(sleepers);
}

/// The host of `mem_host`: everything in memory, indexed by id.
#[derive(Default)]
struct MemHost {
    current: Vec<u64>,
    procs_base: i32,
}

impl Observe for MemHost {
    fn attach(&mut self, id: CgroupId, _path: &Path) -> oomkit::Result<XattrInfo> {
        if self.current.len() <= id.index() {
            self.current.resize(id.index() + 1, 0);
        }
        self.current[id.index()] = (4 << 20) + (id.index() as u64 + 1) * 4096;
        Ok(XattrInfo::default())
    }

    fn read_usage(&mut self, id: CgroupId, out: &mut CgroupStats) -> oomkit::Result<()> {
        out.current = self.current.get(id.index()).copied();
        out.swap_current = Some(0);
        Ok(())
    }

    fn read_detail(&mut self, _id: CgroupId, out: &mut CgroupStats) -> oomkit::Result<()> {
        out.high = Some(Limit::Max);
        out.max = Some(Limit::Max);
        Ok(())
    }

    fn read_processes(&mut self, id: CgroupId, out: &mut Vec<ProcSample>) -> oomkit::Result<()> {
        for k in 0..PROCS {
            out.push(ProcSample {
                pid: self.procs_base + (id.index() * PROCS + k) as i32,
                rss: ((id.index() * PROCS + k) as u64) << 12,
                swap: 0,
                oom_score_adj: 0,
                uid: 1000,
                kernel_thread: false,
                comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
            });
        }
        Ok(())
    }

    fn own_pid(&self) -> i32 {
        1
    }

    fn own_cgroup(&self) -> Option<&Path> {
        Some(Path::new("/oomkit.service"))
    }
}

impl Act for MemHost {
    fn kill_process(&mut self, id: CgroupId, pid: i32) -> oomkit::Result<Victim> {
        Ok(Victim::Process {
            pid,
            slot: 0,
            cgroup: id,
        })
    }

    fn kill_cgroup(&mut self, id: CgroupId) -> oomkit::Result<Victim> {
        Ok(Victim::Cgroup {
            cgroup: id,
            spared: 0,
        })
    }

    fn set_high(&mut self, _id: CgroupId, _limit: Limit) -> oomkit::Result<()> {
        Ok(())
    }

    fn set_max(&mut self, _id: CgroupId, _limit: Limit) -> oomkit::Result<()> {
        Ok(())
    }

    fn set_frozen(&mut self, _id: CgroupId, _frozen: bool) -> oomkit::Result<()> {
        Ok(())
    }

    fn signal(&mut self, _id: CgroupId, _pid: i32, _signal: i32) -> oomkit::Result<()> {
        Ok(())
    }
}

fn bench_mem_host(c: &mut Criterion) {
    let mut g = c.benchmark_group("select_mem_host");
    g.sample_size(10);
    for n in SIZES {
        for (gran, name) in [
            (Granularity::Cgroup, "cgroup"),
            (Granularity::Process, "process"),
        ] {
            let host = MemHost {
                procs_base: 1000,
                ..MemHost::default()
            };
            let mut engine = Engine::new(
                engine_config(n),
                host,
                Box::new(handler(n, gran)),
                Path::new("/"),
            )
            .unwrap();
            for i in 0..n {
                engine.add_cgroup(Path::new(&leaf_path(i))).unwrap();
            }
            let mut clock = Instant::now();
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter_custom(|iters| decide_n(&mut engine, iters, &mut clock))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_mem_host, bench_kernel_host);
criterion_main!(benches);
