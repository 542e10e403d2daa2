//! The engine's commit log (src/wal/commit_log.rs, src/shard/commit.rs) on
//! the fault-injecting file system: in `sync` durability an engine's
//! shards do not sync their own WALs per write, so after a power loss
//! (unsynced data dropped or torn) their acknowledged writes come back
//! from the commit log's copies.
//!
//! Deterministic: the engine's one flush worker is parked at every step
//! (tests/common/lockstep.rs) and the seed decides when it may take its
//! next ones, between the writes of this thread, and no WAL segment is
//! prepared in the background; so the order of every file operation, and
//! of every fault and loss the file system rolls, follows from the seed:
//! `KEEL_COMMIT_LOG_SEED=S` replays seed S exactly,
//! `KEEL_COMMIT_LOG_SEEDS=N` sets the number of seeds (default 30),
//! `KEEL_COMMIT_LOG_SEED_START=S` the first (default 1).
//! One test is not seeded: `a_crowd_of_writers_on_one_shard_survives_power_loss`
//! runs 48 writer threads, so its file operations come in the machine's
//! order, and it checks only what must hold in any order.

mod common;

use common::faultfs::{FaultFs, Faults};
use common::lockstep::Lockstep;
use common::rng::Rng;
use common::shard_model::{apply, Model};
use keel::engine::Engine;
use keel::fs::FileSystem;
use keel::shard::{Op, Options, Shard, Steps};
use keel::wal::Durability;
use std::path::Path;
use std::sync::Arc;

const SHARDS: u32 = 6;

fn options(steps: Steps) -> Options {
    Options {
        steps,
        flush_threads: 1,
        durability: Durability::Sync,
        wal_segment_size: 64 << 10,
        flush_interval: None,
        seal_bytes: 16 << 10,
        // The commit log takes a checkpoint every this many bytes of
        // copies: a round writes a few of them.
        max_unflushed_wal_bytes: 1 << 20,
        ..Options::default()
    }
}

fn random_batch(rng: &mut Rng, n: u64) -> Vec<Op> {
    let count = if rng.chance(150) { 2 + rng.below(3) } else { 1 };
    (0..count)
        .map(|j| {
            let key = format!("k{:02}", rng.below(40)).into_bytes();
            match rng.chance(80) {
                true => Op::Delete { key },
                false => Op::Put { key, value: format!("{n}.{j}:{}", "v".repeat(rng.below(1500) as usize)).into_bytes() },
            }
        })
        .collect()
}

fn state(s: &Shard) -> Result<Model, String> {
    s.scan(b"", None).map_err(|e| e.to_string())?.map(|r| r.map(|(k, e)| (k, e.value)).map_err(|e| e.to_string())).collect()
}

fn open_with(fs: &FaultFs, steps: Steps) -> Result<Engine, String> {
    Engine::open_with_fs(Path::new("/keel/engine"), options(steps), Arc::new(fs.clone())).map_err(|e| format!("engine open: {e}"))
}

/// An engine whose flush runs free (the tests below wait for nothing it does).
fn open(fs: &FaultFs) -> Result<Engine, String> {
    open_with(fs, Steps::default())
}

/// The process dies (its shard handles `held` and `engine` with it), the
/// power goes, and a new process opens the engine.
fn power_loss<T>(fs: &FaultFs, held: T, engine: Engine) -> Engine {
    fs.halt();
    drop(held);
    drop(engine);
    fs.crash();
    open(fs).unwrap()
}

/// What a seed did: frames the engine opens restored in all, the faults
/// injected, the syncs asked for (the same seed must give the same).
type Outcome = (u64, Vec<String>, u64);

/// Runs one seed: rounds of writes spread over the shards, each ended by a
/// power loss.
fn run_seed(seed: u64) -> Result<Outcome, String> {
    let fs = FaultFs::new(seed);
    let mut rng = Rng::new(seed ^ 0xc0_11_06);
    let mut models: Vec<Model> = vec![Model::new(); SHARDS as usize];
    // The write that failed, per shard: there whole or not at all.
    let mut maybe: Vec<Option<Vec<Op>>> = vec![None; SHARDS as usize];
    let mut restored = 0;
    let mut n = 0;
    for round in 0..4 {
        fs.set_faults(Faults::default());
        let lockstep = Arc::new(Lockstep::default());
        let engine = open_with(&fs, Steps::new(lockstep.clone())).inspect_err(|_| lockstep.release())?;
        restored += engine.stats().map_err(|e| e.to_string())?.restored_frames;
        let mut shards = Vec::new();
        for id in 0..SHARDS {
            let opened = engine.open_shard(id, true).map_err(|e| format!("round {round}: opening shard {id}: {e}"));
            let s = opened.inspect_err(|_| lockstep.release())?;
            let got = state(&s).map_err(|e| format!("round {round}: reading shard {id}: {e}"));
            let got = got.inspect_err(|_| lockstep.release())?;
            let i = id as usize;
            if let Some(ops) = maybe[i].take() {
                let mut with = models[i].clone();
                apply(&mut with, &ops);
                if got == with {
                    models[i] = with;
                }
            }
            if got != models[i] {
                lockstep.release();
                let show = |v: Option<&keel::shard::Value>| format!("{v:?}").chars().take(60).collect::<String>();
                let diff: Vec<String> = models[i]
                    .keys()
                    .chain(got.keys())
                    .filter(|k| got.get(*k) != models[i].get(*k))
                    .map(|k| format!("{}: got {} want {}", String::from_utf8_lossy(k), show(got.get(k)), show(models[i].get(k))))
                    .collect();
                return Err(format!("round {round}: shard {id} recovered another state: {diff:?}; injected {:?}", fs.injected()));
            }
            shards.push(s);
        }
        if rng.chance(400) {
            fs.set_faults(Faults { eio_write: rng.below(3), eio_sync: rng.below(3), ..Faults::default() });
        }
        let mut broken = vec![false; SHARDS as usize];
        for _ in 0..200 + rng.below(400) {
            let i = rng.below(SHARDS as u64) as usize;
            if broken[i] {
                continue;
            }
            n += 1;
            let ops = random_batch(&mut rng, n);
            match shards[i].write(&ops) {
                Ok(_) => apply(&mut models[i], &ops),
                Err(_) => {
                    maybe[i] = Some(ops);
                    broken[i] = true;
                }
            }
            if rng.chance(15) {
                let _ = shards[rng.below(SHARDS as u64) as usize].flush(false);
            }
            lockstep.advance(rng.below(6));
        }
        // The process dies wherever the flush is.
        fs.halt();
        lockstep.release();
        drop(shards);
        drop(engine);
        fs.crash();
    }
    Ok((restored, fs.injected(), fs.syncs()))
}

fn seeds() -> std::ops::Range<u64> {
    match std::env::var("KEEL_COMMIT_LOG_SEED") {
        Ok(s) => {
            let s: u64 = s.parse().expect("KEEL_COMMIT_LOG_SEED is a number");
            s..s + 1
        }
        Err(_) => {
            let start = std::env::var("KEEL_COMMIT_LOG_SEED_START").map_or(1, |n| n.parse().expect("KEEL_COMMIT_LOG_SEED_START is a number"));
            start..start + std::env::var("KEEL_COMMIT_LOG_SEEDS").map_or(30, |n| n.parse().expect("KEEL_COMMIT_LOG_SEEDS is a number"))
        }
    }
}

