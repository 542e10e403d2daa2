//! Opening an existing log: scan every segment, classify damage (W5) and
//! apply the recovery mode. The outcome table is in docs/WAL.md.

use super::format::{decode_frame, decode_segment_header, valid_frame, Decoded, SegmentHeader, SEGMENT_HEADER_LEN};
use super::fs::{File, FileSystem};
use super::segment::{self, Active, SegmentMeta};
use super::RecoveryMode;
use crate::error::{Error, Result};
use std::path::Path;
use std::sync::Arc;

/// What recovery leaves behind: the retained segments in order, the last
/// one opened for appends (None when the log has no segment yet), and the
/// sequence number the next append gets.
pub struct Recovered {
    pub segments: Vec<SegmentMeta>,
    pub active: Option<Active>,
    pub next_seq: u64,
}

/// The result of reading one segment file front to back.
struct SegmentScan {
    meta: SegmentMeta,
    header: Option<SegmentHeader>,
    /// Offset just past the last valid frame.
    end: u64,
    /// Sequence number after the last valid record.
    next_seq: u64,
    /// First damage in the file: offset and reason.
    damage: Option<(u64, String)>,
    /// Valid frames anywhere in the file (before or after the damage).
    frames: bool,
    /// Largest durable hint among them: every record up to it had been
    /// synced when some frame of this file was written. A frame's hint is
    /// below its own sequence, so only frames after a damaged record can
    /// carry a hint that covers it.
    max_hint: u64,
    /// Valid frames after the damage.
    after_damage: bool,
}

pub fn read_all(file: &dyn File) -> std::io::Result<Vec<u8>> {
    let len = file.len()? as usize;
    let mut buf = vec![0u8; len];
    let mut at = 0;
    while at < len {
        let n = file.read_at(&mut buf[at..], at as u64)?;
        if n == 0 {
            buf.truncate(at);
            break;
        }
        at += n;
    }
    Ok(buf)
}

fn scan_segment(fs: &dyn FileSystem, meta: SegmentMeta) -> Result<SegmentScan> {
    let file = fs.open(&meta.path, false).map_err(|e| Error::io(format!("opening {}", meta.path.display()), e))?;
    let bytes = read_all(&*file).map_err(|e| Error::io(format!("reading {}", meta.path.display()), e))?;
    let mut scan = SegmentScan {
        header: None,
        end: 0,
        next_seq: meta.first_seq,
        damage: None,
        frames: false,
        max_hint: 0,
        after_damage: false,
        meta,
    };
    let header = match decode_segment_header(&bytes) {
        Ok(h) if h.first_seq == scan.meta.first_seq => h,
        Ok(h) => {
            scan.damage = Some((0, format!("header says first sequence {} but the file name says {}", h.first_seq, scan.meta.first_seq)));
            return Ok(scan);
        }
        Err(why) => {
            scan.damage = Some((0, why.to_string()));
            return Ok(scan);
        }
    };
    scan.header = Some(header);
    let mut off = SEGMENT_HEADER_LEN as usize;
    loop {
        match decode_frame(&bytes[off.min(bytes.len())..], header.salt) {
            Decoded::Frame(h) if h.seq == scan.next_seq => {
                off += h.size() as usize;
                scan.next_seq += h.count as u64;
                scan.frames = true;
                scan.max_hint = scan.max_hint.max(h.durable);
            }
            Decoded::Frame(h) => {
                scan.damage = Some((off as u64, format!("frame has sequence {} where {} was expected", h.seq, scan.next_seq)));
                break;
            }
            Decoded::End => break,
            Decoded::Invalid(why) => {
                scan.damage = Some((off as u64, why.to_string()));
                break;
            }
        }
    }
    scan.end = off as u64;
    if let Some((at, _)) = scan.damage {
        // What is valid after the damage? Frames are 8-byte aligned, so
        // trying each aligned offset finds every one that survived.
        let mut probe = at as usize + 8;
        while probe + super::format::FRAME_HEADER_LEN <= bytes.len() {
            if let Some(h) = valid_frame(&bytes[probe..], header.salt) {
                if h.seq >= scan.next_seq {
                    scan.frames = true;
                    scan.after_damage = true;
                    scan.max_hint = scan.max_hint.max(h.durable);
                }
            }
            probe += 8;
        }
    }
    Ok(scan)
}

