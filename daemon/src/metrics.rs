//! Prometheus metrics of the daemon, served over HTTP (`[daemon]
//! metrics_listen`, off by default) with a `/healthz` for liveness probes.
//!
//! The metrics are `prometheus-client` atomics in one registry. They are
//! updated by the daemon's loop *after* a turn, from the episodes the
//! engine has finished and from its lifetime counters — never inside the
//! decision path, which neither allocates nor blocks because of them. The
//! HTTP listener is its own thread; a scrape only reads atomics (and the
//! label map of two small families behind the crate's lock).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `oomkit_episodes_total` | counter | `outcome` |
//! | `oomkit_kills_total` | counter | `reason`: the trigger (`high`, `max`, `oom`, `pressure`, `escalation`) |
//! | `oomkit_kernel_oom_kills_total` | counter | |
//! | `oomkit_watchdog_actions_total` | counter | |
//! | `oomkit_event_to_kill_seconds` | histogram | |
//! | `oomkit_managed_cgroups` | gauge | |
//! | `oomkit_reserve_degraded` | gauge | |
//! | `oomkit_last_reload_success` | gauge | |
//! | `oomkit_build_info` | info | `version` |

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use oomkit::engine::{Episode, Trigger};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Every outcome an episode can end with, as the `outcome` label (created
/// at zero so `rate()` works from the first scrape).
pub const OUTCOMES: [&str; 8] = [
    "resolved",
    "averted_on_recheck",
    "no_action",
    "dry_run",
    "acted",
    "acted_memory_not_back",
    "refused",
    "failed",
];

/// Every kill reason (the trigger of the episode).
pub const REASONS: [&str; 5] = ["high", "max", "oom", "pressure", "escalation"];

/// A counter family with one label whose values are known up front: each is created at zero,
/// so `rate()` works from the first scrape.
#[derive(Debug, Clone)]
struct Labelled {
    label: &'static str,
    family: Family<Labels, Counter>,
}

impl Labelled {
    fn new(label: &'static str, values: &[&'static str]) -> Labelled {
        let family = Family::default();
        for v in values {
            drop(family.get_or_create(&vec![(label, *v)]));
        }
        Labelled { label, family }
    }

    fn inc_by(&self, value: &'static str, n: u64) {
        self.family
            .get_or_create(&vec![(self.label, value)])
            .inc_by(n);
    }
}

/// The daemon's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    episodes: Labelled,
    kills: Labelled,
    kernel_oom_kills: Counter,
    watchdog_actions: Counter,
    event_to_kill: Histogram,
    managed_cgroups: Gauge,
    reserve_degraded: Gauge,
    last_reload_success: Gauge,
    /// False once the daemon is stopping: `/healthz` answers 503.
    pub healthy: AtomicBool,
}

/// The outcome label of an episode.
pub fn outcome_label(ep: &Episode) -> &'static str {
    let name = ep
        .outcome
        .and_then(|o| match serde_json::to_value(o) {
            Ok(serde_json::Value::String(s)) => Some(s),
            _ => None,
        })
        .unwrap_or_default();
    OUTCOMES
        .iter()
        .find(|o| **o == name)
        .copied()
        .unwrap_or("other")
}

