//! The receiving side (docs/TRANSFER.md, "Receiver"): accepts only the
//! shards its host announced, holds the incoming shard in the engine's
//! incoming slot (the host cannot open it), and answers each step once
//! what it carried is applied (and, for operations, durable).

use super::wire::{self, Ack};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::shard::Shard;
use crate::status::*;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters of the receiving side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// START for a shard the host did not announce from that peer.
    pub refused_unannounced: u64,
    /// A step that was not the one after the last (lost or reordered).
    pub out_of_order: u64,
    /// A step sent before the source had the previous step's ACK (more
    /// than one send in flight).
    pub overlapped: u64,
    /// Most steps a source had in flight when one of its steps arrived
    /// (its number minus the last ACK it had): 1 for a correct source,
    /// also while it retries.
    pub max_in_flight: u64,
    /// Copies of the last step answered (a source retrying a step whose
    /// ACK it did not get): answered again from memory, applied once.
    pub resent_steps: u64,
    /// Copies of older steps arriving late on a connection that broke
    /// (the source had moved on): dropped unanswered.
    pub stale_steps: u64,
    /// Frames that could not be decoded.
    pub malformed: u64,
    pub steps: u64,
    /// PART steps: pieces of a batch too large for one frame.
    pub parts: u64,
    /// Snapshot entries accepted (each installed right after its step's
    /// ACK went out, or the reception fails).
    pub entries_installed: u64,
    pub ops_applied: u64,
    pub finished: u64,
    pub failed: u64,
    /// Receptions ended because their source had no connection here: for
    /// the node's silence limit after its connection ended, or when a
    /// START needed the place; counted once their shards are closed.
    pub sources_gone: u64,
    /// Receptions running now, each holding one of the node's
    /// `max_concurrent_transfers` places, and those ended whose shards
    /// are still closing (their places free already): once it is 0, no
    /// reception holds a shard, so a host that waits for that finds none
    /// of their ids busy.
    pub receiving: u64,
}

#[derive(Default)]
struct Counters {
    refused_unannounced: AtomicU64,
    out_of_order: AtomicU64,
    overlapped: AtomicU64,
    max_in_flight: AtomicU64,
    resent_steps: AtomicU64,
    stale_steps: AtomicU64,
    malformed: AtomicU64,
    steps: AtomicU64,
    parts: AtomicU64,
    entries_installed: AtomicU64,
    ops_applied: AtomicU64,
    finished: AtomicU64,
    failed: AtomicU64,
    sources_gone: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The largest batch body PART steps may assemble.
const MAX_ASSEMBLED_BYTES: usize = 1 << 30;

/// Finished receptions whose FINISH is remembered, to answer a copy of it
/// (its first ACK may have been lost with the connection).
const FINISHED_MEMORY: usize = 64;

/// The last step answered, to answer a copy of it the same way.
#[derive(Clone)]
struct Answered {
    ty: u16,
    /// crc32 of its body: a copy must carry the same bytes.
    crc: u32,
    ack: Ack,
}

/// One shard being received.
struct Incoming {
    shard_id: u32,
    peer: u64,
    /// The last step answered.
    step: u64,
    last: Option<Answered>,
    /// Taken by the engine once BEGIN (or, for a WAL delta, START) opened it.
    shard: Option<Shard>,
    /// BEGIN was taken: only then may the shard take OPS, FORWARD or
    /// FINISH (a WAL delta's START opens the shard to answer its version,
    /// not to build on it unchecked).
    begun: bool,
    /// The version whose record START showed the source (its crc32 in the
    /// ACK), the one version a WAL delta may begin from. None when START
    /// had no record to show: no shard, the remains of a snapshot that
    /// never reached its end (which claim the snapshot's version while
    /// holding only the entries that arrived), or a record gone. Then only
    /// a snapshot may follow, as the source's history check decides too.
    shown: Option<u64>,
    /// Inside a snapshot: from its BEGIN until its SNAPSHOT_END, the only
    /// stretch that takes ENTRIES, and one that OPS, FORWARD and FINISH
    /// may not cut short (its entries are durable only at its end).
    snapshot: bool,
    /// A snapshot's version and the source's crc32 of its record, kept by
    /// the shard once the snapshot is complete (`Shard::set_snapshot_base`).
    base: Option<(u64, u32)>,
    /// The snapshot's version (BEGIN): no entry of it may be newer.
    snapshot_version: u64,
    /// PART pieces of a batch whose last piece has not come yet.
    pending: Vec<u8>,
    /// The body of the last ENTRIES step, checked but not installed yet: a
    /// snapshot is durable only as a whole (at SNAPSHOT_END), so its
    /// batches are acknowledged on arrival, then decoded and installed
    /// after the ACK went out, while the source's next batch travels
    /// (`install_after`). Whatever comes next installs them first if that
    /// has not run yet. The buffer is reused from batch to batch.
    installing: Vec<u8>,
    /// Why installing them failed: the next step fails with it.
    install_failed: Option<Error>,
    /// Set when the reception ended (finished or abandoned) while a copy
    /// of a step waited for it.
    ended: bool,
}

/// A reception and the shard it is for. A step works on the reception
/// under its lock, so a copy of the step that comes in on a newer
/// connection waits for the one still being applied from the old one.
#[derive(Clone)]
struct Running {
    shard_id: u32,
    cell: Arc<Mutex<Incoming>>,
}

#[derive(Default)]
struct State {
    /// (shard id, peer) pairs the host announced.
    expected: HashSet<(u32, u64)>,
    /// By (peer, transfer id).
    running: HashMap<(u64, u64), Running>,
    /// The last receptions finished: (peer, transfer id), FINISH's step
    /// and its answer.
    finished: VecDeque<((u64, u64), u64, Answered)>,
    /// Peers with receptions here whose ready connection ended, and when
    /// it last did (`reap`).
    gone: HashMap<u64, Instant>,
    /// Receptions taken out of `running` to be ended whose shards are not
    /// closed yet: counted in `receiving` until they are (`Receiver::end_all`).
    ending: u64,
}

impl State {
    /// Takes out of the table the receptions whose source `gone` says is.
    /// They count as `ending` until `Receiver::end_all` closed them.
    fn take_gone(&mut self, gone: impl Fn(u64) -> bool) -> Vec<Running> {
        let keys: Vec<(u64, u64)> = self.running.keys().filter(|(p, _)| gone(*p)).copied().collect();
        self.take(keys)
    }

