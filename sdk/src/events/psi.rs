//! PSI triggers as an event source.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

use rustix::io::Errno;

use crate::cgroup::files::MEMORY_PRESSURE;
use crate::cgroup::{Cgroup, CgroupFile, Pressure, parse};
use crate::error::{Error, Result};
use crate::util::{fmt_u64, io_err};

use super::{ReadFail, SourceFailure, pread_all};

/// The kernel's bounds on a trigger window (`WINDOW_MIN_US`, `WINDOW_MAX_US`).
const WINDOW_MIN_US: u64 = 500_000;
const WINDOW_MAX_US: u64 = 10_000_000;
/// Since 6.5 (and stable backports such as 6.1.42), a trigger created
/// without `CAP_SYS_RESOURCE` must use a window that is a multiple of 2 s:
/// such triggers are served by the 2 s averaging worker, not the real-time
/// poller.
const UNPRIVILEGED_WINDOW_STEP_US: u64 = 2_000_000;
/// The proc PSI file copies at most 32 bytes of a trigger.
const TRIGGER_MAX: usize = 32;
const BUF: usize = 512;

/// The PSI file of system-wide memory pressure.
pub const SYSTEM_MEMORY_PRESSURE: &str = "/proc/pressure/memory";

/// Which PSI line a trigger measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum PsiStall {
    /// `some`: at least one task was stalled.
    Some,
    /// `full`: all non-idle tasks were stalled at once.
    Full,
}

impl PsiStall {
    /// The keyword in the trigger string.
    pub fn keyword(self) -> &'static str {
        match self {
            PsiStall::Some => "some",
            PsiStall::Full => "full",
        }
    }
}

/// A PSI trigger threshold: fire when tasks were stalled for `stall` in
/// total within any `window`.
///
/// Durations are used at microsecond precision (sub-microsecond parts are
/// dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PsiThreshold {
    /// `some` or `full`.
    pub kind: PsiStall,
    /// Stall time within the window that fires the trigger.
    pub stall: Duration,
    /// The tracking window.
    pub window: Duration,
}

impl PsiThreshold {
    /// A `some` threshold.
    pub const fn some(stall: Duration, window: Duration) -> Self {
        PsiThreshold {
            kind: PsiStall::Some,
            stall,
            window,
        }
    }

    /// A `full` threshold.
    pub const fn full(stall: Duration, window: Duration) -> Self {
        PsiThreshold {
            kind: PsiStall::Full,
            stall,
            window,
        }
    }

    fn stall_us(&self) -> u64 {
        u64::try_from(self.stall.as_micros()).unwrap_or(u64::MAX)
    }

    fn window_us(&self) -> u64 {
        u64::try_from(self.window.as_micros()).unwrap_or(u64::MAX)
    }

    /// Checks the threshold against the kernel's rules, for a trigger
    /// created with (`privileged`) or without `CAP_SYS_RESOURCE` in the
    /// effective set:
    /// - the window is 500 ms to 10 s;
    /// - the stall is more than 0 and at most the window;
    /// - unprivileged: the window is a multiple of 2 s (6.5+, and stable
    ///   backports; we require it on every kernel since backports make the
    ///   version number useless for this).
    pub fn validate(&self, privileged: bool) -> Result<()> {
        let (stall, window) = (self.stall_us(), self.window_us());
        let bad = |reason: String| {
            Err(Error::InvalidArgument {
                what: "PSI trigger",
                reason,
            })
        };
        if window < WINDOW_MIN_US {
            return bad(format!(
                "window {window} us is shorter than the kernel's minimum of 500 ms"
            ));
        }
        if window > WINDOW_MAX_US {
            return bad(format!(
                "window {window} us is longer than the kernel's maximum of 10 s"
            ));
        }
        if stall == 0 {
            return bad("stall threshold must be more than 0 us".to_owned());
        }
        if stall > window {
            return bad(format!(
                "stall threshold {stall} us exceeds the window of {window} us"
            ));
        }
        if !privileged && window % UNPRIVILEGED_WINDOW_STEP_US != 0 {
            return bad(format!(
                "window {window} us is not a multiple of 2 s, which the kernel (6.5+ and \
                 stable backports) requires of triggers created without CAP_SYS_RESOURCE"
            ));
        }
        Ok(())
    }

    /// The bytes written to the PSI file: `some|full <stall_us> <window_us>`
    /// followed by a NUL, which the kernel needs: the proc handler
    /// overwrites the last byte written with a terminator, so without one
    /// the last digit of the window would be lost.
    fn encode<'b>(&self, out: &'b mut [u8; TRIGGER_MAX]) -> Option<&'b [u8]> {
        let mut len = 0usize;
        let mut put = |s: &[u8]| -> Option<()> {
            out.get_mut(len..len + s.len())?.copy_from_slice(s);
            len += s.len();
            Some(())
        };
        let mut n = [0u8; 20];
        put(self.kind.keyword().as_bytes())?;
        put(b" ")?;
        put(fmt_u64(&mut n, self.stall_us()))?;
        put(b" ")?;
        put(fmt_u64(&mut n, self.window_us()))?;
        put(b"\0")?;
        out.get(..len)
    }
}

impl std::fmt::Display for PsiThreshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.kind.keyword(),
            self.stall_us(),
            self.window_us()
        )
    }
}

/// Whether the calling thread has `CAP_SYS_RESOURCE` in its effective set,
/// which is what the kernel checks (on the credentials of the opener of the
/// PSI file) to allow windows that are not multiples of 2 s. Note that this
/// is the raw capability bit: root in a user namespace has it; root with
/// the capability dropped does not.
pub fn has_cap_sys_resource() -> bool {
    crate::proc::has_capability(crate::proc::Capability::SysResource)
}

