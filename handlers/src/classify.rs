//! Priority tiers and protection for cgroups, decided once when a cgroup
//! appears.
//!
//! Every handler in this crate classifies the same way, so the decision
//! path only compares integers. Three sources of truth exist on a node, and
//! they disagree; the precedence, highest first, is:
//!
//! 1. **The cgroup's own xattr** (`oomkit.priority`, `oomkit.protected`):
//!    set by whoever owns the workload and, after the loop's trust rule
//!    ([`oomkit::engine::XattrTrust`]), not forgeable by the workload.
//! 2. **The first matching config rule** (a glob on the hierarchy path):
//!    the node operator's word.
//! 3. **The Kubernetes QoS class**, read off the kubepods path: BestEffort
//!    below Burstable below Guaranteed, the order the kubelet encodes in
//!    `oom_score_adj`. It applies at the cgroup that *establishes* the class
//!    (`/kubepods/besteffort`, `kubepods-burstable.slice`, a guaranteed
//!    `pod…` directly under `kubepods`), and to the managed root if that
//!    lies below one; deeper cgroups inherit, so a rule or xattr on a pod
//!    also covers its containers.
//! 4. **The parent's class** (inherited), and for the managed root the
//!    configured default priority.
//!
//! Protection only ever adds up: a cgroup is protected when its xattr, a
//! matching rule, or its parent says so. A child cannot un-protect itself.

use std::path::Path;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use oomkit::engine::{CgroupMeta, Class};

/// A Kubernetes pod QoS class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    /// No requests or limits: the first to go.
    BestEffort,
    /// Requests below limits.
    Burstable,
    /// Requests equal limits for every container.
    Guaranteed,
}

/// Priorities given to the QoS classes (higher is more important).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QosPriorities {
    /// BestEffort pods.
    pub best_effort: i32,
    /// Burstable pods.
    pub burstable: i32,
    /// Guaranteed pods.
    pub guaranteed: i32,
}

impl Default for QosPriorities {
    /// Mirrors the kubelet's `oom_score_adj` order around system services
    /// (priority 0): BestEffort −200, Burstable −100, Guaranteed +100.
    fn default() -> Self {
        QosPriorities {
            best_effort: -200,
            burstable: -100,
            guaranteed: 100,
        }
    }
}

impl QosPriorities {
    /// The priority of a class.
    pub fn of(&self, q: QosClass) -> i32 {
        match q {
            QosClass::BestEffort => self.best_effort,
            QosClass::Burstable => self.burstable,
            QosClass::Guaranteed => self.guaranteed,
        }
    }
}

/// One config rule: cgroups whose hierarchy path matches `glob` get
/// `priority` (if given) and are protected if `protected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// A glob on the hierarchy path (`*` stays within one path component,
    /// `**` crosses them), e.g. `/batch/**` or `/system.slice/*.service`.
    pub glob: String,
    /// The priority tier, or `None` to leave the priority to lower sources.
    pub priority: Option<i32>,
    /// Never kill, throttle or freeze.
    pub protected: bool,
}

/// A bad glob in a rule.
#[derive(Debug, thiserror::Error)]
#[error("rule {index}: bad glob `{glob}`: {source}")]
pub struct GlobError {
    /// Index of the rule.
    pub index: usize,
    /// The glob.
    pub glob: String,
    /// What is wrong with it.
    #[source]
    pub source: globset::Error,
}

/// Builds a glob whose `*` does not cross `/`.
pub(crate) fn path_glob(glob: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(glob).literal_separator(true).build()
}

/// Where a cgroup's class came from (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The cgroup's trusted xattr.
    Xattr,
    /// Config rule number `n`.
    Rule(usize),
    /// The Kubernetes QoS class.
    Qos(QosClass),
    /// The parent's class.
    Inherited,
    /// The configured default (managed root only).
    Default,
}

/// Classification policy shared by the handlers. See the module docs.
#[derive(Debug, Clone)]
pub struct Classifier {
    rules: Vec<Rule>,
    set: GlobSet,
    qos: Option<QosPriorities>,
    default_priority: i32,
    scratch: Vec<usize>,
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier {
            rules: Vec::new(),
            set: GlobSet::empty(),
            qos: Some(QosPriorities::default()),
            default_priority: 0,
            scratch: Vec::new(),
        }
    }
}

