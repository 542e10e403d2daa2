//! The appendable segment: an in-memory sorted map that takes every new
//! write and copy-on-write move, persisted by an append-only data log.
//!
//! Log record: `[u32 body length][u32 crc32 of body][body]`, body =
//! `[u64 version][u8 kind][u32 key length][key][payload]`. Kinds: a value,
//! a whole posting list (a key created or moved here), one posting item
//! (an append to a list already here), a tombstone (a delete of a key here).
//! Writes stage records with the crc left zero; the flusher fills it in
//! just before it writes them, so the write path does not compute it.
//! The state file `seg-<id>.state` records how much of the log is durable,
//! the crc32 of those bytes and the segment's identity; bytes past it are a
//! crash's unsynced tail and are dropped at load. It is written when the
//! segment is created, so a listed segment without one is damage.

use super::arena::{Arena, Slice};
use super::staged::{Payload, Records};
use super::entry::{decode_list, encode_list, Entry, HeldEntry, Items, Value};
use super::op::{check_append, wrong_kind, OpRef, MAX_LIST_SIZE};
use super::files::{self, Cursor, Ident};
use super::key::Key;
use super::steps::{Step, Steps};
use crate::error::{Error, Result};
use crate::fs::{File, FileSystem};
use parking_lot::Mutex;
use std::collections::btree_map::{BTreeMap, Entry as Slot};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const REC_VALUE: u8 = 1;
const REC_LIST: u8 = 2;
const REC_ITEM: u8 = 3;
const REC_TOMBSTONE: u8 = 4;
const STATE_MAGIC: u64 = 0x3254_5453_4c45_454b; // "KEELSTT2"

/// A record of a data log being loaded (`Appendable::load`).
struct LoadRecord<'a> {
    /// Made in log order: in key order a key sits anywhere in the log's
    /// bytes, and a comparison of two inline keys reads no other memory.
    key: Key,
    /// Its place in the log.
    at: usize,
    version: u64,
    payload: Loaded<'a>,
}

