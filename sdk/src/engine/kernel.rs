//! [`KernelHost`]: the [`Host`] of a real system, mapping the loop's effects
//! onto the SDK's primitives.
//!
//! Everything it needs on the hot path is opened or allocated when a cgroup
//! is attached: a pidfd slot table, a process scan buffer, a `memory.stat`
//! value with room for unknown keys, the system PSI file, `memory.current`
//! fds as far as the open-file limit leaves room. A cgroup's directory is
//! not kept open: it is opened on demand (`handles`), allocation-free, for
//! the reads and the kill that need it. Reads go through stack buffers.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cgroup::{Cgroup, CgroupFile, CgroupFs, Limit, MemoryStat, ParkedCgroup, files};
use crate::error::{Error, Result};
use crate::kill::{self, GroupKillOptions, Pidfd, Signal};
use crate::proc::{self, ProcessInfo};

use super::handles::{Handle, Handles, Present};
use super::host::{Act, Observe, Victim};
use super::tree::XattrTrust;
use super::types::{CgroupId, CgroupStats, ProcSample, SystemStats, XattrInfo};

const VICTIM_SLOTS: usize = 8;

/// Where a raised `memory.max` is recorded (`old raised`) until restored:
/// on the cgroup, in a namespace only a privileged process can write.
const RAISED_XATTR: &str = "trusted.oomkit.raised";

fn when<T>(present: bool, read: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
    if present { read().map(Some) } else { Ok(None) }
}

/// The real host. See the module docs.
#[derive(Debug)]
pub struct KernelHost {
    fs: CgroupFs,
    /// The device of the cgroup2 filesystem, once an attached directory
    /// passed the `fstatfs(2)` check on it.
    checked_dev: Option<u64>,
    /// Whether `memory.events` counts descendants' events on that device
    /// (see `memory_events_hierarchical`), read once per device.
    events_mount: Option<(u64, bool)>,
    cgroups: Handles,
    /// `memory.current` kept open per cgroup: one `pread` per read instead
    /// of open + read + close (the snapshot reads it for every cgroup). A
    /// bare fd: its path, for errors, is the cgroup's.
    current: Vec<Option<OwnedFd>>,
    /// How many more `memory.current` fds may be kept open: what the
    /// open-file limit leaves after the fds every cgroup needs anyway.
    current_budget: usize,
    /// Whether the system has swap (`SwapTotal` > 0); without it,
    /// `memory.swap.current` is not read at all.
    swap_on: bool,
    present: Vec<Present>,
    /// The files found in the last cgroup attached, by its parent's path:
    /// siblings have the same controllers (their parent's
    /// `cgroup.subtree_control`), so the next sibling skips nine `stat`s.
    probed: Option<(PathBuf, Present)>,
    /// Within a batch of attaches (`begin_batch`): the parent directory of
    /// the last attach, open, and its owner.
    batch: Option<Option<batch::BatchParent>>,
    victims: [Option<Pidfd>; VICTIM_SLOTS],
    scan: Vec<ProcessInfo>,
    stat: MemoryStat,
    system_psi: Option<CgroupFile>,
    own_pid: i32,
    own_cgroup: Option<PathBuf>,
    trust: XattrTrust,
    root_owner: Option<u32>,
    has_cgroup_kill: Option<bool>,
    mrelease: bool,
    reap_nice: Option<i32>,
    /// Placeholder fds closed just before a kill's opens (see `kill::reserve`).
    fd_reserve: kill::FdReserve,
    watchdog: Option<Arc<super::watchdog::Shared>>,
}

