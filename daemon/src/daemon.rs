//! The node daemon: configuration → [`Runner`] → events, until told to stop.
//!
//! Kept in the library (not the binary) so every step but the process-wide
//! signal setup is testable: building the runner's configuration from the
//! TOML file, `check-config`, `probe`, and the loop itself. The loop
//! learns about SIGTERM/SIGINT and SIGHUP only through two file
//! descriptors the binary hands it ([`Control`]); they join the runner's
//! epoll, so a signal wakes the same `wait` that memory events do and no
//! signal handler ever runs library code.
//!
//! A reload (SIGHUP) re-reads the file; if it is invalid the daemon logs
//! every error and keeps the running configuration. The handler and
//! `[engine]` are replaced in place, and so is `[signals] tripwire` (the old
//! values are restored, the new one set); `[daemon]`, the rest of `[signals]`,
//! `[reserve]` and `[watchdog]` need a restart, and the daemon says so.

use std::io::Read;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use oomkit::Cgroup;
use oomkit::engine::incident::{Incident, IncidentConfig};
use oomkit::engine::{
    CgroupId, Episode, Handler, Outcome, PsiConfig, Runner, RunnerConfig, Tree, Victim,
    WatchdogConfig,
};
use oomkit::events::PsiThreshold;
use oomkit::reserve::{MlockMode, ReserveCgroup, ReserveConfig};

use crate::config::{Config, ConfigErrors, Loaded, MlockSetting, PsiKind, PsiScope};
use crate::hooks::{PostKill, PreKillExec};
use crate::incidents::IncidentWriter;
use crate::metrics::Metrics;
use crate::tripwire::Tripwire;
use oomkit_handlers::heap_profile::DumpWatch;
use oomkit_handlers::podinfo::pod_info;

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The SDK failed (opening the tree, the epoll, reserve cgroup …).
    #[error("{context}: {source}")]
    Sdk {
        /// What the daemon was doing.
        context: &'static str,
        /// The error.
        #[source]
        source: oomkit::Error,
    },
    /// The host cannot be managed (no cgroup2, no memory controller).
    #[error("{0}")]
    Unsupported(#[from] Unsupported),
    /// Something else.
    #[error("{0}")]
    Other(String),
}

impl DaemonError {
    /// The process exit code for this error (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Config(_) | DaemonError::Unsupported(_) => exit::CONFIG,
            DaemonError::Sdk { .. } | DaemonError::Other(_) => exit::FAILURE,
        }
    }
}

/// The daemon's exit codes: a supervisor restarts on [`exit::FAILURE`] and
/// gives up on [`exit::CONFIG`] (systemd: `RestartPreventExitStatus=78`),
/// because restarting cannot fix a bad file or a host without cgroup2.
pub mod exit {
    /// Stopped cleanly (SIGTERM/SIGINT), or the command succeeded.
    pub const OK: u8 = 0;
    /// A runtime failure; a restart may help.
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap's code).
    pub const USAGE: u8 = 2;
    /// `EX_CONFIG` (sysexits.h): the config file is invalid, or the host
    /// cannot be managed (the managed root is not cgroup2 or has no memory
    /// controller). Restarting will not help.
    pub const CONFIG: u8 = 78;
    /// The exit codes as `--help` prints them.
    pub const HELP: &str = "Exit codes:\n  0   stopped cleanly (SIGTERM/SIGINT) or the command succeeded\n  1   runtime failure (a restart may help)\n  2   bad command line\n  78  EX_CONFIG: invalid config, or the host cannot be managed (the managed root is not\n      cgroup2 or has no memory controller); restarting will not help";
}

