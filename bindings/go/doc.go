// Package keel is the Go binding of keel's write-ahead log (the keel_wal_*
// C API of libkeel).
//
// Build: run `make lib` at the repository root first. By default the
// package links target/release/libkeel.a statically; with the build tag
// keel_dynamic it links the installed libkeel.so found through pkg-config.
//
// Concurrency: a *WAL may be used from any number of goroutines at once
// (the C handle is internally synchronised); Close waits for calls in
// flight and every later call returns an error matching ErrClosed. A
// *Reader is a cursor and must not be used by two goroutines at once.
//
// Errors: every failure is an *Error carrying the library's status code
// and message. Compare with errors.Is against the Err* sentinels
// (errors.Is(err, keel.ErrTruncated)) or read the Code with errors.As.
//
// Resources: Close is the way to release a WAL or a Reader. A value that
// is garbage collected while still open is reported on the standard
// logger as a leak; it is never closed behind the caller's back.
package keel
