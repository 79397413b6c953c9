//! The SDK's feature probe against what each kernel version is known to have (kernel-notes:
//! cgroup.kill 5.14, process_mrelease 5.15, oom_group_kill 5.17, memory.reclaim and memory.peak
//! 5.19; pidfd, PSI, freezer and IO_FLUSHER are older than every kernel we boot).

use oomkit::probe::Support;

use super::common::{features, kernel_version};
use crate::harness::{Ctx, Outcome, TestResult};

/// Every probed feature matches the kernel version.
pub fn features_match_kernel(ctx: &mut Ctx) -> TestResult {
    let (_, cg) = ctx.cgroup("probe")?;
    let f = features(&cg);
    let v = kernel_version();
    let since = |min: (u32, u32)| if v >= min { Support::Yes } else { Support::No };
    let expect = [
        ("pidfd_open", f.pidfd_open, Support::Yes),
        ("process_mrelease", f.process_mrelease, since((5, 15))),
        ("io_flusher", f.io_flusher, Support::Yes),
        ("system_psi", f.system_psi, Support::Yes),
        ("memory_controller", f.memory_controller, Support::Yes),
        ("cgroup_kill", f.cgroup_kill, since((5, 14))),
        ("cgroup_freeze", f.cgroup_freeze, Support::Yes),
        ("oom_group_kill", f.oom_group_kill, since((5, 17))),
        ("memory_reclaim", f.memory_reclaim, since((5, 19))),
        ("memory_peak", f.memory_peak, since((5, 19))),
        ("cgroup_psi", f.cgroup_psi, Support::Yes),
    ];
    let wrong: Vec<String> = expect
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(n, got, want)| format!("{n}={got} (expected {want})"))
        .collect();
    crate::ensure!(
        wrong.is_empty(),
        "probe on {}.{}: {}",
        v.0,
        v.1,
        wrong.join(", ")
    );
    if f.kernel_release != crate::runner::release() {
        crate::fail!(
            "probe kernel_release {:?} != uname {:?}",
            f.kernel_release,
            crate::runner::release()
        );
    }
    let missing: Vec<&str> = expect
        .iter()
        .filter(|(_, got, _)| *got == Support::No)
        .map(|(n, _, _)| *n)
        .collect();
    Ok(Outcome::Pass(if missing.is_empty() {
        "all features present, as expected".to_string()
    } else {
        format!("missing as expected: {}", missing.join(", "))
    }))
}
