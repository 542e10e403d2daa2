package keel

/*
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include "keel.h"

// A close-on-exec duplicate of fd (-errno on failure). F_DUPFD_CLOEXEC
// leaves the open file description, and so O_NONBLOCK, as it is.
static int keel_go_dup_cloexec(int fd) {
	int r = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	return r < 0 ? -errno : r;
}
*/
import "C"

import (
	"fmt"
	"math"
	"runtime"
	"syscall"
	"time"
)

// NoCap is the WriterOptions.SoftCapBytes / HardCapBytes value that turns
// the cap off (the zero value means the library default).
const NoCap uint64 = math.MaxUint64

// WriterOptions are the per-connection limits of Adopt and of a
// Publisher's subscribers. Every zero field means the library default
// (filled by keel_writer_options_init), so nil and &WriterOptions{} are
// the same. The library validates the values: out of range is
// ErrInvalidArgument.
type WriterOptions struct {
	// Quota: messages one drain pass handles before it flushes and
	// yields, 1 to 1000000; default 100.
	Quota uint32
	// MaxBatchBytes: a batch is flushed once it holds this many bytes,
	// 1 to 64 MiB; default 64 KiB.
	MaxBatchBytes uint64
	// CopyThreshold: messages of at least this many bytes are held by
	// reference (one copy shared by every subscriber), smaller ones are
	// copied into the connection's buffer; default 4096.
	CopyThreshold uint64
	// SoftCapBytes: more than this many bytes queued (each message still
	// queued counts 40 bytes more, for its bookkeeping) for longer than
	// SoftCapTime closes the connection (reported with ErrBusy); default
	// 8 MiB; NoCap disables it.
	SoftCapBytes uint64
	// HardCapBytes: an append that would queue more than this closes the
	// connection at once (ErrBusy); not below SoftCapBytes; default
	// 32 MiB; NoCap disables it.
	HardCapBytes uint64
	// IOVMax: iovecs per send, 1 to 1024; default 1024.
	IOVMax uint32
	// SoftCapTime: see SoftCapBytes (rounded up to a whole millisecond),
	// at most 24 h; default 60 s.
	SoftCapTime time.Duration
	// CloseTimeout: closing flushes, shuts the socket down for writing
	// and reads the peer's input until EOF; after this long (rounded up
	// to a whole millisecond, at most 10 min) the socket is closed
	// whatever is left; default 2 s. Net.Close waits for it.
	CloseTimeout time.Duration
}

// toC starts from the library defaults and overrides the non-zero fields.
func (o *WriterOptions) toC(op string) (C.keel_writer_options_t, error) {
	var c C.keel_writer_options_t
	C.keel_writer_options_init(&c)
	if o == nil {
		return c, nil
	}
	if o.Quota != 0 {
		c.quota = C.uint32_t(o.Quota)
	}
	if o.MaxBatchBytes != 0 {
		c.max_batch_bytes = C.uint64_t(o.MaxBatchBytes)
	}
	if o.CopyThreshold != 0 {
		c.copy_threshold = C.uint64_t(o.CopyThreshold)
	}
	capValue := func(v uint64, def C.uint64_t) C.uint64_t {
		switch v {
		case 0:
			return def
		case NoCap:
			return 0
		}
		return C.uint64_t(v)
	}
	c.soft_cap_bytes = capValue(o.SoftCapBytes, c.soft_cap_bytes)
	c.hard_cap_bytes = capValue(o.HardCapBytes, c.hard_cap_bytes)
	if o.IOVMax != 0 {
		c.iov_max = C.uint32_t(o.IOVMax)
	}
	err := setMillis32(op, msOption{"SoftCapTime", o.SoftCapTime, &c.soft_cap_ms}, msOption{"CloseTimeout", o.CloseTimeout, &c.close_timeout_ms})
	return c, err
}

// WriterStats are the counters of one Writer or subscriber
// (keel_writer_stats_t; see docs/WRITER.md, R12). Batch density is
// ItemsSent / Sends.
type WriterStats struct {
	Sends          uint64 // send calls: sendmsg(2) plus io_uring SENDMSG operations
	URingSends     uint64 // of Sends, those submitted to io_uring
	ImmediateSends uint64 // lone messages sent on the caller's goroutine before Send returned
	BytesSent      uint64 // bytes the kernel accepted
	Items          uint64 // messages appended
	// ItemsSent: messages delivered: handed to a send, or, when empty,
	// passed with nothing to send (they count too, so ItemsSent reaches
	// Items).
	ItemsSent       uint64
	ControlItems    uint64 // control items appended (close requests)
	Passes          uint64 // drain passes
	BatchedPasses   uint64 // passes that started with two or more messages queued
	FlushIdle       uint64 // flushes: the last queued message was done
	FlushSize       uint64 // flushes: MaxBatchBytes reached
	FlushIOVec      uint64 // flushes: IOVMax reached
	FlushQuota      uint64 // flushes: the pass reached its Quota
	FlushWait       uint64 // flushes: before a fence
	FlushClose      uint64 // flushes: before a close
	ShortSends      uint64 // sends the kernel took only part of
	EAGAIN          uint64 // sends refused with EAGAIN
	WritableWaits   uint64 // waits for the socket to become writable
	MaxItemsPerSend uint64 // most messages one send carried
	QueuedBytes     uint64 // appended and not yet accepted by the kernel, now
	// OldestUnflushed is the age of the oldest byte the kernel has not
	// taken yet, now (0 if none), counted from its batch's first append.
	OldestUnflushed time.Duration
	// MaxFlushWait is the longest a byte waited between its append and
	// its first send.
	MaxFlushWait time.Duration
}

