//! `[signals] tripwire`: a `memory.high` the daemon writes, owns and gives back.
//!
//! Why: the machine-wide early warning (`[signals.machine]`) samples `MemAvailable`; on a host
//! where memory fills faster than its `max_fill_rate`, or where that estimate counts page cache
//! that cannot be reclaimed in time (dirty, under writeback, mapped and hot), it can come too
//! late. A
//! `memory.high` makes the kernel itself raise `high` in `memory.events` and throttle the
//! cgroup that crossed it, which is an earlier and certain signal. The price is that throttling:
//! every process under a child that crosses the tripwire is made to reclaim and slowed, the
//! protected ones included.
//!
//! The split: each top-level child of the managed root gets `memory.high = tripwire` (not a
//! share of it). A share would have to be re-balanced as children come and go and would throttle
//! a child that merely happens to be the largest while the machine is fine; the whole tripwire
//! per child caps any one child at the tripwire and raises `high` when one child alone holds
//! that much. A sum spread over several children does not cross it; that case is the machine
//! signal's. A child whose `memory.high` is already at or below the tripwire is left alone and
//! not owned (someone else's lower limit stays theirs).
//!
//! Ownership: the previous value of each child written is remembered; [`Tripwire::restore`]
//! writes it back only where `memory.high` still holds the daemon's value (another writer's
//! change wins). The daemon restores on stop (SIGTERM/SIGINT), on a reload that changes or
//! removes the tripwire, and on drop (an error return). A SIGKILLed daemon leaves its values
//! in place; they are visible as exactly the tripwire on every child.
//!
//! Plain files under the root's directory (no cgroup handle), so the host tests run the same
//! code on a temporary directory.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use oomkit::cgroup::Limit;
use oomkit::events::Level;

/// Values written are multiples of this, so that the kernel (which keeps `memory.high` in pages
/// of up to 64 KiB) reads back exactly what was written, and ownership can be checked by value.
const ALIGN: u64 = 64 << 10;

/// Why a child's `memory.high` could not be read, written or restored.
#[derive(Debug, thiserror::Error)]
pub enum TripwireError {
    /// Reading or writing the file failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was tried.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The file holds something other than `max` or a byte count.
    #[error("{path}: not `max` or a byte count: {text:?}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What it held.
        text: String,
    },
    /// `/proc/meminfo` has no readable `MemTotal`.
    #[error("{path}: no MemTotal line")]
    NoMemTotal {
        /// The file.
        path: PathBuf,
    },
}

/// A child whose `memory.high` the daemon wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owned {
    name: String,
    previous: Limit,
}

/// The tripwire on one root's top-level children.
#[derive(Debug)]
pub struct Tripwire {
    root: PathBuf,
    skip: Option<PathBuf>,
    high: u64,
    owned: Vec<Owned>,
    /// Children already looked at (owned, left alone, or failed), so each is judged once.
    seen: Vec<String>,
}

/// Resolves the configured level against `MemTotal`: the bytes to write (aligned down) and a
/// warning when a size is not below `MemTotal` (it would then never fire).
pub fn resolve(level: Level, mem_total: u64) -> (u64, Option<String>) {
    let bytes = level.resolve(mem_total);
    let warn = (matches!(level, Level::Bytes(_)) && bytes >= mem_total).then(|| {
        format!(
            "signals.tripwire = {level}: not below MemTotal ({mem_total} bytes); no child can \
             reach it before the machine is out of memory"
        )
    });
    ((bytes / ALIGN * ALIGN).max(ALIGN), warn)
}

/// `MemTotal` from a `/proc/meminfo` file, in bytes.
pub fn mem_total(meminfo: &Path) -> Result<u64, TripwireError> {
    let text = std::fs::read_to_string(meminfo).map_err(|source| TripwireError::Io {
        path: meminfo.to_path_buf(),
        op: "read",
        source,
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb.saturating_mul(1024))
        .ok_or_else(|| TripwireError::NoMemTotal {
            path: meminfo.to_path_buf(),
        })
}

fn read_high(path: &Path) -> Result<Option<Limit>, TripwireError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        // No memory controller below the root (or the child went away): nothing to own.
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TripwireError::Io {
                path: path.to_path_buf(),
                op: "read",
                source,
            });
        }
    };
    match text.trim() {
        "max" => Ok(Some(Limit::Max)),
        t => t
            .parse()
            .map(|b| Some(Limit::Bytes(b)))
            .map_err(|_| TripwireError::Malformed {
                path: path.to_path_buf(),
                text: t.chars().take(64).collect(),
            }),
    }
}

