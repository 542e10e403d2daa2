package keel

/*
#include <stdint.h>
#include "keel.h"

// Defined in callback.go (//export): the Go side of the progress callback.
extern void keelGoTransferProgress(uintptr_t handle, keel_transfer_progress_t *progress);

// The C callback keel calls on the transfer's thread; user_data carries
// the runtime/cgo.Handle of the Transfer's handler as an integer.
static void keel_go_transfer_progress(void *user, const keel_transfer_progress_t *progress) {
	keelGoTransferProgress((uintptr_t)user, (keel_transfer_progress_t *)progress);
}

static void keel_go_transfer_set_progress(keel_transfer_options_t *o, uintptr_t handle) {
	o->on_progress = keel_go_transfer_progress;
	o->user_data = (void *)handle;  // deleted by Transfer.Close, after keel_transfer_free
}
*/
import "C"

import (
	"fmt"
	"math"
	"runtime"
	"runtime/cgo"
	"time"
	"unsafe"
)

// TransferMethod is how a transfer sends the shard.
type TransferMethod uint32

const (
	// TransferSnapshot sends a consistent snapshot, then the WAL after it.
	TransferSnapshot TransferMethod = C.KEEL_TRANSFER_SNAPSHOT
	// TransferWALDelta sends only the records the receiver lacks (it
	// falls back to a snapshot when they are gone or the histories differ).
	TransferWALDelta TransferMethod = C.KEEL_TRANSFER_WAL_DELTA
)

// FinishMode is how a transfer ends once the receiver caught up
// (docs/TRANSFER.md, "A transfer's life").
type FinishMode uint32

const (
	// FinishNone (TransferOptions.AutoFinish only): the host calls Finish.
	FinishNone FinishMode = C.KEEL_TRANSFER_FINISH_NONE
	// FinishCopy: the receiver gets a copy; the source stays writable.
	FinishCopy FinishMode = C.KEEL_TRANSFER_FINISH_COPY
	// FinishHandOver: the receiver owns the shard; the source's writes
	// fail with ErrMoved.
	FinishHandOver FinishMode = C.KEEL_TRANSFER_FINISH_HAND_OVER
	// FinishForward: each later write to the source reaches the receiver
	// before it returns, until Finish(FinishHandOver) or Cancel.
	FinishForward FinishMode = C.KEEL_TRANSFER_FINISH_FORWARD
)

// TransferStage is where a transfer is, in the order it goes through them.
type TransferStage uint32

const (
	StageConnecting    TransferStage = C.KEEL_TRANSFER_CONNECTING
	StageBackfill      TransferStage = C.KEEL_TRANSFER_BACKFILL
	StageCatchingUp    TransferStage = C.KEEL_TRANSFER_CATCHING_UP
	StageWaitingFinish TransferStage = C.KEEL_TRANSFER_WAITING_FINISH
	StageDraining      TransferStage = C.KEEL_TRANSFER_DRAINING
	StageForwarding    TransferStage = C.KEEL_TRANSFER_FORWARDING
	StageDone          TransferStage = C.KEEL_TRANSFER_DONE
	StageFailed        TransferStage = C.KEEL_TRANSFER_FAILED
	StageCancelled     TransferStage = C.KEEL_TRANSFER_CANCELLED
)

var stageNames = [...]string{"connecting", "backfill", "catching up", "waiting for finish", "draining", "forwarding", "done", "failed", "cancelled"}

func (s TransferStage) String() string {
	if int(s) < len(stageNames) {
		return stageNames[s]
	}
	return fmt.Sprintf("TransferStage(%d)", uint32(s))
}

