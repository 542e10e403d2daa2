//! The node transport over real loopback TCP sockets (issue #11 §1):
//! authenticated nodes exchanging frames, refusals of every kind, bad input
//! from a raw TcpStream peer, heartbeats, a peer that stops reading, and
//! shutdown that drains or cancels. No timing assertions: timeouts are
//! small options, and every wait is on an event with a generous deadline
//! that only guards against a hang.

use crossbeam_channel::{unbounded, Receiver};
use keel::node::frame::{self, HEADER_LEN};
use keel::node::handshake::{self, Hello, Role, Transcript, PROTOCOL_MAX, PROTOCOL_MIN};
use keel::node::{types, Node, NodeOptions, NodeStats, Reason, Service};
use keel::status::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

const HANG_GUARD: Duration = Duration::from_secs(60);
const OLD: &[u8] = b"old cluster secret 0123456789";
const NEW: &[u8] = b"new cluster secret 9876543210";
const TRANSFER: u16 = 0x0100;

type Events = Receiver<(u64, keel_status_t, String)>;

fn options(id: u64, secrets: &[&[u8]]) -> (NodeOptions, Events) {
    let (tx, rx) = unbounded();
    let o = NodeOptions {
        node_id: id,
        secrets: secrets.iter().map(|s| s.to_vec()).collect(),
        max_frame_bytes: 64 << 10,
        conn_memory_bytes: 1 << 20,
        handshake_timeout: Duration::from_millis(1000),
        heartbeat_interval: Duration::from_millis(50),
        // A second of silence: tests share a loaded machine.
        heartbeat_misses: 20,
        // A drain ends as soon as the peer closes its side; this only
        // bounds a peer that never does.
        close_timeout: Duration::from_secs(5),
        on_event: Some(Arc::new(move |peer, status, msg: &str| {
            let _ = tx.send((peer, status, msg.to_string()));
        })),
        ..NodeOptions::default()
    };
    (o, rx)
}

fn open(id: u64, secrets: &[&[u8]]) -> (Node, Events) {
    let (o, rx) = options(id, secrets);
    (Node::open(o).unwrap(), rx)
}

/// Waits until `pred` holds for the node's stats: woken by its events,
/// and looking every 10 ms for counters no event reports (an accept).
fn wait_for(node: &Node, events: &Events, what: &str, pred: impl Fn(&NodeStats) -> bool) -> NodeStats {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let s = node.stats();
        if pred(&s) {
            return s;
        }
        if Instant::now() >= deadline {
            panic!("hang guard: still waiting for {what}; stats {s:?}");
        }
        let _ = events.recv_timeout(Duration::from_millis(10));
    }
}

fn wait_ended(node: &Node, events: &Events, r: Reason) -> NodeStats {
    let s = wait_for(node, events, &format!("{r:?}"), |s| s.ended(r) >= 1);
    assert_eq!(s.peers, 0, "{s:?}");
    s
}

/// A frame handler that forwards payloads to a channel.
fn collect(node: &Node) -> Receiver<(u64, u16, Vec<u8>)> {
    let (tx, rx) = unbounded();
    node.set_handler(
        Service::Transfer,
        Some(Arc::new(move |peer, ty, p: &[u8]| {
            let _ = tx.send((peer, ty, p.to_vec()));
        })),
    );
    rx
}

