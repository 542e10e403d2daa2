//! The node itself: the listener and its accept thread, dialing, the
//! registry of connections, sending, and shutdown.

use crate::error::{Error, Result};
use crate::net::{Net, NetOptions, WriterOptions, ITEM_COST};
use crate::node::conn::Conn;
use crate::node::frame;
use crate::node::handshake::{ReplayGuard, Role};
use crate::node::stats::{add, Counters, NodeStats, Reason};
use crate::node::{Handler, NodeOptions, PeerGone, Service};
use crate::status::*;
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// HELLO nonces remembered to spot replayed handshakes.
const REPLAY_MEMORY: usize = 4096;

/// Test-only: called as a connection starts (`Node::set_start_hook`).
#[doc(hidden)]
pub type StartHook = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct Registry {
    next_seq: u64,
    /// Every live connection with its reader thread.
    conns: HashMap<u64, (Arc<Conn>, Option<JoinHandle<()>>)>,
    /// Connections that finished their handshake, by peer node id (the latest wins).
    by_peer: HashMap<u64, Arc<Conn>>,
    /// The address each peer was last dialed at (`Node::reconnect`).
    dialed: HashMap<u64, String>,
    /// Peers being dialed now: a node dials a peer once at a time, so
    /// that of two connections it dialed the peer and it agree on which
    /// is newer (`keeps_new`).
    dialing: HashSet<u64>,
}

/// What a node's threads share.
pub(crate) struct Inner {
    pub opts: NodeOptions,
    pub counters: Counters,
    pub replay: Mutex<ReplayGuard>,
    handlers: RwLock<[Option<Handler>; 2]>,
    /// Each service's `PeerGone`.
    gone: RwLock<[Option<PeerGone>; 2]>,
    reg: Mutex<Registry>,
    /// Signalled when a dial ends (`Registry::dialing`).
    dial_ended: Condvar,
    net: Mutex<Option<Net>>,
    writer_opts: WriterOptions,
    closing: AtomicBool,
    /// Accepted connections whose handshake has not ended yet (bounded by
    /// `max_handshakes`): counted up by the accept loop, down by the
    /// connection's thread once it is ready or over.
    handshaking: AtomicU32,
    /// Test-only (`Node::set_start_hook`).
    start_hook: OnceLock<StartHook>,
}

