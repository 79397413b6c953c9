//! Pure parsers for the cgroup-v2 memory files.
//!
//! Each takes the raw bytes of a file and returns a typed value or a
//! [`ParseError`] naming the line. None of them allocates except
//! [`memory_stat`] when an unknown key does not fit the capacity already
//! reserved (see [`memory_stat_into`]), so they can run on the hot path.
//!
//! Rules, from the kernel's habit of growing these files:
//! - unknown keys never fail, whatever the shape of their line: they are
//!   ignored (events, pressure) or kept when they read `key number`
//!   (`memory.stat`);
//! - a known key whose value is not a number is an error naming the line;
//! - trailing newlines and blank lines are tolerated.

use super::types::{
    CgroupEvents, Limit, MemoryEventKind, MemoryEvents, MemoryStat, Pressure, PressureLine, StatKey,
};
use crate::error::{ParseError, ParseErrorKind};

type R<T> = Result<T, ParseError>;

fn err(line: u32, kind: ParseErrorKind) -> ParseError {
    ParseError::new(line, kind)
}

/// Iterates non-empty lines with their 1-based numbers.
pub(crate) fn lines(data: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    data.split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, l)| (i as u32 + 1, l))
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
}

pub(crate) fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Parses an unsigned decimal integer with no sign, spaces or suffix.
pub fn u64_digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Splits `key value` on the first run of spaces.
fn key_value(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let line = trim(line);
    let pos = line.iter().position(|b| *b == b' ')?;
    let (k, v) = line.split_at(pos);
    let v = trim(v);
    if k.is_empty() || v.is_empty() || v.contains(&b' ') {
        return None;
    }
    Some((k, v))
}

/// The key of a `key value` line: its first word.
fn first_word(line: &[u8]) -> &[u8] {
    let line = trim(line);
    let end = line.iter().position(|b| *b == b' ').unwrap_or(line.len());
    &line[..end]
}

/// Whether `line` is the last line of `data` and `data` does not end with a
/// newline: a file cut short by its reader, whose last line may be a
/// fragment of a known key, so it must have the `key value` shape.
fn is_cut_last(data: &[u8], line: &[u8]) -> bool {
    !data.ends_with(b"\n") && line.as_ptr_range().end == data.as_ptr_range().end
}

/// A single-value file such as `memory.current` or `memory.swap.current`.
pub fn single_u64(data: &[u8]) -> R<u64> {
    let mut it = lines(data);
    let (n, line) = it.next().ok_or(err(1, ParseErrorKind::Empty))?;
    if let Some((n2, _)) = it.next() {
        return Err(err(n2, ParseErrorKind::MalformedLine));
    }
    u64_digits(trim(line)).ok_or(err(n, ParseErrorKind::InvalidNumber))
}

/// A limit file (`memory.max`, `memory.high`, `memory.low`, `memory.min`,
/// `memory.swap.max`): a byte count or `max`.
pub fn limit(data: &[u8]) -> R<Limit> {
    let mut it = lines(data);
    let (n, line) = it.next().ok_or(err(1, ParseErrorKind::Empty))?;
    if let Some((n2, _)) = it.next() {
        return Err(err(n2, ParseErrorKind::MalformedLine));
    }
    match trim(line) {
        b"max" => Ok(Limit::Max),
        s => u64_digits(s)
            .map(Limit::Bytes)
            .ok_or(err(n, ParseErrorKind::InvalidNumber)),
    }
}

/// A `0`/`1` file such as `memory.oom.group` or `cgroup.freeze`.
pub fn bool01(data: &[u8]) -> R<bool> {
    match single_u64(data)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(err(1, ParseErrorKind::InvalidNumber)),
    }
}

/// `memory.events` or `memory.events.local`. Unknown keys are ignored
/// whatever the shape of their line (a future kernel may print more than
/// one value); only known keys are checked.
pub fn memory_events(data: &[u8]) -> R<MemoryEvents> {
    let mut ev = MemoryEvents::default();
    for (n, line) in lines(data) {
        let key = first_word(line);
        let Some(kind) = MemoryEventKind::ALL
            .iter()
            .find(|x| x.key().as_bytes() == key)
        else {
            if is_cut_last(data, line) && key_value(line).is_none() {
                return Err(err(n, ParseErrorKind::MalformedLine));
            }
            continue;
        };
        let (_, v) = key_value(line).ok_or(err(n, ParseErrorKind::MalformedLine))?;
        let v = u64_digits(v).ok_or(err(n, ParseErrorKind::InvalidNumber))?;
        let slot = ev.slot(*kind);
        if slot.is_some() {
            return Err(err(n, ParseErrorKind::DuplicateKey(kind.key())));
        }
        *slot = Some(v);
    }
    Ok(ev)
}

