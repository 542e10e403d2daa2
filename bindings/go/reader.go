package keel

/*
#include "keel.h"
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// Reader is a cursor over the records of a WAL from a sequence number on.
// It follows the log: after Next returned ErrNoMore, records appended later
// are returned by later calls. While open it pins the segments it has yet
// to read, so Ack cannot delete them; Close it when done.
//
// A Reader is not safe for concurrent use: use it from one goroutine at a
// time. It may outlive its WAL; Next then returns an error matching
// ErrClosed.
type Reader struct {
	h   *C.keel_wal_reader_t // nil once closed
	buf []byte               // scratch buffer keel copies each record into
}

// initialReadBuf is the first scratch size; it grows to the largest record
// seen, so a stream of small records needs one cgo call per record.
const initialReadBuf = 4 << 10

// NewReader opens a reader at sequence number from (0 means the first
// retained record). from below FirstSeq is ErrTruncated; from beyond
// LastSeq+1 is ErrInvalidArgument.
func (w *WAL) NewReader(from uint64, upto ReadUpto) (*Reader, error) {
	h, err := w.acquire("NewReader")
	if err != nil {
		return nil, err
	}
	defer w.release()
	var rh *C.keel_wal_reader_t
	var cerr *C.keel_error_t
	if st := C.keel_wal_reader_open(h, C.uint64_t(from), C.uint32_t(upto), &rh, &cerr); st != C.KEEL_STATUS_OK {
		return nil, takeError("NewReader", st, cerr)
	}
	r := &Reader{h: rh, buf: make([]byte, initialReadBuf)}
	runtime.SetFinalizer(r, (*Reader).reportLeak)
	return r, nil
}

func (r *Reader) reportLeak() {
	leakf("keel: Reader was garbage collected without Close; its handle and segment pins leak")
}

// Next returns the next record and its sequence number. data is a new
// slice owned by the caller (empty, not nil, for an empty record). When the
// reader has caught up it returns exactly ErrNoMore: call Next again later
// to get records appended since. Other errors (ErrTruncated, ErrCorruption,
// ErrIO, ErrClosed, ...) come as *Error.
func (r *Reader) Next() (seq uint64, data []byte, err error) {
	if r == nil || r.h == nil {
		return 0, nil, newError("Next", StatusClosed, "the reader is closed")
	}
	defer runtime.KeepAlive(r)
	for {
		var cseq C.uint64_t
		var n C.size_t
		var cerr *C.keel_error_t
		// r.buf is Go memory without Go pointers: C may write into it for
		// the duration of the call.
		st := C.keel_wal_reader_next(r.h, &cseq, (*C.uint8_t)(unsafe.Pointer(&r.buf[0])), C.size_t(len(r.buf)), &n, &cerr)
		switch st {
		case C.KEEL_STATUS_OK:
			// Copy out so that the caller may keep data while the scratch
			// buffer is reused.
			out := make([]byte, int(n))
			copy(out, r.buf[:n])
			return uint64(cseq), out, nil
		case C.KEEL_STATUS_BUFFER_TOO_SMALL:
			// The reader did not advance and n is the size needed.
			C.keel_error_free(cerr)
			r.buf = make([]byte, int(n))
		case C.KEEL_STATUS_NOT_FOUND:
			C.keel_error_free(cerr)
			return 0, nil, ErrNoMore
		default:
			return 0, nil, takeError("Next", st, cerr)
		}
	}
}

// Close releases the reader and its segment pins. A second Close returns
// an error matching ErrClosed.
func (r *Reader) Close() error {
	if r == nil || r.h == nil {
		return newError("Close", StatusClosed, "the reader is already closed")
	}
	C.keel_wal_reader_close(r.h)
	r.h = nil
	r.buf = nil
	runtime.SetFinalizer(r, nil)
	return nil
}
