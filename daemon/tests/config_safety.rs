//! Issue 10: configs that would let a tenant steer the killer, or make the
//! daemon kill by mistake, are refused (errors) or flagged (warnings), each
//! with the file and line of the value.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use oomkit::engine::{CgroupMeta, Class};
use oomkit_daemon::config::{Config, ConfigErrors};

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
        delegated: false,
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

const HANDLER: &str = "[handler]\nkind = \"priority-kill\"\n";

/// Defect 10: huge `max_cgroups`/`max_processes` are refused with their
/// line instead of aborting `check-config` (and the daemon on SIGHUP).
#[test]
fn sizes_are_bounded_with_file_and_line() {
    for key in ["max_cgroups", "max_processes"] {
        let text = format!("[engine]\n{key} = 100000000000\n{HANDLER}");
        let msg = errors(&text).to_string();
        assert!(
            msg.starts_with(&format!(
                "/etc/oomkit.toml:2:1: key `engine.{key}`: must be at most"
            )),
            "{msg}"
        );
    }
    let text = format!("{HANDLER}[handler.throttle]\nmax_throttled = 100000000000\n");
    let msg = errors(&text).to_string();
    assert!(
        msg.contains("key `handler.throttle.max_throttled`"),
        "{msg}"
    );
    // check-config gives the error instead of dying.
    let dir = std::env::temp_dir().join(format!("oomkit-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("big.toml");
    std::fs::write(
        &f,
        format!("[engine]\nmax_cgroups = 100000000000\n{HANDLER}"),
    )
    .unwrap();
    let e = oomkit_daemon::daemon::check_config(&f).unwrap_err();
    assert!(
        e.to_string().contains(":2:1: key `engine.max_cgroups`"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Defect 10: building a handler for a config that skipped validation
/// reports the failed reservation instead of aborting the process.
#[test]
fn handler_sizing_failure_is_an_error_not_an_abort() {
    for kind in ["priority-kill", "throttle", "heap-profile"] {
        let text = format!(
            "[daemon]\ndiagnostics_dir = \"/var/lib/oomkit/diag\"\n[handler]\nkind = \"{kind}\"\n"
        );
        let mut c = Config::parse(Path::new("x"), &text).unwrap().config;
        c.engine.max_cgroups = 1 << 44;
        if let Some(t) = c.handler.throttle.as_mut() {
            t.max_throttled = 1 << 44;
        }
        let e = c
            .build_handler()
            .err()
            .unwrap_or_else(|| panic!("{kind}: built"));
        assert!(e.contains("max_cgroups"), "{kind}: {e}");
    }
}

/// Defect 13: every dangerous value gives a file:line error or warning.
#[test]
fn dangerous_values_are_errors_or_warnings_with_lines() {
    // (text before [handler], extra text after it, key, error?, substring)
    let cases: &[(&str, &str, &str, bool, &str)] = &[
        (
            "[engine]\nfull_stall_threshold = 0.0\n",
            "",
            "engine.full_stall_threshold",
            true,
            "greater than 0",
        ),
        (
            "[engine]\nresolved_usage_ratio = 0.0\n",
            "",
            "engine.resolved_usage_ratio",
            true,
            "greater than 0",
        ),
        (
            "[engine]\nmemory_back_ratio = 0.0\n",
            "",
            "engine.memory_back_ratio",
            false,
            "any victim",
        ),
        (
            "[engine]\nstall_sustain_ms = 0\n",
            "",
            "engine.stall_sustain_ms",
            false,
            "progress",
        ),
        (
            "[engine]\nkill_deadline_ms = 1\n",
            "",
            "engine.kill_deadline_ms",
            true,
            "at least 100",
        ),
        (
            "",
            "[handler.priority_kill]\nkill_deadline_ms = 1\n",
            "handler.priority_kill.kill_deadline_ms",
            true,
            "at least 100",
        ),
        (
            "",
            "[handler.throttle]\nthaw_below_avg10 = -1.0\n",
            "handler.throttle.thaw_below_avg10",
            true,
            "between 0 and 100",
        ),
        (
            "[daemon]\nroot = \"/\"\n",
            "",
            "daemon.root",
            true,
            "whole filesystem",
        ),
        (
            "[daemon]\nroot = \"/sys/fs/cgroup/../../etc\"\n",
            "",
            "daemon.root",
            true,
            "`..`",
        ),
        (
            "[daemon]\nroot = \"/mnt/cg\"\n",
            "",
            "daemon.root",
            false,
            "/sys/fs/cgroup",
        ),
        (
            "[reserve]\ncgroup_name = \"..\"\n",
            "",
            "reserve.cgroup_name",
            true,
            "`..`",
        ),
        (
            "[reserve]\ncgroup_name = \".\"\n",
            "",
            "reserve.cgroup_name",
            true,
            "`.`",
        ),
        (
            "",
            "[[handler.rules]]\nglob = \"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod*batch*.slice\"\npriority = -300\n",
            "handler.rules[0].glob",
            false,
            "can never match",
        ),
        (
            "",
            "[[handler.rules]]\nglob = \"/kubepods/besteffort/pod*batch*\"\npriority = -300\n",
            "handler.rules[0].glob",
            false,
            "can never match",
        ),
        (
            "",
            "[[handler.rules]]\nglob = \"/**\"\nprotected = true\n",
            "handler.rules[0]",
            false,
            "every cgroup",
        ),
        (
            "[daemon]\nincident_dir = \"incidents\"\n",
            "",
            "daemon.incident_dir",
            true,
            "absolute",
        ),
        (
            "[daemon]\ndiagnostics_dir = \"diag\"\n",
            "[handler.heap_profile]\n",
            "daemon.diagnostics_dir",
            true,
            "absolute",
        ),
        (
            "[daemon]\ndiagnostics_dir = \"/d\"\n",
            "[handler.heap_profile]\nsignal = \"SIGTERM\"\n",
            "handler.heap_profile.signal",
            false,
            "terminates",
        ),
        (
            "[daemon]\ndiagnostics_dir = \"/d\"\n",
            "[handler.heap_profile]\nsignal = \"SIGQUIT\"\n",
            "handler.heap_profile.signal",
            true,
            "core dump",
        ),
        (
            "[daemon]\ndiagnostics_dir = \"/d\"\n",
            "[handler.heap_profile]\ncomms = [\"java\"]\n",
            "handler.heap_profile.comms",
            false,
            "any process",
        ),
    ];
    for (pre, post, key, is_error, want) in cases {
        let kind = if post.contains("heap_profile") {
            "heap-profile"
        } else if post.contains("throttle") {
            "throttle"
        } else {
            "priority-kill"
        };
        let text = format!("{pre}[handler]\nkind = \"{kind}\"\n{post}");
        let line = text
            .lines()
            .position(|l| {
                let leaf = key.rsplit('.').next().unwrap();
                if leaf.ends_with(']') {
                    l == "[[handler.rules]]"
                } else {
                    l.starts_with(&format!("{leaf} ="))
                }
            })
            .map(|i| i + 1)
            .unwrap();
        let prefix = format!("x.toml:{line}:1: key `{key}`: ");
        match Config::parse(Path::new("x.toml"), &text) {
            Err(e) => {
                assert!(
                    *is_error,
                    "{key}: an error where a warning was expected: {e}"
                );
                let m =
                    e.0.iter()
                        .map(ToString::to_string)
                        .find(|m| m.starts_with(&prefix))
                        .unwrap_or_else(|| panic!("{key}: want `{prefix}…`, got: {e}"));
                assert!(m.contains(want), "{key}: want `{want}` in `{m}`");
            }
            Ok(l) => {
                assert!(!*is_error, "{key}: accepted: warnings {:?}", l.warnings);
                let m = l
                    .warnings
                    .iter()
                    .find(|m| m.starts_with(&prefix))
                    .unwrap_or_else(|| {
                        panic!("{key}: want warning `{prefix}…`, got {:?}", l.warnings)
                    });
                assert!(m.contains(want), "{key}: want `{want}` in `{m}`");
            }
        }
    }
}

/// Defect 13: a file without `[handler]` says so, with a hint.
#[test]
fn missing_handler_section_is_named() {
    let msg = errors("[daemon]\nroot = \"/sys/fs/cgroup\"\n").to_string();
    assert!(msg.contains("no [handler] section"), "{msg}");
    assert!(msg.contains("kind = \"priority-kill\""), "{msg}");
}
