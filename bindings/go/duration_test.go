package keel

import (
	"errors"
	"math"
	"testing"
	"time"
)

// Every time.Duration the package hands keel in milliseconds is rounded
// up (a part of a millisecond never vanishes), never wraps around (a
// caller's math.MaxInt64 meaning "forever" is the longest time, not a
// negative number made huge or small), saturates at the C field's limit
// (an out-of-range value stays out of range for keel to refuse) and is
// refused when negative. The C options are read back as the package
// filled them.
func TestDurationsToMillisecondsRoundUpSaturateAndNeverWrap(t *testing.T) {
	const forever = time.Duration(math.MaxInt64)
	const maxMs = uint64(math.MaxInt64/int64(time.Millisecond)) + 1 // rounded up

	// ReadOptions.Timeout: uint64 milliseconds, no upper bound in keel
	// (a deadline past the clock's end is taken as a year away).
	for _, c := range []struct {
		d    time.Duration
		want uint64
	}{{0, 0}, {1, 1}, {time.Millisecond, 1}, {time.Millisecond + 1, 2}, {forever - 1, maxMs}, {forever, maxMs}} {
		o, err := readOptionsC(&ReadOptions{Timeout: c.d})
		if err != nil || uint64(o.timeout_ms) != c.want {
			t.Errorf("ReadOptions.Timeout %d ns: timeout_ms %d, %v; want %d", int64(c.d), uint64(o.timeout_ms), err, c.want)
		}
	}
	if _, err := readOptionsC(&ReadOptions{Timeout: -1}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("ReadOptions.Timeout -1 ns: %v, want ErrInvalidArgument", err)
	}

	// uint32 fields saturate at math.MaxUint32, which keel refuses.
	w, err := (&Options{SyncInterval: forever}).toC()
	if err != nil || uint64(w.sync_interval_ms) != math.MaxUint32 {
		t.Errorf("Options.SyncInterval forever: sync_interval_ms %d, %v; want %d", uint64(w.sync_interval_ms), err, uint64(math.MaxUint32))
	}
	w, err = (&Options{SyncInterval: 1500 * time.Microsecond}).toC()
	if err != nil || w.sync_interval_ms != 2 {
		t.Errorf("Options.SyncInterval 1.5 ms: sync_interval_ms %d, %v; want 2", uint64(w.sync_interval_ms), err)
	}
	if _, err := Open(t.TempDir(), &Options{Durability: DurabilityPeriodic, SyncInterval: forever}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Open with SyncInterval forever: %v, want ErrInvalidArgument", err)
	}
	e, err := (&EngineOptions{SyncInterval: forever, WriteStallTimeout: forever, FlushInterval: forever}).toC()
	if err != nil || uint64(e.sync_interval_ms) != math.MaxUint32 || uint64(e.write_stall_timeout_ms) != maxMs || uint64(e.flush_interval_ms) != maxMs {
		t.Errorf("EngineOptions forever: sync %d, stall %d, flush %d, %v", uint64(e.sync_interval_ms), uint64(e.write_stall_timeout_ms), uint64(e.flush_interval_ms), err)
	}
	n, err := (&NodeOptions{HandshakeTimeout: forever, HeartbeatInterval: forever, CloseTimeout: forever}).toC()
	if err != nil || uint64(n.c.handshake_timeout_ms) != math.MaxUint32 || uint64(n.c.heartbeat_interval_ms) != math.MaxUint32 || uint64(n.c.close_timeout_ms) != math.MaxUint32 {
		t.Errorf("NodeOptions forever: %+v, %v", n, err)
	}
	wo, err := (&WriterOptions{SoftCapTime: forever, CloseTimeout: forever}).toC("Adopt")
	if err != nil || uint64(wo.soft_cap_ms) != math.MaxUint32 || uint64(wo.close_timeout_ms) != math.MaxUint32 {
		t.Errorf("WriterOptions forever: soft %d, close %d, %v", uint64(wo.soft_cap_ms), uint64(wo.close_timeout_ms), err)
	}
	to, err := (&TransferOptions{AckTimeout: forever, FirstBackoff: forever, MaxBackoff: forever}).toC()
	if err != nil || uint64(to.ack_timeout_ms) != math.MaxUint32 || uint64(to.first_backoff_ms) != math.MaxUint32 || uint64(to.max_backoff_ms) != math.MaxUint32 {
		t.Errorf("TransferOptions forever: ack %d, first %d, max %d, %v", uint64(to.ack_timeout_ms), uint64(to.first_backoff_ms), uint64(to.max_backoff_ms), err)
	}

	// Negative durations that mean nothing are refused, by every options type.
	for what, err := range map[string]error{
		"EngineOptions.SyncInterval":      func() error { _, err := (&EngineOptions{SyncInterval: -1}).toC(); return err }(),
		"EngineOptions.WriteStallTimeout": func() error { _, err := (&EngineOptions{WriteStallTimeout: -1}).toC(); return err }(),
		"Options.SyncInterval":            func() error { _, err := (&Options{SyncInterval: -1}).toC(); return err }(),
		"NodeOptions.HandshakeTimeout":    func() error { _, err := (&NodeOptions{HandshakeTimeout: -1}).toC(); return err }(),
		"WriterOptions.SoftCapTime":       func() error { _, err := (&WriterOptions{SoftCapTime: -1}).toC("Adopt"); return err }(),
		"TransferOptions.MaxBackoff":      func() error { _, err := (&TransferOptions{MaxBackoff: -1}).toC(); return err }(),
	} {
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s -1 ns: %v, want ErrInvalidArgument", what, err)
		}
	}

	// The lease options: a lease of "forever" is refused (not below the
	// election timeout), a read timeout of "forever" is taken.
	s := leaseShard(t)
	h := &leaseHostT{}
	o := h.options()
	o.Lease = forever
	if err := s.ConfigureConsensus(o); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Lease forever: %v, want ErrInvalidArgument", err)
	}
	o = h.options()
	o.MaxRoundTrip = -time.Millisecond
	if err := s.ConfigureConsensus(o); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("MaxRoundTrip -1 ms: %v, want ErrInvalidArgument", err)
	}
	o = h.options()
	o.ReadTimeout = forever
	must(t, s.ConfigureConsensus(o))

	// A fence's TTL is rounded down (a lease never outlasts what was
	// asked), and under 1 ms, negative included, refused.
	eng, _ := openEngineT(t, "", nil)
	for _, ttl := range []time.Duration{-time.Second, -1, 0, time.Millisecond - 1} {
		if _, err := eng.FenceTryAcquire([]byte("b"), ttl); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("FenceTryAcquire ttl %d ns: %v, want ErrInvalidArgument", int64(ttl), err)
		}
	}
	if _, err := eng.FenceTryAcquire([]byte("b"), forever); err != nil {
		t.Errorf("FenceTryAcquire ttl forever: %v", err)
	}
}

// Durations keel reports (stats) saturate at the largest time.Duration
// instead of wrapping negative: a counter of nanoseconds or microseconds
// past it is still "very long", never "before it began".
func TestReportedDurationsSaturate(t *testing.T) {
	for _, c := range []struct {
		name string
		got  time.Duration
		want time.Duration
	}{
		{"ns 0", nsDuration(0), 0},
		{"ns 1", nsDuration(1), 1},
		{"ns MaxInt64", nsDuration(math.MaxInt64), math.MaxInt64},
		{"ns MaxInt64+1", nsDuration(math.MaxInt64 + 1), math.MaxInt64},
		{"ns MaxUint64", nsDuration(math.MaxUint64), math.MaxInt64},
		{"us 0", usDuration(0), 0},
		{"us 7", usDuration(7), 7 * time.Microsecond},
		{"us largest exact", usDuration(math.MaxInt64 / 1000), time.Duration(math.MaxInt64/1000) * time.Microsecond},
		{"us one past", usDuration(math.MaxInt64/1000 + 1), math.MaxInt64},
		{"us MaxUint64", usDuration(math.MaxUint64), math.MaxInt64},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d", c.name, int64(c.got), int64(c.want))
		}
	}
}
