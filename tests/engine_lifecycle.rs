//! The engine's shard lifecycle against a close still running on another
//! thread, and against a drop that failed halfway.
//!
//! Deterministic: a step hook parks the one flush worker at a chosen step
//! of a shard's final pass (its close) and tells the test through a
//! channel; the test acts while it is parked, then lets it go. Waits are
//! bounded only as failure guards.

mod common;

use common::hookfs::{Call, HookFs};
use common::TempDir;
use crossbeam_channel::{bounded, Receiver, Sender};
use keel::engine::Engine;
use keel::shard::{Options, Shard, Step, StepHook, Steps, Value};
use keel::wal::Durability;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const GUARD: Duration = Duration::from_secs(60);

/// Parks the flush worker once at `step`, when armed.
struct ParkAt {
    step: Step,
    armed: AtomicBool,
    reached: Sender<()>,
    release: Mutex<Option<Receiver<()>>>,
}

impl StepHook for ParkAt {
    fn at(&self, step: Step) {
        if step != self.step || !std::thread::current().name().is_some_and(|n| n == "keel-flush") {
            return;
        }
        if self.armed.swap(false, Ordering::AcqRel) {
            let release = self.release.lock().take().expect("armed once");
            self.reached.send(()).unwrap();
            release.recv_timeout(GUARD).expect("the test never released the flush (failure guard)");
        }
    }
}

struct Park {
    hook: Arc<ParkAt>,
    reached: Receiver<()>,
    release: Sender<()>,
}

impl Park {
    fn new(step: Step) -> Park {
        let (reached_tx, reached) = bounded(1);
        let (release, release_rx) = bounded(1);
        let hook = Arc::new(ParkAt { step, armed: AtomicBool::new(false), reached: reached_tx, release: Mutex::new(Some(release_rx)) });
        Park { hook, reached, release }
    }
    fn arm(&self) {
        self.hook.armed.store(true, Ordering::Release);
    }
    fn wait_parked(&self) {
        self.reached.recv_timeout(GUARD).expect("the flush never reached the awaited step (failure guard)");
    }
    fn go(&self) {
        self.release.send(()).unwrap();
    }
}

fn options(steps: Steps, durability: Durability) -> Options {
    Options {
        steps,
        flush_threads: 1,
        durability,
        wal_segment_size: 64 << 10,
        flush_interval: None,
        seal_bytes: 1 << 20,
        ..Options::default()
    }
}

fn bytes(s: &Shard, key: &str) -> Option<Vec<u8>> {
    match s.get(key.as_bytes()).unwrap().map(|e| e.value) {
        Some(Value::Bytes(v)) => Some(v),
        other => other.map(|v| format!("{v:?}").into_bytes()),
    }
}

/// An engine in `dir` whose shard 1 holds keys old0..old39 (the first
/// half persisted), and a hook armed to park the shard's next flush pass
/// (its close's final pass) at its start.
fn shard_whose_close_parks(dir: &std::path::Path) -> (Park, Engine, Shard) {
    let park = Park::new(Step::PassStart);
    let engine = Engine::open(dir, options(Steps::new(park.hook.clone()), Durability::Sync)).unwrap();
    let s = engine.open_shard(1, true).unwrap();
    for i in 0..20 {
        s.put(format!("old{i}").as_bytes(), b"v").unwrap();
    }
    s.flush(true).unwrap();
    for i in 20..40 {
        s.put(format!("old{i}").as_bytes(), b"v").unwrap();
    }
    park.arm();
    (park, engine, s)
}

/// `Shard::close` marks the shard closed before its final pass and WAL
/// close run. The engine took a closed shard as free, so a second
/// `open_shard` of its id while the close still ran opened a second live
/// instance over the same files, and the WAL was damaged (CORRUPTION at
/// the next open, every acknowledged key unreadable). It is BUSY now.
#[test]
fn open_shard_while_its_close_is_still_running_is_busy() {
    let dir = TempDir::new("lifecycle-open-closing");
    let (park, engine, s) = shard_whose_close_parks(dir.path());
    std::thread::scope(|sc| {
        let closer = sc.spawn(|| s.close());
        park.wait_parked(); // the old instance's final pass is parked
        let second = engine.open_shard(1, false);
        let busy = second.as_ref().err().map(|e| e.status);
        // Whatever happens, let the old close finish before judging.
        let mut second_ok = None;
        if let Ok(n) = &second {
            n.put(b"new", b"v").unwrap(); // acknowledged on the second instance
            second_ok = Some(n.clone());
        }
        park.go();
        let closed = closer.join().unwrap();
        if let Some(n) = second_ok {
            let _ = n.close();
        }
        engine.close().unwrap();
        drop(engine);
        let engine = Engine::open(dir.path(), options(Steps::default(), Durability::Sync)).unwrap();
        let reopened = engine.open_shard(1, false).map_err(|e| e.message);
        let lost: Option<Vec<String>> = reopened.as_ref().ok().map(|r| {
            (0..40).map(|i| format!("old{i}")).chain(second.is_ok().then(|| "new".to_string())).filter(|k| bytes(r, k).is_none()).collect()
        });
        assert!(
            second.is_err() && reopened.is_ok() && lost.as_ref().is_some_and(|l| l.is_empty()),
            "open_shard(1) while shard 1's previous handle was still closing (its final pass parked) returned {:?} (want BUSY); \
             the old close returned {closed:?}; after an engine reopen shard 1 opens as {:?}, acknowledged keys lost: {lost:?}",
            second.as_ref().map(|_| "Ok(second live instance)").map_err(|e| e.status),
            reopened.as_ref().map(|_| "Ok"),
        );
        assert_eq!(busy, Some(keel::status::KEEL_STATUS_BUSY));
    });
}

