//! An independent decoder of the WAL format, written from docs/WAL.md
//! ("On-disk format" and "Recovery") without keel's code: the oracles check
//! keel's decoders and recovery against it. Deliberately simple and slow.

/// A frame as the spec defines a valid one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefFrame {
    pub kind: u8,
    pub count: u32,
    pub seq: u64,
    pub durable: u64,
    /// Bytes the frame occupies, padding included.
    pub size: usize,
    pub records: Vec<Vec<u8>>,
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// The valid frame at the start of `b` (the rest of a segment), if any.
pub fn frame(b: &[u8], salt: u32) -> Option<RefFrame> {
    if b.len() < 32 {
        return None;
    }
    let len = le32(&b[4..]) as usize;
    let kind = b[8];
    let count = le32(&b[12..]);
    let seq = le64(&b[16..]);
    let durable = le64(&b[24..]);
    if b[9..12] != [0, 0, 0] || seq == 0 || durable >= seq {
        return None;
    }
    // Padded to the next 8-byte boundary, and the frame lies inside the segment.
    let size = (32 + len).div_ceil(8) * 8;
    if size > b.len() {
        return None;
    }
    let payload = &b[32..32 + len];
    let mut crc = crc32fast::Hasher::new_with_initial(salt);
    crc.update(&b[4..32]);
    crc.update(payload);
    if crc.finalize() != le32(b) {
        return None;
    }
    let records = match kind {
        1 if count == 1 => vec![payload.to_vec()],
        3 if count == 0 && len == 0 => Vec::new(),
        2 if count >= 1 => {
            let table_len = 4 * count as usize;
            if table_len > len {
                return None;
            }
            let mut at = table_len;
            let mut out = Vec::new();
            for i in 0..count as usize {
                let n = le32(&payload[4 * i..]) as usize;
                if n > len - at {
                    return None;
                }
                out.push(payload[at..at + n].to_vec());
                at += n;
            }
            if at != len {
                return None;
            }
            out
        }
        _ => return None,
    };
    Some(RefFrame { kind, count, seq, durable, size, records })
}

/// A valid segment header as the spec defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefHeader {
    pub version: u32,
    pub salt: u32,
    pub first: u64,
    /// Version 2: (previous segment's first sequence, its salt, where its
    /// records end); None when the link is all zero, and in version 1.
    pub link: Option<(u64, u32, u64)>,
    /// Version 2: the file's length when it was installed (0: not
    /// recorded, and in version 1).
    pub allocated: u64,
}

/// The valid segment header at the start of `b`, if any.
pub fn segment_header(b: &[u8]) -> Option<RefHeader> {
    if b.len() < 64 || &b[0..8] != b"KEELWAL\0" {
        return None;
    }
    if crc32fast::hash(&b[0..60]) != le32(&b[60..]) {
        return None;
    }
    let (version, salt, first) = (le32(&b[8..]), le32(&b[12..]), le64(&b[16..]));
    let (link, allocated) = match version {
        1 => (None, 0),
        2 => {
            let (pf, end, ps) = (le64(&b[24..]), le64(&b[32..]), le32(&b[40..]));
            let link = if (pf, end, ps) == (0, 0, 0) {
                None
            } else if pf != 0 && pf < first && pf <= end && end <= first {
                Some((pf, ps, end))
            } else {
                return None;
            };
            // Zero, or from the header's own 64 bytes to 4 GiB (the
            // largest segment).
            let allocated = le64(&b[44..]);
            if allocated != 0 && !(64..=4 << 30).contains(&allocated) {
                return None;
            }
            (link, allocated)
        }
        _ => return None,
    };
    Some(RefHeader { version, salt, first, link, allocated })
}