/// Why the managed root cannot be managed: `run` refuses with
/// [`exit::CONFIG`] and `probe` reports it.
#[derive(Debug, thiserror::Error)]
pub enum Unsupported {
    /// The root cannot be opened at all.
    #[error("{}: cannot open the managed root: {source}", path.display())]
    Open {
        /// The root.
        path: PathBuf,
        /// Why.
        #[source]
        source: oomkit::Error,
    },
    /// The root is not on a cgroup2 filesystem (cgroup v1, tmpfs, a plain folder).
    #[error(
        "{}: not a cgroup2 filesystem; oomkit needs the unified hierarchy (cgroup v2; systemd: boot with systemd.unified_cgroup_hierarchy=1)",
        path.display()
    )]
    NotCgroup2 {
        /// The root.
        path: PathBuf,
    },
    /// The memory controller is not enabled at the root.
    #[error(
        "{}: no memory controller here (cgroup.controllers: \"{controllers}\"); it is on cgroup v1, or not enabled in the parent's cgroup.subtree_control",
        path.display()
    )]
    NoMemoryController {
        /// The root.
        path: PathBuf,
        /// What `cgroup.controllers` lists.
        controllers: String,
    },
}

/// Checks that `root` is a cgroup2 directory with the memory controller.
/// Read-only: opens the directory and reads `cgroup.controllers`.
pub fn check_root(root: &Path) -> Result<(), Unsupported> {
    let cg = Cgroup::open(root).map_err(|source| match source {
        oomkit::Error::InvalidPath { .. } if root.is_dir() => Unsupported::NotCgroup2 {
            path: root.to_path_buf(),
        },
        source => Unsupported::Open {
            path: root.to_path_buf(),
            source,
        },
    })?;
    let controllers = cg.controllers().map_err(|source| Unsupported::Open {
        path: root.to_path_buf(),
        source,
    })?;
    if controllers.iter().any(|c| c == "memory") {
        Ok(())
    } else {
        Err(Unsupported::NoMemoryController {
            path: root.to_path_buf(),
            controllers: controllers.join(" "),
        })
    }
}

fn sdk(context: &'static str) -> impl FnOnce(oomkit::Error) -> DaemonError {
    move |source| DaemonError::Sdk { context, source }
}

/// The runner's configuration from the file (`dry_run` forces a dry run).
///
/// Opens the reserve cgroup's parent, so it fails if that does not exist.
pub fn runner_config(cfg: &Config, dry_run: bool) -> Result<RunnerConfig, DaemonError> {
    let mut engine = cfg.engine_config();
    engine.dry_run |= dry_run;
    let r = &cfg.reserve;
    let reserve = if r.enabled {
        let cgroup = match (&r.cgroup_parent, r.memory_min) {
            (Some(parent), Some(min)) => Some(ReserveCgroup {
                parent: Cgroup::open(parent).map_err(sdk("opening reserve.cgroup_parent"))?,
                name: r.cgroup_name.clone(),
                memory_min: min.0,
                memory_low: None,
            }),
            _ => None,
        };
        Some(ReserveConfig {
            mlock: match r.mlock {
                MlockSetting::Off => MlockMode::Off,
                MlockSetting::All => MlockMode::All,
                MlockSetting::OnFault => MlockMode::AllOnFault,
                MlockSetting::Resident => MlockMode::Resident,
            },
            oom_score_adj: r.oom_score_adj,
            nice: r.nice,
            sched_fifo: r.fifo,
            io_flusher: r.io_flusher,
            cgroup,
            ..ReserveConfig::default()
        })
    } else {
        None
    };
    let psi = cfg.signals.psi.as_ref().map(|p| {
        let stall = Duration::from_millis(p.stall_ms);
        let window = Duration::from_millis(p.window_ms);
        PsiConfig {
            threshold: match p.kind {
                PsiKind::Some => PsiThreshold::some(stall, window),
                PsiKind::Full => PsiThreshold::full(stall, window),
            },
            system: p.scope == PsiScope::System,
        }
    });
    let d = &cfg.daemon;
    let mut rc = RunnerConfig::daemon(d.root.clone());
    rc.engine = engine;
    rc.reserve = reserve;
    rc.memory_events = cfg.signals.memory_events;
    rc.psi = psi;
    rc.machine = cfg.signals.machine.watch_config();
    // The daemon writes incident records itself, from a thread (see `Observer`).
    rc.incidents = None;
    rc.watchdog = cfg.watchdog.enabled.then_some(WatchdogConfig {
        timeout: Duration::from_millis(cfg.watchdog.timeout_ms),
    });
    rc.xattr_trust = cfg.xattr_trust();
    rc.depth = d.depth;
    Ok(rc)
}

