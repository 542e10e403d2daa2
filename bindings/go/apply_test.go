package keel

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"syscall"
	"testing"
)

func putBatch(kv ...string) *Batch {
	var b Batch
	for i := 0; i+1 < len(kv); i += 2 {
		b.Put([]byte(kv[i]), []byte(kv[i+1]))
	}
	return &b
}

func appliedIndexT(t *testing.T, s *Shard) uint64 {
	t.Helper()
	i, err := s.AppliedIndex()
	if err != nil {
		t.Fatalf("AppliedIndex: %v", err)
	}
	return i
}

// Entries apply with their index; empty entries, refusals and duplicates
// behave as documented; the index and the tokens survive a reopen.
func TestApplyEntries(t *testing.T) {
	e, dir := openEngineT(t, "", fastOpts)
	s := openShardT(t, e, 1)
	if got := appliedIndexT(t, s); got != 0 {
		t.Fatalf("fresh shard applied index %d", got)
	}
	r, err := s.Apply(1, putBatch("k", "v"), &Fence{Bucket: []byte("jobs"), Token: 5})
	if err != nil || r.Refused != nil || r.Duplicate || r.OpCount != 1 || r.AppliedIndex != 1 || r.FirstVersion == 0 {
		t.Fatalf("entry 1: %+v, %v", r, err)
	}
	if r, err = s.Apply(2, nil, nil); err != nil || r.OpCount != 0 || r.AppliedIndex != 2 {
		t.Fatalf("empty entry 2: %+v, %v", r, err)
	}
	r, err = s.Apply(3, putBatch("x", "stale"), &Fence{Bucket: []byte("jobs"), Token: 4})
	if err != nil || !errors.Is(r.Refused, ErrFenced) || r.OpCount != 0 || r.AppliedIndex != 3 {
		t.Fatalf("stale entry 3: %+v, %v", r, err)
	}
	var wrong Batch
	wrong.Append([]byte("k"), []byte("item"))
	if r, err = s.Apply(4, &wrong, nil); err != nil || !errors.Is(r.Refused, ErrWrongKind) || r.AppliedIndex != 4 {
		t.Fatalf("wrong-kind entry 4: %+v, %v", r, err)
	}
	if r, err = s.Apply(3, putBatch("x", "again"), nil); err != nil || !r.Duplicate || r.AppliedIndex != 4 {
		t.Fatalf("duplicate entry 3: %+v, %v", r, err)
	}
	if _, err := s.Get([]byte("x")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a refused or duplicate entry wrote x: %v", err)
	}
	if _, err := s.Apply(0, nil, nil); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("index 0: %v", err)
	}
	// Fenced writes: the entries' token counts; the empty bucket is a bucket.
	if _, _, err := s.WriteFenced(putBatch("x", "1"), Fence{Bucket: []byte("jobs"), Token: 4}); !errors.Is(err, ErrFenced) {
		t.Fatalf("stale fenced write: %v", err)
	}
	if _, _, err := s.WriteFenced(putBatch("x", "1"), Fence{Bucket: []byte("jobs"), Token: 7}); err != nil {
		t.Fatalf("fenced write: %v", err)
	}
	if _, _, err := s.WriteFenced(putBatch("y", "1"), Fence{Token: 3}); err != nil {
		t.Fatalf("fenced write, empty bucket: %v", err)
	}
	if _, _, err := s.WriteFenced(putBatch("y", "2"), Fence{Token: 2}); !errors.Is(err, ErrFenced) {
		t.Fatalf("stale fenced write, empty bucket: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	e, _ = openEngineT(t, dir, fastOpts)
	s = openShardT(t, e, 1)
	if got := appliedIndexT(t, s); got != 4 {
		t.Fatalf("applied index after reopen %d, want 4", got)
	}
	if _, _, err := s.WriteFenced(putBatch("x", "2"), Fence{Bucket: []byte("jobs"), Token: 6}); !errors.Is(err, ErrFenced) {
		t.Fatalf("a reopen lowered the highest token: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Shard.Close: %v", err)
	}
	if _, err := s.AppliedIndex(); !errors.Is(err, ErrClosed) {
		t.Fatalf("AppliedIndex after close: %v", err)
	}
}

// Concurrent fenced writers: tokens accepted in version order never go
// down, refused ones are below the final highest, and the highest token
// is never refused. Run with -race.
func TestFencedWritesConcurrently(t *testing.T) {
	e, _ := openEngineT(t, "", fastOpts)
	s := openShardT(t, e, 1)
	const writers, writes = 6, 100
	type accepted struct{ version, token uint64 }
	var mu sync.Mutex
	var ok []accepted
	var refused []uint64
	var wg sync.WaitGroup
	for w := uint64(1); w <= writers; w++ {
		wg.Add(1)
		go func(w uint64) {
			defer wg.Done()
			for i := uint64(0); i < writes; i++ {
				token := w * (i/10 + 1)
				first, _, err := s.WriteFenced(putBatch(fmt.Sprintf("w/%d/%d", w, i), "v"), Fence{Bucket: []byte("b"), Token: token})
				mu.Lock()
				switch {
				case err == nil:
					ok = append(ok, accepted{first, token})
				case errors.Is(err, ErrFenced):
					refused = append(refused, token)
				default:
					t.Errorf("writer %d: %v", w, err)
				}
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	sort.Slice(ok, func(i, j int) bool { return ok[i].version < ok[j].version })
	for i := 1; i < len(ok); i++ {
		if ok[i].token < ok[i-1].token {
			t.Fatalf("token %d accepted at version %d after token %d", ok[i].token, ok[i].version, ok[i-1].token)
		}
	}
	highest := ok[len(ok)-1].token
	if want := uint64(writers * ((writes-1)/10 + 1)); highest != want {
		t.Fatalf("highest accepted token %d, want %d", highest, want)
	}
	for _, tok := range refused {
		if tok >= highest {
			t.Fatalf("token %d refused, highest %d", tok, highest)
		}
	}
}

// A batch holding an operation that does not fit the packed format fails
// Write, WriteFenced and Apply with ErrInvalidArgument whose Op names the
// call the user made (each said "Write"), and writes nothing.
func TestPackingErrorNamesTheCall(t *testing.T) {
	e, _ := openEngineT(t, "", fastOpts)
	s := openShardT(t, e, 1)
	// A body of 4 GiB: address space only, never touched (the length
	// check refuses it before any byte is read).
	huge, err := syscall.Mmap(-1, 0, math.MaxUint32+1, syscall.PROT_NONE, syscall.MAP_PRIVATE|syscall.MAP_ANON|syscall.MAP_NORESERVE)
	if err != nil {
		t.Fatalf("mmap 4 GiB of address space: %v", err)
	}
	defer syscall.Munmap(huge)
	var b Batch
	b.Put([]byte("k"), huge)
	calls := []struct {
		op   string
		call func() error
	}{
		{"Write", func() error { _, _, err := s.Write(&b); return err }},
		{"WriteFenced", func() error { _, _, err := s.WriteFenced(&b, Fence{Bucket: []byte("jobs"), Token: 1}); return err }},
		{"Apply", func() error { _, err := s.Apply(1, &b, nil); return err }},
	}
	for _, c := range calls {
		err := c.call()
		var ke *Error
		if !errors.As(err, &ke) || ke.Code != StatusInvalidArgument || ke.Op != c.op {
			t.Errorf("%s of an unpackable batch: %v; want ErrInvalidArgument with Op %q", c.op, err, c.op)
		}
	}
	if got := appliedIndexT(t, s); got != 0 {
		t.Errorf("applied index %d after a refused Apply", got)
	}
	if _, err := s.Get([]byte("k")); !errors.Is(err, ErrNotFound) {
		t.Errorf("an unpackable batch wrote k: %v", err)
	}
}
