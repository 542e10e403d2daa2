//! Segment files: names, creation (W8), the handle of the active one and
//! the read handle all readers of a segment share.

use super::format::{decode_segment_header, encode_segment_header, Link, SEGMENT_HEADER_LEN};
use super::Durability;
use crate::fs::{File, FileSystem, ReadMap};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const SUFFIX: &str = ".wal";
pub const TEMP_SUFFIX: &str = ".wal.tmp";

/// `<first_seq as 20 digits>.wal`, so that names sort in log order.
pub fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SUFFIX}")
}

/// The first sequence number encoded in a segment file name.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The names in a WAL's directory `dir`, none when it does not exist yet.
pub fn list_dir(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<String>> {
    match fs.list(dir) {
        Ok(names) => Ok(names),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(format!("listing {}", dir.display()), e)),
    }
}

/// Refuses to make `dir` a WAL when it already holds other things: a
/// non-empty directory (whose entries are `names`) none of whose entries
/// is a segment (or its temp file, or a `salvaged-*` folder recovery
/// made), and that is not just a `LOCK`, is INVALID_ARGUMENT. A missing
/// or empty directory is fine.
pub fn check_wal_dir(dir: &Path, names: &[String]) -> Result<()> {
    let wal_file = |n: &String| {
        parse_name(n).is_some()
            || n.ends_with(TEMP_SUFFIX)
            || n.starts_with("salvaged-")
            || [super::extent::META_NAME, super::extent::META_TEMP].contains(&n.as_str())
    };
    if names.iter().any(wal_file) || names.iter().all(|n| n == "LOCK") {
        return Ok(());
    }
    let mut shown: Vec<&str> = names.iter().map(String::as_str).collect();
    shown.sort_unstable();
    shown.truncate(3);
    Err(Error::invalid(format!(
        "{} is not empty ({} entries, e.g. {}) and holds no keel WAL segment: refusing to write a WAL into it; \
         use an empty or new directory, or set allow_foreign_files",
        dir.display(),
        names.len(),
        shown.join(", ")
    )))
}

/// A retained segment as the log knows it.
#[derive(Debug, Clone)]
pub struct SegmentMeta {
    pub first_seq: u64,
    pub path: PathBuf,
    /// Its header's salt: with `first_seq`, the identity `wal.meta` records.
    pub salt: u32,
    /// Where the previous segment's records ended, when recovery declared
    /// the sequence numbers from there to `first_seq` lost (never reissued).
    pub gap_from: Option<u64>,
    /// Every frame before this offset had its checksum verified by the
    /// open that found the segment (0: none, as for a segment created
    /// since). The log never writes below its end, so a reader need not
    /// verify those frames again (`Reader::load_frame`).
    pub checked_end: u64,
}

impl SegmentMeta {
    pub fn new(dir: &Path, first_seq: u64, salt: u32, prev: Option<Link>) -> SegmentMeta {
        let gap_from = prev.map(|p| p.end).filter(|&end| end < first_seq);
        SegmentMeta { first_seq, path: dir.join(file_name(first_seq)), salt, gap_from, checked_end: 0 }
    }
}

/// What a segment's header states: its identity (first sequence number
/// and salt, as `wal.meta` lists it) and its link to the segment before.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    pub first_seq: u64,
    pub salt: u32,
    pub prev: Option<Link>,
}

impl Head {
    /// The header of a new segment: a fresh salt.
    pub fn new(first_seq: u64, prev: Option<Link>) -> Head {
        Head { first_seq, salt: new_salt(), prev }
    }
}

/// The segment that takes appends.
pub struct Active {
    pub file: Arc<dyn File>,
    /// Its header (a segment that holds no record yet may be replaced by a
    /// larger one with the same header: `Shared::rotate`).
    pub head: Head,
    /// Where the next frame goes.
    pub offset: u64,
    /// Allocated size: frames must end at or before it.
    pub capacity: u64,
}

