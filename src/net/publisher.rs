//! Fan-out: one message to many subscriber connections.
//!
//! `publish` encodes the message once (a large one into one refcounted
//! buffer every subscriber references, a small one copied into each
//! subscriber's buffer, R5), appends it to every subscriber's queue and
//! marks the subscriber dirty. It makes no syscall. `flush` is the drain
//! point: each dirty subscriber gets one pass, i.e. one send for up to
//! `quota` messages. A subscriber whose socket is full waits for
//! writability on the reactor and never delays the others; past its caps
//! it is cut off (R7) and reported once through the event callback.

use crate::error::{Error, Result};
use crate::net::conn::{AfterCallbacks, Conn, Phase, Piece};
use crate::net::queue::ITEM_COST;
use crate::net::reactor::{Cmd, Shared};
use crate::net::{WriterOptions, WriterStats};
use crate::status::*;
use parking_lot::Mutex;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Counters of a publisher; the send counters are summed over every
/// subscriber it ever had (an unsubscribed one as it was when it left).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublisherStats {
    /// Messages published.
    pub published: u64,
    /// Drain points (flushes).
    pub flushes: u64,
    /// Subscribers still open.
    pub subscribers: u64,
    /// Subscribers keel closed (caps or errors) and the host has not unsubscribed yet.
    pub cut_off: u64,
    pub sends: u64,
    pub bytes_sent: u64,
    pub items_sent: u64,
}

pub struct Publisher {
    net: Arc<Shared>,
    opts: WriterOptions,
    /// Subscribers in subscription order; publish holds this lock so every
    /// subscriber sees messages in the same order.
    subs: Mutex<Vec<Arc<Conn>>>,
    dirty: Mutex<Vec<Arc<Conn>>>,
    published: AtomicU64,
    flushes: AtomicU64,
    closed: AtomicBool,
    /// Counters of unsubscribed connections, as they were when they left,
    /// so publisher totals never go backwards.
    departed: Mutex<PublisherStats>,
}

