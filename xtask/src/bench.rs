//! `cargo xtask bench`: everything issue 5 measures, in one run, written to
//! `docs/benchmarks.md` with a latency plot (`docs/bench-latency.svg`, drawn here).
//!
//! 1. Micro-benchmarks (criterion, short runs: this machine has 2 cores shared with others):
//!    parsers on real fixtures, a one-cgroup snapshot, the watcher's cost per event against the
//!    number of sources, priority-kill selection over 100 … 10,000 cgroups.
//! 2. One VM (`oomkit.mode=bench`, one kernel, default 6.1) with the peers packed in: the
//!    footprint of each handler over 10,000 cgroups, and N runs of the limit and priority
//!    scenarios with the kernel alone, earlyoom, oomd and oomkit (see
//!    `integration/src/bench.rs` for what is measured and how), and the machine-wide priority
//!    and fork-storm scenarios with no limits at all (`integration/src/bench_machine.rs`,
//!    rendered by `bench_machine.rs`; `--only machine` runs just those).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;
use serde_json::Value;

use crate::util::{self, Error, Result};
use crate::{
    VmOptions, bench_machine, bench_peers, bench_scale, guest, host, kernels, qemu, repo_root,
};

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// The kernel to boot (as for `vmtest --kernel`).
    #[arg(long, short = 'k', default_value = "6.1")]
    kernel: String,
    /// Runs per scenario and handler.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Skip the criterion micro-benchmarks (reuse the last results in target/criterion).
    #[arg(long)]
    no_micro: bool,
    /// Skip the VM (footprint and end-to-end); the report keeps only the micro-benchmarks.
    /// With `--only`: re-render the machine-wide section from the last `--only` run's notes.
    #[arg(long)]
    no_vm: bool,
    /// Guest memory in MiB (10,000 memory cgroups need room of their own).
    #[arg(long, default_value_t = 1024)]
    memory_mib: u32,
    /// Guest memory in MiB of the second VM that runs the 30,000-cgroup point of
    /// `bench_scale` alone: 30,000 memory cgroups cost the kernel more than a 1 GiB guest
    /// holds beside oomkit (it panicked there, "no killable processes"). 0: no second VM
    /// (the scale case then stops at 10,000).
    #[arg(long, default_value_t = 3072)]
    scale_memory_mib: u32,
    /// Stream the guest's console.
    #[arg(long, short = 'v')]
    verbose: bool,
    /// Accelerator.
    #[arg(long, default_value = "auto")]
    accel: qemu::AccelChoice,
    /// Do not install missing host tools.
    #[arg(long)]
    no_install: bool,
    /// Only the guest cases whose name contains this. `machine` (the machine-wide scenarios)
    /// skips the micro-benchmarks and replaces only the machine-wide section of the existing
    /// docs/benchmarks.md (the other sections keep their last full run); any other value is for
    /// trying one case (the report then lacks the others' tables). Several names separated by
    /// commas select every case that contains one of them; `footprint,rest,scale` (any of these
    /// three, alone or together) replaces only the footprint, at-rest and cost-per-cgroup sections
    /// of the existing docs/benchmarks.md (and the scale plot), keeping the rest; `micro` runs
    /// only the criterion micro-benchmarks (no VM) and replaces only their section.
    #[arg(long)]
    only: Option<String>,
}

const MICRO_ARGS: [&str; 4] = ["--warm-up-time", "1", "--measurement-time", "2"];

pub fn cmd_bench(args: &BenchArgs) -> Result<bool> {
    if args
        .only
        .as_deref()
        .is_some_and(|o| o.starts_with("machine"))
    {
        let vm = if args.no_vm {
            bench_machine::load_notes()?
        } else {
            run_vm(args)?
        };
        return bench_machine::cmd_only(args.runs, &vm);
    }
    let mut micro = Vec::new();
    if args.only.as_deref().map(str::trim) == Some("micro") {
        if !args.no_micro {
            run_micro()?;
        }
        collect_micro(&criterion_dir(), &mut micro)?;
        let path = repo_root().join("docs").join("benchmarks.md");
        let doc = util::read_to_string(&path).unwrap_or_default();
        let fresh = render(args, &micro, None);
        util::write(&path, splice_micro(&doc, &fresh))?;
        println!("xtask: replaced the micro-benchmark section of docs/benchmarks.md");
        return Ok(true);
    }
    if footprint_only(args.only.as_deref()) {
        // The host selection column comes from criterion's `select` bench.
        if !args.no_micro {
            run_select_micro()?;
        }
        collect_micro(&criterion_dir(), &mut micro)?;
        let vm = run_vm(args)?;
        let path = repo_root().join("docs").join("benchmarks.md");
        let doc = util::read_to_string(&path).unwrap_or_default();
        let fresh = render(args, &micro, Some(&vm));
        util::write(&path, splice_footprint(&doc, &fresh))?;
        util::write(
            &repo_root().join("docs").join("bench-scale.svg"),
            bench_scale::svg(&vm.scale),
        )?;
        println!(
            "xtask: replaced the footprint, at-rest and cost-per-cgroup sections of docs/benchmarks.md"
        );
        return Ok(true);
    }
    if !args.no_micro {
        run_micro()?;
    }
    collect_micro(&criterion_dir(), &mut micro)?;
    let mut vm = None;
    if !args.no_vm {
        vm = Some(run_vm(args)?);
    }
    let report = render(args, &micro, vm.as_ref());
    let docs = repo_root().join("docs");
    util::create_dir_all(&docs)?;
    util::write(&docs.join("benchmarks.md"), report)?;
    if let Some(vm) = &vm {
        util::write(&docs.join("bench-latency.svg"), svg(&vm.e2e))?;
        util::write(&docs.join("bench-scale.svg"), bench_scale::svg(&vm.scale))?;
    }
    println!("xtask: wrote docs/benchmarks.md");
    Ok(true)
}

