//! The commit log: one log whose group-committed fdatasync makes the
//! writes of many logs durable (an engine's shards in `sync` durability).
//!
//! Sixty-four shards each syncing a WAL of its own pay sixty-four small
//! device writes and flushes where one shard with sixty-four writers pays
//! one: the device, not the CPU, caps them. So a member log writes its
//! frame to its own file without syncing it, then appends a copy of the
//! frame (the member's id, its first sequence number and its records) to
//! the commit log and waits for that log's group commit, which it shares
//! with every member writing at the same time. A write is durable once its
//! copy is; the member's own file catches up later.
//!
//! A **checkpoint** makes the copies unneeded: it notes the commit log's
//! last sequence number J, syncs every member written since the last
//! checkpoint, appends (durably) a checkpoint record saying "every copy up
//! to J is in its member's file", then acknowledges the log up to J so
//! whole segments of old copies are deleted. Once `checkpoint_bytes` of
//! copies came since the last one, a member's writer runs it after its
//! write (`checkpoint_if_due`), holding none of its member's locks: the
//! member's other writers go on meanwhile. A member joins the set to sync before
//! its copy is appended, so a copy at or below J belongs to a member that
//! the checkpoint syncs, or that synced after writing it.
//!
//! **Recovery** (`recover`, at engine open, before any member opens):
//! every copy after the last checkpoint record goes back to its member,
//! which appends the ones its file lost (a power loss keeps only what was
//! synced) with their original sequence numbers, and syncs; then a
//! checkpoint covers them all. A copy a member already holds is skipped.
//!
//! Copies of a dropped member must never reach a new member with the same
//! id: dropping one takes a checkpoint first (`checkpoint`), and its
//! owner notes what that covered (`covered`) outside the log, for
//! `recover`: they stay in the active segment, and a salvage that loses
//! the checkpoint's record would give them back otherwise.
//!
//! **Damage.** The log opens in the WAL's default mode, which cuts an
//! unsynced tail (a copy never acknowledged) and refuses anything else
//! with CORRUPTION. With `salvage` such a log opens by the WAL's salvage
//! instead: the copies before the damage are kept and restored, those
//! from it on are set aside (`salvaged-<ns>/`) and their sequence numbers
//! are never handed out again; `lost` says what the log gave up, for the
//! owner to tell the members it may concern.

use super::{Durability, Options, ReadUpto, RecoveryMode, RecoveryReport, Wal, Workers};
use crate::codec::{put_bytes, Cursor};
use crate::error::{Error, Result};
use crate::fs::FileSystem;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// A log whose writes the commit log makes durable.
pub(crate) trait Member: Send + Sync {
    /// Makes every frame its log has written so far durable in that log
    /// (Ok for a log closed cleanly: its close synced it).
    fn sync_log(&self) -> Result<()>;
    /// Whether it is in the set of members the next checkpoint syncs.
    fn listed(&self) -> &AtomicBool;
}

/// Tags of the commit log's records.
const COPY: u8 = 1;
const CHECKPOINT: u8 = 2;

/// A member's frame as the commit log holds it: its records, the first
/// with sequence number `first`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Copied {
    pub first: u64,
    pub records: Vec<Vec<u8>>,
}

/// Appends the copy of member `id`'s frame to `out`:
/// tag, id (u32 LE), first (u64 LE), then each record as a u32 LE length
/// and its bytes. The commit log's own frame checksums it.
pub(crate) fn encode_copy(id: u32, first: u64, records: &[&[u8]], out: &mut Vec<u8>) {
    out.reserve(13 + records.iter().map(|r| 4 + r.len()).sum::<usize>());
    out.push(COPY);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&first.to_le_bytes());
    for r in records {
        put_bytes(out, r);
    }
}

enum Decoded {
    Copy(u32, Copied),
    Checkpoint(u64),
}

