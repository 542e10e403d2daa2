//! The bounded restart: a shard holds at most `max_unflushed_wal_bytes`
//! of WAL its segments do not cover (writers past it wait for the flush,
//! then fail with TIMEOUT), and a reopen replays only that tail, however
//! much WAL is retained for other readers.
//!
//! The flush is held with a step hook (it parks at `Step::PassStart`), so
//! every stall here is decided by the test, never by timing; a "crash" is
//! a hook that panics in the pass, so the shard closes (its WAL synced and
//! closed) without persisting its last writes.

mod common;

use common::TempDir;
use keel::shard::{Op, Options, Shard, Step, StepHook, Steps, Value};
use keel::status::*;
use keel::wal::Durability;
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Parks every flush pass at its start until released; once `crash` is
/// set, a pass panics there instead (the shard is poisoned and persists
/// nothing more).
#[derive(Default)]
struct HeldFlush {
    released: Mutex<bool>,
    go: Condvar,
    crash: AtomicBool,
}

impl HeldFlush {
    fn release(&self) {
        *self.released.lock() = true;
        self.go.notify_all();
    }
}

impl StepHook for HeldFlush {
    fn at(&self, step: Step) {
        if step != Step::PassStart {
            return;
        }
        let mut released = self.released.lock();
        while !*released && !self.crash.load(Ordering::Acquire) {
            self.go.wait(&mut released);
        }
        drop(released);
        if self.crash.load(Ordering::Acquire) {
            panic!("simulated crash: the flush pass never runs");
        }
    }
}

const MIB: u64 = 1 << 20;

fn options(hook: &Arc<HeldFlush>, bound: u64, stall: Duration) -> Options {
    Options {
        durability: Durability::None,
        flush_interval: None,
        max_unflushed_wal_bytes: bound,
        write_stall_timeout: stall,
        steps: Steps::new(hook.clone()),
        ..Options::default()
    }
}

/// Ends the process's life as a crash would: the pass that close runs
/// panics before it writes anything, the WAL is synced and closed.
fn crash(shard: Shard, hook: &HeldFlush) {
    // Under the lock, so a pass about to park sees it.
    let _parked = hook.released.lock();
    hook.crash.store(true, Ordering::Release);
    hook.go.notify_all();
    drop(_parked);
    let _ = shard.close();
}

#[test]
fn writers_past_the_bound_time_out_while_the_flush_is_held_and_succeed_after_it() {
    let dir = TempDir::new("restart-stall");
    let hook = Arc::new(HeldFlush::default());
    let shard = Shard::open(dir.path(), options(&hook, MIB, Duration::from_millis(20))).unwrap();
    let value = vec![7u8; 64 << 10];
    let mut timed_out = None;
    for i in 0..64u32 {
        match shard.put(&i.to_be_bytes(), &value) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.status, KEEL_STATUS_TIMEOUT, "{e}");
                timed_out = Some(i);
                break;
            }
        }
    }
    let i = timed_out.expect("64 writes of 64 KiB cannot all fit a 1 MiB bound while the flush is held");
    assert!(i >= 8, "only {i} writes fit a 1 MiB bound");
    let st = shard.stats();
    assert!(st.unflushed_wal_bytes <= MIB, "{} unflushed bytes", st.unflushed_wal_bytes);
    assert_eq!(st.write_stalls, 1);
    assert_eq!(shard.get(&i.to_be_bytes()).unwrap(), None, "the write that timed out was not logged");
    assert_eq!(shard.persisted_version(), 0);

    // The flush runs: the same write goes through, without a stall.
    hook.release();
    assert_eq!(shard.flush(true).unwrap(), shard.last_version());
    assert_eq!(shard.stats().unflushed_wal_bytes, 0);
    shard.put(&i.to_be_bytes(), &value).unwrap();
    assert_eq!(shard.stats().write_stalls, 1);
    shard.close().unwrap();
}

