package keel

/*
#include <stdint.h>
#include <stdlib.h>
#include "keel.h"

// Defined in callback.go (//export): the Go side of the node's event callback.
extern void keelGoNodeEvent(uintptr_t handle, uint64_t peer_id, keel_status_t status, char *message);

// The C callback keel calls on the node's threads; user_data carries the
// runtime/cgo.Handle of the Node's handler as an integer, never as a Go
// pointer.
static void keel_go_node_event(void *user, uint64_t peer_id, keel_status_t status, const char *message) {
	keelGoNodeEvent((uintptr_t)user, peer_id, status, (char *)message);
}

static void keel_go_node_set_event(keel_node_options_t *o, uintptr_t handle) {
	o->on_event = keel_go_node_event;
	o->user_data = (void *)handle;  // the handle is deleted by Node.Close (see there)
}
*/
import "C"

import (
	"math"
	"runtime"
	"runtime/cgo"
	"strings"
	"time"
	"unsafe"
)

// NoCloseWait is the NodeOptions.CloseTimeout that makes Node.Close cancel
// queued frames at once instead of waiting for them to be sent. (The zero
// value means the library default, 2 s.)
const NoCloseWait time.Duration = -1

// NodeOptions are the options of OpenNode. Every zero field means the
// library default (filled by keel_node_options_init_sized), except NodeID,
// which has none: a nil *NodeOptions or a zero NodeID makes OpenNode fail
// with ErrInvalidArgument. Values out of range do too.
type NodeOptions struct {
	// NodeID is this node's id: non-zero, unique in the cluster.
	NodeID uint64
	// ListenAddr is the "host:port" to listen on; port 0 picks one
	// (Node.Addr tells which). Default "127.0.0.1:0".
	ListenAddr string
	// Secret is the cluster secret, 16 to 1024 bytes (copied by OpenNode):
	// handshake MACs are made with it and accepted with it. Empty: no
	// secret (no authentication; loopback peers only unless
	// AllowRemoteWithoutSecret).
	Secret []byte
	// Secret2 is a second secret accepted alongside Secret during a
	// rotation, never used to send; not without Secret.
	Secret2 []byte
	// AllowRemoteWithoutSecret lets peers that are not on loopback connect
	// without a secret.
	AllowRemoteWithoutSecret bool
	// MaxFrameBytes is the largest frame payload, 4 KiB to 1 GiB; default
	// 16 MiB.
	MaxFrameBytes uint32
	// HandshakeTimeout closes a connection whose handshake has not finished
	// by then, 1 ms to 1 h (rounded up to a whole millisecond); default 5 s.
	// Also the TCP connect timeout of Connect.
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds the accepted connections still in their
	// handshake, 1 to 65536; default 64. Each holds a thread and a read
	// buffer before its peer proved anything: past the bound a new one is
	// refused at once (RefusedHandshakeLimit). Dialed connections do not
	// count.
	MaxHandshakes uint32
	// ConnMemoryBytes is what one connection may buffer (one inbound frame
	// plus queued outbound bytes), at least twice MaxFrameBytes plus
	// headers; default 64 MiB. A peer that stops reading is cut off past it.
	ConnMemoryBytes uint64
	// HeartbeatInterval: a PING goes out every interval, 1 ms to 1 h;
	// default 1 s. A peer silent for HeartbeatMisses intervals (1 to 1000;
	// default 5) is dropped.
	HeartbeatInterval time.Duration
	HeartbeatMisses   uint32
	// CloseTimeout is how long Close waits for queued frames to be sent,
	// up to 10 min; default 2 s. NoCloseWait (any negative value): no wait.
	CloseTimeout time.Duration
	// MaxConcurrentTransfers is how many transfers the node runs at once,
	// 1 to 1024; default 4.
	MaxConcurrentTransfers uint32
	// TransferBandwidth caps one transfer in bytes per second; 0: none.
	TransferBandwidth uint64
	// OnEvent, if not nil, is called when peer finished its handshake (err
	// nil) or when a connection ended: err is an *Error matching
	// ErrRefused (bad MAC, replay, no common version, wrong node id, a
	// non-loopback peer without a secret), ErrProtocol (malformed,
	// oversized or unknown frame), ErrTimeout (handshake or heartbeats),
	// ErrBusy (the peer stopped reading), ErrIO (reset, send error) or
	// ErrClosed (closed by the peer or by Close), with keel's reason as its
	// Message. peer is 0 when the handshake did not get as far as the
	// peer's id.
	//
	// It runs on a thread keel created (a connection's reader, the accept
	// thread) or on the goroutine in Connect whose peer was refused, so
	// possibly on several threads at once, and never after Close returned.
	// Keep it quick: a connection's reader waits for it, and so does a
	// Connect (the peer's ready event comes before Connect returns). It
	// may call the Node's methods (once Close has begun they answer
	// ErrClosed) but not Close (ErrBusy). A panic in it crashes the
	// program, as in any goroutine, even on Connect's goroutine (no
	// recover around Connect catches it); so does runtime.Goexit
	// (t.FailNow, t.Fatal).
	OnEvent func(peer uint64, err error)
}

