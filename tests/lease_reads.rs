//! A shard's reads at a consistency level through the Rust API
//! (`Shard::configure_consensus`, `Shard::begin_read`): the default level,
//! unconfigured shards, the once-only configuration, the gate (with the
//! host's read-index) forgotten when the shard closes, and a poisoned
//! shard that still takes the host's facts.

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

/// The last handle of a shard dropped inside its own read-index callback
/// (a host's registry lets go of the shard there; the read runs on the
/// gate it got from `Shard::consensus`). The drop closes the shard, and
/// the close let go of the callback by waiting for the gate's call lock,
/// which this very thread held through the call: the read never returned.
/// The call now lets go of the callback once it returns.
#[test]
fn the_last_handle_dropped_inside_the_read_index_callback() {
    let dir = TempDir::new("lease-reads-drop-in-callback");
    let s = Shard::open(dir.path(), opts()).unwrap();
    let registry = Arc::new(parking_lot::Mutex::new(Some(s.clone())));
    let (r, calls) = (registry.clone(), Arc::new(AtomicU64::new(0)));
    let c = calls.clone();
    let read_index = Box::new(move || {
        c.fetch_add(1, Ordering::SeqCst);
        drop(r.lock().take());
        Ok(0)
    });
    let config = LeaseConfig {
        lease: Duration::from_millis(700),
        election_timeout_min: Duration::from_secs(1),
        max_clock_drift: Duration::from_millis(100),
        max_round_trip: Duration::from_millis(100),
    };
    s.configure_consensus(Consensus {
        gate: LeaseGate::new(1, config, Clock::manual(0), read_index).unwrap(),
        default_level: Level::Stale,
        read_timeout: Duration::from_secs(60),
    })
    .unwrap();
    let consensus = s.consensus().unwrap();
    consensus.gate.set_role(Role::Leader, 3, None).unwrap();
    drop(s);
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(consensus.gate.begin_read(Level::Linearizable, Duration::from_secs(5)).map(|p| p.index));
    });
    // A failure guard only: when it hangs, it hangs for good.
    let read = rx.recv_timeout(Duration::from_secs(60)).expect("the read whose callback dropped the shard's last handle never returned");
    assert!(registry.lock().is_none() && calls.load(Ordering::SeqCst) == 1, "precondition: the callback ran and dropped the handle");
    assert_eq!(read, Ok(0));
    assert_eq!(Arc::strong_count(&calls), 1, "the shard's close let go of its callback");
    let reopened = Shard::open(dir.path(), opts()).unwrap_or_else(|e| panic!("the dropped shard was closed: {e}"));
    reopened.close().unwrap();
}

/// Panics the flush pass that starts once `armed` is set: a panic in the
/// shard's background work poisons the shard.
#[derive(Default)]
struct PanicAtPass {
    armed: std::sync::atomic::AtomicBool,
}

impl keel::shard::StepHook for PanicAtPass {
    fn at(&self, step: keel::shard::Step) {
        if step == keel::shard::Step::PassStart && self.armed.load(Ordering::Acquire) {
            panic!("a flush pass panics");
        }
    }
}

/// A poisoned shard refuses writes but still serves reads, so it still
/// takes the host's consensus facts: a step-down reported after the
/// poisoning ends its leadership for reads (it used to be refused as
/// POISONED, the gate keeping the old role and the reads going on).
#[test]
fn a_poisoned_shard_still_takes_the_hosts_consensus_facts() {
    let dir = TempDir::new("lease-poisoned");
    let hook = Arc::new(PanicAtPass::default());
    let s = Shard::open(dir.path(), Options { steps: keel::shard::Steps::new(hook.clone()), ..opts() }).unwrap();
    s.put(b"k", b"v").unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    s.configure_consensus(consensus(&calls, Level::Linearizable)).unwrap();
    let c = s.consensus().unwrap();
    c.gate.set_voters(Voters { incoming: vec![1], outgoing: vec![] }).unwrap();
    c.gate.set_role(Role::Leader, 3, None).unwrap();
    c.gate.set_applied(7).unwrap();
    assert_eq!(s.begin_read(None, None).map(|p| p.index), Ok(7));

    hook.armed.store(true, Ordering::Release);
    assert_eq!(s.flush(true).unwrap_err().status, KEEL_STATUS_PANIC);
    assert_eq!(s.put(b"k2", b"w").unwrap_err().status, KEEL_STATUS_POISONED, "the panic poisoned the shard");
    let c = s.consensus();
    assert!(c.is_ok(), "a poisoned shard refused the host's consensus facts: {:?}", c.err());
    c.unwrap().gate.set_role(Role::Follower, 4, Some(2)).unwrap();
    let e = s.begin_read(None, None).unwrap_err();
    assert_eq!((e.status, e.leader_hint), (KEEL_STATUS_NOT_LEADER, Some(2)), "the step-down reached the gate");
    assert!(s.get(b"k").unwrap().is_some(), "a poisoned shard still serves reads");
    let _ = s.close();
    assert_eq!(s.consensus().err().map(|e| e.status), Some(KEEL_STATUS_CLOSED));
}
