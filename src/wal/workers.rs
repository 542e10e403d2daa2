//! Background work of logs on a bounded set of threads: preparing the next
//! segment (W8's slow half, `Shared::prepare_spare`, which also writes the
//! extent record of the rotation that queued it), the periodic
//! syncs of `Durability::Periodic` (`Shared::periodic_sync`) and removing
//! the unfinished files an earlier process left (`Shared::remove_strays`).
//!
//! An engine owns one `Workers` for the logs of all its shards, so its
//! thread count does not grow with its shards; a log opened alone owns a
//! private one (a worker per kind of job it has, as many threads as it
//! always had). A log queues itself: for a preparation when a rotation
//! took its spare (at most one queued per log), for a sync when a frame
//! is written after its last periodic sync (due one interval later; at
//! most one queued per log), and again when that sync failed and left the
//! log usable (the descriptor cache could not reopen a segment). Idle logs
//! queue nothing, so a periodic sync visits only the logs written since
//! their last one.

use super::Shared;
use crate::error::{Error, Result};
use parking_lot::{Condvar, Mutex};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Name of every worker thread.
pub const WORKER_NAME: &str = "keel-wal-work";

/// Workers of an engine's logs: preparation is mostly an allocation and
/// one fdatasync per segment, a periodic sync one fdatasync per written log,
/// so two keep the device busy without a thread per log.
pub const ENGINE_WAL_WORKERS: usize = 2;

/// A sync due at a time; `seq` breaks ties in queueing order.
struct DueSync {
    at: Instant,
    seq: u64,
    log: Weak<Shared>,
}

