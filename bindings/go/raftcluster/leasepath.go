package raftcluster

import (
	"errors"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"

	"keel"
)

// The lease, in logical units (one unit is one millisecond on keel's
// manual clock), and the numbers keel checks it against. A follower's
// election timer counts ticks, so it may fire up to one tick sooner than
// electionTicks × TickEvery after it last heard from the leader: that
// tick is the "drift". The round trip is the network's longest (two
// deliveries of DefaultConfig's MaxDelay). keel refuses a lease that is
// not below 100 − 10 − 12 = 78.
const (
	leaseLength        = 60
	leaseElectionMin   = electionTicks * TickEvery
	leaseDrift         = TickEvery
	leaseMaxRoundTrip  = 2 * defaultMaxDelay
	leaseReadTimeoutMs = 1000
)

// unit is one logical time unit on keel's clock.
const unit = time.Millisecond

// keelNow is logical time t on keel's manual clock, in nanoseconds.
// keel reads 0 as "no time", so the clock starts one unit in.
func keelNow(t Time) uint64 { return uint64(t+1) * uint64(unit) }

// LeasePath serves reads through keel's lease gate: each node's shard is
// configured for lease reads on a manual clock that follows the
// cluster's logical time, and the path feeds it raft's facts from the
// node's Observer. A read calls GetWith at level lease: keel serves it
// locally when the lease holds, answers NOT_LEADER on a follower, and
// otherwise calls the read-index callback.
//
// keel's callback is synchronous, but the cluster's read index is a round
// trip on the same single loop, so a callback that blocked would block
// the loop it waits on. The path therefore runs a miss in two steps: the
// callback, asked for an index it does not have, notes it and fails the
// call; the path then makes the raft read-index round trip (n.ReadIndex),
// waits for the node to apply the index, and calls GetWith again with the
// callback armed to return that index. Every index keel uses comes from a
// round trip that began after the read did, as keel's contract requires.
// keel counts both calls (the first as a read-index error).
//
// Acks: raft answers every MsgApp and MsgHeartbeat it receives from the
// leader of its term with one MsgAppResp or MsgHeartbeatResp, and the
// network may reorder or drop them. So the path keeps, per peer and for
// the current term, the send times of the appends and heartbeats sent to
// it, in order; the i-th response received from the peer proves it
// received i distinct messages, one of them sent no earlier than the i-th
// send time, and that is the ack reported. A lost message makes later
// acks older than they could be (never younger), so the lease tests run
// without random loss.
type LeasePath struct {
	// The deliberately broken variants, for the tests that show the
	// checks catch them: stamp acks with the time the response was
	// received, or never tell keel a leadership transfer started.
	stampReceiveTime       bool
	skipTransferSuspension bool

	nodes map[uint64]*leaseNode
	// served lists every read this path answered, in order, unless
	// unrecorded (the benchmark, whose reads would fill the memory).
	served     []leaseRead
	unrecorded bool
	// readIndexRounds counts the raft read-index round trips made.
	readIndexRounds int
}

// leaseRead is one answered read: which node served it, when, and
// whether keel served it from the lease (Hit) or after a read index.
type leaseRead struct {
	Node uint64
	At   Time
	Key  string
	Hit  bool
	// Transferring: the node had started a leadership transfer that raft
	// had not yet ended.
	Transferring bool
	// Leader: the node led (as raft told it) when it served the read.
	Leader bool
}

// leaseNode is the path's state for one open of a node's shard.
type leaseNode struct {
	shard        *keel.Shard
	cons         keel.Consensus
	leader       bool
	term, lead   uint64
	conf         *pb.ConfState
	termApplied  bool
	transferring bool
	// sent holds, per peer, the send times of this term's appends and
	// heartbeats not yet matched with a response.
	sent map[uint64][]Time
	// armed is the index the next read-index callback returns (0: none,
	// so the callback records that a round trip is needed and fails).
	armed  uint64
	wanted bool
}

var errRoundTripNeeded = errors.New("raft read-index round trip needed")

// NewLeasePath returns the lease read path.
func NewLeasePath() *LeasePath { return &LeasePath{nodes: map[uint64]*leaseNode{}} }

// LeaseConfig is DefaultConfig reading through p, with p's observer
// installed and no random message loss (see LeasePath on acks).
func LeaseConfig(seed int64, p *LeasePath) Config {
	cfg := DefaultConfig(seed)
	cfg.Net.DropRate = 0
	cfg.ReadPath = p
	cfg.Observer = p.Observer()
	return cfg
}

