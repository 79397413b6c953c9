//! Who the kernel OOM killer killed, from `/dev/kmsg`.
//!
//! `memory.events` says *that* the kernel killed (`oom_kill`), never *whom*.
//! The kernel log does. On every kernel from 5.10 to 7.2 an OOM kill writes:
//!
//! ```text
//! oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/pod,task_memcg=/pod/ctr,task=hog,pid=1234,uid=0
//! Memory cgroup out of memory: Killed process 1234 (hog) total-vm:…kB, anon-rss:…kB, …
//! ```
//!
//! (`Out of memory: Killed process …` for a system-wide OOM), and for a
//! `memory.oom.group` kill, after the first victim:
//!
//! ```text
//! Tasks in /pod/ctr are going to be killed due to memory.oom.group set
//! Memory cgroup out of memory: Killed process 1235 (worker) total-vm:…
//! ```
//!
//! The `oom-kill:` summary names the victim's cgroup (`task_memcg`) and the
//! cgroup whose limit fired (`oom_memcg`), but it is part of the OOM report
//! the kernel rate-limits (10 per 5 s); the `Killed process` line is never
//! rate-limited but names no cgroup. So a kill line takes its cgroup from the
//! summary of the same PID, else from the group announcement before it, else
//! from `/proc/PID/cgroup` (the victim is still exiting or a zombie when its
//! line is read), else it stays unattributed.
//!
//! Ordering: the kernel raises `oom_kill` in `memory.events` *before* it
//! logs the kill, so a monitor woken by the counter may not find the line
//! yet; it waits for it (see [`OomMonitor`](super::OomMonitor)).
//!
//! Reading `/dev/kmsg` needs `CAP_SYSLOG` when `kernel.dmesg_restrict` is
//! set; without it the monitor says so and reports counters only.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{Mode, OFlags, SeekFrom};
use rustix::io::Errno;

/// One kill the kernel logged.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct KillRecord {
    /// The victim's PID (in the initial PID namespace).
    pub pid: i32,
    /// The victim's command name (`comm`, at most 15 bytes).
    pub comm: String,
    /// The victim's cgroup as the kernel printed it (hierarchy path), when
    /// known.
    pub memcg: Option<PathBuf>,
    /// The cgroup whose limit fired (`oom_memcg` of the summary line), when
    /// logged; `None` also for a system-wide OOM.
    pub oom_memcg: Option<PathBuf>,
    /// Killed as a member of a `memory.oom.group` group (not the first victim).
    pub group_member: bool,
    /// When the kernel logged the kill (`CLOCK_MONOTONIC`, time since boot).
    pub kernel_time: Duration,
}

/// The parts of one `/dev/kmsg` record we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub seq: u64,
    pub usec: u64,
    pub message: &'a str,
}

/// Parses one `/dev/kmsg` record: `prio,seq,usec,flags[,…];message\n`
/// followed by optional ` KEY=value` dictionary lines.
pub(crate) fn parse_record(data: &str) -> Option<Record<'_>> {
    let (header, rest) = data.split_once(';')?;
    let mut fields = header.split(',');
    let _prio = fields.next()?;
    let seq = fields.next()?.parse().ok()?;
    let usec = fields.next()?.parse().ok()?;
    let message = rest.split('\n').next().unwrap_or("");
    Some(Record { seq, usec, message })
}

/// Undoes `/dev/kmsg`'s `\xNN` escaping of non-printable bytes (and of `\`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
            if let Some(v) = b
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `oom-kill:` summary line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    pid: i32,
    task_memcg: Option<PathBuf>,
    oom_memcg: Option<PathBuf>,
}

/// `…,oom_memcg=/a,task_memcg=/a/b,task=hog,pid=1234,uid=0`.
fn parse_summary(msg: &str) -> Option<Summary> {
    let body = msg.strip_prefix("oom-kill:")?;
    let field = |key: &str, next: &str| -> Option<String> {
        let start = body.find(key)? + key.len();
        let rest = &body[start..];
        let end = rest.find(next).unwrap_or(rest.len());
        Some(unescape(&rest[..end]))
    };
    let pid = field(",pid=", ",")?.parse().ok()?;
    Some(Summary {
        pid,
        task_memcg: field(",task_memcg=", ",task=").map(PathBuf::from),
        oom_memcg: field(",oom_memcg=", ",task_memcg=").map(PathBuf::from),
    })
}

