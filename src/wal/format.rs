//! On-disk layout of WAL segments (see docs/WAL.md).
//!
//! Segment header (64 bytes):
//!   0  magic "KEELWAL\0"   8  format version u32   12 salt u32
//!   16 first sequence u64
//!   24 previous segment's first sequence u64 (0: none)   32 its end u64
//!   40 previous segment's salt u32   44 allocated length u64   52..60 zero
//!   60 CRC-32 of bytes 0..60
//! (format version 1 has zeros at 24..60: no link to the previous segment;
//! version 2 headers written before the allocated length was recorded
//! have zeros at 44..52.)
//! Frame (starts 8-byte aligned, padded with zeros to 8 bytes):
//!   0  CRC-32 u32 (seeded with the salt; covers bytes 4..32 and the payload)
//!   4  payload length u32   8 type u8   9 flags u8   10 zero u16
//!   12 record count u32     16 first sequence u64
//!   24 durable hint u64: the durable watermark D when the frame was written
//!   32 payload
//! A RECORD frame carries one record; a BATCH frame carries `count` records
//! as `count` u32 lengths followed by the records back to back, all
//! recovered or none. A MARK frame (count 0, no payload) is written at
//! close. All integers are little-endian.

use std::borrow::Cow;

pub const MAGIC: &[u8; 8] = b"KEELWAL\0";
/// The version new segments are written with. Version 1 (no link to the
/// previous segment) is still read: logs written before version 2 open.
pub const FORMAT_VERSION: u32 = 2;
pub const FORMAT_VERSION_UNLINKED: u32 = 1;
pub const SEGMENT_HEADER_LEN: u64 = 64;
/// The largest segment a log makes (`Options::segment_size`).
pub const MAX_SEGMENT_SIZE: u64 = 4 << 30;
pub const FRAME_HEADER_LEN: usize = 32;
pub const FRAME_RECORD: u8 = 1;
pub const FRAME_BATCH: u8 = 2;
/// A frame with no record, written at close: its durable hint vouches for
/// everything before it, so damage there is never mistaken for a tail.
pub const FRAME_MARK: u8 = 3;

/// Bytes that a frame never needs beyond its payload and the segment
/// header: the limit check in `Options` reserves this much.
pub const OVERHEAD: u64 = SEGMENT_HEADER_LEN + FRAME_HEADER_LEN as u64 + 8;

pub fn align8(n: u64) -> u64 {
    (n + 7) & !7
}

/// Bytes a frame with `payload_len` occupies in a segment.
pub fn frame_size(payload_len: usize) -> u64 {
    align8((FRAME_HEADER_LEN + payload_len) as u64)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// What a segment header says about the segment before it: its identity
/// and where its records end. A new segment's records continue at `end`
/// (= its own first sequence) unless recovery declared the sequence
/// numbers in between lost (`end` < first sequence: a gap that is never
/// reissued).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub first_seq: u64,
    pub salt: u32,
    pub end: u64,
}

/// No record takes fewer bytes of a segment than this: a batch frame's
/// length table gives each 4 (a one-record frame takes a 32-byte header).
/// Lost bytes thus bound the records they could have held.
pub const MIN_RECORD_BYTES: u64 = 4;

/// `allocated`: the file's length when the segment is installed, which
/// nothing but damage makes shorter (0: not recorded).
pub fn encode_segment_header(salt: u32, first_seq: u64, prev: Option<Link>, allocated: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&salt.to_le_bytes());
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    if let Some(p) = prev {
        h[24..32].copy_from_slice(&p.first_seq.to_le_bytes());
        h[32..40].copy_from_slice(&p.end.to_le_bytes());
        h[40..44].copy_from_slice(&p.salt.to_le_bytes());
    }
    h[44..52].copy_from_slice(&allocated.to_le_bytes());
    let crc = crc32fast::hash(&h[0..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A validated segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub version: u32,
    pub salt: u32,
    pub first_seq: u64,
    /// The segment before it (version 2; None for the first segment of a
    /// log and for version 1 headers).
    pub prev: Option<Link>,
    /// The file's length when it was installed (0: not recorded, as in
    /// version 1 and in version 2 before it was). A shorter file lost its
    /// tail after the fact: no crash shortens a preallocated, synced file.
    pub allocated: u64,
}

/// Why a segment header was rejected.
pub fn decode_segment_header(b: &[u8]) -> Result<SegmentHeader, &'static str> {
    if b.len() < SEGMENT_HEADER_LEN as usize {
        return Err("segment shorter than its header");
    }
    if &b[0..8] != MAGIC {
        return Err("bad segment magic");
    }
    if crc32fast::hash(&b[0..60]) != u32_at(b, 60) {
        return Err("segment header checksum mismatch");
    }
    let version = u32_at(b, 8);
    let (salt, first_seq) = (u32_at(b, 12), u64_at(b, 16));
    let (prev, allocated) = match version {
        FORMAT_VERSION_UNLINKED => (None, 0),
        FORMAT_VERSION => {
            let prev = match (u64_at(b, 24), u64_at(b, 32), u32_at(b, 40)) {
                (0, 0, 0) => None,
                (prev_first, end, salt) => {
                    if prev_first == 0 || prev_first >= first_seq || end < prev_first || end > first_seq {
                        return Err("segment header names an impossible previous segment");
                    }
                    Some(Link { first_seq: prev_first, salt, end })
                }
            };
            let allocated = u64_at(b, 44);
            if allocated != 0 && !(SEGMENT_HEADER_LEN..=MAX_SEGMENT_SIZE).contains(&allocated) {
                return Err("segment header records an impossible allocated length");
            }
            (prev, allocated)
        }
        _ => return Err("unsupported segment format version"),
    };
    Ok(SegmentHeader { version, salt, first_seq, prev, allocated })
}

