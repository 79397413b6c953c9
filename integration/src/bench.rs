//! `oomkit.mode=bench`: what `cargo xtask bench` measures inside the guest, against the peers a
//! user would pick instead — the kernel alone, earlyoom and oomd (Debian's packages, unpacked
//! into the initramfs by the xtask with their shared libraries).
//!
//! Every measurement is sent as one JSON `NOTE` line (`@@NOTE {"kind":…}`); the xtask collects
//! them from all cases and writes `docs/benchmarks.md`.
//!
//! * `bench_footprint`: 10,000 cgroups under one parent; each handler watches them (oomkit: the
//!   whole tree; oomd: a ruleset on the parent's children; earlyoom: watches no cgroups at all),
//!   then RSS, locked memory and context switches over an idle period from `/proc/PID/status`
//!   (all threads).
//! * `bench_rest`: [`REST_CGROUPS`] empty cgroups; oomkit with the shipped
//!   `daemon/configs/priority-kill.toml` (root and incident folder pointed at the test), earlyoom
//!   and oomd as in the footprint case; each one's resident set from `/proc/PID/smaps_rollup`
//!   (`Rss`), `VmLck`, fds and start-up, one after the other.
//! * `bench_scale`: oomkit alone over 100 … 30,000 empty cgroups ([`SCALE`]): start-up (spawn to
//!   its `running` line), the selection time of its warm-up decision (snapshot + `decide` at
//!   cgroup granularity over the whole tree, from its log), `smaps_rollup` Rss, `VmLck`, fds.
//! * `bench_e2e_<scenario>_<handler>`: N runs of a scenario (`oomkit.runs=N` on the kernel
//!   command line, default 5). Each run measures, from the onset of pressure (the first `high`
//!   or `max` event on the scenario's limited cgroup, seen by this process through epoll), the
//!   time to the first kill signal (the handler's own log line, or the kernel's `oom_kill`
//!   event), to the victim's exit, and to its memory being back; which process died; and
//!   whether the kernel OOM killer fired.
//!
//! Scenarios (sizes in MiB; "limited" is the cgroup with `memory.max`; with oomkit and oomd it
//! also gets `memory.high` below `memory.max` as their early warning, the way a deployment sets
//! `MemoryHigh=` below `MemoryMax=`; with the kernel alone and earlyoom it has `memory.max`
//! only, as a `memory.high` without a handler only stalls the job):
//!
//! * `limit`: `machine/app` (max 96, high 48) holds `main` (16, should survive) and `leak`
//!   (grows by 2 until killed: the right victim).
//! * `priority`: `machine` (max 112, high 80) holds `service` (64, priority 100, should survive)
//!   and `batch` (grows by 2 towards 72, priority −100: the right victim). The kernel's OOM
//!   killer picks the largest, the service.
//!
//! The machine-wide scenarios (the whole guest out of memory, no limits) are in
//! [`crate::bench_machine`].
//!
//! Processes get distinct names (`comm`) by being exec'd through symlinks to the guest binary,
//! so earlyoom's `--prefer`/`--avoid` regexes can tell them apart.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oomkit::Cgroup;
use oomkit::cgroup::{Limit, MemoryEventKind};
use oomkit::events::{EventKind, Scope, Watcher};
use serde_json::{Value, json};

use crate::harness::{Ctx, Fail, Outcome, TestCase, TestResult, write_file};
use crate::scenario::{OOMKIT_BIN, hier, parent_cgroup, set_trusted_xattr};
use crate::workload::Workload;

const MIB: u64 = 1 << 20;
/// Cgroups the footprint case creates.
pub const FLEET: usize = 10_000;
/// Idle period over which context switches are counted.
const IDLE: Duration = Duration::from_secs(10);
/// The peers, as the xtask packs them.
pub const EARLYOOM_BIN: &str = "/usr/bin/earlyoom";
/// oomd, as the xtask packs it.
pub const OOMD_BIN: &str = "/usr/bin/oomd";

/// The bench cases, in execution order.
pub fn cases() -> Vec<TestCase> {
    let c = |name, secs, run| TestCase {
        name,
        timeout: Duration::from_secs(secs),
        run,
    };
    vec![
        c("bench_e2e_limit_kernel", 600, |x| {
            e2e(x, Sc::Limit, H::Kernel)
        }),
        c("bench_e2e_limit_oomkit", 600, |x| {
            e2e(x, Sc::Limit, H::Oomkit)
        }),
        c("bench_e2e_limit_earlyoom", 600, |x| {
            e2e(x, Sc::Limit, H::Earlyoom)
        }),
        c("bench_e2e_limit_oomd", 600, |x| e2e(x, Sc::Limit, H::Oomd)),
        c("bench_e2e_priority_kernel", 600, |x| {
            e2e(x, Sc::Priority, H::Kernel)
        }),
        c("bench_e2e_priority_oomkit", 600, |x| {
            e2e(x, Sc::Priority, H::Oomkit)
        }),
        c("bench_e2e_priority_earlyoom", 600, |x| {
            e2e(x, Sc::Priority, H::Earlyoom)
        }),
        c("bench_e2e_priority_oomd", 600, |x| {
            e2e(x, Sc::Priority, H::Oomd)
        }),
        c("bench_footprint", 900, footprint),
        c("bench_rest", 600, rest),
        c("bench_scale", 1800, scale),
    ]
    .into_iter()
    .chain(crate::bench_machine::cases())
    .collect()
}

