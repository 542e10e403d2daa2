package keel

import (
	"sync"
	"sync/atomic"
	"syscall"
)

// calls guards a C handle whose close must not race with other calls on
// it and whose callbacks may call methods of the same handle: every call
// into C on the handle counts itself in; close marks it closing, waits for
// the calls in flight and takes the handle away. Once closing, new calls
// fail at once (enter returns no handle).
//
// Not an RWMutex: some calls wait for code that may call the same handle
// (a Node's Connect for the peer's first OnEvent, a Publisher's
// Unsubscribe for the subscriber's running OnEvent, a Shard's read for
// the host's ReadIndex, which may wait for the host's apply loop), and a
// writer waiting on an RWMutex blocks new readers: with a Close pending,
// that inner call would wait for the Close, which waits for the outer.
//
// P is the handle's pointer type (cgo's C types are incomplete, so the
// pointer itself is the type argument); its zero value is no handle.
//
// A nil *calls is a handle never opened: the field of a zero-value
// struct (var s keel.Shard), whose methods then report ErrClosed as a
// closed one's do instead of crashing.
type calls[P comparable] struct {
	mu       sync.Mutex
	drained  sync.Cond // signalled when inflight drops to 0 while closing
	h        P         // zero once closed
	closing  bool
	inflight int
	// released is made by the first close and closed by its done, once
	// the caller has released the handle; later closes wait on it.
	released chan struct{}
}

func newCalls[P comparable](h P) *calls[P] {
	c := &calls[P]{h: h}
	c.drained.L = &c.mu
	return c
}

// enter counts a call in and returns the handle, or the zero P when the
// handle is closed or closing; every other enter is paired with a leave.
func (c *calls[P]) enter() P {
	var none P
	if c == nil {
		return none
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.h == none || c.closing {
		return none
	}
	c.inflight++
	return c.h
}

// open reports whether the handle is open and no close of it has begun.
func (c *calls[P]) open() bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var none P
	return c.h != none && !c.closing
}

func (c *calls[P]) leave() {
	c.mu.Lock()
	if c.inflight--; c.inflight == 0 && c.closing {
		c.drained.Broadcast()
	}
	c.mu.Unlock()
}

// close marks the handle closing, runs first (if not nil) on it (with
// the calls in flight still running: for a call that makes them return
// sooner), waits until no call is in flight and takes the handle away.
// The caller releases the handle (the C close or free) and then calls
// done.
//
// A later close returns the zero P and a no-op done; with wait it
// returns only once the first close's done ran, so that every Close
// returns with the handle released. Pass wait false from a callback the
// first close may be waiting for.
func (c *calls[P]) close(first func(P), wait bool) (h P, done func()) {
	var none P
	if c == nil {
		return none, func() {}
	}
	c.mu.Lock()
	if c.h == none || c.closing {
		released := c.released
		c.mu.Unlock()
		if wait && released != nil {
			if testHookCloseWaits != nil {
				testHookCloseWaits()
			}
			<-released
		}
		return none, func() {}
	}
	defer c.mu.Unlock()
	c.closing = true
	released := make(chan struct{})
	c.released = released
	if first != nil {
		first(c.h)
	}
	for c.inflight > 0 {
		c.drained.Wait()
	}
	h = c.h
	c.h = none
	return h, func() { close(released) }
}

// testHookCloseWaits, when set by a test, runs when a close starts
// waiting for an earlier one.
var testHookCloseWaits func()

// threadSet counts the host callbacks of one kind running per OS thread
// id (a goroutine running a callback is locked to the calling C thread).
// A Close called from such a callback must not wait for an earlier Close,
// which may be waiting for that very callback.
type threadSet struct {
	mu sync.Mutex
	m  map[int]int
}

func newThreadSet() *threadSet { return &threadSet{m: map[int]int{}} }

// ReadIndex calls (of any shard) and Net OnEvent calls (of any Net).
var readIndexThreads, netEventThreads = newThreadSet(), newThreadSet()

func (s *threadSet) enter() int {
	tid := syscall.Gettid()
	s.mu.Lock()
	s.m[tid]++
	s.mu.Unlock()
	return tid
}

func (s *threadSet) leave(tid int) {
	s.mu.Lock()
	if s.m[tid]--; s.m[tid] == 0 {
		delete(s.m, tid)
	}
	s.mu.Unlock()
}

// running reports whether such a callback runs on any thread: a Close
// that waited for an earlier one could be what that callback waits for,
// from its own thread or from a goroutine it waits for (a ReadIndex
// waiting for the host's apply loop, which closes the engine).
func (s *threadSet) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m) > 0
}

func (s *threadSet) has() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[syscall.Gettid()] > 0
}

// callbackThread is the OS thread id of a handle's host callback while a
// call of it runs (0 otherwise), for a handle whose callbacks run one at
// a time on one keel thread (a Net's reactor thread, a Transfer's
// thread): a method that would wait for that thread (Net.Close,
// Transfer.Wait and Close) tells by it that it is called from the
// callback, and answers ErrBusy. Only while the call runs: once it
// returned, the thread may end (a transfer over, a reactor that
// panicked) and the kernel may give its id to another thread, one of
// Go's say, whose goroutine is not in the callback.
type callbackThread struct{ tid atomic.Int64 }

// enter, first thing in the callback, records its thread; the callback
// defers leave.
func (c *callbackThread) enter() { c.tid.Store(int64(threadID())) }

func (c *callbackThread) leave() { c.tid.Store(0) }

// current tells whether the calling goroutine is in the callback.
func (c *callbackThread) current() bool {
	tid := c.tid.Load()
	return tid != 0 && tid == int64(threadID())
}

// threadID is syscall.Gettid; a variable so that a test can play the
// kernel handing the id of a thread that ended to another thread.
var threadID = syscall.Gettid
