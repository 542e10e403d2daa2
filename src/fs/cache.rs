//! A bound on the files an engine keeps open: the descriptor cache.
//!
//! Every file a shard opens through `FileCache::wrap` is a `CachedFile`,
//! a handle that names the file (its path, and whether it is writable)
//! and may or may not hold it open. The cache keeps at most `limit`
//! descriptors open (a file holds one, or two: `File::descriptors`); when
//! an open would go past that, the least recently used file nobody is
//! using is closed (**evicted**), and the next operation on its handle
//! opens it again by name (a **miss**; an operation that finds its file
//! open is a **hit**).
//!
//! What is never evicted (**pinned**):
//! - a file while an operation on it runs: the operation holds a counted
//!   reference (`Arc`) to the open file, taken under the cache's lock, so
//!   eviction cannot close it mid-read or mid-write, and a descriptor is
//!   closed only when its last reference goes, never reused under a user.
//!   The WAL segment being appended is pinned for the append, not for
//!   being the active segment: an idle shard holds nothing open;
//! - a file whose name was removed or renamed over while it was open: the
//!   open file is the only way left to it, so it stays open until its
//!   handle is dropped.
//!
//! Pinned files count towards the limit; when they alone exceed it, the
//! cache is over its limit until they are released (then it evicts).
//!
//! A file evicted with changes (writes, allocations) that no successful
//! `sync_data` through its handle has covered is synced and closed first,
//! after the cache's lock is released: a write-back error must not wait
//! for the next descriptor opened on the file, which sees it only if the
//! inode stayed in memory, and NFS or FUSE may report it at close(2)
//! alone. A failed sync or close is kept for the handle and returned by
//! its next `sync_data` (once, as fdatasync reports an error once per
//! descriptor); until the outcome is known, the handle's users wait.
//!
//! Names change under open handles (a prepared WAL segment is renamed into
//! place, a shard's folder is renamed when it is dropped), so renames and
//! removals go through the cache too: they move or detach the handles of
//! the names they change, under a lock that every open by name shares, so
//! a reopen never finds another file under a handle's old name. A handle
//! detached while closed can no longer reach its file: reading or writing
//! it fails with NotFound, and syncing it succeeds (its data left the
//! file system with its last name; there is nothing to make durable).

use super::{File, FileSystem, ReadMap};
use parking_lot::{Condvar, Mutex, RwLock};
use std::any::Any;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The smallest bound `FileCache::new` accepts: one shard operation pins
/// up to three files at once (WAL segment, spare, segment log).
pub const MIN_OPEN_FILES: usize = 16;

/// No slot (the end of the LRU list).
const NIL: usize = usize::MAX;

/// What the cache has done so far (`FileCache::counts`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounts {
    /// Descriptors the cache holds open now (pinned files included).
    pub open: u64,
    /// Operations that found their file open.
    pub hits: u64,
    /// Operations that opened their file again (it had been evicted).
    pub misses: u64,
    /// Files closed to stay within the limit.
    pub evictions: u64,
}

/// One handle's entry.
struct Slot {
    /// Tells this handle from a later one in the same slot.
    id: u64,
    /// None once its name was removed or renamed over (detached).
    path: Option<PathBuf>,
    writable: bool,
    /// The file system that opens it again.
    fs: Arc<dyn FileSystem>,
    file: Option<Arc<dyn File>>,
    /// Operations running on it.
    users: usize,
    /// Changes made through it, and how many of them the last successful
    /// sync covered: it has unsynced changes while the two differ.
    changes: u64,
    synced: u64,
    /// Evicted with unsynced changes, being synced and closed.
    closing: bool,
    /// That sync or close failed: for the next `sync_data`.
    lost: Option<io::Error>,
    /// LRU links; only open, unused, attached slots are on the list.
    prev: usize,
    next: usize,
    listed: bool,
}

#[derive(Default)]
struct State {
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Name -> slots of handles of that name (several handles may name one
    /// file). Keyed by the name's bytes: byte comparisons are cheap, and
    /// the names below a folder `d` are those from `d/` on that start so.
    by_path: BTreeMap<Vec<u8>, Vec<usize>>,
    /// Least recently used first.
    head: usize,
    tail: usize,
    /// Descriptors of the open files.
    open: usize,
    /// Slot ids handed out.
    ids: u64,
}

/// The descriptor cache of an engine (see the module comment).
pub struct FileCache {
    limit: usize,
    state: Mutex<State>,
    /// Shared by every open by name, exclusive for renames and removals:
    /// a name cannot change between the moment a handle's name is read and
    /// the moment the file is opened by it.
    names: RwLock<()>,
    /// Signalled when an evicted file's sync and close are done.
    settled: Condvar,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl State {
    fn slot(&mut self, i: usize) -> &mut Slot {
        self.slots[i].as_mut().expect("a live handle's slot")
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next, listed) = {
            let s = self.slot(i);
            (s.prev, s.next, std::mem::replace(&mut s.listed, false))
        };
        if !listed {
            return;
        }
        match prev {
            NIL => self.head = next,
            p => self.slot(p).next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slot(n).prev = prev,
        }
    }

