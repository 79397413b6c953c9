//! `MlockMode::Resident` locks what the process has touched, not its
//! address space: a large allocation of which little is touched adds only
//! the touched pages to `VmLck`, and memory mapped afterwards is locked and
//! resident (`MCL_FUTURE`); the program's code is locked whole, its unwind
//! tables are not.
//!
//! `harness = false`: locking is process-wide, and libtest's worker threads
//! would hold stacks and arenas of their own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use oomkit::reserve::{self, MlockMode, ReserveConfig};

#[path = "common/skip.rs"]
mod skip;

fn kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn main() {
    start_up_pages_leave_the_resident_set();
    only_touched_pages_are_locked();
    println!("test result: ok. 2 passed; 0 failed");
}

fn start_up_pages_leave_the_resident_set() {
    // Some text and read-only data of this program is resident now.
    let before = kib("RssFile:");
    let dropped = reserve::drop_start_up_pages().unwrap();
    let after = kib("RssFile:");
    assert!(
        dropped > 0,
        "nothing was resident in read-only file mappings"
    );
    assert!(
        after < before,
        "file-backed Rss {before} kB -> {after} kB after dropping {dropped} bytes"
    );
    // The code keeps working: its pages come back from the page cache.
    assert_eq!(format!("{}", 6 * 7), "42");
}

fn only_touched_pages_are_locked() {
    // 64 MiB of address space, 2 MiB of it touched.
    let mut room: Vec<u8> = Vec::with_capacity(64 << 20);
    room.resize(2 << 20, 1);
    let size_before = kib("VmSize:");
    let rep = reserve::enter(&ReserveConfig {
        mlock: MlockMode::Resident,
        nice: None,
        oom_score_adj: None,
        io_flusher: false,
        ..ReserveConfig::default()
    });
    if !rep.granted("mlockall") {
        return skip::skip_named(
            "only_touched_pages_are_locked",
            &format!("mlock not granted here: {rep}"),
        );
    }
    let (lck, rss) = (kib("VmLck:"), kib("VmRSS:"));
    assert!(
        lck >= 2 * 1024,
        "the touched 2 MiB are locked: VmLck {lck} kB\n{rep}"
    );
    assert!(
        lck <= rss + 1024,
        "locked is what is resident: VmLck {lck} kB vs VmRSS {rss} kB\n{rep}"
    );
    assert!(
        lck + 60 * 1024 < size_before,
        "the untouched 62 MiB are not locked: VmLck {lck} kB, VmSize {size_before} kB\n{rep}"
    );
    // Mapped afterwards: locked and resident at once (MCL_FUTURE).
    let later: Vec<u8> = Vec::with_capacity(8 << 20);
    std::hint::black_box(&later);
    let (lck2, rss2) = (kib("VmLck:"), kib("VmRSS:"));
    assert!(
        lck2 >= lck + 8 * 1024 && rss2 >= rss + 8 * 1024,
        "an 8 MiB mapping made after the lock is locked and resident: VmLck {lck} -> {lck2} kB, \
         VmRSS {rss} -> {rss2} kB"
    );
    std::hint::black_box(&room);
    code_locked_unwind_tables_not();
}

/// The program's own file after the lock: its code whole, but not the
/// pages of its unwind tables and start-up sections (`.eh_frame`,
/// `.rela.dyn`, …), which are left out as mappings of their own.
fn code_locked_unwind_tables_not() {
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let exe = exe.to_str().unwrap();
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let (mut code, mut unlocked) = (Vec::new(), Vec::new());
    let mut current: Option<String> = None;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            let locked = flags.split_whitespace().any(|f| f == "lo");
            if let Some(head) = current.take() {
                if head.split_whitespace().nth(1) == Some("r-xp") {
                    code.push((head.clone(), locked));
                }
                if !locked {
                    unlocked.push(head);
                }
            }
        } else if line.split_whitespace().nth(5) == Some(exe) {
            current = Some(line.to_string());
        }
    }
    assert!(!code.is_empty(), "no code mapping of {exe} in smaps");
    assert!(
        code.iter().all(|(_, locked)| *locked),
        "the code is locked whole: {code:?}"
    );
    assert!(
        !unlocked.is_empty(),
        "the unwind tables and start-up sections of {exe} are left unlocked"
    );
}
