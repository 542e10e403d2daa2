//! Shard transfer under faults (issue #11 §4; docs/TRANSFER.md, "Faults"),
//! over real loopback sockets: a relay the test controls
//! (tests/common/relay.rs) sits between the nodes and resets or stalls
//! connections at byte counts drawn from the seed; receivers and sources
//! run in child processes that are killed with SIGKILL mid-transfer
//! (tests/common/child.rs). Every transfer ends with equal content digests
//! on both sides.
//!
//! Seeded: `KEEL_TRANSFER_FAULTS_SEED=S` replays a run (a failure prints
//! the command). No timing assertions: backoffs and the bandwidth cap wait
//! on a fake clock, and waits for the other side have generous deadlines.

mod common;

use common::relay::Relay;
use common::rng::Rng;
use common::TempDir;
use keel::engine::Engine;
use keel::node::{Node, NodeOptions, Service};
use keel::shard::{Entry, Options, Shard, Value};
use keel::status::*;
use keel::transfer::{shard_digest, wire, Clock, Hook, Method, Retry, TransferOptions, Transfers};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SHARD: u32 = 7;
const SEED_ENV: &str = "KEEL_TRANSFER_FAULTS_SEED";
/// How long a test waits for the other side before it gives up.
const PATIENCE: Duration = Duration::from_secs(60);

/// The run's seed, from the environment or the clock; a failing test
/// prints how to replay it (`Replay`).
fn seed() -> u64 {
    let s = std::env::var(SEED_ENV).ok().map(|v| v.parse().expect("KEEL_TRANSFER_FAULTS_SEED is a number"));
    s.unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000_000)
}

/// Prints the replay command if the test panics while it lives.
struct Replay {
    seed: u64,
    test: &'static str,
}

impl Replay {
    fn new(test: &'static str) -> (Replay, Rng) {
        let seed = seed();
        eprintln!("{SEED_ENV}={seed}");
        (Replay { seed, test }, Rng::new(seed))
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "replay: {SEED_ENV}={} cargo test --locked --test transfer_faults {} -- --exact",
                self.seed, self.test
            );
        }
    }
}

/// A clock whose time moves only when it is slept on: retries and the
/// bandwidth cap cost no real time.
#[derive(Debug, Default)]
struct FakeClock(Mutex<Duration>);

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        *self.0.lock().unwrap()
    }
    fn sleep(&self, d: Duration) {
        *self.0.lock().unwrap() += d;
    }
}

fn shard_options() -> Options {
    Options { flush_interval: None, wal_segment_size: 64 << 10, seal_bytes: 64 << 10, max_sealed: 3, ..Options::default() }
}

fn node_options(id: u64) -> NodeOptions {
    NodeOptions {
        node_id: id,
        max_frame_bytes: 1 << 20,
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_misses: 50,
        ..NodeOptions::default()
    }
}

/// One side: an engine, its node and its transfer service.
struct Side {
    _dir: Option<TempDir>,
    engine: Arc<Engine>,
    node: Arc<Node>,
    transfers: Arc<Transfers>,
}

fn side_at(dir: &Path, opts: NodeOptions, shard_opts: Options) -> Side {
    let engine = Arc::new(Engine::open(dir, shard_opts).unwrap());
    let node = Arc::new(Node::open(opts).unwrap());
    let transfers = Transfers::attach(node.clone(), engine.clone());
    Side { _dir: None, engine, node, transfers }
}

fn side(tag: &str, opts: NodeOptions) -> Side {
    let dir = TempDir::new(tag);
    let s = side_at(dir.path(), opts, shard_options());
    Side { _dir: Some(dir), ..s }
}

/// A source (node 1) that reaches the receiver (node 2) through a relay.
fn relayed(tag: &str) -> (Side, Side, Relay) {
    let (src, dst) = (side(&format!("{tag}-src"), node_options(1)), side(&format!("{tag}-dst"), node_options(2)));
    let relay = Relay::start(dst.node.addr());
    src.node.connect(2, &relay.addr().to_string()).unwrap();
    (src, dst, relay)
}

/// Options of a faulty run: small batches, retries on the fake clock.
fn faulty(method: Method, retries: u32) -> TransferOptions {
    TransferOptions {
        method,
        max_batch_bytes: 4096,
        max_batch_records: 32,
        ack_timeout: Duration::from_secs(30),
        retry: Retry { max_retries: retries, ..Retry::default() },
        clock: Arc::new(FakeClock::default()),
        ..TransferOptions::default()
    }
}

