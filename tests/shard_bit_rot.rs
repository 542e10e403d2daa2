//! One byte of a shard's own files flipped (every file kind, a seeded
//! sample of offsets, each case printed so that it replays with
//! `KEEL_BIT_ROT_SEED`), then a normal open and a salvage open. A normal
//! open fails with CORRUPTION or opens with exactly the data (a read of the
//! damaged part may fail with CORRUPTION, never answer wrongly); a salvage
//! open opens. Then the damage a read meets later: at replay, in a merge.

mod common;

use common::rng::Rng;
use common::TempDir;
use keel::shard::{Entry, Fence, Op, Options, Shard};
use keel::status::*;
use keel::wal::Durability;
use std::path::{Path, PathBuf};

fn options() -> Options {
    Options {
        durability: Durability::None,
        wal_segment_size: 64 << 10,
        flush_interval: None,
        seal_bytes: 8 << 10,
        max_sealed: 8,
        ..Options::default()
    }
}

fn seg_dir(dir: &Path) -> PathBuf {
    dir.join("segments")
}

/// Tables with side-cars holding deletions, an appendable log with values,
/// a posting list and tombstones, a state file, replicated state in the
/// manifest, and a WAL that no longer holds the tables' writes.
fn fixture(dir: &Path) {
    let s = Shard::open(dir, options()).unwrap();
    for i in 0..300u64 {
        s.put(format!("key{i:04}").as_bytes(), &[b'v'; 500]).unwrap();
        if i % 50 == 49 {
            s.flush(true).unwrap();
            s.flush(true).unwrap();
        }
    }
    for i in (0..300).step_by(15) {
        s.delete(format!("key{i:04}").as_bytes()).unwrap();
    }
    for i in 1..=10u64 {
        let fence = Some(Fence { bucket: b"b".to_vec(), token: i });
        s.apply(i, &[Op::Append { key: b"list".to_vec(), item: format!("item{i}").into_bytes() }], fence).unwrap();
    }
    s.put(b"zz-here", b"in the log").unwrap();
    s.delete(b"zz-here").unwrap();
    s.put(b"zz-kept", b"in the log").unwrap();
    s.flush(true).unwrap();
    s.flush(true).unwrap();
    s.close().unwrap();
}

#[derive(Debug, PartialEq)]
struct State {
    keys: Vec<(Vec<u8>, Entry)>,
    applied: u64,
    fence: Option<u64>,
}

/// What the open shard holds; Err when a read reports the damage.
fn state(s: &Shard) -> keel::Result<State> {
    let keys = s.scan(b"", None)?.collect::<keel::Result<Vec<_>>>()?;
    for (k, e) in &keys {
        match s.get(k)? {
            Some(got) if &got == e => {}
            other => panic!("get({}) = {other:?}, scan said {e:?}", String::from_utf8_lossy(k)),
        }
    }
    Ok(State { keys, applied: s.applied_index(), fence: s.fence_highest(b"b") })
}

fn seg_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(seg_dir(dir)).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    v.sort();
    v
}

#[test]
fn one_flipped_byte_in_any_segment_file_is_caught_or_harmless() {
    sweep("segments", true, false);
    sweep("segments", true, true);
}

/// The same over the shard's WAL files (normal open only: a salvage open
/// does not promise to open a refused WAL).
#[test]
fn one_flipped_byte_in_any_wal_file_is_caught_or_harmless() {
    sweep("wal", false, false);
    sweep("wal", false, true);
}

/// `fixture`, then writes only the WAL holds (the process dies before
/// their flush): puts over table keys, appends with fences, deletes.
fn fixture_with_wal_tail(dir: &Path) {
    fixture(dir);
    let hook = std::sync::Arc::new(DieAtPass::default());
    let s = Shard::open(dir, Options { steps: keel::shard::Steps::new(hook.clone()), ..options() }).unwrap();
    for i in (0..300).step_by(7) {
        s.put(format!("key{i:04}").as_bytes(), format!("late{i}").as_bytes()).unwrap();
    }
    for i in 11..=20u64 {
        let fence = Some(Fence { bucket: b"b".to_vec(), token: i });
        s.apply(i, &[Op::Append { key: b"list".to_vec(), item: format!("item{i}").into_bytes() }], fence).unwrap();
    }
    for i in (3..300).step_by(11) {
        s.delete(format!("key{i:04}").as_bytes()).unwrap();
    }
    hook.die.store(true, std::sync::atomic::Ordering::Release);
    let _ = s.close();
}

