//! The guest side as seen from the host: build the static test binary, pack the initramfs, and
//! turn files the guest sent back (fixture capture) into files under `sdk/fixtures/`.
//!
//! The initramfs holds a static busybox, the static `oomkit-guest` binary, the static `oomkit`
//! daemon, `heap_victim` demo and `supervise` example (which the end-to-end and runtime scenarios
//! run for real) and a tiny `/init`
//! script. The binary is built for the explicit target `x86_64-unknown-linux-gnu` with
//! `+crt-static`: with `--target`, cargo keeps these artifacts under `target/x86_64-unknown-linux-gnu`
//! and the host build in `target/debug` is not invalidated by the different RUSTFLAGS.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::report::KernelRun;
use crate::util::{self, Context, Error, Result};
use crate::{cache_dir, host, repo_root};

pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";
const GUEST_PACKAGE: &str = "oomkit-integration";
const GUEST_BIN: &str = "oomkit-guest";
/// Every binary packed into `/bin` of the initramfs: (package, cargo target selector, name).
/// All are built in one cargo invocation, static, like the guest binary. `supervise` is an
/// example of the SDK (`examples/examples/supervise.rs`) that the VM tests run for real, as are
/// the embedding examples (`epoll_embed`, `tokio_embed`, `custom_handler`).
/// Host test binaries whose real-cgroup tests are opt-in on the host (`OOMKIT_HOST_CGROUP_TESTS=1`,
/// because they would write into the host's cgroup2 mount): built static like the guest binaries
/// and packed under [`REAL_CGROUP_TESTS_DIR`], where the guest test `host_tests_real_cgroup` runs
/// them with the opt-in set, on a cgroup2 mount that is the guest's own. (package, test target).
const REAL_CGROUP_TESTS: [(&str, &str); 2] = [
    ("oomkit", "kill_group"),
    ("oomkit-daemon", "daemon_signals"),
];

/// Where the host test binaries of [`REAL_CGROUP_TESTS`] go in the initramfs (the guest side
/// reads the same path: `integration/src/tests/hosttests.rs`).
const REAL_CGROUP_TESTS_DIR: &str = "hosttests";

const GUEST_BINARIES: [(&str, &str, &str); 7] = [
    (GUEST_PACKAGE, "--bin", GUEST_BIN),
    ("oomkit-daemon", "--bin", "oomkit"),
    ("oomkit-examples", "--bin", "heap_victim"),
    ("oomkit-examples", "--example", "supervise"),
    ("oomkit-examples", "--example", "epoll_embed"),
    ("oomkit-examples", "--example", "tokio_embed"),
    ("oomkit-examples", "--example", "custom_handler"),
];

/// PID 1 of the test VM: mount the kernel filesystems and cgroup2, enable the memory and pids
/// controllers for children of the root cgroup, run the guest binary (which reads its mode from
/// /proc/cmdline and reports on /dev/ttyS1), then power off. If anything here fails the guest
/// binary still runs and reports the broken precondition as a test failure.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
mount -t tmpfs tmp /tmp
mount -t cgroup2 none /sys/fs/cgroup
echo "+memory +pids" > /sys/fs/cgroup/cgroup.subtree_control
echo -1000 > /proc/self/oom_score_adj
/bin/oomkit-guest
echo "oomkit-init: oomkit-guest exited with status $?"
sync
poweroff -f
"#;

/// Build the guest binary and pack the initramfs (with the host tests of
/// [`REAL_CGROUP_TESTS`]); returns the cpio path.
pub fn build_initramfs() -> Result<PathBuf> {
    let tests = build_real_cgroup_tests()?;
    pack_initramfs("initramfs", None, &tests)
}

