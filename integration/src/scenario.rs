//! End-to-end scenarios: the real `oomkit` daemon (`/bin/oomkit` in the guest) against
//! workloads, shared by the e2e tests (`tests/e2e.rs`) and `cargo xtask demo`.
//!
//! A scenario runs below the test's base cgroup:
//!
//! ```text
//! <base>/oomkit        the daemon (outside what it manages, so it never targets itself)
//! <base>/machine       the managed root: the "machine", sized by memory.max
//! <base>/machine/*     the workloads
//! ```
//!
//! **Why a cgroup stands in for the machine.** Exhausting the whole guest is neither fast nor
//! reproducible: without swap the kernel's global OOM killer can take well over a minute (direct
//! reclaim keeps finding a little slab, see `tests/reserve.rs`). A parent cgroup with `memory.max`
//! is a machine whose RAM is exactly that size, and the kernel's memcg OOM killer behaves there
//! like the global one (largest `oom_badness` wins) but acts at once. oomkit needs a warning
//! before the wall, and `memory.max` gives none (with nothing reclaimable the kernel OOM-kills
//! within microseconds of the first `max` event), so with oomkit the machine also gets
//! `memory.high` below `memory.max`: crossing it raises a `high` event and makes the kernel
//! throttle the cgroup's allocations (without swap, the penalty grows with the square of the
//! overage), which holds the growing job back from `memory.max` while oomkit decides. That is
//! the early-warning line a deployment sets for its userspace OOM handler (systemd's
//! `MemoryHigh=` below `MemoryMax=`); without a handler it only stalls, so the baseline run keeps
//! `memory.max` alone.
//!
//! The daemon gets a config written to a temporary directory, writes its incident records there,
//! and logs JSON lines (its stderr) to a file the scenario parses. Everything is waited for with
//! deadlines on real conditions: the daemon's log lines, incident files, process exits (the
//! workload's pipe closing), cgroup files and `memory.events` notifications.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oomkit::Cgroup;
use oomkit::cgroup::{Limit, MemoryEventKind};
use oomkit::events::{EventKind, Scope, Watcher};
use serde_json::Value;

use crate::harness::{Ctx, Fail, read_file, wait_for, write_file};
use crate::workload::{Workload, WorkloadKind};

/// The daemon binary in the guest's initramfs.
pub const OOMKIT_BIN: &str = "/bin/oomkit";
/// The heap-profile demo victim in the guest's initramfs.
pub const HEAP_VICTIM_BIN: &str = "/bin/heap_victim";

const MIB: u64 = 1 << 20;

