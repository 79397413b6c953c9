//! Config parsing, validation and error positions; the shipped example
//! configs go through the same `check-config` path as the binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use oomkit_daemon::config::{Config, ConfigErrors, HandlerKind, LogFormat, locate, parse_size};
use oomkit_daemon::daemon::{self, Privileges};
use oomkit_handlers::priority::Granularity;

fn configs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_shipped_config_passes_check_config() {
    let files = configs();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "default.toml",
            "desktop.toml",
            "heap-profile.toml",
            "priority-kill.toml",
            "single-service.toml",
            "systemd-host.toml",
            "throttle.toml"
        ],
        "one example per handler, the defaults, and one per kind of host"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let deploy = [
        root.join("deploy/oomkit.toml"),
        root.join("deploy/kubernetes/oomkit.toml"),
    ];
    for f in files.iter().chain(&deploy) {
        let summary = daemon::check_config(f).unwrap_or_else(|e| panic!("{e}"));
        assert!(summary.contains(": OK"), "{summary}");
        let loaded = Config::load(f).unwrap();
        assert!(
            loaded.warnings.is_empty(),
            "{}: {:?}",
            f.display(),
            loaded.warnings
        );
        // The runner's config builds too (no reserve cgroup in the examples,
        // so nothing is opened).
        let rc = daemon::runner_config(&loaded.config, false).unwrap();
        assert_eq!(rc.root, loaded.config.daemon.root);
        // Every example protects a swapless machine with no limits set.
        assert!(
            rc.machine.is_some(),
            "{}: no machine-wide warning",
            f.display()
        );
    }
}

#[test]
fn the_priority_kill_example_maps_onto_the_runner() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/priority-kill.toml");
    let c = Config::load(&f).unwrap().config;
    assert_eq!(c.handler.kind, HandlerKind::PriorityKill);
    assert_eq!(
        c.handler.priority_kill.as_ref().unwrap().granularity,
        Granularity::Tree
    );
    assert_eq!(
        c.handler.priority_kill.as_ref().unwrap().min_victim_bytes,
        64 << 20
    );
    let rc = daemon::runner_config(&c, true).unwrap();
    assert!(rc.engine.dry_run, "--dry-run forces a dry run");
    assert_eq!(rc.engine.max_cgroups, 4096);
    let psi = rc.psi.unwrap();
    assert!(psi.system);
    assert_eq!(psi.threshold.window, Duration::from_secs(2));
    assert_eq!(rc.watchdog.unwrap().timeout, Duration::from_secs(2));
    assert!(rc.incidents.is_none(), "the daemon writes incidents itself");
    let inc = daemon::incident_config(&c).unwrap();
    assert_eq!((inc.max_count, inc.max_bytes), (200, 256 << 10));
    let reserve = rc.reserve.unwrap();
    assert_eq!(reserve.oom_score_adj, Some(-1000));
    assert!(reserve.cgroup.is_none());
}

/// `[daemon] usage_fds` caps the kept `memory.current` fds; absent, the runner keeps one per
/// tracked cgroup, and its working directory of its own is on.
#[test]
fn usage_fds_maps_onto_the_runner() {
    let rc = |text: &str| {
        let c = Config::parse(Path::new("x.toml"), text).unwrap().config;
        daemon::runner_config(&c, false).unwrap()
    };
    let dflt = rc(MINIMAL);
    assert_eq!(dflt.usage_fds, None);
    assert!(dflt.own_cwd);
    let capped = rc(&format!("[daemon]\nusage_fds = 64\n{MINIMAL}"));
    assert_eq!(capped.usage_fds, Some(64));
    let bad = errors(&format!("[daemon]\nusage_fds = -1\n{MINIMAL}"));
    assert!(bad.to_string().contains("usage_fds"), "{bad}");
}

fn errors(text: &str) -> ConfigErrors {
    Config::parse(Path::new("/etc/oomkit.toml"), text).unwrap_err()
}

const MINIMAL: &str = "[handler]\nkind = \"priority-kill\"\n";

#[test]
fn minimal_config_uses_defaults() {
    let l = Config::parse(Path::new("x.toml"), MINIMAL).unwrap();
    assert_eq!(l.config.daemon.root, PathBuf::from("/sys/fs/cgroup"));
    assert!(l.config.signals.memory_events);
    assert!(l.config.watchdog.enabled);
    assert_eq!(l.config.watchdog.timeout, Duration::from_millis(2000));
    let e = l.config.engine_config();
    let d = oomkit::engine::EngineConfig::default();
    assert_eq!(e.kill_deadline, d.kill_deadline);
    assert_eq!(e.sample_interval, d.sample_interval);
    assert!(l.config.build_handler().is_ok());
}