/// Where and how many incident records to keep (`None`: `incident_dir = ""`).
pub fn incident_config(cfg: &Config) -> Option<IncidentConfig> {
    let d = &cfg.daemon;
    d.incidents().map(|dir| IncidentConfig {
        dir: dir.to_path_buf(),
        max_count: d.incident_max_count,
        max_bytes: usize::try_from(d.incident_max_bytes.0).unwrap_or(usize::MAX),
    })
}

/// What `check-config` reports for a valid file.
pub fn check_config(file: &Path) -> Result<String, ConfigErrors> {
    let loaded = Config::load(file)?;
    // Building the handler compiles every glob: the same path as `run`.
    let built = loaded.config.build_handler();
    if let Err(e) = built {
        return Err(ConfigErrors(vec![crate::config::ConfigError {
            file: file.to_path_buf(),
            at: None,
            key: Some("handler".into()),
            message: e,
        }]));
    }
    Ok(summary(&loaded))
}

/// One paragraph describing a loaded config, warnings included.
pub fn summary(loaded: &Loaded) -> String {
    let c = &loaded.config;
    let mut s = format!(
        "{}: OK\n  root {} (depth {}), handler {}, {} rule(s), QoS tiers {}\n  signals: memory.events {}, PSI {}, machine {}, tripwire {}\n  engine: dry_run {}, progress_aware {}, kill_deadline {} ms, cooldown {} ms\n  reserve {}, watchdog {}",
        loaded.file.display(),
        c.daemon.root.display(),
        c.daemon.depth,
        c.handler.kind.name(),
        c.handler.rules.len(),
        if c.handler.qos.enabled { "on" } else { "off" },
        if c.signals.memory_events { "on" } else { "off" },
        c.signals
            .psi
            .as_ref()
            .map_or("off".to_string(), |p| format!(
                "{:?} {} ms / {} ms ({:?})",
                p.kind, p.stall_ms, p.window_ms, p.scope
            )),
        {
            let m = &c.signals.machine;
            if m.enabled {
                format!(
                    "low {} / critical {} / clear {}, {} ms",
                    m.low.0, m.critical.0, m.clear.0, m.min_duration_ms
                )
            } else {
                "off".to_string()
            }
        },
        c.signals.tripwire.map_or("off".to_string(), |t| format!(
            "{} per top-level child",
            t.0
        )),
        c.engine.dry_run,
        c.engine.progress_aware,
        c.engine.kill_deadline_ms,
        c.engine.cooldown_ms,
        if c.reserve.enabled { "on" } else { "off" },
        if c.watchdog.enabled {
            format!("{} ms", c.watchdog.timeout_ms)
        } else {
            "off".into()
        },
    );
    for d in &loaded.dropins {
        s.push_str("\n  drop-in: ");
        s.push_str(&d.display().to_string());
    }
    for w in &loaded.warnings {
        s.push_str("\n  warning: ");
        s.push_str(w);
    }
    s
}

/// The two pipes through which the binary's signal handlers reach the loop.
/// Each is the read end of a socket pair whose write end a signal handler
/// writes a byte to; the loop drains them.
#[derive(Debug)]
pub struct Control {
    /// SIGTERM / SIGINT: stop.
    pub shutdown: UnixStream,
    /// SIGHUP: reload the config.
    pub reload: UnixStream,
}