/// Payloads at least this long get their checksum computed before the
/// append lock and joined with the header's under it (`combine` costs about
/// as much as checksumming a few hundred bytes, so short ones skip it).
const PRECOMPUTE_CRC_FROM: usize = 1024;

/// A frame ready to be written: its header is finished once the sequence
/// number is known (under the append lock). A single record's payload is
/// borrowed from the caller, not copied.
pub struct PendingFrame<'a> {
    pub kind: u8,
    pub count: u32,
    pub payload: Cow<'a, [u8]>,
    payload_crc: Option<crc32fast::Hasher>,
}

impl<'a> PendingFrame<'a> {
    pub fn record(payload: &'a [u8]) -> PendingFrame<'a> {
        Self::new(FRAME_RECORD, 1, Cow::Borrowed(payload))
    }

    pub fn batch(records: &[&[u8]]) -> PendingFrame<'static> {
        let data: usize = records.iter().map(|r| r.len()).sum();
        let mut payload = Vec::with_capacity(4 * records.len() + data);
        for r in records {
            payload.extend_from_slice(&(r.len() as u32).to_le_bytes());
        }
        for r in records {
            payload.extend_from_slice(r);
        }
        PendingFrame::new(FRAME_BATCH, records.len() as u32, Cow::Owned(payload))
    }

    pub fn mark() -> PendingFrame<'static> {
        PendingFrame::new(FRAME_MARK, 0, Cow::Borrowed(&[]))
    }

    fn new(kind: u8, count: u32, payload: Cow<'a, [u8]>) -> PendingFrame<'a> {
        let payload_crc = (payload.len() >= PRECOMPUTE_CRC_FROM).then(|| {
            let mut h = crc32fast::Hasher::new();
            h.update(&payload);
            h
        });
        PendingFrame { kind, count, payload, payload_crc }
    }

    pub fn size(&self) -> u64 {
        frame_size(self.payload.len())
    }

    /// The same frame owning its payload, to hand to another thread.
    pub fn into_owned(self) -> PendingFrame<'static> {
        PendingFrame { kind: self.kind, count: self.count, payload: Cow::Owned(self.payload.into_owned()), payload_crc: self.payload_crc }
    }

    /// The header for this frame at `seq` in a segment with `salt`, written
    /// while the durable watermark was `durable` (< seq).
    pub fn header(&self, salt: u32, seq: u64, durable: u64) -> [u8; FRAME_HEADER_LEN] {
        let mut h = [0u8; FRAME_HEADER_LEN];
        h[4..8].copy_from_slice(&(self.payload.len() as u32).to_le_bytes());
        h[8] = self.kind;
        h[12..16].copy_from_slice(&self.count.to_le_bytes());
        h[16..24].copy_from_slice(&seq.to_le_bytes());
        h[24..32].copy_from_slice(&durable.to_le_bytes());
        let mut crc = crc32fast::Hasher::new_with_initial(salt);
        crc.update(&h[4..]);
        match &self.payload_crc {
            Some(pre) => crc.combine(pre),
            None => crc.update(&self.payload),
        }
        h[0..4].copy_from_slice(&crc.finalize().to_le_bytes());
        h
    }

    /// Zero bytes that pad the frame to 8-byte alignment.
    pub fn padding(&self) -> &'static [u8] {
        const ZEROS: [u8; 8] = [0; 8];
        &ZEROS[..(self.size() as usize - FRAME_HEADER_LEN - self.payload.len())]
    }
}

