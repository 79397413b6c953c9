//! The machine-wide section of `docs/benchmarks.md` (issue 9): the whole guest out of memory,
//! no swap, no limits, the kernel alone against earlyoom, oomd and oomkit (the guest side is
//! `integration/src/bench_machine.rs`). `cargo xtask bench --only machine` runs just these
//! cases and replaces just this section in the existing document, so a short run on a shared
//! machine does not throw away the other sections' last full run.

use std::fmt::Write as _;

use serde_json::Value;

use crate::bench::{Stat, VmResult, fmt_ms, stat};
use crate::repo_root;
use crate::util::{self, Error, Result};

/// The heading this module owns; `splice` replaces from it to the next `## ` heading.
pub const HEADING: &str = "## Machine-wide: the whole guest out of memory (no swap, no limits)";

const HANDLERS: [&str; 4] = ["kernel", "earlyoom", "oomd", "oomkit"];
const SCENARIOS: [(&str, &str); 2] = [("priority", "priority"), ("forkstorm", "fork storm")];

/// `--only`: write the section into the existing document.
pub fn cmd_only(runs: usize, vm: &VmResult) -> Result<bool> {
    let path = repo_root().join("docs").join("benchmarks.md");
    let doc = util::read_to_string(&path).unwrap_or_default();
    util::write(&path, splice(&doc, &render(runs, vm)))?;
    println!("xtask: replaced the machine-wide section of docs/benchmarks.md");
    Ok(true)
}

/// The last `--only` run's results (`.cache/oomkit-vm/bench-notes-only.json`), to re-render
/// the section without booting a VM (`--only machine --no-vm`).
pub fn load_notes() -> Result<VmResult> {
    let path = crate::cache_dir().join("bench-notes-only.json");
    let text = util::read_to_string(&path)?;
    let j: Value =
        serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    let list = |k: &str| j[k].as_array().cloned().unwrap_or_default();
    let str_of = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let (Some(kernel), Some(release)) = (j["kernel"].as_str(), j["release"].as_str()) else {
        return Err(Error::msg(format!(
            "{} predates the kernel and release fields: run `--only` with the VM once",
            path.display()
        )));
    };
    Ok(VmResult {
        release: release.to_string(),
        kernel: kernel.to_string(),
        e2e: list("e2e"),
        machine: list("machine"),
        footprint: list("footprint"),
        rest: list("rest"),
        scale: list("scale"),
        unavailable: list("unavailable"),
        results: list("results")
            .iter()
            .map(|r| (str_of(&r[0]), str_of(&r[1]), str_of(&r[2])))
            .collect(),
        peers: list("peers")
            .iter()
            .map(|p| (str_of(&p[0]), str_of(&p[1])))
            .collect(),
        peer_problems: Vec::new(),
        measured: str_of(&j["measured"]),
        memory_mib: j["memory_mib"]
            .as_u64()
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or(0),
    })
}

/// `doc` with this module's section replaced by `section` (or inserted before the analysis
/// heading, or appended, if it is not there yet).
pub fn splice(doc: &str, section: &str) -> String {
    if let Some(at) = doc.find(HEADING) {
        let rest = &doc[at + HEADING.len()..];
        let end = rest
            .find("\n## ")
            .map_or(doc.len(), |e| at + HEADING.len() + e + 1);
        return format!("{}{section}{}", &doc[..at], &doc[end..]);
    }
    if let Some(at) = doc.find("## Where oomkit is not") {
        return format!("{}{section}{}", &doc[..at], &doc[at..]);
    }
    format!("{doc}\n{section}")
}

fn runs_of<'a>(v: &'a [Value], sc: &str, h: &str) -> Vec<&'a Value> {
    v.iter()
        .filter(|r| r["scenario"] == sc && r["handler"] == h)
        .collect()
}

fn mib(s: &Stat) -> String {
    s.med.map_or("–".into(), |m| format!("{:.1}", m / 1024.0))
}