/// `… Killed process 1234 (hog) total-vm:…` → (pid, comm).
fn parse_killed(msg: &str) -> Option<(i32, String)> {
    let at = msg.find("Killed process ")?;
    // Only the OOM killer's own lines ("Memory cgroup out of memory:",
    // "Out of memory:", "Out of memory (oom_kill_allocating_task):").
    if !msg[..at].contains("out of memory") && !msg[..at].contains("Out of memory") {
        return None;
    }
    let rest = &msg[at + "Killed process ".len()..];
    let (pid, rest) = rest.split_once(" (")?;
    let pid = pid.parse().ok()?;
    let end = rest
        .find(") total-vm:")
        .or_else(|| rest.rfind(')'))
        .unwrap_or(rest.len());
    Some((pid, unescape(&rest[..end])))
}

/// `Tasks in /a/b are going to be killed due to memory.oom.group set`.
fn parse_group(msg: &str) -> Option<PathBuf> {
    let rest = msg.strip_prefix("Tasks in ")?;
    let path = rest.strip_suffix(" are going to be killed due to memory.oom.group set")?;
    Some(PathBuf::from(unescape(path)))
}

/// Turns kernel log messages into [`KillRecord`]s, remembering the summary
/// and group announcement that precede a kill line.
#[derive(Debug, Default)]
pub(crate) struct KillParser {
    summary: Option<Summary>,
    group: Option<PathBuf>,
}

impl KillParser {
    /// Feeds one message; returns a kill record when it is a kill line.
    /// `lookup` finds a PID's cgroup when the log did not name it.
    pub(crate) fn feed(
        &mut self,
        rec: Record<'_>,
        lookup: &mut dyn FnMut(i32) -> Option<PathBuf>,
    ) -> Option<KillRecord> {
        let msg = rec.message;
        if msg.contains(" invoked oom-killer: ") {
            // The start of the next OOM report.
            self.summary = None;
            self.group = None;
            return None;
        }
        if let Some(s) = parse_summary(msg) {
            self.summary = Some(s);
            self.group = None;
            return None;
        }
        if let Some(g) = parse_group(msg) {
            self.group = Some(g);
            return None;
        }
        let (pid, comm) = parse_killed(msg)?;
        let from_summary = self.summary.as_ref().filter(|s| s.pid == pid);
        let (memcg, oom_memcg, group_member) = match (from_summary, &self.group) {
            (Some(s), _) => (s.task_memcg.clone(), s.oom_memcg.clone(), false),
            (None, Some(g)) => {
                let oom = self.summary.as_ref().and_then(|s| s.oom_memcg.clone());
                (lookup(pid).or_else(|| Some(g.clone())), oom, true)
            }
            (None, None) => (lookup(pid), None, false),
        };
        Some(KillRecord {
            pid,
            comm,
            memcg,
            oom_memcg,
            group_member,
            kernel_time: Duration::from_micros(rec.usec),
        })
    }
}

/// The cgroup of a live or zombie process, from `/proc/PID/cgroup`.
pub(crate) fn proc_cgroup(pid: i32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let p = crate::cgroup::mount::parse_proc_cgroup(&text)?;
    Some(PathBuf::from(p.trim_end_matches(" (deleted)")))
}

fn push_kill(kills: &mut VecDeque<KillRecord>, k: KillRecord) {
    if kills.len() >= KEEP {
        kills.pop_front();
    }
    kills.push_back(k);
}

/// Whether the kernel log can be read, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum KernelLogAccess {
    /// `/dev/kmsg` is open: reports name their victims.
    Readable,
    /// Not asked for ([`MonitorOptions::kernel_log`](super::MonitorOptions)).
    Off,
    /// Opening `/dev/kmsg` failed (typically `EPERM`: `kernel.dmesg_restrict`
    /// is set and the process lacks `CAP_SYSLOG`); reports carry counters
    /// only.
    Unavailable(String),
}

/// Buffer for one record: a record is at most about 1 KiB of text plus its
/// dictionary; the kernel answers `EINVAL` if the buffer is too small.
const RECORD_BUF: usize = 8192;
/// Kill records kept while waiting to be matched to a counter rise.
const KEEP: usize = 1024;

/// A non-blocking reader of `/dev/kmsg`, positioned at the end of the log
/// when opened (only kills from then on are of interest).
#[derive(Debug)]
pub(crate) struct KernelLog {
    fd: Option<OwnedFd>,
    access: KernelLogAccess,
    parser: KillParser,
    buf: Box<[u8; RECORD_BUF]>,
    /// Recent kills, oldest first.
    pub(crate) kills: VecDeque<KillRecord>,
    /// Records the kernel overwrote before we read them (`EPIPE`).
    pub(crate) lost: u64,
    last_seq: Option<u64>,
    #[cfg(test)]
    script: VecDeque<String>,
}

