//! The immutable segment file (`seg-<id>.sst`): sorted entries in
//! checksummed blocks, a sparse index (first key of each block), a Bloom
//! filter and the ids of the segments it replaces (set by a merge).
//!
//! ```text
//! block*   : entry* [u32 offset of each entry]* [u32 entry count]
//!            [u32 crc32 of everything before it]        (~4 KiB each)
//! entry    : [u32 klen][u32 vlen][u64 version][u8 kind][key][value]
//! index    : ([u32 klen][first key][u64 offset][u32 length])*   per block
//! filter   : Bloom bits over every key (bloom.rs)
//! replaced : [u64 segment id]*
//! footer   : [u64 magic][u32 format][u32 0][u64 index_off][u64 filter_off]
//!            [u64 replaced_off][u64 count][u64 max_version]
//!            [u128 shard id][u64 segment id]
//!            [u32 crc32 of index..replaced][u32 crc32 of the footer so far]
//! ```
//! The file is mapped read-only; only the sparse index is decoded into
//! memory (one key per block). A block's checksum is verified the first
//! time it is read (a bit per block remembers it), and a lookup binary-
//! searches the block's entry offsets.

use super::bloom::{self, Probe};
use super::entry::{split_item, Entry, EntryRef, Kind};
use super::files::{self, Cursor, Ident};
use super::key::prefix;
use crate::error::{Error, Result};
use crate::fs::{File, FileSystem, WholeFile};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

const MAGIC: u64 = 0x324c_4254_4c45_454b; // "KEELTBL2"
/// Format 2 added the identity (files::Ident) to the footer.
const FORMAT: u32 = 2;
const FOOTER: usize = 88;
const BLOCK_TARGET: usize = 4096;
/// What `Table::will_search` asks the kernel to read around a block: big
/// enough that the device gets few large reads, not a 4 KiB read per
/// searched block, and small enough that a few searches of a large table
/// do not read all of it.
const WILL_NEED_CHUNK: usize = 256 << 10;
const KIND_VALUE: u8 = 1;
const KIND_POSTING: u8 = 2;

/// The sparse index in memory, laid out for the binary search every
/// lookup (and every write that checks for an older copy) runs: the first
/// 16 bytes of each block's first key as a big-endian number, in an array
/// of their own (four to a cache line, so the search's last steps share
/// lines and the arrays of all tables stay small enough to be cached),
/// so most steps compare two integers; the whole keys sit in one buffer
/// for the blocks the prefix cannot tell apart. (One heap allocation per
/// key made each step two cache misses.)
struct SparseIndex {
    prefixes: Vec<u128>,
    blocks: Vec<IndexEntry>,
    keys: Vec<u8>,
}

struct IndexEntry {
    key_at: usize,
    key_len: u32,
    offset: usize,
    len: usize,
}

impl SparseIndex {
    fn new() -> SparseIndex {
        SparseIndex { prefixes: Vec::new(), blocks: Vec::new(), keys: Vec::new() }
    }

    fn push(&mut self, first_key: &[u8], offset: usize, len: usize) {
        self.prefixes.push(prefix(first_key));
        self.blocks.push(IndexEntry { key_at: self.keys.len(), key_len: first_key.len() as u32, offset, len });
        self.keys.extend_from_slice(first_key);
    }

    fn shrink_to_fit(&mut self) {
        self.prefixes.shrink_to_fit();
        self.blocks.shrink_to_fit();
        self.keys.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.blocks.len()
    }

    fn first_key(&self, i: usize) -> &[u8] {
        self.key_of(&self.blocks[i])
    }

    fn key_of(&self, b: &IndexEntry) -> &[u8] {
        &self.keys[b.key_at..][..b.key_len as usize]
    }

    /// Index of the block that would hold `key`: the last whose first key
    /// is <= `key`.
    fn block_for(&self, key: &[u8]) -> Option<usize> {
        let p = prefix(key);
        let below = self.prefixes.partition_point(|&q| q < p);
        // Blocks whose first keys share the prefix (rare unless keys share
        // their first 16 bytes) are told apart by their whole first keys.
        let equal = match self.prefixes.get(below) {
            Some(&q) if q == p => self.prefixes[below..].partition_point(|&q| q == p),
            _ => 0,
        };
        let at_or_below = self.blocks[below..below + equal].partition_point(|b| self.key_of(b) <= key);
        (below + at_or_below).checked_sub(1)
    }
}


/// Appends to a new file in large writes.
struct Writer {
    file: std::sync::Arc<dyn File>,
    buf: Vec<u8>,
    at: u64,
}

