//! The lease gate at the edges a review found (docs/LEASE.md): each test
//! forces a state with the manual clock and explicit facts.

use keel::lease::{Clock, Decision, LeaseConfig, LeaseGate, Level, MissReason, Refused, Role, Voters};
use std::time::Duration;

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

/// Node 1 of {1,2,3}, leader of term 5 with its own-term entry applied at
/// index 10; the read-index always answers 10.
fn leader(now: u64) -> LeaseGate {
    let g = LeaseGate::new(1, config(), Clock::manual(now), Box::new(|| Ok(10))).unwrap();
    g.set_voters(Voters { incoming: vec![1, 2, 3], outgoing: vec![] }).unwrap();
    g.set_role(Role::Leader, 5, None).unwrap();
    g.set_applied(10).unwrap();
    assert!(g.note_term_applied(5));
    g
}

/// An ack stamped u64::MAX collided with the quorum cache's "this node
/// alone, at now" sentinel (consensus.rs SELF_AT_NOW): once recorded, the
/// quorum ack read as "now" whatever the clock said, so after the manual
/// clock went back the lease held at every time, forever, instead of
/// missing with "ack in the future" (and, later, "ack stale").
#[test]
fn an_ack_at_u64_max_never_makes_a_lease_that_holds_forever() {
    let g = leader(u64::MAX);
    g.record_ack(2, 5, u64::MAX); // accepted: sent_at <= now
    // The clock goes back (a manual clock may be set to anything).
    let t = 1_000 * MS;
    g.clock().set(t).unwrap();
    assert_eq!(g.decide(), Decision::Miss(MissReason::AckFuture), "the only peer ack is after now");
    // Hours later, still nothing newer than that one ack: no lease either.
    g.clock().set(t + 3_600_000 * MS).unwrap();
    assert_ne!(g.decide(), Decision::Serve { index: 10 }, "a lease with no ack inside the last 700 ms");
    let permit = g.begin_read(Level::Lease, Duration::from_secs(1)).unwrap();
    assert!(!permit.from_lease, "served from a lease made of a sentinel-valued ack");
}

/// A transfer's MsgTimeoutNow is not taken back when raft abandons the
/// transfer (etcd raft: abortLeaderTransfer after an election timeout).
/// The target may be frozen with the message in its socket buffer; when it
/// thaws it campaigns at once with the transfer flag, and the voters grant
/// it although they heard from the leader moments ago (CheckQuorum's
/// in-lease check is skipped for a transfer campaign). The gate resumed
/// lease reads as soon as the abort was reported, so the old leader served
/// a read that missed the new leader's write; the suspension now lasts the
/// term. Timeline (election timeout 1000 ms, lease 700 ms):
///   t0          acks of 2 and 3; transfer to 2 starts, MsgTimeoutNow sent;
///               2 is frozen with it buffered
///   t0+1000     raft abandons the transfer: set_transfer(false)
///   t0+1060     3 acks a heartbeat sent at t0+1050; the leader is cut off;
///               2 thaws, campaigns for term 6 on the buffered MsgTimeoutNow,
///               3 grants (transfer campaign), 2 leads at t0+1080 and
///               commits a write at t0+1100
///   t0+1120     a lease read on the old leader (ack t0+1050, 70 ms old)
#[test]
fn an_abandoned_transfer_does_not_resume_the_lease_in_its_term() {
    let t0 = 1000 * MS;
    let g = leader(t0);
    g.record_ack(2, 5, t0);
    g.record_ack(3, 5, t0);
    g.set_transfer(true); // before MsgTimeoutNow leaves
    g.clock().set(t0 + 1000 * MS).unwrap();
    g.set_transfer(false); // raft abandoned it; the MsgTimeoutNow is still out there
    g.clock().set(t0 + 1060 * MS).unwrap();
    g.record_ack(3, 5, t0 + 1050 * MS);
    let new_leader_commit = t0 + 1100 * MS;
    let read_at = t0 + 1120 * MS;
    g.clock().set(read_at).unwrap();
    let served = matches!(g.decide(), Decision::Serve { .. });
    assert!(
        !(served && new_leader_commit < read_at),
        "the old leader serves a lease read in the term of a transfer whose MsgTimeoutNow was sent"
    );
}

