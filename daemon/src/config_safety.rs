//! Kill-safety checks of a parsed config, one function per section.
//!
//! [`crate::config::Config::validate`] checks that values are well-formed;
//! these checks are about what a well-formed value would *do*: a config
//! that would let a tenant steer the killer, make the daemon kill with no
//! pressure, or exhaust its memory at load time is an error; one that is
//! legal but suspicious (a glob that can never match, a dump signal that
//! kills) is a warning. Both name the dotted key, so the caller can point at
//! its file and line. They run on `check-config`, at start and on reload.

use std::path::{Component, Path};

use crate::config::{Config, ms};

/// Problems found: errors refuse the config, warnings are reported.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// (dotted key, message): the config is refused.
    pub(crate) errors: Vec<(String, String)>,
    /// (dotted key, message): legal but suspicious.
    pub(crate) warnings: Vec<(String, String)>,
}

impl Findings {
    fn error(&mut self, key: &str, msg: String) {
        self.errors.push((key.to_string(), msg));
    }
    fn warn(&mut self, key: &str, msg: String) {
        self.warnings.push((key.to_string(), msg));
    }
}

/// Most cgroups the daemon sizes its tables for (`[engine] max_cgroups`):
/// each tracked cgroup also holds a few fds, so beyond this the fd limit,
/// not the table, is what breaks.
pub(crate) const MAX_CGROUPS: usize = 1 << 18;
/// Most process samples per decision (`[engine] max_processes`): the
/// kernel's `PID_MAX_LIMIT`.
pub(crate) const MAX_PROCESSES: usize = 1 << 22;
/// Shortest time a victim is given to die: below it the engine escalates
/// to the next victim before the first one could exit, killing several.
pub(crate) const MIN_KILL_DEADLINE_MS: u64 = 100;

/// All checks of `c`.
pub(crate) fn check(c: &Config) -> Findings {
    let mut f = Findings::default();
    check_daemon(c, &mut f);
    check_engine(c, &mut f);
    check_reserve(c, &mut f);
    check_qos(c, &mut f);
    check_rules(c, &mut f);
    check_priority_kill(c, &mut f);
    check_throttle(c, &mut f);
    check_heap_profile(c, &mut f);
    f
}

/// `[daemon]`: the managed root and the directories written to.
fn check_daemon(c: &Config, f: &mut Findings) {
    let d = &c.daemon;
    if d.root.components().any(|c| c == Component::ParentDir) {
        f.error(
            "daemon.root",
            format!(
                "`{}` contains `..`: name the cgroup directory itself",
                d.root.display()
            ),
        );
    } else if d.root == Path::new("/") {
        f.error(
            "daemon.root",
            "`/` is the whole filesystem, not a cgroup: use /sys/fs/cgroup or a cgroup below it"
                .into(),
        );
    } else if d.root.is_absolute() && !d.root.starts_with("/sys/fs/cgroup") {
        f.warn(
            "daemon.root",
            format!(
                "`{}` is not below /sys/fs/cgroup: make sure it is a cgroup2 directory",
                d.root.display()
            ),
        );
    }
    // (`incident_dir = ""` turns records off and is not a path.)
    for (key, dir) in [
        ("daemon.incident_dir", d.incidents()),
        ("daemon.diagnostics_dir", d.diagnostics_dir.as_deref()),
    ] {
        if let Some(dir) = dir {
            if !plain_absolute(dir) {
                f.error(
                    key,
                    format!(
                        "must be an absolute path without `..` (got `{}`): a relative one depends on the daemon's working directory",
                        dir.display()
                    ),
                );
            }
        }
    }
}

/// `[engine]`: table sizes and thresholds that would make it kill without need.
fn check_engine(c: &Config, f: &mut Findings) {
    let e = &c.engine;
    for (key, v, max) in [
        ("engine.max_cgroups", e.max_cgroups, MAX_CGROUPS),
        ("engine.max_processes", e.max_processes, MAX_PROCESSES),
    ] {
        if v > max {
            f.error(key, format!("must be at most {max} (got {v})"));
        }
    }
    if e.full_stall_threshold == 0.0 {
        f.error(
            "engine.full_stall_threshold",
            "must be greater than 0: at 0 any stall at all counts as stalled, and the engine acts despite reclaim progress".into(),
        );
    }
    if e.resolved_usage_ratio == 0.0 {
        f.error(
            "engine.resolved_usage_ratio",
            "must be greater than 0: at 0 usage is never low enough to count as resolved, so every episode escalates to more kills".into(),
        );
    }
    if e.memory_back_ratio == 0.0 {
        f.warn(
            "engine.memory_back_ratio",
            "is 0: any victim counts as having given its memory back, even one still dying".into(),
        );
    }
    if e.progress_aware && e.stall_sustain.is_zero() {
        f.warn(
            "engine.stall_sustain_ms",
            "is 0: the engine acts at the first stall, whatever the reclaim progress".into(),
        );
    }
    if (1..MIN_KILL_DEADLINE_MS).contains(&ms(e.kill_deadline)) {
        f.error(
            "engine.kill_deadline_ms",
            format!(
                "must be at least {MIN_KILL_DEADLINE_MS} ms (got {} ms): a victim needs time to exit before the next one is chosen",
                ms(e.kill_deadline)
            ),
        );
    }
}

/// `[reserve]`: the daemon's own cgroup name is one real component.
fn check_reserve(c: &Config, f: &mut Findings) {
    let n = c.reserve.cgroup_name.as_str();
    if n == "." || n == ".." {
        f.error(
            "reserve.cgroup_name",
            format!("`{n}` is not a cgroup name: it names the parent or the parent's parent"),
        );
    }
}