/// A retained segment opened for reading. Every reader of the log shares
/// one per segment (through `fs::Handles`), so readers cost no descriptor
/// each; it is closed when the last reader moves past the segment.
pub struct ReadSegment {
    pub salt: u32,
    pub view: View,
}

impl ReadSegment {
    /// The whole file, when it is mapped.
    pub fn mapped(&self) -> Option<&[u8]> {
        match &self.view {
            View::Map(m) => Some(m.bytes()),
            View::File(_) => None,
        }
    }
}

/// How a `ReadSegment` reaches its bytes.
pub enum View {
    /// A read-only map of the whole file (it holds no descriptor).
    Map(ReadMap),
    /// A descriptor read with `pread`, where the file system offers no map.
    File(Arc<dyn File>),
}

impl View {
    /// The segment's size now (segments are allocated whole when created).
    pub fn len(&self) -> std::io::Result<u64> {
        match self {
            View::Map(m) => Ok(m.bytes().len() as u64),
            View::File(f) => f.len(),
        }
    }
}

/// Opens a retained segment for reading and checks its header.
pub fn open_for_reading(fs: &dyn FileSystem, path: &Path) -> Result<ReadSegment> {
    let io = |e| Error::io(format!("opening {}", path.display()), e);
    let mut head = [0u8; SEGMENT_HEADER_LEN as usize];
    let (view, n) = match fs.map_readonly(path).map_err(io)? {
        Some(map) => {
            let n = map.bytes().len().min(head.len());
            head[..n].copy_from_slice(&map.bytes()[..n]);
            (View::Map(map), n)
        }
        None => {
            let file = fs.open(path, false).map_err(io)?;
            let n = file.read_up_to(&mut head, 0).map_err(io)?;
            (View::File(file), n)
        }
    };
    let header = decode_segment_header(&head[..n]).map_err(|why| Error::corruption(format!("{}: {why}", path.display())))?;
    Ok(ReadSegment { salt: header.salt, view })
}

/// A random salt: seeds every frame checksum of a segment so that bytes
/// left from an older segment or zero fill never validate in a new one.
pub fn new_salt() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: `b` is a local array of 4 writable bytes and getrandom writes
    // at most the 4 asked for.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, 4, 0) };
    if n == 4 {
        return u32::from_le_bytes(b);
    }
    // getrandom unavailable: time and pid are unique enough for a salt.
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.as_nanos() as u32) ^ std::process::id().rotate_left(16)
}

/// Name of the n-th file a log prepares ahead of time (`workers.rs`); it
/// ends in TEMP_SUFFIX, so recovery removes it like any unfinished segment.
pub fn spare_name(n: u64) -> String {
    format!("spare-{n}{TEMP_SUFFIX}")
}

/// Name recovery gives the n-th unfinished file an earlier process left
/// (a spare, a segment never installed): no writer makes a file of this
/// name, so it can be removed later, off the open (`Recovered::strays`).
pub fn stray_name(n: u64) -> String {
    format!("{STRAY_PREFIX}{n}{TEMP_SUFFIX}")
}

const STRAY_PREFIX: &str = "stray-";

/// The n of `stray_name(n)`.
pub fn parse_stray(name: &str) -> Option<u64> {
    name.strip_prefix(STRAY_PREFIX)?.strip_suffix(TEMP_SUFFIX)?.parse().ok()
}

/// The size a log's first segment gets (and the smallest `segment_size`):
/// an idle log holds this plus a spare of twice it.
pub const FIRST_SIZE: u64 = 64 << 10;

/// Size of the segment a rotation makes for a frame of `frame` bytes:
/// the planned size, or the power of two that holds the header and the
/// frame when that is larger, at most `max` (which always holds the
/// largest frame: `Options::validate`).
pub fn size_for(planned: u64, frame: u64, max: u64) -> u64 {
    planned.max((SEGMENT_HEADER_LEN + frame).next_power_of_two()).min(max)
}

