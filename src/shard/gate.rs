//! The shard's write gate: the one point where a shard's writes are
//! ordered.
//!
//! Writers queue their batches here. The first writer to find no leader
//! leads one group: it takes the oldest queued batches (as many as fit one
//! WAL frame), and the shard logs them as a single WAL frame (versions
//! assigned in queue order, one write for the whole group) and applies
//! them in version order under one hold of the segments' write lock (after
//! a crowd, below, a lead does this for a few frames in a row). In
//! `sync` durability the leader then waits for its group's fdatasync while
//! still leading: writers arriving meanwhile queue, and the next leader
//! logs them all in one frame for the next sync. It then passes the lead to
//! the oldest batch still queued and hands every writer of its group its
//! outcome. Writers therefore never take turns on the WAL one frame at a
//! time, sleep once per write, and readers (who take the segments' read
//! lock) still see each batch whole or not at all.
//!
//! Why the sync is waited for under the lead: when the lead passed on
//! before the sync, the next leader logged whoever had queued by then, so
//! each fdatasync covered several small frames, each its own wake-up,
//! write and lock round (16 writers: 1.5 batches a frame, 11 a sync). Held
//! through the sync, a frame is a sync: 13.6 batches each, a third less
//! CPU, and 64 writers put 20-30 % more.
//!
//! Gathering: a leader that takes over a busy gate (its last group had
//! more than one batch, or others are queued now) first yields until as
//! many batches are queued as the last lead took, so the writers its
//! predecessor just released rejoin before it logs: one sync then covers
//! nearly every writer instead of the groups alternating at half each. A
//! lone writer never yields. After that the leader yields on while new
//! batches keep arriving, so two groups of half the writers each merge
//! again. Both waits are bounded (`GATHER_MAX`) and end at the first slow
//! yield (`futex::yield_for`), so fewer writers than before, or a machine
//! busy with other work, cost a lead little. Gathering used to be only
//! the second part, which ended at the first yield that saw no new batch:
//! in alternating runs on one shard (2026-12-06), the two parts made 16
//! writers 1.10× as fast (median of four pairs, 0.96–1.27) and 64
//! writers 1.00× (0.96–1.22); beside two busy loops 16 writers came out
//! even (3.5–3.9 K puts/s against 3.3–4.8 K) and 64 writers lower
//! (8.4–8.9 K against 9.5–10.0 K).
//!
//! Crowds: a group of more than `futex::CROWD` writers is woken with one
//! system call (`futex::Sleepers::wake_all`) instead of one by one, and the
//! leader that follows a crowd, once its first frame is logged, logs what
//! queued meanwhile as further frames before its one sync. With 64 writers
//! on one shard (groups of ≈ 58), waking them one by one took the leader
//! ≈ 160 µs, longer than the fdatasync, and the next leader's gathering
//! waited for the last of them: in alternating runs, 143–154 K puts/s one
//! by one against 164–172 K/s with both (the single wake alone 155–167 K,
//! the further frames alone ≈ 158 K). Smaller groups are still woken one
//! by one, the next leader first: woken all at once, 16 writers came back
//! in a burst the gathering leader mistook for its end, and groups
//! alternated at half size (≈ 9 instead of ≈ 14, 44–62 K puts/s against
//! 68–72 K).
//!
//! Several batches in one frame, several frames in one lead: a frame is
//! recovered all or nothing, and a lead's frames follow one another in the
//! WAL, so a crash keeps a prefix of a lead's batches. No batch of a lead
//! is acknowledged before all its frames are written (and, in `sync`
//! durability, made durable), so this is no weaker than one frame per
//! batch.
//!
//! Work that must see a shard's writes stop at an exact version (a
//! transfer's final drain, fenced writes) queues as a barrier
//! (`Gate::exclusive`): it leads alone, after every batch queued before it
//! is applied and before any batch queued after it is logged.

use super::op::{OpRef, BATCH_RECORD_HEADER};
use super::replicated::{Fence, StateChange};
use crate::error::{Error, Result};
use crate::futex::{yield_for, yield_until, Sleepers, Slot, CROWD};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;

