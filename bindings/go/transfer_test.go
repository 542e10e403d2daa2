package keel

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Shard transfer (StartTransfer, Transfer) between two engines and two
// nodes in one process over real loopback sockets, under -race: a shard
// moves while a writer goroutine writes, the host hands it over, the
// digests agree and the source answers ErrMoved; the progress callback
// runs through a cgo handle; a cancelled transfer settles cancelled and a
// restart resumes it by WAL delta; closed transfers and bad options.
// Waits are on Wait or the callback (a channel), never on time; the
// bounds only turn a hang into a failure.

// transferSide is an engine without a background flush (its WAL keeps
// what a restart resumes from) and its node.
func transferSide(t *testing.T, id uint64) (*Engine, *Node) {
	t.Helper()
	e, _ := openEngineT(t, "", &EngineOptions{FlushInterval: NoBackgroundFlush})
	n, err := OpenNode(e, &NodeOptions{NodeID: id})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := n.Close(); err != nil && !errors.Is(err, ErrClosed) {
			t.Error(err)
		}
	})
	return e, n
}

func transferPair(t *testing.T) (*Engine, *Node, *Engine, *Node) {
	t.Helper()
	ea, a := transferSide(t, 1)
	eb, b := transferSide(t, 2)
	addr, err := b.Addr()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Connect(2, addr); err != nil {
		t.Fatal(err)
	}
	return ea, a, eb, b
}

func fillShard(t *testing.T, s *Shard, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := s.Put([]byte(fmt.Sprintf("k%04d", i%700)), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
}

// stageSink returns an OnProgress that hands each new stage to a channel.
func stageSink() (func(TransferProgress), chan TransferStage) {
	ch := make(chan TransferStage, 1024)
	var mu sync.Mutex
	last := TransferStage(99)
	return func(p TransferProgress) {
		mu.Lock()
		defer mu.Unlock()
		if p.Stage != last {
			last = p.Stage
			select {
			case ch <- p.Stage:
			default:
			}
		}
	}, ch
}

func waitStage(t *testing.T, ch <-chan TransferStage, want TransferStage) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		select {
		case s := <-ch:
			if s == want {
				return
			}
		case <-deadline:
			t.Fatalf("the transfer never reached %v", want)
		}
	}
}

func digestOf(t *testing.T, s *Shard) [32]byte {
	t.Helper()
	d, err := s.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestTransferHandsAShardOverWhileAWriterWrites(t *testing.T) {
	ea, a, eb, b := transferPair(t)
	shard, err := ea.OpenShard(7, true)
	if err != nil {
		t.Fatal(err)
	}
	fillShard(t, shard, 1000)
	if err := b.ExpectTransfer(7, 1); err != nil {
		t.Fatal(err)
	}
	sink, stages := stageSink()
	// OnProgress holds the transfer's thread at its first WaitingFinish
	// report until release: the two Finish calls below then meet a
	// transfer that cannot act on the first yet, so the second is ErrBusy
	// (one that finished in between would answer that it is over).
	held := make(chan struct{})
	release := sync.OnceFunc(func() { close(held) })
	var holdOnce sync.Once
	onProgress := func(p TransferProgress) {
		sink(p)
		if p.Stage == StageWaitingFinish {
			holdOnce.Do(func() { <-held })
		}
	}
	tr, err := StartTransfer(a, shard, 7, 2, &TransferOptions{MaxBatchRecords: 16, MaxBatchBytes: 4096, OnProgress: onProgress})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	defer release() // before Close, which waits for the transfer's thread

	type write struct {
		key     string
		version uint64
	}
	// The writer pauses after 2000 writes until the test saw the transfer
	// catch up: a writer faster than the link keeps it catching up, so
	// the test, not the scheduler, decides when it can.
	done := make(chan []write)
	resume := make(chan struct{})
	go func() {
		var acked []write
		for i := 0; ; i++ {
			if i == 2000 {
				<-resume
			}
			key := fmt.Sprintf("w%04d", i%500)
			v, err := shard.Put([]byte(key), []byte(fmt.Sprint(i)))
			if err != nil {
				if !errors.Is(err, ErrMoved) {
					t.Errorf("put: %v", err)
				}
				done <- acked
				return
			}
			acked = append(acked, write{key, v})
		}
	}()
	waitStage(t, stages, StageWaitingFinish)
	if err := tr.Wait(0); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Wait while it waits for the host: %v", err)
	}
	if err := tr.ConfirmHandOver(); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("ConfirmHandOver before the hand-over: %v", err)
	}
	close(resume)
	if err := tr.Finish(FinishHandOver); err != nil {
		t.Fatal(err)
	}
	if err := tr.Finish(FinishCopy); !errors.Is(err, ErrBusy) {
		t.Fatalf("a second finish: %v", err)
	}
	release()
	if err := tr.Wait(-1); err != nil {
		t.Fatal(err)
	}
	acked := <-done
	stage, failure, err := tr.Status()
	if err != nil || failure != nil || stage != StageDone {
		t.Fatalf("status %v, %v, %v", stage, failure, err)
	}
	p, err := tr.Progress()
	if err != nil {
		t.Fatal(err)
	}
	if !p.HandedOver || p.OpsSent != p.OpsTotal || p.MaxBatchesInMemory > 2 {
		t.Fatalf("progress %+v", p)
	}
	if _, err := shard.Put([]byte("late"), []byte("x")); !errors.Is(err, ErrMoved) {
		t.Fatalf("a write after the hand-over: %v", err)
	}
	got, err := eb.OpenShard(7, false)
	if err != nil {
		t.Fatal(err)
	}
	if digestOf(t, got) != digestOf(t, shard) {
		t.Fatal("the digests differ")
	}
	if len(acked) > 0 {
		last := acked[len(acked)-1]
		v, err := got.Get([]byte(last.key))
		if err != nil || v.Version != last.version {
			t.Fatalf("the last acknowledged write %+v: %+v, %v", last, v, err)
		}
	}
	// The host confirms the hand-over: the source's shard goes.
	if err := tr.ConfirmHandOver(); err != nil {
		t.Fatal(err)
	}
	if _, err := shard.Put([]byte("late"), []byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("a write after the confirmation: %v", err)
	}
	if err := tr.ConfirmHandOver(); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a second confirmation: %v", err)
	}
	if _, err := ea.OpenShard(7, false); !errors.Is(err, ErrNotFound) {
		t.Fatalf("opening the dropped shard: %v", err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("a second Close: %v", err)
	}
	if _, _, err := tr.Status(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Status after Close: %v", err)
	}
}

