//! An immutable segment: its data (a table file, or the frozen map of an
//! appendable segment while its table is being written) plus the deletion
//! side-car `seg-<id>.del`, the only part that changes. The side-car is
//! written when the table is (so a listed table without one is damage)
//! and starts with the segment's identity.

use super::bloom::Probe;
use super::entry::{Entry, HeldEntry};
use super::merging::{held_from, Source};
use super::files::{self, Cursor, Ident};
use super::key::Key;
use super::steps::{Step, Steps};
use super::table::Table;
use crate::error::Result;
use crate::fs::FileSystem;
use parking_lot::Mutex;
use std::collections::hash_map::{Entry as Slot, HashMap};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const DEL_MAGIC: u64 = 0x324c_4544_4c45_454b; // "KEELDEL2"

// Not boxed: a Data sits once in each Arc'd Sealed, and a boxed Table would
// cost every read of the segment a pointer chase to save a few hundred bytes.
#[allow(clippy::large_enum_variant)]
pub enum Data {
    /// A sealed appendable segment whose table is being written.
    Frozen(Arc<BTreeMap<Key, HeldEntry>>),
    Table(Table),
}

struct Deletions {
    /// key -> version of the operation that deleted or moved it away
    /// (a hash map: every lookup that finds the key in the data asks it;
    /// `Key`: no allocation per deletion of a short key).
    keys: HashMap<Key, u64>,
    /// Every deletion <= this is in the side-car file: the segment's
    /// persisted version.
    saved_upto: u64,
    max_version: u64,
}

/// The deletions with version <= `bound`, copied out (inline keys copy
/// without allocating) so the side-car is built after the lock is released.
fn upto(d: &Deletions, bound: u64) -> Vec<(Key, u64)> {
    d.keys.iter().filter(|(_, &v)| v <= bound).map(|(k, &v)| (k.clone(), v)).collect()
}

pub struct Sealed {
    pub id: u64,
    pub ident: Ident,
    pub data: Data,
    /// What its old data log had persisted when it was sealed (for a
    /// table made otherwise, what the table holds): what a reopen finds of
    /// it while the manifest still lists it by its log files, that is
    /// until its table and side-car are both written (`data_persisted`).
    log_persisted: u64,
    del_path: PathBuf,
    deletions: Mutex<Deletions>,
    /// The side-car file exists (the manifest lists a table only then).
    side_car: AtomicBool,
}

impl Sealed {
    pub fn new(dir: &Path, ident: Ident, data: Data, persisted: u64) -> Sealed {
        let id = ident.segment;
        Sealed {
            id,
            ident,
            data,
            log_persisted: persisted,
            del_path: dir.join(files::name(id, files::DELETIONS)),
            deletions: Mutex::new(Deletions { keys: HashMap::new(), saved_upto: persisted, max_version: 0 }),
            side_car: AtomicBool::new(false),
        }
    }

    /// Opens a table segment with its side-car. A missing side-car is
    /// CORRUPTION when `required` (a listed table; only a segment sealed
    /// at open may have none: its deletions are all still in the WAL).
    pub fn load(fs: &dyn FileSystem, dir: &Path, ident: Ident, table: Table, required: bool) -> Result<Sealed> {
        let persisted = table.max_version;
        let s = Sealed::new(dir, ident, Data::Table(table), persisted);
        match files::read_small(fs, &s.del_path)? {
            None if required => {
                return Err(crate::error::Error::corruption(format!("{}: missing", s.del_path.display())));
            }
            None => {}
            Some(bytes) => {
                let mut c = Cursor { bytes: files::open_small(DEL_MAGIC, &bytes, &s.del_path)? };
                // The frame's checksum held: a body that does not decode is
                // a file keel did not write, named as such.
                let cut = |_| crate::error::Error::corruption(format!("{}: deletions cut short", s.del_path.display()));
                ident.check(Ident::decode(&mut c).map_err(cut)?, &s.del_path)?;
                s.side_car.store(true, Ordering::Release);
                let mut d = s.deletions.lock();
                d.saved_upto = d.saved_upto.max(c.u64().map_err(cut)?);
                while !c.bytes.is_empty() {
                    let key = Key::new(c.bytes().map_err(cut)?);
                    let v = c.u64().map_err(cut)?;
                    d.max_version = d.max_version.max(v);
                    d.keys.insert(key, v);
                }
            }
        }
        Ok(s)
    }