impl KernelHost {
    /// A host for cgroups under `fs`.
    pub fn new(fs: CgroupFs, trust: XattrTrust, max_cgroups: usize, max_processes: usize) -> Self {
        let own_cgroup = fs
            .of_process(None)
            .ok()
            .map(|c| c.hierarchy_path().to_path_buf());
        let system_psi = CgroupFile::open_path("/proc/pressure/memory", false).ok();
        KernelHost {
            fs,
            checked_dev: None,
            events_mount: None,
            cgroups: Handles::with_capacity(max_cgroups),
            present: Vec::with_capacity(max_cgroups),
            probed: None,
            batch: None,
            current: Vec::with_capacity(max_cgroups),
            current_budget: {
                let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
                    .current
                    .map_or(usize::MAX, |v| usize::try_from(v).unwrap_or(usize::MAX));
                // One fd per cgroup left for what a runner may need besides
                // (an fd for memory.events.local where its inotify watch
                // fails), plus slack for on-demand opens and kills.
                soft.saturating_sub(max_cgroups.saturating_add(512))
            },
            swap_on: proc::meminfo()
                .ok()
                .and_then(|m| m.swap_total)
                .is_none_or(|t| t > 0),
            fd_reserve: kill::FdReserve::new(kill::RESERVED_FDS),
            victims: Default::default(),
            scan: Vec::with_capacity(max_processes),
            stat: MemoryStat {
                other: Vec::with_capacity(128),
                ..MemoryStat::default()
            },
            system_psi,
            own_pid: std::process::id() as i32,
            own_cgroup,
            trust,
            root_owner: None,
            has_cgroup_kill: None,
            mrelease: true,
            reap_nice: Some(0),
            watchdog: None,
        }
    }

    /// Overrides which cgroup counts as oomkit's own (hierarchy path). The
    /// loop never acts on it or its ancestors. Read from `/proc/self/cgroup`
    /// at construction; set it again if the process moves.
    pub fn set_own_cgroup(&mut self, path: Option<PathBuf>) {
        self.own_cgroup = path;
    }

    /// The watchdog whose kills the loop adopts (see [`Observe::external_kill`]).
    pub(crate) fn set_watchdog(&mut self, shared: Option<Arc<super::watchdog::Shared>>) {
        self.watchdog = shared;
    }

    /// Whether to `process_mrelease` victims (default on).
    pub fn set_mrelease(&mut self, on: bool) {
        self.mrelease = on;
    }

    /// The least nice value a victim's reap runs at: default `Some(0)`,
    /// normal weight even when the loop's thread runs raised; `None`, the
    /// thread's own. See [`Pidfd::reap`](crate::kill::Pidfd::reap).
    pub fn set_reap_nice(&mut self, nice_floor: Option<i32>) {
        self.reap_nice = nice_floor;
    }

    /// Opens the directory of an attached cgroup (its fd lives as long as
    /// the handle): [`Error::CgroupDetached`] for an id not attached,
    /// [`Error::CgroupGone`] for a cgroup removed meanwhile, or replaced by
    /// a new one at its path. No fd is kept per cgroup.
    pub fn cgroup(&self, id: CgroupId) -> Result<Cgroup> {
        match self.cgroups.get(id)? {
            Handle::Kept(cg) => cg.try_clone(),
            Handle::Opened(cg) => Ok(cg),
        }
    }

    /// [`KernelHost::cgroup`] in an `Arc`, for a handle shared with another
    /// thread (`None` when it is detached or gone).
    pub fn cgroup_shared(&self, id: CgroupId) -> Option<Arc<Cgroup>> {
        self.cgroup(id).ok().map(Arc::new)
    }

