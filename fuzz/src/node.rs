//! The `node_frame` target: the node transport's frame decoder
//! (`keel::node::frame`) and handshake decoders (`keel::node::handshake`).
//!
//! Input: `[flags][bytes]`. Bit 0 of flags (`NODE_FIX_CRC`) asks the
//! harness to recompute each frame's CRC first. The bytes are decoded as a
//! stream of frames, compared with `reference`, a decoder written from
//! docs/TRANSFER.md; every frame accepted is exactly what `encode` writes
//! for its type and payload, and every prefix of it is either incomplete
//! or fails with the same header error. HELLO payloads (and the raw bytes)
//! go through `Hello::decode`, which must round-trip what it accepts, and
//! AUTH payloads through the MAC check. Payloads of the transfer service's
//! frames go through the receiver's decoders (`keel::transfer::wire`):
//! the step header, ENTRIES (and PART, whose pieces end as one) through
//! `check_entries` and `entries`, OPS through `ops`, and ACK through
//! `Ack::decode`; what they accept must re-encode to the same bytes, and
//! what `check_entries` passes must decode.

use keel::node::frame::{self, FrameError, HEADER_LEN};
use keel::node::handshake::{self, Hello, Role, Transcript};
use keel::node::types;

/// Input flag: recompute the CRC of every frame before decoding.
pub const NODE_FIX_CRC: u8 = 1;
/// The payload limit the target decodes with (small, so mutations cross it).
pub const NODE_MAX_PAYLOAD: u32 = 4096;
const SECRETS: [&[u8]; 2] = [b"fuzz secret number one", b"fuzz secret number two"];

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// What a frame at the start of a buffer is, per the documented layout.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Incomplete,
    Frame { ty: u16, len: usize },
    Oversized,
    Version,
    Flags,
    Crc,
}

fn reference(b: &[u8], max: u32) -> Verdict {
    if b.len() < 12 {
        return Verdict::Incomplete;
    }
    let len = u32_at(b, 0);
    if len > max {
        return Verdict::Oversized;
    }
    if b[6] != 1 {
        return Verdict::Version;
    }
    if b[7] != 0 {
        return Verdict::Flags;
    }
    let total = 12 + len as usize;
    if b.len() < total {
        return Verdict::Incomplete;
    }
    let mut covered = b[..8].to_vec();
    covered.extend_from_slice(&b[12..total]);
    if crc32fast::hash(&covered) != u32_at(b, 8) {
        return Verdict::Crc;
    }
    Verdict::Frame { ty: u16::from_le_bytes([b[4], b[5]]), len: total }
}

fn keel_verdict(b: &[u8], max: u32) -> Verdict {
    match frame::decode(b, max) {
        Ok(None) => Verdict::Incomplete,
        Ok(Some(f)) => Verdict::Frame { ty: f.ty, len: f.len },
        Err(FrameError::Oversized { len, max: m }) => {
            assert!(len > m && m == max, "Oversized({len}, {m}) with limit {max}");
            Verdict::Oversized
        }
        Err(FrameError::Version(_)) => Verdict::Version,
        Err(FrameError::Flags(_)) => Verdict::Flags,
        Err(FrameError::Crc { .. }) => Verdict::Crc,
    }
}

/// Recomputes the CRC of each frame whose header fits, walking the stream.
pub fn fix_node_crcs(b: &mut [u8]) {
    let mut at = 0;
    while b.len() - at >= HEADER_LEN {
        let len = u32_at(b, at) as usize;
        let end = at + HEADER_LEN + len.min(b.len() - at - HEADER_LEN);
        let mut covered = b[at..at + 8].to_vec();
        covered.extend_from_slice(&b[at + HEADER_LEN..end]);
        let c = crc32fast::hash(&covered);
        b[at + 8..at + 12].copy_from_slice(&c.to_le_bytes());
        at = end;
    }
}

fn check_hello(p: &[u8]) {
    let Ok(h) = Hello::decode(p) else { return };
    assert_eq!(h.encode(), p, "an accepted HELLO does not re-encode to its bytes");
    if let Some(v) = handshake::negotiate(&h) {
        assert!(v >= h.min_version && v <= h.max_version);
    }
    let peer = Hello { node_id: h.node_id.wrapping_add(1).max(1), ..h };
    let t = Transcript { sender_role: Role::Dialer, version: handshake::PROTOCOL_MAX, sender: &h, receiver: &peer };
    assert!(t.verify(&[SECRETS[0].to_vec(), SECRETS[1].to_vec()], &t.sign(SECRETS[1])), "rotation: the second secret");
    assert!(!t.verify(&[SECRETS[0].to_vec()], &t.sign(SECRETS[1])), "a MAC under another secret verified");
    let reflected = Transcript { sender_role: Role::Acceptor, sender: &peer, receiver: &h, ..t };
    assert!(!reflected.verify(&[SECRETS[0].to_vec()], &t.sign(SECRETS[0])), "a reflected MAC verified");
}

