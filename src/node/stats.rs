//! The node's counters: connections, frames and bytes, and one counter per
//! reason a connection ended, plus the text of the last error.

use crate::status::*;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a connection ended. Each has its own counter in `NodeStats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Refused: the peer's AUTH MAC matches no active secret, or only one
    /// side has a secret.
    BadMac,
    /// Refused: the peer's HELLO repeats a nonce seen before.
    Replay,
    /// Refused: no protocol version both sides speak.
    Version,
    /// Refused: no secret is configured and the peer is not on loopback.
    NotLoopback,
    /// Refused: the dialed peer has another node id than asked for, or the
    /// peer claims this node's own id.
    WrongNode,
    /// The handshake did not finish within handshake_timeout.
    HandshakeTimeout,
    /// A frame failed its checks (CRC, version, flags) or a handshake
    /// payload was malformed or out of order.
    Malformed,
    /// A frame announced more than max_frame_bytes.
    Oversized,
    /// A frame type with no registered service.
    UnknownType,
    /// Nothing heard for heartbeat_misses heartbeat intervals, or a frame
    /// trickled in slower than that allows (docs/TRANSFER.md, Heartbeats).
    HeartbeatTimeout,
    /// The peer stopped reading: queued outbound bytes passed the limit.
    OutboundOverflow,
    /// The connection broke: reset, a send error, or end of stream inside a frame.
    Reset,
    /// The peer closed the connection between frames.
    ClosedByPeer,
    /// This node closed it (keel_node_close).
    Shutdown,
    /// Refused: `max_handshakes` accepted connections were in their
    /// handshake already.
    HandshakeLimit,
    /// A second ready connection to a peer: this node closed one of the two
    /// (docs/TRANSFER.md, "One connection per peer").
    Replaced,
}

/// Reasons keep their place (their index is the byte of a REFUSE frame and
/// of the stats array): new ones go at the end.
pub const REASONS: usize = 16;

impl Reason {
    pub const ALL: [Reason; REASONS] = [
        Reason::BadMac,
        Reason::Replay,
        Reason::Version,
        Reason::NotLoopback,
        Reason::WrongNode,
        Reason::HandshakeTimeout,
        Reason::Malformed,
        Reason::Oversized,
        Reason::UnknownType,
        Reason::HeartbeatTimeout,
        Reason::OutboundOverflow,
        Reason::Reset,
        Reason::ClosedByPeer,
        Reason::Shutdown,
        Reason::HandshakeLimit,
        Reason::Replaced,
    ];

    /// The status a caller sees for a connection that ended this way.
    pub fn status(self) -> keel_status_t {
        match self {
            Reason::BadMac
            | Reason::Replay
            | Reason::Version
            | Reason::NotLoopback
            | Reason::WrongNode
            | Reason::HandshakeLimit => KEEL_STATUS_REFUSED,
            Reason::HandshakeTimeout | Reason::HeartbeatTimeout => KEEL_STATUS_TIMEOUT,
            Reason::Malformed | Reason::Oversized | Reason::UnknownType => KEEL_STATUS_PROTOCOL,
            Reason::OutboundOverflow => KEEL_STATUS_BUSY,
            Reason::Reset => KEEL_STATUS_IO,
            Reason::ClosedByPeer | Reason::Shutdown | Reason::Replaced => KEEL_STATUS_CLOSED,
        }
    }

    /// The byte a REFUSE frame carries for this reason.
    pub fn code(self) -> u8 {
        Reason::ALL.iter().position(|r| *r == self).expect("every reason is in ALL") as u8
    }

    /// The refusal a REFUSE frame's byte names, if it names one.
    pub fn refusal(code: u8) -> Option<Reason> {
        Reason::ALL.get(code as usize).copied().filter(|r| r.is_refusal())
    }

    /// True for the refusals of the handshake.
    pub fn is_refusal(self) -> bool {
        self.status() == KEEL_STATUS_REFUSED
    }
}

/// A snapshot of a node's counters (`Node::stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Connections with a finished handshake right now (gauge; a second
    /// one to a peer counts until it is closed, `Reason::Replaced`).
    pub peers: u64,
    pub accepted: u64,
    pub dialed: u64,
    /// Handshakes that finished.
    pub handshakes: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub pings_sent: u64,
    pub pongs_received: u64,
    /// Outbound frames still queued when a connection closed (close
    /// timeout, or a connection cut off) and never sent.
    pub cancelled_frames: u64,
    /// Connections ended, by reason (indexed like `Reason::ALL`).
    pub ended: [u64; REASONS],
    /// Text of the last error that ended a connection ("" when none).
    pub last_error: String,
}

impl NodeStats {
    pub fn ended(&self, r: Reason) -> u64 {
        self.ended[r as usize]
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub peers: AtomicU64,
    pub accepted: AtomicU64,
    pub dialed: AtomicU64,
    pub handshakes: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub pings_sent: AtomicU64,
    pub pongs_received: AtomicU64,
    pub cancelled_frames: AtomicU64,
    ended: [AtomicU64; REASONS],
    /// Held while a connection's end is counted (peer gone, reason, text)
    /// and while a snapshot is taken, so a snapshot never shows a reason
    /// counted for a peer that it still lists.
    last_error: Mutex<String>,
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    /// Counts a finished handshake: one more live peer.
    pub fn ready(&self) {
        let _one_step = self.last_error.lock();
        add(&self.handshakes, 1);
        add(&self.peers, 1);
    }

    /// Counts a connection that ended (`was_peer`: it had been counted in
    /// `peers`); errors also become the last error. One step as far as
    /// `snapshot` can tell.
    pub fn ended(&self, r: Reason, message: &str, was_peer: bool) {
        let mut last = self.last_error.lock();
        if was_peer {
            self.peers.fetch_sub(1, Ordering::Relaxed);
        }
        add(&self.ended[r as usize], 1);
        if !matches!(r, Reason::ClosedByPeer | Reason::Shutdown | Reason::Replaced) {
            *last = message.to_string();
        }
    }

    pub fn note_error(&self, message: String) {
        *self.last_error.lock() = message;
    }

    pub fn snapshot(&self) -> NodeStats {
        let last = self.last_error.lock();
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NodeStats {
            peers: g(&self.peers),
            accepted: g(&self.accepted),
            dialed: g(&self.dialed),
            handshakes: g(&self.handshakes),
            frames_in: g(&self.frames_in),
            frames_out: g(&self.frames_out),
            bytes_in: g(&self.bytes_in),
            bytes_out: g(&self.bytes_out),
            pings_sent: g(&self.pings_sent),
            pongs_received: g(&self.pongs_received),
            cancelled_frames: g(&self.cancelled_frames),
            ended: std::array::from_fn(|i| g(&self.ended[i])),
            last_error: last.clone(),
        }
    }
}
