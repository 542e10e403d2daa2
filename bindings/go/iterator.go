package keel

/*
#include "keel.h"
*/
import "C"

import "runtime"

// Iterator walks the keys of a Shard.Scan or Shard.ScanPrefix in key
// order, from a consistent copy of the range taken when the scan was
// opened:
//
//	it, err := shard.ScanPrefix([]byte("user/"))
//	if err != nil { ... }
//	defer it.Close()
//	for it.Next() {
//		use(it.Key(), it.Value())
//	}
//	if err := it.Err(); err != nil { ... }
//
// An Iterator is not safe for concurrent use: use it from one goroutine at
// a time. It may outlive its Shard; Next then stops and Err matches
// ErrClosed. Close releases it (it is reported as a leak when garbage
// collected still holding its copy of the range).
type Iterator struct {
	h *C.keel_iter_t // nil once released (closed, or at the end)
	// opened: made by a scan. A zero-value Iterator was never opened and
	// answers as a closed one, not as an empty range.
	opened bool
	closed bool // Close was called
	key    []byte
	val    Value
	err    error
}

func newIterator(h *C.keel_iter_t) *Iterator {
	it := &Iterator{h: h, opened: true}
	runtime.SetFinalizer(it, (*Iterator).reportLeak)
	return it
}

func (it *Iterator) reportLeak() {
	if it.h != nil {
		leakf("keel: Iterator was garbage collected without Close; its handle and copy of the range leak")
	}
}

// Next moves to the next key and reports whether there is one. It returns
// false at the end of the range or on an error (see Err); the library's
// copy of the range is released then, without waiting for Close.
func (it *Iterator) Next() bool {
	if it == nil || it.closed || !it.opened {
		if it != nil && it.err == nil {
			it.err = newError("Next", StatusClosed, "the iterator is closed")
		}
		return false
	}
	if it.h == nil {
		return false
	}
	defer runtime.KeepAlive(it)
	var key, val *C.uint8_t
	var klen, vlen C.size_t
	var kind C.uint32_t
	var ver C.uint64_t
	var cerr *C.keel_error_t
	st := C.keel_iter_next(it.h, &key, &klen, &val, &vlen, &kind, &ver, &cerr)
	switch st {
	case C.KEEL_STATUS_OK:
		// The pointers are borrowed until the next call on the iterator:
		// copy now.
		it.key = goBytes(key, klen)
		it.val = Value{Kind: Kind(kind), Version: uint64(ver), Bytes: goBytes(val, vlen)}
		return true
	case C.KEEL_STATUS_NOT_FOUND:
		C.keel_error_free(cerr)
	default:
		it.err = takeError("Next", st, cerr)
	}
	it.key, it.val = nil, Value{}
	C.keel_iter_close(it.h)
	it.h = nil
	return false
}

// Key returns the current key (a copy owned by the caller); nil before the
// first Next and after Next returned false.
func (it *Iterator) Key() []byte {
	if it == nil {
		return nil
	}
	return it.key
}

// Value returns what the current key holds (Bytes is a copy owned by the
// caller); the zero Value before the first Next and after Next returned
// false.
func (it *Iterator) Value() Value {
	if it == nil {
		return Value{}
	}
	return it.val
}

// Err returns the error that stopped Next (one matching ErrClosed when the
// shard or the iterator was closed, or the Iterator is a zero value that
// no scan opened), or nil at the end of the range.
func (it *Iterator) Err() error {
	if it == nil {
		return newError("Err", StatusInvalidArgument, "nil *Iterator")
	}
	return it.err
}

// Close releases the iterator. A second Close returns an error matching
// ErrClosed.
func (it *Iterator) Close() error {
	if it == nil || it.closed || !it.opened {
		return newError("Close", StatusClosed, "the iterator is already closed")
	}
	it.closed = true
	C.keel_iter_close(it.h) // NULL (already released at the end) is a no-op
	it.h = nil
	it.key, it.val = nil, Value{}
	runtime.SetFinalizer(it, nil)
	return nil
}
