//! `AsyncWatcher` on the tokio reactor, with eventfds and a directory watch.
#![cfg(feature = "tokio")]
// A test crate: its helper functions (outside `#[test]`) may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::time::Duration;

use oomkit::events::{
    AsyncWatcher, DirWatch, DirWatchOptions, EventKind, Interest, Source, Token, Watcher,
};
use rustix::event::{EventfdFlags, eventfd};

fn kick(fd: impl AsFd) {
    rustix::io::write(fd, &1u64.to_ne_bytes()).unwrap();
}

/// Fails the test instead of hanging if the reactor never wakes us.
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("no batch within 10 s")
}

#[tokio::test]
async fn eventfd_wakes_the_async_watcher() {
    let mut w = Watcher::with_capacity(4).unwrap();
    let t = w
        .add_fd(
            eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap(),
            Interest::READABLE,
            Token(3),
        )
        .unwrap();
    let mut aw = AsyncWatcher::new(w).unwrap();
    // Signal from another thread while the task is parked in the reactor.
    let fd = aw.get_ref().fd(t).unwrap().try_clone_to_owned().unwrap();
    let th = std::thread::spawn(move || kick(&fd));
    let batch = bounded(aw.next_batch()).await.unwrap();
    assert_eq!(batch.len(), 1);
    assert_eq!(batch.as_slice()[0].token, t);
    assert!(matches!(batch.as_slice()[0].kind, EventKind::Fd(r) if r.readable));
    th.join().unwrap();
    let mut b = [0u8; 8];
    rustix::io::read(aw.get_mut().fd(t).unwrap(), &mut b).unwrap();
    // Nothing ready now: a second next_batch must wait for a new kick.
    kick(aw.get_ref().fd(t).unwrap());
    let batch = bounded(aw.next_batch()).await.unwrap();
    assert_eq!(batch.len(), 1);
}

#[tokio::test]
async fn buffered_directory_events_come_without_a_new_wakeup() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Watcher::with_capacity(1).unwrap(); // batches of 8
    w.add(Source::Dir(
        DirWatch::open_path(tmp.path(), DirWatchOptions::default()).unwrap(),
    ))
    .unwrap();
    let mut aw = AsyncWatcher::new(w).unwrap();
    let want: BTreeSet<String> = (0..20).map(|i| format!("c{i}")).collect();
    for n in &want {
        std::fs::create_dir(tmp.path().join(n)).unwrap();
    }
    let mut got = BTreeSet::new();
    while got.len() < want.len() {
        let batch = bounded(aw.next_batch()).await.unwrap();
        assert!(batch.len() <= 8);
        for ev in batch {
            let EventKind::Dir(d) = ev.kind else {
                panic!("{ev:?}")
            };
            got.insert(d.name.to_string());
        }
    }
    assert_eq!(got, want);
    assert!(aw.get_mut().poll_ready().unwrap().is_empty());
    let w = aw.into_inner();
    assert_eq!(w.len(), 1);
}