/// The section: one table per scenario, then the comparison with earlyoom in words.
pub fn render(runs: usize, vm: &VmResult) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{HEADING}\n");
    let total = vm
        .machine
        .first()
        .and_then(|r| r["mem_total_mib"].as_u64())
        .unwrap_or(u64::from(vm.memory_mib));
    let _ = writeln!(
        s,
        "Measured {} with `cargo xtask bench --runs {runs}` (kernel {}, `{}`; qemu TCG, 1 vCPU, \
         MemTotal {total} MiB, no swap, no `memory.high`/`memory.max` anywhere). **{runs} runs \
         per handler only**: the host (2 cores) was shared with other engineers' builds and VMs \
         during the run, so read these as indications, not as settled medians.\n",
        vm.measured, vm.kernel, vm.release
    );
    let _ = writeln!(
        s,
        "* **priority**: `service` holds half of `MemAvailable` (must survive), `session` runs a \
         50 ms heartbeat (must survive), `batch` grows at 2 % of MemTotal per second (the right \
         victim).\n\
         * **fork storm**: `build` forks 20 jobs that together want 1.3 × `MemAvailable` (the \
         right victims: ideally the whole build in one action) beside `session` and its \
         heartbeat.\n\n\
         Handlers as an operator would set them up for a whole machine: earlyoom with its \
         default thresholds, `--prefer '^(batch|build)$' --avoid '^(service|session|…)$'`; oomd \
         `--interval 1` with `pressure_above` (memory, 10 %) on `/` or on the workload tree → \
         `kill_by_memory_size_or_growth` on the tree's children, `oomd_prefer`/`oomd_avoid` \
         xattrs (oomd has no available-memory detector; what it does with pressure alone is the \
         result); oomkit with the default `[signals.machine]`, priority-kill, service and session \
         protected, batch/build at −100 (process granularity for priority, cgroup granularity \
         for the fork storm). Every run starts with the machine at rest: once `some avg10` of \
         `/proc/pressure/memory` is under 1 %, so no handler sees the previous run's pressure.\n\n\
         Columns: *right victim* — the batch/build died and the service and session lived; \
         *start → kill* and *pressure → kill* — ms from the workload's start and from the first \
         rise of `some total` in `/proc/pressure/memory` to the first kill (handler log line, \
         kernel `oom_kill`, or first death), median [min–max] (a handler that kills before any \
         memory stall has no pressure → kill: counted as \"killed before any stall\"); *kernel kills* — sum of \
         `/proc/vmstat oom_kill` rises over the runs; *heartbeat worst* — the protected 50 ms \
         heartbeat's largest lateness from the workload's start to the end of the run (from its \
         per-second reports), ms, worst run (each run's in brackets); *heartbeat near the kill* \
         — the largest lateness of a beat whose stall began from 1 s before to 2 s after the \
         first kill (the handler's last decision, the victim's exit and reaping), ms, worst run (each run's in brackets; 0: no beat 2 ms late), which tells a stall around \
         the handler's action from one elsewhere in the run (the kernel-alone row shows what \
         the guest and the shared host cause with no handler at all); *heartbeat worst, guest \
         running* — the same worst stall less the time in it when a `SCHED_FIFO` probe thread \
         beside the heartbeat (waking every 5 ms) was late too: then nothing in the guest ran \
         on time (under TCG the host had descheduled the VM's vCPU thread, or the guest's \
         kernel had interrupts off), so no handler could have caused or prevented that part; \
         what is left is the stall the guest's own scheduling made (handlers, workloads), ms, \
         worst run (each run's in brackets); *RSS / HWM* — the handler's VmRSS and \
         VmHWM at the end of a run, MiB, median; *idle wakeups/s* — voluntary context switches \
         per second of all the handler's threads over 10 s with the machine at rest before the \
         first run's workload (same measure for every handler).\n"
    );
    for (sc, title) in SCENARIOS {
        let _ = writeln!(s, "### Machine-wide {title}\n");
        let _ = writeln!(
            s,
            "| handler | runs | right victim | start → kill | pressure → kill | kernel kills | handler kill actions | heartbeat worst (ms) | heartbeat near the kill (ms) | heartbeat worst, guest running (ms) | RSS / HWM (MiB) | idle wakeups/s |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for h in HANDLERS {
            let rs = runs_of(&vm.machine, sc, h);
            if rs.is_empty() {
                let name = format!("bench_machine_{sc}_{h}");
                let why = vm
                    .results
                    .iter()
                    .find(|(n, _, _)| *n == name)
                    .map_or_else(|| "no result".into(), |(_, st, d)| format!("{st}: {d}"));
                let _ = writeln!(s, "| {h} | 0 | could not run: {why} | | | | | | | | | |");
                continue;
            }
            let n = rs.len();
            let right = rs.iter().filter(|r| r["right_victim"] == true).count();
            let victims: Vec<String> = rs
                .iter()
                .map(|r| r["victim"].as_str().unwrap_or("?").to_string())
                .collect();
            let kk: u64 = rs
                .iter()
                .map(|r| r["kernel_oom_kills"].as_u64().unwrap_or(0))
                .sum();
            let hk = if h == "kernel" {
                "–".to_string()
            } else {
                rs.iter()
                    .map(|r| r["handler_kills"].as_u64().unwrap_or(0).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let hb = stat(&rs, "hb_worst_ms");
            let hb_text = if hb.n == 0 {
                "heartbeat died".to_string()
            } else if hb.n < n {
                format!("{:.0} ({} of {n} runs: heartbeat died)", hb.max, n - hb.n)
            } else {
                format!("{:.0} ({})", hb.max, per_run(&rs, "hb_worst_ms"))
            };
            let near = stat(&rs, "hb_near_kill_ms");
            let near_text = if near.n == 0 {
                "–".to_string()
            } else {
                format!("{:.0} ({})", near.max, per_run(&rs, "hb_near_kill_ms"))
            };
            let guest = stat(&rs, "hb_guest_worst_ms");
            let guest_text = if guest.n == 0 {
                "–".to_string()
            } else {
                format!("{:.0} ({})", guest.max, per_run(&rs, "hb_guest_worst_ms"))
            };
            let (rss, hwm) = (stat(&rs, "rss_kib"), stat(&rs, "hwm_kib"));
            let mem = if h == "kernel" {
                "–".to_string()
            } else {
                format!("{} / {}", mib(&rss), mib(&hwm))
            };
            let early = rs.iter().filter(|r| r["kill_before_stall"] == true).count();
            let mut pressure = fmt_ms(&stat(&rs, "pressure_to_kill_ms"), n);
            if early > 0 {
                pressure = format!("{pressure}; killed before any stall in {early}/{n}");
            }
            let idle = rs
                .iter()
                .find_map(|r| r["idle_wakeups_per_s"].as_f64())
                .map_or("–".into(), |v| format!("{v:.2}"));
            let _ = writeln!(
                s,
                "| {h} | {n} | {right}/{n} ({}) | {} | {} | {kk} | {hk} | {hb_text} | {near_text} | {guest_text} | {mem} | {idle} |",
                victims.join(", "),
                fmt_ms(&stat(&rs, "start_to_kill_ms"), n),
                pressure,
            );
        }
        let _ = writeln!(s);
    }
    let peers = peer_facts(&vm.machine);
    if !peers.is_empty() {
        let _ = writeln!(s, "What the peers did:\n");
        for p in peers {
            let _ = writeln!(s, "* {p}");
        }
        let _ = writeln!(s);
    }
    let behind = behind(&vm.machine);
    let _ = writeln!(s, "### Where oomkit is behind in the machine-wide runs\n");
    if behind.is_empty() {
        let _ = writeln!(
            s,
            "Nowhere in this run: oomkit matched or beat earlyoom on every column above.\n"
        );
    } else {
        for b in behind {
            let _ = writeln!(s, "* {b}");
        }
        let _ = writeln!(s);
    }
    s
}

/// Facts about the peers worth a sentence: a handler that never acted (the kernel did the
/// killing), or that let the kernel kill beside it.
fn peer_facts(all: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for (sc, title) in SCENARIOS {
        for h in ["earlyoom", "oomd"] {
            let rs = runs_of(all, sc, h);
            if rs.is_empty() {
                continue;
            }
            let acted = rs
                .iter()
                .filter(|r| r["handler_kills"].as_u64().unwrap_or(0) > 0)
                .count();
            let kk: u64 = rs
                .iter()
                .map(|r| r["kernel_oom_kills"].as_u64().unwrap_or(0))
                .sum();
            if acted == 0 {
                out.push(format!(
                    "{title}: {h} never acted in {} run(s); the kernel's OOM killer killed {kk} \
                     time(s) instead.",
                    rs.len()
                ));
            } else if kk > 0 {
                out.push(format!(
                    "{title}: {h} acted in {acted}/{} run(s), and the kernel's OOM killer still \
                     killed {kk} time(s) beside it.",
                    rs.len()
                ));
            }
        }
    }
    out
}

/// Plain sentences for every column where oomkit did worse than earlyoom (the bar) or
/// Each run's value of `key`, rounded to ms, in run order ("–" where a run has none).
fn per_run(rs: &[&Value], key: &str) -> String {
    rs.iter()
        .map(|r| r[key].as_f64().map_or("–".into(), |v| format!("{v:.0}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// missed an absolute target (right victim every run, 0 kernel kills, heartbeat ≤ 20 ms).
fn behind(all: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for (sc, title) in SCENARIOS {
        let o = runs_of(all, sc, "oomkit");
        let e = runs_of(all, sc, "earlyoom");
        if o.is_empty() {
            out.push(format!("{title}: oomkit produced no result."));
            continue;
        }
        let right = |rs: &[&Value]| rs.iter().filter(|r| r["right_victim"] == true).count();
        let kk = |rs: &[&Value]| -> u64 {
            rs.iter()
                .map(|r| r["kernel_oom_kills"].as_u64().unwrap_or(0))
                .sum()
        };
        if right(&o) < o.len() {
            out.push(format!(
                "{title}: oomkit picked the right victim in only {}/{} runs.",
                right(&o),
                o.len()
            ));
        }
        if kk(&o) > 0 {
            out.push(format!(
                "{title}: the kernel OOM killer still fired {} time(s) with oomkit running.",
                kk(&o)
            ));
        }
        let ohb = stat(&o, "hb_worst_ms");
        let ehb = stat(&e, "hb_worst_ms");
        if ohb.n < o.len() {
            out.push(format!(
                "{title}: the protected heartbeat died in {} run(s) with oomkit.",
                o.len() - ohb.n
            ));
        }
        if ohb.n > 0 && ohb.max > 20.0 {
            out.push(format!(
                "{title}: oomkit's worst heartbeat stall is {:.0} ms, over the 20 ms target.",
                ohb.max
            ));
        }
        if ohb.n > 0 && ehb.n > 0 && ohb.max > ehb.max {
            out.push(format!(
                "{title}: worst heartbeat stall {:.0} ms with oomkit against {:.0} ms with \
                 earlyoom.",
                ohb.max, ehb.max
            ));
        }
        let (og, eg) = (stat(&o, "hb_guest_worst_ms"), stat(&e, "hb_guest_worst_ms"));
        if og.n > 0 && og.max > 20.0 {
            out.push(format!(
                "{title}: oomkit's worst heartbeat stall with the guest running is {:.0} ms, \
                 over the 20 ms target.",
                og.max
            ));
        }
        if og.n > 0 && eg.n > 0 && og.max > eg.max {
            out.push(format!(
                "{title}: worst heartbeat stall with the guest running {:.0} ms with oomkit \
                 against {:.0} ms with earlyoom.",
                og.max, eg.max
            ));
        }
        if !e.is_empty() && right(&e) == e.len() && right(&o) < o.len() {
            out.push(format!(
                "{title}: earlyoom picked the right victim in every run, oomkit did not."
            ));
        }
        for (key, what) in [
            ("pressure_to_kill_ms", "pressure → kill"),
            ("start_to_kill_ms", "start → kill"),
        ] {
            if let (Some(om), Some(em)) = (stat(&o, key).med, stat(&e, key).med) {
                if om > em {
                    out.push(format!(
                        "{title}: {what} median {om:.0} ms with oomkit against {em:.0} ms with \
                         earlyoom (×{:.2}).",
                        if em > 0.0 { om / em } else { f64::INFINITY }
                    ));
                }
            }
        }
        if let (Some(om), Some(em)) = (stat(&o, "rss_kib").med, stat(&e, "rss_kib").med) {
            if om > em {
                out.push(format!(
                    "{title}: oomkit's RSS is {:.1} MiB against earlyoom's {:.1} MiB.",
                    om / 1024.0,
                    em / 1024.0
                ));
            }
        }
        let idle = |rs: &[&Value]| rs.iter().find_map(|r| r["idle_wakeups_per_s"].as_f64());
        if let (Some(oi), Some(ei)) = (idle(&o), idle(&e)) {
            if oi > ei {
                out.push(format!(
                    "{title}: oomkit wakes {oi:.2} times per second at rest against earlyoom's \
                     {ei:.2}."
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_its_section() {
        let doc = format!("# t\n\n## A\na\n\n{HEADING}\nold\n\n## Where oomkit is not x\nz\n");
        let out = splice(&doc, &format!("{HEADING}\nnew\n\n"));
        assert_eq!(
            out,
            format!("# t\n\n## A\na\n\n{HEADING}\nnew\n\n## Where oomkit is not x\nz\n")
        );
    }

    #[test]
    fn splice_inserts_before_the_analysis_or_appends() {
        let sec = format!("{HEADING}\nnew\n\n");
        let out = splice("# t\n\n## Where oomkit is not x\n", &sec);
        assert_eq!(out, format!("# t\n\n{sec}## Where oomkit is not x\n"));
        let out = splice("# t\n", &sec);
        assert_eq!(out, format!("# t\n\n{sec}"));
    }

    #[test]
    fn behind_names_each_shortfall_against_earlyoom() {
        let run = |h: &str, right: bool, kk: u64, hb: f64, p: f64| {
            serde_json::json!({"scenario": "priority", "handler": h, "right_victim": right,
                "kernel_oom_kills": kk, "hb_worst_ms": hb, "hb_guest_worst_ms": hb - 1.0,
                "pressure_to_kill_ms": p,
                "start_to_kill_ms": p, "rss_kib": 1024.0, "idle_wakeups_per_s": 1.0})
        };
        let good = vec![
            run("oomkit", true, 0, 5.0, 100.0),
            run("earlyoom", true, 0, 9.0, 200.0),
        ];
        let b = behind(&good);
        assert!(b.iter().all(|l| !l.starts_with("priority")), "{b:?}");
        let bad = vec![
            run("oomkit", false, 1, 30.0, 300.0),
            run("earlyoom", true, 0, 9.0, 200.0),
        ];
        let b = behind(&bad).join("\n");
        for want in [
            "right victim",
            "kernel OOM killer",
            "20 ms",
            "earlyoom",
            "×1.50",
            "with the guest running is 29 ms",
        ] {
            assert!(b.contains(want), "{want} missing from {b}");
        }
    }
}

#[cfg(test)]
mod peer_tests {
    use super::*;

    #[test]
    fn a_peer_that_never_acted_is_named() {
        let r = serde_json::json!({"scenario": "priority", "handler": "oomd", "handler_kills": 0,
            "kernel_oom_kills": 1});
        let f = peer_facts(&[r]);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("oomd never acted"), "{f:?}");
    }
}