    /// Same data under a new form (the frozen map replaced by its table),
    /// taking over the deletions made meanwhile.
    pub fn with_data(&self, data: Data, persisted: u64) -> Sealed {
        let d = self.deletions.lock();
        Sealed {
            id: self.id,
            ident: self.ident,
            log_persisted: self.log_persisted,
            data,
            del_path: self.del_path.clone(),
            deletions: Mutex::new(Deletions {
                keys: d.keys.clone(),
                saved_upto: d.saved_upto.max(persisted),
                max_version: d.max_version,
            }),
            side_car: AtomicBool::new(false),
        }
    }

    pub fn table(&self) -> Option<&Table> {
        match &self.data {
            Data::Table(t) => Some(t),
            Data::Frozen(_) => None,
        }
    }

    /// Entries in the data, live or deleted.
    pub fn len(&self) -> u64 {
        match &self.data {
            Data::Table(t) => t.count,
            Data::Frozen(m) => m.len() as u64,
        }
    }

    pub fn size(&self) -> usize {
        match &self.data {
            Data::Table(t) => t.size(),
            Data::Frozen(_) => 0,
        }
    }

    pub fn deleted_count(&self) -> usize {
        self.deletions.lock().keys.len()
    }

    /// The live entry for `key` (None when absent or deleted).
    pub fn get(&self, probe: &Probe) -> Result<Option<Entry>> {
        let deleted = || self.deletions.lock().keys.contains_key(probe.key);
        match &self.data {
            // The filter first: it rejects most keys for free. Then the
            // deletions, before the block: a key moved away is not read,
            // so an append after a delete in one batch reads nothing the
            // check before logging did not (a damaged block would fail it
            // halfway through the batch).
            Data::Table(t) => {
                if !t.may_contain(probe.hash) || deleted() {
                    return Ok(None);
                }
                t.get(probe)
            }
            Data::Frozen(m) => Ok(m.get(probe.key).map(HeldEntry::to_owned_entry).filter(|_| !deleted())),
        }
    }

    /// Starts reading, in the background, what a search of the data for
    /// `key` reads (`Table::will_search`; a frozen map is in memory).
    pub fn will_search(&self, key: &[u8], last: Option<usize>) -> Option<usize> {
        match &self.data {
            Data::Table(t) => t.will_search(key, last),
            Data::Frozen(_) => None,
        }
    }

    /// False when the data certainly does not hold the key of `hash` (a
    /// table's Bloom filter; a frozen map has none, so always true).
    pub fn may_hold(&self, hash: u64) -> bool {
        match &self.data {
            Data::Table(t) => t.may_contain(hash),
            Data::Frozen(_) => true,
        }
    }

    pub fn mark_deleted(&self, key: &[u8], version: u64) {
        let mut d = self.deletions.lock();
        d.keys.insert(Key::new(key), version);
        d.max_version = d.max_version.max(version);
    }

    /// A hint that `move_out(probe, ..)` will run soon: fetches the
    /// table's filter bits it reads first (a frozen map has none).
    pub fn prefetch(&self, probe: &Probe) {
        if let Data::Table(t) = &self.data {
            t.prefetch_filter(probe.hash);
        }
    }

    /// A put or a delete at `version` moving the key away (copy-on-write),
    /// without searching a table for it: marks the key deleted at
    /// `version` when the data may hold it (a table's Bloom filter; a
    /// frozen map, in memory, is searched) and it is not deleted here
    /// already. What this saves is the table search (index, block, entry:
    /// cache misses in a large mapping), which was a quarter of a buffered
    /// put's CPU. A false positive of the filter (about 0.07 %) leaves a
    /// deletion of a key the data does not hold, which no copy ever meets:
    /// lookups, merges and snapshots ask the deletions only about keys
    /// found in the data, and a merge carries it (like any deletion above
    /// its bound) only into a table whose copies of the key are older than
    /// it, so that write or an earlier one already moved each of them
    /// away. A merge past its version drops it.
    pub fn move_out(&self, probe: &Probe, version: u64) {
        let may_hold = match &self.data {
            Data::Table(t) => t.may_contain(probe.hash),
            Data::Frozen(m) => m.contains_key(probe.key),
        };
        if !may_hold {
            return;
        }
        let mut guard = self.deletions.lock();
        let d = &mut *guard;
        if let Slot::Vacant(v) = d.keys.entry(Key::new(probe.key)) {
            v.insert(version);
            d.max_version = d.max_version.max(version);
        }
    }