    /// The open handle of a cgroup (the kept one of the cgroup attached
    /// last, or opened now).
    pub(crate) fn handle(&self, id: CgroupId) -> Result<Handle<'_>> {
        self.cgroups.get(id)
    }

    /// The handle of `id`, moving out the one kept since its attach (so
    /// the runner's own use right after attaching opens nothing and keeps
    /// no fd).
    pub(crate) fn take_attached(&mut self, id: CgroupId) -> Result<Cgroup> {
        match self.cgroups.take_last(id) {
            Some(cg) => Ok(cg),
            None => self.cgroup(id),
        }
    }

    /// Keeps at most `n` `memory.current` fds open (see
    /// `RunnerConfig::usage_fds`): lowers the budget the open-file limit
    /// gave. For the cgroups attached from now on.
    pub(crate) fn limit_usage_fds(&mut self, n: usize) {
        self.current_budget = self.current_budget.min(n.saturating_sub(self.usage_fds()));
    }

    /// How many `memory.current` fds are kept open.
    pub(crate) fn usage_fds(&self) -> usize {
        self.current.iter().filter(|f| f.is_some()).count()
    }

    /// Cgroup `id` without an fd, for the watchdog thread to open when it acts.
    pub(crate) fn parked(&self, id: CgroupId) -> Option<ParkedCgroup> {
        self.cgroups.parked(id).cloned()
    }

    /// The cgroup filesystem.
    pub fn fs(&self) -> &CgroupFs {
        &self.fs
    }

    fn cg(&self, id: CgroupId) -> Result<Handle<'_>> {
        self.cgroups.get(id)
    }

    fn free_slot(&self) -> Option<usize> {
        self.victims.iter().position(Option::is_none)
    }
}

