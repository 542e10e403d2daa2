//! Opening an existing log: scan every segment (`scan.rs`, shared with
//! `keel-wal verify`), then apply the recovery mode to the first damage
//! (W5). The outcome table is in docs/WAL.md.

use crate::fs::{File, FileSystem, WholeFile};
use super::extent::{self, Extent, MetaFile};
use super::format::{decode_segment_header, Link, SEGMENT_HEADER_LEN};
use super::scan::{find_damage, header_only, kept_end, scan_segment, Damage, SegmentFile, SegmentScan};
use super::segment::{self, Active, SegmentMeta};
use super::RecoveryMode;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What recovery leaves behind: the retained segments in order, the last
/// one opened for appends (None when a new segment must be created: the
/// log has none yet, or the next sequence number skips a declared gap),
/// and the sequence number the next append gets.
pub struct Recovered {
    pub segments: Vec<SegmentMeta>,
    pub active: Option<Active>,
    pub next_seq: u64,
    /// When `active` is None: the segment the new one follows.
    pub prev: Option<Link>,
    /// What a lossy recovery gave up (None when the log was whole).
    pub report: Option<RecoveryReport>,
    /// The log is exactly what its extent record describes, every record
    /// in it durable (a clean close left it so, and nothing touched it
    /// since): open needs neither a sync nor a new record (`extent_matches`).
    pub settled: bool,
    /// Unfinished files an earlier process left, renamed to
    /// `segment::stray_name`s, for the log to remove off its open.
    pub strays: Vec<PathBuf>,
}

/// What recovery repaired or gave up, for the caller of an explicit
/// salvage (and of a lossy `TOLERATE_TAIL`/`POINT_IN_TIME` open).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The first damage found, as the error of a strict mode would name it.
    pub damage: Option<String>,
    /// Where the segments disagree with the extent record (`wal.meta`).
    pub extent: Vec<String>,
    /// Sequence numbers known lost (inclusive ranges).
    pub lost: Vec<(u64, u64)>,
    /// Sequence numbers the log skips so that none is reissued (inclusive):
    /// the next append gets the one after.
    pub skipped: Option<(u64, u64)>,
    /// The folder holding the segments set aside, if any.
    pub set_aside: Option<std::path::PathBuf>,
}