impl PartialEq for DueSync {
    fn eq(&self, o: &DueSync) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for DueSync {}
impl PartialOrd for DueSync {
    fn partial_cmp(&self, o: &DueSync) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for DueSync {
    fn cmp(&self, o: &DueSync) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[derive(Default)]
struct Queues {
    prepare: VecDeque<Weak<Shared>>,
    strays: VecDeque<Weak<Shared>>,
    syncs: BinaryHeap<Reverse<DueSync>>,
    next_seq: u64,
    stopping: bool,
}

/// The queues the workers serve; every log hosted by them holds it.
pub(crate) struct Jobs {
    queues: Mutex<Queues>,
    work: Condvar,
    /// Time appenders spent creating a segment on their own thread because
    /// no prepared spare was ready (the workers had not got to it).
    stalled_nanos: AtomicU64,
}

impl Jobs {
    pub(super) fn prepare(&self, log: Weak<Shared>) {
        self.queues.lock().prepare.push_back(log);
        self.work.notify_one();
    }

    pub(super) fn remove_strays(&self, log: Weak<Shared>) {
        self.queues.lock().strays.push_back(log);
        self.work.notify_one();
    }

    pub(super) fn sync_after(&self, every: Duration, log: Weak<Shared>) {
        // An interval too long to be a time (Duration::MAX) never comes due.
        let Some(at) = Instant::now().checked_add(every) else { return };
        let mut q = self.queues.lock();
        q.next_seq += 1;
        let seq = q.next_seq;
        q.syncs.push(Reverse(DueSync { at, seq, log }));
        drop(q);
        self.work.notify_one();
    }

    pub(super) fn note_stall(&self, took: Duration) {
        self.stalled_nanos.fetch_add(took.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }
}

enum Job {
    Prepare(Weak<Shared>),
    Sync(Weak<Shared>),
    RemoveStrays(Weak<Shared>),
}

/// A bounded set of threads serving the background jobs of many logs.
pub struct Workers {
    jobs: Arc<Jobs>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    /// Starts `threads` workers (0 is allowed: a log with no background job).
    pub fn new(threads: usize) -> Result<Workers> {
        let jobs = Arc::new(Jobs { queues: Mutex::default(), work: Condvar::new(), stalled_nanos: AtomicU64::new(0) });
        let workers = Workers { jobs: jobs.clone(), threads: Mutex::new(Vec::with_capacity(threads)) };
        for _ in 0..threads {
            let jobs = jobs.clone();
            let t = std::thread::Builder::new()
                .name(WORKER_NAME.into())
                .spawn(move || work(&jobs))
                .map_err(|e| Error::io("starting a WAL worker thread", e))?;
            workers.threads.lock().push(t);
        }
        Ok(workers)
    }

    pub(crate) fn jobs(&self) -> &Arc<Jobs> {
        &self.jobs
    }

    /// Number of worker threads running.
    pub fn size(&self) -> usize {
        self.threads.lock().len()
    }

    /// Jobs queued and not yet taken (preparations, syncs due or not,
    /// removals of strays).
    pub fn queued(&self) -> usize {
        let q = self.jobs.queues.lock();
        q.prepare.len() + q.syncs.len() + q.strays.len()
    }

    /// Total time appenders of the hosted logs waited for a segment the
    /// workers had not prepared yet.
    pub fn stalled(&self) -> Duration {
        Duration::from_nanos(self.jobs.stalled_nanos.load(Ordering::Relaxed))
    }

    /// Stops the workers (jobs still queued belong to closed logs: a log
    /// closes before its host shuts down) and joins them. Idempotent.
    pub fn shutdown(&self) {
        self.jobs.queues.lock().stopping = true;
        self.jobs.work.notify_all();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn work(jobs: &Jobs) {
    loop {
        let job = {
            let mut q = jobs.queues.lock();
            loop {
                if q.stopping {
                    return;
                }
                let now = Instant::now();
                if q.syncs.peek().is_some_and(|d| d.0.at <= now) {
                    break Job::Sync(q.syncs.pop().expect("peeked").0.log);
                }
                if let Some(log) = q.prepare.pop_front() {
                    break Job::Prepare(log);
                }
                if let Some(log) = q.strays.pop_front() {
                    break Job::RemoveStrays(log);
                }
                match q.syncs.peek().map(|d| d.0.at) {
                    Some(at) => {
                        jobs.work.wait_until(&mut q, at);
                    }
                    None => jobs.work.wait(&mut q),
                }
            }
        };
        // A log that is gone needs nothing any more.
        match job {
            Job::Prepare(log) => {
                if let Some(log) = log.upgrade() {
                    log.prepare_spare();
                }
            }
            Job::Sync(log) => {
                if let Some(log) = log.upgrade() {
                    log.periodic_sync();
                }
            }
            Job::RemoveStrays(log) => {
                if let Some(log) = log.upgrade() {
                    log.remove_strays();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::opened::Opened;
    use crate::fs::{FileCache, StdFs, MIN_OPEN_FILES};
    use crate::test_dir::TestDir;
    use crate::wal::{Durability, Options, Wal};
    use std::io;
    use std::sync::atomic::AtomicBool;

    /// A failure guard only: every wait below ends on its condition.
    const GUARD: Duration = Duration::from_secs(60);

    /// Two logs of an engine on its workers (one here): the periodic sync
    /// of log `a` finds its segment closed by the descriptor cache and
    /// cannot open it again (EMFILE, once). That sync fails with RESOURCE
    /// and leaves the log usable, D short of the acknowledged record. It
    /// was queued again only by the log's next write: a shard written no
    /// more kept that record out of D for good, past the interval its
    /// durability promises. The sync is retried without a write now.
    #[test]
    fn a_periodic_sync_that_could_not_reopen_its_segment_is_retried_without_a_write() {
        let dir = TestDir::new("wal-periodic-retry");
        let workers = Workers::new(1).unwrap();
        // Log `b`'s first preparation holds the worker until released, so
        // that `a`'s sync runs only once its segment is evicted.
        let (parked_tx, parked) = crossbeam_channel::bounded(1);
        let (release, release_rx) = crossbeam_channel::bounded::<()>(1);
        let once = AtomicBool::new(true);
        let hold = Opened::before(
            StdFs::mapped(),
            Box::new(move |create, path| {
                let spare = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("spare-"));
                if create && spare && once.swap(false, Ordering::AcqRel) {
                    parked_tx.send(()).unwrap();
                    release_rx.recv_timeout(GUARD).expect("the test never released the worker (failure guard)");
                }
                Ok(())
            }),
        );
        let b = Wal::open_owned(&dir.join("b"), Options { durability: Durability::None, ..Options::default() }, Some(Arc::new(hold)), Some(&workers), 0).unwrap();
        let armed = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicU64::new(0));
        let (a_armed, a_hits) = (armed.clone(), hits.clone());
        let fail = Opened::before(
            StdFs::mapped(),
            Box::new(move |create, path| match !create && path.extension().is_some_and(|x| x == "wal") && a_armed.swap(false, Ordering::AcqRel) {
                true => {
                    a_hits.fetch_add(1, Ordering::AcqRel);
                    Err(io::Error::from_raw_os_error(libc::EMFILE))
                }
                false => Ok(()),
            }),
        );
        let cache = FileCache::new(MIN_OPEN_FILES);
        let fs = cache.wrap(Arc::new(fail));
        let opts = Options { durability: Durability::Periodic(Duration::from_millis(1)), prepare_ahead: false, ..Options::default() };
        let a = Wal::open_owned(&dir.join("a"), opts, Some(fs.clone()), Some(&workers), 0).unwrap();

        b.append(b"b").unwrap();
        parked.recv_timeout(GUARD).expect("log b's preparation never started (failure guard)");
        let seq = a.append(b"acknowledged").unwrap();
        // Other files push `a`'s segment out of the cache.
        let fill: Vec<_> = (0..MIN_OPEN_FILES).map(|i| fs.create(&dir.join(format!("fill-{i}"))).unwrap()).collect();
        assert!(cache.counts().evictions > 0, "precondition: {:?}", cache.counts());
        armed.store(true, Ordering::Release);
        release.send(()).unwrap();

        let deadline = Instant::now() + GUARD;
        while a.durable_seq() < seq && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let failed = hits.load(Ordering::Acquire);
        assert!(
            failed == 1 && a.durable_seq() >= seq && !a.is_poisoned(),
            "record {seq} appended, its periodic sync failed to reopen the segment {failed} time(s); D is {} (poisoned: {}) with no write since",
            a.durable_seq(),
            a.is_poisoned(),
        );
        drop(fill);
        a.close().unwrap();
        b.close().unwrap();
    }
}
