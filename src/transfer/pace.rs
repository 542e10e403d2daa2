//! The bandwidth cap of one transfer (the node's
//! `transfer_bandwidth_bytes_per_sec`): a token bucket on the sending
//! side. Every step's frame takes its bytes from the bucket before it is
//! sent; a bucket in debt waits until the debt is paid at the capped rate.

use super::clock::Clock;
use std::time::Duration;

/// The bucket holds at most this share of a second's bytes: a short burst
/// after an idle moment, never a long one.
const BURST_SECONDS: f64 = 0.1;

pub(super) struct Pace {
    rate: f64,
    burst: f64,
    /// Bytes that may go now; negative while in debt.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Duration,
}

impl Pace {
    /// A bucket for `bytes_per_sec` (None when 0: no cap), full at first.
    pub fn new(bytes_per_sec: u64, clock: &dyn Clock) -> Option<Pace> {
        (bytes_per_sec > 0).then(|| {
            let rate = bytes_per_sec as f64;
            let burst = (rate * BURST_SECONDS).max(1.0);
            Pace { rate, burst, tokens: burst, at: clock.now() }
        })
    }

    /// The bucket's capacity in bytes.
    #[cfg(test)]
    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// Takes `bytes` from the bucket and waits off any debt; returns how
    /// long it waited.
    pub fn take(&mut self, bytes: usize, clock: &dyn Clock) -> Duration {
        let now = clock.now();
        let earned = now.saturating_sub(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst) - bytes as f64;
        self.at = now;
        if self.tokens >= 0.0 {
            return Duration::ZERO;
        }
        let wait = Duration::from_secs_f64(-self.tokens / self.rate);
        clock.sleep(wait);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    /// A clock whose time moves only when it is slept on.
    #[derive(Debug, Default)]
    struct Fake(Mutex<Duration>);

    impl Clock for Fake {
        fn now(&self) -> Duration {
            *self.0.lock()
        }
        fn sleep(&self, d: Duration) {
            *self.0.lock() += d;
        }
    }

    #[test]
    fn the_bucket_holds_the_rate_over_many_frames() {
        let clock = Fake::default();
        assert!(Pace::new(0, &clock).is_none(), "0 is no cap");
        let mut p = Pace::new(1000, &clock).unwrap();
        let (mut sent, mut waited) = (0usize, Duration::ZERO);
        for size in [50, 700, 1, 4000, 20, 20, 20, 999] {
            waited += p.take(size, &clock);
            sent += size;
        }
        // Time moved only by the waits: everything beyond the first burst
        // was paid for at 1000 bytes a second.
        let paid = waited.as_secs_f64() * 1000.0 + p.burst();
        assert!((paid - sent as f64).abs() < 0.01, "paid {paid} for {sent}");
    }
}
