//! Event sources on real kernels: `memory.events` counters seen through the SDK's [`Watcher`]
//! (high, max/oom/oom_kill, oom_group_kill) and a cgroup PSI trigger that fires under pressure and
//! stays quiet when idle.
//!
//! Pressure without swap: anonymous memory cannot be reclaimed, so a workload over `memory.high`
//! is throttled by the kernel (a penalty sleep accounted as a memory stall), which is exactly the
//! sustained, non-fatal pressure a PSI trigger should see. Over `memory.max` it is OOM-killed.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use oomkit::cgroup::{Limit, MemoryEventKind, MemoryEvents};
use oomkit::events::{EventKind, PsiThreshold, Scope, Token, Watcher};

use super::common::{features, require};
use crate::harness::{Ctx, Fail, Outcome, TestResult};
use crate::workload::WorkloadKind;
use crate::{ensure, fail};

/// Sum of the `memory.events` deltas the watcher reported for `token`, waiting until `done`
/// holds for the sum or `timeout` passes. Returns the sum and when `done` first held.
fn collect_memory_events(
    w: &mut Watcher,
    token: Token,
    timeout: Duration,
    done: impl Fn(&MemoryEvents) -> bool,
) -> Result<(MemoryEvents, Duration), Fail> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut sum = MemoryEvents::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            fail!("after {timeout:?} the watcher reported only {sum:?}");
        }
        for ev in w.wait(Some(left))?.iter() {
            if ev.token != token {
                continue;
            }
            match &ev.kind {
                EventKind::MemoryEvents(ch) => {
                    for k in MemoryEventKind::ALL {
                        let by = ch.rose_by(k);
                        if by > 0 {
                            add(&mut sum, k, by);
                        }
                    }
                }
                EventKind::Failed(f) => fail!("memory.events source failed: {f}"),
                EventKind::Gone => fail!("memory.events source reported Gone"),
                _ => {}
            }
        }
        if done(&sum) {
            return Ok((sum, start.elapsed()));
        }
    }
}

fn add(sum: &mut MemoryEvents, k: MemoryEventKind, by: u64) {
    let slot = match k {
        MemoryEventKind::Low => &mut sum.low,
        MemoryEventKind::High => &mut sum.high,
        MemoryEventKind::Max => &mut sum.max,
        MemoryEventKind::Oom => &mut sum.oom,
        MemoryEventKind::OomKill => &mut sum.oom_kill,
        MemoryEventKind::OomGroupKill => &mut sum.oom_group_kill,
        MemoryEventKind::SockThrottled => &mut sum.sock_throttled,
    };
    *slot = Some(slot.unwrap_or(0) + by);
}

fn n(v: Option<u64>) -> u64 {
    v.unwrap_or(0)
}

/// Crossing memory.high is reported as a `high` delta within a bounded time.
pub fn memory_high(ctx: &mut Ctx) -> TestResult {
    let (path, cg) = ctx.cgroup("high")?;
    cg.set_memory_high(Limit::Bytes(16 << 20))?;
    let mut w = Watcher::new()?;
    let tok = w.add_memory_events(&cg, Scope::Hierarchical)?;
    let t = Instant::now();
    let _hog = ctx.spawn(
        &path,
        WorkloadKind::HogHold {
            mib: 24,
            step_mib: 4,
        },
    )?;
    let (sum, after) =
        collect_memory_events(&mut w, tok, Duration::from_secs(15), |s| n(s.high) > 0)?;
    ensure!(n(sum.oom) == 0, "memory.high alone caused an OOM: {sum:?}");
    ctx.note(format!(
        "high event {:.0} ms after the hog started",
        t.elapsed().as_secs_f64() * 1000.0
    ));
    Ok(Outcome::Pass(format!(
        "high +{} reported {:.0} ms after watching",
        n(sum.high),
        after.as_secs_f64() * 1000.0
    )))
}

/// Hitting memory.max with nothing reclaimable: `max`, `oom` and `oom_kill` deltas.
pub fn memory_max_oom(ctx: &mut Ctx) -> TestResult {
    let (path, cg) = ctx.cgroup("max")?;
    cg.set_memory_max(Limit::Bytes(32 << 20))?;
    let mut w = Watcher::new()?;
    let tok = w.add_memory_events(&cg, Scope::Hierarchical)?;
    let mut hog = ctx.spawn(
        &path,
        WorkloadKind::HogExit {
            mib: 64,
            step_mib: 4,
        },
    )?;
    let (sum, after) = collect_memory_events(&mut w, tok, Duration::from_secs(20), |s| {
        n(s.max) > 0 && n(s.oom) > 0 && n(s.oom_kill) > 0
    })?;
    let st = hog.wait_exit(Duration::from_secs(10))?;
    ensure!(
        st.signal() == Some(libc::SIGKILL),
        "hog ended with {st}, not SIGKILL"
    );
    Ok(Outcome::Pass(format!(
        "max +{} oom +{} oom_kill +{} within {:.0} ms",
        n(sum.max),
        n(sum.oom),
        n(sum.oom_kill),
        after.as_secs_f64() * 1000.0
    )))
}

