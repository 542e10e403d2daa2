//! The read decision of one shard: serve from the lease, or prove
//! leadership with a read-index first.
//!
//! A lease read is served locally (once the applied index reaches the
//! commit index the host reported) only if every gate holds: this node leads; an entry of its own term is applied (before
//! that, its applied state may lack entries an earlier leader committed);
//! no leadership transfer is in progress (the target may win an election
//! at once, without waiting for an election timeout); the clock reads a
//! time; the quorum ack is non-zero; the clock has not gone back (below
//! the ack, or below any time it was read at before); and
//! now − quorum ack < lease, strictly. Any miss falls back to the
//! read-index path; a follower gets NOT_LEADER with the leader hint.

use super::clock::Clock;
use super::config::LeaseConfig;
use super::consensus::{ConsensusState, PeerId, Role, Voters};
use super::metrics::{LeaseStats, Metrics};
use super::read_index::{ReadIndexFn, SingleFlight};
use crate::error::{Error, Result};
use crate::status::*;
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The consistency a read asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Local state, no checks (may be behind, or on a deposed leader).
    Stale,
    /// The lease if it holds, else a read-index.
    Lease,
    /// Always a read-index.
    Linearizable,
}

/// Why the lease could not serve a read. Numbered for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissReason {
    NotLeader,
    AckStale,
    AckMissing,
    /// The clock went back: below the quorum ack or an earlier reading.
    AckFuture,
    Transfer,
    TermNotApplied,
    Clock,
}

impl MissReason {
    pub const COUNT: usize = 7;
}

/// The outcome of the lease gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Serve locally once the applied index reaches `index` (the commit
    /// index when the host reports it, else the applied index).
    Serve { index: u64 },
    /// Not the leader: go to the leader (when known).
    NotLeader { leader_hint: Option<PeerId> },
    /// The lease does not hold: use the read-index path.
    Miss(MissReason),
}

/// The lease gate on a snapshot of the facts at `now` (`None`: no clock).
pub fn decide(state: &ConsensusState, lease_ns: u64, now: Option<u64>) -> Decision {
    if state.role() != Role::Leader {
        return Decision::NotLeader { leader_hint: state.leader_elsewhere() };
    }
    let Some(now) = now.filter(|&n| n != 0) else { return Decision::Miss(MissReason::Clock) };
    if !state.term_applied() {
        return Decision::Miss(MissReason::TermNotApplied);
    }
    if state.transfer_in_progress() {
        return Decision::Miss(MissReason::Transfer);
    }
    let ack = match state.quorum_ack(now) {
        None | Some(0) => return Decision::Miss(MissReason::AckMissing),
        Some(ack) => ack,
    };
    // The clock went back: below a time it was read at already (every
    // recorded ack is at or before one, so this covers an ack after now).
    // Measured against it, an ack would look younger than the clock has
    // already shown it to be, and a lease that ran out would serve again.
    if now < state.latest_now() {
        return Decision::Miss(MissReason::AckFuture);
    }
    if now - ack >= lease_ns {
        return Decision::Miss(MissReason::AckStale);
    }
    Decision::Serve { index: state.applied().max(state.committed()) }
}

/// A read refused by the gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// This node does not lead; the leader's id when known.
    NotLeader { leader_hint: Option<PeerId> },
    /// The read-index or the applied index did not arrive in time.
    Timeout,
    /// The host's read-index callback failed with this error.
    ReadIndex(Error),
}

impl Refused {
    pub fn leader_hint(&self) -> Option<PeerId> {
        match self {
            Refused::NotLeader { leader_hint } => *leader_hint,
            _ => None,
        }
    }
}

