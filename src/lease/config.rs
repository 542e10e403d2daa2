//! The lease length and the bound it must respect.
//!
//! An old leader keeps serving lease reads until `quorum ack + lease`. A
//! new leader can only exist once a majority stopped hearing from the old
//! one for at least the minimum election timeout, measured on THEIR clocks
//! from when they RECEIVED a message sent at or after the quorum ack. So
//! the lease must end before the earliest such election: shorter than the
//! minimum election timeout minus the worst clock drift over that span and
//! the worst one-way delay a message may spend before a peer receives it
//! (a round trip bounds it).

use crate::error::{Error, Result};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long after the quorum ack lease reads are served.
    pub lease: Duration,
    /// The minimum election timeout of the host's engine (for etcd raft:
    /// ElectionTick × tick interval; randomized timeouts only grow from there).
    pub election_timeout_min: Duration,
    /// The most the clocks of two nodes may drift apart over one election timeout.
    pub max_clock_drift: Duration,
    /// The longest round trip between the leader and a voter.
    pub max_round_trip: Duration,
}

impl LeaseConfig {
    /// Refuses (INVALID_ARGUMENT) a configuration whose lease could outlive
    /// the old leader's leadership: requires 0 < lease < election_timeout_min
    /// − max_clock_drift − max_round_trip.
    pub fn validate(&self) -> Result<()> {
        if self.lease.is_zero() {
            return Err(Error::invalid("the lease length is zero"));
        }
        let bound = self
            .election_timeout_min
            .checked_sub(self.max_clock_drift)
            .and_then(|d| d.checked_sub(self.max_round_trip))
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "the election timeout {:?} leaves no room for a lease after the drift {:?} and round trip {:?}",
                    self.election_timeout_min, self.max_clock_drift, self.max_round_trip
                ))
            })?;
        if self.lease >= bound {
            return Err(Error::invalid(format!(
                "the lease {:?} must be shorter than the election timeout {:?} minus drift {:?} and round trip {:?} (< {bound:?})",
                self.lease, self.election_timeout_min, self.max_clock_drift, self.max_round_trip
            )));
        }
        if u64::try_from(self.lease.as_nanos()).is_err() {
            return Err(Error::invalid("the lease does not fit 64-bit nanoseconds"));
        }
        Ok(())
    }

    /// The lease in nanoseconds (valid after `validate`).
    pub fn lease_ns(&self) -> u64 {
        self.lease.as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(lease_ms: u64, election_ms: u64, drift_ms: u64, rtt_ms: u64) -> LeaseConfig {
        LeaseConfig {
            lease: Duration::from_millis(lease_ms),
            election_timeout_min: Duration::from_millis(election_ms),
            max_clock_drift: Duration::from_millis(drift_ms),
            max_round_trip: Duration::from_millis(rtt_ms),
        }
    }

    #[test]
    fn the_lease_must_be_strictly_below_election_minus_margins() {
        cfg(799, 1000, 100, 100).validate().unwrap();
        assert!(cfg(800, 1000, 100, 100).validate().is_err(), "equal to the bound");
        assert!(cfg(1000, 1000, 0, 0).validate().is_err(), "equal to the election timeout");
        assert!(cfg(0, 1000, 0, 0).validate().is_err(), "zero lease");
        assert!(cfg(1, 200, 100, 100).validate().is_err(), "margins eat the whole timeout");
        assert!(cfg(1, 100, 200, 0).validate().is_err(), "drift above the timeout");
    }
}
