//! The seed corpus: real frames and segments made by keel's own encoders
//! (and, for `recovery`, logs written by `Wal` itself), in each target's
//! input layout. `tests/smoke.rs` writes them to `corpus/<target>/` when
//! run with KEEL_FUZZ_WRITE_CORPUS=1, and otherwise checks that the
//! committed corpus still holds every deterministic one.

use crate::{Log, ScratchDir, EXPLICIT_NAMES, FIX_FRAME_CRC, FIX_HEADER_CRC, MAPPED};
use keel::wal::format::{encode_segment_header, Link, PendingFrame, SEGMENT_HEADER_LEN};
use keel::wal::{Durability, Options, Wal};

pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub data: Vec<u8>,
    /// Same bytes on every run (false: written by `Wal` with a random salt).
    pub deterministic: bool,
}

const SALT: u32 = 0x5eed_5a17;

/// Frame kinds to build a segment from: (frame, durable hint); sequence
/// numbers are assigned densely from the segment's first one.
enum F {
    Rec(&'static [u8]),
    Batch(&'static [&'static [u8]]),
    Mark,
}

fn pending(f: &F) -> PendingFrame<'static> {
    match f {
        F::Rec(r) => PendingFrame::record(r),
        F::Batch(rs) => PendingFrame::batch(rs),
        F::Mark => PendingFrame::mark(),
    }
}

/// One encoded frame, padding included.
fn frame_bytes(f: &F, salt: u32, seq: u64, durable: u64) -> Vec<u8> {
    let p = pending(f);
    let mut out = p.header(salt, seq, durable).to_vec();
    out.extend_from_slice(&p.payload);
    out.extend_from_slice(p.padding());
    out
}

/// A segment: header, frames (durable hint = `hint(seq)`), then `tail`
/// zero bytes of the allocated-but-unwritten part; the header records
/// `cut` bytes more than that as allocated (0: the file is whole). Returns
/// the bytes and the sequence number after the last record.
fn segment_cut(salt: u32, first: u64, frames: &[F], hint: impl Fn(u64) -> u64, tail: usize, cut: u64) -> (Vec<u8>, u64) {
    let mut body = Vec::new();
    let mut seq = first;
    for f in frames {
        let p = pending(f);
        body.extend_from_slice(&frame_bytes(f, salt, seq, hint(seq)));
        seq += u64::from(p.count);
    }
    body.resize(body.len() + tail, 0);
    let allocated = SEGMENT_HEADER_LEN + body.len() as u64 + cut;
    let mut out = encode_segment_header(salt, first, None, allocated).to_vec();
    out.extend_from_slice(&body);
    (out, seq)
}

fn segment(salt: u32, first: u64, frames: &[F], hint: impl Fn(u64) -> u64, tail: usize) -> (Vec<u8>, u64) {
    segment_cut(salt, first, frames, hint, tail, 0)
}

const RECS: [&[u8]; 5] = [b"alpha", b"", b"a record of thirteen", b"\x00\x01\x02\x03\x04\x05\x06\x07", b"z"];

fn typical() -> Vec<F> {
    vec![
        F::Rec(RECS[0]),
        F::Rec(RECS[2]),
        F::Batch(&[b"one", b"", b"three33"]),
        F::Rec(RECS[1]),
        F::Rec(RECS[3]),
        F::Batch(&[b"x"]),
        F::Mark,
    ]
}

