//! `DirWatch` with real inotify on a temporary directory (inotify works on
//! any filesystem; mkdir/rmdir queue their events before returning, so no
//! sleeping is needed: a bounded wait returns at once).
// A test crate: its helper functions (outside `#[test]`) may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use oomkit::cgroup::CgroupFs;
use oomkit::events::{
    DirChange, DirEvent, DirId, DirWatch, DirWatchOptions, Event, EventKind, Source, Token, Watcher,
};

#[path = "common/skip.rs"]
mod skip;

const BOUND: Option<Duration> = Some(Duration::from_secs(10));

fn opts(depth: u32) -> DirWatchOptions {
    DirWatchOptions {
        depth,
        ..Default::default()
    }
}

fn dir_events(evs: &[Event]) -> Vec<(DirChange, u32, String)> {
    evs.iter()
        .map(|e| match e.kind {
            EventKind::Dir(DirEvent {
                change,
                depth,
                name,
                ..
            }) => (change, depth, name.to_string()),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

fn wait_some(w: &mut Watcher) -> Vec<Event> {
    let evs = w.wait(BOUND).unwrap();
    assert!(!evs.is_empty(), "no event within the bound");
    evs.as_slice().to_vec()
}

#[test]
fn children_created_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = CgroupFs::from_dir_unchecked(tmp.path()).root().unwrap();
    let mut w = Watcher::with_capacity(4).unwrap();
    let t = w.add_dir_watch(&cg, opts(1)).unwrap();
    assert!(w.poll_ready().unwrap().is_empty());

    std::fs::create_dir(tmp.path().join("docker-1.scope")).unwrap();
    // Files are not children.
    std::fs::write(tmp.path().join("memory.max"), b"max\n").unwrap();
    let evs = wait_some(&mut w);
    assert!(evs.iter().all(|e| e.token == t));
    assert_eq!(
        dir_events(&evs),
        vec![(DirChange::Created, 1, "docker-1.scope".to_owned())]
    );
    match evs[0].kind {
        EventKind::Dir(ev) => assert_eq!(ev.parent, DirId::ROOT),
        _ => unreachable!(),
    }
    // Grandchildren are outside depth 1.
    std::fs::create_dir(tmp.path().join("docker-1.scope/inner")).unwrap();
    assert!(w.poll_ready().unwrap().is_empty());

    std::fs::remove_dir(tmp.path().join("docker-1.scope/inner")).unwrap();
    std::fs::remove_dir(tmp.path().join("docker-1.scope")).unwrap();
    std::fs::remove_file(tmp.path().join("memory.max")).unwrap();
    let evs = wait_some(&mut w);
    assert_eq!(
        dir_events(&evs),
        vec![(DirChange::Removed, 1, "docker-1.scope".to_owned())]
    );
    assert!(w.poll_ready().unwrap().is_empty());
}

#[test]
fn renames_are_removal_plus_creation() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("old")).unwrap();
    let mut w = DirWatch::open_path(tmp.path(), opts(1)).unwrap();
    std::fs::rename(tmp.path().join("old"), tmp.path().join("new")).unwrap();
    let mut got = Vec::new();
    while let Some(EventKind::Dir(ev)) = w.next_event() {
        got.push((ev.change, ev.name.to_string()));
    }
    assert_eq!(
        got,
        vec![
            (DirChange::Removed, "old".to_owned()),
            (DirChange::Created, "new".to_owned())
        ]
    );
}

