//! The clock every lease decision and fence expiry reads.
//!
//! Times are nanoseconds on one monotonic clock shared by keel and the
//! host: ack send times, "now", TTL expiries. Either the host sets the
//! value (tests, simulations: never a callback per read) or keel reads a
//! kernel clock: `CLOCK_MONOTONIC`, or `CLOCK_BOOTTIME`, which also counts
//! the time the machine was suspended. Zero means "no time": a clock that
//! reads zero or fails gives `None`, and every caller fails closed on
//! `None`.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};

pub enum Clock {
    /// The value the host last set (starts at the given value; 0 = unset).
    Manual(AtomicU64),
    /// `clock_gettime(CLOCK_MONOTONIC)`. It stops while the machine is
    /// suspended, so a leader that slept would resume with its lease's
    /// elapsed time short by the sleep.
    Monotonic,
    /// `clock_gettime(CLOCK_BOOTTIME)`: `CLOCK_MONOTONIC` plus the time
    /// suspended, so a suspend ages the lease as it ages the voters' wait.
    Boottime,
}

impl Clock {
    pub fn manual(start_ns: u64) -> Clock {
        Clock::Manual(AtomicU64::new(start_ns))
    }

    pub fn monotonic() -> Clock {
        Clock::Monotonic
    }

    pub fn boottime() -> Clock {
        Clock::Boottime
    }

    /// Sets a manual clock. A kernel clock cannot be set.
    pub fn set(&self, now_ns: u64) -> Result<()> {
        match self {
            Clock::Manual(v) => {
                v.store(now_ns, Ordering::Release);
                Ok(())
            }
            Clock::Monotonic | Clock::Boottime => Err(Error::invalid("the shard reads a kernel clock, which cannot be set; configure a manual clock")),
        }
    }

    /// Now in nanoseconds, or `None` when the clock is zero or failed.
    pub fn now(&self) -> Option<u64> {
        let ns = match self {
            Clock::Manual(v) => v.load(Ordering::Acquire),
            Clock::Monotonic => kernel_ns(libc::CLOCK_MONOTONIC)?,
            Clock::Boottime => kernel_ns(libc::CLOCK_BOOTTIME)?,
        };
        (ns != 0).then_some(ns)
    }
}

/// `clock_gettime(id)` in nanoseconds; `None` when the call fails.
fn kernel_ns(id: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
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
    fn the_kernel_clocks_read_their_own_clock_and_cannot_be_set() {
        for (c, id) in [(Clock::monotonic(), libc::CLOCK_MONOTONIC), (Clock::boottime(), libc::CLOCK_BOOTTIME)] {
            let before = kernel_ns(id).expect("the clock works on Linux");
            let now = c.now().unwrap();
            assert!(before <= now && now <= kernel_ns(id).unwrap(), "read between two reads of clock {id}");
            assert_eq!(c.set(1).unwrap_err().status, crate::status::KEEL_STATUS_INVALID_ARGUMENT);
        }
        // CLOCK_BOOTTIME counts what CLOCK_MONOTONIC does plus suspends.
        let mono = Clock::monotonic().now().unwrap();
        assert!(Clock::boottime().now().unwrap() >= mono);
    }
}