/// A node: listens, dials, and carries typed frames between authenticated
/// peers. Every method may be called from any thread.
pub struct Node {
    inner: Arc<Inner>,
    addr: SocketAddr,
    listener: TcpListener,
    /// Taken by the one shutdown that runs.
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

fn loopback(addr: &SocketAddr) -> bool {
    match addr {
        SocketAddr::V4(a) => a.ip().is_loopback(),
        SocketAddr::V6(a) => a.ip().is_loopback() || a.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// Why a peer at `addr` may not connect at all, if it may not.
pub(crate) fn policy_refusal(opts: &NodeOptions, addr: &SocketAddr) -> Option<String> {
    (opts.secrets.is_empty() && !opts.allow_remote_without_secret && !loopback(addr)).then(|| {
        format!("node connection from {addr}: refused, no cluster secret is configured and the peer is not on loopback")
    })
}

impl Node {
    /// Validates `opts`, binds the listener and starts the accept thread
    /// and the writer reactor.
    pub fn open(opts: NodeOptions) -> Result<Node> {
        opts.validate()?;
        // An address that does not parse (or resolves to nothing) is the
        // caller's mistake, as in `connect`; only the bind itself is IO.
        let listen: Vec<SocketAddr> = opts
            .listen
            .to_socket_addrs()
            .map_err(|e| Error::invalid(format!("listen address {:?}: {e}", opts.listen)))?
            .collect();
        if listen.is_empty() {
            return Err(Error::invalid(format!("listen address {:?} resolves to nothing", opts.listen)));
        }
        let listener = TcpListener::bind(&listen[..]).map_err(|e| Error::io(format!("bind {}", opts.listen), e))?;
        let addr = listener.local_addr().map_err(|e| Error::io("getsockname of the node listener", e))?;
        // No event callback: when the reactor closes a connection on its
        // own it shuts the socket down, which wakes the connection's
        // reader, and the reader asks the writer why (`Writer::death`).
        let net = Net::open(NetOptions::default())?;
        let writer_opts = WriterOptions {
            soft_cap_bytes: 0,
            // The outbound share of conn_memory_bytes, a whole frame at
            // least. The caps also count each queued piece's bookkeeping
            // (a frame has two at most, head and shared body), which must
            // not keep one whole frame out of an empty queue.
            hard_cap_bytes: opts.conn_memory_bytes - opts.read_limit() as u64 + 2 * ITEM_COST as u64,
            close_timeout: opts.close_timeout,
            ..WriterOptions::default()
        };
        let inner = Arc::new(Inner {
            opts,
            counters: Counters::default(),
            replay: Mutex::new(ReplayGuard::new(REPLAY_MEMORY)),
            handlers: RwLock::new([None, None]),
            gone: RwLock::new([None, None]),
            reg: Mutex::new(Registry::default()),
            dial_ended: Condvar::new(),
            net: Mutex::new(Some(net)),
            writer_opts,
            closing: AtomicBool::new(false),
            handshaking: AtomicU32::new(0),
            start_hook: OnceLock::new(),
        });
        let l = listener.try_clone().map_err(|e| Error::io("dup the node listener", e))?;
        let i = inner.clone();
        let acceptor = std::thread::Builder::new()
            .name("keel-node-accept".into())
            .spawn(move || i.accept_loop(l))
            .map_err(|e| Error::io("spawn the node accept thread", e))?;
        Ok(Node { inner, addr, listener, acceptor: Mutex::new(Some(acceptor)) })
    }

    /// The address the node listens on (the port picked when it was 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn id(&self) -> u64 {
        self.inner.opts.node_id
    }

    /// Largest frame payload this node sends or accepts.
    pub fn max_frame_bytes(&self) -> usize {
        self.inner.opts.max_frame_bytes as usize
    }

    /// The bandwidth cap of one transfer in bytes per second (0: none).
    pub fn transfer_bandwidth(&self) -> u64 {
        self.inner.opts.transfer_bandwidth_bytes_per_sec
    }

    /// Transfers this node sends at once, and receives at once.
    pub fn max_concurrent_transfers(&self) -> usize {
        self.inner.opts.max_concurrent_transfers as usize
    }

    /// Dials `addr` and runs the handshake; returns once `peer_id` is
    /// ready (or why not: REFUSED, TIMEOUT, IO, PROTOCOL, CLOSED). With a
    /// ready connection to `peer_id` already, returns at once and keeps
    /// it (`addr` is remembered for later reconnects); while another
    /// thread dials the peer, waits for that dial and then does the same.
    pub fn connect(&self, peer_id: u64, addr: &str) -> Result<()> {
        if peer_id == 0 || peer_id == self.id() {
            return Err(Error::invalid(format!("peer id {peer_id} is 0 or this node's own id")));
        }
        self.inner.check_open()?;
        {
            let mut reg = self.inner.reg.lock();
            reg.dialed.insert(peer_id, addr.to_string());
            // A ready connection to the peer is used, not doubled.
            loop {
                if reg.by_peer.contains_key(&peer_id) {
                    return Ok(());
                }
                if reg.dialing.insert(peer_id) {
                    break;
                }
                self.inner.dial_ended.wait(&mut reg);
            }
        }
        let dialed = self.dial(peer_id, addr);
        self.inner.reg.lock().dialing.remove(&peer_id);
        self.inner.dial_ended.notify_all();
        dialed
    }

    /// One dial of `connect`, the only one to `peer_id` running.
    fn dial(&self, peer_id: u64, addr: &str) -> Result<()> {
        let timeout = self.inner.opts.handshake_timeout;
        let to = addr
            .to_socket_addrs()
            .map_err(|e| Error::invalid(format!("peer address {addr:?}: {e}")))?
            .next()
            .ok_or_else(|| Error::invalid(format!("peer address {addr:?} resolves to nothing")))?;
        let stream = TcpStream::connect_timeout(&to, timeout).map_err(|e| match e.kind() {
            // No answer within handshake_timeout (or the kernel's own SYN
            // retries ran out first): a deadline passed, nothing broke.
            std::io::ErrorKind::TimedOut => Error::new(KEEL_STATUS_TIMEOUT, format!("connect to {to}: {e}")),
            _ => Error::io(format!("connect to {to}"), e),
        })?;
        add(&self.inner.counters.dialed, 1);
        let conn = self.inner.start(stream, to, Role::Dialer, Some(peer_id))?;
        conn.wait_ready()
    }

    /// Makes sure a connection to `peer_id` is ready: nothing to do when
    /// one is, else dials the address `connect` was last given for it.
    /// NOT_FOUND when this node never dialed that peer (it dials back by
    /// itself); otherwise what `connect` answers.
    pub fn reconnect(&self, peer_id: u64) -> Result<()> {
        let addr = {
            let reg = self.inner.reg.lock();
            if reg.by_peer.contains_key(&peer_id) {
                return Ok(());
            }
            reg.dialed.get(&peer_id).cloned()
        };
        match addr {
            Some(addr) => self.connect(peer_id, &addr),
            None => Err(Error::new(KEEL_STATUS_NOT_FOUND, format!("no connection to peer {peer_id}, and this node never dialed it"))),
        }
    }

    /// Whether a connection to `peer_id` is ready now.
    pub fn is_ready(&self, peer_id: u64) -> bool {
        self.inner.reg.lock().by_peer.contains_key(&peer_id)
    }

    /// Whether the node is closing (or closed): it dials and sends no more.
    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    /// Installs (or with None removes) the handler of a service's frames.
    pub fn set_handler(&self, service: Service, handler: Option<Handler>) {
        self.inner.handlers.write()[service as usize] = handler;
    }

    /// Installs (or with None removes) what a service is told when a
    /// ready connection to a peer ends.
    pub fn set_peer_gone(&self, service: Service, gone: Option<PeerGone>) {
        self.inner.gone.write()[service as usize] = gone;
    }

    /// The node's silence limit (`NodeOptions::silence_limit`).
    pub fn silence_limit(&self) -> Duration {
        self.inner.opts.silence_limit()
    }

    /// Sends one frame to a ready peer: `ty` must lie in a service's range
    /// and the payload within max_frame_bytes. NOT_FOUND when no
    /// connection to the peer is ready; BUSY when the peer stopped reading
    /// and the connection was cut off.
    pub fn send(&self, peer_id: u64, ty: u16, payload: &[u8]) -> Result<()> {
        self.send_to(peer_id, ty, payload.len(), |conn| conn.send(&self.inner, ty, payload))
    }

    /// `send` of the payload `head` then `body`, the body's bytes sent
    /// as they are (not copied), however often it is sent.
    pub fn send_body(&self, peer_id: u64, ty: u16, head: &[u8], body: &frame::Body) -> Result<()> {
        self.send_to(peer_id, ty, head.len() + body.len(), |conn| conn.send_body(&self.inner, ty, head, body))
    }

    fn send_to(&self, peer_id: u64, ty: u16, len: usize, send: impl FnOnce(&Conn) -> Result<()>) -> Result<()> {
        let max = self.inner.opts.max_frame_bytes as usize;
        if Service::of(ty).is_none() {
            return Err(Error::invalid(format!("frame type {ty:#06x} belongs to no service")));
        }
        if len > max {
            return Err(Error::invalid(format!("payload of {len} bytes is above max_frame_bytes {max}")));
        }
        self.inner.check_open()?;
        let conn = self.inner.reg.lock().by_peer.get(&peer_id).cloned();
        let conn =
            conn.ok_or_else(|| Error::new(KEEL_STATUS_NOT_FOUND, format!("no ready connection to peer {peer_id}")))?;
        send(&conn).inspect_err(|_| {
            // A connection that cannot take a frame is done (its reader
            // ends it, with the writer's reason): it leaves the peer table
            // now, so `reconnect` dials afresh instead of finding it there.
            self.inner.unregister(&conn);
        })
    }

    /// Peers with a ready connection.
    pub fn peers(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.inner.reg.lock().by_peer.keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn stats(&self) -> NodeStats {
        self.inner.counters.snapshot()
    }

    /// Test-only: `hook` is called on the thread that starts a connection
    /// (dialing, or the accept thread), between its writer's setup and its
    /// entry in the node's registry; it may block there while the node
    /// closes. Only the first hook set is kept.
    #[doc(hidden)]
    pub fn set_start_hook(&self, hook: StartHook) {
        let _ = self.inner.start_hook.set(hook);
    }

    /// Stops accepting, gives every connection up to close_timeout to send
    /// what is queued (the rest is cancelled and counted in
    /// `cancelled_frames`) and for the peer to read it and close its side,
    /// closes them and joins every thread. Returns the final counters.
    /// The node stays usable by reference meanwhile (its event handlers may
    /// read its stats; dialing and sending answer CLOSED). BUSY when a
    /// close already runs, or when called on one of the node's own
    /// threads (from a handler or an event callback), which it would join:
    /// nothing is done then.
    pub fn close(&self) -> Result<NodeStats> {
        if self.on_own_thread() {
            return Err(Error::new(KEEL_STATUS_BUSY, "a node cannot be closed from its own handler or event callback, which the close waits for"));
        }
        if self.inner.closing.swap(true, Ordering::SeqCst) {
            return Err(Error::new(KEEL_STATUS_BUSY, "the node is already closing"));
        }
        self.shutdown();
        Ok(self.stats())
    }

    /// Whether the caller runs on the accept thread or a connection's
    /// reader, the threads `shutdown` joins.
    fn on_own_thread(&self) -> bool {
        let me = std::thread::current().id();
        let mine = |t: &Option<JoinHandle<()>>| t.as_ref().is_some_and(|t| t.thread().id() == me);
        let accepting = mine(&self.acceptor.lock());
        accepting || self.inner.reg.lock().conns.values().any(|(_, t)| mine(t))
    }

    /// Runs once, after `closing` is set.
    fn shutdown(&self) {
        debug_assert!(self.inner.closing.load(Ordering::Acquire));
        let Some(acceptor) = self.acceptor.lock().take() else { return };
        // The last handle may go on one of the node's own threads (a
        // callback held one; `close` there answers BUSY instead): that
        // thread is neither waited for nor joined, and ends once its
        // callback returns.
        let me = std::thread::current().id();
        let theirs = |t: &JoinHandle<()>| t.thread().id() != me;
        // SAFETY: the listener's fd is open (self owns it); shutdown(2)
        // wakes the accept thread blocked on its dup.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if theirs(&acceptor) {
            let _ = acceptor.join();
        }
        let conns: Vec<(Arc<Conn>, bool)> =
            self.inner.reg.lock().conns.values().map(|(c, t)| (c.clone(), t.as_ref().map_or(true, theirs))).collect();
        for (c, _) in &conns {
            // The reason only: the socket stays open while the writers drain.
            c.end_reason_only(Reason::Shutdown, "the node is closing");
        }
        let deadline = Instant::now() + self.inner.opts.close_timeout;
        // Hands every queued byte to the kernel within close_timeout, then
        // half-closes (the FIN follows the data) and closes the writers'
        // fds; the readers' fds keep the sockets open.
        if let Some(net) = self.inner.net.lock().take() {
            let _ = net.close();
        }
        // The bytes are in the kernel, not yet at the peer: a socket shut
        // down for reading or closed while the peer still sends (a PING)
        // answers with a RST and drops them. So each reader reads on until
        // the peer, having read everything, closes its side too.
        for (c, _) in conns.iter().filter(|(_, theirs)| *theirs) {
            c.wait_ended(deadline);
        }
        // What is left is a peer that did not close within close_timeout.
        for (c, _) in &conns {
            c.end(Reason::Shutdown, "the node is closing");
        }
        let threads: Vec<JoinHandle<()>> =
            self.inner.reg.lock().conns.values_mut().filter_map(|(_, t)| t.take()).collect();
        for t in threads.into_iter().filter(theirs) {
            let _ = t.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        self.shutdown();
    }
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.closing.load(Ordering::Acquire) {
            return Err(Error::new(KEEL_STATUS_CLOSED, "the node is closing"));
        }
        Ok(())
    }

    pub(crate) fn handler(&self, s: Service) -> Option<Handler> {
        self.handlers.read()[s as usize].clone()
    }

    fn accept_loop(self: Arc<Inner>, listener: TcpListener) {
        let mut pause = AcceptPause::default();
        loop {
            let accepted = listener.accept();
            if self.closing.load(Ordering::Acquire) {
                return;
            }
            match accepted {
                Ok((stream, addr)) => {
                    pause.reset();
                    add(&self.counters.accepted, 1);
                    let _ = self.start(stream, addr, Role::Acceptor, None);
                }
                // A failed accept (a connection reset while queued, out of
                // fds) concerns that connection only. Out of descriptors or
                // memory, accept fails again at once for as long as that
                // lasts: the loop waits a little longer each time instead
                // of spinning a core.
                Err(e) => {
                    self.counters.note_error(format!("node accept failed: {e}"));
                    if let Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS) = e.raw_os_error() {
                        std::thread::sleep(pause.next());
                    }
                }
            }
        }
    }

    /// Takes a connected socket: the policy check, a batched writer on a
    /// dup of it, and a reader thread.
    fn start(
        self: &Arc<Inner>,
        stream: TcpStream,
        remote: SocketAddr,
        role: Role,
        expect: Option<u64>,
    ) -> Result<Arc<Conn>> {
        self.check_open()?;
        if let Some(msg) = policy_refusal(&self.opts, &remote) {
            return Err(self.refuse_at_once(&stream, Reason::NotLoopback, msg));
        }
        let accepted = role == Role::Acceptor;
        // Only the accept loop counts up, so the check and the count
        // cannot race with another accept.
        if accepted && self.handshaking.load(Ordering::Acquire) >= self.opts.max_handshakes {
            let msg = format!(
                "node refused a connection from {remote}: {} accepted connections are in their handshake already (max_handshakes)",
                self.opts.max_handshakes
            );
            return Err(self.refuse_at_once(&stream, Reason::HandshakeLimit, msg));
        }
        let wfd = stream.try_clone().map_err(|e| Error::io("dup a node socket", e))?.into_raw_fd();
        let adopted = match &*self.net.lock() {
            Some(net) => net.adopt(wfd, &self.writer_opts),
            None => Err(Error::new(KEEL_STATUS_CLOSED, "the node is closing")),
        };
        let writer = adopted.inspect_err(|_| {
            // SAFETY: adopt failed, so wfd is still ours, open, and owned
            // by nothing else; the TcpStream closes it.
            drop(unsafe { TcpStream::from_raw_fd(wfd) });
        })?;
        if let Some(hook) = self.start_hook.get() {
            hook();
        }
        let mut reg = self.reg.lock();
        // Checked again under the registry's lock, which `shutdown` holds
        // as it collects the connections: one registered after that would
        // be neither ended nor joined, its thread running after the close
        // returned.
        if let Err(e) = self.check_open() {
            drop(reg);
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Err(e);
        }
        reg.next_seq += 1;
        let seq = reg.next_seq;
        let conn = Arc::new(Conn::new(seq, role, remote, expect, stream, writer));
        if accepted {
            // Before its thread starts, which counts it down at its end.
            self.handshaking.fetch_add(1, Ordering::AcqRel);
        }
        let (c, me) = (conn.clone(), self.clone());
        let thread = std::thread::Builder::new().name("keel-node-conn".into()).spawn(move || c.run(me));
        match thread {
            Ok(t) => {
                reg.conns.insert(seq, (conn.clone(), Some(t)));
                Ok(conn)
            }
            Err(e) => {
                drop(reg);
                if accepted {
                    self.handshake_over();
                }
                let err = Error::io("spawn a node connection thread", e);
                conn.end(Reason::Reset, err.to_string());
                Err(err)
            }
        }
    }

    /// Refuses a connection before it has a thread: tells the peer why (a
    /// REFUSE frame, best effort), counts and reports the refusal.
    fn refuse_at_once(&self, stream: &TcpStream, r: Reason, msg: String) -> Error {
        use std::io::Write;
        let _ = (&*stream).write_all(&frame::encode(crate::node::types::REFUSE, &[r.code()]));
        self.counters.ended(r, &msg, false);
        self.event(0, r.status(), &msg);
        Error::new(r.status(), msg)
    }

    /// An accepted connection's handshake ended (ready, refused or cut).
    pub(crate) fn handshake_over(&self) {
        let before = self.handshaking.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "a handshake ended that was never counted");
    }

