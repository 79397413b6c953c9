//! Every cgroup-file parser on the same bytes: none may panic, and the
//! allocation-free variants must agree with the allocating ones.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oomkit::cgroup::{MemoryStat, mount, parse};

fuzz_target!(|data: &[u8]| {
    let _ = parse::single_u64(data);
    let _ = parse::limit(data);
    let _ = parse::bool01(data);
    let _ = parse::memory_events(data);
    let _ = parse::cgroup_events(data);
    let _ = parse::controllers(data);
    let mut pids = Vec::new();
    let _ = parse::pids_into(data, &mut pids);
    let a = parse::memory_stat(data);
    let mut b = MemoryStat::default();
    let rb = parse::memory_stat_into(data, &mut b);
    assert_eq!(a.is_ok(), rb.is_ok());
    if let Ok(a) = a {
        assert_eq!(a, b);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mount::parse_mountinfo(text);
        if let Some(p) = mount::parse_proc_cgroup(text) {
            assert!(!p.contains('\n'));
        }
    }
});
