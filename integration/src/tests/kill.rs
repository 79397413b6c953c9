//! Kill primitives on real kernels: pidfd kill with `process_mrelease`, the stale-PID guarantees
//! of pidfds (an exited process gives `ProcessGone`, and a reused PID's new owner is never
//! signalled), and group kill of a fork storm via `cgroup.kill` and via the freeze-and-signal
//! fallback (the only path on 5.10).

use std::time::{Duration, Instant};

use oomkit::Error;
use oomkit::kill::{self, GroupKillOptions, GroupKillPath, KillOptions, Mrelease, Pidfd, Signal};
use oomkit::probe::Support;

use super::common::{features, require, wait_memory_current};
use crate::harness::{Ctx, Fail, Outcome, TestResult, read_file, wait_for, write_file};
use crate::workload::{Workload, WorkloadKind};
use crate::{ensure, fail};

/// SIGKILL through a pidfd plus `process_mrelease`: the victim's memory leaves its cgroup.
pub fn pidfd_kill_mrelease(ctx: &mut Ctx) -> TestResult {
    let (path, cg) = ctx.cgroup("victim")?;
    let skip = require("process_mrelease", features(&cg).process_mrelease, (5, 15))?;
    let mut hog = ctx.spawn(
        &path,
        WorkloadKind::HogHold {
            mib: 64,
            step_mib: 16,
        },
    )?;
    hog.wait_line("done", Duration::from_secs(60))?;
    let before = cg.memory_current()?;
    ensure!(
        before >= 64 << 20,
        "memory.current {before} < 64 MiB with a 64 MiB hog"
    );
    let victim = Pidfd::open_in(&cg, hog.pid())?;
    let t = Instant::now();
    let out = kill::kill_process(
        &victim,
        &KillOptions {
            grace: None,
            mrelease: true,
            deadline: Duration::from_secs(10),
        },
    )?;
    ensure!(out.sigkill_sent && out.exited, "kill_process: {out:?}");
    let after = wait_memory_current(
        &cg,
        "memory.current < 4 MiB after the kill",
        Duration::from_secs(10),
        |c| c < 4 << 20,
    )?;
    let freed_after = t.elapsed();
    let mrelease_ok = match (&skip, out.mreleased) {
        (Some(_), Mrelease::Unsupported) => true,
        // The victim may finish exiting before the mrelease call: then there is no mm left.
        (None, Mrelease::Done | Mrelease::AlreadyExited) => true,
        _ => false,
    };
    ensure!(
        mrelease_ok,
        "process_mrelease result {:?} on this kernel",
        out.mreleased
    );
    ensure!(
        hog.wait_exit(Duration::from_secs(5))?.code().is_none(),
        "victim exited normally instead of being killed"
    );
    let detail = format!(
        "memory.current {} MiB -> {} KiB within {:.0} ms; mrelease {:?}",
        before >> 20,
        after >> 10,
        freed_after.as_secs_f64() * 1000.0,
        out.mreleased
    );
    ctx.note(format!(
        "kill to memory freed: {:.1} ms",
        freed_after.as_secs_f64() * 1000.0
    ));
    Ok(match skip {
        Some(Outcome::Skip(s)) => Outcome::Skip(format!("{s}; pidfd SIGKILL verified: {detail}")),
        _ => Outcome::Pass(detail),
    })
}

fn is_gone(r: &oomkit::Result<()>) -> bool {
    matches!(r, Err(Error::ProcessGone { .. }))
}

/// Spawn a sleeper in `cg` that gets exactly PID `pid`, by setting `ns_last_pid` to `pid - 1`
/// right before the fork. Kernel threads may take the PID first, so try a few times.
fn spawn_with_pid(cg: &std::path::Path, pid: i32) -> Result<Option<Workload>, Fail> {
    let last = std::path::Path::new("/proc/sys/kernel/ns_last_pid");
    if !last.exists() {
        return Ok(None);
    }
    for _ in 0..20 {
        write_file(last, &(pid - 1).to_string())?;
        let w = Workload::spawn(cg, WorkloadKind::Sleep)?;
        if w.pid() == pid {
            return Ok(Some(w));
        }
    }
    Ok(None)
}

