//! Fixture capture (`oomkit.mode=fixtures`): real kernel files for the SDK's parser tests.
//!
//! A child cgroup `/sys/fs/cgroup/fixture` with the memory controller gets limits, one workload
//! that overruns `memory.max` (so `max`/`oom`/`oom_kill` in `memory.events` are non-zero), and one
//! that holds 16 MiB (so `memory.current`/`memory.stat` are non-zero). Then every `memory.*` and
//! `cgroup.*` file of the child and of the root cgroup, `/proc/pressure/memory`, `/proc/meminfo`,
//! `/proc/vmstat` and `/proc/<hog>/status` are sent to the host as `FILE` lines; the xtask writes
//! them to `sdk/fixtures/<release>/{child,root,proc}/`. Write-only files (`cgroup.kill`,
//! `memory.reclaim`) cannot be read and are listed in `MANIFEST` instead.

use std::path::Path;
use std::time::Duration;

use crate::harness::{Fail, write_file};
use crate::proto::{Proto, hex};
use crate::workload::{Workload, WorkloadKind};

const CHILD: &str = "/sys/fs/cgroup/fixture";

/// Capture and send everything; returns how many files were sent.
pub fn capture(proto: &mut Proto) -> Result<usize, Fail> {
    let child = Path::new(CHILD);
    if !child.exists() {
        std::fs::create_dir(child).map_err(|e| Fail(format!("mkdir {CHILD}: {e}")))?;
    }
    write_file(&child.join("memory.max"), "33554432")?;
    // One OOM kill for non-zero event counters.
    let mut over = Workload::spawn(
        child,
        WorkloadKind::HogExit {
            mib: 64,
            step_mib: 4,
        },
    )?;
    let st = over.wait_exit(Duration::from_secs(60))?;
    drop(over);
    std::os::unix::process::ExitStatusExt::signal(&st)
        .filter(|&s| s == libc::SIGKILL)
        .ok_or_else(|| {
            Fail(format!(
                "the 64 MiB hog in a 32 MiB cgroup was not OOM-killed ({st})"
            ))
        })?;
    write_file(&child.join("memory.max"), "134217728")?;
    write_file(&child.join("memory.high"), "100663296")?;
    write_file(&child.join("memory.low"), "8388608")?;
    let mut hog = Workload::spawn(
        child,
        WorkloadKind::HogHold {
            mib: 16,
            step_mib: 4,
        },
    )?;
    hog.wait_line("done", Duration::from_secs(60))?;

    let mut manifest = format!(
        "# Captured by `cargo xtask fixtures` in a qemu guest.\n# uname -r: {}\n# /proc/version: {}\n",
        crate::runner::release(),
        std::fs::read_to_string("/proc/version")
            .unwrap_or_default()
            .trim()
    );
    manifest.push_str(
        "# child: /sys/fs/cgroup/fixture with memory.max 128M, memory.high 96M, memory.low 8M,\n\
         # after one OOM kill (64 MiB hog under a 32M limit), holding a 16 MiB hog.\n\
         # root: /sys/fs/cgroup. proc: pressure/memory, meminfo, vmstat, pid/status (the hog).\n",
    );
    let mut sent = 0;
    for (dir, dest) in [(child, "child"), (Path::new("/sys/fs/cgroup"), "root")] {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| Fail(format!("list {}: {e}", dir.display())))?
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("memory.") || n.starts_with("cgroup."))
            .collect();
        names.sort();
        for n in names {
            let p = dir.join(&n);
            match std::fs::read(&p) {
                Ok(data) => {
                    proto.line("FILE", &format!("{dest}/{n} {}", hex(&data)));
                    manifest.push_str(&format!("{dest}/{n}\n"));
                    sent += 1;
                }
                Err(e) => manifest.push_str(&format!("{dest}/{n} unreadable: {e}\n")),
            }
        }
    }
    let proc_files = [
        ("/proc/pressure/memory".to_string(), "proc/pressure/memory"),
        ("/proc/meminfo".to_string(), "proc/meminfo"),
        ("/proc/vmstat".to_string(), "proc/vmstat"),
        (format!("/proc/{}/status", hog.pid()), "proc/pid/status"),
    ];
    for (src, dest) in proc_files {
        let data = std::fs::read(&src).map_err(|e| Fail(format!("read {src}: {e}")))?;
        proto.line("FILE", &format!("{dest} {}", hex(&data)));
        manifest.push_str(&format!("{dest}\n"));
        sent += 1;
    }
    proto.line("FILE", &format!("MANIFEST {}", hex(manifest.as_bytes())));
    drop(hog);
    Ok(sent + 1)
}
