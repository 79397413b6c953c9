//! The binary's exit codes: `run` and `probe` refuse a managed root that is
//! not cgroup2 or has no memory controller with 78 (EX_CONFIG) and a
//! one-line reason, so a supervisor stops restarting it; a bad config file
//! is 78 too. Nothing here writes to a cgroup mount.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use oomkit_daemon::daemon::{Unsupported, check_root};

fn oomkit(args: &[&str], cfg: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oomkit"))
        .args(args)
        .arg(cfg)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn config(dir: &Path, root: &Path) -> PathBuf {
    let cfg = dir.join("oomkit.toml");
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\nroot = \"{}\"\nincident_dir = \"{}\"\n[handler]\nkind = \"priority-kill\"\n",
            root.display(),
            dir.join("incidents").display()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn run_refuses_a_root_that_is_not_cgroup2_with_78_and_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("not-a-cgroup");
    std::fs::create_dir(&root).unwrap();
    let out = oomkit(&["run", "--config"], &config(dir.path(), &root));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    // The config check may warn first (a root outside /sys/fs/cgroup, as
    // here); the refusal itself is one line.
    let lines: Vec<&str> = err.lines().filter(|l| !l.contains(" WARN ")).collect();
    assert_eq!(lines.len(), 1, "one line, got: {err}");
    assert!(lines[0].contains("not a cgroup2 filesystem"), "{err}");
    assert!(lines[0].contains(&root.display().to_string()), "{err}");
}

#[test]
fn probe_says_unsupported_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let out = oomkit(
        &[
            "probe",
            "--root",
            &dir.path().display().to_string(),
            "--config",
        ],
        &config(dir.path(), dir.path()),
    );
    assert_eq!(out.status.code(), Some(78));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("supported: no: "), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a cgroup2 filesystem"),
        "{out:?}"
    );
}

#[test]
fn a_bad_config_is_78() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[handler]\nkind = \"nope\"\n").unwrap();
    assert_eq!(oomkit(&["run", "--config"], &cfg).status.code(), Some(78));
    assert_eq!(oomkit(&["check-config"], &cfg).status.code(), Some(78));
}

#[test]
fn help_documents_the_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_oomkit"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("78  EX_CONFIG"), "{text}");
}

/// On every cgroup2 mount of this host (read only): the verdict matches the
/// mount's `cgroup.controllers`. On the development host the memory
/// controller is on cgroup v1, so this is the "no memory controller" case.
#[test]
fn check_root_agrees_with_the_hosts_cgroup2_mounts() {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let cgroup2: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .collect();
    for mount in &cgroup2 {
        let listed = std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap();
        let has_memory = listed.split_whitespace().any(|c| c == "memory");
        match check_root(mount) {
            Ok(()) => assert!(has_memory, "{}: {listed}", mount.display()),
            Err(Unsupported::NoMemoryController { controllers, .. }) => {
                assert!(!has_memory);
                assert_eq!(
                    controllers,
                    listed.split_whitespace().collect::<Vec<_>>().join(" ")
                );
            }
            Err(e) => panic!("{}: {e}", mount.display()),
        }
    }
    // Not cgroup2 at all: /proc.
    assert!(matches!(
        check_root(Path::new("/proc")),
        Err(Unsupported::NotCgroup2 { .. })
    ));
    assert!(matches!(
        check_root(Path::new("/nonexistent-oomkit-root")),
        Err(Unsupported::Open { .. })
    ));
}

#[test]
fn completions_and_man_page_come_from_the_cli() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_oomkit"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&["completions", "bash"]);
    assert!(
        bash.contains("complete -F _oomkit") && bash.contains("incidents"),
        "{bash}"
    );
    assert!(run(&["completions", "zsh"]).contains("#compdef oomkit"));
    let man = run(&["manpage"]);
    assert!(
        man.contains(".TH oomkit 1") && man.contains("check\\-config"),
        "{man}"
    );
}
