package keel

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// openT opens a WAL in a fresh directory and closes it at the end of the
// test unless the test already did.
func openT(t *testing.T, opts *Options) (*WAL, string) {
	t.Helper()
	dir := t.TempDir()
	w, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() {
		if err := w.Close(); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return w, dir
}

// payload returns deterministic bytes of length n that differ per id and
// cover every byte value, so a shifted or mixed-up record is noticed.
func payload(id, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31 + id*7 + i/256)
	}
	return b
}

// readAll reads from a fresh reader until ErrNoMore.
func readAll(t *testing.T, w *WAL, from uint64, upto ReadUpto) (seqs []uint64, recs [][]byte) {
	t.Helper()
	r, err := w.NewReader(from, upto)
	if err != nil {
		t.Fatalf("NewReader(%d): %v", from, err)
	}
	defer r.Close()
	for {
		seq, data, err := r.Next()
		if err == ErrNoMore {
			return seqs, recs
		}
		if err != nil {
			t.Fatalf("Next after %d records: %v", len(seqs), err)
		}
		seqs = append(seqs, seq)
		recs = append(recs, data)
	}
}

func wantCode(t *testing.T, what string, err error, sentinel *Error) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("%s: got error %v, want %v", what, err, sentinel.Code)
	}
	var ke *Error
	if !errors.As(err, &ke) || ke.Code != sentinel.Code || ke.Message == "" {
		t.Fatalf("%s: want *Error with code %v and a message, got %#v", what, sentinel.Code, err)
	}
}

func TestRoundTripByteExact(t *testing.T) {
	w, _ := openT(t, nil)
	sizes := []int{1, 2, 255, 256, 4095, 4096, 4097, 100_000, 7}
	for i, n := range sizes {
		seq, err := w.Append(payload(i, n))
		if err != nil {
			t.Fatalf("Append #%d: %v", i, err)
		}
		if seq != uint64(i+1) {
			t.Fatalf("Append #%d got seq %d, want %d", i, seq, i+1)
		}
	}
	// Sync mode: every returned append is durable.
	if d, err := w.DurableSeq(); err != nil || d != uint64(len(sizes)) {
		t.Fatalf("DurableSeq = %d, %v; want %d", d, err, len(sizes))
	}
	seqs, recs := readAll(t, w, 0, ReadDurable)
	if len(recs) != len(sizes) {
		t.Fatalf("read %d records, want %d", len(recs), len(sizes))
	}
	for i, n := range sizes {
		if seqs[i] != uint64(i+1) || !bytes.Equal(recs[i], payload(i, n)) {
			t.Fatalf("record %d: seq %d, %d bytes; differs from what was written", i, seqs[i], len(recs[i]))
		}
	}
}

// A record far larger than the reader's first scratch buffer exercises the
// BUFFER_TOO_SMALL retry, and the records after it must still be intact.
func TestLargeRecordAfterSmall(t *testing.T) {
	w, _ := openT(t, nil)
	recs := [][]byte{payload(1, 10), payload(2, 3<<20), payload(3, 10), payload(4, 5000)}
	for _, r := range recs {
		if _, err := w.Append(r); err != nil {
			t.Fatal(err)
		}
	}
	_, got := readAll(t, w, 1, ReadDurable)
	if len(got) != len(recs) {
		t.Fatalf("read %d records, want %d", len(got), len(recs))
	}
	for i := range recs {
		if !bytes.Equal(got[i], recs[i]) {
			t.Fatalf("record %d differs (len %d vs %d)", i, len(got[i]), len(recs[i]))
		}
	}
}

func TestEmptyAndNilRecords(t *testing.T) {
	w, _ := openT(t, nil)
	in := [][]byte{nil, {}, []byte("x"), nil}
	for _, r := range in {
		if _, err := w.Append(r); err != nil {
			t.Fatalf("Append(%q): %v", r, err)
		}
	}
	if _, err := w.AppendBatch([][]byte{nil, {}, nil}); err != nil {
		t.Fatalf("AppendBatch of empty records: %v", err)
	}
	seqs, got := readAll(t, w, 0, ReadDurable)
	want := []string{"", "", "x", "", "", "", ""}
	if len(got) != len(want) {
		t.Fatalf("read %d records, want %d", len(got), len(want))
	}
	for i := range want {
		if string(got[i]) != want[i] || got[i] == nil || seqs[i] != uint64(i+1) {
			t.Fatalf("record %d = %q (nil=%v, seq %d), want %q", i, got[i], got[i] == nil, seqs[i], want[i])
		}
	}
}

