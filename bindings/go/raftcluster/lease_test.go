package raftcluster

import (
	"fmt"
	"sort"
	"testing"

	"github.com/anishathalye/porcupine"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"keel"
)

// waitNewLeaderWrite runs until a node other than old leads and a write
// it committed was acknowledged to a client; it returns that leader and
// the time the acknowledgement reached the client.
func waitNewLeaderWrite(c *Cluster, old uint64) (uint64, Time) {
	c.t.Helper()
	var leader uint64
	c.RunUntil("a new leader", 100*electionTicks*TickEvery, func() bool {
		l := c.Leader()
		leader = l
		return l != 0 && l != old
	})
	before := len(c.hist.ops)
	var committed Time
	c.RunUntil("a write committed by the new leader", 100*electionTicks*TickEvery, func() bool {
		for _, op := range c.hist.ops[before:] {
			if op.Input.(kvInput).Op != "get" && !op.Output.(kvOutput).Unknown {
				committed = Time(op.Return)
				return true
			}
		}
		return false
	})
	return leader, committed
}

// stats returns node id's keel lease counters.
func (p *LeasePath) stats(c *Cluster, id uint64) keel.LeaseStats {
	c.t.Helper()
	s, err := c.nodes[id].shard.LeaseStats()
	if err != nil {
		c.t.Fatalf("node %d: LeaseStats: %v", id, err)
	}
	return s
}

// servedAfter lists the reads node served after time t.
func (p *LeasePath) servedAfter(node uint64, t Time) []leaseRead {
	var out []leaseRead
	for _, r := range p.served {
		if r.Node == node && r.At > t {
			out = append(out, r)
		}
	}
	return out
}

// A quiet stretch (no fault, no loss) with the lease fresh costs no
// read-index at all: every read on the leader is a lease hit. Then the
// leader is cut off: it serves lease reads only until its last quorum
// ack (sent before the cut) plus the lease, never a read after the new
// leader's committed write, and the history is linearizable.
func TestLeaseLeaderPartition(t *testing.T) {
	forSeeds(t, 12, func(t *testing.T, seed int64) {
		p := NewLeasePath()
		cfg := LeaseConfig(seed, p)
		cfg.MaxOps = 2000
		c := NewCluster(t, cfg)
		old := c.WaitLeader()
		c.RunFor(100 * TickEvery)
		before := p.stats(c, old)
		c.RunFor(300 * TickEvery)
		after := p.stats(c, old)
		if c.Leader() != old {
			t.Fatalf("leadership moved from %d during the quiet stretch", old)
		}
		if calls := after.ReadIndexCalls - before.ReadIndexCalls; calls != 0 {
			t.Fatalf("leader %d made %d read-index calls in a quiet stretch with a fresh lease", old, calls)
		}
		hits := after.LeaseHits - before.LeaseHits
		if hits < 50 {
			t.Fatalf("leader %d served only %d lease reads in the quiet stretch", old, hits)
		}
		t.Logf("quiet stretch: %d lease hits, 0 read-index calls", hits)

		c.Partition(old)
		c.PinClient(0, old)
		c.PinClient(1, old)
		cut := c.Now()
		defer c.requireTraffic("the partition", cut, 100)
		newLeader, committed := waitNewLeaderWrite(c, old)
		c.RunFor(400 * TickEvery)
		var lastHit Time = -1
		for _, r := range p.servedAfter(old, cut) {
			if r.Hit && r.At >= cut+leaseLength {
				t.Fatalf("old leader %d served a lease read at %d, cut off at %d with a lease of %d", old, r.At, cut, leaseLength)
			}
			if r.Hit {
				lastHit = r.At
			}
			if r.At > committed {
				t.Fatalf("old leader %d served a read of %s at %d, after new leader %d committed at %d", old, r.Key, r.At, newLeader, committed)
			}
		}
		t.Logf("cut %d at %d; its last lease read at %d; leader %d committed at %d", old, cut, lastHit, newLeader, committed)
		c.UnpinClient(0)
		c.UnpinClient(1)
		c.Settle()
	})
}

