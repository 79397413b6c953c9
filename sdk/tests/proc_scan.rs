//! Reading live processes: ourselves, children, zombies, kernel threads,
//! and a cgroup scan that skips processes gone mid-scan.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};

use oomkit::Error;
use oomkit::cgroup::CgroupFs;
use oomkit::proc::{self, ProcDir, ScanOptions};

#[test]
fn info_of_ourselves() {
    let me = ProcDir::open(std::process::id() as i32).unwrap();
    let opts = ScanOptions {
        cmdline: true,
        smaps_rollup: true,
        kernel_threads: false,
    };
    let p = me.info(&opts).unwrap();
    assert_eq!(p.pid, std::process::id() as i32);
    assert!(!p.kernel_thread);
    assert!(p.rss > 0 && p.rss == p.rss_anon + p.rss_file + p.rss_shmem);
    assert!(p.rss_anon > 0);
    let argv0 = p.cmdline.as_ref().unwrap()[0].clone();
    assert!(argv0.contains("proc_scan"), "{argv0}");
    assert!(argv0.contains(p.name().split('-').next().unwrap()));
    let sm = p.smaps.unwrap();
    assert!(sm.pss.unwrap() > 0);
    assert_eq!(me.stat().unwrap().pid, p.pid);
    assert!(me.statm().unwrap().resident > 0);
    assert!(me.oom_score().unwrap() >= 0);
    assert_eq!(ProcDir::open_self().unwrap().pid(), p.pid);
}

#[test]
fn kernel_thread_is_flagged() {
    let p = ProcDir::open(2)
        .unwrap()
        .info(&ScanOptions::default())
        .unwrap();
    assert!(p.kernel_thread);
    assert_eq!((p.rss, p.swap), (0, 0));
    assert_eq!(p.name(), "kthreadd");
}

#[test]
fn exited_processes_are_gone() {
    let mut c = Command::new("true").spawn().unwrap();
    let id = c.id() as i32;
    let dir = ProcDir::open(id).unwrap();
    // Wait for it to exit but do not reap: a zombie counts as gone.
    let pfd = oomkit::kill::Pidfd::open(id).unwrap();
    assert!(
        pfd.wait_exit(std::time::Instant::now() + std::time::Duration::from_secs(10))
            .unwrap()
    );
    assert!(matches!(
        dir.info(&ScanOptions::default()),
        Err(Error::ProcessGone { pid }) if pid == id
    ));
    c.wait().unwrap();
    // Reaped: every read through the old directory fd fails as gone,
    // even if the PID were reused meanwhile.
    assert!(matches!(dir.status(), Err(Error::ProcessGone { .. })));
    assert!(matches!(
        dir.oom_score_adj(),
        Err(Error::ProcessGone { .. })
    ));
    assert!(matches!(ProcDir::open(id), Err(Error::ProcessGone { .. })));
    assert!(matches!(
        proc::process_info(id),
        Err(Error::ProcessGone { .. })
    ));
}

#[test]
fn scan_skips_gone_and_reuses_capacity() {
    let d = tempfile::tempdir().unwrap();
    let leaf = d.path().join("cg");
    std::fs::create_dir(&leaf).unwrap();
    let mut live = Command::new("sleep")
        .arg("100")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // `spawn` returns after fork, maybe before the child's exec: wait until
    // the kernel shows it as `sleep` (with a deadline) so the name is stable.
    let comm = format!("/proc/{}/comm", live.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_to_string(&comm).unwrap().trim() != "sleep" {
        assert!(std::time::Instant::now() < deadline, "sleep never exec'd");
        std::thread::yield_now();
    }
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_id = dead.id();
    dead.wait().unwrap();
    std::fs::write(
        leaf.join("cgroup.procs"),
        format!("{}\n{dead_id}\n2\n{}\n", live.id(), std::process::id()),
    )
    .unwrap();
    let cg = CgroupFs::from_dir_unchecked(d.path()).open(&leaf).unwrap();
    let mut out = Vec::with_capacity(16);
    let cap = out.capacity();
    let sum = proc::scan_into(&cg, &mut out).unwrap();
    assert_eq!(sum.listed, 4);
    assert_eq!(sum.gone, 1);
    assert_eq!(sum.kernel_threads, 1);
    assert_eq!(sum.added, 2);
    assert!(sum.first_error.is_none());
    assert_eq!(out[0].pid, live.id() as i32);
    assert_eq!(out[0].name(), "sleep");
    assert!(out[0].cmdline.is_none(), "cmdline only on request");
    assert_eq!(out.capacity(), cap);
    // Again, with kernel threads: out is cleared first.
    let sum = proc::scan_into_with(
        &cg,
        &mut out,
        &ScanOptions {
            kernel_threads: true,
            ..ScanOptions::default()
        },
    )
    .unwrap();
    assert_eq!((sum.added, out.len()), (3, 3));
    live.kill().unwrap();
    live.wait().unwrap();

    // A malformed listing is an error naming the line; a missing cgroup is gone.
    std::fs::write(leaf.join("cgroup.procs"), "1\nbogus\n").unwrap();
    let e = proc::scan_into(&cg, &mut out).unwrap_err();
    assert!(
        matches!(&e, Error::Parse { source, .. } if source.line == 2),
        "{e}"
    );
    std::fs::remove_file(leaf.join("cgroup.procs")).unwrap();
    assert!(proc::scan_into(&cg, &mut out).unwrap_err().is_gone());
}

#[test]
fn large_listing_streams_through_the_buffer() {
    // More PIDs than fit one 4 KiB read.
    let d = tempfile::tempdir().unwrap();
    let list: String = (0..3000).map(|_| format!("{}\n", i32::MAX - 1)).collect();
    std::fs::write(d.path().join("cgroup.procs"), list).unwrap();
    let cg = CgroupFs::from_dir_unchecked(d.path()).root().unwrap();
    let mut n = 0;
    assert_eq!(proc::for_each_pid(&cg, |_| n += 1).unwrap(), 3000);
    assert_eq!(n, 3000);
}

#[test]
fn system_files() {
    let m = proc::meminfo().unwrap();
    assert!(m.mem_total.unwrap() > 0 && m.mem_available.is_some());
    let v = proc::vmstat().unwrap();
    assert!(v.oom_kill.is_some());
}
