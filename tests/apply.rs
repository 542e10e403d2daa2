//! Applying a host's committed entries through a shard (`Shard::apply`),
//! the applied index and fenced writes (docs/LEASE.md, "Applying committed
//! entries" and "Fenced writes"), with real threads and files, and power
//! loss through the fault-injecting file system.
//!
//! - power loss: entry i appends i to one list and puts a key of its own;
//!   after a crash the applied index I names exactly the entries the shard
//!   holds (every i <= I, none above), in sync durability I is every
//!   acknowledged entry, and re-applying entries 1..=I changes nothing (no
//!   item twice in the list). `KEEL_APPLY_SEED=S` replays a seed.
//! - refusals: a stale fence, an append to a value, a key past the limit
//!   and appends that together pass the list limit are refused, yet move
//!   the index; two shards applying the same
//!   entries end identical, and so does each after a reopen.
//! - concurrent fenced writers: accepted tokens never go down in version
//!   order, every refused token is below the final highest.
//! - restarts never lower the highest token (from the manifest after a
//!   flush, from the WAL without one, after power loss).
//! - the lease gate's applied index follows the applies.

mod common;

use common::faultfs::FaultFs;
use common::rng::Rng;
use common::TempDir;
use keel::lease::{Clock, LeaseConfig, LeaseGate, Level, Role, Voters};
use keel::shard::{Consensus, Entry, Fence, Op, Options, Shard, Value};
use keel::status::*;
use keel::wal::Durability;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

fn options(durability: Durability) -> Options {
    Options { durability, wal_segment_size: 1 << 20, flush_interval: None, seal_bytes: 8 << 10, max_sealed: 2, ..Options::default() }
}

fn put(k: &str, v: &str) -> Op {
    Op::Put { key: k.into(), value: v.into() }
}

fn append(k: &str, v: &str) -> Op {
    Op::Append { key: k.into(), item: v.into() }
}

fn fence(bucket: &str, token: u64) -> Fence {
    Fence { bucket: bucket.into(), token }
}

/// Entry i of the power-loss test: its item in the shared list, and a key
/// of its own (some entries are empty, as raft's own entries are).
fn entry(i: u64) -> Vec<Op> {
    if i % 5 == 0 {
        return Vec::new();
    }
    vec![append("log", &i.to_string()), put(&format!("k{i:05}"), &"x".repeat(12 << 10))]
}

fn items(s: &Shard, key: &str) -> Vec<u64> {
    match s.get(key.as_bytes()).unwrap() {
        None => Vec::new(),
        Some(Entry { value: Value::Posting(items), .. }) => {
            items.iter().map(|i| String::from_utf8(i.clone()).unwrap().parse().unwrap()).collect()
        }
        Some(other) => panic!("{key} holds {other:?}"),
    }
}

/// The shard holds exactly entries 1..=applied_index.
fn check_exactly_applied(s: &Shard, what: &str) -> u64 {
    let n = s.applied_index();
    let want: Vec<u64> = (1..=n).filter(|i| i % 5 != 0).collect();
    assert_eq!(items(s, "log"), want, "{what}: the list holds entries 1..={n}");
    for i in 1..=n + 10 {
        let present = s.get(format!("k{i:05}").as_bytes()).unwrap().is_some();
        assert_eq!(present, i <= n && i % 5 != 0, "{what}: key of entry {i} with applied index {n}");
    }
    n
}

/// Power loss with the shard running: the process dies (nothing reaches
/// the disk from here), its threads with it, then the disk keeps what was
/// durable. The close stops the shard's flush job, whose file operations
/// all fail while halted: a dropped shard would leave the job running, and
/// once `crash()` lifts the halt it would go on writing (a manifest from
/// its memory, listing tables the power loss took) into the next process's
/// files, which no real power loss does.
fn crash(fs: &FaultFs, shard: Shard) {
    fs.halt();
    let _ = shard.close();
    fs.crash();
}