/// What a batch got, or why it failed (nothing of it was logged then).
pub type Outcome = Result<Written>;

/// A batch the leader logged (or, applying an index it had, skipped).
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// Versions of its first and last operation; None when none took
    /// effect (it had none, they were refused, or the index was applied).
    pub ops: Option<(u64, u64)>,
    /// Its last version in the WAL (its state record's when it has one);
    /// 0 when nothing was logged.
    pub last: u64,
    /// Why its operations were refused, while its index still moved (an
    /// applied entry only; a plain write fails with the error instead).
    pub refused: Option<Error>,
}

/// What a batch carries besides its operations.
#[derive(Debug, Default)]
pub struct Intent {
    /// The host's entry index (`Shard::apply`): the batch is skipped when
    /// the shard applied it already, and a refusal still logs the index.
    pub index: Option<u64>,
    /// Refused unless the token is at least the bucket's highest accepted.
    pub fence: Option<Fence>,
    /// Refused before it queued (an operation past the shard's limits);
    /// only an applied entry queues refused, to move its index.
    pub refused: Option<Error>,
}

impl Intent {
    /// Bytes of the state record the batch logs at most (0: none).
    pub fn state_len(&self) -> usize {
        match (self.index, &self.fence) {
            (None, None) => 0,
            (index, fence) => StateChange { index, fence: fence.clone() }.record_len(),
        }
    }
}

/// One writer's place in the queue: its batch, or nothing for a barrier.
pub struct Batch {
    /// The operations' WAL records, back to back, and where each record
    /// but the last ends (the last ends with `records`: a single operation
    /// allocates no `ends`). Empty for a barrier.
    records: Vec<u8>,
    ends: Vec<usize>,
    pub intent: Intent,
    barrier: bool,
    /// Bytes the batch adds to a group's frame.
    frame_bytes: u64,
    turn: Mutex<Turn>,
    /// The writer's slot among the gate's sleepers (a batch is made on
    /// the thread that queues it).
    slot: Slot,
}

enum Turn {
    Queued,
    /// This writer leads the next group.
    Lead,
    /// A leader logged and applied the batch (or refused it).
    Done(Outcome),
}

impl Batch {
    /// Encodes `ops` (already checked with `op::check_write`; at least one
    /// unless the intent has an index).
    pub fn new(ops: &[OpRef], intent: Intent) -> Arc<Batch> {
        debug_assert!(!ops.is_empty() || intent.index.is_some(), "a batch with nothing to log");
        let mut records = Vec::with_capacity(ops.iter().map(|o| o.record_len() as usize).sum());
        let mut ends = Vec::with_capacity(ops.len().saturating_sub(1));
        for (i, op) in ops.iter().enumerate() {
            if i > 0 {
                ends.push(records.len());
            }
            op.encode_into(&mut records);
        }
        let state = intent.state_len();
        let state_bytes = if state > 0 { state + BATCH_RECORD_HEADER } else { 0 };
        let frame_bytes = (records.len() + ops.len() * BATCH_RECORD_HEADER + state_bytes) as u64;
        Self::queued(records, ends, intent, false, frame_bytes)
    }

    /// Bytes the batch adds to a group's frame (its records with their
    /// headers).
    pub fn frame_bytes(&self) -> u64 {
        self.frame_bytes
    }

    fn barrier() -> Arc<Batch> {
        Self::queued(Vec::new(), Vec::new(), Intent::default(), true, 0)
    }

    fn queued(records: Vec<u8>, ends: Vec<usize>, intent: Intent, barrier: bool, frame_bytes: u64) -> Arc<Batch> {
        Arc::new(Batch { records, ends, intent, barrier, frame_bytes, turn: Mutex::new(Turn::Queued), slot: Slot::current() })
    }

    fn is_barrier(&self) -> bool {
        self.barrier
    }

    /// Whether a leader's kind check must see it (it appends).
    pub fn appends(&self) -> bool {
        self.ops().any(|op| matches!(op, OpRef::Append { .. }))
    }

