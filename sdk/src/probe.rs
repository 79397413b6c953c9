//! Which of oomkit's mechanisms this kernel and configuration offer.
//!
//! Probed, not guessed from the version: distributions backport features,
//! seccomp hides syscalls, controllers may be off. What cannot be decided
//! from the cgroup given (the root lacks `cgroup.kill`, `memory.events` …)
//! is [`Support::Unknown`].
//!
//! ```no_run
//! # fn main() -> oomkit::Result<()> {
//! let cg = oomkit::Cgroup::open("/sys/fs/cgroup/system.slice")?;
//! let f = oomkit::probe::Features::probe(&cg);
//! f.log();
//! # Ok(()) }
//! ```

use std::fmt;

use rustix::io::Errno;

use crate::cgroup::Cgroup;
use crate::cgroup::files::*;
use crate::kill::Pidfd;

/// Whether a feature is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Support {
    /// Present.
    Yes,
    /// Absent.
    No,
    /// Cannot be told from here (for example asked of the root cgroup, or
    /// the memory controller is not enabled in the cgroup probed).
    Unknown,
}

impl Support {
    fn from_bool(b: bool) -> Self {
        if b { Support::Yes } else { Support::No }
    }

    /// True for [`Support::Yes`].
    pub fn is_yes(self) -> bool {
        self == Support::Yes
    }
}

impl fmt::Display for Support {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Support::Yes => "yes",
            Support::No => "no",
            Support::Unknown => "unknown",
        })
    }
}

/// The result of [`Features::probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Features {
    /// `uname -r`.
    pub kernel_release: String,
    /// `pidfd_open(2)` (5.3+).
    pub pidfd_open: Support,
    /// `process_mrelease(2)` (5.15+): probed with an invalid fd (`EBADF`
    /// = present, `ENOSYS` = absent).
    pub process_mrelease: Support,
    /// `PR_SET_IO_FLUSHER` (5.6+; setting it needs `CAP_SYS_RESOURCE`).
    pub io_flusher: Support,
    /// `/proc/pressure/memory` is readable (PSI built in and not disabled).
    pub system_psi: Support,
    /// The memory controller is enabled in the cgroup probed (`memory.stat`).
    pub memory_controller: Support,
    /// `cgroup.kill` (5.14+; not on the root).
    pub cgroup_kill: Support,
    /// `cgroup.freeze` (5.2+; not on the root).
    pub cgroup_freeze: Support,
    /// `oom_group_kill` in `memory.events` (5.17+).
    pub oom_group_kill: Support,
    /// `memory.reclaim` (5.19+).
    pub memory_reclaim: Support,
    /// `memory.peak` (5.19+).
    pub memory_peak: Support,
    /// `memory.swap.peak` (6.5+).
    pub swap_peak: Support,
    /// Per-cgroup PSI: `memory.pressure` readable and `cgroup.pressure` not 0.
    pub cgroup_psi: Support,
}

/// `oom_group_kill` in `memory.events` of `cg` (5.17+).
fn probe_oom_group_kill(cg: &Cgroup) -> Support {
    match cg.memory_events() {
        Ok(ev) => Support::from_bool(ev.oom_group_kill.is_some()),
        Err(_) => Support::Unknown,
    }
}

/// Per-cgroup PSI of `cg`: `memory.pressure` readable and
/// `cgroup.pressure` not 0.
fn probe_cgroup_psi(cg: &Cgroup) -> Support {
    match cg.memory_pressure() {
        Ok(_) => match cg.read_into(CGROUP_PRESSURE, &mut [0u8; 16]) {
            Ok(d) => Support::from_bool(d.trim_ascii() != b"0"),
            // Before 6.1 there is no switch: PSI is on when readable.
            Err(e) if e.is_unsupported() => Support::Yes,
            Err(_) => Support::Unknown,
        },
        Err(e) if e.is_unsupported() => Support::No,
        Err(crate::Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            Support::No
        }
        Err(_) => Support::Unknown,
    }
}

/// `pidfd_open(2)` of this process.
fn probe_pidfd_open() -> Support {
    match Pidfd::open(rustix::process::getpid().as_raw_nonzero().get()) {
        Ok(_) => Support::Yes,
        Err(e) if e.is_unsupported() => Support::No,
        Err(_) => Support::Unknown,
    }
}

/// `process_mrelease(2)` with an invalid fd.
fn probe_process_mrelease() -> Support {
    match crate::sys::process_mrelease_probe().raw_os_error() {
        Some(libc::EBADF) => Support::Yes,
        Some(libc::ENOSYS) => Support::No,
        _ => Support::Unknown,
    }
}

/// `PR_GET_IO_FLUSHER`.
fn probe_io_flusher() -> Support {
    match rustix::process::is_io_flusher() {
        // Even PR_GET_IO_FLUSHER needs CAP_SYS_RESOURCE: EPERM
        // means the kernel knows the option; EINVAL that it does not.
        Ok(_) | Err(Errno::PERM) => Support::Yes,
        Err(Errno::INVAL) => Support::No,
        Err(_) => Support::Unknown,
    }
}

/// `/proc/pressure/memory` readable.
fn probe_system_psi() -> Support {
    match std::fs::read("/proc/pressure/memory") {
        Ok(_) => Support::Yes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Support::No,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Support::No,
        Err(_) => Support::Unknown,
    }
}

