//! The footprint part of `cargo xtask bench` that issue 12 asks for: each handler at rest over
//! 100 cgroups (`bench_rest`), and oomkit's cost per cgroup at 100 … 30,000 cgroups
//! (`bench_scale`), as tables and a plot (`docs/bench-scale.svg`). Kept apart from the latency
//! report in `bench.rs`.

use std::fmt::Write as _;

use serde_json::Value;

/// The at-rest goal: Rss at most this many KiB.
const REST_RSS_GOAL_KIB: f64 = 4096.0;
/// The 10,000-cgroup goals.
const SCALE_RSS_GOAL_KIB: f64 = 16.0 * 1024.0;
const SCALE_STARTUP_GOAL_S: f64 = 2.0;
const SCALE_FDS_PER_CGROUP_GOAL: f64 = 1.1;
const SELECT_GOAL_NS: f64 = 10e6;

fn f(v: &Value, k: &str) -> Option<f64> {
    v[k].as_f64()
}

fn mib(kib: Option<f64>) -> String {
    kib.map_or("–".into(), |k| format!("{:.1}", k / 1024.0))
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

/// `/proc/loadavg`'s first three fields.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The "Footprint at rest" and "Cost per cgroup" sections. `select_ns(n)`: the host
/// micro-benchmark's median selection time at cgroup granularity over `n` cgroups.
pub fn render(
    rest: &[Value],
    scale: &[Value],
    unavailable: &[Value],
    load: &str,
    select_ns: &dyn Fn(usize) -> Option<f64>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Footprint at rest (100 cgroups)\n");
    let _ = writeln!(
        s,
        "100 empty child cgroups; each handler started on them alone, left to settle (fds and \
         RSS unchanged for 2 s), then its resident set from `/proc/PID/smaps_rollup` (`Rss`: \
         every resident page it maps, the same count for all three) and `VmLck`, fds and threads \
         from `/proc/PID/status`. oomkit runs the shipped `daemon/configs/priority-kill.toml` \
         (`max_cgroups = 4096`, `mlock = \"resident\"`, watchdog on), only its root and incident \
         folder moved to the test's; the `oomkit-mlock-all` row is the same with `mlock = \"all\"` \
         (`MCL_CURRENT | MCL_FUTURE`, the default before), for comparison. Start-up: from spawn \
         to its `running` line (oomkit) or its first report.\n"
    );
    let _ = writeln!(
        s,
        "This host was shared with other engineers' builds and VMs during the run (load average \
         {load} when it ended, on 2 cores): read absolute times as pessimistic and compare the \
         handlers of the same run.\n"
    );
    let _ = writeln!(
        s,
        "| handler | Rss (MiB) | VmRSS (MiB) | VmLck (MiB) | its cgroup (MiB) | of it kernel (MiB) | fds | threads | start-up (s) | Rss vs oomkit |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    let get = |h: &str| rest.iter().find(|v| v["handler"] == h);
    let ours = get("oomkit").and_then(|v| f(v, "rss_kib"));
    for h in ["oomkit", "oomkit-mlock-all", "earlyoom", "oomd"] {
        match get(h) {
            Some(v) => {
                let ratio = match (ours, f(v, "rss_kib")) {
                    (Some(o), Some(p)) if h != "oomkit" => format!("oomkit ×{:.2}", o / p.max(1.0)),
                    _ => "–".into(),
                };
                let _ = writeln!(
                    s,
                    "| {h} | {} | {} | {} | {} | {} | {} | {} | {} | {ratio} |",
                    mib(f(v, "rss_kib")),
                    mib(f(v, "vmrss_kib")),
                    mib(f(v, "lck_kib")),
                    mib(f(v, "cg_kib")),
                    mib(f(v, "cg_kernel_kib")),
                    v["fds"],
                    v["threads"],
                    v["startup_s"],
                );
            }
            None => {
                let why = unavailable
                    .iter()
                    .find(|u| u["handler"] == h && u["scenario"] == "rest")
                    .and_then(|u| u["why"].as_str())
                    .unwrap_or("no result");
                let _ = writeln!(s, "| {h} | could not run: {why} | | | | | | | | |");
            }
        }
    }
    let _ = writeln!(s);
    if let Some(v) = get("oomkit") {
        let (rss, lck) = (
            f(v, "rss_kib").unwrap_or(0.0),
            f(v, "lck_kib").unwrap_or(0.0),
        );
        let _ = writeln!(
            s,
            "* Rss ≤ 4 MiB at rest: {} ({:.1} MiB).",
            verdict(rss <= REST_RSS_GOAL_KIB),
            rss / 1024.0
        );
        let _ = writeln!(
            s,
            "* VmLck ≤ Rss + 1 MiB: {} ({:.1} MiB locked).",
            verdict(lck <= rss + 1024.0),
            lck / 1024.0
        );
        for (label, row) in [
            ("as shipped", Some(v)),
            ("with mlock = \"all\"", get("oomkit-mlock-all")),
        ] {
            let Some(b) = row.and_then(|r| r["breakdown"].as_object()) else {
                continue;
            };
            let mut parts: Vec<(&String, u64)> = b
                .iter()
                .filter_map(|(k, x)| Some((k, x.as_u64()?)))
                .collect();
            parts.sort_by_key(|p| std::cmp::Reverse(p.1));
            let _ = writeln!(
                s,
                "* Where oomkit's Rss is, {label} (KiB, from `/proc/PID/smaps`: its own binary \
                 by permission — text r-x, rodata r--, data rw- — the heap, anonymous mappings \
                 such as the watchdog thread's stack and large tables, the main stack): {}.",
                parts
                    .iter()
                    .map(|(k, x)| format!("{k} {x}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            // The anonymous mappings one by one ("anon rw-p <size KiB> <Rss KiB>").
            let anon: Vec<String> = b["mappings"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m.as_str()?.strip_prefix("anon "))
                .filter_map(|m| {
                    let mut f = m.split_whitespace().skip(1);
                    Some(format!("{}/{}", f.next()?, f.next()?))
                })
                .collect();
            if !anon.is_empty() {
                let _ = writeln!(
                    s,
                    "  Its anonymous mappings {label} (size/Rss KiB): {}.",
                    anon.join(", ")
                );
            }
        }
        for h in ["earlyoom", "oomd"] {
            if let Some(p) = get(h).and_then(|p| f(p, "rss_kib")) {
                let _ = writeln!(
                    s,
                    "* Against {h} in the same run: oomkit's Rss is ×{:.2} of its {:.1} MiB{}.",
                    rss / p.max(1.0),
                    p / 1024.0,
                    if rss > p {
                        " — oomkit is behind here"
                    } else {
                        ""
                    }
                );
            }
        }
        let _ = writeln!(s);
    }

    let _ = writeln!(s, "## Cost per cgroup: 100 to 30,000 cgroups\n");
    let _ = writeln!(
        s,
        "oomkit alone over growing numbers of empty child cgroups (`bench_scale`; priority-kill \
         at cgroup granularity, default reserve mode, `max_cgroups` = count + 64). Start-up: \
         spawn to its `running` line (tree walked, every cgroup watched, warm-up decision taken, \
         memory locked). Selection (VM): the snapshot and `decide` of that warm-up decision over \
         the whole tree, from its log line, under TCG. Selection (host): the criterion \
         micro-benchmark `select_kernel_host/cgroup/N` (real `KernelHost`, plain files). Per \
         cgroup: the increase over the 100-cgroup row divided by the added cgroups. \
         `fs.inotify.max_user_watches` raised as above; the guest's hard open-file limit \
         bounds how many `memory.current` fds are kept. Its cgroup: `memory.current` of the \
         cgroup oomkit runs in alone, and of it the kernel memory (`memory.stat` `kernel`), \
         which counts against a container's memory limit or a unit's `MemoryMax=` as its own \
         pages do (see the next paragraph).\n"
    );
    let _ = writeln!(
        s,
        "Where the kernel memory comes from: each `memory.current` fd oomkit keeps holds, once \
         read, the kernel's 4 KiB `seq_file` buffer plus the open file itself; each cgroup has \
         two inotify marks (its directory and `memory.events.local`); and the dentries and \
         inodes of the cgroup files oomkit was first to look up are charged to it (reclaimable: \
         shown as `slab_reclaimable` in the notes). The fds are kept, and read once by the \
         warm-up decision, so that a selection during an OOM opens and allocates nothing; the \
         price is a few KiB of kernel memory per cgroup, to size the container's memory limit \
         (or `MemoryMin=`) by.\n"
    );
    let _ = writeln!(
        s,
        "| cgroups | start-up (s) | selection, VM (ms) | selection, host (ms) | Rss (MiB) | VmLck (MiB) | its cgroup (MiB) | of it kernel (MiB) | fds | Rss per cgroup (KiB) | kernel per cgroup (KiB) | fds per cgroup | start-up per cgroup (µs) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut rows: Vec<&Value> = scale.iter().collect();
    rows.sort_by_key(|v| v["cgroups"].as_u64().unwrap_or(0));
    let base = rows.first().copied();
    for v in &rows {
        let n = v["cgroups"].as_u64().unwrap_or(0) as f64;
        let per = |k: &str, scale: f64| match base {
            Some(b) if n > b["cgroups"].as_f64().unwrap_or(0.0) => {
                let dn = n - b["cgroups"].as_f64().unwrap_or(0.0);
                format!(
                    "{:.2}",
                    (f(v, k).unwrap_or(0.0) - f(b, k).unwrap_or(0.0)) / dn * scale
                )
            }
            _ => "–".into(),
        };
        let host = select_ns(n as usize).map_or("–".into(), |ns| format!("{:.2}", ns / 1e6));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {host} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            v["cgroups"],
            v["startup_s"],
            v["selection_ms"],
            mib(f(v, "rss_kib")),
            mib(f(v, "lck_kib")),
            mib(f(v, "cg_kib")),
            mib(f(v, "cg_kernel_kib")),
            v["fds"],
            per("rss_kib", 1.0),
            per("cg_kernel_kib", 1.0),
            per("fds", 1.0),
            per("startup_s", 1e6),
        );
    }
    for u in unavailable.iter().filter(|u| u["scenario"] == "scale") {
        let _ = writeln!(
            s,
            "| {} | could not run: {} | | | | | | | | | | | |",
            u["cgroups"],
            u["why"].as_str().unwrap_or("?")
        );
    }
    let _ = writeln!(s);
    // Which guest each row ran in: the 30,000 point has a VM of its own with more memory.
    let mut guests: Vec<(u64, Vec<String>)> = Vec::new();
    for v in &rows {
        let m = v["guest_mib"].as_u64().unwrap_or(0);
        let n = v["cgroups"].to_string();
        match guests.iter_mut().find(|g| g.0 == m) {
            Some(g) => g.1.push(n),
            None => guests.push((m, vec![n])),
        }
    }
    if guests.len() > 1 || guests.iter().any(|g| g.0 > 0) {
        let _ = writeln!(
            s,
            "Guest memory (`MemTotal`): {}. The 30,000 point runs in a VM of its own \
             (`cargo xtask bench --scale-memory-mib`, 3 GiB by default): in the 1 GiB guest of \
             the other rows the kernel's own cost of 30,000 memory cgroups left no room and the \
             guest panicked (\"Out of memory and no killable processes\") while oomkit attached \
             them.",
            guests
                .iter()
                .map(|(m, ns)| format!("{} cgroups in {m} MiB", ns.join(", ")))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let cpu: Vec<String> = rows
        .iter()
        .filter_map(|v| {
            Some(format!(
                "{}: {:.2} + {:.2} s",
                v["cgroups"],
                f(v, "cpu_user_s")?,
                f(v, "cpu_sys_s")?
            ))
        })
        .collect();
    if !cpu.is_empty() {
        let _ = writeln!(
            s,
            "\noomkit's own CPU time once settled (user + system, `/proc/PID/stat`; start-up and \
             the warm-up decision, nothing after; as the guest counts it, so it grows with the \
             host's load like the wall time): {}.",
            cpu.join("; ")
        );
    }
    let phases: Vec<String> = rows
        .iter()
        .filter_map(|v| {
            let p = v["phases_ms"].as_object()?;
            let part = |k: &str| p.get(k).and_then(Value::as_f64).map(|x| format!("{k} {x}"));
            let parts: Vec<String> = ["open", "dir_watch", "walk", "attach", "warm_up", "lock"]
                .iter()
                .filter_map(|k| part(k))
                .collect();
            let b = &v["baselines"];
            let baselines = match (b["inferred"].as_f64(), b["read"].as_f64()) {
                (Some(i), Some(r)) => format!(" (baselines: {i} inferred, {r} read)"),
                _ => String::new(),
            };
            (!parts.is_empty())
                .then(|| format!("{}: {}{baselines}", v["cgroups"], parts.join(", ")))
        })
        .collect();
    if !phases.is_empty() {
        let _ = writeln!(
            s,
            "\nWhere start-up went (ms, the daemon's `start-up phases` log line: engine and \
             tables set up, the directory watch created, the walk of what exists, every cgroup \
             attached and its `memory.events.local` watched, the warm-up decision, the deferred \
             lock; and how many `memory.events.local` baselines were inferred from the parent's \
             `memory.events` or read): {}.",
            phases.join("; ")
        );
    }
    let _ = writeln!(s, "\n![cost per cgroup](bench-scale.svg)\n");
    if let Some(v) = rows.iter().find(|v| v["cgroups"] == 10_000) {
        let rss = f(v, "rss_kib").unwrap_or(f64::MAX);
        let st = f(v, "startup_s").unwrap_or(f64::MAX);
        let fds = f(v, "fds").unwrap_or(f64::MAX) / 10_000.0;
        let _ = writeln!(s, "Goals at 10,000 cgroups:\n");
        let _ = writeln!(
            s,
            "* Rss ≤ 16 MiB: {} ({:.1} MiB).",
            verdict(rss <= SCALE_RSS_GOAL_KIB),
            rss / 1024.0
        );
        let _ = writeln!(
            s,
            "* Start-up ≤ 2 s under TCG: {} ({st:.2} s).",
            verdict(st <= SCALE_STARTUP_GOAL_S)
        );
        let _ = writeln!(
            s,
            "* fds ≤ 1.1 per cgroup: {} ({fds:.2} per cgroup).",
            verdict(fds <= SCALE_FDS_PER_CGROUP_GOAL)
        );
        if let Some(ns) = select_ns(10_000) {
            let _ = writeln!(
                s,
                "* Selection at cgroup granularity ≤ 10 ms on this host: {} ({:.2} ms).",
                verdict(ns <= SELECT_GOAL_NS),
                ns / 1e6
            );
        }
        let _ = writeln!(s);
    }
    s
}

/// How one panel reads its value from a `scale` note.
type Series = dyn Fn(&Value) -> Option<f64>;

/// Three panels against the number of cgroups (log scale): Rss, start-up, fds per cgroup.
pub fn svg(scale: &[Value]) -> String {
    let mut rows: Vec<&Value> = scale.iter().collect();
    rows.sort_by_key(|v| v["cgroups"].as_u64().unwrap_or(0));
    let panels: [(&str, &Series); 3] = [
        ("Rss (MiB)", &|v| f(v, "rss_kib").map(|k| k / 1024.0)),
        ("start-up (s)", &|v| f(v, "startup_s")),
        ("fds per cgroup", &|v| {
            Some(f(v, "fds")? / f(v, "cgroups")?.max(1.0))
        }),
    ];
    let (pw, ph, gap, left, top) = (260.0, 200.0, 50.0, 50.0, 40.0);
    let width = left + 3.0 * (pw + gap);
    let height = top + ph + 60.0;
    let (xlo, xhi) = (2.0_f64, 4.6_f64);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="20" font-size="14" font-weight="bold">oomkit cost against the number of cgroups (x: log scale)</text>"#
    );
    for (i, (title, get)) in panels.iter().enumerate() {
        let x0 = left + i as f64 * (pw + gap);
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|v| Some((f(v, "cgroups")?, get(v)?)))
            .collect();
        let ymax = pts.iter().map(|p| p.1).fold(0.0_f64, f64::max).max(1e-9) * 1.15;
        let x = |n: f64| x0 + (n.max(1.0).log10() - xlo) / (xhi - xlo) * pw;
        let y = |v: f64| top + ph - v / ymax * ph;
        let _ = writeln!(
            s,
            r##"<rect x="{x0}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-weight="bold">{title}</text>"##,
            x0 + pw / 2.0,
            top - 6.0
        );
        for n in [100.0, 1_000.0, 10_000.0, 30_000.0] {
            let _ = writeln!(
                s,
                r##"<line x1="{:.1}" y1="{top}" x2="{:.1}" y2="{:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
                x(n),
                x(n),
                top + ph,
                x(n),
                top + ph + 16.0,
                n as u64
            );
        }
        for k in 0..=4 {
            let v = ymax / 1.15 * f64::from(k) / 4.0;
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{:.2}</text>"##,
                x0 - 4.0,
                y(v) + 4.0,
                v
            );
        }
        let line: Vec<String> = pts
            .iter()
            .map(|(n, v)| format!("{:.1},{:.1}", x(*n), y(*v)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#2b7bb9" stroke-width="2"/>"##,
            line.join(" ")
        );
        for (n, v) in &pts {
            let _ = writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="#2b7bb9"/><text x="{:.1}" y="{:.1}" fill="#333" font-size="10">{:.2}</text>"##,
                x(*n),
                y(*v),
                x(*n) + 4.0,
                y(*v) - 6.0,
                v
            );
        }
    }
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="{:.1}" fill="#555">cgroups</text></svg>"##,
        height - 12.0
    );
    s
}
