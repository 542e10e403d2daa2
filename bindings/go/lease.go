package keel

/*
#include <stdint.h>
#include "keel.h"

// Defined in callback.go (//export): the Go side of the read-index callback.
extern keel_status_t keelGoReadIndex(uintptr_t handle, uint64_t *index);
extern void keelGoReadIndexFree(uintptr_t handle);

// The C callbacks keel calls; user_data carries the runtime/cgo.Handle of
// the shard's leaseHost as an integer, never as a Go pointer.
static keel_status_t keel_go_read_index(void *user, uint64_t *index) {
	return keelGoReadIndex((uintptr_t)user, index);
}
static void keel_go_read_index_free(void *user) { keelGoReadIndexFree((uintptr_t)user); }

static void keel_go_lease_set_read_index(keel_lease_options_t *o, uintptr_t handle) {
	o->read_index = keel_go_read_index;
	o->read_index_user_data = (void *)handle;  // keel deletes it through read_index_free
	o->read_index_free = keel_go_read_index_free;
}
*/
import "C"

import (
	"errors"
	"math"
	"runtime"
	"runtime/cgo"
	"sync"
	"time"
)

// ReadLevel is the consistency of a read (KEEL_READ_*); see docs/LEASE.md.
type ReadLevel uint32

const (
	// ReadDefault uses the shard's LeaseOptions.DefaultLevel (stale when
	// no consensus is configured).
	ReadDefault ReadLevel = C.KEEL_READ_DEFAULT
	// ReadStale reads local state with no checks.
	ReadStale ReadLevel = C.KEEL_READ_STALE
	// ReadLease serves from the leader's lease when it holds, else after a
	// read-index.
	ReadLease ReadLevel = C.KEEL_READ_LEASE
	// ReadLinearizable always makes a read-index first.
	ReadLinearizable ReadLevel = C.KEEL_READ_LINEARIZABLE
)

// Role is this node's role in a shard's consensus group (KEEL_ROLE_*).
type Role uint32

const (
	RoleFollower Role = C.KEEL_ROLE_FOLLOWER
	RoleLeader   Role = C.KEEL_ROLE_LEADER
)

// ReadOptions say how a read is checked (keel_read_options_t). A nil
// *ReadOptions reads at the shard's default level and timeout.
type ReadOptions struct {
	Level ReadLevel
	// Timeout bounds the wait for a read-index and for the applied index
	// (rounded up to whole milliseconds); 0 means the shard's
	// LeaseOptions.ReadTimeout. Past it the read fails with ErrTimeout.
	// A read that makes the ReadIndex call itself waits for it to return
	// (keel cannot interrupt it), so ReadIndex must bound its own round
	// trip.
	Timeout time.Duration
	// Session, if not nil, is a session of the same shard: the read makes
	// no check of its own (Level and Timeout are ignored).
	Session *ReadSession
}

