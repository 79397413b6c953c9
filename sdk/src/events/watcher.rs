//! The epoll multiplexer.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::event::Timespec;
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::io::Errno;

use crate::cgroup::Cgroup;
use crate::error::{Error, Op, Result};
use crate::util::io_err;

use super::{
    CgroupEventsWatch, DirWatch, DirWatchOptions, Event, EventKind, Interest, MachineWatch,
    MachineWatchConfig, MemoryEventsWatch, PsiThreshold, PsiTrigger, ReadFail, Readiness, Scope,
    Token,
};

/// A source owned by a [`Watcher`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Source {
    /// `memory.events(.local)`.
    MemoryEvents(MemoryEventsWatch),
    /// A PSI trigger.
    Psi(PsiTrigger),
    /// `cgroup.events`.
    CgroupEvents(CgroupEventsWatch),
    /// A directory watch.
    Dir(DirWatch),
    /// The machine-wide early warning (boxed: its monitor state is large
    /// next to the other sources).
    Machine(Box<MachineWatch>),
    /// A caller's fd.
    Fd {
        /// The fd.
        fd: OwnedFd,
        /// What it is registered for.
        interest: Interest,
    },
}

impl Source {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Source::MemoryEvents(s) => s.as_fd(),
            Source::Psi(s) => s.as_fd(),
            Source::CgroupEvents(s) => s.as_fd(),
            Source::Dir(s) => s.as_fd(),
            Source::Machine(s) => s.as_fd(),
            Source::Fd { fd, .. } => fd.as_fd(),
        }
    }

    fn flags(&self) -> EventFlags {
        match self {
            // kernfs and PSI files: POLLPRI only (POLLIN is always set on
            // them); level-triggered, see the module docs.
            Source::MemoryEvents(_) | Source::Psi(_) | Source::CgroupEvents(_) => EventFlags::PRI,
            // The machine source's private epoll: readable when its timer
            // expired or one of its PSI triggers fired.
            Source::Dir(_) | Source::Machine(_) => EventFlags::IN,
            Source::Fd { interest, .. } => {
                let mut f = EventFlags::empty();
                if interest.readable {
                    f |= EventFlags::IN | EventFlags::RDHUP;
                }
                if interest.writable {
                    f |= EventFlags::OUT;
                }
                if interest.priority {
                    f |= EventFlags::PRI;
                }
                f
            }
        }
    }
}

#[derive(Debug)]
struct Slot {
    token: Token,
    source: Source,
    /// Still in the epoll set (false after the source reported `Gone`).
    registered: bool,
}

/// The events returned by one [`Watcher::wait`]: a view of the watcher's
/// pre-allocated batch buffer.
#[derive(Debug, Clone, Copy)]
pub struct Events<'a> {
    events: &'a [Event],
}

impl<'a> Events<'a> {
    /// The events as a slice.
    pub fn as_slice(&self) -> &'a [Event] {
        self.events
    }

    /// Iterates the events.
    pub fn iter(&self) -> std::slice::Iter<'a, Event> {
        self.events.iter()
    }

    /// How many events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when the wait timed out (or was interrupted by a signal).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

impl<'a> IntoIterator for Events<'a> {
    type Item = &'a Event;
    type IntoIter = std::slice::Iter<'a, Event>;
    fn into_iter(self) -> Self::IntoIter {
        self.events.iter()
    }
}

impl<'a> IntoIterator for &Events<'a> {
    type Item = &'a Event;
    type IntoIter = std::slice::Iter<'a, Event>;
    fn into_iter(self) -> Self::IntoIter {
        self.events.iter()
    }
}