    /// The operations, decoded from the records (they were encoded from
    /// checked operations, so they decode).
    pub fn ops(&self) -> impl Iterator<Item = OpRef<'_>> {
        self.records().map(|r| OpRef::decode(r).expect("a record keel encoded decodes"))
    }

    /// The operations' WAL records, in order.
    pub fn records(&self) -> impl Iterator<Item = &[u8]> {
        // Every record has its header, so only a batch without
        // operations has no bytes (and no last record).
        let last = (!self.records.is_empty()).then_some(self.records.len());
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter().copied().chain(last)).map(|(s, e)| &self.records[s..e])
    }

    /// Sets the writer's turn; the caller wakes it.
    fn set(&self, turn: Turn) {
        *self.turn.lock() = turn;
    }
}

/// The queue and whether a leader is at work.
#[derive(Default)]
pub struct Gate {
    state: Mutex<State>,
    /// Whether a leader gathers before it takes its group (`sync`
    /// durability: the group then shares one fdatasync).
    gather: bool,
    /// Queued writers sleep here until their turn.
    sleepers: Sleepers,
}

#[derive(Default)]
struct State {
    /// Invariant: while `leading` is false the queue is empty, so a writer
    /// that finds no leader is the oldest queued.
    leading: bool,
    queue: VecDeque<Arc<Batch>>,
    /// Batches in the last lead (all its frames).
    last_group: usize,
}

/// How long a gathering leader waits at most for the last group's
/// writers (a sync here takes 100–300 µs), and then at most as long
/// again while more keep arriving: a lead after the load dropped pays it
/// once, then gathers for the smaller group, and a stream of new writers
/// cannot hold a group back for long.
const GATHER_MAX: std::time::Duration = std::time::Duration::from_micros(250);

impl Gate {
    /// A gate whose leaders gather (see the module comment) when `gather`.
    pub fn new(gather: bool) -> Gate {
        Gate { gather, ..Gate::default() }
    }