// LeaseOptions configure a shard's lease reads (keel_lease_options_t).
// Lease must be shorter than ElectionTimeoutMin - MaxClockDrift -
// MaxRoundTrip; a configuration that is not is refused (ErrInvalidArgument).
type LeaseOptions struct {
	// SelfID is this node's consensus id, non-zero.
	SelfID uint64
	// Lease: how long after the quorum ack the leader serves lease reads.
	Lease time.Duration
	// ElectionTimeoutMin is the smallest election timeout the engine may
	// pick (etcd raft: ElectionTick × tick interval).
	ElectionTimeoutMin time.Duration
	MaxClockDrift      time.Duration
	MaxRoundTrip       time.Duration
	// ReadTimeout of reads that name none; 0: 5 s.
	ReadTimeout time.Duration
	// DefaultLevel of reads that name none (Get, MultiGet, Scan, ...);
	// ReadDefault means ReadStale.
	DefaultLevel ReadLevel
	// ManualClock: the time is the value set with Consensus.SetClock
	// (tests, simulations) instead of CLOCK_MONOTONIC.
	ManualClock bool
	// BootTimeClock: keel reads CLOCK_BOOTTIME instead of CLOCK_MONOTONIC.
	// It counts the time the machine was suspended, so a suspend ages the
	// lease (docs/LEASE.md, "The clock"). Not with ManualClock.
	BootTimeClock bool
	// ReadIndex performs the consensus read-index round trip and returns
	// the index to wait for. Required. It runs on the goroutine of a read
	// that missed the lease (concurrent misses share one call) and must
	// not read from the same shard. Close of the shard or of its Engine
	// called from it answers at once instead of waiting for the read that
	// runs it: ErrBusy, leaving it open, or ErrClosed once another Close
	// has begun. It should give up within the reads' timeout: keel cannot
	// interrupt it. A *keel.Error passes its Code through
	// (ErrNotLeader, ErrTimeout, ...); any other non-nil error is ErrIO,
	// a nil *keel.Error returned as a non-nil error and an *Error with
	// Code StatusOK included (a failure without a code), a panic
	// ErrPanic. runtime.Goexit in it (t.FailNow, t.Fatal) ends the
	// program: it cannot unwind through keel.
	//
	// Only the code reaches the read: keel's read-index callback returns
	// a status alone, so the read's error carries keel's Message, not the
	// error's, and for ErrNotLeader the LeaderHint keel knows from
	// Consensus.SetRole, not the error's. Before returning ErrNotLeader,
	// report the engine's new role, term and leader with SetRole (ReadIndex
	// may call it); otherwise the hint is the leader keel last heard of, or
	// none (0) while keel still has this node leading.
	ReadIndex func() (uint64, error)
}

// leaseHost is what the cgo.Handle in read_index_user_data holds.
type leaseHost struct {
	readIndex0 func() (uint64, error)
	// threads is the shard's Shard.readIndex.
	threads *threadSet
}

func (h *leaseHost) readIndex() (index uint64, st Status) {
	defer func() {
		if recover() != nil {
			st = StatusPanic
		}
	}()
	i, err := h.readIndex0()
	if err == nil {
		return i, StatusOK
	}
	// A nil *Error in the error (var e *keel.Error; ...; return i, e) is
	// a failure all the same, as for any caller of a Go function: it has
	// no code, so it is ErrIO like an *Error whose Code is StatusOK.
	var ke *Error
	if errors.As(err, &ke) && ke != nil && ke.Code != StatusOK {
		return 0, ke.Code
	}
	return 0, StatusIO
}

// ConfigureConsensus turns on lease reads for this open of the shard
// (once). keel keeps opts.ReadIndex until the shard closes.
func (s *Shard) ConfigureConsensus(opts LeaseOptions) error {
	if opts.ReadIndex == nil {
		return newError("ConfigureConsensus", StatusInvalidArgument, "LeaseOptions.ReadIndex is nil")
	}
	var o C.keel_lease_options_t
	if st := C.keel_lease_options_init_sized(&o, C.size_t(C.sizeof_keel_lease_options_t)); st != C.KEEL_STATUS_OK {
		return takeError("ConfigureConsensus", st, nil)
	}
	o.self_id = C.uint64_t(opts.SelfID)
	for _, f := range []struct {
		dst  *C.uint64_t
		d    time.Duration
		name string
	}{{&o.lease_ms, opts.Lease, "Lease"},
		// Rounded down, the one bound that shortens the lease it allows.
		{&o.election_timeout_min_ms, opts.ElectionTimeoutMin.Truncate(time.Millisecond), "ElectionTimeoutMin"},
		{&o.max_clock_drift_ms, opts.MaxClockDrift, "MaxClockDrift"}, {&o.max_round_trip_ms, opts.MaxRoundTrip, "MaxRoundTrip"},
		{&o.read_timeout_ms, opts.ReadTimeout, "ReadTimeout"}} {
		if f.name == "ReadTimeout" && f.d == 0 {
			continue // the library default
		}
		v, err := millis("ConfigureConsensus", f.name, f.d, math.MaxUint64)
		if err != nil {
			return err
		}
		*f.dst = C.uint64_t(v)
	}
	if opts.DefaultLevel != ReadDefault {
		o.default_level = C.uint32_t(opts.DefaultLevel)
	}
	switch {
	case opts.ManualClock && opts.BootTimeClock:
		return newError("ConfigureConsensus", StatusInvalidArgument, "ManualClock and BootTimeClock are both set")
	case opts.ManualClock:
		o.clock = C.KEEL_CLOCK_MANUAL
	case opts.BootTimeClock:
		o.clock = C.KEEL_CLOCK_BOOTTIME
	}
	h, err := s.acquire("ConfigureConsensus")
	if err != nil {
		return err
	}
	defer s.release()
	// From here keel owns the handle: it deletes it through
	// keelGoReadIndexFree at the shard's close, or at once when it refuses
	// the configuration.
	C.keel_go_lease_set_read_index(&o, C.uintptr_t(cgo.NewHandle(&leaseHost{readIndex0: opts.ReadIndex, threads: s.readIndex})))
	var cerr *C.keel_error_t
	if st := C.keel_shard_consensus_configure(h, &o, &cerr); st != C.KEEL_STATUS_OK {
		return takeError("ConfigureConsensus", st, cerr)
	}
	return nil
}