/// `oomkit.runs=N` from the kernel command line (default 5).
pub(crate) fn runs() -> usize {
    std::fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .find_map(|w| w.strip_prefix("oomkit.runs=")?.parse().ok())
        .unwrap_or(5)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sc {
    Limit,
    Priority,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum H {
    Kernel,
    Oomkit,
    Earlyoom,
    Oomd,
}

impl Sc {
    fn name(self) -> &'static str {
        match self {
            Sc::Limit => "limit",
            Sc::Priority => "priority",
        }
    }
}

impl H {
    pub(crate) fn name(self) -> &'static str {
        match self {
            H::Kernel => "kernel",
            H::Oomkit => "oomkit",
            H::Earlyoom => "earlyoom",
            H::Oomd => "oomd",
        }
    }
    /// Uses `memory.high` as its early warning.
    fn wants_high(self) -> bool {
        matches!(self, H::Oomkit | H::Oomd)
    }
    pub(crate) fn binary(self) -> Option<&'static str> {
        match self {
            H::Kernel => None,
            H::Oomkit => Some(OOMKIT_BIN),
            H::Earlyoom => Some(EARLYOOM_BIN),
            H::Oomd => Some(OOMD_BIN),
        }
    }
}

pub(crate) fn note(ctx: &Ctx, v: Value) {
    ctx.note(v.to_string());
}

/// The program at `/tmp/bench-bin/<name>`: a symlink to the guest binary, so a process exec'd
/// through it is called `<name>`.
pub(crate) fn named(name: &str) -> Result<PathBuf, Fail> {
    let dir = Path::new("/tmp/bench-bin");
    std::fs::create_dir_all(dir).map_err(|e| Fail(format!("mkdir {}: {e}", dir.display())))?;
    let link = dir.join(name);
    if !link.exists() {
        let exe = std::fs::read_link("/proc/self/exe")?;
        std::os::unix::fs::symlink(&exe, &link)
            .map_err(|e| Fail(format!("symlink {}: {e}", link.display())))?;
    }
    Ok(link)
}

/// A hog called `name` in `cg`: holds `mib` (`grow`: grows until killed) in `step` MiB steps.
fn hog(cg: &Path, name: &str, mib: u64, step: u64, grow: bool) -> Result<Workload, Fail> {
    let prog = named(name)?;
    let args: Vec<String> = vec![
        "workload".into(),
        cg.display().to_string(),
        "hog".into(),
        if grow { "0".into() } else { mib.to_string() },
        step.to_string(),
        if grow { "grow".into() } else { "hold".into() },
    ];
    let mut w = Workload::spawn_exec(cg, &prog, &args, None)?;
    // The exec'd program prints `ready` again from inside the cgroup.
    w.wait_line("ready", Duration::from_secs(20))?;
    Ok(w)
}

/// Raise `RLIMIT_NOFILE` (inherited by the handlers started from here): oomkit keeps a
/// `memory.current` fd per cgroup as far as the limit leaves room (oomd an fd per cgroup of its
/// ruleset), far over the default 1024 at 10,000 cgroups.
fn raise_nofile() {
    let lim = rustix::process::Rlimit {
        current: Some(1 << 16),
        maximum: Some(1 << 16),
    };
    let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, lim);
}

/// A process name and its cgroup.
pub(crate) type Named<'a> = (&'a str, &'a Path);

/// A running handler: its process and its log (stderr, stdout discarded after `ready`).
pub(crate) struct Running {
    proc: Workload,
    log: PathBuf,
    offset: u64,
    pending: String,
    /// Lines seen so far with the time they were first seen.
    pub(crate) lines: Vec<(Instant, String)>,
}

impl Running {
    pub(crate) fn start(ctx: &Ctx, prog: &Path, args: &[String], tag: &str) -> Result<Self, Fail> {
        // A cgroup of its own each time (an earlier run's is removed first): the kernel memory
        // charged to it is then this run's (`cgroup_memory`).
        let (old, _) = ctx.cgroup(&format!("handler-{tag}"))?;
        let _ = std::fs::remove_dir(&old);
        let (cg, _) = ctx.cgroup(&format!("handler-{tag}"))?;
        let log = PathBuf::from(format!("/tmp/bench-{}-{tag}.log", ctx.name()));
        let f = std::fs::File::create(&log)?;
        raise_nofile();
        let proc = Workload::spawn_exec(&cg, prog, args, Some(f))?;
        Ok(Running {
            proc,
            log,
            offset: 0,
            pending: String::new(),
            lines: Vec::new(),
        })
    }