// leasePauseScenario freezes the leader right after a heartbeat round,
// lets the responses pile up in its buffers, then cuts it off (so
// nothing of the next term reaches it), keeps it frozen for six election
// timeouts while the others elect a leader that commits, and thaws it
// with clients pinned to it. The buffered responses answer heartbeats
// sent before the freeze: with send-time acks they make no lease. It
// returns the old leader and the time of the new leader's first
// acknowledged write, and leaves the partition in place.
func leasePauseScenario(c *Cluster) (uint64, Time) {
	c.t.Helper()
	old := c.WaitLeader()
	c.RunFor(300 * TickEvery)
	c.RunFor(TickEvery - c.Now()%TickEvery) // a heartbeat round just went out
	for i := 0; i < 3; i++ {
		c.PinClient(i, old)
	}
	c.Pause(old)
	c.RunFor(2*leaseMaxRoundTrip + 1)
	c.Partition(old)
	resumeAt := c.Now() + 6*electionTicks*TickEvery
	_, committed := waitNewLeaderWrite(c, old)
	if c.Now() < resumeAt {
		c.RunFor(resumeAt - c.Now())
	}
	c.Resume(old)
	c.RunFor(3 * electionTicks * TickEvery)
	for i := 0; i < 3; i++ {
		c.UnpinClient(i)
	}
	return old, committed
}

// The leader's loop is frozen past the election timeout and resumed with
// stale responses buffered: they never make a valid lease, so it serves
// no read after the new leader's write and the history is linearizable.
func TestLeaseLeaderPause(t *testing.T) {
	forSeeds(t, 22, func(t *testing.T, seed int64) {
		p := NewLeasePath()
		c := NewCluster(t, LeaseConfig(seed, p))
		start := c.Now()
		defer c.requireTraffic("the start", start, 100)
		old, committed := leasePauseScenario(c)
		if bad := p.servedAfter(old, committed); len(bad) > 0 {
			t.Fatalf("old leader %d served %d reads after the new leader committed at %d (first at %d)", old, len(bad), committed, bad[0].At)
		}
		if c.Node(old).IsLeader() {
			t.Fatalf("old leader %d still leads after its thaw", old)
		}
		c.Settle()
	})
}

// With acks stamped at RECEIVE time, the thawed leader's buffered
// responses look fresh: it serves reads after the new leader committed.
// The same scenario that passes above must catch it, by the direct check
// and by the history checker.
func TestBrokenReceiveTimeIsCaught(t *testing.T) {
	p := NewLeasePath()
	p.stampReceiveTime = true
	c := NewCluster(t, LeaseConfig(22, p))
	old, committed := leasePauseScenario(c)
	bad := p.servedAfter(old, committed)
	c.halted = true
	c.Heal()
	c.RunFor(2 * c.cfg.ClientTimeout)
	res, _ := checkHistory(c.hist.ops)
	t.Logf("receive-time acks: old leader %d served %d reads after the commit at %d; checker says %q", old, len(bad), committed, res)
	if len(bad) == 0 || res != porcupine.Illegal {
		t.Fatalf("the receive-time variant went unnoticed: %d reads served by %d after %d, checker %q", len(bad), old, committed, res)
	}
}

// leaseTransferScenario starts a transfer to a follower that is frozen,
// so raft keeps the transfer pending for an election timeout while the
// leader still has a quorum and clients keep reading from it; then the
// target thaws and leadership moves. It returns the old leader.
func leaseTransferScenario(c *Cluster) uint64 {
	c.t.Helper()
	c.RunFor(300 * TickEvery)
	from := c.WaitLeader()
	to := from%3 + 1
	c.Pause(to)
	c.StartTransfer(to)
	c.RunFor(electionTicks * TickEvery)
	c.Resume(to)
	c.TransferLeadership(to)
	return from
}

// During a leadership transfer the old leader serves no lease read: from
// the transfer's start until raft abandons it or the leader steps down,
// its reads go through the read index. Then two more transfers while
// clients run; the history is linearizable.
func TestLeaseLeadershipTransfer(t *testing.T) {
	forSeeds(t, 32, func(t *testing.T, seed int64) {
		p := NewLeasePath()
		c := NewCluster(t, LeaseConfig(seed, p))
		defer c.requireTraffic("the first transfer", 300*TickEvery, 100)
		from := leaseTransferScenario(c)
		for round := 0; round < 2; round++ {
			c.RunFor(300 * TickEvery)
			l := c.WaitLeader()
			c.TransferLeadership(l%3 + 1)
		}
		during := 0
		for _, r := range p.served {
			if r.Transferring {
				during++
				if r.Hit {
					t.Fatalf("node %d served a lease read at %d during its leadership transfer", r.Node, r.At)
				}
			}
		}
		if s := p.stats(c, from); s.MissTransfer == 0 || during == 0 {
			t.Fatalf("no read met a transfer (%d served during one; node %d counted %d transfer misses)", during, from, s.MissTransfer)
		}
		t.Logf("%d reads served during transfers, all through the read index", during)
		c.RunFor(300 * TickEvery)
		c.Settle()
	})
}

