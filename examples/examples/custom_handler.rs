//! A [`Handler`] of your own, run by the [`Runner`]: "kill the newest
//! process first".
//!
//! A handler is plain Rust with no I/O of its own: the loop calls
//! [`Handler::decide`] when memory trouble needs an answer, with a [`View`]
//! of the cgroups in scope (it reads `/proc` on request) and an empty
//! [`Plan`] to fill. The loop does the rest: re-checks that the PID is still
//! a member of the cgroup, kills through a pidfd, `process_mrelease`s,
//! waits for memory to come back, and tries the next victim if it did not.
//!
//! "Newest" is the highest PID here, which is the youngest process until
//! PIDs wrap around `pid_max`; a policy that must be exact would compare
//! start times (`/proc/PID/stat` field 22) collected in `classify` or by the
//! caller. Processes with `oom_score_adj` −1000, kernel threads, protected
//! cgroups and what this episode already tried are skipped. `decide` does
//! not allocate: it scans the view's slices and pushes one step.
//!
//! ```text
//! cargo run -p oomkit-examples --example custom_handler -- /sys/fs/cgroup/workload.slice
//! ```

use std::time::Duration;

use oomkit::engine::{Action, CgroupId, Handler, Plan, Runner, RunnerConfig, View};

/// Kills the process with the highest PID in the scope of the trouble.
struct NewestFirst;

impl Handler for NewestFirst {
    fn name(&self) -> &'static str {
        "newest-first"
    }

    fn decide(&mut self, view: &mut View<'_>, plan: &mut Plan) {
        let mut best: Option<(CgroupId, i32)> = None;
        for i in 0..view.cgroups().len() {
            let Some(&id) = view.cgroups().get(i) else {
                break;
            };
            if view.class(id).is_some_and(|c| c.protected) || view.excluded().has_cgroup(id) {
                continue;
            }
            let Ok(procs) = view.processes(id) else {
                continue;
            };
            for p in procs {
                if p.kernel_thread || p.oom_score_adj == -1000 {
                    continue;
                }
                if best.is_none_or(|(_, pid)| p.pid > pid) {
                    best = Some((id, p.pid));
                }
            }
        }
        // The exclusion list holds PIDs tried earlier in this episode.
        if let Some((cgroup, pid)) = best.filter(|(_, pid)| !view.excluded().has_pid(*pid)) {
            plan.set_reason("newest process first");
            let _ = plan.push(Action::KillProcess { cgroup, pid }, Duration::from_secs(2));
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(root) = std::env::args_os().nth(1) else {
        eprintln!("usage: custom_handler CGROUP_DIR   (the subtree to manage)");
        std::process::exit(2);
    };
    // RunnerConfig::new: nothing process-wide (no mlockall, no
    // oom_score_adj, no watchdog thread); `daemon` opts into all of them.
    let mut runner = Runner::new(RunnerConfig::new(root), Box::new(NewestFirst))?;
    eprintln!("custom_handler: managing with the newest-first policy");
    loop {
        let turn = runner.run_once(None)?;
        for ep in &turn.finished {
            eprintln!("episode {}: {:?} — {}", ep.id, ep.outcome, ep.plan.reason());
        }
    }
}
