//! Starting a program inside a cgroup: `clone3(CLONE_INTO_CGROUP)`, with the
//! `cgroup.procs` fallback, behind one call ([`Spawn::spawn_into`]).
//!
//! # Why
//!
//! A supervisor that starts a process and then moves it (`echo PID >
//! cgroup.procs` from the parent) leaves a window in which the new process
//! runs, allocates and forks in the *parent's* cgroup: its first pages are
//! charged to the wrong limit, and a child forked in the window stays behind.
//! Two ways close the window:
//!
//! * `clone3(2)` with `CLONE_INTO_CGROUP` (5.7+) creates the child directly
//!   in the target cgroup, atomically, and with `CLONE_PIDFD` hands the
//!   parent a pidfd in the same call.
//! * Before 5.7, or where a seccomp profile hides clone3 (it answers
//!   `ENOSYS`), the child writes `0` to the target's `cgroup.procs` itself,
//!   after the fork and before `execve`: the program is charged to the
//!   cgroup from its first instruction. The parent opens `cgroup.procs`
//!   before forking, so the child only makes system calls.
//!
//! [`Spawn::spawn_into`] tries the first and falls back to the second
//! ([`Placement`] says which one was used). Everything the child needs
//! (argument and environment vectors, the resolved program path, stdio fds)
//! is built before the fork: after a fork in a multi-threaded process the
//! child may not allocate. A failure in the child (joining the cgroup,
//! `execve`) comes back through a close-on-exec pipe as an [`Error`] naming
//! the step and the errno.
//!
//! ```no_run
//! use oomkit::Cgroup;
//! use oomkit::spawn::Spawn;
//! # fn main() -> oomkit::Result<()> {
//! let ctr = Cgroup::open("/sys/fs/cgroup/pod/ctr")?;
//! let mut child = Spawn::new("/bin/sleep").arg("5").spawn_into(&ctr)?;
//! println!("started {} via {:?}", child.pid(), child.placement());
//! let status = child.wait()?;
//! println!("{status}");
//! # Ok(()) }
//! ```

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::raw::c_char;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::cgroup::Cgroup;
use crate::cgroup::files::CGROUP_PROCS;
use crate::error::{Error, Op, Result};
use crate::sys;
use crate::util::io_err;

/// How the child was placed into the cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Placement {
    /// Try `clone3(CLONE_INTO_CGROUP)`, fall back to [`Placement::WriteProcs`]
    /// when the kernel or a sandbox lacks it (only as a request).
    Auto,
    /// `clone3(2)` with `CLONE_INTO_CGROUP | CLONE_PIDFD` (5.7+).
    Clone3,
    /// `fork(2)`, then the child writes `0` to `cgroup.procs` before `execve`.
    WriteProcs,
}

/// A program to start inside a cgroup (see the [module docs](self)).
#[derive(Debug)]
pub struct Spawn {
    program: OsString,
    args: Vec<OsString>,
    env: Option<Vec<(OsString, OsString)>>,
    stdio: [Option<OwnedFd>; 3],
    placement: Placement,
}