/// An applied entry passes the same admission as a write
/// (keel_shard_apply's errors list TIMEOUT): past the bound while the flush
/// is held it fails with TIMEOUT and its index does not move; once the
/// flush ran, the same entry applies.
#[test]
fn an_applied_entry_past_the_bound_times_out_and_its_index_does_not_move() {
    let dir = TempDir::new("restart-apply-stall");
    let hook = Arc::new(HeldFlush::default());
    let shard = Shard::open(dir.path(), options(&hook, MIB, Duration::from_millis(20))).unwrap();
    let entry = |i: u64| vec![Op::Put { key: i.to_be_bytes().to_vec(), value: vec![3u8; 64 << 10] }];
    let mut timed_out = None;
    for i in 1..=64u64 {
        match shard.apply(i, &entry(i), None) {
            Ok(a) => assert!(!a.duplicate && a.refused.is_none(), "{a:?}"),
            Err(e) => {
                assert_eq!(e.status, KEEL_STATUS_TIMEOUT, "{e}");
                timed_out = Some(i);
                break;
            }
        }
    }
    let i = timed_out.expect("64 entries of 64 KiB cannot all fit a 1 MiB bound while the flush is held");
    assert_eq!(shard.applied_index(), i - 1, "the entry that timed out did not move the index");
    hook.release();
    shard.flush(true).unwrap();
    let a = shard.apply(i, &entry(i), None).unwrap();
    assert!(!a.duplicate && a.ops.is_some(), "{a:?}");
    assert_eq!(shard.applied_index(), i);
    shard.close().unwrap();
}

#[test]
fn a_stalled_writer_is_let_through_by_the_flush() {
    let dir = TempDir::new("restart-wait");
    let hook = Arc::new(HeldFlush::default());
    let shard = Shard::open(dir.path(), options(&hook, MIB, Duration::from_secs(3600))).unwrap();
    // 15 batches of 64 KiB (with their headers) fill the bound but one.
    let value = vec![1u8; 64 << 10];
    for i in 0..15u32 {
        shard.put(&i.to_be_bytes(), &value).unwrap();
    }
    let writer = {
        let shard = shard.clone();
        let value = vec![2u8; 128 << 10];
        std::thread::spawn(move || shard.put(b"late", &value))
    };
    while shard.stalled_writes() == 0 {
        std::thread::yield_now();
    }
    assert!(!writer.is_finished());
    hook.release();
    writer.join().unwrap().unwrap();
    let st = shard.stats();
    assert_eq!(st.write_stalls, 1);
    assert!(st.write_stall_time > Duration::ZERO);
    assert_eq!(value_of(&shard, b"late").len(), 128 << 10);
    shard.close().unwrap();
}

/// The pass a stalled writer asked for runs while the write in its way
/// is still queued at the gate (behind `under_gate`), so it frees nothing
/// and the request is answered. That write, logged below half the bound,
/// asks for no flush, and no interval pass comes: the stalled writer asks
/// again, and goes through once that pass persists the write.
#[test]
fn a_stalled_writer_asks_again_for_a_write_logged_after_its_pass() {
    let dir = TempDir::new("restart-ask-again");
    let hook = Arc::new(HeldFlush::default());
    hook.release();
    let shard = Shard::open(dir.path(), options(&hook, MIB, Duration::from_secs(20))).unwrap();
    let (first, stalled) = shard
        .under_gate(|_| {
            let put = |key: &'static [u8], kib: usize| {
                let shard = shard.clone();
                std::thread::spawn(move || shard.put(key, &vec![5u8; kib << 10]))
            };
            // Under half the bound, and past it with the second.
            let first = put(b"first", 400);
            while shard.queued_writes() == 0 {
                std::thread::yield_now();
            }
            let stalled = put(b"stalled", 700);
            while shard.stalled_writes() == 0 {
                std::thread::yield_now();
            }
            // The pass it asked for (or one after it) is done.
            assert_eq!(shard.flush(true).unwrap(), 0);
            (first, stalled)
        })
        .unwrap();
    assert_eq!(first.join().unwrap().unwrap(), 1);
    assert_eq!(stalled.join().unwrap().unwrap(), 2, "the stalled writer was let through, not timed out");
    assert_eq!(shard.stats().write_stalls, 1);
    assert_eq!(value_of(&shard, b"stalled").len(), 700 << 10);
    shard.close().unwrap();
}

