package keel

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The node transport (Node) over real loopback sockets: two nodes sharing
// a secret connect and see each other ready through OnEvent; a wrong
// secret is refused (ErrRefused) and counted on both sides; options are
// checked; closed and nil nodes; Close from OnEvent is ErrBusy and Close
// during a Connect whose OnEvent calls the Node does not deadlock; a
// leaked Node is reported, not closed. Waits are on OnEvent (a channel),
// never on time; the bounds only turn a hang into a failure.

var (
	nodeSecret  = []byte("cluster secret 0123456789")
	wrongSecret = []byte("not the cluster secret 42")
)

type nodeEvent struct {
	peer uint64
	err  error
}

// nodeSink returns an OnEvent handler that hands events to a buffered
// channel (never blocking keel's thread; the buffer outlasts every test).
func nodeSink() (func(uint64, error), chan nodeEvent) {
	ch := make(chan nodeEvent, 64)
	return func(peer uint64, err error) {
		select {
		case ch <- nodeEvent{peer, err}:
		default:
		}
	}, ch
}

// waitEvent returns the first event from peer (any peer when 0) whose
// error matches want (nil: a ready peer), skipping others.
func waitEvent(t *testing.T, ch <-chan nodeEvent, peer uint64, want error) nodeEvent {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		select {
		case ev := <-ch:
			if (peer == 0 || ev.peer == peer) && ((want == nil && ev.err == nil) || (want != nil && errors.Is(ev.err, want))) {
				return ev
			}
		case <-deadline:
			t.Fatalf("no event %v from peer %d", want, peer)
		}
	}
}

// nodeEngineT opens an engine for the nodes of a test (closed at its end).
func nodeEngineT(t *testing.T) *Engine {
	e, _ := openEngineT(t, "", nil)
	return e
}

// openNodeT opens a node closed at the end of the test (before its engine:
// cleanups run last-registered first).
func openNodeT(t *testing.T, e *Engine, opts *NodeOptions) *Node {
	t.Helper()
	n, err := OpenNode(e, opts)
	if err != nil {
		t.Fatalf("OpenNode: %v", err)
	}
	t.Cleanup(func() {
		if _, err := n.Close(); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Node.Close: %v", err)
		}
	})
	return n
}

func secretNode(id uint64, secret []byte, onEvent func(uint64, error)) *NodeOptions {
	return &NodeOptions{NodeID: id, ListenAddr: "127.0.0.1:0", Secret: secret,
		HandshakeTimeout: 2 * time.Second, CloseTimeout: time.Second, OnEvent: onEvent}
}

