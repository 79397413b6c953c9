//! [`Runner`]: the engine on a real kernel, driven by one epoll.
//!
//! A library does nothing process-wide unless asked: [`RunnerConfig::new`]
//! gives a runner that a container runtime can embed — no `mlockall`, no
//! `oom_score_adj`, no nice or scheduling change, no rlimit change, no
//! thread. A node daemon asks for all of that with [`RunnerConfig::daemon`]
//! (or sets [`RunnerConfig::reserve`], [`RunnerConfig::raise_nofile`] and
//! [`RunnerConfig::watchdog`] one by one).
//!
//! On start it enters reserve mode if asked (before allocating, so
//! `mlockall(FUTURE)` covers everything that follows), opens the managed
//! subtree, watches
//! `memory.events.local` of every cgroup (so a `high` crossing is
//! reported at the cgroup whose limit was crossed, not at every ancestor;
//! one inotify watch each, no fd, see [`LocalEvents`]),
//! an optional PSI trigger, and a recursive directory watch that follows
//! containers as they come and go. Then it waits: with nothing happening
//! there is no timeout and no wakeup at all.
//!
//! The runner exposes its epoll fd ([`Runner::as_fd`]) and a non-blocking
//! [`Runner::run_once`], so a container runtime can drive it from its own
//! reactor; callers' fds (a signal pipe, an eventfd) join the same epoll
//! through [`Runner::add_fd`]. The library installs no signal handlers.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cgroup::{Cgroup, CgroupFs};
use crate::error::{Error, Result};
use crate::events::watch_at::OwnCwd;
use crate::events::{DirChange, DirWatchOptions, Interest, Source, Token, Watcher};
use crate::reserve::{self, MlockMode, ReserveConfig, ReserveReport};

use super::host::Observe;
use super::kernel::KernelHost;
use super::local_events::LocalEvents;
use super::prekill::PrekillHook;
use super::runner_config::MAX_DEPTH;
pub use super::runner_config::{PsiConfig, RunnerConfig};
use super::watchdog::{Watchdog, WatchdogConfig};
use super::{CgroupId, Engine, EngineConfig, EngineStats, Episode, Handler, Trigger, Victim};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binding {
    MemoryEvents(CgroupId),
    /// The inotify fd of every cgroup's `memory.events.local`.
    LocalEvents,
    Psi(Option<CgroupId>),
    Machine,
    Dir,
    Victim,
    User,
}

/// What one [`Runner::run_once`] saw.
#[derive(Debug, Default)]
pub struct Turn {
    /// Caller fds ([`Runner::add_fd`]) that are ready.
    pub ready: Vec<Token>,
    /// Episodes that ended during this turn.
    pub finished: Vec<Episode>,
}

/// Tokens of caller fds (and victim pidfds) start here, far above the
/// watcher's own.
const USER_TOKEN_BASE: u64 = 1 << 62;
/// Event sources besides the per-cgroup ones (directory watch, PSI,
/// caller fds, the victim's pidfd), for sizing tables up front.
const EXTRA_SOURCES: usize = 8;
/// Directory events the watch may queue before it overflows (and rescans).
const DIR_QUEUE: usize = 4096;
/// Room for directory changes and triggers seen in one turn.
const TURN_ROOM: usize = 64;
/// Directory changes applied per turn: a burst of thousands (container
/// churn) is spread over turns that do not wait, so no turn is long and
/// events keep being handled in between.
pub(crate) const DIR_CHANGES_PER_TURN: usize = 512;

/// Refuses to start when the daemon's own cgroup is unknown: the loop
/// keeps itself (and its ancestors) out of every kill by that path, and
/// running without it would silently drop that protection.
pub(crate) fn check_own_cgroup(host: &KernelHost) -> Result<()> {
    match host.own_cgroup() {
        Some(_) => Ok(()),
        None => Err(Error::InvalidArgument {
            what: "own cgroup",
            reason: "the cgroup-v2 path of this process (/proc/self/cgroup) does not resolve under the cgroup mount, so the loop could not keep itself out of its kills".to_owned(),
        }),
    }
}

