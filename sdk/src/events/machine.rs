//! [`MachineWatch`]: the machine-wide early warning as a pollable source.
//!
//! The logic lives in [`MachineMonitor`](super::MachineMonitor); this module
//! gives it what the other sources have: one fd that the kernel wakes, and
//! an allocation-free re-read behind each wakeup. That fd is a private
//! epoll instance holding
//!
//! - a `timerfd` (`timerfd_create(CLOCK_MONOTONIC)`), re-armed after every
//!   reading for the monitor's next sample time: the adaptive sampling;
//! - optionally one or two PSI triggers on `/proc/pressure/memory` (short
//!   windows, 500 ms – 1 s), which wake the source at once when tasks start
//!   stalling, whatever the timer says.
//!
//! Why a private epoll rather than three sources: the [`Watcher`](super::Watcher)
//! maps one fd to one source, and the three fds are one signal. A PSI
//! trigger's readiness is consumed by the first `poll` of it (the kernel
//! clears its "fired" flag there), and the outer epoll polls the inner one,
//! so the source does not try to tell which fd woke it: every wakeup is a
//! reading, and the PSI *totals* in `/proc/pressure/memory` (not the trigger
//! event) say how much stall there was.
//!
//! Each reading `pread`s `/proc/meminfo` and (with PSI)
//! `/proc/pressure/memory` at offset 0 through fds kept open, into one
//! buffer allocated at creation; `/proc/vmstat`, the costly one (the kernel
//! formats about 4 KiB of counters on each read, four times the cost of
//! `/proc/meminfo`), only when the monitor measures its rates, once per
//! `rate_window`, not at every few-millisecond sample near the edge.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::io::Errno;
use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags};

use crate::cgroup::{CgroupFile, Pressure};
use crate::error::{Error, Op, ParseError, ParseErrorKind, Result};
use crate::proc::{MemInfo, VmStat};
use crate::util::io_err;

use super::{
    MachineChange, MachineConfig, MachineMonitor, MachineReading, PsiThreshold, PsiTrigger,
    ReadFail, SourceFailure, pread_all,
};

/// Room for `/proc/vmstat` (about 5 KiB on 7.2) and `/proc/meminfo`.
const BUF: usize = 32 * 1024;
/// While readings fail, retry this often.
const RETRY: Duration = Duration::from_secs(1);

/// Where a [`MachineWatch`] reads. The defaults are the system files;
/// tests point them at synthetic copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachinePaths {
    /// `/proc/meminfo`.
    pub meminfo: PathBuf,
    /// `/proc/vmstat`.
    pub vmstat: PathBuf,
    /// `/proc/pressure/memory` (`None`: no PSI, e.g. booted with `psi=0`).
    pub pressure: Option<PathBuf>,
}

impl Default for MachinePaths {
    fn default() -> Self {
        MachinePaths {
            meminfo: "/proc/meminfo".into(),
            vmstat: "/proc/vmstat".into(),
            pressure: Some(super::psi::SYSTEM_MEMORY_PRESSURE.into()),
        }
    }
}

/// Everything a [`MachineWatch`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineWatchConfig {
    /// Thresholds and sampling bounds.
    pub monitor: MachineConfig,
    /// PSI triggers on the pressure file that wake the source early
    /// (at most two, e.g. one `some` and one `full`). Windows under 2 s
    /// need `CAP_SYS_RESOURCE`.
    pub triggers: Vec<PsiThreshold>,
    /// The files.
    pub paths: MachinePaths,
}

impl Default for MachineWatchConfig {
    /// Default thresholds, the system files, no PSI trigger.
    fn default() -> Self {
        MachineWatchConfig {
            monitor: MachineConfig::default(),
            triggers: Vec::new(),
            paths: MachinePaths::default(),
        }
    }
}