    /// Puts slot `i` at the most recently used end, if it may be evicted.
    fn push_recent(&mut self, i: usize) {
        let tail = self.tail;
        let s = self.slot(i);
        debug_assert!(!s.listed);
        if s.users > 0 || s.file.is_none() || s.path.is_none() {
            return;
        }
        s.listed = true;
        s.prev = tail;
        s.next = NIL;
        match tail {
            NIL => self.head = i,
            t => self.slot(t).next = i,
        }
        self.tail = i;
    }

    /// Takes least recently used files out of their slots until at most
    /// `limit` descriptors are open or every open file is pinned; returns
    /// them, to be closed once the lock is released (`Evictions`).
    fn evict(&mut self, limit: usize) -> Vec<Evicted> {
        let mut closed = Vec::new();
        while self.open > limit && self.head != NIL {
            let i = self.head;
            self.unlink(i);
            let s = self.slot(i);
            let file = s.file.take().expect("listed slots are open");
            let unsynced = (s.changes != s.synced).then_some(s.changes);
            s.closing = unsynced.is_some();
            let id = s.id;
            self.open -= file.descriptors();
            closed.push(Evicted { slot: i, id, file, unsynced });
        }
        closed
    }

    /// Detaches every handle of `path` and of the names below it.
    fn detach_below(&mut self, path: &Path) {
        for i in self.take_below(path).into_iter().flat_map(|(_, v)| v) {
            self.unlink(i);
            self.slot(i).path = None;
        }
    }

    /// Removes `path` and the names below it from the index.
    fn take_below(&mut self, path: &Path) -> Vec<(PathBuf, Vec<usize>)> {
        let exact = key(path);
        let mut folder = exact.clone();
        folder.push(b'/');
        let below = self.by_path.range(folder.clone()..).map(|(k, _)| k).take_while(|k| k.starts_with(&folder));
        let keys: Vec<Vec<u8>> = self.by_path.get_key_value(&exact).map(|(k, _)| k).into_iter().chain(below).cloned().collect();
        keys.into_iter()
            .map(|k| {
                let v = self.by_path.remove(&k).expect("listed");
                (PathBuf::from(OsString::from_vec(k)), v)
            })
            .collect()
    }
}

fn key(path: &Path) -> Vec<u8> {
    path.as_os_str().as_bytes().to_vec()
}

impl FileCache {
    /// A cache keeping at most `limit` files open (at least `MIN_OPEN_FILES`).
    pub fn new(limit: usize) -> Arc<FileCache> {
        debug_assert!(limit >= MIN_OPEN_FILES);
        Arc::new(FileCache {
            limit,
            state: Mutex::new(State { head: NIL, tail: NIL, ..State::default() }),
            names: RwLock::new(()),
            settled: Condvar::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        })
    }

