//! Read-only scanning of a keel WAL directory.
//!
//! The checks are those of recovery (src/wal/recovery.rs, docs/WAL.md
//! "Recovery"): every segment header, every frame's checksum, dense
//! sequence numbers within and across segments, and the durable hints of
//! valid frames after the first damage, which tell a torn tail from
//! corruption. Nothing here opens a file for writing, takes the LOCK or
//! repairs anything.

use keel::wal::format::{
    decode_frame, decode_segment_header, valid_frame, Decoded, FrameHeader, SegmentHeader, FRAME_HEADER_LEN,
    FRAME_MARK, SEGMENT_HEADER_LEN,
};
use keel::wal::{parse_segment_name, RecoveryMode};
use std::fmt;
use std::path::{Path, PathBuf};

/// A failure to inspect the log at all (exit status 3).
#[derive(Debug)]
pub struct IoFail(pub String);

impl fmt::Display for IoFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn io_fail(what: &str, path: &Path, e: std::io::Error) -> IoFail {
    IoFail(format!("cannot {what} {}: {e}", path.display()))
}

/// One segment file, as named on disk.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    pub name: String,
    pub path: PathBuf,
    /// From the file name (what recovery trusts; the header must agree).
    pub first_seq: u64,
    pub size: u64,
}

/// What a WAL directory holds.
#[derive(Debug)]
pub struct Listing {
    /// Segments in log order.
    pub segments: Vec<SegmentFile>,
    /// `*.wal.tmp`: unfinished segments or the spare (open removes them).
    pub temp: Vec<String>,
    /// `salvaged-*` folders left by lossy recovery.
    pub salvaged: Vec<String>,
    /// Anything else except LOCK (recovery ignores it).
    pub other: Vec<String>,
}

/// Lists `path`: a WAL directory, or a single segment file (then the
/// listing holds just that segment).
pub fn list(path: &Path) -> Result<Listing, IoFail> {
    let meta = std::fs::metadata(path).map_err(|e| io_fail("open", path, e))?;
    if meta.is_file() {
        return list_single(path, meta.len());
    }
    let mut l = Listing { segments: Vec::new(), temp: Vec::new(), salvaged: Vec::new(), other: Vec::new() };
    let entries = std::fs::read_dir(path).map_err(|e| io_fail("read directory", path, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_fail("read directory", path, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if let Some(first_seq) = parse_segment_name(&name).filter(|_| !is_dir) {
            let p = entry.path();
            let size = entry.metadata().map_err(|e| io_fail("stat", &p, e))?.len();
            l.segments.push(SegmentFile { name, path: p, first_seq, size });
        } else if name.ends_with(".wal.tmp") {
            l.temp.push(name);
        } else if is_dir && name.starts_with("salvaged-") {
            l.salvaged.push(name);
        } else if name != "LOCK" {
            l.other.push(name);
        }
    }
    l.segments.sort_by_key(|s| s.first_seq);
    l.temp.sort();
    l.salvaged.sort();
    l.other.sort();
    Ok(l)
}

fn list_single(path: &Path, size: u64) -> Result<Listing, IoFail> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let first_seq = match parse_segment_name(&name) {
        Some(s) => s,
        // Not named like a segment: accept it only if its header says it is one.
        None => {
            let bytes = read_segment(path)?;
            match decode_segment_header(&bytes) {
                Ok(h) => h.first_seq,
                Err(why) => return Err(IoFail(format!("{} is not a keel WAL segment ({why})", path.display()))),
            }
        }
    };
    let seg = SegmentFile { name, path: path.to_path_buf(), first_seq, size };
    Ok(Listing { segments: vec![seg], temp: Vec::new(), salvaged: Vec::new(), other: Vec::new() })
}

pub fn read_segment(path: &Path) -> Result<Vec<u8>, IoFail> {
    std::fs::read(path).map_err(|e| io_fail("read", path, e))
}

/// A valid frame of a segment's valid prefix, handed to the visitor.
pub struct Frame<'a> {
    pub offset: u64,
    pub header: FrameHeader,
    pub payload: &'a [u8],
}

/// One segment read front to back (the fields recovery's scan keeps, plus
/// counts for `stat`).
#[derive(Debug)]
pub struct SegmentScan {
    pub file: SegmentFile,
    pub header: Result<SegmentHeader, String>,
    /// Valid frames in the prefix, and the records they carry.
    pub frames: u64,
    pub records: u64,
    /// Offset just past the last valid frame (header only: 64).
    pub end: u64,
    /// Sequence number after the last valid record.
    pub next_seq: u64,
    /// First damage: offset and reason.
    pub damage: Option<(u64, String)>,
    /// Largest durable hint among valid frames (before the damage, or after
    /// it with a sequence at or above the damaged one) and that frame's offset.
    pub max_hint: Option<(u64, u64)>,
    /// Valid frames found after the damage by probing every 8-byte boundary.
    pub after_damage: u64,
    /// Largest durable hint in the valid prefix alone.
    pub prefix_hint: Option<u64>,
    /// The last valid frame of the prefix: (kind, durable hint).
    pub last_frame: Option<(u8, u64)>,
}

