//! Shards: keys → values and posting lists on top of the WAL, persisted
//! by the ordered flush, which runs as jobs of a flush pool (one per
//! engine; a shard opened alone has its own). docs/STORAGE.md explains
//! the segment formats, the flush order and recovery.
//!
//! A write passes the shard's write gate (gate.rs): queued writes are
//! logged as one WAL frame and applied to the segments in version order
//! under one hold of the segments' write lock (a reader never sees half a
//! batch); in `sync` durability the group's leader then waits for the
//! group-committed fdatasync outside both locks, for its whole group,
//! while the writers that came meanwhile queue for the next group.

mod appendable;
mod arena;
pub(crate) mod backlog;
mod bloom;
mod commit;
mod entry;
pub(crate) mod files;
mod manifest;
mod merging;
mod flush;
mod gate;
mod key;
mod op;
mod prefetch;
pub(crate) mod pool;
mod reads;
mod recovery;
mod replicated;
mod sealed;
mod segments;
mod staged;
mod steps;
mod table;
mod transfer;

pub use entry::{decode_list, encode_list, split_item, Entry, EntryRef, Kind, Value};
pub use op::{check_key, Op, MAX_KEY_SIZE, MAX_LIST_SIZE, MAX_VALUE_SIZE};
pub use pool::MAX_FLUSH_THREADS;
pub use reads::Consensus;
pub use recovery::RecoveryReport;
pub use replicated::Fence;
pub(crate) use replicated::Replicated;
pub use steps::{Step, StepHook, Steps};
pub use transfer::Snapshot;
pub(crate) use transfer::remove_moved;
pub(crate) use commit::restore_wal;

use crate::error::{Error, Result};
use crate::status::*;
use crate::fs::{FileSystem, StdFs};
use crate::wal::{self, Durability, Wal};
use pool::{FlushPool, Membership, Request};
use parking_lot::{Mutex, RwLock};
use gate::{Batch, Gate, Intent, Written};
use op::OpRef;
use replicated::{StateChange, Tracker};
use segments::{Overlay, Segments};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Options {
    /// When a write returns (the shard's WAL durability mode).
    pub durability: Durability,
    /// Largest WAL segment (`wal::Options::segment_size`).
    pub wal_segment_size: u64,
    /// Background flush period; None flushes only when asked, when
    /// sealing and on close.
    pub flush_interval: Option<Duration>,
    /// The appendable segment is sealed into a table past this many bytes.
    pub seal_bytes: usize,
    /// More immutable segments than this are merged (smallest first).
    pub max_sealed: usize,
    /// Test-only (cargo feature `unordered-flush`): replaces the ordered
    /// flush with one that flushes the segments in a seeded random order,
    /// each up to the last applied version (what F1–F3 exist to prevent).
    #[cfg(feature = "unordered-flush")]
    #[doc(hidden)]
    pub unordered_flush_seed: Option<u64>,
    /// Bytes of WAL records replayed per sorted run at open (see
    /// `recovery::replay_wal`); tests make it tiny so that replays cross
    /// many run boundaries.
    #[doc(hidden)]
    pub replay_run_bytes: usize,
    /// Test-only: the encoded size past which an append to a posting list
    /// is refused, `MAX_LIST_SIZE` (the default) at most, so that tests
    /// reach it without gigabytes of appends. Replay holds lists to
    /// `MAX_LIST_SIZE` whatever it is: a list up to that is a valid one.
    #[doc(hidden)]
    pub max_list_size: usize,
    /// Salvage open: missing or damaged segment files and a WAL that no
    /// longer reaches the segments are reported (`Shard::recovery_report`)
    /// instead of failing the open with CORRUPTION; the shard opens with
    /// what is left, and its first flush makes that the new state. Never
    /// the default.
    pub salvage: bool,
    /// Worker threads of an engine's flush pool, which runs the flush,
    /// seals and merges of all its shards (1..=256; default twice the
    /// cores, 2 to 8). A shard opened alone (`Shard::open`) flushes on one
    /// thread of its own.
    pub flush_threads: usize,
    /// Test-only: a hook at every step of the background work
    /// (`steps.rs`): deterministic schedules, crashes at step k.
    #[doc(hidden)]
    pub steps: Steps,
    /// Most bytes of logged operations the shard holds that no segment
    /// file holds yet: what a reopen replays (`backlog.rs`). Past half of
    /// it the flush is asked for; a write that would cross it waits for
    /// the flush, up to `write_stall_timeout`. 1 MiB to 1 TiB, default
    /// 64 MiB.
    pub max_unflushed_wal_bytes: u64,
    /// How long a write waits for the flush at that bound before it fails
    /// with TIMEOUT; 1 ms to 1 hour, default 5 s.
    pub write_stall_timeout: Duration,
    /// Files an engine keeps open at most, for all its shards together
    /// (its descriptor cache, `fs::FileCache`): past it, the least recently
    /// used idle file is closed and opened again when next used. 0 means
    /// half the process's soft `RLIMIT_NOFILE` at engine open; otherwise
    /// at least `fs::MIN_OPEN_FILES`. A shard opened alone keeps its files open.
    pub max_open_files: usize,
    /// Engines only, in `sync` durability: the shards' writes are made
    /// durable by one commit log shared by the engine (one fdatasync for
    /// the writes of many shards; src/wal/commit_log.rs), their own WALs
    /// synced only by flushes, checkpoints and close. False: each shard
    /// syncs its own WAL. Default true.
    pub commit_log: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Sync,
            wal_segment_size: 64 << 20,
            flush_interval: Some(Duration::from_secs(5)),
            seal_bytes: 32 << 20,
            max_sealed: 8,
            #[cfg(feature = "unordered-flush")]
            unordered_flush_seed: None,
            replay_run_bytes: 64 << 20,
            max_list_size: MAX_LIST_SIZE,
            salvage: false,
            flush_threads: pool::default_flush_threads(),
            steps: Steps::default(),
            max_unflushed_wal_bytes: DEFAULT_MAX_UNFLUSHED_WAL_BYTES,
            write_stall_timeout: DEFAULT_WRITE_STALL_TIMEOUT,
            max_open_files: 0,
            commit_log: true,
        }
    }
}

/// `Options::max_unflushed_wal_bytes` by default.
pub const DEFAULT_MAX_UNFLUSHED_WAL_BYTES: u64 = 64 << 20;
/// `Options::write_stall_timeout` by default.
pub const DEFAULT_WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The range of `Options::max_unflushed_wal_bytes`.
pub const UNFLUSHED_WAL_BYTES_RANGE: std::ops::RangeInclusive<u64> = (1 << 20)..=(1 << 40);
/// The longest `Options::write_stall_timeout`.
pub const MAX_WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(3600);

impl Options {
    pub fn validate(&self) -> Result<()> {
        if self.seal_bytes < 4096 {
            return Err(Error::invalid(format!("seal_bytes {} is below 4096", self.seal_bytes)));
        }
        if self.max_sealed < 1 {
            return Err(Error::invalid("max_sealed must be at least 1"));
        }
        if self.max_list_size > MAX_LIST_SIZE {
            return Err(Error::invalid(format!("max_list_size {} is above {MAX_LIST_SIZE}", self.max_list_size)));
        }
        if !(1..=pool::MAX_FLUSH_THREADS).contains(&self.flush_threads) {
            return Err(Error::invalid(format!(
                "flush_threads {} is outside 1..={}",
                self.flush_threads,
                pool::MAX_FLUSH_THREADS
            )));
        }
        if !UNFLUSHED_WAL_BYTES_RANGE.contains(&self.max_unflushed_wal_bytes) {
            return Err(Error::invalid(format!(
                "max_unflushed_wal_bytes {} is outside 1 MiB..=1 TiB",
                self.max_unflushed_wal_bytes
            )));
        }
        if self.write_stall_timeout < Duration::from_millis(1) || self.write_stall_timeout > MAX_WRITE_STALL_TIMEOUT {
            return Err(Error::invalid(format!("write_stall_timeout {:?} is outside 1 ms..=1 hour", self.write_stall_timeout)));
        }
        if self.max_open_files != 0 && self.max_open_files < crate::fs::MIN_OPEN_FILES {
            return Err(Error::invalid(format!(
                "max_open_files {} is below {} (0 picks half the process's descriptor limit)",
                self.max_open_files,
                crate::fs::MIN_OPEN_FILES
            )));
        }
        if self.flush_interval.is_some_and(|d| d.is_zero()) {
            return Err(Error::invalid("flush interval must be positive (or none)"));
        }
        self.wal_options().validate()
    }

