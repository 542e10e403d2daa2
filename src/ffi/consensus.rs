//! C API of a shard's consensus facts and lease reads
//! (`keel_shard_consensus_*`, `keel_lease_*`): the host's consensus engine
//! reports role, term, acks, voters, the applied index and transfers;
//! keel decides how each read is served (docs/LEASE.md).

use crate::error::Error;
use crate::ffi::boundary::{in_u64s, out_ptr};
use crate::ffi::error::keel_error_t;
use crate::ffi::shard::keel_shard_t;
use crate::ffi::versioned::{init_options, read_known_options, write_stats};
use crate::ffi::writer::keel_user_data_free_fn;
use crate::lease::{Clock, LeaseConfig, LeaseGate, Level, Role, Voters};
use crate::shard::Consensus;
use crate::status::*;
use std::ffi::c_void;
use std::time::Duration;

/// The read uses the shard's default level (keel_lease_options_t.default_level;
/// stale when no consensus is configured).
pub const KEEL_READ_DEFAULT: u32 = 0;
/// Local state, no checks: may be behind, or served by a deposed leader.
pub const KEEL_READ_STALE: u32 = 1;
/// Served from the leader's lease when every gate holds, otherwise after a
/// read-index (docs/LEASE.md, "The decision").
pub const KEEL_READ_LEASE: u32 = 2;
/// Always after a read-index.
pub const KEEL_READ_LINEARIZABLE: u32 = 3;

/// keel_shard_consensus_set_role(): not the leader (follower, candidate,
/// learner, or not known yet).
pub const KEEL_ROLE_FOLLOWER: u32 = 0;
/// keel_shard_consensus_set_role(): this node leads.
pub const KEEL_ROLE_LEADER: u32 = 1;

/// keel_lease_options_t.clock: keel reads CLOCK_MONOTONIC. It stops while
/// the machine is suspended: a leader that slept resumes believing less
/// time passed than its voters waited. Prefer KEEL_CLOCK_BOOTTIME where
/// the leader's machine may suspend.
pub const KEEL_CLOCK_MONOTONIC: u64 = 0;
/// keel_lease_options_t.clock: the time is the value the host last set with
/// keel_shard_consensus_set_clock() (starts at 0, "no time": lease reads
/// miss until it is set). For tests and simulations.
pub const KEEL_CLOCK_MANUAL: u64 = 1;
/// keel_lease_options_t.clock: keel reads CLOCK_BOOTTIME, CLOCK_MONOTONIC
/// plus the time the machine was suspended, so a suspend ages the lease.
pub const KEEL_CLOCK_BOOTTIME: u64 = 2;

/// The host's read-index round trip: performs a consensus read-index
/// (etcd raft: ReadIndex, then wait for its ReadState) and writes the
/// index to `*index`, returning KEEL_STATUS_OK; or returns another status
/// (NOT_LEADER when this node no longer leads, TIMEOUT, ...), which the
/// read returns (a value that is no keel_status_t: INVALID_ARGUMENT; PANIC
/// or POISONED as they are, though the shard is neither). Only the status
/// reaches the read: a NOT_LEADER read's leader hint is the one keel knows
/// from keel_shard_consensus_set_role(), which the callback may call
/// before it returns (none while keel still has this node leading). Runs on the thread of a read that missed the lease;
/// concurrent misses share one call. It may block, but keel cannot
/// interrupt it: the read that makes the call waits for it to return
/// whatever its timeout (reads sharing the call give up at theirs), so
/// bound the round trip here. It must not read from or close the same
/// shard. Never called after keel_shard_close() (or
/// keel_engine_close() of its engine) returned: the close waits for a
/// call in flight to return, and reads that miss the lease from then on
/// fail with CLOSED without calling it.
pub type keel_read_index_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, index: *mut u64) -> keel_status_t>;

/// sizeof(keel_lease_options_t) of version 1.
pub const KEEL_LEASE_OPTIONS_SIZE_V1: u32 = 88;