/// The kill reason of an episode: what triggered it.
pub fn reason_label(t: &Trigger) -> &'static str {
    match t {
        Trigger::MemoryEvents { delta, .. } => {
            if delta.oom.unwrap_or(0) + delta.oom_kill.unwrap_or(0) > 0 {
                "oom"
            } else if delta.max.unwrap_or(0) > 0 {
                "max"
            } else {
                "high"
            }
        }
        Trigger::Pressure { .. } => "pressure",
        Trigger::Escalation { .. } => "escalation",
        _ => "other",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at its starting value.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("oomkit");
        let m = Metrics {
            episodes: Labelled::new("outcome", &OUTCOMES),
            kills: Labelled::new("reason", &REASONS),
            kernel_oom_kills: Counter::default(),
            watchdog_actions: Counter::default(),
            // 1 ms … ~16 s.
            event_to_kill: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            managed_cgroups: Gauge::default(),
            reserve_degraded: Gauge::default(),
            last_reload_success: Gauge::default(),
            healthy: AtomicBool::new(true),
            registry: Registry::default(),
        };
        for (name, help, family) in [
            ("episodes", "Episodes ended, by outcome", &m.episodes),
            (
                "kills",
                "Victims killed by oomkit, by the trigger of the episode",
                &m.kills,
            ),
        ] {
            registry.register(name, help, family.family.clone());
        }
        for (name, help, counter) in [
            (
                "kernel_oom_kills",
                "Kernel OOM kills seen in the managed tree (memory.events oom_kill)",
                &m.kernel_oom_kills,
            ),
            (
                "watchdog_actions",
                "Times the watchdog acted because the main loop stalled",
                &m.watchdog_actions,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "event_to_kill_seconds",
            "Time from the first event of an episode to the first kill signal",
            m.event_to_kill.clone(),
        );
        for (name, help, gauge) in [
            (
                "managed_cgroups",
                "Cgroups in the managed tree",
                &m.managed_cgroups,
            ),
            (
                "reserve_degraded",
                "1 when reserve mode did not get everything it asked for",
                &m.reserve_degraded,
            ),
            (
                "last_reload_success",
                "1 when the last configuration reload succeeded (or none was asked for), 0 when it failed",
                &m.last_reload_success,
            ),
        ] {
            registry.register(name, help, gauge.clone());
        }
        registry.register(
            "build",
            "The running oomkit's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        m.last_reload_success.set(1);
        Metrics { registry, ..m }
    }

    /// Counts one ended episode: its outcome, its kills and its event-to-kill time.
    pub fn episode(&self, ep: &Episode) {
        self.episodes.inc_by(outcome_label(ep), 1);
        let kills = ep.victims.iter().flatten().count() as u64;
        if kills > 0 && !matches!(ep.outcome, Some(oomkit::engine::Outcome::DryRun)) {
            self.kills.inc_by(reason_label(&ep.trigger), kills);
        }
        if let Some(ms) = ep.timings.ms_since_event(ep.timings.signal_sent) {
            self.event_to_kill.observe(ms / 1000.0);
        }
    }

    /// Sets the lifetime totals the engine and watchdog keep (counters only rise).
    pub fn totals(&self, kernel_oom_kills: u64, watchdog_actions: u64) {
        for (c, total) in [
            (&self.kernel_oom_kills, kernel_oom_kills),
            (&self.watchdog_actions, watchdog_actions),
        ] {
            let seen = c.get();
            if total > seen {
                c.inc_by(total - seen);
            }
        }
    }

    /// Sets the gauges.
    pub fn gauges(&self, managed_cgroups: usize, reserve_degraded: bool) {
        self.managed_cgroups
            .set(i64::try_from(managed_cgroups).unwrap_or(i64::MAX));
        self.reserve_degraded.set(i64::from(reserve_degraded));
    }

    /// Records whether a reload succeeded.
    pub fn reloaded(&self, ok: bool) {
        self.last_reload_success.set(i64::from(ok));
    }

    /// The OpenMetrics text of a scrape.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(4096);
        if encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` and serves `/metrics` and `/healthz` from a thread.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("oomkit-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        if let Err(e) = answer(c, &metrics) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "metrics accept failed"),
                }
            }
        })?;
    Ok(local)
}

/// Answers one HTTP/1.x request on `c` and closes it.
fn answer(mut c: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    c.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut req = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line = req.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let (status, ctype, body) = match (method, path) {
        (b"GET", b"/metrics") => ("200 OK", CONTENT_TYPE, metrics.render()),
        (b"GET", b"/healthz") if metrics.healthy.load(Ordering::Relaxed) => {
            ("200 OK", "text/plain", "ok\n".to_string())
        }
        (b"GET", b"/healthz") => (
            "503 Service Unavailable",
            "text/plain",
            "stopping\n".to_string(),
        ),
        (b"GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes())?;
    c.write_all(body.as_bytes())?;
    c.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut c = TcpStream::connect(addr).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn serves_metrics_and_health() {
        let m = Arc::new(Metrics::new());
        m.totals(2, 1);
        m.totals(3, 1);
        m.gauges(42, true);
        let addr = serve("127.0.0.1:0".parse().unwrap(), m.clone()).unwrap();
        let text = get(addr, "/metrics");
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        for want in [
            "oomkit_kernel_oom_kills_total 3",
            "oomkit_watchdog_actions_total 1",
            "oomkit_managed_cgroups 42",
            "oomkit_reserve_degraded 1",
            "oomkit_last_reload_success 1",
            "oomkit_episodes_total{outcome=\"acted\"} 0",
            "oomkit_kills_total{reason=\"high\"} 0",
            "oomkit_build_info{version=\"",
            "oomkit_event_to_kill_seconds_count 0",
            "# EOF",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200 OK"));
        m.healthy.store(false, Ordering::Relaxed);
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 503"));
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
    }
}
