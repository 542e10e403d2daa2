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

/// (salt, first sequence) of a valid segment header.
pub fn segment_header(b: &[u8]) -> Option<(u32, u64)> {
    if b.len() < 64 || &b[0..8] != b"KEELWAL\0" || le32(&b[8..]) != 1 {
        return None;
    }
    if crc32fast::hash(&b[0..60]) != le32(&b[60..]) {
        return None;
    }
    Some((le32(&b[12..]), le64(&b[16..])))
}

/// Whether some segment holds a valid frame (at an 8-byte boundary, with
/// a valid header) whose records would run past sequence u64::MAX.
pub fn overflows(files: &[(u64, Vec<u8>)]) -> bool {
    files.iter().any(|(_, bytes)| {
        let Some((salt, _)) = segment_header(bytes) else { return false };
        (64..bytes.len()).step_by(8).any(|off| {
            frame(&bytes[off..], salt).is_some_and(|f| f.seq.checked_add(u64::from(f.count)).is_none())
        })
    })
}

/// The records a correct recovery keeps from these segment files (sorted
/// by the first sequence number in their names): segments in order while
/// each has a valid header matching its name and starts where the previous
/// one ended; in each, valid frames from offset 64 while each carries the
/// next sequence number; the first damage ends the log. Sequence numbers
/// that would overflow u64 count as damage.
pub fn chain(files: &[(u64, Vec<u8>)]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut expected: Option<u64> = None;
    for (name, bytes) in files {
        if expected.is_some_and(|e| e != *name) {
            break;
        }
        match segment_header(bytes) {
            Some((_, first)) if first == *name => {}
            _ => break,
        }
        let salt = segment_header(bytes).unwrap().0;
        let mut next = *name;
        let mut off = 64;
        let damaged;
        loop {
            let rest = &bytes[off.min(bytes.len())..];
            match frame(rest, salt) {
                Some(f) if f.seq == next => {
                    let Some(after) = next.checked_add(u64::from(f.count)) else {
                        damaged = true;
                        break;
                    };
                    for (i, r) in f.records.into_iter().enumerate() {
                        out.push((next + i as u64, r));
                    }
                    next = after;
                    off += f.size;
                }
                _ => {
                    damaged = rest.iter().any(|&x| x != 0);
                    break;
                }
            }
        }
        if damaged {
            break;
        }
        expected = Some(next);
    }
    out
}
