//! What a guest test is: a named function returning [`Outcome`] or a [`Fail`], with a timeout.
//!
//! Tests run in their own process (see [`crate::runner`]), which reports to the runner over
//! stdout: `@@NOTE <text>` lines for observations worth printing on the host (latencies), and one
//! `@@RESULT PASS|SKIP|FAIL <text>` line.

use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oomkit::Cgroup;

use crate::workload::{Workload, WorkloadKind};

/// Where the runner puts each test's cgroups: `/sys/fs/cgroup/oomkit/<test>/…`.
pub const TEST_ROOT: &str = "/sys/fs/cgroup/oomkit";

/// A test that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed; the text says what was observed.
    Pass(String),
    /// Not applicable on this kernel; the text says why.
    Skip(String),
}

/// A failed assertion or an unexpected error, with a message for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail(pub String);

impl<E: Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(e.to_string())
    }
}

/// What a test function returns.
pub type TestResult = Result<Outcome, Fail>;

/// Fail the test with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::harness::Fail(format!($($msg)+)));
        }
    };
}

/// Fail the test with a formatted message.
#[macro_export]
macro_rules! fail {
    ($($msg:tt)+) => {
        return Err($crate::harness::Fail(format!($($msg)+)))
    };
}

/// A registered test.
#[derive(Clone, Copy)]
pub struct TestCase {
    /// Unique name, used by `--filter` and in the report.
    pub name: &'static str,
    /// The runner kills the test after this long.
    pub timeout: Duration,
    /// The test body.
    pub run: fn(&mut Ctx) -> TestResult,
}

/// What a test gets: its name, its cgroup directory, and helpers.
pub struct Ctx {
    name: String,
    base: PathBuf,
}

impl Ctx {
    /// Context for test `name`; creates its base cgroup (with memory and pids for children).
    pub fn new(name: &str) -> Result<Self, Fail> {
        let base = Path::new(TEST_ROOT).join(name);
        std::fs::create_dir_all(&base)
            .map_err(|e| Fail(format!("mkdir {}: {e}", base.display())))?;
        write_file(&base.join("cgroup.subtree_control"), "+memory +pids")?;
        Ok(Self {
            name: name.to_string(),
            base,
        })
    }

    /// The test's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The test's base cgroup directory (memory and pids enabled for its children).
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Create (or reuse) child cgroup `name` of the base and open it with the SDK.
    pub fn cgroup(&self, name: &str) -> Result<(PathBuf, Cgroup), Fail> {
        let path = self.base.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Fail(format!("mkdir {}: {e}", path.display()))),
        }
        let cg = Cgroup::open(&path)
            .map_err(|e| Fail(format!("Cgroup::open({}): {e}", path.display())))?;
        Ok((path, cg))
    }

    /// Start a helper workload inside cgroup `cg` and wait until it is there and ready.
    pub fn spawn(&self, cg: &Path, kind: WorkloadKind) -> Result<Workload, Fail> {
        Workload::spawn(cg, kind)
    }

    /// Report an observation to the host (shown in the final report).
    pub fn note(&self, text: impl Display) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "@@NOTE {}", crate::proto::one_line(&text.to_string()));
        let _ = out.flush();
    }
}

/// Write a small control file, with the path in the error.
pub fn write_file(path: &Path, data: &str) -> Result<(), Fail> {
    std::fs::write(path, data)
        .map_err(|e| Fail(format!("write {:?} to {}: {e}", data, path.display())))
}

/// Read a small text file, with the path in the error.
pub fn read_file(path: &Path) -> Result<String, Fail> {
    std::fs::read_to_string(path).map_err(|e| Fail(format!("read {}: {e}", path.display())))
}

/// Wait until `cond` returns `Some`, re-checking each time `wake` returns (which should block on
/// a real event source, e.g. `poll` on a cgroup file) or at most every `max_interval`; `Err` once
/// `timeout` has passed.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    max_interval: Duration,
    mut cond: impl FnMut() -> Result<Option<T>, Fail>,
) -> Result<T, Fail> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond()? {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Fail(format!(
                "timed out after {timeout:?} waiting for {what}"
            )));
        }
        // Re-poll a kernel counter that has no notification of its own.
        std::thread::sleep(max_interval.min(deadline - now));
    }
}