/// memory.oom.group=1: the OOM killer takes the whole group, counted as `oom_group_kill` (5.17+).
pub fn oom_group_kill(ctx: &mut Ctx) -> TestResult {
    let (path, cg) = ctx.cgroup("group")?;
    let skip = require("oom_group_kill", features(&cg).oom_group_kill, (5, 17))?;
    cg.set_memory_max(Limit::Bytes(32 << 20))?;
    cg.set_oom_group(true)?;
    let mut w = Watcher::new()?;
    let tok = w.add_memory_events(&cg, Scope::Hierarchical)?;
    let mut bystander = ctx.spawn(&path, WorkloadKind::Sleep)?;
    let mut hog = ctx.spawn(
        &path,
        WorkloadKind::HogExit {
            mib: 64,
            step_mib: 4,
        },
    )?;
    let want_group = skip.is_none();
    let (sum, after) = collect_memory_events(&mut w, tok, Duration::from_secs(20), |s| {
        n(s.oom_kill) >= 2 && (!want_group || n(s.oom_group_kill) > 0)
    })?;
    for (who, wl) in [("hog", &mut hog), ("bystander", &mut bystander)] {
        let st = wl.wait_exit(Duration::from_secs(10))?;
        ensure!(
            st.signal() == Some(libc::SIGKILL),
            "{who} ended with {st}, not SIGKILL"
        );
    }
    let detail = format!(
        "hog and bystander both OOM-killed; oom_kill +{} oom_group_kill {:?} within {:.0} ms",
        n(sum.oom_kill),
        sum.oom_group_kill,
        after.as_secs_f64() * 1000.0
    );
    Ok(match skip {
        Some(Outcome::Skip(s)) => {
            Outcome::Skip(format!("{s}; group OOM kill itself verified: {detail}"))
        }
        _ => Outcome::Pass(detail),
    })
}

/// A PSI trigger on the cgroup's memory.pressure: quiet while idle, fires under pressure.
pub fn psi_trigger(ctx: &mut Ctx) -> TestResult {
    let (path, cg) = ctx.cgroup("psi")?;
    cg.set_memory_high(Limit::Bytes(16 << 20))?;
    let mut w = Watcher::new()?;
    // Privileged (root): a 500 ms window is allowed on every kernel.
    let tok = w.add_psi(
        &cg,
        PsiThreshold::some(Duration::from_millis(50), Duration::from_millis(500)),
    )?;
    // Idle: an empty cgroup has no stalls, so three windows pass without a firing.
    let quiet = Duration::from_millis(1500);
    let idle_end = Instant::now() + quiet;
    loop {
        let left = idle_end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        for ev in w.wait(Some(left))?.iter() {
            if ev.token == tok {
                fail!("PSI trigger fired on an idle cgroup: {:?}", ev.kind);
            }
        }
    }
    // Pressure: a hog over memory.high (no swap) is throttled, which is a memory stall. A hog
    // alone stalls only while it charges its last pages, a second or two: on a loaded TCG host
    // that stall can fall between the trigger's windows. A burst beside it charges and frees
    // again and again, so every window has its stall until the trigger fires.
    let started = Instant::now();
    let _hog = ctx.spawn(
        &path,
        WorkloadKind::HogHold {
            mib: 32,
            step_mib: 4,
        },
    )?;
    let _burst = ctx.spawn(
        &path,
        WorkloadKind::Burst {
            mib: 8,
            hold_ms: 50,
            pause_ms: 50,
        },
    )?;
    let deadline = started + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let p = cg.memory_pressure()?;
            fail!("PSI trigger did not fire within 20 s of pressure; memory.pressure: {p:?}");
        }
        let mut fired = None;
        for ev in w.wait(Some(left))?.iter() {
            if ev.token == tok {
                match &ev.kind {
                    EventKind::Pressure(p) => fired = Some(*p),
                    EventKind::Failed(f) => fail!("PSI source failed: {f}"),
                    EventKind::Gone => fail!("PSI source reported Gone"),
                    _ => {}
                }
            }
        }
        if let Some(p) = fired {
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            ctx.note(format!("PSI trigger fired {ms:.0} ms after pressure began"));
            let some = p.map(|p| p.some.total_us).unwrap_or(0);
            return Ok(Outcome::Pass(format!(
                "quiet for {quiet:?} idle; fired {ms:.0} ms into pressure (some total {some} us)"
            )));
        }
    }
}
