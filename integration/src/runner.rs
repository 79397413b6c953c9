//! The in-guest test runner (`oomkit.mode=run`) and the single-test entry point.
//!
//! Each test runs as `oomkit-guest test <name>` in a new process group, so that:
//! * a test process the OOM killer picks, or one that crashes, fails only that test;
//! * the per-test timeout can be enforced by killing the whole group;
//! * after the test, everything it left in its cgroup is killed and the cgroups removed, so the
//!   next test starts clean.
//!
//! The runner itself and `/init` have `oom_score_adj` −1000; test processes reset theirs to 0.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::{Ctx, Fail, Outcome, TEST_ROOT, TestCase};
use crate::proto::Proto;
use crate::tests;

/// Kernel release (`uname -r`).
pub fn release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

enum Msg {
    Line(String),
    /// The test's stdout closed.
    Eof,
    Exit(std::process::ExitStatus),
}

/// Run every registered test whose name contains `filter`; returns (passed, failed, skipped).
pub fn run_all(proto: &mut Proto, filter: Option<&str>) -> (usize, usize, usize) {
    let selected: Vec<TestCase> = tests::all()
        .into_iter()
        .filter(|t| filter.is_none_or(|f| t.name.contains(f)))
        .collect();
    run_list(proto, "run", &selected)
}

/// Run `selected` (announced as `mode`); returns (passed, failed, skipped).
pub fn run_list(proto: &mut Proto, mode: &str, selected: &[TestCase]) -> (usize, usize, usize) {
    proto.line("BEGIN", &format!("{mode} {} {}", selected.len(), release()));
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    // Orphans of test workloads (a fork storm's children) are re-parented here and reaped after
    // each test, instead of piling up as zombies under PID 1.
    let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
    let setup = prepare_test_root();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for t in selected {
        proto.line("START", &format!("{} {}", t.name, t.timeout.as_secs()));
        let started = Instant::now();
        let result = match &setup {
            Ok(()) => run_isolated(proto, t),
            Err(e) => Err(Fail(format!("cannot prepare {TEST_ROOT}: {}", e.0))),
        };
        let cleanup = cleanup_test(t.name);
        reap_orphans();
        let ms = started.elapsed().as_millis();
        let (status, text) = match (result, cleanup) {
            (Ok(Outcome::Pass(s)), Ok(())) => ("PASS", s),
            (Ok(Outcome::Skip(s)), Ok(())) => ("SKIP", s),
            (Ok(_), Err(e)) => ("FAIL", format!("cleanup failed: {}", e.0)),
            (Err(e), _) => ("FAIL", e.0),
        };
        match status {
            "PASS" => passed += 1,
            "SKIP" => skipped += 1,
            _ => failed += 1,
        }
        proto.line("RESULT", &format!("{} {status} {ms} {text}", t.name));
    }
    proto.line("END", &format!("{passed} {failed} {skipped}"));
    (passed, failed, skipped)
}

/// Reap every exited child (orphans re-parented to us); never blocks.
fn reap_orphans() {
    while let Ok(Some(_)) = rustix::process::wait(rustix::process::WaitOptions::NOHANG) {}
}

fn prepare_test_root() -> Result<(), Fail> {
    std::fs::create_dir_all(TEST_ROOT).map_err(|e| Fail(format!("mkdir {TEST_ROOT}: {e}")))?;
    std::fs::write(
        Path::new(TEST_ROOT).join("cgroup.subtree_control"),
        "+memory +pids",
    )
    .map_err(|e| Fail(format!("enable memory,pids in {TEST_ROOT}: {e}")))
}

