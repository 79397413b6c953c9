//! The daemon's TOML configuration: schema, validation, and errors that
//! point at the line.
//!
//! A node daemon's config is edited by hand at 3 a.m.; a typo must fail
//! loudly at load time (`deny_unknown_fields` everywhere) and say *where*:
//! every error reads `FILE:LINE:COL: key `a.b`: message`. Parse errors get
//! their position from the `toml` crate's spans; semantic errors found by
//! [`Config::validate`] name the dotted key, which is then located in the
//! text. Validation collects every problem, not just the first.
//!
//! Sections: `[daemon]`, `[engine]`, `[signals]`, `[reserve]`,
//! `[watchdog]`, and `[handler]` (with `kind`, shared classification rules,
//! and one sub-table per handler kind). Every section but `[handler]` may
//! be left out. See `daemon/configs/*.toml` for annotated examples.
//!
//! Where the SDK or a policy has a config type, the section is read straight
//! into it (serde's remote derive: `[engine]` is an
//! [`oomkit::engine::EngineConfig`], `[handler.throttle]` a [`ThrottleConfig`],
//! `[[handler.rules]]` [`Rule`]s …), durations as `Duration` and sizes as
//! bytes; only what the daemon alone reads has a section type of its own.
//!
//! This file is the schema; [`units`] reads sizes, durations and signals,
//! `validate` checks each section, `position` turns keys into `FILE:LINE:COL`,
//! `load` reads a file and `build` makes the handler.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oomkit::engine::EngineConfig;
use serde::Deserialize;

use oomkit_handlers::classify::{QosPriorities, Rule};
use oomkit_handlers::heap_profile::HeapProfileConfig;
use oomkit_handlers::priority::{Granularity, PriorityKillConfig};
use oomkit_handlers::throttle::ThrottleConfig;

mod build;
mod load;
mod position;
pub mod units;
mod validate;

pub use load::Loaded;

pub use position::{ConfigError, ConfigErrors, locate};
pub(crate) use position::{key_at, line_col};
pub(crate) use units::ms;
pub use units::{
    ByteSize, Signal, bytes, duration, millis, parse_millis, parse_signal, parse_size, signal,
};

// ---------------------------------------------------------------------------
// The schema

/// Every key at its default, commented: what `oomkit config default` prints
/// (`handlers/configs/default.toml`; a test keeps it complete and equal to
/// the defaults below).
pub const DEFAULT_TOML: &str = include_str!("../../configs/default.toml");

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[daemon]`.
    #[serde(default)]
    pub daemon: DaemonSection,
    /// `[engine]`: the SDK's engine settings (`dry_run` is or-ed with the command line's
    /// `--dry-run`).
    #[serde(default, with = "EngineKeys")]
    pub engine: EngineConfig,
    /// `[signals]`.
    #[serde(default)]
    pub signals: SignalsSection,
    /// `[reserve]`.
    #[serde(default)]
    pub reserve: ReserveSection,
    /// `[watchdog]`.
    #[serde(default)]
    pub watchdog: WatchdogSection,
    /// `[hooks]`.
    #[serde(default)]
    pub hooks: HooksSection,
    /// `[handler]`.
    pub handler: HandlerSection,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
    /// For a systemd unit's stderr: `<N>` syslog priority prefixes, no timestamp.
    Journald,
}

/// Which xattrs to believe (see [`XattrTrust`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrustSetting {
    /// `trusted.oomkit.*` only.
    #[default]
    TrustedOnly,
    /// Also `user.oomkit.*` on directories owned by root or the managed root's owner.
    TrustedAndOwnedUser,
}

/// `[daemon]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSection {
    /// Filesystem path of the cgroup to manage.
    pub root: PathBuf,
    /// How deep below the root to follow cgroups (1–16).
    pub depth: u32,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// A `tracing` filter (`info`, `oomkit=debug,info` …); `RUST_LOG` overrides it.
    pub log_level: String,
    /// Where incident records go (default `/var/lib/oomkit/incidents`; `""`: not recorded).
    pub incident_dir: PathBuf,
    /// Incident records kept; the oldest are deleted beyond this.
    pub incident_max_count: usize,
    /// Upper bound on one incident record's size.
    pub incident_max_bytes: ByteSize,
    /// Where victims write diagnostics (heap profiles).
    pub diagnostics_dir: Option<PathBuf>,
    /// Which cgroup xattrs to believe.
    pub xattr_trust: TrustSetting,
    /// `HOST:PORT` to serve Prometheus `/metrics` and `/healthz` on (`None`: off).
    pub metrics_listen: Option<String>,
    /// Most `memory.current` fds kept open and read ahead (`None`: one per tracked cgroup;
    /// see `oomkit::engine::RunnerConfig::usage_fds` for the trade-off).
    pub usage_fds: Option<usize>,
}

