//! A rig running a real `Engine` over the SDK's `FakeHost`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use oomkit::cgroup::MemoryEvents;
use oomkit::engine::fake::FakeHost;
use oomkit::engine::{CgroupId, Engine, EngineConfig, Episode, Handler, Host, Trigger};

pub struct Rig {
    pub engine: Engine<FakeHost>,
}

impl Rig {
    pub fn new(
        cfg: EngineConfig,
        setup: impl FnOnce(&mut FakeHost),
        handler: Box<dyn Handler>,
    ) -> Self {
        let mut host = FakeHost::new();
        setup(&mut host);
        let mut paths: Vec<PathBuf> = host.cgs.keys().cloned().collect();
        paths.sort();
        let mut engine = Engine::new(cfg, host, handler, Path::new("/")).unwrap();
        for p in paths.iter().filter(|p| p.as_path() != Path::new("/")) {
            engine.add_cgroup(p).unwrap();
        }
        Rig { engine }
    }
    pub fn id(&self, path: &str) -> CgroupId {
        self.engine.tree().lookup(Path::new(path)).unwrap()
    }
    pub fn host(&mut self) -> &mut FakeHost {
        self.engine.host_mut()
    }
    pub fn event(&mut self, path: &str, delta: MemoryEvents) {
        let id = self.id(path);
        let at = self.engine.host().now();
        self.engine
            .on_event(Trigger::MemoryEvents { cgroup: id, delta }, at);
    }
    /// Runs ticks until idle or `limit` passes, advancing the fake clock.
    pub fn run(&mut self, limit: Duration) -> Vec<Episode> {
        let mut done: Vec<Episode> = self.engine.take_finished().into_iter().collect();
        let end = self.engine.host().now() + limit;
        while let Some(wake) = self.engine.next_wake() {
            let now = self.engine.host().now();
            if wake > end {
                break;
            }
            if wake > now {
                self.engine.host().advance(wake - now);
            } else {
                self.engine.host().advance(Duration::from_millis(1));
            }
            let at = self.engine.host().now();
            self.engine.on_tick(at);
            done.extend(self.engine.take_finished());
        }
        done
    }
    /// Advances the clock by `d`, ticking on the way (for quiet ticks).
    pub fn advance(&mut self, d: Duration, step: Duration) -> Vec<Episode> {
        let mut done: Vec<Episode> = self.engine.take_finished().into_iter().collect();
        let end = self.engine.host().now() + d;
        while self.engine.host().now() < end {
            self.engine.host().advance(step);
            let at = self.engine.host().now();
            self.engine.on_tick(at);
            done.extend(self.engine.take_finished());
        }
        done
    }
    /// PIDs (or 0 for cgroups) and paths killed so far.
    pub fn kills(&mut self) -> Vec<(i32, String)> {
        self.host()
            .kills()
            .into_iter()
            .map(|(_, pid, p)| (pid, p.display().to_string()))
            .collect()
    }
}

/// `memory.events` deltas.
pub fn ev(high: u64, max: u64, oom: u64) -> MemoryEvents {
    MemoryEvents {
        low: Some(0),
        high: Some(high),
        max: Some(max),
        oom: Some(oom),
        oom_kill: Some(0),
        oom_group_kill: None,
        sock_throttled: None,
    }
}

/// An urgent event (`max` and `oom` rose): the engine decides at once.
pub fn urgent() -> MemoryEvents {
    ev(0, 1, 1)
}

/// Engine settings for tests: act on first sight, no re-check.
pub fn eager() -> EngineConfig {
    EngineConfig {
        progress_aware: false,
        recheck: false,
        ..EngineConfig::default()
    }
}
