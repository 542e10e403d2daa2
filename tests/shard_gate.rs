//! The shard's write gate (docs/STORAGE.md, "The write gate"): many
//! writers on one shard, real threads and files.
//!
//! - `concurrent_writers_*`: writer threads (8, or 48 for crowds) and
//!   reader threads on one shard while its flush seals and merges. Readers see every batch whole
//!   or not at all; the versions the writers get are dense; applying every
//!   batch in version order to a model gives exactly the shard, before and
//!   after a close and reopen.
//! - `a_refused_batch_leaves_its_group_alone`: writers lined up behind
//!   `Shard::under_gate` in a known order lead as one group; the batch the
//!   key checks refuse (an append to a value, judged with the batches
//!   before it in the group) gets WRONG_KIND and no version, its
//!   neighbours get consecutive versions in queue order.
//! - `a_group_counts_its_appends_against_the_list_limit`: likewise, a
//!   batch that takes a posting list past its limit only with the appends
//!   of the batches before it in the group gets INVALID_ARGUMENT, and a
//!   refused batch's appends do not count for the ones after it.
//! - `concurrent_writers_survive_kill9`: a child process runs writer
//!   threads and reports every acknowledged batch; the parent kills it
//!   with SIGKILL after a seeded number of acknowledgements, reopens, and
//!   checks that every thread's keys hold exactly its first n batches
//!   (every acknowledged one, and at most the one in flight) and that the
//!   versions are dense. A failure prints `KEEL_SHARD_GATE_SEED=S`, which
//!   replays the seeds (the kill moment follows the machine's timing).

mod common;

use common::child::{self, report};
use common::rng::Rng;
use common::shard_model::{apply, Model};
use common::TempDir;
use keel::shard::{Op, Options, Shard, Value};
use keel::status::{KEEL_STATUS_INVALID_ARGUMENT, KEEL_STATUS_WRONG_KIND};
use keel::wal::Durability;
use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

const CHILD_ENV: &str = "KEEL_SHARD_GATE_CHILD";

/// A shard that flushes, seals and merges while it is written, with WAL
/// segments small enough to rotate often.
fn options(durability: Durability) -> Options {
    Options {
        durability,
        wal_segment_size: 1 << 20,
        flush_interval: Some(Duration::from_millis(3)),
        seal_bytes: 48 << 10,
        max_sealed: 3,
        ..Options::default()
    }
}

/// The three keys every batch of writer `t` stamps with `t:i`: a reader
/// that sees them differ saw part of a batch.
fn stamp_keys(t: u64) -> [Vec<u8>; 3] {
    ["a", "b", "c"].map(|k| format!("s/{t}/{k}").into_bytes())
}

/// Batch `i` of writer `t`: the stamp, then 0..=3 seeded operations on
/// value keys (put, delete) and posting keys (append, delete), so that no
/// batch is ever refused. `shared`: on keys every writer uses (their final
/// state depends on the version order); otherwise on the writer's own.
/// One batch in 40 carries a value of 64..320 KiB, so groups meet the
/// gate's frame limit.
fn batch(seed: u64, t: u64, i: u64, shared: bool) -> Vec<Op> {
    let mut r = Rng::new(seed ^ t.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let stamp = format!("{t}:{i}").into_bytes();
    let mut ops: Vec<Op> = stamp_keys(t).into_iter().map(|key| Op::Put { key, value: stamp.clone() }).collect();
    let space = if shared { "x".to_string() } else { t.to_string() };
    for j in 0..r.below(4) {
        let k = r.below(8);
        let deleting = r.chance(150);
        let op = if k < 4 {
            let key = format!("v/{space}/{k}").into_bytes();
            match deleting {
                true => Op::Delete { key },
                false if r.chance(25) => Op::Put { key, value: vec![b'L'; (64 << 10) + r.below(256 << 10) as usize] },
                false => Op::Put { key, value: format!("{t}:{i}:{j}").into_bytes() },
            }
        } else {
            let key = format!("p/{space}/{k}").into_bytes();
            match deleting {
                true => Op::Delete { key },
                false => Op::Append { key, item: format!("{t}:{i}:{j}").into_bytes() },
            }
        };
        ops.push(op);
    }
    ops
}

fn scanned(s: &Shard) -> Model {
    s.scan(b"", None).unwrap().map(|r| r.map(|(k, e)| (k, e.value))).collect::<keel::Result<_>>().unwrap()
}

/// Writer `t`'s batch index from a stamp `t:i`.
fn stamp_index(v: &Value) -> u64 {
    match v {
        Value::Bytes(b) => std::str::from_utf8(b).unwrap().split(':').nth(1).unwrap().parse().unwrap(),
        Value::Posting(_) => panic!("a stamp key holds a posting list"),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().expect(name))
}

fn seed() -> u64 {
    let s = env_u64("KEEL_SHARD_GATE_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000_000
    });
    eprintln!("KEEL_SHARD_GATE_SEED={s}");
    s
}