pub fn read_all(file: &dyn File) -> std::io::Result<Vec<u8>> {
    let len = file.len()? as usize;
    // A crafted (sparse) file may be far larger than memory: fail, do not abort.
    let mut buf = Vec::new();
    buf.try_reserve_exact(len).map_err(|_| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
    buf.resize(len, 0);
    let got = file.read_up_to(&mut buf, 0)?;
    buf.truncate(got);
    Ok(buf)
}

fn read_segment(fs: &dyn FileSystem, path: &Path) -> Result<WholeFile> {
    let mapped = fs.map_readonly(path).map_err(|e| {
        let what = match e.raw_os_error() {
            // mmap of a directory (or another non-file) named like a segment.
            Some(libc::ENODEV) | Some(libc::EISDIR) => "is named like a WAL segment but is not a regular file",
            _ => "cannot be mapped",
        };
        Error::io(format!("{} {what}", path.display()), e)
    })?;
    Ok(match mapped {
        Some(m) => WholeFile::Map(m),
        None => {
            let file = fs.open(path, false).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            WholeFile::Owned(read_all(&*file).map_err(|e| Error::io(format!("reading {}", path.display()), e))?)
        }
    })
}

fn scan(name: &str, path: &Path, first_seq: u64, bytes: &WholeFile) -> SegmentScan {
    let bytes = bytes.bytes();
    let seg = SegmentFile { name: name.to_string(), path: path.to_path_buf(), first_seq, size: bytes.len() as u64 };
    scan_segment(seg, bytes, |_, _| Ok::<(), std::convert::Infallible>(())).unwrap_or_else(|never| match never {})
}

/// How many leading segments of `found` hold only records up to
/// `persisted`: each but the last whose successor starts at or below
/// `persisted + 1`.
fn persisted_prefix(found: &[(u64, String)], persisted: u64) -> usize {
    found.get(1..).map_or(0, |rest| rest.partition_point(|(first, _)| *first <= persisted.saturating_add(1)))
}

/// The first `n` segments of `found`, each by its header and the link of
/// the segment after it (`scan::header_only`), or scanned in full when
/// that link does not name it.
fn headers_only(fs: &dyn FileSystem, dir: &Path, found: &[(u64, String)], n: usize) -> Result<Vec<SegmentScan>> {
    // Each header is read once: as the segment after one, then as its own.
    let mut next = if n > 0 { Some(read_header(fs, &dir.join(&found[0].1))?) } else { None };
    (0..n)
        .map(|i| {
            let (first_seq, name) = &found[i];
            let path = dir.join(name);
            let (header, size) = next.take().expect("read before its turn");
            let after = read_header(fs, &dir.join(&found[i + 1].1))?;
            let end = decode_segment_header(&after.0).ok().and_then(|h| h.prev).filter(|l| l.first_seq == *first_seq).map(|l| l.end);
            next = Some(after);
            let file = SegmentFile { name: name.clone(), path: path.clone(), first_seq: *first_seq, size };
            match end.and_then(|end| header_only(file, &header, end)) {
                Some(taken) => Ok(taken),
                None => Ok(scan(name, &path, *first_seq, &read_segment(fs, &path)?)),
            }
        })
        .collect()
}

/// The header of the segment at `path` (fewer bytes when the file is
/// shorter) and the file's length. Read with one small read, not through a
/// mapping: the fault of a mapping's first page reads a whole readahead
/// window (megabytes on many devices), which a segment taken by its
/// header never needs.
fn read_header(fs: &dyn FileSystem, path: &Path) -> Result<(Vec<u8>, u64)> {
    let io = |e| Error::io(format!("reading the header of {}", path.display()), e);
    let file = fs.open(path, false).map_err(io)?;
    let size = file.len().map_err(io)?;
    let mut header = vec![0u8; SEGMENT_HEADER_LEN.min(size) as usize];
    let got = file.read_up_to(&mut header, 0).map_err(io)?;
    header.truncate(got);
    Ok((header, size))
}

/// Below this many bytes in a pair of segments both are scanned on the
/// calling thread: a thread costs more than it saves on small segments.
const SCAN_PAIR_MIN: usize = 1 << 20;

/// How much of each segment of the next pair the scan asks the kernel
/// for ahead of time (`read_and_scan`): a default-sized segment whole,
/// while segments configured up to 4 GiB do not pull gigabytes into the
/// page cache before the scan reaches them (the kernel's own sequential
/// readahead reads the rest as the scan goes).
const SCAN_READ_AHEAD: usize = 64 << 20;

/// Reads and scans the segments `found` (first sequence, name), in order;
/// the first `trusted` by their headers only (`headers_only`).
/// Scanning is the checksum of every retained frame, the bulk of an open:
/// segments go two at a time, the second on a helper thread. The next
/// pair is mapped and asked of the kernel (`WholeFile::will_need`, up to
/// SCAN_READ_AHEAD of each) before this pair is scanned, so on a cold
/// page cache the device reads it while the checksums run instead of
/// waiting for the scan's page faults.
/// The file system is only called from this thread, in segment order, so
/// it sees the same calls however the scans are spread.
fn read_and_scan<'a>(fs: &dyn FileSystem, dir: &Path, found: &'a [(u64, String)], trusted: usize) -> Result<Vec<SegmentScan>> {
    let mut scans = Vec::with_capacity(found.len());
    scans.extend(headers_only(fs, dir, found, trusted)?);
    let read_pair = |pair: &'a [(u64, String)]| {
        pair.iter()
            .map(|(first_seq, name)| {
                let path = dir.join(name);
                let bytes = read_segment(fs, &path)?;
                bytes.will_need(0..bytes.bytes().len().min(SCAN_READ_AHEAD));
                Ok((name.as_str(), path, *first_seq, bytes))
            })
            .collect::<Result<Vec<_>>>()
    };
    let mut pairs = found[trusted..].chunks(2);
    let mut next = pairs.next().map(read_pair).transpose()?;
    while let Some(read) = next.take() {
        next = pairs.next().map(read_pair).transpose()?;
        let scan_one = |(name, path, first_seq, bytes): &(&str, PathBuf, u64, WholeFile)| scan(name, path, *first_seq, bytes);
        match read.as_slice() {
            [a, b] if a.3.bytes().len() + b.3.bytes().len() >= SCAN_PAIR_MIN => {
                let (sa, sb) = std::thread::scope(|s| {
                    let helper = s.spawn(|| scan_one(b));
                    let sa = scan_one(a);
                    (sa, helper.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                });
                scans.extend([sa, sb]);
            }
            _ => scans.extend(read.iter().map(scan_one)),
        }
    }
    Ok(scans)
}

