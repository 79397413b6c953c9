//! Reserve mode on real kernels: after `reserve::enter` every resident mapping of the process is
//! locked (VmLck), it is exempt from the OOM killer (oom_score_adj −1000) and an IO flusher; and
//! while another process exhausts all of the guest's memory, the reserved process keeps waking
//! on time (its lateness is reported), then acts: it kills the hog through a pidfd.
//!
//! Observed on every kernel we boot: with no swap, the kernel's own OOM killer does not fire for
//! well over a minute once memory is gone — the hog spins in direct reclaim (`shrink_slab`), which
//! keeps freeing a little slab. So the test cannot wait for the kernel; it acts itself after two
//! seconds of exhaustion, which is the situation oomkit is for.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use oomkit::kill::{KillOptions, Pidfd};
use oomkit::reserve::{self, ReserveConfig};

use crate::harness::{Ctx, Outcome, TestResult};
use crate::workload::WorkloadKind;
use crate::{ensure, fail};

/// Mappings of this process with resident pages but without `VM_LOCKED` (`lo` in smaps'
/// VmFlags), except the kernel's special mappings (vdso, vvar), which mlock never locks. (The
/// smaps `Locked:` field is a proportional share, smaller than `Rss` for pages other processes map
/// too, so the flag is the reliable test.)
fn unlocked_mappings() -> Result<Vec<String>, crate::harness::Fail> {
    let smaps = crate::harness::read_file("/proc/self/smaps".as_ref())?;
    let mut out = Vec::new();
    let mut name = String::new();
    let mut rss = 0u64;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A new mapping header: "start-end perms offset dev inode [name]".
            name = line
                .split_whitespace()
                .nth(5)
                .unwrap_or("[anon]")
                .to_string();
            rss = 0;
        } else if let Some(v) = line.strip_prefix("Rss:") {
            rss = v
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            let locked = flags.split_whitespace().any(|f| f == "lo");
            let special = matches!(
                name.as_str(),
                "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]"
            );
            if rss > 0 && !locked && !special {
                out.push(format!("{name} (Rss {rss} KiB, VmFlags{flags})"));
            }
        }
    }
    Ok(out)
}

const PERIOD: Duration = Duration::from_millis(10);

pub fn reserve_under_exhaustion(ctx: &mut Ctx) -> TestResult {
    let report = reserve::enter(&ReserveConfig::default());
    for step in ["mlockall", "oom_score_adj", "io_flusher"] {
        ensure!(
            report.granted(step),
            "reserve step {step} not granted:\n{report}"
        );
    }
    let st = reserve::verify()?;
    ensure!(
        st.oom_score_adj == -1000,
        "oom_score_adj is {} after enter",
        st.oom_score_adj
    );
    ensure!(
        st.io_flusher == Some(true),
        "IO_FLUSHER is {:?} after enter",
        st.io_flusher
    );
    ensure!(st.vm_lck > 0, "VmLck is 0 after mlockall");
    let unlocked = unlocked_mappings()?;
    ensure!(
        unlocked.is_empty(),
        "VmLck {} KiB, VmRSS {} KiB; resident but unlocked: {}",
        st.vm_lck >> 10,
        st.vm_rss >> 10,
        unlocked.join(", ")
    );

    // Another process eats all memory (no limit on its cgroup). Without swap the kernel's OOM
    // killer may take a long time (direct reclaim keeps finding a little slab to free), which is
    // the situation a reserved handler exists for: it must keep waking on time, then act.
    // Opened before memory runs out and read without allocating, as oomkit's machine source
    // does: a fresh open (the kernel's seq_file buffer) or a growing String under exhaustion
    // stalls this loop in direct reclaim, which measures the test, not the reserve.
    let mut meminfo = MemInfo::open()?;
    let (path, cg) = ctx.cgroup("hog")?;
    let mut hog = ctx.spawn(&path, WorkloadKind::HogGrow { step_mib: 8 })?;
    let victim = Pidfd::open_in(&cg, hog.pid())?;
    let start = Instant::now();
    let mut fill = Lateness::default();
    let mut exhausted = Lateness::default();
    let mut exhausted_since: Option<Instant> = None;
    let mut min_avail = u64::MAX;
    let mut acted: Option<(Instant, u64, oomkit::Result<oomkit::kill::Mrelease>)> = None;
    while victim.is_alive()? {
        if start.elapsed() > Duration::from_secs(60) {
            fail!(
                "the hog was still alive after 60 s (min MemAvailable {min_avail} KiB); {}",
                stuck_report(hog.pid())
            );
        }
        let before = Instant::now();
        std::thread::sleep(PERIOD);
        let late = before.elapsed().saturating_sub(PERIOD);
        let avail = meminfo.available_kib().unwrap_or(u64::MAX);
        min_avail = min_avail.min(avail);
        match exhausted_since {
            None => fill.add(late),
            Some(_) => exhausted.add(late),
        }
        if exhausted_since.is_none() && avail < EXHAUSTED_KIB {
            exhausted_since = Some(Instant::now());
        }
        if acted.is_none() && exhausted_since.is_some_and(|t| t.elapsed() >= STAY_EXHAUSTED) {
            let out = oomkit::kill::kill_process(&victim, &KillOptions::default());
            acted = Some((Instant::now(), avail, out.map(|o| o.mreleased)));
        }
    }
    let status = hog.wait_exit(Duration::from_secs(10))?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "hog ended with {status}, not SIGKILL"
    );
    let Some(since) = exhausted_since else {
        fail!("memory never ran out (min MemAvailable {min_avail} KiB)");
    };
    let outcome = match &acted {
        Some((at, avail, Ok(m))) => {
            super::common::wait_for_mem_available(256 << 10, Duration::from_secs(10))?;
            let recovered = at.elapsed();
            format!(
                "after {:.1} s of exhaustion we killed the hog at MemAvailable {avail} KiB \
                 (mrelease {m:?}); MemAvailable back over 256 MiB {:.0} ms later",
                at.duration_since(since).as_secs_f64(),
                recovered.as_secs_f64() * 1000.0
            )
        }
        Some((_, avail, Err(e))) if e.is_gone() => {
            format!("the kernel OOM killer beat our kill at MemAvailable {avail} KiB")
        }
        Some((_, _, Err(e))) => fail!("killing the hog failed: {e}"),
        None => "the kernel OOM killer took the hog before we acted".to_string(),
    };
    ensure!(
        exhausted.wakeups >= 20 || acted.is_none(),
        "only {} wakeups while memory was exhausted",
        exhausted.wakeups
    );
    for (phase, l) in [("filling", &fill), ("exhausted", &exhausted)] {
        ensure!(
            l.worst < Duration::from_secs(1),
            "a wakeup while {phase} was {:?} late",
            l.worst
        );
        ctx.note(format!("wakeup latency while {phase}: {l}"));
    }
    Ok(Outcome::Pass(format!(
        "all resident mappings VM_LOCKED (VmLck {} KiB), oom_score_adj -1000, IO_FLUSHER; \
         {} wakeups while exhausted (MemAvailable < {} MiB, min {min_avail} KiB), worst {:.2} ms late; {outcome}",
        st.vm_lck >> 10,
        exhausted.wakeups,
        EXHAUSTED_KIB >> 10,
        exhausted.worst.as_secs_f64() * 1000.0,
    )))
}

