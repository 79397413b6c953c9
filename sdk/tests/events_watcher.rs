//! The `Watcher` itself, with eventfds and pipes (`add_fd`): tokens,
//! removal, batching, and being pollable from an outer loop.
// A test crate: its helper functions (outside `#[test]`) may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use oomkit::Error;
use oomkit::events::{EventKind, Interest, Readiness, Source, Token, Watcher};
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, eventfd, poll};

const BOUND: Option<Duration> = Some(Duration::from_secs(10));

fn efd() -> OwnedFd {
    eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap()
}

fn kick(fd: impl AsFd) {
    rustix::io::write(fd, &1u64.to_ne_bytes()).unwrap();
}

fn drain(fd: impl AsFd) {
    let mut b = [0u8; 8];
    rustix::io::read(fd, &mut b).unwrap();
}

#[test]
fn eventfd_readiness_is_level_triggered_until_drained() {
    let mut w = Watcher::with_capacity(4).unwrap();
    let t = w.add_fd(efd(), Interest::READABLE, Token(42)).unwrap();
    assert_eq!(t, Token(42));
    assert!(w.poll_ready().unwrap().is_empty());

    kick(w.fd(t).unwrap());
    for _ in 0..2 {
        let evs = w.wait(BOUND).unwrap();
        assert_eq!(evs.len(), 1);
        let ev = evs.as_slice()[0];
        assert_eq!(ev.token, t);
        assert_eq!(
            ev.kind,
            EventKind::Fd(Readiness {
                readable: true,
                ..Default::default()
            })
        );
    }
    drain(w.fd(t).unwrap());
    assert!(w.poll_ready().unwrap().is_empty());
    assert_eq!(w.last_events().len(), 0);
}

#[test]
fn pipe_hangup_is_reported() {
    let (r, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let mut w = Watcher::new().unwrap();
    let t = w.add_fd(r, Interest::READABLE, Token(1)).unwrap();
    rustix::io::write(&wr, b"x").unwrap();
    let evs = w.wait(BOUND).unwrap();
    let EventKind::Fd(rd) = evs.as_slice()[0].kind else {
        panic!("{evs:?}")
    };
    assert!(rd.readable && !rd.hangup);
    drop(wr);
    let evs = w.wait(BOUND).unwrap();
    let EventKind::Fd(rd) = evs.as_slice()[0].kind else {
        panic!("{evs:?}")
    };
    assert!(rd.hangup);
    assert_eq!(evs.as_slice()[0].token, t);
}

#[test]
fn tokens_are_unique_and_assigned_around_caller_choices() {
    let mut w = Watcher::with_capacity(2).unwrap();
    let src = || Source::Fd {
        fd: efd(),
        interest: Interest::READABLE,
    };
    // Caller-chosen tokens are small; assigned ones start at 2^63 and skip
    // any a caller took there.
    w.add_fd(efd(), Interest::READABLE, Token(0)).unwrap();
    w.add_fd(efd(), Interest::READABLE, Token(1 << 63)).unwrap();
    let a = w.add(src()).unwrap();
    assert_eq!(a, Token((1 << 63) + 1));
    let b = w.add(src()).unwrap();
    assert_eq!(b, Token((1 << 63) + 2));
    let e = w.add_fd(efd(), Interest::READABLE, a).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { what: "token", .. }),
        "{e}"
    );
    assert_eq!(w.len(), 4, "the slab grew past its initial capacity");
    let e = w.remove(Token(77)).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
}

#[test]
fn removed_sources_are_returned_and_silent() {
    let mut w = Watcher::with_capacity(4).unwrap();
    let a = w.add_fd(efd(), Interest::READABLE, Token(10)).unwrap();
    let b = w.add_fd(efd(), Interest::READABLE, Token(11)).unwrap();
    kick(w.fd(a).unwrap());
    kick(w.fd(b).unwrap());
    let Source::Fd { fd, interest } = w.remove(a).unwrap() else {
        panic!("wrong source kind")
    };
    assert_eq!(interest, Interest::READABLE);
    let evs = w.wait(BOUND).unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs.as_slice()[0].token, b);
    // The returned fd is still ours and still readable.
    drain(&fd);
    // Its slot is reused by the next source, under a fresh token.
    let c = w.add_fd(fd, Interest::READABLE, Token(12)).unwrap();
    kick(w.fd(c).unwrap());
    let toks: BTreeSet<_> = w.wait(BOUND).unwrap().iter().map(|e| e.token).collect();
    assert_eq!(toks, [b, c].into_iter().collect());
}

#[test]
fn more_ready_sources_than_a_batch_are_served_over_several_waits() {
    let mut w = Watcher::with_capacity(2).unwrap();
    let toks: Vec<Token> = (0..5)
        .map(|i| w.add_fd(efd(), Interest::READABLE, Token(i)).unwrap())
        .collect();
    for t in &toks {
        kick(w.fd(*t).unwrap());
    }
    let mut seen = BTreeSet::new();
    for _ in 0..5 {
        let n = w.wait(BOUND).unwrap().len();
        assert!(n <= 2, "epoll batch is sized by the capacity");
        // `last_events` borrows the watcher shared, so its fds can be used
        // while going through the batch.
        for e in w.last_events() {
            if seen.insert(e.token) {
                drain(w.fd(e.token).unwrap());
            }
        }
        if seen.len() == toks.len() {
            break;
        }
    }
    assert_eq!(seen.len(), toks.len());
}

#[test]
fn the_watcher_fd_is_pollable_from_an_outer_loop() {
    let mut w = Watcher::with_capacity(4).unwrap();
    let t = w.add_fd(efd(), Interest::READABLE, Token(5)).unwrap();
    let zero = Timespec::default();
    let ready = |w: &Watcher| {
        let mut fds = [PollFd::new(w, PollFlags::IN)];
        poll(&mut fds, Some(&zero)).unwrap() == 1
    };
    assert!(!ready(&w));
    kick(w.fd(t).unwrap());
    assert!(ready(&w));
    assert_eq!(w.poll_ready().unwrap().len(), 1);
    drain(w.fd(t).unwrap());
    assert!(w.poll_ready().unwrap().is_empty());
    assert!(!ready(&w));
}

#[test]
fn wait_times_out_with_an_empty_batch() {
    let mut w = Watcher::with_capacity(1).unwrap();
    w.add_fd(efd(), Interest::READABLE, Token(0)).unwrap();
    assert!(w.wait(Some(Duration::from_millis(1))).unwrap().is_empty());
    // Timeouts longer than epoll's int milliseconds are clamped, not
    // refused (checked with a ready source so the test does not block).
    kick(w.fd(Token(0)).unwrap());
    assert_eq!(w.wait(Some(Duration::MAX)).unwrap().len(), 1);
}
