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
//!
//! This file is the record's types; `build` fills one from an ended episode, `sink` writes and
//! reads the folder.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cgroup::Pressure;

pub use super::incident_config::IncidentConfig;

mod build;
mod sink;

pub use build::to_json;
pub use sink::{IncidentSink, file_name, read_all, read_one, seq_of};

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