    /// The shard's WAL takes the record of the largest operation (a 16 MiB
    /// value with a 4096-byte key) when its segments can hold it.
    fn wal_options(&self) -> wal::Options {
        wal::Options {
            durability: self.durability,
            write_behind: match self.durability {
                Durability::Sync => WRITE_BEHIND,
                Durability::Periodic(_) | Durability::None => 0,
            },
            segment_size: self.wal_segment_size,
            // A scheduler that owns every step also owns every file
            // operation: no segment is prepared behind its back.
            prepare_ahead: !self.steps.owns_schedule(),
            max_record_size: op::MAX_RECORD_SIZE.min(self.wal_segment_size.saturating_sub(wal::format::OVERHEAD)),
            ..Default::default()
        }
    }
}

/// Bytes of logged frames a shard's WAL may hold in memory before it
/// writes them to its file (`wal::Options::write_behind`); a sync writes
/// what it holds first, and frees the room.
/// - `sync`: a gate's lead logs a frame, and after a crowd one or more
///   further frames, then waits for their sync; held, they go to the file
///   with one write, which on `StdFs::synced()` is that sync (one device
///   flush per lead instead of one per frame).
/// - A committed shard (`commit::committed_wal`): its records are durable
///   in the commit log, so it writes many groups with one write instead of
///   one each (64 shards with a writer each: about a fifth more durable
///   puts). Each shard written since its last sync holds up to about this
///   much; a sync (a checkpoint, a flush) frees it.
const WRITE_BEHIND: usize = 64 << 10;

pub(crate) struct Inner {
    fs: Arc<dyn FileSystem>,
    seg_dir: PathBuf,
    opts: Options,
    segs: RwLock<Segments>,
    /// Where writes are ordered (gate.rs).
    gate: Gate,
    /// None once closed. Writers hold the read side across their append
    /// and durability wait; close takes the write side.
    wal: RwLock<Option<Wal>>,
    persisted: AtomicU64,
    /// The version this open last acknowledged to the WAL (flush.rs).
    wal_acked: AtomicU64,
    /// Handed over by a transfer (`WriteHold::hand_over`): writes are MOVED.
    moved: AtomicBool,
    /// Run after every successful write, one per transfer that forwards
    /// the shard's writes (`WriteHold::set_after_write`): a shard may be
    /// forwarded to several receivers at once, each waiting for its own.
    after_write: RwLock<Vec<Arc<dyn AfterWrite>>>,
    /// Whether `after_write` holds a hook: a write reads this flag, not
    /// the lock, when no transfer forwards (nearly always).
    forwarding: AtomicBool,
    closed: Arc<AtomicBool>,
    /// Set once `close` has finished, whatever it returned: until then a
    /// closed shard is still closing (its final pass and WAL close run),
    /// and the engine does not open, drop or receive it again.
    close_done: CloseDone,
    /// Why the shard stopped taking writes: set once, the first cause
    /// stays; every write reads it without taking a lock.
    poison: OnceLock<Error>,
    /// The last failure of a background step (pass, seal, merge).
    last_error: Mutex<Option<flush::Failure>>,
    /// Files a new table replaced that are still to be removed: the
    /// manifest that stops listing them, or a removal, failed
    /// (`flush::remove_replaced`).
    replaced: Mutex<Option<flush::Replaced>>,
    /// The shard's place in its flush pool; None once closed.
    flusher: Mutex<Option<Membership>>,
    /// The manifest on disk (manifest.rs).
    manifest: manifest::Written,
    /// What the open found (moved-aside files; losses of a salvage open).
    report: RecoveryReport,
    /// The lease gate of reads at a consistency level (reads.rs).
    reads: reads::Reads,
    /// The unflushed WAL and the write stall that bounds it (backlog.rs).
    backlog: backlog::Backlog,
    /// Operations (and their bytes) the open replayed from the WAL.
    replayed: recovery::Replayed,
    /// The host's applied index and the fences (replicated.rs). Changed by
    /// the write gate's leader only, under the segments' write lock.
    replicated: Mutex<Tracker>,
    /// The engine's commit log, when it makes this shard's writes durable
    /// (commit.rs); None: the shard syncs its own WAL.
    commit: Option<commit::Committer>,
}

impl Inner {
    fn with_wal<T>(&self, f: impl FnOnce(&Wal) -> Result<T>) -> Result<T> {
        match self.wal.read().as_ref() {
            Some(w) => f(w),
            None => Err(Error::new(KEEL_STATUS_CLOSED, "shard is closed")),
        }
    }

    /// The write-ahead rule for the flush: records up to `version` are
    /// durable in the WAL before segment data of that version is written.
    fn wal_durable(&self, version: u64) -> Result<()> {
        self.with_wal(|w| w.wait_durable(version))
    }

    /// Writes the manifest if the segment set changed since it was last
    /// written (manifest.rs: before the WAL is acked, before a file it no
    /// longer lists is removed).
    /// Writes the manifest if it changed; `ack`: the version about to be
    /// acknowledged to the WAL, recorded with it (None keeps the last).
    fn sync_manifest(&self, ack: Option<u64>) -> Result<()> {
        let persisted = ack.unwrap_or(0).max(self.persisted.load(Ordering::Acquire));
        self.manifest.sync(&*self.fs, &self.seg_dir, &self.segs, &self.replicated, persisted, &self.opts.steps)
    }

    fn poison(&self, e: Error) {
        let _ = self.poison.set(e);
    }

    fn check_open(&self) -> Result<()> {
        self.check_not_closed()?;
        if let Some(e) = self.poison.get() {
            return Err(Error::new(KEEL_STATUS_POISONED, format!("shard is poisoned: {}", e.message)));
        }
        Ok(())
    }

    /// What reads, and the consensus facts that decide them, check: a
    /// poisoned shard still serves what it holds (its writes are refused).
    fn check_not_closed(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::new(KEEL_STATUS_CLOSED, "shard is closed"));
        }
        Ok(())
    }

    fn request(&self, r: Request) -> Result<()> {
        match &*self.flusher.lock() {
            Some(m) => m.request(r),
            None => Err(Error::new(KEEL_STATUS_CLOSED, "shard is closed")),
        }
    }
}

/// Opens the WAL of the shard in `dir` as its open does (and the commit
/// log's restore, `committed`): through `fs` if the caller gave one
/// (tests), otherwise the real file system with the write strategy of the
/// shard's durability; in an engine's descriptor cache and on its workers
/// when `host` is given.
/// `persisted`: what the manifest says is in segment files; the WAL's open
/// need not read the frames of segments that hold nothing newer.
fn open_wal(dir: &Path, opts: &Options, fs: &Option<Arc<dyn FileSystem>>, host: Option<&pool::Host>, committed: bool, persisted: u64) -> Result<Wal> {
    let wal_opts = match committed {
        true => commit::committed_wal(&opts.wal_options()),
        false => opts.wal_options(),
    };
    // A log the commit log syncs is written through the page cache, not
    // mapped: a mapped `none` log pre-faults its active and spare
    // segments, up to twice wal_segment_size of memory per written
    // shard, for about a tenth more puts in the 64-shard bench. Nor are
    // its appends synced as they are written: its syncs are rare.
    let wal_fs = fs.clone().unwrap_or_else(|| match committed {
        true => Arc::new(StdFs::direct()),
        false => wal::std_fs(opts.durability),
    });
    let wal_fs = match host {
        Some(h) => h.files.wrap(wal_fs),
        None => wal_fs,
    };
    Wal::open_owned(&dir.join("wal"), wal_opts, Some(wal_fs), host.map(|h| &h.wal), persisted)
}