// cNodeOptions is keel_node_options_t filled from NodeOptions, plus the C
// memory its pointers point to (keel_node_open copies it; free it after).
type cNodeOptions struct {
	c     C.keel_node_options_t
	alloc []unsafe.Pointer
}

func (o *cNodeOptions) free() {
	for _, p := range o.alloc {
		C.free(p)
	}
	o.alloc = nil
}

// bytes copies b into C memory (NULL for none).
func (o *cNodeOptions) bytes(b []byte) (*C.uint8_t, C.size_t) {
	if len(b) == 0 {
		return nil, 0
	}
	p := C.CBytes(b)
	o.alloc = append(o.alloc, p)
	return (*C.uint8_t)(p), C.size_t(len(b))
}

// toC starts from the library defaults and overrides the non-zero fields.
// On error nothing is left to free.
func (o *NodeOptions) toC() (*cNodeOptions, error) {
	out := &cNodeOptions{}
	c := &out.c
	C.keel_node_options_init_sized(c, C.size_t(unsafe.Sizeof(*c)))
	if o == nil {
		return out, nil
	}
	if err := setMillis32("OpenNode", msOption{"HandshakeTimeout", o.HandshakeTimeout, &c.handshake_timeout_ms},
		msOption{"HeartbeatInterval", o.HeartbeatInterval, &c.heartbeat_interval_ms}); err != nil {
		return nil, err
	}
	if strings.IndexByte(o.ListenAddr, 0) >= 0 {
		return nil, newError("OpenNode", StatusInvalidArgument, "ListenAddr contains a NUL byte")
	}
	c.node_id = C.uint64_t(o.NodeID)
	if o.ListenAddr != "" {
		p := C.CString(o.ListenAddr)
		out.alloc = append(out.alloc, unsafe.Pointer(p))
		c.listen_addr = p
	}
	c.secret, c.secret_len = out.bytes(o.Secret)
	c.secret2, c.secret2_len = out.bytes(o.Secret2)
	if o.AllowRemoteWithoutSecret {
		c.allow_remote_without_secret = 1
	}
	if o.MaxFrameBytes != 0 {
		c.max_frame_bytes = C.uint32_t(o.MaxFrameBytes)
	}
	if o.MaxHandshakes != 0 {
		c.max_handshakes = C.uint32_t(o.MaxHandshakes)
	}
	if o.ConnMemoryBytes != 0 {
		c.conn_memory_bytes = C.uint64_t(o.ConnMemoryBytes)
	}
	if o.HeartbeatMisses != 0 {
		c.heartbeat_misses = C.uint32_t(o.HeartbeatMisses)
	}
	switch {
	case o.CloseTimeout < 0:
		c.close_timeout_ms = 0
	case o.CloseTimeout > 0:
		ms, _ := millis("OpenNode", "CloseTimeout", o.CloseTimeout, math.MaxUint32) // not negative here
		c.close_timeout_ms = C.uint32_t(ms)
	}
	if o.MaxConcurrentTransfers != 0 {
		c.max_concurrent_transfers = C.uint32_t(o.MaxConcurrentTransfers)
	}
	c.transfer_bandwidth_bytes_per_sec = C.uint64_t(o.TransferBandwidth)
	return out, nil
}

