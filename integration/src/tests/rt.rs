//! What a container runtime gets from oomkit, on real kernels: the OOM monitor's reports (level,
//! counters, victims matched to the kernel log), the final counters of a cgroup removed as soon
//! as it empties, spawning into a cgroup, and the `supervise` example end to end.
//!
//! Every container here is `<test>/pod/<ctr>`: the pod has `+memory` for its children, so a limit
//! on the pod is a "pod-level" limit as Kubernetes sets them. Workloads are the guest binary's
//! `workload` helpers, started with [`Spawn::spawn_into`] (which places them in the cgroup
//! before their first instruction); each names itself after its cgroup, so the kernel logs that
//! name as the victim's `comm`.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oomkit::Cgroup;
use oomkit::cgroup::{Limit, MemoryEventKind};
use oomkit::events::CgroupEventsWatch;
use oomkit::monitor::{
    FinalCounters, FinalReport, KernelLogAccess, Level, MonitorEvent, MonitorOptions, OomMonitor,
    OomReport, VictimsStatus,
};
use oomkit::spawn::{Placement, Spawn, SpawnedChild};

use super::common::kernel_version;
use crate::harness::{Ctx, Fail, Outcome, TestResult, write_file};
use crate::workload::WorkloadKind;
use crate::{ensure, fail};

/// The `supervise` example, packed into the initramfs by the xtask.
pub const SUPERVISE_BIN: &str = "/bin/supervise";

/// Creates `<base>/pod` (with `+memory` for its children) and `<base>/pod/<ctr>`.
fn pod_and_ctr(ctx: &Ctx, ctr: &str) -> Result<(PathBuf, Cgroup, PathBuf, Cgroup), Fail> {
    let (pod_path, pod) = ctx.cgroup("pod")?;
    write_file(&pod_path.join("cgroup.subtree_control"), "+memory")?;
    let ctr_path = pod_path.join(ctr);
    match std::fs::create_dir(&ctr_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => fail!("mkdir {}: {e}", ctr_path.display()),
    }
    let ctr = Cgroup::open(&ctr_path)?;
    Ok((pod_path, pod, ctr_path, ctr))
}

fn dev_null() -> Result<OwnedFd, Fail> {
    Ok(std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|e| Fail(format!("open /dev/null: {e}")))?
        .into())
}

/// Starts `oomkit-guest workload <cg> <args…>` inside `cg` (stdout to /dev/null: the test's own
/// stdout is the runner's protocol channel).
fn spawn_workload(
    path: &Path,
    cg: &Cgroup,
    args: &[&str],
    placement: Placement,
) -> Result<SpawnedChild, Fail> {
    let exe = std::env::current_exe().map_err(|e| Fail(format!("current_exe: {e}")))?;
    Spawn::new(exe)
        .arg("workload")
        .arg(path)
        .args(args)
        .stdout(dev_null()?)
        .placement(placement)
        .spawn_into(cg)
        .map_err(|e| {
            Fail(format!(
                "spawn workload {args:?} into {}: {e}",
                path.display()
            ))
        })
}

/// Waits until `pick` returns something from the monitor's events, or fails after `timeout`
/// with everything seen so far.
fn wait_monitor<T>(
    m: &mut OomMonitor,
    timeout: Duration,
    mut pick: impl FnMut(&MonitorEvent) -> Option<T>,
) -> Result<(T, Vec<MonitorEvent>), Fail> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            fail!("after {timeout:?} the monitor reported only {seen:?}");
        }
        for ev in m.wait(Some(left))? {
            let hit = pick(&ev);
            seen.push(ev);
            if let Some(v) = hit {
                return Ok((v, seen));
            }
        }
    }
}

/// Starts the workload's hog in the container: 64 MiB in 4 MiB steps, then it holds.
fn spawn_hog(ctr_path: &Path, ctr: &Cgroup) -> Result<SpawnedChild, Fail> {
    spawn_workload(ctr_path, ctr, &["hog", "64", "4", "hold"], Placement::Auto)
}

/// The kernel log and a monitor on `ctr`, both opened before the test's workload starts.
fn watch(ctr: &Cgroup) -> Result<(RawLog, OomMonitor), Fail> {
    let raw = RawLog::open()?;
    let m = OomMonitor::open(ctr, MonitorOptions::default())?;
    Ok((raw, m))
}

