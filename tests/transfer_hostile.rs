//! A transfer's receiver against steps a correct source never sends,
//! spoken by hand over a loopback TcpStream (the node's handshake, then
//! transfer frames): each is refused with PROTOCOL, or everything it
//! acknowledged survives a crash. No timing assertions: every wait is a
//! bounded read (a hang guard) on an event.

mod common;

use common::side::{node_options, Side};
use keel::node::frame::{self, HEADER_LEN};
use keel::node::handshake::{Hello, NONCE_LEN, PROTOCOL_MAX, PROTOCOL_MIN};
use keel::node::{types, NodeOptions};
use keel::shard::{Entry, Op, Options, Value};
use keel::status::*;
use keel::transfer::wire;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const SHARD: u32 = 7;
const HANG_GUARD: Duration = Duration::from_secs(60);

fn shard_options() -> Options {
    Options { flush_interval: None, ..Options::default() }
}

/// A peer spoken by hand: the handshake (no secret, loopback), then frames.
struct RawPeer {
    s: TcpStream,
    buf: Vec<u8>,
    /// While an answer is awaited: when to give up on it. The node's PINGs
    /// keep every read short, so the socket's read timeout alone never
    /// ends a wait for an ACK that does not come.
    until: Option<std::time::Instant>,
}

fn nonce() -> [u8; NONCE_LEN] {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut n = [0u8; NONCE_LEN];
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    n[..8].copy_from_slice(&t.to_le_bytes());
    n[8..16].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    n[16..24].copy_from_slice(&(std::process::id() as u64).to_le_bytes());
    n
}

impl RawPeer {
    fn connect(addr: std::net::SocketAddr, my_id: u64) -> RawPeer {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(HANG_GUARD)).unwrap();
        let mut p = RawPeer { s, buf: Vec::new(), until: None };
        let hello = Hello { min_version: PROTOCOL_MIN, max_version: PROTOCOL_MAX, node_id: my_id, nonce: nonce(), has_secret: false };
        p.send(types::HELLO, &hello.encode());
        p.send(types::READY, &[]);
        let (ty, _) = p.read_frame().expect("the node's HELLO");
        assert_eq!(ty, types::HELLO);
        let (ty, _) = p.read_frame().expect("the node's READY");
        assert_eq!(ty, types::READY);
        p
    }

    fn send(&mut self, ty: u16, payload: &[u8]) {
        self.s.write_all(&frame::encode(ty, payload)).unwrap();
    }

    fn send_step(&mut self, ty: u16, id: u64, step: u64, body: &[u8]) {
        let mut p = wire::step(id, step, step.saturating_sub(1));
        p.extend_from_slice(body);
        self.send(ty, &p);
    }

    /// The next frame (None at the end of the stream); PINGs are answered.
    fn read_frame(&mut self) -> Option<(u16, Vec<u8>)> {
        loop {
            if self.until.is_some_and(|u| std::time::Instant::now() > u) {
                panic!("hang guard: no answer from the node within {HANG_GUARD:?}");
            }
            if let Ok(Some(f)) = frame::decode(&self.buf, u32::MAX) {
                let payload = self.buf[HEADER_LEN..f.len].to_vec();
                self.buf.drain(..f.len);
                if f.ty == types::PING {
                    self.send(types::PONG, &[]);
                    continue;
                }
                if f.ty == types::PONG {
                    continue;
                }
                return Some((f.ty, payload));
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                    panic!("hang guard: nothing from the node for {HANG_GUARD:?}")
                }
                Err(_) => return None,
            }
        }
    }

    /// The ACK of the next step answered.
    fn ack(&mut self) -> wire::Ack {
        self.until = Some(std::time::Instant::now() + HANG_GUARD);
        let ack = loop {
            let (ty, p) = self.read_frame().expect("the node closed the connection before it answered");
            if ty == wire::ACK {
                break wire::Ack::decode(&p).unwrap();
            }
        };
        self.until = None;
        ack
    }

    /// Sends a step and returns its ACK.
    fn call(&mut self, ty: u16, id: u64, step: u64, body: &[u8]) -> wire::Ack {
        self.send_step(ty, id, step, body);
        let a = self.ack();
        assert_eq!(a.step, step, "{a:?}");
        a
    }
}

fn start_body(method: u8) -> Vec<u8> {
    [&SHARD.to_le_bytes()[..], &[method]].concat()
}

fn begin_snapshot_body(base: u64) -> Vec<u8> {
    [&[wire::MODE_SNAPSHOT][..], &base.to_le_bytes(), &[0], &0u32.to_le_bytes()].concat()
}

fn entries_body(entries: &[(&[u8], Entry)]) -> Vec<u8> {
    let mut b = (entries.len() as u32).to_le_bytes().to_vec();
    for (k, e) in entries {
        wire::put_entry(&mut b, k, e);
    }
    b
}

fn value(version: u64, v: &[u8]) -> Entry {
    Entry { version, value: Value::Bytes(v.to_vec()) }
}

fn ok(a: &wire::Ack, what: &str) {
    assert_eq!(a.status, KEEL_STATUS_OK, "{what}: {a:?}");
}

