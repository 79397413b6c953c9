//! What a handler asks the loop to do: a [`Plan`] of [`Step`]s.
//!
//! A plan is a fixed-capacity value (no heap), built by the handler on the
//! hot path and executed by the loop. Handlers never do I/O themselves; this
//! is the whole vocabulary of effects they have.

use std::time::Duration;

use crate::cgroup::Limit;

use super::types::CgroupId;

/// How many steps one plan can hold.
pub const MAX_STEPS: usize = 8;
/// How many bytes of free-form reason a plan carries.
pub const REASON_MAX: usize = 160;

/// One effect.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// SIGKILL one process (through a pidfd, after re-checking that it is
    /// still a member of `cgroup`), then `process_mrelease` it.
    KillProcess {
        /// The cgroup the process was seen in.
        cgroup: CgroupId,
        /// Its PID when seen.
        pid: i32,
    },
    /// Kill every process of a cgroup and its descendants (`cgroup.kill`, or
    /// freeze-and-signal on kernels before 5.14).
    KillCgroup {
        /// The cgroup.
        cgroup: CgroupId,
    },
    /// Kill the tree the kernel would kill: walk up from `cgroup` to the
    /// highest ancestor (within the managed tree) with `memory.oom.group=1`
    /// and kill that; if none has it, kill `cgroup` itself.
    KillTree {
        /// Where to start.
        cgroup: CgroupId,
    },
    /// Set `memory.high` (throttle, or release a throttle with [`Limit::Max`]).
    SetHigh {
        /// The cgroup.
        cgroup: CgroupId,
        /// The new limit.
        limit: Limit,
    },
    /// Freeze (`true`) or thaw (`false`) a cgroup.
    Freeze {
        /// The cgroup.
        cgroup: CgroupId,
        /// Frozen or not.
        frozen: bool,
    },
    /// Raise `memory.max` to `limit` for `duration`, then restore the old
    /// value. `memory.max` is never removed: `limit` must be bytes.
    RaiseMax {
        /// The cgroup.
        cgroup: CgroupId,
        /// Temporary limit in bytes.
        limit: u64,
        /// How long before it is restored.
        duration: Duration,
    },
    /// Send `signal` to a process asking for diagnostics (for example a heap
    /// profile), then wait until a new file appears in the incident's
    /// diagnostics folder or the step's deadline passes.
    CaptureDiagnostics {
        /// The cgroup the process is in.
        cgroup: CgroupId,
        /// The process.
        pid: i32,
        /// The signal number to send (for example `libc::SIGUSR2`).
        signal: i32,
    },
}

impl Action {
    /// The cgroup the action is about.
    pub fn cgroup(&self) -> CgroupId {
        match *self {
            Action::KillProcess { cgroup, .. }
            | Action::KillCgroup { cgroup }
            | Action::KillTree { cgroup }
            | Action::SetHigh { cgroup, .. }
            | Action::Freeze { cgroup, .. }
            | Action::RaiseMax { cgroup, .. }
            | Action::CaptureDiagnostics { cgroup, .. } => cgroup,
        }
    }

    /// True for actions that kill.
    pub fn is_kill(&self) -> bool {
        matches!(
            self,
            Action::KillProcess { .. } | Action::KillCgroup { .. } | Action::KillTree { .. }
        )
    }

    /// A short name for logs and incident records.
    pub fn name(&self) -> &'static str {
        match self {
            Action::KillProcess { .. } => "kill_process",
            Action::KillCgroup { .. } => "kill_cgroup",
            Action::KillTree { .. } => "kill_tree",
            Action::SetHigh { .. } => "set_high",
            Action::Freeze { .. } => "freeze",
            Action::RaiseMax { .. } => "raise_max",
            Action::CaptureDiagnostics { .. } => "capture_diagnostics",
        }
    }
}

/// An action with the time it may take before the loop moves on (for kills:
/// until the victim has exited and its memory has come back; past it, the
/// loop escalates).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// The effect.
    pub action: Action,
    /// How long to wait for it to take effect.
    pub deadline: Duration,
}