/// Like [`build_initramfs`], in `.cache/oomkit-vm/<name>/` (so it does not race with a
/// concurrent `vmtest`), with the tree under `overlay` (peer binaries and their shared
/// libraries, for `cargo xtask bench`) copied over the root.
///
/// The tree is staged in a folder of this process and the archive renamed into place, so two
/// runs from one checkout never boot a half-written initramfs (a VM already booting keeps the
/// file it opened).
pub fn build_initramfs_at(name: &str, overlay: Option<&Path>) -> Result<PathBuf> {
    pack_initramfs(name, overlay, &[])
}

/// [`build_initramfs_at`], plus `tests` (name, executable) under `/hosttests`.
fn pack_initramfs(
    name: &str,
    overlay: Option<&Path>,
    tests: &[(String, PathBuf)],
) -> Result<PathBuf> {
    let binaries = build_guest_binaries()?;
    let dir = cache_dir().join(name);
    let root = dir.join(format!("root.{}", std::process::id()));
    util::remove_dir_all_if_exists(&root)?;
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        util::create_dir_all(&root.join(d))?;
    }
    copy_exec(Path::new(host::BUSYBOX), &root.join("bin/busybox"))?;
    for (name, exe) in &binaries {
        copy_exec(exe, &root.join("bin").join(name))?;
    }
    if !tests.is_empty() {
        let dir = root.join(REAL_CGROUP_TESTS_DIR);
        util::create_dir_all(&dir)?;
        for (name, exe) in tests {
            copy_exec(exe, &dir.join(name))?;
        }
    }
    util::write(&root.join("init"), INIT)?;
    set_mode(&root.join("init"), 0o755)?;
    if let Some(o) = overlay {
        let mut src = o.as_os_str().to_owned();
        src.push("/.");
        util::run(Command::new("cp").arg("-a").arg(src).arg(&root))?;
    }

    let mut entries = Vec::new();
    collect(&root, Path::new("."), &mut entries)?;
    let cpio_path = dir.join("initramfs.cpio");
    let staged = dir.join(format!("initramfs.cpio.{}", std::process::id()));
    let out =
        std::fs::File::create(&staged).context(|| format!("cannot create {}", staged.display()))?;
    let mut child = Command::new("cpio")
        .args(["--create", "--format=newc", "--owner=0:0", "--quiet"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .context(|| "cannot run cpio".to_string())?;
    {
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| Error::msg("cpio has no stdin"))?;
        for e in &entries {
            writeln!(stdin, "{}", e.display())
                .context(|| "writing the cpio file list".to_string())?;
        }
    }
    let status = child.wait().context(|| "waiting for cpio".to_string())?;
    if !status.success() {
        return Err(Error::msg(format!(
            "cpio failed ({status}) packing {}",
            root.display()
        )));
    }
    std::fs::rename(&staged, &cpio_path).context(|| {
        format!(
            "cannot rename {} to {}",
            staged.display(),
            cpio_path.display()
        )
    })?;
    util::remove_dir_all_if_exists(&root)?;
    Ok(cpio_path)
}

/// Directories before their contents, sorted so the archive is reproducible.
fn collect(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let dir = base.join(rel);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .collect();
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let p = rel.join(e.file_name());
        out.push(p.clone());
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect(base, &p, out)?;
        }
    }
    Ok(())
}

fn copy_exec(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    set_mode(to, 0o755)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .context(|| format!("cannot chmod {}", p.display()))
}

/// `cargo build` the static guest binaries; returns (name, path) of each (from cargo's JSON
/// messages, so `CARGO_TARGET_DIR` and friends are honoured).
fn build_guest_binaries() -> Result<Vec<(&'static str, PathBuf)>> {
    let names: Vec<&str> = GUEST_BINARIES.iter().map(|(_, _, b)| *b).collect();
    println!(
        "xtask: building {} (static, --target {GUEST_TARGET})",
        names.join(", ")
    );
    let mut args = vec!["build", "--release"];
    for (package, selector, bin) in GUEST_BINARIES {
        args.extend(["--package", package, selector, bin]);
    }
    let found = build_static(args, "the guest binaries", &names, false)?;
    Ok(GUEST_BINARIES
        .iter()
        .map(|(_, _, bin)| *bin)
        .zip(found.into_iter().map(|(_, exe)| exe))
        .collect())
}

