package keel

/*
#include <stdlib.h>
#include "keel.h"
*/
import "C"

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"time"
	"unsafe"
)

// MaxKeySize is the longest key a shard accepts, in bytes
// (KEEL_SHARD_MAX_KEY_SIZE); longer keys fail with ErrInvalidArgument.
const MaxKeySize = C.KEEL_SHARD_MAX_KEY_SIZE

// Kind says what a key holds (KEEL_KIND_*).
type Kind uint32

const (
	// KindNone: the key does not exist.
	KindNone Kind = C.KEEL_KIND_NONE
	// KindValue: the key holds a value (written by Put).
	KindValue Kind = C.KEEL_KIND_VALUE
	// KindPosting: the key holds a posting list (written by Append).
	KindPosting Kind = C.KEEL_KIND_POSTING
)

// String returns "none", "value", "posting" or "Kind(n)".
func (k Kind) String() string {
	switch k {
	case KindNone:
		return "none"
	case KindValue:
		return "value"
	case KindPosting:
		return "posting"
	}
	return fmt.Sprintf("Kind(%d)", uint32(k))
}

// Value is what a key holds, as read by Get, MultiGet or an Iterator.
// Bytes is owned by the caller (a copy of the library's data).
type Value struct {
	// Kind is KindValue or KindPosting.
	Kind Kind
	// Version is the version (WAL sequence number) of the operation that
	// last wrote the key.
	Version uint64
	// Bytes is the value itself, or for KindPosting the encoded list:
	// [u32 little-endian length][item bytes] per item, in append order
	// (decode it with Items). Empty, never nil.
	Bytes []byte
}

// Items decodes a posting list into its items, in append order. The items
// share memory with v.Bytes (each has its capacity cut to its length, so
// appending to one never overwrites the next). A Value of another kind
// gives an error matching ErrWrongKind; a malformed encoding one matching
// ErrCorruption.
func (v Value) Items() ([][]byte, error) {
	if v.Kind != KindPosting {
		return nil, newError("Items", StatusWrongKind, fmt.Sprintf("the key holds a %v, not a posting list", v.Kind))
	}
	return decodePosting(v.Bytes)
}

// decodePosting walks the encoding documented on KEEL_KIND_POSTING (the
// Go twin of keel_posting_next: no cgo call per item).
func decodePosting(b []byte) ([][]byte, error) {
	items := [][]byte{}
	at := 0
	for at < len(b) {
		if len(b)-at < 4 {
			return nil, newError("Items", StatusCorruption, fmt.Sprintf("posting list cut short in the length of item %d at byte %d", len(items), at))
		}
		n := uint64(binary.LittleEndian.Uint32(b[at:]))
		at += 4
		if n > uint64(len(b)-at) {
			return nil, newError("Items", StatusCorruption, fmt.Sprintf("posting item %d of %d bytes at byte %d overruns the %d-byte list", len(items), n, at, len(b)))
		}
		end := at + int(n)
		items = append(items, b[at:end:end])
		at = end
	}
	return items, nil
}

// Shard is one open shard of an Engine: keys → values and posting lists.
// All methods are safe for concurrent use. Every write gets a version,
// the sequence number of its record in the shard's WAL.
//
// Close it when done; Engine.Close closes the shards still open. Calls on
// a closed Shard return an error matching ErrClosed.
type Shard struct {
	// calls holds the handle (calls.go): a read that misses the lease
	// runs the host's ReadIndex inside its call, and a ReadIndex that
	// waits for the host's apply loop (Apply on this shard) must not find
	// that Apply queued behind a pending Close.
	// A second Close (Engine.Close's) returns only once the first has
	// freed the handle.
	calls *calls[*C.keel_shard_t]
	id    uint32
	// set is the engine's set of open shards (not the Engine itself, see
	// Engine.shards).
	set *shardSet
	// readIndex are the threads running this shard's ReadIndex now: a
	// Close there (of the shard or its engine) would wait for the read
	// that runs it.
	readIndex *threadSet
}

