//! The OOM monitor and a [`Runner`] driven from a plain epoll loop that the
//! example owns, as a container runtime's main loop would (conmon, crun and
//! containerd's shim each have one).
//!
//! Both are fds with no thread behind them: the [`OomMonitor`] of one
//! container and the [`Runner`] managing the pod above it go into the
//! loop's epoll set next to the loop's own fds (here: stdin, to quit on
//! Enter). When one is readable the loop turns it without blocking; the
//! timeout is the earliest deadline either has (a report waiting for the
//! kernel log, the engine's next tick).
//!
//! ```text
//! epoll_embed /sys/fs/cgroup/kubepods/pod1 /sys/fs/cgroup/kubepods/pod1/ctr1
//! ```

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use oomkit::Cgroup;
use oomkit::engine::{Plan, Runner, RunnerConfig, View};
use oomkit::monitor::{MonitorEvent, MonitorOptions, OomMonitor};
use rustix::event::epoll;

/// The handler is not the point here: do nothing, let the kernel act, and
/// report what it did through the monitor.
struct Observe;

impl oomkit::engine::Handler for Observe {
    fn name(&self) -> &'static str {
        "observe"
    }
    fn decide(&mut self, _view: &mut View<'_>, _plan: &mut Plan) {}
}

const MONITOR: u64 = 1;
const RUNNER: u64 = 2;
const STDIN: u64 = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [pod, ctr] = args.as_slice() else {
        eprintln!("usage: epoll_embed POD_CGROUP_DIR CONTAINER_CGROUP_DIR");
        std::process::exit(2);
    };
    let container = Cgroup::open(ctr)?;
    let mut monitor = OomMonitor::open(
        &container,
        MonitorOptions {
            boundary: Some(pod.into()),
            ..MonitorOptions::default()
        },
    )?;
    let mut runner = Runner::new(RunnerConfig::new(pod), Box::new(Observe))?;

    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    let add = |fd: std::os::fd::BorrowedFd<'_>, token: u64| {
        epoll::add(
            &ep,
            fd,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN,
        )
    };
    add(monitor.as_fd(), MONITOR)?;
    add(runner.as_fd(), RUNNER)?;
    add(std::io::stdin().as_fd(), STDIN)?;
    eprintln!("epoll_embed: watching {ctr} under {pod}; Enter quits");

    let mut events = [epoll::Event {
        flags: epoll::EventFlags::empty(),
        data: epoll::EventData::new_u64(0),
    }; 8];
    loop {
        let now = Instant::now();
        let tick = runner
            .engine()
            .next_wake()
            .map(|w| w.saturating_duration_since(now));
        let timeout = match (monitor.next_timeout(), tick) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let ts = timeout.map(|d| rustix::event::Timespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        let n = match epoll::wait(&ep, &mut events[..], ts.as_ref()) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => 0,
            Err(e) => return Err(e.into()),
        };
        let ready = |t: u64| events.iter().take(n).any(|e| e.data.u64() == t);
        if ready(STDIN) {
            return Ok(());
        }
        // Turn both on readiness and on their deadlines; extra turns are
        // harmless (they re-read and find nothing new).
        for ev in monitor.process()? {
            match ev {
                MonitorEvent::Oom(r) => println!("{r}"),
                MonitorEvent::Unpopulated(f) => {
                    println!("{f}");
                    return Ok(());
                }
                other => println!("{other:?}"),
            }
        }
        let turn = runner.run_once(Some(Duration::ZERO))?;
        for ep in &turn.finished {
            println!("runner episode {}: {:?}", ep.id, ep.outcome);
        }
    }
}
