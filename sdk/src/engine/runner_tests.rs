//! Runner tests on a synthetic cgroup tree (plain files in a temporary
//! folder): what the loop keeps in step with the tree and the config.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::DIR_CHANGES_PER_TURN;
use super::*;
use crate::engine::{CgroupMeta, Class, Plan, View, XattrTrust};

/// Protects cgroups whose path ends with `protect` (if set); decides nothing.
struct Classes {
    protect: Option<&'static str>,
}

impl Handler for Classes {
    fn name(&self) -> &'static str {
        "classes"
    }
    fn classify(&mut self, meta: &CgroupMeta<'_>) -> Class {
        let protected = self.protect.is_some_and(|p| meta.path.ends_with(p));
        Class {
            protected,
            ..meta.parent_class.unwrap_or_default()
        }
    }
    fn decide(&mut self, _view: &mut View<'_>, _plan: &mut Plan) {}
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// Writes `memory.events.local` of `dir` with `max` and `oom` at `max`.
fn events_local(dir: &Path, max: u64) {
    write(
        dir,
        "memory.events.local",
        &format!("low 0\nhigh 0\nmax {max}\noom {max}\noom_kill 0\n"),
    );
}

/// The files the loop reads of a cgroup.
pub(super) fn cgroup(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    write(dir, "cgroup.procs", "");
    write(dir, "memory.current", "1048576\n");
    write(dir, "memory.max", "max\n");
    write(dir, "memory.high", "max\n");
    write(dir, "cgroup.events", "populated 0\nfrozen 0\n");
}

pub(super) fn config(root: &Path) -> RunnerConfig {
    let mut cfg = RunnerConfig::new(root);
    // Plain files cannot be polled for POLLPRI; the directory watch is enough.
    cfg.memory_events = false;
    cfg.engine.max_cgroups = 64;
    cfg.engine.max_processes = 64;
    cfg
}

/// A temporary folder holding a synthetic root cgroup and the cgroups
/// `below` it (paths relative to the root, parents first), each with the
/// files the loop reads.
fn tree(below: &[&str]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    cgroup(tmp.path());
    for name in below {
        cgroup(&tmp.path().join(name));
    }
    tmp
}

/// The names `c0` … `c{n-1}`.
fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("c{i}")).collect()
}

/// A runner over the synthetic tree at `cfg.root`, protecting nothing.
fn start(cfg: RunnerConfig) -> Runner {
    let fs = CgroupFs::from_dir_unchecked(&cfg.root);
    Runner::with_fs(cfg, Box::new(Classes { protect: None }), fs).unwrap()
}

/// Turns the runner until `done` holds (or fails the test after 30 s).
pub(super) fn run_until(runner: &mut Runner, what: &str, mut done: impl FnMut(&Runner) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(runner) {
        assert!(Instant::now() < deadline, "never: {what}");
        runner.run_once(Some(Duration::from_millis(200))).unwrap();
    }
}

fn table(runner: &Runner) -> Vec<(PathBuf, bool)> {
    let wd = runner.watchdog.as_ref().unwrap();
    let t = wd.shared().targets.lock().unwrap();
    let mut v: Vec<(PathBuf, bool)> = t.iter().map(|t| (t.path.clone(), t.protected)).collect();
    v.sort();
    v
}

/// Issue 10, defect 9: a reload that protects a cgroup also protects it
/// from the watchdog, which keeps its own copy of the table.
#[test]
fn reload_republishes_the_watchdog_table() {
    let tmp = tree(&["job"]);
    let mut cfg = config(tmp.path());
    cfg.watchdog = Some(WatchdogConfig {
        timeout: Duration::from_secs(600),
    });
    let engine_cfg = cfg.engine.clone();
    let mut runner = start(cfg);
    run_until(&mut runner, "job added", |r| r.engine().tree().len() == 2);
    assert_eq!(
        table(&runner),
        vec![(PathBuf::from("/"), false), (PathBuf::from("/job"), false)]
    );
    runner
        .reload(
            Box::new(Classes {
                protect: Some("job"),
            }),
            engine_cfg,
        )
        .unwrap();
    assert_eq!(
        table(&runner),
        vec![(PathBuf::from("/"), false), (PathBuf::from("/job"), true)],
        "the watchdog still sees the old classes"
    );
}