fn describe(d: &Damage, scans: &[SegmentScan]) -> String {
    format!(
        "WAL damage in segment {} at offset {} (sequence {}): {}{}",
        scans[d.seg].file.path.display(),
        d.offset,
        d.seq,
        d.reason,
        if d.proof.is_some() { "; valid records written after it was durable follow the damage" } else { "" }
    )
}

/// Scans the log in `dir` and repairs it as `mode` allows.
/// `persisted`: records up to it are persisted elsewhere by the log's
/// owner (a shard's segments; 0: none). Segments holding only such records
/// are taken by their headers (`headers_only`) when the extent record is
/// there to vouch for the list; at the first sign of damage or of a
/// disagreement with the record, every segment is scanned in full and
/// judged as without it. `names`: the directory's names, listed by the
/// caller where nothing can have changed them since (else listed here).
pub fn recover(fs: &dyn FileSystem, dir: &Path, mode: RecoveryMode, persisted: u64, names: Option<Vec<String>>, restorable_tail: bool) -> Result<Recovered> {
    let names = match names {
        Some(names) => names,
        None => fs.list(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?,
    };
    let Names { found, strays, moved } = sort_names(fs, dir, names)?;
    match recover_segments(fs, dir, mode, persisted, found, moved, restorable_tail) {
        Ok(rec) => Ok(Recovered { strays, ..rec }),
        Err(e) => {
            // No log will remove them later: the open fails here.
            remove_strays(fs, &strays);
            Err(e)
        }
    }
}

/// Removes the unfinished files an earlier process left (`Recovered::strays`);
/// one that cannot be removed is found again by the next open.
pub fn remove_strays(fs: &dyn FileSystem, strays: &[PathBuf]) {
    for path in strays {
        let _ = fs.remove(path);
    }
}

/// A WAL directory's names, sorted out (`sort_names`).
struct Names {
    /// The segments: (first sequence number, name), in order.
    found: Vec<(u64, String)>,
    /// The unfinished files an earlier process left, renamed out of every
    /// writer's way (`Recovered::strays`).
    strays: Vec<PathBuf>,
    /// Whether the directory changed.
    moved: bool,
}

fn sort_names(fs: &dyn FileSystem, dir: &Path, names: Vec<String>) -> Result<Names> {
    let mut moved = false;
    let mut found = Vec::new();
    let mut strays = Vec::new();
    // Wrapping: a name left in the folder may take the last number, and a
    // stray renamed over another stray loses nothing (both are removed).
    let mut next_stray = names.iter().filter_map(|n| segment::parse_stray(n)).max().map_or(0, |n| n.wrapping_add(1));
    for name in names {
        if name == extent::META_TEMP {
            // An extent record that was never renamed is not the record.
            fs.remove(&dir.join(&name)).map_err(|e| Error::io(format!("removing stray {name}"), e))?;
            moved = true;
        } else if name.ends_with(segment::TEMP_SUFFIX) {
            // A segment that never finished W8 holds no acknowledged record.
            // Unlinking a preallocated one is slow (45 ms for 64 MiB here),
            // so it is renamed out of every writer's way and removed later.
            let path = match segment::parse_stray(&name) {
                Some(_) => dir.join(&name),
                None => {
                    let to = dir.join(segment::stray_name(next_stray));
                    next_stray = next_stray.wrapping_add(1);
                    fs.rename(&dir.join(&name), &to).map_err(|e| Error::io(format!("moving stray {name} aside"), e))?;
                    moved = true;
                    to
                }
            };
            strays.push(path);
        } else if let Some(first_seq) = segment::parse_name(&name) {
            found.push((first_seq, name));
        }
    }
    if moved {
        fs.sync_dir(dir).map_err(|e| Error::io(format!("syncing {}", dir.display()), e))?;
    }
    found.sort();
    Ok(Names { found, strays, moved })
}

/// `recover` once the directory's names are sorted (`moved_temp`: the
/// directory changed, so the log is not settled).
fn recover_segments(fs: &dyn FileSystem, dir: &Path, mode: RecoveryMode, persisted: u64, found: Vec<(u64, String)>, moved_temp: bool, restorable_tail: bool) -> Result<Recovered> {
    let meta = extent::read(fs, dir)?;
    let trusted = match meta {
        MetaFile::Present(_) => persisted_prefix(&found, persisted),
        _ => 0,
    };
    // How many segments stay, and where the last one's valid data ends.
    // Damage that no later frame vouches for is the unsynced tail a crash
    // leaves (writeback reaches the disk in any order, so valid frames may
    // follow it, and in NONE/PERIODIC mode a full segment may be unsynced
    // when the next one starts); nothing there was ever part of D. A bad
    // segment header is never a tail: headers are synced before a segment
    // is used (W8). Whatever the damage, the extent record must agree: a
    // segment it lists that is gone or replaced, or records it saw durable
    // that are not there, is lost data only SALVAGE accepts.
    let judge = |trusted| -> Result<_> {
        let scans = read_and_scan(fs, dir, &found, trusted)?;
        let damage = find_damage(&scans);
        let kept_end = kept_end(&scans, damage.as_ref());
        let problems = extent::check(&meta, &scans, kept_end);
        Ok((scans, damage, kept_end, problems))
    };
    let (mut scans, mut damage, mut kept_end, mut problems) = judge(trusted)?;
    if trusted > 0 && (damage.is_some() || !problems.is_empty()) {
        (scans, damage, kept_end, problems) = judge(0)?;
    }
    let keep = damage.as_ref().map_or(scans.len(), |d| d.kept_segments());
    let cut = damage.as_ref().filter(|d| d.in_frames && !d.bad_header).map(|d| (d.seg, d.offset));
    let refused = damage.as_ref().filter(|d| !d.opens(mode));
    if refused.is_some() || (!problems.is_empty() && mode != RecoveryMode::Salvage) {
        let mut why: Vec<String> = refused.map(|d| describe(d, &scans)).into_iter().collect();
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            why.push(format!("the WAL's extent record disagrees with its segments: {}", list.join("; ")));
        }
        return Err(Error::corruption(format!("{} (recovery mode {:?})", why.join("; "), mode)));
    }

    // Never reissue a sequence number: the next one is above everything
    // the extent record (or, without one, the segment headers and durable
    // hints) proves was handed out, even when records before it are gone.
    let next_seq = kept_end.max(extent::next_floor(&meta, &scans, restorable_tail));
    let kept_extent = |s: &SegmentScan| s.header.as_ref().ok().map(|h| (s.file.first_seq, h.salt, h.prev, s.checked_end));
    let kept: Vec<(u64, u32, Option<Link>, u64)> = scans[..keep].iter().filter_map(kept_extent).collect();
    // Records a process crash left in the page cache only (in none and
    // periodic mode a full segment waits for the next sync) become durable
    // before the open claims them (D, the extent record): every kept
    // segment holding a record above what is proven durable, by the extent
    // record's D or a frame's durable hint, is synced (the last one by
    // `open_active` below, with its cut).
    let recorded = match &meta {
        MetaFile::Present(e) => e.durable,
        _ => 0,
    };
    let proven = scans[..keep].iter().filter_map(|s| s.prefix_hint).fold(recorded, u64::max);
    for s in scans[..keep.saturating_sub(1)].iter().filter(|s| s.next_seq.saturating_sub(1) > proven) {
        let synced = fs.open(&s.file.path, false).and_then(|f| f.sync_data());
        synced.map_err(|e| Error::io(format!("syncing {}", s.file.path.display()), e))?;
    }
    let aside = damage.as_ref().filter(|d| d.sets_aside(scans.len()));
    // A damaged segment is copied aside whole before its tail is cut below.
    let set_aside_in = aside.map(|d| start_set_aside(fs, dir, &scans, d)).transpose()?;

    let gap = next_seq > kept_end;
    let settled = !moved_temp && !gap && damage.is_none() && problems.is_empty() && extent_matches(&meta, next_seq, &kept);
    let cut_last = |k: usize| cut.filter(|(s, _)| *s == k - 1).map(|(_, o)| o);
    let (active, prev) = match keep {
        0 => (None, None),
        k if gap => {
            // The last kept segment ends the records before the gap: repair
            // and sync it; appends go to a new segment that declares the gap.
            // A segment cut short keeps its length: the new one's link
            // proves where its records end, so it is whole to the next
            // open, and a disk too full for the lost length (a copy cut
            // short by it) still opens.
            drop(open_active(fs, &scans[k - 1], cut_last(k), false, true)?);
            let (first_seq, salt, ..) = *kept.last().expect("kept segments have valid headers");
            (None, Some(Link { first_seq, salt, end: kept_end }))
        }
        k => (Some(open_active(fs, &scans[k - 1], cut_last(k), true, !settled)?), None),
    };
    if let (Some(d), Some(folder)) = (aside, &set_aside_in) {
        // The record before the moves, so that it never lists a segment
        // set aside; after the kept segment's cut and sync above, so that
        // no power cut takes a record it claims durable (the kept records
        // may have been in the page cache only, after a process crash).
        let remains = Extent {
            durable: kept_end.saturating_sub(1),
            next_seq,
            segments: kept.iter().map(|&(f, salt, ..)| (f, salt)).collect(),
        };
        extent::write(fs, dir, &remains)?;
        finish_set_aside(fs, dir, folder, &scans[d.kept_segments()..])?;
    }
    let report = (damage.is_some() || !problems.is_empty() || gap).then(|| RecoveryReport {
        damage: damage.as_ref().map(|d| describe(d, &scans)),
        extent: problems.iter().map(|p| p.to_string()).collect(),
        lost: lost_ranges(&problems, damage.as_ref(), kept_end),
        skipped: gap.then(|| (kept_end, next_seq - 1)),
        set_aside: set_aside_in,
    });
    let segments = kept
        .into_iter()
        .map(|(first, salt, link, checked_end)| SegmentMeta { checked_end, ..SegmentMeta::new(dir, first, salt, link) })
        .collect();
    Ok(Recovered { segments, active, next_seq, prev, report, settled, strays: Vec::new() })
}

