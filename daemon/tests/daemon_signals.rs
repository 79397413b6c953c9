//! The `oomkit` binary end to end on a real cgroup2 mount: starts, reloads
//! on SIGHUP (a bad file keeps the running config), stops cleanly on
//! SIGTERM. It creates a cgroup under the host's cgroup2 mount, so it runs
//! only when asked with `OOMKIT_HOST_CGROUP_TESTS=1` (a reported skip
//! otherwise); asked for, a missing mount or a daemon that does not start
//! fails it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../sdk/tests/common/skip.rs"]
mod skip;

fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// The daemon under test: cargo's build of it, or `OOMKIT_TEST_DAEMON` where this test runs away
/// from the build tree (the VM suite runs it in the guest against `/bin/oomkit`, the same build).
fn daemon_bin() -> PathBuf {
    std::env::var_os("OOMKIT_TEST_DAEMON").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_oomkit")),
        PathBuf::from,
    )
}

/// The test's cgroup: removed on drop, also when an assertion panics.
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_tree(&self.0);
    }
}

/// rmdir `dir` and every cgroup below it, deepest first (best effort).
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The daemon: killed and reaped on drop if the test ends before it does.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// The log once it contains `needle`, the daemon has exited, or 30 s passed.
fn wait_for(daemon: &mut Daemon, log: &Path, needle: &str) -> String {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let exited = matches!(daemon.0.try_wait(), Ok(Some(_)));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) || exited || Instant::now() > end {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn run_reload_and_stop() {
    if !skip::host_cgroup_tests_allowed() {
        return;
    }
    let mount = cgroup2_mount().expect("OOMKIT_HOST_CGROUP_TESTS=1 but no cgroup2 mount");
    let memory = std::fs::read_to_string(mount.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
    if !memory {
        // The daemon refuses such a root with exit 78 (tested in exit_codes.rs).
        skip::skip(&format!(
            "{} has no memory controller (hybrid host): the daemon would refuse to run",
            mount.display()
        ));
        return;
    }
    let root = mount.join(format!("oomkit-handlers-test-{}", std::process::id()));
    std::fs::create_dir(&root)
        .unwrap_or_else(|e| panic!("cannot create the cgroup {}: {e}", root.display()));
    let cgroup = TestCgroup(root.clone());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("oomkit.toml");
    let body = |kind: &str| {
        format!(
            "[daemon]\nroot = \"{}\"\nlog_format = \"json\"\n[engine]\ndry_run = true\n\
             [signals]\nmemory_events = false\n[signals.psi]\nscope = \"system\"\nwindow_ms = 2000\n\
             [reserve]\nenabled = false\n[watchdog]\nenabled = false\n[handler]\nkind = \"{kind}\"\n",
            root.display()
        )
    };
    std::fs::write(&cfg, body("priority-kill")).unwrap();
    let log = dir.path().join("log");
    let mut daemon = Daemon(
        Command::new(daemon_bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = daemon.0.id();
    let text = wait_for(&mut daemon, &log, "\"running\"");
    assert!(
        text.contains("\"running\""),
        "the daemon did not start:\n{text}"
    );
    std::fs::write(&cfg, body("throttle")).unwrap();
    signal(pid, "-HUP");
    let text = wait_for(&mut daemon, &log, "configuration reloaded");
    assert!(text.contains("\"handler\":\"throttle\""), "{text}");
    std::fs::write(&cfg, body("throttle") + "bogus = 1\n").unwrap();
    signal(pid, "-HUP");
    let text = wait_for(&mut daemon, &log, "keeping the running configuration");
    assert!(text.contains("key `handler.bogus`"), "{text}");
    signal(pid, "-TERM");
    let status = daemon.0.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    drop(cgroup);
    assert!(status.success(), "{status:?}\n{text}");
    assert!(text.contains("\"stopped\""), "{text}");
}
