//! The kernels the VM tests boot: Debian `cloud-amd64` kernel packages pinned to exact versions in
//! `integration/kernels.toml`, so every run (and every CI machine) boots the same kernels.
//!
//! Packages come from a private apt (see [`crate::apt`]) and are cached in
//! `.cache/oomkit-vm/debs/`; only the extracted `vmlinuz` is kept in `.cache/oomkit-vm/kernels/`.
//!
//! Signatures: the host (bookworm) keyring may lack the keys that sign newer suites (sid, and
//! trixie once its keys rotate). Rather than `trusted=yes`, a bootstrap apt whose only source is
//! the pinned keyring suite (trixie, signed by keys the bookworm keyring already has) downloads the
//! newer `debian-archive-keyring` package; its keyring plus the host's is then the `signed-by` of
//! every kernel suite. When the chain breaks (a suite signed by keys neither has), `apt-get update`
//! fails with NO_PUBKEY and `--update-pins` with a newer keyring version is the fix.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::apt::{self, Apt, Source};
use crate::util::{self, Error, Result};
use crate::{cache_dir, repo_root};

/// Suites refreshed by `--update-pins` when there is no pins file yet: one kernel each.
const DEFAULT_SUITES: &[&str] = &["bullseye", "bookworm", "trixie", "sid"];
const DEFAULT_KEYRING_SUITE: &str = "trixie";
/// The meta-package whose dependency names the current cloud kernel of a suite.
const META: &str = "linux-image-cloud-amd64";
const KEYRING_PKG: &str = "debian-archive-keyring";

#[derive(Deserialize, Debug, Clone)]
pub struct Pins {
    pub keyring: KeyringPin,
    #[serde(rename = "kernel")]
    pub kernels: Vec<KernelPin>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct KeyringPin {
    pub suite: String,
    pub version: String,
}

#[derive(Deserialize, Debug, Clone)]
pub struct KernelPin {
    /// Short name used with `--kernel` (upstream major.minor).
    pub name: String,
    pub suite: String,
    /// The package holding the kernel image (`linux-image-*`, or `linux-binary-*` on kernels
    /// that split the image out).
    pub package: String,
    pub version: String,
    /// `uname -r` of the kernel.
    pub release: String,
}

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct KernelImage {
    pub name: String,
    pub suite: String,
    pub release: String,
    pub version: String,
    pub vmlinuz: PathBuf,
}

pub fn pins_path() -> PathBuf {
    repo_root().join("integration").join("kernels.toml")
}

pub fn load_pins() -> Result<Pins> {
    let path = pins_path();
    let text = util::read_to_string(&path)?;
    let pins: Pins =
        toml::from_str(&text).map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    if pins.kernels.is_empty() {
        return Err(Error::msg(format!("{} pins no kernels", path.display())));
    }
    Ok(pins)
}

/// Indices of the pins selected by `--kernel` arguments (all if none). A selector matches a
/// pin's name, suite or release prefix; `latest` is the last pin.
pub fn select(pins: &Pins, selectors: &[String]) -> Result<Vec<usize>> {
    if selectors.is_empty() {
        return Ok((0..pins.kernels.len()).collect());
    }
    let mut out = Vec::new();
    for sel in selectors.iter().flat_map(|s| s.split(',')) {
        let idx = if sel == "latest" {
            Some(pins.kernels.len() - 1)
        } else {
            pins.kernels
                .iter()
                .position(|k| k.name == sel || k.suite == sel || k.release.starts_with(sel))
        };
        match idx {
            Some(i) if !out.contains(&i) => out.push(i),
            Some(_) => {}
            None => {
                let known: Vec<&str> = pins.kernels.iter().map(|k| k.name.as_str()).collect();
                return Err(Error::msg(format!(
                    "no pinned kernel matches `{sel}` (known: {}, latest, or a suite)",
                    known.join(", ")
                )));
            }
        }
    }
    Ok(out)
}

/// Lazily set-up private apt: bootstrap keyring first, then the kernel suites.
struct Fetcher<'a> {
    pins: &'a Pins,
    main: Option<Apt>,
}