impl DaemonSection {
    /// The incident folder, unless recording is off (`incident_dir = ""`).
    pub fn incidents(&self) -> Option<&Path> {
        (!self.incident_dir.as_os_str().is_empty()).then_some(self.incident_dir.as_path())
    }
}

impl Default for DaemonSection {
    fn default() -> Self {
        DaemonSection {
            root: PathBuf::from("/sys/fs/cgroup"),
            depth: 8,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            incident_dir: PathBuf::from("/var/lib/oomkit/incidents"),
            incident_max_count: 100,
            incident_max_bytes: ByteSize(256 << 10),
            diagnostics_dir: None,
            xattr_trust: TrustSetting::TrustedOnly,
            metrics_listen: None,
            usage_fds: None,
        }
    }
}

/// `[engine]`: read straight into the SDK's [`EngineConfig`] (serde's remote derive); the file's
/// keys carry their unit (`*_ms`), the fields are `Duration`s, and a key left out keeps
/// `EngineConfig::default()`.
#[derive(Deserialize)]
#[serde(
    remote = "EngineConfig",
    deny_unknown_fields,
    default = "EngineConfig::default"
)]
struct EngineKeys {
    dry_run: bool,
    progress_aware: bool,
    #[serde(rename = "sample_interval_ms", deserialize_with = "duration")]
    sample_interval: Duration,
    full_stall_threshold: f64,
    #[serde(rename = "stall_sustain_ms", deserialize_with = "duration")]
    stall_sustain: Duration,
    #[serde(rename = "assess_limit_ms", deserialize_with = "duration")]
    assess_limit: Duration,
    recheck: bool,
    resolved_usage_ratio: f64,
    #[serde(rename = "kill_deadline_ms", deserialize_with = "duration")]
    kill_deadline: Duration,
    memory_back_ratio: f64,
    #[serde(rename = "acting_tick_ms", deserialize_with = "duration")]
    acting_tick: Duration,
    #[serde(rename = "cooldown_ms", deserialize_with = "duration")]
    cooldown: Duration,
    max_escalations: u32,
    #[serde(rename = "quiet_tick_ms", deserialize_with = "duration")]
    quiet_tick: Duration,
    max_cgroups: usize,
    max_processes: usize,
}

/// `[signals]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalsSection {
    /// Watch `memory.events.local` of every managed cgroup.
    pub memory_events: bool,
    /// A PSI trigger (`[signals.psi]`); absent: none.
    pub psi: Option<PsiSection>,
    /// The machine-wide early warning (`[signals.machine]`, see [`crate::machine_config`]).
    pub machine: crate::machine_config::MachineSection,
    /// `memory.high` the daemon writes on the managed root's top-level children (`"90%"` of
    /// `MemTotal` or a size); absent: none. See [`crate::tripwire`].
    pub tripwire: Option<crate::machine_config::LevelSetting>,
}

impl Default for SignalsSection {
    fn default() -> Self {
        SignalsSection {
            memory_events: true,
            psi: None,
            machine: Default::default(),
            tripwire: None,
        }
    }
}

