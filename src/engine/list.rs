//! The engine's shard list, `<dir>/SHARDS`: the ids of its shards
//! (docs/STORAGE.md, "The engine directory").
//!
//! Format 2, a log: `[magic u64 "KEELSHD2"]`, then one 12-byte record
//! per change, `[u32 id][u32 op: 1 listed, 2 unlisted][u32 crc32 of the
//! 8 bytes before]`. A create or a drop appends its record and
//! fdatasyncs it: a few bytes and one sync, however many shards the
//! engine has (format 1 rewrote the whole list each time, so creating
//! n shards cost O(n²) bytes).
//!
//! Power loss during an append leaves the file ending in a record that
//! is cut short or whose bytes never reached the disk: that change was
//! never acknowledged, so the last record failing its checksum is dropped
//! (a bad record before the last is CORRUPTION). Engine open then writes
//! the list again whole (atomically, `fs::replace`), one record per shard,
//! when the tail was torn, when the log holds more than twice as many
//! records as shards (plus `SLACK`), or when it is in format 1 (older keel:
//! `[u32 count][u32 id]*` in the checksummed small-file frame), so appends
//! always follow whole records. A change whose append takes the log past
//! that bound writes it again whole too, so it stays bounded however long
//! the engine stays open: one rewrite per `SLACK` changes at least.

use crate::error::{Error, Result};
use crate::fs::FileSystem;
use crate::shard::files::{self, Cursor};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub(super) const FILE: &str = "SHARDS";
const MAGIC_V1: u64 = 0x3144_4853_4c45_454b; // "KEELSHD1"
const MAGIC: u64 = 0x3244_4853_4c45_454b; // "KEELSHD2"
const HEADER: u64 = 8;
const RECORD: usize = 12;
const LISTED: u32 = 1;
const UNLISTED: u32 = 2;
/// Records beyond twice the shards that the list holds before it is
/// compacted (at open, and after the change that crossed it).
const SLACK: u64 = 64;
/// A longer list is damage (89 million creates and drops between two
/// opens), refused before it is read into memory.
const MAX_BYTES: u64 = 1 << 30;

pub(super) struct ShardList {
    ids: BTreeSet<u32>,
    path: PathBuf,
    /// Bytes of whole records on disk, where the next one goes; None after
    /// a failed append (what reached the file is unknown), so the next
    /// change writes the list whole.
    len: Option<u64>,
}

impl ShardList {
    /// Reads the list of `dir`. A missing list is written empty for a
    /// new engine; with shard directories present it is CORRUPTION (the
    /// list was lost, or an older keel without one wrote the directory),
    /// except in a salvage open, which rebuilds it from the directories'
    /// names. `parse_id` says which names are shard ids.
    pub fn load(fs: &dyn FileSystem, dir: &Path, salvage: bool, parse_id: fn(&str) -> Option<u32>) -> Result<ShardList> {
        let path = dir.join(FILE);
        let (ids, whole) = match files::read_all(fs, &path, MAX_BYTES)? {
            Some(bytes) => {
                let (mut ids, mut whole, torn) = parse(&bytes, &path)?;
                // A torn append is a create or drop that never returned: a
                // create's folder is then empty (its files are made only
                // once its record is durable), a drop's renamed. An
                // unlisted folder with files in it beside a torn tail
                // means the last record was an acknowledged create,
                // damaged. Without a torn tail it is a list cut at a
                // record boundary, or a folder copied in: the engine opens
                // and that id answers CORRUPTION (`Engine::open_shard`).
                // A salvage open lists every such folder again.
                if torn || salvage {
                    for id in unlisted_with_files(fs, dir, &ids, parse_id)? {
                        if !salvage {
                            return Err(Error::corruption(format!(
                                "{}: its last record is damaged, and shard {id}'s folder holds files but is not listed (the record was an acknowledged create); open with salvage to list it again",
                                path.display()
                            )));
                        }
                        ids.insert(id);
                        whole = None;
                    }
                }
                (ids, whole)
            }
            None => {
                let shards_dir = dir.join("shards");
                let names = fs.list(&shards_dir).map_err(|e| Error::io(format!("listing {}", shards_dir.display()), e))?;
                let found: BTreeSet<u32> = names.iter().filter_map(|n| parse_id(n)).collect();
                if !found.is_empty() && !salvage {
                    return Err(Error::corruption(format!(
                        "{}: missing while {} holds {} shard directories (the shard list was lost, or an older keel wrote the directory); open with salvage to rebuild it",
                        path.display(),
                        shards_dir.display(),
                        found.len()
                    )));
                }
                (found, None)
            }
        };
        let mut list = ShardList { ids, path, len: None };
        match whole {
            Some(len) => {
                // A killed process may have appended a record it never
                // synced: acted on now (a folder made or removed, a shard
                // written), it must not be taken back by a power loss.
                fs.open(&list.path, true)
                    .and_then(|f| f.sync_data())
                    .map_err(|e| Error::io(format!("syncing {}", list.path.display()), e))?;
                list.len = Some(len)
            }
            None => list.rewrite(fs, list.ids.clone())?,
        }
        Ok(list)
    }

