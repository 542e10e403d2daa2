//! The outbound queue of one connection and the drain pass (R1–R6, R8).
//!
//! `Queue` holds the items appended and not yet taken by a pass; `Outbox`
//! holds the bytes a pass has taken and the kernel has not yet accepted
//! (the batch being built, or the unsent suffix of a short send). A pass
//! moves items from the queue into the outbox and flushes the outbox
//! through a `Sink` (a sendmsg(2) call or an io_uring submission).
//!
//! Both live under the connection's lock. A pass only runs while no send
//! of the connection is in flight, so nothing points into the outbox
//! while it is being changed (R8: at most one send in flight).

use crate::net::stats::{FlushReason, WriterStats};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// A control item: it writes no bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Control {
    /// A fence: everything appended before it is flushed before the pass
    /// moves past it.
    Marker,
    /// A close request (R10): flush everything before it, then shut down.
    Close,
}

/// What a queued item costs beyond its payload, as the caps count it (the
/// documented figure): at least its entry in the queue.
pub(crate) const ITEM_COST: usize = 40;
const _: () = assert!(std::mem::size_of::<Item>() <= ITEM_COST, "ITEM_COST covers a queue entry");

/// One entry of the outbound queue.
pub(crate) enum Item {
    /// A reply-producing item of `len` bytes: either in the queue's arena
    /// (copied, `shared` None) or a referenced payload (R5).
    Reply { len: usize, shared: Option<Arc<[u8]>>, at: Instant },
    /// A further piece of the message of the `Reply` just before it
    /// (`Writer::send_parts`): the pass takes it with that message, so a
    /// message is one item (R2, R4, R12) whatever its pieces.
    Part { len: usize, shared: Option<Arc<[u8]>> },
    Control(Control),
}

/// Items appended and not yet taken by a pass. Small payloads are copied
/// into `arena` in append order, so an item only records its length.
#[derive(Default)]
pub(crate) struct Queue {
    items: VecDeque<Item>,
    arena: Vec<u8>,
    head: usize,
    /// Reply-producing items (messages) queued (R2 counts these, never
    /// control items or the further parts of a message).
    pub replies: usize,
    /// `Part` entries queued.
    parts: usize,
    /// Bytes of the queued reply items.
    pub bytes: usize,
}

/// What `Queue::pop_into` took.
enum Popped {
    Reply,
    Control(Control),
}

impl Queue {
    pub fn push_copy(&mut self, data: &[u8], at: Instant) {
        self.arena.extend_from_slice(data);
        self.items.push_back(Item::Reply { len: data.len(), shared: None, at });
        self.replies += 1;
        self.bytes += data.len();
    }

    pub fn push_shared(&mut self, data: Arc<[u8]>, at: Instant) {
        self.replies += 1;
        self.bytes += data.len();
        self.items.push_back(Item::Reply { len: data.len(), shared: Some(data), at });
    }

    /// Appends a further piece of the message pushed last (copied).
    pub fn push_part_copy(&mut self, data: &[u8]) {
        self.arena.extend_from_slice(data);
        self.items.push_back(Item::Part { len: data.len(), shared: None });
        self.parts += 1;
        self.bytes += data.len();
    }

    /// Appends a further piece of the message pushed last (referenced).
    pub fn push_part_shared(&mut self, data: Arc<[u8]>) {
        self.parts += 1;
        self.bytes += data.len();
        self.items.push_back(Item::Part { len: data.len(), shared: Some(data) });
    }

    pub fn push_control(&mut self, c: Control) {
        self.items.push_back(Item::Control(c));
    }

