//! The kernel log (`/dev/kmsg`) as the tests read it: the OOM killer's lines logged since a
//! point, read by the test itself and not through the SDK, so that they can check the SDK's
//! reports against it and quote it in failure messages.

use std::io::{Read, Seek};
use std::os::unix::fs::OpenOptionsExt;

use crate::harness::Fail;

/// `/dev/kmsg`, opened at its end.
pub struct KernelLog {
    f: std::fs::File,
}

impl KernelLog {
    /// Opens the log; what is read later starts from now.
    pub fn open() -> Result<Self, Fail> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .map_err(|e| Fail(format!("open /dev/kmsg: {e}")))?;
        f.seek(std::io::SeekFrom::End(0))
            .map_err(|e| Fail(format!("seek /dev/kmsg: {e}")))?;
        Ok(KernelLog { f })
    }

    /// The OOM killer's messages logged since [`Self::open`] (or the previous call): the
    /// invocation, `oom-kill:` summaries, `Killed process` lines and the task lists.
    pub fn oom_lines(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let msg = rec
                        .split_once(';')
                        .map(|(_, m)| m.lines().next().unwrap_or("").to_string())
                        .unwrap_or_default();
                    if msg.contains("Killed process")
                        || msg.starts_with("oom-kill:")
                        || msg.starts_with("Tasks in ")
                        || msg.contains("invoked oom-killer")
                        || msg.starts_with("Memory cgroup out of memory")
                    {
                        out.push(msg);
                    }
                }
                // Records overwritten before they were read: go on with the next.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        out
    }
}