/// Readers of a shard being written: every read sees each writer's stamp
/// keys equal (a batch whole or not at all) and never older than an
/// earlier read saw. Returns how many reads each made.
fn read_while(shard: &Shard, writers: u64, done: &AtomicBool, seed: u64) -> u64 {
    let mut r = Rng::new(seed);
    let mut seen = vec![0u64; writers as usize];
    let mut reads = 0;
    while !done.load(Ordering::Acquire) {
        let t = r.below(writers);
        let keys = stamp_keys(t);
        let got: Vec<Option<Value>> = if r.chance(500) {
            let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
            shard.multi_get(&refs).unwrap().into_iter().map(|e| e.map(|e| e.value)).collect()
        } else {
            let m: HashMap<Vec<u8>, Value> = shard.scan_prefix(format!("s/{t}/").as_bytes()).unwrap().map(|r| r.unwrap()).map(|(k, e)| (k, e.value)).collect();
            keys.iter().map(|k| m.get(k).cloned()).collect()
        };
        assert!(got.iter().all(|v| *v == got[0]), "writer {t}'s batch seen in part: {got:?}");
        if let Some(v) = &got[0] {
            let i = stamp_index(v) + 1;
            assert!(i >= seen[t as usize], "writer {t}: batch {} seen after {}", i - 1, seen[t as usize] - 1);
            seen[t as usize] = i;
        }
        reads += 1;
    }
    reads
}

