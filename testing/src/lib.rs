//! A fake [`Host`] for testing handlers and the loop without a kernel.
//!
//! Cgroups are keyed by hierarchy path; `memory.current` of a cgroup is the
//! sum of its processes' RSS, its own extra `current`, and its
//! descendants'. Killed processes exit when the loop next asks (unless
//! listed in [`FakeHost::stuck`]); a group kill spares processes with
//! `oom_score_adj -1000`, as the kernel host does; every effect is appended
//! to [`FakeHost::log`].

use std::cell::Cell;
use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oomkit::cgroup::{Limit, MemoryEvents, MemoryStat, Pressure, PressureLine};
use oomkit::engine::{
    Act, CgroupId, CgroupStats, Engine, EngineConfig, Episode, Handler, Observe, ProcSample,
    SystemStats, Trigger, Victim, XattrInfo,
};

/// One fake cgroup.
#[derive(Debug, Clone, Default)]
pub struct FakeCg {
    /// Memory charged beyond its processes' RSS (page cache and the like).
    pub current: u64,
    /// `memory.high`.
    pub high: Option<Limit>,
    /// `memory.max`.
    pub max: Option<Limit>,
    /// `memory.oom.group`.
    pub oom_group: bool,
    /// `pgsteal` of `memory.stat`.
    pub pgsteal: u64,
    /// `full` total of `memory.pressure`, µs.
    pub full_us: u64,
    /// Processes directly in it.
    pub procs: Vec<ProcSample>,
    /// Its trusted xattrs.
    pub xattr: XattrInfo,
}

/// See the module docs.
pub struct FakeHost {
    /// The fake clock.
    pub now: Cell<Instant>,
    /// Cgroups by hierarchy path.
    pub cgs: HashMap<PathBuf, FakeCg>,
    /// Attached ids.
    pub ids: HashMap<CgroupId, PathBuf>,
    /// Processes that ignore SIGKILL (stuck in D state).
    pub stuck: Vec<i32>,
    /// (action, pid or 0, path)
    pub log: Vec<(&'static str, i32, PathBuf)>,
    /// Victims signalled so far.
    pub pending_exit: Vec<Victim>,
    /// The hierarchy path reported as oomkit's own cgroup.
    pub own_cgroup: PathBuf,
    /// Processes whose membership check fails when killed (as for a cgroup
    /// name the check cannot match): the kill reports them gone.
    pub not_member: Vec<i32>,
    /// Processes whose kill fails with this errno (EMFILE, EPERM …).
    pub kill_errno: Vec<(i32, rustix::io::Errno)>,
    /// PIDs a watchdog killed, reported to the loop one at a time.
    pub external_kills: Vec<i32>,
    /// Raises of `memory.max` recorded on cgroups (`Act::mark_raised`):
    /// `(old, raised)` by path; they outlive an engine, as the xattr does.
    pub raised_marks: HashMap<PathBuf, (Limit, Limit)>,
    /// How many times `read_usage` was called (what a decision read).
    pub usage_reads: usize,
}

/// A process sample with `rss_mib` MiB resident.
pub fn proc(pid: i32, rss_mib: u64) -> ProcSample {
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"work");
    ProcSample {
        pid,
        rss: rss_mib << 20,
        swap: 0,
        oom_score_adj: 0,
        uid: 1000,
        kernel_thread: false,
        comm,
    }
}

/// Whether a group kill spares `p` (`oom_score_adj -1000`).
fn unkillable(p: &ProcSample) -> bool {
    p.oom_score_adj <= -1000
}

impl Default for FakeHost {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeHost {
    /// A host with only the root cgroup `/`, own PID 4242, own cgroup `/system/oomkit`.
    pub fn new() -> Self {
        let mut cgs = HashMap::new();
        cgs.insert(PathBuf::from("/"), FakeCg::default());
        FakeHost {
            now: Cell::new(Instant::now()),
            cgs,
            ids: HashMap::new(),
            stuck: Vec::new(),
            log: Vec::new(),
            pending_exit: Vec::new(),
            own_cgroup: PathBuf::from("/system/oomkit"),
            not_member: Vec::new(),
            kill_errno: Vec::new(),
            external_kills: Vec::new(),
            raised_marks: HashMap::new(),
            usage_reads: 0,
        }
    }
    /// The cgroup at `path`, created if new.
    pub fn cg(&mut self, path: &str) -> &mut FakeCg {
        self.cgs.entry(PathBuf::from(path)).or_default()
    }
    /// The path of an attached id.
    pub fn path(&self, id: CgroupId) -> &Path {
        self.ids
            .get(&id)
            .map(PathBuf::as_path)
            .unwrap_or(Path::new("/gone"))
    }
    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        self.now.set(self.now.get() + d);
    }
    /// The kill entries of the log.
    pub fn kills(&self) -> Vec<(&'static str, i32, PathBuf)> {
        self.log
            .iter()
            .filter(|l| l.0.starts_with("kill"))
            .cloned()
            .collect()
    }
    /// Usage of a cgroup: its processes, its own `current`, and descendants.
    pub fn usage_of(&self, path: &Path) -> u64 {
        self.cgs
            .iter()
            .filter(|(p, _)| p.starts_with(path))
            .map(|(_, c)| c.procs.iter().map(|p| p.rss).sum::<u64>() + c.current)
            .sum()
    }
}

