//! `Cgroup::from_cgroups_rs` (feature `cgroups-rs`).
#![cfg(feature = "cgroups-rs")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use oomkit::Cgroup;

#[test]
fn opens_v2_handles_and_refuses_v1() {
    let hier = cgroups_rs::fs::hierarchies::auto();
    let v2 = hier.v2();
    let cg = cgroups_rs::fs::Cgroup::load(hier, "");
    match Cgroup::from_cgroups_rs(&cg) {
        Ok(c) => {
            assert!(v2, "a v1 handle must be refused");
            assert!(
                c.path()
                    .starts_with(oomkit::cgroup::CgroupFs::discover().unwrap().mount_point())
            );
        }
        Err(e) => {
            assert!(!v2 || e.to_string().contains("cgroup"), "{e}");
            if !v2 {
                assert!(e.to_string().contains("cgroup v1"), "{e}");
            }
        }
    }
}
