//! Per-connection state (`Conn`), the host-side entry points that append
//! to it and start drains (R1, R7), and the `Writer` handle.
//!
//! Every field of a connection is behind one lock (`Conn::st`). Host
//! threads take it to append; whoever then finds the connection idle
//! drains it (R1: on the caller's thread); a blocked connection is drained
//! by the reactor thread when the socket becomes writable.

use crate::error::{Error, Result};
use crate::net::queue::{Control, PassCfg, PassEnd, Wire, ITEM_COST};
use crate::net::reactor::{CloseWait, Cmd, Shared};
use crate::net::sendmsg::{epoll_set, errno_text, SyncSink};
use crate::net::stats::WriterStats;
use crate::net::uring::ConnIo;
use crate::net::{Backend, WriterOptions};
use crate::status::*;
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Accepting appends.
    Open,
    /// The host closed it: flushing, then shutdown(SHUT_WR), draining input (R10).
    Closing,
    /// keel closed it on its own (send error or cap): shut down, reported
    /// once; the fd stays open until the host closes the handle.
    Dead,
    /// The fd is closed and every buffer released.
    Closed,
}

pub(crate) struct ConnState {
    pub wire: Wire,
    pub phase: Phase,
    /// EPOLLOUT is armed (sendmsg backend, R6).
    pub waiting_writable: bool,
    /// An io_uring operation (send or poll) of this connection is in flight.
    pub in_flight: bool,
    /// A drain is queued for the reactor thread.
    pub scheduled: bool,
    /// The connection is in its publisher's dirty list.
    pub dirty: bool,
    /// shutdown(SHUT_WR) done; discarding the peer's input until EOF.
    pub lingering: bool,
    pub host_closed: bool,
    /// Why the connection is Dead (status and message of the report).
    pub death: Option<Error>,
    pub reported: bool,
    pub in_callback: bool,
    /// Run by the reactor once the running callback returns: the release
    /// of a handle closed by a thread that did not wait for it.
    pub release: Option<Release>,
    pub fd_closed: bool,
    /// The fd must be closed once the in-flight io_uring op completes.
    pub finalize_pending: bool,
    pub over_soft_since: Option<Instant>,
    /// R10: when a closing connection is closed whatever is left.
    pub deadline: Option<Instant>,
    pub io: ConnIo,
}

pub(crate) struct Conn {
    pub id: u64,
    pub fd: RawFd,
    pub opts: WriterOptions,
    pub cfg: PassCfg,
    pub st: Mutex<ConnState>,
    pub cv: Condvar,
}

/// Frees what a closed handle held (see `AfterCallbacks`).
pub(crate) type Release = Box<dyn FnOnce() + Send>;

/// The connections a handle closed whose event callbacks may still run:
/// a close on a reactor thread does not wait for them, and the handle
/// they may call in on is freed once they returned.
pub(crate) struct AfterCallbacks(pub(super) Vec<Arc<Conn>>);

impl AfterCallbacks {
    /// Runs `release` once no callback of these connections runs: at
    /// once, or on their reactor as the running one returns. They are
    /// closed, so none starts any more.
    pub(crate) fn run(mut self, release: Release) {
        while let Some(conn) = self.0.pop() {
            let mut st = conn.st.lock();
            if st.in_callback {
                st.release = Some(Box::new(move || self.run(release)));
                return;
            }
        }
        release()
    }
}

/// One payload appended by the host.
pub(crate) enum Piece<'a> {
    Bytes(&'a [u8]),
    Shared(Arc<[u8]>),
}

impl Piece<'_> {
    fn len(&self) -> usize {
        match self {
            Piece::Bytes(b) => b.len(),
            Piece::Shared(a) => a.len(),
        }
    }
}

