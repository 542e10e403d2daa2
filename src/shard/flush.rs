//! The ordered flush (F1–F5) and the maintenance that shares its thread
//! (sealing the appendable segment, merging immutable ones).
//!
//! Everything here runs as one job of the flush pool (pool.rs), which
//! runs at most one job per shard at a time, so two passes never overlap,
//! and no pass runs in the middle of a seal or a merge (F1).

use super::appendable::Appendable;
use super::merging::{held_from, Merged};
use super::sealed::{Data, Sealed};
use super::steps::Step;
use super::table;
use super::{files, Inner};
use crate::error::{Error, Result};
use crate::status::KEEL_STATUS_PANIC;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The shard's health: its last background failure, until work after it
/// succeeds.
pub struct Failure {
    pub error: Error,
    /// It failed in a pass, not in the seal or merges after one: a later
    /// pass that succeeds resolves it.
    in_pass: bool,
}

/// Records a job's pass in the shard's health before anyone waiting for
/// the pass hears of it: a host whose flush just succeeded does not then
/// find an older pass's failure reported (a seal's or merge's stays until
/// the maintenance succeeds).
pub fn note_pass(inner: &Inner, pass: &Result<u64>) {
    let mut last = inner.last_error.lock();
    match pass {
        Ok(_) if last.as_ref().is_some_and(|f| f.in_pass) => *last = None,
        Ok(_) => {}
        Err(e) => *last = Some(Failure { error: e.clone(), in_pass: true }),
    }
}

/// After a job's pass (already in the health, `note_pass`): the seal
/// (forced with `seal`, else when the appendable segment is big enough)
/// and merges.
pub fn maintain_after(inner: &Inner, pass: Result<u64>, seal: bool) -> Result<()> {
    pass?;
    let outcome = guarded(inner, || maintain(inner, seal));
    *inner.last_error.lock() = outcome.as_ref().err().map(|e| Failure { error: e.clone(), in_pass: false });
    outcome
}

/// Runs a step with panics caught: a panic poisons the shard (writes
/// fail with POISONED) instead of killing the thread silently.
pub fn guarded<T>(inner: &Inner, step: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)) {
        Ok(r) => r,
        Err(_) => {
            let e = Error::new(KEEL_STATUS_PANIC, "shard flush job panicked");
            inner.poison(e.clone());
            Err(e)
        }
    }
}

/// One flush pass. Returns the shard's persisted version.
pub fn pass(inner: &Inner) -> Result<u64> {
    // F2: capture the flushers under the read lock. They flush live
    // state when they run, not a copy taken here.
    let (log, sealed) = {
        let s = inner.segs.read();
        (s.appendable.log.clone(), s.sealed.clone())
    };
    let steps = &inner.opts.steps;
    steps.at(Step::PassStart);
    #[cfg(feature = "unordered-flush")]
    if let Some(seed) = inner.opts.unordered_flush_seed {
        unordered::flush(inner, seed, &log, &sealed)?;
        return acknowledge(inner);
    }
    // F3: the copy-on-write destination first; its persisted version
    // bounds what the sources may persist.
    let bound = source_bound(log.flush(steps, |v| inner.wal_durable(v))?, &sealed);
    // A destination is durable only once a reopen finds it: a seal whose
    // side-car or manifest failed left a fresh appendable segment that the
    // manifest on disk does not list, and a reopen moves an unlisted file
    // aside, copies moved into it included. So the manifest names every
    // destination before any source's deletion is persisted (it is written
    // only when the set on disk differs from the one in memory).
    inner.sync_manifest(None)?;
    for s in &sealed {
        s.flush(&*inner.fs, steps, bound)?;
    }
    acknowledge(inner)
}