// ItemsPerSend is the batch density, ItemsSent / Sends (0 before the
// first send).
func (s WriterStats) ItemsPerSend() float64 {
	if s.Sends == 0 {
		return 0
	}
	return float64(s.ItemsSent) / float64(s.Sends)
}

func newStatsOut() C.keel_writer_stats_t {
	var s C.keel_writer_stats_t
	s.struct_size = C.uint32_t(C.sizeof_keel_writer_stats_t)
	return s
}

func writerStatsFromC(s *C.keel_writer_stats_t) WriterStats {
	return WriterStats{
		Sends:           uint64(s.sends),
		URingSends:      uint64(s.uring_sends),
		ImmediateSends:  uint64(s.immediate_sends),
		BytesSent:       uint64(s.bytes_sent),
		Items:           uint64(s.items),
		ItemsSent:       uint64(s.items_sent),
		ControlItems:    uint64(s.control_items),
		Passes:          uint64(s.passes),
		BatchedPasses:   uint64(s.batched_passes),
		FlushIdle:       uint64(s.flush_idle),
		FlushSize:       uint64(s.flush_size),
		FlushIOVec:      uint64(s.flush_iovec),
		FlushQuota:      uint64(s.flush_quota),
		FlushWait:       uint64(s.flush_wait),
		FlushClose:      uint64(s.flush_close),
		ShortSends:      uint64(s.short_sends),
		EAGAIN:          uint64(s.eagain),
		WritableWaits:   uint64(s.writable_waits),
		MaxItemsPerSend: uint64(s.max_items_per_send),
		QueuedBytes:     uint64(s.queued_bytes),
		OldestUnflushed: nsDuration(uint64(s.oldest_unflushed_ns)),
		MaxFlushWait:    nsDuration(uint64(s.max_flush_wait_ns)),
	}
}

// dupConn returns a close-on-exec duplicate of conn's socket, made inside
// SyscallConn().Control so that conn's descriptor cannot be closed while
// it is duplicated. conn itself is not changed: it stays open, attached to
// Go's poller, in nonblocking mode (unlike conn.File() followed by Fd(),
// which would switch the shared file description to blocking mode).
func dupConn(op string, conn syscall.Conn) (C.int, error) {
	if conn == nil {
		return -1, newError(op, StatusInvalidArgument, "nil connection")
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		return -1, newError(op, StatusInvalidArgument, fmt.Sprintf("SyscallConn: %v", err))
	}
	fd := C.int(-1)
	if err := rc.Control(func(s uintptr) {
		if s > math.MaxInt32 {
			fd = -C.EBADF
			return
		}
		fd = C.keel_go_dup_cloexec(C.int(s))
	}); err != nil {
		// Typically the connection was closed already.
		return -1, newError(op, StatusInvalidArgument, fmt.Sprintf("connection: %v", err))
	}
	if fd < 0 {
		return -1, newError(op, StatusIO, fmt.Sprintf("fcntl(F_DUPFD_CLOEXEC): %v", syscall.Errno(-fd)))
	}
	return fd, nil
}

// Writer is one connected stream socket (TCP or Unix) adopted into a Net
// for batched writing. A Send on an idle connection is one send(2) before
// it returns; messages queued meanwhile (or with SendMore) leave together
// in as few sends as possible. Nothing blocks: when the socket is full the
// rest waits for writability on the reactor thread. All methods are safe
// for concurrent use; bytes of one Writer leave in the order their calls
// were made.
//
// Close it when done: Close flushes what is queued, half-closes the
// connection and closes keel's descriptor. A Writer garbage collected
// while open is reported as a leak (its socket stays open), not closed.
type Writer struct {
	// calls holds the handle (calls.go).
	calls *calls[*C.keel_writer_t]
	id    uint64
}

