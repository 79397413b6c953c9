//! A private apt instance for fetching Debian kernel packages, isolated from the system's apt.
//!
//! The system's sources and state are never touched: each instance has its own sources list,
//! package lists and cache under `.cache/oomkit-vm/apt/<name>/`, selected with `-o Dir::…`
//! options, and ignores the system's preferences, trusted keys and dpkg status. The only thing
//! taken from the system is the Debian archive URI (from its sources file), so whatever mirror or
//! proxy the machine is set up for is used, and no archive host name is written in this repo.
//!
//! Signatures are verified against explicit `signed-by` keyrings (never `trusted=yes`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{self, Error, Result};

/// One private apt configuration.
pub struct Apt {
    dir: PathBuf,
}

/// A `deb` line of a private sources list.
pub struct Source<'a> {
    pub suite: &'a str,
    /// Keyrings that may sign this suite.
    pub keyrings: Vec<PathBuf>,
}

impl Apt {
    /// A private apt rooted at `dir` (created if needed).
    pub fn new(dir: PathBuf) -> Result<Self> {
        util::create_dir_all(&dir.join("lists").join("partial"))?;
        util::create_dir_all(&dir.join("cache").join("archives").join("partial"))?;
        Ok(Self { dir })
    }

    fn sources_path(&self) -> PathBuf {
        self.dir.join("sources.list")
    }

    /// Write the private sources list (main component, binary packages only).
    pub fn write_sources(&self, uri: &str, sources: &[Source<'_>]) -> Result<()> {
        let mut text = String::from(
            "# Private sources list written by `cargo xtask`; not used by the system's apt.\n",
        );
        for s in sources {
            let keys: Vec<String> = s.keyrings.iter().map(|k| k.display().to_string()).collect();
            text.push_str(&format!(
                "deb [arch=amd64 signed-by={}] {uri} {} main\n",
                keys.join(","),
                s.suite
            ));
        }
        let path = self.sources_path();
        if util::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            util::write(&path, text)?;
            // New sources: the old lists no longer match.
            let _ = std::fs::remove_file(self.dir.join("updated"));
        }
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        let d = &self.dir;
        let mut cmd = Command::new(program);
        let opts = [
            format!("Dir::Etc::SourceList={}", self.sources_path().display()),
            "Dir::Etc::SourceParts=/dev/null".into(),
            format!("Dir::State::Lists={}", d.join("lists").display()),
            format!("Dir::Cache={}", d.join("cache").display()),
            // Ignore what is installed, pinned or trusted on the host.
            "Dir::State::status=/dev/null".into(),
            "Dir::Etc::Preferences=/dev/null".into(),
            "Dir::Etc::PreferencesParts=/dev/null".into(),
            "Dir::Etc::Trusted=/dev/null".into(),
            "Dir::Etc::TrustedParts=/dev/null".into(),
            // Only the Packages indices: no translations, AppStream or command-not-found data.
            "Acquire::Languages=none".into(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false".into(),
            "APT::Architecture=amd64".into(),
            "APT::Architectures=amd64".into(),
            // The cache lives under the repository, which the `_apt` sandbox user may not be
            // able to write; downloads are verified by hash either way.
            "APT::Sandbox::User=root".into(),
        ];
        for o in opts {
            cmd.arg("-o").arg(o);
        }
        cmd
    }

    /// `apt-get update` on the private lists (skipped if already done for these sources,
    /// unless `force`).
    pub fn update(&self, force: bool) -> Result<()> {
        let stamp = self.dir.join("updated");
        if !force && stamp.exists() {
            return Ok(());
        }
        println!(
            "xtask: apt-get update (private lists in {})",
            self.dir.display()
        );
        let mut cmd = self.command("apt-get");
        cmd.args(["-q", "update"]);
        let out = cmd
            .output()
            .map_err(|e| Error::msg(format!("cannot run apt-get: {e}")))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // apt-get update exits 0 on some per-source failures; treat any error line as fatal.
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("E:") || l.starts_with("Err:") || l.contains("NO_PUBKEY"))
            .collect();
        if !out.status.success() || !errors.is_empty() {
            return Err(Error::msg(format!(
                "apt-get update of the private lists ({}) failed:\n{}\n(the archive URI comes from \
                 this machine's apt sources; if they do not point at a Debian archive, set \
                 OOMKIT_DEBIAN_URI)",
                self.sources_path().display(),
                stderr.trim()
            )));
        }
        util::write(&stamp, "")
    }

    /// Is `pkg=version` in the lists?
    pub fn has(&self, pkg: &str, version: &str) -> bool {
        let mut cmd = self.command("apt-cache");
        cmd.args(["show", &format!("{pkg}={version}")]);
        util::output(&mut cmd).is_ok()
    }