/// Whether `--only` names just the footprint cases (`footprint`, `rest`, `scale`, separated by
/// commas), whose sections are spliced into the existing report.
fn footprint_only(only: Option<&str>) -> bool {
    only.is_some_and(|o| {
        o.split(',')
            .all(|p| matches!(p.trim(), "footprint" | "rest" | "scale"))
    })
}

/// The first heading of the footprint sections, and the heading that follows them.
const FOOTPRINT_FROM: &str = "## Footprint with 10,000 cgroups";
const FOOTPRINT_TO: &str = "\n## Notes on this run";
const MICRO_HEADING: &str = "\n## Micro-benchmarks";

/// `doc` with its footprint sections (from [`FOOTPRINT_FROM`] up to the hand-written notes, or
/// the micro-benchmarks) replaced by those of `fresh`; `fresh` whole when `doc` has none.
fn splice_footprint(doc: &str, fresh: &str) -> String {
    let section = |t: &str| -> Option<(usize, usize)> {
        let at = t.find(FOOTPRINT_FROM)?;
        let rest = &t[at..];
        let end = rest
            .find(FOOTPRINT_TO)
            .or_else(|| rest.find(MICRO_HEADING))
            .map_or(t.len(), |e| at + e + 1);
        Some((at, end))
    };
    splice(doc, fresh, section).unwrap_or_else(|| fresh.to_string())
}

/// `doc` with its micro-benchmark section (from its heading to the next `## ` heading) taken
/// from `fresh`; `doc` unchanged if either lacks one.
fn splice_micro(doc: &str, fresh: &str) -> String {
    let section = |t: &str| -> Option<(usize, usize)> {
        let at = t.find(MICRO_HEADING)? + 1;
        let end = t[at + 1..]
            .find("\n## ")
            .map_or(t.len(), |e| at + 1 + e + 1);
        Some((at, end))
    };
    splice(doc, fresh, section).unwrap_or_else(|| doc.to_string())
}

/// `doc` with the byte range `section` finds in it replaced by the range it finds in `fresh`
/// (`None`: either has none).
fn splice(
    doc: &str,
    fresh: &str,
    section: impl Fn(&str) -> Option<(usize, usize)>,
) -> Option<String> {
    let ((a, b), (c, d)) = (section(doc)?, section(fresh)?);
    Some(format!("{}{}{}", &doc[..a], &fresh[c..d], &doc[b..]))
}

fn run_select_micro() -> Result<()> {
    let mut cmd = Command::new(util::cargo());
    cmd.args(["bench", "-p", "oomkit-handlers", "--bench", "select", "--"])
        .args(MICRO_ARGS)
        .arg("select_kernel_host/cgroup")
        .current_dir(repo_root());
    println!("==> cargo bench -p oomkit-handlers --bench select (select_kernel_host/cgroup)");
    if !util::run_status(&mut cmd)? {
        return Err(Error::msg(
            "cargo bench -p oomkit-handlers --bench select failed",
        ));
    }
    Ok(())
}

fn criterion_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("criterion")
}

fn run_micro() -> Result<()> {
    // `parse` measures the raw parsers, which the SDK exports only with its `parsers` feature.
    for (pkg, features, benches) in [
        ("oomkit", "parsers", vec!["parse", "snapshot", "watcher"]),
        ("oomkit-handlers", "", vec!["select"]),
    ] {
        let mut cmd = Command::new(util::cargo());
        cmd.args(["bench", "-p", pkg]);
        if !features.is_empty() {
            cmd.args(["--features", features]);
        }
        for b in &benches {
            cmd.args(["--bench", b]);
        }
        cmd.arg("--").args(MICRO_ARGS).current_dir(repo_root());
        println!("==> cargo bench -p {pkg} ({})", benches.join(", "));
        if !util::run_status(&mut cmd)? {
            return Err(Error::msg(format!("cargo bench -p {pkg} failed")));
        }
    }
    Ok(())
}

/// One criterion result: id, median and its 95 % interval, in nanoseconds.
struct Micro {
    id: String,
    median: f64,
    lo: f64,
    hi: f64,
}

fn collect_micro(dir: &Path, out: &mut Vec<Micro>) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == "new") {
            let (Ok(b), Ok(est)) = (
                util::read_to_string(&p.join("benchmark.json")),
                util::read_to_string(&p.join("estimates.json")),
            ) else {
                continue;
            };
            let (Ok(b), Ok(est)) = (
                serde_json::from_str::<Value>(&b),
                serde_json::from_str::<Value>(&est),
            ) else {
                continue;
            };
            let m = &est["median"];
            if let (Some(id), Some(med)) = (b["full_id"].as_str(), m["point_estimate"].as_f64()) {
                out.push(Micro {
                    id: id.to_string(),
                    median: med,
                    lo: m["confidence_interval"]["lower_bound"]
                        .as_f64()
                        .unwrap_or(med),
                    hi: m["confidence_interval"]["upper_bound"]
                        .as_f64()
                        .unwrap_or(med),
                });
            }
        } else if p.is_dir() && p.file_name().is_some_and(|n| n != "report") {
            collect_micro(&p, out)?;
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(())
}