/// The first place where the log stops being a valid dense prefix.
struct Damage {
    /// Index of the segment holding the damage (or ending before a hole).
    seg: usize,
    /// Offset of the damage in that segment (its clean end for a hole).
    offset: u64,
    /// The sequence number that could not be read.
    seq: u64,
    reason: String,
    /// A valid frame after the damage was written when the damaged record
    /// was already durable: durable data was lost, not an unsynced tail.
    proven: bool,
    /// Any valid frame after the damage (worth keeping a copy of).
    evidence: bool,
    /// Damage inside the segment's frames (false: a hole between segments).
    in_frames: bool,
}

impl Damage {
    fn describe(&self, scans: &[SegmentScan]) -> String {
        format!(
            "WAL damage in segment {} at offset {} (sequence {}): {}{}",
            scans[self.seg].meta.path.display(),
            self.offset,
            self.seq,
            self.reason,
            if self.proven { "; valid records written after it was durable follow the damage" } else { "" }
        )
    }
}

fn find_damage(scans: &[SegmentScan]) -> Option<Damage> {
    let mut found: Option<Damage> = None;
    for (i, s) in scans.iter().enumerate() {
        if let Some(d) = found.as_mut() {
            d.proven |= s.frames && s.max_hint >= d.seq;
            d.evidence |= s.frames;
            continue;
        }
        if i > 0 {
            let prev = &scans[i - 1];
            if s.meta.first_seq != prev.next_seq {
                found = Some(Damage {
                    seg: i - 1,
                    offset: prev.end,
                    seq: prev.next_seq,
                    reason: format!(
                        "next segment {} starts at sequence {} (missing or duplicated segment)",
                        s.meta.path.display(),
                        s.meta.first_seq
                    ),
                    proven: s.frames && s.max_hint >= prev.next_seq,
                    evidence: s.frames,
                    in_frames: false,
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
                proven: s.max_hint >= s.next_seq,
                evidence: s.after_damage,
                in_frames: true,
            });
        }
    }
    found
}

/// Scans the log in `dir` and repairs it as `mode` allows.
pub fn recover(fs: &dyn FileSystem, dir: &Path, mode: RecoveryMode, segment_size: u64) -> Result<Recovered> {
    let names = fs.list(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    let mut removed_temp = false;
    let mut metas = Vec::new();
    for name in names {
        if name.ends_with(segment::TEMP_SUFFIX) {
            // A segment that never finished W8 holds no acknowledged record.
            fs.remove(&dir.join(&name)).map_err(|e| Error::io(format!("removing stray {name}"), e))?;
            removed_temp = true;
        } else if let Some(first_seq) = segment::parse_name(&name) {
            metas.push(SegmentMeta { first_seq, path: dir.join(&name) });
        }
    }
    if removed_temp {
        fs.sync_dir(dir).map_err(|e| Error::io(format!("syncing {}", dir.display()), e))?;
    }
    metas.sort_by_key(|m| m.first_seq);
    let scans = metas.into_iter().map(|m| scan_segment(fs, m)).collect::<Result<Vec<_>>>()?;

    // How many segments stay, and where the last one's valid data ends.
    let mut keep = scans.len();
    let mut cut: Option<(usize, u64)> = None;
    if let Some(d) = find_damage(&scans) {
        let last = d.seg + 1 == scans.len();
        // Damage that no later frame vouches for is the unsynced tail a
        // crash leaves (writeback reaches the disk in any order, so valid
        // frames may follow it, and in NONE/PERIODIC mode a full segment
        // may be unsynced when the next one starts); nothing there was ever
        // part of D. A bad segment header is never a tail: headers are
        // synced before a segment is used (W8).
        let torn_tail = !d.proven && scans[d.seg].header.is_some();
        let accept = match mode {
            RecoveryMode::Absolute => false,
            RecoveryMode::TolerateTail => torn_tail,
            RecoveryMode::PointInTime => !d.proven,
            RecoveryMode::Salvage => true,
        };
        if !accept {
            return Err(Error::corruption(format!("{} (recovery mode {:?})", d.describe(&scans), mode)));
        }
        if !last || scans[d.seg].header.is_none() || !torn_tail || d.evidence {
            set_aside(fs, dir, &scans, &d)?;
        }
        keep = if scans[d.seg].header.is_some() { d.seg + 1 } else { d.seg };
        if d.in_frames && scans[d.seg].header.is_some() {
            cut = Some((d.seg, d.offset));
        }
    }

    let next_seq = match keep {
        0 => scans.first().map_or(1, |s| s.meta.first_seq),
        k => scans[k - 1].next_seq,
    };
    let active = match keep {
        0 => None,
        k => Some(open_active(fs, &scans[k - 1], cut.filter(|(s, _)| *s == k - 1).map(|(_, o)| o), segment_size)?),
    };
    let segments = scans.into_iter().take(keep).map(|s| s.meta).collect();
    Ok(Recovered { segments, active, next_seq })
}

/// Moves the segments that recovery gives up into `<dir>/salvaged-<ns>/`
/// (never deleting data): segments after the damage are moved, a damaged
/// segment whose prefix stays in the log is copied first.
fn set_aside(fs: &dyn FileSystem, dir: &Path, scans: &[SegmentScan], d: &Damage) -> Result<()> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let aside = dir.join(format!("salvaged-{stamp}"));
    let io = |what: &str, e| Error::io(format!("{what} while setting damaged WAL segments aside in {}", aside.display()), e);
    fs.create_dir_all(&aside).map_err(|e| io("creating the folder", e))?;
    let damaged = &scans[d.seg];
    if damaged.header.is_some() && d.in_frames {
        let name = damaged.meta.path.file_name().unwrap();
        let src = fs.open(&damaged.meta.path, false).map_err(|e| io("opening", e))?;
        let bytes = read_all(&*src).map_err(|e| io("reading", e))?;
        let copy = fs.create(&aside.join(name)).map_err(|e| io("creating a copy", e))?;
        copy.write_at(&[&bytes], 0).map_err(|e| io("copying", e))?;
        copy.sync_data().map_err(|e| io("syncing a copy", e))?;
    }
    let first_moved = if damaged.header.is_some() { d.seg + 1 } else { d.seg };
    for s in &scans[first_moved..] {
        let name = s.meta.path.file_name().unwrap();
        fs.rename(&s.meta.path, &aside.join(name)).map_err(|e| io("moving", e))?;
    }
    fs.sync_dir(&aside).map_err(|e| io("syncing", e))?;
    fs.sync_dir(dir).map_err(|e| io("syncing", e))?;
    Ok(())
}

/// Opens the last retained segment for appends at the end of its valid
/// data; with `cut`, zeroes everything after that offset first and syncs.
fn open_active(fs: &dyn FileSystem, scan: &SegmentScan, cut: Option<u64>, segment_size: u64) -> Result<Active> {
    let path = &scan.meta.path;
    let io = |what: &str, e| Error::io(format!("{what} {}", path.display()), e);
    let file: Arc<dyn File> = fs.open(path, true).map_err(|e| io("opening", e))?;
    let header = scan.header.expect("a kept segment has a valid header");
    let len = file.len().map_err(|e| io("reading the size of", e))?;
    if let Some(offset) = cut {
        let zeros = vec![0u8; 1 << 20];
        let mut at = offset;
        while at < len {
            let n = ((len - at) as usize).min(zeros.len());
            file.write_at(&[&zeros[..n]], at).map_err(|e| io("zeroing the torn tail of", e))?;
            at += n as u64;
        }
    }
    // Records recovered from the page cache (a process crash in NONE or
    // PERIODIC mode) become durable before D claims them.
    file.sync_data().map_err(|e| io("syncing", e))?;
    let capacity = len.max(segment_size);
    file.allocate(capacity).map_err(|e| io("allocating", e))?;
    Ok(Active { file, salt: header.salt, offset: scan.end, capacity })
}
