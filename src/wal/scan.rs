//! Read-only scan of WAL segments: the checks recovery makes (docs/WAL.md,
//! "Recovery") and the classification of the first damage. Recovery acts
//! on the result; `keel-wal verify` only reports it.

use super::format::{
    decode_frame, decode_segment_header, valid_frame, Decoded, FrameHeader, SegmentHeader, FRAME_HEADER_LEN,
    MIN_RECORD_BYTES, SEGMENT_HEADER_LEN,
};
use super::RecoveryMode;
use std::path::PathBuf;

/// One segment file, as named on disk.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    pub name: String,
    pub path: PathBuf,
    /// From the file name (what recovery trusts; the header must agree).
    pub first_seq: u64,
    pub size: u64,
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
    /// Every frame before this offset had its checksum verified by this
    /// scan: `end` for a full scan, 0 for a segment taken by its header.
    pub checked_end: u64,
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
    /// The length the header records as allocated, when the file is
    /// shorter: its tail was cut after the fact (no crash shortens a
    /// preallocated, synced segment), with whatever records it held.
    pub shortened: Option<u64>,
    /// The sequence number after the last record of any valid frame found
    /// (in the prefix or, by probing, after the damage; 0: none): each
    /// was handed out, and recovery may set it aside but never reissue it.
    pub seen_end: u64,
}

impl SegmentScan {
    /// Nothing read yet: no header, no frame, records end where it starts.
    fn unread(file: SegmentFile) -> SegmentScan {
        SegmentScan {
            header: Err(String::new()),
            frames: 0,
            records: 0,
            end: 0,
            checked_end: 0,
            next_seq: file.first_seq,
            damage: None,
            max_hint: None,
            after_damage: 0,
            prefix_hint: None,
            last_frame: None,
            shortened: None,
            seen_end: 0,
            file,
        }
    }

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
    let mut s = SegmentScan::unread(file);
    if s.file.first_seq == 0 {
        // Found by fuzzing: recovery then resumed at sequence 0.
        let why = "segment named for sequence 0 (sequence numbers start at 1)".to_string();
        s.header = Err(why.clone());
        s.damage = Some((0, why));
        return Ok(s);
    }
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
                let Some(after) = s.next_seq.checked_add(h.count as u64) else {
                    s.damage = Some((off as u64, "sequence numbers run past u64::MAX".to_string()));
                    break;
                };
                let payload = &bytes[off + FRAME_HEADER_LEN..off + FRAME_HEADER_LEN + h.len as usize];
                visit(&s.file, Frame { offset: off as u64, header: h, payload })?;
                off += h.size() as usize;
                s.next_seq = after;
                s.frames += 1;
                s.records += h.count as u64;
                s.last_frame = Some((h.kind, h.durable));
                s.prefix_hint = s.prefix_hint.max(Some(h.durable));
                note_hint(&mut s.max_hint, h.durable, off as u64 - h.size());
                s.seen_end = after;
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
    s.checked_end = s.end;
    s.shortened = Some(header.allocated).filter(|&a| a > bytes.len() as u64);
    if let Some((at, _)) = s.damage {
        // Frames are 8-byte aligned: trying every boundary after the damage
        // finds each valid frame that survived it.
        let mut probe = at as usize + 8;
        while probe + FRAME_HEADER_LEN <= bytes.len() {
            if let Some(h) = valid_frame(&bytes[probe..], header.salt) {
                if h.seq >= s.next_seq {
                    s.after_damage += 1;
                    note_hint(&mut s.max_hint, h.durable, probe as u64);
                    s.seen_end = s.seen_end.max(h.seq.saturating_add(h.count as u64));
                }
            }
            probe += 8;
        }
    }
    Ok(s)
}

/// A segment whose records its owner has persisted elsewhere, taken at its
/// header's word: its records end before `end` (what the next segment's
/// link says). Its frames are not read, so a cold open does not read
/// them from the device; a reader still checks every frame it reads.
/// None when the header does not check out (a full scan then reports why).
pub fn header_only(file: SegmentFile, bytes: &[u8], end: u64) -> Option<SegmentScan> {
    let header = decode_segment_header(bytes).ok().filter(|h| h.first_seq == file.first_seq && file.first_seq > 0)?;
    if header.allocated > file.size {
        return None; // cut short: the full scan says where
    }
    let (records, size) = (end.saturating_sub(file.first_seq), file.size);
    Some(SegmentScan { header: Ok(header), records, end: size, next_seq: end, ..SegmentScan::unread(file) })
}

fn note_hint(max: &mut Option<(u64, u64)>, hint: u64, offset: u64) {
    if max.map_or(true, |(m, _)| hint > m) {
        *max = Some((hint, offset));
    }
}

