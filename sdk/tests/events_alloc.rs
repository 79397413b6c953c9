//! After warm-up, `Watcher::wait` returning events from an eventfd, a pipe
//! and directory watches (including a recursive one that starts watching a
//! new subdirectory), plus a `MemoryEventsWatch` re-read through its
//! refresh path, make no heap allocation.
//!
//! A counting global allocator counts allocations made by this thread while
//! a flag is set. This file holds a single test so no other test thread can
//! interfere, and the flag is thread-local anyway.
#![allow(unsafe_code)]
// the shared counting allocator
// A test crate: its helper functions (outside `#[test]`) may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use oomkit::cgroup::{CgroupFs, MemoryEventKind};
use oomkit::events::{
    DirChange, DirWatch, DirWatchOptions, EventKind, Interest, MemoryEventsWatch, Scope, Source,
    Token, Watcher,
};
use rustix::event::{EventfdFlags, eventfd};

#[path = "common/counting.rs"]
mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

/// Runs `f`, returning how many allocations this thread made meanwhile.
fn allocations<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let (r, n) = counting::count(f);
    (n, r)
}

#[derive(Debug, Default, PartialEq)]
struct Seen {
    fd: usize,
    pipe: usize,
    created: usize,
    nested_created: usize,
    other: usize,
}

#[test]
fn wait_and_rereads_do_not_allocate_after_warm_up() {
    // The counter must be able to see an allocation at all.
    let (n, v) = allocations(|| vec![1u8; 16]);
    assert!(
        n >= 1 && v.len() == 16,
        "the counting allocator is not in use"
    );

    let tmp = tempfile::tempdir().unwrap();
    let flat = tmp.path().join("flat");
    let deep = tmp.path().join("deep");
    std::fs::create_dir(&flat).unwrap();
    std::fs::create_dir(&deep).unwrap();
    let ev_file = tmp.path().join("memory.events");
    std::fs::write(&ev_file, "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n").unwrap();
    let cg = CgroupFs::from_dir_unchecked(tmp.path()).root().unwrap();
    let mut mem = MemoryEventsWatch::open(&cg, Scope::Hierarchical).unwrap();

    let mut w = Watcher::with_capacity(8).unwrap();
    let wake = w
        .add_fd(
            eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap(),
            Interest::READABLE,
            Token(1),
        )
        .unwrap();
    let (pr, pw) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let pipe = w.add_fd(pr, Interest::READABLE, Token(2)).unwrap();
    let flat_t = w
        .add_with_token(
            Source::Dir(DirWatch::open_path(&flat, DirWatchOptions::default()).unwrap()),
            Token(3),
        )
        .unwrap();
    let deep_t = w
        .add_with_token(
            Source::Dir(
                DirWatch::open_path(
                    &deep,
                    DirWatchOptions {
                        depth: 2,
                        ..Default::default()
                    },
                )
                .unwrap(),
            ),
            Token(4),
        )
        .unwrap();

    let mut round = |i: usize, check: bool| {
        // Outside the counted region: the test's own syscall wrappers
        // (std::fs builds C strings on the heap).
        rustix::io::write(w.fd(wake).unwrap(), &1u64.to_ne_bytes()).unwrap();
        rustix::io::write(&pw, b"x").unwrap();
        std::fs::create_dir(flat.join(format!("c{i}"))).unwrap();
        // A new child of a depth-2 watch: the watcher adds an inotify watch
        // for it and lists it, all on the stack.
        std::fs::create_dir(deep.join(format!("p{i}"))).unwrap();
        std::fs::create_dir(deep.join(format!("p{i}/q"))).unwrap();
        std::fs::write(
            &ev_file,
            format!("low 0\nhigh {}\nmax 0\noom 0\noom_kill {i}\n", 10 * (i + 1)),
        )
        .unwrap();

        let (n, (seen, change)) = allocations(|| {
            let mut seen = Seen::default();
            // Keep waiting until every source has reported (the nested
            // child comes from a listing made while servicing the first
            // event).
            for _ in 0..4 {
                let evs = w.wait(Some(Duration::from_secs(10))).unwrap();
                for ev in evs {
                    match ev.kind {
                        // Level-triggered and drained only after the
                        // counted region: may be reported by several waits.
                        EventKind::Fd(_) if ev.token == wake => seen.fd = 1,
                        EventKind::Fd(_) if ev.token == pipe => seen.pipe = 1,
                        EventKind::Dir(d)
                            if d.change == DirChange::Created && ev.token == flat_t =>
                        {
                            seen.created += 1
                        }
                        EventKind::Dir(d)
                            if d.change == DirChange::Created && ev.token == deep_t =>
                        {
                            seen.nested_created += 1
                        }
                        _ => seen.other += 1,
                    }
                }
                if seen.fd > 0 && seen.pipe > 0 && seen.created > 0 && seen.nested_created >= 2 {
                    break;
                }
            }
            (seen, mem.refresh().unwrap())
        });
        // Drain the level-triggered fds for the next round (uncounted).
        let mut b = [0u8; 8];
        rustix::io::read(w.fd(wake).unwrap(), &mut b).unwrap();
        rustix::io::read(w.fd(pipe).unwrap(), &mut b).unwrap();

        assert_eq!(
            seen,
            Seen {
                fd: 1,
                pipe: 1,
                created: 1,
                nested_created: 2,
                other: 0
            },
            "round {i}"
        );
        let change = change.expect("memory.events changed");
        assert_eq!(change.rose_by(MemoryEventKind::High), 10);
        if check {
            assert_eq!(n, 0, "round {i}: {n} heap allocations in wait/refresh");
        }
    };
    // Warm-up (first-use initialisation anywhere below us), then measure.
    round(0, false);
    for i in 1..4 {
        round(i, true);
    }
}