    /// Registers a connection that finished its handshake. With another
    /// ready connection to the peer, one of the two is closed
    /// (`Conn::replace`): the other one, here, or this one, by the
    /// message returned.
    pub(crate) fn ready(&self, conn: &Conn) -> Option<String> {
        let peer = conn.peer_id.load(Ordering::Acquire);
        let mut reg = self.reg.lock();
        let old = reg.by_peer.get(&peer).cloned();
        if old.as_ref().is_some_and(|old| !self.keeps_new(conn, old)) {
            drop(reg);
            self.counters.ready();
            return Some(format!("a connection to peer {peer} is ready already and stays: this one is closed"));
        }
        if let Some((c, _)) = reg.conns.get(&conn.seq) {
            let c = c.clone();
            reg.by_peer.insert(peer, c);
        }
        drop(reg);
        self.counters.ready();
        if let Some(old) = old {
            old.replace(format!("a newer connection to peer {peer} ({}) replaced this one", conn.remote));
        }
        self.event(peer, KEEL_STATUS_OK, "peer ready");
        None
    }

    /// Of two ready connections to one peer, whether the new one stays:
    /// the same choice on both sides, without a word between them. Of two
    /// dials that crossed (each side dialed one), the one the lower node
    /// id dialed stays. Of two dialed by the same side, the newer stays
    /// (the peer connected again before its old connection was found
    /// dead here); that side dials once at a time, so it made them in the
    /// order they were accepted.
    fn keeps_new(&self, new: &Conn, old: &Conn) -> bool {
        if new.role == old.role {
            return new.seq > old.seq;
        }
        let peer = new.peer_id.load(Ordering::Acquire);
        let lower_dialed = if self.opts.node_id < peer { Role::Dialer } else { Role::Acceptor };
        new.role == lower_dialed
    }