fn drain(s: &mut UnixStream) {
    let mut buf = [0u8; 64];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

fn clone_fd(s: &UnixStream) -> Result<OwnedFd, DaemonError> {
    s.set_nonblocking(true)
        .and_then(|()| s.try_clone())
        .map(OwnedFd::from)
        .map_err(|e| DaemonError::Other(format!("control pipe: {e}")))
}

/// Runs until `control.shutdown` is readable. `file` is re-read on `control.reload`.
pub fn run(
    file: &Path,
    loaded: Loaded,
    dry_run: bool,
    control: Control,
) -> Result<(), DaemonError> {
    run_wrapped(file, loaded, dry_run, control, &|h| h)
}

/// Wraps every handler the daemon builds (at start and on reload).
pub type HandlerWrap<'a> = &'a dyn Fn(Box<dyn Handler>) -> Box<dyn Handler>;

/// [`run`], with each handler built from the file passed through `wrap` first (the binary's
/// hidden debug flags use this; see `--debug-stall-after-event-ms`).
pub fn run_wrapped(
    file: &Path,
    loaded: Loaded,
    dry_run: bool,
    mut control: Control,
    wrap: HandlerWrap<'_>,
) -> Result<(), DaemonError> {
    for w in &loaded.warnings {
        tracing::warn!(file = %file.display(), "{w}");
    }
    check_root(&loaded.config.daemon.root)?;
    let mut current = loaded.config;
    let handler = wrap(current.build_handler().map_err(DaemonError::Other)?);
    let rc = runner_config(&current, dry_run)?;
    let metrics = Arc::new(Metrics::new());
    if let Some(addr) = &current.daemon.metrics_listen {
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| DaemonError::Other(format!("daemon.metrics_listen `{addr}`: {e}")))?;
        let local = crate::metrics::serve(addr, metrics.clone())
            .map_err(|e| DaemonError::Other(format!("serving metrics on {addr}: {e}")))?;
        tracing::info!(listen = %local, "serving /metrics and /healthz");
    }
    let incidents = incident_config(&current).and_then(|c| {
        let dir = c.dir.clone();
        IncidentWriter::start(c)
            .inspect_err(
                |e| tracing::warn!(dir = %dir.display(), error = %e, "incident records are off"),
            )
            .ok()
    });
    tracing::info!(
        root = %rc.root.display(),
        handler = current.handler.kind.name(),
        dry_run = rc.engine.dry_run,
        "starting"
    );
    let mut runner = Runner::new(rc, handler).map_err(sdk("starting the runner"))?;
    if let Some(dir) = &current.daemon.diagnostics_dir {
        runner.add_prekill_hook(Box::new(DumpWatch::new(dir.clone())));
    }
    if let Some(p) = current.hooks.pre_kill.clone() {
        let deadline = Duration::from_millis(current.hooks.pre_kill_timeout_ms);
        match PreKillExec::start(p, deadline) {
            Ok(h) => runner.add_prekill_hook(Box::new(h)),
            Err(e) => tracing::warn!(error = %e, "the pre-kill hook is off"),
        }
    }
    let degraded = runner.reserve_report().is_some_and(|r| r.degraded());
    if let Some(rep) = runner.reserve_report() {
        if rep.degraded() {
            tracing::warn!(report = %rep, "reserve mode is degraded");
        }
    }
    let t_stop = runner
        .add_fd(clone_fd(&control.shutdown)?)
        .map_err(sdk("watching the shutdown pipe"))?;
    let t_reload = runner
        .add_fd(clone_fd(&control.reload)?)
        .map_err(sdk("watching the reload pipe"))?;
    let post_kill = current.hooks.post_kill.clone().and_then(|p| {
        let deadline = Duration::from_millis(current.hooks.post_kill_timeout_ms);
        PostKill::start(p, deadline)
            .inspect_err(|e| tracing::warn!(error = %e, "the post-kill hook is off"))
            .ok()
    });
    let observer = Observer {
        metrics: metrics.clone(),
        incidents,
        post_kill,
        reserve_degraded: degraded,
    };
    observer.after_turn(&runner, &[]);
    // Dropped (and so restored) on every way out of this function. A dry run changes
    // nothing, so it only says what the tripwire would set.
    let mut tripwire = start_tripwire(&current, dry_run);
    tracing::info!(cgroups = runner.engine().tree().len(), "running");
    notify(&[sd_notify::NotifyState::Ready]);
    loop {
        let turn = runner.run_once(None).map_err(sdk("waiting for events"))?;
        // Off the decision path: the episodes of this turn have ended.
        observer.after_turn(&runner, &turn.finished);
        if turn.ready.contains(&t_stop) {
            drain(&mut control.shutdown);
            break;
        }
        if turn.ready.contains(&t_reload) {
            drain(&mut control.reload);
            notify(&[sd_notify::NotifyState::Reloading]);
            let ok = reload(
                file,
                dry_run,
                &mut current,
                &mut runner,
                wrap,
                &mut tripwire,
            );
            metrics.reloaded(ok);
            notify(&[sd_notify::NotifyState::Ready]);
        }
        // A new top-level child wakes the runner's directory watch; it gets the tripwire here.
        if let Some(t) = &mut tripwire {
            t.sync_logged();
        }
    }
    metrics.healthy.store(false, Ordering::Relaxed);
    notify(&[sd_notify::NotifyState::Stopping]);
    // Give back memory.high, release throttles and raised limits before going away.
    if let Some(t) = &mut tripwire {
        t.restore_logged();
    }
    runner.shutdown();
    let s = runner.stats();
    tracing::info!(
        episodes = s.episodes,
        kills = s.kills,
        averted = s.averted,
        kernel_oom_kills = s.kernel_oom_kills,
        watchdog_fired = runner.watchdog_fired(),
        "stopped"
    );
    Ok(())
}