/// A PSI trigger: the kernel wakes the fd with `POLLPRI` when the stall
/// threshold is crossed, at most once per window.
///
/// The trigger is written to an fd opened read-write, which is then polled;
/// closing it (dropping the `PsiTrigger`) removes the trigger. One trigger
/// per fd. When the trigger fires, a second fd, opened read-only at
/// creation, is re-read at offset 0 for the current [`Pressure`] (reading the
/// trigger fd itself would work too, but keeping the two apart leaves the
/// trigger fd purely for polling).
///
/// A trigger whose cgroup was removed polls as `POLLERR|POLLPRI`; the
/// [`Watcher`](super::Watcher) reports it as [`Gone`](super::EventKind::Gone).
///
/// ```no_run
/// use std::time::Duration;
/// use oomkit::events::{PsiThreshold, PsiTrigger};
/// use rustix::event::{PollFd, PollFlags, poll};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // 100 ms of `some` stall within 2 s, system-wide.
/// let th = PsiThreshold::some(Duration::from_millis(100), Duration::from_secs(2));
/// let mut t = PsiTrigger::system_memory(th)?;
/// let mut fds = [PollFd::new(&t, PollFlags::PRI)];
/// poll(&mut fds, None)?;
/// println!("memory pressure: {:?}", t.read()?);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PsiTrigger {
    trigger: CgroupFile,
    reader: CgroupFile,
    threshold: PsiThreshold,
    /// Allocated once at creation (boxed to keep the source small in the
    /// watcher's slab).
    buf: Box<[u8; BUF]>,
}

impl PsiTrigger {
    /// A trigger on `memory.pressure` of `cg`.
    pub fn memory(cg: &Cgroup, threshold: PsiThreshold) -> Result<Self> {
        Self::on_cgroup_file(cg, MEMORY_PRESSURE, threshold)
    }

    /// A trigger on any PSI file of `cg` (`memory.pressure`, `io.pressure`,
    /// `cpu.pressure`, `irq.pressure`).
    pub fn on_cgroup_file(cg: &Cgroup, name: &CStr, threshold: PsiThreshold) -> Result<Self> {
        threshold.validate(has_cap_sys_resource())?;
        let trigger = cg.open_file_rw(name)?;
        let reader = cg.open_file(name)?;
        Self::arm(trigger, reader, threshold)
    }

    /// A trigger on `/proc/pressure/memory`: system-wide memory pressure.
    pub fn system_memory(threshold: PsiThreshold) -> Result<Self> {
        Self::on_path(SYSTEM_MEMORY_PRESSURE, threshold)
    }

    /// A trigger on the PSI file at `path` (e.g. `/proc/pressure/io`).
    pub fn on_path(path: impl AsRef<Path>, threshold: PsiThreshold) -> Result<Self> {
        threshold.validate(has_cap_sys_resource())?;
        let trigger = CgroupFile::open_path(path.as_ref(), true)?;
        let reader = CgroupFile::open_path(path.as_ref(), false)?;
        Self::arm(trigger, reader, threshold)
    }

    fn arm(trigger: CgroupFile, reader: CgroupFile, threshold: PsiThreshold) -> Result<Self> {
        let mut b = [0u8; TRIGGER_MAX];
        let data = threshold
            .encode(&mut b)
            .ok_or_else(|| Error::InvalidArgument {
                what: "PSI trigger",
                reason: format!("`{threshold}` does not fit in {TRIGGER_MAX} bytes"),
            })?;
        let wrap = |e: Errno| {
            crate::fs::cgroup_errno(trigger.path(), e, |e| match e {
                // PSI disabled at boot (`psi=0`).
                Errno::OPNOTSUPP => Error::Unsupported {
                    path: trigger.path().to_owned(),
                },
                e => Error::Write {
                    path: trigger.path().to_owned(),
                    data: threshold.to_string(),
                    source: io_err(e),
                },
            })
        };
        let n = rustix::io::write(&trigger, data).map_err(wrap)?;
        if n != data.len() {
            return Err(wrap(Errno::IO));
        }
        Ok(PsiTrigger {
            trigger,
            reader,
            threshold,
            buf: Box::new([0; BUF]),
        })
    }

    pub(crate) fn read_raw(&mut self) -> Result<Pressure, ReadFail> {
        let data = pread_all(&self.reader, &mut self.buf[..])?;
        parse::pressure(data).map_err(|e| ReadFail::Failed(SourceFailure::Parse(e)))
    }

    /// Reads the pressure file now (through the second, read-only fd).
    /// Does not allocate unless it fails.
    pub fn read(&mut self) -> Result<Pressure> {
        self.read_raw()
            .map_err(|e| e.into_error(self.reader.path()))
    }

    /// The threshold this trigger was created with.
    pub fn threshold(&self) -> PsiThreshold {
        self.threshold
    }

    /// The PSI file's path, for messages.
    pub fn path(&self) -> &Path {
        self.trigger.path()
    }
}

impl AsFd for PsiTrigger {
    /// The trigger fd, to poll for `POLLPRI`.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.trigger.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_trailing_nul() {
        let mut b = [0u8; TRIGGER_MAX];
        let th = PsiThreshold::full(Duration::from_millis(150), Duration::from_secs(10));
        assert_eq!(th.encode(&mut b), Some(&b"full 150000 10000000\0"[..]));
        assert_eq!(th.to_string(), "full 150000 10000000");
    }
}
