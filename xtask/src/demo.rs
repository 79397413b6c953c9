//! `cargo xtask demo`: what oomkit changes, side by side.
//!
//! Boots one kernel (the newest by default) with `oomkit.mode=demo`; the guest runs the priority
//! scenario of the end-to-end tests twice (`integration/src/scenario.rs`): a 112 MiB "machine"
//! (a cgroup with `memory.max`), an important service holding 64 MiB (priority 100, by the
//! cgroup's `trusted.oomkit.priority` xattr) and a batch job (priority −100, by a config glob)
//! that grows until the machine runs out —
//!
//! * without oomkit: the kernel's OOM killer picks by size, so the service dies;
//! * with the `oomkit` daemon (priority-kill handler; the machine also gets `memory.high` at
//!   80 MiB as its early warning): the batch job dies, the service lives, the kernel OOM killer
//!   never fires.
//!
//! Each run reports a `DEMO <json>` note; this module turns the two into one table.

use clap::Args;
use serde_json::Value;

use crate::report::{self, KernelRun};
use crate::util::Result;
use crate::{VmOptions, guest, host, kernels, qemu};

#[derive(Args, Clone)]
pub struct DemoArgs {
    /// Kernel to boot (`5.10`, `6.1`, `6.12`, `7.2`, a suite, or `latest`); default: the newest.
    #[arg(long = "kernel", short = 'k', value_name = "KERNEL")]
    pub kernels: Vec<String>,
    #[command(flatten)]
    pub vm: VmOptions,
}

pub fn run(args: &DemoArgs) -> Result<bool> {
    host::ensure_tools(args.vm.no_install)?;
    let pins = kernels::load_pins()?;
    let wanted = if args.kernels.is_empty() {
        vec!["latest".to_string()]
    } else {
        args.kernels.clone()
    };
    let selected = kernels::select(&pins, &wanted)?;
    let images = kernels::fetch_all(&pins, &selected)?;
    let initrd = guest::build_initramfs()?;
    let accel = qemu::resolve_accel(args.vm.accel, &images[0], &initrd, args.vm.verbose);
    let cmdline = vec!["oomkit.mode=demo".to_string()];
    let runs = qemu::run_matrix(&images, &initrd, &cmdline, &args.vm, accel, false)?;
    let mut ok = true;
    for run in &runs {
        ok &= print_run(run, &format!("{accel:?}"));
    }
    if !ok {
        // Only on trouble: the harness's own report says what went wrong in the guest.
        report::print(&runs);
    }
    Ok(ok)
}

fn demo_note(run: &KernelRun, test: &str) -> Option<Value> {
    run.notes
        .iter()
        .filter(|(name, _)| name == test)
        .find_map(|(_, text)| text.strip_prefix("DEMO "))
        .and_then(|j| serde_json::from_str(j).ok())
}

fn fmt_ms(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_string(), |ms| format!("{ms:.0} ms"))
}

/// `"service"` → the human name of a workload.
fn who(name: &str) -> &'static str {
    match name {
        "service" => "important service",
        "batch" => "batch job (priority -100)",
        _ => "?",
    }
}

/// The rows of one column.
fn column(d: &Value) -> Vec<String> {
    let state = |k: &str| d[k].as_str().unwrap_or("?").to_string();
    let (service, batch) = (state("service"), state("batch"));
    let mut died = Vec::new();
    let mut lived = Vec::new();
    for (name, end) in [("service", &service), ("batch", &batch)] {
        let label = if name == "service" {
            "service"
        } else {
            "batch job"
        };
        if end == "alive" {
            lived.push(label.to_string());
        } else {
            died.push(format!("{label} ({end})"));
        }
    }
    let kernel_kills = d["vmstat_oom_kill"].as_u64().unwrap_or(0);
    let oom = if kernel_kills > 0 {
        format!("YES (oom_kill +{kernel_kills})")
    } else {
        "no (oom_kill +0)".to_string()
    };
    let killer = match (&d["incident"], kernel_kills) {
        (Value::Object(_), _) => "oomkit",
        (_, k) if k > 0 => "the kernel OOM killer",
        _ => "-",
    };
    let first = d["first_dead"].as_str().map(who).unwrap_or("nobody");
    let mut rows = vec![
        if died.is_empty() {
            "nobody".into()
        } else {
            died.join(", ")
        },
        if lived.is_empty() {
            "nobody".into()
        } else {
            lived.join(", ")
        },
        first.to_string(),
        killer.to_string(),
        oom,
        fmt_ms(&d["pressure_to_kill_ms"]),
    ];
    match &d["incident"] {
        Value::Object(_) => {
            let i = &d["incident"];
            let t = &i["timings_ms"];
            rows.push(format!(
                "{}: {}",
                i["outcome"].as_str().unwrap_or("?"),
                i["reason"].as_str().unwrap_or("")
            ));
            rows.push(format!(
                "decided {}, SIGKILL {}, exited {}, memory back {}",
                fmt_ms(&t["decided"]),
                fmt_ms(&t["signal_sent"]),
                fmt_ms(&t["victim_exited"]),
                fmt_ms(&t["memory_back"])
            ));
        }
        _ => {
            rows.push("(no oomkit, no record)".into());
            rows.push(String::new());
        }
    }
    rows
}

const LABELS: [&str; 8] = [
    "who died",
    "who lived",
    "first to die",
    "killed by",
    "kernel OOM killer fired",
    "pressure -> kill",
    "incident",
    "incident timings (from event)",
];