/// The monitor's first OOM report (waiting up to 45 s), once `hog` died of SIGKILL.
fn oom_of(m: &mut OomMonitor, hog: &mut SpawnedChild) -> Result<OomReport, Fail> {
    let (r, _) = wait_monitor(m, Duration::from_secs(45), first_oom)?;
    expect_sigkill(hog, "hog")?;
    Ok(r)
}

fn first_oom(ev: &MonitorEvent) -> Option<OomReport> {
    match ev {
        MonitorEvent::Oom(r) => Some(r.clone()),
        _ => None,
    }
}

/// The OOM killer's lines in `/dev/kmsg`, read by the test itself (not through the SDK) to check
/// the monitor's victims against what the kernel logged.
struct RawLog {
    f: std::fs::File,
}

impl RawLog {
    fn open() -> Result<Self, Fail> {
        use std::io::Seek;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .map_err(|e| Fail(format!("open /dev/kmsg: {e}")))?;
        f.seek(std::io::SeekFrom::End(0))
            .map_err(|e| Fail(format!("seek /dev/kmsg: {e}")))?;
        Ok(RawLog { f })
    }

    /// The OOM-related messages logged since `open` (or the previous call).
    fn oom_lines(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let msg = rec
                        .split_once(';')
                        .map(|(_, m)| m.lines().next().unwrap_or("").to_string())
                        .unwrap_or_default();
                    if msg.contains("Killed process")
                        || msg.starts_with("oom-kill:")
                        || msg.starts_with("Tasks in ")
                    {
                        out.push(msg);
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        out
    }
}

/// The kernel logged `Killed process <pid> (<comm>)` for every victim of the report.
fn check_against_log(r: &OomReport, lines: &[String]) -> Result<(), Fail> {
    for v in &r.victims {
        let needle = format!("Killed process {} ({})", v.pid, v.comm);
        ensure!(
            lines.iter().any(|l| l.contains(&needle)),
            "victim {} ({}) of the report is not in the kernel log: {lines:?}",
            v.pid,
            v.comm
        );
    }
    Ok(())
}

fn expect_sigkill(child: &mut SpawnedChild, who: &str) -> Result<(), Fail> {
    let st = child.wait()?;
    ensure!(
        st.signal() == Some(libc::SIGKILL),
        "{who} {} ended with {st}, not SIGKILL",
        child.pid()
    );
    Ok(())
}

/// The container's own limit: level = container, the victim's PID and comm as the kernel logged
/// them; the spawn used clone3(CLONE_INTO_CGROUP).
pub fn own_limit(ctx: &mut Ctx) -> TestResult {
    let (_, _, ctr_path, ctr) = pod_and_ctr(ctx, "ctr")?;
    ctr.set_memory_max(Limit::Bytes(32 << 20))?;
    let (mut raw, mut m) = watch(&ctr)?;
    ensure!(
        *m.kernel_log() == KernelLogAccess::Readable,
        "kernel log not readable as root: {:?}",
        m.kernel_log()
    );
    let mut hog = spawn_hog(&ctr_path, &ctr)?;
    ensure!(
        hog.placement() == Placement::Clone3,
        "spawn fell back to {:?} on Linux {:?} (CLONE_INTO_CGROUP is 5.7+)",
        hog.placement(),
        kernel_version()
    );
    let r = oom_of(&mut m, &mut hog)?;
    let lines = raw.oom_lines();
    ctx.note(format!("kernel log: {}", lines.join(" | ")));
    ensure!(r.level == Level::Container, "level {:?}: {r}", r.level);
    ensure!(
        r.victims_status == VictimsStatus::Complete,
        "victims {:?}: {r}",
        r.victims_status
    );
    ensure!(
        r.victims.len() == 1 && r.victims[0].pid == hog.pid() && r.victims[0].comm == "ctr",
        "victims {:?}, expected the hog {} (ctr)",
        r.victims,
        hog.pid()
    );
    ensure!(
        r.rose.oom.unwrap_or(0) >= 1 && r.rose.oom_kill == Some(1),
        "counters rose {:?}",
        r.rose
    );
    check_against_log(&r, &lines)?;
    let latency = r
        .reported
        .duration_since(r.first_seen)
        .unwrap_or_default()
        .as_millis();
    Ok(Outcome::Pass(format!(
        "{r}; victim matched the kernel log; counter-to-report {latency} ms"
    )))
}

/// A pod with a tighter limit than its container: level = pod, and the report is there although
/// the container's own `oom` counter never rose (the case containerd missed).
pub fn pod_limit(ctx: &mut Ctx) -> TestResult {
    let (pod_path, pod, ctr_path, ctr) = pod_and_ctr(ctx, "ctr")?;
    pod.set_memory_max(Limit::Bytes(32 << 20))?;
    ctr.set_memory_max(Limit::Bytes(256 << 20))?;
    let (mut raw, mut m) = watch(&ctr)?;
    let mut hog = spawn_hog(&ctr_path, &ctr)?;
    let r = oom_of(&mut m, &mut hog)?;
    let pod_hier = pod.hierarchy_path().to_path_buf();
    ensure!(
        r.level == Level::Pod { path: pod_hier },
        "level {:?}, expected the pod {}: {r}",
        r.level,
        pod_path.display()
    );
    ensure!(
        r.rose.oom.unwrap_or(0) == 0 && r.rose.oom_kill == Some(1),
        "container counters rose {:?} (expected oom +0, oom_kill +1)",
        r.rose
    );
    ensure!(
        r.victims.iter().any(|v| v.pid == hog.pid()),
        "hog {} not among the victims {:?}",
        hog.pid(),
        r.victims
    );
    check_against_log(&r, &raw.oom_lines())?;
    Ok(Outcome::Pass(r.to_string()))
}

/// `memory.oom.group`: the kernel kills the whole container; every victim is reported.
pub fn group_kill(ctx: &mut Ctx) -> TestResult {
    let (_, _, ctr_path, ctr) = pod_and_ctr(ctx, "ctr")?;
    ctr.set_memory_max(Limit::Bytes(32 << 20))?;
    ctr.set_oom_group(true)?;
    let (mut raw, mut m) = watch(&ctr)?;
    let mut sleepers = Vec::new();
    for _ in 0..2 {
        sleepers.push(spawn_workload(
            &ctr_path,
            &ctr,
            &["sleep"],
            Placement::Auto,
        )?);
    }
    let mut hog = spawn_hog(&ctr_path, &ctr)?;
    let r = oom_of(&mut m, &mut hog)?;
    for s in &mut sleepers {
        expect_sigkill(s, "sleeper")?;
    }
    let mut want: Vec<i32> = sleepers.iter().map(SpawnedChild::pid).collect();
    want.push(hog.pid());
    want.sort_unstable();
    let mut got: Vec<i32> = r.victims.iter().map(|v| v.pid).collect();
    got.sort_unstable();
    ensure!(got == want, "victims {got:?}, expected {want:?}: {r}");
    // The group kill kills (and counts, and logs) the first victim a second time.
    ensure!(
        r.victims_status == VictimsStatus::Complete && r.rose.oom_kill.unwrap_or(0) >= 3,
        "status {:?}, counters {:?}",
        r.victims_status,
        r.rose
    );
    if kernel_version() >= (5, 17) {
        ensure!(
            r.rose.oom_group_kill == Some(1),
            "oom_group_kill rose {:?}",
            r.rose.oom_group_kill
        );
    }
    check_against_log(&r, &raw.oom_lines())?;
    Ok(Outcome::Pass(r.to_string()))
}

/// Removes `cg` as soon as `cgroup.events` says it is empty, as systemd does with a scope.
fn remove_when_empty(ctr: Cgroup, path: PathBuf) -> std::thread::JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        let mut w = CgroupEventsWatch::open(&ctr).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while w.last().populated != Some(false) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("never became empty".into());
            }
            let mut fds = [rustix::event::PollFd::new(
                &w,
                rustix::event::PollFlags::PRI,
            )];
            let ts = rustix::event::Timespec::try_from(left).ok();
            let _ = rustix::event::poll(&mut fds, ts.as_ref());
            w.refresh().map_err(|e| e.to_string())?;
        }
        drop(w);
        drop(ctr);
        std::fs::remove_dir(&path).map_err(|e| format!("rmdir {}: {e}", path.display()))
    })
}