// A variant that never tells keel about the transfer keeps serving lease
// reads while the target may already be campaigning.
func TestBrokenTransferSuspensionIsCaught(t *testing.T) {
	p := NewLeasePath()
	p.skipTransferSuspension = true
	c := NewCluster(t, LeaseConfig(32, p))
	leaseTransferScenario(c)
	hits := 0
	for _, r := range p.served {
		if r.Transferring && r.Hit {
			hits++
		}
	}
	if hits == 0 {
		t.Fatalf("the variant without transfer suspension went unnoticed: no lease read during the transfer")
	}
	t.Logf("without the suspension: %d lease reads served during the transfer", hits)
}

// Membership with a learner: node 4 joins as a learner, whose acks the
// leader's keel refuses (it is no voter) and which never serves a lease
// read; it is promoted, then node 1 is removed. Linearizable throughout.
func TestLeaseMembershipChange(t *testing.T) {
	forSeeds(t, 52, func(t *testing.T, seed int64) {
		p := NewLeasePath()
		c := NewCluster(t, LeaseConfig(seed, p))
		c.WaitLeader()
		c.RunFor(300 * TickEvery)
		change := func(typ pb.ConfChangeType, id uint64) {
			c.ChangeConf(&pb.ConfChange{Type: typ.Enum(), NodeId: proto.Uint64(id)})
		}
		c.AddNode(4)
		c.PinClient(0, 4)
		change(pb.ConfChangeAddLearnerNode, 4)
		l := c.WaitLeader()
		refused := p.stats(c, l).AcksIgnoredNotVoter
		c.RunFor(200 * TickEvery)
		if c.WaitLeader() == l {
			if got := p.stats(c, l).AcksIgnoredNotVoter; got <= refused {
				t.Fatalf("leader %d took the learner's acks: refused %d before, %d after", l, refused, got)
			}
		}
		for _, r := range p.served {
			if r.Node == 4 {
				t.Fatalf("learner 4 served a read at %d", r.At)
			}
		}
		c.UnpinClient(0)
		change(pb.ConfChangeAddNode, 4)
		c.RunFor(200 * TickEvery)
		defer c.requireTraffic("removing node 1", c.Now(), 100)
		change(pb.ConfChangeRemoveNode, 1)
		c.Stop(1)
		l = c.WaitLeader()
		if got := c.Conf(l).GetVoters(); fmt.Sprint(got) != "[2 3 4]" {
			t.Fatalf("voters: %v, want [2 3 4]", got)
		}
		c.RunFor(500 * TickEvery)
		if s := p.stats(c, l); s.LeaseHits == 0 {
			t.Fatalf("leader %d of the new configuration served no lease read", l)
		}
		c.Settle()
	})
}

// A node restarts (a follower, then the leader) with the lease path: its
// reopened shard is configured again from raft's facts, it serves no
// lease read while it follows, and the leader after the restarts serves
// lease reads again. The history is linearizable.
func TestLeaseRestartNode(t *testing.T) {
	forSeeds(t, 43, func(t *testing.T, seed int64) {
		p := NewLeasePath()
		cfg := LeaseConfig(seed, p)
		cfg.MaxOps = 4000 // clients still read in the last stretch
		c := NewCluster(t, cfg)
		c.WaitLeader()
		c.RunFor(500 * TickEvery)
		restartEach(c, func(pick string, id uint64, restarted Time) {
			// The reopened shard was configured again (LeaseStats fails
			// on a shard without consensus), and as a follower it served
			// no read from the lease.
			st := p.stats(c, id)
			for _, r := range p.servedAfter(id, restarted) {
				if r.Hit && !r.Leader {
					t.Fatalf("restarted node %d served a lease read at %d without leading", id, r.At)
				}
			}
			t.Logf("restarted %s %d: %d lease hits, %d read-index calls since", pick, id, st.LeaseHits, st.ReadIndexCalls)
		})
		leader := c.WaitLeader()
		before := p.stats(c, leader)
		c.RunFor(300 * TickEvery)
		after := p.stats(c, leader)
		if c.Leader() == leader && after.LeaseHits == before.LeaseHits {
			t.Fatalf("leader %d served no lease read in a quiet stretch after the restarts", leader)
		}
		c.Settle()
	})
}