/// What the daemon does after each turn of the loop, once the engine is
/// done with it: metrics, one log line per victim, incident records.
struct Observer {
    metrics: Arc<Metrics>,
    incidents: Option<IncidentWriter>,
    post_kill: Option<PostKill>,
    reserve_degraded: bool,
}

impl Observer {
    fn after_turn(&self, runner: &Runner, finished: &[Episode]) {
        let engine = runner.engine();
        let dry_run = engine.config().dry_run;
        for ep in finished {
            self.metrics.episode(ep);
            log_victims(ep, engine.tree());
            if !ep.is_action() {
                continue;
            }
            let inc = Incident::from_episode(ep, engine.tree(), engine.handler_name(), dry_run);
            let killed = !inc.victims.is_empty() || !inc.would_kill.is_empty();
            if let (true, Some(h)) = (killed, &self.post_kill) {
                h.submit(inc.clone());
            }
            if let Some(w) = &self.incidents {
                let scope = ep.scope.and_then(|id| engine.host().cgroup_shared(id));
                w.submit(inc, scope, ep.timings.event_seen);
            }
        }
        let s = runner.stats();
        self.metrics
            .totals(s.kernel_oom_kills, runner.watchdog_fired());
        self.metrics
            .gauges(engine.tree().len(), self.reserve_degraded);
    }
}