    /// `fs` with the files it opens held by this cache.
    pub fn wrap(self: &Arc<Self>, fs: Arc<dyn FileSystem>) -> Arc<dyn FileSystem> {
        Arc::new(CachedFs { fs, cache: self.clone() })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn counts(&self) -> CacheCounts {
        CacheCounts {
            open: self.state.lock().open as u64,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    /// Registers a file just opened (under the names lock) by `path`; the
    /// files it evicts are closed when the returned `Evictions` is dropped
    /// (after the names lock: a rename need not wait for their syncs).
    fn register(self: &Arc<Self>, fs: &Arc<dyn FileSystem>, path: &Path, writable: bool, file: Arc<dyn File>) -> (CachedFile, Evictions<'_>) {
        let fds = file.descriptors();
        let mut st = self.state.lock();
        st.ids += 1;
        let slot = Slot {
            id: st.ids,
            path: Some(path.to_path_buf()),
            writable,
            fs: fs.clone(),
            file: Some(file),
            users: 0,
            changes: 0,
            synced: 0,
            closing: false,
            lost: None,
            prev: NIL,
            next: NIL,
            listed: false,
        };
        let i = match st.free.pop() {
            Some(i) => {
                st.slots[i] = Some(slot);
                i
            }
            None => {
                st.slots.push(Some(slot));
                st.slots.len() - 1
            }
        };
        st.by_path.entry(key(path)).or_default().push(i);
        st.open += fds;
        st.push_recent(i);
        let closed = self.evict_locked(&mut st);
        (CachedFile { cache: self.clone(), slot: i }, closed)
    }

    fn evict_locked(&self, st: &mut State) -> Evictions<'_> {
        let files = st.evict(self.limit);
        self.evictions.fetch_add(files.len() as u64, Ordering::Relaxed);
        Evictions { cache: self, files }
    }

    /// Syncs and closes an evicted file with unsynced changes, keeping a
    /// failure for its handle's next `sync_data`; drops (closes) the rest.
    fn close_evicted(&self, e: Evicted) {
        let Some(changes) = e.unsynced else { return };
        let file = e.file;
        // The only reference (`Pinned` lets go of its own before it
        // unpins), so close(2)'s error is this one's to see. A panic
        // counts as a failure: the slot must leave `closing`, or its
        // users would wait for good.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let synced = file.sync_data();
            synced.and(file.close())
        }))
        .unwrap_or_else(|_| Err(io::Error::other("syncing a file the descriptor cache closed panicked")));
        let mut st = self.state.lock();
        // A handle dropped meanwhile has no one left to tell.
        if let Some(s) = st.slots[e.slot].as_mut().filter(|s| s.id == e.id) {
            s.closing = false;
            match outcome {
                Ok(()) => s.synced = changes,
                Err(err) => {
                    s.lost.get_or_insert(err);
                }
            }
        }
        self.settled.notify_all();
    }

    /// The open file of slot `i`, pinned until the guard is dropped;
    /// opened again by name if it was evicted. `Ok(None)`: detached while
    /// closed (see the module comment).
    fn pin(&self, i: usize) -> io::Result<Option<Pinned<'_>>> {
        if let Some(p) = self.pin_open(i, &mut self.state.lock()) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(p));
        }
        let names = self.names.read();
        let (fs, path, writable) = {
            let mut st = self.state.lock();
            // Its eviction is syncing it: that outcome comes before any use
            // (a sync through a new descriptor could miss its error).
            while st.slot(i).closing {
                self.settled.wait(&mut st);
            }
            if let Some(p) = self.pin_open(i, &mut st) {
                self.hits.fetch_add(1, Ordering::Relaxed); // reopened by another user meanwhile
                return Ok(Some(p));
            }
            let s = st.slot(i);
            let Some(path) = s.path.clone() else { return Ok(None) };
            (s.fs.clone(), path, s.writable)
        };
        // Outside the cache's lock (a slow open holds up no other file);
        // the names lock keeps `path` naming this handle's file.
        let fresh = fs.open(&path, writable).map_err(|e| io::Error::new(e.kind(), ReopenFailed(e)))?;
        self.misses.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock();
        if let Some(p) = self.pin_open(i, &mut st) {
            drop(st);
            drop(fresh); // another user reopened it first
            return Ok(Some(p));
        }
        let s = st.slot(i);
        s.file = Some(fresh.clone());
        s.users += 1;
        let changes = s.changes;
        st.open += fresh.descriptors();
        let closed = self.evict_locked(&mut st);
        drop(st);
        drop(names);
        drop(closed);
        Ok(Some(Pinned::new(self, i, fresh, changes)))
    }

    fn pin_open(&self, i: usize, st: &mut State) -> Option<Pinned<'_>> {
        let file = st.slot(i).file.clone()?;
        st.unlink(i);
        let s = st.slot(i);
        s.users += 1;
        Some(Pinned::new(self, i, file, s.changes))
    }

    /// Ends an operation on slot `i`; `p` tells whether it changed the
    /// file and whether it synced the changes made before it began.
    fn unpin(&self, i: usize, p: &Pinned<'_>) {
        let closed = {
            let mut st = self.state.lock();
            let s = st.slot(i);
            debug_assert!(s.users > 0);
            s.changes += p.changed as u64;
            if p.synced {
                s.synced = s.synced.max(p.changes);
            }
            s.users -= 1;
            if s.users > 0 {
                return;
            }
            st.push_recent(i);
            // Files pinned past the limit are closed once released.
            self.evict_locked(&mut st)
        };
        drop(closed);
    }

    /// The failure of the sync or close of slot `i`'s file at its last
    /// eviction, if nobody was told yet (see the module comment).
    fn take_lost(&self, i: usize) -> Option<io::Error> {
        self.state.lock().slot(i).lost.take()
    }

    fn release(&self, i: usize) {
        let file = {
            let mut st = self.state.lock();
            st.unlink(i);
            let s = st.slots[i].take().expect("released once");
            debug_assert_eq!(s.users, 0, "a handle is dropped with no operation running on it");
            if let Some(path) = &s.path {
                let emptied = st.by_path.get_mut(&key(path)).map(|v| {
                    v.retain(|&j| j != i);
                    v.is_empty()
                });
                if emptied == Some(true) {
                    st.by_path.remove(&key(path));
                }
            }
            st.open -= s.file.as_ref().map_or(0, |f| f.descriptors());
            st.free.push(i);
            s.file
        };
        drop(file);
    }

    /// After `from` was renamed to `to`: handles of `to` (replaced) are
    /// detached, handles of `from` and below are renamed. Those of `from`
    /// are taken first: a name renamed onto itself replaced nothing.
    fn renamed(&self, from: &Path, to: &Path) {
        let mut st = self.state.lock();
        let moved = st.take_below(from);
        st.detach_below(to);
        for (old, slots) in moved {
            // (joining an empty rest would add a trailing slash)
            let new = match old.strip_prefix(from).expect("below from") {
                rest if rest.as_os_str().is_empty() => to.to_path_buf(),
                rest => to.join(rest),
            };
            for &i in &slots {
                st.slot(i).path = Some(new.clone());
            }
            st.by_path.entry(key(&new)).or_default().extend(slots);
        }
    }
}

