//! `oomkit check-config`: load a file with its drop-ins and describe it in one paragraph.

use super::*;

/// What `check-config` reports for a valid file.
pub fn check_config(file: &Path) -> Result<String, ConfigErrors> {
    let loaded = Config::load(file)?;
    // Building the handler compiles every glob: the same path as `run`.
    let built = loaded.config.build_handler();
    if let Err(e) = built {
        return Err(ConfigErrors(vec![crate::config::ConfigError {
            file: file.to_path_buf(),
            at: None,
            key: Some("handler".into()),
            message: e,
        }]));
    }
    Ok(summary(&loaded))
}

/// One paragraph describing a loaded config, warnings included.
pub fn summary(loaded: &Loaded) -> String {
    let c = &loaded.config;
    let mut s = format!(
        "{}: OK\n  root {} (depth {}), handler {}, {} rule(s), QoS tiers {}\n  signals: memory.events {}, PSI {}, machine {}, tripwire {}\n  engine: dry_run {}, progress_aware {}, kill_deadline {} ms, cooldown {} ms\n  reserve {}, watchdog {}",
        loaded.file.display(),
        c.daemon.root.display(),
        c.daemon.depth,
        c.handler.kind.name(),
        c.handler.rules.len(),
        if c.handler.qos.enabled { "on" } else { "off" },
        if c.signals.memory_events { "on" } else { "off" },
        c.signals
            .psi
            .as_ref()
            .map_or("off".to_string(), |p| format!(
                "{:?} {} ms / {} ms ({:?})",
                p.kind,
                ms(p.stall),
                ms(p.window),
                p.scope
            )),
        {
            let m = &c.signals.machine;
            if m.enabled {
                format!(
                    "low {} / critical {} / clear {}, {} ms",
                    m.low.0, m.critical.0, m.clear.0, m.min_duration_ms
                )
            } else {
                "off".to_string()
            }
        },
        c.signals.tripwire.map_or("off".to_string(), |t| format!(
            "{} per top-level child",
            t.0
        )),
        c.engine.dry_run,
        c.engine.progress_aware,
        ms(c.engine.kill_deadline),
        ms(c.engine.cooldown),
        if c.reserve.enabled { "on" } else { "off" },
        if c.watchdog.enabled {
            format!("{} ms", ms(c.watchdog.timeout))
        } else {
            "off".into()
        },
    );
    for d in &loaded.dropins {
        s.push_str("\n  drop-in: ");
        s.push_str(&d.display().to_string());
    }
    for w in &loaded.warnings {
        s.push_str("\n  warning: ");
        s.push_str(w);
    }
    s
}
