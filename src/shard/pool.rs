//! The flush pool: a fixed number of worker threads that run the flush
//! work (passes, seals, merges) of every shard registered with it, so an
//! engine's thread count does not grow with its shards.
//!
//! F1 holds per shard, not per thread: a shard is queued at most once, a
//! job (the pass, then the seal and merges after it) runs start to finish
//! on the worker that took it, and requests that arrive while a job is
//! queued or running are served by the next one (a request never starts a
//! second, concurrent pass; a waiter gets the outcome of a pass that
//! started after its request). The periodic flush needs no thread per
//! shard either: an idle worker waits until the earliest shard's interval
//! ends and queues it.
//!
//! In lockstep (a step hook that `owns_schedule`), the workers take turns:
//! one at a time passes `Step::Idle`, looks for work and runs what it
//! found, so the scheduler sees a single stream of steps whatever the
//! pool's size, and interval passes are off as with a thread per shard.

use super::flush;
use super::steps::{Step, Steps};
use super::Inner;
use crate::error::{Error, Result};
use crate::status::KEEL_STATUS_CLOSED;
use crossbeam_channel::Sender;
use parking_lot::{Condvar, Mutex};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

/// Most workers a pool may have (`Options::flush_threads`).
pub const MAX_FLUSH_THREADS: usize = 256;

/// Name of every worker thread.
pub const WORKER_NAME: &str = "keel-flush";

/// The default pool size: twice the cores, at least 2 and at most 8. A
/// pass mostly waits for fdatasync, so a few more workers than cores keep
/// the device busy; more than 8 only queue on the same device.
pub fn default_flush_threads() -> usize {
    static DEFAULT: OnceLock<usize> = OnceLock::new();
    *DEFAULT.get_or_init(|| (2 * std::thread::available_parallelism().map_or(1, |n| n.get())).clamp(2, 8))
}

pub enum Request {
    /// Run a pass; reply with the persisted version if a sender is given.
    Flush(Option<Sender<Result<u64>>>),
    /// The appendable segment may have grown past the seal threshold.
    Maintain,
    /// Run a pass, then seal the appendable segment whatever its size;
    /// reply once the seal (and the rest of the job's maintenance) is done.
    Seal(Sender<Result<()>>),
    /// Final pass, then the shard leaves the pool.
    Stop(Sender<Result<u64>>),
}

/// Where a shard is in the pool.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum At {
    Idle,
    Queued,
    Running,
    /// Stopped: its final pass ran (or a job failed beyond its guard).
    Gone,
}

/// A shard's requests not yet taken by a job, and its place in the pool.
/// Locked only under the pool's state lock (lock order: pool, member).
struct Sched {
    at: At,
    wanted: bool,
    waiters: Vec<Sender<Result<u64>>>,
    /// Waiting for a seal (`Request::Seal`).
    seals: Vec<Sender<Result<()>>>,
    stop: Option<Sender<Result<u64>>>,
    /// When its interval pass is due (idle shards with an interval).
    due: Option<Instant>,
    /// It has an entry in the pool's timer heap.
    armed: bool,
}

struct Member {
    inner: Arc<Inner>,
    sched: Mutex<Sched>,
    /// Set while a worker runs its job: F1's "one at a time", checked.
    running: AtomicBool,
}

/// A shard's interval pass, ordered by when it is due.
struct Due(Instant, Arc<Member>);

impl PartialEq for Due {
    fn eq(&self, o: &Due) -> bool {
        self.0 == o.0
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Due) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Due) -> std::cmp::Ordering {
        self.0.cmp(&o.0)
    }
}

#[derive(Default)]
struct State {
    ready: VecDeque<Arc<Member>>,
    timers: BinaryHeap<Reverse<Due>>,
    /// Registered shards that have not left yet.
    members: usize,
    /// Shut down: no new shard; workers exit once every member left.
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    steps: Steps,
    /// Lockstep: held by the one worker that may pass steps.
    turn: Option<Mutex<()>>,
}

/// What an engine shares among its shards: the flush pool, the workers
/// that prepare WAL segments and run periodic WAL syncs, and the cache
/// that bounds the files they hold open.
pub(crate) struct Host {
    pub flush: Arc<FlushPool>,
    pub wal: crate::wal::Workers,
    pub files: Arc<crate::fs::FileCache>,
    /// Write stalls of all its shards (`backlog.rs`).
    pub stalls: Arc<super::backlog::Stalls>,
}

/// A bounded pool of flush workers (see the module comment).
pub struct FlushPool {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    size: usize,
}

