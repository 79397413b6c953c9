//! PSI trigger argument validation, and a real trigger on the host's
//! `/proc/pressure/memory` when the kernel has PSI.
// A test crate: its helper functions (outside `#[test]`) may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use oomkit::Error;
use oomkit::events::{
    EventKind, PsiStall, PsiThreshold, PsiTrigger, Source, Watcher, has_cap_sys_resource,
};
use rustix::event::{PollFd, PollFlags, poll};

#[path = "common/skip.rs"]
mod skip;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn reason(r: oomkit::Result<()>) -> String {
    match r {
        Err(Error::InvalidArgument { what, reason }) => {
            assert_eq!(what, "PSI trigger");
            reason
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn window_bounds() {
    let r = reason(PsiThreshold::some(ms(100), ms(499)).validate(true));
    assert!(r.contains("499000 us") && r.contains("500 ms"), "{r}");
    let r = reason(PsiThreshold::some(ms(100), ms(10_001)).validate(true));
    assert!(r.contains("10001000 us") && r.contains("10 s"), "{r}");
    PsiThreshold::some(ms(100), ms(500)).validate(true).unwrap();
    PsiThreshold::some(ms(100), ms(10_000))
        .validate(true)
        .unwrap();
}

#[test]
fn stall_bounds() {
    let r = reason(PsiThreshold::full(Duration::ZERO, ms(1000)).validate(true));
    assert!(r.contains("more than 0"), "{r}");
    // Sub-microsecond stalls round down to 0.
    let r = reason(PsiThreshold::full(Duration::from_nanos(999), ms(1000)).validate(true));
    assert!(r.contains("more than 0"), "{r}");
    let r = reason(PsiThreshold::full(ms(1001), ms(1000)).validate(true));
    assert!(
        r.contains("1001000 us exceeds the window of 1000000 us"),
        "{r}"
    );
    PsiThreshold::full(ms(1000), ms(1000))
        .validate(true)
        .unwrap();
    PsiThreshold::full(Duration::from_micros(1), ms(1000))
        .validate(true)
        .unwrap();
}

#[test]
fn unprivileged_windows_are_multiples_of_two_seconds() {
    for w in [500, 1000, 2500, 3000, 9000] {
        let r = reason(PsiThreshold::some(ms(100), ms(w)).validate(false));
        assert!(r.contains("multiple of 2 s"), "{w}: {r}");
        assert!(r.contains("CAP_SYS_RESOURCE"), "{w}: {r}");
        PsiThreshold::some(ms(100), ms(w)).validate(true).unwrap();
    }
    for w in [2000, 4000, 10_000] {
        PsiThreshold::some(ms(100), ms(w)).validate(false).unwrap();
    }
}

#[test]
fn validation_runs_before_any_file_is_touched() {
    // A bad threshold on a path that does not exist: the argument error
    // wins, so it is reported however the file system looks.
    let e = PsiTrigger::on_path(
        "/nonexistent/memory.pressure",
        PsiThreshold::some(ms(0), ms(2000)),
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    // A good threshold on a missing file: unsupported, not an I/O error.
    let e = PsiTrigger::on_path(
        "/nonexistent/memory.pressure",
        PsiThreshold::some(ms(100), ms(2000)),
    )
    .unwrap_err();
    assert!(e.is_unsupported(), "{e}");
}

#[test]
fn threshold_display_is_the_kernel_syntax() {
    let t = PsiThreshold::some(ms(150), ms(2000));
    assert_eq!(t.to_string(), "some 150000 2000000");
    assert_eq!(t.kind, PsiStall::Some);
}

#[test]
fn cap_check_matches_proc_status() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(has_cap_sys_resource(), cap_eff & (1 << 24) != 0);
}

fn host_has_psi() -> bool {
    Path::new("/proc/pressure/memory").exists()
}

#[test]
fn host_trigger_registers_and_is_pollable() {
    if !host_has_psi() {
        return skip::skip("no /proc/pressure/memory on this kernel");
    }
    let th = PsiThreshold::some(ms(150), ms(2000));
    let mut t = match PsiTrigger::system_memory(th) {
        Ok(t) => t,
        // Writing triggers needs write permission on the file (root).
        Err(Error::Write { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            return skip::skip("not allowed to write PSI triggers");
        }
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::PermissionDenied => {
            return skip::skip("not allowed to open the PSI file read-write");
        }
        Err(e) => panic!("creating a valid trigger failed: {e}"),
    };
    assert_eq!(t.threshold(), th);
    // The trigger is really registered on this fd: the kernel refuses a
    // second one with EBUSY.
    let again = rustix::io::write(&t, b"some 150000 2000000\0");
    assert_eq!(again, Err(rustix::io::Errno::BUSY));
    // Pollable for POLLPRI (whether it fires depends on the machine).
    let mut fds = [PollFd::new(&t, PollFlags::PRI)];
    poll(&mut fds, Some(&rustix::event::Timespec::default())).unwrap();
    assert!(
        !fds[0].revents().contains(PollFlags::ERR),
        "a live trigger never polls POLLERR"
    );
    // The pressure reading through the second fd parses.
    let p = t.read().unwrap();
    assert!(p.some.avg10 >= 0.0 && p.full.is_some());
    // In a watcher: registration works, and a non-blocking wait either
    // returns nothing or a Pressure event, never Gone.
    let mut w = Watcher::with_capacity(4).unwrap();
    let tok = w.add(Source::Psi(t)).unwrap();
    for ev in w.poll_ready().unwrap() {
        assert_eq!(ev.token, tok);
        assert!(matches!(ev.kind, EventKind::Pressure(Some(_))), "{ev:?}");
    }
    assert!(matches!(w.remove(tok).unwrap(), Source::Psi(_)));
}

#[test]
fn host_kernel_agrees_with_the_privilege_rule() {
    if !host_has_psi() || has_cap_sys_resource() {
        return skip::skip("needs PSI and a process without CAP_SYS_RESOURCE");
    }
    // We refuse a 1 s window without CAP_SYS_RESOURCE...
    let e = PsiTrigger::system_memory(PsiThreshold::some(ms(100), ms(1000))).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    // ...and so does this (6.5+) kernel when asked directly.
    let fd = rustix::fs::open(
        "/proc/pressure/memory",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    );
    let Ok(fd) = fd else {
        return skip::skip("cannot open /proc/pressure/memory read-write");
    };
    let (maj, min) = kernel_version();
    if (maj, min) >= (6, 5) {
        assert_eq!(
            rustix::io::write(&fd, b"some 100000 1000000\0"),
            Err(rustix::io::Errno::INVAL)
        );
    }
}

fn kernel_version() -> (u32, u32) {
    let uname = rustix::system::uname();
    let rel = uname.release().to_string_lossy().into_owned();
    let mut it = rel.split(|c: char| !c.is_ascii_digit());
    let maj = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let min = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (maj, min)
}