    pub fn contains(&self, id: u32) -> bool {
        self.ids.contains(&id)
    }

    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids.iter().copied()
    }

    /// Lists `id`, durably. On error the list in memory is unchanged (on
    /// disk the id may or may not be listed).
    pub fn add(&mut self, fs: &dyn FileSystem, id: u32) -> Result<()> {
        self.change(fs, id, LISTED)
    }

    /// Unlists `id`, durably; as `add` on error.
    pub fn remove(&mut self, fs: &dyn FileSystem, id: u32) -> Result<()> {
        self.change(fs, id, UNLISTED)
    }

    fn change(&mut self, fs: &dyn FileSystem, id: u32, op: u32) -> Result<()> {
        let Some(len) = self.len.take() else {
            let mut ids = self.ids.clone();
            apply(&mut ids, id, op);
            self.rewrite(fs, ids.clone())?;
            self.ids = ids;
            return Ok(());
        };
        let rec = record(id, op);
        let appended = (|| {
            let f = fs.open(&self.path, true)?;
            f.write_at(&[&rec], len)?;
            f.sync_data()
        })();
        appended.map_err(|e| Error::io(format!("appending to {}", self.path.display()), e))?;
        let len = len + RECORD as u64;
        self.len = Some(len);
        apply(&mut self.ids, id, op);
        // Compacted as open would compact it, or an engine that stays open
        // through creates and drops grows its list without bound (and an
        // open refuses one past `MAX_BYTES` as damage). The change is
        // durable already: a failed compaction does not undo it, and
        // leaves the list to be written whole by the next change.
        if too_long((len - HEADER) / RECORD as u64, self.ids.len()) && self.rewrite(fs, self.ids.clone()).is_err() {
            self.len = None;
        }
        Ok(())
    }

    /// Writes the list whole as `ids`, atomically, and takes it as the list.
    fn rewrite(&mut self, fs: &dyn FileSystem, ids: BTreeSet<u32>) -> Result<()> {
        let mut bytes = Vec::with_capacity(HEADER as usize + RECORD * ids.len());
        bytes.extend_from_slice(&MAGIC.to_le_bytes());
        for &id in &ids {
            bytes.extend_from_slice(&record(id, LISTED));
        }
        crate::fs::replace(fs, &self.path, &bytes)?;
        self.len = Some(bytes.len() as u64);
        self.ids = ids;
        Ok(())
    }
}

/// The ids of the shard folders in `dir` that hold files and are not in
/// `ids`. A folder that cannot be listed is an error, not an empty one:
/// taken for empty, a damaged record of an acknowledged create passed for
/// a torn append, and the list was written again without it.
fn unlisted_with_files(fs: &dyn FileSystem, dir: &Path, ids: &BTreeSet<u32>, parse_id: fn(&str) -> Option<u32>) -> Result<Vec<u32>> {
    let shards_dir = dir.join("shards");
    let failed = |d: &Path, e| Error::io(format!("listing {}", d.display()), e);
    let mut found = Vec::new();
    let names = fs.list(&shards_dir).map_err(|e| failed(&shards_dir, e))?;
    for id in names.iter().filter_map(|n| parse_id(n)).filter(|id| !ids.contains(id)) {
        let folder = shards_dir.join(id.to_string());
        let has_files = match fs.list(&folder) {
            Ok(names) => !names.is_empty(),
            // A file of that name is no shard folder.
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => false,
            Err(e) => return Err(failed(&folder, e)),
        };
        if has_files {
            found.push(id);
        }
    }
    Ok(found)
}

/// Whether a list of `records` records for `shards` shards is to be
/// written again whole, one record per shard.
fn too_long(records: u64, shards: usize) -> bool {
    records > 2 * shards as u64 + SLACK
}

