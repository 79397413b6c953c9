//! One error type for the whole SDK.
//!
//! A userspace OOM handler meets two kinds of failure. Races that are part of
//! normal life — the cgroup was removed between the event and the read
//! ([`Error::CgroupGone`]), the process exited before we signalled it
//! ([`Error::ProcessGone`]), the kernel is too old to have a file
//! ([`Error::Unsupported`]) — and real failures (permissions, malformed data).
//! They are distinct variants so callers can match the races cheaply, and every
//! variant carries the path (and, for writes, the data written) so a log line
//! is enough to understand what went wrong.
//!
//! Parsers are pure and return [`ParseError`], which is `Copy` and allocates
//! nothing: the hot path (event → re-read → kill) must not touch the heap even
//! when it meets garbage. The file layer wraps it into [`Error::Parse`] with
//! the path.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the SDK.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cgroup was removed (or its files vanished) while we held it.
    #[error("{path}: cgroup is gone")]
    CgroupGone {
        /// Path of the cgroup directory or file that vanished.
        path: PathBuf,
    },
    /// The process exited (or its PID was never valid).
    #[error("process {pid} is gone")]
    ProcessGone {
        /// The PID we tried to reach.
        pid: i32,
    },
    /// The file does not exist in a live cgroup: this kernel or configuration
    /// does not provide it (for example `cgroup.kill` before 5.14).
    #[error("{path}: not provided by this kernel or controller configuration")]
    Unsupported {
        /// The missing file.
        path: PathBuf,
    },
    /// The kernel does not have this system call (`ENOSYS`; for example
    /// `pidfd_open` before 5.3).
    #[error("{call}: not provided by this kernel")]
    SyscallUnsupported {
        /// The system call, for example `pidfd_open`.
        call: &'static str,
    },
    /// A cgroup id the loop's host no longer (or never) had attached: the
    /// cgroup left the managed tree.
    #[error("cgroup #{index} is not attached to the host (it left the managed tree)")]
    CgroupDetached {
        /// The id's slot index.
        index: usize,
    },
    /// Every victim slot of the host is taken: that many kills are still
    /// being waited for.
    #[error("{limit} victims are already in flight")]
    TooManyVictims {
        /// The number of slots.
        limit: usize,
    },
    /// An I/O operation on a file failed.
    #[error("{path}: {op} failed: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What we were doing.
        op: Op,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },
    /// Writing a value into a control file failed.
    #[error("{path}: writing {data:?} failed: {source}")]
    Write {
        /// The control file.
        path: PathBuf,
        /// Exactly what we wrote.
        data: String,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },
    /// A kernel file held content we could not parse.
    #[error("{path}: {source}")]
    Parse {
        /// The file that was read.
        path: PathBuf,
        /// What was wrong, and on which line.
        #[source]
        source: ParseError,
    },
    /// A path that is not (or may not be used as) a cgroup under a cgroup2 mount.
    #[error("{path}: {reason}")]
    InvalidPath {
        /// The offending path.
        path: PathBuf,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// An argument that the kernel would reject, caught before the syscall.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// The argument.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// The host the loop runs on does not implement this effect (a
    /// read-only or test host; see `engine::Act`).
    #[error("this host cannot {op}")]
    HostCannot {
        /// The effect, for example `set_max`.
        op: &'static str,
    },
    /// A system call not tied to a file failed.
    #[error("{call} failed: {source}")]
    Sys {
        /// The system call (for example `pidfd_open`).
        call: &'static str,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },
}

/// The operation that failed in an [`Error::Io`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// `open`/`openat`.
    Open,
    /// `read`/`pread`.
    Read,
    /// `write`.
    Write,
    /// Directory listing.
    ReadDir,
    /// Extended attribute read.
    GetXattr,
    /// Extended attribute write or removal.
    SetXattr,
    /// `stat`/`statx`.
    Stat,
    /// `epoll_ctl` registration or `poll` on the file.
    Watch,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::ReadDir => "reading directory",
            Op::GetXattr => "reading xattr",
            Op::SetXattr => "writing xattr",
            Op::Stat => "stat",
            Op::Watch => "watch",
        })
    }
}

/// A parse failure in a kernel file, without the path (see [`Error::Parse`]).
///
/// `Copy` and allocation-free so parsers can run on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    /// 1-based line number where the problem was found.
    pub line: u32,
    /// What was wrong.
    pub kind: ParseErrorKind,
}

/// What was wrong with a kernel file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The file was empty where a value was required.
    #[error("file is empty")]
    Empty,
    /// A line was not of the form the file uses (for example `key value`).
    #[error("malformed line")]
    MalformedLine,
    /// A value was not a valid unsigned integer (or `max` where allowed).
    #[error("invalid number")]
    InvalidNumber,
    /// A value was not a valid decimal (PSI averages).
    #[error("invalid decimal")]
    InvalidDecimal,
    /// A required key was absent.
    #[error("missing required key `{0}`")]
    MissingKey(&'static str),
    /// A key appeared twice.
    #[error("duplicate key `{0}`")]
    DuplicateKey(&'static str),
    /// The content is not valid UTF-8 where text was expected.
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// The file was larger than the buffer reserved for it (the read was truncated).
    #[error("content larger than the read buffer")]
    TooLarge,
}

impl ParseError {
    /// A parse error on `line` (1-based).
    pub const fn new(line: u32, kind: ParseErrorKind) -> Self {
        Self { line, kind }
    }
}

impl Error {
    /// True for races a handler must expect and tolerate: the cgroup or the
    /// process went away underneath us.
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            Error::CgroupGone { .. } | Error::ProcessGone { .. } | Error::CgroupDetached { .. }
        )
    }

    /// True when the kernel lacks the file or feature.
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            Error::Unsupported { .. } | Error::SyscallUnsupported { .. }
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>, op: Op, source: impl Into<io::Error>) -> Self {
        Error::Io {
            path: path.into(),
            op,
            source: source.into(),
        }
    }

    pub(crate) fn sys(call: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Sys {
            call,
            source: source.into(),
        }
    }
}
