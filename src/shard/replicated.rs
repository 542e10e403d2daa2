//! State a shard keeps for a host that replicates it (docs/LEASE.md,
//! "Applying committed entries"): the host's applied index and, per fence
//! bucket, the highest fencing token a write was accepted with.
//!
//! Both change only through WAL records (`StateChange`, logged in the same
//! frame as the operations they come with), so replicas that apply the
//! same entries agree on them and a reopen rebuilds them by replay. Both
//! only grow, so merging changes in any order gives the same state: replay
//! may meet them out of version order, and the manifest's copy may already
//! hold some of the WAL's.
//!
//! The manifest stores the state as of its persisted version (the WAL
//! below it may be gone): `Tracker` keeps the changes logged since, with
//! their versions, and folds them in as the persisted version passes them.

use super::op::OP_STATE;
use crate::error::{Error, Result};
use crate::lease::FenceCheck;
use std::collections::VecDeque;

/// A fencing token for a bucket, carried by a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub bucket: Vec<u8>,
    pub token: u64,
}

/// The replicated state (see the module comment).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replicated {
    /// The host's index of the last entry applied (0: none).
    pub applied_index: u64,
    /// The highest accepted token per bucket.
    pub fences: FenceCheck,
}

impl Replicated {
    pub fn merge(&mut self, c: &StateChange) {
        if let Some(i) = c.index {
            self.applied_index = self.applied_index.max(i);
        }
        if let Some(f) = &c.fence {
            self.fences.raise(&f.bucket, f.token);
        }
    }

    /// Takes in another state of the same shard (both only grow).
    pub fn absorb(&mut self, other: &Replicated) {
        self.applied_index = self.applied_index.max(other.applied_index);
        for (bucket, token) in other.fences.sorted() {
            self.fences.raise(bucket, token);
        }
    }

    /// `[u64 applied index][u32 buckets]` then per bucket, in order,
    /// `[u32 length][bucket][u64 highest token]`, integers little-endian:
    /// the manifest's copy and a snapshot transfer's.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.applied_index.to_le_bytes());
        let fences = self.fences.sorted();
        out.extend_from_slice(&(fences.len() as u32).to_le_bytes());
        for (bucket, token) in fences {
            super::files::put_bytes(out, bucket);
            out.extend_from_slice(&token.to_le_bytes());
        }
    }

    pub fn decode(c: &mut super::files::Cursor) -> Result<Replicated> {
        Self::decode_within(c, usize::MAX)
    }

    /// `decode` of a state a peer sent: a bucket no write here could name
    /// (longer than MAX_KEY_SIZE) is refused, not stored in every
    /// manifest from then on.
    pub fn decode_sent(c: &mut super::files::Cursor) -> Result<Replicated> {
        Self::decode_within(c, super::MAX_KEY_SIZE)
    }

    fn decode_within(c: &mut super::files::Cursor, max_bucket: usize) -> Result<Replicated> {
        let mut r = Replicated { applied_index: c.u64()?, ..Default::default() };
        // A bucket takes its length and its token at least.
        for _ in 0..c.count(4 + 8)? {
            let bucket = c.bytes()?;
            if bucket.len() > max_bucket {
                return Err(Error::invalid(format!("a fence bucket of {} bytes (the limit is {max_bucket})", bucket.len())));
            }
            r.fences.raise(bucket, c.u64()?);
        }
        Ok(r)
    }
}

/// One WAL record's change of the replicated state:
/// `[u8 4][u8 flags][u64 index if flags&1][u32 bucket length][bucket][u64 token] if flags&2`,
/// integers little-endian.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateChange {
    /// The entry's index (keel_shard_apply), None for a plain fenced write.
    pub index: Option<u64>,
    /// The fence a write was accepted with (never one it was refused by).
    pub fence: Option<Fence>,
}

const HAS_INDEX: u8 = 1;
const HAS_FENCE: u8 = 2;

impl StateChange {
    pub fn is_empty(&self) -> bool {
        self.index.is_none() && self.fence.is_none()
    }

