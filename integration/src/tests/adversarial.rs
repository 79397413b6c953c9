//! Adversarial tests (issue 10): the daemon against a tenant acting as one
//! with a delegated subtree would — hostile cgroup names, self-set xattrs,
//! and cgroup churn without memory pressure. In every case nothing
//! protected dies, and nothing dies without pressure.
//!
//! The layout is the e2e scenarios' (see [`crate::scenario`]): a "machine"
//! cgroup with `memory.max` and `memory.high`, a service the operator
//! ranked above the tenant (`trusted.oomkit.priority = 50`), and the
//! tenant's subtree, where a job grows until the machine runs short.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oomkit::cgroup::Limit;

use crate::harness::{Ctx, Fail, Outcome, TestResult, write_file};
use crate::scenario::{
    BATCH_CAP, Daemon, DaemonOpts, MACHINE_HIGH, MACHINE_MAX, SERVICE, ended, hier, parent_cgroup,
    set_trusted_xattr, vmstat_oom_kill,
};
use crate::workload::WorkloadKind;
use crate::{ensure, fail};

const MIB: u64 = 1 << 20;

fn mkdir(p: &Path) -> Result<(), Fail> {
    match std::fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Fail(format!("mkdir {}: {e}", p.display()))),
    }
}

/// How the tenant attacks.
struct Attack {
    /// The tenant job's cgroup, relative to the machine (bytes: any name).
    job: &'static [u8],
    /// Extra config (after `[handler]`'s table).
    daemon_extra: &'static str,
    /// Lines for the `[daemon]` table (xattr trust): the body follows it.
    trust: &'static str,
    /// Called on the tenant job's directory before it starts.
    prepare: fn(&Path) -> Result<(), Fail>,
}

fn nothing(_: &Path) -> Result<(), Fail> {
    Ok(())
}

/// The tenant owns its subtree (uid 1000) and marks its own job protected
/// and top priority with `user.` xattrs.
fn self_set_xattrs(job: &Path) -> Result<(), Fail> {
    for dir in [job.parent().unwrap_or(job), job] {
        rustix::fs::chown(
            dir,
            Some(rustix::process::Uid::from_raw(1000)),
            Some(rustix::process::Gid::from_raw(1000)),
        )
        .map_err(|e| Fail(format!("chown {}: {e}", dir.display())))?;
    }
    for (k, v) in [
        ("user.oomkit.protected", "1"),
        ("user.oomkit.priority", "1000"),
    ] {
        rustix::fs::setxattr(job, k, v.as_bytes(), rustix::fs::XattrFlags::empty())
            .map_err(|e| Fail(format!("setxattr {k} on {}: {e}", job.display())))?;
    }
    Ok(())
}