/// The size planned for the segment after one of `made` bytes: twice the
/// larger of the two, at most `max`. Segments thus grow with the volume
/// written and an idle log stays small.
pub fn grown(planned: u64, made: u64, max: u64) -> u64 {
    planned.max(made).saturating_mul(2).min(max)
}

/// An allocated, synced file (a temporary name) ready to become a segment.
pub struct Spare {
    pub file: Arc<dyn File>,
    pub path: PathBuf,
    pub capacity: u64,
    /// Its mapped pages are faulted in (`File::prefault`).
    pub faulted: bool,
}

impl Spare {
    /// Whether a rotation planning `planned` bytes may take it for a
    /// frame of `frame` bytes: it is at least the segment the rotation
    /// would make itself (`size_for`, which holds the frame). A spare made
    /// for an older, smaller plan (the worker read the plan just before a
    /// rotation that found no spare grew it) is passed over, so segments
    /// never shrink.
    pub fn serves(&self, planned: u64, frame: u64, max: u64) -> bool {
        let wanted = size_for(planned, frame, max);
        debug_assert!(SEGMENT_HEADER_LEN + frame <= wanted, "size_for holds the frame");
        self.capacity >= wanted
    }
}

/// How a new segment's bytes are set aside (docs/WAL.md, "Writes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// `File::allocate`: real zeros on the direct write strategy, so that
    /// the fdatasync after each group of appends has no unwritten extent
    /// to convert.
    Zeros,
    /// `File::reserve`: blocks reserved with fallocate, nothing written,
    /// no page cache. For a log synced rarely, whose few syncs convert the
    /// extents written since (an engine's committed shards write as much
    /// again as zeros otherwise).
    Reserve,
}

impl Fill {
    /// Zeros for a log that syncs every append (SYNC), else Reserve.
    pub fn for_durability(d: Durability) -> Fill {
        match d {
            Durability::Sync => Fill::Zeros,
            Durability::Periodic(_) | Durability::None => Fill::Reserve,
        }
    }
}

/// Allocates a new file at `tmp` to `capacity` and syncs it: the slow half
/// of W8, which can run ahead of time on a background worker.
pub fn prepare(fs: &dyn FileSystem, tmp: &Path, capacity: u64, fill: Fill) -> std::io::Result<Arc<dyn File>> {
    let file = fs.create(tmp)?;
    match fill {
        Fill::Zeros => file.allocate(capacity)?,
        Fill::Reserve => file.reserve(capacity)?,
    }
    file.sync_data()?;
    Ok(file)
}

/// The fast half of W8: header, fdatasync, rename to the segment name,
/// directory fsync. Nothing is acknowledged in the segment before this
/// returns. On failure the file is removed (best effort: the temporary
/// one, or the segment when the directory sync failed after the rename)
/// and the log is as it was.
///
/// With `replacing`, the rename replaces the active segment of that name,
/// which holds no record yet, by this larger one with the same header
/// (`Shared::rotate`): either file is then a valid empty segment after a
/// crash. If the directory sync fails after the rename, the log cannot go
/// on: its active file is no longer the one named, and records written to
/// the new one would not be durable without that sync. Such a failure is
/// IO whatever the errno (the caller poisons the log).
pub fn install(
    fs: &dyn FileSystem,
    dir: &Path,
    file: Arc<dyn File>,
    tmp: &Path,
    head: Head,
    capacity: u64,
    replacing: bool,
) -> Result<Active> {
    let path = dir.join(file_name(head.first_seq));
    let mut renamed = false;
    let mut attempt = || -> std::io::Result<()> {
        file.write_at(&[&encode_segment_header(head.salt, head.first_seq, head.prev, capacity)], 0)?;
        file.sync_data()?;
        fs.rename(tmp, &path)?;
        renamed = true;
        fs.sync_dir(dir)
    };
    match attempt() {
        Ok(()) => Ok(Active { file, head, offset: SEGMENT_HEADER_LEN, capacity }),
        Err(e) if replacing && renamed => Err(Error::new(
            crate::status::KEEL_STATUS_IO,
            format!("syncing {} after replacing segment {}: {e}", dir.display(), path.display()),
        )),
        Err(e) => {
            // Renamed before the directory sync failed: the segment goes
            // too. Left there, it would name a number the active segment
            // goes on to use, a hole to the next open.
            let _ = fs.remove(if renamed { &path } else { tmp });
            Err(Error::io(format!("creating WAL segment {}", path.display()), e))
        }
    }
}