/// F3's bound on what sources may persist: a copy moved out of a segment
/// lives in the appendable segment, or in a frozen one if the move came
/// before its seal, and a frozen segment's data is durable only up to what
/// its old log had persisted until its table is written. Deleting the old
/// copy durably before that would leave, after a crash, only the WAL's
/// retained records to rebuild the key from (a posting list cut to its
/// last items).
fn source_bound(appendable_persisted: u64, sealed: &[Arc<Sealed>]) -> u64 {
    sealed.iter().map(|s| s.data_persisted()).fold(appendable_persisted, u64::min)
}

/// F5: after a successful pass, ack the WAL to the smallest persisted
/// version among segments with unsaved changes (or to the last applied
/// version when none has any). The WAL keeps records >= keep_from itself.
fn acknowledge(inner: &Inner) -> Result<u64> {
    inner.opts.steps.at(Step::Ack);
    // The appendable segment's persisted version counts even when it is
    // clean: its state file then proves every version acked (open checks
    // the WAL's first record against what the files prove).
    let safe = {
        let s = inner.segs.read();
        let a = s.appendable.log.persisted();
        s.sealed.iter().filter(|x| x.dirty()).map(|x| x.persisted()).fold(a, u64::min)
    };
    // The manifest lists every file holding data the ack gives up, and
    // records the ack itself: a reopen restarts the persisted version
    // there, never lower (the files alone may record older versions).
    inner.sync_manifest(Some(safe))?;
    // The WAL's own acknowledgement restarts at zero with each open, so
    // the first pass after an open gives it the version even when the
    // shard's persisted version has not moved: the WAL segments a clean
    // close left behind go then, not at the next write's flush.
    // A reopen that found the files as they were left did not sync their
    // folder, and the WAL gives up records on the word of a durable
    // manifest only: while the WAL holds one segment (the active one,
    // which stays) an ack gives up nothing, so the ack, and the folder's
    // sync before it, wait for a second segment or a manifest written.
    if safe > inner.wal_acked.load(Ordering::Acquire)
        && (inner.manifest.is_durable() || inner.with_wal(|wal| Ok(wal.segments() > 1))?)
    {
        inner.manifest.make_durable(&*inner.fs, &inner.seg_dir)?;
        inner.with_wal(|wal| wal.ack(safe))?;
        inner.wal_acked.fetch_max(safe, Ordering::AcqRel);
    }
    inner.persisted.fetch_max(safe, Ordering::AcqRel);
    let persisted = inner.persisted.load(Ordering::Acquire);
    inner.backlog.acked(persisted);
    Ok(persisted)
}