/// The loop on a real kernel. See the module docs.
pub struct Runner {
    engine: Engine<KernelHost>,
    watcher: Watcher,
    bindings: HashMap<Token, Binding>,
    events_token: HashMap<CgroupId, Token>,
    /// `memory.events.local` by inotify (`None` with memory events off).
    local: Option<LocalEvents>,
    /// This thread's own working directory, for adding watches by name
    /// (`RunnerConfig::own_cwd`; `None`: through `/proc/self/fd`).
    own_cwd: Option<OwnCwd>,
    /// A cgroup got an fd because its inotify watch failed (logged once).
    local_fallback: bool,
    /// Within a batch of directory changes (`Some`): the siblings whose
    /// `memory.events.local` baselines may be inferred (`baseline`).
    siblings: Option<Option<baseline::Siblings>>,
    /// At start: each directory is listed when it is attached (see
    /// `walk_at_start`), not by a walk of the whole tree first.
    list_on_attach: bool,
    dir_token: Option<Token>,
    machine_token: Option<Token>,
    victim: Option<(Token, Victim)>,
    watchdog: Option<Watchdog>,
    #[cfg(feature = "serde")]
    incidents: Option<super::incident::IncidentSink>,
    reserve: Option<ReserveReport>,
    root_hier: PathBuf,
    /// How deep below the root cgroups are followed.
    depth: u32,
    /// Cgroups left untracked because the tree is at its cap.
    over_cap: HashSet<PathBuf>,
    /// How many cgroups the open-file limit lets the tree hold while
    /// leaving fds for decisions and kills (`kill::reserve`); the cap is
    /// this or `max_cgroups`, whichever is lower.
    fd_cap: usize,
    /// When untracked cgroups are next compared with tracked ones (`over_cap`).
    next_rebalance: Instant,
    /// Where the next comparison starts among the untracked.
    rebalance_cursor: usize,
    memory_events: bool,
    next_user: u64,
    dir_changes: Vec<(DirChange, PathBuf)>,
    triggers: Vec<(Trigger, Instant)>,
    batch: Vec<crate::events::Event>,
    /// Tree size at the last warm-up decision (`None`: warm-up off).
    warmed: Option<usize>,
    /// The deferred `mlock` of resident pages, taken after each warm-up.
    relock: Option<ReserveConfig>,
    /// Major page faults during the current episode's turns (from the
    /// event to the episode's end, waits excluded), and of those, the ones
    /// up to the turn that sent the kill (or ended the episode without one).
    episode_faults: u64,
    faults_to_kill: u64,
    kill_sent: bool,
    /// Where [`Runner::new`]'s time went (logged once, `start-up phases`).
    phases: StartPhases,
}

/// How long each phase of [`Runner::new`] took, for the `start-up phases`
/// log line: what a start over thousands of cgroups spends where.
#[derive(Debug, Default, Clone, Copy)]
struct StartPhases {
    /// Engine, host and tables set up, the root attached.
    open: Duration,
    /// The directory watch created (watches every directory within `depth`
    /// whose children it follows).
    dir_watch: Duration,
    /// The listing of the root's children (the levels below are listed
    /// as their parents are attached, within `attach`).
    walk: Duration,
    /// Every cgroup attached and its `memory.events.local` watched (and
    /// each directory with subdirectories listed).
    attach: Duration,
    /// The warm-up decision.
    warm_up: Duration,
    /// The deferred `mlock` after it.
    lock: Duration,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("root", &self.root_hier)
            .field("cgroups", &self.engine.tree().len())
            .field("stats", &self.engine.stats())
            .finish_non_exhaustive()
    }
}

/// Raises the soft open-file limit to the hard limit: the runner keeps a
/// `memory.current` fd per cgroup within what the limit leaves (and an fd
/// for `memory.events.local` where its inotify watch fails), and the usual
/// soft limit of 1024 would leave most cgroups to the slower path.
fn raise_nofile_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current == lim.maximum {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: lim.maximum,
        maximum: lim.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::info!(from = ?lim.current, to = ?lim.maximum, "raised the open-file limit")
        }
        Err(e) => {
            tracing::warn!(error = %e, limit = ?lim.current, "could not raise the open-file limit")
        }
    }
}

