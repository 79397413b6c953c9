//! Writing records into a bounded folder and reading them back (see the parent module for the
//! rules a root daemon's folder must follow).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{Mode, OFlags, RenameFlags};
use serde_json::Value;

use super::*;
use crate::error::{Error, Op, Result};

/// The sequence number of a record's file name (`incident-0000000042.json`).
pub fn seq_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("incident-")?.strip_suffix(".json")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The file name of record `seq`.
pub fn file_name(seq: u64) -> String {
    format!("incident-{seq:010}.json")
}

fn io(path: &Path, op: Op, e: rustix::io::Errno) -> Error {
    Error::io(
        path,
        op,
        std::io::Error::from_raw_os_error(e.raw_os_error()),
    )
}

/// Writes incident records into a bounded folder (see the module docs).
#[derive(Debug)]
pub struct IncidentSink {
    cfg: IncidentConfig,
    dir: OwnedFd,
    next: AtomicU64,
}

impl IncidentSink {
    /// Creates the folder if needed (mode 0700), opens it, and checks that it
    /// is a real directory owned by this process's effective uid and not
    /// writable by group or others.
    pub fn new(cfg: IncidentConfig) -> Result<Self> {
        let p = cfg.dir.clone();
        if !p.exists() {
            std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, Op::Write, e))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io(&p, Op::Write, e))?;
        }
        let dir = rustix::fs::open(
            &p,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io(&p, Op::Open, e))?;
        let st = rustix::fs::fstat(&dir).map_err(|e| io(&p, Op::Stat, e))?;
        let euid = rustix::process::geteuid().as_raw();
        if st.st_uid != euid {
            return Err(Error::InvalidPath {
                path: p,
                reason: "incident folder is not owned by the daemon's user; refusing to write into it",
            });
        }
        if st.st_mode & 0o022 != 0 {
            return Err(Error::InvalidPath {
                path: p,
                reason: "incident folder is writable by group or others; refusing to write into it (chmod 0700)",
            });
        }
        let sink = IncidentSink {
            cfg,
            dir,
            next: AtomicU64::new(0),
        };
        let highest = sink.sequence_numbers()?.into_iter().max().unwrap_or(0);
        sink.next.store(highest + 1, Ordering::Relaxed);
        Ok(sink)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    fn sequence_numbers(&self) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        let rd = std::fs::read_dir(&self.cfg.dir)
            .map_err(|e| Error::io(&self.cfg.dir, Op::ReadDir, e))?;
        for e in rd.flatten() {
            if let Some(n) = e.file_name().to_str().and_then(seq_of) {
                out.push(n);
            }
        }
        Ok(out)
    }

    /// Writes a JSON record (it must be an [`Incident`]) and prunes; kept for
    /// the embeddable `Runner`.
    pub fn write(&self, record: Value, _episode: u64) -> Result<PathBuf> {
        let mut inc: Incident =
            serde_json::from_value(record).map_err(|e| Error::InvalidArgument {
                what: "incident record",
                reason: e.to_string(),
            })?;
        self.write_incident(&mut inc)
    }

    /// Assigns the next sequence number to `inc`, writes it (shrunk to fit
    /// `max_bytes`), prunes the folder, and returns the file written.
    pub fn write_incident(&self, inc: &mut Incident) -> Result<PathBuf> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        inc.seq = seq;
        let text = inc.to_bounded_json(self.cfg.max_bytes);
        let name = file_name(seq);
        let tmp = format!(".{name}.tmp");
        let path = self.cfg.dir.join(&name);
        let tmp_path = self.cfg.dir.join(&tmp);
        // A temporary left by a crash: unlinkat removes a symlink itself, never its target.
        let _ = rustix::fs::unlinkat(&self.dir, tmp.as_str(), rustix::fs::AtFlags::empty());
        let fd = rustix::fs::openat(
            &self.dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io(&tmp_path, Op::Open, e))?;
        let mut file = std::fs::File::from(fd);
        use std::io::Write;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(&tmp_path, Op::Write, e))?;
        drop(file);
        rustix::fs::renameat_with(
            &self.dir,
            tmp.as_str(),
            &self.dir,
            name.as_str(),
            RenameFlags::NOREPLACE,
        )
        .map_err(|e| io(&path, Op::Write, e))?;
        self.prune()?;
        Ok(path)
    }

    fn prune(&self) -> Result<()> {
        let mut seqs = self.sequence_numbers()?;
        if seqs.len() <= self.cfg.max_count {
            return Ok(());
        }
        seqs.sort_unstable();
        let excess = seqs.len() - self.cfg.max_count;
        for seq in seqs.into_iter().take(excess) {
            let name = file_name(seq);
            rustix::fs::unlinkat(&self.dir, name.as_str(), rustix::fs::AtFlags::empty())
                .map_err(|e| io(&self.cfg.dir.join(&name), Op::Write, e))?;
        }
        Ok(())
    }
}

