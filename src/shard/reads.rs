//! Reads at a consistency level (docs/LEASE.md): a shard whose host
//! replicates it with a consensus engine gets a lease gate, fed the facts
//! of that engine; each read, or session of reads, first asks the gate for
//! a permit (the lease, or one shared read-index), then reads local state,
//! which by then holds everything the permit's index covers.

use super::Shard;
use crate::error::{Error, Result};
use crate::lease::{LeaseGate, Level, ReadPermit};
use parking_lot::RwLock;
use std::sync::Arc;
use std::time::Duration;

/// A shard's lease gate and its read defaults.
pub struct Consensus {
    pub gate: LeaseGate,
    /// The level of reads that do not name one (the existing C reads).
    pub default_level: Level,
    /// The timeout of reads that do not name one.
    pub read_timeout: Duration,
}

/// The shard's consensus setup: none until the host configures it.
#[derive(Default)]
pub(super) struct Reads(RwLock<Option<Arc<Consensus>>>);

impl Reads {
    /// Forgets the gate at close and closes it: a read-index call in
    /// flight returns first, and the host's callback and user data are
    /// let go of here, so neither is touched once the shard is closed
    /// (reads that began before and still hold the gate get CLOSED).
    /// Outside the slot's lock: the host's call may wait for applies,
    /// which read the slot.
    pub(super) fn clear(&self) {
        let consensus = self.0.write().take();
        if let Some(c) = consensus {
            c.gate.close();
        }
    }

    /// Tells the gate, if there is one, that entries up to `index` are
    /// applied (the shard's own applies feed it; the host need not).
    pub(super) fn applied(&self, index: u64) {
        if let Some(c) = self.0.read().as_ref() {
            c.gate.advance_applied(index);
        }
    }
}

impl Shard {
    /// Sets up lease reads for this open of the shard. Once only: a second
    /// call is INVALID_ARGUMENT (the host's callback must stay valid until
    /// close, and replacing the gate would forget the facts).
    pub fn configure_consensus(&self, c: Consensus) -> Result<()> {
        // Checked under the slot's lock: a close marks the shard closed
        // before it empties the slot (`Reads::clear`), so a gate stored
        // here is one that close still finds and lets go of, never one
        // that outlives it with the host's callback.
        let mut slot = self.inner.reads.0.write();
        self.inner.check_not_closed()?;
        if slot.is_some() {
            return Err(Error::invalid("consensus is already configured for this shard"));
        }
        // Entries applied through the shard, before this open included.
        c.gate.advance_applied(self.applied_index());
        *slot = Some(Arc::new(c));
        Ok(())
    }

    /// The shard's gate, to feed it facts; INVALID_ARGUMENT before
    /// `configure_consensus`. A poisoned shard takes them too: it still
    /// serves reads, so a step-down must still end its lease.
    pub fn consensus(&self) -> Result<Arc<Consensus>> {
        let consensus = self.inner.reads.0.read().clone();
        // After the slot is read: a close marks the shard closed before it
        // empties the slot, so a slot emptied by a close in between is
        // CLOSED here, not "not configured".
        self.inner.check_not_closed()?;
        consensus.ok_or_else(not_configured)
    }

    /// Permission for a read, or a session of reads, at `level` (None: the
    /// shard's default; stale when unconfigured) within `timeout` (None: the
    /// shard's default): every read made after it sees at least the state
    /// at the permit's index. Errors: NOT_LEADER (with the leader hint),
    /// TIMEOUT, the read-index callback's error, INVALID_ARGUMENT (lease or
    /// linearizable without consensus configured), CLOSED.
    pub fn begin_read(&self, level: Option<Level>, timeout: Option<Duration>) -> Result<ReadPermit> {
        let consensus = self.inner.reads.0.read().clone();
        // After the slot is read, as in `consensus`: a close racing this
        // read answers CLOSED, never INVALID_ARGUMENT.
        self.inner.check_not_closed()?;
        match consensus {
            Some(c) => {
                let level = level.unwrap_or(c.default_level);
                c.gate.begin_read(level, timeout.unwrap_or(c.read_timeout)).map_err(Error::from)
            }
            None if matches!(level, None | Some(Level::Stale)) => Ok(ReadPermit { index: 0, from_lease: false }),
            None => Err(not_configured()),
        }
    }

    /// Whether both are handles of the same open shard.
    pub fn same_shard(&self, other: &Shard) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

fn not_configured() -> Error {
    Error::invalid("no consensus is configured for this shard: lease and linearizable reads need its facts (configure it first)")
}
