//! The engine: one data directory hosting shards by u32 id.
//!
//! ```text
//! <dir>/LOCK                  locked (fcntl) while an engine has the directory open
//! <dir>/SHARDS                the ids of the engine's shards: a log of
//!                             checksummed records, one appended per create
//!                             and drop (`list.rs`)
//! <dir>/shards/<id>/wal/      the shard's WAL segments (no LOCK of its own: the engine's covers it)
//! <dir>/shards/<id>/segments/ the shard's appendable and immutable segments
//! <dir>/commit-log/           in `sync` durability, the log that makes the
//!                             shards' writes durable with one fdatasync
//!                             (src/wal/commit_log.rs); its copies go back
//!                             to their shards' WALs at open
//! <dir>/commit-log.covered    what the checkpoint of the last drop (or of
//!                             an open without the commit log) covered
//! <dir>/commit-log.made       the engine has had a commit log: its folder
//!                             missing or empty is CORRUPTION, not a log
//!                             never made
//! ```
//!
//! The shard list is the truth about which shards exist: a listed shard
//! whose directory vanished is CORRUPTION (never NOT_FOUND followed by a
//! silent re-create), and only the ids it holds are listed (a folder
//! named `01` or `+1` is not shard 1). A shard is created as an empty
//! `shards/<id>`, made durable, then listed (`Engine::create_dir`); it is
//! dropped by renaming it to `shards/.drop-<id>`, then unlisting it, then
//! removing it; engine open finishes either after a crash.
//!
//! A salvage open (`shard::Options::salvage`) also opens a damaged commit
//! log, or makes anew one whose folder was lost: what it lost goes into
//! the salvage report of every shard listed then, each time the engine
//! opens one (`State::lost_copies`).

mod incoming;
mod list;

use crate::error::{Error, Result};
use crate::fs::{FileCache, FileSystem, StdFs, MIN_OPEN_FILES};
use crate::lease::{Clock, FenceTable};
use crate::shard::pool::{FlushPool, Host};
use crate::shard::{self, Shard};
use crate::wal::commit_log::CommitLog;
use crate::wal::Durability;
use crate::status::*;
use parking_lot::Mutex;
use std::any::Any;
use list::ShardList;
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Prefix of a shard directory being dropped: renamed first so a crash
/// never leaves half a shard under its id.
const DROPPING: &str = ".drop-";
/// Prefix of a shard directory being created by a snapshot's reception
/// (`incoming.rs`; older keel created every shard so), renamed into place
/// once the shard list holds its id; engine open finishes such a create.
const CREATING: &str = ".new-";
const SHARD_LIST: &str = list::FILE;
/// The commit log's folder in the data directory.
const COMMIT_LOG: &str = "commit-log";
/// Versions every listed shard skips past its WAL's end, written before a
/// salvage open of the commit log and removed once every shard skipped
/// them (`Engine::open_commit_log`): a crash in between leaves it for the
/// next open to finish.
const SKIP_FILE: &str = "commit-log.skip";
/// What the checkpoint a drop took covered (`Engine::drop_reserved`): a
/// salvage of the commit log that loses that checkpoint's record must not
/// give the dropped shard's copies, which stay in the log's active
/// segment, to a shard created later under its id.
const COVERED_FILE: &str = "commit-log.covered";
/// Marks that the engine has a commit log: written once its folder is
/// durable, before any write is acknowledged through it, so that a folder
/// lost later is told apart from a log never made (`open_commit_log`).
const MADE_FILE: &str = "commit-log.made";
/// Versions every listed shard skips after a salvage open that found the
/// commit log's folder lost: how many its copies held cannot be told
/// without it. More than copies between two checkpoints hold at the
/// largest `max_unflushed_wal_bytes` (1 TiB, each version at least 4
/// bytes of a copy: 2^38), and 2^24 such losses still fit in a version.
const LOST_LOG_SKIP: u64 = 1 << 40;
/// `State::slots` is swept of closed shards when it reaches at least this.
const SWEEP_MIN: usize = 64;

/// A shard id: its canonical decimal name only.
fn parse_id(name: &str) -> Option<u32> {
    name.parse::<u32>().ok().filter(|id| id.to_string() == name)
}

/// What the engine knows of a shard id.
enum Slot {
    /// Being recovered, outside the engine's mutex; a second open is BUSY.
    Opening,
    /// Being dropped, outside the engine's mutex (`Engine::drop_reserved`);
    /// opening, dropping or receiving it is BUSY.
    Dropping,
    Open(Shard),
    /// Being received by a transfer (`incoming.rs`); opening it is BUSY.
    Incoming(Shard),
    /// Received by a transfer that finished, still open: the host's next
    /// `open_shard` takes it as it is, without recovering it again.
    Received(Shard),
}

struct State {
    slots: HashMap<u32, Slot>,
    /// The shard list, as it is on disk.
    list: ShardList,
    /// `slots` is swept when it grows to this many (`sweep_now`).
    sweep_at: usize,
    /// What the salvage open of the commit log lost, as a line of a
    /// shard's salvage report, and the ids it concerns: every shard listed
    /// at that open (whose copies were the log's to give back), until it
    /// is dropped (a shard created again under its id lost nothing).
    /// Which shards owned the lost copies cannot be told: the damaged one
    /// is unreadable, so none is left out.
    lost_copies: Option<(String, BTreeSet<u32>)>,
}

