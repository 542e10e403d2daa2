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
//! on a fake clock (one test sleeps a real ten-minute backoff only to
//! cancel it), and waits for the other side have generous deadlines.

mod common;

use common::child::{self, report};
use common::relay::Relay;
use common::rng::Rng;
use common::hookfs::{Call, HookFs};
use common::side::{node_options, Side};
use common::TempDir;
use keel::node::{Node, NodeOptions, Service};
use keel::shard::{Entry, Op, Options, Shard, Step, StepHook, Steps, Value};
use keel::status::*;
use keel::transfer::{shard_digest, wire, Clock, Finish, Hook, Method, RealClock, Retry, Stage, TransferOptions};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
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

fn side(tag: &str, opts: NodeOptions) -> Side {
    Side::temp(tag, opts, shard_options())
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

/// `n` puts of fresh keys with 80-byte values: records of one size
/// (written 50 to a batch, to spare the fsyncs).
fn write_fixed(shard: &Shard, tag: &str, n: u64) {
    let ops: Vec<Op> = (0..n).map(|i| Op::Put { key: format!("{tag}{i:06}").into_bytes(), value: vec![7; 80] }).collect();
    for batch in ops.chunks(50) {
        shard.write(batch).unwrap();
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

/// A real clock that reports each sleep as it begins: the test cancels a
/// transfer while it sits in a backoff of ten minutes.
#[derive(Debug)]
struct ReportingClock {
    real: RealClock,
    sleeping: Mutex<mpsc::Sender<Duration>>,
}

impl Clock for ReportingClock {
    fn now(&self) -> Duration {
        self.real.now()
    }
    fn sleep(&self, d: Duration) {
        let _ = self.sleeping.lock().unwrap().send(d);
        self.real.sleep(d);
    }
}

#[test]
fn a_cancel_cuts_a_retry_backoff_short_and_the_next_transfer_resumes() {
    let (_replay, mut rng) = Replay::new("a_cancel_cuts_a_retry_backoff_short_and_the_next_transfer_resumes");
    let (src, dst, relay) = relayed("cancel-backoff");
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_load(&shard, rng.next(), 500);
    dst.transfers.expect(SHARD, 1);
    let had = src.transfers.send_shard(&shard, SHARD, 2, &faulty(Method::Snapshot, 3)).unwrap().last_version;
    shard.set_keep_from(had).unwrap();

    // The connection is cut 150..250 KB into about 430 KB of records and
    // stays unreachable: the source backs off for ten minutes before its retry.
    write_fixed(&shard, "c", 4000);
    relay.cut_after(150_000 + rng.below(100_000));
    relay.refuse(true);
    dst.transfers.expect(SHARD, 1);
    let (tx, rx) = mpsc::channel();
    let long = Duration::from_secs(600);
    let opts = TransferOptions {
        retry: Retry { max_retries: 3, first_backoff: long, max_backoff: long },
        clock: Arc::new(ReportingClock { real: RealClock::new(), sleeping: Mutex::new(tx) }),
        ..faulty(Method::WalDelta, 3)
    };
    let t = src.transfers.start(&shard, SHARD, 2, &opts).unwrap();
    rx.recv_timeout(PATIENCE).expect("the source never began its backoff");
    t.cancel();
    // Without a cancellable backoff this would wait out the ten minutes.
    assert!(t.wait(Some(PATIENCE)), "the cancel did not end the backoff");
    assert_eq!(t.status().0, Stage::Cancelled);
    let e = t.outcome().unwrap().unwrap_err();
    assert!(e.message.contains("cancelled"), "{e}");

    // The receiver kept what it acknowledged: the next transfer sends only the rest.
    relay.refuse(false);
    dst.transfers.expect(SHARD, 1);
    let r = src.transfers.send_shard(&shard, SHARD, 2, &faulty(Method::WalDelta, 3)).unwrap();
    assert!(!r.snapshot && r.fallback.is_none(), "{r:?}");
    assert!(r.receiver_had > had, "the receiver had {}; it had acknowledged past {had}", r.receiver_had);
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
    let opts = TransferOptions { auto_finish: Some(Finish::HandOver), ..faulty(Method::Snapshot, 8) };
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
    let src = Side::open(sdir.path(), node_options(1), big.clone());
    let dst = Side::open(ddir.path(), node_options(2), big);
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
    // (The same step with other bytes is no copy: it ends the reception,
    // tests/transfer_hostile.rs.)
    // A late copy of step 2 gets no answer: the next ACK is step 4's.
    send(wire::BEGIN, 2, &begin);
    send(wire::SNAPSHOT_END, 4, &[]);
    assert_eq!((ack().step, dst.transfers.receiver_stats().stale_steps), (4, 1));
    send(wire::FINISH, 5, &10u64.to_le_bytes());
    assert_eq!(ack().status, KEEL_STATUS_OK);
    // FINISH again (its ACK lost with a connection): the reception is
    // over, yet the copy gets the same answer.
    send(wire::FINISH, 5, &10u64.to_le_bytes());
    let a = ack();
    assert_eq!((a.step, a.status), (5, KEEL_STATUS_OK));
    assert_eq!(dst.transfers.receiver_stats().resent_steps, 2, "ENTRIES once, FINISH once");
    let got = received(&dst);
    assert_eq!(got.get(b"a").unwrap().map(|e| (e.version, e.value)), Some((3, Value::Bytes(b"ay".to_vec()))));
    assert_eq!(got.last_version(), 10);
    assert_in_order(&dst);
}

/// Set in a child process: the role it plays and its parameters,
/// separated by `|`.
const CHILD_ENV: &str = "KEEL_TRANSFER_FAULTS_CHILD";

fn hex(d: [u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the child's role when this process is one; never returns then.
fn run_child_if_one() {
    let Ok(role) = std::env::var(CHILD_ENV) else { return };
    let parts: Vec<&str> = role.split('|').collect();
    match parts[0] {
        "receiver" => receiver_child(Path::new(parts[1])),
        "source" => source_child(Path::new(parts[1]), parts[2], parts[3].parse().unwrap(), parts[4]),
        other => panic!("unknown child role {other}"),
    }
}

/// A receiver (node 2) that reports its address, each change of its
/// applied operations (`applied N`), and each finished transfer with the
/// received shard's version and digest (`finished V D`); it runs until
/// it is killed.
fn receiver_child(dir: &Path) -> ! {
    let me = Side::open(dir, node_options(2), shard_options());
    me.transfers.expect(SHARD, 1);
    report(&format!("addr {}\n", me.node.addr()));
    let (mut applied, mut finished) = (0, 0);
    loop {
        let s = me.transfers.receiver_stats();
        if s.ops_applied != applied {
            applied = s.ops_applied;
            report(&format!("applied {applied}\n"));
        }
        if s.finished != finished {
            finished = s.finished;
            let shard = me.engine.open_shard(SHARD, false).unwrap();
            report(&format!("finished {} {}\n", shard.last_version(), hex(shard_digest(&shard).unwrap())));
            shard.close().unwrap();
            me.transfers.expect(SHARD, 1);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A source (node 1) reaching the receiver through `relay`. Phase
/// `first`: writes, sends a snapshot (`sent1 X`), writes about 430 KB
/// more (`ready`), waits for the parent's `go` file and sends them as a
/// WAL delta, which the parent kills it in the middle of. Phase `again`:
/// restarted on the same directory, sends a WAL delta and reports
/// `sent3 <receiver had> <ops> <snapshot> <last version> <digest>`.
fn source_child(dir: &Path, relay: &str, seed: u64, phase: &str) -> ! {
    // Pins and `set_keep_from` do not outlive the process, and a reopened
    // shard flushes what it replayed, which truncates its WAL: the
    // restarted host sets its hold again (everything retained) before
    // that flush may acknowledge the WAL.
    let gate = Arc::new(AckGate::default());
    let me = Side::open(dir, node_options(1), Options { steps: Steps::new(gate.clone()), ..shard_options() });
    me.node.connect(2, relay).unwrap();
    let shard = me.engine.open_shard(SHARD, true).unwrap();
    shard.set_keep_from(shard.stats().wal_first_seq).unwrap();
    gate.open();
    if phase == "first" {
        write_load(&shard, seed, 1000);
        let had = me.transfers.send_shard(&shard, SHARD, 2, &faulty(Method::Snapshot, 3)).unwrap().last_version;
        report(&format!("sent1 {had}\n"));
        shard.set_keep_from(had).unwrap();
        write_fixed(&shard, "f", 4000);
        report("ready\n");
        let deadline = std::time::Instant::now() + PATIENCE;
        while !dir.join("go").exists() {
            assert!(std::time::Instant::now() < deadline, "no go from the parent");
            std::thread::sleep(Duration::from_millis(5));
        }
        let r = me.transfers.send_shard(&shard, SHARD, 2, &faulty(Method::WalDelta, 3));
        panic!("the transfer the parent kills ended: {r:?}");
    }
    let r = me.transfers.send_shard(&shard, SHARD, 2, &faulty(Method::WalDelta, 3)).unwrap();
    let digest = hex(shard_digest(&shard).unwrap());
    report(&format!("sent3 {} {} {} {} {digest} {:?}\n", r.receiver_had, r.ops, r.snapshot, r.last_version, r.fallback));
    std::process::exit(0)
}

/// Holds a shard's flush before it acknowledges the WAL (which may
/// truncate it) until `open`.
#[derive(Default)]
struct AckGate {
    open: Mutex<bool>,
    cv: std::sync::Condvar,
}

impl AckGate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

impl StepHook for AckGate {
    fn at(&self, step: Step) {
        if step == Step::Ack {
            let _open = self.cv.wait_while(self.open.lock().unwrap(), |open| !*open).unwrap();
        }
    }
}

/// Waits for the child's next line starting with `word`, giving the
/// lines before it to `other`; returns the line's other words.
fn line(c: &child::Child, word: &str, mut other: impl FnMut(&str)) -> Vec<String> {
    loop {
        let l = c.lines.recv_timeout(PATIENCE).unwrap_or_else(|e| panic!("waiting for the child's `{word}`: {e}"));
        let mut w = l.split_whitespace();
        if w.next() == Some(word) {
            return w.map(str::to_string).collect();
        }
        other(&l);
    }
}

fn kill(c: &mut child::Child) {
    c.process.kill().unwrap();
    let status = c.process.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
}

#[test]
fn a_receiver_killed_mid_transfer_resumes_from_what_it_acknowledged() {
    run_child_if_one();
    let name = "a_receiver_killed_mid_transfer_resumes_from_what_it_acknowledged";
    let (_replay, mut rng) = Replay::new(name);
    let src = side("kill-rx-src", node_options(1));
    let dst_dir = TempDir::new("kill-rx-dst");
    let role = format!("receiver|{}", dst_dir.path().display());
    let spawn = || child::spawn(name, &[(CHILD_ENV, role.clone())], None).unwrap();
    let mut rx = spawn();
    let addr = line(&rx, "addr", |_| {}).remove(0);
    let relay = Relay::start(addr.parse().unwrap());
    src.node.connect(2, &relay.addr().to_string()).unwrap();
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_load(&shard, rng.next(), 1000);
    let had = src.transfers.send_shard(&shard, SHARD, 2, &faulty(Method::Snapshot, 3)).unwrap().last_version;
    assert_eq!(line(&rx, "finished", |_| {}), [had.to_string(), hex(shard_digest(&shard).unwrap())]);

    // About 430 KB as a WAL delta, held 100..300 KB in; the receiver is
    // killed there, once it has reported applying some of it.
    shard.set_keep_from(had).unwrap();
    write_fixed(&shard, "f", 4000);
    relay.stall_after(100_000 + rng.below(200_000));
    let sending = {
        let (src_t, shard) = (src.transfers.clone(), shard.clone());
        std::thread::spawn(move || src_t.send_shard(&shard, SHARD, 2, &faulty(Method::WalDelta, 3)))
    };
    assert!(relay.wait_stalled(PATIENCE), "the transfer never reached the stall");
    let applied_in = |l: &str| l.strip_prefix("applied ").map_or(0, |n| n.parse::<u64>().unwrap());
    let mut applied = 0;
    while applied == 0 {
        applied = applied_in(&rx.lines.recv_timeout(PATIENCE).expect("the receiver reports what it applied"));
    }
    while let Ok(l) = rx.lines.try_recv() {
        applied = applied.max(applied_in(&l));
    }
    kill(&mut rx);
    relay.release();
    let e = sending.join().unwrap().expect_err("the receiver died mid-transfer");
    assert!(e.message.contains("retries"), "{e}");

    // Restarted on the same directory, it keeps what it acknowledged.
    let mut rx = spawn();
    relay.set_target(line(&rx, "addr", |_| {}).remove(0).parse().unwrap());
    src.node.reconnect(2).unwrap();
    let r = src.transfers.send_shard(&shard, SHARD, 2, &faulty(Method::WalDelta, 3)).unwrap();
    assert!(!r.snapshot && r.fallback.is_none(), "{r:?}");
    assert!(r.receiver_had >= had + applied, "the receiver had {}, it had reported {applied} past {had}", r.receiver_had);
    assert_eq!(r.ops, shard.last_version() - r.receiver_had);
    assert_eq!(line(&rx, "finished", |_| {}), [shard.last_version().to_string(), hex(shard_digest(&shard).unwrap())]);
    kill(&mut rx);
}

#[test]
fn a_source_killed_mid_transfer_resumes_by_wal_delta_after_its_restart() {
    run_child_if_one();
    let name = "a_source_killed_mid_transfer_resumes_by_wal_delta_after_its_restart";
    let (_replay, mut rng) = Replay::new(name);
    let dst = side("kill-tx-dst", node_options(2));
    let relay = Relay::start(dst.node.addr());
    let src_dir = TempDir::new("kill-tx-src");
    let child_seed = rng.next();
    let role = |phase: &str| format!("source|{}|{}|{child_seed}|{phase}", src_dir.path().display(), relay.addr());
    dst.transfers.expect(SHARD, 1);
    let mut tx = child::spawn(name, &[(CHILD_ENV, role("first"))], None).unwrap();
    let had: u64 = line(&tx, "sent1", |_| {})[0].parse().unwrap();
    line(&tx, "ready", |_| {});
    dst.transfers.expect(SHARD, 1);
    relay.stall_after(100_000 + rng.below(200_000));
    std::fs::write(src_dir.path().join("go"), b"").unwrap();
    assert!(relay.wait_stalled(PATIENCE), "the transfer never reached the stall");
    let deadline = std::time::Instant::now() + PATIENCE;
    while dst.transfers.receiver_stats().ops_applied == 0 {
        assert!(std::time::Instant::now() < deadline, "the receiver applied nothing before the stall");
        std::thread::sleep(Duration::from_millis(5));
    }
    let applied = dst.transfers.receiver_stats().ops_applied;
    kill(&mut tx);
    relay.release();

    // Restarted: the records after what the receiver acknowledged are
    // still in its WAL, so a WAL delta finishes the job.
    dst.transfers.expect(SHARD, 1);
    let mut tx = child::spawn(name, &[(CHILD_ENV, role("again"))], None).unwrap();
    let w = line(&tx, "sent3", |_| {});
    let (receiver_had, ops, snapshot, last): (u64, u64, bool, u64) =
        (w[0].parse().unwrap(), w[1].parse().unwrap(), w[2].parse().unwrap(), w[3].parse().unwrap());
    assert!(!snapshot, "{w:?}");
    assert!(receiver_had >= had + applied, "the receiver had {receiver_had}, it had applied {applied} past {had}");
    assert_eq!(ops, last - receiver_had);
    let got = received(&dst);
    assert_eq!((got.last_version(), hex(shard_digest(&got).unwrap())), (last, w[4].clone()));
    assert!(tx.process.wait().unwrap().success());
    assert_in_order(&dst);
}

// ---- A receiver's shard whose close fails ------------------------------------

fn received_shard_options() -> Options {
    Options { flush_interval: None, wal_segment_size: 64 << 10, seal_bytes: 16 << 10, max_sealed: 3, ..Options::default() }
}

fn write_some(shard: &Shard, from: u32, n: u32) {
    for i in from..from + n {
        shard.put(format!("k{i:05}").as_bytes(), &[i as u8; 100]).unwrap();
    }
}

/// A file system whose `calls` on paths under `under` fail with EMFILE
/// while the returned flag is set; the counter says how many did.
fn emfile_under(under: String, calls: &'static [Call]) -> (Arc<AtomicBool>, Arc<AtomicU64>, Arc<HookFs>) {
    let (armed, hits) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let (a, h) = (armed.clone(), hits.clone());
    let fs = HookFs::new(move |call, path| {
        if calls.contains(&call) && a.load(Ordering::Acquire) && path.to_string_lossy().contains(&under) {
            h.fetch_add(1, Ordering::AcqRel);
            return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
        }
        Ok(())
    });
    (armed, hits, fs)
}

/// A received shard whose drop fails (a transient EMFILE on its files)
/// is closed all the same; its slot goes too, so the next open recovers
/// it from disk. The slot once kept the closed shard, and open_shard
/// handed it out: every call on it answered CLOSED.
#[test]
fn open_shard_after_a_failed_drop_of_a_received_shard_gives_a_live_shard() {
    let (armed, hits, fs) = emfile_under(format!("/shards/{SHARD}/"), &[Call::Create, Call::Open]);
    let src = Side::temp("transfer-faults-received-drop-src", node_options(1), received_shard_options());
    let dst = Side::temp_on("transfer-faults-received-drop-dst", node_options(2), received_shard_options(), fs);
    src.node.connect(2, &dst.node.addr().to_string()).unwrap();
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_some(&shard, 0, 200);
    let small = |method| TransferOptions { method, max_batch_bytes: 4096, max_batch_records: 16, ..TransferOptions::default() };
    dst.transfers.expect(SHARD, 1);
    let first = src.transfers.send_shard(&shard, SHARD, 2, &small(Method::Snapshot)).unwrap();
    shard.set_keep_from(first.last_version + 1).unwrap();
    dst.engine.open_shard(SHARD, false).unwrap().close().unwrap();
    write_some(&shard, 200, 100); // what the delta brings: logged in the receiver's WAL
    dst.transfers.expect(SHARD, 1);
    let r = src.transfers.send_shard(&shard, SHARD, 2, &small(Method::WalDelta)).unwrap();
    assert!(!r.snapshot && r.ops > 0, "precondition: a WAL delta ({r:?})");

    armed.store(true, Ordering::Release);
    let dropped = dst.engine.drop_shard(SHARD).map_err(|e| e.status);
    armed.store(false, Ordering::Release);
    assert!(hits.load(Ordering::Acquire) > 0 && dropped.is_err(), "precondition: the received shard's close failed ({dropped:?})");

    // Descriptors are back: the host opens the shard (or drops it again).
    let opened = dst.engine.open_shard(SHARD, false).map_err(|e| e.status);
    let read = opened.as_ref().map(|s| s.get(b"k00250").map(|e| e.is_some()).map_err(|e| e.status));
    assert_eq!(
        read,
        Ok(Ok(true)),
        "drop_shard failed with {dropped:?}; then open_shard returned {:?} and a read on it {read:?}",
        opened.as_ref().map(|s| format!("a shard, is_closed={}", s.is_closed()))
    );
}

/// The host's close of shard 7 returned RESOURCE and left the close
/// pending (its C handle is freed). A snapshot of shard 7 arriving once
/// descriptors are back retries that close, as an open or a drop would;
/// it once answered BUSY ("close it before receiving it"), which a host
/// without a handle cannot clear.
#[test]
fn a_snapshot_reception_finishes_a_pending_close_of_that_shard() {
    use keel::wal::Durability;
    let (armed, hits, fs) = emfile_under(format!("/shards/{SHARD}/wal/"), &[Call::Open]);
    let tight = Options { durability: Durability::Sync, max_open_files: 16, flush_threads: 1, ..received_shard_options() };
    let src = Side::temp("transfer-faults-pending-close-src", node_options(1), received_shard_options());
    let dst = Side::temp_on("transfer-faults-pending-close-dst", node_options(2), tight, fs);
    src.node.connect(2, &dst.node.addr().to_string()).unwrap();

    // The receiver's own shard 7, its WAL segment evicted by 24 others.
    let seven = dst.engine.open_shard(SHARD, true).unwrap();
    seven.put(b"before", b"v").unwrap();
    let others: Vec<Shard> = (100..124).map(|id| dst.engine.open_shard(id, true).unwrap()).collect();
    for (i, s) in others.iter().enumerate() {
        s.put(format!("k{i}").as_bytes(), b"v").unwrap();
        s.flush(true).unwrap();
    }
    for s in &others {
        s.close().unwrap();
    }
    seven.put(b"held", b"v").unwrap();
    armed.store(true, Ordering::Release);
    let closed = seven.close().map_err(|e| e.status);
    armed.store(false, Ordering::Release);
    assert!(hits.load(Ordering::Acquire) > 0, "precondition: shard 7's segment was evicted ({closed:?})");
    assert_eq!(closed, Err(KEEL_STATUS_RESOURCE), "precondition");
    drop(seven); // as keel_shard_close frees the handle

    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_some(&shard, 0, 50);
    dst.transfers.expect(SHARD, 1);
    let opts = TransferOptions { method: Method::Snapshot, ..TransferOptions::default() };
    let sent = src.transfers.send_shard(&shard, SHARD, 2, &opts).map(|r| r.last_version).map_err(|e| (e.status, e.message));
    assert_eq!(sent, Ok(shard.last_version()), "a snapshot of shard 7 to a receiver whose host's close of shard 7 returned RESOURCE");
}

/// A clock whose sleeps wait for the test: each says it began, then
/// returns once the gate is open (time moves only when slept on).
#[derive(Debug)]
struct GateClock {
    time: Mutex<Duration>,
    open: Mutex<bool>,
    opened: Condvar,
    sleeping: Mutex<mpsc::Sender<()>>,
}

impl GateClock {
    fn new(sleeping: mpsc::Sender<()>) -> Arc<GateClock> {
        Arc::new(GateClock { time: Mutex::default(), open: Mutex::new(false), opened: Condvar::new(), sleeping: Mutex::new(sleeping) })
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl Clock for GateClock {
    fn now(&self) -> Duration {
        *self.time.lock().unwrap()
    }
    fn sleep(&self, d: Duration) {
        let _ = self.sleeping.lock().unwrap().send(());
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
        *self.time.lock().unwrap() += d;
    }
}

/// The receiver applies a hand-over's FINISH, but its ACK is lost with
/// the connection, and the receiver restarts on its directory before the
/// source resends FINISH: the shard is durably the receiver's, yet the new
/// process remembers no such transfer and answers the copy NOT_FOUND. That
/// is no proof the shard is still the source's: the source keeps its MOVED
/// mark and fails saying the receiver may own the shard. (It once took the
/// answer for a refusal, removed the mark and took writes: two owners.)
#[test]
fn a_finish_resent_to_a_receiver_that_forgot_it_does_not_leave_two_owners() {
    let src = side("forgot-finish-src", node_options(1));
    let dst_dir = TempDir::new("forgot-finish-dst");
    // The receiver's FINISH parks as it removes its INCOMING marker.
    let (entered_tx, entered) = crossbeam_channel::unbounded();
    let (release, release_rx) = crossbeam_channel::unbounded::<()>();
    let park = HookFs::new(move |call, path| {
        if call == Call::Remove && path.file_name().is_some_and(|n| n == "INCOMING") {
            let _ = entered_tx.send(());
            let _ = release_rx.recv();
        }
        Ok(())
    });
    let dst = Side::open_on(dst_dir.path(), node_options(2), shard_options(), park);
    let relay = Relay::start(dst.node.addr());
    src.node.connect(2, &relay.addr().to_string()).unwrap();
    let shard = src.engine.open_shard(SHARD, true).unwrap();
    write_some(&shard, 0, 200);
    dst.transfers.expect(SHARD, 1);
    let (sleeping_tx, sleeping) = mpsc::channel();
    let clock = GateClock::new(sleeping_tx);
    let opts = TransferOptions { auto_finish: Some(Finish::HandOver), clock: clock.clone(), ..faulty(Method::Snapshot, 3) };
    let t = src.transfers.start(&shard, SHARD, 2, &opts).unwrap();
    entered.recv().unwrap(); // FINISH reached the receiver
    relay.cut_after(0); // the source's next byte (a PING) resets the connection
    sleeping.recv().unwrap(); // the source saw it drop: FINISH's ACK cannot come back
    release.send(()).unwrap();
    // The receiver's close lets FINISH complete; the restarted one owns the
    // shard and knows nothing of the transfer.
    drop(dst);
    let dst = Side::open(dst_dir.path(), node_options(2), shard_options());
    relay.set_target(dst.node.addr());
    clock.open(); // the source dials again and resends FINISH
    assert!(t.wait(None));
    let outcome = t.outcome().unwrap();
    assert_eq!(outcome.as_ref().err().map(|e| e.status), Some(KEEL_STATUS_NOT_FOUND), "{outcome:?}");
    let owned = dst.engine.open_shard(SHARD, false).map(|s| s.get(b"k00199").map(|e| e.is_some()));
    assert!(matches!(owned, Ok(Ok(true))), "the receiver owns the shard: {owned:?}");
    let late = shard.put(b"after", b"x");
    assert_eq!(late.as_ref().err().map(|e| e.status), Some(KEEL_STATUS_MOVED), "outcome {outcome:?}; the source took a write while the receiver owns the shard: {late:?}");
    assert!(outcome.unwrap_err().message.contains("may have finished the hand-over"));
}