fn write_high(path: &Path, v: Limit) -> Result<(), TripwireError> {
    // Never create the file: a cgroup directory already has it. O_TRUNC as a shell's `>` does
    // (cgroupfs ignores it; a test's regular file needs it).
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(v.to_string().as_bytes()))
        .map_err(|source| TripwireError::Io {
            path: path.to_path_buf(),
            op: "write",
            source,
        })
}

impl Tripwire {
    /// A tripwire of `high` bytes (aligned down to 64 KiB) on the children of `root`, never on
    /// `skip` (the daemon's own reserve cgroup). Writes nothing until [`Tripwire::sync`].
    pub fn new(root: impl Into<PathBuf>, high: u64, skip: Option<PathBuf>) -> Self {
        Tripwire {
            root: root.into(),
            skip,
            high: (high / ALIGN * ALIGN).max(ALIGN),
            owned: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// The value written, in bytes.
    pub fn high(&self) -> u64 {
        self.high
    }

    /// How many children hold the daemon's value now.
    pub fn owned(&self) -> usize {
        self.owned.len()
    }

    /// Sets the tripwire on every top-level child not seen before and forgets children that
    /// are gone. Returns the problems (each naming its file); a failed child is not retried.
    pub fn sync(&mut self) -> Vec<TripwireError> {
        let mut errors = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(source) => {
                errors.push(TripwireError::Io {
                    path: self.root.clone(),
                    op: "list",
                    source,
                });
                return errors;
            }
        };
        let mut present = Vec::new();
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            present.push(name);
        }
        self.owned.retain(|o| present.contains(&o.name));
        self.seen.retain(|s| present.contains(s));
        for name in present {
            if self.seen.contains(&name) {
                continue;
            }
            self.seen.push(name.clone());
            let dir = self.root.join(&name);
            if self.skip.as_deref() == Some(dir.as_path()) {
                continue;
            }
            let file = dir.join("memory.high");
            let previous = match read_high(&file) {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if previous.bytes().is_some_and(|b| b <= self.high) {
                continue;
            }
            match write_high(&file, Limit::Bytes(self.high)) {
                Ok(()) => self.owned.push(Owned { name, previous }),
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    /// Gives every owned child its previous `memory.high` back where it still holds the
    /// daemon's value. Returns the children left alone because someone changed the value
    /// (as `(path, value found)`) and the problems.
    pub fn restore(&mut self) -> (Vec<(PathBuf, Limit)>, Vec<TripwireError>) {
        let mut changed = Vec::new();
        let mut errors = Vec::new();
        for o in std::mem::take(&mut self.owned) {
            let file = self.root.join(&o.name).join("memory.high");
            match read_high(&file) {
                Ok(Some(Limit::Bytes(b))) if b == self.high => {
                    if let Err(e) = write_high(&file, o.previous) {
                        errors.push(e);
                    }
                }
                Ok(Some(other)) => changed.push((file, other)),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        self.seen.clear();
        (changed, errors)
    }

    /// [`Tripwire::sync`], logging the problems.
    pub fn sync_logged(&mut self) {
        for e in self.sync() {
            tracing::warn!(error = %e, "tripwire: child left without memory.high");
        }
    }

    /// [`Tripwire::restore`], logging what was left alone and the problems.
    pub fn restore_logged(&mut self) {
        let n = self.owned.len();
        let (changed, errors) = self.restore();
        for (path, v) in &changed {
            tracing::warn!(
                path = %path.display(),
                found = %v,
                "tripwire: memory.high changed by someone else; left as is"
            );
        }
        for e in &errors {
            tracing::warn!(error = %e, "tripwire: restoring memory.high failed");
        }
        if n > 0 {
            tracing::info!(
                restored = n - changed.len() - errors.len(),
                "tripwire: previous memory.high restored"
            );
        }
    }
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        if !self.owned.is_empty() {
            self.restore_logged();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(root: &Path, name: &str, high: Option<&str>) {
        let d = root.join(name);
        std::fs::create_dir(&d).unwrap();
        if let Some(h) = high {
            std::fs::write(d.join("memory.high"), format!("{h}\n")).unwrap();
        }
    }

    fn high(root: &Path, name: &str) -> String {
        std::fs::read_to_string(root.join(name).join("memory.high"))
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn sets_restores_and_respects_other_writers() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        child(r, "a", Some("max"));
        child(r, "b", Some("5000000000"));
        child(r, "low", Some("65536")); // below the tripwire: someone else's, left alone
        child(r, "nomem", None); // no memory controller: skipped
        child(r, "reserve", Some("max")); // the daemon's own cgroup
        std::fs::write(r.join("memory.high"), "max").unwrap(); // a file, not a child
        let mut tw = Tripwire::new(r, (1 << 30) + 123, Some(r.join("reserve")));
        assert_eq!(tw.high(), 1 << 30);
        assert!(tw.sync().is_empty());
        assert_eq!(tw.owned(), 2);
        assert_eq!(high(r, "a"), "1073741824");
        assert_eq!(high(r, "b"), "1073741824");
        assert_eq!(high(r, "low"), "65536");
        assert_eq!(high(r, "reserve"), "max");
        assert_eq!(high(r, ""), "max");

        // A new child gets it on the next sync; a second sync rewrites nothing.
        child(r, "late", Some("max"));
        std::fs::write(r.join("a/memory.high"), "max").unwrap();
        assert!(tw.sync().is_empty());
        assert_eq!(high(r, "late"), "1073741824");
        assert_eq!(high(r, "a"), "max", "seen children are not rewritten");

        // Someone else set b: restore leaves it.
        std::fs::write(r.join("b/memory.high"), "2000000000").unwrap();
        let (changed, errors) = tw.restore();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(changed.len(), 2, "{changed:?}");
        assert_eq!(high(r, "a"), "max");
        assert_eq!(high(r, "b"), "2000000000");
        assert_eq!(high(r, "late"), "max");
        assert_eq!(tw.owned(), 0);
    }

    #[test]
    fn drop_restores_and_gone_children_are_forgotten() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        child(r, "a", Some("max"));
        child(r, "gone", Some("max"));
        {
            let mut tw = Tripwire::new(r, 1 << 30, None);
            assert!(tw.sync().is_empty());
            assert_eq!(tw.owned(), 2);
            std::fs::remove_dir_all(r.join("gone")).unwrap();
            assert!(tw.sync().is_empty());
            assert_eq!(tw.owned(), 1);
        }
        assert_eq!(high(r, "a"), "max");
    }

    #[test]
    fn malformed_file_is_named_and_untouched() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        child(r, "bad", Some("lots"));
        let mut tw = Tripwire::new(r, 1 << 30, None);
        let errors = tw.sync();
        assert_eq!(errors.len(), 1);
        let msg = errors[0].to_string();
        assert!(
            msg.contains("bad/memory.high") && msg.contains("lots"),
            "{msg}"
        );
        assert_eq!(high(r, "bad"), "lots");
        assert_eq!(tw.owned(), 0);
        let missing = Tripwire::new(r.join("nope"), 1 << 30, None).sync();
        assert!(missing[0].to_string().contains("nope"), "{missing:?}");
    }

    #[test]
    fn resolves_against_mem_total() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path().join("meminfo");
        std::fs::write(&m, "MemTotal:        1000000 kB\nMemFree: 1 kB\n").unwrap();
        let total = mem_total(&m).unwrap();
        assert_eq!(total, 1_024_000_000);
        let (b, w) = resolve(Level::Fraction(0.9), total);
        assert!(w.is_none());
        assert_eq!(b % ALIGN, 0);
        assert!(b <= 921_600_000 && b > 921_600_000 - ALIGN);
        let (_, w) = resolve(Level::Bytes(2 << 30), total);
        assert!(w.unwrap().contains("not below MemTotal"));
        std::fs::write(&m, "MemFree: 1 kB\n").unwrap();
        assert!(mem_total(&m).unwrap_err().to_string().contains("MemTotal"));
    }
}