/// Wakeups and readings of a [`MachineWatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MachineStats {
    /// Times the source was serviced (each one a reading attempt).
    pub wakeups: u64,
    /// Readings that failed.
    pub failures: u64,
    /// Readings that read `/proc/vmstat` (those that measured the rates;
    /// see [`MachineMonitor::rates_due`]).
    pub vmstat_reads: u64,
    /// When the source was opened.
    pub since: Option<Instant>,
}

impl MachineStats {
    /// Average wakeups per second from opening to `now`.
    pub fn wakeups_per_sec(&self, now: Instant) -> f64 {
        let secs = self
            .since
            .map_or(0.0, |s| now.saturating_duration_since(s).as_secs_f64());
        if secs > 0.0 {
            self.wakeups as f64 / secs
        } else {
            0.0
        }
    }
}

/// The machine-wide early-warning source. See the module docs.
#[derive(Debug)]
pub struct MachineWatch {
    epoll: OwnedFd,
    timer: OwnedFd,
    meminfo: CgroupFile,
    vmstat: CgroupFile,
    pressure: Option<CgroupFile>,
    /// Kept open: closing a trigger's fd removes it.
    triggers: Vec<PsiTrigger>,
    monitor: MachineMonitor,
    /// The latest `/proc/vmstat` counters read.
    vm: VmStat,
    page_size: u64,
    buf: Box<[u8]>,
    stats: MachineStats,
    last_failure: Option<(SourceFailure, &'static str)>,
}

fn sys_err(what: &'static str, e: Errno) -> Error {
    Error::sys(what, io_err(e))
}

impl MachineWatch {
    /// Opens the files, arms the PSI triggers, takes a first reading
    /// (failing with the file and the problem if it cannot be read or
    /// parsed) and arms the timer for the next one.
    pub fn open(cfg: MachineWatchConfig) -> Result<Self> {
        cfg.monitor.validate()?;
        if cfg.triggers.len() > 2 {
            return Err(Error::InvalidArgument {
                what: "triggers",
                reason: format!("{} PSI triggers given, at most 2", cfg.triggers.len()),
            });
        }
        let epoll =
            epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| sys_err("epoll_create1", e))?;
        let timer = rustix::time::timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )
        .map_err(|e| sys_err("timerfd_create", e))?;
        epoll::add(&epoll, &timer, EventData::new_u64(0), EventFlags::IN)
            .map_err(|e| sys_err("epoll_ctl", e))?;
        let meminfo = CgroupFile::open_path(&cfg.paths.meminfo, false)?;
        let vmstat = CgroupFile::open_path(&cfg.paths.vmstat, false)?;
        // A kernel booted with `psi=0` (or built without PSI) has no
        // pressure file: the source works on headroom and refaults alone.
        let pressure = match &cfg.paths.pressure {
            Some(p) => match CgroupFile::open_path(p, false) {
                Ok(f) => Some(f),
                Err(e) if e.is_unsupported() => {
                    tracing::warn!(file = %p.display(), "no PSI file: machine warning without stall signals");
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        let mut triggers = Vec::with_capacity(cfg.triggers.len());
        for th in &cfg.triggers {
            if pressure.is_none() {
                break;
            }
            let Some(p) = &cfg.paths.pressure else {
                return Err(Error::InvalidArgument {
                    what: "triggers",
                    reason: "PSI triggers need a pressure file".to_owned(),
                });
            };
            let t = PsiTrigger::on_path(p, *th)?;
            epoll::add(&epoll, &t, EventData::new_u64(1), EventFlags::PRI)
                .map_err(|e| Error::io(p, Op::Watch, io_err(e)))?;
            triggers.push(t);
        }
        let mut w = MachineWatch {
            epoll,
            timer,
            meminfo,
            vmstat,
            pressure,
            triggers,
            monitor: MachineMonitor::new(cfg.monitor),
            vm: VmStat::default(),
            page_size: rustix::param::page_size() as u64,
            buf: vec![0u8; BUF].into_boxed_slice(),
            stats: MachineStats {
                since: Some(Instant::now()),
                ..Default::default()
            },
            last_failure: None,
        };
        // A first reading, so a broken file is an error now, not a silent
        // source later.
        let now = Instant::now();
        let r = w.read(now).map_err(|(f, which)| w.error(f, which))?;
        w.monitor.observe(now, &r);
        w.arm(w.monitor.next_interval())?;
        Ok(w)
    }

    fn path_of(&self, which: &'static str) -> &Path {
        match which {
            "vmstat" => self.vmstat.path(),
            "pressure" => self
                .pressure
                .as_ref()
                .map_or(self.meminfo.path(), |p| p.path()),
            _ => self.meminfo.path(),
        }
    }

    fn error(&self, f: ReadFail, which: &'static str) -> Error {
        f.into_error(self.path_of(which))
    }

    /// Reads the files into a [`MachineReading`] for a reading at `now`:
    /// `/proc/vmstat` only when the monitor measures rates with it
    /// ([`MachineMonitor::rates_due`]), the previous counters otherwise.
    /// Allocation-free.
    fn read(
        &mut self,
        now: Instant,
    ) -> std::result::Result<MachineReading, (ReadFail, &'static str)> {
        let parse_fail = |e: ParseError| ReadFail::Failed(SourceFailure::Parse(e));
        let data = pread_all(&self.meminfo, &mut self.buf).map_err(|e| (e, "meminfo"))?;
        let mem: MemInfo = crate::proc::parse::meminfo(crate::proc::parse::complete_lines(data))
            .map_err(|e| (parse_fail(e), "meminfo"))?;
        if self.monitor.rates_due(now) {
            let data = pread_all(&self.vmstat, &mut self.buf).map_err(|e| (e, "vmstat"))?;
            self.vm = crate::proc::parse::vmstat(crate::proc::parse::complete_lines(data))
                .map_err(|e| (parse_fail(e), "vmstat"))?;
            self.stats.vmstat_reads += 1;
        }
        let psi: Option<Pressure> = match &self.pressure {
            Some(p) => {
                let data = pread_all(p, &mut self.buf).map_err(|e| (e, "pressure"))?;
                Some(
                    crate::cgroup::parse::pressure(data)
                        .map_err(|e| (parse_fail(e), "pressure"))?,
                )
            }
            None => None,
        };
        MachineReading::from_proc(&mem, &self.vm, psi.as_ref(), self.page_size).ok_or((
            parse_fail(ParseError::new(
                1,
                ParseErrorKind::MissingKey("MemAvailable"),
            )),
            "meminfo",
        ))
    }

    /// Arms the timer `after` from now (relative; `timerfd_settime`).
    fn arm(&self, after: Duration) -> Result<()> {
        let after = after.max(Duration::from_micros(1));
        let spec = Itimerspec {
            it_interval: rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: rustix::time::Timespec {
                tv_sec: i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(after.subsec_nanos()),
            },
        };
        rustix::time::timerfd_settime(&self.timer, TimerfdTimerFlags::empty(), &spec)
            .map(|_| ())
            .map_err(|e| sys_err("timerfd_settime", e))
    }

    /// Drains the timer and the inner epoll (PSI readiness), takes a
    /// reading, judges it and re-arms the timer. Allocation-free.
    pub(crate) fn service_raw(
        &mut self,
        now: Instant,
    ) -> std::result::Result<Option<MachineChange>, SourceFailure> {
        self.stats.wakeups += 1;
        let mut tick = [0u8; 8];
        match rustix::io::read(&self.timer, &mut tick) {
            Ok(_) | Err(Errno::AGAIN) | Err(Errno::INTR) => {}
            Err(e) => return Err(SourceFailure::io(Op::Read, e)),
        }
        let mut evs = [epoll::Event {
            flags: EventFlags::empty(),
            data: EventData::new_u64(0),
        }; 3];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // Only to clear readiness; which fd it was does not matter.
        let _ = epoll::wait(&self.epoll, &mut evs, Some(&zero));
        let out = match self.read(now) {
            Ok(r) => {
                self.last_failure = None;
                Ok(self.monitor.observe(now, &r))
            }
            Err((ReadFail::Gone, which)) => {
                self.stats.failures += 1;
                let f = SourceFailure::io(Op::Read, Errno::NOENT);
                self.last_failure = Some((f, which));
                Err(f)
            }
            Err((ReadFail::Failed(f), which)) => {
                self.stats.failures += 1;
                self.last_failure = Some((f, which));
                Err(f)
            }
        };
        let next = if out.is_ok() {
            self.monitor.next_interval()
        } else {
            RETRY.min(self.monitor.config().max_interval)
        };
        if let Err(Error::Sys { source, .. }) = self.arm(next) {
            return Err(SourceFailure::Io {
                op: Op::Watch,
                errno: source.raw_os_error().unwrap_or(0),
            });
        }
        out
    }

    /// Takes a reading now (outside the timer), judges it and re-arms the
    /// timer.
    pub fn sample_now(&mut self) -> Result<Option<MachineChange>> {
        self.service_raw(Instant::now()).map_err(|f| {
            let which = self.last_failure.map_or("meminfo", |(_, w)| w);
            ReadFail::Failed(f).into_error(self.path_of(which))
        })
    }

    /// The state machine: active signals, the latest sample.
    pub fn monitor(&self) -> &MachineMonitor {
        &self.monitor
    }

    /// Wakeups so far.
    pub fn stats(&self) -> MachineStats {
        self.stats
    }

    /// The PSI thresholds armed.
    pub fn triggers(&self) -> impl Iterator<Item = PsiThreshold> + '_ {
        self.triggers.iter().map(PsiTrigger::threshold)
    }

    /// `/proc/meminfo`'s path, for messages.
    pub fn path(&self) -> &Path {
        self.meminfo.path()
    }
}

impl AsFd for MachineWatch {
    /// The private epoll fd: readable when the timer expired or a PSI
    /// trigger fired.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:        1000000 kB\nMemFree:          500000 kB\n\
        MemAvailable:     800000 kB\nAnonPages:        100000 kB\nActive(file):     10000 kB\n\
        Inactive(file):   20000 kB\nSwapTotal:             0 kB\nSwapFree:              0 kB\n";
    const VMSTAT: &str =
        "pgscan_kswapd 10\npgsteal_kswapd 5\nworkingset_refault_file 1\noom_kill 0\n";
    const PSI: &str = "some avg10=0.00 avg60=0.00 avg300=0.00 total=100\n\
        full avg10=0.00 avg60=0.00 avg300=0.00 total=50\n";

