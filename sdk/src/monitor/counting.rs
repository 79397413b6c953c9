//! From counters and the kernel log to reports: which level's limit fired, which victims the
//! kernel took, and the final counters when the container is done.

use std::path::Path;
use std::time::{Instant, SystemTime};

use super::*;

impl OomMonitor {
    /// Re-reads the container's `memory.events`; starts or extends the
    /// pending report when an OOM counter rose.
    pub(super) fn read_counters(&mut self) -> Result<()> {
        if self.gone {
            return Ok(());
        }
        let ch = match self.hier.refresh() {
            Ok(c) => c,
            Err(e) if e.is_gone() => {
                self.gone = true;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let Some(ch) = ch else { return Ok(()) };
        let oomish = [
            MemoryEventKind::Oom,
            MemoryEventKind::OomKill,
            MemoryEventKind::OomGroupKill,
        ]
        .iter()
        .any(|k| ch.rose_by(*k) > 0);
        if !oomish {
            self.quiet.accumulate(&ch.delta);
            return Ok(());
        }
        match &mut self.pending {
            Some(p) => p.rose.accumulate(&ch.delta),
            None => {
                let mut rose = std::mem::take(&mut self.quiet);
                rose.accumulate(&ch.delta);
                let level = self.level_from_counters(&rose);
                self.pending = Some(Pending {
                    rose,
                    level,
                    victims: Vec::new(),
                    lines: 0,
                    group: self.group_kill_possible(),
                    first_seen: SystemTime::now(),
                    deadline: Instant::now() + self.opts.victim_grace,
                });
            }
        }
        Ok(())
    }

    /// Whether the container or an ancestor up to the boundary has
    /// `memory.oom.group` set (an unreadable file counts as no).
    pub(super) fn group_kill_possible(&self) -> bool {
        self.levels
            .iter()
            .any(|l| l.cg.oom_group().unwrap_or(false))
    }

    /// The lowest level whose own `oom` counter rose since the last report.
    pub(super) fn level_from_counters(&mut self, rose: &MemoryEvents) -> Level {
        let mut found = None;
        for (i, l) in self.levels.iter_mut().enumerate() {
            let Ok(now) = l.cg.memory_events_local() else {
                continue;
            };
            let d = now.delta_since(&l.base).oom.unwrap_or(0);
            l.base = now;
            if d > 0 && found.is_none() {
                found = Some(i);
            }
        }
        match found {
            Some(i) => self.level_at(i),
            None if rose.oom.unwrap_or(0) > 0 => Level::Inside,
            None => Level::Outside,
        }
    }

    pub(super) fn level_at(&self, i: usize) -> Level {
        let path = self
            .levels
            .get(i)
            .map(|l| l.cg.hierarchy_path().to_path_buf())
            .unwrap_or_default();
        match i {
            0 => Level::Container,
            1 => Level::Pod { path },
            _ => Level::Ancestor {
                path,
                generations: u32::try_from(i).unwrap_or(u32::MAX),
            },
        }
    }

    /// The level the kernel log names (`oom_memcg`), when it does.
    pub(super) fn level_from_log(&self, oom_memcg: &Path) -> Level {
        if let Some(i) = self
            .levels
            .iter()
            .position(|l| l.cg.hierarchy_path() == oom_memcg)
        {
            return self.level_at(i);
        }
        if oom_memcg.starts_with(self.container.hierarchy_path()) {
            Level::Inside
        } else {
            Level::Outside
        }
    }

    /// Moves the logged kills of the container's processes into the
    /// pending report (starting one if the log was faster than the counter).
    pub(super) fn collect_victims(&mut self) {
        let kills = self.log.take_kills_in(self.container.hierarchy_path());
        if kills.is_empty() {
            return;
        }
        if self.pending.is_none() {
            let rose = std::mem::take(&mut self.quiet);
            let level = self.level_from_counters(&rose);
            self.pending = Some(Pending {
                rose,
                level,
                victims: Vec::new(),
                lines: 0,
                group: self.group_kill_possible(),
                first_seen: SystemTime::now(),
                deadline: Instant::now() + self.opts.victim_grace,
            });
        }
        let logged_level = kills
            .iter()
            .find_map(|k| k.oom_memcg.as_deref())
            .map(|m| self.level_from_log(m));
        if let Some(p) = &mut self.pending {
            if let Some(l) = logged_level {
                p.level = l;
            }
            for k in kills {
                p.lines += 1;
                if !p.victims.iter().any(|v| v.pid == k.pid) {
                    p.victims.push(k);
                }
            }
        }
    }

    pub(super) fn take_report(&mut self) -> Option<OomReport> {
        let p = self.pending.take()?;
        let expected = p.rose.oom_kill.unwrap_or(0);
        let victims_status = match self.log.access() {
            KernelLogAccess::Readable if p.lines >= expected => VictimsStatus::Complete,
            KernelLogAccess::Readable => VictimsStatus::Incomplete {
                missing: expected - p.lines,
            },
            KernelLogAccess::Off => VictimsStatus::NotRead,
            KernelLogAccess::Unavailable(why) => VictimsStatus::Unavailable(why.clone()),
        };
        Some(OomReport {
            cgroup: self.container.hierarchy_path().to_path_buf(),
            level: p.level,
            rose: p.rose,
            victims: p.victims,
            victims_status,
            first_seen: p.first_seen,
            reported: SystemTime::now(),
        })
    }

    pub(super) fn final_report(&mut self) -> FinalReport {
        self.finished = true;
        let last = *self.hier.last();
        FinalReport {
            cgroup: self.container.hierarchy_path().to_path_buf(),
            counters: if self.gone {
                match self.parent.as_ref().and_then(|p| p.derive(&self.start)) {
                    Some(events) => FinalCounters::Derived {
                        events,
                        since_start: events.delta_since(&self.start),
                        from: self
                            .parent
                            .as_ref()
                            .map(|p| p.cg.hierarchy_path().to_path_buf())
                            .unwrap_or_default(),
                        last_seen: last,
                    },
                    None => FinalCounters::Gone { last_seen: last },
                }
            } else {
                FinalCounters::Read {
                    events: last,
                    since_start: last.delta_since(&self.start),
                }
            },
            at: SystemTime::now(),
        }
    }
}
