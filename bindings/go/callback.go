package keel

// The Go functions C calls. A file of their own: with //export the cgo
// preamble may hold declarations only (it is copied into two C files).

/*
#include <stdint.h>
#include "keel.h"
*/
import "C"

import (
	"fmt"
	"runtime/cgo"
	"runtime/debug"
)

// keelGoNetEvent is the Net event callback, called by keel_go_net_event
// (net.go) on the keel-net reactor thread with the Net's cgo.Handle.
//
//export keelGoNetEvent
func keelGoNetEvent(handle C.uintptr_t, connID C.uint64_t, status C.keel_status_t, message *C.char) {
	ev := cgo.Handle(handle).Value().(*netEvents)
	// Only while the callback runs (see callbackThread).
	ev.thread.enter()
	defer ev.thread.leave()
	defer netEventThreads.leave(netEventThreads.enter())
	// message is borrowed for the call only: copied by GoString.
	ev.onEvent(uint64(connID), &Error{Code: Status(status), Op: "OnEvent", Message: C.GoString(message)})
}

// keelGoNodeEvent is the Node event callback, called by keel_go_node_event
// (node.go) on a thread of the node, or on the goroutine in Connect whose
// peer was refused, with the Node's cgo.Handle.
//
//export keelGoNodeEvent
func keelGoNodeEvent(handle C.uintptr_t, peerID C.uint64_t, status C.keel_status_t, message *C.char) {
	// Connect's goroutine is one of Go's threads: a panic or Goexit there
	// would otherwise unwind through keel's frames into Connect's caller.
	returned := false
	defer mustReturn("Node OnEvent", &returned)
	ev := cgo.Handle(handle).Value().(*nodeEvents)
	defer ev.threads.leave(ev.threads.enter())
	var err error
	if status != C.KEEL_STATUS_OK {
		// message is borrowed for the call only: copied by GoString.
		err = &Error{Code: Status(status), Op: "OnEvent", Message: C.GoString(message)}
	}
	ev.onEvent(uint64(peerID), err)
	returned = true
}

// keelGoReadIndex is a shard's read-index callback, called by
// keel_go_read_index (lease.go) on the goroutine of a read that missed
// the lease, with the cgo.Handle of the shard's leaseHost.
//
//export keelGoReadIndex
func keelGoReadIndex(handle C.uintptr_t, index *C.uint64_t) C.keel_status_t {
	// readIndex turns a panic into StatusPanic, but a Goexit cannot be
	// stopped: it would end the read's goroutine inside keel, whose
	// read-index call then never finishes (later reads and the shard's
	// close wait for it forever).
	returned := false
	defer mustReturn("ReadIndex", &returned)
	host := cgo.Handle(handle).Value().(*leaseHost)
	defer readIndexThreads.leave(readIndexThreads.enter())
	defer host.threads.leave(host.threads.enter())
	i, st := host.readIndex()
	if st == StatusOK {
		*index = C.uint64_t(i)
	}
	returned = true
	return C.keel_status_t(st)
}

// keelGoReadIndexFree releases the handle once keel no longer needs it
// (the shard closed, or its configuration was refused).
//
//export keelGoReadIndexFree
func keelGoReadIndexFree(handle C.uintptr_t) {
	cgo.Handle(handle).Delete()
}

// keelGoTransferProgress is a transfer's progress callback, called by
// keel_go_transfer_progress (transfer.go) on the transfer's own thread
// with the cgo.Handle of its OnProgress.
//
//export keelGoTransferProgress
func keelGoTransferProgress(handle C.uintptr_t, progress *C.keel_transfer_progress_t) {
	ev := cgo.Handle(handle).Value().(*transferEvents)
	// Only while the callback runs (see callbackThread).
	ev.thread.enter()
	defer ev.thread.leave()
	ev.onProgress(toProgress(progress))
}

// mustReturn, deferred by a callback with the address of a flag the
// callback sets as its last act, ends the program when the callback does
// not return to keel: on a panic in it (as the docs promise: "a panic in
// it crashes the program"), or on runtime.Goexit (t.FailNow, t.Fatal and
// t.SkipNow call it). On keel's own threads an unrecovered panic ends the
// program anyway, but keel also runs callbacks on Go's threads: Node's
// OnEvent on the goroutine of a Connect (a peer refused at once), a
// shard's ReadIndex on the goroutine of a read. There the panic or Goexit
// would unwind through keel's C and Rust frames without their cleanup
// (the dialed socket leaked, a read-index call never finished, keel's own
// panic guard jumped over), and a recover in the caller would catch the
// panic and the program would carry on.
func mustReturn(callback string, returned *bool) {
	if *returned {
		return
	}
	r := recover()
	if r == nil {
		r = "runtime.Goexit (t.FailNow, t.Fatal, t.SkipNow, ...) called in the callback: it cannot unwind through keel"
	}
	// Taken here, the stack still shows where the callback panicked.
	p := &callbackPanic{callback: callback, value: r, stack: debug.Stack()}
	// Nothing can recover a panic on a goroutine of its own: it ends the
	// program with the usual report and exit status 2. This callback must
	// not return into keel meanwhile.
	go func() { panic(p) }()
	select {}
}

// callbackPanic is the value mustReturn panics with: the callback's own
// panic value and the stack of its goroutine.
type callbackPanic struct {
	callback string
	value    any
	stack    []byte
}

func (p *callbackPanic) Error() string {
	return fmt.Sprintf("%v\n\n[keel: the panic above came out of a %s callback, on this goroutine:]\n%s", p.value, p.callback, p.stack)
}
