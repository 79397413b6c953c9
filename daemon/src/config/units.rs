//! Values with units as people write them in the config: sizes (`"64Mi"`), durations (`"5s"`)
//! and signals (`"SIGUSR2"`), each also accepted as a plain number. The schema uses these as
//! `deserialize_with` helpers so that its fields hold typed values (`Duration`, bytes, signal
//! numbers) and the SDK's own config types can be filled directly.

use std::time::Duration;

use serde::Deserialize;

/// A size in bytes: an integer, or a string with a unit as Kubernetes and
/// people write them: `"64Mi"`, `"512MiB"`, `"2Gi"` (powers of 1024),
/// `"100M"`, `"1G"`, `"1.5GB"` (powers of 1000), parsed by the `parse-size`
/// crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteSize(pub u64);

/// A number or a string: how every value with a unit may be written.
#[derive(Deserialize)]
#[serde(untagged)]
enum Raw<N> {
    N(N),
    S(String),
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Raw::<u64>::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"64Mi"`, `"512MiB"`, `"1G"`, `"4096"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::parse_size(s.trim()).map_err(|e| {
        format!("`{s}` is not a size ({e}; e.g. 4096, \"64Ki\", \"512Mi\", \"2GiB\", \"1G\")")
    })
}

/// A size in bytes (see [`ByteSize`]), for `deserialize_with` on a `u64` field.
pub fn bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    ByteSize::deserialize(d).map(|b| b.0)
}

/// A duration: an integer (ms) or a string with units (`"5s"`, `"250ms"`,
/// `"1m 30s"`, parsed by `humantime`). Used with `#[serde(deserialize_with)]`
/// on the `*_ms` keys.
pub fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    millis(d).map(Duration::from_millis)
}

/// [`duration`] in whole milliseconds, for the sections that keep `u64` fields.
pub fn millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Raw::<u64>::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::S(s) => parse_millis(&s).map_err(serde::de::Error::custom),
    }
}

/// Parses `"5s"`, `"250ms"`, `"2m"` into milliseconds.
pub fn parse_millis(s: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}; e.g. \"250ms\", \"5s\", \"2m\")"))?;
    u64::try_from(d.as_millis()).map_err(|_| format!("`{s}` is too long"))
}

/// Whole milliseconds of `d`, as messages print them.
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A signal: a name (`"SIGUSR2"`, `"USR2"`) or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(pub i32);

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Raw::<i32>::deserialize(d)? {
            Raw::N(n) => Ok(Signal(n)),
            Raw::S(s) => parse_signal(&s).map(Signal).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown signal `{s}` (use SIGUSR1, SIGUSR2, SIGQUIT, SIGHUP, SIGPROF or a number)"
                ))
            }),
        }
    }
}

/// A signal number (see [`Signal`]), for `deserialize_with` on an `i32` field.
pub fn signal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    Signal::deserialize(d).map(|s| s.0)
}

/// Parses a signal name (`SIGUSR2`, `usr2`) or number.
pub fn parse_signal(s: &str) -> Option<i32> {
    let up = s.trim().to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    Some(match name {
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "QUIT" => libc::SIGQUIT,
        "HUP" => libc::SIGHUP,
        "PROF" => libc::SIGPROF,
        "INT" => libc::SIGINT,
        "TERM" => libc::SIGTERM,
        "WINCH" => libc::SIGWINCH,
        n => return n.parse().ok(),
    })
}