/// Whether every counter of a `memory.events`-style file is zero, known
/// key or not (a newer kernel's counters count too). Any line that is not
/// `key number`, or an empty file, is an error: the caller cannot tell.
pub(crate) fn counters_all_zero(data: &[u8]) -> R<bool> {
    let mut zero = true;
    let mut any = false;
    for (n, line) in lines(data) {
        let (_, v) = key_value(line).ok_or(err(n, ParseErrorKind::MalformedLine))?;
        zero &= u64_digits(v).ok_or(err(n, ParseErrorKind::InvalidNumber))? == 0;
        any = true;
    }
    if any {
        Ok(zero)
    } else {
        Err(err(1, ParseErrorKind::Empty))
    }
}

/// `cgroup.events`: `populated` and `frozen`. Unknown keys are ignored
/// whatever the shape of their line.
pub fn cgroup_events(data: &[u8]) -> R<CgroupEvents> {
    let mut ev = CgroupEvents::default();
    for (n, line) in lines(data) {
        let slot = match first_word(line) {
            b"populated" => &mut ev.populated,
            b"frozen" => &mut ev.frozen,
            _ if is_cut_last(data, line) && key_value(line).is_none() => {
                return Err(err(n, ParseErrorKind::MalformedLine));
            }
            _ => continue,
        };
        let (_, v) = key_value(line).ok_or(err(n, ParseErrorKind::MalformedLine))?;
        *slot = Some(match v {
            b"0" => false,
            b"1" => true,
            _ => return Err(err(n, ParseErrorKind::InvalidNumber)),
        });
    }
    Ok(ev)
}

/// `memory.stat`, allocating as needed for unknown keys.
#[cfg_attr(not(feature = "parsers"), allow(dead_code))]
pub fn memory_stat(data: &[u8]) -> R<MemoryStat> {
    let mut st = MemoryStat::default();
    memory_stat_into(data, &mut st)?;
    Ok(st)
}

/// `memory.stat` into an existing value, reusing its storage: with enough
/// capacity reserved in `out.other` this does not allocate.
///
/// Unknown keys are kept in file order; a key longer than
/// [`STAT_KEY_MAX`](super::types::STAT_KEY_MAX) bytes, or one whose line is
/// not `key number` (a future kernel's other shape), is skipped. On error
/// `out` holds what was parsed before the bad line.
pub fn memory_stat_into(data: &[u8], out: &mut MemoryStat) -> R<()> {
    let other = std::mem::take(&mut out.other);
    *out = MemoryStat {
        other,
        ..MemoryStat::default()
    };
    out.other.clear();
    for (n, line) in lines(data) {
        let k = first_word(line);
        if out.known_slot(k).is_none() {
            match key_value(line).and_then(|(_, v)| u64_digits(v)) {
                Some(v) => {
                    if let Some(key) = StatKey::new(k) {
                        out.other.push((key, v));
                    }
                }
                None if is_cut_last(data, line) => {
                    return Err(err(n, ParseErrorKind::MalformedLine));
                }
                None => {}
            }
            continue;
        }
        let (_, v) = key_value(line).ok_or(err(n, ParseErrorKind::MalformedLine))?;
        let v = u64_digits(v).ok_or(err(n, ParseErrorKind::InvalidNumber))?;
        if let Some(slot) = out.known_slot(k) {
            *slot = Some(v);
        }
    }
    Ok(())
}

/// Parses a PSI average such as `12.34` (the kernel always prints two decimals).
fn decimal(s: &[u8]) -> Option<f64> {
    let (int, frac) = match s.iter().position(|b| *b == b'.') {
        Some(p) => (&s[..p], &s[p + 1..]),
        None => (s, &b""[..]),
    };
    let i = u64_digits(int)?;
    let mut f = 0.0;
    let mut scale = 0.1;
    for &b in frac {
        if !b.is_ascii_digit() {
            return None;
        }
        f += f64::from(b - b'0') * scale;
        scale /= 10.0;
    }
    Some(i as f64 + f)
}

