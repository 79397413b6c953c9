//! Issue 10: configs that would let a tenant steer the killer, or make the
//! daemon kill by mistake, are refused (errors) or flagged (warnings), each
//! with the file and line of the value.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use oomkit::engine::{CgroupMeta, Class};
use oomkit_handlers::config::{Config, ConfigErrors};

fn errors(text: &str) -> ConfigErrors {
    Config::parse(Path::new("/etc/oomkit.toml"), text).unwrap_err()
}

fn meta(path: &str) -> CgroupMeta<'_> {
    CgroupMeta {
        path: Path::new(path),
        depth: 3,
        xattr_priority: None,
        xattr_protected: false,
        parent_class: Some(Class::default()),
    }
}

/// Defect 1: QoS comes only from below the configured kubelet roots.
#[test]
fn qos_roots_are_configurable_and_checked() {
    let text = "[handler]\nkind = \"priority-kill\"\n[handler.qos]\nroots = [\"/kubelet.slice/kubelet-kubepods.slice\"]\n";
    let c = Config::parse(Path::new("x"), text).unwrap().config;
    let mut cl = c.classifier().unwrap();
    let custom = "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod1.slice";
    assert_eq!(cl.classify(&meta(custom)).priority, 100);
    assert_eq!(cl.classify(&meta("/kubepods/pod1")).priority, 0);
    // Defaults: the kubelet's own roots, and nothing elsewhere.
    let c = Config::parse(Path::new("x"), "[handler]\nkind = \"priority-kill\"\n")
        .unwrap()
        .config;
    let mut cl = c.classifier().unwrap();
    assert_eq!(
        cl.classify(&meta("/kubepods.slice/kubepods-pod1.slice"))
            .priority,
        100
    );
    assert_eq!(cl.classify(&meta("/user.slice/kubepods/pod1")).priority, 0);
    // A relative or `..` root is refused with its line.
    let msg =
        errors("[handler]\nkind = \"priority-kill\"\n[handler.qos]\nroots = [\"kubepods\"]\n")
            .to_string();
    assert!(
        msg.starts_with("/etc/oomkit.toml:4:1: key `handler.qos.roots`"),
        "{msg}"
    );
    let msg = errors(
        "[handler]\nkind = \"priority-kill\"\n[handler.qos]\nroots = [\"/a/../kubepods\"]\n",
    )
    .to_string();
    assert!(msg.contains("handler.qos.roots"), "{msg}");
}
