package keel

/*
#include <stdint.h>
#include "keel.h"

// Defined in callback.go (//export): the Go side of the event callback.
extern void keelGoNetEvent(uintptr_t handle, uint64_t conn_id, keel_status_t status, char *message);

// The C callback keel calls on its reactor thread; user_data carries the
// runtime/cgo.Handle of the Net's handler as an integer, never as a Go
// pointer.
static void keel_go_net_event(void *user, uint64_t conn_id, keel_status_t status, const char *message) {
	keelGoNetEvent((uintptr_t)user, conn_id, status, (char *)message);
}

static void keel_go_set_event(keel_net_options_t *o, uintptr_t handle) {
	o->on_event = keel_go_net_event;
	o->user_data = (void *)handle;
	o->user_data_free = NULL;  // the handle is deleted by Net.Close (see there)
}
*/
import "C"

import (
	"fmt"
	"runtime"
	"runtime/cgo"
	"unsafe"
)

// Backend is the send backend of a Net (KEEL_NET_BACKEND_*).
type Backend uint32

const (
	// BackendDefault (the zero value): the library's choice, currently
	// BackendSendmsg.
	BackendDefault Backend = C.KEEL_NET_BACKEND_DEFAULT
	// BackendSendmsg: nonblocking sendmsg(2) with iovecs, epoll for
	// writability.
	BackendSendmsg Backend = C.KEEL_NET_BACKEND_SENDMSG
	// BackendIOUring: io_uring, one ring owned by the reactor thread, when
	// a run-time probe succeeds; otherwise keel falls back to
	// BackendSendmsg (io_uring disabled by sysctl or seccomp, old kernel).
	// Net.Backend tells which one runs.
	BackendIOUring Backend = C.KEEL_NET_BACKEND_IO_URING
)

// String returns "default", "sendmsg", "io_uring" or "Backend(n)".
func (b Backend) String() string {
	switch b {
	case BackendDefault:
		return "default"
	case BackendSendmsg:
		return "sendmsg"
	case BackendIOUring:
		return "io_uring"
	}
	return fmt.Sprintf("Backend(%d)", uint32(b))
}

// NetOptions are the options of OpenNet; a nil *NetOptions and
// &NetOptions{} are the same (default backend, no handler).
type NetOptions struct {
	// Backend asks for a send backend; BackendIOUring may fall back.
	Backend Backend
	// OnEvent, if not nil, is called when keel closes a connection on its
	// own: connID is a Writer's ID or a subscriber id from
	// Publisher.Subscribe, and err an *Error matching ErrIO (a send or
	// socket error: the peer reset or went away) or ErrBusy (the cap
	// policy: the peer did not read), with keel's reason as its Message.
	//
	// It runs on the net's keel-net reactor thread — a thread keel
	// created, not one of Go's — at most once per connection, never after
	// Net.Close returned and never for a connection after its Writer.Close
	// or Publisher.Unsubscribe returned. Keep it quick and never block in
	// it (hand the event to a goroutine through a buffered channel, say):
	// while it runs no socket of the net makes progress. It may call the
	// methods of Writers and Publishers (also Close/Unsubscribe of the
	// connection it reports; a Writer already being closed on another
	// goroutine then answers ErrClosed), but not Close of any Net or
	// this Net's Publisher.Close (both answer ErrBusy). A
	// panic in it crashes the program, as in any goroutine; so does
	// runtime.Goexit (t.FailNow, t.Fatal), which cannot unwind through
	// keel.
	OnEvent func(connID uint64, err error)
}

// netEvents is what the cgo.Handle in keel_net_options_t.user_data holds.
type netEvents struct {
	onEvent func(connID uint64, err error)
	// thread is the keel-net thread while an OnEvent call runs on it, so
	// that Publisher.Close can tell it is called from its Net's OnEvent.
	thread callbackThread
}

// onReactor tells whether the calling goroutine is an OnEvent callback.
func (ev *netEvents) onReactor() bool { return ev.thread.current() }

// Net is a reactor: one keel thread ("keel-net") that owns the waiting
// side of every socket adopted into it, and one send backend. Writers
// (Adopt) and Publishers (NewPublisher) live on a Net. All methods are
// safe for concurrent use.
//
// Close it when done. Writers and Publishers may outlive it: their calls
// then fail with ErrClosed, and their Close still releases them.
type Net struct {
	// calls holds the handle: keel_net_close must not race with other
	// calls on it (calls.go).
	calls *calls[*C.keel_net_t]
	// events is the handle of ev, the OnEvent handler (0 and nil: none);
	// deleted once keel_net_close has returned, after which no callback
	// runs. Both are set by OpenNet and never change.
	events cgo.Handle
	ev     *netEvents
}

// OpenNet starts a reactor thread with the backend opts asks for. opts may
// be nil for the defaults. An unknown Backend is ErrInvalidArgument.
func OpenNet(opts *NetOptions) (*Net, error) {
	if abiErr != nil {
		return nil, abiErr
	}
	var c C.keel_net_options_t
	C.keel_net_options_init(&c)
	var events cgo.Handle
	var ev *netEvents
	if opts != nil {
		c.backend = C.uint32_t(opts.Backend)
		if opts.OnEvent != nil {
			ev = &netEvents{onEvent: opts.OnEvent}
			events = cgo.NewHandle(ev)
			C.keel_go_set_event(&c, C.uintptr_t(events))
		}
	}
	var h *C.keel_net_t
	var cerr *C.keel_error_t
	if st := C.keel_net_open(&c, &h, &cerr); st != C.KEEL_STATUS_OK {
		if events != 0 {
			events.Delete()
		}
		return nil, takeError("OpenNet", st, cerr)
	}
	n := &Net{calls: newCalls(h), events: events, ev: ev}
	runtime.SetFinalizer(n, (*Net).reportLeak)
	return n, nil
}

