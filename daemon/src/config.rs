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
//! Sections: `[daemon]`, `[engine]` (maps onto
//! [`oomkit::engine::EngineConfig`]), `[signals]`, `[reserve]`,
//! `[watchdog]`, and `[handler]` (with `kind`, shared classification rules,
//! and one sub-table per handler kind). Every section but `[handler]` may
//! be left out. See `handlers/configs/*.toml` for annotated examples.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oomkit::engine::{EngineConfig, XattrTrust};
use serde::Deserialize;

use oomkit_handlers::classify::{Classifier, QosPriorities, Rule};
use oomkit_handlers::heap_profile::{HeapProfile, HeapProfileConfig};
use oomkit_handlers::priority::{Granularity, PriorityKill, PriorityKillConfig};
use oomkit_handlers::throttle::{Throttle, ThrottleConfig};

// ---------------------------------------------------------------------------
// Values with units

/// A size in bytes: an integer, or a string with a unit as Kubernetes and
/// people write them: `"64Mi"`, `"512MiB"`, `"2Gi"` (powers of 1024),
/// `"100M"`, `"1G"`, `"1.5GB"` (powers of 1000), parsed by the `parse-size`
/// crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"64Mi"`, `"512MiB"`, `"1G"`, `"4096"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::parse_size(s.trim()).map_err(|e| {
        format!("`{s}` is not a size ({e}; e.g. 4096, \"64Ki\", \"512Mi\", \"2GiB\", \"1G\")")
    })
}

/// A duration in milliseconds: an integer (ms) or a string with units
/// (`"5s"`, `"250ms"`, `"1m 30s"`, parsed by `humantime`). Used with
/// `#[serde(deserialize_with)]` on the `*_ms` keys.
pub fn millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::S(s) => parse_millis(&s).map_err(serde::de::Error::custom),
    }
}

/// Parses `"5s"`, `"250ms"`, `"2m"` into milliseconds.
pub fn parse_millis(s: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}; e.g. \"250ms\", \"5s\", \"2m\")"))?;
    u64::try_from(d.as_millis()).map_err(|_| format!("`{s}` is too long"))
}

/// A signal: a name (`"SIGUSR2"`, `"USR2"`) or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(pub i32);

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i32),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Signal(n)),
            Raw::S(s) => parse_signal(&s).map(Signal).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown signal `{s}` (use SIGUSR1, SIGUSR2, SIGQUIT, SIGHUP, SIGPROF or a number)"
                ))
            }),
        }
    }
}

/// Parses a signal name (`SIGUSR2`, `usr2`) or number.
pub fn parse_signal(s: &str) -> Option<i32> {
    let up = s.trim().to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    Some(match name {
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "QUIT" => libc::SIGQUIT,
        "HUP" => libc::SIGHUP,
        "PROF" => libc::SIGPROF,
        "INT" => libc::SIGINT,
        "TERM" => libc::SIGTERM,
        "WINCH" => libc::SIGWINCH,
        n => return n.parse().ok(),
    })
}

// ---------------------------------------------------------------------------
// The schema

