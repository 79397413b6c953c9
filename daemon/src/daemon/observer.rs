//! After each turn of the loop: metrics, one log line per victim, incident records.

use super::*;

/// What the daemon does after each turn of the loop, once the engine is
/// done with it: metrics, one log line per victim, incident records.
pub(super) struct Observer {
    pub(super) metrics: Arc<Metrics>,
    pub(super) incidents: Option<IncidentWriter>,
    pub(super) post_kill: Option<PostKill>,
    pub(super) reserve_degraded: bool,
}

impl Observer {
    pub(super) fn after_turn(&self, runner: &Runner, finished: &[Episode]) {
        let engine = runner.engine();
        let dry_run = engine.config().dry_run;
        for ep in finished {
            self.metrics.episode(ep);
            log_victims(ep, engine.tree());
            if !ep.is_action() {
                continue;
            }
            let inc = Incident::from_episode(ep, engine.tree(), engine.handler_name(), dry_run);
            let killed = !inc.victims.is_empty() || !inc.would_kill.is_empty();
            if let (true, Some(h)) = (killed, &self.post_kill) {
                h.submit(inc.clone());
            }
            if let Some(w) = &self.incidents {
                let scope = ep.scope.and_then(|id| engine.host().cgroup_shared(id));
                w.submit(inc, scope, ep.timings.event_seen);
            }
        }
        let s = runner.stats();
        self.metrics
            .totals(s.kernel_oom_kills, runner.watchdog_fired());
        self.metrics
            .gauges(engine.tree().len(), self.reserve_degraded);
    }
}

/// One line per victim (or, in a dry run, per kill that would have run):
/// pid, comm, cgroup, bytes, tier, reason, and the pod UID and container ID
/// where the cgroup path shows them.
pub fn log_victims(ep: &Episode, tree: &Tree) {
    let comm_of = |pid: Option<i32>| {
        pid.and_then(|p| ep.top_processes.iter().flatten().find(|s| s.pid == p))
            .map(|s| s.comm().to_owned())
    };
    let line = |pid: Option<i32>, id: CgroupId, bytes: Option<u64>, what: &str| {
        let path = tree.path(id);
        let pod = path.map(pod_info).unwrap_or_default();
        tracing::warn!(
            episode = ep.id,
            pid,
            comm = comm_of(pid).as_deref(),
            cgroup = %path.map(|p| p.display().to_string()).unwrap_or_default(),
            bytes,
            tier = tree.class(id).map(|c| c.priority),
            reason = ep.plan.reason(),
            trigger = crate::metrics::reason_label(&ep.trigger),
            pod_uid = pod.pod_uid.as_deref(),
            container_id = pod.container_id.as_deref(),
            "{what}"
        );
    };
    if ep.outcome == Some(Outcome::DryRun) {
        for s in ep.plan.steps().filter(|s| s.action.is_kill()) {
            let pid = match s.action {
                oomkit::engine::Action::KillProcess { pid, .. } => Some(pid),
                _ => None,
            };
            line(pid, s.action.cgroup(), None, "dry run: would kill");
        }
        return;
    }
    for v in ep.victims.iter().flatten() {
        let pid = match v.victim {
            Victim::Process { pid, .. } => Some(pid),
            _ => None,
        };
        line(pid, v.victim.cgroup(), Some(v.footprint), "killed");
    }
}