#[test]
fn acknowledged_writes_of_every_shard_survive_power_loss() {
    let mut restored = 0;
    for seed in seeds() {
        match run_seed(seed) {
            Ok((r, _, _)) => restored += r,
            Err(e) => panic!("seed {seed}: {e}\nreplay: KEEL_COMMIT_LOG_SEED={seed} cargo test --test engine_commit_log"),
        }
    }
    // Power losses that cost a shard WAL frames the commit log gave back:
    // the test reaches the path it is about.
    if seeds().count() > 1 {
        assert!(restored > 0, "no seed lost a shard WAL frame that the commit log had to give back");
    }
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 11] {
        assert_eq!(run_seed(seed), run_seed(seed), "seed {seed}");
    }
}

#[test]
fn a_write_syncs_the_commit_log_not_its_shard_wal() {
    let fs = FaultFs::new(7);
    let engine = open(&fs).unwrap();
    let shards: Vec<Shard> = (0..4).map(|id| engine.open_shard(id, true).unwrap()).collect();
    let before = engine.stats().unwrap();
    for i in 0..40u32 {
        shards[(i % 4) as usize].put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    let after = engine.stats().unwrap();
    assert_eq!(after.commits - before.commits, 40, "every write's group is copied to the commit log");
    // Only the commit log was synced: the shard WALs hold the frames
    // unsynced, and a power loss now must not lose a write.
    let engine = power_loss(&fs, shards, engine);
    for id in 0..4u32 {
        let s = engine.open_shard(id, false).unwrap();
        for i in (id..40).step_by(4) {
            assert_eq!(s.get(format!("k{i}").as_bytes()).unwrap().map(|e| e.value), Some(keel::shard::Value::Bytes(b"v".to_vec())), "k{i}");
        }
    }
}

/// Enough writers on one shard to make crowds (docs/STORAGE.md,
/// "Crowds"): a lead after a crowd logs several frames and commits their
/// copies in one frame of the commit log. Whatever leads formed, every
/// acknowledged write is back after a power loss, with its version.
#[test]
fn a_crowd_of_writers_on_one_shard_survives_power_loss() {
    const WRITERS: u64 = 48;
    const PUTS: u64 = 25;
    let fs = FaultFs::new(19);
    let engine = open(&fs).unwrap();
    let shard = engine.open_shard(0, true).unwrap();
    let acked: Vec<(Vec<u8>, u64)> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|t| {
                let shard = &shard;
                s.spawn(move || (0..PUTS).map(|i| format!("w{t}/{i}").into_bytes()).map(|k| (k.clone(), shard.put(&k, &k).unwrap())).collect::<Vec<_>>())
            })
            .collect();
        writers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    let mut versions: Vec<u64> = acked.iter().map(|(_, v)| *v).collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=WRITERS * PUTS).collect::<Vec<u64>>(), "versions are dense");
    let engine = power_loss(&fs, shard, engine);
    let shard = engine.open_shard(0, false).unwrap();
    assert_eq!(shard.last_version(), WRITERS * PUTS);
    for (k, v) in &acked {
        let got = shard.get(k).unwrap().unwrap_or_else(|| panic!("{} (version {v}) was lost", String::from_utf8_lossy(k)));
        assert_eq!((got.value, got.version), (keel::shard::Value::Bytes(k.clone()), *v), "{}", String::from_utf8_lossy(k));
    }
}

#[test]
fn copies_of_a_dropped_shard_never_reach_the_next_shard_of_its_id() {
    for seed in 0..10 {
        let fs = FaultFs::new(seed);
        let engine = open(&fs).unwrap();
        let old = engine.open_shard(1, true).unwrap();
        for i in 0..50 {
            old.put(format!("old{i}").as_bytes(), b"x").unwrap();
        }
        old.close().unwrap();
        engine.drop_shard(1).unwrap();
        let new = engine.open_shard(1, true).unwrap();
        for i in 0..10 {
            new.put(format!("new{i}").as_bytes(), b"y").unwrap();
        }
        // The new shard's WAL frames are not synced: after the power loss
        // they come back from their copies, and only they do.
        let engine = power_loss(&fs, new, engine);
        let s = engine.open_shard(1, false).unwrap();
        let keys: Vec<Vec<u8>> = s.scan(b"", None).unwrap().map(|r| r.unwrap().0).collect();
        let want: Vec<Vec<u8>> = {
            let mut k: Vec<Vec<u8>> = (0..10).map(|i| format!("new{i}").into_bytes()).collect();
            k.sort();
            k
        };
        assert_eq!(keys, want, "seed {seed}: the re-created shard holds its own writes and nothing of the dropped one");
    }
}

#[test]
fn checkpoints_keep_the_commit_log_bounded() {
    let fs = FaultFs::new(3);
    let engine = open(&fs).unwrap();
    let shards: Vec<Shard> = (0..3).map(|id| engine.open_shard(id, true).unwrap()).collect();
    let value = vec![b'z'; 4000];
    // 12 MiB of copies against a checkpoint every 1 MiB.
    for i in 0..3000u32 {
        shards[(i % 3) as usize].put(format!("k{i}").as_bytes(), &value).unwrap();
    }
    let stats = engine.stats().unwrap();
    assert!(stats.checkpoints >= 8, "{stats:?}");
    assert!(stats.checkpoint_syncs >= stats.checkpoints, "each checkpoint synced the shards written since the last: {stats:?}");
    let dir = Path::new("/keel/engine/commit-log");
    let bytes: u64 = fs.list(dir).unwrap().iter().map(|n| fs.open(&dir.join(n), false).map_or(0, |f| f.len().unwrap_or(0))).sum();
    assert!(bytes <= 4 << 20, "the commit log holds {bytes} bytes after 12 MiB of copies with a checkpoint every 1 MiB");
    for s in &shards {
        s.close().unwrap();
    }
    engine.close().unwrap();
}

#[test]
fn a_group_too_large_for_the_commit_log_syncs_its_own_wal() {
    let fs = FaultFs::new(5);
    let engine = open(&fs).unwrap();
    let s = engine.open_shard(1, true).unwrap();
    // The largest value a 64 KiB segment's record takes: its copy, with
    // the copy's own header, is too large for the commit log's records.
    let mut size = 64 << 10;
    let value = loop {
        let v = vec![b'x'; size];
        match s.put(b"big", &v) {
            Ok(_) => break v,
            Err(_) => size -= 16,
        }
    };
    let stats = engine.stats().unwrap();
    assert_eq!(stats.commits, 0, "the copy was refused, so the write synced its shard's WAL: {stats:?}");
    let engine = power_loss(&fs, s, engine);
    let s = engine.open_shard(1, false).unwrap();
    assert_eq!(s.get(b"big").unwrap().map(|e| e.value), Some(keel::shard::Value::Bytes(value)), "durable without its copy");
}

// ---- found by a review: each failed on the code before ---------------------

const ENGINE: &str = "/keel/engine";

