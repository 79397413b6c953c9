//! The example configs for a Kubernetes node (`deploy/kubernetes/oomkit.toml`) and a desktop
//! (`daemon/configs/desktop.toml`) on the real `KernelHost` over synthetic trees named as the
//! kubelet and systemd name them: pod slices by UID, applications by scope. Each must pick the
//! victim its comments promise. (The desktop's choice depends on its rules matching the scope
//! names; the node's BestEffort rule agrees with the QoS tier, so that test shows the pick, and
//! the rule's glob is checked against the UID-named slice directly.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use oomkit::cgroup::{CgroupFs, MemoryEvents};
use oomkit::engine::{Action, CgroupMeta, Engine, KernelHost, Trigger, XattrTrust};
use oomkit_daemon::config::Config;
use oomkit_handlers::classify::Source;
use oomkit_tests::SyntheticTree;

/// The cgroup the config at `file` (relative to the repository) kills first among `cgroups`
/// (hierarchy path, MiB) in a dry run.
fn victim(file: &str, cgroups: &[(&str, u64)]) -> PathBuf {
    let tmp = tempfile::tempdir().unwrap();
    let t = SyntheticTree::new(tmp.path());
    for (p, mib) in cgroups {
        t.cgroup(p, *mib).unwrap();
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
    let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}")).config;
    let mut engine_cfg = cfg.engine_config();
    engine_cfg.dry_run = true;
    let fs = CgroupFs::from_dir_unchecked(tmp.path());
    let mut host = KernelHost::new(fs, XattrTrust::TrustedOnly, 64, 64);
    host.set_own_cgroup(Some("/system.slice/oomkit.service".into()));
    let mut engine = Engine::new(
        engine_cfg,
        host,
        cfg.build_handler().unwrap(),
        Path::new("/"),
    )
    .unwrap();
    for (p, _) in cgroups {
        engine.add_cgroup(Path::new(p)).unwrap();
    }
    let root = engine.root().unwrap();
    let delta = MemoryEvents {
        max: Some(1),
        oom: Some(1),
        ..MemoryEvents::default()
    };
    engine.on_event(
        Trigger::MemoryEvents {
            cgroup: root,
            delta,
        },
        std::time::Instant::now(),
    );
    let ep = engine.take_finished().expect("a dry run ends at once");
    let step = ep.plan.steps().next().copied().expect("a plan");
    let cg = match step.action {
        Action::KillTree { cgroup }
        | Action::KillCgroup { cgroup }
        | Action::KillProcess { cgroup, .. } => cgroup,
        other => panic!("unexpected {other:?}"),
    };
    engine.tree().path(cg).unwrap().to_path_buf()
}

const UID: &str = "0f4e2c1a_9b7d_4c3e_8f21_6a5b4c3d2e1f";

#[test]
fn kubernetes_node_takes_a_besteffort_pod_by_its_uid_named_slice() {
    let be = format!(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID}.slice/cri-containerd-aa.scope"
    );
    let burst = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_0000_1111_2222_333344445555.slice/cri-containerd-bb.scope";
    let got = victim(
        "deploy/kubernetes/oomkit.toml",
        &[
            ("/system.slice/kubelet.service", 3000),
            (&be, 200),
            (burst, 1500),
        ],
    );
    assert!(got.starts_with(Path::new(&be).parent().unwrap()), "{got:?}");
    let cfg = Config::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/oomkit.toml"),
    )
    .unwrap()
    .config;
    let pod = Path::new(&be).parent().unwrap();
    let (class, source) = cfg.classifier().unwrap().classify_with_source(&CgroupMeta {
        path: pod,
        depth: 3,
        xattr_priority: None,
        xattr_protected: false,
        parent_class: None,
        delegated: false,
    });
    assert_eq!(class.priority, -300, "{pod:?}: {source:?}");
    assert!(matches!(source, Source::Rule(_)), "{source:?}");
}

#[test]
fn desktop_kills_the_application_scope_not_the_session() {
    let user = "/user.slice/user-1000.slice";
    let got = victim(
        "daemon/configs/desktop.toml",
        &[
            (&format!("{user}/session-2.scope"), 2000),
            (&format!("{user}/user@1000.service/init.scope"), 50),
            (
                &format!("{user}/user@1000.service/session.slice/org.gnome.Shell@wayland.service"),
                1500,
            ),
            (
                &format!("{user}/user@1000.service/app.slice/app-firefox-1234.scope"),
                900,
            ),
            (
                &format!("{user}/user@1000.service/app.slice/app-editor-99.scope"),
                300,
            ),
        ],
    );
    assert_eq!(
        got,
        Path::new(&format!(
            "{user}/user@1000.service/app.slice/app-firefox-1234.scope"
        )),
        "the largest application, not the session (2000 MiB) or the shell (1500 MiB)"
    );
}

#[test]
fn systemd_host_takes_a_transient_unit_before_a_larger_session_and_spares_the_plumbing() {
    let got = victim(
        "daemon/configs/systemd-host.toml",
        &[
            ("/system.slice/systemd-journald.service", 3000),
            ("/system.slice/nginx.service", 1200),
            ("/user.slice/user-1000.slice/session-2.scope", 900),
            ("/system.slice/run-r1234.service", 300),
        ],
    );
    assert_eq!(got, Path::new("/system.slice/run-r1234.service"));
}