/// Options of keel_shard_consensus_configure(). Versioned by `struct_size`
/// (docs/FFI.md, "Versioned structs"): fill it with
/// keel_lease_options_init_sized(&o, sizeof o) first. Durations are in
/// milliseconds; the lease must be shorter than election_timeout_min_ms
/// minus max_clock_drift_ms minus max_round_trip_ms.
#[repr(C)]
pub struct keel_lease_options_t {
    pub struct_size: u32,
    /// KEEL_READ_* of the reads that do not name a level (keel_shard_get()
    /// and the rest, and `_ex` reads with KEEL_READ_DEFAULT). Default
    /// KEEL_READ_STALE.
    pub default_level: u32,
    /// This node's consensus id: non-zero (0 means "no peer" in this API).
    pub self_id: u64,
    /// How long after the quorum ack the leader serves lease reads.
    pub lease_ms: u64,
    /// The smallest election timeout the engine may pick (etcd raft:
    /// ElectionTick × tick interval).
    pub election_timeout_min_ms: u64,
    /// The most two nodes' clocks may drift apart over an election timeout.
    pub max_clock_drift_ms: u64,
    /// The longest round trip between the leader and a voter.
    pub max_round_trip_ms: u64,
    /// Timeout of reads that do not name one (keel_read_options_t.timeout_ms
    /// 0): the wait for a read-index and for the applied index (not the
    /// host's own call, see keel_read_index_fn). Default 5000; 0 is
    /// refused.
    pub read_timeout_ms: u64,
    /// KEEL_CLOCK_MONOTONIC (default), KEEL_CLOCK_BOOTTIME or
    /// KEEL_CLOCK_MANUAL. Acks must be stamped on this clock
    /// (keel_shard_consensus_now() reads it).
    pub clock: u64,
    /// Required: the read-index round trip (keel_read_index_fn).
    pub read_index: keel_read_index_fn,
    /// Passed to read_index; keel never dereferences it. It must stay
    /// valid until keel_shard_close() returned (or read_index_free ran).
    pub read_index_user_data: *mut c_void,
    /// Optional (NULL: none). When set, keel_shard_consensus_configure()
    /// takes ownership of read_index_user_data whatever it returns: keel
    /// calls read_index_free(read_index_user_data) exactly once, when it
        /// no longer needs it: inside the close of the shard (keel_shard_close(),
    /// or keel_engine_close() of its engine), on the closing thread, after
    /// a read-index call in flight returned; or before configure returns an
    /// error. Only a NULL `opts`, or one whose struct_size keel cannot
    /// read, leaves ownership with the caller.
    pub read_index_free: keel_user_data_free_fn,
}
versioned!(keel_lease_options_t, [KEEL_LEASE_OPTIONS_SIZE_V1]);

fn default_options() -> keel_lease_options_t {
    keel_lease_options_t {
        struct_size: KEEL_LEASE_OPTIONS_SIZE_V1,
        default_level: KEEL_READ_STALE,
        self_id: 0,
        lease_ms: 0,
        election_timeout_min_ms: 0,
        max_clock_drift_ms: 0,
        max_round_trip_ms: 0,
        read_timeout_ms: 5000,
        clock: KEEL_CLOCK_MONOTONIC,
        read_index: None,
        read_index_user_data: std::ptr::null_mut(),
        read_index_free: None,
    }
}

/// Fills the `size` bytes at `opts` (pass sizeof *opts) with the defaults:
/// the fields this library knows, zero past them, and struct_size = size.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (size below
/// KEEL_LEASE_OPTIONS_SIZE_V1 or between two published sizes).
#[no_mangle]
pub extern "C" fn keel_lease_options_init_sized(opts: *mut keel_lease_options_t, size: usize) -> keel_status_t {
    ffi_boundary!(std::ptr::null_mut(), std::ptr::null::<u8>(), {
        init_options(opts, size, default_options())
    })
}

/// A KEEL_READ_* value as a level; KEEL_READ_DEFAULT is None.
pub(crate) fn level_from_c(level: u32) -> crate::Result<Option<Level>> {
    match level {
        KEEL_READ_DEFAULT => Ok(None),
        KEEL_READ_STALE => Ok(Some(Level::Stale)),
        KEEL_READ_LEASE => Ok(Some(Level::Lease)),
        KEEL_READ_LINEARIZABLE => Ok(Some(Level::Linearizable)),
        other => Err(Error::invalid(format!("read level {other} is not a KEEL_READ_* value"))),
    }
}

/// The host's callback and user data, callable from any reading thread;
/// owns the user data when the host gave a function to free it.
struct CReadIndex {
    f: unsafe extern "C" fn(*mut c_void, *mut u64) -> keel_status_t,
    data: UserData,
}

/// Calls the host's free function on the user data when dropped.
struct UserData {
    free: keel_user_data_free_fn,
    user: usize,
}