impl Writer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= 1 << 20 {
            self.drain()?;
        }
        Ok(())
    }
    fn drain(&mut self) -> std::io::Result<()> {
        self.file.write_at(&[&self.buf], self.at)?;
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

/// An open immutable segment file.
pub struct Table {
    path: PathBuf,
    map: WholeFile,
    index: SparseIndex,
    filter: (usize, usize),
    pub replaced: Vec<u64>,
    pub count: u64,
    pub max_version: u64,
    pub ident: Ident,
    /// The footer's own checksum: the manifest records it, so a different
    /// table under the same name is caught from the footer alone.
    pub footer_crc: u32,
    /// One bit per block: its checksum was verified.
    verified: Vec<AtomicU8>,
}

/// Appends `key`'s entry to a block. A key or value longer than its u32
/// length field holds is refused before anything is copied, not wrapped
/// into a table that misstates it: only a posting list loaded from a data
/// log written before `MAX_LIST_SIZE` existed can be that long.
fn encode_entry(out: &mut Vec<u8>, key: &[u8], e: EntryRef, file: &Path) -> Result<()> {
    let too_long = |what: &str, len: usize| {
        Error::corruption(format!(
            "{}: the {what} of key {:?} is {len} bytes, more than a table entry can hold (a data log written before \
             the posting list size limit?)",
            file.display(),
            String::from_utf8_lossy(key)
        ))
    };
    let klen = u32::try_from(key.len()).map_err(|_| too_long("key", key.len()))?;
    let vlen = u32::try_from(e.weight()).map_err(|_| too_long("value", e.weight()))?;
    out.extend_from_slice(&klen.to_le_bytes());
    out.extend_from_slice(&vlen.to_le_bytes());
    out.extend_from_slice(&e.version().to_le_bytes());
    out.push(match e.kind() {
        Kind::Value => KIND_VALUE,
        Kind::Posting => KIND_POSTING,
    });
    out.extend_from_slice(key);
    let vstart = out.len();
    e.encode_value(out);
    debug_assert_eq!(out.len() - vstart, vlen as usize, "an entry's weight is its encoded length");
    Ok(())
}

fn decode_entry<'a>(c: &mut Cursor<'a>) -> Result<(&'a [u8], u64, u8, &'a [u8])> {
    let klen = c.u32()? as usize;
    let vlen = c.u32()? as usize;
    let version = c.u64()?;
    let kind = c.u8()?;
    Ok((c.take(klen)?, version, kind, c.take(vlen)?))
}

fn to_entry(version: u64, kind: u8, value: &[u8]) -> Result<Entry> {
    EntryRef::Stored { version, kind: kind_of(kind)?, bytes: value }.to_entry()
}

fn kind_of(kind: u8) -> Result<Kind> {
    match kind {
        KIND_VALUE => Ok(Kind::Value),
        KIND_POSTING => Ok(Kind::Posting),
        k => Err(Error::corruption(format!("segment entry of unknown kind {k}"))),
    }
}

/// Writes a table from entries in strictly increasing key order, durably
/// (temporary file, fsync, rename, directory fsync), and opens it. The
/// entries are read in place (a sealed map's, or a merge's straight from
/// its tables): nothing is copied but into the file's blocks.
pub fn write<'e>(
    fs: &dyn FileSystem,
    path: &Path,
    entries: impl Iterator<Item = Result<(&'e [u8], EntryRef<'e>)>>,
    replaced: &[u64],
    ident: Ident,
) -> Result<Table> {
    let tmp = crate::fs::tmp_path(path);
    // A failed write (a damaged input block, a full disk) or rename
    // removes its temporary file: a merge retried takes a new segment id
    // each time, so leftovers would pile up until the next open.
    let written = write_tmp(fs, &tmp, entries, replaced, ident)
        .and_then(|()| fs.rename(&tmp, path).map_err(|e| Error::io(format!("renaming {}", tmp.display()), e)));
    if let Err(e) = written {
        let _ = fs.remove(&tmp);
        return Err(e);
    }
    files::sync_dir(fs, path.parent().unwrap())?;
    Table::open(fs, path)
}

