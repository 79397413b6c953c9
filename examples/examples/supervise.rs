//! A minimal runtime-like supervisor: create a cgroup with `memory.max`,
//! start a command in it, watch it, and print one line when it ends.
//!
//! ```text
//! supervise --cgroup /sys/fs/cgroup/pod/ctr --memory-max 33554432 -- my-program args…
//! OOMKilled: limit of /pod/ctr fired, killed 1234 (my-program)
//! ```
//!
//! It shows the three pieces a container runtime needs from oomkit:
//! [`Spawn::spawn_into`] starts the command inside the cgroup (clone3 with
//! `CLONE_INTO_CGROUP`, or the `cgroup.procs` fallback), an [`OomMonitor`]
//! watches the cgroup (the level whose limit fired, the victims from the
//! kernel log), and [`exit_reason`] turns the init's wait status into
//! `OOMKilled` / `Signalled(n)` / `Exited(n)`. The monitor's fd and the
//! child's pidfd are polled together: no thread, no SIGCHLD handler.
//!
//! The cgroup's parent must have the memory controller enabled for its
//! children (`+memory` in its `cgroup.subtree_control`). The limit is the
//! level boundary: a limit of the parent (the "pod") is reported as such.
//! The cgroup is removed at the end, after the final counters were read.
//!
//! Exit status: the command's exit code, 128 + signal, or 137 for an OOM kill.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oomkit::cgroup::{CgroupFs, Limit};
use oomkit::monitor::{ExitReason, Level, MonitorEvent, MonitorOptions, OomMonitor, exit_reason};
use oomkit::spawn::Spawn;
use rustix::event::{PollFd, PollFlags, poll};

struct Args {
    cgroup: PathBuf,
    memory_max: Option<u64>,
    command: Vec<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: supervise --cgroup DIR [--memory-max BYTES] -- COMMAND [ARGS…]\n\
         (DIR is created under a cgroup2 mount; its parent needs +memory in cgroup.subtree_control)"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let mut cgroup = None;
    let mut memory_max = None;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cgroup" => cgroup = it.next().map(PathBuf::from),
            "--memory-max" => {
                memory_max = Some(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| usage()),
                )
            }
            "--" => break,
            _ => usage(),
        }
    }
    let command: Vec<String> = it.collect();
    match (cgroup, command.is_empty()) {
        (Some(cgroup), false) => Args {
            cgroup,
            memory_max,
            command,
        },
        _ => usage(),
    }
}

/// `limit of /pod/ctr fired` with the path of the level.
fn describe(level: &Option<Level>, container: &Path) -> String {
    match level {
        Some(Level::Container) => format!("limit of {} fired", container.display()),
        Some(Level::Pod { path }) | Some(Level::Ancestor { path, .. }) => {
            format!("limit of {} fired", path.display())
        }
        Some(Level::Inside) => "limit of a cgroup inside the container fired".to_string(),
        Some(Level::Outside) => "a limit above the pod (or the whole machine) ran out".to_string(),
        Some(other) => format!("limit of {other} fired"),
        None => "limit fired".to_string(),
    }
}

fn main() {
    let args = parse_args();
    match run(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("supervise: {e}");
            std::process::exit(125);
        }
    }
}

fn run(args: &Args) -> Result<i32, Box<dyn std::error::Error>> {
    let fs = CgroupFs::discover()?;
    std::fs::create_dir(&args.cgroup).or_else(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Ok(()),
        _ => Err(format!("mkdir {}: {e}", args.cgroup.display())),
    })?;
    let ctr = fs.open(&args.cgroup)?;
    if let Some(max) = args.memory_max {
        ctr.set_memory_max(Limit::Bytes(max))?;
    }
    let mut monitor = OomMonitor::open(&ctr, MonitorOptions::default())?;
    let (program, rest) = args.command.split_first().ok_or("no command")?;
    let mut child = Spawn::new(program).args(rest).spawn_into(&ctr)?;
    let pidfd = child
        .pidfd()
        .ok_or("no pidfd (Linux 5.3+ needed)")?
        .try_clone_to_owned()?;

    let mut reports = Vec::new();
    loop {
        let timeout = monitor.next_timeout().map(|d| {
            rustix::event::Timespec::try_from(d.max(Duration::from_millis(1))).unwrap_or(
                rustix::event::Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                },
            )
        });
        let mut fds = [
            PollFd::new(&monitor, PollFlags::IN),
            PollFd::new(&pidfd, PollFlags::IN),
        ];
        match poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let exited = fds[1].revents().contains(PollFlags::IN);
        for ev in monitor.process()? {
            if let MonitorEvent::Oom(r) = ev {
                eprintln!("supervise: {r}");
                reports.push(r);
            }
        }
        if exited {
            break;
        }
    }
    let status = child.wait()?;
    let (reason, _last, fin) = exit_reason(&mut monitor, child.pid(), status, &reports)?;
    eprintln!("supervise: {fin}");
    let code = match &reason {
        ExitReason::OomKilled { level, victims } => {
            let killed: Vec<String> = victims
                .iter()
                .map(|v| format!("{} ({})", v.pid, v.comm))
                .collect();
            let killed = if killed.is_empty() {
                format!("victims unknown (kernel log: {:?})", monitor.kernel_log())
            } else {
                format!("killed {}", killed.join(", "))
            };
            println!(
                "OOMKilled: {}, {killed}",
                describe(level, ctr.hierarchy_path())
            );
            137
        }
        ExitReason::Signalled { signal, .. } => {
            println!("{reason}");
            128 + signal
        }
        ExitReason::Exited { code, .. } => {
            println!("{reason}");
            *code
        }
        other => {
            println!("{other}");
            125
        }
    };
    drop(monitor);
    if let Err(e) = std::fs::remove_dir(&args.cgroup) {
        eprintln!("supervise: rmdir {}: {e}", args.cgroup.display());
    }
    Ok(code)
}