// Adopt hands conn (a connected *net.TCPConn or *net.UnixConn, or any
// syscall.Conn over a connected stream socket) to keel as a Writer on n.
//
// What happens to conn: Adopt duplicates its socket descriptor
// (F_DUPFD_CLOEXEC, inside conn.SyscallConn().Control) and keel takes
// ownership of the duplicate; conn itself is not changed and stays yours
// and open — keel never touches Go's descriptor, its poller registration
// or its blocking mode. From then on:
//   - never Write to conn: its bytes would interleave with keel's;
//   - you may keep reading from conn (requests, in a server) until you
//     Close the Writer; Writer.Close then reads and discards the peer's
//     input until EOF (so that unread input cannot turn the close into a
//     reset), competing with a reader still on conn;
//   - Close conn when you are done reading. That closes only Go's
//     descriptor: the connection stays up, and the peer sees EOF only
//     when the Writer is closed (or keel closes it on an error, which
//     shuts the socket down both ways: reads on conn then see EOF);
//   - deadlines and socket options set on conn apply to the shared socket
//     but deadlines do not affect keel's sends; keel sets TCP_NODELAY.
//
// A conn whose socket a Net of this process already has (n or another, as
// a Writer or a subscriber, through any descriptor: each Adopt or
// Subscribe hands keel a new duplicate) is
// refused with ErrInvalidArgument, as two writers on one socket would
// interleave their messages. keel forgets the socket when it closes its
// duplicate, at the end of the Writer's Close (after the flush and the
// peer's EOF, or CloseTimeout); from then on conn can be adopted again.
//
// On failure nothing changes: the duplicate is closed and conn is
// untouched. opts may be nil for the defaults.
func Adopt(n *Net, conn syscall.Conn, opts *WriterOptions) (*Writer, error) {
	copts, err := opts.toC("Adopt")
	if err != nil {
		return nil, err
	}
	fd, err := dupConn("Adopt", conn)
	if err != nil {
		return nil, err
	}
	w, err := adopt(n, fd, &copts, "Adopt")
	if err != nil {
		C.close(fd)
		return nil, err
	}
	return w, nil
}

// AdoptFD hands the connected stream socket fd to keel as a Writer on n.
// On success keel owns fd: it closes it when the Writer is closed; you may
// keep reading from it until then, but must never write to it or close
// it. On failure fd is still yours. A socket n already has, through this
// or another descriptor, is refused as in Adopt. (To adopt a Go
// connection use Adopt, which hands keel a duplicate.)
func AdoptFD(n *Net, fd int, opts *WriterOptions) (*Writer, error) {
	copts, err := opts.toC("AdoptFD")
	if err != nil {
		return nil, err
	}
	if fd < math.MinInt32 || fd > math.MaxInt32 {
		return nil, newError("AdoptFD", StatusInvalidArgument, fmt.Sprintf("fd %d is out of range", fd))
	}
	return adopt(n, C.int(fd), &copts, "AdoptFD")
}

func adopt(n *Net, fd C.int, copts *C.keel_writer_options_t, op string) (*Writer, error) {
	h, err := n.acquire(op)
	if err != nil {
		return nil, err
	}
	defer n.release()
	var wh *C.keel_writer_t
	var cerr *C.keel_error_t
	if st := C.keel_writer_adopt(h, fd, copts, &wh, &cerr); st != C.KEEL_STATUS_OK {
		return nil, takeError(op, st, cerr)
	}
	var id C.uint64_t
	C.keel_writer_id(wh, &id) // cannot fail on the handle just made
	w := &Writer{calls: newCalls(wh), id: uint64(id)}
	runtime.SetFinalizer(w, (*Writer).reportLeak)
	return w, nil
}

func (w *Writer) reportLeak() {
	leakf("keel: Writer (connection %d) was garbage collected without Close; its handle and socket leak", w.id)
}

func (w *Writer) acquire(op string) (*C.keel_writer_t, error) {
	if w == nil {
		return nil, newError(op, StatusInvalidArgument, "nil *Writer")
	}
	h := w.calls.enter()
	if h == nil {
		return nil, newError(op, StatusClosed, "the writer is closed")
	}
	return h, nil
}

func (w *Writer) release() {
	w.calls.leave()
	runtime.KeepAlive(w)
}

// ID returns the connection id, the connID OnEvent reports for this
// Writer (unique within its Net, never reused); it stays readable after
// Close. 0 for a nil Writer.
func (w *Writer) ID() uint64 {
	if w == nil {
		return 0
	}
	return w.id
}

// Send appends msg (copied; nil or empty is an empty message) and sends
// it together with what is queued; alone on an idle connection it is one
// send on this goroutine. Errors: ErrIO (the send failed now: the
// connection is closed and reported to OnEvent once), ErrClosed (keel
// closed the connection earlier — the message says why —, the Net is
// closed, or the Writer is), ErrBusy (the hard cap closed it).
func (w *Writer) Send(msg []byte) error { return w.send("Send", msg, 0) }