impl State {
    fn new(list: ShardList) -> State {
        State { slots: HashMap::new(), list, sweep_at: SWEEP_MIN, lost_copies: None }
    }

    /// The line of shard `id`'s salvage report about the commit log, if
    /// the engine's salvage open found copies lost that may be its.
    fn lost_copies_of(&self, id: u32) -> Option<String> {
        self.lost_copies.as_ref().filter(|(_, ids)| ids.contains(&id)).map(|(line, _)| line.clone())
    }

    /// Lets go of the shards closed since (through `Shard::close`, which
    /// does not tell the engine): a closed shard still holds its
    /// appendable segment's file until its last handle goes, and the
    /// engine's must not be that last handle for long. One still closing
    /// stays: its slot keeps the id from being opened again meanwhile.
    fn forget_closed(&mut self) {
        self.slots.retain(|_, s| !matches!(s, Slot::Open(s) if s.close_finished()));
        self.sweep_at = (2 * self.slots.len()).max(SWEEP_MIN);
    }

    /// `forget_closed` once the slots have doubled since the last sweep
    /// (at least `SWEEP_MIN`): opening shard after shard then costs O(1)
    /// a shard, not a scan of every slot each, while closed shards held
    /// stay at most as many as the slots the last sweep left (plus
    /// `SWEEP_MIN`), and `stats` sweeps them all.
    fn sweep_now(&mut self) {
        if self.slots.len() >= self.sweep_at {
            self.forget_closed();
        }
    }
}

/// What an engine holds now (`Engine::stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Threads the engine runs: its flush workers and WAL workers (the
    /// same whatever the number of shards).
    pub threads: u64,
    /// File descriptors of this process open on files below the engine's
    /// directory (WAL segments and spares, segment files, the LOCK).
    pub open_files: u64,
    /// Shards open now.
    pub open_shards: u64,
    /// Shards waiting for a flush worker.
    pub flush_queue: u64,
    /// WAL jobs (segment preparations, periodic syncs) queued, due or not.
    pub wal_queue: u64,
    /// Total time writers waited on the engine's shared workers: a WAL
    /// rotation that found no prepared segment and made one itself.
    pub stalled: Duration,
    /// Writes of all its shards that waited for a flush at the bound of
    /// unflushed WAL (`shard::Options::max_unflushed_wal_bytes`), and how
    /// long they waited in all, since the engine opened.
    pub write_stalls: u64,
    pub write_stall_time: Duration,
    /// The descriptor cache's bound (`Options::max_open_files`, resolved).
    pub max_open_files: u64,
    /// Shard file operations that found their file open in the cache.
    pub file_cache_hits: u64,
    /// Shard file operations that opened their file again (evicted before).
    pub file_cache_misses: u64,
    /// Shard files the cache closed to stay within `max_open_files`.
    pub file_cache_evictions: u64,
    /// The commit log (all zero without one): copies of write groups it
    /// made durable, checkpoints it took and the shard WAL syncs they
    /// made, and frames its open gave back to shard WALs that had lost
    /// them (to a power loss), since the engine opened.
    pub commits: u64,
    pub checkpoints: u64,
    pub checkpoint_syncs: u64,
    pub restored_frames: u64,
}

