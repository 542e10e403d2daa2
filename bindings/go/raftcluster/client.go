package raftcluster

import (
	"errors"
	"fmt"
	"math"

	"github.com/anishathalye/porcupine"
)

// kvInput and kvOutput are one operation of the history.
type kvInput struct {
	Op    string // "get", "put", "delete"
	Key   string
	Value string
}

type kvOutput struct {
	Value   string
	Found   bool
	Unknown bool // a write whose outcome the client never learned
}

// Read is a completed read with the node that served it, for the tests'
// own assertions beside the history check.
type Read struct {
	Node         uint64
	Call, Return Time
	Key          string
}

type history struct {
	ops   []porcupine.Operation
	reads []Read
}

// op is a client's operation in flight.
type op struct {
	in   kvInput
	call Time
	req  string
}

// client issues one operation at a time to the node it believes leads,
// waits for the answer or its timeout, then starts the next.
type client struct {
	c      *Cluster
	id     int
	seq    int
	target uint64
	pinned bool // target never changes (PinClient)
	op     *op
}

func keyName(k int) string { return fmt.Sprintf("k%d", k) }

// next starts the client's next operation after a short think time.
func (cl *client) next() {
	c := cl.c
	if c.halted || c.started >= c.cfg.MaxOps {
		return
	}
	c.started++
	cl.seq++
	in := kvInput{Key: keyName(c.sched.rng.Intn(c.cfg.Keys))}
	switch r := c.sched.rng.Intn(10); {
	case r < 5:
		in.Op = "get"
	case r < 9:
		in.Op, in.Value = "put", fmt.Sprintf("c%d-%d", cl.id, cl.seq)
	default:
		in.Op = "delete"
	}
	o := &op{in: in, call: c.sched.now, req: fmt.Sprintf("c%d-%d", cl.id, cl.seq)}
	cl.op = o
	target := cl.target
	c.sched.after(c.sched.between(1, 3), func() { cl.serve(o, target) })
	c.sched.after(c.cfg.ClientTimeout, func() {
		if cl.op == o {
			cl.finish(o, nil, errors.New("timeout"), 0)
		}
	})
}

// serve runs on node target's loop when the request arrives there.
func (cl *client) serve(o *op, target uint64) {
	c := cl.c
	n := c.nodes[target]
	answer := func(res *ReadResult, err error) {
		c.sched.after(c.sched.between(1, 3), func() {
			if cl.op == o {
				cl.finish(o, res, err, target)
			}
		})
	}
	if n == nil || !n.up {
		answer(nil, errStopped)
		return
	}
	n.deliver(func() {
		if o.in.Op == "get" {
			n.readsReceived++
			c.cfg.ReadPath.Read(n, o.in.Key, func(r ReadResult) { answer(&r, r.Err) })
			return
		}
		if !n.leader {
			answer(nil, ErrNotLeader{Hint: n.lead})
			return
		}
		cmd := Command{Req: o.req, Key: o.in.Key, Value: o.in.Value, Delete: o.in.Op == "delete"}
		if err := n.propose(cmd, func(err error) { answer(nil, err) }); err != nil {
			answer(nil, err)
		}
	})
}

// finish records the operation's outcome and starts the next one. A read
// or a refused write with no answer had no effect and stays out of the
// history; a write that timed out may still commit, so it goes in with
// an unknown outcome and no return time.
func (cl *client) finish(o *op, res *ReadResult, err error, node uint64) {
	c := cl.c
	cl.op = nil
	var nl ErrNotLeader
	switch {
	case errors.As(err, &nl):
		cl.retarget(nl.Hint)
	case err != nil && err.Error() == "timeout":
		cl.retarget(0)
		if o.in.Op != "get" {
			c.hist.ops = append(c.hist.ops, porcupine.Operation{ClientId: cl.id, Input: o.in, Call: int64(o.call), Output: kvOutput{Unknown: true}, Return: math.MaxInt64})
		}
	case errors.Is(err, errStopped):
		cl.retarget(0)
	case err != nil:
		c.failf("client %d: %s %s: %v", cl.id, o.in.Op, o.in.Key, err)
	default:
		out := kvOutput{}
		if o.in.Op == "get" {
			out.Value, out.Found = res.Value, res.Found
			c.hist.reads = append(c.hist.reads, Read{Node: node, Call: o.call, Return: c.sched.now, Key: o.in.Key})
		}
		c.hist.ops = append(c.hist.ops, porcupine.Operation{ClientId: cl.id, Input: o.in, Call: int64(o.call), Output: out, Return: int64(c.sched.now)})
	}
	c.sched.after(c.sched.between(TickEvery, 8*TickEvery), cl.next)
}

// retarget follows a leader hint, or picks a node at random.
func (cl *client) retarget(hint uint64) {
	if cl.pinned {
		return
	}
	if hint != 0 {
		cl.target = hint
		return
	}
	ids := cl.c.ids()
	cl.target = ids[cl.c.sched.rng.Intn(len(ids))]
}