/// The same gap on the drop side: `drop_shard` took a shard whose close
/// was still running for a closed one, renamed its folder away, unlisted
/// and removed it, and the id was free for a new create while the old
/// instance's final pass (and WAL close) still wrote by the shard's path.
/// It is BUSY now.
#[test]
fn drop_and_recreate_while_the_old_close_is_still_running() {
    let dir = TempDir::new("lifecycle-drop-closing");
    let (park, engine, s) = shard_whose_close_parks(dir.path());
    std::thread::scope(|sc| {
        let closer = sc.spawn(|| s.close());
        park.wait_parked();
        let dropped = engine.drop_shard(1);
        let mut created = None;
        if dropped.is_ok() {
            let n = engine.open_shard(1, true).unwrap();
            n.put(b"new", b"v").unwrap();
            created = Some(n);
        }
        park.go();
        let closed = closer.join().unwrap();
        let new_close = created.as_ref().map(|n| n.close());
        engine.close().unwrap();
        drop(engine);
        let engine = Engine::open(dir.path(), options(Steps::default(), Durability::Sync)).unwrap();
        let reopened = engine.open_shard(1, false).map_err(|e| e.message);
        let seen: Option<(Option<Vec<u8>>, usize)> = reopened
            .as_ref()
            .ok()
            .map(|r| (bytes(r, "new"), (0..40).filter(|i| bytes(r, &format!("old{i}")).is_some()).count()));
        assert!(
            dropped.is_err(),
            "drop_shard(1) while shard 1's close was still running returned Ok; old close: {closed:?}; \
             new shard's close: {new_close:?}; after reopen shard 1 opens as {:?}, (its key 'new', old keys seen): {seen:?}",
            reopened.as_ref().map(|_| "Ok"),
        );
    });
}

/// Two faults to arm on the real file system (`Faults::fs`): removing a
/// `.drop-<id>` folder fails with EIO (`fail_drop_removal`), and opening
/// an existing file whose path contains `emfile_under` fails with EMFILE
/// (`emfile`), what the descriptor cache meets when it reopens an evicted
/// file while the process is out of descriptors (the other half of
/// RLIMIT_NOFILE is the application's).
struct Faults {
    fail_drop_removal: AtomicBool,
    emfile_under: &'static str,
    emfile: AtomicBool,
    emfile_hits: std::sync::atomic::AtomicU64,
}

impl Faults {
    fn new(emfile_under: &'static str) -> Arc<Faults> {
        Arc::new(Faults {
            fail_drop_removal: AtomicBool::new(false),
            emfile_under,
            emfile: AtomicBool::new(false),
            emfile_hits: Default::default(),
        })
    }

    fn fs(self: &Arc<Self>) -> Arc<HookFs> {
        let f = self.clone();
        HookFs::new(move |call, path| {
            let os = |e| Err(std::io::Error::from_raw_os_error(e));
            match call {
                Call::Open if f.emfile.load(Ordering::Acquire) && path.to_string_lossy().contains(f.emfile_under) => {
                    f.emfile_hits.fetch_add(1, Ordering::AcqRel);
                    os(libc::EMFILE)
                }
                Call::RemoveDirAll
                    if f.fail_drop_removal.load(Ordering::Acquire)
                        && path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".drop-")) =>
                {
                    os(libc::EIO)
                }
                _ => Ok(()),
            }
        })
    }
}

/// A drop whose folder removal failed leaves `shards/.drop-5` behind with
/// shard 5 already unlisted (the drop returns IO). The id is free, so the
/// host creates shard 5 again and writes to it. The next engine open took
/// `.drop-5` for a drop a crash cut and unlisted shard 5, the new one:
/// its acknowledged writes were gone. A listed id whose folder exists now
/// stays listed, and dropping the new shard removes the leftover first.
#[test]
fn a_failed_drop_removal_does_not_unlist_the_next_shard_of_its_id() {
    let dir = TempDir::new("lifecycle-drop-leftover");
    let fs = Faults::new("");
    let open = || Engine::open_with_fs(dir.path(), options(Steps::default(), Durability::Sync), fs.fs()).unwrap();
    let engine = open();
    let old = engine.open_shard(5, true).unwrap();
    old.put(b"old", b"v").unwrap();
    old.close().unwrap();
    fs.fail_drop_removal.store(true, Ordering::Release);
    let dropped = engine.drop_shard(5);
    fs.fail_drop_removal.store(false, Ordering::Release);
    assert!(dropped.is_err(), "the folder's removal was meant to fail");
    assert_eq!(engine.list_shards().unwrap(), Vec::<u32>::new(), "the failed drop unlisted shard 5");
    // The id is free: a new shard 5, with an acknowledged write.
    let new = engine.open_shard(5, true).unwrap();
    new.put(b"new", b"v").unwrap();
    new.close().unwrap();
    engine.close().unwrap();
    drop(engine);
    let engine = open();
    let listed = engine.list_shards().unwrap();
    let reopened = engine.open_shard(5, false).map_err(|e| (e.status, e.message));
    let new_key = reopened.as_ref().ok().map(|s| bytes(s, "new"));
    assert!(
        listed == vec![5] && new_key == Some(Some(b"v".to_vec())),
        "after a clean close and reopen the re-created shard 5 is gone: listed {listed:?}, open_shard(5) = {:?}; drop error was {:?}",
        reopened.as_ref().map(|_| "Ok"),
        dropped.err().map(|e| e.message),
    );
}

