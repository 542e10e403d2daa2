//! Shard transfer between nodes (issue #11 §2–§3; docs/TRANSFER.md):
//! the source streams a shard (a snapshot, or the WAL records a receiver
//! lacks) over the node transport while writes continue, then drains the
//! last writes under the shard's write hold; the receiver applies
//! everything with its original versions.
//!
//! One file per part: `wire.rs` (frames), `source.rs` (the sending side:
//! method choice, pipelined backfill; `source/finish.rs`: catching up,
//! the final drain and the finish modes), `receiver.rs` (the receiving
//! side), `control.rs` (what the host and a running transfer share),
//! `handle.rs` (the host's handle on a transfer running on its own
//! thread), `worker.rs` (the thread that runs the steps received) and
//! `digest.rs` (the content digest both sides compare); for faults,
//! `retry.rs` (resending a step), `pace.rs` (the bandwidth cap) and
//! `clock.rs` (the time both wait on).

mod clock;
mod control;
mod digest;
mod handle;
mod pace;
mod receiver;
mod retry;
mod source;
pub mod wire;
mod worker;

pub use clock::{Clock, RealClock};
pub use control::{Finish, Progress, ProgressFn, Stage};
pub use digest::shard_digest;
pub use handle::Transfer;
pub use receiver::ReceiverStats;
pub use retry::Retry;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::node::{Node, Service};
use crate::shard::Shard;
use crate::status::*;
use crossbeam_channel::Sender;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How the source asks to send a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A consistent snapshot, then the WAL records after it.
    Snapshot,
    /// Only the WAL records after the receiver's last version; falls back
    /// to a snapshot when they are not all retained or the histories differ.
    WalDelta,
}

#[derive(Debug, Clone)]
pub struct TransferOptions {
    pub method: Method,
    /// A batch holds at most this many bytes of entries or records (and
    /// always fits a frame), except that a single larger one travels alone.
    pub max_batch_bytes: usize,
    pub max_batch_records: usize,
    /// How long the source waits for the receiver's answer to one step.
    pub ack_timeout: Duration,
    /// Finish with this mode as soon as the receiver has caught up; None:
    /// keep streaming new writes until the host calls `Transfer::finish`.
    /// Default `Some(Finish::Copy)`.
    pub auto_finish: Option<Finish>,
    /// Called with the progress on the transfer's thread (`ProgressFn`).
    pub progress: Option<ProgressFn>,
    /// How a step that the transport lost is sent again.
    pub retry: Retry,
    /// What the retry backoff and the bandwidth cap wait on.
    pub clock: Arc<dyn Clock>,
    /// Called once after the last read made without the write hold, just
    /// before the final drain takes it (tests slip a write into that gap).
    pub before_final_hold: Option<Hook>,
    /// Read the next batch while the current one is sent (default true).
    /// False runs the same steps one after another (read a batch, send it,
    /// wait for its ACK, read the next): the baseline the benchmark
    /// compares the pipeline with.
    pub pipeline: bool,
}

/// A callback of `TransferOptions`.
#[derive(Clone)]
pub struct Hook(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            method: Method::Snapshot,
            max_batch_bytes: 1 << 20,
            max_batch_records: 1024,
            ack_timeout: Duration::from_secs(30),
            auto_finish: Some(Finish::Copy),
            progress: None,
            retry: Retry::default(),
            clock: Arc::new(RealClock::new()),
            before_final_hold: None,
            pipeline: true,
        }
    }
}

impl TransferOptions {
    pub fn validate(&self) -> Result<()> {
        if self.max_batch_bytes < 4096 {
            return Err(Error::invalid(format!("max_batch_bytes {} is below 4096", self.max_batch_bytes)));
        }
        if self.max_batch_records == 0 || self.max_batch_records > u32::MAX as usize {
            return Err(Error::invalid(format!("max_batch_records {} is outside 1..=u32::MAX", self.max_batch_records)));
        }
        if self.ack_timeout.is_zero() || self.ack_timeout > retry::MAX_WAIT {
            return Err(Error::invalid(format!("ack_timeout {:?} is not between 1 ms and a day", self.ack_timeout)));
        }
        self.retry.validate()
    }
}

