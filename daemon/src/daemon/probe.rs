//! `oomkit probe`: the kernel's features at the root, the daemon's capabilities and limits, and
//! what reserve mode would get with them.

use super::*;

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
