//! Smoke tests: need only the kernel, and prove the harness end to end (cgroup2 mounted, the
//! memory controller usable, a child cgroup with a limit, PSI present, workloads and OOM kills).

use std::time::Duration;

use oomkit::cgroup::Limit;

use crate::harness::{Ctx, Outcome, TestResult, read_file};
use crate::workload::WorkloadKind;
use crate::{ensure, fail};

/// cgroup2 is mounted at /sys/fs/cgroup (statfs magic and mountinfo agree).
pub fn cgroup2_mounted(_ctx: &mut Ctx) -> TestResult {
    let st = rustix::fs::statfs("/sys/fs/cgroup")?;
    ensure!(
        st.f_type as u64 == 0x6367_7270,
        "/sys/fs/cgroup has fs magic {:#x}, not CGROUP2_SUPER_MAGIC",
        st.f_type
    );
    let mountinfo = read_file("/proc/self/mountinfo".as_ref())?;
    ensure!(
        mountinfo
            .lines()
            .any(|l| l.contains(" /sys/fs/cgroup ") && l.contains(" - cgroup2 ")),
        "no cgroup2 line for /sys/fs/cgroup in mountinfo"
    );
    Ok(Outcome::Pass("cgroup2 at /sys/fs/cgroup".into()))
}

/// The root offers and delegates the memory controller.
pub fn memory_controller(_ctx: &mut Ctx) -> TestResult {
    let controllers = read_file("/sys/fs/cgroup/cgroup.controllers".as_ref())?;
    ensure!(
        controllers.split_whitespace().any(|c| c == "memory"),
        "root cgroup.controllers has no memory: {controllers:?}"
    );
    let subtree = read_file("/sys/fs/cgroup/cgroup.subtree_control".as_ref())?;
    ensure!(
        subtree.split_whitespace().any(|c| c == "memory"),
        "memory not enabled in root cgroup.subtree_control: {subtree:?}"
    );
    Ok(Outcome::Pass(format!(
        "controllers: {}",
        controllers.trim()
    )))
}

/// A child cgroup takes memory.max, and a process in it is charged there.
pub fn child_memory_max(ctx: &mut Ctx) -> TestResult {
    let (path, cg) = ctx.cgroup("child")?;
    cg.set_memory_max(Limit::Bytes(64 << 20))?;
    ensure!(
        cg.memory_max()? == Limit::Bytes(64 << 20),
        "memory.max reads back as {:?}",
        cg.memory_max()?
    );
    let mut hog = ctx.spawn(
        &path,
        WorkloadKind::HogHold {
            mib: 8,
            step_mib: 8,
        },
    )?;
    hog.wait_line("done", Duration::from_secs(30))?;
    ensure!(
        cg.procs()?.contains(&hog.pid()),
        "hog {} not in cgroup.procs",
        hog.pid()
    );
    let current = cg.memory_current()?;
    ensure!(
        current >= 8 << 20,
        "memory.current {current} < 8 MiB with an 8 MiB hog inside"
    );
    Ok(Outcome::Pass(format!(
        "memory.current {} KiB with an 8 MiB hog",
        current >> 10
    )))
}

/// PSI is on (psi=1): system and cgroup memory.pressure files parse.
pub fn psi_files(ctx: &mut Ctx) -> TestResult {
    let sys = read_file("/proc/pressure/memory".as_ref())?;
    ensure!(
        sys.starts_with("some avg10=") && sys.contains("\nfull avg10="),
        "/proc/pressure/memory: {sys:?}"
    );
    let (_, cg) = ctx.cgroup("child")?;
    let p = cg.memory_pressure()?;
    ensure!(
        p.full.is_some(),
        "cgroup memory.pressure has no full line: {p:?}"
    );
    Ok(Outcome::Pass(
        "system and cgroup memory.pressure present".into(),
    ))
}

/// A hog over memory.max (no swap) is OOM-killed and the counters say so.
pub fn hog_oom_killed(ctx: &mut Ctx) -> TestResult {
    let (path, cg) = ctx.cgroup("child")?;
    cg.set_memory_max(Limit::Bytes(32 << 20))?;
    let before = cg.memory_events()?;
    let mut hog = ctx.spawn(
        &path,
        WorkloadKind::HogExit {
            mib: 64,
            step_mib: 4,
        },
    )?;
    let st = hog.wait_exit(Duration::from_secs(60))?;
    use std::os::unix::process::ExitStatusExt;
    if st.signal() != Some(libc::SIGKILL) {
        fail!("64 MiB hog under a 32 MiB memory.max ended with {st}, not SIGKILL");
    }
    let d = cg.memory_events()?.delta_since(&before);
    ensure!(
        d.oom_kill.unwrap_or(0) >= 1,
        "memory.events oom_kill did not grow: {d:?}"
    );
    ensure!(
        d.max.unwrap_or(0) >= 1,
        "memory.events max did not grow: {d:?}"
    );
    Ok(Outcome::Pass(format!("OOM-killed; delta {d:?}")))
}