/// After a drop whose folder removal failed, the id's next shard drops
/// cleanly: the leftover `.drop-<id>` folder is removed first (the rename
/// of the new shard's folder needs its name).
#[test]
fn the_next_drop_of_an_id_removes_the_leftover_of_a_failed_one() {
    let dir = TempDir::new("lifecycle-drop-again");
    let fs = Faults::new("");
    let engine = Engine::open_with_fs(dir.path(), options(Steps::default(), Durability::Sync), fs.fs()).unwrap();
    engine.open_shard(5, true).unwrap().close().unwrap();
    fs.fail_drop_removal.store(true, Ordering::Release);
    assert!(engine.drop_shard(5).is_err(), "the folder's removal was meant to fail");
    fs.fail_drop_removal.store(false, Ordering::Release);
    let leftover = dir.path().join("shards").join(".drop-5");
    assert!(leftover.exists());
    let new = engine.open_shard(5, true).unwrap();
    new.put(b"new", b"v").unwrap();
    new.close().unwrap();
    engine.drop_shard(5).unwrap();
    assert!(!leftover.exists() && !dir.path().join("shards").join("5").exists());
    assert_eq!(engine.list_shards().unwrap(), Vec::<u32>::new());
    engine.close().unwrap();
}

/// `drop_shard(5)` fails with RESOURCE after renaming `shards/5` to
/// `shards/.drop-5` (the fsync of `shards/`, or the open of `SHARDS` for
/// the unlisting, meets EMFILE). A failed drop leaves the shard whole: its
/// folder renamed back, still listed, its data there. It once stayed
/// listed with its folder gone, which open_shard reports as CORRUPTION
/// ("its data is gone") and the next engine open finished as a drop.
#[test]
fn a_drop_that_fails_after_its_rename_leaves_the_shard_whole() {
    for fail_at in ["sync shards/", "open SHARDS"] {
        let dir = TempDir::new("lifecycle-drop-fails-late");
        let armed = Arc::new(AtomicBool::new(false));
        let a = armed.clone();
        let fs = HookFs::new(move |call, path| {
            let hit = match (fail_at, call) {
                ("sync shards/", Call::SyncDir) => path.ends_with("shards"),
                ("open SHARDS", Call::Open) => path.ends_with("SHARDS"),
                _ => false,
            };
            match hit && a.load(Ordering::Acquire) {
                true => Err(std::io::Error::from_raw_os_error(libc::EMFILE)),
                false => Ok(()),
            }
        });
        let engine = Engine::open_with_fs(dir.path(), options(Steps::default(), Durability::Sync), fs).unwrap();
        let s = engine.open_shard(5, true).unwrap();
        s.put(b"k", b"v").unwrap();
        s.close().unwrap();
        armed.store(true, Ordering::Release);
        let dropped = engine.drop_shard(5).map_err(|e| (e.status, e.message));
        armed.store(false, Ordering::Release);
        assert_eq!(dropped.as_ref().err().map(|e| e.0), Some(keel::status::KEEL_STATUS_RESOURCE), "precondition ({fail_at}): {dropped:?}");
        assert_eq!(engine.list_shards().unwrap(), vec![5], "{fail_at}");
        let s = engine.open_shard(5, false).unwrap_or_else(|e| panic!("{fail_at}: after drop_shard(5) failed with {dropped:?}: {e}"));
        assert_eq!(s.get(b"k").unwrap().map(|e| e.value), Some(Value::Bytes(b"v".to_vec())), "{fail_at}");
        s.close().unwrap();
        engine.close().unwrap();
        drop(engine);
        let engine = Engine::open(dir.path(), options(Steps::default(), Durability::Sync)).unwrap();
        assert_eq!(engine.list_shards().unwrap(), vec![5], "{fail_at}: the engine's next open keeps the shard");
        engine.close().unwrap();
    }
}

/// An engine in `dir` with at most 16 descriptors, shard 0 holding one
/// key, and shards 1..=24 written after it (flushed in sync durability),
/// whose files push shard 0's out of the descriptor cache. EMFILE is armed
/// for shard 0's WAL through the returned file system.
fn shard_zero_among_24(dir: &std::path::Path, durability: Durability) -> (Arc<Faults>, Engine, Shard, Vec<Shard>) {
    let fs = Faults::new("/shards/0/wal/");
    let opts = Options { max_open_files: 16, ..options(Steps::default(), durability) };
    let engine = Engine::open_with_fs(dir, opts, fs.fs()).unwrap();
    let zero = engine.open_shard(0, true).unwrap();
    zero.put(b"before", b"v").unwrap();
    let others: Vec<Shard> = (1..=24).map(|id| engine.open_shard(id, true).unwrap()).collect();
    for (i, s) in others.iter().enumerate() {
        s.put(format!("k{i}").as_bytes(), b"v").unwrap();
        if durability == Durability::Sync {
            s.flush(true).unwrap();
        }
    }
    (fs, engine, zero, others)
}

/// Shard 0's close meets a transient EMFILE (its evicted WAL segment
/// cannot be reopened to write the frames it holds behind) and returns
/// RESOURCE, which promises a retry once descriptors are freed. It once
/// consumed the WAL and left the commit log holding the shard: until the
/// engine reopened, the shard could not be opened, no shard of the engine
/// could be dropped and the engine's close failed. Now the WAL stays open
/// and the close unfinished: a retried close, or the engine (the C API
/// frees the handle even on error), finishes it.
#[test]
fn a_transient_emfile_at_a_shard_close_is_retried() {
    for retry_close in [true, false] {
        let dir = TempDir::new("lifecycle-emfile-close");
        let (fs, engine, zero, others) = shard_zero_among_24(dir.path(), Durability::Sync);
        for s in &others {
            s.close().unwrap();
        }
        zero.put(b"held", b"v").unwrap(); // durable in the commit log, held in memory
        fs.emfile.store(true, Ordering::Release);
        let during = zero.close().map_err(|e| (e.status, e.message));
        fs.emfile.store(false, Ordering::Release);
        assert!(fs.emfile_hits.load(Ordering::Acquire) > 0, "precondition: shard 0's segment was evicted ({during:?})");
        assert_eq!(during.as_ref().err().map(|e| e.0), Some(keel::status::KEEL_STATUS_RESOURCE), "precondition: {during:?}");
        match retry_close {
            true => zero.close().unwrap(),
            false => drop(zero),
        }
        let reopened = engine.open_shard(0, false).unwrap_or_else(|e| panic!("retried close {retry_close}: open_shard(0): {e}"));
        assert_eq!(reopened.get(b"held").unwrap().map(|e| e.value), Some(Value::Bytes(b"v".to_vec())));
        reopened.close().unwrap();
        engine.drop_shard(7).unwrap();
        engine.close().unwrap();
    }
}

