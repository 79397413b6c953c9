//! `oomkit.mode=bench`, machine-wide scenarios (issue 9): the whole guest runs out of memory,
//! with no swap and no limit anywhere, so only a handler that watches the machine itself can act
//! before the kernel's global OOM killer.
//!
//! * `bench_machine_priority_<handler>`: `service` holds half of `MemAvailable` (must survive),
//!   `session` runs a 50 ms heartbeat (must survive), `batch` grows at 2 % of `MemTotal` per
//!   second until someone kills it (the right victim).
//! * `bench_machine_forkstorm_<handler>`: `build` forks 20 jobs that together want 1.3 times
//!   `MemAvailable` (the right victims, ideally all in one action), beside `session` and its
//!   heartbeat (must survive).
//!
//! Handlers, each configured as an operator would for a whole machine:
//! * `kernel`: nothing but the kernel's OOM killer;
//! * `earlyoom`: its default thresholds, `--prefer '^(batch|build)$'`,
//!   `--avoid '^(service|session|…)$'` (process names: workloads run through named symlinks);
//! * `oomd`: one ruleset, `pressure_above` (memory, 10 %) on the root cgroup or on the workload
//!   tree → `kill_by_memory_size_or_growth` on the workload tree's children, with
//!   `oomd_prefer`/`oomd_avoid` xattrs. oomd has no detector for available memory; whatever it
//!   does (or does not) with pressure alone is the result;
//! * `oomkit`: the daemon with the default `[signals.machine]`, priority-kill (service and
//!   session protected, batch/build at −100; process granularity for priority, cgroup
//!   granularity for the fork storm).
//!
//! Every run starts with the machine at rest (`some avg10` under 1 %), so no handler acts on the
//! previous run's pressure.
//!
//! Per run (one JSON `NOTE` of kind `machine`): the time from the workload's start and from the
//! onset of pressure (the first rise of `some total` in `/proc/pressure/memory` after the
//! workload started) to the first kill (the handler's log line, the kernel's `oom_kill` in
//! `/proc/vmstat`, or the first death, whichever came first); whether the right processes died;
//! kernel kills (`/proc/vmstat oom_kill`); the heartbeat's worst lateness during the run (from
//! its per-second window reports); the handler's VmRSS
//! and VmHWM at the end; in the first run, its voluntary context switches per second over an idle
//! window before the workload starts (all threads, `/proc/PID/task/*/status`), the same measure
//! for every handler.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bench::{H, Named, Running, is_kill_line, ms, named, proc_numbers, stop};
use crate::harness::{Ctx, Fail, TestCase, TestResult, write_file};
use crate::scenario::{OOMKIT_BIN, hier, parent_cgroup, set_trusted_xattr, vmstat_oom_kill};
use crate::tests::machine::{heartbeat_worst, machine_config, meminfo_mib};

/// One late beat: when its line was read, how late it was (µs), and how much of that the
/// heartbeat's real-time probe saw the guest not running at all (µs; the host had descheduled
/// the VM, or the guest's kernel had interrupts off).
type Late = (Instant, u64, u64);

/// The worst lateness (µs) in the heartbeat's reports printed since the last call
/// (`hb <beats> <worst> <worst of the last 20 beats>`), if it printed any; each late beat's
/// own line (`hbl <late> <unrun>`) goes into `late` with the time it was read.
fn heartbeat_windows(hb: &mut Workload, late: &mut Vec<Late>) -> Option<u64> {
    let mut worst = None;
    while let Some(l) = hb.try_next_line() {
        if let Some(v) = l.strip_prefix("hbl ") {
            let mut f = v.split_whitespace().map(str::parse::<u64>);
            if let (Some(Ok(us)), unrun) = (f.next(), f.next()) {
                late.push((Instant::now(), us, unrun.and_then(Result::ok).unwrap_or(0)));
            }
            continue;
        }
        let Some(rest) = l.strip_prefix("hb ") else {
            continue;
        };
        let w = rest
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse::<u64>().ok());
        worst = worst.max(w);
    }
    worst
}

