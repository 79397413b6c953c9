//! Why a container ended: the exit-reason helper.
//!
//! On cgroup v2 a runtime cannot tell "OOM-killed" from "killed" by the wait
//! status alone (both are SIGKILL), and the v1 trick of reading
//! `memory.oom_control` is gone; runtimes that did not look at
//! `memory.events` report "Error" for an OOM kill. The answer combines the
//! init's wait status with what the [`OomMonitor`] saw.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use super::{FinalReport, KillRecord, Level, OomMonitor, OomReport};
use crate::error::Result;

/// Why the container's init ended.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum ExitReason {
    /// The kernel OOM killer killed the init (or, with the victims unknown,
    /// the init died of SIGKILL while the container's `oom_kill` rose).
    OomKilled {
        /// Whose limit fired (`None` when no report said, for example when
        /// the monitor saw only the final counters).
        level: Option<Level>,
        /// The container's processes the kernel killed.
        victims: Vec<KillRecord>,
    },
    /// Ended by a signal that was not the OOM killer's.
    Signalled {
        /// The signal number.
        signal: i32,
        /// Processes of the container the OOM killer killed meanwhile.
        oom_kills: u64,
    },
    /// Exited normally.
    Exited {
        /// The exit code.
        code: i32,
        /// Processes of the container the OOM killer killed meanwhile (a
        /// worker may have been OOM-killed while the init carried on).
        oom_kills: u64,
    },
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::OomKilled { level, victims } => {
                f.write_str("OOMKilled")?;
                if let Some(l) = level {
                    write!(f, ": limit of {l} fired")?;
                }
                if !victims.is_empty() {
                    let v: Vec<String> = victims
                        .iter()
                        .map(|k| format!("{} ({})", k.pid, k.comm))
                        .collect();
                    write!(f, ", killed {}", v.join(", "))?;
                }
                Ok(())
            }
            ExitReason::Signalled { signal, .. } => write!(f, "Signalled({signal})"),
            ExitReason::Exited { code, .. } => write!(f, "Exited({code})"),
        }
    }
}

/// Classifies the end of a container: `init_pid` and its wait `status`,
/// with the monitor of the container's cgroup. Takes the monitor's final
/// report ([`OomMonitor::finish`]), so call it after reaping the init and
/// before removing the cgroup. Returns the reason together with the reports
/// it was built from.
///
/// OOMKilled when the init died of SIGKILL and the kernel log names it among
/// the victims, or (victims unknown) the container's `oom_kill` rose.
pub fn exit_reason(
    monitor: &mut OomMonitor,
    init_pid: i32,
    status: ExitStatus,
    earlier: &[OomReport],
) -> Result<(ExitReason, Option<OomReport>, FinalReport)> {
    let (last, fin) = monitor.finish()?;
    let reports: Vec<&OomReport> = earlier.iter().chain(last.iter()).collect();
    let oom_kills = fin.oom_kills().unwrap_or_else(|| {
        reports
            .iter()
            .map(|r| r.rose.oom_kill.unwrap_or(0))
            .sum::<u64>()
    });
    let victims: Vec<KillRecord> = reports
        .iter()
        .flat_map(|r| r.victims.iter().cloned())
        .collect();
    let level = reports.last().map(|r| r.level.clone());
    let reason = classify(status, init_pid, oom_kills, victims, level);
    Ok((reason, last, fin))
}

/// [`exit_reason`] for a runtime without a monitor: from the container's
/// cgroup alone (its `memory.events` counts since the cgroup was created, so
/// create one cgroup per container) and the init's wait status. Without the
/// kernel log it names no victims, and the level is `Container` when the
/// container's own `memory.events.local` counted an `oom`, else unknown.
/// Read it before the cgroup is removed.
pub fn exit_reason_from_cgroup(
    container: &crate::Cgroup,
    init_pid: i32,
    status: ExitStatus,
) -> Result<ExitReason> {
    let hier = container.memory_events()?;
    let local = container.memory_events_local()?;
    let level = (local.oom.unwrap_or(0) > 0).then_some(Level::Container);
    Ok(classify(
        status,
        init_pid,
        hier.oom_kill.unwrap_or(0),
        Vec::new(),
        level,
    ))
}