/// A read that misses while another read's read-index call is running
/// must give up at its own deadline (docs/LEASE.md, "The read-index
/// path": the path is bounded by the read's timeout). The gate checked
/// "closed?" by taking the callback's lock, which the running call holds
/// for as long as the host takes, so the second read waited for the
/// first read's call to return, whatever its own timeout: a host whose
/// read-index hung stalled every reader of the shard, not just one. The
/// first call is held open with a channel; the watchdog only bounds how
/// long the test waits before it reports the hang.
#[test]
fn a_read_waiting_behind_a_running_read_index_call_times_out_on_its_own_deadline() {
    use std::sync::Arc;
    let (entered_tx, entered_rx) = crossbeam_channel::unbounded::<()>();
    let (release_tx, release_rx) = crossbeam_channel::unbounded::<()>();
    let g = LeaseGate::new(
        1,
        config(),
        Clock::manual(1000 * MS),
        Box::new(move || {
            entered_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            Ok(10)
        }),
    )
    .unwrap();
    g.set_voters(Voters { incoming: vec![1, 2, 3], outgoing: vec![] }).unwrap();
    g.set_role(Role::Leader, 5, None).unwrap();
    g.set_applied(10).unwrap();
    let g = Arc::new(g);
    let first = {
        let g = g.clone();
        std::thread::spawn(move || g.begin_read(Level::Linearizable, Duration::from_secs(3600)))
    };
    entered_rx.recv().unwrap(); // the first read's call is running
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let second = {
        let g = g.clone();
        std::thread::spawn(move || done_tx.send(g.begin_read(Level::Linearizable, Duration::ZERO)).unwrap())
    };
    let waited = done_rx.recv_timeout(Duration::from_secs(30));
    release_tx.send(()).unwrap(); // let the first call (and a stuck second read) finish
    assert_eq!(
        waited.expect("the second read waited for the first read's call past its own deadline"),
        Err(Refused::Timeout)
    );
    second.join().unwrap();
    assert!(first.join().unwrap().is_ok());
    assert_eq!(g.stats().read_index_calls, 1, "the read that gave up made no call");
}

/// A manual clock is whatever the host last set, and it may go back (two
/// host threads racing to set it, a time source stepped back). The gate
/// only refused an ack AFTER now, so a clock set back below a time it had
/// already read, but still above the ack, made the ack look younger than
/// the clock had already shown it to be: a lease that had run out served
/// reads again, for as long as the clock had gone back.
#[test]
fn a_clock_set_back_never_revives_a_lease_that_ran_out() {
    let t0 = 1000 * MS;
    let g = leader(t0);
    g.record_ack(2, 5, t0);
    g.clock().set(t0 + LEASE).unwrap();
    assert_eq!(g.decide(), Decision::Miss(MissReason::AckStale), "the lease has run out");
    g.clock().set(t0 + LEASE / 2).unwrap();
    assert_eq!(g.decide(), Decision::Miss(MissReason::AckFuture), "the clock went back");
    let permit = g.begin_read(Level::Lease, Duration::from_secs(1)).unwrap();
    assert!(!permit.from_lease, "served from a lease that ran out before the clock went back");
    // Past the latest time read, a fresh ack makes a lease again.
    let t1 = t0 + LEASE + MS;
    g.clock().set(t1).unwrap();
    g.record_ack(3, 5, t1);
    assert_eq!(g.decide(), Decision::Serve { index: 10 });
}

/// The gate started with this node as the only voter, so a host that
/// reported role, term and the own-term entry before the voters (raft
/// restored them from its log, and "when it changes" had not come yet)
/// had a leader that was its own quorum: it served lease reads with no
/// ack from anyone, while the real voters could elect another leader.
/// Until the voters are reported there is no quorum ack.
#[test]
fn a_leader_whose_voters_were_never_reported_has_no_lease() {
    let t0 = 1000 * MS;
    let g = LeaseGate::new(1, config(), Clock::manual(t0), Box::new(|| Ok(10))).unwrap();
    g.set_role(Role::Leader, 5, None).unwrap();
    g.set_applied(10).unwrap();
    assert!(g.note_term_applied(5));
    assert_eq!(g.decide(), Decision::Miss(MissReason::AckMissing), "a lease with no voter's ack");
    g.record_ack(2, 5, t0); // not a known voter
    assert_eq!(g.decide(), Decision::Miss(MissReason::AckMissing));
    assert_eq!(g.stats().acks_ignored_not_voter, 1);
    // Reported as a single-voter cluster, it is its own quorum.
    g.set_voters(Voters { incoming: vec![1], outgoing: vec![] }).unwrap();
    assert_eq!(g.decide(), Decision::Serve { index: 10 });
}