    /// Reads what the handler logged since the last call; new lines are stamped now.
    pub(crate) fn poll(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.log) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = String::new();
        if let Ok(n) = f.read_to_string(&mut buf) {
            self.offset += n as u64;
        }
        if buf.is_empty() {
            return;
        }
        let now = Instant::now();
        self.pending.push_str(&buf);
        while let Some(p) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=p).collect();
            self.lines.push((now, line.trim_end().to_string()));
        }
    }

    pub(crate) fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pat: &str,
    ) -> Result<(), Fail> {
        let end = Instant::now() + timeout;
        loop {
            self.poll();
            if self.lines.iter().any(|(_, l)| l.contains(pat)) {
                return Ok(());
            }
            if let Some(st) = self.proc.try_exited() {
                return Err(Fail(format!(
                    "the handler exited ({st}) before {what}: {}",
                    self.tail(8)
                )));
            }
            if Instant::now() > end {
                return Err(Fail(format!(
                    "no {what} within {timeout:?}: {}",
                    self.tail(8)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn tail(&self, n: usize) -> String {
        let k = self.lines.len().saturating_sub(n);
        self.lines[k..]
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    }

    pub(crate) fn pid(&self) -> i32 {
        self.proc.pid()
    }
}

#[allow(clippy::too_many_arguments)]
/// Starts handler `h` managing `managed` (filesystem path). `prefer`/`avoid`: process names and
/// cgroups (below `managed`) the handler should kill first / spare.
pub(crate) fn start_handler(
    ctx: &Ctx,
    h: H,
    managed: &Path,
    limited: &Path,
    high_mib: u64,
    prefer: &[Named<'_>],
    avoid: &[Named<'_>],
    max_cgroups: usize,
) -> Result<Option<Running>, Fail> {
    let dir = PathBuf::from(format!("/tmp/bench-{}", ctx.name()));
    std::fs::create_dir_all(&dir)?;
    match h {
        H::Kernel => Ok(None),
        H::Oomkit => {
            let mut rules = String::new();
            for (_, cg) in prefer {
                rules.push_str(&format!(
                    "[[handler.rules]]\nglob = \"{}\"\npriority = -100\n\n",
                    hier(cg)
                ));
            }
            for (_, cg) in avoid {
                set_trusted_xattr(cg, "oomkit.priority", "100")?;
            }
            let cfg = format!(
                "[daemon]\nroot = \"{}\"\ndepth = 4\nlog_format = \"json\"\nlog_level = \"info\"\n\n\
                 [engine]\nsample_interval_ms = 100\nkill_deadline_ms = 5000\ncooldown_ms = 250\n\
                 max_cgroups = {max_cgroups}\n\n[signals]\nmemory_events = true\n\n\
                 [handler]\nkind = \"priority-kill\"\ndefault_priority = 0\n\n{rules}\
                 [handler.priority_kill]\ngranularity = \"process\"\n",
                managed.display()
            );
            let path = dir.join("oomkit.toml");
            write_file(&path, &cfg)?;
            let args = vec!["run".into(), "--config".into(), path.display().to_string()];
            let mut r = Running::start(ctx, Path::new(OOMKIT_BIN), &args, "oomkit")?;
            r.wait_for("its `running` line", Duration::from_secs(60), "\"running\"")?;
            Ok(Some(r))
        }
        H::Earlyoom => {
            if !Path::new(EARLYOOM_BIN).exists() {
                return Err(Fail(format!("{EARLYOOM_BIN} is not in the initramfs")));
            }
            // As its documentation recommends for protecting a service: a prefer and an avoid
            // regex on process names; Debian's default report interval.
            let names = |v: &[Named<'_>]| v.iter().map(|(n, _)| *n).collect::<Vec<_>>().join("|");
            let mut args = vec!["-r".to_string(), "3600".to_string()];
            if !prefer.is_empty() {
                args.extend(["--prefer".into(), format!("^({})$", names(prefer))]);
            }
            args.extend([
                "--avoid".into(),
                format!("^({}|oomkit-guest|oomkit)$", names(avoid)),
            ]);
            let mut r = Running::start(ctx, Path::new(EARLYOOM_BIN), &args, "earlyoom")?;
            r.wait_for("its startup report", Duration::from_secs(30), "mem total")?;
            Ok(Some(r))
        }
        H::Oomd => {
            if !Path::new(OOMD_BIN).exists() {
                return Err(Fail(format!("{OOMD_BIN} is not in the initramfs")));
            }
            // oomd's own prefer/avoid: xattrs on the candidate cgroups.
            for (_, cg) in prefer {
                set_trusted_xattr(cg, "oomd_prefer", "1")?;
            }
            for (_, cg) in avoid {
                set_trusted_xattr(cg, "oomd_avoid", "1")?;
            }
            let rel = |p: &Path| hier(p).trim_start_matches('/').to_string();
            let cfg = json!({
                "rulesets": [{
                    "name": "bench protection",
                    "detectors": [
                        ["above memory.high", {"name": "memory_above", "args": {
                            "cgroup": rel(limited), "threshold": format!("{high_mib}M"), "duration": "0"}}],
                        ["memory pressure", {"name": "pressure_above", "args": {
                            "cgroup": rel(limited), "resource": "memory", "threshold": "10", "duration": "0"}}]
                    ],
                    "actions": [{"name": "kill_by_memory_size_or_growth", "args": {
                        "cgroup": format!("{}/*", rel(limited)), "post_action_delay": "1"}}]
                }]
            });
            let path = dir.join("oomd.json");
            write_file(&path, &cfg.to_string())?;
            let run = dir.join("oomd-run");
            std::fs::create_dir_all(&run)?;
            let args = vec![
                "--config".into(),
                path.display().to_string(),
                "--interval".into(),
                "1".into(),
                "--cgroup-fs".into(),
                "/sys/fs/cgroup".into(),
                "--runtime-dir".into(),
                run.display().to_string(),
                "--kmsg-override".into(),
                dir.join("oomd-kmsg").display().to_string(),
            ];
            let mut r = Running::start(ctx, Path::new(OOMD_BIN), &args, "oomd")?;
            r.wait_for("its startup", Duration::from_secs(30), "Running oomd")?;
            Ok(Some(r))
        }
    }
}

pub(crate) fn stop(r: Option<Running>) {
    if let Some(r) = r {
        if let Some(pid) = rustix::process::Pid::from_raw(r.pid()) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let mut p = r.proc;
        let _ = p.wait_exit(Duration::from_secs(5));
    }
}

/// Does this handler log line say a kill signal was sent?
pub(crate) fn is_kill_line(h: H, l: &str) -> bool {
    match h {
        H::Oomkit => l.contains("\"message\":\"action\"") && l.contains("kill"),
        H::Earlyoom => l.contains("sending SIG") && l.contains(" to process "),
        H::Oomd => {
            let l = l.to_ascii_lowercase();
            l.contains("killed") || l.contains("killing")
        }
        H::Kernel => false,
    }
}

pub(crate) fn ms(d: Option<Duration>) -> Value {
    match d {
        Some(d) => json!((d.as_secs_f64() * 10_000.0).round() / 10.0),
        None => Value::Null,
    }
}

/// N runs of one scenario with one handler.
fn e2e(ctx: &mut Ctx, sc: Sc, h: H) -> TestResult {
    n_runs(ctx, sc.name(), h, "signal_ms", |ctx, i| {
        one_run(ctx, sc, h, i)
    })
}

/// The runs of one bench scenario with one handler (shared by the machine-wide cases): a
/// handler whose binary is not in the initramfs is a skip with an `unavailable` note; else
/// [`runs`] runs of `run`, each reported as a note, summed up as `victim:<summary_key>` per run.
pub(crate) fn n_runs(
    ctx: &mut Ctx,
    scenario: &str,
    h: H,
    summary_key: &str,
    mut run: impl FnMut(&Ctx, usize) -> Result<Value, Fail>,
) -> TestResult {
    if let Some(b) = h.binary() {
        if !Path::new(b).exists() {
            note(
                ctx,
                json!({"kind": "unavailable", "scenario": scenario, "handler": h.name(),
                       "why": format!("{b} is not in the initramfs")}),
            );
            return Ok(Outcome::Skip(format!("{b} missing")));
        }
    }
    let n = runs();
    let mut summary = Vec::new();
    for i in 0..n {
        let r = run(ctx, i)?;
        summary.push(format!(
            "{}:{}",
            r["victim"].as_str().unwrap_or("none"),
            r[summary_key]
        ));
        note(ctx, r);
    }
    Ok(Outcome::Pass(format!(
        "{} × {} {}: {}",
        n,
        scenario,
        h.name(),
        summary.join(" ")
    )))
}

fn one_run(ctx: &Ctx, sc: Sc, h: H, i: usize) -> Result<Value, Fail> {
    // A fresh subtree per run: <base>/r<i>/machine[/app].
    let (run_path, _) = parent_cgroup(ctx, &format!("r{i}"))?;
    let machine_path = run_path.join("machine");
    std::fs::create_dir_all(&machine_path)?;
    write_file(
        &machine_path.join("cgroup.subtree_control"),
        "+memory +pids",
    )?;
    let (limited_path, max_mib, high_mib) = match sc {
        Sc::Limit => {
            let app = machine_path.join("app");
            std::fs::create_dir_all(&app)?;
            write_file(&app.join("cgroup.subtree_control"), "+memory +pids")?;
            (app, 96, 48)
        }
        Sc::Priority => (machine_path.clone(), 112, 80),
    };
    let limited = Cgroup::open(&limited_path)?;
    limited.set_memory_max(Limit::Bytes(max_mib * MIB))?;
    if h.wants_high() {
        limited.set_memory_high(Limit::Bytes(high_mib * MIB))?;
    }
    // The survivor holds a fixed size; the victim-to-be grows.
    // Each process in its own leaf below the limited cgroup (workloads name themselves after
    // their cgroup, which is what earlyoom's regexes see).
    let (keep, grow, keep_mib) = match sc {
        Sc::Limit => ("main", "leak", 16),
        Sc::Priority => ("service", "batch", 64),
    };
    let keep_cg = limited_path.join(keep);
    let grow_cg = limited_path.join(grow);
    std::fs::create_dir_all(&keep_cg)?;
    std::fs::create_dir_all(&grow_cg)?;
    let prefer: Vec<Named<'_>> = vec![(grow, grow_cg.as_path())];
    let avoid: Vec<Named<'_>> = vec![(keep, keep_cg.as_path())];
    let mut handler = start_handler(
        ctx,
        h,
        &machine_path,
        &limited_path,
        high_mib,
        &prefer,
        &avoid,
        64,
    )?;
    let mut w = Watcher::new()?;
    let tok = w.add_memory_events(&limited, Scope::Hierarchical)?;
    let kills_before = limited.memory_events()?.oom_kill.unwrap_or(0);

    let mut keeper = hog(&keep_cg, keep, keep_mib, 8, false)?;
    keeper.wait_line("done", Duration::from_secs(30))?;
    let mut grower = hog(&grow_cg, grow, 0, 2, true)?;

    let start = Instant::now();
    let timeout = Duration::from_secs(60);
    let mut onset: Option<Instant> = None;
    let mut kernel_kill: Option<Instant> = None;
    let mut signal: Option<(Instant, String)> = None;
    let mut first_death: Option<(Instant, &'static str)> = None;
    let mut back: Option<Instant> = None;
    let mut peak: u64 = 0;
    let mut kernel_kills = 0u64;
    let mut note_text = String::new();
    loop {
        for ev in w.wait(Some(Duration::from_millis(2)))?.iter() {
            if ev.token != tok {
                continue;
            }
            if let EventKind::MemoryEvents(ch) = &ev.kind {
                let now = Instant::now();
                if onset.is_none()
                    && ch.rose_by(MemoryEventKind::High) + ch.rose_by(MemoryEventKind::Max) > 0
                {
                    onset = Some(now);
                }
                if ch.rose_by(MemoryEventKind::OomKill) > 0 && kernel_kill.is_none() {
                    kernel_kill = Some(now);
                }
            }
        }
        if let Some(r) = handler.as_mut() {
            r.poll();
            if signal.is_none() {
                if let Some((t, l)) = r
                    .lines
                    .iter()
                    .find(|(t, l)| *t >= start && is_kill_line(h, l))
                {
                    signal = Some((*t, l.clone()));
                }
            }
        }
        let cur = limited.memory_current().unwrap_or(0);
        if first_death.is_none() {
            peak = peak.max(cur);
            let now = Instant::now();
            if grower.try_exited().is_some() {
                first_death = Some((now, grow));
            } else if keeper.try_exited().is_some() {
                first_death = Some((now, keep));
            }
        }
        if let Some((_, who)) = first_death {
            let victim_size = if who == keep {
                keep_mib * MIB
            } else {
                peak.saturating_sub(keep_mib * MIB)
            };
            if back.is_none() && cur <= peak.saturating_sub(victim_size / 2) {
                back = Some(Instant::now());
            }
        }
        let settled = first_death.is_some_and(|(t, _)| {
            back.is_some()
                && (signal.is_some()
                    || kernel_kill.is_some()
                    || t.elapsed() > Duration::from_secs(2))
        });
        if settled || first_death.is_some_and(|(t, _)| t.elapsed() > Duration::from_secs(5)) {
            break;
        }
        if start.elapsed() > timeout {
            note_text = format!("nobody died within {timeout:?} (current {} MiB)", cur >> 20);
            break;
        }
    }
    kernel_kills += limited
        .memory_events()?
        .oom_kill
        .unwrap_or(0)
        .saturating_sub(kills_before);
    let keep_alive = keeper.try_exited().is_none();
    let grow_alive = grower.try_exited().is_none();
    let handler_signal = signal.as_ref().map(|(t, _)| *t);
    // The kill signal: the handler's, or the kernel's if it fired first (or alone).
    let sig = match (handler_signal, kernel_kill) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let kernel_first = kernel_kill.is_some_and(|k| handler_signal.is_none_or(|s| k <= s));
    let since = |t: Option<Instant>| -> Option<Duration> {
        Some(t?.checked_duration_since(onset?).unwrap_or(Duration::ZERO))
    };
    let victim = first_death.map(|(_, w)| w);
    let right = victim == Some(grow) && keep_alive;
    let log_tail = handler.as_ref().map(|r| r.tail(6)).unwrap_or_default();
    stop(handler);
    drop(keeper);
    drop(grower);
    Ok(json!({
        "kind": "e2e",
        "scenario": sc.name(),
        "handler": h.name(),
        "run": i,
        "onset_seen": onset.is_some(),
        "signal_ms": ms(since(sig)),
        "handler_signal_ms": ms(since(handler_signal)),
        "kernel_kill_ms": ms(since(kernel_kill)),
        "exit_ms": ms(since(first_death.map(|(t, _)| t))),
        "back_ms": ms(since(back)),
        "victim": victim,
        "peak_mib": peak >> 20,
        "max_mib": max_mib,
        "survivor_alive": keep_alive,
        "grower_alive": grow_alive,
        "right_victim": right,
        "kernel_oom_kills": kernel_kills,
        "kernel_first": kernel_first,
        "signal_line": signal.map(|(_, l)| l.chars().take(200).collect::<String>()),
        "note": note_text,
        "log_tail": if first_death.is_none() { log_tail } else { String::new() },
    }))
}

/// `(VmRSS, VmHWM, VmLck)` in KiB and the context switches of all threads.
pub(crate) fn proc_numbers(pid: i32) -> Result<(u64, u64, u64, u64, usize), Fail> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |k: &str| {
        st.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (rss, hwm, lck) = (kib("VmRSS:"), kib("VmHWM:"), kib("VmLck:"));
    let mut sw = 0;
    let mut threads = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        threads += 1;
        for l in s.lines() {
            if let Some(v) = l
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                sw += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok((rss, hwm, lck, sw, threads))
}

/// CPU seconds `(user, system)` of `pid` so far, from `/proc/PID/stat` (`utime`, `stime`, in
/// clock ticks of 1/100 s).
fn cpu_seconds(pid: i32) -> (f64, f64) {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
    let rest = st.rsplit_once(')').map_or("", |r| r.1);
    let mut f = rest.split_whitespace().skip(11);
    let mut tick = || f.next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    let user = tick();
    (user, tick())
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Inotify watches the scale cases allow: oomkit watches each cgroup's directory (at `depth` 2)
/// and its `memory.events.local` without an fd, two watches a cgroup, and the default
/// `fs.inotify.max_user_watches` of a 1 GiB guest (about 1 % of RAM, at least 8192) holds fewer
/// than 20,000; a node with that many cgroups raises it as it raises the open-file limit.
/// Beyond the limit oomkit falls back to an fd per cgroup (it logs that once).
const INOTIFY_WATCHES: u64 = 1 << 20;

/// Raises `fs.inotify.max_user_watches` to [`INOTIFY_WATCHES`]; returns the value before.
fn raise_inotify_watches() -> Result<u64, Fail> {
    let path = "/proc/sys/fs/inotify/max_user_watches";
    let before: u64 = std::fs::read_to_string(path)?.trim().parse().unwrap_or(0);
    if before < INOTIFY_WATCHES {
        std::fs::write(path, INOTIFY_WATCHES.to_string())?;
    }
    Ok(before)
}

/// 10,000 cgroups; each handler's footprint and idle wakeups.
fn footprint(ctx: &mut Ctx) -> TestResult {
    let (fleet, _) = parent_cgroup(ctx, "fleet")?;
    let watches_before = raise_inotify_watches()?;
    note(
        ctx,
        json!({"kind": "inotify", "max_user_watches_before": watches_before,
               "max_user_watches": INOTIFY_WATCHES}),
    );
    let t = Instant::now();
    for i in 0..FLEET {
        std::fs::create_dir(fleet.join(format!("c{i}")))?;
    }
    let created = t.elapsed();
    let mut done = Vec::new();
    for h in [H::Oomkit, H::Earlyoom, H::Oomd] {
        if let Some(b) = h.binary() {
            if !Path::new(b).exists() {
                note(
                    ctx,
                    json!({"kind": "unavailable", "scenario": "footprint", "handler": h.name(),
                           "why": format!("{b} is not in the initramfs")}),
                );
                continue;
            }
        }
        let t = Instant::now();
        let r = match start_handler(ctx, h, &fleet, &fleet, 1 << 20, &[], &[], FLEET + 64) {
            Ok(r) => r,
            Err(e) => {
                note(
                    ctx,
                    json!({"kind": "unavailable", "scenario": "footprint", "handler": h.name(),
                           "why": e.0}),
                );
                continue;
            }
        };
        let Some(mut r) = r else { continue };
        let pid = r.pid();
        // Settled: the fd count (oomkit: about one per cgroup) and RSS stop changing for 2 s.
        let mut last = (0usize, 0u64);
        let mut stable_since = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            let now = (fd_count(pid), proc_numbers(pid)?.0);
            if now != last {
                last = now;
                stable_since = Instant::now();
            } else if stable_since.elapsed() >= Duration::from_secs(2) {
                break;
            }
        }
        let ready = t.elapsed().saturating_sub(Duration::from_secs(2));
        r.poll();
        let (rss, hwm, lck, sw0, threads) = proc_numbers(pid)?;
        let t0 = Instant::now();
        std::thread::sleep(IDLE);
        let (_, _, _, sw1, _) = proc_numbers(pid)?;
        let per_s = (sw1 - sw0) as f64 / t0.elapsed().as_secs_f64();
        let fds = fd_count(pid);
        let mut v = json!({"kind": "footprint", "handler": h.name(), "cgroups": FLEET,
                   "rss_kib": rss, "hwm_kib": hwm, "lck_kib": lck, "fds": fds,
                   "threads": threads, "wakeups_per_s": (per_s * 100.0).round() / 100.0,
                   "idle_s": IDLE.as_secs(), "settle_s": (ready.as_secs_f64() * 10.0).round() / 10.0,
                   "log_tail": r.tail(3)});
        add_cgroup_memory(&mut v, pid);
        note(ctx, v);
        done.push(format!(
            "{} rss {rss} KiB lck {lck} KiB {per_s:.2}/s",
            h.name()
        ));
        stop(Some(r));
    }
    Ok(Outcome::Pass(format!(
        "{FLEET} cgroups created in {:.1}s; {}",
        created.as_secs_f64(),
        done.join("; ")
    )))
}

/// Cgroups managed at rest (the largest count of the at-rest goal).
pub const REST_CGROUPS: usize = 100;
/// Tree sizes of the scale case.
pub const SCALE: [usize; 4] = [100, 1_000, 10_000, 30_000];

/// `oomkit.scale=N,N,…` from the kernel command line (default [`SCALE`]): the xtask runs
/// the 30,000-cgroup point in a guest of its own with more memory (30,000 memory cgroups
/// cost the kernel more than a 1 GiB guest has beside its workloads).
fn scale_sizes() -> Vec<usize> {
    std::fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .find_map(|w| {
            let list = w.strip_prefix("oomkit.scale=")?;
            list.split(',').map(|n| n.parse().ok()).collect()
        })
        .unwrap_or_else(|| SCALE.to_vec())
}

/// `MemTotal` of the guest in MiB (0 if unreadable).
fn guest_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}
/// The daemon's shipped configuration, measured as a node would run it.
const SHIPPED_CONFIG: &str = include_str!("../../daemon/configs/priority-kill.toml");

/// `Rss` of `/proc/PID/smaps_rollup` in KiB (every resident page mapped, as `ps` and peers count).
fn smaps_rss(pid: i32) -> Result<u64, Fail> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| Fail(format!("no Rss in /proc/{pid}/smaps_rollup")))
}

/// Waits until the fd count and RSS of `pid` have not changed for 2 s (at most `limit`).
fn settle(pid: i32, limit: Duration) -> Result<(), Fail> {
    let mut last = (usize::MAX, u64::MAX);
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let now = (fd_count(pid), proc_numbers(pid)?.0);
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_secs(2) {
            return Ok(());
        }
    }
    Err(Fail(format!("pid {pid} did not settle within {limit:?}")))
}

/// The shipped configuration with its root and incident folder moved to `root` and `dir`.
fn shipped_config(root: &Path, dir: &Path) -> String {
    SHIPPED_CONFIG
        .lines()
        .map(|l| {
            if l.starts_with("root = ") {
                format!("root = \"{}\"", root.display())
            } else if l.starts_with("incident_dir = ") {
                format!("incident_dir = \"{}\"", dir.join("incidents").display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Starts the daemon with `config` (written to `dir`), waits for its `running` line; returns it
/// with the time that took.
fn start_oomkit(ctx: &Ctx, dir: &Path, config: &str) -> Result<(Running, Duration), Fail> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("oomkit.toml");
    write_file(&path, config)?;
    let args = vec!["run".into(), "--config".into(), path.display().to_string()];
    let t = Instant::now();
    let mut r = Running::start(ctx, Path::new(OOMKIT_BIN), &args, "oomkit")?;
    r.wait_for(
        "its `running` line",
        Duration::from_secs(600),
        "\"running\"",
    )?;
    Ok((r, t.elapsed()))
}

/// A numeric field of the daemon's first JSON log line whose message is `message`.
fn log_field(r: &Running, message: &str, field: &str) -> Option<f64> {
    r.lines.iter().find_map(|(_, l)| {
        let v: Value = serde_json::from_str(l).ok()?;
        (v["message"] == message).then(|| v[field].as_f64())?
    })
}

/// The footprint numbers of a settled handler, as one JSON object.
fn rest_numbers(pid: i32) -> Result<Value, Fail> {
    let rss = smaps_rss(pid)?;
    let (vmrss, _, lck, _, threads) = proc_numbers(pid)?;
    let mut v = json!({"rss_kib": rss, "vmrss_kib": vmrss, "lck_kib": lck, "fds": fd_count(pid),
                       "threads": threads, "breakdown": breakdown(pid)});
    add_cgroup_memory(&mut v, pid);
    Ok(v)
}

/// Adds what the cgroup of `pid` (its own: `Running::start`) is charged, in KiB: `cg_kib`
/// (`memory.current`: its pages and the kernel memory it caused), and from `memory.stat` the
/// kernel part (`cg_kernel_kib`: slab, stacks, page tables …) and of that the reclaimable slab
/// (`cg_slab_reclaimable_kib`: dentries and inodes it looked up first, freed under pressure).
/// Kernel memory counts against a container's memory limit as its pages do.
fn add_cgroup_memory(v: &mut Value, pid: i32) {
    let Ok(cg) = oomkit::cgroup::CgroupFs::discover().and_then(|fs| fs.of_process(Some(pid)))
    else {
        return;
    };
    let kib = |b: u64| b / 1024;
    v["cg_kib"] = json!(cg.memory_current().ok().map(kib));
    let stat = cg.memory_stat().ok();
    let key = |k: &str| stat.as_ref().and_then(|s| s.get(k)).map(kib);
    v["cg_kernel_kib"] = json!(key("kernel"));
    v["cg_slab_reclaimable_kib"] = json!(key("slab_reclaimable"));
}

/// Where the resident set is, from `/proc/PID/smaps`: Rss (KiB) summed by kind of mapping —
/// the program's own file by permission (`text` r-x, `rodata` r--, `data` rw-), other files,
/// `[heap]`, `[stack]`, anonymous mappings (large allocations, thread stacks), the rest.
fn breakdown(pid: i32) -> Value {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut out = serde_json::Map::new();
    let mut kind = String::new();
    // Every mapping with resident pages: "kind perms size_kib rss_kib" (the anonymous ones are
    // told apart by their size: thread stacks, large allocations).
    let mut maps: Vec<String> = Vec::new();
    let mut head = String::new();
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let perms = f.next().unwrap_or("");
            let name = f.nth(3).unwrap_or("");
            let size = first
                .split_once('-')
                .and_then(|(a, b)| {
                    let h = |x| u64::from_str_radix(x, 16).ok();
                    Some(h(b)?.saturating_sub(h(a)?) >> 10)
                })
                .unwrap_or(0);
            kind = match name {
                "" => "anon".into(),
                "[heap]" => "heap".into(),
                "[stack]" => "stack".into(),
                n if n == exe => match perms.get(..3) {
                    Some("r-x") => "text".into(),
                    Some("r--") => "rodata".into(),
                    _ => "data".into(),
                },
                n if n.starts_with('[') => "other".into(),
                _ => "other files".into(),
            };
            head = format!("{kind} {perms} {size}");
        } else if first == "Rss:" {
            let kib: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let e = out.entry(kind.clone()).or_insert(json!(0));
            *e = json!(e.as_u64().unwrap_or(0) + kib);
            if kib > 0 {
                maps.push(format!("{head} {kib}"));
            }
        }
    }
    out.insert("mappings".into(), json!(maps));
    Value::Object(out)
}

/// Each handler at rest over [`REST_CGROUPS`] cgroups: what it costs a node that is not in
/// trouble.
fn rest(ctx: &mut Ctx) -> TestResult {
    let (root, _) = parent_cgroup(ctx, "rest")?;
    for i in 0..REST_CGROUPS {
        std::fs::create_dir(root.join(format!("c{i}")))?;
    }
    let mut done = Vec::new();
    // oomkit twice: as shipped, and with the previous default `mlock = "all"` (for the breakdown
    // of what locking the whole address space costs).
    for (h, name) in [
        (H::Oomkit, "oomkit"),
        (H::Oomkit, "oomkit-mlock-all"),
        (H::Earlyoom, "earlyoom"),
        (H::Oomd, "oomd"),
    ] {
        let t = Instant::now();
        let started = if h == H::Oomkit {
            let dir = PathBuf::from(format!("/tmp/bench-{}/{name}", ctx.name()));
            let mut config = shipped_config(&root, &dir);
            if name != "oomkit" {
                config = config.replace("mlock = \"resident\"", "mlock = \"all\"");
            }
            start_oomkit(ctx, &dir, &config).map(|(r, _)| Some(r))
        } else {
            start_handler(ctx, h, &root, &root, 1 << 20, &[], &[], REST_CGROUPS + 64)
        };
        let r = match started {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                note(
                    ctx,
                    json!({"kind": "unavailable", "scenario": "rest", "handler": name,
                           "why": e.0}),
                );
                continue;
            }
        };
        let pid = r.pid();
        let startup = t.elapsed();
        settle(pid, Duration::from_secs(120))?;
        let mut v = rest_numbers(pid)?;
        v["kind"] = json!("rest");
        v["handler"] = json!(name);
        v["cgroups"] = json!(REST_CGROUPS);
        v["startup_s"] = json!((startup.as_secs_f64() * 100.0).round() / 100.0);
        done.push(format!(
            "{name} Rss {} KiB VmLck {} KiB",
            v["rss_kib"], v["lck_kib"]
        ));
        note(ctx, v);
        stop(Some(r));
    }
    Ok(Outcome::Pass(format!(
        "{REST_CGROUPS} cgroups; {}",
        done.join("; ")
    )))
}

/// oomkit over 100 … 30,000 cgroups: how its costs grow with the tree.
fn scale(ctx: &mut Ctx) -> TestResult {
    let (root, _) = parent_cgroup(ctx, "scale")?;
    raise_inotify_watches()?;
    let mut made = 0;
    let mut done = Vec::new();
    for n in scale_sizes() {
        let t = Instant::now();
        while made < n {
            if let Err(e) = std::fs::create_dir(root.join(format!("c{made}"))) {
                note(
                    ctx,
                    json!({"kind": "unavailable", "scenario": "scale", "handler": "oomkit",
                           "cgroups": n,
                           "why": format!("creating cgroup {made} of {n} failed: {e}")}),
                );
                return Ok(Outcome::Pass(format!(
                    "{}; stopped at {made} cgroups: {e}",
                    done.join("; ")
                )));
            }
            made += 1;
        }
        let created = t.elapsed();
        let dir = PathBuf::from(format!("/tmp/bench-{}/oomkit-{n}", ctx.name()));
        let config = format!(
            "[daemon]\nroot = \"{}\"\ndepth = 2\nlog_format = \"json\"\nlog_level = \"info\"\n\n\
             [engine]\nmax_cgroups = {}\n\n[signals]\nmemory_events = true\n\n\
             [handler]\nkind = \"priority-kill\"\n\n[handler.priority_kill]\ngranularity = \"cgroup\"\n",
            root.display(),
            n + 64
        );
        let (r, startup) = start_oomkit(ctx, &dir, &config)?;
        let pid = r.pid();
        settle(pid, Duration::from_secs(300))?;
        let mut v = rest_numbers(pid)?;
        let selection_us = log_field(&r, "warm-up decision (not acted on)", "selection_us");
        v["kind"] = json!("scale");
        v["handler"] = json!("oomkit");
        v["cgroups"] = json!(n);
        v["startup_s"] = json!((startup.as_secs_f64() * 100.0).round() / 100.0);
        v["selection_ms"] = json!(selection_us.map(|u| (u / 10.0).round() / 100.0));
        v["created_s"] = json!((created.as_secs_f64() * 10.0).round() / 10.0);
        v["guest_mib"] = json!(guest_mib());
        // Where start-up went, by the daemon's own phase log line (ms).
        let mut phases = serde_json::Map::new();
        for k in ["open", "dir_watch", "walk", "attach", "warm_up", "lock"] {
            let field = format!("{k}_ms");
            phases.insert(k.into(), json!(log_field(&r, "start-up phases", &field)));
        }
        v["phases_ms"] = Value::Object(phases);
        // How the memory.events.local baselines were taken (read, or inferred from the parent).
        v["baselines"] = json!({
            "read": log_field(&r, "start-up phases", "baselines_read"),
            "inferred": log_field(&r, "start-up phases", "baselines_inferred"),
        });
        // Where start-up went: oomkit's own CPU time by now (it is idle once settled).
        let (user, sys) = cpu_seconds(pid);
        v["cpu_user_s"] = json!(user);
        v["cpu_sys_s"] = json!(sys);
        done.push(format!(
            "{n}: start {:.2} s, Rss {} KiB, fds {}, selection {:?} ms",
            startup.as_secs_f64(),
            v["rss_kib"],
            v["fds"],
            v["selection_ms"]
        ));
        note(ctx, v);
        stop(Some(r));
    }
    Ok(Outcome::Pass(done.join("; ")))
}