// NodeStats are the counters of a Node (keel_node_stats_t; see
// docs/TRANSFER.md, "Counters"). The Refused* and later counters count
// connections that ended for that reason, each once; Node.LastError has
// the text of the last one.
type NodeStats struct {
	Peers              uint64 // connections with a finished handshake, now
	Accepted           uint64 // connections accepted
	Dialed             uint64 // connections dialed by Connect
	Handshakes         uint64 // handshakes that finished
	FramesIn           uint64
	FramesOut          uint64
	BytesIn            uint64
	BytesOut           uint64
	PingsSent          uint64
	PongsReceived      uint64
	CancelledFrames    uint64 // outbound frames dropped unsent when a connection closed
	RefusedBadMAC      uint64 // the MAC matched no active secret (or only one side had one)
	RefusedReplay      uint64 // a replayed handshake (a HELLO nonce seen before)
	RefusedVersion     uint64 // no protocol version in common
	RefusedNotLoopback uint64 // not on loopback and no secret configured
	RefusedWrongNode   uint64 // the peer's id is not the one dialed, or is this node's own
	HandshakeTimeouts  uint64
	MalformedFrames    uint64 // frames failing their checks (CRC, version, flags, order)
	OversizedFrames    uint64 // frames announcing more than MaxFrameBytes
	UnknownTypes       uint64 // frames of a type no service handles
	HeartbeatTimeouts  uint64
	OutboundOverflows  uint64 // peers cut off because they stopped reading
	Resets             uint64 // connections reset, failed to send, or ended inside a frame
	ClosedByPeer       uint64 // connections the peer closed between frames
	ClosedByShutdown   uint64 // connections closed by Close
	// connections refused at once: MaxHandshakes accepted ones were in
	// their handshake
	RefusedHandshakeLimit uint64
	// second ready connections to a peer, closed so that one stays
	ReplacedConnections uint64
}

func nodeStatsOut() C.keel_node_stats_t {
	var s C.keel_node_stats_t
	s.struct_size = C.uint32_t(unsafe.Sizeof(s))
	return s
}

func toNodeStats(s *C.keel_node_stats_t) NodeStats {
	return NodeStats{
		Peers:                 uint64(s.peers),
		Accepted:              uint64(s.accepted),
		Dialed:                uint64(s.dialed),
		Handshakes:            uint64(s.handshakes),
		FramesIn:              uint64(s.frames_in),
		FramesOut:             uint64(s.frames_out),
		BytesIn:               uint64(s.bytes_in),
		BytesOut:              uint64(s.bytes_out),
		PingsSent:             uint64(s.pings_sent),
		PongsReceived:         uint64(s.pongs_received),
		CancelledFrames:       uint64(s.cancelled_frames),
		RefusedBadMAC:         uint64(s.refused_bad_mac),
		RefusedReplay:         uint64(s.refused_replay),
		RefusedVersion:        uint64(s.refused_version),
		RefusedNotLoopback:    uint64(s.refused_not_loopback),
		RefusedWrongNode:      uint64(s.refused_wrong_node),
		HandshakeTimeouts:     uint64(s.handshake_timeouts),
		MalformedFrames:       uint64(s.malformed_frames),
		OversizedFrames:       uint64(s.oversized_frames),
		UnknownTypes:          uint64(s.unknown_types),
		HeartbeatTimeouts:     uint64(s.heartbeat_timeouts),
		OutboundOverflows:     uint64(s.outbound_overflows),
		Resets:                uint64(s.resets),
		ClosedByPeer:          uint64(s.closed_by_peer),
		ClosedByShutdown:      uint64(s.closed_by_shutdown),
		RefusedHandshakeLimit: uint64(s.refused_handshake_limit),
		ReplacedConnections:   uint64(s.replaced_connections),
	}
}

