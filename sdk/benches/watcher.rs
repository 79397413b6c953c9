//! The watcher's cost per event with N sources watched (10 … 10,000).
//!
//! kernfs files cannot be polled on the host (its memory controller is
//! cgroup v1, and epoll refuses plain files), so eventfds stand in for the
//! `memory.events.local` fds: one of N is signalled, [`Watcher::wait`]
//! dispatches it, and the re-read/diff path of the signalled cgroup runs
//! ([`MemoryEventsWatch::refresh`] on a synthetic `memory.events.local`
//! holding the 7.2 kernel's file). The runner's token → cgroup lookup (a
//! `HashMap`) is included. Every iteration signals another source (a
//! stride through all N), so a large N is not served from one hot cache
//! line.
//!
//! Four views of the same iteration:
//!
//! * `dispatch_and_reread/N`: all of it, stand-in included — the eventfd
//!   `write` that signals source k and the `read` that resets it.
//! * `signal/N`: the stand-in's `write` alone. At 10,000 it is what grows:
//!   the kernel looks fd k up in a 10,000-entry fd table and touches its
//!   cold `struct file`, eventfd context and epoll item (the wakeup runs
//!   the epoll callback inside the `write`). A kernfs event costs the
//!   handler none of this: the kernel's `cgroup_file_notify()` wakes the
//!   poller from the context that changed the counter.
//! * `dispatch/N`: what the handler does once source k is ready, up to
//!   knowing its cgroup — `epoll_wait`, the watcher's slot, the token →
//!   cgroup lookup. The part that could grow with N.
//! * `handle/N`: `dispatch` plus the re-read and diff (one file whatever N,
//!   as a kernfs re-read is). This is the per-event cost the goal is about
//!   (two `Instant::now` per iteration included, the same at every N).
//!
//! `baseline` is the eventfd write + read on one fd (the stand-in's own
//! cost when nothing is cold).
//!
//! Those sources are the fd-per-cgroup path, which the runner takes only
//! for a cgroup whose inotify watch failed. Its own path is
//! `runner_event/memory_events_local/N`: a [`Runner`] over N child cgroups
//! (plain files in a temporary folder, on tmpfs if `/dev/shm` exists)
//! watching every `memory.events.local` through one inotify fd; the bench
//! rewrites one cgroup's file (its `low` counter rises: reported, but no
//! episode starts) and times [`Runner::run_once`] — `epoll_wait`, the
//! inotify read, the wd → cgroup lookup, the re-read through the cgroup's
//! directory (opened by path, as on kernfs) and the trigger. The rewrite,
//! the stand-in for the kernel's notification, is not timed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use oomkit::cgroup::CgroupFs;
use oomkit::engine::{Handler, Plan, Runner, RunnerConfig, View};
use oomkit::events::{EventKind, Interest, MemoryEventsWatch, Scope, Token, Watcher};
use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd};

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

fn signal(fd: BorrowedFd<'_>) {
    rustix::io::write(fd, &1u64.to_ne_bytes()).unwrap();
}

fn drain(fd: BorrowedFd<'_>) {
    let mut b = [0u8; 8];
    rustix::io::read(fd, &mut b).unwrap();
}

/// The eventfds are owned by the watcher (10,000 of them: keeping a
/// duplicate of each would hit the fd limit); `Watcher::fd` looks tokens up
/// linearly, which is not what the runner does per event, so the bench
/// keeps the raw numbers.
fn borrow(raw: RawFd) -> BorrowedFd<'static> {
    // SAFETY: every fd borrowed here belongs to a watcher that lives until
    // the end of the benchmark group using it; the borrow never outlives it.
    unsafe { BorrowedFd::borrow_raw(raw) }
}

/// A watcher with `n` eventfd sources, the runner's token → cgroup table,
/// the re-read source and the stride cursor.
struct Setup {
    w: Watcher,
    ours: Vec<RawFd>,
    bindings: HashMap<Token, usize>,
    watch: MemoryEventsWatch,
    k: usize,
}

impl Setup {
    fn new(n: usize, watch: MemoryEventsWatch) -> Self {
        let mut w = Watcher::with_capacity(n + 8).unwrap();
        let mut ours = Vec::with_capacity(n);
        let mut bindings: HashMap<Token, usize> = HashMap::with_capacity(n);
        for i in 0..n {
            let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap();
            ours.push(fd.as_raw_fd());
            let t = w.add_fd(fd, Interest::READABLE, Token(i as u64)).unwrap();
            bindings.insert(t, i);
        }
        Setup {
            w,
            ours,
            bindings,
            watch,
            k: 0,
        }
    }

    /// The stand-in's half: signals the next source.
    fn signal_next(&mut self) {
        self.k = (self.k + 7919) % self.ours.len();
        signal(borrow(self.ours[self.k]));
    }

    /// The handler's dispatch: waits, finds the slot, looks the cgroup up;
    /// returns the source's index.
    fn dispatch(&mut self) -> usize {
        let evs = self.w.wait(Some(Duration::ZERO)).unwrap();
        assert_eq!(evs.len(), 1);
        let ev = evs.as_slice()[0];
        assert!(matches!(ev.kind, EventKind::Fd(_)));
        *self.bindings.get(&ev.token).unwrap()
    }