/// One line per victim (or, in a dry run, per kill that would have run):
/// pid, comm, cgroup, bytes, tier, reason, and the pod UID and container ID
/// where the cgroup path shows them.
pub fn log_victims(ep: &Episode, tree: &Tree) {
    let comm_of = |pid: Option<i32>| {
        pid.and_then(|p| ep.top_processes.iter().flatten().find(|s| s.pid == p))
            .map(|s| s.comm().to_owned())
    };
    let line = |pid: Option<i32>, id: CgroupId, bytes: Option<u64>, what: &str| {
        let path = tree.path(id);
        let pod = path.map(pod_info).unwrap_or_default();
        tracing::warn!(
            episode = ep.id,
            pid,
            comm = comm_of(pid).as_deref(),
            cgroup = %path.map(|p| p.display().to_string()).unwrap_or_default(),
            bytes,
            tier = tree.class(id).map(|c| c.priority),
            reason = ep.plan.reason(),
            trigger = crate::metrics::reason_label(&ep.trigger),
            pod_uid = pod.pod_uid.as_deref(),
            container_id = pod.container_id.as_deref(),
            "{what}"
        );
    };
    if ep.outcome == Some(Outcome::DryRun) {
        for s in ep.plan.steps().filter(|s| s.action.is_kill()) {
            let pid = match s.action {
                oomkit::engine::Action::KillProcess { pid, .. } => Some(pid),
                _ => None,
            };
            line(pid, s.action.cgroup(), None, "dry run: would kill");
        }
        return;
    }
    for v in ep.victims.iter().flatten() {
        let pid = match v.victim {
            Victim::Process { pid, .. } => Some(pid),
            _ => None,
        };
        line(pid, v.victim.cgroup(), Some(v.footprint), "killed");
    }
}

/// Tells systemd (`Type=notify`) where the daemon is; a no-op when not run
/// by systemd (no `NOTIFY_SOCKET`).
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// The tripwire of `cfg` set on the root's children (`None`: not configured, or `MemTotal`
/// unreadable, which is logged).
fn start_tripwire(cfg: &Config, dry_run: bool) -> Option<Tripwire> {
    let level = cfg.signals.tripwire?.0;
    let total = match crate::tripwire::mem_total(Path::new("/proc/meminfo")) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "tripwire not set");
            return None;
        }
    };
    let (high, warn) = crate::tripwire::resolve(level, total);
    if let Some(w) = warn {
        tracing::warn!("{w}");
    }
    if dry_run || cfg.engine.dry_run {
        tracing::info!(
            high_bytes = high,
            "dry run: the tripwire would set memory.high on the root's top-level children"
        );
        return None;
    }
    let r = &cfg.reserve;
    let own = r
        .cgroup_parent
        .as_ref()
        .filter(|_| r.enabled)
        .map(|p| p.join(&r.cgroup_name));
    let mut t = Tripwire::new(cfg.daemon.root.clone(), high, own);
    t.sync_logged();
    tracing::info!(
        high_bytes = t.high(),
        children = t.owned(),
        "tripwire: memory.high set"
    );
    Some(t)
}

/// Re-reads the file; on success swaps handler and engine settings in, and the tripwire.
/// Returns whether it did.
fn reload(
    file: &Path,
    dry_run: bool,
    current: &mut Config,
    runner: &mut Runner,
    wrap: HandlerWrap<'_>,
    tripwire: &mut Option<Tripwire>,
) -> bool {
    let loaded = match Config::load(file) {
        Ok(l) => l,
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!("{e}");
            }
            tracing::error!("reload failed; keeping the running configuration");
            return false;
        }
    };
    let new = loaded.config;
    let handler = match new.build_handler() {
        Ok(h) => wrap(h),
        Err(e) => {
            tracing::error!(error = %e, "reload failed; keeping the running configuration");
            return false;
        }
    };
    let mut engine = new.engine_config();
    engine.dry_run |= dry_run;
    if let Err(e) = runner.reload(handler, engine) {
        tracing::error!(error = %e, "reload refused; keeping the running configuration");
        return false;
    }
    if current.signals.tripwire != new.signals.tripwire {
        if let Some(t) = tripwire {
            t.restore_logged();
        }
        *tripwire = start_tripwire(&new, dry_run);
    }
    for (name, changed) in restart_needed(current, &new) {
        if changed {
            tracing::warn!(
                section = name,
                "changed, but takes effect only after a restart"
            );
        }
    }
    for w in &loaded.warnings {
        tracing::warn!(file = %file.display(), "{w}");
    }
    tracing::info!(handler = new.handler.kind.name(), "configuration reloaded");
    *current = new;
    true
}

