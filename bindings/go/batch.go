package keel

/*
#include "keel.h"
*/
import "C"

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Batch collects operations that Shard.Write applies atomically, in one
// call into the library. The zero value is an empty batch ready to use.
// Operations are packed as they are added (the bytes are copied, so the
// caller may reuse its slices), in the format documented on
// keel_shard_write_packed:
//
//	[u8 op][u32 LE key length][u32 LE body length][key][body]
//
// A Batch is not safe for concurrent use. It can be written any number of
// times, to any shard; Reset empties it and keeps its memory.
type Batch struct {
	ops []byte
	n   int
	// bad describes the first operation that cannot be packed (a body of
	// 4 GiB or more); Write, WriteFenced and Apply report it (packErr)
	// and write nothing.
	bad string
}

// Packed operation codes (KEEL_OP_*).
const (
	opPut    = C.KEEL_OP_PUT
	opDelete = C.KEEL_OP_DELETE
	opAppend = C.KEEL_OP_APPEND
)

// Put adds "store value under key" to the batch.
func (b *Batch) Put(key, value []byte) { b.add(opPut, "Put", key, value) }

// Delete adds "make key absent" to the batch.
func (b *Batch) Delete(key []byte) { b.add(opDelete, "Delete", key, nil) }

// Append adds "append item to key's posting list" to the batch.
func (b *Batch) Append(key, item []byte) { b.add(opAppend, "Append", key, item) }

func (b *Batch) add(op byte, name string, key, body []byte) {
	if b.bad != "" {
		return
	}
	// Lengths are u32 in the packed format: larger ones must not wrap.
	// (Keys longer than MaxKeySize are left to the library, which rejects
	// the whole batch with INVALID_ARGUMENT.)
	if uint64(len(key)) > math.MaxUint32 || uint64(len(body)) > math.MaxUint32 {
		b.bad = fmt.Sprintf("batch operation %d (%s): key of %d or body of %d bytes does not fit the packed format", b.n, name, len(key), len(body))
		return
	}
	b.ops = append(b.ops, op)
	b.ops = binary.LittleEndian.AppendUint32(b.ops, uint32(len(key)))
	b.ops = binary.LittleEndian.AppendUint32(b.ops, uint32(len(body)))
	b.ops = append(b.ops, key...)
	b.ops = append(b.ops, body...)
	b.n++
}

// packErr is the error the call op (the Shard method the user called)
// reports for an operation that could not be packed; nil when there is
// none.
func (b *Batch) packErr(op string) error {
	if b.bad == "" {
		return nil
	}
	return newError(op, StatusInvalidArgument, b.bad)
}

// Len returns the number of operations in the batch.
func (b *Batch) Len() int { return b.n }

// Size returns the packed size of the batch in bytes.
func (b *Batch) Size() int { return len(b.ops) }

// Reset removes every operation (and a pending packing error), keeping the
// memory for reuse.
func (b *Batch) Reset() {
	b.ops = b.ops[:0]
	b.n = 0
	b.bad = ""
}
