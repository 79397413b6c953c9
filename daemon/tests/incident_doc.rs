//! docs/incidents.md documents exactly the fields of a serialized `oomkit-incident/1` record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;

use oomkit::engine::incident::{Incident, Sample};
use serde_json::Value;

/// A record with every optional field present and every list non-empty.
fn full() -> Incident {
    let step = serde_json::json!({"action": "kill_process", "cgroup": "/a", "pid": 1, "signal": 12,
        "limit_bytes": 1, "frozen": true, "duration_ms": 1, "deadline_ms": 1});
    let json = serde_json::json!({
        "format": "oomkit-incident/1", "seq": 1, "written_unix_ms": 1, "episode": 1,
        "handler": "priority-kill", "dry_run": true,
        "trigger": {"kind": "escalation", "cgroup": "/a", "counters": {"high": 1}, "attempt": 1},
        "scope": "/a", "outcome": "dry_run", "reason": "r",
        "plan": [step.clone()], "refused": [{"action": "kill_process", "cgroup": "/a", "reason": "r"}],
        "victims": [{"kind": "process", "pid": 1, "comm": "x", "cgroup": "/a", "footprint_bytes": 1, "escalated": false}],
        "would_kill": [step], "escalations": 1, "error": "e",
        "timings_ms": {"decided": 1.0, "signal_sent": 1.0, "victim_exited": 1.0, "memory_back": 1.0, "ended": 1.0},
        "before": {"at_ms": 1.0, "memory_current": 1, "swap_current": 1, "memory_high": 1, "memory_max": 1,
                   "headroom_bytes": 1, "psi_some_avg10": 1.0, "psi_full_avg10": 1.0},
        "after": null, "memory_stat": {"anon": 1},
        "system": {"mem_total": 1, "mem_available": 1, "swap_free": 1, "psi_some_avg10": 1.0, "psi_full_avg10": 1.0, "oom_kill": 1},
        "top_processes": [{"pid": 1, "comm": "x", "rss_bytes": 1, "swap_bytes": 0, "oom_score_adj": 0, "uid": 0}],
        "truncated": false
    });
    let mut i: Incident = serde_json::from_value(json).unwrap();
    i.after = Some(Sample::default());
    i
}

fn walk(v: &Value, path: &str, doc: &BTreeSet<String>, seen: &mut BTreeSet<String>) {
    if doc.contains(path) {
        seen.insert(path.to_string());
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(v, &p, doc, seen);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let p = format!("{path}[]");
            if doc.contains(&p) {
                seen.insert(p);
            } else {
                walk(&a[0], &p, doc, seen);
            }
        }
        _ => panic!("docs/incidents.md does not document `{path}`"),
    }
}

#[test]
fn the_doc_lists_exactly_the_record_fields() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/incidents.md"))
            .unwrap();
    let doc: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect();
    let mut seen = BTreeSet::new();
    walk(&serde_json::to_value(full()).unwrap(), "", &doc, &mut seen);
    let stale: Vec<_> = doc.difference(&seen).collect();
    assert!(
        stale.is_empty(),
        "docs/incidents.md lists fields a record does not have: {stale:?}"
    );
}
