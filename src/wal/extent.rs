//! `wal.meta`: the log's extent, recorded where losing a segment cannot
//! erase it (docs/WAL.md, "The extent record"). Written atomically (temp
//! file, fdatasync, rename, directory fsync) at open, on every rotation,
//! before truncation unlinks segments, and at close. Recovery and
//! `keel-wal verify` compare the segments on disk with it (`check`).
//!
//! Layout (little-endian):
//!   0 magic "KEELWMT\0"   8 version u32 (1)   12 segment count u32
//!   16 durable u64: D when it was written (every record <= it was on stable storage)
//!   24 next u64: the next sequence number then (every one below may have been handed out)
//!   32 per segment, in log order: first sequence u64, salt u32, zero u32
//!   then the CRC-32 of everything before it.

use super::scan::{self, SegmentScan};
use super::segment;
use crate::error::{Error, Result};
use crate::fs::FileSystem;
use std::path::Path;

pub const META_NAME: &str = "wal.meta";
/// `wal.meta` while it is replaced (`crate::fs::tmp_path` of it).
pub const META_TEMP: &str = "wal.meta.tmp";
const MAGIC: &[u8; 8] = b"KEELWMT\0";
const VERSION: u32 = 1;
const FIXED: usize = 32;
/// The bytes of a record before its list of segments.
pub const FIXED_LEN: usize = FIXED;
const PER_SEGMENT: usize = 16;

/// What `wal.meta` records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// The durable watermark D when it was written.
    pub durable: u64,
    /// The next sequence number when it was written.
    pub next_seq: u64,
    /// (first sequence, salt) of every retained segment, in log order.
    pub segments: Vec<(u64, u32)>,
}

impl Extent {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(FIXED + PER_SEGMENT * self.segments.len() + 4);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.durable.to_le_bytes());
        b.extend_from_slice(&self.next_seq.to_le_bytes());
        for (first, salt) in &self.segments {
            b.extend_from_slice(&first.to_le_bytes());
            b.extend_from_slice(&salt.to_le_bytes());
            b.extend_from_slice(&[0; 4]);
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> std::result::Result<Extent, String> {
        let le = |at: usize, n: usize| -> u64 { b[at..at + n].iter().rev().fold(0u64, |v, &x| (v << 8) | x as u64) };
        if b.len() < FIXED + 4 || &b[0..8] != MAGIC {
            return Err("not a keel WAL extent record".into());
        }
        let count = le(12, 4) as usize;
        let end = count.checked_mul(PER_SEGMENT).and_then(|n| n.checked_add(FIXED)).filter(|&e| e + 4 == b.len());
        let Some(end) = end else {
            return Err(format!("{} bytes where {count} segments need {}", b.len(), FIXED + 4 + count * PER_SEGMENT));
        };
        if crc32fast::hash(&b[..end]) as u64 != le(end, 4) {
            return Err("checksum mismatch".into());
        }
        if le(8, 4) != VERSION as u64 {
            return Err(format!("unsupported version {}", le(8, 4)));
        }
        let segments = (0..count).map(|i| (le(FIXED + i * PER_SEGMENT, 8), le(FIXED + i * PER_SEGMENT + 8, 4) as u32)).collect();
        Ok(Extent { durable: le(16, 8), next_seq: le(24, 8), segments })
    }
}

/// `wal.meta` as found.
#[derive(Debug, Clone)]
pub enum MetaFile {
    Missing,
    Damaged(String),
    Present(Extent),
}

impl MetaFile {
    pub fn from_bytes(bytes: Option<&[u8]>) -> MetaFile {
        match bytes {
            None => MetaFile::Missing,
            Some(b) => Extent::decode(b).map_or_else(MetaFile::Damaged, MetaFile::Present),
        }
    }
}

/// A record is its fixed part, 16 bytes per segment its count field names
/// and a checksum: given the first `FIXED` bytes of a file of `len` bytes,
/// why a file of another length is damaged whatever it holds. It is then
/// not read into memory (it may be a sparse file of any size).
pub fn wrong_length(head: &[u8], len: u64) -> Option<String> {
    if head.len() < FIXED || &head[0..8] != MAGIC {
        return None; // decoding says what is wrong
    }
    let count = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")) as u64;
    let expected = FIXED as u64 + PER_SEGMENT as u64 * count + 4;
    (len != expected).then(|| format!("{len} bytes where a record of {count} segments has {expected}"))
}

