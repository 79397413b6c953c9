//! Semantic checks of a parsed config, one function per section, in the order the sections
//! appear in the file. Each names the dotted key it finds wrong (`handler.rules[1].glob`); the
//! caller turns keys into positions ([`super::locate`]). All problems are collected, not just
//! the first. Checks of what is well-formed but dangerous are in `config_safety`.

use oomkit::engine::EngineConfig;
use oomkit_handlers::classify::path_glob;
use oomkit_handlers::heap_profile::HeapProfileConfig;
use oomkit_handlers::throttle::ThrottleConfig;

use super::units::ms;
use super::{
    Config, DaemonSection, HandlerKind, HandlerSection, HooksSection, ReserveSection,
    SignalsSection, WatchdogSection,
};

/// What validation found: problems as (dotted key, message), and warnings.
#[derive(Debug, Default)]
struct Findings {
    bad: Vec<(String, String)>,
    warn: Vec<String>,
}

impl Findings {
    fn err(&mut self, key: &str, message: impl Into<String>) {
        self.bad.push((key.to_string(), message.into()));
    }
}

fn ratio(v: f64) -> bool {
    (0.0..=1.0).contains(&v)
}

impl Config {
    /// Checks values; returns (problems as (dotted key, message), warnings).
    pub fn validate(&self) -> (Vec<(String, String)>, Vec<String>) {
        let mut f = Findings::default();
        daemon(&self.daemon, &mut f);
        engine(&self.engine, &mut f);
        signals(&self.signals, &mut f);
        reserve(&self.reserve, &mut f);
        hooks(&self.hooks, &mut f);
        watchdog(&self.watchdog, &mut f);
        handler(&self.handler, &mut f);
        if self.daemon.diagnostics_dir.is_none() && self.handler.kind == HandlerKind::HeapProfile {
            f.err(
                "daemon.diagnostics_dir",
                "heap-profile needs a diagnostics folder to watch for dumps",
            );
        }
        unused_handler_tables(&self.handler, &mut f);
        if self.engine.dry_run {
            f.warn
                .push("engine.dry_run = true: nothing will be killed or changed".into());
        }
        (f.bad, f.warn)
    }
}

/// `[daemon]`.
fn daemon(d: &DaemonSection, f: &mut Findings) {
    if !d.root.is_absolute() {
        f.err(
            "daemon.root",
            format!("must be an absolute path (got `{}`)", d.root.display()),
        );
    }
    if !(1..=16).contains(&d.depth) {
        f.err(
            "daemon.depth",
            format!("must be between 1 and 16 (got {})", d.depth),
        );
    }
    if let Some(a) = &d.metrics_listen {
        if let Err(e) = a.parse::<std::net::SocketAddr>() {
            f.err(
                "daemon.metrics_listen",
                format!("`{a}` is not HOST:PORT (e.g. \"127.0.0.1:9732\"): {e}"),
            );
        }
    }
    if d.incidents().is_some() && d.incident_max_count == 0 {
        f.err("daemon.incident_max_count", "must be at least 1");
    }
    if d.incidents().is_some() && d.incident_max_bytes.0 < 4096 {
        f.err("daemon.incident_max_bytes", "must be at least 4096 bytes");
    }
    if let Err(e) = crate::logging::parse_filter(&d.log_level) {
        f.err("daemon.log_level", format!("not a log filter: {e}"));
    }
}

/// `[engine]`.
fn engine(e: &EngineConfig, f: &mut Findings) {
    for (k, v) in [
        ("engine.full_stall_threshold", e.full_stall_threshold),
        ("engine.resolved_usage_ratio", e.resolved_usage_ratio),
        ("engine.memory_back_ratio", e.memory_back_ratio),
    ] {
        if !ratio(v) {
            f.err(k, format!("must be between 0 and 1 (got {v})"));
        }
    }
    for (k, v) in [
        ("engine.sample_interval_ms", e.sample_interval),
        ("engine.acting_tick_ms", e.acting_tick),
        ("engine.quiet_tick_ms", e.quiet_tick),
        ("engine.kill_deadline_ms", e.kill_deadline),
    ] {
        if v.is_zero() {
            f.err(k, "must be greater than 0");
        }
    }
    if e.max_cgroups < 1 {
        f.err("engine.max_cgroups", "must be at least 1");
    }
    if e.max_processes < 1 {
        f.err("engine.max_processes", "must be at least 1");
    }
}