fn pressure_line(n: u32, fields: &[u8]) -> R<PressureLine> {
    let mut out = PressureLine::default();
    let mut seen = [false; 4];
    for field in fields.split(|b| *b == b' ').filter(|f| !f.is_empty()) {
        let eq = field
            .iter()
            .position(|b| *b == b'=')
            .ok_or(err(n, ParseErrorKind::MalformedLine))?;
        let (k, v) = (&field[..eq], &field[eq + 1..]);
        let idx = match k {
            b"avg10" => 0,
            b"avg60" => 1,
            b"avg300" => 2,
            b"total" => 3,
            _ => continue,
        };
        if idx == 3 {
            out.total_us = u64_digits(v).ok_or(err(n, ParseErrorKind::InvalidNumber))?;
        } else {
            let d = decimal(v).ok_or(err(n, ParseErrorKind::InvalidDecimal))?;
            match idx {
                0 => out.avg10 = d,
                1 => out.avg60 = d,
                _ => out.avg300 = d,
            }
        }
        seen[idx] = true;
    }
    let names = ["avg10", "avg60", "avg300", "total"];
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(err(n, ParseErrorKind::MissingKey(names[i])));
    }
    Ok(out)
}

/// `memory.pressure` or `/proc/pressure/memory`.
///
/// A `some` line is required; `full` is optional; other lines are ignored.
pub fn pressure(data: &[u8]) -> R<Pressure> {
    let mut some = None;
    let mut full = None;
    for (n, line) in lines(data) {
        let line = trim(line);
        let sp = line
            .iter()
            .position(|b| *b == b' ')
            .ok_or(err(n, ParseErrorKind::MalformedLine))?;
        let (kind, rest) = line.split_at(sp);
        let slot = match kind {
            b"some" => &mut some,
            b"full" => &mut full,
            _ => continue,
        };
        if slot.is_some() {
            let k = if kind == b"some" { "some" } else { "full" };
            return Err(err(n, ParseErrorKind::DuplicateKey(k)));
        }
        *slot = Some(pressure_line(n, rest)?);
    }
    let line_count = lines(data).count() as u32;
    Ok(Pressure {
        some: some.ok_or(err(line_count.max(1), ParseErrorKind::MissingKey("some")))?,
        full,
    })
}

/// `cgroup.procs` or `cgroup.threads`: one PID per line, appended to `out`
/// (which is not cleared). With enough capacity this does not allocate.
#[cfg_attr(not(feature = "parsers"), allow(dead_code))]
pub fn pids_into(data: &[u8], out: &mut Vec<i32>) -> R<()> {
    for_each_pid(data, |pid| out.push(pid))
}

/// Calls `f` for each PID of a `cgroup.procs` excerpt (whole lines).
pub fn for_each_pid(data: &[u8], mut f: impl FnMut(i32)) -> R<()> {
    for (n, line) in lines(data) {
        let v = u64_digits(trim(line)).ok_or(err(n, ParseErrorKind::InvalidNumber))?;
        let pid = i32::try_from(v).map_err(|_| err(n, ParseErrorKind::InvalidNumber))?;
        if pid <= 0 {
            return Err(err(n, ParseErrorKind::InvalidNumber));
        }
        f(pid);
    }
    Ok(())
}

