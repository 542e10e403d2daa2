//! What a shard transfer (`crate::transfer`, docs/TRANSFER.md) needs from
//! a shard: on the source, a consistent snapshot, WAL pins and readers;
//! on the receiver, an incoming shard that starts at the snapshot's
//! version and applies operations with their original versions.

use super::entry::{Entry, EntryRef, HeldEntry};
use super::merging::{held_from, Merged};
use super::key::Key;
use super::op::{Record, BATCH_RECORD_HEADER};
use super::pool::Host;
use super::replicated::Replicated;
use super::sealed::Sealed;
use super::segments::{Overlay, ALL_SEALED};
use super::{Options, Shard};
use crate::error::{Error, Result};
use crate::fs::{FileSystem, StdFs};
use crate::status::*;
use crate::wal::{extent, Pin, ReadUpto, Reader};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// `<shard dir>/TRANSFER_BASE` (`Shard::set_snapshot_base`).
const BASE_FILE: &str = "TRANSFER_BASE";
const BASE_MAGIC: u64 = 0x3142_5246_4c45_454b; // "KEELFRB1"
/// `<shard dir>/MOVED`: a transfer handed the shard over
/// (`Shard::persist_moved`), so a reopen refuses writes with MOVED too,
/// until a transfer brings the shard back (`Engine::receive_shard`).
pub(super) const MOVED_FILE: &str = "MOVED";

/// Removes the `MOVED` mark of the shard in `shard_dir`, if there is one,
/// durably.
pub(crate) fn remove_moved(fs: &dyn crate::fs::FileSystem, shard_dir: &std::path::Path) -> Result<()> {
    let path = shard_dir.join(MOVED_FILE);
    let io = |what: &str, p: &std::path::Path, e| crate::error::Error::io(format!("{what} {}", p.display()), e);
    if !fs.exists(&path).map_err(|e| io("looking for", &path, e))? {
        return Ok(());
    }
    fs.remove(&path).map_err(|e| io("removing", &path, e))?;
    fs.sync_dir(shard_dir).map_err(|e| io("syncing", shard_dir, e))
}

/// The shard's state at one version: the appendable segment's keys
/// (copied) and the immutable segments (shared: a merge that replaces them
/// later does not change what this snapshot reads, and their files stay
/// readable while it holds them). Deletions after `version` are ignored.
pub struct Snapshot {
    pub version: u64,
    /// The replicated state (applied index, highest tokens) as of `version`.
    pub(crate) replicated: Replicated,
    appendable: BTreeMap<Key, HeldEntry>,
    sealed: Vec<Arc<Sealed>>,
}

