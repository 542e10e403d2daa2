//! The shard's unflushed WAL: the bytes of logged operations that no
//! segment file holds yet, and the write stall that keeps them under
//! `Options::max_unflushed_wal_bytes`.
//!
//! Those bytes are what a reopen must replay (recovery starts past the
//! persisted version), so bounding them bounds the restart whatever the
//! WAL retains for other readers. A writer reserves its batch's bytes
//! before it enters the write gate; past half the bound the flush is asked
//! for, and a writer whose batch would cross the bound waits, holding no
//! lock the flush needs, until a flush acknowledges enough or the stall
//! timeout ends (TIMEOUT). A batch larger than the bound is let in alone,
//! when nothing else is unflushed. The pass a writer asked for may have
//! started before the writes in its way were applied, so the writes counted
//! meanwhile ask for the next one: at once when a writer waits and none is
//! asked for, or through a waiting writer when that pass's acknowledgement
//! leaves them.
//!
//! Logged bytes are kept in marks of about `limit / 64` bytes, each with
//! the largest version it holds; an acknowledgement at version P frees
//! the marks whose largest version is at most P. The count is therefore
//! never below the truth and at most one mark above it.

use crate::error::{Error, Result};
use crate::status::{KEEL_STATUS_CLOSED, KEEL_STATUS_TIMEOUT};
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Write stalls: how many writes waited and for how long in all (one
/// shard's, or an engine's over all its shards).
#[derive(Default)]
pub struct Stalls {
    count: AtomicU64,
    nanos: AtomicU64,
}

impl Stalls {
    fn add(&self, waited: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.nanos.fetch_add(waited.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// (writes that stalled, total time they waited).
    pub fn read(&self) -> (u64, Duration) {
        (self.count.load(Ordering::Relaxed), Duration::from_nanos(self.nanos.load(Ordering::Relaxed)))
    }
}

/// Bytes logged under versions up to `version` (see the module comment).
struct Mark {
    version: u64,
    bytes: u64,
}

#[derive(Default)]
struct State {
    /// Bytes of admitted writes not logged yet.
    reserved: u64,
    /// Logged and not acknowledged, oldest first; `pending` is their sum.
    marks: VecDeque<Mark>,
    pending: u64,
    /// The last acknowledged version.
    acked: u64,
    /// The flush was asked for since the last acknowledgement.
    kicked: bool,
    /// Bytes were counted since then: the pass asked for may have started
    /// before they were applied, and its acknowledgement not cover them.
    late: bool,
    /// The last acknowledgement left such bytes: a waiting writer asks for
    /// the next pass.
    again: bool,
    closed: bool,
    /// Writers waiting now.
    waiting: usize,
}

impl State {
    fn used(&self) -> u64 {
        self.reserved + self.pending
    }
}

pub struct Backlog {
    limit: u64,
    timeout: Duration,
    /// Bytes per mark: coarse enough to keep few, fine enough that a
    /// mark's excess is small next to the bound.
    mark_bytes: u64,
    state: Mutex<State>,
    freed: Condvar,
    own: Stalls,
    /// The engine's totals, when the shard has an engine.
    shared: Option<Arc<Stalls>>,
}

impl Backlog {
    /// `acked`: the shard's persisted version at open.
    pub fn new(limit: u64, timeout: Duration, acked: u64, shared: Option<Arc<Stalls>>) -> Backlog {
        Backlog {
            limit,
            timeout,
            mark_bytes: (limit / 64).max(1),
            state: Mutex::new(State { acked, ..State::default() }),
            freed: Condvar::new(),
            own: Stalls::default(),
            shared,
        }
    }

    /// Reserves `bytes` for a write, waiting while they would take the
    /// unflushed WAL past the bound. `kick` asks for a flush; it is called
    /// without the lock, once past half the bound, by every writer that
    /// starts to wait, and by a waiting one after an acknowledgement that
    /// left bytes counted during its pass. TIMEOUT after the stall timeout;
    /// CLOSED when the shard closes meanwhile.
    pub fn admit(&self, bytes: u64, kick: impl Fn()) -> Result<Admitted<'_>> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(Error::new(KEEL_STATUS_CLOSED, "shard is closed"));
        }
        let fits = |st: &State| st.used() == 0 || st.used() + bytes <= self.limit;
        if !fits(&st) {
            let start = Instant::now();
            let deadline = start + self.timeout;
            st.kicked = true;
            drop(st);
            kick();
            st = self.state.lock();
            st.waiting += 1;
            while !fits(&st) && !st.closed {
                if std::mem::take(&mut st.again) && !st.kicked {
                    st.kicked = true;
                    MutexGuard::unlocked(&mut st, &kick);
                    continue;
                }
                if self.freed.wait_until(&mut st, deadline).timed_out() && !fits(&st) {
                    break;
                }
            }
            st.waiting -= 1;
            let waited = start.elapsed();
            self.own.add(waited);
            if let Some(s) = &self.shared {
                s.add(waited);
            }
            if st.closed {
                return Err(Error::new(KEEL_STATUS_CLOSED, "shard closed while the write waited for a flush"));
            }
            if !fits(&st) {
                return Err(Error::new(
                    KEEL_STATUS_TIMEOUT,
                    format!(
                        "the shard's unflushed WAL ({} bytes) stayed at its bound of {} bytes for {:?}: the flush is behind (see the shard's health)",
                        st.used(),
                        self.limit,
                        self.timeout
                    ),
                ));
            }
        }
        st.reserved += bytes;
        let kick_now = !st.kicked && st.used() >= self.limit / 2;
        st.kicked |= kick_now;
        drop(st);
        if kick_now {
            kick();
        }
        Ok(Admitted { backlog: self, bytes })
    }

    /// Counts `bytes` logged at versions up to `version` by a path that
    /// does not stall (replay's tail at open, transferred operations).
    pub fn logged(&self, version: u64, bytes: u64) {
        self.state.lock().push(version, bytes, self.mark_bytes);
    }

    /// The WAL is acknowledged up to `version`: frees the marks it covers.
    pub fn acked(&self, version: u64) {
        let mut st = self.state.lock();
        st.acked = st.acked.max(version);
        st.kicked = false;
        let mut freed = false;
        while st.marks.front().is_some_and(|m| m.version <= version) {
            let m = st.marks.pop_front().expect("checked");
            st.pending -= m.bytes;
            freed = true;
        }
        // Bytes counted during the pass and left by it were applied after
        // it started: the next pass frees them. Others it left, it could
        // not persist, and asking again at once would only loop.
        st.again = std::mem::take(&mut st.late) && !st.marks.is_empty();
        let wake = freed || (st.again && st.waiting > 0);
        drop(st);
        if wake {
            self.freed.notify_all();
        }
    }

    /// Wakes every waiting writer with CLOSED.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.freed.notify_all();
    }

    /// Bytes logged (or admitted) and not yet in a segment file.
    pub fn unflushed(&self) -> u64 {
        self.state.lock().used()
    }

    /// Writers waiting for a flush now (tests line them up with it).
    pub fn waiting(&self) -> usize {
        self.state.lock().waiting
    }

    /// This shard's stalls.
    pub fn stalls(&self) -> (u64, Duration) {
        self.own.read()
    }
}