/// A shard close left pending (RESOURCE) that meets RESOURCE again when
/// the engine closes: the engine closes its WAL anyway, as a failed close
/// (the commit log keeps the copies and the next open gives them back).
/// Left pending, the WAL stayed open in this process after the engine
/// released its LOCK, for as long as any handle held the shard, and a
/// second engine opened the same shard: two live WALs on one log.
#[test]
fn an_engine_close_does_not_leave_a_shard_close_pending() {
    let dir = TempDir::new("lifecycle-emfile-engine-close");
    let (fs, engine, zero, others) = shard_zero_among_24(dir.path(), Durability::Sync);
    for s in &others {
        s.close().unwrap();
    }
    zero.put(b"held", b"v").unwrap();
    fs.emfile.store(true, Ordering::Release);
    let first = zero.close().map_err(|e| e.status);
    assert_eq!(first, Err(keel::status::KEEL_STATUS_RESOURCE), "precondition: shard 0's segment was evicted");
    let engine_close = engine.close().map_err(|e| e.status);
    fs.emfile.store(false, Ordering::Release);
    drop(engine);
    // `zero` is still held, and its WAL closed (a WAL's stats read 0).
    assert_eq!(zero.stats().wal_first_seq, 0, "after the engine's close returned {engine_close:?}, shard 0's WAL is still open");
    // A second engine opens the folder and shard 0, whose acknowledged
    // write the commit log gives back; the old handle's close is done.
    let engine = Engine::open(dir.path(), options(Steps::default(), Durability::Sync)).unwrap();
    let s = engine.open_shard(0, false).unwrap();
    assert_eq!(s.get(b"held").unwrap().map(|e| e.value), Some(Value::Bytes(b"v".to_vec())));
    zero.close().unwrap();
    s.close().unwrap();
    engine.close().unwrap();
}

/// A write to a shard whose active WAL segment the descriptor cache had
/// evicted, made while the process is briefly out of descriptors: the
/// cache's reopen fails with EMFILE before a byte is written. The WAL
/// poisoned itself (any error but NO_SPACE), so the shard refused every
/// later write until it was reopened, though descriptors were back at
/// once. The write fails with RESOURCE now, and the next one succeeds.
#[test]
fn a_transient_emfile_on_a_cache_reopen_does_not_poison_the_shard() {
    let dir = TempDir::new("lifecycle-emfile");
    let (fs, engine, zero, others) = shard_zero_among_24(dir.path(), Durability::None);
    assert!(engine.stats().unwrap().file_cache_evictions > 0);
    fs.emfile.store(true, Ordering::Release);
    let during = zero.put(b"during", b"v");
    fs.emfile.store(false, Ordering::Release);
    assert!(fs.emfile_hits.load(Ordering::Acquire) > 0 && during.is_err(), "precondition: shard 0's segment was evicted and its reopen failed ({during:?})");
    let status = during.as_ref().err().map(|e| e.status);
    let after = zero.put(b"after", b"v");
    assert!(
        after.is_ok() && status == Some(keel::status::KEEL_STATUS_RESOURCE),
        "a write during a transient EMFILE failed with status {status:?} ({:?}); with descriptors back, the next write gives {:?}",
        during.err().map(|e| e.message),
        after.map_err(|e| (e.status, e.message)),
    );
    for s in others {
        s.close().unwrap();
    }
    let _ = zero.close();
}

/// The same EMFILE in `sync` durability with the commit log: the shard's
/// WAL holds its frames behind (write_behind) and files them at its next
/// sync, where the reopen of its evicted segment fails. The WAL was
/// poisoned, its close failed, and the commit log then refused every
/// checkpoint until the engine reopened: dropping any other shard failed.
/// The frames stay held for the next sync now.
#[test]
fn a_transient_emfile_in_sync_mode_does_not_block_drops_engine_wide() {
    let dir = TempDir::new("lifecycle-emfile-sync");
    let (fs, engine, zero, others) = shard_zero_among_24(dir.path(), Durability::Sync);
    zero.put(b"held", b"v").unwrap(); // held behind in memory, durable in the commit log
    fs.emfile.store(true, Ordering::Release);
    let during = zero.flush(true);
    fs.emfile.store(false, Ordering::Release);
    assert!(fs.emfile_hits.load(Ordering::Acquire) > 0, "precondition: shard 0's segment was evicted and reopened ({during:?})");
    let after = zero.put(b"after", b"v").map_err(|e| (e.status, e.message));
    let closed = zero.close().map_err(|e| e.message);
    for s in &others {
        s.close().unwrap();
    }
    let dropped = engine.drop_shard(7).map_err(|e| (e.status, e.message));
    assert!(
        after.is_ok() && closed.is_ok() && dropped.is_ok(),
        "after a transient EMFILE on shard 0's flush ({:?}): its next write {after:?}, its close {closed:?}, and dropping shard 7 {dropped:?}",
        during.map_err(|e| (e.status, e.message)),
    );
}

/// EMFILE for the creation of shard 0's `wal.meta.tmp` while armed.
fn meta_emfile_fs(armed: Arc<AtomicBool>, hits: Arc<AtomicU64>) -> Arc<HookFs> {
    HookFs::new(move |call, path| {
        let p = path.to_string_lossy();
        match call {
            Call::Create if armed.load(Ordering::Acquire) && p.contains("/shards/0/wal/") && p.ends_with("wal.meta.tmp") => {
                hits.fetch_add(1, Ordering::AcqRel);
                Err(std::io::Error::from_raw_os_error(libc::EMFILE))
            }
            _ => Ok(()),
        }
    })
}