/// An operation's hold on an open file (see "pinned" in the module comment).
struct Pinned<'a> {
    cache: &'a FileCache,
    slot: usize,
    /// None only while it is dropped.
    file: Option<Arc<dyn File>>,
    /// The slot's changes when the operation began.
    changes: u64,
    /// The operation changed the file.
    changed: bool,
    /// The operation synced the file.
    synced: bool,
}

impl<'a> Pinned<'a> {
    fn new(cache: &'a FileCache, slot: usize, file: Arc<dyn File>, changes: u64) -> Pinned<'a> {
        Pinned { cache, slot, file: Some(file), changes, changed: false, synced: false }
    }

    fn file(&self) -> &dyn File {
        self.file.as_deref().expect("held until dropped")
    }
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        // Let go first: an eviction in `unpin` needs the only reference.
        self.file = None;
        self.cache.unpin(self.slot, self);
    }
}

/// Files `State::evict` took out of their slots, closed when this is
/// dropped, which its taker does once it holds none of the cache's locks:
/// a file with unsynced changes is synced first (`close_evicted`), and a
/// slow fdatasync holds up only that file's own users.
struct Evictions<'a> {
    cache: &'a FileCache,
    files: Vec<Evicted>,
}

/// An evicted file; `unsynced`: the slot's changes, when its last
/// successful sync did not cover them all.
struct Evicted {
    slot: usize,
    id: u64,
    file: Arc<dyn File>,
    unsynced: Option<u64>,
}

impl Drop for Evictions<'_> {
    fn drop(&mut self) {
        for e in self.files.drain(..) {
            self.cache.close_evicted(e);
        }
    }
}

/// A file of the cache (see the module comment).
pub struct CachedFile {
    cache: Arc<FileCache>,
    slot: usize,
}

/// The error of an operation on a `CachedFile` whose file the cache had
/// closed and could not open again (the open's error inside): the
/// operation itself never ran, so nothing was written and no fdatasync
/// ran, let alone failed. Callers that may retry only then (the WAL) tell
/// it apart with `reopen_failure`; the errno alone cannot, as a write or
/// an fdatasync may fail with ENOMEM or EAGAIN itself.
#[derive(Debug, thiserror::Error)]
#[error("reopening a file the descriptor cache had closed: {0}")]
struct ReopenFailed(io::Error);

/// The open's error, when `e` is an operation's failure to open its file
/// again (`ReopenFailed`); None for an error of the operation itself.
pub fn reopen_failure(e: &io::Error) -> Option<&io::Error> {
    e.get_ref()?.downcast_ref::<ReopenFailed>().map(|r| &r.0)
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "the file was removed or replaced while the descriptor cache had it closed")
}

impl CachedFile {
    fn with<R>(&self, op: impl FnOnce(&dyn File) -> io::Result<R>) -> io::Result<R> {
        let pinned = self.cache.pin(self.slot)?.ok_or_else(detached)?;
        op(pinned.file())
    }

    /// `with` for an operation that changes the file (counted whatever it
    /// returns: a failed one may have changed some bytes).
    fn changing(&self, op: impl FnOnce(&dyn File) -> io::Result<()>) -> io::Result<()> {
        let mut pinned = self.cache.pin(self.slot)?.ok_or_else(detached)?;
        pinned.changed = true;
        op(pinned.file())
    }
}

