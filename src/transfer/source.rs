//! The sending side (docs/TRANSFER.md, "Stages"): the method choice, the
//! snapshot, the pipelined backfill (the next batch is read while the
//! current one is sent; one send in flight) and the final drain under
//! the shard's write hold.

use super::clock::Clock;
use super::control::{Control, Stage};
use super::pace::Pace;
use super::retry::{self, Retry};
use super::wire::{self, Ack, STEP_HEADER};
use super::{failed, Method, Report, TransferOptions};
use crate::error::{Error, Result};
use crate::node::frame::Body;
use crate::node::Node;
use crate::shard::{Shard, Snapshot};
use crate::status::*;
use crate::wal::{Pin, Reader};
use crossbeam_channel::Receiver;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod finish;

/// Backfill rounds (catch up, sync the WAL, catch up again) after the
/// finish was asked for, before the final drain takes the write hold
/// whatever is left.
const CATCH_UP_ROUNDS: usize = 8;

/// A snapshot copies the appendable segment's keys up to this size; a
/// bigger one is sealed into a table first, which the snapshot shares.
const SNAPSHOT_COPY_BYTES: usize = 1 << 20;

/// How often a source waiting for an ACK looks whether the connection
/// still stands (a dropped one is retried without waiting out the timeout).
const CONNECTION_CHECK: Duration = Duration::from_millis(50);

/// Counts the batches the source holds, and the most at once.
#[derive(Default)]
struct Memory {
    live: AtomicUsize,
    max: AtomicUsize,
}

/// One batch's share of `Memory`, released when the batch is dropped.
struct Held(Arc<Memory>);

