//! The frame codec: every byte between two nodes travels in a frame.
//!
//! ```text
//! offset size field
//!   0     4   payload length, u32 little-endian (at most max_frame_bytes)
//!   4     2   frame type, u16 little-endian (see FrameType)
//!   6     1   frame format version (FRAME_VERSION)
//!   7     1   flags, must be 0
//!   8     4   CRC32 (crc32fast, IEEE) of bytes 0..8 followed by the payload
//!  12     n   payload
//! ```
//!
//! `decode` looks at the length before anything is allocated, so a peer
//! announcing a huge frame is refused after 12 bytes.

use std::fmt;

/// Bytes before the payload.
pub const HEADER_LEN: usize = 12;
/// The frame format this build writes and accepts.
pub const FRAME_VERSION: u8 = 1;

/// Why a frame was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The announced payload length is above the limit.
    Oversized { len: u32, max: u32 },
    /// The header names a frame format this build does not know.
    Version(u8),
    /// Reserved flag bits are set.
    Flags(u8),
    /// The CRC does not match the header and payload.
    Crc { stored: u32, computed: u32 },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            FrameError::Oversized { len, max } => {
                write!(f, "frame announces {len} payload bytes, above the limit of {max}")
            }
            FrameError::Version(v) => {
                write!(f, "frame format version {v} is unknown (this build speaks {FRAME_VERSION})")
            }
            FrameError::Flags(b) => write!(f, "frame flags {b:#04x} are reserved and must be 0"),
            FrameError::Crc { stored, computed } => {
                write!(f, "frame CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
        }
    }
}

/// One decoded frame: its type and where its payload lies in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub ty: u16,
    /// Payload bytes are `buf[HEADER_LEN..len]`.
    pub len: usize,
}

fn crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..8]);
    h.update(payload);
    h.finalize()
}

/// Encodes one frame. The caller keeps `payload` within the limit the peer
/// enforces (`Node::send` checks it).
pub fn encode(ty: u16, payload: &[u8]) -> Vec<u8> {
    encode_head(ty, payload, &Body::default())
}

/// The end of a frame's payload, checksummed and shared where it is built
/// (a transfer's batch, on the thread that reads it, while the one before
/// travels): sending it, and sending it again on a new connection, copies
/// none of its bytes; only the head before it is encoded per send.
#[derive(Clone, Default)]
pub struct Body {
    pub bytes: std::sync::Arc<[u8]>,
    crc: crc32fast::Hasher,
}

impl Body {
    pub fn new(bytes: &[u8]) -> Body {
        let mut crc = crc32fast::Hasher::new();
        crc.update(bytes);
        Body { bytes: bytes.into(), crc }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// The header and `head` of a frame whose payload is `head` followed by
/// `body`, which goes out after them as it is.
pub fn encode_head(ty: u16, head: &[u8], body: &Body) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + head.len());
    out.extend_from_slice(&((head.len() + body.len()) as u32).to_le_bytes());
    out.extend_from_slice(&ty.to_le_bytes());
    out.push(FRAME_VERSION);
    out.push(0);
    let mut h = crc32fast::Hasher::new();
    h.update(&out);
    h.update(head);
    h.combine(&body.crc);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(head);
    out
}

/// The whole length (header and payload) of the frame at the start of
/// `buf`, once its header is in; unchecked (`decode` checks it).
pub fn total_len(buf: &[u8]) -> Option<usize> {
    let len: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    (buf.len() >= HEADER_LEN).then(|| HEADER_LEN + u32::from_le_bytes(len) as usize)
}

/// Decodes the frame at the start of `buf`: `Ok(None)` while it is
/// incomplete, the frame once all of it is there. The header is checked
/// as soon as its 12 bytes are in, so the caller never needs room for more
/// than `HEADER_LEN + max_payload` bytes.
pub fn decode(buf: &[u8], max_payload: u32) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len > max_payload {
        return Err(FrameError::Oversized { len, max: max_payload });
    }
    if buf[6] != FRAME_VERSION {
        return Err(FrameError::Version(buf[6]));
    }
    if buf[7] != 0 {
        return Err(FrameError::Flags(buf[7]));
    }
    let total = HEADER_LEN + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let stored = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let computed = crc(buf, &buf[HEADER_LEN..total]);
    if stored != computed {
        return Err(FrameError::Crc { stored, computed });
    }
    Ok(Some(Frame { ty: u16::from_le_bytes([buf[4], buf[5]]), len: total }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_and_a_shared_body_make_the_same_frame() {
        let body: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        for head in [&b""[..], b"step header"] {
            let mut split = encode_head(9, head, &Body::new(&body));
            split.extend_from_slice(&body);
            assert_eq!(split, encode(9, &[head, &body[..]].concat()));
        }
    }

    #[test]
    fn round_trip_and_incremental() {
        let f = encode(0x0101, b"payload");
        for cut in 0..f.len() {
            assert_eq!(decode(&f[..cut], 64), Ok(None), "prefix of {cut} bytes");
        }
        assert_eq!(decode(&f, 64), Ok(Some(Frame { ty: 0x0101, len: f.len() })));
        assert_eq!(&f[HEADER_LEN..], b"payload");
    }

    #[test]
    fn header_is_checked_before_the_payload_arrives() {
        let f = encode(3, &[7u8; 100]);
        assert_eq!(decode(&f[..HEADER_LEN], 99), Err(FrameError::Oversized { len: 100, max: 99 }));
        let mut bad = f.clone();
        bad[6] = 9;
        assert_eq!(decode(&bad[..HEADER_LEN], 100), Err(FrameError::Version(9)));
        let mut bad = f.clone();
        bad[7] = 1;
        assert_eq!(decode(&bad[..HEADER_LEN], 100), Err(FrameError::Flags(1)));
        let mut bad = f;
        bad[50] ^= 1;
        assert!(matches!(decode(&bad, 100), Err(FrameError::Crc { .. })));
    }
}