pub struct Engine {
    dir: PathBuf,
    /// `dir` resolved (symbolic links, `..`), as /proc/self/fd names files.
    real_dir: PathBuf,
    opts: shard::Options,
    /// Every file and directory operation of the engine and its shards.
    fs: Arc<dyn FileSystem>,
    /// Set when the caller supplied the file system (tests); otherwise each
    /// shard's WAL picks the real file system's write strategy itself.
    injected_fs: bool,
    /// None once closed.
    shards: Mutex<Option<State>>,
    /// Runs the flush, seals and merges of every shard of the engine on
    /// `opts.flush_threads` workers, and the WAL segment preparation and
    /// periodic syncs on `wal::ENGINE_WAL_WORKERS`; shut down once the
    /// shards are closed. The engine's threads are these, whatever the
    /// number of shards.
    host: Host,
    /// The node-local fenced lease table; its token high-water mark is `<dir>/FENCE`.
    fences: FenceTable,
    /// Makes the writes of its shards durable in `sync` durability (None
    /// in the other modes, or when `Options::commit_log` is false).
    commit_log: Option<Arc<CommitLog>>,
    /// Held while `COVERED_FILE` is replaced (`note_covered`).
    noting: Mutex<()>,
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
        let list = ShardList::load(&*fs, dir, opts.salvage, parse_id)?;
        let host = Host {
            flush: FlushPool::new(opts.flush_threads, opts.steps.clone())?,
            wal: crate::wal::Workers::new(crate::wal::ENGINE_WAL_WORKERS)?,
            files: FileCache::new(match opts.max_open_files {
                0 => default_open_files(),
                n => n,
            }),
            stalls: Default::default(),
        };
        let mut engine = Engine {
            commit_log: None,
            noting: Mutex::new(()),
            dir: dir.to_path_buf(),
            real_dir: std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
            opts,
            fences: FenceTable::new(dir.join("FENCE"), fs.clone(), Clock::monotonic()),
            fs,
            injected_fs,
            shards: Mutex::new(Some(State::new(list))),
            host,
            _lock: lock,
        };
        engine.finish_interrupted()?;
        engine.commit_log = engine.open_commit_log()?;
        engine.sync_dir(dir)?;
        Ok(engine)
    }

    /// Opens the commit log (in `sync` durability, when enabled) and gives
    /// each listed shard the frames its WAL lost (`shard::commit`), before
    /// any shard opens. CORRUPTION when its folder is missing or empty
    /// but the engine had one. A salvage open that finds it damaged, or its folder
    /// lost, notes what it lost for the listed shards' reports
    /// (`State::lost_copies`).
    fn open_commit_log(&self) -> Result<Option<Arc<CommitLog>>> {
        let log_dir = self.dir.join(COMMIT_LOG);
        let wanted = self.opts.durability == Durability::Sync && self.opts.commit_log;
        // An empty folder holds no log: a log's open leaves its extent
        // record there, durably, before the marker below is written.
        let found = self.exists(&log_dir)? && !self.is_empty_dir(&log_dir)?;
        // A log that existed and is gone (deleted or emptied, or left
        // behind when the directory was copied) took the copies it held
        // with it, and one made anew numbers from 1 again: never done
        // silently. Its marker says it existed, or a note only a log's
        // owner writes (an older keel wrote no marker).
        let mut witness = None;
        for name in [MADE_FILE, COVERED_FILE, SKIP_FILE].into_iter().filter(|_| !found) {
            if self.exists(&self.dir.join(name))? {
                witness = Some(name);
                break;
            }
        }
        // Copies written before the log was turned off still go back.
        if !wanted && !found && witness.is_none() {
            return Ok(None);
        }
        if let Some(name) = witness.filter(|_| !self.opts.salvage) {
            return Err(Error::corruption(format!(
                "{}: missing or empty, but {name} says the engine had a commit log: the copies of acknowledged writes it held are lost, and a new one would hand out its sequence numbers again; open the engine with salvage to make it anew (every shard's salvage report then says what may be lost, and its versions skip past it)",
                log_dir.display()
            )));
        }
        let covered_path = self.dir.join(COVERED_FILE);
        let mut floor = self.read_note(&covered_path)?.map(|(n, _)| n);
        let fs = self.host.files.wrap(match self.injected_fs {
            true => self.fs.clone(),
            false => crate::wal::std_fs(Durability::Sync),
        });
        // A checkpoint every `max_unflushed_wal_bytes` of copies: what an
        // open restores is bounded like what a shard's open replays.
        let checkpoint_bytes = self.opts.max_unflushed_wal_bytes;
        // A scheduler that owns every step owns every file operation (tests).
        let prepare_ahead = !self.opts.steps.owns_schedule();
        // A salvage may lose copies of acknowledged writes whose versions
        // a shard's WAL lost too: every listed shard then skips as many
        // versions as the lost copies could hold, so that none is handed
        // out again. The count is written down before the log is opened
        // (the salvage repairs it for good), what it lost once it opened,
        // and a crash or a failure before every shard skipped leaves both
        // for the next open, salvage or not, which finds the log whole
        // and would otherwise report nothing.
        let skip_path = self.dir.join(SKIP_FILE);
        let (pending, noted) = self.read_note(&skip_path)?.unzip();
        let noted = noted.flatten();
        let note = |n: u64, lost: Option<&str>| {
            let text = lost.map_or(n.to_string(), |l| format!("{n}\n{l}"));
            crate::fs::replace(&*self.fs, &skip_path, text.as_bytes())
        };
        // A lost folder loses every copy, which is known before the open.
        let gone = witness.map(|name| format!("every copy it held: {} was missing or empty, though {name} says the engine had it, and was made anew", log_dir.display()));
        let bound = match (self.opts.salvage, found) {
            (true, true) => Some(crate::wal::commit_log::versions_bound(&*fs, &log_dir)?),
            (true, false) => gone.as_ref().map(|_| LOST_LOG_SKIP),
            (false, _) => None,
        };
        let bound = bound.map(|b| b.max(pending.unwrap_or(0)));
        if let Some(b) = bound.filter(|&b| Some(b) != pending) {
            note(b, gone.as_deref().or(noted.as_deref()))?;
        }
        // The note is of the log found: one made anew numbers from 1 again.
        // Removed once the count above is down, which stands for it as
        // the witness of a lost folder until every shard skipped.
        if !found && floor.take().is_some() {
            self.fs.remove(&covered_path).map_err(|e| Error::io(format!("removing {}", covered_path.display()), e))?;
            self.sync_dir(&self.dir)?;
        }
        let log = CommitLog::open(&log_dir, fs, &self.host.wal, self.opts.wal_segment_size, prepare_ahead, checkpoint_bytes, self.opts.salvage)?;
        // Once the folder is durable (the log's open synced its entry, then
        // wrote its extent record in it), before any copy is committed to
        // it: the marker never claims a log that was not made, and every
        // log a write was acknowledged through has one.
        let made = self.dir.join(MADE_FILE);
        if !self.exists(&made)? {
            crate::fs::replace(&*self.fs, &made, b"")?;
        }
        let lost = log.lost().or(gone.as_deref());
        let skip = match lost {
            Some(_) => bound.or(pending).unwrap_or(0),
            None => pending.unwrap_or(0),
        };
        if let Some(lost) = log.lost() {
            note(skip, Some(lost))?;
        }
        if let Some(lost) = lost.or(noted.as_deref()) {
            let line = format!(
                "the engine's commit log was damaged and opened by salvage: it lost {lost}. A write to this shard acknowledged before the engine stopped is missing if it was among those copies and the shard's own WAL lost it too (its unsynced tail, to a power loss or a killed process); the shard's versions skip {skip} numbers past its WAL's end, so that no version of such a write is handed out again"
            );
            if let Some(state) = &mut *self.shards.lock() {
                state.lost_copies = Some((line, state.list.ids().collect()));
            }
        }
        // The listed shards whose folders exist: copies of an unlisted id
        // are of one whose drop a crash cut after its checkpoint (dropping
        // a shard takes one first).
        let live = |id: u32| -> Result<Option<PathBuf>> {
            let dir = self.shard_dir(id);
            let listed = self.shards.lock().as_ref().is_some_and(|st| st.list.contains(id));
            Ok((listed && self.exists(&dir)?).then_some(dir))
        };
        let restore = |id: u32, copies| -> Result<u64> {
            let Some(dir) = live(id)? else { return Ok(0) };
            let fs = self.injected_fs.then(|| self.fs.clone());
            shard::restore_wal(&dir, &self.opts, fs, &self.host, copies, skip)
                .map_err(|e| Error::new(e.status, format!("restoring shard {id}'s WAL from the engine's commit log: {}", e.message)))
        };
        let mut restored = BTreeSet::new();
        log.recover(floor.unwrap_or(0), |id, copies| {
            restored.insert(id);
            restore(id, copies)
        })?;
        if skip > 0 {
            let ids: Vec<u32> = self.shards.lock().as_ref().map(|st| st.list.ids().collect()).unwrap_or_default();
            for id in ids.into_iter().filter(|id| !restored.contains(id)) {
                restore(id, Vec::new())?;
            }
        }
        if pending.is_some() || bound.is_some() {
            self.fs.remove(&skip_path).map_err(|e| Error::io(format!("removing {}", skip_path.display()), e))?;
            self.sync_dir(&self.dir)?;
        }
        if !wanted {
            // No checkpoint notes what it covered before this log opens
            // again, whatever is dropped meanwhile: this one does.
            if log.covered() > floor.unwrap_or(0) {
                self.note_covered(&log)?;
            }
            log.close()?;
            return Ok(None);
        }
        Ok(Some(Arc::new(log)))
    }

    /// The number the note at `path` holds (`SKIP_FILE`: versions every
    /// shard still has to skip; `COVERED_FILE`), and the text on the lines
    /// after it, if any (`SKIP_FILE`: what the salvage lost); None: no
    /// such file.
    fn read_note(&self, path: &Path) -> Result<Option<(u64, Option<String>)>> {
        let Some(bytes) = shard::files::read_all(&*self.fs, path, 64 << 10)? else { return Ok(None) };
        let text = std::str::from_utf8(&bytes).ok();
        let (n, rest) = text.map_or(("", None), |t| t.split_once('\n').map_or((t, None), |(n, rest)| (n, Some(rest))));
        let n = n.parse().map_err(|_| Error::corruption(format!("{}: not a number", path.display())))?;
        Ok(Some((n, rest.map(str::to_string))))
    }

    /// Notes durably what the checkpoints of `log` cover (`COVERED_FILE`).
    /// One note at a time: drops of other ids run at once, and each
    /// replace goes through the same temporary file, which another's
    /// create would truncate and its rename take away (failing this one's
    /// rename, or putting a half-written note in place). The number is read
    /// under the lock, so the last note written is the largest.
    fn note_covered(&self, log: &CommitLog) -> Result<()> {
        let _one = self.noting.lock();
        crate::fs::replace(&*self.fs, &self.dir.join(COVERED_FILE), log.covered().to_string().as_bytes())
    }

    /// Finishes the creates and drops a crash interrupted (one pass over
    /// the shard folder's names, whatever the number of shards).
    fn finish_interrupted(&self) -> Result<()> {
        let shards_dir = self.dir.join("shards");
        let mut guard = self.shards.lock();
        let state = guard.as_mut().expect("open");
        let remove = |path: &Path| self.fs.remove_dir_all(path).map_err(|e| Error::io(format!("removing {}", path.display()), e));
        for name in self.fs.list(&shards_dir).map_err(|e| Error::io(format!("listing {}", shards_dir.display()), e))? {
            let path = shards_dir.join(&name);
            if let Some(id) = name.strip_prefix(DROPPING).and_then(parse_id) {
                // A drop a crash cut after its rename: finished here. But a
                // listed id whose folder exists is a shard created after a
                // drop that failed only to remove this folder: it stays.
                if state.list.contains(id) && !self.exists(&self.shard_dir(id))? {
                    state.list.remove(&*self.fs, id)?;
                }
                remove(&path)?;
            } else if let Some(id) = name.strip_prefix(CREATING).and_then(parse_id) {
                if state.list.contains(id) && !self.exists(&self.shard_dir(id))? {
                    self.fs.rename(&path, &self.shard_dir(id)).map_err(|e| Error::io(format!("renaming {}", path.display()), e))?;
                } else {
                    remove(&path)?;
                }
            } else if parse_id(&name).is_some_and(|id| !state.list.contains(id)) && self.is_empty_dir(&path)? {
                remove(&path)?; // a create cut before its id was listed (`create_dir`)
            }
        }
        self.sync_dir(&shards_dir)
    }

    /// CORRUPTION when the folder of `id`, which the shard list does not
    /// have, holds files: never a create's leftover (a create makes no
    /// file before its id is listed), so the list lost the id's record or
    /// the folder was put there by hand. Neither a NOT_FOUND nor a create
    /// over it: the data stays for a salvage open, which lists it again.
    /// (An empty one is a create whose listing failed: taken over.)
    fn check_unlisted(&self, id: u32) -> Result<()> {
        let dir = self.shard_dir(id);
        if self.exists(&dir)? && !self.is_empty_dir(&dir)? {
            return Err(Error::corruption(format!(
                "{}: holds files but shard {id} is not in the engine's shard list ({SHARD_LIST}): the list lost its record, or the folder was put there by hand; open the engine with salvage to list it again",
                dir.display()
            )));
        }
        Ok(())
    }

    /// Whether `path` is a folder with nothing in it (false for a file).
    fn is_empty_dir(&self, path: &Path) -> Result<bool> {
        match self.fs.list(path) {
            Ok(names) => Ok(names.is_empty()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(false),
            Err(e) => Err(Error::io(format!("listing {}", path.display()), e)),
        }
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
    /// `create_if_missing` is false; BUSY when it is already open or being
    /// opened; CORRUPTION when the shard list has it but its directory is
    /// gone, or does not have it but its directory holds files. The
    /// recovery runs outside the engine's mutex: other shards open, drop
    /// and list meanwhile.
    pub fn open_shard(&self, id: u32, create_if_missing: bool) -> Result<Shard> {
        let dir = self.shard_dir(id);
        let (reserved, create, lost_copies) = {
            let mut guard = self.lock_for(id)?;
            let state = guard.as_mut().ok_or_else(|| Error::new(KEEL_STATUS_CLOSED, "engine is closed"))?;
            state.sweep_now();
            match state.slots.get(&id) {
                Some(Slot::Opening) => return Err(Error::new(KEEL_STATUS_BUSY, format!("shard {id} is being opened"))),
                Some(Slot::Dropping) => return Err(dropping(id)),
                Some(Slot::Open(s)) if !s.close_finished() => {
                    return Err(Error::new(KEEL_STATUS_BUSY, format!("shard {id} is already open (or still closing); close it first")))
                }
                Some(Slot::Incoming(_)) => return Err(incoming::busy(id)),
                Some(Slot::Received(_)) => {
                    let Some(Slot::Received(s)) = state.slots.remove(&id) else { unreachable!("matched above") };
                    state.slots.insert(id, Slot::Open(s.clone()));
                    return Ok(s);
                }
                _ => {}
            }
            self.check_not_held(id)?;
            let create = !state.list.contains(id);
            if create {
                if !create_if_missing {
                    self.check_unlisted(id)?;
                    return Err(Error::new(KEEL_STATUS_NOT_FOUND, format!("shard {id} does not exist")));
                }
            } else if !self.exists(&dir)? {
                return Err(missing_listed(&dir, id));
            } else if self.exists(&dir.join(incoming::MARKER))? {
                return Err(incoming::busy(id));
            }
            (self.reserve(state, id, Slot::Opening), create, state.lost_copies_of(id))
        };
        // The id is reserved (`Opening`): its folder is made and synced
        // outside the mutex, so creates on several threads overlap those
        // syncs; only the list's append is one at a time.
        let created = if create { self.create_reserved(id) } else { Ok(()) };
        let opened = created.and_then(|()| {
            let fs = self.injected_fs.then(|| self.fs.clone());
            let commit = self.commit_log.as_ref().map(|log| (log.clone(), id));
            Shard::open_hosted(&dir, self.opts.clone(), fs, &self.host, commit, lost_copies)
        });
        self.settle(reserved, opened, Slot::Open)
    }

    /// The engine's state, locked for a call on shard `id`, once a close
    /// of it that stopped at RESOURCE (its handle may be gone: the C API
    /// frees it) is finished; its error if it fails again. That close (a
    /// WAL sync and its extent record) runs outside the mutex: other
    /// shards open, drop and list meanwhile, while the id is BUSY (still
    /// closing).
    fn lock_for(&self, id: u32) -> Result<parking_lot::MutexGuard<'_, Option<State>>> {
        loop {
            let guard = self.shards.lock();
            let pending = match guard.as_ref().and_then(|state| state.slots.get(&id)) {
                Some(Slot::Open(s)) if s.close_pending() => s.clone(),
                _ => return Ok(guard),
            };
            drop(guard);
            // Ok only once the close has finished, so the loop ends.
            pending.close()?;
        }
    }

    /// Reserves shard `id`, free in `state`, as `slot` (`Opening` or
    /// `Dropping`) for I/O its caller runs outside the mutex.
    fn reserve(&self, state: &mut State, id: u32, slot: Slot) -> Reserved<'_> {
        debug_assert!(matches!(slot, Slot::Opening | Slot::Dropping));
        state.slots.insert(id, slot);
        Reserved { engine: self, id }
    }

    /// Runs `f` on the shard list under the engine's mutex (the list's
    /// appends are one at a time); CLOSED, naming `during`, once the
    /// engine is closed.
    fn with_list<T>(&self, during: &str, f: impl FnOnce(&mut ShardList) -> Result<T>) -> Result<T> {
        match &mut *self.shards.lock() {
            Some(state) => f(&mut state.list),
            None => Err(Error::new(KEEL_STATUS_CLOSED, format!("engine closed while {during}"))),
        }
    }

    /// IO when shard `id`'s WAL failed to close since the engine opened:
    /// its acknowledged writes are in the commit log only, and opening its
    /// shortened WAL (a host's open, a transfer's reception) would hand
    /// their versions out again.
    pub(super) fn check_not_held(&self, id: u32) -> Result<()> {
        if self.commit_log.as_ref().is_some_and(|log| log.holds(id)) {
            return Err(Error::new(
                KEEL_STATUS_IO,
                format!("shard {id}'s WAL failed to close: its acknowledged writes are in the engine's commit log, which gives them back when the engine reopens; reopen the engine before the shard"),
            ));
        }
        Ok(())
    }

    /// Puts the outcome of opening a shard (whose slot is `reserved` as
    /// `Opening`) in its slot: the shard, as `slot` makes it, or nothing
    /// after an error. A shard whose engine closed during its recovery is
    /// closed (outside the mutex).
    fn settle(&self, reserved: Reserved<'_>, opened: Result<Shard>, slot: fn(Shard) -> Slot) -> Result<Shard> {
        let id = reserved.id;
        let kept = reserved.end(|state| match (state, opened) {
            (Some(state), Ok(shard)) => {
                state.slots.insert(id, slot(shard.clone()));
                Ok(Ok(shard))
            }
            (Some(state), Err(e)) => {
                state.slots.remove(&id);
                Ok(Err(e))
            }
            (None, opened) => Err(opened.ok()),
        });
        kept.unwrap_or_else(|orphan| {
            if let Some(s) = orphan {
                let _ = s.close_for_good();
            }
            Err(Error::new(KEEL_STATUS_CLOSED, "engine closed while the shard was opening"))
        })
    }

    /// Creates the directory of shard `id`, reserved by the caller, empty,
    /// and lists it: two syncs, whatever the number of shards; only the
    /// list's append takes the engine's mutex.
    ///
    /// Power loss at each step: (1) `mkdir shards/<id>`, (2) fsync
    /// `shards/`, (3) append `id` to the list and fdatasync it, the
    /// create's commit point. Cut before (3) is durable, at most an empty
    /// unlisted `shards/<id>` remains, which engine open removes
    /// (`finish_interrupted`; the shard's own files are made only after
    /// this returns, so an unlisted folder with anything in it is never a
    /// create's leftover and stays for the operator). After (3) the id is
    /// listed and, by (2), its folder is there: a listed shard whose
    /// folder is gone is still damage, never a crash.
    fn create_reserved(&self, id: u32) -> Result<()> {
        let shards_dir = self.dir.join("shards");
        let dir = self.shard_dir(id);
        self.check_unlisted(id)?;
        self.fs.create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        self.sync_dir(&shards_dir)?;
        self.with_list("the shard was being created", |list| list.add(&*self.fs, id))
    }

    /// Whether `shard` is this engine's shard `id`, open (a handle of
    /// another engine, or of another id, is not).
    pub fn holds_open(&self, id: u32, shard: &Shard) -> bool {
        match &*self.shards.lock() {
            Some(state) => matches!(state.slots.get(&id), Some(Slot::Open(s)) if s.same_shard(shard) && !s.is_closed()),
            None => false,
        }
    }

    /// Deletes shard `id` and its data. BUSY while it is open, being
    /// opened or dropped. The id is reserved (`Dropping`) and the drop's
    /// I/O runs outside the engine's mutex: other shards open, drop and
    /// list meanwhile.
    pub fn drop_shard(&self, id: u32) -> Result<()> {
        let (reserved, received) = {
            let mut guard = self.lock_for(id)?;
            let state = guard.as_mut().ok_or_else(|| Error::new(KEEL_STATUS_CLOSED, "engine is closed"))?;
            let received = match state.slots.get(&id) {
                Some(Slot::Opening) => return Err(Error::new(KEEL_STATUS_BUSY, format!("shard {id} is being opened"))),
                Some(Slot::Dropping) => return Err(dropping(id)),
                Some(Slot::Open(s)) if !s.close_finished() => {
                    return Err(Error::new(KEEL_STATUS_BUSY, format!("shard {id} is open (or still closing); close it before dropping it")))
                }
                Some(Slot::Incoming(_)) => return Err(incoming::busy(id)),
                Some(Slot::Received(s)) => Some(s.clone()),
                _ => None,
            };
            (self.reserve(state, id, Slot::Dropping), received)
        };
        if let Some(s) = received {
            // Closed all the same on error (never left pending), and its
            // slot goes with the reservation, as a host's shard whose
            // close failed: the next open recovers it instead of handing
            // it out closed.
            s.close_for_good()?;
        }
        self.drop_reserved(&reserved)
    }

    /// Drops the shard `reserved` holds (not open; reserved as `Dropping`,
    /// or as `Opening` by a reception that replaces it), outside the
    /// engine's mutex but for the list's append.
    fn drop_reserved(&self, reserved: &Reserved<'_>) -> Result<()> {
        let id = reserved.id;
        {
            let mut guard = self.shards.lock();
            let state = guard.as_mut().ok_or_else(|| Error::new(KEEL_STATUS_CLOSED, "engine is closed"))?;
            if !state.list.contains(id) {
                return Err(not_found(id));
            }
            // Gone whether or not the drop below finishes: the shard's
            // data may be, and a shard created under its id lost nothing.
            if let Some((_, ids)) = &mut state.lost_copies {
                ids.remove(&id);
            }
        }
        let dir = self.shard_dir(id);
        // No copy of the dropped shard's frames may reach a shard created
        // later under its id: a checkpoint covers them all first (the id
        // is reserved, so no shard of it writes meanwhile), noted outside
        // the log too, since a salvage of it may lose the record.
        if let Some(log) = &self.commit_log {
            log.checkpoint()?;
            self.note_covered(log)?;
        }
        let doomed = self.dir.join("shards").join(format!("{DROPPING}{id}"));
        // Left by an earlier drop of this id whose removal failed: the
        // rename below needs its name.
        if self.exists(&doomed)? {
            self.fs.remove_dir_all(&doomed).map_err(|e| Error::io(format!("removing {}", doomed.display()), e))?;
        }
        let renamed = self.exists(&dir)?;
        if renamed {
            self.fs.rename(&dir, &doomed).map_err(|e| Error::io(format!("renaming {}", dir.display()), e))?;
        }
        let synced = if renamed { self.sync_dir(&self.dir.join("shards")) } else { Ok(()) };
        let unlisted = synced.and_then(|()| self.with_list("the shard was being dropped", |list| list.remove(&*self.fs, id)));
        if let Err(e) = unlisted {
            // The drop failed before its commit point (or the engine
            // closed before it, leaving the list untouched): the shard
            // stays whole under its id (listed, its folder back), never
            // listed with its folder gone (CORRUPTION to the next open). A
            // crash before the rename back leaves `.drop-<id>`, which
            // engine open finishes as a drop a crash cut; the list, which
            // may or may not hold the unlisting, is written again whole.
            if renamed && self.fs.rename(&doomed, &dir).is_ok() {
                let _ = self.sync_dir(&self.dir.join("shards"));
                let _ = self.with_list("the shard was being dropped", |list| list.add(&*self.fs, id));
            }
            return Err(e);
        }
        if self.exists(&doomed)? {
            self.fs.remove_dir_all(&doomed).map_err(|e| Error::io(format!("removing {}", doomed.display()), e))?;
        }
        Ok(())
    }

    pub fn fences(&self) -> &FenceTable {
        &self.fences
    }

    /// Ids of every shard of the engine, open or not, ascending.
    pub fn list_shards(&self) -> Result<Vec<u32>> {
        match &*self.shards.lock() {
            Some(state) => Ok(state.list.ids().collect()),
            None => Err(Error::new(KEEL_STATUS_CLOSED, "engine is closed")),
        }
    }

    /// Worker threads of the engine's flush pool.
    pub fn flush_threads(&self) -> usize {
        self.host.flush.size()
    }

    /// What the engine holds now. CLOSED once closed.
    pub fn stats(&self) -> Result<EngineStats> {
        let open_shards = match &mut *self.shards.lock() {
            Some(state) => {
                state.forget_closed();
                state.slots.values().filter(|s| matches!(s, Slot::Open(_) | Slot::Received(_))).count() as u64
            }
            None => return Err(Error::new(KEEL_STATUS_CLOSED, "engine is closed")),
        };
        let (write_stalls, write_stall_time) = self.host.stalls.read();
        let files = self.host.files.counts();
        let log = self.commit_log.as_ref().map(|l| l.stats()).unwrap_or_default();
        Ok(EngineStats {
            threads: (self.host.flush.size() + self.host.wal.size()) as u64,
            open_files: open_files_below(&self.real_dir),
            open_shards,
            flush_queue: self.host.flush.queued() as u64,
            wal_queue: self.host.wal.queued() as u64,
            stalled: self.host.wal.stalled(),
            write_stalls,
            write_stall_time,
            max_open_files: self.host.files.limit() as u64,
            file_cache_hits: files.hits,
            file_cache_misses: files.misses,
            file_cache_evictions: files.evictions,
            commits: log.commits,
            checkpoints: log.checkpoints,
            checkpoint_syncs: log.checkpoint_syncs,
            restored_frames: log.restored_frames,
        })
    }

    /// Closes every open shard (each flushes), then stops the flush pool
    /// (after a shard still opening has closed itself too), and releases
    /// the directory when the engine is dropped. Returns the first error.
    /// Idempotent.
    pub fn close(&self) -> Result<()> {
        let Some(state) = self.shards.lock().take() else { return Ok(()) };
        // A shard still opening is closed by its opener, which finds the
        // engine closed; a drop still running finishes or is undone by
        // its caller, which finds it closed before or after its commit
        // point (the list's append).
        let shards: Vec<Shard> = state
            .slots
            .into_values()
            .filter_map(|s| match s {
                Slot::Open(s) | Slot::Incoming(s) | Slot::Received(s) => Some(s),
                Slot::Opening | Slot::Dropping => None,
            })
            .collect();
        let mut result = close_all(&shards);
        // After its shards: their closes synced them, so its last
        // checkpoint covers every copy.
        if let Some(log) = &self.commit_log {
            result = result.and(log.close());
        }
        self.host.flush.shutdown();
        self.host.wal.shutdown();
        result
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// BUSY: shard `id` is being dropped.
fn dropping(id: u32) -> Error {
    Error::new(KEEL_STATUS_BUSY, format!("shard {id} is being dropped"))
}

fn not_found(id: u32) -> Error {
    Error::new(KEEL_STATUS_NOT_FOUND, format!("shard {id} does not exist"))
}

/// Shard `id` is listed but its folder (`dir`) is gone: damage, for an open
/// and for a WAL delta alike, not a shard that does not exist.
fn missing_listed(dir: &Path, id: u32) -> Error {
    Error::corruption(format!("{}: missing, but shard {id} is in the engine's shard list ({SHARD_LIST}): its data is gone", dir.display()))
}

/// Shard `id`'s slot reserved (`Slot::Opening` or `Slot::Dropping`) while
/// its caller runs I/O on it outside the engine's mutex: other calls on
/// the id are BUSY meanwhile. Dropped without `end` (an error, or a panic
/// unwinding), it frees the slot, so the id is never left BUSY for the
/// life of the engine.
struct Reserved<'a> {
    engine: &'a Engine,
    id: u32,
}

