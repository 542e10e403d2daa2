//! The engine's flush pool (src/shard/pool.rs): many shards, few flush
//! threads, and the ordered flush (F1) kept per shard.
//!
//! One test per binary counts threads (/proc/self/task/*/comm), so no
//! other test of this file may start flush workers beside it: everything
//! that counts runs in `many_shards_share_a_bounded_pool`.
//!
//! What it checks, with real threads and no timing assertion:
//! - 64 shards on a pool of 2 add exactly 2 flush threads (and no
//!   per-shard flush thread); a shard opened alone has a worker of its own
//!   that ends with it;
//! - writers spread over the 64 shards while other threads request
//!   flushes of random shards concurrently; every `flush(wait)` returns a
//!   persisted version at or past the last write its caller saw (the pass
//!   that served it started after the request);
//! - a shard never has two jobs at once: no two file operations on one
//!   shard's segment folder ever overlap (`Exclusive`, a file system that
//!   counts them), and the pool's own debug assertion would poison the
//!   shard (every shard is checked healthy);
//! - a job runs start to finish on one worker, its pass first: on every
//!   worker thread the steps between two `Idle`s start with `PassStart`,
//!   and a seal or merge comes only after the pass's `Ack` (`JobShape`);
//! - every shard recovers exactly its model after close and reopen.

mod common;

use common::rng::Rng;
use common::shard_model::{apply, Model};
use common::TempDir;
use keel::engine::Engine;
use keel::fs::{File, FileSystem, ReadMap, StdFs};
use keel::shard::{Op, Options, Shard, Step, StepHook, Steps};
use keel::status::KEEL_STATUS_INVALID_ARGUMENT;
use keel::wal::Durability;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::Duration;

const SHARDS: u32 = 64;
const WRITERS: u32 = 4;
const FLUSHERS: u32 = 4;
const WRITES_PER_SHARD: u64 = 60;

/// Threads of this process whose name (comm, cut to 15 bytes) is `name`.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// The real file system, counting the file operations in flight on each
/// shard's segment folder: two at once means two jobs of one shard ran
/// at once.
struct Exclusive {
    real: StdFs,
    in_flight: Mutex<HashMap<String, u32>>,
    overlaps: AtomicU64,
}

impl Exclusive {
    /// Runs `op` on `path`, counted against its shard if it is in one's
    /// segment folder; the yield widens the window a second job would hit.
    fn on<T>(&self, path: &Path, op: impl FnOnce() -> T) -> T {
        let s = path.to_string_lossy();
        let Some(shard) = s.split_once("/shards/").and_then(|(_, rest)| rest.split_once("/segments")).map(|(id, _)| id.to_string())
        else {
            return op();
        };
        {
            let mut m = self.in_flight.lock();
            let n = m.entry(shard.clone()).or_default();
            *n += 1;
            if *n > 1 {
                self.overlaps.fetch_add(1, Ordering::Relaxed);
            }
        }
        std::thread::yield_now();
        let r = op();
        *self.in_flight.lock().get_mut(&shard).unwrap() -= 1;
        r
    }
}

