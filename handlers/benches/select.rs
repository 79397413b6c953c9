//! Victim selection: priority-kill's `decide` driven through an [`Engine`]
//! over 100, 1,000 and 10,000 leaf cgroups of 10 processes each, spread
//! over 10 tiers (`/t0` … `/t9`, priorities −50 … 40), from the event to
//! the decided plan (dry run: nothing is killed).
//!
//! Two hosts:
//! - `kernel_host`: the real [`KernelHost`] on a synthetic tree in a
//!   temporary folder (plain files stand in for cgroupfs; a tier's
//!   `memory.current` is the sum of its leaves', as the kernel charges
//!   them). Every `cgroup.procs` lists the same 10 real child processes
//!   holding 5 MiB each, so process granularity reads `/proc` for real.
//!   This is the whole hot path: the snapshot, the usage the handler reads
//!   (at cgroup granularity: the lowest tier's), system numbers, the
//!   handler, the loop's protection filter.
//! - `mem_host`: an in-memory host (the policy and the loop alone, no
//!   I/O), to separate the cost of reading from the cost of deciding.
//!
//! Goal: under 10 ms for 10,000 cgroups at cgroup granularity.
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

/// What leaf `i` holds: all different, and more than its processes
/// together (10 of up to 6 MiB; a process never holds more than its cgroup).
fn leaf_usage(i: usize) -> u64 {
    (64 << 20) + (i as u64 + 1) * 4096
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
/// past the cooldown. At cgroup granularity each must pick the largest leaf
/// of the lowest tier, `/t0/c{n - 10}`, whatever it skipped reading.
fn decide_n<H: Host>(
    engine: &mut Engine<H>,
    iters: u64,
    clock: &mut Instant,
    victim: Option<&str>,
) -> Duration {
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
        if let Some(want) = victim {
            let got = ep.plan.steps().next().map(|s| s.action.cgroup());
            let got = got.and_then(|id| engine.tree().path(id));
            assert_eq!(got, Some(Path::new(want)), "the victim");
        }
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
    // As the kernel charges them: a tier holds what its leaves hold.
    let mut tier_usage = [0u64; TIERS];
    for i in 0..n {
        tier_usage[i % TIERS] += leaf_usage(i);
    }
    for (t, usage) in tier_usage.iter().enumerate() {
        let d = root.join(format!("t{t}"));
        std::fs::create_dir(&d).unwrap();
        write(&d, "cgroup.procs", "");
        write(&d, "memory.current", &format!("{usage}\n"));
    }
    for i in 0..n {
        let d = root.join(&leaf_path(i)[1..]);
        std::fs::create_dir(&d).unwrap();
        write(&d, "cgroup.procs", procs);
        write(&d, "memory.current", &format!("{}\n", leaf_usage(i)));
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
    // Processes that hold 5 MiB each (a shell variable), above the loop's
    // frees-nothing floor, then wait on a pipe nobody writes.
    let sleepers = Sleepers(
        (0..PROCS)
            .map(|_| {
                let mut c = std::process::Command::new("sh")
                    .args([
                        "-c",
                        "v=$(head -c 5242880 /dev/zero | tr '\\000' x); echo ready; read x",
                    ])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut line = String::new();
                std::io::BufRead::read_line(
                    &mut std::io::BufReader::new(c.stdout.as_mut().unwrap()),
                    &mut line,
                )
                .unwrap();
                assert_eq!(line.trim(), "ready");
                c
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
            let victim = (gran == Granularity::Cgroup).then(|| format!("/t0/c{}", n - TIERS));
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter_custom(|iters| decide_n(&mut engine, iters, &mut clock, victim.as_deref()))
            });
        }
    }
    g.finish();
    drop(sleepers);
}

/// The host of `mem_host`: everything in memory, indexed by id. A leaf
/// holds what `synthetic_tree` gives it; a parent what its children hold.
#[derive(Default)]
struct MemHost {
    current: Vec<u64>,
    slots: std::collections::HashMap<PathBuf, usize>,
    procs_base: i32,
}

impl Observe for MemHost {
    fn attach(&mut self, id: CgroupId, path: &Path) -> oomkit::Result<XattrInfo> {
        if self.current.len() <= id.index() {
            self.current.resize(id.index() + 1, 0);
        }
        self.slots.insert(path.to_owned(), id.index());
        let leaf = path
            .file_name()
            .and_then(|n| n.to_str()?.strip_prefix('c')?.parse::<usize>().ok());
        if let Some(i) = leaf {
            self.current[id.index()] = leaf_usage(i);
            let mut up = path.parent();
            while let Some(p) = up {
                if let Some(&slot) = self.slots.get(p) {
                    self.current[slot] += leaf_usage(i);
                }
                up = p.parent();
            }
        }
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
                // Above the frees-nothing floor (4 MiB), all different.
                rss: (4 << 20) + ((id.index() % 1000 * PROCS + k) as u64) * 64,
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
            let victim = (gran == Granularity::Cgroup).then(|| format!("/t0/c{}", n - TIERS));
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter_custom(|iters| decide_n(&mut engine, iters, &mut clock, victim.as_deref()))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_mem_host, bench_kernel_host);
criterion_main!(benches);
