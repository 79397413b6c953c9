//! A rig running a real `Engine` over the SDK's `FakeHost`.
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use oomkit::engine::EngineConfig;

pub use oomkit_testing::{Rig, ev, urgent};

/// Engine settings for tests: act on first sight, no re-check.
pub fn eager() -> EngineConfig {
    EngineConfig {
        progress_aware: false,
        recheck: false,
        ..EngineConfig::default()
    }
}
