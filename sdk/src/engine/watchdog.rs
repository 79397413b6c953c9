//! The watchdog: a second thread that acts if the main loop stalls.
//!
//! The main loop marks itself busy (a timestamp in an atomic) whenever it
//! handles a wakeup, and pokes an eventfd so the watchdog starts timing.
//! When idle, both threads sleep: no timer wakeups. If the loop stays busy
//! longer than the timeout — stuck in a handler, in D state on a read, or
//! starved — the watchdog applies a simple, safe policy on its own: kill
//! the largest process of the lowest-priority unprotected cgroup, never
//! anything in oomkit's own cgroup or its ancestors, and never a process
//! whose kill would free (nearly) nothing (the engine's rule). Its stack, target table and
//! scan buffer are allocated when it starts (its log lines may still allocate); the kernel
//! OOM killer stays the last fallback.
//!
//! A busy loop alone is no reason to kill: cgroup churn or a slow disk
//! can keep it busy with no memory shortage at all. So the watchdog acts
//! only while pressure is present (the loop had memory events or an
//! episode pending, system PSI shows memory stalls, or memory is nearly
//! gone), at most once per stall, and tells the loop what it killed so the
//! episode ends with that one kill instead of a second one.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd, poll};

use crate::cgroup::ParkedCgroup;
use crate::engine::MIN_VICTIM_FREE;
use crate::error::{Error, Result};
use crate::kill::Pidfd;
use crate::proc::{self, ProcessInfo};

/// Watchdog settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchdogConfig {
    /// How long the main loop may stay busy before the watchdog acts.
    pub timeout: Duration,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            timeout: Duration::from_secs(2),
        }
    }
}

/// A cgroup the watchdog may choose from.
#[derive(Debug)]
pub(crate) struct Target {
    /// Opened when the watchdog acts (no fd held meanwhile).
    pub(crate) cg: ParkedCgroup,
    pub(crate) path: PathBuf,
    pub(crate) priority: i32,
    pub(crate) protected: bool,
}

/// Whether a stall (lasting the given time) happens under memory pressure.
pub(crate) type PressureCheck = Box<dyn FnMut(Duration) -> bool + Send>;

/// State shared with the main loop.
pub(crate) struct Shared {
    epoch: Instant,
    busy_since_us: AtomicU64,
    stop: AtomicBool,
    fired: AtomicU64,
    no_pressure: AtomicU64,
    /// Set by the main loop while memory events or an episode are pending.
    pub(crate) events_pending: AtomicBool,
    /// The PID the watchdog last killed, until the loop takes it (0: none).
    last_kill: AtomicI32,
    pressure: Mutex<Option<PressureCheck>>,
    pub(crate) targets: Mutex<Vec<Target>>,
    own_cgroup: Option<PathBuf>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("fired", &self.fired)
            .field("own_cgroup", &self.own_cgroup)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn new(own_cgroup: Option<PathBuf>) -> Self {
        Shared {
            epoch: Instant::now(),
            busy_since_us: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            fired: AtomicU64::new(0),
            no_pressure: AtomicU64::new(0),
            events_pending: AtomicBool::new(false),
            last_kill: AtomicI32::new(0),
            pressure: Mutex::new(None),
            targets: Mutex::new(Vec::with_capacity(1024)),
            own_cgroup,
        }
    }

    /// Replaces the pressure test (tests; the default reads the loop's
    /// pending flag, system PSI and `MemAvailable`).
    #[cfg(test)]
    pub(crate) fn set_pressure_check(&self, f: PressureCheck) {
        if let Ok(mut p) = self.pressure.lock() {
            *p = Some(f);
        }
    }

    /// The PID the watchdog killed since the last call, if any.
    pub(crate) fn take_kill(&self) -> Option<i32> {
        match self.last_kill.swap(0, Ordering::AcqRel) {
            0 => None,
            pid => Some(pid),
        }
    }

    fn under_pressure(&self, stalled: Duration) -> bool {
        if let Ok(mut p) = self.pressure.lock() {
            if let Some(f) = p.as_mut() {
                return f(stalled);
            }
        }
        self.events_pending.load(Ordering::Acquire) || system_pressure()
    }
}

/// System memory pressure as the watchdog judges it on its own: tasks
/// stalled on memory over the last 10 s (PSI `some avg10` above 1 %), or
/// less than 1 % of memory available.
fn system_pressure() -> bool {
    let mut buf = [0u8; 512];
    let psi = crate::cgroup::CgroupFile::open_path("/proc/pressure/memory", false)
        .ok()
        .and_then(|f| {
            f.read_into(&mut buf)
                .ok()
                .and_then(|d| crate::cgroup::parse::pressure(d).ok())
        });
    if psi.is_some_and(|p| p.some.avg10 > 1.0) {
        return true;
    }
    proc::meminfo().ok().is_some_and(
        |m| matches!((m.mem_available, m.mem_total), (Some(a), Some(t)) if a < t / 100),
    )
}

