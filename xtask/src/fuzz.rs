//! `cargo xtask fuzz`: runs every cargo-fuzz target in `fuzz/` for a while
//! and reports executions and crashes per target.
//!
//! cargo-fuzz needs `-Z` flags (sanitizers, coverage instrumentation);
//! this project builds on stable, so the runs set `RUSTC_BOOTSTRAP=1`,
//! which lets a stable compiler accept them. cargo-fuzz itself is installed
//! into `.cache/tools` from crates.io when it is not on `PATH`.
//!
//! Each target starts from a seed corpus built from the real kernel files
//! in `sdk/fixtures/` (and the shipped configs for the config target); what
//! libFuzzer finds goes to `fuzz/corpus/<target>` (gitignored), crashes to
//! `fuzz/artifacts/<target>`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::Args;

use crate::repo_root;
use crate::util::{self, Context, Error, Result};

/// The targets and which seed files each starts from.
pub const TARGETS: [&str; 4] = ["cgroup_files", "proc_files", "psi", "config"];

#[derive(Args, Clone)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only these targets (default: all).
    #[arg(long = "target", short = 't')]
    pub targets: Vec<String>,
    /// Parallel fuzzing jobs per target (libFuzzer `-fork`); 1 runs in-process.
    #[arg(long, default_value_t = 1)]
    pub jobs: u32,
}

/// What one target's run gave.
#[derive(Debug)]
pub struct FuzzRun {
    pub target: String,
    pub executions: Option<u64>,
    pub seconds: f64,
    pub ok: bool,
}

/// The cargo-fuzz binary: on `PATH`, or installed into `.cache/tools`.
fn cargo_fuzz() -> Result<PathBuf> {
    if util::on_path("cargo-fuzz") {
        return Ok(PathBuf::from("cargo-fuzz"));
    }
    let root = repo_root().join(".cache").join("tools");
    let bin = root.join("bin").join("cargo-fuzz");
    if util::is_file(&bin) {
        return Ok(bin);
    }
    println!("==> installing cargo-fuzz into {}", root.display());
    util::run(
        Command::new(util::cargo())
            .args(["install", "cargo-fuzz", "--locked", "--root"])
            .arg(&root),
    )?;
    Ok(bin)
}

/// Does `name` (a fixture's file name) seed `target`?
fn seeds(target: &str, name: &str) -> bool {
    match target {
        "cgroup_files" => {
            (name.starts_with("memory.") || name.starts_with("cgroup."))
                && !name.ends_with("pressure")
        }
        "proc_files" => {
            name.contains("status")
                || name.contains("stat")
                || name.contains("cmdline")
                || name.contains("smaps")
                || name == "meminfo"
                || name == "vmstat"
                || name.ends_with("cgroup")
        }
        "psi" => name.ends_with("pressure") || name == "memory",
        _ => false,
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir).context(|| format!("cannot list {}", dir.display()))?;
    for e in rd {
        let p = e
            .context(|| format!("cannot list {}", dir.display()))?
            .path();
        if p.is_dir() {
            collect(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Fills `.cache/fuzz-seeds/<target>` from the fixtures (or the configs).
fn seed_dir(target: &str) -> Result<PathBuf> {
    let root = repo_root();
    let dir = root.join(".cache").join("fuzz-seeds").join(target);
    util::remove_dir_all_if_exists(&dir)?;
    util::create_dir_all(&dir)?;
    let mut files = Vec::new();
    if target == "config" {
        collect(&root.join("daemon").join("configs"), &mut files)?;
    } else {
        collect(&root.join("sdk").join("fixtures"), &mut files)?;
        files.retain(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| seeds(target, n))
        });
    }
    for (i, f) in files.iter().enumerate() {
        let data = std::fs::read(f).context(|| format!("cannot read {}", f.display()))?;
        util::write(&dir.join(format!("seed-{i:04}")), data)?;
    }
    Ok(dir)
}

/// `stat::number_of_executed_units: N` from libFuzzer's final stats (summed
/// over fork-mode workers' `#N DONE` lines when there are no stats).
fn executions(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .reduce(|a, b| a + b)
        .or_else(|| {
            stderr
                .lines()
                .filter(|l| l.contains("DONE"))
                .filter_map(|l| l.strip_prefix('#')?.split_whitespace().next()?.parse().ok())
                .max()
        })
}

pub fn run(args: &FuzzArgs) -> Result<bool> {
    let fuzz = cargo_fuzz()?;
    let root = repo_root();
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &args.targets {
            if !TARGETS.contains(&t.as_str()) {
                return Err(Error::msg(format!(
                    "unknown fuzz target `{t}` (known: {})",
                    TARGETS.join(", ")
                )));
            }
        }
        args.targets.iter().map(String::as_str).collect()
    };
    let mut runs = Vec::new();
    for t in targets {
        let seeds = seed_dir(t)?;
        let corpus = root.join("fuzz").join("corpus").join(t);
        util::create_dir_all(&corpus)?;
        println!("==> fuzz {t} for {} s", args.seconds);
        let started = Instant::now();
        let mut cmd = Command::new(&fuzz);
        cmd.current_dir(&root)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "-O", t])
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            .arg("-print_final_stats=1");
        if args.jobs > 1 {
            cmd.arg(format!("-fork={}", args.jobs));
        }
        let out = cmd
            .output()
            .context(|| format!("cannot run {}", fuzz.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let run = FuzzRun {
            target: t.to_string(),
            executions: executions(&stderr),
            seconds: started.elapsed().as_secs_f64(),
            ok: out.status.success(),
        };
        if !run.ok {
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
            eprintln!(
                "  {t}: FAILED; reproducers in {}",
                root.join("fuzz/artifacts").join(t).display()
            );
        }
        runs.push(run);
    }
    println!();
    println!("==> fuzz summary");
    for r in &runs {
        println!(
            "  {:<14} {:>12} executions in {:>5.0} s  {}",
            r.target,
            r.executions.map_or("?".to_string(), |n| n.to_string()),
            r.seconds,
            if r.ok { "0 crashes" } else { "CRASHED" }
        );
    }
    Ok(runs.iter().all(|r| r.ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_execution_counts() {
        let err = "INFO: seed\n#1048576\tpulse cov: 10\nDone 2000000 runs in 60 second(s)\nstat::number_of_executed_units: 2000123\nstat::average_exec_per_sec:     33335\n";
        assert_eq!(executions(err), Some(2_000_123));
        assert_eq!(executions("nothing"), None);
    }

    #[test]
    fn seeds_go_to_the_right_target() {
        assert!(seeds("cgroup_files", "memory.events"));
        assert!(!seeds("cgroup_files", "memory.pressure"));
        assert!(seeds("psi", "memory.pressure"));
        assert!(seeds("proc_files", "sleep.status"));
        assert!(seeds("proc_files", "meminfo"));
        assert!(!seeds("config", "meminfo"));
    }
}
