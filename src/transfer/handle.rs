//! A transfer running on its own thread, and the host's handle on it
//! (docs/TRANSFER.md, "A transfer's life"): finish, cancel, status,
//! progress, wait.

use super::control::{Control, Finish, Progress, Stage};
use super::{source, wire, Report, TransferOptions, Transfers};
use crate::error::{Error, Result};
use crate::shard::Shard;
use crate::status::*;
use parking_lot::Mutex;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A running (or settled) transfer. Dropping it cancels a transfer that
/// is not over and waits for its thread (except on that thread itself).
pub struct Transfer {
    control: Arc<Control>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The source's shard id, and the service of its engine.
    shard_id: u32,
    transfers: Arc<Transfers>,
    /// Set once `confirm_hand_over` dropped the shard: the id may name
    /// another shard of the engine later, which a second confirm must not
    /// drop.
    confirmed: Mutex<bool>,
}

impl Transfers {
    /// Starts sending `shard` (the host's open shard `shard_id` of the
    /// node's engine) to `peer` on a thread of its own ("keel-transfer")
    /// and returns its handle at once. Writes to the shard continue
    /// meanwhile. INVALID_ARGUMENT when `shard` is not the engine's open
    /// shard `shard_id` (a confirmed hand-over drops that shard from the
    /// engine) or `peer` is 0 or this node; CLOSED when `shard` is; BUSY
    /// when the node's `max_concurrent_transfers` are being sent already.
    pub fn start(self: &Arc<Self>, shard: &Shard, shard_id: u32, peer: u64, opts: &TransferOptions) -> Result<Transfer> {
        opts.validate()?;
        if peer == 0 || peer == self.node.id() {
            return Err(Error::invalid(format!("peer {peer} is 0 or this node's own id")));
        }
        if shard.is_closed() {
            return Err(Error::new(KEEL_STATUS_CLOSED, "the shard to send is closed"));
        }
        if shard.is_moved() {
            return Err(Error::new(KEEL_STATUS_MOVED, "the shard to send was handed over to another node already"));
        }
        if !self.engine.holds_open(shard_id, shard) {
            return Err(Error::invalid(format!("the shard given is not shard {shard_id} open in this node's engine")));
        }
        let max = self.node.max_concurrent_transfers();
        if self.sending.fetch_add(1, Ordering::AcqRel) >= max {
            self.sending.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::new(KEEL_STATUS_BUSY, format!("{max} transfers are being sent from this node already (max_concurrent_transfers)")));
        }
        let control = Arc::new(Control::new(shard.clone(), opts.progress.clone(), opts.auto_finish));
        let id = (self.node.id() << 24) ^ self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(super::ACK_QUEUE);
        self.waiting.lock().insert(id, (peer, tx));
        let (me, c, source, opts) = (self.clone(), control.clone(), shard.clone(), opts.clone());
        let spawned = std::thread::Builder::new().name("keel-transfer".into()).spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| source::run(&me.node, id, rx, &source, shard_id, peer, &opts, &c)))
                .unwrap_or_else(|_| Err(Error::new(KEEL_STATUS_PANIC, "the transfer panicked")));
            me.waiting.lock().remove(&id);
            if outcome.is_err() {
                // The receiver ends its side too (best effort: it also
                // ends it when a later START of the shard arrives).
                let _ = me.node.send(peer, wire::CANCEL, &wire::step(id, 0, 0));
            }
            me.sending.fetch_sub(1, Ordering::AcqRel);
            c.end(outcome);
        });
        match spawned {
            Ok(thread) => Ok(Transfer { control, thread: Mutex::new(Some(thread)), shard_id, transfers: self.clone(), confirmed: Mutex::new(false) }),
            Err(e) => {
                self.waiting.lock().remove(&id);
                self.sending.fetch_sub(1, Ordering::AcqRel);
                Err(Error::io("starting the transfer's thread", e))
            }
        }
    }
}

impl Transfer {
    /// Asks the transfer to finish with `mode` once it has caught up
    /// (`Finish`). INVALID_ARGUMENT once it is over, or for anything but
    /// a hand-over while it forwards; BUSY when a finish was asked already
    /// (by `auto_finish` too).
    pub fn finish(&self, mode: Finish) -> Result<()> {
        self.control.finish(mode)
    }

    /// Stops the transfer at its next batch boundary or ACK wait (at once
    /// while it waits for the host or forwards), and before FINISH; a
    /// FINISH already sent settles as its answer says (Failed when none
    /// comes, or when the receiver answers with an error other than
    /// PROTOCOL, such as NOT_FOUND from one that finished it and then
    /// forgot it: the receiver may own the shard). The source's WAL pin is
    /// released; the receiver keeps what it applied, still incoming (its
    /// host cannot open it), and a later transfer of the shard resumes
    /// from it by WAL delta when the source still holds the records, or
    /// replaces it by a snapshot. No-op once the transfer is over.
    pub fn cancel(&self) {
        self.control.cancel();
    }

    /// The stage, and the error when it is `Failed`.
    pub fn status(&self) -> (Stage, Option<Error>) {
        self.control.status()
    }

    pub fn progress(&self) -> Progress {
        self.control.progress()
    }

    /// Waits until the transfer is settled (`Stage::is_settled`: over, or
    /// forwarding with no hand-over or cancel asked for yet); false when
    /// `timeout` passed first.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        self.control.wait(timeout)
    }

    /// The source's report once the transfer is over (None before): Ok
    /// when it is `Done`, else the error that ended it.
    pub fn outcome(&self) -> Option<Result<Report>> {
        self.control.outcome()
    }

    /// The host confirms that the receiver owns the shard now (for
    /// example once its placement change is committed): the source's
    /// shard, which refuses writes with MOVED since the hand-over, is
    /// closed (every handle on it then answers CLOSED) and dropped from
    /// the source's engine with its files. INVALID_ARGUMENT unless the
    /// transfer is done with a hand-over; NOT_FOUND once it was dropped.
    pub fn confirm_hand_over(&self) -> Result<()> {
        match self.outcome() {
            Some(Ok(r)) if r.handed_over => {}
            _ => return Err(Error::invalid("only a transfer done with a hand-over can be confirmed")),
        }
        let mut confirmed = self.confirmed.lock();
        if *confirmed {
            return Err(Error::new(KEEL_STATUS_NOT_FOUND, format!("the hand-over of shard {} was confirmed already", self.shard_id)));
        }
        let shard = self.control.shard();
        debug_assert!(shard.is_moved(), "a handed-over shard refuses writes");
        shard.close()?;
        self.transfers.engine.drop_shard(self.shard_id)?;
        *confirmed = true;
        Ok(())
    }
}

impl Transfer {
    /// Cancels the transfer if it is not over and waits for its thread,
    /// through a shared reference: the thread's last progress callback may
    /// still call in on this transfer meanwhile (keel_transfer_free stops
    /// it before it frees the handle). Called from that callback, it
    /// cannot wait for its own thread, which ends on its own after the
    /// cancel.
    pub fn stop(&self) {
        self.control.cancel();
        let thread = self.thread.lock().take();
        if let Some(t) = thread {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.stop();
    }
}
