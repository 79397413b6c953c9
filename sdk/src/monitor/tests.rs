//! The monitor on a synthetic tree (plain files stand in for the kernel's)
//! with a scripted kernel log.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::cgroup::CgroupFs;

const EV0: &str = "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n";

struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    /// `/pod/ctr` under a synthetic root, every file at zero.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for cg in ["pod", "pod/ctr"] {
            let p = dir.path().join(cg);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("memory.events"), EV0).unwrap();
            std::fs::write(p.join("memory.events.local"), EV0).unwrap();
            std::fs::write(p.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
            std::fs::write(p.join("cgroup.procs"), "").unwrap();
        }
        Tree { dir }
    }

    fn set(&self, cg: &str, file: &str, oom: u64, oom_kill: u64, max: u64) {
        std::fs::write(
            self.dir.path().join(cg).join(file),
            format!("low 0\nhigh 0\nmax {max}\noom {oom}\noom_kill {oom_kill}\noom_group_kill 0\n"),
        )
        .unwrap();
    }

    fn unpopulate(&self) {
        std::fs::write(
            self.dir.path().join("pod/ctr/cgroup.events"),
            "populated 0\nfrozen 0\n",
        )
        .unwrap();
    }

    fn monitor(&self, grace: Duration) -> OomMonitor {
        let fs = CgroupFs::from_dir_unchecked(self.dir.path());
        let ctr = fs.open(self.dir.path().join("pod/ctr")).unwrap();
        let mut m = OomMonitor::open_unregistered(
            &ctr,
            MonitorOptions {
                boundary: None,
                kernel_log: false,
                victim_grace: grace,
            },
        )
        .unwrap();
        *m.log_mut() = KernelLog::scripted();
        m
    }
}

fn kmsg_kill(seq: u64, memcg: &str, oom_memcg: &str, pid: i32, comm: &str) -> [String; 2] {
    [
        format!(
            "6,{seq},1000,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg={oom_memcg},task_memcg={memcg},task={comm},pid={pid},uid=0\n"
        ),
        format!(
            "3,{},1001,-;Memory cgroup out of memory: Killed process {pid} ({comm}) total-vm:1kB, anon-rss:1kB\n",
            seq + 1
        ),
    ]
}

#[test]
fn own_limit_waits_for_the_victim_line_then_reports_container() {
    let t = Tree::new();
    let mut m = t.monitor(Duration::from_secs(60));
    assert_eq!(m.process().unwrap(), vec![]);
    // The kernel counts first (container's own limit: oom local and
    // hierarchical, oom_kill), logs after.
    t.set("pod/ctr", "memory.events", 1, 1, 3);
    t.set("pod/ctr", "memory.events.local", 1, 1, 3);
    t.set("pod", "memory.events", 1, 1, 3);
    assert_eq!(
        m.process().unwrap(),
        vec![],
        "reported before the victim was logged"
    );
    assert!(m.next_timeout().is_some());
    for l in kmsg_kill(10, "/pod/ctr", "/pod/ctr", 42, "hog") {
        m.log_mut().push_script(&l);
    }
    let evs = m.process().unwrap();
    let [MonitorEvent::Oom(r)] = evs.as_slice() else {
        panic!("{evs:?}")
    };
    assert_eq!(r.level, Level::Container);
    assert_eq!(r.cgroup, Path::new("/pod/ctr"));
    assert_eq!(
        (r.rose.oom, r.rose.oom_kill, r.rose.max),
        (Some(1), Some(1), Some(3))
    );
    assert_eq!(r.victims.len(), 1);
    assert_eq!((r.victims[0].pid, r.victims[0].comm.as_str()), (42, "hog"));
    assert_eq!(r.victims_status, VictimsStatus::Complete);
    assert!(r.to_string().contains("killed 42 (hog)"), "{r}");
    assert_eq!(m.next_timeout(), None);
}

#[test]
fn pod_limit_is_reported_although_the_containers_oom_did_not_rise() {
    let t = Tree::new();
    let mut m = t.monitor(Duration::from_secs(60));
    // The pod's limit: oom at the pod only; oom_kill at the victim's cgroup and up.
    t.set("pod", "memory.events.local", 1, 0, 1);
    t.set("pod", "memory.events", 1, 1, 1);
    t.set("pod/ctr", "memory.events", 0, 1, 0);
    // No kernel log line (say, another container's victim was logged):
    // the grace period ends the wait.
    let evs = m.process().unwrap();
    assert_eq!(evs, vec![]);
    let mut m2 = t.monitor(Duration::ZERO);
    // A fresh monitor has these as its baseline; raise again.
    t.set("pod", "memory.events.local", 2, 0, 2);
    t.set("pod", "memory.events", 2, 2, 2);
    t.set("pod/ctr", "memory.events", 0, 2, 0);
    let evs = m2.process().unwrap();
    let [MonitorEvent::Oom(r)] = evs.as_slice() else {
        panic!("{evs:?}")
    };
    assert_eq!(
        r.level,
        Level::Pod {
            path: "/pod".into()
        }
    );
    assert_eq!(r.victims_status, VictimsStatus::Incomplete { missing: 1 });
    // The first monitor's grace is long: it saw both kills and waits for
    // two victims; the kernel log brings them.
    for l in kmsg_kill(20, "/pod/ctr", "/pod", 7, "hog") {
        m.log_mut().push_script(&l);
    }
    assert_eq!(m.process().unwrap(), vec![], "one of two victims logged");
    for l in kmsg_kill(22, "/pod/ctr", "/pod", 8, "hog") {
        m.log_mut().push_script(&l);
    }
    let evs = m.process().unwrap();
    let [MonitorEvent::Oom(r)] = evs.as_slice() else {
        panic!("{evs:?}")
    };
    assert_eq!(
        r.level,
        Level::Pod {
            path: "/pod".into()
        }
    );
    assert_eq!(r.rose.oom, Some(0));
    assert_eq!(r.rose.oom_kill, Some(2));
}