/// The handler's answer: nothing, or up to [`MAX_STEPS`] steps run in order.
///
/// Fixed capacity, no heap: building a plan on the hot path allocates nothing.
///
/// ```
/// use std::fmt::Write;
/// use std::time::Duration;
/// use oomkit::engine::{Action, Plan};
/// # fn demo(batch: oomkit::engine::CgroupId) {
/// let mut plan = Plan::new();
/// plan.push(Action::KillCgroup { cgroup: batch }, Duration::from_secs(5)).unwrap();
/// write!(plan.reason_writer(), "lowest tier, largest: {} MiB", 812).unwrap();
/// assert!(plan.kills());
/// # }
/// ```
#[derive(Clone)]
pub struct Plan {
    steps: [Option<Step>; MAX_STEPS],
    len: usize,
    reason: [u8; REASON_MAX],
    reason_len: usize,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            steps: [None; MAX_STEPS],
            len: 0,
            reason: [0; REASON_MAX],
            reason_len: 0,
        }
    }
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("steps", &self.steps().collect::<Vec<_>>())
            .field("reason", &self.reason())
            .finish()
    }
}

/// A plan is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("plan holds at most {MAX_STEPS} steps")]
pub struct PlanFull;

impl Plan {
    /// An empty plan (do nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Empties the plan for reuse.
    pub fn clear(&mut self) {
        self.len = 0;
        self.reason_len = 0;
        self.steps = [None; MAX_STEPS];
    }

    /// Appends a step.
    pub fn push(&mut self, action: Action, deadline: Duration) -> Result<&mut Self, PlanFull> {
        if self.len == MAX_STEPS {
            return Err(PlanFull);
        }
        self.steps[self.len] = Some(Step { action, deadline });
        self.len += 1;
        Ok(self)
    }

    /// Sets the human-readable reason (truncated to [`REASON_MAX`] bytes at a
    /// character boundary). Use [`Plan::reason_writer`] to format without
    /// allocating.
    pub fn set_reason(&mut self, reason: &str) {
        self.reason_len = 0;
        let _ = std::fmt::Write::write_str(&mut self.reason_writer(), reason);
    }

    /// A `fmt::Write` that appends to the reason without allocating;
    /// output past [`REASON_MAX`] bytes is dropped.
    pub fn reason_writer(&mut self) -> ReasonWriter<'_> {
        ReasonWriter { plan: self }
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        std::str::from_utf8(&self.reason[..self.reason_len]).unwrap_or("")
    }

    /// The steps in order.
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.steps[..self.len].iter().flatten()
    }

    /// The `i`-th step.
    pub fn step(&self, i: usize) -> Option<&Step> {
        self.steps.get(i).and_then(Option::as_ref)
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the plan does nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when any step kills.
    pub fn kills(&self) -> bool {
        self.steps().any(|s| s.action.is_kill())
    }
}

/// See [`Plan::reason_writer`].
pub struct ReasonWriter<'a> {
    plan: &'a mut Plan,
}

impl std::fmt::Write for ReasonWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let p = &mut *self.plan;
        let room = REASON_MAX - p.reason_len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        p.reason[p.reason_len..p.reason_len + take].copy_from_slice(&s.as_bytes()[..take]);
        p.reason_len += take;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write;

    #[test]
    fn plan_is_bounded_and_reason_truncates_on_char_boundary() {
        let mut p = Plan::new();
        let cg = CgroupId::for_tests(1);
        for _ in 0..MAX_STEPS {
            p.push(Action::KillCgroup { cgroup: cg }, Duration::from_secs(1))
                .unwrap();
        }
        assert_eq!(
            p.push(Action::KillCgroup { cgroup: cg }, Duration::ZERO)
                .err(),
            Some(PlanFull)
        );
        assert!(p.kills());
        let long = "é".repeat(REASON_MAX);
        p.set_reason(&long);
        assert!(p.reason().len() <= REASON_MAX);
        assert!(p.reason().chars().all(|c| c == 'é'));
        p.clear();
        assert!(p.is_empty());
        write!(p.reason_writer(), "tier {} rss {}", 3, 42).unwrap();
        assert_eq!(p.reason(), "tier 3 rss 42");
    }
}
