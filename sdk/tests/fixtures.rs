//! Parser tests on files captured from real kernels (`cargo xtask fixtures`
//! boots each Debian kernel in qemu and dumps them into `sdk/fixtures/`).
//!
//! The assertions encode what differs between kernels: a counter an older
//! kernel lacks must parse as `None`, never as 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use oomkit::cgroup::parse;

fn kernels() -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("child").is_dir())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    v.sort();
    assert!(
        v.len() >= 4,
        "fixtures from at least four kernels, found {v:?}"
    );
    v
}

fn major_minor(release: &str) -> (u32, u32) {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let a = it.next().and_then(|s| s.parse().ok()).unwrap();
    let b = it.next().and_then(|s| s.parse().ok()).unwrap();
    (a, b)
}

fn read(dir: &Path, name: &str) -> Option<Vec<u8>> {
    std::fs::read(dir.join(name)).ok()
}

#[test]
fn memory_events_per_kernel() {
    for (rel, dir) in kernels() {
        let ver = major_minor(&rel);
        for name in ["memory.events", "memory.events.local"] {
            let data =
                read(&dir.join("child"), name).unwrap_or_else(|| panic!("{rel}: {name} missing"));
            let ev = parse::memory_events(&data).unwrap_or_else(|e| panic!("{rel}/{name}: {e}"));
            for (k, v) in [
                ("low", ev.low),
                ("high", ev.high),
                ("max", ev.max),
                ("oom", ev.oom),
                ("oom_kill", ev.oom_kill),
            ] {
                assert!(
                    v.is_some(),
                    "{rel}/{name}: `{k}` must be present on every kernel"
                );
            }
            assert_eq!(
                ev.oom_group_kill.is_some(),
                ver >= (5, 17),
                "{rel}/{name}: oom_group_kill exists from 5.17"
            );
        }
        // The capture ran an allocation into memory.max: the counters show it.
        let ev = parse::memory_events(&read(&dir.join("child"), "memory.events").unwrap()).unwrap();
        assert!(ev.max.unwrap_or(0) > 0, "{rel}: the capture hit memory.max");
    }
}

#[test]
fn memory_stat_per_kernel() {
    for (rel, dir) in kernels() {
        let ver = major_minor(&rel);
        let data = read(&dir.join("child"), "memory.stat").unwrap();
        let st = parse::memory_stat(&data).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(
            st.anon.is_some() && st.file.is_some(),
            "{rel}: anon and file"
        );
        assert!(
            st.pgscan.is_some() && st.pgsteal.is_some(),
            "{rel}: pgscan/pgsteal in all"
        );
        assert_eq!(
            st.pgscan_direct.is_some(),
            ver >= (6, 1),
            "{rel}: pgscan_direct from 6.1"
        );
        // Every line is either typed or kept: nothing is lost.
        let lines = data
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        let typed = [
            st.anon,
            st.file,
            st.kernel,
            st.kernel_stack,
            st.pagetables,
            st.sock,
            st.shmem,
            st.file_dirty,
            st.file_writeback,
            st.inactive_anon,
            st.active_anon,
            st.inactive_file,
            st.active_file,
            st.unevictable,
            st.slab_reclaimable,
            st.slab_unreclaimable,
            st.slab,
            st.zswap,
            st.pgscan,
            st.pgsteal,
            st.pgscan_kswapd,
            st.pgscan_direct,
            st.pgsteal_kswapd,
            st.pgsteal_direct,
            st.pgfault,
            st.pgmajfault,
            st.workingset_refault_anon,
            st.workingset_refault_file,
            st.pswpin,
            st.pswpout,
        ]
        .iter()
        .filter(|v| v.is_some())
        .count();
        assert_eq!(
            typed + st.other.len(),
            lines,
            "{rel}: every key typed or kept"
        );
    }
}

#[test]
fn limits_pressure_and_events_parse_everywhere() {
    for (rel, dir) in kernels() {
        let child = dir.join("child");
        for name in [
            "memory.min",
            "memory.low",
            "memory.high",
            "memory.max",
            "memory.swap.max",
        ] {
            if let Some(d) = read(&child, name) {
                parse::limit(&d).unwrap_or_else(|e| panic!("{rel}/{name}: {e}"));
            }
        }
        for name in ["memory.current", "memory.swap.current"] {
            parse::single_u64(&read(&child, name).unwrap())
                .unwrap_or_else(|e| panic!("{rel}/{name}: {e}"));
        }
        parse::bool01(&read(&child, "memory.oom.group").unwrap()).unwrap();
        let p = parse::pressure(&read(&child, "memory.pressure").unwrap())
            .unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(p.full.is_some(), "{rel}: memory PSI has a full line");
        let ev = parse::cgroup_events(&read(&child, "cgroup.events").unwrap()).unwrap();
        assert!(
            ev.populated.is_some() && ev.frozen.is_some(),
            "{rel}: populated and frozen"
        );
        let mut pids = Vec::new();
        parse::pids_into(&read(&child, "cgroup.procs").unwrap_or_default(), &mut pids).unwrap();
        // Root: only stat and pressure among the memory files.
        let root = dir.join("root");
        assert!(
            read(&root, "memory.current").is_none(),
            "{rel}: the root has no memory.current"
        );
        parse::memory_stat(&read(&root, "memory.stat").unwrap()).unwrap();
        parse::pressure(&read(&root, "memory.pressure").unwrap()).unwrap();
    }
}

#[test]
fn files_present_match_kernel_notes() {
    for (rel, dir) in kernels() {
        let ver = major_minor(&rel);
        let child = dir.join("child");
        // Write-only files are listed in the MANIFEST (they cannot be read).
        let manifest = std::fs::read_to_string(dir.join("MANIFEST")).unwrap();
        let has = |n: &str| {
            child.join(n).exists()
                || manifest
                    .lines()
                    .any(|l| l.starts_with(&format!("child/{n} ")))
        };
        assert_eq!(has("cgroup.kill"), ver >= (5, 14), "{rel}: cgroup.kill");
        assert_eq!(has("memory.peak"), ver >= (5, 19), "{rel}: memory.peak");
        assert_eq!(
            has("memory.reclaim"),
            ver >= (5, 19),
            "{rel}: memory.reclaim"
        );
        assert_eq!(
            has("memory.swap.peak"),
            ver >= (6, 5),
            "{rel}: memory.swap.peak"
        );
        if let Some(d) = read(&child, "memory.peak") {
            assert!(
                parse::single_u64(&d).unwrap() > 0,
                "{rel}: the capture allocated"
            );
        }
    }
}
