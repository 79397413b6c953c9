//! docs/config.md lists exactly the keys the parser accepts, and `oomkit config default` prints
//! every key at its default. The accepted keys are read off the parser itself: an unknown key in
//! a section makes serde list the section's fields, and a key whose value may be a table is
//! followed into (so a key added to a section without a line in the doc fails this test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use oomkit_daemon::config::Config;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The fields serde lists for an unknown key at `path` (`None`: `path` is not a table).
fn fields(path: &str, array: bool) -> Option<Vec<String>> {
    let header = if path.is_empty() {
        String::new()
    } else if array {
        format!("[[{path}]]\n")
    } else {
        format!("[{path}]\n")
    };
    let handler = "[handler]\nkind = \"priority-kill\"\n";
    let text = if path.is_empty() {
        format!("zzz_unknown = 1\n{handler}")
    } else if path == "handler" {
        format!("{handler}zzz_unknown = 1\n")
    } else if path.starts_with("handler.") {
        format!("{handler}{header}zzz_unknown = 1\n")
    } else {
        format!("{header}zzz_unknown = 1\n{handler}")
    };
    let err = Config::parse(Path::new("x"), &text).err()?.to_string();
    let at = err.find("unknown field `zzz_unknown`")?;
    let list = &err[at..];
    Some(
        list.split('`')
            .skip(3)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

/// Every leaf key (dotted) and every table key the parser accepts.
fn parser_keys() -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut leaves, mut tables) = (BTreeSet::new(), BTreeSet::new());
    let mut todo = vec![String::new()];
    while let Some(path) = todo.pop() {
        let Some(keys) = fields(&path, false).or_else(|| fields(&path, true)) else {
            leaves.insert(path);
            continue;
        };
        if !path.is_empty() {
            tables.insert(path.clone());
        }
        for k in keys {
            todo.push(if path.is_empty() {
                k
            } else {
                format!("{path}.{k}")
            });
        }
    }
    (leaves, tables)
}

fn doc_keys() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("docs/config.md")).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_doc_lists_exactly_the_accepted_keys() {
    let (leaves, tables) = parser_keys();
    assert!(leaves.len() > 60, "{leaves:?}");
    assert!(leaves.contains("signals.psi.window_ms") && leaves.contains("handler.rules.glob"));
    let doc = doc_keys();
    let missing: Vec<_> = leaves.difference(&doc).collect();
    assert!(missing.is_empty(), "docs/config.md lacks {missing:?}");
    let unknown: Vec<_> = doc
        .iter()
        .filter(|k| !leaves.contains(*k) && !tables.contains(*k))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/config.md lists keys the parser rejects: {unknown:?}"
    );
}

#[test]
fn config_default_names_every_key_and_parses_to_the_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_oomkit"))
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let (leaves, _) = parser_keys();
    for k in &leaves {
        let last = k.rsplit('.').next().unwrap();
        let set = text.lines().any(|l| {
            let l = l.trim_start_matches(['#', ' ']);
            l.starts_with(&format!("{last} =")) || l.starts_with(&format!("{last}="))
        });
        assert!(set, "`oomkit config default` does not show {k}");
    }
    let parsed = Config::parse(Path::new("default"), &text).unwrap().config;
    let d = oomkit_daemon::daemon::default_config();
    for (name, a, b) in [
        (
            "daemon",
            format!("{:?}", parsed.daemon),
            format!("{:?}", d.daemon),
        ),
        (
            "engine",
            format!("{:?}", parsed.engine),
            format!("{:?}", d.engine),
        ),
        (
            "signals",
            format!("{:?}", parsed.signals),
            format!("{:?}", d.signals),
        ),
        (
            "reserve",
            format!("{:?}", parsed.reserve),
            format!("{:?}", d.reserve),
        ),
        (
            "watchdog",
            format!("{:?}", parsed.watchdog),
            format!("{:?}", d.watchdog),
        ),
        (
            "handler.qos",
            format!("{:?}", parsed.handler.qos),
            format!("{:?}", d.handler.qos),
        ),
    ] {
        assert_eq!(a, b, "[{name}] of `config default` is not the default");
    }
    // The commented-out tables hold the defaults too.
    let setting = |l: &str| {
        l.starts_with('[')
            || l.split_once(" =").is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            })
    };
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(s) if setting(s) && !s.starts_with("kind =") => s,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let full = Config::parse(Path::new("default"), &uncommented);
    assert!(full.is_ok(), "uncommented default: {}", full.err().unwrap());
}
