//! Reading back the reserve-related state of this process from the kernel,
//! for tests and logs: what [`super::enter`] achieved, not what it asked for.

use rustix::process::Resource;

use crate::error::Result;
use crate::proc::ProcDir;

/// The reserve-related state of this process and the calling thread, read
/// back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveState {
    /// `VmLck` of `/proc/self/status`: locked bytes.
    pub vm_lck: u64,
    /// `VmRSS`.
    pub vm_rss: u64,
    /// `/proc/self/oom_score_adj`.
    pub oom_score_adj: i16,
    /// `PR_GET_IO_FLUSHER` of the calling thread (`None` when unreadable:
    /// before 5.6, or without `CAP_SYS_RESOURCE`, which even the read needs).
    pub io_flusher: Option<bool>,
    /// Nice value of the calling thread.
    pub nice: i32,
    /// Scheduling policy of the calling thread (0 other, 1 FIFO, 2 RR …).
    pub sched_policy: Option<u32>,
    /// Real-time priority of the calling thread.
    pub rt_priority: Option<u32>,
    /// Our cgroup (the `0::` path of `/proc/self/cgroup`).
    pub cgroup: Option<String>,
    /// `RLIMIT_MEMLOCK` soft limit (`None` = unlimited).
    pub memlock_limit: Option<u64>,
}

/// Reads back what [`enter`](super::enter) is meant to have set.
pub fn verify() -> Result<ReserveState> {
    let me = ProcDir::open_self()?;
    let st = me.status()?;
    let adj = me.oom_score_adj()?;
    let mut buf = [0u8; 4096];
    let cgroup = crate::proc::parse::cgroup_v2_path(me.read_into(c"cgroup", &mut buf)?)
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let thread = ProcDir::open_thread_self()?.stat()?;
    Ok(ReserveState {
        vm_lck: st.vm_lck.unwrap_or(0),
        vm_rss: st.vm_rss.unwrap_or(0),
        oom_score_adj: adj,
        io_flusher: rustix::process::is_io_flusher().ok(),
        nice: thread.nice,
        sched_policy: thread.policy,
        rt_priority: thread.rt_priority,
        cgroup,
        memlock_limit: rustix::process::getrlimit(Resource::Memlock).current,
    })
}