impl FileSystem for Exclusive {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.on(dir, || self.real.create_dir_all(dir))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.on(dir, || self.real.list(dir))
    }
    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn File>> {
        self.on(path, || self.real.open(path, writable))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        self.on(path, || self.real.create(path))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.on(from, || self.real.rename(from, to))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.on(path, || self.real.remove(path))
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.on(dir, || self.real.sync_dir(dir))
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.on(path, || self.real.exists(path))
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

/// Where a worker thread is in its current job.
#[derive(Clone, Copy)]
enum Job {
    /// Passed `Idle`: the next step, if any, starts a job.
    Between,
    /// In a job; `acked` once its pass reached `Ack`.
    In { acked: bool },
}

/// Checks the shape of every job on every thread that passes `Idle` (the
/// flush workers): pass first, seal and merge only after it.
#[derive(Default)]
struct JobShape {
    at: Mutex<HashMap<ThreadId, Job>>,
    jobs: AtomicU64,
    seals_and_merges: AtomicU64,
    violations: Mutex<Vec<String>>,
}

impl StepHook for JobShape {
    fn at(&self, step: Step) {
        let me = std::thread::current().id();
        let mut at = self.at.lock();
        let Some(job) = at.get_mut(&me) else {
            // Not a worker (yet): a shard's recovery on its opener.
            if step == Step::Idle {
                at.insert(me, Job::Between);
            }
            return;
        };
        let bad = match (*job, step) {
            (_, Step::Idle) => {
                *job = Job::Between;
                None
            }
            (Job::Between, Step::PassStart) => {
                self.jobs.fetch_add(1, Ordering::Relaxed);
                *job = Job::In { acked: false };
                None
            }
            (Job::Between, s) => Some(format!("a job began with {s:?}, not its pass")),
            (Job::In { .. }, Step::Ack) => {
                *job = Job::In { acked: true };
                None
            }
            (Job::In { acked: false }, s @ (Step::Seal | Step::Merge)) => Some(format!("{s:?} before the job's pass was done")),
            (Job::In { .. }, Step::Seal | Step::Merge) => {
                self.seals_and_merges.fetch_add(1, Ordering::Relaxed);
                None
            }
            (Job::In { .. }, _) => None,
        };
        if let Some(b) = bad {
            self.violations.lock().push(b);
        }
    }
}

fn options(threads: usize, steps: Steps) -> Options {
    Options {
        durability: Durability::None,
        wal_segment_size: 64 << 10,
        flush_interval: Some(Duration::from_millis(2)),
        seal_bytes: 4096,
        max_sealed: 2,
        flush_threads: threads,
        steps,
        ..Options::default()
    }
}

/// Write `i` of shard `id`: puts, appends and deletes over a few keys,
/// with values big enough to seal every few writes.
fn op(id: u32, i: u64) -> Op {
    let mut r = Rng::new(((id as u64) << 32) ^ i);
    let k = r.below(12);
    match (k < 8, r.chance(150)) {
        (_, true) => Op::Delete { key: format!("k{k}").into_bytes() },
        (true, false) => Op::Put { key: format!("k{k}").into_bytes(), value: vec![b'a' + (i % 26) as u8; 200 + r.below(1000) as usize] },
        (false, false) => Op::Append { key: format!("k{k}").into_bytes(), item: format!("{id}.{i}").into_bytes() },
    }
}

fn state(s: &Shard) -> Model {
    s.scan(b"", None).unwrap().map(|r| r.map(|(k, e)| (k, e.value))).collect::<Result<_, _>>().unwrap()
}

#[test]
fn many_shards_share_a_bounded_pool() {
    let t = TempDir::new("flush-pool");
    for bad in [0, keel::shard::MAX_FLUSH_THREADS + 1] {
        let e = Engine::open(t.path(), options(bad, Steps::default())).err().expect("a pool size out of range");
        assert_eq!(e.status, KEEL_STATUS_INVALID_ARGUMENT, "{e}");
    }

    let before = threads_named("keel-flush");
    let alone = Shard::open(&t.path().join("alone"), options(4, Steps::default())).unwrap();
    assert_eq!(threads_named("keel-flush"), before + 1, "a shard opened alone has one worker of its own");
    alone.close().unwrap();
    assert_eq!(threads_named("keel-flush"), before, "it ends with the shard");

    let fs = Arc::new(Exclusive { real: StdFs::direct(), in_flight: Mutex::new(HashMap::new()), overlaps: AtomicU64::new(0) });
    let shape = Arc::new(JobShape::default());
    let dir = t.path().join("engine");
    let engine = Arc::new(Engine::open_with_fs(&dir, options(2, Steps::new(shape.clone())), fs.clone()).unwrap());
    assert_eq!(engine.flush_threads(), 2);
    let shards: Vec<Shard> = (0..SHARDS).map(|id| engine.open_shard(id, true).unwrap()).collect();
    assert_eq!(threads_named("keel-flush"), before + 2, "64 shards, a pool of 2");
    assert_eq!(threads_named("keel-shard-flus"), 0, "no flush thread per shard");
    assert_eq!(threads_named(keel::wal::WORKER_NAME), keel::wal::ENGINE_WAL_WORKERS, "the shards' WALs share the engine's workers");

    // Writer w owns the shards id % WRITERS == w (so each shard's order,
    // and its model, is known); flushers hit any shard at any time.
    let versions: Arc<Vec<AtomicU64>> = Arc::new((0..SHARDS).map(|_| AtomicU64::new(0)).collect());
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (shards, versions) = (shards.clone(), versions.clone());
            std::thread::spawn(move || {
                for i in 0..WRITES_PER_SHARD {
                    for id in (w..SHARDS).step_by(WRITERS as usize) {
                        let (_, last) = shards[id as usize].write(&[op(id, i)]).unwrap();
                        versions[id as usize].store(last, Ordering::Release);
                    }
                }
            })
        })
        .collect();
    let flushers: Vec<_> = (0..FLUSHERS)
        .map(|f| {
            let (shards, versions) = (shards.clone(), versions.clone());
            std::thread::spawn(move || {
                let mut r = Rng::new(f as u64);
                for _ in 0..250 {
                    let id = r.below(SHARDS as u64) as usize;
                    let seen = versions[id].load(Ordering::Acquire);
                    // flush(false) only asks; flush(true) waits for a pass.
                    let wait = r.chance(700);
                    let persisted = shards[id].flush(wait).unwrap();
                    assert!(
                        !wait || persisted >= seen,
                        "shard {id}: flush(wait) returned {persisted}, before the write {seen} its caller saw"
                    );
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    for f in flushers {
        f.join().unwrap();
    }

    let mut models = Vec::new();
    for (id, s) in shards.iter().enumerate() {
        let mut m = Model::new();
        for i in 0..WRITES_PER_SHARD {
            apply(&mut m, &[op(id as u32, i)]);
        }
        assert!(s.background_error().is_none(), "shard {id}: {:?}", s.background_error());
        assert_eq!(state(s), m, "shard {id} before close");
        assert!(s.stats().sealed_segments >= 1, "shard {id} never sealed: the workload should seal and merge");
        models.push(m);
    }
    engine.close().unwrap();
    assert_eq!(threads_named("keel-flush"), before, "engine close stops its workers");
    assert_eq!(fs.overlaps.load(Ordering::Relaxed), 0, "two jobs of one shard touched its files at once");
    let violations = shape.violations.lock().clone();
    assert!(violations.is_empty(), "{violations:?}");
    assert!(shape.jobs.load(Ordering::Relaxed) >= SHARDS as u64, "every shard ran jobs");
    assert!(shape.seals_and_merges.load(Ordering::Relaxed) > 0, "the workload sealed");
    drop(engine);

    let engine = Engine::open(&dir, options(3, Steps::default())).unwrap();
    for (id, m) in models.iter().enumerate() {
        let s = engine.open_shard(id as u32, false).unwrap();
        assert_eq!(&state(&s), m, "shard {id} after reopen");
    }
    engine.close().unwrap();
}
