//! [`Signal`]: oomkit's own signal type.
//!
//! A newtype over the platform layer's, so the SDK's API does not change
//! when that layer's does, and only signals Linux names can be built (a
//! real-time or out-of-range number is refused when parsed, not when sent).

/// A signal Linux names (`SIGKILL`, `SIGUSR2` …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(rustix::process::Signal);

impl Signal {
    /// `SIGHUP`.
    pub const HUP: Signal = Signal(rustix::process::Signal::HUP);
    /// `SIGINT`.
    pub const INT: Signal = Signal(rustix::process::Signal::INT);
    /// `SIGQUIT`.
    pub const QUIT: Signal = Signal(rustix::process::Signal::QUIT);
    /// `SIGKILL`.
    pub const KILL: Signal = Signal(rustix::process::Signal::KILL);
    /// `SIGUSR1`.
    pub const USR1: Signal = Signal(rustix::process::Signal::USR1);
    /// `SIGUSR2`.
    pub const USR2: Signal = Signal(rustix::process::Signal::USR2);
    /// `SIGTERM`.
    pub const TERM: Signal = Signal(rustix::process::Signal::TERM);
    /// `SIGCONT`.
    pub const CONT: Signal = Signal(rustix::process::Signal::CONT);
    /// `SIGSTOP`.
    pub const STOP: Signal = Signal(rustix::process::Signal::STOP);
    /// `SIGWINCH`.
    pub const WINCH: Signal = Signal(rustix::process::Signal::WINCH);

    /// The signal numbered `n`, if Linux names it.
    pub fn from_raw(n: i32) -> Option<Signal> {
        rustix::process::Signal::from_named_raw(n).map(Signal)
    }

    /// Its number.
    pub fn as_raw(self) -> i32 {
        self.0.as_raw()
    }

    pub(crate) fn to_rustix(self) -> rustix::process::Signal {
        self.0
    }
}