// Observer returns the hooks that feed keel from raft.
func (p *LeasePath) Observer() Observer {
	return Observer{
		Sent:     p.sent,
		Received: p.received,
		Role:     func(n *Node, _ bool, _, _ uint64) { p.state(n) },
		Applied:  p.applied,
		Transfer: p.transfer,
	}
}

// state returns the node's lease state, configuring a shard keel has not
// seen (a first start or a restart), and brings keel's clock, role and
// voters up to date with the node.
func (p *LeasePath) state(n *Node) *leaseNode {
	st := p.nodes[n.id]
	if st == nil || st.shard != n.shard {
		st = &leaseNode{shard: n.shard, cons: n.shard.Consensus(), sent: map[uint64][]Time{}}
		err := n.shard.ConfigureConsensus(keel.LeaseOptions{
			SelfID:             n.id,
			Lease:              leaseLength * unit,
			ElectionTimeoutMin: time.Duration(leaseElectionMin) * unit,
			MaxClockDrift:      time.Duration(leaseDrift) * unit,
			MaxRoundTrip:       time.Duration(leaseMaxRoundTrip) * unit,
			ReadTimeout:        leaseReadTimeoutMs * time.Millisecond,
			ManualClock:        true,
			ReadIndex:          st.readIndex,
		})
		if err != nil {
			n.c.failf("node %d: ConfigureConsensus: %v", n.id, err)
		}
		p.nodes[n.id] = st
		// The state the shard opened with: keel's gate starts at the
		// shard's applied index, but a fresh node's state is the log's
		// initial snapshot, which keel never applied. raft never hands
		// those entries to Applied, yet a read index may name them.
		p.must(n, st.cons.SetApplied(n.sm.AppliedIndex()))
	}
	p.must(n, st.cons.SetClock(keelNow(n.Now())))
	if st.leader != n.leader || st.term != n.term || st.lead != n.lead {
		role := keel.RoleFollower
		if n.leader {
			role = keel.RoleLeader
		}
		// keel forgets acks, the own-term entry and a transfer itself.
		p.must(n, st.cons.SetRole(role, n.term, n.lead))
		if st.leader != n.leader || st.term != n.term {
			st.termApplied, st.transferring = false, false
			st.sent = map[uint64][]Time{}
		}
		st.leader, st.term, st.lead = n.leader, n.term, n.lead
	}
	if st.conf != n.conf {
		p.must(n, st.cons.SetVoters(n.conf.GetVoters(), n.conf.GetVotersOutgoing()))
		st.conf = n.conf
	}
	return st
}

func (p *LeasePath) must(n *Node, err error) {
	if err != nil {
		n.c.failf("node %d: lease facts: %v", n.id, err)
	}
}

// readIndex is keel's read-index callback (see LeasePath).
func (st *leaseNode) readIndex() (uint64, error) {
	if i := st.armed; i != 0 {
		st.armed = 0
		return i, nil
	}
	st.wanted = true
	return 0, errRoundTripNeeded
}

func (p *LeasePath) sent(n *Node, m *pb.Message, at Time) {
	st := p.state(n)
	if t := m.GetType(); st.leader && m.GetTerm() == st.term && (t == pb.MsgApp || t == pb.MsgHeartbeat) {
		st.sent[m.GetTo()] = append(st.sent[m.GetTo()], at)
	}
}

func (p *LeasePath) received(n *Node, m *pb.Message, at Time) {
	st := p.state(n)
	p.syncTransfer(n, st)
	t := m.GetType()
	// A MsgAppResp with index 0 answers an append of an older term (a
	// follower refusing it); it is no response to this term's messages.
	isResp := t == pb.MsgHeartbeatResp || (t == pb.MsgAppResp && m.GetIndex() > 0)
	if !st.leader || m.GetTerm() != st.term || !isResp {
		return
	}
	from := m.GetFrom()
	q := st.sent[from]
	if len(q) == 0 {
		return
	}
	stamp := q[0]
	st.sent[from] = q[1:]
	if p.stampReceiveTime {
		stamp = at
	}
	// keel ignores (and counts) acks of learners and removed peers.
	p.must(n, st.cons.Ack(from, st.term, keelNow(stamp)))
}

