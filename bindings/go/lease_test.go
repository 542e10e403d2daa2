package keel

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const ms = uint64(time.Millisecond)

// leaseHostT is a test host: its read-index answers index (or fails), and
// counts the calls.
type leaseHostT struct {
	index atomic.Uint64
	calls atomic.Int64
	fail  atomic.Pointer[Error]
}

func (h *leaseHostT) options() LeaseOptions {
	return LeaseOptions{
		SelfID: 1, Lease: 700 * time.Millisecond, ElectionTimeoutMin: time.Second,
		MaxClockDrift: 100 * time.Millisecond, MaxRoundTrip: 100 * time.Millisecond,
		ManualClock: true,
		ReadIndex: func() (uint64, error) {
			h.calls.Add(1)
			if e := h.fail.Load(); e != nil {
				return 0, e
			}
			return h.index.Load(), nil
		},
	}
}

// leaseShard opens shard 1 holding k=v and k2=w.
func leaseShard(t *testing.T) *Shard {
	t.Helper()
	e, _ := openEngineT(t, "", nil)
	s, err := e.OpenShard(1, true)
	if err != nil {
		t.Fatalf("OpenShard: %v", err)
	}
	for _, kv := range [][2]string{{"k", "v"}, {"k2", "w"}} {
		if _, err := s.Put([]byte(kv[0]), []byte(kv[1])); err != nil {
			t.Fatalf("Put: %v", err)
		}
	}
	return s
}

const t0 = 1000 * ms

// leaseRead reads "k" at lease level and checks how many read-index
// calls the host has had so far.
func leaseRead(t *testing.T, s *Shard, h *leaseHostT, calls int64, what string) {
	t.Helper()
	if _, err := s.GetWith([]byte("k"), &ReadOptions{Level: ReadLease}); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if n := h.calls.Load(); n != calls {
		t.Fatalf("%s: %d read-index calls, want %d", what, n, calls)
	}
}

// lead makes s the leader of term 5 over {1,2,3}, its own-term entry
// applied at 10, with a fresh ack from voter 2 at t0.
func lead(t *testing.T, s *Shard, h *leaseHostT) {
	t.Helper()
	h.index.Store(10)
	if err := s.ConfigureConsensus(h.options()); err != nil {
		t.Fatalf("ConfigureConsensus: %v", err)
	}
	c := s.Consensus()
	must(t, c.SetVoters([]uint64{1, 2, 3}, nil))
	must(t, c.SetRole(RoleLeader, 5, 0))
	must(t, c.SetApplied(10))
	if ok, err := c.TermApplied(5); err != nil || !ok {
		t.Fatalf("TermApplied = %v, %v", ok, err)
	}
	must(t, c.SetClock(t0))
	must(t, c.Ack(2, 5, t0))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestLeaseFollowerAnswersNotLeaderWithTheHint(t *testing.T) {
	s := leaseShard(t)
	h := &leaseHostT{}
	if _, err := s.GetWith([]byte("k"), &ReadOptions{Level: ReadLease}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("lease read without consensus: %v, want ErrInvalidArgument", err)
	}
	must(t, s.ConfigureConsensus(h.options()))
	if err := s.ConfigureConsensus(h.options()); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("second ConfigureConsensus: %v", err)
	}
	must(t, s.Consensus().SetRole(RoleFollower, 3, 2))
	_, err := s.GetWith([]byte("k"), &ReadOptions{Level: ReadLinearizable})
	var ke *Error
	if !errors.As(err, &ke) || ke.Code != StatusNotLeader || ke.LeaderHint != 2 {
		t.Fatalf("follower read: %v, want NOT_LEADER with hint 2", err)
	}
	// No keys is a read of nothing, checked like any other.
	if _, err := s.MultiGetWith(nil, &ReadOptions{Level: ReadLinearizable}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("follower MultiGetWith of no keys: %v, want ErrNotLeader", err)
	}
	if v, err := s.Get([]byte("k")); err != nil || string(v.Bytes) != "v" {
		t.Fatalf("default (stale) Get = %q, %v", v.Bytes, err)
	}
	if _, err := s.GetWith([]byte("k"), &ReadOptions{Level: 9}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("level 9: %v", err)
	}
	if h.calls.Load() != 0 {
		t.Fatalf("%d read-index calls, want 0", h.calls.Load())
	}
}

