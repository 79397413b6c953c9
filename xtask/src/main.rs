//! `cargo xtask`: the project's task runner.
//!
//! * `cargo xtask test` is the one test command (CI runs exactly this): format check, clippy,
//!   the host unit tests (skips counted, see [`hosttest`]), then the cgroup-v2 tests in qemu on
//!   every pinned kernel. It ends with a plain `N passed, N failed, N skipped` line.
//! * `cargo xtask vmtest` boots pinned Debian kernels in qemu and runs the privileged tests of the
//!   `oomkit-integration` crate inside them. The host's memory controller is on cgroup v1, so
//!   cgroup-v2 memory behaviour (memory.events, PSI triggers, OOM kills, cgroup.kill) can only be
//!   exercised in a VM with its own kernel.
//! * `cargo xtask demo` boots the newest kernel and runs the priority scenario without and with
//!   the `oomkit` daemon, printing what happened side by side (the README's main command).
//! * `cargo xtask fuzz --seconds N` runs each cargo-fuzz target (`fuzz/`) for N seconds and
//!   reports executions and crashes; `cargo xtask test` runs each briefly.
//! * `cargo xtask fixtures` boots each kernel and copies real `memory.*`, `cgroup.*` and `/proc`
//!   files into `sdk/fixtures/<kernel-release>/` for the SDK's parser tests.
//! * `cargo xtask bootstress` boots kernels many times to the harness handshake and tallies how
//!   often they fail to boot under the VM settings, with the console tails of the failures.
//!
//! Everything external (apt, dpkg, cpio, qemu) is driven from here, not from shell scripts, so
//! the whole flow is one program with one set of error messages.

mod apt;
mod bench;
mod bench_machine;
mod bench_peers;
mod bench_scale;
mod bootstress;
mod demo;
mod deploy;
mod fuzz;
mod guest;
mod host;
mod hosttest;
mod kernels;
mod public_api;
mod qemu;
mod report;
mod runlog;
mod util;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use crate::util::{Error, Result};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "oomkit project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The project's test command: fmt check, clippy, host tests, VM tests on all kernels.
    Test(TestArgs),
    /// Boot pinned Debian kernels in qemu and run the privileged cgroup-v2 tests inside.
    Vmtest(VmArgs),
    /// Capture real cgroup and /proc files from each kernel into sdk/fixtures/.
    Fixtures(FixtureArgs),
    /// The operator checks of `test` alone: systemd-analyze verify, Kubernetes schemas, metrics
    /// text, cargo publish --dry-run.
    DeployCheck,
    /// Install the host tools the VM tests need (qemu, busybox-static, cpio) via apt-get.
    InstallDeps,
    /// Show what oomkit changes: the priority scenario in a VM without and with oomkit, side by
    /// side (who died, who lived, the kernel OOM killer, time to the kill, the incident).
    Demo(demo::DemoArgs),
    /// Run every cargo-fuzz target (cgroup files, /proc files, PSI, config) for N seconds each
    /// and report executions and crashes per target.
    Fuzz(fuzz::FuzzArgs),
    /// Micro-benchmarks, footprint and end-to-end runs against the kernel, earlyoom and oomd;
    /// writes docs/benchmarks.md and docs/bench-latency.svg.
    Bench(bench::BenchArgs),
    /// Boot kernels many times to the harness handshake and tally how often they fail to boot,
    /// with the console tails of the failures (to measure `--cpu`/`--tcg-thread` choices).
    Bootstress(bootstress::BootstressArgs),
    /// Compare the SDK's public API with its snapshot (sdk/public-api.txt); `--bless` rewrites it.
    PublicApi(PublicApiArgs),
}

#[derive(Args, Clone)]
struct PublicApiArgs {
    /// Rewrite the snapshot instead of comparing.
    #[arg(long)]
    bless: bool,
}

