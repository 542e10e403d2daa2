//! Holder pins: each holder (a shard transfer, a lagging follower, the
//! host's `set_keep_from`) keeps the records it still needs, and the WAL
//! truncates only below the lowest live pin. A single `keep_from` value
//! cannot do this: two holders would overwrite each other's hold.
//!
//! A pin shares the table readers pin their segments in (`State::pins`),
//! so truncation (`Shared::truncate`) already honours it; `keep_from` stays
//! the host's own hold, one holder among the pins.

use super::{Shared, Wal};
use crate::error::{Error, Result};
use crate::status::*;
use std::sync::Arc;

/// Keeps every WAL record >= `from()` while it lives; dropping it
/// releases the hold (the next truncation may then delete those records).
pub struct Pin {
    shared: Arc<Shared>,
    id: u64,
    from: u64,
}

impl Wal {
    /// Pins the records >= `from`. TRUNCATED when `from` is below the
    /// first retained record (what it asks to keep is gone already).
    pub fn pin(&self, from: u64) -> Result<Pin> {
        self.pin_at(Some(from))
    }

    /// Pins every record retained now, from the first one (or, in an
    /// empty log, from the next one). Unlike reading `first_seq` and then
    /// pinning it, no truncation can come in between.
    pub fn pin_retained(&self) -> Result<Pin> {
        self.pin_at(None)
    }

    fn pin_at(&self, from: Option<u64>) -> Result<Pin> {
        let mut st = self.shared.state.lock();
        self.shared.check_usable(&st)?;
        let first = st.segments.first().map_or(st.next_seq, |s| s.first_seq);
        let from = from.unwrap_or(first);
        if from < first.max(1) {
            return Err(Error::new(
                KEEL_STATUS_TRUNCATED,
                format!("cannot pin from {from}: the first retained record is {first}"),
            ));
        }
        let id = st.next_pin;
        st.next_pin += 1;
        st.pins.insert(id, from);
        Ok(Pin { shared: self.shared.clone(), id, from })
    }
}

impl Pin {
    /// The first record this pin keeps.
    pub fn from(&self) -> u64 {
        self.from
    }

    /// Moves the hold forward to `from` (records below it may go); a pin
    /// never moves back, since what it released may be deleted already.
    pub fn advance(&mut self, from: u64) {
        if from > self.from {
            self.from = from;
            self.shared.state.lock().pins.insert(self.id, from);
        }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.shared.state.lock().pins.remove(&self.id);
    }
}