func TestLeaseBoundaryTransferAndCounters(t *testing.T) {
	s := leaseShard(t)
	h := &leaseHostT{}
	lead(t, s, h)
	c := s.Consensus()
	lease := &ReadOptions{Level: ReadLease}
	must(t, c.SetClock(t0+700*ms-1))
	if v, err := s.GetWith([]byte("k"), lease); err != nil || string(v.Bytes) != "v" {
		t.Fatalf("lease read = %q, %v", v.Bytes, err)
	}
	if n := h.calls.Load(); n != 0 {
		t.Fatalf("a fresh lease made %d read-index calls", n)
	}
	must(t, c.SetClock(t0+700*ms))
	leaseRead(t, s, h, 1, "now - ack == lease")
	must(t, c.Ack(3, 5, t0+700*ms))
	must(t, c.SetTransfer(true))
	leaseRead(t, s, h, 2, "a transfer")
	st, err := s.LeaseStats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Role != RoleLeader || st.LeaderID != 1 || st.LeaseHits != 1 || st.MissAckStale != 1 || st.MissTransfer != 1 || st.ReadIndexCalls != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// In a joint configuration the lease needs a quorum ack in each half:
// old {1,2,3}, new {1,4,5}. Acks of 2 and 3 satisfy only the old half,
// so the read takes a read-index; once 4 acks, both halves hold. A
// learner's ack never counts.
func TestLeaseJointConfigurationNeedsBothHalves(t *testing.T) {
	s := leaseShard(t)
	h := &leaseHostT{}
	lead(t, s, h)
	c := s.Consensus()
	must(t, c.SetVoters([]uint64{1, 4, 5}, []uint64{1, 2, 3}))
	must(t, c.Ack(3, 5, t0))
	must(t, c.Ack(9, 5, t0)) // a learner: ignored
	leaseRead(t, s, h, 1, "a quorum of the old half only")
	must(t, c.Ack(4, 5, t0))
	leaseRead(t, s, h, 1, "a quorum of both halves")
	st, err := s.LeaseStats()
	if err != nil {
		t.Fatal(err)
	}
	if st.LeaseHits != 1 || st.AcksIgnoredNotVoter != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestLeaseReadIndexWaitsTimesOutAndFails(t *testing.T) {
	s := leaseShard(t)
	h := &leaseHostT{}
	lead(t, s, h)
	h.index.Store(12)
	if _, err := s.GetWith([]byte("k"), &ReadOptions{Level: ReadLinearizable, Timeout: time.Millisecond}); !errors.Is(err, ErrTimeout) {
		t.Fatalf("applied 10 < 12: %v, want ErrTimeout", err)
	}
	// Concurrent readers: each waits until the applied index reaches 12.
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, errs[i] = s.GetWith([]byte("k"), &ReadOptions{Level: ReadLinearizable, Timeout: time.Minute})
		}(i)
	}
	for h.calls.Load() < 2 {
		runtime.Gosched()
	}
	must(t, s.Consensus().SetApplied(12))
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("reader %d: %v", i, err)
		}
	}
	h.fail.Store(&Error{Code: StatusIO, Message: "net down"})
	if _, err := s.GetWith([]byte("k"), &ReadOptions{Level: ReadLinearizable}); !errors.Is(err, ErrIO) {
		t.Fatalf("failing read-index: %v, want ErrIO", err)
	}
	st, _ := s.LeaseStats()
	if st.ReadIndexTimeouts != 1 || st.ReadIndexErrors != 1 || st.ReadIndexCalls > 7 {
		t.Fatalf("stats %+v", st)
	}
}

func TestLeaseSessionCostsOneReadIndex(t *testing.T) {
	s := leaseShard(t)
	h := &leaseHostT{}
	lead(t, s, h)
	rs, err := s.ReadBegin(ReadLinearizable, 0)
	if err != nil {
		t.Fatal(err)
	}
	if rs.Index() != 10 || h.calls.Load() != 1 {
		t.Fatalf("session index %d after %d calls", rs.Index(), h.calls.Load())
	}
	in := &ReadOptions{Session: rs}
	if _, err := s.GetWith([]byte("k"), in); err != nil {
		t.Fatal(err)
	}
	vals, err := s.MultiGetWith([][]byte{[]byte("k"), []byte("k2"), []byte("nope")}, in)
	if err != nil || string(vals[1].Bytes) != "w" || vals[2] != nil {
		t.Fatalf("MultiGetWith = %v, %v", vals, err)
	}
	for _, open := range []func() (*Iterator, error){
		func() (*Iterator, error) { return s.ScanWith(nil, nil, in) },
		func() (*Iterator, error) { return s.ScanPrefixWith([]byte("k"), in) },
	} {
		it, err := open()
		if err != nil {
			t.Fatal(err)
		}
		it.Close()
	}
	if n := h.calls.Load(); n != 1 {
		t.Fatalf("the session's reads made %d calls, want 1", n)
	}
	rs.End()
	rs.End()
	if _, err := s.GetWith([]byte("k"), in); !errors.Is(err, ErrClosed) {
		t.Fatalf("read in an ended session: %v, want ErrClosed", err)
	}
}

