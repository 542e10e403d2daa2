package keel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The batched socket writers (Net, Writer, Publisher) over real loopback
// TCP connections from package net, on both backends (the io_uring cases
// skip where keel falls back to sendmsg).

var backends = []Backend{BackendSendmsg, BackendIOUring}

// forBackends runs f as one subtest per backend.
func forBackends(t *testing.T, f func(t *testing.T, b Backend)) {
	for _, b := range backends {
		b := b
		t.Run(b.String(), func(t *testing.T) { f(t, b) })
	}
}

// openNetT opens a Net on backend b (skipping the test when io_uring was
// asked for and is unavailable) and closes it at the end of the test.
func openNetT(t *testing.T, b Backend, onEvent func(uint64, error)) *Net {
	t.Helper()
	n, err := OpenNet(&NetOptions{Backend: b, OnEvent: onEvent})
	if err != nil {
		t.Fatalf("OpenNet(%v): %v", b, err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Net.Close: %v", err)
		}
	})
	running, err := n.Backend()
	if err != nil {
		t.Fatalf("Backend: %v", err)
	}
	switch {
	case b == BackendSendmsg && running != BackendSendmsg:
		t.Fatalf("asked for sendmsg, runs %v", running)
	case b == BackendIOUring && running != BackendIOUring:
		t.Skipf("io_uring unavailable here: keel fell back to %v", running)
	}
	return n
}

// adoptT adopts conn on n with the default options, failing the test if
// keel refuses it.
func adoptT(t *testing.T, n *Net, conn *net.TCPConn) *Writer {
	t.Helper()
	w, err := Adopt(n, conn, nil)
	if err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	return w
}

// tcpPair returns both ends of a loopback TCP connection: keelSide for
// keel, peer to read from. Both are closed at the end of the test (before
// the Net: cleanups run last-registered first).
func tcpPair(t *testing.T) (keelSide, peer *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *net.TCPConn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c.(*net.TCPConn)
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	keelSide = <-accepted
	if keelSide == nil {
		t.Fatal("accept failed")
	}
	peer = d.(*net.TCPConn)
	t.Cleanup(func() {
		keelSide.Close()
		peer.Close()
	})
	return keelSide, peer
}

// readN reads exactly n bytes (or fails the test after 5 s).
func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, n)
	if got, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read %d of %d bytes: %v", got, n, err)
	}
	return buf
}

// readAllAsync reads n bytes on its own goroutine; the channel yields them
// (or what arrived before an error).
func readAllAsync(c net.Conn, n int) <-chan []byte {
	out := make(chan []byte, 1)
	go func() {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, n)
		got, _ := io.ReadFull(c, buf)
		out <- buf[:got]
	}()
	return out
}

// seesEOF tells whether the peer reads EOF (keel closed its side).
func seesEOF(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	var b [1]byte
	_, err := c.Read(b[:])
	return err == io.EOF
}

// msg returns message i of a test stream: 0 B to 64 KiB, some at or above
// the 4 KiB copy threshold (copy and reference paths), distinct contents.
func msg(i int) []byte {
	sizes := []int{1, 17, 0, 40, 4095, 4096, 100, 65536, 3, 9000, 512, 2}
	return payload(i, sizes[i%len(sizes)])
}

// statsWhen polls w's counters until done holds (io_uring counts a send
// when its completion is reaped, just after the bytes arrived); the 60 s
// bound only guards against a hang.
func statsWhen(t *testing.T, get func() (WriterStats, error), done func(WriterStats) bool) WriterStats {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		s, err := get()
		if err != nil {
			t.Fatalf("stats: %v", err)
		}
		if done(s) || time.Now().After(deadline) {
			return s
		}
		time.Sleep(time.Millisecond)
	}
}

type event struct {
	id  uint64
	err error
}

// eventSink returns an OnEvent handler that hands events to a buffered
// channel (never blocking the reactor thread).
func eventSink() (func(uint64, error), chan event) {
	ch := make(chan event, 16)
	return func(id uint64, err error) {
		select {
		case ch <- event{id, err}:
		default:
		}
	}, ch
}