// Random loss (1 % of messages) and reordering with the lease path: a
// lost heartbeat or response makes the acks keel gets older, never
// younger (see LeasePath), so loss may cost lease hits but never safety:
// the history is linearizable and the lease still serves reads.
func TestLeaseUnderDropsAndDelays(t *testing.T) {
	forSeeds(t, 51, func(t *testing.T, seed int64) {
		p := NewLeasePath()
		cfg := LeaseConfig(seed, p)
		cfg.Net.DropRate = 0.01
		c := NewCluster(t, cfg)
		c.WaitLeader()
		c.RunFor(3000 * TickEvery)
		hits := 0
		for _, r := range p.served {
			if r.Hit {
				hits++
			}
		}
		t.Logf("%d reads served, %d from the lease", len(p.served), hits)
		if hits == 0 {
			t.Fatal("no read was served from the lease under 1 % loss")
		}
		c.Settle()
	})
}

// A joint configuration: voter out is replaced by a new node 4 through
// etcd raft's explicit joint consensus (old {l, keep, out}, new {l,
// keep, 4}) while clients read with leases. In it the leader l is cut
// off together with out: l still hears from out, a quorum of the old
// half, but from nobody of the new half but itself, so keel stops
// serving lease reads at the cut plus the lease, though raft keeps l the
// leader until CheckQuorum steps it down. Then the network heals, the
// cluster leaves the joint configuration, out is stopped, and the
// history is linearizable.
func TestLeaseJointConfiguration(t *testing.T) {
	forSeeds(t, 53, func(t *testing.T, seed int64) {
		p := NewLeasePath()
		cfg := LeaseConfig(seed, p)
		cfg.MaxOps = 4000 // clients still run after the joint configuration
		c := NewCluster(t, cfg)
		c.WaitLeader()
		c.RunFor(300 * TickEvery)
		l := c.WaitLeader()
		out := l%3 + 1
		keep := 6 - l - out
		c.AddNode(4)
		single := func(typ pb.ConfChangeType, id uint64) *pb.ConfChangeSingle {
			return &pb.ConfChangeSingle{Type: typ.Enum(), NodeId: proto.Uint64(id)}
		}
		c.ChangeConfV2(&pb.ConfChangeV2{
			Transition: pb.ConfChangeTransitionJointExplicit.Enum(),
			Changes:    []*pb.ConfChangeSingle{single(pb.ConfChangeAddNode, 4), single(pb.ConfChangeRemoveNode, out)},
		}, func(cs *pb.ConfState) bool {
			return contains(cs.GetVoters(), 4) && contains(cs.GetVotersOutgoing(), out)
		})
		if c.Leader() != l {
			c.TransferLeadership(l)
		}
		joint := c.Conf(l)
		t.Logf("joint configuration: incoming %v, outgoing %v, leader %d", joint.GetVoters(), joint.GetVotersOutgoing(), l)

		// In the joint configuration, with every node reachable, the
		// leader serves from its lease: both halves ack.
		before := p.stats(c, l)
		c.RunFor(300 * TickEvery)
		if c.Leader() != l {
			t.Fatalf("leadership moved from %d in the joint configuration", l)
		}
		if after := p.stats(c, l); after.LeaseHits == before.LeaseHits {
			t.Fatalf("leader %d served no lease read in the joint configuration", l)
		}

		c.Partition(l, out)
		for i := 0; i < 4; i++ {
			c.PinClient(i, l)
		}
		cut := c.Now()
		// l keeps leading until CheckQuorum finds no quorum of both
		// halves, an election timeout or more after the cut. Past the
		// lease a read on it must miss with a stale ack although out's
		// acks keep coming: the probe below is one such read (its read
		// index never completes; it is not in the history).
		c.RunFor(leaseLength + 1)
		if !c.Node(l).IsLeader() {
			t.Fatalf("leader %d stepped down within the lease after the cut", l)
		}
		staleBefore := p.stats(c, l).MissAckStale
		n := c.Node(l)
		n.deliver(func() { p.Read(n, keyName(0), func(ReadResult) {}) })
		if got := p.stats(c, l).MissAckStale - staleBefore; got != 1 {
			t.Fatalf("a read on leader %d past the lease, with only the old half acking: %d stale-ack misses, want 1", l, got)
		}
		c.RunUntil("the cut-off leader steps down", 20*electionTicks*TickEvery, func() bool { return !c.Node(l).IsLeader() })
		for _, r := range p.servedAfter(l, cut) {
			if r.Hit && r.At >= cut+leaseLength {
				t.Fatalf("leader %d served a lease read at %d with only the old half acking (cut at %d, lease %d)", l, r.At, cut, leaseLength)
			}
		}
		t.Logf("cut %d and %d off at %d: %d reads served from the lease after it, %d stepped down at %d",
			l, out, cut, len(p.servedAfter(l, cut)), l, c.Now())
		for i := 0; i < 4; i++ {
			c.UnpinClient(i)
		}
		c.Heal()

		defer c.requireTraffic("leaving the joint configuration", c.Now(), 100)
		c.ChangeConfV2(&pb.ConfChangeV2{}, func(cs *pb.ConfState) bool { return len(cs.GetVotersOutgoing()) == 0 })
		c.Stop(out)
		if got, want := fmt.Sprint(c.Conf(c.WaitLeader()).GetVoters()), fmt.Sprint(sortedIDs(keep, l, 4)); got != want {
			t.Fatalf("voters after leaving the joint configuration: %v, want %v", got, want)
		}
		c.RunFor(500 * TickEvery)
		if s := p.stats(c, c.WaitLeader()); s.LeaseHits == 0 {
			t.Fatalf("the leader after the joint configuration served no lease read")
		}
		c.Settle()
	})
}