fn check_auth(p: &[u8]) {
    let a = Hello { min_version: handshake::PROTOCOL_MIN, max_version: handshake::PROTOCOL_MAX, node_id: 1, nonce: [1; 32], has_secret: true };
    let b = Hello { node_id: 2, nonce: [2; 32], ..a };
    let t = Transcript { sender_role: Role::Acceptor, version: handshake::PROTOCOL_MAX, sender: &a, receiver: &b };
    // Arbitrary bytes as a MAC: never a panic, and accepted only if they
    // are the MAC itself.
    let ok = t.verify(&[SECRETS[0].to_vec()], p);
    assert_eq!(ok, p == t.sign(SECRETS[0]), "verify disagrees with sign");
}

/// A transfer frame's payload through the receiver's decoders: never a
/// panic, a refusal is PROTOCOL, and an accepted payload is what the
/// encoders write for what was decoded.
fn check_transfer(ty: u16, p: &[u8]) {
    use keel::status::KEEL_STATUS_PROTOCOL;
    use keel::transfer::wire;
    if ty == wire::ACK {
        let Ok(a) = wire::Ack::decode(p) else { return };
        // Fixed fields, then the message. Re-encoded as it was when the
        // crc field of an ACK without one is 0 and the message is UTF-8
        // within the bytes kept.
        let (fixed, message) = p.split_at(33);
        let canonical = fixed[28] == 1 || fixed[29..33] == [0; 4];
        if canonical && message.len() <= wire::ACK_MESSAGE_MAX && std::str::from_utf8(message).is_ok() {
            assert_eq!(a.encode(), p, "an accepted ACK does not re-encode to its bytes");
        }
        return;
    }
    let Ok(mut step) = wire::parse_step(p) else {
        assert!(p.len() < wire::STEP_HEADER, "a step header of {} bytes was refused", p.len());
        return;
    };
    assert_eq!(wire::step(step.id, step.step, step.acked), p[..wire::STEP_HEADER], "the step header");
    let body = step.body.bytes;
    match ty {
        wire::ENTRIES | wire::PART => {
            // `acked` stands in for the snapshot's version, so the
            // version check is exercised both ways.
            let base = step.acked;
            match wire::check_entries(body, base, keel::shard::MAX_LIST_SIZE) {
                Ok(n) => {
                    let entries = wire::entries(body).expect("a body check_entries passed decodes");
                    assert_eq!(entries.len(), n, "check_entries and entries count differently");
                    let mut again = (n as u32).to_le_bytes().to_vec();
                    for (k, e) in &entries {
                        assert!(e.version <= base, "an entry of version {} passed a snapshot at {base}", e.version);
                        wire::put_entry(&mut again, k, e);
                    }
                    assert_eq!(again, body, "accepted entries do not re-encode to their bytes");
                }
                Err(e) => assert_eq!(e.status, KEEL_STATUS_PROTOCOL, "{e}"),
            }
        }
        wire::OPS => match wire::ops(&mut step.body) {
            Ok(ops) => {
                let mut again = (ops.len() as u32).to_le_bytes().to_vec();
                for w in ops.windows(2) {
                    assert_eq!(w[0].0.checked_add(1), Some(w[1].0), "a batch's versions do not follow one another");
                }
                for (v, r) in &ops {
                    wire::put_op(&mut again, *v, r);
                }
                assert_eq!(again, body, "accepted records do not re-encode to their bytes");
            }
            Err(e) => assert_eq!(e.status, KEEL_STATUS_PROTOCOL, "{e}"),
        },
        _ => {}
    }
}

pub fn node_frame(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut b = rest.to_vec();
    if flags & NODE_FIX_CRC != 0 {
        fix_node_crcs(&mut b);
    }
    check_hello(&b);
    let mut at = 0;
    loop {
        let s = &b[at..];
        let got = keel_verdict(s, NODE_MAX_PAYLOAD);
        assert_eq!(got, reference(s, NODE_MAX_PAYLOAD), "decode disagrees with the reference at offset {at}");
        // Where the frame at `at` ends (as far as the buffer goes).
        let end = if s.len() >= HEADER_LEN {
            (HEADER_LEN as u64 + u64::from(u32_at(s, 0))).min(s.len() as u64) as usize
        } else {
            s.len()
        };
        // Every shorter prefix is incomplete, or the same header error.
        for cut in [0, HEADER_LEN - 1, HEADER_LEN, HEADER_LEN + 1, end.saturating_sub(1)] {
            if cut >= end || cut > s.len() {
                continue;
            }
            let p = keel_verdict(&s[..cut], NODE_MAX_PAYLOAD);
            match (&got, &p) {
                (_, Verdict::Incomplete) => {}
                (Verdict::Oversized | Verdict::Version | Verdict::Flags, q) if q == &got => {}
                _ => panic!("prefix of {cut} bytes decodes as {p:?}, the whole as {got:?}"),
            }
        }
        let Verdict::Frame { ty, len } = got else { break };
        let payload = &s[HEADER_LEN..len];
        assert_eq!(frame::encode(ty, payload), &s[..len], "an accepted frame is not what encode writes");
        match ty {
            types::HELLO => check_hello(payload),
            types::AUTH => check_auth(payload),
            0x0100..=0x01FF => check_transfer(ty, payload),
            _ => {}
        }
        at += len;
    }
}
