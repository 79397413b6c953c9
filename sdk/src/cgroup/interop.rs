//! Opening an oomkit [`Cgroup`] from a `cgroups-rs` handle (feature
//! `cgroups-rs`), for runtimes such as Kata that already manage cgroups with
//! that crate. `cgroups-rs` stays the runtime's tool for creating and
//! configuring cgroups; oomkit reads through its own directory fd because
//! `cgroups-rs` has no `memory.events`, `memory.oom.group` or pressure API
//! and reports unreadable values as 0.

use std::path::Path;

use super::{Cgroup, CgroupFs};
use crate::error::{Error, Result};

impl Cgroup {
    /// Opens the cgroup a `cgroups-rs` handle names. It must be on the
    /// unified (v2) hierarchy.
    pub fn from_cgroups_rs(cg: &cgroups_rs::fs::Cgroup) -> Result<Cgroup> {
        if !cg.v2() {
            return Err(Error::InvalidPath {
                path: Path::new(cg.path()).to_owned(),
                reason: "the cgroups-rs handle is on cgroup v1; oomkit needs the unified hierarchy",
            });
        }
        let fs = CgroupFs::discover()?;
        let rel = cg.path().trim_start_matches('/');
        fs.open(fs.mount_point().join(rel))
    }
}