/// A raw peer: a TcpStream speaking the protocol by hand.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(node: &Node) -> Raw {
        let s = TcpStream::connect(node.addr()).unwrap();
        s.set_read_timeout(Some(HANG_GUARD)).unwrap();
        Raw { s, buf: Vec::new() }
    }

    fn send(&mut self, ty: u16, payload: &[u8]) {
        self.s.write_all(&frame::encode(ty, payload)).unwrap();
    }

    fn read_frame(&mut self) -> (u16, Vec<u8>) {
        loop {
            if let Some(f) = frame::decode(&self.buf, 1 << 20).unwrap() {
                let out = (f.ty, self.buf[HEADER_LEN..f.len].to_vec());
                self.buf.drain(..f.len);
                return out;
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).unwrap();
            assert!(n > 0, "the node closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn hello(id: u64, has_secret: bool) -> Hello {
        Hello { min_version: PROTOCOL_MIN, max_version: PROTOCOL_MAX, node_id: id, nonce: handshake::nonce().unwrap(), has_secret }
    }

    /// Handshake with a node that has no secret.
    fn ready(node: &Node, id: u64) -> Raw {
        let mut r = Raw::connect(node);
        r.send(types::HELLO, &Raw::hello(id, false).encode());
        r.send(types::READY, b"");
        assert_eq!(r.read_frame().0, types::HELLO);
        assert_eq!(r.read_frame().0, types::READY);
        r
    }

    /// Reads until the node closes the connection (EOF or reset).
    fn until_closed(&mut self) {
        let mut chunk = [0u8; 4096];
        while matches!(self.s.read(&mut chunk), Ok(n) if n > 0) {}
    }
}

#[test]
fn authenticated_nodes_carry_typed_frames_and_heartbeats() {
    let (a, ea) = open(1, &[OLD]);
    let (b, _eb) = open(2, &[OLD]);
    let got = collect(&a);
    b.connect(1, &a.addr().to_string()).unwrap();
    assert_eq!(b.peers(), vec![1]);
    wait_for(&a, &ea, "a handshake on the acceptor", |s| s.peers == 1);
    for i in 0..100u32 {
        b.send(1, TRANSFER + (i % 3) as u16, &i.to_le_bytes()).unwrap();
    }
    for i in 0..100u32 {
        let (peer, ty, p) = got.recv_timeout(HANG_GUARD).unwrap();
        assert_eq!((peer, ty, p), (2, TRANSFER + (i % 3) as u16, i.to_le_bytes().to_vec()), "in order");
    }
    // Limits of `send` itself.
    assert_eq!(b.send(1, types::PING, b"").unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT);
    assert_eq!(b.send(1, TRANSFER, &vec![0; (64 << 10) + 1]).unwrap_err().status, KEEL_STATUS_INVALID_ARGUMENT);
    assert_eq!(b.send(9, TRANSFER, b"x").unwrap_err().status, KEEL_STATUS_NOT_FOUND);
    let s = b.close().unwrap();
    assert_eq!(s.handshakes, 1);
    wait_ended(&a, &ea, Reason::ClosedByPeer);
}

#[test]
fn two_secrets_rotate_and_a_wrong_or_missing_secret_is_refused() {
    // Mid-rotation: each side sends with its first secret and accepts either.
    let (a, ea) = open(1, &[OLD, NEW]);
    let (b, _eb) = open(2, &[NEW, OLD]);
    b.connect(1, &a.addr().to_string()).unwrap();

    let (c, _ec) = open(3, &[b"a secret nobody else has"]);
    let e = c.connect(1, &a.addr().to_string()).unwrap_err();
    assert_eq!(e.status, KEEL_STATUS_REFUSED, "{e}");
    assert!(e.message.contains("MAC"), "{e}");
    let s = c.stats();
    assert_eq!((s.ended(Reason::BadMac), s.peers), (1, 0));
    assert!(s.last_error.contains("MAC"), "{s:?}");
    wait_for(&a, &ea, "a's refusal of c", |s| s.ended(Reason::BadMac) >= 1);

    let (d, _ed) = open(4, &[]);
    let e = d.connect(1, &a.addr().to_string()).unwrap_err();
    assert_eq!(e.status, KEEL_STATUS_REFUSED, "{e}");
    assert!(e.message.contains("secret"), "{e}");
    wait_for(&a, &ea, "a's refusal of d", |s| s.ended(Reason::BadMac) >= 2);
    assert_eq!(a.peers(), vec![2]);
}

#[test]
fn a_recorded_handshake_cannot_be_replayed() {
    let (a, ea) = open(1, &[OLD]);
    // An honest peer with the secret, by hand, recording what it sends.
    let me = Raw::hello(7, true);
    let mut r = Raw::connect(&a);
    r.send(types::HELLO, &me.encode());
    let (ty, p) = r.read_frame();
    assert_eq!(ty, types::HELLO);
    let theirs = Hello::decode(&p).unwrap();
    let mac = Transcript { sender_role: Role::Dialer, version: PROTOCOL_MAX, sender: &me, receiver: &theirs }.sign(OLD);
    r.send(types::AUTH, &mac);
    r.send(types::READY, b"");
    assert_eq!(r.read_frame().0, types::AUTH);
    assert_eq!(r.read_frame().0, types::READY);
    wait_for(&a, &ea, "the honest handshake", |s| s.handshakes == 1);

    // The same bytes again on a new connection: the nonce gives it away.
    let mut replay = Raw::connect(&a);
    replay.send(types::HELLO, &me.encode());
    replay.send(types::AUTH, &mac);
    replay.until_closed();
    let s = wait_for(&a, &ea, "the replay refusal", |s| s.ended(Reason::Replay) == 1);
    assert!(s.last_error.contains("replay"), "{s:?}");

    // With a fresh nonce the recorded MAC no longer matches.
    let mut forged = Raw::connect(&a);
    forged.send(types::HELLO, &Hello { nonce: handshake::nonce().unwrap(), ..me }.encode());
    forged.send(types::AUTH, &mac);
    forged.until_closed();
    wait_for(&a, &ea, "the bad MAC", |s| s.ended(Reason::BadMac) == 1);
    assert_eq!(a.stats().handshakes, 1);
}

#[test]
fn unknown_versions_and_wrong_node_ids_are_refused() {
    let (a, ea) = open(1, &[]);
    let mut r = Raw::connect(&a);
    r.send(types::HELLO, &Hello { min_version: 5, max_version: 9, ..Raw::hello(7, false) }.encode());
    r.until_closed();
    let s = wait_ended(&a, &ea, Reason::Version);
    assert!(s.last_error.contains("protocol version"), "{s:?}");

    let (b, _eb) = open(2, &[]);
    let e = b.connect(99, &a.addr().to_string()).unwrap_err();
    assert_eq!(e.status, KEEL_STATUS_REFUSED, "{e}");
    assert!(e.message.contains("expected node 99"), "{e}");
    assert_eq!(b.stats().ended(Reason::WrongNode), 1);
}

#[test]
fn a_peer_that_says_nothing_times_out_in_the_handshake() {
    let (a, ea) = open(1, &[OLD]);
    let mut r = Raw::connect(&a);
    r.until_closed();
    let s = wait_ended(&a, &ea, Reason::HandshakeTimeout);
    assert!(s.last_error.contains("handshake"), "{s:?}");
}

#[test]
fn garbage_oversized_and_unknown_frames_close_the_connection() {
    let (a, ea) = open(1, &[]);
    let mut r = Raw::connect(&a);
    // A small length, then a frame format version nobody speaks.
    r.s.write_all(b"\x05\x00\x00\x00\x01\x01\x09\x00garbage garbage").unwrap();
    r.until_closed();
    wait_ended(&a, &ea, Reason::Malformed);

    // A corrupted CRC after the handshake.
    let mut r = Raw::ready(&a, 7);
    let mut f = frame::encode(TRANSFER, b"payload");
    f[HEADER_LEN] ^= 0x40;
    r.s.write_all(&f).unwrap();
    r.until_closed();
    let s = wait_for(&a, &ea, "a CRC error", |s| s.ended(Reason::Malformed) == 2);
    assert!(s.last_error.contains("CRC"), "{s:?}");

    // A length past the limit is refused from the header alone.
    let mut r = Raw::ready(&a, 8);
    let mut f = frame::encode(TRANSFER, b"");
    f[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    r.s.write_all(&f[..HEADER_LEN]).unwrap();
    r.until_closed();
    let s = wait_ended(&a, &ea, Reason::Oversized);
    assert!(s.last_error.contains("above the limit"), "{s:?}");

    // Before the handshake only HELLO and AUTH may come: a header that
    // announces more, even well within the limit, is refused from the
    // header alone (not read into a buffer of its size).
    let mut r = Raw::connect(&a);
    let mut f = frame::encode(types::HELLO, b"");
    f[..4].copy_from_slice(&1000u32.to_le_bytes());
    r.s.write_all(&f[..HEADER_LEN]).unwrap();
    r.until_closed();
    let s = wait_for(&a, &ea, "a long frame before the handshake", |s| s.ended(Reason::Oversized) == 2);
    assert!(s.last_error.contains("above the limit"), "{s:?}");

    // A type outside every service, and a service with no handler.
    for (peer, ty) in [(9, 0x7777u16), (10, 0x0200)] {
        let mut r = Raw::ready(&a, peer);
        r.send(ty, b"?");
        r.until_closed();
    }
    let s = wait_for(&a, &ea, "two unknown types", |s| s.ended(Reason::UnknownType) == 2);
    assert!(s.last_error.contains("no service"), "{s:?}");
    assert_eq!(s.peers, 0);
}

#[test]
fn a_peer_that_resets_or_ends_mid_frame_is_reported() {
    let (a, ea) = open(1, &[]);
    let half = frame::encode(TRANSFER, &[1u8; 1000]);
    // End of stream inside a frame.
    let mut r = Raw::ready(&a, 7);
    r.s.write_all(&half[..500]).unwrap();
    r.s.shutdown(std::net::Shutdown::Write).unwrap();
    r.until_closed();
    let s = wait_ended(&a, &ea, Reason::Reset);
    assert!(s.last_error.contains("inside a frame"), "{s:?}");
    // A reset (SO_LINGER 0 makes close send RST) inside a frame.
    let mut r = Raw::ready(&a, 8);
    r.s.write_all(&half[..500]).unwrap();
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: the fd is open and `linger` is a valid struct of the size given.
    let rc = unsafe {
        libc::setsockopt(
            r.s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(r);
    wait_for(&a, &ea, "the reset", |s| s.ended(Reason::Reset) == 2);
}

#[test]
fn a_peer_that_answers_pings_stays_and_gets_pongs() {
    let (a, ea) = open(1, &[]);
    let mut r = Raw::ready(&a, 7);
    // Thirty PINGs are more intervals than heartbeat_misses (20): the
    // connection lives because the peer answers them. The node answers
    // each of the peer's PINGs in order, so once the tenth PONG is read the
    // node has handled every PONG sent before it.
    let (mut pings, mut pongs) = (0, 0);
    while pings < 30 || pongs < 30 {
        match r.read_frame() {
            (types::PING, p) if p.is_empty() => {
                pings += 1;
                if pings <= 30 {
                    r.send(types::PONG, b"");
                    r.send(types::PING, b"");
                }
            }
            (types::PONG, p) if p.is_empty() => pongs += 1,
            other => panic!("unexpected frame {other:?}"),
        }
    }
    let s = a.stats();
    assert_eq!((s.peers, s.ended(Reason::HeartbeatTimeout)), (1, 0), "{s:?}");
    assert!(s.pings_sent >= 30 && s.pongs_received >= 30, "{s:?}");
    // A clean close: no more writes, read what is left until the node closes.
    r.s.shutdown(std::net::Shutdown::Write).unwrap();
    r.until_closed();
    wait_ended(&a, &ea, Reason::ClosedByPeer);
}

#[test]
fn a_silent_peer_misses_its_heartbeats() {
    let (a, ea) = open(1, &[]);
    let mut r = Raw::ready(&a, 7);
    // It reads (and so sees the node's PINGs) but never answers.
    r.until_closed();
    let s = wait_ended(&a, &ea, Reason::HeartbeatTimeout);
    assert!(s.pings_sent >= 1 && s.last_error.contains("nothing heard"), "{s:?}");
}

#[test]
fn a_peer_that_stops_reading_is_cut_off_at_the_memory_limit() {
    let (mut o, ea) = options(1, &[]);
    o.heartbeat_interval = Duration::from_secs(600);
    let a = Node::open(o).unwrap();
    let _r = Raw::ready(&a, 7);
    wait_for(&a, &ea, "the handshake", |s| s.peers == 1);
    let chunk = vec![0u8; 60 << 10];
    let mut sent = 0u64;
    let err = loop {
        match a.send(7, TRANSFER, &chunk) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 100_000, "the outbound limit never tripped");
    };
    assert!(matches!(err.status, KEEL_STATUS_BUSY | KEEL_STATUS_CLOSED | KEEL_STATUS_NOT_FOUND), "{err}");
    let s = wait_ended(&a, &ea, Reason::OutboundOverflow);
    assert!(s.cancelled_frames >= 1 && s.last_error.contains("hard cap"), "{s:?}");
}

#[test]
fn close_drains_queued_frames_to_a_reading_peer() {
    let (a, ea) = open(1, &[OLD]);
    let (mut o, _eb) = options(2, &[OLD]);
    o.close_timeout = HANG_GUARD; // the drain ends when a has read everything
    let b = Node::open(o).unwrap();
    let got = collect(&a);
    b.connect(1, &a.addr().to_string()).unwrap();
    let payload = vec![5u8; 8 << 10];
    for _ in 0..500 {
        b.send(1, TRANSFER, &payload).unwrap();
    }
    let s = b.close().unwrap();
    assert_eq!((s.cancelled_frames, s.ended(Reason::Shutdown)), (0, 1), "{s:?}");
    for _ in 0..500 {
        assert_eq!(got.recv_timeout(HANG_GUARD).unwrap().2.len(), payload.len());
    }
    wait_ended(&a, &ea, Reason::ClosedByPeer);
}

#[test]
fn close_cancels_what_a_stuck_peer_never_takes_and_counts_it() {
    let (mut o, ea) = options(1, &[]);
    o.heartbeat_interval = Duration::from_secs(600);
    o.conn_memory_bytes = 256 << 20;
    o.close_timeout = Duration::from_millis(50);
    let a = Node::open(o).unwrap();
    let _r = Raw::ready(&a, 7);
    wait_for(&a, &ea, "the handshake", |s| s.peers == 1);
    // 64 MiB: far more than the loopback socket buffers hold.
    let chunk = vec![0u8; 64 << 10];
    for _ in 0..1024 {
        a.send(7, TRANSFER, &chunk).unwrap();
    }
    let s = a.close().unwrap();
    assert!(s.cancelled_frames >= 1, "{s:?}");
    assert_eq!(s.ended(Reason::Shutdown), 1, "{s:?}");
}

#[test]
fn options_are_validated() {
    let ok = NodeOptions { node_id: 1, ..NodeOptions::default() };
    ok.validate().unwrap();
    let bad = [
        NodeOptions { node_id: 0, ..ok.clone() },
        NodeOptions { secrets: vec![vec![1; 15]], ..ok.clone() },
        NodeOptions { secrets: vec![vec![1; 16]; 3], ..ok.clone() },
        NodeOptions { max_frame_bytes: 100, ..ok.clone() },
        NodeOptions { conn_memory_bytes: 1 << 20, ..ok.clone() },
        NodeOptions { heartbeat_misses: 0, ..ok.clone() },
        NodeOptions { handshake_timeout: Duration::ZERO, ..ok.clone() },
        NodeOptions { max_concurrent_transfers: 0, ..ok.clone() },
    ];
    for o in bad {
        assert_eq!(Node::open(o).err().unwrap().status, KEEL_STATUS_INVALID_ARGUMENT);
    }
    let limits = NodeOptions { max_concurrent_transfers: 2, transfer_bandwidth_bytes_per_sec: 1 << 20, ..ok };
    let n = Node::open(limits).unwrap();
    assert_ne!(n.addr().port(), 0, "port 0 picks one");
}



/// Mid-rotation, out of order: a accepts only OLD, b sends with NEW (and
/// accepts OLD). a refuses b's AUTH; b verifies a's AUTH, and its
/// `connect` must not report the peer ready: keel.h says connect returns
/// "REFUSED (the handshake refused the peer, or the peer refused this
/// node: the message says why)".
#[test]
fn connect_fails_when_the_acceptor_refused_the_dialer() {
    let (a, ea) = open(1, &[OLD]);
    let (b, eb) = open(2, &[NEW, OLD]);
    let r = b.connect(1, &a.addr().to_string());
    wait_for(&a, &ea, "a's refusal of b", |s| s.ended(Reason::BadMac) == 1);
    let s = wait_for(&b, &eb, "b's connection to end", |s| s.ended.iter().sum::<u64>() == 1);
    assert_eq!(r.as_ref().err().map(|e| e.status), Some(KEEL_STATUS_REFUSED), "connect answered {r:?}; b {s:?}");
    assert_eq!((s.handshakes, s.ended(Reason::BadMac)), (0, 1), "{s:?}");
}

/// Without secrets: b dials "node 99" at a's address and refuses a (it is
/// node 1). a must not count a handshake nor report b ready: b never
/// accepted it, and frames a sends in the meantime are lost.
#[test]
fn a_refused_acceptor_never_sees_the_dialer_ready() {
    let (a, ea) = open(1, &[]);
    let (b, _eb) = open(2, &[]);
    let e = b.connect(99, &a.addr().to_string()).unwrap_err();
    assert_eq!(e.status, KEEL_STATUS_REFUSED, "{e}");
    let s = wait_for(&a, &ea, "a's side to end", |s| s.ended.iter().sum::<u64>() == 1);
    assert_eq!((s.handshakes, s.ended(Reason::WrongNode)), (0, 1), "a counted a handshake b refused: {s:?}");
}

/// An AUTH whose payload is not a MAC's 32 bytes is a malformed handshake
/// frame (docs: "a handshake frame out of order or malformed" is PROTOCOL,
/// counted in malformed_frames), not a MAC that matches no secret.
#[test]
fn an_auth_of_the_wrong_length_is_malformed_not_a_bad_mac() {
    let (a, ea) = open(1, &[OLD]);
    for (i, len) in [0usize, 31, 45].into_iter().enumerate() {
        let mut r = Raw::connect(&a);
        r.send(types::HELLO, &Raw::hello(7, true).encode());
        assert_eq!(r.read_frame().0, types::HELLO);
        assert_eq!(r.read_frame().0, types::AUTH);
        r.send(types::AUTH, &vec![0xA5; len]);
        r.until_closed();
        let s = wait_for(&a, &ea, "the end", |s| s.ended.iter().sum::<u64>() == i as u64 + 1);
        assert_eq!((s.ended(Reason::Malformed), s.ended(Reason::BadMac)), (i as u64 + 1, 0), "AUTH of {len} bytes: {s:?}");
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// keel_node_connect on a peer that is already connected (the C API has no
/// other way to make sure a peer is connected) opens one more connection
/// each time; the one it replaces in the peer table is never closed: it
/// keeps two threads, four descriptors and its heartbeats until the node
/// closes. Repeated, that grows without bound.
#[test]
fn connecting_to_a_connected_peer_does_not_pile_up_connections() {
    let (a, ea) = open(1, &[]);
    let (b, _eb) = open(2, &[]);
    b.connect(1, &a.addr().to_string()).unwrap();
    wait_for(&a, &ea, "a's side", |s| s.peers == 1);
    let fds = open_fds();
    for _ in 0..20 {
        b.connect(1, &a.addr().to_string()).unwrap();
    }
    let s = b.stats();
    assert_eq!(s.peers, 1, "20 more connections to the one peer 1 stay open ({} fds more): {s:?}", open_fds() as i64 - fds as i64);
}

/// Accepted connections still in their handshake are bounded: past
/// `max_handshakes` a new one is refused at once (told why with REFUSE)
/// and counted; once one of them ends, a connection is accepted again.
#[test]
fn connections_in_their_handshake_are_bounded() {
    let (o, ev) = options(1, &[]);
    // The strangers never time out: only the test decides who leaves.
    let n = Node::open(NodeOptions { max_handshakes: 2, handshake_timeout: Duration::from_secs(3600), ..o }).unwrap();
    // Two strangers that connect and say nothing.
    let mut silent: Vec<Raw> = (0..2).map(|_| Raw::connect(&n)).collect();
    wait_for(&n, &ev, "two accepted", |s| s.accepted == 2);
    let mut third = Raw::connect(&n);
    let (ty, p) = third.read_frame();
    assert_eq!((ty, p), (types::REFUSE, vec![Reason::HandshakeLimit.code()]));
    third.until_closed();
    let s = wait_for(&n, &ev, "the refusal", |s| s.ended(Reason::HandshakeLimit) == 1);
    assert_eq!(s.accepted, 3, "{s:?}");
    // One stranger leaves (unread, the node's HELLO makes its close a
    // reset): its place is free again.
    drop(silent.remove(0));
    wait_for(&n, &ev, "the stranger's end", |s| s.ended.iter().sum::<u64>() == 2);
    Raw::ready(&n, 7);
    let s = wait_for(&n, &ev, "the handshake", |s| s.handshakes == 1);
    assert_eq!(s.ended(Reason::HandshakeLimit), 1, "{s:?}");
    let bad = NodeOptions { node_id: 1, max_handshakes: 0, ..NodeOptions::default() };
    assert_eq!(Node::open(bad).err().map(|e| e.status), Some(KEEL_STATUS_INVALID_ARGUMENT));
}

/// A peer that trickles a frame (a byte every 10 ms, well within the
/// silence limit of 20 × 50 ms) is heard from all the time, but the frame
/// never completes and its read buffer stays allocated. A frame that has
/// begun must be whole within the silence limit of its first byte; the
/// trickle runs for at least ten of them unless the node drops it.
#[test]
fn a_peer_that_trickles_a_frame_is_dropped_at_the_frame_deadline() {
    let (a, ea) = open(1, &[]);
    let mut r = Raw::ready(&a, 7);
    let f = frame::encode(TRANSFER, &[3u8; 60 << 10]);
    r.s.write_all(&f[..HEADER_LEN + 1]).unwrap();
    for (i, b) in f[HEADER_LEN + 1..].iter().enumerate() {
        if a.stats().ended(Reason::HeartbeatTimeout) >= 1 || r.s.write_all(&[*b]).is_err() {
            break;
        }
        assert!(i < 1000, "a frame trickled for 10 s is still being read: {:?}", a.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = wait_ended(&a, &ea, Reason::HeartbeatTimeout);
    assert!(s.last_error.contains("frame begun"), "{s:?}");
}

/// A node whose raw peers need not answer PINGs: its heartbeats never
/// come due in a test.
fn open_quiet(id: u64) -> (Node, Events) {
    let (o, rx) = options(id, &[]);
    (Node::open(NodeOptions { heartbeat_interval: Duration::from_secs(600), ..o }).unwrap(), rx)
}

/// A raw peer dialed by the node (the test listens as node `id`).
fn dialed(listener: &std::net::TcpListener, id: u64) -> Raw {
    let (s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let mut r = Raw { s, buf: Vec::new() };
    r.send(types::HELLO, &Raw::hello(id, false).encode());
    r.send(types::READY, b"");
    assert_eq!(r.read_frame().0, types::HELLO);
    assert_eq!(r.read_frame().0, types::READY);
    r
}

impl Raw {
    /// The next frame of a service, past the node's PINGs.
    fn next_service_frame(&mut self) -> (u16, Vec<u8>) {
        loop {
            match self.read_frame() {
                (types::PING, _) => {}
                other => return other,
            }
        }
    }
}

/// Two dials crossing (each node dials the other before either
/// connection is ready) leave two ready connections to one peer. Both
/// sides keep the one the lower node id dialed and close the other, so
/// they agree without a word: node 1 keeps its own, node 3 the peer's.
#[test]
fn crossing_dials_settle_on_the_connection_the_lower_id_dialed() {
    for me in [1u64, 3] {
        let (a, ea) = open_quiet(me);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap().to_string();
        let dialing = std::thread::scope(|sc| {
            let a = &a;
            let dial = sc.spawn(move || a.connect(2, &to));
            let outbound = dialed(&listener, 2);
            dial.join().unwrap().unwrap();
            let inbound = Raw::ready(a, 2);
            (outbound, inbound)
        });
        let (mut keep, mut lose) = if me < 2 { dialing } else { (dialing.1, dialing.0) };
        // The node half-closes the one it drops and reads until the peer
        // closes it too.
        lose.until_closed();
        drop(lose);
        let s = wait_for(&a, &ea, "the second connection closed", |s| s.handshakes == 2 && s.ended(Reason::Replaced) == 1);
        assert_eq!((s.peers, a.peers()), (1, vec![2]), "{s:?}");
        a.send(2, TRANSFER, b"on the kept one").unwrap();
        assert_eq!(keep.next_service_frame(), (TRANSFER, b"on the kept one".to_vec()), "node {me}");
        drop(keep);
        wait_for(&a, &ea, "the kept one's end", |s| s.peers == 0);
    }
}

/// A peer that connects again while its old connection still looks alive
/// here (it restarted; the old one has not missed its heartbeats yet):
/// the new connection replaces the old one, which is closed and counted,
/// and frames to the peer take the new one.
#[test]
fn a_peer_that_connects_again_replaces_its_old_connection() {
    let (a, ea) = open_quiet(1);
    let (b, eb) = open_quiet(2);
    b.connect(1, &a.addr().to_string()).unwrap();
    wait_for(&a, &ea, "b ready", |s| s.peers == 1);
    let mut again = Raw::ready(&a, 2);
    let s = wait_for(&a, &ea, "the old connection closed", |s| s.handshakes == 2 && s.ended(Reason::Replaced) == 1);
    assert_eq!((s.peers, a.peers()), (1, vec![2]), "{s:?}");
    wait_for(&b, &eb, "b's side closed", |s| s.peers == 0);
    a.send(2, TRANSFER, b"on the new one").unwrap();
    assert_eq!(again.next_service_frame(), (TRANSFER, b"on the new one".to_vec()));
}

/// `close` joins the node's threads, so a callback running on one of them
/// (here the event of a peer ready, on its connection's reader) cannot
/// close its own node. It waited out close_timeout for its own connection
/// and then panicked joining its own thread, leaving the node half closed
/// (a close from the host then answered BUSY and joined nothing). It
/// answers BUSY now and changes nothing: the host closes the node.
#[test]
fn close_from_the_nodes_own_callback_is_busy() {
    use std::sync::{OnceLock, Weak};
    let me: Arc<OnceLock<Weak<Node>>> = Arc::default();
    let (tx, rx) = unbounded();
    let (mut o, _events) = options(1, &[]);
    let m = me.clone();
    o.on_event = Some(Arc::new(move |_, status, _: &str| {
        if let Some(node) = m.get().and_then(Weak::upgrade).filter(|_| status == KEEL_STATUS_OK) {
            let closed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.close().map(drop).map_err(|e| e.status)));
            let _ = tx.send(closed.map_err(|_| "close panicked"));
        }
    }));
    let a = Arc::new(Node::open(o).unwrap());
    me.set(Arc::downgrade(&a)).unwrap();
    let (b, _) = open(2, &[]);
    b.connect(1, &a.addr().to_string()).unwrap();
    let closed = rx.recv_timeout(HANG_GUARD).expect("hang guard: the peer-ready event never ran");
    assert_eq!(closed, Ok(Err(KEEL_STATUS_BUSY)));
    assert!(!a.is_closing(), "a close that answered BUSY closed nothing");
    let s = a.close().expect("the host's close");
    assert_eq!(s.peers, 0, "{s:?}");
    b.close().unwrap();
}

/// A callback may hold the node (a strong handle it upgraded) when the
/// host lets its own go: the last handle then drops on the node's own
/// thread, whose shutdown joined that thread and panicked ("failed to
/// join thread"), leaving the other threads unjoined. The shutdown now
/// leaves the thread it runs on, which ends once its callback returns.
#[test]
fn the_last_handle_dropped_in_a_callback_shuts_the_node_down() {
    use std::sync::{OnceLock, Weak};
    let me: Arc<OnceLock<Weak<Node>>> = Arc::default();
    let (held_tx, held) = crossbeam_channel::bounded::<()>(1);
    let (let_go, let_go_rx) = crossbeam_channel::bounded::<()>(1);
    let (tx, rx) = unbounded();
    let (mut o, _events) = options(1, &[]);
    let m = me.clone();
    o.on_event = Some(Arc::new(move |_, status, _: &str| {
        if let Some(node) = m.get().and_then(Weak::upgrade).filter(|_| status == KEEL_STATUS_OK) {
            let _ = held_tx.send(());
            let _ = let_go_rx.recv();
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(node))).is_ok());
        }
    }));
    let a = Arc::new(Node::open(o).unwrap());
    me.set(Arc::downgrade(&a)).unwrap();
    let (b, b_events) = open(2, &[]);
    b.connect(1, &a.addr().to_string()).unwrap();
    held.recv_timeout(HANG_GUARD).expect("hang guard: the peer-ready event never ran");
    drop(a);
    let_go.send(()).unwrap();
    assert_eq!(rx.recv_timeout(HANG_GUARD), Ok(true), "the drop in the callback panicked");
    assert!(me.get().unwrap().upgrade().is_none(), "the node is gone");
    wait_for(&b, &b_events, "node 1 closing its connection", |s| s.peers == 0);
    b.close().unwrap();
}

/// A dial racing the node's close: its connection passed the open check
/// and got its writer, then the close ran to its end before the
/// connection entered the registry (the start hook holds it there). It
/// was registered all the same: its reader thread, neither ended nor
/// joined by the close, ran after `close` returned, moving the counters
/// `close` had returned as final (and calling the event callback). It
/// now ends with CLOSED before it runs.
#[test]
fn a_dial_racing_close_ends_closed_and_runs_nothing_after_it() {
    let (a, _a_events) = open(1, &[]);
    let (b, _b_events) = open(2, &[]);
    let (entered_tx, entered) = crossbeam_channel::bounded::<()>(1);
    let (go, go_rx) = crossbeam_channel::bounded::<()>(1);
    a.set_start_hook(Arc::new(move || {
        let _ = entered_tx.send(());
        let _ = go_rx.recv();
    }));
    let a = Arc::new(a);
    let (dialing, to) = (a.clone(), b.addr().to_string());
    let dialer = std::thread::spawn(move || dialing.connect(2, &to));
    entered.recv_timeout(HANG_GUARD).expect("hang guard: the dial never started its connection");
    let last = a.close().unwrap();
    go.send(()).unwrap();
    let dialed = dialer.join().unwrap();
    assert_eq!(dialed.as_ref().err().map(|e| e.status), Some(KEEL_STATUS_CLOSED), "{dialed:?}");
    assert_eq!(a.stats(), last, "the connection ran after close returned its final counters");
    b.close().unwrap();
}

/// The event of a ready connection's end ran while the connection was
/// still in the peer table (its reader took it out only afterwards): a
/// host reconnecting from that event, as hosts do, found the peer ready
/// (`is_ready`, `peers`, and `reconnect`/`connect` answered OK without
/// dialing), and a new connection of the peer finishing its handshake
/// meanwhile could be closed in favour of the dead one. The `peers`
/// counter had already dropped. The ended connection is out of the peer
/// table before its event runs now.
#[test]
fn a_connection_that_ended_is_not_ready_in_its_end_event() {
    use std::sync::{OnceLock, Weak};
    let me: Arc<OnceLock<Weak<Node>>> = Arc::default();
    let (tx, rx) = unbounded();
    let (mut o, _events) = options(1, &[]);
    let m = me.clone();
    o.on_event = Some(Arc::new(move |peer, status, _: &str| {
        if let Some(node) = m.get().and_then(Weak::upgrade).filter(|_| status != KEEL_STATUS_OK) {
            let seen = (peer, node.is_ready(7), node.peers(), node.stats().peers, node.reconnect(7).map_err(|e| e.status));
            let _ = tx.send(seen);
        }
    }));
    let a = Arc::new(Node::open(o).unwrap());
    me.set(Arc::downgrade(&a)).unwrap();
    let mut r = Raw::ready(&a, 7);
    r.s.shutdown(std::net::Shutdown::Write).unwrap();
    r.until_closed();
    let seen = rx.recv_timeout(HANG_GUARD).expect("hang guard: the end event never ran");
    // This node never dialed 7: with no connection, reconnect is NOT_FOUND.
    assert_eq!(seen, (7, false, vec![], 0, Err(KEEL_STATUS_NOT_FOUND)), "(peer, is_ready, peers, stats.peers, reconnect)");
}

/// A peer address whose SYNs go unanswered, as a host that is down or a
/// firewall that drops them: a listening socket with a backlog of 0 whose
/// one queued connection is never accepted (the kernel drops further
/// SYNs while the accept queue is full). Kept open while the values live.
fn unanswered_address() -> (std::os::fd::OwnedFd, TcpStream, String) {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) returns a new descriptor or -1 (checked), which
    // the OwnedFd then owns alone.
    let fd = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        std::os::fd::OwnedFd::from_raw_fd(fd)
    };
    // SAFETY: a zeroed sockaddr_in is a valid value of it.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let p = &mut sa as *mut libc::sockaddr_in as *mut libc::sockaddr;
    // SAFETY: the fd is open; `p` points to a sockaddr_in of `len` bytes
    // that outlives the calls.
    unsafe {
        assert_eq!(libc::bind(fd.as_raw_fd(), p, len), 0, "bind: {}", std::io::Error::last_os_error());
        assert_eq!(libc::listen(fd.as_raw_fd(), 0), 0, "listen: {}", std::io::Error::last_os_error());
        assert_eq!(libc::getsockname(fd.as_raw_fd(), p, &mut len), 0);
    }
    let addr = format!("127.0.0.1:{}", u16::from_be(sa.sin_port));
    let queued = TcpStream::connect(&addr).unwrap();
    (fd, queued, addr)
}

/// handshake_timeout is also the TCP connect's timeout (docs/TRANSFER.md,
/// Limits): a peer that never answers the connect makes `connect` fail
/// with TIMEOUT, the status of a deadline that passed, as a peer that
/// never finishes the handshake does. It failed with IO, the status of a
/// socket that broke, so a host could not tell an unreachable peer from
/// a local failure.
#[test]
fn a_connect_nobody_answers_times_out() {
    let (_listener, _queued, addr) = unanswered_address();
    let (o, _events) = options(2, &[]);
    let b = Node::open(NodeOptions { handshake_timeout: Duration::from_millis(100), ..o }).unwrap();
    let e = b.connect(1, &addr).unwrap_err();
    assert_eq!(e.status, KEEL_STATUS_TIMEOUT, "{e}");
    assert!(e.message.contains(&addr), "{e}");
}

/// conn_memory_bytes may be as small as twice a full frame: one for the
/// read buffer, one for the outbound queue. But the writer's cap counts
/// each queued piece's bookkeeping besides its bytes, so a frame of
/// max_frame_bytes sent on an idle connection, its queue empty, passed
/// the cap by those few bytes and cut the connection off (BUSY,
/// outbound_overflows): the largest frame `send` accepts could never be
/// sent. Both sends (one piece, and a head with a shared body) pass now.
#[test]
fn a_full_frame_fits_the_smallest_connection_memory() {
    let (o, ea) = options(1, &[]);
    let max = o.max_frame_bytes as usize;
    let o = NodeOptions {
        conn_memory_bytes: 2 * (HEADER_LEN + max) as u64,
        heartbeat_interval: Duration::from_secs(600),
        ..o
    };
    let a = Node::open(o).unwrap();
    let mut r = Raw::ready(&a, 7);
    wait_for(&a, &ea, "the handshake", |s| s.peers == 1);
    a.send(7, TRANSFER, &vec![1; max]).expect("a full frame on an idle connection");
    assert_eq!(r.read_frame(), (TRANSFER, vec![1; max]));
    let body = frame::Body::new(&vec![2; max - 10]);
    a.send_body(7, TRANSFER, &[3; 10], &body).expect("a full frame made of a head and a body");
    let (ty, p) = r.read_frame();
    assert_eq!((ty, &p[..10], &p[10..]), (TRANSFER, &[3; 10][..], &vec![2; max - 10][..]));
    let s = a.stats();
    assert_eq!((s.peers, s.ended(Reason::OutboundOverflow)), (1, 0), "{s:?}");
}