// ID returns the shard's id.
func (s *Shard) ID() uint32 {
	if s == nil {
		return 0
	}
	return s.id
}

func (s *Shard) acquire(op string) (*C.keel_shard_t, error) {
	if s == nil {
		return nil, newError(op, StatusInvalidArgument, "nil *Shard")
	}
	h := s.calls.enter()
	if h == nil {
		return nil, newError(op, StatusClosed, "the shard is closed")
	}
	return h, nil
}

func (s *Shard) release() {
	s.calls.leave()
	runtime.KeepAlive(s)
}

// goBytes copies n bytes at p into a new Go slice (empty, not nil, when n
// is 0).
func goBytes(p *C.uint8_t, n C.size_t) []byte {
	out := make([]byte, int(n))
	if n > 0 {
		copy(out, unsafe.Slice((*byte)(unsafe.Pointer(p)), int(n)))
	}
	return out
}

// Put stores value under key, replacing a value or a posting list, and
// returns the operation's version. It returns once the write is as durable
// as the engine's Durability says. A key longer than MaxKeySize or a value
// larger than a WAL record is ErrInvalidArgument.
func (s *Shard) Put(key, value []byte) (uint64, error) {
	h, err := s.acquire("Put")
	if err != nil {
		return 0, err
	}
	defer s.release()
	var v C.uint64_t
	var cerr *C.keel_error_t
	st := C.keel_shard_put(h, bytesPtr(key), C.size_t(len(key)), bytesPtr(value), C.size_t(len(value)), &v, &cerr)
	if st != C.KEEL_STATUS_OK {
		return 0, takeError("Put", st, cerr)
	}
	return uint64(v), nil
}

// Delete makes key absent and returns the operation's version (an absent
// key still gets one).
func (s *Shard) Delete(key []byte) (uint64, error) {
	h, err := s.acquire("Delete")
	if err != nil {
		return 0, err
	}
	defer s.release()
	var v C.uint64_t
	var cerr *C.keel_error_t
	if st := C.keel_shard_delete(h, bytesPtr(key), C.size_t(len(key)), &v, &cerr); st != C.KEEL_STATUS_OK {
		return 0, takeError("Delete", st, cerr)
	}
	return uint64(v), nil
}

// Append adds item to the end of key's posting list, creating the list
// when key is absent, and returns the operation's version. When key holds
// a value it fails with an error matching ErrWrongKind and writes nothing.
func (s *Shard) Append(key, item []byte) (uint64, error) {
	h, err := s.acquire("Append")
	if err != nil {
		return 0, err
	}
	defer s.release()
	var v C.uint64_t
	var cerr *C.keel_error_t
	st := C.keel_shard_append(h, bytesPtr(key), C.size_t(len(key)), bytesPtr(item), C.size_t(len(item)), &v, &cerr)
	if st != C.KEEL_STATUS_OK {
		return 0, takeError("Append", st, cerr)
	}
	return uint64(v), nil
}

// Write applies the operations of b atomically (readers and recovery see
// all of them or none) in one call into the library. They get consecutive
// versions first..last. A failing operation fails the whole batch and
// nothing is written: an append to a key holding a value (counting the
// batch's earlier operations) is ErrWrongKind, an empty batch or a key too
// long ErrInvalidArgument. b is left as it was; Reset it to reuse it.
func (s *Shard) Write(b *Batch) (first, last uint64, err error) {
	if b == nil {
		return 0, 0, newError("Write", StatusInvalidArgument, "nil *Batch")
	}
	if err := b.packErr("Write"); err != nil {
		return 0, 0, err
	}
	h, err := s.acquire("Write")
	if err != nil {
		return 0, 0, err
	}
	defer s.release()
	var f, l C.uint64_t
	var cerr *C.keel_error_t
	// b.ops is one Go byte slice (no Go pointers inside): cgo may pass it,
	// and the library reads it only during the call.
	st := C.keel_shard_write_packed(h, bytesPtr(b.ops), C.size_t(len(b.ops)), &f, &l, &cerr)
	if st != C.KEEL_STATUS_OK {
		return 0, 0, takeError("Write", st, cerr)
	}
	return uint64(f), uint64(l), nil
}

