//! The [`Handler`] trait: policy as plain Rust, with no I/O of its own.

use super::plan::Plan;
use super::snapshot::View;
use super::tree::{CgroupMeta, Class};

/// A userspace OOM policy.
///
/// The loop calls [`Handler::classify`] once per cgroup when it appears (off
/// the hot path: glob matching and string work are fine), and
/// [`Handler::decide`] when memory trouble needs an answer (on the hot path:
/// write into `plan`, read through `view`, and do not allocate).
pub trait Handler: Send {
    /// A short name for logs and incident records.
    fn name(&self) -> &'static str;

    /// The class of a new cgroup. The default believes the trusted xattrs
    /// and otherwise inherits the parent's class.
    fn classify(&mut self, meta: &CgroupMeta<'_>) -> Class {
        let inherited = meta.parent_class.unwrap_or_default();
        Class {
            priority: meta.xattr_priority.unwrap_or(inherited.priority),
            protected: meta.xattr_protected || inherited.protected,
        }
    }

    /// Decide what to do. Leave `plan` empty to do nothing.
    fn decide(&mut self, view: &mut View<'_>, plan: &mut Plan);

    /// Called on every loop tick while [`Handler::wants_ticks`] is true and no
    /// episode is running (a throttler releases limits here as pressure falls).
    fn on_quiet_tick(&mut self, view: &mut View<'_>, plan: &mut Plan) {
        let _ = (view, plan);
    }

    /// Called before the loop stops or this handler is replaced (reload),
    /// repeatedly until it plans nothing:
    /// plan the steps that undo what the handler changed (raise throttled
    /// `memory.high` back, thaw). Kill steps are ignored here.
    fn on_shutdown(&mut self, view: &mut View<'_>, plan: &mut Plan) {
        let _ = (view, plan);
    }

    /// Whether [`Handler::on_quiet_tick`] should be called.
    fn wants_ticks(&self) -> bool {
        false
    }

    /// Whether this handler reads usage through [`View::usage`] as it
    /// needs it, instead of the loop reading every cgroup in scope before
    /// asking. A handler that ranks by tier before size reads only the
    /// tiers it gets to; with `false` (the default) [`View::stats`] has
    /// every cgroup's usage.
    fn usage_on_demand(&self) -> bool {
        false
    }
}

impl<H: Handler + ?Sized> Handler for Box<H> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn classify(&mut self, meta: &CgroupMeta<'_>) -> Class {
        (**self).classify(meta)
    }
    fn decide(&mut self, view: &mut View<'_>, plan: &mut Plan) {
        (**self).decide(view, plan)
    }
    fn on_quiet_tick(&mut self, view: &mut View<'_>, plan: &mut Plan) {
        (**self).on_quiet_tick(view, plan)
    }
    fn on_shutdown(&mut self, view: &mut View<'_>, plan: &mut Plan) {
        (**self).on_shutdown(view, plan)
    }
    fn wants_ticks(&self) -> bool {
        (**self).wants_ticks()
    }
    fn usage_on_demand(&self) -> bool {
        (**self).usage_on_demand()
    }
}
