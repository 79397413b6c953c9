//! Host tools the VM tests need, installed with apt-get on a fresh (Debian/Ubuntu) machine.
//!
//! CI starts from a bare machine, so `vmtest` installs what is missing itself instead of relying
//! on a setup script. Nothing is installed when the tools are already present.

use std::path::Path;
use std::process::Command;

use crate::util::{self, Error, Result};

/// (what we need, how we check it, the Debian package providing it)
const TOOLS: &[(&str, &str, &str)] = &[
    ("qemu", "qemu-system-x86_64", "qemu-system-x86"),
    ("busybox (static)", "/bin/busybox", "busybox-static"),
    ("cpio", "cpio", "cpio"),
    ("dpkg-deb", "dpkg-deb", "dpkg"),
    ("apt-get", "apt-get", "apt"),
    // The guest's heap_victim links jemalloc, which tikv-jemalloc-sys builds with make.
    ("make", "make", "make"),
];

/// The static busybox copied into every initramfs.
pub const BUSYBOX: &str = "/bin/busybox";

fn present(check: &str) -> bool {
    if check.starts_with('/') {
        if check == BUSYBOX {
            return util::elf_is_static(Path::new(check)).unwrap_or(false);
        }
        util::is_file(Path::new(check))
    } else {
        util::on_path(check)
    }
}

/// Make sure every tool is available, installing the missing ones unless `no_install`.
pub fn ensure_tools(no_install: bool) -> Result<()> {
    let missing: Vec<_> = TOOLS
        .iter()
        .filter(|(_, check, _)| !present(check))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let pkgs: Vec<&str> = missing.iter().map(|(_, _, pkg)| *pkg).collect();
    let what: Vec<&str> = missing.iter().map(|(w, _, _)| *w).collect();
    if no_install {
        return Err(Error::msg(format!(
            "missing host tools: {} (install the packages {})",
            what.join(", "),
            pkgs.join(" ")
        )));
    }
    if !util::on_path("apt-get") {
        return Err(Error::msg(format!(
            "missing host tools {} and no apt-get to install {}",
            what.join(", "),
            pkgs.join(" ")
        )));
    }
    println!("xtask: missing host tools: {}", what.join(", "));
    let apt = |args: &[&str]| -> Result<()> {
        println!("xtask: running apt-get {}", args.join(" "));
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        // apt-get waits for the dpkg lock itself if another install is running.
        cmd.args(["-o", "DPkg::Lock::Timeout=600"]);
        util::run(&mut cmd)
    };
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(&pkgs);
    if apt(&install).is_err() {
        // A fresh machine may have no package lists yet.
        apt(&["update"])?;
        apt(&install).map_err(|e| {
            Error::msg(format!(
                "installing {} failed ({e}); are you root?",
                pkgs.join(" ")
            ))
        })?;
    }
    let still: Vec<_> = TOOLS
        .iter()
        .filter(|(_, check, _)| !present(check))
        .map(|(w, _, _)| *w)
        .collect();
    if !still.is_empty() {
        return Err(Error::msg(format!(
            "still missing after apt-get install: {}",
            still.join(", ")
        )));
    }
    println!("xtask: host tools installed");
    Ok(())
}