/// Which PSI line a trigger watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PsiKind {
    /// Some tasks stalled.
    #[default]
    Some,
    /// All tasks stalled.
    Full,
}

/// Where a PSI trigger is armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PsiScope {
    /// `/proc/pressure/memory`.
    System,
    /// The managed root's `memory.pressure`.
    #[default]
    Cgroup,
}

/// `[signals.psi]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PsiSection {
    /// `some` or `full`.
    pub kind: PsiKind,
    /// Stall time within the window that fires the trigger (`stall_ms`).
    #[serde(rename = "stall_ms", deserialize_with = "duration")]
    pub stall: Duration,
    /// The window (`window_ms`; 500 ms–10 s; unprivileged on 6.5+: a multiple of 2 s).
    #[serde(rename = "window_ms", deserialize_with = "duration")]
    pub window: Duration,
    /// `system` or `cgroup`.
    pub scope: PsiScope,
}

impl Default for PsiSection {
    fn default() -> Self {
        PsiSection {
            kind: PsiKind::Some,
            stall: Duration::from_millis(150),
            window: Duration::from_millis(1000),
            scope: PsiScope::Cgroup,
        }
    }
}

/// `mlockall` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MlockSetting {
    /// No locking.
    Off,
    /// `MCL_CURRENT | MCL_FUTURE`: the whole address space.
    All,
    /// `MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT`.
    OnFault,
    /// What the warm-up decision touched (`mlock` of the resident pages),
    /// then `MCL_FUTURE`.
    #[default]
    Resident,
}

/// `[reserve]`: what keeps the daemon alive when memory is gone.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReserveSection {
    /// Enter reserve mode at all.
    pub enabled: bool,
    /// `off`, `all`, `on-fault` or `resident`.
    pub mlock: MlockSetting,
    /// `memory.min` of a dedicated cgroup for the daemon (needs `cgroup_parent`).
    pub memory_min: Option<ByteSize>,
    /// Filesystem path of the parent of that cgroup (with `+memory` in its subtree_control).
    pub cgroup_parent: Option<PathBuf>,
    /// Its name.
    pub cgroup_name: String,
    /// `oom_score_adj` (−1000…1000).
    pub oom_score_adj: Option<i16>,
    /// `PR_SET_IO_FLUSHER`.
    pub io_flusher: bool,
    /// Nice value (−20…19).
    pub nice: Option<i32>,
    /// `SCHED_FIFO` priority (1…99); absent: normal scheduling.
    pub fifo: Option<i32>,
}

impl Default for ReserveSection {
    fn default() -> Self {
        ReserveSection {
            enabled: true,
            mlock: MlockSetting::Resident,
            memory_min: None,
            cgroup_parent: None,
            cgroup_name: "oomkit".into(),
            oom_score_adj: Some(-1000),
            io_flusher: true,
            nice: Some(-10),
            fifo: None,
        }
    }
}

/// `[watchdog]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchdogSection {
    /// Run the watchdog thread.
    pub enabled: bool,
    /// How long the loop may stay busy before the watchdog acts (`timeout_ms`).
    #[serde(rename = "timeout_ms", deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for WatchdogSection {
    fn default() -> Self {
        WatchdogSection {
            enabled: true,
            timeout: Duration::from_millis(2000),
        }
    }
}

/// `[hooks]`: executables run when oomkit kills (see [`crate::hooks`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksSection {
    /// Run before each kill, which waits for it at most `pre_kill_timeout`:
    /// an absolute path to an executable owned by root, not group/world-writable.
    pub pre_kill: Option<PathBuf>,
    /// Its deadline, after which it is SIGKILLed and the kill goes ahead (`pre_kill_timeout_ms`).
    #[serde(rename = "pre_kill_timeout_ms", deserialize_with = "duration")]
    pub pre_kill_timeout: Duration,
    /// Run after each episode that killed (or in a dry run would have): an
    /// absolute path to an executable owned by root, not group/world-writable.
    pub post_kill: Option<PathBuf>,
    /// Its deadline, after which it is SIGKILLed (`post_kill_timeout_ms`).
    #[serde(rename = "post_kill_timeout_ms", deserialize_with = "duration")]
    pub post_kill_timeout: Duration,
}

