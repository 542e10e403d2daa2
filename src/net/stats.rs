//! R12: the counters of one connection. They are plain integers updated
//! under the connection's lock (every change already happens there), and
//! copied out by `Writer::stats`.

/// Counters of one writer connection (R12). Batch density is
/// `items_sent / sends`; sends per delivered message is its inverse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Send calls issued: sendmsg(2) syscalls plus io_uring SENDMSG ops.
    pub sends: u64,
    /// Of `sends`, those submitted to io_uring.
    pub uring_sends: u64,
    /// Sends made on the caller's thread for a lone message on an idle
    /// connection (R1).
    pub immediate_sends: u64,
    /// Bytes the kernel accepted.
    pub bytes_sent: u64,
    /// Messages appended: one each, also for a message appended in pieces
    /// (`Writer::send_parts`).
    pub items: u64,
    /// Messages handed to a send (each counted once); reaches `items` once
    /// everything appended went out.
    pub items_sent: u64,
    /// Control items appended (markers, close requests).
    pub control_items: u64,
    /// Drain passes run, and those that decided to batch (R2).
    pub passes: u64,
    pub batched_passes: u64,
    /// Flushes by reason (R3/R4/R10); every flush is one send.
    pub flush_idle: u64,
    pub flush_size: u64,
    pub flush_iovec: u64,
    pub flush_quota: u64,
    pub flush_wait: u64,
    pub flush_close: u64,
    /// Sends the kernel took only part of, and sends refused with EAGAIN (R6).
    pub short_sends: u64,
    pub eagain: u64,
    /// Times the connection waited for writability (R6).
    pub writable_waits: u64,
    /// Most items one send carried.
    pub max_items_per_send: u64,
    /// Bytes appended but not yet accepted by the kernel (gauge).
    pub queued_bytes: u64,
    /// Age of the oldest byte the kernel has not taken yet (counted from the
    /// append of the oldest item of its batch), in nanoseconds (gauge; 0 when none).
    pub oldest_unflushed_ns: u64,
    /// Longest time any byte waited between its append and the send that
    /// first carried it, in nanoseconds.
    pub max_flush_wait_ns: u64,
}

/// Why a batch was flushed (R3, R4, R10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlushReason {
    /// The last reply-producing item of the queue is done (or the lone one).
    Idle,
    /// The batch reached max_batch_bytes.
    Size,
    /// The batch reached the iovec limit.
    Iovec,
    /// The pass handled its quota of items.
    Quota,
    /// The pass stops at a marker (a fence) and everything before it goes first.
    Wait,
    /// A close request: flush before shutdown.
    Close,
}

impl FlushReason {
    pub(crate) fn count(self, s: &mut WriterStats) {
        match self {
            FlushReason::Idle => s.flush_idle += 1,
            FlushReason::Size => s.flush_size += 1,
            FlushReason::Iovec => s.flush_iovec += 1,
            FlushReason::Quota => s.flush_quota += 1,
            FlushReason::Wait => s.flush_wait += 1,
            FlushReason::Close => s.flush_close += 1,
        }
    }
}