impl Drop for UserData {
    fn drop(&mut self) {
        if let Some(free) = self.free {
            // SAFETY: the host handed the user data over with this function
            // (keel_lease_options_t.read_index_free); it is called once, here,
            // when the last owner (the options check or the gate) lets go.
            unsafe { free(self.user as *mut c_void) };
        }
    }
}

impl CReadIndex {
    fn call(&self) -> crate::Result<u64> {
        let mut index = 0u64;
        // SAFETY: the host gave this function and promised its user data
        // stays valid until keel_shard_close() returned; the shard forgets
        // the gate (and this closure) at close, so no call runs later.
        // `index` is a live u64 for the call's duration.
        let status = unsafe { (self.f)(self.data.user as *mut c_void, &mut index) };
        match status {
            KEEL_STATUS_OK => Ok(index),
            s if !crate::status::is_known(s) => {
                Err(Error::invalid(format!("the read-index callback returned {s}, which is not a keel_status_t value")))
            }
            s => Err(Error::new(s, format!("the read-index callback failed with {}", status_name(s).trim_end_matches('\0')))),
        }
    }
}

fn consensus_from_c(p: *const keel_lease_options_t) -> crate::Result<Consensus> {
    if p.is_null() {
        return Err(Error::new(KEEL_STATUS_NULL_ARGUMENT, "opts is NULL (self_id, the lease and read_index are required)"));
    }
    let (o, newer) = read_known_options(p, default_options(), "keel_lease_options_init_sized")?;
    // Owns the user data from here: every error below frees it, an option
    // of a newer header that this keel cannot honour included.
    let data = UserData { free: o.read_index_free, user: o.read_index_user_data as usize };
    newer?;
    if o.self_id == 0 {
        return Err(Error::invalid("self_id is 0: give this node's non-zero consensus id"));
    }
    if o.read_timeout_ms == 0 {
        return Err(Error::invalid("read_timeout_ms is 0: every read that names no timeout would time out at once (default 5000)"));
    }
    let f = o.read_index.ok_or_else(|| Error::invalid("read_index is NULL: lease misses need the host's read-index"))?;
    let default_level = level_from_c(o.default_level)?.unwrap_or(Level::Stale);
    let clock = match o.clock {
        KEEL_CLOCK_MONOTONIC => Clock::monotonic(),
        KEEL_CLOCK_BOOTTIME => Clock::boottime(),
        KEEL_CLOCK_MANUAL => Clock::manual(0),
        other => return Err(Error::invalid(format!("clock {other} is not a KEEL_CLOCK_* value"))),
    };
    let config = LeaseConfig {
        lease: Duration::from_millis(o.lease_ms),
        election_timeout_min: Duration::from_millis(o.election_timeout_min_ms),
        max_clock_drift: Duration::from_millis(o.max_clock_drift_ms),
        max_round_trip: Duration::from_millis(o.max_round_trip_ms),
    };
    let cb = CReadIndex { f, data };
    let gate = LeaseGate::new(o.self_id, config, clock, Box::new(move || cb.call()))?;
    Ok(Consensus { gate, default_level, read_timeout: Duration::from_millis(o.read_timeout_ms) })
}

/// Turns on lease reads for this open of the shard: validates the lease
/// against the election timeout and margins (a violating configuration is
/// refused) and starts the shard as a follower of term 0 with no voters
/// known, until the host reports its facts: no lease read is served
/// before keel_shard_consensus_set_voters() names them (this node alone
/// too). Once per open (the facts and the callback live until
/// keel_shard_close()).
/// With read_index_free set, the user data is keel's from this call on,
/// whatever it returns (see there).
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (self_id 0, read_timeout_ms 0,
/// read_index NULL, a lease not below election_timeout_min_ms −
/// max_clock_drift_ms − max_round_trip_ms, a bad level or clock,
/// struct_size, already configured), CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_consensus_configure(
    shard: *const keel_shard_t,
    opts: *const keel_lease_options_t,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        // The options first: they own the user data, and every error after
        // that (this shard's included) frees it.
        let c = consensus_from_c(opts)?;
        try_handle!(shard).configure_consensus(c)
    })
}