fn seed() -> u64 {
    std::env::var("KEEL_APPLY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    })
}

#[test]
fn the_applied_index_survives_power_loss_with_exactly_its_entries() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let dir = Path::new("/apply");
    let mut dropped_wal = false;
    for round in 0..6u64 {
        let fs = FaultFs::new(rng.next());
        let durability = if round % 2 == 0 { Durability::Sync } else { Durability::None };
        let ctx = format!("seed {seed} (KEEL_APPLY_SEED={seed}) round {round}");
        let shard = Shard::open_with_fs(dir, options(durability), Arc::new(fs.clone())).unwrap();
        let total = 60 + rng.below(60);
        for i in 1..=total {
            let a = shard.apply(i, &entry(i), None).unwrap();
            assert!(!a.duplicate && a.refused.is_none(), "{ctx}: entry {i}");
            assert_eq!(a.applied_index, i);
            assert_eq!(a.ops.is_some(), i % 5 != 0);
            // Flushes move the manifest's copy of the index and let the
            // WAL drop the records below it.
            if rng.below(10) == 0 {
                shard.flush(true).unwrap();
            }
        }
        let wal_first = shard.stats().wal_first_seq;
        crash(&fs, shard);
        let shard = Shard::open_with_fs(dir, options(durability), Arc::new(fs.clone())).unwrap();
        let n = check_exactly_applied(&shard, &ctx);
        dropped_wal |= wal_first > 1;
        if durability == Durability::Sync {
            assert_eq!(n, total, "{ctx}: every acknowledged entry survives in sync durability");
        }
        // The host's log hands the entries over again from its own
        // applied index (raft's Config.Applied) or earlier: nothing twice.
        let version = shard.last_version();
        for i in 1..=n {
            let a = shard.apply(i, &entry(i), None).unwrap();
            assert!(a.duplicate && a.ops.is_none(), "{ctx}: entry {i} again");
        }
        assert_eq!(shard.last_version(), version, "{ctx}: a duplicate logs nothing");
        // The lost entries apply again, and the next ones after them.
        for i in n + 1..=total + 3 {
            assert!(!shard.apply(i, &entry(i), None).unwrap().duplicate);
        }
        check_exactly_applied(&shard, &ctx);
        shard.close().unwrap();
        let shard = Shard::open_with_fs(dir, options(durability), Arc::new(fs.clone())).unwrap();
        assert_eq!(check_exactly_applied(&shard, &ctx), total + 3, "{ctx}: after a clean close");
        shard.close().unwrap();
    }
    assert!(dropped_wal, "seed {seed}: some round recovered its index from the manifest, the WAL below it gone");
}

/// An entry of the refusal test: index, operations, fence, refused with.
type TestEntry = (u64, Vec<Op>, Option<Fence>, Option<u32>);

fn refusal_entries() -> Vec<TestEntry> {
    vec![
        (1, vec![put("v", "1"), append("list", "a")], Some(fence("b", 5)), None),
        (2, vec![put("x", "stale")], Some(fence("b", 4)), Some(KEEL_STATUS_FENCED)),
        (3, vec![append("v", "no")], None, Some(KEEL_STATUS_WRONG_KIND)),
        (4, Vec::new(), None, None),
        (6, vec![put("y", "1")], Some(fence("b", 5)), None), // gaps are allowed; equal token passes
        (7, vec![Op::Put { key: vec![b'k'; 5000], value: Vec::new() }], None, Some(KEEL_STATUS_INVALID_ARGUMENT)),
        (8, vec![put("z", "1")], Some(fence("other", 1)), None),
        (9, vec![put("w", "1")], Some(fence("b", 9)), None),
        (10, vec![put("x", "late")], Some(fence("b", 5)), Some(KEEL_STATUS_FENCED)),
        // Each append fits the list limit alone, not both (`list_limited`).
        (11, vec![append("list", "b"), append("list", &"c".repeat(52))], None, Some(KEEL_STATUS_INVALID_ARGUMENT)),
        (12, vec![append("list", "b")], None, None),
    ]
}

/// The refusal test's shards: a list of 64 encoded bytes at most ("a" and
/// "b" take 5 each; 52 bytes take 56).
fn list_limited() -> Options {
    Options { max_list_size: 64, ..options(Durability::Sync) }
}

/// Keys, applied index, highest tokens of buckets "b" and "other".
type ReplicaState = (BTreeMap<Vec<u8>, Value>, u64, Option<u64>, Option<u64>);