// Consensus feeds a shard the facts of its consensus engine; from
// Shard.Consensus. Every method is safe for concurrent use and fails with
// ErrInvalidArgument until ConfigureConsensus.
type Consensus struct{ s *Shard }

// Consensus returns the shard's consensus facts surface.
func (s *Shard) Consensus() Consensus { return Consensus{s} }

func (c Consensus) do(op string, call func(h *C.keel_shard_t, cerr **C.keel_error_t) C.keel_status_t) error {
	h, err := c.s.acquire(op)
	if err != nil {
		return err
	}
	defer c.s.release()
	var cerr *C.keel_error_t
	if st := call(h, &cerr); st != C.KEEL_STATUS_OK {
		return takeError(op, st, cerr)
	}
	return nil
}

// SetRole reports role and term, with the leader's id when a follower
// knows it (0: unknown). A new term, or losing the lead, forgets every ack.
func (c Consensus) SetRole(role Role, term, leader uint64) error {
	return c.do("SetRole", func(h *C.keel_shard_t, e **C.keel_error_t) C.keel_status_t {
		return C.keel_shard_consensus_set_role(h, C.uint32_t(role), C.uint64_t(term), C.uint64_t(leader), e)
	})
}

func u64Ptr(v []uint64) *C.uint64_t {
	if len(v) == 0 {
		return nil
	}
	return (*C.uint64_t)(&v[0])
}

// SetVoters reports the voters: incoming, and outgoing during a joint
// configuration (nil otherwise). Never list learners.
func (c Consensus) SetVoters(incoming, outgoing []uint64) error {
	return c.do("SetVoters", func(h *C.keel_shard_t, e **C.keel_error_t) C.keel_status_t {
		// Plain uint64 slices (no Go pointers inside), read during the call only.
		return C.keel_shard_consensus_set_voters(h, u64Ptr(incoming), C.size_t(len(incoming)), u64Ptr(outgoing), C.size_t(len(outgoing)), e)
	})
}

// Ack reports that voter peer acknowledged a message of term that this
// leader SENT at sentAtNs (on the shard's clock). An ack keel cannot use
// is counted in LeaseStats and otherwise ignored.
func (c Consensus) Ack(peer, term, sentAtNs uint64) error {
	return c.do("Ack", func(h *C.keel_shard_t, e **C.keel_error_t) C.keel_status_t {
		return C.keel_shard_consensus_ack(h, C.uint64_t(peer), C.uint64_t(term), C.uint64_t(sentAtNs), e)
	})
}

// SetApplied reports the applied index (it never goes back).
func (c Consensus) SetApplied(index uint64) error {
	return c.do("SetApplied", func(h *C.keel_shard_t, e **C.keel_error_t) C.keel_status_t {
		return C.keel_shard_consensus_set_applied(h, C.uint64_t(index), e)
	})
}

// SetCommitted reports the commit index as this node knows it (optional).
func (c Consensus) SetCommitted(index uint64) error {
	return c.do("SetCommitted", func(h *C.keel_shard_t, e **C.keel_error_t) C.keel_status_t {
		return C.keel_shard_consensus_set_committed(h, C.uint64_t(index), e)
	})
}