// Get reads key. An absent key is an error matching ErrNotFound. A key
// longer than MaxKeySize is ErrInvalidArgument. Get sees only whole writes
// and batches. It reads at the shard's default level (stale unless
// LeaseOptions.DefaultLevel says otherwise), as GetWith(key, nil).
func (s *Shard) Get(key []byte) (Value, error) { return s.GetWith(key, nil) }

// GetWith is Get at the consistency of opts (nil: the shard's defaults):
// a follower fails with ErrNotLeader (Error.LeaderHint names the leader
// when known), a read-index that does not arrive or apply in time with
// ErrTimeout, a failed one with its error.
func (s *Shard) GetWith(key []byte, opts *ReadOptions) (v Value, err error) {
	err = withReadOptions(opts, func(o *C.keel_read_options_t) error {
		v, err = s.get(key, o)
		return err
	})
	return v, err
}

func (s *Shard) get(key []byte, o *C.keel_read_options_t) (Value, error) {
	h, err := s.acquire("Get")
	if err != nil {
		return Value{}, err
	}
	defer s.release()
	// buf is Go memory whose only pointer field is NULL when passed (legal
	// for cgo); the library stores a pointer to its own memory in it.
	var buf C.keel_buf_t
	var kind C.uint32_t
	var ver C.uint64_t
	var cerr *C.keel_error_t
	st := C.keel_shard_get_ex(h, o, bytesPtr(key), C.size_t(len(key)), &buf, &kind, &ver, &cerr)
	if st != C.KEEL_STATUS_OK {
		return Value{}, takeError("Get", st, cerr)
	}
	v := Value{Kind: Kind(kind), Version: uint64(ver), Bytes: goBytes(buf.ptr, buf.len)}
	C.keel_buf_free(&buf)
	return v, nil
}

// MultiGet reads keys from one consistent state of the shard, in one call
// into the library. The result has one entry per key, in order: nil for an
// absent key. A key longer than MaxKeySize fails the whole call with
// ErrInvalidArgument. At the shard's default level, as Get.
func (s *Shard) MultiGet(keys [][]byte) ([]*Value, error) { return s.MultiGetWith(keys, nil) }

// MultiGetWith is MultiGet at the consistency of opts, as GetWith: one
// lease check or read-index for all the keys.
func (s *Shard) MultiGetWith(keys [][]byte, opts *ReadOptions) (out []*Value, err error) {
	err = withReadOptions(opts, func(o *C.keel_read_options_t) error {
		out, err = s.multiGet(keys, o)
		return err
	})
	return out, err
}

func (s *Shard) multiGet(keys [][]byte, o *C.keel_read_options_t) ([]*Value, error) {
	// Keys packed into one buffer plus a lens array (cgo may not receive
	// a [][]byte: Go memory holding Go pointers).
	total := 0
	for _, k := range keys {
		total += len(k)
	}
	packed := make([]byte, 0, total)
	lens := make([]C.size_t, len(keys))
	for i, k := range keys {
		packed = append(packed, k...)
		lens[i] = C.size_t(len(k))
	}

	h, err := s.acquire("MultiGet")
	if err != nil {
		return nil, err
	}
	defer s.release()
	n := len(keys)
	if n == 0 {
		// Still a read at o's level: keel checks the options, the shard
		// and the permit (a follower answers NOT_LEADER) as for any other.
		var cerr *C.keel_error_t
		if st := C.keel_shard_multi_get_ex(h, o, nil, nil, 0, nil, nil, nil, &cerr); st != C.KEEL_STATUS_OK {
			return nil, takeError("MultiGet", st, cerr)
		}
		return []*Value{}, nil
	}
	// The keel_buf_t array is C memory, so the pointers the library writes
	// into it never sit in Go memory; kinds and versions are plain Go
	// integers.
	bufs := (*C.keel_buf_t)(C.calloc(C.size_t(n), C.size_t(unsafe.Sizeof(C.keel_buf_t{}))))
	if bufs == nil {
		return nil, newError("MultiGet", StatusResource, fmt.Sprintf("calloc of %d buffers failed", n))
	}
	defer C.free(unsafe.Pointer(bufs))
	kinds := make([]C.uint32_t, n)
	versions := make([]C.uint64_t, n)
	var cerr *C.keel_error_t
	st := C.keel_shard_multi_get_ex(h, o, bytesPtr(packed), &lens[0], C.size_t(n), bufs, &kinds[0], &versions[0], &cerr)
	// On error the library leaves nothing to free, and calloc made every
	// entry {NULL, 0}: freeing them all is harmless either way.
	defer C.keel_bufs_free(bufs, C.size_t(n))
	if st != C.KEEL_STATUS_OK {
		return nil, takeError("MultiGet", st, cerr)
	}
	out := make([]*Value, n)
	vals := make([]Value, n)
	for i, b := range unsafe.Slice(bufs, n) {
		if Kind(kinds[i]) == KindNone {
			continue
		}
		vals[i] = Value{Kind: Kind(kinds[i]), Version: uint64(versions[i]), Bytes: goBytes(b.ptr, b.len)}
		out[i] = &vals[i]
	}
	return out, nil
}