/// The sequence numbers recovery knows it lost: the extent record's, and
/// the records a later frame's durable hint proves were durable at and
/// after the first damage (the record may not cover them yet).
fn lost_ranges(problems: &[extent::Problem], damage: Option<&Damage>, kept_end: u64) -> Vec<(u64, u64)> {
    let mut lost: Vec<(u64, u64)> = problems.iter().filter_map(|p| p.lost).collect();
    if let Some((_, _, hint)) = damage.and_then(|d| d.proof).filter(|&(_, _, h)| h >= kept_end) {
        if !lost.iter().any(|&(a, b)| a <= kept_end && hint <= b) {
            lost.push((kept_end, hint));
        }
    }
    lost
}

/// Whether `meta` already records what an open of these `kept` segments
/// would write (every record below `next_seq` durable, the same segments):
/// the extent record was written, after a sync that made every record
/// durable, by an earlier open of this log, which had synced the log's
/// own folder entry first. A record whose rename was not yet durable
/// (that process died inside the replace) can only be lost to the one
/// before it, which a crash before the replace leaves too: recovery
/// accepts it and still finds every record durable in the segments.
fn extent_matches(meta: &MetaFile, next_seq: u64, kept: &[(u64, u32, Option<Link>, u64)]) -> bool {
    let MetaFile::Present(m) = meta else { return false };
    !kept.is_empty()
        && m.durable.checked_add(1) == Some(next_seq)
        && m.next_seq == next_seq
        && m.segments.iter().copied().eq(kept.iter().map(|&(f, salt, ..)| (f, salt)))
}

