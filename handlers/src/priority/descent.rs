//! Cgroup-granularity selection that reads only the cgroups that can win.
//!
//! Reading `memory.current` of every cgroup in scope is what a decision
//! over 10,000 cgroups costs (the policy itself is microseconds), so the
//! search reads as little as the policy's order allows:
//!
//! - **Tiers first.** Class (tier, protection) is known without reading
//!   anything. Tiers are searched lowest first, and the search stops at the
//!   first tier whose largest candidate is big enough
//!   ([`PriorityKillConfig::min_victim_bytes`](super::PriorityKillConfig));
//!   no cgroup of a higher tier is read.
//! - **The hierarchy bounds.** cgroup v2 charges a page to a cgroup and to
//!   every ancestor, so a cgroup's `memory.current` (and swap) is at least
//!   that of any descendant. Within a tier the search is best-first from
//!   the scope down, through the cgroups that lead to a candidate of the
//!   tier, largest bound first; a subtree whose bound is below the best
//!   candidate found (or below `min_victim_bytes`, once a smaller fallback
//!   is known) is never read.
//!
//! The victim is the one the plain rule picks — big enough first, then the
//! lowest tier, then the largest, then the first in the view's order —
//! provided the numbers read obey the hierarchy, as the kernel's do; the
//! tests compare it with a full scan on random trees. Storage is sized at
//! construction: no allocation on the decision path.

use std::collections::{BinaryHeap, TryReserveError};

use oomkit::engine::{CgroupId, View};

use super::Choice;

/// A cgroup on the way to a candidate, not a candidate itself.
const ON_WAY: u32 = POS;

/// The low 24 bits of a mark: a candidate's position in the view's
/// cgroups, or [`ON_WAY`]; the high 8 bits: the round that wrote it.
const POS: u32 = (1 << 24) - 1;

/// The last round before the marks are cleared and counting starts again.
const LAST_ROUND: u32 = 255;

/// No round (rounds start at 1); not zero, so the table is written when made.
const UNMARKED: u32 = ON_WAY;

fn mark(round: u32, pos: u32) -> u32 {
    (round << 24) | pos
}

/// A cgroup to look at, by the most it can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    bound: u64,
    id: CgroupId,
}

/// The scratch of one search, sized once.
#[derive(Debug, Clone)]
pub(super) struct Descent {
    /// Per cgroup slot, 4 bytes: the round and position of [`mark`]. A
    /// slot marked with the current round leads to a
    /// candidate of the tier being searched.
    marks: Vec<u32>,
    round: u32,
    /// The candidates: (tier, position in the view's cgroups).
    cands: Vec<(i32, u32)>,
    heap: BinaryHeap<Entry>,
}

/// What a cgroup can hold: its usage plus swap, if read.
fn footprint(view: &mut View<'_>, id: CgroupId) -> Option<u64> {
    view.usage(id)
        .and_then(|s| s.current.is_some().then(|| s.footprint()))
}

impl Descent {
    pub(super) fn with_capacity(n: usize) -> Self {
        // Written, not left to a zeroed allocation: a search may mark any
        // slot, and its page must not first be allocated during an OOM.
        let marks = vec![UNMARKED; n];
        Descent {
            marks,
            round: 0,
            cands: Vec::with_capacity(n),
            heap: BinaryHeap::with_capacity(n),
        }
    }

    /// [`Descent::with_capacity`], reporting a failed reservation.
    pub(super) fn try_with_capacity(n: usize) -> Result<Self, TryReserveError> {
        let mut marks = Vec::new();
        marks.try_reserve_exact(n)?;
        marks.resize(n, UNMARKED);
        let mut cands = Vec::new();
        cands.try_reserve_exact(n)?;
        let mut heap = Vec::new();
        heap.try_reserve_exact(n)?;
        Ok(Descent {
            marks,
            round: 0,
            cands,
            heap: BinaryHeap::from(heap),
        })
    }