fn decode(seq: u64, b: &[u8]) -> Result<Decoded> {
    let mut c = Cursor { bytes: b };
    let decoded = match c.u8() {
        Ok(COPY) => (|| {
            let id = c.u32().ok()?;
            let first = c.u64().ok()?;
            let mut records = Vec::new();
            while !c.bytes.is_empty() {
                records.push(c.bytes().ok()?.to_vec());
            }
            // Versions first..first+n-1, every one a sequence number a
            // WAL can hand out (below u64::MAX): a crafted copy whose
            // range wrapped would otherwise be taken for one its member holds.
            let fits = first.checked_add(records.len() as u64).is_some();
            (first > 0 && !records.is_empty() && fits).then_some(Decoded::Copy(id, Copied { first, records }))
        })(),
        Ok(CHECKPOINT) => c.u64().ok().filter(|_| c.bytes.is_empty()).map(Decoded::Checkpoint),
        _ => None,
    };
    decoded.ok_or_else(|| Error::corruption(format!("commit log record {seq} is malformed")))
}

pub(crate) struct CommitLog {
    /// None once closed.
    log: RwLock<Option<Wal>>,
    /// Members written since the last checkpoint (each also `listed`).
    members: Mutex<Vec<Weak<dyn Member>>>,
    /// Ids of members whose log failed to close since the log opened
    /// (`hold`): their frames may be in no durable file but their copies,
    /// so no checkpoint is taken until the engine reopens and recovery
    /// gives the copies back. Kept here, not in the member: a member
    /// gone is otherwise taken for one its close synced.
    held: Mutex<BTreeSet<u32>>,
    /// Bytes of copies appended since the last checkpoint.
    since: AtomicU64,
    checkpoint_bytes: u64,
    /// One checkpoint at a time; a writer finding one running goes on.
    /// Holds the highest sequence number the checkpoints cover: every
    /// copy at or below it is in its member's durable log.
    checkpointing: Mutex<u64>,
    stats: Counters,
    /// What a salvage open gave up (`lost`); None when the log was whole
    /// enough for the default mode.
    lost: Option<String>,
}

/// What a commit log did since it opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitLogStats {
    /// Copies appended (one per WAL frame of a shard's writes).
    pub commits: u64,
    /// Checkpoints taken, and members' logs they synced.
    pub checkpoints: u64,
    pub checkpoint_syncs: u64,
    /// Frames the open gave back to members whose logs had lost them.
    pub restored_frames: u64,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    checkpoints: AtomicU64,
    checkpoint_syncs: AtomicU64,
    restored_frames: AtomicU64,
}

impl CommitLog {
    /// Opens the commit log in `dir` (sync durability, hosted by
    /// `workers`, segments prepared ahead by them if `prepare_ahead`),
    /// takes a checkpoint every `checkpoint_bytes` of copies.
    /// A copy larger than its records take is refused (INVALID_ARGUMENT):
    /// its member syncs its own log instead.
    /// Damage the WAL's default mode refuses is CORRUPTION that says to
    /// open with `salvage`; with it the log opens by the WAL's salvage, and
    /// `lost` says what it gave up.
    pub fn open(
        dir: &Path,
        fs: Arc<dyn FileSystem>,
        workers: &Workers,
        segment_size: u64,
        prepare_ahead: bool,
        checkpoint_bytes: u64,
        salvage: bool,
    ) -> Result<CommitLog> {
        let opts = Options {
            durability: Durability::Sync,
            segment_size,
            prepare_ahead,
            max_record_size: segment_size - super::format::OVERHEAD,
            ..Default::default()
        };
        // The default mode first, even with salvage: an unsynced tail it
        // cuts holds no acknowledged copy, so only what it refuses is a
        // loss to report (a failed open changes nothing it would read).
        let (log, lost) = match Wal::open_owned(dir, opts.clone(), Some(fs.clone()), Some(workers), 0) {
            Ok(log) => (log, None),
            Err(e) if e.status == crate::status::KEEL_STATUS_CORRUPTION && salvage => {
                let log = Wal::open_owned(dir, Options { recovery: RecoveryMode::Salvage, ..opts }, Some(fs), Some(workers), 0)?;
                let lost = log.recovery_report().map(describe_loss);
                (log, lost)
            }
            Err(e) if e.status == crate::status::KEEL_STATUS_CORRUPTION => {
                return Err(Error::corruption(format!(
                    "the engine's commit log is damaged: {}; open the engine with salvage to open it anyway (the copies from the damage on are set aside, and every shard's salvage report says which were lost)",
                    e.message
                )))
            }
            Err(e) => return Err(e),
        };
        Ok(CommitLog {
            log: RwLock::new(Some(log)),
            members: Mutex::new(Vec::new()),
            held: Mutex::new(BTreeSet::new()),
            since: AtomicU64::new(0),
            checkpoint_bytes,
            checkpointing: Mutex::new(0),
            stats: Counters::default(),
            lost,
        })
    }

