//! Every `/proc` parser on the same bytes: none may panic; a cgroup path
//! never spans lines and a cut file keeps only whole lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oomkit::proc::parse;

fuzz_target!(|data: &[u8]| {
    let _ = parse::status(data);
    let _ = parse::stat(data);
    let _ = parse::statm(data);
    let _ = parse::oom_score(data);
    let _ = parse::cmdline(data);
    let _ = parse::meminfo(data);
    let _ = parse::vmstat(data);
    let _ = parse::smaps_rollup(data);
    if let Some(p) = parse::cgroup_v2_path(data) {
        assert!(!p.contains(&b'\n'));
    }
    let whole = parse::complete_lines(data);
    assert!(data.starts_with(whole));
    assert!(whole.is_empty() || whole.ends_with(b"\n"));
});
