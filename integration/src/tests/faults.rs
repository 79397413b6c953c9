//! No major page fault between an event and the kill, under exhaustion (issue 12).
//!
//! A guest's initramfs is RAM: a binary there is never paged out, so a major fault cannot happen
//! and measuring one would prove nothing. So the daemon runs from an ext2 file system on the
//! VM's scratch NVMe disk, with its page cache dropped first: every page of its text it has not
//! locked can be evicted and would have to be read back from the disk (a major fault).
//!
//! Each run then (1) squeezes the daemon's own cgroup (`memory.high` 0, at once restored: the
//! write reclaims synchronously, and unlike `memory.max` it never fails an allocation): the
//! kernel reclaims every page of the daemon that is not locked, a deterministic stand-in for the
//! worst that global reclaim could do to it; (2) fills the guest with an unmanaged hog up to a
//! few dozen MiB of `MemAvailable`, so page cache is being evicted machine-wide while (3) the
//! priority scenario's batch job grows into its machine's `memory.high`/`memory.max` and the
//! daemon decides and kills. The daemon logs the major faults of the episode's turns up to the
//! kill (`major_faults_to_kill` in its `episode page faults` line, from `getrusage`).
//!
//! Two runs: `mlock = "off"` first, which must see major faults (else the squeeze or the
//! measurement is broken and the second run would prove nothing), then the default reserve mode
//! (`resident`: what the warm-up decision touched is locked), which must see none.
//!
//! The `off` run also notes how deep the episode wrote into the daemon's main stack (soft-dirty
//! bits of `/proc/PID/pagemap`, cleared after the squeeze; page granular), beside how deep its
//! resident stack (the start-up prefault) reaches: what the stack prefault must cover.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use oomkit::cgroup::Limit;
use serde_json::{Value, json};

use crate::harness::{Ctx, Fail, Outcome, TestResult, wait_for, write_file};
use crate::scenario::{OOMKIT_BIN, ended, hier, parent_cgroup, priority_config, set_trusted_xattr};
use crate::workload::{Workload, WorkloadKind};
use crate::{ensure, fail};

const DISK: &str = "/dev/nvme0n1";
const MNT: &str = "/mnt/oomkit-disk";
const MIB: u64 = 1 << 20;
/// What the filler leaves of `MemAvailable` (MiB): the machine below needs more than that.
const LEAVE_MIB: u64 = 44;
const MACHINE_MAX_MIB: u64 = 96;
const MACHINE_HIGH_MIB: u64 = 64;
const SERVICE_MIB: u64 = 24;