/// Sections a reload cannot apply, and whether each changed.
pub fn restart_needed(old: &Config, new: &Config) -> [(&'static str, bool); 5] {
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    // The tripwire is reloaded in place.
    let mut new_signals = new.signals.clone();
    new_signals.tripwire = old.signals.tripwire;
    [
        ("daemon", differs(&old.daemon, &new.daemon)),
        ("signals", differs(&old.signals, &new_signals)),
        ("reserve", differs(&old.reserve, &new.reserve)),
        ("watchdog", differs(&old.watchdog, &new.watchdog)),
        ("hooks", differs(&old.hooks, &new.hooks)),
    ]
}

// ---------------------------------------------------------------------------
// probe

/// Capabilities and limits that decide what reserve mode gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Privileges {
    /// Effective capability mask (`CapEff` of `/proc/self/status`).
    pub cap_eff: u64,
    /// `RLIMIT_MEMLOCK` soft limit in bytes (`None`: unlimited).
    pub memlock_soft: Option<u64>,
    /// `RLIMIT_MEMLOCK` hard limit in bytes (`None`: unlimited).
    pub memlock_hard: Option<u64>,
    /// `RLIMIT_RTPRIO` soft limit (`None`: unlimited).
    pub rtprio: Option<u64>,
}

const CAP_IPC_LOCK: u32 = 14;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_NICE: u32 = 23;
const CAP_SYS_RESOURCE: u32 = 24;

impl Privileges {
    /// Reads `/proc/self/status` and `/proc/self/limits`.
    pub fn read() -> Privileges {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        Self::parse(&status, &limits)
    }

    /// Parses the two files' text.
    pub fn parse(status: &str, limits: &str) -> Privileges {
        let cap_eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        let limit = |name: &str| -> (Option<u64>, Option<u64>) {
            let Some(line) = limits.lines().find(|l| l.starts_with(name)) else {
                return (Some(0), Some(0));
            };
            let mut f = line[name.len()..].split_whitespace();
            let v = |s: Option<&str>| match s {
                Some("unlimited") | None => None,
                Some(n) => n.parse().ok(),
            };
            (v(f.next()), v(f.next()))
        };
        let (memlock_soft, memlock_hard) = limit("Max locked memory");
        let (rtprio, _) = limit("Max realtime priority");
        Privileges {
            cap_eff,
            memlock_soft,
            memlock_hard,
            rtprio,
        }
    }

    /// True when capability `cap` is effective.
    pub fn has(&self, cap: u32) -> bool {
        self.cap_eff & (1u64 << cap) != 0
    }