    /// Takes receptions `keys` out of the table, to be ended (`ending`).
    fn take(&mut self, keys: Vec<(u64, u64)>) -> Vec<Running> {
        let taken: Vec<Running> = keys.into_iter().filter_map(|k| self.running.remove(&k)).collect();
        self.ending += taken.len() as u64;
        taken
    }
}

#[derive(Default)]
pub(super) struct Receiver {
    state: Mutex<State>,
    /// Held through a START: a copy of it waits and then finds the
    /// reception the first one opened.
    starting: Mutex<()>,
    counters: Counters,
}

impl Receiver {
    pub fn expect(&self, shard: u32, peer: u64) {
        self.state.lock().expected.insert((shard, peer));
    }

    pub fn note_malformed(&self) {
        bump(&self.counters.malformed, 1);
    }

    pub fn stats(&self) -> ReceiverStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ReceiverStats {
            refused_unannounced: g(&c.refused_unannounced),
            out_of_order: g(&c.out_of_order),
            overlapped: g(&c.overlapped),
            max_in_flight: g(&c.max_in_flight),
            resent_steps: g(&c.resent_steps),
            stale_steps: g(&c.stale_steps),
            malformed: g(&c.malformed),
            steps: g(&c.steps),
            parts: g(&c.parts),
            entries_installed: g(&c.entries_installed),
            ops_applied: g(&c.ops_applied),
            finished: g(&c.finished),
            failed: g(&c.failed),
            sources_gone: g(&c.sources_gone),
            receiving: {
                let st = self.state.lock();
                st.running.len() as u64 + st.ending
            },
        }
    }