impl FlushPool {
    /// Starts `threads` workers and returns once each runs (so it bears
    /// its name). `steps` is the hook of the shards that will register
    /// (an engine's shards share their options).
    pub fn new(threads: usize, steps: Steps) -> Result<Arc<FlushPool>> {
        debug_assert!((1..=MAX_FLUSH_THREADS).contains(&threads));
        let lockstep = steps.owns_schedule();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            steps,
            turn: lockstep.then(|| Mutex::new(())),
        });
        let pool = Arc::new(FlushPool { shared: shared.clone(), workers: Mutex::new(Vec::new()), size: threads });
        let (started, running) = crossbeam_channel::unbounded();
        for _ in 0..threads {
            let (shared, started) = (shared.clone(), started.clone());
            let worker = std::thread::Builder::new()
                .name(WORKER_NAME.into())
                .spawn(move || {
                    let _ = started.send(());
                    work(&shared)
                })
                .map_err(|e| Error::io("starting a flush worker", e))?;
            pool.workers.lock().push(worker);
        }
        for _ in 0..threads {
            running.recv().expect("a worker holds a sender until it has sent");
        }
        Ok(pool)
    }

    /// Number of worker threads.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Shards queued for a job and not yet taken by a worker.
    pub fn queued(&self) -> usize {
        self.shared.state.lock().ready.len()
    }

    /// Adds a shard; its first request queues it. CLOSED once shut down.
    pub(super) fn register(self: &Arc<Self>, inner: Arc<Inner>) -> Result<Membership> {
        let mut st = self.shared.state.lock();
        if st.stopping {
            return Err(Error::new(KEEL_STATUS_CLOSED, "the flush pool is shut down (engine closed)"));
        }
        st.members += 1;
        let sched = Sched { at: At::Idle, wanted: false, waiters: Vec::new(), seals: Vec::new(), stop: None, due: None, armed: false };
        let member = Arc::new(Member { inner, sched: Mutex::new(sched), running: AtomicBool::new(false) });
        Ok(Membership { pool: self.clone(), member })
    }

    /// Refuses new shards, lets the workers finish the jobs of the shards
    /// still registered (each leaves after its final pass) and joins them.
    /// Idempotent.
    pub fn shutdown(&self) {
        self.shared.state.lock().stopping = true;
        self.shared.work.notify_all();
        let me = std::thread::current().id();
        for w in self.workers.lock().drain(..) {
            // A worker never shuts its own pool down; if it did, joining
            // itself would hang, so it is left to exit on its own.
            if w.thread().id() != me {
                let _ = w.join();
            }
        }
    }
}

impl Drop for FlushPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A shard's place in a pool, held by the shard until it closes.
pub(super) struct Membership {
    pool: Arc<FlushPool>,
    member: Arc<Member>,
}

impl Membership {
    /// Queues the shard for a job unless one is queued already; a job
    /// running takes the request into its successor. CLOSED once the
    /// shard left the pool.
    pub fn request(&self, r: Request) -> Result<()> {
        let shared = &self.pool.shared;
        let mut st = shared.state.lock();
        let mut s = self.member.sched.lock();
        if s.at == At::Gone {
            return Err(Error::new(KEEL_STATUS_CLOSED, "the shard's flush has stopped"));
        }
        match r {
            Request::Flush(reply) => s.waiters.extend(reply),
            Request::Maintain => {}
            Request::Seal(reply) => s.seals.push(reply),
            Request::Stop(reply) => s.stop = Some(reply),
        }
        s.wanted = true;
        if s.at == At::Idle {
            s.at = At::Queued;
            st.ready.push_back(self.member.clone());
            drop(s);
            drop(st);
            shared.work.notify_one();
        }
        Ok(())
    }

    /// Final pass; the shard has left the pool when this returns.
    pub fn stop(self) -> Result<u64> {
        let (reply, done) = crossbeam_channel::bounded(1);
        self.request(Request::Stop(reply))?;
        done.recv().map_err(|_| Error::new(KEEL_STATUS_CLOSED, "the shard's flush stopped before its final pass"))?
    }
}