impl From<Refused> for Error {
    fn from(r: Refused) -> Error {
        match r {
            Refused::NotLeader { leader_hint: Some(l) } => {
                Error::not_leader(Some(l), format!("this node is not the leader; the leader is {l}"))
            }
            Refused::NotLeader { leader_hint: None } => {
                Error::not_leader(None, "this node is not the leader; the leader is unknown")
            }
            Refused::Timeout => Error::new(KEEL_STATUS_TIMEOUT, "the read-index or the applied index did not arrive in time"),
            Refused::ReadIndex(e) => e,
        }
    }
}

/// Permission to read: every read under it sees at least the state at
/// `index`. One permit serves a whole read session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadPermit {
    pub index: u64,
    /// Served from the lease (true) or after a read-index / stale (false).
    pub from_lease: bool,
}

/// The consensus facts, the lease decision and the read-index path of
/// one shard. Every method may be called from any thread.
pub struct LeaseGate {
    lease_ns: u64,
    clock: Clock,
    state: Mutex<ConsensusState>,
    /// Signalled when the applied index moves.
    applied: Condvar,
    /// The host's read-index; None once the gate is closed. Held while a
    /// call runs, so `close` waits for it and then drops the callback (and
    /// the host's user data) on the closing thread.
    read_index: Mutex<Option<Box<ReadIndexFn>>>,
    /// `close` was asked from inside a read-index call, on that call's
    /// thread (the last handle of the shard dropped there): the call drops
    /// the callback once it returns, instead of `close` waiting for the
    /// lock its own thread holds.
    close_asked: std::sync::atomic::AtomicBool,
    /// `close` was called. Reads check this, not `read_index`, before
    /// starting or joining a call: that lock is held for as long as the
    /// host's call runs, and a read waiting on it would ignore its own
    /// deadline.
    closed: std::sync::atomic::AtomicBool,
    flight: SingleFlight,
    metrics: Metrics,
}

thread_local! {
    /// The gate whose read-index callback this thread is running (0: none).
    static IN_CALL: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks this thread as inside `gate`'s read-index call while it lives.
struct InCall(usize);

impl InCall {
    fn enter(gate: &LeaseGate) -> InCall {
        InCall(IN_CALL.with(|c| c.replace(gate as *const LeaseGate as usize)))
    }
}

impl Drop for InCall {
    fn drop(&mut self) {
        IN_CALL.with(|c| c.set(self.0));
    }
}

/// Counts one read-index call in `metrics` when dropped: its latency, and
/// whether it failed (unless cleared, as a panic leaves it).
struct CountCall<'a> {
    metrics: &'a Metrics,
    start: Instant,
    failed: bool,
}

impl Drop for CountCall<'_> {
    fn drop(&mut self) {
        let latency = self.start.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.metrics.read_index(latency, self.failed);
    }
}