    /// Handles one step from `peer`; returns the ACK to send (None when the
    /// frame is too damaged to say which transfer it belongs to, is a
    /// late copy of a step already answered, or is a CANCEL, which is not
    /// a step and not answered). At most `max` receptions run at once.
    /// Handles one step; the ACK to send, and the reception whose entries
    /// to install once it is sent (`install_after`).
    /// `connected`: the peers with a ready connection now (asked at a
    /// START that finds every place taken).
    pub fn on_step(
        &self,
        engine: &Engine,
        max: usize,
        connected: &dyn Fn() -> Vec<u64>,
        peer: u64,
        ty: u16,
        payload: &[u8],
    ) -> Option<(Ack, Option<Later>)> {
        let Ok(step) = wire::parse_step(payload) else {
            self.note_malformed();
            return None;
        };
        if ty == wire::CANCEL {
            self.cancel(engine, peer, step.id);
            return None;
        }
        bump(&self.counters.steps, 1);
        let (id, n, acked, mut body) = (step.id, step.step, step.acked, step.body);
        let crc = crc32fast::hash(body.bytes);
        let mut ack = Ack { id, step: n, status: KEEL_STATUS_OK, version: 0, crc: None, message: String::new() };
        let _start = (ty == wire::START).then(|| self.starting.lock());
        let running = self.state.lock().running.get(&(peer, id)).cloned();
        let mut later = None;
        let result = match running {
            None => match self.finished_answer(peer, id) {
                // Over already: a copy with other bytes has nothing left to
                // end, and a START of it (a late copy) opens nothing.
                Some((step, last)) if n <= step => return self.copy(step, Some(&last), ty, n, crc, || {}).map(|a| (a, None)),
                _ if ty == wire::START => self.start(engine, (max, connected), peer, id, n, crc, &mut body, &mut ack),
                _ => Err(Error::new(KEEL_STATUS_NOT_FOUND, format!("no transfer {id} from node {peer} is running here"))),
            },
            Some(running) => {
                let mut inc = running.cell.lock();
                if inc.ended {
                    Err(Error::new(KEEL_STATUS_NOT_FOUND, format!("transfer {id} from node {peer} has ended here")))
                } else if n <= inc.step {
                    let (step, last) = (inc.step, inc.last.clone());
                    let end = || self.end(engine, peer, id, &running, &mut inc);
                    return self.copy(step, last.as_ref(), ty, n, crc, end).map(|a| (a, None));
                } else {
                    // Only a new step of a running reception says how deep
                    // its source's pipeline is: a refused one may carry
                    // any numbers.
                    self.counters.max_in_flight.fetch_max(n.saturating_sub(acked), Ordering::Relaxed);
                    let r = self.step(engine, &mut inc, ty, n, acked, &mut body, &mut ack);
                    if !inc.installing.is_empty() {
                        later = Some(Later(running.cell.clone()));
                    }
                    match (&r, ty) {
                        (Ok(()), wire::FINISH) => {
                            // The shard is the host's already: nothing left to close.
                            inc.ended = true;
                            self.forget(peer, id, &running, false);
                            let mut st = self.state.lock();
                            if st.finished.len() == FINISHED_MEMORY {
                                st.finished.pop_front();
                            }
                            st.finished.push_back(((peer, id), n, Answered { ty, crc, ack: ack.clone() }));
                        }
                        (Ok(()), _) => inc.last = Some(Answered { ty, crc, ack: ack.clone() }),
                        (Err(_), _) => self.end(engine, peer, id, &running, &mut inc),
                    }
                    r
                }
            }
        };
        if let Err(e) = result {
            bump(&self.counters.failed, 1);
            ack.status = e.status;
            ack.message = e.message;
        }
        Some((ack, later))
    }

    /// Installs the entries a step left for after its ACK; a failure
    /// fails the reception's next step.
    pub fn install_after(&self, later: Later) {
        let mut inc = later.0.lock();
        if let Err(e) = install(&mut inc) {
            inc.install_failed = Some(e);
        }
    }

    /// A step numbered at or below `step`, the last one answered (as
    /// `last`): a copy of it (the source retrying it) gets that step's ACK
    /// again; an older one is a late copy from a broken connection and
    /// gets none. The same number with other bytes is no copy but a source
    /// that sent two steps under one number: like any failure, it ends the
    /// reception (`end`), and is answered PROTOCOL.
    fn copy(&self, step: u64, last: Option<&Answered>, ty: u16, n: u64, crc: u32, end: impl FnOnce()) -> Option<Ack> {
        match last {
            Some(last) if n == step => {
                bump(&self.counters.resent_steps, 1);
                if last.ty == ty && last.crc == crc {
                    return Some(last.ack.clone());
                }
                end();
                bump(&self.counters.failed, 1);
                Some(Ack {
                    status: KEEL_STATUS_PROTOCOL,
                    message: format!("step {n} came again with other contents"),
                    ..last.ack.clone()
                })
            }
            _ => {
                bump(&self.counters.stale_steps, 1);
                None
            }
        }
    }