/// Every key at its default, commented: what `oomkit config default` prints
/// (`handlers/configs/default.toml`; a test keeps it complete and equal to
/// the defaults below).
pub const DEFAULT_TOML: &str = include_str!("../configs/default.toml");

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[daemon]`.
    #[serde(default)]
    pub daemon: DaemonSection,
    /// `[engine]`.
    #[serde(default)]
    pub engine: EngineSection,
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
#[derive(Debug, Clone, Deserialize)]
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
        }
    }
}

/// `[engine]`: maps onto [`EngineConfig`] field by field; times in ms.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Log and record decisions, kill nothing, change nothing.
    pub dry_run: bool,
    /// Wait for reclaim progress before acting on `high` events and PSI.
    pub progress_aware: bool,
    /// How often to sample while assessing progress.
    #[serde(deserialize_with = "millis")]
    pub sample_interval_ms: u64,
    /// Full-stall share of wall time (0–1) counted as "stalled".
    pub full_stall_threshold: f64,
    /// Act despite progress once stalled this long.
    #[serde(deserialize_with = "millis")]
    pub stall_sustain_ms: u64,
    /// Give up assessing (as averted) after this long.
    #[serde(deserialize_with = "millis")]
    pub assess_limit_ms: u64,
    /// Re-check the signal after deciding, before acting.
    pub recheck: bool,
    /// Usage below this share (0–1) of the effective limit counts as resolved.
    pub resolved_usage_ratio: f64,
    /// Default time for a victim to exit and its memory to come back.
    #[serde(deserialize_with = "millis")]
    pub kill_deadline_ms: u64,
    /// Share (0–1) of the victim's footprint that must come back.
    pub memory_back_ratio: f64,
    /// Tick while waiting for a victim.
    #[serde(deserialize_with = "millis")]
    pub acting_tick_ms: u64,
    /// Quiet time after an episode before a new one starts.
    #[serde(deserialize_with = "millis")]
    pub cooldown_ms: u64,
    /// Victims that may fail to die before the episode is given up.
    pub max_escalations: u32,
    /// Tick for handlers that want quiet ticks (throttle release).
    #[serde(deserialize_with = "millis")]
    pub quiet_tick_ms: u64,
    /// Pre-allocated room for cgroups.
    pub max_cgroups: usize,
    /// Pre-allocated room for process samples per decision.
    pub max_processes: usize,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl Default for EngineSection {
    fn default() -> Self {
        let e = EngineConfig::default();
        EngineSection {
            dry_run: e.dry_run,
            progress_aware: e.progress_aware,
            sample_interval_ms: ms(e.sample_interval),
            full_stall_threshold: e.full_stall_threshold,
            stall_sustain_ms: ms(e.stall_sustain),
            assess_limit_ms: ms(e.assess_limit),
            recheck: e.recheck,
            resolved_usage_ratio: e.resolved_usage_ratio,
            kill_deadline_ms: ms(e.kill_deadline),
            memory_back_ratio: e.memory_back_ratio,
            acting_tick_ms: ms(e.acting_tick),
            cooldown_ms: ms(e.cooldown),
            max_escalations: e.max_escalations,
            quiet_tick_ms: ms(e.quiet_tick),
            max_cgroups: e.max_cgroups,
            max_processes: e.max_processes,
        }
    }
}

impl EngineSection {
    /// The engine settings (`dry_run` is or-ed with the command line's `--dry-run`).
    pub fn to_engine_config(&self) -> EngineConfig {
        let d = Duration::from_millis;
        EngineConfig {
            dry_run: self.dry_run,
            progress_aware: self.progress_aware,
            sample_interval: d(self.sample_interval_ms),
            full_stall_threshold: self.full_stall_threshold,
            stall_sustain: d(self.stall_sustain_ms),
            assess_limit: d(self.assess_limit_ms),
            recheck: self.recheck,
            resolved_usage_ratio: self.resolved_usage_ratio,
            kill_deadline: d(self.kill_deadline_ms),
            memory_back_ratio: self.memory_back_ratio,
            acting_tick: d(self.acting_tick_ms),
            cooldown: d(self.cooldown_ms),
            max_escalations: self.max_escalations,
            quiet_tick: d(self.quiet_tick_ms),
            max_cgroups: self.max_cgroups,
            max_processes: self.max_processes,
        }
    }
}

/// `[signals]`.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PsiSection {
    /// `some` or `full`.
    pub kind: PsiKind,
    /// Stall time within the window that fires the trigger, ms.
    #[serde(deserialize_with = "millis")]
    pub stall_ms: u64,
    /// The window, ms (500–10000; unprivileged on 6.5+: a multiple of 2000).
    #[serde(deserialize_with = "millis")]
    pub window_ms: u64,
    /// `system` or `cgroup`.
    pub scope: PsiScope,
}

impl Default for PsiSection {
    fn default() -> Self {
        PsiSection {
            kind: PsiKind::Some,
            stall_ms: 150,
            window_ms: 1000,
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchdogSection {
    /// Run the watchdog thread.
    pub enabled: bool,
    /// How long the loop may stay busy before the watchdog acts, ms.
    #[serde(deserialize_with = "millis")]
    pub timeout_ms: u64,
}

impl Default for WatchdogSection {
    fn default() -> Self {
        WatchdogSection {
            enabled: true,
            timeout_ms: 2000,
        }
    }
}

/// `[hooks]`: executables run when oomkit kills (see [`crate::hooks`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksSection {
    /// Run before each kill, which waits for it at most `pre_kill_timeout_ms`:
    /// an absolute path to an executable owned by root, not group/world-writable.
    pub pre_kill: Option<PathBuf>,
    /// Its deadline, after which it is SIGKILLed and the kill goes ahead, ms.
    #[serde(deserialize_with = "millis")]
    pub pre_kill_timeout_ms: u64,
    /// Run after each episode that killed (or in a dry run would have): an
    /// absolute path to an executable owned by root, not group/world-writable.
    pub post_kill: Option<PathBuf>,
    /// Its deadline, after which it is SIGKILLed, ms.
    #[serde(deserialize_with = "millis")]
    pub post_kill_timeout_ms: u64,
}

impl Default for HooksSection {
    fn default() -> Self {
        HooksSection {
            pre_kill: None,
            pre_kill_timeout_ms: 1000,
            post_kill: None,
            post_kill_timeout_ms: 10_000,
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
    #[serde(default)]
    pub rules: Vec<RuleSection>,
    /// `[handler.priority_kill]` (also victim choice for heap-profile).
    #[serde(default)]
    pub priority_kill: Option<PriorityKillSection>,
    /// `[handler.throttle]`.
    #[serde(default)]
    pub throttle: Option<ThrottleSection>,
    /// `[handler.heap_profile]`.
    #[serde(default)]
    pub heap_profile: Option<HeapProfileSection>,
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

/// `[[handler.rules]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    /// Glob on the cgroup hierarchy path (`*` within a component, `**` across).
    pub glob: String,
    /// Priority tier (higher is more important).
    #[serde(default)]
    pub priority: Option<i32>,
    /// Never kill, throttle or freeze.
    #[serde(default)]
    pub protected: bool,
}