/// Writes zeros over `from..to` of `file`, a megabyte at a time: what a
/// segment holds past the end of its log (a torn tail cut off, the part
/// of a frame a failed write left).
pub fn zero(file: &dyn File, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; ((to.saturating_sub(from)) as usize).min(1 << 20)];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(zeros.len());
        file.write_at(&[&zeros[..n]], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Creates a segment in one go (W8), when no prepared spare is at hand
/// (`replacing`: see `install`).
pub fn create(fs: &dyn FileSystem, dir: &Path, head: Head, capacity: u64, fill: Fill, replacing: bool) -> Result<Active> {
    let tmp = dir.join(format!("{:020}{TEMP_SUFFIX}", head.first_seq));
    match prepare(fs, &tmp, capacity, fill) {
        Ok(file) => install(fs, dir, file, &tmp, head, capacity, replacing),
        Err(e) => {
            let _ = fs.remove(&tmp);
            Err(Error::io(format!("creating WAL segment {}", tmp.display()), e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_grow_and_fit() {
        const MAX: u64 = 1 << 20;
        assert_eq!(size_for(128 << 10, 100, MAX), 128 << 10, "a small frame takes the planned size");
        assert_eq!(size_for(128 << 10, 200 << 10, MAX), 256 << 10, "a large one a power of two that fits");
        assert_eq!(size_for(128 << 10, 256 << 10, MAX), 512 << 10, "the header counts");
        assert_eq!(size_for(128 << 10, (128 << 10) - SEGMENT_HEADER_LEN, MAX), 128 << 10);
        assert_eq!(size_for(128 << 10, (128 << 10) - SEGMENT_HEADER_LEN + 8, MAX), 256 << 10);
        assert_eq!(size_for(128 << 10, MAX - SEGMENT_HEADER_LEN, MAX), MAX, "never above the maximum");
        assert_eq!(grown(128 << 10, 64 << 10, MAX), 256 << 10);
        assert_eq!(grown(128 << 10, 512 << 10, MAX), MAX, "after a fitted segment, twice that");
        assert_eq!(grown(MAX, MAX, MAX), MAX);
        assert_eq!(grown(4 << 30, 4 << 30, 4 << 30), 4 << 30);
    }

    /// A spare made for an older plan is passed over (the race that made
    /// a 128 KiB segment follow a 256 KiB one); one of the plan is taken,
    /// unless this frame needs more.
    #[test]
    fn a_spare_serves_only_the_current_plan() {
        const MAX: u64 = 1 << 20;
        let dir = crate::test_dir::TestDir::new("spare");
        let path = dir.join(spare_name(1));
        let file = prepare(&crate::fs::StdFs::direct(), &path, 128 << 10, Fill::Zeros).unwrap();
        let spare = Spare { file, path, capacity: 128 << 10, faulted: false };
        assert!(spare.serves(128 << 10, 4000, MAX));
        assert!(!spare.serves(256 << 10, 4000, MAX), "a plan that grew past it");
        assert!(!spare.serves(128 << 10, 200 << 10, MAX), "a frame larger than it");
    }

    #[test]
    fn names_sort_and_parse() {
        assert_eq!(parse_name(&file_name(1)), Some(1));
        assert_eq!(parse_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert!(file_name(9) < file_name(10));
        assert_eq!(parse_name("00000000000000000001.wal.tmp"), None);
        assert_eq!(parse_name("1.wal"), None);
    }
}
