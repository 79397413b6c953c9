//! Results of VM runs: the guest protocol parser and the final tables.
//!
//! The guest writes one line per event to its second serial port (`/dev/ttyS1`), which qemu
//! writes to a file; the kernel never writes there, so the lines cannot be interleaved with
//! console messages. Every line starts with [`MARK`]:
//!
//! ```text
//! @@OOMKIT@@ BEGIN <mode> <test count> <uname -r>
//! @@OOMKIT@@ START <test> <timeout seconds>
//! @@OOMKIT@@ NOTE <test> <free text>
//! @@OOMKIT@@ RESULT <test> PASS|SKIP|FAIL <milliseconds> <free text>
//! @@OOMKIT@@ FILE <relative path> <hex bytes>
//! @@OOMKIT@@ END <passed> <failed> <skipped>
//! ```
//!
//! A run without `END`, or whose `END` counts disagree with the results seen, is truncated: the
//! guest hung, panicked or crashed, and that is a failure.

use std::path::PathBuf;
use std::time::Duration;

use crate::kernels::KernelImage;

pub const MARK: &str = "@@OOMKIT@@ ";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Skip,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Skip => "SKIP",
            Status::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TestResult {
    pub name: String,
    pub status: Status,
    pub millis: u64,
    pub detail: String,
}

/// Everything learned from one VM.
#[derive(Debug, Clone)]
pub struct KernelRun {
    pub kernel: KernelImage,
    pub guest_release: Option<String>,
    pub expected_tests: Option<usize>,
    pub results: Vec<TestResult>,
    pub notes: Vec<(String, String)>,
    pub files: Vec<(String, Vec<u8>)>,
    /// The test that started and has not reported yet.
    pub running: Option<(String, u64)>,
    /// Whether any test started (the harness handshake is over; a crash from here on is a test
    /// failure, before it an infrastructure failure).
    pub started: bool,
    pub completed: bool,
    /// Hang, panic, truncation: why the run is broken, with the console tail.
    pub problem: Option<String>,
    pub duration: Duration,
    /// The folder holding this VM's `console.log` and `proto.log`.
    pub log_dir: Option<PathBuf>,
    /// An earlier attempt of this VM that died before the harness handshake and was retried:
    /// why, with its console tail and the folder of its logs.
    pub infra_retry: Option<String>,
}

impl KernelRun {
    pub fn new(kernel: KernelImage) -> Self {
        Self {
            kernel,
            guest_release: None,
            expected_tests: None,
            results: Vec::new(),
            notes: Vec::new(),
            files: Vec::new(),
            running: None,
            started: false,
            completed: false,
            problem: None,
            duration: Duration::ZERO,
            log_dir: None,
            infra_retry: None,
        }
    }

    /// Feed one protocol line; returns a human-readable progress line for results.
    pub fn feed(&mut self, line: &str) -> Option<String> {
        let line = line.trim_end_matches(['\r', '\n']);
        let rest = line.strip_prefix(MARK)?;
        let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        match kind {
            "BEGIN" => {
                let mut w = rest.split_whitespace();
                let _mode = w.next();
                self.expected_tests = w.next().and_then(|n| n.parse().ok());
                self.guest_release = w.next().map(str::to_string);
                None
            }
            "START" => {
                let mut w = rest.split_whitespace();
                let name = w.next().unwrap_or("?").to_string();
                let timeout = w.next().and_then(|t| t.parse().ok()).unwrap_or(60);
                self.running = Some((name, timeout));
                self.started = true;
                None
            }
            "NOTE" => {
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                self.notes.push((name.to_string(), text.to_string()));
                Some(format!("note {name}: {}", shown(text)))
            }
            "RESULT" => {
                let mut parts = rest.splitn(4, ' ');
                let name = parts.next().unwrap_or("?").to_string();
                let status = match parts.next() {
                    Some("PASS") => Status::Pass,
                    Some("SKIP") => Status::Skip,
                    _ => Status::Fail,
                };
                let millis = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
                let detail = parts.next().unwrap_or("").to_string();
                self.running = None;
                let progress = format!(
                    "{} {name} ({:.1}s){}{}",
                    status.label(),
                    millis as f64 / 1000.0,
                    if detail.is_empty() { "" } else { ": " },
                    detail
                );
                self.results.push(TestResult {
                    name,
                    status,
                    millis,
                    detail,
                });
                Some(progress)
            }
            "FILE" => {
                let (path, hex) = rest.split_once(' ').unwrap_or((rest, ""));
                match decode_hex(hex.trim()) {
                    Some(data) => self.files.push((path.to_string(), data)),
                    None => {
                        self.problem = Some(format!("garbled FILE line for {path}"));
                    }
                }
                None
            }
            "END" => {
                let n: Vec<usize> = rest
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                let (p, f, s) = self.counts();
                if n != [p, f, s] {
                    self.problem = Some(format!(
                        "END reports {n:?} passed/failed/skipped but {} results arrived ({p}/{f}/{s}): output truncated",
                        self.results.len()
                    ));
                } else if self.expected_tests.is_some_and(|e| e != self.results.len()) {
                    self.problem = Some(format!(
                        "BEGIN announced {:?} tests but {} reported",
                        self.expected_tests,
                        self.results.len()
                    ));
                }
                self.completed = true;
                None
            }
            _ => None,
        }
    }