impl Conn {
    pub(crate) fn new(id: u64, fd: RawFd, opts: WriterOptions) -> Conn {
        let cfg = PassCfg {
            max_batch_bytes: opts.max_batch_bytes,
            quota: opts.quota,
            copy_threshold: opts.copy_threshold,
            iov_max: opts.iov_max,
        };
        Conn {
            id,
            fd,
            opts,
            cfg,
            st: Mutex::new(ConnState {
                wire: Wire::default(),
                phase: Phase::Open,
                waiting_writable: false,
                in_flight: false,
                scheduled: false,
                dirty: false,
                lingering: false,
                host_closed: false,
                death: None,
                reported: false,
                in_callback: false,
                release: None,
                fd_closed: false,
                finalize_pending: false,
                over_soft_since: None,
                deadline: None,
                io: ConnIo::default(),
            }),
            cv: Condvar::new(),
        }
    }

    /// CLOSED (with the reason when keel closed it) unless appends are accepted.
    pub(crate) fn check_open(&self, st: &ConnState, net: &Shared) -> Result<()> {
        net.check_running()?;
        match st.phase {
            Phase::Open if !st.host_closed => Ok(()),
            Phase::Dead => Err(Error::new(
                KEEL_STATUS_CLOSED,
                format!(
                    "connection {} was closed: {}",
                    self.id,
                    st.death.as_ref().map_or("(unknown)".to_string(), |e| e.to_string())
                ),
            )),
            _ => Err(Error::new(KEEL_STATUS_CLOSED, format!("connection {} is closed", self.id))),
        }
    }

    /// R7: the caps, checked before `add` more bytes are queued (counted
    /// as `Wire::charged_bytes` counts them). Returns the policy error
    /// when the connection must be cut off.
    pub(crate) fn check_caps(&self, st: &mut ConnState, add: u64, now: Instant, net: &Shared) -> Option<Error> {
        let pending = st.wire.charged_bytes() + add;
        let o = &self.opts;
        if o.above_hard_cap(pending) {
            return Some(Error::new(
                KEEL_STATUS_BUSY,
                format!(
                    "connection {}: {pending} bytes queued exceed the hard cap of {} bytes; closed by policy",
                    self.id, o.hard_cap_bytes
                ),
            ));
        }
        self.update_soft(st, add, now, net)
    }

    /// Tracks how long the queue has been above the soft cap; the error
    /// when it has been there for longer than allowed.
    pub(crate) fn update_soft(&self, st: &mut ConnState, add: u64, now: Instant, net: &Shared) -> Option<Error> {
        let o = &self.opts;
        if o.soft_cap_bytes == 0 {
            return None;
        }
        let before = st.wire.charged_bytes();
        let pending = before + add;
        if pending <= o.soft_cap_bytes {
            if st.over_soft_since.take().is_some() {
                net.over_soft.fetch_sub(1, Ordering::AcqRel);
            }
            return None;
        }
        if before <= o.soft_cap_bytes {
            // This append takes the queue above the cap from at or below
            // it: a new period starts, whatever an earlier one left here
            // (the queue may have emptied since without a check seeing it).
            if let Some(since) = st.over_soft_since.as_mut() {
                *since = now;
            }
        }
        let since = *st.over_soft_since.get_or_insert_with(|| {
            // The reactor checks soft-cap deadlines only while some
            // connection is over its soft cap: wake it to start doing so.
            if net.over_soft.fetch_add(1, Ordering::AcqRel) == 0 {
                net.wake();
            }
            now
        });
        if now.duration_since(since) >= o.soft_cap {
            return Some(Error::new(
                KEEL_STATUS_BUSY,
                format!(
                    "connection {}: more than the soft cap of {} bytes queued for {} ms; closed by policy",
                    self.id,
                    o.soft_cap_bytes,
                    o.soft_cap.as_millis()
                ),
            ));
        }
        None
    }

