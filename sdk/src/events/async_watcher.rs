//! A tokio adapter for [`Watcher`] (feature `tokio`).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::error::{Error, Result};

use super::{Events, Watcher};

/// A [`Watcher`] driven by the tokio reactor: its epoll fd is registered
/// with tokio (readable when a source is ready) and each
/// [`next_batch`](Self::next_batch) services the sources without blocking.
///
/// No task or thread is spawned. Must be created inside a tokio runtime with
/// the I/O driver enabled.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use oomkit::events::{AsyncWatcher, EventKind, Interest, Token, Watcher};
/// use rustix::event::{EventfdFlags, eventfd};
///
/// let mut w = Watcher::new()?;
/// let wake = eventfd(1, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
/// w.add_fd(wake, Interest::READABLE, Token(1))?;
/// let mut aw = AsyncWatcher::new(w)?;
/// let batch = aw.next_batch().await?;
/// assert!(matches!(batch.as_slice()[0].kind, EventKind::Fd(_)));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AsyncWatcher {
    watcher: Watcher,
    /// A duplicate of the watcher's epoll fd, registered with tokio. Tokio
    /// requires that the fd it polls stays open and the same for the life
    /// of the registration; a private `OwnedFd` guarantees that even if the
    /// caller replaces the watcher behind [`get_mut`](Self::get_mut) (which
    /// would then merely stop the wakeups, not break memory safety).
    ready: AsyncFd<OwnedFd>,
}

impl AsyncWatcher {
    /// Registers `watcher`'s epoll fd with the current tokio reactor.
    pub fn new(watcher: Watcher) -> Result<Self> {
        let ready = register_readable(watcher.as_fd())?;
        Ok(AsyncWatcher { watcher, ready })
    }

    /// The watcher, to add and remove sources.
    pub fn get_mut(&mut self) -> &mut Watcher {
        &mut self.watcher
    }

    /// The watcher.
    pub fn get_ref(&self) -> &Watcher {
        &self.watcher
    }

    /// Deregisters from tokio and returns the watcher.
    pub fn into_inner(self) -> Watcher {
        self.watcher
    }

    /// Waits until at least one event is available and returns the batch.
    ///
    /// Readiness is cleared only when a non-blocking
    /// [`Watcher::wait`] found nothing, so events left for later (a
    /// directory watch with more buffered changes than fit in one batch)
    /// are returned by the next call without waiting for the kernel again.
    pub async fn next_batch(&mut self) -> Result<Events<'_>> {
        loop {
            let mut guard = self.ready.readable().await.map_err(|source| Error::Sys {
                call: "tokio readiness",
                source,
            })?;
            if !self.watcher.wait(Some(Duration::ZERO))?.is_empty() {
                break;
            }
            guard.clear_ready();
        }
        Ok(self.watcher.last_events())
    }
}

/// A private duplicate of `fd` registered with the current tokio reactor
/// for readability: what [`AsyncWatcher`] and the OOM monitor's async
/// adapter wait on.
pub(crate) fn register_readable(fd: BorrowedFd<'_>) -> Result<AsyncFd<OwnedFd>> {
    let dup = fd.try_clone_to_owned().map_err(|source| Error::Sys {
        call: "dup",
        source,
    })?;
    // `with_interest` is deprecated since tokio 1.54 in favour of the
    // `unsafe` `register_with_interest`, because for an arbitrary `T` the fd
    // could change or close under the registration. Here `T` is an `OwnedFd`
    // that nothing else can reach: it stays open and the same until the
    // `AsyncFd` is dropped, which is the invariant the unsafe variant asks
    // for, so the safe call is sound.
    #[allow(deprecated)]
    AsyncFd::with_interest(dup, Interest::READABLE).map_err(|source| Error::Sys {
        call: "tokio AsyncFd registration",
        source,
    })
}