/// Print the side-by-side tables for one kernel (the cgroup machine, then the whole guest);
/// false if a side is missing or oomkit did not save the service cleanly.
fn print_run(run: &KernelRun, accel: &str) -> bool {
    let release = run.guest_release.as_deref().unwrap_or(&run.kernel.release);
    println!();
    println!(
        "oomkit demo on Linux {release} (qemu {accel}): a 112 MiB machine (cgroup memory.max), an important \
         service holding 64 MiB (priority 100) and a batch job (priority -100) growing until the machine runs out"
    );
    println!(
        "(with oomkit the machine also has memory.high at 80 MiB: the early warning a userspace OOM handler \
         needs; the kernel alone gets memory.max only, see integration/README.md)"
    );
    let cgroup = print_table(run, "demo_without_oomkit", "demo_with_oomkit");
    let machine = demo_note(run, "demo_machine_with_oomkit");
    println!();
    println!(
        "The whole guest, no swap and no limit anywhere ({} MiB RAM): an important service holding {} MiB \
         (protected) and a batch job (priority -100) growing {} MiB/s until the guest runs out",
        machine
            .as_ref()
            .map_or("?".into(), |m| m["ram_mib"].to_string()),
        machine
            .as_ref()
            .map_or("?".into(), |m| m["service_mib"].to_string()),
        machine
            .as_ref()
            .map_or("?".into(), |m| m["batch_mib_per_s"].to_string()),
    );
    println!(
        "(oomkit's warning is its own [signals.machine]: MemAvailable, refaults and PSI; \
         \"pressure\" starts when MemAvailable drops under 10 %)"
    );
    let whole = print_table(
        run,
        "demo_machine_without_oomkit",
        "demo_machine_with_oomkit",
    );
    if !run.ok() {
        eprintln!(
            "xtask: demo: the guest run had failures: {}",
            run.problem.as_deref().unwrap_or("a demo run failed")
        );
        return false;
    }
    cgroup && whole
}

/// One side-by-side table from the DEMO notes of `without` and `with`; true when oomkit saved
/// the service without a kernel kill.
fn print_table(run: &KernelRun, without_name: &str, with_name: &str) -> bool {
    let (Some(without), Some(with)) = (demo_note(run, without_name), demo_note(run, with_name))
    else {
        eprintln!(
            "xtask: demo: the guest did not report both {without_name} and {with_name} (see {}/console.log)",
            run.log_dir
                .as_deref()
                .unwrap_or(std::path::Path::new("?"))
                .display()
        );
        return false;
    };
    let (a, b) = (column(&without), column(&with));
    let wl = LABELS.iter().map(|l| l.len()).max().unwrap_or(0);
    let wa = a
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(0)
        .max("without oomkit".len());
    println!();
    println!("  {:<wl$}  {:<wa$}  with oomkit", "", "without oomkit");
    println!("  {:<wl$}  {:<wa$}  {}", "", "-".repeat(14), "-".repeat(11));
    for (i, label) in LABELS.iter().enumerate() {
        println!(
            "  {label:<wl$}  {:<wa$}  {}",
            a.get(i).map_or("", String::as_str),
            b.get(i).map_or("", String::as_str)
        );
    }
    println!();
    let service_saved = with["service"] == "alive" && with["batch"] != "alive";
    let clean = with["vmstat_oom_kill"] == 0;
    if service_saved && clean {
        println!(
            "  with oomkit the batch job went instead of the service, before the kernel had to step in."
        );
    } else {
        println!("  unexpected: with oomkit the service did not survive cleanly (see above).");
    }
    if without["first_dead"] != "service" {
        println!(
            "  note: without oomkit the kernel picked the {} this time (it goes by size; the service is the larger).",
            without["first_dead"].as_str().unwrap_or("?")
        );
    }
    service_saved && clean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_from_the_guest_notes() {
        let without: Value = serde_json::from_str(
            r#"{"batch":"alive","first_dead":"service","incident":null,"label":"without oomkit",
                "machine_oom_kill":1,"pressure_to_kill_ms":85.6,"service":"SIGKILL","vmstat_oom_kill":1}"#,
        )
        .unwrap();
        let a = column(&without);
        assert_eq!(a[0], "service (SIGKILL)");
        assert_eq!(a[1], "batch job");
        assert_eq!(a[3], "the kernel OOM killer");
        assert_eq!(a[4], "YES (oom_kill +1)");
        assert_eq!(a[5], "86 ms");
        let with: Value = serde_json::from_str(
            r#"{"batch":"SIGKILL","first_dead":"batch","label":"with oomkit","machine_oom_kill":0,
                "pressure_to_kill_ms":71.3,"service":"alive","vmstat_oom_kill":0,
                "incident":{"outcome":"acted","reason":"tier -100, largest","plan":["kill_process"],
                "timings_ms":{"decided":39.2,"signal_sent":50.9,"victim_exited":55.7,"memory_back":56.1}}}"#,
        )
        .unwrap();
        let b = column(&with);
        assert_eq!(b[0], "batch job (SIGKILL)");
        assert_eq!(b[1], "service");
        assert_eq!(b[3], "oomkit");
        assert_eq!(b[4], "no (oom_kill +0)");
        assert_eq!(b[6], "acted: tier -100, largest");
        assert_eq!(
            b[7],
            "decided 39 ms, SIGKILL 51 ms, exited 56 ms, memory back 56 ms"
        );
        assert_eq!(a.len(), LABELS.len());
        assert_eq!(b.len(), LABELS.len());
    }
}