fn state(s: &Shard) -> ReplicaState {
    let keys = s.scan(b"", None).unwrap().map(|r| r.map(|(k, e)| (k, e.value))).collect::<keel::Result<_>>().unwrap();
    (keys, s.applied_index(), s.fence_highest(b"b"), s.fence_highest(b"other"))
}

#[test]
fn a_refused_entry_moves_the_index_the_same_way_on_every_replica() {
    let dirs = [TempDir::new("apply-replica-a"), TempDir::new("apply-replica-b")];
    let shards: Vec<Shard> = dirs.iter().map(|d| Shard::open(d.path(), list_limited()).unwrap()).collect();
    for s in &shards {
        assert_eq!(s.apply(0, &[], None).unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT, "index 0 is none");
        for (index, ops, f, refused) in refusal_entries() {
            let before = s.last_version();
            let a = s.apply(index, &ops, f).unwrap();
            assert_eq!(a.refused.as_ref().map(|e| e.status), refused, "entry {index}");
            assert_eq!(a.applied_index, index, "entry {index} moves the index");
            assert!(!a.duplicate);
            match (&a.ops, refused) {
                (Some((first, last)), None) => assert_eq!((*first, *last), (before + 1, before + ops.len() as u64)),
                (None, _) => assert!(refused.is_some() || ops.is_empty(), "entry {index}"),
                (Some(_), Some(_)) => panic!("entry {index}: refused operations got versions"),
            }
            // A refused entry or an empty one logs its index alone.
            let logged = if a.ops.is_some() { ops.len() as u64 + 1 } else { 1 };
            assert_eq!(s.last_version(), before + logged, "entry {index}");
        }
        // Below the applied index: nothing, whatever the entry says.
        assert!(s.apply(5, &[put("never", "1")], None).unwrap().duplicate);
        assert!(s.get(b"never").unwrap().is_none());
        assert_eq!(s.get(b"x").unwrap(), None, "no refused write landed");
        assert_eq!(s.get(b"v").unwrap().unwrap().value, Value::Bytes(b"1".to_vec()));
        // A plain fenced write is refused outright (nothing logged).
        let before = s.last_version();
        assert_eq!(s.write_fenced(&[put("x", "plain")], fence("b", 8)).unwrap_err().status, KEEL_STATUS_FENCED);
        assert_eq!(s.last_version(), before);
    }
    let a = state(&shards[0]);
    assert_eq!(a, state(&shards[1]), "replicas applying the same entries agree");
    assert_eq!((a.1, a.2, a.3), (12, Some(9), Some(1)));
    assert_eq!(a.0[&b"list"[..]], Value::Posting(vec![b"a".to_vec(), b"b".to_vec()]));
    for (s, d) in shards.into_iter().zip(&dirs) {
        s.close().unwrap();
        let s = Shard::open(d.path(), list_limited()).unwrap();
        assert_eq!(state(&s), a, "a reopen replays the same state");
        s.flush(true).unwrap();
        s.close().unwrap();
        let s = Shard::open(d.path(), list_limited()).unwrap();
        assert_eq!(state(&s), a, "and so does one from the manifest");
        s.close().unwrap();
    }
}

#[test]
fn stale_fences_are_refused_under_concurrent_writers() {
    let dir = TempDir::new("apply-fence-writers");
    let shard = Shard::open(dir.path(), options(Durability::None)).unwrap();
    const WRITERS: u64 = 8;
    const WRITES: u64 = 200;
    let handles: Vec<_> = (1..=WRITERS)
        .map(|t| {
            let s = shard.clone();
            thread::spawn(move || {
                let mut accepted = Vec::new();
                let mut refused = Vec::new();
                for i in 0..WRITES {
                    // Each writer's token grows with its writes, at its own pace.
                    let token = t * (i / 16 + 1);
                    match s.write_fenced(&[put(&format!("w/{t}/{i}"), &token.to_string())], fence("b", token)) {
                        Ok((first, _)) => accepted.push((first, token)),
                        Err(e) => {
                            assert_eq!(e.status, KEEL_STATUS_FENCED, "{e}");
                            refused.push((t, i, token));
                        }
                    }
                }
                (accepted, refused)
            })
        })
        .collect();
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for h in handles {
        let (a, r) = h.join().unwrap();
        accepted.extend(a);
        refused.extend(r);
    }
    accepted.sort();
    assert!(accepted.windows(2).all(|w| w[0].1 <= w[1].1), "accepted tokens never go down in version order");
    let highest = accepted.last().unwrap().1;
    assert_eq!(shard.fence_highest(b"b"), Some(highest));
    assert_eq!(highest, WRITERS * ((WRITES - 1) / 16 + 1), "the largest token is never refused");
    for (t, i, token) in &refused {
        assert!(*token < highest, "writer {t} write {i}: token {token}");
        assert!(shard.get(format!("w/{t}/{i}").as_bytes()).unwrap().is_none(), "a refused write left nothing");
    }
    for (v, token) in &accepted {
        assert!(*v > 0 && *token > 0);
    }
    shard.close().unwrap();
}

