//! `cargo xtask bootstress`: how often does each kernel fail to boot under our qemu settings?
//!
//! A guest that dies before the harness handshake costs a CI run (or, since the retry rule in
//! [`crate::qemu`], a retry). Whether a `-cpu` model, TCG threading or a kernel option removes
//! such deaths is a question of rates, so this boots each selected kernel `-n` times in the
//! guest's `probe` mode (BEGIN and END, no tests) with exactly the flags `vmtest` uses, up to
//! `--jobs` at once, and tallies the outcomes. Failed boots keep their console and protocol logs
//! in the run folder (see [`crate::runlog`]) and their console tails are printed; passing boots'
//! logs are removed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Args;

use crate::kernels::KernelImage;
use crate::qemu::{self, VmSpec};
use crate::report::KernelRun;
use crate::runlog::RunLogs;
use crate::util::{self, Error, Result};
use crate::{VmOptions, guest, host, kernels};

/// Console lines shown per failed boot.
const TAIL: usize = 12;

#[derive(Args, Clone)]
pub struct BootstressArgs {
    /// Kernels to boot, as for `vmtest --kernel`; default all.
    #[arg(long = "kernel", short = 'k', value_name = "KERNEL")]
    kernels: Vec<String>,
    /// Boots per kernel.
    #[arg(long, short = 'n', default_value_t = 30)]
    boots: usize,
    /// Extra kernel command-line arguments (repeatable), e.g. `--append clearcpuid=cx16`.
    #[arg(long = "append", value_name = "ARG")]
    append: Vec<String>,
    #[command(flatten)]
    vm: VmOptions,
}

/// One boot's outcome.
struct Boot {
    kernel: usize,
    ok: bool,
    /// `died before handshake`, `hung before handshake`, `failed after handshake`.
    what: &'static str,
    /// The oops's first `RIP:`, or the panic line, from the console.
    signature: String,
    tail: String,
    seconds: f64,
}