// Scan returns an Iterator over the keys in [start, end), in key order. An
// empty start is the first key; an empty (or nil) end means no upper
// bound. The iterator reads a consistent copy of the range taken now
// (memory proportional to the range). A bound longer than MaxKeySize fails
// with ErrInvalidArgument, as such a key does in Get. At the shard's
// default level, as Get.
func (s *Shard) Scan(start, end []byte) (*Iterator, error) { return s.ScanWith(start, end, nil) }

// ScanWith is Scan at the consistency of opts (checked once, when the
// scan opens), as GetWith.
func (s *Shard) ScanWith(start, end []byte, opts *ReadOptions) (it *Iterator, err error) {
	err = withReadOptions(opts, func(o *C.keel_read_options_t) error {
		it, err = s.scan(start, end, o)
		return err
	})
	return it, err
}

func (s *Shard) scan(start, end []byte, o *C.keel_read_options_t) (*Iterator, error) {
	h, err := s.acquire("Scan")
	if err != nil {
		return nil, err
	}
	defer s.release()
	var it *C.keel_iter_t
	var cerr *C.keel_error_t
	// bytesPtr(end) is NULL for an empty end: "no upper bound".
	st := C.keel_shard_scan_ex(h, o, bytesPtr(start), C.size_t(len(start)), bytesPtr(end), C.size_t(len(end)), &it, &cerr)
	if st != C.KEEL_STATUS_OK {
		return nil, takeError("Scan", st, cerr)
	}
	return newIterator(it), nil
}

// ScanPrefix returns an Iterator over every key that starts with prefix
// (all keys for an empty prefix), in key order; as Scan (a prefix longer
// than MaxKeySize fails with ErrInvalidArgument).
func (s *Shard) ScanPrefix(prefix []byte) (*Iterator, error) { return s.ScanPrefixWith(prefix, nil) }

// ScanPrefixWith is ScanPrefix at the consistency of opts, as ScanWith.
func (s *Shard) ScanPrefixWith(prefix []byte, opts *ReadOptions) (it *Iterator, err error) {
	err = withReadOptions(opts, func(o *C.keel_read_options_t) error {
		it, err = s.scanPrefix(prefix, o)
		return err
	})
	return it, err
}

func (s *Shard) scanPrefix(prefix []byte, o *C.keel_read_options_t) (*Iterator, error) {
	h, err := s.acquire("ScanPrefix")
	if err != nil {
		return nil, err
	}
	defer s.release()
	var it *C.keel_iter_t
	var cerr *C.keel_error_t
	if st := C.keel_shard_scan_prefix_ex(h, o, bytesPtr(prefix), C.size_t(len(prefix)), &it, &cerr); st != C.KEEL_STATUS_OK {
		return nil, takeError("ScanPrefix", st, cerr)
	}
	return newIterator(it), nil
}