/// `oom_kill` of `/proc/vmstat`: every kernel OOM kill, global or in any cgroup (4.13+).
pub fn vmstat_oom_kill() -> Result<u64, Fail> {
    let text = read_file(Path::new("/proc/vmstat"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Fail("no oom_kill in /proc/vmstat".into()))
}

/// `(oom, oom_kill)` of a cgroup's hierarchical `memory.events`.
pub fn cgroup_ooms(cg: &Cgroup) -> Result<(u64, u64), Fail> {
    let e = cg.memory_events()?;
    Ok((e.oom.unwrap_or(0), e.oom_kill.unwrap_or(0)))
}

/// Create `<base>/<name>` with memory and pids enabled for its children.
pub fn parent_cgroup(ctx: &Ctx, name: &str) -> Result<(PathBuf, Cgroup), Fail> {
    let (path, cg) = ctx.cgroup(name)?;
    write_file(&path.join("cgroup.subtree_control"), "+memory +pids")?;
    Ok((path, cg))
}

/// Set `trusted.<name>` on a cgroup directory (the daemon reads `trusted.oomkit.*`).
pub fn set_trusted_xattr(path: &Path, name: &str, value: &str) -> Result<(), Fail> {
    rustix::fs::setxattr(
        path,
        format!("trusted.{name}").as_str(),
        value.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )
    .map_err(|e| {
        Fail(format!(
            "setxattr trusted.{name} on {}: {e}",
            path.display()
        ))
    })
}

/// The path of a cgroup below the cgroup2 mount, as the daemon's globs and records name it.
pub fn hier(path: &Path) -> String {
    path.strip_prefix("/sys/fs/cgroup")
        .map(|p| format!("/{}", p.display()))
        .unwrap_or_else(|_| path.display().to_string())
}

/// How the daemon is run.
#[derive(Debug, Clone, Default)]
pub struct DaemonOpts {
    /// `--dry-run`.
    pub dry_run: bool,
    /// The hidden `--debug-stall-after-event-ms N`: the handler sleeps this long in `decide`.
    pub stall_ms: Option<u64>,
    /// More `[daemon]` keys, one `key = value` per line (e.g. `metrics_listen`).
    pub daemon_keys: String,
}

/// A running `oomkit run` in the guest; killed on drop.
pub struct Daemon {
    proc: Workload,
    /// Its working directory: config, log, incidents, diagnostics.
    pub dir: PathBuf,
    /// The config file.
    pub config: PathBuf,
    /// Its JSON log (stderr).
    pub log: PathBuf,
    /// Where it writes incident records.
    pub incidents: PathBuf,
    /// Where victims write diagnostics (heap profiles).
    pub diagnostics: PathBuf,
}

/// Where a test's daemon keeps its files: `/tmp/oomkit-e2e/<test>`.
pub fn daemon_dir(ctx: &Ctx) -> PathBuf {
    Path::new("/tmp/oomkit-e2e").join(ctx.name())
}

impl Daemon {
    /// Write the config — `[daemon]` for `root` (JSON logs, incident and diagnostics folders)
    /// followed by `body` (the other sections) — check it with `oomkit check-config`, start
    /// `oomkit run` in `<base>/oomkit` and wait until it logs `running`.
    pub fn start(ctx: &Ctx, root: &Path, body: &str, opts: &DaemonOpts) -> Result<Self, Fail> {
        let dir = daemon_dir(ctx);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Fail(format!("rm -r {}: {e}", dir.display())))?;
        }
        let incidents = dir.join("incidents");
        let diagnostics = dir.join("diagnostics");
        for d in [&incidents, &diagnostics] {
            std::fs::create_dir_all(d).map_err(|e| Fail(format!("mkdir {}: {e}", d.display())))?;
        }
        let config = dir.join("oomkit.toml");
        let text = format!(
            "[daemon]\nroot = \"{}\"\ndepth = 4\nlog_format = \"json\"\nlog_level = \"info\"\n\
             incident_dir = \"{}\"\ndiagnostics_dir = \"{}\"\n{}\n{body}",
            root.display(),
            incidents.display(),
            diagnostics.display(),
            opts.daemon_keys
        );
        write_file(&config, &text)?;
        let check = std::process::Command::new(OOMKIT_BIN)
            .arg("check-config")
            .arg(&config)
            .output()
            .map_err(|e| Fail(format!("run {OOMKIT_BIN} check-config: {e}")))?;
        if !check.status.success() {
            return Err(Fail(format!(
                "oomkit check-config rejected the scenario's config: {}",
                String::from_utf8_lossy(&check.stderr)
            )));
        }
        let log = dir.join("oomkit.log");
        let log_file = std::fs::File::create(&log)
            .map_err(|e| Fail(format!("create {}: {e}", log.display())))?;
        let mut args = vec![
            "run".to_string(),
            "--config".to_string(),
            config.display().to_string(),
        ];
        if opts.dry_run {
            args.push("--dry-run".into());
        }
        if let Some(ms) = opts.stall_ms {
            args.push("--debug-stall-after-event-ms".into());
            args.push(ms.to_string());
        }
        let (cg_path, _) = ctx.cgroup("oomkit")?;
        let proc = Workload::spawn_exec(&cg_path, Path::new(OOMKIT_BIN), &args, Some(log_file))?;
        let mut d = Daemon {
            proc,
            dir,
            config,
            log,
            incidents,
            diagnostics,
        };
        d.wait_log(
            "the daemon's `running` line",
            Duration::from_secs(20),
            |v| v["message"] == "running",
        )?;
        Ok(d)
    }

    /// The daemon's PID.
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// Every log line so far (non-JSON lines as strings).
    pub fn log_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::String(l.to_string())))
            .collect()
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join(" | ")
    }

    /// Wait for a log line matching `pred`; fails early if the daemon exited.
    pub fn wait_log(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, Fail> {
        let r = wait_for(what, timeout, Duration::from_millis(20), || {
            if let Some(l) = self.log_lines().into_iter().find(|l| pred(l)) {
                return Ok(Some(l));
            }
            if let Some(st) = self.proc.try_exited() {
                return Err(Fail(format!(
                    "the daemon exited ({st}) while waiting for {what}"
                )));
            }
            Ok(None)
        });
        r.map_err(|e| Fail(format!("{}; daemon log: {}", e.0, self.log_tail(12))))
    }

    /// Every incident record so far, oldest first.
    pub fn incidents(&self) -> Result<Vec<Value>, Fail> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.incidents)
            .map_err(|e| Fail(format!("read {}: {e}", self.incidents.display())))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| {
                let text = read_file(p)?;
                serde_json::from_str(&text)
                    .map_err(|e| Fail(format!("incident {} is not JSON: {e}", p.display())))
            })
            .collect()
    }

    /// Wait for an incident record matching `pred`.
    pub fn wait_incident(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, Fail> {
        let r = wait_for(what, timeout, Duration::from_millis(20), || {
            if let Some(i) = self.incidents()?.into_iter().find(|i| pred(i)) {
                return Ok(Some(i));
            }
            if let Some(st) = self.proc.try_exited() {
                return Err(Fail(format!(
                    "the daemon exited ({st}) while waiting for {what}"
                )));
            }
            Ok(None)
        });
        r.map_err(|e| Fail(format!("{}; daemon log: {}", e.0, self.log_tail(12))))
    }

    /// SIGTERM, wait for a clean exit; returns the `stopped` log line (lifetime counters).
    pub fn stop(mut self) -> Result<Value, Fail> {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid()) {
            rustix::process::kill_process(pid, rustix::process::Signal::TERM)
                .map_err(|e| Fail(format!("SIGTERM the daemon: {e}")))?;
        }
        let st = self.proc.wait_exit(Duration::from_secs(10))?;
        if !st.success() {
            return Err(Fail(format!(
                "the daemon exited with {st} on SIGTERM; log: {}",
                self.log_tail(12)
            )));
        }
        self.log_lines()
            .into_iter()
            .find(|l| l["message"] == "stopped")
            .ok_or_else(|| Fail(format!("no `stopped` line; log: {}", self.log_tail(12))))
    }
}

