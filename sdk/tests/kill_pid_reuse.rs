//! A pidfd never signals a process that reused its PID. Own test binary:
//! it steers PID allocation with `/proc/sys/kernel/ns_last_pid` (root) and
//! must not race other tests of the same binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use oomkit::Error;
use oomkit::kill::{Pidfd, Signal};

fn sleeper() -> Child {
    Command::new("sleep").arg("100").spawn().unwrap()
}

#[test]
fn stale_pidfd_does_not_hit_the_new_owner_of_its_pid() {
    let mut old = sleeper();
    let old_pid = old.id() as i32;
    let stale = Pidfd::open(old_pid).unwrap();
    stale.kill().unwrap();
    assert!(
        stale
            .wait_exit(Instant::now() + Duration::from_secs(10))
            .unwrap()
    );
    old.wait().unwrap();

    // Try to get the same PID for a new process.
    let mut reused = None;
    for _ in 0..20 {
        if std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", old_pid - 1)).is_err() {
            break;
        }
        let c = sleeper();
        if c.id() as i32 == old_pid {
            reused = Some(c);
            break;
        }
        let mut c = c;
        c.kill().unwrap();
        c.wait().unwrap();
    }
    // Whether or not reuse was arranged, the stale pidfd reports the race.
    assert!(matches!(
        stale.send_signal(Signal::KILL),
        Err(Error::ProcessGone { pid }) if pid == old_pid
    ));
    assert!(!stale.is_alive().unwrap());
    match reused {
        Some(mut newcomer) => {
            eprintln!("PID {old_pid} reused");
            assert!(
                newcomer.try_wait().unwrap().is_none(),
                "the newcomer must not have been signalled"
            );
            // A fresh pidfd on the number pins the newcomer, not the old one.
            let fresh = Pidfd::open(old_pid).unwrap();
            assert!(fresh.is_alive().unwrap());
            newcomer.kill().unwrap();
            newcomer.wait().unwrap();
        }
        None => eprintln!("NOTE: could not arrange PID reuse; checked ESRCH only"),
    }
}