/// The stalls "near the kill" began from this long before the first kill: the handler's last
/// decision (oomkit samples fastest and holds `low` for 500 ms there) …
const NEAR_BEFORE: Duration = Duration::from_secs(1);
/// … to this long after it (the victim's exit and the reaping of its memory).
const NEAR_AFTER: Duration = Duration::from_secs(2);

/// The heartbeat's late beats (those of at least 2 ms): when each stall began, in ms from
/// `at` (the first kill; negative: before it), how long it was (ms), and how much of it the
/// guest ran (ms: the stall less the time its real-time probe was not run either). A beat's
/// line is read within the bench's 5 ms poll of its wake-up, and its stall began `late`
/// before that.
fn late_beats(late: &[Late], at: Instant) -> Vec<(f64, f64, f64)> {
    late.iter()
        .map(|&(t, us, unrun)| {
            let began = t.checked_sub(Duration::from_micros(us)).unwrap_or(t);
            let rel = match began.checked_duration_since(at) {
                Some(d) => d.as_secs_f64(),
                None => -at.duration_since(began).as_secs_f64(),
            };
            let guest = us.saturating_sub(unrun);
            (
                (rel * 1000.0).round(),
                (us as f64 / 100.0).round() / 10.0,
                (guest as f64 / 100.0).round() / 10.0,
            )
        })
        .collect()
}

/// The worst stall (ms) that began from [`NEAR_BEFORE`] before to [`NEAR_AFTER`] after the
/// first kill (0: none of 2 ms or more), the worst part of a stall the guest ran (ms; 0: none
/// of 2 ms or more), and the eight worst stalls of the run, worst first.
fn near_and_worst(mut v: Vec<(f64, f64, f64)>) -> (f64, f64, Value) {
    let (before, after) = (
        NEAR_BEFORE.as_secs_f64() * 1000.0,
        NEAR_AFTER.as_secs_f64() * 1000.0,
    );
    let near = v
        .iter()
        .filter(|&&(rel, _, _)| rel >= -before && rel <= after)
        .map(|&(_, late, _)| late)
        .fold(0.0, f64::max);
    let guest = v.iter().map(|&(_, _, g)| g).fold(0.0, f64::max);
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.truncate(8);
    (near, guest, json!(v))
}
use crate::workload::{Workload, WorkloadKind};

/// Idle window over which context switches are counted (first run only).
const IDLE: Duration = Duration::from_secs(10);
/// Longest a run may take from the workload's start to a kill.
const RUN_TIMEOUT: Duration = Duration::from_secs(150);
/// How long a run goes on after the first kill (the kernel and earlyoom kill one by one).
const AFTER_KILL: Duration = Duration::from_secs(4);

