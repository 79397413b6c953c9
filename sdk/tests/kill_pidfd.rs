//! Pidfd kills of real child processes: SIGKILL, SIGTERM grace, wait
//! deadlines, `process_mrelease`, ESRCH after exit, membership checks and
//! the self guard. Synchronisation is by pipes and pidfd polls, not sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oomkit::Error;
use oomkit::cgroup::CgroupFs;
use oomkit::kill::{self, KillOptions, Membership, Mrelease, Pidfd, Signal};

fn sleeper() -> Child {
    Command::new("sleep").arg("100").spawn().unwrap()
}

/// A shell that ignores SIGTERM; returns once the trap is installed.
fn term_ignorer() -> Child {
    let mut c = Command::new("sh")
        .args(["-c", "trap '' TERM; echo ready; exec sleep 100"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(c.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    c
}

fn pid(c: &Child) -> i32 {
    c.id() as i32
}

#[test]
fn sigkill_and_wait() {
    let mut c = sleeper();
    let p = Pidfd::open(pid(&c)).unwrap();
    assert!(p.is_alive().unwrap());
    let out = kill::kill_process(&p, &KillOptions::default()).unwrap();
    assert!(out.sigkill_sent && !out.sigterm_sent);
    assert!(out.exited, "{out:?}");
    assert!(out.exited_after.unwrap() < Duration::from_secs(1));
    assert!(!p.is_alive().unwrap());
    let st = c.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(9));
}

#[test]
fn sigterm_grace_suffices() {
    let mut c = sleeper();
    let p = Pidfd::open(pid(&c)).unwrap();
    let opts = KillOptions {
        grace: Some(Duration::from_secs(10)),
        ..KillOptions::default()
    };
    let out = kill::kill_process(&p, &opts).unwrap();
    assert!(out.sigterm_sent);
    assert!(!out.sigkill_sent, "exited on SIGTERM: {out:?}");
    assert_eq!(out.mreleased, Mrelease::NotRequested);
    assert!(out.exited);
    assert!(out.exited_after.unwrap() < Duration::from_secs(10));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(c.wait().unwrap().signal(), Some(15));
}

#[test]
fn sigterm_ignored_then_sigkill() {
    let mut c = term_ignorer();
    let p = Pidfd::open(pid(&c)).unwrap();
    let grace = Duration::from_millis(200);
    let out = kill::kill_process(
        &p,
        &KillOptions {
            grace: Some(grace),
            mrelease: true,
            deadline: Duration::from_secs(5),
        },
    )
    .unwrap();
    assert!(out.sigterm_sent && out.sigkill_sent, "{out:?}");
    assert!(out.exited);
    assert!(
        out.exited_after.unwrap() >= grace,
        "waited the grace period"
    );
    assert!(
        matches!(out.mreleased, Mrelease::Done | Mrelease::AlreadyExited),
        "{:?}",
        out.mreleased
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(c.wait().unwrap().signal(), Some(9));
}

#[test]
fn wait_exit_honours_deadline() {
    let mut c = sleeper();
    let p = Pidfd::open(pid(&c)).unwrap();
    let t = Instant::now();
    assert!(!p.wait_exit(t + Duration::from_millis(150)).unwrap());
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    // A deadline in the past returns at once.
    assert!(!p.wait_exit(Instant::now()).unwrap());
    p.kill().unwrap();
    assert!(
        p.wait_exit(Instant::now() + Duration::from_secs(10))
            .unwrap()
    );
    // Exited but not reaped (zombie): still "exited".
    assert!(!p.is_alive().unwrap());
    assert!(p.wait_exit(Instant::now()).unwrap());
    c.wait().unwrap();
}

#[test]
fn gone_after_exit() {
    let mut c = sleeper();
    let id = pid(&c);
    let p = Pidfd::open(id).unwrap();
    p.kill().unwrap();
    c.wait().unwrap(); // reaped: the PID is free
    assert!(matches!(p.send_signal(Signal::TERM), Err(Error::ProcessGone { pid }) if pid == id));
    assert!(matches!(
        kill::kill_process(&p, &KillOptions::default()),
        Err(Error::ProcessGone { .. })
    ));
    assert_eq!(p.try_mrelease(), Mrelease::AlreadyExited);
    assert!(matches!(p.mrelease(), Err(Error::ProcessGone { .. })));
    assert!(!p.is_alive().unwrap());
}

#[test]
fn zombie_victim_is_gone() {
    let mut c = sleeper();
    let p = Pidfd::open(pid(&c)).unwrap();
    p.kill().unwrap();
    assert!(
        p.wait_exit(Instant::now() + Duration::from_secs(10))
            .unwrap()
    );
    // Not reaped yet, but dead: kill_process reports the race.
    assert!(matches!(
        kill::kill_process(&p, &KillOptions::default()),
        Err(Error::ProcessGone { .. })
    ));
    c.wait().unwrap();
}

#[test]
fn mrelease_needs_a_dying_process() {
    let mut c = sleeper();
    let p = Pidfd::open(pid(&c)).unwrap();
    assert_eq!(p.try_mrelease(), Mrelease::NotDying);
    assert!(matches!(p.mrelease(), Err(Error::InvalidArgument { .. })));
    assert!(p.is_alive().unwrap(), "a refused mrelease harms nothing");
    c.kill().unwrap();
    c.wait().unwrap();
}

#[test]
fn mrelease_reaps_a_killed_process() {
    // Right after SIGKILL the victim is dying but usually still holds its
    // mm; it may also win the race and exit first, or (seen on a loaded
    // 2-core host) not yet be marked as exiting when the call lands, which
    // the kernel answers with EINVAL (`NotDying`). At least one of several
    // tries must reap.
    let mut done = 0;
    for _ in 0..10 {
        let mut c = sleeper();
        let p = Pidfd::open(pid(&c)).unwrap();
        p.kill().unwrap();
        match p.try_mrelease() {
            Mrelease::Done => done += 1,
            Mrelease::AlreadyExited | Mrelease::NotDying => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            p.wait_exit(Instant::now() + Duration::from_secs(10))
                .unwrap()
        );
        c.wait().unwrap();
    }
    assert!(done > 0, "process_mrelease never reaped");
}

#[test]
fn no_such_pid() {
    assert!(matches!(Pidfd::open(0), Err(Error::ProcessGone { .. })));
    assert!(matches!(Pidfd::open(-5), Err(Error::ProcessGone { .. })));
    // Above pid_max: cannot exist.
    assert!(matches!(
        Pidfd::open(i32::MAX),
        Err(Error::ProcessGone { .. })
    ));
    assert!(matches!(
        kill::kill_pid(i32::MAX, &KillOptions::default()),
        Err(Error::ProcessGone { .. })
    ));
}

#[test]
fn refuses_to_signal_ourselves() {
    let me = Pidfd::open(std::process::id() as i32).unwrap();
    // WINCH is harmless should the guard ever fail.
    let e = me.send_signal(Signal::WINCH).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(matches!(
        kill::kill_process(&me, &KillOptions::default()),
        Err(Error::InvalidArgument { .. })
    ));
}

/// A synthetic hierarchy whose path for `our` cgroup is the one this
/// process (and so its children) is really in, plus a sibling `/elsewhere`.
fn mirror_of_our_cgroup() -> (tempfile::TempDir, oomkit::Cgroup, oomkit::Cgroup) {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let ours = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fs = CgroupFs::from_dir_unchecked(dir.path());
    let ours_fs = dir.path().join(ours.trim_start_matches('/'));
    std::fs::create_dir_all(&ours_fs).unwrap();
    std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
    let a = fs.open(&ours_fs).unwrap();
    let b = fs.open(dir.path().join("elsewhere")).unwrap();
    assert_eq!(a.hierarchy_path().to_str().unwrap(), ours);
    (dir, a, b)
}

#[test]
fn membership_is_checked_before_signalling() {
    let (_d, ours, elsewhere) = mirror_of_our_cgroup();
    let mut c = sleeper();
    let p = Pidfd::open(pid(&c)).unwrap();
    assert_eq!(p.membership(&ours).unwrap(), Membership::Member);
    assert_eq!(p.membership(&elsewhere).unwrap(), Membership::Elsewhere);
    // A PID "listed" by the wrong cgroup: nothing is signalled.
    assert!(matches!(
        Pidfd::open_in(&elsewhere, pid(&c)),
        Err(Error::ProcessGone { .. })
    ));
    assert!(matches!(
        kill::kill_member(&elsewhere, pid(&c), &KillOptions::default()),
        Err(Error::ProcessGone { .. })
    ));
    assert!(p.is_alive().unwrap(), "not a member: not signalled");
    assert!(c.try_wait().unwrap().is_none());
    // The right cgroup: killed.
    let out = kill::kill_member(&ours, pid(&c), &KillOptions::default()).unwrap();
    assert!(out.exited);
    c.wait().unwrap();
    // After exit the membership check reports the race.
    assert!(matches!(
        p.membership(&ours),
        Err(Error::ProcessGone { .. })
    ));
}
