//! A device that stops taking writes, for real: ext4 on a loop device
//! whose backing store runs out (tests/common/ext4.rs), as a
//! thin-provisioned volume does. Writeback to blocks the device never
//! stored fails; ext4 then aborts its journal and goes read-only, as it
//! does on a failing disk. The fault suites model such errors one call at
//! a time; here the kernel decides which calls fail and how. Seen here: a
//! flush pass's fdatasync of its segment file failing with EIO or ENOSPC,
//! then EROFS from every write after it (the WAL's frames included; its
//! segments were zero-filled when made, so their blocks are stored).
//!
//! What must hold: every failed call says IO, POISONED or NO_SPACE, and
//! nothing panics; once the device is healed and the file system repaired
//! (`e2fsck -fy`) and mounted again, the shards open with every
//! acknowledged write and its value, a write that failed is there whole or
//! not at all, and nothing else is; they take writes again.
//!
//! Needs root, `mkfs.ext4`, `e2fsck` and a loop device; without them each
//! test says so and passes without running.

mod common;

use common::ext4::Ext4Image;
use keel::engine::Engine;
use keel::shard::{Options, Shard, Value};
use keel::status::*;
use keel::wal::Durability;
use std::collections::BTreeMap;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// What the writes to one shard came to.
#[derive(Default)]
struct Outcome {
    acked: Model,
    failed: Model,
}

fn options() -> Options {
    Options { durability: Durability::Sync, flush_interval: None, ..Options::default() }
}

fn value(i: u32) -> Vec<u8> {
    vec![i as u8; 1000]
}

/// Puts `n` keys round-robin over `shards` from key number `from`,
/// flushing each shard every 500 puts. Failures must say IO, POISONED or
/// NO_SPACE.
fn put(shards: &[Shard], outcomes: &mut [Outcome], from: u32, n: u32) {
    let allowed = |e: &keel::Error| matches!(e.status, KEEL_STATUS_IO | KEEL_STATUS_POISONED | KEEL_STATUS_NO_SPACE);
    for i in from..from + n {
        let at = i as usize % shards.len();
        let key = format!("key-{i:06}").into_bytes();
        match shards[at].put(&key, &value(i)) {
            Ok(_) => outcomes[at].acked.insert(key, value(i)),
            Err(e) => {
                assert!(allowed(&e), "put: {e}");
                outcomes[at].failed.insert(key, value(i))
            }
        };
        if i % 500 == 499 {
            for s in shards {
                if let Err(e) = s.flush(true) {
                    assert!(allowed(&e), "flush: {e}");
                }
            }
        }
    }
}

/// After the device failed and the file system was repaired: `shard`
/// holds every acknowledged write, a failed one whole or not at all, and
/// nothing else.
fn check(shard: &Shard, o: &Outcome, name: &str) {
    for (k, v) in &o.acked {
        let got = shard.get(k).unwrap().map(|e| e.value);
        assert_eq!(got, Some(Value::Bytes(v.clone())), "{name}: acknowledged {} lost or changed", String::from_utf8_lossy(k));
    }
    for r in shard.scan(b"", None).unwrap() {
        let (k, e) = r.unwrap();
        let v = o.acked.get(&k).or_else(|| o.failed.get(&k));
        assert_eq!(v.map(|v| Value::Bytes(v.clone())), Some(e.value), "{name}: {} was never written so", String::from_utf8_lossy(&k));
    }
}

#[test]
fn a_shard_on_a_device_that_fails_writes_keeps_every_acknowledged_write() {
    let Some(disk) = Ext4Image::mount("eio-shard", 128) else { return };
    let dir = disk.at.join("shard");
    let shards = [Shard::open(&dir, options()).unwrap()];
    let mut outcomes = [Outcome::default()];
    put(&shards, &mut outcomes, 0, 2000);
    assert!(outcomes[0].failed.is_empty());
    shards[0].flush(true).unwrap();

    disk.fail_writes();
    put(&shards, &mut outcomes, 2000, 3000);
    assert!(!outcomes[0].failed.is_empty(), "the device failed no write");
    disk.heal();
    let [shard] = shards;
    let _ = shard.close();
    drop(shard);

    disk.remount();
    let shard = Shard::open(&dir, options()).unwrap();
    check(&shard, &outcomes[0], "shard");
    shard.put(b"after", b"repaired").unwrap();
    shard.flush(true).unwrap();
    shard.close().unwrap();
}

/// The same through an engine's commit log, over four shards.
#[test]
fn an_engine_on_a_device_that_fails_writes_keeps_every_acknowledged_write() {
    let Some(disk) = Ext4Image::mount("eio-engine", 128) else { return };
    let dir = disk.at.join("engine");
    let engine = Engine::open(&dir, options()).unwrap();
    let shards: Vec<Shard> = (0..4).map(|id| engine.open_shard(id, true).unwrap()).collect();
    let mut outcomes: Vec<Outcome> = (0..4).map(|_| Outcome::default()).collect();
    put(&shards, &mut outcomes, 0, 2000);
    assert!(outcomes.iter().all(|o| o.failed.is_empty()));

    disk.fail_writes();
    put(&shards, &mut outcomes, 2000, 3000);
    assert!(outcomes.iter().any(|o| !o.failed.is_empty()), "the device failed no write");
    disk.heal();
    drop(shards);
    let _ = engine.close();
    drop(engine);

    disk.remount();
    let engine = Engine::open(&dir, options()).unwrap();
    for (id, o) in outcomes.iter().enumerate() {
        let shard = engine.open_shard(id as u32, false).unwrap();
        check(&shard, o, &format!("shard {id}"));
        shard.put(b"after", b"repaired").unwrap();
        shard.flush(true).unwrap();
    }
    engine.close().unwrap();
}