func TestLeaseRefusedConfigurationAndRelease(t *testing.T) {
	s := leaseShard(t)
	h := &leaseHostT{}
	bad := h.options()
	bad.Lease = 800 * time.Millisecond
	if err := s.ConfigureConsensus(bad); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("lease 800 of 1000-100-100: %v, want ErrInvalidArgument", err)
	}
	bad = h.options()
	bad.ReadIndex = nil
	if err := s.ConfigureConsensus(bad); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("no ReadIndex: %v", err)
	}
	// Parts of a millisecond count: 999 ms is not below 1 s - 0.5 ms -
	// 0.7 ms (998.8 ms), so the lease is refused, not let through by
	// margins rounded down to 0.
	bad = h.options()
	bad.Lease, bad.MaxClockDrift, bad.MaxRoundTrip = 999*time.Millisecond, 500*time.Microsecond, 700*time.Microsecond
	if err := s.ConfigureConsensus(bad); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("lease 999ms of 1s - 0.5ms - 0.7ms: %v, want ErrInvalidArgument", err)
	}
	lead(t, s, h)
	must(t, s.Close())
	if _, err := s.LeaseStats(); !errors.Is(err, ErrClosed) {
		t.Fatalf("LeaseStats after Close: %v", err)
	}
}

// A BootTimeClock shard reads its own kernel clock: Now moves forward and
// an ack stamped with it holds a lease (59 minutes: no scheduling delay
// ages it out). Both clocks at once are refused.
func TestLeaseBootTimeClockStampsAcks(t *testing.T) {
	s := leaseShard(t)
	h := &leaseHostT{}
	c := s.Consensus()
	if _, err := c.Now(); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("Now before ConfigureConsensus: %v, want ErrInvalidArgument", err)
	}
	o := h.options()
	o.BootTimeClock = true
	if err := s.ConfigureConsensus(o); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("ManualClock and BootTimeClock: %v, want ErrInvalidArgument", err)
	}
	o.ManualClock = false
	o.ElectionTimeoutMin, o.Lease = time.Hour, 59*time.Minute
	must(t, s.ConfigureConsensus(o))
	if err := c.SetClock(5); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("SetClock of a kernel clock: %v, want ErrInvalidArgument", err)
	}
	must(t, c.SetVoters([]uint64{1, 2, 3}, nil))
	// The role first: an ack of a message stamped before this node led
	// its term is ignored.
	must(t, c.SetRole(RoleLeader, 1, 0))
	sent, err := c.Now()
	if err != nil || sent == 0 {
		t.Fatalf("Now = %d, %v", sent, err)
	}
	if _, err := c.TermApplied(1); err != nil {
		t.Fatal(err)
	}
	must(t, c.Ack(2, 1, sent))
	if later, err := c.Now(); err != nil || later < sent {
		t.Fatalf("Now went from %d to %d, %v", sent, later, err)
	}
	if v, err := s.GetWith([]byte("k"), &ReadOptions{Level: ReadLease}); err != nil || string(v.Bytes) != "v" {
		t.Fatalf("lease read = %v, %v", v, err)
	}
	if st, err := s.LeaseStats(); err != nil || st.LeaseHits != 1 || h.calls.Load() != 0 {
		t.Fatalf("stats %+v, %v, %d read-index calls", st, err, h.calls.Load())
	}
}