impl Default for HooksSection {
    fn default() -> Self {
        HooksSection {
            pre_kill: None,
            pre_kill_timeout: Duration::from_millis(1000),
            post_kill: None,
            post_kill_timeout: Duration::from_millis(10_000),
        }
    }
}

/// Which handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HandlerKind {
    /// [`PriorityKill`].
    PriorityKill,
    /// [`Throttle`].
    Throttle,
    /// [`HeapProfile`] (victim choice from `[handler.priority_kill]`).
    HeapProfile,
}

impl HandlerKind {
    /// The name used in the file.
    pub fn name(self) -> &'static str {
        match self {
            HandlerKind::PriorityKill => "priority-kill",
            HandlerKind::Throttle => "throttle",
            HandlerKind::HeapProfile => "heap-profile",
        }
    }
}

/// `[handler]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerSection {
    /// `priority-kill`, `throttle` or `heap-profile`.
    pub kind: HandlerKind,
    /// Priority of the managed root when nothing else applies (children inherit).
    #[serde(default)]
    pub default_priority: i32,
    /// `[handler.qos]`: Kubernetes QoS tiers.
    #[serde(default)]
    pub qos: QosSection,
    /// `[[handler.rules]]`: first match wins for the priority.
    #[serde(default, deserialize_with = "rules")]
    pub rules: Vec<Rule>,
    /// `[handler.priority_kill]` (also victim choice for heap-profile and throttle).
    #[serde(default, deserialize_with = "some_priority_kill")]
    pub priority_kill: Option<PriorityKillConfig>,
    /// `[handler.throttle]`.
    #[serde(default, deserialize_with = "some_throttle")]
    pub throttle: Option<ThrottleConfig>,
    /// `[handler.heap_profile]`.
    #[serde(default, deserialize_with = "some_heap_profile")]
    pub heap_profile: Option<HeapProfileConfig>,
}

/// `[handler.qos]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QosSection {
    /// Read QoS classes off kubepods paths.
    pub enabled: bool,
    /// Priority of BestEffort pods.
    pub best_effort: i32,
    /// Priority of Burstable pods.
    pub burstable: i32,
    /// Priority of Guaranteed pods.
    pub guaranteed: i32,
    /// The kubelet's pod roots (hierarchy paths): QoS is read only below
    /// these, never from a `kubepods` name a tenant made elsewhere.
    pub roots: Vec<PathBuf>,
}

impl Default for QosSection {
    fn default() -> Self {
        let q = QosPriorities::default();
        QosSection {
            enabled: true,
            best_effort: q.best_effort,
            burstable: q.burstable,
            guaranteed: q.guaranteed,
            roots: oomkit_handlers::classify::DEFAULT_KUBE_ROOTS
                .iter()
                .map(PathBuf::from)
                .collect(),
        }
    }
}

/// `[[handler.rules]]`, read into the classifier's own [`Rule`].
#[derive(Deserialize)]
#[serde(remote = "Rule", deny_unknown_fields)]
struct RuleKeys {
    /// Glob on the cgroup hierarchy path (`*` within a component, `**` across).
    glob: String,
    /// Priority tier (higher is more important).
    #[serde(default)]
    priority: Option<i32>,
    /// Never kill, throttle or freeze.
    #[serde(default)]
    protected: bool,
}

