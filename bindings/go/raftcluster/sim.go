package raftcluster

import (
	"container/heap"
	cryptorand "crypto/rand"
	"io"
	"math/rand"
	"runtime"
	"time"
)

// Time is the cluster's logical clock, in abstract units (think of one
// unit as a millisecond). Nothing in the cluster reads the wall clock:
// raft is ticked every TickEvery units by the scheduler, so a slow or
// busy machine changes how long a run takes, never what happens in it.
// The one exception is the real-time mode of the benchmark
// (Config.RealTime), which is never used by a test.
type Time int64

// TickEvery is the number of time units between two raft Tick() calls.
const TickEvery Time = 10

// event is one thing the scheduler runs at a time. Events at the same
// time run in the order they were scheduled (seq), so a run is a pure
// function of its seed.
type event struct {
	at  Time
	seq uint64
	run func()
}

type eventQueue []event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(event)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// scheduler is the single-threaded discrete-event loop everything in a
// cluster runs on: network deliveries, client requests and replies,
// ticks and the faults a test injects.
type scheduler struct {
	now Time
	seq uint64
	q   eventQueue
	rng *rand.Rand
	// pace is zero on the logical clock. In real time (Config.RealTime)
	// one unit lasts pace from start on the wall clock: an event waits
	// for its time to come, and runs at the wall clock's time when the
	// loop is late, so work that schedules more work at once never holds
	// the clock still.
	pace  time.Duration
	start time.Time
	// maxLate is the most an event ran after its time, in real time.
	maxLate Time
}

// wall is the wall clock's time in units since start.
func (s *scheduler) wall() Time { return Time(time.Since(s.start) / s.pace) }

// waitFor returns once the wall clock reached unit t. Go's timers sleep
// at least about a millisecond here, longer than a unit of the
// benchmark's pace, so the last stretch spins (yielding the processor).
func (s *scheduler) waitFor(t Time) {
	deadline := s.start.Add(time.Duration(t) * s.pace)
	for {
		d := time.Until(deadline)
		switch {
		case d <= 0:
			return
		case d > 2*time.Millisecond:
			time.Sleep(d - 2*time.Millisecond)
		default:
			runtime.Gosched()
		}
	}
}

// advance moves the clock to end once nothing is left to run before it.
func (s *scheduler) advance(end Time) {
	if s.pace > 0 {
		s.waitFor(end)
	}
	if s.now < end {
		s.now = end
	}
}

func (s *scheduler) at(t Time, f func()) {
	if t < s.now {
		t = s.now
	}
	s.seq++
	heap.Push(&s.q, event{at: t, seq: s.seq, run: f})
}

func (s *scheduler) after(d Time, f func()) { s.at(s.now+d, f) }

// between returns a uniformly drawn value in [lo, hi].
func (s *scheduler) between(lo, hi Time) Time {
	if hi <= lo {
		return lo
	}
	return lo + Time(s.rng.Int63n(int64(hi-lo+1)))
}

// chance returns true with probability p.
func (s *scheduler) chance(p float64) bool { return p > 0 && s.rng.Float64() < p }

// next runs the earliest event not later than limit and reports whether
// there was one.
func (s *scheduler) next(limit Time) bool {
	if len(s.q) == 0 || s.q[0].at > limit {
		return false
	}
	if s.pace > 0 {
		s.waitFor(s.q[0].at)
	}
	e := heap.Pop(&s.q).(event)
	s.now = e.at
	if s.pace > 0 {
		if w := s.wall(); w > s.now {
			s.maxLate = max(s.maxLate, w-s.now)
			s.now = w
		}
	}
	e.run()
	return true
}

// seededReader stands in for crypto/rand.Reader while a cluster runs.
// etcd raft draws its randomized election timeout with crypto/rand.Int
// from crypto/rand.Reader; replacing the reader with a stream derived
// from the seed is what makes elections, and so whole runs, replayable.
type seededReader struct{ rng *rand.Rand }

func (r seededReader) Read(p []byte) (int, error) { return r.rng.Read(p) }

// seedCryptoRand points crypto/rand.Reader at a stream from seed and
// returns the function that puts the original back. Tests that build
// clusters must not run in parallel (none of this package's do).
func seedCryptoRand(seed int64) (restore func()) {
	old := cryptorand.Reader
	cryptorand.Reader = seededReader{rng: rand.New(rand.NewSource(seed ^ 0x5eed_c0ffee))}
	return func() { cryptorand.Reader = old }
}

var _ io.Reader = seededReader{}