/// One epoll instance multiplexing event sources, returning typed events
/// tagged with each source's [`Token`].
///
/// All buffers are sized at creation ([`with_capacity`](Self::with_capacity)):
/// after warm-up, [`wait`](Self::wait) and the re-reads it performs make no
/// heap allocation. Sources live in a slab indexed by the epoll user data.
///
/// The watcher is itself pollable ([`AsFd`] gives the epoll fd, readable
/// when some source is ready), so it can sit inside another event loop; use
/// [`poll_ready`](Self::poll_ready) there. It has no thread and installs no
/// signal handler.
///
/// ```
/// use std::time::Duration;
/// use oomkit::events::{EventKind, Interest, Token, Watcher};
/// use rustix::event::{EventfdFlags, eventfd};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut w = Watcher::with_capacity(8)?;
/// // The handler loop's own wakeup: an eventfd.
/// let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
/// let t = w.add_fd(wake, Interest::READABLE, Token(7))?;
/// assert!(w.poll_ready()?.is_empty());
///
/// rustix::io::write(w.fd(t).unwrap(), &1u64.to_ne_bytes())?;
/// let evs = w.wait(Some(Duration::from_secs(5)))?;
/// assert_eq!(evs.len(), 1);
/// assert_eq!(evs.as_slice()[0].token, Token(7));
/// assert!(matches!(evs.as_slice()[0].kind, EventKind::Fd(r) if r.readable));
/// # Ok(()) }
/// ```
pub struct Watcher {
    epoll: OwnedFd,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    ep_buf: Vec<epoll::Event>,
    out: Vec<Event>,
    next_token: u64,
    /// Token → slot, so lookups do not scan 10,000 sources.
    index: std::collections::HashMap<Token, usize>,
    /// Slots holding directory watches: the only sources that can have
    /// buffered events, checked on every `wait` without scanning the rest.
    dirs: Vec<usize>,
}

const DEFAULT_CAPACITY: usize = 32;
/// Watcher-assigned tokens count up from here, so they never meet the small
/// numbers callers tend to choose for their own fds.
const ASSIGNED_TOKENS_FROM: u64 = 1 << 63;
const MAX_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

impl Watcher {
    /// A watcher sized for [`DEFAULT_CAPACITY`](Self::with_capacity) (32)
    /// sources.
    pub fn new() -> Result<Self> {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A watcher with room for `n` sources and batches of up to `2n` events
    /// (at least 8) before anything must allocate. More sources can be added
    /// (the slab grows); a batch never exceeds its capacity — directory
    /// events that do not fit stay buffered for the next `wait`.
    pub fn with_capacity(n: usize) -> Result<Self> {
        let n = n.max(1);
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(|e| Error::sys("epoll_create1", io_err(e)))?;
        let blank = epoll::Event {
            flags: EventFlags::empty(),
            data: EventData::new_u64(0),
        };
        Ok(Watcher {
            epoll,
            slots: Vec::with_capacity(n),
            free: Vec::with_capacity(n),
            ep_buf: vec![blank; n],
            out: Vec::with_capacity((2 * n).max(8)),
            next_token: ASSIGNED_TOKENS_FROM,
            index: std::collections::HashMap::with_capacity(n),
            dirs: Vec::new(),
        })
    }

    /// How many sources are registered (including those that reported
    /// [`EventKind::Gone`] and were not removed yet).
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// True when no source is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn in_use(&self, token: Token) -> bool {
        self.index.contains_key(&token)
    }

    fn find(&self, token: Token) -> Option<usize> {
        self.index.get(&token).copied()
    }

    /// Adds a source; the watcher assigns its token (from 2^63 upwards,
    /// skipping tokens in use; choose your own below 2^63 and they never
    /// collide with assigned ones).
    pub fn add(&mut self, source: Source) -> Result<Token> {
        let mut t = Token(self.next_token);
        while self.in_use(t) {
            t = Token(t.0.wrapping_add(1) | ASSIGNED_TOKENS_FROM);
        }
        self.next_token = t.0.wrapping_add(1) | ASSIGNED_TOKENS_FROM;
        self.add_with_token(source, t)
    }

