//! The PSI parser (`memory.pressure`, `/proc/pressure/memory`): no panic,
//! and a parsed average is a finite share.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oomkit::cgroup::parse;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = parse::pressure(data) {
        for line in [Some(p.some), p.full].into_iter().flatten() {
            for v in [line.avg10, line.avg60, line.avg300] {
                assert!(v.is_finite() && v >= 0.0, "{v}");
            }
        }
    }
});
