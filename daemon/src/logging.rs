//! The daemon's log output: one line per event, whatever the format, and
//! colour only on a terminal.
//!
//! Logs end up in files, `kubectl logs` and journald, where an ANSI escape
//! is noise and a message spanning lines becomes several unrelated entries.
//! So every format writes exactly one line per event: an event whose text
//! holds newlines (the SDK's feature table, the reserve report) has them
//! folded into ` | ` before it reaches the writer.
//!
//! - `text`: human-readable, with timestamps; ANSI colour only when stderr
//!   is a terminal.
//! - `json`: one JSON object per line.
//! - `journald`: for a systemd unit's stderr: no timestamp (journald adds
//!   its own), each line prefixed with its syslog priority (`<3>` error …
//!   `<7>` debug), which journald reads into the entry's priority, so
//!   `journalctl -p warning -u oomkit` works.
//!
//! The level filter is `tracing-subscriber`'s `Targets` (`info`,
//! `oomkit=debug,info`), not its `EnvFilter`: the latter's span and field
//! directives need a regex engine, which was a sixth of the daemon's code,
//! all of it locked in RAM (docs/benchmarks.md, "Footprint at rest").

use std::io::{IsTerminal, Write};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Parses a log filter: comma-separated `LEVEL` (the default) and
/// `TARGET=LEVEL` directives (`oomkit=debug,info`); levels `off`, `error`,
/// `warn`, `info`, `debug`, `trace`.
pub fn parse_filter(filter: &str) -> Result<Targets, String> {
    filter
        .parse::<Targets>()
        .map_err(|e| format!("`{filter}`: {e} (expected e.g. `info` or `oomkit=debug,info`)"))
}

/// Sets up `tracing` output on stderr in `format`. `RUST_LOG`, when set,
/// overrides `level`.
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => parse_filter(&v).map_err(|e| format!("RUST_LOG: {e}"))?,
        _ => parse_filter(level).map_err(|e| format!("log filter: {e}"))?,
    };
    let b = tracing_subscriber::fmt().with_writer(OneLine(std::io::stderr));
    let r = match format {
        LogFormat::Text => b
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(filter)
            .try_init(),
        LogFormat::Json => b
            .json()
            .flatten_event(true)
            .finish()
            .with(filter)
            .try_init(),
        LogFormat::Journald => b
            .with_ansi(false)
            .event_format(Journald(format::format().without_time().with_ansi(false)))
            .finish()
            .with(filter)
            .try_init(),
    };
    r.map_err(|e| format!("logging: {e}"))
}

/// The syslog priority of a level (`sd-daemon(3)` prefixes).
pub fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// The journald format: `<N>` then the plain text format.
pub struct Journald<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for Journald<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Folds the newlines inside one formatted event (all but the last) into
/// ` | `, dropping the indentation that follows them.
pub fn fold_lines(event: &[u8]) -> Vec<u8> {
    let body = event.strip_suffix(b"\n").unwrap_or(event);
    let mut out = Vec::with_capacity(event.len() + 8);
    let mut lines = body.split(|b| *b == b'\n');
    if let Some(first) = lines.next() {
        out.extend_from_slice(first);
    }
    for l in lines {
        let l = l.trim_ascii_start();
        if l.is_empty() {
            continue;
        }
        out.extend_from_slice(b" | ");
        out.extend_from_slice(l);
    }
    out.push(b'\n');
    out
}

/// A writer maker whose writers fold each event onto one line. The `fmt`
/// layer formats an event into a buffer and writes it with one
/// `write_all`, so one `write` call is one event.
pub struct OneLine<M>(pub M);

/// The writer of [`OneLine`].
pub struct OneLineWriter<W>(W);

impl<W: Write> Write for OneLineWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.iter().filter(|b| **b == b'\n').count() <= 1 {
            self.0.write_all(buf)?;
        } else {
            self.0.write_all(&fold_lines(buf))?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for OneLine<M> {
    type Writer = OneLineWriter<M::Writer>;
    fn make_writer(&'a self) -> Self::Writer {
        OneLineWriter(self.0.make_writer())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn filters_take_levels_and_targets() {
        use tracing::level_filters::LevelFilter;
        let t = parse_filter("oomkit=debug,info").unwrap();
        assert_eq!(t.default_level(), Some(LevelFilter::INFO));
        assert!(t.would_enable("oomkit::engine", &Level::DEBUG));
        assert!(!t.would_enable("other", &Level::DEBUG));
        assert_eq!(
            parse_filter("warn").unwrap().default_level(),
            Some(LevelFilter::WARN)
        );
        let e = parse_filter("oomkit=loud").unwrap_err();
        assert!(e.contains("oomkit=loud"), "{e}");
    }

    #[test]
    fn multi_line_events_become_one_line() {
        assert_eq!(
            fold_lines(b"kernel features:\n  pidfd_open   yes\n  cgroup_kill  no\n"),
            b"kernel features: | pidfd_open   yes | cgroup_kill  no\n"
        );
        assert_eq!(fold_lines(b"one\n"), b"one\n");
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journald_lines_carry_the_priority_and_no_colour() {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(OneLine(move || out.clone()))
            .with_ansi(false)
            .event_format(Journald(format::format().without_time().with_ansi(false)))
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(pid = 7, "victim killed");
            tracing::info!("table:\n  a 1\n  b 2");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("<4>") && lines[0].contains("victim killed pid=7"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("<6>") && lines[1].ends_with("table: | a 1 | b 2"),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "{text}");
    }
}
