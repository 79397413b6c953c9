//! `oomkit incidents list/show/plot` over a folder written by the SDK's sink.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use oomkit::engine::incident::{Incident, IncidentConfig, IncidentSink, Sample};

fn record() -> Incident {
    let json = serde_json::json!({
        "format": "oomkit-incident/1", "seq": 0, "written_unix_ms": 1764385000000u64, "episode": 3,
        "handler": "priority-kill", "dry_run": false,
        "trigger": {"kind": "memory_events", "cgroup": "/m", "counters": {"high": 2}, "attempt": null},
        "scope": "/m", "outcome": "acted", "reason": "tier -100, largest",
        "plan": [{"action": "kill_process", "cgroup": "/m/batch", "pid": 117, "signal": null,
                  "limit_bytes": null, "frozen": null, "duration_ms": null, "deadline_ms": 5000}],
        "refused": [],
        "victims": [{"kind": "process", "pid": 117, "comm": "batch", "cgroup": "/m/batch",
                     "footprint_bytes": 18874368u64, "escalated": false}],
        "would_kill": [], "escalations": 0, "error": null,
        "timings_ms": {"decided": 40.0, "signal_sent": 44.0, "victim_exited": 50.0, "memory_back": 51.0, "ended": 52.0},
        "before": {"at_ms": 40.0, "memory_current": 100, "swap_current": null, "memory_high": 120,
                   "memory_max": 200, "headroom_bytes": 20, "psi_some_avg10": 3.5, "psi_full_avg10": 1.0},
        "after": null, "memory_stat": {"anon": 5}, "system": {"mem_total": null, "mem_available": null,
                   "swap_free": null, "psi_some_avg10": null, "psi_full_avg10": null, "oom_kill": 0},
        "top_processes": [], "truncated": false
    });
    let mut i: Incident = serde_json::from_value(json).unwrap();
    i.after = Some(Sample::new(
        Some(60.0),
        Some(30),
        None,
        Some(120),
        Some(200),
        None,
    ));
    i
}

fn oomkit(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_oomkit"))
        .arg("incidents")
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn list_show_and_plot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("incidents");
    let sink = IncidentSink::new(IncidentConfig {
        dir: dir.clone(),
        ..IncidentConfig::default()
    })
    .unwrap();
    let mut r = record();
    sink.write_incident(&mut r).unwrap();
    let list = oomkit(&dir, &["list"]);
    let rows: Vec<&str> = list.lines().collect();
    assert_eq!(rows.len(), 2, "{list}");
    assert!(
        rows[1].contains("acted") && rows[1].contains("117 (batch) in /m/batch"),
        "{list}"
    );
    assert!(
        rows[1].contains("18.0 MiB") && rows[1].contains("44 ms"),
        "{list}"
    );
    let show = oomkit(&dir, &["show", "1"]);
    assert!(
        show.contains("victim    process 117 (batch) in /m/batch"),
        "{show}"
    );
    assert!(show.contains("after     memory"), "{show}");
    let json: Incident = serde_json::from_str(&oomkit(&dir, &["show", "1", "--json"])).unwrap();
    assert_eq!(json, r);
    let svg = oomkit(&dir, &["plot", "1"]);
    let doc = roxmltree::Document::parse(&svg).unwrap();
    assert!(
        doc.descendants()
            .any(|n| n.attribute("data-mark") == Some("signal"))
    );
    let missing = Command::new(env!("CARGO_BIN_EXE_oomkit"))
        .args(["incidents", "--dir"])
        .arg(&dir)
        .args(["show", "9"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("incident-0000000009.json"));
}