impl LeaseGate {
    /// A gate for node `self_id`; INVALID_ARGUMENT for a bad `config`.
    pub fn new(self_id: PeerId, config: LeaseConfig, clock: Clock, read_index: Box<ReadIndexFn>) -> Result<LeaseGate> {
        config.validate()?;
        Ok(LeaseGate {
            lease_ns: config.lease_ns(),
            clock,
            state: Mutex::new(ConsensusState::new(self_id)),
            applied: Condvar::new(),
            read_index: Mutex::new(Some(read_index)),
            close_asked: std::sync::atomic::AtomicBool::new(false),
            closed: std::sync::atomic::AtomicBool::new(false),
            flight: SingleFlight::default(),
            metrics: Metrics::default(),
        })
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The facts as they are now (a copy).
    pub fn state(&self) -> ConsensusState {
        self.state.lock().clone()
    }

    /// Reports role and term at a fresh clock reading, so that acks of
    /// messages sent before a new leadership are ignored.
    pub fn set_role(&self, role: Role, term: u64, leader: Option<PeerId>) -> Result<()> {
        let now = self.clock.now();
        let mut st = self.state.lock();
        if let Some(now) = now {
            st.note_now(now);
        }
        st.set_role(role, term, leader)
    }

    pub fn set_voters(&self, voters: Voters) -> Result<()> {
        self.state.lock().set_voters(voters)
    }

    /// Records an ack (see `ConsensusState::record_ack`); an ignored one is
    /// counted, not an error: late and stray acks are normal.
    pub fn record_ack(&self, peer: PeerId, term: u64, sent_at: u64) {
        let now = self.clock.now();
        if let Err(why) = self.state.lock().record_ack(peer, term, sent_at, now) {
            self.metrics.ack_ignored(why);
        }
    }

    pub fn set_applied(&self, index: u64) -> Result<()> {
        self.state.lock().set_applied(index)?;
        self.applied.notify_all();
        Ok(())
    }

    /// Raises the applied index to `index` if it is below (the shard's
    /// own applies report here; the host may report the same index too).
    pub fn advance_applied(&self, index: u64) {
        let mut st = self.state.lock();
        if index > st.applied() {
            st.set_applied(index).expect("a higher applied index is accepted");
            drop(st);
            self.applied.notify_all();
        }
    }

    pub fn set_committed(&self, index: u64) -> Result<()> {
        self.state.lock().set_committed(index)
    }

    pub fn note_term_applied(&self, term: u64) -> bool {
        self.state.lock().note_term_applied(term)
    }

    pub fn set_transfer(&self, in_progress: bool) {
        self.state.lock().set_transfer(in_progress)
    }

    /// The lease gate now, without counting or falling back.
    ///
    /// The clock is read under the facts' lock: an ack recorded before we
    /// took it was checked against a reading taken before its own lock,
    /// so on a clock that does not go back our reading is at or past it.
    /// Read before the lock, a heartbeat's ack landing in between would
    /// look stamped in the future and cost a needless read-index.
    pub fn decide(&self) -> Decision {
        self.decide_locked(&mut self.state.lock())
    }

    /// The lease gate on the locked facts, at a clock reading it then
    /// remembers, so that a clock going back misses (see `decide`).
    fn decide_locked(&self, st: &mut ConsensusState) -> Decision {
        let now = self.clock.now();
        let decision = decide(st, self.lease_ns, now);
        if let Some(now) = now {
            st.note_now(now);
        }
        decision
    }

    /// Begins a read (or a session of reads) at `level`: at most one
    /// read-index, shared with concurrent misses, then a wait until the
    /// applied index reaches it, all within `timeout`.
    pub fn begin_read(&self, level: Level, timeout: Duration) -> std::result::Result<ReadPermit, Refused> {
        // No deadline (a timeout too large to add) waits as long as it takes.
        let deadline = || Instant::now().checked_add(timeout).unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 86_400));
        match level {
            Level::Stale => return Ok(ReadPermit { index: self.state.lock().applied(), from_lease: false }),
            Level::Linearizable => {
                let leader_hint = {
                    let s = self.state.lock();
                    (s.role() != Role::Leader).then(|| s.leader_elsewhere())
                };
                if let Some(leader_hint) = leader_hint {
                    return Err(Refused::NotLeader { leader_hint });
                }
            }
            Level::Lease => {
                // One lock for the decision and the applied check: a hit is
                // the common case and should cost about a plain read. The
                // clock is read under it (see `decide`).
                let mut s = self.state.lock();
                match self.decide_locked(&mut s) {
                    Decision::Serve { index } => {
                        let waited = if s.applied() < index { self.wait_applied(&mut s, index, deadline()) } else { Ok(()) };
                        drop(s);
                        return match waited {
                            Ok(()) => {
                                self.metrics.hit();
                                Ok(ReadPermit { index, from_lease: true })
                            }
                            Err(r) => {
                                if r == Refused::Timeout {
                                    self.metrics.timeout();
                                }
                                Err(r)
                            }
                        };
                    }
                    Decision::NotLeader { leader_hint } => {
                        drop(s);
                        self.metrics.miss(MissReason::NotLeader);
                        return Err(Refused::NotLeader { leader_hint });
                    }
                    Decision::Miss(reason) => {
                        drop(s);
                        self.metrics.miss(reason);
                    }
                }
            }
        }
        self.read_index_path(deadline()).inspect_err(|r| {
            if *r == Refused::Timeout {
                self.metrics.timeout();
            }
        })
    }

    /// Ends the read-index path: waits for a call in flight to return,
    /// then drops the host's callback here. Reads that miss the lease
    /// from then on fail with CLOSED, without calling the host, and so do
    /// reads waiting for the applied index.
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        // A close ends the applies that would wake reads waiting for the
        // applied index: wake them to fail now, not at their deadline.
        // Under the facts' lock, so a read that has not seen the flag yet
        // is not between its check and its wait.
        drop(self.state.lock());
        self.applied.notify_all();
        if IN_CALL.with(|c| c.get()) == self as *const LeaseGate as usize {
            // Inside this gate's own call, whose thread holds the lock:
            // that call lets go of the callback once it returns, on this
            // same thread.
            self.close_asked.store(true, std::sync::atomic::Ordering::Release);
            return;
        }
        let callback = self.read_index.lock().take();
        drop(callback);
    }

    fn read_index_path(&self, deadline: Instant) -> std::result::Result<ReadPermit, Refused> {
        // Not `self.read_index.lock()`: a running call holds that lock,
        // and this read must be able to time out while it waits for the
        // next call. A read that slips past this during a close gets
        // CLOSED from the call itself, which finds the callback gone.
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Refused::ReadIndex(closed()));
        }
        let ticket = self.flight.ticket();
        // The lock is held through the host's call (one at a time anyway:
        // the flight shares it), so `close` cannot drop it meanwhile.
        let call = || {
            let mut held = self.read_index.lock();
            let answer = match held.as_ref() {
                Some(call) => {
                    // Counted when the call ends, also by a panic of the
                    // host's callback (which unwinds through here to the
                    // reader). Only here: a read that finds the callback
                    // gone never called the host.
                    let mut count = CountCall { metrics: &self.metrics, start: Instant::now(), failed: true };
                    let _in = InCall::enter(self);
                    let answer = call();
                    count.failed = answer.is_err();
                    answer
                }
                None => Err(closed()),
            };
            if self.close_asked.load(std::sync::atomic::Ordering::Acquire) {
                // The callback asked for this gate's close (the last handle
                // of its shard dropped in it): let go of it now, still
                // under the lock, on the thread that asked.
                drop(held.take());
            }
            answer
        };
        let index = self.flight.get(ticket, &call, deadline).map_err(|e| match e.status {
            KEEL_STATUS_TIMEOUT => Refused::Timeout,
            KEEL_STATUS_NOT_LEADER => Refused::NotLeader { leader_hint: self.state.lock().leader_elsewhere() },
            _ => Refused::ReadIndex(e),
        })?;
        let mut s = self.state.lock();
        self.wait_applied(&mut s, index, deadline)?;
        Ok(ReadPermit { index, from_lease: false })
    }

    pub fn stats(&self) -> LeaseStats {
        self.metrics.snapshot()
    }

    /// Waits until the applied index reaches `index`: TIMEOUT past
    /// `deadline`, CLOSED once the gate is closed (nothing applies then).
    fn wait_applied(&self, s: &mut MutexGuard<'_, ConsensusState>, index: u64, deadline: Instant) -> std::result::Result<(), Refused> {
        while s.applied() < index {
            if self.closed.load(std::sync::atomic::Ordering::Acquire) {
                return Err(Refused::ReadIndex(closed()));
            }
            if self.applied.wait_until(s, deadline).timed_out() && s.applied() < index {
                return Err(Refused::Timeout);
            }
        }
        Ok(())
    }
}