impl State {
    fn push(&mut self, version: u64, bytes: u64, mark_bytes: u64) {
        if version <= self.acked || bytes == 0 {
            return; // a flush already covers it
        }
        self.late |= self.kicked;
        self.pending += bytes;
        match self.marks.back_mut() {
            Some(m) if m.bytes < mark_bytes => {
                m.version = m.version.max(version);
                m.bytes += bytes;
            }
            _ => self.marks.push_back(Mark { version, bytes }),
        }
    }
}

/// A write's reservation: released if the write is not logged.
pub struct Admitted<'a> {
    backlog: &'a Backlog,
    bytes: u64,
}

impl Admitted<'_> {
    /// The write was logged, its last operation at `version`. `kick` asks
    /// for a flush, as in `admit`: a pass that ran while this write was in
    /// the gate cleared the request, and the bytes now logged past its
    /// acknowledgement need the next one.
    pub fn logged(mut self, version: u64, kick: impl Fn()) {
        let b = &self.backlog;
        let mut st = b.state.lock();
        st.reserved -= self.bytes;
        let before = st.pending;
        st.push(version, std::mem::take(&mut self.bytes), b.mark_bytes);
        // Acknowledged already (a pass covered it while it was in the
        // gate): its bytes left the count, room for a waiting writer.
        let freed = st.pending == before && st.waiting > 0;
        // Counted after the acknowledgement that answered a waiting
        // writer's request: no pass asked for will free them.
        let kick_now = !st.kicked && (st.used() >= b.limit / 2 || (st.pending > before && st.waiting > 0));
        st.kicked |= kick_now;
        drop(st);
        if freed {
            b.freed.notify_all();
        }
        if kick_now {
            kick();
        }
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let b = &self.backlog;
            b.state.lock().reserved -= self.bytes;
            // Room for a waiting writer.
            b.freed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn writes_past_the_bound_wait_and_an_ack_frees_them() {
        let b = Backlog::new(1000, Duration::from_millis(20), 0, None);
        let kicks = AtomicUsize::new(0);
        let kick = || {
            kicks.fetch_add(1, Ordering::Relaxed);
        };
        b.admit(400, kick).unwrap().logged(1, kick);
        assert_eq!(kicks.load(Ordering::Relaxed), 0);
        b.admit(400, kick).unwrap().logged(2, kick);
        assert_eq!(kicks.load(Ordering::Relaxed), 1, "past half the bound the flush is asked for once");
        assert_eq!(b.unflushed(), 800);
        let e = b.admit(400, kick).err().unwrap();
        assert_eq!(e.status, KEEL_STATUS_TIMEOUT);
        assert_eq!(b.stalls().0, 1);
        // A reservation dropped unlogged is given back.
        drop(b.admit(100, kick).unwrap());
        assert_eq!(b.unflushed(), 800);
        b.acked(1);
        assert_eq!(b.unflushed(), 400, "version 1's mark is freed, version 2's is not");
        b.admit(400, kick).unwrap().logged(3, kick);
        b.acked(3);
        assert_eq!(b.unflushed(), 0);
        // A batch larger than the bound goes alone.
        b.admit(5000, kick).unwrap().logged(4, kick);
        // Logged at a version already acknowledged: nothing to count.
        b.acked(10);
        b.logged(9, 100);
        assert_eq!(b.unflushed(), 0);
    }

    #[test]
    fn marks_are_coarse_but_never_undercount() {
        let b = Backlog::new(64 * 4096, Duration::from_millis(1), 0, None);
        for v in 1..=100 {
            b.logged(v, 1000);
        }
        assert_eq!(b.unflushed(), 100_000);
        b.acked(50);
        let left = b.unflushed();
        assert!((50_000..50_000 + 4096 + 1000).contains(&left), "{left}");
        b.acked(100);
        assert_eq!(b.unflushed(), 0);
    }

    #[test]
    fn a_waiting_writer_is_freed_by_the_ack_or_by_close() {
        let b = Arc::new(Backlog::new(1000, Duration::from_secs(3600), 0, None));
        b.admit(1000, || {}).unwrap().logged(1, || {});
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || b.admit(10, || {}).map(|a| a.logged(2, || {})))
        };
        b.acked(1);
        waiter.join().unwrap().unwrap();
        b.admit(990, || {}).unwrap().logged(3, || {});
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || b.admit(10, || {}).map(|_| ()))
        };
        b.close();
        assert_eq!(waiter.join().unwrap().unwrap_err().status, KEEL_STATUS_CLOSED);
    }

    /// A pass acknowledged a write while it was still in the gate (applied,
    /// not yet counted as logged): when it is counted, its bytes leave at
    /// once, and a writer waiting at the bound must hear of that room.
    #[test]
    fn a_write_acknowledged_before_it_counted_wakes_the_waiting_writer() {
        let b = Arc::new(Backlog::new(1000, Duration::from_secs(3600), 0, None));
        let in_gate = b.admit(700, || {}).unwrap();
        let (done, result) = crossbeam_channel::bounded(1);
        {
            let b = b.clone();
            std::thread::spawn(move || done.send(b.admit(400, || {}).map(|_| ())));
        }
        while b.waiting() == 0 {
            std::thread::yield_now();
        }
        b.acked(1); // the pass covered version 1, the write in the gate
        in_gate.logged(1, || {});
        assert_eq!(b.unflushed(), 0);
        // The bound only turns a writer nobody woke into a failure; a woken
        // one returns at once.
        let r = result.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            b.close();
            panic!("the waiting writer slept on with nothing unflushed: {:?}", result.recv())
        });
        r.unwrap();
    }

    /// The pass a waiting writer asked for started before a write in its
    /// way was applied: that write is counted during the pass (no new
    /// request, one is pending), and the pass's acknowledgement frees the
    /// bytes before it, if any, and clears the request. The waiting writer
    /// asks again, and the pass it gets frees the room.
    #[test]
    fn a_waiting_writer_asks_again_for_bytes_its_pass_did_not_cover() {
        for before in [0, 100] {
            let b = Backlog::new(1000, Duration::from_secs(10), 0, None);
            if before > 0 {
                b.admit(before, || {}).unwrap().logged(1, || {});
            }
            let in_gate = Mutex::new(Some(b.admit(600, || {}).unwrap()));
            let passes = AtomicUsize::new(0);
            // A pass: persists what was applied when it started, while the
            // write in the gate is applied and counted (the first pass only).
            let pass = || {
                let applied = 1 + passes.fetch_add(1, Ordering::Relaxed) as u64;
                if let Some(w) = in_gate.lock().take() {
                    w.logged(2, || panic!("a flush is asked for already"));
                }
                b.acked(applied);
            };
            b.admit(450, pass).unwrap().logged(3, || {});
            assert_eq!(passes.load(Ordering::Relaxed), 2, "one pass more, for the write counted during the first");
            assert_eq!(b.unflushed(), 450);
        }
    }

    /// A pass that frees nothing, with nothing counted since it was asked
    /// for, is not asked for again: a flush that cannot persist what is
    /// unflushed is not run in a loop while a writer waits.
    #[test]
    fn a_pass_that_freed_nothing_new_is_not_asked_for_again() {
        let b = Backlog::new(1000, Duration::from_millis(50), 0, None);
        b.admit(600, || {}).unwrap().logged(1, || {});
        // The pass asked for past half the bound could persist nothing,
        // and later ones cannot either.
        b.acked(0);
        let passes = AtomicUsize::new(0);
        let pass = || {
            passes.fetch_add(1, Ordering::Relaxed);
            b.acked(0);
        };
        assert_eq!(b.admit(450, pass).err().unwrap().status, KEEL_STATUS_TIMEOUT);
        assert_eq!(passes.load(Ordering::Relaxed), 1);
    }

    /// The pass a writer asked for ran while a large write was in the gate;
    /// logged after that acknowledgement (which cleared the request), the
    /// write leaves the WAL past half the bound, so it asks for the next.
    #[test]
    fn a_write_counted_past_half_the_bound_after_an_ack_asks_for_a_flush() {
        let b = Backlog::new(1000, Duration::from_secs(3600), 0, None);
        let kicks = AtomicUsize::new(0);
        let kick = || {
            kicks.fetch_add(1, Ordering::Relaxed);
        };
        let small = b.admit(10, kick).unwrap();
        let large = b.admit(700, kick).unwrap();
        assert_eq!(kicks.load(Ordering::Relaxed), 1, "past half the bound at admission");
        b.acked(0); // a pass ran and freed nothing: the request is cleared
        small.logged(1, kick);
        large.logged(2, kick);
        assert_eq!(b.unflushed(), 710);
        assert_eq!(kicks.load(Ordering::Relaxed), 2, "710 of 1000 bytes unflushed and no flush asked for");
    }
}
