//! Kill-safety checks of a parsed config, one function per section.
//!
//! [`crate::config::Config::validate`] checks that values are well-formed;
//! these checks are about what a well-formed value would *do*: a config
//! that would let a tenant steer the killer, make the daemon kill with no
//! pressure, or exhaust its memory at load time is an error; one that is
//! legal but suspicious (a glob that can never match, a dump signal that
//! kills) is a warning. Both name the dotted key, so the caller can point at
//! its file and line. They run on `check-config`, at start and on reload.

use std::path::{Component, Path};

use crate::config::Config;

/// Problems found: errors refuse the config, warnings are reported.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// (dotted key, message): the config is refused.
    pub(crate) errors: Vec<(String, String)>,
    /// (dotted key, message): legal but suspicious.
    pub(crate) warnings: Vec<(String, String)>,
}

impl Findings {
    fn error(&mut self, key: &str, msg: String) {
        self.errors.push((key.to_string(), msg));
    }
}

/// All checks of `c`.
pub(crate) fn check(c: &Config) -> Findings {
    let mut f = Findings::default();
    check_qos(c, &mut f);
    f
}

/// An absolute path with no `..` component (a hierarchy path or a
/// directory the daemon writes to must mean what it says).
fn plain_absolute(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// `[handler.qos]`: the kubelet roots are plain hierarchy paths.
fn check_qos(c: &Config, f: &mut Findings) {
    for r in &c.handler.qos.roots {
        if !plain_absolute(r) {
            f.error(
                "handler.qos.roots",
                format!(
                    "`{}` must be an absolute hierarchy path without `..`, such as `/kubepods.slice`",
                    r.display()
                ),
            );
        }
    }
}