#[test]
fn unknown_key_names_file_line_column_and_key() {
    let text = "[daemon]\nlog_format = \"json\"\n\n[engine]\nkill_deadlin_ms = 100\n\n[handler]\nkind = \"throttle\"\n";
    let e = errors(text);
    assert_eq!(e.0.len(), 1);
    let msg = e.to_string();
    assert!(
        msg.starts_with(
            "/etc/oomkit.toml:5:1: key `engine.kill_deadlin_ms`: unknown field `kill_deadlin_ms`"
        ),
        "{msg}"
    );
}

#[test]
fn wrong_type_points_at_the_value() {
    let text = "[engine]\ncooldown_ms = \"soon\"\n[handler]\nkind = \"throttle\"\n";
    let msg = errors(text).to_string();
    assert!(msg.starts_with("/etc/oomkit.toml:2:"), "{msg}");
    assert!(msg.contains("key `engine.cooldown_ms`"), "{msg}");
}

#[test]
fn bad_enum_value_lists_the_choices() {
    let text = "[handler]\nkind = \"kill-everything\"\n";
    let msg = errors(text).to_string();
    assert!(
        msg.starts_with("/etc/oomkit.toml:2:8: key `handler.kind`"),
        "{msg}"
    );
    assert!(msg.contains("priority-kill"), "{msg}");
}

#[test]
fn missing_handler_is_an_error() {
    let msg = errors("[daemon]\nroot = \"/sys/fs/cgroup\"\n").to_string();
    assert!(msg.contains("missing field `handler`"), "{msg}");
}