/// `[handler.priority_kill]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriorityKillSection {
    /// `process`, `cgroup` or `tree`.
    pub granularity: Granularity,
    /// Pass over smaller candidates while bigger ones exist.
    pub min_victim_bytes: ByteSize,
    /// Time for the victim to die and memory to come back, ms (0: `[engine] kill_deadline_ms`).
    #[serde(deserialize_with = "millis")]
    pub kill_deadline_ms: u64,
}

impl Default for PriorityKillSection {
    fn default() -> Self {
        PriorityKillSection {
            granularity: Granularity::Process,
            min_victim_bytes: ByteSize(0),
            kill_deadline_ms: 0,
        }
    }
}

/// `[handler.throttle]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleSection {
    /// Each step sets `memory.high` to this fraction of usage (0–1, exclusive).
    pub step_fraction: f64,
    /// Never below this.
    pub floor: ByteSize,
    /// Minimum time between two steps on one cgroup, ms.
    #[serde(deserialize_with = "millis")]
    pub step_interval_ms: u64,
    /// Freeze the cgroup at the floor.
    pub freeze_at_floor: bool,
    /// Kill if still pressing its throttle this long after the first step, ms.
    #[serde(deserialize_with = "millis")]
    pub kill_after_ms: u64,
    /// Contained (and released a step) below this fraction of its throttle.
    pub release_below: f64,
    /// Thaw when the root's `some` avg10 is below this, percent.
    pub thaw_below_avg10: f64,
    /// What the kill takes: `process`, `cgroup` or `tree`.
    pub kill: Granularity,
    /// Cgroups throttled at once.
    pub max_throttled: usize,
}

impl Default for ThrottleSection {
    fn default() -> Self {
        let t = ThrottleConfig::default();
        ThrottleSection {
            step_fraction: t.step_fraction,
            floor: ByteSize(t.floor_bytes),
            step_interval_ms: ms(t.step_interval),
            freeze_at_floor: t.freeze_at_floor,
            kill_after_ms: ms(t.kill_after),
            release_below: t.release_below,
            thaw_below_avg10: t.thaw_below_avg10,
            kill: t.kill,
            max_throttled: t.max_throttled,
        }
    }
}

/// `[handler.heap_profile]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeapProfileSection {
    /// The signal asking for a profile.
    pub signal: Signal,
    /// Globs on the victim's cgroup path.
    pub cgroups: Vec<String>,
    /// Victim `comm` values.
    pub comms: Vec<String>,
    /// Extra `memory.max` while it writes the profile.
    pub headroom: ByteSize,
    /// Most headroom outstanding at once.
    pub budget: ByteSize,
    /// How long the raised limit stays, ms.
    #[serde(deserialize_with = "millis")]
    pub raise_for_ms: u64,
    /// How long to wait for the profile, ms.
    #[serde(deserialize_with = "millis")]
    pub dump_deadline_ms: u64,
}

impl Default for HeapProfileSection {
    fn default() -> Self {
        let h = HeapProfileConfig::default();
        HeapProfileSection {
            signal: Signal(h.signal),
            cgroups: h.cgroups,
            comms: h.comms,
            headroom: ByteSize(h.headroom_bytes),
            budget: ByteSize(h.budget_bytes),
            raise_for_ms: ms(h.raise_for),
            dump_deadline_ms: ms(h.dump_deadline),
        }
    }
}