/// The fixed fields of a frame header, before its checksum is verified.
#[derive(Debug, Clone, Copy)]
pub struct FrameHeader {
    pub crc: u32,
    pub len: u32,
    pub kind: u8,
    pub count: u32,
    pub seq: u64,
    /// D when the frame was written: every record <= it was durable then.
    /// Recovery uses it to tell an unsynced tail from lost durable data.
    pub durable: u64,
}

impl FrameHeader {
    /// The fields of the frame header at the start of `b`; None when `b`
    /// is shorter than a frame header.
    pub fn parse(b: &[u8]) -> Option<FrameHeader> {
        if b.len() < FRAME_HEADER_LEN {
            return None;
        }
        Some(FrameHeader {
            crc: u32_at(b, 0),
            len: u32_at(b, 4),
            kind: b[8],
            count: u32_at(b, 12),
            seq: u64_at(b, 16),
            durable: u64_at(b, 24),
        })
    }

    /// Cheap structural checks that reject zero fill and most garbage
    /// before a checksum is computed; `b` is the header `parse` read (false
    /// when it is shorter), `room` the bytes left in the segment.
    pub fn plausible(&self, b: &[u8], room: u64) -> bool {
        if b.len() < FRAME_HEADER_LEN {
            return false;
        }
        let shape = match self.kind {
            FRAME_RECORD => self.count == 1,
            FRAME_BATCH => self.count >= 1 && (self.count as u64) * 4 <= self.len as u64,
            FRAME_MARK => self.count == 0 && self.len == 0,
            _ => false,
        };
        shape
            && b[9] == 0
            && b[10] == 0
            && b[11] == 0
            && self.seq != 0
            && self.durable < self.seq
            && frame_size(self.len as usize) <= room
    }

    pub fn size(&self) -> u64 {
        frame_size(self.len as usize)
    }

    pub fn checksum_ok(&self, header: &[u8], payload: &[u8], salt: u32) -> bool {
        let mut crc = crc32fast::Hasher::new_with_initial(salt);
        crc.update(&header[4..FRAME_HEADER_LEN]);
        crc.update(payload);
        crc.finalize() == self.crc
    }
}

/// Splits a verified frame payload into its records.
pub fn records(kind: u8, count: u32, payload: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::with_capacity(if kind == FRAME_RECORD { 1 } else { count as usize });
    each_record(kind, count, payload, |r| out.push(r)).then_some(out)
}

/// Hands each record of a frame payload to `f`, in order; false (after
/// some calls, perhaps) when the batch length table does not match the
/// payload. Allocates nothing: recovery checks millions of frames.
pub fn each_record<'a>(kind: u8, count: u32, payload: &'a [u8], mut f: impl FnMut(&'a [u8])) -> bool {
    if kind == FRAME_RECORD {
        f(payload);
        return true;
    }
    let n = count as usize;
    let Some(table) = payload.get(..4 * n) else { return false };
    let mut at = 4 * n;
    for i in 0..n {
        let len = u32_at(table, 4 * i) as usize;
        let Some(r) = at.checked_add(len).and_then(|end| payload.get(at..end)) else { return false };
        f(r);
        at += len;
    }
    at == payload.len()
}