    /// Puts a close request back at the front (its flush could not finish).
    fn unpop_close(&mut self) {
        self.items.push_front(Item::Control(Control::Close));
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// True when the queue holds exactly one message (in one piece or
    /// several) and no control item: the R1 case of a lone message.
    pub fn is_lone_reply(&self) -> bool {
        self.replies == 1 && self.items.len() == 1 + self.parts
    }

    /// Append time of the first queued reply item, if the front is one.
    pub fn front_time(&self) -> Option<Instant> {
        self.items.iter().find_map(|i| match i {
            Item::Reply { at, .. } => Some(*at),
            Item::Part { .. } | Item::Control(_) => None,
        })
    }

    /// Moves the front item, with the further parts of its message, into
    /// the outbox (copying arena bytes into the outbox's copy buffer, or
    /// referencing a shared payload).
    fn pop_into(&mut self, out: &mut Outbox, copy_threshold: usize) -> Option<Popped> {
        let (len, shared, at) = match self.items.pop_front()? {
            Item::Reply { len, shared, at } => {
                self.replies -= 1;
                (len, shared, at)
            }
            // Never at the front: a message's parts leave with it. Were
            // one there, it would go as a message of its own.
            Item::Part { len, shared } => {
                self.parts -= 1;
                (len, shared, Instant::now())
            }
            Item::Control(c) => return Some(Popped::Control(c)),
        };
        out.note_item(at);
        self.take_piece(out, len, shared, copy_threshold, at);
        while let Some(Item::Part { .. }) = self.items.front() {
            if let Some(Item::Part { len, shared }) = self.items.pop_front() {
                self.parts -= 1;
                self.take_piece(out, len, shared, copy_threshold, at);
            }
        }
        Some(Popped::Reply)
    }

    /// Moves the bytes of one piece of a message appended at `at`.
    fn take_piece(&mut self, out: &mut Outbox, len: usize, shared: Option<Arc<[u8]>>, copy_threshold: usize, at: Instant) {
        self.bytes -= len;
        match shared {
            Some(a) if a.len() >= copy_threshold => out.push_shared(a),
            Some(a) => out.push_copy(&a),
            None => {
                out.push_copy(&self.arena[self.head..self.head + len]);
                self.head += len;
                self.compact();
            }
        }
        out.mark(at);
    }

    fn compact(&mut self) {
        if self.head == self.arena.len() {
            self.arena.clear();
            self.head = 0;
        } else if self.head > 64 << 10 && self.head * 2 > self.arena.len() {
            self.arena.drain(..self.head);
            self.head = 0;
        }
    }

    /// Drops every queued item (the connection is dead).
    pub fn clear(&mut self) {
        self.items.clear();
        self.arena = Vec::new();
        self.head = 0;
        self.replies = 0;
        self.parts = 0;
        self.bytes = 0;
    }
}

/// One piece of the outbox: bytes copied into a connection buffer, or a
/// referenced payload kept alive until the send covering it completes.
enum Chunk {
    Copy(Vec<u8>),
    Shared(Arc<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Copy(v) => v,
            Chunk::Shared(a) => a,
        }
    }
}

/// Bytes taken by passes and not yet accepted by the kernel.
#[derive(Default)]
pub(crate) struct Outbox {
    chunks: VecDeque<Chunk>,
    /// Bytes of the first chunk already sent.
    head: usize,
    /// Unsent bytes in all chunks.
    pub bytes: usize,
    /// (end offset in the stream of bytes pushed, append time of its
    /// oldest item) of every batch whose bytes are not all sent yet, oldest
    /// first: the age of the oldest unsent byte (R12 oldest_unflushed),
    /// without counting a batch's spread. One per batch, not per item: a
    /// backlog of tiny messages adds no bookkeeping per message.
    marks: VecDeque<(u64, Instant)>,
    /// Whether the batch since the last flush has its mark yet.
    batch_marked: bool,
    /// Bytes ever pushed and ever accepted (the offsets of `marks`).
    pushed: u64,
    sent: u64,
    /// Append time of the oldest item added since the last flush: the
    /// wait the next flush ends (R12 max_flush_wait).
    batch_oldest: Option<Instant>,
    /// Items added since the last flush (batch density).
    items: u64,
    /// Copy buffers kept for reuse.
    spare: Vec<Vec<u8>>,
    /// Bytes the io_uring send in flight offered: its completion is short
    /// only if it took fewer. Unsent bytes alone do not say so, since a
    /// send offers at most iov_max chunks and more may wait behind them.
    offered: usize,
}

impl Outbox {
    fn note_item(&mut self, at: Instant) {
        self.items += 1;
        if self.batch_oldest.is_none() {
            self.batch_oldest = Some(at);
        }
    }

    /// Records the bytes of the item just pushed, appended at `at`, in its
    /// batch's mark.
    fn mark(&mut self, at: Instant) {
        if self.pushed == self.marks.back().map_or(self.sent, |m| m.0) {
            return; // a zero-length item
        }
        match self.marks.back_mut() {
            Some(m) if self.batch_marked => m.0 = self.pushed,
            _ => {
                self.marks.push_back((self.pushed, at));
                self.batch_marked = true;
            }
        }
    }

    /// Ends the batch (a flush takes it): how many items it held and the
    /// append time of its oldest.
    fn end_batch(&mut self) -> (u64, Option<Instant>) {
        self.batch_marked = false;
        (std::mem::take(&mut self.items), self.batch_oldest.take())
    }