func TestTransferCancelThenRestart(t *testing.T) {
	ea, a, eb, b := transferPair(t)
	shard, err := ea.OpenShard(8, true)
	if err != nil {
		t.Fatal(err)
	}
	fillShard(t, shard, 500)
	if err := b.ExpectTransfer(8, 1); err != nil {
		t.Fatal(err)
	}
	onProgress, stages := stageSink()
	tr, err := StartTransfer(a, shard, 8, 2, &TransferOptions{MaxRetries: 3, FirstBackoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond, OnProgress: onProgress})
	if err != nil {
		t.Fatal(err)
	}
	waitStage(t, stages, StageWaitingFinish)
	// Close from another goroutine ends a Wait in flight: it cancels first.
	waited := make(chan error)
	go func() { waited <- tr.Wait(-1) }()
	if err := tr.Cancel(); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	if stage, failure, err := tr.Status(); err != nil || failure != nil || stage != StageCancelled {
		t.Fatalf("status %v, %v, %v", stage, failure, err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := eb.OpenShard(8, false); !errors.Is(err, ErrBusy) {
		t.Fatalf("the receiver's shard is still incoming: %v", err)
	}

	// Sequential: the benchmark's baseline resumes the shard as well.
	again, err := StartTransfer(a, shard, 8, 2, &TransferOptions{Method: TransferWALDelta, AutoFinish: FinishCopy, Sequential: true})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if err := again.Wait(-1); err != nil {
		t.Fatal(err)
	}
	p, err := again.Progress()
	if err != nil {
		t.Fatal(err)
	}
	if p.Stage != StageDone || p.Snapshot {
		t.Fatalf("the restart did not resume by WAL delta: %+v", p)
	}
	got, err := eb.OpenShard(8, false)
	if err != nil {
		t.Fatal(err)
	}
	if digestOf(t, got) != digestOf(t, shard) {
		t.Fatal("the digests differ")
	}
}

func TestTransferRefusalsAndBadOptions(t *testing.T) {
	ea, a, _, b := transferPair(t)
	shard, err := ea.OpenShard(9, true)
	if err != nil {
		t.Fatal(err)
	}
	fillShard(t, shard, 10)
	if _, err := StartTransfer(a, shard, 9, 2, &TransferOptions{Method: 9}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("method 9: %v", err)
	}
	if _, err := StartTransfer(a, shard, 9, 2, &TransferOptions{MaxBatchBytes: 1}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("tiny batches: %v", err)
	}
	for name, o := range map[string]*TransferOptions{
		"1001 retries":                 {MaxRetries: 1001},
		"retries and none":             {MaxRetries: 2, NoRetries: true},
		"a negative backoff":           {FirstBackoff: -time.Millisecond},
		"a first backoff past the max": {FirstBackoff: 50 * time.Millisecond, MaxBackoff: 10 * time.Millisecond},
	} {
		if _, err := StartTransfer(a, shard, 9, 2, o); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("%s: %v", name, err)
		}
	}
	// Peer 0, the node itself, and a shard id the shard is not are refused
	// at once (a confirmed hand-over drops that id from the engine).
	for name, tr := range map[string]struct {
		id   uint32
		peer uint64
	}{"peer 0": {9, 0}, "the node itself": {9, 1}, "another id": {10, 2}} {
		if _, err := StartTransfer(a, shard, tr.id, tr.peer, nil); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if err := b.ExpectTransfer(9, 0); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("peer 0: %v", err)
	}
	// Not announced: the transfer fails with ErrRefused.
	tr, err := StartTransfer(a, shard, 9, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Wait(-1); err != nil {
		t.Fatal(err)
	}
	stage, failure, err := tr.Status()
	if err != nil || stage != StageFailed || !errors.Is(failure, ErrRefused) {
		t.Fatalf("status %v, %v, %v", stage, failure, err)
	}
	if err := tr.Finish(FinishNone); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("FinishNone: %v", err)
	}
	if err := shard.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := shard.Digest(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Digest of a closed shard: %v", err)
	}
	if _, err := StartTransfer(a, shard, 9, 2, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("a closed shard: %v", err)
	}
}

// Wait and Close from OnProgress would wait for the transfer's own thread,
// which runs the callback: both answer ErrBusy and leave the transfer
// running to the end.
func TestTransferWaitAndCloseFromOnProgressAreBusy(t *testing.T) {
	ea, a, _, b := transferPair(t)
	shard, err := ea.OpenShard(9, true)
	if err != nil {
		t.Fatal(err)
	}
	fillShard(t, shard, 50)
	if err := b.ExpectTransfer(9, 1); err != nil {
		t.Fatal(err)
	}
	var tr atomic.Pointer[Transfer]
	started := make(chan struct{})
	type answers struct{ wait, close error }
	inCallback := make(chan answers, 1)
	var once sync.Once
	onProgress := func(TransferProgress) {
		<-started // the test has stored the Transfer
		once.Do(func() { inCallback <- answers{tr.Load().Wait(0), tr.Load().Close()} })
	}
	got, err := StartTransfer(a, shard, 9, 2, &TransferOptions{AutoFinish: FinishCopy, OnProgress: onProgress})
	if err != nil {
		t.Fatal(err)
	}
	tr.Store(got)
	close(started)
	r := <-inCallback
	wantCode(t, "Wait from OnProgress", r.wait, ErrBusy)
	wantCode(t, "Close from OnProgress", r.close, ErrBusy)
	if err := got.Wait(-1); err != nil {
		t.Fatal(err)
	}
	if stage, failure, err := got.Status(); err != nil || failure != nil || stage != StageDone {
		t.Fatalf("status %v, %v, %v", stage, failure, err)
	}
	if err := got.Close(); err != nil {
		t.Fatal(err)
	}
}

// A Transfer outlives its thread: once the transfer is over, keel's
// thread for it ends, and Linux may give that thread's id to a new
// thread, one of Go's say. A goroutine there that calls Wait or Close is
// not in OnProgress and must not be answered ErrBusy (a Close refused so
// leaks the transfer's handle). The test plays the kernel: once the
// transfer is settled, the calling thread's id reads as the one
// OnProgress ran on.
func TestTransferWaitAndCloseOnAThreadThatGotItsThreadsIDAreNotBusy(t *testing.T) {
	ea, a, _, b := transferPair(t)
	shard, err := ea.OpenShard(10, true)
	if err != nil {
		t.Fatal(err)
	}
	fillShard(t, shard, 50)
	if err := b.ExpectTransfer(10, 1); err != nil {
		t.Fatal(err)
	}
	var callbackThread atomic.Int64
	onProgress := func(TransferProgress) { callbackThread.Store(int64(syscall.Gettid())) }
	tr, err := StartTransfer(a, shard, 10, 2, &TransferOptions{AutoFinish: FinishCopy, OnProgress: onProgress})
	if err != nil {
		t.Fatal(err)
	}
	// Settled: the last OnProgress call has returned.
	if err := tr.Wait(-1); err != nil {
		t.Fatal(err)
	}
	if callbackThread.Load() == 0 {
		t.Fatal("OnProgress never ran")
	}
	defer func(real func() int) { threadID = real }(threadID)
	threadID = func() int { return int(callbackThread.Load()) }
	if err := tr.Wait(0); err != nil {
		t.Fatalf("Wait on a thread that got the transfer thread's id: %v", err)
	}
	if err := tr.Close(); err != nil {
		t.Fatalf("Close on a thread that got the transfer thread's id: %v", err)
	}
}
