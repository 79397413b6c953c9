//! Issue 10, defect 11: cgroup names are bytes. The kernel forbids only `/`
//! and NUL (and `\n` in cgroupfs), so a tenant can name a cgroup with
//! invalid UTF-8; such a subtree must stay visible, by its exact name,
//! through listing, opening and directory watching.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use oomkit::cgroup::CgroupFs;
use oomkit::events::{DirChange, DirWatch, DirWatchOptions, EventKind};

const BAD: &[u8] = b"job\xff\xfe ";

#[test]
fn non_utf8_child_names_are_listed_and_opened_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let bad = OsStr::from_bytes(BAD);
    std::fs::create_dir(dir.path().join(bad)).unwrap();
    std::fs::write(dir.path().join(bad).join("cgroup.procs"), "").unwrap();
    std::fs::create_dir(dir.path().join("ok")).unwrap();
    let fs = CgroupFs::from_dir_unchecked(dir.path());
    let root = fs.root().unwrap();
    let kids = root.children().unwrap();
    assert!(kids.iter().any(|k| k.as_bytes() == BAD), "{kids:?}");
    let c = root.child(bad).unwrap();
    assert_eq!(c.hierarchy_path().as_os_str().as_bytes(), b"/job\xff\xfe ");
    assert_eq!(c.procs().unwrap(), Vec::<i32>::new());
    // By hierarchy path too.
    let hp = Path::new(OsStr::from_bytes(b"/job\xff\xfe "));
    let c = fs.open_hierarchy(hp).unwrap();
    assert_eq!(c.hierarchy_path(), hp);
}

#[test]
fn dir_watch_reports_nested_non_utf8_paths_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = DirWatch::open_path(
        dir.path(),
        DirWatchOptions {
            depth: 2,
            ..DirWatchOptions::default()
        },
    )
    .unwrap();
    let bad = dir.path().join(OsStr::from_bytes(BAD));
    std::fs::create_dir(&bad).unwrap();
    std::fs::create_dir(bad.join("inner")).unwrap();
    let mut seen = Vec::new();
    while let Some(ev) = w.next_event() {
        if let EventKind::Dir(d) = ev {
            assert_eq!(d.change, DirChange::Created);
            let rel = w
                .rel_path(d.parent)
                .unwrap()
                .join(OsStr::from_bytes(d.name.as_bytes()));
            seen.push(rel);
        }
    }
    let want_inner = Path::new(OsStr::from_bytes(BAD)).join("inner");
    assert!(seen.iter().any(|p| p == &want_inner), "{seen:?}");
}
