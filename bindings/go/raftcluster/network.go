package raftcluster

import (
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// NetConfig is the behaviour of the links between nodes when no fault is
// injected: each message is delayed by a drawn number of time units in
// [MinDelay, MaxDelay] (so messages may overtake each other) and dropped
// with probability DropRate.
type NetConfig struct {
	MinDelay, MaxDelay Time
	DropRate           float64
}

// network carries raft messages between the nodes of a cluster. The test
// controls it: drops and delays come from the scheduler's seeded random
// stream, and a partition blocks every link between two sides.
type network struct {
	c   *Cluster
	cfg NetConfig
	// side[id] names the side of the partition a node is on; nodes on
	// different sides cannot exchange messages. Empty: no partition.
	side map[uint64]int
	// Counts, for tests that check a fault was really exercised.
	sent, dropped, blocked int
}

func (n *network) linked(from, to uint64) bool {
	return n.side[from] == n.side[to]
}

// send schedules the delivery of m, a copy of what raft handed over (a
// real network would serialize it, so the receiver never shares memory
// with the sender).
func (n *network) send(m *pb.Message) {
	n.sent++
	from, to := m.GetFrom(), m.GetTo()
	if !n.linked(from, to) {
		n.blocked++
		return
	}
	if n.c.sched.chance(n.cfg.DropRate) {
		n.dropped++
		return
	}
	cp := proto.Clone(m).(*pb.Message)
	n.c.sched.after(n.c.sched.between(n.cfg.MinDelay, n.cfg.MaxDelay), func() {
		// A partition that starts while the message is in flight
		// blocks it too.
		if !n.linked(from, to) {
			n.blocked++
			return
		}
		if dst := n.c.nodes[to]; dst != nil {
			dst.receive(cp)
		}
	})
}

// partition splits the cluster: every node listed in one group is cut off
// from every node not in it. heal undoes it.
func (n *network) partition(group ...uint64) {
	n.side = map[uint64]int{}
	for _, id := range group {
		n.side[id] = 1
	}
}

func (n *network) heal() { n.side = nil }
