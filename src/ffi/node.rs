//! C API of the node transport (`keel_node_*`; docs/TRANSFER.md, "The
//! node transport").

use crate::error::Error;
use crate::ffi::boundary::{closing_ref, in_bytes, into_handle, out_ptr, take_handle, CallbackScope, Opaque};
use crate::ffi::buf::copy_out_c_string;
use crate::ffi::versioned::{init_options, read_options, write_stats};
use crate::ffi::engine::keel_engine_t;
use crate::ffi::error::keel_error_t;
use crate::node::{Node, NodeOptions, NodeStats, Reason};
use crate::status::*;
use crate::transfer::Transfers;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_void};
use std::sync::Arc;
use std::time::Duration;

/// A node: keel's authenticated transport to other keel processes.
/// Internally synchronised: every call except keel_node_close() may run
/// on any thread concurrently.
pub struct keel_node_t {
    _private: [u8; 0],
}

impl Opaque for keel_node_t {
    type Inner = NodeHandle;
    const MAGIC: u64 = 0x6b65_656c_4e4f_4445; // "keelNODE"
    const NAME: &'static str = "keel_node_t";
}

/// A node and its transfer service (`keel_transfer_*`), which receives
/// shards into the node's engine.
pub struct NodeHandle {
    pub(crate) node: Arc<Node>,
    pub(crate) transfers: Arc<Transfers>,
    /// Marks the threads running this node's event callback.
    events: CallbackScope,
}

impl std::ops::Deref for NodeHandle {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

/// Node event callback: peer `peer_id` finished its handshake (`status`
/// KEEL_STATUS_OK), or a connection ended: `status` REFUSED (bad MAC,
/// replay, version, wrong node id, non-loopback peer without a secret),
/// PROTOCOL (malformed, oversized or unknown frame), TIMEOUT (handshake
/// or heartbeats), BUSY (the peer stopped reading), IO (reset, send
/// error) or CLOSED (closed by the peer or by keel_node_close()). A
/// second ready connection to a peer, closed so that one stays
/// (replaced_connections), is reported by neither: the peer stays
/// connected. `peer_id` is 0 when the handshake did not get as far as the peer's id.
/// `message` is borrowed and valid only during the call.
///
/// It runs on a keel thread: the connection's reader thread
/// ("keel-node-conn"), or the thread that refused the connection (the
/// accept thread, or the caller of keel_node_connect()). Never after
/// keel_node_close() returned; during it, yes (every connection ends with
/// CLOSED), and it may then still call keel_node_stats() and
/// keel_node_last_error() on its node. It must not block for long;
/// keel_node_close() of its own node answers BUSY there.
pub type keel_node_event_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, peer_id: u64, status: keel_status_t, message: *const c_char)>;

/// Options of keel_node_open(). Versioned by `struct_size`: fill it with
/// keel_node_options_init_sized(&o, sizeof o) first, then change the fields
/// you need (docs/FFI.md, "Versioned structs").
#[repr(C)]
pub struct keel_node_options_t {
    /// sizeof(keel_node_options_t) as the caller compiled it.
    pub struct_size: u32,
    /// Non-zero to let peers that are not on loopback connect without a
    /// cluster secret; default 0 (only loopback peers without a secret).
    pub allow_remote_without_secret: u32,
    /// This node's id: non-zero, unique in the cluster. No default.
    pub node_id: u64,
    /// "host:port" to listen on, NUL-terminated, copied by
    /// keel_node_open(); port 0 picks one (keel_node_addr()). NULL: the
    /// default "127.0.0.1:0".
    pub listen_addr: *const c_char,
    /// The cluster secret (16 to 1024 bytes), copied by keel_node_open():
    /// handshake MACs are made with it and accepted with it. NULL with
    /// length 0: no secret (no authentication; loopback peers only unless
    /// allow_remote_without_secret).
    pub secret: *const u8,
    pub secret_len: usize,
    /// A second secret accepted alongside the first during a rotation
    /// (never used to send); NULL with length 0 for none.
    pub secret2: *const u8,
    pub secret2_len: usize,
    /// Largest frame payload, 4 KiB to 1 GiB; default 16 MiB.
    pub max_frame_bytes: u32,
    /// A connection without a finished handshake is closed after this
    /// many milliseconds, 1 to 3600000; default 5000.
    pub handshake_timeout_ms: u32,
    /// Bytes one connection may buffer (one inbound frame plus queued
    /// outbound bytes); at least twice max_frame_bytes plus headers;
    /// default 64 MiB. A peer that stops reading is cut off past it.
    pub conn_memory_bytes: u64,
    /// A PING goes out every interval (1 to 3600000 ms; default 1000); a
    /// peer silent for heartbeat_misses intervals (1 to 1000; default 5)
    /// is dropped, and so is one whose frame is not whole that long after
    /// its first byte plus a second per 64 KiB of it received; a transfer
    /// source without a connection for as long loses its receptions here
    /// (their shards stay incoming).
    pub heartbeat_interval_ms: u32,
    pub heartbeat_misses: u32,
    /// keel_node_close() waits up to this long (0 to 600000 ms; default
    /// 2000) for queued frames to be sent; the rest is cancelled and counted.
    pub close_timeout_ms: u32,
    /// Transfers this node runs at once, 1 to 1024; default 4.
    pub max_concurrent_transfers: u32,
    /// Bandwidth cap of one transfer in bytes per second; 0 (default): none.
    pub transfer_bandwidth_bytes_per_sec: u64,
    /// Event callback (see keel_node_event_fn); NULL for none.
    pub on_event: keel_node_event_fn,
    /// Passed to on_event as `user`; keel never dereferences it. It must
    /// stay valid until keel_node_close() returned.
    pub user_data: *mut c_void,
    /// Accepted connections in their handshake at once, 1 to 65536, or 0
    /// (the default) for 64 (version 2). Each holds a thread and a read
    /// buffer before its peer proved anything: past this a new connection
    /// is refused at once (refused_handshake_limit). Connections this node
    /// dials do not count.
    pub max_handshakes: u32,
    /// Must be 0 (INVALID_ARGUMENT otherwise): a later version may give
    /// it a meaning, and a struct of this size could not tell it apart.
    pub _reserved2: u32,
}

