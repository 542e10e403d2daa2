package raftcluster

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// forSeeds runs body with the test's fixed seed, or with the seed in
// RAFTCLUSTER_SEED (a replay), plus RAFTCLUSTER_SOAK_SEEDS more seeds
// drawn from the time (`make soak`). A failing run prints the command
// that replays it.
func forSeeds(t *testing.T, fixed int64, body func(t *testing.T, seed int64)) {
	seeds := []int64{fixed}
	if s := os.Getenv("RAFTCLUSTER_SEED"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("RAFTCLUSTER_SEED=%q: %v", s, err)
		}
		seeds = []int64{v}
	} else if s := os.Getenv("RAFTCLUSTER_SOAK_SEEDS"); s != "" {
		extra, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("RAFTCLUSTER_SOAK_SEEDS=%q: %v", s, err)
		}
		base := time.Now().UnixNano()
		for i := 0; i < extra; i++ {
			seeds = append(seeds, base+int64(i))
		}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("replay: cd bindings/go/raftcluster && RAFTCLUSTER_SEED=%d go test -race -count=1 -run '^%s$' .", seed, testName(t))
				}
			})
			body(t, seed)
		})
	}
}

// testName is the top-level test's name (the part before the seed).
func testName(t *testing.T) string {
	name := t.Name()
	for i := range name {
		if name[i] == '/' {
			return name[:i]
		}
	}
	return name
}

// Without faults beyond the network's drops and reordering, clients'
// reads and writes are linearizable and the replicas agree.
func TestLinearizableUnderDropsAndDelays(t *testing.T) {
	forSeeds(t, 1, func(t *testing.T, seed int64) {
		c := NewCluster(t, DefaultConfig(seed))
		c.WaitLeader()
		c.RunFor(3000 * TickEvery)
		c.Settle()
	})
}

// The same seed gives the same run: same history, operation by operation.
func TestSameSeedSameRun(t *testing.T) {
	run := func() string {
		cfg := DefaultConfig(7)
		cfg.MaxOps = 400
		c := NewCluster(t, cfg)
		c.WaitLeader()
		c.RunFor(500 * TickEvery)
		c.Partition(c.Leader())
		c.RunFor(400 * TickEvery)
		c.Settle()
		return fmt.Sprintf("%v", c.hist.ops)
	}
	if a, b := run(), run(); a != b {
		t.Fatalf("two runs of seed 7 differ:\n%.2000s\n---\n%.2000s", a, b)
	}
}

// A read path that answers from local state without checking leadership
// is caught: under a leader partition its history is not linearizable.
// This is what gives the passes of the real read paths their meaning.
func TestCheckerRejectsUncheckedReads(t *testing.T) {
	cfg := DefaultConfig(3)
	cfg.ReadPath = localReadPath{}
	c := NewCluster(t, cfg)
	old := c.WaitLeader()
	c.RunFor(300 * TickEvery)
	c.Partition(old)
	c.RunFor(600 * TickEvery)
	c.halted = true
	c.Heal()
	c.RunFor(2 * cfg.ClientTimeout)
	if res, _ := checkHistory(c.hist.ops); res != porcupine.Illegal {
		t.Fatalf("unchecked local reads under a partition: checker says %q, want Illegal (%d ops)", res, len(c.hist.ops))
	}
}

// The leader is cut off from both followers. They elect a new leader that
// commits writes; the old leader, still believing it leads until
// CheckQuorum steps it down, must not answer any read once the new
// leader committed, and the whole history stays linearizable.
func TestLeaderPartition(t *testing.T) {
	forSeeds(t, 11, func(t *testing.T, seed int64) {
		cfg := DefaultConfig(seed)
		cfg.MaxOps = 3000
		c := NewCluster(t, cfg)
		old := c.WaitLeader()
		c.RunFor(500 * TickEvery)
		c.Partition(old)
		// One client keeps asking the old leader, so reads surely reach it.
		c.PinClient(0, old)
		start := c.Now()
		readsBefore := c.Node(old).readsReceived
		defer c.requireTraffic("the partition", start, 100)
		// The new leader's first write acknowledged to a client.
		newLeader, committed := waitNewLeaderWrite(c, old)
		c.RunFor(600 * TickEvery)
		if c.Node(old).readsReceived == readsBefore {
			t.Fatalf("no client read reached the partitioned leader %d: the fault was not exercised", old)
		}
		for _, r := range c.hist.reads {
			if r.Node == old && r.Return > committed {
				t.Fatalf("old leader %d answered a read of %s at %d, after new leader %d committed at %d", old, r.Key, r.Return, newLeader, committed)
			}
		}
		c.UnpinClient(0)
		t.Logf("partitioned leader %d at %d (%d reads reached it); leader %d committed at %d; %d messages blocked",
			old, start, c.Node(old).readsReceived-readsBefore, newLeader, committed, c.net.blocked)
		c.Settle()
	})
}