pub fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, name: &str, data: Vec<u8>| {
        out.push(Seed { target, name: name.to_string(), data, deterministic: true })
    };

    // ---- frame: [flags][salt][frame bytes]
    let with = |flags: u8, salt: u32, body: &[u8]| {
        let mut v = vec![flags];
        v.extend_from_slice(&salt.to_le_bytes());
        v.extend_from_slice(body);
        v
    };
    let mut zeros_after = |name: &str, f: F, seq: u64, durable: u64, flags: u8| {
        let mut b = frame_bytes(&f, SALT, seq, durable);
        b.extend_from_slice(&[0u8; 16]);
        add("frame", name, with(flags, SALT, &b));
    };
    zeros_after("record", F::Rec(RECS[2]), 7, 6, 0);
    zeros_after("record-empty", F::Rec(b""), 1, 0, 0);
    zeros_after("record-fix", F::Rec(RECS[3]), 1 << 40, 12345, FIX_FRAME_CRC);
    zeros_after("batch", F::Batch(&[b"ab", b"", b"cdef"]), 42, 40, 0);
    zeros_after("batch-fix", F::Batch(&[b"one", b"two", b"three", b""]), 3, 1, FIX_FRAME_CRC);
    zeros_after("batch-single", F::Batch(&[b"solo"]), 9, 0, FIX_FRAME_CRC);
    zeros_after("mark", F::Mark, 100, 99, 0);
    zeros_after("mark-fix", F::Mark, 5, 4, FIX_FRAME_CRC);
    {
        let mut b = frame_bytes(&F::Rec(RECS[0]), 0, 1, 0);
        b.extend_from_slice(&frame_bytes(&F::Rec(RECS[4]), 0, 2, 1));
        add("frame", "two-records-salt0", with(0, 0, &b));
        let torn = &frame_bytes(&F::Rec(RECS[2]), SALT, 3, 2)[..40];
        add("frame", "torn", with(0, SALT, torn));
        add("frame", "zeros", with(0, SALT, &[0u8; 48]));
        add("frame", "short-header", with(0, SALT, &[1u8; 20]));
        let mut bad = frame_bytes(&F::Batch(&[b"ab", b"cd"]), SALT, 3, 2);
        bad[32] = 3; // the length table no longer matches the payload
        add("frame", "bad-table-fix", with(FIX_FRAME_CRC, SALT, &bad));
    }

    // ---- segment_header: [flags][header bytes]
    for (name, salt, first) in [("first", SALT, 1u64), ("later", 0xffff_ffff, 4097), ("big-seq", 0, 1 << 62)] {
        let mut v = vec![0u8];
        v.extend_from_slice(&encode_segment_header(salt, first, None, 64 << 10));
        add("segment_header", name, v);
    }
    {
        let mut v = vec![FIX_HEADER_CRC];
        v.extend_from_slice(&encode_segment_header(SALT, 77, None, 64 << 10));
        v[1 + 55] = 0xaa; // reserved byte, CRC recomputed by the harness
        add("segment_header", "reserved-nonzero-fix", v);
        let mut v = vec![0u8];
        v.extend_from_slice(&encode_segment_header(SALT, 77, None, 0));
        add("segment_header", "allocated-not-recorded", v);
        let mut v = vec![0u8];
        v.extend_from_slice(&encode_segment_header(SALT, 77, None, 5 << 30));
        add("segment_header", "allocated-too-large", v);
        let mut v = vec![0u8];
        v.extend_from_slice(&encode_segment_header(SALT, 77, None, 0)[..40]);
        add("segment_header", "short", v);
        // Format 2 links: the previous segment, and a declared gap.
        for (name, end) in [("linked", 4097u64), ("linked-gap", 300)] {
            let mut v = vec![0u8];
            v.extend_from_slice(&encode_segment_header(SALT, 4097, Some(Link { first_seq: 1, salt: 0x0bad_cafe, end }), 1 << 20));
            add("segment_header", name, v);
        }
    }

    // ---- recovery: [flags][segment][separator][segment]...
    let fixed = FIX_HEADER_CRC | FIX_FRAME_CRC;
    let hint = |s: u64| s - 1; // every earlier record durable (SYNC mode)
    let (clean, next) = segment(SALT, 1, &typical(), hint, 64);
    add("recovery", "one-segment", Log::encode(0, &[(1, clean.clone())]));
    add("recovery", "one-segment-fix", Log::encode(fixed, &[(1, clean.clone())]));
    add("recovery", "one-segment-mapped", Log::encode(MAPPED | fixed, &[(1, clean.clone())]));
    add("recovery", "explicit-names", Log::encode(EXPLICIT_NAMES | fixed, &[(1, clean.clone())]));
    add("recovery", "empty-segment", Log::encode(fixed, &[(9, segment(1, 9, &[], hint, 32).0)]));
    {
        let (a, n1) = segment(0x1111, 1, &[F::Rec(RECS[0]), F::Batch(&[b"b", b"c"])], hint, 0);
        let (b, n2) = segment(0x2222, n1, &[F::Rec(RECS[2]), F::Rec(RECS[4])], hint, 0);
        let (c, _) = segment(0x3333, n2, &[F::Rec(RECS[3]), F::Mark], hint, 40);
        add("recovery", "three-segments", Log::encode(fixed, &[(1, a.clone()), (n1, b.clone()), (n2, c.clone())]));
        add("recovery", "missing-middle", Log::encode(fixed, &[(1, a.clone()), (n2, c.clone())]));
        let mut bad_header = b.clone();
        bad_header[5] ^= 0x10;
        add("recovery", "bad-middle-header", Log::encode(0, &[(1, a.clone()), (n1, bad_header), (n2, c.clone())]));
        let mut damaged = b.clone();
        damaged[64 + 33] ^= 1; // first record of the middle segment; later hints prove it durable
        add("recovery", "proven-corruption", Log::encode(0, &[(1, a), (n1, damaged), (n2, c)]));
    }
    {
        // Torn tail: the last frame cut short, the rest of the segment zero.
        let (mut t, _) = segment(SALT, 10, &typical(), |s| s.saturating_sub(3).max(9), 0);
        let cut = t.len() - 12;
        t.truncate(cut);
        t.resize(cut + 64, 0);
        add("recovery", "torn-tail", Log::encode(0, &[(10, t)]));
        // Unsynced tail: a frame lost, later frames valid but their hints
        // below it (NONE mode: D stayed behind).
        let (mut u, _) = segment(SALT, 1, &typical(), |_| 0, 32);
        let second = 64 + frame_bytes(&F::Rec(RECS[0]), SALT, 1, 0).len();
        u[second + 40] ^= 0x55;
        add("recovery", "unsynced-tail", Log::encode(0, &[(1, u)]));
        // A frame whose sequence number skips one.
        let (mut s, _) = segment(SALT, 1, &typical(), hint, 16);
        s[second + 16] = 3;
        add("recovery", "sequence-skip-fix", Log::encode(fixed, &[(1, s)]));
        let _ = next;
        // A file shorter than its header's allocated length: the tail was
        // cut and may have held records (a gap is declared over them),
        // unless the next segment starts where the records end.
        let (c, n1) = segment_cut(SALT, 1, &typical(), hint, 0, 4096);
        add("recovery", "cut-short", Log::encode(0, &[(1, c.clone())]));
        let (d, _) = segment(0x2222, n1, &[F::Rec(RECS[2])], hint, 8);
        add("recovery", "cut-short-then-followed", Log::encode(0, &[(1, c), (n1, d)]));
    }

    // ---- node_frame: [flags][frames]
    {
        use crate::node::NODE_FIX_CRC;
        use keel::node::frame::encode;
        use keel::node::handshake::{Hello, Role, Transcript, PROTOCOL_MAX, PROTOCOL_MIN};
        use keel::node::types;
        let a = Hello { min_version: PROTOCOL_MIN, max_version: PROTOCOL_MAX, node_id: 1, nonce: [0xa5; 32], has_secret: true };
        let b = Hello { node_id: 2, nonce: [0x5a; 32], ..a };
        let mac = Transcript { sender_role: Role::Dialer, version: PROTOCOL_MAX, sender: &a, receiver: &b }.sign(b"fuzz secret number one");
        let with = |flags: u8, frames: &[Vec<u8>]| {
            let mut v = vec![flags];
            frames.iter().for_each(|f| v.extend_from_slice(f));
            v
        };
        let handshake = [encode(types::HELLO, &a.encode()), encode(types::AUTH, &mac), encode(types::READY, &[])];
        add("node_frame", "handshake", with(0, &handshake));
        add("node_frame", "handshake-fix", with(NODE_FIX_CRC, &handshake));
        add("node_frame", "hello-no-secret", with(0, &[encode(types::HELLO, &Hello { has_secret: false, ..b }.encode())]));
        let traffic = [encode(types::PING, b""), encode(0x0100, b"a transfer batch"), encode(types::PONG, b""), encode(0x0200, &[7; 300])];
        add("node_frame", "traffic", with(0, &traffic));
        add("node_frame", "traffic-fix", with(NODE_FIX_CRC, &traffic));
        let mut big = encode(0x0101, &[1; 64]);
        big[..4].copy_from_slice(&(1u32 << 20).to_le_bytes());
        add("node_frame", "oversized-header-fix", with(NODE_FIX_CRC, &[big]));
        let mut torn = encode(0x0100, b"cut off in the middle");
        torn.truncate(20);
        add("node_frame", "torn", with(0, &[torn]));
        let mut bad = encode(0x0100, b"flipped");
        bad[14] ^= 1;
        add("node_frame", "bad-crc", with(0, &[bad]));
        let mut hello = vec![0u8];
        hello.extend_from_slice(&a.encode());
        add("node_frame", "bare-hello", hello);
        // A transfer as the receiver sees it: each step's header, then its
        // body; a posting list among the entries, and the receiver's ACK.
        {
            use keel::shard::{Entry, Op, Value};
            use keel::transfer::wire;
            let step = |ty: u16, n: u64, body: &[u8]| {
                let mut p = wire::step(9, n, n - 1);
                p.extend_from_slice(body);
                encode(ty, &p)
            };
            let mut entries = 2u32.to_le_bytes().to_vec();
            let list: Entry = Entry { version: 3, value: Value::Posting(vec![b"one".to_vec(), Vec::new()]) };
            wire::put_entry(&mut entries, b"a", &list);
            wire::put_entry(&mut entries, b"b", &Entry { version: 4, value: Value::Bytes(b"bee".to_vec()) });
            let mut ops = 2u32.to_le_bytes().to_vec();
            wire::put_op(&mut ops, 6, &Op::Put { key: b"c".to_vec(), value: b"x".to_vec() }.encode());
            wire::put_op(&mut ops, 7, &Op::Delete { key: b"a".to_vec() }.encode());
            let begin = [&[wire::MODE_SNAPSHOT][..], &5u64.to_le_bytes(), &[1], &7u32.to_le_bytes()].concat();
            let ack = wire::Ack { id: 9, step: 3, status: 0, version: 5, crc: Some(7), message: "ok".into() };
            let transfer = [
                step(wire::START, 1, &[&7u32.to_le_bytes()[..], &[wire::MODE_SNAPSHOT]].concat()),
                step(wire::BEGIN, 2, &begin),
                step(wire::ENTRIES, 6, &entries),
                step(wire::SNAPSHOT_END, 4, &[]),
                step(wire::OPS, 5, &ops),
                step(wire::FINISH, 6, &7u64.to_le_bytes()),
                encode(wire::ACK, &ack.encode()),
            ];
            add("node_frame", "transfer", with(0, &transfer));
            add("node_frame", "transfer-fix", with(NODE_FIX_CRC, &transfer));
        }
    }

    // Logs written by the real WAL (random salts: not byte-reproducible).
    for (name, durability, flags) in [("wal-written-sync", Durability::Sync, 0), ("wal-written-mapped", Durability::None, MAPPED)] {
        let dir = ScratchDir::new();
        let opts = Options { durability, segment_size: 64 << 10, prepare_ahead: false, ..Options::default() };
        let wal = Wal::open(&dir.0, opts).expect("opening a scratch WAL");
        for r in RECS {
            wal.append(r).unwrap();
        }
        wal.append_batch(&[b"batched", b"", b"records"]).unwrap();
        wal.close().unwrap();
        let mut files: Vec<(u64, Vec<u8>)> = std::fs::read_dir(&dir.0)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                let seq = name.strip_suffix(".wal")?.parse().ok()?;
                let mut bytes = std::fs::read(dir.0.join(&name)).unwrap();
                // Keep the written part and a little of the zero fill, as
                // the header's allocated length says (a whole file).
                let end = bytes.iter().rposition(|&x| x != 0).map_or(0, |p| p + 1);
                bytes.truncate((end.div_ceil(8) * 8 + 64).min(bytes.len()));
                let len = bytes.len() as u64;
                bytes[44..52].copy_from_slice(&len.to_le_bytes());
                let crc = crc32fast::hash(&bytes[..60]);
                bytes[60..64].copy_from_slice(&crc.to_le_bytes());
                Some((seq, bytes))
            })
            .collect();
        files.sort();
        out.push(Seed { target: "recovery", name: name.to_string(), data: Log::encode(flags, &files), deterministic: false });
    }
    out
}