fn apply(ids: &mut BTreeSet<u32>, id: u32, op: u32) {
    match op {
        LISTED => ids.insert(id),
        _ => ids.remove(&id),
    };
}

fn record(id: u32, op: u32) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..4].copy_from_slice(&id.to_le_bytes());
    r[4..8].copy_from_slice(&op.to_le_bytes());
    let crc = crc32fast::hash(&r[..8]);
    r[8..].copy_from_slice(&crc.to_le_bytes());
    r
}

/// The ids `bytes` lists, and the length of its whole records when the
/// file can be appended to as it is (None: open writes it again whole).
fn parse(bytes: &[u8], path: &Path) -> Result<(BTreeSet<u32>, Option<u64>, bool)> {
    let bad = |why: String| Error::corruption(format!("{}: {why}", path.display()));
    let magic = bytes.get(..8).map(|m| u64::from_le_bytes(m.try_into().unwrap()));
    if magic == Some(MAGIC_V1) {
        let mut c = Cursor { bytes: files::open_small(MAGIC_V1, bytes, path)? };
        let mut ids = BTreeSet::new();
        for _ in 0..c.u32()? {
            ids.insert(c.u32()?);
        }
        if !c.bytes.is_empty() {
            return Err(bad("trailing bytes".into()));
        }
        return Ok((ids, None, false));
    }
    if magic != Some(MAGIC) {
        return Err(bad("bad magic or cut short".into()));
    }
    let records: Vec<&[u8]> = bytes[HEADER as usize..].chunks(RECORD).collect();
    let mut ids = BTreeSet::new();
    let mut torn = false;
    for (i, r) in records.iter().enumerate() {
        let whole = r.len() == RECORD && u32::from_le_bytes(r[8..].try_into().unwrap()) == crc32fast::hash(&r[..8]);
        let op = if whole { u32::from_le_bytes(r[4..8].try_into().unwrap()) } else { 0 };
        if whole && (op == LISTED || op == UNLISTED) {
            apply(&mut ids, u32::from_le_bytes(r[..4].try_into().unwrap()), op);
        } else if i + 1 == records.len() && op == 0 {
            torn = true; // an append a power loss cut: never acknowledged
        } else {
            return Err(bad(format!("record {i} of {} is damaged", records.len())));
        }
    }
    let compact = torn || too_long(records.len() as u64, ids.len());
    Ok((ids, (!compact).then_some(bytes.len() as u64), torn))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(recs: &[(u32, u32)]) -> Vec<u8> {
        let mut b = MAGIC.to_le_bytes().to_vec();
        for &(id, op) in recs {
            b.extend_from_slice(&record(id, op));
        }
        b
    }

    #[test]
    fn records_replay_and_a_torn_last_one_is_dropped() {
        let p = Path::new("SHARDS");
        let b = log(&[(1, LISTED), (2, LISTED), (1, UNLISTED)]);
        let (ids, len, _) = parse(&b, p).unwrap();
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec![2]);
        assert_eq!(len, Some(b.len() as u64));
        // Cut anywhere inside the last record, or its bytes zero: dropped,
        // and open writes the list again.
        for cut in b.len() - RECORD + 1..b.len() {
            let (ids, len, _) = parse(&b[..cut], p).unwrap();
            assert_eq!((ids.into_iter().collect::<Vec<_>>(), len), (vec![1, 2], None), "cut at {cut}");
        }
        let mut zeroed = b.clone();
        zeroed[b.len() - RECORD..].fill(0);
        assert_eq!(parse(&zeroed, p).unwrap().1, None);
        // A damaged record before the last is corruption.
        let mut flipped = b.clone();
        flipped[HEADER as usize + 2] ^= 1;
        assert!(parse(&flipped, p).is_err());
    }

    #[test]
    fn format_one_still_reads_and_is_rewritten() {
        let mut body = 2u32.to_le_bytes().to_vec();
        body.extend_from_slice(&5u32.to_le_bytes());
        body.extend_from_slice(&9u32.to_le_bytes());
        let (ids, len, _) = parse(&files::seal_small(MAGIC_V1, &body), Path::new("SHARDS")).unwrap();
        assert_eq!((ids.into_iter().collect::<Vec<_>>(), len), (vec![5, 9], None));
    }

    #[test]
    fn a_long_log_is_compacted_at_open() {
        let churn: Vec<(u32, u32)> = (0..100).flat_map(|i| [(i, LISTED), (i, UNLISTED)]).collect();
        assert_eq!(parse(&log(&churn), Path::new("SHARDS")).unwrap().1, None);
    }
}