#[test]
fn a_write_past_the_bound_fails_with_closed_when_the_shard_closes() {
    let dir = TempDir::new("restart-close");
    let hook = Arc::new(HeldFlush::default());
    let shard = Shard::open(dir.path(), options(&hook, MIB, Duration::from_secs(3600))).unwrap();
    shard.put(b"big", &vec![0u8; MIB as usize]).unwrap(); // a batch past the bound goes alone
    let writer = {
        let shard = shard.clone();
        std::thread::spawn(move || shard.put(b"next", b"v"))
    };
    while shard.stalled_writes() == 0 {
        std::thread::yield_now();
    }
    // Close runs the final pass once the held one goes.
    let closer = {
        let shard = shard.clone();
        std::thread::spawn(move || shard.close())
    };
    assert_eq!(writer.join().unwrap().unwrap_err().status, KEEL_STATUS_CLOSED);
    hook.release();
    closer.join().unwrap().unwrap();
}

fn value_of(shard: &Shard, key: &[u8]) -> Vec<u8> {
    match shard.get(key).unwrap().map(|e| e.value) {
        Some(Value::Bytes(b)) => b,
        other => panic!("{other:?}"),
    }
}

/// A shard with 64 KiB WAL segments, pinned from its first record (a
/// transfer or a follower still reads it): 5000 puts (keys 0..5000 as
/// big-endian u32, 50 batches of 100 B values) persisted by a flush, then
/// a put of each `tail` key (100 B of 9s) that no flush persists, then a
/// crash. Returns the options it was opened with.
fn pinned_then_crashed(dir: &std::path::Path, tail: &[Vec<u8>]) -> Options {
    let hook = Arc::new(HeldFlush::default());
    hook.release();
    let opts = Options { wal_segment_size: 64 << 10, ..options(&hook, 64 * MIB, Duration::from_secs(5)) };
    let shard = Shard::open(dir, opts.clone()).unwrap();
    shard.set_keep_from(1).unwrap();
    for b in 0..50u32 {
        let ops: Vec<Op> = (0..100u32).map(|i| Op::Put { key: (b * 100 + i).to_be_bytes().to_vec(), value: vec![b as u8; 100] }).collect();
        shard.write(&ops).unwrap();
    }
    assert_eq!(shard.flush(true).unwrap(), 5000);
    for k in tail {
        shard.put(k, &[9u8; 100]).unwrap();
    }
    crash(shard, &hook);
    opts
}

/// A WAL pinned from its first record keeps every record through flushes;
/// a reopen still replays only what the last flush did not persist.
#[test]
fn reopen_replays_only_the_unflushed_tail_of_a_pinned_wal() {
    let dir = TempDir::new("restart-pinned");
    const TAIL: u64 = 37;
    let opts = pinned_then_crashed(dir.path(), &(0..TAIL).map(|i| format!("tail{i}").into_bytes()).collect::<Vec<_>>());

    // Reopened with its first pass held too, so nothing truncates the WAL
    // before the stats are read.
    let held = Arc::new(HeldFlush::default());
    let shard = Shard::open(dir.path(), Options { steps: Steps::new(held.clone()), ..opts }).unwrap();
    let st = shard.stats();
    assert_eq!(st.wal_first_seq, 1, "the pin kept the whole WAL");
    assert_eq!(st.last_version, 5000 + TAIL);
    assert_eq!(st.replayed_records, TAIL, "replay starts past the persisted version");
    // Each record with its 4-byte header, as a write counts it.
    let bytes: u64 = (0..TAIL).map(|i| Op::Put { key: format!("tail{i}").into_bytes(), value: vec![9u8; 100] }.encode().len() as u64 + 4).sum();
    assert_eq!(st.replayed_bytes, bytes);
    assert_eq!(value_of(&shard, format!("tail{}", TAIL - 1).as_bytes()), vec![9u8; 100]);
    assert_eq!(value_of(&shard, &4999u32.to_be_bytes()), vec![49u8; 100]);
    held.release();
    shard.close().unwrap();
}