/// `write`'s table, durably written to `tmp`.
fn write_tmp<'e>(
    fs: &dyn FileSystem,
    tmp: &Path,
    entries: impl Iterator<Item = Result<(&'e [u8], EntryRef<'e>)>>,
    replaced: &[u64],
    ident: Ident,
) -> Result<()> {
    let io = |e| Error::io(format!("writing {}", tmp.display()), e);
    let mut w = Writer { file: fs.create(tmp).map_err(io)?, buf: Vec::with_capacity(2 << 20), at: 0 };
    let mut offset = 0usize;
    let mut index = Vec::new();
    let mut hashes = Vec::new();
    let mut block = Vec::with_capacity(2 * BLOCK_TARGET);
    let mut offsets: Vec<u32> = Vec::new();
    let mut first_key: Option<Vec<u8>> = None;
    // The previous entry's key, in a buffer reused for every entry.
    let mut last_key: Option<Vec<u8>> = None;
    let mut max_version = 0;
    let mut finish_block = |block: &mut Vec<u8>, offsets: &mut Vec<u32>, first: Vec<u8>, w: &mut Writer| -> Result<()> {
        for o in offsets.iter() {
            block.extend_from_slice(&o.to_le_bytes());
        }
        block.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
        offsets.clear();
        let crc = crc32fast::hash(block);
        block.extend_from_slice(&crc.to_le_bytes());
        // A block of one entry just under encode_entry's limit can still
        // pass the index's u32 length field.
        let len = u32::try_from(block.len()).map_err(|_| {
            Error::corruption(format!(
                "{}: a block of {} bytes (key {:?}) is more than a table can index (a data log written before the \
                 posting list size limit?)",
                tmp.display(),
                block.len(),
                String::from_utf8_lossy(&first)
            ))
        })?;
        w.write(block).map_err(io)?;
        index.push((first, offset, len));
        offset += block.len();
        block.clear();
        Ok(())
    };
    for item in entries {
        let (key, entry) = item?;
        if last_key.as_deref().is_some_and(|l| l >= key) {
            return Err(Error::new(crate::status::KEEL_STATUS_PANIC, "table keys out of order (bug)"));
        }
        hashes.push(bloom::hash64(key));
        max_version = max_version.max(entry.version());
        first_key.get_or_insert_with(|| key.to_vec());
        // Under BLOCK_TARGET: a longer block was finished after its last entry.
        offsets.push(block.len() as u32);
        encode_entry(&mut block, key, entry, tmp)?;
        let last = last_key.get_or_insert_with(Vec::new);
        last.clear();
        last.extend_from_slice(key);
        if block.len() >= BLOCK_TARGET {
            finish_block(&mut block, &mut offsets, first_key.take().unwrap(), &mut w)?;
        }
    }
    if !block.is_empty() {
        finish_block(&mut block, &mut offsets, first_key.take().unwrap(), &mut w)?;
    }
    let mut meta = Vec::new();
    for (first_key, offset, len) in &index {
        files::put_bytes(&mut meta, first_key);
        meta.extend_from_slice(&(*offset as u64).to_le_bytes());
        meta.extend_from_slice(&len.to_le_bytes());
    }
    let filter_off = offset + meta.len();
    meta.extend_from_slice(&bloom::build(&hashes));
    let replaced_off = offset + meta.len();
    for id in replaced {
        meta.extend_from_slice(&id.to_le_bytes());
    }
    let mut footer = Vec::with_capacity(FOOTER);
    footer.extend_from_slice(&MAGIC.to_le_bytes());
    footer.extend_from_slice(&FORMAT.to_le_bytes());
    footer.extend_from_slice(&0u32.to_le_bytes());
    for v in [offset as u64, filter_off as u64, replaced_off as u64, hashes.len() as u64, max_version] {
        footer.extend_from_slice(&v.to_le_bytes());
    }
    ident.encode(&mut footer);
    footer.extend_from_slice(&crc32fast::hash(&meta).to_le_bytes());
    footer.extend_from_slice(&crc32fast::hash(&footer).to_le_bytes());
    w.write(&meta).map_err(io)?;
    w.write(&footer).map_err(io)?;
    w.drain().map_err(io)?;
    w.file.sync_data().map_err(io)?;
    Ok(())
}

impl Table {
    pub fn open(fs: &dyn FileSystem, path: &Path) -> Result<Table> {
        let bad = |why: &str| Error::corruption(format!("{}: {why}", path.display()));
        let map = match fs.map_readonly(path).map_err(|e| files::read_error("mapping", path, e))? {
            Some(m) => WholeFile::Map(m),
            // A file system that cannot map (the tests' in-memory one)
            // holds every file in memory already.
            None => WholeFile::Owned(
                files::read_all(fs, path, u64::MAX)?.ok_or_else(|| Error::corruption(format!("{} vanished", path.display())))?,
            ),
        };
        let bytes = map.bytes();
        let len = bytes.len();
        if len < FOOTER {
            return Err(bad("shorter than a table footer"));
        }
        let f = &bytes[len - FOOTER..];
        let mut c = Cursor { bytes: f };
        let (magic, format) = (c.u64()?, c.u32()?);
        c.u32()?;
        let (index_off, filter_off, replaced_off) = (c.u64()? as usize, c.u64()? as usize, c.u64()? as usize);
        let (count, max_version) = (c.u64()?, c.u64()?);
        let ident = Ident::decode(&mut c)?;
        let (meta_crc, footer_crc) = (c.u32()?, c.u32()?);
        if magic != MAGIC || crc32fast::hash(&f[..FOOTER - 4]) != footer_crc {
            return Err(bad("footer damaged or not a keel table (format 1 tables, written before the manifest, are not read)"));
        }
        if format != FORMAT {
            return Err(bad(&format!("table format {format} is not supported")));
        }
        let meta_end = len - FOOTER;
        if !(index_off <= filter_off && filter_off <= replaced_off && replaced_off <= meta_end) {
            return Err(bad("footer offsets out of order"));
        }
        if crc32fast::hash(&bytes[index_off..meta_end]) != meta_crc {
            return Err(bad("index, filter or replaced list damaged"));
        }
        // The blocks tile the bytes before the index, in key order: a
        // search trusts both (`block_for`).
        let mut index = SparseIndex::new();
        let mut c = Cursor { bytes: &bytes[index_off..filter_off] };
        let (mut end, mut last_key) = (0, None);
        while !c.bytes.is_empty() {
            // The checksum held: an entry cut short is a table keel did
            // not write, named as such.
            let cut = |_| bad("index entry cut short");
            let first_key = c.bytes().map_err(cut)?;
            let (offset, len) = (c.u64().map_err(cut)? as usize, c.u32().map_err(cut)? as usize);
            if offset != end || offset.checked_add(len).map_or(true, |end| end > index_off) || len < 8 {
                return Err(bad("index entry points outside the blocks"));
            }
            if last_key.is_some_and(|k: &[u8]| k >= first_key) {
                return Err(bad("index keys out of order"));
            }
            index.push(first_key, offset, len);
            (end, last_key) = (offset + len, Some(first_key));
        }
        if end != index_off {
            return Err(bad("index entry points outside the blocks"));
        }
        index.shrink_to_fit();
        if (replaced_off..meta_end).len() % 8 != 0 {
            return Err(bad("replaced list is not a whole number of ids"));
        }
        let replaced = bytes[replaced_off..meta_end].chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        let verified = (0..index.len().div_ceil(8)).map(|_| AtomicU8::new(0)).collect();
        Ok(Table {
            path: path.to_path_buf(),
            index,
            filter: (filter_off, replaced_off),
            replaced,
            count,
            max_version,
            ident,
            footer_crc,
            map,
            verified,
        })
    }