fn engine_on(fs: &(impl FileSystem + Clone + 'static)) -> keel::Result<Engine> {
    Engine::open_with_fs(Path::new(ENGINE), options(Steps::default()), Arc::new(fs.clone()))
}

fn value(s: &Shard, key: &str) -> Option<Vec<u8>> {
    match s.get(key.as_bytes()).unwrap().map(|e| e.value) {
        Some(keel::shard::Value::Bytes(v)) => Some(v),
        _ => None,
    }
}

/// A shard whose WAL failed to close (EIO on its fdatasync) has its
/// acknowledged writes only in the commit log's copies. The flag that kept
/// checkpoints from dropping them lived in the shard, so once the engine
/// let go of the closed shard, the next checkpoint took it for one its
/// close had synced and dropped the copies: a power loss then lost the
/// writes. The commit log now holds them until the engine reopens (its
/// close reports why), and the shard cannot be opened again before that.
#[test]
fn copies_of_a_shard_whose_close_failed_survive_checkpoints_and_power_loss() {
    let fs = FaultFs::new(1);
    let engine = engine_on(&fs).unwrap();
    let s = engine.open_shard(1, true).unwrap();
    for i in 0..20 {
        s.put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    fs.set_faults(Faults { eio_sync: 1000, ..Faults::default() });
    let closed = s.close();
    fs.set_faults(Faults::default());
    assert!(closed.is_err(), "the close was meant to fail");
    drop(s);
    engine.stats().unwrap(); // lets go of the closed shard
    let again = engine.open_shard(1, false).err().expect("a shard whose WAL failed to close waits for the engine's reopen");
    assert_eq!(again.status, keel::status::KEEL_STATUS_IO, "{again}");
    let closed = engine.close();
    assert!(closed.is_err(), "the engine's close says the copies stay");
    drop(engine);
    fs.crash();
    let engine = engine_on(&fs).unwrap();
    let s = engine.open_shard(1, false).unwrap();
    let lost: Vec<usize> = (0..20).filter(|i| value(&s, &format!("k{i}")) != Some(b"v".to_vec())).collect();
    assert!(lost.is_empty(), "acknowledged writes {lost:?} lost after power loss");
    s.close().unwrap();
    engine.close().unwrap();
}

/// The same shard's WAL unable to take its held frames (EIO on writes):
/// opening it again in the same engine opened the shortened WAL and gave
/// acknowledged versions out again. Refused now until the engine reopens,
/// whose recovery gives the frames back from the commit log.
#[test]
fn a_shard_whose_wal_failed_is_not_reopened_before_the_engine() {
    let fs = common::tripfs::TripFs::new(FaultFs::new(1), format!("{ENGINE}/shards/1/wal"));
    let engine = engine_on(&fs).unwrap();
    let s = engine.open_shard(1, true).unwrap();
    // The pass every open asks for is done: no pass runs again before the
    // flush below (no interval, far below every bound), so the frames of
    // these puts are still held in memory when the writes start failing.
    s.flush(true).unwrap();
    let acked: Vec<u64> = (0..10).map(|i| s.put(format!("old{i}").as_bytes(), b"old").unwrap()).collect();
    fs.fail_writes.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = s.flush(true);
    assert!(s.close().is_err(), "the WAL cannot write its held frames");
    fs.fail_writes.store(false, std::sync::atomic::Ordering::SeqCst);
    drop(s);
    let again = engine.open_shard(1, false).err().expect("refused until the engine reopens");
    assert_eq!(again.status, keel::status::KEEL_STATUS_IO, "{again}");
    let _ = engine.close();
    drop(engine);
    let engine = engine_on(&fs).unwrap();
    let s = engine.open_shard(1, false).unwrap();
    let missing: Vec<usize> = (0..10).filter(|i| value(&s, &format!("old{i}")).is_none()).collect();
    assert!(missing.is_empty(), "acknowledged writes {missing:?} missing after the engine's reopen");
    let next = s.put(b"new", b"new").unwrap();
    assert!(next > *acked.last().unwrap(), "version {next} given out again (acknowledged up to {})", acked.last().unwrap());
    s.close().unwrap();
    engine.close().unwrap();
}

/// A SIGKILL between the shard list's append and its fdatasync, then a
/// process that reads the unsynced record and acts on it (uses the
/// created shard; finishes the drop by removing the folder), then a power
/// loss: the record must not be taken back under what was done on its
/// word. The engine's open now syncs the list it read.
#[test]
fn a_shard_list_record_a_killed_process_never_synced_is_synced_before_use() {
    for (case, seed) in [("create", 1), ("create", 2), ("drop", 1), ("drop", 2)] {
        let faultfs = FaultFs::new(seed);
        let fs = common::tripfs::TripFs::new(faultfs.clone(), format!("{ENGINE}/SHARDS"));
        let engine = engine_on(&fs).unwrap();
        let s = engine.open_shard(3, true).unwrap();
        s.put(b"k", b"v").unwrap();
        s.close().unwrap();
        fs.kill_at_sync.store(true, std::sync::atomic::Ordering::SeqCst);
        match case {
            "create" => assert!(engine.open_shard(5, true).is_err(), "the create was cut by the kill"),
            _ => assert!(engine.drop_shard(3).is_err(), "the drop was cut by the kill"),
        }
        drop(engine);
        faultfs.resume(); // the next process after the SIGKILL
        let engine = engine_on(&fs).unwrap();
        if case == "create" {
            let s = engine.open_shard(5, false).expect("shard 5 is listed for the next process");
            s.put(b"acked", b"v").unwrap();
            s.close().unwrap();
        }
        engine.close().unwrap();
        drop(engine);
        faultfs.crash(); // power loss
        let engine = engine_on(&fs).unwrap();
        let listed = engine.list_shards().unwrap();
        match case {
            "create" => {
                let s = engine.open_shard(5, false).unwrap_or_else(|e| panic!("{case} seed {seed}: shard 5 lost (listed {listed:?}): {e}"));
                assert_eq!(value(&s, "acked"), Some(b"v".to_vec()), "{case} seed {seed}");
                s.close().unwrap();
            }
            _ => assert!(!listed.contains(&3), "{case} seed {seed}: the finished drop came back: listed {listed:?}"),
        }
        engine.close().unwrap();
    }
}

fn engine_with(fs: &FaultFs, opts: Options) -> keel::Result<Engine> {
    Engine::open_with_fs(Path::new(ENGINE), opts, Arc::new(fs.clone()))
}

/// Writes acknowledged in SYNC durability live only in the commit log
/// after a kill -9 (the shard WAL held them in memory). The next open is
/// in another durability mode: docs/STORAGE.md says an engine opened
/// without the commit log "still restores the copies an earlier open
/// left". It must open and hold the writes.
#[test]
fn copies_go_back_when_the_engine_reopens_in_another_durability() {
    for durability in [Durability::None, Durability::Periodic(std::time::Duration::from_secs(1))] {
        let fs = FaultFs::new(1);
        let engine = engine_with(&fs, options(Steps::default())).unwrap();
        let s = engine.open_shard(1, true).unwrap();
        s.flush(true).unwrap();
        for i in 0..10 {
            s.put(format!("k{i}").as_bytes(), b"v").unwrap();
        }
        // SIGKILL: the shard WAL's held frames die with the process.
        fs.halt();
        drop(s);
        drop(engine);
        fs.resume();
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine_with(&fs, Options { durability, ..options(Steps::default()) })));
        let engine = match opened {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => panic!("{durability:?}: the engine did not open: {e}"),
            Err(_) => panic!("{durability:?}: the engine's open panicked"),
        };
        let s = engine.open_shard(1, false).unwrap();
        for i in 0..10 {
            assert!(s.get(format!("k{i}").as_bytes()).unwrap().is_some(), "{durability:?}: k{i} lost");
        }
        s.close().unwrap();
        engine.close().unwrap();
    }
}

