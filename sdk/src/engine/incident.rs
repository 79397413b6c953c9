//! Incident records: one typed JSON file per action, format `oomkit-incident/1`
//! (every field is documented in `docs/incidents.md`).
//!
//! An [`Incident`] is built after the episode ends, never between the event
//! and the kill, so building and serialising it may allocate. The daemon
//! hands it to a writer thread, so the disk is not on the loop either.
//!
//! The folder is written the way a root daemon must write into a folder an
//! operator can reach: opened once (`O_DIRECTORY | O_NOFOLLOW`) and refused
//! unless owned by our effective uid and not writable by group or others;
//! each record created relative to that fd with
//! `openat(O_CREAT | O_EXCL | O_NOFOLLOW, 0600)` under a temporary name,
//! `fsync`ed, then `renameat2(RENAME_NOREPLACE)`d into place, so a planted
//! symlink is never followed and a reader never sees half a record. Records
//! are numbered by a sequence number (`incident-0000000042.json`) that
//! continues from the highest in the folder; pruning deletes the lowest
//! numbers, so a wall-clock step cannot make the newest records look oldest.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::{Mode, OFlags, RenameFlags};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cgroup::Pressure;
use crate::error::{Error, Op, Result};

pub use super::incident_config::IncidentConfig;
use super::{Action, Episode, Tree, Trigger, Victim};

/// The `format` field of every record.
pub const FORMAT: &str = "oomkit-incident/1";

/// One incident: what happened in an episode that acted (or would have).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Always [`FORMAT`].
    pub format: String,
    /// Sequence number in the folder (assigned when written; 0 before).
    pub seq: u64,
    /// Wall-clock time the record was built, ms since the Unix epoch.
    pub written_unix_ms: u64,
    /// The engine's episode number (restarts with the daemon).
    pub episode: u64,
    /// The handler's name.
    pub handler: String,
    /// Nothing was done: the plan is what would have been.
    pub dry_run: bool,
    /// What started the episode.
    pub trigger: TriggerRecord,
    /// Hierarchy path of the episode's scope.
    pub scope: Option<String>,
    /// How it ended (`acted`, `dry_run`, `refused`, `failed` …).
    pub outcome: Option<String>,
    /// The handler's one-line reason.
    pub reason: String,
    /// The last plan decided, step by step.
    pub plan: Vec<StepRecord>,
    /// Steps the loop refused, and why.
    pub refused: Vec<RefusalRecord>,
    /// What was killed, in order.
    pub victims: Vec<VictimEntry>,
    /// Dry run: the kill steps that would have run.
    pub would_kill: Vec<StepRecord>,
    /// Times a victim did not die in time.
    pub escalations: u32,
    /// Chosen victims passed over because nothing could be signalled
    /// (gone, no longer in the cgroup, out of fds, not permitted). Absent
    /// (0) in records written before it existed.
    #[serde(default)]
    pub passed_over: u32,
    /// The last error met while acting.
    pub error: Option<String>,
    /// Milliseconds from the first event.
    pub timings_ms: TimingsMs,
    /// The scope when the handler decided.
    pub before: Sample,
    /// The scope once the episode had ended (filled by whoever writes the
    /// record; `None` if it could not be read, e.g. the cgroup is gone).
    pub after: Option<Sample>,
    /// The scope's `memory.stat` before acting, bytes or counts by key.
    pub memory_stat: BTreeMap<String, u64>,
    /// The machine before acting.
    pub system: SystemSample,
    /// The largest processes in scope before acting (RSS + swap).
    pub top_processes: Vec<ProcessEntry>,
    /// Parts were dropped to fit the configured size bound.
    pub truncated: bool,
}

/// What started an episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerRecord {
    /// `memory_events`, `pressure`, `escalation` or `tick`.
    pub kind: String,
    /// Hierarchy path of the cgroup it concerns (`None`: system-wide PSI).
    pub cgroup: Option<String>,
    /// `memory_events`: how much each counter rose (`high`, `max`, `oom`, `oom_kill` …).
    pub counters: BTreeMap<String, u64>,
    /// `escalation`: 1 for the first.
    pub attempt: Option<u32>,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// `kill_process`, `kill_cgroup`, `kill_tree`, `set_high`, `freeze`,
    /// `raise_max` or `capture_diagnostics`.
    pub action: String,
    /// Hierarchy path of the cgroup.
    pub cgroup: Option<String>,
    /// The process (`kill_process`, `capture_diagnostics`).
    pub pid: Option<i32>,
    /// The signal number (`capture_diagnostics`).
    pub signal: Option<i32>,
    /// The limit written, bytes (`set_high`, `raise_max`; `None` for `max`).
    pub limit_bytes: Option<u64>,
    /// `freeze`: frozen (true) or thawed.
    pub frozen: Option<bool>,
    /// `raise_max`: how long before the old limit is restored, ms.
    pub duration_ms: Option<u64>,
    /// How long the loop waits for the step to take effect, ms.
    pub deadline_ms: u64,
}