    /// Checks every block's checksum (a salvage open: a damaged block is
    /// found at open and the table left out, not met by a read later).
    pub fn verify_blocks(&self) -> Result<()> {
        (0..self.index.len()).try_for_each(|i| self.block(i).map(drop))
    }

    /// Bytes of the file (for merge policy and stats).
    pub fn size(&self) -> usize {
        self.map.bytes().len()
    }

    /// Block `i` without its trailer: (entries, entry offsets).
    fn block(&self, i: usize) -> Result<(&[u8], &[u8])> {
        let ix = &self.index.blocks[i];
        let raw = &self.map.bytes()[ix.offset..ix.offset + ix.len];
        let (body, crc) = raw.split_at(raw.len() - 4);
        let bad = |why: &str| Error::corruption(format!("{}: block at offset {} {why}", self.path.display(), ix.offset));
        let (byte, bit) = (&self.verified[i / 8], 1u8 << (i % 8));
        let checked = byte.load(Ordering::Relaxed) & bit != 0;
        if !checked && crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().unwrap()) {
            return Err(bad("fails its checksum"));
        }
        let (rest, n) = body.split_at(body.len() - 4);
        let n = u32::from_le_bytes(n.try_into().unwrap()) as usize;
        let table_len = n.checked_mul(4).filter(|&t| t <= rest.len()).ok_or_else(|| bad("has a bad entry count"))?;
        let (entries, offsets) = rest.split_at(rest.len() - table_len);
        if !checked {
            let next_first = (i + 1 < self.index.len()).then(|| self.index.first_key(i + 1));
            check_layout(entries, offsets, self.index.first_key(i), next_first).map_err(bad)?;
            byte.fetch_or(bit, Ordering::Relaxed);
        }
        Ok((entries, offsets))
    }

    /// The entry at `offset` of a block's entries.
    fn entry_at<'a>(&self, entries: &'a [u8], offsets: &[u8], i: usize) -> Result<(&'a [u8], u64, u8, &'a [u8])> {
        let at = u32::from_le_bytes(offsets[i * 4..i * 4 + 4].try_into().unwrap()) as usize;
        let slice = entries.get(at..).ok_or_else(|| Error::corruption(format!("{}: entry offset out of its block", self.path.display())))?;
        decode_entry(&mut Cursor { bytes: slice })
    }

    fn block_for(&self, key: &[u8]) -> Option<usize> {
        self.index.block_for(key)
    }

    /// Starts reading, in the background, the bytes a search for `key`
    /// would read (`WholeFile::will_need`): its block, widened to the
    /// `WILL_NEED_CHUNK`s around it so that searches of nearby keys share
    /// one larger read. `last`: the chunk asked for last, which a caller
    /// searching in key order does not ask for again. Returns the last
    /// chunk of the block (None when no block can hold the key).
    pub fn will_search(&self, key: &[u8], last: Option<usize>) -> Option<usize> {
        let ix = &self.index.blocks[self.block_for(key)?];
        let (ask, last) = chunks_to_ask(ix.offset, ix.len, last);
        if !ask.is_empty() {
            self.map.will_need(ask.start * WILL_NEED_CHUNK..ask.end * WILL_NEED_CHUNK);
        }
        Some(last)
    }

    pub fn get(&self, probe: &Probe) -> Result<Option<Entry>> {
        self.find(probe)?.map(|(version, kind, value)| to_entry(version, kind, value)).transpose()
    }

    /// False when the table certainly does not hold the key of `hash`
    /// (its Bloom filter alone).
    pub fn may_contain(&self, hash: u64) -> bool {
        let (lo, hi) = self.filter;
        bloom::may_contain(&self.map.bytes()[lo..hi], hash)
    }

    /// A hint that `may_contain(hash)` will run soon (`bloom::prefetch`).
    pub fn prefetch_filter(&self, hash: u64) {
        let (lo, hi) = self.filter;
        bloom::prefetch(&self.map.bytes()[lo..hi], hash);
    }

    /// The raw (version, kind, value) stored for the key.
    fn find(&self, probe: &Probe) -> Result<Option<(u64, u8, &[u8])>> {
        let key = probe.key;
        if !self.may_contain(probe.hash) {
            return Ok(None);
        }
        let Some(b) = self.block_for(key) else { return Ok(None) };
        let (entries, offsets) = self.block(b)?;
        let (mut lo, mut hi) = (0, offsets.len() / 4);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (k, version, kind, value) = self.entry_at(entries, offsets, mid)?;
            match k.cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Some((version, kind, value))),
            }
        }
        Ok(None)
    }

    /// The entries from the first key at or above `start` to the last
    /// below `end` (None: to the table's last), in key order, read in
    /// place from the mapped file (nothing copied, one block decoded at a
    /// time). A block whose first key (in the sparse index) is at or past
    /// `end` is never read: a merge peeks at each source's next entry, and
    /// a damaged block past a range must not fail a read of the range.
    /// Ends after the first error.
    pub fn refs_range<'a>(&'a self, start: &'a [u8], end: Option<&'a [u8]>) -> impl Iterator<Item = Result<(&'a [u8], EntryRef<'a>)>> + 'a {
        let mut next_block = self.block_for(start).unwrap_or(0);
        let mut entries: &'a [u8] = &[];
        let mut done = false;
        let past_end = move |k: &[u8]| end.is_some_and(|e| k >= e);
        std::iter::from_fn(move || loop {
            if done {
                return None;
            }
            if entries.is_empty() {
                if next_block >= self.index.len() || past_end(self.index.first_key(next_block)) {
                    done = true;
                    return None;
                }
                match self.block(next_block) {
                    Ok((e, _)) => entries = e,
                    Err(e) => {
                        done = true;
                        return Some(Err(e));
                    }
                }
                next_block += 1;
                continue;
            }
            let mut c = Cursor { bytes: entries };
            let r = decode_entry(&mut c)
                .and_then(|(k, version, kind, bytes)| Ok((k, EntryRef::Stored { version, kind: kind_of(kind)?, bytes })));
            entries = c.bytes;
            match r {
                Ok((k, _)) if k < start => {}
                Ok((k, _)) if past_end(k) => {
                    done = true;
                    return None;
                }
                Ok(found) => return Some(Ok(found)),
                Err(e) => {
                    done = true;
                    return Some(Err(e));
                }
            }
        })
    }
}

