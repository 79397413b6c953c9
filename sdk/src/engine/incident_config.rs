//! Where incident records go: a plain setting, present with or without the
//! `serde` feature (which only decides whether records can be written), so
//! [`super::RunnerConfig`] has the same fields either way.

use std::path::PathBuf;

/// Where and how many incident records to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentConfig {
    /// The folder (created if missing).
    pub dir: PathBuf,
    /// Records kept; the oldest are deleted beyond this.
    pub max_count: usize,
    /// Upper bound on one record's size in bytes.
    pub max_bytes: usize,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        IncidentConfig {
            dir: PathBuf::from("/var/lib/oomkit/incidents"),
            max_count: 100,
            max_bytes: 256 << 10,
        }
    }
}