// nodeEvents is what the cgo.Handle in keel_node_options_t.user_data holds.
type nodeEvents struct {
	onEvent func(peer uint64, err error)
	// threads are those running this node's OnEvent now, so that Close
	// can tell it is called from OnEvent.
	threads *threadSet
}

// Node is a node of keel's authenticated transport to other keel
// processes (docs/TRANSFER.md): it listens on one TCP address, dials peers
// with Connect and keeps a connection to every peer that passed the
// handshake. With a cluster secret the handshake is authenticated; frames
// are not encrypted. All methods are safe for concurrent use.
//
// Close it when done (before its Engine).
type Node struct {
	// calls holds the handle: keel_node_close must not race with other
	// calls, and keel runs OnEvent for a peer before Connect returns, so
	// an OnEvent that calls Stats while a Connect waits for it must not
	// queue behind a pending Close (calls.go).
	calls *calls[*C.keel_node_t]
	// events is the handle of ev, the OnEvent handler (0 and nil: none);
	// deleted once keel_node_close has returned, after which no callback
	// runs. Both are set by OpenNode and never change.
	events cgo.Handle
	ev     *nodeEvents
	// id and addr name the node in a leak report.
	id   uint64
	addr string
}

// OpenNode opens a node for e, which must stay open until the node is
// closed: binds the listen address and starts the node's threads. Options
// out of range are ErrInvalidArgument, an address that cannot be bound
// ErrIO, running out of descriptors ErrResource, a closed Engine ErrClosed.
func OpenNode(e *Engine, opts *NodeOptions) (*Node, error) {
	if abiErr != nil {
		return nil, abiErr
	}
	copts, err := opts.toC()
	if err != nil {
		return nil, err
	}
	defer copts.free()
	eh, err := e.acquire("OpenNode")
	if err != nil {
		return nil, err
	}
	defer e.release()
	var events cgo.Handle
	var ev *nodeEvents
	if opts != nil && opts.OnEvent != nil {
		ev = &nodeEvents{onEvent: opts.OnEvent, threads: newThreadSet()}
		events = cgo.NewHandle(ev)
		C.keel_go_node_set_event(&copts.c, C.uintptr_t(events))
	}
	var h *C.keel_node_t
	var cerr *C.keel_error_t
	if st := C.keel_node_open(eh, &copts.c, &h, &cerr); st != C.KEEL_STATUS_OK {
		// A failed open started no thread that could call OnEvent.
		if events != 0 {
			events.Delete()
		}
		return nil, takeError("OpenNode", st, cerr)
	}
	n := &Node{calls: newCalls(h), events: events, ev: ev, id: uint64(copts.c.node_id)}
	n.addr, _ = n.Addr() // for the leak report only
	runtime.SetFinalizer(n, (*Node).reportLeak)
	return n, nil
}

// reportLeak runs on the finalizer goroutine and only logs (see
// WAL.reportLeak). (A Node whose OnEvent closure refers to the Node is
// never collected, so never reported.)
func (n *Node) reportLeak() {
	leakf("keel: Node %d on %s was garbage collected without Close; its threads, handle, listening socket and connections leak",
		n.id, n.addr)
}

func (n *Node) acquire(op string) (*C.keel_node_t, error) {
	if n == nil {
		return nil, newError(op, StatusInvalidArgument, "nil *Node")
	}
	h := n.calls.enter()
	if h == nil {
		return nil, newError(op, StatusClosed, "the node is closed")
	}
	return h, nil
}

func (n *Node) release() {
	n.calls.leave()
	runtime.KeepAlive(n)
}