pub(crate) struct VmResult {
    pub(crate) release: String,
    pub(crate) kernel: String,
    pub(crate) e2e: Vec<Value>,
    /// The machine-wide scenarios' runs (`kind: machine`).
    pub(crate) machine: Vec<Value>,
    pub(crate) footprint: Vec<Value>,
    /// `bench_rest` and `bench_scale` (see `bench_scale.rs`).
    pub(crate) rest: Vec<Value>,
    pub(crate) scale: Vec<Value>,
    pub(crate) unavailable: Vec<Value>,
    pub(crate) results: Vec<(String, String, String)>,
    pub(crate) peers: Vec<(String, String)>,
    pub(crate) peer_problems: Vec<String>,
    pub(crate) memory_mib: u32,
    /// When the VM ran (UTC).
    pub(crate) measured: String,
}

fn run_vm(args: &BenchArgs) -> Result<VmResult> {
    host::ensure_tools(args.no_install)?;
    let pins = kernels::load_pins()?;
    let selected = kernels::select(&pins, std::slice::from_ref(&args.kernel))?;
    let Some(&first) = selected.first() else {
        return Err(Error::msg("no kernel selected"));
    };
    let images = kernels::fetch_all(&pins, &[first])?;
    let peers = bench_peers::prepare()?;
    for p in &peers.problems {
        println!("xtask: peer problem: {p}");
    }
    let initrd = guest::build_initramfs_at("initramfs-bench", Some(&peers.overlay))?;
    let accel = qemu::resolve_accel(args.accel, &images[0], &initrd, args.verbose);
    let opts = VmOptions {
        verbose: args.verbose,
        jobs: Some(1),
        smp: 1,
        memory_mib: args.memory_mib,
        accel: args.accel,
        cpu: qemu::DEFAULT_CPU.to_string(),
        tcg_thread: qemu::TcgThread::Multi,
        no_install: args.no_install,
    };
    let mut cmdline = vec![
        "oomkit.mode=bench".to_string(),
        format!("oomkit.runs={}", args.runs),
    ];
    if let Some(f) = &args.only {
        cmdline.push(format!("oomkit.filter={f}"));
    }
    // The 30,000 point of the scale case runs in a VM of its own, with more memory, or not at
    // all (`--scale-memory-mib 0`): never in this VM, whose 1 GiB it does not fit.
    let scale = scale_selected(args.only.as_deref());
    let big = scale && args.scale_memory_mib > 0;
    if scale {
        cmdline.push(format!("oomkit.scale={}", SCALE_SMALL));
    }
    let runs = qemu::run_matrix(&images, &initrd, &cmdline, &opts, accel, false)?;
    let Some(run) = runs.into_iter().next() else {
        return Err(Error::msg("the bench VM reported nothing"));
    };
    let mut v = VmResult {
        release: run.guest_release.clone().unwrap_or_default(),
        kernel: format!("{} ({})", run.kernel.name, run.kernel.version),
        e2e: Vec::new(),
        machine: Vec::new(),
        footprint: Vec::new(),
        rest: Vec::new(),
        scale: Vec::new(),
        unavailable: Vec::new(),
        results: run
            .results
            .iter()
            .map(|r| (r.name.clone(), format!("{:?}", r.status), r.detail.clone()))
            .collect(),
        peers: peers.versions,
        peer_problems: peers.problems,
        memory_mib: args.memory_mib,
        measured: today(),
    };
    collect_notes(&run, &mut v);
    if big {
        let cmdline = vec![
            "oomkit.mode=bench".to_string(),
            "oomkit.runs=1".to_string(),
            "oomkit.filter=bench_scale".to_string(),
            format!("oomkit.scale={SCALE_BIG}"),
        ];
        let opts = VmOptions {
            memory_mib: args.scale_memory_mib,
            ..opts
        };
        let runs = qemu::run_matrix(&images, &initrd, &cmdline, &opts, accel, false)?;
        for r in &runs {
            v.results.extend(r.results.iter().map(|x| {
                (
                    format!(
                        "{} ({SCALE_BIG} cgroups, {} MiB guest)",
                        x.name, args.scale_memory_mib
                    ),
                    format!("{:?}", x.status),
                    x.detail.clone(),
                )
            }));
            collect_notes(r, &mut v);
            if let Some(p) = &r.problem {
                println!("xtask: the {SCALE_BIG}-cgroup VM had a problem: {p}");
            }
        }
    }
    util::write(
        &crate::cache_dir().join(if args.only.is_some() {
            "bench-notes-only.json"
        } else {
            "bench-notes.json"
        }),
        serde_json::to_string_pretty(&serde_json::json!({
            "e2e": v.e2e, "footprint": v.footprint, "rest": v.rest, "scale": v.scale,
            "unavailable": v.unavailable,
            "machine": v.machine, "kernel": v.kernel, "release": v.release,
            "memory_mib": v.memory_mib, "measured": v.measured, "results": v.results, "peers": v.peers,
        }))
        .unwrap_or_default(),
    )?;
    if let Some(p) = &run.problem {
        println!("xtask: the bench VM had a problem: {p}");
    }
    Ok(v)
}

/// The scale points of the main bench VM, and the one run in a VM of its own.
const SCALE_SMALL: &str = "100,1000,10000";
const SCALE_BIG: &str = "30000";

/// Whether `--only` (comma-separated substrings of case names) selects `bench_scale`.
fn scale_selected(only: Option<&str>) -> bool {
    only.is_none_or(|o| o.split(',').any(|p| "bench_scale".contains(p.trim())))
}