    /// The victim among the view's cgroups to which `candidate` gives a
    /// tier (`None`: there is none, or none could be read). `TooMany` when
    /// a cgroup's slot is past the table: the caller then scans everything.
    pub(super) fn choose(
        &mut self,
        view: &mut View<'_>,
        min: u64,
        candidate: impl Fn(&View<'_>, CgroupId) -> Option<i32>,
    ) -> Result<Option<Choice>, TooMany> {
        let scope = match view.scope() {
            Some(s) if view.cgroups().first() == Some(&s) => s,
            _ => return Ok(None),
        };
        self.cands.clear();
        for pos in 0..view.cgroups().len() {
            let id = view.cgroups()[pos];
            if id.index() >= self.marks.len() || pos >= ON_WAY as usize {
                return Err(TooMany);
            }
            if let Some(priority) = candidate(view, id) {
                self.cands.push((priority, pos as u32));
            }
        }
        self.cands.sort_unstable();
        // The best of the lowest tier that has any, should no tier have
        // a big enough one.
        let mut fallback: Option<Choice> = None;
        let mut start = 0;
        while start < self.cands.len() {
            let priority = self.cands[start].0;
            let end = start
                + self.cands[start..]
                    .iter()
                    .take_while(|c| c.0 == priority)
                    .count();
            let floor = if fallback.is_some() { min } else { 0 };
            if let Some(c) = self.best_in_tier(view, scope, start..end, floor) {
                if c.footprint >= min {
                    return Ok(Some(c));
                }
                fallback.get_or_insert(c);
            }
            start = end;
        }
        Ok(fallback)
    }

    fn next_round(&mut self) -> u32 {
        self.round += 1;
        if self.round > LAST_ROUND {
            self.marks.fill(UNMARKED);
            self.round = 1;
        }
        self.round
    }

    /// Marks the candidates `range` of one tier and every cgroup between
    /// them and `scope`.
    fn mark(&mut self, view: &View<'_>, scope: CgroupId, range: std::ops::Range<usize>) -> u32 {
        let round = self.next_round();
        for k in range {
            let pos = self.cands[k].1;
            let id = view.cgroups()[pos as usize];
            self.marks[id.index()] = mark(round, pos);
            let mut cur = id;
            while cur != scope {
                let Some(p) = view.parent(cur) else { break };
                let Some(m) = self.marks.get_mut(p.index()) else {
                    break;
                };
                if *m >> 24 == round {
                    break;
                }
                *m = mark(round, ON_WAY);
                cur = p;
            }
        }
        round
    }

    /// The largest candidate of one tier (the first in view order among
    /// equals) with a footprint of at least `floor`, read best-first.
    fn best_in_tier(
        &mut self,
        view: &mut View<'_>,
        scope: CgroupId,
        range: std::ops::Range<usize>,
        floor: u64,
    ) -> Option<Choice> {
        let priority = self.cands.get(range.start)?.0;
        let round = self.mark(view, scope, range);
        self.heap.clear();
        self.push(view, scope, round, u64::MAX);
        let mut best: Option<(Choice, u32)> = None;
        while let Some(Entry { bound, id }) = self.heap.pop() {
            if bound < floor || best.is_some_and(|(b, _)| bound < b.footprint) {
                break; // nothing left can be as large
            }
            let pos = self.marks[id.index()] & POS;
            if pos != ON_WAY {
                // A candidate: its bound is its own footprint.
                let better = best.is_none_or(|(b, at)| {
                    bound > b.footprint || (bound == b.footprint && pos < at)
                });
                if better {
                    let c = Choice {
                        cgroup: id,
                        pid: None,
                        priority,
                        footprint: bound,
                        comm: [0; 16],
                    };
                    best = Some((c, pos));
                }
                continue;
            }
            for j in 0..view.children(id).len() {
                let child = view.children(id)[j];
                self.push(view, child, round, bound);
            }
        }
        best.map(|(c, _)| c)
    }

    /// Queues `id` if it leads to a candidate of this round: a candidate
    /// by its footprint (not at all when unreadable: gone), a cgroup on
    /// the way by its own, or by its parent's `bound` when unreadable.
    fn push(&mut self, view: &mut View<'_>, id: CgroupId, round: u32, bound: u64) {
        let Some(&m) = self.marks.get(id.index()) else {
            return;
        };
        let pos = m & POS;
        if m >> 24 != round {
            return;
        }
        let bound = match (footprint(view, id), pos) {
            (Some(f), _) => f,
            (None, ON_WAY) => bound,
            (None, _) => return,
        };
        self.heap.push(Entry { bound, id });
    }
}

/// A cgroup's slot is past the search's table.
#[derive(Debug, Clone, Copy)]
pub(super) struct TooMany;
