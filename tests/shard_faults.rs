//! Shards on the fault-injecting file system (tests/common/faultfs.rs),
//! segment files and WAL alike: seeded workloads of puts, appends, deletes
//! and batches with frequent seals, merges and flushes; EIO and ENOSPC on
//! writes, fdatasync, renames, directory syncs and creates; then a
//! simulated power loss (unsynced data dropped or torn, directory entries
//! not synced forgotten) and a reopen. Every write that returned OK (SYNC
//! durability) must be there, the one that failed must be there whole or
//! not at all, and nothing else.
//!
//! `KEEL_SHARD_FAULT_SEEDS=N` sets the number of seeds (default 300);
//! `KEEL_SHARD_FAULT_SEED=S` replays one.

mod common;

use common::faultfs::{FaultFs, Faults};
use common::rng::Rng;
use common::shard_model::{apply, Model};
use keel::shard::{Op, Options, Shard};
use keel::wal::Durability;
use std::path::Path;
use std::sync::Arc;


fn options() -> Options {
    Options {
        durability: Durability::Sync,
        wal_segment_size: 64 << 10,
        flush_interval: None,
        seal_bytes: 4096,
        max_sealed: 2,
        unordered_flush_seed: None,
        replay_run_bytes: 512,
        salvage: false,
    }
}

fn random_batch(rng: &mut Rng, n: u64) -> Vec<Op> {
    let count = if rng.chance(150) { 2 + rng.below(3) } else { 1 };
    (0..count)
        .map(|j| {
            let k = rng.below(30);
            let deleting = rng.chance(80);
            if k < 10 {
                let key = format!("v{k:02}").into_bytes();
                match deleting {
                    true => Op::Delete { key },
                    false => Op::Put { key, value: format!("{n}.{j}:{}", "x".repeat(rng.below(120) as usize)).into_bytes() },
                }
            } else {
                let key = format!("p{k:02}").into_bytes();
                match deleting {
                    true => Op::Delete { key },
                    false => Op::Append { key, item: format!("{n}.{j}").into_bytes() },
                }
            }
        })
        .collect()
}


fn state(s: &Shard) -> Result<Model, String> {
    s.scan(b"", None).map_err(|e| e.to_string())?.map(|r| r.map(|(k, e)| (k, e.value)).map_err(|e| e.to_string())).collect()
}

fn run_seed(seed: u64) -> Result<(), String> {
    let fs = FaultFs::new(seed);
    let mut rng = Rng::new(seed ^ 0x5eed_f417);
    let dir = Path::new("/keel/shard");
    let mut model = Model::new();
    let mut maybe: Option<Vec<Op>> = None;
    let mut n = 0;
    for round in 0..5 {
        fs.set_faults(Faults::default());
        let shard = Shard::open_with_fs(dir, options(), Arc::new(fs.clone()))
            .map_err(|e| format!("round {round}: reopen failed: {e}"))?;
        let got = state(&shard).map_err(|e| format!("round {round}: reading: {e}"))?;
        if let Some(ops) = maybe.take() {
            let mut with = model.clone();
            apply(&mut with, &ops);
            if got == with {
                model = with;
            }
        }
        if got != model {
            let lost: Vec<_> = model.keys().filter(|k| got.get(*k) != model.get(*k)).map(|k| String::from_utf8_lossy(k).into_owned()).collect();
            let extra: Vec<_> = got.keys().filter(|k| !model.contains_key(*k)).map(|k| String::from_utf8_lossy(k).into_owned()).collect();
            return Err(format!("round {round}: recovered state differs: wrong or missing {lost:?}, phantom {extra:?}; injected {:?}", fs.injected()));
        }
        if rng.chance(600) {
            fs.set_faults(Faults {
                eio_write: rng.below(4),
                eio_sync: rng.below(4),
                eio_rename: rng.below(20),
                eio_sync_dir: rng.below(20),
                nospace_create: rng.below(20),
                nospace_allocate: rng.below(4),
            });
        }
        // Some rounds write nothing: the next open replays a WAL that a
        // replay already applied (replay must be idempotent).
        let writes = if rng.chance(150) { 0 } else { 50 + rng.below(250) };
        for _ in 0..writes {
            n += 1;
            let ops = random_batch(&mut rng, n);
            match shard.write(&ops) {
                Ok(_) => apply(&mut model, &ops),
                Err(_) => {
                    maybe = Some(ops);
                    break;
                }
            }
            if rng.chance(60) {
                let _ = shard.flush(true); // may fail under faults: nothing is acked then
            }
        }
        // The process dies: nothing it does from here reaches the disk.
        fs.halt();
        let _ = shard.close();
        fs.crash();
    }
    Ok(())
}

#[test]
fn acknowledged_writes_survive_faults_and_power_loss() {
    let (first, count) = match std::env::var("KEEL_SHARD_FAULT_SEED") {
        Ok(s) => (s.parse().unwrap(), 1),
        Err(_) => (1, std::env::var("KEEL_SHARD_FAULT_SEEDS").map_or(300, |n| n.parse().unwrap())),
    };
    for seed in first..first + count {
        if let Err(e) = run_seed(seed) {
            panic!("seed {seed}: {e}\nreplay: KEEL_SHARD_FAULT_SEED={seed} cargo test --test shard_faults");
        }
    }
}