fn rmdir(dir: &Path) {
    std::fs::remove_dir_all(dir).unwrap();
}

/// Issue 10, defect 5: the rescan after an inotify overflow reconciles:
/// cgroups gone meanwhile leave the tree (they held fds and stale entries).
#[test]
fn rescan_removes_what_is_gone() {
    let tmp = tree(&["a", "b", "b/c"]);
    let root = tmp.path();
    let mut runner = start(config(root));
    run_until(&mut runner, "tree known", |r| r.engine().tree().len() == 4);
    // Removed while the events are lost (the overflow case): rescan directly.
    rmdir(&root.join("b"));
    runner.rescan_pending();
    runner.apply_dir_changes();
    let tree = runner.engine().tree();
    assert!(tree.lookup(Path::new("/b")).is_none(), "stale /b kept");
    assert!(tree.lookup(Path::new("/b/c")).is_none(), "stale /b/c kept");
    assert!(tree.lookup(Path::new("/a")).is_some());
    assert_eq!(tree.len(), 2);
}

/// Issue 10, defect 5: a cgroup re-created at a known path (its removal
/// lost in an overflow) is bound to the new directory, not the dead one.
#[test]
fn a_recreated_cgroup_gets_a_fresh_handle() {
    let tmp = tree(&["a"]);
    let root = tmp.path();
    let mut runner = start(config(root));
    run_until(&mut runner, "tree known", |r| r.engine().tree().len() == 2);
    rmdir(&root.join("a"));
    cgroup(&root.join("a"));
    write(&root.join("a"), "memory.current", "2097152\n");
    // The Created event of the new directory, its Removed lost.
    runner
        .dir_changes
        .push((DirChange::Created, PathBuf::from("/a")));
    runner.apply_dir_changes();
    let id = runner.engine().tree().lookup(Path::new("/a")).unwrap();
    let cg = runner.engine().host().cgroup_shared(id).unwrap();
    assert_eq!(
        cg.memory_current().unwrap(),
        2 << 20,
        "bound to the dead directory"
    );
}

/// Issue 10, defect 12: the start-up walk and the rescan honour `depth`
/// (they used a hard-coded 16).
#[test]
fn rescan_honours_depth() {
    let tmp = tree(&["a", "a/b", "a/b/c", "a/b/c/d"]);
    let mut cfg = config(tmp.path());
    cfg.depth = 2;
    let mut runner = start(cfg);
    runner.rescan_pending();
    runner.apply_dir_changes();
    let tree = runner.engine().tree();
    assert!(tree.lookup(Path::new("/a/b")).is_some());
    assert!(tree.lookup(Path::new("/a/b/c")).is_none(), "below depth 2");
    assert_eq!(tree.len(), 3);
}

/// Issue 10, defect 4: a burst of directory changes is applied a bounded
/// number per turn (one turn took 4.29 s for 9,000 removals), the rest in
/// the following turns, which do not wait.
#[test]
fn directory_changes_are_applied_in_bounded_turns() {
    let tmp = tree(&[]);
    let root = tmp.path();
    let mut cfg = config(root);
    cfg.engine.max_cgroups = 4096;
    let mut runner = start(cfg);
    let n = DIR_CHANGES_PER_TURN * 2 + 10;
    for i in 0..n {
        let p = root.join(format!("c{i}"));
        std::fs::create_dir(&p).unwrap();
        write(&p, "cgroup.procs", "");
    }
    runner.rescan_pending();
    runner.apply_dir_changes();
    assert_eq!(runner.engine().tree().len(), 1 + DIR_CHANGES_PER_TURN);
    // The next turns pick up the rest at once (no waiting for an event).
    let t = Instant::now();
    run_until(&mut runner, "all added", |r| {
        r.engine().tree().len() == n + 1
    });
    assert!(t.elapsed() < Duration::from_secs(30));
    // Removal in one burst: every entry and every watchdog target goes.
    for i in 0..n {
        std::fs::remove_dir_all(root.join(format!("c{i}"))).unwrap();
    }
    run_until(&mut runner, "all removed", |r| r.engine().tree().len() == 1);
}