    /// Called when the VM is gone: turn an incomplete run into failures.
    pub fn finish(&mut self, why_incomplete: Option<String>, console_tail: &str) {
        if self.completed && self.problem.is_none() {
            return;
        }
        let why = why_incomplete
            .or_else(|| self.problem.clone())
            .unwrap_or_else(|| "guest stopped before its END marker".to_string());
        let failed_test = match self.running.take() {
            Some((name, _)) => name,
            None => "<vm>".to_string(),
        };
        self.results.push(TestResult {
            name: failed_test,
            status: Status::Fail,
            millis: 0,
            detail: why.clone(),
        });
        self.problem = Some(format!("{why}\n--- last console lines ---\n{console_tail}"));
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        let c = |s| self.results.iter().filter(|r| r.status == s).count();
        (c(Status::Pass), c(Status::Fail), c(Status::Skip))
    }

    pub fn ok(&self) -> bool {
        self.completed && self.problem.is_none() && self.counts().1 == 0
    }

    /// An infrastructure failure: the guest died or hung before any test started, so the run
    /// says nothing about oomkit (see [`crate::qemu`]).
    pub fn died_before_handshake(&self) -> bool {
        !self.completed && !self.started && self.problem.is_some()
    }
}

pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

#[derive(Default, Debug, Clone, Copy)]
pub struct Totals {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

pub fn totals(runs: &[KernelRun]) -> Totals {
    let mut t = Totals::default();
    for r in runs {
        let (p, f, s) = r.counts();
        t.passed += p;
        t.failed += f;
        t.skipped += s;
    }
    t
}

pub fn all_ok(runs: &[KernelRun]) -> bool {
    runs.iter().all(KernelRun::ok)
}

/// A note as printed: data notes (`METRICS <hex>`, parsed on the host by `deploy`) by size only.
fn shown(text: &str) -> String {
    match text.strip_prefix("METRICS ") {
        Some(hex) => format!("METRICS scrape ({} bytes)", hex.len() / 2),
        None => text.to_string(),
    }
}

/// Print the test × kernel matrix, the per-kernel table, skip reasons, failures and notes.
pub fn print(runs: &[KernelRun]) {
    if runs.is_empty() {
        return;
    }
    let mut names: Vec<&str> = Vec::new();
    for r in runs {
        for t in &r.results {
            if !names.contains(&t.name.as_str()) {
                names.push(&t.name);
            }
        }
    }
    let w = names.iter().map(|n| n.len()).max().unwrap_or(4).max(4);
    println!();
    print!("{:<w$}", "test");
    for r in runs {
        print!("  {:<11}", r.kernel.name);
    }
    println!();
    for n in &names {
        print!("{n:<w$}");
        for r in runs {
            let cell = r
                .results
                .iter()
                .find(|t| t.name == *n)
                .map(|t| format!("{} {:>4.1}s", t.status.label(), t.millis as f64 / 1000.0))
                .unwrap_or_else(|| "-".to_string());
            print!("  {cell:<11}");
        }
        println!();
    }
    println!();
    println!(
        "{:<6}  {:<28} {:<34} {:>6} {:>7} {:>6} {:>7}",
        "kernel", "release", "package version (suite)", "passed", "skipped", "failed", "time"
    );
    for r in runs {
        let (p, f, s) = r.counts();
        println!(
            "{:<6}  {:<28} {:<34} {:>6} {:>7} {:>6} {:>6.0}s{}",
            r.kernel.name,
            r.guest_release.as_deref().unwrap_or(&r.kernel.release),
            format!("{} ({})", r.kernel.version, r.kernel.suite),
            p,
            s,
            f,
            r.duration.as_secs_f64(),
            if r.problem.is_some() {
                "  (VM PROBLEM)"
            } else {
                ""
            }
        );
    }
    let skips: Vec<_> = runs
        .iter()
        .flat_map(|r| r.results.iter().map(move |t| (r, t)))
        .filter(|(_, t)| t.status == Status::Skip)
        .collect();
    if !skips.is_empty() {
        println!("\nskipped:");
        for (r, t) in skips {
            println!("  {:<6} {}: {}", r.kernel.name, t.name, t.detail);
        }
    }
    let notes: Vec<_> = runs
        .iter()
        .flat_map(|r| r.notes.iter().map(move |n| (r, n)))
        .collect();
    if !notes.is_empty() {
        println!("\nnotes:");
        for (r, (name, text)) in notes {
            println!("  {:<6} {name}: {}", r.kernel.name, shown(text));
        }
    }
    let fails: Vec<_> = runs
        .iter()
        .flat_map(|r| r.results.iter().map(move |t| (r, t)))
        .filter(|(_, t)| t.status == Status::Fail)
        .collect();
    if !fails.is_empty() {
        println!("\nFAILED:");
        for (r, t) in fails {
            println!("  {:<6} {}: {}", r.kernel.name, t.name, t.detail);
        }
    }
    print_retries(runs);
    for r in runs {
        if let Some(p) = &r.problem {
            println!(
                "\nVM PROBLEM on {} ({}): {p}",
                r.kernel.name, r.kernel.release
            );
        }
    }
    for r in runs.iter().filter(|r| !r.ok()) {
        if let Some(d) = &r.log_dir {
            println!(
                "\nlogs of the failed VM on {}: {}",
                r.kernel.name,
                d.display()
            );
        }
    }
    let t = totals(runs);
    println!(
        "\nvmtest: {} passed, {} failed, {} skipped on {} kernel(s)",
        t.passed,
        t.failed,
        t.skipped,
        runs.len()
    );
}

/// Last line of [`KernelRun::infra_retry`]: where the first attempt's logs are.
pub const RETRY_LOGS: &str = "--- logs: ";

/// Every infrastructure retry, loudly, with the first attempt's console tail.
pub fn print_retries(runs: &[KernelRun]) {
    for r in runs {
        if let Some(why) = &r.infra_retry {
            println!(
                "\n!!!!!!!! INFRASTRUCTURE RETRY on {} ({}): the guest died before the harness handshake and was booted again (second attempt: {})",
                r.kernel.name,
                r.kernel.release,
                if r.ok() { "ok" } else { "FAILED" }
            );
            for l in why.lines() {
                println!("!!! {l}");
            }
        }
    }
}

/// One line per kernel that needed an infrastructure retry, for the `cargo xtask test` summary.
pub fn retry_lines(runs: &[KernelRun]) -> Vec<String> {
    runs.iter()
        .filter_map(|r| {
            let why = r.infra_retry.as_ref()?;
            let logs = why
                .lines()
                .find_map(|l| l.strip_prefix(RETRY_LOGS))
                .unwrap_or("?");
            Some(format!(
                "INFRASTRUCTURE RETRY on {}: {} (second attempt {}; first attempt's logs: {logs})",
                r.kernel.name,
                why.lines().next().unwrap_or(""),
                if r.ok() { "ok" } else { "FAILED" }
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn run() -> KernelRun {
        KernelRun::new(KernelImage {
            name: "6.1".into(),
            suite: "bookworm".into(),
            release: "6.1.0-50-cloud-amd64".into(),
            version: "6.1.176-1".into(),
            vmlinuz: PathBuf::new(),
        })
    }

    #[test]
    fn complete_run_is_ok() {
        let mut r = run();
        for l in [
            "@@OOMKIT@@ BEGIN run 2 6.1.0-50-cloud-amd64\r",
            "@@OOMKIT@@ START a 30",
            "@@OOMKIT@@ RESULT a PASS 12 fine",
            "@@OOMKIT@@ START b 30",
            "@@OOMKIT@@ RESULT b SKIP 1 no cgroup.kill before 5.14",
            "@@OOMKIT@@ FILE child/memory.max 6d61780a",
            "@@OOMKIT@@ END 1 0 1",
        ] {
            r.feed(l);
        }
        r.finish(None, "");
        assert!(r.ok(), "{r:?}");
        assert_eq!(
            r.files,
            vec![("child/memory.max".to_string(), b"max\n".to_vec())]
        );
        assert_eq!(r.guest_release.as_deref(), Some("6.1.0-50-cloud-amd64"));
    }

    #[test]
    fn hang_fails_running_test() {
        let mut r = run();
        r.feed("@@OOMKIT@@ BEGIN run 2 x");
        r.feed("@@OOMKIT@@ START a 30");
        r.finish(Some("no progress".into()), "tail");
        assert!(!r.ok());
        assert_eq!(r.results[0].name, "a");
        assert_eq!(r.results[0].status, Status::Fail);
    }

    #[test]
    fn truncated_end_is_a_problem() {
        let mut r = run();
        r.feed("@@OOMKIT@@ BEGIN run 2 x");
        r.feed("@@OOMKIT@@ RESULT a PASS 1 ");
        r.feed("@@OOMKIT@@ END 2 0 0");
        r.finish(None, "");
        assert!(!r.ok());
        assert!(!r.died_before_handshake(), "the END line came");
    }

    #[test]
    fn death_before_first_test_is_infrastructure() {
        let mut r = run();
        r.feed("@@OOMKIT@@ BEGIN run 2 x");
        r.finish(Some("qemu exited".into()), "Kernel panic");
        assert!(r.died_before_handshake());
        let mut never = run();
        never.finish(Some("guest did not come up".into()), "");
        assert!(never.died_before_handshake());
    }

    #[test]
    fn crash_after_a_test_started_is_a_test_failure() {
        let mut r = run();
        r.feed("@@OOMKIT@@ BEGIN run 2 x");
        r.feed("@@OOMKIT@@ START a 30");
        r.finish(Some("qemu exited".into()), "Kernel panic");
        assert!(!r.died_before_handshake());
        assert_eq!(r.results[0].name, "a");
    }
}
