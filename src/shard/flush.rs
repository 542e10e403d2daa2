//! The ordered flush (F1–F5) and the maintenance that shares its thread
//! (sealing the appendable segment, merging immutable ones).
//!
//! One thread per shard runs everything here, so two passes never
//! overlap, and no pass runs in the middle of a seal or a merge (F1).

use super::appendable::Appendable;
use super::entry::Entry;
use super::sealed::{Data, Sealed};
use super::table;
use super::{files, Inner};
use crate::error::{Error, Result};
use crate::status::KEEL_STATUS_PANIC;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::iter::Peekable;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub enum Request {
    /// Run a pass; reply with the persisted version if a sender is given.
    Flush(Option<Sender<Result<u64>>>),
    /// The appendable segment may have grown past the seal threshold.
    Maintain,
    /// Final pass, then exit.
    Stop(Sender<Result<u64>>),
}

/// The flush thread's loop. Requests that arrive while a pass runs wait
/// for the next pass and share it (F1: a request never starts a second,
/// concurrent pass).
pub fn run(inner: Arc<Inner>, requests: Receiver<Request>) {
    let interval = inner.opts.flush_interval;
    loop {
        let first = match interval {
            Some(every) => requests.recv_timeout(every),
            None => requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let mut waiters = Vec::new();
        let mut stop = None;
        let mut take = |r: Request, waiters: &mut Vec<Sender<Result<u64>>>| match r {
            Request::Flush(reply) => waiters.extend(reply),
            Request::Maintain => {}
            Request::Stop(reply) => stop = Some(reply),
        };
        match first {
            Ok(r) => take(r, &mut waiters),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(r) = requests.try_recv() {
            take(r, &mut waiters);
        }
        let outcome = guarded(&inner, || pass(&inner));
        for w in waiters {
            let _ = w.send(outcome.clone());
        }
        if let Some(reply) = stop {
            let _ = reply.send(outcome);
            return;
        }
        // Health: the last background failure, until a pass and the
        // maintenance after it both succeed.
        match outcome.and_then(|_| guarded(&inner, || maintain(&inner))) {
            Ok(()) => *inner.last_error.lock() = None,
            Err(e) => inner.report(e),
        }
    }
}

/// Runs a step with panics caught: a panic poisons the shard (writes
/// fail with POISONED) instead of killing the thread silently.
fn guarded<T>(inner: &Inner, step: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)) {
        Ok(r) => r,
        Err(_) => {
            let e = Error::new(KEEL_STATUS_PANIC, "shard flush thread panicked");
            inner.poison(e.clone());
            Err(e)
        }
    }
}

/// One flush pass. Returns the shard's persisted version.
pub fn pass(inner: &Inner) -> Result<u64> {
    // F2: capture the flushers under the read lock. They flush live
    // state when they run, not a copy taken here.
    let (log, sealed, applied) = {
        let s = inner.segs.read();
        (s.appendable.log.clone(), s.sealed.clone(), s.applied)
    };
    if let Some(seed) = inner.opts.unordered_flush_seed {
        unordered::flush(inner, seed, &log, &sealed, applied)?;
        return acknowledge(inner);
    }
    // F3: the copy-on-write destination first; its persisted version
    // bounds what the sources may persist.
    let bound = log.flush(|v| inner.wal_durable(v))?;
    for s in &sealed {
        s.flush(&*inner.fs, bound)?;
    }
    acknowledge(inner)
}

/// F5: after a successful pass, ack the WAL to the smallest persisted
/// version among segments with unsaved changes (or to the last applied
/// version when none has any). The WAL keeps records >= keep_from itself.
fn acknowledge(inner: &Inner) -> Result<u64> {
    // The manifest lists every file holding data the ack gives up.
    inner.sync_manifest()?;
    // The appendable segment's persisted version counts even when it is
    // clean: its state file then proves every version acked (open checks
    // the WAL's first record against what the files prove).
    let safe = {
        let s = inner.segs.read();
        let a = s.appendable.log.persisted();
        s.sealed.iter().filter(|x| x.dirty()).map(|x| x.persisted()).fold(a, u64::min)
    };
    if safe > inner.persisted.load(Ordering::Acquire) {
        inner.with_wal(|wal| wal.ack(safe))?;
        inner.persisted.fetch_max(safe, Ordering::AcqRel);
    }
    Ok(inner.persisted.load(Ordering::Acquire))
}