/// Makes `<dir>/salvaged-<ns>/` for the segments recovery gives up (it
/// never deletes data), and copies a damaged segment whose prefix stays
/// in the log into it, durably: the original's tail is cut after this.
fn start_set_aside(fs: &dyn FileSystem, dir: &Path, scans: &[SegmentScan], d: &Damage) -> Result<PathBuf> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let aside = dir.join(format!("salvaged-{stamp}"));
    let io = |what: &str, e| aside_error(&aside, what, e);
    fs.create_dir_all(&aside).map_err(|e| io("creating the folder", e))?;
    let damaged = &scans[d.seg];
    if !d.bad_header && d.in_frames {
        let name = damaged.file.path.file_name().unwrap();
        let src = fs.open(&damaged.file.path, false).map_err(|e| io("opening", e))?;
        let bytes = read_all(&*src).map_err(|e| io("reading", e))?;
        let copy = fs.create(&aside.join(name)).map_err(|e| io("creating a copy", e))?;
        copy.write_at(&[&bytes], 0).map_err(|e| io("copying", e))?;
        copy.sync_data().map_err(|e| io("syncing a copy", e))?;
        fs.sync_dir(&aside).map_err(|e| io("syncing", e))?;
        fs.sync_dir(dir).map_err(|e| io("syncing", e))?;
    }
    Ok(aside)
}