    /// Adds a source under a token of the caller's choice, which must not be
    /// in use in this watcher.
    pub fn add_with_token(&mut self, source: Source, token: Token) -> Result<Token> {
        if self.in_use(token) {
            return Err(Error::InvalidArgument {
                what: "token",
                reason: format!("{token:?} is already in use in this watcher"),
            });
        }
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        if let Err(e) = epoll::add(
            &self.epoll,
            source.fd(),
            EventData::new_u64(idx as u64),
            source.flags(),
        ) {
            self.free.push(idx);
            return Err(Error::io(source_path(&source), Op::Watch, io_err(e)));
        }
        if matches!(source, Source::Dir(_)) {
            self.dirs.push(idx);
        }
        if let Some(slot) = self.slots.get_mut(idx) {
            *slot = Some(Slot {
                token,
                source,
                registered: true,
            });
        }
        self.index.insert(token, idx);
        Ok(token)
    }

    /// Watches `memory.events` ([`Scope::Hierarchical`]) or
    /// `memory.events.local` ([`Scope::Local`]) of `cg`.
    pub fn add_memory_events(&mut self, cg: &Cgroup, scope: Scope) -> Result<Token> {
        let s = MemoryEventsWatch::open(cg, scope)?;
        self.add(Source::MemoryEvents(s))
    }

    /// Adds a PSI trigger on `memory.pressure` of `cg`. For other PSI files
    /// (`/proc/pressure/memory`, `io.pressure` …) create the [`PsiTrigger`]
    /// yourself and [`add`](Self::add) it as [`Source::Psi`].
    pub fn add_psi(&mut self, cg: &Cgroup, threshold: PsiThreshold) -> Result<Token> {
        let s = PsiTrigger::memory(cg, threshold)?;
        self.add(Source::Psi(s))
    }

    /// Watches `cgroup.events` of `cg`.
    pub fn add_cgroup_events(&mut self, cg: &Cgroup) -> Result<Token> {
        let s = CgroupEventsWatch::open(cg)?;
        self.add(Source::CgroupEvents(s))
    }

    /// Watches the directory of `cg` for child cgroups.
    pub fn add_dir_watch(&mut self, cg: &Cgroup, opts: DirWatchOptions) -> Result<Token> {
        let s = DirWatch::new(cg, opts)?;
        self.add(Source::Dir(s))
    }

    /// [`Self::add_dir_watch`] on the directory alone
    /// ([`DirWatch::new_unscanned`]): the caller adds the directories that
    /// exist below as it opens them ([`DirWatch::watch_open_dir`]).
    pub(crate) fn add_dir_watch_unscanned(
        &mut self,
        cg: &Cgroup,
        opts: DirWatchOptions,
    ) -> Result<Token> {
        let s = DirWatch::new_unscanned(cg, opts)?;
        self.add(Source::Dir(s))
    }

    /// Adds the machine-wide early warning ([`MachineWatch`]).
    pub fn add_machine(&mut self, cfg: MachineWatchConfig) -> Result<Token> {
        let s = MachineWatch::open(cfg)?;
        self.add(Source::Machine(Box::new(s)))
    }

    /// Adds a caller's fd (an eventfd to wake the loop, a timerfd for
    /// heartbeats, a socket …) under `token`. The watcher owns the fd from
    /// now on ([`fd`](Self::fd) borrows it back; [`remove`](Self::remove)
    /// returns it); pass a `try_clone` if you want to keep a handle.
    /// Level-triggered: the fd is reported by every `wait` until drained.
    pub fn add_fd(
        &mut self,
        fd: impl Into<OwnedFd>,
        interest: Interest,
        token: Token,
    ) -> Result<Token> {
        self.add_with_token(
            Source::Fd {
                fd: fd.into(),
                interest,
            },
            token,
        )
    }

    /// Stops watching the source of `token` and hands it back.
    pub fn remove(&mut self, token: Token) -> Result<Source> {
        let idx = self.find(token).ok_or_else(|| Error::InvalidArgument {
            what: "token",
            reason: format!("{token:?} is not in this watcher"),
        })?;
        let slot = self
            .slots
            .get_mut(idx)
            .and_then(Option::take)
            .ok_or_else(|| Error::InvalidArgument {
                what: "token",
                reason: format!("{token:?} is not in this watcher"),
            })?;
        self.free.push(idx);
        self.index.remove(&token);
        self.dirs.retain(|d| *d != idx);
        if slot.registered {
            // ENOENT/EBADF cannot happen for a registered fd we own; ignore
            // anyway, the source is ours to return.
            let _ = epoll::delete(&self.epoll, slot.source.fd());
        }
        Ok(slot.source)
    }