/// A large write acknowledged through the commit log with 1 MiB WAL
/// segments; the power goes (the shard WAL never synced the frame); the
/// engine reopens with 64 KiB segments (a valid option: a shard WAL that
/// kept the frame replays it whatever the option). The restore of the
/// frame from its copy refused it for the new limit on new records, and
/// the engine did not open. Deterministic: the flush thread is parked
/// (lockstep), no segment is prepared in the background, and the seeds
/// are ones whose power loss drops the frame (asserted by the stats).
#[test]
fn a_restored_frame_is_not_refused_for_a_smaller_segment_size() {
    let value = vec![b'x'; 200 << 10];
    let mut restored = 0;
    for seed in 0..8 {
        let fs = FaultFs::new(seed);
        let lockstep = Arc::new(Lockstep::default());
        let big = Options { wal_segment_size: 1 << 20, steps: Steps::new(lockstep.clone()), ..options(Steps::default()) };
        let engine = engine_with(&fs, big).unwrap();
        let s = engine.open_shard(1, true).unwrap();
        s.put(b"small", b"v").unwrap();
        s.put(b"big", &value).unwrap();
        fs.halt();
        lockstep.release();
        drop(s);
        drop(engine);
        fs.crash();
        let engine = engine_with(&fs, options(Steps::default())).unwrap_or_else(|e| panic!("seed {seed}: the engine did not open: {e}"));
        restored += engine.stats().unwrap().restored_frames;
        let s = engine.open_shard(1, false).unwrap_or_else(|e| panic!("seed {seed}: shard: {e}"));
        assert_eq!(s.get(b"big").unwrap().map(|e| e.value), Some(keel::shard::Value::Bytes(value.clone())), "seed {seed}");
        s.close().unwrap();
        engine.close().unwrap();
    }
    assert!(restored > 0, "no seed needed a restore");
}

/// docs/STORAGE.md, "The commit log": a shard whose WAL failed to close
/// "may have acknowledged writes in no durable file but their copies ...
/// Opening that shard again before then [the engine's reopen] is IO: the
/// shortened WAL would hand its versions out again". `Engine::open_shard`
/// refuses it, but a WAL-delta transfer's reception (`receive_shard(id,
/// None)`) opened the shortened WAL all the same: the receiver announced
/// the version its WAL ends at (below what it acknowledged), the source
/// sent nothing, the host got the shard back without its acknowledged
/// writes and handed their versions out again.
#[test]
fn a_transfer_does_not_reopen_a_shard_whose_wal_failed_to_close() {
    use common::side::{node_options, Side};
    use keel::node::Node;
    use keel::transfer::{Method, TransferOptions, Transfers};
    const SHARD: u32 = 7;
    let opts = Options { flush_interval: None, wal_segment_size: 64 << 10, ..Options::default() };
    let src = Side::temp("held-src", node_options(1), opts.clone());
    let dst_dir = Path::new("/keel/dst");
    let fs = common::tripfs::TripFs::new(FaultFs::new(1), dst_dir.join("shards").join(SHARD.to_string()).join("wal"));
    let dst_engine = Arc::new(Engine::open_with_fs(dst_dir, opts, Arc::new(fs.clone())).unwrap());
    let dst_node = Arc::new(Node::open(node_options(2)).unwrap());
    let dst = Transfers::attach(dst_node.clone(), dst_engine.clone()).unwrap();
    src.node.connect(2, &dst_node.addr().to_string()).unwrap();

    let shard = src.engine.open_shard(SHARD, true).unwrap();
    for i in 0..20 {
        shard.put(format!("src{i}").as_bytes(), b"s").unwrap();
    }
    dst.expect(SHARD, 1);
    let first = src.transfers.send_shard(&shard, SHARD, 2, &TransferOptions { method: Method::Snapshot, ..Default::default() }).unwrap();
    let had = first.last_version;
    shard.set_keep_from(had + 1).unwrap();

    // The receiver's host opens the copy, closes it and opens it again:
    // now its writes are made durable by the commit log.
    dst_engine.open_shard(SHARD, false).unwrap().close().unwrap();
    let s = dst_engine.open_shard(SHARD, false).unwrap();
    s.flush(true).unwrap();
    let before = dst_engine.stats().unwrap().commits;
    let acked: Vec<u64> = (0..5).map(|i| s.put(format!("local{i}").as_bytes(), b"l").unwrap()).collect();
    assert_eq!(dst_engine.stats().unwrap().commits - before, 5, "committed through the commit log");
    // Its WAL cannot write the held frames: the close fails.
    fs.fail_writes.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(s.close().is_err());
    fs.fail_writes.store(false, std::sync::atomic::Ordering::SeqCst);
    drop(s);
    let refused = dst_engine.open_shard(SHARD, false).err().expect("refused until the engine reopens");
    assert_eq!(refused.status, keel::status::KEEL_STATUS_IO, "{refused}");

    // The source refreshes its copy with a WAL delta.
    dst.expect(SHARD, 1);
    let delta = src.transfers.send_shard(&shard, SHARD, 2, &TransferOptions { method: Method::WalDelta, ..Default::default() });
    assert!(delta.is_err(), "a WAL delta went onto the shortened WAL, below the acknowledged {acked:?}: {delta:?}");
    let still = dst_engine.open_shard(SHARD, false).err().map(|e| e.status);
    assert_eq!(still, Some(keel::status::KEEL_STATUS_IO), "refused until the engine reopens");
    let _ = dst_node.close();
    dst.close();
}

/// Value `i` of the damage tests: 4 KiB, incompressible after a tag that
/// names the write.
fn tagged_value(i: usize) -> Vec<u8> {
    let mut v = format!("value-{i:04}-value-{i:04}-").into_bytes();
    let mut x = i as u64 + 1;
    while v.len() < 4096 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        v.push((x >> 56) as u8);
    }
    v
}

/// Zeroes 512 bytes inside the value of one write (of `0..n`, tagged by
/// `tagged_value`) in shard 1's active WAL segment, as a page that never
/// reached the disk; `pick` chooses it among the writes the segment holds.
/// Returns the write damaged.
fn damage_the_active_segment(fs: &FaultFs, n: usize, pick: impl Fn(&[usize]) -> usize) -> usize {
    let wal = Path::new(ENGINE).join("shards/1/wal");
    let active = fs.list(&wal).unwrap().into_iter().filter(|n| n.ends_with(".wal") && !n.starts_with("spare")).max().unwrap();
    let f = fs.open(&wal.join(&active), true).unwrap();
    let mut bytes = vec![0u8; f.len().unwrap() as usize];
    let got = f.read_up_to(&mut bytes, 0).unwrap();
    let tag = |i: usize| format!("value-{i:04}-value-{i:04}-").into_bytes();
    let at = |i: usize| bytes[..got].windows(22).position(|w| w == tag(i).as_slice());
    let present: Vec<usize> = (0..n).filter(|&i| at(i).is_some()).collect();
    assert!(present.len() >= 4, "the active segment {active} holds writes {present:?}");
    let victim = pick(&present);
    f.write_at(&[&[0u8; 512]], (at(victim).unwrap() + 1024) as u64).unwrap();
    victim
}

