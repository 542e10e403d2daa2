package keel

/*
#include <stdlib.h>
#include "keel.h"
*/
import "C"

import (
	"fmt"
	"log"
	"math"
	"runtime"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// Durability says when an append returns (keel_wal_options_t.durability).
type Durability uint32

const (
	// DurabilitySync (the zero value and library default): Append returns
	// once the record is on stable storage; concurrent appends share one
	// fdatasync (group commit).
	DurabilitySync Durability = C.KEEL_DURABILITY_SYNC
	// DurabilityPeriodic: a background worker syncs at most SyncInterval
	// after a write.
	DurabilityPeriodic Durability = C.KEEL_DURABILITY_PERIODIC
	// DurabilityNone: keel never syncs on its own; WAL.Sync still does.
	DurabilityNone Durability = C.KEEL_DURABILITY_NONE
)

// RecoveryMode says what Open accepts as damage in the log.
type RecoveryMode uint32

const (
	// RecoveryTolerateTail (zero value, library default): a torn tail (the
	// unsynced end a crash leaves) is cut off; damage to records that were
	// durable fails with ErrCorruption.
	RecoveryTolerateTail RecoveryMode = C.KEEL_RECOVERY_TOLERATE_TAIL
	// RecoveryAbsolute: any damage, a torn tail included, fails Open.
	RecoveryAbsolute RecoveryMode = C.KEEL_RECOVERY_ABSOLUTE
	// RecoveryPointInTime: keep the prefix before the first damage unless
	// a later valid frame proves the damaged record was durable
	// (then ErrCorruption).
	RecoveryPointInTime RecoveryMode = C.KEEL_RECOVERY_POINT_IN_TIME
	// RecoverySalvage: explicitly lossy; damaged and later segments are
	// moved to <dir>/salvaged-<timestamp>/.
	RecoverySalvage RecoveryMode = C.KEEL_RECOVERY_SALVAGE
)

// ReadUpto says how far a Reader reads.
type ReadUpto uint32

const (
	// ReadDurable stops at the durable watermark (DurableSeq).
	ReadDurable ReadUpto = C.KEEL_WAL_READ_DURABLE
	// ReadAppended reads every appended record, synced or not.
	ReadAppended ReadUpto = C.KEEL_WAL_READ_APPENDED
)

// KeepNone is the SetKeepFrom value that holds nothing back.
const KeepNone uint64 = C.KEEL_WAL_KEEP_NONE

// Options of Open. Every zero field means the library default (filled by
// keel_wal_options_init_sized), so a nil *Options and &Options{} are the same.
// Values out of range make Open fail with ErrInvalidArgument.
type Options struct {
	Durability Durability
	// SyncInterval of DurabilityPeriodic, 1 ms to 60 s (rounded up to a
	// whole millisecond); default 100 ms. Ignored by the other modes.
	SyncInterval time.Duration
	RecoveryMode RecoveryMode
	// SegmentSize is the largest segment file in bytes, 64 KiB to 4 GiB;
	// default 64 MiB. Segments start at 64 KiB and double per rotation up
	// to it.
	SegmentSize uint64
	// MaxRecordSize is the largest record or batch payload one append may
	// carry, at most SegmentSize-104; default 16 MiB (less for small
	// segments).
	MaxRecordSize uint64
	// AllowForeignFiles opens a non-empty directory that holds no keel WAL
	// file; by default Open refuses it with ErrInvalidArgument, so a
	// mistyped path never gets a LOCK and a segment written into it.
	AllowForeignFiles bool
}

// toC starts from the library defaults and overrides the non-zero fields,
// so a default that changes in the library needs no change here.
func (o *Options) toC() (C.keel_wal_options_t, error) {
	var c C.keel_wal_options_t
	C.keel_wal_options_init_sized(&c, C.size_t(C.sizeof_keel_wal_options_t))
	if o == nil {
		return c, nil
	}
	c.durability = C.uint32_t(o.Durability)
	c.recovery_mode = C.uint32_t(o.RecoveryMode)
	if o.SyncInterval != 0 {
		ms, err := millis("Open", "SyncInterval", o.SyncInterval, math.MaxUint32)
		if err != nil {
			return c, err
		}
		c.sync_interval_ms = C.uint32_t(ms)
	}
	if o.SegmentSize != 0 {
		c.segment_size = C.uint64_t(o.SegmentSize)
	}
	if o.MaxRecordSize != 0 {
		c.max_record_size = C.uint64_t(o.MaxRecordSize)
	}
	if o.AllowForeignFiles {
		c.allow_foreign_files = 1
	}
	return c, nil
}

// WAL is an open write-ahead log. All methods are safe for concurrent use.
type WAL struct {
	// mu is held shared by every call into C and exclusively by Close:
	// keel_wal_close must not race with other calls on the handle, and a
	// call after Close must see h == nil instead of a freed pointer.
	mu  sync.RWMutex
	h   *C.keel_wal_t
	dir string
}

// Version returns the version of the linked library, e.g. "0.1.0".
func Version() string { return C.GoString(C.keel_version()) }

// abiErr is the result of comparing the header this package was compiled
// against with the library it is linked to; Open refuses to run on a
// mismatch (a struct layout or a status code may have changed).
var abiErr = checkABI(uint32(C.KEEL_ABI_VERSION), uint32(C.keel_abi_version()))

func checkABI(header, library uint32) error {
	if header != library {
		return newError("init", StatusUnsupported, fmt.Sprintf(
			"keel.h has ABI version %d but the linked libkeel has %d; rebuild against matching header and library",
			header, library))
	}
	return nil
}

// cPath converts a directory path for C; the caller frees it. C.CString
// would silently cut the path at a NUL byte and open a different directory.
func cPath(op, dir string) (*C.char, error) {
	if strings.IndexByte(dir, 0) >= 0 {
		return nil, newError(op, StatusInvalidArgument, fmt.Sprintf("directory %q contains a NUL byte", dir))
	}
	return C.CString(dir), nil
}

// Open opens (creating if needed) the WAL in directory dir and recovers it.
// opts may be nil for the defaults. A directory can be open only once at a
// time: a second Open fails with ErrBusy until the first is closed.
func Open(dir string, opts *Options) (*WAL, error) {
	if abiErr != nil {
		return nil, abiErr
	}
	copts, err := opts.toC()
	if err != nil {
		return nil, err
	}
	cdir, err := cPath("Open", dir)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(cdir))
	var h *C.keel_wal_t
	var cerr *C.keel_error_t
	if st := C.keel_wal_open(cdir, &copts, &h, &cerr); st != C.KEEL_STATUS_OK {
		return nil, takeError("Open", st, cerr)
	}
	w := &WAL{h: h, dir: dir}
	runtime.SetFinalizer(w, (*WAL).reportLeak)
	return w, nil
}

