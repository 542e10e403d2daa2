package raftcluster

import (
	"errors"

	pb "go.etcd.io/raft/v3/raftpb"
)

// ReadResult is a node's answer to a client read.
type ReadResult struct {
	Value string
	Found bool
	Err   error
}

// ErrNotLeader: the node is not the leader; the client should try the
// leader it names (0 when unknown).
type ErrNotLeader struct{ Hint uint64 }

func (e ErrNotLeader) Error() string { return "not the leader" }

var errStopped = errors.New("node is stopped")

// ReadPath is how a node answers a client read that must be linearizable.
// Read runs on the node's loop when the request arrives; it calls reply
// exactly once, now or later (with ErrNotLeader when this node cannot
// serve it), or never when the read cannot complete (the client then
// times out and the read is left out of the history, as a read with no
// answer has no effect).
//
// ReadIndexPath makes one raft read-index round trip per read; LeasePath
// (leasepath.go) lets keel's lease gate decide, fed from the node's
// Observer, and falls back to the same round trip on a miss.
type ReadPath interface {
	Read(n *Node, key string, reply func(ReadResult))
}

// ReadIndexPath asks raft for a read index (raft's ReadOnlySafe option:
// the leader confirms with a quorum of heartbeats that it still leads),
// waits until the node has applied that index, then reads locally.
type ReadIndexPath struct{}

func (ReadIndexPath) Read(n *Node, key string, reply func(ReadResult)) {
	if !n.IsLeader() {
		reply(ReadResult{Err: ErrNotLeader{Hint: n.lead}})
		return
	}
	n.ReadIndex(func(index uint64) {
		n.WhenApplied(index, func() {
			v, found, err := n.StateMachine().Get(key)
			reply(ReadResult{Value: v, Found: found, Err: err})
		})
	})
}

// localReadPath answers from the node's own state with no check at all,
// on any node (keel's "stale" level). It is wrong on purpose: a test shows the history checker rejects it
// under a partition, so a pass of the real paths means something.
type localReadPath struct{}

func (localReadPath) Read(n *Node, key string, reply func(ReadResult)) {
	v, found, err := n.StateMachine().Get(key)
	reply(ReadResult{Value: v, Found: found, Err: err})
}

// Observer sees what a lease read path needs from raft, on the node's
// loop: every raft message the node sends (with the logical time it was
// handed to the network) and receives, every role or term change, and
// every applied index, and each leadership transfer the cluster asks a
// leader for (before raft can tell the target to campaign). Messages are
// raft's own, read-only. Nil fields are skipped.
type Observer struct {
	Sent     func(n *Node, m *pb.Message, at Time)
	Received func(n *Node, m *pb.Message, at Time)
	Role     func(n *Node, leader bool, term, lead uint64)
	Applied  func(n *Node, index uint64)
	Transfer func(n *Node, target uint64)
}