/// A shard WAL whose records the commit log makes durable is written, not
/// synced: after a power loss its segment may keep a later page and lose
/// an earlier one (writeback runs in any order, as src/wal/recovery.rs
/// says), so a frame in the middle is damaged and valid frames follow it.
/// The WAL sets them aside as the unsynced tail and the commit log gives
/// them back, which it can only do at the WAL's end (restorable_tail:
/// "frames lost to a power loss are only at its end, where `restore_wal`
/// gives them back"). Since recovery's floor counts the end of every
/// valid frame it read, it reopened past the frames it set aside, and the
/// restore took their copies for frames the WAL "holds already":
/// acknowledged writes were gone. A log with a restorable tail does not
/// count those frames. Deterministic: the lost page is made by zeroing
/// part of the frame of a write after the active segment's last sync (a
/// SIGKILL keeps everything else), and the flush is held (lockstep), so no
/// background pass or segment preparation syncs the WAL at a moment of its
/// own (a later frame's durable hint would then prove the damaged record
/// durable, and the open refuse).
#[test]
fn frames_set_aside_after_a_lost_middle_page_are_restored() {
    let fs = FaultFs::new(1);
    let lockstep = Arc::new(Lockstep::default());
    let held = Options { wal_segment_size: 1 << 20, steps: Steps::new(lockstep.clone()), ..options(Steps::default()) };
    let engine = engine_with(&fs, held).unwrap();
    let s = engine.open_shard(1, true).unwrap();
    const N: usize = 90;
    for i in 0..N {
        s.put(format!("k{i:02}").as_bytes(), &tagged_value(i)).unwrap(); // SYNC: acknowledged by the commit log
    }
    fs.halt();
    lockstep.release();
    drop(s);
    drop(engine);
    fs.resume();
    // A page of the active segment (the one the WAL writes, unsynced)
    // holding part of one write's frame never reached the disk; frames of
    // later writes in that segment did.
    damage_the_active_segment(&fs, N, |present| present[present.len() - 3]); // after its last sync
    let opts = Options { wal_segment_size: 1 << 20, ..options(Steps::default()) };
    let engine = engine_with(&fs, opts).unwrap_or_else(|e| panic!("the engine did not open: {e}"));
    let s = engine.open_shard(1, false).unwrap_or_else(|e| panic!("shard: {e}"));
    let lost: Vec<usize> = (0..N).filter(|&i| s.get(format!("k{i:02}").as_bytes()).unwrap().is_none()).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?} (restored frames: {})", engine.stats().unwrap().restored_frames);
    s.close().unwrap();
    engine.close().unwrap();
}

/// As `frames_set_aside_after_a_lost_middle_page_are_restored`,
/// but a checkpoint of the commit log (here: dropping another shard)
/// synced the shard's WAL and dropped every copy before the process
/// died; then a frame in the middle of the (synced) segment reads back
/// damaged. The frames after it are set aside and, with a restorable
/// tail, no longer count in the next number's floor, although the commit
/// log has no copy of them to give back: the shard reopens at the damage
/// and hands out the versions of acknowledged writes again (docs/WAL.md:
/// "Sequence numbers are never reissued"; a standalone WAL in the same
/// state continues past them).
#[test]
fn versions_past_a_damage_are_not_reissued_when_their_copies_were_checkpointed() {
    let fs = FaultFs::new(1);
    let opts = Options { wal_segment_size: 1 << 20, ..options(Steps::default()) };
    let engine = engine_with(&fs, opts.clone()).unwrap();
    let s = engine.open_shard(1, true).unwrap();
    let other = engine.open_shard(2, true).unwrap();
    const N: usize = 90;
    let mut acked = 0;
    for i in 0..N {
        acked = s.put(format!("k{i:02}").as_bytes(), &tagged_value(i)).unwrap();
    }
    other.close().unwrap();
    engine.drop_shard(2).unwrap(); // a checkpoint first: shard 1's WAL synced, its copies gone
    assert!(engine.stats().unwrap().checkpoints >= 1);
    fs.halt();
    drop(s);
    drop(engine);
    fs.resume();
    let victim = damage_the_active_segment(&fs, N, |present| present[present.len() / 2]);
    // A reopen that refuses (the recorded durable point proves the loss)
    // reissues nothing either.
    let opened = engine_with(&fs, opts).and_then(|e| e.open_shard(1, false).map(|s| (e, s)));
    let (engine, s) = match opened {
        Err(e) => return assert_eq!(e.status, keel::status::KEEL_STATUS_CORRUPTION, "{e}"),
        Ok(both) => both,
    };
    let after = s.last_version();
    let v = s.put(b"new", b"x").unwrap();
    assert!(v > acked, "version {v} handed out again: write k{N:02}.. was acknowledged at {acked}; the reopened shard is at {after} (damaged write {victim})");
    s.close().unwrap();
    engine.close().unwrap();
}

/// Value `i` of the commit-log damage test: a tag that names the write,
/// then filler. Small: no shard seals, asks for a flush or writes the WAL
/// frames it holds back (write-behind) to its file before the process dies.
fn small_tagged(i: usize) -> Vec<u8> {
    let mut v = format!("copy-{i:04}-").into_bytes();
    v.resize(120, b'.');
    v
}

/// Flips one byte of the value inside the commit log's copy of write `i`
/// (tagged by `small_tagged`), as bit rot in a synced frame would.
fn flip_in_commit_log(fs: &FaultFs, i: usize) {
    let dir = Path::new(ENGINE).join("commit-log");
    let tag = format!("copy-{i:04}-").into_bytes();
    for name in fs.list(&dir).unwrap().into_iter().filter(|n| keel::wal::parse_segment_name(n).is_some()) {
        let f = fs.open(&dir.join(&name), true).unwrap();
        let mut bytes = vec![0u8; f.len().unwrap() as usize];
        let got = f.read_up_to(&mut bytes, 0).unwrap();
        if let Some(at) = bytes[..got].windows(tag.len()).position(|w| w == tag.as_slice()) {
            let at = at + tag.len() + 20;
            f.write_at(&[&[bytes[at] ^ 0x10]], at as u64).unwrap();
            return;
        }
    }
    panic!("no copy of write {i} in the commit log");
}

