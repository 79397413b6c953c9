//! Loading a config: parse the text, validate every section, run the safety checks, and turn
//! each problem's dotted key into `FILE:LINE:COL` ([`super::locate`]). Drop-ins are merged by
//! [`crate::dropin`].

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, ConfigErrors, key_at, line_col, locate};

/// A loaded, validated config with the text it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file.
    pub file: PathBuf,
    /// The config.
    pub config: Config,
    /// Notes that are not errors (ignored tables, privilege hints).
    pub warnings: Vec<String>,
    /// Drop-ins merged over the file, in the order applied.
    pub dropins: Vec<PathBuf>,
}

impl Config {
    /// Parses `text` (read from `file`) and validates it.
    pub fn parse(file: &Path, text: &str) -> Result<Loaded, ConfigErrors> {
        let config: Config = toml::from_str(text).map_err(|e| {
            if e.message().contains("missing field `handler`") {
                return ConfigErrors(vec![ConfigError {
                    file: file.to_path_buf(),
                    at: None,
                    key: None,
                    message: "no [handler] section (missing field `handler`): every config needs one, e.g. `[handler]` with `kind = \"priority-kill\"`".into(),
                }]);
            }
            let span = e.span();
            ConfigErrors(vec![ConfigError {
                file: file.to_path_buf(),
                at: span.as_ref().map(|s| line_col(text, s.start)),
                key: span.and_then(|s| key_at(text, s.start)),
                message: e.message().trim().to_string(),
            }])
        })?;
        let (mut problems, mut warnings) = config.validate();
        let safety = crate::config_safety::check(&config);
        problems.extend(safety.errors);
        warnings.extend(safety.warnings.into_iter().map(|(key, message)| {
            ConfigError {
                file: file.to_path_buf(),
                at: locate(text, &key),
                key: Some(key),
                message,
            }
            .to_string()
        }));
        if problems.is_empty() {
            return Ok(Loaded {
                file: file.to_path_buf(),
                config,
                warnings,
                dropins: Vec::new(),
            });
        }
        Err(ConfigErrors(
            problems
                .into_iter()
                .map(|(key, message)| ConfigError {
                    file: file.to_path_buf(),
                    at: locate(text, &key),
                    key: Some(key),
                    message,
                })
                .collect(),
        ))
    }

    /// Reads and validates a file, merged with its drop-ins
    /// (`oomkit.d/*.toml` beside `oomkit.toml`; see [`crate::dropin`]).
    pub fn load(file: &Path) -> Result<Loaded, ConfigErrors> {
        crate::dropin::load(file)
    }
}