pub fn read(fs: &dyn FileSystem, dir: &Path) -> Result<MetaFile> {
    let path = dir.join(META_NAME);
    let io = |e| Error::io(format!("reading {}", path.display()), e);
    if !fs.exists(&path).map_err(io)? {
        return Ok(MetaFile::Missing);
    }
    let file = fs.open(&path, false).map_err(io)?;
    let mut head = [0u8; FIXED];
    let got = file.read_up_to(&mut head, 0).map_err(io)?;
    if let Some(wrong) = wrong_length(&head[..got], file.len().map_err(io)?) {
        return Ok(MetaFile::Damaged(wrong));
    }
    let bytes = super::recovery::read_all(&*file).map_err(io)?;
    Ok(MetaFile::from_bytes(Some(&bytes)))
}

/// Replaces `wal.meta` atomically: a crash leaves the old one or the new one.
pub fn write(fs: &dyn FileSystem, dir: &Path, extent: &Extent) -> Result<()> {
    crate::fs::replace(fs, &dir.join(META_NAME), &extent.encode())
}

/// One way the segments on disk fall short of what `wal.meta` records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub what: String,
    /// The sequence numbers it loses, when known (inclusive).
    pub lost: Option<(u64, u64)>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.lost {
            Some((a, b)) => write!(f, "{} (records {a}..={b})", self.what),
            None => f.write_str(&self.what),
        }
    }
}

/// Compares the segments found (`scans`; the records recovery keeps end
/// before `kept_end`) with the extent record. Empty when they agree.
/// Shared by recovery and `keel-wal verify`.
pub fn check(meta: &MetaFile, scans: &[SegmentScan], kept_end: u64) -> Vec<Problem> {
    let mut out = Vec::new();
    let e = match meta {
        MetaFile::Present(e) => e,
        MetaFile::Damaged(why) => {
            out.push(Problem { what: format!("{META_NAME} is damaged ({why})"), lost: None });
            return out;
        }
        MetaFile::Missing => {
            // Logs written since format version 2 have it from their first
            // open on, before any record; only a crash during that first
            // open leaves a linked segment without one, and it holds nothing.
            let linked = scans.iter().any(|s| s.header.as_ref().is_ok_and(|h| h.version >= 2));
            if linked && (scans.len() > 1 || scans.iter().any(|s| s.has_frames())) {
                out.push(Problem { what: format!("{META_NAME} is missing (this log was written with one)"), lost: None });
            }
            return out;
        }
    };
    // Saturating: a record with a valid checksum may still claim D = u64::MAX.
    let high = e.next_seq.max(e.durable.saturating_add(1));
    for (j, &(first, salt)) in e.segments.iter().enumerate() {
        let upto = e.segments.get(j + 1).map_or(high, |n| n.0);
        let lost = (upto > first).then(|| (first, upto - 1));
        let name = segment::file_name(first);
        let what = match scans.iter().find(|s| s.file.first_seq == first) {
            None => format!("segment {name} listed in {META_NAME} is missing"),
            Some(s) => match &s.header {
                Err(why) => format!("segment {name} listed in {META_NAME} has a damaged header ({why})"),
                Ok(h) if h.salt != salt => {
                    format!("segment {name} is not the one {META_NAME} lists (another salt: replaced, swapped or renamed)")
                }
                Ok(_) => continue,
            },
        };
        out.push(Problem { what, lost });
    }
    if kept_end <= e.durable {
        out.push(Problem {
            what: format!("records up to {} were durable ({META_NAME}) but the log ends before them", e.durable),
            lost: Some((kept_end, e.durable)),
        });
    }
    out
}

/// The lowest sequence number the next append may get: above everything
/// the extent record says was handed out or durable, and above what the
/// segment headers and durable hints prove. Both count even when the
/// record is there: a record whose rewrite failed or never ran before a
/// crash lists fewer segments than were created, and a segment recovery
/// sets aside still proves the numbers below its first were handed out.
/// A segment cut short counts as if its lost bytes had been full of the
/// smallest records (`scan::lost_tail_floor`).
/// `restorable_tail`: the frames after the first damage are the log's
/// unsynced tail, which its owner gives back at their own numbers
/// (`wal::Options::restorable_tail`): their ends are no floor, or the
/// log would reopen past the frames it must take back.
pub fn next_floor(meta: &MetaFile, scans: &[SegmentScan], restorable_tail: bool) -> u64 {
    let recorded = match meta {
        MetaFile::Present(e) => e.next_seq.max(e.durable.saturating_add(1)),
        _ => 0,
    };
    let proven = scans
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            let header = s.header.as_ref().map_or(0, |h| h.first_seq);
            let hint = s.max_hint.map_or(0, |(h, _)| h.saturating_add(1));
            [header, hint, if restorable_tail { 0 } else { s.seen_end }, scan::lost_tail_floor(scans, i).unwrap_or(0)]
        })
        .max()
        .unwrap_or(0);
    recorded.max(proven)
}
