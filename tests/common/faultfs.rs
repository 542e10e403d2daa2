//! An in-memory file system for the WAL, shards and engine that models what survives a crash
//! and injects faults, all decided by a seed.
//!
//! Model: every file has the bytes the process sees (`data`) and the bytes
//! on stable storage (`durable`); writes since the last fdatasync are kept
//! in order in `pending`. Directory entries change at once but only become
//! durable with a sync of their directory. `crash()` keeps all, some or none
//! of each file's pending writes (tearing the last kept one at a random
//! byte), forgets entries not yet made durable by a directory sync, and
//! invalidates every open handle. A failed fdatasync loses its pending
//! writes for good while the process still sees them (Linux marks the pages
//! clean), which is exactly what makes retrying a failed fsync a lie.
#![allow(dead_code)]

use super::rng::Rng;
use keel::fs::{File, FileSystem};
use parking_lot::Mutex;
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Per-operation fault probabilities, in per mille.
#[derive(Clone, Copy, Default, Debug)]
pub struct Faults {
    pub eio_write: u64,
    pub eio_sync: u64,
    pub eio_rename: u64,
    pub eio_sync_dir: u64,
    pub nospace_create: u64,
    pub nospace_allocate: u64,
}

#[derive(Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
}

struct World {
    generation: u64,
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    faults: Faults,
    rng: Rng,
    /// What was injected, for the failure report.
    injected: Vec<String>,
    /// The process is "dead": every operation fails until `crash()`.
    halted: bool,
    /// fdatasyncs and directory fsyncs asked for so far.
    syncs: u64,
}

#[derive(Clone)]
pub struct FaultFs(Arc<Mutex<World>>);

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn apply(buf: &mut Vec<u8>, off: u64, bytes: &[u8]) {
    let end = off as usize + bytes.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[off as usize..end].copy_from_slice(bytes);
}

impl World {
    fn roll(&mut self, pick: fn(&Faults) -> u64, what: &str) -> bool {
        let per_mille = pick(&self.faults);
        if per_mille > 0 && self.rng.chance(per_mille) {
            self.injected.push(what.to_string());
            return true;
        }
        false
    }
}

impl FaultFs {
    pub fn new(seed: u64) -> FaultFs {
        FaultFs(Arc::new(Mutex::new(World {
            generation: 0,
            inodes: Vec::new(),
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            dirs: BTreeSet::new(),
            locks: BTreeSet::new(),
            faults: Faults::default(),
            rng: Rng::new(seed),
            injected: Vec::new(),
            halted: false,
            syncs: 0,
        })))
    }

    pub fn set_faults(&self, f: Faults) {
        self.0.lock().faults = f;
    }

    pub fn injected(&self) -> Vec<String> {
        self.0.lock().injected.clone()
    }

    /// Stops the world as a dying process would: from now on every
    /// operation fails with EIO (so threads of the old process cannot write
    /// after the crash), until `crash()`.
    pub fn halt(&self) {
        self.0.lock().halted = true;
    }

    /// Ends a halt as the next process after a kill finds things: every
    /// write (synced or not) and every directory entry is still there;
    /// only the dead process's handles and locks are gone.
    pub fn resume(&self) {
        let mut w = self.0.lock();
        w.halted = false;
        w.locks.clear();
        w.generation += 1;
    }

    /// fdatasyncs and directory fsyncs asked for so far.
    pub fn syncs(&self) -> u64 {
        self.0.lock().syncs
    }

    /// Simulates power loss: see the module comment.
    pub fn crash(&self) {
        self.lose_power(false)
    }

    /// A power loss that keeps none of the writes not yet synced (one of
    /// the outcomes `crash` may pick), for a test that needs that one.
    pub fn crash_losing_unsynced(&self) {
        self.lose_power(true)
    }

    fn lose_power(&self, keep_none: bool) {
        let mut w = self.0.lock();
        let w = &mut *w;
        w.halted = false;
        for ino in &mut w.inodes {
            let pending = std::mem::take(&mut ino.pending);
            let n = pending.len();
            let keep: Vec<bool> = match (keep_none, w.rng.below(3)) {
                (true, _) | (_, 0) => vec![false; n],
                (_, 1) => vec![true; n],
                _ => (0..n).map(|_| w.rng.below(2) == 0).collect(),
            };
            let last_kept = keep.iter().rposition(|&k| k);
            for (i, (off, bytes)) in pending.into_iter().enumerate() {
                if !keep[i] {
                    continue;
                }
                if Some(i) == last_kept && w.rng.below(4) == 0 && !bytes.is_empty() {
                    let cut = w.rng.below(bytes.len() as u64) as usize;
                    apply(&mut ino.durable, off, &bytes[..cut]);
                } else {
                    apply(&mut ino.durable, off, &bytes);
                }
            }
            ino.data = ino.durable.clone();
        }
        w.names = w.durable_names.clone();
        w.locks.clear();
        w.generation += 1;
    }

    fn lookup(&self, path: &Path) -> io::Result<usize> {
        self.0.lock().names.get(path).copied().ok_or_else(|| err(libc::ENOENT))
    }
}

struct FaultFile {
    fs: FaultFs,
    ino: usize,
    generation: u64,
}

impl FaultFile {
    fn with<T>(&self, f: impl FnOnce(&mut World) -> io::Result<T>) -> io::Result<T> {
        let mut w = self.fs.0.lock();
        if w.generation != self.generation || w.halted {
            return Err(err(libc::EIO)); // a handle from before the crash
        }
        f(&mut w)
    }
}

