//! What an operator sees of an episode: the Prometheus scrape and the `oomkit incidents` views.
//!
//! One episode (a process growing past its cgroup's `memory.high`, killed by the daemon) is
//! observed from outside the daemon, as an operator would: `/metrics` and `/healthz` over TCP
//! before and after (the kill counters must rise by exactly one), then `oomkit incidents
//! list/show/plot` on the record it wrote (the SVG must be well-formed XML with the kill mark).
//! The scrape taken after the kill is also sent to the host in a `METRICS <hex>` note, where
//! `cargo xtask vmtest` parses it with prometheus-client's OpenMetrics parser.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use oomkit::cgroup::Limit;

use crate::harness::{Ctx, Fail, Outcome, TestResult};
use crate::scenario::{Daemon, DaemonOpts, OOMKIT_BIN, parent_cgroup};
use crate::workload::WorkloadKind;
use crate::{ensure, fail};

const MIB: u64 = 1 << 20;

fn get(addr: &str, path: &str) -> Result<(String, String), Fail> {
    let mut c = TcpStream::connect(addr).map_err(|e| Fail(format!("connect {addr}: {e}")))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| Fail(e.to_string()))?;
    write!(c, "GET {path} HTTP/1.1\r\nHost: oomkit\r\n\r\n")
        .map_err(|e| Fail(format!("GET {path}: {e}")))?;
    let mut s = String::new();
    c.read_to_string(&mut s)
        .map_err(|e| Fail(format!("GET {path}: {e}")))?;
    let (head, body) = s
        .split_once("\r\n\r\n")
        .ok_or_else(|| Fail(format!("GET {path}: no header end in {s:?}")))?;
    Ok((
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    ))
}

/// The value of the sample named exactly `name` (with its labels) in an OpenMetrics text.
fn sample(text: &str, name: &str) -> Result<f64, Fail> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Fail(format!("no sample {name} in the scrape")))
}