/// The counters a final report must carry exactly, compared with the truth.
const FINAL_KEYS: [MemoryEventKind; 5] = [
    MemoryEventKind::High,
    MemoryEventKind::Max,
    MemoryEventKind::Oom,
    MemoryEventKind::OomKill,
    MemoryEventKind::OomGroupKill,
];

/// 20 times: a container OOM-killed by its own limit, its cgroup removed the moment it is empty
/// (a racing remover thread polling `cgroup.events`, faster than systemd's inotify), and the
/// monitor's final report must carry the final counters: read after the populated-0
/// notification, or, when the remover won the race for the file, derived from the pod's counters
/// (`Derived`, counted in the note). `Gone` (no final counters) fails the test. The truth is the
/// rise of the pod's hierarchical `memory.events`, read by the test: the container is the pod's
/// only active child (the earlier runs' containers were removed before this one was created).
pub fn removed_right_after_exit(ctx: &mut Ctx) -> TestResult {
    const RUNS: usize = 20;
    let mut read = 0;
    let mut derived = 0;
    let mut with_report = 0;
    for i in 0..RUNS {
        let name = format!("c{i}");
        let (_, pod, ctr_path, ctr) = pod_and_ctr(ctx, &name)?;
        ctr.set_memory_max(Limit::Bytes(24 << 20))?;
        let pod_before = pod.memory_events()?;
        let mut m = OomMonitor::open(&ctr, MonitorOptions::default())?;
        let mut hog = spawn_workload(
            &ctr_path,
            &ctr,
            &["hog", "48", "8", "exit"],
            Placement::Auto,
        )?;
        let remover = remove_when_empty(ctr.try_clone()?, ctr_path.clone());
        let pick = |ev: &MonitorEvent| match ev {
            MonitorEvent::Unpopulated(f) => Some(f.clone()),
            _ => None,
        };
        let (fin, seen): (FinalReport, _) = wait_monitor(&mut m, Duration::from_secs(45), pick)?;
        expect_sigkill(&mut hog, "hog")?;
        match remover.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => fail!("run {i}: remover: {e}"),
            Err(_) => fail!("run {i}: remover thread panicked"),
        }
        ensure!(
            !ctr_path.exists(),
            "run {i}: {} still exists",
            ctr_path.display()
        );
        let truth = pod.memory_events()?.delta_since(&pod_before);
        if seen.iter().any(|e| matches!(e, MonitorEvent::Oom(_))) {
            with_report += 1;
        }
        // A fresh cgroup starts at zero: its absolute counters are its totals.
        let got = match &fin.counters {
            FinalCounters::Read { events, .. } => {
                read += 1;
                *events
            }
            FinalCounters::Derived { events, .. } => {
                derived += 1;
                *events
            }
            _ => fail!("run {i} of {RUNS}: {fin} ({read} read, {derived} derived so far)"),
        };
        for k in FINAL_KEYS {
            ensure!(
                got.get(k) == truth.get(k),
                "run {i} of {RUNS}: final report {fin} has {} = {:?}, the pod counted {:?} ({truth:?})",
                k.key(),
                got.get(k),
                truth.get(k)
            );
        }
        ensure!(
            truth.oom_kill == Some(1),
            "run {i}: the pod counted oom_kill {:?}",
            truth.oom_kill
        );
    }
    ctx.note(format!(
        "final counters exact in {RUNS}/{RUNS} runs with the cgroup removed on populated 0: read after the populated-0 notification in {read}, derived from the pod in {derived}; OOM report before the final one in {with_report}/{RUNS}"
    ));
    Ok(Outcome::Pass(format!(
        "{RUNS}/{RUNS} final reports carried the final counters although a remover raced them ({read} read, {derived} derived from the pod)"
    )))
}