    /// Takes the connection out of the peer table, unless a newer one
    /// to that peer replaced it.
    pub(crate) fn unregister(&self, conn: &Conn) {
        let mut reg = self.reg.lock();
        let peer = conn.peer_id.load(Ordering::Acquire);
        if reg.by_peer.get(&peer).is_some_and(|c| c.seq == conn.seq) {
            reg.by_peer.remove(&peer);
        }
    }

    /// Drops an ended connection, out of the peer table already, from the
    /// registry (its thread's last act).
    pub(crate) fn forget(&self, conn: &Conn) {
        let mut reg = self.reg.lock();
        // While the node closes, its shutdown joins the thread instead.
        if !self.closing.load(Ordering::Acquire) {
            reg.conns.remove(&conn.seq);
        }
    }

    /// Tells every service a ready connection to `peer` ended.
    pub(crate) fn peer_gone(&self, peer: u64) {
        let gone: Vec<PeerGone> = self.gone.read().iter().flatten().cloned().collect();
        for g in gone {
            g(peer);
        }
    }

    pub(crate) fn event(&self, peer: u64, status: keel_status_t, msg: &str) {
        if let Some(cb) = &self.opts.on_event {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(peer, status, msg)));
        }
    }
}

/// How long the accept loop waits after running out of descriptors or
/// memory: 5 ms, doubling up to 100 ms (a node's close waits for the loop,
/// so at most one pause), and back to 5 ms after an accept succeeds.
#[derive(Default)]
struct AcceptPause(u32);