/// CORRUPTION when the shard in `dir` has a manifest (`has_manifest`) but
/// no WAL folder: its WAL was lost, and is not made again (the segment
/// files cannot tell which versions were handed out after them).
fn check_wal_kept(fs: &dyn FileSystem, dir: &Path, has_manifest: bool) -> Result<()> {
    let wal_dir = dir.join("wal");
    if has_manifest && !fs.exists(&wal_dir).map_err(|e| Error::io(format!("looking for {}", wal_dir.display()), e))? {
        return Err(Error::corruption(format!(
            "{}: missing while {} exists: the shard's WAL was lost",
            wal_dir.display(),
            manifest::path(&dir.join("segments")).display()
        )));
    }
    Ok(())
}

/// A shard's open reads its WAL on a thread of its own, beside the
/// segments' scan, only when the WAL's files hold at least this many
/// bytes: a smaller WAL opens in less time than a thread takes to start,
/// which reopening thousands of idle shards would pay for nothing.
const OVERLAP_WAL_BYTES: u64 = 4 << 20;

/// The bytes of the files in `dir` (0 if it cannot be listed: the open
/// that follows reports why).
fn files_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum()
}

/// What a shard's open read before it loads: its WAL, opened, and its
/// segments directory, scanned (`recovery::scan`), with what the scan
/// reported.
struct Found {
    wal: Wal,
    scan: recovery::Scan,
    report: RecoveryReport,
}

/// A group's frame stays below this many bytes (a batch larger than it
/// goes alone): the WAL's segments start small and grow with the write
/// rate, and one frame must not force an oversized segment early.
const GROUP_FRAME_BYTES: u64 = 256 << 10;

impl Inner {
    /// The leader's work for one group (gate.rs); a panic poisons the
    /// shard instead of leaving the group without outcomes.
    fn run_group(&self, wal: &Wal, group: &[Arc<Batch>]) -> Vec<gate::Outcome> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.log_and_apply(wal, group))) {
            Ok(outcomes) => outcomes,
            Err(_) => {
                let e = Error::new(KEEL_STATUS_PANIC, "a shard write panicked; the shard is poisoned");
                self.poison(e.clone());
                gate::all_failed(group, &e)
            }
        }
    }

    /// Judges each batch against the segments, the replicated state and
    /// the batches before it (`judge`), logs what it accepted as one WAL
    /// frame, then applies it in version order under one hold of the
    /// segments' write lock. Only the gate's leader changes what the
    /// segments and the replicated state hold (a flush, seal or merge moves
    /// entries but keeps every key's kind), so the judgement made before
    /// logging still holds when the group is applied.
    fn log_and_apply(&self, wal: &Wal, group: &[Arc<Batch>]) -> Vec<gate::Outcome> {
        if let Err(e) = self.check_open() {
            return gate::all_failed(group, &e);
        }
        // An earlier group changed the replicated state in memory and then
        // failed its write or sync, poisoning the WAL: judged against that
        // state, a retried entry would be answered "duplicate" (OK) and a
        // token "fenced" on the word of a write that failed.
        if wal.is_poisoned() {
            return gate::all_failed(group, &Error::new(KEEL_STATUS_POISONED, "the shard's WAL is poisoned by a failed write or sync"));
        }
        // Set under a write hold (a barrier of the gate): no group logged
        // after the hand-over can get past this.
        if self.moved.load(Ordering::Acquire) {
            return gate::all_failed(group, &Error::new(KEEL_STATUS_MOVED, "the shard was handed over to another node; write there"));
        }
        let (verdicts, checked) = self.judge(group);
        // Each logged batch: its state record, if it has one. Plain writes
        // (no index, no fence: nearly every group) have none, and the two
        // lists below stay empty: no allocation per write.
        let stateful = group.iter().any(|b| b.intent.index.is_some() || b.intent.fence.is_some());
        let states: Vec<Option<StateChange>> = group
            .iter()
            .zip(&verdicts)
            .take(if stateful { group.len() } else { 0 })
            .map(|(b, v)| {
                let change = match v {
                    Verdict::Accept => StateChange { index: b.intent.index, fence: b.intent.fence.clone() },
                    Verdict::Refuse(_) => StateChange { index: b.intent.index, fence: None },
                    Verdict::Skip | Verdict::Fail(_) => return None,
                };
                (!change.is_empty()).then_some(change)
            })
            .collect();
        let encoded: Vec<Option<Vec<u8>>> = states.iter().map(|c| c.as_ref().map(StateChange::encode)).collect();
        let mut records: Vec<&[u8]> = Vec::with_capacity(group.len());
        for ((b, v), state) in group.iter().zip(&verdicts).zip(encoded.iter().map(Option::as_deref).chain(std::iter::repeat(None))) {
            if matches!(v, Verdict::Accept) {
                records.extend(b.records());
            }
            records.extend(state);
        }
        let logs = |v: &Verdict| matches!(v, Verdict::Accept | Verdict::Refuse(_));
        if records.is_empty() {
            return verdicts.into_iter().map(Verdict::unlogged).collect();
        }
        let first = match wal.append_deferred(&records) {
            Ok(first) => {
                self.stage_copy(first, &records);
                first
            }
            Err(e) => {
                // Nothing of the group was logged (a failed write poisons
                // the WAL itself; a full disk consumes nothing).
                return verdicts.into_iter().map(|v| if logs(&v) { Err(e.clone()) } else { v.unlogged() }).collect();
            }
        };
        let mut segs = self.segs.write();
        let mut replicated = self.replicated.lock();
        debug_assert_eq!(segs.applied + 1, first, "groups are applied in version order");
        let mut next = first;
        let mut failed: Option<Error> = None;
        let mut index = None;
        // A seal or merge that swapped segments in since the judgement may
        // have moved a key the group appends to into a table block no read
        // has checked: the appends read it again here, before anything of
        // the group is applied, so that a damaged block fails the group
        // whole instead of halfway through a batch with its first
        // operations visible. (Under the same layout the apply reads only
        // blocks the judgement read.)
        if checked.is_some_and(|layout| layout != segs.layout) {
            let mut earlier = Overlay::new();
            let mut accepted = group.iter().zip(&verdicts).filter(|(_, v)| matches!(v, Verdict::Accept));
            if let Err(e) = accepted.try_for_each(|(b, _)| segs.check(b.ops(), &mut earlier, self.opts.max_list_size)) {
                self.poison(e.clone());
                failed = Some(e);
            }
        }
        let mut outcomes = Vec::with_capacity(group.len());
        for ((b, v), state) in group.iter().zip(verdicts).zip(states.into_iter().chain(std::iter::repeat_with(|| None))) {
            if !logs(&v) {
                outcomes.push(v.unlogged());
                continue;
            }
            let start = next;
            if failed.is_none() && matches!(v, Verdict::Accept) {
                for op in b.ops() {
                    if let Err(e) = segs.apply(op, next) {
                        // Logged but not applied: only a reopen (replay)
                        // can make the segments whole again. This batch
                        // and the ones after it fail; replay applies them.
                        self.poison(e.clone());
                        failed = Some(e);
                        break;
                    }
                    next += 1;
                }
            }
            if let Some(e) = &failed {
                outcomes.push(Err(e.clone()));
                continue;
            }
            let ops = (next > start).then(|| (start, next - 1));
            if let Some(change) = state {
                index = change.index.or(index);
                replicated.logged(next, change);
                next += 1;
            }
            let refused = match v {
                Verdict::Refuse(e) => Some(e),
                _ => None,
            };
            outcomes.push(Ok(Written { ops, last: next - 1, refused }));
        }
        if next > first {
            segs.finish(next - 1);
        }
        let full = segs.appendable.weight >= self.opts.seal_bytes;
        drop(replicated);
        drop(segs);
        // Reads waiting for this index (a read-index) may go now: the
        // segments hold the entry.
        if let Some(i) = index {
            self.reads.applied(i);
        }
        if full {
            let _ = self.request(Request::Maintain);
        }
        outcomes
    }

    /// What the leader does with each batch of its group. Kinds are
    /// checked (under the segments' read lock) only when the group
    /// appends: puts and deletes are valid whatever a key holds. Every
    /// rule here is deterministic (the segments, the replicated state and
    /// the batches before it), so replicas applying the same entries
    /// refuse the same ones. Also returns the segments' layout the kinds
    /// were read in, if they were.
    fn judge(&self, group: &[Arc<Batch>]) -> (Vec<Verdict>, Option<u64>) {
        let segs = group.iter().any(|b| b.appends()).then(|| self.segs.read());
        let replicated = self.replicated.lock();
        let live = replicated.live();
        let mut index = live.applied_index;
        // Tokens accepted by the group's earlier batches, per bucket.
        let mut tokens: HashMap<&[u8], u64> = HashMap::new();
        let mut earlier = Overlay::new();
        // An applied entry that failed fails the entries after it too: the
        // index must not pass an entry that did not apply.
        let mut apply_failed: Option<Error> = None;
        let mut verdicts = Vec::with_capacity(group.len());
        for b in group {
            let intent = &b.intent;
            if let Some(i) = intent.index {
                if let Some(e) = &apply_failed {
                    verdicts.push(Verdict::Fail(e.clone()));
                    continue;
                }
                if i <= index {
                    verdicts.push(Verdict::Skip);
                    continue;
                }
            }
            let fenced = intent.fence.as_ref().and_then(|f| {
                let highest = tokens.get(f.bucket.as_slice()).copied().or_else(|| live.fences.highest(&f.bucket));
                crate::lease::fence::check_against(highest, f.token).err()
            });
            let refusal = match intent.refused.clone().or(fenced) {
                Some(e) => Err(e),
                None => match &segs {
                    Some(s) => s.check(b.ops(), &mut earlier, self.opts.max_list_size),
                    None => Ok(()),
                },
            };
            let verdict = match refusal {
                Ok(()) => {
                    if let Some(f) = &intent.fence {
                        tokens.insert(&f.bucket, f.token);
                    }
                    Verdict::Accept
                }
                // A refusal of an applied entry moves its index all the same.
                Err(e) if intent.index.is_some() && is_refusal(&e) => Verdict::Refuse(e),
                Err(e) => Verdict::Fail(e),
            };
            match (&verdict, intent.index) {
                (Verdict::Fail(e), Some(_)) => apply_failed = Some(e.clone()),
                (_, Some(i)) => index = i,
                _ => {}
            }
            verdicts.push(verdict);
        }
        (verdicts, segs.map(|s| s.layout))
    }
}

