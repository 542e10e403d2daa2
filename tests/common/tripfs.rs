//! The fault-injecting file system behind a trip wire on the files under
//! one path: armed, the next fdatasync of such a file halts the world
//! first (a SIGKILL between a write and its sync), or every write to them
//! fails with EIO, or the next rename onto such a path halts the world
//! once the directory sync after it is done (a crash right after a
//! replace). Everything else passes through.
#![allow(dead_code)]

use super::faultfs::FaultFs;
use keel::fs::{File, FileSystem};
use std::any::Any;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone)]
pub struct TripFs {
    pub fs: FaultFs,
    under: PathBuf,
    /// One-shot: the next fdatasync of a file under `under` halts first.
    pub kill_at_sync: Arc<AtomicBool>,
    /// While set, writes to files under `under` fail with EIO.
    pub fail_writes: Arc<AtomicBool>,
    /// One-shot: the next rename onto a path under `under` halts the world
    /// after the next directory sync (the one that makes it durable).
    pub kill_after_replace: Arc<AtomicBool>,
    /// Such a rename happened: the next directory sync halts after it.
    replaced: Arc<AtomicBool>,
}

impl TripFs {
    pub fn new(fs: FaultFs, under: impl Into<PathBuf>) -> TripFs {
        TripFs {
            fs,
            under: under.into(),
            kill_at_sync: Default::default(),
            fail_writes: Default::default(),
            kill_after_replace: Default::default(),
            replaced: Default::default(),
        }
    }

    fn wrap(&self, path: &Path, f: Arc<dyn File>) -> Arc<dyn File> {
        match path.starts_with(&self.under) {
            true => Arc::new(Tripped(self.clone(), f)),
            false => f,
        }
    }
}

struct Tripped(TripFs, Arc<dyn File>);

impl File for Tripped {
    fn len(&self) -> io::Result<u64> {
        self.1.len()
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.1.read_at(buf, off)
    }
    fn write_at(&self, parts: &[&[u8]], off: u64) -> io::Result<()> {
        if self.0.fail_writes.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.1.write_at(parts, off)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.1.allocate(len)
    }
    fn reserve(&self, len: u64) -> io::Result<()> {
        self.1.reserve(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.0.kill_at_sync.swap(false, Ordering::SeqCst) {
            self.0.fs.halt();
        }
        self.1.sync_data()
    }
}

impl FileSystem for TripFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.fs.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.fs.list(dir)
    }
    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn File>> {
        Ok(self.wrap(path, self.fs.open(path, writable)?))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        Ok(self.wrap(path, self.fs.create(path)?))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.fs.rename(from, to)?;
        if to.starts_with(&self.under) && self.kill_after_replace.swap(false, Ordering::SeqCst) {
            self.replaced.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.fs.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.fs.sync_dir(dir)?;
        if self.replaced.swap(false, Ordering::SeqCst) {
            self.fs.halt();
        }
        Ok(())
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.fs.exists(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.fs.remove_dir_all(dir)
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        self.fs.lock(path)
    }
}