// TransferProgress is a transfer's stage and counters
// (keel_transfer_progress_t).
type TransferProgress struct {
	Stage       TransferStage
	Snapshot    bool   // the shard goes (went) as a snapshot
	HandedOver  bool   // the shard was handed over
	OpsSent     uint64 // WAL records sent and acknowledged
	OpsTotal    uint64 // OpsSent plus those still to send (grows with writes)
	EntriesSent uint64 // snapshot entries sent and acknowledged
	BytesSent   uint64
	Batches     uint64
	ReceiverHad uint64 // the receiver's version at the start; 0 with none, and always for TransferSnapshot
	LastVersion uint64 // the last version the receiver acknowledged
	ReadTime    time.Duration
	SendTime    time.Duration
	FinalHold   time.Duration // how long the source's writes were held
	// MaxBatchesInMemory is the most batches the source held at once.
	MaxBatchesInMemory uint64
}

func toProgress(p *C.keel_transfer_progress_t) TransferProgress {
	us := func(v C.uint64_t) time.Duration { return usDuration(uint64(v)) }
	return TransferProgress{
		Stage:              TransferStage(p.stage),
		Snapshot:           p.snapshot != 0,
		HandedOver:         p.handed_over != 0,
		OpsSent:            uint64(p.ops_sent),
		OpsTotal:           uint64(p.ops_total),
		EntriesSent:        uint64(p.entries_sent),
		BytesSent:          uint64(p.bytes_sent),
		Batches:            uint64(p.batches),
		ReceiverHad:        uint64(p.receiver_had),
		LastVersion:        uint64(p.last_version),
		ReadTime:           us(p.read_time_us),
		SendTime:           us(p.send_time_us),
		FinalHold:          us(p.final_hold_us),
		MaxBatchesInMemory: uint64(p.max_batches_in_memory),
	}
}

// TransferOptions are the options of StartTransfer; zero fields mean the
// library defaults (a snapshot, no auto-finish, 1024 records or 1 MiB per
// batch, a 30 s ACK timeout, 6 retries of a lost step after 100 ms
// doubling up to 5 s).
type TransferOptions struct {
	Method TransferMethod
	// AutoFinish finishes with this mode as soon as the receiver caught
	// up; FinishNone: the host calls Finish.
	AutoFinish      FinishMode
	MaxBatchRecords uint32
	MaxBatchBytes   uint64
	// AckTimeout is how long the source waits for the receiver's answer
	// to one step (rounded up to a whole millisecond), at most a day.
	AckTimeout time.Duration
	// MaxRetries is how often one step the transport lost (no connection,
	// a dropped one, no ACK within AckTimeout) is sent again before the
	// transfer fails, 1 to 1000; NoRetries fails it at once.
	MaxRetries uint32
	NoRetries  bool
	// FirstBackoff is the wait before a step's first retry, doubled at each
	// retry up to MaxBackoff (whole milliseconds, rounded up; MaxBackoff
	// at most a day).
	FirstBackoff time.Duration
	MaxBackoff   time.Duration
	// Sequential reads a batch only after the one before was
	// acknowledged, instead of reading the next batch while the current
	// one is sent: the baseline a benchmark compares the pipeline with.
	Sequential bool
	// OnProgress, if not nil, runs on the transfer's own thread after
	// every acknowledged batch and at every change of stage (the last call
	// when the transfer is over). Keep it quick (the transfer waits for
	// it); it may call Status, Progress, Finish and Cancel on its Transfer
	// (Wait and Close answer ErrBusy there). A panic in it crashes the
	// program, and so does runtime.Goexit (t.FailNow, t.Fatal), which
	// cannot unwind through keel.
	OnProgress func(TransferProgress)
}