/// Bit rot in one frame in the middle of the commit log, valid frames
/// after it: a normal engine open fails with CORRUPTION (a later frame
/// proves the damaged copy was durable, so it is no unsynced tail), and
/// its message says that a salvage open gets at the rest. The salvage
/// open then opened the commit log in the WAL's strict mode all the same
/// and failed just as the normal open did: the engine's data was out of
/// reach. Now it opens the commit log by salvage, restores every copy
/// before the damage, and the salvage report of every shard it lists
/// says which copies the commit log lost. Deterministic: each open's
/// first pass is waited for, after which nothing asks for a flush; the
/// shards' WALs hold their frames in memory (write-behind), so the
/// SIGKILL leaves their writes in the commit log only, except shard 4's,
/// which its close synced.
#[test]
fn a_damaged_copy_in_the_middle_of_the_commit_log_opens_by_salvage_and_is_reported() {
    let fs = FaultFs::new(1);
    let engine = engine_on(&fs).unwrap();
    let shards: Vec<Shard> = (0..5).map(|id| engine.open_shard(id, true).unwrap()).collect();
    for s in &shards {
        s.flush(true).unwrap();
    }
    let key = |i: usize| format!("k{i:02}");
    // Writes 0..20 and 30..40 go round robin to shards 0..3, writes
    // 20..30 to shard 4, which is closed before the last ten.
    let owner = |i: usize| if (20..30).contains(&i) { 4 } else { i % 4 };
    let mut acked = [0u64; 5];
    for i in 0..40 {
        acked[owner(i)] = shards[owner(i)].put(key(i).as_bytes(), &small_tagged(i)).unwrap();
        if i == 29 {
            shards[4].close().unwrap();
        }
    }
    // SIGKILL: the shard WALs' held frames die with the process.
    fs.halt();
    drop(shards);
    drop(engine);
    fs.resume();
    const DAMAGED: usize = 10;
    flip_in_commit_log(&fs, DAMAGED);

    let strict = engine_on(&fs).err().expect("a damaged copy with valid frames after it fails a normal open");
    assert_eq!(strict.status, keel::status::KEEL_STATUS_CORRUPTION, "{strict}");
    assert!(strict.message.contains("salvage"), "the error says how to open the engine anyway: {strict}");

    let salvage = Options { salvage: true, ..options(Steps::default()) };
    let engine = engine_with(&fs, salvage).unwrap_or_else(|e| panic!("the salvage open failed: {e}"));
    assert_eq!(engine.stats().unwrap().restored_frames, DAMAGED as u64, "every copy before the damage went back to its shard");
    let mut versions = Vec::new();
    for id in 0..5 {
        let s = engine.open_shard(id, false).unwrap();
        let report = s.recovery_report().to_string();
        assert!(report.contains("commit log") && report.contains("lost"), "shard {id}: the salvage report names the commit log's loss: {report:?}");
        for i in (0..40).filter(|&i| owner(i) == id as usize) {
            // Held by the commit log's surviving copies, or by the
            // shard's own WAL (shard 4): never lost.
            let kept = i < DAMAGED || id == 4;
            assert_eq!(value(&s, &key(i)).is_some(), kept, "shard {id} write {i} (damaged copy: write {DAMAGED})");
            if kept {
                assert_eq!(value(&s, &key(i)), Some(small_tagged(i)), "shard {id} write {i}");
            }
        }
        let after = s.put(b"after", format!("salvaged {id}").as_bytes()).unwrap();
        // The shard's WAL lost the versions of its writes from 10 on, and
        // so did the commit log: they are skipped, never handed out again.
        assert!(after > acked[id as usize], "shard {id}: version {after} after the salvage, {} acknowledged before", acked[id as usize]);
        versions.push(after);
        s.close().unwrap();
    }
    assert!(!fs.exists(&Path::new(ENGINE).join("commit-log.skip")).unwrap(), "every shard skipped: the count is removed");
    engine.close().unwrap();
    drop(engine); // lets go of the LOCK
    let dir = Path::new(ENGINE).join("commit-log");
    assert!(fs.list(&dir).unwrap().iter().any(|n| n.starts_with("salvaged-")), "the damaged segment is kept aside: {:?}", fs.list(&dir));

    // The engine is whole again: a normal open, reports empty, the
    // writes made after the salvage there.
    let engine = engine_on(&fs).unwrap_or_else(|e| panic!("the reopen after the salvage failed: {e}"));
    for id in 0..5 {
        let s = engine.open_shard(id, false).unwrap();
        assert!(s.recovery_report().is_empty(), "shard {id}: {}", s.recovery_report());
        let got = s.get(b"after").unwrap().unwrap();
        assert_eq!((got.value, got.version), (keel::shard::Value::Bytes(format!("salvaged {id}").into_bytes()), versions[id as usize]), "shard {id}");
        assert_eq!(s.put(b"again", b"x").unwrap(), versions[id as usize] + 1, "shard {id}: versions go on from there");
        s.close().unwrap();
    }
    engine.close().unwrap();
}

/// A salvage open that lost copies writes down how many versions every
/// shard must skip before it repairs the commit log, and removes the note
/// once each shard's WAL skipped them. A crash in between leaves the note:
/// the next open, salvage or not, makes every listed shard skip them,
/// whether or not the commit log gives it anything back.
#[test]
fn versions_a_cut_salvage_left_to_skip_are_skipped_at_the_next_open() {
    let fs = FaultFs::new(2);
    let engine = engine_on(&fs).unwrap();
    let mut last = Vec::new();
    for id in 0..3 {
        let s = engine.open_shard(id, true).unwrap();
        last.push(s.put(b"k", b"v").unwrap());
        s.close().unwrap();
    }
    engine.close().unwrap();
    drop(engine);
    let note = Path::new(ENGINE).join("commit-log.skip");
    keel::fs::replace(&fs, &note, b"1000").unwrap();
    let engine = engine_on(&fs).unwrap();
    assert!(!fs.exists(&note).unwrap(), "the note is removed once every shard skipped");
    for id in 0..3 {
        let s = engine.open_shard(id, false).unwrap();
        let v = s.put(b"k", b"w").unwrap();
        assert!(v > last[id as usize] + 1000, "shard {id}: version {v}, {} before the skip of 1000", last[id as usize]);
        s.close().unwrap();
    }
    engine.close().unwrap();
}

/// A create that a SIGKILL cut after the shard list took its id, before
/// the shard's first open wrote its manifest: the shard acknowledged
/// nothing, and the next open takes it as the new shard it is. But a
/// count of versions to skip that a cut salvage left (above) was written
/// into its WAL all the same, which then "held records" without a
/// manifest: opening the shard failed with CORRUPTION (a salvage open
/// would report its manifest lost). Such a shard skips nothing now.
#[test]
fn a_shard_whose_create_a_kill_cut_is_not_made_damaged_by_a_skip() {
    let faultfs = FaultFs::new(2);
    let fs = common::tripfs::TripFs::new(faultfs.clone(), format!("{ENGINE}/shards/5"));
    let engine = engine_on(&fs).unwrap();
    let s = engine.open_shard(1, true).unwrap();
    let last = s.put(b"k", b"v").unwrap();
    s.close().unwrap();
    fs.kill_at_sync.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(engine.open_shard(5, true).is_err(), "the create was cut by the kill");
    drop(engine);
    faultfs.resume(); // the next process after the SIGKILL
    let note = Path::new(ENGINE).join("commit-log.skip");
    keel::fs::replace(&faultfs, &note, b"1000").unwrap();
    let engine = engine_on(&fs).unwrap();
    assert_eq!(engine.list_shards().unwrap(), vec![1, 5]);
    let s = engine.open_shard(5, false).unwrap_or_else(|e| panic!("the shard whose create was cut: {e}"));
    assert!(s.recovery_report().is_empty(), "{}", s.recovery_report());
    assert_eq!(s.put(b"a", b"b").unwrap(), 1, "a new shard's first version");
    s.close().unwrap();
    let s = engine.open_shard(1, false).unwrap();
    assert!(s.put(b"k", b"w").unwrap() > last + 1000, "the written shard skipped");
    s.close().unwrap();
    engine.close().unwrap();
}

