// Package keel is the Go binding of libkeel, keel's C API: an embeddable
// shard engine, its write-ahead log, batched socket writers and the node
// transport between keel processes.
//
// Four entry points:
//
//   - OpenEngine opens a data directory hosting shards by uint32 id. A
//     Shard maps keys to values (Put) or posting lists (Append); Delete
//     makes a key absent, a Batch applies several operations atomically in
//     one call (Shard.Write), Get and MultiGet read, Scan and ScanPrefix
//     iterate in key order. Every write gets a version: the sequence number
//     of its record in the shard's WAL. Appending to a key that holds a
//     value fails with ErrWrongKind; a posting list comes back encoded in
//     Value.Bytes and Value.Items decodes it.
//   - Open opens a bare write-ahead log (WAL, Reader).
//   - OpenNet starts keel's batched socket writers (docs/WRITER.md): a
//     Net is a reactor thread with a send backend (sendmsg or io_uring);
//     Adopt hands it a connected socket as a Writer (Send, SendMore,
//     SendBatch, Flush: few send calls per message, no added latency for
//     a lone one); NewPublisher fans messages out to subscriber sockets.
//     NetOptions.OnEvent reports connections keel closed (peer reset, cap
//     policy) from keel's reactor thread.
//   - OpenNode opens a Node of keel's authenticated transport to other
//     keel processes (docs/TRANSFER.md): it listens on one TCP address,
//     Connect dials a peer and runs the handshake (with a shared cluster
//     secret, a peer without it is refused: ErrRefused), Stats counts
//     connections by how they ended, NodeOptions.OnEvent reports peers
//     that became ready and connections that ended.
//
// Build: run `make lib` at the repository root first. By default the
// package links target/release/libkeel.a statically; with the build tag
// keel_dynamic it links the installed libkeel.so found through pkg-config.
//
// Concurrency: a *WAL, an *Engine, a *Shard, a *Net, a *Writer, a
// *Publisher and a *Node may be used from any number of goroutines at
// once (the C handles are internally synchronised); their Close waits for
// calls in flight and every later call returns an error matching
// ErrClosed. A *Reader and an *Iterator are cursors and a *Batch is a
// builder: none of them may be used by two goroutines at once.
//
// Errors: every failure is an *Error carrying the library's status code
// and message. Compare with errors.Is against the Err* sentinels
// (errors.Is(err, keel.ErrTruncated)) or read the Code with errors.As.
//
// Resources: Close is the way to release a WAL, an Engine, a Shard, a
// Reader, an Iterator, a Net, a Writer, a Publisher, a Node or a
// Transfer, and End the way to release a ReadSession.
// Engine.Close also closes the engine's shards still open; Net.Close
// closes the sockets of its Writers and Publishers (whose Close is still
// needed to free them); a Node must be closed before its Engine.
// A WAL, Engine, Reader, Iterator, Net, Writer, Publisher, Node or
// Transfer that is garbage collected while still open, or a ReadSession
// before its End, is reported on the standard logger as a leak; it is
// never closed behind the caller's back. Data read from
// keel (Get, MultiGet, Iterator, Reader) is copied into Go memory owned
// by the caller.
package keel
