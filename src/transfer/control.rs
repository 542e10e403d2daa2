//! What the host and a running transfer share (docs/TRANSFER.md, "A
//! transfer's life"): the stage and the error, the progress counters, the
//! host's requests (finish with a mode, cancel) and, while the source
//! forwards writes, how far the receiver has them.
//!
//! One mutex and one condition variable carry all of it: the transfer's
//! thread waits on it for a request or a forwarded write, and the host
//! (`Transfer::wait`) and the writers of a forwarding shard wait on it
//! for the transfer.

use super::clock::Clock;
use super::Report;
use crate::error::{Error, Result};
use crate::shard::Shard;
use crate::status::*;
use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a transfer is. The order is the order a transfer goes through;
/// `Forwarding`, `Done`, `Failed` and `Cancelled` are *settled*: nothing
/// changes any more until the host asks for something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Stage {
    /// Asking the receiver (START) and choosing the method.
    #[default]
    Connecting,
    /// Sending the snapshot, or the WAL delta's first records.
    Backfill,
    /// Sending the WAL records written since, without holding writes.
    CatchingUp,
    /// Caught up; new writes are still streamed as they come, until the
    /// host calls `finish`.
    WaitingFinish,
    /// The final drain under the shard's write hold.
    Draining,
    /// Finished with `Finish::Forward`: every write to the source is sent
    /// to the receiver before it returns.
    Forwarding,
    Done,
    Failed,
    Cancelled,
}

impl Stage {
    pub fn is_settled(self) -> bool {
        self >= Stage::Forwarding
    }

    pub fn is_over(self) -> bool {
        self >= Stage::Done
    }
}

/// How a transfer ends once the receiver has caught up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The receiver gets a copy as of the finish; the source's shard stays
    /// writable and is no longer sent.
    Copy,
    /// The receiver owns the shard; the source's shard refuses writes
    /// with MOVED.
    HandOver,
    /// Every later write to the source's shard is also applied on the
    /// receiver before it returns, until the host hands the shard over
    /// (`finish(HandOver)`) or cancels.
    Forward,
}

/// A transfer's progress: its stage and its counters so far.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub stage: Stage,
    /// WAL records still to send plus those sent: `report.ops` plus the
    /// source's last version minus the last version sent. It grows while
    /// writes continue. Snapshot entries have no total known ahead.
    pub ops_total: u64,
    pub report: Report,
}

/// The progress callback: called on the transfer's own thread
/// ("keel-transfer") after every acknowledged batch and at every change
/// of stage; it must not call back into the transfer's `finish`, `wait`
/// or `cancel` in a way that waits for the transfer (`wait` would never
/// return), and should be quick: the transfer waits for it.
#[derive(Clone)]
pub struct ProgressFn(pub Arc<dyn Fn(&Progress) + Send + Sync>);

impl std::fmt::Debug for ProgressFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressFn")
    }
}

/// How often a caught-up transfer looks for new writes to stream.
const POLL: Duration = Duration::from_millis(10);

/// The longest slice of a `pause` between two looks for a cancel.
const PAUSE_SLICE: Duration = Duration::from_millis(50);

#[derive(Default)]
struct State {
    progress: Progress,
    /// The last stage whose progress callback has returned (the stage
    /// itself when there is no callback): `wait` goes by it, so the
    /// callback of the settling change has run when `wait` returns.
    reported: Stage,
    error: Option<Error>,
    /// The host's finish request, taken by the transfer when it acts on it.
    finish: Option<Finish>,
    /// The finish mode in effect (Forward while forwarding).
    finished_with: Option<Finish>,
    cancelled: bool,
    /// FINISH is going out (`commit_finish`): the receiver may own the
    /// shard from then on, so a cancel no longer settles it CANCELLED.
    finish_sent: bool,
    /// Forwarding: the last version a writer waits for, and the last one
    /// the receiver has.
    wanted: u64,
    forwarded: u64,
    /// The final report, once over.
    outcome: Option<Result<Report>>,
}

/// What the transfer's thread finds when it waits.
pub(super) enum Request {
    Cancel,
    Finish(Finish),
    /// Forwarding: a writer waits for this version.
    Forward(u64),
    /// Nothing yet (the poll interval passed).
    Idle,
}

pub(super) struct Control {
    state: Mutex<State>,
    changed: Condvar,
    shard: Shard,
    on_progress: Option<ProgressFn>,
    /// Dropped by `cancel`, which wakes an ACK wait at once.
    cancel_tx: Mutex<Option<Sender<()>>>,
    cancel_rx: Receiver<()>,
}