// Flush runs a flush pass in the engine's flush pool. With wait it
// returns when the pass is done, with the persisted version; without, it
// returns at once with the version persisted so far. A failed pass (ErrIO,
// ErrNoSpace) loses nothing: the WAL still holds every write.
func (s *Shard) Flush(wait bool) (uint64, error) {
	h, err := s.acquire("Flush")
	if err != nil {
		return 0, err
	}
	defer s.release()
	var v C.uint64_t
	var cerr *C.keel_error_t
	if st := C.keel_shard_flush(h, C.bool(wait), &v, &cerr); st != C.KEEL_STATUS_OK {
		return 0, takeError("Flush", st, cerr)
	}
	return uint64(v), nil
}

// PersistedVersion returns the persisted version: every operation with a
// version <= it is in durable segment files (a host whose consensus log is
// its durability boundary may compact that log up to here).
func (s *Shard) PersistedVersion() (uint64, error) {
	h, err := s.acquire("PersistedVersion")
	if err != nil {
		return 0, err
	}
	defer s.release()
	var v C.uint64_t
	if st := C.keel_shard_persisted_version(h, &v); st != C.KEEL_STATUS_OK {
		return 0, takeError("PersistedVersion", st, nil)
	}
	return uint64(v), nil
}

// LastVersion returns the version of the last applied operation (0 for a
// shard never written).
func (s *Shard) LastVersion() (uint64, error) {
	h, err := s.acquire("LastVersion")
	if err != nil {
		return 0, err
	}
	defer s.release()
	var v C.uint64_t
	if st := C.keel_shard_last_version(h, &v); st != C.KEEL_STATUS_OK {
		return 0, takeError("LastVersion", st, nil)
	}
	return uint64(v), nil
}

// ShardStats are a shard's counters, one consistent reading
// (keel_shard_stats_t).
type ShardStats struct {
	SealedSegments   uint32 // immutable segments (tables)
	AppendableKeys   uint64 // keys in the appendable segment
	AppendableBytes  uint64 // key and value bytes in the appendable segment
	SealedBytes      uint64 // bytes of the tables' files
	LastVersion      uint64 // version of the last applied operation
	PersistedVersion uint64 // as PersistedVersion
	WALFirstVersion  uint64 // first version the shard's WAL still holds
	// UnflushedWALBytes are WAL bytes no segment file holds yet: what a
	// reopen replays, at most EngineOptions.MaxUnflushedWALBytes.
	UnflushedWALBytes uint64
	// WriteStalls counts writes that waited for the flush at that bound;
	// WriteStallTime is how long they waited in all.
	WriteStalls    uint64
	WriteStallTime time.Duration
	// ReplayedRecords and ReplayedBytes are what the shard's open replayed
	// from its WAL (each record with its 4-byte header).
	ReplayedRecords uint64
	ReplayedBytes   uint64
}

// Stats returns the shard's counters.
func (s *Shard) Stats() (ShardStats, error) {
	h, err := s.acquire("Stats")
	if err != nil {
		return ShardStats{}, err
	}
	defer s.release()
	var c C.keel_shard_stats_t
	c.struct_size = C.uint32_t(unsafe.Sizeof(c))
	if st := C.keel_shard_stats(h, &c); st != C.KEEL_STATUS_OK {
		return ShardStats{}, takeError("Stats", st, nil)
	}
	return ShardStats{
		SealedSegments:    uint32(c.sealed_segments),
		AppendableKeys:    uint64(c.appendable_keys),
		AppendableBytes:   uint64(c.appendable_bytes),
		SealedBytes:       uint64(c.sealed_bytes),
		LastVersion:       uint64(c.last_version),
		PersistedVersion:  uint64(c.persisted_version),
		WALFirstVersion:   uint64(c.wal_first_version),
		UnflushedWALBytes: uint64(c.unflushed_wal_bytes),
		WriteStalls:       uint64(c.write_stalls),
		WriteStallTime:    nsDuration(uint64(c.write_stall_nanos)),
		ReplayedRecords:   uint64(c.replayed_records),
		ReplayedBytes:     uint64(c.replayed_bytes),
	}, nil
}