fn sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn oomkit(args: &[&str]) -> Result<String, Fail> {
    let out = Command::new(OOMKIT_BIN)
        .args(args)
        .output()
        .map_err(|e| Fail(format!("run oomkit {args:?}: {e}")))?;
    if !out.status.success() {
        return Err(Fail(format!(
            "oomkit {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const CONFIG: &str = "[engine]\nsample_interval_ms = \"100ms\"\nkill_deadline_ms = \"5s\"\n\n\
     [signals]\nmemory_events = true\n\n\
     [handler]\nkind = \"priority-kill\"\n\n\
     [handler.priority_kill]\ngranularity = \"process\"\n";

/// The guest's init leaves `lo` down; the metrics listener is on 127.0.0.1.
fn loopback_up() -> Result<(), Fail> {
    for args in [
        &["ip", "link", "set", "lo", "up"][..],
        &["ifconfig", "lo", "up"][..],
    ] {
        let ok = Command::new("/bin/busybox")
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
    }
    Err(Fail(
        "cannot bring the loopback interface up (busybox ip/ifconfig)".into(),
    ))
}

pub fn metrics_and_incidents(ctx: &mut Ctx) -> TestResult {
    loopback_up()?;
    let (machine_path, _) = parent_cgroup(ctx, "machine")?;
    let (app_path, app) = ctx.cgroup("machine/app")?;
    app.set_memory_high(Limit::Bytes(48 * MIB))?;
    app.set_memory_max(Limit::Bytes(96 * MIB))?;
    let opts = DaemonOpts {
        daemon_keys: "metrics_listen = \"127.0.0.1:0\"\n".into(),
        ..DaemonOpts::default()
    };
    let mut d = Daemon::start(ctx, &machine_path, CONFIG, &opts)?;
    let listening = d.wait_log("the metrics listener", Duration::from_secs(10), |v| {
        v["message"] == "serving /metrics and /healthz"
    })?;
    let addr = listening["listen"]
        .as_str()
        .ok_or_else(|| Fail(format!("no listen address: {listening}")))?
        .to_string();
    let (status, _) = get(&addr, "/healthz")?;
    ensure!(status.contains("200"), "/healthz: {status}");
    let (status, before) = get(&addr, "/metrics")?;
    ensure!(status.contains("200"), "/metrics: {status}");

    let mut hog = ctx.spawn(&app_path, WorkloadKind::HogGrow { step_mib: 2 })?;
    let st = hog.wait_exit(Duration::from_secs(30))?;
    ensure!(
        std::os::unix::process::ExitStatusExt::signal(&st) == Some(libc::SIGKILL),
        "the hog ended with {st}"
    );
    // The record is submitted after the metrics are updated, so once it exists the scrape
    // shows the episode.
    let inc = d.wait_incident("the kill's incident", Duration::from_secs(15), |_| true)?;
    let (_, after) = get(&addr, "/metrics")?;
    ctx.note(format!("METRICS {}", crate::proto::hex(after.as_bytes())));
    let kills = sum(&after, "oomkit_kills_total") - sum(&before, "oomkit_kills_total");
    ensure!(
        kills == 1.0,
        "oomkit_kills_total rose by {kills}, not 1:\n{after}"
    );
    let high = r#"oomkit_kills_total{reason="high"}"#;
    ensure!(
        sample(&after, high)? - sample(&before, high)? == 1.0,
        "the kill is not counted under reason=high:\n{after}"
    );
    let acted = r#"oomkit_episodes_total{outcome="acted"}"#;
    ensure!(
        sample(&after, acted)? - sample(&before, acted)? == 1.0,
        "episodes_total{{acted}} did not rise by one:\n{after}"
    );
    let n = "oomkit_event_to_kill_seconds_count";
    ensure!(
        sample(&after, n)? - sample(&before, n)? == 1.0,
        "the event-to-kill histogram did not count the kill:\n{after}"
    );
    let managed = sample(&after, "oomkit_managed_cgroups")?;
    ensure!(managed as u64 >= 1, "no managed cgroups:\n{after}");

    // The incident views, as an operator runs them.
    let dir = d.incidents.display().to_string();
    let seq = inc["seq"]
        .as_u64()
        .ok_or_else(|| Fail(format!("no seq in {inc}")))?
        .to_string();
    let list = oomkit(&["incidents", "--dir", &dir, "list"])?;
    let pid = hog.pid().to_string();
    ensure!(
        list.lines()
            .any(|l| l.trim_start().starts_with(&seq) && l.contains("acted") && l.contains(&pid)),
        "`incidents list` has no line for record {seq} (acted, pid {pid}):\n{list}"
    );
    let show = oomkit(&["incidents", "--dir", &dir, "show", &seq])?;
    ensure!(
        show.contains(&format!("victim    process {pid}")) && show.contains("after     memory"),
        "`incidents show {seq}`:\n{show}"
    );
    let json: serde_json::Value = serde_json::from_str(&oomkit(&[
        "incidents",
        "--dir",
        &dir,
        "show",
        &seq,
        "--json",
    ])?)
    .map_err(|e| Fail(format!("`show --json` is not JSON: {e}")))?;
    ensure!(
        json["format"] == "oomkit-incident/1" && json == inc,
        "`show --json` differs from the file:\n{json}\n{inc}"
    );
    let svg_path = d.dir.join("incident.svg");
    let svg_arg = svg_path.display().to_string();
    oomkit(&["incidents", "--dir", &dir, "plot", &seq, "-o", &svg_arg])?;
    let svg = crate::harness::read_file(&svg_path)?;
    let doc = roxmltree::Document::parse(&svg)
        .map_err(|e| Fail(format!("the SVG is not well-formed XML: {e}")))?;
    let Some(kill) = doc
        .descendants()
        .find(|n| n.attribute("data-mark") == Some("signal"))
    else {
        fail!("the SVG has no kill mark");
    };
    let label: String = kill
        .descendants()
        .filter(|n| n.is_text())
        .filter_map(|n| n.text())
        .collect();
    ensure!(
        label.starts_with("kill (kill_process)"),
        "the kill mark says {label:?}"
    );
    let marks = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("mark"))
        .count();
    let stopped = d.stop()?;
    Ok(Outcome::Pass(format!(
        "scrape: kills_total +1 (reason high), episodes_total{{acted}} +1, event_to_kill count +1; \
         incidents list/show/--json/plot of record {seq}: SVG well-formed, {marks} marks incl. {label:?}; {}",
        stopped["kills"]
    )))
}