func (o *TransferOptions) toC() (C.keel_transfer_options_t, error) {
	var c C.keel_transfer_options_t
	C.keel_transfer_options_init_sized(&c, C.size_t(unsafe.Sizeof(c)))
	if o == nil {
		return c, nil
	}
	if err := setMillis32("StartTransfer", msOption{"AckTimeout", o.AckTimeout, &c.ack_timeout_ms},
		msOption{"FirstBackoff", o.FirstBackoff, &c.first_backoff_ms}, msOption{"MaxBackoff", o.MaxBackoff, &c.max_backoff_ms}); err != nil {
		return c, err
	}
	if o.MaxRetries > 1000 {
		return c, newError("StartTransfer", StatusInvalidArgument, fmt.Sprintf("MaxRetries %d is above 1000", o.MaxRetries))
	}
	if o.NoRetries && o.MaxRetries != 0 {
		return c, newError("StartTransfer", StatusInvalidArgument, fmt.Sprintf("NoRetries with MaxRetries %d", o.MaxRetries))
	}
	c.method = C.uint32_t(o.Method)
	c.auto_finish = C.uint32_t(o.AutoFinish)
	if o.MaxBatchRecords != 0 {
		c.max_batch_records = C.uint32_t(o.MaxBatchRecords)
	}
	if o.MaxBatchBytes != 0 {
		c.max_batch_bytes = C.uint64_t(o.MaxBatchBytes)
	}
	c.max_retries = C.uint32_t(o.MaxRetries)
	if o.NoRetries {
		c.max_retries = C.KEEL_TRANSFER_NO_RETRIES
	}
	if o.Sequential {
		c.sequential = C.KEEL_TRANSFER_SEQUENTIAL
	}
	return c, nil
}

// ExpectTransfer announces on n that peer fromPeer may send shard
// shardID here; a transfer of anything not announced fails with
// ErrRefused on the source. The announcement is used up once a transfer
// of it finishes.
func (n *Node) ExpectTransfer(shardID uint32, fromPeer uint64) error {
	h, err := n.acquire("ExpectTransfer")
	if err != nil {
		return err
	}
	defer n.release()
	if st := C.keel_transfer_expect(h, C.uint32_t(shardID), C.uint64_t(fromPeer)); st != C.KEEL_STATUS_OK {
		return takeError("ExpectTransfer", st, nil)
	}
	return nil
}

// Transfer is a shard transfer running on its own keel thread. All
// methods are safe for concurrent use. Close it when done: Close cancels a
// transfer that is not over (a forwarding one stops forwarding). The Node
// and the Shard must stay open until then.
type Transfer struct {
	// calls holds the handle: Close waits for the calls in flight before
	// keel_transfer_free (calls.go).
	calls *calls[*C.keel_transfer_t]
	// progress is the cgo.Handle of ev (0 and nil: no OnProgress),
	// deleted once keel_transfer_free has joined the transfer's thread.
	progress cgo.Handle
	ev       *transferEvents
}

// transferEvents is what the cgo.Handle of OnProgress holds.
type transferEvents struct {
	onProgress func(TransferProgress)
	// thread is the transfer's thread while an OnProgress call runs on
	// it, so that Wait and Close can tell they are called from OnProgress:
	// both would wait for that very thread.
	thread callbackThread
}

// inCallback tells whether the calling goroutine is the OnProgress
// callback.
func (ev *transferEvents) inCallback() bool {
	if ev == nil {
		return false
	}
	return ev.thread.current()
}

// StartTransfer starts sending shard (shard shardID of n's engine, open)
// from n to peer (a peer n connected to) on a keel thread and returns at
// once. Options out of range, a shard that is not n's engine's open shard
// shardID, and a peer of 0 or n itself are ErrInvalidArgument; ErrBusy
// when n sends MaxConcurrentTransfers already; ErrClosed for a closed
// shard or node; ErrMoved when the shard was handed over already;
// ErrResource when its thread cannot start. How the transfer goes:
// Status, Wait.
func StartTransfer(n *Node, shard *Shard, shardID uint32, peer uint64, opts *TransferOptions) (*Transfer, error) {
	copts, err := opts.toC()
	if err != nil {
		return nil, err
	}
	nh, err := n.acquire("StartTransfer")
	if err != nil {
		return nil, err
	}
	defer n.release()
	sh, err := shard.acquire("StartTransfer")
	if err != nil {
		return nil, err
	}
	defer shard.release()
	var progress cgo.Handle
	var ev *transferEvents
	if opts != nil && opts.OnProgress != nil {
		ev = &transferEvents{onProgress: opts.OnProgress}
		progress = cgo.NewHandle(ev)
		C.keel_go_transfer_set_progress(&copts, C.uintptr_t(progress))
	}
	var h *C.keel_transfer_t
	var cerr *C.keel_error_t
	if st := C.keel_transfer_start(nh, sh, C.uint32_t(shardID), C.uint64_t(peer), &copts, &h, &cerr); st != C.KEEL_STATUS_OK {
		if progress != 0 {
			progress.Delete() // no thread started that could call it
		}
		return nil, takeError("StartTransfer", st, cerr)
	}
	t := &Transfer{calls: newCalls(h), progress: progress, ev: ev}
	runtime.SetFinalizer(t, (*Transfer).reportLeak)
	return t, nil
}