/// The reopen of a shard whose WAL is pinned does not read the frames of
/// segments that hold only persisted versions (a cold restart would read
/// them from the device): a frame damaged there does not stop the open,
/// and a reader of the WAL still finds the damage when it reaches it.
#[test]
fn reopen_reads_persisted_wal_segments_by_their_headers_and_readers_still_check_their_frames() {
    let dir = TempDir::new("restart-pinned-headers");
    let opts = pinned_then_crashed(dir.path(), &[b"tail".to_vec()]);

    // The first segment holds versions from 1 on, all persisted (the
    // segment after it starts well below 5000). Damage a byte in the
    // middle of its first frame's payload.
    let mut segs: Vec<_> = std::fs::read_dir(dir.path().join("wal")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "wal")).collect();
    segs.sort();
    assert!(segs.len() >= 3, "the 64 KiB segments rotated: {segs:?}");
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    bytes[64 + 32 + 200] ^= 0x55;
    std::fs::write(&segs[0], &bytes).unwrap();

    let held = Arc::new(HeldFlush::default());
    let shard = Shard::open(dir.path(), Options { steps: Steps::new(held.clone()), ..opts }).unwrap();
    assert_eq!(shard.stats().replayed_records, 1, "replay starts past the persisted version");
    assert_eq!(value_of(&shard, b"tail"), vec![9u8; 100]);
    assert_eq!(value_of(&shard, &0u32.to_be_bytes()), vec![0u8; 100], "the segments hold the persisted versions");
    let mut reader = shard.wal_reader(1).unwrap();
    let e = loop {
        match reader.next_record() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the reader read past the damaged frame"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.status, KEEL_STATUS_CORRUPTION, "{e:?}");
    held.release();
    shard.close().unwrap();
}

/// A shard filled to the default bound with its flush held, then crashed:
/// the reopen replays at most the bound (4 KiB values in 1 MiB batches).
#[test]
fn a_shard_at_the_default_bound_reopens_replaying_at_most_the_bound() {
    let dir = TempDir::new("restart-default");
    let hook = Arc::new(HeldFlush::default());
    let bound = Options::default().max_unflushed_wal_bytes;
    let shard = Shard::open(dir.path(), options(&hook, bound, Duration::from_millis(1))).unwrap();
    let mut written = 0u32;
    'fill: for b in 0.. {
        let ops: Vec<Op> = (0..256u32).map(|i| Op::Put { key: (b * 256 + i).to_be_bytes().to_vec(), value: vec![b as u8; 4096] }).collect();
        match shard.write(&ops) {
            Ok(_) => written += 256,
            Err(e) => {
                assert_eq!(e.status, KEEL_STATUS_TIMEOUT, "{e}");
                break 'fill;
            }
        }
    }
    let unflushed = shard.stats().unflushed_wal_bytes;
    assert!(unflushed <= bound && unflushed > bound - (2 << 20), "{unflushed} of {bound}");
    crash(shard, &hook);

    let shard = Shard::open(dir.path(), Options { steps: Steps::default(), ..Options::default() }).unwrap();
    let st = shard.stats();
    assert_eq!(st.replayed_records, written as u64);
    assert!(st.replayed_bytes <= bound, "replayed {} bytes past the bound {bound}", st.replayed_bytes);
    assert_eq!(value_of(&shard, &(written - 1).to_be_bytes()).len(), 4096);
    shard.close().unwrap();
}