/// Counters of a node (keel_node_stats()). Set struct_size to
/// sizeof(keel_node_stats_t) before the call. The `refused_*` and later
/// counters count connections that ended for that reason; the text of the
/// last error is returned by keel_node_last_error().
#[repr(C)]
#[derive(Clone, Copy)]
pub struct keel_node_stats_t {
    /// sizeof(keel_node_stats_t) as the caller compiled it.
    pub struct_size: u32,
    pub _reserved: u32,
    /// Connections with a finished handshake right now.
    pub peers: u64,
    /// Connections accepted, and dialed by keel_node_connect().
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
    /// Outbound frames dropped unsent when a connection closed.
    pub cancelled_frames: u64,
    /// Refused: the MAC matched no active secret (or only one side had a secret).
    pub refused_bad_mac: u64,
    /// Refused: a replayed handshake (a HELLO nonce seen before).
    pub refused_replay: u64,
    /// Refused: no protocol version in common.
    pub refused_version: u64,
    /// Refused: not on loopback and no secret configured.
    pub refused_not_loopback: u64,
    /// Refused: the peer's node id is not the one dialed, or is this node's own.
    pub refused_wrong_node: u64,
    pub handshake_timeouts: u64,
    /// Frames failing their checks (CRC, version, flags, handshake order).
    pub malformed_frames: u64,
    /// Frames announcing more than max_frame_bytes.
    pub oversized_frames: u64,
    /// Frames of a type no service handles.
    pub unknown_types: u64,
    /// Peers silent for heartbeat_misses intervals, or whose frame was not
    /// whole that long after its first byte.
    pub heartbeat_timeouts: u64,
    /// Peers cut off because they stopped reading (conn_memory_bytes).
    pub outbound_overflows: u64,
    /// Connections reset, failed to send, or ended inside a frame.
    pub resets: u64,
    /// Connections the peer closed between frames.
    pub closed_by_peer: u64,
    /// Connections closed by keel_node_close().
    pub closed_by_shutdown: u64,
    /// Connections refused at once because max_handshakes accepted ones
    /// were in their handshake (version 2).
    pub refused_handshake_limit: u64,
    /// Second ready connections to a peer that had one, closed so that one
    /// stays (crossing dials, or the peer connecting again); no event
    /// reports them (version 3).
    pub replaced_connections: u64,
}

/// sizeof(keel_node_options_t) of version 1.
pub const KEEL_NODE_OPTIONS_SIZE_V1: u32 = 112;
/// sizeof(keel_node_options_t) of version 2 (adds max_handshakes).
pub const KEEL_NODE_OPTIONS_SIZE_V2: u32 = 120;
/// sizeof(keel_node_stats_t) of version 1.
pub const KEEL_NODE_STATS_SIZE_V1: u32 = 208;
/// sizeof(keel_node_stats_t) of version 2 (adds refused_handshake_limit).
pub const KEEL_NODE_STATS_SIZE_V2: u32 = 216;
/// sizeof(keel_node_stats_t) of version 3 (adds replaced_connections).
pub const KEEL_NODE_STATS_SIZE_V3: u32 = 224;

