//! The clock every lease decision and fence expiry reads.
//!
//! Times are nanoseconds on one monotonic clock shared by keel and the
//! host: ack send times, "now", TTL expiries. Either the host sets the
//! value (tests, simulations: never a callback per read) or keel reads
//! `CLOCK_MONOTONIC`. Zero means "no time": a clock that reads zero or
//! fails gives `None`, and every caller fails closed on `None`.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};

pub enum Clock {
    /// The value the host last set (starts at the given value; 0 = unset).
    Manual(AtomicU64),
    /// `clock_gettime(CLOCK_MONOTONIC)`.
    Monotonic,
}

impl Clock {
    pub fn manual(start_ns: u64) -> Clock {
        Clock::Manual(AtomicU64::new(start_ns))
    }

    pub fn monotonic() -> Clock {
        Clock::Monotonic
    }

    /// Sets a manual clock. A monotonic clock cannot be set.
    pub fn set(&self, now_ns: u64) -> Result<()> {
        match self {
            Clock::Manual(v) => {
                v.store(now_ns, Ordering::Release);
                Ok(())
            }
            Clock::Monotonic => Err(Error::invalid("the monotonic clock cannot be set; configure a manual clock")),
        }
    }

    /// Now in nanoseconds, or `None` when the clock is zero or failed.
    pub fn now(&self) -> Option<u64> {
        let ns = match self {
            Clock::Manual(v) => v.load(Ordering::Acquire),
            Clock::Monotonic => monotonic_ns()?,
        };
        (ns != 0).then_some(ns)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds; `None` when the call fails.
pub fn monotonic_ns() -> Option<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return None;
    }
    u64::try_from(ts.tv_sec).ok()?.checked_mul(1_000_000_000)?.checked_add(u64::try_from(ts.tv_nsec).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_clock_reads_as_no_time() {
        let c = Clock::manual(0);
        assert_eq!(c.now(), None);
        c.set(5).unwrap();
        assert_eq!(c.now(), Some(5));
        c.set(0).unwrap();
        assert_eq!(c.now(), None);
    }

    #[test]
    fn the_monotonic_clock_reads_and_cannot_be_set() {
        let c = Clock::monotonic();
        let a = c.now().expect("CLOCK_MONOTONIC works on Linux");
        assert!(c.now().unwrap() >= a);
        assert_eq!(c.set(1).unwrap_err().status, crate::status::KEEL_STATUS_INVALID_ARGUMENT);
    }
}
