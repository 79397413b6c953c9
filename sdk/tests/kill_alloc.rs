//! The hot path "scan the cgroup → pick → pidfd kill" allocates nothing once
//! warmed up. A counting global allocator that counts the measuring thread
//! only (the test harness's own threads may allocate meanwhile).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

use oomkit::cgroup::CgroupFs;
use oomkit::kill::{self, KillOptions, Pidfd};
use oomkit::proc::{self, ProcDir, ScanOptions};

#[path = "common/counting.rs"]
mod counting;

use counting::count;

#[global_allocator]
static A: counting::Counting = counting::Counting;

#[test]
#[allow(unsafe_code)]
fn hot_path_is_allocation_free() {
    // A synthetic cgroup at our real hierarchy path, listing two children.
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let ours = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .to_owned();
    let d = tempfile::tempdir().unwrap();
    let leaf = d.path().join(ours.trim_start_matches('/'));
    std::fs::create_dir_all(&leaf).unwrap();
    let mut a = Command::new("sleep").arg("100").spawn().unwrap();
    let mut b = Command::new("sleep").arg("100").spawn().unwrap();
    std::fs::write(
        leaf.join("cgroup.procs"),
        format!("{}\n{}\n", a.id(), b.id()),
    )
    .unwrap();
    let cg = CgroupFs::from_dir_unchecked(d.path()).open(&leaf).unwrap();
    let mut procs = Vec::with_capacity(16);
    proc::scan_into(&cg, &mut procs).unwrap(); // warm-up
    let opts = KillOptions {
        deadline: Duration::from_secs(10),
        ..KillOptions::default()
    };

    let (sum, n) = count(|| proc::scan_into(&cg, &mut procs).unwrap());
    assert_eq!((sum.added, n), (2, 0), "scan_into allocated");
    let (info, n) = count(|| {
        ProcDir::open(a.id() as i32)
            .unwrap()
            .info(&ScanOptions::default())
    });
    assert!(info.is_ok());
    assert_eq!(n, 0, "ProcDir::info allocated");
    let victim = procs.iter().max_by_key(|p| p.freeable()).unwrap().pid;
    let (out, n) = count(|| {
        let p = Pidfd::open_in(&cg, victim).unwrap();
        assert!(p.is_alive().unwrap());
        kill::kill_process(&p, &opts).unwrap()
    });
    assert!(out.exited);
    assert_eq!(n, 0, "open_in + kill_process allocated");
    // The race paths allocate nothing either.
    let (r, n) = count(|| Pidfd::open(i32::MAX).map(|_| ()));
    assert!(r.unwrap_err().is_gone());
    assert_eq!(n, 0);
    let other = if victim == a.id() as i32 {
        &mut b
    } else {
        &mut a
    };
    let p = Pidfd::open(other.id() as i32).unwrap();
    let (_, n) = count(|| {
        p.send_signal(kill::Signal::KILL).unwrap();
        let _ = p.try_mrelease();
        p.wait_exit(Instant::now() + Duration::from_secs(10))
            .unwrap()
    });
    assert_eq!(n, 0);
    a.wait().unwrap();
    b.wait().unwrap();
    let (r, n) = count(|| p.send_signal(kill::Signal::KILL));
    assert!(r.unwrap_err().is_gone());
    assert_eq!(n, 0, "ProcessGone allocated");
    let (r, n) = count(|| proc::meminfo().and(proc::vmstat()));
    assert!(r.is_ok());
    assert_eq!(n, 0, "meminfo/vmstat allocated");
}