/// The machine-wide bench cases.
pub fn cases() -> Vec<TestCase> {
    let c = |name, run| TestCase {
        name,
        timeout: Duration::from_secs(900),
        run,
    };
    vec![
        c("bench_machine_priority_kernel", |x| {
            machine(x, Ms::Priority, H::Kernel)
        }),
        c("bench_machine_priority_earlyoom", |x| {
            machine(x, Ms::Priority, H::Earlyoom)
        }),
        c("bench_machine_priority_oomd", |x| {
            machine(x, Ms::Priority, H::Oomd)
        }),
        c("bench_machine_priority_oomkit", |x| {
            machine(x, Ms::Priority, H::Oomkit)
        }),
        c("bench_machine_forkstorm_kernel", |x| {
            machine(x, Ms::ForkStorm, H::Kernel)
        }),
        c("bench_machine_forkstorm_earlyoom", |x| {
            machine(x, Ms::ForkStorm, H::Earlyoom)
        }),
        c("bench_machine_forkstorm_oomd", |x| {
            machine(x, Ms::ForkStorm, H::Oomd)
        }),
        c("bench_machine_forkstorm_oomkit", |x| {
            machine(x, Ms::ForkStorm, H::Oomkit)
        }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ms {
    Priority,
    ForkStorm,
}

impl Ms {
    fn name(self) -> &'static str {
        match self {
            Ms::Priority => "priority",
            Ms::ForkStorm => "forkstorm",
        }
    }
}

/// N runs of one machine-wide scenario with one handler.
fn machine(ctx: &mut Ctx, sc: Ms, h: H) -> TestResult {
    let scenario = format!("machine-{}", sc.name());
    crate::bench::n_runs(ctx, &scenario, h, "pressure_to_kill_ms", |ctx, i| {
        one_run(ctx, sc, h, i)
    })
}

/// The `some` line of `/proc/pressure/memory`.
fn psi_some() -> Result<oomkit::cgroup::PressureLine, Fail> {
    let text = std::fs::read("/proc/pressure/memory")
        .map_err(|e| Fail(format!("read /proc/pressure/memory: {e}")))?;
    oomkit::cgroup::parse::pressure(&text)
        .map(|p| p.some)
        .map_err(|e| Fail(format!("/proc/pressure/memory: {e}")))
}

/// Voluntary context switches of all threads of `pid`.
fn voluntary_switches(pid: i32) -> Result<u64, Fail> {
    let mut sw = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        sw += s
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(sw)
}

/// PIDs in `cg` (its own `cgroup.procs`).
fn procs(cg: &Path) -> Vec<i32> {
    std::fs::read_to_string(cg.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// SIGKILLs everything in `cg` and waits (bounded) until it is empty.
fn kill_all(cg: &Path) -> Result<(), Fail> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let pids = procs(cg);
        if pids.is_empty() {
            return Ok(());
        }
        for p in pids {
            if let Some(pid) = rustix::process::Pid::from_raw(p) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        if Instant::now() > end {
            return Err(Fail(format!("{} did not empty within 30 s", cg.display())));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A workload called `name` (its `comm`, which earlyoom's regexes see) in `cg`.
fn spawn_named(cg: &Path, name: &str, kind: WorkloadKind) -> Result<Workload, Fail> {
    let prog = named(name)?;
    let mut args = vec!["workload".to_string(), cg.display().to_string()];
    args.extend(kind.args());
    let mut w = Workload::spawn_exec(cg, &prog, &args, None)?;
    // The exec'd program prints `ready` again from inside the cgroup.
    w.wait_line("ready", Duration::from_secs(20))?;
    Ok(w)
}

fn mkcg(path: &Path, parent: bool) -> Result<(), Fail> {
    std::fs::create_dir_all(path).map_err(|e| Fail(format!("mkdir {}: {e}", path.display())))?;
    if parent {
        write_file(&path.join("cgroup.subtree_control"), "+memory +pids")?;
    }
    Ok(())
}

/// Starts handler `h` for the whole machine, managing the workload tree `machine`.
fn start(
    ctx: &Ctx,
    sc: Ms,
    h: H,
    machine: &Path,
    prefer: &[Named<'_>],
    avoid: &[Named<'_>],
) -> Result<Option<Running>, Fail> {
    let dir = PathBuf::from(format!("/tmp/bench-{}", ctx.name()));
    std::fs::create_dir_all(&dir)?;
    match h {
        H::Kernel => Ok(None),
        H::Earlyoom => crate::bench::start_handler(ctx, h, machine, machine, 0, prefer, avoid, 64),
        H::Oomd => {
            for (_, cg) in prefer {
                set_trusted_xattr(cg, "oomd_prefer", "1")?;
            }
            for (_, cg) in avoid {
                set_trusted_xattr(cg, "oomd_avoid", "1")?;
            }
            let rel = hier(machine).trim_start_matches('/').to_string();
            let cfg = json!({
                "rulesets": [{
                    "name": "machine protection",
                    "detectors": [
                        ["machine pressure", {"name": "pressure_above", "args": {
                            "cgroup": "/", "resource": "memory", "threshold": "10", "duration": "0"}}],
                        ["workload pressure", {"name": "pressure_above", "args": {
                            "cgroup": rel, "resource": "memory", "threshold": "10", "duration": "0"}}]
                    ],
                    "actions": [{"name": "kill_by_memory_size_or_growth", "args": {
                        "cgroup": format!("{rel}/*"), "post_action_delay": "1"}}]
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
            let mut r = Running::start(ctx, Path::new(crate::bench::OOMD_BIN), &args, "oomd")?;
            r.wait_for("its startup", Duration::from_secs(30), "Running oomd")?;
            Ok(Some(r))
        }
        H::Oomkit => {
            let protected: Vec<String> = avoid.iter().map(|(_, cg)| hier(cg)).collect();
            let low = prefer.first().map(|(_, cg)| hier(cg)).unwrap_or_default();
            let granularity = match sc {
                Ms::Priority => "process",
                Ms::ForkStorm => "cgroup",
            };
            let cfg = format!(
                "[daemon]\nroot = \"{}\"\ndepth = 4\nlog_format = \"json\"\nlog_level = \"info\"\n\n{}",
                machine.display(),
                machine_config(&protected, &low, granularity)
            );
            let path = dir.join("oomkit.toml");
            write_file(&path, &cfg)?;
            let args = vec!["run".into(), "--config".into(), path.display().to_string()];
            let mut r = Running::start(ctx, Path::new(OOMKIT_BIN), &args, "oomkit")?;
            r.wait_for("its `running` line", Duration::from_secs(60), "\"running\"")?;
            Ok(Some(r))
        }
    }
}

/// Most `some avg10` a run may start with: a machine at rest.
const CALM_AVG10: f64 = 1.0;

/// Waits until the machine is at rest again: the previous run's stall has decayed out of
/// `some avg10`. Without it a handler that reads averages (oomd's `pressure_above`) sees
/// the previous run's pressure and acts on the next run's first workload.
fn wait_calm() -> Result<(), Fail> {
    crate::harness::wait_for(
        "memory `some avg10` to decay under 1 % before the run",
        Duration::from_secs(180),
        Duration::from_millis(250),
        || Ok((psi_some()?.avg10 < CALM_AVG10).then_some(())),
    )
}

fn one_run(ctx: &Ctx, sc: Ms, h: H, i: usize) -> Result<Value, Fail> {
    wait_calm()?;
    let (total, avail) = meminfo_mib()?;
    let (run_path, _) = parent_cgroup(ctx, &format!("r{i}"))?;
    let machine = run_path.join("machine");
    mkcg(&machine, true)?;
    let session = machine.join("session");
    mkcg(&session, false)?;
    let (keep, grow) = match sc {
        Ms::Priority => ("service", "batch"),
        Ms::ForkStorm => ("session", "build"),
    };
    let keep_cg = machine.join(keep);
    let grow_cg = machine.join(grow);
    mkcg(&keep_cg, false)?;
    mkcg(&grow_cg, false)?;
    let prefer: Vec<Named<'_>> = vec![(grow, grow_cg.as_path())];
    let mut avoid: Vec<Named<'_>> = vec![("session", session.as_path())];
    if sc == Ms::Priority {
        avoid.push((keep, keep_cg.as_path()));
    }
    let mut handler = start(ctx, sc, h, &machine, &prefer, &avoid)?;
    let mut service = match sc {
        Ms::Priority => {
            let mut s = spawn_named(
                &keep_cg,
                "service",
                WorkloadKind::HogHold {
                    mib: avail / 2,
                    step_mib: 8,
                },
            )?;
            s.wait_line("done", Duration::from_secs(120))?;
            Some(s)
        }
        Ms::ForkStorm => None,
    };
    let mut hb = spawn_named(
        &session,
        "session",
        WorkloadKind::Heartbeat { period_ms: 50 },
    )?;
    let hb_before = heartbeat_worst(&mut hb)?;
    // Idle cost, first run only: the handler with the machine at rest (service held).
    let mut idle_per_s = Value::Null;
    if let (0, Some(r)) = (i, handler.as_ref()) {
        let pid = r.pid();
        let (s0, t0) = (voluntary_switches(pid)?, Instant::now());
        std::thread::sleep(IDLE);
        let s1 = voluntary_switches(pid)?;
        let per_s = s1.saturating_sub(s0) as f64 / t0.elapsed().as_secs_f64();
        idle_per_s = json!((per_s * 100.0).round() / 100.0);
    }
    // Only the heartbeat's reports from here on count.
    let mut late = Vec::new();
    let _ = heartbeat_windows(&mut hb, &mut late);
    late.clear();
    let mut hb_run = 0u64;
    let kills_before = vmstat_oom_kill()?;
    let psi_before = psi_some()?.total_us;
    let start = Instant::now();
    let (mut batch, each) = match sc {
        Ms::Priority => (
            spawn_named(
                &grow_cg,
                "batch",
                WorkloadKind::HogRate {
                    step_mib: 1,
                    mib_per_s: (total / 50).max(1),
                    cap_mib: 0,
                },
            )?,
            0,
        ),
        Ms::ForkStorm => {
            let each = (avail * 13 / 10 / 20).max(1);
            (
                spawn_named(
                    &grow_cg,
                    "build",
                    WorkloadKind::ForkAlloc {
                        children: 20,
                        mib: each,
                    },
                )?,
                each,
            )
        }
    };
    let mut onset: Option<Instant> = None;
    let mut kernel_kill: Option<Instant> = None;
    let mut signal: Option<Instant> = None;
    let mut first_death: Option<Instant> = None;
    let mut grow_max = 0usize;
    let mut note_text = String::new();
    loop {
        std::thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        hb_run = hb_run.max(heartbeat_windows(&mut hb, &mut late).unwrap_or(0));
        if onset.is_none() && psi_some()?.total_us > psi_before {
            onset = Some(now);
        }
        if kernel_kill.is_none() && vmstat_oom_kill()? > kills_before {
            kernel_kill = Some(now);
        }
        if let Some(r) = handler.as_mut() {
            r.poll();
            if signal.is_none() {
                signal = r
                    .lines
                    .iter()
                    .find(|(t, l)| *t >= start && is_kill_line(h, l))
                    .map(|(t, _)| *t);
            }
        }
        let n = procs(&grow_cg).len();
        grow_max = grow_max.max(n);
        let died = match sc {
            Ms::Priority => {
                batch.try_exited().is_some()
                    || service.as_mut().is_some_and(|s| s.try_exited().is_some())
            }
            Ms::ForkStorm => n < grow_max,
        } || hb.try_exited().is_some();
        if died && first_death.is_none() {
            first_death = Some(now);
        }
        let kill = [signal, kernel_kill, first_death]
            .into_iter()
            .flatten()
            .min();
        if let Some(k) = kill {
            let build_gone = sc == Ms::ForkStorm && n == 0 && grow_max > 0;
            if k.elapsed() > AFTER_KILL || (build_gone && k.elapsed() > Duration::from_secs(1)) {
                break;
            }
        }
        if start.elapsed() > RUN_TIMEOUT {
            note_text = format!("nobody killed within {RUN_TIMEOUT:?}");
            break;
        }
    }
    let kill = [signal, kernel_kill, first_death]
        .into_iter()
        .flatten()
        .min();
    // The kill came before any memory stall: there is no "pressure → kill" to measure.
    let kill_before_stall = kill.is_some_and(|k| onset.is_none_or(|o| o >= k));
    let kernel_kills = vmstat_oom_kill()?.saturating_sub(kills_before);
    let hb_alive = hb.try_exited().is_none();
    // One more report, so the beats around the end of the run count too.
    let hb_worst = if hb_alive {
        hb.wait_line("hb ", Duration::from_secs(20))
            .ok()
            .and_then(|l| {
                l.split_whitespace()
                    .nth(2)
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .map(|w| {
                w.max(hb_run)
                    .max(heartbeat_windows(&mut hb, &mut late).unwrap_or(0))
            })
    } else {
        None
    };
    let (hb_near, hb_guest, hb_late) = near_and_worst(late_beats(&late, kill.unwrap_or(start)));
    let service_alive = service.as_mut().is_none_or(|s| s.try_exited().is_none());
    let left = procs(&grow_cg).len();
    let grow_dead = match sc {
        Ms::Priority => batch.try_exited().is_some(),
        Ms::ForkStorm => left < grow_max,
    };
    let victim = match (grow_dead, service_alive && hb_alive) {
        (_, false) if grow_dead => "both",
        (_, false) => keep,
        (true, true) => grow,
        (false, true) => "nobody",
    };
    let right = grow_dead && service_alive && hb_alive;
    let (rss, hwm) = match handler.as_ref() {
        Some(r) => {
            let (rss, hwm, _, _, _) = proc_numbers(r.pid())?;
            (json!(rss), json!(hwm))
        }
        None => (Value::Null, Value::Null),
    };
    let handler_kills = handler.as_ref().map_or(0, |r| {
        r.lines
            .iter()
            .filter(|(t, l)| *t >= start && is_kill_line(h, l))
            .count()
    });
    let log_tail = handler.as_ref().map(|r| r.tail(6)).unwrap_or_default();
    stop(handler);
    drop(batch);
    drop(service);
    drop(hb);
    kill_all(&grow_cg)?;
    kill_all(&keep_cg)?;
    kill_all(&session)?;
    let since = |from: Option<Instant>, t: Option<Instant>| -> Option<Duration> {
        Some(t?.checked_duration_since(from?).unwrap_or(Duration::ZERO))
    };
    Ok(json!({
        "kind": "machine",
        "scenario": sc.name(),
        "handler": h.name(),
        "run": i,
        "mem_total_mib": total,
        "service_mib": if sc == Ms::Priority { avail / 2 } else { 0 },
        "job_mib": each,
        "start_to_kill_ms": ms(since(Some(start), kill)),
        "pressure_to_kill_ms": ms(since(onset, kill).filter(|_| !kill_before_stall)),
        "kill_before_stall": kill_before_stall,
        "start_to_pressure_ms": ms(since(Some(start), onset)),
        "handler_signal_ms": ms(since(onset, signal)),
        "kernel_kill_ms": ms(since(onset, kernel_kill)),
        "victim": victim,
        "right_victim": right,
        "grow_left": left,
        "grow_max": grow_max,
        "kernel_oom_kills": kernel_kills,
        "handler_kills": handler_kills,
        "hb_worst_ms": hb_worst.map(|w| (w as f64 / 100.0).round() / 10.0),
        "hb_before_ms": (hb_before as f64 / 100.0).round() / 10.0,
        "hb_near_kill_ms": kill.map(|_| hb_near),
        // Beats under 2 ms are not reported one by one: with none over it, the worst is the
        // guest's part too.
        "hb_guest_worst_ms": hb_worst.map(|w| {
            if late.is_empty() { (w as f64 / 100.0).round() / 10.0 } else { hb_guest }
        }),
        "hb_late": hb_late,
        "rss_kib": rss,
        "hwm_kib": hwm,
        "idle_wakeups_per_s": idle_per_s,
        "note": note_text,
        "log_tail": if kill.is_none() { log_tail } else { String::new() },
    }))
}