// The leader's loop is frozen for three of the longest randomized
// election timeouts (six of the shortest) while its inbound traffic
// piles up, then resumes and drains it. The others have elected a new
// leader meanwhile; the old one steps down and no stale answer reaches a
// client.
func TestLeaderPause(t *testing.T) {
	forSeeds(t, 21, func(t *testing.T, seed int64) {
		c := NewCluster(t, DefaultConfig(seed))
		old := c.WaitLeader()
		c.RunFor(500 * TickEvery)
		c.Pause(old)
		defer c.requireTraffic("the pause", c.Now(), 100)
		c.RunFor(6 * electionTicks * TickEvery)
		if l := c.Leader(); l == 0 || l == old {
			t.Fatalf("no new leader while %d was paused (leader %d)", old, l)
		}
		c.Resume(old)
		c.RunUntil("the resumed leader steps down", 20*electionTicks*TickEvery, func() bool { return !c.Node(old).IsLeader() })
		c.RunFor(1000 * TickEvery)
		c.Settle()
	})
}

// Leadership moves to a chosen follower while clients run, twice.
func TestLeadershipTransfer(t *testing.T) {
	forSeeds(t, 31, func(t *testing.T, seed int64) {
		c := NewCluster(t, DefaultConfig(seed))
		defer c.requireTraffic("the first transfer", 400*TickEvery, 100)
		for round := 0; round < 2; round++ {
			c.RunFor(400 * TickEvery)
			from := c.WaitLeader()
			to := from%3 + 1
			c.TransferLeadership(to)
		}
		c.RunFor(600 * TickEvery)
		c.Settle()
	})
}

// A follower and then the leader are stopped (keel engine closed), the
// cluster goes on, and each comes back from its directory and its log:
// the applied index it recovers is the one it had, and it catches up.
func TestRestartNode(t *testing.T) {
	forSeeds(t, 41, func(t *testing.T, seed int64) {
		c := NewCluster(t, DefaultConfig(seed))
		c.WaitLeader()
		c.RunFor(500 * TickEvery)
		restartEach(c, nil)
		c.Settle()
	})
}

// restartEach stops a follower, then the leader, for 500 ticks each and
// restarts it: it must recover the applied index it had, and clients must
// keep completing operations. after (may be nil) runs 500 ticks after
// each restart, with the node and the time it restarted.
func restartEach(c *Cluster, after func(pick string, id uint64, restarted Time)) {
	c.t.Helper()
	start := c.Now()
	for _, pick := range []string{"follower", "leader"} {
		l := c.WaitLeader()
		id := l
		if pick == "follower" {
			id = l%3 + 1
		}
		had := c.Node(id).sm.AppliedIndex()
		c.Stop(id)
		c.RunFor(500 * TickEvery)
		c.Restart(id)
		restarted := c.Now()
		if got := c.Node(id).sm.AppliedIndex(); got != had || got == 0 {
			c.t.Fatalf("restarted %s %d recovered applied index %d, had %d", pick, id, got, had)
		}
		c.RunFor(500 * TickEvery)
		if after != nil {
			after(pick, id, restarted)
		}
	}
	c.requireTraffic("the restarts began", start, 100)
}

// Membership 3 -> 5 -> 3: nodes 4 and 5 join as learners, are promoted,
// then the original nodes 1 and 2 are removed (the leader among them too).
func TestMembershipChange(t *testing.T) {
	forSeeds(t, 51, func(t *testing.T, seed int64) {
		cfg := DefaultConfig(seed)
		// A learner never asks for a vote: it does not count.
		learnerVotes := 0
		cfg.Observer.Sent = func(n *Node, m *pb.Message, _ Time) {
			if t := m.GetType(); (t == pb.MsgVote || t == pb.MsgPreVote) && contains(n.conf.GetLearners(), n.ID()) {
				learnerVotes++
			}
		}
		c := NewCluster(t, cfg)
		c.WaitLeader()
		c.RunFor(300 * TickEvery)
		change := func(typ pb.ConfChangeType, id uint64) {
			c.ChangeConf(&pb.ConfChange{Type: typ.Enum(), NodeId: proto.Uint64(id)})
			c.RunFor(200 * TickEvery)
		}
		for _, id := range []uint64{4, 5} {
			c.AddNode(id)
			change(pb.ConfChangeAddLearnerNode, id)
			if c.Node(id).IsLeader() {
				t.Fatalf("learner %d became leader", id)
			}
			change(pb.ConfChangeAddNode, id)
		}
		if got := c.Conf(c.WaitLeader()).GetVoters(); len(got) != 5 {
			t.Fatalf("voters after growing: %v, want 5", got)
		}
		// A restarted member resumes at keel's applied index, past the
		// configuration changes: it restores them from its log.
		restarted := uint64(4)
		if c.Node(restarted).IsLeader() {
			restarted = 5
		}
		c.Stop(restarted)
		c.Restart(restarted)
		if got := c.Conf(restarted); len(got.GetVoters()) != 5 || len(got.GetLearners()) != 0 {
			t.Fatalf("restarted node %d has configuration %v, want 5 voters", restarted, got)
		}
		c.RunFor(200 * TickEvery)
		for _, id := range []uint64{1, 2} {
			if id == 1 {
				defer c.requireTraffic("the first removal", c.Now(), 100)
			}
			// Once the leader applied the removal the node is out (a
			// removed node may never learn that its removal committed).
			change(pb.ConfChangeRemoveNode, id)
			c.Stop(id)
		}
		if learnerVotes != 0 {
			t.Fatalf("learners sent %d vote requests", learnerVotes)
		}
		l := c.WaitLeader()
		if got := c.Conf(l).GetVoters(); fmt.Sprint(got) != "[3 4 5]" {
			t.Fatalf("voters after shrinking: %v, want [3 4 5]", got)
		}
		c.RunFor(600 * TickEvery)
		c.Settle()
	})
}