/// EMFILE at the close's write of `wal.meta` (after its sync): the close
/// is RESOURCE and retried, as one that met it at the sync. It once
/// consumed the WAL and left the commit log holding the shard though every
/// frame was synced: until the engine reopened, the shard could not be
/// opened, no shard dropped, and the engine's close failed.
#[test]
fn a_transient_emfile_at_the_close_s_extent_record_is_retried() {
    let dir = TempDir::new("lifecycle-emfile-meta");
    let armed = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicU64::new(0));
    let engine = Engine::open_with_fs(dir.path(), options(Steps::default(), Durability::Sync), meta_emfile_fs(armed.clone(), hits.clone())).unwrap();
    let seven = engine.open_shard(7, true).unwrap();
    seven.put(b"k7", b"v").unwrap();
    seven.close().unwrap();
    let zero = engine.open_shard(0, true).unwrap();
    zero.put(b"held", b"v").unwrap();
    armed.store(true, Ordering::Release);
    let during = zero.close().map_err(|e| (e.status, e.message));
    armed.store(false, Ordering::Release);
    assert!(hits.load(Ordering::Acquire) > 0, "precondition: the close wrote wal.meta ({during:?})");
    assert_eq!(during.as_ref().err().map(|e| e.0), Some(keel::status::KEEL_STATUS_RESOURCE), "precondition: {during:?}");
    // Descriptors are back: the retry RESOURCE promises.
    let retried = zero.close().map_err(|e| (e.status, e.message));
    drop(zero);
    let reopened = engine.open_shard(0, false).map_err(|e| (e.status, e.message));
    let held = reopened.as_ref().ok().map(|s| s.get(b"held").unwrap().map(|e| e.value));
    if let Ok(s) = &reopened {
        s.close().unwrap();
    }
    let dropped = engine.drop_shard(7).map_err(|e| (e.status, e.message));
    let closed = engine.close().map_err(|e| (e.status, e.message));
    assert!(
        reopened.is_ok() && dropped.is_ok() && closed.is_ok(),
        "close returned RESOURCE ({during:?}), retried: {retried:?}; with descriptors back: open_shard(0) {:?}, drop_shard(7) {dropped:?}, engine close {closed:?}",
        reopened.as_ref().map(|_| ())
    );
    assert_eq!(held, Some(Some(Value::Bytes(b"v".to_vec()))));
}

/// A consensus setup whose read-index closure keeps `alive` alive.
fn consensus(alive: &Arc<AtomicU64>) -> keel::shard::Consensus {
    use keel::lease::{Clock, LeaseConfig, LeaseGate, Level};
    let c = alive.clone();
    let config = LeaseConfig {
        lease: std::time::Duration::from_millis(700),
        election_timeout_min: std::time::Duration::from_secs(1),
        max_clock_drift: std::time::Duration::from_millis(100),
        max_round_trip: std::time::Duration::from_millis(100),
    };
    let read_index = Box::new(move || {
        c.fetch_add(1, Ordering::SeqCst);
        Ok(7)
    });
    keel::shard::Consensus {
        gate: LeaseGate::new(1, config, Clock::manual(0), read_index).unwrap(),
        default_level: Level::Stale,
        read_timeout: std::time::Duration::from_secs(60),
    }
}

/// A close left pending (RESOURCE) lets go of the host's read-index
/// callback inside that close, as keel.h promises (`read_index_free` runs
/// in the shard's close, on the closing thread), not at a retry later on
/// another thread.
#[test]
fn a_close_left_pending_still_lets_go_of_the_read_index_callback() {
    let dir = TempDir::new("lifecycle-pending-gate");
    let (fs, engine, zero, others) = shard_zero_among_24(dir.path(), Durability::Sync);
    let alive = Arc::new(AtomicU64::new(0));
    zero.configure_consensus(consensus(&alive)).unwrap();
    for s in &others {
        s.close().unwrap();
    }
    zero.put(b"held", b"v").unwrap();
    assert_eq!(Arc::strong_count(&alive), 2, "precondition: keel holds the callback");
    fs.emfile.store(true, Ordering::Release);
    let closed = zero.close().map_err(|e| e.status);
    fs.emfile.store(false, Ordering::Release);
    assert!(fs.emfile_hits.load(Ordering::Acquire) > 0, "precondition: shard 0's segment was evicted ({closed:?})");
    assert_eq!(closed, Err(keel::status::KEEL_STATUS_RESOURCE), "precondition");
    drop(zero); // keel_shard_close frees the handle even on error
    assert_eq!(
        Arc::strong_count(&alive),
        1,
        "the shard's close returned {closed:?} and its handle is gone, but keel still holds the host's read-index callback"
    );
    engine.close().unwrap();
}

/// A file system that parks the first `exists` of `shards/.drop-1` once
/// armed: the step of `drop_shard(1)` right after its commit log
/// checkpoint, before its rename. Tells the test through `reached`, then
/// waits for `release`.
fn drop_parking_fs(armed: Arc<AtomicBool>, reached: Sender<()>, release: Receiver<()>) -> Arc<HookFs> {
    HookFs::new(move |call, path| {
        if call == Call::Exists && path.ends_with("shards/.drop-1") && armed.swap(false, Ordering::AcqRel) {
            reached.send(()).unwrap();
            // Longer than the test's own guard, which releases it.
            release.recv_timeout(2 * GUARD).expect("the test never released the drop (failure guard)");
        }
        Ok(())
    })
}

/// An engine whose shards 1 and 2 hold a key each and are closed (sync
/// durability, so a drop takes a commit log checkpoint first).
fn two_closed_shards(dir: &std::path::Path, fs: Arc<HookFs>) -> Engine {
    let engine = Engine::open_with_fs(dir, options(Steps::default(), Durability::Sync), fs).unwrap();
    for id in [1, 2] {
        let s = engine.open_shard(id, true).unwrap();
        s.put(b"k", format!("v{id}").as_bytes()).unwrap();
        s.close().unwrap();
    }
    engine
}

