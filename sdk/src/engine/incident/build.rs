//! An ended episode as an [`Incident`]: steps, refusals, victims, timings and the trigger in
//! the record's own types. Runs after the episode, off the hot path, so it may allocate.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::*;
use crate::engine::{Action, Episode, Tree, Trigger, Victim};

fn since(t: Option<Instant>, from: Option<Instant>) -> Option<f64> {
    Some(t?.checked_duration_since(from?)?.as_secs_f64() * 1000.0)
}

fn step_record(
    action: &Action,
    deadline_ms: u64,
    path: &dyn Fn(crate::engine::CgroupId) -> Option<String>,
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

fn trigger_record(
    t: &Trigger,
    path: &dyn Fn(crate::engine::CgroupId) -> Option<String>,
) -> TriggerRecord {
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
        let b = &ep.scope_before;
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
            refused: refusals(ep, &path),
            victims: victims(ep, &path),
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
            memory_stat: memory_stat(ep),
            system: system_sample(ep),
            top_processes: top_processes(ep),
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

/// The cgroup path of an id, as the record writes it.
type PathOf<'a> = &'a dyn Fn(crate::engine::CgroupId) -> Option<String>;

/// The steps no policy may take, and why.
fn refusals(ep: &Episode, path: PathOf<'_>) -> Vec<RefusalRecord> {
    ep.refusals
        .iter()
        .flatten()
        .map(|r| RefusalRecord {
            action: r.action.name().to_owned(),
            cgroup: path(r.action.cgroup()),
            reason: r.reason.to_string(),
        })
        .collect()
}

/// The victims, with the comm of a process victim from the episode's process samples.
fn victims(ep: &Episode, path: PathOf<'_>) -> Vec<VictimEntry> {
    ep.victims
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
        .collect()
}

/// The scope's `memory.stat` before acting: the known keys and any others the kernel wrote.
fn memory_stat(ep: &Episode) -> BTreeMap<String, u64> {
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
    memory_stat
}

/// The machine before acting: memory, PSI and the kernel's OOM kill count.
fn system_sample(ep: &Episode) -> SystemSample {
    let sys = &ep.system_before;
    SystemSample {
        mem_total: sys.meminfo.as_ref().and_then(|m| m.mem_total),
        mem_available: sys.meminfo.as_ref().and_then(|m| m.mem_available),
        swap_free: sys.meminfo.as_ref().and_then(|m| m.swap_free),
        psi_some_avg10: sys.pressure.map(|p| p.some.avg10),
        psi_full_avg10: sys.pressure.and_then(|p| p.full.map(|f| f.avg10)),
        oom_kill: sys.vmstat.as_ref().and_then(|v| v.oom_kill),
    }
}

/// The largest processes in scope when the handler decided.
fn top_processes(ep: &Episode) -> Vec<ProcessEntry> {
    ep.top_processes
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
        .collect()
}
