//! One turn of the [`Runner`]'s loop: wait, turn ready events into
//! triggers, let the engine decide, then the off-path work (directory
//! changes, warm-up, incident records). Kept apart from the set-up in
//! `runner.rs` so the decision path reads in one place, step by step.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::events::{EventKind, Interest, Source, Token};
use crate::reserve;

use super::super::host::Act;
use super::super::{Episode, Trigger};
use super::{Binding, Runner, Turn};

impl Runner {
    pub(super) fn turn(&mut self, timeout: Option<Duration>, turn: &mut Turn) -> Result<()> {
        let wait = self.wait_time(timeout);
        if let Some(wd) = &self.watchdog {
            wd.idle();
        }
        let events = self.watcher.wait(wait)?;
        let faults_before = crate::sys::major_faults();
        let was_busy = self.engine.in_episode();
        self.batch.clear();
        self.batch.extend_from_slice(events.as_slice());
        if let Some(wd) = &self.watchdog {
            wd.busy();
        }
        self.decide(turn);
        self.count_faults(was_busy, faults_before);
        self.sync_victim_fd();
        self.watchdog_after_decisions();
        // Off the hot path from here.
        self.apply_dir_changes();
        self.rebalance_over_cap(Instant::now());
        self.warm_up_if_grown();
        while let Some(ep) = self.engine.take_finished() {
            self.record(&ep);
            turn.finished.push(ep);
        }
        Ok(())
    }

    /// How long this turn may wait: until `timeout` or the engine's next
    /// tick, whichever is sooner, and not at all while directory changes
    /// are still queued.
    fn wait_time(&self, timeout: Option<Duration>) -> Option<Duration> {
        let now = Instant::now();
        let tick = self
            .engine
            .next_wake()
            .map(|w| w.saturating_duration_since(now));
        let wait = match (timeout, tick) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Directory changes still queued: look at events, but do not sleep.
        if self.dir_changes.is_empty() {
            wait
        } else {
            Some(Duration::ZERO)
        }
    }

    /// The decision path: the batch of ready events becomes triggers, the
    /// engine judges them, and ticks when one is due or the victim exited.
    fn decide(&mut self, turn: &mut Turn) {
        let seen = Instant::now();
        self.triggers.clear();
        // The engine judges progress with the machine's latest rates.
        if let Some(Source::Machine(m)) = self.machine_token.and_then(|t| self.watcher.source(t)) {
            self.engine
                .on_machine(m.monitor().active(), *m.monitor().sample());
        }
        let mut victim_ready = false;
        for i in 0..self.batch.len() {
            let ev = self.batch[i];
            victim_ready |= self.dispatch(ev, seen, turn);
        }
        if let Some(wd) = &self.watchdog {
            // Memory events or an episode pending: a stall now is one the
            // watchdog may act on.
            let pending = !self.triggers.is_empty() || self.engine.in_episode();
            wd.shared().events_pending.store(pending, Ordering::Release);
        }
        for i in 0..self.triggers.len() {
            let (trigger, at) = self.triggers[i];
            self.engine.on_event(trigger, at);
        }
        // `next_wake` is absolute, so a tick that came due during the wait
        // compares as due now.
        let now = Instant::now();
        if self.engine.next_wake().is_some_and(|w| w <= now) || victim_ready {
            self.engine.on_tick(now);
        }
    }

    /// Adds this turn's major page faults to the episode's counts (those
    /// up to the kill, and all of them).
    fn count_faults(&mut self, was_busy: bool, faults_before: u64) {
        if was_busy || self.engine.in_episode() || self.engine.has_finished() {
            let faults = crate::sys::major_faults().saturating_sub(faults_before);
            self.episode_faults += faults;
            if !self.kill_sent {
                self.faults_to_kill += faults;
                self.kill_sent =
                    self.engine.pending_victim().is_some() || self.engine.has_finished();
            }
        }
    }

    /// Ends the watchdog's heartbeat for this turn's decisions.
    fn watchdog_after_decisions(&self) {
        if let Some(wd) = &self.watchdog {
            // The heartbeat covers the decision path only: directory
            // changes, rescans and incident records below are no stall.
            wd.idle();
            wd.shared()
                .events_pending
                .store(self.engine.in_episode(), Ordering::Release);
            if let Some(pid) = wd.shared().take_kill() {
                tracing::warn!(
                    pid,
                    "the watchdog killed, but the loop had no kill to replace"
                );
            }
        }
    }

