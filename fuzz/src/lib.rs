//! Fuzz oracles for keel's WAL: the frame and segment-header decoders of
//! `keel::wal::format`, and whole-log recovery through `keel::wal::Wal::open`.
//!
//! Every target is a function `fn(&[u8])` that panics when keel misbehaves.
//! The same functions run under libFuzzer (`fuzz_targets/*.rs`, `make fuzz`)
//! and under the stable replay-and-mutate runner (`tests/smoke.rs`,
//! `make fuzz-smoke`). The oracles compare keel against `reference`, an
//! independent decoder written from docs/WAL.md, so that "decodes without
//! panicking" is not the only thing checked.
//!
//! Checksums are what random mutation can never get right, so the inputs of
//! `frame`, `segment_header` and `recovery` start with a flags byte whose
//! low bits ask the harness to recompute the CRCs after mutation: the
//! fuzzer then explores the fields and tables behind the checksum, while
//! inputs without those bits keep exercising the checksum checks.

use keel::wal::format::{self, Decoded, PendingFrame};
use keel::wal::{Durability, Options, ReadUpto, RecoveryMode, Wal};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub mod mutate;
pub mod node;
pub mod reference;
pub mod seeds;

/// The fuzz targets by name (the names of `fuzz_targets/*.rs` and of the
/// folders of `corpus/` and `regressions/`).
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("frame", frame),
    ("segment_header", segment_header),
    ("recovery", recovery),
    ("node_frame", node::node_frame),
];