/// `[signals]`, with `[signals.psi]`, `[signals.machine]` and `tripwire`.
fn signals(s: &SignalsSection, f: &mut Findings) {
    if let Some(p) = &s.psi {
        let (window, stall) = (ms(p.window), ms(p.stall));
        if !(500..=10_000).contains(&window) {
            f.err(
                "signals.psi.window_ms",
                format!("must be between 500 ms and 10 s (got {window} ms)"),
            );
        }
        if stall == 0 || stall > window {
            f.err(
                "signals.psi.stall_ms",
                format!(
                    "must be greater than 0 and at most window_ms ({window} ms) (got {stall} ms)"
                ),
            );
        }
        if window % 2000 != 0 {
            f.warn.push(format!(
                "signals.psi.window_ms = {window}: since Linux 6.5 an unprivileged PSI trigger needs a window that is a multiple of 2000 ms"
            ));
        }
    }
    if !s.memory_events && s.psi.is_none() && !s.machine.enabled {
        f.err(
            "signals.memory_events",
            "no event source: enable memory_events or [signals.machine], or add [signals.psi]",
        );
    }
    let mut machine_bad = Vec::new();
    crate::machine_config::validate(
        &s.machine,
        s.memory_events || s.psi.is_some(),
        &mut machine_bad,
        &mut f.warn,
    );
    for (k, m) in machine_bad {
        f.err(&k, m);
    }
    if let Some(t) = s.tripwire {
        tripwire(t, s.memory_events, f);
    }
}

/// `signals.tripwire`.
fn tripwire(t: crate::machine_config::LevelSetting, memory_events: bool, f: &mut Findings) {
    match t.0 {
        oomkit::events::Level::Fraction(v) if !(0.01..=0.99).contains(&v) => f.err(
            "signals.tripwire",
            format!("a percentage must be between 1% and 99% (got {})", t.0),
        ),
        oomkit::events::Level::Bytes(0) => f.err("signals.tripwire", "must be greater than 0"),
        oomkit::events::Level::Bytes(_) => f.warn.push(format!(
            "signals.tripwire = {}: a size is checked against MemTotal only when the \
             daemon starts",
            t.0
        )),
        _ => {}
    }
    if !memory_events {
        f.warn.push(
            "signals.tripwire is set but signals.memory_events is off: the `high` \
             events it raises are not watched, only the throttling remains"
                .into(),
        );
    }
}

/// `[reserve]`.
fn reserve(r: &ReserveSection, f: &mut Findings) {
    if let Some(a) = r.oom_score_adj {
        if !(-1000..=1000).contains(&a) {
            f.err(
                "reserve.oom_score_adj",
                format!("must be between -1000 and 1000 (got {a})"),
            );
        }
    }
    if let Some(n) = r.nice {
        if !(-20..=19).contains(&n) {
            f.err(
                "reserve.nice",
                format!("must be between -20 and 19 (got {n})"),
            );
        }
    }
    if let Some(p) = r.fifo {
        if !(1..=99).contains(&p) {
            f.err(
                "reserve.fifo",
                format!("must be between 1 and 99 (got {p})"),
            );
        }
    }
    if r.memory_min.is_some() && r.cgroup_parent.is_none() {
        f.err(
            "reserve.memory_min",
            "needs reserve.cgroup_parent (the cgroup to create the daemon's own cgroup in)",
        );
    }
    if r.cgroup_name.is_empty() || r.cgroup_name.contains('/') {
        f.err("reserve.cgroup_name", "must be a single path component");
    }
}

/// `[hooks]`.
fn hooks(h: &HooksSection, f: &mut Findings) {
    for (k, p) in [
        ("hooks.pre_kill", &h.pre_kill),
        ("hooks.post_kill", &h.post_kill),
    ] {
        if let Some(p) = p.as_ref().filter(|p| !p.is_absolute()) {
            f.err(
                k,
                format!("must be an absolute path (got `{}`)", p.display()),
            );
        }
    }
    let pre = ms(h.pre_kill_timeout);
    if !(1..=60_000).contains(&pre) {
        f.err(
            "hooks.pre_kill_timeout_ms",
            format!(
                "must be between 1 ms and 60 s: every kill waits up to this long (got {pre} ms)"
            ),
        );
    }
    let post = ms(h.post_kill_timeout);
    if !(1..=300_000).contains(&post) {
        f.err(
            "hooks.post_kill_timeout_ms",
            format!("must be between 1 ms and 5 min (got {post} ms)"),
        );
    }
}

/// `[watchdog]`.
fn watchdog(w: &WatchdogSection, f: &mut Findings) {
    let timeout = ms(w.timeout);
    if w.enabled && !(100..=60_000).contains(&timeout) {
        f.err(
            "watchdog.timeout_ms",
            format!("must be between 100 and 60000 (got {timeout})"),
        );
    }
}