/// The cgroup.procs fallback of `Spawn` on a real kernel: the child is in the cgroup.
pub fn spawn_fallback(ctx: &mut Ctx) -> TestResult {
    let (_, _, ctr_path, ctr) = pod_and_ctr(ctx, "ctr")?;
    let mut s = spawn_workload(&ctr_path, &ctr, &["sleep"], Placement::WriteProcs)?;
    ensure!(
        s.placement() == Placement::WriteProcs,
        "placement {:?}",
        s.placement()
    );
    let procs = ctr.procs()?;
    ensure!(
        procs.contains(&s.pid()),
        "pid {} not in {}/cgroup.procs {procs:?}",
        s.pid(),
        ctr_path.display()
    );
    s.kill()?;
    expect_sigkill(&mut s, "sleeper")?;
    Ok(Outcome::Pass(format!(
        "fork + cgroup.procs from the child placed {} in {}",
        s.pid(),
        ctr_path.display()
    )))
}

fn supervise(args: &[String]) -> Result<(String, std::process::ExitStatus), Fail> {
    let out = std::process::Command::new(SUPERVISE_BIN)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Fail(format!("run {SUPERVISE_BIN}: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rfind(|l| {
            l.starts_with("OOMKilled") || l.starts_with("Exited") || l.starts_with("Signalled")
        })
        .unwrap_or("")
        .to_string();
    if last.is_empty() {
        fail!(
            "supervise printed no verdict (status {}); stdout {stdout:?} stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((last, out.status))
}

/// The `supervise` example: `OOMKilled` for a hog, `Exited(0)` for a well-behaved command.
pub fn supervise_example(ctx: &mut Ctx) -> TestResult {
    let (pod_path, pod, _, _) = pod_and_ctr(ctx, "ctr")?;
    let exe = std::env::current_exe().map_err(|e| Fail(format!("current_exe: {e}")))?;
    let hog_cg = pod_path.join("hog");
    let args: Vec<String> = [
        "--cgroup",
        &hog_cg.display().to_string(),
        "--memory-max",
        "33554432",
        "--",
        &exe.display().to_string(),
        "workload",
        &hog_cg.display().to_string(),
        "hog",
        "64",
        "4",
        "hold",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (line, st) = supervise(&args)?;
    let hier = pod.hierarchy_path().join("hog");
    let want = format!("OOMKilled: limit of {} fired, killed ", hier.display());
    ensure!(
        line.starts_with(&want) && line.ends_with("(hog)"),
        "supervise printed {line:?}, expected {want}PID (hog)"
    );
    ensure!(st.code() == Some(137), "supervise exited with {st}");
    ensure!(!hog_cg.exists(), "supervise left {}", hog_cg.display());
    let ok_cg = pod_path.join("ok");
    let args: Vec<String> = [
        "--cgroup",
        &ok_cg.display().to_string(),
        "--memory-max",
        "33554432",
        "--",
        "/bin/true",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (line2, st2) = supervise(&args)?;
    ensure!(
        line2 == "Exited(0)",
        "supervise printed {line2:?} for /bin/true"
    );
    ensure!(st2.code() == Some(0), "supervise exited with {st2}");
    Ok(Outcome::Pass(format!("{line} / {line2}")))
}

/// Runs `bin args…` with stdout and stderr collected line by line.
struct Example {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Example {
    fn start(bin: &str, args: &[&str]) -> Result<Self, Fail> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(bin)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| Fail(format!("run {bin}: {e}")))?;
        let (tx, rx) = std::sync::mpsc::channel();
        for r in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Example {
            child,
            lines: rx,
            seen: Vec::new(),
        })
    }

    /// Waits for a line containing `needle`; fails with everything printed so far.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String, Fail> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return Ok(l);
                    }
                }
                Err(_) => fail!(
                    "no line with {needle:?} within {timeout:?}; printed: {:?}; status {:?}",
                    self.seen,
                    self.child.try_wait().ok().flatten()
                ),
            }
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `epoll_embed` or `tokio_embed` against a container that is OOM-killed: the example prints
/// the monitor's report with the victim, then the final counters, and exits.
fn embed_example(ctx: &mut Ctx, bin: &str) -> TestResult {
    let (pod_path, _, ctr_path, ctr) = pod_and_ctr(ctx, "ctr")?;
    ctr.set_memory_max(Limit::Bytes(32 << 20))?;
    let pod_s = pod_path.display().to_string();
    let ctr_s = ctr_path.display().to_string();
    let mut ex = Example::start(bin, &[&pod_s, &ctr_s])?;
    ex.wait_for("watching", Duration::from_secs(20))?;
    let mut hog = spawn_hog(&ctr_path, &ctr)?;
    let report = ex.wait_for("OOM in", Duration::from_secs(45))?;
    expect_sigkill(&mut hog, "hog")?;
    let want = format!("killed {} (ctr)", hog.pid());
    ensure!(
        report.contains(&want),
        "{bin} printed {report:?}, expected {want}"
    );
    let fin = ex.wait_for("is empty", Duration::from_secs(30))?;
    ensure!(fin.contains("oom_kill +1"), "{bin} printed {fin:?}");
    let st = ex.child.wait().map_err(|e| Fail(e.to_string()))?;
    ensure!(st.success(), "{bin} ended with {st}");
    Ok(Outcome::Pass(format!("{report} / {fin}")))
}