/// `drop_shard` ran its commit log checkpoint (a sync of every shard WAL
/// written since the last one), the folder's rename, the directory sync,
/// the list's append and the folder's removal under the engine-wide
/// mutex: every other shard's open, drop and listing waited behind one
/// drop's I/O. The dropped id is reserved now and the I/O runs outside:
/// while the drop is parked after its checkpoint, shard 2 opens and reads,
/// the shard list answers, and shard 1 itself is BUSY to an open and to a
/// second drop.
#[test]
fn a_drop_in_progress_does_not_hold_up_other_shards() {
    let dir = TempDir::new("lifecycle-drop-unlocked");
    let armed = Arc::new(AtomicBool::new(false));
    let (reached_tx, reached) = bounded(1);
    let (release, release_rx) = bounded(1);
    let engine = two_closed_shards(dir.path(), drop_parking_fs(armed.clone(), reached_tx, release_rx));
    armed.store(true, Ordering::Release);
    std::thread::scope(|sc| {
        let dropper = sc.spawn(|| engine.drop_shard(1));
        reached.recv_timeout(GUARD).expect("the drop never reached its rename (failure guard)");
        let (done_tx, done) = bounded(1);
        let engine = &engine;
        let probe = sc.spawn(move || {
            let two = engine.open_shard(2, false).map(|s| {
                let v = bytes(&s, "k");
                s.close().unwrap();
                v
            });
            let listed = engine.list_shards();
            let open_one = engine.open_shard(1, false).map(drop).map_err(|e| e.status);
            let drop_one = engine.drop_shard(1).map_err(|e| e.status);
            done_tx.send(()).unwrap();
            (two.map_err(|e| e.message), listed.map_err(|e| e.message), open_one, drop_one)
        });
        // Bounded only as a failure guard: a probe held up by the drop
        // finishes once the drop is let go.
        let waited = done.recv_timeout(GUARD).is_ok();
        release.send(()).unwrap();
        let (two, listed, open_one, drop_one) = probe.join().unwrap();
        let dropped = dropper.join().unwrap().map_err(|e| e.message);
        assert!(
            waited,
            "while drop_shard(1) was parked after its checkpoint, opening shard 2 waited for it (the engine's mutex was held across the drop's I/O); \
             it then gave {two:?}, list {listed:?}, open_shard(1) {open_one:?}, drop_shard(1) {drop_one:?}"
        );
        assert_eq!(two, Ok(Some(b"v2".to_vec())));
        assert_eq!(listed, Ok(vec![1, 2]), "shard 1 is listed until its drop unlists it");
        assert_eq!(open_one, Err(keel::status::KEEL_STATUS_BUSY), "shard 1 is being dropped");
        assert_eq!(drop_one, Err(keel::status::KEEL_STATUS_BUSY), "shard 1 is being dropped");
        assert_eq!(dropped, Ok(()));
    });
    assert_eq!(engine.list_shards().unwrap(), vec![2]);
    assert_eq!(engine.open_shard(1, false).map(drop).map_err(|e| e.status), Err(keel::status::KEEL_STATUS_NOT_FOUND));
    assert!(!dir.path().join("shards/1").exists() && !dir.path().join("shards/.drop-1").exists());
    engine.close().unwrap();
}

/// A close of the engine while a drop is parked after its checkpoint: the
/// drop finishes or is undone, never half done (the shard listed with its
/// folder gone, or unlisted with its folder left), and the engine's next
/// open sees shard 1 whole or not at all.
#[test]
fn an_engine_close_during_a_drop_leaves_the_shard_whole_or_gone() {
    let dir = TempDir::new("lifecycle-drop-engine-close");
    let armed = Arc::new(AtomicBool::new(false));
    let (reached_tx, reached) = bounded(1);
    let (release, release_rx) = bounded(1);
    let engine = two_closed_shards(dir.path(), drop_parking_fs(armed.clone(), reached_tx, release_rx));
    armed.store(true, Ordering::Release);
    let (dropped, closed) = std::thread::scope(|sc| {
        let dropper = sc.spawn(|| engine.drop_shard(1));
        reached.recv_timeout(GUARD).expect("the drop never reached its rename (failure guard)");
        let (done_tx, done) = bounded(1);
        let engine = &engine;
        let closer = sc.spawn(move || {
            let closed = engine.close();
            done_tx.send(()).unwrap();
            closed
        });
        let _ = done.recv_timeout(GUARD); // failure guard: the close may wait for the drop
        release.send(()).unwrap();
        (dropper.join().unwrap().map_err(|e| e.status), closer.join().unwrap().map_err(|e| e.message))
    });
    assert_eq!(closed, Ok(()));
    drop(engine);
    let engine = Engine::open(dir.path(), options(Steps::default(), Durability::Sync)).unwrap();
    let listed = engine.list_shards().unwrap();
    let one = engine.open_shard(1, false).map(|s| {
        let v = bytes(&s, "k");
        s.close().unwrap();
        v
    });
    match dropped {
        Ok(()) => assert!(listed == vec![2] && one.is_err() && !dir.path().join("shards/1").exists(), "dropped, yet {listed:?}"),
        Err(status) => assert!(
            listed == vec![1, 2] && one.as_ref().is_ok_and(|v| v.as_deref() == Some(b"v1".as_slice())),
            "the drop failed ({status}) and left shard 1 listed {listed:?}, opening as {:?}",
            one.map_err(|e| e.message)
        ),
    }
    assert!(!dir.path().join("shards/.drop-1").exists());
    engine.close().unwrap();
}