    /// Marks the connection dead (R9/R7): the queue is dropped (the outbox
    /// too, unless an io_uring send still points into it). No syscall: the
    /// reactor shuts the socket down and reports, exactly once.
    pub(crate) fn kill(&self, st: &mut ConnState, e: Error, net: &Shared) {
        if !matches!(st.phase, Phase::Open | Phase::Closing) {
            return;
        }
        st.phase = Phase::Dead;
        st.death = Some(e);
        st.wire.queue.clear();
        if !st.in_flight {
            st.wire.out.clear();
        }
        if st.over_soft_since.take().is_some() {
            net.over_soft.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// R7: admits `add` more bytes (as `check_caps` counts them) or, past
    /// a cap, kills the connection and returns the policy error; the
    /// caller must see that the reactor reports it.
    fn admit(&self, st: &mut ConnState, add: u64, at: Instant, net: &Shared) -> Result<()> {
        match self.check_caps(st, add, at, net) {
            Some(e) => {
                self.kill(st, e.clone(), net);
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Appends `pieces` (all or none) under the lock: one message made of
    /// them all when `one_message`, else one message each. Errors as
    /// `admit`.
    pub(crate) fn append_locked(
        &self,
        st: &mut ConnState,
        pieces: &[Piece],
        one_message: bool,
        at: Instant,
        net: &Shared,
    ) -> Result<()> {
        let add: usize = pieces.iter().map(|p| p.len() + ITEM_COST).sum();
        self.admit(st, add as u64, at, net)?;
        let (q, small) = (&mut st.wire.queue, self.opts.copy_threshold);
        for (i, p) in pieces.iter().enumerate() {
            match (p, one_message && i > 0) {
                (Piece::Bytes(b), false) if b.len() < small => q.push_copy(b, at),
                (Piece::Bytes(b), true) if b.len() < small => q.push_part_copy(b),
                (Piece::Bytes(b), false) => q.push_shared(Arc::from(*b), at),
                (Piece::Bytes(b), true) => q.push_part_shared(Arc::from(*b)),
                (Piece::Shared(a), false) => q.push_shared(a.clone(), at),
                (Piece::Shared(a), true) => q.push_part_shared(a.clone()),
            }
        }
        st.wire.stats.items += if one_message { pieces.len().min(1) } else { pieces.len() } as u64;
        Ok(())
    }

    /// Appends a marker under the lock. It takes a queue entry as an empty
    /// message does, so the caps count it the same way (else markers
    /// behind a stopped reader would grow the queue without bound).
    /// Errors as `admit`.
    fn append_marker_locked(&self, st: &mut ConnState, at: Instant, net: &Shared) -> Result<()> {
        self.admit(st, ITEM_COST as u64, at, net)?;
        st.wire.queue.push_control(Control::Marker);
        st.wire.stats.control_items += 1;
        Ok(())
    }

    pub(crate) fn stats(&self) -> WriterStats {
        let st = self.st.lock();
        let mut s = st.wire.stats;
        s.queued_bytes = st.wire.pending_bytes();
        s.oldest_unflushed_ns = st.wire.oldest().map_or(0, |t| t.elapsed().as_nanos() as u64);
        s
    }
}

/// Passes the caller's thread runs before it leaves the rest to the
/// reactor (each pass handles at most `quota` items and flushes).
const CALLER_PASSES: usize = 16;

impl Shared {
    /// Host side: append (see `Conn::append_locked`) and, unless `more`,
    /// drain (R1).
    pub(crate) fn append(&self, conn: &Arc<Conn>, pieces: &[Piece], one_message: bool, more: bool) -> Result<()> {
        self.append_with(conn, more, |st, at| conn.append_locked(st, pieces, one_message, at, self))
    }

    /// Host side: a control item (a marker), then drain unless `more`.
    pub(crate) fn append_control(&self, conn: &Arc<Conn>, more: bool) -> Result<()> {
        self.append_with(conn, more, |st, at| conn.append_marker_locked(st, at, self))
    }

    /// Runs `add` under the lock of an open connection; a connection it
    /// cut off (caps) is handed to the reactor to report.
    fn append_with(
        &self,
        conn: &Arc<Conn>,
        more: bool,
        add: impl FnOnce(&mut ConnState, Instant) -> Result<()>,
    ) -> Result<()> {
        let mut st = conn.st.lock();
        conn.check_open(&st, self)?;
        if let Err(e) = add(&mut st, Instant::now()) {
            drop(st);
            self.cmd(Cmd::Report(conn.clone()));
            return Err(e);
        }
        if more {
            return Ok(());
        }
        self.kick(conn, st)
    }

    pub(crate) fn flush(&self, conn: &Arc<Conn>) -> Result<()> {
        let st = conn.st.lock();
        conn.check_open(&st, self)?;
        self.kick(conn, st)
    }

    /// Starts draining a connection that has something queued. With the
    /// sendmsg backend the caller's thread runs the passes itself unless
    /// the socket is blocked; with io_uring only a lone message on an idle
    /// connection is sent here (R1) and everything else is handed to the
    /// reactor, which owns the ring.
    pub(crate) fn kick(&self, conn: &Arc<Conn>, mut st: MutexGuard<ConnState>) -> Result<()> {
        if st.phase != Phase::Open || st.waiting_writable || st.in_flight || st.scheduled || st.wire.is_idle() {
            return Ok(());
        }
        let lone = st.wire.out.bytes == 0 && st.wire.queue.is_lone_reply();
        if self.backend == Backend::IoUring && !lone {
            return self.schedule(conn, &mut st);
        }
        let mut sink = SyncSink { fd: conn.fd };
        for i in 0.. {
            let sends = st.wire.stats.sends;
            let end = st.wire.pass(&conn.cfg, &mut sink);
            if lone && i == 0 && st.wire.stats.sends > sends {
                st.wire.stats.immediate_sends += 1;
            }
            match end {
                PassEnd::Drained => return Ok(()),
                PassEnd::Quota if i + 1 < CALLER_PASSES && self.backend == Backend::Sendmsg => {
                    // R4: yield between passes (others may take the lock).
                    MutexGuard::bump(&mut st);
                    if st.phase != Phase::Open || st.waiting_writable || st.in_flight || st.scheduled {
                        return Ok(());
                    }
                }
                PassEnd::Quota | PassEnd::CloseReached => return self.schedule(conn, &mut st),
                PassEnd::Blocked => {
                    st.wire.stats.writable_waits += 1;
                    if self.backend == Backend::IoUring {
                        return self.schedule(conn, &mut st);
                    }
                    st.waiting_writable = true;
                    if let Err(e) = epoll_set(self.epfd, libc::EPOLL_CTL_MOD, conn.fd, libc::EPOLLOUT as u32, conn.id) {
                        let err = Error::io(format!("epoll_ctl(EPOLLOUT) for connection {}", conn.id), e);
                        st.waiting_writable = false;
                        conn.kill(&mut st, err.clone(), self);
                        drop(st);
                        self.cmd(Cmd::Report(conn.clone()));
                        return Err(err);
                    }
                    return Ok(());
                }
                PassEnd::Failed(errno) => {
                    let err = send_error(conn.id, errno);
                    conn.kill(&mut st, err.clone(), self);
                    drop(st);
                    self.cmd(Cmd::Report(conn.clone()));
                    return Err(err);
                }
                PassEnd::InFlight => unreachable!("the caller's thread never submits to io_uring"),
            }
        }
        Ok(())
    }

    fn schedule(&self, conn: &Arc<Conn>, st: &mut ConnState) -> Result<()> {
        if !st.scheduled {
            st.scheduled = true;
            self.cmd(Cmd::Drain(conn.clone()));
        }
        Ok(())
    }

    /// Host side of R10: queue a close request behind everything appended
    /// and hand the connection to the reactor, which flushes, shuts down,
    /// drains input and closes the fd. No callback for this connection
    /// starts after this returns. One already running is waited for,
    /// unless this is a reactor thread: this net's (a call from the
    /// callback) or another net's, whose own callback may be closing a
    /// writer of that net meanwhile, waiting for it. What must outlive
    /// the callback waits in `AfterCallbacks`.
    pub(crate) fn close_conn(&self, conn: &Arc<Conn>) {
        let mut st = conn.st.lock();
        if st.host_closed {
            return;
        }
        st.host_closed = true;
        if st.phase == Phase::Open {
            st.phase = Phase::Closing;
            st.deadline = Some(Instant::now() + conn.opts.close_timeout);
            st.wire.queue.push_control(Control::Close);
            st.wire.stats.control_items += 1;
        }
        if !Shared::on_any_reactor_thread() && st.in_callback {
            self.close_waits(CloseWait::Callback(conn.id));
            while st.in_callback {
                conn.cv.wait(&mut st);
            }
        }
        drop(st);
        self.cmd(Cmd::Close(conn.clone()));
    }
}

/// The error a failed send reports (R9).
pub(crate) fn send_error(id: u64, errno: i32) -> Error {
    // io::Error's text already ends with "(os error N)".
    Error::new(KEEL_STATUS_IO, format!("connection {id}: send failed: {}", errno_text(errno)))
}

/// A socket adopted for batched writing (`Net::adopt`). Calls may come
/// from any thread; `close` (or drop) hands the socket back to the reactor
/// to be flushed and closed.
pub struct Writer {
    pub(crate) conn: Arc<Conn>,
    pub(crate) net: Arc<Shared>,
    /// Set by the first `shut`; a second one is refused.
    pub(crate) closing: AtomicBool,
}

impl Writer {
    /// The connection id the event callback reports.
    pub fn id(&self) -> u64 {
        self.conn.id
    }

    /// Appends one message. Unless `more`, it is sent before the call
    /// returns when the connection is idle (R1), else queued behind the
    /// pending ones. `more` only queues (no syscall) until the next call
    /// without it or `flush`.
    pub fn send(&self, data: &[u8], more: bool) -> Result<()> {
        self.net.append(&self.conn, &[Piece::Bytes(data)], true, more)
    }

    /// Appends a payload that is referenced, not copied, when it is at
    /// least copy_threshold long (R5).
    pub fn send_shared(&self, data: Arc<[u8]>, more: bool) -> Result<()> {
        self.net.append(&self.conn, &[Piece::Shared(data)], true, more)
    }

    /// Appends one message made of `head` (copied) and `body`
    /// (referenced like `send_shared`), both or neither. It counts as one
    /// item (`WriterStats::items`), like any message.
    pub fn send_parts(&self, head: &[u8], body: Arc<[u8]>, more: bool) -> Result<()> {
        self.net.append(&self.conn, &[Piece::Bytes(head), Piece::Shared(body)], true, more)
    }

    /// Appends several messages at once (all or none against the caps).
    pub fn send_batch(&self, parts: &[&[u8]], more: bool) -> Result<()> {
        let pieces: Vec<Piece> = parts.iter().map(|p| Piece::Bytes(p)).collect();
        self.net.append(&self.conn, &pieces, false, more)
    }

    /// Appends a marker, a control item that writes nothing (a fence:
    /// what was appended before it is flushed before the pass passes it).
    /// The caps count it as an empty message (R7), with the same errors.
    pub fn mark(&self, more: bool) -> Result<()> {
        self.net.append_control(&self.conn, more)
    }

    /// Drains what `more` left queued.
    pub fn flush(&self) -> Result<()> {
        self.net.flush(&self.conn)
    }

    pub fn stats(&self) -> WriterStats {
        self.conn.stats()
    }

    /// Why keel closed the connection on its own, if it did: a send error
    /// (status IO) or the cap policy (status BUSY), the same error the
    /// event callback reports.
    pub fn death(&self) -> Option<Error> {
        self.conn.st.lock().death.clone()
    }

    /// Closes the writer (R10): queued bytes are still sent, then the
    /// socket is shut down and closed by the reactor.
    pub fn close(self) {}

    /// `close` through a shared reference, for keel_writer_close, which
    /// frees the handle only through the answer: the writer's event
    /// callback, which this waits for when it runs on a host thread and
    /// the answer waits for otherwise, may call in on the handle until
    /// then (its sends answer CLOSED). None, doing nothing, when the
    /// writer is being closed already: that is such a callback closing its
    /// writer under the close that waits for it, which must not free the
    /// handle.
    pub(crate) fn shut(&self) -> Option<AfterCallbacks> {
        if self.closing.swap(true, Ordering::AcqRel) {
            return None;
        }
        self.net.close_conn(&self.conn);
        Some(AfterCallbacks(vec![self.conn.clone()]))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shut();
    }
}