/// Puts, appends and deletes over 2000 keys and 50 lists, values of
/// 50..250 bytes, all decided by (seed, index).
fn write_load(shard: &Shard, seed: u64, n: u64) {
    let mut r = Rng::new(seed);
    for i in 0..n {
        let key = format!("k{:04}", r.below(2000));
        match r.below(10) {
            0 => {
                shard.delete(key.as_bytes()).unwrap();
            }
            1 | 2 => {
                shard.append(format!("list{:02}", r.below(50)).as_bytes(), format!("item{seed}-{i}").as_bytes()).unwrap();
            }
            _ => {
                shard.put(key.as_bytes(), &vec![(i % 251) as u8; 50 + r.below(200) as usize]).unwrap();
            }
        }
    }
}

/// `n` puts of fresh keys with 80-byte values: records of one size.
fn write_fixed(shard: &Shard, tag: &str, n: u64) {
    for i in 0..n {
        shard.put(format!("{tag}{i:06}").as_bytes(), &[7u8; 80]).unwrap();
    }
}

/// The receiver's copy, opened by its host once the transfer finished.
fn received(dst: &Side) -> Shard {
    dst.engine.open_shard(SHARD, false).unwrap()
}

fn assert_same(dst: &Side, shard: &Shard) {
    let got = received(dst);
    assert_eq!(got.last_version(), shard.last_version());
    assert_eq!(shard_digest(&got).unwrap(), shard_digest(shard).unwrap(), "the receiver's contents differ");
    got.close().unwrap();
}

/// Whatever the faults, the receiver saw one step at a time, in order.
fn assert_in_order(dst: &Side) {
    let s = dst.transfers.receiver_stats();
    assert_eq!((s.out_of_order, s.overlapped, s.malformed), (0, 0, 0), "{s:?}");
    assert_eq!(s.max_in_flight, 1, "one step in flight at a time: {s:?}");
}

/// Plans `cuts` resets at distances drawn from `range` bytes.
fn plan_cuts(relay: &Relay, rng: &mut Rng, cuts: u64, range: std::ops::Range<u64>) {
    for _ in 0..cuts {
        relay.cut_after(range.start + rng.below(range.end - range.start));
    }
}

#[test]
fn a_connection_reset_mid_batch_resends_the_batch_and_the_contents_agree() {
    let (_replay, mut rng) = Replay::new("a_connection_reset_mid_batch_resends_the_batch_and_the_contents_agree");
    let (src, dst, relay) = relayed("reset");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_load(&shard, rng.next(), 3000);
    shard.flush(true).unwrap();
    write_load(&shard, rng.next(), 1000);
    dst.transfers.expect(SHARD, 1);
    // The snapshot is a few hundred KB: the cuts land inside it.
    let cuts = 2 + rng.below(3);
    plan_cuts(&relay, &mut rng, cuts, 4 << 10..60 << 10);
    let r = src.transfers.send_shard(&shard, SHARD, 2, &faulty(Method::Snapshot, 8)).unwrap();
    assert!(r.snapshot, "{r:?}");
    assert_eq!((relay.cuts_left(), relay.resets()), (0, cuts), "every cut happened during the transfer");
    assert!(r.retries >= 1, "a reset costs at least one retry: {r:?}");
    assert_same(&dst, &shard);

    // Then a WAL delta of a few hundred KB, cut again (the host keeps the
    // receiver's last record, for the history check, and what it lacks;
    // seals truncate the rest meanwhile).
    shard.set_keep_from(r.last_version).unwrap();
    write_load(&shard, rng.next(), 3000);
    dst.transfers.expect(SHARD, 1);
    plan_cuts(&relay, &mut rng, cuts, 4 << 10..60 << 10);
    let r = src.transfers.send_shard(&shard, SHARD, 2, &faulty(Method::WalDelta, 8)).unwrap();
    assert!(!r.snapshot && r.fallback.is_none(), "{r:?}");
    assert_eq!((relay.cuts_left(), relay.resets()), (0, 2 * cuts));
    assert!(r.retries >= 1, "{r:?}");
    assert_same(&dst, &shard);
    assert_in_order(&dst);
    eprintln!("{cuts} cuts per transfer, {} connections, receiver {:?}", relay.connections(), dst.transfers.receiver_stats());
}