/// What a finished transfer did (the source's view).
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// True when the shard went as a snapshot (asked for, or fallen back to).
    pub snapshot: bool,
    /// Why a WAL delta fell back to a snapshot.
    pub fallback: Option<String>,
    /// The snapshot's version, when one was sent.
    pub snapshot_version: Option<u64>,
    /// The receiver's version when the transfer started (WAL delta: the
    /// records after it were sent), as its START showed it; 0 when it had
    /// no shard to build on, and for a transfer asked as a snapshot, whose
    /// START does not open the receiver's shard (the snapshot replaces
    /// whatever it holds, so its version is never looked at). A WAL delta
    /// that fell back to a snapshot reports it.
    pub receiver_had: u64,
    /// The last version sent: the shard's last version at the finish.
    pub last_version: u64,
    /// Batches, snapshot entries and WAL records sent, each counted once
    /// however often the transport made its step be sent again.
    pub batches: u64,
    pub entries: u64,
    pub ops: u64,
    /// Bytes of step frames put on the wire, every retry's copy included:
    /// what the transfer cost the network, not the size of the shard.
    pub bytes: u64,
    /// Time spent reading batches against time sending them (until acked).
    pub read_time: Duration,
    pub send_time: Duration,
    /// How long writes were held off for the final drain (both drains
    /// when a hand-over followed forwarding).
    pub final_hold: Duration,
    /// The shard was handed over (`Finish::HandOver`).
    pub handed_over: bool,
    /// Most batches the source held at once (built, in flight or being read).
    pub max_batches_in_memory: usize,
    /// Steps sent again after the transport lost them (`TransferOptions::retry`).
    pub retries: u64,
    /// Time spent waiting for the bandwidth cap, on `TransferOptions::clock`.
    pub paced: Duration,
    /// PART steps: pieces of batches too large for one frame (a single
    /// entry or record), sent ahead of their last piece.
    pub parts: u64,
}

/// ACKs a sending transfer may have queued and not yet read: its step in
/// flight is answered once (again for each retry), so a handful covers
/// every copy a retry leaves; more are a peer's flood and are dropped.
const ACK_QUEUE: usize = 16;

/// The transfer service of one node: sends shards of the host's choosing
/// and receives the shards the host announced, into `engine`.
pub struct Transfers {
    node: Arc<Node>,
    engine: Arc<Engine>,
    /// The source's transfers waiting for an ACK, by transfer id: the peer
    /// each sends to (an ACK from another node is not its answer) and a
    /// queue of at most ACK_QUEUE answers (`on_frame`).
    waiting: Mutex<HashMap<u64, (u64, Sender<wire::Ack>)>>,
    next_id: AtomicU64,
    /// Transfers this node is sending now.
    sending: AtomicUsize,
    receiver: Arc<receiver::Receiver>,
    /// Runs the steps the node's readers receive (`worker.rs`).
    steps: worker::StepWorker,
}

impl Transfers {
    /// Starts the transfer service on `node`, receiving into `engine`
    /// (it installs the node's transfer handler and starts the thread that
    /// runs received steps: IO when it cannot start).
    pub fn attach(node: Arc<Node>, engine: Arc<Engine>) -> Result<Arc<Transfers>> {
        let receiver = Arc::new(receiver::Receiver::default());
        let steps = worker::StepWorker::start(node.clone(), engine.clone(), receiver.clone())?;
        let t = Arc::new(Transfers {
            node: node.clone(),
            engine,
            waiting: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(first_id()),
            sending: AtomicUsize::new(0),
            receiver,
            steps,
        });
        let weak: Weak<Transfers> = Arc::downgrade(&t);
        node.set_handler(
            Service::Transfer,
            Some(Arc::new(move |peer, ty, payload: &[u8]| {
                if let Some(t) = weak.upgrade() {
                    t.on_frame(peer, ty, payload);
                }
            })),
        );
        // After the connection's last step, in the same queue: the
        // receptions of a source that does not come back end (worker.rs).
        let weak: Weak<Transfers> = Arc::downgrade(&t);
        node.set_peer_gone(
            Service::Transfer,
            Some(Arc::new(move |peer| {
                if let Some(t) = weak.upgrade() {
                    t.steps.peer_gone(peer);
                }
            })),
        );
        Ok(t)
    }

