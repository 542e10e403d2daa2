package raftcluster

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/anishathalye/porcupine"
)

// CheckTimeout bounds the linearizability check; a check that does not
// finish in time fails the test (an unproven history is not a pass).
const CheckTimeout = 60 * time.Second

type kvState struct {
	Value string
	Found bool
}

// kvModel is a register per key: put sets it, delete clears it, get must
// see it. Histories are partitioned by key, so each check is small.
var kvModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range h {
			k := op.Input.(kvInput).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return kvState{} },
	Step: func(state, input, output any) (bool, any) {
		s, in, out := state.(kvState), input.(kvInput), output.(kvOutput)
		switch in.Op {
		case "put":
			return true, kvState{Value: in.Value, Found: true}
		case "delete":
			return true, kvState{}
		default:
			return out.Found == s.Found && out.Value == s.Value, s
		}
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(kvInput), output.(kvOutput)
		switch {
		case in.Op == "get":
			return fmt.Sprintf("get(%s) -> %v %q", in.Key, out.Found, out.Value)
		case out.Unknown:
			return fmt.Sprintf("%s(%s, %q) -> ?", in.Op, in.Key, in.Value)
		}
		return fmt.Sprintf("%s(%s, %q)", in.Op, in.Key, in.Value)
	},
}

// checkHistory returns porcupine's verdict on ops.
func checkHistory(ops []porcupine.Operation) (porcupine.CheckResult, porcupine.LinearizationInfo) {
	return porcupine.CheckOperationsVerbose(kvModel, ops, CheckTimeout)
}

// CheckLinearizable fails the test unless the history is proven
// linearizable; on a violation it writes porcupine's visualization next
// to the test's temporary files and names it.
func (c *Cluster) CheckLinearizable() {
	c.t.Helper()
	res, info := checkHistory(c.hist.ops)
	switch res {
	case porcupine.Ok:
		c.t.Logf("seed %d: history of %d operations (%d reads served) is linearizable", c.cfg.Seed, len(c.hist.ops), len(c.hist.reads))
	case porcupine.Unknown:
		c.t.Fatalf("seed %d: the linearizability check timed out after %v on %d operations", c.cfg.Seed, CheckTimeout, len(c.hist.ops))
	default:
		f, err := os.CreateTemp("", "raftcluster-*.html")
		where := ""
		if err == nil {
			if porcupine.Visualize(kvModel, info, f) == nil {
				where = " (visualization: " + filepath.Clean(f.Name()) + ")"
			}
			f.Close()
		}
		c.t.Fatalf("seed %d: history of %d operations is NOT linearizable%s", c.cfg.Seed, len(c.hist.ops), where)
	}
}