/// A process's end: `None` while it runs, else how it ended.
pub fn ended(w: &mut Workload) -> Option<String> {
    w.try_exited().map(|st| {
        use std::os::unix::process::ExitStatusExt;
        match st.signal() {
            Some(libc::SIGKILL) => "SIGKILL".to_string(),
            Some(s) => format!("signal {s}"),
            None => format!("exit {}", st.code().unwrap_or(-1)),
        }
    })
}

/// Milliseconds as a JSON number rounded to 0.1.
fn ms(d: Duration) -> Value {
    serde_json::json!((d.as_secs_f64() * 10_000.0).round() / 10.0)
}

/// A number from an incident's `timings_ms`.
pub fn timing(incident: &Value, key: &str) -> Option<f64> {
    incident["timings_ms"][key].as_f64()
}

// ---------------------------------------------------------------------------
// The priority scenario

/// Sizes of the priority scenario, MiB. The service is the largest consumer when the machine
/// runs out: at `memory.max` the batch job holds at most `MACHINE_MAX - SERVICE` (48) < 64.
pub const MACHINE_MAX: u64 = 112;
/// The machine's `memory.high` when oomkit runs (its early warning).
pub const MACHINE_HIGH: u64 = 80;
/// What the important service holds.
pub const SERVICE: u64 = 64;
/// Where the batch job would stop growing (beyond the machine: it runs out first).
pub const BATCH_CAP: u64 = 72;

/// Which side of the demo, or which e2e variant.
#[derive(Debug, Clone)]
pub enum Oomkit {
    /// No daemon: the kernel alone (the machine has only `memory.max`).
    Without,
    /// The daemon with the priority-kill handler.
    With(DaemonOpts),
}