impl File for CachedFile {
    fn len(&self) -> io::Result<u64> {
        self.with(|f| f.len())
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.with(|f| f.read_at(buf, off))
    }
    fn write_at(&self, parts: &[&[u8]], off: u64) -> io::Result<()> {
        self.changing(|f| f.write_at(parts, off))
    }
    fn append_at(&self, parts: &[&[u8]], off: u64) -> io::Result<()> {
        self.changing(|f| f.append_at(parts, off))
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.changing(|f| f.allocate(len))
    }
    fn reserve(&self, len: u64) -> io::Result<()> {
        self.changing(|f| f.reserve(len))
    }
    fn sync_data(&self) -> io::Result<()> {
        let pinned = self.cache.pin(self.slot);
        // Checked once the pin waited out an eviction syncing the file.
        if let Some(e) = self.cache.take_lost(self.slot) {
            return Err(e);
        }
        match pinned? {
            Some(mut pinned) => {
                pinned.file().sync_data()?;
                pinned.synced = true;
                Ok(())
            }
            None => Ok(()), // detached while closed: see the module comment
        }
    }
    fn prefault(&self) {
        // Best effort, as the call itself: a file that cannot be opened
        // again is simply not faulted in.
        if let Ok(Some(pinned)) = self.cache.pin(self.slot) {
            pinned.file().prefault();
        }
    }
}

impl Drop for CachedFile {
    fn drop(&mut self) {
        self.cache.release(self.slot);
    }
}

/// A file system whose files the cache holds (`FileCache::wrap`).
struct CachedFs {
    fs: Arc<dyn FileSystem>,
    cache: Arc<FileCache>,
}