impl Reserved<'_> {
    /// Ends the reservation under the engine's mutex: `f` gives the slot
    /// its next state (None: the engine closed meanwhile).
    fn end<T>(self, f: impl FnOnce(Option<&mut State>) -> T) -> T {
        let mut guard = self.engine.shards.lock();
        let t = f(guard.as_mut());
        drop(guard);
        // Settled by `f`: the slot is no longer this reservation's.
        std::mem::forget(self);
        t
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if let Some(state) = &mut *self.engine.shards.lock() {
            if matches!(state.slots.get(&self.id), Some(Slot::Opening | Slot::Dropping)) {
                state.slots.remove(&self.id);
            }
        }
    }
}

/// Threads `Engine::close` closes shards on: each close is a few small
/// syncs, which the device serves for several shards at once.
const CLOSE_THREADS: usize = 4;

/// Closes every shard of `shards` on up to `CLOSE_THREADS` threads, for
/// the time of the call (on this one where a thread cannot start); the
/// first error, if any.
fn close_all(shards: &[Shard]) -> Result<()> {
    // Every shard is closed, whatever fails; the first error is kept.
    let first = |result: &mut Result<()>, r: Result<()>| {
        if result.is_ok() {
            *result = r;
        }
    };
    let close = |part: &[Shard]| {
        let mut result = Ok(());
        for shard in part {
            first(&mut result, shard.close_for_good());
        }
        result
    };
    let chunk = shards.len().div_ceil(CLOSE_THREADS).max(1);
    std::thread::scope(|s| {
        let closers: Vec<_> = shards
            .chunks(chunk)
            .map(|part| std::thread::Builder::new().name("keel-close".into()).spawn_scoped(s, move || close(part)).map_err(|_| part))
            .collect();
        let mut result = Ok(());
        for closer in closers {
            let closed = match closer {
                Ok(thread) => thread.join().unwrap_or_else(|_| Err(Error::new(KEEL_STATUS_PANIC, "closing a shard panicked"))),
                Err(part) => close(part),
            };
            first(&mut result, closed);
        }
        result
    })
}

/// The descriptor cache's bound when the options leave it at 0: half the
/// process's soft `RLIMIT_NOFILE` (the other half is the application's),
/// at least `MIN_OPEN_FILES`.
fn default_open_files() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the live local `lim`.
    let soft = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } {
        0 if lim.rlim_cur != libc::RLIM_INFINITY => lim.rlim_cur,
        _ => 1 << 20,
    };
    ((soft / 2).min(1 << 20) as usize).max(MIN_OPEN_FILES)
}

/// How many of this process's file descriptors name a file below `dir`
/// (0 where /proc/self/fd cannot be read). Counting the descriptors
/// themselves needs no bookkeeping in every place that opens a file.
fn open_files_below(dir: &Path) -> u64 {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return 0 };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok()).filter(|target| target.starts_with(dir)).count() as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_canonical_names_are_shard_ids() {
        assert_eq!(super::parse_id("1"), Some(1));
        assert_eq!(super::parse_id("4294967295"), Some(u32::MAX));
        for bad in ["01", "+1", "-1", " 1", "1 ", "", "4294967296", ".drop-1"] {
            assert_eq!(super::parse_id(bad), None, "{bad:?}");
        }
    }
}
