//! Pod UID and container ID read off a cgroup path, for log lines and
//! incident views: an operator searching `kubectl get pods -A -o yaml` for a
//! killed process needs the pod's UID, and the runtime's container ID.
//!
//! Both cgroup drivers are understood:
//! - systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID>.slice/cri-containerd-<ID>.scope`
//!   (the UID's dashes written as underscores; Guaranteed pods sit directly under `kubepods.slice`);
//! - cgroupfs: `/kubepods/burstable/pod<UID>/<ID>`.

use std::path::Path;

/// What a cgroup path says about the pod and container it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// The pod's UID (with dashes), if the path is inside a pod.
    pub pod_uid: Option<String>,
    /// The container's ID (hex), if the path is a container's cgroup or inside one.
    pub container_id: Option<String>,
}

fn is_hex_id(s: &str) -> bool {
    s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn pod_uid(component: &str) -> Option<String> {
    let uid = if let Some(rest) = component.strip_suffix(".slice") {
        // kubepods-pod<UID>.slice, kubepods-<qos>-pod<UID>.slice
        let at = rest.rfind("-pod")?;
        rest[at + 4..].replace('_', "-")
    } else {
        component.strip_prefix("pod")?.to_string()
    };
    let ok = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    ok.then_some(uid)
}

fn container_id(component: &str, parent_is_pod: bool) -> Option<String> {
    if let Some(rest) = component.strip_suffix(".scope") {
        let id = ["cri-containerd-", "crio-", "docker-", "cri-dockerd-"]
            .iter()
            .find_map(|p| rest.strip_prefix(p))?;
        return is_hex_id(id).then(|| id.to_string());
    }
    (parent_is_pod && is_hex_id(component)).then(|| component.to_string())
}

/// Reads the pod UID and container ID off a hierarchy path.
pub fn pod_info(path: &Path) -> PodInfo {
    let mut info = PodInfo::default();
    let mut in_kubepods = false;
    let mut parent_is_pod = false;
    for c in path.iter().filter_map(|c| c.to_str()) {
        if c.starts_with("kubepods") {
            in_kubepods = true;
        }
        if !in_kubepods {
            continue;
        }
        if info.pod_uid.is_none() {
            if let Some(uid) = pod_uid(c) {
                info.pod_uid = Some(uid);
                parent_is_pod = true;
                continue;
            }
        }
        if info.pod_uid.is_some() && info.container_id.is_none() {
            info.container_id = container_id(c, parent_is_pod);
        }
        parent_is_pod = false;
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f4e2c1a-9b7d-4c3e-8f21-6a5b4c3d2e1f";
    const ID: &str = "4b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4";

    #[test]
    fn systemd_driver_paths() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        let i = pod_info(Path::new(&p));
        assert_eq!(i.pod_uid.as_deref(), Some(UID));
        assert_eq!(i.container_id.as_deref(), Some(ID));
        let g = format!(
            "/kubepods.slice/kubepods-pod{}.slice",
            UID.replace('-', "_")
        );
        assert_eq!(pod_info(Path::new(&g)).pod_uid.as_deref(), Some(UID));
        assert_eq!(pod_info(Path::new(&g)).container_id, None);
    }

    #[test]
    fn cgroupfs_driver_paths() {
        let p = format!("/kubepods/besteffort/pod{UID}/{ID}");
        let i = pod_info(Path::new(&p));
        assert_eq!(i.pod_uid.as_deref(), Some(UID));
        assert_eq!(i.container_id.as_deref(), Some(ID));
    }

    #[test]
    fn other_paths_have_neither() {
        for p in [
            "/system.slice/kubelet.service",
            "/user.slice/user-1000.slice/session-2.scope",
            "/kubepods.slice/kubepods-besteffort.slice",
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podnot_a_uid.slice",
            "/system.slice/docker-abc.scope",
        ] {
            assert_eq!(pod_info(Path::new(p)), PodInfo::default(), "{p}");
        }
    }
}
