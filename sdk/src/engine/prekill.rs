//! Pre-kill hooks: something that must happen before a kill, given a moment.
//!
//! In the shape of oomd's prekill hooks: the loop *fires* every hook for
//! the coming kill, then *polls* those that asked to be waited for, on its
//! acting ticks, until each says it is done or the deadline passes; then it
//! kills. A hook can delay a kill, never prevent it: the wait is bounded by
//! what the hook asked for and by the step's own deadline.
//!
//! Hooks fire once per plan: at a pre-kill step
//! ([`Action::CaptureDiagnostics`](super::Action::CaptureDiagnostics)) just
//! before the loop sends the process its signal — so a hook can note what
//! exists before the process reacts — or else just before the plan's first
//! kill. A heap-profile hook waits for the dump the signal asked for; an
//! executable hook would start a program and wait for it to exit.
//!
//! The hooks live beside the [`Host`](super::Host), not in it: a host
//! observes and acts on the kernel, a hook is policy the daemon adds.

use std::path::Path;
use std::time::Duration;

use super::types::CgroupId;

/// What a pre-kill hook is told about the coming kill.
#[derive(Debug, Clone, Copy)]
pub struct PrekillTarget<'a> {
    /// The cgroup of the victim.
    pub cgroup: CgroupId,
    /// Its hierarchy path.
    pub path: &'a Path,
    /// The victim process, when one process is killed (or asked for diagnostics).
    pub pid: Option<i32>,
    /// The signal the loop sends `pid` right after firing the hooks (a
    /// diagnostics request), if any.
    pub signal: Option<i32>,
    /// 0 for the first victim of the episode, then 1, 2 … for escalations.
    pub escalation: u32,
}

/// One pre-kill hook. See the module docs.
pub trait PrekillHook {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// The loop is about to act on `target`: start what must happen first.
    /// Returns how long the loop should wait for it at most (`None`:
    /// nothing to wait for). Must not block; runs on the loop's thread.
    fn fire(&mut self, target: &PrekillTarget<'_>) -> Option<Duration>;

    /// Polled on acting ticks after [`fire`](Self::fire) asked to be
    /// waited for: true once done.
    fn poll(&mut self) -> bool;
}

/// The registered hooks and which of them the loop is waiting for.
#[derive(Default)]
pub(super) struct Hooks {
    hooks: Vec<Box<dyn PrekillHook>>,
    pending: Vec<bool>,
    /// The hooks fired for the plan being run.
    pub(super) fired: bool,
}

impl Hooks {
    pub(super) fn add(&mut self, hook: Box<dyn PrekillHook>) {
        self.hooks.push(hook);
        self.pending.push(false);
    }

    /// Fires every hook; the longest wait asked for, if any.
    pub(super) fn fire(&mut self, target: &PrekillTarget<'_>) -> Option<Duration> {
        self.fired = true;
        let mut wait = None;
        for (hook, pending) in self.hooks.iter_mut().zip(&mut self.pending) {
            let asked = hook.fire(target);
            tracing::debug!(hook = hook.name(), ?asked, "pre-kill hook fired");
            *pending = asked.is_some();
            wait = wait.max(asked);
        }
        wait
    }

    /// Polls the hooks still pending; true when none is.
    pub(super) fn poll(&mut self) -> bool {
        for (hook, pending) in self.hooks.iter_mut().zip(&mut self.pending) {
            if *pending && hook.poll() {
                *pending = false;
            }
        }
        !self.pending.contains(&true)
    }

    /// Stops waiting for any hook.
    pub(super) fn cancel(&mut self) {
        self.pending.iter_mut().for_each(|p| *p = false);
    }
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.hooks.iter().map(|h| h.name()).collect();
        f.debug_struct("Hooks")
            .field("hooks", &names)
            .field("fired", &self.fired)
            .finish()
    }
}