    /// One line per reserve step: what it would get, and why not.
    pub fn reserve_outlook(&self, cfg: &Config) -> Vec<(String, String)> {
        let r = &cfg.reserve;
        let mut out = Vec::new();
        let mut row = |k: &str, v: String| out.push((k.to_string(), v));
        let unlimited_lock = self.memlock_soft.is_none()
            || self.has(CAP_IPC_LOCK)
            || (self.has(CAP_SYS_RESOURCE) || self.memlock_hard.is_none());
        row(
            "mlockall",
            match r.mlock {
                MlockSetting::Off => "off by config".into(),
                _ if unlimited_lock => {
                    "yes (CAP_IPC_LOCK or unlimited/raisable RLIMIT_MEMLOCK)".into()
                }
                _ => format!(
                    "partial: RLIMIT_MEMLOCK {} bytes, no CAP_IPC_LOCK — locking will fail once the daemon outgrows it",
                    self.memlock_hard.unwrap_or(0)
                ),
            },
        );
        row(
            "oom_score_adj",
            match r.oom_score_adj {
                None => "unchanged by config".into(),
                Some(a) if a < 0 && !self.has(CAP_SYS_RESOURCE) => {
                    format!("no: lowering to {a} needs CAP_SYS_RESOURCE")
                }
                Some(a) => format!("yes ({a})"),
            },
        );
        row(
            "io_flusher",
            if !r.io_flusher {
                "off by config".into()
            } else if self.has(CAP_SYS_RESOURCE) {
                "yes (needs Linux 5.6+)".into()
            } else {
                "no: PR_SET_IO_FLUSHER needs CAP_SYS_RESOURCE".into()
            },
        );
        row(
            "nice",
            match r.nice {
                None => "unchanged by config".into(),
                Some(n) if n < 0 && !self.has(CAP_SYS_NICE) => {
                    format!("no: nice {n} needs CAP_SYS_NICE")
                }
                Some(n) => format!("yes ({n})"),
            },
        );
        row(
            "sched_fifo",
            match r.fifo {
                None => "off by config".into(),
                Some(p)
                    if !self.has(CAP_SYS_NICE)
                        && self.rtprio.is_some_and(|l| l < u64::from(p.unsigned_abs())) =>
                {
                    format!("no: priority {p} needs CAP_SYS_NICE or RLIMIT_RTPRIO >= {p}")
                }
                Some(p) => format!("yes ({p})"),
            },
        );
        row(
            "memory_min cgroup",
            match (&r.cgroup_parent, r.memory_min) {
                (Some(p), Some(m)) if self.has(CAP_SYS_ADMIN) => {
                    format!("yes: {} bytes under {}", m.0, p.display())
                }
                (Some(p), Some(_)) => format!(
                    "only if {} is delegated to this user (no CAP_SYS_ADMIN)",
                    p.display()
                ),
                _ => "off by config".into(),
            },
        );
        out
    }
}

/// The text of `oomkit probe`: kernel features at `root` and what reserve
/// mode would get with `cfg` (defaults when `None`).
/// The second value is why the host cannot be managed, if it cannot.
pub fn probe(root: &Path, cfg: Option<&Config>) -> (String, Option<Unsupported>) {
    let mut s = String::new();
    let verdict = check_root(root).err();
    match Cgroup::open(root) {
        Ok(cg) => {
            let f = oomkit::probe::Features::probe(&cg);
            s.push_str(&format!(
                "kernel {}\nfeatures at {}:\n",
                f.kernel_release,
                root.display()
            ));
            for (name, sup) in f.rows() {
                s.push_str(&format!("  {name:<18} {sup}\n"));
            }
        }
        Err(e) => s.push_str(&format!("cannot open {}: {e}\n", root.display())),
    }
    let default_cfg;
    let cfg = match cfg {
        Some(c) => c,
        None => {
            default_cfg = default_config();
            &default_cfg
        }
    };
    let p = Privileges::read();
    s.push_str(&format!("reserve mode (CapEff {:#x}):\n", p.cap_eff));
    for (k, v) in p.reserve_outlook(cfg) {
        s.push_str(&format!("  {k:<18} {v}\n"));
    }
    match &verdict {
        None => s.push_str("supported: yes\n"),
        Some(why) => s.push_str(&format!("supported: no: {why}\n")),
    }
    (s, verdict)
}

/// A config with every default and a priority-kill handler.
pub fn default_config() -> Config {
    Config {
        daemon: Default::default(),
        engine: Default::default(),
        signals: Default::default(),
        reserve: Default::default(),
        watchdog: Default::default(),
        hooks: Default::default(),
        handler: crate::config::HandlerSection {
            kind: crate::config::HandlerKind::PriorityKill,
            default_priority: 0,
            qos: Default::default(),
            rules: Vec::new(),
            priority_kill: None,
            throttle: None,
            heap_profile: None,
        },
    }
}

/// The default config file location.
pub fn default_config_path() -> PathBuf {
    PathBuf::from("/etc/oomkit/oomkit.toml")
}
