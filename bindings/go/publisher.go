package keel

/*
#include <stdlib.h>
#include <unistd.h>
#include "keel.h"
*/
import "C"

import (
	"fmt"
	"math"
	"runtime"
	"syscall"
)

// PublisherStats are the counters of a Publisher. The send counters are
// summed over every subscriber it ever had (one that left counts as it was
// when it left), so they never go backwards.
type PublisherStats struct {
	Published   uint64 // messages published
	Flushes     uint64 // drain points (Flush and Publish with flush)
	Subscribers uint64 // subscribers still open
	CutOff      uint64 // subscribers keel closed (caps, errors), not yet unsubscribed
	Sends       uint64
	BytesSent   uint64
	ItemsSent   uint64
}

// Publisher fans messages out to subscriber sockets of a Net. Publish
// copies a message once and queues it for every subscriber without a
// syscall; the drain point (Flush, or Publish with flush) gives each
// subscriber with messages pending one send per Quota messages. A
// subscriber that fails or exceeds its caps is cut off and reported to
// OnEvent once; it never slows the others; release it with Unsubscribe.
// All methods are safe for concurrent use.
//
// Close it when done. A Publisher garbage collected while open is
// reported as a leak (its subscriber sockets stay open), not closed.
type Publisher struct {
	// calls holds the handle: keel_publisher_unsubscribe waits for the
	// subscriber's running OnEvent, which may call this Publisher's
	// methods, so a pending Close must not make them queue (calls.go).
	calls *calls[*C.keel_publisher_t]
	// ev is the Net's callback state (nil without OnEvent): Close tells
	// from it whether it runs inside an OnEvent.
	ev *netEvents
}

// NewPublisher creates a Publisher on n whose subscribers use opts (nil:
// the defaults).
func NewPublisher(n *Net, opts *WriterOptions) (*Publisher, error) {
	copts, err := opts.toC("NewPublisher")
	if err != nil {
		return nil, err
	}
	h, err := n.acquire("NewPublisher")
	if err != nil {
		return nil, err
	}
	defer n.release()
	var ph *C.keel_publisher_t
	var cerr *C.keel_error_t
	if st := C.keel_publisher_new(h, &copts, &ph, &cerr); st != C.KEEL_STATUS_OK {
		return nil, takeError("NewPublisher", st, cerr)
	}
	p := &Publisher{calls: newCalls(ph), ev: n.ev}
	runtime.SetFinalizer(p, (*Publisher).reportLeak)
	return p, nil
}

func (p *Publisher) reportLeak() {
	leakf("keel: Publisher was garbage collected without Close; its handle and subscriber sockets leak")
}

func (p *Publisher) acquire(op string) (*C.keel_publisher_t, error) {
	if p == nil {
		return nil, newError(op, StatusInvalidArgument, "nil *Publisher")
	}
	h := p.calls.enter()
	if h == nil {
		return nil, newError(op, StatusClosed, "the publisher is closed")
	}
	return h, nil
}

func (p *Publisher) release() {
	p.calls.leave()
	runtime.KeepAlive(p)
}

// Subscribe adds conn (a connected stream socket) as a subscriber and
// returns its id, the connID OnEvent reports for it. conn is handled as
// by Adopt: keel owns a duplicate of its descriptor, conn stays yours and
// open — never write to it, close it when you no longer read from it.
// As in Adopt, a conn whose socket a Net of this process already has is
// refused.
// The subscriber receives every message published after this call.
func (p *Publisher) Subscribe(conn syscall.Conn) (uint64, error) {
	fd, err := dupConn("Subscribe", conn)
	if err != nil {
		return 0, err
	}
	id, err := p.subscribe("Subscribe", fd)
	if err != nil {
		C.close(fd)
		return 0, err
	}
	return id, nil
}

// SubscribeFD adds the connected stream socket fd as a subscriber; keel
// owns fd on success (as in AdoptFD), on failure it is still yours.
func (p *Publisher) SubscribeFD(fd int) (uint64, error) {
	if fd < math.MinInt32 || fd > math.MaxInt32 {
		return 0, newError("SubscribeFD", StatusInvalidArgument, fmt.Sprintf("fd %d is out of range", fd))
	}
	return p.subscribe("SubscribeFD", C.int(fd))
}

func (p *Publisher) subscribe(op string, fd C.int) (uint64, error) {
	h, err := p.acquire(op)
	if err != nil {
		return 0, err
	}
	defer p.release()
	var id C.uint64_t
	var cerr *C.keel_error_t
	if st := C.keel_publisher_subscribe(h, fd, &id, &cerr); st != C.KEEL_STATUS_OK {
		return 0, takeError(op, st, cerr)
	}
	return uint64(id), nil
}