/// Run one test in a child process; enforce its timeout.
fn run_isolated(proto: &mut Proto, t: &TestCase) -> Result<Outcome, Fail> {
    let mut child = Command::new("/proc/self/exe")
        .arg("test")
        .arg(t.name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .map_err(|e| Fail(format!("cannot start test process: {e}")))?;
    let pid = i32::try_from(child.id()).map_err(|e| Fail(e.to_string()))?;
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(Msg::Line(line)).is_err() {
                    break;
                }
            }
            let _ = tx.send(Msg::Eof);
        });
    } else {
        let _ = tx.send(Msg::Eof);
    }
    std::thread::spawn(move || {
        if let Ok(st) = child.wait() {
            let _ = tx.send(Msg::Exit(st));
        }
    });
    let mut deadline = Instant::now() + t.timeout;
    let mut outcome: Option<Result<Outcome, Fail>> = None;
    let mut exit: Option<std::process::ExitStatus> = None;
    let mut eof = false;
    loop {
        if let (Some(st), true) = (exit, eof) {
            return finish(outcome, st);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Msg::Line(l)) => {
                if let Some(n) = l.strip_prefix("@@NOTE ") {
                    proto.line("NOTE", &format!("{} {n}", t.name));
                } else if let Some(r) = l.strip_prefix("@@RESULT ") {
                    let (kind, text) = r.split_once(' ').unwrap_or((r, ""));
                    outcome = Some(match kind {
                        "PASS" => Ok(Outcome::Pass(text.to_string())),
                        "SKIP" => Ok(Outcome::Skip(text.to_string())),
                        _ => Err(Fail(text.to_string())),
                    });
                } else {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "[{}] {l}", t.name);
                }
            }
            Ok(Msg::Eof) => eof = true,
            Ok(Msg::Exit(st)) => {
                exit = Some(st);
                // A leftover grandchild may hold stdout open; the result line (if any) was
                // written before exit, so a short grace period is enough to read it.
                deadline = deadline.min(Instant::now() + Duration::from_secs(2));
            }
            Err(_) => {
                if let Some(st) = exit {
                    return finish(outcome, st);
                }
                kill_group(pid);
                return Err(Fail(format!("timed out after {}s", t.timeout.as_secs())));
            }
        }
    }
}

fn finish(
    outcome: Option<Result<Outcome, Fail>>,
    st: std::process::ExitStatus,
) -> Result<Outcome, Fail> {
    match outcome {
        Some(o) => o,
        None => Err(Fail(match st.signal() {
            Some(9) => "test process was SIGKILLed (OOM-killed?) before reporting".into(),
            Some(s) => format!("test process died of signal {s} before reporting"),
            None => format!("test process exited ({st}) without a result"),
        })),
    }
}

fn kill_group(pgid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Kill everything left in the test's cgroups and remove them (deepest first).
fn cleanup_test(name: &str) -> Result<(), Fail> {
    let base = Path::new(TEST_ROOT).join(name);
    if !base.exists() {
        return Ok(());
    }
    let mut dirs = Vec::new();
    collect_dirs(&base, &mut dirs);
    // Deepest first.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in &dirs {
        empty_cgroup(d)?;
    }
    for d in &dirs {
        // Frozen cgroups can still be removed once empty.
        if let Err(e) = std::fs::remove_dir(d) {
            return Err(Fail(format!("rmdir {}: {e}", d.display())));
        }
    }
    Ok(())
}

fn collect_dirs(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// SIGKILL every process in `dir` (not descendants) until it stays empty.
fn empty_cgroup(dir: &Path) -> Result<(), Fail> {
    let procs = dir.join("cgroup.procs");
    let deadline = Instant::now() + Duration::from_secs(20);
    // Freezing stops a fork storm from outrunning the kill loop; SIGKILL still works on
    // frozen tasks.
    let _ = std::fs::write(dir.join("cgroup.freeze"), "1");
    loop {
        let text = std::fs::read_to_string(&procs).unwrap_or_default();
        let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.is_empty() {
            return Ok(());
        }
        for p in pids {
            if let Some(pid) = rustix::process::Pid::from_raw(p) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        if Instant::now() > deadline {
            return Err(Fail(format!(
                "{} still has processes after 20s of SIGKILL",
                dir.display()
            )));
        }
        // Killed tasks leave cgroup.procs asynchronously; re-read shortly.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Entry point of `oomkit-guest test <name>`: run one test in this process and print its result.
pub fn run_one(name: &str) -> i32 {
    let _ = std::fs::write("/proc/self/oom_score_adj", "0");
    let Some(t) = tests::all()
        .into_iter()
        .chain(tests::selftests())
        .chain(tests::demos())
        .chain(crate::bench::cases())
        .find(|t| t.name == name)
    else {
        println!("@@RESULT FAIL no test named {name}");
        return 2;
    };
    let result = Ctx::new(t.name).and_then(|mut ctx| (t.run)(&mut ctx));
    let line = match result {
        Ok(Outcome::Pass(s)) => format!("@@RESULT PASS {}", crate::proto::one_line(&s)),
        Ok(Outcome::Skip(s)) => format!("@@RESULT SKIP {}", crate::proto::one_line(&s)),
        Err(Fail(s)) => format!("@@RESULT FAIL {}", crate::proto::one_line(&s)),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    0
}