impl Observe for FakeHost {
    fn now(&self) -> Instant {
        self.now.get()
    }

    fn attach(&mut self, id: CgroupId, path: &Path) -> oomkit::Result<XattrInfo> {
        self.ids.insert(id, path.to_owned());
        Ok(self.cgs.entry(path.to_owned()).or_default().xattr)
    }

    fn detach(&mut self, id: CgroupId) {
        self.ids.remove(&id);
    }

    fn read_usage(&mut self, id: CgroupId, out: &mut CgroupStats) -> oomkit::Result<()> {
        self.usage_reads += 1;
        let p = self.path(id).to_owned();
        if !self.cgs.contains_key(&p) {
            return Err(oomkit::Error::CgroupGone { path: p });
        }
        out.current = Some(self.usage_of(&p));
        out.swap_current = Some(0);
        Ok(())
    }

    fn read_detail(&mut self, id: CgroupId, out: &mut CgroupStats) -> oomkit::Result<()> {
        let p = self.path(id).to_owned();
        let c = self
            .cgs
            .get(&p)
            .cloned()
            .ok_or(oomkit::Error::CgroupGone { path: p })?;
        out.high = c.high;
        out.max = c.max;
        out.oom_group = Some(c.oom_group);
        out.pgsteal = Some(c.pgsteal);
        out.pressure = Some(Pressure {
            some: PressureLine::default(),
            full: Some(PressureLine {
                total_us: c.full_us,
                ..PressureLine::default()
            }),
        });
        Ok(())
    }

    fn read_memory_stat(&mut self, _id: CgroupId, out: &mut MemoryStat) -> oomkit::Result<()> {
        out.anon = Some(1);
        Ok(())
    }

    fn read_processes(&mut self, id: CgroupId, out: &mut Vec<ProcSample>) -> oomkit::Result<()> {
        let p = self.path(id).to_owned();
        out.extend(
            self.cgs
                .get(&p)
                .map(|c| c.procs.clone())
                .unwrap_or_default(),
        );
        Ok(())
    }

    fn read_system(&mut self, out: &mut SystemStats) -> oomkit::Result<()> {
        out.meminfo = Some(oomkit::proc::MemInfo {
            mem_total: Some(1 << 30),
            ..Default::default()
        });
        Ok(())
    }

    fn own_pid(&self) -> i32 {
        4242
    }

    fn own_cgroup(&self) -> Option<&Path> {
        Some(&self.own_cgroup)
    }

    fn external_kill(&mut self) -> Option<i32> {
        self.external_kills.pop()
    }

    fn raised_mark(&mut self, id: CgroupId) -> Option<(Limit, Limit)> {
        self.raised_marks.get(self.path(id)).copied()
    }

    fn child_dirs(&self, id: CgroupId) -> Option<usize> {
        let p = self.ids.get(&id)?;
        Some(
            self.cgs
                .keys()
                .filter(|c| c.parent() == Some(p.as_path()))
                .count(),
        )
    }
}

impl Act for FakeHost {
    fn kill_process(&mut self, id: CgroupId, pid: i32) -> oomkit::Result<Victim> {
        let p = self.path(id).to_owned();
        self.log.push(("kill_process", pid, p.clone()));
        let c = self
            .cgs
            .get(&p)
            .ok_or(oomkit::Error::CgroupGone { path: p.clone() })?;
        if !c.procs.iter().any(|x| x.pid == pid) || self.not_member.contains(&pid) {
            return Err(oomkit::Error::ProcessGone { pid });
        }
        if let Some((_, e)) = self.kill_errno.iter().find(|(p, _)| *p == pid) {
            return Err(oomkit::Error::Sys {
                call: "pidfd_open",
                source: (*e).into(),
            });
        }
        let v = Victim::Process {
            pid,
            slot: 0,
            cgroup: id,
        };
        self.pending_exit.push(v);
        Ok(v)
    }