#[test]
fn a_sibling_containers_victim_is_not_ours() {
    let t = Tree::new();
    let mut m = t.monitor(Duration::from_secs(60));
    for l in kmsg_kill(30, "/pod/other", "/pod", 9, "x") {
        m.log_mut().push_script(&l);
    }
    for l in kmsg_kill(32, "/pod/ctr2", "/pod", 10, "y") {
        m.log_mut().push_script(&l);
    }
    assert_eq!(m.process().unwrap(), vec![]);
    assert_eq!(m.next_timeout(), None);
}

#[test]
fn final_counters_on_unpopulated_and_gone_says_so() {
    let t = Tree::new();
    let mut m = t.monitor(Duration::from_secs(60));
    t.set("pod/ctr", "memory.events", 1, 1, 1);
    t.set("pod/ctr", "memory.events.local", 1, 1, 1);
    t.unpopulate();
    // Unpopulated flushes the waiting report (victims missing) and gives
    // the final counters, read after the populated change.
    let evs = m.process().unwrap();
    assert_eq!(evs.len(), 2, "{evs:?}");
    let MonitorEvent::Oom(r) = &evs[0] else {
        panic!("{evs:?}")
    };
    assert_eq!(r.victims_status, VictimsStatus::Incomplete { missing: 1 });
    let MonitorEvent::Unpopulated(f) = &evs[1] else {
        panic!("{evs:?}")
    };
    assert_eq!(f.oom_kills(), Some(1));
    assert!(matches!(f.counters, FinalCounters::Read { .. }));
    // Nothing more afterwards.
    assert_eq!(m.process().unwrap(), vec![]);

    // Removed before the final read: derived from the pod's counters (a
    // sibling with its own events is subtracted).
    let t = Tree::new();
    std::fs::create_dir(t.dir.path().join("pod/sib")).unwrap();
    t.set("pod/sib", "memory.events", 0, 2, 3);
    t.set("pod", "memory.events", 0, 2, 3);
    let mut m = t.monitor(Duration::from_secs(60));
    t.set("pod/ctr", "memory.events", 1, 0, 5);
    assert_eq!(m.process().unwrap(), vec![]);
    // The container's last events: oom_kill +1 and max +2, which its own
    // file no longer shows once removed; the sibling also moved.
    t.set("pod/sib", "memory.events", 0, 3, 4);
    t.set("pod", "memory.events", 1, 4, 11);
    std::fs::remove_dir_all(t.dir.path().join("pod/ctr")).unwrap();
    m.gone = true;
    let (_, fin) = m.finish().unwrap();
    let FinalCounters::Derived {
        events,
        from,
        last_seen,
        ..
    } = fin.counters.clone()
    else {
        panic!("{fin:?}")
    };
    assert_eq!(
        (events.oom, events.oom_kill, events.max),
        (Some(1), Some(1), Some(7))
    );
    assert_eq!(last_seen.oom_kill, Some(0));
    assert_eq!(from, Path::new("/pod"));
    assert_eq!(fin.oom_kills(), Some(1));
    assert!(fin.to_string().contains("derived from /pod"), "{fin}");

    // A sibling removed meanwhile: no derivation, Gone with the last
    // counters seen, never a silent zero.
    let t = Tree::new();
    std::fs::create_dir(t.dir.path().join("pod/sib")).unwrap();
    t.set("pod/sib", "memory.events", 0, 0, 0);
    let mut m = t.monitor(Duration::from_secs(60));
    t.set("pod/ctr", "memory.events", 0, 0, 5);
    assert_eq!(m.process().unwrap(), vec![]);
    std::fs::remove_dir_all(t.dir.path().join("pod/sib")).unwrap();
    // A plain file stays readable through its open fd after removal, where
    // kernfs answers ENODEV; the VM test `rt_removed_right_after_exit`
    // covers the real file. Here the monitor is told.
    m.gone = true;
    let (oom, fin) = m.finish().unwrap();
    assert_eq!(oom, None);
    assert_eq!(fin.oom_kills(), None);
    let FinalCounters::Gone { last_seen } = fin.counters else {
        panic!("{fin:?}")
    };
    assert_eq!(last_seen.max, Some(5));
    assert!(fin.to_string().contains("removed before"), "{fin}");
}