impl FileSystem for CachedFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.fs.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.fs.list(dir)
    }
    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn File>> {
        let (file, _evicted) = {
            let _names = self.cache.names.read();
            let file = self.fs.open(path, writable)?;
            self.cache.register(&self.fs, path, writable, file)
        };
        Ok(Arc::new(file))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        let (file, _evicted) = {
            let _names = self.cache.names.read();
            let file = self.fs.create(path)?;
            self.cache.register(&self.fs, path, true, file)
        };
        Ok(Arc::new(file))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let _names = self.cache.names.write();
        self.fs.rename(from, to)?;
        self.cache.renamed(from, to);
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let _names = self.cache.names.write();
        self.fs.remove(path)?;
        self.cache.state.lock().detach_below(path);
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.fs.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.fs.exists(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let _names = self.cache.names.write();
        // Detached even when only part of it went: what is left is no
        // longer where its handles' users think it is.
        let removed = self.fs.remove_dir_all(dir);
        self.cache.state.lock().detach_below(dir);
        removed
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        self.fs.lock(path)
    }
    fn map_readonly(&self, path: &Path) -> io::Result<Option<ReadMap>> {
        // A map holds no descriptor.
        self.fs.map_readonly(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::opened::Opened;
    use crate::fs::StdFs;
    use crate::test_dir::TestDir;

    fn setup(tag: &str, limit: usize) -> (TestDir, Arc<FileCache>, Arc<dyn FileSystem>) {
        let cache = FileCache::new(limit);
        let fs = cache.wrap(Arc::new(StdFs::direct()));
        (TestDir::new(&format!("fdcache-{tag}")), cache, fs)
    }

    fn read(f: &dyn File) -> Vec<u8> {
        let mut buf = vec![0u8; f.len().unwrap() as usize];
        assert_eq!(f.read_at(&mut buf, 0).unwrap(), buf.len());
        buf
    }

    #[test]
    fn least_recently_used_files_are_closed_and_reopened_on_demand() {
        let (d, cache, fs) = setup("lru", MIN_OPEN_FILES);
        let files: Vec<_> = (0..MIN_OPEN_FILES + 4)
            .map(|i| {
                let f = fs.create(&d.join(format!("f{i}"))).unwrap();
                f.write_at(&[format!("file {i}").as_bytes()], 0).unwrap();
                f
            })
            .collect();
        let c = cache.counts();
        assert_eq!((c.open, c.evictions), (MIN_OPEN_FILES as u64, 4), "{c:?}");
        // Files 0..4 were used least recently: they were the ones closed.
        let hits = c.hits;
        assert_eq!(read(&*files[4]), b"file 4");
        assert_eq!(cache.counts().hits, hits + 2, "len and read_at of an open file hit");
        assert_eq!(read(&*files[0]), b"file 0", "an evicted file is opened again by name");
        let c = cache.counts();
        assert_eq!((c.open, c.misses, c.evictions), (MIN_OPEN_FILES as u64, 1, 5), "{c:?}");
        drop(files);
        assert_eq!(cache.counts().open, 0, "a dropped handle closes its file");
    }

    #[test]
    fn a_file_in_use_is_not_evicted() {
        let (d, cache, fs) = setup("pinned", MIN_OPEN_FILES);
        let std: Arc<dyn FileSystem> = Arc::new(StdFs::direct());
        let path = d.join("held");
        let (held, _) = cache.register(&std, &path, true, std.create(&path).unwrap());
        held.write_at(&[b"held"], 0).unwrap();
        // While an operation runs on `held`, every other file is opened.
        let mut others = Vec::new();
        let got = held.with(|f| {
            for i in 0..2 * MIN_OPEN_FILES {
                others.push(fs.create(&d.join(format!("o{i}"))).unwrap());
            }
            assert!(cache.counts().open > MIN_OPEN_FILES as u64 - 1);
            let mut b = [0u8; 4];
            f.read_at(&mut b, 0)?;
            Ok(b)
        });
        assert_eq!(&got.unwrap(), b"held", "the pinned file stayed open through the evictions");
        assert_eq!(read(&held), b"held");
        assert_eq!(cache.counts().misses, 0, "and was never reopened");
        assert!(cache.counts().open <= MIN_OPEN_FILES as u64);
    }

    #[test]
    fn renames_move_handles_and_replaced_files_stay_reachable_while_open() {
        let (d, cache, fs) = setup("rename", MIN_OPEN_FILES);
        let (a, b) = (d.join("a.tmp"), d.join("b"));
        let old = fs.create(&b).unwrap();
        old.write_at(&[b"old"], 0).unwrap();
        let new = fs.create(&a).unwrap();
        new.write_at(&[b"new"], 0).unwrap();
        fs.rename(&a, &b).unwrap();
        // Push both out of the cache.
        let fill: Vec<_> = (0..MIN_OPEN_FILES).map(|i| fs.create(&d.join(format!("x{i}"))).unwrap()).collect();
        assert_eq!(read(&*new), b"new", "reopened under its new name");
        // `old` was open when replaced: it is kept open, so still readable.
        assert_eq!(read(&*old), b"old");
        drop(fill);
        // A folder rename moves the handles below it.
        let sub = d.join("sub");
        fs.create_dir_all(&sub).unwrap();
        let inner = fs.create(&sub.join("f")).unwrap();
        inner.write_at(&[b"inner"], 0).unwrap();
        let sibling = fs.create(&d.join("sub.x")).unwrap(); // sorts between `sub` and `sub/f`
        sibling.write_at(&[b"sibling"], 0).unwrap();
        fs.rename(&sub, &d.join("moved")).unwrap();
        let fill: Vec<_> = (0..MIN_OPEN_FILES).map(|i| fs.create(&d.join(format!("y{i}"))).unwrap()).collect();
        assert_eq!(read(&*inner), b"inner");
        assert_eq!(read(&*sibling), b"sibling", "a name that only starts like the folder's stays");
        drop(fill);
        // Removed while closed: gone for reads, nothing left to sync.
        let gone = fs.create(&d.join("gone")).unwrap();
        let fill: Vec<_> = (0..MIN_OPEN_FILES).map(|i| fs.create(&d.join(format!("z{i}"))).unwrap()).collect();
        fs.remove(&d.join("gone")).unwrap();
        assert_eq!(gone.len().unwrap_err().kind(), io::ErrorKind::NotFound);
        gone.sync_data().unwrap();
        drop(fill);
        assert!(cache.counts().evictions > 0);
    }

    /// rename(2) of a name onto itself succeeds and changes nothing
    /// (POSIX): the handles of that name still reach their file, so a
    /// closed one is opened again for its writes and its sync, never
    /// taken for a replaced file (NotFound, and a sync that syncs nothing).
    #[test]
    fn a_rename_onto_the_same_name_keeps_its_handles() {
        let (d, cache, fs) = setup("rename-self", MIN_OPEN_FILES);
        let (a, dir) = (d.join("a"), d.join("sub"));
        let f = fs.create(&a).unwrap();
        fs.create_dir_all(&dir).unwrap();
        let inner = fs.create(&dir.join("f")).unwrap();
        // Both closed by the cache.
        let fill: Vec<_> = (0..MIN_OPEN_FILES).map(|i| fs.create(&d.join(format!("x{i}"))).unwrap()).collect();
        fs.rename(&a, &a).unwrap();
        fs.rename(&dir, &dir).unwrap();
        f.write_at(&[b"still a"], 0).unwrap();
        inner.write_at(&[b"still f"], 0).unwrap();
        let misses = cache.counts().misses;
        drop(fill);
        let fill: Vec<_> = (0..MIN_OPEN_FILES).map(|i| fs.create(&d.join(format!("y{i}"))).unwrap()).collect();
        f.sync_data().unwrap();
        assert!(cache.counts().misses > misses, "the sync opened the file again to sync it");
        assert_eq!(read(&*f), b"still a");
        assert_eq!(read(&*inner), b"still f");
        drop(fill);
    }

    /// An operation whose file cannot be opened again says so, whatever
    /// the errno (`reopen_failure`): its caller tells it from an error of
    /// the operation itself, which may carry the same errno.
    #[test]
    fn a_failed_reopen_is_told_apart_from_the_operation_s_own_error() {
        let (d, _cache, fs) = setup("reopen-failure", MIN_OPEN_FILES);
        let f = fs.create(&d.join("f")).unwrap();
        let fill: Vec<_> = (0..MIN_OPEN_FILES).map(|i| fs.create(&d.join(format!("x{i}"))).unwrap()).collect();
        // Renamed behind the cache's back: the reopen by name finds nothing.
        std::fs::rename(d.join("f"), d.join("g")).unwrap();
        let e = f.sync_data().unwrap_err();
        assert_eq!(reopen_failure(&e).and_then(io::Error::raw_os_error), Some(libc::ENOENT), "{e}");
        assert!(reopen_failure(&io::Error::from_raw_os_error(libc::ENOMEM)).is_none());
        drop(fill);
    }

    /// How the write-back of `Losing`'s file named "bad" fails.
    #[derive(Clone, Copy, Debug)]
    enum Fails {
        Sync,
        Close,
    }

    /// A real file system (`fs`) whose file named "bad" loses its
    /// write-back, and only a descriptor written through reports it (by
    /// fdatasync or by close(2)): one opened later syncs cleanly, as after
    /// the kernel dropped the inode that held the error.
    struct Losing {
        fails: Fails,
        syncs: Arc<AtomicU64>,
        /// Taken by the first failing sync, which says it began and waits
        /// for the word to go on.
        park: Arc<Mutex<Option<Park>>>,
    }

    type Park = (std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>);

    struct LosingFile {
        real: Arc<dyn File>,
        fails: Option<Fails>,
        written: std::sync::atomic::AtomicBool,
        syncs: Arc<AtomicU64>,
        park: Arc<Mutex<Option<Park>>>,
    }

    impl LosingFile {
        fn fails(&self, how: Fails) -> io::Result<()> {
            let fails = matches!((self.fails, how), (Some(Fails::Sync), Fails::Sync) | (Some(Fails::Close), Fails::Close));
            match fails && self.written.load(Ordering::Acquire) {
                true => Err(io::Error::from_raw_os_error(libc::EIO)),
                false => Ok(()),
            }
        }
    }

    impl File for LosingFile {
        fn len(&self) -> io::Result<u64> {
            self.real.len()
        }
        fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
            self.real.read_at(buf, off)
        }
        fn write_at(&self, parts: &[&[u8]], off: u64) -> io::Result<()> {
            self.written.store(true, Ordering::Release);
            self.real.write_at(parts, off)
        }
        fn allocate(&self, len: u64) -> io::Result<()> {
            self.real.allocate(len)
        }
        fn reserve(&self, len: u64) -> io::Result<()> {
            self.real.reserve(len)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.syncs.fetch_add(1, Ordering::Relaxed);
            if self.fails(Fails::Sync).is_err() {
                if let Some((began, go)) = self.park.lock().take() {
                    began.send(()).unwrap();
                    go.recv().unwrap();
                }
            }
            self.fails(Fails::Sync)?;
            self.real.sync_data()
        }
        fn close(self: Arc<Self>) -> io::Result<()> {
            self.fails(Fails::Close)
        }
    }

    impl Losing {
        /// The real file system, its files named "bad" losing their
        /// write-back as `self` says.
        fn fs(self) -> Opened {
            Opened {
                real: StdFs::direct(),
                before: Box::new(|_, _| Ok(())),
                wrap: Box::new(move |path, real| {
                    let fails = (path.file_name() == Some("bad".as_ref())).then_some(self.fails);
                    Arc::new(LosingFile { real, fails, written: Default::default(), syncs: self.syncs.clone(), park: self.park.clone() })
                }),
            }
        }
    }

    /// A file closed with unsynced writes whose write-back fails (at
    /// fdatasync, or at close(2) as on NFS): the next sync through its
    /// handle, which opens it again, must fail, not sync a descriptor that
    /// never saw the error and report the writes durable.
    #[test]
    fn a_write_back_error_of_an_evicted_file_reaches_its_next_sync() {
        for fails in [Fails::Sync, Fails::Close] {
            let d = TestDir::new(&format!("fdcache-lost-{fails:?}"));
            let cache = FileCache::new(MIN_OPEN_FILES);
            let syncs = Arc::new(AtomicU64::new(0));
            let fs = cache.wrap(Arc::new(Losing { fails, syncs: syncs.clone(), park: Default::default() }.fs()));
            let bad = fs.create(&d.join("bad")).unwrap();
            bad.write_at(&[b"lost"], 0).unwrap();
            let clean = fs.create(&d.join("clean")).unwrap();
            clean.write_at(&[b"synced"], 0).unwrap();
            clean.sync_data().unwrap();
            let before = syncs.load(Ordering::Relaxed);
            // Both closed by the cache.
            let fill: Vec<_> = (0..MIN_OPEN_FILES).map(|i| fs.create(&d.join(format!("x{i}"))).unwrap()).collect();
            assert!(cache.counts().evictions >= 2);
            let e = bad.sync_data().expect_err("a write-back error vanished with the descriptor that had it");
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{fails:?}: {e}");
            assert!(reopen_failure(&e).is_none(), "an fdatasync failure, not a failed reopen");
            // `bad` was synced as it was closed, and the sync that reported
            // its failure ran none; `clean`, synced already, was closed
            // without one.
            assert_eq!(syncs.load(Ordering::Relaxed) - before, 1, "{fails:?}");
            // Reported once, as fdatasync reports an error once per
            // descriptor: a caller that goes on writes its data again (a
            // segment's log) or never syncs again (a poisoned WAL).
            bad.sync_data().unwrap();
            drop(fill);
        }
    }

    /// A sync of a file whose eviction is still syncing it waits for that
    /// outcome: opening the file again meanwhile and syncing the new
    /// descriptor could succeed before the eviction's sync fails.
    #[test]
    fn a_sync_waits_for_the_eviction_that_is_syncing_its_file() {
        let d = TestDir::new("fdcache-lost-wait");
        let cache = FileCache::new(MIN_OPEN_FILES);
        let (began, began_rx) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        let losing = Losing { fails: Fails::Sync, syncs: Default::default(), park: Arc::new(Mutex::new(Some((began, go_rx)))) };
        let fs = cache.wrap(Arc::new(losing.fs()));
        let bad = fs.create(&d.join("bad")).unwrap();
        bad.write_at(&[b"lost"], 0).unwrap();
        let tid = std::sync::atomic::AtomicI32::new(0);
        std::thread::scope(|s| {
            // Evicts `bad`, and parks in its sync.
            let evictor = s.spawn(|| (0..MIN_OPEN_FILES).map(|i| fs.create(&d.join(format!("x{i}"))).unwrap()).collect::<Vec<_>>());
            began_rx.recv().unwrap();
            let syncer = s.spawn(|| {
                // SAFETY: gettid takes no argument and cannot fail.
                tid.store(unsafe { libc::gettid() }, Ordering::Release);
                bad.sync_data()
            });
            while !syncer.is_finished() && !crate::fs::tests::asleep(tid.load(Ordering::Acquire)) {
                std::thread::yield_now();
            }
            go.send(()).unwrap();
            let synced = syncer.join().unwrap();
            drop(evictor.join().unwrap());
            let e = synced.expect_err("synced a new descriptor while the eviction's sync was failing");
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        });
    }

    #[test]
    fn readers_racing_eviction_always_read_their_own_file() {
        let (d, cache, fs) = setup("race", MIN_OPEN_FILES);
        let files: Vec<Arc<dyn File>> = (0..4 * MIN_OPEN_FILES)
            .map(|i| {
                let f = fs.create(&d.join(format!("f{i}"))).unwrap();
                f.write_at(&[&(i as u64).to_le_bytes().repeat(512)], 0).unwrap();
                f
            })
            .collect();
        std::thread::scope(|s| {
            for t in 0..4usize {
                let files = &files;
                s.spawn(move || {
                    let mut x = t as u64 + 1;
                    for _ in 0..5000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let i = (x % files.len() as u64) as usize;
                        let mut b = [0u8; 8];
                        let off = 8 * (x % 512);
                        assert_eq!(files[i].read_at(&mut b, off).unwrap(), 8);
                        assert_eq!(u64::from_le_bytes(b), i as u64, "file {i} read another file's bytes");
                    }
                });
            }
        });
        let c = cache.counts();
        assert!(c.open <= MIN_OPEN_FILES as u64 && c.misses > 0 && c.evictions > 0, "{c:?}");
    }
}
