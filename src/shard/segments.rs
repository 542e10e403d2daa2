//! The segment set of a shard and how operations change it. Lives under
//! the shard's one `RwLock`: writers apply under the write lock, readers
//! and the flush capture (F2) hold the read lock, so the set is always
//! seen between whole operations (and whole batches).
//!
//! Invariant: a key has at most one live copy across all segments.
//! Changing a key that lives in an immutable segment moves it (copy-on-
//! write): the new version goes to the appendable segment, the old copy is
//! marked deleted in its segment's side-car with the same version.

use super::appendable::Appendable;
use super::arena::Slice;
use super::bloom::Probe;
use super::entry::{Entry, Holding, Items, Value};
use super::merging::{held_from, Merged};
use super::op::{check_append, wrong_kind, OpRef, MAX_LIST_SIZE};
use super::sealed::Sealed;
use crate::error::{Error, Result};
use crate::status::{KEEL_STATUS_INVALID_ARGUMENT, KEEL_STATUS_WRONG_KIND};
use std::collections::HashMap;
use std::sync::Arc;

/// What a key holds, as far as an append cares.
#[derive(Clone, Copy)]
pub enum Holds {
    Value,
    /// A posting list of this many encoded bytes.
    List(usize),
}

impl Holds {
    fn of<B: Holding>(value: &Value<B>) -> Holds {
        match value {
            Value::Bytes(_) => Holds::Value,
            Value::Posting(items) => Holds::List(items.encoded_len()),
        }
    }
}

/// What each key is left holding by the batches checked so far in a
/// group (None: deleted).
pub type Overlay<'a> = HashMap<&'a [u8], Option<Holds>>;

/// `Segments::replay` candidates: every immutable segment may hold the key.
pub const ALL_SEALED: u64 = u64::MAX;

pub struct Segments {
    /// The shard's identity (manifest.rs), carried by every segment file.
    pub shard: u128,
    pub appendable: Appendable,
    /// Immutable segments, oldest first.
    pub sealed: Vec<Arc<Sealed>>,
    /// Changes whenever `sealed` does (a seal, a table swapped in, a
    /// merge): keys may have moved into table blocks no read has checked
    /// since (`Inner::log_and_apply`).
    pub layout: u64,
    /// Version of the last operation applied (whole batches only).
    pub applied: u64,
    pub next_id: u64,
}

/// Where the live copy of a key is.
enum Place {
    Appendable,
    Sealed(usize),
}

/// A WAL operation that `Segments::check` would have refused: a log keel
/// wrote holds none (it checks writes before it logs them), a damaged or
/// foreign one, or one written before a limit existed, can.
fn unwritable(version: u64, e: Error) -> Error {
    Error::corruption(format!("WAL operation {version} is one no write can make: {}", e.message))
}

impl Segments {
    fn locate(&self, key: &[u8]) -> Result<Option<(Place, Entry)>> {
        if let Some(e) = self.appendable.map.get(key) {
            // Cloned only when asked for; callers below use kind and version.
            return Ok(Some((Place::Appendable, e.to_owned_entry())));
        }
        let probe = Probe::new(key);
        for (i, s) in self.sealed.iter().enumerate().rev() {
            if let Some(e) = s.get(&probe)? {
                return Ok(Some((Place::Sealed(i), e)));
            }
        }
        Ok(None)
    }

    /// What the live copy holds, without copying posting lists held in
    /// memory (whose encoded length is kept with them). A list found in an
    /// immutable segment is decoded whole by the search, so summing it
    /// costs nothing more.
    fn peek(&self, key: &[u8]) -> Result<Option<Holds>> {
        if let Some(e) = self.appendable.map.get(key) {
            return Ok(Some(Holds::of(&e.value)));
        }
        Ok(self.locate(key)?.map(|(_, e)| Holds::of(&e.value)))
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        Ok(self.locate(key)?.map(|(_, e)| e))
    }