pub fn run(args: &BootstressArgs) -> Result<bool> {
    host::ensure_tools(args.vm.no_install)?;
    if args.boots == 0 {
        return Err(Error::msg("--boots must be at least 1"));
    }
    if args
        .append
        .iter()
        .any(|a| a.is_empty() || a.chars().any(char::is_whitespace))
    {
        return Err(Error::msg(
            "--append takes one kernel argument without whitespace per use",
        ));
    }
    let pins = kernels::load_pins()?;
    let selected = kernels::select(&pins, &args.kernels)?;
    let images = kernels::fetch_all(&pins, &selected)?;
    let initrd = guest::build_initramfs()?;
    let accel = qemu::resolve_accel(args.vm.accel, &images[0], &initrd, args.vm.verbose);
    let mut cmdline = vec!["oomkit.mode=probe".to_string()];
    cmdline.extend(args.append.iter().cloned());
    let logs = RunLogs::create("bootstress")?;
    let jobs = qemu::jobs(&args.vm);
    println!(
        "xtask: bootstress: {} boot(s) of {} kernel(s) under {accel:?} (-cpu {}, tcg thread={:?}), \
         {jobs} at a time, {} CPU(s) and {} MiB each, extra args [{}]; logs in {}",
        args.boots,
        images.len(),
        args.vm.cpu,
        args.vm.tcg_thread,
        args.vm.smp,
        args.vm.memory_mib,
        args.append.join(" "),
        logs.path().display()
    );
    let started = Instant::now();
    let queue: Mutex<VecDeque<(usize, usize)>> = Mutex::new(
        (0..args.boots)
            .flat_map(|n| (0..images.len()).map(move |k| (k, n + 1)))
            .collect(),
    );
    let boots: Mutex<Vec<Boot>> = Mutex::new(Vec::new());
    let errors: Mutex<Vec<Error>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                while let Some((k, n)) = queue.lock().ok().and_then(|mut q| q.pop_front()) {
                    let image = &images[k];
                    match boot_once(image, n, &initrd, &cmdline, args, accel, &logs) {
                        Ok(mut b) => {
                            b.kernel = k;
                            println!(
                                "[{} #{n:02}] {} {:.1}s{}",
                                image.name,
                                if b.ok { "ok" } else { "FAILED" },
                                b.seconds,
                                if b.ok {
                                    String::new()
                                } else {
                                    format!(": {}: {}", b.what, b.signature)
                                }
                            );
                            if let Ok(mut v) = boots.lock() {
                                v.push(b);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut v) = errors.lock() {
                                v.push(Error::msg(format!("{} #{n}: {e}", image.name)));
                            }
                            if let Ok(mut q) = queue.lock() {
                                q.clear();
                            }
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = errors.into_inner().unwrap_or_default().into_iter().next() {
        let _ = logs.finish(true);
        return Err(e);
    }
    let boots = boots.into_inner().unwrap_or_default();
    let failed_any = boots.iter().any(|b| !b.ok);
    report(&images, &boots, started.elapsed());
    if let Some(dir) = logs.finish(failed_any) {
        println!("logs of the failed boots: {}", dir.display());
    }
    Ok(!failed_any)
}

fn boot_once(
    image: &KernelImage,
    n: usize,
    initrd: &std::path::Path,
    cmdline: &[String],
    args: &BootstressArgs,
    accel: qemu::Accel,
    logs: &RunLogs,
) -> Result<Boot> {
    let dir = logs.vm_dir(&format!("{}-{n:03}", image.name));
    let spec = VmSpec {
        kernel: image,
        initrd,
        cmdline,
        memory_mib: args.vm.memory_mib,
        smp: args.vm.smp,
        accel,
        cpu: &args.vm.cpu,
        tcg_thread: args.vm.tcg_thread,
        verbose: args.vm.verbose,
        log_dir: dir.clone(),
        hard_limit: None,
    };
    let run = qemu::run_vm(&spec, &|_| {})?;
    let seconds = run.duration.as_secs_f64();
    if run.ok() {
        util::remove_dir_all_if_exists(&dir)?;
        return Ok(Boot {
            kernel: 0,
            ok: true,
            what: "",
            signature: String::new(),
            tail: String::new(),
            seconds,
        });
    }
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    let lines: Vec<&str> = console.lines().collect();
    let tail = lines[lines.len().saturating_sub(TAIL)..].join("\n");
    Ok(Boot {
        kernel: 0,
        ok: false,
        what: classify(&run),
        signature: signature(&console),
        tail,
        seconds,
    })
}

fn classify(run: &KernelRun) -> &'static str {
    if run.guest_release.is_some() {
        "failed after handshake"
    } else if run
        .problem
        .as_deref()
        .is_some_and(|p| p.contains("did not come up"))
    {
        "hung before handshake"
    } else {
        "died before handshake"
    }
}

/// The first oops location (`RIP: 0010:func`, offsets dropped) or panic line on the console.
fn signature(console: &str) -> String {
    let strip = |l: &str| -> String {
        let l = l.trim();
        let l = match l.strip_prefix('[') {
            Some(rest) => rest.split_once(']').map_or(rest, |(_, r)| r).trim(),
            None => l,
        };
        l.to_string()
    };
    for needle in ["traps: ", "RIP: ", "Kernel panic", "BUG: "] {
        if let Some(l) = console.lines().find(|l| l.contains(needle)) {
            let s = strip(l);
            let s = s.split_once('+').map_or(s.as_str(), |(f, _)| f);
            return s.to_string();
        }
    }
    "(no oops or panic on the console)".to_string()
}

fn report(images: &[KernelImage], boots: &[Boot], took: Duration) {
    let failed: Vec<&Boot> = boots.iter().filter(|b| !b.ok).collect();
    if !failed.is_empty() {
        println!("\nfailed boots (last {TAIL} console lines each):");
        for b in &failed {
            println!(
                "\n--- {} ({}): {}: {}",
                images[b.kernel].name, images[b.kernel].release, b.what, b.signature
            );
            println!("{}", b.tail);
        }
    }
    println!(
        "\n{:<6}  {:<28} {:>6} {:>6} {:>7} {:>9}",
        "kernel", "release", "boots", "failed", "rate", "mean boot"
    );
    for (k, image) in images.iter().enumerate() {
        let mine: Vec<&Boot> = boots.iter().filter(|b| b.kernel == k).collect();
        let n = mine.len();
        let f = mine.iter().filter(|b| !b.ok).count();
        let mean = mine.iter().map(|b| b.seconds).sum::<f64>() / n.max(1) as f64;
        println!(
            "{:<6}  {:<28} {:>6} {:>6} {:>6.1}% {:>8.1}s",
            image.name,
            image.release,
            n,
            f,
            100.0 * f as f64 / n.max(1) as f64,
            mean
        );
        let mut sigs: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for b in mine.iter().filter(|b| !b.ok) {
            *sigs.entry((b.what, b.signature.as_str())).or_default() += 1;
        }
        for ((what, sig), count) in sigs {
            println!("          {count} × {what}: {sig}");
        }
    }
    println!(
        "\nbootstress: {} boot(s), {} failed, in {:.0}s",
        boots.len(),
        failed.len(),
        took.as_secs_f64()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_prefers_the_trap_then_the_first_rip() {
        let c = "[    0.41] WARNING: CPU: 0 PID: 0 at arch/x86/kernel/traps.c:1120\n\
                 [    0.41] RIP: 0010:exc_debug_kernel+0xca/0x160\n\
                 [    0.42] Kernel panic - not syncing: Fatal exception\n";
        assert_eq!(signature(c), "RIP: 0010:exc_debug_kernel");
        let d = "[    0.76] traps: PANIC: double fault, error_code: 0x0\n\
                 [    0.76] RIP: 0010:__kmalloc_noprof+0x130/0x400\n";
        assert_eq!(signature(d), "traps: PANIC: double fault, error_code: 0x0");
        assert_eq!(signature("nothing"), "(no oops or panic on the console)");
    }
}
