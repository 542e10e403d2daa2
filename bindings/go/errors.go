package keel

/*
#include <stdlib.h>
#include "keel.h"
*/
import "C"

// Status is the result code of a keel call (keel_status_t). The values
// mirror KEEL_STATUS_* and are never renumbered.
type Status uint32

const (
	StatusOK              Status = C.KEEL_STATUS_OK
	StatusNullArgument    Status = C.KEEL_STATUS_NULL_ARGUMENT
	StatusInvalidArgument Status = C.KEEL_STATUS_INVALID_ARGUMENT
	StatusIO              Status = C.KEEL_STATUS_IO
	StatusCorruption      Status = C.KEEL_STATUS_CORRUPTION
	StatusNotFound        Status = C.KEEL_STATUS_NOT_FOUND
	StatusBusy            Status = C.KEEL_STATUS_BUSY
	StatusTimeout         Status = C.KEEL_STATUS_TIMEOUT
	StatusClosed          Status = C.KEEL_STATUS_CLOSED
	StatusPoisoned        Status = C.KEEL_STATUS_POISONED
	StatusPanic           Status = C.KEEL_STATUS_PANIC
	StatusBufferTooSmall  Status = C.KEEL_STATUS_BUFFER_TOO_SMALL
	StatusTruncated       Status = C.KEEL_STATUS_TRUNCATED
	StatusNotLeader       Status = C.KEEL_STATUS_NOT_LEADER
	StatusUnsupported     Status = C.KEEL_STATUS_UNSUPPORTED
	StatusNoSpace         Status = C.KEEL_STATUS_NO_SPACE
	StatusWrongKind       Status = C.KEEL_STATUS_WRONG_KIND
	StatusResource        Status = C.KEEL_STATUS_RESOURCE
	StatusFenced          Status = C.KEEL_STATUS_FENCED
	StatusRefused         Status = C.KEEL_STATUS_REFUSED
	StatusProtocol        Status = C.KEEL_STATUS_PROTOCOL
	StatusMoved           Status = C.KEEL_STATUS_MOVED
)

// String returns the library's name of the status ("IO", "TRUNCATED", ...;
// "UNKNOWN" for values this library does not know).
func (s Status) String() string {
	// keel_status_str returns a static string: nothing to free.
	return C.GoString(C.keel_status_str(C.keel_status_t(s)))
}

// Error is a failed keel call: the status code and the library's message.
type Error struct {
	Code    Status
	Message string
	// Op is the Go method that failed ("Append", "Open", ...); empty in
	// the sentinels.
	Op string
	// LeaderHint is, for StatusNotLeader, the consensus id of the leader
	// when this node knows it (keel_error_leader_hint); 0 otherwise.
	LeaderHint uint64
}

func (e *Error) Error() string {
	s := "keel: "
	if e.Op != "" {
		s += e.Op + ": "
	}
	s += e.Code.String()
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Is makes errors.Is(err, keel.ErrX) compare status codes only, so the
// sentinels match every error of their code whatever the message; but
// ErrNoMore, a state of a Reader rather than a status, matches only itself
// (a Get's NOT_FOUND is not "no more records").
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if t == ErrNoMore {
		return e == ErrNoMore
	}
	return ok && t != nil && e != nil && t.Code == e.Code
}

// Sentinels for errors.Is, one per status code.
var (
	ErrNullArgument    = &Error{Code: StatusNullArgument}
	ErrInvalidArgument = &Error{Code: StatusInvalidArgument}
	ErrIO              = &Error{Code: StatusIO}
	ErrCorruption      = &Error{Code: StatusCorruption}
	ErrNotFound        = &Error{Code: StatusNotFound}
	ErrBusy            = &Error{Code: StatusBusy}
	ErrTimeout         = &Error{Code: StatusTimeout}
	ErrClosed          = &Error{Code: StatusClosed}
	ErrPoisoned        = &Error{Code: StatusPoisoned}
	ErrPanic           = &Error{Code: StatusPanic}
	ErrBufferTooSmall  = &Error{Code: StatusBufferTooSmall}
	ErrTruncated       = &Error{Code: StatusTruncated}
	ErrNotLeader       = &Error{Code: StatusNotLeader}
	ErrUnsupported     = &Error{Code: StatusUnsupported}
	ErrNoSpace         = &Error{Code: StatusNoSpace}
	// ErrWrongKind: an append to a key that holds a value (nothing was
	// written), or Value.Items on a value that is not a posting list.
	ErrWrongKind = &Error{Code: StatusWrongKind}
	// ErrResource: out of file descriptors, memory or threads before
	// anything was written; the log is still usable, retry once the
	// resource is freed.
	ErrResource = &Error{Code: StatusResource}
	// ErrFenced: a fencing token below the highest accepted for its
	// bucket (a newer lease holder has written since).
	ErrFenced = &Error{Code: StatusFenced}
	// ErrRefused: a Node refused a peer in the handshake (bad MAC,
	// replay, no common version, wrong node id, a non-loopback peer
	// without a secret), or the peer refused this node.
	ErrRefused = &Error{Code: StatusRefused}
	// ErrProtocol: a Node's peer broke the wire protocol (malformed,
	// oversized or unknown frame).
	ErrProtocol = &Error{Code: StatusProtocol}
	// ErrMoved: the shard was handed over to another node by a transfer
	// and refuses writes.
	ErrMoved = &Error{Code: StatusMoved}
)

// ErrNoMore is what Reader.Next returns when the reader has caught up with
// the log: not a failure, call Next again later to follow new records. It is
// returned as this exact value (err == keel.ErrNoMore works) and also
// matches errors.Is(err, keel.ErrNotFound), the library's status for it;
// no other NOT_FOUND error matches errors.Is(err, keel.ErrNoMore).
var ErrNoMore = &Error{Code: StatusNotFound, Message: "no more records yet"}

// takeError turns a failed status and its optional keel_error_t into an
// *Error and frees the C object. cerr may be nil (calls without an err
// parameter): the status name then stands in for the message.
func takeError(op string, st C.keel_status_t, cerr *C.keel_error_t) error {
	e := &Error{Code: Status(st), Op: op}
	if cerr != nil {
		// The code in the object is authoritative; the message is borrowed
		// from it, so copy it before freeing.
		e.Code = Status(C.keel_error_code(cerr))
		e.Message = C.GoString(C.keel_error_message(cerr))
		e.LeaderHint = uint64(C.keel_error_leader_hint(cerr))
		C.keel_error_free(cerr)
	}
	return e
}

// newError builds an *Error for a failure detected on the Go side.
func newError(op string, code Status, msg string) error {
	return &Error{Code: code, Op: op, Message: msg}
}
