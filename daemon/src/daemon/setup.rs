//! What the daemon builds from its config when it starts (and again on reload): the runner's
//! configuration, where incident records go, and the tripwire on the root's children.

use super::*;

/// Bytes of the main thread's stack touched up front, below the frame that enters reserve
/// mode. The event loop runs shallower than that frame: in `reserve_no_major_fault_to_kill`
/// an episode up to the kill wrote at most 76 KiB below the stack's top (6.1), and the start-up
/// path alone keeps more than that resident. 64 KiB more is the margin for branches that
/// episode did not take (error and log formatting). The SDK's default is 256 KiB.
const STACK_PREFAULT: usize = 64 << 10;

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
            stack_prefault: STACK_PREFAULT,
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
        let (stall, window) = (p.stall, p.window);
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
        timeout: cfg.watchdog.timeout,
    });
    rc.xattr_trust = cfg.xattr_trust();
    rc.depth = d.depth;
    rc.usage_fds = d.usage_fds;
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

/// The tripwire of `cfg` set on the root's children (`None`: not configured, or `MemTotal`
/// unreadable, which is logged).
pub(super) fn start_tripwire(cfg: &Config, dry_run: bool) -> Option<Tripwire> {
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

/// The incident writer thread (`None`: recording is off, or the folder is unusable, which is
/// logged).
pub(super) fn start_incidents(cfg: &Config) -> Option<IncidentWriter> {
    incident_config(cfg).and_then(|c| {
        let dir = c.dir.clone();
        IncidentWriter::start(c)
            .inspect_err(
                |e| tracing::warn!(dir = %dir.display(), error = %e, "incident records are off"),
            )
            .ok()
    })
}

/// The hooks that run before a kill: waiting for a heap profile in `diagnostics_dir`, and
/// `hooks.pre_kill` (a failure to start it is logged).
pub(super) fn add_prekill_hooks(cfg: &Config, runner: &mut Runner) {
    if let Some(dir) = &cfg.daemon.diagnostics_dir {
        runner.add_prekill_hook(Box::new(DumpWatch::new(dir.clone())));
    }
    if let Some(p) = cfg.hooks.pre_kill.clone() {
        match PreKillExec::start(p, cfg.hooks.pre_kill_timeout) {
            Ok(h) => runner.add_prekill_hook(Box::new(h)),
            Err(e) => tracing::warn!(error = %e, "the pre-kill hook is off"),
        }
    }
}

/// `hooks.post_kill`'s runner (a failure to start it is logged).
pub(super) fn start_post_kill(cfg: &Config) -> Option<PostKill> {
    let p = cfg.hooks.post_kill.clone()?;
    PostKill::start(p, cfg.hooks.post_kill_timeout)
        .inspect_err(|e| tracing::warn!(error = %e, "the post-kill hook is off"))
        .ok()
}
