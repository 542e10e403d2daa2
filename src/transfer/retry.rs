//! Retrying a step (docs/TRANSFER.md, "Faults"): a step whose frame could
//! not be sent, or whose ACK did not come back, is sent again whole after
//! a backoff that doubles each time, once the node has dialed the peer
//! again. An answer from the receiver is never retried: it has spoken.

use crate::error::{Error, Result};
use crate::status::*;
use std::time::Duration;

/// How often and how patiently a failed step is sent again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Retries of one step before the transfer fails (0: none).
    pub max_retries: u32,
    /// The wait before the first retry; each later one waits twice as
    /// long as the one before, up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { max_retries: 6, first_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(5) }
    }
}

/// The longest wait an option of a transfer may ask for (a step's ACK, a
/// backoff): a day. Anything longer is a mistake, such as a negative
/// count turned unsigned, that would hang a transfer for weeks.
pub const MAX_WAIT: Duration = Duration::from_secs(86_400);

impl Retry {
    pub fn validate(&self) -> Result<()> {
        if self.max_retries > 1000 {
            return Err(Error::invalid(format!("max_retries {} is above 1000", self.max_retries)));
        }
        if self.max_backoff > MAX_WAIT {
            return Err(Error::invalid(format!("max_backoff {:?} is above a day", self.max_backoff)));
        }
        if self.first_backoff > self.max_backoff {
            return Err(Error::invalid(format!(
                "first_backoff {:?} is above max_backoff {:?}",
                self.first_backoff, self.max_backoff
            )));
        }
        Ok(())
    }

    /// The wait before retry number `n` (from 1).
    pub fn backoff(&self, n: u32) -> Duration {
        let doubled = self.first_backoff.saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX));
        doubled.min(self.max_backoff)
    }
}

/// Whether a failure of the transport (not an answer of the receiver) may
/// pass once the peer is dialed again: no connection, a broken or cut-off
/// one, or an ACK that never came.
pub(super) fn transient(e: &Error) -> bool {
    matches!(e.status, KEEL_STATUS_NOT_FOUND | KEEL_STATUS_IO | KEEL_STATUS_BUSY | KEEL_STATUS_CLOSED | KEEL_STATUS_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        let r = Retry { max_retries: 40, first_backoff: Duration::from_millis(10), max_backoff: Duration::from_millis(75) };
        let waits: Vec<u128> = (1..=6).map(|n| r.backoff(n).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 75, 75, 75]);
        assert_eq!(r.backoff(40), Duration::from_millis(75), "no overflow far out");
        assert!(Retry { first_backoff: Duration::from_secs(9), ..Retry::default() }.validate().is_err());
    }
}