/// `[handler]`: its rules and the tables of the handler kinds.
fn handler(h: &HandlerSection, f: &mut Findings) {
    for (i, rule) in h.rules.iter().enumerate() {
        let key = format!("handler.rules[{i}].glob");
        if let Err(e) = path_glob(&rule.glob) {
            f.err(&key, format!("bad glob: {e}"));
        } else if !rule.glob.starts_with('/') && !rule.glob.starts_with('*') {
            f.err(
                &key,
                format!(
                    "globs match hierarchy paths, which start with `/` (got `{}`)",
                    rule.glob
                ),
            );
        }
        if rule.priority.is_none() && !rule.protected {
            f.err(
                &format!("handler.rules[{i}]"),
                "a rule needs `priority` or `protected = true`",
            );
        }
    }
    if let Some(t) = &h.throttle {
        throttle(t, f);
    }
    if let Some(p) = &h.heap_profile {
        heap_profile(p, f);
    }
}

/// `[handler.throttle]`.
fn throttle(t: &ThrottleConfig, f: &mut Findings) {
    if !(t.step_fraction > 0.0 && t.step_fraction < 1.0) {
        f.err(
            "handler.throttle.step_fraction",
            format!(
                "must be between 0 and 1, exclusive (got {})",
                t.step_fraction
            ),
        );
    }
    if !ratio(t.release_below) || t.release_below == 0.0 {
        f.err(
            "handler.throttle.release_below",
            format!("must be in (0, 1] (got {})", t.release_below),
        );
    }
    if t.floor_bytes < (4 << 20) {
        f.err("handler.throttle.floor", "must be at least 4 MiB");
    }
    if t.kill_after < t.step_interval {
        f.err(
            "handler.throttle.kill_after_ms",
            format!(
                "must be at least step_interval_ms ({} ms) (got {} ms)",
                ms(t.step_interval),
                ms(t.kill_after)
            ),
        );
    }
    if t.max_throttled == 0 {
        f.err("handler.throttle.max_throttled", "must be at least 1");
    }
}

/// `[handler.heap_profile]`.
fn heap_profile(p: &HeapProfileConfig, f: &mut Findings) {
    if !(1..=64).contains(&p.signal) || [libc::SIGKILL, libc::SIGSTOP].contains(&p.signal) {
        f.err(
            "handler.heap_profile.signal",
            format!("{} cannot be caught; use SIGUSR2 or similar", p.signal),
        );
    }
    for (i, g) in p.cgroups.iter().enumerate() {
        if let Err(e) = path_glob(g) {
            f.err(
                &format!("handler.heap_profile.cgroups[{i}]"),
                format!("bad glob: {e}"),
            );
        }
    }
    for c in p.comms.iter().filter(|c| c.len() > 15) {
        f.err(
            "handler.heap_profile.comms",
            format!("`{c}` is longer than the kernel's 15-byte comm; it can never match"),
        );
    }
    if p.dump_deadline.is_zero() {
        f.err(
            "handler.heap_profile.dump_deadline_ms",
            "must be greater than 0",
        );
    }
    if p.headroom_bytes > 0 && p.raise_for < p.dump_deadline {
        f.err(
            "handler.heap_profile.raise_for_ms",
            format!(
                "must be at least dump_deadline_ms ({} ms), or the headroom is taken back before the dump (got {} ms)",
                ms(p.dump_deadline),
                ms(p.raise_for)
            ),
        );
    }
    if p.headroom_bytes > p.budget_bytes {
        f.err(
            "handler.heap_profile.headroom",
            format!("is larger than budget ({} bytes)", p.budget_bytes),
        );
    }
}

/// Warnings for `[handler.<kind>]` tables the configured kind does not read.
fn unused_handler_tables(h: &HandlerSection, f: &mut Findings) {
    for (name, present, used) in [
        (
            "priority_kill",
            h.priority_kill.is_some(),
            matches!(h.kind, HandlerKind::PriorityKill | HandlerKind::HeapProfile),
        ),
        (
            "throttle",
            h.throttle.is_some(),
            h.kind == HandlerKind::Throttle,
        ),
        (
            "heap_profile",
            h.heap_profile.is_some(),
            h.kind == HandlerKind::HeapProfile,
        ),
    ] {
        if present && !used {
            f.warn.push(format!(
                "[handler.{name}] is ignored: handler kind is `{}`",
                h.kind.name()
            ));
        }
    }
}
