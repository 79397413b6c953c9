//! Globs on cgroup hierarchy paths, matched without a regex engine.
//!
//! The config's rules and heap-profile filters match a cgroup's path
//! (`/system.slice/app.service`) against patterns with a small syntax:
//!
//! - `*` any bytes within one path component, `?` one byte but `/`;
//! - `**` as a whole component any number of components (`/a/**/b` also
//!   matches `/a/b`; a trailing `/**` at least one: `/a/**` matches `/a/x`,
//!   not `/a`; `**` alone matches every path); elsewhere (`a**`) it is `*`;
//! - `{a,b}` alternatives, which may hold `/` and nest (8 deep, at most
//!   [`MAX_ALTERNATIVES`] per glob after expansion); an empty alternative
//!   matches the empty string (`postgresql{,@*}.service`);
//! - `[abc]`, `[a-z]`, `[!a-z]` (or `[^a-z]`) one ASCII byte of (not of)
//!   the set, never `/`;
//! - `\` makes the next character literal.
//!
//! Why not a glob crate: the ones that exist compile globs to regular
//! expressions, and the regex engine was a sixth of the daemon's code, all
//! of it locked in RAM on every node (docs/benchmarks.md, "Footprint at
//! rest"). Matching here works component by component with one back-track
//! point for `**` and one for `*` inside a component (the classic wildcard
//! algorithm), so it takes time linear in the path for a given glob — no
//! recursion, no exponential blow-up on hostile names — and allocates
//! nothing, so it may run on the decision path.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Most alternatives one glob may expand to (`{a,b}{c,d}` is four).
pub const MAX_ALTERNATIVES: usize = 256;

/// How deep `{…}` groups may nest (`{a,{b,c}}` is two).
const MAX_NESTING: usize = 8;

/// A glob that cannot be parsed: what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem} at byte {at}")]
pub struct PatternError {
    /// Byte offset in the glob.
    pub at: usize,
    /// What is wrong.
    pub problem: &'static str,
}

/// One byte's test inside a component.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(u8),
    /// `?`
    Any,
    /// `*`
    Star,
    /// `[...]`: inclusive byte ranges, negated or not.
    Class {
        negated: bool,
        ranges: Vec<(u8, u8)>,
    },
}

/// A token before `{…}` is expanded and the glob split at `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PTok {
    Tok(Tok),
    Sep,
    Alt(Vec<Vec<PTok>>),
}

/// One component of an expanded glob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Comp {
    /// `**`: any number of components.
    AnyComps,
    /// Exactly one component matching these tokens.
    Pat(Vec<Tok>),
}

/// A compiled path glob. See the module docs for the syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGlob {
    /// The `{…}` alternatives, expanded, each split into components.
    alts: Vec<Vec<Comp>>,
}

impl PathGlob {
    /// Parses `glob`.
    pub fn new(glob: &str) -> Result<Self, PatternError> {
        let toks = parse(glob.as_bytes())?;
        let mut expanded = vec![Vec::new()];
        expand(&toks, &mut expanded)?;
        Ok(PathGlob {
            alts: expanded.iter().map(|a| components(a)).collect(),
        })
    }

    /// Whether `path` (a hierarchy path, compared as bytes) matches.
    pub fn is_match<P: AsRef<Path>>(&self, path: P) -> bool {
        let path = path.as_ref().as_os_str().as_bytes();
        self.alts.iter().any(|comps| match_comps(comps, path))
    }
}

