//! The heap-profile handler: ask the victim where its memory went, then kill it.
//!
//! A kill fixes the node but destroys the evidence: the heap that grew is
//! gone with the process, and the owner learns only "OOMKilled". Programs
//! that can dump a heap profile on a signal (jemalloc's `prof.dump`, Go's
//! pprof behind a handler, tcmalloc) can leave that evidence behind if they
//! get a moment — and, at their limit, a little memory — to write it.
//!
//! This handler wraps [`PriorityKill`] for the victim choice, and when the
//! victim's cgroup matches a configured glob and its `comm` a configured
//! name (each only if configured; the cgroup narrows the name, because a
//! process chooses its own `comm`) it prepends:
//!
//! 1. [`Action::RaiseMax`] on the victim's cgroup and its limited ancestors
//!    up to the episode's scope: `memory.max` + `headroom`, for `raise_for`.
//!    The headroom comes out of a budget shared by overlapping incidents, so
//!    a burst of them cannot hand out unbounded memory; the loop restores
//!    the old limits when the time is up or the episode ends.
//! 2. [`Action::CaptureDiagnostics`]: the configured signal (SIGUSR2 by
//!    default); the loop waits up to `dump_deadline` for its pre-kill hooks,
//!    among them [`DumpWatch`], which waits for a new file in the
//!    diagnostics folder.
//! 3. The kill [`PriorityKill`] planned.
//!
//! A victim that does not match, and every escalation (the victim already
//! had its chance), is simply killed. Globs are compiled at construction
//! ([`crate::glob`]; matching allocates nothing); `decide` itself allocates
//! nothing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oomkit::engine::{
    Action, CgroupMeta, Class, Handler, Plan, PrekillHook, PrekillTarget, Trigger, View,
};

use crate::classify::path_glob;
use crate::glob::{PathGlob, PatternError};
use crate::priority::{Choice, PriorityKill};

/// Settings of [`HeapProfile`].
#[derive(Debug, Clone, PartialEq)]
pub struct HeapProfileConfig {
    /// The signal asking for a profile (`libc::SIGUSR2` by default).
    pub signal: i32,
    /// Globs on the victim's cgroup hierarchy path (empty: any cgroup).
    pub cgroups: Vec<String>,
    /// `comm` values (the kernel's 15-byte process name) of the victim
    /// (empty: any name); with `cgroups`, both must match.
    pub comms: Vec<String>,
    /// Extra `memory.max` given while it writes the profile, bytes (0: none).
    pub headroom_bytes: u64,
    /// Most headroom outstanding at once across incidents, bytes.
    pub budget_bytes: u64,
    /// How long the raised limit stays.
    pub raise_for: Duration,
    /// How long to wait for the profile before killing.
    pub dump_deadline: Duration,
}

impl Default for HeapProfileConfig {
    fn default() -> Self {
        HeapProfileConfig {
            signal: libc::SIGUSR2,
            cgroups: Vec::new(),
            comms: Vec::new(),
            headroom_bytes: 64 << 20,
            budget_bytes: 256 << 20,
            raise_for: Duration::from_secs(5),
            dump_deadline: Duration::from_secs(3),
        }
    }
}

/// A bad glob in [`HeapProfileConfig::cgroups`].
#[derive(Debug, thiserror::Error)]
#[error("cgroups[{index}]: bad glob `{glob}`: {source}")]
pub struct HeapGlobError {
    /// Index in the list.
    pub index: usize,
    /// The glob.
    pub glob: String,
    /// What is wrong with it.
    #[source]
    pub source: PatternError,
}

/// How many raises may be outstanding at once (the loop restores at most 4 limits per episode).
const MAX_RAISES: usize = 3;
const GRANTS: usize = 8;

/// The heap-profile handler. See the module docs.
#[derive(Debug, Clone)]
pub struct HeapProfile {
    cfg: HeapProfileConfig,
    inner: PriorityKill,
    /// `cfg.cgroups`, compiled.
    globs: Vec<PathGlob>,
    /// Headroom granted: (bytes, until).
    grants: [Option<(u64, Instant)>; GRANTS],
}

