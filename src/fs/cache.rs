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
//! Names change under open handles (a prepared WAL segment is renamed into
//! place, a shard's folder is renamed when it is dropped), so renames and
//! removals go through the cache too: they move or detach the handles of
//! the names they change, under a lock that every open by name shares, so
//! a reopen never finds another file under a handle's old name. A handle
//! detached while closed can no longer reach its file: reading or writing
//! it fails with NotFound, and syncing it succeeds (its data left the
//! file system with its last name; there is nothing to make durable).

use super::{File, FileSystem, ReadMap};
use parking_lot::{Mutex, RwLock};
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
    /// None once its name was removed or renamed over (detached).
    path: Option<PathBuf>,
    writable: bool,
    /// The file system that opens it again.
    fs: Arc<dyn FileSystem>,
    file: Option<Arc<dyn File>>,
    /// Operations running on it.
    users: usize,
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
}

/// The descriptor cache of an engine (see the module comment).
pub struct FileCache {
    limit: usize,
    state: Mutex<State>,
    /// Shared by every open by name, exclusive for renames and removals:
    /// a name cannot change between the moment a handle's name is read and
    /// the moment the file is opened by it.
    names: RwLock<()>,
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

    /// Closes least recently used files until at most `limit` descriptors
    /// are open or every open file is pinned; returns them, to be dropped (closed)
    /// once the lock is released.
    fn evict(&mut self, limit: usize) -> Vec<Arc<dyn File>> {
        let mut closed = Vec::new();
        while self.open > limit && self.head != NIL {
            let i = self.head;
            self.unlink(i);
            let file = self.slot(i).file.take().expect("listed slots are open");
            self.open -= file.descriptors();
            closed.push(file);
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

    /// Registers a file just opened (under the names lock) by `path`.
    fn register(self: &Arc<Self>, fs: &Arc<dyn FileSystem>, path: &Path, writable: bool, file: Arc<dyn File>) -> CachedFile {
        let fds = file.descriptors();
        let slot = Slot { path: Some(path.to_path_buf()), writable, fs: fs.clone(), file: Some(file), users: 0, prev: NIL, next: NIL, listed: false };
        let (i, closed) = {
            let mut st = self.state.lock();
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
            (i, self.evict_locked(&mut st))
        };
        drop(closed);
        CachedFile { cache: self.clone(), slot: i }
    }

    fn evict_locked(&self, st: &mut State) -> Vec<Arc<dyn File>> {
        let closed = st.evict(self.limit);
        self.evictions.fetch_add(closed.len() as u64, Ordering::Relaxed);
        closed
    }

    /// The open file of slot `i`, pinned until the guard is dropped;
    /// opened again by name if it was evicted. `Ok(None)`: detached while
    /// closed (see the module comment).
    fn pin(&self, i: usize) -> io::Result<Option<Pinned<'_>>> {
        if let Some(p) = self.pin_open(i, &mut self.state.lock()) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(p));
        }
        let _names = self.names.read();
        let (fs, path, writable) = {
            let mut st = self.state.lock();
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
        st.open += fresh.descriptors();
        let closed = self.evict_locked(&mut st);
        drop(st);
        drop(closed);
        Ok(Some(Pinned { cache: self, slot: i, file: fresh }))
    }

    fn pin_open(&self, i: usize, st: &mut State) -> Option<Pinned<'_>> {
        let file = st.slot(i).file.clone()?;
        st.unlink(i);
        st.slot(i).users += 1;
        Some(Pinned { cache: self, slot: i, file })
    }

    fn unpin(&self, i: usize) {
        let closed = {
            let mut st = self.state.lock();
            let s = st.slot(i);
            debug_assert!(s.users > 0);
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
    file: Arc<dyn File>,
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        self.cache.unpin(self.slot);
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
        op(&*pinned.file)
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
        self.with(|f| f.write_at(parts, off))
    }
    fn append_at(&self, parts: &[&[u8]], off: u64) -> io::Result<()> {
        self.with(|f| f.append_at(parts, off))
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.with(|f| f.allocate(len))
    }
    fn reserve(&self, len: u64) -> io::Result<()> {
        self.with(|f| f.reserve(len))
    }
    fn sync_data(&self) -> io::Result<()> {
        match self.cache.pin(self.slot)? {
            Some(pinned) => pinned.file.sync_data(),
            None => Ok(()), // detached while closed: see the module comment
        }
    }
    fn prefault(&self) {
        // Best effort, as the call itself: a file that cannot be opened
        // again is simply not faulted in.
        if let Ok(Some(pinned)) = self.cache.pin(self.slot) {
            pinned.file.prefault();
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
        let _names = self.cache.names.read();
        let file = self.fs.open(path, writable)?;
        Ok(Arc::new(self.cache.register(&self.fs, path, writable, file)))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        let _names = self.cache.names.read();
        let file = self.fs.create(path)?;
        Ok(Arc::new(self.cache.register(&self.fs, path, true, file)))
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
        let held = cache.register(&std, &path, true, std.create(&path).unwrap());
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
