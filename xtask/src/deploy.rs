//! `cargo xtask test`'s operator checks: what an SRE installs must be valid before it ships.
//!
//! * `systemd-analyze verify` on `deploy/systemd/oomkit.service`, against a scratch root that
//!   holds the freshly built `oomkit` (the unit's `ExecStart` must exist). systemd reports an
//!   unknown key or a value out of range as a warning and still exits 0, so any output fails.
//! * `kubernetes-validate --strict` (PyPI) on every manifest in `deploy/kubernetes/`, offline
//!   against the bundled Kubernetes schemas; the kustomization's files must exist, and the configs
//!   shipped there and in the .deb must pass `oomkit check-config`.
//! * The metrics text the daemon serves, parsed by the strict OpenMetrics parser of Python's
//!   `prometheus-client` (`oomkit metrics-sample` prints a scrape with every metric present; the
//!   VM suite parses a scrape taken during a real episode the same way).
//! * `cargo publish --workspace --dry-run`: packages the published crates and builds each from
//!   its package, the SDK first, resolving the daemon's dependency on it through cargo's local
//!   overlay registry, exactly what a `cargo install` from crates.io would build.
//!   `--allow-dirty` lets a developer run this on uncommitted work; a CI clone is clean anyway.
//!
//! * `cargo tree -p oomkit-handlers -e normal`: the policy crate a runtime links must not pull
//!   in the daemon's dependencies (CLI, TOML, log subscriber, signals, systemd, metrics).
//!
//! Missing tools are installed: `systemd` with apt-get, the Python packages with pip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::repo_root;
use crate::util::{self, Context, Error, Result};

const PY_PACKAGES: &[(&str, &str)] = &[("kubernetes_validate", "kubernetes-validate")];

type Check = fn() -> Result<()>;