/// Reads every record in `dir`, lowest sequence number first; files that
/// are not valid records are returned as errors in place.
pub fn read_all(dir: &Path) -> Result<Vec<(u64, std::result::Result<Incident, String>)>> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, Op::ReadDir, e))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(seq_of))
        .collect();
    seqs.sort_unstable();
    Ok(seqs
        .into_iter()
        .map(|seq| (seq, read_one(dir, seq)))
        .collect())
}

/// Reads record `seq` of `dir`.
pub fn read_one(dir: &Path, seq: u64) -> std::result::Result<Incident, String> {
    let p = dir.join(file_name(seq));
    let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    let inc: Incident = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not an incident record: {e}", p.display()))?;
    if inc.format != FORMAT {
        return Err(format!(
            "{}: format `{}`, expected `{FORMAT}`",
            p.display(),
            inc.format
        ));
    }
    Ok(inc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(outcome: &str, bulk: usize) -> Incident {
        Incident {
            format: FORMAT.into(),
            seq: 0,
            written_unix_ms: 0,
            episode: 1,
            handler: "priority-kill".into(),
            dry_run: false,
            trigger: TriggerRecord {
                kind: "memory_events".into(),
                cgroup: Some("/a".into()),
                counters: BTreeMap::from([("high".to_string(), 1)]),
                attempt: None,
            },
            scope: Some("/a".into()),
            outcome: Some(outcome.into()),
            reason: "largest".into(),
            plan: Vec::new(),
            refused: Vec::new(),
            victims: Vec::new(),
            would_kill: Vec::new(),
            escalations: 0,
            passed_over: 0,
            error: None,
            timings_ms: TimingsMs::default(),
            before: Sample::default(),
            after: None,
            memory_stat: BTreeMap::new(),
            system: SystemSample::default(),
            top_processes: (0..bulk)
                .map(|i| ProcessEntry {
                    pid: i as i32,
                    comm: "x".repeat(15),
                    rss_bytes: 1,
                    swap_bytes: 0,
                    oom_score_adj: 0,
                    uid: 0,
                })
                .collect(),
            truncated: false,
        }
    }

    fn sink(dir: &Path, max_count: usize, max_bytes: usize) -> IncidentSink {
        IncidentSink::new(IncidentConfig {
            dir: dir.to_path_buf(),
            max_count,
            max_bytes,
        })
        .unwrap()
    }

    #[test]
    fn folder_is_bounded_in_count_and_size_and_pruned_by_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let inc = dir.path().join("inc");
        let s = sink(&inc, 3, 1500);
        for _ in 0..5 {
            let p = s.write_incident(&mut record("acted", 100)).unwrap();
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.len() <= 1500, "{} bytes", text.len());
            let v: Incident = serde_json::from_str(&text).unwrap();
            assert_eq!(v.outcome.as_deref(), Some("acted"));
            assert!(v.truncated);
        }
        let all = read_all(&inc).unwrap();
        let seqs: Vec<u64> = all.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![3, 4, 5], "the lowest numbers are pruned");
        // A new sink continues the sequence, whatever the wall clock says.
        let s2 = sink(&inc, 3, 1 << 20);
        let p = s2.write_incident(&mut record("acted", 0)).unwrap();
        assert!(p.ends_with("incident-0000000006.json"), "{}", p.display());
    }

    #[test]
    fn records_are_private_and_symlinks_are_not_followed() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let inc = dir.path().join("inc");
        let s = sink(&inc, 10, 1 << 20);
        assert_eq!(std::fs::metadata(&inc).unwrap().mode() & 0o777, 0o700);
        // A planted symlink at the next temporary name must not be written through.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, inc.join(".incident-0000000001.json.tmp")).unwrap();
        let p = s.write_incident(&mut record("acted", 0)).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        // A group-writable folder is refused.
        std::fs::set_permissions(&inc, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = IncidentSink::new(IncidentConfig {
            dir: inc.clone(),
            ..IncidentConfig::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("writable by group or others"),
            "{err}"
        );
        // The folder itself may not be a symlink.
        let link = dir.path().join("link");
        std::fs::set_permissions(&inc, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&inc, &link).unwrap();
        assert!(
            IncidentSink::new(IncidentConfig {
                dir: link,
                ..IncidentConfig::default()
            })
            .is_err()
        );
    }

    #[test]
    fn round_trips_and_rejects_other_formats() {
        let dir = tempfile::tempdir().unwrap();
        let s = sink(dir.path(), 10, 1 << 20);
        let mut r = record("dry_run", 2);
        r.after = Some(Sample::new(Some(5.0), Some(10), None, None, Some(30), None));
        s.write_incident(&mut r).unwrap();
        let back = read_one(dir.path(), 1).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.after.unwrap().headroom_bytes, Some(20));
        std::fs::write(dir.path().join(file_name(2)), r#"{"format":"other"}"#).unwrap();
        assert!(read_one(dir.path(), 2).is_err());
        assert_eq!(seq_of("incident-0000000002.json"), Some(2));
        assert_eq!(seq_of("incident-0001764385000000-000001.json"), None);
    }
}
