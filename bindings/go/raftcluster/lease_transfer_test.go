package raftcluster

import (
	"testing"

	pb "go.etcd.io/raft/v3/raftpb"
)

// An abandoned leadership transfer must not resume lease reads in its
// term: etcd raft does not take a MsgTimeoutNow back when it abandons a
// transfer (abortLeaderTransfer after an election timeout); a target
// frozen with it in its buffers campaigns as soon as it thaws, and the
// other voter grants the vote at once (a transfer campaign skips
// CheckQuorum's in-lease check). keel used to resume the lease when the
// abort was reported, so the old leader, cut off, served a lease read
// that missed the new leader's acknowledged write. Deterministic: no
// clients, fixed seed, every step driven by the test on the logical
// clock.
func TestLeaseAfterAbandonedTransfer(t *testing.T) {
	p := NewLeasePath()
	cfg := LeaseConfig(7, p)
	cfg.Clients = 0
	timeoutNow := 0
	sent := cfg.Observer.Sent
	cfg.Observer.Sent = func(n *Node, m *pb.Message, at Time) {
		if m.GetType() == pb.MsgTimeoutNow {
			timeoutNow++
		}
		sent(n, m, at)
	}
	c := NewCluster(t, cfg)
	c.WaitLeader()
	c.RunFor(300 * TickEvery)
	from := c.WaitLeader()
	to := from%3 + 1
	old := c.nodes[from]
	c.RunUntil("the target holds the leader's whole log", 50*TickEvery, func() bool {
		last, _ := old.storage.LastIndex()
		return old.rn.Status().Progress[to].Match == last
	})

	// Freeze the target and start the transfer: the MsgTimeoutNow leaves
	// at once and waits in the frozen target's buffers.
	c.Pause(to)
	c.StartTransfer(to)
	if timeoutNow != 1 {
		t.Fatalf("expected one MsgTimeoutNow, saw %d", timeoutNow)
	}
	c.RunFor(2*defaultMaxDelay + 1)
	// raft abandons the transfer after an election timeout; keel hears of
	// it with the next responses and fresh acks come from the third node.
	c.RunUntil("raft abandons the transfer", 3*electionTicks*TickEvery, func() bool {
		return old.rn.BasicStatus().LeadTransferee == 0
	})
	c.RunFor(3 * TickEvery)
	if !old.IsLeader() {
		t.Fatalf("node %d no longer leads after the abandoned transfer", from)
	}
	if s := p.stats(c, from); s.Role != 1 {
		t.Fatalf("keel on node %d is not leader", from)
	}

	// Cut the old leader off and thaw the target: it acts on the buffered
	// MsgTimeoutNow, wins, and a write is acknowledged on it.
	c.Partition(from)
	cut := c.Now()
	c.Resume(to)
	c.RunUntil("the target leads", 20*TickEvery, func() bool { return c.nodes[to].IsLeader() })
	done := false
	if err := c.nodes[to].propose(Command{Req: "abandoned-1", Key: "k0", Value: "after-transfer"}, func(err error) { done = err == nil }); err != nil {
		t.Fatalf("propose on the new leader %d: %v", to, err)
	}
	c.RunUntil("the new leader's write is acknowledged", 20*TickEvery, func() bool { return done })
	committed := c.Now()

	// A lease read on the old leader, which still believes it leads.
	if !old.leader {
		t.Fatalf("node %d stepped down already (test setup)", from)
	}
	var res *ReadResult
	old.deliver(func() { p.Read(old, "k0", func(r ReadResult) { res = &r }) })
	served := p.servedAfter(from, committed-1)
	if res != nil && res.Err == nil && res.Value != "after-transfer" {
		t.Fatalf("stale read: old leader %d (cut off at %d) served k0=%q (found=%v, lease hit=%v) at %d, after new leader %d acknowledged k0=%q at %d",
			from, cut, res.Value, res.Found, len(served) > 0 && served[0].Hit, c.Now(), to, "after-transfer", committed)
	}
}