#[test]
fn psi_window_is_validated_with_its_position() {
    let text = "[signals.psi]\nkind = \"some\"\nstall_ms = 100\nwindow_ms = 20000\n\n[handler]\nkind = \"priority-kill\"\n";
    let e = errors(text);
    assert_eq!(
        e.0[0].to_string(),
        "/etc/oomkit.toml:4:1: key `signals.psi.window_ms`: must be between 500 ms and 10 s (got 20000 ms)"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
[engine]
full_stall_threshold = 1.5

[reserve]
nice = 40

[handler]
kind = "throttle"

[[handler.rules]]
glob = "/a/**"
priority = 1

[[handler.rules]]
glob = "/b/[x"
priority = 2

[handler.throttle]
step_fraction = 1.0
"#;
    let e = errors(text);
    let got: Vec<String> = e.0.iter().map(ToString::to_string).collect();
    assert_eq!(got.len(), 4, "{got:#?}");
    assert!(
        got[0].starts_with(
            "/etc/oomkit.toml:3:1: key `engine.full_stall_threshold`: must be between 0 and 1"
        ),
        "{}",
        got[0]
    );
    assert!(
        got[1].starts_with("/etc/oomkit.toml:6:1: key `reserve.nice`"),
        "{}",
        got[1]
    );
    assert!(
        got[2].starts_with("/etc/oomkit.toml:16:1: key `handler.rules[1].glob`: bad glob"),
        "the second [[handler.rules]] item: {}",
        got[2]
    );
    assert!(
        got[3].starts_with("/etc/oomkit.toml:20:1: key `handler.throttle.step_fraction`"),
        "{}",
        got[3]
    );
}

#[test]
fn heap_profile_needs_a_diagnostics_dir_and_sane_times() {
    let text = "[handler]\nkind = \"heap-profile\"\n[handler.heap_profile]\nsignal = 9\nraise_for_ms = 100\ndump_deadline_ms = 3000\ncomms = [\"a-very-long-process-name\"]\n";
    let e = errors(text);
    let keys: Vec<&str> = e.0.iter().filter_map(|e| e.key.as_deref()).collect();
    assert_eq!(
        keys,
        [
            "handler.heap_profile.signal",
            "handler.heap_profile.comms",
            "handler.heap_profile.raise_for_ms",
            "daemon.diagnostics_dir",
        ]
    );
    // A key absent from the file is located at its table, or not at all.
    let diag =
        e.0.iter()
            .find(|e| e.key.as_deref() == Some("daemon.diagnostics_dir"))
            .unwrap();
    assert_eq!(diag.at, None);
}

#[test]
fn signal_names_and_sizes_parse() {
    let text = "[daemon]\ndiagnostics_dir = \"/d\"\n[handler]\nkind = \"heap-profile\"\n[handler.heap_profile]\nsignal = \"usr1\"\nheadroom = \"1GiB\"\nbudget = 2147483648\n";
    let c = Config::parse(Path::new("x"), text).unwrap().config;
    let h = c.handler.heap_profile.unwrap();
    assert_eq!(h.signal, libc::SIGUSR1);
    assert_eq!(h.headroom_bytes, 1 << 30);
    assert_eq!(h.budget_bytes, 2 << 30);
    // As Kubernetes writes them: Ki/Mi/Gi binary, k/M/G decimal.
    assert_eq!(parse_size("64Mi"), Ok(64 << 20));
    assert_eq!(parse_size("64Ki"), Ok(64 << 10));
    assert_eq!(parse_size("512MiB"), Ok(512 << 20));
    assert_eq!(parse_size("64k"), Ok(64_000));
    assert_eq!(parse_size("1G"), Ok(1_000_000_000));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert!(parse_size("12 parsecs").is_err());
    let msg = errors("[handler]\nkind = \"throttle\"\n[handler.throttle]\nfloor = \"lots\"\n")
        .to_string();
    assert!(msg.contains(":4:") && msg.contains("not a size"), "{msg}");
}

#[test]
fn incidents_are_on_by_default_and_off_with_an_empty_dir() {
    let on = Config::parse(Path::new("x"), "[handler]\nkind = \"priority-kill\"\n").unwrap();
    assert_eq!(
        daemon::incident_config(&on.config).unwrap().dir,
        Path::new("/var/lib/oomkit/incidents")
    );
    let off = "[daemon]\nincident_dir = \"\"\n[handler]\nkind = \"priority-kill\"\n";
    let off = Config::parse(Path::new("x"), off).unwrap();
    assert!(daemon::incident_config(&off.config).is_none());
    let msg = errors("[daemon]\nincident_dir = \"var/x\"\nmetrics_listen = \"nope\"\n[handler]\nkind = \"throttle\"\n").to_string();
    assert!(
        msg.contains("daemon.incident_dir") && msg.contains("absolute"),
        "{msg}"
    );
    assert!(
        msg.contains("daemon.metrics_listen") && msg.contains("HOST:PORT"),
        "{msg}"
    );
}

#[test]
fn durations_take_units_or_milliseconds() {
    let text = "[engine]\nkill_deadline_ms = \"5s\"\ncooldown_ms = \"250ms\"\nstall_sustain_ms = 1500\n[watchdog]\ntimeout_ms = \"2s\"\n[handler]\nkind = \"priority-kill\"\n";
    let c = Config::parse(Path::new("x"), text).unwrap().config;
    assert_eq!(c.engine.kill_deadline, Duration::from_millis(5000));
    assert_eq!(c.engine.cooldown, Duration::from_millis(250));
    assert_eq!(c.engine.stall_sustain, Duration::from_millis(1500));
    assert_eq!(c.watchdog.timeout, Duration::from_millis(2000));
    let msg =
        errors("[engine]\ncooldown_ms = \"soon\"\n[handler]\nkind = \"throttle\"\n").to_string();
    assert!(
        msg.contains(":2:") && msg.contains("not a duration"),
        "{msg}"
    );
}

#[test]
fn unused_handler_tables_are_warned_about() {
    let text = "[handler]\nkind = \"priority-kill\"\n[handler.throttle]\nfloor = \"1GiB\"\n";
    let l = Config::parse(Path::new("x"), text).unwrap();
    assert_eq!(
        l.warnings,
        ["[handler.throttle] is ignored: handler kind is `priority-kill`"]
    );
}

#[test]
fn locate_finds_keys_tables_and_array_items() {
    let text = "a = 1\n[x]\n  b = 2\n[[r]]\ng = 1\n[[r]]\n g = 2\n[x.y]\n";
    assert_eq!(locate(text, "a"), Some((1, 1)));
    assert_eq!(locate(text, "x.b"), Some((3, 3)));
    assert_eq!(locate(text, "r[1].g"), Some((7, 2)));
    assert_eq!(locate(text, "r[0].g"), Some((5, 1)));
    assert_eq!(locate(text, "r[1]"), Some((6, 1)));
    assert_eq!(
        locate(text, "x.y.z"),
        Some((8, 1)),
        "falls back to the table"
    );
    assert_eq!(locate(text, "nope"), None);
}

#[test]
fn reload_reports_sections_that_need_a_restart() {
    let a = Config::parse(Path::new("x"), MINIMAL).unwrap().config;
    let b = Config::parse(
        Path::new("x"),
        "[watchdog]\ntimeout_ms = 500\n[engine]\ncooldown_ms = 1\n[handler]\nkind = \"throttle\"\n",
    )
    .unwrap()
    .config;
    let changed: Vec<&str> = daemon::restart_needed(&a, &b)
        .iter()
        .filter(|(_, c)| *c)
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(changed, ["watchdog"], "engine and handler reload in place");
}

#[test]
fn tripwire_is_validated_and_reloads_in_place() {
    let with =
        |v: &str| format!("[signals]\ntripwire = {v}\n[handler]\nkind = \"priority-kill\"\n");
    let l = Config::parse(Path::new("x"), &with("\"90%\"")).unwrap();
    assert_eq!(
        l.config.signals.tripwire.map(|t| t.0),
        Some(oomkit::events::Level::Fraction(0.9))
    );
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert!(daemon::summary(&l).contains("tripwire 90.0% per top-level child"));
    // A size is only checkable against MemTotal at run time: a warning.
    let l = Config::parse(Path::new("x"), &with("\"3GiB\"")).unwrap();
    assert_eq!(
        l.config.signals.tripwire.map(|t| t.0),
        Some(oomkit::events::Level::Bytes(3 << 30))
    );
    assert!(
        l.warnings
            .iter()
            .any(|w| w.contains("signals.tripwire") && w.contains("MemTotal")),
        "{:?}",
        l.warnings
    );
    for bad in ["\"100%\"", "\"0.5%\"", "0", "\"lots\""] {
        let msg = errors(&with(bad)).to_string();
        assert!(msg.contains("key `signals.tripwire`"), "{bad}: {msg}");
    }
    let a = Config::parse(Path::new("x"), MINIMAL).unwrap().config;
    let b = Config::parse(Path::new("x"), &with("\"80%\""))
        .unwrap()
        .config;
    assert!(
        daemon::restart_needed(&a, &b).iter().all(|(_, c)| !c),
        "the tripwire reloads in place"
    );
}

#[test]
fn privileges_decide_the_reserve_outlook() {
    let status = "Name:\toomkit\nCapEff:\t0000000000000000\n";
    let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax locked memory         8388608              8388608              bytes\nMax realtime priority     0                    0\n";
    let p = Privileges::parse(status, limits);
    assert_eq!(p.memlock_soft, Some(8 << 20));
    let cfg = Config::parse(
        Path::new("x"),
        "[reserve]\nfifo = 10\n[handler]\nkind = \"throttle\"\n",
    )
    .unwrap()
    .config;
    let rows = p.reserve_outlook(&cfg);
    let get = |k: &str| rows.iter().find(|r| r.0 == k).unwrap().1.clone();
    assert!(
        get("mlockall").starts_with("partial"),
        "{}",
        get("mlockall")
    );
    assert!(
        get("oom_score_adj").starts_with("no"),
        "{}",
        get("oom_score_adj")
    );
    assert!(get("sched_fifo").starts_with("no"), "{}", get("sched_fifo"));
    let root = Privileges::parse("CapEff:\t000001ffffffffff\n", limits);
    let rows = root.reserve_outlook(&cfg);
    assert!(rows.iter().all(|r| !r.1.starts_with("no")), "{rows:?}");
}

#[test]
fn drop_ins_merge_in_name_order_and_errors_point_at_them() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("oomkit.toml");
    std::fs::write(
        &main,
        "[daemon]\ndepth = 4\n[handler]\nkind = \"priority-kill\"\n[[handler.rules]]\nglob = \"/a\"\nprotected = true\n",
    )
    .unwrap();
    let d = dir.path().join("oomkit.d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("50-late.toml"), "[daemon]\ndepth = 6\n").unwrap();
    std::fs::write(
        d.join("10-early.toml"),
        "[daemon]\ndepth = 5\nlog_format = \"json\"\n[[handler.rules]]\nglob = \"/b\"\npriority = -5\n",
    )
    .unwrap();
    std::fs::write(d.join("ignored.conf"), "not toml at all [").unwrap();
    let l = Config::load(&main).unwrap();
    assert_eq!(l.config.daemon.depth, 6, "later drop-ins win");
    assert_eq!(l.config.daemon.log_format, LogFormat::Json);
    let globs: Vec<&str> = l
        .config
        .handler
        .rules
        .iter()
        .map(|r| r.glob.as_str())
        .collect();
    assert_eq!(globs, ["/a", "/b"], "rules are appended");
    assert_eq!(l.dropins.len(), 2);
    // A bad value in a drop-in is reported there, at its line.
    std::fs::write(d.join("60-bad.toml"), "# depth\n[daemon]\ndepth = 99\n").unwrap();
    let e = Config::load(&main).unwrap_err().to_string();
    assert!(
        e.contains("60-bad.toml:3:") && e.contains("daemon.depth"),
        "{e}"
    );
    // A syntax error in a drop-in names the drop-in.
    std::fs::write(d.join("60-bad.toml"), "[daemon\n").unwrap();
    let e = Config::load(&main).unwrap_err().to_string();
    assert!(e.contains("60-bad.toml:1:"), "{e}");
}