impl Classifier {
    /// A classifier with `rules` (first match wins), QoS priorities (`None`:
    /// ignore Kubernetes paths) and the managed root's default priority.
    pub fn new(
        rules: Vec<Rule>,
        qos: Option<QosPriorities>,
        default_priority: i32,
    ) -> Result<Self, GlobError> {
        let mut b = GlobSetBuilder::new();
        for (index, r) in rules.iter().enumerate() {
            let g = path_glob(&r.glob).map_err(|source| GlobError {
                index,
                glob: r.glob.clone(),
                source,
            })?;
            b.add(g);
        }
        let set = b.build().map_err(|source| GlobError {
            index: 0,
            glob: String::new(),
            source,
        })?;
        Ok(Classifier {
            scratch: Vec::with_capacity(rules.len()),
            rules,
            set,
            qos,
            default_priority,
        })
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The class of a new cgroup and where its priority came from.
    pub fn classify_with_source(&mut self, meta: &CgroupMeta<'_>) -> (Class, Source) {
        let inherited = meta.parent_class;
        let mut protected = meta.xattr_protected || inherited.is_some_and(|c| c.protected);

        self.scratch.clear();
        self.set.matches_into(meta.path, &mut self.scratch);
        self.scratch.sort_unstable();
        let first_rule = self.scratch.first().copied();
        // Protection from any matching rule, priority from the first one that has one.
        for &i in &self.scratch {
            protected |= self.rules[i].protected;
        }
        let rule_priority = self
            .scratch
            .iter()
            .find_map(|&i| self.rules[i].priority.map(|p| (i, p)));

        let (priority, source) = if let Some(p) = meta.xattr_priority {
            (p, Source::Xattr)
        } else if let Some((i, p)) = rule_priority {
            (p, Source::Rule(i))
        } else if let Some((q, p)) = self.qos_here(meta) {
            (p, Source::Qos(q))
        } else if let Some(c) = inherited {
            (c.priority, Source::Inherited)
        } else {
            (self.default_priority, Source::Default)
        };
        let source = match (source, first_rule) {
            // A protection-only rule still names where the class came from
            // when nothing above it set the priority.
            (Source::Inherited | Source::Default, Some(i)) if protected => Source::Rule(i),
            (s, _) => s,
        };
        (
            Class {
                priority,
                protected,
            },
            source,
        )
    }

    /// The class of a new cgroup.
    pub fn classify(&mut self, meta: &CgroupMeta<'_>) -> Class {
        self.classify_with_source(meta).0
    }

    /// The QoS priority that applies *at* this cgroup (see the module docs).
    fn qos_here(&self, meta: &CgroupMeta<'_>) -> Option<(QosClass, i32)> {
        let qos = self.qos?;
        let (class, establishing) = kube_qos(meta.path)?;
        if establishing || meta.parent_class.is_none() {
            Some((class, qos.of(class)))
        } else {
            None
        }
    }
}

/// The Kubernetes QoS class of a cgroup from its hierarchy path, and whether
/// this cgroup is the one that establishes it (the QoS-level slice, or a
/// guaranteed pod directly under kubepods) rather than a descendant.
///
/// Understands the cgroupfs driver (`/kubepods/besteffort/pod…`,
/// `/kubepods/burstable/pod…`, `/kubepods/pod…` for guaranteed) and the
/// systemd driver (`/kubepods.slice/kubepods-besteffort.slice/…`,
/// `kubepods-burstable.slice`, `kubepods-pod….slice`), also under a custom
/// `--cgroup-root` (`kubelet.slice/kubelet-kubepods.slice/…`).
pub fn kube_qos(path: &Path) -> Option<(QosClass, bool)> {
    let comps: Vec<&str> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    let k = comps
        .iter()
        .position(|c| *c == "kubepods" || c.ends_with("kubepods.slice"))?;
    let next = comps.get(k + 1)?;
    let establishing = comps.len() == k + 2;
    let class = if *next == "besteffort" || next.ends_with("-besteffort.slice") {
        QosClass::BestEffort
    } else if *next == "burstable" || next.ends_with("-burstable.slice") {
        QosClass::Burstable
    } else if next.starts_with("pod") || (next.ends_with(".slice") && next.contains("kubepods-pod"))
    {
        QosClass::Guaranteed
    } else {
        return None;
    };
    Some((class, establishing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta<'a>(path: &'a str, parent: Option<Class>) -> CgroupMeta<'a> {
        CgroupMeta {
            path: Path::new(path),
            depth: 1,
            xattr_priority: None,
            xattr_protected: false,
            parent_class: parent,
        }
    }

    #[test]
    fn qos_from_both_drivers() {
        let cases = [
            ("/kubepods/besteffort", Some((QosClass::BestEffort, true))),
            (
                "/kubepods/besteffort/pod1/ctr",
                Some((QosClass::BestEffort, false)),
            ),
            (
                "/kubepods/burstable/podx",
                Some((QosClass::Burstable, false)),
            ),
            ("/kubepods/pod123", Some((QosClass::Guaranteed, true))),
            ("/kubepods/pod123/c1", Some((QosClass::Guaranteed, false))),
            (
                "/kubepods.slice/kubepods-besteffort.slice",
                Some((QosClass::BestEffort, true)),
            ),
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice",
                Some((QosClass::Burstable, false)),
            ),
            (
                "/kubepods.slice/kubepods-pod9.slice",
                Some((QosClass::Guaranteed, true)),
            ),
            (
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice",
                Some((QosClass::BestEffort, true)),
            ),
            ("/kubepods", None),
            ("/system.slice/kubelet.service", None),
        ];
        for (p, want) in cases {
            assert_eq!(kube_qos(Path::new(p)), want, "{p}");
        }
    }

