//! Test-only: the real file system with a say in every file it opens or
//! creates (`Opened`), for unit tests that fail, hold up or wrap those
//! calls. Integration tests have their own doubles in `tests/common`.

use super::{File, FileSystem, ReadMap, StdFs};
use std::any::Any;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// Called for each `open` (`create` false) and `create` (true) of a path
/// before the real call: may fail it or hold it up.
pub type Before = Box<dyn Fn(bool, &Path) -> io::Result<()> + Send + Sync>;
/// Given each file the real call opened, with its path: what the caller
/// gets instead (the file itself, or a wrapper of it).
pub type Wrap = Box<dyn Fn(&Path, Arc<dyn File>) -> Arc<dyn File> + Send + Sync>;

/// `real`, with `before` and `wrap` around its opens and creates; every
/// other call goes to `real` as it is.
pub struct Opened {
    pub real: StdFs,
    pub before: Before,
    pub wrap: Wrap,
}

impl Opened {
    /// Only `before`; files are handed out as opened.
    pub fn before(real: StdFs, before: Before) -> Opened {
        Opened { real, before, wrap: Box::new(|_, f| f) }
    }
}

impl FileSystem for Opened {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.real.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.real.list(dir)
    }
    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn File>> {
        (self.before)(false, path)?;
        Ok((self.wrap)(path, self.real.open(path, writable)?))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        (self.before)(true, path)?;
        Ok((self.wrap)(path, self.real.create(path)?))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.real.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.real.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.real.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.real.exists(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.real.remove_dir_all(dir)
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        self.real.lock(path)
    }
    fn map_readonly(&self, path: &Path) -> io::Result<Option<ReadMap>> {
        self.real.map_readonly(path)
    }
}