/// A loading record by kind: a value is copied in log order, a list is
/// decoded when its key is folded.
enum Loaded<'a> {
    Value(Slice),
    List(&'a [u8]),
    Item(&'a [u8]),
    Tombstone,
}

/// The keys of the appendable segment; lives under the shard's lock.
pub struct Appendable {
    pub id: u64,
    pub map: BTreeMap<Key, HeldEntry>,
    /// Where the map's values are copied.
    arena: Arena,
    /// Approximate bytes held; the shard seals past a threshold.
    pub weight: usize,
    /// Some value lives in a mapped WAL segment (kept there by replay):
    /// the next flush job seals the segment, which lets the mappings go.
    pub holds_wal: bool,
    /// Log records of the operation being applied, handed to `log` whole
    /// when it is done so a flush never persists half a batch.
    staged: Records,
    pub log: Arc<SegmentLog>,
}

struct LogState {
    /// Records applied but not yet written to the file.
    pending: Records,
    /// The buffer the last flush wrote, emptied, for the next flush to put
    /// in `pending`'s place: `pending` then grows into memory already
    /// touched instead of reallocating (and faulting in fresh pages) from
    /// nothing after every flush. Dropped by a flush that finds nothing to
    /// write, so an idle segment does not keep it.
    spare: Records,
    /// Version of the last operation whose records are in `pending` (or
    /// already durable): a batch boundary.
    pending_version: u64,
    durable_len: u64,
    /// crc32 of the durable bytes of the log.
    crc: crc32fast::Hasher,
}

/// The persistence side of the appendable segment: what its flusher runs.
pub struct SegmentLog {
    fs: Arc<dyn FileSystem>,
    ident: Ident,
    file: Arc<dyn File>,
    log_path: PathBuf,
    state_path: PathBuf,
    state: Mutex<LogState>,
    persisted: AtomicU64,
}

/// The durable state of segment `id`'s log, from its `.state` file:
/// persisted version, durable length, checksum of those bytes, and whose
/// segment the file says it is.
fn read_state(fs: &dyn FileSystem, state_path: &Path) -> Result<(u64, u64, u32, Ident)> {
    let bytes = files::read_small(fs, state_path)?
        .ok_or_else(|| Error::corruption(format!("{}: missing (the segment's durable length is unknown)", state_path.display())))?;
    let mut c = Cursor { bytes: files::open_small(STATE_MAGIC, &bytes, state_path)? };
    let (persisted, len, crc) = (c.u64()?, c.u64()?, c.u32()?);
    Ok((persisted, len, crc, Ident::decode(&mut c)?))
}

impl Appendable {
    /// Creates an empty appendable segment (its log and its first state
    /// file, durably) persisted up to `version`.
    pub fn create(fs: &Arc<dyn FileSystem>, dir: &Path, ident: Ident, version: u64) -> Result<Appendable> {
        let log_path = dir.join(files::name(ident.segment, files::LOG));
        let file = fs.create(&log_path).map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
        let log = SegmentLog::new(fs, dir, ident, file, 0, crc32fast::Hasher::new(), version);
        log.write_state(version, 0, &log.state.lock().crc)?; // syncs the directory
        Ok(Appendable { id: ident.segment, map: BTreeMap::new(), arena: Arena::default(), weight: 0, holds_wal: false, staged: Records::default(), log: Arc::new(log) })
    }

    /// The shard whose segment `id` the `.state` file in `dir` says it
    /// is, when that file is there and readable.
    pub fn owner(fs: &dyn FileSystem, dir: &Path, id: u64) -> Option<u128> {
        read_state(fs, &dir.join(files::name(id, files::STATE))).ok().map(|(.., found)| found.shard)
    }

    /// Loads the durable part of `seg-<id>.log`. Bytes past it (a crash's
    /// unsynced tail) are ignored and overwritten by the next flush. A
    /// missing log or state file, a state file of another segment or a log
    /// whose durable bytes do not match the state's checksum is CORRUPTION.
    pub fn load(fs: &Arc<dyn FileSystem>, dir: &Path, ident: Ident) -> Result<Appendable> {
        let id = ident.segment;
        let state_path = dir.join(files::name(id, files::STATE));
        let (persisted, len, crc, found) = read_state(&**fs, &state_path)?;
        ident.check(found, &state_path)?;
        let log_path = dir.join(files::name(id, files::LOG));
        let file = fs.open(&log_path, true).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::corruption(format!("{}: missing", log_path.display())),
            _ => files::read_error("opening", &log_path, e),
        })?;
        // Checked before the buffer is allocated: the length comes from
        // the state file, and the log must hold at least that much.
        let have = file.len().map_err(|e| files::read_error("reading", &log_path, e))?;
        if have < len {
            return Err(Error::corruption(format!("{}: {have} bytes, shorter than its durable length {len}", log_path.display())));
        }
        let mut bytes = vec![0u8; len as usize];
        files::read_exact(&*file, &mut bytes, 0).map_err(|e| {
            Error::corruption(format!("{}: shorter than its durable length {len}: {e}", log_path.display()))
        })?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&bytes);
        if hasher.clone().finalize() != crc {
            return Err(Error::corruption(format!(
                "{}: its first {len} bytes do not match the checksum in {} (a substituted or damaged log)",
                log_path.display(),
                state_path.display()
            )));
        }
        let log = SegmentLog::new(fs, dir, ident, file, len, hasher, persisted);
        // The records are checked in log order, then folded key by key in
        // key order, and the map is built from its sorted entries in one
        // pass: inserting record by record made one random B-tree search
        // each, most of a load's time.
        let mut arena = Arena::default();
        let mut records = Vec::new();
        let mut weight = 0;
        let mut c = Cursor { bytes: &bytes };
        let bad = |why: &str| Error::corruption(format!("{}: {why}", log.log_path.display()));
        while !c.bytes.is_empty() {
            // The checksums hold from here on: bytes that do not decode
            // are a log keel did not write, named as such.
            let cut = |_| bad("record cut short inside the durable length");
            let (blen, crc) = (c.u32().map_err(cut)? as usize, c.u32().map_err(cut)?);
            let body = c.take(blen).map_err(cut)?;
            if crc32fast::hash(body) != crc {
                return Err(bad("record fails its checksum inside the durable length"));
            }
            let mut b = Cursor { bytes: body };
            let (version, kind) = (b.u64().map_err(cut)?, b.u8().map_err(cut)?);
            let key = b.bytes().map_err(cut)?;
            let payload = match kind {
                // Copied in log order, where the bytes are read in turn.
                REC_VALUE => Loaded::Value(arena.hold(b.bytes)),
                REC_LIST => Loaded::List(b.bytes),
                REC_ITEM => Loaded::Item(b.bytes),
                REC_TOMBSTONE => Loaded::Tombstone,
                k => return Err(bad(&format!("record of unknown kind {k}"))),
            };
            weight += key.len() + b.bytes.len();
            records.push(LoadRecord { key: Key::new(key), at: records.len(), version, payload });
        }
        // By key, each key's records in log order.
        records.sort_unstable_by(|a, b| a.key.cmp(&b.key).then(a.at.cmp(&b.at)));
        let mut entries = Vec::with_capacity(records.len());
        for run in records.chunk_by_mut(|a, b| a.key == b.key) {
            let mut live: Option<(u64, Value<Slice>)> = None;
            for r in run.iter_mut() {
                // Taken: each record is folded once.
                live = match (std::mem::replace(&mut r.payload, Loaded::Tombstone), live) {
                    (Loaded::Value(v), _) => Some((r.version, Value::Bytes(v))),
                    (Loaded::List(list), _) => {
                        let items = decode_list(list).map_err(|_| bad("posting list record cut short"))?;
                        Some((r.version, Value::Posting(items.into())))
                    }
                    (Loaded::Item(item), Some((_, Value::Posting(mut items)))) => {
                        items.push(item);
                        Some((r.version, Value::Posting(items)))
                    }
                    (Loaded::Item(_), _) => return Err(bad("posting item for a key that holds no list")),
                    (Loaded::Tombstone, _) => None,
                };
            }
            if let Some((version, value)) = live {
                entries.push((std::mem::replace(&mut run[0].key, Key::new(&[])), Entry { version, value }));
            }
        }
        // Sorted already: the build takes them in one pass.
        let map = BTreeMap::from_iter(entries);
        Ok(Appendable { id, map, arena, weight, holds_wal: false, staged: Records::default(), log: Arc::new(log) })
    }

    /// Stages a record without its crc: the flusher fills that in
    /// (`Records::seal`) before the bytes are written, off the write path.
    fn record(&mut self, version: u64, kind: u8, key: &[u8], payload: Payload) {
        stage(&mut self.staged, &mut self.weight, version, kind, key, payload);
    }

    pub fn put(&mut self, key: &[u8], value: &[u8], version: u64) {
        let value = self.arena.hold(value);
        self.record(version, REC_VALUE, key, Payload::Held(&value));
        self.map.insert(Key::new(key), Entry { version, value: Value::Bytes(value) });
    }

    /// Places an entry without logging it: only for a snapshot being
    /// received, which is durable only as a whole, once its seal writes it
    /// to a table (an unfinished snapshot is received again from scratch).
    pub fn adopt(&mut self, key: &[u8], e: Entry) {
        self.weight += key.len() + e.value.weight();
        let value = match e.value {
            Value::Bytes(b) => Value::Bytes(b.into()),
            Value::Posting(items) => Value::Posting(items.into()),
        };
        self.map.insert(Key::new(key), Entry { version: e.version, value });
    }

    /// Places a whole posting list here (a new key or a copy-on-write move).
    pub fn put_list(&mut self, key: &[u8], items: Vec<Vec<u8>>, version: u64) {
        let mut payload = Vec::new();
        encode_list(&items, &mut payload);
        self.record(version, REC_LIST, key, Payload::Bytes(&payload));
        self.map.insert(Key::new(key), Entry { version, value: Value::Posting(items.into()) });
    }

    /// Appends to a posting list that is already here.
    pub fn push_item(&mut self, key: &[u8], item: &[u8], version: u64) {
        self.record(version, REC_ITEM, key, Payload::Bytes(item));
        match self.map.get_mut(key) {
            Some(Entry { version: v, value: Value::Posting(items) }) => {
                items.push(item);
                *v = version;
            }
            _ => unreachable!("push_item on a key without a posting list here"),
        }
    }

    /// Applies `op` to a key that no immutable segment holds, with one
    /// search of the map. With `gate`, an operation not newer than the
    /// key's version is skipped (replay). `held`: a put's value kept in
    /// the mapped WAL by replay, taken instead of a copy. Returns whether
    /// anything changed. An append to a value, or one that would take its
    /// list past `MAX_LIST_SIZE`, fails as `Segments::check` refuses it.
    pub fn apply_here(&mut self, op: OpRef, version: u64, gate: bool, held: Option<&Slice>) -> Result<bool> {
        let key = op.key();
        let stale = |e: &HeldEntry| gate && e.version >= version;
        let slot = self.map.entry(Key::new(key));
        if matches!(&slot, Slot::Occupied(o) if stale(o.get())) {
            return Ok(false);
        }
        match (op, slot) {
            (OpRef::Put { value, .. }, slot) => {
                debug_assert!(held.map_or(true, |h| h[..] == *value), "a held value is the put's value");
                self.holds_wal |= held.is_some();
                let value = held.cloned().unwrap_or_else(|| self.arena.hold(value));
                // Staged before the entry takes the value (no second
                // reference to count), while the slot borrows the map.
                stage(&mut self.staged, &mut self.weight, version, REC_VALUE, key, Payload::Held(&value));
                let entry = Entry { version, value: Value::Bytes(value) };
                match slot {
                    Slot::Occupied(mut o) => *o.get_mut() = entry,
                    Slot::Vacant(v) => {
                        v.insert(entry);
                    }
                }
            }
            (OpRef::Delete { .. }, Slot::Occupied(o)) => {
                o.remove();
                self.record(version, REC_TOMBSTONE, key, Payload::Bytes(&[]));
            }
            (OpRef::Delete { .. }, Slot::Vacant(_)) => return Ok(false),
            (OpRef::Append { item, .. }, Slot::Occupied(mut o)) => match &mut o.get_mut().value {
                Value::Posting(items) => {
                    check_append(key, items.encoded_len(), item.len(), MAX_LIST_SIZE)?;
                    items.push(item);
                    o.get_mut().version = version;
                    self.record(version, REC_ITEM, key, Payload::Bytes(item));
                }
                Value::Bytes(_) => return Err(wrong_kind(key)),
            },
            (OpRef::Append { item, .. }, Slot::Vacant(v)) => {
                v.insert(Entry { version, value: Value::Posting(vec![item.to_vec()].into()) });
                let mut list = Vec::with_capacity(item.len() + 4);
                encode_list(&[item.to_vec()], &mut list);
                self.record(version, REC_LIST, key, Payload::Bytes(&list));
            }
        }
        Ok(true)
    }

    pub fn remove(&mut self, key: &[u8], version: u64) {
        if self.map.remove(key).is_some() {
            self.record(version, REC_TOMBSTONE, key, Payload::Bytes(&[]));
        }
    }

    /// Ends an operation (or a whole batch) at `version`: its records
    /// become visible to the flusher together.
    pub fn finish(&mut self, version: u64) {
        let mut st = self.log.state.lock();
        if st.pending.is_empty() && st.pending.capacity() < self.staged.len() {
            // Hands the staged buffer over instead of copying it (at the
            // end of a replay, which stages everything it applied, or when
            // a flush left no room); keeps the empty one's room.
            std::mem::swap(&mut st.pending, &mut self.staged);
        } else {
            st.pending.append(&mut self.staged);
        }
        st.pending_version = version;
    }

    /// Room in the staging buffer for `bytes` more bytes of log records
    /// (replay knows how much a run will stage, held values left out).
    pub fn reserve(&mut self, bytes: usize) {
        self.staged.reserve(bytes);
    }
}

