//! The write-ahead log: segmented, checksummed, group-committed, readable
//! from any retained sequence number (contract: W1–W9 in docs/WAL.md;
//! format and modes: docs/WAL.md).
//!
//! Invariants (asserted in tests, relied on here):
//! - sequence numbers are dense: record `n + 1` is written right after `n`,
//!   possibly at the start of the next segment, whose name says so;
//! - `durable <= written`, both only grow, and D only ever covers a prefix:
//!   a sync syncs every sealed segment before the active one (SYNC mode
//!   syncs a full segment at rotation already);
//! - every frame carries the D of its writing time, so recovery can tell
//!   an unsynced tail (no later frame vouches for it) from lost durable data;
//! - a sequence number is assigned only after its frame is written, so a
//!   failed append never leaves a hole.

pub(crate) mod commit_log;
pub mod extent;
pub mod format;
mod pins;
mod reader;
mod recovery;
pub mod scan;
mod segment;
mod workers;

pub use pins::Pin;
pub use reader::{InPlace, Reader, RecordInPlace};
pub use recovery::RecoveryReport;
pub use segment::{file_name as segment_file_name, parse_name as parse_segment_name};
pub use workers::{Workers, ENGINE_WAL_WORKERS, WORKER_NAME};

use crate::error::{Error, Result};
use crate::fs::{File, FileSystem, Handles, StdFs};
use crate::futex::{yield_until, Sleepers, Slot};
use crate::status::*;
use format::PendingFrame;
use parking_lot::Mutex;
use segment::{Active, ReadSegment, SegmentMeta};
use std::any::Any;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use workers::Jobs;

/// When an append counts as done (W3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The append returns once its record is on stable storage.
    Sync,
    /// A background worker syncs at most this long after a write.
    Periodic(Duration),
    /// keel never syncs by itself.
    None,
}

/// What recovery does with damage (W5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMode {
    TolerateTail,
    Absolute,
    PointInTime,
    Salvage,
}

/// How far a reader reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadUpto {
    Durable,
    Appended,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub durability: Durability,
    pub recovery: RecoveryMode,
    /// Largest size of a segment file (64 KiB ..= 4 GiB). A log's first
    /// segment is 64 KiB and each rotation doubles the next one up to this
    /// (a record too large for the planned size gets a segment that fits it).
    pub segment_size: u64,
    /// Largest frame payload; 0 means min(16 MiB, segment_size - overhead).
    pub max_record_size: u64,
    /// Allocate the next segment on a background worker so that rotation
    /// does not stall appenders (costs one spare segment of disk, sized
    /// like the next segment); the worker also rewrites `wal.meta` after
    /// each rotation.
    pub prepare_ahead: bool,
    /// Open a non-empty directory that holds no keel WAL file (see
    /// `segment::check_wal_dir`); false refuses it with INVALID_ARGUMENT.
    pub allow_foreign_files: bool,
    /// For a log whose records are made durable elsewhere and given back
    /// after a power loss (an engine's shard, by the engine's commit log),
    /// which can only append them at its end: what a power loss leaves of
    /// the log must be a prefix of what was written, ending where the
    /// lost records begin. So a full segment is synced before the log
    /// moves on to the next (SYNC mode always does), and the extent record
    /// claims no sequence number past the records synced (otherwise
    /// recovery would declare the unsynced ones lost and go on after them).
    pub restorable_tail: bool,
    /// Bytes of frames the log may hold in memory, after the last frame in
    /// its file, before it writes them there with one write (0: every
    /// frame is written as it is appended). A frame held here is lost to a
    /// crash of the process, not only to a power loss, so only two kinds
    /// of log take it:
    /// - a `sync` log, which holds only what `append_deferred` logs (its
    ///   `append` writes and syncs at once): the caller waits for those
    ///   frames, and the sync writes what is held with one write, which on
    ///   `StdFs::synced()` is the sync (one device flush for all the
    ///   frames of a lead, not one per frame);
    /// - a `none` log with a restorable tail, whose records another log
    ///   makes durable.
    ///
    /// Syncs, rotations, readers and close write the held frames first, so
    /// every guarantee that starts from them holds.
    pub write_behind: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Sync,
            recovery: RecoveryMode::TolerateTail,
            segment_size: 64 << 20,
            max_record_size: 0,
            prepare_ahead: true,
            allow_foreign_files: false,
            restorable_tail: false,
            write_behind: 0,
        }
    }
}

impl Options {
    pub fn validate(&self) -> Result<()> {
        if !(segment::FIRST_SIZE..=format::MAX_SEGMENT_SIZE).contains(&self.segment_size) {
            return Err(Error::invalid(format!("segment_size {} is outside 64 KiB..=4 GiB", self.segment_size)));
        }
        if self.max_record_size > self.segment_size - format::OVERHEAD {
            return Err(Error::invalid(format!(
                "max_record_size {} does not fit a segment of {} bytes (at most segment_size - {})",
                self.max_record_size,
                self.segment_size,
                format::OVERHEAD
            )));
        }
        let holds = match self.durability {
            Durability::Sync => true,
            Durability::None => self.restorable_tail,
            Durability::Periodic(_) => false,
        };
        if self.write_behind > 0 && !holds {
            return Err(Error::invalid(
                "write_behind needs durability sync, or none and a restorable tail (another log holds the records)",
            ));
        }
        if let Durability::Periodic(d) = self.durability {
            if d.is_zero() {
                return Err(Error::invalid("periodic sync interval must be positive"));
            }
        }
        Ok(())
    }

    fn record_limit(&self) -> u64 {
        match self.max_record_size {
            0 => (16 << 20).min(self.segment_size - format::OVERHEAD),
            n => n,
        }
    }
}

struct State {
    next_seq: u64,
    /// None once closed.
    active: Option<Active>,
    /// Retained segments in order; the last one is the active one.
    segments: Vec<SegmentMeta>,
    poison: Option<Error>,
    acked: u64,
    keep_from: u64,
    /// Full segments not yet synced (NONE and PERIODIC modes), oldest first.
    sealed: Vec<Arc<dyn File>>,
    /// Reader id -> first sequence of the segment it reads (W6 pins).
    pins: BTreeMap<u64, u64>,
    next_pin: u64,
    /// Bumped for every snapshot of the extent record taken (see `Shared::write_extent`).
    extent_gen: u64,
    /// Size of the next segment (`segment::grown`); preparation makes the
    /// spare this size.
    planned: u64,
    /// Frames appended but held in memory (`Options::write_behind`): they
    /// end at the active segment's offset and start where its file ends.
    behind: Vec<u8>,
}

/// Group-commit bookkeeping, under `Shared::commit`.
struct Commit {
    /// A leader is writing and syncing; other appenders queue or wait.
    syncing: bool,
    /// Frames of SYNC-mode appends for the next leader to write, in order.
    queue: Vec<Queued>,
    /// Parked `wait_durable` callers, each woken once: when D covers its
    /// record, or to lead the next sync.
    waiters: Vec<Arc<Waiter>>,
}

/// A frame handed to the group-commit leader, and who waits for it.
struct Queued {
    frame: PendingFrame<'static>,
    waiter: Arc<Waiter>,
}

/// One parked appender.
struct Waiter {
    /// The record a `wait_durable` caller waits for (0 for a queued frame).
    seq: u64,
    /// Its thread's slot among the log's sleepers.
    slot: Slot,
    woken: AtomicBool,
    /// A queued frame's result, set by the leader that wrote and synced it
    /// (its first sequence number); None when woken to lead.
    outcome: Mutex<Option<Result<u64>>>,
}