/// Dropping a shard takes a checkpoint, but its copies stay in the commit
/// log's active segment behind that checkpoint's record. Bit rot between
/// the two: a salvage open keeps the copies before the damage and sets
/// the record aside, and it gave the dropped shard's copies to the shard
/// created later under its id, which then held keys it never wrote. The
/// same when the drop ran in an engine opened without the commit log
/// (which takes no checkpoint). What the checkpoints covered is noted
/// outside the log now, and no copy at or below it goes back.
#[test]
fn a_salvage_gives_no_copy_of_a_dropped_shard_to_the_next_shard_of_its_id() {
    for drop_without_log in [false, true] {
        let fs = FaultFs::new(1);
        let engine = engine_on(&fs).unwrap();
        let old = engine.open_shard(1, true).unwrap();
        for i in 0..10 {
            old.put(format!("old{i}").as_bytes(), &small_tagged(i)).unwrap();
        }
        old.close().unwrap();
        let engine = match drop_without_log {
            false => engine,
            true => {
                engine.close().unwrap();
                drop(engine);
                engine_with(&fs, Options { durability: Durability::None, ..options(Steps::default()) }).unwrap()
            }
        };
        engine.drop_shard(1).unwrap();
        let new = engine.open_shard(1, true).unwrap();
        for i in 0..3 {
            new.put(format!("new{i}").as_bytes(), b"n").unwrap();
        }
        new.close().unwrap();
        engine.close().unwrap();
        drop(engine);
        flip_in_commit_log(&fs, 6);
        let salvage = Options { salvage: true, ..options(Steps::default()) };
        let engine = engine_with(&fs, salvage).unwrap_or_else(|e| panic!("the salvage open failed: {e}"));
        let s = engine.open_shard(1, false).unwrap();
        let keys: Vec<String> = s.scan(b"", None).unwrap().map(|r| String::from_utf8(r.unwrap().0).unwrap()).collect();
        assert_eq!(keys, ["new0", "new1", "new2"], "drop without the commit log: {drop_without_log}");
        s.close().unwrap();
        engine.close().unwrap();
    }
}

/// The note of what a drop's checkpoint covered names sequence numbers of
/// the commit log it was taken in: a commit log made anew (its folder
/// gone after a clean close, which only a salvage open takes) numbers
/// from 1 again, and its copies of acknowledged writes still go back.
/// The engine is one an older keel left, without the commit log's
/// marker: the note alone says the folder is lost.
#[test]
fn a_commit_log_made_anew_is_not_held_to_the_last_ones_note() {
    let fs = FaultFs::new(1);
    let engine = engine_on(&fs).unwrap();
    for id in [1, 2] {
        let s = engine.open_shard(id, true).unwrap();
        for i in 0..20 {
            s.put(format!("k{i}").as_bytes(), b"v").unwrap();
        }
        s.close().unwrap();
    }
    engine.drop_shard(2).unwrap();
    engine.close().unwrap();
    drop(engine);
    assert!(fs.exists(&Path::new(ENGINE).join("commit-log.covered")).unwrap());
    fs.remove(&Path::new(ENGINE).join("commit-log.made")).unwrap();
    fs.remove_dir_all(&Path::new(ENGINE).join("commit-log")).unwrap();
    let strict = engine_on(&fs).err().expect("the note says the engine had a commit log");
    assert!(strict.status == keel::status::KEEL_STATUS_CORRUPTION && strict.message.contains("commit-log.covered"), "{strict}");
    let engine = engine_with(&fs, Options { salvage: true, ..options(Steps::default()) }).unwrap();
    let s = engine.open_shard(1, false).unwrap();
    s.flush(true).unwrap();
    for i in 0..5 {
        s.put(format!("new{i}").as_bytes(), b"n").unwrap();
    }
    // SIGKILL: the shard WAL's held frames die with the process.
    fs.halt();
    drop(s);
    drop(engine);
    fs.resume();
    let engine = engine_on(&fs).unwrap();
    let s = engine.open_shard(1, false).unwrap();
    let lost: Vec<usize> = (0..5).filter(|i| value(&s, &format!("new{i}")).is_none()).collect();
    assert!(lost.is_empty(), "acknowledged writes {lost:?} lost");
    s.close().unwrap();
    engine.close().unwrap();
}

/// A salvage open that lost copies of the commit log and then failed (a
/// shard's WAL could not take back its frames: EIO) has already repaired
/// the log: the open that retries it finds it whole. It still skipped
/// versions (the note a cut salvage leaves), but no shard's report said
/// what the commit log lost: the loss went unreported.
#[test]
fn a_salvage_open_that_failed_still_reports_the_loss_when_retried() {
    let faultfs = FaultFs::new(1);
    let fs = common::tripfs::TripFs::new(faultfs.clone(), format!("{ENGINE}/shards/1/wal"));
    let engine = engine_on(&fs).unwrap();
    let shards: Vec<Shard> = (0..2).map(|id| engine.open_shard(id, true).unwrap()).collect();
    for s in &shards {
        s.flush(true).unwrap();
    }
    for i in 0..20 {
        shards[i % 2].put(format!("k{i:02}").as_bytes(), &small_tagged(i)).unwrap();
    }
    // SIGKILL: the shard WALs' held frames die with the process.
    faultfs.halt();
    drop(shards);
    drop(engine);
    faultfs.resume();
    flip_in_commit_log(&faultfs, 10);
    let salvage = Options { salvage: true, ..options(Steps::default()) };
    fs.fail_writes.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = Engine::open_with_fs(Path::new(ENGINE), salvage.clone(), Arc::new(fs.clone()));
    assert!(failed.is_err(), "shard 1's WAL cannot take its frames back");
    drop(failed);
    fs.fail_writes.store(false, std::sync::atomic::Ordering::SeqCst);
    let engine = Engine::open_with_fs(Path::new(ENGINE), salvage, Arc::new(fs.clone())).unwrap_or_else(|e| panic!("the retried salvage open: {e}"));
    for id in 0..2 {
        let s = engine.open_shard(id, false).unwrap();
        let report = s.recovery_report().to_string();
        assert!(report.contains("commit log"), "shard {id}: the report names the commit log's loss: {report:?}");
        s.close().unwrap();
    }
    engine.close().unwrap();
}