/// Whether segment `i` may have lost records with its cut tail
/// (`SegmentScan::shortened`): yes unless the next segment, with a valid
/// header, follows it: its link (or, without one, its first sequence
/// number) proves that the records end where the valid prefix does. If
/// so, the lowest sequence number above every record the lost bytes
/// could have held: each record past the prefix took at least
/// MIN_RECORD_BYTES of the bytes after it.
pub fn lost_tail_floor(scans: &[SegmentScan], i: usize) -> Option<u64> {
    let s = &scans[i];
    let allocated = s.shortened?;
    if scans.get(i + 1).is_some_and(|next| next.header.is_ok() && does_not_follow(s, next).is_none()) {
        return None;
    }
    Some(s.next_seq.saturating_add(allocated.saturating_sub(s.end) / MIN_RECORD_BYTES))
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
    /// The damaged segment's file is shorter than its header says it was
    /// allocated and may have lost records with its tail
    /// (`lost_tail_floor`): never a crash's unsynced tail.
    pub shortened: bool,
}

impl Damage {
    /// The unsynced end a crash leaves: nothing after it vouches for it.
    pub fn torn_tail(&self) -> bool {
        self.proof.is_none() && !self.bad_header && !self.shortened
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

    /// Whether recovery copies or moves files into `salvaged-<ns>/`:
    /// whenever it gives up more than a plain unsynced tail of the last
    /// segment, or anything valid followed the damage.
    pub fn sets_aside(&self, segments: usize) -> bool {
        self.seg + 1 < segments || self.bad_header || !self.torn_tail() || self.evidence
    }

    /// Segments that stay in the log: up to the damaged one, which stays
    /// (cut at the damage) unless its header is bad.
    pub fn kept_segments(&self) -> usize {
        if self.bad_header {
            self.seg
        } else {
            self.seg + 1
        }
    }
}

/// The sequence number after the records recovery keeps (given the first
/// damage): where appends continue unless a gap must be declared.
pub fn kept_end(scans: &[SegmentScan], damage: Option<&Damage>) -> u64 {
    match damage.map_or(scans.len(), |d| d.kept_segments()) {
        0 => scans.first().map_or(1, |s| s.file.first_seq.max(1)),
        k => scans[k - 1].next_seq,
    }
}

/// Why segment `s` cannot continue the log after `prev`, if it cannot. A
/// version 2 header names its predecessor (first sequence and salt) and
/// where that one's records end; the end may be below its own first
/// sequence when recovery declared the numbers between lost (a gap). A
/// version 1 header must start exactly where `prev` ends.
pub fn does_not_follow(prev: &SegmentScan, s: &SegmentScan) -> Option<String> {
    let link = s.header.as_ref().ok().and_then(|h| h.prev);
    let prev_salt = prev.header.as_ref().ok().map(|h| h.salt);
    match link {
        Some(l) if l.first_seq == prev.file.first_seq && Some(l.salt) == prev_salt && l.end == prev.next_seq => None,
        Some(l) => Some(format!(
            "next segment {} follows segment {} (salt {:#010x}) ending before sequence {}, not {} ending before {} (missing, replaced or swapped segment)",
            s.file.name,
            super::segment::file_name(l.first_seq),
            l.salt,
            l.end,
            prev.file.name,
            prev.next_seq
        )),
        None if s.file.first_seq == prev.next_seq => None,
        None => Some(format!(
            "next segment {} starts at sequence {} (missing or duplicated segment)",
            s.file.name, s.file.first_seq
        )),
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
            if let Some(reason) = does_not_follow(prev, s) {
                found = Some(Damage {
                    seg: i - 1,
                    offset: prev.end,
                    seq: prev.next_seq,
                    reason,
                    bad_header: false,
                    in_frames: false,
                    proof: s.max_hint.filter(|(h, _)| *h >= prev.next_seq).map(|(h, at)| (i, at, h)),
                    evidence: s.has_frames(),
                    shortened: false,
                });
                continue;
            }
        }
        let shortened = lost_tail_floor(scans, i).is_some();
        let cut = shortened.then(|| {
            let (len, allocated) = (s.file.size, s.shortened.unwrap_or_default());
            format!("the file ends at {len} but its header says {allocated} bytes were allocated: its tail was cut")
        });
        let damage = match (&s.damage, cut) {
            (Some((at, why)), None) => Some((*at, why.clone())),
            // The damage may be where the cut shows (a frame cut short).
            (Some((at, why)), Some(cut)) => Some((*at, format!("{why}; {cut}"))),
            (None, Some(cut)) => Some((s.end, cut)),
            (None, None) => None,
        };
        if let Some((offset, reason)) = damage {
            found = Some(Damage {
                seg: i,
                offset,
                seq: s.next_seq,
                reason,
                bad_header: s.header.is_err(),
                in_frames: true,
                proof: s.max_hint.filter(|(h, _)| *h >= s.next_seq).map(|(h, at)| (i, at, h)),
                evidence: s.after_damage > 0,
                shortened,
            });
        }
    }
    found
}