fn parse(g: &[u8]) -> Result<Vec<PTok>, PatternError> {
    let err = |at, problem| Err(PatternError { at, problem });
    let mut top: Vec<PTok> = Vec::new();
    // The open `{…}` groups, innermost last: where each opened, its branches.
    let mut groups: Vec<(usize, Vec<Vec<PTok>>)> = Vec::new();
    let mut i = 0;
    while i < g.len() {
        let depth = groups.len();
        match (g[i], groups.last_mut()) {
            (b'{', _) if depth >= MAX_NESTING => {
                return err(i, "`{…}` groups nest more than 8 deep");
            }
            (b'{', _) => groups.push((i, vec![Vec::new()])),
            (b',', Some((_, branches))) => branches.push(Vec::new()),
            (b'}', None) => return err(i, "`}` without `{`"),
            (b'}', Some(_)) => {
                if let Some((_, branches)) = groups.pop() {
                    current(&mut groups, &mut top).push(PTok::Alt(branches));
                }
            }
            _ => i = push_token(g, i, current(&mut groups, &mut top))?,
        }
        i += 1;
    }
    match groups.first() {
        Some((at, _)) => err(*at, "`{` is never closed"),
        None => Ok(top),
    }
}

/// Where the next token goes: the last branch of the innermost open group,
/// or the top level.
fn current<'a>(
    groups: &'a mut [(usize, Vec<Vec<PTok>>)],
    top: &'a mut Vec<PTok>,
) -> &'a mut Vec<PTok> {
    match groups.last_mut().and_then(|(_, b)| b.last_mut()) {
        Some(branch) => branch,
        None => top,
    }
}

/// Parses the token at `g[i]` (not `{`, `,` in a group, `}`) onto `out`;
/// returns the offset of its last byte.
fn push_token(g: &[u8], mut i: usize, out: &mut Vec<PTok>) -> Result<usize, PatternError> {
    match g[i] {
        b'\\' => {
            i += 1;
            match g.get(i) {
                Some(b'/') => out.push(PTok::Sep),
                Some(&b) => out.push(PTok::Tok(Tok::Lit(b))),
                None => {
                    return Err(PatternError {
                        at: i - 1,
                        problem: "`\\` at the end escapes nothing",
                    });
                }
            }
        }
        b'?' => out.push(PTok::Tok(Tok::Any)),
        b'*' => out.push(PTok::Tok(Tok::Star)),
        b'/' => out.push(PTok::Sep),
        b'[' => {
            let (tok, end) = parse_class(g, i)?;
            out.push(PTok::Tok(tok));
            i = end;
        }
        b => out.push(PTok::Tok(Tok::Lit(b))),
    }
    Ok(i)
}

