//! Named points of a shard's background work (flush passes, seals,
//! merges) where a test hook may pause, count or delay it.
//!
//! Tests use them to make a run depend on its seed alone: a scheduler
//! that parks the flush at every step and lets it go one step at a time
//! decides the interleaving of the flush and the writers, so a fault seed
//! replays exactly (tests/common/lockstep.rs); a crash test counts steps
//! and kills its own process at step k. Without a hook a step costs one
//! branch.
//!
//! The flush never stops at a step while it holds the segment lock or a
//! segment's state lock, so a paused flush never blocks a writer.

use std::fmt;
use std::sync::Arc;

/// Where the background work is. Steps inside a pass come in this order;
/// a seal or a merge runs between passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// About to look for work (a request or the interval).
    Idle,
    /// A pass has captured the segments it flushes.
    PassStart,
    /// The appendable log's new records are about to be written.
    LogWrite,
    /// They are written; their fdatasync comes next.
    LogSync,
    /// Synced; the log's state file is replaced next.
    LogState,
    /// An immutable segment's deletion side-car is about to be rewritten.
    SideCar(u64),
    /// The pass is done; the WAL is acknowledged next.
    Ack,
    /// A seal is about to freeze the appendable segment.
    Seal,
    /// The frozen (or merged) segment's table is about to be written.
    TableWrite(u64),
    /// The table is durable; it replaces its sources in the segment set next.
    TableSwap(u64),
    /// Files the new table replaced are about to be removed.
    RemoveReplaced(u64),
    /// A merge is about to start.
    Merge,
    /// The manifest (the list of live segment files) is about to be replaced.
    Manifest,
}

/// Receives every step of a shard's background work, on the thread that
/// runs it. `at` may block (a scheduler), sleep (an explorer) or end the
/// process (a crash test).
pub trait StepHook: Send + Sync {
    fn at(&self, step: Step);

    /// True for a scheduler that must always know where the flush is: the
    /// flush then never blocks waiting for work, it polls, passing
    /// `Step::Idle` before each look, and the WAL prepares no segment in
    /// the background (every file operation happens at a known step).
    fn owns_schedule(&self) -> bool {
        false
    }
}

/// A shard's hook, if any (a shard option).
#[derive(Clone, Default)]
pub struct Steps(Option<Arc<dyn StepHook>>);

impl Steps {
    pub fn new(hook: Arc<dyn StepHook>) -> Steps {
        Steps(Some(hook))
    }

    #[inline]
    pub fn at(&self, step: Step) {
        if let Some(h) = &self.0 {
            h.at(step);
        }
    }

    pub fn owns_schedule(&self) -> bool {
        self.0.as_ref().is_some_and(|h| h.owns_schedule())
    }
}

impl fmt::Debug for Steps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Steps(hook)" } else { "Steps(none)" })
    }
}
