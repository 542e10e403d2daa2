package keel

// #include <stdint.h>
import "C"

import (
	"fmt"
	"math"
	"time"
)

// millis is d in whole milliseconds for a C field whose largest value is
// limit; the one conversion of a time.Duration to keel's milliseconds.
//
//   - Rounded up: a part of a millisecond must not vanish, neither from a
//     margin of the lease check (which would then pass a lease it should
//     refuse) nor from a timeout (which would turn into 0, "the default").
//     A caller that must round down (a lease granted, a bound that
//     shortens what it allows) passes d.Truncate(time.Millisecond).
//   - Never wraps: d/time.Millisecond cannot overflow, where
//     d+time.Millisecond-1 would for a d near math.MaxInt64 (a caller's
//     "forever"), turning it negative and then huge or small in C.
//   - Saturates at limit: a duration out of the field's range stays out of
//     range, for keel to refuse (ErrInvalidArgument) or to take as "as
//     long as it gets" when the field has no bound, instead of wrapping
//     around the C type.
//   - Negative d is ErrInvalidArgument for op, naming the field: a caller
//     for which a negative value means something (NoBackgroundFlush,
//     NoCloseWait, Transfer.Wait's no limit) handles it first.
func millis(op, name string, d time.Duration, limit uint64) (uint64, error) {
	if d < 0 {
		return 0, newError(op, StatusInvalidArgument, fmt.Sprintf("%s %v is negative", name, d))
	}
	ms := uint64(d / time.Millisecond)
	if d%time.Millisecond != 0 {
		ms++
	}
	return min(ms, limit), nil
}

// nsDuration is a count of nanoseconds from keel (a stats field) as a
// time.Duration, saturating at its largest value instead of wrapping
// negative: the one conversion of keel's durations back to Go.
func nsDuration(ns uint64) time.Duration {
	if ns > math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(ns)
}

// usDuration is nsDuration for a count of microseconds.
func usDuration(us uint64) time.Duration {
	if us > math.MaxInt64/uint64(time.Microsecond) {
		return math.MaxInt64
	}
	return time.Duration(us) * time.Microsecond
}

// msOption is a uint32_t millisecond field of a C options struct and the
// duration for it; 0 keeps the library's default.
type msOption struct {
	name string
	d    time.Duration
	dst  *C.uint32_t
}

// setMillis32 writes each option's duration into its field, converted by
// millis; the first negative one is ErrInvalidArgument for op.
func setMillis32(op string, opts ...msOption) error {
	for _, o := range opts {
		if o.d == 0 {
			continue // the library's default
		}
		ms, err := millis(op, o.name, o.d, math.MaxUint32)
		if err != nil {
			return err
		}
		*o.dst = C.uint32_t(ms)
	}
	return nil
}
