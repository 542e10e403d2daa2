// Package raftcluster runs a cluster of etcd raft nodes whose state
// machines are keel shards, in one process, on one goroutine, under a
// seeded scheduler that owns the clock, the network and the faults; its
// tests check the clients' history for linearizability with porcupine.
// It is a module of its own so the keel binding's users never depend on
// raft or porcupine.
package raftcluster

import (
	"fmt"
	"io"
	"log"
	"math"
	"math/rand"
	"sort"
	"testing"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// quietLog swallows raft's informational logging (its panics still panic).
var quietLog = log.New(io.Discard, "", 0)

// Config describes a cluster run. Everything random in the run (network
// delays and drops, client choices, raft's election jitter) is drawn
// from Seed.
type Config struct {
	Seed     int64
	Net      NetConfig
	ReadPath ReadPath
	Observer Observer
	Clients  int
	Keys     int
	// MaxOps bounds the history: clients stop starting operations once
	// this many were started.
	MaxOps int
	// ClientTimeout is how long a client waits for an answer.
	ClientTimeout Time
	// RealTime, when non-zero, runs the cluster in real time, one unit
	// lasting RealTime on the wall clock (see scheduler), for the
	// benchmark (bench_test.go). Such a run depends on the machine's
	// speed and is not replayable from its seed.
	RealTime time.Duration
}

// defaultMaxDelay is DefaultConfig's longest delivery; the lease path's
// round-trip margin is two of them.
const defaultMaxDelay Time = 6

// DefaultConfig is the configuration the tests start from.
func DefaultConfig(seed int64) Config {
	return Config{
		Seed:          seed,
		Net:           NetConfig{MinDelay: 1, MaxDelay: defaultMaxDelay, DropRate: 0.01},
		ReadPath:      ReadIndexPath{},
		Clients:       6,
		Keys:          4,
		MaxOps:        2500,
		ClientTimeout: 40 * TickEvery,
	}
}

// Cluster is a raft cluster in one process, on one goroutine: the test
// owns the clock, the network and every node's loop.
type Cluster struct {
	t        testing.TB
	cfg      Config
	dir      string
	sched    *scheduler
	net      *network
	observer Observer
	nodes    map[uint64]*Node
	clients  []*client
	hist     history
	started  int
	halted   bool // clients start no new operation
	failed   bool
	// leaders records who led each term: raft's election safety says at
	// most one node per term, which the cluster checks on every change.
	leaders map[uint64]uint64
	restore func()
}

// NewCluster starts nodes 1..3 (all voters) with the configured clients.
// Close it at the end (t.Cleanup does it).
func NewCluster(t testing.TB, cfg Config) *Cluster {
	t.Helper()
	c := &Cluster{
		t:        t,
		cfg:      cfg,
		dir:      t.TempDir(),
		sched:    &scheduler{rng: rand.New(rand.NewSource(cfg.Seed)), pace: cfg.RealTime, start: time.Now()},
		observer: cfg.Observer,
		nodes:    map[uint64]*Node{},
		leaders:  map[uint64]uint64{},
		restore:  seedCryptoRand(cfg.Seed),
	}
	c.net = &network{c: c, cfg: cfg.Net}
	t.Cleanup(c.close)
	for id := uint64(1); id <= 3; id++ {
		c.AddNode(id)
	}
	c.sched.after(TickEvery, c.tickAll)
	for i := 0; i < cfg.Clients; i++ {
		cl := &client{c: c, id: i, target: uint64(1 + i%3)}
		c.clients = append(c.clients, cl)
		c.sched.after(c.sched.between(1, TickEvery), cl.next)
	}
	return c
}

func (c *Cluster) close() {
	for _, id := range c.ids() {
		if err := c.nodes[id].stop(); err != nil {
			c.t.Errorf("closing node %d: %v", id, err)
		}
	}
	if c.restore != nil {
		c.restore()
		c.restore = nil
	}
}

func (c *Cluster) failf(format string, args ...any) {
	c.failed = true
	c.t.Errorf(format, args...)
}

// AddNode starts a node that is not (yet) in the configuration; it joins
// when a configuration change adds it.
func (c *Cluster) AddNode(id uint64) *Node {
	c.t.Helper()
	n, err := newNode(c, id)
	if err != nil {
		c.t.Fatalf("starting node %d: %v", id, err)
	}
	c.nodes[id] = n
	return n
}

// Node returns the node with raft id id.
func (c *Cluster) Node(id uint64) *Node { return c.nodes[id] }

// Now is the logical time.
func (c *Cluster) Now() Time { return c.sched.now }

func (c *Cluster) ids() []uint64 {
	ids := make([]uint64, 0, len(c.nodes))
	for id := range c.nodes {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

func (c *Cluster) tickAll() {
	for _, id := range c.ids() {
		c.nodes[id].tick()
	}
	c.sched.after(TickEvery, c.tickAll)
}

// RunFor advances the logical clock by d.
func (c *Cluster) RunFor(d Time) {
	c.t.Helper()
	end := c.sched.now + d
	for !c.failed && c.sched.next(end) {
	}
	if c.failed {
		c.t.FailNow()
	}
	c.sched.advance(end)
}

// RunUntil advances the clock until cond holds (checked after every
// event) and fails the test when it does not within limit.
func (c *Cluster) RunUntil(what string, limit Time, cond func() bool) {
	c.t.Helper()
	end := c.sched.now + limit
	for !cond() {
		if c.failed {
			c.t.FailNow()
		}
		if !c.sched.next(end) {
			c.t.Fatalf("seed %d: after %d time units: %s never happened", c.cfg.Seed, limit, what)
		}
	}
}

// Leader returns the id of the node that leads in the highest term among
// running nodes, 0 when none does.
func (c *Cluster) Leader() uint64 {
	var best, term uint64
	for _, id := range c.ids() {
		n := c.nodes[id]
		if n.up && !n.paused && n.leader && n.term >= term {
			best, term = id, n.term
		}
	}
	return best
}

// WaitLeader runs until some running node leads and returns it.
func (c *Cluster) WaitLeader() uint64 {
	c.t.Helper()
	c.RunUntil("a leader elected", 100*electionTicks*TickEvery, func() bool { return c.Leader() != 0 })
	return c.Leader()
}

// PinClient makes client i send every request to node id, whatever the
// answers say, so a test knows requests reach that node; UnpinClient
// lets it follow leader hints again.
func (c *Cluster) PinClient(i int, id uint64) { c.clients[i].target, c.clients[i].pinned = id, true }
func (c *Cluster) UnpinClient(i int)          { c.clients[i].pinned = false }

// Partition cuts the listed nodes off from the others; Heal ends it.
func (c *Cluster) Partition(group ...uint64) { c.net.partition(group...) }
func (c *Cluster) Heal()                     { c.net.heal() }

// Pause freezes a node's loop (no ticks, nothing handled, inbound
// traffic buffered); Resume thaws it.
func (c *Cluster) Pause(id uint64)  { c.nodes[id].pause() }
func (c *Cluster) Resume(id uint64) { c.nodes[id].resume() }

// Stop closes a node (its keel engine included); Restart reopens it from
// its directory and its log, voting for nobody for an election timeout
// (see Node.receive).
func (c *Cluster) Stop(id uint64) {
	c.t.Helper()
	if err := c.nodes[id].stop(); err != nil {
		c.t.Fatalf("stopping node %d: %v", id, err)
	}
}

func (c *Cluster) Restart(id uint64) {
	c.t.Helper()
	n := c.nodes[id]
	if err := n.start(); err != nil {
		c.t.Fatalf("restarting node %d: %v", id, err)
	}
	n.votesFrom = c.Now() + electionTicks*TickEvery
	n.handleReady()
}

// TransferLeadership asks the leader to hand over to target and runs
// until target leads. Raft abandons a transfer that does not finish
// within an election timeout (its MsgTimeoutNow may be dropped, or
// another node may win an election meanwhile), so the current leader is
// asked again after each such timeout.
func (c *Cluster) TransferLeadership(target uint64) {
	c.t.Helper()
	for attempt := 0; c.Leader() != target; attempt++ {
		if attempt == 20 {
			c.t.Fatalf("seed %d: leadership never moved to %d", c.cfg.Seed, target)
		}
		c.StartTransfer(target)
		c.runAtMost(2*electionTicks*TickEvery, func() bool { return c.Leader() == target })
	}
}

// StartTransfer asks the current leader to hand over to target and
// returns at once; the observer hears of it first.
func (c *Cluster) StartTransfer(target uint64) {
	c.t.Helper()
	n := c.nodes[c.WaitLeader()]
	if o := c.observer.Transfer; o != nil {
		o(n, target)
	}
	n.rn.TransferLeader(target)
	n.handleReady()
}

// runAtMost runs events until done holds or d has passed, whichever
// comes first.
func (c *Cluster) runAtMost(d Time, done func() bool) {
	c.t.Helper()
	end := c.sched.now + d
	for !done() && !c.failed && c.sched.next(end) {
	}
	if c.failed {
		c.t.FailNow()
	}
}

// ChangeConf proposes cc on the leader until the leader has applied it
// (a proposal can be lost with a leader change; re-proposing the same
// change is harmless).
func (c *Cluster) ChangeConf(cc *pb.ConfChange) {
	c.t.Helper()
	c.changeConf(cc, func(cs *pb.ConfState) bool { return confHas(cs, cc) })
}

// ChangeConfV2 is ChangeConf for a ConfChangeV2 (entering or leaving a
// joint configuration); applied tells from the leader's configuration
// whether the change is in.
func (c *Cluster) ChangeConfV2(cc *pb.ConfChangeV2, applied func(*pb.ConfState) bool) {
	c.t.Helper()
	c.changeConf(cc, applied)
}

func (c *Cluster) changeConf(cc pb.ConfChangeI, applied func(*pb.ConfState) bool) {
	c.t.Helper()
	done := func() bool {
		l := c.Leader()
		return l != 0 && applied(c.nodes[l].conf)
	}
	for attempt := 0; !done(); attempt++ {
		if attempt == 20 {
			c.t.Fatalf("seed %d: configuration change %v never applied", c.cfg.Seed, cc)
		}
		l := c.WaitLeader()
		n := c.nodes[l]
		if err := n.rn.ProposeConfChange(proto.Clone(cc.(proto.Message)).(pb.ConfChangeI)); err == nil {
			n.handleReady()
		}
		c.runAtMost(30*TickEvery, done)
	}
}

func confHas(cs *pb.ConfState, cc *pb.ConfChange) bool {
	id := cc.GetNodeId()
	switch cc.GetType() {
	case pb.ConfChangeAddNode:
		return contains(cs.GetVoters(), id)
	case pb.ConfChangeAddLearnerNode:
		return contains(cs.GetLearners(), id)
	case pb.ConfChangeRemoveNode:
		return !contains(cs.GetVoters(), id) && !contains(cs.GetLearners(), id)
	}
	return false
}

func contains(ids []uint64, id uint64) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// Conf returns the configuration node id has applied.
func (c *Cluster) Conf(id uint64) *pb.ConfState { return c.nodes[id].conf }

// Settle stops the clients, heals the network, waits for every client
// to finish its operation and every running member to apply the same
// index, then checks that all of them hold the same data and that the
// history is linearizable.
func (c *Cluster) Settle() {
	c.t.Helper()
	c.halted = true
	c.Heal()
	c.RunUntil("clients idle", 10*c.cfg.ClientTimeout, func() bool {
		for _, cl := range c.clients {
			if cl.op != nil {
				return false
			}
		}
		return true
	})
	c.RunUntil("all members applied the same index", 400*TickEvery, func() bool {
		l := c.Leader()
		if l == 0 {
			return false
		}
		want := c.nodes[l].rn.BasicStatus().HardState.GetCommit()
		for _, id := range c.members() {
			n := c.nodes[id]
			if !n.up || n.sm.AppliedIndex() != want {
				return false
			}
		}
		return true
	})
	c.checkReplicasAgree()
	c.CheckLinearizable()
}

// members are the running nodes in the leader's configuration.
func (c *Cluster) members() []uint64 {
	cs := c.nodes[c.Leader()].conf
	ids := append(append([]uint64{}, cs.GetVoters()...), cs.GetLearners()...)
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

func (c *Cluster) checkReplicasAgree() {
	c.t.Helper()
	ids := c.members()
	for k := 0; k < c.cfg.Keys; k++ {
		key := keyName(k)
		var first string
		for i, id := range ids {
			v, found, err := c.nodes[id].sm.Get(key)
			if err != nil {
				c.t.Fatalf("node %d: Get(%s): %v", id, key, err)
			}
			got := fmt.Sprintf("%v:%q", found, v)
			if i == 0 {
				first = got
			} else if got != first {
				c.t.Fatalf("seed %d: replicas disagree on %s: node %d has %s, node %d has %s", c.cfg.Seed, key, ids[0], first, id, got)
			}
		}
	}
}

// requireTraffic fails the test unless clients completed at least min
// operations that started at or after from, so a fault is known to have
// met real traffic.
func (c *Cluster) requireTraffic(what string, from Time, min int) {
	c.t.Helper()
	n := 0
	for _, op := range c.hist.ops {
		if Time(op.Call) >= from && op.Return != math.MaxInt64 {
			n++
		}
	}
	if n < min {
		c.t.Fatalf("seed %d: only %d operations completed after %s (at %d), want at least %d", c.cfg.Seed, n, what, from, min)
	}
	c.t.Logf("%d operations completed after %s", n, what)
}

func (c *Cluster) checkElectionSafety(id, term uint64) {
	if other, ok := c.leaders[term]; ok && other != id {
		c.failf("seed %d: nodes %d and %d both led term %d", c.cfg.Seed, other, id, term)
		return
	}
	c.leaders[term] = id
}