    #[test]
    fn precedence_xattr_rule_qos_inherited() {
        let mut c = Classifier::new(
            vec![
                Rule {
                    glob: "/kubepods/besteffort/pod-important/**".into(),
                    priority: Some(500),
                    protected: false,
                },
                Rule {
                    glob: "/kubepods/besteffort".into(),
                    priority: Some(-7),
                    protected: false,
                },
                Rule {
                    glob: "/system.slice/*.service".into(),
                    priority: None,
                    protected: true,
                },
            ],
            Some(QosPriorities::default()),
            0,
        )
        .unwrap();
        // Rule beats QoS.
        let (k, s) = c.classify_with_source(&meta("/kubepods/besteffort", Some(Class::default())));
        assert_eq!((k.priority, s), (-7, Source::Rule(1)));
        // QoS where no rule matches.
        let (k, s) = c.classify_with_source(&meta("/kubepods/burstable", Some(Class::default())));
        assert_eq!((k.priority, s), (-100, Source::Qos(QosClass::Burstable)));
        // Below the QoS level: inherited.
        let parent = Class {
            priority: -7,
            protected: false,
        };
        let (k, s) = c.classify_with_source(&meta("/kubepods/besteffort/pod1", Some(parent)));
        assert_eq!((k.priority, s), (-7, Source::Inherited));
        // `*` does not cross `/`, `**` does.
        let k = c.classify(&meta("/system.slice/a.service", Some(Class::default())));
        assert!(k.protected);
        let k = c.classify(&meta("/system.slice/a.service/x", Some(Class::default())));
        assert!(!k.protected, "* stays within a component");
        let k = c.classify(&meta(
            "/kubepods/besteffort/pod-important/ctr",
            Some(parent),
        ));
        assert_eq!(k.priority, 500);
        // Xattr beats the rule.
        let mut m = meta("/kubepods/besteffort/pod-important/ctr", Some(parent));
        m.xattr_priority = Some(3);
        let (k, s) = c.classify_with_source(&m);
        assert_eq!((k.priority, s), (3, Source::Xattr));
        // Protection inherits and cannot be removed below.
        let p = Class {
            priority: 1,
            protected: true,
        };
        assert!(c.classify(&meta("/anything", Some(p))).protected);
        // The root gets the default, or its QoS when below kubepods.
        assert_eq!(c.classify(&meta("/", None)).priority, 0);
        assert_eq!(
            c.classify(&meta("/kubepods/burstable/pod3", None)).priority,
            -100
        );
    }

    #[test]
    fn bad_glob_names_the_rule() {
        let e = Classifier::new(
            vec![Rule {
                glob: "/a/[".into(),
                priority: None,
                protected: false,
            }],
            None,
            0,
        )
        .unwrap_err();
        assert_eq!(e.index, 0);
        assert!(e.to_string().contains("/a/["), "{e}");
    }
}