/// Input flag: recompute the segment-header CRC(s) before decoding.
pub const FIX_HEADER_CRC: u8 = 1;
/// Input flag: recompute the frame CRC(s) before decoding.
pub const FIX_FRAME_CRC: u8 = 2;
/// `recovery` flag: open with Durability::None (the mmap write path)
/// instead of Sync (pwritev).
pub const MAPPED: u8 = 4;
/// `recovery` flag: each segment's file name comes from the first 8 bytes
/// of its piece (LE u64) instead of the header's first-sequence field.
pub const EXPLICIT_NAMES: u8 = 8;
/// `recovery`: separates the segment files of one input (at most 4).
pub const SEGMENT_SEPARATOR: &[u8; 8] = b"\xffKEELSEG";
pub const MAX_SEGMENTS: usize = 4;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Recomputes the CRC of a 64-byte segment header in place.
pub fn fix_header_crc(seg: &mut [u8]) {
    if seg.len() >= 64 {
        let crc = crc32fast::hash(&seg[0..60]);
        seg[60..64].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Recomputes the CRC of the frame at the start of `b` (if its declared
/// payload fits); returns the frame's padded size.
pub fn fix_frame_crc(b: &mut [u8], salt: u32) -> Option<usize> {
    if b.len() < 32 {
        return None;
    }
    let len = u32_at(b, 4) as usize;
    let end = 32usize.checked_add(len).filter(|&e| e <= b.len())?;
    let mut h = crc32fast::Hasher::new_with_initial(salt);
    h.update(&b[4..end]);
    let crc = h.finalize();
    b[0..4].copy_from_slice(&crc.to_le_bytes());
    Some((end + 7) & !7)
}

/// Recomputes the CRCs of the chain of frames from offset 64 of a segment
/// (under the salt in its header), stopping at the zero-filled end.
pub fn fix_segment_frames(seg: &mut [u8]) {
    if seg.len() < 64 {
        return;
    }
    let salt = u32_at(seg, 12);
    let mut off = 64;
    while off + 32 <= seg.len() && seg[off..].iter().any(|&x| x != 0) {
        match fix_frame_crc(&mut seg[off..], salt) {
            Some(size) => off += size,
            None => break,
        }
    }
}

// ---- frame -----------------------------------------------------------------

/// Input: `[flags][salt u32][frame bytes...]`. Decodes the bytes as the
/// rest of a segment with every entry point of `format`, checks that they
/// agree with each other and with `reference`, and that an accepted frame
/// is exactly what the encoder would write for its records. Then encodes
/// records taken from the input and checks that they decode back, and that
/// a flipped bit (chosen by the input) does not validate.
pub fn frame(data: &[u8]) {
    if data.len() < 5 {
        return;
    }
    let flags = data[0];
    let salt = u32_at(data, 1);
    let mut b = data[5..].to_vec();
    if flags & FIX_FRAME_CRC != 0 {
        fix_frame_crc(&mut b, salt);
    }
    check_decode(&b, salt);
    match format::FrameHeader::parse(&b) {
        Some(h) => {
            let _ = h.plausible(&b, b.len() as u64);
            let _ = h.size();
        }
        None => assert!(b.len() < format::FRAME_HEADER_LEN, "parse refused a full frame header"),
    }
    // records() on arbitrary tables: must not panic; a split it accepts
    // accounts for every byte of the payload.
    if b.len() >= 5 {
        let kind = b[0] % 4;
        let count = u32::from(b[1]) | u32::from(b[2]) << 8;
        let payload = &b[3..];
        if let Some(recs) = format::records(kind, count, payload) {
            if kind == format::FRAME_RECORD {
                assert_eq!(recs, vec![payload]);
            } else {
                assert_eq!(recs.len(), count as usize, "records() returned a wrong count");
                let total: usize = recs.iter().map(|r| r.len()).sum();
                assert_eq!(4 * recs.len() + total, payload.len(), "records() left bytes unaccounted");
            }
        }
    }
    round_trip(&data[5..], salt, flags);
}

fn check_decode(b: &[u8], salt: u32) {
    let decoded = format::decode_frame(b, salt);
    let valid = format::valid_frame(b, salt);
    let expect = reference::frame(b, salt);
    match (&decoded, &valid, &expect) {
        (Decoded::Frame(h), Some(v), Some(r)) => {
            assert_eq!((h.seq, h.count, h.kind, h.durable, h.len), (v.seq, v.count, v.kind, v.durable, v.len));
            assert_eq!((h.seq, h.count, h.kind, h.durable), (r.seq, r.count, r.kind, r.durable));
            assert_eq!(h.size() as usize, r.size, "frame size disagrees with the reference");
            assert!(h.size() as usize <= b.len(), "an accepted frame runs past the end of the segment");
            let payload = &b[32..32 + h.len as usize];
            assert!(h.checksum_ok(b, payload, salt));
            let recs = format::records(h.kind, h.count, payload).expect("a valid frame's records split");
            let want: Vec<&[u8]> = r.records.iter().map(|r| r.as_slice()).collect();
            assert_eq!(recs, want, "records differ from the reference decoder's");
            // An accepted frame is canonical: the encoder writes exactly
            // these header and payload bytes for these records.
            let pending = match h.kind {
                format::FRAME_RECORD => PendingFrame::record(recs[0]),
                format::FRAME_BATCH => PendingFrame::batch(&recs),
                _ => PendingFrame::mark(),
            };
            assert_eq!(&pending.header(salt, h.seq, h.durable)[..], &b[..32], "accepted header is not canonical");
            assert_eq!(&pending.payload[..], payload, "accepted payload is not canonical");
        }
        (Decoded::Frame(_), _, _) | (_, Some(_), _) | (_, _, Some(_)) => {
            panic!("decoders disagree: decode_frame {decoded:?}, valid_frame {valid:?}, reference {expect:?}")
        }
        (Decoded::End, None, None) => assert!(b.iter().all(|&x| x == 0), "End reported on non-zero bytes"),
        (Decoded::Invalid(_), None, None) => assert!(b.iter().any(|&x| x != 0), "only zeros reported as damage"),
    }
}

/// Encodes records derived from `src` and decodes them again.
fn round_trip(src: &[u8], salt: u32, flags: u8) {
    let Some((&ctl, rest)) = src.split_first() else { return };
    let seq = 1 + u64::from(ctl) * 0x0101_0101;
    let durable = seq - 1 - u64::from(flags >> 4).min(seq - 1);
    let chunk = usize::from(ctl % 17) + 1;
    let records: Vec<&[u8]> = rest.chunks(chunk).take(16).collect();
    let pending = match (ctl >> 6, records.len()) {
        (0, _) | (_, 0) => PendingFrame::record(rest),
        (1, _) => PendingFrame::mark(),
        _ => PendingFrame::batch(&records),
    };
    let mut seg = Vec::with_capacity(pending.size() as usize + 8);
    seg.extend_from_slice(&pending.header(salt, seq, durable));
    seg.extend_from_slice(&pending.payload);
    seg.extend_from_slice(pending.padding());
    assert_eq!(seg.len() as u64, pending.size());
    assert_eq!(seg.len() % 8, 0, "frames are padded to 8 bytes");
    seg.extend_from_slice(&[0u8; 8]);
    match format::decode_frame(&seg, salt) {
        Decoded::Frame(h) => {
            assert_eq!((h.kind, h.count, h.seq, h.durable), (pending.kind, pending.count, seq, durable));
            assert_eq!(h.size(), pending.size());
            let recs = format::records(h.kind, h.count, &seg[32..32 + h.len as usize]).unwrap();
            match h.kind {
                format::FRAME_RECORD => assert_eq!(recs, vec![rest]),
                format::FRAME_BATCH => assert_eq!(recs, records),
                _ => assert!(recs.is_empty()),
            }
        }
        other => panic!("an encoded frame did not decode: {other:?}"),
    }
    check_decode(&seg, salt);
    // Any single flipped bit of header or payload must be caught.
    let covered = 32 + pending.payload.len();
    let bit = (u64_at(&[src, &[0u8; 8]].concat(), 0) as usize) % (covered * 8);
    let mut bad = seg.clone();
    bad[bit / 8] ^= 1 << (bit % 8);
    assert!(
        !matches!(format::decode_frame(&bad, salt), Decoded::Frame(_)),
        "bit {bit} flipped and the frame still validated"
    );
    assert!(
        !matches!(format::decode_frame(&seg, salt ^ (1 << (ctl % 32))), Decoded::Frame(_)),
        "a frame validated under another salt"
    );
}

// ---- segment header ------------------------------------------------------

/// Input: `[flags][header bytes...]`.
pub fn segment_header(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut b = rest.to_vec();
    if flags & FIX_HEADER_CRC != 0 {
        fix_header_crc(&mut b);
    }
    let got = format::decode_segment_header(&b);
    let want = reference::segment_header(&b);
    match (&got, want) {
        (Ok(h), Some(r)) => {
            let link = h.prev.map(|l| (l.first_seq, l.salt, l.end));
            assert_eq!((h.version, h.salt, h.first_seq, link, h.allocated), (r.version, r.salt, r.first, r.link, r.allocated));
            let enc = format::encode_segment_header(h.salt, h.first_seq, h.prev, h.allocated);
            let again = format::decode_segment_header(&enc).expect("an encoded header decodes");
            assert_eq!((again.salt, again.first_seq, again.prev, again.allocated), (h.salt, h.first_seq, h.prev, h.allocated));
            // Bytes 52..60 (and 24..60 in version 1) are specified as zero;
            // the decoder does not check them (the CRC covers them), so a
            // header differing from the canonical one only there is
            // accepted: not asserted. Version 1 is read, never written.
            assert_eq!((&enc[..8], &enc[12..24]), (&b[..8], &b[12..24]));
            if h.version == 2 {
                assert_eq!(&enc[..52], &b[..52]);
            }
        }
        (Err(_), None) => {}
        _ => panic!("segment header decoders disagree: keel {got:?}, reference {want:?}"),
    }
    // Encoding any (salt, first_seq) decodes back.
    if b.len() >= 12 {
        let (salt, seq) = (u32_at(&b, 0), u64_at(&b, 4));
        let enc = format::encode_segment_header(salt, seq, None, 0);
        let dec = format::decode_segment_header(&enc).expect("an encoded header decodes");
        assert_eq!((dec.salt, dec.first_seq), (salt, seq));
        let bit = usize::from(b[0]) % 480 + if b[0] & 1 == 0 { 0 } else { 32 };
        let mut bad = enc;
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(format::decode_segment_header(&bad).is_err(), "bit {bit} flipped and the header still decoded");
        let _ = format::decode_segment_header(&enc[..b[1] as usize % 64]).expect_err("a short header decoded");
    }
}

// ---- recovery --------------------------------------------------------------

/// A recovery input split into segment files.
#[derive(Debug, Clone)]
pub struct Log {
    pub mapped: bool,
    /// (first sequence in the file name, file bytes), names distinct.
    pub files: Vec<(u64, Vec<u8>)>,
}

impl Log {
    /// Input: `[flags][segment][SEGMENT_SEPARATOR][segment]...` (at most
    /// `MAX_SEGMENTS`; with `EXPLICIT_NAMES` each segment starts with its
    /// name's sequence number as LE u64).
    pub fn parse(data: &[u8]) -> Log {
        let Some((&flags, mut rest)) = data.split_first() else {
            return Log { mapped: false, files: Vec::new() };
        };
        let mut pieces = Vec::new();
        while pieces.len() + 1 < MAX_SEGMENTS {
            match rest.windows(8).position(|w| w == SEGMENT_SEPARATOR) {
                Some(at) => {
                    pieces.push(&rest[..at]);
                    rest = &rest[at + 8..];
                }
                None => break,
            }
        }
        pieces.push(rest);
        let mut files: Vec<(u64, Vec<u8>)> = Vec::new();
        for piece in pieces {
            let (name, bytes) = if flags & EXPLICIT_NAMES != 0 {
                let mut n = [0u8; 8];
                let k = piece.len().min(8);
                n[..k].copy_from_slice(&piece[..k]);
                (u64::from_le_bytes(n), &piece[k..])
            } else if piece.len() >= 24 {
                (u64_at(piece, 16), piece)
            } else {
                (1, piece)
            };
            let mut bytes = bytes.to_vec();
            if flags & FIX_FRAME_CRC != 0 {
                fix_segment_frames(&mut bytes);
            }
            if flags & FIX_HEADER_CRC != 0 {
                fix_header_crc(&mut bytes);
            }
            if !files.iter().any(|(n, _)| *n == name) {
                files.push((name, bytes));
            }
        }
        files.sort_by_key(|(n, _)| *n);
        Log { mapped: flags & MAPPED != 0, files }
    }

    /// Encodes a log as a `recovery` input (names taken from the headers
    /// unless `explicit`).
    pub fn encode(flags: u8, files: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut out = vec![flags];
        for (i, (name, bytes)) in files.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(SEGMENT_SEPARATOR);
            }
            if flags & EXPLICIT_NAMES != 0 {
                out.extend_from_slice(&name.to_le_bytes());
            }
            out.extend_from_slice(bytes);
        }
        out
    }
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A scratch directory, removed on drop: on /dev/shm when there is one
/// (recovery fsyncs), `KEEL_FUZZ_TMP` overrides.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new() -> ScratchDir {
        let base = std::env::var_os("KEEL_FUZZ_TMP").map(PathBuf::from).unwrap_or_else(|| {
            let shm = Path::new("/dev/shm");
            if shm.is_dir() && std::fs::metadata(shm).is_ok_and(|m| !m.permissions().readonly()) {
                shm.to_path_buf()
            } else {
                std::env::temp_dir()
            }
        });
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("keel-fuzz-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        ScratchDir(dir)
    }
}

impl Default for ScratchDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const MODES: [RecoveryMode; 4] =
    [RecoveryMode::Absolute, RecoveryMode::TolerateTail, RecoveryMode::PointInTime, RecoveryMode::Salvage];

fn options(mapped: bool, recovery: RecoveryMode) -> Options {
    Options {
        durability: if mapped { Durability::None } else { Durability::Sync },
        recovery,
        segment_size: 64 << 10,
        max_record_size: 0,
        prepare_ahead: false,
        allow_foreign_files: false,
        restorable_tail: false,
        write_behind: 0,
    }
}

type Records = Vec<(u64, Vec<u8>)>;

fn read_everything(wal: &Wal, what: &str) -> Records {
    let mut r = wal.reader(0, ReadUpto::Appended).unwrap_or_else(|e| panic!("{what}: reader open failed: {e:?}"));
    let mut out = Vec::new();
    while let Some(rec) = r.next_record().unwrap_or_else(|e| panic!("{what}: reading record {} failed: {e:?}", out.len())) {
        out.push(rec);
        assert!(out.len() <= 1 << 20, "{what}: reader does not stop");
    }
    out
}

/// Writes the input as segment files into a scratch directory and opens it
/// in every recovery mode. Never panics or hangs; whatever an open returns
/// is exactly the valid prefix `reference::chain` finds (so every record
/// has a valid checksum and sequence numbers are dense); the strict modes
/// only open what the lenient ones open; and after a successful open, an
/// append and a clean close, the log reopens in ABSOLUTE mode with the
/// same records plus the appended one.
pub fn recovery(data: &[u8]) {
    let log = Log::parse(data);
    let (chain, chain_end) = reference::chain(&log.files);
    // Where the log goes on: after the chain, and above every number the
    // segment headers and durable hints prove handed out (a gap declared
    // over what recovery could not keep).
    let next_seq = chain_end.max(reference::floor(&log.files));
    let mut opened = Vec::new();
    for mode in MODES {
        let what = format!("{mode:?}{}", if log.mapped { " (mapped)" } else { "" });
        let dir = ScratchDir::new();
        let wal_dir = dir.0.join("wal");
        std::fs::create_dir_all(&wal_dir).unwrap();
        for (name, bytes) in &log.files {
            std::fs::write(wal_dir.join(format!("{name:020}.wal")), bytes).unwrap();
        }
        // The extent record lists the segments and claims nothing else, so
        // the outcome is decided by the segments (tests/wal_extent.rs and
        // the corruption matrix cover what it adds).
        std::fs::write(wal_dir.join("wal.meta"), reference::extent_record(&log.files)).unwrap();
        let wal = match Wal::open(&wal_dir, options(log.mapped, mode)) {
            Ok(w) => w,
            Err(e) => {
                assert_eq!(e.status, keel::status::KEEL_STATUS_CORRUPTION, "{what}: open failed with {e:?}");
                opened.push(false);
                continue;
            }
        };
        opened.push(true);
        let got = read_everything(&wal, &what);
        let first = wal.first_seq();
        let last = wal.last_seq();
        assert_eq!(wal.durable_seq(), last, "{what}: D is not the last recovered record");
        if let Some(&(s, _)) = got.first() {
            assert!(s >= first, "{what}: first record {s} is below first_seq {first}");
        }
        for w in got.windows(2) {
            assert!(w[1].0 > w[0].0, "{what}: sequence numbers do not increase");
        }
        assert_eq!(last.wrapping_add(1), next_seq, "{what}: last_seq disagrees with where the chain of segments ends and the floor");
        assert!(
            got.len() <= chain.len() && got[..] == chain[..got.len()],
            "{what}: recovered records are not a prefix of the validly framed ones:\n got {:?}\nwant {:?}",
            summary(&got),
            summary(&chain)
        );
        assert_eq!(got.len(), chain.len(), "{what}: recovery dropped valid records it could have kept");
        // The repaired log takes appends and reopens cleanly.
        if last < u64::MAX / 2 {
            let seq = wal.append(b"appended after recovery").unwrap_or_else(|e| panic!("{what}: append failed: {e:?}"));
            assert_eq!(seq, last + 1, "{what}: append after recovery got the wrong sequence number");
            wal.close().unwrap_or_else(|e| panic!("{what}: close failed: {e:?}"));
            let again = Wal::open(&wal_dir, options(log.mapped, RecoveryMode::Absolute))
                .unwrap_or_else(|e| panic!("{what}: the repaired log does not reopen in ABSOLUTE mode: {e:?}"));
            let mut want = got.clone();
            want.push((seq, b"appended after recovery".to_vec()));
            let reread = read_everything(&again, &format!("{what}, reopened"));
            assert!(reread == want, "{what}: reopened log differs:\n got {:?}\nwant {:?}", summary(&reread), summary(&want));
            drop(again);
        }
    }
    // ABSOLUTE ⊆ TOLERATE_TAIL ⊆ POINT_IN_TIME ⊆ SALVAGE, and SALVAGE opens anything.
    for w in opened.windows(2) {
        assert!(!w[0] || w[1], "a stricter recovery mode opened a log a more lenient one refused: {opened:?}");
    }
    assert!(opened[3], "SALVAGE refused to open");
}

fn summary(recs: &Records) -> Vec<(u64, usize)> {
    recs.iter().map(|(s, r)| (*s, r.len())).collect()
}
