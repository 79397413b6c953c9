//! `oomkit incidents plot ID`: an SVG timeline of one episode.
//!
//! Operators would rather look than read. Three panels share one time axis
//! (milliseconds from the first event): the scope's memory against its
//! limit, its memory PSI (`some`/`full` avg10), and its headroom (limit
//! minus usage), each as the "before" sample (taken when the handler
//! decided) joined to the "after" sample (taken once the episode ended).
//! Vertical marks show the event, the decision, the kill signal, the
//! victim's exit and memory coming back. Hand-written SVG: a few dozen
//! elements, every text escaped, so the file is well-formed XML.

use std::fmt::Write as _;

use oomkit::engine::incident::{Incident, Sample};

const W: f64 = 900.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const PANEL_H: f64 = 130.0;
const GAP: f64 = 40.0;
const TOP: f64 = 60.0;

/// Escapes text for XML content and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// A mark on the time axis: its `data-mark` name, label and time (ms).
fn marks(i: &Incident) -> Vec<(&'static str, String, f64)> {
    let t = &i.timings_ms;
    let kill = i
        .plan
        .iter()
        .find(|s| s.action.starts_with("kill_"))
        .map_or("signal".to_string(), |s| format!("kill ({})", s.action));
    [
        ("event", "event".to_string(), Some(0.0)),
        ("decision", "decision".to_string(), t.decided),
        ("signal", kill, t.signal_sent),
        ("exit", "victim exited".to_string(), t.victim_exited),
        ("memory-back", "memory back".to_string(), t.memory_back),
    ]
    .into_iter()
    .filter_map(|(k, l, v)| v.map(|v| (k, l, v)))
    .collect()
}

type Series = (&'static str, &'static str, fn(&Sample) -> Option<f64>);

/// The three panels: title, unit, and each series' name, colour and value of a sample.
fn panels() -> [(&'static str, &'static str, Vec<Series>); 3] {
    [
        (
            "memory",
            "MiB",
            vec![
                ("memory.current", "#1f77b4", |s| {
                    s.memory_current.map(|b| b as f64 / 1048576.0)
                }),
                ("limit", "#d62728", |s| {
                    match (s.memory_high, s.memory_max) {
                        (Some(h), Some(m)) => Some(h.min(m)),
                        (h, m) => h.or(m),
                    }
                    .map(|b| b as f64 / 1048576.0)
                }),
            ],
        ),
        (
            "memory PSI",
            "% avg10",
            vec![
                ("some", "#ff7f0e", |s| s.psi_some_avg10),
                ("full", "#9467bd", |s| s.psi_full_avg10),
            ],
        ),
        (
            "headroom",
            "MiB",
            vec![("limit - current", "#2ca02c", |s| {
                s.headroom_bytes.map(|b| b as f64 / 1048576.0)
            })],
        ),
    ]
}

/// The SVG document.
pub fn svg(i: &Incident) -> String {
    let samples: Vec<&Sample> = std::iter::once(&i.before).chain(i.after.as_ref()).collect();
    let marks = marks(i);
    let t_end = samples
        .iter()
        .filter_map(|s| s.at_ms)
        .chain(marks.iter().map(|m| m.2))
        .chain(i.timings_ms.ended)
        .fold(1.0_f64, f64::max)
        * 1.08;
    let x = |ms: f64| LEFT + (W - LEFT - RIGHT) * (ms / t_end);
    let height = TOP + 3.0 * (PANEL_H + GAP) + 40.0;
    let mut s = String::with_capacity(8192);
    header(&mut s, i, height);
    for (n, (title, unit, series)) in panels().iter().enumerate() {
        let top = TOP + n as f64 * (PANEL_H + GAP);
        panel(&mut s, top, (title, unit), series, &samples, &x);
    }
    mark_lines(&mut s, &marks, &x);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="end">ms from the first event</text>"#,
        W - RIGHT,
        height - 6.0
    );
    s.push_str("</svg>\n");
    s
}

/// The document's start: size, background, title and subtitle.
fn header(s: &mut String, i: &Incident, height: f64) {
    let _ = write!(
        s,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>
<text x="{LEFT}" y="42">{}</text>
"#,
        xml_escape(&format!(
            "oomkit incident {} — {}{}",
            i.seq,
            i.outcome.as_deref().unwrap_or("no outcome"),
            if i.dry_run { " (dry run)" } else { "" }
        )),
        xml_escape(&format!(
            "{} · scope {} · {}",
            i.handler,
            i.scope.as_deref().unwrap_or("-"),
            i.reason
        )),
    );
}