/// This thread's own working directory (`RunnerConfig::own_cwd`); `None`,
/// logged, if it cannot be had: watches then go through `/proc/self/fd`.
fn own_cwd() -> Option<OwnCwd> {
    OwnCwd::new()
        .inspect_err(|e| {
            tracing::info!(error = %e, "no working directory of its own (unshare CLONE_FS); watches go through /proc/self/fd")
        })
        .ok()
}

fn find_fs(root: &Path) -> Result<CgroupFs> {
    let fs = CgroupFs::discover()?;
    fs.hierarchy_path(root)?;
    Ok(fs)
}

impl Runner {
    /// Opens the managed tree and its event sources, doing process-wide
    /// things (reserve mode, the open-file limit, the watchdog thread) only
    /// where `cfg` asks for them: with [`RunnerConfig::new`], none.
    pub fn new(cfg: RunnerConfig, handler: Box<dyn Handler>) -> Result<Self> {
        let fs = find_fs(&cfg.root)?;
        Self::with_fs(cfg, handler, fs)
    }

    /// Like [`Runner::new`] on an explicit cgroup filesystem.
    pub fn with_fs(mut cfg: RunnerConfig, handler: Box<dyn Handler>, fs: CgroupFs) -> Result<Self> {
        cfg.engine.validate()?;
        if !(1..=MAX_DEPTH).contains(&cfg.depth) {
            return Err(Error::InvalidArgument {
                what: "depth",
                reason: format!("{} is not between 1 and {MAX_DEPTH}", cfg.depth),
            });
        }
        // Reserve first: mlockall(FUTURE) then covers every allocation below
        // — except with `MlockMode::Resident` and a warm-up, where the lock
        // is taken after the warm-up decision has touched the hot path.
        let mut deferred = None;
        let reserve = cfg.reserve.take().map(|mut r| {
            if cfg.warm_up && r.mlock == MlockMode::Resident {
                r.defer_mlock = true;
                deferred = Some(ReserveConfig {
                    mlock: r.mlock,
                    raise_memlock_limit: r.raise_memlock_limit,
                    stack_prefault: 0,
                    oom_score_adj: None,
                    nice: None,
                    sched_fifo: None,
                    io_flusher: false,
                    cgroup: None,
                    defer_mlock: false,
                });
            }
            let rep = reserve::enter(&r);
            tracing::info!(report = %rep, "reserve mode");
            rep
        });
        let root_hier = fs.hierarchy_path(&cfg.root)?;
        if cfg.raise_nofile {
            raise_nofile_limit();
        }
        let t = Instant::now();
        let mut r = Self::open(&mut cfg, handler, fs, root_hier)?;
        r.phases.open = t.elapsed();
        r.reserve = reserve;
        let followed = r.follow_tree(&cfg);
        if let Some(own) = &r.own_cwd {
            own.restore();
        }
        followed?;
        r.relock = deferred;
        r.warm_up_if_grown();
        r.log_phases();
        // The watchdog starts once the tree is known: attaching 10,000
        // cgroups is not a stall, and its target table is filled here.
        if let Some(w) = cfg.watchdog {
            r.start_watchdog(w)?;
        }
        Ok(r)
    }