/// Seals a big appendable segment and merges small immutable ones.
fn maintain(inner: &Inner) -> Result<()> {
    // A seal that failed earlier left a frozen segment (or a table without
    // its side-car): finish it first.
    let frozen: Vec<Arc<Sealed>> = inner.segs.read().sealed.iter().filter(|s| s.listable().is_none()).cloned().collect();
    let mut changed = !frozen.is_empty();
    for f in frozen {
        write_frozen(inner, &f)?;
    }
    if inner.segs.read().appendable.weight >= inner.opts.seal_bytes {
        seal(inner)?;
        changed = true;
    }
    // Several merges may be due (a burst of seals, a delete-heavy
    // stretch); bounded so a pass comes back soon.
    for _ in 0..8 {
        match merge_candidates(inner) {
            Some(ids) => merge(inner, &ids)?,
            None => break,
        }
        changed = true;
    }
    if changed {
        release_freed_memory();
    }
    Ok(())
}

/// Freezes the appendable segment (writes go to a fresh one from then
/// on) and turns it into an immutable table.
pub fn seal(inner: &Inner) -> Result<()> {
    let frozen = {
        let mut s = inner.segs.write();
        let id = s.next_id;
        let fresh = Appendable::create(&inner.fs, &inner.seg_dir, s.ident(id), s.applied)?;
        s.next_id += 1;
        let old = std::mem::replace(&mut s.appendable, fresh);
        // Its data is durable only up to its log's persisted version
        // until the table is written; `dirty()` says so to F5.
        let f = Arc::new(Sealed::new(&inner.seg_dir, s.ident(old.id), Data::Frozen(Arc::new(old.map)), old.log.persisted()));
        s.sealed.push(f.clone());
        f
    };
    write_frozen(inner, &frozen)
}

/// Turns a frozen segment into a table, durably: table, side-car, the
/// manifest naming them, then the old log and state files go.
fn write_frozen(inner: &Inner, frozen: &Arc<Sealed>) -> Result<()> {
    let table = match &frozen.data {
        Data::Table(_) => frozen.clone(), // its side-car failed last time
        Data::Frozen(map) => {
            let version = map.values().map(|e| e.version).max().unwrap_or(0);
            inner.wal_durable(version)?;
            let path = inner.seg_dir.join(files::name(frozen.id, files::TABLE));
            let t = table::write(&*inner.fs, &path, map.iter().map(|(k, e)| Ok((k.as_slice().to_vec(), e.clone()))), &[], frozen.ident)?;
            let mut s = inner.segs.write();
            let at = s.sealed.iter().position(|x| Arc::ptr_eq(x, frozen)).expect("frozen segment is in the set");
            // Every version in the map is durable now; deletions made while
            // the table was written carry over, unsaved.
            s.sealed[at] = Arc::new(frozen.with_data(Data::Table(t), version.max(frozen.persisted())));
            s.sealed[at].clone()
        }
    };
    // No pass runs on this thread before the side-car is written, and the
    // manifest lists the table only then.
    table.write_side_car(&*inner.fs)?;
    // The table holds everything the log did: once the manifest says so,
    // the log goes.
    inner.sync_manifest()?;
    for ext in [files::LOG, files::STATE] {
        files::remove(&*inner.fs, &inner.seg_dir.join(files::name(frozen.id, ext)))?;
    }
    files::sync_dir(&*inner.fs, &inner.seg_dir)
}

/// Hands the memory of a sealed map (many small allocations, freed at
/// once) back to the system; glibc otherwise keeps most of it.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Ids of segments to merge: the smallest ones when there are more than
/// `max_sealed`, or one whose entries are mostly deleted (so delete churn
/// cannot grow side-cars and tables without bound).
fn merge_candidates(inner: &Inner) -> Option<Vec<u64>> {
    let s = inner.segs.read();
    let tables: Vec<&Arc<Sealed>> = s.sealed.iter().filter(|x| x.listable().is_some()).collect();
    if let Some(worn) = tables.iter().find(|x| x.deleted_count() as u64 * 2 > x.len().max(1)) {
        return Some(vec![worn.id]);
    }
    if tables.len() <= inner.opts.max_sealed {
        return None;
    }
    let mut by_size: Vec<_> = tables.iter().map(|x| (x.size(), x.id)).collect();
    by_size.sort();
    let n = (tables.len() - inner.opts.max_sealed + 1).max(2);
    Some(by_size.into_iter().take(n).map(|(_, id)| id).collect())
}