// A host's ReadIndex often waits for its own apply loop, which calls the
// shard. A Close of the shard while such a read is in flight must not make
// that call queue behind the Close (which waits for the read, which waits
// for the ReadIndex): it fails with ErrClosed at once, and the read and
// the Close end. Ordered by observations: the ReadIndex has begun, the
// shard answers ErrClosed once the Close has begun.
func TestLeaseCloseWhileReadIndexWaitsForTheShard(t *testing.T) {
	s := leaseShard(t)
	h := &leaseHostT{}
	inReadIndex := make(chan struct{})
	applied := make(chan error)
	var once sync.Once
	o := h.options()
	o.ReadIndex = func() (uint64, error) {
		once.Do(func() { close(inReadIndex) })
		return 10, <-applied
	}
	must(t, s.ConfigureConsensus(o))
	c := s.Consensus()
	must(t, c.SetVoters([]uint64{1, 2, 3}, nil))
	must(t, c.SetRole(RoleLeader, 5, 0))
	must(t, c.SetApplied(10))
	read := make(chan error, 1)
	go func() {
		_, err := s.GetWith([]byte("k"), &ReadOptions{Level: ReadLinearizable})
		read <- err
	}()
	<-inReadIndex
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	for {
		if _, err := s.Get([]byte("k")); errors.Is(err, ErrClosed) {
			break
		}
		runtime.Gosched()
	}
	_, err := s.Put([]byte("k3"), []byte("x")) // the host's apply loop
	wantCode(t, "Put while the shard closes", err, ErrClosed)
	applied <- err
	<-read // whatever the read-index's failure made of it
	must(t, <-closed)
}

// soleLeader makes shard 1 of e lead alone, its reads that miss the lease
// calling readIndex.
func soleLeader(t *testing.T, e *Engine, readIndex func() (uint64, error)) *Shard {
	t.Helper()
	s, err := e.OpenShard(1, true)
	if err != nil {
		t.Fatal(err)
	}
	opts := LeaseOptions{
		SelfID: 1, Lease: 700 * time.Millisecond, ElectionTimeoutMin: time.Second,
		MaxClockDrift: 100 * time.Millisecond, MaxRoundTrip: 100 * time.Millisecond,
		ManualClock: true, ReadIndex: readIndex,
	}
	must(t, s.ConfigureConsensus(opts))
	c := s.Consensus()
	must(t, c.SetVoters([]uint64{1}, nil))
	must(t, c.SetRole(RoleLeader, 1, 0))
	return s
}

// closeDuringARead starts a linearizable read of s, waits until its
// ReadIndex closed entered, then starts e.Close and returns once that
// Close waits for the read: the read's and the Close's results come on
// the channels.
func closeDuringARead(e *Engine, s *Shard, entered <-chan struct{}) (read, closed <-chan error) {
	readDone, closeDone := make(chan error, 1), make(chan error, 1)
	go func() {
		_, err := s.GetWith([]byte("k"), &ReadOptions{Level: ReadLinearizable})
		readDone <- err
	}()
	<-entered
	go func() { closeDone <- e.Close() }()
	untilClosing(s.calls)
	return readDone, closeDone
}

// untilClosing returns once a close of c has begun.
func untilClosing[P comparable](c *calls[P]) {
	for {
		c.mu.Lock()
		closing := c.closing
		c.mu.Unlock()
		if closing {
			return
		}
		runtime.Gosched()
	}
}

// onCloseWait returns a channel closed when a Close starts waiting for an
// earlier one (testHookCloseWaits, for the rest of the test).
func onCloseWait(t *testing.T) <-chan struct{} {
	waiting := make(chan struct{})
	testHookCloseWaits = func() { close(waiting) }
	t.Cleanup(func() { testHookCloseWaits = nil })
	return waiting
}

// Engine.Close while a shard read runs the host's ReadIndex, and the host
// (its apply loop, say) calls the engine: the call fails with ErrClosed
// at once instead of waiting for the Close, which waits for the read.
// When Close held a lock through the shards' closes, Stats waited on it
// and the three never finished. No timing: every wait is on state.
func TestEngineCloseWhileReadIndexCallsTheEngine(t *testing.T) {
	e, _ := openEngineT(t, "", nil)
	entered, proceed, statsErr := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	s := soleLeader(t, e, func() (uint64, error) {
		close(entered)
		<-proceed
		_, err := e.Stats()
		statsErr <- err
		return 0, nil
	})
	read, closed := closeDuringARead(e, s, entered)
	close(proceed)
	wantCode(t, "Engine.Stats inside ReadIndex during Close", <-statsErr, ErrClosed)
	// The read ends: served (the key is absent), or found the shard closed.
	if err := <-read; !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrClosed) {
		t.Errorf("the read: %v", err)
	}
	must(t, <-closed)
}