#[test]
fn when_retries_run_out_the_transfer_fails_cleanly_and_the_next_resumes_by_wal_delta() {
    let (_replay, mut rng) = Replay::new("when_retries_run_out_the_transfer_fails_cleanly_and_the_next_resumes_by_wal_delta");
    let (src, dst, relay) = relayed("exhausted");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_load(&shard, rng.next(), 500);
    dst.transfers.expect(SHARD, 1);
    let had = src.transfers.send_shard(&shard, SHARD, 2, &faulty(Method::Snapshot, 3)).unwrap().last_version;
    shard.set_keep_from(had).unwrap();

    // About 430 KB of records; the connection is cut 150..250 KB in and
    // the receiver stays unreachable after that.
    write_fixed(&shard, "f", 4000);
    relay.cut_after(150_000 + rng.below(100_000));
    relay.refuse(true);
    dst.transfers.expect(SHARD, 1);
    let e = src.transfers.send_shard(&shard, SHARD, 2, &faulty(Method::WalDelta, 3)).unwrap_err();
    assert!(e.message.contains("after 3 retries"), "{e}");
    assert!(relay.resets() >= 2, "the cut and the refused redials: {}", relay.resets());

    // The transfer's pin is gone: a flush truncates past `had + 1`. The
    // host keeps the records from `keep` on (1000 records, about 110 KB,
    // in: the receiver has acknowledged more, it got at least 150 KB).
    let keep = had + 1000;
    shard.set_keep_from(keep).unwrap(); // moves the host's own hold up
    shard.flush(true).unwrap();
    let first = shard.stats().wal_first_seq;
    assert!(first > had + 1, "the WAL still starts at {first}, at or below the failed transfer's pin at {}", had + 1);
    assert!(first <= keep, "{first}");

    // The receiver kept what it acknowledged: the next transfer sends only the rest.
    relay.refuse(false);
    dst.transfers.expect(SHARD, 1);
    let r = src.transfers.send_shard(&shard, SHARD, 2, &faulty(Method::WalDelta, 3)).unwrap();
    assert!(!r.snapshot && r.fallback.is_none(), "{r:?}");
    assert!(r.receiver_had >= keep, "the receiver had {}; it had acknowledged past {keep}", r.receiver_had);
    assert_eq!(r.ops, shard.last_version() - r.receiver_had);
    assert_same(&dst, &shard);
    assert_in_order(&dst);
}

#[test]
fn a_write_slipped_in_before_the_final_hold_reaches_the_receiver() {
    let (_replay, mut rng) = Replay::new("a_write_slipped_in_before_the_final_hold_reaches_the_receiver");
    let (src, dst, _relay) = relayed("slipped");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_load(&shard, rng.next(), 1000);
    dst.transfers.expect(SHARD, 1);
    // The hook runs after the last read made without the hold and writes
    // twice: the drain under the hold must find both.
    let slipped = Arc::new(Mutex::new(Vec::new()));
    let hook = {
        let (shard, slipped) = (shard.clone(), slipped.clone());
        Hook(Arc::new(move || {
            for k in [&b"slipped-1"[..], b"slipped-2"] {
                let v = shard.put(k, b"late").unwrap();
                slipped.lock().unwrap().push((k.to_vec(), v));
            }
        }))
    };
    let opts = TransferOptions { before_final_hold: Some(hook), ..faulty(Method::Snapshot, 3) };
    let r = src.transfers.send_shard(&shard, SHARD, 2, &opts).unwrap();
    let slipped = slipped.lock().unwrap().clone();
    assert_eq!(slipped.len(), 2, "the hook ran once");
    assert_eq!(r.last_version, slipped[1].1, "the last write sent is the second slipped one");
    let got = received(&dst);
    for (k, v) in &slipped {
        let e = got.get(k).unwrap().expect("the slipped write arrived");
        assert_eq!((e.version, e.value), (*v, Value::Bytes(b"late".to_vec())));
    }
    assert_eq!(shard_digest(&got).unwrap(), shard_digest(&shard).unwrap());
}

