//! `PriorityKill::decide` allocates nothing after construction.
//!
//! A counting global allocator counts allocations made on this thread while
//! a flag is set; a wrapper handler sets it only around the inner
//! `decide`. The engine runs over ~100 fake cgroups. The fake host's own
//! `read_processes` clones (it is a test double), so a wrapper host serves
//! processes from storage filled before the measurement, the way a real
//! host reads into the engine's pre-sized buffer.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{eager, urgent};
use oomkit::cgroup::{Limit, MemoryStat};
use oomkit::engine::{
    Act, CgroupId, CgroupMeta, CgroupStats, Class, Engine, Handler, Observe, Plan, ProcSample,
    SystemStats, Trigger, Victim, View, XattrInfo,
};
use oomkit_handlers::classify::{Classifier, QosPriorities, Rule};
use oomkit_handlers::priority::{Granularity, PriorityKill, PriorityKillConfig};
use oomkit_testing::{FakeHost, proc};

#[path = "../../sdk/tests/common/counting.rs"]
mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

/// Counts allocations made by the inner handler's `decide`.
struct Measured {
    inner: PriorityKill,
    /// (allocations, decisions), shared with the test.
    counts: Arc<(AtomicU64, AtomicU64)>,
}

impl Handler for Measured {
    fn name(&self) -> &'static str {
        "measured"
    }
    fn classify(&mut self, meta: &CgroupMeta<'_>) -> Class {
        self.inner.classify(meta)
    }
    fn decide(&mut self, view: &mut View<'_>, plan: &mut Plan) {
        let ((), n) = counting::count(|| self.inner.decide(view, plan));
        self.counts.0.fetch_add(n as u64, Ordering::Relaxed);
        self.counts.1.fetch_add(1, Ordering::Relaxed);
    }
    fn usage_on_demand(&self) -> bool {
        self.inner.usage_on_demand()
    }
}

/// `FakeHost` with processes and usage served from storage built before
/// measuring (the decision reads usage as it goes).
struct Prefilled {
    fake: FakeHost,
    procs: HashMap<CgroupId, Vec<ProcSample>>,
    usage: HashMap<CgroupId, u64>,
}

impl Observe for Prefilled {
    fn now(&self) -> Instant {
        self.fake.now()
    }

    fn attach(&mut self, id: CgroupId, path: &Path) -> oomkit::Result<XattrInfo> {
        let x = self.fake.attach(id, path)?;
        let procs = self
            .fake
            .cgs
            .get(path)
            .map(|c| c.procs.clone())
            .unwrap_or_default();
        self.procs.insert(id, procs);
        self.usage.insert(id, self.fake.usage_of(path));
        Ok(x)
    }

    fn detach(&mut self, id: CgroupId) {
        self.fake.detach(id)
    }

    fn read_usage(&mut self, id: CgroupId, out: &mut CgroupStats) -> oomkit::Result<()> {
        out.current = self.usage.get(&id).copied();
        out.swap_current = Some(0);
        Ok(())
    }

    fn read_detail(&mut self, id: CgroupId, out: &mut CgroupStats) -> oomkit::Result<()> {
        self.fake.read_detail(id, out)
    }

    fn read_memory_stat(&mut self, id: CgroupId, out: &mut MemoryStat) -> oomkit::Result<()> {
        self.fake.read_memory_stat(id, out)
    }

    fn read_processes(&mut self, id: CgroupId, out: &mut Vec<ProcSample>) -> oomkit::Result<()> {
        if let Some(p) = self.procs.get(&id) {
            // Within the engine's pre-sized capacity: no allocation.
            out.extend_from_slice(p);
        }
        Ok(())
    }

    fn read_system(&mut self, out: &mut SystemStats) -> oomkit::Result<()> {
        self.fake.read_system(out)
    }

    fn own_pid(&self) -> i32 {
        self.fake.own_pid()
    }

    fn own_cgroup(&self) -> Option<&Path> {
        self.fake.own_cgroup()
    }
}

impl Act for Prefilled {
    fn kill_process(&mut self, id: CgroupId, pid: i32) -> oomkit::Result<Victim> {
        self.fake.kill_process(id, pid)
    }

    fn kill_cgroup(&mut self, id: CgroupId) -> oomkit::Result<Victim> {
        self.fake.kill_cgroup(id)
    }

