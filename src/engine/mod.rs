//! The engine: one data directory hosting shards by u32 id.
//!
//! ```text
//! <dir>/LOCK                  held (flock) while an engine has the directory open
//! <dir>/shards/<id>/wal/      the shard's WAL segments
//! <dir>/shards/<id>/segments/ the shard's appendable and immutable segments
//! ```

use crate::error::{Error, Result};
use crate::fs::{FileSystem, StdFs};
use crate::lease::{Clock, FenceTable};
use crate::shard::{self, Shard};
use crate::status::*;
use parking_lot::Mutex;
use std::any::Any;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Prefix of a shard directory being dropped: renamed first so a crash
/// never leaves half a shard under its id.
const DROPPING: &str = ".drop-";

pub struct Engine {
    dir: PathBuf,
    opts: shard::Options,
    /// Every file and directory operation of the engine and its shards.
    fs: Arc<dyn FileSystem>,
    /// Set when the caller supplied the file system (tests); otherwise each
    /// shard's WAL picks the real file system's write strategy itself.
    injected_fs: bool,
    shards: Mutex<Option<HashMap<u32, Shard>>>,
    /// The node-local fenced lease table; its token high-water mark is `<dir>/FENCE`.
    fences: FenceTable,
    _lock: Box<dyn Any + Send + Sync>,
}

impl Engine {
    /// Opens (creating if needed) the data directory `dir`. Shards open
    /// with `opts`. BUSY when another engine (any process) has it open.
    pub fn open(dir: &Path, opts: shard::Options) -> Result<Engine> {
        Self::open_on(dir, opts, Arc::new(StdFs::direct()), false)
    }

    /// Opens the engine with every file operation (its own and its
    /// shards') going through `fs` (tests inject faults here).
    pub fn open_with_fs(dir: &Path, opts: shard::Options, fs: Arc<dyn FileSystem>) -> Result<Engine> {
        Self::open_on(dir, opts, fs, true)
    }

    fn open_on(dir: &Path, opts: shard::Options, fs: Arc<dyn FileSystem>, injected_fs: bool) -> Result<Engine> {
        opts.validate()?;
        let shards_dir = dir.join("shards");
        let io_err = |what: &str, p: &Path| {
            let what = format!("{what} {}", p.display());
            move |e: io::Error| Error::io(what, e)
        };
        // A WAL directory has a LOCK file too: say what it is before
        // anything is created or locked.
        match fs.list(dir) {
            Ok(names) if names.iter().any(|n| crate::wal::parse_segment_name(n).is_some()) => {
                return Err(Error::invalid(format!(
                    "{} is a keel WAL directory, not an engine data directory",
                    dir.display()
                )))
            }
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("listing", dir)(e)),
            _ => {}
        }
        fs.create_dir_all(dir).map_err(io_err("creating", dir))?;
        let lock_path = dir.join("LOCK");
        let lock = fs.lock(&lock_path).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => {
                Error::new(KEEL_STATUS_BUSY, format!("{} is open in another engine (LOCK held)", dir.display()))
            }
            _ => Error::io(format!("locking {}", lock_path.display()), e),
        })?;
        // Nothing is created before the lock is held.
        fs.create_dir_all(&shards_dir).map_err(io_err("creating", &shards_dir))?;
        // Finish drops a crash interrupted.
        for name in fs.list(&shards_dir).map_err(io_err("listing", &shards_dir))? {
            if name.starts_with(DROPPING) {
                let doomed = shards_dir.join(&name);
                fs.remove_dir_all(&doomed).map_err(io_err("removing", &doomed))?;
            }
        }
        fs.sync_dir(dir).map_err(io_err("syncing", dir))?;
        Ok(Engine {
            dir: dir.to_path_buf(),
            opts,
            fences: FenceTable::new(dir.join("FENCE"), fs.clone(), Clock::monotonic()),
            fs,
            injected_fs,
            shards: Mutex::new(Some(HashMap::new())),
            _lock: lock,
        })
    }

    fn sync_dir(&self, dir: &Path) -> Result<()> {
        self.fs.sync_dir(dir).map_err(|e| Error::io(format!("syncing {}", dir.display()), e))
    }

    fn exists(&self, path: &Path) -> Result<bool> {
        self.fs.exists(path).map_err(|e| Error::io(format!("looking for {}", path.display()), e))
    }

    fn shard_dir(&self, id: u32) -> PathBuf {
        self.dir.join("shards").join(id.to_string())
    }

    /// Opens shard `id`. NOT_FOUND when it does not exist and
    /// `create_if_missing` is false; BUSY when it is already open.
    pub fn open_shard(&self, id: u32, create_if_missing: bool) -> Result<Shard> {
        let mut guard = self.shards.lock();
        let open = guard.as_mut().ok_or_else(|| Error::new(KEEL_STATUS_CLOSED, "engine is closed"))?;
        if open.get(&id).is_some_and(|s| !s.is_closed()) {
            return Err(Error::new(KEEL_STATUS_BUSY, format!("shard {id} is already open; close it first")));
        }
        let dir = self.shard_dir(id);
        if !self.exists(&dir)? {
            if !create_if_missing {
                return Err(Error::new(KEEL_STATUS_NOT_FOUND, format!("shard {id} does not exist")));
            }
            self.fs.create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            self.sync_dir(&self.dir.join("shards"))?;
        }
        let shard = match self.injected_fs {
            true => Shard::open_with_fs(&dir, self.opts.clone(), self.fs.clone())?,
            false => Shard::open(&dir, self.opts.clone())?,
        };
        open.insert(id, shard.clone());
        Ok(shard)
    }

    /// Deletes shard `id` and its data. BUSY while it is open.
    pub fn drop_shard(&self, id: u32) -> Result<()> {
        let mut guard = self.shards.lock();
        let open = guard.as_mut().ok_or_else(|| Error::new(KEEL_STATUS_CLOSED, "engine is closed"))?;
        if open.get(&id).is_some_and(|s| !s.is_closed()) {
            return Err(Error::new(KEEL_STATUS_BUSY, format!("shard {id} is open; close it before dropping it")));
        }
        open.remove(&id);
        let dir = self.shard_dir(id);
        if !self.exists(&dir)? {
            return Err(Error::new(KEEL_STATUS_NOT_FOUND, format!("shard {id} does not exist")));
        }
        let doomed = self.dir.join("shards").join(format!("{DROPPING}{id}"));
        self.fs.rename(&dir, &doomed).map_err(|e| Error::io(format!("renaming {}", dir.display()), e))?;
        self.sync_dir(&self.dir.join("shards"))?;
        self.fs.remove_dir_all(&doomed).map_err(|e| Error::io(format!("removing {}", doomed.display()), e))
    }

    pub fn fences(&self) -> &FenceTable {
        &self.fences
    }

    /// Ids of every shard in the directory, open or not, ascending.
    pub fn list_shards(&self) -> Result<Vec<u32>> {
        if self.shards.lock().is_none() {
            return Err(Error::new(KEEL_STATUS_CLOSED, "engine is closed"));
        }
        let dir = self.dir.join("shards");
        let mut ids: Vec<u32> = self
            .fs
            .list(&dir)
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
            .iter()
            .filter_map(|name| name.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Closes every open shard (each flushes) and releases the directory
    /// when the engine is dropped. Returns the first error. Idempotent.
    pub fn close(&self) -> Result<()> {
        let Some(open) = self.shards.lock().take() else { return Ok(()) };
        let mut result = Ok(());
        for (_, shard) in open {
            if let Err(e) = shard.close() {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
