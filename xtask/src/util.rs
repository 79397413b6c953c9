//! Small helpers: one error type carrying a readable message, and process running.

use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};

/// An error message meant for a human; every fallible step adds what it was doing.
#[derive(Debug)]
pub struct Error(String);

impl Error {
    pub fn msg(m: impl Into<String>) -> Self {
        Self(m.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Attach context to any displayable error.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error(format!("{}: {e}", what())))
    }
}

/// The cargo that is running us (so `cargo +toolchain xtask` stays on that toolchain).
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run with inherited stdio; `Ok(false)` if it ran and failed.
pub fn run_status(cmd: &mut Command) -> Result<bool> {
    let status = cmd
        .status()
        .context(|| format!("cannot run `{}`", describe(cmd)))?;
    Ok(status.success())
}

/// Run with inherited stdio; an error (naming the command) if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    if run_status(cmd)? {
        Ok(())
    } else {
        Err(Error(format!("`{}` failed", describe(cmd))))
    }
}

/// Run and capture stdout; on failure the error includes stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context(|| format!("cannot run `{}`", describe(cmd)))?;
    if !out.status.success() {
        return Err(Error(format!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Is `name` an executable on `PATH`?
pub fn on_path(name: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|d| is_file(&d.join(name)))
}

pub fn is_file(p: &Path) -> bool {
    p.metadata().map(|m| m.is_file()).unwrap_or(false)
}

pub fn create_dir_all(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).context(|| format!("cannot create {}", p.display()))
}

pub fn read_to_string(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).context(|| format!("cannot read {}", p.display()))
}

pub fn write(p: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(p, data).context(|| format!("cannot write {}", p.display()))
}

pub fn remove_dir_all_if_exists(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error(format!("cannot remove {}: {e}", p.display()))),
    }
}

/// Is the ELF file at `p` statically linked (no PT_INTERP program header)?
pub fn elf_is_static(p: &Path) -> Result<bool> {
    let data = std::fs::read(p).context(|| format!("cannot read {}", p.display()))?;
    let bad = || {
        Error(format!(
            "{} is not a 64-bit little-endian ELF file",
            p.display()
        ))
    };
    if data.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        return Err(bad());
    }
    let u64_at = |o: usize| -> Option<u64> {
        data.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let u16_at = |o: usize| -> Option<u16> {
        data.get(o..o + 2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_le_bytes)
    };
    let phoff = u64_at(0x20).ok_or_else(bad)?;
    let phentsize = u16_at(0x36).ok_or_else(bad)?;
    let phnum = u16_at(0x38).ok_or_else(bad)?;
    for i in 0..u64::from(phnum) {
        let off = usize::try_from(phoff + i * u64::from(phentsize)).map_err(|_| bad())?;
        let p_type = data
            .get(off..off + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(bad)?;
        if p_type == 3 {
            // PT_INTERP: needs a dynamic loader.
            return Ok(false);
        }
    }
    Ok(true)
}