/// Writes one table holding the live entries of `ids`, then swaps it in.
/// The merged table is durable (and names the segments it replaces)
/// before they are removed, so recovery can finish an interrupted merge.
pub fn merge(inner: &Inner, ids: &[u64]) -> Result<()> {
    // Keys deleted at or below `bound` have their new copy durable in the
    // appendable segment (F3), so leaving them out loses nothing. Later
    // deletions keep the key in the merged table and carry over, unsaved.
    pass(inner)?;
    let bound = inner.segs.read().appendable.log.persisted();
    let (inputs, id) = {
        let mut s = inner.segs.write();
        let inputs: Vec<Arc<Sealed>> = s.sealed.iter().filter(|x| ids.contains(&x.id)).cloned().collect();
        let id = s.next_id;
        s.next_id += 1;
        (inputs, id)
    };
    let path = inner.seg_dir.join(files::name(id, files::TABLE));
    let sources = inputs.iter().map(|x| x.live_from(b"", bound).peekable()).collect();
    let ident = inner.segs.read().ident(id);
    let t = table::write(&*inner.fs, &path, MergeIter { sources }, ids, ident)?;
    let persisted = inputs.iter().map(|x| x.persisted()).min().unwrap_or(0);
    let merged = Sealed::new(&inner.seg_dir, ident, Data::Table(t), persisted);
    merged.write_side_car(&*inner.fs)?;
    {
        let mut s = inner.segs.write();
        for x in &inputs {
            for (k, v) in x.deletions_after(bound) {
                merged.mark_deleted(&k, v);
            }
        }
        let at = s.sealed.iter().position(|x| ids.contains(&x.id)).unwrap();
        s.sealed.retain(|x| !ids.contains(&x.id));
        let at = at.min(s.sealed.len());
        s.sealed.insert(at, Arc::new(merged));
    }
    inner.sync_manifest()?;
    for x in &inputs {
        x.remove_files(&*inner.fs, &inner.seg_dir)?;
    }
    files::sync_dir(&*inner.fs, &inner.seg_dir)?;
    pass(inner).map(|_| ())
}

type Source<'a> = Peekable<Box<dyn Iterator<Item = Result<(Vec<u8>, Entry)>> + 'a>>;

/// K-way merge of sorted sources; a key present in several keeps its
/// newest version (only possible after a crash, see Segments::replay).
struct MergeIter<'a> {
    sources: Vec<Source<'a>>,
}

impl Iterator for MergeIter<'_> {
    type Item = Result<(Vec<u8>, Entry)>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut best: Option<Vec<u8>> = None;
        for s in &mut self.sources {
            match s.peek() {
                Some(Err(_)) => return s.next(),
                Some(Ok((k, _))) if best.as_ref().map_or(true, |b| k < b) => best = Some(k.clone()),
                _ => {}
            }
        }
        let key = best?;
        let mut winner: Option<Entry> = None;
        for s in &mut self.sources {
            if matches!(s.peek(), Some(Ok((k, _))) if *k == key) {
                let (_, e) = s.next().unwrap().unwrap();
                if winner.as_ref().map_or(true, |w| w.version < e.version) {
                    winner = Some(e);
                }
            }
        }
        Some(Ok((key, winner.unwrap())))
    }
}

/// The behaviour the ordered flush replaces, kept for tests only: every
/// segment flushes its own live state on its own thread, after a random
/// delay, in no particular order.
mod unordered {
    use super::super::appendable::SegmentLog;
    use super::super::sealed::Sealed;
    use super::Inner;
    use crate::error::Result;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    static DRAWS: AtomicU64 = AtomicU64::new(0);

    fn delay(seed: u64) -> Duration {
        let mut x = seed ^ DRAWS.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        Duration::from_micros(x % 20_000)
    }

    pub fn flush(inner: &Inner, seed: u64, log: &Arc<SegmentLog>, sealed: &[Arc<Sealed>], applied: u64) -> Result<()> {
        inner.wal_durable(applied)?;
        let fs = &*inner.fs;
        std::thread::scope(|scope| {
            let log = log.clone();
            let d = delay(seed);
            let mut threads = vec![scope.spawn(move || {
                std::thread::sleep(d);
                log.flush(|_| Ok(())).map(|_| ())
            })];
            for s in sealed {
                let d = delay(seed);
                threads.push(scope.spawn(move || {
                    std::thread::sleep(d);
                    s.flush(fs, applied)
                }));
            }
            threads.into_iter().try_for_each(|t| t.join().expect("flusher thread panicked"))
        })
    }
}