#[test]
fn recursive_watch_follows_new_subtrees() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Watcher::with_capacity(4).unwrap();
    let t = w
        .add(Source::Dir(
            DirWatch::open_path(tmp.path(), opts(2)).unwrap(),
        ))
        .unwrap();
    std::fs::create_dir(tmp.path().join("pod")).unwrap();
    let evs = wait_some(&mut w);
    assert_eq!(
        dir_events(&evs),
        vec![(DirChange::Created, 1, "pod".to_owned())]
    );
    // The new child is now watched: its children are reported at depth 2,
    // with a parent id that resolves to its path.
    std::fs::create_dir(tmp.path().join("pod/ctr-a")).unwrap();
    let evs = wait_some(&mut w);
    assert_eq!(
        dir_events(&evs),
        vec![(DirChange::Created, 2, "ctr-a".to_owned())]
    );
    let EventKind::Dir(ev) = evs[0].kind else {
        unreachable!()
    };
    let Some(Source::Dir(d)) = w.source(t) else {
        panic!("source kind")
    };
    assert_eq!(d.rel_path(ev.parent).unwrap(), Path::new("pod"));
    assert_eq!(d.watched_dirs(), 2);
    // Depth 3 is not reported.
    std::fs::create_dir(tmp.path().join("pod/ctr-a/x")).unwrap();
    assert!(w.poll_ready().unwrap().is_empty());

    // Removing the subtree: the nested watch is dropped with it.
    std::fs::remove_dir(tmp.path().join("pod/ctr-a/x")).unwrap();
    std::fs::remove_dir(tmp.path().join("pod/ctr-a")).unwrap();
    std::fs::remove_dir(tmp.path().join("pod")).unwrap();
    let mut all = Vec::new();
    loop {
        let evs = w.poll_ready().unwrap();
        if evs.is_empty() {
            break;
        }
        all.extend(dir_events(evs.as_slice()));
    }
    assert_eq!(
        all,
        vec![
            (DirChange::Removed, 2, "ctr-a".to_owned()),
            (DirChange::Removed, 1, "pod".to_owned())
        ]
    );
    let Some(Source::Dir(d)) = w.source(t) else {
        panic!("source kind")
    };
    assert_eq!(d.watched_dirs(), 1);
}

#[test]
fn subtree_created_before_the_nested_watch_is_found_by_listing() {
    // mkdir pod && mkdir pod/ctr before we read the first event: inotify on
    // "pod" did not exist yet when "ctr" was created, so only listing the
    // new directory finds it. It must be reported exactly once.
    let tmp = tempfile::tempdir().unwrap();
    let mut w = DirWatch::open_path(tmp.path(), opts(3)).unwrap();
    std::fs::create_dir_all(tmp.path().join("pod/ctr/leaf")).unwrap();
    let mut got = Vec::new();
    while let Some(ev) = w.next_event() {
        let EventKind::Dir(ev) = ev else {
            panic!("unexpected {ev:?}")
        };
        got.push((ev.change, ev.depth, ev.name.to_string()));
    }
    assert_eq!(
        got,
        vec![
            (DirChange::Created, 1, "pod".to_owned()),
            (DirChange::Created, 2, "ctr".to_owned()),
            (DirChange::Created, 3, "leaf".to_owned()),
        ]
    );
    assert_eq!(
        w.watched_dirs(),
        3,
        "root, pod and ctr; leaf is at max depth"
    );
}

#[test]
fn existing_children_reported_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    for d in ["a", "b", "b/c"] {
        std::fs::create_dir(tmp.path().join(d)).unwrap();
    }
    std::fs::write(tmp.path().join("file"), b"").unwrap();
    let mut w = DirWatch::open_path(
        tmp.path(),
        DirWatchOptions {
            depth: 2,
            report_existing: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(w.has_pending());
    let mut got = BTreeSet::new();
    while let Some(EventKind::Dir(ev)) = w.next_event() {
        assert_eq!(ev.change, DirChange::Created);
        got.insert((ev.depth, ev.name.to_string()));
    }
    let want: BTreeSet<_> = [(1, "a"), (1, "b"), (2, "c")]
        .into_iter()
        .map(|(d, n)| (d, n.to_owned()))
        .collect();
    assert_eq!(got, want);

    // Without report_existing, an existing subtree is watched silently.
    let mut w = DirWatch::open_path(tmp.path(), opts(2)).unwrap();
    assert_eq!(w.next_event(), None);
    std::fs::create_dir(tmp.path().join("b/d")).unwrap();
    let Some(EventKind::Dir(ev)) = w.next_event() else {
        panic!("no event")
    };
    assert_eq!((ev.depth, ev.name.to_string()), (2, "d".to_owned()));
}

#[test]
fn own_queue_overflow_is_reported_not_grown() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..5 {
        std::fs::create_dir(tmp.path().join(format!("c{i}"))).unwrap();
    }
    let mut w = DirWatch::open_path(
        tmp.path(),
        DirWatchOptions {
            depth: 1,
            report_existing: true,
            queue: 2,
            max_dirs: 4,
        },
    )
    .unwrap();
    let mut kinds = Vec::new();
    while let Some(ev) = w.next_event() {
        kinds.push(ev);
    }
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert!(matches!(kinds[0], EventKind::Dir(_)));
    assert!(matches!(kinds[1], EventKind::Dir(_)));
    assert_eq!(kinds[2], EventKind::DirOverflow);
}