impl Spawn {
    /// `program` (searched in `PATH` when it has no `/`), with `program` as
    /// `argv[0]`, the parent's environment and stdio.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Spawn {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: None,
            stdio: [None, None, None],
            placement: Placement::Auto,
        }
    }

    /// Appends an argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Replaces the environment (default: the parent's).
    pub fn env_clear_and_set<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.env = Some(
            vars.into_iter()
                .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
                .collect(),
        );
        self
    }

    /// The child's stdin (default: inherited).
    pub fn stdin(mut self, fd: impl Into<OwnedFd>) -> Self {
        self.stdio[0] = Some(fd.into());
        self
    }

    /// The child's stdout (default: inherited), e.g. the write end of a pipe.
    pub fn stdout(mut self, fd: impl Into<OwnedFd>) -> Self {
        self.stdio[1] = Some(fd.into());
        self
    }

    /// The child's stderr (default: inherited).
    pub fn stderr(mut self, fd: impl Into<OwnedFd>) -> Self {
        self.stdio[2] = Some(fd.into());
        self
    }

    /// How to place the child (default [`Placement::Auto`]). Forcing
    /// [`Placement::WriteProcs`] is for sandboxes known to block clone3 and
    /// for testing the fallback.
    pub fn placement(mut self, p: Placement) -> Self {
        self.placement = p;
        self
    }

    /// Starts the program inside `cg`.
    ///
    /// Errors: the program cannot be found or executed ([`Error::Sys`] with
    /// `execve`), the cgroup refuses the process ([`Error::Write`] on its
    /// `cgroup.procs`, or [`Error::Sys`] with `clone3`: a cgroup with child
    /// cgroups and controllers enabled cannot hold processes), the cgroup
    /// is gone ([`Error::CgroupGone`]).
    pub fn spawn_into(self, cg: &Cgroup) -> Result<SpawnedChild> {
        let path = resolve_program(&self.program, self.env.as_deref())?;
        let path_c = cstring(path.as_os_str(), "program path")?;
        let mut arg_c = vec![cstring(&self.program, "argv[0]")?];
        for a in &self.args {
            arg_c.push(cstring(a, "argument")?);
        }
        let env_c = self.environment()?;
        let argv = null_terminated(&arg_c);
        let envp = null_terminated(&env_c);
        // Stdio sources above 2, so that installing one never clobbers another.
        let high = self.stdio_above_2()?;
        let stdio: [RawFd; 3] = [0, 1, 2].map(|i| {
            high.get(i)
                .and_then(|f| f.as_ref())
                .map_or(-1, |f| f.as_raw_fd())
        });
        let plan = |procs_fd: RawFd, err_fd: RawFd| sys::ExecPlan {
            path: &path_c,
            argv: &argv,
            envp: &envp,
            stdio,
            procs_fd,
            err_fd,
        };
        if matches!(self.placement, Placement::Auto | Placement::Clone3) {
            let (rd, wr) = error_pipe()?;
            match sys::clone3_into_cgroup(cg.dir_fd().into(), &plan(-1, wr.as_raw_fd())) {
                Ok((pid, pidfd)) => {
                    drop(wr);
                    check_exec(&rd, pid, cg, &path)?;
                    return Ok(SpawnedChild {
                        pid,
                        pidfd: Some(pidfd),
                        placement: Placement::Clone3,
                        status: None,
                    });
                }
                Err(e) => self.clone3_failed(e, cg)?,
            }
        }
        let procs = open_procs(cg)?;
        let (rd, wr) = error_pipe()?;
        let pid =
            sys::fork_exec(&plan(procs.as_raw_fd(), wr.as_raw_fd())).map_err(|e| Error::Sys {
                call: "fork",
                source: e,
            })?;
        drop(wr);
        check_exec(&rd, pid, cg, &path)?;
        // A pidfd for the fallback too (5.3+); without one, PID-based calls.
        let pidfd = rustix::process::Pid::from_raw(pid).and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
        });
        Ok(SpawnedChild {
            pid,
            pidfd,
            placement: Placement::WriteProcs,
            status: None,
        })
    }

    /// The child's environment as `KEY=value` C strings: the configured one, else ours (minus
    /// variables with a NUL byte, which no C string can hold).
    fn environment(&self) -> Result<Vec<CString>> {
        match &self.env {
            Some(vars) => vars
                .iter()
                .map(|(k, v)| {
                    let mut kv = k.clone();
                    kv.push("=");
                    kv.push(v);
                    cstring(&kv, "environment variable")
                })
                .collect::<Result<_>>(),
            None => Ok(std::env::vars_os()
                .filter_map(|(k, v)| {
                    let mut kv = k;
                    kv.push("=");
                    kv.push(v);
                    CString::new(kv.as_bytes()).ok()
                })
                .collect()),
        }
    }

    /// Duplicates of the configured stdio fds numbered 3 and up, so that the child installing
    /// one as 0, 1 or 2 never clobbers another.
    fn stdio_above_2(&self) -> Result<[Option<OwnedFd>; 3]> {
        let mut high: [Option<OwnedFd>; 3] = [None, None, None];
        for (slot, fd) in high.iter_mut().zip(self.stdio.iter()) {
            if let Some(fd) = fd {
                *slot = Some(
                    rustix::io::fcntl_dupfd_cloexec(fd, 3)
                        .map_err(|e| Error::sys("fcntl(F_DUPFD_CLOEXEC)", io_err(e)))?,
                );
            }
        }
        Ok(high)
    }

    /// What a failed `clone3(CLONE_INTO_CGROUP)` means: with [`Placement::Auto`], a kernel or
    /// sandbox without it falls back to writing `cgroup.procs` (`Ok`); anything else is the
    /// error.
    fn clone3_failed(&self, e: std::io::Error, cg: &Cgroup) -> Result<()> {
        if self.placement == Placement::Auto
            && matches!(
                e.raw_os_error(),
                Some(libc::ENOSYS) | Some(libc::E2BIG) | Some(libc::EINVAL)
            )
        {
            tracing::debug!(error = %e, "clone3(CLONE_INTO_CGROUP) unavailable, writing cgroup.procs from the child");
            return Ok(());
        }
        Err(match e.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::ENOENT) => Error::CgroupGone {
                path: cg.path().to_owned(),
            },
            _ => Error::Sys {
                call: "clone3(CLONE_INTO_CGROUP)",
                source: e,
            },
        })
    }
}

