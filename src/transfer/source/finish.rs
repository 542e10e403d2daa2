//! The source after the backfill (docs/TRANSFER.md, "A transfer's
//! life"): it keeps streaming new writes until the host asks to finish,
//! drains the last ones under the shard's write hold, and finishes with
//! the mode asked for: a copy, a hand-over, or forwarding every later
//! write until a hand-over or a cancel.

use super::{Batcher, Link, CATCH_UP_ROUNDS};
use crate::error::{Error, Result};
use crate::status::KEEL_STATUS_PROTOCOL;
use crate::shard::{AfterWrite, Shard, WriteHold};
use crate::transfer::control::{Control, Finish, Request, Stage};
use crate::node::frame::Body;
use crate::transfer::{wire, Hook};
use crate::wal::Reader;
use std::sync::Arc;
use std::time::Instant;

pub(super) fn run(
    link: &mut Link,
    batcher: &Batcher,
    reader: Reader,
    shard: &Shard,
    control: &Arc<Control>,
    before_final_hold: Option<&Hook>,
) -> Result<()> {
    let (mut reader, mode) = catch_up(link, batcher, reader, shard)?;
    if let Some(hook) = before_final_hold {
        (hook.0)();
    }
    control.stage(Stage::Draining, &link.report);
    let hold = shard.hold_writes();
    let held = Instant::now();
    drain(link, batcher, &mut reader, shard)?;
    let last = link.report.last_version;
    // A concurrent transfer of this shard may have handed it over: under
    // the hold, nobody else can now.
    if mode != Finish::Copy && shard.is_moved() {
        return Err(crate::error::Error::new(crate::status::KEEL_STATUS_MOVED, "the shard was handed over by another transfer"));
    }
    if mode != Finish::Forward {
        send_finish(link, shard, &hold, last, mode == Finish::HandOver)?;
        // The receiver owns the shard now: with a hand-over, later writes
        // here fail with MOVED; none can slip in, the hold is still taken.
        if mode == Finish::HandOver {
            hold.hand_over();
            link.report.handed_over = true;
        }
        control.finished(mode);
        drop(hold);
        link.report.final_hold = held.elapsed();
        return Ok(());
    }
    link.simple(wire::FORWARD, &last.to_le_bytes())?;
    control.finished(Finish::Forward);
    control.forwarded(link.report.last_version);
    // Under the hold: every write after the last one drained runs the hook.
    let hook: Arc<dyn AfterWrite> = Arc::new(Forwarder(control.clone()));
    hold.set_after_write(hook.clone());
    let _unhook = Unhook(shard, hook);
    drop(hold);
    link.report.final_hold = held.elapsed();
    control.stage(Stage::Forwarding, &link.report);
    loop {
        match control.next_request() {
            Request::Cancel => return control.check(),
            Request::Idle => {}
            Request::Forward(version) => {
                // A write with a laxer durability than sync may not be
                // durable yet, and only durable records are sent.
                if shard.durable_version() < version {
                    shard.sync_wal()?;
                }
                send_durable(link, batcher, &mut reader)?;
                control.forwarded(link.report.last_version);
            }
            Request::Finish(mode) => {
                debug_assert_eq!(mode, Finish::HandOver, "only a hand-over follows forwarding");
                control.stage(Stage::Draining, &link.report);
                let hold = shard.hold_writes();
                let held = Instant::now();
                drain(link, batcher, &mut reader, shard)?;
                if shard.is_moved() {
                    return Err(crate::error::Error::new(crate::status::KEEL_STATUS_MOVED, "the shard was handed over by another transfer"));
                }
                send_finish(link, shard, &hold, link.report.last_version, true)?;
                hold.hand_over();
                link.report.handed_over = true;
                control.forwarded(link.report.last_version);
                control.finished(Finish::HandOver);
                drop(hold);
                link.report.final_hold += held.elapsed();
                return Ok(());
            }
        }
    }
}

