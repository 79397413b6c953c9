//! Reported skips for host tests (`#[path]`-included by the tests that can
//! skip, in `sdk/tests/` and `daemon/tests/`, and by `xtask`, which counts
//! them).
//!
//! libtest has no runtime skip: a test that returns early counts as passed.
//! So a test that cannot run here calls [`skip`] (or [`skip_unless_ci`]) and
//! returns; that writes one [`MARK`] line with the test's name and the reason
//! straight to stderr, past libtest's output capture, and `cargo xtask test`
//! counts those lines as skips instead of passes and lists their reasons.
#![allow(dead_code)] // each includer uses a subset

use std::io::Write;

/// Start of a skip line: `<MARK> <test name>: <reason>`.
pub const MARK: &str = "@@OOMKIT-TEST-SKIP@@";

/// Report the calling test as skipped, with why. The caller returns next.
/// libtest runs each test on a thread named after it.
pub fn skip(reason: &str) {
    let name = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string();
    skip_named(&name, reason);
}

/// [`skip`] for a `harness = false` test, whose thread is `main`.
pub fn skip_named(name: &str, reason: &str) {
    let line = format!("{MARK} {name}: {}\n", reason.replace('\n', " | "));
    // Straight to the file descriptor: `eprintln!` is captured by libtest
    // and shown only for failing tests. One write, so lines stay whole.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Like [`skip`], for a skip that must not happen on the CI machine (the
/// test backs a claim of the README there): under `CI=true` it fails the
/// test instead.
pub fn skip_unless_ci(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        #[allow(clippy::panic)]
        {
            panic!("this test must run on the CI machine (CI=true), but: {reason}");
        }
    }
    skip(reason);
}

/// Whether the tests that create cgroups under the host's cgroup2 mount may
/// run: only when asked with `OOMKIT_HOST_CGROUP_TESTS=1`. Otherwise this
/// reports the skip and returns false.
pub fn host_cgroup_tests_allowed() -> bool {
    if std::env::var("OOMKIT_HOST_CGROUP_TESTS").is_ok_and(|v| v == "1") {
        return true;
    }
    skip("creates cgroups under the host's cgroup2 mount; set OOMKIT_HOST_CGROUP_TESTS=1 to allow");
    false
}

/// `(test name, reason)` of a skip line, or `None` for any other line.
pub fn parse(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim_end().strip_prefix(MARK)?.strip_prefix(' ')?;
    Some(rest.split_once(": ").unwrap_or((rest, "")))
}