fn sweep(sub: &str, salvage: bool, tail: bool) {
    let template = TempDir::new("bit-rot-template");
    match tail {
        true => fixture_with_wal_tail(template.path()),
        false => fixture(template.path()),
    }
    let want = {
        // On a copy: an open's first pass persists what it replayed.
        let copy = TempDir::new("bit-rot-want");
        common::copy_tree(template.path(), copy.path());
        let s = Shard::open(copy.path(), options()).unwrap();
        let st = state(&s).unwrap();
        s.close().unwrap();
        st
    };
    let n = if tail { 20 } else { 10 };
    assert!(want.keys.len() > 200 && want.applied == n && want.fence == Some(n), "{:?}", (want.keys.len(), want.applied, want.fence));
    eprintln!("sweep {sub}, WAL tail {tail}");
    let seed: u64 = std::env::var("KEEL_BIT_ROT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let per_file: usize = std::env::var("KEEL_BIT_ROT_PER_FILE").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
    let mut rng = Rng::new(seed);
    let mut failures = Vec::new();
    let mut all: Vec<PathBuf> =
        std::fs::read_dir(template.path().join(sub)).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    all.sort();
    for file in all {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let len = std::fs::metadata(&file).unwrap().len();
        if len == 0 {
            continue;
        }
        let mut offsets: Vec<u64> = (0..per_file).map(|_| rng.below(len)).collect();
        offsets.extend((0..len.min(20)).chain(len.saturating_sub(20)..len));
        offsets.sort();
        offsets.dedup();
        for off in offsets {
            let mask = 1 + rng.below(255) as u8;
            let case = format!("seed {seed}: {name} byte {off} ^= {mask:#04x}");
            let dir = TempDir::new("bit-rot-case");
            common::copy_tree(template.path(), dir.path());
            let target = dir.path().join(sub).join(&name);
            let mut bytes = std::fs::read(&target).unwrap();
            bytes[off as usize] ^= mask;
            std::fs::write(&target, &bytes).unwrap();
            match Shard::open(dir.path(), options()) {
                Err(e) if e.status == KEEL_STATUS_CORRUPTION => {}
                Err(e) => failures.push(format!("{case}: normal open: {e} (status {})", e.status)),
                Ok(s) => {
                    match state(&s) {
                        Ok(got) if got == want => {}
                        Ok(got) => failures.push(format!(
                            "{case}: normal open succeeded with other data: {} keys (want {}), applied {} fence {:?}",
                            got.keys.len(),
                            want.keys.len(),
                            got.applied,
                            got.fence
                        )),
                        Err(e) if e.status == KEEL_STATUS_CORRUPTION => {}
                        Err(e) => failures.push(format!("{case}: read after a normal open: {e}")),
                    }
                    let _ = s.close();
                }
            }
            if !salvage {
                continue;
            }
            match Shard::open(dir.path(), Options { salvage: true, ..options() }) {
                Ok(s) => {
                    let _ = s.close();
                }
                Err(e) => failures.push(format!("{case}: salvage open failed: {e} (status {})", e.status)),
            }
        }
    }
    for f in &failures {
        eprintln!("{f}");
    }
    assert!(failures.is_empty(), "{} of the damaged cases misbehaved (listed above)", failures.len());
}

/// Holds every flush pass at its start until `die` is set, then fails it
/// there: what a crash leaves (tests/shard_corruption.rs has the same).
#[derive(Default)]
struct DieAtPass {
    die: std::sync::atomic::AtomicBool,
}

impl keel::shard::StepHook for DieAtPass {
    fn at(&self, step: keel::shard::Step) {
        if step == keel::shard::Step::PassStart {
            while !self.die.load(std::sync::atomic::Ordering::Acquire) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            panic!("the process dies before the pass");
        }
    }
}

/// Flips the first value byte after `key` in the table that holds it.
fn damage_block_of(dir: &Path, key: &[u8]) -> PathBuf {
    let mut pattern = key.to_vec();
    pattern.push(b'v');
    for t in seg_files(dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "sst")) {
        let mut bytes = std::fs::read(&t).unwrap();
        if let Some(at) = bytes.windows(pattern.len()).position(|w| w == pattern.as_slice()) {
            bytes[at + key.len()] ^= 0x01;
            std::fs::write(&t, &bytes).unwrap();
            return t;
        }
    }
    panic!("no table holds {}", String::from_utf8_lossy(key));
}

