//! Incident records: one JSON file per action, in a bounded folder.
//!
//! Written after the episode ends — never between the event and the kill —
//! so serialisation may allocate. The folder is bounded in count and each
//! record in size: the oldest records are deleted past `max_count`, and a
//! record over `max_bytes` drops its bulkiest parts (process list, unknown
//! `memory.stat` keys) before it is written.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::error::{Error, Op, Result};

pub use super::incident_config::IncidentConfig;
use super::{Episode, Tree, Victim};

fn ms(t: Option<Instant>, from: Option<Instant>) -> Value {
    match (t, from) {
        (Some(t), Some(f)) => json!(t.saturating_duration_since(f).as_secs_f64() * 1000.0),
        _ => Value::Null,
    }
}

/// Builds the JSON record of an episode.
pub fn to_json(ep: &Episode, tree: &Tree, handler: &str, dry_run: bool) -> Value {
    let path = |id| tree.path(id).map(|p| p.display().to_string());
    let t = ep.timings;
    let victims: Vec<Value> = ep
        .victims
        .iter()
        .flatten()
        .map(|v| {
            let (kind, pid) = match v.victim {
                Victim::Process { pid, .. } => ("process", Some(pid)),
                Victim::Cgroup { .. } => ("cgroup", None),
            };
            let comm = pid
                .and_then(|p| ep.top_processes.iter().flatten().find(|s| s.pid == p))
                .map(|s| s.comm().to_owned());
            json!({
                "kind": kind,
                "pid": pid,
                "comm": comm,
                "cgroup": path(v.victim.cgroup()),
                "footprint_bytes": v.footprint,
                "escalated": v.escalated,
            })
        })
        .collect();
    let steps: Vec<Value> = ep
        .plan
        .steps()
        .map(|s| {
            json!({
                "action": s.action.name(),
                "cgroup": path(s.action.cgroup()),
                "detail": format!("{:?}", s.action),
                "deadline_ms": s.deadline.as_millis() as u64,
            })
        })
        .collect();
    let refusals: Vec<Value> = ep
        .refusals
        .iter()
        .flatten()
        .map(|r| json!({"action": r.action.name(), "cgroup": path(r.action.cgroup()), "reason": r.reason}))
        .collect();
    // What a dry run would have killed, readable without parsing `detail`.
    let would_kill: Vec<Value> = ep
        .plan
        .steps()
        .filter(|s| dry_run && s.action.is_kill())
        .map(|s| {
            let pid = match s.action {
                super::Action::KillProcess { pid, .. } => Some(pid),
                _ => None,
            };
            json!({"action": s.action.name(), "cgroup": path(s.action.cgroup()), "pid": pid})
        })
        .collect();
    let mut stat = serde_json::Map::new();
    if let Ok(Value::Object(known)) = serde_json::to_value(&ep.scope_stat_before) {
        for (k, v) in known {
            if k != "other" && !v.is_null() {
                stat.insert(k, v);
            }
        }
    }
    for (k, v) in &ep.scope_stat_before.other {
        stat.insert(k.as_str().to_owned(), json!(v));
    }
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    json!({
        "format": "oomkit-incident/1",
        "written_unix_ms": wall,
        "episode": ep.id,
        "handler": handler,
        "dry_run": dry_run,
        "trigger": serde_json::to_value(ep.trigger).unwrap_or(Value::Null),
        "scope": ep.scope_path.as_ref().map(|p| p.display().to_string()),
        "outcome": ep.outcome,
        "reason": ep.plan.reason(),
        "plan": steps,
        "refused": refusals,
        "victims": victims,
        "would_kill": would_kill,
        "escalations": ep.escalations,
        "error": ep.last_error,
        "timings_ms": {
            "decided": ms(t.decided, t.event_seen),
            "signal_sent": ms(t.signal_sent, t.event_seen),
            "victim_exited": ms(t.victim_exited, t.event_seen),
            "memory_back": ms(t.memory_back, t.event_seen),
            "ended": ms(t.ended, t.event_seen),
        },
        "before": {
            "scope": ep.scope_before,
            "memory_stat": stat,
            "system": ep.system_before,
            "top_processes": ep.top_processes.iter().flatten().collect::<Vec<_>>(),
        },
    })
}

/// Writes incident records into a bounded folder.
#[derive(Debug)]
pub struct IncidentSink {
    cfg: IncidentConfig,
}

impl IncidentSink {
    /// Creates the folder if needed.
    pub fn new(cfg: IncidentConfig) -> Result<Self> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| Error::io(&cfg.dir, Op::Write, e))?;
        Ok(IncidentSink { cfg })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    /// Writes one record (shrunk to fit `max_bytes`) and prunes old ones.
    /// Returns the file written.
    pub fn write(&self, mut record: Value, episode: u64) -> Result<PathBuf> {
        let mut text = serde_json::to_string_pretty(&record).unwrap_or_default();
        if text.len() > self.cfg.max_bytes {
            if let Some(b) = record.get_mut("before") {
                b["top_processes"] = json!("dropped: record over max_bytes");
                b["memory_stat"] = json!("dropped: record over max_bytes");
            }
            text = serde_json::to_string(&record).unwrap_or_default();
        }
        if text.len() > self.cfg.max_bytes {
            let minimal = json!({
                "format": "oomkit-incident/1",
                "episode": episode,
                "outcome": record.get("outcome"),
                "truncated": true,
            });
            text = minimal.to_string();
        }
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let name = format!("incident-{wall:016}-{episode:06}.json");
        let path = self.cfg.dir.join(name);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text.as_bytes()).map_err(|e| Error::io(&tmp, Op::Write, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, Op::Write, e))?;
        self.prune()?;
        Ok(path)
    }

    fn prune(&self) -> Result<()> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.cfg.dir)
            .map_err(|e| Error::io(&self.cfg.dir, Op::ReadDir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("incident-") && n.ends_with(".json"))
            })
            .collect();
        if names.len() <= self.cfg.max_count {
            return Ok(());
        }
        names.sort();
        let excess = names.len() - self.cfg.max_count;
        for p in names.into_iter().take(excess) {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, Op::Write, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_is_bounded_in_count_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let sink = IncidentSink::new(IncidentConfig {
            dir: dir.path().join("inc"),
            max_count: 3,
            max_bytes: 300,
        })
        .unwrap();
        for i in 0..5u64 {
            let big = json!({"outcome": "acted", "before": {"top_processes": "x".repeat(1000), "memory_stat": {}}});
            let p = sink.write(big, i).unwrap();
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.len() <= 300, "record {i} is {} bytes", text.len());
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["outcome"], "acted");
        }
        let left: Vec<_> = std::fs::read_dir(sink.dir()).unwrap().flatten().collect();
        assert_eq!(left.len(), 3);
        let mut names: Vec<String> = left
            .iter()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert!(
            names[0].ends_with("-000002.json"),
            "oldest pruned first: {names:?}"
        );
    }
}