#[test]
fn group_kill_reports_every_victim() {
    let t = Tree::new();
    std::fs::write(t.dir.path().join("pod/ctr/memory.oom.group"), "1\n").unwrap();
    let mut m = t.monitor(Duration::from_secs(60));
    std::fs::write(
        t.dir.path().join("pod/ctr/memory.events"),
        "low 0\nhigh 0\nmax 1\noom 1\noom_kill 3\noom_group_kill 1\n",
    )
    .unwrap();
    t.set("pod/ctr", "memory.events.local", 1, 3, 1);
    let [a, b] = kmsg_kill(40, "/pod/ctr", "/pod/ctr", 100, "hog");
    m.log_mut().push_script(&a);
    m.log_mut().push_script(&b);
    m.log_mut().push_script(
        "6,42,1002,-;Tasks in /pod/ctr are going to be killed due to memory.oom.group set\n",
    );
    m.log_mut().push_script(
        "3,43,1003,-;Memory cgroup out of memory: Killed process 101 (sleeper) total-vm:1kB\n",
    );
    assert_eq!(m.process().unwrap(), vec![], "2 of 3 victims logged");
    m.log_mut().push_script(
        "3,44,1004,-;Memory cgroup out of memory: Killed process 102 (sleeper) total-vm:1kB\n",
    );
    // The kernel kills (and logs) the first victim once more.
    m.log_mut().push_script(
        "3,45,1005,-;Memory cgroup out of memory: Killed process 100 (hog) total-vm:1kB\n",
    );
    std::fs::write(
        t.dir.path().join("pod/ctr/memory.events"),
        "low 0\nhigh 0\nmax 1\noom 1\noom_kill 4\noom_group_kill 1\n",
    )
    .unwrap();
    // Lines and counters agree, but a group kill waits for the container
    // to empty: more members may still be killed.
    assert_eq!(m.process().unwrap(), vec![]);
    t.unpopulate();
    let evs = m.process().unwrap();
    let [MonitorEvent::Oom(r), MonitorEvent::Unpopulated(_)] = evs.as_slice() else {
        panic!("{evs:?}")
    };
    let pids: Vec<i32> = r.victims.iter().map(|v| v.pid).collect();
    assert_eq!(pids, vec![100, 101, 102]);
    assert!(r.victims[1].group_member);
    assert_eq!(r.rose.oom_group_kill, Some(1));
    assert_eq!(r.rose.oom_kill, Some(4));
    assert_eq!(r.victims_status, VictimsStatus::Complete);
}

#[test]
fn without_the_kernel_log_a_report_waits_for_the_kill_to_be_counted() {
    let t = Tree::new();
    let mut m = t.monitor(Duration::from_secs(60));
    *m.log_mut() = KernelLog::open(false);
    // `oom` first (the kernel is still choosing a victim) ...
    t.set("pod/ctr", "memory.events", 1, 0, 2);
    t.set("pod/ctr", "memory.events.local", 1, 0, 2);
    assert_eq!(m.process().unwrap(), vec![]);
    // ... then `oom_kill`: one report with both.
    t.set("pod/ctr", "memory.events", 1, 1, 2);
    let evs = m.process().unwrap();
    let [MonitorEvent::Oom(r)] = evs.as_slice() else {
        panic!("{evs:?}")
    };
    assert_eq!((r.rose.oom, r.rose.oom_kill), (Some(1), Some(1)));
    assert_eq!(r.victims_status, VictimsStatus::NotRead);
    assert_eq!(r.level, Level::Container);
}

#[test]
fn boundary_must_be_an_ancestor() {
    let t = Tree::new();
    let fs = CgroupFs::from_dir_unchecked(t.dir.path());
    let ctr = fs.open(t.dir.path().join("pod/ctr")).unwrap();
    let e = OomMonitor::open_unregistered(
        &ctr,
        MonitorOptions {
            boundary: Some("/elsewhere".into()),
            kernel_log: false,
            ..MonitorOptions::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("not an ancestor"), "{e}");
    // The boundary at the pod gives two levels.
    let m = OomMonitor::open_unregistered(
        &ctr,
        MonitorOptions {
            boundary: Some(t.dir.path().join("pod")),
            kernel_log: false,
            ..MonitorOptions::default()
        },
    )
    .unwrap();
    assert_eq!(m.levels.len(), 2);
}

#[test]
fn malformed_counters_are_an_error_naming_the_file() {
    let t = Tree::new();
    let mut m = t.monitor(Duration::from_secs(60));
    std::fs::write(t.dir.path().join("pod/ctr/memory.events"), "oom x\n").unwrap();
    let e = m.process().unwrap_err();
    assert!(e.to_string().contains("pod/ctr/memory.events"), "{e}");
}
