//! Issue 12: the baseline of `memory.events.local` inferred at start-up. Siblings attached in
//! one batch under a parent whose hierarchical `memory.events` reads all zero (before and after
//! their watches) take zero as their baseline without reading their own files; an event in one
//! of them afterwards must still reach the engine as that cgroup's event.

use std::time::Duration;

use oomkit::cgroup::Limit;

use crate::ensure;
use crate::harness::{Ctx, Outcome, TestResult};
use crate::scenario::{Daemon, DaemonOpts, ended, hier, parent_cgroup};
use crate::workload::WorkloadKind;

const MIB: u64 = 1 << 20;
/// Siblings created before the daemon starts: its start-up attaches them in one batch.
const SIBLINGS: usize = 200;
/// The one that crosses its `memory.high`.
const HOT: usize = 137;
const BUDGET: u64 = 32;

/// 200 siblings attached at start with inferred baselines; a hog over `memory.high` in one of
/// them: the throttle handler's incident names that cgroup as its trigger, with a `high` rise.
pub fn inferred_baseline(ctx: &mut Ctx) -> TestResult {
    let (parent_path, parent) = parent_cgroup(ctx, "siblings")?;
    for i in 0..SIBLINGS {
        ctx.cgroup(&format!("siblings/c{i}"))?;
    }
    let (hot_path, hot) = ctx.cgroup(&format!("siblings/c{HOT}"))?;
    hot.set_memory_high(Limit::Bytes(BUDGET * MIB))?;
    let before = parent.memory_events()?;
    ensure!(
        !before.any(),
        "the new parent's memory.events is not all zero ({before:?}): nothing would be inferred"
    );
    let body = format!(
        "[engine]\nsample_interval_ms = 100\nquiet_tick_ms = 500\n\n\
         [signals]\nmemory_events = true\n\n\
         [handler]\nkind = \"throttle\"\n\n\
         [[handler.rules]]\nglob = \"{}\"\npriority = -50\n\n\
         [handler.throttle]\nstep_fraction = 0.8\nfloor = \"16MiB\"\nstep_interval_ms = 1000\n\
         freeze_at_floor = false\nkill_after_ms = 60000\nrelease_below = 0.8\nkill = \"cgroup\"\n",
        hier(&hot_path)
    );
    let mut d = Daemon::start(ctx, &parent_path, &body, &DaemonOpts::default())?;
    let phases = d.wait_log("the start-up phases line", Duration::from_secs(30), |l| {
        l["message"] == "start-up phases"
    })?;
    let inferred = phases["baselines_inferred"].as_u64().unwrap_or(0);
    ensure!(
        inferred >= SIBLINGS as u64,
        "only {inferred} of {SIBLINGS} baselines inferred (the batch path was not taken): {phases}"
    );
    let mut hog = ctx.spawn(
        &hot_path,
        WorkloadKind::HogHold {
            mib: BUDGET + 4,
            step_mib: 2,
        },
    )?;
    let inc = d.wait_incident("the hot sibling's incident", Duration::from_secs(60), |i| {
        i["plan"][0]["action"] == "set_high"
    })?;
    let trigger = &inc["trigger"];
    ensure!(
        trigger["kind"] == "memory_events" && trigger["cgroup"] == hier(&hot_path).as_str(),
        "the incident's trigger is not the hot sibling's memory event: {inc}"
    );
    let high = trigger["counters"]["high"].as_u64().unwrap_or(0);
    ensure!(high > 0, "no `high` rise in the trigger: {inc}");
    ensure!(
        inc["plan"][0]["cgroup"] == hier(&hot_path).as_str(),
        "the throttle is not on the hot sibling: {inc}"
    );
    ensure!(ended(&mut hog).is_none(), "the hog died");
    let stopped = d.stop()?;
    ensure!(stopped["kills"] == 0, "daemon counters: {stopped}");
    Ok(Outcome::Pass(format!(
        "{inferred} baselines inferred at start ({} read); c{HOT}'s high +{high} seen as its \
         own event, throttled",
        phases["baselines_read"]
    )))
}