/// The leader's judgement of one batch (`Inner::judge`).
enum Verdict {
    /// Log its operations and its state record, if any.
    Accept,
    /// An applied entry whose operations were refused: log its index alone.
    Refuse(Error),
    /// An applied entry whose index the shard applied before: nothing.
    Skip,
    /// Fails; nothing of it is logged.
    Fail(Error),
}

impl Verdict {
    /// The outcome of a batch that logged nothing.
    fn unlogged(self) -> gate::Outcome {
        match self {
            Verdict::Fail(e) => Err(e),
            _ => Ok(Written::default()),
        }
    }
}

/// Whether `e` refuses an entry the same way on every replica (so its
/// index still moves) rather than failing it on this one.
fn is_refusal(e: &Error) -> bool {
    [KEEL_STATUS_FENCED, KEEL_STATUS_WRONG_KIND, KEEL_STATUS_INVALID_ARGUMENT].contains(&e.status)
}

/// What `Shard::apply` did with an entry.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The index was at or below the applied index: nothing happened.
    pub duplicate: bool,
    /// Versions of the entry's first and last operation; None when none
    /// took effect (no operations, refused, or a duplicate).
    pub ops: Option<(u64, u64)>,
    /// Why the operations were refused; the index moved all the same.
    pub refused: Option<Error>,
    /// The shard's applied index after the call.
    pub applied_index: u64,
}

/// A fence bucket is named like a key, with a key's size limit.
fn check_bucket(bucket: &[u8]) -> Result<()> {
    if bucket.len() > MAX_KEY_SIZE {
        return Err(Error::invalid(format!("fence bucket of {} bytes exceeds the limit of {MAX_KEY_SIZE}", bucket.len())));
    }
    Ok(())
}

/// What `Shard::stats` reports.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub appendable_keys: u64,
    pub appendable_bytes: u64,
    pub sealed_segments: u64,
    pub sealed_bytes: u64,
    pub last_version: u64,
    pub persisted_version: u64,
    pub wal_first_seq: u64,
    /// Bytes of logged operations no segment file holds yet (what a
    /// reopen would replay), at most `Options::max_unflushed_wal_bytes`
    /// give or take one batch.
    pub unflushed_wal_bytes: u64,
    /// Writes that waited for the flush at that bound, and how long they
    /// waited in all (TIMEOUTs included).
    pub write_stalls: u64,
    pub write_stall_time: Duration,
    /// Operations the open replayed from the WAL, and their bytes.
    pub replayed_records: u64,
    pub replayed_bytes: u64,
}

/// A shard open on `<dir>`. Cheap to clone; every method may be called
/// from any thread. Close it with `close` (the engine closes its shards);
/// dropping the last handle of a shard that is not closed closes it (its
/// error, if any, is lost: call `close` to see it).
#[derive(Clone)]
pub struct Shard {
    inner: Arc<Inner>,
    /// Shared by the handles: the last one to go closes the shard. The
    /// shard's flush membership holds `inner`, so without it a shard
    /// dropped unclosed would keep its threads, WAL and LOCK for the life
    /// of the process.
    _handles: Arc<Handles>,
}

/// Closes its shard when the last handle is dropped.
struct Handles(std::sync::Weak<Inner>);

impl Drop for Handles {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            // A handle of its own, with nothing to close on its drop.
            let _ = Shard { inner, _handles: Arc::new(Handles(std::sync::Weak::new())) }.close();
        }
    }
}

impl Shard {
    /// Opens (creating if needed) the shard stored in `dir`: loads its
    /// segments, replays the WAL through the version gate and starts a
    /// flush worker of its own, whose first pass persists what replay
    /// applied.
    pub fn open(dir: &Path, opts: Options) -> Result<Shard> {
        Self::open_in(dir, opts, None, None)
    }

    /// Opens the shard through a given file system, for its WAL and its
    /// segments alike (tests inject faults here).
    pub fn open_with_fs(dir: &Path, opts: Options, fs: Arc<dyn FileSystem>) -> Result<Shard> {
        Self::open_in(dir, opts, Some(fs), None)
    }

    /// Opens the shard with its background work on `host` (an engine's
    /// flush pool and WAL workers), or on a one-worker flush pool and a
    /// WAL of its own; through `fs` if given, otherwise the real file
    /// system (with the WAL's own write strategy).
    pub(crate) fn open_in(dir: &Path, opts: Options, fs: Option<Arc<dyn FileSystem>>, host: Option<&pool::Host>) -> Result<Shard> {
        Self::open_from(dir, opts, fs, host, 0, None, None)
    }