// secondCloseDuringARead runs a first Engine.Close that waits for a read
// whose ReadIndex the host made with readIndex(entered, proceed, second),
// then closes proceed: the host's code closes the engine again and sends
// the result on second. It must be ErrClosed at once; waiting for the
// first Close would never end (it waits for the read, which waits for the
// host). Ordered by observations only: testHookCloseWaits fires if the
// second Close starts waiting.
func secondCloseDuringARead(t *testing.T, what string, readIndex func(e *Engine, entered, proceed chan struct{}, second chan<- error) func() (uint64, error)) {
	e, err := OpenEngine(t.TempDir(), nil) // no Cleanup Close: a failure would hang it
	if err != nil {
		t.Fatal(err)
	}
	entered, proceed, second := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	s := soleLeader(t, e, readIndex(e, entered, proceed, second))
	_, first := closeDuringARead(e, s, entered)
	waiting := onCloseWait(t)
	close(proceed)
	select {
	case err := <-second:
		wantCode(t, what, err, ErrClosed)
		must(t, <-first)
	case <-waiting:
		t.Fatalf("%s waits for the first Close, which waits for the read: deadlock", what)
	}
}

// Engine.Close inside the ReadIndex of a read a first Engine.Close waits
// for (a host's shutdown path) answers at once.
func TestEngineCloseFromReadIndexDuringACloseAnswersAtOnce(t *testing.T) {
	secondCloseDuringARead(t, "Engine.Close inside ReadIndex during Close", func(e *Engine, entered, proceed chan struct{}, second chan<- error) func() (uint64, error) {
		return func() (uint64, error) {
			close(entered)
			<-proceed
			second <- e.Close()
			return 0, nil
		}
	})
}

// The host's ReadIndex waits for its apply loop, and the apply loop, on
// another goroutine, calls Engine.Close on its shutdown path: it answers
// at once (while any ReadIndex runs, a Close does not wait).
func TestEngineCloseFromTheApplyLoopAReadIndexWaitsForAnswersAtOnce(t *testing.T) {
	secondCloseDuringARead(t, "Engine.Close from the apply loop during Close", func(e *Engine, entered, proceed chan struct{}, second chan<- error) func() (uint64, error) {
		applied := make(chan struct{}) // the apply loop reached the read index
		go func() {
			<-proceed
			second <- e.Close() // shutting down
			close(applied)
		}()
		return func() (uint64, error) {
			close(entered)
			<-applied
			return 0, nil
		}
	})
}

// Shard.Close and Engine.Close inside the ReadIndex of a read of that
// shard, with no other Close under way (a host's shutdown path), answer
// ErrBusy and leave both open: the close waits for the calls in flight,
// the read among them, which waits for the ReadIndex that called it, so
// they never returned. Ordered by observations only: the shard closing
// while the read is still in flight is the deadlock.
func TestCloseFromItsShardsReadIndexIsBusy(t *testing.T) {
	for _, c := range []struct {
		what  string
		close func(e *Engine, s *Shard) error
	}{
		{"Shard.Close", func(_ *Engine, s *Shard) error { return s.Close() }},
		{"Engine.Close", func(e *Engine, _ *Shard) error { return e.Close() }},
	} {
		t.Run(c.what, func(t *testing.T) {
			e, err := OpenEngine(t.TempDir(), nil) // no Cleanup Close: a failure would hang it
			if err != nil {
				t.Fatal(err)
			}
			var s *Shard
			fromReadIndex := make(chan error, 1)
			s = soleLeader(t, e, func() (uint64, error) {
				fromReadIndex <- c.close(e, s)
				return 0, nil
			})
			read := make(chan error, 1)
			go func() {
				_, err := s.GetWith([]byte("k"), &ReadOptions{Level: ReadLinearizable})
				read <- err
			}()
			deadlock, stop := make(chan struct{}), make(chan struct{})
			go func() {
				for {
					s.calls.mu.Lock()
					stuck := s.calls.closing && s.calls.inflight > 0
					s.calls.mu.Unlock()
					if stuck {
						close(deadlock)
						return
					}
					select {
					case <-stop:
						return
					default:
						runtime.Gosched()
					}
				}
			}()
			select {
			case err := <-fromReadIndex:
				close(stop)
				wantCode(t, c.what+" inside ReadIndex", err, ErrBusy)
			case <-deadlock:
				t.Fatalf("%s inside ReadIndex waits for the read that runs it: deadlock", c.what)
			}
			if err := <-read; !errors.Is(err, ErrNotFound) {
				t.Fatalf("the read: %v", err)
			}
			if _, err := s.Put([]byte("k"), []byte("v")); err != nil {
				t.Fatalf("Put after the refused close: %v", err)
			}
			must(t, e.Close())
		})
	}
}