    /// CANCEL: the source gave transfer `id` up. The reception ends under
    /// its lock (a step being applied from an older connection completes
    /// first; a copy waiting behind it then finds it ended) and leaves the
    /// table; the shard stays incoming for a later transfer to resume.
    fn cancel(&self, engine: &Engine, peer: u64, id: u64) {
        let running = self.state.lock().running.get(&(peer, id)).cloned();
        if let Some(running) = running {
            self.end(engine, peer, id, &running, &mut running.cell.lock());
        }
    }

    /// A ready connection to `peer` ended (handed over behind its steps):
    /// its receptions end at the next `reap` a silence limit from now,
    /// unless it is connected again by then.
    pub fn peer_gone(&self, peer: u64) {
        let mut st = self.state.lock();
        if st.running.keys().any(|(p, _)| *p == peer) {
            st.gone.insert(peer, Instant::now());
        }
    }

    /// Ends the receptions of every source whose connection ended
    /// `linger` ago or more and that has none `ready` now (a source that
    /// crashed, or lost its link and gave up: no CANCEL came, and a
    /// retrying one dials back within its backoff). Their shards stay
    /// incoming, for a later transfer to resume or the host to drop.
    /// Returns when the next is due.
    pub fn reap(&self, engine: &Engine, linger: Duration, ready: &dyn Fn(u64) -> bool) -> Option<Instant> {
        let now = Instant::now();
        let due: Vec<u64> = self.state.lock().gone.iter().filter(|(_, at)| **at + linger <= now).map(|(p, _)| *p).collect();
        if !due.is_empty() {
            // Asked outside the lock, as at a START. Only this thread
            // writes `gone`, so the entries are still these.
            let back: Vec<u64> = due.iter().copied().filter(|p| ready(*p)).collect();
            let old = {
                let mut st = self.state.lock();
                st.gone.retain(|p, _| !due.contains(p));
                st.take_gone(|p| due.contains(&p) && !back.contains(&p))
            };
            // Counted once their shards are closed: a host that sees the
            // count may drop them at once (until then their ids are busy).
            let gone = old.len() as u64;
            self.end_all(engine, old);
            bump(&self.counters.sources_gone, gone);
        }
        self.state.lock().gone.values().min().map(|at| *at + linger)
    }

    /// FINISH's step and answer, when transfer `id` from `peer` finished lately.
    fn finished_answer(&self, peer: u64, id: u64) -> Option<(u64, Answered)> {
        let st = self.state.lock();
        st.finished.iter().find(|(k, _, _)| *k == (peer, id)).map(|(_, step, last)| (*step, last.clone()))
    }

    /// Drops the reception from the table, unless a newer one replaced it
    /// or an end took it out already; whether it did. `closing`: its shard
    /// is still to be closed (`ending` until then).
    fn forget(&self, peer: u64, id: u64, running: &Running, closing: bool) -> bool {
        let mut st = self.state.lock();
        let ours = st.running.get(&(peer, id)).is_some_and(|r| Arc::ptr_eq(&r.cell, &running.cell));
        if ours {
            st.running.remove(&(peer, id));
            st.ending += u64::from(closing);
        }
        ours
    }

    /// Ends reception `inc` (locked, from `running`): out of the table and
    /// its shard closed. One another end took out already stays counted
    /// by that end until its `end_all` is done.
    fn end(&self, engine: &Engine, peer: u64, id: u64, running: &Running, inc: &mut Incoming) {
        let _ending = Ending(&self.state, u64::from(self.forget(peer, id, running, true)));
        abandon(engine, inc);
    }

