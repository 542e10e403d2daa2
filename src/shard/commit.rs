//! A shard's side of its engine's commit log (src/wal/commit_log.rs): in
//! `sync` durability an engine's shard writes its WAL frames without
//! syncing them, and the write gate's leader makes its group durable by
//! appending a copy of the group's frame to the engine's commit log, one
//! fdatasync shared by every shard writing at the same time. Its own WAL
//! is synced when a flush needs it (the write-ahead rule), when a
//! checkpoint of the commit log asks, and at close.
//!
//! Also the repair at engine open: a shard whose WAL lost frames to a
//! power loss gets them back from their copies before it opens.

use super::{Inner, Options};
use crate::error::{Error, Result};
use crate::fs::FileSystem;
use crate::wal::commit_log::{encode_copy, CommitLog, Copied, Member};
use crate::wal::{self, Durability, Wal};
use parking_lot::Mutex;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};

/// The commit log of a shard and its place in it.
pub(crate) struct Committer {
    log: Arc<CommitLog>,
    /// The shard's id in the engine.
    id: u32,
    /// The shard itself, as the commit log's checkpoints sync it.
    me: Weak<dyn Member>,
    /// In the set of shards the next checkpoint syncs.
    listed: AtomicBool,
    /// The copies of the frames of the gate's current lead: staged by
    /// its leader as it logs each frame, committed by the same leader
    /// before it passes the lead on (so no other lead can stage in
    /// between).
    staged: Mutex<Staged>,
}

impl Committer {
    pub fn new(log: Arc<CommitLog>, id: u32, me: Weak<dyn Member>) -> Committer {
        Committer {
            log,
            id,
            me,
            listed: AtomicBool::new(false),
            staged: Mutex::new(Staged::default()),
        }
    }
}

/// Copies staged for the next commit, back to back.
#[derive(Default)]
struct Staged {
    bytes: Vec<u8>,
    /// Where each copy but the last ends.
    ends: Vec<usize>,
}

impl Staged {
    fn push(&mut self, id: u32, first: u64, records: &[&[u8]]) {
        if !self.bytes.is_empty() {
            self.ends.push(self.bytes.len());
        }
        encode_copy(id, first, records, &mut self.bytes);
    }

    fn copies(&self) -> Vec<&[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        let ends = self.ends.iter().copied().chain(std::iter::once(self.bytes.len()));
        starts.zip(ends).map(|(s, e)| &self.bytes[s..e]).collect()
    }

    /// Empties it, keeping the room for the next lead's copies.
    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// The WAL options of a shard whose writes the commit log makes durable:
/// its own log only writes (`none`), through the write strategy of `sync`
/// (the shard's choice, `wal_fs`); the engine syncs it when it must. Its tail is restorable
/// (`wal::Options::restorable_tail`): frames lost to a power loss are
/// only at its end, where `restore_wal` gives them back.
/// (Also the WAL a restore at engine open writes, whatever durability
/// that open has: copies an earlier `sync` open left still go back.)
pub(crate) fn committed_wal(opts: &wal::Options) -> wal::Options {
    wal::Options { durability: Durability::None, restorable_tail: true, write_behind: super::WRITE_BEHIND, ..opts.clone() }
}

impl Inner {
    /// Stages the copy of the frame just logged (records from `first`).
    pub(super) fn stage_copy(&self, first: u64, records: &[&[u8]]) {
        if let Some(c) = &self.commit {
            c.staged.lock().push(c.id, first, records);
        }
    }

    /// The gate's leader settles its lead, whose frames logged up to
    /// `last` (0: nothing): in `sync` durability it makes them durable,
    /// through their staged copies in the commit log or (without them, or
    /// when the commit log fails or refuses copies that large) by syncing
    /// the shard's own WAL up to `last`.
    pub(super) fn settle(&self, wal: &Wal, last: u64) -> Result<()> {
        let durable = self.opts.durability == Durability::Sync && last > 0;
        if let Some(c) = &self.commit {
            let mut staged = std::mem::take(&mut *c.staged.lock());
            if durable && !staged.bytes.is_empty() {
                let committed = c.log.commit(&staged.copies(), &c.listed, &c.me);
                // The buffers are kept for the next lead's copies.
                staged.clear();
                *c.staged.lock() = staged;
                // Refused (copies larger than the commit log's records) or
                // failed, the lead is made durable in the shard's own WAL.
                if committed.is_ok() {
                    return Ok(());
                }
            }
        }
        match durable {
            true => wal.wait_durable(last),
            false => Ok(()),
        }
    }

    /// After a write, outside the gate and the WAL's lock: the commit
    /// log's checkpoint, when one is due, runs here.
    pub(super) fn checkpoint_if_due(&self) {
        if let Some(c) = &self.commit {
            c.log.checkpoint_if_due();
        }
    }

