package keel

/*
#include <stdlib.h>
#include "keel.h"
*/
import "C"

import (
	"math"
	"runtime"
	"sync"
	"time"
	"unsafe"
)

// NoBackgroundFlush is the EngineOptions.FlushInterval that turns the
// periodic background flush off: shards then flush only on Shard.Flush,
// when the appendable segment is sealed, and on close. (The zero value
// means the library default, 5 s.)
const NoBackgroundFlush time.Duration = -1

// EngineOptions are the options of OpenEngine, applied to every shard the
// engine opens. Every zero field means the library default (filled by
// keel_engine_options_init_sized), so a nil *EngineOptions and &EngineOptions{}
// are the same. Values out of range make OpenEngine fail with
// ErrInvalidArgument.
type EngineOptions struct {
	// Durability of every shard's WAL: when a write returns. Default
	// DurabilitySync.
	Durability Durability
	// SyncInterval of DurabilityPeriodic, 1 ms to 60 s (rounded up to a
	// whole millisecond); default 100 ms. Ignored by the other modes.
	SyncInterval time.Duration
	// WALSegmentSize is the largest size of a WAL segment file in bytes,
	// 64 KiB to 4 GiB; default 64 MiB (segments start at 64 KiB and double
	// per rotation up to it). A value or posting item must fit one WAL
	// record (16 MiB by default, less for small segments).
	WALSegmentSize uint64
	// FlushInterval is the period of the background flush (rounded up to
	// a whole millisecond); default 5 s. NoBackgroundFlush (any negative
	// value) flushes only on Shard.Flush, when sealing and on close.
	FlushInterval time.Duration
	// SealBytes: the appendable segment is sealed into an immutable one
	// past this many bytes of keys and values; at least 4096, default
	// 32 MiB.
	SealBytes uint64
	// MaxSealedSegments: more immutable segments than this are merged in
	// the background, smallest first; default 8.
	MaxSealedSegments uint32
	// Salvage opens shards whose segment files are missing or damaged
	// with what is left, instead of failing with ErrCorruption;
	// Shard.SalvageReport says what is lost. It also rebuilds a lost
	// shard list, lists again a shard directory the list lacks, and
	// opens a damaged commit log (the copies from the damage on are
	// lost, every listed shard's report says so, and its versions skip
	// past what they could have held), or makes anew one whose folder is
	// missing or empty though the engine had one (all its copies lost,
	// reported the same way). Never the default.
	Salvage bool
	// FlushThreads is the number of worker threads of the engine's flush
	// pool, which runs the background flushes, seals and merges of all
	// its shards (1 to 256); 0 lets the library pick (twice the cores, 2
	// to 8).
	FlushThreads uint32
	// MaxUnflushedWALBytes is the most bytes of WAL a shard holds that its
	// segment files do not (what a reopen replays, so it bounds restart
	// time): past half of it the flush is started, and a write that would
	// cross it waits for the flush (1 MiB to 1 TiB); 0 means 64 MiB.
	MaxUnflushedWALBytes uint64
	// WriteStallTimeout is how long such a write waits before it fails
	// with ErrTimeout (rounded up to a whole millisecond, at most an
	// hour); 0 means 5 s.
	WriteStallTimeout time.Duration
	// MaxOpenFiles bounds the files the engine keeps open for all its
	// shards: past it, its descriptor cache closes the least recently
	// used idle file and opens it again when next used. 0 is half the
	// process's soft RLIMIT_NOFILE; otherwise at least 16.
	MaxOpenFiles uint64
	// DisableCommitLog turns off the commit log: in DurabilitySync the
	// engine makes its shards' writes durable through one log they all
	// share (one fdatasync for the writes of every shard writing at the
	// same time); with it off, each shard syncs its own WAL.
	DisableCommitLog bool
}

