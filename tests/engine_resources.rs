//! What an engine costs per shard (docs/STORAGE.md, "Resource model"):
//! 300 shards open in one engine add no thread (the flush pool and the
//! WAL workers are the engine's, sized by options, not by shards), take
//! no LOCK file each, and an idle one prepares no spare segment and holds
//! at most 1 MiB of disk; a periodic sync visits only the shards written
//! since the last one; a closed shard gives its files back.
//!
//! The only test of this binary, because it counts the process's threads
//! (/proc/self/task): no other test may start threads beside it.

mod common;

use common::TempDir;
use keel::engine::Engine;
use keel::fs::{File, FileSystem, ReadMap, StdFs};
use keel::shard::{Op, Options};
use keel::wal::{Durability, ENGINE_WAL_WORKERS};
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SHARDS: u32 = 300;
const WRITTEN: u32 = 10;
const FLUSH_THREADS: usize = 2;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Asserts that the thread count settles at `want`: a shard's open runs
/// its WAL replay on a short-lived helper thread, which may still be
/// exiting when the open returns.
fn threads_settle(want: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while threads() != want {
        assert!(Instant::now() < deadline, "{what}: {} threads, not {want}", threads());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Bytes of disk the files below `dir` take (allocated blocks).
fn disk_below(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() { disk_below(&e.path()) } else { m.blocks() * 512 };
    }
    total
}

/// The shard id a path below `<engine>/shards/<id>/` belongs to.
fn shard_of(path: &Path) -> Option<u32> {
    let mut parts = path.components().map(|c| c.as_os_str().to_string_lossy().into_owned());
    parts.by_ref().find(|p| p == "shards")?;
    parts.next()?.parse().ok()
}

/// The real file system, counting per shard the fdatasyncs of WAL
/// segments created directly (not spares, which only the preparation
/// syncs): after open, only a WAL sync does those.
struct SyncCount {
    real: StdFs,
    syncs: Arc<Mutex<HashMap<u32, u64>>>,
}

struct CountedFile {
    real: Arc<dyn File>,
    shard: Option<u32>,
    syncs: Arc<Mutex<HashMap<u32, u64>>>,
}

impl File for CountedFile {
    fn len(&self) -> io::Result<u64> {
        self.real.len()
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.real.read_at(buf, off)
    }
    fn write_at(&self, parts: &[&[u8]], off: u64) -> io::Result<()> {
        self.real.write_at(parts, off)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.real.allocate(len)
    }
    fn reserve(&self, len: u64) -> io::Result<()> {
        self.real.reserve(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        if let Some(id) = self.shard {
            *self.syncs.lock().unwrap().entry(id).or_default() += 1;
        }
        self.real.sync_data()
    }
}

impl SyncCount {
    fn wrap(&self, path: &Path, real: Arc<dyn File>) -> Arc<dyn File> {
        let name = path.file_name().unwrap().to_string_lossy();
        let segment = path.parent().is_some_and(|p| p.ends_with("wal")) && name.ends_with(".wal.tmp") && !name.starts_with("spare-");
        Arc::new(CountedFile { real, shard: shard_of(path).filter(|_| segment), syncs: self.syncs.clone() })
    }
}

impl FileSystem for SyncCount {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.real.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.real.list(dir)
    }
    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn File>> {
        Ok(self.wrap(path, self.real.open(path, writable)?))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        Ok(self.wrap(path, self.real.create(path)?))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.real.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.real.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.real.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.real.exists(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.real.remove_dir_all(dir)
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn std::any::Any + Send + Sync>> {
        self.real.lock(path)
    }
    fn map_readonly(&self, path: &Path) -> io::Result<Option<ReadMap>> {
        self.real.map_readonly(path)
    }
}

/// Polls `done` until it holds; fails after a minute (a generous bound
/// for a busy machine: the test asserts that it happens, not how fast).
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not after a minute");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn shards_cost_no_thread_and_little_disk() {
    let t = TempDir::new("engine-resources");
    let dir: PathBuf = t.path().join("engine");
    let syncs = Arc::new(Mutex::new(HashMap::new()));
    let fs = Arc::new(SyncCount { real: StdFs::direct(), syncs: syncs.clone() });
    let opts = Options {
        durability: Durability::Periodic(Duration::from_millis(20)),
        flush_interval: None,
        flush_threads: FLUSH_THREADS,
        // Room for every shard's files: this test counts them (the
        // descriptor cache's bound is tests/engine_fds.rs's subject).
        max_open_files: 4 * SHARDS as usize,
        ..Options::default()
    };

    let before = threads();
    let engine = Engine::open_with_fs(&dir, opts, fs).unwrap();
    let engine_threads = threads() - before;
    assert_eq!(engine_threads, FLUSH_THREADS + ENGINE_WAL_WORKERS, "the engine's own threads: flush pool and WAL workers");
    assert_eq!(engine.stats().unwrap().threads, engine_threads as u64);

    let mut shards: Vec<_> = (0..SHARDS).map(|id| engine.open_shard(id, true).unwrap()).collect();
    threads_settle(before + engine_threads, &format!("{SHARDS} open shards add no thread"));
    let stats = engine.stats().unwrap();
    assert_eq!(stats.open_shards, SHARDS as u64);
    assert!(stats.open_files >= SHARDS as u64, "each shard holds its active WAL segment open: {stats:?}");
    for id in 0..SHARDS {
        let wal = dir.join("shards").join(id.to_string()).join("wal");
        assert!(!wal.join("LOCK").exists(), "shard {id}: its WAL takes no LOCK of its own (the engine's covers it)");
    }

    // Idle shards: no spare segment (one is prepared at the first write),
    // at most 1 MiB of disk each.
    assert_eq!(stats.wal_queue, 0, "idle shards queue no WAL job");
    let spares = |id: u32| {
        let wal = dir.join("shards").join(id.to_string()).join("wal");
        std::fs::read_dir(wal).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("spare-")).count()
    };
    assert!((0..SHARDS).all(|id| spares(id) == 0), "an idle shard's WAL prepares no spare");
    let most = (0..SHARDS).map(|id| disk_below(&dir.join("shards").join(id.to_string()))).max().unwrap();
    println!("{SHARDS} idle shards: {engine_threads} engine threads, {} open files, at most {most} bytes of disk per shard", stats.open_files);
    assert!(most <= 1 << 20, "an idle shard holds {most} bytes of disk");

    // Periodic durability: the written shards get synced on the engine's
    // workers; the idle ones queue nothing.
    let synced_before: HashMap<u32, u64> = syncs.lock().unwrap().clone();
    for id in 0..WRITTEN {
        shards[id as usize].write(&[Op::Put { key: b"k".to_vec(), value: id.to_le_bytes().to_vec() }]).unwrap();
    }
    threads_settle(before + engine_threads, "writes start no thread");
    eventually("every written shard synced", || {
        let now = syncs.lock().unwrap();
        (0..WRITTEN).all(|id| now.get(&id) > synced_before.get(&id))
    });
    eventually("the periodic syncs done", || engine.stats().unwrap().wal_queue == 0);
    eventually("a spare prepared for each written shard", || (0..WRITTEN).all(|id| spares(id) == 1));
    assert!((WRITTEN..SHARDS).all(|id| spares(id) == 0), "still none for the idle ones");
    let now = syncs.lock().unwrap().clone();
    for id in WRITTEN..SHARDS {
        assert_eq!(now.get(&id), synced_before.get(&id), "shard {id} was not written, yet its WAL was synced");
    }

    // A closed shard gives its files back.
    let open_files = engine.stats().unwrap().open_files;
    shards.pop().unwrap().close().unwrap();
    let stats = engine.stats().unwrap();
    assert_eq!(stats.open_shards, SHARDS as u64 - 1);
    assert!(stats.open_files < open_files, "{} files open after a close, {open_files} before", stats.open_files);

    engine.close().unwrap();
    threads_settle(before, "the engine's threads end with it");
    drop(engine); // releases the LOCK

    // Reopened, every written key is there.
    let engine = Engine::open(&dir, Options { flush_threads: FLUSH_THREADS, ..Options::default() }).unwrap();
    for id in 0..WRITTEN {
        let s = engine.open_shard(id, false).unwrap();
        assert_eq!(s.get(b"k").unwrap().map(|e| e.value), Some(keel::shard::Value::Bytes(id.to_le_bytes().to_vec())));
    }
}