/// The `epoll_embed` example (monitor + Runner in the example's own epoll loop).
pub fn epoll_embed(ctx: &mut Ctx) -> TestResult {
    embed_example(ctx, "/bin/epoll_embed")
}

/// The `tokio_embed` example (AsyncOomMonitor + Runner under tokio's select!).
pub fn tokio_embed(ctx: &mut Ctx) -> TestResult {
    embed_example(ctx, "/bin/tokio_embed")
}

/// The `custom_handler` example: under the pod's `memory.high`, the Runner runs the example's
/// newest-first handler, which kills the newer, smaller process and spares the older, larger one
/// (the kernel, and a largest-first policy, would pick the older one).
pub fn custom_handler(ctx: &mut Ctx) -> TestResult {
    let (pod_path, pod, _, _) = pod_and_ctr(ctx, "old")?;
    pod.set_memory_high(Limit::Bytes(40 << 20))?;
    pod.set_memory_max(Limit::Bytes(96 << 20))?;
    let old_path = pod_path.join("old");
    let mut old = ctx.spawn(
        &old_path,
        WorkloadKind::HogHold {
            mib: 28,
            step_mib: 4,
        },
    )?;
    old.wait_line("done", Duration::from_secs(30))?;
    let mut ex = Example::start("/bin/custom_handler", &[&pod_path.display().to_string()])?;
    ex.wait_for("managing", Duration::from_secs(20))?;
    let (new_path, _) = ctx.cgroup("pod/new")?;
    let mut new = ctx.spawn(&new_path, WorkloadKind::HogGrow { step_mib: 2 })?;
    let st = new.wait_exit(Duration::from_secs(60))?;
    ensure!(
        st.signal() == Some(libc::SIGKILL),
        "the newer process ended with {st}, not SIGKILL"
    );
    ensure!(
        old.try_exited().is_none(),
        "the older (larger) process {} died too",
        old.pid()
    );
    let ep = ex.wait_for("episode", Duration::from_secs(30))?;
    ensure!(
        ep.contains("newest process first"),
        "custom_handler printed {ep:?}"
    );
    Ok(Outcome::Pass(format!(
        "newer process {} killed, older {} (28 MiB) alive; {ep}",
        new.pid(),
        old.pid()
    )))
}