// toC starts from the library defaults and overrides the non-zero fields.
func (o *EngineOptions) toC() (C.keel_engine_options_t, error) {
	var c C.keel_engine_options_t
	C.keel_engine_options_init_sized(&c, C.size_t(unsafe.Sizeof(c)))
	if o == nil {
		return c, nil
	}
	c.durability = C.uint32_t(o.Durability)
	if o.SyncInterval != 0 {
		ms, err := millis("OpenEngine", "SyncInterval", o.SyncInterval, math.MaxUint32)
		if err != nil {
			return c, err
		}
		c.sync_interval_ms = C.uint32_t(ms)
	}
	if o.WALSegmentSize != 0 {
		c.wal_segment_size = C.uint64_t(o.WALSegmentSize)
	}
	switch {
	case o.FlushInterval < 0:
		c.flush_interval_ms = 0
	case o.FlushInterval > 0:
		ms, _ := millis("OpenEngine", "FlushInterval", o.FlushInterval, math.MaxUint64) // not negative here
		c.flush_interval_ms = C.uint64_t(ms)
	}
	if o.SealBytes != 0 {
		c.seal_bytes = C.uint64_t(o.SealBytes)
	}
	if o.MaxSealedSegments != 0 {
		c.max_sealed_segments = C.uint32_t(o.MaxSealedSegments)
	}
	if o.Salvage {
		c.salvage = 1
	}
	c.flush_threads = C.uint64_t(o.FlushThreads)
	c.max_unflushed_wal_bytes = C.uint64_t(o.MaxUnflushedWALBytes)
	if o.WriteStallTimeout != 0 {
		ms, err := millis("OpenEngine", "WriteStallTimeout", o.WriteStallTimeout, math.MaxUint64)
		if err != nil {
			return c, err
		}
		c.write_stall_timeout_ms = C.uint64_t(ms)
	}
	c.max_open_files = C.uint64_t(o.MaxOpenFiles)
	if o.DisableCommitLog {
		c.disable_commit_log = 1
	}
	return c, nil
}

// Engine is an open data directory hosting shards by uint32 id. All
// methods are safe for concurrent use. Only one Engine (in any process)
// may have a directory open at a time.
//
// The Engine owns the shards opened through it: Close closes every Shard
// still open, after which their methods return errors matching ErrClosed.
type Engine struct {
	// calls counts every call into C on the engine handle; Close, which
	// must not race with them, waits for those in flight. Not an RWMutex
	// held through Close: once Close begins, new calls fail at once with
	// ErrClosed, so a host callback running inside a call Close waits for
	// (a shard read's ReadIndex, whose apply loop may use the engine)
	// cannot wait for Close in turn.
	calls *calls[*C.keel_engine_t]
	dir   string
	// shards is shared with the Shards (for their Close to deregister),
	// which never point back at the Engine: the Engine's finalizer stays
	// out of any reference cycle.
	shards *shardSet
}

// shardSet is the set of Shards of an Engine that are still open.
type shardSet struct {
	mu   sync.Mutex
	open map[*Shard]struct{}
}

func (s *shardSet) add(sh *Shard) {
	s.mu.Lock()
	s.open[sh] = struct{}{}
	s.mu.Unlock()
}

func (s *shardSet) remove(sh *Shard) {
	s.mu.Lock()
	delete(s.open, sh)
	s.mu.Unlock()
}

// readIndexHere tells whether the calling goroutine runs the ReadIndex of
// one of the shards.
func (s *shardSet) readIndexHere() bool {
	for _, sh := range s.list() {
		if sh.readIndex.has() {
			return true
		}
	}
	return false
}

func (s *shardSet) list() []*Shard {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Shard, 0, len(s.open))
	for sh := range s.open {
		out = append(out, sh)
	}
	return out
}

// OpenEngine opens (creating if needed) the data directory dir. opts may
// be nil for the defaults. A second OpenEngine of the same directory fails
// with ErrBusy until the first Engine is closed.
func OpenEngine(dir string, opts *EngineOptions) (*Engine, error) {
	if abiErr != nil {
		return nil, abiErr
	}
	copts, err := opts.toC()
	if err != nil {
		return nil, err
	}
	cdir, err := cPath("OpenEngine", dir)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(cdir))
	var h *C.keel_engine_t
	var cerr *C.keel_error_t
	if st := C.keel_engine_open(cdir, &copts, &h, &cerr); st != C.KEEL_STATUS_OK {
		return nil, takeError("OpenEngine", st, cerr)
	}
	e := &Engine{calls: newCalls(h), dir: dir, shards: &shardSet{open: make(map[*Shard]struct{})}}
	runtime.SetFinalizer(e, (*Engine).reportLeak)
	return e, nil
}