    /// Download `pkg=version` into `dest`; returns the .deb path.
    pub fn download(&self, pkg: &str, version: &str, suite: &str, dest: &Path) -> Result<PathBuf> {
        util::create_dir_all(dest)?;
        println!("xtask: apt-get download {pkg}={version} ({suite})");
        let mut cmd = self.command("apt-get");
        cmd.args(["-q", "download", &format!("{pkg}={version}")])
            .current_dir(dest);
        util::output(&mut cmd).map_err(|e| {
            Error::msg(format!(
                "downloading {pkg} {version} from suite {suite} failed: {e}"
            ))
        })?;
        // apt-get names the file pkg_version_arch.deb, with ':' in the version escaped.
        let prefix = format!("{pkg}_{}_", version.replace(':', "%3a"));
        let found = std::fs::read_dir(dest)
            .map_err(|e| Error::msg(format!("cannot list {}: {e}", dest.display())))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            });
        found.ok_or_else(|| {
            Error::msg(format!(
                "apt-get download {pkg}={version} ({suite}) left no {prefix}*.deb in {}",
                dest.display()
            ))
        })
    }

    /// Versions of `pkg` per suite: `(version, suite)`.
    pub fn madison(&self, pkg: &str) -> Result<Vec<(String, String)>> {
        let mut cmd = self.command("apt-cache");
        cmd.args(["madison", pkg]);
        let out = util::output(&mut cmd)?;
        // "pkg | 6.1.176-1 | http://mirror/debian bookworm/main amd64 Packages"
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut cols = l.split('|').map(str::trim);
                let _name = cols.next()?;
                let version = cols.next()?.to_string();
                let origin = cols.next()?;
                let suite = origin
                    .split_whitespace()
                    .nth(1)?
                    .split('/')
                    .next()?
                    .to_string();
                Some((version, suite))
            })
            .collect())
    }

    /// The `Depends:` of `pkg=version` as `(name, exact version if "(= v)")`, first
    /// alternative of each.
    pub fn depends(&self, pkg: &str, version: &str) -> Result<Vec<(String, Option<String>)>> {
        let mut cmd = self.command("apt-cache");
        cmd.args(["show", &format!("{pkg}={version}")]);
        let out = util::output(&mut cmd)?;
        let Some(line) = out.lines().find_map(|l| l.strip_prefix("Depends:")) else {
            return Ok(Vec::new());
        };
        Ok(line
            .split(',')
            .filter_map(|dep| {
                let first = dep.split('|').next()?.trim();
                let (name, rest) = first.split_once(' ').unwrap_or((first, ""));
                let exact = rest
                    .trim()
                    .strip_prefix("(=")
                    .and_then(|v| v.strip_suffix(')'))
                    .map(|v| v.trim().to_string());
                Some((name.to_string(), exact))
            })
            .collect())
    }
}

/// The Debian archive URI the system's apt uses, from `/etc/apt/sources.list.d/*.sources`
/// (deb822) or the one-line `/etc/apt/sources.list`. `OOMKIT_DEBIAN_URI` overrides it.
pub fn system_debian_uri() -> Result<String> {
    if let Ok(uri) = std::env::var("OOMKIT_DEBIAN_URI") {
        return Ok(uri);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in &files {
        if f.extension().is_some_and(|e| e == "sources") {
            if let Ok(text) = std::fs::read_to_string(f) {
                if let Some(uri) = uri_from_deb822(&text) {
                    return Ok(uri);
                }
            }
        }
    }
    let mut one_line = vec![PathBuf::from("/etc/apt/sources.list")];
    one_line.extend(
        files
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "list")),
    );
    for f in &one_line {
        if let Ok(text) = std::fs::read_to_string(f) {
            if let Some(uri) = uri_from_one_line(&text) {
                return Ok(uri);
            }
        }
    }
    Err(Error::msg(
        "found no Debian archive in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list \
         (a `deb` source whose suite has no '-' suffix); set OOMKIT_DEBIAN_URI",
    ))
}

/// A release suite (`bookworm`), not `bookworm-security`/`-updates`/`-backports`.
fn is_release_suite(s: &str) -> bool {
    !s.is_empty() && !s.contains('-') && !s.contains('/')
}

/// First `URIs:` of a `Types: deb` stanza that carries a release suite.
pub fn uri_from_deb822(text: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let mut types = "";
        let mut uris = "";
        let mut suites = "";
        let mut enabled = true;
        for line in stanza.lines() {
            let line = line.trim_end();
            if line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "types" => types = v.trim(),
                    "uris" => uris = v.trim(),
                    "suites" => suites = v.trim(),
                    "enabled" => enabled = v.trim() != "no",
                    _ => {}
                }
            }
        }
        if enabled
            && types.split_whitespace().any(|t| t == "deb")
            && suites.split_whitespace().any(is_release_suite)
        {
            if let Some(u) = uris.split_whitespace().next() {
                return Some(u.trim_end_matches('/').to_string());
            }
        }
    }
    None
}

/// URI of the first `deb [opts] URI suite comp…` line with a release suite.
pub fn uri_from_one_line(text: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            rest = rest.split_once(']')?.1.trim_start();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        if is_release_suite(suite) {
            return Some(uri.trim_end_matches('/').to_string());
        }
    }
    None
}

/// The host's Debian archive keyring (`.pgp` on trixie and later, `.gpg` before).
pub fn host_keyring() -> Result<PathBuf> {
    ["/usr/share/keyrings/debian-archive-keyring.pgp", "/usr/share/keyrings/debian-archive-keyring.gpg"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| util::is_file(p))
        .ok_or_else(|| {
            Error::msg("no /usr/share/keyrings/debian-archive-keyring.{pgp,gpg}; install debian-archive-keyring")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_picks_release_suite() {
        let text = "Types: deb\n# comment\nURIs: http://mirror.invalid/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            uri_from_deb822(text).as_deref(),
            Some("http://mirror.invalid/debian")
        );
        assert_eq!(
            uri_from_deb822("Types: deb\nURIs: http://x.invalid/s\nSuites: bookworm-security\n"),
            None
        );
    }

    #[test]
    fn one_line_skips_options_and_security() {
        let text = "# x\ndeb-src http://a.invalid/debian bookworm main\ndeb [signed-by=/k.gpg] http://m.invalid/debian-security bookworm-security main\ndeb [arch=amd64] http://m.invalid/debian bookworm main\n";
        assert_eq!(
            uri_from_one_line(text).as_deref(),
            Some("http://m.invalid/debian")
        );
    }
}