    /// Runs the steps received so far and stops the thread that runs them,
    /// waiting for it. Call it once the node is closed (`Node::close`),
    /// not on one of the node's threads: steps received after it are
    /// dropped unanswered. Dropping the service stops the thread too,
    /// without waiting for it.
    pub fn close(&self) {
        self.steps.close();
    }

    /// Announces that `from_peer` may send shard `shard` here; anything
    /// not announced is refused and counted. An announcement is used up
    /// when a transfer of it finishes.
    pub fn expect(&self, shard: u32, from_peer: u64) {
        self.receiver.expect(shard, from_peer);
    }

    /// Sends `shard` (the host's open shard `shard_id`) to `peer` and
    /// returns once the receiver holds everything durably: `start`, then
    /// `wait`. `opts.auto_finish` must be a copy or a hand-over. BUSY when
    /// the node's `max_concurrent_transfers` are being sent already. A
    /// step the transport loses is sent again (`TransferOptions::retry`);
    /// when the retries run out the transfer fails, and the receiver keeps
    /// what it acknowledged for the next one to build on.
    pub fn send_shard(self: &Arc<Self>, shard: &Shard, shard_id: u32, peer: u64, opts: &TransferOptions) -> Result<Report> {
        match opts.auto_finish {
            Some(Finish::Copy) | Some(Finish::HandOver) => {}
            other => {
                return Err(Error::invalid(format!(
                    "send_shard waits for the end of the transfer: auto_finish must be a copy or a hand-over, not {other:?}"
                )))
            }
        }
        let t = self.start(shard, shard_id, peer, opts)?;
        t.wait(None);
        t.outcome().unwrap_or_else(|| Err(Error::new(KEEL_STATUS_PANIC, "the transfer settled without an outcome")))
    }

    pub fn receiver_stats(&self) -> ReceiverStats {
        self.receiver.stats()
    }

    fn on_frame(&self, peer: u64, ty: u16, payload: &[u8]) {
        if ty == wire::ACK {
            match wire::Ack::decode(payload) {
                Ok(ack) => {
                    // A full queue drops the ACK: the source's current step
                    // is answered by one ACK (a copy for each retry), so a
                    // full queue is a peer sending ACKs nobody asked for;
                    // should the one awaited be lost with them, the step
                    // times out and is sent again.
                    if let Some((_, tx)) = self.waiting.lock().get(&ack.id).filter(|(to, _)| *to == peer) {
                        let _ = tx.try_send(ack);
                    }
                }
                Err(_) => self.receiver.note_malformed(),
            }
            return;
        }
        self.steps.hand_over(peer, ty, payload);
    }
}

/// Where this process starts numbering its transfers: a receiver takes a
/// START under an id it is still receiving as a copy of that START, so a
/// restarted source must not reuse the ids of the one before.
fn first_id() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (now.as_nanos() as u64) << 8
}

/// The status a receiver's failure carries back to the source.
fn failed(ack: &wire::Ack) -> Error {
    // OK or a code this keel does not know is the receiver's mistake: a
    // host is never handed a status outside the KEEL_STATUS_* values.
    let status = match ack.status {
        KEEL_STATUS_OK => KEEL_STATUS_PROTOCOL,
        s if !crate::status::is_known(s) => KEEL_STATUS_PROTOCOL,
        s => s,
    };
    Error::new(status, format!("the receiver answered step {}: {}", ack.step, ack.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(status: keel_status_t) -> wire::Ack {
        wire::Ack { id: 1, step: 3, status, version: 0, crc: None, message: "no".into() }
    }

    /// A receiver's refusal reaches the host with its status, unless the
    /// status is OK or no KEEL_STATUS_* value: then PROTOCOL.
    #[test]
    fn a_refusal_keeps_its_status_unless_it_is_not_one() {
        assert_eq!(failed(&ack(KEEL_STATUS_NO_SPACE)).status, KEEL_STATUS_NO_SPACE);
        assert_eq!(failed(&ack(KEEL_STATUS_OK)).status, KEEL_STATUS_PROTOCOL);
        let e = failed(&ack(999));
        assert_eq!(e.status, KEEL_STATUS_PROTOCOL);
        assert!(e.message.contains("step 3"), "{e}");
    }
}