    /// What the salvage open gave up: the copies at a range of the log's
    /// sequence numbers, why, and where they were set aside. None when
    /// the log opened in the default mode.
    pub fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    fn with_log<T>(&self, f: impl FnOnce(&Wal) -> Result<T>) -> Result<T> {
        match &*self.log.read() {
            Some(log) => f(log),
            None => Err(Error::new(crate::status::KEEL_STATUS_CLOSED, "the engine's commit log is closed")),
        }
    }

    /// Gives every copy written after the last checkpoint, and after
    /// `floor` (what a checkpoint covered, noted outside the log: a salvage
    /// may lose its record), to `restore`, grouped by member id, in
    /// sequence order, which returns how many of them its log lacked; once
    /// each returned, takes a checkpoint covering them. An error of
    /// `restore` stops the recovery with nothing acknowledged.
    pub fn recover(&self, floor: u64, mut restore: impl FnMut(u32, Vec<Copied>) -> Result<u64>) -> Result<()> {
        let mut copies: BTreeMap<u32, Vec<(u64, Copied)>> = BTreeMap::new();
        let mut covered = floor;
        self.with_log(|log| {
            let mut reader = log.reader(0, ReadUpto::Appended)?;
            while let Some((seq, data)) = reader.peek()? {
                match decode(seq, data)? {
                    Decoded::Copy(id, c) => copies.entry(id).or_default().push((seq, c)),
                    Decoded::Checkpoint(upto) => covered = covered.max(upto),
                }
                reader.advance();
            }
            Ok(())
        })?;
        for (id, list) in copies {
            let list: Vec<Copied> = list.into_iter().filter(|(seq, _)| *seq > covered).map(|(_, c)| c).collect();
            if !list.is_empty() {
                let restored = restore(id, list)?;
                self.stats.restored_frames.fetch_add(restored, Ordering::Relaxed);
            }
        }
        self.checkpoint()
    }

    /// Makes `copies` (each from `encode_copy`, of consecutive frames)
    /// durable, sharing the fdatasync with the other members committing
    /// now; `member` (whose `listed` flag is `listed`) wrote the frames
    /// they copy to its own log before this call. Several copies go in one
    /// all-or-nothing frame. Past `checkpoint_bytes` of copies since the
    /// last checkpoint, one is due (`checkpoint_if_due`).
    pub fn commit(&self, copies: &[&[u8]], listed: &AtomicBool, member: &Weak<dyn Member>) -> Result<()> {
        // Listed before the copy is appended (see the module comment).
        if !listed.swap(true, Ordering::AcqRel) {
            self.members.lock().push(member.clone());
        }
        self.with_log(|log| match copies {
            [copy] => log.append(copy),
            copies => log.append_batch(copies),
        })?;
        self.stats.commits.fetch_add(copies.len() as u64, Ordering::Relaxed);
        self.since.fetch_add(copies.iter().map(|c| c.len() as u64).sum(), Ordering::AcqRel);
        Ok(())
    }