/// A worker: looks for a queued shard (firing due interval passes), runs
/// its job, again; exits once the pool is shut down and empty.
fn work(shared: &Shared) {
    let lockstep = shared.turn.is_some();
    loop {
        let _turn = shared.turn.as_ref().map(|t| t.lock());
        shared.steps.at(Step::Idle);
        let member = {
            let mut st = shared.state.lock();
            loop {
                if !lockstep {
                    fire_due(&mut st, Instant::now());
                }
                if let Some(m) = st.ready.pop_front() {
                    break Some(m);
                }
                if st.stopping && st.members == 0 {
                    return;
                }
                if lockstep {
                    // The scheduler decides when to look again.
                    break None;
                }
                match st.timers.peek().map(|d| d.0 .0) {
                    Some(at) => {
                        shared.work.wait_until(&mut st, at);
                    }
                    None => shared.work.wait(&mut st),
                }
            }
        };
        if let Some(m) = member {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_job(shared, &m))).is_err() {
                // Only the pool's own bookkeeping can get here (the
                // shard's work runs guarded): the shard leaves the pool
                // poisoned, the worker goes on with the others.
                m.inner.poison(Error::new(crate::status::KEEL_STATUS_PANIC, "shard flush job panicked"));
                leave(shared, &m);
            }
        }
    }
}

/// Queues the idle shards whose interval ended by `now`.
fn fire_due(st: &mut State, now: Instant) {
    while st.timers.peek().is_some_and(|d| d.0 .0 <= now) {
        let Reverse(Due(_, m)) = st.timers.pop().expect("peeked");
        let mut s = m.sched.lock();
        match (s.at, s.due) {
            (At::Idle, Some(due)) if due <= now => {
                s.armed = false;
                s.wanted = true;
                s.at = At::Queued;
                drop(s);
                st.ready.push_back(m);
            }
            // Passed since: due later now.
            (At::Idle, Some(due)) => {
                drop(s);
                st.timers.push(Reverse(Due(due, m)));
            }
            // Queued or running: the job's end arms it again.
            _ => s.armed = false,
        }
    }
}

/// One job: a pass for every request taken, then the seal and merges
/// (or, for a stop, the final pass and leaving the pool).
fn run_job(shared: &Shared, m: &Arc<Member>) {
    let was_running = m.running.swap(true, Ordering::AcqRel);
    debug_assert!(!was_running, "two flush jobs of one shard at once");
    let (waiters, seals, stop) = {
        let _st = shared.state.lock();
        let mut s = m.sched.lock();
        debug_assert_eq!(s.at, At::Queued);
        s.at = At::Running;
        s.wanted = false;
        (std::mem::take(&mut s.waiters), std::mem::take(&mut s.seals), s.stop.take())
    };
    let inner = &*m.inner;
    let outcome = flush::guarded(inner, || flush::pass(inner));
    flush::note_pass(inner, &outcome);
    if let Some(stop) = stop {
        m.running.store(false, Ordering::Release);
        // Out of the pool before anyone hears of the final pass, so a
        // pool shut down right after finds no member left.
        leave(shared, m);
        for w in waiters {
            let _ = w.send(outcome.clone());
        }
        let _ = stop.send(outcome);
        return;
    }
    for w in waiters {
        let _ = w.send(outcome.clone());
    }
    let maintained = flush::maintain_after(inner, outcome, !seals.is_empty());
    for w in seals {
        let _ = w.send(maintained.clone());
    }
    m.running.store(false, Ordering::Release);
    let mut st = shared.state.lock();
    let mut s = m.sched.lock();
    if s.wanted {
        s.at = At::Queued;
        drop(s);
        st.ready.push_back(m.clone());
        drop(st);
        shared.work.notify_one();
        return;
    }
    s.at = At::Idle;
    // An interval too long to be a time (Duration::MAX) never comes due.
    let due = inner.opts.flush_interval.filter(|_| shared.turn.is_none()).and_then(|every| Instant::now().checked_add(every));
    if let Some(due) = due {
        s.due = Some(due);
        if !s.armed {
            s.armed = true;
            drop(s);
            st.timers.push(Reverse(Due(due, m.clone())));
            drop(st);
            // A worker waiting for a later deadline (or none) looks again.
            shared.work.notify_one();
        }
    }
}

/// The shard leaves the pool: later requests are CLOSED, waiters not yet
/// served hear that the flush stopped (their senders are dropped).
fn leave(shared: &Shared, m: &Member) {
    let mut st = shared.state.lock();
    let mut s = m.sched.lock();
    if s.at != At::Gone {
        s.at = At::Gone;
        s.waiters.clear();
        s.seals.clear();
        s.stop = None;
        st.members -= 1;
        if std::mem::take(&mut s.armed) {
            // Its pending interval pass would keep the shard in memory.
            st.timers.retain(|d| !std::ptr::eq(&*d.0 .1, m));
        }
    }
    drop(s);
    drop(st);
    shared.work.notify_all();
}
