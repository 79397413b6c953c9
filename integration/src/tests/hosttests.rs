//! The host tests that need a real cgroup2 mount, run where one is ours to write.
//!
//! On the host those tests are opt-in (`OOMKIT_HOST_CGROUP_TESTS=1`): they create cgroups under
//! the host's cgroup2 mount, which a developer's machine or a CI runner does not hand us. Left
//! opt-in only, they would never run at all. So `cargo xtask` builds them static and packs them
//! under `/hosttests` of the initramfs (`xtask/src/guest.rs`), and this guest test runs each one
//! with the opt-in set, on the guest's own cgroup2 mount, on every kernel of the matrix.
//!
//! A skip in them counts against this test unless the kernel lacks what the skip names
//! (`cgroup.kill` before 5.14): asked for, a real-cgroup test that does not run is a failure.

use std::path::Path;
use std::process::{Command, Stdio};

use super::common::kernel_version;
use crate::harness::{Ctx, Fail, Outcome, TestResult};

#[path = "../../../sdk/tests/common/skip.rs"]
mod skip;

/// Where `xtask` packs the test binaries (see `REAL_CGROUP_TESTS_DIR` in `xtask/src/guest.rs`).
const DIR: &str = "/hosttests";

/// The static daemon in the initramfs, for the test that runs it (`daemon_signals`).
const DAEMON: &str = "/bin/oomkit";

/// Every binary under [`DIR`] passes with `OOMKIT_HOST_CGROUP_TESTS=1`, with no skip the kernel
/// does not explain.
pub fn real_cgroup(ctx: &mut Ctx) -> TestResult {
    let mut names: Vec<String> = std::fs::read_dir(DIR)
        .map_err(|e| {
            Fail(format!(
                "read_dir {DIR}: {e} (xtask packs the host tests there)"
            ))
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    crate::ensure!(!names.is_empty(), "{DIR} holds no test binaries");
    let has_cgroup_kill = kernel_version() >= (5, 14);
    let mut summary = Vec::new();
    for name in &names {
        let out = Command::new(Path::new(DIR).join(name))
            .args(["--test-threads=1"])
            .env("OOMKIT_HOST_CGROUP_TESTS", "1")
            .env("CI", "true")
            .env("OOMKIT_TEST_DAEMON", DAEMON)
            .env("RUST_BACKTRACE", "1")
            .current_dir("/tmp")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Fail(format!("cannot run {DIR}/{name}: {e}")))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail = || {
            let all: Vec<&str> = stdout.lines().chain(stderr.lines()).collect();
            all[all.len().saturating_sub(40)..].join(" | ")
        };
        let result = stdout
            .lines()
            .find(|l| l.starts_with("test result:"))
            .map(str::to_string);
        crate::ensure!(
            out.status.success(),
            "{name} failed ({}): {}",
            out.status,
            tail()
        );
        let Some(result) = result else {
            return Err(Fail(format!(
                "{name} printed no `test result:` line: {}",
                tail()
            )));
        };
        let skips: Vec<(&str, &str)> = stderr.lines().filter_map(skip::parse).collect();
        let unexplained: Vec<String> = skips
            .iter()
            .filter(|(_, why)| has_cgroup_kill || !why.contains("cgroup.kill"))
            .map(|(t, why)| format!("{t}: {why}"))
            .collect();
        crate::ensure!(
            unexplained.is_empty(),
            "{name}: skipped with OOMKIT_HOST_CGROUP_TESTS=1 on this kernel: {}",
            unexplained.join("; ")
        );
        let passed = count(&result, " passed").saturating_sub(skips.len());
        let line = match skips.len() {
            0 => format!("{name}: {passed} passed"),
            n => format!("{name}: {passed} passed, {n} skipped (no cgroup.kill before 5.14)"),
        };
        ctx.note(&line);
        summary.push(line);
    }
    Ok(Outcome::Pass(summary.join("; ")))
}

/// The number before `word` in libtest's `test result: ok. 9 passed; 0 failed; …` line.
fn count(result: &str, word: &str) -> usize {
    result
        .split(';')
        .find_map(|part| {
            let part = part.trim_end();
            let n = part.strip_suffix(word)?;
            n.rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_from_the_libtest_summary() {
        let line = "test result: ok. 9 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.2s";
        assert_eq!(count(line, " passed"), 9);
        assert_eq!(count(line, " failed"), 0);
        assert_eq!(count("test result: ok.", " passed"), 0);
    }
}
