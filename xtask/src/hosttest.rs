//! Host tests with counted skips: runs a `cargo test` command, streams its output, and counts
//! passed, failed and skipped tests.
//!
//! libtest has no runtime skip, so a host test that cannot run here reports itself with a skip
//! line (`sdk/tests/common/skip.rs`, shared with the tests through `#[path]`) and returns, which
//! libtest counts as a pass. Here each skip line turns one pass into a skip, with its reason;
//! `#[ignore]`d tests count as skips too.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use crate::util::{Context, Result};

#[path = "../../sdk/tests/common/skip.rs"]
mod skip;

/// Counts of one or more `cargo test` runs.
#[derive(Debug, Default, Clone)]
pub struct HostCounts {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// `(test, reason)` of every skip.
    pub skips: Vec<(String, String)>,
    /// Skip lines not yet taken off `passed` (see [`HostCounts::settle`]).
    unsettled: usize,
}

impl HostCounts {
    pub fn add(&mut self, other: &HostCounts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
        self.skips.extend(other.skips.iter().cloned());
    }

    /// After the last line: each skipped test also reported as passed in its binary's result
    /// line (which may come before or after the skip line: stderr and stdout), so take the skips
    /// off the passes.
    fn settle(&mut self) {
        self.passed = self.passed.saturating_sub(self.unsettled);
        self.unsettled = 0;
    }

    /// Account for one line of `cargo test` output.
    fn feed(&mut self, line: &str) {
        if let Some((name, reason)) = skip::parse(line) {
            self.skipped += 1;
            self.unsettled += 1;
            self.skips.push((name.to_string(), reason.to_string()));
            return;
        }
        if let Some(rest) = line.strip_prefix("test ") {
            if let Some((name, verdict)) = rest.split_once(" ... ") {
                if let Some(why) = verdict.strip_prefix("ignored") {
                    let why = why.trim_start_matches([',', ' ']);
                    self.skips.push((
                        name.to_string(),
                        if why.is_empty() { "#[ignore]" } else { why }.to_string(),
                    ));
                }
                return;
            }
        }
        let Some(summary) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in summary.split([';', '.']) {
            let mut w = part.split_whitespace();
            let (Some(n), Some(what)) = (w.next(), w.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<usize>() else {
                continue;
            };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.skipped += n,
                _ => {}
            }
        }
    }
}

/// Run `cmd` (a `cargo test …`) with its output streamed through, and count its tests.
/// Returns whether it succeeded, and the counts.
pub fn run_counted(cmd: &mut Command) -> Result<(bool, HostCounts)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(|| format!("cannot run {:?}", cmd.get_program()))?;
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(forward(out, false, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(forward(err, true, tx.clone()));
    }
    drop(tx);
    let mut counts = HostCounts::default();
    for line in rx {
        counts.feed(&line);
    }
    counts.settle();
    for r in readers {
        let _ = r.join();
    }
    let status = child
        .wait()
        .context(|| "waiting for cargo test".to_string())?;
    Ok((status.success(), counts))
}

/// Copy a pipe line by line to our stdout or stderr, and hand each line to `tx`.
fn forward(
    pipe: impl Read + Send + 'static,
    to_stderr: bool,
    tx: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let _ = if to_stderr {
                        std::io::stderr().write_all(&buf)
                    } else {
                        std::io::stdout().write_all(&buf)
                    };
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    let _ = tx.send(line);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_lines_turn_passes_into_skips() {
        let mut c = HostCounts::default();
        for l in [
            "running 3 tests",
            "@@OOMKIT-TEST-SKIP@@ host_trigger: no /proc/pressure/memory on this kernel",
            "test host_trigger ... ok",
            "test slow ... ignored, needs a VM",
            "test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: FAILED. 4 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s",
            "test result: ok. 1 passed; 0 failed",
        ] {
            c.feed(l);
        }
        c.settle();
        assert_eq!((c.passed, c.failed, c.skipped), (6, 1, 2));
        assert_eq!(
            c.skips,
            vec![
                (
                    "host_trigger".to_string(),
                    "no /proc/pressure/memory on this kernel".to_string()
                ),
                ("slow".to_string(), "needs a VM".to_string()),
            ]
        );
    }
}