impl Held {
    fn new(m: &Arc<Memory>) -> Held {
        let now = m.live.fetch_add(1, Ordering::AcqRel) + 1;
        m.max.fetch_max(now, Ordering::AcqRel);
        Held(m.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A batch being filled: the entry or record count, then the entries.
struct Filling {
    ty: u16,
    buf: Vec<u8>,
    count: u64,
    last: u64,
    began: Instant,
    held: Held,
}

/// An encoded batch: the step's body after its header, checksummed and
/// shared by the thread that read it, so its send copies nothing.
struct Batch {
    ty: u16,
    body: Body,
    count: u64,
    /// OPS: the last version in it.
    last: u64,
    read: Duration,
    _held: Held,
}

/// What builds batches: limits, the memory count and the buffer batches
/// are filled in, reused from one to the next (a fresh megabyte would be
/// faulted in page by page for every batch).
#[derive(Clone)]
struct Batcher {
    max_bytes: usize,
    max_records: usize,
    frame_limit: usize,
    memory: Arc<Memory>,
    spare: Arc<Mutex<Vec<u8>>>,
}

impl Batcher {
    fn start(&self, ty: u16) -> Filling {
        let mut buf = std::mem::take(&mut *self.spare.lock());
        // Room for the whole batch at once: growing it would copy it.
        buf.reserve(self.max_bytes + 4);
        buf.extend_from_slice(&[0; 4]); // the count, set by `close`
        Filling { ty, buf, count: 0, last: 0, began: Instant::now(), held: Held::new(&self.memory) }
    }

    /// Finishes a batch (None when empty). One larger than a frame holds a
    /// single entry or record; `Link::send` sends it in pieces.
    fn close(&self, mut f: Filling) -> Option<Batch> {
        if f.count == 0 {
            return None;
        }
        debug_assert!(f.count == 1 || STEP_HEADER + f.buf.len() <= self.frame_limit, "only a lone entry or record outgrows a frame");
        f.buf[..4].copy_from_slice(&(f.count as u32).to_le_bytes());
        let body = Body::new(&f.buf);
        f.buf.clear();
        *self.spare.lock() = f.buf;
        Some(Batch { ty: f.ty, body, count: f.count, last: f.last, read: f.began.elapsed(), _held: f.held })
    }

    /// The next WAL records (up to the durable mark) from `reader`.
    fn ops(&self, reader: &mut Reader) -> Result<Option<Batch>> {
        let mut b = self.start(wire::OPS);
        while (b.count as usize) < self.max_records {
            let Some((version, record)) = reader.peek()? else { break };
            if b.count > 0 && STEP_HEADER + b.buf.len() + wire::op_len(record) > self.max_bytes {
                break;
            }
            wire::put_op(&mut b.buf, version, record);
            b.count += 1;
            b.last = version;
            reader.advance();
        }
        Ok(self.close(b))
    }

    /// The next snapshot entries after `after`.
    fn entries(&self, snap: &Snapshot, after: &mut Option<Vec<u8>>) -> Result<Option<Batch>> {
        let mut b = self.start(wire::ENTRIES);
        // The chunk counts keys and values; the frame adds the rest.
        let framing = STEP_HEADER + 4 + wire::ENTRY_OVERHEAD * self.max_records;
        let last = snap.visit(after.as_deref(), self.max_records, self.max_bytes.saturating_sub(framing), |key, e| {
            wire::put_entry(&mut b.buf, key, e);
            b.count += 1;
            Ok(())
        })?;
        if last.is_some() {
            *after = last;
        }
        Ok(self.close(b))
    }
}

/// The source's side of the conversation: one step at a time.
struct Link<'a> {
    control: &'a Control,
    node: &'a Node,
    peer: u64,
    id: u64,
    acks: Receiver<Ack>,
    timeout: Duration,
    retry: &'a Retry,
    clock: &'a dyn Clock,
    pace: Option<Pace>,
    frame_limit: usize,
    /// `TransferOptions::pipeline`: false reads a batch only after the
    /// one before was acknowledged.
    overlap: bool,
    step: u64,
    acked: u64,
    report: Report,
    /// The WAL pin (from the method's choice on): it keeps the records
    /// after the last one the receiver acknowledged, and no more, so a
    /// transfer streaming writes for long holds back no more of the WAL
    /// than one batch.
    pin: Option<Pin>,
}

impl Link<'_> {
    /// Sends one step (its header, then `body`) and waits for its ACK. A
    /// step the transport lost is sent again whole, under the same number,
    /// after a backoff and a fresh dial: the receiver answers a copy of a
    /// step it has seen from its memory.
    fn call(&mut self, ty: u16, body: &Body) -> Result<Ack> {
        let ack = self.exchange(ty, body)?;
        self.settle(ack)
    }

    /// The receiver's answer to the step in flight: the step is acked, or
    /// refused with the receiver's error.
    fn settle(&mut self, ack: Ack) -> Result<Ack> {
        if ack.status != KEEL_STATUS_OK {
            return Err(failed(&ack));
        }
        self.acked = self.step;
        Ok(ack)
    }

    /// `call` up to the receiver's answer, whatever its status: Err only
    /// when no answer came (the transport, the retries, a cancel), so a
    /// caller can tell a step the receiver refused from one it may have
    /// taken.
    fn exchange(&mut self, ty: u16, body: &Body) -> Result<Ack> {
        debug_assert_eq!(self.acked, self.step, "one step in flight at a time");
        self.step += 1;
        let head = wire::step(self.id, self.step, self.acked);
        let began = Instant::now();
        let mut retries = 0;
        // FINISH cannot be recalled once sent: the receiver may have
        // released the shard to its host. A cancel does not cut its wait
        // short, or the source would report CANCELLED (and keep taking
        // writes) while the receiver owns the shard.
        let firm = ty == wire::FINISH;
        let ack = loop {
            match self.attempt(ty, &head, body, firm) {
                Ok(ack) => break ack,
                // A cancel ends the step whatever the transport did.
                Err(e) if !firm && self.control.check().is_err() => return Err(e),
                Err(e) if retry::transient(&e) && retries < self.retry.max_retries && !self.node.is_closing() => {
                    retries += 1;
                    self.report.retries += 1;
                    self.pause(self.retry.backoff(retries), firm)?;
                    // A dial that fails is the next attempt's failure.
                    let _ = self.node.reconnect(self.peer);
                }
                Err(e) if retries > 0 => {
                    return Err(Error::new(e.status, format!("transfer step {} failed after {retries} retries: {}", self.step, e.message)))
                }
                Err(e) => return Err(e),
            }
        };
        self.report.send_time += began.elapsed();
        Ok(ack)
    }

    /// Waits `d` (a backoff, the bandwidth cap's debt); a cancel cuts it
    /// short unless the step is `firm`.
    fn pause(&self, d: Duration, firm: bool) -> Result<()> {
        if !firm {
            return self.control.pause(self.clock, d);
        }
        self.clock.sleep(d);
        Ok(())
    }

    /// One try at the current step: sends it (within the bandwidth cap)
    /// and waits for its ACK, giving up early when the connection drops
    /// or the host cancels.
    fn attempt(&mut self, ty: u16, head: &[u8], body: &Body, firm: bool) -> Result<Ack> {
        let len = head.len() + body.len();
        if let Some(pace) = &mut self.pace {
            let debt = pace.take(len, self.clock);
            self.report.paced += debt;
            self.pause(debt, firm)?;
        }
        self.node.send_body(self.peer, ty, head, body)?;
        self.report.bytes += len as u64;
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::new(
                    KEEL_STATUS_TIMEOUT,
                    format!("no answer from node {} to transfer step {} within {:?}", self.peer, self.step, self.timeout),
                ));
            }
            let got = match firm {
                true => match self.acks.recv_timeout(left.min(CONNECTION_CHECK)) {
                    Ok(a) => Some(a),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                    Err(_) => return Err(Error::new(KEEL_STATUS_CLOSED, "the transfer service stopped")),
                },
                false => self.control.recv_ack(&self.acks, left.min(CONNECTION_CHECK))?,
            };
            match got {
                Some(ack) if ack.step == self.step => return Ok(ack),
                // An ACK of an earlier step can only be a duplicate.
                Some(_) => {}
                None if !self.node.is_ready(self.peer) => {
                    return Err(Error::new(
                        KEEL_STATUS_IO,
                        format!("the connection to node {} dropped before transfer step {} was answered", self.peer, self.step),
                    ))
                }
                None => {}
            }
        }
    }

    fn simple(&mut self, ty: u16, body: &[u8]) -> Result<Ack> {
        self.call(ty, &Body::new(body))
    }

    /// Sends one batch, at a batch boundary: a cancel stops it first.
    fn send(&mut self, b: Batch) -> Result<()> {
        self.control.check()?;
        self.report.read_time += b.read;
        self.report.batches += 1;
        match b.ty {
            wire::ENTRIES => self.report.entries += b.count,
            _ => {
                self.report.ops += b.count;
                self.report.last_version = b.last;
            }
        }
        let Batch { ty, body, _held, .. } = b;
        if STEP_HEADER + body.len() <= self.frame_limit {
            self.call(ty, &body)?;
        } else {
            // One entry or record larger than a frame: its body goes in
            // frame-sized PART steps, each acknowledged like any step, and
            // the last piece as the batch's own type.
            let pieces: Vec<&[u8]> = body.bytes.chunks(self.frame_limit - STEP_HEADER).collect();
            for (i, piece) in pieces.iter().enumerate() {
                let last = i + 1 == pieces.len();
                self.call(if last { ty } else { wire::PART }, &Body::new(piece))?;
                self.report.parts += u64::from(!last);
            }
        }
        if ty == wire::OPS {
            if let Some(pin) = &mut self.pin {
                pin.advance(self.report.last_version + 1);
            }
        }
        // `_held` goes here, once the receiver has the batch.
        self.control.sent(&self.report);
        Ok(())
    }

    /// Sends what `read` produces until it returns None, reading the next
    /// batch on a second thread while the current one is sent: at most
    /// one batch in flight and one being read (with `overlap` off, one
    /// after the other). Returns `state` and the number of batches sent.
    fn pipeline<S: Send>(&mut self, state: S, read: impl FnMut(&mut S) -> Result<Option<Batch>> + Send) -> Result<(S, u64)> {
        if !self.overlap {
            return self.sequential(state, read);
        }
        let (tx, rx) = crossbeam_channel::bounded::<Result<Batch>>(0);
        let mut read = read;
        std::thread::scope(|scope| {
            let producer = scope.spawn(move || {
                let mut state = state;
                loop {
                    match read(&mut state) {
                        Ok(Some(b)) => {
                            if tx.send(Ok(b)).is_err() {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            break;
                        }
                    }
                }
                state
            });
            let mut sent = 0;
            let mut outcome = Ok(());
            for b in &rx {
                if let Err(e) = b.and_then(|b| self.send(b)) {
                    outcome = Err(e);
                    break;
                }
                sent += 1;
            }
            drop(rx); // ends a producer waiting to hand over its next batch
            let state = producer.join().map_err(|_| Error::new(KEEL_STATUS_PANIC, "the transfer's batch reader panicked"))?;
            outcome.map(|()| (state, sent))
        })
    }

    /// `pipeline` without the overlap (`TransferOptions::pipeline` off,
    /// for the benchmark): read a batch, send it, wait for its ACK, then
    /// read the next; one batch in memory.
    fn sequential<S>(&mut self, mut state: S, mut read: impl FnMut(&mut S) -> Result<Option<Batch>>) -> Result<(S, u64)> {
        let mut sent = 0;
        while let Some(b) = read(&mut state)? {
            self.send(b)?;
            sent += 1;
        }
        Ok((state, sent))
    }
}

