//! Batched socket writers and fan-out (issue #5; the contract is
//! rules R1–R12 in docs/WRITER.md, which also maps each rule to code).
//!
//! A [`Net`] owns one reactor thread and one backend (`sendmsg` + epoll,
//! or io_uring). Sockets are adopted into it as [`Writer`]s or as
//! subscribers of a [`Publisher`]. Each connection has an outbound queue of
//! items (`queue.rs`) drained in passes that follow the batching rules;
//! `conn.rs` holds the per-connection state and the caps, `reactor.rs` the
//! thread, `sendmsg.rs` and `uring.rs` the two ways bytes leave, and
//! `stats.rs` the counters.

mod conn;
mod publisher;
mod queue;
mod reactor;
mod sendmsg;
mod stats;
mod uring;

pub use conn::Writer;
pub(crate) use queue::ITEM_COST;
pub use publisher::{Publisher, PublisherStats};
pub use reactor::{CloseWait, CloseWaitHook, Net};
pub use stats::WriterStats;
pub use uring::Fallback;

use crate::error::{Error, Result};
use crate::status::keel_status_t;
use std::sync::Arc;
use std::time::Duration;

/// Which backend a [`Net`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// The default backend; `sendmsg` until benchmarks say otherwise.
    Default,
    /// Nonblocking `sendmsg` with iovecs, epoll for writability.
    Sendmsg,
    /// io_uring when the runtime probe passes, else `sendmsg`.
    IoUring,
}

/// The backend a [`Net`] actually runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sendmsg,
    IoUring,
}

/// Called on the reactor thread, once per connection, when keel closes a
/// connection on its own: a send error (status IO) or the cap policy
/// (status BUSY). Arguments: connection id, status, message.
pub type EventFn = Arc<dyn Fn(u64, keel_status_t, &str) + Send + Sync>;

/// Options of [`Net::open`].
#[derive(Clone, Default)]
pub struct NetOptions {
    pub backend: Option<BackendChoice>,
    pub on_event: Option<EventFn>,
}

/// Per-connection limits of the writer (the defaults are the contract's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterOptions {
    /// R3: a batch is flushed once it holds this many bytes.
    pub max_batch_bytes: usize,
    /// R4: items handled per drain pass before a flush and a yield.
    pub quota: usize,
    /// R5: payloads of at least this many bytes are referenced, smaller
    /// ones copied into the connection's buffer.
    pub copy_threshold: usize,
    /// R3: iovecs per send (at most IOV_MAX, 1024).
    pub iov_max: usize,
    /// R7: queued bytes above this for `soft_cap` close the connection (0: off).
    pub soft_cap_bytes: u64,
    pub soft_cap: Duration,
    /// R7: queued bytes above this close the connection at once (0: off).
    pub hard_cap_bytes: u64,
    /// R10: how long a closing connection may take to flush its queue and
    /// drain the peer's input after `shutdown(SHUT_WR)`.
    pub close_timeout: Duration,
}

/// The iovec limit of Linux (`IOV_MAX`).
pub const IOV_MAX: usize = 1024;

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_batch_bytes: 64 << 10,
            quota: 100,
            copy_threshold: 4 << 10,
            iov_max: IOV_MAX,
            soft_cap_bytes: 8 << 20,
            soft_cap: Duration::from_secs(60),
            hard_cap_bytes: 32 << 20,
            close_timeout: Duration::from_secs(2),
        }
    }
}

impl WriterOptions {
    /// R7: whether `bytes` queued (as the caps count them) exceed the hard cap.
    pub(crate) fn above_hard_cap(&self, bytes: u64) -> bool {
        self.hard_cap_bytes > 0 && bytes > self.hard_cap_bytes
    }

    pub fn validate(&self) -> Result<()> {
        if self.max_batch_bytes == 0 || self.max_batch_bytes > 64 << 20 {
            return Err(Error::invalid(format!("max_batch_bytes {} is outside 1..=64 MiB", self.max_batch_bytes)));
        }
        if self.quota == 0 || self.quota > 1_000_000 {
            return Err(Error::invalid(format!("quota {} is outside 1..=1000000", self.quota)));
        }
        if self.iov_max == 0 || self.iov_max > IOV_MAX {
            return Err(Error::invalid(format!("iov_max {} is outside 1..={IOV_MAX}", self.iov_max)));
        }
        if self.soft_cap_bytes > 0 && self.hard_cap_bytes > 0 && self.soft_cap_bytes > self.hard_cap_bytes {
            return Err(Error::invalid(format!(
                "soft_cap_bytes {} is above hard_cap_bytes {}",
                self.soft_cap_bytes, self.hard_cap_bytes
            )));
        }
        if self.soft_cap > Duration::from_secs(86_400) {
            return Err(Error::invalid("soft cap duration is above one day"));
        }
        if self.close_timeout > Duration::from_secs(600) {
            return Err(Error::invalid("close timeout is above 600 s"));
        }
        Ok(())
    }
}