// reportLeak runs on the finalizer goroutine and only logs (see
// WAL.reportLeak): the shards still open leak with the engine.
func (e *Engine) reportLeak() {
	leakf("keel: Engine on %q was garbage collected without Close; its handle, directory lock and %d open shard(s) leak",
		e.dir, len(e.shards.list()))
}

func (e *Engine) acquire(op string) (*C.keel_engine_t, error) {
	if e == nil {
		return nil, newError(op, StatusInvalidArgument, "nil *Engine")
	}
	h := e.calls.enter()
	if h == nil {
		return nil, newError(op, StatusClosed, "the engine is closed")
	}
	return h, nil
}

func (e *Engine) release() {
	e.calls.leave()
	runtime.KeepAlive(e)
}

// Dir returns the directory the engine was opened on.
func (e *Engine) Dir() string {
	if e == nil {
		return ""
	}
	return e.dir
}

// OpenShard opens shard id, recovering its state (segments loaded, WAL
// replayed). With create false a missing shard is ErrNotFound. A shard is
// open at most once at a time: a second OpenShard of the same id fails
// with ErrBusy until the first Shard is closed.
func (e *Engine) OpenShard(id uint32, create bool) (*Shard, error) {
	h, err := e.acquire("OpenShard")
	if err != nil {
		return nil, err
	}
	defer e.release()
	var sh *C.keel_shard_t
	var cerr *C.keel_error_t
	if st := C.keel_engine_shard_open(h, C.uint32_t(id), C.bool(create), &sh, &cerr); st != C.KEEL_STATUS_OK {
		return nil, takeError("OpenShard", st, cerr)
	}
	s := &Shard{calls: newCalls(sh), id: id, set: e.shards, readIndex: newThreadSet()}
	// No finalizer: the engine's set keeps s reachable until it is closed,
	// by Shard.Close or Engine.Close.
	e.shards.add(s)
	return s, nil
}

// DropShard deletes shard id and all its data, atomically (a crash leaves
// the whole shard or none of it). ErrBusy while the shard is open,
// ErrNotFound when it does not exist.
func (e *Engine) DropShard(id uint32) error {
	h, err := e.acquire("DropShard")
	if err != nil {
		return err
	}
	defer e.release()
	var cerr *C.keel_error_t
	if st := C.keel_engine_shard_drop(h, C.uint32_t(id), &cerr); st != C.KEEL_STATUS_OK {
		return takeError("DropShard", st, cerr)
	}
	return nil
}

// ListShards returns the ids of every shard in the directory, open or not,
// in ascending order.
func (e *Engine) ListShards() ([]uint32, error) {
	h, err := e.acquire("ListShards")
	if err != nil {
		return nil, err
	}
	defer e.release()
	// ids is Go memory without pointers; the library writes nothing when
	// it does not fit and says how many there are, which may grow again
	// before the next call (a shard created concurrently): loop.
	var ids []C.uint32_t
	for {
		var ptr *C.uint32_t
		if len(ids) > 0 {
			ptr = &ids[0]
		}
		var n C.size_t
		var cerr *C.keel_error_t
		st := C.keel_engine_shard_list(h, ptr, C.size_t(len(ids)), &n, &cerr)
		switch st {
		case C.KEEL_STATUS_OK:
			out := make([]uint32, int(n))
			for i := range out {
				out[i] = uint32(ids[i])
			}
			return out, nil
		case C.KEEL_STATUS_BUFFER_TOO_SMALL:
			C.keel_error_free(cerr)
			ids = make([]C.uint32_t, int(n))
		default:
			return nil, takeError("ListShards", st, cerr)
		}
	}
}

// EngineStats are the resources an engine holds now (keel_engine_stats_t;
// docs/STORAGE.md, "Resource model").
type EngineStats struct {
	OpenShards      uint32        // shards open now
	Threads         uint64        // flush and WAL workers; independent of the shard count
	OpenFiles       uint64        // descriptors open on files below the engine's directory
	FlushQueueDepth uint64        // shards waiting for a flush worker
	WALQueueDepth   uint64        // WAL segment preparations and periodic syncs queued
	Stalled         time.Duration // time writers waited on the engine's shared workers
	// WriteStalls counts writes of all shards that waited for a flush at
	// MaxUnflushedWALBytes (those that then failed with ErrTimeout
	// included); WriteStallTime is how long they waited in all.
	WriteStalls    uint64
	WriteStallTime time.Duration
	// The descriptor cache: its bound in force, and the shard file
	// operations that found their file open (hits) or opened it again
	// (misses), and the idle files it closed to stay within the bound.
	MaxOpenFiles       uint64
	FileCacheHits      uint64
	FileCacheMisses    uint64
	FileCacheEvictions uint64
	// The commit log (all zero without one): shard WAL frames it made
	// durable (one per write group), its checkpoints and the shard WAL syncs they made, and
	// the WAL frames the engine's open gave back after a power loss.
	CommitLogCommits         uint64
	CommitLogCheckpoints     uint64
	CommitLogCheckpointSyncs uint64
	CommitLogRestoredFrames  uint64
}