    fn victim_exited(&mut self, victim: &Victim) -> oomkit::Result<bool> {
        self.fake.victim_exited(victim)
    }

    fn victim_fd(&self, victim: &Victim) -> Option<BorrowedFd<'_>> {
        self.fake.victim_fd(victim)
    }

    fn release_victim(&mut self, victim: &Victim) {
        self.fake.release_victim(victim)
    }

    fn set_high(&mut self, id: CgroupId, limit: Limit) -> oomkit::Result<()> {
        self.fake.set_high(id, limit)
    }

    fn set_max(&mut self, id: CgroupId, limit: Limit) -> oomkit::Result<()> {
        self.fake.set_max(id, limit)
    }

    fn set_frozen(&mut self, id: CgroupId, frozen: bool) -> oomkit::Result<()> {
        self.fake.set_frozen(id, frozen)
    }

    fn signal(&mut self, id: CgroupId, pid: i32, signal: i32) -> oomkit::Result<()> {
        self.fake.signal(id, pid, signal)
    }
}

/// ~100 cgroups: 3 QoS levels × 8 pods × 3 containers, plus system services.
fn big_node() -> (FakeHost, Vec<String>) {
    let mut h = FakeHost::new();
    let mut paths = Vec::new();
    let mut pid = 1000;
    for qos in ["/kubepods/besteffort", "/kubepods/burstable", "/kubepods"] {
        for pod in 0..8 {
            for ctr in 0..3 {
                let p = format!("{qos}/pod{pod}/ctr{ctr}");
                h.cg(&p).procs = vec![proc(pid, 10 + pid as u64 % 97), proc(pid + 1, 5)];
                pid += 2;
                paths.push(p);
            }
        }
    }
    for s in 0..12 {
        let p = format!("/system.slice/svc{s}.service");
        h.cg(&p).procs = vec![proc(pid, 30)];
        pid += 1;
        paths.push(p);
    }
    (h, paths)
}

fn measure(granularity: Granularity) -> (u64, u64, usize) {
    let (fake, paths) = big_node();
    let host = Prefilled {
        fake,
        procs: HashMap::new(),
        usage: HashMap::new(),
    };
    let rules = vec![Rule {
        glob: "/system.slice/svc[0-3].service".into(),
        priority: None,
        protected: true,
    }];
    let classifier = Classifier::new(rules, Some(QosPriorities::default()), 0).unwrap();
    let inner = PriorityKill::new(
        PriorityKillConfig {
            granularity,
            ..PriorityKillConfig::default()
        },
        classifier,
    );
    let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let handler = Measured {
        inner,
        counts: Arc::clone(&counts),
    };
    let mut cfg = eager();
    cfg.dry_run = true;
    let mut engine = Engine::new(cfg, host, Box::new(handler), Path::new("/")).unwrap();
    for p in &paths {
        engine.add_cgroup(Path::new(p)).unwrap();
    }
    let n = engine.tree().len();
    let root = engine.root().unwrap();
    // Several episodes: the first as well as later ones must not allocate.
    for _ in 0..5 {
        let at = engine.host().now();
        engine.on_event(
            Trigger::MemoryEvents {
                cgroup: root,
                delta: urgent(),
            },
            at,
        );
        let ep = engine.take_finished().unwrap();
        assert!(ep.plan.kills(), "a victim was chosen");
        engine.host().fake.advance(Duration::from_secs(1));
        let at = engine.host().now();
        engine.on_tick(at);
    }
    (
        counts.0.load(Ordering::Relaxed),
        counts.1.load(Ordering::Relaxed),
        n,
    )
}

#[test]
fn decide_allocates_nothing() {
    for g in [Granularity::Process, Granularity::Cgroup, Granularity::Tree] {
        let (allocs, decisions, n) = measure(g);
        assert!(n >= 100, "tree of {n} cgroups");
        assert_eq!(decisions, 5, "{g:?}");
        assert_eq!(allocs, 0, "{g:?}: decide allocated {allocs} times");
    }
}

#[test]
fn the_counter_sees_allocations() {
    let (v, n) = counting::count(|| std::hint::black_box(Vec::<u64>::with_capacity(16)));
    drop(v);
    assert!(n > 0);
}