    fn files(dir: &Path, meminfo: &str) -> MachinePaths {
        std::fs::write(dir.join("meminfo"), meminfo).unwrap();
        std::fs::write(dir.join("vmstat"), VMSTAT).unwrap();
        std::fs::write(dir.join("pressure"), PSI).unwrap();
        MachinePaths {
            meminfo: dir.join("meminfo"),
            vmstat: dir.join("vmstat"),
            pressure: Some(dir.join("pressure")),
        }
    }

    #[test]
    fn first_reading_parses_synthetic_files() {
        let d = tempfile::tempdir().unwrap();
        let w = MachineWatch::open(MachineWatchConfig {
            paths: files(d.path(), MEMINFO),
            ..Default::default()
        })
        .unwrap();
        let s = w.monitor().sample();
        assert_eq!(s.total, 1_000_000 * 1024);
        assert_eq!(s.headroom, 800_000 * 1024);
        assert_eq!(s.file, 30_000 * 1024);
        assert!(w.monitor().active().is_empty());
    }

    #[test]
    fn missing_mem_available_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let e = MachineWatch::open(MachineWatchConfig {
            paths: files(d.path(), "MemTotal: 1000 kB\nMemFree: 10 kB\n"),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("meminfo") && e.contains("MemAvailable"), "{e}");
        let e = MachineWatch::open(MachineWatchConfig {
            paths: files(d.path(), "MemTotal: lots\n"),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("meminfo"), "{e}");
        let mut paths = files(d.path(), MEMINFO);
        paths.vmstat = d.path().join("absent");
        let e = MachineWatch::open(MachineWatchConfig {
            paths,
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("absent"), "{e}");
    }

    #[test]
    fn no_pressure_file_means_no_stall_signal_not_an_error() {
        let d = tempfile::tempdir().unwrap();
        let mut paths = files(d.path(), MEMINFO);
        paths.pressure = Some(d.path().join("no-psi"));
        let w = MachineWatch::open(MachineWatchConfig {
            paths,
            triggers: vec![PsiThreshold::some(
                Duration::from_millis(100),
                Duration::from_secs(2),
            )],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(w.triggers().count(), 0);
        assert_eq!(w.monitor().sample().some_share, 0.0);
    }

    #[test]
    fn vmstat_is_read_only_for_a_reading_that_measures_the_rates() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = MachineWatchConfig {
            paths: files(d.path(), MEMINFO),
            ..Default::default()
        };
        // Far longer than this test can take: the reading at open is the
        // reference, a second one within the window cannot measure rates.
        cfg.monitor.rate_window = Duration::from_secs(100);
        let mut w = MachineWatch::open(cfg).unwrap();
        let t0 = Instant::now();
        assert_eq!(
            w.stats().vmstat_reads,
            1,
            "the first reading is the reference"
        );
        // Within the window a broken vmstat goes unread.
        std::fs::write(d.path().join("vmstat"), "pgsteal_kswapd lots\n").unwrap();
        assert_eq!(w.service_raw(t0 + Duration::from_secs(1)), Ok(None));
        assert_eq!(w.stats().vmstat_reads, 1);
        // A window later it is read, and its failure names the file.
        let f = w.service_raw(t0 + Duration::from_secs(101)).unwrap_err();
        let which = w.last_failure.map(|(_, which)| which).unwrap();
        let e = w.error(ReadFail::Failed(f), which).to_string();
        assert!(e.contains("vmstat") && e.contains("line 1"), "{e}");
        // Repaired, with 2,560 pages reclaimed since the reference: a rate.
        std::fs::write(
            d.path().join("vmstat"),
            VMSTAT.replace("pgsteal_kswapd 5", "pgsteal_kswapd 2565"),
        )
        .unwrap();
        assert_eq!(w.service_raw(t0 + Duration::from_secs(102)), Ok(None));
        assert_eq!(w.stats().vmstat_reads, 2);
        let page = rustix::param::page_size() as u64;
        let rate = w.monitor().sample().steal_rate;
        assert!(
            rate > 0 && rate <= 2560 * page / 102,
            "steal rate {rate} over about 102 s"
        );
    }

    #[test]
    fn the_timer_fires_for_the_next_sample() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = MachineWatchConfig {
            paths: files(d.path(), MEMINFO),
            ..Default::default()
        };
        cfg.monitor.max_interval = Duration::from_millis(20);
        cfg.monitor.min_interval = Duration::from_millis(10);
        let mut w = MachineWatch::open(cfg).unwrap();
        let mut fds = [rustix::event::PollFd::new(&w, rustix::event::PollFlags::IN)];
        let n = rustix::event::poll(
            &mut fds,
            Some(&rustix::event::Timespec {
                tv_sec: 5,
                tv_nsec: 0,
            }),
        )
        .unwrap();
        assert_eq!(n, 1, "the timer never woke the source");
        assert_eq!(w.service_raw(Instant::now()), Ok(None));
        assert_eq!(w.stats().wakeups, 1);
        assert_eq!(w.monitor().samples(), 2);
    }
}