impl HeapProfile {
    /// Wraps `inner` (which picks the victim).
    pub fn new(cfg: HeapProfileConfig, inner: PriorityKill) -> Result<Self, HeapGlobError> {
        let globs = cfg
            .cgroups
            .iter()
            .enumerate()
            .map(|(index, g)| {
                path_glob(g).map_err(|source| HeapGlobError {
                    index,
                    glob: g.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HeapProfile {
            cfg,
            inner,
            globs,
            grants: [None; GRANTS],
        })
    }

    /// The settings.
    pub fn config(&self) -> &HeapProfileConfig {
        &self.cfg
    }

    /// Whether the victim is asked: its cgroup matches a glob (if any are
    /// configured) AND its `comm` is listed (if any are). A process sets
    /// its own `comm` (`prctl(PR_SET_NAME)`), so a name alone never lets a
    /// process of another cgroup in; the cgroup, which the operator
    /// placed it in, is what a tenant cannot forge.
    fn matches(&self, view: &View<'_>, choice: &Choice, comm: &str) -> bool {
        let cgroup_ok = self.cfg.cgroups.is_empty()
            || view
                .path(choice.cgroup)
                .is_some_and(|p| self.globs.iter().any(|g| g.is_match(p)));
        let comm_ok = self.cfg.comms.is_empty() || self.cfg.comms.iter().any(|c| c == comm);
        cgroup_ok && comm_ok
    }

    /// Headroom that can be granted now, and records the grant.
    fn grant(&mut self, now: Instant) -> u64 {
        let outstanding: u64 = self
            .grants
            .iter()
            .flatten()
            .filter(|(_, until)| *until > now)
            .map(|(b, _)| *b)
            .sum();
        let give = self
            .cfg
            .headroom_bytes
            .min(self.cfg.budget_bytes.saturating_sub(outstanding));
        if give == 0 {
            return 0;
        }
        let slot = self
            .grants
            .iter()
            .position(|g| g.is_none_or(|(_, until)| until <= now));
        match slot {
            Some(i) => {
                self.grants[i] = Some((give, now + self.cfg.raise_for));
                give
            }
            None => 0,
        }
    }

    /// The process to ask for a profile: the victim, or for a cgroup victim
    /// its largest process. Returns (pid, comm).
    fn profiled_process(view: &mut View<'_>, choice: &Choice) -> Option<(i32, [u8; 16])> {
        if let Some(pid) = choice.pid {
            return Some((pid, choice.comm));
        }
        let procs = view.processes(choice.cgroup).ok()?;
        procs
            .iter()
            .filter(|p| !p.kernel_thread && p.pid > 1)
            .max_by_key(|p| p.footprint())
            .map(|p| (p.pid, p.comm))
    }
}

fn comm_str(c: &[u8; 16]) -> &str {
    oomkit::proc::padded_comm_str(c)
}

impl Handler for HeapProfile {
    fn name(&self) -> &'static str {
        "heap-profile"
    }

    fn classify(&mut self, meta: &CgroupMeta<'_>) -> Class {
        self.inner.classify(meta)
    }

    /// As its inner priority-kill: it reads usage only through it.
    fn usage_on_demand(&self) -> bool {
        self.inner.usage_on_demand()
    }

    fn decide(&mut self, view: &mut View<'_>, plan: &mut Plan) {
        let Some(choice) = self.inner.choose(view) else {
            return;
        };
        let escalation = matches!(view.trigger(), Trigger::Escalation { .. });
        let target = if escalation {
            None
        } else {
            Self::profiled_process(view, &choice)
        };
        let Some((pid, comm)) =
            target.filter(|(_, comm)| self.matches(view, &choice, comm_str(comm)))
        else {
            self.inner.plan_kill(view, &choice, plan);
            return;
        };

        // 1. Headroom on each limited cgroup from the victim up to the scope.
        let headroom = if self.cfg.headroom_bytes > 0 {
            self.grant(view.now())
        } else {
            0
        };
        let mut raised = 0;
        if headroom > 0 {
            let scope = view.scope();
            let mut cur = Some(choice.cgroup);
            while let Some(c) = cur {
                if raised == MAX_RAISES {
                    break;
                }
                let max = view.detail(c).and_then(|s| s.max).and_then(|m| m.bytes());
                if let Some(m) = max {
                    let _ = plan.push(
                        Action::RaiseMax {
                            cgroup: c,
                            limit: m.saturating_add(headroom),
                            duration: self.cfg.raise_for,
                        },
                        Duration::ZERO,
                    );
                    raised += 1;
                }
                if Some(c) == scope {
                    break;
                }
                cur = view.parent(c);
            }
        }
        // 2. Ask for the profile, wait for the file.
        let _ = plan.push(
            Action::CaptureDiagnostics {
                cgroup: choice.cgroup,
                pid,
                signal: self.cfg.signal,
            },
            self.cfg.dump_deadline,
        );
        // 3. The kill.
        let _ = write!(
            plan.reason_writer(),
            "heap profile of {} ({}) first (+{} MiB on {} limits); ",
            pid,
            comm_str(&comm),
            headroom >> 20,
            raised
        );
        let before = plan.len();
        self.inner.plan_kill(view, &choice, plan);
        if plan.len() == before {
            // No room for the kill: never leave a plan that only profiles.
            plan.clear();
            self.inner.plan_kill(view, &choice, plan);
        }
    }
}

/// The pre-kill hook that waits for a heap profile: fired when the loop is
/// about to send a diagnostics signal, it notes the newest file in the
/// diagnostics folder; it is done when a newer (or grown) file has stopped
/// growing between two looks. It waits only where a signal is sent; a
/// plain kill goes ahead at once.
#[derive(Debug)]
pub struct DumpWatch {
    dir: PathBuf,
    seen: Option<(PathBuf, u64)>,
    candidate: Option<(PathBuf, u64)>,
}

impl DumpWatch {
    /// Watches `dir`, where victims write their profiles.
    pub fn new(dir: PathBuf) -> Self {
        DumpWatch {
            dir,
            seen: None,
            candidate: None,
        }
    }

    /// The newest regular, non-hidden file in the folder and its size.
    fn newest(dir: &Path) -> Option<(PathBuf, u64)> {
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter_map(|e| {
                let md = e.metadata().ok()?;
                // Hidden names are files still being written (heap_victim dumps to
                // `.name.tmp` and renames): never take one for a finished dump.
                if !md.is_file() || e.file_name().as_encoded_bytes().starts_with(b".") {
                    return None;
                }
                Some((e.path(), md.len(), md.modified().ok()?))
            })
            .max_by_key(|(_, _, m)| *m)
            .map(|(p, l, _)| (p, l))
    }
}

impl PrekillHook for DumpWatch {
    fn name(&self) -> &'static str {
        "heap-profile dump"
    }

    fn fire(&mut self, target: &PrekillTarget<'_>) -> Option<Duration> {
        target.signal?;
        self.seen = Self::newest(&self.dir);
        self.candidate = None;
        // As long as the step's deadline (`dump_deadline`) allows.
        Some(Duration::MAX)
    }

    fn poll(&mut self) -> bool {
        let Some(now) = Self::newest(&self.dir) else {
            return false;
        };
        if now.1 == 0 || Some(&now) == self.seen.as_ref() {
            return false;
        }
        if Some(&now) == self.candidate.as_ref() {
            return true;
        }
        self.candidate = Some(now);
        false
    }
}