impl File for FaultFile {
    fn len(&self) -> io::Result<u64> {
        self.with(|w| Ok(w.inodes[self.ino].data.len() as u64))
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.with(|w| {
            let data = &w.inodes[self.ino].data;
            let start = (off as usize).min(data.len());
            let n = buf.len().min(data.len() - start);
            buf[..n].copy_from_slice(&data[start..start + n]);
            Ok(n)
        })
    }

    fn write_at(&self, parts: &[&[u8]], off: u64) -> io::Result<()> {
        self.with(|w| {
            let bytes: Vec<u8> = parts.concat();
            if w.roll(|f| f.eio_write, "EIO on write") {
                // Part of the write may have reached the page cache.
                let cut = w.rng.below(bytes.len() as u64 + 1) as usize;
                let ino = &mut w.inodes[self.ino];
                apply(&mut ino.data, off, &bytes[..cut]);
                ino.pending.push((off, bytes[..cut].to_vec()));
                return Err(err(libc::EIO));
            }
            let ino = &mut w.inodes[self.ino];
            apply(&mut ino.data, off, &bytes);
            ino.pending.push((off, bytes));
            Ok(())
        })
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        self.with(|w| {
            if w.roll(|f| f.nospace_allocate, "ENOSPC on allocate") {
                return Err(err(libc::ENOSPC));
            }
            let ino = &mut w.inodes[self.ino];
            let cur = ino.data.len() as u64;
            if cur < len {
                let zeros = vec![0u8; (len - cur) as usize];
                apply(&mut ino.data, cur, &zeros);
                ino.pending.push((cur, zeros));
            }
            Ok(())
        })
    }

    /// Modelled as `allocate`: a reserved range reads as zeros and, like
    /// written zeros, is durable once synced.
    fn reserve(&self, len: u64) -> io::Result<()> {
        self.allocate(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|w| {
            w.syncs += 1;
            if w.roll(|f| f.eio_sync, "EIO on fdatasync") {
                // The pending writes are lost for good, yet still visible.
                w.inodes[self.ino].pending.clear();
                return Err(err(libc::EIO));
            }
            let ino = &mut w.inodes[self.ino];
            for (off, bytes) in std::mem::take(&mut ino.pending) {
                apply(&mut ino.durable, off, &bytes);
            }
            Ok(())
        })
    }
}

struct LockGuard(FaultFs, PathBuf, u64);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let mut w = (self.0).0.lock();
        if w.generation == self.2 {
            w.locks.remove(&self.1);
        }
    }
}

impl FaultFs {
    /// The world, unless the process is halted.
    fn live(&self) -> io::Result<parking_lot::MutexGuard<'_, World>> {
        let w = self.0.lock();
        if w.halted {
            return Err(err(libc::EIO));
        }
        Ok(w)
    }
}

impl FileSystem for FaultFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Directories themselves are modelled as always durable.
        let mut w = self.live()?;
        w.dirs.extend(dir.ancestors().filter(|a| !a.as_os_str().is_empty()).map(Path::to_path_buf));
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let w = self.live()?;
        Ok(w.names
            .keys()
            .chain(w.dirs.iter())
            .filter(|p| p.parent() == Some(dir))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect())
    }

    fn open(&self, path: &Path, _writable: bool) -> io::Result<Arc<dyn File>> {
        drop(self.live()?);
        let ino = self.lookup(path)?;
        let generation = self.0.lock().generation;
        Ok(Arc::new(FaultFile { fs: self.clone(), ino, generation }))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        let mut w = self.live()?;
        if w.roll(|f| f.nospace_create, "ENOSPC on create") {
            return Err(err(libc::ENOSPC));
        }
        w.inodes.push(Inode::default());
        let ino = w.inodes.len() - 1;
        w.names.insert(path.to_path_buf(), ino);
        Ok(Arc::new(FaultFile { fs: self.clone(), ino, generation: w.generation }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut w = self.live()?;
        if w.roll(|f| f.eio_rename, "EIO on rename") {
            return Err(err(libc::EIO));
        }
        if w.dirs.contains(from) {
            // A folder: everything below it moves (folders are modelled as
            // always durable, their files' entries as they were).
            let moved = |p: &Path| to.join(p.strip_prefix(from).expect("below from"));
            let w = &mut *w;
            w.dirs = w.dirs.iter().map(|d| if d.starts_with(from) { moved(d) } else { d.clone() }).collect();
            for names in [&mut w.names, &mut w.durable_names] {
                *names = names.iter().map(|(p, &i)| (if p.starts_with(from) { moved(p) } else { p.clone() }, i)).collect();
            }
            return Ok(());
        }
        let ino = w.names.remove(from).ok_or_else(|| err(libc::ENOENT))?;
        w.names.insert(to.to_path_buf(), ino);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.live()?.names.remove(path).map(|_| ()).ok_or_else(|| err(libc::ENOENT))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut w = self.live()?;
        w.syncs += 1;
        let what = format!("EIO on directory fsync of {}", dir.display());
        if w.roll(|f| f.eio_sync_dir, &what) {
            return Err(err(libc::EIO));
        }
        let w = &mut *w;
        w.durable_names.retain(|p, _| p.parent() != Some(dir));
        for (p, ino) in &w.names {
            if p.parent() == Some(dir) {
                w.durable_names.insert(p.clone(), *ino);
            }
        }
        Ok(())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let w = self.live()?;
        Ok(w.names.contains_key(path) || w.dirs.contains(path))
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut w = self.live()?;
        let w = &mut *w;
        w.dirs.retain(|d| !d.starts_with(dir));
        w.names.retain(|p, _| !p.starts_with(dir));
        w.durable_names.retain(|p, _| !p.starts_with(dir));
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        let mut w = self.0.lock();
        if !w.locks.insert(path.to_path_buf()) {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        Ok(Box::new(LockGuard(self.clone(), path.to_path_buf(), w.generation)))
    }
}
