//! The node: keel's own authenticated transport between processes
//! (issue #11 §1; docs/TRANSFER.md, "The node transport").
//!
//! A [`Node`] listens on a TCP address, dials peers and carries typed
//! frames between peers that passed the handshake. One file per
//! mechanism: `frame.rs` (the frame codec), `handshake.rs` (HELLO/AUTH and
//! the MAC), `conn.rs` (one connection: handshake, reading, heartbeats),
//! `node.rs` (listener, dialing, sending, shutdown) and `stats.rs`.
//!
//! Threads: outbound frames go through keel's batched writers (one
//! [`crate::net::Net`] reactor per node); inbound bytes are read by one
//! thread per connection, which also runs the handshake, the heartbeats
//! and the service handlers. Node-to-node connections are few (one per
//! peer), so a blocking reader per connection is simpler than teaching the
//! write-side reactor to dispatch reads.

mod conn;
pub mod frame;
pub mod handshake;
#[allow(clippy::module_inception)]
mod node;
mod stats;

pub use node::Node;
pub use stats::{NodeStats, Reason, REASONS};

use crate::error::{Error, Result};
use crate::status::keel_status_t;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

/// The frame type registry. Types below 0x0100 belong to the node itself;
/// each service owns a range (`Service::range`).
pub mod types {
    pub const HELLO: u16 = 0x0001;
    pub const AUTH: u16 = 0x0002;
    pub const PING: u16 = 0x0003;
    pub const PONG: u16 = 0x0004;
    /// Empty: the sender accepted the peer (its HELLO, and its AUTH with
    /// secrets). A side is ready once it accepted the peer and got its READY.
    pub const READY: u16 = 0x0005;
    /// One byte, the refusal (index in `Reason::ALL`): the sender refused
    /// the peer and closes the connection.
    pub const REFUSE: u16 = 0x0006;
}

/// The services a node carries frames for, each with its own range of
/// frame types. A frame of a service with no handler is refused as an
/// unknown type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Shard transfer (reserved: 0x0100..=0x01FF).
    Transfer,
    /// The router (reserved: 0x0200..=0x02FF).
    Router,
}

impl Service {
    pub const ALL: [Service; 2] = [Service::Transfer, Service::Router];

    pub fn range(self) -> RangeInclusive<u16> {
        match self {
            Service::Transfer => 0x0100..=0x01FF,
            Service::Router => 0x0200..=0x02FF,
        }
    }

    /// The service a frame type belongs to.
    pub fn of(ty: u16) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.range().contains(&ty))
    }
}

/// Receives the frames of one service: (peer node id, frame type,
/// payload). Runs on the connection's reader thread, in arrival order.
pub type Handler = Arc<dyn Fn(u64, u16, &[u8]) + Send + Sync>;

/// Told that a ready connection to a peer (its node id) ended: the peer
/// may have another one, or none any more (`Node::is_ready`). Runs on the
/// connection's reader thread, after every frame it read was handed to
/// its service.
pub type PeerGone = Arc<dyn Fn(u64) + Send + Sync>;

/// Called when a peer finished its handshake (status OK) and when a
/// connection ended (its status and the reason's text). Arguments: the
/// peer's node id (0 when the handshake did not get that far), status,
/// message. Runs on the connection's reader thread, or on the thread that
/// refused the connection.
pub type NodeEventFn = Arc<dyn Fn(u64, keel_status_t, &str) + Send + Sync>;