/// What happened in one run of the priority scenario.
pub struct PriorityRun {
    /// The service and the batch job (still running ones are killed on drop).
    pub service: Workload,
    pub batch: Workload,
    /// How each ended, `None`: alive at the end of the run.
    pub service_end: Option<String>,
    pub batch_end: Option<String>,
    /// Kernel OOM kills during the run: `/proc/vmstat` and the machine's `memory.events`.
    pub vmstat_oom_kills: u64,
    pub machine_oom: u64,
    pub machine_oom_kills: u64,
    /// From the first `high`/`max` event on the machine to the first death the run saw.
    pub pressure_to_kill: Option<Duration>,
    /// The first kill's victim (`"service"`/`"batch"`).
    pub first_dead: Option<&'static str>,
    /// The daemon's incident for this episode (dry run: the first dry-run record).
    pub incident: Option<Value>,
    /// The running daemon, for more checks.
    pub daemon: Option<Daemon>,
    /// Cgroup paths as the daemon names them.
    pub service_cg: String,
    pub batch_cg: String,
}

impl PriorityRun {
    /// A one-line JSON summary (the demo's NOTE, and handy in failure messages).
    pub fn summary(&self, label: &str) -> Value {
        let inc = self.incident.as_ref();
        serde_json::json!({
            "label": label,
            "service": self.service_end.clone().unwrap_or_else(|| "alive".into()),
            "batch": self.batch_end.clone().unwrap_or_else(|| "alive".into()),
            "first_dead": self.first_dead,
            "vmstat_oom_kill": self.vmstat_oom_kills,
            "machine_oom_kill": self.machine_oom_kills,
            "pressure_to_kill_ms": self.pressure_to_kill.map(ms),
            "incident": inc.map(|i| serde_json::json!({
                "outcome": i["outcome"],
                "dry_run": i["dry_run"],
                "reason": i["reason"],
                "victims": i["victims"],
                "plan": i["plan"].as_array().map(|p| p.iter().map(|s| s["action"].clone()).collect::<Vec<_>>()),
                "timings_ms": i["timings_ms"],
            })),
        })
    }
}

/// The config body of the priority scenario: the batch cgroup is low priority by glob, the
/// service high priority by its `trusted.oomkit.priority` xattr (set by the scenario).
pub fn priority_config(batch_glob: &str, watchdog_ms: Option<u64>) -> String {
    let watchdog = match watchdog_ms {
        Some(ms) => format!("[watchdog]\nenabled = true\ntimeout_ms = {ms}\n"),
        None => "[watchdog]\nenabled = true\n".to_string(),
    };
    format!(
        "[engine]\nsample_interval_ms = 100\nkill_deadline_ms = 5000\ncooldown_ms = 250\n\n\
         [signals]\nmemory_events = true\n\n{watchdog}\n\
         [handler]\nkind = \"priority-kill\"\ndefault_priority = 0\n\n\
         [[handler.rules]]\nglob = \"{batch_glob}\"\npriority = -100\n\n\
         [handler.priority_kill]\ngranularity = \"process\"\n"
    )
}