    fn kill_cgroup(&mut self, id: CgroupId) -> oomkit::Result<Victim> {
        let p = self.path(id).to_owned();
        self.log.push(("kill_cgroup", 0, p.clone()));
        // As the kernel host: processes with oom_score_adj -1000 are spared.
        let (mut total, mut spared) = (0u32, 0u32);
        for c in self.cgs.iter().filter(|(c, _)| c.starts_with(&p)) {
            total += c.1.procs.len() as u32;
            spared += c.1.procs.iter().filter(|x| unkillable(x)).count() as u32;
        }
        if spared > 0 && spared == total {
            return Err(oomkit::Error::InvalidArgument {
                what: "cgroup to kill",
                reason: format!(
                    "{} holds only processes with oom_score_adj -1000",
                    p.display()
                ),
            });
        }
        let v = Victim::Cgroup { cgroup: id, spared };
        self.pending_exit.push(v);
        Ok(v)
    }

    fn victim_exited(&mut self, victim: &Victim) -> oomkit::Result<bool> {
        // Victims die when the test lets time pass, unless stuck.
        match *victim {
            Victim::Process { pid, cgroup, .. } => {
                if self.stuck.contains(&pid) {
                    return Ok(false);
                }
                let p = self.path(cgroup).to_owned();
                if let Some(c) = self.cgs.get_mut(&p) {
                    c.procs.retain(|x| x.pid != pid);
                }
                Ok(true)
            }
            Victim::Cgroup { cgroup, .. } => {
                let p = self.path(cgroup).to_owned();
                for (path, c) in self.cgs.iter_mut() {
                    if path.starts_with(&p) {
                        c.procs.retain(unkillable);
                        c.current = 0;
                    }
                }
                Ok(true)
            }
            // A kind of victim this fake does not know has not exited.
            _ => Ok(false),
        }
    }

    fn victim_fd(&self, _victim: &Victim) -> Option<BorrowedFd<'_>> {
        None
    }

    fn release_victim(&mut self, _victim: &Victim) {}
    fn set_high(&mut self, id: CgroupId, limit: Limit) -> oomkit::Result<()> {
        let p = self.path(id).to_owned();
        self.log.push(("set_high", 0, p.clone()));
        self.cg(p.to_str().unwrap_or("/")).high = Some(limit);
        Ok(())
    }

    fn set_max(&mut self, id: CgroupId, limit: Limit) -> oomkit::Result<()> {
        let p = self.path(id).to_owned();
        self.log.push((
            "set_max",
            limit.bytes().map_or(-1, |b| (b >> 20) as i32),
            p.clone(),
        ));
        self.cg(p.to_str().unwrap_or("/")).max = Some(limit);
        Ok(())
    }

    fn mark_raised(&mut self, id: CgroupId, old: Limit, raised: Limit) -> oomkit::Result<()> {
        let p = self.path(id).to_owned();
        self.raised_marks.insert(p, (old, raised));
        Ok(())
    }

    fn clear_raised(&mut self, id: CgroupId) {
        let p = self.path(id).to_owned();
        self.raised_marks.remove(&p);
    }

    fn set_frozen(&mut self, id: CgroupId, frozen: bool) -> oomkit::Result<()> {
        let p = self.path(id).to_owned();
        self.log
            .push((if frozen { "freeze" } else { "thaw" }, 0, p));
        Ok(())
    }

    fn signal(&mut self, id: CgroupId, pid: i32, _signal: i32) -> oomkit::Result<()> {
        let p = self.path(id).to_owned();
        self.log.push(("signal", pid, p));
        Ok(())
    }
}

/// A real [`Engine`] over a [`FakeHost`] rooted at `/`, with the fake
/// host's cgroups added, and helpers to feed events and run the clock.
pub struct Rig {
    /// The engine.
    pub engine: Engine<FakeHost>,
}

// Test support: a setup that does not build is a bug in the test, and
// stopping there with the reason is what a test wants.
#[allow(clippy::expect_used)]
impl Rig {
    /// Builds the host with `setup`, then the engine with `handler`.
    pub fn new(
        cfg: EngineConfig,
        setup: impl FnOnce(&mut FakeHost),
        handler: Box<dyn Handler>,
    ) -> Self {
        let mut host = FakeHost::new();
        setup(&mut host);
        let mut paths: Vec<PathBuf> = host.cgs.keys().cloned().collect();
        paths.sort();
        let mut engine =
            Engine::new(cfg, host, handler, Path::new("/")).expect("engine over the fake host");
        for p in paths.iter().filter(|p| p.as_path() != Path::new("/")) {
            engine.add_cgroup(p).expect("fake cgroup");
        }
        Rig { engine }
    }
    /// The id of a managed path (panics if unknown: a test bug).
    pub fn id(&self, path: &str) -> CgroupId {
        self.engine
            .tree()
            .lookup(Path::new(path))
            .expect("managed path")
    }
    /// The fake host.
    pub fn host(&mut self) -> &mut FakeHost {
        self.engine.host_mut()
    }
    /// Feeds a `memory.events` delta of `path` at the fake clock's now.
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

/// A `memory.events` delta (a 5.10-style file: no `oom_group_kill`).
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
