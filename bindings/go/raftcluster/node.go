package raftcluster

import (
	"fmt"
	"math"
	"path/filepath"
	"strconv"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"keel"
)

// Raft timing, in ticks (one tick is TickEvery time units).
const (
	electionTicks  = 10
	heartbeatTicks = 1
)

// Node is one member of the cluster: an etcd raft RawNode, its log, and a
// keel engine with one shard holding the applied state.
//
// The raft log (a raft.MemoryStorage) stands for a durable log: the node
// appends Ready's entries and hard state to it before sending any of
// Ready's messages, as a disk-backed log would be synced, and it survives
// a restart of the node. The keel shard is really closed and reopened
// from its directory; the node then restarts raft at the applied index
// keel recovered (Config.Applied), so raft hands over only the committed
// entries after it, and restores the configuration changes at or below
// it from the log itself.
type Node struct {
	id uint64
	c  *Cluster

	dir     string
	storage *raft.MemoryStorage
	engine  *keel.Engine
	shard   *keel.Shard
	sm      StateMachine
	rn      *raft.RawNode

	up      bool
	paused  bool
	backlog []func() // work that arrived while paused, in arrival order
	// votesFrom: before this time the node, restarted, grants no vote
	// (see receive).
	votesFrom Time

	leader bool
	term   uint64
	lead   uint64
	conf   *pb.ConfState

	readsReceived int // client reads that reached this node's loop
	nextRead      uint64
	pendingReads  map[string]func(index uint64)
	pendingWrites map[string]func(error)
	waiters       []waiter
}

type waiter struct {
	index uint64
	run   func()
}

// initialSnapshot is the state every node's log starts from: index 1 of
// term 1, with the first three nodes as voters. Nodes added later start
// from it too, so the leader catches them up with plain appends.
func initialSnapshot() *pb.Snapshot {
	return &pb.Snapshot{Metadata: &pb.SnapshotMetadata{
		Index:     proto.Uint64(1),
		Term:      proto.Uint64(1),
		ConfState: &pb.ConfState{Voters: []uint64{1, 2, 3}},
	}}
}

func newNode(c *Cluster, id uint64) (*Node, error) {
	n := &Node{id: id, c: c, dir: filepath.Join(c.dir, "node-"+strconv.FormatUint(id, 10)), storage: raft.NewMemoryStorage()}
	if err := n.storage.ApplySnapshot(initialSnapshot()); err != nil {
		return nil, err
	}
	return n, n.start()
}

// ID returns the node's raft id.
func (n *Node) ID() uint64 { return n.id }

// StateMachine returns the node's applied state.
func (n *Node) StateMachine() StateMachine { return n.sm }

// Now returns the cluster's logical time.
func (n *Node) Now() Time { return n.c.sched.now }

// IsLeader reports whether raft on this node is the leader.
func (n *Node) IsLeader() bool { return n.up && n.leader }

// start opens the node's keel shard (creating it the first time) and a
// raft RawNode on the node's log.
func (n *Node) start() error {
	e, err := keel.OpenEngine(n.dir, &keel.EngineOptions{Durability: keel.DurabilityNone, WALSegmentSize: 1 << 20})
	if err != nil {
		return fmt.Errorf("node %d: %w", n.id, err)
	}
	sh, err := e.OpenShard(1, true)
	if err != nil {
		e.Close()
		return fmt.Errorf("node %d: %w", n.id, err)
	}
	snap, err := n.storage.Snapshot()
	if err != nil {
		e.Close()
		return err
	}
	sm, err := openKeelStateMachine(sh, snap.GetMetadata().GetIndex())
	if err != nil {
		e.Close()
		return fmt.Errorf("node %d: %w", n.id, err)
	}
	// Applied is where keel's shard says it is: raft hands over only the
	// entries after it (a restarted node applied the rest before).
	rn, err := raft.NewRawNode(&raft.Config{
		ID:                n.id,
		ElectionTick:      electionTicks,
		HeartbeatTick:     heartbeatTicks,
		Storage:           n.storage,
		Applied:           sm.AppliedIndex(),
		MaxSizePerMsg:     1 << 20,
		MaxInflightMsgs:   256,
		CheckQuorum:       true,
		PreVote:           true,
		StepDownOnRemoval: true,
		Logger:            &raft.DefaultLogger{Logger: quietLog},
	})
	if err != nil {
		e.Close()
		return fmt.Errorf("node %d: %w", n.id, err)
	}
	conf, err := restoreConf(rn, n.storage, snap, sm.AppliedIndex())
	if err != nil {
		e.Close()
		return fmt.Errorf("node %d: %w", n.id, err)
	}
	n.engine, n.shard, n.sm, n.rn = e, sh, sm, rn
	n.conf = conf
	n.up, n.paused, n.backlog = true, false, nil
	n.leader, n.term, n.lead = false, 0, 0
	n.pendingReads = map[string]func(uint64){}
	n.pendingWrites = map[string]func(error){}
	n.waiters = nil
	return nil
}

