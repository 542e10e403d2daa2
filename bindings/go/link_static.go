//go:build !keel_dynamic

package keel

// Default: link libkeel.a from the source tree (run `make lib` first), so
// the resulting Go binary does not need libkeel.so at run time. The -l
// flags are what `rustc --print native-static-libs` names for a Rust
// staticlib on Linux/glibc: the Rust standard library inside libkeel.a
// needs them.

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: ${SRCDIR}/../../target/release/libkeel.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
*/
import "C"