    /// Abandons receptions taken out of the table (each once its step in
    /// progress, if any, is done); `receiving` counts them until then.
    fn end_all(&self, engine: &Engine, old: Vec<Running>) {
        let _ending = Ending(&self.state, old.len() as u64);
        for r in old {
            abandon(engine, &mut r.cell.lock());
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        engine: &Engine,
        (max, connected): (usize, &dyn Fn() -> Vec<u64>),
        peer: u64,
        id: u64,
        n: u64,
        crc: u32,
        body: &mut crate::shard::files::Cursor,
        ack: &mut Ack,
    ) -> Result<()> {
        let malformed = |e: Error| Error::new(KEEL_STATUS_PROTOCOL, format!("malformed START: {}", e.message));
        let shard_id = body.u32().map_err(malformed)?;
        let mode = body.u8().map_err(malformed)?;
        if mode != wire::MODE_SNAPSHOT && mode != wire::MODE_DELTA {
            return Err(Error::new(KEEL_STATUS_PROTOCOL, format!("START: unknown method {mode}")));
        }
        if n != 1 {
            bump(&self.counters.out_of_order, 1);
            return Err(Error::new(KEEL_STATUS_PROTOCOL, format!("START is step {n}, not 1")));
        }
        // Receptions of sources gone, counted once their shards are
        // closed (as in `reap`).
        let mut gone = 0;
        let stale: Vec<Running> = {
            let mut st = self.state.lock();
            if !st.expected.contains(&(shard_id, peer)) {
                bump(&self.counters.refused_unannounced, 1);
                return Err(Error::new(
                    KEEL_STATUS_REFUSED,
                    format!("shard {shard_id} from node {peer} was not announced here (expect it first)"),
                ));
            }
            // An earlier attempt of the same shard that never finished (its
            // source gave up or restarted) ends here.
            let old: Vec<(u64, u64)> = st.running.iter().filter(|(_, r)| r.shard_id == shard_id).map(|(k, _)| *k).collect();
            let mut old = st.take(old);
            if st.running.len() >= max {
                // A source with no connection here now (it crashed, or
                // its CANCEL was lost with its connection) gives its place
                // up before its silence limit ran out (`reap`): its shard
                // stays incoming, for it to resume once back.
                // Asked outside this lock, which the node's threads never
                // wait for while they hold theirs.
                drop(st);
                let here = connected();
                st = self.state.lock();
                let taken = st.take_gone(|p| !here.contains(&p));
                gone = taken.len() as u64;
                old.extend(taken);
            }
            if st.running.len() >= max {
                drop(st);
                self.end_all(engine, old);
                bump(&self.counters.sources_gone, gone);
                return Err(Error::new(
                    KEEL_STATUS_BUSY,
                    format!("{max} transfers are being received here already (max_concurrent_transfers)"),
                ));
            }
            old
        };
        self.end_all(engine, stale);
        bump(&self.counters.sources_gone, gone);
        let mut inc = Incoming {
            shard_id,
            peer,
            step: 1,
            last: None,
            shard: None,
            begun: false,
            shown: None,
            snapshot: false,
            base: None,
            snapshot_version: 0,
            pending: Vec::new(),
            installing: Vec::new(),
            install_failed: None,
            ended: false,
        };
        if mode == wire::MODE_DELTA {
            match engine.receive_shard(shard_id, None) {
                Ok(shard) => match shard.record_crc(shard.last_version()) {
                    Ok(crc) => {
                        ack.version = shard.last_version();
                        ack.crc = crc;
                        inc.shown = crc.map(|_| ack.version);
                        inc.shard = Some(shard);
                    }
                    // Given back either way: a shard left taken with no
                    // reception would be BUSY until a restart. A damaged
                    // record of its history is nothing to build on: the
                    // source sends a snapshot, as below.
                    Err(e) => {
                        drop(shard);
                        engine.release_incoming(shard_id, false)?;
                        if e.status != KEEL_STATUS_CORRUPTION {
                            return Err(e);
                        }
                    }
                },
                // Nothing usable here (no such shard, or the remains of a
                // snapshot that never completed): the source sends a snapshot.
                Err(e) if e.status == KEEL_STATUS_NOT_FOUND || e.status == KEEL_STATUS_CORRUPTION => {}
                Err(e) => return Err(e),
            }
        }
        inc.last = Some(Answered { ty: wire::START, crc, ack: ack.clone() });
        self.state.lock().running.insert((peer, id), Running { shard_id, cell: Arc::new(Mutex::new(inc)) });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        engine: &Engine,
        inc: &mut Incoming,
        ty: u16,
        n: u64,
        acked: u64,
        body: &mut crate::shard::files::Cursor,
        ack: &mut Ack,
    ) -> Result<()> {
        if n != inc.step + 1 {
            bump(&self.counters.out_of_order, 1);
            return Err(Error::new(KEEL_STATUS_PROTOCOL, format!("step {n} arrived after step {}", inc.step)));
        }
        if acked != inc.step {
            bump(&self.counters.overlapped, 1);
            return Err(Error::new(
                KEEL_STATUS_PROTOCOL,
                format!("step {n} was sent before the ACK of step {} arrived (one step may be in flight)", inc.step),
            ));
        }
        debug_assert_eq!(n - acked, 1, "an accepted step arrives in order with no other in flight");
        install(inc)?;
        if !inc.pending.is_empty() && !matches!(ty, wire::PART | wire::ENTRIES | wire::OPS) {
            return Err(Error::new(KEEL_STATUS_PROTOCOL, format!("frame type {ty:#06x} came between the pieces of a batch")));
        }
        // The pieces of a batch too large for a frame, and its last piece,
        // are applied as one body.
        let assembled = match ty {
            wire::ENTRIES | wire::OPS if !inc.pending.is_empty() => {
                let mut all = std::mem::take(&mut inc.pending);
                all.extend_from_slice(body.bytes);
                Some(all)
            }
            _ => None,
        };
        let mut whole = crate::shard::files::Cursor { bytes: assembled.as_deref().unwrap_or(body.bytes) };
        let body = &mut whole;
        inc.step = n;
        let protocol = |what: String| Error::new(KEEL_STATUS_PROTOCOL, what);
        match ty {
            wire::BEGIN => {
                let mode = body.u8().map_err(|e| protocol(e.message))?;
                let base = body.u64().map_err(|e| protocol(e.message))?;
                match mode {
                    // The log numbers records up to u64::MAX - 1 (its next
                    // number must fit), and the shard needs one after the
                    // snapshot's.
                    wire::MODE_SNAPSHOT if base >= u64::MAX - 1 => {
                        return Err(protocol(format!("a snapshot at version {base} leaves the shard no next version")));
                    }
                    wire::MODE_SNAPSHOT => {
                        let has_crc = body.u8().map_err(|e| protocol(e.message))?;
                        let crc = body.u32().map_err(|e| protocol(e.message))?;
                        let base_crc = match has_crc {
                            0 => None,
                            1 => Some((base, crc)),
                            other => return Err(protocol(format!("BEGIN: has-crc flag {other} is neither 0 nor 1"))),
                        };
                        if let Some(s) = inc.shard.take() {
                            drop(s);
                            engine.release_incoming(inc.shard_id, false)?;
                        }
                        let shard = engine.receive_shard(inc.shard_id, Some(base))?;
                        inc.base = base_crc;
                        inc.shard = Some(shard);
                        inc.snapshot = true;
                        inc.snapshot_version = base;
                        // The shard START showed is gone: nothing is left
                        // for a WAL delta to begin from but this snapshot.
                        inc.shown = None;
                    }
                    wire::MODE_DELTA => {
                        let have = inc.shard.as_ref().map_or(0, |s| s.last_version());
                        if inc.shard.is_none() || have != base {
                            return Err(protocol(format!("a WAL delta after version {base}, but this shard is at {have}")));
                        }
                        // Without a record START showed, the source could
                        // not check the histories agree: a correct one
                        // sends a snapshot then.
                        if inc.shown != Some(base) {
                            return Err(protocol(format!(
                                "a WAL delta after version {base}, but START showed no record of that version to check the histories against (send a snapshot)"
                            )));
                        }
                    }
                    other => return Err(protocol(format!("unknown mode {other}"))),
                }
                inc.begun = true;
                ack.version = base;
            }
            wire::PART => {
                if inc.pending.len() + body.bytes.len() > MAX_ASSEMBLED_BYTES {
                    return Err(protocol(format!("the pieces of a batch pass {MAX_ASSEMBLED_BYTES} bytes")));
                }
                inc.pending.extend_from_slice(body.bytes);
                bump(&self.counters.parts, 1);
            }
            wire::ENTRIES => {
                let max_list = shard_of(inc, true)?.max_list_size();
                let n = wire::check_entries(body.bytes, inc.snapshot_version, max_list)?;
                bump(&self.counters.entries_installed, n as u64);
                inc.installing.extend_from_slice(body.bytes);
            }
            wire::SNAPSHOT_END => {
                // The snapshot is durable only as a whole: its entries are
                // not logged but sealed into tables, the last of them here.
                // Only then may a later WAL delta build on it.
                let shard = shard_of(inc, true)?;
                // The replicated state as of the snapshot (a source before
                // it was sent sends an empty body).
                if !body.bytes.is_empty() {
                    let state = crate::shard::Replicated::decode_sent(body).map_err(|e| protocol(e.message))?;
                    if !body.bytes.is_empty() {
                        return Err(protocol("SNAPSHOT_END: trailing bytes after the replicated state".into()));
                    }
                    shard.seed_replicated(&state);
                }
                ack.version = shard.persist_installed()?;
                if let Some((version, crc)) = inc.base {
                    shard.set_snapshot_base(version, crc)?;
                }
                inc.snapshot = false;
            }
            wire::OPS => {
                let ops = wire::ops(body)?;
                ack.version = shard_of(inc, false)?.apply_transferred(&ops)?;
                bump(&self.counters.ops_applied, ops.len() as u64);
            }
            wire::FORWARD => {
                let last = body.u64().map_err(|e| protocol(e.message))?;
                let have = shard_of(inc, false)?.last_version();
                if have != last {
                    return Err(protocol(format!("the source forwards from version {last}, this shard is at {have}")));
                }
                ack.version = have;
            }
            wire::FINISH => {
                let last = body.u64().map_err(|e| protocol(e.message))?;
                let shard = shard_of(inc, false)?;
                let have = shard.last_version();
                if have != last {
                    return Err(protocol(format!("the source finished at version {last}, this shard is at {have}")));
                }
                // Everything acknowledged is durable already (OPS in the
                // WAL, the snapshot flushed at its end): removing the
                // marker durably is the finish, and the shard stays open
                // for its host, not closed and recovered again.
                ack.version = have;
                inc.shard = None;
                engine.release_incoming(inc.shard_id, true)?;
                self.state.lock().expected.remove(&(inc.shard_id, inc.peer));
                bump(&self.counters.finished, 1);
            }
            other => return Err(protocol(format!("unknown transfer frame type {other:#06x}"))),
        }
        Ok(())
    }
}

/// A reception with entries to install after its ACK went out.
pub(super) struct Later(Arc<Mutex<Incoming>>);

/// Installs the entries the last ENTRIES step left, if that has not been
/// done yet (or fails with why it could not be).
fn install(inc: &mut Incoming) -> Result<()> {
    if let Some(e) = inc.install_failed.take() {
        return Err(e);
    }
    if inc.installing.is_empty() {
        return Ok(());
    }
    let entries = wire::entries(&inc.installing);
    inc.installing.clear();
    shard_of(inc, true)?.install(entries?)
}

/// The incoming shard, once BEGIN opened it, for a step that belongs
/// inside a snapshot (`snapshot`) or outside one.
fn shard_of(inc: &Incoming, snapshot: bool) -> Result<&Shard> {
    match (&inc.shard, inc.snapshot, snapshot) {
        _ if !inc.begun => Err(Error::new(KEEL_STATUS_PROTOCOL, "a transfer frame arrived before BEGIN")),
        (Some(s), inside, wanted) if inside == wanted => Ok(s),
        (None, ..) => Err(Error::new(KEEL_STATUS_PROTOCOL, "a transfer frame arrived before BEGIN opened the shard")),
        (Some(_), _, true) => Err(Error::new(KEEL_STATUS_PROTOCOL, "a snapshot's frame arrived outside a snapshot (before its BEGIN or after its SNAPSHOT_END)")),
        (Some(_), _, false) => Err(Error::new(KEEL_STATUS_PROTOCOL, "the snapshot is not complete: SNAPSHOT_END must come first")),
    }
}

/// Ends a reception that will not finish: the shard stays marked incoming.
/// Takes `n` ended receptions off `State::ending` once dropped, also when
/// a shard's close panicked: left counted, `receiving` would never fall
/// to 0 again.
struct Ending<'a>(&'a Mutex<State>, u64);

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        self.0.lock().ending -= self.1;
    }
}

fn abandon(engine: &Engine, inc: &mut Incoming) {
    inc.ended = true;
    inc.pending = Vec::new();
    inc.installing = Vec::new();
    if inc.shard.take().is_some() {
        let _ = engine.release_incoming(inc.shard_id, false);
    }
}