// Stats returns the resources the engine holds now.
func (e *Engine) Stats() (EngineStats, error) {
	h, err := e.acquire("Stats")
	if err != nil {
		return EngineStats{}, err
	}
	defer e.release()
	var c C.keel_engine_stats_t
	c.struct_size = C.uint32_t(unsafe.Sizeof(c))
	if st := C.keel_engine_stats(h, &c); st != C.KEEL_STATUS_OK {
		return EngineStats{}, takeError("Stats", st, nil)
	}
	return EngineStats{
		OpenShards:      uint32(c.open_shards),
		Threads:         uint64(c.threads),
		OpenFiles:       uint64(c.open_files),
		FlushQueueDepth: uint64(c.flush_queue_depth),
		WALQueueDepth:   uint64(c.wal_queue_depth),
		Stalled:         nsDuration(uint64(c.stall_nanos)),
		WriteStalls:     uint64(c.write_stalls),
		WriteStallTime:  nsDuration(uint64(c.write_stall_nanos)),

		MaxOpenFiles:       uint64(c.max_open_files),
		FileCacheHits:      uint64(c.file_cache_hits),
		FileCacheMisses:    uint64(c.file_cache_misses),
		FileCacheEvictions: uint64(c.file_cache_evictions),

		CommitLogCommits:         uint64(c.commit_log_commits),
		CommitLogCheckpoints:     uint64(c.commit_log_checkpoints),
		CommitLogCheckpointSyncs: uint64(c.commit_log_checkpoint_syncs),
		CommitLogRestoredFrames:  uint64(c.commit_log_restored_frames),
	}, nil
}

// Close closes every Shard of this engine still open (each runs a final
// flush), then releases the directory and frees the handle; it waits for
// calls in flight on the engine and on those shards. Everything is
// released even when a close fails; the first error is returned. A second
// Close returns an error matching ErrClosed once the first has returned
// (while a ReadIndex runs: at once). Called from the ReadIndex of one of
// its shards before any close began, it returns an error matching ErrBusy
// and leaves the engine open: closing that shard would wait for the read
// that runs it. Iterators stay valid but their Next reports ErrClosed.
func (e *Engine) Close() error {
	if e == nil {
		return newError("Close", StatusInvalidArgument, "nil *Engine")
	}
	if e.calls.open() && e.shards.readIndexHere() {
		// As Shard.Close from its own ReadIndex, checked before the engine
		// is marked closing so that it stays open.
		return newError("Close", StatusBusy, "the engine cannot be closed from the ReadIndex of one of its shards")
	}
	// New engine calls fail from here; those in flight (an OpenShard
	// included, so its shard is listed below) end first.
	// From a ReadIndex, an Engine.Close running elsewhere may be waiting
	// for the read that runs it: answer at once instead.
	h, done := e.calls.close(nil, !readIndexThreads.running())
	defer done()
	if h == nil {
		return newError("Close", StatusClosed, "the engine is already closed")
	}
	runtime.SetFinalizer(e, nil)
	var first error
	// Shards first, through their own handles, so that each Go *Shard is
	// marked closed (its later calls fail in Go) and its handle freed.
	for _, s := range e.shards.list() {
		if err := s.close("Close"); err != nil && first == nil && !isClosedErr(err) {
			first = err
		}
	}
	var cerr *C.keel_error_t
	if st := C.keel_engine_close(h, &cerr); st != C.KEEL_STATUS_OK {
		if err := takeError("Close", st, cerr); first == nil {
			first = err
		}
	}
	return first
}

// isClosedErr tells a Go-side "already closed" apart from real failures.
func isClosedErr(err error) bool {
	ke, ok := err.(*Error)
	return ok && ke.Code == StatusClosed
}