/// Without permission to read the kernel log (`kernel.dmesg_restrict = 1`, a monitor thread
/// running as uid 65534, which also drops CAP_SYSLOG), the monitor says so and still reports
/// the OOM kill from the counters.
pub fn no_kernel_log_permission(ctx: &mut Ctx) -> TestResult {
    let (_, _, ctr_path, ctr) = pod_and_ctr(ctx, "ctr")?;
    ctr.set_memory_max(Limit::Bytes(32 << 20))?;
    let restrict = Path::new("/proc/sys/kernel/dmesg_restrict");
    let before = std::fs::read_to_string(restrict)
        .map_err(|e| Fail(format!("read {}: {e}", restrict.display())))?;
    write_file(restrict, "1")?;
    let monitor_cg = ctr.try_clone()?;
    let (tx, rx) = std::sync::mpsc::channel();
    // Credentials are per thread in the kernel: only this thread drops root.
    let t = std::thread::spawn(move || -> Result<OomReport, String> {
        let nobody = rustix::process::Uid::from_raw(65534);
        rustix::thread::set_thread_res_uid(nobody, nobody, nobody)
            .map_err(|e| format!("setresuid: {e}"))?;
        let mut m =
            OomMonitor::open(&monitor_cg, MonitorOptions::default()).map_err(|e| e.to_string())?;
        let access = m.kernel_log().clone();
        let _ = tx.send(access);
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("no OOM report within 45 s".into());
            }
            for ev in m.wait(Some(left)).map_err(|e| e.to_string())? {
                if let MonitorEvent::Oom(r) = ev {
                    return Ok(r);
                }
            }
        }
    });
    let access = rx.recv_timeout(Duration::from_secs(20));
    let result = (|| {
        let access = access.map_err(|_| Fail("the monitor thread did not start".into()))?;
        ensure!(
            matches!(&access, KernelLogAccess::Unavailable(why) if why.contains("/dev/kmsg")),
            "kernel log access as uid 65534 with dmesg_restrict: {access:?}"
        );
        let mut hog = spawn_hog(&ctr_path, &ctr)?;
        let r = match t.join() {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => fail!("monitor thread: {e}"),
            Err(_) => fail!("monitor thread panicked"),
        };
        expect_sigkill(&mut hog, "hog")?;
        ensure!(
            matches!(r.victims_status, VictimsStatus::Unavailable(_))
                && r.victims.is_empty()
                && r.rose.oom_kill == Some(1)
                && r.level == Level::Container,
            "report without the kernel log: {r:?}"
        );
        Ok(Outcome::Pass(r.to_string()))
    })();
    write_file(restrict, before.trim())?;
    result
}