// A ReadIndex that returns a nil *Error as its error (var e *keel.Error;
// ...; return i, e) returns a non-nil error interface: Go's classic
// mistake. It is a failure with no code, so the read fails with ErrIO, as
// for any other error; the package neither dereferences the nil pointer
// nor reports a panic that did not happen (ErrPanic), wrapped or not.
func TestLeaseReadIndexTypedNilErrorIsIONotPanic(t *testing.T) {
	for _, c := range []struct {
		what string
		err  func() error
	}{
		{"a nil *Error", func() error { var e *Error; return e }},
		{"a wrapped nil *Error", func() error { var e *Error; return fmt.Errorf("raft: %w", e) }},
		{"an *Error with code OK", func() error { return &Error{Code: StatusOK, Message: "fine?"} }},
	} {
		t.Run(c.what, func(t *testing.T) {
			e, _ := openEngineT(t, "", nil)
			var calls atomic.Int64
			s := soleLeader(t, e, func() (uint64, error) { calls.Add(1); return 0, c.err() })
			_, err := s.GetWith([]byte("k"), &ReadOptions{Level: ReadLinearizable})
			if !errors.Is(err, ErrIO) || calls.Load() != 1 {
				t.Fatalf("read after ReadIndex returned %s: %v after %d calls, want ErrIO after 1", c.what, err, calls.Load())
			}
		})
	}
}

// keel's read-index callback returns a status alone (keel_read_index_fn):
// the code of ReadIndex's *Error reaches the read, its Message and
// LeaderHint cannot. The read's LeaderHint is the leader keel knows from
// Consensus.SetRole, which ReadIndex may call before it returns
// ErrNotLeader (as LeaseOptions.ReadIndex says).
func TestLeaseReadIndexNotLeaderTakesTheHintFromSetRole(t *testing.T) {
	e, _ := openEngineT(t, "", nil)
	var s *Shard
	s = soleLeader(t, e, func() (uint64, error) {
		// The engine learned in the round trip that node 3 leads term 2.
		if err := s.Consensus().SetRole(RoleFollower, 2, 3); err != nil {
			return 0, err
		}
		return 0, &Error{Code: StatusNotLeader, Message: "raft: stepped down", LeaderHint: 3}
	})
	_, err := s.GetWith([]byte("k"), &ReadOptions{Level: ReadLinearizable})
	var ke *Error
	if !errors.As(err, &ke) || ke.Code != StatusNotLeader || ke.LeaderHint != 3 {
		t.Fatalf("read whose ReadIndex stepped down: %v, want NOT_LEADER with hint 3", err)
	}
}

// A ReadSession dropped without End is reported by its finalizer, like
// every other handle of the package, not ended behind the program's back.
func TestReadSessionLeakIsReported(t *testing.T) {
	s := leaseShard(t)
	reported := make(chan string, 4)
	old := setLeakf(func(format string, args ...any) { reported <- fmt.Sprintf(format, args...) })
	defer setLeakf(old)
	func() {
		rs, err := s.ReadBegin(ReadStale, 0)
		if err != nil {
			t.Fatal(err)
		}
		_ = rs
	}()
	// An ended session is not reported.
	rs, err := s.ReadBegin(ReadStale, 0)
	if err != nil {
		t.Fatal(err)
	}
	rs.End()
	deadline := time.After(10 * time.Second)
	for {
		runtime.GC()
		select {
		case msg := <-reported:
			if !strings.Contains(msg, "ReadSession") {
				t.Fatalf("leak report %q does not name the ReadSession", msg)
			}
			runtime.GC()
			time.Sleep(50 * time.Millisecond)
			for len(reported) != 0 {
				if msg := <-reported; strings.Contains(msg, "ReadSession") {
					t.Fatalf("a second ReadSession report: %q (the ended session?)", msg)
				}
			}
			return
		case <-deadline:
			t.Fatal("no leak report after the ReadSession became unreachable")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// End on a nil *ReadSession (what a failed ReadBegin returns, so a
// deferred End taken before the error check) is a no-op, as ending twice
// is, instead of a nil dereference; Index is 0.
func TestReadSessionNilEndIsANoOp(t *testing.T) {
	s := leaseShard(t)
	rs, err := s.ReadBegin(ReadLinearizable, 0) // no consensus configured
	defer rs.End()
	if !errors.Is(err, ErrInvalidArgument) || rs != nil {
		t.Fatalf("ReadBegin without consensus: %v, %v", rs, err)
	}
	if i := rs.Index(); i != 0 {
		t.Fatalf("Index of a nil session: %d", i)
	}
	rs.End()
}
