//! Drop-in configuration: `/etc/oomkit/oomkit.d/*.toml` merged over
//! `/etc/oomkit/oomkit.toml`, so a package, a config-management tool or an
//! operator can change one thing without owning the whole file.
//!
//! The folder is the config file's name with `.d` for its extension. Its
//! `*.toml` files are applied in name order (`10-…` before `50-…`) as TOML
//! tables: a table merges key by key, a later value replaces an earlier one,
//! and an array (`[[handler.rules]]`) is appended to, so a drop-in can add a
//! rule (rules match in order: the main file's first). Each file must parse
//! on its own; an error in the merged result is reported at the file and
//! line that set the key last.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, ConfigErrors, Loaded, line_col, locate};

/// The drop-in folder of a config file (`oomkit.toml` → `oomkit.d`).
pub fn dir_of(file: &Path) -> PathBuf {
    file.with_extension("d")
}

/// The drop-ins of `file`, in the order they apply.
pub fn dropins(file: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir_of(file)) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    v.sort();
    v
}

fn read(file: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(file).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            at: None,
            key: None,
            message: format!("cannot read: {e}"),
        }])
    })
}

fn table(file: &Path, text: &str) -> Result<toml::Table, ConfigErrors> {
    text.parse::<toml::Table>().map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            at: e.span().map(|s| line_col(text, s.start)),
            key: None,
            message: e.message().trim().to_string(),
        }])
    })
}

/// Merges `src` into `dst`: tables key by key, arrays appended, other values replaced.
pub fn merge(dst: &mut toml::Table, src: toml::Table) {
    for (k, v) in src {
        match (dst.get_mut(&k), v) {
            (Some(toml::Value::Table(d)), toml::Value::Table(s)) => merge(d, s),
            (Some(toml::Value::Array(d)), toml::Value::Array(s)) => d.extend(s),
            (_, v) => {
                dst.insert(k, v);
            }
        }
    }
}

/// Reads `file` and its drop-ins, merges and validates them.
pub fn load(file: &Path) -> Result<Loaded, ConfigErrors> {
    let text = read(file)?;
    let extra = dropins(file);
    if extra.is_empty() {
        return Config::parse(file, &text);
    }
    let mut merged = table(file, &text)?;
    let mut texts = vec![(file.to_path_buf(), text)];
    for d in extra {
        let t = read(&d)?;
        merge(&mut merged, table(&d, &t)?);
        texts.push((d, t));
    }
    let merged_text = toml::to_string(&merged).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            at: None,
            key: None,
            message: format!("merging the drop-ins: {e}"),
        }])
    })?;
    match Config::parse(file, &merged_text) {
        Ok(mut l) => {
            let names: Vec<String> = texts[1..]
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect();
            tracing::debug!(dropins = %names.join(" "), "configuration drop-ins applied");
            l.dropins = texts.into_iter().skip(1).map(|(p, _)| p).collect();
            Ok(l)
        }
        Err(ConfigErrors(errors)) => Err(ConfigErrors(
            errors
                .into_iter()
                .map(|mut e| {
                    // Point at the last file that sets the key, in its own text.
                    let found = e.key.as_deref().and_then(|k| {
                        texts
                            .iter()
                            .rev()
                            .find_map(|(p, t)| locate(t, k).map(|at| (p.clone(), at)))
                    });
                    match found {
                        Some((p, at)) => {
                            e.file = p;
                            e.at = Some(at);
                        }
                        None => e.at = None,
                    }
                    e
                })
                .collect(),
        )),
    }
}