// restoreConf applies to rn the configuration changes of the log up to
// applied, which raft does not hand over again (a disk-backed node would
// keep its configuration in a snapshot instead), and returns the
// configuration they lead to.
func restoreConf(rn *raft.RawNode, storage *raft.MemoryStorage, snap *pb.Snapshot, applied uint64) (*pb.ConfState, error) {
	conf := snap.GetMetadata().GetConfState()
	from := snap.GetMetadata().GetIndex() + 1
	if applied < from {
		return conf, nil
	}
	ents, err := storage.Entries(from, applied+1, math.MaxUint64)
	if err != nil {
		return nil, fmt.Errorf("reading the log up to the applied index %d: %w", applied, err)
	}
	for _, e := range ents {
		cc, ok, err := confChange(e)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", e.GetIndex(), err)
		}
		if ok {
			conf = rn.ApplyConfChange(cc)
		}
	}
	return conf, nil
}

// confChange decodes a configuration change entry, of either version (a
// ConfChangeV2 enters or leaves a joint configuration); ok is false for
// an entry of another type.
func confChange(e *pb.Entry) (cc pb.ConfChangeI, ok bool, err error) {
	switch e.GetType() {
	case pb.EntryConfChange:
		var v1 pb.ConfChange
		return &v1, true, proto.Unmarshal(e.GetData(), &v1)
	case pb.EntryConfChangeV2:
		var v2 pb.ConfChangeV2
		return &v2, true, proto.Unmarshal(e.GetData(), &v2)
	}
	return nil, false, nil
}

// stop closes the node's shard and engine and forgets its raft state in
// memory (the log stays). Requests waiting on it are never answered.
func (n *Node) stop() error {
	if !n.up {
		return nil
	}
	n.up = false
	n.rn = nil
	n.pendingReads, n.pendingWrites, n.waiters, n.backlog = nil, nil, nil, nil
	err := n.engine.Close()
	n.engine, n.shard, n.sm = nil, nil, nil
	return err
}

// deliver runs f on the node's loop now, later if the node is paused
// (its inbound buffers fill while it does not run), or never when the
// node is down.
func (n *Node) deliver(f func()) {
	switch {
	case !n.up:
	case n.paused:
		n.backlog = append(n.backlog, f)
	default:
		f()
		n.handleReady()
	}
}

func (n *Node) receive(m *pb.Message) {
	n.deliver(func() {
		if o := n.c.observer.Received; o != nil {
			o(n, m, n.c.sched.now)
		}
		// A restarted node has forgotten the leader it heard from, and
		// raft's CheckQuorum guards only a leader the node knows: it
		// would grant a vote at once, while the leader may still serve
		// lease reads on an ack the node sent before it went down. So,
		// as CheckQuorum does for a leader it knows, it ignores vote
		// requests for an election timeout after it restarted.
		if t := m.GetType(); n.c.sched.now < n.votesFrom && (t == pb.MsgVote || t == pb.MsgPreVote) {
			return
		}
		// Step refuses only messages meant for another node or local
		// message types, which the network never carries.
		if err := n.rn.Step(m); err != nil && err != raft.ErrStepPeerNotFound {
			n.c.failf("node %d: Step(%v): %v", n.id, m.GetType(), err)
		}
	})
}

func (n *Node) tick() {
	if n.up && !n.paused {
		n.rn.Tick()
		n.handleReady()
	}
}

// pause stops the node's loop: no ticks, no message or request handled,
// everything that arrives is buffered. resume handles the buffer in
// arrival order, the way a process thawed after SIGSTOP drains its
// sockets.
func (n *Node) pause() { n.paused = true }

func (n *Node) resume() {
	n.paused = false
	backlog := n.backlog
	n.backlog = nil
	for _, f := range backlog {
		if !n.up {
			return
		}
		f()
		n.handleReady()
	}
}

// ReadIndex asks raft for a read index and calls done with it once raft
// has confirmed it; done is never called when the confirmation is lost
// (leadership lost, messages dropped).
func (n *Node) ReadIndex(done func(index uint64)) {
	n.nextRead++
	ctx := fmt.Sprintf("read-%d-%d", n.id, n.nextRead)
	n.pendingReads[ctx] = done
	n.rn.ReadIndex([]byte(ctx))
}

