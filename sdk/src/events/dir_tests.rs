//! DirWatch unit tests: names, paths built on the stack, the node indexes.

use super::*;

#[test]
fn child_names() {
    assert!(ChildName::new(b"").is_none());
    assert!(ChildName::new(b"a/b").is_none());
    assert!(ChildName::new(b"a\0b").is_none());
    assert!(ChildName::new(&[b'x'; NAME_MAX + 1]).is_none());
    let long = ChildName::new(&[b'x'; NAME_MAX]).unwrap();
    assert_eq!(long.as_bytes().len(), NAME_MAX);
    assert_eq!(long.as_c_str().to_bytes().len(), NAME_MAX);
    let n = ChildName::new(b"docker-abc.scope").unwrap();
    assert_eq!(n, "docker-abc.scope");
    assert_eq!(n.as_str(), Some("docker-abc.scope"));
    assert_eq!(n.as_c_str(), c"docker-abc.scope");
    assert_eq!(format!("{n:?}"), "\"docker-abc.scope\"");
}

#[test]
fn depth_is_validated() {
    let tmp = tempfile::tempdir().unwrap();
    for depth in [0, MAX_DEPTH + 1] {
        let e = DirWatch::open_path(
            tmp.path(),
            DirWatchOptions {
                depth,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    }
}

/// Issue 12: the (parent, name) and wd indexes replace scans of every
/// node (quadratic when 10,000 children are watched at depth 2); they
/// must stay right through removals, re-creations and equal names
/// under different parents.
#[test]
fn node_indexes_follow_removals_and_equal_names() {
    let tmp = tempfile::tempdir().unwrap();
    for p in ["a/x", "b/x", "c"] {
        std::fs::create_dir_all(tmp.path().join(p)).unwrap();
    }
    let mut w = DirWatch::open_path(
        tmp.path(),
        DirWatchOptions {
            depth: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(w.watched_dirs(), 6);
    let name = |s: &str| ChildName::new(s.as_bytes()).unwrap();
    let a = w.find_child(0, &name("a")).unwrap();
    let b = w.find_child(0, &name("b")).unwrap();
    let ax = w.find_child(a, &name("x")).unwrap();
    let bx = w.find_child(b, &name("x")).unwrap();
    assert_ne!(ax, bx);
    assert_eq!(w.rel_path(DirId(bx)).unwrap(), PathBuf::from("b/x"));
    assert!(w.find_child(0, &name("x")).is_none());
    for i in [a, b, ax, bx] {
        let wd = w.node(i).unwrap().wd;
        assert_eq!(w.find_wd(wd), Some(i));
    }
    // Removing a: its subtree leaves both indexes; b/x stays.
    std::fs::remove_dir(tmp.path().join("a/x")).unwrap();
    std::fs::remove_dir(tmp.path().join("a")).unwrap();
    while w.next_event().is_some() {}
    assert!(w.find_child(0, &name("a")).is_none());
    assert!(w.find_child(a, &name("x")).is_none());
    assert_eq!(w.find_child(b, &name("x")), Some(bx));
    assert_eq!(w.watched_dirs(), 4);
    // Re-created under the same name: found again, as a new watch.
    std::fs::create_dir_all(tmp.path().join("a/x")).unwrap();
    let mut created = 0;
    while let Some(ev) = w.next_event() {
        created += usize::from(matches!(ev, EventKind::Dir(d) if d.change == DirChange::Created));
    }
    assert!(created >= 2, "a and a/x reported");
    let a2 = w.find_child(0, &name("a")).unwrap();
    let ax2 = w.find_child(a2, &name("x")).unwrap();
    assert_eq!(w.rel_path(DirId(ax2)).unwrap(), PathBuf::from("a/x"));
    assert_eq!(w.watched_dirs(), 6);
}

#[test]
fn node_paths_are_built_on_the_stack() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("a/b")).unwrap();
    let w = DirWatch::open_path(
        tmp.path(),
        DirWatchOptions {
            depth: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(w.watched_dirs(), 3);
    let b = w
        .nodes
        .iter()
        .position(|n| n.as_ref().is_some_and(|n| n.depth == 2))
        .unwrap() as u32;
    let mut pb = [0u8; PATH_MAX];
    let p = w.node_path(&mut pb, b, None).unwrap();
    assert_eq!(
        p.to_str().unwrap(),
        tmp.path().join("a/b").to_str().unwrap()
    );
    assert_eq!(w.rel_path(DirId(b)).unwrap(), PathBuf::from("a/b"));
    assert_eq!(w.rel_path(DirId::ROOT).unwrap(), PathBuf::new());
}

/// The name table is compacted after a burst of removals, and the names
/// of the directories still watched survive it.
#[test]
fn name_table_is_compacted_after_removals() {
    let tmp = tempfile::tempdir().unwrap();
    let long = |i: usize| format!("kubepods-besteffort-pod{i:04}-0123456789abcdef.slice");
    for i in 0..200 {
        std::fs::create_dir(tmp.path().join(long(i))).unwrap();
    }
    let mut w = DirWatch::open_path(
        tmp.path(),
        DirWatchOptions {
            depth: 2,
            max_dirs: 256,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(w.watched_dirs(), 201);
    let before = w.names.len();
    for i in 0..150 {
        std::fs::remove_dir(tmp.path().join(long(i))).unwrap();
    }
    while w.next_event().is_some() {}
    assert_eq!(w.watched_dirs(), 51);
    assert!(
        w.names.len() < before / 2,
        "compacted: {} of {before} bytes",
        w.names.len()
    );
    for i in 150..200 {
        let name = ChildName::new(long(i).as_bytes()).unwrap();
        let idx = w.find_child(0, &name).unwrap();
        assert_eq!(w.rel_path(DirId(idx)).unwrap(), PathBuf::from(long(i)));
    }
}

/// A temporary tree of `dirs`, and a watch made on its root without a scan.
fn unscanned(dirs: &[&str], depth: u32) -> (tempfile::TempDir, DirWatch) {
    let tmp = tempfile::tempdir().unwrap();
    for p in dirs {
        std::fs::create_dir_all(tmp.path().join(p)).unwrap();
    }
    let root = crate::cgroup::CgroupFs::from_dir_unchecked(tmp.path())
        .root()
        .unwrap();
    let opts = DirWatchOptions {
        depth,
        ..Default::default()
    };
    let w = DirWatch::new_unscanned(&root, opts).unwrap();
    (tmp, w)
}

fn open_dir(p: &Path) -> OwnedFd {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

/// Issue 12: a watch made without a scan watches only its directory; the
/// caller adds each directory it opens, above the last level, once, under
/// a watched parent, and their children are reported from then on.
#[test]
fn directories_opened_by_the_caller_are_watched_through_their_fd() {
    let (tmp, mut w) = unscanned(&["a/b/c", "x/y"], 3);
    assert_eq!(w.watched_dirs(), 1, "the root alone");
    let open = |p: &str| open_dir(&tmp.path().join(p));
    let (a, ab, abc, xy) = (open("a"), open("a/b"), open("a/b/c"), open("x/y"));
    assert!(
        !w.watch_open_dir(Path::new("x/y"), xy.as_fd(), None),
        "x is not watched"
    );
    assert!(w.watch_open_dir(Path::new("a"), a.as_fd(), None));
    assert!(!w.watch_open_dir(Path::new("a"), a.as_fd(), None), "once");
    assert!(w.watch_open_dir(Path::new("a/b"), ab.as_fd(), None));
    assert!(
        !w.watch_open_dir(Path::new("a/b/c"), abc.as_fd(), None),
        "level 3 of 3: its children would not be reported"
    );
    assert!(!w.watch_open_dir(Path::new("../a"), a.as_fd(), None));
    assert_eq!(w.watched_dirs(), 3);
    let name = |s: &str| ChildName::new(s.as_bytes()).unwrap();
    let wa = w.find_child(0, &name("a")).unwrap();
    assert_eq!(
        w.rel_path(DirId(w.find_child(wa, &name("b")).unwrap()))
            .unwrap(),
        PathBuf::from("a/b")
    );
    // Its children are reported, with their path.
    std::fs::create_dir(tmp.path().join("a/b/new")).unwrap();
    let mut seen = Vec::new();
    while let Some(ev) = w.next_event() {
        if let EventKind::Dir(d) = ev {
            seen.push((
                d.change,
                w.rel_path(d.parent).unwrap().join(d.name.as_str().unwrap()),
            ));
        }
    }
    assert_eq!(seen, vec![(DirChange::Created, PathBuf::from("a/b/new"))]);
}

/// A directory opened under one name and watched, then renamed: adding it
/// again under its new name through the same fd gets inotify's existing
/// watch back, which stays with the node that has it.
#[test]
fn a_directory_watched_already_keeps_its_node() {
    let (tmp, mut w) = unscanned(&["a"], 2);
    let a = open_dir(&tmp.path().join("a"));
    assert!(w.watch_open_dir(Path::new("a"), a.as_fd(), None));
    std::fs::rename(tmp.path().join("a"), tmp.path().join("b")).unwrap();
    assert!(!w.watch_open_dir(Path::new("b"), a.as_fd(), None));
    assert_eq!(w.watched_dirs(), 2);
    let name = |s: &str| ChildName::new(s.as_bytes()).unwrap();
    let wa = w.find_child(0, &name("a")).unwrap();
    assert_eq!(
        w.find_wd(w.node(wa).unwrap().wd),
        Some(wa),
        "a keeps its watch"
    );
}
