package keel

/*
#include <stdlib.h>
#include "keel.h"
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// Fence is a fencing token for a bucket (Engine.FenceTryAcquire hands
// tokens out), carried by a write: the shard refuses it with ErrFenced
// when the token is below the highest one it accepted for the bucket,
// which otherwise becomes this one. The highest tokens are the shard's,
// kept across restarts (never lowered by one) and the same on every
// replica that applies the same entries.
type Fence struct {
	Bucket []byte
	Token  uint64
}

// ApplyResult says what Shard.Apply did with an entry.
type ApplyResult struct {
	// Duplicate: the index was at or below the applied index; nothing
	// was done.
	Duplicate bool
	// Refused is why the entry's operations were refused, identically on
	// every replica (an error matching ErrFenced, ErrWrongKind or
	// ErrInvalidArgument); the index moved all the same. nil when they
	// took effect.
	Refused error
	// OpCount operations took effect, with versions FirstVersion through
	// LastVersion (0 when none).
	OpCount                   int
	FirstVersion, LastVersion uint64
	// AppliedIndex is the shard's applied index after the call.
	AppliedIndex uint64
}

// withWriteOptions calls call with the C options of fence (NULL for
// nil). The bucket is copied to C memory for the call: the options struct
// itself is Go memory that cgo passes, and it must hold no Go pointer.
func withWriteOptions(fence *Fence, call func(o *C.keel_write_options_t) C.keel_status_t) C.keel_status_t {
	if fence == nil {
		return call(nil)
	}
	var o C.keel_write_options_t
	if st := C.keel_write_options_init_sized(&o, C.size_t(unsafe.Sizeof(o))); st != C.KEEL_STATUS_OK {
		return st
	}
	o.fenced = 1
	o.fence_token = C.uint64_t(fence.Token)
	if n := len(fence.Bucket); n > 0 {
		p := C.CBytes(fence.Bucket)
		defer C.free(p)
		o.fence_bucket = (*C.uint8_t)(p)
		o.fence_bucket_len = C.size_t(n)
	}
	return call(&o)
}

// WriteFenced is Write with a fence: ErrFenced, and nothing written, when
// f.Token is below the highest token this shard accepted for f.Bucket;
// otherwise the token becomes the highest, logged with the batch. The
// check happens in the shard's write order.
func (s *Shard) WriteFenced(b *Batch, f Fence) (first, last uint64, err error) {
	if b == nil {
		return 0, 0, newError("WriteFenced", StatusInvalidArgument, "nil *Batch")
	}
	if err := b.packErr("WriteFenced"); err != nil {
		return 0, 0, err
	}
	h, err := s.acquire("WriteFenced")
	if err != nil {
		return 0, 0, err
	}
	defer s.release()
	var fv, lv C.uint64_t
	var cerr *C.keel_error_t
	st := withWriteOptions(&f, func(o *C.keel_write_options_t) C.keel_status_t {
		return C.keel_shard_write_packed_ex(h, bytesPtr(b.ops), C.size_t(len(b.ops)), o, &fv, &lv, &cerr)
	})
	if st != C.KEEL_STATUS_OK {
		return 0, 0, takeError("WriteFenced", st, cerr)
	}
	return uint64(fv), uint64(lv), nil
}

// Apply applies the host's committed entry index (its consensus log
// index, from 1): the operations of b (nil or empty: the entry only moves
// the index, as raft's empty and configuration entries do) with fence
// (nil: none), atomically, in the shard's write order. The index is
// logged with the operations: AppliedIndex returns it from then on,
// across crashes and reopens, and the shard's lease reads see it as
// applied. Apply entries one call at a time, in index order.
//
// An index at or below AppliedIndex changes nothing (Duplicate). A
// refusal (a stale fence, an append to a value, a key past the limits)
// moves the index all the same and is reported in ApplyResult.Refused:
// answer the entry's client with it, never apply the entry again. An
// error means the index did not move (ErrIO, ErrNoSpace, ErrClosed,
// ErrPoisoned, ErrInvalidArgument for index 0 or an entry larger than
// the shard's WAL takes). b is left as it was.
func (s *Shard) Apply(index uint64, b *Batch, fence *Fence) (ApplyResult, error) {
	var ops []byte
	if b != nil {
		if err := b.packErr("Apply"); err != nil {
			return ApplyResult{}, err
		}
		ops = b.ops
	}
	h, err := s.acquire("Apply")
	if err != nil {
		return ApplyResult{}, err
	}
	defer s.release()
	var r C.keel_apply_result_t
	r.struct_size = C.uint32_t(unsafe.Sizeof(r))
	var cerr *C.keel_error_t
	st := withWriteOptions(fence, func(o *C.keel_write_options_t) C.keel_status_t {
		return C.keel_shard_apply_packed(h, C.uint64_t(index), bytesPtr(ops), C.size_t(len(ops)), o, &r, &cerr)
	})
	if st != C.KEEL_STATUS_OK {
		return ApplyResult{}, takeError("Apply", st, cerr)
	}
	res := ApplyResult{
		Duplicate:    r.duplicate != 0,
		OpCount:      int(r.op_count),
		FirstVersion: uint64(r.first_version),
		LastVersion:  uint64(r.last_version),
		AppliedIndex: uint64(r.applied_index),
	}
	if r.status != C.KEEL_STATUS_OK {
		res.Refused = newError("Apply", Status(r.status), fmt.Sprintf("entry %d refused; its index moved", index))
	}
	return res, nil
}

// AppliedIndex returns the index of the last entry applied with Apply (0:
// none), as it stands after any crash and reopen: where the host's
// consensus engine resumes applying (etcd raft: Config.Applied).
func (s *Shard) AppliedIndex() (uint64, error) {
	h, err := s.acquire("AppliedIndex")
	if err != nil {
		return 0, err
	}
	defer s.release()
	var i C.uint64_t
	var cerr *C.keel_error_t
	if st := C.keel_shard_applied_index(h, &i, &cerr); st != C.KEEL_STATUS_OK {
		return 0, takeError("AppliedIndex", st, cerr)
	}
	return uint64(i), nil
}