/// A pidfd of an exited process gives ProcessGone; after the PID is reused by another process,
/// neither the pidfd nor `open_in` with the old cgroup touches the new owner.
pub fn pidfd_stale_pid_reuse(ctx: &mut Ctx) -> TestResult {
    let (path_a, cg_a) = ctx.cgroup("a")?;
    let (path_b, _cg_b) = ctx.cgroup("b")?;
    let a = ctx.spawn(&path_a, WorkloadKind::Sleep)?;
    let pid = a.pid();
    let pidfd = Pidfd::open_in(&cg_a, pid)?;
    drop(a); // SIGKILL and reap: the PID is free now.
    let r = pidfd.send_signal(Signal::KILL);
    ensure!(
        is_gone(&r),
        "signal to a reaped process: {r:?}, expected ProcessGone"
    );
    ensure!(!pidfd.is_alive()?, "is_alive() true for a reaped process");

    let Some(mut b) = spawn_with_pid(&path_b, pid)? else {
        return Ok(Outcome::Skip(format!(
            "could not get PID {pid} reused (no ns_last_pid, or kernel threads kept taking it); \
             ProcessGone on the exited process verified"
        )));
    };
    // The old pidfd still refers to the dead process, not to the new owner of its PID.
    let r1 = pidfd.send_signal(Signal::KILL);
    let r2 = pidfd.kill();
    let r3 = kill::kill_process(&pidfd, &KillOptions::default()).map(|_| ());
    // A PID read from cgroup A's procs earlier, now owned by a process in B: refused.
    let r4 = Pidfd::open_in(&cg_a, pid).map(|_| ());
    for (what, r) in [
        ("send_signal", &r1),
        ("kill", &r2),
        ("kill_process", &r3),
        ("open_in(A)", &r4),
    ] {
        ensure!(
            is_gone(r),
            "{what} after PID reuse returned {r:?}, expected ProcessGone"
        );
    }
    // The new owner must be untouched: give a stray SIGKILL ample time to show.
    let newcomer = Pidfd::open(pid)?;
    ensure!(
        !newcomer.wait_exit(Instant::now() + Duration::from_millis(500))?,
        "the new owner of PID {pid} died: it was signalled"
    );
    ensure!(
        b.try_exited().is_none(),
        "the new owner of PID {pid} exited"
    );
    Ok(Outcome::Pass(format!(
        "PID {pid} reused by a process in another cgroup; old pidfd and open_in gave ProcessGone, newcomer alive"
    )))
}

fn pids_current(path: &std::path::Path) -> Result<u64, Fail> {
    Ok(read_file(&path.join("pids.current"))?.trim().parse()?)
}

fn group_kill(ctx: &mut Ctx, use_cgroup_kill: bool) -> TestResult {
    let (path, cg) = ctx.cgroup("storm")?;
    write_file(&path.join("pids.max"), "48")?;
    let f = features(&cg);
    let skip = require("cgroup.kill", f.cgroup_kill, (5, 14))?;
    let _storm = ctx.spawn(&path, WorkloadKind::ForkStorm)?;
    let n = wait_for(
        "the fork storm to reach 16 tasks",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            let n = pids_current(&path)?;
            Ok((n >= 16).then_some(n))
        },
    )?;
    let out = kill::kill_cgroup(
        &cg,
        &GroupKillOptions {
            use_cgroup_kill,
            deadline: Duration::from_secs(15),
            ..GroupKillOptions::default()
        },
    )?;
    let expected = if use_cgroup_kill && f.cgroup_kill == Support::Yes {
        GroupKillPath::CgroupKill
    } else {
        GroupKillPath::FreezeAndSignal
    };
    ensure!(
        out.path == expected,
        "kill_cgroup used {:?}, expected {expected:?}",
        out.path
    );
    ensure!(out.emptied, "group not empty after kill_cgroup: {out:?}");
    if let Some(e) = &out.first_error {
        fail!("kill_cgroup reported an error: {e}");
    }
    let procs = cg.procs()?;
    ensure!(procs.is_empty(), "cgroup.procs still lists {procs:?}");
    ensure!(
        cg.cgroup_events()?.populated == Some(false),
        "cgroup.events still populated"
    );
    let detail = format!(
        "{:?} emptied a fork storm of {n}+ tasks in {:.0} ms ({} signalled, {} rounds)",
        out.path,
        out.emptied_after.unwrap_or_default().as_secs_f64() * 1000.0,
        out.signalled,
        out.rounds
    );
    ctx.note(&detail);
    Ok(match (use_cgroup_kill, skip) {
        (true, Some(Outcome::Skip(s))) => Outcome::Pass(format!("{detail}; fell back because {s}")),
        _ => Outcome::Pass(detail),
    })
}

/// Group kill with the kernel's `cgroup.kill` where present (and the fallback where not).
pub fn group_kill_forkstorm(ctx: &mut Ctx) -> TestResult {
    group_kill(ctx, true)
}

/// The freeze-and-signal fallback, forced, on every kernel.
pub fn group_kill_fallback(ctx: &mut Ctx) -> TestResult {
    group_kill(ctx, false)
}
