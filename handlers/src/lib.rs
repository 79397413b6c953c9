//! Policies built on the oomkit SDK: who dies (or is squeezed) when memory runs out.
//!
//! The SDK's [`oomkit::engine::Engine`] owns the hard, policy-free part of
//! userspace OOM handling (episodes, progress awareness, re-check, one kill
//! per episode, protection rules). What remains is *policy*, and policy is
//! what differs between nodes; this crate is a small library of policies
//! that cover the common cases, each a plain [`oomkit::engine::Handler`]:
//!
//! - [`priority::PriorityKill`]: kill the lowest tier first, the largest
//!   within it (tiers from config globs, trusted xattrs and Kubernetes QoS).
//! - [`throttle::Throttle`]: squeeze a growing cgroup's `memory.high` (or
//!   freeze it) to protect the rest, release as pressure falls, kill only if
//!   that fails to contain it in time.
//! - [`heap_profile::HeapProfile`]: before killing, ask the victim for a
//!   heap profile, with a moment of headroom to write it.
//!
//! A container runtime or shim links this crate without the daemon's
//! dependencies (no CLI parser, TOML reader, log subscriber, signal or
//! metrics crates; `cargo xtask deploy-check` keeps it so). The `oomkit`
//! daemon that reads a config file and runs these policies is the
//! `oomkit-daemon` crate.
#![deny(missing_docs)]

pub mod classify;
pub mod glob;
pub mod heap_profile;
pub mod podinfo;
pub mod priority;
pub mod throttle;

pub use classify::{Classifier, QosClass, QosPriorities, Rule};
pub use heap_profile::{DumpWatch, HeapProfile, HeapProfileConfig};
pub use priority::{Choice, Granularity, PriorityKill, PriorityKillConfig};
pub use throttle::{Throttle, ThrottleConfig};