#[test]
fn sustained_writes_through_a_faulty_link_all_reach_the_receiver() {
    let (_replay, mut rng) = Replay::new("sustained_writes_through_a_faulty_link_all_reach_the_receiver");
    let (src, dst, relay) = relayed("sustained");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_load(&shard, rng.next(), 3000);
    dst.transfers.expect(SHARD, 1);
    let cuts = 1 + rng.below(3);
    plan_cuts(&relay, &mut rng, cuts, 4 << 10..60 << 10);
    // A writer writes from before the transfer starts until the hand-over
    // refuses it; every write it saw succeed must be on the receiver.
    let started = Arc::new(AtomicBool::new(false));
    let writer = {
        let (shard, started, seed) = (shard.clone(), started.clone(), rng.next());
        std::thread::spawn(move || {
            let mut r = Rng::new(seed);
            let mut acked = Vec::new();
            for i in 0u64.. {
                let key = format!("w{:04}", r.below(3000));
                match shard.put(key.as_bytes(), &i.to_le_bytes()) {
                    Ok(v) => acked.push((key, i, v)),
                    Err(e) => {
                        assert_eq!(e.status, KEEL_STATUS_MOVED, "{e}");
                        return acked;
                    }
                }
                started.store(true, Ordering::Release);
            }
            unreachable!()
        })
    };
    while !started.load(Ordering::Acquire) {
        std::thread::yield_now();
    }
    let opts = TransferOptions { hand_over: true, ..faulty(Method::Snapshot, 8) };
    let r = src.transfers.send_shard(&shard, SHARD, 2, &opts).unwrap();
    let acked = writer.join().unwrap();
    assert!(r.handed_over && shard.is_moved(), "{r:?}");
    assert_eq!(r.last_version, shard.last_version(), "everything applied was sent");
    assert_eq!(relay.cuts_left(), 0, "every cut happened during the transfer");
    assert!(r.retries >= 1, "{r:?}");
    let got = received(&dst);
    assert_eq!(shard_digest(&got).unwrap(), shard_digest(&shard).unwrap());
    let (key, i, v) = acked.last().expect("the writer wrote during the transfer");
    let e = got.get(key.as_bytes()).unwrap().expect("the last acknowledged write arrived");
    assert_eq!((e.version, e.value), (*v, Value::Bytes(i.to_le_bytes().to_vec())));
    assert_in_order(&dst);
    eprintln!("{} writes during the transfer, {r:?}", acked.len());
}

#[test]
fn records_and_entries_larger_than_a_frame_travel_in_pieces() {
    let (_replay, mut rng) = Replay::new("records_and_entries_larger_than_a_frame_travel_in_pieces");
    // Segments large enough for 3 MB records; frames of 1 MiB.
    let big = Options { wal_segment_size: 8 << 20, seal_bytes: 4 << 20, ..shard_options() };
    let (sdir, ddir) = (TempDir::new("large-src"), TempDir::new("large-dst"));
    let src = side_at(sdir.path(), node_options(1), big.clone());
    let dst = side_at(ddir.path(), node_options(2), big);
    let relay = Relay::start(dst.node.addr());
    src.node.connect(2, &relay.addr().to_string()).unwrap();
    let frame = src.node.max_frame_bytes();
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_load(&shard, rng.next(), 300);
    // Just below a frame (far above a batch), and well above one.
    let near = frame - 100 - rng.below(100) as usize;
    let over = 2 * frame + rng.below(frame as u64) as usize;
    shard.put(b"near", &vec![1; near]).unwrap();
    shard.put(b"over", &vec![2; over]).unwrap();
    // A posting list larger than a frame travels as one snapshot entry.
    for i in 0..100u32 {
        shard.append(b"big-list", &vec![i as u8; 15_000]).unwrap();
    }
    dst.transfers.expect(SHARD, 1);
    plan_cuts(&relay, &mut rng, 2, 64 << 10..(3 * frame) as u64);
    let r = src.transfers.send_shard(&shard, SHARD, 2, &faulty(Method::Snapshot, 8)).unwrap();
    assert!(r.parts >= 3, "the two entries above a frame went in pieces: {r:?}");
    assert_same(&dst, &shard);
    shard.set_keep_from(r.last_version).unwrap();

    // The same sizes as WAL records in a delta.
    shard.put(b"near", &vec![3; near]).unwrap();
    shard.put(b"over", &vec![4; over]).unwrap();
    write_load(&shard, rng.next(), 100);
    dst.transfers.expect(SHARD, 1);
    plan_cuts(&relay, &mut rng, 1, 64 << 10..(2 * frame) as u64);
    let r2 = src.transfers.send_shard(&shard, SHARD, 2, &faulty(Method::WalDelta, 8)).unwrap();
    assert!(!r2.snapshot, "{r2:?}");
    assert!(r2.parts >= 2, "the record above a frame went in pieces: {r2:?}");
    assert_same(&dst, &shard);
    let s = dst.transfers.receiver_stats();
    assert!(s.parts >= r.parts + r2.parts, "the receiver assembled every piece: {s:?}");
    assert_in_order(&dst);
}

