package keel

import (
	"errors"
	"testing"
	"time"
)

func TestFencedLeaseTable(t *testing.T) {
	dir := t.TempDir()
	e, _ := openEngineT(t, dir, nil)
	bucket := []byte("bucket")
	t1, err := e.FenceTryAcquire(bucket, time.Hour)
	if err != nil {
		t.Fatalf("FenceTryAcquire: %v", err)
	}
	if _, err := e.FenceTryAcquire(bucket, time.Hour); !errors.Is(err, ErrBusy) {
		t.Fatalf("second acquire: %v, want ErrBusy", err)
	}
	if _, err := e.FenceTryAcquire(bucket, time.Microsecond); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("sub-millisecond ttl: %v, want ErrInvalidArgument", err)
	}
	for _, c := range []struct {
		bucket string
		token  uint64
		want   bool
	}{{"bucket", t1, true}, {"bucket", t1 + 1, false}, {"other", t1, false}} {
		if ok, err := e.FenceValidate([]byte(c.bucket), c.token); err != nil || ok != c.want {
			t.Fatalf("FenceValidate(%s, %d) = %v, %v; want %v", c.bucket, c.token, ok, err, c.want)
		}
	}
	if ok, err := e.FenceRelease(bucket, t1); err != nil || !ok {
		t.Fatalf("FenceRelease = %v, %v; want true", ok, err)
	}
	if ok, err := e.FenceRelease(bucket, t1); err != nil || ok {
		t.Fatalf("second FenceRelease = %v, %v; want false", ok, err)
	}
	t2, err := e.FenceTryAcquire(bucket, time.Hour)
	if err != nil || t2 <= t1 {
		t.Fatalf("FenceTryAcquire after release = %d, %v; want > %d", t2, err, t1)
	}
	// The storage-side check: the newest token passes, an older one is fenced.
	if err := e.FenceCheck(bucket, t2); err != nil {
		t.Fatalf("FenceCheck(newest): %v", err)
	}
	if err := e.FenceCheck(bucket, t1); !errors.Is(err, ErrFenced) {
		t.Fatalf("FenceCheck(older): %v, want ErrFenced", err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := e.FenceValidate(bucket, t2); !errors.Is(err, ErrClosed) {
		t.Fatalf("FenceValidate on a closed engine: %v, want ErrClosed", err)
	}

	// After a reopen every lease has expired and tokens keep growing.
	e2, _ := openEngineT(t, dir, nil)
	if ok, err := e2.FenceValidate(bucket, t2); err != nil || ok {
		t.Fatalf("FenceValidate after reopen = %v, %v; want false", ok, err)
	}
	t3, err := e2.FenceTryAcquire(bucket, time.Hour)
	if err != nil || t3 <= t2 {
		t.Fatalf("FenceTryAcquire after reopen = %d, %v; want > %d", t3, err, t2)
	}
}