    /// Has unsaved changes: deletions after the persisted version, or
    /// data a reopen would not find (a frozen map, or a table without its
    /// side-car, counts, so F5 never acks past its old log).
    pub fn dirty(&self) -> bool {
        let d = self.deletions.lock();
        self.listable().is_none() || d.max_version > d.saved_upto
    }

    /// Largest version in the data or the side-car.
    pub fn max_version(&self) -> u64 {
        let data = match &self.data {
            Data::Table(t) => t.max_version,
            Data::Frozen(m) => m.values().map(|e| e.version).max().unwrap_or(0),
        };
        data.max(self.deletions.lock().max_version)
    }

    /// Versions up to this are durable in the data as a reopen finds it:
    /// all of them (u64::MAX) for a table the manifest can list, one with
    /// its side-car written; otherwise what the old log had persisted when
    /// the segment was sealed. The manifest lists a table without its
    /// side-car by those log files, and a reopen reads them instead of the
    /// table (which it removes), so a table written but not yet listable
    /// does not yet hold what its log lacks (F3's bound, F5's ack).
    pub fn data_persisted(&self) -> u64 {
        match self.listable() {
            Some(_) => u64::MAX,
            None => self.log_persisted,
        }
    }

    /// Every change <= this is durable: the side-car's saved version, but
    /// never beyond what the data itself has on disk as a reopen finds it
    /// (a frozen map, or a table whose side-car failed to be written, is
    /// only as durable as its old log, however far its deletions got: F5
    /// must not ack the WAL past that).
    pub fn persisted(&self) -> u64 {
        self.deletions.lock().saved_upto.min(self.data_persisted())
    }

    /// Deletions with version > `since`, for handing over to a merged segment.
    pub fn deletions_after(&self, since: u64) -> Vec<(Vec<u8>, u64)> {
        self.deletions.lock().keys.iter().filter(|(_, &v)| v > since).map(|(k, &v)| (k.as_slice().to_vec(), v)).collect()
    }

    /// The flusher of a copy-on-write source (F3, F4): persists every
    /// deletion with version <= `bound` (the destination's persisted
    /// version, so a moved key is never deleted here before its copy is
    /// durable there) and then moves the persisted version to `bound`.
    pub fn flush(&self, fs: &dyn FileSystem, steps: &Steps, bound: u64) -> Result<()> {
        let saved = {
            let mut d = self.deletions.lock();
            let saved = d.saved_upto;
            if !d.keys.values().any(|&v| v > saved && v <= bound) {
                // Everything at or below the bound is already in the file.
                d.saved_upto = saved.max(bound);
                return Ok(());
            }
            upto(&d, bound)
        };
        let body = self.side_car(saved, bound);
        steps.at(Step::SideCar(self.id));
        crate::fs::replace(fs, &self.del_path, &body)?;
        self.side_car.store(true, Ordering::Release);
        let mut d = self.deletions.lock();
        d.saved_upto = d.saved_upto.max(bound);
        Ok(())
    }

    /// Writes the side-car with the deletions saved so far: when a table
    /// is created, before the manifest lists it.
    pub fn write_side_car(&self, fs: &dyn FileSystem, steps: &Steps) -> Result<()> {
        let (saved, bound) = {
            let d = self.deletions.lock();
            (upto(&d, d.saved_upto), d.saved_upto)
        };
        let body = self.side_car(saved, bound);
        steps.at(Step::SideCar(self.id));
        crate::fs::replace(fs, &self.del_path, &body)?;
        self.side_car.store(true, Ordering::Release);
        Ok(())
    }

    /// A table with its side-car written: what the manifest may list as
    /// an immutable segment (until then its log files stay the truth).
    pub fn listable(&self) -> Option<&Table> {
        self.table().filter(|_| self.side_car.load(Ordering::Acquire))
    }

