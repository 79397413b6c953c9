//! Where VM logs go: one folder per xtask run, so a failure can be diagnosed afterwards.
//!
//! Every `run_matrix` (vmtest, demo, fixtures, bench) and every `bootstress` writes its consoles
//! and protocol logs to `.cache/oomkit-vm/runs/<UTC time>-<pid>-<what>/<kernel>/`. A failed
//! attempt that was retried keeps its logs as `<kernel>.attempt1/`. Per-run folders mean two runs
//! from one checkout never overwrite each other's logs, and a red run's logs survive the next
//! green one.
//!
//! When a run ends, a `RESULT` file marks the folder `kept` (something failed or was retried) or
//! `passed`, and old folders are pruned: the newest [`KEEP_FAILED`] kept folders and the newest
//! [`KEEP_PASSED`] passed ones stay. A folder without `RESULT` belongs to a run still going (or
//! one that was killed); it is pruned only once it is a day old.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cache_dir;
use crate::util::{self, Result};

/// Folders of runs with a failure or retry that are kept.
pub const KEEP_FAILED: usize = 20;
/// Folders of passing runs that are kept (the latest logs, for a look at a good run).
pub const KEEP_PASSED: usize = 3;
/// Age after which a folder of an unfinished (killed) run is pruned.
const STALE: Duration = Duration::from_secs(24 * 3600);
const MARKER: &str = "RESULT";

/// The log folder of one run.
#[derive(Debug, Clone)]
pub struct RunLogs {
    dir: PathBuf,
}

impl RunLogs {
    /// Create `runs/<UTC time>-<pid>-<what>/`.
    pub fn create(what: &str) -> Result<Self> {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let name = format!("{}-{}-{what}", utc_stamp(secs), std::process::id());
        let dir = runs_dir().join(name);
        util::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The folder for one VM: `<kernel>` for the attempt that counts, `<kernel>.attempt<n>` for
    /// an earlier one that was retried.
    pub fn vm_dir(&self, kernel: &str) -> PathBuf {
        self.dir.join(kernel)
    }

    /// Move a VM's logs aside as attempt `n`, freeing `vm_dir` for the next attempt.
    pub fn set_aside(&self, kernel: &str, n: u32) -> PathBuf {
        let to = self.dir.join(format!("{kernel}.attempt{n}"));
        let _ = std::fs::rename(self.vm_dir(kernel), &to);
        to
    }

    /// Mark the run finished and prune old folders. Returns the folder if it is kept because
    /// something failed or was retried (print it), `None` for a passing run.
    pub fn finish(&self, keep: bool) -> Option<PathBuf> {
        let _ = std::fs::write(
            self.dir.join(MARKER),
            if keep { "kept\n" } else { "passed\n" },
        );
        prune(&runs_dir());
        keep.then(|| self.dir.clone())
    }
}

fn runs_dir() -> PathBuf {
    cache_dir().join("runs")
}

/// Remove all but the newest kept/passed run folders (names sort by time); unfinished folders
/// only when stale. Best effort: a concurrent run pruning the same folder is fine.
fn prune(runs: &Path) {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return;
    };
    let mut kept = Vec::new();
    let mut passed = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if !p.is_dir() {
            continue;
        }
        match std::fs::read_to_string(p.join(MARKER)) {
            Ok(m) if m.trim() == "passed" => passed.push(p),
            Ok(_) => kept.push(p),
            Err(_) => {
                let age = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .unwrap_or_default();
                if age > STALE {
                    let _ = util::remove_dir_all_if_exists(&p);
                }
            }
        }
    }
    for (mut list, keep) in [(kept, KEEP_FAILED), (passed, KEEP_PASSED)] {
        list.sort();
        let excess = list.len().saturating_sub(keep);
        for p in list.into_iter().take(excess) {
            let _ = util::remove_dir_all_if_exists(&p);
        }
    }
}

/// `YYYYmmdd-HHMMSS` (UTC) for seconds since the epoch, so folder names sort by time.
fn utc_stamp(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_sort_by_time() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
        assert_eq!(utc_stamp(1_795_920_768), "20261129-025248");
    }

    #[test]
    fn prune_keeps_newest_and_unfinished() {
        let root = std::env::temp_dir().join(format!("oomkit-runlog-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mk = |name: &str, marker: Option<&str>| {
            let d = root.join(name);
            std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
            if let Some(m) = marker {
                std::fs::write(d.join(MARKER), m).unwrap_or_else(|e| panic!("{e}"));
            }
        };
        for i in 0..(KEEP_FAILED + 2) {
            mk(&format!("2026{i:04}-kept"), Some("kept\n"));
        }
        for i in 0..(KEEP_PASSED + 2) {
            mk(&format!("2026{i:04}-passed"), Some("passed\n"));
        }
        mk("20260000-running", None);
        prune(&root);
        let left = |suffix: &str| {
            let mut v: Vec<String> = std::fs::read_dir(&root)
                .unwrap_or_else(|e| panic!("{e}"))
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(suffix))
                .collect();
            v.sort();
            v
        };
        let kept = left("-kept");
        assert_eq!(kept.len(), KEEP_FAILED);
        assert_eq!(kept[0], "20260002-kept", "the oldest two go");
        let passed = left("-passed");
        assert_eq!(passed.len(), KEEP_PASSED);
        assert_eq!(passed[0], "20260002-passed");
        assert_eq!(left("-running"), vec!["20260000-running".to_string()]);
        let _ = std::fs::remove_dir_all(&root);
    }
}