// leakLog is where finalizers report a handle that was never closed; a
// variable so that the test can capture it, behind a mutex because
// finalizers run on their own goroutine.
var leakLog = struct {
	sync.Mutex
	f func(format string, args ...any)
}{f: log.Printf}

func leakf(format string, args ...any) {
	leakLog.Lock()
	f := leakLog.f
	leakLog.Unlock()
	f(format, args...)
}

// setLeakf replaces the leak reporter and returns the previous one.
func setLeakf(f func(format string, args ...any)) func(format string, args ...any) {
	leakLog.Lock()
	defer leakLog.Unlock()
	old := leakLog.f
	leakLog.f = f
	return old
}

// reportLeak runs on the finalizer goroutine. It only logs: Close is the
// contract, closing here would hide the missing Close and run a blocking
// fsync on the runtime's single finalizer goroutine.
func (w *WAL) reportLeak() {
	leakf("keel: WAL on %q was garbage collected without Close; its handle and directory lock leak", w.dir)
}

// acquire takes the shared lock and returns the live handle, or an error
// (and no lock held) when w is nil or closed.
func (w *WAL) acquire(op string) (*C.keel_wal_t, error) {
	if w == nil {
		return nil, newError(op, StatusInvalidArgument, "nil *WAL")
	}
	w.mu.RLock()
	if w.h == nil {
		w.mu.RUnlock()
		return nil, newError(op, StatusClosed, "the WAL is closed")
	}
	return w.h, nil
}

func (w *WAL) release() {
	w.mu.RUnlock()
	// The C handle is not Go memory: keep w (and its finalizer) from being
	// considered dead while C still works on the handle.
	runtime.KeepAlive(w)
}

// bytesPtr returns a C view of b; nil for an empty slice (the C API
// accepts NULL with length 0). b holds no Go pointers, so cgo may pass it.
func bytesPtr(b []byte) *C.uint8_t {
	if len(b) == 0 {
		return nil
	}
	return (*C.uint8_t)(unsafe.Pointer(&b[0]))
}

// Append writes one record (nil or empty is a valid, empty record) and
// returns its sequence number. In DurabilitySync mode it returns once the
// record is on stable storage.
func (w *WAL) Append(data []byte) (uint64, error) {
	h, err := w.acquire("Append")
	if err != nil {
		return 0, err
	}
	defer w.release()
	var seq C.uint64_t
	var cerr *C.keel_error_t
	st := C.keel_wal_append(h, bytesPtr(data), C.size_t(len(data)), &seq, &cerr)
	if st != C.KEEL_STATUS_OK {
		return 0, takeError("Append", st, cerr)
	}
	return uint64(seq), nil
}