impl<'a> Fetcher<'a> {
    fn main(&mut self, force_update: bool) -> Result<&Apt> {
        if self.main.is_none() {
            let uri = apt::system_debian_uri()?;
            let keyring = fetch_keyring(&uri, &self.pins.keyring)?;
            let host = apt::host_keyring()?;
            let mut suites: Vec<&str> =
                self.pins.kernels.iter().map(|k| k.suite.as_str()).collect();
            suites.dedup();
            let apt = Apt::new(cache_dir().join("apt").join("main"))?;
            let sources: Vec<Source<'_>> = suites
                .iter()
                .map(|s| Source {
                    suite: s,
                    keyrings: vec![keyring.clone(), host.clone()],
                })
                .collect();
            apt.write_sources(&uri, &sources)?;
            apt.update(false)?;
            self.main = Some(apt);
        }
        let apt = self
            .main
            .as_ref()
            .ok_or_else(|| Error::msg("private apt not initialised"))?;
        if force_update {
            apt.update(true)?;
        }
        Ok(apt)
    }
}

/// The private apt the kernels come from (every pinned suite), for other Debian packages
/// (`cargo xtask bench` fetches its peers, earlyoom and oomd, with it).
pub fn private_apt() -> Result<Apt> {
    let pins = load_pins()?;
    let mut f = Fetcher {
        pins: &pins,
        main: None,
    };
    f.main(false)?;
    f.main
        .take()
        .ok_or_else(|| Error::msg("private apt not initialised"))
}

/// Download and unpack the pinned `debian-archive-keyring`; returns its archive keyring file.
fn fetch_keyring(uri: &str, pin: &KeyringPin) -> Result<PathBuf> {
    let dir = cache_dir().join("keyring").join(&pin.version);
    if let Some(k) = keyring_file(&dir) {
        return Ok(k);
    }
    let boot = bootstrap_apt(uri, &pin.suite)?;
    if !boot.has(KEYRING_PKG, &pin.version) {
        boot.update(true)?;
    }
    let deb = boot.download(
        KEYRING_PKG,
        &pin.version,
        &pin.suite,
        &cache_dir().join("debs"),
    )?;
    dpkg_extract(&deb, &dir)?;
    keyring_file(&dir).ok_or_else(|| {
        Error::msg(format!(
            "{} {} has no usr/share/keyrings/debian-archive-keyring.{{pgp,gpg}}",
            KEYRING_PKG, pin.version
        ))
    })
}

/// An apt whose only source is `suite`, verified with the host's keyring.
fn bootstrap_apt(uri: &str, suite: &str) -> Result<Apt> {
    let apt = Apt::new(cache_dir().join("apt").join("bootstrap"))?;
    let host = apt::host_keyring()?;
    apt.write_sources(
        uri,
        &[Source {
            suite,
            keyrings: vec![host],
        }],
    )?;
    apt.update(false).map_err(|e| {
        Error::msg(format!(
            "{e}\n(the keyring suite {suite} must be verifiable with the host's keyring)"
        ))
    })?;
    Ok(apt)
}

fn keyring_file(dir: &Path) -> Option<PathBuf> {
    ["pgp", "gpg"]
        .iter()
        .map(|ext| dir.join(format!("usr/share/keyrings/debian-archive-keyring.{ext}")))
        .find(|p| util::is_file(p))
}

fn dpkg_extract(deb: &Path, dest: &Path) -> Result<()> {
    util::remove_dir_all_if_exists(dest)?;
    util::create_dir_all(dest)?;
    util::run(Command::new("dpkg").arg("-x").arg(deb).arg(dest))
}