    /// The handler's re-read and diff of the cgroup's file.
    fn reread(&mut self) {
        black_box(self.watch.refresh().unwrap());
    }

    /// The handler's half: dispatch, then re-read.
    fn handle(&mut self) -> usize {
        let i = self.dispatch();
        self.reread();
        i
    }

    /// The stand-in's reset of source `i` (a kernfs file needs none).
    fn reset(&self, i: usize) {
        drain(borrow(self.ours[i]));
    }
}

fn bench_watcher(c: &mut Criterion) {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/7.2.13+deb14-cloud-amd64/child/memory.events.local");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(&fixture, tmp.path().join("memory.events.local")).unwrap();
    let cg = CgroupFs::from_dir_unchecked(tmp.path()).root().unwrap();

    let mut g = c.benchmark_group("watcher_event");
    {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap();
        g.bench_function("baseline", |b| {
            b.iter(|| {
                signal(fd.as_fd());
                drain(fd.as_fd());
            })
        });
    }
    for n in SIZES {
        let watch = MemoryEventsWatch::open(&cg, Scope::Local).unwrap();
        let mut s = Setup::new(n, watch);
        g.bench_with_input(BenchmarkId::new("dispatch_and_reread", n), &n, |b, _| {
            b.iter(|| {
                s.signal_next();
                let i = s.handle();
                s.reset(i);
            })
        });
        g.bench_with_input(BenchmarkId::new("signal", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let t0 = Instant::now();
                    s.signal_next();
                    t += t0.elapsed();
                    let i = s.handle();
                    s.reset(i);
                }
                t
            })
        });
        g.bench_with_input(BenchmarkId::new("dispatch", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    s.signal_next();
                    let t0 = Instant::now();
                    let i = s.dispatch();
                    t += t0.elapsed();
                    s.reread();
                    s.reset(i);
                }
                t
            })
        });
        g.bench_with_input(BenchmarkId::new("handle", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    s.signal_next();
                    let t0 = Instant::now();
                    let i = s.handle();
                    t += t0.elapsed();
                    s.reset(i);
                }
                t
            })
        });
    }
    g.finish();
}

/// Decides nothing; the events of this bench start no episode anyway.
struct Idle;

impl Handler for Idle {
    fn name(&self) -> &'static str {
        "idle"
    }
    fn decide(&mut self, _view: &mut View<'_>, _plan: &mut Plan) {}
}

/// `memory.events.local` with `low` at `low` (fixed width, so a rewrite in
/// place replaces the whole file).
fn events_local(low: u64) -> String {
    format!("low {low:012}\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n")
}

/// The files the runner reads of a cgroup.
fn cgroup_dir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in [
        ("cgroup.procs", ""),
        ("memory.current", "1048576\n"),
        ("memory.max", "max\n"),
        ("memory.high", "max\n"),
        ("cgroup.events", "populated 0\nfrozen 0\n"),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    std::fs::write(dir.join("memory.events.local"), events_local(0)).unwrap();
}

/// Rewrites `memory.events.local` of child `k` in place (`IN_MODIFY`).
fn bump(root: &Path, k: usize, low: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join(format!("c{k}/memory.events.local")))
        .unwrap();
    f.write_all_at(events_local(low).as_bytes(), 0).unwrap();
}

/// True when the runner's epoll fd has nothing ready: the inotify queue
/// was read.
fn settled(runner: &Runner) -> bool {
    let mut fds = [PollFd::new(runner, PollFlags::IN)];
    rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())).unwrap() == 0
}

fn bench_runner(c: &mut Criterion) {
    let mut g = c.benchmark_group("runner_event");
    for n in SIZES {
        // tmpfs when there is one: in memory like kernfs, and creating
        // 10,000 directories there takes a second, not a minute.
        let shm = Path::new("/dev/shm");
        let tmp = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let root = tmp.path();
        cgroup_dir(root);
        for k in 0..n {
            cgroup_dir(&root.join(format!("c{k}")));
        }
        let mut cfg = RunnerConfig::new(root);
        cfg.engine.max_cgroups = n + 64;
        cfg.engine.max_processes = 64;
        let fs = CgroupFs::from_dir_unchecked(root);
        let mut runner = Runner::with_fs(cfg, Box::new(Idle), fs).unwrap();
        while !settled(&runner) {
            runner.run_once(Some(Duration::ZERO)).unwrap();
        }
        assert_eq!(runner.engine().tree().len(), n + 1, "every child followed");
        let (mut k, mut low) = (0usize, 0u64);
        g.bench_with_input(BenchmarkId::new("memory_events_local", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    k = (k + 7919) % n;
                    low += 1;
                    bump(root, k, low);
                    let t0 = Instant::now();
                    black_box(runner.run_once(Some(Duration::ZERO)).unwrap());
                    t += t0.elapsed();
                    assert!(settled(&runner), "the event was not read");
                }
                t
            })
        });
        assert_eq!(runner.engine().stats().episodes, 0, "no episode started");
    }
    g.finish();
}

criterion_group!(benches, bench_watcher, bench_runner);
criterion_main!(benches);