/// The `[[handler.rules]]` array.
fn rules<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Rule>, D::Error> {
    #[derive(Deserialize)]
    #[serde(transparent)]
    struct Item(#[serde(with = "RuleKeys")] Rule);
    Vec::<Item>::deserialize(d).map(|v| v.into_iter().map(|i| i.0).collect())
}

/// `[handler.priority_kill]`, read into the policy's own [`PriorityKillConfig`]; its
/// `max_cgroups` is not a key but `[engine] max_cgroups` (see `Config::priority_kill_config`).
#[derive(Deserialize)]
#[serde(
    remote = "PriorityKillConfig",
    deny_unknown_fields,
    default = "PriorityKillConfig::default"
)]
struct PriorityKillKeys {
    /// `process`, `cgroup` or `tree`.
    granularity: Granularity,
    /// Pass over smaller candidates while bigger ones exist.
    #[serde(deserialize_with = "bytes")]
    min_victim_bytes: u64,
    /// Time for the victim to die and memory to come back (0: `[engine] kill_deadline_ms`).
    #[serde(rename = "kill_deadline_ms", deserialize_with = "duration")]
    kill_deadline: Duration,
    #[serde(skip)]
    max_cgroups: usize,
}

/// `[handler.throttle]`, read into [`ThrottleConfig`]; its victim choice is
/// `[handler.priority_kill]`'s.
#[derive(Deserialize)]
#[serde(
    remote = "ThrottleConfig",
    deny_unknown_fields,
    default = "ThrottleConfig::default"
)]
struct ThrottleKeys {
    /// Each step sets `memory.high` to this fraction of usage (0–1, exclusive).
    step_fraction: f64,
    /// Never below this.
    #[serde(rename = "floor", deserialize_with = "bytes")]
    floor_bytes: u64,
    /// Minimum time between two steps on one cgroup.
    #[serde(rename = "step_interval_ms", deserialize_with = "duration")]
    step_interval: Duration,
    /// Freeze the cgroup at the floor.
    freeze_at_floor: bool,
    /// Kill if still pressing its throttle this long after the first step.
    #[serde(rename = "kill_after_ms", deserialize_with = "duration")]
    kill_after: Duration,
    /// Contained (and released a step) below this fraction of its throttle.
    release_below: f64,
    /// Thaw when the root's `some` avg10 is below this, percent.
    thaw_below_avg10: f64,
    /// What the kill takes: `process`, `cgroup` or `tree`.
    kill: Granularity,
    /// Cgroups throttled at once.
    max_throttled: usize,
    #[serde(skip)]
    choice: PriorityKillConfig,
}

/// `[handler.heap_profile]`, read into [`HeapProfileConfig`].
#[derive(Deserialize)]
#[serde(
    remote = "HeapProfileConfig",
    deny_unknown_fields,
    default = "HeapProfileConfig::default"
)]
struct HeapProfileKeys {
    /// The signal asking for a profile (a name or a number).
    #[serde(deserialize_with = "signal")]
    signal: i32,
    /// Globs on the victim's cgroup path.
    cgroups: Vec<String>,
    /// Victim `comm` values.
    comms: Vec<String>,
    /// Extra `memory.max` while it writes the profile.
    #[serde(rename = "headroom", deserialize_with = "bytes")]
    headroom_bytes: u64,
    /// Most headroom outstanding at once.
    #[serde(rename = "budget", deserialize_with = "bytes")]
    budget_bytes: u64,
    /// How long the raised limit stays.
    #[serde(rename = "raise_for_ms", deserialize_with = "duration")]
    raise_for: Duration,
    /// How long to wait for the profile.
    #[serde(rename = "dump_deadline_ms", deserialize_with = "duration")]
    dump_deadline: Duration,
}

/// A present `[handler.priority_kill]` table (an absent one is `None` through
/// `#[serde(default)]`).
fn some_priority_kill<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<PriorityKillConfig>, D::Error> {
    PriorityKillKeys::deserialize(d).map(Some)
}

/// A present `[handler.throttle]` table.
fn some_throttle<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<ThrottleConfig>, D::Error> {
    ThrottleKeys::deserialize(d).map(Some)
}

/// A present `[handler.heap_profile]` table.
fn some_heap_profile<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<HeapProfileConfig>, D::Error> {
    HeapProfileKeys::deserialize(d).map(Some)
}
