//go:build keel_dynamic

package keel

// With -tags keel_dynamic the header and the shared library come from an
// installed keel found through pkg-config (keel.pc), e.g.
//   PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig go build -tags keel_dynamic
// The binary then needs libkeel.so at run time (LD_LIBRARY_PATH or rpath).

/*
#cgo pkg-config: keel
*/
import "C"