/// `cgroup.procs` of `cg`, open for the child to write its own PID into (the fallback).
fn open_procs(cg: &Cgroup) -> Result<OwnedFd> {
    rustix::fs::openat(
        cg.dir_fd(),
        CGROUP_PROCS,
        OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| {
        crate::fs::cgroup_errno(cg.path(), e, |e| {
            Error::io(cg.file_path(CGROUP_PROCS), Op::Open, io_err(e))
        })
    })
}

/// A process started by [`Spawn::spawn_into`]. Dropping it neither kills
/// nor reaps the process (a runtime's container outlives such handles); call
/// [`wait`](Self::wait) to reap it.
#[derive(Debug)]
pub struct SpawnedChild {
    pid: i32,
    pidfd: Option<OwnedFd>,
    placement: Placement,
    status: Option<ExitStatus>,
}

impl SpawnedChild {
    /// The PID.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A pidfd of the child (from `CLONE_PIDFD`, or `pidfd_open` after the
    /// fallback; `None` before 5.3). Readable once the child exited: put it
    /// into an epoll set or tokio reactor to learn of the exit without
    /// `SIGCHLD`.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|f| f.as_fd())
    }

    /// How the child was placed into the cgroup.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// Sends SIGKILL (through the pidfd when there is one, so a reused PID is
    /// never hit). A no-op once the child was reaped.
    pub fn kill(&self) -> Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        let sig = rustix::process::Signal::KILL;
        let r = match &self.pidfd {
            Some(fd) => rustix::process::pidfd_send_signal(fd, sig),
            None => match rustix::process::Pid::from_raw(self.pid) {
                Some(p) => rustix::process::kill_process(p, sig),
                None => Err(Errno::SRCH),
            },
        };
        match r {
            Ok(()) | Err(Errno::SRCH) => Ok(()),
            Err(e) => Err(Error::sys("pidfd_send_signal", io_err(e))),
        }
    }

    /// Waits for the child to end and reaps it (`waitpid`).
    pub fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let raw = sys::waitpid(self.pid, false)
            .map_err(|e| Error::sys("waitpid", e))?
            .ok_or_else(|| Error::sys("waitpid", std::io::Error::other("returned no status")))?;
        let s = ExitStatus::from_raw(raw);
        self.status = Some(s);
        Ok(s)
    }

    /// Reaps the child if it has ended (`waitpid(WNOHANG)`).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let raw = sys::waitpid(self.pid, true).map_err(|e| Error::sys("waitpid", e))?;
        self.status = raw.map(ExitStatus::from_raw);
        Ok(self.status)
    }
}

fn cstring(s: &OsStr, what: &'static str) -> Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| Error::InvalidArgument {
        what,
        reason: format!("{s:?} contains a NUL byte"),
    })
}

fn null_terminated(v: &[CString]) -> Vec<*const c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn error_pipe() -> Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::sys("pipe2", io_err(e)))
}

