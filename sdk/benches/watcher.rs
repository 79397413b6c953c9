//! The watcher's cost per event with N sources watched (10 … 10,000).
//!
//! kernfs files cannot be polled on the host (its memory controller is
//! cgroup v1, and epoll refuses plain files), so eventfds stand in for the
//! `memory.events.local` fds: one of N is signalled, [`Watcher::wait`]
//! dispatches it, and the re-read/diff path of the signalled cgroup runs
//! ([`MemoryEventsWatch::refresh`] on a synthetic `memory.events.local`
//! holding the 7.2 kernel's file). The runner's token → cgroup lookup (a
//! `HashMap`) is included. Goal: the cost does not grow with N.
//!
//! `baseline` is the eventfd write + read alone (the stand-in's own cost,
//! not the watcher's).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use oomkit::cgroup::CgroupFs;
use oomkit::events::{EventKind, Interest, MemoryEventsWatch, Scope, Token, Watcher};
use rustix::event::{EventfdFlags, eventfd};

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

fn bench_watcher(c: &mut Criterion) {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/7.2.13+deb14-cloud-amd64/child/memory.events.local");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(&fixture, tmp.path().join("memory.events.local")).unwrap();
    let cg = CgroupFs::from_dir_unchecked(tmp.path()).root().unwrap();
    let mut watch = MemoryEventsWatch::open(&cg, Scope::Local).unwrap();

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
        let mut w = Watcher::with_capacity(n + 8).unwrap();
        let mut ours = Vec::with_capacity(n);
        let mut bindings: HashMap<Token, usize> = HashMap::with_capacity(n);
        for i in 0..n {
            let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap();
            ours.push(fd.as_raw_fd());
            let t = w.add_fd(fd, Interest::READABLE, Token(i as u64)).unwrap();
            bindings.insert(t, i);
        }
        let mut k = 0usize;
        g.bench_with_input(BenchmarkId::new("dispatch_and_reread", n), &n, |b, &n| {
            b.iter(|| {
                // Rotate through every source, so a large N is not served
                // from one hot cache line.
                k = (k + 7919) % n;
                signal(borrow(ours[k]));
                let evs = w.wait(Some(Duration::ZERO)).unwrap();
                assert_eq!(evs.len(), 1);
                let ev = evs.as_slice()[0];
                assert!(matches!(ev.kind, EventKind::Fd(_)));
                let i = *bindings.get(&ev.token).unwrap();
                drain(borrow(ours[i]));
                black_box(watch.refresh().unwrap());
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_watcher);
criterion_main!(benches);
