//! Counters of the read decision, readable as a plain snapshot.

use super::consensus::AckIgnored;
use super::gate::MissReason;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of the counters (all since the gate was created).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseStats {
    /// Lease-level reads served from the lease (a read that timed out
    /// waiting for the applied index to reach the commit index is not one).
    pub lease_hits: u64,
    /// Lease-level misses by reason.
    pub miss_not_leader: u64,
    pub miss_ack_stale: u64,
    pub miss_ack_missing: u64,
    pub miss_ack_future: u64,
    pub miss_transfer: u64,
    pub miss_term_not_applied: u64,
    pub miss_clock: u64,
    /// Read-index callbacks made (one per shared flight, not per waiter;
    /// none for a read that finds the gate closed).
    pub read_index_calls: u64,
    /// Callbacks that returned an error (TIMEOUT too: its read also
    /// counts in `read_index_timeouts`).
    pub read_index_errors: u64,
    /// Sum and maximum of the callbacks' latency, in nanoseconds.
    pub read_index_latency_ns_total: u64,
    pub read_index_latency_ns_max: u64,
    /// Reads that gave up with TIMEOUT: waiting for a read-index, or for
    /// the applied index to reach the read-index or (lease reads) the
    /// commit index.
    pub read_index_timeouts: u64,
    /// Acks the host reported that were not counted, by reason.
    pub acks_ignored_not_leader: u64,
    pub acks_ignored_other_term: u64,
    pub acks_ignored_not_voter: u64,
    pub acks_ignored_bad_time: u64,
}

#[derive(Default)]
pub struct Metrics {
    lease_hits: AtomicU64,
    misses: [AtomicU64; MissReason::COUNT],
    read_index_calls: AtomicU64,
    read_index_errors: AtomicU64,
    latency_total: AtomicU64,
    latency_max: AtomicU64,
    timeouts: AtomicU64,
    acks_ignored: [AtomicU64; 4],
}

impl Metrics {
    pub fn hit(&self) {
        self.lease_hits.fetch_add(1, Relaxed);
    }
    pub fn miss(&self, reason: MissReason) {
        self.misses[reason as usize].fetch_add(1, Relaxed);
    }
    pub fn read_index(&self, latency_ns: u64, failed: bool) {
        self.read_index_calls.fetch_add(1, Relaxed);
        if failed {
            self.read_index_errors.fetch_add(1, Relaxed);
        }
        self.latency_total.fetch_add(latency_ns, Relaxed);
        self.latency_max.fetch_max(latency_ns, Relaxed);
    }
    pub fn timeout(&self) {
        self.timeouts.fetch_add(1, Relaxed);
    }
    pub fn ack_ignored(&self, why: AckIgnored) {
        self.acks_ignored[why as usize].fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> LeaseStats {
        let m = |r: MissReason| self.misses[r as usize].load(Relaxed);
        let a = |r: AckIgnored| self.acks_ignored[r as usize].load(Relaxed);
        LeaseStats {
            lease_hits: self.lease_hits.load(Relaxed),
            miss_not_leader: m(MissReason::NotLeader),
            miss_ack_stale: m(MissReason::AckStale),
            miss_ack_missing: m(MissReason::AckMissing),
            miss_ack_future: m(MissReason::AckFuture),
            miss_transfer: m(MissReason::Transfer),
            miss_term_not_applied: m(MissReason::TermNotApplied),
            miss_clock: m(MissReason::Clock),
            read_index_calls: self.read_index_calls.load(Relaxed),
            read_index_errors: self.read_index_errors.load(Relaxed),
            read_index_latency_ns_total: self.latency_total.load(Relaxed),
            read_index_latency_ns_max: self.latency_max.load(Relaxed),
            read_index_timeouts: self.timeouts.load(Relaxed),
            acks_ignored_not_leader: a(AckIgnored::NotLeader),
            acks_ignored_other_term: a(AckIgnored::OtherTerm),
            acks_ignored_not_voter: a(AckIgnored::NotVoter),
            acks_ignored_bad_time: a(AckIgnored::BadTime),
        }
    }
}
