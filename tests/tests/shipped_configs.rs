//! The shipped example configs drive the real `KernelHost` over a synthetic
//! Kubernetes node (systemd cgroup driver) and pick the victims their
//! comments promise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use oomkit::cgroup::{CgroupFs, MemoryEvents};
use oomkit::engine::{Action, Engine, KernelHost, Outcome, Trigger, XattrTrust};
use oomkit_daemon::config::Config;
use oomkit_tests::SyntheticTree;

const BATCH: &str = "/batch.slice/job1.slice";
const WEB: &str = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podweb.slice";
const BURST: &str = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poddb.slice";
const GUAR: &str = "/kubepods.slice/kubepods-podgu.slice";
const KUBELET: &str = "/system.slice/kubelet.service";

fn config(name: &str) -> Config {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../daemon/configs")
        .join(name);
    Config::load(&file).unwrap_or_else(|e| panic!("{e}")).config
}

/// The victim cgroup the configured handler picks on this node (dry run).
fn victim(name: &str, batch_mib: u64) -> (Outcome, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let t = SyntheticTree::new(tmp.path());
    t.cgroup(KUBELET, 3000).unwrap();
    t.cgroup(&format!("{BATCH}/cri-a.scope"), batch_mib)
        .unwrap();
    t.cgroup(&format!("{WEB}/cri-b.scope"), 900).unwrap();
    t.cgroup(&format!("{BURST}/cri-c.scope"), 1500).unwrap();
    t.cgroup(&format!("{GUAR}/cri-d.scope"), 2500).unwrap();
    let cfg = config(name);
    let mut engine_cfg = cfg.engine_config();
    engine_cfg.dry_run = true;
    let fs = CgroupFs::from_dir_unchecked(tmp.path());
    let mut host = KernelHost::new(fs, XattrTrust::TrustedOnly, 64, 64);
    host.set_own_cgroup(Some("/system.slice/oomkit.service".into()));
    let handler = cfg.build_handler().unwrap();
    let mut engine = Engine::new(engine_cfg, host, handler, Path::new("/")).unwrap();
    for (pod, ctr) in [
        (BATCH, "cri-a.scope"),
        (WEB, "cri-b.scope"),
        (BURST, "cri-c.scope"),
        (GUAR, "cri-d.scope"),
    ] {
        engine.add_cgroup(&Path::new(pod).join(ctr)).unwrap();
    }
    engine.add_cgroup(Path::new(KUBELET)).unwrap();
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
    let ep = engine
        .take_finished()
        .expect("a dry run ends the episode at once");
    let step = ep.plan.steps().next().copied().expect("a plan");
    assert!(step.action.is_kill(), "{:?}", step.action);
    let cg = match step.action {
        Action::KillTree { cgroup }
        | Action::KillCgroup { cgroup }
        | Action::KillProcess { cgroup, .. } => cgroup,
        other => panic!("unexpected {other:?}"),
    };
    (
        ep.outcome.unwrap(),
        engine.tree().path(cg).unwrap().to_path_buf(),
    )
}

#[test]
fn priority_kill_config_takes_the_batch_pod_first() {
    let (outcome, path) = victim("priority-kill.toml", 100);
    assert_eq!(outcome, Outcome::DryRun);
    assert!(
        path.starts_with(BATCH),
        "the batch rule (-300) beats BestEffort (-200): {path:?}"
    );
}

#[test]
fn priority_kill_config_passes_over_a_tiny_victim() {
    // Under `min_victim_bytes` (64 MiB) the batch pod is passed over for the
    // next tier's sizeable pod; the kubelet (protected, largest) never.
    let (_, path) = victim("priority-kill.toml", 10);
    assert!(path.starts_with(WEB), "{path:?}");
}
