//! The engine: one data directory hosting shards by u32 id.
//!
//! ```text
//! <dir>/LOCK                  held (flock) while an engine has the directory open
//! <dir>/shards/<id>/wal/      the shard's WAL segments
//! <dir>/shards/<id>/segments/ the shard's appendable and immutable segments
//! ```

use crate::error::{Error, Result};
use crate::shard::{self, Shard};
use crate::status::*;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Prefix of a shard directory being dropped: renamed first so a crash
/// never leaves half a shard under its id.
const DROPPING: &str = ".drop-";

pub struct Engine {
    dir: PathBuf,
    opts: shard::Options,
    shards: Mutex<Option<HashMap<u32, Shard>>>,
    _lock: File,
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(format!("syncing {}", dir.display()), e))
}

impl Engine {
    /// Opens (creating if needed) the data directory `dir`. Shards open
    /// with `opts`. BUSY when another engine (any process) has it open.
    pub fn open(dir: &Path, opts: shard::Options) -> Result<Engine> {
        opts.validate()?;
        let shards_dir = dir.join("shards");
        std::fs::create_dir_all(&shards_dir).map_err(|e| Error::io(format!("creating {}", shards_dir.display()), e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("opening {}", lock_path.display()), e))?;
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(Error::new(KEEL_STATUS_BUSY, format!("{} is open in another engine (LOCK held)", dir.display())));
        }
        // Finish drops a crash interrupted.
        for entry in std::fs::read_dir(&shards_dir).map_err(|e| Error::io("listing shards", e))?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(DROPPING) {
                std::fs::remove_dir_all(entry.path())
                    .map_err(|e| Error::io(format!("removing {}", entry.path().display()), e))?;
            }
        }
        sync_dir(dir)?;
        Ok(Engine { dir: dir.to_path_buf(), opts, shards: Mutex::new(Some(HashMap::new())), _lock: lock })
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
        if !dir.exists() {
            if !create_if_missing {
                return Err(Error::new(KEEL_STATUS_NOT_FOUND, format!("shard {id} does not exist")));
            }
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            sync_dir(&self.dir.join("shards"))?;
        }
        let shard = Shard::open(&dir, self.opts.clone())?;
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
        if !dir.exists() {
            return Err(Error::new(KEEL_STATUS_NOT_FOUND, format!("shard {id} does not exist")));
        }
        let doomed = self.dir.join("shards").join(format!("{DROPPING}{id}"));
        std::fs::rename(&dir, &doomed).map_err(|e| Error::io(format!("renaming {}", dir.display()), e))?;
        sync_dir(&self.dir.join("shards"))?;
        std::fs::remove_dir_all(&doomed).map_err(|e| Error::io(format!("removing {}", doomed.display()), e))
    }

    /// Ids of every shard in the directory, open or not, ascending.
    pub fn list_shards(&self) -> Result<Vec<u32>> {
        if self.shards.lock().is_none() {
            return Err(Error::new(KEEL_STATUS_CLOSED, "engine is closed"));
        }
        let dir = self.dir.join("shards");
        let mut ids: Vec<u32> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
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