/// A panic while shard 3 was being opened (here from the file system;
/// the C API turns any panic into PANIC and the engine goes on) left its
/// slot reserved as opening: every later open or drop of shard 3 was
/// BUSY "being opened" for the life of the engine. The reservation is
/// let go when the open unwinds.
#[test]
fn a_panic_while_opening_a_shard_does_not_leave_its_id_busy() {
    let dir = TempDir::new("lifecycle-open-panic");
    let armed = Arc::new(AtomicBool::new(false));
    let a = armed.clone();
    let fs = HookFs::new(move |call, path| {
        if call == Call::Create && path.to_string_lossy().contains("/shards/3/") && a.swap(false, Ordering::AcqRel) {
            panic!("injected: a panic while shard 3 opens");
        }
        Ok(())
    });
    let engine = Engine::open_with_fs(dir.path(), options(Steps::default(), Durability::Sync), fs).unwrap();
    armed.store(true, Ordering::Release);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.open_shard(3, true).map(drop)));
    assert!(panicked.is_err(), "precondition: the open panicked ({panicked:?})");
    let again = engine.open_shard(3, true).map_err(|e| (e.status, e.message));
    assert!(again.is_ok(), "after a panic in its open, open_shard(3) answers {:?}", again.as_ref().err());
    let s = again.unwrap();
    s.put(b"k", b"v").unwrap();
    s.close().unwrap();
    engine.drop_shard(3).unwrap();
    engine.close().unwrap();
}

/// A close of shard 0 left pending by RESOURCE (EMFILE at its `wal.meta`
/// record) is finished by the engine before the next `open_shard(0)`.
/// That retry (a WAL sync and the record's write, rename and folder sync)
/// ran under the engine-wide mutex, so opening any other shard waited
/// for it. It runs outside now: parked at that record, shard 7 opens
/// meanwhile, and shard 0 is BUSY (still closing) to a second open.
#[test]
fn finishing_a_pending_close_does_not_hold_up_other_shards() {
    let dir = TempDir::new("lifecycle-pending-close-unlocked");
    // 0: pass, 1: EMFILE at shard 0's wal.meta.tmp, 2: park there once.
    let mode = Arc::new(AtomicU64::new(0));
    let (reached_tx, reached) = bounded(1);
    let (release, release_rx) = bounded::<()>(1);
    let m = mode.clone();
    let fs = HookFs::new(move |call, path| {
        let p = path.to_string_lossy();
        if call != Call::Create || !p.contains("/shards/0/wal/") || !p.ends_with("wal.meta.tmp") {
            return Ok(());
        }
        match m.load(Ordering::Acquire) {
            1 => Err(std::io::Error::from_raw_os_error(libc::EMFILE)),
            2 if m.swap(0, Ordering::AcqRel) == 2 => {
                reached_tx.send(()).unwrap();
                // Longer than the test's own guard, which releases it.
                release_rx.recv_timeout(2 * GUARD).expect("the test never released the close (failure guard)");
                Ok(())
            }
            _ => Ok(()),
        }
    });
    let engine = Engine::open_with_fs(dir.path(), options(Steps::default(), Durability::Sync), fs).unwrap();
    let seven = engine.open_shard(7, true).unwrap();
    seven.put(b"k7", b"v").unwrap();
    seven.close().unwrap();
    let zero = engine.open_shard(0, true).unwrap();
    zero.put(b"held", b"v").unwrap();
    mode.store(1, Ordering::Release);
    let during = zero.close().map_err(|e| e.status);
    assert_eq!(during, Err(keel::status::KEEL_STATUS_RESOURCE), "precondition: the close wrote wal.meta");
    drop(zero); // the C API frees the handle even on error
    mode.store(2, Ordering::Release);
    std::thread::scope(|sc| {
        let engine = &engine;
        let retrier = sc.spawn(move || engine.open_shard(0, false));
        reached.recv_timeout(GUARD).expect("the engine never retried shard 0's close (failure guard)");
        let (done_tx, done) = bounded(1);
        let probe = sc.spawn(move || {
            let seven = engine.open_shard(7, false).map(|s| {
                let v = bytes(&s, "k7");
                s.close().unwrap();
                v
            });
            let zero = engine.open_shard(0, false).map(drop).map_err(|e| e.status);
            done_tx.send(()).unwrap();
            (seven.map_err(|e| e.message), zero)
        });
        // Bounded only as a failure guard: a probe held up by the retried
        // close finishes once it is let go.
        let waited = done.recv_timeout(GUARD).is_ok();
        release.send(()).unwrap();
        let (seven, second) = probe.join().unwrap();
        let reopened = retrier.join().unwrap().map_err(|e| e.message);
        assert!(waited, "while the engine finished shard 0's pending close, opening shard 7 waited for it; it then gave {seven:?}");
        assert_eq!(seven, Ok(Some(b"v".to_vec())));
        assert_eq!(second, Err(keel::status::KEEL_STATUS_BUSY), "shard 0 is still closing");
        let zero = reopened.unwrap();
        assert_eq!(bytes(&zero, "held"), Some(b"v".to_vec()));
        zero.close().unwrap();
    });
    engine.close().unwrap();
}