    /// Queues `batch` and returns its outcome once a leader (possibly this
    /// caller) has run it. A leader takes the oldest batches whose frame
    /// bytes stay within `frame_limit` (at least its own) and gives them
    /// to `run`, which logs them as one frame and returns one outcome per
    /// batch, in order; after a crowd it may take and run further frames
    /// (each within `frame_limit`). Still leading, it calls `settle` once
    /// with the highest WAL version its frames logged (0: none): in `sync`
    /// durability the wait for their fdatasync, while later writers queue
    /// for the next group. It then
    /// passes the lead on. Every batch gets its outcome only after
    /// `settle` (its error then fails each batch that logged something),
    /// so a writer sleeps once per write, not once at the gate and again
    /// for the sync.
    pub fn write(
        &self,
        batch: Arc<Batch>,
        frame_limit: u64,
        mut run: impl FnMut(&[Arc<Batch>]) -> Vec<Outcome>,
        settle: impl FnOnce(u64) -> Result<()>,
    ) -> Outcome {
        if let Some(outcome) = self.enter(&batch) {
            return outcome;
        }
        let lead = Hold(self);
        self.gather_if_busy();
        let (mut frame, after_crowd) = self.take_group(&batch, frame_limit);
        let mut group = Vec::with_capacity(frame.len());
        let mut outcomes = Vec::with_capacity(frame.len());
        loop {
            let frame_outcomes = run(&frame);
            debug_assert_eq!(frame_outcomes.len(), frame.len(), "one outcome per batch");
            let failed = frame_outcomes.iter().any(Result::is_err);
            group.append(&mut frame);
            outcomes.extend(frame_outcomes);
            // After a crowd, the rest of it comes back while the first
            // frame is logged: one more frame takes them into this sync.
            if failed || !after_crowd {
                break;
            }
            std::thread::yield_now();
            match self.take_more(frame_limit) {
                Some(more) => frame = more,
                None => break,
            }
        }
        let last = outcomes.iter().filter_map(|o| o.as_ref().ok()).map(|w| w.last).max().unwrap_or(0);
        // A panic in `settle` must still hand each batch an outcome: its
        // writer would otherwise wait forever.
        let settled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| settle(last)))
            .unwrap_or_else(|_| Err(Error::new(crate::status::KEEL_STATUS_PANIC, "waiting for a write group's durability panicked")));
        if let Err(e) = settled {
            for o in outcomes.iter_mut().filter(|o| o.as_ref().is_ok_and(|w| w.last > 0)) {
                *o = Err(e.clone());
            }
        }
        debug_assert!(Arc::ptr_eq(&group[0], &batch), "a leader's batch heads its group");
        let mut outcomes = outcomes.into_iter();
        let own = outcomes.next().expect("a leader's own batch is in its group");
        for (b, outcome) in group[1..].iter().zip(outcomes) {
            b.set(Turn::Done(outcome));
        }
        // The next leader first: it gathers while this group's writers wake.
        drop(lead);
        self.sleepers.wake_group(group[1..].iter().map(|b| b.slot));
        own
    }

    /// Runs `f` as a barrier in the queue: after every batch queued before
    /// it has been logged and applied, before any batch queued after it is.
    /// `f` must not write through this gate (it would wait for itself).
    pub fn exclusive<T>(&self, f: impl FnOnce() -> T) -> T {
        let _hold = self.hold();
        f()
    }

    /// The barrier as a guard: returns once every batch queued before it
    /// has been logged and applied; no batch queued after it is logged
    /// until the guard drops.
    pub fn hold(&self) -> Hold<'_> {
        let me = Batch::barrier();
        let done = self.enter(&me);
        debug_assert!(done.is_none(), "no group takes a barrier");
        let hold = Hold(self);
        let taken = self.state.lock().queue.pop_front();
        debug_assert!(taken.is_some_and(|b| Arc::ptr_eq(&b, &me)), "the leader is the oldest queued");
        hold
    }

    /// Writers waiting in the queue (a leader's own batch leaves it when
    /// its group is taken): tests use it to line writers up behind a
    /// barrier in a known order.
    pub fn queued(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Queues `b` and waits until it leads (None) or a leader has run it.
    fn enter(&self, b: &Arc<Batch>) -> Option<Outcome> {
        let lead_now = {
            let mut st = self.state.lock();
            st.queue.push_back(b.clone());
            !std::mem::replace(&mut st.leading, true)
        };
        if lead_now {
            return None;
        }
        // Yield for a while before sleeping (`futex::yield_until`); the loop
        // below takes the turn either way.
        yield_until(|| !matches!(*b.turn.lock(), Turn::Queued));
        loop {
            let ticket = self.sleepers.ticket();
            // The guard drops at the end of this statement: a leader takes
            // the lock to hand the turn over.
            let turn = std::mem::replace(&mut *b.turn.lock(), Turn::Queued);
            match turn {
                Turn::Queued => self.sleepers.sleep(ticket),
                Turn::Lead => return None,
                Turn::Done(outcome) => return Some(outcome),
            }
        }
    }

    /// A gathering leader on a busy gate yields until as many batches are
    /// queued as the last lead took, then while more keep arriving (each
    /// within GATHER_MAX and up to a slow yield, `yield_for`), so its group
    /// takes in the writers its predecessor just released. The queue only
    /// grows meanwhile: only a leader takes batches out of it.
    fn gather_if_busy(&self) {
        if !self.gather {
            return;
        }
        let want = {
            let st = self.state.lock();
            if st.last_group <= 1 && st.queue.len() <= 1 {
                return;
            }
            st.last_group
        };
        if !yield_for(GATHER_MAX, || self.state.lock().queue.len() >= want) {
            return;
        }
        // Then on while batches keep arriving: groups that fell to half
        // the writers (the other half queued during the last sync) merge
        // again with the half the last leader is waking now. The first
        // check only notes the length.
        let seen = std::cell::Cell::new(usize::MAX);
        yield_for(GATHER_MAX, || {
            let now = self.state.lock().queue.len();
            now == seen.replace(now)
        });
    }

    /// The leader's first frame: its own batch and the batches queued
    /// after it, up to a barrier or the frame limit; and whether the lead
    /// before was a crowd.
    fn take_group(&self, own: &Arc<Batch>, frame_limit: u64) -> (Vec<Arc<Batch>>, bool) {
        let mut st = self.state.lock();
        debug_assert!(st.leading && Arc::ptr_eq(&st.queue[0], own), "the leader is the oldest queued");
        let take = 1 + Self::fitting(st.queue.iter().skip(1), own.frame_bytes, frame_limit);
        let after_crowd = std::mem::replace(&mut st.last_group, take) > CROWD;
        (st.queue.drain(..take).collect(), after_crowd)
    }

    /// A further frame of a lead: the batches queued since, up to a
    /// barrier or the frame limit (None: none, or a barrier first).
    fn take_more(&self, frame_limit: u64) -> Option<Vec<Arc<Batch>>> {
        let mut st = self.state.lock();
        let take = Self::fitting(st.queue.iter(), 0, frame_limit);
        st.last_group += take;
        (take > 0).then(|| st.queue.drain(..take).collect())
    }

    /// How many of `queued` join a frame holding `bytes` already: up to a
    /// barrier or the frame limit.
    fn fitting<'q>(queued: impl Iterator<Item = &'q Arc<Batch>>, mut bytes: u64, frame_limit: u64) -> usize {
        queued
            .take_while(|b| {
                bytes += b.frame_bytes;
                !b.is_barrier() && bytes <= frame_limit
            })
            .count()
    }

    /// Ends a lead: the oldest queued writer leads next, or nobody does
    /// while the queue is empty.
    fn pass_on(&self) {
        let next = {
            let mut st = self.state.lock();
            match st.queue.front() {
                Some(b) => Some(b.clone()),
                None => {
                    st.leading = false;
                    None
                }
            }
        };
        if let Some(b) = next {
            b.set(Turn::Lead);
            self.sleepers.wake_slot(b.slot);
        }
    }
}

