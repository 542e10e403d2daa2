package raftcluster

import (
	"encoding/binary"
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
// reopen is where raft's applied index resumes.
//
// keyIndexStateMachine below keeps the index as a reserved key written in
// the same atomic batch as the command; keel's keel_shard_apply (which
// stores the index in the WAL frame itself) can replace it behind this
// interface without touching the cluster.
type StateMachine interface {
	Apply(index uint64, cmd *Command) error
	AppliedIndex() uint64
	// Get reads key from the local state: found is false for an absent key.
	Get(key string) (value string, found bool, err error)
}

// appliedKey is the reserved key holding the applied index. Client keys
// never start with a NUL byte.
var appliedKey = []byte("\x00raft-applied-index")

type keyIndexStateMachine struct {
	shard   *keel.Shard
	applied uint64
}

// openKeyIndexStateMachine reads the applied index back from the shard.
// A fresh shard holds the state of the log's initial snapshot (no keys),
// so its applied index is the snapshot's, base.
func openKeyIndexStateMachine(shard *keel.Shard, base uint64) (*keyIndexStateMachine, error) {
	sm := &keyIndexStateMachine{shard: shard, applied: base}
	v, err := shard.Get(appliedKey)
	switch {
	case errors.Is(err, keel.ErrNotFound):
	case err != nil:
		return nil, fmt.Errorf("reading the applied index: %w", err)
	case len(v.Bytes) != 8:
		return nil, fmt.Errorf("applied index key holds %d bytes, want 8", len(v.Bytes))
	default:
		sm.applied = binary.BigEndian.Uint64(v.Bytes)
	}
	return sm, nil
}

func (sm *keyIndexStateMachine) AppliedIndex() uint64 { return sm.applied }

func (sm *keyIndexStateMachine) Apply(index uint64, cmd *Command) error {
	if index <= sm.applied {
		return nil
	}
	if index != sm.applied+1 {
		return fmt.Errorf("apply of index %d after %d: raft skipped entries", index, sm.applied)
	}
	var b keel.Batch
	if cmd != nil {
		if cmd.Delete {
			b.Delete([]byte(cmd.Key))
		} else {
			b.Put([]byte(cmd.Key), []byte(cmd.Value))
		}
	}
	var ix [8]byte
	binary.BigEndian.PutUint64(ix[:], index)
	b.Put(appliedKey, ix[:])
	if _, _, err := sm.shard.Write(&b); err != nil {
		return fmt.Errorf("applying index %d: %w", index, err)
	}
	sm.applied = index
	return nil
}

func (sm *keyIndexStateMachine) Get(key string) (string, bool, error) {
	v, err := sm.shard.Get([]byte(key))
	if errors.Is(err, keel.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return string(v.Bytes), true, nil
}