    /// The source of `token`.
    pub fn source(&self, token: Token) -> Option<&Source> {
        self.slots
            .get(self.find(token)?)?
            .as_ref()
            .map(|s| &s.source)
    }

    /// The source of `token`, mutably (for example to
    /// [`refresh`](MemoryEventsWatch::refresh) it by hand).
    pub fn source_mut(&mut self, token: Token) -> Option<&mut Source> {
        let i = self.find(token)?;
        self.slots.get_mut(i)?.as_mut().map(|s| &mut s.source)
    }

    /// The fd of a source (for [`Source::Fd`], the caller's fd, to drain it).
    pub fn fd(&self, token: Token) -> Option<BorrowedFd<'_>> {
        self.source(token).map(Source::fd)
    }

    /// The events of the last [`wait`](Self::wait), again. The batch returned
    /// by `wait` borrows the watcher mutably; this shared view lets a loop
    /// use [`fd`](Self::fd) or [`source`](Self::source) while going through
    /// the events.
    pub fn last_events(&self) -> Events<'_> {
        Events { events: &self.out }
    }

    /// Returns what is ready now, without blocking. Same as
    /// `wait(Some(Duration::ZERO))`.
    pub fn poll_ready(&mut self) -> Result<Events<'_>> {
        self.wait(Some(Duration::ZERO))
    }

    /// Waits up to `timeout` (`None`: forever) for sources to become ready,
    /// services them (re-reads, diffs, drains inotify) and returns the
    /// resulting events. An empty batch means the timeout passed or a signal
    /// interrupted the wait (so a loop can check its own shutdown flag), or
    /// only spurious wakeups arrived.
    ///
    /// Per-source trouble never fails the whole call: a removed cgroup is
    /// [`EventKind::Gone`] (and the source is no longer polled), other
    /// failures [`EventKind::Failed`]. `Err` means epoll itself failed.
    ///
    /// Makes no heap allocation (after the first calls have warmed up the
    /// buffers, which are pre-sized anyway).
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Events<'_>> {
        self.out.clear();
        let pending = self.dirs.iter().any(|&i| {
            matches!(self.slots.get(i), Some(Some(s)) if s.registered && matches!(&s.source, Source::Dir(d) if d.has_pending()))
        });
        let timeout = if pending {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        // epoll_pwait takes milliseconds in a C int (about 24.8 days);
        // clamp rather than fail on longer timeouts.
        let ts = timeout.map(|d| d.min(MAX_TIMEOUT)).map(|d| Timespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        // Never fetch more readiness than the batch can hold: a PSI trigger's
        // readiness is consumed by epoll_wait itself and must not be dropped.
        let max = self.ep_buf.len().min(self.out.capacity()).max(1);
        let Some(buf) = self.ep_buf.get_mut(..max) else {
            return Ok(Events { events: &[] });
        };
        let n = match epoll::wait(&self.epoll, buf, ts.as_ref()) {
            Ok(n) => n,
            // A signal: return to the caller's loop (which may have a flag
            // to check) with an empty batch; nothing ready is lost.
            Err(Errno::INTR) => return Ok(Events { events: &[] }),
            Err(e) => return Err(Error::sys("epoll_wait", io_err(e))),
        };
        let mut dirs_ready = pending;
        for i in 0..n {
            let Some(ev) = self.ep_buf.get(i).copied() else {
                break;
            };
            let idx = ev.data.u64() as usize;
            let flags = ev.flags;
            dirs_ready |= self.service(idx, flags);
        }
        if dirs_ready {
            self.drain_dirs();
        }
        Ok(Events { events: &self.out })
    }

    /// Services one ready source. Returns true for a directory watch, which
    /// is drained after the others (its events fill the remaining room).
    fn service(&mut self, idx: usize, flags: EventFlags) -> bool {
        let Some(Some(slot)) = self.slots.get_mut(idx) else {
            return false;
        };
        if !slot.registered {
            return false;
        }
        let token = slot.token;
        let kind = match &mut slot.source {
            Source::MemoryEvents(s) => match s.refresh_raw() {
                Ok(Some(ch)) => Some(EventKind::MemoryEvents(ch)),
                Ok(None) => None,
                Err(ReadFail::Gone) => Some(EventKind::Gone),
                Err(ReadFail::Failed(f)) => Some(EventKind::Failed(f)),
            },
            Source::CgroupEvents(s) => match s.refresh_raw() {
                Ok(Some(ch)) => Some(EventKind::CgroupEvents(ch)),
                Ok(None) => None,
                Err(ReadFail::Gone) => Some(EventKind::Gone),
                Err(ReadFail::Failed(f)) => Some(EventKind::Failed(f)),
            },
            Source::Psi(s) => {
                if flags.contains(EventFlags::ERR) {
                    // The trigger was destroyed (its cgroup removed): a
                    // live trigger never polls POLLERR.
                    Some(EventKind::Gone)
                } else if flags.contains(EventFlags::PRI) {
                    Some(EventKind::Pressure(s.read_raw().ok()))
                } else {
                    None
                }
            }
            Source::Machine(s) => match s.service_raw(std::time::Instant::now()) {
                Ok(Some(ch)) => Some(EventKind::Machine(ch)),
                Ok(None) => None,
                Err(f) => Some(EventKind::Failed(f)),
            },
            Source::Fd { .. } => Some(EventKind::Fd(Readiness {
                readable: flags.contains(EventFlags::IN),
                writable: flags.contains(EventFlags::OUT),
                priority: flags.contains(EventFlags::PRI),
                hangup: flags.intersects(EventFlags::HUP | EventFlags::RDHUP),
                error: flags.contains(EventFlags::ERR),
            })),
            Source::Dir(_) => return true,
        };
        if let Some(kind) = kind {
            self.emit(idx, token, kind);
        }
        false
    }

    /// Appends an event (the caller guarantees room) and deregisters a
    /// source that reported `Gone`: its dead fd would be level-ready forever.
    fn emit(&mut self, idx: usize, token: Token, kind: EventKind) {
        if self.out.len() < self.out.capacity() {
            self.out.push(Event { token, kind });
        }
        if kind == EventKind::Gone {
            if let Some(Some(slot)) = self.slots.get_mut(idx) {
                slot.registered = false;
                let _ = epoll::delete(&self.epoll, slot.source.fd());
            }
        }
    }

    fn drain_dirs(&mut self) {
        for di in 0..self.dirs.len() {
            let Some(&idx) = self.dirs.get(di) else {
                break;
            };
            loop {
                if self.out.len() >= self.out.capacity() {
                    return;
                }
                let Some(Some(slot)) = self.slots.get_mut(idx) else {
                    break;
                };
                let token = slot.token;
                let Source::Dir(d) = &mut slot.source else {
                    break;
                };
                if !slot.registered {
                    break;
                }
                let Some(kind) = d.next_event() else {
                    break;
                };
                self.emit(idx, token, kind);
            }
        }
    }
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("epoll", &self.epoll)
            .field("slots", &self.slots)
            .field("batch_capacity", &self.out.capacity())
            .finish_non_exhaustive()
    }
}

fn source_path(s: &Source) -> std::path::PathBuf {
    match s {
        Source::MemoryEvents(s) => s.path().to_owned(),
        Source::Psi(s) => s.path().to_owned(),
        Source::CgroupEvents(s) => s.path().to_owned(),
        Source::Dir(s) => s.path().to_owned(),
        Source::Machine(s) => s.path().to_owned(),
        Source::Fd { fd, .. } => format!("fd {}", fd.as_raw_fd()).into(),
    }
}

impl AsFd for Watcher {
    /// The epoll fd: readable when a source is ready.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

impl AsRawFd for Watcher {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}