/// Sorts a bench VM's JSON notes into `v` by their `kind`.
fn collect_notes(run: &crate::report::KernelRun, v: &mut VmResult) {
    for (_, text) in &run.notes {
        let Ok(j) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        match j["kind"].as_str() {
            Some("e2e") => v.e2e.push(j),
            Some("footprint") => v.footprint.push(j),
            Some("rest") => v.rest.push(j),
            Some("scale") => v.scale.push(j),
            Some("machine") => v.machine.push(j),
            Some("unavailable") => v.unavailable.push(j),
            _ => {}
        }
    }
}

const HANDLERS: [&str; 4] = ["kernel", "earlyoom", "oomd", "oomkit"];
const SCENARIOS: [&str; 2] = ["limit", "priority"];

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Median, min, max of a metric over the runs that have it, and how many do.
pub(crate) struct Stat {
    pub(crate) med: Option<f64>,
    min: f64,
    pub(crate) max: f64,
    pub(crate) n: usize,
}

pub(crate) fn stat(runs: &[&Value], key: &str) -> Stat {
    let mut v: Vec<f64> = runs.iter().filter_map(|r| r[key].as_f64()).collect();
    let n = v.len();
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Stat {
        med: median(&mut v),
        min,
        max,
        n,
    }
}

pub(crate) fn fmt_ms(s: &Stat, total: usize) -> String {
    match s.med {
        None => "–".to_string(),
        Some(m) => {
            let part = if s.n < total {
                format!(" ({}/{total} runs)", s.n)
            } else {
                String::new()
            };
            format!("{m:.0} [{:.0}–{:.0}]{part}", s.min, s.max)
        }
    }
}

fn runs_of<'a>(e2e: &'a [Value], sc: &str, h: &str) -> Vec<&'a Value> {
    e2e.iter()
        .filter(|r| r["scenario"] == sc && r["handler"] == h)
        .collect()
}

fn host_cpu() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into())
}

fn today() -> String {
    util::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn micro_get<'a>(m: &'a [Micro], id: &str) -> Option<&'a Micro> {
    m.iter().find(|x| x.id == id)
}