/// An absolute path with no `..` component (a hierarchy path or a
/// directory the daemon writes to must mean what it says).
fn plain_absolute(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// A cgroup name a probe path uses: no real cgroup is called this, so a glob
/// matching it matches any name.
const PROBE: &str = "zz-oomkit-probe";

/// `[[handler.rules]]`: globs that can never match, and protection of everything.
fn check_rules(c: &Config, f: &mut Findings) {
    for (i, r) in c.handler.rules.iter().enumerate() {
        if let Some(lit) = never_matching_pod_glob(&r.glob) {
            f.warn(
                &format!("handler.rules[{i}].glob"),
                format!(
                    "can never match: Kubernetes names pod cgroups by the pod's UID (hex digits), so `{lit}` never appears there; mark such pods with the `trusted.oomkit.priority` xattr instead"
                ),
            );
        }
        if r.protected {
            let Ok(g) = oomkit_handlers::classify::path_glob(&r.glob) else {
                continue;
            };
            let one = format!("/{PROBE}");
            let two = format!("/{PROBE}/{PROBE}");
            if g.is_match(&one) || g.is_match(&two) {
                f.warn(
                    &format!("handler.rules[{i}]"),
                    format!(
                        "protects every cgroup (`{}` matches any name, e.g. `{one}`): nothing could ever be killed",
                        r.glob
                    ),
                );
            }
        }
    }
}

/// The literal text after `pod` in a pod-level glob component that no pod
/// UID can contain (`kubepods-besteffort-pod*batch*.slice`,
/// `pod*batch*` below a cgroupfs QoS level), if any.
fn never_matching_pod_glob(glob: &str) -> Option<String> {
    let comps: Vec<&str> = glob.split('/').collect();
    for (i, c) in comps.iter().enumerate() {
        let uid = if c.starts_with("kubepods-") {
            // systemd driver: dashes of the UID become underscores.
            c.find("-pod")
                .map(|p| &c[p + 4..])
                .map(|t| t.strip_suffix(".slice").unwrap_or(t))
        } else if c.starts_with("pod")
            && i > 0
            && matches!(comps[i - 1], "kubepods" | "besteffort" | "burstable")
        {
            Some(&c[3..])
        } else {
            None
        };
        let Some(uid) = uid else { continue };
        let mut nested = 0u32;
        let mut lit = String::new();
        for ch in uid.chars() {
            match ch {
                '[' | '{' => nested += 1,
                ']' | '}' => nested = nested.saturating_sub(1),
                '*' | '?' | ',' => {}
                _ if nested > 0 => {}
                ch if ch.is_ascii_hexdigit() || ch == '_' || ch == '-' => {}
                _ => lit.push(ch),
            }
        }
        if !lit.is_empty() {
            return Some(uid.to_string());
        }
    }
    None
}

/// `[handler.priority_kill]`: the victim's deadline.
fn check_priority_kill(c: &Config, f: &mut Findings) {
    if let Some(p) = &c.handler.priority_kill {
        if (1..MIN_KILL_DEADLINE_MS).contains(&ms(p.kill_deadline)) {
            f.error(
                "handler.priority_kill.kill_deadline_ms",
                format!(
                    "must be 0 (use [engine] kill_deadline_ms) or at least {MIN_KILL_DEADLINE_MS} ms (got {} ms)",
                    ms(p.kill_deadline)
                ),
            );
        }
    }
}

/// `[handler.throttle]`: the thaw threshold and the table size.
fn check_throttle(c: &Config, f: &mut Findings) {
    let Some(t) = &c.handler.throttle else { return };
    if !(0.0..=100.0).contains(&t.thaw_below_avg10) {
        f.error(
            "handler.throttle.thaw_below_avg10",
            format!(
                "must be between 0 and 100 percent (got {}): otherwise a frozen cgroup is never thawed",
                t.thaw_below_avg10
            ),
        );
    }
    if t.max_throttled > c.engine.max_cgroups.min(MAX_CGROUPS) {
        f.error(
            "handler.throttle.max_throttled",
            format!(
                "must be at most [engine] max_cgroups ({}) (got {})",
                c.engine.max_cgroups, t.max_throttled
            ),
        );
    }
}

/// `[handler.heap_profile]`: a dump signal must not end (or core-dump) the victim.
fn check_heap_profile(c: &Config, f: &mut Findings) {
    let Some(p) = &c.handler.heap_profile else {
        return;
    };
    if !p.comms.is_empty() && p.cgroups.is_empty() {
        f.warn(
            "handler.heap_profile.comms",
            "a process chooses its own comm: any process of any tenant can match, and get the dump headroom and delay; add `cgroups` globs".into(),
        );
    }
    let sig = p.signal;
    let core = [
        libc::SIGQUIT,
        libc::SIGILL,
        libc::SIGTRAP,
        libc::SIGABRT,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGSEGV,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGSYS,
    ];
    let exit = [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGPIPE,
        libc::SIGALRM,
    ];
    if core.contains(&sig) {
        f.error(
            "handler.heap_profile.signal",
            format!(
                "signal {sig} makes a victim without a handler write a core dump of its whole memory while memory is short; use SIGUSR2 or similar"
            ),
        );
    } else if exit.contains(&sig) {
        f.warn(
            "handler.heap_profile.signal",
            format!(
                "signal {sig} asks the process to exit: a victim not built to dump on it terminates without a profile; SIGUSR2 is the usual choice"
            ),
        );
    }
}

/// `[handler.qos]`: the kubelet roots are plain hierarchy paths.
fn check_qos(c: &Config, f: &mut Findings) {
    for r in &c.handler.qos.roots {
        if !plain_absolute(r) {
            f.error(
                "handler.qos.roots",
                format!(
                    "`{}` must be an absolute hierarchy path without `..`, such as `/kubepods.slice`",
                    r.display()
                ),
            );
        }
    }
}