impl Observe for KernelHost {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn attach(&mut self, id: CgroupId, path: &Path) -> Result<XattrInfo> {
        // One fstat: the owner, the identity the handle is parked with, and
        // the device (the cgroup2 check is made once per device).
        let (cg, st) = self.open_for_attach(path)?;
        let dev = crate::cgroup::mount::stat_dev(&st);
        self.checked_dev = Some(dev);
        self.note_events_mount(dev);
        if self.is_batch_parent(path) {
            // The kept parent attached (again): open and read it again.
            self.forget_parent();
        }
        let owner = Some(st.st_uid);
        if self.root_owner.is_none() {
            self.root_owner = owner;
        }
        if self.has_cgroup_kill.is_none() {
            self.has_cgroup_kill = cg.has_file(files::CGROUP_KILL).ok();
        }
        // Most cgroups carry no oomkit xattr: one flistxattr instead of a
        // read per key (priority, protected, a raised limit's record).
        let marked = cg.may_have_xattr(b"oomkit.");
        let read = |key| {
            if marked {
                self.trust.read(&cg, key, self.root_owner)
            } else {
                None
            }
        };
        let priority = read("oomkit.priority")
            .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse::<i32>().ok());
        let protected = read("oomkit.protected").is_some_and(|v| v.trim_ascii() == b"1");
        let i = id.index();
        if self.present.len() <= i {
            self.present.resize_with(i + 1, Present::default);
            self.current.resize_with(i + 1, || None);
        }
        self.present[i] = match (&self.probed, crate::util::path_parent(path)) {
            (Some((p, known)), Some(parent)) if p == parent => *known,
            (_, parent) => {
                let found = Present::probe(&cg);
                self.probed = parent.map(|p| (p.to_path_buf(), found));
                found
            }
        };
        self.present[i].marked = marked;
        self.current[i] = if self.present[i].current && self.current_budget > 0 {
            let f = rustix::fs::openat(
                cg.dir_fd(),
                files::MEMORY_CURRENT,
                OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
            )
            .ok();
            if f.is_some() {
                self.current_budget -= 1;
            }
            f
        } else {
            None
        };
        // Whoever owns the parent directory chose this one's name (and
        // may own it): a tenant below a delegation boundary.
        let root_owner = self.root_owner;
        let trusted_owner = |o: u32| o == 0 || Some(o) == root_owner;
        let delegated = !owner.is_some_and(trusted_owner)
            || self.parent_owner(&cg).is_some_and(|o| !trusted_owner(o));
        let delegated = delegated && self.root_owner.is_some();
        self.cgroups.insert(id, cg, &st);
        Ok(XattrInfo {
            priority,
            protected,
            delegated,
        })
    }

    fn detach(&mut self, id: CgroupId) {
        // A directory removed: a parent re-created at a cached path is another.
        self.forget_parent();
        self.cgroups.remove(id);
        if let Some(slot) = self.current.get_mut(id.index()) {
            if slot.take().is_some() {
                self.current_budget += 1;
            }
        }
    }

    fn read_usage(&mut self, id: CgroupId, out: &mut CgroupStats) -> Result<()> {
        if !self.cgroups.contains(id) {
            return Err(Error::CgroupDetached { index: id.index() });
        }
        let has = self.present.get(id.index()).copied().unwrap_or_default();
        // One `pread` of the kept fd: a number and a newline fit the buffer
        // whole, so a short read is the whole file. Anything else (an
        // error, an empty or a full buffer) goes the long way, which names
        // the file and tells a removed cgroup apart.
        let mut buf = [0u8; 32];
        let quick = self
            .current
            .get(id.index())
            .and_then(Option::as_ref)
            .and_then(|f| rustix::io::pread(f, &mut buf, 0).ok())
            .filter(|n| (1..buf.len()).contains(n))
            .and_then(|n| buf.get(..n))
            .and_then(|data| crate::cgroup::parse::single_u64(data).ok());
        // The directory is opened only when a file must be read through it.
        out.current = match quick {
            Some(v) => Some(v),
            None => when(has.current, || self.cg(id)?.memory_current())?,
        };
        out.swap_current = if self.swap_on {
            when(has.swap, || self.cg(id)?.swap_current())?
        } else {
            has.swap.then_some(0)
        };
        Ok(())
    }

    fn read_detail(&mut self, id: CgroupId, out: &mut CgroupStats) -> Result<()> {
        let cg = self.cgroups.get(id)?;
        let has = self.present.get(id.index()).copied().unwrap_or_default();
        out.high = when(has.high, || cg.memory_high())?;
        out.max = when(has.max, || cg.memory_max())?;
        out.oom_group = when(has.oom_group, || cg.oom_group())?;
        out.events_local = when(has.events_local, || cg.memory_events_local())?;
        out.populated = when(has.cgroup_events, || cg.cgroup_events())?.and_then(|e| e.populated);
        out.pressure = when(has.pressure, || cg.memory_pressure())?;
        let stat = &mut self.stat;
        out.pgsteal = match when(has.stat, || cg.memory_stat_into(stat))? {
            Some(()) => stat.pgsteal,
            None => None,
        };
        Ok(())
    }

    fn read_memory_stat(&mut self, id: CgroupId, out: &mut MemoryStat) -> Result<()> {
        self.cg(id)?.memory_stat_into(out)
    }

    fn read_processes(&mut self, id: CgroupId, out: &mut Vec<ProcSample>) -> Result<()> {
        let cg = self.cgroups.get(id)?;
        proc::scan_into(&cg, &mut self.scan)?;
        for p in &self.scan {
            let mut comm = [0u8; 16];
            let b = p.comm.as_bytes();
            let n = b.len().min(16);
            comm[..n].copy_from_slice(&b[..n]);
            out.push(ProcSample {
                pid: p.pid,
                rss: p.rss,
                swap: p.swap,
                oom_score_adj: p.oom_score_adj,
                uid: p.euid,
                kernel_thread: p.kernel_thread,
                comm,
            });
        }
        Ok(())
    }

    fn read_system(&mut self, out: &mut SystemStats) -> Result<()> {
        out.meminfo = proc::meminfo().ok();
        out.vmstat = proc::vmstat().ok();
        out.pressure = match &self.system_psi {
            Some(f) => {
                let mut buf = [0u8; 512];
                f.read_into(&mut buf)
                    .ok()
                    .and_then(|d| crate::cgroup::parse::pressure(d).ok())
            }
            None => None,
        };
        Ok(())
    }

    fn own_pid(&self) -> i32 {
        self.own_pid
    }

    fn own_cgroup(&self) -> Option<&Path> {
        self.own_cgroup.as_deref()
    }

    fn external_kill(&mut self) -> Option<i32> {
        self.watchdog.as_ref()?.take_kill()
    }

    fn raised_mark(&mut self, id: CgroupId) -> Option<(Limit, Limit)> {
        if !self.present.get(id.index()).is_some_and(|p| p.marked) {
            return None;
        }
        let v = self.cg(id).ok()?.xattr(RAISED_XATTR).ok()??;
        let s = std::str::from_utf8(&v).ok()?;
        let (old, raised) = s.split_once(' ')?;
        let parse = |t: &str| crate::cgroup::parse::limit(t.as_bytes()).ok();
        Some((parse(old)?, parse(raised)?))
    }

    fn child_dirs(&self, id: CgroupId) -> Option<usize> {
        // Counted, not collected: the guard asks this between an event and
        // a group kill, which allocate nothing.
        self.cg(id).ok()?.child_count().ok()
    }
}