// AppendBatch writes records atomically (after a crash all or none are
// recovered) with consecutive sequence numbers and returns the first. The
// total payload counts against MaxRecordSize; an empty batch is
// ErrInvalidArgument.
func (w *WAL) AppendBatch(records [][]byte) (uint64, error) {
	// Pack into one buffer plus a lens array: cgo may not receive Go
	// memory that holds Go pointers (a [][]byte), and one crossing for the
	// whole batch is the point of batching.
	total := 0
	for _, r := range records {
		total += len(r)
	}
	data := make([]byte, 0, total)
	lens := make([]C.size_t, len(records))
	for i, r := range records {
		data = append(data, r...)
		lens[i] = C.size_t(len(r))
	}
	var lensPtr *C.size_t
	if len(lens) > 0 {
		lensPtr = &lens[0]
	}

	h, err := w.acquire("AppendBatch")
	if err != nil {
		return 0, err
	}
	defer w.release()
	var first C.uint64_t
	var cerr *C.keel_error_t
	st := C.keel_wal_append_batch(h, bytesPtr(data), lensPtr, C.size_t(len(records)), &first, &cerr)
	if st != C.KEEL_STATUS_OK {
		return 0, takeError("AppendBatch", st, cerr)
	}
	return uint64(first), nil
}

// Sync makes every record appended before the call durable, in any mode.
func (w *WAL) Sync() error {
	h, err := w.acquire("Sync")
	if err != nil {
		return err
	}
	defer w.release()
	var cerr *C.keel_error_t
	if st := C.keel_wal_sync(h, &cerr); st != C.KEEL_STATUS_OK {
		return takeError("Sync", st, cerr)
	}
	return nil
}

// seqGetter is the shape of keel_wal_{durable,last,first}_seq.
type seqGetter func(*C.keel_wal_t, *C.uint64_t) C.keel_status_t

func (w *WAL) getSeq(op string, get seqGetter) (uint64, error) {
	h, err := w.acquire(op)
	if err != nil {
		return 0, err
	}
	defer w.release()
	var v C.uint64_t
	if st := get(h, &v); st != C.KEEL_STATUS_OK {
		return 0, takeError(op, st, nil)
	}
	return uint64(v), nil
}

// DurableSeq returns the durable watermark: every record with a sequence
// number <= it is on stable storage (0 when none is).
func (w *WAL) DurableSeq() (uint64, error) {
	return w.getSeq("DurableSeq", func(h *C.keel_wal_t, v *C.uint64_t) C.keel_status_t {
		return C.keel_wal_durable_seq(h, v)
	})
}

// LastSeq returns the last sequence number the log has used: the last
// appended record's, or the end of a gap a recovery declared after it (0
// when the log never held a record). Sequence numbers start at 1.
func (w *WAL) LastSeq() (uint64, error) {
	return w.getSeq("LastSeq", func(h *C.keel_wal_t, v *C.uint64_t) C.keel_status_t {
		return C.keel_wal_last_seq(h, v)
	})
}

// FirstSeq returns the first retained sequence number; LastSeq+1 when no
// record is retained.
func (w *WAL) FirstSeq() (uint64, error) {
	return w.getSeq("FirstSeq", func(h *C.keel_wal_t, v *C.uint64_t) C.keel_status_t {
		return C.keel_wal_first_seq(h, v)
	})
}

// Ack declares every record <= seq persisted elsewhere (monotonic), which
// lets keel delete whole segments below min(seq, keep_from-1) that no
// reader needs. seq > LastSeq is ErrInvalidArgument.
func (w *WAL) Ack(seq uint64) error {
	h, err := w.acquire("Ack")
	if err != nil {
		return err
	}
	defer w.release()
	var cerr *C.keel_error_t
	if st := C.keel_wal_ack(h, C.uint64_t(seq), &cerr); st != C.KEEL_STATUS_OK {
		return takeError("Ack", st, cerr)
	}
	return nil
}

// SetKeepFrom holds every record >= seq back from truncation whatever Ack
// says; KeepNone releases the hold. seq below FirstSeq is ErrTruncated.
func (w *WAL) SetKeepFrom(seq uint64) error {
	h, err := w.acquire("SetKeepFrom")
	if err != nil {
		return err
	}
	defer w.release()
	var cerr *C.keel_error_t
	if st := C.keel_wal_set_keep_from(h, C.uint64_t(seq), &cerr); st != C.KEEL_STATUS_OK {
		return takeError("SetKeepFrom", st, cerr)
	}
	return nil
}

// Close syncs everything appended, stops keel's threads and frees the
// handle; it waits for calls in flight on other goroutines. The handle is
// released even when the final sync fails (that error is returned). A
// second Close returns an error matching ErrClosed. Readers stay valid but
// their Next returns ErrClosed.
func (w *WAL) Close() error {
	if w == nil {
		return newError("Close", StatusInvalidArgument, "nil *WAL")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.h == nil {
		return newError("Close", StatusClosed, "the WAL is already closed")
	}
	h := w.h
	w.h = nil
	runtime.SetFinalizer(w, nil)
	var cerr *C.keel_error_t
	if st := C.keel_wal_close(h, &cerr); st != C.KEEL_STATUS_OK {
		return takeError("Close", st, cerr)
	}
	return nil
}