const _: () = assert!(std::mem::offset_of!(keel_node_options_t, max_handshakes) == KEEL_NODE_OPTIONS_SIZE_V1 as usize);
const _: () = assert!(std::mem::offset_of!(keel_node_stats_t, refused_handshake_limit) == KEEL_NODE_STATS_SIZE_V1 as usize);
const _: () = assert!(std::mem::offset_of!(keel_node_stats_t, replaced_connections) == KEEL_NODE_STATS_SIZE_V2 as usize);
versioned!(keel_node_options_t, [KEEL_NODE_OPTIONS_SIZE_V1, KEEL_NODE_OPTIONS_SIZE_V2]);
versioned!(keel_node_stats_t, [KEEL_NODE_STATS_SIZE_V1, KEEL_NODE_STATS_SIZE_V2, KEEL_NODE_STATS_SIZE_V3]);

fn default_options() -> keel_node_options_t {
    let d = NodeOptions::default();
    keel_node_options_t {
            struct_size: KEEL_NODE_OPTIONS_SIZE_V2,
            allow_remote_without_secret: 0,
            node_id: 0,
            listen_addr: std::ptr::null(),
            secret: std::ptr::null(),
            secret_len: 0,
            secret2: std::ptr::null(),
            secret2_len: 0,
            max_frame_bytes: d.max_frame_bytes,
            handshake_timeout_ms: d.handshake_timeout.as_millis() as u32,
            conn_memory_bytes: d.conn_memory_bytes,
            heartbeat_interval_ms: d.heartbeat_interval.as_millis() as u32,
            heartbeat_misses: d.heartbeat_misses,
            close_timeout_ms: d.close_timeout.as_millis() as u32,
            max_concurrent_transfers: d.max_concurrent_transfers,
            transfer_bandwidth_bytes_per_sec: d.transfer_bandwidth_bytes_per_sec,
            on_event: None,
            user_data: std::ptr::null_mut(),
            max_handshakes: 0,
            _reserved2: 0,
        }
}

/// Fills the `size` bytes at `opts` (pass sizeof *opts) with the defaults
/// (node_id 0, which the caller must set) and sets struct_size = size.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (size below
/// KEEL_NODE_OPTIONS_SIZE_V1 or between two published sizes).
#[no_mangle]
pub extern "C" fn keel_node_options_init_sized(opts: *mut keel_node_options_t, size: usize) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), std::ptr::null::<u8>(), { init_options(opts, size, default_options()) })
}

/// The host's callback and its user data, called from keel's threads.
struct CEvent {
    f: unsafe extern "C" fn(*mut c_void, u64, keel_status_t, *const c_char),
    user: usize,
}

fn options_from_c(p: *const keel_node_options_t, events: &CallbackScope) -> crate::Result<NodeOptions> {
    if p.is_null() {
        return Err(Error::new(KEEL_STATUS_NULL_ARGUMENT, "opts is NULL (node_id is required)"));
    }
    let o = &read_options(p, default_options(), "keel_node_options_init_sized")?;
    if o._reserved2 != 0 {
        return Err(Error::invalid("keel_node_options_t._reserved2 must be 0"));
    }
    let ms = |v: u32| Duration::from_millis(v as u64);
    let mut secrets = Vec::new();
    for (p, len, name) in [(o.secret, o.secret_len, "secret"), (o.secret2, o.secret2_len, "secret2")] {
        let s = in_bytes(p, len, name)?;
        if !s.is_empty() {
            secrets.push(s.to_vec());
        }
    }
    if o.secret_len == 0 && o.secret2_len > 0 {
        return Err(Error::invalid("secret2 is set without secret"));
    }
    let listen = if o.listen_addr.is_null() {
        NodeOptions::default().listen
    } else {
        // SAFETY: the caller passes a NUL-terminated string (documented
        // on listen_addr), read only during this call.
        let s = unsafe { CStr::from_ptr(o.listen_addr) };
        s.to_str().map_err(|_| Error::invalid("listen_addr is not valid UTF-8"))?.to_string()
    };
    let on_event = o.on_event.map(|f| {
        let cb = CEvent { f, user: o.user_data as usize };
        let events = events.clone();
        Arc::new(move |peer, status, msg: &str| {
            let m = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
            // SAFETY: the host gave this function and promised its user
            // data stays valid until keel_node_close() returned, after
            // which no callback runs; `m` outlives the call.
            events.run(|| unsafe { (cb.f)(cb.user as *mut c_void, peer, status, m.as_ptr()) });
        }) as crate::node::NodeEventFn
    });
    Ok(NodeOptions {
        node_id: o.node_id,
        listen,
        secrets,
        allow_remote_without_secret: o.allow_remote_without_secret != 0,
        max_frame_bytes: o.max_frame_bytes,
        conn_memory_bytes: o.conn_memory_bytes,
        handshake_timeout: ms(o.handshake_timeout_ms),
        max_handshakes: match o.max_handshakes {
            0 => NodeOptions::default().max_handshakes,
            n => n,
        },
        heartbeat_interval: ms(o.heartbeat_interval_ms),
        heartbeat_misses: o.heartbeat_misses,
        close_timeout: ms(o.close_timeout_ms),
        max_concurrent_transfers: o.max_concurrent_transfers,
        transfer_bandwidth_bytes_per_sec: o.transfer_bandwidth_bytes_per_sec,
        on_event,
    })
}