/// What the watchdog does when the loop stalls (replaceable in tests).
pub(crate) type Action = Box<dyn FnMut(&Shared) + Send>;

/// A running watchdog.
#[derive(Debug)]
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

/// The watchdog thread's stack (half of the 256 KiB it had): its deepest
/// path (scan one cgroup's processes, kill one, log a line) has no
/// recursion, and its largest stack buffer is 16 KiB (reading a `/proc`
/// file).
const WATCHDOG_STACK: usize = 128 << 10;

fn micros(epoch: Instant) -> u64 {
    (epoch.elapsed().as_micros() as u64).max(1)
}

impl Watchdog {
    pub(crate) fn spawn(
        cfg: WatchdogConfig,
        own_cgroup: Option<PathBuf>,
        action: Option<Action>,
    ) -> Result<Self> {
        let wake = Arc::new(
            eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
                .map_err(|e| Error::sys("eventfd", e))?,
        );
        let shared = Arc::new(Shared::new(own_cgroup));
        let (s, w) = (shared.clone(), wake.clone());
        let mut action = action.unwrap_or_else(|| {
            // The scan of the target's processes reuses this buffer: sized
            // now, not when the loop has stalled and memory may be gone.
            let mut procs: Vec<ProcessInfo> = Vec::with_capacity(SCAN_ROOM);
            Box::new(move |s: &Shared| default_action(s, &mut procs))
        });
        let thread = std::thread::Builder::new()
            .name("oomkit-watchdog".into())
            // Started after the memory lock, under `MCL_FUTURE`: every page
            // of its stack is resident and locked from the start.
            .stack_size(WATCHDOG_STACK)
            .spawn(move || run(&s, &w, cfg.timeout, &mut action))
            .map_err(|e| Error::sys("spawning the watchdog thread", e))?;
        Ok(Watchdog {
            shared,
            wake,
            thread: Some(thread),
        })
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The state shared with the thread, for the host to take its kills.
    pub(crate) fn shared_arc(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Stalls passed over because no memory pressure was present.
    pub(crate) fn stalls_without_pressure(&self) -> u64 {
        self.shared.no_pressure.load(Ordering::Acquire)
    }

    /// The main loop starts handling a wakeup.
    pub(crate) fn busy(&self) {
        if self.shared.busy_since_us.load(Ordering::Relaxed) == 0 {
            self.shared
                .busy_since_us
                .store(micros(self.shared.epoch), Ordering::Release);
            let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
        }
    }

    /// The main loop is about to sleep.
    pub(crate) fn idle(&self) {
        self.shared.busy_since_us.store(0, Ordering::Release);
    }

    /// Times the watchdog acted.
    pub(crate) fn fired(&self) -> u64 {
        self.shared.fired.load(Ordering::Acquire)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait(fd: &OwnedFd, timeout: Option<Duration>) {
    let ts = timeout.map(|t| rustix::event::Timespec {
        tv_sec: t.as_secs() as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let _ = poll(&mut fds, ts.as_ref());
    let mut buf = [0u8; 8];
    let _ = rustix::io::read(fd, &mut buf);
}

fn run(s: &Shared, wake: &OwnedFd, timeout: Duration, action: &mut Action) {
    let timeout_us = timeout.as_micros() as u64;
    // The stall being watched (its busy timestamp), and whether it was
    // acted on or counted as pressure-free.
    let mut stall = 0u64;
    let mut acted = false;
    let mut counted = false;
    while !s.stop.load(Ordering::Acquire) {
        let busy = s.busy_since_us.load(Ordering::Acquire);
        if busy == 0 {
            wait(wake, None);
            continue;
        }
        if busy != stall {
            (stall, acted, counted) = (busy, false, false);
        }
        let elapsed = micros(s.epoch).saturating_sub(busy);
        if elapsed < timeout_us {
            wait(wake, Some(Duration::from_micros(timeout_us - elapsed)));
            continue;
        }
        // At most one action per stall, and only under pressure; a stall
        // without pressure is looked at again each timeout, as pressure
        // may build while it lasts.
        if !acted {
            if s.under_pressure(Duration::from_micros(elapsed)) {
                acted = true;
                s.fired.fetch_add(1, Ordering::AcqRel);
                action(s);
            } else if !counted {
                counted = true;
                s.no_pressure.fetch_add(1, Ordering::AcqRel);
                tracing::warn!(
                    stalled_ms = elapsed / 1000,
                    "watchdog: the main loop is busy, but there is no memory pressure; not acting"
                );
            }
        }
        wait(wake, Some(timeout));
    }
}

fn contains(own: Option<&Path>, p: &Path) -> bool {
    own.is_some_and(|o| o.starts_with(p))
}

/// The target to act on: the lowest-priority, then largest, unprotected
/// cgroup that has processes of its own. In cgroup v2 only leaves hold
/// processes while a parent's `memory.current` includes its children, so a
/// parent must not win the choice and leave nothing to kill.
fn pick(s: &Shared, targets: &[Target]) -> Option<usize> {
    let mut best: Option<(i32, u64, usize)> = None;
    for (i, t) in targets.iter().enumerate() {
        if t.protected || contains(s.own_cgroup.as_deref(), &t.path) {
            continue;
        }
        let Ok(cg) = t.cg.open() else { continue };
        let Ok(cur) = cg.memory_current() else {
            continue;
        };
        if !matches!(cg.for_each_pid(|_| {}), Ok(n) if n > 0) {
            continue;
        }
        let better = best.is_none_or(|(p, c, _)| {
            (t.priority, std::cmp::Reverse(cur)) < (p, std::cmp::Reverse(c))
        });
        if better {
            best = Some((t.priority, cur, i));
        }
    }
    best.map(|(_, _, i)| i)
}

/// The process the watchdog kills in its target: the largest that may be
/// killed at all, if its kill frees at least [`MIN_VICTIM_FREE`] — the
/// engine's own rule (`guard.rs`): a sleeper whose kill frees nothing is
/// no answer to a stall, whatever made the loop busy.
fn victim(procs: &[ProcessInfo], own: i32) -> Option<&ProcessInfo> {
    procs
        .iter()
        .filter(|p| crate::kill::never_kill(p.pid, own, p.kernel_thread, p.oom_score_adj).is_none())
        .filter(|p| p.rss + p.swap >= MIN_VICTIM_FREE)
        .max_by_key(|p| p.rss + p.swap)
}

/// Processes of its target the watchdog reads without growing its scan
/// buffer (a larger target grows it, once).
const SCAN_ROOM: usize = 256;

/// Kill the largest process of the lowest-priority unprotected cgroup,
/// reading its processes into `procs` (kept by the thread).
fn default_action(s: &Shared, procs: &mut Vec<ProcessInfo>) {
    tracing::error!("watchdog: the main loop is stalled; acting on its own");
    let Ok(targets) = s.targets.try_lock() else {
        tracing::error!("watchdog: target table busy; leaving it to the kernel OOM killer");
        return;
    };
    let Some(i) = pick(s, &targets) else {
        tracing::error!(
            "watchdog: no unprotected cgroup with processes; leaving it to the kernel OOM killer"
        );
        return;
    };
    let t = &targets[i];
    let cg = match t.cg.open() {
        Ok(cg) => cg,
        Err(e) => {
            tracing::error!(error = %e, cgroup = %t.path.display(), "watchdog: opening the target failed");
            return;
        }
    };
    if let Err(e) = proc::scan_into(&cg, procs) {
        tracing::error!(error = %e, cgroup = %t.path.display(), "watchdog: scanning the target failed");
        return;
    }
    let Some(v) = victim(procs, std::process::id() as i32) else {
        tracing::error!(
            cgroup = %t.path.display(),
            "watchdog: no process in the target may be killed and would free memory; leaving it to the kernel OOM killer"
        );
        return;
    };
    match Pidfd::open_in(&cg, v.pid).and_then(|fd| {
        fd.kill()?;
        let _ = fd.try_mrelease();
        Ok(())
    }) {
        Ok(()) => {
            s.last_kill.store(v.pid, Ordering::Release);
            tracing::error!(
                pid = v.pid,
                comm = v.comm.as_str(),
                cgroup = %t.path.display(),
                "watchdog killed a process"
            )
        }
        Err(e) => tracing::error!(error = %e, "watchdog kill failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn picks_a_cgroup_with_processes_not_a_larger_parent() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |rel: &str, current: u64, procs: &str| {
            let d = dir.path().join(rel);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("memory.current"), format!("{current}\n")).unwrap();
            std::fs::write(d.join("cgroup.procs"), procs).unwrap();
        };
        // A parent slice (larger: it includes its children), its leaf, a
        // protected big leaf, and a higher-priority leaf.
        mk("slice", 900, "");
        mk("slice/leaf", 300, "4242\n");
        mk("vip", 5000, "77\n");
        mk("svc", 2000, "88\n");
        let fs = crate::cgroup::CgroupFs::from_dir_unchecked(dir.path());
        let t = |rel: &str, priority: i32, protected: bool| Target {
            cg: fs.open(dir.path().join(rel)).unwrap().park().unwrap(),
            path: PathBuf::from("/").join(rel),
            priority,
            protected,
        };
        let targets = vec![
            t("slice", 0, false),
            t("slice/leaf", 0, false),
            t("vip", 0, true),
            t("svc", 10, false),
        ];
        let shared = Shared::new(Some(PathBuf::from("/oomkit")));
        assert_eq!(
            pick(&shared, &targets),
            Some(1),
            "the leaf, not its larger parent"
        );
        // With the leaf gone, the higher-priority cgroup is all that is left.
        assert_eq!(pick(&shared, &targets[..1]), None);
        assert_eq!(pick(&shared, &[t("svc", 10, false)]), Some(0));
    }

    /// The watchdog's victim frees something: a sleeper under
    /// `MIN_VICTIM_FREE` is never chosen (a loaded fresh-clone CI run saw a
    /// bystander sleeper die in `adversarial_churn_without_pressure`), nor an
    /// `oom_score_adj -1000` process, nor oomkit itself.
    #[test]
    fn the_victim_frees_something() {
        let p = |pid: i32, mib: u64, adj: i16| ProcessInfo {
            pid,
            rss: mib << 20,
            oom_score_adj: adj,
            ..ProcessInfo::default()
        };
        assert_eq!(victim(&[p(10, 1, 0), p(11, 3, 0)], 1), None, "sleepers");
        let procs = [p(10, 1, 0), p(11, 64, -1000), p(12, 9, 0), p(1, 90, 0)];
        assert_eq!(victim(&procs, 1).map(|v| v.pid), Some(12));
        assert_eq!(victim(&procs, 12).map(|v| v.pid), None, "itself");
    }

    /// A watchdog with a 50 ms timeout whose action sends the time it acted.
    fn watched() -> (Watchdog, mpsc::Receiver<Instant>) {
        let (tx, rx) = mpsc::channel();
        let action: Action = Box::new(move |_s: &Shared| {
            let _ = tx.send(Instant::now());
        });
        let wd = Watchdog::spawn(
            WatchdogConfig {
                timeout: Duration::from_millis(50),
            },
            None,
            Some(action),
        )
        .unwrap();
        (wd, rx)
    }

    /// Issue 10, defect 3: one action per stall, however long it lasts (it
    /// used to act again every two timeouts: 10 actions in a 1 s stall).
    #[test]
    fn one_action_per_stall() {
        let (wd, rx) = watched();
        wd.shared().set_pressure_check(Box::new(|_| true));
        wd.busy();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("watchdog acted");
        // The stall goes on for 12 more timeouts: no second action.
        assert!(
            rx.recv_timeout(Duration::from_millis(600)).is_err(),
            "acted twice in one stall"
        );
        assert_eq!(wd.fired(), 1);
        // A new stall may be acted on again.
        wd.idle();
        wd.busy();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("acted on the next stall");
        wd.idle();
    }

    /// Issue 10, defect 3: a busy loop with no memory pressure (cgroup
    /// churn, a slow disk) is not a reason to kill.
    #[test]
    fn no_action_without_pressure() {
        let (wd, rx) = watched();
        let (ptx, prx) = mpsc::channel();
        wd.shared().set_pressure_check(Box::new(move |_| {
            let _ = ptx.send(());
            false
        }));
        wd.busy();
        // Wait until the watchdog has judged the stall, then some more.
        prx.recv_timeout(Duration::from_secs(10))
            .expect("the stall was judged");
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "acted without pressure"
        );
        assert_eq!(wd.fired(), 0);
        assert!(wd.stalls_without_pressure() >= 1);
        wd.idle();
    }

    #[test]
    fn acts_once_when_the_loop_stays_busy_and_never_when_idle() {
        let (wd, rx) = watched();
        wd.shared().set_pressure_check(Box::new(|_| true));
        // Idle: the watchdog sleeps on the eventfd and cannot fire.
        assert_eq!(wd.fired(), 0);
        let start = Instant::now();
        wd.busy();
        let fired_at = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("watchdog acted");
        assert!(fired_at.duration_since(start) >= Duration::from_millis(50));
        assert_eq!(wd.fired(), 1);
        wd.idle();
        drop(wd); // joins the thread: must not hang
    }
}