/// A refused step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusalRecord {
    /// The action's name.
    pub action: String,
    /// Hierarchy path of the cgroup.
    pub cgroup: Option<String>,
    /// Why the loop refused it.
    pub reason: String,
}

/// One victim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VictimEntry {
    /// `process` or `cgroup`.
    pub kind: String,
    /// The process, for `process`.
    pub pid: Option<i32>,
    /// Its `comm`, when it was among the top processes.
    pub comm: Option<String>,
    /// Hierarchy path of its cgroup.
    pub cgroup: Option<String>,
    /// Its footprint when chosen (RSS + swap, or memory.current + swap), bytes.
    pub footprint_bytes: u64,
    /// It did not exit before its deadline.
    pub escalated: bool,
    /// A cgroup: processes with `oom_score_adj -1000` left alive, because
    /// the group was killed member by member, skipping them, instead of
    /// with `cgroup.kill`. Absent (0) in records written before it existed,
    /// and 0 when the whole group was killed.
    #[serde(default)]
    pub spared: u32,
}

/// Milliseconds from the first event to each moment (`None`: did not happen).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TimingsMs {
    /// The (last) plan was decided.
    pub decided: Option<f64>,
    /// The first kill signal was sent.
    pub signal_sent: Option<f64>,
    /// The last victim exited.
    pub victim_exited: Option<f64>,
    /// Memory came back.
    pub memory_back: Option<f64>,
    /// The episode ended.
    pub ended: Option<f64>,
}

/// The scope's memory at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When, ms from the first event (`None`: unknown).
    pub at_ms: Option<f64>,
    /// `memory.current`, bytes.
    pub memory_current: Option<u64>,
    /// `memory.swap.current`, bytes.
    pub swap_current: Option<u64>,
    /// `memory.high`, bytes (`None`: `max` or unknown).
    pub memory_high: Option<u64>,
    /// `memory.max`, bytes (`None`: `max` or unknown).
    pub memory_max: Option<u64>,
    /// The lower limit minus `memory.current`, bytes (`None`: no limit).
    pub headroom_bytes: Option<u64>,
    /// `memory.pressure` `some avg10`, percent.
    pub psi_some_avg10: Option<f64>,
    /// `memory.pressure` `full avg10`, percent.
    pub psi_full_avg10: Option<f64>,
}

impl Sample {
    /// A sample from raw values (limits `None` mean `max`).
    pub fn new(
        at_ms: Option<f64>,
        current: Option<u64>,
        swap: Option<u64>,
        high: Option<u64>,
        max: Option<u64>,
        pressure: Option<&Pressure>,
    ) -> Sample {
        let limit = match (high, max) {
            (Some(h), Some(m)) => Some(h.min(m)),
            (h, m) => h.or(m),
        };
        Sample {
            at_ms,
            memory_current: current,
            swap_current: swap,
            memory_high: high,
            memory_max: max,
            headroom_bytes: limit.zip(current).map(|(l, c)| l.saturating_sub(c)),
            psi_some_avg10: pressure.map(|p| p.some.avg10),
            psi_full_avg10: pressure.and_then(|p| p.full.map(|f| f.avg10)),
        }
    }
}

/// The machine at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemSample {
    /// `MemTotal`, bytes.
    pub mem_total: Option<u64>,
    /// `MemAvailable`, bytes.
    pub mem_available: Option<u64>,
    /// `SwapFree`, bytes.
    pub swap_free: Option<u64>,
    /// `/proc/pressure/memory` `some avg10`, percent.
    pub psi_some_avg10: Option<f64>,
    /// `/proc/pressure/memory` `full avg10`, percent.
    pub psi_full_avg10: Option<f64>,
    /// `oom_kill` of `/proc/vmstat`: kernel OOM kills since boot.
    pub oom_kill: Option<u64>,
}

