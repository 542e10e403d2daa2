//! Time as a transfer sees it: the retry backoff and the bandwidth cap
//! wait through a `Clock`, so tests pass a fake one and never sleep out a
//! real backoff or a real cap. The ACK timeout stays on real time.

use std::fmt::Debug;
use std::time::{Duration, Instant};

pub trait Clock: Send + Sync + Debug {
    /// Time since an origin of the clock's choosing; never goes back.
    fn now(&self) -> Duration;
    /// Waits `d` (a fake clock moves its `now` on instead).
    fn sleep(&self, d: Duration);
}

/// The monotonic clock and real sleeps (the default).
#[derive(Debug)]
pub struct RealClock {
    origin: Instant,
}

impl RealClock {
    pub fn new() -> RealClock {
        RealClock { origin: Instant::now() }
    }
}

impl Default for RealClock {
    fn default() -> Self {
        RealClock::new()
    }
}

impl Clock for RealClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}
