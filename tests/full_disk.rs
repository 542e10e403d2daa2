//! A real full disk. The fault suites (`tests/wal_faults.rs`,
//! `tests/shard_faults.rs`) fail chosen operations through a fake file
//! system; here ext4 itself runs out of blocks, on a small image mounted
//! on a loop device (tests/common/ext4.rs), filled by a file beside the
//! WAL, shard or engine. So every path that meets it (segment creation and
//! growth, table writes, the manifest, the commit log and its checkpoints,
//! a transfer's receiver) gets the kernel's own ENOSPC, wherever it comes.
//! What must hold: each failed call says NO_SPACE (never IO, POISONED or
//! a panic) and consumes no sequence number or version; nothing
//! acknowledged is lost or changed, before and after a reopen; once the
//! filler is removed, writes and flushes succeed again without a reopen.
//!
//! Making and mounting the image needs root, `mkfs.ext4` and a loop
//! device; without them each test says so and passes without running.

mod common;

use common::ext4::Ext4Image;
use common::rng::Rng;
use common::side::Side;
use keel::engine::Engine;
use keel::node::NodeOptions;
use keel::shard::{self, Shard, Value};
use keel::status::*;
use keel::transfer::{shard_digest, Method, TransferOptions};
use keel::wal::{Durability, ReadUpto, Wal};
use std::collections::BTreeMap;

/// After this many failures in a row the disk is taken to stay full.
const FAILURES_IN_A_ROW: usize = 100;
/// Puts a shard test makes at the most.
const MAX_PUTS: u64 = 50_000;

/// Counts the failures of a run and checks that each is NO_SPACE.
#[derive(Default)]
struct Failures {
    total: usize,
    in_a_row: usize,
}

impl Failures {
    fn ok(&mut self) {
        self.in_a_row = 0;
    }
    fn failed(&mut self, what: &str, e: &keel::Error) {
        assert_eq!(e.status, KEEL_STATUS_NO_SPACE, "{what} failed with another status than NO_SPACE: {e}");
        self.total += 1;
        self.in_a_row += 1;
    }
    fn disk_stays_full(&self) -> bool {
        self.in_a_row >= FAILURES_IN_A_ROW
    }
}

fn read_all(wal: &Wal) -> Vec<(u64, Vec<u8>)> {
    let mut r = wal.reader(0, ReadUpto::Appended).unwrap();
    std::iter::from_fn(|| r.next_record().unwrap()).collect()
}

#[test]
fn wal_appends_fail_with_no_space_and_go_on_once_space_is_back() {
    let Some(disk) = Ext4Image::mount("wal", 16) else { return };
    let dir = disk.at.join("wal");
    let opts = keel::wal::Options { durability: Durability::Sync, ..keel::wal::Options::default() };
    let wal = Wal::open(&dir, opts.clone()).unwrap();
    let filler = disk.fill(1 << 20);
    let mut acked = Vec::new();
    let mut failures = Failures::default();
    for i in 0u64.. {
        // Record sizes from 100 B to past a starting segment (64 KiB).
        let payload = vec![i as u8; 100 + (i as usize * 7919) % (80 << 10)];
        match wal.append(&payload) {
            Ok(seq) => {
                failures.ok();
                assert_eq!(seq, acked.len() as u64 + 1, "sequence numbers stay dense across failed appends");
                acked.push((seq, payload));
            }
            Err(e) => failures.failed("append", &e),
        }
        if failures.disk_stays_full() {
            break;
        }
    }
    assert!(failures.total >= FAILURES_IN_A_ROW && !acked.is_empty(), "the disk filled after some appends");
    assert_eq!(read_all(&wal), acked, "the log holds what was acknowledged, before space is back");

    std::fs::remove_file(&filler).unwrap();
    let more = vec![7u8; 100 << 10];
    let seq = wal.append(&more).expect("space is back: the log goes on without a reopen");
    assert_eq!(seq, acked.len() as u64 + 1);
    acked.push((seq, more));
    wal.close().unwrap();
    let wal = Wal::open(&dir, opts).unwrap();
    assert_eq!(read_all(&wal), acked, "after reopen");
}

