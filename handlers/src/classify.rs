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
//! 3. **The Kubernetes QoS class**, read off the path below one of the
//!    operator's kubelet pod roots (`[handler.qos] roots`, by default
//!    `/kubepods` and `/kubepods.slice`; a `kubepods` directory anywhere
//!    else is a name any tenant can choose): BestEffort
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
//!
//! **Delegated subtrees.** Below a directory owned by someone other than
//! root or the managed root's owner (systemd `user@.service`, a rootless
//! container), a tenant chooses the names and the `user.` xattrs: there a
//! cgroup's tier may fall below its parent's but never rise above it, and
//! it is protected only if its parent is.

use std::path::{Component, Path, PathBuf};

use oomkit::engine::{CgroupMeta, Class};

use crate::glob::{PathGlob, PatternError};

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
    pub source: PatternError,
}

/// Compiles a glob on hierarchy paths ([`crate::glob`]; the daemon checks
/// config globs with it).
pub fn path_glob(glob: &str) -> Result<PathGlob, PatternError> {
    PathGlob::new(glob)
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
    /// `rules[i].glob`, compiled.
    globs: Vec<PathGlob>,
    qos: Option<QosPriorities>,
    kube_roots: Vec<PathBuf>,
    default_priority: i32,
    scratch: Vec<usize>,
}