impl Snapshot {
    /// Visits the next live entries in key order after `after` (None:
    /// from the first key), read in place: at most `max_keys` and
    /// `max_bytes` of keys and values, except that a chunk always holds one
    /// entry while keys remain. Each segment is read only as far as the
    /// chunk reaches. Returns the last key visited (None: no keys remain).
    pub fn visit(
        &self,
        after: Option<&[u8]>,
        max_keys: usize,
        max_bytes: usize,
        mut f: impl FnMut(&[u8], EntryRef<'_>) -> Result<()>,
    ) -> Result<Option<Vec<u8>>> {
        let max_keys = max_keys.max(1);
        let start = after.map(|a| {
            let mut s = a.to_vec();
            s.push(0); // the smallest key above `after`
            s
        });
        let start = start.as_deref().unwrap_or(&[]);
        let sealed = self.sealed.iter().map(|s| s.live_from(start, None, self.version));
        let (mut count, mut bytes, mut last) = (0, 0, None);
        for r in Merged::new(sealed.chain([held_from(&self.appendable, start)])) {
            let (k, e) = r?;
            let size = k.len() + e.weight();
            if count == max_keys || (count > 0 && bytes + size > max_bytes) {
                break;
            }
            f(k, e)?;
            (count, bytes, last) = (count + 1, bytes + size, Some(k));
        }
        Ok(last.map(<[u8]>::to_vec))
    }

    /// `visit`, the entries copied out.
    pub fn chunk(&self, after: Option<&[u8]>, max_keys: usize, max_bytes: usize) -> Result<Vec<(Vec<u8>, Entry)>> {
        let mut out = Vec::new();
        self.visit(after, max_keys, max_bytes, |k, e| {
            out.push((k.to_vec(), e.to_entry()?));
            Ok(())
        })?;
        Ok(out)
    }
}

impl Shard {
    /// Seals the appendable segment when it holds more than `bytes` of
    /// keys and values, and returns once its table is written: a snapshot
    /// taken next shares the table instead of copying the keys, so it
    /// copies only what was written since (a transfer's source memory stays
    /// bounded whatever the shard holds). A flush job of the shard's pool
    /// does the seal, in order with its passes.
    pub(crate) fn seal_above(&self, bytes: usize) -> Result<()> {
        self.inner.check_open()?;
        if self.inner.segs.read().appendable.weight <= bytes {
            return Ok(());
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.inner.request(super::pool::Request::Seal(tx))?;
        rx.recv().map_err(|_| Error::new(KEEL_STATUS_CLOSED, "shard closed during the seal"))?
    }

    /// Makes the installed snapshot durable: seals what `install` left in
    /// the appendable segment (it is not logged) into a table, then runs a
    /// pass. Returns the persisted version.
    pub(crate) fn persist_installed(&self) -> Result<u64> {
        self.seal_above(0)?;
        self.flush(true)
    }

    /// A consistent snapshot at the last applied version, taken under the
    /// read lock (writers wait while the appendable segment is copied).
    pub fn snapshot(&self) -> Result<Snapshot> {
        self.inner.check_open()?;
        let s = self.inner.segs.read();
        // Writers change the replicated state under the segments' write
        // lock, so under the read lock it is the state as of `applied`.
        let replicated = self.inner.replicated.lock().live().clone();
        Ok(Snapshot { version: s.applied, replicated, appendable: s.appendable.map.clone(), sealed: s.sealed.clone() })
    }

    /// Records durably that a transfer handed this shard over, so that a
    /// reopen refuses writes with MOVED too.
    pub(crate) fn persist_moved(&self) -> Result<()> {
        crate::fs::replace(&*self.inner.fs, &self.inner.seg_dir.with_file_name(MOVED_FILE), b"moved")
    }

    /// Removes the mark of `persist_moved` (a FINISH that failed).
    pub(crate) fn unpersist_moved(&self) -> Result<()> {
        let dir = self.inner.seg_dir.parent().unwrap_or(std::path::Path::new("."));
        remove_moved(&*self.inner.fs, dir)
    }

    /// Whether a transfer handed this shard over: its writes fail with MOVED.
    pub fn is_moved(&self) -> bool {
        self.inner.moved.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Keeps the shard's WAL records >= `from` while the pin lives
    /// (TRUNCATED when they are gone already).
    pub fn pin_wal(&self, from: u64) -> Result<Pin> {
        self.inner.check_open()?;
        self.inner.with_wal(|w| w.pin(from))
    }

    /// Keeps every WAL record the shard retains now while the pin lives.
    pub fn pin_wal_retained(&self) -> Result<Pin> {
        self.inner.check_open()?;
        self.inner.with_wal(|w| w.pin_retained())
    }

    /// The first and last version of the lowest gap above `version` in
    /// the shard's WAL (versions its recovery declared lost), if any.
    pub(crate) fn wal_gap_above(&self, version: u64) -> Result<Option<(u64, u64)>> {
        self.inner.check_open()?;
        self.inner.with_wal(|w| Ok(w.gap_above(version)))
    }

    /// A reader of the shard's WAL from `from`, up to its durable mark.
    pub fn wal_reader(&self, from: u64) -> Result<Reader> {
        self.inner.check_open()?;
        self.inner.with_wal(|w| w.reader(from, ReadUpto::Durable))
    }

    /// Makes every logged operation durable; returns the durable mark.
    /// Callable under `hold_writes`: the recursive read does not queue
    /// behind a close waiting for the writers the hold blocks.
    pub fn sync_wal(&self) -> Result<u64> {
        match self.inner.wal.read_recursive().as_ref() {
            Some(w) => w.sync(),
            None => Err(Error::new(KEEL_STATUS_CLOSED, "shard is closed")),
        }
    }

    /// Every operation <= this is durable in the shard's WAL.
    pub fn durable_version(&self) -> u64 {
        self.inner.wal.read_recursive().as_ref().map_or(0, |w| w.durable_seq())
    }

    /// The crc32 of the WAL record of `version` (the history check of a
    /// WAL-delta transfer), or None when the WAL no longer holds it.
    pub fn record_crc(&self, version: u64) -> Result<Option<u32>> {
        if version == 0 {
            return Ok(Some(0));
        }
        let mut r = match self.inner.with_wal(|w| w.reader(version, ReadUpto::Appended)) {
            Ok(r) => r,
            Err(e) if e.status == KEEL_STATUS_TRUNCATED => return self.base_crc(version),
            Err(e) => return Err(e),
        };
        match r.next_record()?.filter(|(v, _)| *v == version) {
            Some((_, rec)) => Ok(Some(crc32fast::hash(&rec))),
            None => self.base_crc(version),
        }
    }

    /// The file that remembers, for a shard received as a snapshot, the
    /// snapshot's version and the crc32 of the source's record of it: its
    /// own WAL starts after that version, yet a later WAL delta needs the
    /// record's checksum for its history check.
    fn base_path(&self) -> std::path::PathBuf {
        self.inner.seg_dir.with_file_name(BASE_FILE)
    }

    /// Takes in the replicated state of a snapshot being installed, before
    /// the flush that makes the snapshot durable (its manifest then holds
    /// the state too).
    pub(crate) fn seed_replicated(&self, state: &Replicated) {
        self.inner.replicated.lock().seed(state);
    }

    /// Records the snapshot's base (`record_crc` answers from it).
    pub(crate) fn set_snapshot_base(&self, version: u64, crc: u32) -> Result<()> {
        let mut body = version.to_le_bytes().to_vec();
        body.extend_from_slice(&crc.to_le_bytes());
        crate::fs::replace(&*self.inner.fs, &self.base_path(), &super::files::seal_small(BASE_MAGIC, &body))
    }

    fn base_crc(&self, version: u64) -> Result<Option<u32>> {
        let path = self.base_path();
        let Some(bytes) = super::files::read_small(&*self.inner.fs, &path)? else { return Ok(None) };
        let mut c = super::files::Cursor { bytes: super::files::open_small(BASE_MAGIC, &bytes, &path)? };
        let (v, crc) = (c.u64()?, c.u32()?);
        Ok((v == version).then_some(crc))
    }

    /// Opens a new, empty incoming shard in `dir` whose versions up to
    /// `base` come from a snapshot (`install`): its WAL starts at
    /// `base + 1`, so transferred operations keep their versions.
    pub(crate) fn open_incoming(
        dir: &Path,
        opts: Options,
        fs: Option<Arc<dyn FileSystem>>,
        host: Option<&Host>,
        base: u64,
    ) -> Result<Shard> {
        opts.validate()?;
        let wal_dir = dir.join("wal");
        let real = fs.clone().unwrap_or_else(|| Arc::new(StdFs::direct()));
        real.create_dir_all(&wal_dir).map_err(|e| Error::io(format!("creating {}", wal_dir.display()), e))?;
        // The extent record alone starts an empty log at base + 1 (a log
        // never reissues a number its extent record says was handed out);
        // it claims no durable record, as there is none in this log.
        let start = extent::Extent { durable: 0, next_seq: base + 1, segments: Vec::new() };
        crate::fs::replace(&*real, &wal_dir.join(extent::META_NAME), &start.encode())?;
        Self::open_from(dir, opts, fs, host, base, None, None)
    }

    /// The encoded size past which this shard refuses a posting list
    /// (`Options::max_list_size`): a snapshot it receives is held to it too.
    pub(crate) fn max_list_size(&self) -> usize {
        self.inner.opts.max_list_size
    }

    /// Installs snapshot entries with their versions: a key already here
    /// at the same or a newer version is left alone (a re-sent batch).
    /// They are not logged: the snapshot's end seals them into tables
    /// (`Appendable::adopt`).
    pub(crate) fn install(&self, entries: Vec<(Vec<u8>, Entry)>) -> Result<()> {
        self.inner.check_open()?;
        let mut segs = self.inner.segs.write();
        for (key, e) in entries {
            match segs.get(&key)? {
                Some(have) if have.version >= e.version => continue,
                Some(_) => {
                    return Err(Error::new(
                        KEEL_STATUS_PROTOCOL,
                        format!("snapshot entry {:?} at version {} arrived twice with different versions", String::from_utf8_lossy(&key), e.version),
                    ))
                }
                None => {}
            }
            segs.appendable.adopt(&key, e);
        }
        let applied = segs.applied;
        segs.finish(applied);
        let weight = segs.appendable.weight;
        drop(segs);
        // A snapshot may be bigger than memory: its entries go to tables
        // as they come, sealed past seal_bytes like writes, and an install
        // waits for the seal when the flush falls a whole segment behind.
        let seal = self.inner.opts.seal_bytes;
        if weight >= seal.saturating_mul(2) {
            self.seal_above(seal)?;
        } else if weight >= seal {
            let _ = self.inner.request(super::pool::Request::Maintain);
        }
        Ok(())
    }

    /// Applies transferred operations `(version, WAL record)` in version
    /// order: those at or below the last applied version are skipped (the
    /// version gate: a re-sent batch changes nothing); the others must
    /// follow it without a gap. They are logged in this shard's WAL first,
    /// at their own versions, and applied through the replay gate. Returns
    /// once they are durable, with the last applied version.
    pub(crate) fn apply_transferred(&self, ops: &[(u64, &[u8])]) -> Result<u64> {
        let inner = &*self.inner;
        inner.check_open()?;
        let wal = inner.wal.read();
        let wal = wal.as_ref().ok_or_else(|| Error::new(KEEL_STATUS_CLOSED, "shard is closed"))?;
        let last = {
            let mut segs = inner.segs.write();
            let fresh: Vec<&(u64, &[u8])> = ops.iter().filter(|(v, _)| *v > segs.applied).collect();
            let Some(&&(first, _)) = fresh.first() else { return Ok(segs.applied) };
            if first != wal.last_seq() + 1 || fresh.windows(2).any(|w| w[1].0 != w[0].0 + 1) {
                return Err(Error::new(
                    KEEL_STATUS_PROTOCOL,
                    format!("transferred operations from {first} do not follow this shard's last version {} without a gap", wal.last_seq()),
                ));
            }
            // The records came in a frame, not from a disk: one that does
            // not decode is the source's malformed frame (PROTOCOL), not
            // damage here (CORRUPTION).
            let refused = |i: usize, e: Error| {
                Error::new(
                    KEEL_STATUS_PROTOCOL,
                    format!("transferred operation {} is not one this shard can take: {}", first + i as u64, e.message),
                )
            };
            let decoded: Vec<Record> =
                fresh.iter().enumerate().map(|(i, (_, r))| Record::decode(r).map_err(|e| refused(i, e))).collect::<Result<_>>()?;
            // What a local write is checked for, before anything is logged:
            // a record logged and then refused by replay would poison the
            // shard, and every later open would refuse its WAL.
            let mut earlier = Overlay::new();
            for (i, record) in decoded.iter().enumerate() {
                let checked = match record {
                    Record::Op(op) => op.check().and_then(|()| segs.check([*op], &mut earlier, inner.opts.max_list_size)),
                    Record::State(change) => change.fence.as_ref().map_or(Ok(()), |f| super::check_bucket(&f.bucket)),
                };
                checked.map_err(|e| refused(i, e))?;
            }
            let records: Vec<&[u8]> = fresh.iter().map(|(_, r)| *r).collect();
            let at = wal.append_deferred(&records)?;
            debug_assert_eq!(at, first, "the WAL numbers transferred operations with their versions");
            let mut replicated = inner.replicated.lock();
            for (i, record) in decoded.into_iter().enumerate() {
                let version = first + i as u64;
                match record {
                    Record::Op(op) => {
                        if let Err(e) = segs.replay(op, version, ALL_SEALED, None) {
                            inner.poison(e.clone());
                            return Err(e);
                        }
                    }
                    Record::State(change) => replicated.logged(version, change),
                }
            }
            let last = first + fresh.len() as u64 - 1;
            segs.finish(last);
            // Counted toward the bound, never stalled: the transfer's
            // sender paces itself by these calls.
            inner.backlog.logged(last, records.iter().map(|r| (r.len() + BATCH_RECORD_HEADER) as u64).sum());
            last
        };
        wal.wait_durable(last)?;
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Op;

    fn ops(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
        range.map(|v| (v, Op::Put { key: format!("k{}", v % 3).into_bytes(), value: v.to_le_bytes().to_vec() }.encode())).collect()
    }

    fn apply(shard: &Shard, ops: &[(u64, Vec<u8>)]) -> Result<u64> {
        let borrowed: Vec<(u64, &[u8])> = ops.iter().map(|(v, r)| (*v, r.as_slice())).collect();
        shard.apply_transferred(&borrowed)
    }

    #[test]
    fn transferred_operations_keep_their_versions_and_a_resent_batch_changes_nothing() {
        let dir = crate::test_dir::TestDir::new("incoming");
        let opts = Options { flush_interval: None, ..Options::default() };
        let shard = Shard::open_incoming(&dir, opts.clone(), None, None, 10).unwrap();
        assert_eq!(shard.last_version(), 10, "the WAL starts after the snapshot's version");
        assert_eq!(apply(&shard, &ops(11..=13)).unwrap(), 13);
        let before = shard.get(b"k1").unwrap();
        // The same batch again, and one overlapping it: only 14 and 15 are new.
        assert_eq!(apply(&shard, &ops(11..=13)).unwrap(), 13);
        assert_eq!(shard.get(b"k1").unwrap(), before);
        assert_eq!(apply(&shard, &ops(12..=15)).unwrap(), 15);
        assert_eq!(shard.get(b"k0").unwrap().unwrap().version, 15);
        // A gap is refused.
        assert_eq!(apply(&shard, &ops(17..=18)).unwrap_err().status, KEEL_STATUS_PROTOCOL);
        // A state record in the delta (an applied entry's index and fence)
        // reaches the replicated state too.
        let state = crate::shard::replicated::StateChange {
            index: Some(42),
            fence: Some(crate::shard::Fence { bucket: b"b".to_vec(), token: 7 }),
        };
        let mut with_state = ops(16..=16);
        with_state.push((17, state.encode()));
        assert_eq!(apply(&shard, &with_state).unwrap(), 17);
        assert_eq!((shard.applied_index(), shard.fence_highest(b"b")), (42, Some(7)));
        // Reopened normally, the shard replays its own WAL at those versions.
        shard.close().unwrap();
        let shard = Shard::open(&dir, opts).unwrap();
        assert_eq!(shard.last_version(), 17);
        assert_eq!(shard.get(b"k1").unwrap().unwrap().version, 16);
        assert_eq!((shard.applied_index(), shard.fence_highest(b"b")), (42, Some(7)));
        shard.close().unwrap();
    }

    #[test]
    fn a_big_appendable_segment_is_sealed_so_the_snapshot_shares_it_instead_of_copying_it() {
        let dir = crate::test_dir::TestDir::new("snapshot-seal");
        let opts = Options { flush_interval: None, ..Options::default() };
        let shard = Shard::open(&dir, opts).unwrap();
        for i in 0..300u32 {
            shard.put(format!("k{i:04}").as_bytes(), &[i as u8; 4096]).unwrap();
        }
        let before = shard.snapshot().unwrap();
        assert_eq!((before.appendable.len(), before.sealed.len()), (300, 0), "below seal_bytes, all in the appendable segment");
        // Small enough: left as it is.
        shard.seal_above(2 << 20).unwrap();
        assert_eq!(shard.stats().sealed_segments, 0);
        shard.seal_above(1 << 20).unwrap();
        assert_eq!(shard.stats().sealed_segments, 1);
        let after = shard.snapshot().unwrap();
        assert!(after.appendable.is_empty(), "nothing left to copy: {} keys", after.appendable.len());
        assert_eq!(after.version, before.version);
        let all = |s: &Snapshot| s.chunk(None, usize::MAX, usize::MAX).unwrap();
        assert_eq!(all(&after), all(&before), "the same contents, read from the table");
        shard.close().unwrap();
    }
}