fn cancelled() -> Error {
    Error::new(KEEL_STATUS_CLOSED, "the transfer was cancelled")
}

impl Control {
    pub fn new(shard: Shard, on_progress: Option<ProgressFn>, auto_finish: Option<Finish>) -> Control {
        let (tx, rx) = crossbeam_channel::bounded(0);
        Control {
            state: Mutex::new(State { finish: auto_finish, ..State::default() }),
            changed: Condvar::new(),
            shard,
            on_progress,
            cancel_tx: Mutex::new(Some(tx)),
            cancel_rx: rx,
        }
    }

    /// The source's shard.
    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    // ---- the host's side ----

    /// Asks the transfer to finish with `mode` once caught up. A second
    /// request is BUSY, except `HandOver` while forwarding.
    pub fn finish(&self, mode: Finish) -> Result<()> {
        let mut s = self.state.lock();
        if s.progress.stage.is_over() || s.cancelled {
            return Err(Error::invalid(format!("the transfer has ended ({:?})", s.progress.stage)));
        }
        if s.finished_with == Some(Finish::Forward) && mode != Finish::HandOver {
            return Err(Error::invalid("the transfer forwards writes already; it can only hand the shard over now"));
        }
        if let Some(asked) = s.finish {
            return Err(Error::new(KEEL_STATUS_BUSY, format!("a finish ({asked:?}) was asked for already")));
        }
        s.finish = Some(mode);
        self.changed.notify_all();
        Ok(())
    }

    /// Stops the transfer at its next batch boundary or ACK wait. No-op
    /// once it is over.
    pub fn cancel(&self) {
        let mut s = self.state.lock();
        if !s.progress.stage.is_over() {
            s.cancelled = true;
            self.cancel_tx.lock().take();
            self.changed.notify_all();
        }
    }

    pub fn status(&self) -> (Stage, Option<Error>) {
        let s = self.state.lock();
        (s.progress.stage, s.error.clone())
    }

    pub fn progress(&self) -> Progress {
        self.state.lock().progress.clone()
    }