/// The priority scenario: an important service (the largest consumer, priority 100 by xattr)
/// and a batch job (priority −100 by glob) that grows until the machine runs out. Returns once
/// one of them died (or, in a dry run, once the daemon recorded its decision), or fails after
/// `timeout`.
pub fn priority(ctx: &Ctx, oomkit: &Oomkit, timeout: Duration) -> Result<PriorityRun, Fail> {
    let (machine_path, machine) = parent_cgroup(ctx, "machine")?;
    machine.set_memory_max(Limit::Bytes(MACHINE_MAX * MIB))?;
    let daemon_opts = match oomkit {
        Oomkit::Without => None,
        Oomkit::With(o) => Some(o.clone()),
    };
    if daemon_opts.is_some() {
        machine.set_memory_high(Limit::Bytes(MACHINE_HIGH * MIB))?;
    }
    let (service_path, _) = ctx.cgroup("machine/service")?;
    let (batch_path, _) = ctx.cgroup("machine/batch")?;
    set_trusted_xattr(&service_path, "oomkit.priority", "100")?;
    let daemon = match &daemon_opts {
        Some(o) => {
            let watchdog = o.stall_ms.map(|_| 1000);
            let body = priority_config(&hier(&batch_path), watchdog);
            Some(Daemon::start(ctx, &machine_path, &body, o)?)
        }
        None => None,
    };
    let mut w = Watcher::new()?;
    let tok = w.add_memory_events(&machine, Scope::Hierarchical)?;
    let vm_before = vmstat_oom_kill()?;
    let (oom_before, kill_before) = cgroup_ooms(&machine)?;

    let mut service = ctx.spawn(
        &service_path,
        WorkloadKind::HogHold {
            mib: SERVICE,
            step_mib: 8,
        },
    )?;
    service.wait_line("done", Duration::from_secs(30))?;
    let mut batch = ctx.spawn(
        &batch_path,
        WorkloadKind::HogHold {
            mib: BATCH_CAP,
            step_mib: 2,
        },
    )?;
    let dry_run = daemon_opts.as_ref().is_some_and(|o| o.dry_run);
    let start = Instant::now();
    let mut pressure: Option<Instant> = None;
    let mut first: Option<(&'static str, Instant)> = None;
    let mut incident = None;
    loop {
        if start.elapsed() > timeout {
            let (oom, kill) = cgroup_ooms(&machine)?;
            return Err(Fail(format!(
                "after {timeout:?}: nobody died (machine memory.current {} MiB, oom +{}, oom_kill +{}, \
                 first pressure {:?} ago){}",
                machine.memory_current()? >> 20,
                oom - oom_before,
                kill - kill_before,
                pressure.map(|p| p.elapsed()),
                daemon
                    .as_ref()
                    .map(|d| format!("; daemon log: {}", d.log_tail(12)))
                    .unwrap_or_default()
            )));
        }
        // Block on the machine's memory.events (a real notification), at most 20 ms, then look
        // at the processes (their pipes close when they die).
        for ev in w.wait(Some(Duration::from_millis(20)))?.iter() {
            if ev.token != tok {
                continue;
            }
            if let EventKind::MemoryEvents(ch) = &ev.kind {
                let rose = ch.rose_by(MemoryEventKind::High) + ch.rose_by(MemoryEventKind::Max);
                if rose > 0 && pressure.is_none() {
                    pressure = Some(Instant::now());
                }
            }
        }
        if first.is_none() {
            if service.try_exited().is_some() {
                first = Some(("service", Instant::now()));
            } else if batch.try_exited().is_some() {
                first = Some(("batch", Instant::now()));
            }
        }
        if dry_run {
            if let Some(d) = &daemon {
                if let Some(i) = d.incidents()?.into_iter().find(|i| i["dry_run"] == true) {
                    incident = Some(i);
                    break;
                }
            }
        }
        if first.is_some() {
            break;
        }
    }
    // With the daemon, its record of the episode ends the run (it is written once memory is
    // back, or the episode gave up).
    // (A stalled daemon whose victim the watchdog took may record nothing: its own kill finds
    // the pressure gone on re-check, and averted episodes leave no record.)
    let mut daemon = daemon;
    let stalled = daemon_opts.as_ref().is_some_and(|o| o.stall_ms.is_some());
    if let (Some(d), None, false) = (daemon.as_mut(), &incident, stalled) {
        incident = Some(d.wait_incident(
            "the incident record of the kill",
            Duration::from_secs(15),
            |_| true,
        )?);
    }
    let vm_after = vmstat_oom_kill()?;
    let (oom_after, kill_after) = cgroup_ooms(&machine)?;
    let service_end = ended(&mut service);
    let batch_end = ended(&mut batch);
    Ok(PriorityRun {
        service,
        batch,
        service_end,
        batch_end,
        vmstat_oom_kills: vm_after - vm_before,
        machine_oom: oom_after - oom_before,
        machine_oom_kills: kill_after - kill_before,
        pressure_to_kill: match (pressure, first) {
            (Some(p), Some((_, t))) => Some(t.saturating_duration_since(p)),
            _ => None,
        },
        first_dead: first.map(|f| f.0),
        incident,
        daemon,
        service_cg: hier(&service_path),
        batch_cg: hier(&batch_path),
    })
}