fn default_kube_roots() -> Vec<PathBuf> {
    DEFAULT_KUBE_ROOTS.iter().map(PathBuf::from).collect()
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier {
            rules: Vec::new(),
            globs: Vec::new(),
            qos: Some(QosPriorities::default()),
            kube_roots: default_kube_roots(),
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
        let globs = rules
            .iter()
            .enumerate()
            .map(|(index, r)| {
                path_glob(&r.glob).map_err(|source| GlobError {
                    index,
                    glob: r.glob.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Classifier {
            scratch: Vec::with_capacity(rules.len()),
            rules,
            globs,
            qos,
            kube_roots: default_kube_roots(),
            default_priority,
        })
    }

    /// Reads QoS classes only below these kubelet pod roots (hierarchy
    /// paths) instead of [`DEFAULT_KUBE_ROOTS`].
    pub fn with_kube_roots(mut self, roots: Vec<PathBuf>) -> Self {
        self.kube_roots = roots;
        self
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
        let matching = self
            .globs
            .iter()
            .enumerate()
            .filter(|(_, g)| g.is_match(meta.path));
        self.scratch.extend(matching.map(|(i, _)| i));
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
        // Inside a delegated subtree names and xattrs are the tenant's
        // choice: they may lower a tier, never raise it above the parent's,
        // and protection comes only from above.
        let (priority, protected, source) = match (meta.delegated, inherited) {
            (true, Some(parent)) if priority > parent.priority => {
                (parent.priority, parent.protected, Source::Inherited)
            }
            (true, Some(parent)) => (priority, parent.protected, source),
            _ => (priority, protected, source),
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
        let (class, establishing) = kube_qos(meta.path, &self.kube_roots)?;
        if establishing || meta.parent_class.is_none() {
            Some((class, qos.of(class)))
        } else {
            None
        }
    }
}

/// The kubelet's own cgroup roots for pods (`--cgroup-root=/` with the
/// cgroupfs or the systemd driver): where QoS is read unless configured.
pub const DEFAULT_KUBE_ROOTS: [&str; 2] = ["/kubepods", "/kubepods.slice"];

/// The Kubernetes QoS class of a cgroup from its hierarchy path, and whether
/// this cgroup is the one that establishes it (the QoS-level slice, or a
/// guaranteed pod directly under kubepods) rather than a descendant.
///
/// Only paths below one of `roots` (the kubelet's pod roots, e.g.
/// `/kubepods` or `/kubepods.slice`, or `/kubelet.slice/kubelet-kubepods.slice`
/// under a custom `--cgroup-root`) have a class: a `kubepods` directory
/// anywhere else is a name a tenant with a delegated subtree can choose.
///
/// Below a root, understands the cgroupfs driver (`besteffort/pod…`,
/// `burstable/pod…`, `pod…` for guaranteed) and the systemd driver
/// (`kubepods-besteffort.slice/…`, `kubepods-burstable.slice`,
/// `kubepods-pod….slice`). Names are compared as bytes.
pub fn kube_qos(path: &Path, roots: &[PathBuf]) -> Option<(QosClass, bool)> {
    use std::os::unix::ffi::OsStrExt;
    let rest = roots.iter().find_map(|r| path.strip_prefix(r).ok())?;
    let mut comps = rest.components();
    let next = match comps.next()? {
        Component::Normal(s) => s.as_bytes(),
        _ => return None,
    };
    let establishing = comps.next().is_none();
    let class = if next == b"besteffort" || next.ends_with(b"-besteffort.slice") {
        QosClass::BestEffort
    } else if next == b"burstable" || next.ends_with(b"-burstable.slice") {
        QosClass::Burstable
    } else if next.starts_with(b"pod")
        || (next.ends_with(b".slice") && next.windows(12).any(|w| w == b"kubepods-pod"))
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
            delegated: false,
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
        let roots: Vec<PathBuf> = [
            "/kubepods",
            "/kubepods.slice",
            "/kubelet.slice/kubelet-kubepods.slice",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        for (p, want) in cases {
            assert_eq!(kube_qos(Path::new(p), &roots), want, "{p}");
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

    /// Issue 10, defect 1: a tenant with a delegated subtree could name a
    /// cgroup `kubepods/pod-x` anywhere and get the Guaranteed tier, above
    /// system services. QoS is read only below the operator's kubelet roots.
    #[test]
    fn qos_only_below_configured_kubelet_roots() {
        let mut c = Classifier::new(vec![], Some(QosPriorities::default()), 0).unwrap();
        let user = Class::default();
        for spoof in [
            "/user.slice/user-1000.slice/user@1000.service/app.slice/kubepods/pod-x",
            "/user.slice/kubepods/pod-x",
            "/user.slice/u.slice/kubepods.slice/kubepods-pod1.slice",
            "/system.slice/kubepods/burstable",
        ] {
            let (k, s) = c.classify_with_source(&meta(spoof, Some(user)));
            assert_eq!((k.priority, s), (0, Source::Inherited), "{spoof}");
        }
        // The default roots are the kubelet's own defaults.
        let (k, _) = c.classify_with_source(&meta("/kubepods/pod1", Some(user)));
        assert_eq!(k.priority, 100);
        // A custom --cgroup-root counts only once configured.
        let custom = "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice";
        assert_eq!(c.classify(&meta(custom, Some(user))).priority, 0);
        let mut c = c.with_kube_roots(vec!["/kubelet.slice/kubelet-kubepods.slice".into()]);
        assert_eq!(c.classify(&meta(custom, Some(user))).priority, -200);
        assert_eq!(c.classify(&meta("/kubepods/pod1", Some(user))).priority, 0);
    }

    /// Issue 10, defect 1: inside a subtree owned by someone else than root
    /// (or the managed root's owner) — a delegated one, whose names and
    /// xattrs the tenant chooses — a tier never rises above the parent's,
    /// and protection comes only from above.
    #[test]
    fn delegated_subtrees_never_rise_above_their_parent() {
        let mut c = Classifier::new(
            vec![
                Rule {
                    glob: "/**/*important*".into(),
                    priority: Some(500),
                    protected: false,
                },
                Rule {
                    glob: "/**/sshd.service".into(),
                    priority: None,
                    protected: true,
                },
                Rule {
                    glob: "/user.slice/**/batch*".into(),
                    priority: Some(-50),
                    protected: false,
                },
            ],
            Some(QosPriorities::default()),
            0,
        )
        .unwrap();
        let parent = Class {
            priority: 10,
            protected: false,
        };
        let tenant = |path: &'static str| {
            let mut m = meta(path, Some(parent));
            m.delegated = true;
            m
        };
        let k = c.classify(&tenant("/user.slice/u/very-important"));
        assert_eq!((k.priority, k.protected), (10, false), "rule rise capped");
        let k = c.classify(&tenant("/user.slice/u/sshd.service"));
        assert!(!k.protected, "a tenant's name cannot protect it");
        let mut m = tenant("/user.slice/u/x");
        m.xattr_priority = Some(1000);
        m.xattr_protected = true;
        let k = c.classify(&m);
        assert_eq!((k.priority, k.protected), (10, false), "xattr rise capped");
        let k = c.classify(&tenant("/kubepods/pod1"));
        assert_eq!(k.priority, 10, "QoS rise capped");
        // Lowering is always allowed, and protection still inherits.
        assert_eq!(c.classify(&tenant("/user.slice/u/batch1")).priority, -50);
        let mut m = tenant("/user.slice/u/y");
        m.parent_class = Some(Class {
            priority: 10,
            protected: true,
        });
        assert!(c.classify(&m).protected);
        // Not delegated: the operator's rules apply in full.
        assert_eq!(
            c.classify(&meta("/srv/very-important", Some(parent)))
                .priority,
            500
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