impl SegmentScan {
    pub fn has_frames(&self) -> bool {
        self.max_hint.is_some()
    }
}

/// Scans one segment; `visit` sees every valid frame of the prefix in order.
pub fn scan_segment<E>(
    file: SegmentFile,
    bytes: &[u8],
    mut visit: impl FnMut(&SegmentFile, Frame<'_>) -> Result<(), E>,
) -> Result<SegmentScan, E> {
    let mut s = SegmentScan {
        header: Err(String::new()),
        frames: 0,
        records: 0,
        end: 0,
        next_seq: file.first_seq,
        damage: None,
        max_hint: None,
        after_damage: 0,
        prefix_hint: None,
        last_frame: None,
        file,
    };
    let header = match decode_segment_header(bytes) {
        Ok(h) if h.first_seq == s.file.first_seq => h,
        Ok(h) => {
            let why = format!("header says first sequence {} but the file name says {}", h.first_seq, s.file.first_seq);
            s.header = Err(why.clone());
            s.damage = Some((0, why));
            return Ok(s);
        }
        Err(why) => {
            s.header = Err(why.to_string());
            s.damage = Some((0, why.to_string()));
            return Ok(s);
        }
    };
    s.header = Ok(header);
    let mut off = SEGMENT_HEADER_LEN as usize;
    loop {
        match decode_frame(&bytes[off.min(bytes.len())..], header.salt) {
            Decoded::Frame(h) if h.seq == s.next_seq => {
                let payload = &bytes[off + FRAME_HEADER_LEN..off + FRAME_HEADER_LEN + h.len as usize];
                visit(&s.file, Frame { offset: off as u64, header: h, payload })?;
                off += h.size() as usize;
                s.next_seq += h.count as u64;
                s.frames += 1;
                s.records += h.count as u64;
                s.last_frame = Some((h.kind, h.durable));
                s.prefix_hint = s.prefix_hint.max(Some(h.durable));
                note_hint(&mut s.max_hint, h.durable, off as u64 - h.size());
            }
            Decoded::Frame(h) => {
                s.damage = Some((off as u64, format!("frame has sequence {} where {} was expected", h.seq, s.next_seq)));
                break;
            }
            Decoded::End => break,
            Decoded::Invalid(why) => {
                s.damage = Some((off as u64, why.to_string()));
                break;
            }
        }
    }
    s.end = off as u64;
    if let Some((at, _)) = s.damage {
        // Frames are 8-byte aligned: trying every boundary after the damage
        // finds each valid frame that survived it.
        let mut probe = at as usize + 8;
        while probe + FRAME_HEADER_LEN <= bytes.len() {
            if let Some(h) = valid_frame(&bytes[probe..], header.salt) {
                if h.seq >= s.next_seq {
                    s.after_damage += 1;
                    note_hint(&mut s.max_hint, h.durable, probe as u64);
                }
            }
            probe += 8;
        }
    }
    Ok(s)
}

fn note_hint(max: &mut Option<(u64, u64)>, hint: u64, offset: u64) {
    if max.map_or(true, |(m, _)| hint > m) {
        *max = Some((hint, offset));
    }
}

/// Scans every segment of a listing (reading one at a time).
pub fn scan_all(l: &Listing) -> Result<Vec<SegmentScan>, IoFail> {
    l.segments
        .iter()
        .map(|f| {
            let bytes = read_segment(&f.path)?;
            scan_segment(f.clone(), &bytes, |_, _| Ok::<(), IoFail>(()))
        })
        .collect()
}

/// The first place where the log stops being a valid dense prefix.
#[derive(Debug)]
pub struct Damage {
    /// Index of the segment holding the damage (or ending before a hole).
    pub seg: usize,
    pub offset: u64,
    /// The sequence number that could not be read.
    pub seq: u64,
    pub reason: String,
    /// The segment header itself is damaged (always corruption).
    pub bad_header: bool,
    /// Damage inside the frames (false: a hole between segments).
    pub in_frames: bool,
    /// A valid frame after the damage whose durable hint is >= seq:
    /// (segment index, offset, hint). Its presence makes this corruption.
    pub proof: Option<(usize, u64, u64)>,
    /// Any valid frame after the damage.
    pub evidence: bool,
}

impl Damage {
    /// The unsynced end a crash leaves: nothing after it vouches for it.
    pub fn torn_tail(&self) -> bool {
        self.proof.is_none() && !self.bad_header
    }

    /// Whether `Wal::open` in `mode` accepts this damage (docs/WAL.md table).
    pub fn opens(&self, mode: RecoveryMode) -> bool {
        match mode {
            RecoveryMode::Absolute => false,
            RecoveryMode::TolerateTail => self.torn_tail(),
            RecoveryMode::PointInTime => self.proof.is_none(),
            RecoveryMode::Salvage => true,
        }
    }

    /// What a successful open in a mode that accepts the damage does.
    pub fn repair(&self, scans: &[SegmentScan]) -> String {
        let seg = &scans[self.seg];
        let last = self.seg + 1 == scans.len();
        let mut steps = Vec::new();
        let aside = !last || self.bad_header || !self.torn_tail() || self.evidence;
        if aside && !self.bad_header && self.in_frames {
            steps.push(format!("copy {} to salvaged-<ns>/", seg.file.name));
        }
        let first_moved = if self.bad_header { self.seg } else { self.seg + 1 };
        if aside && first_moved < scans.len() {
            let n = scans.len() - first_moved;
            steps.push(format!("move {n} segment(s) from {} on to salvaged-<ns>/", scans[first_moved].file.name));
        }
        if self.in_frames && !self.bad_header {
            steps.push(format!("zero {} from offset {} to its end", seg.file.name, self.offset));
        }
        let kept = if self.bad_header { self.seg } else { self.seg + 1 };
        let first = scans[0].file.first_seq;
        steps.push(if kept == 0 || self.seq <= first {
            format!("keep no record (the next append gets sequence {})", self.seq)
        } else {
            format!("keep records {first}..{}", self.seq - 1)
        });
        steps.join(", ")
    }
}

pub fn find_damage(scans: &[SegmentScan]) -> Option<Damage> {
    let mut found: Option<Damage> = None;
    for (i, s) in scans.iter().enumerate() {
        if let Some(d) = found.as_mut() {
            d.evidence |= s.has_frames();
            if d.proof.is_none() {
                d.proof = s.max_hint.filter(|(h, _)| *h >= d.seq).map(|(h, at)| (i, at, h));
            }
            continue;
        }
        if i > 0 {
            let prev = &scans[i - 1];
            if s.file.first_seq != prev.next_seq {
                found = Some(Damage {
                    seg: i - 1,
                    offset: prev.end,
                    seq: prev.next_seq,
                    reason: format!(
                        "next segment {} starts at sequence {} (missing or duplicated segment)",
                        s.file.name, s.file.first_seq
                    ),
                    bad_header: false,
                    in_frames: false,
                    proof: s.max_hint.filter(|(h, _)| *h >= prev.next_seq).map(|(h, at)| (i, at, h)),
                    evidence: s.has_frames(),
                });
                continue;
            }
        }
        if let Some((offset, reason)) = &s.damage {
            found = Some(Damage {
                seg: i,
                offset: *offset,
                seq: s.next_seq,
                reason: reason.clone(),
                bad_header: s.header.is_err(),
                in_frames: true,
                proof: s.max_hint.filter(|(h, _)| *h >= s.next_seq).map(|(h, at)| (i, at, h)),
                evidence: s.after_damage > 0,
            });
        }
    }
    found
}

/// Facts about the valid prefix of the log (up to the first damage).
pub struct Summary {
    /// First and last record, if any record is kept.
    pub range: Option<(u64, u64)>,
    pub records: u64,
    /// Largest durable hint in the valid prefix: D as last written down.
    pub max_hint: Option<u64>,
    /// The last valid frame is a MARK (clean close), with its hint.
    pub clean_close: Option<u64>,
}

pub fn summarize(scans: &[SegmentScan], damage: Option<&Damage>) -> Summary {
    let upto = match damage {
        Some(d) if d.bad_header => d.seg,
        Some(d) => d.seg + 1,
        None => scans.len(),
    };
    let prefix = &scans[..upto];
    let records: u64 = prefix.iter().map(|s| s.records).sum();
    let range = match (prefix.first(), prefix.last()) {
        (Some(f), Some(l)) if l.next_seq > f.file.first_seq => Some((f.file.first_seq, l.next_seq - 1)),
        _ => None,
    };
    // Hints of the kept prefix only (frames after a damage are not part of the log).
    let max_hint = prefix.iter().filter_map(|s| s.prefix_hint).max();
    let last_frame = prefix.iter().rev().find_map(|s| s.last_frame);
    let clean_close = match (damage, last_frame) {
        (None, Some((FRAME_MARK, hint))) => Some(hint),
        _ => None,
    };
    Summary { range, records, max_hint, clean_close }
}

pub fn parse_mode(s: &str) -> Option<RecoveryMode> {
    match s.to_ascii_lowercase().replace('-', "_").as_str() {
        "tolerate_tail" => Some(RecoveryMode::TolerateTail),
        "absolute" => Some(RecoveryMode::Absolute),
        "point_in_time" => Some(RecoveryMode::PointInTime),
        "salvage" => Some(RecoveryMode::Salvage),
        _ => None,
    }
}

pub fn mode_name(m: RecoveryMode) -> &'static str {
    match m {
        RecoveryMode::TolerateTail => "tolerate_tail",
        RecoveryMode::Absolute => "absolute",
        RecoveryMode::PointInTime => "point_in_time",
        RecoveryMode::Salvage => "salvage",
    }
}

pub const MODES: [RecoveryMode; 4] =
    [RecoveryMode::TolerateTail, RecoveryMode::Absolute, RecoveryMode::PointInTime, RecoveryMode::Salvage];
