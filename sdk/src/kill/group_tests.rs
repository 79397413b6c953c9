//! [`members`]: the count of a subtree's processes that the group kill
//! makes before it writes `cgroup.kill`, on synthetic trees (plain files;
//! this test process stands in for every member, as a live PID whose
//! `oom_score_adj` can be read).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use super::{MEMBERS_FAST_DEPTH, Members, members};
use crate::cgroup::{Cgroup, CgroupFs};

/// A chain of `levels` cgroups below the target `t` (`t`, `t/c`, `t/c/c`,
/// …), each listing this process once; returns the temp dir, the target
/// and the deepest directory.
fn chain(levels: u32) -> (tempfile::TempDir, Cgroup, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let mut dir = d.path().join("t");
    let me = format!("{}\n", std::process::id());
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("cgroup.procs"), &me).unwrap();
    for _ in 0..levels {
        dir = dir.join("c");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), &me).unwrap();
    }
    let cg = CgroupFs::from_dir_unchecked(d.path())
        .open(d.path().join("t"))
        .unwrap();
    (d, cg, dir)
}

fn total(n: usize) -> Members {
    Members {
        total: n,
        unkillable: 0,
    }
}

#[test]
fn every_level_of_the_subtree_is_counted() {
    let (d, cg, _) = chain(3);
    // A sibling branch, and a PID that is no process (not counted).
    let side = d.path().join("t/side");
    std::fs::create_dir(&side).unwrap();
    std::fs::write(
        side.join("cgroup.procs"),
        format!("{}\n2147483646\n", std::process::id()),
    )
    .unwrap();
    assert_eq!(members(&cg).unwrap(), total(5));
}

#[test]
fn a_subtree_deeper_than_the_fast_walk_is_counted_whole() {
    let levels = MEMBERS_FAST_DEPTH + 4;
    let (_d, cg, _) = chain(levels);
    assert_eq!(members(&cg).unwrap(), total(levels as usize + 1));
}

#[test]
fn a_descendant_without_cgroup_procs_is_skipped_as_removed() {
    let (_d, cg, deepest) = chain(2);
    std::fs::remove_file(deepest.join("cgroup.procs")).unwrap();
    assert_eq!(members(&cg).unwrap(), total(2));
}

#[test]
fn a_malformed_descendant_is_an_error_naming_its_file() {
    let (_d, cg, deepest) = chain(2);
    std::fs::write(deepest.join("cgroup.procs"), "12x\n").unwrap();
    let e = members(&cg).unwrap_err().to_string();
    let file = Path::new("t/c/c/cgroup.procs");
    assert!(e.contains(&*file.to_string_lossy()), "{e}");
}

#[test]
fn the_target_gone_is_an_error() {
    let (d, cg, _) = chain(0);
    std::fs::remove_file(d.path().join("t/cgroup.procs")).unwrap();
    std::fs::remove_dir(d.path().join("t")).unwrap();
    assert!(members(&cg).unwrap_err().is_gone());
}