    /// Waits until the transfer is settled and no finish or cancel it was
    /// asked for is pending (a hand-over or a cancel asked while
    /// forwarding is waited for); false when `timeout` passed first. A
    /// timeout too long to be a time (Duration::MAX) waits without one.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut s = self.state.lock();
        let settled = |s: &State| s.reported.is_over() || (s.reported.is_settled() && s.finish.is_none() && !s.cancelled);
        while !settled(&s) {
            match deadline {
                None => self.changed.wait(&mut s),
                Some(d) => {
                    if self.changed.wait_until(&mut s, d).timed_out() && !settled(&s) {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// The final report (None until the transfer is over).
    pub fn outcome(&self) -> Option<Result<Report>> {
        self.state.lock().outcome.clone()
    }

    // ---- the transfer's side ----

    /// CLOSED ("cancelled") once the host cancelled.
    pub fn check(&self) -> Result<()> {
        if self.state.lock().cancelled {
            return Err(cancelled());
        }
        Ok(())
    }

    /// FINISH is about to go out: CLOSED ("cancelled") when the host
    /// cancelled first, so the cancel stops the transfer before the step
    /// it could not recall. From here the transfer settles as FINISH's
    /// answer says: an unanswered FINISH may have released the shard to
    /// the receiver's host, which CANCELLED would deny.
    pub fn commit_finish(&self) -> Result<()> {
        let mut s = self.state.lock();
        if s.cancelled {
            return Err(cancelled());
        }
        s.finish_sent = true;
        Ok(())
    }

    /// Waits for the receiver's ACK on `acks`, up to `timeout` (None when
    /// it passed); a cancel ends the wait at once.
    pub fn recv_ack<T>(&self, acks: &Receiver<T>, timeout: Duration) -> Result<Option<T>> {
        crossbeam_channel::select! {
            recv(acks) -> a => a.map(Some).map_err(|_| Error::new(KEEL_STATUS_CLOSED, "the transfer service stopped")),
            recv(self.cancel_rx) -> _ => Err(cancelled()),
            default(timeout) => Ok(None),
        }
    }

    /// Waits `d` on `clock` (a retry's backoff, the bandwidth cap's debt)
    /// in slices, so that a cancel ends the wait within one slice; a fake
    /// clock is moved on by the same total.
    pub fn pause(&self, clock: &dyn Clock, d: Duration) -> Result<()> {
        let mut left = d;
        while !left.is_zero() {
            self.check()?;
            let slice = left.min(PAUSE_SLICE);
            clock.sleep(slice);
            left -= slice;
        }
        self.check()
    }

    /// Moves to `stage` (if it is a change) and reports the progress.
    pub fn stage(&self, stage: Stage, report: &Report) {
        self.publish(Some(stage), report);
    }

    /// Reports the progress after an acknowledged batch.
    pub fn sent(&self, report: &Report) {
        self.publish(None, report);
    }

    fn publish(&self, stage: Option<Stage>, report: &Report) {
        let total = report.ops + self.shard.last_version().saturating_sub(report.last_version);
        let p = {
            let mut s = self.state.lock();
            if let Some(stage) = stage {
                s.progress.stage = stage;
            }
            s.progress.ops_total = total;
            s.progress.report = report.clone();
            self.changed.notify_all();
            s.progress.clone()
        };
        self.report(p);
    }

    /// Runs the progress callback, then marks its stage reported.
    fn report(&self, p: Progress) {
        if let Some(f) = &self.on_progress {
            // A panicking callback must not kill the transfer's thread
            // before it settles (its slot and `wait` depend on it).
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (f.0)(&p)));
        }
        let mut s = self.state.lock();
        s.reported = p.stage;
        self.changed.notify_all();
    }

    /// The host's next request, waiting up to the poll interval (forever
    /// while forwarding: writers wake it). A forward request comes before
    /// a finish, so a hand-over sends what writers wait for first.
    pub fn next_request(&self) -> Request {
        let mut s = self.state.lock();
        loop {
            if s.cancelled {
                return Request::Cancel;
            }
            if s.wanted > s.forwarded {
                return Request::Forward(s.wanted);
            }
            if let Some(mode) = s.finish {
                let forwarding = s.finished_with == Some(Finish::Forward);
                if !forwarding || mode == Finish::HandOver {
                    return Request::Finish(mode);
                }
            }
            if s.finished_with != Some(Finish::Forward) {
                if self.changed.wait_for(&mut s, POLL).timed_out() {
                    return Request::Idle;
                }
            } else {
                self.changed.wait(&mut s);
            }
        }
    }

    /// The finish the transfer acts on now (None: keep catching up).
    pub fn finish_asked(&self) -> Option<Finish> {
        let s = self.state.lock();
        s.finish.filter(|_| s.finished_with.is_none())
    }

    /// The transfer finished with `mode`; a finish asked again later is a
    /// new request (only a hand-over after forwarding).
    pub fn finished(&self, mode: Finish) {
        let mut s = self.state.lock();
        s.finished_with = Some(mode);
        s.finish = None;
        // Writers waiting for forwarded versions look again.
        self.changed.notify_all();
    }

    /// Forwarding: the receiver has every version up to `version`.
    pub fn forwarded(&self, version: u64) {
        let mut s = self.state.lock();
        s.forwarded = s.forwarded.max(version);
        self.changed.notify_all();
    }

    /// A writer of the forwarding shard: waits until the receiver has
    /// `version`, or forwarding stopped (the transfer failed, was
    /// cancelled or handed the shard over).
    pub fn wait_forwarded(&self, version: u64) {
        let mut s = self.state.lock();
        if s.finished_with != Some(Finish::Forward) || s.progress.stage.is_over() {
            return;
        }
        s.wanted = s.wanted.max(version);
        self.changed.notify_all();
        while s.forwarded < version && s.finished_with == Some(Finish::Forward) && !s.progress.stage.is_over() {
            self.changed.wait(&mut s);
        }
    }

    /// The transfer's thread ends: the stage settles on Done, Cancelled
    /// (a cancel asked for before FINISH went out, whatever error it
    /// caused) or Failed.
    pub fn end(&self, outcome: Result<Report>) {
        let p = {
            let mut s = self.state.lock();
            let stage = match &outcome {
                Ok(_) => Stage::Done,
                Err(_) if s.cancelled && !s.finish_sent => Stage::Cancelled,
                Err(_) => Stage::Failed,
            };
            s.progress.stage = stage;
            if let Ok(r) = &outcome {
                s.progress.report = r.clone();
                s.progress.ops_total = r.ops;
            }
            if stage == Stage::Failed {
                s.error = outcome.as_ref().err().cloned();
            }
            s.outcome = Some(outcome);
            self.changed.notify_all();
            s.progress.clone()
        };
        self.report(p);
    }
}