impl Features {
    /// Probes the kernel, and the cgroup files of `cg` (preferably a
    /// non-root cgroup with the memory controller enabled).
    pub fn probe(cg: &Cgroup) -> Features {
        let root = cg.is_mount_root();
        let has = |name| match cg.has_file(name) {
            Ok(true) => Support::Yes,
            Ok(false) => Support::No,
            Err(_) => Support::Unknown,
        };
        // Files a root cgroup never has: absence there means nothing.
        let non_root = |name| match has(name) {
            Support::No if root => Support::Unknown,
            s => s,
        };
        let memory_controller = has(MEMORY_STAT);
        // Memory files: meaningful only with the memory controller on.
        let mem = |s: Support| {
            if memory_controller.is_yes() {
                s
            } else {
                Support::Unknown
            }
        };
        let oom_group_kill = probe_oom_group_kill(cg);
        let cgroup_psi = probe_cgroup_psi(cg);
        Features {
            kernel_release: rustix::system::uname()
                .release()
                .to_string_lossy()
                .into_owned(),
            pidfd_open: probe_pidfd_open(),
            process_mrelease: probe_process_mrelease(),
            io_flusher: probe_io_flusher(),
            system_psi: probe_system_psi(),
            memory_controller,
            cgroup_kill: non_root(CGROUP_KILL),
            cgroup_freeze: non_root(CGROUP_FREEZE),
            oom_group_kill,
            memory_reclaim: mem(has(MEMORY_RECLAIM)),
            memory_peak: mem(non_root(MEMORY_PEAK)),
            swap_peak: match has(MEMORY_SWAP_CURRENT) {
                Support::Yes => non_root(MEMORY_SWAP_PEAK),
                _ => Support::Unknown,
            },
            cgroup_psi,
        }
    }

    /// The features as `(name, support)` rows, in display order.
    pub fn rows(&self) -> [(&'static str, Support); 12] {
        [
            ("pidfd_open", self.pidfd_open),
            ("process_mrelease", self.process_mrelease),
            ("io_flusher", self.io_flusher),
            ("system_psi", self.system_psi),
            ("memory_controller", self.memory_controller),
            ("cgroup_kill", self.cgroup_kill),
            ("cgroup_freeze", self.cgroup_freeze),
            ("oom_group_kill", self.oom_group_kill),
            ("memory_reclaim", self.memory_reclaim),
            ("memory_peak", self.memory_peak),
            ("swap_peak", self.swap_peak),
            ("cgroup_psi", self.cgroup_psi),
        ]
    }

    /// Logs the table with `tracing::info!`.
    pub fn log(&self) {
        tracing::info!(
            kernel = %self.kernel_release,
            cgroup_kill = %self.cgroup_kill,
            process_mrelease = %self.process_mrelease,
            "kernel features:\n{self}"
        );
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  {:<18} {}", "kernel", self.kernel_release)?;
        for (name, s) in self.rows() {
            writeln!(f, "  {name:<18} {s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::CgroupFs;

    #[test]
    fn probe_host_kernel_and_synthetic_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = dir.path().join("leaf");
        std::fs::create_dir(&leaf).unwrap();
        for f in [
            "cgroup.procs",
            "cgroup.kill",
            "memory.stat",
            "memory.reclaim",
            "memory.swap.current",
        ] {
            std::fs::write(leaf.join(f), "").unwrap();
        }
        std::fs::write(
            leaf.join("memory.events"),
            "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
        )
        .unwrap();
        std::fs::write(
            leaf.join("memory.pressure"),
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n\
             full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        )
        .unwrap();
        std::fs::write(leaf.join("cgroup.pressure"), "0\n").unwrap();
        let cg = CgroupFs::from_dir_unchecked(dir.path())
            .open(&leaf)
            .unwrap();
        let f = Features::probe(&cg);
        println!("{f}");
        // Host kernel 6.x: syscalls present.
        assert_eq!(f.pidfd_open, Support::Yes);
        assert_eq!(f.process_mrelease, Support::Yes);
        assert_eq!(f.io_flusher, Support::Yes);
        assert!(!f.kernel_release.is_empty());
        // From the synthetic files.
        assert_eq!(f.memory_controller, Support::Yes);
        assert_eq!(f.cgroup_kill, Support::Yes);
        assert_eq!(f.cgroup_freeze, Support::No);
        assert_eq!(f.oom_group_kill, Support::Yes);
        assert_eq!(f.memory_reclaim, Support::Yes);
        assert_eq!(f.memory_peak, Support::No);
        assert_eq!(f.swap_peak, Support::No);
        assert_eq!(f.cgroup_psi, Support::No, "cgroup.pressure is 0");
        let table = f.to_string();
        assert!(table.contains("cgroup_kill        yes"), "{table}");
        f.log();
    }

    #[test]
    fn root_only_files_are_unknown_at_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        let cg = CgroupFs::from_dir_unchecked(dir.path()).root().unwrap();
        assert!(cg.is_mount_root());
        let f = Features::probe(&cg);
        assert_eq!(f.cgroup_kill, Support::Unknown);
        assert_eq!(f.memory_controller, Support::No);
        assert_eq!(f.memory_peak, Support::Unknown);
        assert_eq!(f.oom_group_kill, Support::Unknown);
        assert_eq!(f.cgroup_psi, Support::No);
    }
}