/// Reports role and term: KEEL_ROLE_LEADER or KEEL_ROLE_FOLLOWER, with the
/// leader's id when a follower knows it (0, or this node's own id: unknown;
/// keel_shard_lease_stats() then reports leader_id 0). Call it on every
/// change, before any ack of a new term. A new term, or losing the lead,
/// forgets every ack, the own-term entry and any transfer.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (term below the current one,
/// KEEL_ROLE_LEADER with term 0, a bad role, not configured), CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_consensus_set_role(
    shard: *const keel_shard_t,
    role: u32,
    term: u64,
    leader_id: u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let role = match role {
            KEEL_ROLE_FOLLOWER => Role::Follower,
            KEEL_ROLE_LEADER => Role::Leader,
            other => return Err(Error::invalid(format!("role {other} is not a KEEL_ROLE_* value"))),
        };
        try_handle!(shard).consensus()?.gate.set_role(role, term, (leader_id != 0).then_some(leader_id))
    })
}

/// Reports the voters: `incoming` always, `outgoing` too during a joint
/// configuration (count 0 otherwise). Never list learners. Acks of peers
/// that are no longer voters are dropped.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (no incoming voter, a peer
/// listed twice in a half, a peer id 0, not configured), CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_consensus_set_voters(
    shard: *const keel_shard_t,
    incoming: *const u64,
    incoming_count: usize,
    outgoing: *const u64,
    outgoing_count: usize,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let incoming = in_u64s(incoming, incoming_count, "incoming")?.to_vec();
        let outgoing = in_u64s(outgoing, outgoing_count, "outgoing")?.to_vec();
        if incoming.iter().chain(&outgoing).any(|&p| p == 0) {
            return Err(Error::invalid("a voter id is 0"));
        }
        try_handle!(shard).consensus()?.gate.set_voters(Voters { incoming, outgoing })
    })
}

/// Reports that voter `peer_id` acknowledged a heartbeat or append of
/// `term` that this leader SENT at `sent_at_ns`, on the shard's clock
/// (keel_lease_options_t.clock; keel_shard_consensus_now() reads it). An ack keel cannot use (not the
/// leader, another term, not a voter, a time of 0, after now, or before
/// keel_shard_consensus_set_role() reported this node leader of the term)
/// is counted in keel_lease_stats_t and otherwise ignored: OK all the same.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (not configured), CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_consensus_ack(
    shard: *const keel_shard_t,
    peer_id: u64,
    term: u64,
    sent_at_ns: u64,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        try_handle!(shard).consensus()?.gate.record_ack(peer_id, term, sent_at_ns);
        Ok(())
    })
}

/// Reports the applied index (it never goes back); reads waiting for it
/// wake up. Errors: NULL_ARGUMENT, INVALID_ARGUMENT (below the current one,
/// not configured), CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_consensus_set_applied(shard: *const keel_shard_t, index: u64, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, shard, { try_handle!(shard).consensus()?.gate.set_applied(index) })
}

/// Reports the commit index as this node knows it (optional; it never goes
/// back). A lease read waits until the applied index reaches it.
/// Errors: as keel_shard_consensus_set_applied().
#[no_mangle]
pub extern "C" fn keel_shard_consensus_set_committed(shard: *const keel_shard_t, index: u64, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, shard, { try_handle!(shard).consensus()?.gate.set_committed(index) })
}

/// Reports that an entry of `term` has been applied; counts only when
/// `term` is the current term and this node leads. `*recorded` (may be
/// NULL) says whether it counted.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (not configured), CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_consensus_term_applied(
    shard: *const keel_shard_t,
    term: u64,
    recorded: *mut bool,
    err: *mut *mut keel_error_t,
) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let ok = try_handle!(shard).consensus()?.gate.note_term_applied(term);
        if !recorded.is_null() {
            *out_ptr(recorded, "recorded")? = ok;
        }
        Ok(())
    })
}

/// Reports that a leadership transfer started (`in_progress` true; call it
/// before the engine tells the target to campaign). Lease reads are
/// suspended from then until the term or this node's role changes (reads
/// take the read-index path): a transfer the engine abandons leaves its
/// MsgTimeoutNow out there, and the target may still win with it. False
/// (the transfer ended with this node still leading) is accepted and
/// changes nothing.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (not configured), CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_consensus_set_transfer(shard: *const keel_shard_t, in_progress: bool, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, shard, {
        try_handle!(shard).consensus()?.gate.set_transfer(in_progress);
        Ok(())
    })
}

/// Sets the time of a KEEL_CLOCK_MANUAL shard, in nanoseconds (0: no time;
/// lease reads and acks fail closed). Tests drive time this way.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (the shard reads a kernel
/// clock; not configured), CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_consensus_set_clock(shard: *const keel_shard_t, now_ns: u64, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, shard, { try_handle!(shard).consensus()?.gate.clock().set(now_ns) })
}