#[test]
fn a_restart_never_lowers_the_highest_token() {
    let tmp = TempDir::new("apply-fence-restart");
    let reopen = || Shard::open(tmp.path(), options(Durability::Sync)).unwrap();
    let s = reopen();
    s.write_fenced(&[put("a", "1")], fence("b", 10)).unwrap();
    s.apply(1, &[put("a", "2")], Some(fence("c", 3))).unwrap();
    s.close().unwrap();
    // From the WAL alone (nothing flushed).
    let s = reopen();
    assert_eq!((s.fence_highest(b"b"), s.fence_highest(b"c"), s.applied_index()), (Some(10), Some(3), 1));
    assert_eq!(s.write_fenced(&[put("a", "3")], fence("b", 9)).unwrap_err().status, KEEL_STATUS_FENCED);
    // From the manifest once the WAL records are gone.
    for i in 0..40 {
        s.put(format!("fill{i}").as_bytes(), &[0; 64 << 10]).unwrap();
    }
    s.flush(true).unwrap();
    s.close().unwrap();
    let s = reopen();
    assert!(s.stats().wal_first_seq > 2, "the WAL dropped the fenced records");
    assert_eq!((s.fence_highest(b"b"), s.fence_highest(b"c"), s.applied_index()), (Some(10), Some(3), 1));
    assert_eq!(s.write_fenced(&[put("a", "3")], fence("b", 9)).unwrap_err().status, KEEL_STATUS_FENCED);
    s.write_fenced(&[put("a", "3")], fence("b", 10)).unwrap();
    assert_eq!(s.apply(2, &[put("a", "4")], Some(fence("c", 2))).unwrap().refused.unwrap().status, KEEL_STATUS_FENCED);
    s.close().unwrap();

    // Power loss, sync durability: an acknowledged token is never lost.
    let fs = FaultFs::new(seed());
    let dir = Path::new("/fence");
    let s = Shard::open_with_fs(dir, options(Durability::Sync), Arc::new(fs.clone())).unwrap();
    for token in 1..=50 {
        s.write_fenced(&[put("k", &token.to_string())], fence("b", token)).unwrap();
        if token % 20 == 0 {
            s.flush(true).unwrap();
        }
    }
    crash(&fs, s);
    let s = Shard::open_with_fs(dir, options(Durability::Sync), Arc::new(fs.clone())).unwrap();
    assert_eq!(s.fence_highest(b"b"), Some(50));
    s.close().unwrap();
}