/// A reception that will not finish closes its shard
/// (`Engine::release_incoming`). It freed the shard's slot before that
/// close ran, so while the close was still writing the shard's files a
/// drop of the id went ahead (as would a second reception, opening a
/// second instance over the same files). Its id is BUSY until the close
/// is done now, as for a host's close.
#[test]
fn a_reception_still_closing_its_shard_keeps_the_id_busy() {
    use common::side::{node_options, Side};
    use keel::node::Node;
    use keel::transfer::{Method, Retry, TransferOptions, Transfers};
    // Armed: the table the snapshot's end seals fails with EMFILE, which
    // ends the reception; after that, the WAL extent record its close
    // writes parks once.
    let (fail, failed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (reached_tx, reached) = bounded(1);
    let (release, release_rx) = bounded::<()>(1);
    let (f, fd) = (fail.clone(), failed.clone());
    let fs = HookFs::new(move |call, path| {
        let p = path.to_string_lossy();
        if call != Call::Create || !p.contains("/shards/7/") {
            return Ok(());
        }
        if p.ends_with("wal.meta.tmp") {
            if fd.swap(false, Ordering::AcqRel) {
                reached_tx.send(()).unwrap();
                release_rx.recv_timeout(2 * GUARD).expect("the test never released the close (failure guard)");
            }
            return Ok(());
        }
        // The table the snapshot's end seals, a step of the reception.
        if p.ends_with(".sst.tmp") && f.swap(false, Ordering::AcqRel) {
            fd.store(true, Ordering::Release);
            return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
        }
        Ok(())
    });
    let opts = options(Steps::default(), Durability::Sync);
    let src = Side::temp("lifecycle-reception-src", node_options(1), opts.clone());
    let dst_dir = TempDir::new("lifecycle-reception-dst");
    let dst_engine = Arc::new(Engine::open_with_fs(dst_dir.path(), opts, fs).unwrap());
    let dst_node = Arc::new(Node::open(node_options(2)).unwrap());
    let dst = Transfers::attach(dst_node.clone(), dst_engine.clone()).unwrap();
    src.node.connect(2, &dst_node.addr().to_string()).unwrap();
    let shard = src.engine.open_shard(7, true).unwrap();
    for i in 0..20 {
        shard.put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    dst.expect(7, 1);
    fail.store(true, Ordering::Release);
    let once = TransferOptions { method: Method::Snapshot, retry: Retry { max_retries: 0, ..Retry::default() }, ..Default::default() };
    std::thread::scope(|sc| {
        let sender = sc.spawn(|| src.transfers.send_shard(&shard, 7, 2, &once));
        reached.recv_timeout(GUARD).expect("the reception never closed its shard (failure guard)");
        let dropped = dst_engine.drop_shard(7).map_err(|e| e.status);
        release.send(()).unwrap();
        assert!(sender.join().unwrap().is_err(), "precondition: the reception failed");
        assert_eq!(dropped, Err(keel::status::KEEL_STATUS_BUSY), "a drop while the reception's close ran");
    });
    // Once closed, the host drops it.
    dst_engine.drop_shard(7).unwrap();
    let _ = dst_node.close();
    dst.close();
}

/// Whether thread `tid` of this process is asleep (state S): blocked on a
/// lock, or parked by a hook.
fn asleep(tid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('S'))
}

/// Two drops at once (shards 1 and 2, sync durability) each note what
/// their commit log checkpoint covered in `commit-log.covered`, through
/// the one temporary file `commit-log.covered.tmp`: the second's create
/// truncated the first's, the first renamed it into place, and the
/// second's rename found nothing, so `drop_shard(2)` failed with IO
/// ("renaming into place …: No such file or directory"); a crash in
/// between could leave the note empty (the engine's next open then
/// CORRUPTION), or holding the smaller of the two numbers. Drop 1 is
/// parked at the rename of its note; drop 2 runs until it reaches its own
/// (the race), or sleeps before its note begins (waiting for drop 1's).
#[test]
fn two_drops_at_once_do_not_share_the_commit_logs_note() {
    let dir = TempDir::new("lifecycle-drop-notes");
    let armed = Arc::new(AtomicBool::new(false));
    let (creates, renames) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (one_parked_tx, one_parked) = bounded(1);
    let (go_one, go_one_rx) = bounded(1);
    let (two_parked_tx, two_parked) = bounded(1);
    let (go_two, go_two_rx) = bounded(1);
    let fs = {
        let (armed, creates, renames) = (armed.clone(), creates.clone(), renames.clone());
        HookFs::new(move |call, path| {
            if !armed.load(Ordering::Acquire) || !path.ends_with("commit-log.covered.tmp") {
                return Ok(());
            }
            let (parked, go) = match call {
                Call::Create => {
                    creates.fetch_add(1, Ordering::AcqRel);
                    return Ok(());
                }
                Call::Rename => match renames.fetch_add(1, Ordering::AcqRel) {
                    0 => (&one_parked_tx, &go_one_rx),
                    1 => (&two_parked_tx, &go_two_rx),
                    _ => return Ok(()),
                },
                _ => return Ok(()),
            };
            parked.send(()).unwrap();
            go.recv_timeout(GUARD).expect("the test never released the note's rename (failure guard)");
            Ok(())
        })
    };
    let engine = two_closed_shards(dir.path(), fs);
    armed.store(true, Ordering::Release);
    let (one, two) = std::thread::scope(|sc| {
        let one = sc.spawn(|| engine.drop_shard(1));
        one_parked.recv_timeout(GUARD).expect("drop 1 never reached its note's rename (failure guard)");
        let (tid_tx, tid) = bounded(1);
        let engine = &engine;
        let two = sc.spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            engine.drop_shard(2)
        });
        let tid = tid.recv().unwrap();
        // Polled, not timed: either event ends it.
        while two_parked.try_recv().is_err() && !(creates.load(Ordering::Acquire) == 1 && asleep(tid)) {
            std::thread::yield_now();
        }
        go_one.send(()).unwrap();
        let one = one.join().unwrap().map_err(|e| e.message);
        go_two.send(()).unwrap();
        (one, two.join().unwrap().map_err(|e| e.message))
    });
    assert_eq!((one, two), (Ok(()), Ok(())), "two drops at once");
    assert_eq!(engine.list_shards().unwrap(), Vec::<u32>::new());
    engine.close().unwrap();
    drop(engine);
    let note = std::fs::read_to_string(dir.path().join("commit-log.covered")).unwrap();
    assert!(note.parse::<u64>().is_ok(), "commit-log.covered holds {note:?}");
    let engine = Engine::open(dir.path(), options(Steps::default(), Durability::Sync)).unwrap();
    assert_eq!(engine.list_shards().unwrap(), Vec::<u32>::new());
    engine.close().unwrap();
}