impl Waiter {
    fn new(seq: u64) -> Arc<Waiter> {
        Arc::new(Waiter { seq, slot: Slot::current(), woken: AtomicBool::new(false), outcome: Mutex::new(None) })
    }

    /// Sleeps until woken, after yielding for a while (`futex::yield_until`);
    /// a sleep may end early (a wake-up for everyone, or for a slot-mate),
    /// the flag says whether it was for us.
    fn park(&self, sleepers: &Sleepers) {
        if yield_until(|| self.woken.load(Ordering::Acquire)) {
            return;
        }
        loop {
            let ticket = sleepers.ticket();
            if self.woken.load(Ordering::Acquire) {
                return;
            }
            sleepers.sleep(ticket);
        }
    }
}

pub(crate) struct Shared {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    opts: Options,
    state: Mutex<State>,
    /// D: every record <= durable is on stable storage.
    durable: AtomicU64,
    /// Last sequence number whose frame is written (to the file, or held
    /// by `State::behind`).
    written: AtomicU64,
    /// Last sequence number whose frame is in the file: `written` but for
    /// frames held by `State::behind`. Readers read up to it.
    filed: AtomicU64,
    /// Group commit: whether a leader is syncing, and who waits for it.
    commit: Mutex<Commit>,
    /// Where parked appenders and `wait_durable` callers sleep.
    sleepers: Sleepers,
    /// Appenders between entering `append` and having written or queued
    /// their frame; a new leader lets them finish so its sync covers them too.
    appending: AtomicUsize,
    /// Frames written or queued so far (the leader watches it grow).
    arrived: AtomicU64,
    poisoned: AtomicBool,
    closed: AtomicBool,
    truncate_lock: Mutex<()>,
    /// An allocated, synced file ready to become the next segment.
    spare: Mutex<Option<segment::Spare>>,
    /// A frame was written since open: only then does preparation fault
    /// a spare's pages in (an idle log holds no page cache for them).
    wrote: AtomicBool,
    /// The background workers serving this log (`workers.rs`).
    jobs: Arc<Jobs>,
    /// This log, for queueing itself with `jobs`.
    me: Weak<Shared>,
    /// A preparation is queued and not yet taken.
    prepare_queued: AtomicBool,
    /// A periodic sync is queued: a frame was written since the last one.
    sync_queued: AtomicBool,
    /// Held by the worker preparing a spare, and by close to wait for it.
    preparing: Mutex<()>,
    /// Held by the worker syncing periodically, and by close to wait for it.
    syncing: Mutex<()>,
    /// Spares made so far (each gets its own name, `segment::spare_name`).
    spares_made: AtomicU64,
    /// Unfinished files an earlier process left (`Recovered::strays`),
    /// until a worker or close removes them; held while removing them.
    strays: Mutex<Vec<PathBuf>>,
    /// Segments open for reading, one per segment shared by all readers.
    segment_handles: Handles<ReadSegment>,
    /// The newest extent snapshot written to `wal.meta`; held while writing.
    extent_written: Mutex<u64>,
    /// A rotation left its extent record to the preparer (`record_rotation`).
    extent_due: AtomicBool,
    /// Whether a retained segment follows a declared gap (readers skip it).
    has_gap: AtomicBool,
    /// What recovery repaired or gave up at open.
    report: Option<RecoveryReport>,
    /// The log was settled at open (`recovery::Recovered::settled`): its
    /// clean-close mark and extent record stand as long as no frame is
    /// written and no extent record rewritten.
    settled: bool,
}

/// A write-ahead log open on one directory. All methods take `&self` and
/// are safe to call from many threads.
pub struct Wal {
    shared: Arc<Shared>,
    /// The workers of a log opened alone; None when a host (an engine)
    /// serves it.
    own_workers: Option<Workers>,
    /// The directory's lock; None when a host (an engine) holds a lock
    /// covering it.
    _lock: Option<Box<dyn Any + Send + Sync>>,
}