/// A read waiting for the applied index to reach its read-index (or, for
/// a lease read, the commit index) was only woken by applies. A close
/// ends applies for good, so such a read slept on to its deadline (with a
/// timeout too large to add, a year) and then failed with TIMEOUT,
/// though the shard it would read from was closed: a host thread held
/// long past the close. Like a read that misses the lease after the
/// close, it fails with CLOSED, at once. The watchdog only bounds how
/// long the test waits before it reports the hang.
#[test]
fn a_read_waiting_for_the_applied_index_fails_with_closed_when_the_gate_closes() {
    use keel::{status::KEEL_STATUS_CLOSED, Error};
    use std::sync::Arc;
    let t0 = 1000 * MS;
    let (entered_tx, entered_rx) = crossbeam_channel::unbounded::<()>();
    let g = LeaseGate::new(
        1,
        config(),
        Clock::manual(t0),
        Box::new(move || {
            entered_tx.send(()).unwrap();
            Ok(20)
        }),
    )
    .unwrap();
    g.set_voters(Voters { incoming: vec![1, 2, 3], outgoing: vec![] }).unwrap();
    g.set_role(Role::Leader, 5, None).unwrap();
    g.set_applied(10).unwrap();
    assert!(g.note_term_applied(5));
    g.record_ack(2, 5, t0);
    g.set_committed(20).unwrap();
    assert_eq!(g.decide(), Decision::Serve { index: 20 }, "a lease read waits for index 20");
    let g = Arc::new(g);
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let readers: Vec<_> = [Level::Linearizable, Level::Lease]
        .into_iter()
        .map(|level| {
            let (g, done_tx) = (g.clone(), done_tx.clone());
            std::thread::spawn(move || done_tx.send((level, g.begin_read(level, Duration::from_secs(3600)))).unwrap())
        })
        .collect();
    entered_rx.recv().unwrap(); // the linearizable read's call answered 20
    g.close();
    for _ in 0..2 {
        let (level, r) = done_rx.recv_timeout(Duration::from_secs(30)).expect("a read waited for an apply past the close");
        assert_eq!(Error::from(r.unwrap_err()).status, KEEL_STATUS_CLOSED, "{level:?}");
    }
    readers.into_iter().for_each(|r| r.join().unwrap());
    assert_eq!(g.stats().read_index_timeouts, 0);
}

/// Term 0 is the term before any election (the gate starts as a follower
/// of it; etcd raft's first leader has term 1), and 0 is also what an
/// unset term field reads as. A leader of term 0 was accepted, and with it
/// acks and an own-term entry of "term 0": a host passing an unset term
/// got lease reads from facts that named no real term. It is refused.
#[test]
fn a_leader_of_term_0_is_refused_and_its_acks_are_not_a_lease() {
    use keel::status::KEEL_STATUS_INVALID_ARGUMENT;
    let t0 = 1000 * MS;
    let g = LeaseGate::new(1, config(), Clock::manual(t0), Box::new(|| Ok(10))).unwrap();
    g.set_voters(Voters { incoming: vec![1, 2, 3], outgoing: vec![] }).unwrap();
    g.set_applied(10).unwrap();
    assert_eq!(g.set_role(Role::Leader, 0, None).unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT);
    assert!(!g.note_term_applied(0), "an entry of term 0 counted");
    g.record_ack(2, 0, t0);
    assert_eq!(g.decide(), Decision::NotLeader { leader_hint: None });
    assert_eq!(g.stats().acks_ignored_not_leader, 1);
    // A follower of term 0 is the starting state: reporting it is fine.
    g.set_role(Role::Follower, 0, Some(2)).unwrap();
    assert_eq!(g.decide(), Decision::NotLeader { leader_hint: Some(2) });
}

/// A follower whose host names this node as the leader (a stale hint)
/// knows no leader: the facts keel_shard_lease_stats reports said
/// leader_id = this node next to role FOLLOWER, which its doc keeps for a
/// node that leads.
#[test]
fn a_follower_hinted_to_itself_reports_no_leader() {
    let g = leader(1000 * MS);
    g.set_role(Role::Follower, 6, Some(1)).unwrap();
    let facts = g.state();
    assert_eq!((facts.role(), facts.leader()), (Role::Follower, None));
    g.set_role(Role::Follower, 6, Some(2)).unwrap();
    assert_eq!(g.state().leader(), Some(2), "a hint naming another node is kept");
}

/// A read-index callback that panics was called all the same: the read's
/// caller gets the panic, and the stats count the call as made and failed
/// (they counted nothing, as if no call had been made).
#[test]
fn a_panicking_read_index_callback_is_counted() {
    let g = LeaseGate::new(1, config(), Clock::manual(1000 * MS), Box::new(|| panic!("host read-index blew up"))).unwrap();
    g.set_voters(Voters { incoming: vec![1, 2, 3], outgoing: vec![] }).unwrap();
    g.set_role(Role::Leader, 5, None).unwrap();
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| g.begin_read(Level::Linearizable, Duration::from_secs(3600))));
    assert!(read.is_err(), "the panic reaches the reader");
    let st = g.stats();
    assert_eq!((st.read_index_calls, st.read_index_errors), (1, 1));
}