// WhenApplied runs f once the state machine has applied index.
func (n *Node) WhenApplied(index uint64, f func()) {
	if n.sm.AppliedIndex() >= index {
		f()
		return
	}
	n.waiters = append(n.waiters, waiter{index: index, run: f})
}

// propose starts a client write; done is called when the command is
// applied on this node. It returns ErrNotLeader when raft refuses it.
func (n *Node) propose(cmd Command, done func(error)) error {
	if !n.leader {
		return ErrNotLeader{Hint: n.lead}
	}
	if err := n.rn.Propose(cmd.encode()); err != nil {
		return ErrNotLeader{Hint: n.lead}
	}
	n.pendingWrites[cmd.Req] = done
	return nil
}

// handleReady runs raft's Ready loop: persist, send, apply, answer reads.
func (n *Node) handleReady() {
	for n.up && !n.paused && n.rn.HasReady() {
		rd := n.rn.Ready()
		if rd.SoftState != nil {
			n.setRole(rd.SoftState.RaftState == raft.StateLeader, n.term, rd.SoftState.Lead)
		}
		if rd.HardState != nil && !raft.IsEmptyHardState(rd.HardState) {
			if err := n.storage.SetHardState(rd.HardState); err != nil {
				n.c.failf("node %d: SetHardState: %v", n.id, err)
				return
			}
			n.setRole(n.leader, rd.HardState.GetTerm(), n.lead)
		}
		if rd.Snapshot != nil && !raft.IsEmptySnap(rd.Snapshot) {
			// The log is never compacted, so no leader ever sends one.
			n.c.failf("node %d: unexpected snapshot at index %d", n.id, rd.Snapshot.GetMetadata().GetIndex())
			return
		}
		if err := n.storage.Append(rd.Entries); err != nil {
			n.c.failf("node %d: Append: %v", n.id, err)
			return
		}
		for _, m := range rd.Messages {
			if o := n.c.observer.Sent; o != nil {
				o(n, m, n.c.sched.now)
			}
			n.c.net.send(m)
		}
		for _, e := range rd.CommittedEntries {
			if !n.apply(e) {
				return
			}
		}
		for _, rs := range rd.ReadStates {
			if done := n.pendingReads[string(rs.RequestCtx)]; done != nil {
				delete(n.pendingReads, string(rs.RequestCtx))
				done(rs.Index)
			}
		}
		n.rn.Advance(rd)
	}
}

func (n *Node) setRole(leader bool, term, lead uint64) {
	if leader == n.leader && term == n.term && lead == n.lead {
		return
	}
	n.leader, n.term, n.lead = leader, term, lead
	if leader {
		n.c.checkElectionSafety(n.id, term)
	}
	if o := n.c.observer.Role; o != nil {
		o(n, leader, term, lead)
	}
}

// apply hands one committed entry to the state machine (and
// configuration changes to raft), then answers the writes and reads it
// completes. It returns false when the node failed or stopped.
func (n *Node) apply(e *pb.Entry) bool {
	index := e.GetIndex()
	var cmd *Command
	switch e.GetType() {
	case pb.EntryNormal:
		if len(e.GetData()) > 0 {
			c, err := decodeCommand(e.GetData())
			if err != nil {
				n.c.failf("node %d: entry %d: %v", n.id, index, err)
				return false
			}
			cmd = &c
		}
	case pb.EntryConfChange, pb.EntryConfChangeV2:
		cc, _, err := confChange(e)
		if err != nil {
			n.c.failf("node %d: entry %d: %v", n.id, index, err)
			return false
		}
		n.conf = n.rn.ApplyConfChange(cc)
	default:
		n.c.failf("node %d: entry %d of unexpected type %v", n.id, index, e.GetType())
		return false
	}
	if err := n.sm.Apply(index, cmd); err != nil {
		n.c.failf("node %d: %v", n.id, err)
		return false
	}
	if o := n.c.observer.Applied; o != nil {
		o(n, index)
	}
	if cmd != nil {
		if done := n.pendingWrites[cmd.Req]; done != nil {
			delete(n.pendingWrites, cmd.Req)
			done(nil)
		}
	}
	if len(n.waiters) > 0 {
		kept := n.waiters[:0]
		var ready []waiter
		for _, w := range n.waiters {
			if w.index <= index {
				ready = append(ready, w)
			} else {
				kept = append(kept, w)
			}
		}
		n.waiters = kept
		for _, w := range ready {
			w.run()
		}
	}
	return n.up
}
