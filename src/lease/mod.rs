//! Lease reads driven by the host's consensus engine, and a fenced lease
//! table. See docs/LEASE.md for the contract.
//!
//! keel never runs consensus: the host reports the facts of each shard
//! (`consensus`), keel decides whether a read may be served from the
//! leader's lease or needs a read-index first (`gate`, `read_index`),
//! with the lease bounded by the election timeout (`config`) and time
//! taken from one monotonic clock (`clock`). The fence table (`fence`)
//! hands out TTL leases with fencing tokens that only grow, across
//! restarts too.

pub mod clock;
pub mod config;
pub mod consensus;
pub mod fence;
pub mod gate;
pub mod metrics;
pub mod read_index;

pub use clock::Clock;
pub use config::LeaseConfig;
pub use consensus::{AckIgnored, ConsensusState, PeerId, Role, Voters};
pub use fence::{FenceCheck, FenceTable};
pub use gate::{Decision, LeaseGate, Level, MissReason, ReadPermit, Refused};
pub use metrics::LeaseStats;
pub use read_index::ReadIndexFn;