// cString reads a NUL-terminated string a C call writes into a Go buffer
// (keel_node_addr, keel_node_last_error), asking again with the size the
// call names as long as it answers BUFFER_TOO_SMALL (the text may grow
// between two calls). These calls carry no error object.
func cString(op string, call func(buf *C.char, cap C.size_t, len *C.size_t) C.keel_status_t) (string, error) {
	buf := make([]byte, 64)
	for {
		var l C.size_t
		st := call((*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &l)
		if st == C.KEEL_STATUS_BUFFER_TOO_SMALL && int(l) > len(buf) {
			buf = make([]byte, int(l))
			continue
		}
		if st != C.KEEL_STATUS_OK {
			return "", takeError(op, st, nil)
		}
		if l == 0 {
			return "", nil
		}
		return string(buf[:int(l)-1]), nil
	}
}

// Addr returns the address the node listens on, "ip:port" (the port
// picked when ListenAddr said 0).
func (n *Node) Addr() (string, error) {
	h, err := n.acquire("Addr")
	if err != nil {
		return "", err
	}
	defer n.release()
	return cString("Addr", func(buf *C.char, cap C.size_t, l *C.size_t) C.keel_status_t {
		return C.keel_node_addr(h, buf, cap, l)
	})
}

// Connect dials peer peerID at addr ("host:port") and runs the handshake;
// it returns once the peer is ready. Errors match ErrRefused (the
// handshake refused the peer, or the peer refused this node: the message
// says why), ErrInvalidArgument (peerID 0 or this node's own, an address
// that does not resolve), ErrIO (connect failed), ErrTimeout, ErrProtocol,
// ErrClosed (the node is closing, or the peer closed the connection before
// the handshake finished) or ErrResource (out of descriptors).
func (n *Node) Connect(peerID uint64, addr string) error {
	if strings.IndexByte(addr, 0) >= 0 {
		return newError("Connect", StatusInvalidArgument, "the peer address contains a NUL byte")
	}
	h, err := n.acquire("Connect")
	if err != nil {
		return err
	}
	defer n.release()
	caddr := C.CString(addr)
	defer C.free(unsafe.Pointer(caddr))
	var cerr *C.keel_error_t
	if st := C.keel_node_connect(h, C.uint64_t(peerID), caddr, &cerr); st != C.KEEL_STATUS_OK {
		return takeError("Connect", st, cerr)
	}
	return nil
}

// Stats returns the counters now.
func (n *Node) Stats() (NodeStats, error) {
	h, err := n.acquire("Stats")
	if err != nil {
		return NodeStats{}, err
	}
	defer n.release()
	s := nodeStatsOut()
	if st := C.keel_node_stats(h, &s); st != C.KEEL_STATUS_OK {
		return NodeStats{}, takeError("Stats", st, nil)
	}
	return toNodeStats(&s), nil
}

// LastError returns the text of the last error that ended a connection
// ("" when none).
func (n *Node) LastError() (string, error) {
	h, err := n.acquire("LastError")
	if err != nil {
		return "", err
	}
	defer n.release()
	return cString("LastError", func(buf *C.char, cap C.size_t, l *C.size_t) C.keel_status_t {
		return C.keel_node_last_error(h, buf, cap, l)
	})
}

// Close closes the node: new calls fail with ErrClosed at once, calls in
// flight (a Connect) are waited for, then keel stops accepting, gives
// every connection up to CloseTimeout to send what is queued (the rest is
// cancelled and counted), closes the connections and joins the node's
// threads. No OnEvent call runs after it returns. It returns the counters
// as they are at the end. A second Close returns an error matching
// ErrClosed once the first has returned. Called from OnEvent it returns an error matching ErrBusy and
// leaves the node open.
func (n *Node) Close() (NodeStats, error) {
	if n == nil {
		return NodeStats{}, newError("Close", StatusInvalidArgument, "nil *Node")
	}
	if n.ev != nil && n.ev.threads.has() {
		// keel_node_close would join the thread it runs on.
		return NodeStats{}, newError("Close", StatusBusy, "Node.Close cannot be called from OnEvent")
	}
	h, done := n.calls.close(nil, true)
	defer done()
	if h == nil {
		return NodeStats{}, newError("Close", StatusClosed, "the node is already closed")
	}
	// Without the lock: keel_node_close waits for running OnEvent calls,
	// which may call this Node's methods (they find it closed).
	s := nodeStatsOut()
	st := C.keel_node_close(h, &s)
	runtime.SetFinalizer(n, nil)
	if n.events != 0 {
		n.events.Delete() // no callback runs any more
	}
	if st != C.KEEL_STATUS_OK {
		return NodeStats{}, takeError("Close", st, nil)
	}
	return toNodeStats(&s), nil
}
