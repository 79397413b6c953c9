//! Incident records on the daemon's side: a writer thread, so the disk is
//! never on the main loop, and the `oomkit incidents` views.
//!
//! The loop builds the typed [`Incident`] once an episode has ended and
//! hands it over with [`IncidentWriter::submit`], which never blocks: if the
//! writer is behind by [`QUEUE`] records, the record is dropped and logged.
//! The writer thread reads the scope's "after" sample (memory, limits, PSI)
//! and writes the record through the SDK's [`IncidentSink`].

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Instant, UNIX_EPOCH};

use oomkit::Cgroup;
use oomkit::engine::incident::{Incident, IncidentConfig, IncidentSink, Sample};

use oomkit_handlers::podinfo::pod_info;

/// Records the writer may be behind by before new ones are dropped.
pub const QUEUE: usize = 64;

struct Job {
    incident: Incident,
    scope: Option<Arc<Cgroup>>,
    event_seen: Option<Instant>,
}

/// The sending side of the writer thread.
#[derive(Debug, Clone)]
pub struct IncidentWriter {
    tx: SyncSender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("episode", &self.incident.episode)
            .finish_non_exhaustive()
    }
}

impl IncidentWriter {
    /// Opens the folder (see [`IncidentSink::new`]) and starts the thread.
    pub fn start(cfg: IncidentConfig) -> Result<Self, oomkit::Error> {
        let sink = IncidentSink::new(cfg)?;
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("oomkit-incidents".into())
            .stack_size(256 << 10)
            .spawn(move || write_loop(&sink, &rx))
            .map_err(|e| oomkit::Error::Sys {
                call: "spawning the incident writer",
                source: e,
            })?;
        Ok(IncidentWriter { tx })
    }

    /// Queues a record; never blocks. `scope` is read for the "after"
    /// sample when the record is written; `event_seen` dates that sample.
    pub fn submit(
        &self,
        incident: Incident,
        scope: Option<Arc<Cgroup>>,
        event_seen: Option<Instant>,
    ) {
        let episode = incident.episode;
        match self.tx.try_send(Job {
            incident,
            scope,
            event_seen,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(
                    episode,
                    "incident writer is {QUEUE} records behind; record dropped"
                )
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::warn!(episode, "incident writer is gone; record dropped")
            }
        }
    }
}

fn write_loop(sink: &IncidentSink, rx: &Receiver<Job>) {
    while let Ok(mut job) = rx.recv() {
        job.incident.after = job.scope.as_deref().and_then(|cg| {
            let at = job.event_seen.map(|t| t.elapsed().as_secs_f64() * 1000.0);
            after_sample(cg, at)
        });
        match sink.write_incident(&mut job.incident) {
            Ok(p) => tracing::info!(
                episode = job.incident.episode,
                seq = job.incident.seq,
                file = %p.display(),
                "incident recorded"
            ),
            Err(e) => tracing::warn!(error = %e, "writing the incident record failed"),
        }
    }
}

/// The scope's memory now; `None` if it is gone.
pub fn after_sample(cg: &Cgroup, at_ms: Option<f64>) -> Option<Sample> {
    let current = cg.memory_current().ok()?;
    Some(Sample::new(
        at_ms,
        Some(current),
        cg.swap_current().ok(),
        cg.memory_high().ok().and_then(|l| l.bytes()),
        cg.memory_max().ok().and_then(|l| l.bytes()),
        cg.memory_pressure().ok().as_ref(),
    ))
}

// ---------------------------------------------------------------------------
// Views

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20))
}

fn when(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_millis(unix_ms))
        .to_string()
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0} ms"))
}

/// `oomkit incidents list`: one line per record, oldest first.
pub fn list(dir: &Path) -> Result<String, String> {
    let all = oomkit::engine::incident::read_all(dir).map_err(|e| e.to_string())?;
    let mut s = format!(
        "{:>6}  {:<20}  {:<22}  {:<14}  {:>10}  {:>11}  {}\n",
        "ID", "WHEN (UTC)", "OUTCOME", "HANDLER", "FREED", "EVENT→KILL", "VICTIM"
    );
    for (seq, r) in all {
        match r {
            Ok(i) => {
                let v = i.victims.first();
                let victim = v.map_or_else(
                    || {
                        i.would_kill.first().map_or("-".into(), |w| {
                            format!("(would) {}", w.cgroup.as_deref().unwrap_or("?"))
                        })
                    },
                    |v| match v.pid {
                        Some(pid) => format!(
                            "{pid} ({}) in {}",
                            v.comm.as_deref().unwrap_or("?"),
                            v.cgroup.as_deref().unwrap_or("?")
                        ),
                        None => v.cgroup.clone().unwrap_or_default(),
                    },
                );
                let _ = writeln!(
                    s,
                    "{seq:>6}  {:<20}  {:<22}  {:<14}  {:>10}  {:>11}  {victim}",
                    when(i.written_unix_ms),
                    i.outcome.as_deref().unwrap_or("-"),
                    i.handler,
                    v.map_or("-".into(), |v| mib(v.footprint_bytes)),
                    opt_ms(i.timings_ms.signal_sent),
                );
            }
            Err(e) => {
                let _ = writeln!(s, "{seq:>6}  unreadable: {e}");
            }
        }
    }
    Ok(s)
}

