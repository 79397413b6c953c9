//! From a validated config to what the daemon runs: the engine settings, the xattr trust rule,
//! the classifier and the configured handler, sized for `[engine] max_cgroups`.

use oomkit::engine::{EngineConfig, XattrTrust};
use oomkit_handlers::classify::{Classifier, QosPriorities};
use oomkit_handlers::heap_profile::HeapProfile;
use oomkit_handlers::priority::{PriorityKill, PriorityKillConfig};
use oomkit_handlers::throttle::{Throttle, ThrottleConfig};

use super::{Config, HandlerKind, TrustSetting};

impl Config {
    /// The engine settings.
    pub fn engine_config(&self) -> EngineConfig {
        self.engine.clone()
    }

    /// The xattr trust rule.
    pub fn xattr_trust(&self) -> XattrTrust {
        match self.daemon.xattr_trust {
            TrustSetting::TrustedOnly => XattrTrust::TrustedOnly,
            TrustSetting::TrustedAndOwnedUser => XattrTrust::TrustedAndOwnedUser,
        }
    }

    /// The classifier from `[handler]` rules and QoS settings.
    pub fn classifier(&self) -> Result<Classifier, oomkit_handlers::classify::GlobError> {
        let h = &self.handler;
        let rules = h.rules.clone();
        let qos = h.qos.enabled.then_some(QosPriorities {
            best_effort: h.qos.best_effort,
            burstable: h.qos.burstable,
            guaranteed: h.qos.guaranteed,
        });
        Ok(Classifier::new(rules, qos, h.default_priority)?.with_kube_roots(h.qos.roots.clone()))
    }

    /// `[handler.priority_kill]`, sized for `[engine] max_cgroups`.
    fn priority_kill_config(&self) -> PriorityKillConfig {
        PriorityKillConfig {
            max_cgroups: self.engine.max_cgroups,
            ..self.handler.priority_kill.clone().unwrap_or_default()
        }
    }

    /// Builds the configured handler (sized for `[engine] max_cgroups`).
    pub fn build_handler(&self) -> Result<Box<dyn oomkit::engine::Handler>, String> {
        let classifier = self.classifier().map_err(|e| e.to_string())?;
        let sizing = |e: std::collections::TryReserveError| {
            format!(
                "cannot reserve tables for [engine] max_cgroups = {}: {e}",
                self.engine.max_cgroups
            )
        };
        Ok(match self.handler.kind {
            HandlerKind::PriorityKill => Box::new(
                PriorityKill::try_new(self.priority_kill_config(), classifier).map_err(sizing)?,
            ),
            HandlerKind::Throttle => {
                let cfg = ThrottleConfig {
                    choice: self.priority_kill_config(),
                    ..self.handler.throttle.clone().unwrap_or_default()
                };
                let max_throttled = cfg.max_throttled;
                Box::new(Throttle::try_new(cfg, classifier).map_err(|e| {
                    format!(
                        "{} (handler.throttle.max_throttled = {max_throttled})",
                        sizing(e),
                    )
                })?)
            }
            HandlerKind::HeapProfile => {
                let cfg = self.handler.heap_profile.clone().unwrap_or_default();
                let inner = PriorityKill::try_new(self.priority_kill_config(), classifier)
                    .map_err(sizing)?;
                Box::new(HeapProfile::new(cfg, inner).map_err(|e| e.to_string())?)
            }
        })
    }
}