/// Parses the class opening at `g[open] == b'['`; returns it and the
/// offset of its closing `]`.
fn parse_class(g: &[u8], open: usize) -> Result<(Tok, usize), PatternError> {
    let mut i = open + 1;
    let negated = matches!(g.get(i), Some(b'!' | b'^'));
    if negated {
        i += 1;
    }
    let first = i;
    let mut ranges = Vec::new();
    loop {
        let Some(&c) = g.get(i) else {
            return Err(PatternError {
                at: open,
                problem: "`[` is never closed",
            });
        };
        if !c.is_ascii() {
            return Err(PatternError {
                at: i,
                problem: "only ASCII characters can stand in a `[…]` class",
            });
        }
        if c == b']' && i > first {
            return Ok((Tok::Class { negated, ranges }, i));
        }
        // `a-z`; a `-` first or last is literal.
        if g.get(i + 1) == Some(&b'-') && g.get(i + 2).is_some_and(|&e| e != b']') {
            let hi = g[i + 2];
            if !hi.is_ascii() {
                return Err(PatternError {
                    at: i + 2,
                    problem: "only ASCII characters can stand in a `[…]` class",
                });
            }
            if hi < c {
                return Err(PatternError {
                    at: i,
                    problem: "range in `[…]` ends before it starts",
                });
            }
            ranges.push((c, hi));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
}

/// Appends `toks` to every sequence in `out`, multiplying them by each
/// `{…}` group's branches (expanded first; recursion as deep as groups
/// nest, at most [`MAX_NESTING`]).
fn expand(toks: &[PTok], out: &mut Vec<Vec<PTok>>) -> Result<(), PatternError> {
    let too_many = PatternError {
        at: 0,
        problem: "`{…}` groups give more than 256 alternatives",
    };
    for t in toks {
        match t {
            PTok::Alt(branches) => {
                let mut suffixes = Vec::new();
                for b in branches {
                    let mut e = vec![Vec::new()];
                    expand(b, &mut e)?;
                    suffixes.extend(e);
                }
                if out.len().saturating_mul(suffixes.len()) > MAX_ALTERNATIVES {
                    return Err(too_many);
                }
                let mut next = Vec::with_capacity(out.len() * suffixes.len());
                for prefix in out.iter() {
                    for suffix in &suffixes {
                        let mut s = prefix.clone();
                        s.extend(suffix.iter().cloned());
                        next.push(s);
                    }
                }
                *out = next;
            }
            t => out.iter_mut().for_each(|s| s.push(t.clone())),
        }
    }
    Ok(())
}

/// Splits an expanded glob (no `{…}` left) at `/`.
fn components(toks: &[PTok]) -> Vec<Comp> {
    let mut comps = Vec::new();
    for part in toks.split(|t| *t == PTok::Sep) {
        let part: Vec<Tok> = part
            .iter()
            .filter_map(|t| match t {
                PTok::Tok(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        if part == [Tok::Star, Tok::Star] {
            comps.push(Comp::AnyComps);
        } else {
            comps.push(Comp::Pat(part));
        }
    }
    // A trailing `/**` needs at least one component (`/a/**` is not `/a`).
    if comps.len() > 1 && comps.last() == Some(&Comp::AnyComps) {
        comps.insert(comps.len() - 1, Comp::Pat(vec![Tok::Star]));
    }
    comps
}

fn tok_matches(t: &Tok, b: u8) -> bool {
    match t {
        Tok::Lit(l) => *l == b,
        Tok::Any => true,
        Tok::Star => false,
        Tok::Class { negated, ranges } => {
            b != b'/' && ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&b)) != *negated
        }
    }
}

/// One component (no `/` in `s`) against its tokens: the classic wildcard
/// algorithm, back-tracking only to the last `*`.
fn match_component(toks: &[Tok], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut back: Option<(usize, usize)> = None;
    while i < s.len() {
        match toks.get(p) {
            Some(Tok::Star) => {
                back = Some((p + 1, i));
                p += 1;
            }
            Some(t) if tok_matches(t, s[i]) => {
                p += 1;
                i += 1;
            }
            _ => match back {
                Some((bp, bi)) => {
                    back = Some((bp, bi + 1));
                    p = bp;
                    i = bi + 1;
                }
                None => return false,
            },
        }
    }
    toks[p.min(toks.len())..].iter().all(|t| *t == Tok::Star)
}

/// The component of `path` starting at `at`.
fn component(path: &[u8], at: usize) -> &[u8] {
    let rest = &path[at.min(path.len())..];
    rest.iter()
        .position(|&b| b == b'/')
        .map_or(rest, |end| &rest[..end])
}

/// Where the component after the one at `at` starts (`None`: it was the last).
fn next_component(path: &[u8], at: usize) -> Option<usize> {
    let rest = &path[at.min(path.len())..];
    rest.iter().position(|&b| b == b'/').map(|end| at + end + 1)
}

/// The components of `path` against a glob's: the same algorithm one level
/// up, `**` standing for any run of components.
fn match_comps(comps: &[Comp], path: &[u8]) -> bool {
    let mut p = 0;
    let mut at = Some(0);
    let mut back: Option<(usize, Option<usize>)> = None;
    while let Some(o) = at {
        match comps.get(p) {
            Some(Comp::AnyComps) => {
                back = Some((p + 1, at));
                p += 1;
            }
            Some(Comp::Pat(t)) if match_component(t, component(path, o)) => {
                p += 1;
                at = next_component(path, o);
            }
            _ => match back {
                Some((bp, Some(bo))) => {
                    let n = next_component(path, bo);
                    back = Some((bp, n));
                    p = bp;
                    at = n;
                }
                _ => return false,
            },
        }
    }
    comps[p.min(comps.len())..]
        .iter()
        .all(|c| *c == Comp::AnyComps)
}

#[cfg(test)]
mod tests;