/// `Appendable::record` on the segment's staging fields alone.
fn stage(staged: &mut Records, weight: &mut usize, version: u64, kind: u8, key: &[u8], payload: Payload) {
    *weight += key.len() + payload.len();
    staged.push(version, kind, key, payload);
}

impl SegmentLog {
    fn new(
        fs: &Arc<dyn FileSystem>,
        dir: &Path,
        ident: Ident,
        file: Arc<dyn File>,
        durable_len: u64,
        crc: crc32fast::Hasher,
        persisted: u64,
    ) -> SegmentLog {
        SegmentLog {
            fs: fs.clone(),
            ident,
            file,
            log_path: dir.join(files::name(ident.segment, files::LOG)),
            state_path: dir.join(files::name(ident.segment, files::STATE)),
            state: Mutex::new(LogState { pending: Records::default(), spare: Records::default(), pending_version: persisted, durable_len, crc }),
            persisted: AtomicU64::new(persisted),
        }
    }

    pub fn persisted(&self) -> u64 {
        self.persisted.load(Ordering::Acquire)
    }

    /// The flusher (F4 inside the segment): data, fdatasync, state file,
    /// then the in-memory persisted version. It takes the live pending
    /// records at the time it runs; on failure they are put back and the
    /// persisted version does not move. `wal_durable(v)` must make the WAL
    /// durable up to `v` first: data never reaches disk before its log
    /// record (else a power loss could leave segments ahead of the WAL).
    /// Returns the persisted version, a batch boundary (`pending_version`).
    pub fn flush(&self, steps: &Steps, wal_durable: impl FnOnce(u64) -> Result<()>) -> Result<u64> {
        let (mut bytes, version, offset, mut crc) = {
            let mut st = self.state.lock();
            let spare = std::mem::take(&mut st.spare);
            (std::mem::replace(&mut st.pending, spare), st.pending_version, st.durable_len, st.crc.clone())
        };
        if bytes.is_empty() && version <= self.persisted() {
            // Nothing was written since the last pass: the room is not needed.
            let mut st = self.state.lock();
            if st.pending.is_empty() {
                st.pending = Records::default();
            }
            return Ok(self.persisted());
        }
        // With nothing to write the state file still moves to `version`
        // (operations that changed only immutable segments, or nothing):
        // the files then prove every version the WAL is acked past, which
        // open checks against the WAL's first record.
        bytes.seal();
        let parts = bytes.parts();
        for p in &parts {
            crc.update(p);
        }
        let written = wal_durable(version).and_then(|()| self.write_durably(steps, &parts, offset, version, &crc));
        drop(parts);
        let mut st = self.state.lock();
        match written {
            Ok(()) => {
                st.durable_len = offset + bytes.len() as u64;
                st.crc = crc;
                bytes.clear();
                st.spare = bytes;
                drop(st);
                self.persisted.fetch_max(version, Ordering::AcqRel);
                Ok(version)
            }
            Err(e) => {
                // Rewritten at the same offset by the next pass.
                let mut newer = std::mem::replace(&mut st.pending, bytes);
                st.pending.append(&mut newer);
                Err(e)
            }
        }
    }