func TestWriterRoundTripByteExact(t *testing.T) {
	forBackends(t, func(t *testing.T, b Backend) {
		n := openNetT(t, b, nil)
		keelSide, peer := tcpPair(t)
		w := adoptT(t, n, keelSide)
		// The documented ownership: closing the Go conn closes only Go's
		// descriptor; keel's duplicate keeps the connection up.
		if err := keelSide.Close(); err != nil {
			t.Fatal(err)
		}

		var want []byte
		for i := 0; i < 240; i++ {
			want = append(want, msg(i)...)
		}
		want = append(want, "xyzlast"...)
		got := readAllAsync(peer, len(want))

		items := uint64(0)
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		for i := 0; i < 240; {
			switch (i / 12) % 5 {
			case 0: // single sends
				must(w.Send(msg(i)))
				i++
				items++
			case 1: // a SendMore run of 11, the 12th a Send
				for k := 0; k < 11; k++ {
					must(w.SendMore(msg(i)))
					i++
				}
				must(w.Send(msg(i)))
				i++
				items += 12
			case 2: // SendMore run, then Flush
				for k := 0; k < 12; k++ {
					must(w.SendMore(msg(i)))
					i++
				}
				must(w.Flush())
				items += 12
			case 3: // one batch
				var batch [][]byte
				for k := 0; k < 12; k++ {
					batch = append(batch, msg(i))
					i++
				}
				must(w.SendBatch(batch))
				items += 12
			default: // SendBatchMore, then a SendBatch carrying both
				var a, c [][]byte
				for k := 0; k < 6; k++ {
					a = append(a, msg(i))
					i++
				}
				for k := 0; k < 6; k++ {
					c = append(c, msg(i))
					i++
				}
				must(w.SendBatchMore(a))
				must(w.SendBatch(c))
				items += 12
			}
		}
		must(w.SendBatch([][]byte{[]byte("xyz"), nil, []byte("last")}))
		items += 3
		if g := <-got; !bytes.Equal(g, want) {
			t.Fatalf("peer got %d bytes that differ from the %d sent", len(g), len(want))
		}

		s := statsWhen(t, w.Stats, func(s WriterStats) bool { return s.BytesSent == uint64(len(want)) })
		if s.Items != items || s.BytesSent != uint64(len(want)) || s.QueuedBytes != 0 {
			t.Fatalf("stats %+v: want Items %d, BytesSent %d, QueuedBytes 0", s, items, len(want))
		}
		// An empty message sent alone on an idle connection needs no send
		// and is not counted as sent: up to 4 here (index 2 of each run of
		// single sends).
		if s.ItemsSent > items || s.ItemsSent+4 < items {
			t.Fatalf("ItemsSent %d, want %d (or up to 4 fewer)", s.ItemsSent, items)
		}
		if s.Sends == 0 || s.Sends > s.Items || s.MaxItemsPerSend < 2 {
			t.Fatalf("batched traffic: Sends %d, Items %d, MaxItemsPerSend %d", s.Sends, s.Items, s.MaxItemsPerSend)
		}
		if (b == BackendIOUring) != (s.URingSends > 0) {
			t.Fatalf("backend %v made %d io_uring sends", b, s.URingSends)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if !seesEOF(peer) {
			t.Fatal("the peer did not see EOF after Writer.Close")
		}
	})
}

func TestWriterStatsCounters(t *testing.T) {
	forBackends(t, func(t *testing.T, b Backend) {
		n := openNetT(t, b, nil)
		keelSide, peer := tcpPair(t)
		w := adoptT(t, n, keelSide)
		defer w.Close()
		if w.ID() == 0 {
			t.Fatal("ID() is 0")
		}

		// R1: a lone message is one send, made before Send returned.
		if err := w.Send([]byte("PING")); err != nil {
			t.Fatal(err)
		}
		s, err := w.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if s.Sends != 1 || s.ImmediateSends != 1 || s.Items != 1 {
			t.Fatalf("after one Send: %+v", s)
		}
		if got := readN(t, peer, 4); string(got) != "PING" {
			t.Fatalf("got %q", got)
		}

		// SendMore makes no syscall; Flush sends the run in one send.
		for i := 0; i < 10; i++ {
			if err := w.SendMore([]byte("0123456789")); err != nil {
				t.Fatal(err)
			}
		}
		if s, _ = w.Stats(); s.Sends != 1 || s.Items != 11 || s.QueuedBytes != 100 {
			t.Fatalf("after 10 SendMore: %+v", s)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if got := readN(t, peer, 100); string(got) != strings.Repeat("0123456789", 10) {
			t.Fatalf("got %q", got)
		}
		s = statsWhen(t, w.Stats, func(s WriterStats) bool { return s.BytesSent == 104 })
		if s.Sends != 2 || s.ItemsSent != 11 || s.MaxItemsPerSend != 10 || s.BatchedPasses < 1 || s.FlushIdle < 1 {
			t.Fatalf("after Flush: %+v", s)
		}
		if d := s.ItemsPerSend(); d != 5.5 {
			t.Fatalf("ItemsPerSend = %v, want 5.5", d)
		}

		// A batch of 50 (below the quota) is one send, one cgo call.
		batch := make([][]byte, 50)
		for i := range batch {
			batch[i] = []byte{'m'}
		}
		if err := w.SendBatch(batch); err != nil {
			t.Fatal(err)
		}
		if got := readN(t, peer, 50); string(got) != strings.Repeat("m", 50) {
			t.Fatalf("got %q", got)
		}
		s = statsWhen(t, w.Stats, func(s WriterStats) bool { return s.BytesSent == 154 })
		if s.Sends != 3 || s.Items != 61 || s.ItemsSent != 61 || s.MaxItemsPerSend != 50 || s.Sends > s.Items {
			t.Fatalf("after SendBatch(50): %+v", s)
		}
	})
}

func TestPublisherFanOut(t *testing.T) {
	forBackends(t, func(t *testing.T, b Backend) {
		n := openNetT(t, b, nil)
		p, err := NewPublisher(n, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		var peers [3]*net.TCPConn
		var ids [3]uint64
		for k := range peers {
			keelSide, peer := tcpPair(t)
			peers[k] = peer
			if ids[k], err = p.Subscribe(keelSide); err != nil {
				t.Fatalf("Subscribe: %v", err)
			}
			keelSide.Close() // Go's descriptor only: keel holds its own
		}
		if ids[0] == ids[1] || ids[1] == ids[2] || ids[0] == ids[2] {
			t.Fatalf("ids not unique: %v", ids)
		}

		const messages, every = 300, 10
		var want []byte
		for i := 0; i < messages; i++ {
			want = append(want, msg(i)...)
		}
		var got [3]<-chan []byte
		for k := range peers {
			got[k] = readAllAsync(peers[k], len(want))
		}
		for i := 0; i < messages; i++ {
			if err := p.Publish(msg(i), i%every == every-1); err != nil {
				t.Fatalf("Publish %d: %v", i, err)
			}
		}
		if err := p.Flush(); err != nil {
			t.Fatal(err)
		}
		for k := range got {
			if g := <-got[k]; !bytes.Equal(g, want) {
				t.Fatalf("subscriber %d got %d bytes that differ from the %d published", k, len(g), len(want))
			}
		}
		for k, id := range ids {
			s := statsWhen(t, func() (WriterStats, error) { return p.SubscriberStats(id) },
				func(s WriterStats) bool { return s.BytesSent == uint64(len(want)) })
			if s.Items != messages || s.ItemsSent != messages || s.BytesSent != uint64(len(want)) || s.Sends > s.Items {
				t.Fatalf("subscriber %d stats %+v", k, s)
			}
		}
		ps, err := p.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if ps.Published != messages || ps.Subscribers != 3 || ps.CutOff != 0 || ps.Flushes != messages/every+1 ||
			ps.ItemsSent != 3*messages || ps.BytesSent != 3*uint64(len(want)) || ps.Sends > ps.ItemsSent {
			t.Fatalf("publisher stats %+v", ps)
		}

		_, err = p.SubscriberStats(ids[0] + ids[1] + ids[2] + 1000)
		wantCode(t, "SubscriberStats(unknown)", err, ErrNotFound)
		wantCode(t, "Unsubscribe(unknown)", p.Unsubscribe(987654321), ErrNotFound)
		if err := p.Unsubscribe(ids[0]); err != nil {
			t.Fatal(err)
		}
		if !seesEOF(peers[0]) {
			t.Fatal("no EOF after Unsubscribe")
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if !seesEOF(peers[1]) || !seesEOF(peers[2]) {
			t.Fatal("no EOF after Publisher.Close")
		}
	})
}

// parkedOnEvent returns an OnEvent that, the first time it runs, reports
// its connection id on inEvent, waits until proceed is closed, then sends
// what act returns on fromEvent.
func parkedOnEvent(act func(id uint64) error) (onEvent func(uint64, error), inEvent <-chan uint64, proceed chan<- struct{}, fromEvent <-chan error) {
	in, release, from := make(chan uint64, 1), make(chan struct{}), make(chan error, 1)
	var first sync.Once
	onEvent = func(id uint64, err error) {
		first.Do(func() {
			in <- id
			<-release
			from <- act(id)
		})
	}
	return onEvent, in, release, from
}

// subscribeAndReset subscribes a socket whose peer then resets it, and
// publishes until OnEvent reports that subscriber on inEvent; its id.
func subscribeAndReset(t *testing.T, p *Publisher, inEvent <-chan uint64) uint64 {
	t.Helper()
	keelSide, peer := tcpPair(t)
	id, err := p.Subscribe(keelSide)
	if err != nil {
		t.Fatal(err)
	}
	keelSide.Close()
	must(t, peer.SetLinger(0))
	peer.Close() // a reset: the next sends fail and OnEvent runs
	chunk := bytes.Repeat([]byte{'x'}, 8192)
	for {
		must(t, p.Publish(chunk, true))
		select {
		case got := <-inEvent:
			if got != id {
				t.Fatalf("OnEvent for %d, want %d", got, id)
			}
			return id
		default:
			runtime.Gosched()
		}
	}
}

// unsubscribeInFlight starts Unsubscribe(id) on a goroutine and returns
// once it is inside keel (the subscriber is off the list), where it waits
// for the subscriber's running OnEvent; its result comes on the channel.
func unsubscribeInFlight(p *Publisher, id uint64) <-chan error {
	unsubscribed := make(chan error, 1)
	go func() { unsubscribed <- p.Unsubscribe(id) }()
	for {
		if _, err := p.SubscriberStats(id); errors.Is(err, ErrNotFound) {
			return unsubscribed
		}
		runtime.Gosched()
	}
}

// A subscriber's OnEvent calls the Publisher while the host unsubscribes
// that subscriber (keel waits for the running OnEvent) and closes the
// Publisher: the OnEvent's call fails with ErrClosed at once instead of
// queueing behind the Close, which waits for the Unsubscribe, which waits
// for the OnEvent. Ordered by observations, not by time: the Unsubscribe is
// inside keel once the subscriber is gone from the list, the Close has
// begun once the Publisher answers ErrClosed.
func TestPublisherCloseBesideAnUnsubscribeThatWaitsForOnEvent(t *testing.T) {
	var p *Publisher
	onEvent, inEvent, proceed, fromEvent := parkedOnEvent(func(id uint64) error { return p.Unsubscribe(id) })
	n := openNetT(t, BackendSendmsg, onEvent)
	p, err := NewPublisher(n, nil)
	if err != nil {
		t.Fatal(err)
	}
	id := subscribeAndReset(t, p, inEvent)
	unsubscribed := unsubscribeInFlight(p, id)
	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	for {
		if _, err := p.Stats(); errors.Is(err, ErrClosed) {
			break
		}
		runtime.Gosched()
	}
	close(proceed)
	wantCode(t, "Unsubscribe from OnEvent during Close", <-fromEvent, ErrClosed)
	if err := <-unsubscribed; err != nil {
		t.Fatalf("Unsubscribe: %v", err)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// The peer resets mid-stream (SO_LINGER 0): exactly one event, ErrIO, for
// this writer's id; the failing Send returns ErrIO (or ErrClosed once keel
// noticed first), later ones ErrClosed.
func TestWriterPeerResetOneEvent(t *testing.T) {
	forBackends(t, func(t *testing.T, b Backend) {
		onEvent, events := eventSink()
		n := openNetT(t, b, onEvent)
		keelSide, peer := tcpPair(t)
		w := adoptT(t, n, keelSide)
		defer w.Close()
		if err := w.Send([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		readN(t, peer, 5)
		if err := peer.SetLinger(0); err != nil {
			t.Fatal(err)
		}
		peer.Close() // RST

		chunk := bytes.Repeat([]byte{'x'}, 8192)
		var sendErr error
		for i := 0; i < 5000 && sendErr == nil; i++ {
			if sendErr = w.Send(chunk); sendErr == nil {
				time.Sleep(time.Millisecond)
			}
		}
		if !errors.Is(sendErr, ErrIO) && !errors.Is(sendErr, ErrClosed) {
			t.Fatalf("Send after the reset: %v, want ErrIO or ErrClosed", sendErr)
		}
		var ev event
		select {
		case ev = <-events:
		case <-time.After(5 * time.Second):
			t.Fatal("no event after the reset")
		}
		wantCode(t, "the event", ev.err, ErrIO)
		if ev.id != w.ID() {
			t.Fatalf("event for connection %d, the writer is %d", ev.id, w.ID())
		}
		wantCode(t, "Send after the event", w.Send([]byte("late")), ErrClosed)
		// (Items may be 1: keel may see the reset on the idle socket first.)
		if s, err := w.Stats(); err != nil || s.Items < 1 || s.BytesSent < 5 {
			t.Fatalf("stats of a connection keel closed: %+v, %v", s, err)
		}
		time.Sleep(50 * time.Millisecond) // a second report would arrive meanwhile
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
		if len(events) != 0 {
			t.Fatalf("%d more events after the first", len(events))
		}
	})
}

// OnEvent may close the Writer it reports but not its Net (ErrBusy; the
// Net stays usable).
func TestOnEventClosesWriterNotNet(t *testing.T) {
	forBackends(t, func(t *testing.T, b Backend) {
		var nRef atomic.Pointer[Net]
		var writer atomic.Pointer[Writer]
		results := make(chan [2]error, 1)
		n := openNetT(t, b, func(id uint64, err error) {
			select {
			case results <- [2]error{writer.Load().Close(), nRef.Load().Close()}:
			default: // never block the reactor
			}
		})
		nRef.Store(n)
		keelSide, peer := tcpPair(t)
		w, err := Adopt(n, keelSide, &WriterOptions{CloseTimeout: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		writer.Store(w)
		// The peer never reads: fill its socket until keel queues, then
		// reset, so the reactor finds the error on its own.
		chunk := make([]byte, 65536)
		for i := 0; i < 512; i++ {
			if err := w.Send(chunk); err != nil {
				t.Fatal(err)
			}
			if s, _ := w.Stats(); s.QueuedBytes > 0 {
				break
			}
		}
		peer.SetLinger(0)
		peer.Close()
		var got [2]error
		select {
		case got = <-results:
		case <-time.After(5 * time.Second):
			t.Fatal("no event after the reset")
		}
		if got[0] != nil {
			t.Fatalf("Writer.Close from OnEvent: %v", got[0])
		}
		wantCode(t, "Net.Close from OnEvent", got[1], ErrBusy)
		wantCode(t, "Send after OnEvent closed the writer", w.Send([]byte("x")), ErrClosed)
		if _, err := n.Backend(); err != nil {
			t.Fatalf("the net must stay open: %v", err)
		}
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

// Net.Close from the OnEvent of another Net answers ErrBusy (keel's
// keel_net_close refuses any reactor thread: it would join a reactor that
// may be in a callback closing this one) and leaves that Net open, as
// from its own OnEvent: it still answers, and a later Close closes it.
// The Net was left half closed instead: Go had taken its handle away
// before keel refused, so every later call answered ErrClosed and no
// Close could free it.
func TestNetCloseFromAnotherNetsOnEventLeavesItOpen(t *testing.T) {
	nb := openNetT(t, BackendSendmsg, nil)
	fromEvent := make(chan error, 1)
	var once sync.Once
	na := openNetT(t, BackendSendmsg, func(uint64, error) {
		once.Do(func() { fromEvent <- nb.Close() })
	})
	keelSide, peer := tcpPair(t)
	w, err := Adopt(na, keelSide, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	must(t, peer.SetLinger(0))
	peer.Close() // RST: the sends fail and A's OnEvent runs
	chunk := bytes.Repeat([]byte{'x'}, 8192)
	var got error
	for done := false; !done; {
		select {
		case got = <-fromEvent:
			done = true
		default:
			_ = w.Send(chunk)
			runtime.Gosched()
		}
	}
	wantCode(t, "Net B's Close from Net A's OnEvent", got, ErrBusy)
	if _, err := nb.Backend(); err != nil {
		t.Fatalf("Net B must stay open: %v", err)
	}
	if err := nb.Close(); err != nil {
		t.Fatalf("Net B's Close after the refused one: %v", err)
	}
}

// Adopt and Subscribe hand keel a new duplicate of conn's descriptor each
// time: the same conn adopted twice on one Net would be two Writers on
// one socket, interleaving their messages. The second is refused (as a
// Writer or a subscriber) and the first keeps the socket.
func TestAdoptingOneConnTwiceIsRefused(t *testing.T) {
	forBackends(t, func(t *testing.T, b Backend) {
		n := openNetT(t, b, nil)
		keelSide, peer := tcpPair(t)
		w := adoptT(t, n, keelSide)
		defer w.Close()
		w2, err := Adopt(n, keelSide, nil)
		if err == nil {
			w2.Close()
		}
		wantCode(t, "Adopt of an adopted conn", err, ErrInvalidArgument)
		p, err := NewPublisher(n, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		_, err = p.Subscribe(keelSide)
		wantCode(t, "Subscribe of an adopted conn", err, ErrInvalidArgument)
		must(t, w.Send([]byte("one writer")))
		if got := readN(t, peer, 10); string(got) != "one writer" {
			t.Fatalf("the peer read %q", got)
		}
	})
}

// Many goroutines send on one Writer while the peer checks that each
// goroutine's messages arrive whole and in its order; then Close races
// with senders, which see nil or ErrClosed.
func TestWriterConcurrentSenders(t *testing.T) {
	n := openNetT(t, BackendDefault, nil)
	keelSide, peer := tcpPair(t)
	w := adoptT(t, n, keelSide)
	const senders, each, size = 8, 300, 16
	total := senders * each * size
	got := readAllAsync(peer, total)
	var wg sync.WaitGroup
	for g := 0; g < senders; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				m := make([]byte, size)
				binary.LittleEndian.PutUint32(m[0:], uint32(g))
				binary.LittleEndian.PutUint32(m[4:], uint32(i))
				var err error
				switch i % 3 {
				case 0:
					err = w.Send(m)
				case 1:
					err = w.SendMore(m)
				default:
					err = w.SendBatch([][]byte{m[:8], m[8:]})
				}
				if err != nil {
					t.Errorf("sender %d: %v", g, err)
					return
				}
			}
			if err := w.Flush(); err != nil {
				t.Errorf("Flush: %v", err)
			}
		}(g)
	}
	wg.Wait()
	data := <-got
	if len(data) != total {
		t.Fatalf("peer got %d of %d bytes", len(data), total)
	}
	next := make([]uint32, senders)
	for at := 0; at < total; at += size {
		g := binary.LittleEndian.Uint32(data[at:])
		i := binary.LittleEndian.Uint32(data[at+4:])
		if g >= senders || i != next[g] {
			t.Fatalf("at byte %d: sender %d message %d, want message %d", at, g, i, next[g])
		}
		next[g]++
	}

	var racing sync.WaitGroup
	for g := 0; g < 4; g++ {
		racing.Add(1)
		go func() {
			defer racing.Done()
			for i := 0; i < 200; i++ {
				if err := w.Send([]byte("r")); err != nil {
					if !errors.Is(err, ErrClosed) {
						t.Errorf("Send racing Close: %v", err)
					}
					return
				}
			}
		}()
	}
	time.Sleep(time.Millisecond)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	racing.Wait()
}

func TestWriterMisuse(t *testing.T) {
	_, err := OpenNet(&NetOptions{Backend: 7, OnEvent: func(uint64, error) {}})
	wantCode(t, "OpenNet(Backend 7)", err, ErrInvalidArgument)

	n := openNetT(t, BackendDefault, nil)
	_, err = AdoptFD(n, -1, nil)
	wantCode(t, "AdoptFD(-1)", err, ErrInvalidArgument)
	_, err = AdoptFD(n, 1<<40, nil)
	wantCode(t, "AdoptFD(1<<40)", err, ErrInvalidArgument)
	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer pw.Close()
	_, err = AdoptFD(n, int(pw.Fd()), nil)
	wantCode(t, "AdoptFD(pipe)", err, ErrInvalidArgument)
	if _, err := pw.Write([]byte("x")); err != nil {
		t.Fatalf("keel closed a refused fd: %v", err)
	}
	_, err = Adopt(n, nil, nil)
	wantCode(t, "Adopt(nil conn)", err, ErrInvalidArgument)
	_, err = Adopt(n, pw, nil) // a syscall.Conn, but not a socket
	wantCode(t, "Adopt(pipe)", err, ErrInvalidArgument)

	keelSide, peer := tcpPair(t)
	for _, bad := range []*WriterOptions{
		{Quota: 2_000_000},
		{IOVMax: 1025},
		{SoftCapBytes: 10, HardCapBytes: 5},
		{CloseTimeout: -time.Second},
		{SoftCapTime: 1000 * time.Hour},
	} {
		_, err = Adopt(n, keelSide, bad)
		wantCode(t, fmt.Sprintf("Adopt(%+v)", *bad), err, ErrInvalidArgument)
		_, err = NewPublisher(n, bad)
		wantCode(t, fmt.Sprintf("NewPublisher(%+v)", *bad), err, ErrInvalidArgument)
	}
	_, err = Adopt(nil, keelSide, nil)
	wantCode(t, "Adopt(nil net)", err, ErrInvalidArgument)

	// NoCap disables the caps; a short CloseTimeout keeps Net.Close quick.
	w, err := Adopt(n, keelSide, &WriterOptions{SoftCapBytes: NoCap, HardCapBytes: NoCap, CloseTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, "SendBatch(nil)", w.SendBatch(nil), ErrInvalidArgument)
	if err := w.SendBatch([][]byte{{}, nil}); err != nil {
		t.Fatalf("a batch of empty messages: %v", err)
	}
	if err := w.Send(nil); err != nil {
		t.Fatalf("Send(nil): %v", err)
	}
	var nilW *Writer
	wantCode(t, "nil Writer Send", nilW.Send(nil), ErrInvalidArgument)
	wantCode(t, "nil Writer Close", nilW.Close(), ErrInvalidArgument)
	var nilN *Net
	wantCode(t, "nil Net Close", nilN.Close(), ErrInvalidArgument)
	var nilP *Publisher
	wantCode(t, "nil Publisher Publish", nilP.Publish(nil, false), ErrInvalidArgument)

	p, err := NewPublisher(n, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.SubscribeFD(-1)
	wantCode(t, "SubscribeFD(-1)", err, ErrInvalidArgument)
	_, err = p.Subscribe(nil)
	wantCode(t, "Subscribe(nil)", err, ErrInvalidArgument)

	// The net closed first: writers and publishers answer ErrClosed (from
	// keel) and still Close cleanly; keel closed the writer's socket.
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "Net.Close twice", n.Close(), ErrClosed)
	_, err = n.Backend()
	wantCode(t, "Backend after Close", err, ErrClosed)
	_, err = Adopt(n, keelSide, nil)
	wantCode(t, "Adopt on a closed net", err, ErrClosed)
	_, err = NewPublisher(n, nil)
	wantCode(t, "NewPublisher on a closed net", err, ErrClosed)
	wantCode(t, "Send after Net.Close", w.Send([]byte("x")), ErrClosed)
	wantCode(t, "Publish after Net.Close", p.Publish([]byte("x"), true), ErrClosed)
	if !seesEOF(peer) {
		t.Fatal("Net.Close did not close the writer's socket")
	}
	id := w.ID()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if w.ID() != id {
		t.Fatal("ID changed on Close")
	}
	for what, err := range map[string]error{
		"Send":          w.Send(nil),
		"SendMore":      w.SendMore(nil),
		"SendBatch":     w.SendBatch([][]byte{{1}}),
		"SendBatchMore": w.SendBatchMore([][]byte{{1}}),
		"Flush":         w.Flush(),
		"Close":         w.Close(),
	} {
		wantCode(t, "Writer."+what+" after Close", err, ErrClosed)
	}
	_, err = w.Stats()
	wantCode(t, "Writer.Stats after Close", err, ErrClosed)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "Publisher.Close twice", p.Close(), ErrClosed)
	wantCode(t, "Publish after Close", p.Publish(nil, false), ErrClosed)
	wantCode(t, "Flush after Close", p.Flush(), ErrClosed)
	wantCode(t, "Unsubscribe after Close", p.Unsubscribe(1), ErrClosed)
	_, err = p.Subscribe(keelSide)
	wantCode(t, "Subscribe after Close", err, ErrClosed)
	_, err = p.Stats()
	wantCode(t, "Stats after Close", err, ErrClosed)
}

// A Net and a Writer dropped without Close are reported by their
// finalizers, not closed: the Writer's connection stays up.
func TestNetAndWriterLeaksAreReported(t *testing.T) {
	reported := make(chan string, 8)
	old := setLeakf(func(format string, args ...any) { reported <- fmt.Sprintf(format, args...) })
	defer setLeakf(old)
	keelSide, peer := tcpPair(t)
	func() {
		n, err := OpenNet(nil)
		if err != nil {
			t.Fatal(err)
		}
		w := adoptT(t, n, keelSide)
		if err := w.Send([]byte("still here")); err != nil {
			t.Fatal(err)
		}
	}()
	sawNet, sawWriter := false, false
	deadline := time.After(10 * time.Second)
	for !sawNet || !sawWriter {
		runtime.GC()
		select {
		case m := <-reported:
			sawNet = sawNet || strings.Contains(m, "Net was garbage collected")
			sawWriter = sawWriter || strings.Contains(m, "Writer (connection")
		case <-deadline:
			t.Fatalf("leak reports: Net %v, Writer %v", sawNet, sawWriter)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if got := readN(t, peer, 10); string(got) != "still here" {
		t.Fatalf("got %q", got)
	}
	peer.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	var b [1]byte
	if _, err := peer.Read(b[:]); err == io.EOF {
		t.Fatal("a leaked writer's connection was closed behind the program's back")
	}
}

// Fallback: nothing fell back for a sendmsg net; a net that asked for
// io_uring either runs it or says why not (c-tests/test_net.c forces a
// fallback with a seccomp filter in a child process).
func TestNetFallback(t *testing.T) {
	n := openNetT(t, BackendSendmsg, nil)
	if code, reason, err := n.Fallback(); err != nil || code != FallbackNone || reason != "" {
		t.Fatalf("Fallback of a sendmsg net: %v %q %v", code, reason, err)
	}
	u, err := OpenNet(&NetOptions{Backend: BackendIOUring})
	if err != nil {
		t.Fatal(err)
	}
	running, err := u.Backend()
	if err != nil {
		t.Fatal(err)
	}
	code, reason, err := u.Fallback()
	switch {
	case err != nil:
		t.Fatal(err)
	case running == BackendIOUring && (code != FallbackNone || reason != ""):
		t.Fatalf("io_uring runs but Fallback says %v %q", code, reason)
	case running != BackendIOUring && (code == FallbackNone || reason == ""):
		t.Fatalf("io_uring fell back but Fallback says %v %q", code, reason)
	}
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := u.Fallback(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Fallback of a closed net: %v", err)
	}
}

// Publisher.Close called from OnEvent answers ErrBusy and leaves the
// publisher open, as Net.Close does: an Unsubscribe of that subscriber in
// flight on another goroutine waits, inside keel, for the running OnEvent,
// and Close waiting for the Unsubscribe deadlocked. Waits are on state; the
// 30 s bound is a failure guard.
func TestPublisherCloseFromOnEventIsBusy(t *testing.T) {
	var p *Publisher
	onEvent, inEvent, proceed, fromEvent := parkedOnEvent(func(id uint64) error { return p.Close() })
	// No t.Cleanup on the Net: on a deadlock its Close would hang too.
	n, err := OpenNet(&NetOptions{Backend: BackendSendmsg, OnEvent: onEvent})
	if err != nil {
		t.Fatal(err)
	}
	p, err = NewPublisher(n, nil)
	if err != nil {
		t.Fatal(err)
	}
	id := subscribeAndReset(t, p, inEvent)
	unsubscribed := unsubscribeInFlight(p, id)
	close(proceed)
	select {
	case err := <-fromEvent:
		wantCode(t, "Publisher.Close from OnEvent", err, ErrBusy)
	case <-time.After(30 * time.Second):
		t.Fatal("deadlock: Publisher.Close from OnEvent waits for an Unsubscribe in flight, which waits for that OnEvent")
	}
	must(t, <-unsubscribed)
	must(t, p.Close())
	must(t, n.Close())
}

// A Writer's Close from the OnEvent of another Net answers at once while a
// first Close runs (a proxy bridging a connection on Net A with one on Net
// B closes the pair when either side ends): the first Close waits in
// keel_writer_close for A's running OnEvent, which waits for what B's
// does. Ordered by observations (testHookCloseWaits), no timing.
func TestWriterCloseFromAnotherNetsOnEventAnswersAtOnce(t *testing.T) {
	var wa atomic.Pointer[Writer]
	inA, bDone, abort := make(chan struct{}), make(chan struct{}), make(chan struct{})
	fromB := make(chan error, 1)
	var onceA, onceB sync.Once
	na := openNetT(t, BackendSendmsg, func(uint64, error) {
		onceA.Do(func() {
			close(inA)
			select { // the proxy: the pair ends once B's side did
			case <-bDone:
			case <-abort:
			}
		})
	})
	nb := openNetT(t, BackendSendmsg, func(uint64, error) {
		onceB.Do(func() {
			fromB <- wa.Load().Close()
			close(bDone)
		})
	})
	ka, peerA := tcpPair(t)
	kb, peerB := tcpPair(t)
	w1, err := Adopt(na, ka, nil)
	if err != nil {
		t.Fatal(err)
	}
	wa.Store(w1)
	w2, err := Adopt(nb, kb, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	chunk := bytes.Repeat([]byte{'x'}, 8192)
	must(t, peerA.SetLinger(0))
	peerA.Close()
	for done := false; !done; {
		select {
		case <-inA:
			done = true
		default:
			_ = w1.Send(chunk)
			runtime.Gosched()
		}
	}
	first := make(chan error, 1)
	go func() { first <- w1.Close() }() // waits for A's running OnEvent
	untilClosing(w1.calls)
	waiting := onCloseWait(t)
	must(t, peerB.SetLinger(0))
	peerB.Close()
	for done := false; !done; {
		select {
		case err := <-fromB:
			wantCode(t, "Writer.Close from another Net's OnEvent", err, ErrClosed)
			done = true
		case <-waiting:
			t.Errorf("Writer.Close from Net B's OnEvent waits for the first Close, which waits for Net A's OnEvent: with A's OnEvent waiting for B's, a deadlock")
			done = true
		default:
			_ = w2.Send(chunk)
			runtime.Gosched()
		}
	}
	close(abort)
	<-first
}

// The reactor thread's id is the OnEvent callback's only while it runs:
// a thread that ended may have its id given to another by the kernel (the
// reactor thread ends while the Net is open when keel's reactor
// panics), and a goroutine there that calls Net.Close is not in OnEvent
// and must not be answered ErrBusy (a Close refused so leaks the net).
// The test plays the kernel: once an OnEvent call has returned, the
// calling thread's id reads as the one OnEvent ran on.
func TestNetCloseOnAThreadThatGotTheReactorsIDIsNotBusy(t *testing.T) {
	var callbackThread atomic.Int64
	events := make(chan struct{}, 16)
	n, err := OpenNet(&NetOptions{Backend: BackendSendmsg, OnEvent: func(uint64, error) {
		callbackThread.Store(int64(syscall.Gettid()))
		select {
		case events <- struct{}{}:
		default:
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() }) // after threadID is restored
	keelSide, peer := tcpPair(t)
	w := adoptT(t, n, keelSide)
	peer.SetLinger(0)
	peer.Close() // RST: the sends fail and OnEvent runs
	chunk := make([]byte, 8192)
	for i := 0; i < 5000 && w.Send(chunk) == nil; i++ {
		time.Sleep(time.Millisecond)
	}
	select {
	case <-events:
	case <-time.After(5 * time.Second):
		t.Fatal("no event after the reset")
	}
	// Returns once the OnEvent call for w has returned (keel waits for it).
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	defer func(real func() int) { threadID = real }(threadID)
	threadID = func() int { return int(callbackThread.Load()) }
	if err := n.Close(); err != nil {
		t.Fatalf("Net.Close on a thread that got the reactor thread's id: %v", err)
	}
}