// ---------------------------------------------------------------------------
// Errors

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub at: Option<(usize, usize)>,
    /// The dotted key (`signals.psi.window_ms`, `handler.rules[1].glob`), when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((l, c)) = self.at {
            write!(f, ":{l}:{c}")?;
        }
        f.write_str(": ")?;
        if let Some(k) = &self.key {
            write!(f, "key `{k}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// 1-based (line, column in characters) of byte offset `at`.
pub(crate) fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text.get(start..at).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

/// A table header line (`[a.b]`, `[[a.b]]`) → its dotted name and whether it is an array item.
fn header(line: &str) -> Option<(String, bool)> {
    let t = line.trim();
    let t = t.split('#').next().unwrap_or(t).trim();
    if let Some(inner) = t.strip_prefix("[[").and_then(|s| s.strip_suffix("]]")) {
        return Some((normalize_key(inner), true));
    }
    let inner = t.strip_prefix('[')?.strip_suffix(']')?;
    Some((normalize_key(inner), false))
}

fn normalize_key(k: &str) -> String {
    k.split('.')
        .map(|p| p.trim().trim_matches('"').trim_matches('\''))
        .collect::<Vec<_>>()
        .join(".")
}

/// The `key` of a `key = value` line.
fn line_key(line: &str) -> Option<String> {
    let t = line.trim_start();
    if t.starts_with('#') || t.starts_with('[') {
        return None;
    }
    let (k, _) = t.split_once('=')?;
    Some(normalize_key(k))
}

/// The dotted key at byte offset `at`: the table header above plus the
/// key on that line (or the header itself).
fn key_at(text: &str, at: usize) -> Option<String> {
    let at = at.min(text.len());
    let line_start = text.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text.get(at..)?.find('\n').map_or(text.len(), |i| at + i);
    let line = text.get(line_start..line_end)?;
    if let Some((h, _)) = header(line) {
        return Some(h);
    }
    let mut table = String::new();
    for l in text.get(..line_start)?.lines() {
        if let Some((h, _)) = header(l) {
            table = h;
        }
    }
    match line_key(line) {
        Some(k) if table.is_empty() => Some(k),
        Some(k) => Some(format!("{table}.{k}")),
        None if table.is_empty() => None,
        None => Some(table),
    }
}

/// Finds a dotted key (`handler.rules[1].glob`, `signals.psi.window_ms`) in
/// the text: the position of its `key =` line, else of its table header,
/// else of the nearest enclosing table that is present.
pub fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    // Split "a.b[2].c" into the table path with index and the last key.
    let mut parts: Vec<(String, Option<usize>)> = Vec::new();
    for p in key.split('.') {
        match p.split_once('[') {
            Some((name, idx)) => {
                parts.push((name.to_string(), idx.trim_end_matches(']').parse().ok()))
            }
            None => parts.push((p.to_string(), None)),
        }
    }
    let plain = |ps: &[(String, Option<usize>)]| {
        ps.iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(".")
    };
    // Walk lines tracking the current table and array-item counts.
    let mut best: Option<(usize, usize, usize)> = None; // (depth matched, line, col)
    let mut table = String::new();
    let mut table_ok = true; // array indices along the way match
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut offset = 0;
    for (n, line) in text.split('\n').enumerate() {
        let col = line.len() - line.trim_start().len() + 1;
        if let Some((h, array)) = header(line) {
            table = h.clone();
            if array {
                *counts.entry(h.clone()).or_insert(0) += 1;
            }
            // Does this header lie on the key's path, with the right indices?
            let hp: Vec<&str> = h.split('.').collect();
            table_ok = hp.len() <= parts.len()
                && hp.iter().zip(&parts).all(|(a, (b, _))| a == b)
                && parts[..hp.len()]
                    .iter()
                    .enumerate()
                    .all(|(i, (_, idx))| match idx {
                        None => true,
                        Some(want) => {
                            let prefix = plain(&parts[..=i]);
                            counts.get(&prefix).copied().unwrap_or(0) == want + 1
                        }
                    });
            if table_ok && best.is_none_or(|b| hp.len() > b.0) {
                best = Some((hp.len(), n + 1, col));
            }
        } else if let Some(k) = line_key(line) {
            let full = if table.is_empty() {
                k
            } else {
                format!("{table}.{k}")
            };
            if table_ok && full == plain(&parts) {
                return Some((n + 1, col));
            }
        }
        offset += line.len() + 1;
    }
    let _ = offset;
    best.map(|(_, l, c)| (l, c))
}

// ---------------------------------------------------------------------------
// Loading and validation

/// A loaded, validated config with the text it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file.
    pub file: PathBuf,
    /// The config.
    pub config: Config,
    /// Notes that are not errors (ignored tables, privilege hints).
    pub warnings: Vec<String>,
    /// Drop-ins merged over the file, in the order applied.
    pub dropins: Vec<PathBuf>,
}