/// Runs every check, appending a summary line per check to `lines` and the names of failed ones
/// to `failed`.
pub fn checks(lines: &mut Vec<String>, failed: &mut Vec<&'static str>) {
    let steps: [(&'static str, Check); 5] = [
        ("policy deps", policy_deps),
        ("systemd unit", systemd_unit),
        ("k8s manifests", kubernetes),
        ("metrics text", metrics_text),
        ("publish dry", publish_dry_run),
    ];
    for (name, step) in steps {
        println!("==> {name}");
        let t = Instant::now();
        let r = step();
        if let Err(e) = &r {
            eprintln!("xtask: {name}: {e}");
        }
        lines.push(format!(
            "{name:<12} {} ({:.0}s)",
            if r.is_ok() { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        ));
        if r.is_err() {
            failed.push(name);
        }
    }
}

/// The policy crate, and the daemon-only crates it must never depend on (normal edges).
const POLICY_CRATE: &str = "oomkit-handlers";
const DAEMON_ONLY: &[&str] = &[
    "clap",
    "clap_complete",
    "clap_mangen",
    "toml",
    "tracing-subscriber",
    "signal-hook",
    "sd-notify",
    "prometheus-client",
    "parse-size",
    "humantime",
    "oomkit-daemon",
];

/// `cargo tree -p oomkit-handlers -e normal` names none of [`DAEMON_ONLY`].
fn policy_deps() -> Result<()> {
    let out = util::output(
        Command::new(util::cargo())
            .args([
                "tree",
                "-p",
                POLICY_CRATE,
                "-e",
                "normal",
                "--prefix",
                "none",
            ])
            .args(["--format", "{p}"])
            .current_dir(repo_root()),
    )?;
    let found = daemon_only_in(&out);
    if found.is_empty() {
        println!(
            "xtask: {POLICY_CRATE} depends on none of {}",
            DAEMON_ONLY.join(", ")
        );
        Ok(())
    } else {
        Err(Error::msg(format!(
            "{POLICY_CRATE} depends on daemon-only crates: {}",
            found.join(", ")
        )))
    }
}

/// The [`DAEMON_ONLY`] crates among `cargo tree --prefix none --format {p}` lines
/// (`name vX.Y.Z [(path)]`).
fn daemon_only_in(tree: &str) -> Vec<&'static str> {
    let names: std::collections::BTreeSet<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    DAEMON_ONLY
        .iter()
        .copied()
        .filter(|d| names.contains(d))
        .collect()
}

/// Builds the daemon and returns its path.
fn oomkit_binary() -> Result<PathBuf> {
    util::run(
        Command::new(util::cargo())
            .args(["build", "--quiet", "-p", "oomkit-daemon", "--bin", "oomkit"])
            .current_dir(repo_root()),
    )?;
    Ok(repo_root().join("target/debug/oomkit"))
}

fn ensure_apt(tool: &str, package: &str) -> Result<()> {
    if util::on_path(tool) {
        return Ok(());
    }
    let apt = |args: &[&str]| {
        util::run(
            Command::new("apt-get")
                .args(args)
                .args(["-o", "DPkg::Lock::Timeout=600"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    apt(&["update"])?;
    apt(&["install", "-y", "--no-install-recommends", package])
}

fn ensure_python() -> Result<()> {
    let missing: Vec<&str> = PY_PACKAGES
        .iter()
        .filter(|(module, _)| {
            !Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    ensure_apt("python3", "python3")?;
    let pip = |extra: &[&str]| {
        util::run_status(
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet"])
                .args(extra)
                .args(&missing),
        )
    };
    // Debian's system Python refuses pip without this (PEP 668); a venv or pyenv does not.
    if pip(&[])? || pip(&["--break-system-packages"])? {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "pip could not install {}",
            missing.join(" ")
        )))
    }
}

fn systemd_unit() -> Result<()> {
    ensure_apt("systemd-analyze", "systemd")?;
    let bin = oomkit_binary()?;
    let root = repo_root().join("target/xtask-deploy/root");
    util::remove_dir_all_if_exists(&root)?;
    for d in ["usr/bin", "bin", "etc/systemd/system"] {
        util::create_dir_all(&root.join(d))?;
    }
    let copy = |from: &Path, to: &str| {
        std::fs::copy(from, root.join(to))
            .map(|_| ())
            .context(|| format!("cannot copy {}", from.display()))
    };
    copy(&bin, "usr/bin/oomkit")?;
    copy(Path::new("/bin/kill"), "bin/kill")?;
    copy(
        &repo_root().join("deploy/systemd/oomkit.service"),
        "etc/systemd/system/oomkit.service",
    )?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(["--man=no", "oomkit.service"])
        .output()
        .context(|| "cannot run systemd-analyze".into())?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !said.trim().is_empty() {
        return Err(Error::msg(format!(
            "systemd-analyze verify ({}):\n{said}",
            out.status
        )));
    }
    println!("deploy/systemd/oomkit.service: verified");
    Ok(())
}

/// The files a kustomization lists (`resources:` and generator `files:` entries).
fn kustomization_files(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(str::trim)
        .filter(|f| f.ends_with(".yaml") || f.ends_with(".toml"))
        .map(str::to_string)
        .collect()
}

fn kubernetes() -> Result<()> {
    ensure_python()?;
    let dir = repo_root().join("deploy/kubernetes");
    let kust = util::read_to_string(&dir.join("kustomization.yaml"))?;
    let listed = kustomization_files(&kust);
    if listed.is_empty() {
        return Err(Error::msg("kustomization.yaml lists no files"));
    }
    for f in &listed {
        if !util::is_file(&dir.join(f)) {
            return Err(Error::msg(format!(
                "kustomization.yaml lists {f}, which does not exist"
            )));
        }
    }
    let manifests: Vec<PathBuf> = listed
        .iter()
        .filter(|f| f.ends_with(".yaml"))
        .map(|f| dir.join(f))
        .collect();
    util::run(
        Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
            .args(&manifests),
    )?;
    let bin = oomkit_binary()?;
    for cfg in [
        dir.join("oomkit.toml"),
        repo_root().join("deploy/oomkit.toml"),
    ] {
        util::run(Command::new(&bin).arg("check-config").arg(&cfg))?;
    }
    println!("deploy/kubernetes: {} manifest(s) valid", manifests.len());
    Ok(())
}

const PARSE_METRICS: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
names = {f.name: f for f in text_string_to_metric_families(sys.stdin.read())}
need = ["oomkit_episodes", "oomkit_kills", "oomkit_kernel_oom_kills", "oomkit_watchdog_actions",
        "oomkit_event_to_kill_seconds", "oomkit_managed_cgroups", "oomkit_reserve_degraded",
        "oomkit_last_reload_success", "oomkit_build"]
missing = [n for n in need if n not in names]
if missing:
    sys.exit("missing metric families: " + ", ".join(missing))
print("parsed %d metric families" % len(names))
"#;

fn metrics_text() -> Result<()> {
    ensure_python()?;
    let bin = oomkit_binary()?;
    parse_metrics(&util::output(Command::new(&bin).arg("metrics-sample"))?)
}

fn parse_metrics(text: &str) -> Result<()> {
    let mut child = Command::new("python3")
        .args(["-c", PARSE_METRICS])
        .stdin(Stdio::piped())
        .spawn()
        .context(|| "cannot run python3".into())?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(text.as_bytes())
            .context(|| "writing to python3".into())?;
    }
    let status = child.wait().context(|| "waiting for python3".into())?;
    if !status.success() {
        return Err(Error::msg(format!(
            "the OpenMetrics parser rejected the scrape:\n{text}"
        )));
    }
    Ok(())
}

/// Parses every scrape a VM test sent in a `METRICS <hex>` note with the same parser, so the
/// text served during a real episode is checked by a real Prometheus parser, not only the guest's
/// own reading of it. Errors name the kernel and test.
pub fn parse_vm_scrapes(runs: &[crate::report::KernelRun]) -> Result<()> {
    let scrapes: Vec<(String, Vec<u8>)> = runs
        .iter()
        .flat_map(|r| {
            r.notes.iter().filter_map(move |(test, text)| {
                let hex = text.strip_prefix("METRICS ")?;
                Some((
                    format!("{} {test}", r.kernel.name),
                    crate::report::decode_hex(hex.trim()).unwrap_or_default(),
                ))
            })
        })
        .collect();
    if scrapes.is_empty() {
        return Ok(());
    }
    ensure_python()?;
    for (what, data) in scrapes {
        let text = String::from_utf8_lossy(&data).into_owned();
        parse_metrics(&text).map_err(|e| Error::msg(format!("{what}: {e}")))?;
        println!("{what}: the scrape parses as OpenMetrics");
    }
    Ok(())
}

/// Cargo unpacks the packages of its local overlay registry into
/// `$CARGO_HOME/registry/src/-<hash>/NAME-VERSION/` and, as registry crates are immutable, never
/// again: a second dry run at the same version would verify the dependent crate against the
/// first run's SDK. Remove those copies of this workspace's own packages first.
fn forget_overlay_unpacks() -> Result<()> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok_or_else(|| Error::msg("neither CARGO_HOME nor HOME is set"))?;
    let Ok(registries) = std::fs::read_dir(home.join("registry/src")) else {
        return Ok(());
    };
    for reg in registries.flatten() {
        // crates.io's is `index.crates.io-…`; local overlays are `-<hash>`.
        if !reg.file_name().to_string_lossy().starts_with('-') {
            continue;
        }
        for pkg in std::fs::read_dir(reg.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = pkg.file_name().to_string_lossy().into_owned();
            let ours = ["oomkit-handlers-", "oomkit-daemon-", "oomkit-"]
                .iter()
                .any(|p| {
                    name.strip_prefix(p)
                        .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
                });
            if ours {
                util::remove_dir_all_if_exists(&pkg.path())?;
            }
        }
    }
    Ok(())
}

fn publish_dry_run() -> Result<()> {
    forget_overlay_unpacks()?;
    util::run(
        Command::new(util::cargo())
            .args(["publish", "--workspace", "--dry-run", "--allow-dirty"])
            .current_dir(repo_root()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kustomization_files_are_found() {
        let text = "resources:\n  - daemonset.yaml\nconfigMapGenerator:\n  - name: x\n    files:\n      - oomkit.toml\n";
        assert_eq!(
            kustomization_files(text),
            vec!["daemonset.yaml".to_string(), "oomkit.toml".to_string()]
        );
    }

    #[test]
    fn daemon_only_crates_are_found_by_exact_name() {
        let tree = "oomkit-handlers v0.1.0 (/src/handlers)\nglobset v0.4.16\nclap_lex v0.7.5\ntoml v0.9.2\n";
        assert_eq!(daemon_only_in(tree), vec!["toml"]);
        assert!(daemon_only_in("oomkit-handlers v0.1.0\nglobset v0.4.16\n").is_empty());
    }
}
