//! One connection to a peer: the reader thread runs the handshake, reads
//! and checks frames, answers and sends heartbeats, and hands service
//! frames to their handler; frames go out through the connection's
//! batched writer. Whoever ends the connection first (the reader, the
//! writer's reactor, or the node closing) names the reason; the reader
//! thread then releases everything and counts it once.

use crate::error::{Error, Result};
use crate::net::Writer;
use crate::node::frame::{self, FrameError, HEADER_LEN};
use crate::node::handshake::{self, Hello, Role, Transcript, HELLO_LEN, MAC_LEN, PROTOCOL_MAX, PROTOCOL_MIN};
use crate::node::node::Inner;
use crate::node::stats::{add, Reason};
use crate::node::{types, Service};
use crate::status::*;
use parking_lot::{Condvar, Mutex, RwLock};
use std::io::{ErrorKind, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a connection is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Handshake,
    Ready,
    Ended(Reason, String),
}

pub(crate) struct Conn {
    pub seq: u64,
    pub role: Role,
    pub remote: SocketAddr,
    /// The node id a dialer asked for.
    pub expect: Option<u64>,
    /// The reading end (a dup of the writer's socket).
    pub stream: TcpStream,
    pub writer: RwLock<Option<Writer>>,
    /// The peer's node id once its HELLO was accepted, else 0.
    pub peer_id: AtomicU64,
    /// The first reason given to end the connection.
    end: Mutex<Option<(Reason, String)>>,
    pub state: Mutex<State>,
    pub cv: Condvar,
}

type Ended = (Reason, String);

fn fail<T>(r: Reason, msg: impl Into<String>) -> std::result::Result<T, Ended> {
    Err((r, msg.into()))
}

/// What the reader knows about the handshake so far.
enum Stage {
    AwaitHello,
    AwaitAuth { peer: Hello, version: u16 },
    /// This side accepted the peer and sent READY; the peer's READY (or
    /// REFUSE) comes next.
    AwaitReady,
    Ready,
}

impl Stage {
    /// The largest payload a frame may announce in this stage. Before the
    /// handshake is done only HELLO and AUTH may come, so a header that
    /// announces more ends the connection at once instead of growing the
    /// read buffer to it (a frame's worth of memory for each 12 bytes an
    /// unauthenticated peer sends).
    fn max_payload(&self, ready: u32) -> u32 {
        match self {
            Stage::Ready => ready,
            Stage::AwaitHello | Stage::AwaitAuth { .. } | Stage::AwaitReady => HELLO_LEN.max(MAC_LEN) as u32,
        }
    }
}

/// The slowest a frame may arrive once its first `silence_limit` is over:
/// 64 KiB a second. A link that slow still carries a 16 MiB frame (in
/// about four minutes); a peer sending a byte now and then does not hold
/// a frame open for long.
const FRAME_MIN_RATE: u64 = 64 << 10;

/// How long after its first byte a frame of which `received` bytes are in
/// may still be incomplete: the silence limit, plus a second for every
/// `FRAME_MIN_RATE` bytes that came (Apache's `mod_reqtimeout` MinRate
/// rule): slow links pass, a trickle does not.
fn frame_allowance(silence_limit: Duration, received: usize) -> Duration {
    silence_limit.saturating_add(Duration::from_millis((received as u64).saturating_mul(1000) / FRAME_MIN_RATE))
}

impl Conn {
    pub fn new(
        seq: u64,
        role: Role,
        remote: SocketAddr,
        expect: Option<u64>,
        stream: TcpStream,
        writer: Writer,
    ) -> Conn {
        Conn {
            seq,
            role,
            remote,
            expect,
            stream,
            writer: RwLock::new(Some(writer)),
            peer_id: AtomicU64::new(0),
            end: Mutex::new(None),
            state: Mutex::new(State::Handshake),
            cv: Condvar::new(),
        }
    }

    /// Why the connection ends, when the node is closing or the
    /// connection was replaced: its writer sends what is queued and
    /// half-closes, and the reader drains.
    fn draining(&self) -> Option<Ended> {
        self.end.lock().clone().filter(|(r, _)| matches!(r, Reason::Shutdown | Reason::Replaced))
    }

    /// Closes a second ready connection to a peer the way the node's close
    /// does (docs/TRANSFER.md, "One connection per peer"): what is queued
    /// is still sent, READY among it, so that the peer finishes the
    /// handshake and makes the same choice instead of seeing a reset.
    pub fn replace(&self, msg: String) {
        self.end_reason_only(Reason::Replaced, &msg);
        if let Some(w) = &*self.writer.read() {
            w.shut();
        }
    }

