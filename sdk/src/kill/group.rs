//! Killing a whole cgroup.

use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

use super::reap::with_nice_floor;
use super::{Membership, Mrelease, OOM_SCORE_ADJ_MIN, Pidfd, Signal, timespec};
use crate::cgroup::files::CGROUP_EVENTS;
use crate::cgroup::{Cgroup, CgroupEvents, parse};
use crate::error::{Error, Result};
use crate::proc::ProcDir;

/// How long one wait on `cgroup.events` sleeps before re-reading the file
/// anyway (kernfs wakes us at once on a change; plain files never do).
const POLL_SLICE: Duration = Duration::from_millis(10);
/// Between fallback rounds: how long to wait for the group to empty before
/// looking for processes that escaped (forked before the freeze took).
const ROUND_WAIT: Duration = Duration::from_millis(50);

/// How [`kill_cgroup`] kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupKillOptions {
    /// Use `cgroup.kill` when the kernel has it (5.14+). `false` forces
    /// the freeze-and-signal fallback.
    pub use_cgroup_kill: bool,
    /// `process_mrelease` every victim after SIGKILL.
    pub mrelease: bool,
    /// The least nice value the reaps run at (see
    /// [`Pidfd::reap`](super::Pidfd::reap)): `None`, the calling thread's
    /// own (the default: a library call leaves the thread as it is);
    /// `Some(0)`, normal weight even from a thread running raised.
    pub reap_nice: Option<i32>,
    /// Total time budget: signalling rounds and the wait for the group to
    /// empty (`populated 0`).
    pub deadline: Duration,
    /// Fallback: how long each round waits for `frozen 1` before signalling
    /// anyway.
    pub freeze_timeout: Duration,
    /// Spare processes with `oom_score_adj -1000`, as the kernel's own
    /// group OOM kill does: a subtree holding one is killed member by
    /// member (the fallback), skipping them, instead of with `cgroup.kill`,
    /// which takes every process.
    pub spare_unkillable: bool,
}

impl Default for GroupKillOptions {
    /// `cgroup.kill` if present, mrelease, 5 s deadline, 100 ms freeze wait,
    /// processes with `oom_score_adj -1000` spared.
    fn default() -> Self {
        GroupKillOptions {
            use_cgroup_kill: true,
            mrelease: true,
            reap_nice: None,
            deadline: Duration::from_secs(5),
            freeze_timeout: Duration::from_millis(100),
            spare_unkillable: true,
        }
    }
}

/// Which mechanism [`kill_cgroup`] used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum GroupKillPath {
    /// `cgroup.kill` (5.14+): the kernel SIGKILLs every process of the
    /// subtree, atomically with respect to forks.
    CgroupKill,
    /// Freeze (`cgroup.freeze`, 5.2+, if present), SIGKILL every member
    /// through a pidfd, thaw, repeat until empty.
    FreezeAndSignal,
}

/// What [`kill_cgroup`] did.
#[derive(Debug)]
pub struct GroupKillOutcome {
    /// The mechanism.
    pub path: GroupKillPath,
    /// When the kill began.
    pub started_at: Instant,
    /// Processes signalled. Exact for [`GroupKillPath::FreezeAndSignal`];
    /// for [`GroupKillPath::CgroupKill`] the processes still listed right
    /// after the write (the kernel signals them itself; a lower bound).
    pub signalled: usize,
    /// Fallback rounds (0 for `cgroup.kill`).
    pub rounds: u32,
    /// Fallback: whether `frozen 1` was seen in the first round (`None`
    /// when there is no `cgroup.freeze` or `cgroup.kill` was used).
    pub froze: Option<bool>,
    /// PIDs listed in `cgroup.procs` whose process turned out to be in
    /// another cgroup when checked (stale PIDs; not signalled).
    pub not_members: usize,
    /// Victims whose memory `process_mrelease` reaped.
    pub mreleased: usize,
    /// The group emptied (`populated 0`, or no process listed when the
    /// cgroup has no `cgroup.events`) before the deadline.
    pub emptied: bool,
    /// From the start to the last signal (or the `cgroup.kill` write).
    pub signalled_after: Option<Duration>,
    /// From the start to the group being seen empty.
    pub emptied_after: Option<Duration>,
    /// Members with `oom_score_adj -1000` left alive (in the last round),
    /// with [`GroupKillOptions::spare_unkillable`]. When not 0 the group
    /// never empties: the kill returns once every other member was
    /// signalled and has exited (or the deadline passed).
    pub spared: usize,
    /// The first unexpected per-process error (signalling or checking a
    /// member failed other than by the process being gone).
    pub first_error: Option<Error>,
}