/// The source's choice: snapshot, or the WAL records after `had`.
enum Plan {
    Snapshot,
    Delta(crate::wal::Pin),
}

fn plan(shard: &Shard, method: Method, had: u64, crc: Option<u32>, report: &mut Report) -> Result<Plan> {
    if method == Method::Snapshot {
        return Ok(Plan::Snapshot);
    }
    // An engine's shard in `sync` durability syncs its own WAL only now
    // and then (its writes are durable in the engine's commit log): sync
    // it before judging the receiver against its durable mark.
    let durable = match shard.durable_version() {
        d if d >= had => d,
        _ => shard.sync_wal()?,
    };
    let why = if had == 0 && crc.is_none() {
        "the receiver has no copy of the shard".to_string()
    } else if had > durable {
        format!("the receiver has version {had}, past this shard's durable version {durable}")
    } else {
        match shard.pin_wal(had + 1) {
            Err(e) if e.status == KEEL_STATUS_TRUNCATED => format!("the WAL no longer holds version {}", had + 1),
            Err(e) => return Err(e),
            // The pin comes first: record `had` stays while it is checked.
            Ok(pin) => match shard.wal_gap_above(had)? {
                // Versions a recovery declared lost (a crash's unsynced
                // tail, a salvage): the records after `had` skip them, and
                // the receiver refuses records that do not follow its own.
                Some((from, to)) => format!("the WAL lost versions {from}..={to} after version {had} (a gap its recovery declared)"),
                None => match (shard.record_crc(had)?, crc) {
                    (Some(mine), Some(theirs)) if mine == theirs => return Ok(Plan::Delta(pin)),
                    (None, _) => format!("the WAL no longer holds version {had} to check the receiver's history against"),
                    (_, None) => format!("the receiver cannot show its record of version {had}"),
                    _ => format!("the receiver's record of version {had} differs from this shard's: the histories diverged"),
                },
            },
        }
    };
    report.fallback = Some(why);
    Ok(Plan::Snapshot)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    node: &Node,
    id: u64,
    acks: Receiver<Ack>,
    shard: &Shard,
    shard_id: u32,
    peer: u64,
    opts: &TransferOptions,
    control: &Arc<Control>,
) -> Result<Report> {
    let frame_limit = node.max_frame_bytes();
    let batcher = Batcher {
        max_bytes: opts.max_batch_bytes.min(frame_limit),
        max_records: opts.max_batch_records,
        frame_limit,
        memory: Arc::new(Memory::default()),
        spare: Arc::default(),
    };
    let clock = &*opts.clock;
    let pace = Pace::new(node.transfer_bandwidth(), clock);
    let mut link = Link {
        control,
        node,
        peer,
        id,
        acks,
        timeout: opts.ack_timeout,
        retry: &opts.retry,
        clock,
        pace,
        frame_limit,
        overlap: opts.pipeline,
        step: 0,
        acked: 0,
        report: Report::default(),
        pin: None,
    };
    let mut start = shard_id.to_le_bytes().to_vec();
    start.push(match opts.method {
        Method::Snapshot => wire::MODE_SNAPSHOT,
        Method::WalDelta => wire::MODE_DELTA,
    });
    let hello = link.simple(wire::START, &start)?;
    link.report.receiver_had = hello.version;
    let reader = match plan(shard, opts.method, hello.version, hello.crc, &mut link.report)? {
        Plan::Delta(pin) => {
            link.simple(wire::BEGIN, &[&[wire::MODE_DELTA][..], &hello.version.to_le_bytes()].concat())?;
            link.report.last_version = hello.version;
            link.pin = Some(pin);
            control.stage(Stage::Backfill, &link.report);
            shard.wal_reader(hello.version + 1)?
        }
        Plan::Snapshot => {
            // Pinned before the capture: nothing after the snapshot's
            // version can be truncated before the backfill reads it. What
            // the WAL retains starts at or below the persisted version + 1
            // (a flush truncates only what it persisted), and pinning it
            // in one step leaves no gap for a truncation to slip into.
            let mut pin = shard.pin_wal_retained()?;
            // Big appendable segments are sealed first, so the snapshot
            // shares their tables and copies at most this much.
            shard.seal_above(SNAPSHOT_COPY_BYTES)?;
            let snap = shard.snapshot()?;
            pin.advance(snap.version + 1);
            link.pin = Some(pin);
            // Only what the source made durable is sent.
            if shard.durable_version() < snap.version {
                shard.sync_wal()?;
            }
            link.report.snapshot = true;
            link.report.snapshot_version = Some(snap.version);
            // With the checksum of its record of the snapshot's version, so
            // a later WAL delta to this receiver can check its history.
            let crc = shard.record_crc(snap.version)?;
            let mut begin = vec![wire::MODE_SNAPSHOT];
            begin.extend_from_slice(&snap.version.to_le_bytes());
            begin.push(crc.is_some() as u8);
            begin.extend_from_slice(&crc.unwrap_or(0).to_le_bytes());
            link.simple(wire::BEGIN, &begin)?;
            // Only once the receiver acknowledged BEGIN: a refused one
            // (BUSY: its host has the shard open) leaves it at nothing.
            link.report.last_version = snap.version;
            control.stage(Stage::Backfill, &link.report);
            // The snapshot's end carries the replicated state as of it:
            // the WAL delta after it holds only the changes that follow.
            let mut end = Vec::new();
            snap.replicated.encode_into(&mut end);
            let b = batcher.clone();
            link.pipeline((snap, None), move |(snap, after)| b.entries(snap, after))?;
            link.simple(wire::SNAPSHOT_END, &end)?;
            let from = link.report.last_version + 1;
            shard.wal_reader(from)?
        }
    };
    control.stage(Stage::CatchingUp, &link.report);
    finish::run(&mut link, &batcher, reader, shard, control, opts.before_final_hold.as_ref())?;
    link.report.max_batches_in_memory = batcher.memory.max.load(Ordering::Acquire);
    Ok(link.report)
}
