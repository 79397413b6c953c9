//! The peers `cargo xtask bench` compares oomkit with: Debian's `earlyoom` and `oomd` packages,
//! fetched with the harness's private apt (the one the kernels come from), unpacked with
//! `dpkg -x`, and copied into an initramfs overlay with every shared library they need — resolved
//! by `ldd` on the host, whose glibc is the one these (bookworm) builds were linked against.
//!
//! Versions are pinned, like the kernels, so every run measures the same binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::apt::Apt;
use crate::util::{self, Error, Result};
use crate::{cache_dir, kernels};

/// (package, version, suite) of the peers and libraries the host lacks.
const PEER_DEBS: [(&str, &str, &str); 3] = [
    ("earlyoom", "1.7-1+b1", "bookworm"),
    ("oomd", "0.5.0-1.2+b1", "bookworm"),
    ("libjsoncpp25", "1.9.5-4", "bookworm"),
];

/// Binaries placed in the guest's `/usr/bin`.
const PEER_BINS: [&str; 2] = ["earlyoom", "oomd"];

/// What the overlay holds, for the report.
pub struct Peers {
    pub overlay: PathBuf,
    pub versions: Vec<(String, String)>,
    pub problems: Vec<String>,
}

/// Fetch and unpack the peers; returns the overlay directory (`usr/bin`, `lib`, `lib64`).
pub fn prepare() -> Result<Peers> {
    let base = cache_dir().join("peers");
    let unpack = base.join("unpack");
    let overlay = base.join("overlay");
    util::remove_dir_all_if_exists(&overlay)?;
    util::create_dir_all(&overlay.join("usr/bin"))?;
    util::create_dir_all(&overlay.join("lib/x86_64-linux-gnu"))?;
    util::create_dir_all(&overlay.join("lib64"))?;
    util::create_dir_all(&unpack)?;
    let debs = cache_dir().join("debs");
    let mut problems = Vec::new();
    let mut versions = Vec::new();
    let mut apt: Option<Apt> = None;
    for (pkg, ver, suite) in PEER_DEBS {
        let name = format!("{pkg}_{}_amd64.deb", ver.replace(':', "%3a"));
        let mut deb = debs.join(&name);
        if !util::is_file(&deb) {
            if apt.is_none() {
                apt = Some(kernels::private_apt()?);
            }
            let Some(a) = apt.as_ref() else {
                return Err(Error::msg("private apt not initialised"));
            };
            match a.download(pkg, ver, suite, &debs) {
                Ok(d) => deb = d,
                Err(e) => {
                    problems.push(format!("{pkg} {ver}: {e}"));
                    continue;
                }
            }
        }
        util::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpack))?;
        versions.push((pkg.to_string(), ver.to_string()));
    }
    let libdirs = [
        unpack.join("usr/lib/x86_64-linux-gnu"),
        unpack.join("lib/x86_64-linux-gnu"),
    ];
    let ld_path = libdirs
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    for bin in PEER_BINS {
        let exe = unpack.join("usr/bin").join(bin);
        if !util::is_file(&exe) {
            problems.push(format!("{bin}: not in its package"));
            continue;
        }
        let out = util::output(
            Command::new("ldd")
                .arg(&exe)
                .env("LD_LIBRARY_PATH", &ld_path),
        )?;
        let mut missing = Vec::new();
        for line in out.lines() {
            let line = line.trim();
            if line.contains("not found") {
                missing.push(line.to_string());
                continue;
            }
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or the loader's own line.
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line
                    .split_whitespace()
                    .next()
                    .filter(|p| p.starts_with('/')),
            };
            let Some(path) = path.filter(|p| p.starts_with('/')) else {
                continue;
            };
            let src = Path::new(path);
            let Some(fname) = src.file_name() else {
                continue;
            };
            let dest = if path.contains("ld-linux") {
                overlay.join("lib64").join(fname)
            } else {
                overlay.join("lib/x86_64-linux-gnu").join(fname)
            };
            // Dereference symlinks: the guest gets plain files under the SONAME.
            std::fs::copy(src, &dest).map_err(|e| {
                Error::msg(format!(
                    "cannot copy {} to {}: {e}",
                    src.display(),
                    dest.display()
                ))
            })?;
        }
        if !missing.is_empty() {
            problems.push(format!(
                "{bin}: unresolved libraries {}",
                missing.join(", ")
            ));
            continue;
        }
        std::fs::copy(&exe, overlay.join("usr/bin").join(bin))
            .map_err(|e| Error::msg(format!("cannot copy {}: {e}", exe.display())))?;
    }
    Ok(Peers {
        overlay,
        versions,
        problems,
    })
}