/// Seals a big (or, with `force`, any non-empty, or one holding replayed
/// values in the WAL's mapping) appendable segment and merges small
/// immutable ones.
fn maintain(inner: &Inner, force: bool) -> Result<()> {
    // Files a seal or merge left because its manifest failed go first,
    // before another table takes more room.
    let left = inner.replaced.lock().take();
    if let Some(r) = left {
        remove_replaced(inner, r)?;
    }
    // A seal that failed earlier left a frozen segment (or a table without
    // its side-car): finish it next.
    let frozen: Vec<Arc<Sealed>> = inner.segs.read().sealed.iter().filter(|s| s.listable().is_none()).cloned().collect();
    let mut changed = !frozen.is_empty();
    for f in frozen {
        write_frozen(inner, &f)?;
    }
    let (weight, holds_wal) = {
        let segs = inner.segs.read();
        (segs.appendable.weight, segs.appendable.holds_wal)
    };
    // Values a replay kept in the mapped WAL are sealed into a table at
    // once: until then their segments stay mapped, and on disk as unlinked
    // files once truncated (docs/STORAGE.md, "Replayed values stay in the
    // WAL's mapping").
    if weight >= inner.opts.seal_bytes || (force && weight > 0) || holds_wal {
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
    inner.opts.steps.at(Step::Seal);
    // The fresh segment's files (log and first state file, fsynced) are
    // created outside the write lock, so writers do not wait for them.
    let (ident, start) = {
        let mut s = inner.segs.write();
        s.next_id += 1;
        (s.ident(s.next_id - 1), s.applied)
    };
    // Its first state file says every version up to `start` is persisted,
    // and F5 acks the WAL (and the manifest records) that far: the WAL
    // must hold them durably first. The frozen map's newest version, which
    // its table waits for, can be older: a record that only moved the
    // replicated state (an applied entry without operations) has no key.
    inner.wal_durable(start)?;
    let mut fresh = Appendable::create(&inner.fs, &inner.seg_dir, ident, start).inspect_err(|_| {
        // Its log may be made, its state file too (a failed directory sync).
        remove_unlisted(inner, ident.segment, &[files::LOG, files::STATE]);
    })?;
    let frozen = {
        let mut s = inner.segs.write();
        // Empty, it is persisted up to any version; the next pass records
        // the version of the swap in its state file.
        fresh.finish(s.applied);
        let old = std::mem::replace(&mut s.appendable, fresh);
        // Its data is durable only up to its log's persisted version
        // until the table is written; `dirty()` says so to F5.
        let f = Arc::new(Sealed::new(&inner.seg_dir, s.ident(old.id), Data::Frozen(Arc::new(old.map)), old.log.persisted()));
        s.sealed.push(f.clone());
        s.layout += 1;
        f
    };
    write_frozen(inner, &frozen)
}

/// Turns a frozen segment into a table, durably: table, side-car, the
/// manifest naming them, then the old log and state files go.
fn write_frozen(inner: &Inner, frozen: &Arc<Sealed>) -> Result<()> {
    let steps = &inner.opts.steps;
    let table = match &frozen.data {
        Data::Table(_) => frozen.clone(), // its side-car failed last time
        Data::Frozen(map) => {
            let version = map.values().map(|e| e.version).max().unwrap_or(0);
            inner.wal_durable(version)?;
            let path = inner.seg_dir.join(files::name(frozen.id, files::TABLE));
            steps.at(Step::TableWrite(frozen.id));
            let t = table::write(&*inner.fs, &path, held_from(map, b""), &[], frozen.ident)?;
            steps.at(Step::TableSwap(frozen.id));
            let mut s = inner.segs.write();
            let at = s.sealed.iter().position(|x| Arc::ptr_eq(x, frozen)).expect("frozen segment is in the set");
            // Every version in the map is durable now; deletions made while
            // the table was written carry over, unsaved.
            s.sealed[at] = Arc::new(frozen.with_data(Data::Table(t), version.max(frozen.persisted())));
            s.layout += 1;
            s.sealed[at].clone()
        }
    };
    // No pass runs on this thread before the side-car is written, and the
    // manifest lists the table only then.
    table.write_side_car(&*inner.fs, steps)?;
    // The table holds everything the log did: once the manifest says so,
    // the log goes.
    let old = [files::LOG, files::STATE].map(|ext| inner.seg_dir.join(files::name(frozen.id, ext)));
    remove_replaced(inner, Replaced { by: frozen.id, files: old.into() })
}

/// The files of segments a new table (segment `by`) replaced.
pub struct Replaced {
    by: u64,
    files: Vec<PathBuf>,
}

/// Removes `replaced` once a manifest lists the table that replaced them,
/// not before (a reopen would read them). Until that is done they stay
/// in the shard (`Inner::replaced`) for the next job's maintenance to
/// finish before anything else: a manifest that failed (no room for it)
/// must not leave them on disk, taking the room a merge was to free,
/// until a reopen.
fn remove_replaced(inner: &Inner, replaced: Replaced) -> Result<()> {
    let mut left = inner.replaced.lock();
    debug_assert!(left.is_none(), "a seal or merge runs only once the last one's files are gone");
    let r = left.insert(replaced);
    inner.sync_manifest(None)?;
    inner.opts.steps.at(Step::RemoveReplaced(r.by));
    while let Some(path) = r.files.last() {
        files::remove(&*inner.fs, path)?;
        r.files.pop();
    }
    files::sync_dir(&*inner.fs, &inner.seg_dir)?;
    *left = None;
    Ok(())
}

/// Removes the files `exts` of segment `id`, made by a seal or merge
/// that failed: no manifest will list its id (a retry takes another), so
/// they would hold their room until a reopen, which would not even
/// remove them but move them aside as strangers. Best effort: a file
/// left behind is only that.
fn remove_unlisted(inner: &Inner, id: u64, exts: &[&str]) {
    for ext in exts {
        let _ = inner.fs.remove(&inner.seg_dir.join(files::name(id, ext)));
    }
}

/// Hands the memory of a sealed map (many small allocations, freed at
/// once) back to the system; glibc otherwise keeps most of it.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the system.
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
    let steps = &inner.opts.steps;
    steps.at(Step::Merge);
    pass(inner)?;
    let bound = {
        let s = inner.segs.read();
        source_bound(s.appendable.log.persisted(), &s.sealed)
    };
    let (inputs, id) = {
        let mut s = inner.segs.write();
        let inputs: Vec<Arc<Sealed>> = s.sealed.iter().filter(|x| ids.contains(&x.id)).cloned().collect();
        let id = s.next_id;
        s.next_id += 1;
        (inputs, id)
    };
    let path = inner.seg_dir.join(files::name(id, files::TABLE));
    let merged = Merged::new(inputs.iter().map(|x| x.live_from(b"", None, bound)));
    let ident = inner.segs.read().ident(id);
    steps.at(Step::TableWrite(id));
    // Deletions after `bound` are carried over unsaved: the merged
    // side-car holds none of them, so it is complete only up to `bound`.
    let persisted = inputs.iter().map(|x| x.persisted()).min().unwrap_or(0).min(bound);
    let written = table::write(&*inner.fs, &path, merged, ids, ident).and_then(|t| {
        steps.at(Step::TableSwap(id));
        let merged = Sealed::new(&inner.seg_dir, ident, Data::Table(t), persisted);
        merged.write_side_car(&*inner.fs, steps).map(|()| merged)
    });
    let merged = match written {
        Ok(merged) => merged,
        Err(e) => {
            remove_unlisted(inner, id, &[files::TABLE, files::DELETIONS]);
            return Err(e);
        }
    };
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
        s.layout += 1;
    }
    let old = inputs.iter().flat_map(|x| x.files(&inner.seg_dir)).collect();
    remove_replaced(inner, Replaced { by: id, files: old })?;
    pass(inner).map(|_| ())
}


