//! A shard's reads at a consistency level through the Rust API
//! (`Shard::configure_consensus`, `Shard::begin_read`): the default level,
//! unconfigured shards, the once-only configuration, and the gate (with the
//! host's read-index) forgotten when the shard closes.

mod common;

use common::TempDir;
use keel::lease::{Clock, LeaseConfig, LeaseGate, Level, ReadPermit, Role, Voters};
use keel::shard::{Consensus, Options, Shard};
use keel::status::*;
use keel::wal::Durability;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn opts() -> Options {
    Options { durability: Durability::None, flush_interval: None, ..Options::default() }
}

/// A consensus setup for node 1 whose read-index answers 7 and counts its
/// calls in `calls` (which the closure keeps alive: its strong count says
/// whether keel still holds the callback).
fn consensus(calls: &Arc<AtomicU64>, default_level: Level) -> Consensus {
    let c = calls.clone();
    let config = LeaseConfig {
        lease: Duration::from_millis(700),
        election_timeout_min: Duration::from_secs(1),
        max_clock_drift: Duration::from_millis(100),
        max_round_trip: Duration::from_millis(100),
    };
    let read_index = Box::new(move || {
        c.fetch_add(1, Ordering::SeqCst);
        Ok(7)
    });
    Consensus {
        gate: LeaseGate::new(1, config, Clock::manual(0), read_index).unwrap(),
        default_level,
        read_timeout: Duration::from_secs(60),
    }
}

#[test]
fn reads_follow_the_shards_default_level_and_configuration() {
    let dir = TempDir::new("lease-reads");
    let s = Shard::open(dir.path(), opts()).unwrap();
    // Unconfigured: stale only.
    assert_eq!(s.begin_read(None, None), Ok(ReadPermit { index: 0, from_lease: false }));
    assert!(s.begin_read(Some(Level::Stale), None).is_ok());
    for level in [Level::Lease, Level::Linearizable] {
        assert_eq!(s.begin_read(Some(level), None).unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT);
    }
    assert_eq!(s.consensus().err().unwrap().status, KEEL_STATUS_INVALID_ARGUMENT);

    let calls = Arc::new(AtomicU64::new(0));
    s.configure_consensus(consensus(&calls, Level::Linearizable)).unwrap();
    let again = s.configure_consensus(consensus(&calls, Level::Stale)).unwrap_err();
    assert_eq!(again.status, KEEL_STATUS_INVALID_ARGUMENT);
    let c = s.consensus().unwrap();
    c.gate.set_role(Role::Follower, 2, Some(3)).unwrap();
    let e = s.begin_read(None, None).unwrap_err();
    assert_eq!((e.status, e.leader_hint), (KEEL_STATUS_NOT_LEADER, Some(3)), "the default level is linearizable");
    assert!(s.begin_read(Some(Level::Stale), None).is_ok());

    c.gate.set_voters(Voters { incoming: vec![1], outgoing: vec![] }).unwrap();
    c.gate.set_role(Role::Leader, 3, None).unwrap();
    c.gate.set_applied(7).unwrap();
    assert_eq!(s.begin_read(None, None), Ok(ReadPermit { index: 7, from_lease: false }));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(s.begin_read(None, Some(Duration::ZERO)).map(|p| p.index), Ok(7));
    drop(c);

    // Closing forgets the gate: the host's callback is released with it.
    assert_eq!(Arc::strong_count(&calls), 2);
    s.close().unwrap();
    assert_eq!(Arc::strong_count(&calls), 1, "the read-index callback outlived the shard's close");
    assert_eq!(s.begin_read(Some(Level::Stale), None).unwrap_err().status, KEEL_STATUS_CLOSED);
    assert_eq!(s.consensus().err().unwrap().status, KEEL_STATUS_CLOSED);
}