/// One panel at `top`: frame, axis labels, and each series as a line with dots.
fn panel(
    s: &mut String,
    top: f64,
    (title, unit): (&str, &str),
    series: &[Series],
    samples: &[&Sample],
    x: &dyn Fn(f64) -> f64,
) {
    let bottom = top + PANEL_H;
    let vmax = samples
        .iter()
        .flat_map(|smp| series.iter().filter_map(move |(_, _, f)| f(smp)))
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.15;
    let y = |v: f64| bottom - PANEL_H * (v / vmax);
    let _ = writeln!(
        s,
        r##"<g class="panel" data-panel="{}"><rect x="{LEFT}" y="{top}" width="{}" height="{PANEL_H}" fill="none" stroke="#999"/><text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="end">{:.1}</text><text x="{}" y="{bottom}" text-anchor="end">0</text>"##,
        xml_escape(title),
        W - LEFT - RIGHT,
        LEFT - 8.0,
        top + PANEL_H / 2.0,
        xml_escape(&format!("{title} ({unit})")),
        LEFT - 8.0,
        top + 10.0,
        vmax,
        LEFT - 8.0,
    );
    for (k, (name, colour, f)) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = samples
            .iter()
            .filter_map(|smp| Some((x(smp.at_ms?), y(f(smp)?))))
            .collect();
        if pts.len() > 1 {
            let p: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                p.join(" ")
            );
        }
        for (a, b) in &pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{a:.1}" cy="{b:.1}" r="3.5" fill="{colour}"/>"#
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" fill="{colour}">{}</text>"#,
            W - RIGHT - 150.0,
            top + 16.0 + 14.0 * k as f64,
            xml_escape(name)
        );
    }
    let _ = writeln!(s, "</g>");
}

/// A dashed vertical line with a label per mark (decided, signal sent, …).
fn mark_lines(s: &mut String, marks: &[(&str, String, f64)], x: &dyn Fn(f64) -> f64) {
    let axis_top = TOP - 6.0;
    let axis_bottom = TOP + 3.0 * (PANEL_H + GAP) - GAP;
    for (k, (key, label, ms)) in marks.iter().enumerate() {
        let xm = x(*ms);
        let colour = if *key == "signal" { "#d62728" } else { "#555" };
        let _ = writeln!(
            s,
            r#"<g class="mark" data-mark="{key}"><line x1="{xm:.1}" y1="{axis_top}" x2="{xm:.1}" y2="{axis_bottom}" stroke="{colour}" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" fill="{colour}">{}</text></g>"#,
            xm + 3.0,
            axis_bottom + 14.0 + 13.0 * (k % 2) as f64,
            xml_escape(&format!("{label} {ms:.0} ms"))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oomkit::engine::incident::{StepRecord, TimingsMs};

    fn incident() -> Incident {
        let json = serde_json::json!({
            "format": "oomkit-incident/1", "seq": 7, "written_unix_ms": 0, "episode": 1,
            "handler": "priority-kill", "dry_run": false,
            "trigger": {"kind": "memory_events", "cgroup": "/a", "counters": {"high": 1}, "attempt": null},
            "scope": "/a<&>", "outcome": "acted", "reason": "tier -100 \"batch\"",
            "plan": [], "refused": [], "victims": [], "would_kill": [], "escalations": 0, "error": null,
            "timings_ms": {"decided": null, "signal_sent": null, "victim_exited": null, "memory_back": null, "ended": null},
            "before": {"at_ms": 40.0, "memory_current": 100, "swap_current": null, "memory_high": 120, "memory_max": 200,
                       "headroom_bytes": 20, "psi_some_avg10": 3.5, "psi_full_avg10": 1.0},
            "after": null, "memory_stat": {}, "system": {"mem_total": null, "mem_available": null, "swap_free": null,
                       "psi_some_avg10": null, "psi_full_avg10": null, "oom_kill": null},
            "top_processes": [], "truncated": false
        });
        let mut i: Incident = serde_json::from_value(json).unwrap();
        i.plan.push(StepRecord {
            action: "kill_process".into(),
            cgroup: Some("/a/b".into()),
            pid: Some(9),
            signal: None,
            limit_bytes: None,
            frozen: None,
            duration_ms: None,
            deadline_ms: 5000,
        });
        i.timings_ms = TimingsMs {
            decided: Some(40.0),
            signal_sent: Some(44.0),
            victim_exited: Some(50.0),
            memory_back: Some(51.0),
            ended: Some(52.0),
        };
        i.after = Some(Sample::new(
            Some(60.0),
            Some(30),
            None,
            Some(120),
            Some(200),
            None,
        ));
        i
    }

    #[test]
    fn the_svg_is_well_formed_and_shows_every_mark() {
        let text = svg(&incident());
        let doc = roxmltree::Document::parse(&text).unwrap();
        let marks: Vec<&str> = doc
            .descendants()
            .filter_map(|n| n.attribute("data-mark"))
            .collect();
        assert_eq!(
            marks,
            ["event", "decision", "signal", "exit", "memory-back"]
        );
        let kill = doc
            .descendants()
            .find(|n| n.attribute("data-mark") == Some("signal"))
            .unwrap();
        assert!(
            kill.descendants()
                .any(|n| n.text() == Some("kill (kill_process) 44 ms")),
            "{text}"
        );
        // Before and after joined where both were read: memory and limit, headroom (the
        // "after" sample here has no PSI, so that panel has points only).
        let count = |tag: &str| doc.descendants().filter(|n| n.has_tag_name(tag)).count();
        assert_eq!(count("polyline"), 3);
        assert_eq!(count("circle"), 8);
        assert!(text.contains("/a&lt;&amp;&gt;"), "escaped");
    }
}