/// Checks that a block whose checksum holds is laid out as `write`
/// writes one: at least one entry, entries back to back from the start,
/// each at the offset the block's offset table gives, keys strictly
/// increasing from `first_key` (the index's for it) and below `next_first`
/// (the next block's, when there is one: a search for a key at or past it
/// goes to that block), each of a known kind, and each posting list made
/// of whole items. A checksum proves
/// only that the bytes are the ones written; a file that was not written
/// by keel (or by a keel with a bug) but passes it would otherwise give
/// wrong answers (a search missing a key that is there) or reach a merge
/// as keys out of order. Runs once per block, with its checksum.
fn check_layout(entries: &[u8], offsets: &[u8], first_key: &[u8], next_first: Option<&[u8]>) -> std::result::Result<(), &'static str> {
    if offsets.is_empty() {
        return Err("holds no entry");
    }
    let mut c = Cursor { bytes: entries };
    let mut prev: Option<&[u8]> = None;
    for at in offsets.chunks_exact(4) {
        if u32::from_le_bytes(at.try_into().unwrap()) as usize != entries.len() - c.bytes.len() {
            return Err("has an entry offset that does not match its entries");
        }
        let (key, _, kind, value) = decode_entry(&mut c).map_err(|_| "has an entry cut short")?;
        // Checked here, with the table's name and the block's offset in
        // the error, rather than when a read decodes the entry; and a merge
        // copies stored lists as they are, so one cut short would otherwise
        // pass into a new table under a checksum of keel's own.
        match kind {
            KIND_VALUE => {}
            KIND_POSTING => {
                let mut rest = value;
                while !rest.is_empty() {
                    rest = split_item(rest).map_err(|_| "has a posting list cut short")?.1;
                }
            }
            _ => return Err("has an entry of unknown kind"),
        }
        match prev {
            None if key != first_key => return Err("starts with a key other than the one the index names"),
            Some(p) if p >= key => return Err("holds keys out of order"),
            _ => prev = Some(key),
        }
    }
    if !c.bytes.is_empty() {
        return Err("has bytes after its last entry");
    }
    if prev.zip(next_first).is_some_and(|(last, next)| last >= next) {
        return Err("holds a key at or past the next block's first key");
    }
    Ok(())
}

