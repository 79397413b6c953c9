//! End-to-end: the real `oomkit` daemon binary against workloads (see [`crate::scenario`] for
//! the layout, why a cgroup stands in for the machine, and how the daemon is run and observed).
//!
//! Every scenario asserts its outcome from three sides: the processes (who died, by which
//! signal), the kernel (`oom_kill` in `/proc/vmstat` and the cgroups' `memory.events`), and the
//! daemon (its incident records and JSON log).

use std::path::Path;
use std::time::Duration;

use oomkit::cgroup::Limit;
use serde_json::Value;

use crate::harness::{Ctx, Fail, Outcome, TestResult, read_file, wait_for};
use crate::scenario::{
    self, Daemon, DaemonOpts, HEAP_VICTIM_BIN, Oomkit, cgroup_ooms, ended, hier, parent_cgroup,
    timing, vmstat_oom_kill,
};
use crate::workload::{Workload, WorkloadKind};
use crate::{ensure, fail};

const MIB: u64 = 1 << 20;

fn f1(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

fn steps(incident: &Value) -> Vec<String> {
    incident["plan"]
        .as_array()
        .map(|p| {
            p.iter()
                .map(|s| s["action"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn first_victim(incident: &Value) -> &Value {
    &incident["victims"][0]
}

/// The important service survives, the low-priority batch job is killed by oomkit, the kernel
/// OOM killer never fires.
pub fn priority(ctx: &mut Ctx) -> TestResult {
    let mut run = scenario::priority(
        ctx,
        &Oomkit::With(DaemonOpts::default()),
        Duration::from_secs(40),
    )?;
    let summary = run.summary("with oomkit");
    ensure!(
        run.first_dead == Some("batch") && run.batch_end.as_deref() == Some("SIGKILL"),
        "the batch job should have been killed first: {summary}"
    );
    ensure!(run.service_end.is_none(), "the service died: {summary}");
    ensure!(
        run.vmstat_oom_kills == 0 && run.machine_oom_kills == 0 && run.machine_oom == 0,
        "the kernel OOM killer fired: {summary}"
    );
    let Some(inc) = run.incident.clone() else {
        fail!("no incident record: {summary}");
    };
    ensure!(inc["outcome"] == "acted", "incident outcome: {inc}");
    ensure!(inc["dry_run"] == false, "incident says dry run: {inc}");
    let v = first_victim(&inc);
    ensure!(
        v["pid"] == run.batch.pid() && v["cgroup"] == run.batch_cg.as_str(),
        "incident victim {v} is not the batch job {} in {}",
        run.batch.pid(),
        run.batch_cg
    );
    ensure!(
        inc["reason"]
            .as_str()
            .is_some_and(|r| r.contains("tier -100")),
        "reason: {}",
        inc["reason"]
    );
    // Still alive once the episode is over, and the daemon's own counters agree.
    ensure!(
        ended(&mut run.service).is_none(),
        "the service died after the episode"
    );
    let Some(d) = run.daemon.take() else {
        fail!("no daemon")
    };
    let stopped = d.stop()?;
    ensure!(
        stopped["kills"] == 1 && stopped["kernel_oom_kills"] == 0,
        "daemon counters: {stopped}"
    );
    let pk = run.pressure_to_kill.map(|d| d.as_secs_f64() * 1000.0);
    ctx.note(format!(
        "priority: pressure -> batch dead {} ms; incident: decided {} ms, signal {} ms, exited {} ms, memory back {} ms",
        f1(pk),
        f1(timing(&inc, "decided")),
        f1(timing(&inc, "signal_sent")),
        f1(timing(&inc, "victim_exited")),
        f1(timing(&inc, "memory_back")),
    ));
    Ok(Outcome::Pass(format!(
        "batch (tier -100) SIGKILLed by oomkit {} ms after the first high event, service ({} MiB, tier 100 by xattr) alive, \
         no kernel OOM kill (vmstat +0, machine memory.events oom +0 oom_kill +0)",
        f1(pk),
        scenario::SERVICE
    )))
}

/// `--dry-run`: the decision is logged and recorded (`dry_run: true`, the would-be victim), and
/// nothing is killed.
pub fn dry_run(ctx: &mut Ctx) -> TestResult {
    let mut run = scenario::priority(
        ctx,
        &Oomkit::With(DaemonOpts {
            dry_run: true,
            ..DaemonOpts::default()
        }),
        Duration::from_secs(40),
    )?;
    let summary = run.summary("dry run");
    ensure!(
        run.first_dead.is_none(),
        "something died in a dry run: {summary}"
    );
    let Some(inc) = run.incident.clone() else {
        fail!("no dry-run incident: {summary}");
    };
    ensure!(
        inc["dry_run"] == true && inc["outcome"] == "dry_run",
        "incident: {inc}"
    );
    ensure!(
        inc["victims"].as_array().is_some_and(Vec::is_empty),
        "a dry run recorded victims: {inc}"
    );
    let step = &inc["plan"][0];
    ensure!(
        step["action"] == "kill_process" && step["cgroup"] == run.batch_cg.as_str(),
        "the would-be kill is not the batch job's: {step}"
    );
    let pid = run.batch.pid().to_string();
    ensure!(
        inc["reason"].as_str().is_some_and(|r| r.contains(&pid))
            && step["pid"] == run.batch.pid()
            && inc["would_kill"][0]["pid"] == run.batch.pid(),
        "the record does not name the would-be victim {pid}: {inc}"
    );
    let Some(mut d) = run.daemon.take() else {
        fail!("no daemon")
    };
    d.wait_log(
        "the `dry run: would act` log line",
        Duration::from_secs(5),
        |l| l["message"] == "dry run: would act",
    )?;
    ensure!(
        ended(&mut run.service).is_none() && ended(&mut run.batch).is_none(),
        "a process died after the dry-run decision: {summary}"
    );
    ensure!(
        run.vmstat_oom_kills == 0,
        "the kernel OOM killer fired: {summary}"
    );
    let stopped = d.stop()?;
    ensure!(stopped["kills"] == 0, "daemon counters: {stopped}");
    Ok(Outcome::Pass(format!(
        "dry-run record: would kill_process {pid} in {} ({}); both processes alive, kills 0",
        run.batch_cg, inc["reason"]
    )))
}

/// The main loop stalls (hidden debug flag: the handler sleeps 4 s in `decide`) during
/// pressure; the watchdog (1 s) acts on its own and kills the lowest-tier largest process.
pub fn watchdog(ctx: &mut Ctx) -> TestResult {
    let mut run = scenario::priority(
        ctx,
        &Oomkit::With(DaemonOpts {
            stall_ms: Some(4000),
            ..DaemonOpts::default()
        }),
        Duration::from_secs(40),
    )?;
    let summary = run.summary("watchdog");
    ensure!(
        run.first_dead == Some("batch") && run.batch_end.as_deref() == Some("SIGKILL"),
        "the batch job should have been killed: {summary}"
    );
    ensure!(run.service_end.is_none(), "the service died: {summary}");
    ensure!(
        run.vmstat_oom_kills == 0,
        "the kernel OOM killer fired: {summary}"
    );
    let Some(mut d) = run.daemon.take() else {
        fail!("no daemon")
    };
    let stall_line = d.wait_log("the debug stall log line", Duration::from_secs(5), |l| {
        l["message"] == "debug: stalling the handler"
    })?;
    let kill = d.wait_log("the watchdog's kill", Duration::from_secs(5), |l| {
        l["message"] == "watchdog killed a process"
    })?;
    ensure!(
        kill["pid"] == run.batch.pid(),
        "the watchdog killed {kill}, not the batch job {}",
        run.batch.pid()
    );
    // The stalled decide returns; the loop goes on and stops cleanly.
    ensure!(
        ended(&mut run.service).is_none(),
        "the service died after the stall"
    );
    let stopped = d.stop()?;
    ensure!(
        stopped["watchdog_fired"].as_u64().unwrap_or(0) >= 1,
        "daemon counters: {stopped}"
    );
    Ok(Outcome::Pass(format!(
        "loop stalled in decide ({}), watchdog killed batch pid {} in {}; service alive, no kernel OOM kill; {}",
        stall_line["stall_ms"], kill["pid"], kill["cgroup"], stopped
    )))
}

fn limit_config() -> String {
    "[engine]\nsample_interval_ms = 100\nkill_deadline_ms = 5000\n\n\
     [signals]\nmemory_events = true\n\n\
     [handler]\nkind = \"priority-kill\"\n\n\
     [handler.priority_kill]\ngranularity = \"process\"\n"
        .to_string()
}

/// A cgroup with memory.high below memory.max and a process growing in it: oomkit kills it on
/// the `high` events, before the kernel's cgroup OOM kill at memory.max.
pub fn limit(ctx: &mut Ctx) -> TestResult {
    let (machine_path, _) = parent_cgroup(ctx, "machine")?;
    let (app_path, app) = ctx.cgroup("machine/app")?;
    app.set_memory_high(Limit::Bytes(48 * MIB))?;
    app.set_memory_max(Limit::Bytes(96 * MIB))?;
    let mut d = Daemon::start(ctx, &machine_path, &limit_config(), &DaemonOpts::default())?;
    let vm_before = vmstat_oom_kill()?;
    let mut hog = ctx.spawn(&app_path, WorkloadKind::HogGrow { step_mib: 2 })?;
    let st = hog.wait_exit(Duration::from_secs(30))?;
    let end = ended_status(st);
    ensure!(end == "SIGKILL", "the hog ended with {end}");
    let inc = d.wait_incident("the kill's incident", Duration::from_secs(15), |_| true)?;
    let (oom, oom_kill) = cgroup_ooms(&app)?;
    let events = app.memory_events()?;
    ensure!(
        oom == 0 && oom_kill == 0,
        "the kernel's cgroup OOM killer fired: {events:?}"
    );
    ensure!(
        vmstat_oom_kill()? == vm_before,
        "/proc/vmstat oom_kill rose"
    );
    ensure!(
        events.high.unwrap_or(0) > 0,
        "no high event counted: {events:?}"
    );
    ensure!(inc["outcome"] == "acted", "incident: {inc}");
    ensure!(
        first_victim(&inc)["pid"] == hog.pid(),
        "victim: {}",
        first_victim(&inc)
    );
    let trigger = &inc["trigger"];
    ensure!(
        trigger.to_string().contains("high"),
        "the episode did not start on a high event: {trigger}"
    );
    let kill = timing(&inc, "signal_sent");
    let back = timing(&inc, "memory_back");
    ensure!(
        kill.is_some() && back.is_some(),
        "timings missing: {}",
        inc["timings_ms"]
    );
    ctx.note(format!(
        "limit: first high event -> kill {} ms, -> memory back {} ms (incident timings_ms; decided {} ms)",
        f1(kill),
        f1(back),
        f1(timing(&inc, "decided"))
    ));
    Ok(Outcome::Pass(format!(
        "hog SIGKILLed by oomkit at memory.high 48 MiB (max 96 MiB): high +{}, oom 0, oom_kill 0; \
         high -> kill {} ms, -> memory back {} ms",
        events.high.unwrap_or(0),
        f1(kill),
        f1(back)
    )))
}

fn ended_status(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match st.signal() {
        Some(libc::SIGKILL) => "SIGKILL".into(),
        Some(s) => format!("signal {s}"),
        None => format!("exit {}", st.code().unwrap_or(-1)),
    }
}

/// A "build" of 20 processes, each allocating, beside a small vital "session": the build's
/// cgroup is killed as a whole, the session lives.
pub fn fork_storm(ctx: &mut Ctx) -> TestResult {
    let (machine_path, machine) = parent_cgroup(ctx, "machine")?;
    machine.set_memory_high(Limit::Bytes(96 * MIB))?;
    machine.set_memory_max(Limit::Bytes(256 * MIB))?;
    let (build_path, build) = ctx.cgroup("machine/build")?;
    let (session_path, _) = ctx.cgroup("machine/session")?;
    let body = format!(
        "[engine]\nsample_interval_ms = 100\nkill_deadline_ms = 5000\n\n\
         [signals]\nmemory_events = true\n\n\
         [handler]\nkind = \"priority-kill\"\n\n\
         [[handler.rules]]\nglob = \"{}\"\npriority = -100\n\n\
         [[handler.rules]]\nglob = \"{}\"\nprotected = true\n\n\
         [handler.priority_kill]\ngranularity = \"cgroup\"\n",
        hier(&build_path),
        hier(&session_path)
    );
    let mut d = Daemon::start(ctx, &machine_path, &body, &DaemonOpts::default())?;
    let vm_before = vmstat_oom_kill()?;
    let (_, kill_before) = cgroup_ooms(&machine)?;
    let mut session = ctx.spawn(
        &session_path,
        WorkloadKind::HogHold {
            mib: 8,
            step_mib: 8,
        },
    )?;
    session.wait_line("done", Duration::from_secs(20))?;
    let mut make = ctx.spawn(
        &build_path,
        WorkloadKind::ForkAlloc {
            children: 20,
            mib: 6,
        },
    )?;
    make.wait_line("forked", Duration::from_secs(20))?;
    let peak_procs = build.procs()?.len();
    ensure!(peak_procs >= 2, "the build has only {peak_procs} processes");
    // The build cgroup empties (cgroup.events: populated 0) once oomkit killed it.
    wait_for(
        "the build cgroup to be emptied",
        Duration::from_secs(40),
        Duration::from_millis(20),
        || Ok((build.cgroup_events()?.populated == Some(false)).then_some(())),
    )
    .map_err(|e| Fail(format!("{}; daemon log: {}", e.0, d.log_tail(10))))?;
    let make_end = ended_status(make.wait_exit(Duration::from_secs(10))?);
    ensure!(
        make_end == "SIGKILL",
        "the build's parent ended with {make_end}"
    );
    let inc = d.wait_incident("the kill's incident", Duration::from_secs(15), |_| true)?;
    ensure!(inc["outcome"] == "acted", "incident: {inc}");
    let v = first_victim(&inc);
    ensure!(
        v["kind"] == "cgroup" && v["cgroup"] == hier(&build_path).as_str(),
        "victim {v} is not the build cgroup"
    );
    ensure!(ended(&mut session).is_none(), "the session died");
    let (_, kill_after) = cgroup_ooms(&machine)?;
    ensure!(
        vmstat_oom_kill()? == vm_before && kill_after == kill_before,
        "the kernel OOM killer fired"
    );
    let mech = if machine_path.join("cgroup.kill").exists() {
        "cgroup.kill"
    } else {
        "freeze + pidfd kill (no cgroup.kill before 5.14)"
    };
    // The loop noticed the group's end itself (cgroup.events), well before the kill deadline.
    let back = timing(&inc, "memory_back");
    ensure!(
        back.is_some_and(|b| b < 4000.0),
        "memory back only after {} ms (kill deadline 5000 ms): {}",
        f1(back),
        inc["timings_ms"]
    );
    ctx.note(format!(
        "fork_storm: event -> cgroup kill {} ms, -> all exited {} ms, -> memory back {} ms ({mech})",
        f1(timing(&inc, "signal_sent")),
        f1(timing(&inc, "victim_exited")),
        f1(back)
    ));
    Ok(Outcome::Pass(format!(
        "build cgroup ({peak_procs} processes seen) killed as a whole by {mech} {} ms after the event, \
         memory back at {} ms; session (protected) alive, no kernel OOM kill",
        f1(timing(&inc, "signal_sent")),
        f1(back)
    )))
}

/// The throttle handler squeezes an offender (its memory.high lowered — read back from the
/// file), a neighbour's allocation latency stays bounded, and nothing is killed once the
/// offender stops growing.
pub fn throttle(ctx: &mut Ctx) -> TestResult {
    const BUDGET: u64 = 48;
    // What a misplaced throttle does to the neighbour is a memory stall: the kernel's
    // `memory.high` penalty is up to 2 s per charge, counted in its `memory.pressure`. CPU
    // starvation of the guest's one vCPU on a loaded host is not, so the stall is the bound
    // that holds on any host; the latency is checked only against the largest penalty.
    const STALL_BOUND_US: u64 = 300_000;
    const P99_BOUND_US: u64 = 2_000_000;
    let (machine_path, machine) = parent_cgroup(ctx, "machine")?;
    let (offender_path, offender) = ctx.cgroup("machine/batch-1")?;
    let (neighbour_path, neighbour_cg) = ctx.cgroup("machine/db")?;
    // The offender's budget: crossing it is the signal (no swap: anonymous memory cannot be
    // reclaimed, so the throttle holds it back rather than shrinking it).
    offender.set_memory_high(Limit::Bytes(BUDGET * MIB))?;
    let body = format!(
        "[engine]\nsample_interval_ms = 100\nquiet_tick_ms = 500\n\n\
         [signals]\nmemory_events = true\n\n\
         [handler]\nkind = \"throttle\"\n\n\
         [[handler.rules]]\nglob = \"{}\"\npriority = -50\n\n\
         [[handler.rules]]\nglob = \"{}\"\nprotected = true\n\n\
         [handler.throttle]\nstep_fraction = 0.8\nfloor = \"16MiB\"\nstep_interval_ms = 1000\n\
         freeze_at_floor = false\nkill_after_ms = 60000\nrelease_below = 0.8\nkill = \"cgroup\"\n",
        hier(&offender_path),
        hier(&neighbour_path)
    );
    let mut d = Daemon::start(ctx, &machine_path, &body, &DaemonOpts::default())?;
    let vm_before = vmstat_oom_kill()?;
    let (_, kill_before) = cgroup_ooms(&machine)?;
    let stall_before = neighbour_cg.memory_pressure()?.some.total_us;
    let mut neighbour = ctx.spawn(
        &neighbour_path,
        WorkloadKind::Latency {
            period_ms: 20,
            kib: 1024,
            duration_ms: 6000,
        },
    )?;
    let mut off = ctx.spawn(
        &offender_path,
        WorkloadKind::HogHold {
            mib: BUDGET + 2,
            step_mib: 2,
        },
    )?;
    let inc = d.wait_incident("the throttle's incident", Duration::from_secs(30), |i| {
        i["plan"][0]["action"] == "set_high"
    })?;
    ensure!(
        inc["plan"][0]["cgroup"] == hier(&offender_path).as_str(),
        "the throttle is not on the offender: {inc}"
    );
    let high = offender.memory_high()?;
    let squeezed = high.bytes().is_some_and(|b| b < BUDGET * MIB);
    ensure!(
        squeezed,
        "the offender's memory.high is {high:?}, not lowered below {BUDGET} MiB"
    );
    // The neighbour reports once its 6 s window is over (throttle included).
    let lat = neighbour.wait_line("latency", Duration::from_secs(30))?;
    let field = |k: &str| -> Option<u64> {
        lat.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
    };
    let (Some(n), Some(p99), Some(max)) = (field("n="), field("p99_us="), field("max_us=")) else {
        fail!("bad latency line `{lat}`");
    };
    let stall = neighbour_cg
        .memory_pressure()?
        .some
        .total_us
        .saturating_sub(stall_before);
    ensure!(n >= 20, "only {n} latency samples");
    ensure!(
        stall < STALL_BOUND_US,
        "the neighbour stalled on memory for {stall} us in its 6 s window (bound \
         {STALL_BOUND_US} us): it was throttled too ({lat})"
    );
    ensure!(
        p99 < P99_BOUND_US,
        "neighbour p99 {p99} us is over {P99_BOUND_US} us ({lat})"
    );
    ensure!(ended(&mut off).is_none(), "the offender died");
    ensure!(ended(&mut neighbour).is_none(), "the neighbour died");
    let current = offender.memory_current()?;
    ensure!(
        d.incidents()?
            .iter()
            .all(|i| i["victims"].as_array().is_none_or(Vec::is_empty)),
        "something was killed: {:?}",
        d.incidents()?
    );
    let (_, kill_after) = cgroup_ooms(&machine)?;
    ensure!(
        vmstat_oom_kill()? == vm_before && kill_after == kill_before,
        "the kernel OOM killer fired"
    );
    let stopped = d.stop()?;
    ensure!(stopped["kills"] == 0, "daemon counters: {stopped}");
    ctx.note(format!(
        "throttle: neighbour map+touch 1 MiB every 20 ms: {lat}; its memory stall {stall} us"
    ));
    Ok(Outcome::Pass(format!(
        "offender memory.high {BUDGET} -> {} MiB (usage {} MiB) {} ms after its high event; \
         neighbour p99 {:.1} ms, max {:.1} ms over {n} samples, memory stall {:.1} ms; \
         nothing killed",
        high.bytes().unwrap_or(0) >> 20,
        current >> 20,
        f1(timing(&inc, "decided")),
        p99 as f64 / 1000.0,
        max as f64 / 1000.0,
        stall as f64 / 1000.0
    )))
}

/// The demo victim (jemalloc profiling) under the heap-profile handler: a valid jemalloc heap
/// profile in the diagnostics folder before it is killed.
pub fn heap_profile(ctx: &mut Ctx) -> TestResult {
    if !Path::new(HEAP_VICTIM_BIN).exists() {
        fail!("{HEAP_VICTIM_BIN} is missing from the initramfs");
    }
    let (machine_path, _) = parent_cgroup(ctx, "machine")?;
    let (front_path, front) = ctx.cgroup("machine/frontend")?;
    front.set_memory_high(Limit::Bytes(32 * MIB))?;
    front.set_memory_max(Limit::Bytes(128 * MIB))?;
    let body = "[engine]\nsample_interval_ms = 100\nkill_deadline_ms = 5000\n\n\
         [signals]\nmemory_events = true\n\n\
         [handler]\nkind = \"heap-profile\"\n\n\
         [handler.priority_kill]\ngranularity = \"process\"\n\n\
         [handler.heap_profile]\nsignal = \"SIGUSR2\"\ncomms = [\"heap_victim\"]\n\
         headroom = \"32MiB\"\nbudget = \"64MiB\"\nraise_for_ms = 8000\ndump_deadline_ms = 6000\n";
    let mut d = Daemon::start(ctx, &machine_path, body, &DaemonOpts::default())?;
    let victim_log = d.dir.join("heap_victim.log");
    let log_file = std::fs::File::create(&victim_log)
        .map_err(|e| Fail(format!("create {}: {e}", victim_log.display())))?;
    let args: Vec<String> = [
        "--dir",
        &d.diagnostics.display().to_string(),
        "--step-mib",
        "1",
        "--interval-ms",
        "50",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut victim = Workload::spawn_exec(
        &front_path,
        Path::new(HEAP_VICTIM_BIN),
        &args,
        Some(log_file),
    )?;
    let st = victim.wait_exit(Duration::from_secs(40)).map_err(|e| {
        Fail(format!(
            "{}; victim: {}; daemon: {}",
            e.0,
            read_file(&victim_log).unwrap_or_default(),
            d.log_tail(10)
        ))
    })?;
    let end = ended_status(st);
    let vlog = read_file(&victim_log).unwrap_or_default();
    ensure!(
        end == "SIGKILL",
        "the victim ended with {end}; its log: {vlog}"
    );
    let inc = d.wait_incident("the kill's incident", Duration::from_secs(15), |_| true)?;
    let plan = steps(&inc);
    ensure!(
        plan.contains(&"capture_diagnostics".to_string())
            && plan.last().is_some_and(|s| s == "kill_process"),
        "plan: {plan:?}"
    );
    let pid = victim.pid();
    let prefix = format!("heap_victim.{pid}.");
    let mut profiles: Vec<_> = std::fs::read_dir(&d.diagnostics)
        .map_err(|e| Fail(e.to_string()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".heap"))
        })
        .collect();
    profiles.sort();
    let Some(profile) = profiles.first() else {
        let all: Vec<_> = std::fs::read_dir(&d.diagnostics)
            .map_err(|e| Fail(e.to_string()))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        fail!(
            "no heap profile of {pid} in {} (files: {all:?}); victim log: {vlog}",
            d.diagnostics.display()
        );
    };
    let data = std::fs::read(profile).map_err(|e| Fail(e.to_string()))?;
    ensure!(!data.is_empty(), "{} is empty", profile.display());
    ensure!(
        data.starts_with(b"heap_v2/"),
        "{} is not a jemalloc heap profile: {:?}",
        profile.display(),
        String::from_utf8_lossy(&data[..data.len().min(40)])
    );
    // The loop saw the profile arrive and killed then, not at the end of its 6 s wait.
    let kill_at = timing(&inc, "signal_sent");
    ensure!(
        kill_at.is_some_and(|k| k < 5500.0),
        "killed {} ms after the event: the loop waited out the dump deadline (6000 ms) instead of \
         noticing the profile ({} written)",
        f1(kill_at),
        profile.display()
    );
    let memory_max = front.memory_max()?;
    ensure!(
        memory_max == Limit::Bytes(128 * MIB),
        "memory.max not restored after the episode: {memory_max:?}"
    );
    Ok(Outcome::Pass(format!(
        "plan {plan:?}; {} ({} bytes, heap_v2) written, then the victim SIGKILLed; {} ms from the event to the kill",
        profile.display(),
        data.len(),
        f1(timing(&inc, "signal_sent"))
    )))
}

/// The demo, without oomkit: the kernel alone picks (the machine has only memory.max).
pub fn demo_without(ctx: &mut Ctx) -> TestResult {
    let run = scenario::priority(ctx, &Oomkit::Without, Duration::from_secs(60))?;
    let s = run.summary("without oomkit");
    ctx.note(format!("DEMO {s}"));
    Ok(Outcome::Pass(s.to_string()))
}

/// The demo, with oomkit.
pub fn demo_with(ctx: &mut Ctx) -> TestResult {
    let mut run = scenario::priority(
        ctx,
        &Oomkit::With(DaemonOpts::default()),
        Duration::from_secs(60),
    )?;
    let s = run.summary("with oomkit");
    ctx.note(format!("DEMO {s}"));
    if let Some(d) = run.daemon.take() {
        d.stop()?;
    }
    Ok(Outcome::Pass(s.to_string()))
}