/// One process as the loop saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessEntry {
    /// PID.
    pub pid: i32,
    /// `comm`.
    pub comm: String,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// Swapped-out memory, bytes.
    pub swap_bytes: u64,
    /// `oom_score_adj`.
    pub oom_score_adj: i16,
    /// Effective uid.
    pub uid: u32,
}

fn since(t: Option<Instant>, from: Option<Instant>) -> Option<f64> {
    Some(t?.checked_duration_since(from?)?.as_secs_f64() * 1000.0)
}

fn step_record(
    action: &Action,
    deadline_ms: u64,
    path: &dyn Fn(super::CgroupId) -> Option<String>,
) -> StepRecord {
    let mut s = StepRecord {
        action: action.name().to_owned(),
        cgroup: path(action.cgroup()),
        pid: None,
        signal: None,
        limit_bytes: None,
        frozen: None,
        duration_ms: None,
        deadline_ms,
    };
    match *action {
        Action::KillProcess { pid, .. } => s.pid = Some(pid),
        Action::CaptureDiagnostics { pid, signal, .. } => {
            s.pid = Some(pid);
            s.signal = Some(signal);
        }
        Action::SetHigh { limit, .. } => s.limit_bytes = limit.bytes(),
        Action::Freeze { frozen, .. } => s.frozen = Some(frozen),
        Action::RaiseMax {
            limit, duration, ..
        } => {
            s.limit_bytes = Some(limit);
            s.duration_ms = Some(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        }
        Action::KillCgroup { .. } | Action::KillTree { .. } => {}
    }
    s
}

fn trigger_record(t: &Trigger, path: &dyn Fn(super::CgroupId) -> Option<String>) -> TriggerRecord {
    let mut r = TriggerRecord {
        kind: String::new(),
        cgroup: None,
        counters: BTreeMap::new(),
        attempt: None,
    };
    match *t {
        Trigger::MemoryEvents { cgroup, delta } => {
            r.kind = "memory_events".into();
            r.cgroup = path(cgroup);
            for (k, v) in [
                ("low", delta.low),
                ("high", delta.high),
                ("max", delta.max),
                ("oom", delta.oom),
                ("oom_kill", delta.oom_kill),
                ("oom_group_kill", delta.oom_group_kill),
            ] {
                if let Some(v) = v.filter(|v| *v > 0) {
                    r.counters.insert(k.to_owned(), v);
                }
            }
        }
        Trigger::Pressure { cgroup } => {
            r.kind = "pressure".into();
            r.cgroup = cgroup.and_then(path);
        }
        Trigger::Machine { signals, sample } => {
            r.kind = "machine".into();
            for name in signals.names() {
                r.counters.insert(name.to_owned(), 1);
            }
            for (k, v) in [
                ("headroom_bytes", sample.headroom),
                ("low_bytes", sample.low),
                ("critical_bytes", sample.critical),
                ("refaults_per_s", sample.refault_rate),
                ("steal_per_s", sample.steal_rate),
            ] {
                r.counters.insert(k.to_owned(), v);
            }
        }
        Trigger::Escalation { cgroup, attempt } => {
            r.kind = "escalation".into();
            r.cgroup = path(cgroup);
            r.attempt = Some(attempt);
        }
        Trigger::Tick => r.kind = "tick".into(),
    }
    r
}

impl Incident {
    /// The record of an ended episode. `after` is left `None`.
    pub fn from_episode(ep: &Episode, tree: &Tree, handler: &str, dry_run: bool) -> Incident {
        let path = |id| tree.path(id).map(|p| p.display().to_string());
        let t = ep.timings;
        let ms = |x| since(x, t.event_seen);
        let deadline = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let victims = ep
            .victims
            .iter()
            .flatten()
            .map(|v| {
                let (pid, spared) = match v.victim {
                    Victim::Process { pid, .. } => (Some(pid), 0),
                    Victim::Cgroup { spared, .. } => (None, spared),
                };
                VictimEntry {
                    kind: if pid.is_some() { "process" } else { "cgroup" }.into(),
                    pid,
                    comm: pid
                        .and_then(|p| ep.top_processes.iter().flatten().find(|s| s.pid == p))
                        .map(|s| s.comm().to_owned()),
                    cgroup: path(v.victim.cgroup()),
                    footprint_bytes: v.footprint,
                    escalated: v.escalated,
                    spared,
                }
            })
            .collect();
        let plan: Vec<StepRecord> = ep
            .plan
            .steps()
            .map(|s| step_record(&s.action, deadline(s.deadline), &path))
            .collect();
        let would_kill = if dry_run {
            ep.plan
                .steps()
                .filter(|s| s.action.is_kill())
                .map(|s| step_record(&s.action, deadline(s.deadline), &path))
                .collect()
        } else {
            Vec::new()
        };
        let mut memory_stat = BTreeMap::new();
        if let Ok(Value::Object(known)) = serde_json::to_value(&ep.scope_stat_before) {
            for (k, v) in known {
                if let Some(n) = v.as_u64() {
                    memory_stat.insert(k, n);
                }
            }
        }
        for (k, v) in &ep.scope_stat_before.other {
            memory_stat.insert(k.as_str().to_owned(), *v);
        }
        let b = &ep.scope_before;
        let sys = &ep.system_before;
        Incident {
            format: FORMAT.to_owned(),
            seq: 0,
            written_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            episode: ep.id,
            handler: handler.to_owned(),
            dry_run,
            trigger: trigger_record(&ep.trigger, &path),
            scope: ep.scope_path.as_ref().map(|p| p.display().to_string()),
            outcome: ep.outcome.and_then(|o| match serde_json::to_value(o) {
                Ok(Value::String(s)) => Some(s),
                _ => None,
            }),
            reason: ep.plan.reason().to_owned(),
            plan,
            refused: ep
                .refusals
                .iter()
                .flatten()
                .map(|r| RefusalRecord {
                    action: r.action.name().to_owned(),
                    cgroup: path(r.action.cgroup()),
                    reason: r.reason.to_string(),
                })
                .collect(),
            victims,
            would_kill,
            escalations: ep.escalations,
            passed_over: ep.passed_over,
            error: ep.last_error.clone(),
            timings_ms: TimingsMs {
                decided: ms(t.decided),
                signal_sent: ms(t.signal_sent),
                victim_exited: ms(t.victim_exited),
                memory_back: ms(t.memory_back),
                ended: ms(t.ended),
            },
            before: Sample::new(
                ms(t.decided),
                b.current,
                b.swap_current,
                b.high.and_then(|l| l.bytes()),
                b.max.and_then(|l| l.bytes()),
                b.pressure.as_ref(),
            ),
            after: None,
            memory_stat,
            system: SystemSample {
                mem_total: sys.meminfo.as_ref().and_then(|m| m.mem_total),
                mem_available: sys.meminfo.as_ref().and_then(|m| m.mem_available),
                swap_free: sys.meminfo.as_ref().and_then(|m| m.swap_free),
                psi_some_avg10: sys.pressure.map(|p| p.some.avg10),
                psi_full_avg10: sys.pressure.and_then(|p| p.full.map(|f| f.avg10)),
                oom_kill: sys.vmstat.as_ref().and_then(|v| v.oom_kill),
            },
            top_processes: ep
                .top_processes
                .iter()
                .flatten()
                .map(|p| ProcessEntry {
                    pid: p.pid,
                    comm: p.comm().to_owned(),
                    rss_bytes: p.rss,
                    swap_bytes: p.swap,
                    oom_score_adj: p.oom_score_adj,
                    uid: p.uid,
                })
                .collect(),
            truncated: false,
        }
    }

    /// The record as JSON text, shrunk to at most `max_bytes` when possible:
    /// first the process list and `memory.stat` go, then the plan details.
    pub fn to_bounded_json(&mut self, max_bytes: usize) -> String {
        let text = |i: &Incident| serde_json::to_string_pretty(i).unwrap_or_default();
        let mut s = text(self);
        if s.len() > max_bytes {
            self.truncated = true;
            self.top_processes.clear();
            self.memory_stat.clear();
            s = text(self);
        }
        if s.len() > max_bytes {
            self.plan.truncate(1);
            self.refused.clear();
            self.would_kill.clear();
            self.victims.truncate(1);
            self.error = self.error.take().map(|e| e.chars().take(200).collect());
            self.reason = self.reason.chars().take(200).collect();
            s = serde_json::to_string(self).unwrap_or_default();
        }
        s
    }
}

/// The JSON record of an episode (kept for the embeddable `Runner`).
pub fn to_json(ep: &Episode, tree: &Tree, handler: &str, dry_run: bool) -> Value {
    serde_json::to_value(Incident::from_episode(ep, tree, handler, dry_run)).unwrap_or(Value::Null)
}

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