func TestBatch(t *testing.T) {
	w, _ := openT(t, &Options{SegmentSize: 1 << 20, MaxRecordSize: 64 << 10})
	if _, err := w.Append([]byte("before")); err != nil {
		t.Fatal(err)
	}
	batch := [][]byte{[]byte("a"), payload(9, 3000), nil, []byte("last")}
	first, err := w.AppendBatch(batch)
	if err != nil {
		t.Fatalf("AppendBatch: %v", err)
	}
	if first != 2 {
		t.Fatalf("first seq of batch = %d, want 2", first)
	}
	if last, _ := w.LastSeq(); last != first+uint64(len(batch))-1 {
		t.Fatalf("LastSeq = %d, want %d", last, first+uint64(len(batch))-1)
	}
	seqs, got := readAll(t, w, first, ReadDurable)
	if len(got) != len(batch) {
		t.Fatalf("read %d records, want %d", len(got), len(batch))
	}
	for i := range batch {
		if seqs[i] != first+uint64(i) || !bytes.Equal(got[i], batch[i]) {
			t.Fatalf("batch record %d: seq %d, %q", i, seqs[i], got[i])
		}
	}

	_, err = w.AppendBatch(nil)
	wantCode(t, "empty batch", err, ErrInvalidArgument)
	// The whole batch counts against MaxRecordSize even if each part fits.
	_, err = w.AppendBatch([][]byte{make([]byte, 40<<10), make([]byte, 40<<10)})
	wantCode(t, "batch over MaxRecordSize", err, ErrInvalidArgument)
	_, err = w.Append(make([]byte, 64<<10+1))
	wantCode(t, "record over MaxRecordSize", err, ErrInvalidArgument)
	// The failed calls consumed no sequence number.
	if last, _ := w.LastSeq(); last != first+uint64(len(batch))-1 {
		t.Fatalf("LastSeq after rejected appends = %d", last)
	}
}

func TestReopenRecovers(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(dir, &Options{Durability: DurabilityNone})
	if err != nil {
		t.Fatal(err)
	}
	var want [][]byte
	for i := 0; i < 200; i++ {
		p := payload(i, i*17%900)
		want = append(want, p)
		if _, err := w.Append(p); err != nil {
			t.Fatal(err)
		}
	}
	batch := [][]byte{[]byte("b1"), []byte("b2")}
	want = append(want, batch...)
	if _, err := w.AppendBatch(batch); err != nil {
		t.Fatal(err)
	}
	// Close syncs even in DurabilityNone.
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	w, err = Open(dir, nil)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer w.Close()
	n := uint64(len(want))
	if last, _ := w.LastSeq(); last != n {
		t.Fatalf("LastSeq after reopen = %d, want %d", last, n)
	}
	if d, _ := w.DurableSeq(); d != n {
		t.Fatalf("DurableSeq after reopen = %d, want %d", d, n)
	}
	if f, _ := w.FirstSeq(); f != 1 {
		t.Fatalf("FirstSeq after reopen = %d, want 1", f)
	}
	_, got := readAll(t, w, 0, ReadDurable)
	if len(got) != len(want) {
		t.Fatalf("recovered %d records, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("recovered record %d differs", i+1)
		}
	}
	// The log continues after the recovered records.
	if seq, err := w.Append([]byte("next")); err != nil || seq != n+1 {
		t.Fatalf("Append after reopen = %d, %v; want %d", seq, err, n+1)
	}
}