#[test]
fn applies_feed_the_lease_gates_applied_index() {
    let tmp = TempDir::new("apply-lease");
    let s = Shard::open(tmp.path(), options(Durability::None)).unwrap();
    for i in 1..=3 {
        s.apply(i, &[put("k", "v")], None).unwrap();
    }
    let config = LeaseConfig {
        lease: Duration::from_millis(700),
        election_timeout_min: Duration::from_secs(1),
        max_clock_drift: Duration::from_millis(100),
        max_round_trip: Duration::from_millis(100),
    };
    // The read-index answers 7 and says when it was asked.
    let (asked_tx, asked) = std::sync::mpsc::channel();
    let asked_tx = parking_lot::Mutex::new(asked_tx);
    let read_index = Box::new(move || {
        let _ = asked_tx.lock().send(());
        Ok(7)
    });
    let gate = LeaseGate::new(1, config, Clock::manual(0), read_index).unwrap();
    s.configure_consensus(Consensus { gate, default_level: Level::Stale, read_timeout: Duration::from_secs(60) }).unwrap();
    let c = s.consensus().unwrap();
    assert_eq!(c.gate.state().applied(), 3, "configuring takes the shard's applied index");
    c.gate.set_voters(Voters { incoming: vec![1], outgoing: vec![] }).unwrap();
    c.gate.set_role(Role::Leader, 3, None).unwrap();
    // A linearizable read waits for index 7: only applying it through the
    // shard lets it go (the host reports no applied index here).
    let reader = {
        let s = s.clone();
        thread::spawn(move || {
            let permit = s.begin_read(Some(Level::Linearizable), Some(Duration::from_secs(60)))?;
            Ok::<_, keel::Error>((permit.index, s.get(b"seven")?))
        })
    };
    asked.recv().unwrap();
    s.apply(7, &[put("seven", "7")], None).unwrap();
    let (index, seen) = reader.join().unwrap().unwrap();
    assert_eq!(index, 7);
    assert!(seen.is_some(), "the read waited for entry 7 and sees it");
    assert_eq!(c.gate.state().applied(), 7, "an apply moves the gate");
    // The host may report the same index itself; a lower one is its error.
    c.gate.set_applied(7).unwrap();
    s.apply(8, &[append("k", "no")], None).unwrap();
    assert_eq!(c.gate.state().applied(), 8, "a refused entry moves the gate too");
    s.close().unwrap();
}

/// A failed sync poisons the shard after the entry (or the fenced write)
/// changed the state in memory. A retry of the entry is not answered
/// "duplicate" (OK for an entry that is not durable), and the token of the
/// write that failed fences no one.
#[test]
fn a_write_whose_sync_failed_leaves_no_trace_a_retry_or_a_token_sees() {
    use common::faultfs::Faults;
    let fs = FaultFs::new(1);
    let s = Shard::open_with_fs(Path::new("/apply-io"), options(Durability::Sync), Arc::new(fs.clone())).unwrap();
    s.apply(1, &[put("a", "1")], None).unwrap();
    fs.set_faults(Faults { eio_sync: 1000, ..Faults::default() });
    assert_eq!(s.apply(2, &[put("a", "2")], None).unwrap_err().status, KEEL_STATUS_IO);
    let retry = s.apply(2, &[put("a", "2")], None);
    assert_eq!(retry.as_ref().err().map(|e| e.status), Some(KEEL_STATUS_POISONED), "entry 2 failed with IO, its retry answered {retry:?}");
    let fs2 = FaultFs::new(2);
    let s2 = Shard::open_with_fs(Path::new("/fence-io"), options(Durability::Sync), Arc::new(fs2.clone())).unwrap();
    s2.write_fenced(&[put("a", "1")], fence("b", 5)).unwrap();
    fs2.set_faults(Faults { eio_sync: 1000, ..Faults::default() });
    assert_eq!(s2.write_fenced(&[put("a", "2")], fence("b", 9)).unwrap_err().status, KEEL_STATUS_IO);
    let later = s2.write_fenced(&[put("a", "3")], fence("b", 7)).unwrap_err();
    assert_eq!(later.status, KEEL_STATUS_POISONED, "token 7 judged against token 9, whose write failed: {later:?}");
}

/// A bucket past the key limit is refused (OK, the index moves) the same
/// way whatever this node's WAL record limit: the refused entry logs its
/// index alone, not the bucket.
#[test]
fn an_oversized_bucket_is_refused_whatever_the_wal_record_limit() {
    let fs = FaultFs::new(3);
    let opts = Options { wal_segment_size: 64 << 10, ..options(Durability::Sync) };
    let s = Shard::open_with_fs(Path::new("/bucket"), opts, Arc::new(fs)).unwrap();
    let big = |len: usize| Some(Fence { bucket: vec![b'b'; len], token: 1 });
    let a = s.apply(1, &[put("a", "1")], big(5000)).unwrap();
    assert_eq!((a.refused.map(|e| e.status), a.applied_index), (Some(KEEL_STATUS_INVALID_ARGUMENT), 1));
    let a = s.apply(2, &[put("a", "2")], big(100 << 10));
    assert!(
        matches!(&a, Ok(a) if a.refused.as_ref().map(|e| e.status) == Some(KEEL_STATUS_INVALID_ARGUMENT) && a.applied_index == 2),
        "a bucket of 100 KiB must be refused with the index moved: {a:?}"
    );
}