impl KernelLog {
    pub(crate) fn open(enabled: bool) -> Self {
        let (fd, access) = if !enabled {
            (None, KernelLogAccess::Off)
        } else {
            match rustix::fs::open(
                "/dev/kmsg",
                OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => match rustix::fs::seek(&fd, SeekFrom::End(0)) {
                    Ok(_) => (Some(fd), KernelLogAccess::Readable),
                    Err(e) => (
                        None,
                        KernelLogAccess::Unavailable(format!("/dev/kmsg: seek failed: {e}")),
                    ),
                },
                Err(e) => (
                    None,
                    KernelLogAccess::Unavailable(format!(
                        "/dev/kmsg: open failed: {}",
                        std::io::Error::from(e)
                    )),
                ),
            }
        };
        KernelLog {
            fd,
            access,
            parser: KillParser::default(),
            buf: Box::new([0; RECORD_BUF]),
            kills: VecDeque::new(),
            lost: 0,
            last_seq: None,
            #[cfg(test)]
            script: VecDeque::new(),
        }
    }

    /// A log fed by the test instead of the kernel.
    #[cfg(test)]
    pub(crate) fn scripted() -> Self {
        let mut l = Self::open(false);
        l.access = KernelLogAccess::Readable;
        l
    }

    #[cfg(test)]
    pub(crate) fn push_script(&mut self, record: &str) {
        self.script.push_back(record.to_string());
    }

