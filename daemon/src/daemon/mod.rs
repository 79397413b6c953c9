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
//!
//! This file is the loop and reload; `setup` builds the runner's configuration and the tripwire,
//! `observer` does what follows each turn (metrics, victim log lines, incidents), `check` and
//! `probe` are the `check-config` and `probe` commands.

use std::io::Read;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use oomkit::Cgroup;
use oomkit::engine::incident::{Incident, IncidentConfig};
use oomkit::engine::{
    CgroupId, Episode, Handler, Outcome, PsiConfig, Runner, RunnerConfig, Tree, Victim,
    WatchdogConfig,
};
use oomkit::events::PsiThreshold;
use oomkit::reserve::{MlockMode, ReserveCgroup, ReserveConfig};

use crate::config::{Config, ConfigErrors, Loaded, MlockSetting, PsiKind, PsiScope, ms};
use crate::hooks::{PostKill, PreKillExec};
use crate::incidents::IncidentWriter;
use crate::metrics::Metrics;
use crate::tripwire::Tripwire;
use oomkit_handlers::heap_profile::DumpWatch;
use oomkit_handlers::podinfo::pod_info;

mod check;
mod observer;
mod probe;
mod setup;

pub use check::{check_config, summary};
use observer::Observer;
pub use observer::log_victims;
pub use probe::{Privileges, probe};
use setup::start_tripwire;
use setup::{add_prekill_hooks, start_incidents, start_post_kill};
pub use setup::{incident_config, runner_config};

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
    let (metrics, incidents) = start_threads(&current)?;
    tracing::info!(
        root = %rc.root.display(),
        handler = current.handler.kind.name(),
        dry_run = rc.engine.dry_run,
        "starting"
    );
    let mut runner = Runner::new(rc, handler).map_err(sdk("starting the runner"))?;
    add_prekill_hooks(&current, &mut runner);
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
    let observer = Observer {
        metrics: metrics.clone(),
        incidents,
        post_kill: start_post_kill(&current),
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
    stop(runner, tripwire);
    Ok(())
}

/// Gives back `memory.high` (the tripwire's), releases throttles and raised limits, and logs the
/// lifetime counters: the way out of [`run`].
fn stop(mut runner: Runner, mut tripwire: Option<Tripwire>) {
    notify(&[sd_notify::NotifyState::Stopping]);
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
}

/// Starts the daemon's own threads: the metrics server and the incident
/// writer. First, when reserve mode will lock memory, glibc is capped at one
/// malloc arena (reserve mode does that too, but only once the runner
/// starts): a thread that allocates before the cap gets an arena of its own,
/// 64 MiB of address space that `mlock = "all"` counts as locked.
fn start_threads(cfg: &Config) -> Result<(Arc<Metrics>, Option<IncidentWriter>), DaemonError> {
    if cfg.reserve.enabled && cfg.reserve.mlock != MlockSetting::Off {
        oomkit::reserve::limit_malloc_arenas();
    }
    let metrics = Arc::new(Metrics::new());
    serve_metrics(cfg, &metrics)?;
    Ok((metrics, start_incidents(cfg)))
}

/// Serves `/metrics` and `/healthz` on `daemon.metrics_listen`, if set.
fn serve_metrics(cfg: &Config, metrics: &Arc<Metrics>) -> Result<(), DaemonError> {
    let Some(addr) = &cfg.daemon.metrics_listen else {
        return Ok(());
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| DaemonError::Other(format!("daemon.metrics_listen `{addr}`: {e}")))?;
    let local = crate::metrics::serve(addr, metrics.clone())
        .map_err(|e| DaemonError::Other(format!("serving metrics on {addr}: {e}")))?;
    tracing::info!(listen = %local, "serving /metrics and /healthz");
    Ok(())
}

/// Tells systemd (`Type=notify`) where the daemon is; a no-op when not run
/// by systemd (no `NOTIFY_SOCKET`).
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
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
    // The tripwire is reloaded in place.
    let mut new_signals = new.signals.clone();
    new_signals.tripwire = old.signals.tripwire;
    [
        ("daemon", old.daemon != new.daemon),
        ("signals", old.signals != new_signals),
        ("reserve", old.reserve != new.reserve),
        ("watchdog", old.watchdog != new.watchdog),
        ("hooks", old.hooks != new.hooks),
    ]
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