/// A space-separated controller list (`cgroup.controllers`,
/// `cgroup.subtree_control`).
pub fn controllers(data: &[u8]) -> R<Vec<String>> {
    let text = std::str::from_utf8(data).map_err(|_| err(1, ParseErrorKind::InvalidUtf8))?;
    Ok(text.split_ascii_whitespace().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_zero_counters_whatever_the_keys() {
        assert_eq!(counters_all_zero(b"low 0\nhigh 0\nmax 0\n"), Ok(true));
        assert_eq!(counters_all_zero(b"low 0\nnew_key 3\n"), Ok(false));
        assert_eq!(counters_all_zero(b"high 1\n"), Ok(false));
        assert!(counters_all_zero(b"").is_err());
        assert!(counters_all_zero(b"low 0\nodd 0 0\n").is_err());
        assert!(counters_all_zero(b"low x\n").is_err());
    }

    #[test]
    fn single_value_files() {
        assert_eq!(single_u64(b"4096\n"), Ok(4096));
        assert_eq!(single_u64(b"0"), Ok(0));
        assert_eq!(single_u64(b""), Err(err(1, ParseErrorKind::Empty)));
        assert_eq!(single_u64(b"\n\n"), Err(err(1, ParseErrorKind::Empty)));
        assert_eq!(
            single_u64(b"12x\n"),
            Err(err(1, ParseErrorKind::InvalidNumber))
        );
        assert_eq!(
            single_u64(b"-1\n"),
            Err(err(1, ParseErrorKind::InvalidNumber))
        );
        assert_eq!(
            single_u64(b"1\n2\n"),
            Err(err(2, ParseErrorKind::MalformedLine))
        );
        assert_eq!(
            single_u64(b"99999999999999999999999\n"),
            Err(err(1, ParseErrorKind::InvalidNumber))
        );
    }

    #[test]
    fn limits() {
        assert_eq!(limit(b"max\n"), Ok(Limit::Max));
        assert_eq!(limit(b"268435456\n"), Ok(Limit::Bytes(268_435_456)));
        assert_eq!(limit(b"maxx\n"), Err(err(1, ParseErrorKind::InvalidNumber)));
        assert_eq!(limit(b""), Err(err(1, ParseErrorKind::Empty)));
        assert_eq!(bool01(b"1\n"), Ok(true));
        assert_eq!(bool01(b"2\n"), Err(err(1, ParseErrorKind::InvalidNumber)));
    }

    #[test]
    fn events_known_unknown_and_missing_keys() {
        let ev = memory_events(b"low 0\nhigh 5\nmax 2\noom 1\noom_kill 1\nfuture_key 9\n").unwrap();
        assert_eq!(ev.high, Some(5));
        assert_eq!(ev.oom_kill, Some(1));
        assert_eq!(
            ev.oom_group_kill, None,
            "absent on 5.10 must be None, not 0"
        );
        assert_eq!(
            memory_events(b"low 0\nhigh x\n"),
            Err(err(2, ParseErrorKind::InvalidNumber))
        );
        assert_eq!(
            memory_events(b"low 0\nhigh\n"),
            Err(err(2, ParseErrorKind::MalformedLine))
        );
        assert_eq!(
            memory_events(b"high 1\nhigh 2\n"),
            Err(err(2, ParseErrorKind::DuplicateKey("high")))
        );
        // An unknown key with a non-numeric value is still ignored.
        assert!(memory_events(b"high 1\nnew_thing abc\n").is_ok());
        // Truncated mid-line: the last line has no value.
        assert_eq!(
            memory_events(b"low 0\nhigh 1\nma"),
            Err(err(3, ParseErrorKind::MalformedLine))
        );
    }

    #[test]
    fn deltas_accumulate() {
        let mut sum = MemoryEvents::default();
        let d1 = memory_events(b"high 2\nmax 0\n").unwrap();
        let d2 = memory_events(b"high 3\nmax 1\noom 1\n").unwrap();
        sum.accumulate(&d1);
        sum.accumulate(&d2);
        assert_eq!(sum.high, Some(5));
        assert_eq!(sum.max, Some(1));
        assert_eq!(sum.oom, Some(1));
        assert_eq!(sum.oom_kill, None);
    }

    #[test]
    fn event_deltas_treat_absent_and_reset() {
        let a = memory_events(b"high 1\nmax 5\noom 0\n").unwrap();
        let b = memory_events(b"high 4\nmax 3\noom 2\noom_kill 1\n").unwrap();
        let d = b.delta_since(&a);
        assert_eq!(d.high, Some(3));
        assert_eq!(d.max, Some(3), "a counter going down is a reset");
        assert_eq!(d.oom, Some(2));
        assert_eq!(d.oom_kill, None);
        assert!(d.any());
        assert!(!a.delta_since(&a).any());
    }

    #[test]
    fn cgroup_events_parse() {
        let e = cgroup_events(b"populated 1\nfrozen 0\n").unwrap();
        assert_eq!(e.populated, Some(true));
        assert_eq!(e.frozen, Some(false));
        assert_eq!(cgroup_events(b"populated 1\n").unwrap().frozen, None);
        assert_eq!(
            cgroup_events(b"populated 2\n"),
            Err(err(1, ParseErrorKind::InvalidNumber))
        );
    }

    #[test]
    fn stat_keeps_unknown_keys_in_order() {
        let st = memory_stat(b"anon 100\nfile 200\nbrand_new 7\npgscan 3\nzz 1\n").unwrap();
        assert_eq!(st.anon, Some(100));
        assert_eq!(st.pgscan, Some(3));
        assert_eq!(st.pgsteal, None);
        let keys: Vec<_> = st.other.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(keys, vec![("brand_new", 7), ("zz", 1)]);
        assert_eq!(st.get("brand_new"), Some(7));
        assert_eq!(st.get("anon"), Some(100));
        assert_eq!(
            memory_stat(b"anon 1\nfile\n"),
            Err(err(2, ParseErrorKind::MalformedLine))
        );
    }

    /// Issue 10, defect 15: a future kernel's line of another shape under a
    /// new key must not silence the whole file (and the source reading it).
    #[test]
    fn unknown_keys_of_any_shape_are_skipped() {
        let ev = memory_events(b"low 0\nnew_thing 1 2\nhigh 5\nbare_flag\noom_kill 1\n").unwrap();
        assert_eq!((ev.high, ev.oom_kill), (Some(5), Some(1)));
        let st = memory_stat(b"anon 1\nnew_thing 1 2\nbare\nfile 2\nzz 3\n").unwrap();
        assert_eq!((st.anon, st.file), (Some(1), Some(2)));
        let keys: Vec<_> = st.other.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            keys,
            vec![("zz", 3)],
            "odd-shaped unknown lines are not kept"
        );
        let ce = cgroup_events(b"populated 1\nnew_thing a b\nfrozen 0\n").unwrap();
        assert_eq!((ce.populated, ce.frozen), (Some(true), Some(false)));
        // Known keys are still checked.
        assert_eq!(
            memory_events(b"new_thing 1 2\nhigh 1 2\n"),
            Err(err(2, ParseErrorKind::MalformedLine))
        );
        assert_eq!(
            memory_stat(b"new_thing 1 2\nanon 1 2\n"),
            Err(err(2, ParseErrorKind::MalformedLine))
        );
    }

    #[test]
    fn stat_into_reuses_capacity() {
        let mut st = MemoryStat {
            other: Vec::with_capacity(8),
            ..Default::default()
        };
        memory_stat_into(b"a 1\nb 2\n", &mut st).unwrap();
        let cap = st.other.capacity();
        memory_stat_into(b"c 3\n", &mut st).unwrap();
        assert_eq!(st.other.len(), 1);
        assert_eq!(st.other.capacity(), cap);
    }

    #[test]
    fn pressure_files() {
        let p = pressure(
            b"some avg10=1.50 avg60=0.25 avg300=0.00 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=42\n",
        )
        .unwrap();
        assert!((p.some.avg10 - 1.5).abs() < 1e-9);
        assert!((p.some.avg60 - 0.25).abs() < 1e-9);
        assert_eq!(p.some.total_us, 123_456);
        assert_eq!(p.full.unwrap().total_us, 42);
        let only_some = pressure(b"some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
        assert!(only_some.full.is_none());
        assert_eq!(
            pressure(b"full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"),
            Err(err(1, ParseErrorKind::MissingKey("some")))
        );
        assert_eq!(
            pressure(b"some avg10=x avg60=0.00 avg300=0.00 total=0\n"),
            Err(err(1, ParseErrorKind::InvalidDecimal))
        );
        assert_eq!(
            pressure(b"some avg10=0.00 avg60=0.00 total=0\n"),
            Err(err(1, ParseErrorKind::MissingKey("avg300")))
        );
        // Unknown fields are ignored.
        assert!(pressure(b"some avg10=0.00 avg60=0.00 avg300=0.00 total=0 avg900=1.0\n").is_ok());
        assert_eq!(
            pressure(b""),
            Err(err(1, ParseErrorKind::MissingKey("some")))
        );
    }

    #[test]
    fn pid_lists() {
        let mut v = Vec::new();
        pids_into(b"1\n42\n", &mut v).unwrap();
        assert_eq!(v, vec![1, 42]);
        assert_eq!(
            pids_into(b"1\nabc\n", &mut v),
            Err(err(2, ParseErrorKind::InvalidNumber))
        );
        assert_eq!(
            pids_into(b"0\n", &mut Vec::new()),
            Err(err(1, ParseErrorKind::InvalidNumber))
        );
        assert_eq!(
            pids_into(b"99999999999\n", &mut Vec::new()),
            Err(err(1, ParseErrorKind::InvalidNumber))
        );
        let mut empty = Vec::new();
        pids_into(b"", &mut empty).unwrap();
        assert!(empty.is_empty());
    }
}