/// Waits until `cgroup.events` satisfies `want` or `deadline` passes;
/// returns whether it did.
///
/// Polls the open file for `POLLPRI` (kernfs notifies each change) and
/// re-reads it at least every 10 ms, so it also works on plain files
/// (synthetic trees) and survives a missed notification.
pub fn wait_for_cgroup_events(
    cg: &Cgroup,
    deadline: Instant,
    mut want: impl FnMut(&CgroupEvents) -> bool,
) -> Result<bool> {
    let f = cg.open_file(CGROUP_EVENTS)?;
    let mut buf = [0u8; 512];
    loop {
        let data = f.read_into(&mut buf)?;
        let ev = parse::cgroup_events(data).map_err(|source| Error::Parse {
            path: f.path().to_owned(),
            source,
        })?;
        if want(&ev) {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let slice = (deadline - now).min(POLL_SLICE);
        let mut fds = [PollFd::new(&f, PollFlags::PRI)];
        match rustix::event::poll(&mut fds, Some(&timespec(slice))) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(Error::sys("poll", e)),
        }
    }
}

/// True if the hierarchy path `inner` is `outer` or below it.
fn contains(outer: &Path, inner: &[u8]) -> bool {
    Path::new(std::ffi::OsStr::from_bytes(inner)).starts_with(outer)
}