impl AcceptPause {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_millis(100);

    fn next(&mut self) -> Duration {
        let d = Self::FIRST.saturating_mul(1 << self.0.min(16)).min(Self::MAX);
        self.0 = self.0.saturating_add(1);
        d
    }

    fn reset(&mut self) {
        self.0 = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_pause_doubles_to_its_bound_and_restarts() {
        let mut p = AcceptPause::default();
        let ms: Vec<u128> = (0..8).map(|_| p.next().as_millis()).collect();
        assert_eq!(ms, [5, 10, 20, 40, 80, 100, 100, 100]);
        for _ in 0..100 {
            p.next();
        }
        assert_eq!(p.next(), AcceptPause::MAX);
        p.reset();
        assert_eq!(p.next(), AcceptPause::FIRST);
    }

    #[test]
    fn without_a_secret_only_loopback_peers_are_let_in() {
        let mut o = NodeOptions { node_id: 1, ..NodeOptions::default() };
        let remote: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        for local in ["127.0.0.1:1", "[::1]:1", "[::ffff:127.0.0.1]:1"] {
            assert_eq!(policy_refusal(&o, &local.parse().unwrap()), None, "{local}");
        }
        assert!(policy_refusal(&o, &remote).unwrap().contains("not on loopback"));
        o.allow_remote_without_secret = true;
        assert_eq!(policy_refusal(&o, &remote), None);
        o.allow_remote_without_secret = false;
        o.secrets = vec![vec![7; 16]];
        assert_eq!(policy_refusal(&o, &remote), None);
    }
}
