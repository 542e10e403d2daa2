//! The thread that runs the receiving side's steps.
//!
//! A step can take long: BEGIN creates the incoming shard, an install may
//! wait for a seal, SNAPSHOT_END seals what was installed, OPS waits for
//! the receiver's WAL to be durable. The node calls the transfer service
//! on the connection's reader thread, which also answers and sends that
//! connection's heartbeats: a step run there kept the reader from both,
//! so a step longer than the peer's silence limit (`heartbeat_interval` ×
//! `heartbeat_misses`) made the peer drop the connection. The reader now
//! only hands the step over; this thread runs the steps of every
//! reception of the node one after another, in the order the readers
//! handed them over (each reception's steps come in order on one
//! connection, and a correct source has one in flight).
//!
//! It also ends the receptions of a source that went away: the node
//! tells the service when a ready connection ended, behind that
//! connection's steps in the same queue, and a source with no connection
//! here a silence limit later (`Node::silence_limit`) loses its
//! receptions (`Receiver::reap`), each once its step in progress is done.

use super::receiver::Receiver;
use super::wire;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::node::Node;
use crossbeam_channel::{RecvTimeoutError, Sender};
use parking_lot::Mutex;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Steps handed over and not yet run, at most: a reader that finds the
/// queue full waits (as it used to wait for the step itself), so a node
/// holds at most this many received step frames besides its readers'.
const STEP_QUEUE: usize = 4;

/// Name of the thread.
const WORKER_NAME: &str = "keel-transfer-recv";

/// What the node's readers hand over.
enum Received {
    /// A step as its connection's reader received it.
    Step { peer: u64, ty: u16, payload: Vec<u8> },
    /// A ready connection to this peer ended.
    Gone(u64),
}

pub(super) struct StepWorker {
    /// None once closed: steps handed over after that are dropped (the
    /// node is closed, so none is).
    queue: Mutex<Option<Sender<Received>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl StepWorker {
    pub fn start(node: Arc<Node>, engine: Arc<Engine>, receiver: Arc<Receiver>) -> Result<StepWorker> {
        let (tx, rx) = crossbeam_channel::bounded::<Received>(STEP_QUEUE);
        let thread = std::thread::Builder::new()
            .name(WORKER_NAME.into())
            .spawn(move || {
                let linger = node.silence_limit();
                let ready = |peer| node.is_ready(peer);
                loop {
                    // Due receptions end first, so a stream of steps from
                    // other peers does not hold them off. A panic here or
                    // in a step (which then goes unanswered: its source
                    // times out and sends it again) does not end the
                    // thread every later step needs.
                    let next = std::panic::catch_unwind(AssertUnwindSafe(|| receiver.reap(&engine, linger, &ready)));
                    let got = match next.ok().flatten() {
                        Some(at) => rx.recv_deadline(at),
                        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    };
                    match got {
                        Ok(Received::Step { peer, ty, payload }) => {
                            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| run(&node, &engine, &receiver, peer, ty, &payload)));
                        }
                        Ok(Received::Gone(peer)) => receiver.peer_gone(peer),
                        Err(RecvTimeoutError::Timeout) => {}
                        // The queue's sender was dropped (`close`) and every
                        // step handed over before that has run.
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            })
            .map_err(|e| Error::io("spawn the transfer step thread", e))?;
        Ok(StepWorker { queue: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) })
    }

    /// Hands a step over (on the connection's reader thread).
    pub fn hand_over(&self, peer: u64, ty: u16, payload: &[u8]) {
        self.queue_up(Received::Step { peer, ty, payload: payload.to_vec() });
    }

    /// Hands over that a ready connection to `peer` ended (on that
    /// connection's reader thread, after its last step).
    pub fn peer_gone(&self, peer: u64) {
        self.queue_up(Received::Gone(peer));
    }

    fn queue_up(&self, r: Received) {
        // The sender is cloned out of the lock: a full queue must not
        // hold `close`, or another reader, behind this one.
        let Some(tx) = self.queue.lock().clone() else { return };
        let _ = tx.send(r);
    }

    /// Runs the steps handed over so far and ends the thread, waiting for
    /// it. Called once the node is closed (its readers hand nothing over
    /// any more), never on one of the node's threads; idempotent. Dropped
    /// without it, the worker still runs what was handed over and ends,
    /// unwaited: a drop may happen on a reader thread (the handler holds
    /// the service while it hands a step over), which the worker, holding
    /// the node, may be the one to join.
    pub fn close(&self) {
        drop(self.queue.lock().take());
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// One step: its ACK, then the entries it left to install after the ACK.
fn run(node: &Node, engine: &Engine, receiver: &Receiver, peer: u64, ty: u16, payload: &[u8]) {
    let max = node.max_concurrent_transfers();
    if let Some((ack, later)) = receiver.on_step(engine, max, &|| node.peers(), peer, ty, payload) {
        // A lost ACK times the source out; nothing else to do here.
        let _ = node.send(peer, wire::ACK, &ack.encode());
        if let Some(later) = later {
            receiver.install_after(later);
        }
    }
}