impl Publisher {
    pub(crate) fn new(net: Arc<Shared>, opts: WriterOptions) -> Publisher {
        Publisher {
            net,
            opts,
            subs: Mutex::new(Vec::new()),
            dirty: Mutex::new(Vec::new()),
            published: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            departed: Mutex::new(PublisherStats::default()),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::new(KEEL_STATUS_CLOSED, "the publisher is closed"));
        }
        self.net.check_running()
    }

    /// Adopts connected stream socket `fd` as a subscriber (keel owns the
    /// fd from then on) and returns its id.
    pub fn subscribe(&self, fd: RawFd) -> Result<u64> {
        // The check, the adoption and the listing happen under the list's
        // lock, which `shut` takes only after marking the publisher closed:
        // a subscriber is listed before `shut` takes the list (and closed
        // with the rest), or refused with its fd still the caller's. An
        // event callback subscribing while the host closes the publisher
        // could otherwise list a connection after `shut` took the list,
        // one nothing would close until the net's own close.
        let mut subs = self.subs.lock();
        self.check_open()?;
        let conn = self.net.adopt(fd, &self.opts)?;
        let id = conn.id;
        subs.push(conn);
        Ok(id)
    }

    /// Removes subscriber `id`: what is queued for it is still sent, then
    /// its socket is shut down and closed (R10). NOT_FOUND for unknown ids.
    pub fn unsubscribe(&self, id: u64) -> Result<()> {
        self.check_open()?;
        let conn = {
            let mut subs = self.subs.lock();
            let i = subs
                .iter()
                .position(|c| c.id == id)
                .ok_or_else(|| Error::new(KEEL_STATUS_NOT_FOUND, format!("no subscriber {id}")))?;
            let conn = subs.remove(i);
            // Under the list's lock, which `stats` holds while it reads
            // both: it counts the subscriber in the list or in the
            // departed totals, never in neither (totals never go back).
            let w = conn.stats();
            let mut gone = self.departed.lock();
            gone.sends += w.sends;
            gone.bytes_sent += w.bytes_sent;
            gone.items_sent += w.items_sent;
            conn
        };
        self.net.close_conn(&conn);
        Ok(())
    }

    /// Appends `data` to every open subscriber and marks it dirty; no
    /// syscall. With `flush`, drains right after (see `flush`).
    pub fn publish(&self, data: &[u8], flush: bool) -> Result<()> {
        self.check_open()?;
        let at = Instant::now();
        // A message above the hard cap on its own is refused by every
        // subscriber (and cuts it off): it is not copied first, which for a
        // huge one could only end in a failed allocation, an abort.
        let refused = self.opts.above_hard_cap(data.len() as u64 + ITEM_COST as u64);
        let piece = if data.len() >= self.opts.copy_threshold && !refused {
            Piece::Shared(Arc::from(data)) // encoded once, referenced by all
        } else {
            Piece::Bytes(data)
        };
        {
            let subs = self.subs.lock();
            for c in subs.iter() {
                let mut st = c.st.lock();
                if st.phase != Phase::Open || st.host_closed {
                    continue;
                }
                // A cap violation kills the subscriber here; the drain
                // point hands the report to the reactor.
                let _ = c.append_locked(&mut st, std::slice::from_ref(&piece), true, at, &self.net);
                if !st.dirty {
                    st.dirty = true;
                    self.dirty.lock().push(c.clone());
                }
            }
        }
        self.published.fetch_add(1, Ordering::Relaxed);
        if flush {
            self.flush()?;
        }
        Ok(())
    }

    /// The drain point: every dirty subscriber gets one drain (one send
    /// per `quota` messages), on this thread with the sendmsg backend
    /// unless its socket is full; with io_uring a lone message is sent
    /// here and the rest handed to the reactor in one wake-up.
    pub fn flush(&self) -> Result<()> {
        self.check_open()?;
        let dirty = std::mem::take(&mut *self.dirty.lock());
        self.flushes.fetch_add(1, Ordering::Relaxed);
        for c in dirty {
            let mut st = c.st.lock();
            st.dirty = false;
            match st.phase {
                Phase::Open if !st.host_closed => {
                    // A send error is reported through the callback and
                    // concerns that subscriber only.
                    let _ = self.net.kick(&c, st);
                }
                Phase::Dead if !st.reported => {
                    drop(st);
                    self.net.cmd(Cmd::Report(c));
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn stats(&self) -> PublisherStats {
        // Lock order: the list, then the departed totals (`unsubscribe`).
        let subs = self.subs.lock();
        let gone = *self.departed.lock();
        let mut s = PublisherStats {
            published: self.published.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            sends: gone.sends,
            bytes_sent: gone.bytes_sent,
            items_sent: gone.items_sent,
            ..Default::default()
        };
        for c in subs.iter() {
            let phase = c.st.lock().phase;
            match phase {
                Phase::Open => s.subscribers += 1,
                Phase::Dead => s.cut_off += 1,
                _ => {}
            }
            let w = c.stats();
            s.sends += w.sends;
            s.bytes_sent += w.bytes_sent;
            s.items_sent += w.items_sent;
        }
        s
    }

    /// Counters of subscriber `id`.
    pub fn subscriber_stats(&self, id: u64) -> Result<WriterStats> {
        let subs = self.subs.lock();
        let c = subs
            .iter()
            .find(|c| c.id == id)
            .ok_or_else(|| Error::new(KEEL_STATUS_NOT_FOUND, format!("no subscriber {id}")))?;
        Ok(c.stats())
    }

    /// Unsubscribes everyone (queued messages are still sent).
    pub fn close(self) {}

    /// `close` through a shared reference, for keel_publisher_close, which
    /// frees the handle only through the answer: the event callback of a
    /// subscriber, which this waits for when it runs on a host thread and
    /// the answer waits for otherwise, may call in on the handle until
    /// then (publish and unsubscribe answer CLOSED). None, doing nothing,
    /// when the publisher is being closed already: that is such a callback
    /// closing the publisher under the close that waits for it, which must
    /// not free the handle.
    pub(crate) fn shut(&self) -> Option<AfterCallbacks> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return None;
        }
        let subs = {
            let mut subs = self.subs.lock();
            // Counted as departed, as `unsubscribe` does, so that the
            // totals `stats` gives while the close waits never go back.
            let mut gone = self.departed.lock();
            for c in subs.iter() {
                let w = c.stats();
                gone.sends += w.sends;
                gone.bytes_sent += w.bytes_sent;
                gone.items_sent += w.items_sent;
            }
            drop(gone);
            std::mem::take(&mut *subs)
        };
        for c in &subs {
            self.net.close_conn(c);
        }
        Some(AfterCallbacks(subs))
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shut();
    }
}