#[test]
fn kernel_queue_overflow_asks_for_a_rescan() {
    let max: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16384);
    if max > 100_000 {
        return skip::skip(&format!(
            "/proc/sys/fs/inotify/max_queued_events is {max}, too many to overflow quickly"
        ));
    }
    // tmpfs when available: 16k mkdirs are much faster there than on disk.
    let tmp = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let mut w = Watcher::with_capacity(4).unwrap();
    let cg = CgroupFs::from_dir_unchecked(tmp.path()).root().unwrap();
    let t = w.add_dir_watch(&cg, opts(1)).unwrap();
    for i in 0..=max {
        std::fs::create_dir(tmp.path().join(i.to_string())).unwrap();
    }
    let mut created = 0usize;
    let mut overflow = false;
    loop {
        let evs = w.poll_ready().unwrap();
        if evs.is_empty() {
            break;
        }
        for e in evs {
            assert_eq!(e.token, t);
            match e.kind {
                EventKind::Dir(_) => created += 1,
                EventKind::DirOverflow => overflow = true,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(overflow, "IN_Q_OVERFLOW not reported");
    assert!(created <= max, "{created} events but the queue holds {max}");
}

#[test]
fn batches_are_bounded_and_nothing_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Watcher::with_capacity(1).unwrap(); // batches of 8 events
    w.add(Source::Dir(
        DirWatch::open_path(tmp.path(), opts(1)).unwrap(),
    ))
    .unwrap();
    let want: BTreeSet<String> = (0..20).map(|i| format!("d{i:02}")).collect();
    for n in &want {
        std::fs::create_dir(tmp.path().join(n)).unwrap();
    }
    let mut sizes = Vec::new();
    let mut got = BTreeSet::new();
    loop {
        // A bounded (not zero) timeout: buffered events must come back
        // without waiting for the kernel.
        let evs = w.wait(Some(Duration::from_secs(30))).unwrap();
        if evs.is_empty() {
            panic!("waited with events still buffered");
        }
        sizes.push(evs.len());
        for (_, _, n) in dir_events(evs.as_slice()) {
            got.insert(n);
        }
        if got.len() == want.len() {
            break;
        }
    }
    assert_eq!(got, want);
    assert_eq!(sizes, vec![8, 8, 4]);
    assert!(w.poll_ready().unwrap().is_empty());
}

#[test]
fn removal_of_the_watched_directory_is_gone_and_deregisters() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("victim");
    std::fs::create_dir(&target).unwrap();
    let mut w = Watcher::with_capacity(4).unwrap();
    // Through a path: nobody holds the directory open, so the kernel sends
    // IN_DELETE_SELF as soon as it is removed.
    let t = w
        .add_with_token(
            Source::Dir(DirWatch::open_path(&target, opts(1)).unwrap()),
            Token(99),
        )
        .unwrap();
    std::fs::remove_dir(&target).unwrap();
    let evs = wait_some(&mut w);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].token, t);
    assert_eq!(evs[0].kind, EventKind::Gone);
    // No longer polled: nothing more, even though inotify still queues
    // IN_IGNORED.
    assert!(w.poll_ready().unwrap().is_empty());
    assert_eq!(w.len(), 1, "stays until removed");
    assert!(matches!(w.remove(t).unwrap(), Source::Dir(_)));
    assert!(w.is_empty());
}