impl Act for KernelHost {
    fn warm_up(&mut self) {
        // The calls `kill_process` and `victim_exited` make, on oomkit's own
        // pidfd: open, poll, and a release that a live process refuses.
        if let Ok(fd) = Pidfd::open(self.own_pid) {
            let _ = fd.is_alive();
            let _ = fd.try_mrelease();
        }
        // The calls `kill_cgroup` makes before its write, on oomkit's own
        // cgroup if it is a leaf (a walk of a larger subtree, such as the
        // root's, is no cost to pay at start): the count of its members,
        // and the target check, which refuses this one.
        let own = self.own_cgroup.as_deref();
        let leaf = own
            .and_then(|p| self.fs.open_hierarchy(p).ok())
            .filter(|cg| cg.child_count().is_ok_and(|n| n == 0));
        if let Some(cg) = leaf {
            let _ = kill::members(&cg);
            let _ = kill::check_group_target(&cg);
        }
    }

    fn kill_process(&mut self, id: CgroupId, pid: i32) -> Result<Victim> {
        let _fds = self.fd_reserve.release();
        let slot = self.free_slot().ok_or(Error::TooManyVictims {
            limit: VICTIM_SLOTS,
        })?;
        // Opened after the reserve's fds are closed: room even at EMFILE.
        let cg = self.cgroups.get(id)?;
        let fd = Pidfd::open_in(&cg, pid)?;
        fd.kill()?;
        if self.mrelease {
            // Reaps the address space now, as the kernel's oom_reaper does,
            // at no more than normal weight (see `kill::reap`).
            if let kill::Renice::NotRestored(errno) = fd.reap(self.reap_nice).renice {
                tracing::warn!(
                    errno,
                    "could not restore this thread's priority after reaping a victim"
                );
            }
        }
        self.victims[slot] = Some(fd);
        Ok(Victim::Process {
            pid,
            slot: slot as u32,
            cgroup: id,
        })
    }

    fn kill_cgroup(&mut self, id: CgroupId) -> Result<Victim> {
        let _fds = self.fd_reserve.release();
        let cg = self.cg(id)?;
        let cg = &*cg;
        // `cgroup.kill` takes every process; the kernel's own group OOM kill
        // spares `oom_score_adj -1000`, and so do we: a subtree holding one
        // is killed member by member, skipping it. (Only a privileged
        // process can lower a score to -1000, so a tenant cannot slip one in
        // between this count and the write.)
        let unkillable = kill::members(cg)?.unkillable;
        if self.has_cgroup_kill == Some(true) && unkillable == 0 {
            // The fallback below checks this itself; `cgroup.kill` must too.
            kill::check_group_target(cg)?;
            // Non-blocking: the loop waits for `populated 0` itself.
            cg.write_kill()?;
            return Ok(Victim::Cgroup {
                cgroup: id,
                spared: 0,
            });
        }
        // Before 5.14, or sparing: freeze, pidfd-kill every member, thaw, repeat.
        let out = kill::kill_cgroup(
            cg,
            &GroupKillOptions {
                use_cgroup_kill: false,
                mrelease: self.mrelease,
                reap_nice: self.reap_nice,
                deadline: Duration::from_secs(1),
                freeze_timeout: Duration::from_millis(100),
                spare_unkillable: true,
            },
        )?;
        if let Some(e) = out.first_error {
            tracing::warn!(error = %e, "group kill fallback met an error");
        }
        if out.signalled == 0 && out.spared > 0 {
            return Err(Error::InvalidArgument {
                what: "cgroup to kill",
                reason: format!(
                    "{} holds only processes with oom_score_adj -1000 ({})",
                    cg.hierarchy_path().display(),
                    out.spared
                ),
            });
        }
        Ok(Victim::Cgroup {
            cgroup: id,
            spared: u32::try_from(out.spared).unwrap_or(u32::MAX),
        })
    }