// 32 goroutines append in sync mode (group commit) with a few batches mixed
// in: sequence numbers must be unique and dense, each goroutine's must
// increase, and every record must read back as written.
func TestConcurrentAppendSync(t *testing.T) {
	w, _ := openT(t, nil)
	const goroutines, ops = 32, 40
	var mu sync.Mutex
	written := map[uint64][]byte{}
	errs := make(chan error, goroutines)
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			var prev uint64
			for i := 0; i < ops; i++ {
				recs := [][]byte{[]byte(fmt.Sprintf("g%02d-i%03d-", g, i))}
				recs[0] = append(recs[0], payload(g*ops+i, (g*131+i*17)%700)...)
				var first uint64
				var err error
				if i%7 == 3 {
					recs = append(recs, []byte(fmt.Sprintf("g%02d-i%03d-b", g, i)), nil)
					first, err = w.AppendBatch(recs)
				} else {
					first, err = w.Append(recs[0])
				}
				if err != nil {
					errs <- fmt.Errorf("goroutine %d op %d: %w", g, i, err)
					return
				}
				if first <= prev {
					errs <- fmt.Errorf("goroutine %d: seq %d after %d", g, first, prev)
					return
				}
				prev = first + uint64(len(recs)) - 1
				mu.Lock()
				for k, r := range recs {
					if _, dup := written[first+uint64(k)]; dup {
						errs <- fmt.Errorf("seq %d handed out twice", first+uint64(k))
					}
					written[first+uint64(k)] = r
				}
				mu.Unlock()
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	n := uint64(len(written))
	for s := uint64(1); s <= n; s++ {
		if _, ok := written[s]; !ok {
			t.Fatalf("seqs are not dense: %d missing among %d", s, n)
		}
	}
	if last, _ := w.LastSeq(); last != n {
		t.Fatalf("LastSeq = %d, want %d", last, n)
	}
	if d, _ := w.DurableSeq(); d < n {
		t.Fatalf("DurableSeq = %d after %d sync appends returned", d, n)
	}
	seqs, got := readAll(t, w, 0, ReadDurable)
	if uint64(len(got)) != n {
		t.Fatalf("read %d records, want %d", len(got), n)
	}
	for i, s := range seqs {
		if s != uint64(i+1) || !bytes.Equal(got[i], written[s]) {
			t.Fatalf("record seq %d (position %d) differs from what was written", s, i)
		}
	}
}

// A reader opened in the middle returns exactly the tail, then ErrNoMore.
func TestReaderFromMiddle(t *testing.T) {
	w, _ := openT(t, nil)
	for i := 1; i <= 100; i++ {
		if _, err := w.Append([]byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	r, err := w.NewReader(50, ReadDurable)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for want := uint64(50); want <= 100; want++ {
		seq, data, err := r.Next()
		if err != nil || seq != want || string(data) != fmt.Sprint(want) {
			t.Fatalf("Next = %d, %q, %v; want %d", seq, data, err, want)
		}
	}
	_, _, err = r.Next()
	if err != ErrNoMore || !errors.Is(err, ErrNotFound) {
		t.Fatalf("Next at the end = %v, want ErrNoMore", err)
	}

	// Opening at LastSeq+1 is allowed (an empty reader); beyond is not.
	last, _ := w.LastSeq()
	r2, err := w.NewReader(last+1, ReadDurable)
	if err != nil {
		t.Fatalf("NewReader(last+1): %v", err)
	}
	if _, _, err := r2.Next(); err != ErrNoMore {
		t.Fatalf("Next on reader at last+1 = %v", err)
	}
	r2.Close()
	_, err = w.NewReader(last+2, ReadDurable)
	wantCode(t, "NewReader beyond the end", err, ErrInvalidArgument)
	_, err = w.NewReader(1, ReadUpto(7))
	wantCode(t, "NewReader with bad upto", err, ErrInvalidArgument)
}

// The reader follows the log: records appended after it returned ErrNoMore
// (or after it filled its read-ahead) come out of later Next calls.
func TestReaderFollowsLog(t *testing.T) {
	w, _ := openT(t, nil)
	r, err := w.NewReader(0, ReadDurable)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, _, err := r.Next(); err != ErrNoMore {
		t.Fatalf("Next on an empty log = %v, want ErrNoMore", err)
	}
	for i := 1; i <= 5; i++ {
		if _, err := w.Append([]byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
		seq, data, err := r.Next()
		if err != nil || seq != uint64(i) || string(data) != fmt.Sprint(i) {
			t.Fatalf("Next after append %d = %d, %q, %v", i, seq, data, err)
		}
		if _, _, err := r.Next(); err != ErrNoMore {
			t.Fatalf("Next after catching up = %v, want ErrNoMore", err)
		}
	}
}

// In DurabilityNone nothing is durable until Sync: a ReadDurable reader sees
// nothing, a ReadAppended reader sees everything.
func TestReadUptoDurableVersusAppended(t *testing.T) {
	w, _ := openT(t, &Options{Durability: DurabilityNone})
	for i := 0; i < 3; i++ {
		if _, err := w.Append([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if s, _ := readAll(t, w, 0, ReadAppended); len(s) != 3 {
		t.Fatalf("ReadAppended saw %d records, want 3", len(s))
	}
	if d, _ := w.DurableSeq(); d != 0 {
		t.Fatalf("DurableSeq = %d before any sync in DurabilityNone", d)
	}
	if s, _ := readAll(t, w, 0, ReadDurable); len(s) != 0 {
		t.Fatalf("ReadDurable saw %d records beyond DurableSeq 0", len(s))
	}
	if err := w.Sync(); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if d, _ := w.DurableSeq(); d != 3 {
		t.Fatalf("DurableSeq after Sync = %d, want 3", d)
	}
	if s, _ := readAll(t, w, 0, ReadDurable); len(s) != 3 {
		t.Fatalf("ReadDurable after Sync saw %d records, want 3", len(s))
	}
}

func TestPeriodicDurabilityAdvances(t *testing.T) {
	w, _ := openT(t, &Options{Durability: DurabilityPeriodic, SyncInterval: 5 * time.Millisecond})
	seq, err := w.Append([]byte("p"))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		d, err := w.DurableSeq()
		if err != nil {
			t.Fatal(err)
		}
		if d >= seq {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("DurableSeq stayed %d, the background sync never covered %d", d, seq)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Small segments so that Ack can delete whole ones: readers pin segments,
// keep_from holds records back, and a reader below FirstSeq gets
// ErrTruncated.
func TestTruncation(t *testing.T) {
	w, dir := openT(t, &Options{Durability: DurabilityNone, SegmentSize: 64 << 10})
	rec := make([]byte, 1000)
	for i := 0; i < 400; i++ {
		if _, err := w.Append(rec); err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
	}
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	last, _ := w.LastSeq()
	files := func() int {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	before := files()

	// A reader at 1 pins the first segment: Ack deletes nothing it needs.
	pin, err := w.NewReader(1, ReadDurable)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Ack(last); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	if f, _ := w.FirstSeq(); f != 1 {
		t.Fatalf("FirstSeq = %d while a reader pins seq 1", f)
	}
	if seq, _, err := pin.Next(); err != nil || seq != 1 {
		t.Fatalf("pinned reader Next = %d, %v", seq, err)
	}
	if err := pin.Close(); err != nil {
		t.Fatal(err)
	}

	// keep_from holds records >= 200 back whatever Ack says.
	if err := w.SetKeepFrom(200); err != nil {
		t.Fatalf("SetKeepFrom: %v", err)
	}
	if err := w.Ack(last); err != nil {
		t.Fatal(err)
	}
	first, _ := w.FirstSeq()
	if first <= 1 || first > 200 {
		t.Fatalf("FirstSeq = %d after Ack with keep_from 200, want in (1, 200]", first)
	}
	if err := w.SetKeepFrom(KeepNone); err != nil {
		t.Fatal(err)
	}
	if err := w.Ack(last); err != nil {
		t.Fatal(err)
	}
	first, _ = w.FirstSeq()
	if first <= 200 || first > last {
		t.Fatalf("FirstSeq = %d after releasing keep_from, want in (200, %d]", first, last)
	}
	if after := files(); after >= before {
		t.Fatalf("directory still holds %d entries (was %d) after truncation", after, before)
	}

	_, err = w.NewReader(1, ReadDurable)
	wantCode(t, "NewReader below FirstSeq", err, ErrTruncated)
	err = w.SetKeepFrom(1)
	wantCode(t, "SetKeepFrom below FirstSeq", err, ErrTruncated)
	err = w.Ack(last + 1)
	wantCode(t, "Ack beyond LastSeq", err, ErrInvalidArgument)

	// 0 means "from the first retained record".
	seqs, _ := readAll(t, w, 0, ReadDurable)
	if len(seqs) == 0 || seqs[0] != first || seqs[len(seqs)-1] != last {
		t.Fatalf("reader from 0 read %d records starting at %v, want %d..%d", len(seqs), seqs[:1], first, last)
	}
}

func TestInvalidOptions(t *testing.T) {
	cases := []struct {
		name string
		opts Options
	}{
		{"segment below 64 KiB", Options{SegmentSize: 1000}},
		{"segment above 4 GiB", Options{SegmentSize: 5 << 30}},
		{"durability out of range", Options{Durability: Durability(9)}},
		{"recovery mode out of range", Options{RecoveryMode: RecoveryMode(9)}},
		{"periodic interval above 60 s", Options{Durability: DurabilityPeriodic, SyncInterval: 2 * time.Minute}},
		{"periodic interval overflowing uint32 ms", Options{Durability: DurabilityPeriodic, SyncInterval: 1 << 62}},
		{"negative interval", Options{Durability: DurabilityPeriodic, SyncInterval: -time.Second}},
		{"max record above segment", Options{SegmentSize: 64 << 10, MaxRecordSize: 64 << 10}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			w, err := Open(dir, &c.opts)
			if err == nil {
				w.Close()
				t.Fatalf("Open accepted %+v", c.opts)
			}
			wantCode(t, "Open", err, ErrInvalidArgument)
		})
	}
	// An empty directory name is rejected by the library, a NUL byte by Go.
	_, err := Open("", nil)
	wantCode(t, "Open(\"\")", err, ErrInvalidArgument)
	base := t.TempDir()
	_, err = Open(filepath.Join(base, "a\x00b"), nil)
	wantCode(t, "Open with a NUL byte", err, ErrInvalidArgument)
	if ents, _ := os.ReadDir(base); len(ents) != 0 {
		t.Fatalf("Open with a NUL byte created %v", ents[0].Name())
	}
}

func TestSecondOpenIsBusy(t *testing.T) {
	w, dir := openT(t, nil)
	w2, err := Open(dir, nil)
	if err == nil {
		w2.Close()
		t.Fatal("second Open of the same directory succeeded")
	}
	wantCode(t, "second Open", err, ErrBusy)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// The lock goes with Close.
	w3, err := Open(dir, nil)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	w3.Close()
}

func TestUseAfterClose(t *testing.T) {
	w, _ := openT(t, nil)
	if _, err := w.Append([]byte("x")); err != nil {
		t.Fatal(err)
	}
	r, err := w.NewReader(0, ReadDurable)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := w.Close(); err != nil {
		t.Fatalf("first Close: %v", err)
	}
	wantClosed := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("%s after Close = %v, want ErrClosed", what, err)
		}
	}
	wantClosed("Close", w.Close())
	_, err = w.Append(nil)
	wantClosed("Append", err)
	_, err = w.AppendBatch([][]byte{{1}})
	wantClosed("AppendBatch", err)
	wantClosed("Sync", w.Sync())
	_, err = w.DurableSeq()
	wantClosed("DurableSeq", err)
	_, err = w.LastSeq()
	wantClosed("LastSeq", err)
	_, err = w.FirstSeq()
	wantClosed("FirstSeq", err)
	wantClosed("Ack", w.Ack(1))
	wantClosed("SetKeepFrom", w.SetKeepFrom(1))
	_, err = w.NewReader(0, ReadDurable)
	wantClosed("NewReader", err)

	// The reader outlives its WAL: the library reports CLOSED.
	_, _, err = r.Next()
	wantCode(t, "Reader.Next after WAL Close", err, ErrClosed)
	if err := r.Close(); err != nil {
		t.Fatalf("Reader.Close: %v", err)
	}
	wantClosed("Reader.Close twice", r.Close())
	_, _, err = r.Next()
	wantClosed("Reader.Next after Close", err)

	// A nil *WAL is an error, not a crash.
	var nilWAL *WAL
	if _, err := nilWAL.Append(nil); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("Append on nil *WAL = %v", err)
	}
}

// Close racing with appenders on other goroutines: each append either
// succeeds with a sequence number that survives reopening or fails with
// ErrClosed; nothing crashes (the race detector watches the Go side).
func TestCloseWhileAppending(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(dir, &Options{Durability: DurabilityNone})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var maxOK uint64
	start := make(chan struct{})
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for {
				seq, err := w.Append([]byte("r"))
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				if seq > maxOK {
					maxOK = seq
				}
				mu.Unlock()
			}
		}()
	}
	close(start)
	time.Sleep(20 * time.Millisecond)
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()

	w, err = Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if last, _ := w.LastSeq(); last < maxOK {
		t.Fatalf("reopened LastSeq %d < acknowledged %d", last, maxOK)
	}
}

// A reader polling on one goroutine while the WAL is closed on another
// gets its records, then ErrNoMore, then ErrClosed; it never crashes.
func TestReaderWhileWALCloses(t *testing.T) {
	w, _ := openT(t, nil)
	for i := 0; i < 10; i++ {
		if _, err := w.Append([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	r, err := w.NewReader(0, ReadDurable)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	done := make(chan error, 1)
	go func() {
		n := 0
		for {
			_, _, err := r.Next()
			switch {
			case err == nil:
				n++
			case err == ErrNoMore:
				runtime.Gosched()
			case errors.Is(err, ErrClosed):
				if n != 10 {
					err = fmt.Errorf("read %d records before ErrClosed, want 10", n)
				} else {
					err = nil
				}
				done <- err
				return
			default:
				done <- err
				return
			}
		}
	}()
	time.Sleep(10 * time.Millisecond)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the reader did not see ErrClosed after the WAL closed")
	}
}

func TestErrorValues(t *testing.T) {
	e := &Error{Code: StatusTruncated, Op: "NewReader", Message: "sequence 1 is below 5"}
	if !errors.Is(e, ErrTruncated) || errors.Is(e, ErrCorruption) {
		t.Fatal("errors.Is does not compare codes")
	}
	wrapped := fmt.Errorf("context: %w", e)
	if !errors.Is(wrapped, ErrTruncated) {
		t.Fatal("errors.Is does not see through wrapping")
	}
	if got := e.Error(); got != "keel: NewReader: TRUNCATED: sequence 1 is below 5" {
		t.Fatalf("Error() = %q", got)
	}
	// The Go constants carry the library's names (and so its numbering).
	names := map[Status]string{
		StatusOK: "OK", StatusIO: "IO", StatusCorruption: "CORRUPTION", StatusBusy: "BUSY",
		StatusClosed: "CLOSED", StatusTruncated: "TRUNCATED", StatusNoSpace: "NO_SPACE",
		StatusWrongKind: "WRONG_KIND", StatusResource: "RESOURCE", StatusFenced: "FENCED", StatusRefused: "REFUSED", StatusProtocol: "PROTOCOL",
		StatusMoved: "MOVED",
	}
	for s, want := range names {
		if s.String() != want {
			t.Errorf("Status(%d).String() = %q, want %q", s, s.String(), want)
		}
	}
	// The node transport's sentinels carry their codes.
	for sentinel, code := range map[*Error]Status{ErrRefused: StatusRefused, ErrProtocol: StatusProtocol, ErrFenced: StatusFenced, ErrMoved: StatusMoved} {
		if sentinel.Code != code || !errors.Is(&Error{Code: code, Message: "m"}, sentinel) {
			t.Errorf("sentinel of %v has code %v", code, sentinel.Code)
		}
	}
	if Status(999).String() != "UNKNOWN" {
		t.Errorf("unknown status named %q", Status(999).String())
	}
}

func TestVersionAndABI(t *testing.T) {
	if abiErr != nil {
		t.Fatalf("header and library disagree: %v", abiErr)
	}
	if err := checkABI(1, 2); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("checkABI(1, 2) = %v, want an ErrUnsupported error", err)
	}
	if v := Version(); strings.Count(v, ".") != 2 {
		t.Fatalf("Version() = %q", v)
	}
}

// A WAL dropped without Close is reported by its finalizer, not closed
// behind the program's back: the directory stays locked (Busy).
func TestLeakIsReportedNotClosed(t *testing.T) {
	// Not t.TempDir(): the leaked WAL lives on in this process, and its
	// worker may add its spare segment while the cleanup removes the
	// folder (seen once on a busy machine: "directory not empty"), so
	// the cleanup is best effort.
	dir, err := os.MkdirTemp("", "keel-leak-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	reported := make(chan string, 4)
	old := setLeakf(func(format string, args ...any) { reported <- fmt.Sprintf(format, args...) })
	defer setLeakf(old)

	func() {
		w, err := Open(dir, &Options{Durability: DurabilityNone})
		if err != nil {
			t.Fatal(err)
		}
		_ = w
	}()
	deadline := time.After(10 * time.Second)
	for {
		runtime.GC()
		select {
		case msg := <-reported:
			if !strings.Contains(msg, dir) {
				t.Fatalf("leak report %q does not name the directory", msg)
			}
			_, err := Open(dir, nil)
			wantCode(t, "Open of a leaked (still locked) directory", err, ErrBusy)
			return
		case <-deadline:
			t.Fatal("no leak report after the WAL became unreachable")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// The keel_dynamic variant links through pkg-config; it is built and one
// test run against the installed library when pkg-config knows keel.
func TestDynamicTagBuilds(t *testing.T) {
	if os.Getenv("KEEL_GO_INNER") != "" {
		t.Skip("inside the keel_dynamic run")
	}
	if testing.Short() {
		t.Skip("-short")
	}
	if err := exec.Command("pkg-config", "--exists", "keel").Run(); err != nil {
		t.Skip("pkg-config does not know keel (not installed); skipping the keel_dynamic build")
	}
	out, err := exec.Command("pkg-config", "--variable=libdir", "keel").Output()
	if err != nil {
		t.Fatalf("pkg-config --variable=libdir keel: %v", err)
	}
	libdir := strings.TrimSpace(string(out))
	cmd := exec.Command("go", "test", "-tags", "keel_dynamic", "-count=1", "-v", "-run", "TestRoundTripByteExact|TestVersionAndABI", ".")
	cmd.Env = append(os.Environ(), "KEEL_GO_INNER=1",
		"LD_LIBRARY_PATH="+libdir+string(filepath.ListSeparator)+os.Getenv("LD_LIBRARY_PATH"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go test -tags keel_dynamic: %v\n%s", err, out)
	} else if !bytes.Contains(out, []byte("--- PASS: TestRoundTripByteExact")) {
		t.Fatalf("the keel_dynamic run did not pass the round trip:\n%s", out)
	}
}

// A non-empty directory that holds no keel WAL file is refused unless
// AllowForeignFiles is set, and nothing is written into it.
func TestForeignDirectoryIsRefusedUnlessAllowed(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(dir, &Options{SegmentSize: 64 << 10})
	wantCode(t, "foreign directory", err, ErrInvalidArgument)
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("the refused open wrote into the directory: %v", entries)
	}
	w, err := Open(dir, &Options{SegmentSize: 64 << 10, AllowForeignFiles: true})
	if err != nil {
		t.Fatalf("Open with AllowForeignFiles: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// errors.Is with a typed nil *Error target (an unset `var want *keel.Error`)
// answers false; it dereferenced the target and panicked.
func TestErrorIsWithATypedNilTarget(t *testing.T) {
	var target *Error
	if errors.Is(error(newError("Get", StatusNotFound, "key absent")), target) {
		t.Fatal("errors.Is matched a nil *Error")
	}
}

// ErrNoMore, a Reader's "caught up", is NOT_FOUND to errors.Is(err,
// ErrNotFound), but no other NOT_FOUND error is ErrNoMore: a Get of an
// absent key matched it.
func TestOnlyErrNoMoreIsErrNoMore(t *testing.T) {
	absent := error(newError("Get", StatusNotFound, "key absent"))
	if errors.Is(absent, ErrNoMore) {
		t.Error("a Get's NOT_FOUND matched ErrNoMore")
	}
	if !errors.Is(absent, ErrNotFound) {
		t.Error("a Get's NOT_FOUND did not match ErrNotFound")
	}
	if !errors.Is(fmt.Errorf("following the log: %w", ErrNoMore), ErrNoMore) || !errors.Is(ErrNoMore, ErrNotFound) {
		t.Error("ErrNoMore, wrapped or not, did not match itself and ErrNotFound")
	}
}
