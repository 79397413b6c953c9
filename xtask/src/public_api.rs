//! `cargo xtask public-api [--bless]`: the SDK's public API as a sorted
//! text snapshot (`sdk/public-api.txt`), compared in CI.
//!
//! Why not `cargo public-api` or `cargo semver-checks`: both need a tool
//! built and installed on every fresh CI machine (minutes of the 90-minute
//! budget), and both pin a rustdoc JSON format that moves with the
//! toolchain. This reads the same rustdoc JSON (`--output-format json`,
//! enabled on the stable toolchain with `RUSTC_BOOTSTRAP=1`) with the
//! `serde_json` the xtask already has, and writes one line per public item:
//! modules, types with their public fields and variants, functions and
//! methods with their signatures, trait impls, re-exports of foreign
//! items. A change to any of them changes the file; CI fails until the
//! snapshot is updated with `--bless` in the same commit, so an API change
//! is always a visible, reviewed diff.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

use crate::repo_root;
use crate::util::{self, Context, Error, Result};

/// The crates whose API is pinned, and their snapshot files.
const CRATES: [(&str, &str, &str); 1] = [("oomkit", "oomkit", "sdk/public-api.txt")];

/// Checks (or with `bless`, rewrites) every snapshot; true when all match.
pub fn run(bless: bool) -> Result<bool> {
    let mut ok = true;
    for (package, lib, snapshot) in CRATES {
        let lines = api_lines(package, lib)?;
        let text = lines.into_iter().collect::<Vec<_>>().join("\n") + "\n";
        let path = repo_root().join(snapshot);
        if bless {
            std::fs::write(&path, &text).context(|| path.display().to_string())?;
            println!("xtask: wrote {}", path.display());
            continue;
        }
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        if old == text {
            println!("xtask: {package}: public API matches {snapshot}");
            continue;
        }
        ok = false;
        let old: BTreeSet<&str> = old.lines().collect();
        let new: BTreeSet<&str> = text.lines().collect();
        println!("xtask: {package}: the public API differs from {snapshot}:");
        for l in old.difference(&new) {
            println!("  - {l}");
        }
        for l in new.difference(&old) {
            println!("  + {l}");
        }
        println!("  (if intended: cargo xtask public-api --bless, and commit the file)");
    }
    Ok(ok)
}

fn api_lines(package: &str, lib: &str) -> Result<BTreeSet<String>> {
    let ok = util::run_status(
        std::process::Command::new(util::cargo())
            .args(["rustdoc", "-q", "-p", package, "--lib", "--"])
            .args(["-Z", "unstable-options", "--output-format", "json"])
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(repo_root()),
    )?;
    if !ok {
        return Err(Error::msg(format!("cargo rustdoc -p {package} failed")));
    }
    let file: PathBuf = repo_root().join("target/doc").join(format!("{lib}.json"));
    let text = std::fs::read_to_string(&file).context(|| file.display().to_string())?;
    let doc: Value = serde_json::from_str(&text).context(|| file.display().to_string())?;
    let mut w = Walker {
        doc: &doc,
        overlay: Default::default(),
        out: BTreeSet::new(),
        seen: BTreeSet::new(),
    };
    let root = doc["root"].clone();
    w.module(&root, lib);
    Ok(w.out)
}

struct Walker<'a> {
    doc: &'a Value,
    /// Re-exported items under their new names, keyed `id@path`.
    overlay: std::collections::HashMap<String, Value>,
    out: BTreeSet<String>,
    /// (id, path) pairs already walked: re-exports can form cycles.
    seen: BTreeSet<(String, String)>,
}