// SendMore queues msg without sending it (no syscall): it leaves with the
// next Send, SendBatch or Flush. Use it for all but the last reply of a
// pipeline so that the whole pipeline leaves in one send.
func (w *Writer) SendMore(msg []byte) error { return w.send("SendMore", msg, C.KEEL_WRITER_MORE) }

func (w *Writer) send(op string, msg []byte, flags C.uint32_t) error {
	h, err := w.acquire(op)
	if err != nil {
		return err
	}
	defer w.release()
	var cerr *C.keel_error_t
	if st := C.keel_writer_send(h, bytesPtr(msg), C.size_t(len(msg)), flags, &cerr); st != C.KEEL_STATUS_OK {
		return takeError(op, st, cerr)
	}
	return nil
}

// SendBatch appends msgs at once — accepted all or none, drained together
// (one send per Quota messages) — in one call into keel: they are packed
// into one buffer plus a lengths array first. An empty batch is
// ErrInvalidArgument.
func (w *Writer) SendBatch(msgs [][]byte) error { return w.sendBatch("SendBatch", msgs, 0) }

// SendBatchMore is SendBatch without sending: the messages leave with the
// next Send, SendBatch or Flush.
func (w *Writer) SendBatchMore(msgs [][]byte) error {
	return w.sendBatch("SendBatchMore", msgs, C.KEEL_WRITER_MORE)
}

func (w *Writer) sendBatch(op string, msgs [][]byte, flags C.uint32_t) error {
	// Packed: cgo may not receive Go memory holding Go pointers ([][]byte).
	total := 0
	for _, m := range msgs {
		total += len(m)
	}
	data := make([]byte, 0, total)
	lens := make([]C.size_t, len(msgs))
	for i, m := range msgs {
		data = append(data, m...)
		lens[i] = C.size_t(len(m))
	}
	var lensPtr *C.size_t
	if len(lens) > 0 {
		lensPtr = &lens[0]
	}
	h, err := w.acquire(op)
	if err != nil {
		return err
	}
	defer w.release()
	var cerr *C.keel_error_t
	if st := C.keel_writer_send_batch(h, bytesPtr(data), lensPtr, C.size_t(len(msgs)), flags, &cerr); st != C.KEEL_STATUS_OK {
		return takeError(op, st, cerr)
	}
	return nil
}

// Flush sends what SendMore / SendBatchMore left queued.
func (w *Writer) Flush() error {
	h, err := w.acquire("Flush")
	if err != nil {
		return err
	}
	defer w.release()
	var cerr *C.keel_error_t
	if st := C.keel_writer_flush(h, &cerr); st != C.KEEL_STATUS_OK {
		return takeError("Flush", st, cerr)
	}
	return nil
}

// Stats returns the writer's counters; they stay readable after keel
// closed the connection (not after Close). With io_uring a send is
// counted when its completion is reaped, which may be just after the
// peer received the bytes.
func (w *Writer) Stats() (WriterStats, error) {
	h, err := w.acquire("Stats")
	if err != nil {
		return WriterStats{}, err
	}
	defer w.release()
	s := newStatsOut()
	if st := C.keel_writer_stats(h, &s); st != C.KEEL_STATUS_OK {
		return WriterStats{}, takeError("Stats", st, nil)
	}
	return writerStatsFromC(&s), nil
}

// Close closes the Writer: what is queued is still sent, then the socket
// is shut down for writing, the peer's input is read until EOF and keel's
// descriptor closed — on the reactor thread, within CloseTimeout; Close
// itself does not wait for that. It waits for calls in flight on other
// goroutines; no OnEvent call for this connection starts after it
// returns. It may be called from OnEvent. A second Close returns an error
// matching ErrClosed once the first has returned (from the OnEvent of
// any Net: at once).
func (w *Writer) Close() error {
	if w == nil {
		return newError("Close", StatusInvalidArgument, "nil *Writer")
	}
	// From an OnEvent (of any Net), a Close running on another goroutine
	// may be waiting for this very callback: answer at once instead.
	h, done := w.calls.close(nil, !netEventThreads.has())
	defer done()
	if h == nil {
		return newError("Close", StatusClosed, "the writer is already closed")
	}
	runtime.SetFinalizer(w, nil)
	// keel_writer_close waits for an OnEvent call of this connection
	// running on the reactor, which may itself call this Writer's methods:
	// they find it closed.
	var cerr *C.keel_error_t
	if st := C.keel_writer_close(h, &cerr); st != C.KEEL_STATUS_OK {
		return takeError("Close", st, cerr)
	}
	return nil
}
