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
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Frames that could not be decoded.
    pub malformed: u64,
    pub steps: u64,
    pub entries_installed: u64,
    pub ops_applied: u64,
    pub finished: u64,
    pub failed: u64,
}

#[derive(Default)]
struct Counters {
    refused_unannounced: AtomicU64,
    out_of_order: AtomicU64,
    overlapped: AtomicU64,
    malformed: AtomicU64,
    steps: AtomicU64,
    entries_installed: AtomicU64,
    ops_applied: AtomicU64,
    finished: AtomicU64,
    failed: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// One shard being received.
struct Incoming {
    shard_id: u32,
    peer: u64,
    /// The last step answered.
    step: u64,
    /// Taken by the engine once BEGIN (or, for a WAL delta, START) opened it.
    shard: Option<Shard>,
    snapshot: bool,
    /// A snapshot's version and the source's crc32 of its record, kept by
    /// the shard once the snapshot is complete (`Shard::set_snapshot_base`).
    base: Option<(u64, u32)>,
}

#[derive(Default)]
struct State {
    /// (shard id, peer) pairs the host announced.
    expected: HashSet<(u32, u64)>,
    /// By (peer, transfer id).
    running: HashMap<(u64, u64), Incoming>,
}

#[derive(Default)]
pub(super) struct Receiver {
    state: Mutex<State>,
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
            malformed: g(&c.malformed),
            steps: g(&c.steps),
            entries_installed: g(&c.entries_installed),
            ops_applied: g(&c.ops_applied),
            finished: g(&c.finished),
            failed: g(&c.failed),
        }
    }

    /// Handles one step from `peer`; returns the ACK to send (None when the
    /// frame is too damaged to say which transfer it belongs to).
    /// At most `max` receptions run at once.
    pub fn on_step(&self, engine: &Engine, max: usize, peer: u64, ty: u16, payload: &[u8]) -> Option<Ack> {
        let Ok(step) = wire::parse_step(payload) else {
            self.note_malformed();
            return None;
        };
        bump(&self.counters.steps, 1);
        let (id, n, acked, mut body) = (step.id, step.step, step.acked, step.body);
        let mut ack = Ack { id, step: n, status: KEEL_STATUS_OK, version: 0, crc: None, message: String::new() };
        if ty == wire::CANCEL {
            let taken = self.state.lock().running.remove(&(peer, id));
            if let Some(inc) = taken {
                abandon(engine, inc);
            }
            return None;
        }
        let result = if ty == wire::START {
            self.start(engine, max, peer, id, n, &mut body, &mut ack)
        } else {
            // Taken out while it is worked on: other transfers go on meanwhile.
            let taken = self.state.lock().running.remove(&(peer, id));
            match taken {
                None => Err(Error::new(KEEL_STATUS_NOT_FOUND, format!("no transfer {id} from node {peer} is running here"))),
                Some(mut inc) => {
                    let r = self.step(engine, &mut inc, ty, n, acked, &mut body, &mut ack);
                    match (&r, ty) {
                        (Ok(()), wire::FINISH) => {}
                        (Ok(()), _) => {
                            self.state.lock().running.insert((peer, id), inc);
                        }
                        (Err(_), _) => abandon(engine, inc),
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
        Some(ack)
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        engine: &Engine,
        max: usize,
        peer: u64,
        id: u64,
        n: u64,
        body: &mut crate::shard::files::Cursor,
        ack: &mut Ack,
    ) -> Result<()> {
        let malformed = |e: Error| Error::new(KEEL_STATUS_PROTOCOL, format!("malformed START: {}", e.message));
        let shard_id = body.u32().map_err(malformed)?;
        let mode = body.u8().map_err(malformed)?;
        if n != 1 {
            bump(&self.counters.out_of_order, 1);
            return Err(Error::new(KEEL_STATUS_PROTOCOL, format!("START is step {n}, not 1")));
        }
        let stale: Vec<Incoming> = {
            let mut st = self.state.lock();
            if !st.expected.contains(&(shard_id, peer)) {
                bump(&self.counters.refused_unannounced, 1);
                return Err(Error::new(
                    KEEL_STATUS_REFUSED,
                    format!("shard {shard_id} from node {peer} was not announced here (expect it first)"),
                ));
            }
            // An earlier attempt of the same shard that never finished
            // (its source gave up or restarted), or one under the same id
            // (a restarted source numbers its transfers afresh), ends here.
            let old: Vec<(u64, u64)> =
                st.running.iter().filter(|(k, i)| i.shard_id == shard_id || **k == (peer, id)).map(|(k, _)| *k).collect();
            let old: Vec<Incoming> = old.into_iter().filter_map(|k| st.running.remove(&k)).collect();
            if st.running.len() >= max {
                drop(st);
                for inc in old {
                    abandon(engine, inc);
                }
                return Err(Error::new(
                    KEEL_STATUS_BUSY,
                    format!("{max} transfers are being received here already (max_concurrent_transfers)"),
                ));
            }
            old
        };
        for inc in stale {
            abandon(engine, inc);
        }
        let mut inc = Incoming { shard_id, peer, step: 1, shard: None, snapshot: false, base: None };
        if mode == wire::MODE_DELTA {
            match engine.receive_shard(shard_id, None) {
                Ok(shard) => {
                    ack.version = shard.last_version();
                    ack.crc = shard.record_crc(ack.version)?;
                    inc.shard = Some(shard);
                }
                // Nothing usable here (no such shard, or the remains of a
                // snapshot that never completed): the source sends a snapshot.
                Err(e) if e.status == KEEL_STATUS_NOT_FOUND || e.status == KEEL_STATUS_CORRUPTION => {}
                Err(e) => return Err(e),
            }
        }
        self.state.lock().running.insert((peer, id), inc);
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
        inc.step = n;
        let protocol = |what: String| Error::new(KEEL_STATUS_PROTOCOL, what);
        match ty {
            wire::BEGIN => {
                let mode = body.u8().map_err(|e| protocol(e.message))?;
                let base = body.u64().map_err(|e| protocol(e.message))?;
                match mode {
                    wire::MODE_SNAPSHOT => {
                        if let Some(s) = inc.shard.take() {
                            drop(s);
                            engine.release_incoming(inc.shard_id, false)?;
                        }
                        let shard = engine.receive_shard(inc.shard_id, Some(base))?;
                        let has_crc = body.u8().map_err(|e| protocol(e.message))?;
                        let crc = body.u32().map_err(|e| protocol(e.message))?;
                        inc.base = (has_crc == 1).then_some((base, crc));
                        inc.shard = Some(shard);
                        inc.snapshot = true;
                    }
                    wire::MODE_DELTA => {
                        let have = inc.shard.as_ref().map_or(0, |s| s.last_version());
                        if inc.shard.is_none() || have != base {
                            return Err(protocol(format!("a WAL delta after version {base}, but this shard is at {have}")));
                        }
                    }
                    other => return Err(protocol(format!("unknown mode {other}"))),
                }
                ack.version = base;
            }
            wire::ENTRIES => {
                let shard = shard_of(inc, true)?;
                let entries = wire::entries(body)?;
                shard.install(&entries)?;
                bump(&self.counters.entries_installed, entries.len() as u64);
            }
            wire::SNAPSHOT_END => {
                // The snapshot is durable only as a whole: its entries are
                // in memory until this flush persists them. Only then may a
                // later WAL delta build on it.
                let shard = shard_of(inc, true)?;
                ack.version = shard.flush(true)?;
                if let Some((version, crc)) = inc.base {
                    shard.set_snapshot_base(version, crc)?;
                }
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
                ack.version = shard.flush(true)?;
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

/// The incoming shard, once BEGIN opened it (`snapshot`: only during a snapshot).
fn shard_of(inc: &Incoming, snapshot: bool) -> Result<&Shard> {
    match &inc.shard {
        Some(s) if inc.snapshot || !snapshot => Ok(s),
        _ => Err(Error::new(KEEL_STATUS_PROTOCOL, "a transfer frame arrived before BEGIN opened the shard (or outside a snapshot)")),
    }
}

/// Ends a reception that will not finish: the shard stays marked incoming.
fn abandon(engine: &Engine, inc: Incoming) {
    if inc.shard.is_some() {
        let _ = engine.release_incoming(inc.shard_id, false);
    }
}
