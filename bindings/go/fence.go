package keel

/*
#include "keel.h"
*/
import "C"

import (
	"math"
	"time"
)

// The fenced lease table of an engine (docs/LEASE.md): per engine and
// local to this node; after a reopen every lease has expired, and tokens
// only grow, across restarts too. Every method is safe from any goroutine.

// FenceTryAcquire grants the lease on bucket for ttl (rounded down to whole
// milliseconds, at least 1 ms) and returns its fencing token, larger than
// every token this engine's directory ever granted. ErrBusy while another
// holder's lease runs; ErrInvalidArgument for a ttl under 1 ms.
func (e *Engine) FenceTryAcquire(bucket []byte, ttl time.Duration) (uint64, error) {
	// Rounded down: the lease never outlasts what was asked. 0 (under
	// 1 ms) is keel's to refuse.
	ms, err := millis("FenceTryAcquire", "ttl", ttl.Truncate(time.Millisecond), math.MaxUint64)
	if err != nil {
		return 0, err
	}
	h, err := e.acquire("FenceTryAcquire")
	if err != nil {
		return 0, err
	}
	defer e.release()
	var token C.uint64_t
	var cerr *C.keel_error_t
	if st := C.keel_fence_try_acquire(h, bytesPtr(bucket), C.size_t(len(bucket)), C.uint64_t(ms), &token, &cerr); st != C.KEEL_STATUS_OK {
		return 0, takeError("FenceTryAcquire", st, cerr)
	}
	return uint64(token), nil
}

// FenceValidate reports whether token holds the lease on bucket now
// (granted, not released, not expired).
func (e *Engine) FenceValidate(bucket []byte, token uint64) (bool, error) {
	return e.fenceAsk("FenceValidate", bucket, token, func(h *C.keel_engine_t, b *C.uint8_t, n C.size_t, t C.uint64_t, out *C.bool, cerr **C.keel_error_t) C.keel_status_t {
		return C.keel_fence_validate(h, b, n, t, out, cerr)
	})
}

// FenceRelease releases the lease on bucket if token holds it and it has
// not expired, and reports whether it did: an expired or superseded
// holder never clears a newer holder's lease.
func (e *Engine) FenceRelease(bucket []byte, token uint64) (bool, error) {
	return e.fenceAsk("FenceRelease", bucket, token, func(h *C.keel_engine_t, b *C.uint8_t, n C.size_t, t C.uint64_t, out *C.bool, cerr **C.keel_error_t) C.keel_status_t {
		return C.keel_fence_release(h, b, n, t, out, cerr)
	})
}

// fenceAsk runs one of the yes/no fence calls.
func (e *Engine) fenceAsk(op string, bucket []byte, token uint64,
	ask func(*C.keel_engine_t, *C.uint8_t, C.size_t, C.uint64_t, *C.bool, **C.keel_error_t) C.keel_status_t) (bool, error) {
	h, err := e.acquire(op)
	if err != nil {
		return false, err
	}
	defer e.release()
	var answer C.bool
	var cerr *C.keel_error_t
	if st := ask(h, bytesPtr(bucket), C.size_t(len(bucket)), C.uint64_t(token), &answer, &cerr); st != C.KEEL_STATUS_OK {
		return false, takeError(op, st, cerr)
	}
	return bool(answer), nil
}

// FenceCheck is the storage-side fence: ErrFenced when token is below the
// highest token this engine accepted for bucket; otherwise it records
// token as the highest (an equal token passes). No clock is involved.
func (e *Engine) FenceCheck(bucket []byte, token uint64) error {
	h, err := e.acquire("FenceCheck")
	if err != nil {
		return err
	}
	defer e.release()
	var cerr *C.keel_error_t
	if st := C.keel_fence_check(h, bytesPtr(bucket), C.size_t(len(bucket)), C.uint64_t(token), &cerr); st != C.KEEL_STATUS_OK {
		return takeError("FenceCheck", st, cerr)
	}
	return nil
}