/// Options of [`Node::open`]; `validate` says what is out of range.
#[derive(Clone)]
pub struct NodeOptions {
    /// This node's id, non-zero, unique in the cluster.
    pub node_id: u64,
    /// "host:port" to listen on; port 0 picks one (`Node::addr`).
    pub listen: String,
    /// Active cluster secrets, at most two, each 16..=1024 bytes: a MAC is
    /// sent with the first and accepted with either (rotation). Empty: no
    /// authentication, and only loopback peers are accepted unless
    /// `allow_remote_without_secret`.
    pub secrets: Vec<Vec<u8>>,
    pub allow_remote_without_secret: bool,
    /// Largest frame payload accepted and sent, 4 KiB..=1 GiB.
    pub max_frame_bytes: u32,
    /// Bytes one connection may buffer: its read buffer (at most one frame
    /// and its header) plus queued outbound bytes; a peer that stops
    /// reading is cut off past it. At least twice a full frame.
    pub conn_memory_bytes: u64,
    /// A connection whose handshake has not finished by then is closed.
    pub handshake_timeout: Duration,
    /// Accepted connections still in their handshake at once, 1..=65536:
    /// each holds a thread and a read buffer before its peer proved
    /// anything, so past this a new one is refused at once
    /// (`Reason::HandshakeLimit`). Connections this node dials do not count.
    pub max_handshakes: u32,
    /// A PING goes out every interval; a peer heard nothing from for
    /// `heartbeat_misses` intervals is dropped (`silence_limit`), and so is
    /// one whose frame is not whole that long after its first byte plus a
    /// second per 64 KiB of it received; a transfer source without a
    /// connection for as long loses its receptions here.
    pub heartbeat_interval: Duration,
    pub heartbeat_misses: u32,
    /// How long closing waits for queued frames to be sent; what is left
    /// then is cancelled and counted (`NodeStats::cancelled_frames`).
    pub close_timeout: Duration,
    /// Transfers this node runs at once (enforced by the transfer).
    pub max_concurrent_transfers: u32,
    /// Bandwidth cap of one transfer in bytes per second, 0 = none
    /// (enforced by the transfer).
    pub transfer_bandwidth_bytes_per_sec: u64,
    pub on_event: Option<NodeEventFn>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            node_id: 0,
            listen: "127.0.0.1:0".into(),
            secrets: Vec::new(),
            allow_remote_without_secret: false,
            max_frame_bytes: 16 << 20,
            conn_memory_bytes: 64 << 20,
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 64,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_misses: 5,
            close_timeout: Duration::from_secs(2),
            max_concurrent_transfers: 4,
            transfer_bandwidth_bytes_per_sec: 0,
            on_event: None,
        }
    }
}

impl NodeOptions {
    /// Bytes of the read buffer: one frame with its header.
    pub(crate) fn read_limit(&self) -> usize {
        frame::HEADER_LEN + self.max_frame_bytes as usize
    }

    /// How long a peer may go unheard before it is taken for gone:
    /// `heartbeat_misses` heartbeat intervals.
    pub fn silence_limit(&self) -> Duration {
        self.heartbeat_interval * self.heartbeat_misses
    }

    pub fn validate(&self) -> Result<()> {
        let ms = |d: Duration| d.as_millis();
        if self.node_id == 0 {
            return Err(Error::invalid("node_id must be non-zero"));
        }
        if self.secrets.len() > 2 {
            return Err(Error::invalid(format!("{} secrets given; at most 2 can be active", self.secrets.len())));
        }
        if let Some(s) = self.secrets.iter().find(|s| !(16..=1024).contains(&s.len())) {
            return Err(Error::invalid(format!("a secret of {} bytes is outside 16..=1024", s.len())));
        }
        if !(4096..=1 << 30).contains(&self.max_frame_bytes) {
            return Err(Error::invalid(format!("max_frame_bytes {} is outside 4 KiB..=1 GiB", self.max_frame_bytes)));
        }
        if self.conn_memory_bytes < 2 * self.read_limit() as u64 {
            return Err(Error::invalid(format!(
                "conn_memory_bytes {} is below twice a full frame ({} bytes)",
                self.conn_memory_bytes,
                2 * self.read_limit()
            )));
        }
        for (name, d) in
            [("handshake_timeout", self.handshake_timeout), ("heartbeat_interval", self.heartbeat_interval)]
        {
            if !(1..=3_600_000).contains(&ms(d)) {
                return Err(Error::invalid(format!("{name} of {} ms is outside 1..=3600000 ms", ms(d))));
            }
        }
        if !(1..=65536).contains(&self.max_handshakes) {
            return Err(Error::invalid(format!("max_handshakes {} is outside 1..=65536", self.max_handshakes)));
        }
        if !(1..=1000).contains(&self.heartbeat_misses) {
            return Err(Error::invalid(format!("heartbeat_misses {} is outside 1..=1000", self.heartbeat_misses)));
        }
        if self.close_timeout > Duration::from_secs(600) {
            return Err(Error::invalid("close_timeout is above 600 s"));
        }
        if !(1..=1024).contains(&self.max_concurrent_transfers) {
            return Err(Error::invalid(format!(
                "max_concurrent_transfers {} is outside 1..=1024",
                self.max_concurrent_transfers
            )));
        }
        Ok(())
    }
}