    /// Append time of the oldest byte not yet accepted by the kernel.
    pub fn oldest(&self) -> Option<Instant> {
        self.marks.front().map(|m| m.1)
    }

    fn push_copy(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        // Extend the last copy buffer, unless it is the front one and
        // already partly sent: its sent prefix is released only once the
        // whole buffer is, which a steady backlog would put off forever.
        let extend = self.chunks.len() > 1 || self.head == 0;
        if let (true, Some(Chunk::Copy(v))) = (extend, self.chunks.back_mut()) {
            v.extend_from_slice(data);
        } else {
            let mut v = self.spare.pop().unwrap_or_default();
            v.extend_from_slice(data);
            self.chunks.push_back(Chunk::Copy(v));
        }
        self.bytes += data.len();
        self.pushed += data.len() as u64;
    }

    fn push_shared(&mut self, data: Arc<[u8]>) {
        if data.is_empty() {
            return;
        }
        self.bytes += data.len();
        self.pushed += data.len() as u64;
        self.chunks.push_back(Chunk::Shared(data));
    }

    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// iovecs for the unsent bytes, at most `max` of them.
    pub fn iovecs(&self, max: usize) -> Vec<libc::iovec> {
        let mut iov = Vec::with_capacity(self.chunks.len().min(max));
        for (i, c) in self.chunks.iter().take(max).enumerate() {
            let b = if i == 0 { &c.bytes()[self.head..] } else { c.bytes() };
            iov.push(libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() });
        }
        iov
    }

    /// The kernel accepted `n` bytes: drop the chunks they cover (releasing
    /// referenced payloads, R5) and keep the unsent suffix (R6).
    pub fn advance(&mut self, mut n: usize) {
        debug_assert!(n <= self.bytes);
        self.bytes -= n;
        self.sent += n as u64;
        while self.marks.front().is_some_and(|m| m.0 <= self.sent) {
            self.marks.pop_front();
        }
        while n > 0 {
            let first_len = self.chunks.front().map_or(0, |c| c.bytes().len()) - self.head;
            if n < first_len {
                self.head += n;
                break;
            }
            n -= first_len;
            self.head = 0;
            if let Some(Chunk::Copy(mut v)) = self.chunks.pop_front() {
                if self.spare.len() < 2 && v.capacity() <= 256 << 10 {
                    v.clear();
                    self.spare.push(v);
                }
            }
        }
        if self.bytes == 0 {
            debug_assert!(self.marks.is_empty());
            debug_assert!(self.chunks.iter().all(|c| c.bytes().is_empty()) || self.chunks.is_empty());
            self.chunks.clear();
            self.head = 0;
        }
    }

    /// Drops everything (connection dead; no send may be in flight).
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.spare.clear();
        self.head = 0;
        self.bytes = 0;
        self.marks.clear();
        self.pushed = 0;
        self.sent = 0;
        self.offered = 0;
        self.end_batch();
    }
}

/// Result of handing a batch to the kernel.
pub(crate) enum SendResult {
    /// sendmsg(2) accepted this many bytes.
    Sent(usize),
    /// EAGAIN: the socket buffer is full.
    WouldBlock,
    /// Submitted to io_uring; the completion reports the count later.
    Submitted,
    /// An errno other than EINTR/EAGAIN.
    Failed(i32),
}

/// Where a flush sends: sendmsg(2) now, or an io_uring submission.
pub(crate) trait Sink {
    fn send(&mut self, iov: &[libc::iovec]) -> SendResult;
}

/// How a pass ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PassEnd {
    /// Queue and outbox are empty.
    Drained,
    /// The quota was reached and flushed; items remain (R4: yield).
    Quota,
    /// A short send or EAGAIN: the suffix waits for writability (R6).
    Blocked,
    /// A send is in flight on io_uring.
    InFlight,
    /// The send failed with this errno (R9).
    Failed(i32),
    /// A close request was reached and everything before it was sent.
    CloseReached,
}

/// The limits a pass works with.
pub(crate) struct PassCfg {
    pub max_batch_bytes: usize,
    pub quota: usize,
    pub copy_threshold: usize,
    pub iov_max: usize,
}

/// Queue, outbox and counters of a connection: what a pass works on.
#[derive(Default)]
pub(crate) struct Wire {
    pub queue: Queue,
    pub out: Outbox,
    pub stats: WriterStats,
    /// The batch decision of the running pass (R2). Only `BatchGuard`
    /// sets it, and its Drop clears it on every exit path.
    batching: bool,
}

