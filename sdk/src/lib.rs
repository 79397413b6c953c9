//! # oomkit — userspace out-of-memory handling on cgroup v2
//!
//! The kernel's OOM killer acts late (only once reclaim has failed outright)
//! and knows nothing of priorities: which container is a batch job, which is
//! the database, which process would lose an hour of work. oomkit lets a
//! userspace handler act *before* the kernel has to, with the policy only
//! userspace can know, while leaving the kernel OOM killer in place as the
//! fallback when userspace is late or dead.
//!
//! The crate is layered, data flowing one way:
//!
//! 1. [`cgroup`] and [`proc`]: typed access to the kernel files
//!    (`memory.events`, `memory.stat`, `memory.pressure`, `/proc/PID/status`
//!    …), read through a directory fd so a cgroup removed and recreated under
//!    the same name is never mixed up. Parsers are pure functions over bytes.
//! 2. [`events`]: pollable event sources (`memory.events` via `POLLPRI`, PSI
//!    triggers, `cgroup.events`, directory watches) multiplexed by one
//!    [`events::Watcher`] whose fd a runtime can put in its own reactor.
//! 3. [`kill`] and [`reserve`]: pidfd-based kills with `process_mrelease`,
//!    `cgroup.kill` with a freeze-and-signal fallback, and the primitives that
//!    keep a handler alive when the machine has no memory left.
//! 4. [`probe`]: which of the above this kernel offers.
//!
//! Race outcomes that are part of normal life (a cgroup vanishes, a process
//! exits) are distinct [`Error`] variants ([`Error::is_gone`]), never panics.
//!
//! All `unsafe` code lives in one private `sys` module; everything else is
//! safe Rust.
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod cgroup;
pub mod engine;
pub mod error;
pub mod events;
mod fs;
pub mod kill;
pub mod probe;
pub mod proc;
pub mod reserve;
#[allow(unsafe_code)]
mod sys;
mod util;

pub use cgroup::Cgroup;
pub use error::{Error, Op, ParseError, ParseErrorKind, Result};