    /// The engine on a [`KernelHost`], the watcher and the tables, sized up
    /// front; no event source yet.
    fn open(
        cfg: &mut RunnerConfig,
        handler: Box<dyn Handler>,
        fs: CgroupFs,
        root_hier: PathBuf,
    ) -> Result<Self> {
        // Tables start small and grow with the tree (`EngineConfig::max_cgroups`).
        let n = cfg.engine.initial_cgroups();
        let mut host = KernelHost::new(
            fs,
            cfg.xattr_trust,
            cfg.engine.max_cgroups,
            cfg.engine.max_processes,
        );
        if let Some(n) = cfg.usage_fds {
            host.limit_usage_fds(n);
        }
        check_own_cgroup(&host)?;
        let engine = Engine::new(cfg.engine.clone(), host, handler, &root_hier)?;
        #[cfg(feature = "serde")]
        let incidents = match cfg.incidents.take() {
            Some(c) => Some(super::incident::IncidentSink::new(c)?),
            None => None,
        };
        #[cfg(not(feature = "serde"))]
        if cfg.incidents.is_some() {
            return Err(Error::InvalidArgument {
                what: "incidents",
                reason: "incident records need oomkit's `serde` feature".to_owned(),
            });
        }
        Ok(Runner {
            engine,
            watcher: Watcher::with_capacity(n + EXTRA_SOURCES)?,
            bindings: HashMap::with_capacity(n + EXTRA_SOURCES),
            events_token: HashMap::new(),
            local: if cfg.memory_events {
                Some(LocalEvents::new(n)?)
            } else {
                None
            },
            own_cwd: cfg.own_cwd.then(own_cwd).flatten(),
            local_fallback: false,
            siblings: None,
            list_on_attach: false,
            dir_token: None,
            machine_token: None,
            victim: None,
            watchdog: None,
            #[cfg(feature = "serde")]
            incidents,
            reserve: None,
            root_hier,
            depth: cfg.depth,
            over_cap: HashSet::new(),
            // No fd is needed per cgroup: the directory is opened on demand,
            // memory.current kept within the host's budget, memory.events.local
            // an inotify watch. One each bounds the fds of cgroups whose
            // watch fails (an fd of their own).
            fd_cap: crate::kill::tracked_cap_now(usize::MAX, 1),
            next_rebalance: Instant::now(),
            rebalance_cursor: 0,
            memory_events: cfg.memory_events,
            next_user: USER_TOKEN_BASE,
            dir_changes: Vec::with_capacity(TURN_ROOM),
            triggers: Vec::with_capacity(TURN_ROOM),
            // As many events as the watcher returns at once (2 per source).
            batch: Vec::with_capacity(2 * (n + EXTRA_SOURCES)),
            warmed: cfg.warm_up.then_some(0),
            relock: None,
            episode_faults: 0,
            faults_to_kill: 0,
            kill_sent: false,
            phases: StartPhases::default(),
        })
    }

