//! The `oomkit` node daemon: the config file, the run loop around the SDK's
//! engine, and what an operator needs around it (metrics, incident records,
//! hooks, the machine-wide tripwire, logging).
//!
//! The policies it runs (priority kill, throttle, heap profile) live in the
//! `oomkit-handlers` crate, so that a runtime can link them without this
//! crate's dependencies. [`config`] reads the daemon's TOML file and builds
//! those handlers; [`daemon`] runs them. Signal handling lives in the binary
//! only.
#![deny(missing_docs)]

pub mod config;
mod config_safety;
pub mod daemon;
pub mod dropin;
pub mod hooks;
pub mod incidents;
pub mod logging;
pub mod machine_config;
pub mod metrics;
pub mod plot;
pub mod tripwire;