func (t *Transfer) reportLeak() {
	leakf("keel: a Transfer was garbage collected without Close; its thread and handle leak")
}

func (t *Transfer) acquire(op string) (*C.keel_transfer_t, error) {
	if t == nil {
		return nil, newError(op, StatusInvalidArgument, "nil *Transfer")
	}
	h := t.calls.enter()
	if h == nil {
		return nil, newError(op, StatusClosed, "the transfer is closed")
	}
	return h, nil
}

func (t *Transfer) release() {
	t.calls.leave()
	runtime.KeepAlive(t)
}

// Finish asks the transfer to finish with mode once caught up; it returns
// at once (Wait waits). ErrInvalidArgument for FinishNone, once the
// transfer is over, or while it forwards for anything but a hand-over;
// ErrBusy when a finish was asked for already (AutoFinish too).
func (t *Transfer) Finish(mode FinishMode) error {
	h, err := t.acquire("Finish")
	if err != nil {
		return err
	}
	defer t.release()
	var cerr *C.keel_error_t
	if st := C.keel_transfer_finish(h, C.uint32_t(mode), &cerr); st != C.KEEL_STATUS_OK {
		return takeError("Finish", st, cerr)
	}
	return nil
}

// ConfirmHandOver tells keel the receiver owns the shard now (for example
// once the host's placement change is committed): the source's shard,
// which refuses writes with ErrMoved since the hand-over, is closed (every
// Shard on it then answers ErrClosed; Close still releases each one) and
// dropped from the node's engine with its files. ErrInvalidArgument unless
// the transfer is done with a hand-over; ErrNotFound once confirmed.
func (t *Transfer) ConfirmHandOver() error {
	h, err := t.acquire("ConfirmHandOver")
	if err != nil {
		return err
	}
	defer t.release()
	var cerr *C.keel_error_t
	if st := C.keel_transfer_confirm_hand_over(h, &cerr); st != C.KEEL_STATUS_OK {
		return takeError("ConfirmHandOver", st, cerr)
	}
	return nil
}

// Cancel stops the transfer at its next batch boundary or ACK wait; it
// settles on StageCancelled. The receiver's shard stays incoming, and a
// later transfer resumes it (by WAL delta when the source still holds the
// records). A no-op once the transfer is over.
func (t *Transfer) Cancel() error {
	h, err := t.acquire("Cancel")
	if err != nil {
		return err
	}
	defer t.release()
	if st := C.keel_transfer_cancel(h); st != C.KEEL_STATUS_OK {
		return takeError("Cancel", st, nil)
	}
	return nil
}

// Status returns the stage and, when it is StageFailed, the error that
// failed the transfer (an *Error); err is for the call itself.
func (t *Transfer) Status() (stage TransferStage, failure error, err error) {
	h, err := t.acquire("Status")
	if err != nil {
		return 0, nil, err
	}
	defer t.release()
	var s C.uint32_t
	var cerr *C.keel_error_t
	if st := C.keel_transfer_status(h, &s, &cerr); st != C.KEEL_STATUS_OK {
		return 0, nil, takeError("Status", st, cerr)
	}
	if cerr != nil {
		failure = takeError("Transfer", C.keel_error_code(cerr), cerr)
	}
	return TransferStage(s), failure, nil
}