    /// Registers the event sources: the root's `memory.events.local`, the
    /// directory watch that follows containers, the PSI trigger; then adds
    /// the cgroups that already exist.
    fn follow_tree(&mut self, cfg: &RunnerConfig) -> Result<()> {
        let root_cg = self.root_cgroup()?;
        crate::probe::Features::probe(&root_cg).log();
        if let Some(local) = &self.local {
            let fd = local
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| Error::sys("fcntl(F_DUPFD_CLOEXEC)", e))?;
            let tok = Token(self.next_user);
            self.next_user += 1;
            self.watcher.add_fd(fd, Interest::READABLE, tok)?;
            self.bindings.insert(tok, Binding::LocalEvents);
        }
        if let Some(root) = self.engine.root() {
            self.watch_cgroup(root, &root_cg)?;
        }
        let t = Instant::now();
        // First the watch (so nothing created from now on is missed), then
        // a walk of what exists (duplicates are ignored).
        // Only the root's directory: the walk below watches each directory
        // within depth as it attaches it, through the fd it opened anyway.
        let tok = self.watcher.add_dir_watch_unscanned(
            &root_cg,
            DirWatchOptions {
                depth: cfg.depth,
                report_existing: false,
                queue: DIR_QUEUE,
                max_dirs: cfg.engine.max_cgroups,
            },
        )?;
        self.bindings.insert(tok, Binding::Dir);
        self.dir_token = Some(tok);
        self.phases.dir_watch = t.elapsed();
        if let Some(psi) = cfg.psi {
            let tok = if psi.system {
                self.watcher
                    .add(Source::Psi(crate::events::PsiTrigger::system_memory(
                        psi.threshold,
                    )?))?
            } else {
                self.watcher.add_psi(&root_cg, psi.threshold)?
            };
            let scope = if psi.system { None } else { self.engine.root() };
            self.bindings.insert(tok, Binding::Psi(scope));
        }
        if let Some(m) = &cfg.machine {
            let tok = self.watcher.add_machine(m.clone())?;
            self.bindings.insert(tok, Binding::Machine);
            self.machine_token = Some(tok);
        }
        let t = Instant::now();
        self.walk_at_start();
        self.phases.walk = t.elapsed();
        let t = Instant::now();
        // At start there are no events to keep handling in between: attach
        // the whole tree now, so `new` returns with every cgroup watched.
        while !self.dir_changes.is_empty() {
            self.apply_dir_changes();
        }
        self.list_on_attach = false;
        self.phases.attach = t.elapsed();
        Ok(())
    }

    fn log_phases(&self) {
        let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
        let p = &self.phases;
        let b = self.local.as_ref().map(LocalEvents::baselines);
        tracing::info!(
            cgroups = self.engine.tree().len(),
            baselines_read = b.map(|b| b.read),
            baselines_inferred = b.map(|b| b.inferred),
            open_ms = ms(p.open),
            dir_watch_ms = ms(p.dir_watch),
            walk_ms = ms(p.walk),
            attach_ms = ms(p.attach),
            warm_up_ms = ms(p.warm_up),
            lock_ms = ms(p.lock),
            "start-up phases"
        );
    }

    /// Starts the watchdog thread (an explicit step: it is a thread, and
    /// it kills on its own when the loop stalls for `cfg.timeout`), and
    /// hands it every managed cgroup. Replaces a running watchdog.
    pub fn start_watchdog(&mut self, cfg: WatchdogConfig) -> Result<()> {
        let own = self.engine.host().own_cgroup().map(Path::to_path_buf);
        let wd = Watchdog::spawn(cfg, own, None)?;
        self.engine.host_mut().set_watchdog(Some(wd.shared_arc()));
        self.watchdog = Some(wd);
        self.republish_targets();
        Ok(())
    }

    fn root_cgroup(&self) -> Result<Cgroup> {
        self.engine.host().fs().open_hierarchy(&self.root_hier)
    }

    /// Adds a hook the loop runs before kills (see [`PrekillHook`]).
    pub fn add_prekill_hook(&mut self, hook: Box<dyn PrekillHook>) {
        self.engine.add_prekill_hook(hook);
    }

    /// Adds a caller's fd (signal pipe, eventfd …) to the epoll; its token is
    /// reported in [`Turn::ready`] when it is readable.
    pub fn add_fd(&mut self, fd: impl Into<OwnedFd>) -> Result<Token> {
        let tok = Token(self.next_user);
        self.next_user += 1;
        self.watcher.add_fd(fd, Interest::READABLE, tok)?;
        self.bindings.insert(tok, Binding::User);
        Ok(tok)
    }

    /// Waits for events (up to `timeout`, `None`: until something happens
    /// or a tick is due) and handles them.
    pub fn run_once(&mut self, timeout: Option<Duration>) -> Result<Turn> {
        let mut turn = Turn::default();
        self.turn(timeout, &mut turn)?;
        Ok(turn)
    }

    /// Replaces the handler and the loop tuning (configuration reload).
    /// Cgroups are classified again by the new handler.
    pub fn reload(&mut self, handler: Box<dyn Handler>, engine: EngineConfig) -> Result<()> {
        engine.validate()?;
        self.engine.replace_handler(handler, engine);
        self.republish_targets();
        Ok(())
    }

    /// Lets the handler undo its throttles and restores raised limits; call
    /// before stopping.
    pub fn shutdown(&mut self) {
        self.engine.shutdown();
    }

    /// What reserve mode got.
    pub fn reserve_report(&self) -> Option<&ReserveReport> {
        self.reserve.as_ref()
    }

    /// Lifetime counters.
    pub fn stats(&self) -> EngineStats {
        self.engine.stats()
    }

    /// Times the watchdog acted.
    pub fn watchdog_fired(&self) -> u64 {
        self.watchdog.as_ref().map_or(0, Watchdog::fired)
    }

    /// Cgroups left untracked because the tree is at `max_cgroups`.
    pub fn untracked_over_cap(&self) -> usize {
        self.over_cap.len()
    }

    /// Stalls of the loop the watchdog did not act on because no memory
    /// pressure was present.
    pub fn watchdog_stalls_without_pressure(&self) -> u64 {
        self.watchdog
            .as_ref()
            .map_or(0, Watchdog::stalls_without_pressure)
    }

    /// The engine.
    pub fn engine(&self) -> &Engine<KernelHost> {
        &self.engine
    }
}

impl AsFd for Runner {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.watcher.as_fd()
    }
}

#[path = "runner_tree.rs"]
mod tree_follow;

#[path = "runner_baseline.rs"]
mod baseline;

#[path = "over_cap.rs"]
mod over_cap;

#[path = "runner_turn.rs"]
mod turn_loop;

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;