#[derive(Args, Clone)]
struct TestArgs {
    /// Skip the VM tests (fmt, clippy and host tests only).
    #[arg(long)]
    no_vm: bool,
    /// Skip the brief run of every fuzz target.
    #[arg(long)]
    no_fuzz: bool,
    #[command(flatten)]
    vm: VmOptions,
}

#[derive(Args, Clone)]
struct VmArgs {
    /// Kernels to boot, by name (`5.10`, `6.1`, …), suite (`sid`) or `latest`; default all.
    #[arg(long = "kernel", short = 'k', value_name = "KERNEL")]
    kernels: Vec<String>,
    /// Run every selected kernel even after one has failures (default: stop at the first).
    #[arg(long)]
    keep_going: bool,
    /// Only run guest tests whose name contains this string.
    #[arg(long, short = 'f')]
    filter: Option<String>,
    /// Resolve the newest kernel of each suite, rewrite integration/kernels.toml, and exit.
    #[arg(long)]
    update_pins: bool,
    /// Guest mode (`run`; `selftest-hang` and `selftest-panic` check the harness's own
    /// hang and panic detection, and must fail; `selftest-boot-panic` dies before the handshake
    /// and must be retried once, loudly, then fail).
    #[arg(long, default_value = "run", hide = true)]
    guest_mode: String,
    #[command(flatten)]
    vm: VmOptions,
}

#[derive(Args, Clone)]
struct FixtureArgs {
    /// Kernels to capture, as for `vmtest --kernel`; default all.
    #[arg(long = "kernel", short = 'k', value_name = "KERNEL")]
    kernels: Vec<String>,
    #[command(flatten)]
    vm: VmOptions,
}

