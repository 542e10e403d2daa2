//! Shard transfer between two engines in one process, over two nodes on
//! real loopback sockets (issue #11 §2–§3): snapshot and WAL-delta
//! transfers end with equal content digests on both sides, a WAL delta
//! falls back to a snapshot when the records it needs are gone, a
//! receiver refuses a shard its host did not announce, and the receiver
//! sees one step at a time, in order. No timing assertions.

mod common;

use common::side::Side;
use keel::node::NodeOptions;
use keel::shard::{Options, Shard, Step, StepHook, Steps};
use keel::status::*;
use keel::transfer::{shard_digest, wire, Finish, Method, ProgressFn, Report, Stage, TransferOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SHARD: u32 = 7;

fn shard_options() -> Options {
    Options {
        flush_interval: None,
        wal_segment_size: 64 << 10,
        // Small segments: the source's state spans sealed tables (merged
        // as they pile up) and the appendable segment.
        seal_bytes: 16 << 10,
        max_sealed: 3,
        ..Options::default()
    }
}

fn side(tag: &str, id: u64) -> Side {
    side_with(tag, id, 4)
}

/// A side that runs at most `transfers` transfers at once each way.
fn side_with(tag: &str, id: u64, transfers: u32) -> Side {
    side_on(tag, id, transfers, shard_options())
}

/// A side whose engine opens its shards with `opts`.
fn side_on(tag: &str, id: u64, transfers: u32, opts: Options) -> Side {
    let node = NodeOptions {
        node_id: id,
        max_frame_bytes: 1 << 20,
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_misses: 50,
        max_concurrent_transfers: transfers,
        ..NodeOptions::default()
    };
    Side::temp(tag, node, opts)
}

/// A source (node 1) connected to a receiver (node 2).
fn pair(tag: &str) -> (Side, Side) {
    let (a, b) = (side(&format!("{tag}-src"), 1), side(&format!("{tag}-dst"), 2));
    a.node.connect(2, &b.node.addr().to_string()).unwrap();
    (a, b)
}

/// Writes a deterministic mix of puts, appends and deletes.
fn write_mix(shard: &Shard, seed: u64, n: u64) {
    for i in 0..n {
        let x = seed.wrapping_mul(6364136223846793005).wrapping_add(i.wrapping_mul(1442695040888963407));
        let key = format!("k{:04}", x % 300);
        match x % 7 {
            0 => {
                shard.delete(key.as_bytes()).unwrap();
            }
            1 | 2 => {
                let _ = shard.append(format!("list{:03}", x % 40).as_bytes(), format!("item{i}").as_bytes()).unwrap();
            }
            _ => {
                shard.put(key.as_bytes(), &vec![(i % 251) as u8; (x % 200) as usize]).unwrap();
            }
        }
    }
}

fn small_batches(method: Method) -> TransferOptions {
    TransferOptions { method, max_batch_bytes: 4096, max_batch_records: 16, ..TransferOptions::default() }
}

/// The source's side spoken by hand: step `step` of transfer `id`, the
/// step before it acknowledged, from `src` to node 2.
fn send_step(src: &Side, id: u64, ty: u16, step: u64, body: &[u8]) {
    let mut p = wire::step(id, step, step - 1);
    p.extend_from_slice(body);
    src.node.send(2, ty, &p).unwrap();
}

/// Steps 1 and 2 of a hand-made snapshot of SHARD at version `base`,
/// without the source's checksum of it.
fn begin_snapshot(src: &Side, id: u64, base: u64) {
    send_step(src, id, wire::START, 1, &[&SHARD.to_le_bytes()[..], &[wire::MODE_SNAPSHOT]].concat());
    send_step(src, id, wire::BEGIN, 2, &[&[wire::MODE_SNAPSHOT][..], &base.to_le_bytes(), &[0], &0u32.to_le_bytes()].concat());
}

/// Waits until the receiver's counters show what a step did: `steps`
/// counts a step as it arrives, before the counters its handling moves.
fn until_received(dst: &Side, what: &str, done: impl Fn(&keel::transfer::ReceiverStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&dst.transfers.receiver_stats()) {
        assert!(Instant::now() < deadline, "{what}: {:?}", dst.transfers.receiver_stats());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The received shard, opened by its host once the transfer finished.
fn received(dst: &Side) -> Shard {
    dst.engine.open_shard(SHARD, false).unwrap()
}

/// What every transfer must show on both sides.
fn check_pipeline(r: &Report, dst: &Side) {
    assert!(r.max_batches_in_memory <= 2, "the source held {} batches at once", r.max_batches_in_memory);
    let s = dst.transfers.receiver_stats();
    assert_eq!((s.out_of_order, s.overlapped, s.malformed), (0, 0, 0), "{s:?}");
    assert_eq!(s.max_in_flight, 1, "one step in flight at a time: {s:?}");
}

#[test]
fn a_snapshot_transfer_gives_the_receiver_the_same_contents() {
    let (src, dst) = pair("snap");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_mix(&shard, 1, 1500);
    shard.flush(true).unwrap();
    write_mix(&shard, 2, 500); // some of it only in the WAL and the appendable segment
    assert!(shard.stats().sealed_segments > 0, "the snapshot spans immutable segments");
    dst.transfers.expect(SHARD, 1);
    let r = src.transfers.send_shard(&shard, SHARD, 2, &small_batches(Method::Snapshot)).unwrap();
    assert!(r.snapshot && r.fallback.is_none(), "{r:?}");
    assert_eq!(r.snapshot_version, Some(shard.last_version()));
    assert!(r.batches > 10 && r.entries > 100, "{r:?}");
    check_pipeline(&r, &dst);
    // The finished shard stays open in the receiving engine, for its host
    // to take without recovering it again.
    assert_eq!(dst.engine.stats().unwrap().open_shards, 1);
    // Until the transfer finished the host could not open it; now it can.
    let got = received(&dst);
    assert_eq!(got.last_version(), shard.last_version());
    assert_eq!(shard_digest(&got).unwrap(), shard_digest(&shard).unwrap());
    assert_eq!(dst.transfers.receiver_stats().finished, 1);
    assert_eq!(dst.engine.open_shard(SHARD, false).err().map(|e| e.status), Some(KEEL_STATUS_BUSY), "taken once, like any open shard");
    // What it holds is durable: closed and recovered, it is the same.
    got.close().unwrap();
    let again = received(&dst);
    assert_eq!(shard_digest(&again).unwrap(), shard_digest(&shard).unwrap());
}

/// A received snapshot is not logged: its entries reach tables through
/// seals as they arrive (the receiver's memory stays near `seal_bytes`
/// whatever the shard's size), the last seal at SNAPSHOT_END, so the
/// received shard's segment logs hold nothing.
#[test]
fn a_received_snapshot_goes_to_tables_without_its_log() {
    let (src, dst) = pair("tables");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    for i in 0..400u32 {
        shard.put(format!("key{i:05}").as_bytes(), &[i as u8; 300]).unwrap();
    }
    dst.transfers.expect(SHARD, 1);
    let r = src.transfers.send_shard(&shard, SHARD, 2, &small_batches(Method::Snapshot)).unwrap();
    assert!(r.snapshot && r.ops == 0, "{r:?}");
    let got = received(&dst);
    let st = got.stats();
    // 120 KB of snapshot against 16 KiB segments: several seals (merged
    // down to max_sealed as they pile up), nothing left unsealed.
    assert!(st.sealed_segments >= 1 && st.appendable_keys == 0, "{st:?}");
    let segs = dst.dir().join("shards").join(SHARD.to_string()).join("segments");
    let logged: u64 = std::fs::read_dir(&segs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(logged, 0, "no snapshot entry was written to a segment log");
    assert_eq!(shard_digest(&got).unwrap(), shard_digest(&shard).unwrap());
}

/// `pipeline: false` (the benchmark's baseline) moves the same shard,
/// one batch at a time, and its read and send times never overlap.
#[test]
fn a_sequential_transfer_moves_the_shard_with_one_batch_in_memory() {
    let (src, dst) = pair("sequential");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_mix(&shard, 21, 1200);
    shard.flush(true).unwrap();
    write_mix(&shard, 22, 400);
    dst.transfers.expect(SHARD, 1);
    let opts = TransferOptions { pipeline: false, ..small_batches(Method::Snapshot) };
    let began = Instant::now();
    let r = src.transfers.send_shard(&shard, SHARD, 2, &opts).unwrap();
    let wall = began.elapsed();
    assert!(r.snapshot && r.batches > 10, "{r:?}");
    assert_eq!(r.max_batches_in_memory, 1, "a batch is read only after the one before was acknowledged: {r:?}");
    check_pipeline(&r, &dst);
    // Both times are sums of disjoint spans of the transfer's own thread.
    assert!(!r.read_time.is_zero() && !r.send_time.is_zero(), "{r:?}");
    assert!(r.read_time + r.send_time <= wall, "read {:?} + send {:?} past the {wall:?} the transfer took", r.read_time, r.send_time);
    let got = received(&dst);
    assert_eq!(shard_digest(&got).unwrap(), shard_digest(&shard).unwrap());
    got.close().unwrap();

    // And a WAL delta after it, sequential too.
    shard.set_keep_from(r.last_version + 1).unwrap();
    write_mix(&shard, 23, 600);
    dst.transfers.expect(SHARD, 1);
    let d = src.transfers.send_shard(&shard, SHARD, 2, &TransferOptions { pipeline: false, ..small_batches(Method::WalDelta) }).unwrap();
    assert!(!d.snapshot && d.ops == shard.last_version() - r.last_version, "{d:?}");
    assert_eq!(d.max_batches_in_memory, 1, "{d:?}");
    assert_eq!(shard_digest(&received(&dst)).unwrap(), shard_digest(&shard).unwrap());
}

#[test]
fn a_wal_delta_sends_only_the_records_the_receiver_lacks() {
    let (src, dst) = pair("delta");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_mix(&shard, 3, 800);
    dst.transfers.expect(SHARD, 1);
    let first = src.transfers.send_shard(&shard, SHARD, 2, &small_batches(Method::Snapshot)).unwrap();
    let had = first.last_version;
    // The host keeps what the receiver lacks (one holder among the pins),
    // flushes (which truncates everything else) and writes on.
    shard.set_keep_from(had + 1).unwrap();
    write_mix(&shard, 4, 700);
    shard.flush(true).unwrap();
    write_mix(&shard, 5, 100);
    let behind = received(&dst);
    assert_ne!(shard_digest(&behind).unwrap(), shard_digest(&shard).unwrap());
    behind.close().unwrap();

    dst.transfers.expect(SHARD, 1);
    let r = src.transfers.send_shard(&shard, SHARD, 2, &small_batches(Method::WalDelta)).unwrap();
    assert!(!r.snapshot && r.fallback.is_none(), "{r:?}");
    assert_eq!(r.receiver_had, had);
    assert_eq!(r.ops, shard.last_version() - had, "exactly the records after the receiver's version");
    check_pipeline(&r, &dst);
    let got = received(&dst);
    assert_eq!(shard_digest(&got).unwrap(), shard_digest(&shard).unwrap());
}

#[test]
fn a_wal_delta_falls_back_to_a_snapshot_when_the_records_are_gone() {
    let (src, dst) = pair("fallback");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_mix(&shard, 6, 300);
    dst.transfers.expect(SHARD, 1);
    let had = src.transfers.send_shard(&shard, SHARD, 2, &small_batches(Method::Snapshot)).unwrap().last_version;
    received(&dst).close().unwrap();
    // Enough writes and flushes that the WAL rotates past `had` and drops it.
    for seed in 7..12 {
        write_mix(&shard, seed, 600);
        shard.flush(true).unwrap();
    }
    assert!(shard.stats().wal_first_seq > had + 1, "{:?}", shard.stats());

    dst.transfers.expect(SHARD, 1);
    let r = src.transfers.send_shard(&shard, SHARD, 2, &small_batches(Method::WalDelta)).unwrap();
    assert!(r.snapshot, "{r:?}");
    let why = r.fallback.as_deref().expect("the fallback says why");
    assert!(why.contains("no longer holds"), "{why}");
    // A WAL delta's START showed the receiver's version, fallback or not.
    assert_eq!(r.receiver_had, had, "{r:?}");
    check_pipeline(&r, &dst);
    let got = received(&dst);
    assert_eq!(shard_digest(&got).unwrap(), shard_digest(&shard).unwrap());
    got.close().unwrap();

    // A snapshot's START does not open the receiver's shard (the snapshot
    // replaces it, whatever it holds): it has no version to report.
    write_mix(&shard, 12, 100);
    dst.transfers.expect(SHARD, 1);
    let s = src.transfers.send_shard(&shard, SHARD, 2, &small_batches(Method::Snapshot)).unwrap();
    assert_eq!((s.snapshot, s.receiver_had), (true, 0), "the receiver had {}: {s:?}", r.last_version);
    assert_eq!(shard_digest(&received(&dst)).unwrap(), shard_digest(&shard).unwrap());
}

/// A source whose WAL holds a gap after the receiver's version (versions
/// its recovery declared lost: a crash's unsynced tail, the skip a
/// salvage writes into each shard's extent record) sends a snapshot. The
/// WAL delta read across the gap, and the receiver refused its records
/// (PROTOCOL: 76 follows 25), so every later WAL delta of the shard
/// failed the same way and left the receiver's copy incoming.
#[test]
fn a_wal_delta_across_a_gap_in_the_source_wal_falls_back_to_a_snapshot() {
    let dst = side("gap-dst", 2);
    let crash = common::TempDir::new("gap-src-crash");
    let had = {
        let src = side("gap-src", 1);
        src.node.connect(2, &dst.node.addr().to_string()).unwrap();
        let shard = src.engine.open_shard(SHARD, true).unwrap();
        write_mix(&shard, 13, 20);
        dst.transfers.expect(SHARD, 1);
        let had = src.transfers.send_shard(&shard, SHARD, 2, &small_batches(Method::Snapshot)).unwrap().last_version;
        write_mix(&shard, 14, 5);
        shard.sync_wal().unwrap();
        // The source crashes here.
        common::copy_tree(src.dir(), crash.path());
        had
    };
    received(&dst).close().unwrap();
    // Its WAL's extent record says numbers up to 75 were handed out: the
    // next open declares those after its last record a gap.
    let meta = crash.path().join(format!("shards/{SHARD}/wal")).join(keel::wal::extent::META_NAME);
    let mut extent = keel::wal::extent::Extent::decode(&std::fs::read(&meta).unwrap()).unwrap();
    assert!(extent.next_seq <= had + 6, "{extent:?}");
    extent.next_seq = 76;
    std::fs::write(&meta, extent.encode()).unwrap();
    // Restarted, the host keeps the records its follower lacks (before
    // the first pass after the open could drop them).
    let hold = Arc::new(PassHold::default());
    hold.set(|s| s.0 = true);
    let src = Side::open(crash.path(), common::side::node_options(1), Options { steps: Steps::new(hold.clone()), ..shard_options() });
    src.node.connect(2, &dst.node.addr().to_string()).unwrap();
    let shard = src.engine.open_shard(SHARD, false).unwrap();
    shard.set_keep_from(had + 1).unwrap();
    hold.set(|s| s.2 = true);
    assert_eq!(shard.last_version(), 75);
    write_mix(&shard, 15, 5);
    shard.flush(true).unwrap();
    assert!(shard.stats().wal_first_seq <= had + 1, "{:?}", shard.stats());

    dst.transfers.expect(SHARD, 1);
    let r = src.transfers.send_shard(&shard, SHARD, 2, &small_batches(Method::WalDelta)).unwrap();
    assert!(r.snapshot, "{r:?}");
    let why = r.fallback.as_deref().expect("the fallback says why");
    assert!(why.contains("26..=75"), "{why}");
    let got = received(&dst);
    assert_eq!(got.last_version(), shard.last_version());
    assert_eq!(shard_digest(&got).unwrap(), shard_digest(&shard).unwrap());
}

/// A listed shard whose folder is gone on the receiver is damage
/// (CORRUPTION, as to an open there), no copy to build a WAL delta on: the
/// source sends a snapshot in its place. Its START failed as IO before,
/// the marker written into a folder that is not there.
#[test]
fn a_wal_delta_to_a_listed_shard_whose_folder_is_gone_sends_a_snapshot() {
    let (src, dst) = pair("gone");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_mix(&shard, 21, 300);
    dst.transfers.expect(SHARD, 1);
    src.transfers.send_shard(&shard, SHARD, 2, &small_batches(Method::Snapshot)).unwrap();
    received(&dst).close().unwrap();
    let folder = dst.dir().join("shards").join(SHARD.to_string());
    std::fs::remove_dir_all(&folder).unwrap();
    let e = dst.engine.open_shard(SHARD, false).map(drop).unwrap_err();
    assert_eq!(e.status, KEEL_STATUS_CORRUPTION, "{e}");
    write_mix(&shard, 22, 100);

    dst.transfers.expect(SHARD, 1);
    let r = src.transfers.send_shard(&shard, SHARD, 2, &small_batches(Method::WalDelta)).unwrap();
    assert!(r.snapshot, "{r:?}");
    assert_eq!(r.fallback.as_deref(), Some("the receiver has no copy of the shard"), "{r:?}");
    check_pipeline(&r, &dst);
    assert_eq!(shard_digest(&received(&dst)).unwrap(), shard_digest(&shard).unwrap());
}

#[test]
fn a_receiver_refuses_a_shard_its_host_did_not_announce() {
    let (src, dst) = pair("refuse");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_mix(&shard, 13, 50);
    let e = src.transfers.send_shard(&shard, SHARD, 2, &small_batches(Method::Snapshot)).unwrap_err();
    assert_eq!(e.status, KEEL_STATUS_REFUSED, "{e}");
    // Announced from another peer, or another shard: still refused.
    dst.transfers.expect(SHARD, 9);
    dst.transfers.expect(SHARD + 1, 1);
    let e = src.transfers.send_shard(&shard, SHARD, 2, &small_batches(Method::Snapshot)).unwrap_err();
    assert_eq!(e.status, KEEL_STATUS_REFUSED, "{e}");
    assert_eq!(dst.transfers.receiver_stats().refused_unannounced, 2);
    assert_eq!(dst.engine.open_shard(SHARD, false).err().map(|e| e.status), Some(KEEL_STATUS_NOT_FOUND));
}

#[test]
fn writes_during_the_transfer_reach_the_receiver_and_the_hand_over_stops_them() {
    let (src, dst) = pair("writer");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_mix(&shard, 14, 1000);
    dst.transfers.expect(SHARD, 1);
    // A writer keeps writing through the whole transfer until the hand-over
    // refuses it; every write it saw succeed must be on the receiver.
    let writer = {
        let shard = shard.clone();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            for i in 0u64.. {
                let key = format!("w{:05}", i % 5000);
                match shard.put(key.as_bytes(), &i.to_le_bytes()) {
                    Ok(v) => acked.push((key, i, v)),
                    Err(e) => {
                        assert_eq!(e.status, KEEL_STATUS_MOVED, "{e}");
                        return acked;
                    }
                }
            }
            unreachable!()
        })
    };
    let opts = TransferOptions { auto_finish: Some(Finish::HandOver), ..small_batches(Method::Snapshot) };
    let r = src.transfers.send_shard(&shard, SHARD, 2, &opts).unwrap();
    let acked = writer.join().unwrap();
    assert!(r.handed_over && shard.is_moved(), "{r:?}");
    assert_eq!(shard.put(b"late", b"x").unwrap_err().status, KEEL_STATUS_MOVED);
    assert_eq!(r.last_version, shard.last_version(), "everything applied was sent");
    check_pipeline(&r, &dst);
    let got = received(&dst);
    assert_eq!(shard_digest(&got).unwrap(), shard_digest(&shard).unwrap());
    // The writer's last successful write, at its version, is there.
    if let Some((key, i, v)) = acked.last() {
        let e = got.get(key.as_bytes()).unwrap().expect("the last acknowledged write arrived");
        assert_eq!((e.version, e.value), (*v, keel::shard::Value::Bytes(i.to_le_bytes().to_vec())));
    }
}

#[test]
fn a_digest_covers_versions_and_kinds_not_only_bytes() {
    let (a, b) = (side("digest-a", 1), side("digest-b", 2));
    let (x, y) = (a.engine.open_shard(1, true).unwrap(), b.engine.open_shard(1, true).unwrap());
    x.put(b"k", b"v").unwrap();
    y.put(b"k", b"v").unwrap();
    assert_eq!(shard_digest(&x).unwrap(), shard_digest(&y).unwrap());
    // Same bytes at another version.
    y.put(b"k", b"v").unwrap();
    assert_ne!(shard_digest(&x).unwrap(), shard_digest(&y).unwrap());
    // A posting list holding the value's bytes as its one item.
    x.put(b"k", b"v").unwrap();
    x.put(b"a", b"-").unwrap();
    y.append(b"a", b"-").unwrap();
    assert_eq!(x.last_version(), y.last_version());
    assert_ne!(shard_digest(&x).unwrap(), shard_digest(&y).unwrap());
}

#[test]
fn an_unfinished_incoming_shard_is_busy_and_steps_must_come_one_at_a_time_in_order() {
    let (src, dst) = pair("steps");
    dst.transfers.expect(SHARD, 1);
    // The source's side spoken by hand, to put steps out of order.
    let send = |id: u64, ty: u16, step: u64, acked: u64, body: &[u8]| {
        let mut p = wire::step(id, step, acked);
        p.extend_from_slice(body);
        src.node.send(2, ty, &p).unwrap();
    };
    let until = |what: &str, done: &dyn Fn(&keel::transfer::ReceiverStats) -> bool| until_received(&dst, what, done);
    // The hand-made snapshot claims version 5 of the real shard, with the
    // source's checksum of it, and never completes.
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_mix(&shard, 15, 200);
    let crc = shard.record_crc(5).unwrap().unwrap();
    let start = [&SHARD.to_le_bytes()[..], &[wire::MODE_SNAPSHOT]].concat();
    let begin = [&[wire::MODE_SNAPSHOT][..], &5u64.to_le_bytes(), &[1], &crc.to_le_bytes()].concat();
    send(99, wire::START, 1, 0, &start);
    send(99, wire::BEGIN, 2, 1, &begin);
    // BEGIN makes the shard incoming; no counter says it was handled.
    let incoming = || dst.engine.open_shard(SHARD, false).err().is_some_and(|e| e.status == KEEL_STATUS_BUSY);
    until("BEGIN handled", &|s| s.steps == 2 && incoming());
    let busy = |what: &str| {
        let e = dst.engine.open_shard(SHARD, false).err().unwrap_or_else(|| panic!("{what}: the incoming shard opened"));
        assert_eq!(e.status, KEEL_STATUS_BUSY, "{what}: {e}");
    };
    // Step 3 sent before the ACK of step 2: two in flight.
    send(99, wire::OPS, 3, 1, &0u32.to_le_bytes());
    until("the overlapping step handled", &|s| s.steps == 3 && s.failed == 1);
    let s = dst.transfers.receiver_stats();
    assert_eq!((s.overlapped, s.max_in_flight), (1, 2), "{s:?}");
    busy("after the reception was abandoned");
    // A step skipped.
    send(100, wire::START, 1, 0, &start);
    send(100, wire::BEGIN, 3, 2, &begin);
    until("the skipping step handled", &|s| s.steps == 5 && s.failed == 2);
    let s = dst.transfers.receiver_stats();
    assert_eq!(s.out_of_order, 1, "{s:?}");
    busy("after a second abandoned reception");

    // A real transfer finishes it; then the host opens it. The remains of
    // the snapshot that never completed are no base for a WAL delta.
    let r = src.transfers.send_shard(&shard, SHARD, 2, &small_batches(Method::WalDelta)).unwrap();
    assert!(r.snapshot && r.fallback.is_some(), "{r:?}");
    assert_eq!(shard_digest(&received(&dst)).unwrap(), shard_digest(&shard).unwrap());
}

/// Holds the first flush pass that starts after `arm` until `release`,
/// and says when it holds one.
#[derive(Default)]
struct PassHold {
    /// (armed, holding, released)
    state: std::sync::Mutex<(bool, bool, bool)>,
    cv: std::sync::Condvar,
}

impl PassHold {
    fn set(&self, f: impl FnOnce(&mut (bool, bool, bool))) {
        f(&mut self.state.lock().unwrap());
        self.cv.notify_all();
    }

    fn wait_holding(&self) {
        let (st, timeout) =
            self.cv.wait_timeout_while(self.state.lock().unwrap(), Duration::from_secs(60), |s| !s.1).unwrap();
        assert!(!timeout.timed_out() || st.1, "no flush pass started");
    }
}

impl StepHook for PassHold {
    fn at(&self, step: Step) {
        if step != Step::PassStart {
            return;
        }
        let mut st = self.state.lock().unwrap();
        if st.0 && !st.2 {
            st.1 = true;
            self.cv.notify_all();
            drop(self.cv.wait_while(st, |s| !s.2).unwrap());
        }
    }
}

/// A step that waits long (SNAPSHOT_END waits for the flush pass that
/// seals what was installed, held here by a hook) runs off the
/// connection's reader thread: the reader goes on answering the source's
/// heartbeats, where a step run on it used to stop them (and a wait past
/// the source's silence limit dropped the connection). No timing: the
/// source's PONG count must grow while the step is held.
#[test]
fn a_receiver_answers_heartbeats_while_a_step_waits() {
    let hold = Arc::new(PassHold::default());
    let src = side("beat-src", 1);
    let dst = side_on("beat-dst", 2, 4, Options { steps: Steps::new(hold.clone()), ..shard_options() });
    src.node.connect(2, &dst.node.addr().to_string()).unwrap();
    dst.transfers.expect(SHARD, 1);
    let send = |step: u64, ty: u16, body: &[u8]| {
        let mut p = wire::step(42, step, step - 1);
        p.extend_from_slice(body);
        src.node.send(2, ty, &p).unwrap();
    };
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_mix(&shard, 3, 20);
    let crc = shard.record_crc(5).unwrap().unwrap();
    send(1, wire::START, &[&SHARD.to_le_bytes()[..], &[wire::MODE_SNAPSHOT]].concat());
    send(2, wire::BEGIN, &[&[wire::MODE_SNAPSHOT][..], &5u64.to_le_bytes(), &[1], &crc.to_le_bytes()].concat());
    hold.set(|s| s.0 = true);
    send(3, wire::SNAPSHOT_END, &[]);
    hold.wait_holding();
    let pongs = || src.node.stats().pongs_received;
    let (before, deadline) = (pongs(), Instant::now() + Duration::from_secs(60));
    while pongs() < before + 3 {
        assert!(Instant::now() < deadline, "the receiver stopped answering heartbeats while SNAPSHOT_END waited");
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = dst.transfers.receiver_stats();
    assert_eq!((s.steps, s.failed), (3, 0), "{s:?}");
    hold.set(|s| s.2 = true);
    // The released step completes on the worker; closing the service
    // waits for it.
    dst.node.close().unwrap();
    dst.transfers.close();
    assert_eq!(dst.transfers.receiver_stats().failed, 0);
}

/// A snapshot batch that no local write could make is refused on arrival
/// (PROTOCOL, the step fails) and leaves the receiver working: an entry
/// newer than the snapshot's version (its seal would wait for the WAL to
/// become durable at a version the shard never logs, and the receiver's
/// step thread with it) and a key past MAX_KEY_SIZE (it could be neither
/// read nor deleted afterwards).
#[test]
fn snapshot_entries_no_write_could_make_are_refused() {
    let big_key = vec![b'k'; keel::shard::MAX_KEY_SIZE + 1];
    for (what, key, version) in [("an entry past the snapshot's version", &b"z"[..], 1000u64), ("a key past the limit", &big_key[..], 3)] {
        let (src, dst) = pair("refused-entries");
        dst.transfers.expect(SHARD, 1);
        let mut entries = 1u32.to_le_bytes().to_vec();
        wire::put_entry(&mut entries, key, &keel::shard::Entry { version, value: keel::shard::Value::Bytes(b"v".to_vec()) });
        begin_snapshot(&src, 7, 5);
        send_step(&src, 7, wire::ENTRIES, 3, &entries);
        until_received(&dst, what, |s| s.failed == 1);
        assert_eq!(dst.transfers.receiver_stats().entries_installed, 0, "{what}");
        assert_eq!(dst.transfers.receiver_stats().steps, 3, "{what}: BEGIN was taken");
        // The receiver is not stuck: a whole transfer of another shard
        // goes through, and the service closes.
        let other = src.engine.open_shard(SHARD + 1, true).unwrap();
        write_mix(&other, 3, 50);
        dst.transfers.expect(SHARD + 1, 1);
        let opts = TransferOptions { auto_finish: Some(Finish::Copy), ..small_batches(Method::Snapshot) };
        let t = src.transfers.start(&other, SHARD + 1, 2, &opts).unwrap();
        assert!(t.wait(None));
        assert!(matches!(t.outcome(), Some(Ok(_))), "{what}: {:?}", t.outcome().map(|r| r.map(|_| ())));
        dst.node.close().unwrap();
        dst.transfers.close();
    }
}

/// A transferred operation that no local write could make (an append to
/// a key that holds a value) is refused before it is logged: the step
/// fails with PROTOCOL, and the receiver's copy, complete up to its
/// snapshot, still opens (logged first, the operation made every later
/// open of it fail in replay).
#[test]
fn transferred_operations_no_write_could_make_are_refused_before_they_are_logged() {
    let src = side("refused-ops-src", 1);
    let dir = common::TempDir::new("refused-ops-dst");
    let dst = Side::open(dir.path(), NodeOptions { node_id: 2, max_frame_bytes: 1 << 20, ..NodeOptions::default() }, shard_options());
    src.node.connect(2, &dst.node.addr().to_string()).unwrap();
    dst.transfers.expect(SHARD, 1);
    let mut entries = 1u32.to_le_bytes().to_vec();
    wire::put_entry(&mut entries, b"a", &keel::shard::Entry { version: 3, value: keel::shard::Value::Bytes(b"v".to_vec()) });
    begin_snapshot(&src, 7, 5);
    send_step(&src, 7, wire::ENTRIES, 3, &entries);
    send_step(&src, 7, wire::SNAPSHOT_END, 4, &[]);
    until_received(&dst, "the snapshot", |s| s.steps == 4);
    let mut ops = 1u32.to_le_bytes().to_vec();
    wire::put_op(&mut ops, 6, &keel::shard::Op::Append { key: b"a".to_vec(), item: b"i".to_vec() }.encode());
    send_step(&src, 7, wire::OPS, 5, &ops);
    until_received(&dst, "the operation refused", |s| s.failed == 1);
    drop(dst);
    let shard = Shard::open(&dir.path().join("shards").join(SHARD.to_string()), shard_options()).unwrap();
    assert_eq!(shard.last_version(), 5, "nothing past the snapshot was logged");
    assert_eq!(shard.get(b"a").unwrap().map(|e| e.version), Some(3));
    shard.close().unwrap();
}

/// A receiver holds a snapshot's posting lists to its own list limit, as
/// it does the operations of a WAL delta: a list past it is refused with
/// its key, its size and the limit, before its batch is acknowledged, and
/// the snapshot never completes (a list installed past the limit would
/// make every later append to it fail the transfer).
#[test]
fn a_snapshot_list_past_the_receivers_list_limit_is_refused() {
    let limited = Options { max_list_size: 64, ..shard_options() };
    let (src, dst) = (side("list-limit-src", 1), side_on("list-limit-dst", 2, 4, limited));
    src.node.connect(2, &dst.node.addr().to_string()).unwrap();
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    shard.put(b"a", b"small").unwrap();
    for i in 0..5u8 {
        shard.append(b"big", &[i; 20]).unwrap(); // 5 x (4 + 20) = 120 encoded bytes
    }
    dst.transfers.expect(SHARD, 1);
    let e = src.transfers.send_shard(&shard, SHARD, 2, &small_batches(Method::Snapshot)).unwrap_err();
    assert_eq!(e.status, KEEL_STATUS_PROTOCOL, "{e}");
    assert!(e.message.contains("\"big\"") && e.message.contains("120 bytes") && e.message.contains("64"), "{e}");
    let s = dst.transfers.receiver_stats();
    assert_eq!(s.entries_installed, 0, "the batch holding the list was refused whole: {s:?}");
    let e = dst.engine.open_shard(SHARD, false).err().expect("the snapshot never completed");
    assert_eq!(e.status, KEEL_STATUS_BUSY, "{e}");
}

/// A snapshot at version u64::MAX leaves no next version: PROTOCOL at
/// BEGIN, no shard created.
#[test]
fn a_snapshot_at_the_last_version_is_refused() {
    let (src, dst) = pair("last-version");
    dst.transfers.expect(SHARD, 1);
    begin_snapshot(&src, 9, u64::MAX);
    until_received(&dst, "BEGIN refused", |s| s.failed == 1);
    assert!(!dst.dir().join("shards").join(SHARD.to_string()).join("wal").exists(), "BEGIN made a shard");
}

/// Only the transfer's peer answers its steps: an ACK carrying the
/// transfer's id from another node is ignored (it used to be taken as the
/// answer, and any number of them were queued).
#[test]
fn only_the_transfer_peer_answers_its_steps() {
    use keel::node::{Node, Service};
    let src = side("ack-peer-src", 1);
    let raw = |id| Node::open(NodeOptions { node_id: id, max_frame_bytes: 1 << 20, ..NodeOptions::default() }).unwrap();
    // Node 2 receives and only records; node 3 is a bystander that knows
    // the transfer's id.
    let (receiver, bystander) = (raw(2), raw(3));
    let (tx, rx) = crossbeam_channel::unbounded();
    receiver.set_handler(
        Service::Transfer,
        Some(Arc::new(move |_peer, ty, p: &[u8]| {
            let _ = tx.send((ty, p.to_vec()));
        })),
    );
    src.node.connect(2, &receiver.addr().to_string()).unwrap();
    bystander.connect(1, &src.node.addr().to_string()).unwrap();
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_mix(&shard, 5, 20);
    let opts = TransferOptions { auto_finish: Some(Finish::Copy), ..small_batches(Method::Snapshot) };
    let t = src.transfers.start(&shard, SHARD, 2, &opts).unwrap();
    let (ty, start) = rx.recv().unwrap();
    assert_eq!(ty, wire::START);
    let id = wire::parse_step(&start).unwrap().id;
    let answer = |message: &str| wire::Ack { id, step: 1, status: KEEL_STATUS_REFUSED, version: 0, crc: None, message: message.into() }.encode();
    bystander.send(1, wire::ACK, &answer("forged")).unwrap();
    receiver.send(1, wire::ACK, &answer("genuine")).unwrap();
    assert!(t.wait(None));
    match t.outcome() {
        Some(Err(e)) => {
            assert_eq!(e.status, KEEL_STATUS_REFUSED, "{e}");
            assert!(e.message.contains("genuine"), "{e}");
        }
        other => panic!("{:?}", other.map(|r| r.map(|_| ()))),
    }
    drop(t);
    receiver.close().unwrap();
    bystander.close().unwrap();
}

/// Snapshot batches are acknowledged on arrival and installed after the
/// ACK goes out; one that cannot be installed (the same key twice, at
/// different versions) fails the next step, so the snapshot is never
/// acknowledged as complete.
#[test]
fn a_snapshot_batch_that_cannot_be_installed_fails_the_step_after_it() {
    let (src, dst) = pair("bad-entries");
    dst.transfers.expect(SHARD, 1);
    let mut entries = 2u32.to_le_bytes().to_vec();
    for version in [3, 4] {
        let e = keel::shard::Entry { version, value: keel::shard::Value::Bytes(b"v".to_vec()) };
        wire::put_entry(&mut entries, b"twice", &e);
    }
    begin_snapshot(&src, 7, 5);
    send_step(&src, 7, wire::ENTRIES, 3, &entries);
    until_received(&dst, "the batch accepted", |s| s.entries_installed == 2);
    send_step(&src, 7, wire::SNAPSHOT_END, 4, &[]);
    until_received(&dst, "the step after it failed", |s| s.failed == 1);
    let s = dst.transfers.receiver_stats();
    assert_eq!((s.steps, s.out_of_order, s.overlapped), (4, 0, 0), "{s:?}");
    let e = dst.engine.open_shard(SHARD, false).err().expect("the snapshot never completed");
    assert_eq!(e.status, KEEL_STATUS_BUSY, "{e}");
}

#[test]
fn a_receiver_takes_at_most_max_concurrent_transfers_at_once() {
    let (src, dst) = (side("limit-src", 1), side_with("limit-dst", 2, 1));
    src.node.connect(2, &dst.node.addr().to_string()).unwrap();
    dst.transfers.expect(SHARD, 1);
    dst.transfers.expect(SHARD + 1, 1);
    // A reception of SHARD started by hand and left running.
    let mut start = wire::step(77, 1, 0);
    start.extend_from_slice(&[&SHARD.to_le_bytes()[..], &[wire::MODE_SNAPSHOT]].concat());
    src.node.send(2, wire::START, &start).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while dst.transfers.receiver_stats().steps < 1 {
        assert!(Instant::now() < deadline, "the receiver never saw the START");
        std::thread::sleep(Duration::from_millis(5));
    }
    let other = src.engine.open_shard(SHARD + 1, true).unwrap();
    write_mix(&other, 16, 50);
    let e = src.transfers.send_shard(&other, SHARD + 1, 2, &small_batches(Method::Snapshot)).unwrap_err();
    assert_eq!(e.status, KEEL_STATUS_BUSY, "{e}");
    // A new attempt of the running shard replaces it: the limit holds it.
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_mix(&shard, 17, 50);
    src.transfers.send_shard(&shard, SHARD, 2, &small_batches(Method::Snapshot)).unwrap();
    assert_eq!(shard_digest(&received(&dst)).unwrap(), shard_digest(&shard).unwrap());
    // With the slot free again, the other shard goes through.
    src.transfers.send_shard(&other, SHARD + 1, 2, &small_batches(Method::Snapshot)).unwrap();
}

/// A writer that keeps writing to `shard` until a write fails with MOVED;
/// returns every write it saw succeed. With `resume`, it pauses after
/// 2000 writes until the test sends on it: a writer faster than the link
/// keeps a transfer catching up, so the test, not the scheduler, decides
/// when the transfer can catch up.
fn writer(shard: &Shard, resume: Option<std::sync::mpsc::Receiver<()>>) -> std::thread::JoinHandle<Vec<(String, u64, u64)>> {
    let shard = shard.clone();
    std::thread::spawn(move || {
        let mut acked = Vec::new();
        for i in 0u64.. {
            if i == 2000 {
                if let Some(resume) = &resume {
                    resume.recv().unwrap();
                }
            }
            let key = format!("w{:05}", i % 5000);
            match shard.put(key.as_bytes(), &i.to_le_bytes()) {
                Ok(v) => acked.push((key, i, v)),
                Err(e) => {
                    assert_eq!(e.status, KEEL_STATUS_MOVED, "{e}");
                    return acked;
                }
            }
        }
        unreachable!()
    })
}

/// Waits (without a time bound on the outcome) until `t` is in `stage`.
fn reach(t: &keel::transfer::Transfer, stage: Stage) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while t.status().0 != stage {
        assert!(Instant::now() < deadline, "the transfer never reached {stage:?}: {:?}", t.status());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_started_transfer_streams_writes_until_the_host_hands_the_shard_over() {
    let (src, dst) = pair("handle");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_mix(&shard, 18, 800);
    dst.transfers.expect(SHARD, 1);
    let seen = Arc::new(parking_lot::Mutex::new(Vec::<keel::transfer::Progress>::new()));
    // The callback holds the transfer's thread at its first WaitingFinish
    // report until the test lets go: the two finishes below then meet a
    // transfer that cannot act on the first yet, so the second is BUSY
    // (a transfer that finished in between would answer "over").
    let (held_tx, held) = std::sync::mpsc::channel::<()>();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let hold = parking_lot::Mutex::new(Some((held_tx, release_rx)));
    let progress = {
        let seen = seen.clone();
        ProgressFn(Arc::new(move |p: &keel::transfer::Progress| {
            seen.lock().push(p.clone());
            if p.stage == Stage::WaitingFinish {
                if let Some((held_tx, release_rx)) = hold.lock().take() {
                    held_tx.send(()).unwrap();
                    let _ = release_rx.recv();
                }
            }
        }))
    };
    let opts = TransferOptions { auto_finish: None, progress: Some(progress), ..small_batches(Method::Snapshot) };
    let t = src.transfers.start(&shard, SHARD, 2, &opts).unwrap();
    let (resume, paused) = std::sync::mpsc::channel();
    let w = writer(&shard, Some(paused));
    // Without a finish the transfer catches up and keeps streaming.
    held.recv().unwrap();
    assert_eq!(t.status().0, Stage::WaitingFinish);
    assert!(!t.wait(Some(Duration::from_millis(1))), "waiting for the host is not settled");
    assert_eq!(t.confirm_hand_over().unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT, "not handed over yet");
    resume.send(()).unwrap();
    t.finish(Finish::HandOver).unwrap();
    assert_eq!(t.finish(Finish::Copy).unwrap_err().status, KEEL_STATUS_BUSY);
    release.send(()).unwrap();
    assert!(t.wait(None));
    let acked = w.join().unwrap();
    let r = t.outcome().unwrap().unwrap();
    assert_eq!(t.status().0, Stage::Done);
    assert!(r.handed_over && shard.is_moved(), "{r:?}");
    assert_eq!(r.last_version, shard.last_version());
    check_pipeline(&r, &dst);
    let got = received(&dst);
    let digest_before_drop = shard_digest(&shard).unwrap();
    assert_eq!(shard_digest(&got).unwrap(), digest_before_drop);
    if let Some((key, _, v)) = acked.last() {
        assert_eq!(got.get(key.as_bytes()).unwrap().unwrap().version, *v);
    }
    // The progress went through the stages in order, its counters never
    // went back, and the last report is the final one.
    let seen = seen.lock();
    assert!(seen.windows(2).all(|w| w[0].report.ops <= w[1].report.ops && w[0].report.bytes <= w[1].report.bytes));
    for stage in [Stage::Backfill, Stage::CatchingUp, Stage::WaitingFinish, Stage::Draining, Stage::Done] {
        assert!(seen.iter().any(|p| p.stage == stage), "no progress in {stage:?}");
    }
    let last = seen.last().unwrap();
    assert_eq!((last.stage, last.report.ops, last.ops_total), (Stage::Done, r.ops, r.ops));
    assert_eq!(t.finish(Finish::HandOver).unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT, "over");
    // The host confirms the hand-over: the source's copy goes.
    assert_eq!(shard.put(b"late", b"x").unwrap_err().status, KEEL_STATUS_MOVED);
    t.confirm_hand_over().unwrap();
    assert_eq!(shard.put(b"late", b"x").unwrap_err().status, KEEL_STATUS_CLOSED);
    assert!(!src.engine.list_shards().unwrap().contains(&SHARD), "dropped from the source's engine");
    assert_eq!(src.engine.open_shard(SHARD, false).err().map(|e| e.status), Some(KEEL_STATUS_NOT_FOUND));
    assert_eq!(t.confirm_hand_over().unwrap_err().status, KEEL_STATUS_NOT_FOUND, "dropped already");
    assert_eq!(shard_digest(&got).unwrap(), digest_before_drop, "the receiver's shard is untouched");
}

#[test]
fn forwarding_applies_every_later_write_on_the_receiver_before_it_returns() {
    let (src, dst) = pair("forward");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_mix(&shard, 19, 500);
    dst.transfers.expect(SHARD, 1);
    let opts = TransferOptions { auto_finish: Some(Finish::Forward), ..small_batches(Method::Snapshot) };
    let t = src.transfers.start(&shard, SHARD, 2, &opts).unwrap();
    assert!(t.wait(None));
    assert_eq!(t.status().0, Stage::Forwarding, "{:?}", t.status());
    assert_eq!(t.finish(Finish::Copy).unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT);
    // Each write returns once the receiver has it: the receiver's version
    // (its ACKs) follows every single write.
    for i in 0..50u64 {
        let v = shard.put(format!("f{i}").as_bytes(), b"x").unwrap();
        assert!(t.progress().report.last_version >= v, "write {v} returned before the receiver had it");
    }
    // The receiver still holds it as incoming: its host cannot open it.
    assert_eq!(dst.engine.open_shard(SHARD, false).err().map(|e| e.status), Some(KEEL_STATUS_BUSY));
    let w = writer(&shard, None);
    t.finish(Finish::HandOver).unwrap();
    assert!(t.wait(None));
    let acked = w.join().unwrap();
    let r = t.outcome().unwrap().unwrap();
    assert!(r.handed_over && shard.is_moved(), "{r:?}");
    check_pipeline(&r, &dst);
    let got = received(&dst);
    assert_eq!(shard_digest(&got).unwrap(), shard_digest(&shard).unwrap());
    if let Some((key, _, v)) = acked.last() {
        assert_eq!(got.get(key.as_bytes()).unwrap().unwrap().version, *v);
    }
}

#[test]
fn a_cancelled_transfer_leaves_the_receiver_resumable_and_a_restart_converges() {
    let (src, dst) = pair("cancel");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_mix(&shard, 20, 800);
    dst.transfers.expect(SHARD, 1);
    // A snapshot without a finish, cancelled while it waits for the host.
    let opts = TransferOptions { auto_finish: None, ..small_batches(Method::Snapshot) };
    let t = src.transfers.start(&shard, SHARD, 2, &opts).unwrap();
    reach(&t, Stage::WaitingFinish);
    let had = t.progress().report.last_version;
    t.cancel();
    assert!(t.wait(None));
    let (stage, err) = t.status();
    assert_eq!((stage, err.map(|e| e.status)), (Stage::Cancelled, None));
    assert_eq!(t.outcome().unwrap().unwrap_err().status, KEEL_STATUS_CLOSED);
    assert_eq!(t.finish(Finish::Copy).unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT);
    // The receiver's shard stays incoming (BUSY to its host).
    assert_eq!(dst.engine.open_shard(SHARD, false).err().map(|e| e.status), Some(KEEL_STATUS_BUSY));
    drop(t);
    // More writes, then a WAL delta resumes from what the receiver has.
    shard.set_keep_from(had + 1).unwrap();
    write_mix(&shard, 21, 300);
    let r = src.transfers.send_shard(&shard, SHARD, 2, &small_batches(Method::WalDelta)).unwrap();
    assert!(!r.snapshot, "{r:?}");
    assert_eq!(r.receiver_had, had);
    assert_eq!(shard_digest(&received(&dst)).unwrap(), shard_digest(&shard).unwrap());
}

/// A snapshot the receiver refuses at BEGIN (its host has the shard
/// open: BUSY) was never acknowledged: no progress may show its version
/// as the receiver's, or a host keeping the WAL from there would keep the
/// wrong records.
#[test]
fn a_snapshot_refused_at_begin_reports_no_acknowledged_version() {
    let (src, dst) = pair("begin-busy");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_mix(&shard, 23, 100);
    dst.transfers.expect(SHARD, 1);
    let _open = dst.engine.open_shard(SHARD, true).unwrap();
    let seen = Arc::new(parking_lot::Mutex::new(Vec::<keel::transfer::Progress>::new()));
    let progress = {
        let seen = seen.clone();
        ProgressFn(Arc::new(move |p: &keel::transfer::Progress| seen.lock().push(p.clone())))
    };
    let opts = TransferOptions { progress: Some(progress), ..small_batches(Method::Snapshot) };
    let t = src.transfers.start(&shard, SHARD, 2, &opts).unwrap();
    assert!(t.wait(None));
    let (stage, err) = t.status();
    assert_eq!((stage, err.map(|e| e.status)), (Stage::Failed, Some(KEEL_STATUS_BUSY)));
    for p in seen.lock().iter().chain([&t.progress()]) {
        assert_eq!(p.report.last_version, 0, "the receiver acknowledged no version: {:?} {:?}", p.stage, p.report);
    }
}

#[test]
fn send_shard_refuses_to_wait_for_a_finish_nobody_will_ask_for() {
    let (src, _dst) = pair("nofinish");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    for auto_finish in [None, Some(Finish::Forward)] {
        let opts = TransferOptions { auto_finish, ..TransferOptions::default() };
        assert_eq!(src.transfers.send_shard(&shard, SHARD, 2, &opts).unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT);
    }
}

#[test]
fn a_failed_forward_fails_the_transfer_but_not_the_source_write() {
    let (src, dst) = pair("forward-fails");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_mix(&shard, 22, 200);
    dst.transfers.expect(SHARD, 1);
    let opts = TransferOptions {
        auto_finish: Some(Finish::Forward),
        ack_timeout: Duration::from_secs(5),
        ..small_batches(Method::Snapshot)
    };
    let t = src.transfers.start(&shard, SHARD, 2, &opts).unwrap();
    assert!(t.wait(None));
    assert_eq!(t.status().0, Stage::Forwarding);
    // The receiver goes away: the next forward cannot reach it.
    dst.node.close().unwrap();
    let v = shard.put(b"after", b"the receiver left").expect("the source write still succeeds");
    assert!(t.wait(None));
    let (stage, err) = t.status();
    assert_eq!(stage, Stage::Failed);
    assert!(err.is_some());
    assert!(t.progress().report.last_version < v, "the receiver never had it");
    // Forwarding stopped: later writes neither wait nor fail.
    shard.put(b"later", b"x").unwrap();
    assert!(!shard.is_moved());
    assert_eq!(shard.get(b"after").unwrap().unwrap().version, v);
}

/// A snapshot brings the shard's replicated state along: the applied
/// index and the highest fencing token per bucket as of the snapshot,
/// which the WAL delta after it does not repeat. The receiver keeps them
/// across a reopen, and refuses a stale token as the source does.
#[test]
fn a_snapshot_carries_the_applied_index_and_the_fences() {
    use keel::shard::{Fence, Op};
    let (src, dst) = pair("replicated");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    for i in 1..=40u64 {
        let fence = (i % 3 == 0).then(|| Fence { bucket: format!("b{}", i % 4).into_bytes(), token: i });
        let op = Op::Put { key: format!("k{i:03}").into_bytes(), value: b"v".to_vec() };
        let a = shard.apply(i, &[op], fence).unwrap();
        assert!(!a.duplicate);
    }
    // Flushed and past the WAL's reach: the state lives in the snapshot only.
    shard.flush(true).unwrap();
    dst.transfers.expect(SHARD, 1);
    let r = src.transfers.send_shard(&shard, SHARD, 2, &small_batches(Method::Snapshot)).unwrap();
    assert!(r.snapshot, "{r:?}");
    let check = |got: &Shard| {
        assert_eq!(got.applied_index(), 40);
        for b in 0..4u64 {
            let bucket = format!("b{b}").into_bytes();
            assert_eq!(got.fence_highest(&bucket), shard.fence_highest(&bucket), "bucket b{b}");
        }
        let stale = Fence { bucket: b"b3".to_vec(), token: 1 };
        let a = got.apply(41, &[Op::Put { key: b"late".to_vec(), value: b"x".to_vec() }], Some(stale)).unwrap();
        assert_eq!(a.refused.map(|e| e.status), Some(KEEL_STATUS_FENCED));
    };
    let got = received(&dst);
    check(&got);
    got.close().unwrap();
    let again = received(&dst);
    assert_eq!(again.applied_index(), 41, "the refused entry moved the index, and a reopen keeps it");
    assert_eq!(shard_digest(&again).unwrap(), shard_digest(&shard).unwrap());
}

fn hand_over() -> TransferOptions {
    TransferOptions { auto_finish: Some(Finish::HandOver), ..small_batches(Method::Snapshot) }
}

fn fill(shard: &Shard, n: u64) {
    for i in 0..n {
        shard.put(format!("k{i:04}").as_bytes(), &i.to_le_bytes()).unwrap();
    }
}

/// `confirm_hand_over` drops the shard by id: a second confirm (a host
/// retrying it) must answer NOT_FOUND, not drop the shard that came back
/// to this node under the same id.
#[test]
fn a_second_confirm_does_not_drop_a_shard_that_came_back_under_the_same_id() {
    let (a, b) = pair("confirm-twice");
    let shard = a.engine.open_shard(SHARD, true).unwrap();
    fill(&shard, 300);
    b.transfers.expect(SHARD, 1);
    let t = a.transfers.start(&shard, SHARD, 2, &hand_over()).unwrap();
    assert!(t.wait(None));
    assert!(t.outcome().unwrap().unwrap().handed_over);
    t.confirm_hand_over().unwrap();
    // The shard moves back from B to A, with a write made on B.
    let on_b = b.engine.open_shard(SHARD, false).unwrap();
    on_b.put(b"written-on-b", b"x").unwrap();
    a.transfers.expect(SHARD, 2);
    b.node.connect(1, &a.node.addr().to_string()).unwrap();
    assert!(b.transfers.send_shard(&on_b, SHARD, 1, &hand_over()).unwrap().handed_over);
    let second = t.confirm_hand_over();
    assert_eq!(second.as_ref().err().map(|e| e.status), Some(KEEL_STATUS_NOT_FOUND), "{second:?}");
    let back = a.engine.open_shard(SHARD, false).unwrap();
    assert!(back.get(b"written-on-b").unwrap().is_some(), "the shard that came back was dropped");
}

/// A source (node 1) holding shard SHARD with 200 keys, connected to a
/// receiver (node 2) announced for it whose FINISH parks (as it removes its
/// INCOMING marker) until `release` is sent or dropped; `entered` hears
/// when it parks. `release` is the first field, so a failing test drops it
/// first and the receiver's close does not wait for a parked step.
struct ParkedFinish {
    release: crossbeam_channel::Sender<()>,
    entered: crossbeam_channel::Receiver<()>,
    shard: Shard,
    src: Side,
    dst: Side,
}

fn parked_finish(tag: &str) -> ParkedFinish {
    let src = side(&format!("{tag}-src"), 1);
    let (entered_tx, entered) = crossbeam_channel::unbounded();
    let (release, release_rx) = crossbeam_channel::unbounded::<()>();
    let fs = common::hookfs::HookFs::new(move |call, path| {
        if call == common::hookfs::Call::Remove && path.file_name().is_some_and(|n| n == "INCOMING") {
            let _ = entered_tx.send(());
            let _ = release_rx.recv();
        }
        Ok(())
    });
    let dst = Side::temp_on(&format!("{tag}-dst"), common::side::node_options(2), shard_options(), fs);
    src.node.connect(2, &dst.node.addr().to_string()).unwrap();
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    fill(&shard, 200);
    dst.transfers.expect(SHARD, 1);
    ParkedFinish { release, entered, shard, src, dst }
}

/// The receiver parks in FINISH (removing its INCOMING marker) while the
/// source is cancelled. A sent FINISH cannot be recalled: the source waits
/// for its ACK and settles done and moved, never CANCELLED with its shard
/// writable while the receiver's host owns the shard too.
#[test]
fn a_cancel_during_the_finish_step_does_not_leave_two_owners() {
    let p = parked_finish("cancel-finish");
    let (shard, release, entered, dst) = (&p.shard, &p.release, &p.entered, &p.dst);
    let t = p.src.transfers.start(shard, SHARD, 2, &hand_over()).unwrap();
    entered.recv().unwrap(); // the source waits for FINISH's ACK
    assert_eq!(t.status().0, Stage::Draining);
    t.cancel();
    // A source that gave the FINISH up would settle here at once; the
    // bound only keeps one that waits (as it must) from hanging the test.
    let early = t.wait(Some(Duration::from_millis(200))).then(|| t.status().0);
    release.send(()).unwrap();
    assert_eq!(early, None, "settled while the receiver was inside FINISH");
    assert!(t.wait(None));
    let (stage, _) = t.status();
    assert_eq!(stage, Stage::Done);
    assert!(dst.engine.open_shard(SHARD, false).is_ok(), "the receiver owns the shard");
    assert_eq!(shard.put(b"after", b"x").unwrap_err().status, KEEL_STATUS_MOVED);
}

/// A handed-over shard stays moved across a close and reopen (the host
/// restarted before it confirmed): it takes no write the receiver never
/// gets. Brought back by a WAL delta it is the node's to write again.
#[test]
fn a_handed_over_shard_stays_moved_across_a_reopen_until_it_comes_back() {
    let (a, b) = pair("moved-reopen");
    let shard = a.engine.open_shard(SHARD, true).unwrap();
    fill(&shard, 100);
    b.transfers.expect(SHARD, 1);
    assert!(a.transfers.send_shard(&shard, SHARD, 2, &hand_over()).unwrap().handed_over);
    shard.close().unwrap();
    let again = a.engine.open_shard(SHARD, false).unwrap();
    let late = again.put(b"late", b"x");
    assert_eq!(late.as_ref().err().map(|e| e.status), Some(KEEL_STATUS_MOVED), "the handed-over shard took a write: {late:?}");
    again.close().unwrap();
    // B writes, then sends the shard back by WAL delta onto A's copy.
    let on_b = b.engine.open_shard(SHARD, false).unwrap();
    on_b.put(b"written-on-b", b"x").unwrap();
    a.transfers.expect(SHARD, 2);
    b.node.connect(1, &a.node.addr().to_string()).unwrap();
    let back = TransferOptions { auto_finish: Some(Finish::HandOver), ..small_batches(Method::WalDelta) };
    let r = b.transfers.send_shard(&on_b, SHARD, 1, &back).unwrap();
    assert!(r.handed_over && !r.snapshot, "{r:?}");
    let home = a.engine.open_shard(SHARD, false).unwrap();
    assert!(home.get(b"written-on-b").unwrap().is_some());
    home.put(b"home", b"x").unwrap();
}

/// A progress callback that panics (a Rust host's bug) neither kills the
/// transfer's thread before it settles nor keeps its send slot.
#[test]
fn a_panicking_progress_callback_does_not_leak_the_transfer_slot() {
    let a = side_with("panic-cb-a", 1, 1);
    let b = side("panic-cb-b", 2);
    a.node.connect(2, &b.node.addr().to_string()).unwrap();
    let shard = a.engine.open_shard(SHARD, true).unwrap();
    shard.put(b"k", b"v").unwrap();
    b.transfers.expect(SHARD, 1);
    let progress = ProgressFn(Arc::new(|p: &keel::transfer::Progress| {
        if p.stage == Stage::Backfill {
            panic!("a host's bug in its progress callback");
        }
    }));
    let opts = TransferOptions { auto_finish: Some(Finish::Copy), progress: Some(progress), ..small_batches(Method::Snapshot) };
    let t = a.transfers.start(&shard, SHARD, 2, &opts).unwrap();
    // The bound turns a thread that died unsettled into a failure.
    assert!(t.wait(Some(Duration::from_secs(60))), "the transfer never settled");
    assert!(t.outcome().unwrap().is_ok(), "{:?}", t.outcome());
    drop(t);
    b.transfers.expect(SHARD, 1);
    let next = a.transfers.start(&shard, SHARD, 2, &TransferOptions { progress: None, ..opts });
    assert!(next.is_ok(), "the panicked transfer still holds its slot: {:?}", next.err());
}

/// A shard handed over is no longer the source's to give: a transfer of
/// it started afterwards (a rebalancer retrying a move) is refused MOVED
/// instead of handing it to a second owner.
#[test]
fn a_handed_over_shard_is_not_handed_over_again() {
    let (a, b, c) = (side("twice-a", 1), side("twice-b", 2), side("twice-c", 3));
    a.node.connect(2, &b.node.addr().to_string()).unwrap();
    a.node.connect(3, &c.node.addr().to_string()).unwrap();
    let shard = a.engine.open_shard(SHARD, true).unwrap();
    fill(&shard, 100);
    b.transfers.expect(SHARD, 1);
    c.transfers.expect(SHARD, 1);
    assert!(a.transfers.send_shard(&shard, SHARD, 2, &hand_over()).unwrap().handed_over);
    let second = a.transfers.send_shard(&shard, SHARD, 3, &hand_over());
    assert_eq!(second.as_ref().err().map(|e| e.status), Some(KEEL_STATUS_MOVED), "{second:?}");
    assert!(c.engine.open_shard(SHARD, false).is_err(), "node 3 owns the shard too");
}

/// The hand-over's MOVED mark is durable before FINISH goes out: when it
/// cannot be written (no room), the transfer fails before the receiver
/// finishes, so the source stays the only owner. (Written after FINISH's
/// ACK, a failed mark left the receiver owning the shard and a reopened
/// source taking writes.)
#[test]
fn a_moved_mark_that_cannot_be_written_fails_the_hand_over_before_finish() {
    let no_room = common::hookfs::HookFs::new(|call, path| match call {
        common::hookfs::Call::Create if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("MOVED")) => {
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        }
        _ => Ok(()),
    });
    let (src, _dst, shard) = hand_over_whose_mark_fails("moved-no-room", no_room, KEEL_STATUS_NO_SPACE);
    shard.close().unwrap();
    let again = src.engine.open_shard(SHARD, false).unwrap();
    again.put(b"late", b"x").unwrap();
}

/// A hand-over from a source on `fs` (where the MOVED mark fails) to a
/// receiver: it fails with `status` before FINISH (the receiver's copy
/// stays incoming) and the source's shard still takes writes. Returns the
/// two sides and the source's shard.
fn hand_over_whose_mark_fails(tag: &str, fs: Arc<common::hookfs::HookFs>, status: keel_status_t) -> (Side, Side, Shard) {
    let src = Side::temp_on(&format!("{tag}-src"), common::side::node_options(1), shard_options(), fs);
    let dst = side(&format!("{tag}-dst"), 2);
    src.node.connect(2, &dst.node.addr().to_string()).unwrap();
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    fill(&shard, 100);
    dst.transfers.expect(SHARD, 1);
    let t = src.transfers.start(&shard, SHARD, 2, &hand_over()).unwrap();
    assert!(t.wait(None));
    let outcome = t.outcome().unwrap();
    assert_eq!(outcome.as_ref().err().map(|e| e.status), Some(status), "{outcome:?}");
    assert_eq!(dst.engine.open_shard(SHARD, false).err().map(|e| e.status), Some(KEEL_STATUS_BUSY), "the receiver never finished");
    shard.put(b"acked", b"x").unwrap(); // the source is still the owner
    (src, dst, shard)
}

/// As `a_cancel_during_the_finish_step_does_not_leave_two_owners`,
/// but FINISH's ACK does not come back in time (the receiver is slow in
/// FINISH, or the link drops after the receiver finished) instead of a
/// cancel: FINISH was sent and cannot be recalled, yet the source removes
/// its durable MOVED mark and takes writes again while the receiver's
/// host owns the shard too (before and after a reopen).
#[test]
fn a_finish_whose_ack_times_out_does_not_leave_two_owners() {
    let p = parked_finish("finish-timeout");
    let (shard, release, entered, dst) = (&p.shard, &p.release, &p.entered, &p.dst);
    let opts = TransferOptions {
        ack_timeout: Duration::from_secs(2),
        retry: keel::transfer::Retry { max_retries: 1, first_backoff: Duration::from_millis(1), max_backoff: Duration::from_millis(1) },
        ..hand_over()
    };
    let t = p.src.transfers.start(shard, SHARD, 2, &opts).unwrap();
    entered.recv().unwrap(); // the receiver is inside FINISH: it was sent
    assert!(t.wait(None)); // the receiver stays parked until the source settled
    let outcome = t.outcome().unwrap();
    release.send(()).unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
    until_received(dst, "the receiver finishes", |s| s.finished == 1);
    assert!(dst.engine.open_shard(SHARD, false).is_ok(), "the receiver owns the shard");
    let late = shard.put(b"after", b"x");
    assert_eq!(late.as_ref().err().map(|e| e.status), Some(KEEL_STATUS_MOVED), "outcome {outcome:?}; the source took a write while the receiver owns the shard: {late:?}");
}

/// The MOVED mark is renamed into place but its directory sync
/// fails: the hand-over fails before FINISH is ever sent (the receiver
/// never finishes), and the live shard keeps taking writes, yet the mark
/// stays on disk. After a restart the shard refuses every write (MOVED)
/// and cannot be sent again, though it was never handed over.
#[test]
fn a_moved_mark_whose_directory_sync_fails_is_not_left_behind() {
    let fail_sync = common::hookfs::HookFs::new(|call, path| match call {
        common::hookfs::Call::SyncDir if path.join("MOVED").exists() => Err(std::io::Error::from_raw_os_error(libc::EIO)),
        _ => Ok(()),
    });
    let (src, _dst, shard) = hand_over_whose_mark_fails("moved-sync", fail_sync, KEEL_STATUS_IO);
    shard.close().unwrap();
    let again = src.engine.open_shard(SHARD, false).unwrap();
    let w = again.put(b"late", b"x");
    assert!(w.is_ok(), "a shard never handed over refuses writes after a reopen: {w:?}");
}

/// The host cancels just before the final hold (the hook runs where the
/// last unheld read ended), with nothing left to drain: the cancel came
/// before FINISH went out, so the transfer stops there. (FINISH was sent
/// anyway, no batch boundary having looked at the cancel: the shard was
/// handed over and the transfer settled DONE though the host cancelled.)
#[test]
fn a_cancel_before_the_finish_step_stops_the_hand_over() {
    let (src, dst) = pair("cancel-before-finish");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    fill(&shard, 100);
    dst.transfers.expect(SHARD, 1);
    let (entered_tx, entered) = crossbeam_channel::unbounded();
    let (go, go_rx) = crossbeam_channel::unbounded::<()>();
    let hook = keel::transfer::Hook(Arc::new(move || {
        let _ = entered_tx.send(());
        let _ = go_rx.recv();
    }));
    let opts = TransferOptions { before_final_hold: Some(hook), ..hand_over() };
    let t = src.transfers.start(&shard, SHARD, 2, &opts).unwrap();
    entered.recv().unwrap();
    t.cancel();
    go.send(()).unwrap();
    assert!(t.wait(None));
    let (stage, err) = t.status();
    assert_eq!(stage, Stage::Cancelled, "{err:?} {:?}", t.outcome());
    shard.put(b"after", b"x").unwrap(); // still the source's
    assert_eq!(dst.engine.open_shard(SHARD, false).err().map(|e| e.status), Some(KEEL_STATUS_BUSY), "the receiver finished");
}

/// A cancel while FINISH waits for its ACK, which never comes in time:
/// the receiver may own the shard (it finishes once released), so the
/// transfer fails with the timeout instead of settling CANCELLED, which
/// tells the host the receiver was left incoming.
#[test]
fn a_cancelled_finish_left_unanswered_fails_instead_of_cancelling() {
    let p = parked_finish("cancel-finish-timeout");
    let (shard, release, entered, dst) = (&p.shard, &p.release, &p.entered, &p.dst);
    let opts = TransferOptions {
        ack_timeout: Duration::from_secs(2),
        retry: keel::transfer::Retry { max_retries: 1, first_backoff: Duration::from_millis(1), max_backoff: Duration::from_millis(1) },
        ..hand_over()
    };
    let t = p.src.transfers.start(shard, SHARD, 2, &opts).unwrap();
    entered.recv().unwrap(); // FINISH was sent
    t.cancel();
    assert!(t.wait(None));
    let (stage, err) = t.status();
    release.send(()).unwrap();
    assert_eq!(stage, Stage::Failed, "{err:?}");
    assert!(err.is_some(), "a failed transfer says why");
    until_received(dst, "the receiver finishes", |s| s.finished == 1);
    assert!(dst.engine.open_shard(SHARD, false).is_ok(), "the receiver owns the shard");
    assert_eq!(shard.put(b"after", b"x").unwrap_err().status, KEEL_STATUS_MOVED);
}

/// A forwarding transfer is settled, so `wait` returns at once; once it
/// is cancelled it waits for the cancel, like a hand-over asked for.
/// (It went on returning at once, while the transfer still forwarded and
/// its CANCELLED callback had not run: a host that cancelled and waited
/// read FORWARDING.)
#[test]
fn wait_after_a_cancel_of_a_forwarding_transfer_waits_for_the_cancel() {
    let (src, dst) = pair("forward-cancel-wait");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    fill(&shard, 50);
    dst.transfers.expect(SHARD, 1);
    let (entered_tx, entered) = crossbeam_channel::unbounded();
    let (release, release_rx) = crossbeam_channel::unbounded::<()>();
    let progress = ProgressFn(Arc::new(move |p: &keel::transfer::Progress| {
        if p.stage == Stage::Cancelled {
            let _ = entered_tx.send(());
            let _ = release_rx.recv();
        }
    }));
    let opts = TransferOptions { auto_finish: Some(Finish::Forward), progress: Some(progress), ..small_batches(Method::Snapshot) };
    let t = src.transfers.start(&shard, SHARD, 2, &opts).unwrap();
    // Dropped before `t` if the test fails: `t`'s drop joins the thread.
    let release = release;
    assert!(t.wait(None));
    assert_eq!(t.status().0, Stage::Forwarding);
    t.cancel();
    entered.recv().unwrap(); // the CANCELLED callback runs, and is held
    assert!(!t.wait(Some(Duration::ZERO)), "settled before the callback of the cancel returned");
    release.send(()).unwrap();
    assert!(t.wait(None));
    assert_eq!(t.status().0, Stage::Cancelled);
}

/// One shard forwarded to two receivers at once: each write returns once
/// both have it, and cancelling one forward leaves the other forwarding.
/// (The second forward replaced the first one's hook, so writes waited
/// for node 3 only while node 2's transfer still said FORWARDING; the
/// cancel of the second then removed every hook.)
#[test]
fn two_forwarding_transfers_of_one_shard_each_get_every_write() {
    let (a, b, c) = (side("fwd-two-a", 1), side("fwd-two-b", 2), side("fwd-two-c", 3));
    a.node.connect(2, &b.node.addr().to_string()).unwrap();
    a.node.connect(3, &c.node.addr().to_string()).unwrap();
    let shard = a.engine.open_shard(SHARD, true).unwrap();
    fill(&shard, 50);
    b.transfers.expect(SHARD, 1);
    c.transfers.expect(SHARD, 1);
    let opts = TransferOptions { auto_finish: Some(Finish::Forward), ..small_batches(Method::Snapshot) };
    let to_b = a.transfers.start(&shard, SHARD, 2, &opts).unwrap();
    assert!(to_b.wait(None));
    assert_eq!(to_b.status().0, Stage::Forwarding, "{:?}", to_b.status());
    let to_c = a.transfers.start(&shard, SHARD, 3, &opts).unwrap();
    assert!(to_c.wait(None));
    assert_eq!(to_c.status().0, Stage::Forwarding, "{:?}", to_c.status());
    let v = shard.put(b"both", b"x").unwrap();
    for (t, node) in [(&to_b, 2), (&to_c, 3)] {
        assert!(t.progress().report.last_version >= v, "write {v} returned before node {node} had it");
    }
    to_c.cancel();
    assert!(to_c.wait(None));
    assert_eq!(to_c.status().0, Stage::Cancelled);
    let v = shard.put(b"after-cancel", b"x").unwrap();
    assert_eq!(to_b.status().0, Stage::Forwarding);
    assert!(to_b.progress().report.last_version >= v, "write {v} returned before node 2 had it");
    to_b.finish(Finish::HandOver).unwrap();
    assert!(to_b.wait(None));
    assert!(to_b.outcome().unwrap().unwrap().handed_over);
    assert_eq!(shard_digest(&received(&b)).unwrap(), shard_digest(&shard).unwrap());
}

/// A transfer streaming new writes while it waits for the host's finish
/// (which may be a long time: the C default never finishes by itself)
/// holds only the WAL records its receiver has not acknowledged: a flush
/// may then truncate the rest. (Its pin stayed at the snapshot's version
/// until the transfer ended, and the WAL grew with every write.)
#[test]
fn a_streaming_transfer_lets_the_wal_go_once_the_receiver_has_it() {
    let (src, dst) = pair("stream-pin");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    fill(&shard, 50);
    dst.transfers.expect(SHARD, 1);
    let opts = TransferOptions { auto_finish: None, ..small_batches(Method::Snapshot) };
    let t = src.transfers.start(&shard, SHARD, 2, &opts).unwrap();
    reach(&t, Stage::WaitingFinish);
    let base = t.progress().report.snapshot_version.unwrap();
    // About six WAL segments of 64 KiB.
    for i in 0..400u32 {
        shard.put(format!("s{i:04}").as_bytes(), &[7; 1024]).unwrap();
    }
    let last = shard.last_version();
    let deadline = Instant::now() + Duration::from_secs(120);
    while t.progress().report.last_version < last {
        assert!(Instant::now() < deadline, "the receiver never caught up: {:?}", t.progress());
        std::thread::sleep(Duration::from_millis(5));
    }
    shard.flush(true).unwrap();
    let first = shard.stats().wal_first_seq;
    assert!(first > base + 1, "the WAL still starts at {first}, after the snapshot at {base}, though the receiver has {last}");
    t.finish(Finish::Copy).unwrap();
    assert!(t.wait(None));
    assert!(t.outcome().unwrap().is_ok(), "{:?}", t.outcome());
    assert_eq!(shard_digest(&received(&dst)).unwrap(), shard_digest(&shard).unwrap());
}

/// The receiver removes its INCOMING marker in FINISH, but the directory
/// sync that makes the removal durable fails: it answers FINISH with IO,
/// yet the marker is gone and its host opens the shard. That answer is
/// no refusal made before the shard was released: the source keeps its
/// MOVED mark. (It once removed the mark and took writes: two owners.)
#[test]
fn a_finish_whose_marker_removal_fails_to_sync_on_the_receiver_does_not_leave_two_owners() {
    let removed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = removed.clone();
    let fs = common::hookfs::HookFs::new(move |call, path| {
        use std::sync::atomic::Ordering::SeqCst;
        match call {
            common::hookfs::Call::Remove if path.file_name().is_some_and(|n| n == "INCOMING") => r.store(true, SeqCst),
            common::hookfs::Call::SyncDir if r.swap(false, SeqCst) => return Err(std::io::Error::from_raw_os_error(libc::EIO)),
            _ => {}
        }
        Ok(())
    });
    let src = side("unsynced-finish-src", 1);
    let dst = Side::temp_on("unsynced-finish-dst", common::side::node_options(2), shard_options(), fs);
    src.node.connect(2, &dst.node.addr().to_string()).unwrap();
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    fill(&shard, 100);
    dst.transfers.expect(SHARD, 1);
    let outcome = src.transfers.send_shard(&shard, SHARD, 2, &hand_over());
    assert_eq!(outcome.as_ref().err().map(|e| e.status), Some(KEEL_STATUS_IO), "{outcome:?}");
    let owned = dst.engine.open_shard(SHARD, false).map(|s| s.get(b"k0099").map(|e| e.is_some()));
    assert!(matches!(owned, Ok(Ok(true))), "precondition: the receiver's host opens the shard: {owned:?}");
    let late = shard.put(b"late", b"x");
    assert_eq!(late.as_ref().err().map(|e| e.status), Some(KEEL_STATUS_MOVED), "outcome {outcome:?}; the source took a write while the receiver's host has the shard: {late:?}");
}
