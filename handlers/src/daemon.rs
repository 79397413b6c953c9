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
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oomkit::Cgroup;
use oomkit::engine::incident::IncidentConfig;
use oomkit::engine::{Handler, PsiConfig, Runner, RunnerConfig, WatchdogConfig};
use oomkit::events::PsiThreshold;
use oomkit::reserve::{MlockMode, ReserveCgroup, ReserveConfig};

use crate::config::{Config, ConfigErrors, Loaded, LogFormat, MlockSetting, PsiKind, PsiScope};
use crate::heap_profile::DumpWatch;
use crate::tripwire::Tripwire;

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
    /// Something else.
    #[error("{0}")]
    Other(String),
}

fn sdk(context: &'static str) -> impl FnOnce(oomkit::Error) -> DaemonError {
    move |source| DaemonError::Sdk { context, source }
}

/// Sets up `tracing` output as text or JSON lines on stderr. `RUST_LOG`,
/// when set, overrides `level`.
pub fn init_logging(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => tracing_subscriber::EnvFilter::try_new(v),
        _ => tracing_subscriber::EnvFilter::try_new(level),
    }
    .map_err(|e| format!("log filter: {e}"))?;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let r = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().flatten_event(true).try_init(),
    };
    r.map_err(|e| format!("logging: {e}"))
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
    let incidents = d.incident_dir.as_ref().map(|dir| IncidentConfig {
        dir: dir.clone(),
        max_count: d.incident_max_count,
        max_bytes: usize::try_from(d.incident_max_bytes.0).unwrap_or(usize::MAX),
    });
    let mut rc = RunnerConfig::daemon(d.root.clone());
    rc.engine = engine;
    rc.reserve = reserve;
    rc.memory_events = cfg.signals.memory_events;
    rc.psi = psi;
    rc.machine = cfg.signals.machine.watch_config();
    rc.incidents = incidents;
    rc.watchdog = cfg.watchdog.enabled.then_some(WatchdogConfig {
        timeout: Duration::from_millis(cfg.watchdog.timeout_ms),
    });
    rc.xattr_trust = cfg.xattr_trust();
    rc.depth = d.depth;
    Ok(rc)
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
    let mut current = loaded.config;
    let handler = wrap(current.build_handler().map_err(DaemonError::Other)?);
    let rc = runner_config(&current, dry_run)?;
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
    // Dropped (and so restored) on every way out of this function.
    let mut tripwire = start_tripwire(&current);
    tracing::info!(cgroups = runner.engine().tree().len(), "running");
    loop {
        let turn = runner.run_once(None).map_err(sdk("waiting for events"))?;
        if turn.ready.contains(&t_stop) {
            drain(&mut control.shutdown);
            break;
        }
        if turn.ready.contains(&t_reload) {
            drain(&mut control.reload);
            reload(
                file,
                dry_run,
                &mut current,
                &mut runner,
                wrap,
                &mut tripwire,
            );
        }
        // A new top-level child wakes the runner's directory watch; it gets the tripwire here.
        if let Some(t) = &mut tripwire {
            t.sync_logged();
        }
    }
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

/// The tripwire of `cfg` set on the root's children (`None`: not configured, or `MemTotal`
/// unreadable, which is logged).
fn start_tripwire(cfg: &Config) -> Option<Tripwire> {
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
fn reload(
    file: &Path,
    dry_run: bool,
    current: &mut Config,
    runner: &mut Runner,
    wrap: HandlerWrap<'_>,
    tripwire: &mut Option<Tripwire>,
) {
    let loaded = match Config::load(file) {
        Ok(l) => l,
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!("{e}");
            }
            tracing::error!("reload failed; keeping the running configuration");
            return;
        }
    };
    let new = loaded.config;
    let handler = match new.build_handler() {
        Ok(h) => wrap(h),
        Err(e) => {
            tracing::error!(error = %e, "reload failed; keeping the running configuration");
            return;
        }
    };
    let mut engine = new.engine_config();
    engine.dry_run |= dry_run;
    if let Err(e) = runner.reload(handler, engine) {
        tracing::error!(error = %e, "reload refused; keeping the running configuration");
        return;
    }
    if current.signals.tripwire != new.signals.tripwire {
        if let Some(t) = tripwire {
            t.restore_logged();
        }
        *tripwire = start_tripwire(&new);
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
}

/// Sections a reload cannot apply, and whether each changed.
pub fn restart_needed(old: &Config, new: &Config) -> [(&'static str, bool); 4] {
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
pub fn probe(root: &Path, cfg: Option<&Config>) -> String {
    let mut s = String::new();
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
    s
}

/// A config with every default and a priority-kill handler.
pub fn default_config() -> Config {
    Config {
        daemon: Default::default(),
        engine: Default::default(),
        signals: Default::default(),
        reserve: Default::default(),
        watchdog: Default::default(),
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
