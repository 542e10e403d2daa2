//! Read-only scanning of a keel WAL directory.
//!
//! The checks and the damage classification are the library's own
//! (`keel::wal::scan`, shared with recovery); this file lists the
//! directory, reads files and summarises. Nothing here opens a file for
//! writing, takes the LOCK or repairs anything.

use keel::wal::extent::{wrong_length, MetaFile, FIXED_LEN, META_NAME, META_TEMP};
use keel::wal::format::{decode_segment_header, FRAME_MARK};
use keel::wal::scan::{scan_segment, Damage, SegmentFile, SegmentScan};
use keel::wal::{parse_segment_name, RecoveryMode};
use std::fmt;
use std::path::Path;

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

/// What a WAL directory holds.
#[derive(Debug)]
pub struct Listing {
    /// Segments in log order.
    pub segments: Vec<SegmentFile>,
    /// `*.wal.tmp`: unfinished segments or the spare (open moves them aside
    /// and removes them).
    pub temp: Vec<String>,
    /// `salvaged-*` folders left by lossy recovery.
    pub salvaged: Vec<String>,
    /// Anything else except LOCK (recovery ignores it).
    pub other: Vec<String>,
    /// The extent record (None when a single segment file is inspected).
    pub meta: Option<MetaFile>,
}

/// Lists `path`: a WAL directory, or a single segment file (then the
/// listing holds just that segment).
pub fn list(path: &Path) -> Result<Listing, IoFail> {
    let meta = std::fs::metadata(path).map_err(|e| io_fail("open", path, e))?;
    if meta.is_file() {
        return list_single(path, meta.len());
    }
    let mut l = Listing { segments: Vec::new(), temp: Vec::new(), salvaged: Vec::new(), other: Vec::new(), meta: None };
    let mut meta = None;
    let entries = std::fs::read_dir(path).map_err(|e| io_fail("read directory", path, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_fail("read directory", path, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if let Some(first_seq) = parse_segment_name(&name) {
            let p = entry.path();
            // Followed through a symlink, as Wal::open reads it.
            let m = std::fs::metadata(&p).map_err(|e| io_fail("stat", &p, e))?;
            if !m.is_file() {
                // Wal::open would try to read it as a segment and fail.
                return Err(IoFail(format!("{} is named like a WAL segment but is not a regular file", p.display())));
            }
            l.segments.push(SegmentFile { name, path: p, first_seq, size: m.len() });
        } else if name == META_NAME {
            let p = entry.path();
            let m = std::fs::metadata(&p).map_err(|e| io_fail("stat", &p, e))?;
            if !m.is_file() {
                // Wal::open cannot read it (and a FIFO would block the read).
                return Err(IoFail(format!("cannot read {}: not a regular file", p.display())));
            }
            meta = Some(read_meta(&p, m.len())?);
        } else if name == META_TEMP && is_dir {
            // Wal::open removes wal.meta.tmp first, and cannot remove a folder.
            return Err(IoFail(format!("{} is a folder: Wal::open cannot remove it", entry.path().display())));
        } else if name.ends_with(".wal.tmp") || name == META_TEMP {
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
    // As Wal::open judges it: any `salvaged-*` entry, a folder or not, marks a WAL's directory.
    let salvaged = !l.salvaged.is_empty() || l.other.iter().any(|n| n.starts_with("salvaged-"));
    if l.segments.is_empty() && meta.is_none() && l.temp.is_empty() && !salvaged && !l.other.is_empty() {
        // Not an empty log: something else (an engine's data directory, a
        // shard directory: its log is in shards/<id>/wal).
        return Err(IoFail(format!(
            "{} is not a keel WAL directory: no segments and no {META_NAME}, but it holds {}",
            path.display(),
            l.other.join(" ")
        )));
    }
    l.meta = Some(MetaFile::from_bytes(meta.as_deref()));
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
    Ok(Listing { segments: vec![seg], temp: Vec::new(), salvaged: Vec::new(), other: Vec::new(), meta: None })
}

/// `wal.meta`'s bytes; only its head when its length is wrong for the
/// count it names (damaged whatever else it holds, and a sparse file of
/// any size is not read into memory), as recovery does.
fn read_meta(path: &Path, len: u64) -> Result<Vec<u8>, IoFail> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| io_fail("read", path, e))?;
    let mut head = Vec::new();
    f.take(FIXED_LEN as u64).read_to_end(&mut head).map_err(|e| io_fail("read", path, e))?;
    match wrong_length(&head, len) {
        Some(_) => Ok(head),
        None => read_segment(path),
    }
}

pub fn read_segment(path: &Path) -> Result<Vec<u8>, IoFail> {
    std::fs::read(path).map_err(|e| io_fail("read", path, e))
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

/// What a successful open in a mode that accepts the damage `d` does
/// (`gap`: the next sequence number skips some after the records kept).
pub fn repair(d: &Damage, scans: &[SegmentScan], gap: bool) -> String {
    let seg = &scans[d.seg];
    let mut steps = Vec::new();
    let aside = d.sets_aside(scans.len());
    if aside && !d.bad_header && d.in_frames {
        steps.push(format!("copy {} to salvaged-<ns>/", seg.file.name));
    }
    let first_moved = d.kept_segments();
    if aside && first_moved < scans.len() {
        let n = scans.len() - first_moved;
        steps.push(format!("move {n} segment(s) from {} on to salvaged-<ns>/", scans[first_moved].file.name));
    }
    if d.in_frames && !d.bad_header {
        steps.push(format!("zero {} from offset {} to its end", seg.file.name, d.offset));
    }
    // A cut segment that appends go on in gets its length back; after a
    // gap the next segment's link proves where its records end.
    if let Some(allocated) = seg.shortened.filter(|_| d.in_frames && !gap) {
        steps.push(format!("give {} back its allocated {allocated} bytes", seg.file.name));
    }
    let kept = d.kept_segments();
    let first = scans[0].file.first_seq;
    steps.push(if kept == 0 || d.seq <= first {
        "keep no record".to_string()
    } else {
        format!("keep records {first}..{}", d.seq - 1)
    });
    steps.join(", ")
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