// TermApplied reports that an entry of term was applied; it counts (true)
// only for the current term of a leader.
func (c Consensus) TermApplied(term uint64) (bool, error) {
	var recorded C.bool
	err := c.do("TermApplied", func(h *C.keel_shard_t, e **C.keel_error_t) C.keel_status_t {
		return C.keel_shard_consensus_term_applied(h, C.uint64_t(term), &recorded, e)
	})
	return bool(recorded), err
}

// SetTransfer reports that a leadership transfer started (true; before the
// engine tells the target to campaign). Lease reads are suspended from then
// until the term or this node's role changes: an abandoned transfer's
// MsgTimeoutNow may still make its target leader. False changes nothing.
func (c Consensus) SetTransfer(inProgress bool) error {
	return c.do("SetTransfer", func(h *C.keel_shard_t, e **C.keel_error_t) C.keel_status_t {
		return C.keel_shard_consensus_set_transfer(h, C.bool(inProgress), e)
	})
}

// SetClock sets the time of a ManualClock shard, in nanoseconds (0: no time).
func (c Consensus) SetClock(nowNs uint64) error {
	return c.do("SetClock", func(h *C.keel_shard_t, e **C.keel_error_t) C.keel_status_t {
		return C.keel_shard_consensus_set_clock(h, C.uint64_t(nowNs), e)
	})
}

// Now reads the shard's lease clock, in nanoseconds (0: no time): stamp a
// message with it when sending it, and pass that to Ack with its ack.
func (c Consensus) Now() (uint64, error) {
	var now C.uint64_t
	err := c.do("Now", func(h *C.keel_shard_t, e **C.keel_error_t) C.keel_status_t {
		return C.keel_shard_consensus_now(h, &now, e)
	})
	return uint64(now), err
}

// LeaseStats are a shard's lease facts and counters (keel_lease_stats_t).
type LeaseStats struct {
	Role                                                       Role
	Term, LeaderID, AppliedIndex                               uint64
	LeaseHits                                                  uint64
	MissNotLeader, MissAckStale, MissAckMissing, MissAckFuture uint64
	MissTransfer, MissTermNotApplied, MissClock                uint64
	ReadIndexCalls, ReadIndexErrors                            uint64
	ReadIndexLatencyTotal, ReadIndexLatencyMax                 time.Duration
	ReadIndexTimeouts                                          uint64
	AcksIgnoredNotLeader, AcksIgnoredOtherTerm                 uint64
	AcksIgnoredNotVoter, AcksIgnoredBadTime                    uint64
}

// LeaseStats returns the shard's lease facts and counters.
func (s *Shard) LeaseStats() (LeaseStats, error) {
	var c C.keel_lease_stats_t
	c.struct_size = C.uint32_t(C.sizeof_keel_lease_stats_t)
	err := s.Consensus().do("LeaseStats", func(h *C.keel_shard_t, e **C.keel_error_t) C.keel_status_t {
		return C.keel_shard_lease_stats(h, &c, e)
	})
	if err != nil {
		return LeaseStats{}, err
	}
	return LeaseStats{
		Role: Role(c.role), Term: uint64(c.term), LeaderID: uint64(c.leader_id), AppliedIndex: uint64(c.applied_index),
		LeaseHits:     uint64(c.lease_hits),
		MissNotLeader: uint64(c.miss_not_leader), MissAckStale: uint64(c.miss_ack_stale),
		MissAckMissing: uint64(c.miss_ack_missing), MissAckFuture: uint64(c.miss_ack_future),
		MissTransfer: uint64(c.miss_transfer), MissTermNotApplied: uint64(c.miss_term_not_applied), MissClock: uint64(c.miss_clock),
		ReadIndexCalls: uint64(c.read_index_calls), ReadIndexErrors: uint64(c.read_index_errors),
		ReadIndexLatencyTotal: nsDuration(uint64(c.read_index_latency_ns_total)), ReadIndexLatencyMax: nsDuration(uint64(c.read_index_latency_ns_max)),
		ReadIndexTimeouts:    uint64(c.read_index_timeouts),
		AcksIgnoredNotLeader: uint64(c.acks_ignored_not_leader), AcksIgnoredOtherTerm: uint64(c.acks_ignored_other_term),
		AcksIgnoredNotVoter: uint64(c.acks_ignored_not_voter), AcksIgnoredBadTime: uint64(c.acks_ignored_bad_time),
	}, nil
}

