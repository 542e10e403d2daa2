//! keel's only door to the file system.
//!
//! Every byte the WAL, the shards and the engine read or write, every
//! directory change, the engine's LOCK and every directory fsync go through
//! `FileSystem`/`File`, so tests can swap in an implementation that injects
//! faults (lost unsynced data, torn writes, forgotten directory entries,
//! EIO, ENOSPC) deterministically from a seed.

mod cache;
mod dirlock;
mod handles;
#[cfg(test)]
pub(crate) mod opened;
mod replace;
mod synced;

pub use cache::{reopen_failure, CacheCounts, FileCache, MIN_OPEN_FILES};
pub use handles::Handles;
pub use replace::{replace, tmp_path, TMP_SUFFIX};

use parking_lot::RwLock;
use std::any::Any;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, IntoRawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use synced::{Appended, DirectAppends};

/// An open file.
// A file's length is a fallible I/O query, not a container's size: an
// `is_empty` would be one more method every implementation must carry for
// no caller.
#[allow(clippy::len_without_is_empty)]
pub trait File: Send + Sync {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `off`; returns how many were read (0 at end).
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize>;
    /// Reads at `off` until `buf` is full or the file ends; returns how
    /// many bytes were read (fewer than `buf.len()` only at the end).
    fn read_up_to(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.read_at(&mut buf[got..], off + got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        Ok(got)
    }
    /// Writes all `parts`, back to back, starting at `off`. Callers never
    /// write the same range concurrently.
    fn write_at(&self, parts: &[&[u8]], off: u64) -> io::Result<()>;
    /// `write_at` for a log's next bytes: `off` is the end of the data
    /// written to the file, which holds zeros from there on. The file
    /// system may write the rest of the last block as zeros too, and may
    /// put the bytes on stable storage before it returns, sparing the next
    /// `sync_data` that work (`StdFs::synced()`).
    fn append_at(&self, parts: &[&[u8]], off: u64) -> io::Result<()> {
        self.write_at(parts, off)
    }
    /// Extends the file with zeros to at least `len` bytes, so that later
    /// writes inside it never allocate (and cannot hit ENOSPC).
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Like `allocate`, but with `fallocate` whatever the write strategy:
    /// the blocks are reserved and read as zeros, nothing is written and
    /// no page cache is taken; the first fdatasync after writes into them
    /// also converts the extents those writes touched. For files synced
    /// rarely. (No default: a wrapper must pass it on, not zero-fill.)
    fn reserve(&self, len: u64) -> io::Result<()>;
    /// fdatasync: everything written so far reaches stable storage.
    fn sync_data(&self) -> io::Result<()>;
    /// Descriptors the open file holds (the descriptor cache counts them).
    fn descriptors(&self) -> usize {
        1
    }
    /// Faults in the pages of the file's writable mapping, if it has one,
    /// so that writes through it do not stall on the kernel zeroing fresh
    /// pages. Best effort (an old kernel may not offer it); costs page
    /// cache, so callers do it only for files about to be written.
    fn prefault(&self) {}
    /// Drops this reference; the last one closes the file and returns
    /// close(2)'s error, which some file systems (NFS, FUSE) use to report
    /// a failed write-back. An earlier reference closes nothing: `Ok`.
    fn close(self: Arc<Self>) -> io::Result<()> {
        drop(self);
        Ok(())
    }
}

/// Directory-level operations and file opening.
pub trait FileSystem: Send + Sync {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries of `dir` (files and folders).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens an existing file, for reading only or for reading and writing.
    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn File>>;
    /// Creates (or truncates) a file for reading and writing.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// fsync of the directory itself, making creates, renames and removes durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` names a file or a folder.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Removes a folder and everything below it.
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` for as long as the guard lives;
    /// `WouldBlock` when another holder has it.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>>;
    /// A read-only view of a whole file that costs no system call per read
    /// (a memory map), if this file system offers one; `None` means read
    /// through `File::read_at`. Shard tables, which are never modified
    /// after they are written, are read this way.
    fn map_readonly(&self, _path: &Path) -> io::Result<Option<ReadMap>> {
        Ok(None)
    }
}

/// A read-only memory map of a whole file (`FileSystem::map_readonly`).
pub struct ReadMap(Mapping);

/// A whole file's bytes, read-only: mapped where the file system maps
/// (`FileSystem::map_readonly`: no copy, no fresh zeroed buffer), read into
/// memory otherwise (the fault-injecting file system of the tests).
pub enum WholeFile {
    Map(ReadMap),
    Owned(Vec<u8>),
}

impl WholeFile {
    pub fn bytes(&self) -> &[u8] {
        match self {
            WholeFile::Map(m) => m.bytes(),
            WholeFile::Owned(v) => v,
        }
    }

    /// A hint that `range` of the bytes will be read soon: the kernel
    /// starts reading what of it is not cached, in the background, so
    /// several such reads are in flight at once instead of each read of a
    /// cold page waiting for the device in turn. Changes nothing that is
    /// read; nothing to do for bytes already in memory.
    pub fn will_need(&self, range: std::ops::Range<usize>) {
        let WholeFile::Map(m) = self else { return };
        let page = page_size();
        let start = range.start.min(m.0.len) / page * page;
        let end = range.end.min(m.0.len);
        if end <= start {
            return;
        }
        // SAFETY: [start, end) lies inside the live mapping and `start` is
        // page-aligned (the mapping itself starts on a page); MADV_WILLNEED
        // only schedules reads of the file's pages into the page cache and
        // changes no byte of the mapping. Its result is a hint's: ignored.
        unsafe { libc::madvise(m.0.ptr.add(start) as *mut libc::c_void, end - start, libc::MADV_WILLNEED) };
    }
}

/// The page size (mappings start and `madvise` ranges begin on one).
fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as usize } else { 4096 }
}

impl ReadMap {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping covers `len` readable bytes and lives as long
        // as `self`; it is read-only (PROT_READ), so no one writes through
        // it while the slice is borrowed.
        unsafe { std::slice::from_raw_parts(self.0.ptr, self.0.len) }
    }
}

/// The real file system, in one of three write strategies chosen by the
/// WAL's durability mode (see docs/WAL.md, "Writes"):
///
/// - `StdFs::synced()` (SYNC): as `direct()`, and a writable file also
///   gets a second descriptor, `O_DIRECT | O_DSYNC`, for its appends
///   (`File::append_at`, `synced.rs`): they are durable when the write
///   returns, and `sync_data` calls fdatasync only when something went
///   through the page cache since the last one.
/// - `StdFs::direct()`: `pwritev` per write; files are allocated by
///   writing real zeros, so an fdatasync after appends has no unwritten
///   extents to convert and writes back only the touched pages. Shard
///   files use it, and so does a log that is synced rarely (an engine's
///   committed shard), which reserves its segments with `File::reserve`
///   (fallocate) instead.
/// - `StdFs::mapped()` (NONE, PERIODIC): files are allocated with
///   `fallocate` (fast, and blocks are reserved, so a write into the mapping
///   can never hit ENOSPC and raise SIGBUS) and memory-mapped; an append is
///   a memcpy into the page cache with no system call. It survives a process
///   crash like write(2) would; fdatasync on the descriptor writes it back.
///   (Mapped pages are written back a whole folio at a time, which is why
///   SYNC mode does not use the mapping.)
#[derive(Clone, Copy, Debug)]
pub struct StdFs {
    map_writes: bool,
    synced_appends: bool,
}

impl StdFs {
    pub const fn synced() -> StdFs {
        StdFs { map_writes: false, synced_appends: true }
    }
    pub const fn direct() -> StdFs {
        StdFs { map_writes: false, synced_appends: false }
    }
    pub const fn mapped() -> StdFs {
        StdFs { map_writes: true, synced_appends: false }
    }

    /// A writable file opened as `file` at `path`, in this strategy.
    fn writable(&self, file: fs::File, path: &Path) -> io::Result<StdFile> {
        let appends = match self.synced_appends {
            true => DirectAppends::open(path)?,
            false => None,
        };
        StdFile::new(file, self.map_writes, appends)
    }
}

struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is shared page-cache memory owned by this value; the
// WAL serialises writes to a range and readers go through pread, so moving
// or sharing the pointer between threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: as for Send: no two threads write one range at once.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned, unmapped once,
        // here; no slice borrowed from the mapping outlives `self`.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

struct StdFile {
    file: fs::File,
    /// Writable and `StdFs::mapped()`: writes go through a shared mapping.
    mapped: bool,
    map: RwLock<Option<Mapping>>,
    /// Writable and `StdFs::synced()`: the descriptor for appends.
    appends: Option<DirectAppends>,
    /// With `appends`: something went through the page cache since the
    /// last fdatasync (set from the start: this process may not be the
    /// first to write the file).
    dirty: AtomicBool,
}

/// pwritev until every byte of `parts` is written at `off`, at most
/// `UIO_MAXIOV` parts a call (a data log's flush passes one per record
/// part, possibly hundreds of thousands).
fn pwritev_all(fd: libc::c_int, parts: &[&[u8]], mut off: u64) -> io::Result<()> {
    let bufs: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    // The next byte to write: bufs[first][skip].
    let (mut first, mut skip) = (0, 0);
    while first < bufs.len() {
        let iov: Vec<libc::iovec> = bufs[first..]
            .iter()
            .take(libc::UIO_MAXIOV as usize)
            .enumerate()
            .map(|(i, b)| {
                let b = if i == 0 { &b[skip..] } else { b };
                libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() }
            })
            .collect();
        // SAFETY: every iovec points into a live `&[u8]` of `bufs` for its
        // length, and at most UIO_MAXIOV of them are passed.
        let n = unsafe { libc::pwritev(fd, iov.as_ptr(), iov.len() as libc::c_int, off as libc::off_t) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            // Possible on some file systems (FUSE); calling again would spin.
            return Err(io::Error::new(io::ErrorKind::WriteZero, "pwritev wrote nothing"));
        }
        let mut n = n as usize;
        off += n as u64;
        while n > 0 {
            let left = bufs[first].len() - skip;
            if n >= left {
                n -= left;
                first += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
    Ok(())
}

impl StdFile {
    fn new(file: fs::File, mapped: bool, appends: Option<DirectAppends>) -> io::Result<StdFile> {
        let f = StdFile { file, mapped, map: RwLock::new(None), appends, dirty: AtomicBool::new(true) };
        if mapped {
            f.remap()?;
        }
        Ok(f)
    }

    /// Runs `change` (a write, an allocation), then marks the file
    /// `dirty`, whatever it returned (a failed one may have changed some
    /// bytes). After, not before: a `sync_data` that clears the mark while
    /// the change runs may miss its bytes, so the change must leave the
    /// mark for the next one.
    fn dirtying<R>(&self, change: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        let changed = change();
        self.dirty.store(true, Ordering::Release);
        changed
    }

    /// Reserves the blocks of [cur, len) with `posix_fallocate`.
    fn fallocate(&self, cur: u64, len: u64) -> io::Result<()> {
        if cur >= len {
            return Ok(());
        }
        // SAFETY: plain system call on our own descriptor.
        let r = unsafe { libc::posix_fallocate(self.file.as_raw_fd(), cur as libc::off_t, (len - cur) as libc::off_t) };
        match r {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    fn remap(&self) -> io::Result<()> {
        let len = self.file.metadata()?.len() as usize;
        let mut slot = self.map.write();
        *slot = None;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: a fresh shared mapping of `len` bytes of our own open
        // file; failure is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        *slot = Some(Mapping { ptr: ptr as *mut u8, len });
        Ok(())
    }
}

impl File for StdFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        loop {
            match self.file.read_at(buf, off) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn write_at(&self, parts: &[&[u8]], off: u64) -> io::Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if let Some(a) = &self.appends {
            a.overwritten(off, total as u64);
        }
        self.dirtying(|| {
            let map = self.map.read();
            match map.as_ref() {
                Some(m) if (off as usize).checked_add(total).is_some_and(|end| end <= m.len) => {
                    let mut at = off as usize;
                    for p in parts {
                        // SAFETY: off + total <= m.len was checked above, so
                        // [at, at + p.len()) is inside the writable mapping;
                        // the source is a separate buffer; callers never
                        // write one range concurrently (File::write_at's
                        // contract).
                        unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), m.ptr.add(at), p.len()) };
                        at += p.len();
                    }
                    Ok(())
                }
                _ => pwritev_all(self.file.as_raw_fd(), parts, off),
            }
        })
    }

    fn append_at(&self, parts: &[&[u8]], off: u64) -> io::Result<()> {
        match &self.appends {
            Some(a) => match a.append(self, parts, off)? {
                Appended::Durable => Ok(()),
                Appended::Refused => self.write_at(parts, off),
            },
            None => self.write_at(parts, off),
        }
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        self.dirtying(|| {
            let cur = self.len()?;
            if self.mapped {
                self.fallocate(cur, len)?;
            } else if cur < len {
                // Real zeros, not fallocate's unwritten extents: writing into
                // an unwritten extent makes every later fdatasync commit
                // metadata.
                let zeros = vec![0u8; 1 << 20];
                let mut at = cur;
                while at < len {
                    let n = ((len - at) as usize).min(zeros.len());
                    self.file.write_all_at(&zeros[..n], at)?;
                    at += n as u64;
                }
            }
            if self.mapped {
                self.remap()?;
            }
            Ok(())
        })
    }

    fn reserve(&self, len: u64) -> io::Result<()> {
        if self.mapped {
            // The mapping must grow with the file: `allocate` remaps.
            return self.allocate(len);
        }
        self.dirtying(|| self.fallocate(self.len()?, len))
    }

    fn sync_data(&self) -> io::Result<()> {
        // Appends made durable as they were written leave nothing to sync.
        // Cleared before the call: a write meanwhile sets it again.
        if self.appends.is_some() && !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        // SAFETY: plain system call on our own descriptor.
        if unsafe { libc::fdatasync(self.file.as_raw_fd()) } != 0 {
            self.dirty.store(true, Ordering::Release);
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn descriptors(&self) -> usize {
        1 + self.appends.is_some() as usize
    }

    fn prefault(&self) {
        // The kernel zeroes each new page-cache page on first touch, which
        // would otherwise land on the appender as multi-millisecond stalls
        // (the WAL prepares a spare this way ahead of use). A read fault
        // dirties nothing; failure (old kernels) is fine.
        if let Some(m) = self.map.read().as_ref() {
            // SAFETY: ptr/len are a live mapping of this file, kept alive
            // (not remapped) by the read guard for the duration of the call.
            unsafe { libc::madvise(m.ptr as *mut libc::c_void, m.len, libc::MADV_POPULATE_READ) };
        }
    }

    fn close(self: Arc<Self>) -> io::Result<()> {
        let Ok(StdFile { file, map, appends, .. }) = Arc::try_unwrap(self) else { return Ok(()) };
        // The appends descriptor's writes were durable when they returned.
        drop((map, appends));
        let fd = file.into_raw_fd();
        // SAFETY: `fd` is this file's own descriptor, taken from its
        // `fs::File` (which no longer closes it) and closed once, here.
        if unsafe { libc::close(fd) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Opens `path` without blocking: a FIFO (or another special file) named
/// like one of the log's files would make open(2) wait for a writer
/// forever. O_NONBLOCK changes nothing for regular files and folders.
fn open_no_fifo(opts: &mut OpenOptions, path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = opts.custom_flags(libc::O_NONBLOCK).open(path)?;
    let t = f.metadata()?.file_type();
    if !t.is_file() && !t.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    Ok(f)
}

impl FileSystem for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn File>> {
        let f = match writable {
            true => OpenOptions::new().read(true).write(true).open(path)?,
            false => open_no_fifo(OpenOptions::new().read(true), path)?,
        };
        Ok(Arc::new(match writable {
            true => self.writable(f, path)?,
            false => StdFile::new(f, false, None)?,
        }))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        Ok(Arc::new(self.writable(f, path)?))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        fs::File::open(dir)?.sync_all()
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::remove_dir_all(dir)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        Ok(Box::new(dirlock::lock(path)?))
    }

    fn map_readonly(&self, path: &Path) -> io::Result<Option<ReadMap>> {
        let f = open_no_fifo(OpenOptions::new().read(true), path)?;
        let len = f.metadata()?.len() as usize;
        if len == 0 {
            return Ok(None);
        }
        // SAFETY: a fresh read-only mapping of `len` bytes of a file we
        // opened; failure is checked below. (A file truncated behind keel's
        // back raises SIGBUS on access: see docs/STORAGE.md.)
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(ReadMap(Mapping { ptr: ptr as *mut u8, len })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TestDir;
    use std::sync::atomic::AtomicI32;

    /// Whether thread `tid` of this process is asleep (blocked); not once
    /// it has ended.
    pub(super) fn asleep(tid: i32) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else { return false };
        // The state follows the command name, which ends with the last ')'.
        stat[stat.rfind(')').unwrap() + 1..].trim_start().starts_with('S')
    }

    /// A sync that begins while a write through the page cache is under
    /// way need not cover it, but the next one must: the write may not
    /// leave the file marked clean, or that sync (of a `StdFs::synced()`
    /// file, which skips fdatasync when nothing went through the page
    /// cache) returns without syncing it. The write is held inside
    /// `write_at`, just before its bytes are written, by the map's lock.
    #[test]
    fn a_write_that_a_sync_overlapped_is_synced_by_the_next() {
        let dir = TestDir::new("fs-dirty");
        let path = dir.join("log");
        let f = StdFs::synced().writable(fs::File::create(&path).unwrap(), &path).unwrap();
        if f.appends.is_none() {
            return; // no O_DIRECT here: every sync runs fdatasync
        }
        f.sync_data().unwrap();
        let tid = AtomicI32::new(0);
        std::thread::scope(|s| {
            let held = f.map.write();
            let writer = s.spawn(|| {
                // SAFETY: gettid takes no argument and cannot fail.
                tid.store(unsafe { libc::gettid() }, Ordering::Release);
                f.write_at(&[b"record"], 0)
            });
            while tid.load(Ordering::Acquire) == 0 || !asleep(tid.load(Ordering::Acquire)) {
                std::thread::yield_now();
            }
            f.sync_data().unwrap();
            drop(held);
            writer.join().unwrap().unwrap();
        });
        assert!(f.dirty.load(Ordering::Acquire), "the next sync_data would skip the fdatasync the write needs");
    }
}