/// Reads the child's failure report (EOF: `execve` succeeded). On failure the
/// child has exited; it is reaped here.
fn check_exec(rd: &OwnedFd, pid: i32, cg: &Cgroup, program: &Path) -> Result<()> {
    let mut buf = [0u8; 5];
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(rd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(Error::sys("read (spawn error pipe)", io_err(e))),
        }
    }
    if got == 0 {
        return Ok(());
    }
    let _ = sys::waitpid(pid, false);
    let errno = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let source = std::io::Error::from_raw_os_error(errno);
    Err(match buf[0] {
        sys::STEP_JOIN_CGROUP => match errno {
            libc::ENODEV | libc::ENOENT => Error::CgroupGone {
                path: cg.path().to_owned(),
            },
            _ => Error::Write {
                path: cg.file_path(CGROUP_PROCS),
                data: "0".into(),
                source,
            },
        },
        sys::STEP_STDIO => Error::sys("dup2 (child stdio)", source),
        _ => Error::Io {
            path: program.to_owned(),
            op: Op::Open,
            source: std::io::Error::new(source.kind(), format!("execve: {source}")),
        },
    })
}

/// Finds `program` like `execvp` would, but in the parent (the child may not
/// allocate): as is when it contains a `/`, else the first executable
/// regular file in `PATH`.
fn resolve_program(program: &OsStr, env: Option<&[(OsString, OsString)]>) -> Result<PathBuf> {
    if program.is_empty() {
        return Err(Error::InvalidArgument {
            what: "program",
            reason: "empty program name".into(),
        });
    }
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let path_var = match env {
        Some(vars) => vars
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone()),
        None => std::env::var_os("PATH"),
    }
    .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(&path_var) {
        let cand = dir.join(program);
        if rustix::fs::access(&cand, rustix::fs::Access::EXEC_OK).is_ok() && cand.is_file() {
            return Ok(cand);
        }
    }
    Err(Error::Io {
        path: PathBuf::from(program),
        op: Op::Open,
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("not found in PATH ({})", path_var.to_string_lossy()),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::CgroupFs;

    /// On a synthetic tree `cgroup.procs` is a plain file: the fallback child
    /// writes `0` into it before exec, which shows the write happens in the
    /// child, and the program then runs with the given stdout.
    #[test]
    fn fallback_writes_procs_from_child_then_execs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), b"").unwrap();
        let cg = CgroupFs::from_dir_unchecked(dir.path()).root().unwrap();
        let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let mut child = Spawn::new("sh")
            .args(["-c", "echo hello $0", "arg0"])
            .stdout(wr)
            .placement(Placement::WriteProcs)
            .spawn_into(&cg)
            .unwrap();
        assert_eq!(child.placement(), Placement::WriteProcs);
        let st = child.wait().unwrap();
        assert!(st.success(), "{st}");
        let mut out = String::new();
        use std::io::Read;
        std::fs::File::from(rd).read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello arg0\n");
        assert_eq!(
            std::fs::read(dir.path().join("cgroup.procs")).unwrap(),
            b"0"
        );
        // Reaped once; waiting again returns the same status.
        assert_eq!(child.wait().unwrap(), st);
        assert_eq!(child.try_wait().unwrap(), Some(st));
    }

    #[test]
    fn exec_failure_is_an_error_naming_the_program() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), b"").unwrap();
        let cg = CgroupFs::from_dir_unchecked(dir.path()).root().unwrap();
        let e = Spawn::new("/nonexistent/prog")
            .placement(Placement::WriteProcs)
            .spawn_into(&cg)
            .unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("/nonexistent/prog") && s.contains("execve"),
            "{s}"
        );
        let e = Spawn::new("no-such-program-oomkit")
            .placement(Placement::WriteProcs)
            .spawn_into(&cg)
            .unwrap_err();
        assert!(e.to_string().contains("not found in PATH"), "{e}");
    }

    #[test]
    fn a_missing_procs_file_is_reported_before_forking() {
        let dir = tempfile::tempdir().unwrap();
        let cg = CgroupFs::from_dir_unchecked(dir.path()).root().unwrap();
        let e = Spawn::new("true")
            .placement(Placement::WriteProcs)
            .spawn_into(&cg)
            .unwrap_err();
        assert!(e.is_gone() || e.to_string().contains("cgroup.procs"), "{e}");
    }

    #[test]
    fn nul_in_argument_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let cg = CgroupFs::from_dir_unchecked(dir.path()).root().unwrap();
        let e = Spawn::new("true").arg("a\0b").spawn_into(&cg).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    }
}