/// `cargo test --no-run` the host test targets of [`REAL_CGROUP_TESTS`], static and in the release
/// profile like the guest binaries (so their dependencies, and the daemon binary that
/// `daemon_signals` runs, are the ones already built); returns (target name, executable).
fn build_real_cgroup_tests() -> Result<Vec<(String, PathBuf)>> {
    let names: Vec<&str> = REAL_CGROUP_TESTS.iter().map(|(_, t)| *t).collect();
    println!(
        "xtask: building host tests {} for the guest (static, --target {GUEST_TARGET})",
        names.join(", ")
    );
    let mut args = vec!["test", "--no-run", "--release"];
    for (package, test) in REAL_CGROUP_TESTS {
        args.extend(["--package", package, "--test", test]);
    }
    build_static(args, "the host tests for the guest", &names, true)
}

/// Run cargo with `args` (`build …` or `test --no-run …`) for [`GUEST_TARGET`], static
/// (`+crt-static`), and return (name, executable) of each target in `names`, in that order,
/// from cargo's JSON messages (so `CARGO_TARGET_DIR` and friends are honoured). `tests`: take
/// the test harness executables, not the plain ones.
fn build_static(
    mut args: Vec<&str>,
    what: &str,
    names: &[&str],
    tests: bool,
) -> Result<Vec<(String, PathBuf)>> {
    args.extend([
        "--target",
        GUEST_TARGET,
        "--message-format=json-render-diagnostics",
    ]);
    let out = Command::new(util::cargo())
        .args(&args)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=debuginfo",
        )
        .current_dir(repo_root())
        .stderr(Stdio::inherit())
        .output()
        .context(|| format!("cannot run cargo {}", args[0]))?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "building {what} ({}) failed",
            names.join(", ")
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let artifacts: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && (!tests || v["profile"]["test"] == true))
        .collect();
    let mut found = Vec::new();
    for name in names {
        let exe = artifacts
            .iter()
            .filter(|v| v["target"]["name"] == *name)
            .find_map(|v| v["executable"].as_str().map(PathBuf::from))
            .ok_or_else(|| {
                Error::msg(format!(
                    "cargo {} reported no executable for {name}",
                    args[0]
                ))
            })?;
        if !util::elf_is_static(&exe)? {
            return Err(Error::msg(format!(
                "{} is not statically linked",
                exe.display()
            )));
        }
        found.push((name.to_string(), exe));
    }
    Ok(found)
}

/// Write the files a fixture-capture run sent into `sdk/fixtures/<release>/`; returns how many.
pub fn write_fixtures(run: &KernelRun) -> Result<usize> {
    if !run.completed {
        return Err(Error::msg(
            "the fixture capture did not complete; nothing written".to_string(),
        ));
    }
    if run.files.is_empty() {
        return Err(Error::msg("the guest sent no fixture files".to_string()));
    }
    let release = run
        .guest_release
        .as_deref()
        .ok_or_else(|| Error::msg("the guest did not report its kernel release"))?;
    if release.contains('/') || release.starts_with('.') {
        return Err(Error::msg(format!("bad kernel release {release:?}")));
    }
    let base = repo_root().join("sdk").join("fixtures").join(release);
    util::remove_dir_all_if_exists(&base)?;
    for (rel, data) in &run.files {
        let relp = Path::new(rel);
        if relp.is_absolute()
            || relp
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Error::msg(format!("guest sent a bad fixture path {rel:?}")));
        }
        let path = base.join(relp);
        if let Some(parent) = path.parent() {
            util::create_dir_all(parent)?;
        }
        util::write(&path, data)?;
    }
    Ok(run.files.len())
}