impl Config {
    /// Parses `text` (read from `file`) and validates it.
    pub fn parse(file: &Path, text: &str) -> Result<Loaded, ConfigErrors> {
        let config: Config = toml::from_str(text).map_err(|e| {
            if e.message().contains("missing field `handler`") {
                return ConfigErrors(vec![ConfigError {
                    file: file.to_path_buf(),
                    at: None,
                    key: None,
                    message: "no [handler] section (missing field `handler`): every config needs one, e.g. `[handler]` with `kind = \"priority-kill\"`".into(),
                }]);
            }
            let span = e.span();
            ConfigErrors(vec![ConfigError {
                file: file.to_path_buf(),
                at: span.as_ref().map(|s| line_col(text, s.start)),
                key: span.and_then(|s| key_at(text, s.start)),
                message: e.message().trim().to_string(),
            }])
        })?;
        let (mut problems, mut warnings) = config.validate();
        let safety = crate::config_safety::check(&config);
        problems.extend(safety.errors);
        warnings.extend(safety.warnings.into_iter().map(|(key, message)| {
            ConfigError {
                file: file.to_path_buf(),
                at: locate(text, &key),
                key: Some(key),
                message,
            }
            .to_string()
        }));
        if problems.is_empty() {
            return Ok(Loaded {
                file: file.to_path_buf(),
                config,
                warnings,
                dropins: Vec::new(),
            });
        }
        Err(ConfigErrors(
            problems
                .into_iter()
                .map(|(key, message)| ConfigError {
                    file: file.to_path_buf(),
                    at: locate(text, &key),
                    key: Some(key),
                    message,
                })
                .collect(),
        ))
    }

    /// Reads and validates a file, merged with its drop-ins
    /// (`oomkit.d/*.toml` beside `oomkit.toml`; see [`crate::dropin`]).
    pub fn load(file: &Path) -> Result<Loaded, ConfigErrors> {
        crate::dropin::load(file)
    }