// Unsubscribe removes subscriber id and closes its socket as Writer.Close
// does (what it queued is still sent); it is also how a subscriber keel
// cut off is released. An unknown id is ErrNotFound. No OnEvent call for
// it starts after Unsubscribe returns.
func (p *Publisher) Unsubscribe(id uint64) error {
	h, err := p.acquire("Unsubscribe")
	if err != nil {
		return err
	}
	defer p.release()
	var cerr *C.keel_error_t
	if st := C.keel_publisher_unsubscribe(h, C.uint64_t(id), &cerr); st != C.KEEL_STATUS_OK {
		return takeError("Unsubscribe", st, cerr)
	}
	return nil
}

// Publish queues msg (copied once) for every open subscriber without a
// syscall; with flush it is also the drain point (as Flush).
func (p *Publisher) Publish(msg []byte, flush bool) error {
	h, err := p.acquire("Publish")
	if err != nil {
		return err
	}
	defer p.release()
	var flags C.uint32_t
	if flush {
		flags = C.KEEL_PUBLISH_FLUSH
	}
	var cerr *C.keel_error_t
	if st := C.keel_publisher_publish(h, bytesPtr(msg), C.size_t(len(msg)), flags, &cerr); st != C.KEEL_STATUS_OK {
		return takeError("Publish", st, cerr)
	}
	return nil
}

// Flush is the drain point: every subscriber with messages pending gets
// one drain. A subscriber's send errors go to OnEvent, not here.
func (p *Publisher) Flush() error {
	h, err := p.acquire("Flush")
	if err != nil {
		return err
	}
	defer p.release()
	var cerr *C.keel_error_t
	if st := C.keel_publisher_flush(h, &cerr); st != C.KEEL_STATUS_OK {
		return takeError("Flush", st, cerr)
	}
	return nil
}

// Stats returns the publisher's counters.
func (p *Publisher) Stats() (PublisherStats, error) {
	h, err := p.acquire("Stats")
	if err != nil {
		return PublisherStats{}, err
	}
	defer p.release()
	var s C.keel_publisher_stats_t
	s.struct_size = C.uint32_t(C.sizeof_keel_publisher_stats_t)
	if st := C.keel_publisher_stats(h, &s); st != C.KEEL_STATUS_OK {
		return PublisherStats{}, takeError("Stats", st, nil)
	}
	return PublisherStats{
		Published:   uint64(s.published),
		Flushes:     uint64(s.flushes),
		Subscribers: uint64(s.subscribers),
		CutOff:      uint64(s.cut_off),
		Sends:       uint64(s.sends),
		BytesSent:   uint64(s.bytes_sent),
		ItemsSent:   uint64(s.items_sent),
	}, nil
}

// SubscriberStats returns the counters of subscriber id; an unknown id is
// ErrNotFound.
func (p *Publisher) SubscriberStats(id uint64) (WriterStats, error) {
	h, err := p.acquire("SubscriberStats")
	if err != nil {
		return WriterStats{}, err
	}
	defer p.release()
	s := newStatsOut()
	var cerr *C.keel_error_t
	if st := C.keel_publisher_subscriber_stats(h, C.uint64_t(id), &s, &cerr); st != C.KEEL_STATUS_OK {
		return WriterStats{}, takeError("SubscriberStats", st, cerr)
	}
	return writerStatsFromC(&s), nil
}

// Close unsubscribes every subscriber (what they queued is still sent)
// and frees the handle. It waits for calls in flight; no OnEvent call for
// its subscribers starts after it returns. A second Close returns an
// error matching ErrClosed once the first has returned (from another
// Net's OnEvent: at once). Called from its own Net's OnEvent it returns an
// error matching ErrBusy and leaves the publisher open: a call in flight (an
// Unsubscribe) may be waiting for that very OnEvent to return.
func (p *Publisher) Close() error {
	if p == nil {
		return newError("Close", StatusInvalidArgument, "nil *Publisher")
	}
	if p.ev != nil && p.ev.onReactor() {
		return newError("Close", StatusBusy, "Publisher.Close cannot be called from OnEvent")
	}
	h, done := p.calls.close(nil, !netEventThreads.has())
	defer done()
	if h == nil {
		return newError("Close", StatusClosed, "the publisher is already closed")
	}
	runtime.SetFinalizer(p, nil)
	// Outside the lock, as in Writer.Close.
	var cerr *C.keel_error_t
	if st := C.keel_publisher_close(h, &cerr); st != C.KEEL_STATUS_OK {
		return takeError("Close", st, cerr)
	}
	return nil
}