    /// Takes a checkpoint if one is due and none is running; for a
    /// member's writer after its write, holding none of the member's
    /// locks. Its error is not the write's (the copy is durable): the
    /// checkpoint is due again after `checkpoint_bytes` more of copies.
    pub fn checkpoint_if_due(&self) {
        if self.since.load(Ordering::Acquire) < self.checkpoint_bytes {
            return;
        }
        if let Some(mut covered) = self.checkpointing.try_lock() {
            let _ = self.checkpoint_locked(&mut covered);
        }
    }

    /// Takes a checkpoint now: on return every copy appended before the
    /// call is in its member's own durable log and covered by a durable
    /// checkpoint record.
    pub fn checkpoint(&self) -> Result<()> {
        self.checkpoint_locked(&mut self.checkpointing.lock())
    }

    /// The highest sequence number the checkpoints taken since the log
    /// opened cover: every copy at or below it is in its member's durable
    /// log.
    pub fn covered(&self) -> u64 {
        *self.checkpointing.lock()
    }

    /// Member `id`'s log failed to close: its copies, and every later
    /// one, stay in this log (checkpoints fail) until the engine reopens.
    pub fn hold(&self, id: u32) {
        self.held.lock().insert(id);
    }

    /// Whether member `id`'s log failed to close since this log opened.
    pub fn holds(&self, id: u32) -> bool {
        self.held.lock().contains(&id)
    }