/// R2: the batch decision of one pass, made when the pass starts and
/// reset when the guard drops — on every return, early or not.
struct BatchGuard<'a> {
    flag: &'a mut bool,
}

impl<'a> BatchGuard<'a> {
    fn begin(flag: &'a mut bool, replies_queued: usize) -> Self {
        assert!(!*flag, "a previous pass left the batch decision set");
        *flag = replies_queued >= 2;
        BatchGuard { flag }
    }
    fn on(&self) -> bool {
        *self.flag
    }
}

impl Drop for BatchGuard<'_> {
    fn drop(&mut self) {
        *self.flag = false;
    }
}

impl Wire {
    /// True when nothing is queued and nothing waits in the outbox.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.out.bytes == 0
    }

    /// Bytes appended and not yet accepted by the kernel (`queued_bytes`).
    pub fn pending_bytes(&self) -> u64 {
        (self.queue.bytes + self.out.bytes) as u64
    }

    /// What the caps (R7) count: the unsent bytes, plus each queued item's
    /// bookkeeping (`ITEM_COST`), so that a flood of empty or tiny
    /// messages is bounded too.
    pub fn charged_bytes(&self) -> u64 {
        self.pending_bytes() + (self.queue.items.len() * ITEM_COST) as u64
    }

    /// Append time of the oldest byte the kernel has not taken yet (of
    /// the oldest item of its batch), queued or in the outbox.
    pub fn oldest(&self) -> Option<Instant> {
        match (self.out.oldest(), self.queue.front_time()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Drops queue and outbox; only when no send is in flight.
    pub fn clear(&mut self) {
        self.queue.clear();
        self.out.clear();
    }

    /// An io_uring send completed with `n` bytes accepted.
    pub fn completed(&mut self, n: usize) {
        self.stats.bytes_sent += n as u64;
        self.out.advance(n);
        if n < std::mem::take(&mut self.out.offered) {
            self.stats.short_sends += 1;
        }
    }

    /// One drain pass (R2–R6): takes at most `quota` items from the queue,
    /// batching when at least two reply-producing items were queued at the
    /// start, and flushes on every trigger and on every exit.
    pub fn pass(&mut self, cfg: &PassCfg, sink: &mut dyn Sink) -> PassEnd {
        let Wire { queue, out, stats, batching } = self;
        let guard = BatchGuard::begin(batching, queue.replies);
        stats.passes += 1;
        if guard.on() {
            stats.batched_passes += 1;
        }
        let mut handled = 0usize;
        while !queue.is_empty() {
            if handled == cfg.quota {
                // R3/R4: the quota ends the pass, and the pass never exits
                // with bytes left unflushed.
                return flush(out, stats, FlushReason::Quota, cfg, sink).unwrap_or(PassEnd::Quota);
            }
            handled += 1;
            match queue.pop_into(out, cfg.copy_threshold) {
                Some(Popped::Reply) => {
                    let reason = if queue.replies == 0 {
                        // The last reply-producing item is done (also the
                        // lone item of a non-batching pass).
                        Some(FlushReason::Idle)
                    } else if !guard.on() {
                        Some(FlushReason::Idle)
                    } else if out.bytes >= cfg.max_batch_bytes {
                        Some(FlushReason::Size)
                    } else if out.chunks() >= cfg.iov_max {
                        Some(FlushReason::Iovec)
                    } else {
                        None
                    };
                    if let Some(r) = reason {
                        if let Some(end) = flush(out, stats, r, cfg, sink) {
                            return end;
                        }
                    }
                }
                Some(Popped::Control(Control::Marker)) => {
                    if let Some(end) = flush(out, stats, FlushReason::Wait, cfg, sink) {
                        return end;
                    }
                }
                Some(Popped::Control(Control::Close)) => {
                    if let Some(end) = flush(out, stats, FlushReason::Close, cfg, sink) {
                        queue.unpop_close();
                        return end;
                    }
                    return PassEnd::CloseReached;
                }
                None => break,
            }
        }
        // Queue empty: whatever is left (a suffix, or a batch whose last
        // reply item was zero bytes long) goes now.
        flush(out, stats, FlushReason::Idle, cfg, sink).unwrap_or(PassEnd::Drained)
    }
}

/// Sends the outbox. `None` means everything was accepted and the pass
/// may go on; otherwise the pass ends with the returned state.
fn flush(out: &mut Outbox, stats: &mut WriterStats, reason: FlushReason, cfg: &PassCfg, sink: &mut dyn Sink) -> Option<PassEnd> {
    if out.bytes == 0 {
        // Only zero-length items: nothing to send, and they are delivered
        // all the same (items_sent must reach items). Their append time
        // goes with them: no byte waits.
        stats.items_sent += out.end_batch().0;
        return None;
    }
    reason.count(stats);
    let (items, oldest) = out.end_batch();
    stats.items_sent += items;
    stats.max_items_per_send = stats.max_items_per_send.max(items);
    // Only the items this flush carries for the first time: a suffix
    // left by a short send had its wait counted when it was first sent.
    if let Some(t) = oldest {
        stats.max_flush_wait_ns = stats.max_flush_wait_ns.max(t.elapsed().as_nanos() as u64);
    }
    // More chunks than iovecs only happens for a suffix; loop while the
    // kernel takes everything offered.
    loop {
        let iov = out.iovecs(cfg.iov_max);
        let offered: usize = iov.iter().map(|v| v.iov_len).sum();
        stats.sends += 1;
        match sink.send(&iov) {
            SendResult::Sent(n) => {
                stats.bytes_sent += n as u64;
                out.advance(n);
                if out.bytes == 0 {
                    return None;
                }
                if n < offered {
                    stats.short_sends += 1;
                    return Some(PassEnd::Blocked);
                }
            }
            SendResult::WouldBlock => {
                stats.eagain += 1;
                return Some(PassEnd::Blocked);
            }
            SendResult::Submitted => {
                stats.uring_sends += 1;
                out.offered = offered;
                return Some(PassEnd::InFlight);
            }
            SendResult::Failed(e) => return Some(PassEnd::Failed(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what each send carried; accepts up to `budget` bytes per call.
    struct Rec {
        sends: Vec<Vec<u8>>,
        budget: usize,
    }
    impl Sink for Rec {
        fn send(&mut self, iov: &[libc::iovec]) -> SendResult {
            let mut v = Vec::new();
            for i in iov {
                // SAFETY: the pass builds each iovec from a slice of the
                // outbox, which it neither changes nor frees during send().
                v.extend_from_slice(unsafe { std::slice::from_raw_parts(i.iov_base as *const u8, i.iov_len) });
            }
            if self.budget == 0 {
                return SendResult::WouldBlock;
            }
            v.truncate(self.budget);
            let n = v.len();
            self.sends.push(v);
            SendResult::Sent(n)
        }
    }

    fn cfg() -> PassCfg {
        PassCfg { max_batch_bytes: 64 << 10, quota: 100, copy_threshold: 4096, iov_max: 1024 }
    }

    #[test]
    fn control_items_do_not_make_a_batch() {
        let mut w = Wire::default();
        let now = Instant::now();
        w.queue.push_copy(b"a", now);
        w.queue.push_control(Control::Marker);
        w.queue.push_control(Control::Marker);
        let mut s = Rec { sends: vec![], budget: usize::MAX };
        assert_eq!(w.pass(&cfg(), &mut s), PassEnd::Drained);
        assert_eq!(w.stats.batched_passes, 0);
        assert_eq!(s.sends, vec![b"a".to_vec()]);
        assert!(!w.batching, "the guard resets the decision");
    }

    #[test]
    fn quota_flushes_and_every_exit_resets_the_decision() {
        let mut w = Wire::default();
        let now = Instant::now();
        for i in 0..250u32 {
            w.queue.push_copy(&i.to_le_bytes(), now);
        }
        let mut s = Rec { sends: vec![], budget: usize::MAX };
        let c = PassCfg { quota: 100, ..cfg() };
        assert_eq!(w.pass(&c, &mut s), PassEnd::Quota);
        assert!(!w.batching);
        assert_eq!(w.pass(&c, &mut s), PassEnd::Quota);
        assert_eq!(w.pass(&c, &mut s), PassEnd::Drained);
        assert_eq!(s.sends.iter().map(|v| v.len() / 4).collect::<Vec<_>>(), vec![100, 100, 50]);
        assert_eq!((w.stats.flush_quota, w.stats.flush_idle, w.stats.batched_passes), (2, 1, 3));
    }

    #[test]
    fn a_zero_length_item_alone_in_a_flush_still_counts_as_sent() {
        // Flushed alone (the pass does not batch a lone item), the empty
        // item makes no send but must still reach items_sent.
        let mut w = Wire::default();
        let now = Instant::now();
        let mut s = Rec { sends: vec![], budget: usize::MAX };
        w.queue.push_copy(b"", now);
        assert_eq!(w.pass(&cfg(), &mut s), PassEnd::Drained);
        w.queue.push_copy(b"x", now);
        assert_eq!(w.pass(&cfg(), &mut s), PassEnd::Drained);
        assert_eq!(s.sends, vec![b"x".to_vec()]);
        assert_eq!((w.stats.items_sent, w.stats.sends), (2, 1));
    }

    #[test]
    fn a_message_in_parts_is_one_item_of_a_pass() {
        // R1/R4/R12: the parts of a message count once, are lone together
        // and leave together, even with a quota of one item per pass.
        let mut w = Wire::default();
        let now = Instant::now();
        w.queue.push_copy(b"one", now);
        w.queue.push_part_copy(b"+1");
        assert!(w.queue.is_lone_reply());
        w.queue.push_copy(b"two", now);
        w.queue.push_part_shared(Arc::from(&b"+2"[..]));
        assert!(!w.queue.is_lone_reply());
        let mut s = Rec { sends: vec![], budget: usize::MAX };
        let c = PassCfg { quota: 1, ..cfg() };
        assert_eq!(w.pass(&c, &mut s), PassEnd::Quota);
        assert_eq!(w.pass(&c, &mut s), PassEnd::Drained);
        assert_eq!(s.sends, vec![b"one+1".to_vec(), b"two+2".to_vec()]);
        assert_eq!((w.stats.items_sent, w.stats.max_items_per_send, w.stats.batched_passes), (2, 1, 1));
        assert!(w.is_idle());
    }

    /// Stands for the io_uring sink: records what each submission offered.
    struct Ring {
        offered: Vec<usize>,
    }
    impl Sink for Ring {
        fn send(&mut self, iov: &[libc::iovec]) -> SendResult {
            self.offered.push(iov.iter().map(|v| v.iov_len).sum());
            SendResult::Submitted
        }
    }

    #[test]
    fn a_full_completion_with_more_left_is_not_a_short_send() {
        // iov_max 1 and referenced payloads: after an EAGAIN leaves A in
        // the outbox, the next pass adds B and offers A alone. The kernel
        // taking all of A is a full send even though B is still left; a
        // completion taking part of what it was offered is a short one.
        let mut w = Wire::default();
        let now = Instant::now();
        let c = PassCfg { copy_threshold: 1, iov_max: 1, ..cfg() };
        w.queue.push_shared(vec![1u8; 10].into(), now);
        assert_eq!(w.pass(&c, &mut Rec { sends: vec![], budget: 0 }), PassEnd::Blocked);
        w.queue.push_shared(vec![2u8; 6].into(), now);
        let mut ring = Ring { offered: vec![] };
        assert_eq!(w.pass(&c, &mut ring), PassEnd::InFlight);
        w.completed(10);
        assert_eq!(w.stats.short_sends, 0, "A was offered alone and taken whole: {:?}", w.stats);
        assert_eq!(w.pass(&c, &mut ring), PassEnd::InFlight);
        w.completed(4);
        assert_eq!(w.stats.short_sends, 1, "4 of B's 6 bytes");
        assert_eq!(w.pass(&c, &mut ring), PassEnd::InFlight);
        w.completed(2);
        assert_eq!(ring.offered, vec![10, 6, 2]);
        assert_eq!((w.stats.short_sends, w.stats.eagain, w.stats.bytes_sent), (1, 1, 16));
        assert!(w.is_idle());
    }

    #[test]
    fn short_send_keeps_the_suffix_and_order() {
        let mut w = Wire::default();
        let now = Instant::now();
        let big: Arc<[u8]> = (0..10_000u32).map(|i| i as u8).collect::<Vec<_>>().into();
        w.queue.push_copy(b"head", now);
        w.queue.push_shared(big.clone(), now);
        w.queue.push_copy(b"tail", now);
        let mut s = Rec { sends: vec![], budget: 3000 };
        assert_eq!(w.pass(&cfg(), &mut s), PassEnd::Blocked);
        assert_eq!(Arc::strong_count(&big), 2, "referenced, not copied");
        s.budget = usize::MAX;
        assert_eq!(w.pass(&cfg(), &mut s), PassEnd::Drained);
        assert_eq!(Arc::strong_count(&big), 1, "released once sent");
        let all: Vec<u8> = s.sends.concat();
        let mut want = b"head".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"tail");
        assert_eq!(all, want);
    }
}