/// The rule of [`exit_reason`], on plain values.
pub(crate) fn classify(
    status: ExitStatus,
    init_pid: i32,
    oom_kills: u64,
    victims: Vec<KillRecord>,
    level: Option<Level>,
) -> ExitReason {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitReason::Exited { code, oom_kills },
        (None, Some(sig)) => {
            let init_named = victims.iter().any(|v| v.pid == init_pid);
            let oom = sig == libc::SIGKILL && (init_named || (oom_kills > 0 && victims.is_empty()));
            if oom {
                ExitReason::OomKilled { level, victims }
            } else {
                ExitReason::Signalled {
                    signal: sig,
                    oom_kills,
                }
            }
        }
        // Stopped/continued statuses are not ends; report them as is.
        (None, None) => ExitReason::Signalled {
            signal: 0,
            oom_kills,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn kill(pid: i32) -> KillRecord {
        KillRecord {
            pid,
            comm: "hog".into(),
            memcg: None,
            oom_memcg: None,
            group_member: false,
            kernel_time: Duration::ZERO,
        }
    }

    #[test]
    fn from_cgroup_alone() {
        let dir = tempfile::tempdir().unwrap();
        let ev = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n";
        std::fs::write(dir.path().join("memory.events"), ev).unwrap();
        std::fs::write(dir.path().join("memory.events.local"), ev).unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        let cg = crate::cgroup::CgroupFs::from_dir_unchecked(dir.path())
            .root()
            .unwrap();
        let r = exit_reason_from_cgroup(&cg, 1, ExitStatus::from_raw(libc::SIGKILL)).unwrap();
        assert_eq!(r.to_string(), "OOMKilled: limit of container fired");
        let r = exit_reason_from_cgroup(&cg, 1, ExitStatus::from_raw(0)).unwrap();
        assert_eq!(
            r,
            ExitReason::Exited {
                code: 0,
                oom_kills: 1
            }
        );
        std::fs::remove_file(dir.path().join("memory.events")).unwrap();
        let e = exit_reason_from_cgroup(&cg, 1, ExitStatus::from_raw(0)).unwrap_err();
        assert!(e.to_string().contains("memory.events"), "{e}");
    }

    #[test]
    fn rules() {
        let sigkill = ExitStatus::from_raw(libc::SIGKILL);
        let sigterm = ExitStatus::from_raw(libc::SIGTERM);
        let exit0 = ExitStatus::from_raw(0);
        let exit3 = ExitStatus::from_raw(3 << 8);
        // Named among the victims.
        let r = classify(sigkill, 10, 1, vec![kill(10)], Some(Level::Container));
        assert_eq!(
            r.to_string(),
            "OOMKilled: limit of container fired, killed 10 (hog)"
        );
        // Counters only (no kernel log): SIGKILL + oom_kill.
        assert!(matches!(
            classify(sigkill, 10, 1, vec![], None),
            ExitReason::OomKilled { .. }
        ));
        // A worker was OOM-killed, then someone else SIGKILLed the init.
        assert_eq!(
            classify(sigkill, 10, 1, vec![kill(11)], None),
            ExitReason::Signalled {
                signal: libc::SIGKILL,
                oom_kills: 1
            }
        );
        // SIGKILL without any OOM kill.
        assert!(matches!(
            classify(sigkill, 10, 0, vec![], None),
            ExitReason::Signalled { .. }
        ));
        assert!(matches!(
            classify(sigterm, 10, 1, vec![], None),
            ExitReason::Signalled { signal, .. } if signal == libc::SIGTERM
        ));
        assert_eq!(
            classify(exit0, 10, 0, vec![], None).to_string(),
            "Exited(0)"
        );
        assert_eq!(
            classify(exit3, 10, 2, vec![kill(11)], None),
            ExitReason::Exited {
                code: 3,
                oom_kills: 2
            }
        );
    }
}