    /// `covered`: what the checkpoints cover so far (`checkpointing`).
    fn checkpoint_locked(&self, covered: &mut u64) -> Result<()> {
        self.since.store(0, Ordering::Release);
        // J first, then the set: a copy at or below J was appended after
        // its member was listed, so the member is in the set taken below.
        let upto = self.with_log(|log| Ok(log.last_seq()))?;
        let taken = std::mem::take(&mut *self.members.lock());
        let mut failed = None;
        for weak in taken {
            // A member dropped: closed (its close synced it, or it is
            // held), or dropped without close (its log's drop synced it).
            let Some(m) = weak.upgrade() else { continue };
            m.listed().store(false, Ordering::Release);
            self.stats.checkpoint_syncs.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = m.sync_log() {
                // Listed again: the next checkpoint tries it once more.
                if !m.listed().swap(true, Ordering::AcqRel) {
                    self.members.lock().push(weak);
                }
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        // Checked after the members' syncs: a close that failed while this
        // checkpoint waited to sync that member held it before letting the
        // sync see the member closed.
        if let Some(ids) = Some(self.held.lock().clone()).filter(|h| !h.is_empty()) {
            return Err(Error::new(
                crate::status::KEEL_STATUS_IO,
                format!("the WAL of shard(s) {ids:?} failed to close: the commit log keeps every copy until the engine reopens"),
            ));
        }
        self.with_log(|log| {
            // No copy since the last checkpoint, or since the log was
            // last emptied.
            if upto <= *covered || upto < log.first_seq() {
                return Ok(());
            }
            let mut record = vec![CHECKPOINT];
            record.extend_from_slice(&upto.to_le_bytes());
            let at = log.append(&record)?;
            // The record covers itself unless copies came in between.
            *covered = if at == upto + 1 { at } else { upto };
            self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
            log.ack(upto)
        })
    }

    pub fn stats(&self) -> CommitLogStats {
        let c = &self.stats;
        CommitLogStats {
            commits: c.commits.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            checkpoint_syncs: c.checkpoint_syncs.load(Ordering::Relaxed),
            restored_frames: c.restored_frames.load(Ordering::Relaxed),
        }
    }

    /// Takes a last checkpoint (its members are closed: their closes
    /// synced them) and closes the log.
    pub fn close(&self) -> Result<()> {
        let checkpoint = self.checkpoint();
        let closed = match self.log.write().take() {
            Some(log) => log.close(),
            None => Ok(()),
        };
        checkpoint.and(closed)
    }
}

/// The most versions of one member that the copies in the log at `dir`
/// can hold: each record of a copy takes at least the 4 bytes of its
/// length, so there are no more of them than a quarter of the bytes of
/// the log's segment files. A salvage that loses copies makes each member
/// skip this many versions past its own log's end, so that none of a lost
/// write is handed out again.
pub(crate) fn versions_bound(fs: &dyn FileSystem, dir: &Path) -> Result<u64> {
    let io = |e| Error::io(format!("sizing {}", dir.display()), e);
    let mut bytes = 0u64;
    for name in fs.list(dir).map_err(io)?.iter().filter(|n| n.ends_with(".wal")) {
        bytes = bytes.saturating_add(fs.open(&dir.join(name), false).and_then(|f| f.len()).map_err(io)?);
    }
    Ok(bytes / 4 + 1)
}

/// The copies a salvage open of the log gave up, from its WAL's report:
/// every sequence number it knows lost or skips (a copy set aside keeps
/// its number, so none is reused), the damage and the folder set aside.
fn describe_loss(r: &RecoveryReport) -> String {
    let ranges = r.lost.iter().chain(&r.skipped);
    let copies = match (ranges.clone().map(|&(a, _)| a).min(), ranges.map(|&(_, b)| b).max()) {
        (Some(a), Some(b)) => format!("its copies at sequence numbers {a}..={b}"),
        _ => "its copies from the damage on".to_string(),
    };
    let mut why: Vec<String> = r.damage.iter().cloned().collect();
    if !r.extent.is_empty() {
        why.push(format!("its extent record disagrees with its segments: {}", r.extent.join("; ")));
    }
    if let Some(aside) = &r.set_aside {
        why.push(format!("set aside in {}", aside.display()));
    }
    format!("{copies} ({})", why.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member whose log is always durable.
    struct Quiet(AtomicBool);
    impl Member for Quiet {
        fn sync_log(&self) -> Result<()> {
            Ok(())
        }
        fn listed(&self) -> &AtomicBool {
            &self.0
        }
    }

    #[test]
    fn a_copy_decodes_to_what_was_encoded() {
        let mut out = Vec::new();
        encode_copy(7, 42, &[b"ab", b"", b"xyz"], &mut out);
        match decode(1, &out).unwrap() {
            Decoded::Copy(id, c) => {
                assert_eq!(id, 7);
                assert_eq!(c, Copied { first: 42, records: vec![b"ab".to_vec(), vec![], b"xyz".to_vec()] });
            }
            Decoded::Checkpoint(_) => panic!("a copy decoded as a checkpoint"),
        }
    }

    /// A copy is malformed unless its versions are ones a WAL hands out:
    /// from 1, none past u64::MAX − 1 (the restore adds them up).
    #[test]
    fn a_copy_whose_versions_would_wrap_is_malformed() {
        for (first, n, ok) in [(u64::MAX - 2, 2, true), (u64::MAX - 1, 2, false), (u64::MAX, 1, false), (0, 1, false)] {
            let mut out = Vec::new();
            encode_copy(1, first, &vec![&b"r"[..]; n], &mut out);
            let d = decode(9, &out);
            assert_eq!(d.is_ok(), ok, "first {first}, {n} records: {:?}", d.err());
            if let Err(e) = d {
                assert_eq!(e.status, crate::status::KEEL_STATUS_CORRUPTION);
            }
        }
    }

    /// A lead of several frames commits their copies in one frame of the
    /// commit log; recovery hands them back one by one, in order, so a
    /// member whose log kept some of those frames is given only the rest.
    #[test]
    fn copies_committed_together_come_back_one_by_one() {
        let dir = crate::test_dir::TestDir::new("commit-log-unit");
        let workers = super::super::Workers::new(0).unwrap();
        let open = || CommitLog::open(&dir, Arc::new(crate::fs::StdFs::direct()), &workers, 1 << 20, false, u64::MAX, false).unwrap();
        let member: Arc<dyn Member> = Arc::new(Quiet(AtomicBool::new(false)));
        let copy = |first: u64, records: &[&[u8]]| {
            let mut out = Vec::new();
            encode_copy(3, first, records, &mut out);
            out
        };
        let (a, b, c) = (copy(10, &[b"x", b"y"]), copy(12, &[b"z"]), copy(13, &[b"w"]));
        {
            let log = open();
            log.commit(&[&a, &b], member.listed(), &Arc::downgrade(&member)).unwrap();
            log.commit(&[&c], member.listed(), &Arc::downgrade(&member)).unwrap();
            assert_eq!(log.stats().commits, 3);
            // Dropped without a checkpoint: every copy is still to restore.
        }
        let mut got = Vec::new();
        open().recover(0, |id, copies| {
            got.push((id, copies));
            Ok(0)
        })
        .unwrap();
        let copied = |first, records: &[&[u8]]| Copied { first, records: records.iter().map(|r| r.to_vec()).collect() };
        assert_eq!(got, vec![(3, vec![copied(10, &[b"x", b"y"]), copied(12, &[b"z"]), copied(13, &[b"w"])])]);
    }

    /// Bit rot in a copy with valid frames after it: the default mode
    /// refuses the log and says to salvage; salvage gives back the copies
    /// before it, says which it lost, and hands none of their sequence
    /// numbers out again.
    #[test]
    fn a_damaged_copy_is_salvaged_and_its_numbers_are_not_reused() {
        let dir = crate::test_dir::TestDir::new("commit-log-salvage");
        let workers = super::super::Workers::new(0).unwrap();
        let open = |salvage| CommitLog::open(&dir, Arc::new(crate::fs::StdFs::direct()), &workers, 1 << 20, false, u64::MAX, salvage);
        let member: Arc<dyn Member> = Arc::new(Quiet(AtomicBool::new(false)));
        let copy = |first: u64| {
            let mut out = Vec::new();
            encode_copy(3, first, &[format!("record-{first}-record").as_bytes()], &mut out);
            out
        };
        {
            let log = open(false).unwrap();
            for first in 1..=6 {
                log.commit(&[&copy(first)], member.listed(), &Arc::downgrade(&member)).unwrap();
            }
            // Dropped without a checkpoint: every copy is still to restore.
        }
        let segment = std::fs::read_dir(&*dir).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|x| x == "wal")).unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        let at = bytes.windows(15).position(|w| w == b"record-3-record").unwrap();
        bytes[at + 7] ^= 1;
        std::fs::write(&segment, &bytes).unwrap();

        let strict = open(false).err().expect("a damaged copy with later ones fails the default mode");
        assert_eq!(strict.status, crate::status::KEEL_STATUS_CORRUPTION, "{strict}");
        assert!(strict.message.contains("salvage"), "{strict}");
        let log = open(true).unwrap();
        let lost = log.lost().expect("the salvage open says what it lost").to_string();
        assert!(lost.contains("3..=6"), "{lost}");
        let mut got = Vec::new();
        log.recover(0, |id, copies| {
            got.extend(copies.into_iter().map(|c| (id, c.first)));
            Ok(0)
        })
        .unwrap();
        assert_eq!(got, vec![(3, 1), (3, 2)], "the copies before the damage come back");
        log.commit(&[&copy(7)], member.listed(), &Arc::downgrade(&member)).unwrap();
        let last = log.with_log(|l| Ok(l.last_seq())).unwrap();
        assert!(last > 7, "the new copy took number {last}, one of the copies set aside");
        log.close().unwrap();
        assert!(open(false).unwrap().lost().is_none(), "whole again after the salvage");
    }

    #[test]
    fn a_malformed_record_is_corruption_not_a_panic() {
        let mut out = Vec::new();
        encode_copy(7, 42, &[b"abc"], &mut out);
        for cut in 0..out.len() {
            assert!(decode(1, &out[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(1, &[9, 0, 0]).is_err(), "unknown tag");
        assert!(decode(1, &[CHECKPOINT, 1, 0, 0, 0, 0, 0, 0, 0, 5]).is_err(), "trailing bytes");
    }
}