    pub fn record_len(&self) -> usize {
        2 + self.index.map_or(0, |_| 8) + self.fence.as_ref().map_or(0, |f| 12 + f.bucket.len())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.record_len());
        out.push(OP_STATE);
        out.push(self.index.map_or(0, |_| HAS_INDEX) | self.fence.as_ref().map_or(0, |_| HAS_FENCE));
        if let Some(i) = self.index {
            out.extend_from_slice(&i.to_le_bytes());
        }
        if let Some(f) = &self.fence {
            out.extend_from_slice(&(f.bucket.len() as u32).to_le_bytes());
            out.extend_from_slice(&f.bucket);
            out.extend_from_slice(&f.token.to_le_bytes());
        }
        debug_assert_eq!(out.len(), self.record_len());
        out
    }

    /// Decodes a whole state record (its first byte is OP_STATE).
    pub fn decode(record: &[u8]) -> Result<StateChange> {
        let corrupt = |what: &str| Error::corruption(format!("shard WAL state record: {what}"));
        let mut c = record.get(1..).ok_or_else(|| corrupt("empty"))?;
        let mut take = |n: usize| -> Result<&[u8]> {
            if c.len() < n {
                return Err(corrupt("cut short"));
            }
            let (a, b) = c.split_at(n);
            c = b;
            Ok(a)
        };
        let flags = take(1)?[0];
        if flags & !(HAS_INDEX | HAS_FENCE) != 0 {
            return Err(corrupt(&format!("unknown flags {flags:#x}")));
        }
        let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap());
        let index = if flags & HAS_INDEX != 0 { Some(u64_of(take(8)?)) } else { None };
        let fence = if flags & HAS_FENCE != 0 {
            let len = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
            let bucket = take(len)?.to_vec();
            Some(Fence { bucket, token: u64_of(take(8)?) })
        } else {
            None
        };
        if !c.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(StateChange { index, fence })
    }
}

/// The live state and what the manifest may record of it.
#[derive(Default)]
pub struct Tracker {
    /// Everything logged so far: what the write gate checks against.
    live: Replicated,
    /// The state as of the last persisted version folded in.
    durable: Replicated,
    /// Changes logged after it, in version order.
    pending: VecDeque<(u64, StateChange)>,
}

impl Tracker {
    /// A tracker starting from the manifest's state.
    pub fn new(durable: Replicated) -> Tracker {
        Tracker { live: durable.clone(), durable, pending: VecDeque::new() }
    }

    pub fn live(&self) -> &Replicated {
        &self.live
    }

    /// Records a change logged at `version` (replay may repeat versions
    /// the manifest already covers: merging is idempotent).
    pub fn logged(&mut self, version: u64, change: StateChange) {
        debug_assert!(self.pending.back().map_or(true, |(v, _)| *v < version), "changes are logged in version order");
        self.live.merge(&change);
        self.pending.push_back((version, change));
    }

    /// Takes in the state a snapshot was taken at: it holds for every
    /// version the snapshot installed, all at or below anything logged
    /// here later, so it is durable with the snapshot's first flush.
    pub fn seed(&mut self, state: &Replicated) {
        self.live.absorb(state);
        self.durable.absorb(state);
    }

    /// The state as of `persisted`: every change at or below it, for a
    /// manifest that records that version as persisted.
    pub fn at(&mut self, persisted: u64) -> Replicated {
        while self.pending.front().is_some_and(|(v, _)| *v <= persisted) {
            let (_, c) = self.pending.pop_front().expect("checked above");
            self.durable.merge(&c);
        }
        self.durable.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_records_round_trip_and_reject_damage() {
        let all = [
            StateChange { index: Some(7), fence: None },
            StateChange { index: None, fence: Some(Fence { bucket: b"b".to_vec(), token: 9 }) },
            StateChange { index: Some(u64::MAX), fence: Some(Fence { bucket: Vec::new(), token: 0 }) },
        ];
        for c in &all {
            let r = c.encode();
            assert_eq!(&StateChange::decode(&r).unwrap(), c);
            for cut in 1..r.len() {
                assert!(StateChange::decode(&r[..cut]).is_err(), "cut at {cut}");
            }
            let mut long = r.clone();
            long.push(0);
            assert!(StateChange::decode(&long).is_err());
        }
        assert!(StateChange::decode(&[OP_STATE, 4]).is_err());
    }

    #[test]
    fn the_durable_state_takes_only_changes_at_or_below_the_persisted_version() {
        let mut t = Tracker::new(Replicated { applied_index: 3, ..Default::default() });
        t.logged(10, StateChange { index: Some(4), fence: Some(Fence { bucket: b"b".to_vec(), token: 5 }) });
        t.logged(12, StateChange { index: Some(5), fence: None });
        assert_eq!(t.live().applied_index, 5);
        assert_eq!(t.at(9).applied_index, 3);
        let at10 = t.at(11);
        assert_eq!((at10.applied_index, at10.fences.highest(b"b")), (4, Some(5)));
        assert_eq!(t.at(12).applied_index, 5);
    }
}
