//! What a [`super::Runner`] is told: the managed root, the loop's tuning,
//! which signals to watch, and the process-wide steps a daemon opts into
//! (reserve mode, the open-file limit, the watchdog thread), which an
//! embedding runtime leaves off.

use std::path::PathBuf;

use crate::events::{MachineWatchConfig, PsiThreshold};
use crate::reserve::{MlockMode, ReserveConfig};

use super::watchdog::WatchdogConfig;
use super::{EngineConfig, IncidentConfig, XattrTrust};

/// How deep below the root cgroups are followed by default, and at most.
const DEFAULT_DEPTH: u32 = 8;
pub(super) const MAX_DEPTH: u32 = 16;

/// A PSI trigger for the runner.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PsiConfig {
    /// The threshold (`some`/`full`, stall, window).
    pub threshold: PsiThreshold,
    /// `true`: system-wide `/proc/pressure/memory`; `false`: the managed
    /// root's `memory.pressure`.
    pub system: bool,
}

/// Everything the runner needs.
#[derive(Debug)]
pub struct RunnerConfig {
    /// Filesystem path of the managed cgroup (for example `/sys/fs/cgroup`
    /// or `/sys/fs/cgroup/kubepods.slice`).
    pub root: PathBuf,
    /// Loop tuning.
    pub engine: EngineConfig,
    /// Reserve mode (`mlockall`, `oom_score_adj`, nice, `PR_SET_IO_FLUSHER`
    /// …: process-wide). `None` (the default of [`RunnerConfig::new`]):
    /// untouched.
    pub reserve: Option<ReserveConfig>,
    /// Raise the soft `RLIMIT_NOFILE` to the hard limit (process-wide; the
    /// runner holds three fds per cgroup). Off in [`RunnerConfig::new`].
    pub raise_nofile: bool,
    /// Watch `memory.events.local` of every managed cgroup.
    pub memory_events: bool,
    /// A PSI trigger.
    pub psi: Option<PsiConfig>,
    /// The machine-wide early warning ([`crate::events::MachineWatch`]):
    /// headroom, thrashing and stall of the whole machine, which needs
    /// neither swap nor any limit. Its episodes have the managed root as
    /// scope. `None` (the default of [`RunnerConfig::new`]): off.
    pub machine: Option<MachineWatchConfig>,
    /// Incident records (written only with the `serde` feature; without
    /// it, `Some` is refused when the runner starts).
    pub incidents: Option<IncidentConfig>,
    /// The watchdog thread, which kills on its own when the loop stalls.
    /// `None` (the default of [`RunnerConfig::new`]): no thread.
    pub watchdog: Option<WatchdogConfig>,
    /// Which cgroup xattrs to believe.
    pub xattr_trust: XattrTrust,
    /// How deep below the root to follow cgroups (1–16).
    pub depth: u32,
    /// Give the thread that creates the runner a working directory of its
    /// own ([`unshare(2)`](https://man7.org/linux/man-pages/man2/unshare.2.html)
    /// `CLONE_FS`), so the inotify watches of each cgroup are added by
    /// `fchdir` into its open directory and a bare name instead of through
    /// `/proc/self/fd`: cheaper per cgroup, as exact. That thread changes
    /// for good (a `chdir` on it no longer moves the other threads' working
    /// directory, nor theirs it); during the runner's calls its working
    /// directory may be a cgroup's, and is put back before they return. On
    /// another thread the runner falls back to `/proc/self/fd`, and if
    /// `unshare` is refused it logs so and does the same. Off in
    /// [`RunnerConfig::new`].
    pub own_cwd: bool,
    /// Most `memory.current` fds kept open (`None`: one per tracked cgroup,
    /// within what the open-file limit leaves). A kept fd is read by one
    /// `pread` and is read once by the warm-up decision, so a selection
    /// during an OOM opens and allocates nothing; but once read it holds
    /// the kernel's 4 KiB `seq_file` buffer, charged to this process's
    /// cgroup (with the open file, about 4.5 KiB a cgroup). Past the cap a
    /// cgroup's usage is read by opening its directory and file when needed:
    /// a slower selection, and opens and kernel allocations during an OOM.
    /// Taken when the runner starts.
    pub usage_fds: Option<usize>,
    /// Run one decision over the tree without acting on it once the tree
    /// is known, and again when it has grown, so the decision path is
    /// resident and locked before memory runs out ([`super::Engine::warm_up`]:
    /// needed with `MlockMode::Resident`, whose lock is then taken after
    /// it). With that mode the runner first drops its read-only file pages
    /// (start-up code) from the resident set
    /// ([`crate::reserve::drop_start_up_pages`]), which assumes no other thread
    /// maps or unmaps memory meanwhile. Off in [`RunnerConfig::new`].
    pub warm_up: bool,
}

impl RunnerConfig {
    /// Defaults for embedding, managing `root`: memory events on, no PSI,
    /// and nothing process-wide (no reserve mode, no rlimit change, no
    /// watchdog thread).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunnerConfig {
            root: root.into(),
            engine: EngineConfig::default(),
            reserve: None,
            raise_nofile: false,
            memory_events: true,
            psi: None,
            machine: None,
            incidents: None,
            watchdog: None,
            xattr_trust: XattrTrust::TrustedOnly,
            depth: DEFAULT_DEPTH,
            own_cwd: false,
            usage_fds: None,
            warm_up: false,
        }
    }

    /// Defaults for a node daemon that owns its process: as
    /// [`RunnerConfig::new`], plus reserve mode with its defaults but
    /// [`MlockMode::Resident`] (what the warm-up decision touched is locked,
    /// not the whole address space), a raised open-file limit, a working
    /// directory of its own for the calling thread (`own_cwd`), the
    /// warm-up decision and the watchdog thread.
    pub fn daemon(root: impl Into<PathBuf>) -> Self {
        RunnerConfig {
            reserve: Some(ReserveConfig {
                mlock: MlockMode::Resident,
                ..ReserveConfig::default()
            }),
            raise_nofile: true,
            own_cwd: true,
            warm_up: true,
            watchdog: Some(WatchdogConfig::default()),
            ..RunnerConfig::new(root)
        }
    }
}