impl Walker<'_> {
    fn item(&self, id: &Value) -> Option<&Value> {
        let key = id_key(id);
        self.overlay
            .get(&key)
            .or_else(|| self.doc["index"].get(key.as_str()))
    }

    fn module(&mut self, id: &Value, path: &str) {
        let Some(m) = self.item(id) else { return };
        let items = m["inner"]["module"]["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for child in &items {
            self.visit(child, path);
        }
    }

    fn visit(&mut self, id: &Value, parent: &str) {
        let Some(it) = self.item(id).cloned() else {
            return;
        };
        if it["visibility"] != "public" {
            return;
        }
        let inner = &it["inner"];
        if let Some(u) = inner.get("use") {
            return self.reexport(u, parent);
        }
        let name = it["name"].as_str().unwrap_or("?");
        let path = format!("{parent}::{name}");
        if !self.seen.insert((id_key(id), path.clone())) {
            return;
        }
        let (kind, body) = match inner.as_object().and_then(|o| o.iter().next()) {
            Some((k, v)) => (k.as_str(), v),
            None => return,
        };
        let attrs = non_exhaustive(&it);
        match kind {
            "module" => {
                self.out.insert(format!("mod {path}"));
                self.module(id, &path);
            }
            "struct" => {
                self.out.insert(format!(
                    "{attrs}struct {path}{}",
                    generics(&body["generics"])
                ));
                self.fields(&body["kind"], &path);
                self.impls(&body["impls"], &path);
            }
            "enum" => {
                self.out
                    .insert(format!("{attrs}enum {path}{}", generics(&body["generics"])));
                for v in body["variants"].as_array().into_iter().flatten() {
                    self.variant(v, &path);
                }
                self.impls(&body["impls"], &path);
            }
            "union" => {
                self.out.insert(format!("union {path}"));
            }
            "function" => {
                self.out.insert(format!("fn {path}{}", sig(body)));
            }
            "trait" => {
                self.out
                    .insert(format!("trait {path}{}", generics(&body["generics"])));
                for m in body["items"].as_array().into_iter().flatten() {
                    self.trait_item(m, &path);
                }
            }
            "constant" => {
                self.out
                    .insert(format!("const {path}: {}", ty(&body["type"])));
            }
            "static" => {
                self.out
                    .insert(format!("static {path}: {}", ty(&body["type"])));
            }
            "type_alias" => {
                self.out
                    .insert(format!("type {path} = {}", ty(&body["type"])));
            }
            "macro" => {
                self.out.insert(format!("macro {path}"));
            }
            other => {
                self.out.insert(format!("{other} {path}"));
            }
        }
    }

    fn reexport(&mut self, u: &Value, parent: &str) {
        let name = u["name"].as_str().unwrap_or("?");
        let target = &u["id"];
        if target.is_null() || self.item(target).is_none() {
            // A foreign item: name where it comes from.
            let from = self.foreign_path(target, u["source"].as_str().unwrap_or("?"));
            self.out.insert(format!("use {parent}::{name} = {from}"));
            return;
        }
        if u["is_glob"].as_bool() == Some(true) {
            return self.module(target, parent);
        }
        // Re-exported local item: list it at this path too.
        let Some(mut it) = self.item(target).cloned() else {
            return;
        };
        if let Some(o) = it.as_object_mut() {
            o.insert("name".into(), Value::from(name));
            o.insert("visibility".into(), Value::from("public"));
        }
        let key = format!("reexport:{}:{parent}::{name}", id_key(target));
        if !self.seen.insert((key, String::new())) {
            return;
        }
        if it["inner"].get("module").is_some() {
            self.out.insert(format!("mod {parent}::{name}"));
            return self.module(target, &format!("{parent}::{name}"));
        }
        // Visit through an overlay entry under the new name.
        let tmp_key = format!("{}@{parent}::{name}", id_key(target));
        self.overlay.insert(tmp_key.clone(), it);
        self.visit(&Value::from(tmp_key), parent);
    }

    fn foreign_path(&self, id: &Value, fallback: &str) -> String {
        self.doc["paths"]
            .get(id_key(id).as_str())
            .and_then(|p| p["path"].as_array())
            .map(|p| {
                p.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("::")
            })
            .unwrap_or_else(|| fallback.to_owned())
    }

    fn fields(&mut self, kind: &Value, path: &str) {
        if let Some(plain) = kind.get("plain") {
            for f in plain["fields"].as_array().into_iter().flatten() {
                if let Some(fi) = self.item(f) {
                    self.out.insert(format!(
                        "field {path}::{}: {}",
                        fi["name"].as_str().unwrap_or("?"),
                        ty(&fi["inner"]["struct_field"])
                    ));
                }
            }
            if plain["has_stripped_fields"].as_bool() == Some(true) {
                self.out.insert(format!("field {path}::(private fields)"));
            }
        } else if let Some(tuple) = kind.get("tuple") {
            let fields = self.tuple_fields(tuple);
            self.out.insert(format!("field {path}::({fields})"));
        }
    }

    /// The types of a tuple struct's or variant's fields.
    fn tuple_fields(&self, ids: &Value) -> String {
        let fields: Vec<String> = ids
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| match self.item(f) {
                Some(fi) => ty(&fi["inner"]["struct_field"]),
                None => "_".into(),
            })
            .collect();
        fields.join(", ")
    }

    fn variant(&mut self, id: &Value, path: &str) {
        let Some(v) = self.item(id) else { return };
        let name = v["name"].as_str().unwrap_or("?");
        let kind = &v["inner"]["variant"]["kind"];
        let shape = if kind == "plain" {
            String::new()
        } else if let Some(t) = kind.get("tuple") {
            format!("({})", self.tuple_fields(t))
        } else if let Some(s) = kind.get("struct") {
            let fields: Vec<String> = s["fields"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| self.item(f))
                .map(|fi| {
                    format!(
                        "{}: {}",
                        fi["name"].as_str().unwrap_or("?"),
                        ty(&fi["inner"]["struct_field"])
                    )
                })
                .collect();
            format!(" {{ {} }}", fields.join(", "))
        } else {
            String::new()
        };
        self.out.insert(format!("variant {path}::{name}{shape}"));
    }

    fn impls(&mut self, impls: &Value, path: &str) {
        for id in impls.as_array().into_iter().flatten() {
            let Some(imp) = self.item(id).cloned() else {
                continue;
            };
            let body = &imp["inner"]["impl"];
            if !body["blanket_impl"].is_null() {
                continue;
            }
            match body["trait"].as_object() {
                Some(t) => {
                    let name = t.get("path").and_then(Value::as_str).unwrap_or("?");
                    let neg = if body["is_negative"].as_bool() == Some(true) {
                        "!"
                    } else {
                        ""
                    };
                    self.out.insert(format!(
                        "impl{} {neg}{name}{} for {}",
                        generics(&body["generics"]),
                        args(&Value::Object(t.clone())["args"]),
                        ty(&body["for"])
                    ));
                }
                None => {
                    for m in body["items"].as_array().into_iter().flatten() {
                        let Some(mi) = self.item(m) else { continue };
                        if mi["visibility"] != "public" {
                            continue;
                        }
                        let name = mi["name"].as_str().unwrap_or("?");
                        let line = match mi["inner"].get("function") {
                            Some(f) => format!("fn {path}::{name}{}", sig(f)),
                            None => match mi["inner"].get("assoc_const") {
                                Some(c) => format!("const {path}::{name}: {}", ty(&c["type"])),
                                None => format!("item {path}::{name}"),
                            },
                        };
                        self.out.insert(line);
                    }
                }
            }
        }
    }

    fn trait_item(&mut self, id: &Value, path: &str) {
        let Some(mi) = self.item(id) else { return };
        let name = mi["name"].as_str().unwrap_or("?");
        let first = mi["inner"].as_object().and_then(|o| o.iter().next());
        let line = match first.map(|(k, v)| (k.as_str(), v)) {
            Some(("function", f)) => {
                let provided = if f["has_body"].as_bool() == Some(true) {
                    " (provided)"
                } else {
                    ""
                };
                format!("fn {path}::{name}{}{provided}", sig(f))
            }
            Some(("assoc_type", _)) => format!("type {path}::{name}"),
            Some(("assoc_const", c)) => format!("const {path}::{name}: {}", ty(&c["type"])),
            _ => format!("item {path}::{name}"),
        };
        self.out.insert(line);
    }
}