// Health reports the shard's background work: nil when the last flush
// pass and the sealing and merging after it succeeded; otherwise the last
// failure (ErrIO or ErrNoSpace: retried at the next pass, the WAL keeps
// every write meanwhile; ErrPanic: the shard is poisoned). A pass that
// succeeds clears a failed pass's status before a waiting Flush returns; a
// failed seal or merge stays until one succeeds.
func (s *Shard) Health() error {
	h, err := s.acquire("Health")
	if err != nil {
		return err
	}
	defer s.release()
	var cerr *C.keel_error_t
	if st := C.keel_shard_health(h, &cerr); st != C.KEEL_STATUS_OK {
		return takeError("Health", st, cerr)
	}
	return nil
}

// SalvageReport returns what the shard's open found, one finding per line
// (empty when nothing): files moved aside because the shard's manifest
// does not list them and, after a salvage open (EngineOptions.Salvage),
// the segment files and versions lost, and the copies of its writes the
// engine's commit log lost.
func (s *Shard) SalvageReport() (string, error) {
	h, err := s.acquire("SalvageReport")
	if err != nil {
		return "", err
	}
	defer s.release()
	var buf C.keel_buf_t
	var cerr *C.keel_error_t
	if st := C.keel_shard_salvage_report(h, &buf, &cerr); st != C.KEEL_STATUS_OK {
		return "", takeError("SalvageReport", st, cerr)
	}
	text := string(goBytes(buf.ptr, buf.len))
	C.keel_buf_free(&buf)
	return text, nil
}

// SetKeepFrom keeps the shard's WAL records with version >= version even
// after they are persisted (for a reader that still needs them, e.g. a
// shard transfer); KeepNone releases the hold. A version already gone is
// ErrTruncated.
func (s *Shard) SetKeepFrom(version uint64) error {
	h, err := s.acquire("SetKeepFrom")
	if err != nil {
		return err
	}
	defer s.release()
	var cerr *C.keel_error_t
	if st := C.keel_shard_set_keep_from(h, C.uint64_t(version), &cerr); st != C.KEEL_STATUS_OK {
		return takeError("SetKeepFrom", st, cerr)
	}
	return nil
}

// Close runs a final flush pass, takes the shard out of the flush pool, closes
// its WAL and frees the handle; it waits for calls in flight on other
// goroutines. The handle is freed even when the flush fails (that error is
// returned; the WAL still holds everything). An error matching ErrResource
// (out of descriptors or memory) leaves the close unfinished, and the engine
// finishes it before it next opens or drops that shard, and when it closes:
// retry those, not Close. A second Close, or a Close
// after Engine.Close, returns an error matching ErrClosed once the first
// has returned (while a ReadIndex runs: at once). Called from this
// shard's own ReadIndex before any close began, it returns an error
// matching ErrBusy and leaves the shard open: the close would wait for the
// read that runs it. Open Iterators stay valid but their Next reports
// ErrClosed.
func (s *Shard) Close() error {
	if s == nil {
		return newError("Close", StatusInvalidArgument, "nil *Shard")
	}
	return s.close("Close")
}

func (s *Shard) close(op string) error {
	if s.calls.open() && s.readIndex.has() {
		// The close would wait for the read that runs this ReadIndex (and
		// keel's close for this ReadIndex): never returning. Once another
		// close has begun, the one below answers at once.
		return newError(op, StatusBusy, "the shard cannot be closed from its own ReadIndex")
	}
	h, done := s.calls.close(nil, !readIndexThreads.running())
	defer done()
	if h == nil {
		return newError(op, StatusClosed, "the shard is already closed")
	}
	s.set.remove(s)
	var cerr *C.keel_error_t
	if st := C.keel_shard_close(h, &cerr); st != C.KEEL_STATUS_OK {
		return takeError(op, st, cerr)
	}
	return nil
}