/// Sends FINISH (`last`: the last version sent), after which the receiver
/// may own the shard. With a hand-over the MOVED mark is durable before it
/// goes out, so no crash leaves this copy writable while the receiver owns
/// the shard. When the mark or FINISH fails, the mark goes again only if
/// the shard is surely still the source's: the mark never went out (its
/// directory sync failed), or the receiver refused FINISH itself (PROTOCOL:
/// its order, body or version), which it checks before it releases the
/// shard. Otherwise (FINISH unanswered, or answered with another error:
/// the receiver may have finished; or the mark cannot be removed) the
/// shard refuses writes from now on, as after a reopen, until the host
/// decides (docs/TRANSFER.md).
fn send_finish(link: &mut Link, shard: &Shard, hold: &WriteHold<'_>, last: u64, hand_over: bool) -> Result<()> {
    // A drain with nothing left passes no batch boundary: the cancel is
    // looked at here, before anything that cannot be taken back.
    link.control.commit_finish()?;
    if hand_over {
        shard.persist_moved().inspect_err(|_| {
            if shard.unpersist_moved().is_err() {
                hold.hand_over();
            }
        })?;
    }
    match link.exchange(wire::FINISH, &Body::new(&last.to_le_bytes())).map(|ack| link.settle(ack)) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(refused)) if refused.status == KEEL_STATUS_PROTOCOL => {
            if hand_over && shard.unpersist_moved().is_err() {
                hold.hand_over();
            }
            Err(refused)
        }
        // Any other error may come after the receiver released the shard:
        // one that applied an earlier copy of this FINISH (its ACK lost) and
        // then forgot the transfer (it restarted, or has finished
        // FINISHED_MEMORY others since) answers NOT_FOUND, and one whose
        // marker removal did not sync (IO) or whose engine closed just after
        // it (CLOSED) answers that, its marker gone.
        Ok(Err(unanswered)) | Err(unanswered) => {
            if !hand_over {
                return Err(unanswered);
            }
            hold.hand_over();
            Err(Error::new(
                unanswered.status,
                format!(
                    "{}; the receiver may have finished the hand-over and own the shard: this shard refuses writes (MOVED) until the host decides",
                    unanswered.message
                ),
            ))
        }
    }
}

/// Catches up without holding writes until the host asks to finish (or
/// `auto_finish` did), then until a round sends nothing, for at most
/// `CATCH_UP_ROUNDS` rounds; returns the finish mode.
///
/// Caught up means a round found at most one batch: what the writers add
/// during one round trip fits in a batch, so a finish now holds writes for
/// about one batch. A round that found nothing at all would never come
/// under a steady writer, and the host waiting for it would wait forever.
/// Caught up and not asked to finish yet, it streams new writes as they
/// come, and stays caught up while each round still fits in one batch.
fn catch_up(link: &mut Link, batcher: &Batcher, mut reader: Reader, shard: &Shard) -> Result<(Reader, Finish)> {
    let control = link.control;
    let mut rounds = 0;
    let mut caught_up = false;
    loop {
        control.check()?;
        let asked = control.finish_asked();
        // Only durable records are read: make the logged ones durable.
        shard.sync_wal()?;
        let b = batcher.clone();
        let (r, sent) = link.pipeline(reader, move |r| b.ops(r))?;
        reader = r;
        if let Some(mode) = asked {
            rounds += 1;
            if sent == 0 || rounds >= CATCH_UP_ROUNDS {
                return Ok((reader, mode));
            }
            continue;
        }
        if sent > 1 {
            if caught_up {
                caught_up = false;
                control.stage(Stage::CatchingUp, &link.report);
            }
            continue;
        }
        if !caught_up {
            caught_up = true;
            control.stage(Stage::WaitingFinish, &link.report);
        }
        loop {
            match control.next_request() {
                Request::Cancel => control.check()?,
                Request::Finish(_) => break,
                // Only a forwarding transfer has writers waiting for it.
                Request::Forward(_) | Request::Idle => {
                    if shard.last_version() > link.report.last_version {
                        break;
                    }
                }
            }
        }
    }
}

/// The final drain, under the write hold: no write is applied while it
/// lives, so a read under it that comes back empty has seen every write.
fn drain(link: &mut Link, batcher: &Batcher, reader: &mut Reader, shard: &Shard) -> Result<()> {
    shard.sync_wal()?;
    send_durable(link, batcher, reader)
}

/// Sends every durable record left in `reader`, one batch at a time.
fn send_durable(link: &mut Link, batcher: &Batcher, reader: &mut Reader) -> Result<()> {
    while let Some(b) = batcher.ops(reader)? {
        link.send(b)?;
    }
    Ok(())
}

/// The hook of a forwarding shard: a write returns once the receiver has
/// it, or once forwarding stopped.
struct Forwarder(Arc<Control>);

impl AfterWrite for Forwarder {
    fn after_write(&self, last: u64) {
        self.0.wait_forwarded(last);
    }
}

/// Removes this transfer's forwarding hook however forwarding ends.
struct Unhook<'a>(&'a Shard, Arc<dyn AfterWrite>);

impl Drop for Unhook<'_> {
    fn drop(&mut self) {
        self.0.clear_after_write(&self.1);
    }
}
