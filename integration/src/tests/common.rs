//! Helpers shared by the feature tests: the kernel version, and the rule that a test which skips
//! for a missing feature must find the SDK's probe reporting it missing too.

use std::time::Duration;

use oomkit::Cgroup;
use oomkit::probe::{Features, Support};

use crate::harness::{Fail, Outcome, wait_for};

/// `(major, minor)` of the running kernel.
pub fn kernel_version() -> (u32, u32) {
    parse_version(&crate::runner::release())
}

/// `"5.10.0-32-cloud-amd64"` → `(5, 10)`.
pub fn parse_version(release: &str) -> (u32, u32) {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Probe features on `cg`.
pub fn features(cg: &Cgroup) -> Features {
    Features::probe(cg)
}

/// Check a feature against the kernel version it appeared in. On kernels that have it, the probe
/// must say `Yes` and `Ok(None)` is returned (go on testing); on older kernels the probe must say
/// `No` and the skip outcome is returned. Any disagreement fails the test.
pub fn require(feature: &str, probed: Support, since: (u32, u32)) -> Result<Option<Outcome>, Fail> {
    let v = kernel_version();
    let expected = if v >= since {
        Support::Yes
    } else {
        Support::No
    };
    if probed != expected {
        return Err(Fail(format!(
            "probe reports {feature} = {probed} on {}.{}, expected {expected} (in Linux since {}.{})",
            v.0, v.1, since.0, since.1
        )));
    }
    Ok((expected == Support::No).then(|| {
        Outcome::Skip(format!(
            "{feature} needs Linux {}.{}+ (probe agrees: missing on {}.{})",
            since.0, since.1, v.0, v.1
        ))
    }))
}

/// Wait until `memory.current` of `cg` satisfies `ok`; returns the value.
pub fn wait_memory_current(
    cg: &Cgroup,
    what: &str,
    timeout: Duration,
    ok: impl Fn(u64) -> bool,
) -> Result<u64, Fail> {
    wait_for(what, timeout, Duration::from_millis(10), || {
        let c = cg.memory_current()?;
        Ok(ok(c).then_some(c))
    })
}

/// MemAvailable in KiB from /proc/meminfo.
pub fn mem_available_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Wait until /proc/meminfo's MemAvailable is at least `kib`; returns how long it took.
pub fn wait_for_mem_available(kib: u64, timeout: Duration) -> Result<Duration, Fail> {
    let start = std::time::Instant::now();
    wait_for(
        "MemAvailable to recover",
        timeout,
        Duration::from_millis(5),
        || {
            let avail = mem_available_kib().unwrap_or(0);
            Ok((avail >= kib).then(|| start.elapsed()))
        },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions() {
        assert_eq!(super::parse_version("5.10.0-32-cloud-amd64"), (5, 10));
        assert_eq!(super::parse_version("6.12.107+deb13-cloud-amd64"), (6, 12));
        assert_eq!(super::parse_version("7.2.13+deb14-cloud-amd64"), (7, 2));
    }
}