fn id_key(id: &Value) -> String {
    // Ids are numbers in format 57; keep strings working too.
    match id {
        Value::String(s) => s.clone(),
        _ => id.to_string(),
    }
}

/// The last segment of a path as written in the source.
fn last(path: Option<&str>) -> &str {
    let p = path.unwrap_or("?");
    p.rsplit("::").next().unwrap_or(p)
}

fn non_exhaustive(item: &Value) -> &'static str {
    let attrs = item["attrs"].to_string();
    if attrs.contains("non_exhaustive") {
        "#[non_exhaustive] "
    } else {
        ""
    }
}

fn generics(g: &Value) -> String {
    let params: Vec<String> = g["params"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["kind"]["type"]["is_synthetic"].as_bool() != Some(true))
        .map(|p| {
            let name = p["name"].as_str().unwrap_or("?").to_owned();
            let bounds = bounds(&p["kind"]["type"]["bounds"]);
            if bounds.is_empty() {
                name
            } else {
                format!("{name}: {bounds}")
            }
        })
        .collect();
    if params.is_empty() {
        String::new()
    } else {
        format!("<{}>", params.join(", "))
    }
}

fn bounds(b: &Value) -> String {
    b.as_array()
        .into_iter()
        .flatten()
        .map(|b| match b.get("trait_bound") {
            Some(t) => format!(
                "{}{}",
                t["trait"]["path"].as_str().unwrap_or("?"),
                args(&t["trait"]["args"])
            ),
            None => b["outlives"].as_str().unwrap_or("?").to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

fn sig(f: &Value) -> String {
    let s = &f["sig"];
    let inputs: Vec<String> = s["inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let name = i[0].as_str().unwrap_or("_");
            let t = ty(&i[1]);
            if name == "self" {
                match t.as_str() {
                    "Self" => "self".into(),
                    "&Self" => "&self".into(),
                    "&mut Self" => "&mut self".into(),
                    _ => format!("self: {t}"),
                }
            } else {
                format!("{name}: {t}")
            }
        })
        .collect();
    let out = if s["output"].is_null() {
        String::new()
    } else {
        format!(" -> {}", ty(&s["output"]))
    };
    let h = &f["header"];
    let mut pre = String::new();
    if h["is_const"].as_bool() == Some(true) {
        pre.push_str(" const");
    }
    if h["is_unsafe"].as_bool() == Some(true) {
        pre.push_str(" unsafe");
    }
    format!(
        "{}{pre}({}){out}",
        generics(&f["generics"]),
        inputs.join(", ")
    )
}

fn args(a: &Value) -> String {
    let Some(ab) = a.get("angle_bracketed") else {
        return String::new();
    };
    let mut parts: Vec<String> = ab["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            if let Some(t) = g.get("type") {
                ty(t)
            } else if let Some(l) = g.get("lifetime") {
                l.as_str().unwrap_or("'_").to_owned()
            } else if let Some(c) = g.get("const") {
                c["expr"].as_str().unwrap_or("_").to_owned()
            } else {
                "_".into()
            }
        })
        .collect();
    for c in ab["constraints"].as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("?");
        if let Some(t) = c["binding"].get("equality").and_then(|e| e.get("type")) {
            parts.push(format!("{name} = {}", ty(t)));
        } else {
            parts.push(name.to_owned());
        }
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("<{}>", parts.join(", "))
    }
}