/// Runs one attack: the tenant's job must be the one oomkit kills; the
/// service ranked above it survives; the kernel OOM killer never fires.
fn contest(ctx: &mut Ctx, a: &Attack) -> Result<String, Fail> {
    let (machine_path, machine) = parent_cgroup(ctx, "machine")?;
    machine.set_memory_max(Limit::Bytes(MACHINE_MAX * MIB))?;
    machine.set_memory_high(Limit::Bytes(MACHINE_HIGH * MIB))?;
    let (service_path, _) = ctx.cgroup("machine/service")?;
    set_trusted_xattr(&service_path, "oomkit.priority", "50")?;
    let tenant = machine_path.join("tenant");
    mkdir(&tenant)?;
    write_file(&tenant.join("cgroup.subtree_control"), "+memory +pids")?;
    let job = machine_path.join(OsStr::from_bytes(a.job));
    // Every level between the tenant and the job (a spoofed `kubepods/pod-x`).
    let mut levels: Vec<PathBuf> = job
        .ancestors()
        .take_while(|p| *p != tenant)
        .map(Path::to_path_buf)
        .collect();
    levels.reverse();
    for (i, l) in levels.iter().enumerate() {
        mkdir(l)?;
        if i + 1 < levels.len() {
            write_file(&l.join("cgroup.subtree_control"), "+memory +pids")?;
        }
    }
    (a.prepare)(&job)?;
    let body = format!(
        "[engine]\nsample_interval_ms = 100\nkill_deadline_ms = 5000\ncooldown_ms = 250\n\n\
         [signals]\nmemory_events = true\n\n[watchdog]\nenabled = true\n\n\
         [handler]\nkind = \"priority-kill\"\ndefault_priority = 0\n{}\n\
         [handler.priority_kill]\ngranularity = \"process\"\n",
        a.daemon_extra
    );
    let body = format!("{}{body}", a.trust);
    let mut daemon = Daemon::start(ctx, &machine_path, &body, &DaemonOpts::default())?;
    let vm_before = vmstat_oom_kill()?;
    let mut service = ctx.spawn(
        &service_path,
        WorkloadKind::HogHold {
            mib: SERVICE,
            step_mib: 8,
        },
    )?;
    service.wait_line("done", Duration::from_secs(30))?;
    // The workload helper takes its cgroup as a UTF-8 argument: a job
    // whose name is not UTF-8 starts in a staging cgroup and is moved in
    // at once (it allocates in small steps, so nearly all of it is charged
    // there; the kill goes by the process and its membership).
    let start_in = if std::str::from_utf8(a.job).is_ok() {
        job.clone()
    } else {
        let staging = tenant.join("staging");
        mkdir(&staging)?;
        staging
    };
    let mut hog = ctx.spawn(
        &start_in,
        WorkloadKind::HogHold {
            mib: BATCH_CAP,
            step_mib: 2,
        },
    )?;
    if start_in != job {
        write_file(&job.join("cgroup.procs"), &hog.pid().to_string())?;
    }
    let hog_pid = hog.pid();
    let inc = daemon.wait_incident("the incident of the kill", Duration::from_secs(60), |i| {
        i["outcome"] == "acted"
    })?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while ended(&mut hog).is_none() && ended(&mut service).is_none() {
        if Instant::now() > deadline {
            fail!("nobody died after the incident {inc}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(
        ended(&mut service).is_none(),
        "the service (tier 50) died: {inc}"
    );
    ensure!(
        ended(&mut hog).as_deref() == Some("SIGKILL"),
        "the tenant's job was not SIGKILLed: {inc}"
    );
    ensure!(
        inc["victims"][0]["pid"] == hog_pid,
        "the incident's victim is not the tenant's job {hog_pid}: {inc}"
    );
    ensure!(
        vmstat_oom_kill()? == vm_before,
        "the kernel OOM killer fired"
    );
    let stopped = daemon.stop()?;
    ensure!(stopped["kills"] == 1, "daemon counters: {stopped}");
    Ok(format!(
        "tenant job {:?} killed by oomkit, service alive",
        String::from_utf8_lossy(a.job)
    ))
}

/// A `kubepods/pod-x` directory in the tenant's subtree gets no QoS tier.
pub fn spoofed_kubepods(ctx: &mut Ctx) -> TestResult {
    let msg = contest(
        ctx,
        &Attack {
            job: b"tenant/kubepods/pod-x",
            daemon_extra: "",
            trust: "",
            prepare: nothing,
        },
    )?;
    Ok(Outcome::Pass(msg))
}

/// A job named with trailing whitespace is still killable.
pub fn whitespace_name(ctx: &mut Ctx) -> TestResult {
    let msg = contest(
        ctx,
        &Attack {
            job: b"tenant/job ",
            daemon_extra: "",
            trust: "",
            prepare: nothing,
        },
    )?;
    Ok(Outcome::Pass(msg))
}

/// A job whose name is not UTF-8 is tracked and killable.
pub fn non_utf8_name(ctx: &mut Ctx) -> TestResult {
    let msg = contest(
        ctx,
        &Attack {
            job: b"tenant/job\xff\xfe",
            daemon_extra: "",
            trust: "",
            prepare: nothing,
        },
    )?;
    Ok(Outcome::Pass(msg))
}

/// `user.oomkit.*` xattrs a tenant set on its own directory are not believed.
pub fn self_set_user_xattrs(ctx: &mut Ctx) -> TestResult {
    let msg = contest(
        ctx,
        &Attack {
            job: b"tenant/job",
            daemon_extra: "",
            trust: "xattr_trust = \"trusted-and-owned-user\"\n",
            prepare: self_set_xattrs,
        },
    )?;
    Ok(Outcome::Pass(msg))
}

/// 10,000 cgroups created and removed in bursts while the daemon runs with
/// no memory pressure: no kill, no watchdog action, a bystander lives.
pub fn churn_without_pressure(ctx: &mut Ctx) -> TestResult {
    const BURSTS: usize = 5;
    const PER_BURST: usize = 2000;
    let (machine_path, _) = parent_cgroup(ctx, "machine")?;
    let (bystander_path, _) = ctx.cgroup("machine/bystander")?;
    let body = "[engine]\nmax_cgroups = 16384\n\n[signals]\nmemory_events = true\n\n\
                [watchdog]\nenabled = true\ntimeout_ms = 200\n\n\
                [handler]\nkind = \"priority-kill\"\n";
    let daemon = Daemon::start(ctx, &machine_path, body, &DaemonOpts::default())?;
    let mut bystander = ctx.spawn(&bystander_path, WorkloadKind::Sleep)?;
    let fds_before =
        std::fs::read_dir(format!("/proc/{}/fd", daemon.pid())).map_or(0, Iterator::count);
    let churn = machine_path.join("churn");
    mkdir(&churn)?;
    let started = Instant::now();
    for b in 0..BURSTS {
        for i in 0..PER_BURST {
            mkdir(&churn.join(format!("c{b}-{i}")))?;
        }
        for i in 0..PER_BURST {
            let p = churn.join(format!("c{b}-{i}"));
            std::fs::remove_dir(&p).map_err(|e| Fail(format!("rmdir {}: {e}", p.display())))?;
        }
    }
    let churn_s = started.elapsed().as_secs_f64();
    // Caught up once the daemon holds no more fds than before the churn
    // (each tracked cgroup holds a directory fd and an events fd).
    let fds =
        |pid: i32| std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(usize::MAX, Iterator::count);
    crate::harness::wait_for(
        "the daemon to drop the churned cgroups",
        Duration::from_secs(120),
        Duration::from_millis(50),
        || Ok((fds(daemon.pid()) <= fds_before + 2).then_some(())),
    )?;
    ensure!(
        ended(&mut bystander).is_none(),
        "the bystander died; daemon log: {}",
        daemon.log_tail(15)
    );
    let stopped = daemon.stop()?;
    ensure!(
        stopped["kills"] == 0 && stopped["watchdog_fired"] == 0,
        "killed or watchdog fired without pressure: {stopped}"
    );
    ensure!(
        std::fs::read_dir(daemon_incidents(ctx)).map_or(0, Iterator::count) == 0,
        "an incident was recorded without pressure"
    );
    ctx.note(format!(
        "churn: {} cgroups created and removed in {BURSTS} bursts in {churn_s:.1} s; daemon: {stopped}",
        BURSTS * PER_BURST
    ));
    Ok(Outcome::Pass(format!(
        "{} cgroups churned in {churn_s:.1} s: no kill, no watchdog action, bystander alive",
        BURSTS * PER_BURST
    )))
}

fn daemon_incidents(ctx: &Ctx) -> PathBuf {
    crate::scenario::daemon_dir(ctx).join("incidents")
}

/// Issue 10, defect 8: a tenant job cgroup holds a process the operator
/// exempted (`oom_score_adj -1000`) beside a hog, and the handler kills by
/// cgroup. `cgroup.kill` would take both; oomkit kills the group member by
/// member, sparing the exempted process as the kernel's own group kill
/// does, and the incident says so (`victims[0].spared`). The service ranked
/// above lives and the kernel OOM killer never fires.
pub fn group_kill_spares_unkillable(ctx: &mut Ctx) -> TestResult {
    let (machine_path, machine) = parent_cgroup(ctx, "machine")?;
    machine.set_memory_max(Limit::Bytes(MACHINE_MAX * MIB))?;
    machine.set_memory_high(Limit::Bytes(MACHINE_HIGH * MIB))?;
    let (service_path, _) = ctx.cgroup("machine/service")?;
    set_trusted_xattr(&service_path, "oomkit.priority", "50")?;
    let (job, _) = ctx.cgroup("machine/job")?;
    let body = "[engine]\nsample_interval_ms = 100\nkill_deadline_ms = 5000\ncooldown_ms = 250\n\n\
                [signals]\nmemory_events = true\n\n[watchdog]\nenabled = true\n\n\
                [handler]\nkind = \"priority-kill\"\ndefault_priority = 0\n\n\
                [handler.priority_kill]\ngranularity = \"cgroup\"\n";
    let mut daemon = Daemon::start(ctx, &machine_path, body, &DaemonOpts::default())?;
    let vm_before = vmstat_oom_kill()?;
    let mut service = ctx.spawn(
        &service_path,
        WorkloadKind::HogHold {
            mib: SERVICE,
            step_mib: 8,
        },
    )?;
    service.wait_line("done", Duration::from_secs(30))?;
    let mut exempt = ctx.spawn(&job, WorkloadKind::Sleep)?;
    let adj = format!("/proc/{}/oom_score_adj", exempt.pid());
    write_file(Path::new(&adj), "-1000")?;
    let mut hog = ctx.spawn(
        &job,
        WorkloadKind::HogHold {
            mib: BATCH_CAP,
            step_mib: 2,
        },
    )?;
    let inc = daemon.wait_incident("the incident of the kill", Duration::from_secs(60), |i| {
        i["outcome"] == "acted"
    })?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while ended(&mut hog).is_none() {
        if Instant::now() > deadline {
            fail!("the hog did not die after the incident {inc}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(
        ended(&mut hog).as_deref() == Some("SIGKILL"),
        "the hog was not SIGKILLed: {inc}"
    );
    ensure!(
        ended(&mut exempt).is_none(),
        "the oom_score_adj -1000 process died: {inc}"
    );
    ensure!(
        ended(&mut service).is_none(),
        "the service (tier 50) died: {inc}"
    );
    ensure!(
        inc["victims"][0]["kind"] == "cgroup" && inc["victims"][0]["spared"] == 1,
        "the incident does not record a group kill sparing one process: {inc}"
    );
    ensure!(
        vmstat_oom_kill()? == vm_before,
        "the kernel OOM killer fired"
    );
    let stopped = daemon.stop()?;
    ensure!(stopped["kills"] == 1, "daemon counters: {stopped}");
    ensure!(
        ended(&mut exempt).is_none(),
        "the oom_score_adj -1000 process died after the episode"
    );
    Ok(Outcome::Pass(format!(
        "group kill of {}: hog SIGKILLed, the -1000 process spared and recorded, service alive",
        job.display()
    )))
}

/// Issue 10, defect 6: a tenant creates more cgroups than the daemon's
/// open-file limit (a tracked cgroup may hold an fd: `memory.current`
/// within the budget, `memory.events.local` where its inotify watch
/// fails; its directory is opened only on demand). The daemon caps the
/// tree below what the limit holds, with a warning, so the fds a decision
/// and a kill need are still there: the job that grows is killed. (Before,
/// the tree took every fd and `pidfd_open` failed with `EMFILE`.)
pub fn fds_exhausted_by_cgroups(ctx: &mut Ctx) -> TestResult {
    const NOFILE: u64 = 1024;
    const FLOOD: usize = 1200;
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let (machine_path, machine) = parent_cgroup(ctx, "machine")?;
    machine.set_memory_max(Limit::Bytes(MACHINE_MAX * MIB))?;
    machine.set_memory_high(Limit::Bytes(MACHINE_HIGH * MIB))?;
    let (service_path, _) = ctx.cgroup("machine/service")?;
    set_trusted_xattr(&service_path, "oomkit.priority", "50")?;
    let (job, _) = ctx.cgroup("machine/job")?;
    let flood = machine_path.join("flood");
    mkdir(&flood)?;
    write_file(&flood.join("cgroup.subtree_control"), "+memory +pids")?;
    let body = "[engine]\nsample_interval_ms = 100\nkill_deadline_ms = 5000\ncooldown_ms = 250\n\
                max_cgroups = 4096\n\n\
                [signals]\nmemory_events = true\n\n[watchdog]\nenabled = true\n\n\
                [handler]\nkind = \"priority-kill\"\ndefault_priority = 0\n\n\
                [handler.priority_kill]\ngranularity = \"process\"\n";
    // The daemon inherits a low open-file limit (soft = hard), ours is restored after.
    let ours = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(NOFILE),
            maximum: Some(NOFILE),
        },
    )
    .map_err(|e| Fail(format!("setrlimit NOFILE {NOFILE}: {e}")))?;
    let started = Daemon::start(ctx, &machine_path, body, &DaemonOpts::default());
    setrlimit(Resource::Nofile, ours)
        .map_err(|e| Fail(format!("restoring our open-file limit: {e}")))?;
    let mut daemon = started?;
    // The job is tracked; now the flood, more cgroups than the fds hold.
    for i in 0..FLOOD {
        mkdir(&flood.join(format!("c{i}")))?;
    }
    daemon.wait_log("the cap warning", Duration::from_secs(60), |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("cgroup cap reached"))
    })?;
    let fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid())).map_or(0, Iterator::count);
    ensure!(
        (fds as u64) < NOFILE - 64,
        "the daemon holds {fds} of {NOFILE} fds after the flood"
    );
    let vm_before = vmstat_oom_kill()?;
    let mut service = ctx.spawn(
        &service_path,
        WorkloadKind::HogHold {
            mib: SERVICE,
            step_mib: 8,
        },
    )?;
    service.wait_line("done", Duration::from_secs(30))?;
    let mut hog = ctx.spawn(
        &job,
        WorkloadKind::HogHold {
            mib: BATCH_CAP,
            step_mib: 2,
        },
    )?;
    let hog_pid = hog.pid();
    let inc = daemon.wait_incident("the incident of the kill", Duration::from_secs(60), |i| {
        i["outcome"] == "acted"
    })?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while ended(&mut hog).is_none() {
        if Instant::now() > deadline {
            fail!("the hog did not die after the incident {inc}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(
        ended(&mut hog).as_deref() == Some("SIGKILL") && inc["victims"][0]["pid"] == hog_pid,
        "the hog was not oomkit's victim: {inc}"
    );
    ensure!(
        ended(&mut service).is_none(),
        "the service (tier 50) died: {inc}"
    );
    ensure!(
        vmstat_oom_kill()? == vm_before,
        "the kernel OOM killer fired"
    );
    let stopped = daemon.stop()?;
    ensure!(stopped["kills"] == 1, "daemon counters: {stopped}");
    for i in 0..FLOOD {
        let _ = std::fs::remove_dir(flood.join(format!("c{i}")));
    }
    Ok(Outcome::Pass(format!(
        "{FLOOD} cgroups against an open-file limit of {NOFILE}: the daemon held {fds} fds, \
         the hog was killed, the service lives"
    )))
}

/// The state letter of `/proc/PID/stat` (after the parenthesised comm).
fn proc_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Issue 10, standing defences: the tenant's largest process sits in D state
/// (waiting in `wait_for_vfork_done` on a child that never execs) when the
/// machine runs short. oomkit's SIGKILL reaches it (the wait is killable), so
/// it dies within the kill deadline; the service ranked above lives, a
/// protected process lives, and the kernel OOM killer never fires.
pub fn d_state_victim(ctx: &mut Ctx) -> TestResult {
    let (machine_path, machine) = parent_cgroup(ctx, "machine")?;
    machine.set_memory_max(Limit::Bytes(MACHINE_MAX * MIB))?;
    machine.set_memory_high(Limit::Bytes(MACHINE_HIGH * MIB))?;
    let (service_path, _) = ctx.cgroup("machine/service")?;
    set_trusted_xattr(&service_path, "oomkit.priority", "50")?;
    let (vital_path, _) = ctx.cgroup("machine/vital")?;
    let (job, _) = ctx.cgroup("machine/tenant")?;
    let body = format!(
        "[engine]\nsample_interval_ms = 100\nkill_deadline_ms = 3000\ncooldown_ms = 250\n\n\
         [signals]\nmemory_events = true\n\n[watchdog]\nenabled = true\n\n\
         [handler]\nkind = \"priority-kill\"\ndefault_priority = 0\n\n\
         [[handler.rules]]\nglob = \"{}\"\nprotected = true\n\n\
         [handler.priority_kill]\ngranularity = \"process\"\n",
        hier(&vital_path)
    );
    let mut daemon = Daemon::start(ctx, &machine_path, &body, &DaemonOpts::default())?;
    let mut vital = ctx.spawn(&vital_path, WorkloadKind::Sleep)?;
    // 40 MiB, then D state; the machine is not short yet (40 < 80 MiB).
    let mut stuck = ctx.spawn(&job, WorkloadKind::DState { mib: 40 })?;
    let stuck_pid = stuck.pid();
    stuck.wait_line("dstate", Duration::from_secs(30))?;
    crate::harness::wait_for(
        "the tenant's process to be in D state",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || Ok((proc_state(stuck_pid) == Some('D')).then_some(())),
    )?;
    let vm_before = vmstat_oom_kill()?;
    // Now the service grows past memory.high.
    let mut service = ctx.spawn(
        &service_path,
        WorkloadKind::HogHold {
            mib: SERVICE,
            step_mib: 8,
        },
    )?;
    let inc = daemon.wait_incident("the incident of the kill", Duration::from_secs(60), |i| {
        i["outcome"] == "acted"
    })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ended(&mut stuck).is_none() {
        if Instant::now() > deadline {
            fail!(
                "the D-state process (state {:?}) outlived the kill by 10 s: {inc}",
                proc_state(stuck_pid)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(
        ended(&mut stuck).as_deref() == Some("SIGKILL") && inc["victims"][0]["pid"] == stuck_pid,
        "the D-state process was not oomkit's victim: {inc}"
    );
    service.wait_line("done", Duration::from_secs(30))?;
    ensure!(
        ended(&mut service).is_none(),
        "the service (tier 50) died: {inc}"
    );
    ensure!(ended(&mut vital).is_none(), "the protected process died");
    ensure!(
        vmstat_oom_kill()? == vm_before,
        "the kernel OOM killer fired"
    );
    let escalations = inc["escalations"].clone();
    let stopped = daemon.stop()?;
    Ok(Outcome::Pass(format!(
        "D-state victim SIGKILLed (escalations {escalations}), service and protected process alive; daemon: {stopped}"
    )))
}

/// Issue 10, standing defences: a tenant's process names itself like a
/// protected one (`sshd`: the workload sets its `comm` with
/// `prctl(PR_SET_NAME)` to its cgroup's name). Protection goes by cgroup,
/// never by name: the spoofer is killed, the real `sshd` lives.
pub fn comm_spoof(ctx: &mut Ctx) -> TestResult {
    let (machine_path, machine) = parent_cgroup(ctx, "machine")?;
    machine.set_memory_max(Limit::Bytes(MACHINE_MAX * MIB))?;
    machine.set_memory_high(Limit::Bytes(MACHINE_HIGH * MIB))?;
    let (sshd_path, _) = ctx.cgroup("machine/sshd")?;
    let (tenant, _) = ctx.cgroup("machine/tenant")?;
    let spoof_path = tenant.join("sshd");
    mkdir(&spoof_path)?;
    let body = format!(
        "[engine]\nsample_interval_ms = 100\nkill_deadline_ms = 5000\ncooldown_ms = 250\n\n\
         [signals]\nmemory_events = true\n\n[watchdog]\nenabled = true\n\n\
         [handler]\nkind = \"priority-kill\"\ndefault_priority = 0\n\n\
         [[handler.rules]]\nglob = \"{}\"\nprotected = true\n\n\
         [handler.priority_kill]\ngranularity = \"process\"\n",
        hier(&sshd_path)
    );
    let mut daemon = Daemon::start(ctx, &machine_path, &body, &DaemonOpts::default())?;
    let vm_before = vmstat_oom_kill()?;
    // The real sshd is the largest process, so only its protection saves it.
    let mut sshd = ctx.spawn(
        &sshd_path,
        WorkloadKind::HogHold {
            mib: SERVICE,
            step_mib: 8,
        },
    )?;
    sshd.wait_line("done", Duration::from_secs(30))?;
    let mut spoofer = ctx.spawn(
        &spoof_path,
        WorkloadKind::HogHold {
            mib: BATCH_CAP,
            step_mib: 2,
        },
    )?;
    let spoofer_pid = spoofer.pid();
    let comm = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim_end().to_string())
    };
    ensure!(
        comm(spoofer_pid).ok().as_deref() == Some("sshd")
            && comm(sshd.pid()).ok().as_deref() == Some("sshd"),
        "both processes should be named sshd: {:?} {:?}",
        comm(spoofer_pid),
        comm(sshd.pid())
    );
    let inc = daemon.wait_incident("the incident of the kill", Duration::from_secs(60), |i| {
        i["outcome"] == "acted"
    })?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while ended(&mut spoofer).is_none() && ended(&mut sshd).is_none() {
        if Instant::now() > deadline {
            fail!("nobody died after the incident {inc}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(ended(&mut sshd).is_none(), "the protected sshd died: {inc}");
    ensure!(
        ended(&mut spoofer).as_deref() == Some("SIGKILL")
            && inc["victims"][0]["pid"] == spoofer_pid,
        "the spoofer was not oomkit's victim: {inc}"
    );
    ensure!(
        vmstat_oom_kill()? == vm_before,
        "the kernel OOM killer fired"
    );
    let stopped = daemon.stop()?;
    ensure!(stopped["kills"] == 1, "daemon counters: {stopped}");
    Ok(Outcome::Pass(
        "a tenant process named sshd was killed, the protected sshd (larger) lives".into(),
    ))
}