// applied runs after the node applied index through keel, which moved
// its lease gate's applied index already; only the own-term fact is left.
func (p *LeasePath) applied(n *Node, index uint64) {
	st := p.state(n)
	if st.leader && !st.termApplied {
		if term, err := n.storage.Term(index); err == nil && term == st.term {
			_, err := st.cons.TermApplied(term)
			p.must(n, err)
			st.termApplied = true
		}
	}
}

// transfer runs before raft is asked to hand leadership to target, so
// before it can send MsgTimeoutNow.
func (p *LeasePath) transfer(n *Node, target uint64) {
	st := p.state(n)
	if !st.leader {
		return
	}
	st.transferring = true
	if !p.skipTransferSuspension {
		p.must(n, st.cons.SetTransfer(true))
	}
}

// syncTransfer reports the end of a transfer raft abandoned while this
// node still leads (losing the lead ends it in keel by itself).
func (p *LeasePath) syncTransfer(n *Node, st *leaseNode) {
	if st.transferring && st.leader && n.rn.BasicStatus().LeadTransferee == 0 {
		st.transferring = false
		if !p.skipTransferSuspension {
			p.must(n, st.cons.SetTransfer(false))
		}
	}
}

// Read serves one client read at level lease (ReadPath).
func (p *LeasePath) Read(n *Node, key string, reply func(ReadResult)) {
	p.ReadKeys(n, []string{key}, keel.ReadLease, func(rs []ReadResult) { reply(rs[0]) })
}

// ReadKeys reads keys on n at level (keel.ReadLease or
// keel.ReadLinearizable) with one check for all of them: one key is one
// GetWith, several are one keel read session (ReadBegin, one MultiGetWith),
// so a miss costs one raft read-index round trip whatever their number.
// reply gets one result per key (the same error in each when the read
// failed).
func (p *LeasePath) ReadKeys(n *Node, keys []string, level keel.ReadLevel, reply func([]ReadResult)) {
	st := p.state(n)
	p.syncTransfer(n, st)
	st.armed, st.wanted = 0, false
	res, err := p.read(n, st, keys, level)
	if err == nil || !st.wanted {
		reply(res)
		return
	}
	p.readIndexRounds++
	n.ReadIndex(func(index uint64) {
		n.WhenApplied(index, func() {
			st := p.state(n)
			p.syncTransfer(n, st)
			st.armed, st.wanted = index, false
			res, _ := p.read(n, st, keys, level)
			st.armed = 0
			reply(res)
		})
	})
}

// read reads keys at level and records what served them.
func (p *LeasePath) read(n *Node, st *leaseNode, keys []string, level keel.ReadLevel) ([]ReadResult, error) {
	armed := st.armed
	vals, err := fetch(n.shard, keys, level)
	var ke *keel.Error
	switch {
	case errors.As(err, &ke) && ke.Code == keel.StatusNotLeader:
		return failed(len(keys), ErrNotLeader{Hint: ke.LeaderHint}), err
	case err != nil:
		return failed(len(keys), err), err
	}
	// The callback consumes an armed index; one still armed was not used.
	hit := armed == 0 && !st.wanted || armed != 0 && st.armed != 0
	res := make([]ReadResult, len(keys))
	for i, key := range keys {
		if !p.unrecorded {
			p.served = append(p.served, leaseRead{Node: n.id, At: n.Now(), Key: key, Hit: hit, Transferring: st.transferring, Leader: n.leader})
		}
		if vals[i] != nil {
			res[i] = ReadResult{Value: string(vals[i].Bytes), Found: true}
		}
	}
	return res, nil
}

// fetch reads keys from shard at level; an absent key's value is nil.
func fetch(shard *keel.Shard, keys []string, level keel.ReadLevel) ([]*keel.Value, error) {
	if len(keys) == 1 {
		v, err := shard.GetWith([]byte(keys[0]), &keel.ReadOptions{Level: level})
		switch {
		case errors.Is(err, keel.ErrNotFound):
			return []*keel.Value{nil}, nil
		case err != nil:
			return nil, err
		}
		return []*keel.Value{&v}, nil
	}
	rs, err := shard.ReadBegin(level, 0)
	if err != nil {
		return nil, err
	}
	defer rs.End()
	bkeys := make([][]byte, len(keys))
	for i, k := range keys {
		bkeys[i] = []byte(k)
	}
	return shard.MultiGetWith(bkeys, &keel.ReadOptions{Session: rs})
}

func failed(n int, err error) []ReadResult {
	res := make([]ReadResult, n)
	for i := range res {
		res[i].Err = err
	}
	return res
}