    /// Turns one ready event into a trigger, a directory change or a ready
    /// caller fd; true when it is the victim's pidfd.
    fn dispatch(&mut self, ev: crate::events::Event, seen: Instant, turn: &mut Turn) -> bool {
        let Some(binding) = self.bindings.get(&ev.token).copied() else {
            return false;
        };
        match (binding, ev.kind) {
            (Binding::MemoryEvents(cgroup), EventKind::MemoryEvents(change)) => {
                self.triggers.push((
                    Trigger::MemoryEvents {
                        cgroup,
                        delta: change.delta,
                    },
                    seen,
                ));
            }
            (Binding::LocalEvents, EventKind::Fd(_)) => {
                if let Some(local) = &mut self.local {
                    let host = self.engine.host();
                    local.drain(host, seen, &mut self.triggers);
                }
            }
            (Binding::Psi(cgroup), EventKind::Pressure(_)) => {
                self.triggers.push((Trigger::Pressure { cgroup }, seen));
            }
            (Binding::Machine, EventKind::Machine(ch)) => {
                tracing::info!(
                    fired = %ch.fired,
                    cleared = %ch.cleared,
                    active = %ch.active,
                    headroom_mib = ch.sample.headroom >> 20,
                    fill_mib_s = ch.sample.fill_rate >> 20,
                    refault_mib_s = ch.sample.refault_rate >> 20,
                    steal_mib_s = ch.sample.steal_rate >> 20,
                    "machine signals changed"
                );
                if !ch.fired.is_empty() {
                    self.triggers.push((
                        Trigger::Machine {
                            signals: ch.active,
                            sample: ch.sample,
                        },
                        seen,
                    ));
                }
            }
            (Binding::Dir, EventKind::Dir(d)) => {
                if let Some(Source::Dir(dw)) = self.watcher.source(ev.token) {
                    if let Some(rel) = dw.rel_path(d.parent) {
                        self.dir_changes
                            .push((d.change, self.root_hier.join(rel).join(d.name.as_os_str())));
                    }
                }
            }
            (Binding::Dir, EventKind::DirOverflow) => {
                tracing::warn!("directory watch overflowed; rescanning");
                self.rescan_pending();
            }
            (Binding::Victim, _) => return true,
            (Binding::User, EventKind::Fd(_)) => turn.ready.push(ev.token),
            // A watched cgroup was removed; the dir watch removes it from the tree.
            (_, EventKind::Gone) => {}
            // A failed watch (inotify watch limit, EMFILE) leaves cgroups
            // untracked: that must be visible.
            (_, EventKind::Failed(f)) => tracing::warn!(failure = %f, "event source failed"),
            _ => {}
        }
        false
    }

    /// Runs the warm-up decision (if asked for) when the tree has grown by
    /// a quarter (at least 16 cgroups) since the last one: the snapshot of
    /// a larger tree touches table room no decision has touched yet.
    pub(super) fn warm_up_if_grown(&mut self) {
        let Some(last) = self.warmed else { return };
        let now = self.engine.tree().len();
        if self.engine.in_episode() || (last > 0 && now < last + (last / 4).max(16)) {
            return;
        }
        if last == 0 && self.relock.is_some() {
            // Start-up code (configuration, logging set-up, the tree walk)
            // leaves the resident set; the warm-up maps the hot path again.
            match reserve::drop_start_up_pages() {
                Ok(b) => {
                    tracing::debug!(kib = b >> 10, "start-up pages dropped before the warm-up")
                }
                Err(e) => tracing::debug!(error = %e, "dropping start-up pages failed"),
            }
        }
        let t = Instant::now();
        if self.engine.warm_up().is_none() {
            return;
        }
        if last == 0 {
            self.phases.warm_up = t.elapsed();
        }
        self.warmed = Some(now);
        // Lock what the warm-up touched (the first time: the deferred step).
        if let Some(lock) = &self.relock {
            let t = Instant::now();
            let step = reserve::lock_memory(lock);
            if last == 0 {
                self.phases.lock = t.elapsed();
                tracing::info!(status = ?step.status, "reserve mode: memory locked after the warm-up");
            } else {
                tracing::debug!(status = ?step.status, cgroups = now, "memory locked again after the tree grew");
            }
            if let Some(rep) = &mut self.reserve {
                rep.set(step);
            }
        }
    }

    /// Puts the pending victim's pidfd into the epoll, so its exit wakes us.
    fn sync_victim_fd(&mut self) {
        let pending = self.engine.pending_victim();
        if self.victim.map(|v| v.1) == pending {
            return;
        }
        if let Some((tok, _)) = self.victim.take() {
            self.bindings.remove(&tok);
            let _ = self.watcher.remove(tok);
        }
        let Some(v) = pending else { return };
        let Some(fd) = self
            .engine
            .host()
            .victim_fd(&v)
            .and_then(|f| f.try_clone_to_owned().ok())
        else {
            return;
        };
        let tok = Token(self.next_user);
        self.next_user += 1;
        if self.watcher.add_fd(fd, Interest::READABLE, tok).is_ok() {
            self.bindings.insert(tok, Binding::Victim);
            self.victim = Some((tok, v));
        }
    }

    fn record(&mut self, ep: &Episode) {
        // Pages of the handler read from disk while it handled the episode:
        // what reserve mode is there to keep at 0.
        tracing::info!(
            episode = ep.id,
            outcome = ?ep.outcome,
            major_faults_to_kill = self.faults_to_kill,
            major_faults = self.episode_faults,
            "episode page faults"
        );
        self.episode_faults = 0;
        self.faults_to_kill = 0;
        self.kill_sent = false;
        #[cfg(feature = "serde")]
        if let Some(sink) = &self.incidents {
            if ep.is_action() {
                let rec = super::super::incident::to_json(
                    ep,
                    self.engine.tree(),
                    self.engine.handler_name(),
                    self.engine.config().dry_run,
                );
                match sink.write(rec, ep.id) {
                    Ok(p) => {
                        tracing::info!(episode = ep.id, file = %p.display(), "incident recorded")
                    }
                    Err(e) => tracing::warn!(error = %e, "writing the incident record failed"),
                }
            }
        }
    }
}
