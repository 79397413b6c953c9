//! Reaping a killed process's memory without out-prioritising the processes
//! the kill protects.
//!
//! # Why
//!
//! [`process_mrelease(2)`](https://man7.org/linux/man-pages/man2/process_mrelease.2.html)
//! frees the victim's address space in the *caller's* thread: the work the
//! victim's own exit would do, done now in case the victim cannot run soon
//! (stuck in `D` state, or starved of CPU). A handler thread usually runs at
//! a raised priority (reserve mode's nice −10) so that it decides and
//! signals promptly on a saturated machine. Reaping at that weight makes the
//! scheduler favour the reaper over every other runnable task for as long as
//! the reap takes. Measured in the machine-wide bench (one vCPU under qemu
//! TCG, kernel 6.12): a 450 MiB reap at nice −10 ran 43 ms, and a protected
//! process's heartbeat, woken meanwhile, waited 12.6 ms for the CPU. Reaping
//! at nice 0, the weight the victim's own exit would have had, frees the same
//! memory while the protected processes get their share.
//!
//! The deciding and the signal stay at the raised priority; only the reap is
//! done at the floor, and the thread's nice value is put back after it.

use super::{Mrelease, Pidfd};

/// How many times [`Pidfd::reap`] asks again while the kernel has not yet
/// marked a just-signalled process as dying.
const NOT_DYING_TRIES: usize = 4;

/// What [`Pidfd::reap`] did to the calling thread's nice value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Renice {
    /// Left as it was: no floor asked, the thread was at or above it
    /// already, or raising it failed (the reap then ran at the thread's
    /// own priority).
    Unchanged,
    /// Raised to the floor for the reap, then put back.
    Restored,
    /// Raised to the floor, but putting the old value back failed with this
    /// errno (e.g. `CAP_SYS_NICE` dropped since): the thread stays at the
    /// floor.
    NotRestored(i32),
}

/// The result of [`Pidfd::reap`], as data: no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    /// The last `process_mrelease` answer.
    pub mrelease: Mrelease,
    /// What happened to the thread's nice value.
    pub renice: Renice,
}

/// Runs `f` with the calling thread's nice value raised to at least
/// `floor` (`setpriority(2)` on the calling thread: a lower priority, never
/// a higher one), then puts the old value back. `None`: `f` runs as the
/// thread is. Allocation-free.
pub(crate) fn with_nice_floor<T>(floor: Option<i32>, f: impl FnOnce() -> T) -> (T, Renice) {
    let before = floor.and_then(|floor| {
        let now = rustix::process::getpriority_process(None).ok()?;
        (now < floor && rustix::process::setpriority_process(None, floor).is_ok()).then_some(now)
    });
    let out = f();
    let renice = match before {
        None => Renice::Unchanged,
        Some(n) => match rustix::process::setpriority_process(None, n) {
            Ok(()) => Renice::Restored,
            Err(e) => Renice::NotRestored(e.raw_os_error()),
        },
    };
    (out, renice)
}

impl Pidfd {
    /// Reaps a process just sent `SIGKILL`: `process_mrelease`, asked again
    /// (yielding the CPU in between) a few times while the kernel has not
    /// yet marked it dying (`EINVAL` right after the signal). With
    /// `nice_floor`, the calling thread's nice value is raised to at least
    /// that for the reap (`setpriority(2)` on the calling thread: lowered
    /// priority, never raised) and put back after; see the module docs for
    /// why. An unsupported kernel or an exited victim is not an error.
    /// Allocation-free.
    pub fn reap(&self, nice_floor: Option<i32>) -> Reaped {
        let (mrelease, renice) = with_nice_floor(nice_floor, || {
            let mut m = Mrelease::NotRequested;
            for _ in 0..NOT_DYING_TRIES {
                m = self.try_mrelease();
                if m != Mrelease::NotDying {
                    break;
                }
                std::thread::yield_now();
            }
            m
        });
        Reaped { mrelease, renice }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of the calling thread.
    fn nice() -> i32 {
        rustix::process::getpriority_process(None).unwrap()
    }

    /// Runs `f` on a thread of its own, so the test's nice changes stay
    /// there.
    fn on_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| s.spawn(f).join().unwrap())
    }

    #[test]
    fn a_floor_above_the_thread_is_applied_for_the_reap_and_put_back() {
        on_thread(|| {
            if nice() >= 19 {
                rustix::process::setpriority_process(None, 18)
                    .expect("the test needs a thread below nice 19, or CAP_SYS_NICE to get one");
            }
            let start = nice();
            // A live process that is not dying: the kernel refuses the reap
            // (`EINVAL`), after the floor was applied and before it is
            // lifted, whatever this kernel supports.
            let me = Pidfd::open(std::process::id() as i32).unwrap();
            let r = me.reap(Some(start + 1));
            assert!(
                matches!(r.mrelease, Mrelease::NotDying | Mrelease::Unsupported),
                "{r:?}"
            );
            // Raising nice needs no privilege; putting it back does, unless
            // the old value is within RLIMIT_NICE. Either way it is said.
            match r.renice {
                Renice::Restored => assert_eq!(nice(), start),
                Renice::NotRestored(_) => assert_eq!(nice(), start + 1),
                Renice::Unchanged => panic!("a floor above the thread was not applied"),
            }
        });
    }

    #[test]
    fn a_floor_at_or_below_the_thread_or_none_changes_nothing() {
        on_thread(|| {
            let start = nice();
            let me = Pidfd::open(std::process::id() as i32).unwrap();
            assert_eq!(me.reap(Some(start)).renice, Renice::Unchanged);
            assert_eq!(me.reap(Some(start - 1)).renice, Renice::Unchanged);
            assert_eq!(me.reap(None).renice, Renice::Unchanged);
            assert_eq!(nice(), start);
        });
    }
}