    /// Why the connection ends when the socket broke under the reader:
    /// the reason given first, else why the writer's reactor closed it
    /// (the peer stopped reading, or a send failed).
    fn ended_elsewhere(&self) -> Option<Ended> {
        if let Some(e) = self.end.lock().clone() {
            return Some(e);
        }
        let death = self.writer.read().as_ref().and_then(|w| w.death())?;
        let r = if death.status == KEEL_STATUS_BUSY { Reason::OutboundOverflow } else { Reason::Reset };
        Some((r, self.say(death.message)))
    }

    /// Asks the connection to end (first reason wins) and wakes its reader.
    pub fn end(&self, r: Reason, msg: impl Into<String>) {
        self.end.lock().get_or_insert((r, msg.into()));
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Names the reason the connection will end with, leaving the socket
    /// open (the node's shutdown lets the writers drain first).
    pub fn end_reason_only(&self, r: Reason, msg: &str) {
        self.end.lock().get_or_insert((r, msg.to_string()));
    }

    /// Waits until the reader thread ended the connection, or `deadline`.
    pub fn wait_ended(&self, deadline: Instant) {
        let mut st = self.state.lock();
        while !matches!(*st, State::Ended(..)) {
            if self.cv.wait_until(&mut st, deadline).timed_out() {
                return;
            }
        }
    }

    /// Queues one frame on the batched writer.
    pub fn send(&self, node: &Inner, ty: u16, payload: &[u8]) -> Result<()> {
        self.queue(node, &frame::encode(ty, payload), None)
    }

    /// Queues one frame whose payload is `head` then `body`; the body's
    /// bytes are referenced, not copied.
    pub fn send_body(&self, node: &Inner, ty: u16, head: &[u8], body: &frame::Body) -> Result<()> {
        self.queue(node, &frame::encode_head(ty, head, body), Some(body))
    }

    fn queue(&self, node: &Inner, start: &[u8], body: Option<&frame::Body>) -> Result<()> {
        let w = self.writer.read();
        let w = w
            .as_ref()
            .ok_or_else(|| Error::new(KEEL_STATUS_CLOSED, format!("connection to {} is closed", self.remote)))?;
        match body {
            Some(b) => w.send_parts(start, b.bytes.clone(), false)?,
            None => w.send(start, false)?,
        }
        add(&node.counters.frames_out, 1);
        add(&node.counters.bytes_out, (start.len() + body.map_or(0, frame::Body::len)) as u64);
        Ok(())
    }

    /// Blocks until the handshake finished (Ok) or the connection ended.
    pub fn wait_ready(&self) -> Result<()> {
        let mut st = self.state.lock();
        loop {
            match &*st {
                State::Handshake => self.cv.wait(&mut st),
                State::Ready => return Ok(()),
                // Ready, then closed as the second connection to a peer
                // that has one: the peer is reachable through that one.
                State::Ended(Reason::Replaced, _) => return Ok(()),
                State::Ended(r, msg) => return Err(Error::new(r.status(), msg.clone())),
            }
        }
    }

    /// The reader thread: serves the connection until it ends, then
    /// releases it.
    pub fn run(self: Arc<Conn>, node: Arc<Inner>) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve(&node)));
        let (r, msg) = match outcome {
            Ok(Err(e)) => e,
            Ok(Ok(never)) => match never {},
            Err(_) => (Reason::Reset, format!("connection {}: the reader thread panicked", self.remote)),
        };
        self.finish(&node, r, msg);
    }

    fn finish(&self, node: &Inner, r: Reason, msg: String) {
        let (r, msg) = self.end.lock().get_or_insert((r, msg)).clone();
        // Out of the peer table before anything tells that it ended (the
        // state `Node::connect` waits on, the event, the services' notice):
        // a host reconnecting from the event must find the peer without
        // it, and so must a new connection of the peer getting ready.
        node.unregister(self);
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(w) = self.writer.write().take() {
            let s = w.stats();
            add(&node.counters.cancelled_frames, s.items - s.items_sent);
            drop(w);
        }
        // Counted before the state changes, so that whoever waits on the
        // state (Node::connect) sees the counters already updated.
        let mut st = self.state.lock();
        if *st == State::Handshake && self.role == Role::Acceptor {
            node.handshake_over();
        }
        let was_ready = *st == State::Ready;
        node.counters.ended(r, &msg, was_ready);
        *st = State::Ended(r, msg.clone());
        self.cv.notify_all();
        drop(st);
        // A replaced connection's peer is still connected through the
        // other one: an event or a gone notice would say it left.
        let peer = self.peer_id.load(Ordering::Acquire);
        if r != Reason::Replaced {
            node.event(peer, r.status(), &msg);
        }
        node.forget(self);
        if was_ready && r != Reason::Replaced {
            node.peer_gone(peer);
        }
    }

    fn serve(&self, node: &Inner) -> std::result::Result<std::convert::Infallible, Ended> {
        let o = &node.opts;
        let me = Hello {
            min_version: PROTOCOL_MIN,
            max_version: PROTOCOL_MAX,
            node_id: o.node_id,
            nonce: handshake::nonce().map_err(|e| (Reason::Reset, format!("getrandom: {e}")))?,
            has_secret: !o.secrets.is_empty(),
        };
        let tick = o.heartbeat_interval.min(o.handshake_timeout);
        self.stream
            .set_read_timeout(Some(tick))
            .map_err(|e| (Reason::Reset, format!("{}: set read timeout: {e}", self.remote)))?;
        self.send_or_end(node, types::HELLO, &me.encode())?;
        let limit = o.read_limit();
        // Input lies in buf[..filled]. The buffer keeps its length (and
        // its zeroed bytes) from frame to frame, so a read never clears
        // room again: it grows only for a bigger frame, up to `limit`.
        let mut buf: Vec<u8> = Vec::new();
        let mut filled = 0;
        let mut stage = Stage::AwaitHello;
        let started = Instant::now();
        let mut heard = started;
        // When the last read returned, and when the first byte of the
        // frame partly in the buffer arrived (None while it holds none).
        let mut looked = started;
        let mut begun: Option<Instant> = None;
        let mut pinged = started;
        let silent_limit = o.silence_limit();
        // The last read timed out without a byte.
        let mut idle = false;
        let mut drain_began: Option<Instant> = None;
        loop {
            let drain = self.draining();
            let closing = drain.is_some();
            if closing {
                // The writer sends what was queued and half-closes (the
                // node's shutdown, or `replace`); the peer's EOF ends it.
                // Input is read and dropped until then: input left unread
                // when the socket is shut down for reading or closed makes
                // the kernel answer with a RST, which throws away what is
                // still on its way to the peer. (The writer's close may
                // have read part of it too, so it is not decoded.)
                filled = 0;
            }
            if !closing {
                loop {
                    let f = match frame::decode(&buf[..filled], stage.max_payload(o.max_frame_bytes)) {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e @ FrameError::Oversized { .. }) => return fail(Reason::Oversized, self.say(e)),
                        Err(e) => return fail(Reason::Malformed, self.say(e)),
                    };
                    add(&node.counters.frames_in, 1);
                    if let Err((r, msg)) = self.on_frame(node, &me, &mut stage, f.ty, &buf[HEADER_LEN..f.len]) {
                        // Tell the peer it is refused (and why), unless it
                        // is the peer that refused this node.
                        if r.is_refusal() && f.ty != types::REFUSE {
                            let _ = self.send(node, types::REFUSE, &[r.code()]);
                        }
                        return Err((r, msg));
                    }
                    buf.copy_within(f.len..filled, 0);
                    filled -= f.len;
                    // What is left came with the last read.
                    begun = (filled > 0).then_some(heard);
                }
            }
            let now = Instant::now();
            if let Some(end) = drain {
                // No heartbeats while draining; a peer that does not close
                // its side is given close_timeout (the node's shutdown
                // ends its connections by then too).
                if now.duration_since(*drain_began.get_or_insert(now)) >= o.close_timeout {
                    return Err(end);
                }
            } else if matches!(stage, Stage::Ready) {
                // A frame must keep coming (`frame_allowance`): a peer
                // trickling one (a byte now and then) is heard from all
                // along, and would hold its read buffer, up to a frame's
                // worth, for as long as it liked. Judged by when the last
                // read returned: that read asked for the rest of the frame
                // and did not get it.
                if let Some(b) = begun.filter(|b| looked.duration_since(*b) >= frame_allowance(silent_limit, filled)) {
                    return fail(
                        Reason::HeartbeatTimeout,
                        self.say(format!(
                            "frame begun {} ms ago is not complete ({filled} bytes of it in)",
                            looked.duration_since(b).as_millis()
                        )),
                    );
                }
                // Judged only after a read found nothing: a reader that was
                // not scheduled for a while must look at its socket first.
                if idle && now.duration_since(heard) >= silent_limit {
                    return fail(
                        Reason::HeartbeatTimeout,
                        self.say(format!("nothing heard for {} ms", now.duration_since(heard).as_millis())),
                    );
                }
                if now.duration_since(pinged) >= o.heartbeat_interval {
                    self.send_or_end(node, types::PING, &[])?;
                    add(&node.counters.pings_sent, 1);
                    pinged = now;
                }
            } else if now.duration_since(started) >= o.handshake_timeout {
                return fail(
                    Reason::HandshakeTimeout,
                    self.say(format!("handshake not finished within {} ms", o.handshake_timeout.as_millis())),
                );
            }
            // The buffer never holds more than one frame and its header:
            // a complete frame is decoded above before reading on. A read
            // asks for the rest of the frame whose header is in, at least
            // 64 KiB once the peer is ready (the next frames' start may
            // come with it); before, one handshake frame at most, so a
            // stranger makes the node hold no more than that.
            let least = match stage {
                Stage::Ready => 64 << 10,
                _ => HEADER_LEN + stage.max_payload(o.max_frame_bytes) as usize,
            };
            let want = frame::total_len(&buf[..filled]).map_or(0, |t| t.saturating_sub(filled)).max(least);
            let end = (filled + want).min(limit);
            if buf.len() < end {
                buf.resize(end, 0);
            }
            idle = false;
            let old = filled;
            let read = (&self.stream).read(&mut buf[old..end]);
            looked = Instant::now();
            match read {
                Ok(0) => {
                    if let Some(e) = self.ended_elsewhere() {
                        return Err(e);
                    }
                    if old == 0 {
                        return fail(Reason::ClosedByPeer, self.say("closed by the peer"));
                    }
                    return fail(
                        Reason::Reset,
                        self.say(format!("end of stream inside a frame ({old} bytes of it read)")),
                    );
                }
                Ok(n) => {
                    filled += n;
                    heard = looked;
                    begun.get_or_insert(looked);
                    add(&node.counters.bytes_in, n as u64);
                }
                Err(e) => {
                    idle = matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
                    if !idle && e.kind() != ErrorKind::Interrupted {
                        if let Some(e) = self.ended_elsewhere() {
                            return Err(e);
                        }
                        return fail(Reason::Reset, self.say(format!("read failed: {e}")));
                    }
                }
            }
        }
    }

    /// An error text naming the connection.
    fn say(&self, what: impl std::fmt::Display) -> String {
        let peer = self.peer_id.load(Ordering::Acquire);
        if peer == 0 {
            format!("node connection from {}: {what}", self.remote)
        } else {
            format!("node connection to peer {peer} ({}): {what}", self.remote)
        }
    }

    fn send_or_end(&self, node: &Inner, ty: u16, payload: &[u8]) -> std::result::Result<(), Ended> {
        match self.send(node, ty, payload) {
            Ok(()) => Ok(()),
            // While the node closes, a frame the writer no longer takes is
            // dropped and the reader keeps reading until the drain is done.
            Err(_) if self.draining().is_some() => Ok(()),
            Err(e) => Err(self.ended_elsewhere().unwrap_or_else(|| (Reason::Reset, self.say(e)))),
        }
    }

    fn on_frame(
        &self,
        node: &Inner,
        me: &Hello,
        stage: &mut Stage,
        ty: u16,
        p: &[u8],
    ) -> std::result::Result<(), Ended> {
        let secrets = &node.opts.secrets;
        match (&*stage, ty) {
            (Stage::AwaitHello, types::HELLO) => {
                let peer = Hello::decode(p).map_err(|e| (Reason::Malformed, self.say(e)))?;
                if peer.node_id == me.node_id || self.expect.is_some_and(|id| id != peer.node_id) {
                    let want = self.expect.map_or("another id".to_string(), |id| format!("node {id}"));
                    return fail(
                        Reason::WrongNode,
                        self.say(format!("peer says it is node {}, expected {want}", peer.node_id)),
                    );
                }
                if !node.replay.lock().first_time(&peer.nonce) {
                    return fail(Reason::Replay, self.say("HELLO repeats a nonce already seen: a replayed handshake"));
                }
                let version = handshake::negotiate(&peer).ok_or_else(|| {
                    let msg = format!(
                        "no common protocol version (peer speaks {}..={}, this node {PROTOCOL_MIN}..={PROTOCOL_MAX})",
                        peer.min_version, peer.max_version
                    );
                    (Reason::Version, self.say(msg))
                })?;
                if peer.has_secret != me.has_secret {
                    let msg = if me.has_secret {
                        "the peer has no cluster secret"
                    } else {
                        "the peer wants a cluster secret this node does not have"
                    };
                    return fail(Reason::BadMac, self.say(msg));
                }
                self.peer_id.store(peer.node_id, Ordering::Release);
                if !me.has_secret {
                    self.send_or_end(node, types::READY, &[])?;
                    *stage = Stage::AwaitReady;
                    return Ok(());
                }
                let mine = Transcript { sender_role: self.role, version, sender: me, receiver: &peer };
                self.send_or_end(node, types::AUTH, &mine.sign(&secrets[0]))?;
                *stage = Stage::AwaitAuth { peer, version };
                Ok(())
            }
            (Stage::AwaitAuth { peer, version }, types::AUTH) => {
                let other = match self.role {
                    Role::Dialer => Role::Acceptor,
                    Role::Acceptor => Role::Dialer,
                };
                if p.len() != MAC_LEN {
                    return fail(
                        Reason::Malformed,
                        self.say(format!("AUTH payload is {} bytes, expected {MAC_LEN}", p.len())),
                    );
                }
                let theirs = Transcript { sender_role: other, version: *version, sender: peer, receiver: me };
                if !theirs.verify(secrets, p) {
                    return fail(Reason::BadMac, self.say("AUTH MAC matches no active secret"));
                }
                self.send_or_end(node, types::READY, &[])?;
                *stage = Stage::AwaitReady;
                Ok(())
            }
            (Stage::AwaitReady, types::READY) if p.is_empty() => {
                *stage = Stage::Ready;
                self.ready(node)
            }
            (Stage::AwaitHello | Stage::AwaitAuth { .. } | Stage::AwaitReady, types::REFUSE) => {
                match <[u8; 1]>::try_from(p).ok().and_then(|[c]| Reason::refusal(c)) {
                    Some(r) => fail(r, self.say(format!("the peer refused this node ({r:?})"))),
                    None => fail(Reason::Malformed, self.say(format!("REFUSE payload {p:02x?} names no refusal"))),
                }
            }
            (Stage::AwaitHello | Stage::AwaitAuth { .. } | Stage::AwaitReady, _) => {
                fail(Reason::Malformed, self.say(format!("frame type {ty:#06x} arrived before the handshake finished")))
            }
            (Stage::Ready, types::PING) if p.is_empty() => self.send_or_end(node, types::PONG, &[]),
            (Stage::Ready, types::PONG) if p.is_empty() => {
                add(&node.counters.pongs_received, 1);
                Ok(())
            }
            (Stage::Ready, types::HELLO | types::AUTH | types::PING | types::PONG | types::READY | types::REFUSE) => fail(
                Reason::Malformed,
                self.say(format!("unexpected frame type {ty:#06x} with {} payload bytes", p.len())),
            ),
            (Stage::Ready, _) => match Service::of(ty).and_then(|s| node.handler(s)) {
                Some(h) => {
                    h(self.peer_id.load(Ordering::Acquire), ty, p);
                    Ok(())
                }
                None => {
                    fail(Reason::UnknownType, self.say(format!("frame type {ty:#06x} has no service on this node")))
                }
            },
        }
    }

    /// Registered (and counted) before the state changes, so that
    /// `Node::connect` returns with the peer already reachable by `send`.
    fn ready(&self, node: &Inner) -> std::result::Result<(), Ended> {
        if self.role == Role::Acceptor {
            node.handshake_over();
        }
        let superseded = node.ready(self);
        *self.state.lock() = State::Ready;
        self.cv.notify_all();
        if let Some(msg) = superseded {
            self.replace(msg);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_may_take_the_silence_limit_plus_a_second_per_64_kib() {
        let limit = Duration::from_secs(5);
        assert_eq!(frame_allowance(limit, 0), limit);
        assert_eq!(frame_allowance(limit, 100), limit + Duration::from_millis(1), "a trickle earns next to nothing");
        assert_eq!(frame_allowance(limit, 16 << 20), limit + Duration::from_secs(256), "16 MiB at 64 KiB/s");
        assert_eq!(frame_allowance(Duration::MAX, usize::MAX), Duration::MAX);
    }
}