    /// Checks values; returns (problems as (dotted key, message), warnings).
    pub fn validate(&self) -> (Vec<(String, String)>, Vec<String>) {
        let mut bad: Vec<(String, String)> = Vec::new();
        let mut warn: Vec<String> = Vec::new();
        let mut err = |k: &str, m: String| bad.push((k.to_string(), m));
        let ratio = |v: f64| (0.0..=1.0).contains(&v);

        // [daemon]
        let d = &self.daemon;
        if !d.root.is_absolute() {
            err(
                "daemon.root",
                format!("must be an absolute path (got `{}`)", d.root.display()),
            );
        }
        if !(1..=16).contains(&d.depth) {
            err(
                "daemon.depth",
                format!("must be between 1 and 16 (got {})", d.depth),
            );
        }
        if let Some(a) = &d.metrics_listen {
            if let Err(e) = a.parse::<std::net::SocketAddr>() {
                err(
                    "daemon.metrics_listen",
                    format!("`{a}` is not HOST:PORT (e.g. \"127.0.0.1:9732\"): {e}"),
                );
            }
        }
        if d.incidents().is_some() && d.incident_max_count == 0 {
            err("daemon.incident_max_count", "must be at least 1".into());
        }
        if d.incidents().is_some() && d.incident_max_bytes.0 < 4096 {
            err(
                "daemon.incident_max_bytes",
                "must be at least 4096 bytes".into(),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&d.log_level) {
            err("daemon.log_level", format!("not a log filter: {e}"));
        }

        // [engine]
        let e = &self.engine;
        for (k, v) in [
            ("engine.full_stall_threshold", e.full_stall_threshold),
            ("engine.resolved_usage_ratio", e.resolved_usage_ratio),
            ("engine.memory_back_ratio", e.memory_back_ratio),
        ] {
            if !ratio(v) {
                err(k, format!("must be between 0 and 1 (got {v})"));
            }
        }
        for (k, v) in [
            ("engine.sample_interval_ms", e.sample_interval_ms),
            ("engine.acting_tick_ms", e.acting_tick_ms),
            ("engine.quiet_tick_ms", e.quiet_tick_ms),
            ("engine.kill_deadline_ms", e.kill_deadline_ms),
        ] {
            if v == 0 {
                err(k, "must be greater than 0".into());
            }
        }
        if e.max_cgroups < 1 {
            err("engine.max_cgroups", "must be at least 1".into());
        }
        if e.max_processes < 1 {
            err("engine.max_processes", "must be at least 1".into());
        }

        // [signals]
        if let Some(p) = &self.signals.psi {
            if !(500..=10_000).contains(&p.window_ms) {
                err(
                    "signals.psi.window_ms",
                    format!("must be between 500 ms and 10 s (got {} ms)", p.window_ms),
                );
            }
            if p.stall_ms == 0 || p.stall_ms > p.window_ms {
                err(
                    "signals.psi.stall_ms",
                    format!(
                        "must be greater than 0 and at most window_ms ({} ms) (got {} ms)",
                        p.window_ms, p.stall_ms
                    ),
                );
            }
            if p.window_ms % 2000 != 0 {
                warn.push(format!(
                    "signals.psi.window_ms = {}: since Linux 6.5 an unprivileged PSI trigger needs a window that is a multiple of 2000 ms",
                    p.window_ms
                ));
            }
        }
        if !self.signals.memory_events
            && self.signals.psi.is_none()
            && !self.signals.machine.enabled
        {
            err(
                "signals.memory_events",
                "no event source: enable memory_events or [signals.machine], or add [signals.psi]"
                    .into(),
            );
        }
        let mut machine_bad = Vec::new();
        crate::machine_config::validate(
            &self.signals.machine,
            self.signals.memory_events || self.signals.psi.is_some(),
            &mut machine_bad,
            &mut warn,
        );
        for (k, m) in machine_bad {
            err(&k, m);
        }
        if let Some(t) = self.signals.tripwire {
            match t.0 {
                oomkit::events::Level::Fraction(f) if !(0.01..=0.99).contains(&f) => err(
                    "signals.tripwire",
                    format!("a percentage must be between 1% and 99% (got {})", t.0),
                ),
                oomkit::events::Level::Bytes(0) => {
                    err("signals.tripwire", "must be greater than 0".into())
                }
                oomkit::events::Level::Bytes(_) => warn.push(format!(
                    "signals.tripwire = {}: a size is checked against MemTotal only when the \
                     daemon starts",
                    t.0
                )),
                _ => {}
            }
            if !self.signals.memory_events {
                warn.push(
                    "signals.tripwire is set but signals.memory_events is off: the `high` \
                     events it raises are not watched, only the throttling remains"
                        .into(),
                );
            }
        }

        // [reserve]
        let r = &self.reserve;
        if let Some(a) = r.oom_score_adj {
            if !(-1000..=1000).contains(&a) {
                err(
                    "reserve.oom_score_adj",
                    format!("must be between -1000 and 1000 (got {a})"),
                );
            }
        }
        if let Some(n) = r.nice {
            if !(-20..=19).contains(&n) {
                err(
                    "reserve.nice",
                    format!("must be between -20 and 19 (got {n})"),
                );
            }
        }
        if let Some(f) = r.fifo {
            if !(1..=99).contains(&f) {
                err(
                    "reserve.fifo",
                    format!("must be between 1 and 99 (got {f})"),
                );
            }
        }
        if r.memory_min.is_some() && r.cgroup_parent.is_none() {
            err(
                "reserve.memory_min",
                "needs reserve.cgroup_parent (the cgroup to create the daemon's own cgroup in)"
                    .into(),
            );
        }
        if r.cgroup_name.is_empty() || r.cgroup_name.contains('/') {
            err(
                "reserve.cgroup_name",
                "must be a single path component".into(),
            );
        }

        // [hooks]
        for (k, p) in [
            ("hooks.pre_kill", &self.hooks.pre_kill),
            ("hooks.post_kill", &self.hooks.post_kill),
        ] {
            if let Some(p) = p.as_ref().filter(|p| !p.is_absolute()) {
                err(
                    k,
                    format!("must be an absolute path (got `{}`)", p.display()),
                );
            }
        }
        if !(1..=60_000).contains(&self.hooks.pre_kill_timeout_ms) {
            err(
                "hooks.pre_kill_timeout_ms",
                format!(
                    "must be between 1 ms and 60 s: every kill waits up to this long (got {} ms)",
                    self.hooks.pre_kill_timeout_ms
                ),
            );
        }
        if !(1..=300_000).contains(&self.hooks.post_kill_timeout_ms) {
            err(
                "hooks.post_kill_timeout_ms",
                format!(
                    "must be between 1 ms and 5 min (got {} ms)",
                    self.hooks.post_kill_timeout_ms
                ),
            );
        }

        // [watchdog]
        if self.watchdog.enabled && !(100..=60_000).contains(&self.watchdog.timeout_ms) {
            err(
                "watchdog.timeout_ms",
                format!(
                    "must be between 100 and 60000 (got {})",
                    self.watchdog.timeout_ms
                ),
            );
        }

        // [handler]
        let h = &self.handler;
        for (i, rule) in h.rules.iter().enumerate() {
            if let Err(e) = oomkit_handlers::classify::path_glob(&rule.glob) {
                err(
                    &format!("handler.rules[{i}].glob"),
                    format!("bad glob: {e}"),
                );
            } else if !rule.glob.starts_with('/') && !rule.glob.starts_with('*') {
                err(
                    &format!("handler.rules[{i}].glob"),
                    format!(
                        "globs match hierarchy paths, which start with `/` (got `{}`)",
                        rule.glob
                    ),
                );
            }
            if rule.priority.is_none() && !rule.protected {
                err(
                    &format!("handler.rules[{i}]"),
                    "a rule needs `priority` or `protected = true`".into(),
                );
            }
        }
        if let Some(t) = &h.throttle {
            if !(t.step_fraction > 0.0 && t.step_fraction < 1.0) {
                err(
                    "handler.throttle.step_fraction",
                    format!(
                        "must be between 0 and 1, exclusive (got {})",
                        t.step_fraction
                    ),
                );
            }
            if !ratio(t.release_below) || t.release_below == 0.0 {
                err(
                    "handler.throttle.release_below",
                    format!("must be in (0, 1] (got {})", t.release_below),
                );
            }
            if t.floor.0 < (4 << 20) {
                err("handler.throttle.floor", "must be at least 4 MiB".into());
            }
            if t.kill_after_ms < t.step_interval_ms {
                err(
                    "handler.throttle.kill_after_ms",
                    format!(
                        "must be at least step_interval_ms ({} ms) (got {} ms)",
                        t.step_interval_ms, t.kill_after_ms
                    ),
                );
            }
            if t.max_throttled == 0 {
                err(
                    "handler.throttle.max_throttled",
                    "must be at least 1".into(),
                );
            }
        }
        if let Some(p) = &h.heap_profile {
            if !(1..=64).contains(&p.signal.0)
                || [libc::SIGKILL, libc::SIGSTOP].contains(&p.signal.0)
            {
                err(
                    "handler.heap_profile.signal",
                    format!("{} cannot be caught; use SIGUSR2 or similar", p.signal.0),
                );
            }
            for (i, g) in p.cgroups.iter().enumerate() {
                if let Err(e) = oomkit_handlers::classify::path_glob(g) {
                    err(
                        &format!("handler.heap_profile.cgroups[{i}]"),
                        format!("bad glob: {e}"),
                    );
                }
            }
            for c in &p.comms {
                if c.len() > 15 {
                    err(
                        "handler.heap_profile.comms",
                        format!(
                            "`{c}` is longer than the kernel's 15-byte comm; it can never match"
                        ),
                    );
                }
            }
            if p.dump_deadline_ms == 0 {
                err(
                    "handler.heap_profile.dump_deadline_ms",
                    "must be greater than 0".into(),
                );
            }
            if p.headroom.0 > 0 && p.raise_for_ms < p.dump_deadline_ms {
                err(
                    "handler.heap_profile.raise_for_ms",
                    format!(
                        "must be at least dump_deadline_ms ({} ms), or the headroom is taken back before the dump (got {} ms)",
                        p.dump_deadline_ms, p.raise_for_ms
                    ),
                );
            }
            if p.headroom.0 > p.budget.0 {
                err(
                    "handler.heap_profile.headroom",
                    format!("is larger than budget ({} bytes)", p.budget.0),
                );
            }
        }
        if d.diagnostics_dir.is_none() && h.kind == HandlerKind::HeapProfile {
            err(
                "daemon.diagnostics_dir",
                "heap-profile needs a diagnostics folder to watch for dumps".into(),
            );
        }
        let unused = |name: &str, present: bool, used: bool| {
            (present && !used).then(|| {
                format!(
                    "[handler.{name}] is ignored: handler kind is `{}`",
                    h.kind.name()
                )
            })
        };
        warn.extend(unused(
            "priority_kill",
            h.priority_kill.is_some(),
            matches!(h.kind, HandlerKind::PriorityKill | HandlerKind::HeapProfile),
        ));
        warn.extend(unused(
            "throttle",
            h.throttle.is_some(),
            h.kind == HandlerKind::Throttle,
        ));
        warn.extend(unused(
            "heap_profile",
            h.heap_profile.is_some(),
            h.kind == HandlerKind::HeapProfile,
        ));
        if self.engine.dry_run {
            warn.push("engine.dry_run = true: nothing will be killed or changed".into());
        }
        (bad, warn)
    }

    /// The engine settings.
    pub fn engine_config(&self) -> EngineConfig {
        self.engine.to_engine_config()
    }

    /// The xattr trust rule.
    pub fn xattr_trust(&self) -> XattrTrust {
        match self.daemon.xattr_trust {
            TrustSetting::TrustedOnly => XattrTrust::TrustedOnly,
            TrustSetting::TrustedAndOwnedUser => XattrTrust::TrustedAndOwnedUser,
        }
    }

    /// The classifier from `[handler]` rules and QoS settings.
    pub fn classifier(&self) -> Result<Classifier, oomkit_handlers::classify::GlobError> {
        let h = &self.handler;
        let rules = h
            .rules
            .iter()
            .map(|r| Rule {
                glob: r.glob.clone(),
                priority: r.priority,
                protected: r.protected,
            })
            .collect();
        let qos = h.qos.enabled.then_some(QosPriorities {
            best_effort: h.qos.best_effort,
            burstable: h.qos.burstable,
            guaranteed: h.qos.guaranteed,
        });
        Ok(Classifier::new(rules, qos, h.default_priority)?.with_kube_roots(h.qos.roots.clone()))
    }

    fn priority_kill_config(&self) -> PriorityKillConfig {
        let p = self.handler.priority_kill.clone().unwrap_or_default();
        PriorityKillConfig {
            granularity: p.granularity,
            min_victim_bytes: p.min_victim_bytes.0,
            kill_deadline: Duration::from_millis(p.kill_deadline_ms),
            max_cgroups: self.engine.max_cgroups,
        }
    }

    /// Builds the configured handler (sized for `[engine] max_cgroups`).
    pub fn build_handler(&self) -> Result<Box<dyn oomkit::engine::Handler>, String> {
        let classifier = self.classifier().map_err(|e| e.to_string())?;
        let sizing = |e: std::collections::TryReserveError| {
            format!(
                "cannot reserve tables for [engine] max_cgroups = {}: {e}",
                self.engine.max_cgroups
            )
        };
        Ok(match self.handler.kind {
            HandlerKind::PriorityKill => Box::new(
                PriorityKill::try_new(self.priority_kill_config(), classifier).map_err(sizing)?,
            ),
            HandlerKind::Throttle => {
                let t = self.handler.throttle.clone().unwrap_or_default();
                let cfg = ThrottleConfig {
                    step_fraction: t.step_fraction,
                    floor_bytes: t.floor.0,
                    step_interval: Duration::from_millis(t.step_interval_ms),
                    freeze_at_floor: t.freeze_at_floor,
                    kill_after: Duration::from_millis(t.kill_after_ms),
                    release_below: t.release_below,
                    thaw_below_avg10: t.thaw_below_avg10,
                    kill: t.kill,
                    max_throttled: t.max_throttled,
                    choice: self.priority_kill_config(),
                };
                Box::new(Throttle::try_new(cfg, classifier).map_err(|e| {
                    format!(
                        "{} (handler.throttle.max_throttled = {})",
                        sizing(e),
                        t.max_throttled
                    )
                })?)
            }
            HandlerKind::HeapProfile => {
                let p = self.handler.heap_profile.clone().unwrap_or_default();
                let cfg = HeapProfileConfig {
                    signal: p.signal.0,
                    cgroups: p.cgroups,
                    comms: p.comms,
                    headroom_bytes: p.headroom.0,
                    budget_bytes: p.budget.0,
                    raise_for: Duration::from_millis(p.raise_for_ms),
                    dump_deadline: Duration::from_millis(p.dump_deadline_ms),
                };
                let inner = PriorityKill::try_new(self.priority_kill_config(), classifier)
                    .map_err(sizing)?;
                Box::new(HeapProfile::new(cfg, inner).map_err(|e| e.to_string())?)
            }
        })
    }
}
