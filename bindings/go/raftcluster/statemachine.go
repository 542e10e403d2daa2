package raftcluster

import (
	"encoding/json"
	"errors"
	"fmt"

	"keel"
)

// Command is what a client write proposes through raft: one put or
// delete, tagged with the request id its client waits on.
type Command struct {
	Req    string `json:"req"`
	Delete bool   `json:"del,omitempty"`
	Key    string `json:"key"`
	Value  string `json:"val,omitempty"`
}

func (c Command) encode() []byte {
	b, err := json.Marshal(c)
	if err != nil {
		panic(err) // a struct of strings always marshals
	}
	return b
}

func decodeCommand(b []byte) (Command, error) {
	var c Command
	err := json.Unmarshal(b, &c)
	return c, err
}

// StateMachine is where a node applies committed raft entries. Apply is
// idempotent by index: an index at or below AppliedIndex changes nothing,
// so a restarted node may be handed entries it applied before. An entry
// with no command (raft's empty entries, configuration changes) moves
// only the index. The index survives a restart: AppliedIndex after a
// reopen is where raft's applied index resumes (Config.Applied).
type StateMachine interface {
	Apply(index uint64, cmd *Command) error
	AppliedIndex() uint64
	// Get reads key from the local state: found is false for an absent key.
	Get(key string) (value string, found bool, err error)
}

// keelStateMachine applies every committed entry through keel's
// Shard.Apply (keel_shard_apply) with its raft index: keel logs the index
// in the same WAL frame as the entry's operations, so after a crash or a
// restart the shard's AppliedIndex names exactly the entries it holds,
// and keel's lease gate learns the applied index from the apply itself.
type keelStateMachine struct {
	shard   *keel.Shard
	applied uint64
}

// openKeelStateMachine reads the applied index back from the shard. A
// fresh shard holds the state of the log's initial snapshot (no keys),
// so its applied index is the snapshot's, base.
func openKeelStateMachine(shard *keel.Shard, base uint64) (*keelStateMachine, error) {
	applied, err := shard.AppliedIndex()
	if err != nil {
		return nil, fmt.Errorf("reading the applied index: %w", err)
	}
	if applied < base {
		applied = base
	}
	return &keelStateMachine{shard: shard, applied: applied}, nil
}

func (sm *keelStateMachine) AppliedIndex() uint64 { return sm.applied }

func (sm *keelStateMachine) Apply(index uint64, cmd *Command) error {
	if index <= sm.applied {
		return nil
	}
	if index != sm.applied+1 {
		return fmt.Errorf("apply of index %d after %d: raft skipped entries", index, sm.applied)
	}
	var b *keel.Batch
	if cmd != nil {
		b = &keel.Batch{}
		if cmd.Delete {
			b.Delete([]byte(cmd.Key))
		} else {
			b.Put([]byte(cmd.Key), []byte(cmd.Value))
		}
	}
	r, err := sm.shard.Apply(index, b, nil)
	if err != nil {
		return fmt.Errorf("applying index %d: %w", index, err)
	}
	switch {
	case r.Duplicate:
		return fmt.Errorf("applying index %d: keel had applied it already (applied index %d)", index, r.AppliedIndex)
	case r.Refused != nil:
		// Puts and deletes carry no fence and are valid whatever a key
		// holds: a refusal here is a bug, not a client's answer.
		return fmt.Errorf("applying index %d: refused: %w", index, r.Refused)
	}
	sm.applied = index
	return nil
}

func (sm *keelStateMachine) Get(key string) (string, bool, error) {
	v, err := sm.shard.Get([]byte(key))
	if errors.Is(err, keel.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return string(v.Bytes), true, nil
}