/// `/proc/meminfo` kept open and re-read with `pread` into a fixed buffer: no allocation, in the
/// process or (after the first read, which sizes the seq_file buffer) in the kernel.
struct MemInfo {
    file: std::fs::File,
    buf: [u8; 8192],
}

impl MemInfo {
    fn open() -> Result<MemInfo, crate::harness::Fail> {
        let file = std::fs::File::open("/proc/meminfo")
            .map_err(|e| crate::harness::Fail(format!("open /proc/meminfo: {e}")))?;
        let mut m = MemInfo {
            file,
            buf: [0; 8192],
        };
        m.available_kib()
            .ok_or_else(|| crate::harness::Fail("no MemAvailable in /proc/meminfo".into()))?;
        Ok(m)
    }

    /// `MemAvailable` in KiB.
    fn available_kib(&mut self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut len = 0;
        while len < self.buf.len() {
            match self.file.read_at(&mut self.buf[len..], len as u64) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(_) => return None,
            }
        }
        let text = oomkit::proc::parse::complete_lines(&self.buf[..len]);
        let m = oomkit::proc::parse::meminfo(text).ok()?;
        m.mem_available.map(|b| b >> 10)
    }
}

/// Memory counts as exhausted below this much MemAvailable.
const EXHAUSTED_KIB: u64 = 8 << 10;
/// How long the reserved process watches an exhausted machine before it acts.
const STAY_EXHAUSTED: Duration = Duration::from_secs(2);

/// How late periodic wakeups were.
#[derive(Default)]
struct Lateness {
    wakeups: u32,
    worst: Duration,
    total: Duration,
}

impl Lateness {
    fn add(&mut self, late: Duration) {
        self.wakeups += 1;
        self.worst = self.worst.max(late);
        self.total += late;
    }
}

impl std::fmt::Display for Lateness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mean = self.total / self.wakeups.max(1);
        write!(
            f,
            "{} wakeups of {PERIOD:?}: worst {:.2} ms, mean {:.3} ms late",
            self.wakeups,
            self.worst.as_secs_f64() * 1000.0,
            mean.as_secs_f64() * 1000.0
        )
    }
}

/// Where a process is stuck, and the memory state, for a failure message.
fn stuck_report(pid: i32) -> String {
    let rd = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
    let status = rd("status");
    let state = status
        .lines()
        .find(|l| l.starts_with("State:"))
        .unwrap_or("");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem: Vec<&str> = meminfo.lines().take(24).collect();
    format!(
        "hog {state}, wchan {}, stack: {}; meminfo: {}",
        rd("wchan"),
        rd("stack").replace('\n', " | "),
        mem.join(" | ")
    )
}