    pub(crate) fn access(&self) -> &KernelLogAccess {
        &self.access
    }

    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }

    /// Reads every record available now and keeps the kills.
    pub(crate) fn drain(&mut self) {
        #[cfg(test)]
        while let Some(r) = self.script.pop_front() {
            if let Some(rec) = parse_record(&r) {
                if let Some(k) = self.parser.feed(rec, &mut |_| None) {
                    push_kill(&mut self.kills, k);
                }
            }
        }
        let Some(fd) = self.fd.as_ref() else {
            return;
        };
        loop {
            match rustix::io::read(fd, &mut self.buf[..]) {
                Ok(0) => return,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&self.buf[..n]).into_owned();
                    let Some(rec) = parse_record(&text) else {
                        continue;
                    };
                    if let Some(prev) = self.last_seq {
                        if rec.seq > prev + 1 {
                            self.lost += rec.seq - prev - 1;
                        }
                    }
                    self.last_seq = Some(rec.seq);
                    if let Some(k) = self.parser.feed(rec, &mut proc_cgroup) {
                        push_kill(&mut self.kills, k);
                    }
                }
                // Records were overwritten before we read them; the next
                // read continues with the oldest one still there.
                Err(Errno::PIPE) => self.lost += 1,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "reading /dev/kmsg failed; victims will be missing");
                    return;
                }
            }
        }
    }

    /// Removes and returns the kills of processes in `cgroup` or below.
    pub(crate) fn take_kills_in(&mut self, cgroup: &Path) -> Vec<KillRecord> {
        let mut out = Vec::new();
        self.kills.retain(|k| {
            let inside = k.memcg.as_deref().is_some_and(|m| m.starts_with(cgroup));
            if inside {
                out.push(k.clone());
            }
            !inside
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as the kernels in the VM write them (see the integration test
    // `rt_own_limit`, which notes the raw lines of each kernel).
    const SUMMARY: &str = "6,870,5102345,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/oomkit/t/pod,task_memcg=/oomkit/t/pod/ctr,task=hog,pid=1234,uid=0\n";
    const KILLED: &str = "3,871,5102400,-;Memory cgroup out of memory: Killed process 1234 (hog) total-vm:70000kB, anon-rss:65000kB, file-rss:1000kB, shmem-rss:0kB, UID:0 pgtables:200kB oom_score_adj:0\n SUBSYSTEM=memory\n";

    fn feed(p: &mut KillParser, line: &str) -> Option<KillRecord> {
        p.feed(parse_record(line).unwrap(), &mut |_| None)
    }

    #[test]
    fn record_header() {
        let r = parse_record(KILLED).unwrap();
        assert_eq!(r.seq, 871);
        assert_eq!(r.usec, 5_102_400);
        assert!(
            r.message
                .starts_with("Memory cgroup out of memory: Killed process 1234")
        );
        assert!(!r.message.contains("SUBSYSTEM"));
        assert_eq!(parse_record("garbage"), None);
        assert_eq!(parse_record("6,x,1,-;m"), None);
    }

    #[test]
    fn summary_then_kill_names_cgroup_and_limit() {
        let mut p = KillParser::default();
        assert_eq!(feed(&mut p, SUMMARY), None);
        let k = feed(&mut p, KILLED).unwrap();
        assert_eq!(k.pid, 1234);
        assert_eq!(k.comm, "hog");
        assert_eq!(k.memcg.as_deref(), Some(Path::new("/oomkit/t/pod/ctr")));
        assert_eq!(k.oom_memcg.as_deref(), Some(Path::new("/oomkit/t/pod")));
        assert!(!k.group_member);
        assert_eq!(k.kernel_time, Duration::from_micros(5_102_400));
    }

    #[test]
    fn group_members_take_the_announced_group() {
        let mut p = KillParser::default();
        feed(&mut p, SUMMARY);
        feed(&mut p, KILLED).unwrap();
        assert_eq!(
            feed(
                &mut p,
                "6,872,5102500,-;Tasks in /oomkit/t/pod/ctr are going to be killed due to memory.oom.group set\n"
            ),
            None
        );
        let k = feed(
            &mut p,
            "3,873,5102600,-;Memory cgroup out of memory: Killed process 1240 (sleep er) total-vm:1000kB, anon-rss:0kB\n",
        )
        .unwrap();
        assert_eq!((k.pid, k.comm.as_str()), (1240, "sleep er"));
        assert!(k.group_member);
        assert_eq!(k.memcg.as_deref(), Some(Path::new("/oomkit/t/pod/ctr")));
        // A new OOM report starts: the group context ends.
        feed(
            &mut p,
            "4,874,5200000,-;hog invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0\n",
        );
        let k = feed(
            &mut p,
            "3,875,5200100,-;Memory cgroup out of memory: Killed process 1250 (x) total-vm:1kB\n",
        )
        .unwrap();
        assert_eq!(k.memcg, None);
    }

    #[test]
    fn rate_limited_summary_falls_back_to_lookup() {
        let mut p = KillParser::default();
        let rec = parse_record(KILLED).unwrap();
        let k = p
            .feed(rec, &mut |pid| {
                (pid == 1234).then(|| PathBuf::from("/from/proc"))
            })
            .unwrap();
        assert_eq!(k.memcg.as_deref(), Some(Path::new("/from/proc")));
        assert_eq!(k.oom_memcg, None);
    }

    #[test]
    fn other_lines_are_not_kills() {
        let mut p = KillParser::default();
        for l in [
            "6,1,1,-;oom_reaper: reaped process 1234 (hog), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB\n",
            "6,2,2,-;Killed process in a story told by a driver\n",
            "6,3,3,-;memory: usage 32768kB, limit 32768kB, failcnt 120\n",
            "6,4,4,-;oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null)\n",
        ] {
            assert_eq!(feed(&mut p, l), None, "{l}");
        }
        // A global OOM's kill line is a kill.
        let k = feed(
            &mut p,
            "3,5,5,-;Out of memory: Killed process 77 (big) total-vm:1kB\n",
        )
        .unwrap();
        assert_eq!((k.pid, k.comm.as_str()), (77, "big"));
    }

    #[test]
    fn escaped_comm_and_paths() {
        assert_eq!(unescape("a\\x20b\\x5c"), "a b\\");
        assert_eq!(unescape("bad\\xZZ"), "bad\\xZZ");
        let s = parse_summary("oom-kill:constraint=CONSTRAINT_MEMCG,oom_memcg=/a\\x2cb,task_memcg=/a\\x2cb/c,task=t,pid=9,uid=0").unwrap();
        assert_eq!(s.pid, 9);
        assert_eq!(s.task_memcg.as_deref(), Some(Path::new("/a,b/c")));
    }

    #[test]
    fn take_kills_matches_cgroup_and_below_only() {
        let mut log = KernelLog::scripted();
        log.push_script(SUMMARY);
        log.push_script(KILLED);
        log.drain();
        assert_eq!(log.take_kills_in(Path::new("/oomkit/t/pod/ct")), vec![]);
        assert_eq!(log.take_kills_in(Path::new("/oomkit/t/pod")).len(), 1);
        assert!(log.kills.is_empty());
    }
}