/// `oomkit incidents show ID`: the record for a human.
pub fn show(i: &Incident) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "incident {} (episode {}, {}), {}{}",
        i.seq,
        i.episode,
        when(i.written_unix_ms),
        i.outcome.as_deref().unwrap_or("no outcome"),
        if i.dry_run { ", DRY RUN" } else { "" }
    );
    let _ = writeln!(s, "  handler   {}", i.handler);
    let _ = writeln!(s, "  scope     {}", i.scope.as_deref().unwrap_or("-"));
    let counters: Vec<String> = i
        .trigger
        .counters
        .iter()
        .map(|(k, v)| format!("{k} +{v}"))
        .collect();
    let _ = writeln!(
        s,
        "  trigger   {} {} {}",
        i.trigger.kind,
        i.trigger.cgroup.as_deref().unwrap_or("(system)"),
        counters.join(", ")
    );
    let _ = writeln!(s, "  reason    {}", i.reason);
    show_actions(&mut s, i);
    show_victims(&mut s, i);
    show_timings(&mut s, i);
    if let Some(e) = &i.error {
        let _ = writeln!(s, "  error     {e}");
    }
    if i.truncated {
        let _ = writeln!(s, "  (parts dropped to fit incident_max_bytes)");
    }
    s
}

/// The plan's steps and the refused ones.
fn show_actions(s: &mut String, i: &Incident) {
    for step in &i.plan {
        let _ = writeln!(
            s,
            "  step      {} {}{}",
            step.action,
            step.cgroup.as_deref().unwrap_or("?"),
            step.pid.map(|p| format!(" pid {p}")).unwrap_or_default()
        );
    }
    for r in &i.refused {
        let _ = writeln!(
            s,
            "  refused   {} {}: {}",
            r.action,
            r.cgroup.as_deref().unwrap_or("?"),
            r.reason
        );
    }
}

/// One line per victim, with its pod and container where the path shows them.
fn show_victims(s: &mut String, i: &Incident) {
    for v in &i.victims {
        let pod = v
            .cgroup
            .as_deref()
            .map(|c| pod_info(Path::new(c)))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  victim    {} {} ({}) in {}, {}{}{}{}",
            v.kind,
            v.pid.map_or("-".into(), |p| p.to_string()),
            v.comm.as_deref().unwrap_or("?"),
            v.cgroup.as_deref().unwrap_or("?"),
            mib(v.footprint_bytes),
            if v.escalated {
                ", did not die in time"
            } else {
                ""
            },
            pod.pod_uid
                .map(|u| format!(", pod {u}"))
                .unwrap_or_default(),
            pod.container_id
                .map(|c| format!(", container {}", &c[..c.len().min(12)]))
                .unwrap_or_default(),
        );
    }
}

/// The episode's timings and the samples before and after.
fn show_timings(s: &mut String, i: &Incident) {
    let t = &i.timings_ms;
    let _ = writeln!(
        s,
        "  timings   decided {}, signal {}, exited {}, memory back {}, ended {}",
        opt_ms(t.decided),
        opt_ms(t.signal_sent),
        opt_ms(t.victim_exited),
        opt_ms(t.memory_back),
        opt_ms(t.ended)
    );
    for (name, smp) in [("before", Some(&i.before)), ("after", i.after.as_ref())] {
        let Some(smp) = smp else {
            let _ = writeln!(s, "  {name:<9} (not read)");
            continue;
        };
        let _ = writeln!(
            s,
            "  {name:<9} memory {}, headroom {}, PSI some {} full {}",
            smp.memory_current.map_or("-".into(), mib),
            smp.headroom_bytes.map_or("no limit".into(), mib),
            smp.psi_some_avg10
                .map_or("-".into(), |v| format!("{v:.2}%")),
            smp.psi_full_avg10
                .map_or("-".into(), |v| format!("{v:.2}%")),
        );
    }
}