/// The real file system in the write strategy that suits `durability`.
pub(crate) fn std_fs(durability: Durability) -> Arc<dyn FileSystem> {
    Arc::new(match durability {
        Durability::Sync => StdFs::synced(),
        Durability::Periodic(_) | Durability::None => StdFs::mapped(),
    })
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` on the real file system.
    pub fn open(dir: &Path, opts: Options) -> Result<Wal> {
        let fs = std_fs(opts.durability);
        Self::open_on(dir, opts, fs, None)
    }

    /// Opens the log through a given file system (tests inject faults here).
    pub fn open_with_fs(dir: &Path, opts: Options, fs: Arc<dyn FileSystem>) -> Result<Wal> {
        Self::open_on(dir, opts, fs, None)
    }

    /// Opens the log of an owner that has persisted its records up to
    /// `persisted` elsewhere (a shard, in its segments): the open reads the
    /// segments that hold only such records by their headers, not their
    /// frames (docs/WAL.md, "Recovery"), so a log retained for readers does
    /// not lengthen the owner's restart. Hosted by an engine when
    /// `workers` is given: its background work runs on them, it takes no
    /// lock of its own (the engine's lock covers its directory, and the
    /// engine opens a shard once), and it prepares no spare segment before
    /// its first write. Through `fs` if given, else the real file system.
    pub(crate) fn open_owned(
        dir: &Path,
        opts: Options,
        fs: Option<Arc<dyn FileSystem>>,
        workers: Option<&Workers>,
        persisted: u64,
    ) -> Result<Wal> {
        let fs = fs.unwrap_or_else(|| std_fs(opts.durability));
        Self::open_at(dir, opts, fs, workers, persisted)
    }

    fn open_on(dir: &Path, opts: Options, fs: Arc<dyn FileSystem>, host: Option<&Workers>) -> Result<Wal> {
        Self::open_at(dir, opts, fs, host, 0)
    }

    fn open_at(dir: &Path, opts: Options, fs: Arc<dyn FileSystem>, host: Option<&Workers>, persisted: u64) -> Result<Wal> {
        opts.validate()?;
        let names = match opts.allow_foreign_files {
            true => None,
            false => {
                let names = segment::list_dir(&*fs, dir)?;
                segment::check_wal_dir(dir, &names)?;
                Some(names)
            }
        };
        fs.create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let lock = match host {
            Some(_) => None,
            None => {
                let busy = |what: &Path| {
                    let what = what.to_path_buf();
                    move |e: std::io::Error| match e.kind() {
                        std::io::ErrorKind::WouldBlock => Error::new(KEEL_STATUS_BUSY, format!("{} is already open (LOCK held)", what.display())),
                        _ => Error::io(format!("locking {}", what.display()), e),
                    }
                };
                let own = fs.lock(&dir.join("LOCK")).map_err(busy(dir))?;
                // The WAL of an engine's shard (`<engine>/shards/<id>/wal`)
                // takes no LOCK of its own: the engine's covers it, so that
                // one is taken too, for as long as this log is open.
                // Resolved first (symlinks, a relative path): the folder is
                // the engine's however the caller spells it.
                let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
                let engine = real
                    .parent()
                    .and_then(Path::parent)
                    .filter(|p| p.file_name().is_some_and(|n| n == "shards"))
                    .and_then(Path::parent)
                    .filter(|e| fs.exists(&e.join("SHARDS")).unwrap_or(false));
                let engine_lock = match engine {
                    Some(e) => Some(fs.lock(&e.join("LOCK")).map_err(busy(e))?),
                    None => None,
                };
                Some(Box::new((own, engine_lock)) as Box<dyn Any + Send + Sync>)
            }
        };
        // A hosted log takes no LOCK (its engine holds one), so nothing
        // changed its directory since the check's listing, which recovery
        // reuses; a log that took the LOCK lists it again under it.
        let names = names.filter(|_| lock.is_none());
        let rec = recovery::recover(&*fs, dir, opts.recovery, persisted, names, opts.restorable_tail)?;
        let strays = rec.strays.clone();
        match Self::open_recovered(dir, opts, fs.clone(), host, rec) {
            Ok(mut wal) => {
                wal._lock = lock;
                Ok(wal)
            }
            Err(e) => {
                // As when recovery refuses the log (the LOCK still held): no
                // log will remove them later, and a stray spare may hold the
                // space a retry needs.
                recovery::remove_strays(&*fs, &strays);
                Err(e)
            }
        }
    }

    /// The rest of an open once recovery is done: the active segment, the
    /// log's state and its workers (the caller gives it its LOCK).
    fn open_recovered(dir: &Path, opts: Options, fs: Arc<dyn FileSystem>, host: Option<&Workers>, rec: recovery::Recovered) -> Result<Wal> {
        let mut segments = rec.segments;
        let active = match rec.active {
            Some(a) => a,
            None => {
                let fill = segment::Fill::for_durability(opts.durability);
                let a = segment::create(&*fs, dir, segment::Head::new(rec.next_seq, rec.prev), segment::FIRST_SIZE, fill, false)?;
                segments.push(SegmentMeta::new(dir, rec.next_seq, a.head.salt, rec.prev));
                a
            }
        };
        // The directory's own entry must be durable before records in it
        // are: before this open writes its extent record, which a settled
        // log's earlier open wrote after this same sync.
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty() && !rec.settled);
        if let Some(parent) = parent {
            fs.sync_dir(parent).map_err(|e| Error::io(format!("syncing {}", parent.display()), e))?;
        }
        let has_gap = segments.iter().any(|s| s.gap_from.is_some());
        let last = rec.next_seq - 1;
        // Alone, a worker per kind of background job the log has.
        let own_workers = match host {
            Some(_) => None,
            None => Some(Workers::new(opts.prepare_ahead as usize + matches!(opts.durability, Durability::Periodic(_)) as usize)?),
        };
        let jobs = host.or(own_workers.as_ref()).expect("hosted or alone").jobs().clone();
        let shared = Arc::new_cyclic(|me| Shared {
            dir: dir.to_path_buf(),
            fs,
            state: Mutex::new(State {
                next_seq: rec.next_seq,
                active: Some(active),
                segments,
                poison: None,
                acked: 0,
                keep_from: u64::MAX,
                sealed: Vec::new(),
                pins: BTreeMap::new(),
                next_pin: 0,
                extent_gen: 0,
                // Growth starts over at every open, whatever size the
                // recovered segment has: a log reopened idle stays small.
                planned: segment::grown(segment::FIRST_SIZE, segment::FIRST_SIZE, opts.segment_size),
                behind: Vec::new(),
            }),
            durable: AtomicU64::new(last),
            written: AtomicU64::new(last),
            filed: AtomicU64::new(last),
            commit: Mutex::new(Commit { syncing: false, queue: Vec::new(), waiters: Vec::new() }),
            sleepers: Sleepers::default(),
            appending: AtomicUsize::new(0),
            arrived: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            truncate_lock: Mutex::new(()),
            spare: Mutex::new(None),
            wrote: AtomicBool::new(false),
            jobs,
            me: me.clone(),
            prepare_queued: AtomicBool::new(false),
            sync_queued: AtomicBool::new(false),
            preparing: Mutex::new(()),
            syncing: Mutex::new(()),
            spares_made: AtomicU64::new(0),
            strays: Mutex::new(rec.strays),
            segment_handles: Handles::default(),
            opts,
            extent_written: Mutex::new(0),
            extent_due: AtomicBool::new(false),
            has_gap: AtomicBool::new(has_gap),
            report: rec.report,
            settled: rec.settled,
        });
        // The extent of the log as opened, before any record is appended;
        // a settled log's record says so already.
        if !rec.settled {
            shared.record_extent()?;
        }
        // A log alone prepares its first spare now. An engine's log waits
        // for its first write (`note_written`): an idle shard then holds
        // one segment file and no spare, and opening thousands of shards
        // queues no preparation, each with its fdatasync.
        if host.is_none() {
            shared.wake_preparer();
        }
        // A worker removes what an earlier process left. A log that
        // prepares nothing ahead does no file work in the background (a
        // seeded test's run is then a function of its seed): its open does.
        if !shared.strays.lock().is_empty() {
            match shared.opts.prepare_ahead && host.or(own_workers.as_ref()).is_some_and(|w| w.size() > 0) {
                true => shared.jobs.remove_strays(shared.me.clone()),
                false => shared.remove_strays(),
            }
        }
        Ok(Wal { shared, own_workers, _lock: None })
    }

    /// Appends one record; returns its sequence number.
    pub fn append(&self, payload: &[u8]) -> Result<u64> {
        self.shared.append(PendingFrame::record(payload))
    }

    /// Appends records as one all-or-nothing frame; returns the first sequence number.
    pub fn append_batch(&self, records: &[&[u8]]) -> Result<u64> {
        if records.is_empty() {
            return Err(Error::invalid("a batch needs at least one record"));
        }
        self.shared.append(PendingFrame::batch(records))
    }

    /// Appends one record (or, for several, one all-or-nothing batch)
    /// without waiting for durability, whatever the mode; returns the first
    /// sequence number. The caller waits with `wait_durable`. Shards use it
    /// to apply operations in sequence order under their own lock while the
    /// fdatasync is still group-committed outside it.
    pub fn append_deferred(&self, records: &[&[u8]]) -> Result<u64> {
        let frame = match records {
            [] => return Err(Error::invalid("a batch needs at least one record")),
            [one] => PendingFrame::record(one),
            many => PendingFrame::batch(many),
        };
        self.shared.append_frame(frame, false)
    }

    /// Waits until every record <= `seq` is on stable storage
    /// (group-committed with the other waiters). Records already durable
    /// return at once, even from a poisoned log. A `seq` past the last
    /// record appended is INVALID_ARGUMENT: no sync could cover it, and
    /// the caller would lead empty group commits forever.
    pub fn wait_durable(&self, seq: u64) -> Result<()> {
        let last = self.last_seq();
        if seq > last {
            return Err(Error::invalid(format!("cannot wait for record {seq}: the last record appended is {last}")));
        }
        self.shared.wait_durable(seq)
    }

    pub fn durability(&self) -> Durability {
        self.shared.opts.durability
    }

    /// Makes everything appended so far durable; returns the durable watermark.
    pub fn sync(&self) -> Result<u64> {
        self.shared.sync()
    }

    /// `sync`, then records the extent with the new durable watermark:
    /// for a log with a restorable tail, whose owner drops its copies of
    /// the records synced, so that a damage among them later still keeps
    /// their numbers from being reissued (the recorded D is a floor; the
    /// frames past a damage are not, `extent::next_floor`).
    pub fn sync_recorded(&self) -> Result<u64> {
        let durable = self.shared.sync()?;
        self.shared.record_extent()?;
        Ok(durable)
    }

    pub fn durable_seq(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Whether a failed write or sync poisoned the log.
    pub fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::Acquire)
    }

    pub fn last_seq(&self) -> u64 {
        self.shared.written.load(Ordering::Acquire)
    }

    pub fn first_seq(&self) -> u64 {
        let st = self.shared.state.lock();
        st.segments.first().map_or(st.next_seq, |s| s.first_seq)
    }

    /// The lowest gap (numbers recovery declared lost, which readers step
    /// over) holding numbers above `seq`: its first and last number above
    /// `seq`. None when every retained record after `seq` follows the one
    /// before it.
    pub(crate) fn gap_above(&self, seq: u64) -> Option<(u64, u64)> {
        if !self.shared.has_gap.load(Ordering::Acquire) {
            return None;
        }
        let st = self.shared.state.lock();
        st.segments
            .iter()
            .filter_map(|s| Some((s.gap_from?.max(seq.saturating_add(1)), s.first_seq - 1)))
            .find(|(from, to)| from <= to)
    }

    /// The segment files the log retains; an ack removes none while it
    /// is one (the active segment stays).
    pub fn segments(&self) -> usize {
        self.shared.state.lock().segments.len()
    }

    /// Declares records <= `seq` persisted elsewhere and deletes the
    /// segments that are no longer needed (W7).
    pub fn ack(&self, seq: u64) -> Result<()> {
        {
            let mut st = self.shared.state.lock();
            self.shared.check_usable(&st)?;
            if seq >= st.next_seq {
                return Err(Error::invalid(format!("ack {seq} is beyond the last sequence {}", st.next_seq - 1)));
            }
            st.acked = st.acked.max(seq);
        }
        self.shared.truncate()
    }

    /// Keeps every record >= `seq` (u64::MAX releases the hold).
    pub fn set_keep_from(&self, seq: u64) -> Result<()> {
        {
            let mut st = self.shared.state.lock();
            self.shared.check_usable(&st)?;
            let first = st.segments.first().map_or(st.next_seq, |s| s.first_seq);
            if seq != u64::MAX && seq < first {
                return Err(Error::new(
                    KEEL_STATUS_TRUNCATED,
                    format!("keep_from {seq} is below the first retained record {first}"),
                ));
            }
            st.keep_from = seq;
        }
        self.shared.truncate()
    }

    /// What recovery repaired or gave up when this handle opened the log
    /// (None when it found the log whole).
    pub fn recovery_report(&self) -> Option<&RecoveryReport> {
        self.shared.report.as_ref()
    }

    /// Opens a reader at `from` (0 = the first retained record). Frames
    /// held back by `Options::write_behind` are written first: the reader
    /// sees every record appended before the call.
    pub fn reader(&self, from: u64, upto: ReadUpto) -> Result<Reader> {
        self.shared.file_behind(&mut self.shared.state.lock())?;
        Reader::open(self.shared.clone(), from, upto)
    }

    /// `sync_recorded` before a close that may be retried, unless the log
    /// is untouched since its last close (which then writes nothing): an
    /// error here leaves the log open and usable.
    pub(crate) fn sync_for_close(&self) -> Result<()> {
        if self.shared.untouched() {
            return Ok(());
        }
        self.sync_recorded().map(drop)
    }

    /// Syncs, waits for its background jobs to end and releases the directory.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        // The clean-close mark is a write like any: without this it would
        // wake the preparer, and a worker could make a spare segment (an
        // allocation and syncs) for a log that is closing; taking the
        // "queued" flag makes `wake_preparer` queue nothing from here on.
        self.shared.prepare_queued.store(true, Ordering::Release);
        let result = match self.shared.untouched() {
            // Its last close's mark and record still describe it.
            true => Ok(()),
            false => self.shared.sync().and_then(|_| self.shared.mark_clean_close()).and_then(|_| self.shared.record_extent()),
        };
        self.shared.closed.store(true, Ordering::Release);
        // A job a worker took before `closed` finishes first; later ones
        // find the log closed and do nothing.
        drop(self.shared.preparing.lock());
        drop(self.shared.syncing.lock());
        if let Some(workers) = self.own_workers.take() {
            workers.shutdown();
        }
        if let Some(spare) = self.shared.spare.lock().take() {
            let _ = self.shared.fs.remove(&spare.path);
        }
        self.shared.remove_strays();
        // Unmaps the active segment; readers still holding `shared` see CLOSED.
        self.shared.state.lock().active = None;
        result
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

struct DecrementOnDrop<'a>(&'a AtomicUsize);

impl Drop for DecrementOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    /// Removes the files an earlier process left unfinished (a worker's
    /// job, or the open's or close's). One that cannot be removed is found
    /// again by the next open.
    fn remove_strays(&self) {
        let mut strays = self.strays.lock();
        recovery::remove_strays(&*self.fs, &strays);
        strays.clear();
    }

    /// Queues a preparation unless one is queued already (or the log
    /// prepares nothing ahead).
    fn wake_preparer(&self) {
        if self.opts.prepare_ahead && !self.prepare_queued.swap(true, Ordering::AcqRel) {
            self.jobs.prepare(self.me.clone());
        }
    }

    /// After every frame written: the first one since open tells the
    /// preparation that faulting the spare in now pays off, and in PERIODIC
    /// mode the first one since the last periodic sync queues the next.
    fn note_written(&self) {
        if !self.wrote.load(Ordering::Relaxed) && !self.wrote.swap(true, Ordering::AcqRel) {
            self.wake_preparer();
        }
        self.queue_periodic_sync();
    }

    /// In PERIODIC mode, queues a sync one interval from now unless one
    /// is queued already.
    fn queue_periodic_sync(&self) {
        if let Durability::Periodic(every) = self.opts.durability {
            if !self.sync_queued.load(Ordering::Relaxed) && !self.sync_queued.swap(true, Ordering::AcqRel) {
                self.jobs.sync_after(every, self.me.clone());
            }
        }
    }

    /// A periodic sync (a worker's job): D then covers every frame
    /// written before it. A failed sync poisons the log, which its
    /// appenders then see; a panic does too. One that leaves the log
    /// usable (RESOURCE: the descriptor cache could not reopen a segment)
    /// is queued again for the next interval: the log may never be
    /// written again, and its written frames are owed a sync all the same.
    fn periodic_sync(&self) {
        let _one = self.syncing.lock();
        // Cleared first: a frame written during this sync queues the next.
        self.sync_queued.store(false, Ordering::Release);
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.sync())) {
            Ok(Err(_)) if !self.poisoned.load(Ordering::Acquire) && !self.closed.load(Ordering::Acquire) => self.queue_periodic_sync(),
            Ok(_) => {}
            Err(_) => {
                let mut st = self.state.lock();
                self.poison(&mut st, Error::new(KEEL_STATUS_PANIC, "WAL periodic sync panicked"));
            }
        }
    }

    /// Writes the extent record the last rotation left (`record_rotation`),
    /// then keeps one allocated spare segment of the planned size ready
    /// (W8's slow half; a worker's job), so a rotation only writes a
    /// header, syncs and renames; a spare left smaller than the plan (a
    /// rotation fitted a large record instead) is replaced. Once the log
    /// has written, it also faults the spare's mapped pages in
    /// (`File::prefault`), so appenders do not meet the kernel zeroing
    /// fresh page-cache pages; a log that only sits open never pays that
    /// memory.
    fn prepare_spare(&self) {
        let _one = self.preparing.lock();
        // Cleared first: a rotation during this job queues the next.
        self.prepare_queued.store(false, Ordering::Release);
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        self.write_rotation_extent();
        let planned = self.state.lock().planned;
        let wrote = self.wrote.load(Ordering::Acquire);
        let current = self.spare.lock().as_ref().map(|s| (s.capacity, s.faulted, s.file.clone(), s.path.clone()));
        if let Some((_, faulted, file, path)) = current.filter(|c| c.0 >= planned) {
            if wrote && !faulted {
                file.prefault();
                if let Some(s) = self.spare.lock().as_mut().filter(|s| s.path == path) {
                    s.faulted = true;
                }
            }
            return;
        }
        // Each spare gets its own name: a rotation may still be renaming
        // the previous one when the next is created.
        let path = self.dir.join(segment::spare_name(self.spares_made.fetch_add(1, Ordering::Relaxed) + 1));
        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let file = segment::prepare(&*self.fs, &path, planned, self.fill())?;
            if wrote {
                file.prefault();
            }
            Ok::<_, std::io::Error>(file)
        }));
        match made {
            Ok(Ok(file)) => {
                let spare = segment::Spare { file, path, capacity: planned, faulted: wrote };
                // The one it replaces is ours alone: rotations take spares out of the slot.
                if let Some(old) = self.spare.lock().replace(spare) {
                    let _ = self.fs.remove(&old.path);
                }
            }
            // No spare (disk full, I/O error, panic): rotation falls
            // back to creating the segment itself and reports why.
            _ => {
                let _ = self.fs.remove(&path);
            }
        }
    }

    fn check_usable(&self, st: &State) -> Result<()> {
        if let Some(e) = &st.poison {
            return Err(Error::new(KEEL_STATUS_POISONED, format!("WAL is poisoned: {}", e.message)));
        }
        if st.active.is_none() {
            return Err(Error::new(KEEL_STATUS_CLOSED, "WAL is closed"));
        }
        Ok(())
    }

    /// W9: after a failed write or sync the durable watermark freezes and
    /// every later append fails; returns `e` for the caller that hit it,
    /// as IO when its OS error would have made it NO_SPACE or RESOURCE:
    /// those promise a usable log and a retry that can succeed, and a
    /// poisoned log keeps neither (an fdatasync failing with ENOSPC may
    /// have dropped the pages it could not write back).
    fn poison(&self, st: &mut State, e: Error) -> Error {
        let e = match e.status {
            KEEL_STATUS_NO_SPACE | KEEL_STATUS_RESOURCE => Error::new(KEEL_STATUS_IO, e.message),
            _ => e,
        };
        if st.poison.is_none() {
            st.poison = Some(e.clone());
        }
        self.poisoned.store(true, Ordering::Release);
        e
    }

    /// `e`, from a write or an fdatasync of a segment, as its caller's
    /// error: the log is poisoned (W9) unless the call never reached the
    /// file, because the engine's descriptor cache had closed it and could
    /// not open it again for lack of descriptors or memory (RESOURCE,
    /// `fs::reopen_failure`). Then nothing was written and no fdatasync
    /// ran, let alone failed: the call fails alone and the next one tries
    /// again. ENOMEM or EAGAIN from the write or the fdatasync itself is
    /// RESOURCE too, yet poisons: a failed fdatasync may have dropped the
    /// pages it could not write back, so a later one that succeeds proves
    /// nothing, and a failed write may have put part of its bytes in the
    /// file, past which a shorter frame would leave them.
    fn segment_failed(&self, st: &mut State, context: &str, e: std::io::Error) -> Error {
        let unreached = crate::fs::reopen_failure(&e).is_some();
        let e = Error::io(context, e);
        match unreached && e.status == KEEL_STATUS_RESOURCE {
            true => e,
            false => self.poison(st, e),
        }
    }

    /// An append that returns once durable in SYNC mode: the frame joins
    /// the queue and the group-commit leader writes the whole queue with
    /// one write and syncs it (see `lead`). In the other modes it is
    /// written at once and the call returns.
    fn append(&self, frame: PendingFrame) -> Result<u64> {
        if self.opts.durability != Durability::Sync {
            return self.append_frame(frame, false);
        }
        self.check_size(&frame)?;
        let w = Waiter::new(0);
        let mut lead = {
            self.appending.fetch_add(1, Ordering::AcqRel);
            let _queued = DecrementOnDrop(&self.appending);
            let mut c = self.commit.lock();
            c.queue.push(Queued { frame: frame.into_owned(), waiter: w.clone() });
            self.arrived.fetch_add(1, Ordering::AcqRel);
            !std::mem::replace(&mut c.syncing, true)
        };
        loop {
            if lead {
                // Its own outcome is among those it sets; an error it
                // returns is that outcome too.
                let _ = self.lead();
            } else {
                w.park(&self.sleepers);
            }
            if let Some(outcome) = w.outcome.lock().take() {
                return outcome;
            }
            // Woken to lead the next group while its frame was queued. A
            // leader sets outcomes before it takes the commit lock to hand
            // over, so a look under the lock cannot miss one.
            let mut c = self.commit.lock();
            if let Some(outcome) = w.outcome.lock().take() {
                return outcome;
            }
            lead = !std::mem::replace(&mut c.syncing, true);
            if !lead {
                // Another appender leads now and will take the frame.
                w.woken.store(false, Ordering::Release);
            }
        }
    }

    /// How this log's new segments are allocated.
    fn fill(&self) -> segment::Fill {
        segment::Fill::for_durability(self.opts.durability)
    }

    fn check_size(&self, frame: &PendingFrame) -> Result<()> {
        let limit = self.opts.record_limit();
        if frame.payload.len() as u64 > limit {
            return Err(Error::invalid(format!(
                "record of {} bytes exceeds max_record_size {limit}",
                frame.payload.len()
            )));
        }
        Ok(())
    }

    fn append_frame(&self, frame: PendingFrame, wait: bool) -> Result<u64> {
        self.check_size(&frame)?;
        let last = {
            self.appending.fetch_add(1, Ordering::AcqRel);
            let _written = DecrementOnDrop(&self.appending);
            let mut st = self.state.lock();
            self.check_usable(&st)?;
            let last = self.write_frame(&mut st, &frame)?;
            self.arrived.fetch_add(1, Ordering::AcqRel);
            last
        };
        if wait {
            self.wait_durable(last)?;
        }
        Ok(last + 1 - frame.count as u64)
    }

    /// Writes one frame at the end of the log (rotating first if it does
    /// not fit); returns its last sequence number.
    fn write_frame(&self, st: &mut State, frame: &PendingFrame) -> Result<u64> {
        // Its callers checked the log before, but a group's frames are
        // written one after another and an earlier one may have failed.
        self.check_usable(st)?;
        // Only a transferred shard's history (a peer's snapshot version)
        // comes near the end of the numbers: refused before anything is
        // written, as a full disk is, rather than wrapped.
        if st.next_seq.checked_add(frame.count as u64).is_none() {
            return Err(Error::new(
                KEEL_STATUS_INVALID_ARGUMENT,
                format!("the log's sequence numbers are exhausted: {} records do not fit after {}", frame.count, st.next_seq - 1),
            ));
        }
        let size = frame.size();
        let a = st.active.as_ref().unwrap();
        if a.offset + size > a.capacity {
            self.rotate(st, size)?;
        }
        let seq = st.next_seq;
        let a = st.active.as_mut().unwrap();
        debug_assert!(a.offset + size <= a.capacity, "a rotation makes room for the frame");
        let header = frame.header(a.head.salt, seq, self.durable.load(Ordering::Acquire));
        let parts = [&header[..], &frame.payload, frame.padding()];
        let held = !st.behind.is_empty() || (size as usize) < self.opts.write_behind;
        if held {
            st.behind.reserve(size as usize);
            for p in parts {
                st.behind.extend_from_slice(p);
            }
        } else if let Err(e) = a.file.append_at(&parts, a.offset) {
            // Disk full fails this append only: the offset and the
            // sequence number are not consumed, so the log stays whole.
            if crate::error::status_of(&e) == KEEL_STATUS_NO_SPACE {
                Self::clear_failed_write(&*a.file, a.offset, size);
                return Err(Error::io("writing a WAL frame", e));
            }
            return Err(self.segment_failed(st, "writing a WAL frame", e));
        }
        let a = st.active.as_mut().unwrap();
        a.offset += size;
        st.next_seq += frame.count as u64;
        let last = st.next_seq - 1;
        self.written.store(last, Ordering::Release);
        if !held {
            self.filed.store(last, Ordering::Release);
        } else if st.behind.len() >= self.opts.write_behind {
            match self.file_behind(st) {
                // The segment could not be reopened (`segment_failed`):
                // this append's frame stays held with the others and goes
                // out at the next filing (every later append or sync tries
                // again; the active segment bounds it).
                Err(e) if e.status == KEEL_STATUS_RESOURCE => {}
                other => other?,
            }
        }
        self.note_written();
        Ok(last)
    }

    /// A write that met a full disk may have put part of its bytes in the
    /// file (a write(2) returns short, the next one fails). The frames
    /// that follow go to the same offset and may be shorter, so the rest
    /// gets its zeros back: past the end of the log a segment holds zeros
    /// (recovery takes anything else for a torn tail, and ABSOLUTE refuses
    /// it in a cleanly closed log). Best effort: the segment's blocks are
    /// allocated, so zeros over them need no room.
    fn clear_failed_write(file: &dyn File, at: u64, len: u64) {
        let _ = segment::zero(file, at, at + len);
    }

    /// Writes the frames held by `State::behind` to the file, with one
    /// write. They have their sequence numbers and the shard applied them,
    /// so a failure (even a full disk, which the preallocated segment
    /// should rule out) poisons the log: its appenders get the error and
    /// the records come back from the log that holds them durably. Except
    /// when the write never reached the file (`segment_failed`): the
    /// frames stay held for the next try, and the log stays usable.
    fn file_behind(&self, st: &mut State) -> Result<()> {
        if st.behind.is_empty() {
            return Ok(());
        }
        // Poisoned (or closed after a failed close): they stay unwritten.
        self.check_usable(st)?;
        let a = st.active.as_ref().unwrap();
        debug_assert!(a.offset >= format::SEGMENT_HEADER_LEN + st.behind.len() as u64, "held frames are inside the active segment");
        let at = a.offset - st.behind.len() as u64;
        if let Err(e) = a.file.append_at(&[&st.behind], at) {
            return Err(self.segment_failed(st, "writing held WAL frames", e));
        }
        st.behind.clear();
        self.filed.store(st.next_seq - 1, Ordering::Release);
        Ok(())
    }

    /// Writes a leader's group in order and returns each frame's first
    /// sequence number or error. Frames that fit the active segment go out
    /// in one write; a frame that needs a rotation, and every frame of a
    /// combined write that met a full disk, is written alone, so each
    /// append gets the outcome it would have had on its own (a full disk
    /// fails only the appends it hits, and consumes nothing).
    fn write_group(&self, group: &[Queued]) -> Vec<Result<u64>> {
        // A wait or a sync leads with no group: the sync writes what is held.
        if group.is_empty() {
            return Vec::new();
        }
        let mut st = self.state.lock();
        // Frames held by `append_deferred` (a log that mixes the two kinds
        // of append) are in the file before the group.
        if let Err(e) = self.check_usable(&st).and_then(|()| self.file_behind(&mut st)) {
            return group.iter().map(|_| Err(e.clone())).collect();
        }
        let mut out: Vec<Result<u64>> = Vec::with_capacity(group.len());
        let mut buf = Vec::new();
        let mut i = 0;
        while i < group.len() {
            // A frame written alone below (a rotation, or the retry of a
            // write that found the disk full) may have poisoned the log:
            // nothing more goes to a device that failed (W9).
            if let Err(e) = self.check_usable(&st) {
                out.extend(group[i..].iter().map(|_| Err(e.clone())));
                return out;
            }
            // Collect the frames that fit the active segment.
            let (start, salt, at, capacity) = {
                let a = st.active.as_ref().unwrap();
                (i, a.head.salt, a.offset, a.capacity)
            };
            let durable = self.durable.load(Ordering::Acquire);
            let mut seq = st.next_seq;
            buf.clear();
            while i < group.len() && at + buf.len() as u64 + group[i].frame.size() <= capacity {
                let f = &group[i].frame;
                // A frame whose numbers would pass u64::MAX - 1 is left
                // to `write_frame`, which refuses it before writing.
                let Some(after) = seq.checked_add(f.count as u64) else { break };
                buf.extend_from_slice(&f.header(salt, seq, durable));
                buf.extend_from_slice(&f.payload);
                buf.extend_from_slice(f.padding());
                seq = after;
                i += 1;
            }
            if i == start {
                // It needs a rotation (or is refused): written alone.
                out.push(self.write_frame(&mut st, &group[i].frame).map(|last| last + 1 - group[i].frame.count as u64));
                i += 1;
                continue;
            }
            let written = st.active.as_ref().unwrap().file.append_at(&[&buf], at);
            match written {
                Ok(()) => {
                    let mut first = st.next_seq;
                    for q in &group[start..i] {
                        out.push(Ok(first));
                        first += q.frame.count as u64;
                    }
                    st.active.as_mut().unwrap().offset += buf.len() as u64;
                    st.next_seq = seq;
                    self.written.store(seq - 1, Ordering::Release);
                    self.filed.store(seq - 1, Ordering::Release);
                    self.note_written();
                }
                Err(e) => {
                    let e = Error::io("writing WAL frames", e);
                    if e.status == KEEL_STATUS_NO_SPACE {
                        Self::clear_failed_write(&*st.active.as_ref().unwrap().file, at, buf.len() as u64);
                        for q in &group[start..i] {
                            out.push(self.write_frame(&mut st, &q.frame).map(|last| last + 1 - q.frame.count as u64));
                        }
                    } else {
                        let e = self.poison(&mut st, e);
                        out.extend(group[start..].iter().map(|_| Err(e.clone())));
                        return out;
                    }
                }
            }
        }
        out
    }

    /// Seals the active segment and starts the next one, large enough for
    /// a frame of `frame` bytes (`segment::size_for`). In SYNC mode the
    /// full segment is synced here (little is unsynced: every append syncs);
    /// in the other modes it waits for the next sync, which syncs sealed
    /// segments before the active one, so D still only covers a prefix.
    /// The new segment is allocated whole before a byte of the frame is
    /// written, so running out of disk or descriptors fails the append
    /// cleanly whatever its size.
    ///
    /// A segment is named for its first record, so one that holds no
    /// record yet (a new log's first segment, a segment of MARK frames
    /// only, or one whose first frame failed) cannot be followed by
    /// another: the next would take its name. It is replaced instead by a
    /// larger file with the same header (first sequence, salt, link), so
    /// `wal.meta` and the segment list stay as they are and a crash at any
    /// point leaves one valid empty segment of that name.
    fn rotate(&self, st: &mut State, frame: u64) -> Result<()> {
        self.file_behind(st)?;
        let active = st.active.as_ref().unwrap();
        let replacing = active.head.first_seq == st.next_seq;
        let full = active.file.clone();
        let head = match replacing {
            true => active.head,
            false => segment::Head::new(st.next_seq, Some(Self::link_to_active(st))),
        };
        let sync_full = self.opts.durability == Durability::Sync || self.opts.restorable_tail;
        if sync_full && !replacing {
            if let Err(e) = full.sync_data() {
                return Err(self.segment_failed(st, "syncing a full WAL segment", e));
            }
            self.durable.fetch_max(st.next_seq - 1, Ordering::AcqRel);
        }
        let max = self.opts.segment_size;
        let made = {
            let mut spare = self.spare.lock();
            match spare.take() {
                Some(s) if s.serves(st.planned, frame, max) => segment::install(&*self.fs, &self.dir, s.file, &s.path, head, s.capacity, replacing),
                // Smaller than the plan or this frame: kept in the slot,
                // where the preparer replaces it with one of the plan.
                kept => {
                    *spare = kept;
                    let started = Instant::now();
                    let made = segment::create(&*self.fs, &self.dir, head, segment::size_for(st.planned, frame, max), self.fill(), replacing);
                    if self.opts.prepare_ahead {
                        // The workers had no fitting spare ready: this appender waited for one.
                        self.jobs.note_stall(started.elapsed());
                    }
                    made
                }
            }
        };
        if let Ok(next) = &made {
            st.planned = segment::grown(st.planned, next.capacity, max);
        }
        self.wake_preparer();
        match made {
            // Same identity: the segment list and wal.meta already say it.
            Ok(next) if replacing => {
                // A new file: the frames the open's scan verified in the
                // old one (MARK frames) are gone, and the ones written
                // here from the header on are for readers to verify.
                st.segments.last_mut().expect("the active segment is listed").checked_end = 0;
                st.active = Some(next);
                Ok(())
            }
            Ok(next) => {
                if !sync_full {
                    st.sealed.push(full);
                }
                st.segments.push(SegmentMeta::new(&self.dir, head.first_seq, head.salt, head.prev));
                st.active = Some(next);
                self.record_rotation(st);
                Ok(())
            }
            // Out of disk, descriptors or memory before the new segment
            // took a byte of a frame: this append fails, the log is as it
            // was and the next append tries the rotation again. (Even an
            // fdatasync of the new file that failed so: what it may have
            // dropped was that file's, and the file is gone.)
            Err(e) if matches!(e.status, KEEL_STATUS_NO_SPACE | KEEL_STATUS_RESOURCE) => Err(e),
            Err(e) => Err(self.poison(st, e)),
        }
    }

    /// Group commit: when no sync is running, the caller becomes the leader
    /// and syncs for every record written so far; callers that arrive
    /// meanwhile park. When the sync ends the leader wakes exactly the
    /// waiters it covered, plus the first one it did not (which leads the
    /// next sync); the rest stay parked. Waking only those whose call can
    /// return matters on few CPUs: every needless wake-up is two context
    /// switches taken from the appenders the next sync should cover.
    fn wait_durable(&self, seq: u64) -> Result<()> {
        loop {
            let waiter = {
                let mut commit = self.commit.lock();
                if self.durable.load(Ordering::Acquire) >= seq {
                    return Ok(());
                }
                if self.poisoned.load(Ordering::Acquire) {
                    drop(commit);
                    self.check_usable(&self.state.lock())?;
                    unreachable!("poisoned flag set without a poison error");
                }
                if commit.syncing {
                    let w = Waiter::new(seq);
                    commit.waiters.push(w.clone());
                    Some(w)
                } else {
                    commit.syncing = true;
                    None
                }
            };
            match waiter {
                Some(w) => w.park(&self.sleepers),
                None => self.lead()?,
            }
        }
    }

    /// One group commit as its leader: write the queued frames, sync, then
    /// hand over (see wait_durable).
    fn lead(&self) -> Result<()> {
        self.let_appenders_finish();
        let group = std::mem::take(&mut self.commit.lock().queue);
        // A panic in the write or the sync must still hand over below:
        // parked appenders would otherwise wait forever for a leader that
        // is gone.
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.write_group(&group))).unwrap_or_else(|_| {
            let mut st = self.state.lock();
            let e = self.poison(&mut st, Error::new(KEEL_STATUS_PANIC, "writing the WAL's frames panicked"));
            vec![Err(e); group.len()]
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.sync_once())).unwrap_or_else(|_| {
            let mut st = self.state.lock();
            Err(self.poison(&mut st, Error::new(KEEL_STATUS_PANIC, "WAL sync panicked")))
        });
        for (q, w) in group.iter().zip(written) {
            // A frame is done when it is written and the sync covered it.
            let outcome = w.and_then(|first| result.clone().map(|()| first));
            *q.waiter.outcome.lock() = Some(outcome);
        }
        let wake: Vec<Arc<Waiter>> = {
            let mut commit = self.commit.lock();
            commit.syncing = false;
            let mut wake: Vec<Arc<Waiter>> = group.iter().map(|q| q.waiter.clone()).collect();
            if result.is_err() {
                // Poisoned: every waiter returns the error; queued frames
                // fail when their appender leads (it finds the log poisoned).
                wake.append(&mut commit.waiters);
                wake.extend(commit.queue.first().map(|q| q.waiter.clone()));
            } else {
                let durable = self.durable.load(Ordering::Acquire);
                // The next leader: the oldest queued frame's appender, else
                // the first waiter this sync did not cover.
                let mut next_leader = commit.queue.first().map(|q| q.waiter.clone());
                commit.waiters.retain(|w| {
                    if w.seq <= durable {
                        wake.push(w.clone());
                        false
                    } else if next_leader.is_none() {
                        next_leader = Some(w.clone());
                        false
                    } else {
                        true
                    }
                });
                // The next leader first: its sync starts while the others
                // are still being woken.
                if let Some(l) = next_leader {
                    wake.insert(0, l);
                }
            }
            wake
        };
        for w in &wake {
            w.woken.store(true, Ordering::Release);
        }
        // The next leader first, on its own; see `futex::CROWD`.
        if let Some((first, rest)) = wake.split_first() {
            self.sleepers.wake_slot(first.slot);
            self.sleepers.wake_group(rest.iter().map(|w| w.slot));
        }
        result
    }

    /// Appenders already on their way (often those the previous sync just
    /// released) get to write their frames before the leader picks its
    /// target, so its sync covers them too: yield while frames keep
    /// arriving. Bounded: a stream of new appenders cannot hold durability
    /// back, and a lone appender yields once.
    fn let_appenders_finish(&self) {
        let mut seen = self.arrived.load(Ordering::Acquire);
        for _ in 0..64 {
            std::thread::yield_now();
            let now = self.arrived.load(Ordering::Acquire);
            if now == seen && self.appending.load(Ordering::Acquire) == 0 {
                break;
            }
            seen = now;
        }
    }

    /// Syncs sealed segments, then the active one, and publishes D. Only
    /// the group-commit leader calls it.
    fn sync_once(&self) -> Result<()> {
        let (sealed, file, target) = {
            let mut st = self.state.lock();
            self.check_usable(&st)?;
            self.file_behind(&mut st)?;
            // Its room goes too: a log that was written and then idles
            // keeps no buffer past its next sync (a checkpoint or a flush).
            st.behind = Vec::new();
            (st.sealed.clone(), st.active.as_ref().unwrap().file.clone(), st.next_seq - 1)
        };
        if target <= self.durable.load(Ordering::Acquire) {
            return Ok(());
        }
        for f in sealed.iter().chain(std::iter::once(&file)) {
            if let Err(e) = f.sync_data() {
                // D stays; unless this poisons the log, the next sync tries again.
                let mut st = self.state.lock();
                return Err(self.segment_failed(&mut st, "fdatasync of the WAL", e));
            }
        }
        if !sealed.is_empty() {
            self.state.lock().sealed.drain(..sealed.len());
        }
        self.durable.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    /// Settled at open and unchanged since: no frame written, no extent
    /// record rewritten (a truncation), no failure.
    fn untouched(&self) -> bool {
        self.settled && !self.wrote.load(Ordering::Acquire) && !self.poisoned.load(Ordering::Acquire) && *self.extent_written.lock() == 0
    }

    /// Writes a MARK frame carrying D (= everything) and syncs it, so that
    /// recovery can prove any later damage hit durable data.
    fn mark_clean_close(&self) -> Result<()> {
        self.append(PendingFrame::mark())?;
        let file = {
            let mut st = self.state.lock();
            self.check_usable(&st)?;
            self.file_behind(&mut st)?;
            st.active.as_ref().unwrap().file.clone()
        };
        file.sync_data().map_err(|e| {
            let mut st = self.state.lock();
            self.poison(&mut st, Error::io("fdatasync of the WAL at close", e))
        })
    }

    fn sync(&self) -> Result<u64> {
        let target = self.written.load(Ordering::Acquire);
        if self.poisoned.load(Ordering::Acquire) {
            self.check_usable(&self.state.lock())?;
        }
        self.wait_durable(target)?;
        Ok(self.durable.load(Ordering::Acquire))
    }

    /// The extent record's view of the log now (under the state lock), with
    /// its generation.
    fn extent_snapshot(&self, st: &mut State) -> (u64, extent::Extent) {
        st.extent_gen += 1;
        let durable = self.durable.load(Ordering::Acquire);
        let extent = extent::Extent {
            durable,
            next_seq: match self.opts.restorable_tail {
                true => st.next_seq.min(durable + 1),
                false => st.next_seq,
            },
            segments: st.segments.iter().map(|s| (s.first_seq, s.salt)).collect(),
        };
        (st.extent_gen, extent)
    }

    /// Writes a snapshot to `wal.meta` unless a newer one is written
    /// already (truncation writes its snapshot after releasing the state
    /// lock, so a rotation's newer one may overtake it).
    fn write_extent(&self, (gen, extent): (u64, extent::Extent)) -> Result<()> {
        let mut written = self.extent_written.lock();
        if *written >= gen {
            return Ok(());
        }
        extent::write(&*self.fs, &self.dir, &extent)?;
        *written = gen;
        Ok(())
    }

    /// Records the current extent (at open, at close, and for the preparer
    /// after a rotation).
    fn record_extent(&self) -> Result<()> {
        let snapshot = self.extent_snapshot(&mut self.state.lock());
        self.write_extent(snapshot)
    }

    /// Records the extent after a rotation, under the state lock. A record
    /// behind the rotations is what a crash right after one leaves too:
    /// recovery accepts segments after the listed ones when their headers
    /// link to them. So the record is not the append's business: a log
    /// that prepares ahead leaves it to the preparer, which the rotation
    /// has queued (its fdatasync, rename and directory sync were two of the
    /// five device flushes an appender waited for at each rotation, under
    /// the state lock), and a failure fails no append. The next rotation,
    /// truncation or close writes it again (close reports a failure).
    fn record_rotation(&self, st: &mut State) {
        match self.opts.prepare_ahead {
            true => {
                self.extent_due.store(true, Ordering::Release);
                self.wake_preparer();
            }
            false => {
                let snapshot = self.extent_snapshot(st);
                let _ = self.write_extent(snapshot);
            }
        }
    }

    /// Writes the record a rotation left to the preparer, if one is due:
    /// the extent as it is now, which covers that rotation and any since.
    /// Like an error, a panic is left for the next record to mend: the
    /// worker goes on serving the engine's other logs.
    fn write_rotation_extent(&self) {
        if self.extent_due.swap(false, Ordering::AcqRel) {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.record_extent()));
        }
    }

    /// The link a new segment's header carries to the active one.
    fn link_to_active(st: &State) -> format::Link {
        let a = st.active.as_ref().expect("rotation needs an active segment");
        format::Link { first_seq: a.head.first_seq, salt: a.head.salt, end: st.next_seq }
    }

    /// `seq`, or the first sequence after the declared gap it falls in:
    /// readers step over numbers recovery declared lost.
    pub(crate) fn skip_gap(&self, seq: u64) -> u64 {
        if !self.has_gap.load(Ordering::Acquire) {
            return seq;
        }
        let st = self.state.lock();
        // Gaps may follow each other (a segment between them that lost all
        // its records), so the first number after one may start the next.
        let mut seq = seq;
        while let Some(s) = st.segments.iter().find(|s| s.gap_from.is_some_and(|g| g <= seq) && seq < s.first_seq) {
            seq = s.first_seq;
        }
        seq
    }

    /// Deletes the prefix of whole segments that nobody needs (W7):
    /// all records <= min(acked, keep_from - 1, pins - 1), never the active one.
    fn truncate(&self) -> Result<()> {
        let _one_at_a_time = self.truncate_lock.lock();
        let (victims, extent) = {
            let mut st = self.state.lock();
            let pinned = st.pins.values().min().map_or(u64::MAX, |p| p - 1);
            let floor = st.acked.min(st.keep_from.saturating_sub(1)).min(pinned);
            let mut n = 0;
            while n + 1 < st.segments.len() && st.segments[n + 1].first_seq - 1 <= floor {
                n += 1;
            }
            let victims: Vec<SegmentMeta> = st.segments.drain(..n).collect();
            if victims.is_empty() {
                return Ok(());
            }
            (victims, self.extent_snapshot(&mut st))
        };
        // The record stops listing them before they go: a listed segment
        // that is missing is lost data to recovery. If it cannot be
        // written, they stay (listed, retained) and a later ack retries.
        if let Err(e) = self.write_extent(extent) {
            self.state.lock().segments.splice(0..0, victims);
            return Err(e);
        }
        // Oldest first, stopping at the first that cannot go: what is left
        // then still chains to the first listed segment, which recovery
        // keeps (a hole in the middle would be lost data to it). The
        // segments left go back to the list, for a later ack to retry.
        let mut first_error = None;
        let mut removed = 0;
        for v in &victims {
            if let Err(e) = self.fs.remove(&v.path) {
                first_error = Some(Error::io(format!("removing {}", v.path.display()), e));
                break;
            }
            removed += 1;
        }
        if removed < victims.len() {
            self.state.lock().segments.splice(0..0, victims.into_iter().skip(removed));
        }
        if let Err(e) = self.fs.sync_dir(&self.dir) {
            first_error.get_or_insert(Error::io(format!("syncing {}", self.dir.display()), e));
        }
        first_error.map_or(Ok(()), Err)
    }
}