/// A lead: passes the lead on when it ends, unwinding included (a
/// barrier's closure may panic; the queue behind it must not wait forever).
pub struct Hold<'a>(&'a Gate);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.0.pass_on();
    }
}

/// The outcome every batch of a group gets when the group fails as a whole.
pub fn all_failed(group: &[Arc<Batch>], e: &Error) -> Vec<Outcome> {
    group.iter().map(|_| Err(e.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    /// A one-put batch whose key names it.
    fn batch(id: u8) -> Arc<Batch> {
        Batch::new(&[OpRef::Put { key: &[id], value: &[0; 100] }], Intent::default())
    }

    /// Writers lined up behind a barrier in a known order are led in that
    /// order: each group is the oldest queued batches up to the frame limit
    /// (two batches here) or up to a barrier, versions follow the queue.
    #[test]
    fn groups_follow_the_queue_up_to_the_frame_limit_and_a_barrier() {
        const BARRIER: u8 = 255;
        let two = 2 * batch(0).frame_bytes;
        let gate = Arc::new(Gate::default());
        let groups = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
        let next_version = Arc::new(Mutex::new(1u64));
        let mut writers = Vec::new();
        gate.exclusive(|| {
            for (i, id) in [0, 1, 2, 3, BARRIER, 4, 5].into_iter().enumerate() {
                let (g, groups, next_version) = (gate.clone(), groups.clone(), next_version.clone());
                writers.push(thread::spawn(move || {
                    if id == BARRIER {
                        g.exclusive(|| groups.lock().push(vec![BARRIER]));
                        return None;
                    }
                    let outcome = g.write(batch(id), two, |group| {
                        groups.lock().push(group.iter().map(|b| b.ops().next().unwrap().key()[0]).collect());
                        let mut v = next_version.lock();
                        let first = *v;
                        *v += group.len() as u64;
                        (first..*v).map(|x| Ok(Written { ops: Some((x, x)), last: x, refused: None })).collect()
                    }, |_| Ok(()));
                    Some((id, outcome.unwrap()))
                }));
                while gate.queued() < i + 1 {
                    thread::yield_now();
                }
            }
        });
        for w in writers {
            if let Some((id, Written { ops: Some((first, last)), .. })) = w.join().unwrap() {
                assert_eq!((first, last), (id as u64 + 1, id as u64 + 1), "batch {id} got its queue position");
            }
        }
        assert_eq!(*groups.lock(), vec![vec![0, 1], vec![2, 3], vec![BARRIER], vec![4, 5]]);
        assert_eq!(gate.queued(), 0);
        assert!(!gate.state.lock().leading, "the lead ends with the queue");
    }

    /// The leader settles (in `sync` durability: waits for the fdatasync)
    /// once for its whole group, with the group's highest logged version,
    /// before any writer of the group gets its outcome; a failed settle
    /// fails every batch that logged something and no other.
    #[test]
    fn a_group_gets_its_outcomes_after_one_settle() {
        let gate = Arc::new(Gate::default());
        let settled = Arc::new(Mutex::new(Vec::<u64>::new()));
        let mut writers = Vec::new();
        gate.exclusive(|| {
            for id in 0..3u8 {
                let (g, settled) = (gate.clone(), settled.clone());
                writers.push(thread::spawn(move || {
                    // Batch 1 logs nothing (a duplicate entry, say).
                    let log = |group: &[Arc<Batch>]| {
                        let last = |b: &Arc<Batch>| match b.ops().next().unwrap().key()[0] {
                            1 => 0,
                            k => k as u64 + 1,
                        };
                        group.iter().map(|b| Ok(Written { ops: None, last: last(b), refused: None })).collect()
                    };
                    let settle = |last| {
                        settled.lock().push(last);
                        Err(Error::new(crate::status::KEEL_STATUS_IO, "the sync failed"))
                    };
                    let outcome = g.write(batch(id), u64::MAX, log, settle);
                    (id, settled.lock().len(), outcome)
                }));
                while gate.queued() < id as usize + 1 {
                    thread::yield_now();
                }
            }
        });
        for w in writers {
            let (id, settles_seen, outcome) = w.join().unwrap();
            assert_eq!(settles_seen, 1, "batch {id} got its outcome after the settle");
            match id {
                1 => assert_eq!(outcome.unwrap().last, 0, "a batch that logged nothing keeps its outcome"),
                _ => assert_eq!(outcome.unwrap_err().status, crate::status::KEEL_STATUS_IO, "batch {id} logged, so the failed settle fails it"),
            }
        }
        assert_eq!(*settled.lock(), vec![3], "one settle for the group, with its highest version");
    }

    /// A leader keeps the lead through its settle (the fdatasync): a
    /// writer that queues meanwhile is not logged before the settle
    /// returns, and then leads the next group itself.
    #[test]
    fn a_writer_queued_during_a_settle_waits_for_the_next_group() {
        let gate = Arc::new(Gate::new(true));
        let logged = Arc::new(Mutex::new(Vec::<u8>::new()));
        let run = |logged: &Arc<Mutex<Vec<u8>>>| {
            let logged = logged.clone();
            move |group: &[Arc<Batch>]| {
                logged.lock().extend(group.iter().map(|b| b.ops().next().unwrap().key()[0]));
                group.iter().map(|_| Ok(Written { ops: Some((1, 1)), last: 1, refused: None })).collect()
            }
        };
        let mut second = None;
        let first = gate.write(batch(1), u64::MAX, run(&logged), |_| {
            let (g, r) = (gate.clone(), run(&logged));
            second = Some(thread::spawn(move || g.write(batch(2), u64::MAX, r, |_| Ok(()))));
            // Until it queues, or (were the lead gone) logs on its own;
            // then it gets time to lead if it could (never needed to pass).
            while gate.queued() < 1 && logged.lock().len() < 2 {
                thread::yield_now();
            }
            for _ in 0..1000 {
                thread::yield_now();
            }
            assert_eq!(*logged.lock(), vec![1], "the queued writer is not logged during the settle");
            Ok(())
        });
        assert!(first.is_ok());
        assert!(second.unwrap().join().unwrap().is_ok());
        assert_eq!(*logged.lock(), vec![1, 2], "the queued writer led the next group");
    }

    /// A crowd (more than CROWD writers) is led as one group and woken all
    /// at once; the lead after it logs its first frame, then what queued
    /// meanwhile as a further frame, and settles once for both.
    #[test]
    fn after_a_crowd_a_lead_logs_what_queued_meanwhile_before_its_sync() {
        let gate = Arc::new(Gate::new(true));
        let frames = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
        let settles = Arc::new(Mutex::new(Vec::<u64>::new()));
        let next_version = Arc::new(Mutex::new(1u64));
        // Logs a frame: versions in queue order. The first frame logged by
        // writer `spawner` (the lead after the crowd) starts writer 101
        // and waits until it is queued, so it joins that lead as its
        // second frame.
        let writer = |id: u8, spawner: bool| {
            let (g, frames, settles, next_version) = (gate.clone(), frames.clone(), settles.clone(), next_version.clone());
            let writer_101 = Arc::new(Mutex::new(None));
            let late = writer_101.clone();
            let handle = thread::spawn(move || {
                let run = |group: &[Arc<Batch>]| {
                    frames.lock().push(group.iter().map(|b| b.ops().next().unwrap().key()[0]).collect());
                    if spawner && late.lock().is_none() {
                        let (g2, s2) = (g.clone(), settles.clone());
                        *late.lock() = Some(thread::spawn(move || {
                            g2.write(batch(101), u64::MAX, |_| unreachable!("the lead logs it"), |_| unreachable!("the lead settles it"))
                                .map(|_| s2.lock().len())
                        }));
                        while g.queued() < 1 {
                            thread::yield_now();
                        }
                    }
                    let mut v = next_version.lock();
                    let first = *v;
                    *v += group.len() as u64;
                    (first..*v).map(|x| Ok(Written { ops: Some((x, x)), last: x, refused: None })).collect()
                };
                let settle = |last| {
                    settles.lock().push(last);
                    Ok(())
                };
                g.write(batch(id), u64::MAX, run, settle).map(|w| w.last)
            });
            (handle, writer_101)
        };
        let crowd = CROWD as u8 + 1;
        let mut writers = Vec::new();
        gate.exclusive(|| {
            for id in 0..crowd {
                writers.push(writer(id, false).0);
                while gate.queued() < id as usize + 1 {
                    thread::yield_now();
                }
            }
        });
        for (id, w) in writers.into_iter().enumerate() {
            assert_eq!(w.join().unwrap().unwrap(), id as u64 + 1, "crowd writer {id} got its version");
        }
        assert_eq!(*frames.lock(), vec![(0..crowd).collect::<Vec<u8>>()], "the crowd was one frame");
        let (lead, writer_101) = writer(100, true);
        assert_eq!(lead.join().unwrap().unwrap(), crowd as u64 + 1);
        let late = writer_101.lock().take().expect("writer 101 was started");
        assert_eq!(late.join().unwrap().unwrap(), 2, "writer 101 got its outcome after the lead's one settle");
        assert_eq!(frames.lock()[1..], [vec![100], vec![101]], "the queued writer went in a second frame of the same lead");
        assert_eq!(*settles.lock(), vec![crowd as u64, crowd as u64 + 2], "one settle per lead, with its highest version");
        assert_eq!(gate.queued(), 0);
    }

    /// A barrier whose closure panics still passes the lead on.
    #[test]
    fn a_panicking_barrier_passes_the_lead_on() {
        let gate = Gate::default();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gate.exclusive(|| panic!("boom"))));
        assert!(r.is_err());
        let outcome = gate.write(batch(7), u64::MAX, |group| group.iter().map(|_| Ok(Written { ops: Some((1, 1)), last: 1, refused: None })).collect(), |_| Ok(()));
        assert_eq!(outcome.unwrap().ops, Some((1, 1)));
    }
}