/// Writes the time on the shard's lease clock to `*now_ns`: what the host
/// stamps a message with when it sends it, to pass to
/// keel_shard_consensus_ack() with the message's ack. 0 when the clock
/// reads no time (a manual clock not set yet, or the kernel clock failed).
/// Safe from any thread.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (not configured), CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_consensus_now(shard: *const keel_shard_t, now_ns: *mut u64, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let out = out_ptr(now_ns, "now_ns")?;
        *out = try_handle!(shard).consensus()?.gate.clock().now().unwrap_or(0);
        Ok(())
    })
}

/// sizeof(keel_lease_stats_t) of version 1.
pub const KEEL_LEASE_STATS_SIZE_V1: u32 = 168;

/// What keel_shard_lease_stats() reports: the facts as keel holds them and
/// the counters since keel_shard_consensus_configure(). Versioned like
/// keel_shard_stats_t: set struct_size to sizeof before the call.
#[repr(C)]
pub struct keel_lease_stats_t {
    pub struct_size: u32,
    /// KEEL_ROLE_*.
    pub role: u32,
    pub term: u64,
    /// The leader's id when known (this node when it leads), else 0.
    pub leader_id: u64,
    pub applied_index: u64,
    /// Lease-level reads served from the lease.
    pub lease_hits: u64,
    /// Lease-level misses by reason.
    pub miss_not_leader: u64,
    pub miss_ack_stale: u64,
    pub miss_ack_missing: u64,
    pub miss_ack_future: u64,
    pub miss_transfer: u64,
    pub miss_term_not_applied: u64,
    pub miss_clock: u64,
    /// Read-index callbacks made (one per shared call, not per read; none
    /// for a read that finds the shard closed).
    pub read_index_calls: u64,
    /// Callbacks that returned an error (TIMEOUT too: its read also
    /// counts in read_index_timeouts).
    pub read_index_errors: u64,
    /// Sum and maximum of the callbacks' latency, in nanoseconds.
    pub read_index_latency_ns_total: u64,
    pub read_index_latency_ns_max: u64,
    /// Reads that failed with TIMEOUT.
    pub read_index_timeouts: u64,
    /// Acks reported but not counted, by reason.
    pub acks_ignored_not_leader: u64,
    pub acks_ignored_other_term: u64,
    pub acks_ignored_not_voter: u64,
    pub acks_ignored_bad_time: u64,
}
versioned!(keel_lease_stats_t, [KEEL_LEASE_STATS_SIZE_V1]);

/// Fills `*out` with the shard's lease facts and counters.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (struct_size; not configured),
/// CLOSED.
#[no_mangle]
pub extern "C" fn keel_shard_lease_stats(shard: *const keel_shard_t, out: *mut keel_lease_stats_t, err: *mut *mut keel_error_t) -> keel_status_t {
    ffi_boundary!(err, shard, {
        let c = try_handle!(shard).consensus()?;
        let facts = c.gate.state();
        let st = c.gate.stats();
        let value = keel_lease_stats_t {
            struct_size: KEEL_LEASE_STATS_SIZE_V1,
            role: match facts.role() {
                Role::Leader => KEEL_ROLE_LEADER,
                Role::Follower => KEEL_ROLE_FOLLOWER,
            },
            term: facts.term(),
            leader_id: facts.leader().unwrap_or(0),
            applied_index: facts.applied(),
            lease_hits: st.lease_hits,
            miss_not_leader: st.miss_not_leader,
            miss_ack_stale: st.miss_ack_stale,
            miss_ack_missing: st.miss_ack_missing,
            miss_ack_future: st.miss_ack_future,
            miss_transfer: st.miss_transfer,
            miss_term_not_applied: st.miss_term_not_applied,
            miss_clock: st.miss_clock,
            read_index_calls: st.read_index_calls,
            read_index_errors: st.read_index_errors,
            read_index_latency_ns_total: st.read_index_latency_ns_total,
            read_index_latency_ns_max: st.read_index_latency_ns_max,
            read_index_timeouts: st.read_index_timeouts,
            acks_ignored_not_leader: st.acks_ignored_not_leader,
            acks_ignored_other_term: st.acks_ignored_other_term,
            acks_ignored_not_voter: st.acks_ignored_not_voter,
            acks_ignored_bad_time: st.acks_ignored_bad_time,
        };
        write_stats(out, value)
    })
}