/// Refuses ([`Error::InvalidArgument`]) a cgroup that contains this
/// process or PID 1 (by the `0::` line of `/proc/self/cgroup` and
/// `/proc/1/cgroup`). Every group kill checks this first, whether it writes
/// `cgroup.kill` or signals members one by one.
pub fn check_group_target(cg: &Cgroup) -> Result<()> {
    for (who, dir) in [
        ("this process", ProcDir::open_self()),
        ("PID 1", ProcDir::open(1)),
    ] {
        let Ok(dir) = dir else { continue };
        let mut buf = [0u8; 4096];
        let Ok(data) = dir.read_into(c"cgroup", &mut buf) else {
            continue;
        };
        if let Some(p) = crate::proc::parse::cgroup_v2_path(data) {
            if contains(cg.hierarchy_path(), p) {
                return Err(Error::InvalidArgument {
                    what: "cgroup to kill",
                    reason: format!(
                        "{} contains {who} ({})",
                        cg.hierarchy_path().display(),
                        String::from_utf8_lossy(p)
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Calls `f` for every cgroup of the subtree (pre-order) with its PIDs.
/// Cgroups that vanish meanwhile are skipped; the root vanishing is an error.
fn walk(
    cg: &Cgroup,
    pids: &mut Vec<i32>,
    f: &mut dyn FnMut(&Cgroup, &[i32]),
    is_root: bool,
) -> Result<()> {
    match cg.procs_into(pids) {
        Ok(()) => f(cg, pids),
        Err(e) if e.is_gone() && !is_root => return Ok(()),
        Err(e) => return Err(e),
    }
    let names = match cg.children() {
        Ok(n) => n,
        Err(e) if e.is_gone() && !is_root => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in names {
        match cg.child(&name) {
            Ok(c) => walk(&c, pids, f, false)?,
            Err(e) if e.is_gone() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether the group is empty: `populated 0` if it has `cgroup.events`,
/// otherwise no PID listed in the subtree.
fn wait_empty(cg: &Cgroup, deadline: Instant) -> Result<bool> {
    match wait_for_cgroup_events(cg, deadline, |e| e.populated == Some(false)) {
        Ok(b) => Ok(b),
        Err(e) if e.is_unsupported() => {
            let mut n = 0;
            walk(cg, &mut Vec::new(), &mut |_, p| n += p.len(), true)?;
            Ok(n == 0)
        }
        Err(e) => Err(e),
    }
}

/// SIGKILLs every process of `cg` and its descendants and waits for the
/// group to empty.
///
/// With `cgroup.kill` (5.14+, unless disabled) the kernel does it
/// atomically. Otherwise, in rounds until nothing is left or the deadline:
/// freeze the subtree (`cgroup.freeze`, if present) and wait for
/// `frozen 1` so nobody forks meanwhile; open a pidfd for every listed PID,
/// check it is a member of the cgroup that listed it, SIGKILL it; thaw (a
/// frozen process dies only once thawed or, from 5.x, on a fatal signal).
/// Optionally `process_mrelease` each victim. Then wait for `populated 0`.
///
/// With [`GroupKillOptions::spare_unkillable`] (the default), processes
/// with `oom_score_adj -1000` are spared as the kernel's own group OOM kill
/// spares them: a subtree holding one is never given to `cgroup.kill`; the
/// fallback skips them ([`GroupKillOutcome::spared`]) and returns once the
/// others have exited, without waiting for a `populated 0` that cannot come.
///
/// Refuses ([`Error::InvalidArgument`]) a cgroup containing this process
/// or PID 1. A cgroup that vanishes meanwhile counts as emptied.
pub fn kill_cgroup(cg: &Cgroup, opts: &GroupKillOptions) -> Result<GroupKillOutcome> {
    check_group_target(cg)?;
    let start = Instant::now();
    let deadline = start + opts.deadline;
    let mut out = new_outcome(start);
    let mut pids = Vec::new();
    if try_cgroup_kill(cg, opts)? {
        out.signalled_after = Some(start.elapsed());
        match after_cgroup_kill(cg, opts, &mut out, &mut pids) {
            Ok(()) => {}
            Err(e) if e.is_gone() => {
                mark_emptied(&mut out);
                return Ok(out);
            }
            Err(e) => return Err(e),
        }
    } else {
        out.path = GroupKillPath::FreezeAndSignal;
        match fallback(cg, opts, deadline, &mut out, &mut pids) {
            Ok(()) => {}
            Err(e) if e.is_gone() => {
                mark_emptied(&mut out);
                return Ok(out);
            }
            Err(e) => return Err(e),
        }
        if out.emptied || out.spared > 0 {
            return Ok(out);
        }
    }
    match wait_empty(cg, deadline) {
        Ok(true) => mark_emptied(&mut out),
        Ok(false) => {}
        Err(e) if e.is_gone() => mark_emptied(&mut out),
        Err(e) => return Err(e),
    }
    Ok(out)
}

/// The outcome before anything was done, on the `cgroup.kill` path.
fn new_outcome(start: Instant) -> GroupKillOutcome {
    GroupKillOutcome {
        path: GroupKillPath::CgroupKill,
        started_at: start,
        signalled: 0,
        rounds: 0,
        froze: None,
        not_members: 0,
        mreleased: 0,
        spared: 0,
        emptied: false,
        signalled_after: None,
        emptied_after: None,
        first_error: None,
    }
}

/// The group is empty (or gone) now.
fn mark_emptied(out: &mut GroupKillOutcome) {
    out.emptied = true;
    out.emptied_after = Some(out.started_at.elapsed());
}

/// Writes `cgroup.kill` when asked to and allowed (no process to spare
/// below); false when the kernel lacks it, so the fallback runs.
fn try_cgroup_kill(cg: &Cgroup, opts: &GroupKillOptions) -> Result<bool> {
    if opts.use_cgroup_kill && !(opts.spare_unkillable && members(cg)?.unkillable > 0) {
        match cg.write_kill() {
            Ok(()) => return Ok(true),
            Err(e) if e.is_unsupported() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// After `cgroup.kill`: counts the processes it signalled and, if asked,
/// `process_mrelease`s each.
fn after_cgroup_kill(
    cg: &Cgroup,
    opts: &GroupKillOptions,
    out: &mut GroupKillOutcome,
    pids: &mut Vec<i32>,
) -> Result<()> {
    let mut seen = 0;
    let mut mreleased = 0;
    let r = walk(
        cg,
        pids,
        &mut |_, list| {
            seen += list.len();
            if opts.mrelease {
                with_nice_floor(opts.reap_nice, || {
                    for &pid in list {
                        if let Ok(p) = Pidfd::open(pid) {
                            if p.try_mrelease() == Mrelease::Done {
                                mreleased += 1;
                            }
                        }
                    }
                });
            }
        },
        true,
    );
    out.signalled = seen;
    out.mreleased = mreleased;
    r
}

fn fallback(
    cg: &Cgroup,
    opts: &GroupKillOptions,
    deadline: Instant,
    out: &mut GroupKillOutcome,
    pids: &mut Vec<i32>,
) -> Result<()> {
    // Victims signalled so far, kept open: a PID listed again is skipped
    // while its pinned process is still dying, and treated as a newcomer
    // once that process has exited (PID reuse).
    let mut victims: Vec<Pidfd> = Vec::new();
    loop {
        out.rounds += 1;
        let frozen = freeze(cg, opts, deadline, out)?;
        let mut pending = 0usize;
        let mut spared = 0usize;
        let mut fresh: Vec<Pidfd> = Vec::new();
        let r = walk(
            cg,
            pids,
            &mut |member_of, list| {
                for &pid in list {
                    match signal_member(pid, member_of, &victims, opts, out) {
                        Listed::Dying => pending += 1,
                        Listed::Spared => spared += 1,
                        Listed::Skipped => {}
                        Listed::Signalled(p) => {
                            pending += 1;
                            fresh.push(p);
                        }
                    }
                }
            },
            true,
        );
        if frozen {
            // Thaw even if the walk failed; a gone cgroup needs no thaw.
            match cg.set_frozen(false) {
                Ok(()) => {}
                Err(e) if e.is_gone() => {}
                Err(e) => return Err(e),
            }
        }
        r?;
        out.spared = spared;
        if opts.mrelease {
            with_nice_floor(opts.reap_nice, || {
                for v in &fresh {
                    if v.try_mrelease() == Mrelease::Done {
                        out.mreleased += 1;
                    }
                }
            });
        }
        victims.retain(|v| v.is_alive().unwrap_or(false));
        victims.append(&mut fresh);
        if pending == 0 {
            return Ok(());
        }
        let until = (Instant::now() + ROUND_WAIT).min(deadline);
        if wait_empty(cg, until)? {
            mark_emptied(out);
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Ok(());
        }
    }
}

/// Freezes the subtree (if `cgroup.freeze` exists) and waits for
/// `frozen 1`, so nobody forks while the round signals; true when frozen
/// (and so to be thawed). The first round records whether the freeze took.
fn freeze(
    cg: &Cgroup,
    opts: &GroupKillOptions,
    deadline: Instant,
    out: &mut GroupKillOutcome,
) -> Result<bool> {
    let frozen = match cg.set_frozen(true) {
        Ok(()) => true,
        Err(e) if e.is_unsupported() => false,
        Err(e) => return Err(e),
    };
    if frozen {
        let until = (Instant::now() + opts.freeze_timeout).min(deadline);
        let ok = match wait_for_cgroup_events(cg, until, |e| e.frozen == Some(true)) {
            Ok(b) => b,
            Err(e) if e.is_unsupported() => false,
            Err(e) => return Err(e),
        };
        if out.rounds == 1 {
            out.froze = Some(ok);
        }
    }
    Ok(frozen)
}

/// What one fallback round did with one listed PID.
enum Listed {
    /// A victim of an earlier round, still dying.
    Dying,
    /// Spared (`oom_score_adj -1000`).
    Spared,
    /// Not signalled: exited, not a member, or an error (noted).
    Skipped,
    /// SIGKILLed now.
    Signalled(Pidfd),
}

/// Pins `pid`, checks it is a member of the cgroup that listed it (and
/// not one to spare), and SIGKILLs it.
fn signal_member(
    pid: i32,
    member_of: &Cgroup,
    victims: &[Pidfd],
    opts: &GroupKillOptions,
    out: &mut GroupKillOutcome,
) -> Listed {
    if let Some(v) = victims.iter().find(|v| v.pid() == pid) {
        if v.is_alive().unwrap_or(false) {
            return Listed::Dying;
        }
    }
    let p = match Pidfd::open(pid) {
        Ok(p) => p,
        Err(e) => {
            note(out, e);
            return Listed::Skipped;
        }
    };
    match p.membership(member_of) {
        Ok(Membership::Member) => {}
        Ok(Membership::Elsewhere) => {
            out.not_members += 1;
            return Listed::Skipped;
        }
        Err(e) => {
            note(out, e);
            return Listed::Skipped;
        }
    }
    if opts.spare_unkillable {
        match unkillable(&p) {
            Ok(true) => return Listed::Spared,
            Ok(false) => {}
            Err(e) => {
                note(out, e);
                return Listed::Skipped;
            }
        }
    }
    match p.send_signal(Signal::KILL) {
        Ok(()) => {
            out.signalled += 1;
            out.signalled_after = Some(out.started_at.elapsed());
            Listed::Signalled(p)
        }
        Err(e) => {
            note(out, e);
            Listed::Skipped
        }
    }
}

/// Whether the pinned process has `oom_score_adj -1000`: read from
/// `/proc/PID/oom_score_adj`, then the pidfd is checked alive, so the value
/// read was that process's (a dead one is [`Error::ProcessGone`]).
fn unkillable(p: &Pidfd) -> Result<bool> {
    let adj = ProcDir::open(p.pid())?.oom_score_adj()?;
    if !p.is_alive()? {
        return Err(Error::ProcessGone { pid: p.pid() });
    }
    Ok(adj <= OOM_SCORE_ADJ_MIN)
}

/// The processes of a subtree: how many, and how many of them have
/// `oom_score_adj -1000`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Members {
    /// Every listed process still alive when read.
    pub(crate) total: usize,
    /// Those with `oom_score_adj -1000`.
    pub(crate) unkillable: usize,
}

impl Members {
    /// Counts `pid` if its `oom_score_adj` can be read (it is alive).
    fn add(&mut self, pid: i32) {
        let Ok(adj) = ProcDir::open(pid).and_then(|d| d.oom_score_adj()) else {
            return;
        };
        self.total += 1;
        if adj <= OOM_SCORE_ADJ_MIN {
            self.unkillable += 1;
        }
    }
}

/// How deep below the target [`members`] walks with fds and stack buffers
/// alone; a deeper subtree is counted the general way (which allocates).
/// Each level holds one fd (its directory, listed through it) and about
/// 1.5 KiB of stack; the kill path keeps far more fds free
/// (`kill/reserve.rs`).
const MEMBERS_FAST_DEPTH: u32 = 16;

/// Counts the processes of `cg` and its descendants, and those of them with
/// `oom_score_adj -1000` (a process that exits meanwhile is not counted; a
/// descendant removed meanwhile is skipped, `cg` itself gone is an error).
///
/// This runs between an event and a group kill, so it allocates nothing:
/// the subtree is walked through directory fds, and `cgroup.procs` and the
/// directory listings are streamed through stack buffers. Only if that
/// meets an error other than a removed descendant, or a subtree deeper
/// than [`MEMBERS_FAST_DEPTH`], is it counted again the general way, whose
/// error names the cgroup and file that failed.
pub(crate) fn members(cg: &Cgroup) -> Result<Members> {
    let mut m = Members::default();
    cg.for_each_pid(|pid| m.add(pid))?;
    let listed = crate::cgroup::hierarchy::reopen(cg.dir_fd())
        .map_err(|_| Fallback)
        .and_then(|list| members_below(list.as_fd(), 1, &mut m));
    if listed.is_ok() {
        return Ok(m);
    }
    let mut m = Members::default();
    walk(
        cg,
        &mut Vec::new(),
        &mut |_, list| list.iter().for_each(|&pid| m.add(pid)),
        true,
    )?;
    Ok(m)
}

/// Why [`members_below`] gave up: the general walk counts again.
#[derive(Debug)]
struct Fallback;

/// Adds the processes of every cgroup below the directory `dir` (opened
/// for this listing, `depth` levels below the target) to `m`, through fds
/// and stack buffers: each child is opened once, for its `cgroup.procs`
/// and its own listing. A child removed meanwhile (`ENOENT`, `ENODEV`) is
/// skipped.
fn members_below(
    dir: std::os::fd::BorrowedFd<'_>,
    depth: u32,
    m: &mut Members,
) -> std::result::Result<(), Fallback> {
    use crate::cgroup::hierarchy::{PidsError, for_each_child_in, pids_in};
    use rustix::fs::{Mode, OFlags};
    let gone = |e: Errno| matches!(e, Errno::NOENT | Errno::NODEV);
    let mut failed = false;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
    let listed = for_each_child_in(dir, &mut buf, |name| {
        if failed {
            return;
        }
        if depth > MEMBERS_FAST_DEPTH {
            failed = true;
            return;
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let child = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) if gone(e) => return,
            Err(_) => {
                failed = true;
                return;
            }
        };
        let procs = rustix::fs::openat(
            &child,
            crate::cgroup::files::CGROUP_PROCS,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        );
        let counted = match procs {
            Ok(fd) => pids_in(fd.as_fd(), |pid| m.add(pid)),
            Err(e) => Err(PidsError::Read(e)),
        };
        match counted {
            Ok(_) => {}
            Err(PidsError::Read(e)) if gone(e) => return,
            Err(_) => {
                failed = true;
                return;
            }
        }
        if members_below(child.as_fd(), depth + 1, m).is_err() {
            failed = true;
        }
    });
    match listed {
        Ok(_) if !failed => Ok(()),
        Err(e) if gone(e) && depth > 1 => Ok(()),
        _ => Err(Fallback),
    }
}

fn note(out: &mut GroupKillOutcome, e: Error) {
    if !e.is_gone() && out.first_error.is_none() {
        out.first_error = Some(e);
    }
}

#[cfg(test)]
#[path = "group_tests.rs"]
mod tests;