/// Shard options of these tests: flushes only when asked (or due).
fn options(durability: Durability) -> shard::Options {
    shard::Options { durability, flush_interval: None, ..shard::Options::default() }
}

/// What a shard should hold: each key's last acknowledged value.
type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Puts random keys into `shards` (each a shard, a model of it and its
/// last version) until the disk stays full, flushing every 100 operations.
fn put_until_full(shards: &mut [(&Shard, Model, u64)], seed: u64) {
    let mut rng = Rng::new(seed);
    let mut failures = Failures::default();
    // Bounded, should flushes and merges keep freeing a little room: the
    // checks hold wherever the loop stops, once some put has failed.
    for i in 0..MAX_PUTS {
        let (shard, model, last) = &mut shards[rng.below(shards.len() as u64) as usize];
        let key = format!("key-{:05}", rng.below(4000)).into_bytes();
        let value = vec![i as u8; 200 + rng.below(1800) as usize];
        match shard.put(&key, &value) {
            Ok(v) => {
                failures.ok();
                assert_eq!(v, *last + 1, "versions stay dense across failed puts");
                *last = v;
                model.insert(key, value);
            }
            Err(e) => failures.failed("put", &e),
        }
        if i % 100 == 99 {
            // A flush may fail too (table writes, the manifest), without
            // counting towards the disk staying full.
            if let Err(e) = shard.flush(true) {
                assert_eq!(e.status, KEEL_STATUS_NO_SPACE, "flush failed with another status than NO_SPACE: {e}");
            }
        }
        if failures.disk_stays_full() {
            break;
        }
    }
    assert!(failures.total > 0, "the disk never filled");
    assert!(shards.iter().any(|s| s.2 > 0), "the disk filled before any put");
}

fn assert_holds(shard: &Shard, model: &Model, when: &str) {
    let got: BTreeMap<Vec<u8>, Value> = shard.scan(b"", None).unwrap().map(|r| r.map(|(k, e)| (k, e.value))).collect::<keel::Result<_>>().unwrap();
    let want: BTreeMap<Vec<u8>, Value> = model.iter().map(|(k, v)| (k.clone(), Value::Bytes(v.clone()))).collect();
    assert!(got == want, "{when}: the shard holds {} keys, the model {}; first difference at {:?}", got.len(), want.len(),
        got.iter().zip(&want).find(|(a, b)| a != b).map(|(a, _)| String::from_utf8_lossy(a.0).into_owned()));
}

/// Space back: a put and a flush succeed on the open shard, and no
/// background error remains.
fn goes_on(shard: &Shard, model: &mut Model, last: &mut u64) {
    let v = shard.put(b"after", b"space is back").expect("a put once space is back");
    assert_eq!(v, *last + 1);
    *last = v;
    model.insert(b"after".to_vec(), b"space is back".to_vec());
    assert_eq!(shard.flush(true).expect("a flush once space is back"), v, "the flush persists everything");
    // A second flush's pass runs once the first one's seal and merges are
    // done, so a seal or merge that failed has been retried too.
    shard.flush(true).unwrap();
    assert!(shard.background_error().is_none(), "{:?}", shard.background_error());
}

fn shard_on_a_full_disk(tag: &str, durability: Durability) {
    let Some(disk) = Ext4Image::mount(tag, 24) else { return };
    let dir = disk.at.join("shard");
    let opts = options(durability);
    let s = Shard::open(&dir, opts.clone()).unwrap();
    let filler = disk.fill(2 << 20);
    let mut shards = [(&s, BTreeMap::new(), 0)];
    put_until_full(&mut shards, 11);
    let [(_, mut model, mut last)] = shards;
    assert_holds(&s, &model, "before space is back");

    std::fs::remove_file(&filler).unwrap();
    goes_on(&s, &mut model, &mut last);
    s.close().unwrap();
    let s = Shard::open(&dir, opts).unwrap();
    assert_holds(&s, &model, "after reopen");
    assert_eq!(s.last_version(), last);
    s.close().unwrap();
}

#[test]
fn a_sync_shard_on_a_full_disk_loses_nothing_and_goes_on() {
    shard_on_a_full_disk("shard-sync", Durability::Sync);
}

#[test]
fn a_buffered_shard_on_a_full_disk_loses_nothing_and_goes_on() {
    shard_on_a_full_disk("shard-none", Durability::None);
}

/// An engine in sync durability writes through its commit log, whose
/// appends and checkpoints meet the full disk too.
#[test]
fn an_engine_on_a_full_disk_loses_nothing_and_goes_on() {
    let Some(disk) = Ext4Image::mount("engine", 32) else { return };
    let dir = disk.at.join("engine");
    let opts = options(Durability::Sync);
    let engine = Engine::open(&dir, opts.clone()).unwrap();
    let opened: Vec<Shard> = (0..8).map(|id| engine.open_shard(id, true).unwrap()).collect();
    let filler = disk.fill(2 << 20);
    let mut shards: Vec<_> = opened.iter().map(|s| (s, BTreeMap::new(), 0)).collect();
    put_until_full(&mut shards, 12);
    let mut models: Vec<_> = shards.into_iter().map(|(_, model, last)| (model, last)).collect();
    for (s, (model, _)) in opened.iter().zip(&models) {
        assert_holds(s, model, "before space is back");
    }

    std::fs::remove_file(&filler).unwrap();
    for (s, (model, last)) in opened.iter().zip(&mut models) {
        goes_on(s, model, last);
    }
    drop(opened);
    engine.close().unwrap();
    drop(engine);
    let engine = Engine::open(&dir, opts).unwrap();
    for (id, (model, last)) in models.iter().enumerate() {
        let s = engine.open_shard(id as u32, false).unwrap();
        assert_holds(&s, model, &format!("shard {id} after reopen"));
        assert_eq!(s.last_version(), *last);
    }
    engine.close().unwrap();
}

/// A host restarted while the disk is still full: the close (which
/// flushes) may fail, and so may the reopen (after a close that failed it
/// writes a new WAL extent record), each with NO_SPACE and losing
/// nothing; one that opens holds everything. Once space is back the shard
/// opens with every acknowledged put.
#[test]
fn a_shard_restarted_on_a_full_disk_opens_with_everything_once_space_is_back() {
    for durability in [Durability::Sync, Durability::None] {
        let Some(disk) = Ext4Image::mount("restart", 24) else { return };
        let dir = disk.at.join("shard");
        let opts = options(durability);
        let s = Shard::open(&dir, opts.clone()).unwrap();
        let filler = disk.fill(2 << 20);
        let mut shards = [(&s, BTreeMap::new(), 0)];
        put_until_full(&mut shards, 13);
        let [(_, model, last)] = shards;
        if let Err(e) = s.close() {
            assert_eq!(e.status, KEEL_STATUS_NO_SPACE, "{durability:?}: close on a full disk: {e}");
        }
        drop(s);
        for _ in 0..2 {
            match Shard::open(&dir, opts.clone()) {
                Ok(s) => {
                    assert_holds(&s, &model, "reopened on a full disk");
                    let _ = s.close();
                }
                Err(e) => assert_eq!(e.status, KEEL_STATUS_NO_SPACE, "{durability:?}: reopen on a full disk: {e}"),
            }
        }
        std::fs::remove_file(&filler).unwrap();
        let s = Shard::open(&dir, opts).unwrap();
        assert_holds(&s, &model, "reopened once space is back");
        assert_eq!(s.last_version(), last);
        s.close().unwrap();
    }
}

/// A shard sent to a node whose disk fills during the snapshot: the
/// receiver's NO_SPACE reaches the source as the transfer's error, the
/// source's shard is untouched and writable, and once space is back the
/// next transfer ends with equal digests.
#[test]
fn a_transfer_to_a_full_disk_fails_with_no_space_and_the_next_one_completes() {
    let Some(disk) = Ext4Image::mount("transfer", 32) else { return };
    let opts = options(Durability::Sync);
    let node = |node_id| NodeOptions { node_id, max_frame_bytes: 1 << 20, ..NodeOptions::default() };
    let src = Side::temp("full-disk-source", node(1), opts.clone());
    let dst = Side::open(&disk.at.join("engine"), node(2), opts);
    src.node.connect(2, &dst.node.addr().to_string()).unwrap();
    let shard = src.engine.open_shard(7, true).unwrap();
    // About 12 MiB, against 4 MiB left on the receiver's disk.
    for i in 0..12_000u32 {
        shard.put(format!("key-{i:06}").as_bytes(), &vec![i as u8; 1000]).unwrap();
    }
    shard.flush(true).unwrap();
    let before = shard_digest(&shard).unwrap();
    let filler = disk.fill(4 << 20);

    dst.transfers.expect(7, 1);
    let snapshot = TransferOptions { method: Method::Snapshot, ..TransferOptions::default() };
    let e = src.transfers.send_shard(&shard, 7, 2, &snapshot).expect_err("the receiver's disk is full");
    assert_eq!(e.status, KEEL_STATUS_NO_SPACE, "{e}");
    assert_eq!(dst.transfers.receiver_stats().failed, 1);
    assert_eq!(shard_digest(&shard).unwrap(), before, "the source's shard is untouched");
    let e = dst.engine.open_shard(7, false).err().expect("the incoming shard never completed");
    assert_eq!(e.status, KEEL_STATUS_BUSY, "{e}");

    std::fs::remove_file(&filler).unwrap();
    shard.put(b"after", b"space is back").unwrap();
    dst.transfers.expect(7, 1);
    src.transfers.send_shard(&shard, 7, 2, &snapshot).expect("a transfer once space is back");
    let got = dst.engine.open_shard(7, false).unwrap();
    assert_eq!(shard_digest(&got).unwrap(), shard_digest(&shard).unwrap());
}


/// A shard or an engine closed cleanly opens on a disk with no block left
/// and serves its reads: a clean close leaves nothing for the open to
/// write (the WAL's extent record already matches). Writes then succeed
/// while preallocated room lasts, else fail with NO_SPACE.
#[test]
fn a_cleanly_closed_shard_opens_and_reads_on_a_full_disk() {
    for durability in [Durability::Sync, Durability::None] {
        let Some(disk) = Ext4Image::mount("clean-close", 24) else { return };
        let opts = options(durability);
        let fill_shard = |s: &Shard| {
            for i in 0..500u32 {
                s.put(format!("key-{i:03}").as_bytes(), &value(i)).unwrap();
            }
        };
        let check_reads = |s: &Shard| {
            for i in 0..500u32 {
                let got = s.get(format!("key-{i:03}").as_bytes()).unwrap().map(|e| e.value);
                assert_eq!(got, Some(Value::Bytes(value(i))), "{durability:?}: key-{i:03}");
            }
        };
        let may_fail = |what: &str, r: keel::Result<()>| {
            if let Err(e) = r {
                assert_eq!(e.status, KEEL_STATUS_NO_SPACE, "{durability:?}: {what}: {e}");
            }
        };
        let dir = disk.at.join("shard");
        let s = Shard::open(&dir, opts.clone()).unwrap();
        fill_shard(&s);
        s.close().unwrap();
        let engine_dir = disk.at.join("engine");
        let engine = Engine::open(&engine_dir, opts.clone()).unwrap();
        fill_shard(&engine.open_shard(1, true).unwrap());
        engine.close().unwrap();
        drop(engine);

        disk.fill(0);
        assert_eq!(disk.free(), 0, "the filler took every block");
        let s = Shard::open(&dir, opts.clone()).expect("a cleanly closed shard opens on a full disk");
        check_reads(&s);
        may_fail("put", s.put(b"more", b"1").map(drop));
        may_fail("close", s.close());
        let engine = Engine::open(&engine_dir, opts.clone()).expect("a cleanly closed engine opens on a full disk");
        let s = engine.open_shard(1, false).unwrap();
        check_reads(&s);
        may_fail("put", s.put(b"more", b"1").map(drop));
        drop(s);
        may_fail("engine close", engine.close());
    }
}

fn value(i: u32) -> Vec<u8> {
    vec![i as u8; 1000]
}