/// What a read that needs the host's read-index gets once the gate is
/// closed.
fn closed() -> Error {
    Error::new(KEEL_STATUS_CLOSED, "shard is closed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    const MS: u64 = 1_000_000;
    const LEASE: u64 = 700 * MS;

    fn config() -> LeaseConfig {
        LeaseConfig {
            lease: Duration::from_nanos(LEASE),
            election_timeout_min: Duration::from_millis(1000),
            max_clock_drift: Duration::from_millis(100),
            max_round_trip: Duration::from_millis(100),
        }
    }

    /// A gate for node 1 of {1,2,3}, leader of term 5 with its own-term
    /// entry applied at index 10, whose read-index returns `index` (and
    /// counts its calls).
    fn gate(now: u64, index: u64) -> (LeaseGate, Arc<AtomicU64>) {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let g = LeaseGate::new(
            1,
            config(),
            Clock::manual(now),
            Box::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(index)
            }),
        )
        .unwrap();
        g.set_voters(Voters { incoming: vec![1, 2, 3], outgoing: vec![] }).unwrap();
        g.set_role(Role::Leader, 5, None).unwrap();
        g.set_applied(10).unwrap();
        assert!(g.note_term_applied(5));
        (g, calls)
    }

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn a_fresh_lease_serves_with_no_read_index_and_the_boundary_is_strict() {
        let t0 = 1000 * MS;
        let (g, calls) = gate(t0, 10);
        assert_eq!(g.decide(), Decision::Miss(MissReason::AckMissing));
        g.record_ack(2, 5, t0);
        for now in [t0, t0 + LEASE - 1] {
            g.clock().set(now).unwrap();
            assert_eq!(g.decide(), Decision::Serve { index: 10 });
            assert_eq!(g.begin_read(Level::Lease, LONG), Ok(ReadPermit { index: 10, from_lease: true }));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0, "a fresh lease makes no read-index call");
        g.clock().set(t0 + LEASE).unwrap();
        assert_eq!(g.decide(), Decision::Miss(MissReason::AckStale), "now - ack == lease is a miss");
        assert_eq!(g.begin_read(Level::Lease, LONG), Ok(ReadPermit { index: 10, from_lease: false }));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a stale lease costs exactly one read-index");
        let st = g.stats();
        assert_eq!((st.lease_hits, st.miss_ack_stale, st.read_index_calls), (2, 1, 1));
    }

    #[test]
    fn a_lease_read_waits_for_the_applied_index_to_reach_the_commit_index() {
        let t0 = 1000 * MS;
        let (g, calls) = gate(t0, 10);
        g.record_ack(2, 5, t0);
        g.set_committed(12).unwrap();
        assert_eq!(g.decide(), Decision::Serve { index: 12 });
        assert_eq!(g.begin_read(Level::Lease, Duration::ZERO), Err(Refused::Timeout), "applied 10 < committed 12");
        g.set_applied(12).unwrap();
        assert_eq!(g.begin_read(Level::Lease, LONG), Ok(ReadPermit { index: 12, from_lease: true }));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!((g.stats().lease_hits, g.stats().read_index_timeouts), (1, 1));
    }

    #[test]
    fn every_gate_fails_closed() {
        let t0 = 1000 * MS;
        let (g, _) = gate(t0, 10);
        g.record_ack(2, 5, t0);
        assert!(matches!(g.decide(), Decision::Serve { .. }));
        // The clock went back below the ack: the ack is in the future.
        g.clock().set(t0 - 1).unwrap();
        assert_eq!(g.decide(), Decision::Miss(MissReason::AckFuture));
        g.clock().set(0).unwrap();
        assert_eq!(g.decide(), Decision::Miss(MissReason::Clock), "a zero clock");
        g.clock().set(t0).unwrap();
        g.set_transfer(true);
        assert_eq!(g.decide(), Decision::Miss(MissReason::Transfer));
        // Ended or not, the transfer's term stays suspended.
        g.set_transfer(false);
        assert_eq!(g.decide(), Decision::Miss(MissReason::Transfer));
        // A new term: acks, the own-term entry and the transfer are forgotten.
        g.set_role(Role::Leader, 6, None).unwrap();
        g.record_ack(2, 6, t0);
        assert_eq!(g.decide(), Decision::Miss(MissReason::TermNotApplied));
        g.note_term_applied(6);
        assert!(matches!(g.decide(), Decision::Serve { .. }));
        g.set_role(Role::Follower, 7, Some(3)).unwrap();
        assert_eq!(g.decide(), Decision::NotLeader { leader_hint: Some(3) });
        let r = g.begin_read(Level::Lease, LONG).unwrap_err();
        assert_eq!(r.leader_hint(), Some(3));
        let e = Error::from(r);
        assert_eq!((e.status, e.leader_hint), (KEEL_STATUS_NOT_LEADER, Some(3)));
        assert_eq!(g.begin_read(Level::Linearizable, LONG).unwrap_err(), Refused::NotLeader { leader_hint: Some(3) });
        assert_eq!(g.begin_read(Level::Stale, LONG), Ok(ReadPermit { index: 10, from_lease: false }));
        let st = g.stats();
        assert_eq!((st.miss_not_leader, st.lease_hits), (1, 0));
    }

    #[test]
    fn the_read_index_path_waits_for_the_applied_index_or_times_out() {
        let t0 = 1000 * MS;
        let (g, calls) = gate(t0, 12);
        let g = Arc::new(g);
        // Linearizable always asks, even with a fresh lease.
        g.record_ack(2, 5, t0);
        assert_eq!(g.begin_read(Level::Linearizable, Duration::ZERO), Err(Refused::Timeout), "applied 10 < 12");
        assert_eq!(g.stats().read_index_timeouts, 1);
        let reader = {
            let g = g.clone();
            std::thread::spawn(move || g.begin_read(Level::Linearizable, LONG))
        };
        g.set_applied(12).unwrap();
        assert_eq!(reader.join().unwrap(), Ok(ReadPermit { index: 12, from_lease: false }));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_read_index_error_is_returned_and_not_leader_never_names_this_node() {
        let g = LeaseGate::new(
            1,
            config(),
            Clock::manual(5),
            Box::new(|| Err(Error::new(KEEL_STATUS_NOT_LEADER, "stepped down"))),
        )
        .unwrap();
        g.set_voters(Voters { incoming: vec![1, 2, 3], outgoing: vec![] }).unwrap();
        g.set_role(Role::Leader, 1, None).unwrap();
        // keel still has this node as the leader when the host's call says
        // otherwise: the refusal must not send the client back here.
        assert_eq!(g.begin_read(Level::Lease, LONG), Err(Refused::NotLeader { leader_hint: None }));
        let st = g.stats();
        assert_eq!((st.miss_term_not_applied, st.read_index_calls, st.read_index_errors), (1, 1, 1));
        let g2 = LeaseGate::new(1, config(), Clock::manual(5), Box::new(|| Err(Error::new(KEEL_STATUS_IO, "net down")))).unwrap();
        g2.set_role(Role::Leader, 1, None).unwrap();
        assert_eq!(g2.begin_read(Level::Linearizable, LONG).unwrap_err(), Refused::ReadIndex(Error::new(KEEL_STATUS_IO, "net down")));
    }

    /// A callback that returns TIMEOUT is a call that failed, and its read
    /// one that gave up with TIMEOUT: counted once in each.
    #[test]
    fn a_read_index_timeout_counts_as_an_error_and_a_read_timeout() {
        let g = LeaseGate::new(1, config(), Clock::manual(5), Box::new(|| Err(Error::new(KEEL_STATUS_TIMEOUT, "no quorum")))).unwrap();
        g.set_role(Role::Leader, 1, None).unwrap();
        assert_eq!(g.begin_read(Level::Linearizable, LONG), Err(Refused::Timeout));
        let st = g.stats();
        assert_eq!((st.read_index_calls, st.read_index_errors, st.read_index_timeouts), (1, 1, 1));
    }

    /// Close lets go of the host's callback (and what it owns) at once,
    /// with no call in flight, and no read calls the host after it.
    #[test]
    fn a_closed_gate_drops_the_callback_and_never_calls_it() {
        struct Owned(Arc<AtomicU64>);
        impl Drop for Owned {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (calls, dropped) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (c, owned) = (calls.clone(), Owned(dropped.clone()));
        let call = move || {
            let _owns = &owned;
            c.fetch_add(1, Ordering::SeqCst);
            Ok(0)
        };
        let g = LeaseGate::new(1, config(), Clock::manual(5), Box::new(call)).unwrap();
        g.set_role(Role::Leader, 1, None).unwrap();
        assert_eq!(g.begin_read(Level::Linearizable, LONG).map(|p| p.index), Ok(0));
        g.close();
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "the callback outlived the close");
        let e = g.begin_read(Level::Linearizable, LONG).unwrap_err();
        assert_eq!(e, Refused::ReadIndex(Error::new(KEEL_STATUS_CLOSED, "shard is closed")));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        g.close(); // twice is fine
    }

    /// A read past the closed check when a close takes the callback gets
    /// CLOSED from the call itself; the host was never called, so no call
    /// (nor error) is counted.
    #[test]
    fn a_read_that_slips_past_close_counts_no_read_index_call() {
        let (g, calls) = gate(5, 10);
        let g = Arc::new(g);
        // Held as a running call holds it: the read, past its closed
        // check, starts its flight and waits here.
        let mut held = g.read_index.lock();
        let reader = {
            let g = g.clone();
            std::thread::spawn(move || g.begin_read(Level::Linearizable, LONG))
        };
        while g.flight.started() == 0 {
            std::thread::yield_now();
        }
        // What `close` does once it gets the lock.
        g.closed.store(true, Ordering::Release);
        drop(held.take());
        drop(held);
        assert_eq!(reader.join().unwrap(), Err(Refused::ReadIndex(closed())));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        let st = g.stats();
        assert_eq!((st.read_index_calls, st.read_index_errors), (0, 0), "counted a call the host never got");
    }

    #[test]
    fn a_bad_lease_configuration_is_refused() {
        let cfg = LeaseConfig { lease: Duration::from_millis(900), ..config() };
        let e = LeaseGate::new(1, cfg, Clock::monotonic(), Box::new(|| Ok(0))).err().unwrap();
        assert_eq!(e.status, KEEL_STATUS_INVALID_ARGUMENT);
    }

    /// A host that counts vote or pre-vote replies as acks reports acks
    /// of the new term for messages sent before it led that term: no
    /// voter's election timer restarted for this leader then, so they
    /// must not extend its lease.
    #[test]
    fn an_ack_sent_before_the_leadership_was_reported_is_ignored() {
        let t0 = 1000 * MS;
        let (g, _) = gate(t0, 10);
        g.record_ack(2, 5, t0 - 100 * MS); // the vote request's send time
        g.clock().set(t0 + MS).unwrap();
        assert_eq!(g.decide(), Decision::Miss(MissReason::AckMissing));
        assert_eq!(g.begin_read(Level::Lease, LONG), Ok(ReadPermit { index: 10, from_lease: false }));
        assert_eq!(g.stats().acks_ignored_bad_time, 1);
        // A heartbeat sent at the moment of the report counts.
        g.record_ack(2, 5, t0);
        assert_eq!(g.decide(), Decision::Serve { index: 10 });
    }

    #[test]
    fn ignored_acks_are_counted() {
        let (g, _) = gate(1000, 10);
        g.record_ack(2, 4, 900); // older term
        g.record_ack(2, 5, 2000); // stamped in the future
        g.record_ack(9, 5, 900); // a learner
        g.set_role(Role::Follower, 5, Some(2)).unwrap();
        g.record_ack(3, 5, 900);
        let st = g.stats();
        assert_eq!(
            (st.acks_ignored_other_term, st.acks_ignored_bad_time, st.acks_ignored_not_voter, st.acks_ignored_not_leader),
            (1, 1, 1, 1)
        );
    }

    // ---- Deliberately broken gates -------------------------------------
    //
    // Each scenario plays a small timeline of a 3-node cluster (election
    // timeout 1000 ms, lease 700 ms) in which a NEW leader commits a write
    // before the old leader is asked for a lease read. A correct gate must
    // not serve that read from the lease (it would miss the write). The
    // broken variants below exist only in this test module; each one
    // serves the unsafe read, which is what these tests assert.

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Variant {
        Correct,
        /// The leader stamps an ack with the time it RECEIVED the response.
        ReceiveTimeStamps,
        /// The gate ignores a leadership transfer in progress.
        SkipTransferSuspension,
    }

    /// Runs the gate as `variant` would on the facts of `g` at its clock.
    fn decide_as(variant: Variant, g: &LeaseGate) -> Decision {
        let mut s = g.state();
        if variant == Variant::SkipTransferSuspension {
            s.forget_transfer();
        }
        decide(&s, LEASE, g.clock().now())
    }

    /// The old leader sends a heartbeat at t=1000 ms and is paused (GC,
    /// SIGSTOP) before handling the responses. The peers, hearing nothing
    /// more, elect a new leader at 2000 ms (one election timeout after they
    /// received the heartbeat), which commits a write at 2100 ms. The old
    /// leader resumes at 3000 ms, handles the buffered responses and is
    /// asked for a read at 3001 ms. Returns whether the read was served
    /// from the lease although the write committed before it.
    fn paused_leader_serves_stale(variant: Variant) -> bool {
        let sent = 1000 * MS;
        let resumed = 3000 * MS;
        let new_leader_commit = 2100 * MS;
        let (g, _) = gate(sent, 10);
        g.clock().set(resumed).unwrap();
        let stamp = match variant {
            Variant::ReceiveTimeStamps => resumed,
            _ => sent,
        };
        g.record_ack(2, 5, stamp);
        g.record_ack(3, 5, stamp);
        let read_at = resumed + MS;
        g.clock().set(read_at).unwrap();
        let served = matches!(decide_as(variant, &g), Decision::Serve { .. });
        served && new_leader_commit < read_at
    }

    /// The leader has fresh acks (sent at 1000 ms) and starts transferring
    /// leadership to peer 2 at 1000 ms. Peer 2 campaigns at once, without
    /// waiting for an election timeout, wins at 1100 ms and commits a write
    /// at 1150 ms. The old leader, not yet told it lost, is asked for a
    /// read at 1200 ms: 200 ms into a 700 ms lease.
    fn transferring_leader_serves_stale(variant: Variant) -> bool {
        let t0 = 1000 * MS;
        let new_leader_commit = 1150 * MS;
        let (g, _) = gate(t0, 10);
        g.record_ack(2, 5, t0);
        g.record_ack(3, 5, t0);
        g.set_transfer(true);
        let read_at = 1200 * MS;
        g.clock().set(read_at).unwrap();
        let served = matches!(decide_as(variant, &g), Decision::Serve { .. });
        served && new_leader_commit < read_at
    }

    #[test]
    fn stamping_receive_time_would_serve_a_stale_read_after_a_pause() {
        assert!(!paused_leader_serves_stale(Variant::Correct));
        assert!(paused_leader_serves_stale(Variant::ReceiveTimeStamps), "the broken stamping must be caught");
    }

    #[test]
    fn skipping_the_transfer_suspension_would_serve_a_stale_read() {
        assert!(!transferring_leader_serves_stale(Variant::Correct));
        assert!(transferring_leader_serves_stale(Variant::SkipTransferSuspension), "the broken gate must be caught");
    }
}