/// Issue 10, defect 14: an unresolvable own cgroup stops the start instead
/// of silently turning self-protection off.
#[test]
fn an_unknown_own_cgroup_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = CgroupFs::from_dir_unchecked(tmp.path());
    let mut host = KernelHost::new(fs, XattrTrust::TrustedOnly, 4, 4);
    assert!(
        check_own_cgroup(&host).is_ok(),
        "resolved from /proc/self/cgroup"
    );
    host.set_own_cgroup(None);
    let e = check_own_cgroup(&host).unwrap_err();
    assert!(e.to_string().contains("own cgroup"), "{e}");
}

/// Issue 10, defect 6: `max_cgroups` caps the tree (and so the fds held),
/// not only the snapshot: 3,000 tenant cgroups once used every fd and no
/// kill was possible. Beyond the cap cgroups stay untracked (with a
/// warning), and a group kill over them is refused.
#[test]
fn the_tree_is_capped_at_max_cgroups() {
    let names = numbered(10);
    let tmp = tree(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let root = tmp.path();
    let mut cfg = config(root);
    cfg.engine.max_cgroups = 4;
    let mut runner = start(cfg);
    runner.rescan_pending();
    runner.apply_dir_changes();
    assert_eq!(runner.engine().tree().len(), 4);
    assert_eq!(runner.untracked_over_cap(), 7);
}

/// Issue 12: `memory.events.local` is watched through one inotify fd (an
/// `IN_MODIFY` per change), not an fd per cgroup; a change of one cgroup's
/// counters is a trigger at that cgroup, and a removed cgroup's watch goes.
#[test]
fn memory_events_come_through_one_inotify_fd() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    cgroup(root);
    for name in ["a", "b", "c"] {
        cgroup(&root.join(name));
        events_local(&root.join(name), 0);
    }
    let mut cfg = config(root);
    cfg.memory_events = true;
    let mut runner = start(cfg);
    let id = |r: &Runner, name: &str| r.engine.tree().lookup(&Path::new("/").join(name)).unwrap();
    let (a, b) = (id(&runner, "a"), id(&runner, "b"));
    let local = runner.local.as_ref().unwrap();
    assert!(local.contains(a) && local.contains(b));
    assert!(
        runner.events_token.is_empty(),
        "no cgroup holds an fd for its events"
    );

    events_local(&root.join("b"), 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut triggered = Vec::new();
    while triggered.is_empty() {
        assert!(
            Instant::now() < deadline,
            "b's change never became a trigger"
        );
        let turn = runner.run_once(Some(Duration::from_millis(200))).unwrap();
        triggered.extend(turn.finished.iter().map(|ep| ep.trigger));
    }
    match triggered[0] {
        Trigger::MemoryEvents { cgroup, delta } => {
            assert_eq!(cgroup, b);
            assert_eq!(delta.max, Some(1));
        }
        other => panic!("unexpected trigger {other:?}"),
    }

    std::fs::remove_dir_all(root.join("a")).unwrap();
    run_until(&mut runner, "a removed", |r| {
        r.engine.tree().lookup(Path::new("/a")).is_none()
    });
    assert!(!runner.local.as_ref().unwrap().contains(a));
}

/// Issue 10, defect 6: at the cap, which cgroups are tracked goes by usage,
/// not by who came first: an untracked cgroup that grows takes the place
/// of the smallest tracked leaf (a tenant cannot hide a hog behind
/// thousands of empty cgroups made first).
#[test]
fn at_the_cap_a_larger_untracked_cgroup_takes_a_smaller_ones_place() {
    let names = numbered(10);
    let tmp = tree(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let root = tmp.path();
    let mut cfg = config(root);
    cfg.engine.max_cgroups = 4;
    let mut runner = start(cfg);
    runner.rescan_pending();
    runner.apply_dir_changes();
    let hier = runner.root_hier.clone();
    let big = (0..10)
        .map(|i| format!("c{i}"))
        .find(|n| runner.engine().tree().lookup(&hier.join(n)).is_none())
        .unwrap();
    // Equal usage everywhere: nothing moves.
    runner.next_rebalance = Instant::now();
    runner.rebalance_over_cap(Instant::now());
    assert!(runner.engine().tree().lookup(&hier.join(&big)).is_none());
    write(&root.join(&big), "memory.current", "104857600\n");
    runner.next_rebalance = Instant::now();
    runner.rebalance_over_cap(Instant::now());
    assert!(
        runner.engine().tree().lookup(&hier.join(&big)).is_some(),
        "the 100 MiB cgroup is tracked now"
    );
    assert_eq!(runner.engine().tree().len(), 4, "still at the cap");
    assert_eq!(runner.untracked_over_cap(), 7);
}

/// Issue 12: the start-up walk lists each directory as it is attached (a
/// leaf, told by its link count, is not listed): the whole tree within
/// `depth` is attached when `with_fs` returns, nothing below it.
#[test]
fn the_start_walk_attaches_the_tree_within_depth() {
    let tmp = tree(&["a", "a/b", "a/b/c", "a/b/c/d", "a/e", "f"]);
    for (depth, want) in [
        (1, vec!["/", "/a", "/f"]),
        (3, vec!["/", "/a", "/a/b", "/a/b/c", "/a/e", "/f"]),
        (
            16,
            vec!["/", "/a", "/a/b", "/a/b/c", "/a/b/c/d", "/a/e", "/f"],
        ),
    ] {
        let mut cfg = config(tmp.path());
        cfg.depth = depth;
        let runner = start(cfg);
        let tree = runner.engine().tree();
        let mut got: Vec<String> = tree
            .ids()
            .filter_map(|id| tree.path(id))
            .map(|p| p.display().to_string())
            .collect();
        got.sort();
        assert_eq!(got, want, "depth {depth}");
    }
}

/// Issue 12: at start the runner watches each directory within depth
/// through the fd its attach opened (the directory watch itself was made
/// without a scan), and each `memory.events.local`, by `fchdir` into the
/// open directory with `own_cwd` and through `/proc/self/fd` without: the
/// watches land either way (a cgroup made later two levels down is seen,
/// its events are triggers), and with `own_cwd` the thread's working
/// directory is back after each call. (A `Runner` is not `Send`: it is
/// turned on the thread that made it.)
#[test]
fn start_up_watches_land_with_and_without_an_own_working_directory() {
    for own_cwd in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        std::thread::spawn(move || watches_land(&root, own_cwd))
            .join()
            .unwrap();
    }
}

fn watches_land(root: &Path, own_cwd: bool) {
    cgroup(root);
    for name in ["a", "a/b", "c"] {
        cgroup(&root.join(name));
        events_local(&root.join(name), 0);
    }
    let id = |r: &Runner, p: &str| r.engine.tree().lookup(Path::new(p));
    let cwd = std::env::current_dir().unwrap();
    let mut cfg = config(root);
    cfg.memory_events = true;
    cfg.depth = 3;
    cfg.own_cwd = own_cwd;
    let mut runner = start(cfg);
    assert_eq!(runner.own_cwd.as_ref().is_some_and(|o| o.usable()), own_cwd);
    assert_eq!(std::env::current_dir().unwrap(), cwd, "back after start");
    let local = runner.local.as_ref().unwrap();
    for p in ["/a", "/a/b", "/c"] {
        assert!(local.contains(id(&runner, p).unwrap()), "{p} watched");
    }
    // Directories made after the start, below ones that existed: seen.
    for (made, want) in [("a/b/new", "/a/b/new"), ("c/d", "/c/d")] {
        cgroup(&root.join(made));
        events_local(&root.join(made), 0);
        run_until(&mut runner, made, |r| id(r, want).is_some());
        assert_eq!(std::env::current_dir().unwrap(), cwd, "back after a turn");
        assert!(
            runner
                .local
                .as_ref()
                .unwrap()
                .contains(id(&runner, want).unwrap())
        );
    }
    // Below the last level: not followed.
    cgroup(&root.join("a/b/new/deep"));
    cgroup(&root.join("c/d/e"));
    run_until(&mut runner, "c/d/e added", |r| id(r, "/c/d/e").is_some());
    assert!(
        id(&runner, "/a/b/new/deep").is_none(),
        "level 4 is below depth 3"
    );
    let new = id(&runner, "/a/b/new").unwrap();
    events_local(&root.join("a/b/new"), 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "the change never became a trigger"
        );
        let turn = runner.run_once(Some(Duration::from_millis(200))).unwrap();
        if let Some(ep) = turn.finished.first() {
            assert!(
                matches!(ep.trigger, Trigger::MemoryEvents { cgroup, .. } if cgroup == new),
                "{:?}",
                ep.trigger
            );
            break;
        }
    }
    assert_eq!(std::env::current_dir().unwrap(), cwd);
}