    /// The side-car file holding `saved`, every deletion <= `bound`
    /// (`upto`). Encoded without the deletions' lock, which every write
    /// that moves a key out of this segment takes, and in no particular
    /// order: a load puts them in a hash map, and sorting them, every pass,
    /// for every segment with new deletions, was a fifth of the flush's
    /// CPU under a stream of puts, CPU the writers' cores pay for.
    fn side_car(&self, saved: Vec<(Key, u64)>, bound: u64) -> Vec<u8> {
        let mut body = Vec::new();
        self.ident.encode(&mut body);
        body.extend_from_slice(&bound.to_le_bytes());
        for (k, v) in saved {
            files::put_bytes(&mut body, k.as_slice());
            body.extend_from_slice(&v.to_le_bytes());
        }
        files::seal_small(DEL_MAGIC, &body)
    }

    /// Entries with key >= `start` in key order, read in place, without
    /// those deleted at a version <= `deleted_upto` (u64::MAX: every
    /// deletion counts). A deletion made while this runs has a version
    /// past anything applied before, so what a caller's bound leaves out
    /// does not change under it. A table reads no block that starts at or
    /// past `end` (`Table::refs_range`); a frozen map may yield keys past
    /// it, read from memory, which cannot fail.
    pub fn live_from<'a>(&'a self, start: &'a [u8], end: Option<&'a [u8]>, deleted_upto: u64) -> Source<'a> {
        let all: Source<'a> = match &self.data {
            Data::Table(t) => Box::new(t.refs_range(start, end)),
            Data::Frozen(m) => held_from(m, start),
        };
        let deleted = move |k: &[u8]| self.deletions.lock().keys.get(k).is_some_and(|&v| v <= deleted_upto);
        Box::new(all.filter(move |r| !matches!(r, Ok((k, _)) if deleted(k))))
    }

    /// Its files in `dir`: the table and the side-car.
    pub fn files(&self, dir: &Path) -> [PathBuf; 2] {
        [dir.join(files::name(self.id, files::TABLE)), self.del_path.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_segment_is_never_more_persisted_than_its_old_log() {
        let dir = crate::test_dir::TestDir::new("sealed");
        let fs = crate::fs::StdFs::direct();
        let frozen = Sealed::new(&dir, Ident { shard: 1, segment: 7 }, Data::Frozen(Arc::new(BTreeMap::new())), 5);
        frozen.mark_deleted(b"k", 50);
        frozen.flush(&fs, &Steps::default(), 100).unwrap(); // the side-car reaches 100...
        assert_eq!(frozen.persisted(), 5); // ...the data does not
        assert!(frozen.dirty());
    }

    /// A side-car whose frame's checksum holds but whose deletions do not
    /// decode (a file keel did not write) fails the load with CORRUPTION
    /// naming the side-car.
    #[test]
    fn a_side_car_that_does_not_decode_names_itself() {
        let dir = crate::test_dir::TestDir::new("sealed-side-car");
        let fs = crate::fs::StdFs::direct();
        let ident = Ident { shard: 1, segment: 7 };
        let entry = crate::shard::Entry { version: 1, value: crate::shard::Value::Bytes(b"v".to_vec()) };
        let rows = [(b"k".as_slice(), super::super::entry::EntryRef::from(&entry))];
        let path = dir.join(files::name(7, files::TABLE));
        let table = super::super::table::write(&fs, &path, rows.into_iter().map(Ok), &[], ident).unwrap();
        let mut body = Vec::new();
        ident.encode(&mut body);
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&100u32.to_le_bytes()); // a key of 100 bytes, with 1 there
        body.push(b'k');
        let del_path = dir.join(files::name(7, files::DELETIONS));
        std::fs::write(&del_path, files::seal_small(DEL_MAGIC, &body)).unwrap();
        let e = Sealed::load(&fs, &dir, ident, table, true).err().expect("the load fails");
        assert_eq!(e.status, crate::status::KEEL_STATUS_CORRUPTION, "{e}");
        assert!(e.message.contains(&*del_path.to_string_lossy()), "{e}");
    }
}