    fn write_durably(&self, steps: &Steps, parts: &[&[u8]], offset: u64, version: u64, crc: &crc32fast::Hasher) -> Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > 0 {
            let io = |what: &str, e| Error::io(format!("{what} {}", self.log_path.display()), e);
            steps.at(Step::LogWrite);
            self.file.write_at(parts, offset).map_err(|e| io("writing", e))?;
            steps.at(Step::LogSync);
            self.file.sync_data().map_err(|e| io("syncing", e))?;
        }
        steps.at(Step::LogState);
        self.write_state(version, offset + len as u64, crc)
    }

    /// The state file: persisted version, durable length, crc32 of the
    /// durable bytes, identity.
    fn write_state(&self, version: u64, len: u64, crc: &crc32fast::Hasher) -> Result<()> {
        let mut state = Vec::with_capacity(20 + Ident::LEN);
        state.extend_from_slice(&version.to_le_bytes());
        state.extend_from_slice(&len.to_le_bytes());
        state.extend_from_slice(&crc.clone().finalize().to_le_bytes());
        self.ident.encode(&mut state);
        crate::fs::replace(&*self.fs, &self.state_path, &files::seal_small(STATE_MAGIC, &state))
    }

    /// Removes the log and state files (after the segment is sealed).
    pub fn remove_files(&self) -> Result<()> {
        files::remove(&*self.fs, &self.state_path)?;
        files::remove(&*self.fs, &self.log_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::StdFs;

    /// A loaded log is the map its writes left: values replaced or deleted
    /// (several times within one flush and across flushes), posting lists
    /// made, appended to, deleted and made again; keys inline and boxed,
    /// some alike in their first 16 bytes.
    #[test]
    fn a_loaded_log_is_the_map_that_wrote_it() {
        let dir = crate::test_dir::TestDir::new("appendable-load");
        let fs: Arc<dyn FileSystem> = Arc::new(StdFs::direct());
        let ident = Ident { shard: 7, segment: 3 };
        let mut a = Appendable::create(&fs, &dir, ident, 0).unwrap();
        let keys: Vec<Vec<u8>> = (0..40u8).map(|i| [vec![b'k'; 16], vec![i; 1 + (i as usize % 3) * 10]].concat()).collect();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for version in 1..=3000u64 {
            // Even keys mostly hold lists, odd ones values; now and then a
            // key changes kind.
            let i = next(keys.len() as u64) as usize;
            let key = &keys[i];
            let list = (i % 2 == 0) != (next(10) == 0);
            match (next(6), list, a.map.get(&key[..]).map(|e| matches!(e.value, Value::Posting(_)))) {
                (0, _, _) => a.remove(key, version),
                (_, true, Some(true)) => a.push_item(key, &version.to_le_bytes(), version),
                (_, true, _) => a.put_list(key, vec![version.to_be_bytes().to_vec()], version),
                _ => a.put(key, &vec![version as u8; next(300) as usize], version),
            }
            a.finish(version);
            if version % 97 == 0 {
                a.log.flush(&Steps::default(), |_| Ok(())).unwrap();
            }
        }
        a.log.flush(&Steps::default(), |_| Ok(())).unwrap();
        let loaded = Appendable::load(&fs, &dir, ident).unwrap();
        let kinds = |bytes: bool| a.map.values().filter(|e| matches!(e.value, Value::Bytes(_)) == bytes).count();
        assert!(kinds(true) > 5 && kinds(false) > 5, "the writes leave keys of both kinds");
        assert!(a.map.iter().eq(loaded.map.iter()));
        assert_eq!(loaded.weight, a.weight);
    }

    /// A log whose checksums hold but whose records do not decode (a log
    /// keel did not write) fails the load with CORRUPTION naming the log.
    #[test]
    fn a_record_that_does_not_decode_names_the_log() {
        let dir = crate::test_dir::TestDir::new("appendable-undecodable");
        let fs: Arc<dyn FileSystem> = Arc::new(StdFs::direct());
        let ident = Ident { shard: 7, segment: 3 };
        let mut a = Appendable::create(&fs, &dir, ident, 0).unwrap();
        a.put(b"fine", b"value", 1);
        // A posting list whose one item claims 9 bytes and holds 1.
        a.record(2, REC_LIST, b"list", Payload::Bytes(&[9, 0, 0, 0, 1]));
        a.finish(2);
        a.log.flush(&Steps::default(), |_| Ok(())).unwrap();
        let e = Appendable::load(&fs, &dir, ident).err().expect("the load fails");
        assert_eq!(e.status, crate::status::KEEL_STATUS_CORRUPTION, "{e}");
        let log = dir.join(files::name(ident.segment, files::LOG));
        assert!(e.message.contains(&*log.to_string_lossy()) && e.message.contains("posting list"), "{e}");
    }
}