fn concurrent_writers(durability: Durability, writers: u64, batches: u64) {
    let seed = seed();
    let tmp = TempDir::new("shard-gate");
    let shard = Shard::open(tmp.path(), options(durability)).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|n| {
            let (s, done) = (shard.clone(), done.clone());
            thread::spawn(move || read_while(&s, writers, &done, seed ^ n))
        })
        .collect();
    let handles: Vec<_> = (0..writers)
        .map(|t| {
            let s = shard.clone();
            thread::spawn(move || {
                (0..batches)
                    .map(|i| {
                        let ops = batch(seed, t, i, true);
                        let (first, last) = s.write(&ops).unwrap();
                        (first, last, ops)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<(u64, u64, Vec<Op>)> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    done.store(true, Ordering::Release);
    for r in readers {
        r.join().unwrap();
    }
    // Dense: the batches' version ranges, in order, tile 1..=total.
    all.sort_by_key(|b| b.0);
    let mut model = Model::new();
    let mut next = 1;
    for (first, last, ops) in &all {
        assert_eq!((*first, *last), (next, next + ops.len() as u64 - 1), "versions are dense, one per operation");
        next = last + 1;
        apply(&mut model, ops);
    }
    let total = next - 1;
    assert_eq!(shard.last_version(), total);
    assert!(scanned(&shard) == model, "the shard is the batches applied in version order");
    shard.close().unwrap();
    let shard = Shard::open(tmp.path(), options(durability)).unwrap();
    assert_eq!(shard.last_version(), total);
    assert!(scanned(&shard) == model, "a reopen gives the same state");
    shard.close().unwrap();
}

#[test]
fn concurrent_writers_sync() {
    concurrent_writers(Durability::Sync, 8, 150);
}

/// More writers than a crowd (docs/STORAGE.md, "Crowds"): groups woken
/// with one call, leads of several frames; the same checks hold.
#[test]
fn concurrent_writers_crowd_sync() {
    concurrent_writers(Durability::Sync, 48, 30);
}

#[test]
fn concurrent_writers_buffered() {
    concurrent_writers(Durability::None, 8, 500);
}

/// Spawns `f` on a thread and waits until its write is queued at the gate
/// (behind the caller's `under_gate`).
fn queue_write(shard: &Shard, ops: Vec<Op>) -> thread::JoinHandle<keel::Result<(u64, u64)>> {
    let before = shard.queued_writes();
    let s = shard.clone();
    let h = thread::spawn(move || s.write(&ops));
    while shard.queued_writes() == before {
        thread::yield_now();
    }
    h
}

#[test]
fn a_refused_batch_leaves_its_group_alone() {
    let tmp = TempDir::new("shard-gate-refused");
    let shard = Shard::open(tmp.path(), options(Durability::Sync)).unwrap();
    let put = |k: &str, v: &str| Op::Put { key: k.into(), value: v.into() };
    let append = |k: &str, v: &str| Op::Append { key: k.into(), item: v.into() };
    let before = vec![put("val", "1"), append("list", "a")];
    shard.write(&before).unwrap();
    let batches = [
        vec![put("x", "1"), append("list", "b")],
        vec![append("val", "no")],             // refused: val holds a value
        vec![Op::Delete { key: "val".into() }],
        vec![append("val", "yes")],            // accepted: the batch before deleted val
        vec![put("list", "now a value")],
        vec![append("list", "no"), put("y", "1")], // refused whole: list became a value in this group
        vec![put("z", "1")],
    ];
    let refused = [false, true, false, false, false, true, false];
    let mut writers = Vec::new();
    let at = shard
        .under_gate(|last| {
            for b in &batches {
                writers.push(queue_write(&shard, b.clone()));
            }
            last
        })
        .unwrap();
    assert_eq!(at, 2, "the barrier ran after the first write");
    let mut next = at + 1;
    let mut model = Model::new();
    apply(&mut model, &before);
    for ((w, b), refused) in writers.into_iter().zip(&batches).zip(refused) {
        match w.join().unwrap() {
            Err(e) => {
                assert!(refused, "{b:?} failed: {e}");
                assert_eq!(e.status, KEEL_STATUS_WRONG_KIND, "{e}");
            }
            Ok((first, last)) => {
                assert!(!refused, "{b:?} was accepted");
                assert_eq!((first, last), (next, next + b.len() as u64 - 1), "versions follow the queue");
                next = last + 1;
                apply(&mut model, b);
            }
        }
    }
    assert_eq!(shard.last_version(), next - 1);
    assert!(scanned(&shard) == model);
    assert_eq!(shard.get(b"val").unwrap().unwrap().value, Value::Posting(vec![b"yes".to_vec()]));
    shard.close().unwrap();
    let shard = Shard::open(tmp.path(), options(Durability::Sync)).unwrap();
    assert!(scanned(&shard) == model, "replay gives the same state");
    shard.close().unwrap();
}

#[test]
fn a_group_counts_its_appends_against_the_list_limit() {
    const LIMIT: usize = 4096;
    let tmp = TempDir::new("shard-gate-list-limit");
    let shard = Shard::open(tmp.path(), Options { max_list_size: LIMIT, ..options(Durability::Sync) }).unwrap();
    let append = |item: &[u8]| Op::Append { key: b"list".to_vec(), item: item.to_vec() };
    // 10 bytes of room: an item of n bytes takes n + 4.
    let before = vec![append(&[0; LIMIT - 14])];
    shard.write(&before).unwrap();
    let batches = [
        vec![append(b"a")],
        vec![append(b"bc"), Op::Put { key: b"k".to_vec(), value: b"v".to_vec() }], // refused: a byte past the limit after the first
        vec![append(b"d")],  // accepted: the refused batch took nothing
        vec![append(b"")],   // refused: the list is full
    ];
    let refused = [false, true, false, true];
    let mut writers = Vec::new();
    shard
        .under_gate(|_| {
            for b in &batches {
                writers.push(queue_write(&shard, b.clone()));
            }
        })
        .unwrap();
    let mut model = Model::new();
    apply(&mut model, &before);
    for ((w, b), refused) in writers.into_iter().zip(&batches).zip(refused) {
        match w.join().unwrap() {
            Err(e) => {
                assert!(refused, "{b:?} failed: {e}");
                assert_eq!(e.status, KEEL_STATUS_INVALID_ARGUMENT, "{e}");
            }
            Ok(_) => {
                assert!(!refused, "{b:?} was accepted");
                apply(&mut model, b);
            }
        }
    }
    assert_eq!(shard.last_version(), 3);
    assert!(scanned(&shard) == model);
    shard.close().unwrap();
}

#[test]
fn under_gate_sees_an_exact_version_and_refuses_after_close() {
    let tmp = TempDir::new("shard-gate-under");
    let shard = Shard::open(tmp.path(), options(Durability::None)).unwrap();
    let v = shard.put(b"k", b"1").unwrap();
    let mut queued = None;
    let seen = shard
        .under_gate(|last| {
            queued = Some(queue_write(&shard, vec![Op::Put { key: b"k".to_vec(), value: b"2".to_vec() }]));
            // The queued write waits for the barrier: nothing changed.
            (last, shard.get(b"k").unwrap().unwrap().value, shard.last_version())
        })
        .unwrap();
    assert_eq!(seen, (v, Value::Bytes(b"1".to_vec()), v));
    assert_eq!(queued.unwrap().join().unwrap().unwrap(), (v + 1, v + 1));
    shard.close().unwrap();
    assert_eq!(shard.under_gate(|_| ()).unwrap_err().status, keel::status::KEEL_STATUS_CLOSED);
}

// ---- kill -9 ----

const KILL_WRITERS: u64 = 8;
const KILL_BATCHES: u64 = 400;

fn kill_durability(cycle: u64) -> Durability {
    match cycle % 3 {
        0 => Durability::Sync,
        1 => Durability::None,
        _ => Durability::Periodic(Duration::from_millis(2)),
    }
}

/// The child: writer threads on one shard, each reporting `A t i` once its
/// batch i is acknowledged; closes and reports `C` if not killed first.
fn child_main(spec: &str) -> ! {
    let p: Vec<&str> = spec.split('|').collect();
    let (dir, seed, cycle) = (PathBuf::from(p[0]), p[1].parse::<u64>().unwrap(), p[2].parse::<u64>().unwrap());
    let shard = match Shard::open(&dir, options(kill_durability(cycle))) {
        Ok(s) => s,
        Err(e) => {
            report(&format!("E open: {e}\n"));
            std::process::exit(3);
        }
    };
    report("R\n");
    let writers: Vec<_> = (0..KILL_WRITERS)
        .map(|t| {
            let s = shard.clone();
            thread::spawn(move || {
                for i in 0..KILL_BATCHES {
                    if let Err(e) = s.write(&batch(seed, t, i, false)) {
                        report(&format!("E write {t} {i}: {e}\n"));
                        std::process::exit(3);
                    }
                    report(&format!("A {t} {i}\n"));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    if let Err(e) = shard.close() {
        report(&format!("E close: {e}\n"));
        std::process::exit(3);
    }
    report("C\n");
    std::process::exit(0)
}

/// Runs one child; kills it once `kill_after` batches are acknowledged
/// (None: lets it finish). Returns each writer's acknowledged count.
fn run_child(dir: &Path, seed: u64, cycle: u64, kill_after: Option<u64>) -> Result<Vec<u64>, String> {
    let child::Child { process: mut child, lines: rx } = child::spawn(
        "concurrent_writers_survive_kill9",
        &[(CHILD_ENV, format!("{}|{seed}|{cycle}", dir.display()))],
        None,
    )?;
    let mut acked = vec![0u64; KILL_WRITERS as usize];
    let mut killed = false;
    loop {
        let line = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => return Err("child silent for 120 s".into()),
        };
        match line.split(' ').collect::<Vec<_>>()[..] {
            ["R"] | ["C"] => {}
            ["A", t, i] => {
                let (t, i) = (t.parse::<usize>().unwrap(), i.parse::<u64>().unwrap());
                if i != acked[t] {
                    return Err(format!("writer {t} acknowledged {i} after {}", acked[t]));
                }
                acked[t] += 1;
            }
            _ => return Err(format!("child: {line}")),
        }
        if !killed && kill_after.is_some_and(|k| acked.iter().sum::<u64>() >= k) {
            // SAFETY: kill only sends a signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            killed = true;
        }
    }
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    if !status.success() && status.signal() != Some(libc::SIGKILL) {
        return Err(format!("child ended with {status}"));
    }
    Ok(acked)
}

/// Reopens the shard a child left and checks it against the acknowledged
/// counts; returns the error in words.
fn check_recovered(dir: &Path, seed: u64, acked: &[u64]) -> Result<(), String> {
    for round in ["after the kill", "after a second reopen"] {
        let shard = Shard::open(dir, options(Durability::None)).map_err(|e| format!("reopen {round}: {e}"))?;
        let got = scanned(&shard);
        let mut model = Model::new();
        let mut ops = 0;
        for t in 0..KILL_WRITERS {
            // Every batch stamps the writer's keys: the stamp names the
            // last batch of the writer that was recovered.
            let n = got.get(&stamp_keys(t)[0]).map_or(0, |v| stamp_index(v) + 1);
            let a = acked[t as usize];
            if n < a || n > a + 1 {
                return Err(format!("{round}: writer {t} has {n} batches, {a} acknowledged"));
            }
            for i in 0..n {
                let b = batch(seed, t, i, false);
                ops += b.len() as u64;
                apply(&mut model, &b);
            }
        }
        if got != model {
            return Err(format!("{round}: the shard differs from the writers' recovered batches"));
        }
        if shard.last_version() != ops {
            return Err(format!("{round}: last version {} for {ops} recovered operations (versions not dense)", shard.last_version()));
        }
        shard.close().map_err(|e| format!("close {round}: {e}"))?;
    }
    Ok(())
}

#[test]
fn concurrent_writers_survive_kill9() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child_main(&spec);
    }
    let seed = seed();
    let mut rng = Rng::new(seed);
    let cycles = env_u64("KEEL_SHARD_GATE_KILL9_CYCLES").unwrap_or(9);
    for cycle in 0..cycles {
        let tmp = TempDir::new("shard-gate-kill9");
        let dir = tmp.path().join("shard");
        let child_seed = rng.next() % 1_000_000_007;
        // One cycle in eight runs to the end and closes.
        let kill_after = (!rng.chance(125)).then(|| 1 + rng.below(KILL_WRITERS * KILL_BATCHES));
        let what = format!("cycle {cycle} (child seed {child_seed}, {:?}, kill after {kill_after:?} acks)", kill_durability(cycle));
        let acked = run_child(&dir, child_seed, cycle, kill_after).unwrap_or_else(|e| panic!("{what}: {e}"));
        if let Err(e) = check_recovered(&dir, child_seed, &acked) {
            std::mem::forget(tmp); // keep the directory for a post-mortem
            panic!("{what}, dir {}: {e}", dir.display());
        }
    }
}