    /// Rejects a batch that would append to a value (WRONG_KIND) or take a
    /// posting list past `max_list` bytes (`Options::max_list_size`;
    /// INVALID_ARGUMENT), before it reaches the WAL (so replay never meets
    /// it). Earlier operations of the batch count, and so do the batches of
    /// the same group before it, whose effects `earlier` holds; a batch
    /// that passes adds its own.
    pub fn check<'a>(&self, ops: impl IntoIterator<Item = OpRef<'a>>, earlier: &mut Overlay<'a>, max_list: usize) -> Result<()> {
        let mut batch: Overlay<'a> = HashMap::new();
        for op in ops {
            let key = op.key();
            let after = match op {
                OpRef::Put { .. } => Some(Holds::Value),
                OpRef::Delete { .. } => None,
                OpRef::Append { item, .. } => {
                    let now = match batch.get(key).or_else(|| earlier.get(key)) {
                        Some(h) => *h,
                        None => self.peek(key)?,
                    };
                    let list = match now {
                        Some(Holds::Value) => return Err(wrong_kind(key)),
                        Some(Holds::List(len)) => len,
                        None => 0,
                    };
                    Some(Holds::List(check_append(key, list, item.len(), max_list)?))
                }
            };
            batch.insert(key, after);
        }
        earlier.extend(batch);
        Ok(())
    }

    /// The live copy of `key` in an immutable segment, if it has one.
    fn locate_sealed(&self, key: &[u8]) -> Result<Option<(usize, Entry)>> {
        let probe = Probe::new(key);
        for (i, s) in self.sealed.iter().enumerate().rev() {
            if let Some(e) = s.get(&probe)? {
                return Ok(Some((i, e)));
            }
        }
        Ok(None)
    }

    /// Applies one checked operation at `version`.
    pub fn apply(&mut self, op: OpRef, version: u64) -> Result<()> {
        let key = op.key();
        if let OpRef::Append { .. } = op {
            // An append extends the list it finds: it needs the entry. A key
            // lives in one place: one the appendable segment holds is in no
            // immutable segment, whose blocks are not read then (a filter's
            // false positive would read a block the check before logging,
            // which found the key here, did not: a damaged one would fail
            // the batch halfway). Otherwise, when no immutable segment
            // holds it, the appendable segment applies it with one search.
            if !self.appendable.map.contains_key(key) {
                if let Some((i, e)) = self.locate_sealed(key)? {
                    return self.apply_at(op, version, Some((Place::Sealed(i), Some(e))));
                }
            }
            return self.appendable.apply_here(op, version, false, None).map(|_| ());
        }
        // A put or a delete ends whatever copy there is: the appendable
        // segment applies it whether it held the key or not, and every
        // immutable segment that may hold a live copy marks it deleted
        // without searching for it (`Sealed::move_out`). The filters'
        // bits are asked for first, so their cache misses overlap with each
        // other and with the appendable segment's search.
        let probe = Probe::new(key);
        for s in &self.sealed {
            s.prefetch(&probe);
        }
        self.appendable.apply_here(op, version, false, None)?;
        for s in &self.sealed {
            s.move_out(&probe, version);
        }
        Ok(())
    }

    /// Applies `op` to the key's live copy found at `place` (with its entry
    /// when it is in an immutable segment).
    fn apply_at(&mut self, op: OpRef, version: u64, place: Option<(Place, Option<Entry>)>) -> Result<()> {
        let key = op.key();
        match op {
            OpRef::Put { value, .. } => {
                if let Some((Place::Sealed(i), _)) = place {
                    self.sealed[i].mark_deleted(key, version);
                }
                self.appendable.put(key, value, version);
            }
            OpRef::Delete { .. } => match place {
                Some((Place::Appendable, _)) => self.appendable.remove(key, version),
                Some((Place::Sealed(i), _)) => self.sealed[i].mark_deleted(key, version),
                None => {}
            },
            OpRef::Append { item, .. } => match place {
                Some((Place::Appendable, _)) => match &self.appendable.map[key].value {
                    Value::Posting(items) => {
                        check_append(key, items.encoded_len(), item.len(), MAX_LIST_SIZE)?;
                        self.appendable.push_item(key, item, version)
                    }
                    Value::Bytes(_) => return Err(wrong_kind(key)),
                },
                Some((Place::Sealed(i), Some(Entry { value: Value::Posting(mut items), .. }))) => {
                    check_append(key, items.encoded_len(), item.len(), MAX_LIST_SIZE)?;
                    items.push(item.to_vec());
                    self.sealed[i].mark_deleted(key, version);
                    self.appendable.put_list(key, items, version);
                }
                Some((Place::Sealed(_), _)) => return Err(wrong_kind(key)),
                None => self.appendable.put_list(key, vec![item.to_vec()], version),
            },
        }
        Ok(())
    }

    /// The identity of segment `id` of this shard.
    pub fn ident(&self, segment: u64) -> super::files::Ident {
        super::files::Ident { shard: self.shard, segment }
    }

    pub fn max_version(&self) -> u64 {
        let a = self.appendable.map.values().map(|e| e.version).max().unwrap_or(0);
        self.sealed.iter().map(|s| s.max_version()).fold(a, u64::max)
    }

    /// Ends a write (a single operation or a whole batch) at `version`.
    pub fn finish(&mut self, version: u64) {
        self.applied = version;
        self.appendable.finish(version);
    }

    /// Replay of one WAL operation (F6). First restores the one-live-copy
    /// invariant for its key (a crash can leave an old copy whose deletion
    /// was not yet saved: only keys of unacknowledged operations can be in
    /// that state, and replay visits all of them), then applies the
    /// operation only if it is newer than the key's stored version.
    /// Returns whether it changed anything (false: already in the segments).
    /// `candidates`: the immutable segments that may hold the key, bit i
    /// for `sealed[i]` (`ALL_SEALED` when unknown; segments past the 64th
    /// are always searched): replay checks the filters beforehand.
    /// `held`: the put's value, held where it is (`Appendable::apply_here`).
    pub fn replay(&mut self, op: OpRef, version: u64, candidates: u64, held: Option<&Slice>) -> Result<bool> {
        let key = op.key();
        // (place, version, entry: only for immutable segments)
        let mut copies: Vec<(Place, u64, Option<Entry>)> = Vec::new();
        if candidates != 0 || self.sealed.len() > 64 {
            let probe = Probe::new(key);
            for (i, s) in self.sealed.iter().enumerate() {
                if i < 64 && candidates & (1 << i) == 0 {
                    continue;
                }
                if let Some(e) = s.get(&probe)? {
                    copies.push((Place::Sealed(i), e.version, Some(e)));
                }
            }
        }
        if copies.is_empty() {
            // The common case: the key can only be in the appendable
            // segment; gate and apply with one search.
            return self.appendable.apply_here(op, version, true, held).map_err(|e| unwritable(version, e));
        }
        if let Some(e) = self.appendable.map.get(key) {
            copies.push((Place::Appendable, e.version, None));
        }
        let deduplicated = copies.len() > 1;
        if deduplicated {
            copies.sort_by_key(|c| std::cmp::Reverse(c.1));
            let keep = copies[0].1;
            for (place, _, _) in copies.drain(1..) {
                match place {
                    Place::Appendable => self.appendable.remove(key, keep),
                    Place::Sealed(i) => self.sealed[i].mark_deleted(key, keep),
                }
            }
        }
        let live = copies.pop();
        if live.as_ref().is_some_and(|c| c.1 >= version) {
            return Ok(deduplicated);
        }
        if live.is_none() && matches!(op, OpRef::Delete { .. }) {
            return Ok(deduplicated); // deleting what is not there
        }
        match self.apply_at(op, version, live.map(|(p, _, e)| (p, e))).map(|()| true) {
            Err(e) if [KEEL_STATUS_WRONG_KIND, KEEL_STATUS_INVALID_ARGUMENT].contains(&e.status) => Err(unwritable(version, e)),
            other => other,
        }
    }

    /// Every live key in [start, end) (end None = unbounded), in order.
    /// Copies the range: the caller holds the read lock only this long.
    /// Reads no table block past the range (`Sealed::live_from`), so
    /// damage there does not fail it; in-memory maps may yield a key past
    /// `end`, which ends the copy.
    pub fn range(&self, start: &[u8], end: Option<&[u8]>) -> Result<Vec<(Vec<u8>, Entry)>> {
        if end.is_some_and(|e| e <= start) {
            return Ok(Vec::new()); // an empty (or reversed) range
        }
        let in_range = |k: &[u8]| end.map_or(true, |e| k < e);
        let sealed = self.sealed.iter().map(|s| s.live_from(start, end, u64::MAX));
        let mut out = Vec::new();
        for r in Merged::new(sealed.chain([held_from(&self.appendable.map, start)])) {
            let (k, e) = r?;
            if !in_range(k) {
                break;
            }
            out.push((k.to_vec(), e.to_entry()?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::bloom::hash64;
    use crate::shard::entry::EntryRef;
    use crate::shard::files::Ident;
    use crate::shard::sealed::Data;
    use crate::shard::table;

    /// A put or a delete marks every table whose filter may hold the key,
    /// without searching it: a false positive leaves a deletion of a key
    /// the table does not hold, which changes no read, and a real copy is
    /// moved away as before.
    #[test]
    fn moves_mark_what_the_filter_may_hold_and_nothing_else_changes() {
        let dir = crate::test_dir::TestDir::new("segments");
        let fs: Arc<dyn crate::fs::FileSystem> = Arc::new(crate::fs::StdFs::direct());
        let held: Vec<(Vec<u8>, Entry)> =
            (0..2000u32).map(|i| (format!("held-{i:05}").into_bytes(), Entry { version: 1, value: Value::Bytes(vec![1]) })).collect();
        let ident = Ident { shard: 5, segment: 1 };
        let path = dir.join(super::super::files::name(1, super::super::files::TABLE));
        let t = table::write(&*fs, &path, held.iter().map(|(k, e)| Ok((k.as_slice(), EntryRef::from(e)))), &[], ident).unwrap();
        // A key the table does not hold but its filter may (about 1 in 1,400).
        let phantom = (0..100_000u32)
            .map(|i| format!("other-{i}").into_bytes())
            .find(|k| t.may_contain(hash64(k)) && t.get(&Probe::new(k)).unwrap().is_none())
            .expect("a false positive among 100000 keys");
        let sealed = Arc::new(Sealed::new(&dir, ident, Data::Table(t), 1));
        let appendable = Appendable::create(&fs, &dir, Ident { shard: 5, segment: 2 }, 1).unwrap();
        let mut segs = Segments { shard: 5, appendable, sealed: vec![sealed.clone()], layout: 0, applied: 1, next_id: 3 };
        let put = |segs: &mut Segments, key: &[u8], version| segs.apply(OpRef::Put { key, value: b"new" }, version).unwrap();
        put(&mut segs, &phantom, 2);
        assert_eq!(sealed.deleted_count(), 1, "the false positive is marked");
        put(&mut segs, b"held-00007", 3);
        put(&mut segs, b"held-00007", 4); // already moved: marked once, at 3
        assert_eq!(sealed.deleted_count(), 2);
        assert_eq!(sealed.deletions_after(2), vec![(b"held-00007".to_vec(), 3)]);
        for (key, want) in [(&phantom[..], 2), (b"held-00007", 4)] {
            assert_eq!(segs.get(key).unwrap(), Some(Entry { version: want, value: Value::Bytes(b"new".to_vec()) }));
        }
        assert_eq!(segs.get(b"held-00008").unwrap().map(|e| e.version), Some(1));
        // What a merge or a snapshot reads: every table key but the moved one.
        let live: Vec<Vec<u8>> = sealed.live_from(b"", None, u64::MAX).map(|r| r.unwrap().0.to_vec()).collect();
        assert_eq!(live.len(), held.len() - 1);
        assert!(!live.iter().any(|k| k == b"held-00007"));
        // A delete of a key held in the table, and of one the appendable
        // segment holds, leaves neither readable.
        segs.apply(OpRef::Delete { key: b"held-00009" }, 5).unwrap();
        segs.apply(OpRef::Delete { key: &phantom }, 6).unwrap();
        assert_eq!((segs.get(b"held-00009").unwrap(), segs.get(&phantom).unwrap()), (None, None));
        assert_eq!(segs.range(b"", None).unwrap().len(), held.len() - 1);
    }

    /// An append to a key the appendable segment holds reads no table: a
    /// table whose filter falsely may hold the key would have its block
    /// read, one the check before logging (which found the key in the
    /// appendable segment) never read, and a damaged block there failed
    /// the apply in the middle of a batch.
    #[test]
    fn an_append_to_a_list_held_in_memory_reads_no_table_block() {
        let dir = crate::test_dir::TestDir::new("segments-fp");
        let fs: Arc<dyn crate::fs::FileSystem> = Arc::new(crate::fs::StdFs::direct());
        let held = Entry { version: 1, value: Value::Bytes(vec![b'v'; 200]) };
        let ident = Ident { shard: 5, segment: 1 };
        let path = dir.join(super::super::files::name(1, super::super::files::TABLE));
        let t = table::write(&*fs, &path, std::iter::once(Ok((&b"held"[..], EntryRef::from(&held)))), &[], ident).unwrap();
        // Its one block, damaged before anything read it.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 0xff;
        std::os::unix::fs::FileExt::write_all_at(&std::fs::File::options().write(true).open(&path).unwrap(), &bytes[100..101], 100).unwrap();
        let phantom = (0..1_000_000u32)
            .map(|i| format!("other-{i}").into_bytes())
            .find(|k| t.may_contain(hash64(k)))
            .expect("a false positive among 1000000 keys");
        let sealed = Arc::new(Sealed::new(&dir, ident, Data::Table(t), 1));
        let appendable = Appendable::create(&fs, &dir, Ident { shard: 5, segment: 2 }, 1).unwrap();
        let mut segs = Segments { shard: 5, appendable, sealed: vec![sealed], layout: 0, applied: 1, next_id: 3 };
        segs.appendable.apply_here(OpRef::Append { key: &phantom, item: b"a" }, 2, false, None).unwrap();
        segs.apply(OpRef::Append { key: &phantom, item: b"b" }, 3).unwrap();
        assert_eq!(segs.appendable.map.get(&phantom[..]).map(|e| e.to_owned_entry().value), Some(Value::Posting(vec![b"a".to_vec(), b"b".to_vec()])));
        assert!(segs.get(b"held").is_err(), "the block is damaged");
    }
}