/// Opens a node for `engine` (which must stay open until the node is
/// closed): binds the listen address and starts its threads (an accept
/// thread, a writer reactor, one reader thread per connection, and the
/// thread that runs the transfer steps received, "keel-transfer-recv",
/// so that a long step never stops a connection's heartbeats). The
/// node runs a transfer service: it sends shards (keel_transfer_start())
/// and receives the shards announced with keel_transfer_expect() into
/// `engine`. On
/// success `*out` receives a handle the caller releases with
/// keel_node_close().
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (an option out of range,
/// _reserved2 not 0, not a live engine, a listen_addr that does not parse or resolves to
/// nothing), IO (the address cannot be bound), RESOURCE (out of
/// descriptors, memory or threads).
#[no_mangle]
pub extern "C" fn keel_node_open(
    engine: *const keel_engine_t,
    opts: *const keel_node_options_t,
    out: *mut *mut keel_node_t,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, std::ptr::null::<u8>(), {
        let engine = try_handle!(engine);
        let out = out_ptr(out, "out")?;
        let events = CallbackScope::default();
        let node = Arc::new(Node::open(options_from_c(opts, &events)?)?);
        let transfers = Transfers::attach(node.clone(), engine.clone())?;
        *out = into_handle::<keel_node_t>(NodeHandle { node, transfers, events });
        Ok(())
    })
}

/// Writes the address the node listens on ("ip:port", the port picked
/// when the option said 0) as a NUL-terminated string into `buf` of
/// `cap` bytes; `*len` receives its length including the NUL.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT, BUFFER_TOO_SMALL (`*len`
/// holds the size needed; 64 bytes always suffice).
#[no_mangle]
pub extern "C" fn keel_node_addr(
    node: *const keel_node_t,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), node, {
        let n = try_handle!(node);
        let len = out_ptr(len, "len")?;
        copy_out_c_string(&n.addr().to_string(), buf, cap, len)
    })
}

/// Dials peer `peer_id` at `addr` ("host:port", NUL-terminated) and runs
/// the handshake; returns once the peer is ready, on the calling thread.
/// A peer this node has a ready connection to already: OK at once, that
/// connection is used (only the address for later reconnects changes).
/// While another thread dials the same peer, waits for that dial first.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (peer_id 0 or this node's own,
/// an address that does not resolve), IO (connect failed, or the
/// connection broke), REFUSED (the handshake refused the peer, or the
/// peer refused this node: the message says why), TIMEOUT (no answer to
/// the TCP connect, or no handshake, within handshake_timeout_ms),
/// PROTOCOL, CLOSED (the node is closing, or the peer closed the
/// connection before the handshake finished), RESOURCE (out of
/// descriptors or memory).
#[no_mangle]
pub extern "C" fn keel_node_connect(
    node: *const keel_node_t,
    peer_id: u64,
    addr: *const c_char,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, node, {
        let n = try_handle!(node);
        if addr.is_null() {
            return Err(Error::new(KEEL_STATUS_NULL_ARGUMENT, "addr is NULL"));
        }
        // SAFETY: checked non-NULL; the caller passes a NUL-terminated
        // string that stays valid during the call.
        let a = unsafe { CStr::from_ptr(addr) }.to_str().map_err(|_| Error::invalid("addr is not valid UTF-8"))?;
        n.connect(peer_id, a)
    })
}