// Progress returns the transfer's progress now.
func (t *Transfer) Progress() (TransferProgress, error) {
	h, err := t.acquire("Progress")
	if err != nil {
		return TransferProgress{}, err
	}
	defer t.release()
	var p C.keel_transfer_progress_t
	p.struct_size = C.uint32_t(unsafe.Sizeof(p))
	if st := C.keel_transfer_progress(h, &p); st != C.KEEL_STATUS_OK {
		return TransferProgress{}, takeError("Progress", st, nil)
	}
	return toProgress(&p), nil
}

// Wait waits until the transfer is settled (done, failed, cancelled, or
// forwarding with no hand-over asked for), at most timeout (negative: no
// limit); ErrTimeout when it is not. Status says how it went. Called
// from OnProgress it returns an error matching ErrBusy: the transfer
// waits for that callback.
func (t *Transfer) Wait(timeout time.Duration) error {
	if t != nil && t.ev.inCallback() {
		return newError("Wait", StatusBusy, "Transfer.Wait cannot be called from OnProgress")
	}
	h, err := t.acquire("Wait")
	if err != nil {
		return err
	}
	defer t.release()
	ms := C.uint64_t(C.KEEL_TRANSFER_WAIT_FOREVER)
	if timeout >= 0 {
		// Below KEEL_TRANSFER_WAIT_FOREVER; not negative here.
		limited, _ := millis("Wait", "timeout", timeout, math.MaxUint64-1)
		ms = C.uint64_t(limited)
	}
	if st := C.keel_transfer_wait(h, ms); st != C.KEEL_STATUS_OK {
		return takeError("Wait", st, nil)
	}
	return nil
}

// Close cancels the transfer if it is not over, waits for the calls in
// flight (a Wait returns once the cancel took effect) and for the
// transfer's thread, and frees it; no OnProgress call runs after it
// returns. A second Close returns ErrClosed once the first has returned.
// Called from OnProgress it returns an error matching ErrBusy and leaves
// the transfer alone: Close joins that callback's thread.
func (t *Transfer) Close() error {
	if t == nil {
		return newError("Close", StatusInvalidArgument, "nil *Transfer")
	}
	if t.ev.inCallback() {
		return newError("Close", StatusBusy, "Transfer.Close cannot be called from OnProgress")
	}
	// The cancel is safe beside the calls in flight; it ends a Wait
	// among them.
	h, done := t.calls.close(func(h *C.keel_transfer_t) { C.keel_transfer_cancel(h) }, true)
	defer done()
	if h == nil {
		return newError("Close", StatusClosed, "the transfer is closed")
	}
	runtime.SetFinalizer(t, nil)
	st := C.keel_transfer_free(h)
	if t.progress != 0 {
		// keel_transfer_free joined the thread that calls it (each call
		// left ev.thread on its way out).
		t.progress.Delete()
	}
	if st != C.KEEL_STATUS_OK {
		return takeError("Close", st, nil)
	}
	return nil
}

// Digest returns the content digest of the shard: SHA-256 over its live
// keys with their kind, bytes and version (docs/TRANSFER.md, "Shard
// digest"). Two shards with equal digests hold the same data at the same
// versions.
func (s *Shard) Digest() ([32]byte, error) {
	var out [32]byte
	h, err := s.acquire("Digest")
	if err != nil {
		return out, err
	}
	defer s.release()
	var cerr *C.keel_error_t
	if st := C.keel_shard_digest(h, (*C.uint8_t)(unsafe.Pointer(&out[0])), &cerr); st != C.KEEL_STATUS_OK {
		return out, takeError("Digest", st, cerr)
	}
	return out, nil
}