#[test]
fn the_bandwidth_cap_paces_every_byte_sent() {
    let (_replay, mut rng) = Replay::new("the_bandwidth_cap_paces_every_byte_sent");
    let rate = 50_000 + rng.below(200_000);
    let src = side("cap-src", NodeOptions { transfer_bandwidth_bytes_per_sec: rate, ..node_options(1) });
    let dst = side("cap-dst", node_options(2));
    src.node.connect(2, &dst.node.addr().to_string()).unwrap();
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_load(&shard, rng.next(), 2000);
    dst.transfers.expect(SHARD, 1);
    let r = src.transfers.send_shard(&shard, SHARD, 2, &faulty(Method::Snapshot, 3)).unwrap();
    // On the fake clock time moves only by the cap's waits: every byte
    // beyond the bucket's first tenth of a second was paid for at the rate.
    let paid = r.paced.as_secs_f64() * rate as f64 + rate as f64 / 10.0;
    assert!((paid - r.bytes as f64).abs() <= 1.0, "paid for {paid:.1} bytes, sent {}: {r:?}", r.bytes);
    assert_same(&dst, &shard);
}

/// The receiver's side of a hand-spoken transfer: a resent step is
/// answered again from memory and applied once, a late copy of an older
/// step is dropped, a step resent with other contents is refused.
#[test]
fn a_resent_step_is_answered_from_memory_and_applied_once() {
    let src = Node::open(node_options(1)).unwrap();
    let dst = side("memory-dst", node_options(2));
    let (tx, acks) = crossbeam_channel::unbounded();
    src.set_handler(
        Service::Transfer,
        Some(Arc::new(move |_peer, ty, p: &[u8]| {
            assert_eq!(ty, wire::ACK);
            tx.send(wire::Ack::decode(p).unwrap()).unwrap();
        })),
    );
    src.connect(2, &dst.node.addr().to_string()).unwrap();
    dst.transfers.expect(SHARD, 1);
    let send = |ty: u16, step: u64, body: &[u8]| {
        let mut p = wire::step(5, step, step - 1);
        p.extend_from_slice(body);
        src.send(2, ty, &p).unwrap();
    };
    let ack = || acks.recv_timeout(PATIENCE).expect("an ACK");
    let entries = |value: &[u8]| {
        let mut b = 2u32.to_le_bytes().to_vec();
        wire::put_entry(&mut b, b"a", &Entry { version: 3, value: Value::Bytes(value.to_vec()) });
        wire::put_entry(&mut b, b"b", &Entry { version: 7, value: Value::Bytes(b"bee".to_vec()) });
        b
    };
    let begin = [&[wire::MODE_SNAPSHOT][..], &10u64.to_le_bytes(), &[0], &0u32.to_le_bytes()].concat();
    send(wire::START, 1, &[&SHARD.to_le_bytes()[..], &[wire::MODE_SNAPSHOT]].concat());
    assert_eq!(ack().status, KEEL_STATUS_OK);
    send(wire::BEGIN, 2, &begin);
    assert_eq!(ack().status, KEEL_STATUS_OK);
    send(wire::ENTRIES, 3, &entries(b"ay"));
    let first = ack();
    send(wire::ENTRIES, 3, &entries(b"ay"));
    let again = ack();
    assert_eq!((again.step, again.status, again.version), (first.step, first.status, first.version));
    let s = dst.transfers.receiver_stats();
    assert_eq!((s.resent_steps, s.entries_installed), (1, 2), "applied once: {s:?}");
    // The same step with other bytes is not a copy.
    send(wire::ENTRIES, 3, &entries(b"other"));
    assert_eq!(ack().status, KEEL_STATUS_PROTOCOL);
    // A late copy of step 2 gets no answer: the next ACK is step 4's.
    send(wire::BEGIN, 2, &begin);
    send(wire::SNAPSHOT_END, 4, &[]);
    assert_eq!((ack().step, dst.transfers.receiver_stats().stale_steps), (4, 1));
    send(wire::FINISH, 5, &10u64.to_le_bytes());
    assert_eq!(ack().status, KEEL_STATUS_OK);
    let got = received(&dst);
    assert_eq!(got.get(b"a").unwrap().map(|e| (e.version, e.value)), Some((3, Value::Bytes(b"ay".to_vec()))));
    assert_eq!(got.last_version(), 10);
    assert_in_order(&dst);
}