    /// `open_in` for an engine's shard: its writes, in `sync` durability,
    /// made durable by `commit` (the engine's commit log and the shard's
    /// id in it; commit.rs) if given; `commit_log_loss`, what the engine's
    /// salvage open lost of its commit log, goes into the shard's report.
    pub(crate) fn open_hosted(
        dir: &Path,
        opts: Options,
        fs: Option<Arc<dyn FileSystem>>,
        host: &pool::Host,
        commit: Option<(Arc<wal::commit_log::CommitLog>, u32)>,
        commit_log_loss: Option<String>,
    ) -> Result<Shard> {
        Self::open_from(dir, opts, fs, Some(host), 0, commit, commit_log_loss)
    }

    /// `open_in` for a shard whose versions up to `base` are the
    /// segments' by construction (an incoming shard; 0 otherwise), made
    /// durable by `commit` (a commit log and the shard's id in it) if given,
    /// reporting `commit_log_loss` (`open_hosted`).
    fn open_from(
        dir: &Path,
        opts: Options,
        fs: Option<Arc<dyn FileSystem>>,
        host: Option<&pool::Host>,
        base: u64,
        commit: Option<(Arc<wal::commit_log::CommitLog>, u32)>,
        commit_log_loss: Option<String>,
    ) -> Result<Shard> {
        opts.validate()?;
        let commit = commit.filter(|_| opts.durability == Durability::Sync);
        let injected = fs.is_some();
        let seg_fs = fs.clone().unwrap_or_else(|| Arc::new(StdFs::direct()));
        // An engine's shards keep their files in its descriptor cache.
        let seg_fs = match host {
            Some(h) => h.files.wrap(seg_fs),
            None => seg_fs,
        };
        let seg_dir = dir.join("segments");
        let mut report = RecoveryReport { commit_log: commit_log_loss, ..RecoveryReport::default() };
        // Read once, for the WAL's open and the scan; an error is the
        // scan's, reported after the WAL's verdict.
        let manifest = recovery::read_manifest(&*seg_fs, &seg_dir, opts.salvage, &mut report);
        let persisted = manifest.as_ref().map_or(0, recovery::DirManifest::persisted);
        // A shard with a manifest had a WAL before it: a missing WAL
        // folder is a lost WAL, refused before the WAL's open makes a new
        // one (a failed open leaves the directory as it found it).
        let real_fs = fs.clone().unwrap_or_else(|| Arc::new(StdFs::direct()));
        check_wal_kept(&*real_fs, dir, manifest.as_ref().is_ok_and(recovery::DirManifest::found))?;
        let open_wal = || open_wal(dir, &opts, &fs, host, commit.is_some(), persisted);
        // The WAL's open and the segments' scan read different files and
        // write nothing the other reads: on the real file system they run
        // side by side, which a cold restart pays once instead of twice.
        // An injected file system (tests) sees them one after the other,
        // so a seed replays the same file operations in the same order.
        let overlap = !injected && files_bytes(&dir.join("wal")) >= OVERLAP_WAL_BYTES;
        let (wal, scan) = match overlap {
            false => {
                let wal = open_wal()?;
                (Ok(wal), manifest.and_then(|m| recovery::scan(&seg_fs, &seg_dir, m, opts.salvage, &mut report)))
            }
            true => std::thread::scope(|s| {
                let wal = std::thread::Builder::new().name("keel-open".into()).spawn_scoped(s, open_wal);
                let scan = manifest.and_then(|m| recovery::scan(&seg_fs, &seg_dir, m, opts.salvage, &mut report));
                let wal = match wal {
                    Ok(t) => t.join().unwrap_or_else(|_| Err(Error::new(KEEL_STATUS_PANIC, "the WAL's open panicked"))),
                    Err(_) => open_wal(), // no thread to spare: one after the other
                };
                (wal, scan)
            }),
        };
        // The WAL's verdict first: a refused open leaves the segments
        // directory as the scan found it.
        let found = Found { wal: wal?, scan: scan?, report };
        let shared = host.map(|h| (h.flush.clone(), h.stalls.clone()));
        Self::open_on(seg_fs, dir, found, opts, shared, base, commit)
    }

    /// `base`: versions up to it are the segments' by construction (an
    /// incoming shard whose snapshot is being installed; 0 otherwise).
    /// `host`: the engine's flush pool and write-stall totals.
    fn open_on(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        found: Found,
        opts: Options,
        host: Option<(Arc<FlushPool>, Arc<backlog::Stalls>)>,
        base: u64,
        commit: Option<(Arc<wal::commit_log::CommitLog>, u32)>,
    ) -> Result<Shard> {
        let (pool, stalls) = host.unzip();
        let Found { wal, scan, mut report } = found;
        let seg_dir = dir.join("segments");
        let last = wal.last_seq();
        let loaded = recovery::load(&fs, &seg_dir, scan, last > base, opts.salvage, &mut report)?;
        let mut segs = loaded.segs;
        let stored = segs.max_version().max(loaded.manifest.persisted);
        if stored > last {
            return Err(Error::corruption(format!(
                "segments hold version {stored} but the WAL ends at {last}: the WAL was lost or replaced"
            )));
        }
        // Every version the WAL was acknowledged past is in a segment
        // file: a WAL that starts later lost records no file holds.
        let first = wal.first_seq();
        if first > loaded.proven.max(base) + 1 {
            let (a, b) = (loaded.proven + 1, first - 1);
            if !opts.salvage {
                return Err(Error::corruption(format!(
                    "{}: the WAL starts at {first} but the segment files hold versions only up to {}: versions {a}..={b} are lost (a segment file is missing or was replaced)",
                    dir.display(),
                    loaded.proven
                )));
            }
            report.lost_versions = Some((a, b));
        } else if report.lost.is_empty() && first > loaded.manifest.persisted.max(base) + 1 {
            // The WAL is cut only past what the manifest records persisted
            // (F5), so a WAL that starts later was cut by a newer manifest:
            // this one is an older copy, and its applied index and fence
            // tokens may be behind what was acknowledged (replaying from
            // it would take entries and tokens again that were taken).
            let why = format!(
                "{}: records versions persisted only up to {} but the WAL starts at {first}: an older copy of the manifest (its applied index and fence tokens may be behind what was acknowledged)",
                manifest::path(&seg_dir).display(),
                loaded.manifest.persisted
            );
            if !opts.salvage {
                return Err(Error::corruption(why));
            }
            report.lost.push(why);
        }
        // Replay starts past the version the manifest records as
        // acknowledged: the segment files hold every operation up to it and
        // the manifest the replicated state (applied index, fences) as of
        // it, so records the WAL keeps only for its other readers (a
        // transfer, a follower) add nothing to a restart. Not past the
        // files' own higher floor: a pass that wrote its files but not yet
        // the manifest left state records there that only the WAL has. A
        // salvage open that lost files replays all the WAL still has.
        let from = match report.lost.is_empty() {
            true => (loaded.manifest.persisted.max(base) + 1).min(last + 1).max(first),
            false => 0,
        };
        let mut replicated = Tracker::new(loaded.manifest.replicated.clone());
        let replay = recovery::replay_wal(&mut segs, &mut replicated, &wal, from, opts.replay_run_bytes.max(1))?;
        // Everything before the first operation replay had to apply is in
        // the segments already (all of it after a clean close), and so is
        // everything up to the lowest persisted version the files record:
        // replay re-applies a put whose key a later, persisted delete
        // removed, which alone would restart the count below it.
        let replayed = replay.first_changed.map_or(last, |first| first - 1);
        let persisted = replayed.max(loaded.floor.min(last));
        let backlog = backlog::Backlog::new(opts.max_unflushed_wal_bytes, opts.write_stall_timeout, persisted, stalls);
        // Replayed and not yet flushed: the first pass persists it.
        backlog.logged(last, replay.bytes);
        segs.finish(last);
        // A shard handed over by a transfer stays handed over (`MOVED`).
        let moved = fs.exists(&seg_dir.with_file_name(transfer::MOVED_FILE)).map_err(|e| Error::io("looking for MOVED", e))?;
        let inner = Arc::new_cyclic(|me: &std::sync::Weak<Inner>| Inner {
            commit: commit.map(|(log, id)| commit::Committer::new(log, id, me.clone())),
            fs,
            seg_dir,
            segs: RwLock::new(segs),
            gate: Gate::new(opts.durability == Durability::Sync),
            wal: RwLock::new(Some(wal)),
            persisted: AtomicU64::new(persisted),
            wal_acked: AtomicU64::new(0),
            moved: AtomicBool::new(moved),
            after_write: RwLock::new(Vec::new()),
            forwarding: AtomicBool::new(false),
            closed: Arc::new(AtomicBool::new(false)),
            close_done: CloseDone::default(),
            poison: OnceLock::new(),
            last_error: Mutex::new(None),
            replaced: Mutex::new(None),
            flusher: Mutex::new(None),
            manifest: manifest::Written::new(loaded.manifest, loaded.synced),
            report,
            opts,
            reads: Default::default(),
            backlog,
            replayed: replay,
            replicated: Mutex::new(replicated),
        });
        let pool = match pool {
            Some(p) => p,
            None => FlushPool::new(1, inner.opts.steps.clone())?,
        };
        let member = pool.register(inner.clone())?;
        // Replayed operations are persisted by the first pass, off the
        // open path (recovery time is load + replay only).
        member.request(Request::Flush(None))?;
        *inner.flusher.lock() = Some(member);
        let handles = Arc::new(Handles(Arc::downgrade(&inner)));
        Ok(Shard { inner, _handles: handles })
    }