fn ty(t: &Value) -> String {
    let Some((k, v)) = t.as_object().and_then(|o| o.iter().next()) else {
        return "_".into();
    };
    match k.as_str() {
        // The name only: where a type is defined inside the crate is not API.
        "resolved_path" => format!("{}{}", last(v["path"].as_str()), args(&v["args"])),
        "generic" | "primitive" => v.as_str().unwrap_or("?").to_owned(),
        "borrowed_ref" => {
            let lt = v["lifetime"]
                .as_str()
                .map(|l| format!("{l} "))
                .unwrap_or_default();
            let m = if v["is_mutable"].as_bool() == Some(true) {
                "mut "
            } else {
                ""
            };
            format!("&{lt}{m}{}", ty(&v["type"]))
        }
        "raw_pointer" => {
            let m = if v["is_mutable"].as_bool() == Some(true) {
                "mut"
            } else {
                "const"
            };
            format!("*{m} {}", ty(&v["type"]))
        }
        "slice" => format!("[{}]", ty(v)),
        "array" => format!("[{}; {}]", ty(&v["type"]), v["len"].as_str().unwrap_or("_")),
        "tuple" => {
            let parts: Vec<String> = v.as_array().into_iter().flatten().map(ty).collect();
            format!("({})", parts.join(", "))
        }
        "dyn_trait" => {
            let traits: Vec<String> = v["traits"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    format!(
                        "{}{}",
                        t["trait"]["path"].as_str().unwrap_or("?"),
                        args(&t["trait"]["args"])
                    )
                })
                .collect();
            format!("dyn {}", traits.join(" + "))
        }
        "impl_trait" => format!("impl {}", bounds(v)),
        "qualified_path" => format!(
            "<{} as {}>::{}",
            ty(&v["self_type"]),
            v["trait"]["path"].as_str().unwrap_or("?"),
            v["name"].as_str().unwrap_or("?")
        ),
        "function_pointer" => "fn(..)".into(),
        "infer" => "_".into(),
        other => other.to_owned(),
    }
}