/// Moves `given_up`, the segments after the damage, into `aside`
/// (`start_set_aside`), durably.
fn finish_set_aside(fs: &dyn FileSystem, dir: &Path, aside: &Path, given_up: &[SegmentScan]) -> Result<()> {
    let io = |what: &str, e| aside_error(aside, what, e);
    for s in given_up {
        let name = s.file.path.file_name().unwrap();
        fs.rename(&s.file.path, &aside.join(name)).map_err(|e| io("moving", e))?;
    }
    fs.sync_dir(aside).map_err(|e| io("syncing", e))?;
    fs.sync_dir(dir).map_err(|e| io("syncing", e))
}

fn aside_error(aside: &Path, what: &str, e: std::io::Error) -> Error {
    Error::io(format!("{what} while setting damaged WAL segments aside in {}", aside.display()), e)
}

/// Opens the last retained segment for appends at the end of its valid
/// data; with `cut`, zeroes everything after that offset first; with
/// `restore`, gives a file cut short its allocated length back (zeros),
/// so that the next open finds a whole segment; syncs it with `sync`
/// (needless when every record in it is durable already).
/// Its capacity is its length, whatever `segment_size` is now: segments
/// differ in size (they grow, and the option may have changed), and a
/// full one simply rotates at the next append.
fn open_active(fs: &dyn FileSystem, scan: &SegmentScan, cut: Option<u64>, restore: bool, sync: bool) -> Result<Active> {
    let path = &scan.file.path;
    let io = |what: &str, e| Error::io(format!("{what} {}", path.display()), e);
    let file: Arc<dyn File> = fs.open(path, true).map_err(|e| io("opening", e))?;
    let header = scan.header.as_ref().expect("a kept segment has a valid header");
    let mut len = file.len().map_err(|e| io("reading the size of", e))?;
    if let Some(offset) = cut {
        segment::zero(&*file, offset, len).map_err(|e| io("zeroing the torn tail of", e))?;
    }
    if let Some(allocated) = scan.shortened.filter(|_| restore) {
        debug_assert!(allocated > len, "a shortened segment is shorter than allocated");
        // Appends continue here: the lost bytes could not hold a record,
        // so no gap follows them.
        file.reserve(allocated).map_err(|e| io("restoring the allocated length of", e))?;
        len = allocated;
    }
    // Records recovered from the page cache (a process crash in NONE or
    // PERIODIC mode) become durable before D claims them.
    if sync {
        file.sync_data().map_err(|e| io("syncing", e))?;
    }
    let head = segment::Head { first_seq: scan.file.first_seq, salt: header.salt, prev: header.prev };
    Ok(Active { file, head, offset: scan.end, capacity: len })
}