    /// Applies `ops` atomically; returns the versions of the first and the
    /// last (consecutive WAL sequence numbers, one per operation).
    pub fn write(&self, ops: &[Op]) -> Result<(u64, u64)> {
        self.write_refs(&ops.iter().map(Op::as_ref).collect::<Vec<_>>(), None)
    }

    /// `write` with a fence: FENCED (nothing written) when `fence.token`
    /// is below the highest token accepted for its bucket, which otherwise
    /// becomes it, in the same WAL frame as the operations. The check
    /// runs at the write gate, in the shard's write order.
    pub fn write_fenced(&self, ops: &[Op], fence: Fence) -> Result<(u64, u64)> {
        self.write_refs(&ops.iter().map(Op::as_ref).collect::<Vec<_>>(), Some(fence))
    }

    fn write_refs(&self, ops: &[OpRef], fence: Option<Fence>) -> Result<(u64, u64)> {
        if ops.is_empty() {
            return Err(Error::invalid("a write batch needs at least one operation"));
        }
        if let Some(f) = &fence {
            check_bucket(&f.bucket)?;
        }
        let limit = self.inner.opts.wal_options().max_record_size;
        op::check_write(ops, limit)?;
        let intent = Intent { fence, ..Intent::default() };
        op::check_frame(ops, intent.state_len() as u64, limit)?;
        let w = self.submit(Batch::new(ops, intent))?;
        debug_assert!(w.ops.is_some() && w.refused.is_none(), "a plain write is logged whole or fails");
        w.ops.ok_or_else(|| Error::new(KEEL_STATUS_PANIC, "a write was logged without its operations"))
    }

    /// Applies the host's committed entry `index` (its consensus log's
    /// index, from 1) with its operations `ops` (none: the entry only moves
    /// the index) and optional `fence`, atomically: the index is logged in
    /// the entry's WAL frame and `applied_index` returns it from then on,
    /// across reopens. Entries must be applied one at a time, in index
    /// order (gaps are allowed).
    ///
    /// An index at or below `applied_index` changes nothing and returns
    /// `Applied { duplicate: true, .. }`. Operations refused the same way
    /// on every replica (a stale fence: FENCED; an append to a value:
    /// WRONG_KIND; a key or value past the shard's limits:
    /// INVALID_ARGUMENT) are not applied, yet the index moves, and
    /// `Applied::refused` says why. An error means the index did not move
    /// (IO, NO_SPACE, CLOSED, POISONED, MOVED, RESOURCE, TIMEOUT at the
    /// write stall of `max_unflushed_wal_bytes` like any write,
    /// INVALID_ARGUMENT for index 0 or an entry larger than this shard's
    /// WAL takes).
    pub fn apply(&self, index: u64, ops: &[Op], fence: Option<Fence>) -> Result<Applied> {
        if index == 0 {
            return Err(Error::invalid("entry index 0: indexes start at 1 (0 means none applied)"));
        }
        let refs: Vec<OpRef> = ops.iter().map(Op::as_ref).collect();
        let mut refused = fence.as_ref().and_then(|f| check_bucket(&f.bucket).err());
        refused = refused.or_else(|| refs.iter().find_map(|op| op.check().err()));
        let limit = self.inner.opts.wal_options().max_record_size;
        // A refused entry logs its index alone: neither its operations nor
        // its fence count against the WAL's record limit, which differs
        // between replicas.
        let (refs, fence) = if refused.is_some() { (Vec::new(), None) } else { (refs, fence) };
        let intent = Intent { index: Some(index), fence, refused };
        op::check_frame(&refs, intent.state_len() as u64, limit)?;
        let w = self.submit(Batch::new(&refs, intent))?;
        Ok(Applied { duplicate: w.last == 0, ops: w.ops, refused: w.refused, applied_index: self.applied_index() })
    }

    /// The index of the last entry applied with `apply` (0: none), kept
    /// across reopens.
    pub fn applied_index(&self) -> u64 {
        self.inner.replicated.lock().live().applied_index
    }

    /// The highest fencing token accepted for `bucket` by a fenced write
    /// or an applied entry (None: none yet); kept across reopens.
    pub fn fence_highest(&self, bucket: &[u8]) -> Option<u64> {
        self.inner.replicated.lock().live().fences.highest(bucket)
    }

    /// Queues `batch` at the write gate and, in `sync` durability, waits
    /// until what it logged is durable.
    fn submit(&self, batch: Arc<Batch>) -> Result<Written> {
        let inner = &*self.inner;
        inner.check_open()?;
        // Before the gate and the WAL's lock: a write waiting for the flush
        // holds nothing the flush or a close needs.
        let kick = || {
            let _ = inner.request(Request::Flush(None));
        };
        let admitted = inner.backlog.admit(batch.frame_bytes(), kick)?;
        // Held from the gate to the durability wait: close waits for it,
        // and the leader logs with it (no second read lock, which could
        // wait behind a pending close while that close waits for us).
        let w = {
            let wal = inner.wal.read();
            let wal = wal.as_ref().ok_or_else(|| Error::new(KEEL_STATUS_CLOSED, "shard is closed"))?;
            let limit = GROUP_FRAME_BYTES.min(inner.opts.wal_options().max_record_size);
            // The group's leader waits for its durability once for the
            // whole group, before passing the gate's lead on.
            let settle = |last: u64| inner.settle(wal, last);
            let log = |group: &[Arc<Batch>]| inner.run_group(wal, group);
            let w = inner.gate.write(batch, limit, log, settle);
            // A duplicate entry logged nothing (its `last` is 0). A failed
            // write or sync releases the reservation (a failed sync
            // poisons the WAL: nothing more is logged).
            let w = w?;
            admitted.logged(w.last, kick);
            w
        };
        inner.checkpoint_if_due();
        // Outside the WAL's read lock: the hook reads the WAL itself, and
        // a close waiting for that lock must not wait for the hook.
        // The flag is set under a write hold, before any write it must
        // see is logged: the gate's lock orders the two.
        if w.last > 0 && inner.forwarding.load(Ordering::Acquire) {
            let hooks = inner.after_write.read().clone();
            for hook in hooks {
                hook.after_write(w.last);
            }
        }
        Ok(w)
    }

    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<u64> {
        self.write_refs(&[OpRef::Put { key, value }], None).map(|v| v.0)
    }