/// A shard whose `wal/` folder is lost while its manifest exists is
/// CORRUPTION, and the folder "is not made again" (docs/STORAGE.md). The
/// commit log's restore opened that WAL all the same, which made it
/// anew, and the shard then opened with an empty report, as if nothing
/// had been lost: with versions to skip (a cut salvage's note), and with
/// copies from its first version on, which went into the new WAL (copies
/// are not the whole log: a frame too large for the commit log has none).
/// The restore makes no WAL for it now, and refuses to give copies to it.
#[test]
fn the_commit_logs_restore_does_not_make_a_lost_shard_wal_again() {
    let wal = Path::new(ENGINE).join("shards/1/wal");
    for copies in [false, true] {
        let fs = FaultFs::new(1);
        let engine = engine_on(&fs).unwrap();
        let s = engine.open_shard(1, true).unwrap();
        s.flush(true).unwrap();
        for i in 0..10 {
            s.put(format!("k{i}").as_bytes(), b"v").unwrap();
        }
        if copies {
            // SIGKILL: the writes are in the commit log's copies.
            fs.halt();
            drop(s);
            drop(engine);
            fs.resume();
        } else {
            s.flush(true).unwrap();
            s.close().unwrap();
            engine.close().unwrap();
            drop(engine);
            keel::fs::replace(&fs, &Path::new(ENGINE).join("commit-log.skip"), b"1000").unwrap();
        }
        fs.remove_dir_all(&wal).unwrap();
        let lost = match engine_on(&fs) {
            Ok(engine) => engine.open_shard(1, false).err().expect("a shard whose WAL was lost does not open"),
            Err(e) => e,
        };
        assert_eq!(lost.status, keel::status::KEEL_STATUS_CORRUPTION, "{lost}");
        assert!(lost.message.contains("WAL was lost"), "copies {copies}: {lost}");
        assert!(!fs.exists(&wal).unwrap(), "copies {copies}: the lost WAL was made again");
    }
}

/// The commit log's folder lost after a SIGKILL (deleted, or left behind
/// by an operator copying the engine's directory): the writes only its
/// copies held went with it. The next open made a new, empty commit log
/// silently: the writes were gone, no salvage report said so, and the
/// shards handed their versions out again. Now a normal open fails with
/// CORRUPTION naming the folder, and a salvage open makes it anew, says
/// in every listed shard's salvage report what was lost and skips the
/// versions, as a salvage of a damaged commit log does.
#[test]
fn a_lost_commit_log_folder_fails_the_open_and_a_salvage_reports_it() {
    lose_the_commit_log(|fs| fs.remove_dir_all(&Path::new(ENGINE).join("commit-log")).unwrap());
}

/// The same with the folder left but emptied (its files deleted): the
/// open took it for a log never made, and made one in it silently.
#[test]
fn an_emptied_commit_log_folder_is_lost_too() {
    lose_the_commit_log(|fs| {
        let dir = Path::new(ENGINE).join("commit-log");
        for name in fs.list(&dir).unwrap() {
            fs.remove(&dir.join(name)).unwrap();
        }
    });
}

/// Writes acknowledged through the commit log only, then `lose` takes
/// the log; see `a_lost_commit_log_folder_fails_the_open_and_a_salvage_reports_it`.
fn lose_the_commit_log(lose: impl Fn(&FaultFs)) {
    let fs = FaultFs::new(1);
    let engine = engine_on(&fs).unwrap();
    let shards: Vec<Shard> = (0..2).map(|id| engine.open_shard(id, true).unwrap()).collect();
    for s in &shards {
        s.flush(true).unwrap();
    }
    let mut acked = [0u64; 2];
    for i in 0..10 {
        acked[i % 2] = shards[i % 2].put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    // SIGKILL: the shard WALs' held frames die with the process; their
    // writes are in the commit log only.
    fs.halt();
    drop(shards);
    drop(engine);
    fs.resume();
    lose(&fs);

    let strict = match engine_on(&fs) {
        Err(e) => e,
        Ok(engine) => {
            // What the silent open gave up, for the failure message.
            let s = engine.open_shard(0, false).unwrap();
            let missing: Vec<usize> = (0..10).step_by(2).filter(|i| value(&s, &format!("k{i}")).is_none()).collect();
            let report = s.recovery_report().to_string();
            let next = s.put(b"next", b"x").unwrap();
            panic!("the open made a new commit log silently: shard 0 lost acknowledged writes {missing:?}, its report says {report:?}, and its next version {next} was handed out before (acknowledged up to {})", acked[0]);
        }
    };
    assert_eq!(strict.status, keel::status::KEEL_STATUS_CORRUPTION, "{strict}");
    assert!(strict.message.contains("commit-log") && strict.message.contains("salvage"), "the error names the folder and says how to open anyway: {strict}");

    let salvage = Options { salvage: true, ..options(Steps::default()) };
    let engine = engine_with(&fs, salvage).unwrap_or_else(|e| panic!("the salvage open failed: {e}"));
    let mut versions = Vec::new();
    for id in 0..2 {
        let s = engine.open_shard(id, false).unwrap();
        let report = s.recovery_report().to_string();
        assert!(report.contains("commit log") && report.contains("missing"), "shard {id}: the salvage report names the commit log's loss: {report:?}");
        let after = s.put(b"after", b"x").unwrap();
        assert!(after > acked[id as usize], "shard {id}: version {after} after the salvage, {} acknowledged before", acked[id as usize]);
        versions.push(after);
        s.close().unwrap();
    }
    assert!(!fs.exists(&Path::new(ENGINE).join("commit-log.skip")).unwrap(), "every shard skipped: the count is removed");
    engine.close().unwrap();
    drop(engine);

    // Whole again: a normal open, reports empty, versions go on.
    let engine = engine_on(&fs).unwrap_or_else(|e| panic!("the reopen after the salvage failed: {e}"));
    for id in 0..2 {
        let s = engine.open_shard(id, false).unwrap();
        assert!(s.recovery_report().is_empty(), "shard {id}: {}", s.recovery_report());
        assert_eq!(s.put(b"again", b"x").unwrap(), versions[id as usize] + 1, "shard {id}");
        s.close().unwrap();
    }
    engine.close().unwrap();
}

/// An engine that never needed a commit log has neither it nor its
/// marker, and opens as before, in `sync` durability too, which makes
/// both. One an older keel left has the folder without the marker: it
/// opens and is given one, so a folder lost later is told apart from a
/// log never made.
#[test]
fn engines_without_the_commit_logs_marker_open_and_are_given_one() {
    let fs = FaultFs::new(1);
    let (log, marker) = (Path::new(ENGINE).join("commit-log"), Path::new(ENGINE).join("commit-log.made"));
    let session = |opts: Options| {
        let engine = engine_with(&fs, opts).unwrap_or_else(|e| panic!("the engine did not open: {e}"));
        let s = engine.open_shard(1, true).unwrap();
        s.put(b"k", b"v").unwrap();
        s.close().unwrap();
        engine.close().unwrap();
    };
    session(Options { durability: Durability::None, ..options(Steps::default()) });
    assert!(!fs.exists(&log).unwrap() && !fs.exists(&marker).unwrap(), "no commit log in `none` durability");
    session(options(Steps::default()));
    assert!(fs.exists(&log).unwrap() && fs.exists(&marker).unwrap(), "the first `sync` open makes the log and its marker");
    fs.remove(&marker).unwrap();
    session(options(Steps::default()));
    assert!(fs.exists(&marker).unwrap(), "an older keel's engine is given the marker");
    fs.remove_dir_all(&log).unwrap();
    let strict = engine_on(&fs).err().expect("the marker says the engine had a commit log");
    assert!(strict.status == keel::status::KEEL_STATUS_CORRUPTION && strict.message.contains("commit-log.made"), "{strict}");
}