/// Make sure every selected kernel's vmlinuz is in the cache, downloading as needed.
pub fn fetch_all(pins: &Pins, selected: &[usize]) -> Result<Vec<KernelImage>> {
    let mut fetcher = Fetcher { pins, main: None };
    let mut images = Vec::new();
    for &i in selected {
        let k = &pins.kernels[i];
        let vmlinuz = cache_dir()
            .join("kernels")
            .join(format!("{}_{}.vmlinuz", k.package, k.version));
        if !util::is_file(&vmlinuz) {
            fetch_one(&mut fetcher, k, &vmlinuz)?;
        }
        images.push(KernelImage {
            name: k.name.clone(),
            suite: k.suite.clone(),
            release: k.release.clone(),
            version: k.version.clone(),
            vmlinuz,
        });
    }
    Ok(images)
}

fn fetch_one(fetcher: &mut Fetcher<'_>, k: &KernelPin, vmlinuz: &Path) -> Result<()> {
    let debs = cache_dir().join("debs");
    let deb_name = format!("{}_{}_amd64.deb", k.package, k.version);
    let mut deb = debs.join(&deb_name);
    if !util::is_file(&deb) {
        let mut apt = fetcher.main(false)?;
        if !apt.has(&k.package, &k.version) {
            // Lists may be stale; refresh once before giving up.
            apt = fetcher.main(true)?;
            if !apt.has(&k.package, &k.version) {
                return Err(Error::msg(format!(
                    "pinned kernel {} {} is no longer in suite {} (Debian keeps only the newest \
                     version per suite); run `cargo xtask vmtest --update-pins`",
                    k.package, k.version, k.suite
                )));
            }
        }
        deb = apt.download(&k.package, &k.version, &k.suite, &debs)?;
    }
    let tmp = cache_dir()
        .join("kernels")
        .join(format!("{}.unpack", k.package));
    dpkg_extract(&deb, &tmp)?;
    // Newer kernels keep the image at /usr/lib/modules/<release>/vmlinuz, older at /boot.
    let candidates = [
        tmp.join("boot").join(format!("vmlinuz-{}", k.release)),
        tmp.join("usr/lib/modules").join(&k.release).join("vmlinuz"),
        tmp.join("lib/modules").join(&k.release).join("vmlinuz"),
    ];
    let Some(found) = candidates.iter().find(|p| util::is_file(p)) else {
        return Err(Error::msg(format!(
            "{} has no kernel image at boot/vmlinuz-{r} or usr/lib/modules/{r}/vmlinuz",
            deb.display(),
            r = k.release
        )));
    };
    std::fs::rename(found, vmlinuz).map_err(|e| {
        Error::msg(format!(
            "cannot move {} to {}: {e}",
            found.display(),
            vmlinuz.display()
        ))
    })?;
    util::remove_dir_all_if_exists(&tmp)
}

/// Resolve the current kernel of each suite and rewrite the pins file.
pub fn update_pins() -> Result<()> {
    let old = load_pins().ok();
    let suites: Vec<String> = match &old {
        Some(p) => p.kernels.iter().map(|k| k.suite.clone()).collect(),
        None => DEFAULT_SUITES.iter().map(|s| s.to_string()).collect(),
    };
    let keyring_suite = old
        .as_ref()
        .map(|p| p.keyring.suite.clone())
        .unwrap_or_else(|| DEFAULT_KEYRING_SUITE.to_string());
    let uri = apt::system_debian_uri()?;

    let boot = bootstrap_apt(&uri, &keyring_suite)?;
    boot.update(true)?;
    let keyring_version = newest_in_suite(&boot, KEYRING_PKG, &keyring_suite)?;
    let keyring_pin = KeyringPin {
        suite: keyring_suite,
        version: keyring_version,
    };

    let kernels: Vec<KernelPin> = suites
        .iter()
        .map(|s| KernelPin {
            name: String::new(),
            suite: s.clone(),
            package: String::new(),
            version: String::new(),
            release: String::new(),
        })
        .collect();
    let pins = Pins {
        keyring: keyring_pin,
        kernels,
    };
    let mut fetcher = Fetcher {
        pins: &pins,
        main: None,
    };
    let apt = fetcher.main(true)?;
    let mut resolved = Vec::new();
    for suite in &suites {
        resolved.push(resolve_suite(apt, suite)?);
    }
    let pins = Pins {
        keyring: pins.keyring.clone(),
        kernels: resolved,
    };
    let text = render_pins(&pins);
    util::write(&pins_path(), &text)?;
    println!("xtask: wrote {}:\n{text}", pins_path().display());
    Ok(())
}