/// The behaviour the ordered flush replaces, kept for tests only (cargo
/// feature `unordered-flush`, never in the release library): every
/// segment flushes its live state up to the last applied version, in a
/// seeded random order, so a source may persist a deletion before its
/// destination persists the moved copy. With a step hook, a crash between
/// two of these steps is exactly the loss F1–F3 prevent.
#[cfg(feature = "unordered-flush")]
mod unordered {
    use super::super::appendable::SegmentLog;
    use super::super::sealed::Sealed;
    use super::Inner;
    use crate::error::Result;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// Passes so far in this process, mixed into each pass's order.
    static PASSES: AtomicU64 = AtomicU64::new(0);

    fn mix(mut x: u64) -> u64 {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^ (x >> 33)
    }

    pub fn flush(inner: &Inner, seed: u64, log: &Arc<SegmentLog>, sealed: &[Arc<Sealed>]) -> Result<()> {
        let applied = inner.segs.read().applied;
        inner.wal_durable(applied)?;
        let steps = &inner.opts.steps;
        let pass = PASSES.fetch_add(1, Ordering::Relaxed);
        // Index sealed.len() stands for the appendable log.
        let mut order: Vec<usize> = (0..=sealed.len()).collect();
        for i in (1..order.len()).rev() {
            let j = (mix(seed ^ pass.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64) % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        for i in order {
            match sealed.get(i) {
                Some(s) => s.flush(&*inner.fs, steps, applied)?,
                None => {
                    log.flush(steps, |_| Ok(()))?;
                }
            }
        }
        Ok(())
    }
}
