//! The OOM monitor and a [`Runner`] on a tokio runtime, as a Rust runtime
//! (youki, a Kata agent, containerd's Rust shim) would embed them.
//!
//! [`AsyncOomMonitor`] registers the monitor's fd with tokio's reactor and
//! honours the monitor's own deadline with a tokio timer. The [`Runner`]'s
//! epoll fd goes into an [`AsyncFd`]; each readiness turns it without
//! blocking, and a sleep covers the engine's next tick. No task or thread of
//! oomkit's own: everything runs in this `select!` on one current-thread
//! runtime.
//!
//! ```text
//! tokio_embed /sys/fs/cgroup/kubepods/pod1 /sys/fs/cgroup/kubepods/pod1/ctr1
//! ```

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use oomkit::Cgroup;
use oomkit::engine::{Handler, Plan, Runner, RunnerConfig, View};
use oomkit::monitor::{AsyncOomMonitor, MonitorEvent, MonitorOptions, OomMonitor};
use tokio::io::unix::AsyncFd;

/// Decides nothing; the example is about the plumbing.
struct Observe;

impl Handler for Observe {
    fn name(&self) -> &'static str {
        "observe"
    }
    fn decide(&mut self, _view: &mut View<'_>, _plan: &mut Plan) {}
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [pod, ctr] = args.as_slice() else {
        eprintln!("usage: tokio_embed POD_CGROUP_DIR CONTAINER_CGROUP_DIR");
        std::process::exit(2);
    };
    let container = Cgroup::open(ctr)?;
    let monitor = OomMonitor::open(
        &container,
        MonitorOptions {
            boundary: Some(pod.into()),
            ..MonitorOptions::default()
        },
    )?;
    let mut monitor = AsyncOomMonitor::new(monitor)?;
    let mut runner = Runner::new(RunnerConfig::new(pod), Box::new(Observe))?;
    // A duplicate of the runner's epoll fd that nothing else can reach: it
    // stays open and the same for the life of the registration, which is
    // what the deprecated safe constructor cannot check for an arbitrary T.
    #[allow(deprecated)]
    let runner_fd = AsyncFd::new(runner.as_fd().try_clone_to_owned()?)?;
    eprintln!("tokio_embed: watching {ctr} under {pod}");

    loop {
        let tick = runner
            .engine()
            .next_wake()
            .map(|w| w.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            evs = monitor.next() => {
                for ev in evs? {
                    match ev {
                        MonitorEvent::Oom(r) => println!("{r}"),
                        MonitorEvent::Unpopulated(f) => {
                            println!("{f}");
                            return Ok(());
                        }
                        other => println!("{other:?}"),
                    }
                }
            }
            guard = runner_fd.readable() => {
                let mut guard = guard?;
                let turn = runner.run_once(Some(Duration::ZERO))?;
                for ep in &turn.finished {
                    println!("runner episode {}: {:?}", ep.id, ep.outcome);
                }
                guard.clear_ready();
            }
            _ = tokio::time::sleep(tick) => {
                runner.run_once(Some(Duration::ZERO))?;
            }
        }
    }
}
