//! The real file system with a hook before the directory-level calls a
//! test wants to stop or fail: `remove`, `remove_dir_all`, `open` (of an
//! existing file), `create`, `rename` (with its source path), `exists`
//! and `list`. The hook sees the call and the path, and may park the thread (a channel
//! the test controls) or answer an error instead of the real call.

use keel::fs::{File, FileSystem, ReadMap, StdFs};
use std::any::Any;
use std::io;
use std::path::Path;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Remove,
    RemoveDirAll,
    Open,
    Create,
    Exists,
    SyncDir,
    Rename,
    List,
}

pub type Hook = Box<dyn Fn(Call, &Path) -> io::Result<()> + Send + Sync>;

pub struct HookFs {
    real: StdFs,
    hook: Hook,
}

impl HookFs {
    pub fn new(hook: impl Fn(Call, &Path) -> io::Result<()> + Send + Sync + 'static) -> Arc<HookFs> {
        Arc::new(HookFs { real: StdFs::direct(), hook: Box::new(hook) })
    }
}

impl FileSystem for HookFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.real.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        (self.hook)(Call::List, dir)?;
        self.real.list(dir)
    }
    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn File>> {
        (self.hook)(Call::Open, path)?;
        self.real.open(path, writable)
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        (self.hook)(Call::Create, path)?;
        self.real.create(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        (self.hook)(Call::Rename, from)?;
        self.real.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        (self.hook)(Call::Remove, path)?;
        self.real.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        (self.hook)(Call::SyncDir, dir)?;
        self.real.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        (self.hook)(Call::Exists, path)?;
        self.real.exists(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        (self.hook)(Call::RemoveDirAll, dir)?;
        self.real.remove_dir_all(dir)
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        self.real.lock(path)
    }
    fn map_readonly(&self, path: &Path) -> io::Result<Option<ReadMap>> {
        self.real.map_readonly(path)
    }
}
