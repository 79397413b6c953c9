//! A tokio adapter for [`OomMonitor`] (feature `tokio`).

use std::os::fd::{AsFd, OwnedFd};

use tokio::io::unix::AsyncFd;

use crate::error::{Error, Result};

use super::{MonitorEvent, OomMonitor};

/// An [`OomMonitor`] driven by the tokio reactor: its epoll fd is registered
/// with tokio, and [`next`](Self::next) also honours the monitor's own
/// deadline (a report waiting for its victims' log lines) with a tokio timer.
/// No task or thread is spawned; create it inside a runtime with I/O and time
/// drivers enabled.
#[derive(Debug)]
pub struct AsyncOomMonitor {
    monitor: OomMonitor,
    /// A duplicate of the monitor's epoll fd that nothing else can reach, so
    /// it stays open and the same for the life of the registration (see
    /// [`AsyncWatcher`](crate::events::AsyncWatcher)).
    ready: AsyncFd<OwnedFd>,
}

impl AsyncOomMonitor {
    /// Registers the monitor's fd with the current tokio reactor.
    pub fn new(monitor: OomMonitor) -> Result<Self> {
        let ready = crate::events::async_watcher::register_readable(monitor.as_fd())?;
        Ok(AsyncOomMonitor { monitor, ready })
    }

    /// The monitor (for [`finish`](OomMonitor::finish) and friends).
    pub fn get_mut(&mut self) -> &mut OomMonitor {
        &mut self.monitor
    }

    /// Waits until the monitor has something to report and returns it.
    pub async fn next(&mut self) -> Result<Vec<MonitorEvent>> {
        loop {
            let evs = self.monitor.process()?;
            if !evs.is_empty() {
                return Ok(evs);
            }
            let readable = self.ready.readable();
            let guard = match self.monitor.next_timeout() {
                Some(t) => tokio::time::timeout(t, readable).await.ok(),
                None => Some(readable.await),
            };
            if let Some(g) = guard {
                let mut g = g.map_err(|source| Error::Sys {
                    call: "tokio readiness",
                    source,
                })?;
                let evs = self.monitor.process()?;
                if !evs.is_empty() {
                    return Ok(evs);
                }
                g.clear_ready();
            }
        }
    }
}