    /// Closing the shard's WAL failed: its frames may be in no durable
    /// file, so the commit log keeps their copies until the engine
    /// reopens (`CommitLog::hold`; the engine refuses to open the shard
    /// again until then).
    pub(super) fn note_close_failed(&self) {
        if let Some(c) = &self.commit {
            c.log.hold(c.id);
        }
    }
}

impl Member for Inner {
    fn sync_log(&self) -> Result<()> {
        // Close holds the write side while it closes the WAL: a shard seen
        // closed here is closed through its final sync.
        // One whose close failed is held by the commit log (`hold`).
        match self.wal.read_recursive().as_ref() {
            // The checkpoint drops the copies of what this sync covers.
            Some(w) => w.sync_recorded().map(drop),
            None => Ok(()),
        }
    }

    fn listed(&self) -> &AtomicBool {
        &self.commit.as_ref().expect("only committed shards are members").listed
    }
}

/// Gives the WAL of the shard in `dir` back the frames it lost of `copies`
/// (in sequence order, from the engine's commit log), then syncs it;
/// returns how many it gave back. With `skip`, the WAL's next version is
/// then that many past its end (its extent record says so, and its next
/// open declares the gap): copies the commit log lost may have held
/// versions this WAL lost too, which must not be handed out again. Not
/// a shard with neither a manifest nor a record: its first open never
/// got past its WAL (a create a crash cut), so it acknowledged nothing,
/// and a WAL that skipped would make it one whose manifest is lost. Nor
/// one whose WAL folder was lost: it is not made again, and the shard's
/// open reports the loss (with copies to give back, the restore fails as
/// that open would). A copy the WAL holds already is skipped; one that
/// starts past the WAL's end leaves a gap no copy fills: CORRUPTION.
pub(crate) fn restore_wal(
    dir: &Path,
    opts: &Options,
    fs: Option<Arc<dyn FileSystem>>,
    host: &super::pool::Host,
    copies: Vec<Copied>,
    skip: u64,
) -> Result<u64> {
    // A frame logged under a larger `wal_segment_size` than this open's
    // goes back whole: the limit on new writes' records is not the
    // restore's business (a WAL that kept the frame replays it too).
    let need = copies.iter().map(|c| c.records.iter().map(|r| 4 + r.len() as u64).sum::<u64>()).max().unwrap_or(0);
    let segment = (need + wal::format::OVERHEAD).next_power_of_two().min(wal::format::MAX_SEGMENT_SIZE);
    let opts = &Options { wal_segment_size: opts.wal_segment_size.max(segment), ..opts.clone() };
    let seg_fs = fs.clone().unwrap_or_else(|| Arc::new(crate::fs::StdFs::direct()));
    let manifest = super::manifest::path(&dir.join("segments"));
    let has_manifest = seg_fs.exists(&manifest).map_err(|e| Error::io(format!("looking for {}", manifest.display()), e))?;
    match super::check_wal_kept(&*seg_fs, dir, has_manifest) {
        Err(e) if copies.is_empty() && e.status == crate::status::KEEL_STATUS_CORRUPTION => return Ok(0),
        checked => checked?,
    }
    let persisted = super::manifest::Manifest::persisted_of(&*seg_fs, dir);
    let wal = super::open_wal(dir, opts, &fs, Some(host), true, persisted)?;
    let mut restored = 0;
    for c in copies {
        let last = wal.last_seq();
        let end = c.first + c.records.len() as u64 - 1;
        if end <= last {
            continue;
        }
        if c.first > last + 1 {
            return Err(Error::corruption(format!(
                "{}: the WAL ends at version {last} and the engine's commit log holds the frame of versions {}..={end} next: versions {}..{} are lost",
                dir.display(),
                c.first,
                last + 1,
                c.first
            )));
        }
        if c.first <= last {
            return Err(Error::corruption(format!(
                "{}: the WAL ends at version {last}, inside the frame of versions {}..={end} that the engine's commit log holds: the two disagree",
                dir.display(),
                c.first
            )));
        }
        let records: Vec<&[u8]> = c.records.iter().map(Vec::as_slice).collect();
        let first = wal.append_deferred(&records)?;
        debug_assert_eq!(first, c.first, "a restored frame keeps its versions");
        restored += 1;
    }
    if restored > 0 {
        wal.sync()?;
    }
    let empty = wal.last_seq() == 0;
    wal.close()?;
    if skip > 0 && (!empty || has_manifest) {
        // A clean close left an extent record ending where the log ends.
        let wal_dir = dir.join("wal");
        let mut e = match wal::extent::read(&*seg_fs, &wal_dir)? {
            wal::extent::MetaFile::Present(e) => e,
            _ => return Err(Error::corruption(format!("{}: no extent record after a clean close", wal_dir.display()))),
        };
        e.next_seq = e.next_seq.max(e.durable.saturating_add(1)).saturating_add(skip);
        wal::extent::write(&*seg_fs, &wal_dir, &e)?;
    }
    Ok(restored)
}