/// Outcome of decoding the frame at the start of `b` (the rest of a segment).
#[derive(Debug)]
pub enum Decoded {
    /// A valid frame: its header and the byte size it occupies.
    Frame(FrameHeader),
    /// Only zero bytes remain: the clean end of the written part.
    End,
    /// Neither: damage (torn write, garbage, corruption).
    Invalid(&'static str),
}

/// The frame at the start of `b`, if it is a valid one (structure,
/// checksum under `salt`, batch table). Cost is bounded by the frame's size,
/// so probing every offset of a segment stays linear in practice.
pub fn valid_frame(b: &[u8], salt: u32) -> Option<FrameHeader> {
    let h = FrameHeader::parse(b)?;
    if !h.plausible(b, b.len() as u64) {
        return None;
    }
    let payload = &b[FRAME_HEADER_LEN..FRAME_HEADER_LEN + h.len as usize];
    (h.checksum_ok(b, payload, salt) && each_record(h.kind, h.count, payload, |_| ())).then_some(h)
}

/// Whether every byte of `b` is zero, a block at a time (the unwritten
/// rest of the active segment is most of a segment).
fn is_zero(b: &[u8]) -> bool {
    let mut blocks = b.chunks_exact(64);
    blocks.all(|c| c.iter().fold(0, |acc, &x| acc | x) == 0) && blocks.remainder().iter().all(|&x| x == 0)
}

/// Decodes one frame from `b`, which holds everything from the frame's
/// offset to the end of the segment.
pub fn decode_frame(b: &[u8], salt: u32) -> Decoded {
    if let Some(h) = valid_frame(b, salt) {
        return Decoded::Frame(h);
    }
    if is_zero(b) {
        return Decoded::End;
    }
    let Some(h) = FrameHeader::parse(b) else {
        return Decoded::Invalid("truncated frame header");
    };
    if !h.plausible(b, b.len() as u64) {
        return Decoded::Invalid("malformed frame header");
    }
    let payload = &b[FRAME_HEADER_LEN..FRAME_HEADER_LEN + h.len as usize];
    if !h.checksum_ok(b, payload, salt) {
        return Decoded::Invalid("frame checksum mismatch");
    }
    Decoded::Invalid("batch length table does not match its payload")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_bit_flips_are_caught() {
        let salt = 0x1234_5678;
        let f = PendingFrame::batch(&[b"ab", b"", b"cdef"]);
        let mut seg = Vec::new();
        seg.extend_from_slice(&f.header(salt, 42, 40));
        seg.extend_from_slice(&f.payload);
        seg.extend_from_slice(f.padding());
        assert_eq!(seg.len() as u64, f.size());
        seg.extend_from_slice(&[0u8; 64]);
        match decode_frame(&seg, salt) {
            Decoded::Frame(h) => {
                assert_eq!((h.seq, h.count, h.kind, h.durable), (42, 3, FRAME_BATCH, 40));
                let p = &seg[FRAME_HEADER_LEN..FRAME_HEADER_LEN + h.len as usize];
                assert_eq!(records(h.kind, h.count, p).unwrap(), vec![&b"ab"[..], b"", b"cdef"]);
            }
            other => panic!("expected a frame, got {other:?}"),
        }
        assert!(matches!(decode_frame(&seg, salt ^ 1), Decoded::Invalid(_)), "another salt must not validate");
        for bit in 0..(FRAME_HEADER_LEN + f.payload.len()) * 8 {
            let mut bad = seg.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            if let Decoded::Frame(_) = decode_frame(&bad, salt) {
                panic!("bit {bit} flipped and the frame still validated");
            }
        }
        assert!(matches!(decode_frame(&[0u8; 100], salt), Decoded::End));
    }

    #[test]
    fn segment_header_round_trip() {
        let h = encode_segment_header(7, 99, None, 1 << 16);
        assert_eq!(decode_segment_header(&h).unwrap(), SegmentHeader { version: 2, salt: 7, first_seq: 99, prev: None, allocated: 1 << 16 });
        let mut bad = h;
        bad[20] ^= 4;
        assert!(decode_segment_header(&bad).is_err());
        let link = Link { first_seq: 40, salt: 9, end: 90 };
        let h = encode_segment_header(7, 99, Some(link), 0);
        assert_eq!(decode_segment_header(&h).unwrap().prev, Some(link));
        assert_eq!(decode_segment_header(&h).unwrap().allocated, 0, "0: not recorded");
        let h = encode_segment_header(7, 99, None, SEGMENT_HEADER_LEN - 1);
        assert!(decode_segment_header(&h).is_err(), "no segment is shorter than its header");
        let h = encode_segment_header(7, 99, None, MAX_SEGMENT_SIZE + 1);
        assert!(decode_segment_header(&h).is_err(), "nor longer than the largest a log makes");
    }

    #[test]
    fn version_1_headers_still_decode() {
        let mut h = encode_segment_header(7, 99, None, 0);
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32fast::hash(&h[0..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_segment_header(&h).unwrap(), SegmentHeader { version: 1, salt: 7, first_seq: 99, prev: None, allocated: 0 });
    }

    #[test]
    fn frame_header_parse_refuses_short_input() {
        let f = PendingFrame::record(b"abc");
        let h = f.header(1, 5, 4);
        for len in 0..FRAME_HEADER_LEN {
            assert!(FrameHeader::parse(&h[..len]).is_none(), "{len} bytes parsed");
        }
        let parsed = FrameHeader::parse(&h).unwrap();
        assert_eq!((parsed.seq, parsed.durable, parsed.count), (5, 4, 1));
        assert!(!parsed.plausible(&h[..10], 100), "a short header is never plausible");
    }
}
