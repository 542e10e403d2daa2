//! The shard's write gate: the one point where a shard's writes are
//! ordered.
//!
//! Writers queue their batches here. The first writer to find no leader
//! leads one group: it takes the oldest queued batches (as many as fit one
//! WAL frame), checks each against the segments as the batches before it
//! leave them, logs the accepted ones as a single WAL frame (versions
//! assigned in queue order, one write for the whole group), applies them
//! in version order under one hold of the segments' write lock, hands
//! every writer its outcome, and passes the lead to the oldest batch still
//! queued. Writers therefore never take turns on the segments lock or on
//! the WAL one frame at a time, and readers (who take the segments' read
//! lock) still see each batch whole or not at all.
//!
//! Several batches in one frame: a frame is recovered all or nothing, so a
//! crash loses either all of a group or none of it. No batch of a group is
//! acknowledged before the frame is written (and, in `sync` durability,
//! made durable), so this is no weaker than one frame per batch.
//!
//! Whatever must see a shard's writes stop at an exact version (a
//! transfer's final drain, fenced writes) runs as a leader here.

use super::op::{OpRef, BATCH_RECORD_HEADER};
use crate::error::{Error, Result};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;

/// One writer's batch in the queue.
pub struct Batch {
    /// The operations' WAL records, back to back; `ends[i]` is where the
    /// record of operation i ends.
    records: Vec<u8>,
    ends: Vec<usize>,
    /// Bytes the batch adds to a group's frame.
    frame_bytes: u64,
    turn: Mutex<Turn>,
    wake: Condvar,
}

enum Turn {
    Queued,
    /// This writer leads the next group.
    Lead,
    /// Versions of the first and the last operation, or why it failed.
    Done(Result<(u64, u64)>),
}

impl Batch {
    /// Encodes `ops` (already checked with `op::check_write`).
    pub fn new(ops: &[OpRef]) -> Arc<Batch> {
        let mut records = Vec::with_capacity(ops.iter().map(|o| o.record_len() as usize).sum());
        let mut ends = Vec::with_capacity(ops.len());
        for op in ops {
            op.encode_into(&mut records);
            ends.push(records.len());
        }
        let frame_bytes = (records.len() + ops.len() * BATCH_RECORD_HEADER) as u64;
        Arc::new(Batch { records, ends, frame_bytes, turn: Mutex::new(Turn::Queued), wake: Condvar::new() })
    }

    /// The operations, decoded from the records (they were encoded from
    /// checked operations, so they decode).
    pub fn ops(&self) -> impl Iterator<Item = OpRef<'_>> {
        self.records_iter().map(|r| OpRef::decode(r).expect("a record keel encoded decodes"))
    }

    pub fn records_iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter().copied()).map(|(s, e)| &self.records[s..e])
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    fn finish(&self, outcome: Result<(u64, u64)>) {
        *self.turn.lock() = Turn::Done(outcome);
        self.wake.notify_one();
    }
}

/// The queue and whether a leader is at work.
#[derive(Default)]
pub struct Gate {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Invariant: while `leading` is false the queue is empty, so a writer
    /// that finds no leader is the oldest queued batch.
    leading: bool,
    queue: Vec<Arc<Batch>>,
}

/// What a leader does with its group: log and apply the batches, giving
/// each its outcome, in order. `frame_limit` caps a group's frame bytes.
pub trait Leader {
    fn frame_limit(&self) -> u64;
    fn run_group(&self, group: &[Arc<Batch>]) -> Vec<Result<(u64, u64)>>;
}

impl Gate {
    /// Queues `batch` and returns its outcome once a leader (possibly this
    /// caller) has logged and applied it.
    pub fn write(&self, batch: Arc<Batch>, leader: &impl Leader) -> Result<(u64, u64)> {
        let lead_now = {
            let mut st = self.state.lock();
            st.queue.push(batch.clone());
            !std::mem::replace(&mut st.leading, true)
        };
        if !lead_now {
            let mut turn = batch.turn.lock();
            loop {
                match std::mem::replace(&mut *turn, Turn::Queued) {
                    Turn::Queued => batch.wake.wait(&mut turn),
                    Turn::Lead => break,
                    Turn::Done(outcome) => return outcome,
                }
            }
        }
        self.lead(&batch, leader);
        match std::mem::replace(&mut *batch.turn.lock(), Turn::Queued) {
            Turn::Done(outcome) => outcome,
            _ => unreachable!("a leader's own batch is in its group"),
        }
    }

    /// Runs one group as its leader, then passes the lead on.
    fn lead(&self, own: &Arc<Batch>, leader: &impl Leader) {
        let group = {
            let mut st = self.state.lock();
            debug_assert!(st.leading && Arc::ptr_eq(&st.queue[0], own), "the leader is the oldest queued batch");
            let limit = leader.frame_limit();
            let mut bytes = 0;
            let take = st
                .queue
                .iter()
                .take_while(|b| {
                    bytes += b.frame_bytes;
                    bytes <= limit
                })
                .count()
                .max(1);
            st.queue.drain(..take).collect::<Vec<_>>()
        };
        let outcomes = leader.run_group(&group);
        debug_assert_eq!(outcomes.len(), group.len());
        let next = {
            let mut st = self.state.lock();
            match st.queue.first() {
                Some(b) => Some(b.clone()),
                None => {
                    st.leading = false;
                    None
                }
            }
        };
        // Outcomes after the hand-over is decided: a writer woken with its
        // outcome may queue again at once and must find the state settled.
        for (b, outcome) in group.iter().zip(outcomes) {
            if !Arc::ptr_eq(b, own) {
                b.finish(outcome);
            } else {
                *b.turn.lock() = Turn::Done(outcome);
            }
        }
        if let Some(b) = next {
            *b.turn.lock() = Turn::Lead;
            b.wake.notify_one();
        }
    }
}

/// The outcome every batch of a group gets when the group fails as a whole
/// (the WAL refused its frame).
pub fn all_failed(group: &[Arc<Batch>], e: &Error) -> Vec<Result<(u64, u64)>> {
    group.iter().map(|_| Err(e.clone())).collect()
}