/// The extent record (`wal.meta`, docs/WAL.md) listing every file whose
/// header is valid and matches its name, with D = 0 and next = 0: it
/// claims nothing about records, so recovery decides from the segments.
pub fn extent_record(files: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let listed: Vec<(u64, u32)> = files
        .iter()
        .filter_map(|(name, bytes)| segment_header(bytes).filter(|h| h.first == *name && *name != 0).map(|h| (*name, h.salt)))
        .collect();
    let mut b = b"KEELWMT\0".to_vec();
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&(listed.len() as u32).to_le_bytes());
    b.extend_from_slice(&[0; 16]);
    for (first, salt) in listed {
        b.extend_from_slice(&first.to_le_bytes());
        b.extend_from_slice(&salt.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Whether some segment holds a valid frame (at an 8-byte boundary, with
/// a valid header) whose records would run past sequence u64::MAX.
pub fn overflows(files: &[(u64, Vec<u8>)]) -> bool {
    files.iter().any(|(_, bytes)| {
        let Some(RefHeader { salt, .. }) = segment_header(bytes) else { return false };
        (64..bytes.len()).step_by(8).any(|off| {
            frame(&bytes[off..], salt).is_some_and(|f| f.seq.checked_add(u64::from(f.count)).is_none())
        })
    })
}

/// One segment's frames as the scan walks them: from offset 64, each
/// valid frame that carries the next sequence number, starting at `first`.
struct Walk {
    records: Vec<(u64, Vec<u8>)>,
    /// The sequence number after the last frame taken.
    next: u64,
    /// The highest durable hint + 1 among the frames taken (0: none).
    hint: u64,
    /// Where damage stopped the walk; None when the rest is zeros.
    damage: Option<usize>,
    /// Where the walk stopped: the end of the frames taken.
    end: usize,
}

fn walk(bytes: &[u8], first: u64, salt: u32) -> Walk {
    let mut w = Walk { records: Vec::new(), next: first, hint: 0, damage: None, end: 64 };
    let mut off = 64;
    loop {
        w.end = off;
        let rest = &bytes[off.min(bytes.len())..];
        match frame(rest, salt) {
            Some(f) if f.seq == w.next => {
                // Sequence numbers that would overflow u64 count as damage.
                let Some(after) = w.next.checked_add(u64::from(f.count)) else {
                    w.damage = Some(off);
                    return w;
                };
                w.hint = w.hint.max(f.durable + 1);
                for (i, r) in f.records.into_iter().enumerate() {
                    w.records.push((w.next + i as u64, r));
                }
                w.next = after;
                off += f.size;
            }
            _ => {
                w.damage = rest.iter().any(|&x| x != 0).then_some(off);
                return w;
            }
        }
    }
}

/// A file shorter than its header's allocated length lost its tail,
/// unless the next file is a segment that follows it (its link names it
/// and where its walk ended; without a link, it starts there): then the
/// lowest sequence number above what the lost bytes could have held, at
/// one record per 4 bytes after where the walk ended (docs/WAL.md, "A
/// segment cut short").
fn lost_tail(files: &[(u64, Vec<u8>)], i: usize, h: &RefHeader, w: &Walk) -> Option<u64> {
    let (name, bytes) = &files[i];
    if h.allocated <= bytes.len() as u64 {
        return None;
    }
    let followed = files.get(i + 1).is_some_and(|(next_name, next)| {
        segment_header(next).filter(|n| n.first == *next_name && *next_name != 0).is_some_and(|n| match n.link {
            Some(link) => link == (*name, h.salt, w.next),
            None => n.first == w.next,
        })
    });
    (!followed).then(|| w.next.saturating_add((h.allocated - w.end as u64) / 4))
}

/// The lowest sequence number a recovery may hand out next, whatever it
/// keeps (docs/WAL.md, "Sequence numbers are never reissued"): a segment
/// with a valid header (named as it says, never 0, which recovery does
/// not take for a segment) was created at its first sequence number, and a
/// valid frame's durable hint names a record that was durable before it,
/// so numbers below either were handed out, and so were the numbers of
/// every valid frame's records. Frames count as the scan meets them: the
/// frames in sequence from offset 64, and after the first damage the valid
/// frames at 8-byte boundaries that carry a sequence number at or past
/// where the sequence stopped; and a file cut short counts the records its
/// lost tail could have held (`lost_tail`).
pub fn floor(files: &[(u64, Vec<u8>)]) -> u64 {
    let mut out = 0;
    for (i, (name, bytes)) in files.iter().enumerate() {
        let Some(h) = segment_header(bytes).filter(|h| h.first == *name && *name != 0) else { continue };
        let w = walk(bytes, *name, h.salt);
        out = out.max(h.first).max(w.next).max(w.hint).max(lost_tail(files, i, &h, &w).unwrap_or(0));
        if let Some(at) = w.damage {
            for probe in (at + 8..bytes.len()).step_by(8) {
                if let Some(f) = frame(&bytes[probe..], h.salt).filter(|f| f.seq >= w.next) {
                    out = out.max(f.durable + 1).max(f.seq.saturating_add(u64::from(f.count)));
                }
            }
        }
    }
    out
}

/// The records a correct recovery keeps from these segment files (sorted
/// by the first sequence number in their names), and the sequence number
/// after them: segments in order while each has a valid header matching
/// its name and follows the previous one (a version 2 link names the
/// previous segment's first sequence and salt and where its records end,
/// which may be below its own first sequence: a declared gap; without a
/// link it starts where the previous one ended); in each, valid frames
/// from offset 64 while each carries the next sequence number (`walk`);
/// the first damage ends the log, and so does a file that lost its tail
/// (`lost_tail`). With no segment kept, the log continues at the first
/// file's name (at least 1).
pub fn chain(files: &[(u64, Vec<u8>)]) -> (Vec<(u64, Vec<u8>)>, u64) {
    let mut out = Vec::new();
    // (name, salt, end) of the last segment kept.
    let mut prev: Option<(u64, u32, u64)> = None;
    for (i, (name, bytes)) in files.iter().enumerate() {
        let Some(h) = segment_header(bytes).filter(|h| h.first == *name && *name != 0) else { break };
        let follows = match (prev, h.link) {
            (None, _) => true,
            (Some(p), Some(link)) => link == p,
            (Some((_, _, end)), None) => end == *name,
        };
        if !follows {
            break;
        }
        let mut w = walk(bytes, *name, h.salt);
        out.append(&mut w.records);
        prev = Some((*name, h.salt, w.next));
        if w.damage.is_some() || lost_tail(files, i, &h, &w).is_some() {
            break;
        }
    }
    let end = prev.map_or_else(|| files.first().map_or(1, |f| f.0.max(1)), |p| p.2);
    (out, end)
}