/// `usage_fds` caps the `memory.current` fds kept (the kernel holds a
/// 4 KiB buffer for each once read); every cgroup's usage is still read,
/// the ones past the cap through their directory.
#[test]
fn usage_fds_caps_the_kept_fds_and_usage_is_read_past_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    cgroup(root);
    let names = ["a", "b", "c", "d", "e"];
    for (k, name) in names.iter().enumerate() {
        cgroup(&root.join(name));
        write(
            &root.join(name),
            "memory.current",
            &format!("{}\n", (k + 1) << 20),
        );
    }
    for (cap, kept) in [(None, names.len() + 1), (Some(2), 2), (Some(0), 0)] {
        let mut cfg = config(root);
        cfg.usage_fds = cap;
        let mut runner = start(cfg);
        assert_eq!(runner.engine().host().usage_fds(), kept, "cap {cap:?}");
        for (k, name) in names.iter().enumerate() {
            let id = runner
                .engine()
                .tree()
                .lookup(&Path::new("/").join(name))
                .unwrap();
            let mut stats = crate::engine::CgroupStats::default();
            runner.engine.host_mut().read_usage(id, &mut stats).unwrap();
            assert_eq!(
                stats.current,
                Some(((k + 1) << 20) as u64),
                "{name}, cap {cap:?}"
            );
        }
    }
}

/// A directory whose creation the directory watch missed (its events lost,
/// as in an overflow) is watched when the rescan attaches it, through the
/// fd the attach opened: its children are then reported.
#[test]
fn a_directory_found_by_the_rescan_is_watched_for_its_children() {
    let tmp = tree(&["a"]);
    let root = tmp.path();
    let mut cfg = config(root);
    cfg.depth = 3;
    let mut runner = start(cfg);
    cgroup(&root.join("x"));
    // The watch's events are lost.
    let fd = runner.watcher.fd(runner.dir_token.unwrap()).unwrap();
    let mut buf = [0u8; 4096];
    while rustix::io::read(fd, &mut buf[..]).is_ok() {}
    runner.rescan_pending();
    while !runner.dir_changes.is_empty() {
        runner.apply_dir_changes();
    }
    let x = runner.engine().tree().lookup(Path::new("/x"));
    assert!(x.is_some(), "the rescan attached x");
    cgroup(&root.join("x/y"));
    run_until(&mut runner, "x/y added", |r| {
        r.engine().tree().lookup(Path::new("/x/y")).is_some()
    });
}