fn busybox(args: &[&str]) -> Result<(), Fail> {
    let out = Command::new("/bin/busybox")
        .args(args)
        .output()
        .map_err(|e| Fail(format!("busybox {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(Fail(format!(
            "busybox {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// An ext2 file system on the scratch disk holding a copy of the daemon; returns its path.
fn daemon_on_disk() -> Result<PathBuf, Fail> {
    if !Path::new(DISK).exists() {
        fail!("{DISK} is missing: this test needs the VM's scratch disk");
    }
    if !Path::new(MNT).join("oomkit").exists() {
        std::fs::create_dir_all(MNT)?;
        busybox(&["mke2fs", "-q", "-F", DISK])?;
        busybox(&["mount", "-t", "ext2", DISK, MNT])
            .or_else(|_| busybox(&["mount", "-t", "ext4", DISK, MNT]))?;
        std::fs::copy(OOMKIT_BIN, Path::new(MNT).join("oomkit"))?;
    }
    busybox(&["sync"])?;
    // Nothing of the copy stays cached: the daemon's pages come from the disk.
    write_file(Path::new("/proc/sys/vm/drop_caches"), "3")?;
    Ok(Path::new(MNT).join("oomkit"))
}

fn mem_available_mib() -> Result<u64, Fail> {
    let m = oomkit::proc::meminfo()?;
    Ok(m.mem_available.unwrap_or(0) >> 20)
}

fn vmstat(key: &str) -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

fn log_lines(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn tail(log: &Path) -> String {
    let t = std::fs::read_to_string(log).unwrap_or_default();
    let l: Vec<&str> = t.lines().collect();
    l[l.len().saturating_sub(10)..].join(" | ")
}

/// One run with `[reserve] mlock = <mlock>`; returns the daemon's `episode page faults` line and the
/// file pages the kernel reclaimed meanwhile.
fn run(ctx: &Ctx, bin: &Path, mlock: &str) -> Result<(Value, u64), Fail> {
    let tag = mlock.replace('-', "_");
    let (machine_path, machine) = parent_cgroup(ctx, &format!("machine-{tag}"))?;
    machine.set_memory_max(Limit::Bytes(MACHINE_MAX_MIB * MIB))?;
    machine.set_memory_high(Limit::Bytes(MACHINE_HIGH_MIB * MIB))?;
    let (service_path, _) = ctx.cgroup(&format!("machine-{tag}/service"))?;
    let (batch_path, _) = ctx.cgroup(&format!("machine-{tag}/batch"))?;
    set_trusted_xattr(&service_path, "oomkit.priority", "100")?;

    let dir = PathBuf::from(format!("/tmp/oomkit-faults/{tag}"));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("oomkit.toml");
    write_file(
        &config,
        &format!(
            "[daemon]\nroot = \"{}\"\ndepth = 4\nlog_format = \"json\"\nlog_level = \"info\"\n\n\
             [reserve]\nmlock = \"{mlock}\"\n\n{}",
            machine_path.display(),
            priority_config(&hier(&batch_path), None)
        ),
    )?;
    let log = dir.join("oomkit.log");
    let (daemon_cg, daemon_cgroup) = ctx.cgroup(&format!("oomkit-{tag}"))?;
    let args = vec![
        "run".to_string(),
        "--config".to_string(),
        config.display().to_string(),
    ];
    let mut daemon =
        Workload::spawn_exec(&daemon_cg, bin, &args, Some(std::fs::File::create(&log)?))?;
    wait_for(
        "the daemon's `running` line",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            if daemon.try_exited().is_some() {
                return Err(Fail(format!("the daemon exited: {}", tail(&log))));
            }
            Ok(log_lines(&log)
                .iter()
                .any(|l| l["message"] == "running")
                .then_some(()))
        },
    )?;

    // Its watchdog thread is up (the squeeze must not meet a thread being set up).
    wait_for(
        "the daemon's watchdog thread",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            let n = std::fs::read_dir(format!("/proc/{}/task", daemon.pid()))?.count();
            Ok((n >= 2).then_some(()))
        },
    )?;
    // (1) Everything of the daemon that is not locked leaves RAM.
    let before = daemon_cgroup.memory_current()?;
    daemon_cgroup.set_memory_high(Limit::Bytes(0))?;
    daemon_cgroup.set_memory_high(Limit::Max)?;
    let squeezed = daemon_cgroup.memory_current()?;
    // Only the control run: soft-dirty tracking write-protects every page once, which the
    // locked run must not meet.
    let soft_dirty = mlock == "off" && clear_soft_dirty(daemon.pid());

    // (2) The machine fills up; (3) the service, then the batch job growing into the limits.
    let filler_mib = mem_available_mib()?.saturating_sub(LEAVE_MIB + SERVICE_MIB);
    let (filler_cg, _) = ctx.cgroup(&format!("filler-{tag}"))?;
    let mut filler = ctx.spawn(
        &filler_cg,
        WorkloadKind::HogHold {
            mib: filler_mib,
            step_mib: 16,
        },
    )?;
    filler.wait_line("done", Duration::from_secs(120))?;
    if let Ok(d) = oomkit::proc::ProcDir::open(filler.pid()) {
        // If the kernel has to kill, the filler goes first, not the scenario.
        let _ = d.set_oom_score_adj(1000);
    }
    let mut service = ctx.spawn(
        &service_path,
        WorkloadKind::HogHold {
            mib: SERVICE_MIB,
            step_mib: 8,
        },
    )?;
    service.wait_line("done", Duration::from_secs(60))?;
    let steal_before = vmstat("pgsteal_file") + vmstat("pgsteal_kswapd") + vmstat("pgsteal_direct");
    let mut batch = ctx.spawn(&batch_path, WorkloadKind::HogGrow { step_mib: 2 })?;
    let start = Instant::now();
    let ended_line = wait_for(
        "the daemon's `episode page faults` line",
        Duration::from_secs(120),
        Duration::from_millis(20),
        || {
            if daemon.try_exited().is_some() {
                return Err(Fail(format!("the daemon exited: {}", tail(&log))));
            }
            Ok(log_lines(&log)
                .into_iter()
                .find(|l| l["message"] == "episode page faults"))
        },
    )
    .map_err(|e| Fail(format!("{}; daemon log: {}", e.0, tail(&log))))?;
    let steal = (vmstat("pgsteal_file") + vmstat("pgsteal_kswapd") + vmstat("pgsteal_direct"))
        .saturating_sub(steal_before);
    let stack = if soft_dirty {
        match stack_depths(daemon.pid()) {
            Ok((written, resident)) => {
                json!({"written_in_episode_kib": written, "resident_kib": resident})
            }
            Err(e) => json!({"error": e.0}),
        }
    } else {
        Value::Null
    };
    let batch_end = ended(&mut batch);
    let service_end = ended(&mut service);
    let filler_end = ended(&mut filler);
    drop(batch);
    drop(service);
    drop(filler);
    if let Some(pid) = rustix::process::Pid::from_raw(daemon.pid()) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let _ = daemon.wait_exit(Duration::from_secs(10));
    ctx.note(json!({
        "kind": "major_faults", "mlock": mlock,
        "major_faults_to_kill": ended_line["major_faults_to_kill"],
        "major_faults": ended_line["major_faults"],
        "outcome": ended_line["outcome"],
        "daemon_kib_before_squeeze": before >> 10, "daemon_kib_after": squeezed >> 10,
        "filler_mib": filler_mib, "pages_reclaimed_meanwhile": steal,
        "main_stack_below_top": stack,
        "batch": batch_end, "service": service_end, "filler": filler_end,
        "secs": start.elapsed().as_secs_f64(),
    }));
    ensure!(
        // The control run may be slow enough (pages read back from disk) for the re-check to
        // find the pressure gone; the locked run must reach the kill.
        mlock == "off"
            || ended_line["outcome"]
                .as_str()
                .is_some_and(|o| o.contains("Acted")),
        "mlock {mlock}: the episode did not act: {ended_line}; daemon log: {}",
        tail(&log)
    );
    Ok((ended_line, steal))
}

/// Starts soft-dirty tracking of `pid` (`/proc/PID/clear_refs` 4): from now on bit 55 of its
/// `/proc/PID/pagemap` entries marks the pages it writes. `false` if the kernel cannot.
fn clear_soft_dirty(pid: i32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "4").is_ok()
}

/// How far below the top of its main stack `pid` wrote since [`clear_soft_dirty`], and how far
/// its resident stack reaches (KiB, page granular; the top holds arguments and environment).
fn stack_depths(pid: i32) -> Result<(u64, u64), Fail> {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let range = maps
        .lines()
        .find(|l| l.ends_with("[stack]"))
        .and_then(|l| l.split(' ').next())
        .ok_or_else(|| Fail(format!("no [stack] in /proc/{pid}/maps")))?;
    let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|e| Fail(format!("{range}: {e}")));
    let (start, end) = match range.split_once('-') {
        Some((a, b)) => (hex(a)?, hex(b)?),
        None => fail!("{range}: not START-END"),
    };
    let mut entries = vec![0u8; ((end - start) / 4096 * 8) as usize];
    std::fs::File::open(format!("/proc/{pid}/pagemap"))?
        .read_exact_at(&mut entries, start / 4096 * 8)?;
    // The lowest page with `bit` set, as KiB below the top.
    let lowest = |bit: u32| {
        entries
            .chunks_exact(8)
            .position(|e| {
                let mut b = [0u8; 8];
                b.copy_from_slice(e);
                u64::from_le_bytes(b) & (1 << bit) != 0
            })
            .map_or(0, |i| (end - start - i as u64 * 4096) >> 10)
    };
    // Bit 55: soft-dirty; bit 63: present.
    Ok((lowest(55), lowest(63)))
}

pub fn no_major_fault_to_kill(ctx: &mut Ctx) -> TestResult {
    let bin = daemon_on_disk()?;
    let (off, _) = run(ctx, &bin, "off")?;
    let off_faults = off["major_faults_to_kill"].as_u64().unwrap_or(0);
    ensure!(
        off_faults > 0,
        "without mlock the squeezed daemon took no major fault between event and kill \
         ({off}): the squeeze or the measurement cannot see faults, so the locked run proves \
         nothing"
    );
    let bin = daemon_on_disk()?;
    let (on, steal) = run(ctx, &bin, "resident")?;
    let on_faults = on["major_faults_to_kill"].as_u64();
    ensure!(
        on_faults == Some(0),
        "reserve mode (mlock = \"resident\"): {on_faults:?} major faults between event and kill \
         (without mlock: {off_faults}); {on}"
    );
    Ok(Outcome::Pass(format!(
        "major faults event → kill: {off_faults} without mlock, 0 with mlock = \"resident\" \
         ({} in the whole episode; {steal} pages reclaimed machine-wide meanwhile)",
        on["major_faults"]
    )))
}