fn stats_out(s: &NodeStats, out: *mut keel_node_stats_t) -> crate::Result<()> {
    let e = |r: Reason| s.ended(r);
    let value = keel_node_stats_t {
        struct_size: KEEL_NODE_STATS_SIZE_V3,
        _reserved: 0,
        peers: s.peers,
        accepted: s.accepted,
        dialed: s.dialed,
        handshakes: s.handshakes,
        frames_in: s.frames_in,
        frames_out: s.frames_out,
        bytes_in: s.bytes_in,
        bytes_out: s.bytes_out,
        pings_sent: s.pings_sent,
        pongs_received: s.pongs_received,
        cancelled_frames: s.cancelled_frames,
        refused_bad_mac: e(Reason::BadMac),
        refused_replay: e(Reason::Replay),
        refused_version: e(Reason::Version),
        refused_not_loopback: e(Reason::NotLoopback),
        refused_wrong_node: e(Reason::WrongNode),
        handshake_timeouts: e(Reason::HandshakeTimeout),
        malformed_frames: e(Reason::Malformed),
        oversized_frames: e(Reason::Oversized),
        unknown_types: e(Reason::UnknownType),
        heartbeat_timeouts: e(Reason::HeartbeatTimeout),
        outbound_overflows: e(Reason::OutboundOverflow),
        resets: e(Reason::Reset),
        closed_by_peer: e(Reason::ClosedByPeer),
        closed_by_shutdown: e(Reason::Shutdown),
        refused_handshake_limit: e(Reason::HandshakeLimit),
        replaced_connections: e(Reason::Replaced),
    };
    write_stats(out, value)
}

/// Copies the node's counters into `*out` (struct_size set by the caller).
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (struct_size too small, not a
/// live node).
#[no_mangle]
pub extern "C" fn keel_node_stats(node: *const keel_node_t, out: *mut keel_node_stats_t) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), node, {
        let n = try_handle!(node);
        stats_out(&n.stats(), out)
    })
}

/// Writes the text of the last error that ended a connection ("" when
/// none) as a NUL-terminated string into `buf` of `cap` bytes; `*len`
/// receives its length including the NUL.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT, BUFFER_TOO_SMALL (`*len`
/// holds the size needed).
#[no_mangle]
pub extern "C" fn keel_node_last_error(
    node: *const keel_node_t,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), node, {
        let n = try_handle!(node);
        let len = out_ptr(len, "len")?;
        copy_out_c_string(&n.stats().last_error, buf, cap, len)
    })
}

/// Closes the node: stops accepting, gives every connection up to
/// close_timeout_ms to send what is queued (the rest is cancelled and
/// counted in cancelled_frames), closes the connections and joins every
/// keel thread of the node (the transfer steps received before the close
/// run to their end first); no event callback runs after it returns. When
/// `final_stats` is not NULL (struct_size set by the caller) it receives
/// the counters as they are at the end. The handle is freed; NULL is a
/// no-op. Must not race with other calls on the node from the host's own
/// threads. The event callback, which still runs during the close, may
/// call keel_node_stats() and keel_node_last_error() on its node (they
/// answer as usual) and keel_node_connect() (CLOSED); the handle stays
/// valid until the close returns.
/// Errors: INVALID_ARGUMENT (not a live node, or final_stats'
/// struct_size too small: the node is closed anyway), BUSY (called from
/// the node's own event callback, which the close would wait for: nothing
/// is done).
#[no_mangle]
pub extern "C" fn keel_node_close(node: *mut keel_node_t, final_stats: *mut keel_node_stats_t) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), std::ptr::null::<u8>(), {
        if node.is_null() {
            return Ok(());
        }
        // SAFETY: by the C contract `node` is a node keel made that the
        // host's threads do not use during its close; its event callback
        // may (the threads it runs on are joined inside `close`, and only
        // this call frees the handle, after that). closing_ref checks the
        // magic (not the poison mark: closing is how a host recovers); the
        // Node is shared-borrowed, which every method allows.
        let n = unsafe { closing_ref(node as *const keel_node_t)? };
        if n.events.is_current() {
            // The close joins the thread this callback runs on.
            return Err(Error::new(KEEL_STATUS_BUSY, "keel_node_close() cannot be called from its node's event callback"));
        }
        let s = n.close()?;
        // The node's readers are gone: the steps they handed over run now.
        n.transfers.close();
        // SAFETY: every thread that could reach the handle is joined, and
        // a second close was answered BUSY above without touching it.
        unsafe { take_handle(node)? };
        if final_stats.is_null() {
            return Ok(());
        }
        stats_out(&s, final_stats)
    })
}