// addrOf returns n's address, checked to be loopback with a picked port.
func addrOf(t *testing.T, n *Node) string {
	t.Helper()
	a, err := n.Addr()
	if err != nil {
		t.Fatal(err)
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("Addr() = %q (%v)", a, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		t.Fatalf("Addr() = %q: no picked port", a)
	}
	return a
}

func statsOf(t *testing.T, n *Node) NodeStats {
	t.Helper()
	s, err := n.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestNodeSecretPeersConnect(t *testing.T) {
	e := nodeEngineT(t)
	onA, evA := nodeSink()
	onB, evB := nodeSink()
	a := openNodeT(t, e, secretNode(1, nodeSecret, onA))
	b := openNodeT(t, e, secretNode(2, nodeSecret, onB))
	addr := addrOf(t, a)

	if err := b.Connect(1, addr); err != nil {
		t.Fatal(err)
	}
	if s := statsOf(t, b); s.Peers != 1 || s.Dialed != 1 || s.Handshakes != 1 {
		t.Fatalf("dialer's stats: %+v", s)
	}
	waitEvent(t, evB, 1, nil)
	waitEvent(t, evA, 2, nil) // the acceptor's side of the handshake
	if s := statsOf(t, a); s.Accepted != 1 || s.Handshakes != 1 || s.Peers != 1 {
		t.Fatalf("acceptor's stats: %+v", s)
	}
	if msg, err := a.LastError(); err != nil || msg != "" {
		t.Fatalf("LastError with no error: %q, %v", msg, err)
	}

	fin, err := b.Close()
	if err != nil {
		t.Fatal(err)
	}
	if fin.ClosedByShutdown != 1 || fin.CancelledFrames != 0 || fin.Handshakes != 1 {
		t.Fatalf("final stats: %+v", fin)
	}
	waitEvent(t, evA, 2, ErrClosed) // a sees b go
	seenByB := len(evB)
	fa, err := a.Close()
	if err != nil {
		t.Fatal(err)
	}
	if fa.ClosedByPeer != 1 || fa.Peers != 0 {
		t.Fatalf("acceptor's final stats: %+v", fa)
	}
	if len(evB) != seenByB {
		t.Fatal("an OnEvent call after Close returned")
	}
	if _, err := a.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
}

func TestNodeWrongSecretIsRefused(t *testing.T) {
	e := nodeEngineT(t)
	onA, evA := nodeSink()
	onC, evC := nodeSink()
	a := openNodeT(t, e, secretNode(1, nodeSecret, onA))
	c := openNodeT(t, e, secretNode(3, wrongSecret, onC))
	addr := addrOf(t, a)

	err := c.Connect(1, addr)
	wantCode(t, "Connect with a wrong secret", err, ErrRefused)
	if !strings.Contains(err.Error(), "MAC") {
		t.Fatalf("the refusal does not say why: %v", err)
	}
	if s := statsOf(t, c); s.RefusedBadMAC != 1 || s.Peers != 0 || s.Handshakes != 0 {
		t.Fatalf("refused dialer's stats: %+v", s)
	}
	// Longer than the first buffer LastError tries (64 bytes): the
	// BUFFER_TOO_SMALL retry returns the whole text.
	text, err := c.LastError()
	if err != nil || !strings.Contains(text, "MAC") || len(text) <= 64 || strings.IndexByte(text, 0) >= 0 {
		t.Fatalf("LastError = %q, %v", text, err)
	}
	waitEvent(t, evC, 0, ErrRefused)
	ev := waitEvent(t, evA, 0, ErrRefused) // the acceptor refused c as well
	if !strings.Contains(ev.err.Error(), "MAC") {
		t.Fatalf("acceptor's event: %v", ev.err)
	}
	if s := statsOf(t, a); s.RefusedBadMAC != 1 || s.Handshakes != 0 || s.Peers != 0 {
		t.Fatalf("refusing acceptor's stats: %+v", s)
	}

	// Mid-rotation the two agree: a2 sends with nodeSecret and accepts
	// wrongSecret too, c2 the other way round (Secret2 reaches keel).
	o := secretNode(4, nodeSecret, nil)
	o.Secret2 = wrongSecret
	a2 := openNodeT(t, e, o)
	o = secretNode(5, wrongSecret, nil)
	o.Secret2 = nodeSecret
	c2 := openNodeT(t, e, o)
	if err := c2.Connect(4, addrOf(t, a2)); err != nil {
		t.Fatalf("Connect mid-rotation: %v", err)
	}
}

func TestNodeOptionsAreValidated(t *testing.T) {
	e := nodeEngineT(t)
	_, err := OpenNode(e, nil)
	wantCode(t, "OpenNode without NodeID", err, ErrInvalidArgument)
	bad := []struct {
		name string
		opts NodeOptions
		want *Error
	}{
		{"short secret", NodeOptions{NodeID: 5, Secret: []byte("short")}, ErrInvalidArgument},
		{"long secret", NodeOptions{NodeID: 5, Secret: make([]byte, 1025)}, ErrInvalidArgument},
		{"Secret2 alone", NodeOptions{NodeID: 5, Secret2: nodeSecret}, ErrInvalidArgument},
		{"small frames", NodeOptions{NodeID: 5, MaxFrameBytes: 100}, ErrInvalidArgument},
		{"small conn memory", NodeOptions{NodeID: 5, ConnMemoryBytes: 4096}, ErrInvalidArgument},
		{"heartbeat misses", NodeOptions{NodeID: 5, HeartbeatMisses: 1001}, ErrInvalidArgument},
		{"negative handshake", NodeOptions{NodeID: 5, HandshakeTimeout: -time.Second}, ErrInvalidArgument},
		{"long handshake", NodeOptions{NodeID: 5, HandshakeTimeout: 2 * time.Hour}, ErrInvalidArgument},
		{"negative heartbeat", NodeOptions{NodeID: 5, HeartbeatInterval: -1}, ErrInvalidArgument},
		{"long close", NodeOptions{NodeID: 5, CloseTimeout: 11 * time.Minute}, ErrInvalidArgument},
		{"transfers", NodeOptions{NodeID: 5, MaxConcurrentTransfers: 1025}, ErrInvalidArgument},
		{"handshakes", NodeOptions{NodeID: 5, MaxHandshakes: 65537}, ErrInvalidArgument},
		{"NUL in address", NodeOptions{NodeID: 5, ListenAddr: "127.0.0.1:0\x00x"}, ErrInvalidArgument},
		// TEST-NET-1: a valid address no local interface has (no DNS involved).
		{"unbindable", NodeOptions{NodeID: 5, ListenAddr: "192.0.2.1:0"}, ErrIO},
	}
	for _, c := range bad {
		c := c
		_, err := OpenNode(e, &c.opts)
		wantCode(t, c.name, err, c.want)
	}
	_, err = OpenNode(nil, &NodeOptions{NodeID: 5})
	wantCode(t, "OpenNode(nil engine)", err, ErrInvalidArgument)

	n := openNodeT(t, e, &NodeOptions{NodeID: 5, CloseTimeout: NoCloseWait, HeartbeatInterval: 1500 * time.Microsecond})
	addr := addrOf(t, n)
	wantCode(t, "Connect to its own id", n.Connect(5, addr), ErrInvalidArgument)
	wantCode(t, "Connect to peer 0", n.Connect(0, addr), ErrInvalidArgument)
	wantCode(t, "Connect with a NUL", n.Connect(2, "127.0.0.1:1\x00"), ErrInvalidArgument)
	wantCode(t, "Connect to no address", n.Connect(2, "not an address"), ErrInvalidArgument)

	closed := nodeEngineT(t)
	if err := closed.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = OpenNode(closed, &NodeOptions{NodeID: 6})
	wantCode(t, "OpenNode on a closed engine", err, ErrClosed)
}

func TestNodeClosedAndNil(t *testing.T) {
	e := nodeEngineT(t)
	n := openNodeT(t, e, &NodeOptions{NodeID: 1})
	if _, err := n.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := n.Addr()
	wantCode(t, "Addr after Close", err, ErrClosed)
	wantCode(t, "Connect after Close", n.Connect(2, "127.0.0.1:1"), ErrClosed)
	_, err = n.Stats()
	wantCode(t, "Stats after Close", err, ErrClosed)
	_, err = n.LastError()
	wantCode(t, "LastError after Close", err, ErrClosed)
	_, err = n.Close()
	wantCode(t, "second Close", err, ErrClosed)

	var none *Node
	_, err = none.Addr()
	wantCode(t, "Addr of nil", err, ErrInvalidArgument)
	_, err = none.Stats()
	wantCode(t, "Stats of nil", err, ErrInvalidArgument)
	_, err = none.Close()
	wantCode(t, "Close of nil", err, ErrInvalidArgument)
}

// Close from OnEvent is ErrBusy and leaves the node open.
func TestNodeCloseFromOnEventIsBusy(t *testing.T) {
	e := nodeEngineT(t)
	var self atomic.Pointer[Node]
	results := make(chan error, 1)
	a := openNodeT(t, e, &NodeOptions{NodeID: 1, OnEvent: func(peer uint64, err error) {
		if err != nil {
			return
		}
		_, closeErr := self.Load().Close()
		select {
		case results <- closeErr:
		default:
		}
	}})
	self.Store(a)
	b := openNodeT(t, e, &NodeOptions{NodeID: 2})
	if err := b.Connect(1, addrOf(t, a)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-results:
		wantCode(t, "Close from OnEvent", err, ErrBusy)
	case <-time.After(60 * time.Second):
		t.Fatal("no OnEvent call")
	}
	if s := statsOf(t, a); s.Handshakes != 1 {
		t.Fatalf("the node must stay open: %+v", s)
	}
}

// keel runs OnEvent for the peer before Connect returns. A Close started
// meanwhile waits for that Connect, and an OnEvent calling the Node's
// methods in between sees ErrClosed instead of blocking (which would
// deadlock Close, Connect and the connection's reader).
func TestNodeCloseDuringConnectDoesNotDeadlock(t *testing.T) {
	e := nodeEngineT(t)
	a := openNodeT(t, e, &NodeOptions{NodeID: 1})
	var self atomic.Pointer[Node]
	inHandler := make(chan struct{})
	sawClosed := make(chan error, 1)
	b := openNodeT(t, e, &NodeOptions{NodeID: 2, OnEvent: func(peer uint64, err error) {
		if err != nil || peer != 1 {
			return
		}
		close(inHandler)
		// Until Close has begun; Stats must never block meanwhile.
		for {
			if _, err := self.Load().Stats(); err != nil {
				sawClosed <- err
				return
			}
			runtime.Gosched()
		}
	}})
	self.Store(b)
	addr := addrOf(t, a)
	connected := make(chan error, 1)
	go func() { connected <- b.Connect(1, addr) }()
	<-inHandler
	type closeResult struct {
		s   NodeStats
		err error
	}
	closed := make(chan closeResult, 1)
	go func() {
		s, err := b.Close()
		closed <- closeResult{s, err}
	}()
	wait := func(what string, ch <-chan error) error {
		select {
		case err := <-ch:
			return err
		case <-time.After(60 * time.Second):
			t.Fatalf("%s never returned", what)
			return nil
		}
	}
	wantCode(t, "Stats in OnEvent while closing", wait("Stats in OnEvent", sawClosed), ErrClosed)
	if err := wait("Connect", connected); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	select {
	case r := <-closed:
		if r.err != nil || r.s.Handshakes != 1 || r.s.ClosedByShutdown != 1 {
			t.Fatalf("Close: %+v, %v", r.s, r.err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Close never returned")
	}
}

// A Node dropped without Close is reported by its finalizer, not closed:
// it still accepts peers afterwards.
func TestNodeLeakIsReported(t *testing.T) {
	e := nodeEngineT(t)
	reported := make(chan string, 4)
	old := setLeakf(func(format string, args ...any) { reported <- fmt.Sprintf(format, args...) })
	defer setLeakf(old)
	var addr string
	func() {
		n, err := OpenNode(e, &NodeOptions{NodeID: 7})
		if err != nil {
			t.Fatal(err)
		}
		addr = addrOf(t, n)
	}()
	deadline := time.After(10 * time.Second)
	for seen := false; !seen; {
		runtime.GC()
		select {
		case m := <-reported:
			if !strings.Contains(m, "Node 7 on "+addr) {
				t.Fatalf("leak report %q does not name the node", m)
			}
			seen = true
		case <-deadline:
			t.Fatal("no leak report after the Node became unreachable")
		case <-time.After(10 * time.Millisecond):
		}
	}
	dialer := openNodeT(t, e, &NodeOptions{NodeID: 8, CloseTimeout: NoCloseWait})
	if err := dialer.Connect(7, addr); err != nil {
		t.Fatalf("a leaked node was closed behind the program's back: %v", err)
	}
}

// keel reports ErrClosed to OnEvent while Close runs, after the C handle
// is gone: OnEvent's calls on its Node then answer ErrClosed without
// reaching keel.
func TestNodeOnEventDuringCloseSeesClosed(t *testing.T) {
	e := nodeEngineT(t)
	var self atomic.Pointer[Node]
	type seen struct{ event, stats error }
	ch := make(chan seen, 8)
	a := openNodeT(t, e, &NodeOptions{NodeID: 1, CloseTimeout: time.Second, OnEvent: func(peer uint64, err error) {
		_, statsErr := self.Load().Stats()
		ch <- seen{err, statsErr}
	}})
	self.Store(a)
	b := openNodeT(t, e, &NodeOptions{NodeID: 2})
	if err := b.Connect(1, addrOf(t, a)); err != nil {
		t.Fatal(err)
	}
	if s := <-ch; s.event != nil || s.stats != nil { // a's side of the handshake, before the close
		t.Fatalf("ready event: %v, Stats in it: %v", s.event, s.stats)
	}
	fin, err := a.Close() // ends b's connection: ErrClosed to OnEvent, during the close
	if err != nil || fin.ClosedByShutdown != 1 {
		t.Fatalf("Close: %+v, %v", fin, err)
	}
	s := <-ch
	wantCode(t, "the event of the close", s.event, ErrClosed)
	wantCode(t, "Stats in OnEvent during Close", s.stats, ErrClosed)
	if len(ch) != 0 {
		t.Fatalf("%d more events", len(ch))
	}
}

// A second Close returns only once the first has closed the node: a
// caller that gets ErrClosed may then rely on the node being gone. The
// first Close is held inside by an OnEvent call it waits for.
func TestNodeSecondCloseWaitsForTheFirst(t *testing.T) {
	e := nodeEngineT(t)
	a := openNodeT(t, e, &NodeOptions{NodeID: 1})
	parked := make(chan struct{})
	release := make(chan struct{})
	var released atomic.Bool
	b, err := OpenNode(e, &NodeOptions{NodeID: 2, CloseTimeout: NoCloseWait, OnEvent: func(peer uint64, err error) {
		if errors.Is(err, ErrClosed) {
			close(parked)
			<-release
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Connect(1, addrOf(t, a)); err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	go func() { _, err := b.Close(); first <- err }()
	<-parked // the first Close waits for this OnEvent call
	waiting := onCloseWait(t)
	type result struct {
		err      error
		released bool
	}
	second := make(chan result, 1)
	go func() { _, err := b.Close(); second <- result{err, released.Load()} }()
	select {
	case <-waiting:
	case r := <-second:
		close(release)
		t.Fatalf("the second Close returned (%v) while the first was still closing", r.err)
	}
	released.Store(true)
	close(release)
	if err := <-first; err != nil {
		t.Fatalf("first Close: %v", err)
	}
	r := <-second
	wantCode(t, "second Close", r.err, ErrClosed)
	if !r.released {
		t.Fatal("the second Close returned before the first")
	}
}

// nonLoopbackIP returns an IPv4 address of this host that is not loopback,
// or skips the test when there is none.
func nonLoopbackIP(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Skipf("no interface addresses: %v", err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			return n.IP.String()
		}
	}
	t.Skip("this host has no non-loopback IPv4 address")
	return ""
}

// A Node without a secret refuses a non-loopback peer at once, and keel
// reports it to OnEvent on the goroutine that called Connect: the one
// OnEvent call that runs on a Go thread. A panic there must crash the
// program, as NodeOptions.OnEvent says. It must not unwind through keel's
// frames (skipping their cleanup: the dialed socket, Rust's own panic
// guard) into Connect's caller, where a recover would catch it and the
// program would carry on.
//
// The panicking program runs as a child process (this test binary, run
// again with KEEL_TEST_ONEVENT_PANIC set to the address to dial), which
// recovers around Connect: it must die of the panic all the same.
func TestNodeOnEventPanicInConnectCrashes(t *testing.T) {
	if addr := os.Getenv("KEEL_TEST_ONEVENT_PANIC"); addr != "" {
		onEventPanicChild(t, addr)
		return
	}
	ln, err := net.Listen("tcp", nonLoopbackIP(t)+":0")
	if err != nil {
		t.Skipf("cannot listen on a non-loopback address: %v", err)
	}
	defer ln.Close()
	out := runCrashingChild(t, "KEEL_TEST_ONEVENT_PANIC="+ln.Addr().String(), "OnEvent panics on purpose")
	if strings.Contains(out, "recovered from OnEvent") {
		t.Fatalf("a panic in OnEvent came out of Connect and was recovered; child output:\n%s", out)
	}
}

func onEventPanicChild(t *testing.T, addr string) {
	e := nodeEngineT(t)
	n := openNodeT(t, e, &NodeOptions{NodeID: 1, OnEvent: func(peer uint64, err error) {
		if err != nil {
			panic("OnEvent panics on purpose")
		}
	}})
	err := func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("recovered from OnEvent: %v", r)
			}
		}()
		return n.Connect(2, addr)
	}()
	// Reached only when the panic did not end the program.
	t.Logf("Connect: %v", err)
	fmt.Println(err)
}