/// One flipped byte in a table block holding a key the WAL still has a
/// later write of. A normal open does not read the block, but replay's
/// version gate does: CORRUPTION. A salvage open checks every block of
/// every table, so it finds the table damaged before replay, moves it
/// aside, reports it and opens the rest.
#[test]
fn salvage_opens_a_shard_whose_damaged_table_block_meets_the_replay() {
    let dir = TempDir::new("bit-rot-block-replay");
    fixture(dir.path());
    let hook = std::sync::Arc::new(DieAtPass::default());
    let dying = Options { steps: keel::shard::Steps::new(hook.clone()), ..options() };
    let s = Shard::open(dir.path(), dying).unwrap();
    s.put(b"key0001", b"newer").unwrap(); // in the WAL only
    hook.die.store(true, std::sync::atomic::Ordering::Release);
    let _ = s.close(); // the final pass never runs: a crash
    let table = damage_block_of(dir.path(), b"key0001");
    eprintln!("damaged a block of {}", table.display());
    match Shard::open(dir.path(), options()) {
        Err(e) => assert_eq!(e.status, KEEL_STATUS_CORRUPTION, "{e}"),
        Ok(s) => {
            let _ = s.close();
        }
    }
    let s = Shard::open(dir.path(), Options { salvage: true, ..options() })
        .unwrap_or_else(|e| panic!("salvage open of a shard with one damaged table block: {e} (status {})", e.status));
    let report = s.recovery_report().to_string();
    assert!(report.contains(&table.file_name().unwrap().to_string_lossy().into_owned()), "{report}");
    assert_eq!(s.get(b"key0001").unwrap().map(|e| e.value), Some(keel::shard::Value::Bytes(b"newer".to_vec())), "{report}");
    s.close().unwrap();
}

fn temporaries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(seg_dir(dir)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.ends_with(".tmp")).collect();
    v.sort();
    v
}

/// A merge that meets a damaged table block fails (CORRUPTION, in the
/// shard's health) and removes its half-written `seg-<new id>.sst.tmp`:
/// every retry takes a new segment id, so leftovers would pile up, one per
/// flush job, until the next open.
#[test]
fn a_failing_merge_leaves_no_temporary_table_behind() {
    let dir = TempDir::new("bit-rot-merge-tmp");
    fixture(dir.path());
    damage_block_of(dir.path(), b"key0001");
    // More tables than max_sealed: every job after a pass merges them all.
    let s = Shard::open(dir.path(), Options { max_sealed: 1, ..options() }).unwrap();
    for round in 0..5 {
        s.put(format!("round{round}").as_bytes(), b"x").unwrap();
        s.flush(true).unwrap();
    }
    s.flush(true).unwrap(); // waits for the last job's merge
    let health = s.background_error();
    s.close().unwrap_or_else(|e| eprintln!("close: {e}")); // no job runs past it
    let left = temporaries(dir.path());
    eprintln!("health: {health:?}");
    assert_eq!(health.map(|e| e.status), Some(KEEL_STATUS_CORRUPTION), "the merge met the damaged block");
    assert!(left.is_empty(), "failed merges left {} temporary tables: {left:?}", left.len());
}
