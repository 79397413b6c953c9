//! Where in the file a problem is: `FILE:LINE:COL: key `a.b`: message`.
//!
//! Positions come from the spans `toml` records while parsing ([`toml::de::DeTable`], whose keys
//! and values are [`toml::Spanned`]): a parse error's span is turned into the dotted key it falls
//! in ([`key_at`]), and a dotted key found wrong by validation into the line that sets it
//! ([`locate`]). Nothing here scans the text for `[` or `=` by hand.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub at: Option<(usize, usize)>,
    /// The dotted key (`signals.psi.window_ms`, `handler.rules[1].glob`), when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((l, c)) = self.at {
            write!(f, ":{l}:{c}")?;
        }
        f.write_str(": ")?;
        if let Some(k) = &self.key {
            write!(f, "key `{k}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// 1-based (line, column in characters) of byte offset `at`.
pub(crate) fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text.get(start..at).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

/// The line holding byte offset `at`, at its first non-blank character: where a `key = value`
/// or `[table]` line starts.
fn line_of(text: &str, at: usize) -> (usize, usize) {
    let (line, _) = line_col(text, at);
    let start = text
        .get(..at.min(text.len()))
        .and_then(|b| b.rfind('\n'))
        .map_or(0, |i| i + 1);
    let rest = text.get(start..).unwrap_or("");
    let indent = rest.chars().take_while(|c| *c == ' ' || *c == '\t').count();
    (line, indent + 1)
}

/// The document's tables with their spans; what parses of a broken file.
fn spanned(text: &str) -> Spanned<DeTable<'_>> {
    DeTable::parse_recoverable(text).0
}

/// The entry named `name` in `table`.
fn entry<'a, 'i>(
    table: &'a DeTable<'i>,
    name: &str,
) -> Option<(
    &'a Spanned<toml::de::DeString<'i>>,
    &'a Spanned<DeValue<'i>>,
)> {
    table.iter().find(|(k, _)| k.get_ref().as_ref() == name)
}

/// Whether a table value is a `[header]` of its own (not implied by a dotted key or a deeper
/// header, whose span is a key's).
fn is_header(text: &str, span: &Range<usize>) -> bool {
    text.get(span.start..).is_some_and(|s| s.starts_with('['))
}

/// The dotted key (`engine.cooldown_ms`, `handler.rules.glob`: array items unnumbered) whose key
/// or value holds byte offset `at`, the deepest one.
pub(crate) fn key_at(text: &str, at: usize) -> Option<String> {
    let doc = spanned(text);
    let mut path = Vec::new();
    key_in(doc.get_ref(), at, &mut path).then(|| path.join("."))
}

/// Appends to `path` the keys down to the deepest entry of `table` that holds `at`.
fn key_in(table: &DeTable<'_>, at: usize, path: &mut Vec<String>) -> bool {
    for (k, v) in table.iter() {
        path.push(k.get_ref().to_string());
        if value_in(v, at, path) || k.span().contains(&at) || v.span().contains(&at) {
            return true;
        }
        path.pop();
    }
    false
}

/// Like [`key_in`] for the tables inside a value (a table, or an array of them).
fn value_in(v: &Spanned<DeValue<'_>>, at: usize, path: &mut Vec<String>) -> bool {
    match v.get_ref() {
        DeValue::Table(t) => key_in(t, at, path),
        DeValue::Array(items) => items.iter().any(|item| value_in(item, at, path)),
        _ => false,
    }
}

/// Finds a dotted key (`handler.rules[1].glob`, `signals.psi.window_ms`) in
/// the text: the position of its `key =` line, else of its table header,
/// else of the nearest enclosing table that is present.
pub fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    let doc = spanned(text);
    let mut table = doc.get_ref();
    let mut best = None;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let (name, index) = match part.split_once('[') {
            Some((n, i)) => (n, Some(i.trim_end_matches(']').parse::<usize>().ok()?)),
            None => (part, None),
        };
        let Some((k, mut v)) = entry(table, name) else {
            return best;
        };
        let mut at = k.span().start;
        if let Some(i) = index {
            let DeValue::Array(items) = v.get_ref() else {
                return best;
            };
            let Some(item) = items.get(i) else {
                return best;
            };
            v = item;
            at = v.span().start;
        }
        if parts.peek().is_none() {
            return Some(line_of(text, at));
        }
        let DeValue::Table(t) = v.get_ref() else {
            return best;
        };
        if is_header(text, &v.span()) {
            best = Some(line_of(text, v.span().start));
        }
        table = t;
    }
    best
}
