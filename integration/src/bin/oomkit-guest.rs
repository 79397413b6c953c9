//! `oomkit-guest`: the userland of the test VMs (see the crate docs).
//!
//! * no arguments (started by `/init`): do what `oomkit.mode=` on the kernel command line says;
//! * `test <name>`: run one test in this process (started by the runner);
//! * `workload <cgroup> <kind> …`: a helper process (started by tests).

use std::time::Instant;

use oomkit_integration::{cmdline, fixtures, proto::Proto, runner};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("test") => runner::run_one(args.get(1).map(String::as_str).unwrap_or("")),
        Some("workload") => oomkit_integration::workload::main(&args[1..]),
        Some(other) => {
            eprintln!("oomkit-guest: unknown command {other}");
            2
        }
        None => guest_main(),
    };
    std::process::exit(code);
}

fn guest_main() -> i32 {
    let args = cmdline::from_proc();
    let mut proto = Proto::open();
    let code = match args.mode.as_str() {
        "run" => {
            let (_, failed, _) = runner::run_all(&mut proto, args.filter.as_deref());
            i32::from(failed > 0)
        }
        "fixtures" => {
            proto.line("BEGIN", &format!("fixtures 1 {}", runner::release()));
            proto.line("START", "fixtures 300");
            let t = Instant::now();
            let r = fixtures::capture(&mut proto);
            let ms = t.elapsed().as_millis();
            match r {
                Ok(n) => {
                    proto.line("RESULT", &format!("fixtures PASS {ms} captured {n} files"));
                    proto.line("END", "1 0 0");
                    0
                }
                Err(e) => {
                    proto.line("RESULT", &format!("fixtures FAIL {ms} {}", e.0));
                    proto.line("END", "0 1 0");
                    1
                }
            }
        }
        "demo" => {
            let (_, failed, _) =
                runner::run_list(&mut proto, "demo", &oomkit_integration::tests::demos());
            i32::from(failed > 0)
        }
        "bench" => {
            // `cargo xtask bench --only NAME[,NAME…]`: the cases whose name contains one NAME.
            let cases: Vec<_> = oomkit_integration::bench::cases()
                .into_iter()
                .filter(|c| {
                    args.filter
                        .as_deref()
                        .is_none_or(|f| f.split(',').any(|p| c.name.contains(p)))
                })
                .collect();
            let (_, failed, _) = runner::run_list(&mut proto, "bench", &cases);
            i32::from(failed > 0)
        }
        "selftest" => {
            let (_, failed, _) = runner::run_list(
                &mut proto,
                "selftest",
                &oomkit_integration::tests::selftests(),
            );
            i32::from(failed > 0)
        }
        // Harness self-tests (`cargo xtask vmtest --guest-mode …`): the host must report these as
        // a hung and a panicked guest.
        "selftest-hang" => {
            proto.line("BEGIN", &format!("selftest-hang 1 {}", runner::release()));
            proto.line("START", "hang 1");
            loop {
                std::thread::park();
            }
        }
        "selftest-panic" => {
            proto.line("BEGIN", &format!("selftest-panic 1 {}", runner::release()));
            proto.line("START", "panic 5");
            proto.drain();
            let _ = std::fs::write("/proc/sys/kernel/sysrq", "1");
            let _ = std::fs::write("/proc/sysrq-trigger", "c");
            1
        }
        // Dies before the harness handshake (no BEGIN): the host must take it for an
        // infrastructure failure, boot once more, and fail the run after the second.
        "selftest-boot-panic" => {
            proto.drain();
            let _ = std::fs::write("/proc/sys/kernel/sysrq", "1");
            let _ = std::fs::write("/proc/sysrq-trigger", "c");
            1
        }
        "probe" => {
            proto.line("BEGIN", &format!("probe 0 {}", runner::release()));
            proto.line("END", "0 0 0");
            0
        }
        other => {
            proto.line("BEGIN", &format!("{other} 0 {}", runner::release()));
            proto.line(
                "RESULT",
                &format!("mode FAIL 0 unknown oomkit.mode={other}"),
            );
            proto.line("END", "0 1 0");
            1
        }
    };
    proto.drain();
    code
}