fn render(args: &BenchArgs, micro: &[Micro], vm: Option<&VmResult>) -> String {
    let mut s = String::new();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let _ = writeln!(s, "# oomkit benchmarks\n");
    let _ = writeln!(
        s,
        "Generated by `cargo xtask bench` on {} — host: {} ({} cores); VM: qemu TCG (no KVM on this \
         host), 1 vCPU, {} MiB, kernel {}. Every number below comes from that one run; rerun the \
         command to reproduce (`--kernel 6.12`, `--runs 10`, `--no-vm` for the micro-benchmarks \
         only).\n",
        today(),
        host_cpu(),
        cores,
        vm.map_or(args.memory_mib, |v| v.memory_mib),
        vm.map_or_else(
            || "(no VM run)".to_string(),
            |v| format!("{} (`{}`)", v.kernel, v.release)
        )
    );
    let _ = writeln!(
        s,
        "TCG emulates the guest CPU in software, several times slower than hardware, so absolute \
         guest latencies are pessimistic; the comparison between handlers is what counts (same \
         kernel, same VM, same workload, one after the other).\n"
    );

    // --- end to end
    if let Some(vm) = vm {
        let _ = writeln!(s, "## End to end: reaction to memory pressure\n");
        let _ = writeln!(
            s,
            "Two scenarios (`integration/src/bench.rs`), {} runs per handler. Times in ms from the \
             **onset of pressure** — the first `high` event on the limited cgroup for handlers \
             that use `memory.high` as their early warning (oomkit, oomd), the first `max` event \
             otherwise (the kernel alone and earlyoom get `memory.max` only: a `memory.high` \
             without a handler just stalls the job) — to the first kill signal (the handler's log \
             line, or the kernel's `oom_kill` event), to the victim's exit, and to its memory \
             being back. Median [min–max].\n",
            args.runs
        );
        let _ = writeln!(
            s,
            "* **limit**: `machine/app` (memory.max 96 MiB; memory.high 48 MiB with oomkit/oomd) \
             holds `app/main` (16 MiB, must survive) and `app/leak` (grows 2 MiB at a time: the \
             right victim).\n\
             * **priority**: `machine` (memory.max 112 MiB; memory.high 80 MiB with oomkit/oomd) \
             holds `service` (64 MiB, priority 100 / `--avoid` / `oomd_avoid`, must survive) and \
             `batch` (grows towards 72 MiB, priority −100 / `--prefer` / `oomd_prefer`: the \
             right victim). The kernel's OOM killer takes the largest: the service.\n"
        );
        let _ = writeln!(
            s,
            "Peers: {} — earlyoom `-r 3600 --prefer '^(batch|leak)$' --avoid \
             '^(service|main|oomkit-guest|oomkit)$'` (its documented way to protect a service); \
             oomd `--interval 1` (Debian's default) with one ruleset: `memory_above` \
             (memory.high) or `pressure_above` (memory, 10 %) on the limited cgroup → \
             `kill_by_memory_size_or_growth` on the limited cgroup's children, with \
             `trusted.oomd_prefer`/`oomd_avoid` xattrs; oomkit `priority-kill`, process \
             granularity, batch at −100 by glob, service at 100 by xattr.\n",
            vm.peers
                .iter()
                .map(|(p, v)| format!("{p} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for sc in SCENARIOS {
            let _ = writeln!(s, "### {sc}\n");
            let _ = writeln!(
                s,
                "| handler | runs | → signal | → victim exit | → memory back | right victim | kills sent by the handler | kernel OOM killer fired (first) | usage at kill / max (MiB) |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
            for h in HANDLERS {
                let rs = runs_of(&vm.e2e, sc, h);
                if rs.is_empty() {
                    let why = vm
                        .unavailable
                        .iter()
                        .find(|u| u["handler"] == h && u["scenario"] == sc)
                        .and_then(|u| u["why"].as_str())
                        .map(str::to_string)
                        .or_else(|| {
                            vm.results
                                .iter()
                                .find(|(n, _, _)| n == &format!("bench_e2e_{sc}_{h}"))
                                .map(|(_, st, d)| format!("{st}: {d}"))
                        })
                        .unwrap_or_else(|| "no result".into());
                    let _ = writeln!(s, "| {h} | 0 | could not run: {why} | | | | | | |");
                    continue;
                }
                let n = rs.len();
                let right = rs.iter().filter(|r| r["right_victim"] == true).count();
                let kfired = rs
                    .iter()
                    .filter(|r| r["kernel_oom_kills"].as_u64().unwrap_or(0) > 0)
                    .count();
                let kfirst = rs.iter().filter(|r| r["kernel_first"] == true).count();
                let hsent = if h == "kernel" {
                    "–".to_string()
                } else {
                    format!(
                        "{}/{n}",
                        rs.iter()
                            .filter(|r| !r["handler_signal_ms"].is_null())
                            .count()
                    )
                };
                let victims: BTreeMap<String, usize> =
                    rs.iter().fold(BTreeMap::new(), |mut m, r| {
                        *m.entry(r["victim"].as_str().unwrap_or("nobody").to_string())
                            .or_default() += 1;
                        m
                    });
                let vtext = victims
                    .iter()
                    .map(|(k, c)| format!("{k} ×{c}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let peak = stat(&rs, "peak_mib");
                let max = rs.first().and_then(|r| r["max_mib"].as_u64()).unwrap_or(0);
                let _ = writeln!(
                    s,
                    "| {h} | {n} | {} | {} | {} | {right}/{n} ({vtext}) | {hsent} | {kfired}/{n} ({kfirst}) | {} / {max} |",
                    fmt_ms(&stat(&rs, "signal_ms"), n),
                    fmt_ms(&stat(&rs, "exit_ms"), n),
                    fmt_ms(&stat(&rs, "back_ms"), n),
                    peak.med.map_or("–".into(), |m| format!("{m:.0}")),
                );
            }
            // Ratios against the best peer: the fastest (by median) of those that picked the
            // right victim in every run; and, for transparency, the fastest peer at all.
            let metric = |h: &str, k: &str| stat(&runs_of(&vm.e2e, sc, h), k).med;
            let all_right = |h: &str| {
                let rs = runs_of(&vm.e2e, sc, h);
                !rs.is_empty() && rs.iter().all(|r| r["right_victim"] == true)
            };
            let mut lines = Vec::new();
            for (key, label) in [
                ("signal_ms", "→ signal"),
                ("exit_ms", "→ exit"),
                ("back_ms", "→ memory back"),
            ] {
                let Some(om) = metric("oomkit", key) else {
                    continue;
                };
                let best = |right_only: bool| {
                    HANDLERS
                        .iter()
                        .filter(|h| **h != "oomkit" && (!right_only || all_right(h)))
                        .filter_map(|h| metric(h, key).map(|m| (*h, m)))
                        .min_by(|a, b| a.1.total_cmp(&b.1))
                };
                let ratio = |m: f64| if m > 0.0 { om / m } else { f64::INFINITY };
                let right = match best(true) {
                    Some((h, m)) => format!("×{:.2} vs {h} ({m:.0} ms)", ratio(m)),
                    None => "no peer picked the right victim in every run".to_string(),
                };
                let any = match best(false) {
                    Some((h, m)) => format!("×{:.2} vs {h} ({m:.0} ms)", ratio(m)),
                    None => "–".to_string(),
                };
                lines.push(format!("| {label} | {om:.0} | {right} | {any} |"));
            }
            if !lines.is_empty() {
                let _ = writeln!(
                    s,
                    "\nRatios of oomkit's median to the best peer's (lower is better for oomkit). \
                     The kernel's and earlyoom's onset is the wall itself (`memory.max`), so \
                     their times start later: read them with the usage at kill.\n"
                );
                let _ = writeln!(
                    s,
                    "| oomkit | ms | vs best peer with the right victim every run | vs fastest peer |"
                );
                let _ = writeln!(s, "|---|---|---|---|");
                for l in &lines {
                    let _ = writeln!(s, "{l}");
                }
                let _ = writeln!(s);
            }
        }
        let _ = writeln!(s, "![reaction latency](bench-latency.svg)\n");

        let _ = writeln!(s, "## Footprint with 10,000 cgroups\n");
        let _ = writeln!(
            s,
            "10,000 child cgroups (memory controller on) under one parent; each handler is \
             started on it alone, left to settle (fd count and RSS unchanged for 2 s), then \
             `/proc/PID/status` (VmRSS, VmHWM, VmLck), what its own cgroup is charged \
             (`memory.current`, and of it kernel memory) and the voluntary + involuntary context \
             switches of all its threads over 10 s of idleness. The guest's \
             `fs.inotify.max_user_watches` is raised to 1,048,576 first (its default in a 1 GiB \
             guest is below the 20,000 watches oomkit uses here: the directory and \
             `memory.events.local` of each cgroup; past the limit oomkit takes an fd per cgroup \
             instead).\n"
        );
        let _ = writeln!(
            s,
            "| handler | watches | VmRSS (MiB) | VmHWM (MiB) | VmLck (MiB) | its cgroup (MiB) | of it kernel (MiB) | fds | threads | wakeups/s idle | settle (s) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
        for h in ["oomkit", "earlyoom", "oomd"] {
            if let Some(f) = vm.footprint.iter().find(|f| f["handler"] == h) {
                let mib = |k: &str| f[k].as_f64().unwrap_or(0.0) / 1024.0;
                let watches = match h {
                    "oomkit" => "every cgroup's memory.events.local and directory (inotify)",
                    "earlyoom" => "/proc/meminfo only (no cgroups)",
                    _ => "a ruleset on the 10,000 children, polled every interval",
                };
                let cg = |k: &str| {
                    f[k].as_f64()
                        .map_or("–".into(), |v| format!("{:.1}", v / 1024.0))
                };
                let _ = writeln!(
                    s,
                    "| {h} | {watches} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |",
                    mib("rss_kib"),
                    mib("hwm_kib"),
                    mib("lck_kib"),
                    cg("cg_kib"),
                    cg("cg_kernel_kib"),
                    f["fds"],
                    f["threads"],
                    f["wakeups_per_s"],
                    f["settle_s"]
                );
            } else {
                let why = vm
                    .unavailable
                    .iter()
                    .find(|u| u["handler"] == h && u["scenario"] == "footprint")
                    .and_then(|u| u["why"].as_str())
                    .unwrap_or("no result");
                let _ = writeln!(s, "| {h} | could not run: {why} | | | | | | | | | |");
            }
        }
        let _ = writeln!(s);
        if !vm.peer_problems.is_empty() {
            let _ = writeln!(
                s,
                "Peer packaging problems: {}\n",
                vm.peer_problems.join("; ")
            );
        }
        s.push_str(&bench_scale::render(
            &vm.rest,
            &vm.scale,
            &vm.unavailable,
            &bench_scale::loadavg(),
            &|n| micro_get(micro, &format!("select_kernel_host/cgroup/{n}")).map(|m| m.median),
        ));
        let _ = writeln!(s, "Guest cases:\n");
        for (n, st, d) in &vm.results {
            let _ = writeln!(s, "* `{n}` {st}: {d}");
        }
        let _ = writeln!(s);
    }

    // --- micro
    let _ = writeln!(s, "## Micro-benchmarks (host, criterion)\n");
    let _ = writeln!(
        s,
        "`cargo bench -p oomkit --bench parse --bench snapshot --bench watcher` and `cargo bench \
         -p oomkit-handlers --bench select`, run with `--warm-up-time 1 --measurement-time 2` \
         (and 10 samples for selection): short runs on a shared 2-core machine, so read the \
         interval, not the last digit. The host's memory controller is cgroup v1, so cgroup \
         files are plain files in a temporary folder (`CgroupFs::from_dir_unchecked`): the SDK's \
         open/read/parse path is measured, not kernfs. Per event (`sdk/benches/watcher.rs`): \
         `runner_event` is the runner's own path (a file rewritten, untimed; `run_once` \
         timed); `watcher_event` is the fd-per-cgroup fallback with eventfds standing in for \
         kernfs fds, split into the stand-in's `signal`, the handler's `dispatch` and \
         `handle` (dispatch plus re-read), and `dispatch_and_reread`, all of it.\n"
    );
    let _ = writeln!(s, "| benchmark | median | 95 % interval |");
    let _ = writeln!(s, "|---|---|---|");
    for m in micro {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} – {} |",
            m.id,
            fmt_ns(m.median),
            fmt_ns(m.lo),
            fmt_ns(m.hi)
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "### Goals\n");
    let sel = |id: &str| micro_get(micro, id).map(|m| m.median);
    if let Some(kc) = sel("select_kernel_host/cgroup/10000") {
        let verdict = if kc < 10e6 { "met" } else { "**not met**" };
        let _ = writeln!(
            s,
            "* Selection over 10,000 cgroups under 10 ms: {verdict} for the real host — {} at \
             cgroup granularity, {} at process granularity (10 processes per cgroup, each far \
             smaller than its cgroup: every process of the lowest tier's 1,000 cgroups is read); \
             the policy alone (in-memory host) takes {} / {}.",
            fmt_ns(kc),
            sel("select_kernel_host/process/10000").map_or("–".into(), fmt_ns),
            sel("select_mem_host/cgroup/10000").map_or("–".into(), fmt_ns),
            sel("select_mem_host/process/10000").map_or("–".into(), fmt_ns),
        );
    }
    // Per event, the handler's side only (see sdk/benches/watcher.rs): the
    // runner's inotify path, and the fd-per-cgroup fallback once its fd is
    // ready; the eventfd stand-in's own signal is shown, not judged.
    let ratio = |id: &str| {
        let (a, b) = (sel(&format!("{id}/10"))?, sel(&format!("{id}/10000"))?);
        Some((a, b, b / a))
    };
    if let (Some(r), Some(h)) = (
        ratio("runner_event/memory_events_local"),
        ratio("watcher_event/handle"),
    ) {
        let verdict = if r.2 < 1.5 && h.2 < 1.5 {
            "met"
        } else {
            "**not met**"
        };
        let stand_in = ratio("watcher_event/signal").map_or(String::new(), |g| {
            format!(
                " The eventfd stand-in's own signal, which a kernfs event does not cost the \
                 handler: {} / {} (×{:.1}).",
                fmt_ns(g.0),
                fmt_ns(g.1),
                g.2
            )
        });
        let _ = writeln!(
            s,
            "* Cost per event independent of the number of cgroups watched (×1.5 at most from \
             10 to 10,000): {verdict} — the runner's path (one inotify watch per \
             `memory.events.local`) {} with 10 cgroups, {} with 10,000 (×{:.1}); the \
             fd-per-cgroup fallback, handler side, {} / {} (×{:.1}).{stand_in}",
            fmt_ns(r.0),
            fmt_ns(r.1),
            r.2,
            fmt_ns(h.0),
            fmt_ns(h.1),
            h.2
        );
    }
    let _ = writeln!(s);
    if let Some(vm) = vm {
        let fp = |h: &str, k: &str| {
            vm.footprint
                .iter()
                .find(|f| f["handler"] == h)
                .and_then(|f| f[k].as_f64())
        };
        if let Some(o) = fp("oomkit", "rss_kib") {
            let mut cmp = Vec::new();
            for h in ["earlyoom", "oomd"] {
                if let Some(p) = fp(h, "rss_kib") {
                    cmp.push(format!(
                        "{h} {:.1} MiB (×{:.1})",
                        p / 1024.0,
                        o / p.max(1.0)
                    ));
                }
            }
            let _ = writeln!(
                s,
                "* Footprint with 10,000 cgroups: oomkit's RSS is {:.1} MiB against {}; it \
                 locks {:.1} MiB (VmLck) and took {:.1} s to settle; idle wakeups: {} per \
                 second (earlyoom {}, oomd {}).",
                o / 1024.0,
                cmp.join(", "),
                fp("oomkit", "lck_kib").unwrap_or(0.0) / 1024.0,
                fp("oomkit", "settle_s").unwrap_or(0.0),
                fp("oomkit", "wakeups_per_s").unwrap_or(0.0),
                fp("earlyoom", "wakeups_per_s").map_or("–".into(), |v| v.to_string()),
                fp("oomd", "wakeups_per_s").map_or("–".into(), |v| v.to_string()),
            );
            let _ = writeln!(s);
        }
    }
    if let Some(vm) = vm {
        s.push_str(&bench_machine::render(args.runs, vm));
    }
    s.push_str(ANALYSIS);
    s
}

/// The part of the report that explains rather than measures. It states what the numbers above
/// mean structurally; it is kept in code so the command rewrites the whole document.
const ANALYSIS: &str = r#"## Where oomkit is not at least as good as every peer, and why

* **Selection at cgroup granularity reads every cgroup in scope.** Each decision snapshots the
  `memory.current` of every cgroup (`Engine::snapshot` → `KernelHost::read_usage`): one `pread`
  on a kept fd as far as the open-file limit leaves room for those fds, else `openat` + `read`
  + `close` (several times slower). The runner raises its soft limit to the hard limit (20,000
  on this host); every cgroup holds one fd of its own (its directory; `memory.events.local` is
  an inotify watch), so at 10,000 cgroups most `memory.current` fds fit, at 30,000 none do.
  10 ms whatever the limit would need the directory fd opened on demand too, or a bound that
  skips subtrees (a parent's `memory.current` bounds its children's; no help in a flat tree),
  which is not done. Process granularity visits cgroups best-first and stops early, but still
  reads `/proc` for the processes of the cgroups it visits.
* **Footprint at rest: earlyoom is smaller.** earlyoom is a small C program that reads
  `/proc/meminfo` on a timer and watches no cgroup; oomkit is a static Rust binary (its own
  glibc, std, tracing, clap, toml, serde_json) that watches every cgroup. Reserve mode
  (`mlock = "resident"`) locks the program's code (a page of it read back from disk
  between event and kill is the stall reserve mode exists to prevent; `reserve_no_major_fault_to_kill`
  checks 0 major faults on four kernels), what one warm-up decision over the tree touched, and
  what is allocated after; it leaves out the unwind and start-up tables and the code that only
  start-up, reloads, scrapes and the CLI run (`daemon/cold.ld` gathers it into a section of its
  own at link time). The code is most of what is resident (see the at-rest breakdown). oomd
  does not lock anything.
* **Per-cgroup cost.** oomkit holds one fd per watched cgroup (its directory) plus one for
  `memory.current` within the open-file budget, and two inotify watches (the directory, at
  `depth` > 1, and `memory.events.local`; a cgroup whose watch fails, e.g. at
  `fs.inotify.max_user_watches`, 8192 by default before 5.11, gets an fd instead); oomd holds
  one fd per cgroup of its rulesets; earlyoom none. Start-up attaches every existing cgroup
  (open, xattrs, watches) before the `running` line; see the cost-per-cgroup table.
* **Idle wakeups** (oomkit is best here). oomkit has no timer when nothing happens; earlyoom
  polls `/proc/meminfo` on a timer (its interval adapts to free memory) and oomd runs its
  ruleset every interval (1 s), reading its cgroups each time — see the wakeups column.
* **The kernel alone reacts fastest after its own onset**: its onset *is* the wall
  (`memory.max`), where it kills within the same allocation. oomkit and oomd start earlier, at
  `memory.high`, spend time deciding (oomkit samples reclaim progress before acting on a `high`
  event; oomd only looks once per interval) while the kernel throttles the job, and act with
  headroom left (usage at kill vs max). Compare "usage at kill" as well as the times.
* **earlyoom cannot see cgroup limits**: it acts on system-wide available memory and swap only,
  so in both scenarios the cgroup's `memory.max` is reached while the machine has plenty free,
  and the kernel's OOM killer acts first (and, in the priority scenario, takes the service).
* **oomd kills whole cgroups**: here every process has a leaf cgroup of its own, so that costs
  nothing; with processes sharing a cgroup its kill takes them all (an earlier version of this
  bench, with `main` and `leak` in one cgroup, saw oomd kill both).
"#;

/// Horizontal bars: median onset → victim exit per scenario and handler, min–max whiskers, log
/// scale. Plain SVG text, no dependencies.
pub fn svg(e2e: &[Value]) -> String {
    let row_h = 26.0;
    let left = 170.0;
    let width = 900.0;
    let plot_w = width - left - 60.0;
    let rows: Vec<(String, Option<Stat>, usize, usize)> = SCENARIOS
        .iter()
        .flat_map(|sc| {
            HANDLERS.iter().map(move |h| {
                let rs = runs_of(e2e, sc, h);
                let st = stat(&rs, "exit_ms");
                let right = rs.iter().filter(|r| r["right_victim"] == true).count();
                (format!("{sc} / {h}"), st.med.map(|_| st), right, rs.len())
            })
        })
        .collect();
    let height = 70.0 + row_h * rows.len() as f64 + 40.0;
    // Log axis from 1 ms to 100 s.
    let (lo, hi) = (0.0_f64, 5.0_f64);
    let x = |ms: f64| left + (ms.max(1.0).log10() - lo) / (hi - lo) * plot_w;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="20" font-size="14" font-weight="bold">Pressure onset → victim exit (ms, log scale; median, min–max)</text>"#
    );
    for d in 0..=5 {
        let ms = 10f64.powi(d);
        let xx = x(ms);
        let label = if ms >= 1000.0 {
            format!("{} s", ms / 1000.0)
        } else {
            format!("{ms} ms")
        };
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="40" x2="{xx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{label}</text>"##,
            height - 35.0,
            height - 20.0
        );
    }
    for (i, (label, st, right, n)) in rows.iter().enumerate() {
        let y = 50.0 + row_h * i as f64;
        let color = match label.rsplit(" / ").next() {
            Some("oomkit") => "#2b7bb9",
            Some("oomd") => "#e08a2c",
            Some("earlyoom") => "#5aa55a",
            _ => "#888888",
        };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#,
            left - 8.0,
            y + 15.0
        );
        match st {
            Some(st) => {
                let m = st.med.unwrap_or(1.0);
                let _ = writeln!(
                    s,
                    r#"<rect x="{left}" y="{:.1}" width="{:.1}" height="16" fill="{color}"/>"#,
                    y + 3.0,
                    (x(m) - left).max(1.0)
                );
                let _ = writeln!(
                    s,
                    r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
                    x(st.min),
                    y + 11.0,
                    x(st.max),
                    y + 11.0,
                    x(st.min),
                    y + 6.0,
                    x(st.min),
                    y + 16.0,
                    x(st.max),
                    y + 6.0,
                    x(st.max),
                    y + 16.0
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}">{m:.0} ms, right victim {right}/{n}</text>"#,
                    x(st.max) + 6.0,
                    y + 15.0
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    r##"<text x="{:.1}" y="{:.1}" fill="#a00">no data</text>"##,
                    left + 4.0,
                    y + 15.0
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_section_is_spliced_and_the_rest_kept() {
        let doc = "# t\n\n## Footprint\nfp\n\n## Micro-benchmarks (host)\nold\n\n### Goals\nold goal\n\n\
                   ## Machine-wide\nmachine\n";
        let fresh =
            "# t\n\n## Micro-benchmarks (host)\nnew\n\n### Goals\nnew goal\n\n## Where\nw\n";
        assert_eq!(
            splice_micro(doc, fresh),
            "# t\n\n## Footprint\nfp\n\n## Micro-benchmarks (host)\nnew\n\n### Goals\nnew goal\n\n\
             ## Machine-wide\nmachine\n"
        );
        let fresh_last = "# t\n\n## Micro-benchmarks (host)\nnew\n";
        assert_eq!(
            splice_micro(doc, fresh_last),
            "# t\n\n## Footprint\nfp\n\n## Micro-benchmarks (host)\nnew\n## Machine-wide\nmachine\n"
        );
        assert_eq!(splice_micro(doc, "# t\n"), doc);
    }

    #[test]
    fn footprint_sections_are_spliced_and_the_rest_kept() {
        assert!(footprint_only(Some("footprint,rest,scale")));
        assert!(footprint_only(Some("scale")));
        assert!(!footprint_only(Some("machine")));
        assert!(!footprint_only(Some("scale,bench_e2e")));
        assert!(!footprint_only(None));
        let doc = "# t\n\n## End to end\nold e2e\n\n## Footprint with 10,000 cgroups\nold fp\n\n\
                   ## Footprint at rest (100 cgroups)\nold rest\n\n## Notes on this run\nhand\n\n\
                   ## Micro-benchmarks\nold micro\n";
        let fresh = "# t\n\n## End to end\nnew e2e\n\n## Footprint with 10,000 cgroups\nnew fp\n\n\
                     ## Cost per cgroup\nnew scale\n\n## Micro-benchmarks\nnew micro\n";
        let out = splice_footprint(doc, fresh);
        assert_eq!(
            out,
            "# t\n\n## End to end\nold e2e\n\n## Footprint with 10,000 cgroups\nnew fp\n\n\
             ## Cost per cgroup\nnew scale\n\n## Notes on this run\nhand\n\n\
             ## Micro-benchmarks\nold micro\n"
        );
    }
}