    fn victim_exited(&mut self, victim: &Victim) -> Result<bool> {
        match *victim {
            Victim::Process { slot, .. } => {
                match self.victims.get(slot as usize).and_then(Option::as_ref) {
                    Some(fd) => fd.is_alive().map(|a| !a),
                    None => Ok(true),
                }
            }
            // Only the spared processes may be left: done once nobody else is.
            Victim::Cgroup { cgroup, spared } if spared > 0 => {
                match self.cg(cgroup).and_then(|cg| kill::members(&cg)) {
                    Ok(m) => Ok(m.total == m.unkillable),
                    Err(e) if e.is_gone() => Ok(true),
                    Err(e) => Err(e),
                }
            }
            Victim::Cgroup { cgroup, .. } => {
                match self.cg(cgroup).and_then(|cg| cg.cgroup_events()) {
                    Ok(e) => Ok(e.populated == Some(false)),
                    Err(e) if e.is_gone() => Ok(true),
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn victim_fd(&self, victim: &Victim) -> Option<BorrowedFd<'_>> {
        match *victim {
            Victim::Process { slot, .. } => self
                .victims
                .get(slot as usize)
                .and_then(Option::as_ref)
                .map(AsFd::as_fd),
            Victim::Cgroup { .. } => None,
        }
    }

    fn release_victim(&mut self, victim: &Victim) {
        if let Victim::Process { slot, .. } = *victim {
            if let Some(s) = self.victims.get_mut(slot as usize) {
                *s = None;
            }
        }
    }

    fn set_high(&mut self, id: CgroupId, limit: Limit) -> Result<()> {
        self.cg(id)?.set_memory_high(limit)
    }

    fn set_max(&mut self, id: CgroupId, limit: Limit) -> Result<()> {
        self.cg(id)?.set_memory_max(limit)
    }

    fn set_frozen(&mut self, id: CgroupId, frozen: bool) -> Result<()> {
        self.cg(id)?.set_frozen(frozen)
    }

    fn mark_raised(&mut self, id: CgroupId, old: Limit, raised: Limit) -> Result<()> {
        self.cg(id)?
            .set_xattr(RAISED_XATTR, format!("{old} {raised}").as_bytes())
    }

    fn clear_raised(&mut self, id: CgroupId) {
        if let Ok(cg) = self.cg(id) {
            if let Err(e) = cg.remove_xattr(RAISED_XATTR) {
                tracing::warn!(error = %e, "removing the record of a raised memory.max failed");
            }
        }
    }

    fn signal(&mut self, id: CgroupId, pid: i32, signal: i32) -> Result<()> {
        let sig = Signal::from_raw(signal).ok_or_else(|| Error::InvalidArgument {
            what: "signal",
            reason: format!("{signal} is not a signal number"),
        })?;
        let _fds = self.fd_reserve.release();
        let cg = self.cg(id)?;
        Pidfd::open_in(&cg, pid)?.send_signal(sig)
    }
}

#[path = "kernel_batch.rs"]
mod batch;