/// The chunks (`WILL_NEED_CHUNK` bytes each) holding `len > 0` bytes at
/// `at`, less `last` (asked for already), and the last of them.
fn chunks_to_ask(at: usize, len: usize, last: Option<usize>) -> (std::ops::Range<usize>, usize) {
    debug_assert!(len > 0, "a block is never empty");
    let (first, end) = (at / WILL_NEED_CHUNK, (at + len).div_ceil(WILL_NEED_CHUNK));
    let from = match last {
        Some(l) if (first..end).contains(&l) => l + 1,
        _ => first,
    };
    (from..end, end - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Value;

    fn entries(n: u32) -> Vec<(Vec<u8>, Entry)> {
        (0..n)
            .map(|i| {
                let value = if i % 3 == 0 {
                    Value::Posting(vec![i.to_le_bytes().to_vec(), b"x".to_vec()])
                } else {
                    Value::Bytes(vec![i as u8; (i % 200) as usize])
                };
                (format!("key-{i:06}").into_bytes(), Entry { version: i as u64 + 1, value })
            })
            .collect()
    }

    /// The index's integer prefixes must order keys exactly like the bytes
    /// do, including keys longer than 16 bytes that share a prefix, keys
    /// with zero bytes where another key ends, and the empty key.
    #[test]
    fn sparse_index_finds_the_same_block_as_a_byte_comparison() {
        let mut keys: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0, 0], b"a".to_vec(), b"a\0".to_vec(), b"a\0\0b".to_vec()];
        for i in 0..40u8 {
            keys.push([b"shared-prefix-of-20-b".as_slice(), &[i % 7, i]].concat());
            keys.push(vec![i; (i % 20) as usize]);
        }
        keys.sort();
        keys.dedup();
        let mut index = SparseIndex::new();
        for (i, k) in keys.iter().enumerate().step_by(3) {
            index.push(k, i, 1);
        }
        let firsts: Vec<&Vec<u8>> = keys.iter().step_by(3).collect();
        let mut probes = keys.clone();
        probes.extend(keys.iter().map(|k| [k.as_slice(), &[0]].concat()));
        probes.push(vec![255; 30]);
        for p in &probes {
            let want = firsts.partition_point(|f| f.as_slice() <= p.as_slice()).checked_sub(1);
            assert_eq!(index.block_for(p), want, "probe {p:?}");
        }
    }

    #[test]
    fn a_search_announces_its_block_once_per_chunk() {
        const C: usize = WILL_NEED_CHUNK;
        assert_eq!(chunks_to_ask(0, 4096, None), (0..1, 0));
        assert_eq!(chunks_to_ask(100, 4096, Some(0)), (1..1, 0), "its chunk was asked for already");
        assert_eq!(chunks_to_ask(C - 100, 4096, Some(0)), (1..2, 1), "a block across two chunks asks for the second");
        assert_eq!(chunks_to_ask(C - 100, 4096, None), (0..2, 1));
        assert_eq!(chunks_to_ask(3 * C, 4096, Some(1)), (3..4, 3));
        assert_eq!(chunks_to_ask(C, 4096, Some(7)), (1..2, 1), "a `last` past the block (keys started over) is ignored");
        // On a table of several chunks, searches in key order announce
        // every chunk holding a block, in order, and none twice.
        let dir = crate::test_dir::TestDir::new("table-chunks");
        let fs = crate::fs::StdFs::direct();
        let all: Vec<(Vec<u8>, Entry)> =
            (0..20_000u32).map(|i| (format!("key-{i:06}").into_bytes(), Entry { version: 1, value: Value::Bytes(vec![7; 100]) })).collect();
        let t = write(&fs, &dir.join("t.sst"), all.iter().map(|(k, e)| Ok((k.as_slice(), EntryRef::from(e)))), &[], Ident { shard: 1, segment: 1 }).unwrap();
        assert_eq!(t.will_search(b"a", None), None, "below the first key no block can hold it");
        let (mut last, mut asked) = (None, Vec::new());
        for (k, _) in &all {
            let b = &t.index.blocks[t.block_for(k).unwrap()];
            let (ask, end) = chunks_to_ask(b.offset, b.len, last);
            asked.extend(ask);
            last = t.will_search(k, last);
            assert_eq!(last, Some(end));
        }
        let data_end = t.index.blocks.last().map(|b| b.offset + b.len).unwrap();
        assert!(data_end > 4 * WILL_NEED_CHUNK, "the table spans several chunks");
        assert_eq!(asked, (0..data_end.div_ceil(WILL_NEED_CHUNK)).collect::<Vec<_>>());
    }

    /// A block whose checksum holds but whose entries are not what
    /// `write` writes (a file keel did not write) is CORRUPTION on its
    /// first read, for a search and for a merge's iteration alike: never
    /// a wrong answer, never keys out of order handed on.
    /// A table of 3,000 entries written by `write`, to be damaged under
    /// checksums that hold: its bytes, and where its first block is.
    struct Forged {
        _dir: crate::test_dir::TestDir,
        path: std::path::PathBuf,
        all: Vec<(Vec<u8>, Entry)>,
        fs: crate::fs::StdFs,
        /// Offset and length of block 0 (its checksum in the last 4 bytes).
        at: usize,
        len: usize,
        good: Vec<u8>,
    }

    impl Forged {
        fn new(name: &str) -> Forged {
            let dir = crate::test_dir::TestDir::new(name);
            let path = dir.join("t.sst");
            let all = entries(3000);
            let fs = crate::fs::StdFs::direct();
            let t = write(&fs, &path, all.iter().map(|(k, e)| Ok((k.as_slice(), EntryRef::from(e)))), &[], Ident { shard: 9, segment: 3 }).unwrap();
            let (at, len) = (t.index.blocks[0].offset, t.index.blocks[0].len);
            drop(t);
            let good = std::fs::read(&path).unwrap();
            Forged { _dir: dir, path, all, fs, at, len, good }
        }

        /// Gives block 0 of `bytes` a checksum that holds.
        fn reseal_block(&self, bytes: &mut [u8]) {
            let (at, len) = (self.at, self.len);
            let crc = crc32fast::hash(&bytes[at..at + len - 4]);
            bytes[at + len - 4..at + len].copy_from_slice(&crc.to_le_bytes());
        }

        /// Where the index starts in `bytes` (the footer says).
        fn index_offset(bytes: &[u8]) -> usize {
            let n = bytes.len();
            u64::from_le_bytes(bytes[n - FOOTER + 16..n - FOOTER + 24].try_into().unwrap()) as usize
        }

        /// Gives the index and the footer of `bytes` checksums that hold.
        fn reseal_index(bytes: &mut [u8]) {
            let (n, index_off) = (bytes.len(), Self::index_offset(bytes));
            let meta_crc = crc32fast::hash(&bytes[index_off..n - FOOTER]);
            bytes[n - 8..n - 4].copy_from_slice(&meta_crc.to_le_bytes());
            let footer_crc = crc32fast::hash(&bytes[n - FOOTER..n - 4]);
            bytes[n - 4..].copy_from_slice(&footer_crc.to_le_bytes());
        }

        /// With `bytes` as the table, a get of each of `probes` and a
        /// merge's iteration are CORRUPTION saying `why` and naming the
        /// table.
        fn refused_on_read(&self, bytes: &[u8], probes: &[&[u8]], why: &str) {
            std::fs::write(&self.path, bytes).unwrap();
            let t = Table::open(&self.fs, &self.path).unwrap();
            for probe in probes {
                let e = t.get(&Probe::new(probe)).unwrap_err();
                assert_eq!(e.status, crate::status::KEEL_STATUS_CORRUPTION, "{e}");
                assert!(e.message.contains(why) && e.message.contains(&*self.path.to_string_lossy()), "{e}");
            }
            let t = Table::open(&self.fs, &self.path).unwrap();
            let e = t.refs_range(b"", None).find_map(|r| r.err()).expect("the iteration fails");
            assert!(e.message.contains(why), "{e}");
        }

        /// With `bytes` as the table, the open is CORRUPTION saying `why`
        /// and naming the table.
        fn refused_at_open(&self, bytes: &[u8], why: &str) {
            std::fs::write(&self.path, bytes).unwrap();
            let e = Table::open(&self.fs, &self.path).err().expect("refused at open");
            assert_eq!(e.status, crate::status::KEEL_STATUS_CORRUPTION, "{e}");
            assert!(e.message.contains(why) && e.message.contains(&*self.path.to_string_lossy()), "{e}");
        }
    }

    #[test]
    fn a_block_that_passes_its_checksum_but_is_out_of_order_is_corruption() {
        let f = Forged::new("table-order");
        let (at, len, good) = (f.at, f.len, &f.good);
        // The key of an entry at `entry` of block 0 (every key is 10 bytes).
        let key_at = |bytes: &[u8], entry: usize| {
            let (body, _) = bytes[at..at + len].split_at(len - 4);
            let n = u32::from_le_bytes(body[body.len() - 4..].try_into().unwrap()) as usize;
            let offsets = &body[body.len() - 4 - 4 * n..body.len() - 4];
            at + u32::from_le_bytes(offsets[entry * 4..entry * 4 + 4].try_into().unwrap()) as usize + 17
        };
        // 1. The keys of entries 1 and 2 swapped; 2. the first key lowered
        // below the one the index names for the block.
        let mut swapped = good.clone();
        let (k1, k2) = (key_at(good, 1), key_at(good, 2));
        swapped[k1..k1 + 10].copy_from_slice(&good[k2..k2 + 10]);
        swapped[k2..k2 + 10].copy_from_slice(&good[k1..k1 + 10]);
        f.reseal_block(&mut swapped);
        let mut lowered = good.clone();
        lowered[key_at(good, 0) + 9] -= 1;
        f.reseal_block(&mut lowered);
        // 3. The block's last key raised past the first key of the next
        // block: in order within its block, but a search for it goes to
        // the next block, and a merge would get keys out of order.
        let mut raised = good.clone();
        let in_block = u32::from_le_bytes(good[at + len - 8..at + len - 4].try_into().unwrap()) as usize;
        let k = key_at(good, in_block - 1);
        raised[k..k + 10].copy_from_slice(b"key-zzzzzz");
        f.reseal_block(&mut raised);
        let probes = [f.all[0].0.as_slice(), &f.all[1].0, &f.all[2].0];
        f.refused_on_read(&swapped, &probes, "holds keys out of order");
        f.refused_on_read(&lowered, &probes, "starts with a key other than the one the index names");
        f.refused_on_read(&raised, &probes, "holds a key at or past the next block's first key");
        // The index itself must tile the blocks in key order: checked at open.
        let index_off = Forged::index_offset(good);
        let mut bytes = good.clone();
        bytes[index_off + 4 + 10] ^= 1; // the first block's offset, in the index
        Forged::reseal_index(&mut bytes);
        f.refused_at_open(&bytes, "index entry points outside the blocks");
        // An index entry whose key runs past the index.
        let mut bytes = good.clone();
        bytes[index_off..index_off + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        Forged::reseal_index(&mut bytes);
        f.refused_at_open(&bytes, "index entry cut short");
    }

    /// An entry's kind and a posting list's encoding are the block's
    /// layout too: a block whose checksum holds but whose entry has no
    /// known kind, or whose list runs past its value, is CORRUPTION naming
    /// the table on its first read, and a merge's iteration gets it too
    /// instead of copying the list into a new table.
    #[test]
    fn a_block_with_a_bad_kind_or_list_that_passes_its_checksum_is_corruption() {
        let f = Forged::new("table-kinds");
        let at = f.at;
        // Entry 0 is a posting list: its kind byte follows the 16 bytes of
        // lengths and version; its first item's length follows its 10-byte key.
        assert!(matches!(f.all[0].1.value, Value::Posting(_)));
        let mut kind = f.good.clone();
        kind[at + 16] = 9;
        f.reseal_block(&mut kind);
        let mut list = f.good.clone();
        list[at + 27..at + 31].copy_from_slice(&1000u32.to_le_bytes());
        f.reseal_block(&mut list);
        f.refused_on_read(&kind, &[&f.all[0].0], "has an entry of unknown kind");
        f.refused_on_read(&list, &[&f.all[0].0], "has a posting list cut short");
    }

    /// A posting list longer than a table entry's u32 length field holds
    /// (a data log written before MAX_LIST_SIZE can carry one) is refused
    /// naming the table and the key, not wrapped. Its bytes are address
    /// space reserved and never touched: the check comes before any copy,
    /// so the test needs no 4 GiB of memory.
    #[test]
    fn a_value_too_long_for_a_table_entry_is_refused_not_wrapped() {
        let len = u32::MAX as usize + 5;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: a new private anonymous mapping, no existing memory is affected.
        let at = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, flags, -1, 0) };
        assert_ne!(at, libc::MAP_FAILED, "reserving {len} bytes of address space");
        // SAFETY: the mapping is `len` readable bytes, unmapped only after
        // `write` (which consumes every reference to them) returned.
        let huge = unsafe { std::slice::from_raw_parts(at as *const u8, len) };
        let dir = crate::test_dir::TestDir::new("table-huge");
        let path = dir.join("t.sst");
        let small = Entry { version: 1, value: Value::Bytes(b"v".to_vec()) };
        let entries = [
            (b"a".as_slice(), EntryRef::from(&small)),
            (b"big".as_slice(), EntryRef::Stored { version: 2, kind: Kind::Posting, bytes: huge }),
        ];
        let fs = crate::fs::StdFs::direct();
        let got = write(&fs, &path, entries.into_iter().map(Ok), &[], Ident { shard: 1, segment: 1 });
        // SAFETY: `at`/`len` are the mapping made above; nothing refers to it any more.
        assert_eq!(unsafe { libc::munmap(at, len) }, 0);
        let e = got.err().expect("a table with a wrapped length was written");
        assert_eq!(e.status, crate::status::KEEL_STATUS_CORRUPTION, "{}", e.message);
        assert!(e.message.contains("t.sst") && e.message.contains("\"big\"") && e.message.contains(&len.to_string()), "{}", e.message);
        assert!(!path.exists() && !crate::fs::tmp_path(&path).exists(), "nothing is left behind");
    }

    #[test]
    fn writes_reads_and_detects_damage() {
        let dir = crate::test_dir::TestDir::new("table");
        let path = dir.join("t.sst");
        let all = entries(3000);
        let fs = crate::fs::StdFs::direct();
        let ident = Ident { shard: 9, segment: 3 };
        let t = write(&fs, &path, all.iter().map(|(k, e)| Ok((k.as_slice(), EntryRef::from(e)))), &[4, 5], ident).unwrap();
        assert_eq!(t.ident, ident);
        assert_eq!((t.count, t.max_version, t.replaced.clone()), (3000, 3000, vec![4, 5]));
        for (k, e) in &all {
            assert_eq!(t.get(&Probe::new(k)).unwrap().as_ref(), Some(e));
        }
        assert_eq!(t.get(&Probe::new(b"key-")).unwrap(), None);
        assert_eq!(t.get(&Probe::new(b"zzz")).unwrap(), None);
        let from: Vec<_> = t.refs_range(b"key-002500", None).map(|r| r.and_then(|(k, e)| Ok((k.to_vec(), e.to_entry()?))).unwrap()).collect();
        assert_eq!(from, all[2500..].to_vec());
        drop(t);
        // A flipped byte in a block is caught on read; in the footer, at open.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let t = Table::open(&fs, &path).unwrap();
        assert!(all.iter().any(|(k, _)| t.get(&Probe::new(k)).is_err()));
        drop(t);
        let n = bytes.len();
        bytes[100] ^= 0x40;
        bytes[n - 20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(Table::open(&fs, &path).err().unwrap().status, crate::status::KEEL_STATUS_CORRUPTION);
    }
}