    pub fn delete(&self, key: &[u8]) -> Result<u64> {
        self.write_refs(&[OpRef::Delete { key }], None).map(|v| v.0)
    }

    pub fn append(&self, key: &[u8], item: &[u8]) -> Result<u64> {
        self.write_refs(&[OpRef::Append { key, item }], None).map(|v| v.0)
    }

    /// Runs `f` at one point of the shard's write order (its write gate):
    /// every write that entered the gate before is logged and applied, and
    /// none that enters after is logged until `f` returns. `f` gets the last
    /// applied version. It must not write to, flush-wait on or close this
    /// shard (each would wait for `f`); reads are fine.
    pub fn under_gate<T>(&self, f: impl FnOnce(u64) -> T) -> Result<T> {
        let inner = &*self.inner;
        inner.check_open()?;
        // Held like a writer's: close waits until `f` is done.
        let wal = inner.wal.read();
        if wal.is_none() {
            return Err(Error::new(KEEL_STATUS_CLOSED, "shard is closed"));
        }
        Ok(inner.gate.exclusive(|| f(inner.segs.read().applied)))
    }

    /// Writes queued at the write gate and not yet taken by a leader
    /// (tests line writers up behind `under_gate` with it).
    #[doc(hidden)]
    pub fn queued_writes(&self) -> usize {
        self.inner.gate.queued()
    }

    /// Writes waiting for a flush at the bound of unflushed WAL (tests
    /// wait for a writer to stall before they let the flush go).
    #[doc(hidden)]
    pub fn stalled_writes(&self) -> usize {
        self.inner.backlog.waiting()
    }

    fn read<T>(&self, f: impl FnOnce(&Segments) -> Result<T>) -> Result<T> {
        self.inner.check_not_closed()?;
        f(&self.inner.segs.read())
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        op::check_key(key)?;
        self.read(|s| s.get(key))
    }

    /// Reads several keys from one consistent state.
    pub fn multi_get(&self, keys: &[&[u8]]) -> Result<Vec<Option<Entry>>> {
        for k in keys {
            op::check_key(k)?;
        }
        self.read(|s| keys.iter().map(|k| s.get(k)).collect())
    }

    /// Keys in [start, end) (end None: to the last key), from one
    /// consistent state copied when the scan is created. A bound longer
    /// than MAX_KEY_SIZE is INVALID_ARGUMENT naming it, as a key is to
    /// `get` (docs/STORAGE.md, "Scans").
    pub fn scan(&self, start: &[u8], end: Option<&[u8]>) -> Result<Scan> {
        check_scan_bounds(start, end)?;
        let items = self.read(|s| s.range(start, end))?;
        Ok(Scan { items: items.into_iter(), closed: self.inner.closed.clone(), ended: false })
    }

    /// Keys that start with `prefix`; one longer than MAX_KEY_SIZE is
    /// INVALID_ARGUMENT, as in `scan`.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Scan> {
        check_scan_prefix(prefix)?;
        let end = prefix_end(prefix);
        self.scan(prefix, end.as_deref())
    }

    /// Runs a flush pass (F1: shares the shard's next pass in its pool);
    /// with `wait`, returns the persisted version once it is done.
    pub fn flush(&self, wait: bool) -> Result<u64> {
        self.inner.check_open()?;
        if !wait {
            self.inner.request(Request::Flush(None))?;
            return Ok(self.persisted_version());
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.inner.request(Request::Flush(Some(tx)))?;
        rx.recv().map_err(|_| Error::new(KEEL_STATUS_CLOSED, "shard closed during the flush"))?
    }

    /// Every operation with a version <= this is in durable segments; the
    /// WAL before it may be gone.
    pub fn persisted_version(&self) -> u64 {
        self.inner.persisted.load(Ordering::Acquire)
    }

    pub fn last_version(&self) -> u64 {
        self.inner.segs.read().applied
    }

    /// Holds off every write to this shard until the hold is dropped: a
    /// barrier of the write gate (every write queued before it is logged
    /// and applied, none after it is logged; readers are not held). A
    /// transfer's final drain reads the WAL under it until a read comes
    /// back empty.
    pub(crate) fn hold_writes(&self) -> WriteHold<'_> {
        WriteHold {
            _barrier: self.inner.gate.hold(),
            moved: &self.inner.moved,
            after_write: &self.inner.after_write,
            forwarding: &self.inner.forwarding,
        }
    }

    /// Removes `hook`, which `WriteHold::set_after_write` installed; the
    /// hooks of other forwarding transfers stay.
    pub(crate) fn clear_after_write(&self, hook: &Arc<dyn AfterWrite>) {
        let mut hooks = self.inner.after_write.write();
        hooks.retain(|h| !Arc::ptr_eq(h, hook));
        self.inner.forwarding.store(!hooks.is_empty(), Ordering::Release);
    }

    /// Keeps WAL records >= `seq` even once persisted (a transfer or a
    /// lagging follower still reads them); u64::MAX releases the hold.
    pub fn set_keep_from(&self, seq: u64) -> Result<()> {
        self.inner.check_open()?;
        self.inner.with_wal(|w| w.set_keep_from(seq))
    }

    /// The last failure of a background pass, seal or merge, if the work
    /// after it has not succeeded since (failed work is retried; the WAL
    /// keeps everything meanwhile). A failed pass is resolved by the next
    /// pass that succeeds, before a `flush(true)` that ran it returns; a
    /// failed seal or merge once the seal and merges after a pass succeed.
    pub fn background_error(&self) -> Option<Error> {
        self.inner.last_error.lock().as_ref().map(|f| f.error.clone())
    }

    pub fn stats(&self) -> Stats {
        let (write_stalls, write_stall_time) = self.inner.backlog.stalls();
        let s = self.inner.segs.read();
        Stats {
            appendable_keys: s.appendable.map.len() as u64,
            appendable_bytes: s.appendable.weight as u64,
            sealed_segments: s.sealed.len() as u64,
            sealed_bytes: s.sealed.iter().map(|x| x.size() as u64).sum(),
            last_version: s.applied,
            persisted_version: self.persisted_version(),
            wal_first_seq: self.inner.wal.read().as_ref().map_or(0, |w| w.first_seq()),
            unflushed_wal_bytes: self.inner.backlog.unflushed(),
            write_stalls,
            write_stall_time,
            replayed_records: self.inner.replayed.records,
            replayed_bytes: self.inner.replayed.bytes,
        }
    }

    /// Final flush pass, leaves the flush pool, closes the WAL. Later
    /// calls on any clone fail with CLOSED; an open scan yields CLOSED
    /// once and ends. Idempotent.
    pub fn close(&self) -> Result<()> {
        let inner = &*self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            // Another call is closing it: returns once that is done, or
            // finishes it when that one stopped at RESOURCE with the WAL
            // still open (`close_wal`).
            if !inner.close_done.wait_or_take() {
                return Ok(());
            }
            return self.close_wal(&mut inner.close_done.on_drop(), true);
        }
        // However this close ends (a panic included).
        let mut done = inner.close_done.on_drop();
        inner.backlog.close();
        let mut result = Ok(());
        let member = inner.flusher.lock().take();
        if let Some(member) = member {
            if let Err(e) = member.stop() {
                result = Err(e);
            }
        }
        result.and(self.close_wal(&mut done, true))
    }

    /// A close the engine makes on its own behalf (the engine closing, a
    /// received shard replaced or dropped, a reception ended): never left
    /// pending, since no handle may be there to retry it and the WAL would
    /// outlive its slot, or the engine's LOCK. On RESOURCE again the WAL is
    /// closed as a close that failed: the commit log keeps its copies.
    pub(crate) fn close_for_good(&self) -> Result<()> {
        let result = self.close();
        let done = &self.inner.close_done;
        // Until it is done: a retry on another handle may have taken the
        // close over and left it pending again.
        while done.wait_or_take() {
            let _ = self.close_wal(&mut done.on_drop(), false);
        }
        result
    }

    /// Closes the WAL and marks the close finished, however it ends (a
    /// panic included), but for RESOURCE (out of descriptors or memory)
    /// before the WAL's held frames were written when `retryable`: the WAL
    /// then stays open and the close unfinished, and the next `close`
    /// tries again, as RESOURCE promises.
    fn close_wal(&self, done: &mut Finish<'_>, retryable: bool) -> Result<()> {
        let inner = &*self.inner;
        // The write side is held until the WAL is closed (synced): the
        // commit log's checkpoints take a shard seen closed as synced.
        let mut wal = inner.wal.write();
        // A committed shard's sync also records its durable point in
        // `wal.meta`, as a checkpoint's does: once it succeeded, every
        // acknowledged frame is where a checkpoint needs it, and a close
        // that fails later (its clean-close mark or extent record) leaves
        // the commit log nothing to hold.
        let mut recorded = false;
        if let Some(w) = wal.as_ref().filter(|_| retryable) {
            let synced = if inner.commit.is_some() { w.sync_for_close() } else { w.sync().map(drop) };
            match synced {
                Ok(_) => recorded = inner.commit.is_some(),
                Err(e) if e.status == crate::status::KEEL_STATUS_RESOURCE => {
                    // The shard is closed to every call already: the host's
                    // read-index callback is let go of now, inside this
                    // close (keel.h), not at a retry on another thread.
                    drop(wal);
                    inner.reads.clear();
                    done.stop_pending();
                    return Err(e);
                }
                Err(_) => {}
            }
        }
        let mut result = Ok(());
        if let Some(w) = wal.take() {
            let closed = w.close();
            if closed.is_err() && !recorded {
                // Before the write side is let go: a checkpoint waiting to
                // sync this shard then finds it held (commit_log.rs).
                inner.note_close_failed();
            }
            result = closed;
        }
        drop(wal);
        inner.reads.clear();
        result
    }

    /// What the open found: files moved aside (any open) and, in a
    /// salvage open, the files and versions that are lost.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Closed, and its close has finished (its final pass and WAL close
    /// are over): only then may the shard's directory be opened again.
    pub(crate) fn close_finished(&self) -> bool {
        *self.inner.close_done.done.lock()
    }

    /// Its close stopped at RESOURCE with the WAL still open: the next
    /// `close` (on any clone) finishes it.
    pub(crate) fn close_pending(&self) -> bool {
        self.inner.close_done.pending.load(Ordering::Acquire)
    }
}

