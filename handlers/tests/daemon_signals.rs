//! The `oomkit` binary end to end on a real cgroup2 mount: starts, reloads
//! on SIGHUP (a bad file keeps the running config), stops cleanly on
//! SIGTERM. Skipped (with a note) where no writable cgroup2 mount exists.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(dir))
    })
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

fn wait_for(child: &mut std::process::Child, log: &std::path::Path, needle: &str) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) || exited || Instant::now() > end {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn run_reload_and_stop() {
    let Some(mount) = cgroup2_mount() else {
        eprintln!("skipped: no cgroup2 mount");
        return;
    };
    let root = mount.join(format!("oomkit-handlers-test-{}", std::process::id()));
    if std::fs::create_dir(&root).is_err() {
        eprintln!("skipped: cannot create a cgroup under {}", mount.display());
        return;
    }
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_oomkit"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let text = wait_for(&mut child, &log, "\"running\"");
    let started = text.contains("\"running\"");
    if !started {
        if let Ok(Some(status)) = child.try_wait() {
            // A cgroup2 mount without the memory controller (the memory
            // controller on cgroup v1): the daemon must refuse with 78.
            let _ = std::fs::remove_dir(&root);
            let memory = std::fs::read_to_string(mount.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
            if !memory {
                assert_eq!(status.code(), Some(78), "{text}");
                assert!(text.contains("no memory controller"), "{text}");
                return;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir(&root);
        // No PSI or no permission here: not what this test is about.
        eprintln!("skipped: the daemon did not start here:\n{text}");
        return;
    }
    std::fs::write(&cfg, body("throttle")).unwrap();
    signal(pid, "-HUP");
    let text = wait_for(&mut child, &log, "configuration reloaded");
    assert!(text.contains("\"handler\":\"throttle\""), "{text}");
    std::fs::write(&cfg, body("throttle") + "bogus = 1\n").unwrap();
    signal(pid, "-HUP");
    let text = wait_for(&mut child, &log, "keeping the running configuration");
    assert!(text.contains("key `handler.bogus`"), "{text}");
    signal(pid, "-TERM");
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_dir(&root);
    assert!(status.success(), "{status:?}\n{text}");
    assert!(text.contains("\"stopped\""), "{text}");
}