fn newest_in_suite(apt: &Apt, pkg: &str, suite: &str) -> Result<String> {
    apt.madison(pkg)?
        .into_iter()
        .find(|(_, s)| s == suite)
        .map(|(v, _)| v)
        .ok_or_else(|| Error::msg(format!("no {pkg} in suite {suite}")))
}

/// `linux-image-cloud-amd64` in `suite` → the versioned image package → its `linux-binary-*`
/// dependency if the image is split out.
fn resolve_suite(apt: &Apt, suite: &str) -> Result<KernelPin> {
    let meta_version = newest_in_suite(apt, META, suite)?;
    let deps = apt.depends(META, &meta_version)?;
    let (image, image_version) = deps
        .into_iter()
        .find_map(|(n, v)| (n.starts_with("linux-image-")).then_some((n, v?)))
        .ok_or_else(|| {
            Error::msg(format!(
                "{META} {meta_version} ({suite}) depends on no exact linux-image-*"
            ))
        })?;
    let release = image
        .strip_prefix("linux-image-")
        .unwrap_or(&image)
        .to_string();
    let binary = apt
        .depends(&image, &image_version)?
        .into_iter()
        .find_map(|(n, v)| (n == format!("linux-binary-{release}")).then_some((n, v?)));
    let (package, version) = binary.unwrap_or((image, image_version));
    let upstream = version.split(['-', '+', '~']).next().unwrap_or(&version);
    let name = upstream.split('.').take(2).collect::<Vec<_>>().join(".");
    Ok(KernelPin {
        name,
        suite: suite.to_string(),
        package,
        version,
        release,
    })
}

fn render_pins(p: &Pins) -> String {
    let mut s = String::from(
        "# Debian cloud kernels booted by `cargo xtask vmtest`, pinned to exact package versions so\n\
         # every run boots the same kernels. Regenerate with `cargo xtask vmtest --update-pins`, which\n\
         # resolves each suite's linux-image-cloud-amd64 to the package holding its vmlinuz.\n\
         # `name` is what `--kernel` selects; `release` is the kernel's `uname -r`.\n\n\
         # debian-archive-keyring whose keys verify the newer suites (bootstrapped with the host's\n\
         # keyring from this suite; see xtask/src/kernels.rs).\n",
    );
    s.push_str(&format!(
        "[keyring]\nsuite = \"{}\"\nversion = \"{}\"\n",
        p.keyring.suite, p.keyring.version
    ));
    for k in &p.kernels {
        s.push_str(&format!(
            "\n[[kernel]]\nname = \"{}\"\nsuite = \"{}\"\npackage = \"{}\"\nversion = \"{}\"\nrelease = \"{}\"\n",
            k.name, k.suite, k.package, k.version, k.release
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_pins_parse_back() {
        let p = Pins {
            keyring: KeyringPin {
                suite: "trixie".into(),
                version: "2025.1".into(),
            },
            kernels: vec![KernelPin {
                name: "6.1".into(),
                suite: "bookworm".into(),
                package: "linux-image-6.1.0-50-cloud-amd64".into(),
                version: "6.1.176-1".into(),
                release: "6.1.0-50-cloud-amd64".into(),
            }],
        };
        let back: Pins = toml::from_str(&render_pins(&p)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.kernels[0].release, "6.1.0-50-cloud-amd64");
        assert_eq!(back.keyring.version, "2025.1");
        assert_eq!(select(&back, &["bookworm".into()]).ok(), Some(vec![0]));
        assert!(select(&back, &["4.19".into()]).is_err());
    }
}