// reportLeak runs on the finalizer goroutine and only logs (see
// WAL.reportLeak). (A Net whose OnEvent closure refers to the Net is
// never collected, so never reported.)
func (n *Net) reportLeak() {
	leakf("keel: Net was garbage collected without Close; its reactor thread, handle and the sockets adopted into it leak")
}

func (n *Net) acquire(op string) (*C.keel_net_t, error) {
	if n == nil {
		return nil, newError(op, StatusInvalidArgument, "nil *Net")
	}
	h := n.calls.enter()
	if h == nil {
		return nil, newError(op, StatusClosed, "the net is closed")
	}
	return h, nil
}

func (n *Net) release() {
	n.calls.leave()
	runtime.KeepAlive(n)
}

// Backend returns the backend that runs: BackendSendmsg or BackendIOUring.
func (n *Net) Backend() (Backend, error) {
	h, err := n.acquire("Backend")
	if err != nil {
		return 0, err
	}
	defer n.release()
	var b C.uint32_t
	if st := C.keel_net_backend(h, &b); st != C.KEEL_STATUS_OK {
		return 0, takeError("Backend", st, nil)
	}
	return Backend(b), nil
}

// Fallback says why BackendIOUring was asked for and the sendmsg backend
// runs: code is a KEEL_NET_FALLBACK_* value (FallbackNone with an empty
// reason when nothing fell back) and reason names the error, e.g.
// "io_uring_setup failed: Function not implemented (os error 38)" under a
// container's seccomp profile.
func (n *Net) Fallback() (code FallbackCode, reason string, err error) {
	h, err := n.acquire("Fallback")
	if err != nil {
		return 0, "", err
	}
	defer n.release()
	buf := make([]byte, 256)
	for {
		var c C.uint32_t
		var l C.size_t
		var cerr *C.keel_error_t
		st := C.keel_net_fallback(h, &c, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &l, &cerr)
		if st == C.KEEL_STATUS_BUFFER_TOO_SMALL && int(l) > len(buf) {
			C.keel_error_free(cerr)
			buf = make([]byte, int(l))
			continue
		}
		if st != C.KEEL_STATUS_OK {
			return 0, "", takeError("Fallback", st, cerr)
		}
		return FallbackCode(c), string(buf[:int(l)-1]), nil
	}
}

// FallbackCode is why the io_uring backend was not used (Net.Fallback).
type FallbackCode uint32

// The FallbackCode values (KEEL_NET_FALLBACK_* in keel.h).
const (
	FallbackNone     FallbackCode = C.KEEL_NET_FALLBACK_NONE     // io_uring runs, or was not asked for
	FallbackDisabled FallbackCode = C.KEEL_NET_FALLBACK_DISABLED // sysctl kernel.io_uring_disabled = 2
	FallbackSetup    FallbackCode = C.KEEL_NET_FALLBACK_SETUP    // io_uring_setup failed (seccomp, io_uring_disabled = 1, memlock)
	FallbackKernel   FallbackCode = C.KEEL_NET_FALLBACK_KERNEL   // kernel older than 5.11
	FallbackProbe    FallbackCode = C.KEEL_NET_FALLBACK_PROBE    // the opcode probe failed
	FallbackOpcode   FallbackCode = C.KEEL_NET_FALLBACK_OPCODE   // an opcode keel needs is missing
)

// Close closes every Writer and subscriber of the net (each flushes what
// it queued, then its socket is shut down and closed), stops the reactor
// thread and releases OnEvent: no OnEvent call runs after it returns. It
// waits for calls in flight on the net and for queued bytes to leave (each
// within its WriterOptions.CloseTimeout, 2 s by default), never for an idle
// peer to close its side. Writers and Publishers stay valid and
// answer ErrClosed; close them as usual. A second Close returns an error
// matching ErrClosed once the first has returned. Called from the OnEvent
// of any Net it returns an error matching ErrBusy and leaves the net open.
func (n *Net) Close() error {
	if n == nil {
		return newError("Close", StatusInvalidArgument, "nil *Net")
	}
	if netEventThreads.has() {
		// In the OnEvent of any Net: keel_net_close would say BUSY too (it
		// joins a reactor, which may be in a callback closing this Net).
		// Answering before calls.close leaves the handle alone, so the Net
		// stays open and a Close racing on another goroutine is unaffected.
		return newError("Close", StatusBusy, "Net.Close cannot be called from OnEvent (of any Net)")
	}
	h, done := n.calls.close(nil, true)
	defer done()
	if h == nil {
		return newError("Close", StatusClosed, "the net is already closed")
	}
	// keel_net_close waits for a running OnEvent, which may call Adopt or
	// NewPublisher on this Net: they find it closed.
	var cerr *C.keel_error_t
	st := C.keel_net_close(h, &cerr)
	if st == C.KEEL_STATUS_BUSY {
		// Only on a reactor thread, which the check above rules out (a
		// Net without OnEvent runs no Go code there). The net stays open
		// but unusable: better than deleting the handle its callbacks use.
		return takeError("Close", st, cerr)
	}
	runtime.SetFinalizer(n, nil)
	if n.events != 0 {
		// No callback runs any more: the reactor thread is gone.
		n.events.Delete()
	}
	if st != C.KEEL_STATUS_OK {
		return takeError("Close", st, cerr)
	}
	return nil
}