func sortedIDs(ids ...uint64) []uint64 {
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// A voter that restarts has forgotten the leader it heard from: etcd
// raft's CheckQuorum refuses a vote only within an election timeout of
// hearing from a leader it knows, and a restarted node knows none. Its
// ack may still hold the old leader's lease, so it must vote for nobody
// for an election timeout after it restarted (the cluster's Restart does
// that), or another node may win its vote at once and commit while the
// old leader still serves reads from that ack. Timeline: other, cut off
// alone while the cluster is idle (its log stays up to date), stops
// hearing from the leader l and its election timer runs out. Then l is
// cut off right after a acked a heartbeat round (l's lease now rests on
// a's ack), a crashes and restarts at once, and other campaigns while l
// keeps reading. No read may be served by l after other's first write.
func TestLeaseRestartedVoterDoesNotVoteWithinTheLease(t *testing.T) {
	forSeeds(t, 61, func(t *testing.T, seed int64) {
		p := NewLeasePath()
		cfg := LeaseConfig(seed, p)
		cfg.Clients = 0 // the test writes and reads itself
		c := NewCluster(t, cfg)
		l := c.WaitLeader()
		a, other := l%3+1, (l+1)%3+1
		write := func(at uint64, value string) *Time {
			done := new(Time)
			*done = -1
			n := c.Node(at)
			n.deliver(func() {
				if err := n.propose(Command{Req: value, Key: keyName(0), Value: value}, func(error) { *done = c.Now() }); err != nil {
					t.Fatalf("node %d: writing %s: %v", at, value, err)
				}
			})
			return done
		}
		first := write(l, "old")
		c.RunUntil("the first write", 20*electionTicks*TickEvery, func() bool { return *first >= 0 })
		c.RunFor(30 * TickEvery)

		c.Partition(other)
		c.RunFor(3 * electionTicks * TickEvery)
		if c.Leader() != l {
			t.Fatalf("leadership moved from %d while %d was cut off", l, other)
		}
		c.RunFor(TickEvery - c.Now()%TickEvery + 2*leaseMaxRoundTrip + 1) // a's acks of a heartbeat round are in
		c.Partition(l)
		cut := c.Now()
		old := c.Node(l)
		for d := Time(1); d <= 2*leaseLength; d++ {
			c.sched.at(cut+d, func() { old.deliver(func() { p.Read(old, keyName(0), func(ReadResult) {}) }) })
		}
		c.Stop(a)
		c.Restart(a)
		n := c.Node(other)
		n.deliver(func() {
			if err := n.rn.Campaign(); err != nil {
				t.Fatalf("node %d: Campaign: %v", other, err)
			}
		})
		var done *Time
		var newLeader uint64
		c.RunUntil("a new leader's first write", 20*electionTicks*TickEvery, func() bool {
			if nl := c.Leader(); done == nil && nl != 0 && nl != l {
				newLeader, done = nl, write(nl, "new")
			}
			return done != nil && *done >= 0
		})
		c.RunFor(2 * leaseLength)
		if len(p.servedAfter(l, cut)) == 0 {
			t.Fatalf("old leader %d served no read from its lease after the cut at %d", l, cut)
		}
		for _, r := range p.servedAfter(l, *done) {
			t.Fatalf("old leader %d, cut off at %d, served a read from its lease at %d after restarted voter %d let %d commit at %d",
				l, cut, r.At, a, newLeader, *done)
		}
		t.Logf("cut %d at %d, restarted %d; %d led and wrote at %d", l, cut, a, newLeader, *done)
		c.Settle()
	})
}