// ReadSession is a session of reads (keel_read_session_t): the lease check
// or one read-index when it begins, none for the reads that name it in
// ReadOptions.Session. Safe for concurrent use; End it before closing its
// shard. A session garbage collected before End is reported as a leak
// (its handle holds the shard's memory, past the shard's Close), not
// ended.
type ReadSession struct {
	mu    sync.RWMutex
	h     *C.keel_read_session_t // nil once ended
	index uint64
}

// ReadBegin begins a read session at level within timeout (0: the
// shard's default).
func (s *Shard) ReadBegin(level ReadLevel, timeout time.Duration) (*ReadSession, error) {
	o, err := readOptionsC(&ReadOptions{Level: level, Timeout: timeout})
	if err != nil {
		return nil, err
	}
	h, err := s.acquire("ReadBegin")
	if err != nil {
		return nil, err
	}
	defer s.release()
	var rs *C.keel_read_session_t
	var index C.uint64_t
	var cerr *C.keel_error_t
	if st := C.keel_shard_read_begin(h, &o, &rs, &index, &cerr); st != C.KEEL_STATUS_OK {
		return nil, takeError("ReadBegin", st, cerr)
	}
	r := &ReadSession{h: rs, index: uint64(index)}
	runtime.SetFinalizer(r, (*ReadSession).reportLeak)
	return r, nil
}

// reportLeak runs on the finalizer goroutine and only logs (see
// WAL.reportLeak); End clears it.
func (r *ReadSession) reportLeak() {
	leakf("keel: ReadSession was garbage collected without End; its handle and the shard's memory it holds leak")
}

// Index is the index the session waited for (0: a stale session of a
// shard without consensus, or a nil session).
func (r *ReadSession) Index() uint64 {
	if r == nil {
		return 0
	}
	return r.index
}

// End frees the session; reads naming it afterwards fail with ErrClosed.
// Ending twice is a no-op, and so is ending a nil session (what a failed
// ReadBegin returns), so that End may be deferred before the error check.
func (r *ReadSession) End() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h != nil {
		C.keel_shard_read_end(r.h)
		r.h = nil
		runtime.SetFinalizer(r, nil)
	}
}

// readOptionsC converts opts (nil: the defaults). With a session, the
// caller must hold opts.Session.mu shared (see withReadOptions).
func readOptionsC(opts *ReadOptions) (C.keel_read_options_t, error) {
	var o C.keel_read_options_t
	if st := C.keel_read_options_init_sized(&o, C.size_t(C.sizeof_keel_read_options_t)); st != C.KEEL_STATUS_OK {
		return o, takeError("ReadOptions", st, nil)
	}
	if opts == nil {
		return o, nil
	}
	o.level = C.uint32_t(opts.Level)
	ms, err := millis("ReadOptions", "Timeout", opts.Timeout, math.MaxUint64)
	if err != nil {
		return o, err
	}
	o.timeout_ms = C.uint64_t(ms)
	if opts.Session != nil {
		if opts.Session.h == nil {
			return o, newError("ReadOptions", StatusClosed, "the read session has ended")
		}
		o.session = opts.Session.h
	}
	return o, nil
}

// withReadOptions runs call with the C form of opts, holding its session
// (if any) so that End cannot free it meanwhile.
func withReadOptions(opts *ReadOptions, call func(o *C.keel_read_options_t) error) error {
	if opts != nil && opts.Session != nil {
		opts.Session.mu.RLock()
		defer opts.Session.mu.RUnlock()
	}
	o, err := readOptionsC(opts)
	if err != nil {
		return err
	}
	return call(&o)
}