/// Options shared by every command that boots VMs.
#[derive(Args, Clone)]
pub struct VmOptions {
    /// Stream each guest's serial console to the terminal.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// How many VMs run at once (each gets `--smp` CPUs); default: one per host CPU.
    ///
    /// Measured on a 2-CPU host, whole matrix under TCG: 2 VMs × 1 vCPU 25 s, 4 × 1 22 s,
    /// 2 × 2 30 s, 1 × 2 46 s. One vCPU per VM and one VM per host CPU wins: multi-threaded TCG
    /// buys little, and the guests spend most of their time booting and waiting.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Virtual CPUs per VM.
    #[arg(long, default_value_t = 1)]
    pub smp: u32,
    /// Guest memory in MiB. Small, so memory-exhaustion tests finish quickly under TCG.
    #[arg(long, default_value_t = 512)]
    pub memory_mib: u32,
    /// Accelerator: `tcg`, `kvm`, or `auto` (probe KVM once, fall back to TCG).
    #[arg(long, default_value = "auto")]
    pub accel: qemu::AccelChoice,
    /// qemu `-cpu` model (see `qemu::DEFAULT_CPU` for why the default leaves out cx16).
    #[arg(long, default_value = qemu::DEFAULT_CPU)]
    pub cpu: String,
    /// TCG threading: `multi` (one host thread per vCPU) or `single`.
    #[arg(long, value_enum, default_value_t = qemu::TcgThread::Multi)]
    pub tcg_thread: qemu::TcgThread,
    /// Do not install missing host tools with apt-get; fail instead.
    #[arg(long)]
    pub no_install: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Test(args) => cmd_test(&args),
        Cmd::Vmtest(args) => cmd_vmtest(&args),
        Cmd::Fixtures(args) => cmd_fixtures(&args),
        Cmd::DeployCheck => {
            let (mut lines, mut failed) = (Vec::new(), Vec::new());
            deploy::checks(&mut lines, &mut failed);
            lines.iter().for_each(|l| println!("  {l}"));
            Ok(failed.is_empty())
        }
        Cmd::InstallDeps => host::ensure_tools(false).map(|()| true),
        Cmd::Demo(args) => demo::run(&args),
        Cmd::Bench(args) => bench::cmd_bench(&args),
        Cmd::PublicApi(args) => public_api::run(args.bless),
        Cmd::Bootstress(args) => bootstress::run(&args),
        Cmd::Fuzz(args) => fuzz::run(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The repository root (the workspace directory holding this crate).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The private cache for downloads, apt state, initramfs images and run logs (gitignored).
pub fn cache_dir() -> PathBuf {
    repo_root().join(".cache").join("oomkit-vm")
}

/// One line of `cargo xtask test`'s summary.
fn step_line(name: &str, ok: bool, started: Instant) -> String {
    format!(
        "{name:<12} {} ({:.0}s)",
        if ok { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    )
}

fn cmd_test(args: &TestArgs) -> Result<bool> {
    let started = Instant::now();
    let cargo = util::cargo();
    let steps: [(&str, Vec<&str>); 5] = [
        ("fmt", vec!["fmt", "--all", "--", "--check"]),
        (
            "clippy",
            vec![
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
        ("host tests", vec!["test", "--workspace"]),
        // Optional SDK features (tokio adapter, cgroups-rs interop) are
        // checked and tested too.
        (
            "clippy sdk+features",
            vec![
                "clippy",
                "-p",
                "oomkit",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ],
        ),
        (
            "sdk tests+features",
            vec!["test", "-p", "oomkit", "--all-features"],
        ),
    ];
    let mut failed_steps = Vec::new();
    let mut lines = Vec::new();
    // The public API must match its snapshot: a change is a reviewed diff.
    let t = Instant::now();
    let api_ok = public_api::run(false).unwrap_or_else(|e| {
        eprintln!("xtask: public-api: {e}");
        false
    });
    lines.push(step_line("public api", api_ok, t));
    if !api_ok {
        failed_steps.push("public api");
    }
    let mut host = hosttest::HostCounts::default();
    let mut host_skips = Vec::new();
    for (name, argv) in steps {
        println!("==> cargo {}", argv.join(" "));
        let t = Instant::now();
        let mut cmd = std::process::Command::new(&cargo);
        cmd.args(&argv).current_dir(repo_root());
        let (ok, counts) = if argv.first() == Some(&"test") {
            let (ok, c) = hosttest::run_counted(&mut cmd)?;
            (ok, Some(c))
        } else {
            (util::run_status(&mut cmd)?, None)
        };
        let mut line = step_line(name, ok, t);
        if let Some(c) = counts {
            line.push_str(&format!(
                ": {} passed, {} failed, {} skipped",
                c.passed, c.failed, c.skipped
            ));
            host.add(&c);
            host_skips.extend(c.skips.into_iter().map(|(n, r)| (name, n, r)));
        }
        lines.push(line);
        if !ok {
            failed_steps.push(name);
        }
    }
    deploy::checks(&mut lines, &mut failed_steps);
    if !args.no_fuzz {
        println!("==> fuzz (every target briefly)");
        let t = Instant::now();
        let ok = fuzz::run(&fuzz::FuzzArgs {
            seconds: 10,
            targets: Vec::new(),
            jobs: 1,
        })
        .unwrap_or_else(|e| {
            eprintln!("xtask: fuzz: {e}");
            false
        });
        lines.push(step_line("fuzz", ok, t));
        if !ok {
            failed_steps.push("fuzz");
        }
    }
    let mut vm = report::Totals::default();
    let mut loud = Vec::new();
    if !args.no_vm {
        println!("==> vmtest (all kernels)");
        let t = Instant::now();
        let vm_args = VmArgs {
            kernels: Vec::new(),
            keep_going: true,
            filter: None,
            update_pins: false,
            guest_mode: "run".to_string(),
            vm: args.vm.clone(),
        };
        match run_vmtests(&vm_args) {
            Ok(runs) => {
                vm = report::totals(&runs);
                loud = report::retry_lines(&runs);
                for r in runs.iter().filter(|r| !r.ok()) {
                    if let Some(d) = &r.log_dir {
                        loud.push(format!(
                            "logs of the failed VM on {}: {}",
                            r.kernel.name,
                            d.display()
                        ));
                    }
                }
                let ok = report::all_ok(&runs);
                lines.push(step_line("vmtest", ok, t));
                if !ok {
                    failed_steps.push("vmtest");
                }
            }
            Err(e) => {
                eprintln!("xtask: vmtest: {e}");
                lines.push(format!("{:<12} ERROR: {e}", "vmtest"));
                failed_steps.push("vmtest");
            }
        }
    }
    println!();
    println!("==> summary ({:.0}s)", started.elapsed().as_secs_f64());
    for l in &lines {
        println!("  {l}");
    }
    if !host_skips.is_empty() {
        println!("  skipped host tests:");
        for (step, name, reason) in &host_skips {
            println!("    [{step}] {name}: {reason}");
        }
    }
    for l in &loud {
        println!("  {l}");
    }
    if !failed_steps.is_empty() {
        println!("  failed steps: {}", failed_steps.join(", "));
    }
    println!(
        "  host: {} passed, {} failed, {} skipped; vm: {}",
        host.passed,
        host.failed,
        host.skipped,
        if args.no_vm {
            "not run".to_string()
        } else {
            format!(
                "{} passed, {} failed, {} skipped",
                vm.passed, vm.failed, vm.skipped
            )
        }
    );
    println!(
        "{} passed, {} failed, {} skipped",
        host.passed + vm.passed,
        host.failed + vm.failed,
        host.skipped + vm.skipped
    );
    Ok(failed_steps.is_empty())
}

fn cmd_vmtest(args: &VmArgs) -> Result<bool> {
    if args.update_pins {
        host::ensure_tools(args.vm.no_install)?;
        kernels::update_pins()?;
        return Ok(true);
    }
    let runs = run_vmtests(args)?;
    Ok(report::all_ok(&runs))
}

fn run_vmtests(args: &VmArgs) -> Result<Vec<report::KernelRun>> {
    host::ensure_tools(args.vm.no_install)?;
    let pins = kernels::load_pins()?;
    let selected = kernels::select(&pins, &args.kernels)?;
    let images = kernels::fetch_all(&pins, &selected)?;
    let initrd = guest::build_initramfs()?;
    let accel = qemu::resolve_accel(args.vm.accel, &images[0], &initrd, args.vm.verbose);
    if args.guest_mode.chars().any(|c| c.is_whitespace()) {
        return Err(Error::msg("--guest-mode must not contain whitespace"));
    }
    let mut cmdline = vec![format!("oomkit.mode={}", args.guest_mode)];
    if let Some(f) = &args.filter {
        if f.chars().any(char::is_whitespace) {
            return Err(Error::msg("--filter must not contain whitespace"));
        }
        cmdline.push(format!("oomkit.filter={f}"));
    }
    let runs = qemu::run_matrix(
        &images,
        &initrd,
        &cmdline,
        &args.vm,
        accel,
        !args.keep_going,
    )?;
    report::print(&runs);
    deploy::parse_vm_scrapes(&runs)?;
    Ok(runs)
}

fn cmd_fixtures(args: &FixtureArgs) -> Result<bool> {
    host::ensure_tools(args.vm.no_install)?;
    let pins = kernels::load_pins()?;
    let selected = kernels::select(&pins, &args.kernels)?;
    let images = kernels::fetch_all(&pins, &selected)?;
    let initrd = guest::build_initramfs()?;
    let accel = qemu::resolve_accel(args.vm.accel, &images[0], &initrd, args.vm.verbose);
    let cmdline = vec!["oomkit.mode=fixtures".to_string()];
    let runs = qemu::run_matrix(&images, &initrd, &cmdline, &args.vm, accel, false)?;
    let mut ok = true;
    for run in &runs {
        match guest::write_fixtures(run) {
            Ok(n) => println!("{}: wrote {n} fixture files", run.kernel.name),
            Err(e) => {
                eprintln!("{}: {e}", run.kernel.name);
                ok = false;
            }
        }
    }
    report::print(&runs);
    Ok(ok && report::all_ok(&runs))
}