/// Whether a shard's close has finished; a second close waits for it.
#[derive(Default)]
struct CloseDone {
    done: Mutex<bool>,
    /// A close stopped at RESOURCE with its WAL open; the next takes over.
    pending: AtomicBool,
    finished: parking_lot::Condvar,
}

impl CloseDone {
    /// Waits until the close has finished (false), or takes over one that
    /// stopped at RESOURCE (true: the caller finishes it).
    fn wait_or_take(&self) -> bool {
        let mut done = self.done.lock();
        loop {
            if *done {
                return false;
            }
            if self.pending.swap(false, Ordering::AcqRel) {
                return true;
            }
            self.finished.wait(&mut done);
        }
    }

    /// Marks the close finished when the returned guard drops, unless
    /// `stop_pending` was called on it.
    fn on_drop(&self) -> Finish<'_> {
        Finish(self, true)
    }
}

struct Finish<'a>(&'a CloseDone, bool);

impl Finish<'_> {
    /// The close stopped unfinished: the next close takes over.
    fn stop_pending(&mut self) {
        self.1 = false;
        let _done = self.0.done.lock();
        self.0.pending.store(true, Ordering::Release);
        self.0.finished.notify_all();
    }
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        if self.1 {
            *self.0.done.lock() = true;
            self.0.finished.notify_all();
        }
    }
}

/// While it lives, no write is applied to its shard (`Shard::hold_writes`).
pub(crate) struct WriteHold<'a> {
    _barrier: gate::Hold<'a>,
    moved: &'a AtomicBool,
    after_write: &'a RwLock<Vec<Arc<dyn AfterWrite>>>,
    forwarding: &'a AtomicBool,
}

/// What a transfer that forwards a shard's writes runs after each one.
pub(crate) trait AfterWrite: Send + Sync {
    /// The write that ended at version `last` succeeded here; returns once
    /// the hook is done with it (it cannot fail the write, which is
    /// applied and, with sync durability, durable already).
    fn after_write(&self, last: u64);
}

impl WriteHold<'_> {
    /// Hands the shard over: every later write fails with MOVED. Under
    /// the hold, so no write slips in between the last one sent and this.
    pub(crate) fn hand_over(&self) {
        self.moved.store(true, Ordering::Release);
    }

    /// Adds a hook every later write runs once it succeeded. Under the
    /// hold, so every write after the one the hold follows runs it.
    pub(crate) fn set_after_write(&self, hook: Arc<dyn AfterWrite>) {
        self.after_write.write().push(hook);
        self.forwarding.store(true, Ordering::Release);
    }
}

/// The checks `Shard::scan` makes of its bounds: each one longer than
/// MAX_KEY_SIZE is INVALID_ARGUMENT naming it. The C reads make them
/// before their level's check too (a lease check, a read-index).
pub(crate) fn check_scan_bounds(start: &[u8], end: Option<&[u8]>) -> Result<()> {
    op::check_key_named("scan start bound", start)?;
    end.map_or(Ok(()), |end| op::check_key_named("scan end bound", end))
}

/// The check `Shard::scan_prefix` makes of its prefix, as
/// `check_scan_bounds` of a bound.
pub(crate) fn check_scan_prefix(prefix: &[u8]) -> Result<()> {
    op::check_key_named("scan prefix", prefix)
}

/// The smallest key greater than every key starting with `prefix`
/// (None when there is none: the prefix is empty or all 0xff).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The result of a scan: entries in key order. Once the shard is closed
/// it yields CLOSED, once, and ends.
pub struct Scan {
    items: std::vec::IntoIter<(Vec<u8>, Entry)>,
    closed: Arc<AtomicBool>,
    /// It yielded CLOSED: nothing follows.
    ended: bool,
}

impl Scan {
    /// CLOSED once the shard is closed, at every call (what the C
    /// iterator answers each call then; `next` yields it once).
    pub(crate) fn check_open(&self) -> Result<()> {
        match self.closed.load(Ordering::Acquire) {
            true => Err(Error::new(KEEL_STATUS_CLOSED, "the shard of this scan is closed")),
            false => Ok(()),
        }
    }
}

impl Iterator for Scan {
    type Item = Result<(Vec<u8>, Entry)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ended {
            return None;
        }
        if let Err(e) = self.check_open() {
            // Once, then the end, as the C++ and Go iterators do: an error
            // at every call kept `flatten()`, `count()` or a loop that goes
            // on after an error spinning forever.
            self.ended = true;
            return Some(Err(e));
        }
        self.items.next().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_key_past_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