/// What a crash right now would leave of shard `id`: the receiver's
/// directory copied while its engine runs (as `common::copy_tree` does for
/// every crash test), opened by a fresh engine. The key values found, or
/// why the shard does not open.
fn crash_image(dir: &std::path::Path, id: u32, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, String> {
    let crash = common::TempDir::new("hostile-crash-image");
    common::copy_tree(dir, crash.path());
    let engine = keel::engine::Engine::open(crash.path(), shard_options()).map_err(|e| format!("engine: {e}"))?;
    let shard = engine.open_shard(id, false).map_err(|e| format!("shard {id}: {e}"))?;
    let mut out = Vec::new();
    for k in keys {
        out.push(shard.get(k).map_err(|e| e.to_string())?.map(|e| match e.value {
            Value::Bytes(b) => b,
            Value::Posting(_) => b"<posting>".to_vec(),
        }));
    }
    let _ = shard.close();
    let _ = engine.close();
    Ok(out)
}

/// A snapshot's entries are not logged: only its SNAPSHOT_END seals them.
/// FINISH before it, or ENTRIES after it, was answered OK, and a crash
/// then left a shard the engine refused to open, or one missing entries it
/// acknowledged. Both are refused now; the correct order (the control)
/// survives the same crash.
#[test]
fn a_snapshot_finished_without_its_end_is_refused_or_survives_a_crash() {
    let dst = Side::temp("hostile-finish-early", node_options(2), shard_options());
    let keys: [&[u8]; 3] = [b"a", b"b", b"c"];
    let want = Ok(vec![Some(b"one".to_vec()), Some(b"two".to_vec()), Some(b"three".to_vec())]);
    let first = entries_body(&[(b"a", value(3, b"one")), (b"b", value(5, b"two"))]);
    let second = entries_body(&[(b"c", value(4, b"three"))]);
    // Control: START, BEGIN, ENTRIES x2, SNAPSHOT_END, FINISH.
    // Then the two orders a correct source never sends.
    let orders: [(&str, &[u16]); 3] = [
        ("control", &[wire::ENTRIES, wire::ENTRIES, wire::SNAPSHOT_END]),
        ("FINISH without SNAPSHOT_END", &[wire::ENTRIES, wire::ENTRIES]),
        ("ENTRIES after SNAPSHOT_END", &[wire::ENTRIES, wire::SNAPSHOT_END, wire::ENTRIES]),
    ];
    let mut p = RawPeer::connect(dst.node.addr(), 1);
    let mut failures = Vec::new();
    for (i, (what, middle)) in orders.iter().enumerate() {
        let shard = SHARD + i as u32;
        let id = 100 + i as u64;
        dst.transfers.expect(shard, 1);
        ok(&p.call(wire::START, id, 1, &[&shard.to_le_bytes()[..], &[wire::MODE_SNAPSHOT]].concat()), what);
        ok(&p.call(wire::BEGIN, id, 2, &begin_snapshot_body(5)), what);
        let mut step = 3;
        let mut batches = [&first, &second].into_iter();
        let mut refused = None;
        for &ty in middle.iter() {
            let body: &[u8] = if ty == wire::ENTRIES { batches.next().unwrap() } else { &[] };
            let a = p.call(ty, id, step, body);
            step += 1;
            if a.status != KEEL_STATUS_OK {
                refused = Some(a);
                break;
            }
        }
        let fin = match refused {
            Some(a) => a,
            None => p.call(wire::FINISH, id, step, &5u64.to_le_bytes()),
        };
        if fin.status != KEEL_STATUS_OK {
            assert_ne!(i, 0, "the control must finish: {fin:?}");
            assert_eq!(fin.status, KEEL_STATUS_PROTOCOL, "{what}: refused, with PROTOCOL: {fin:?}");
            continue;
        }
        // Every step was answered OK and the shard is released to its
        // host: everything acknowledged must survive a crash now.
        let got = crash_image(dst.dir(), shard, &keys);
        if got != want {
            failures.push(format!("{what}: FINISH answered OK, and a crash then leaves {got:?} (want {want:?})"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A snapshot at u64::MAX - 1 was taken: its one next version, u64::MAX,
/// was then logged by OPS, which wrapped the WAL's next sequence number to
/// 0. Every step was answered OK, yet the engine's close failed and the
/// shard never opened again (CORRUPTION). Such a snapshot is refused now,
/// or whatever was answered OK must close and reopen.
#[test]
fn a_snapshot_just_below_the_last_version_is_refused_or_reopens() {
    let dir = common::TempDir::new("hostile-max");
    let dst = Side::open(dir.path(), node_options(2), shard_options());
    dst.transfers.expect(SHARD, 1);
    let mut p = RawPeer::connect(dst.node.addr(), 1);
    let base = u64::MAX - 1;
    let mut ops = 1u32.to_le_bytes().to_vec();
    wire::put_op(&mut ops, u64::MAX, &Op::Put { key: b"b".to_vec(), value: b"x".to_vec() }.encode());
    let steps: [(u16, Vec<u8>); 6] = [
        (wire::START, start_body(wire::MODE_SNAPSHOT)),
        (wire::BEGIN, begin_snapshot_body(base)),
        (wire::ENTRIES, entries_body(&[(b"a", value(base, b"one"))])),
        (wire::SNAPSHOT_END, Vec::new()),
        (wire::OPS, ops),
        (wire::FINISH, u64::MAX.to_le_bytes().to_vec()),
    ];
    for (i, (ty, body)) in steps.iter().enumerate() {
        let a = p.call(*ty, 9, i as u64 + 1, body);
        if a.status != KEEL_STATUS_OK {
            // Refused: nothing was taken that cannot be kept.
            assert_eq!(a.status, KEEL_STATUS_PROTOCOL, "{a:?}");
            return;
        }
    }
    // Every step answered OK: the shard must close and open again.
    let shard = dst.engine.open_shard(SHARD, false).unwrap();
    assert_eq!(shard.get(b"b").unwrap().map(|e| e.version), Some(u64::MAX));
    drop(shard);
    dst.node.close().unwrap();
    dst.transfers.close();
    let closed = dst.engine.close();
    drop(p);
    drop(dst);
    let engine = keel::engine::Engine::open(dir.path(), shard_options()).unwrap();
    let reopened = engine.open_shard(SHARD, false).map(|s| s.get(b"b").unwrap().map(|e| e.version));
    assert!(
        closed.is_ok() && matches!(reopened, Ok(Some(v)) if v == u64::MAX),
        "every step was acknowledged, yet the engine's close answered {closed:?} and the shard reopens as {:?}",
        reopened.map_err(|e| e.to_string())
    );
}

/// START's method byte and BEGIN's has-crc flag are checked: a START with
/// method 9 was taken as a snapshot, and a has-crc flag of 2 as "no
/// checksum", silently dropping the base checksum a later WAL delta needs.
#[test]
fn unknown_start_methods_and_crc_flags_are_protocol_errors() {
    let dst = Side::temp("hostile-fields", node_options(2), shard_options());
    dst.transfers.expect(SHARD, 1);
    let mut p = RawPeer::connect(dst.node.addr(), 1);
    let start = p.call(wire::START, 31, 1, &start_body(9));
    dst.transfers.expect(SHARD, 1);
    ok(&p.call(wire::START, 32, 1, &start_body(wire::MODE_SNAPSHOT)), "a good START");
    let begin = p.call(wire::BEGIN, 32, 2, &[&[wire::MODE_SNAPSHOT][..], &5u64.to_le_bytes(), &[2], &7u32.to_le_bytes()].concat());
    assert_eq!(
        (start.status, begin.status),
        (KEEL_STATUS_PROTOCOL, KEEL_STATUS_PROTOCOL),
        "START with method 9: {start:?}; BEGIN with has-crc 2: {begin:?}"
    );
}

/// A step of no running transfer, numbered far past what it says was
/// acknowledged, is answered NOT_FOUND and leaves the receiver's
/// `max_in_flight` alone: that counter describes the sources' pipelines,
/// and counting a refused step put the wild gap in it.
#[test]
fn a_refused_step_does_not_count_as_in_flight() {
    let dst = Side::temp("hostile-in-flight", node_options(2), shard_options());
    let mut p = RawPeer::connect(dst.node.addr(), 1);
    let mut step = wire::step(41, 1 << 40, 0);
    step.extend_from_slice(&[0; 4]);
    p.send(wire::OPS, &step);
    let a = p.ack();
    assert_eq!((a.step, a.status), (1 << 40, KEEL_STATUS_NOT_FOUND), "{a:?}");
    let s = dst.transfers.receiver_stats();
    assert_eq!((s.steps, s.max_in_flight), (1, 0), "{s:?}");
}

/// A snapshot two below u64::MAX leaves room for one more version: OPS at
/// u64::MAX - 1 is logged, one at u64::MAX is refused before anything is
/// written (the log's numbers would wrap), and the shard finishes at the
/// version it has, closes and reopens.
#[test]
fn the_last_version_that_fits_is_taken_and_the_next_refused() {
    let dir = common::TempDir::new("hostile-near-max");
    let dst = Side::open(dir.path(), node_options(2), shard_options());
    dst.transfers.expect(SHARD, 1);
    let mut p = RawPeer::connect(dst.node.addr(), 1);
    let base = u64::MAX - 2;
    let ops_at = |version: u64, key: &[u8]| {
        let mut ops = 1u32.to_le_bytes().to_vec();
        wire::put_op(&mut ops, version, &Op::Put { key: key.to_vec(), value: b"x".to_vec() }.encode());
        ops
    };
    ok(&p.call(wire::START, 9, 1, &start_body(wire::MODE_SNAPSHOT)), "START");
    ok(&p.call(wire::BEGIN, 9, 2, &begin_snapshot_body(base)), "BEGIN");
    ok(&p.call(wire::ENTRIES, 9, 3, &entries_body(&[(b"a", value(base, b"one"))])), "ENTRIES");
    ok(&p.call(wire::SNAPSHOT_END, 9, 4, &[]), "SNAPSHOT_END");
    ok(&p.call(wire::OPS, 9, 5, &ops_at(u64::MAX - 1, b"b")), "OPS at u64::MAX - 1");
    let over = p.call(wire::OPS, 9, 6, &ops_at(u64::MAX, b"c"));
    assert_ne!(over.status, KEEL_STATUS_OK, "OPS at u64::MAX: {over:?}");
    drop(p);
    // The refused step ended the reception; a new one finishes it.
    dst.transfers.expect(SHARD, 1);
    let mut p = RawPeer::connect(dst.node.addr(), 1);
    let start = p.call(wire::START, 10, 1, &start_body(wire::MODE_DELTA));
    ok(&start, "START of a WAL delta");
    assert_eq!(start.version, u64::MAX - 1, "{start:?}");
    ok(&p.call(wire::BEGIN, 10, 2, &[&[wire::MODE_DELTA][..], &(u64::MAX - 1).to_le_bytes()].concat()), "BEGIN");
    ok(&p.call(wire::FINISH, 10, 3, &(u64::MAX - 1).to_le_bytes()), "FINISH");
    dst.node.close().unwrap();
    dst.transfers.close();
    dst.engine.close().unwrap();
    drop(p);
    drop(dst);
    let engine = keel::engine::Engine::open(dir.path(), shard_options()).unwrap();
    let shard = engine.open_shard(SHARD, false).unwrap();
    assert_eq!(shard.get(b"b").unwrap().map(|e| e.version), Some(u64::MAX - 1));
    assert!(shard.get(b"c").unwrap().is_none());
    assert_eq!(shard.stats().last_version, u64::MAX - 1);
}

/// A source that STARTs and BEGINs a transfer, then vanishes (no CANCEL),
/// held one of the receiver's places for good: with every place taken,
/// each START from any other peer was BUSY until a restart. A START that
/// finds the places taken now ends the receptions whose source has no
/// connection here, and the shard left behind can still be received.
#[test]
fn a_source_that_vanished_mid_transfer_gives_its_place_up() {
    let dst = Side::temp("hostile-vanish", NodeOptions { max_concurrent_transfers: 1, ..node_options(2) }, shard_options());
    dst.transfers.expect(SHARD, 1);
    dst.transfers.expect(SHARD + 1, 3);
    {
        let mut gone = RawPeer::connect(dst.node.addr(), 1);
        ok(&gone.call(wire::START, 5, 1, &start_body(wire::MODE_SNAPSHOT)), "START");
        ok(&gone.call(wire::BEGIN, 5, 2, &begin_snapshot_body(5)), "BEGIN");
        // The source dies here: its connection ends, no CANCEL comes.
    }
    let guard = std::time::Instant::now() + HANG_GUARD;
    while dst.node.peers().contains(&1) {
        assert!(std::time::Instant::now() < guard, "the node never saw peer 1 go");
        std::thread::sleep(Duration::from_millis(10));
    }
    // While peer 3 is connected, its own reception holds the one place.
    let mut other = RawPeer::connect(dst.node.addr(), 3);
    ok(&other.call(wire::START, 1000, 1, &[&(SHARD + 1).to_le_bytes()[..], &[wire::MODE_SNAPSHOT]].concat()), "peer 3's START");
    let mut back = RawPeer::connect(dst.node.addr(), 1);
    let busy = back.call(wire::START, 6, 1, &start_body(wire::MODE_SNAPSHOT));
    assert_eq!(busy.status, KEEL_STATUS_BUSY, "{busy:?}");
    // Once peer 3 is gone too, peer 1 takes the place and receives its shard.
    drop(other);
    while dst.node.peers().contains(&3) {
        assert!(std::time::Instant::now() < guard, "the node never saw peer 3 go");
        std::thread::sleep(Duration::from_millis(10));
    }
    ok(&back.call(wire::START, 7, 1, &start_body(wire::MODE_SNAPSHOT)), "peer 1's START once back");
    ok(&back.call(wire::BEGIN, 7, 2, &begin_snapshot_body(5)), "BEGIN");
    ok(&back.call(wire::ENTRIES, 7, 3, &entries_body(&[(b"a", value(5, b"one"))])), "ENTRIES");
    ok(&back.call(wire::SNAPSHOT_END, 7, 4, &[]), "SNAPSHOT_END");
    ok(&back.call(wire::FINISH, 7, 5, &5u64.to_le_bytes()), "FINISH");
    let shard = dst.engine.open_shard(SHARD, false).unwrap();
    assert_eq!(shard.get(b"a").unwrap().map(|e| e.version), Some(5));
}

/// A received shard whose record of its snapshot's base (TRANSFER_BASE)
/// is damaged: a WAL delta cannot check its history against it, so the
/// START asks for a snapshot (version 0), which then completes. The START
/// used to fail with CORRUPTION and leave the shard taken with no
/// reception, BUSY to every later START until a restart.
#[test]
fn a_damaged_record_of_the_base_asks_for_a_snapshot() {
    let dst = Side::temp("hostile-base", node_options(2), shard_options());
    dst.transfers.expect(SHARD, 1);
    let mut p = RawPeer::connect(dst.node.addr(), 1);
    let begin = [&[wire::MODE_SNAPSHOT][..], &5u64.to_le_bytes(), &[1], &7u32.to_le_bytes()].concat();
    ok(&p.call(wire::START, 1, 1, &start_body(wire::MODE_SNAPSHOT)), "START");
    ok(&p.call(wire::BEGIN, 1, 2, &begin), "BEGIN");
    ok(&p.call(wire::ENTRIES, 1, 3, &entries_body(&[(b"a", value(5, b"one"))])), "ENTRIES");
    ok(&p.call(wire::SNAPSHOT_END, 1, 4, &[]), "SNAPSHOT_END");
    // The source stops here; the record of the base is then damaged.
    let base = dst.dir().join("shards").join(SHARD.to_string()).join("TRANSFER_BASE");
    assert!(base.exists(), "{} holds the snapshot's base", base.display());
    std::fs::write(&base, b"not a record of the base").unwrap();
    for (id, what) in [(2, "a first START"), (3, "the START after it")] {
        let a = p.call(wire::START, id, 1, &start_body(wire::MODE_DELTA));
        ok(&a, what);
        assert_eq!((a.version, a.crc), (0, None), "{what}: a snapshot is asked for: {a:?}");
    }
    ok(&p.call(wire::BEGIN, 3, 2, &begin), "BEGIN");
    ok(&p.call(wire::ENTRIES, 3, 3, &entries_body(&[(b"a", value(5, b"two"))])), "ENTRIES");
    ok(&p.call(wire::SNAPSHOT_END, 3, 4, &[]), "SNAPSHOT_END");
    ok(&p.call(wire::FINISH, 3, 5, &5u64.to_le_bytes()), "FINISH");
    let shard = dst.engine.open_shard(SHARD, false).unwrap();
    assert_eq!(shard.get(b"a").unwrap().map(|e| e.value), Some(Value::Bytes(b"two".to_vec())));
}

/// Fence buckets from a peer are held to the limit a write here has
/// (MAX_KEY_SIZE): past it, SNAPSHOT_END's replicated state and an OPS
/// state record are refused, not stored in every manifest from then on.
#[test]
fn a_fence_bucket_longer_than_a_key_is_refused() {
    let long = vec![b'b'; keel::shard::MAX_KEY_SIZE + 1];
    let dst = Side::temp("hostile-bucket", node_options(2), shard_options());
    let mut p = RawPeer::connect(dst.node.addr(), 1);
    // SNAPSHOT_END: [u64 applied index][u32 buckets][u32 length][bucket][u64 token].
    let state = |bucket: &[u8]| [&9u64.to_le_bytes()[..], &1u32.to_le_bytes(), &(bucket.len() as u32).to_le_bytes(), bucket, &3u64.to_le_bytes()].concat();
    dst.transfers.expect(SHARD, 1);
    ok(&p.call(wire::START, 1, 1, &start_body(wire::MODE_SNAPSHOT)), "START");
    ok(&p.call(wire::BEGIN, 1, 2, &begin_snapshot_body(5)), "BEGIN");
    let end = p.call(wire::SNAPSHOT_END, 1, 3, &state(&long));
    assert_eq!(end.status, KEEL_STATUS_PROTOCOL, "{end:?}");
    // A state record of a fenced write: [u8 4][u8 flags: 2 = fence][u32 length][bucket][u64 token].
    let record = |bucket: &[u8]| [&[4u8, 2][..], &(bucket.len() as u32).to_le_bytes(), bucket, &3u64.to_le_bytes()].concat();
    let ops = |bucket: &[u8]| {
        let mut ops = 1u32.to_le_bytes().to_vec();
        wire::put_op(&mut ops, 6, &record(bucket));
        ops
    };
    ok(&p.call(wire::START, 2, 1, &start_body(wire::MODE_SNAPSHOT)), "START");
    // With the source's checksum of its base record: the WAL delta below
    // builds on the snapshot, and START must show that record for it.
    let begin = [&[wire::MODE_SNAPSHOT][..], &5u64.to_le_bytes(), &[1], &7u32.to_le_bytes()].concat();
    ok(&p.call(wire::BEGIN, 2, 2, &begin), "BEGIN");
    ok(&p.call(wire::SNAPSHOT_END, 2, 3, &state(b"b")), "SNAPSHOT_END");
    let refused = p.call(wire::OPS, 2, 4, &ops(&long));
    assert_eq!(refused.status, KEEL_STATUS_PROTOCOL, "{refused:?}");
    // The same with a bucket of a key's length is taken.
    ok(&p.call(wire::START, 3, 1, &start_body(wire::MODE_DELTA)), "START");
    ok(&p.call(wire::BEGIN, 3, 2, &[&[wire::MODE_DELTA][..], &5u64.to_le_bytes()].concat()), "BEGIN");
    ok(&p.call(wire::OPS, 3, 3, &ops(&long[1..])), "OPS");
    ok(&p.call(wire::FINISH, 3, 4, &6u64.to_le_bytes()), "FINISH");
    let shard = dst.engine.open_shard(SHARD, false).unwrap();
    assert_eq!(shard.fence_highest(&long[1..]), Some(3));
}

/// A snapshot cancelled before its SNAPSHOT_END leaves a shard that holds
/// only some of its entries, yet says it is at the snapshot's version. A
/// START of a WAL delta then answered that version (with no record of it
/// to show), and a source that skipped the history check finished the
/// shard there: with BEGIN, or with FINISH straight after START. The host
/// got a shard missing entries, no longer marked incoming. A WAL delta now
/// begins only with BEGIN, and only from a version whose record START
/// showed; until a snapshot completes the shard stays BUSY, and one does.
#[test]
fn a_wal_delta_cannot_finish_the_remains_of_a_snapshot() {
    let dst = Side::temp("hostile-remains", node_options(2), Options { seal_bytes: 4096, ..shard_options() });
    dst.transfers.expect(SHARD, 1);
    let mut p = RawPeer::connect(dst.node.addr(), 1);
    let big = vec![7u8; 3000];
    let begin = [&[wire::MODE_SNAPSHOT][..], &5u64.to_le_bytes(), &[1], &0x1234u32.to_le_bytes()].concat();
    ok(&p.call(wire::START, 1, 1, &start_body(wire::MODE_SNAPSHOT)), "START");
    ok(&p.call(wire::BEGIN, 1, 2, &begin), "BEGIN");
    // Past seal_bytes: the first batch is sealed into a table at once.
    ok(&p.call(wire::ENTRIES, 1, 3, &entries_body(&[(b"a", value(3, &big)), (b"b", value(4, &big))])), "ENTRIES");
    ok(&p.call(wire::ENTRIES, 1, 4, &entries_body(&[(b"c", value(5, &big))])), "ENTRIES");
    // The source gives up before SNAPSHOT_END.
    p.send_step(wire::CANCEL, 1, 0, &[]);
    let delta_begin = [&[wire::MODE_DELTA][..], &5u64.to_le_bytes()].concat();
    type Steps<'a> = &'a [(u16, &'a [u8])];
    let attempts: [(&str, Steps); 2] = [
        ("BEGIN of a delta, then FINISH", &[(wire::BEGIN, &delta_begin), (wire::FINISH, &5u64.to_le_bytes())]),
        ("FINISH without BEGIN", &[(wire::FINISH, &5u64.to_le_bytes())]),
    ];
    for (i, (what, steps)) in attempts.iter().enumerate() {
        let id = 10 + i as u64;
        let start = p.call(wire::START, id, 1, &start_body(wire::MODE_DELTA));
        ok(&start, what);
        assert_eq!(start.crc, None, "{what}: no record of version {} to show: {start:?}", start.version);
        let mut refused = None;
        for (n, (ty, body)) in steps.iter().enumerate() {
            let a = p.call(*ty, id, n as u64 + 2, body);
            if a.status != KEEL_STATUS_OK {
                refused = Some(a);
                break;
            }
        }
        let refused = refused.unwrap_or_else(|| {
            let shard = dst.engine.open_shard(SHARD, false).unwrap();
            let got: Vec<_> = [b"a", b"b", b"c"].iter().map(|k| shard.get(*k).unwrap().map(|e| e.version)).collect();
            panic!("{what}: the remains of a snapshot were finished and handed to the host, holding {got:?}")
        });
        assert_eq!(refused.status, KEEL_STATUS_PROTOCOL, "{what}: {refused:?}");
        let busy = dst.engine.open_shard(SHARD, false).map(drop).unwrap_err();
        assert_eq!(busy.status, KEEL_STATUS_BUSY, "{what}: the shard stays incoming: {busy}");
    }
    // A snapshot then completes in its place.
    ok(&p.call(wire::START, 20, 1, &start_body(wire::MODE_SNAPSHOT)), "START");
    ok(&p.call(wire::BEGIN, 20, 2, &begin), "BEGIN");
    ok(&p.call(wire::ENTRIES, 20, 3, &entries_body(&[(b"a", value(3, b"one")), (b"c", value(5, b"three"))])), "ENTRIES");
    ok(&p.call(wire::SNAPSHOT_END, 20, 4, &[]), "SNAPSHOT_END");
    ok(&p.call(wire::FINISH, 20, 5, &5u64.to_le_bytes()), "FINISH");
    let shard = dst.engine.open_shard(SHARD, false).unwrap();
    let got: Vec<_> = [b"a", b"b", b"c"].iter().map(|k| shard.get(*k).unwrap().map(|e| e.value)).collect();
    assert_eq!(got, [Some(Value::Bytes(b"one".to_vec())), None, Some(Value::Bytes(b"three".to_vec()))]);
}

/// The records of one OPS batch carry versions that follow one another.
/// A batch whose second record repeated the last version a log can number
/// (u64::MAX, u64::MAX) overflowed the shard's gap check: in a debug build
/// the step thread panicked and the step was never answered. Such a batch
/// is refused now, before the shard sees it, and the shard goes on.
#[test]
fn ops_whose_versions_do_not_follow_one_another_are_refused() {
    let dst = Side::temp("hostile-ops-order", node_options(2), shard_options());
    dst.transfers.expect(SHARD, 1);
    let mut p = RawPeer::connect(dst.node.addr(), 1);
    let put = |key: &[u8]| Op::Put { key: key.to_vec(), value: b"x".to_vec() }.encode();
    let batch = |versions: &[u64]| {
        let mut ops = (versions.len() as u32).to_le_bytes().to_vec();
        for v in versions {
            wire::put_op(&mut ops, *v, &put(b"c"));
        }
        ops
    };
    let base = u64::MAX - 2;
    let begin = [&[wire::MODE_SNAPSHOT][..], &base.to_le_bytes(), &[1], &7u32.to_le_bytes()].concat();
    ok(&p.call(wire::START, 9, 1, &start_body(wire::MODE_SNAPSHOT)), "START");
    ok(&p.call(wire::BEGIN, 9, 2, &begin), "BEGIN");
    ok(&p.call(wire::SNAPSHOT_END, 9, 3, &[]), "SNAPSHOT_END");
    ok(&p.call(wire::OPS, 9, 4, &batch(&[u64::MAX - 1])), "OPS at u64::MAX - 1");
    let refused = p.call(wire::OPS, 9, 5, &batch(&[u64::MAX, u64::MAX]));
    assert_eq!(refused.status, KEEL_STATUS_PROTOCOL, "{refused:?}");
    // The shard took nothing of it and finishes where it was.
    dst.transfers.expect(SHARD, 1);
    let start = p.call(wire::START, 10, 1, &start_body(wire::MODE_DELTA));
    ok(&start, "START of a WAL delta");
    assert_eq!(start.version, u64::MAX - 1, "{start:?}");
    ok(&p.call(wire::BEGIN, 10, 2, &[&[wire::MODE_DELTA][..], &(u64::MAX - 1).to_le_bytes()].concat()), "BEGIN");
    ok(&p.call(wire::FINISH, 10, 3, &(u64::MAX - 1).to_le_bytes()), "FINISH");
    let shard = dst.engine.open_shard(SHARD, false).unwrap();
    assert_eq!(shard.get(b"c").unwrap().map(|e| e.version), Some(u64::MAX - 1));
}

/// A source that drops its connection after any step, without a CANCEL,
/// and comes back on a new connection: until a transfer finishes, the
/// host cannot open the shard (it is not left half-received and usable),
/// and a fresh snapshot then replaces whatever the abandoned reception
/// left: the shard holds exactly what the finished transfer sent.
#[test]
fn a_source_that_drops_after_any_step_can_start_over() {
    let dst = Side::temp("hostile-drop", node_options(2), Options { seal_bytes: 4096, ..shard_options() });
    let big = vec![3u8; 3000];
    let mut ops = 1u32.to_le_bytes().to_vec();
    wire::put_op(&mut ops, 6, &Op::Put { key: b"z".to_vec(), value: b"op".to_vec() }.encode());
    let entries = entries_body(&[(b"a", value(3, &big)), (b"b", value(5, &big))]);
    let begin = [&[wire::MODE_SNAPSHOT][..], &5u64.to_le_bytes(), &[1], &9u32.to_le_bytes()].concat();
    let steps: [(u16, &[u8]); 6] = [
        (wire::START, &start_body(wire::MODE_SNAPSHOT)),
        (wire::BEGIN, &begin),
        (wire::PART, &entries[..10]),
        (wire::ENTRIES, &entries[10..]),
        (wire::SNAPSHOT_END, &[]),
        (wire::OPS, &ops),
    ];
    for cut in 1..=steps.len() {
        dst.transfers.expect(SHARD, 1);
        let id = 100 * cut as u64;
        {
            let mut p = RawPeer::connect(dst.node.addr(), 1);
            for (n, (ty, body)) in steps[..cut].iter().enumerate() {
                ok(&p.call(*ty, id, n as u64 + 1, body), &format!("step {} of the attempt cut after {cut}", n + 1));
            }
        }
        match dst.engine.open_shard(SHARD, false) {
            Err(e) if e.status == KEEL_STATUS_BUSY => {}
            // Only a START has been taken: nothing was received yet.
            Err(e) if e.status == KEEL_STATUS_NOT_FOUND && cut == 1 => {}
            other => panic!("cut after step {cut}: the host opens the shard: {:?}", other.map(drop)),
        }
        // The same source, back on a new connection, sends it all again.
        let mut p = RawPeer::connect(dst.node.addr(), 1);
        let id = id + 1;
        for (n, (ty, body)) in steps.iter().enumerate() {
            ok(&p.call(*ty, id, n as u64 + 1, body), &format!("step {} of the retry after a cut after {cut}", n + 1));
        }
        ok(&p.call(wire::FINISH, id, steps.len() as u64 + 1, &6u64.to_le_bytes()), "FINISH");
        let shard = dst.engine.open_shard(SHARD, false).unwrap();
        let got: Vec<_> = [&b"a"[..], b"b", b"z"].iter().map(|k| shard.get(k).unwrap().map(|e| e.version)).collect();
        assert_eq!(got, [Some(3), Some(5), Some(6)], "cut after step {cut}");
        assert_eq!(shard.stats().last_version, 6, "cut after step {cut}");
        shard.close().unwrap();
        drop(p);
    }
}

/// A step sent again under its number is a copy only with the same bytes.
/// With other bytes it was answered PROTOCOL, yet the reception went on:
/// the next step was taken, and the shard stayed held for the source that
/// had sent two different steps under one number. Any failure ends the
/// reception now: the next step finds it over, and the host can drop the
/// shard it left incoming.
#[test]
fn a_step_resent_with_other_bytes_ends_the_reception() {
    let dst = Side::temp("hostile-resent", node_options(2), shard_options());
    dst.transfers.expect(SHARD, 1);
    let mut p = RawPeer::connect(dst.node.addr(), 1);
    ok(&p.call(wire::START, 4, 1, &start_body(wire::MODE_SNAPSHOT)), "START");
    ok(&p.call(wire::BEGIN, 4, 2, &begin_snapshot_body(5)), "BEGIN");
    ok(&p.call(wire::ENTRIES, 4, 3, &entries_body(&[(b"a", value(3, b"one"))])), "ENTRIES");
    ok(&p.call(wire::ENTRIES, 4, 3, &entries_body(&[(b"a", value(3, b"one"))])), "the same ENTRIES again");
    let other = p.call(wire::ENTRIES, 4, 3, &entries_body(&[(b"a", value(3, b"two"))]));
    assert_eq!(other.status, KEEL_STATUS_PROTOCOL, "{other:?}");
    let next = p.call(wire::SNAPSHOT_END, 4, 4, &[]);
    assert_eq!(next.status, KEEL_STATUS_NOT_FOUND, "the reception has ended: {next:?}");
    let s = dst.transfers.receiver_stats();
    assert_eq!((s.resent_steps, s.finished), (2, 0), "{s:?}");
    dst.engine.drop_shard(SHARD).unwrap();
}

/// Waits (up to the hang guard) until `done` holds.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let guard = std::time::Instant::now() + HANG_GUARD;
    while !done() {
        assert!(std::time::Instant::now() < guard, "hang guard: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A source whose connection ended mid-transfer (it crashed, or its link
/// went) and that did not come back kept its reception until another
/// START happened to need the place: the reception held its place, its
/// PART buffer and the shard, which the host could not drop (BUSY). Once
/// the source has had no connection here for the node's silence limit
/// (`heartbeat_interval` x `heartbeat_misses`), its reception ends now:
/// the shard stays incoming, and the host may drop it.
#[test]
fn a_source_whose_connection_ended_lets_its_reception_go() {
    let opts = NodeOptions { heartbeat_interval: Duration::from_millis(50), heartbeat_misses: 4, ..node_options(2) };
    let dst = Side::temp("hostile-gone", opts, shard_options());
    dst.transfers.expect(SHARD, 1);
    let entries = entries_body(&[(b"a", value(3, &[1; 3000]))]);
    {
        let mut gone = RawPeer::connect(dst.node.addr(), 1);
        ok(&gone.call(wire::START, 5, 1, &start_body(wire::MODE_SNAPSHOT)), "START");
        ok(&gone.call(wire::BEGIN, 5, 2, &begin_snapshot_body(5)), "BEGIN");
        ok(&gone.call(wire::PART, 5, 3, &entries[..1000]), "PART");
        ok(&gone.call(wire::PART, 5, 4, &entries[1000..2000]), "PART");
        assert_eq!(dst.transfers.receiver_stats().receiving, 1);
        // The source dies here: its connection ends, no CANCEL comes.
    }
    wait_for("the node sees peer 1 go", || !dst.node.is_ready(1));
    // Counted once the reception's shard is closed, so the drop below
    // cannot find its id still busy.
    wait_for("the reception ends", || dst.transfers.receiver_stats().sources_gone == 1);
    let s = dst.transfers.receiver_stats();
    assert_eq!((s.receiving, s.finished, s.parts), (0, 0, 2), "{s:?}");
    let busy = dst.engine.open_shard(SHARD, false).map(drop).unwrap_err();
    assert_eq!(busy.status, KEEL_STATUS_BUSY, "the shard stays incoming: {busy}");
    dst.engine.drop_shard(SHARD).unwrap();
}

/// A source whose connection broke and that dials again within the
/// silence limit goes on where it was, as its retries do: the copy of its
/// last step is answered from memory, and the batch split across PART
/// pieces before the break is assembled whole.
#[test]
fn a_source_back_within_the_silence_limit_goes_on() {
    let dst = Side::temp("hostile-back", node_options(2), shard_options());
    dst.transfers.expect(SHARD, 1);
    let entries = entries_body(&[(b"a", value(3, &[1; 3000])), (b"b", value(5, b"bee"))]);
    {
        let mut p = RawPeer::connect(dst.node.addr(), 1);
        ok(&p.call(wire::START, 5, 1, &start_body(wire::MODE_SNAPSHOT)), "START");
        ok(&p.call(wire::BEGIN, 5, 2, &begin_snapshot_body(5)), "BEGIN");
        ok(&p.call(wire::PART, 5, 3, &entries[..1000]), "PART");
    }
    wait_for("the node sees peer 1 go", || !dst.node.is_ready(1));
    let mut p = RawPeer::connect(dst.node.addr(), 1);
    ok(&p.call(wire::PART, 5, 3, &entries[..1000]), "the PART again, on the new connection");
    ok(&p.call(wire::ENTRIES, 5, 4, &entries[1000..]), "the batch's last piece");
    ok(&p.call(wire::SNAPSHOT_END, 5, 5, &[]), "SNAPSHOT_END");
    ok(&p.call(wire::FINISH, 5, 6, &5u64.to_le_bytes()), "FINISH");
    let s = dst.transfers.receiver_stats();
    assert_eq!((s.resent_steps, s.sources_gone, s.receiving), (1, 0, 0), "{s:?}");
    let shard = dst.engine.open_shard(SHARD, false).unwrap();
    assert_eq!(shard.get(b"b").unwrap().map(|e| e.version), Some(5));
}

/// An OPS record is the source's WAL record, carried in a frame: one
/// that does not decode is a malformed frame, like a count its bytes
/// cannot hold. It was answered CORRUPTION, which tells the source's host
/// that data is damaged on a disk when only a frame was wrong. It is
/// PROTOCOL now, and the shard takes nothing of it.
#[test]
fn an_ops_record_that_does_not_decode_is_a_protocol_error() {
    let dst = Side::temp("hostile-ops-garbage", node_options(2), shard_options());
    dst.transfers.expect(SHARD, 1);
    let mut p = RawPeer::connect(dst.node.addr(), 1);
    ok(&p.call(wire::START, 9, 1, &start_body(wire::MODE_SNAPSHOT)), "START");
    ok(&p.call(wire::BEGIN, 9, 2, &begin_snapshot_body(5)), "BEGIN");
    ok(&p.call(wire::SNAPSHOT_END, 9, 3, &[]), "SNAPSHOT_END");
    let mut garbage = 1u32.to_le_bytes().to_vec();
    wire::put_op(&mut garbage, 6, &[0xEE, 1, 2, 3]);
    let refused = p.call(wire::OPS, 9, 4, &garbage);
    assert_eq!(refused.status, KEEL_STATUS_PROTOCOL, "{refused:?}");
    // A snapshot again, finished: the shard holds none of it.
    let put = Op::Put { key: b"k".to_vec(), value: b"v".to_vec() }.encode();
    let mut ops = 1u32.to_le_bytes().to_vec();
    wire::put_op(&mut ops, 6, &put);
    ok(&p.call(wire::START, 10, 1, &start_body(wire::MODE_SNAPSHOT)), "START again");
    ok(&p.call(wire::BEGIN, 10, 2, &begin_snapshot_body(5)), "BEGIN again");
    ok(&p.call(wire::SNAPSHOT_END, 10, 3, &[]), "SNAPSHOT_END again");
    ok(&p.call(wire::OPS, 10, 4, &ops), "OPS");
    ok(&p.call(wire::FINISH, 10, 5, &6u64.to_le_bytes()), "FINISH");
    let shard = dst.engine.open_shard(SHARD, false).unwrap();
    assert_eq!(shard.get(b"k").unwrap().map(|e| e.version), Some(6));
}

/// A late copy of a finished transfer's START (its first step, older than
/// the FINISH the receiver answered) is a step the source moved on from:
/// dropped unanswered, like any stale step. It opened a new reception
/// under the old id instead once the host announced the shard again: a
/// WAL delta's START took the finished shard back as incoming (the host's
/// open answered BUSY), for a reception no source would ever drive.
#[test]
fn a_late_start_of_a_finished_transfer_is_stale() {
    let dst = Side::temp("hostile-late-start", node_options(2), shard_options());
    dst.transfers.expect(SHARD, 1);
    let mut p = RawPeer::connect(dst.node.addr(), 1);
    ok(&p.call(wire::START, 9, 1, &start_body(wire::MODE_SNAPSHOT)), "START");
    ok(&p.call(wire::BEGIN, 9, 2, &begin_snapshot_body(5)), "BEGIN");
    ok(&p.call(wire::SNAPSHOT_END, 9, 3, &[]), "SNAPSHOT_END");
    ok(&p.call(wire::FINISH, 9, 4, &5u64.to_le_bytes()), "FINISH");
    // The host announces the shard again (a later transfer may come).
    dst.transfers.expect(SHARD, 1);
    let stale = dst.transfers.receiver_stats().stale_steps;
    p.send_step(wire::START, 9, 1, &start_body(wire::MODE_DELTA));
    // The next answer is the FINISH copy's: the START got none.
    ok(&p.call(wire::FINISH, 9, 4, &5u64.to_le_bytes()), "a copy of FINISH");
    let s = dst.transfers.receiver_stats();
    assert_eq!((s.stale_steps, s.receiving), (stale + 1, 0), "{s:?}");
    let shard = dst.engine.open_shard(SHARD, false).expect("the finished shard is the host's");
    assert_eq!(shard.last_version(), 5);
}

/// An ACK carries the receiver's error message, which may quote what the
/// source sent (here a 4000-byte key, escaped): with the smallest frame
/// a node allows (4 KiB), the ACK no longer fit a frame, was never sent,
/// and the source could only time out and retry into the same silence,
/// failing with TIMEOUT instead of the receiver's PROTOCOL. The message
/// is cut to fit now (a source keeps only its first 4 KiB anyway).
#[test]
fn a_refusal_with_a_long_message_is_still_answered_in_a_small_frame() {
    let dst = Side::temp("hostile-long-refusal", NodeOptions { max_frame_bytes: 4096, ..node_options(2) }, shard_options());
    dst.transfers.expect(SHARD, 1);
    let mut p = RawPeer::connect(dst.node.addr(), 1);
    let key = vec![1u8; 4000];
    ok(&p.call(wire::START, 9, 1, &start_body(wire::MODE_SNAPSHOT)), "START");
    ok(&p.call(wire::BEGIN, 9, 2, &begin_snapshot_body(5)), "BEGIN");
    ok(&p.call(wire::ENTRIES, 9, 3, &entries_body(&[(&key, value(1, b"a"))])), "ENTRIES");
    // The same key at another version: refused when it is installed, and
    // the refusal (quoting the key, cut) answers the next step.
    ok(&p.call(wire::ENTRIES, 9, 4, &entries_body(&[(&key, value(2, b"b"))])), "ENTRIES again");
    // A step after it is answered in any case (the reception is over):
    // the first answer read is SNAPSHOT_END's, not this one's.
    p.send_step(wire::SNAPSHOT_END, 9, 5, &[]);
    p.send_step(wire::FINISH, 9, 6, &5u64.to_le_bytes());
    let refused = p.ack();
    assert_eq!((refused.step, refused.status), (5, KEEL_STATUS_PROTOCOL), "{}", refused.message);
    assert!(refused.message.starts_with("snapshot entry"), "{}", refused.message);
    assert_eq!(p.ack().status, KEEL_STATUS_NOT_FOUND);
}

/// A file system that, once `armed`, parks the first call on shard
/// SHARD's files (its close, in these tests): `parked` says it is there,
/// `release` lets it go on.
struct ParkedClose {
    fs: std::sync::Arc<common::hookfs::HookFs>,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    parked: crossbeam_channel::Receiver<()>,
    release: crossbeam_channel::Sender<()>,
}

impl ParkedClose {
    fn new() -> ParkedClose {
        let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (parked_tx, parked) = crossbeam_channel::bounded::<()>(1);
        let (release, release_rx) = crossbeam_channel::bounded::<()>(1);
        let a = armed.clone();
        let fs = common::hookfs::HookFs::new(move |_, path| {
            if path.to_string_lossy().contains(&format!("/shards/{SHARD}/")) && a.swap(false, Ordering::AcqRel) {
                let _ = parked_tx.send(());
                let _ = release_rx.recv();
            }
            Ok(())
        });
        ParkedClose { fs, armed, parked, release }
    }
}

/// A START that needs the place of a source with no connection here ends
/// that source's reception: counted in `sources_gone`, like the end the
/// silence limit brings, only once its shard is closed, so a host that
/// sees the count and drops the shard does not find its id still busy.
/// It was counted before the close, which is parked here on the shard's
/// first file call: the host saw the count while the id was busy.
#[test]
fn a_reception_ended_for_a_start_is_counted_once_its_shard_is_closed() {
    let ParkedClose { fs, armed, parked, release } = ParkedClose::new();
    // A silence limit far past the test: only the START ends the reception.
    let opts = NodeOptions { max_concurrent_transfers: 1, heartbeat_misses: 1000, ..node_options(2) };
    let dst = Side::temp_on("hostile-gone-count", opts, shard_options(), fs);
    dst.transfers.expect(SHARD, 1);
    dst.transfers.expect(SHARD + 1, 3);
    {
        let mut gone = RawPeer::connect(dst.node.addr(), 1);
        ok(&gone.call(wire::START, 5, 1, &start_body(wire::MODE_SNAPSHOT)), "START");
        ok(&gone.call(wire::BEGIN, 5, 2, &begin_snapshot_body(5)), "BEGIN");
    }
    wait_for("the node sees peer 1 go", || !dst.node.is_ready(1));
    armed.store(true, Ordering::Release);
    let addr = dst.node.addr();
    let other = std::thread::spawn(move || {
        let mut p = RawPeer::connect(addr, 3);
        p.call(wire::START, 1000, 1, &[&(SHARD + 1).to_le_bytes()[..], &[wire::MODE_SNAPSHOT]].concat())
    });
    parked.recv_timeout(HANG_GUARD).expect("hang guard: the shard's close never reached its files");
    let during = dst.transfers.receiver_stats();
    release.send(()).unwrap();
    ok(&other.join().unwrap(), "peer 3's START");
    assert_eq!(during.sources_gone, 0, "counted while the shard was still closing");
    assert_eq!(during.receiving, 1, "the reception's shard is still closing");
    assert_eq!(dst.transfers.receiver_stats().sources_gone, 1);
    dst.engine.drop_shard(SHARD).unwrap();
}

/// A reception the source cancels leaves the table before its shard is
/// closed; `receiving` fell right then, so a host that waited for it to
/// reach 0 before dropping or opening the shard found its id still busy.
/// It falls once the shard is closed now: the close is parked here on the
/// shard's first file call.
#[test]
fn receiving_counts_a_cancelled_reception_until_its_shard_is_closed() {
    let ParkedClose { fs, armed, parked, release } = ParkedClose::new();
    let dst = Side::temp_on("hostile-cancel-count", node_options(2), shard_options(), fs);
    dst.transfers.expect(SHARD, 1);
    let mut p = RawPeer::connect(dst.node.addr(), 1);
    ok(&p.call(wire::START, 5, 1, &start_body(wire::MODE_SNAPSHOT)), "START");
    ok(&p.call(wire::BEGIN, 5, 2, &begin_snapshot_body(5)), "BEGIN");
    armed.store(true, Ordering::Release);
    p.send_step(wire::CANCEL, 5, 0, &[]);
    parked.recv_timeout(HANG_GUARD).expect("hang guard: the shard's close never reached its files");
    let during = dst.transfers.receiver_stats().receiving;
    release.send(()).unwrap();
    assert_eq!(during, 1, "the cancelled reception's shard is still closing");
    wait_for("the shard is closed", || dst.transfers.receiver_stats().receiving == 0);
    let busy = dst.engine.open_shard(SHARD, false).map(drop).unwrap_err();
    assert_eq!(busy.status, KEEL_STATUS_BUSY, "the shard stays incoming: {busy}");
    dst.engine.drop_shard(SHARD).unwrap();
}
