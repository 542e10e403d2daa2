package raftcluster

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"keel"
)

// The lease-read benchmark through the cluster (bench/lease/README.md,
// "Through the Go 3-node cluster"). bench/lease/run.sh runs it; a plain
// `go test` skips it, since it runs in real time and measures the
// machine.
//
// The cluster runs as in the tests (the same nodes, raft, keel shards and
// LeasePath) but in real time: one logical unit lasts benchPace, so raft
// ticks every millisecond (election timeout 10 to 20 ms, heartbeat every
// tick), the lease is 6 ms, and every message between nodes takes
// benchNetDelay units (200 µs) one way, with no loss. Closed-loop clients
// send their requests straight to the leader's loop (no client network),
// each request k reads through one keel check or 1 write (a put through
// raft, answered once the leader applied it).
const (
	benchPace     = 100 * time.Microsecond
	benchNetDelay = Time(2)
	benchValueLen = 100
)

func benchEnv(t *testing.T, name string, def float64) float64 {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v <= 0 {
		t.Fatalf("%s=%q: want a positive number", name, s)
	}
	return v
}

func benchKey(i int) string { return fmt.Sprintf("k%015d", i) } // 16 B, as in lease_bench.c

func benchValue(tag string) string { return fmt.Sprintf("%-*s", benchValueLen, tag) }

// TestLeaseClusterBench writes the benchmark's JSON lines to
// RAFTCLUSTER_BENCH_OUT: a config line, then one line per case in the
// fields of lease_bench.c. RAFTCLUSTER_BENCH_SECS (per case),
// RAFTCLUSTER_BENCH_KEYS and RAFTCLUSTER_BENCH_CLIENTS size it.
func TestLeaseClusterBench(t *testing.T) {
	out := os.Getenv("RAFTCLUSTER_BENCH_OUT")
	if out == "" {
		t.Skip("a real-time benchmark: bench/lease/run.sh runs it (RAFTCLUSTER_BENCH_OUT)")
	}
	secs := benchEnv(t, "RAFTCLUSTER_BENCH_SECS", 2)
	keys := int(benchEnv(t, "RAFTCLUSTER_BENCH_KEYS", 100000))
	clients := int(benchEnv(t, "RAFTCLUSTER_BENCH_CLIENTS", 8))
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	enc := json.NewEncoder(f)

	p := NewLeasePath()
	p.unrecorded = true
	cfg := LeaseConfig(1, p)
	cfg.Clients = 0
	cfg.Net = NetConfig{MinDelay: benchNetDelay, MaxDelay: benchNetDelay}
	cfg.RealTime = benchPace
	c := NewCluster(t, cfg)
	b := &benchRun{c: c, p: p, rng: rand.New(rand.NewSource(1)), keys: keys}
	b.leader = c.WaitLeader()
	loadStart := time.Now()
	b.load()
	t.Logf("loaded %d keys through raft in %v; leader %d", keys, time.Since(loadStart).Round(time.Millisecond), b.leader)
	must(t, enc.Encode(map[string]any{
		"kind": "config", "keys": keys, "key_bytes": len(benchKey(0)), "value_bytes": benchValueLen,
		"secs": secs, "clients": clients, "net_delay_us": (time.Duration(benchNetDelay) * benchPace).Microseconds(),
		"tick_ms": float64(time.Duration(TickEvery)*benchPace) / 1e6, "election_ticks": electionTicks,
		"lease_ms": float64(time.Duration(leaseLength)*benchPace) / 1e6,
	}))
	for _, writePct := range []int{0, 10} {
		for _, k := range []int{1, 4, 8} {
			for _, lease := range []bool{true, false} {
				res := b.runCase(k, writePct, lease, clients, secs)
				must(t, enc.Encode(res))
				t.Logf("k=%d writes=%d%% lease=%v: %.0f requests/s, p50 %.0f µs, %d read-index rounds, hit ratio %.4f, misses %v, loop late up to %.1f ms",
					k, writePct, lease, res["requests_per_s"], res["p50_us"], res["read_index_calls"], res["lease_hit_ratio"], res["misses_by_reason"], res["max_loop_lag_ms"])
			}
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// benchRun is the state of the benchmark's clients; everything in it runs
// on the cluster's loop.
type benchRun struct {
	c      *Cluster
	p      *LeasePath
	rng    *rand.Rand
	keys   int
	leader uint64
	seq    int

	// The case running: its shape, and what the clients measured.
	k        int
	writePct int
	level    keel.ReadLevel
	running  bool
	gen      int // the case's number: a late answer of an earlier case is dropped
	pending  int // requests of this case in flight
	lat      []time.Duration
	reads    int // read requests
	writes   int
	errors   int
	rounds   int // raft read-index rounds the answered reads made
}

// load puts every key through raft, a thousand proposals at a time.
func (b *benchRun) load() {
	c := b.c
	const batch = 1000
	for from := 0; from < b.keys; from += batch {
		left := min(batch, b.keys-from)
		n := c.nodes[b.leader]
		n.deliver(func() {
			for i := from; i < from+left; i++ {
				cmd := Command{Req: "load-" + strconv.Itoa(i), Key: benchKey(i), Value: benchValue(strconv.Itoa(i))}
				if err := n.propose(cmd, func(error) { left-- }); err != nil {
					c.t.Fatalf("loading key %d: %v", i, err)
				}
			}
		})
		c.RunUntil("a batch of keys applied", 3000*TickEvery, func() bool { return left == 0 })
	}
}

// statsSum adds up the lease counters of every node (the leader's are the
// ones that move, unless leadership moved during the case).
func (b *benchRun) statsSum() (hits uint64, misses map[string]uint64) {
	misses = map[string]uint64{}
	for _, id := range b.c.ids() {
		s, err := b.c.nodes[id].shard.LeaseStats()
		if err != nil {
			b.c.t.Fatalf("node %d: LeaseStats: %v", id, err)
		}
		hits += s.LeaseHits
		for why, v := range map[string]uint64{
			"not_leader": s.MissNotLeader, "ack_stale": s.MissAckStale, "ack_missing": s.MissAckMissing,
			"ack_future": s.MissAckFuture, "transfer": s.MissTransfer, "term_not_applied": s.MissTermNotApplied, "clock": s.MissClock,
		} {
			misses[why] += v
		}
	}
	return hits, misses
}

// runCase runs clients closed-loop clients for secs and returns the case's
// line.
func (b *benchRun) runCase(k, writePct int, lease bool, clients int, secs float64) map[string]any {
	c := b.c
	b.k, b.writePct, b.level = k, writePct, keel.ReadLinearizable
	if lease {
		b.level = keel.ReadLease
	}
	b.lat, b.reads, b.writes, b.errors, b.rounds = b.lat[:0], 0, 0, 0, 0
	b.gen, b.pending = b.gen+1, 0
	// The loop stood still while the last case was summed up: let raft
	// catch up (heartbeats, acks) before measuring, and collect the
	// garbage of the load or of the case before.
	runtime.GC()
	c.RunFor(20 * TickEvery)
	c.sched.maxLate = 0
	hits0, misses0 := b.statsSum()
	leader0 := b.leader
	b.running = true
	start := time.Now()
	for i := 0; i < clients; i++ {
		b.issue()
	}
	deadline := start.Add(time.Duration(secs * float64(time.Second)))
	for time.Now().Before(deadline) {
		c.RunFor(TickEvery)
	}
	b.running = false
	elapsed := time.Since(start).Seconds()
	n := len(b.lat)
	reads, writes, errors, rounds := b.reads, b.writes, b.errors, b.rounds
	// A request whose proposal or read index raft dropped (leadership
	// moved) is never answered: wait for the others only.
	c.runAtMost(100*TickEvery, func() bool { return b.pending == 0 })
	hits1, misses1 := b.statsSum()
	hits, misses, why := hits1-hits0, uint64(0), map[string]uint64{}
	for k, v := range misses1 {
		why[k] = v - misses0[k]
		misses += why[k]
	}
	slices.Sort(b.lat)
	pct := func(q int) float64 {
		if n == 0 {
			return 0
		}
		return float64(b.lat[n*q/100]) / 1e3
	}
	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	return map[string]any{
		"kind": "case", "k": k, "write_pct": writePct, "lease": lease, "clients": clients, "secs": elapsed,
		"requests": n, "read_requests": reads, "reads": reads * k, "writes": writes, "errors": errors,
		"requests_per_s": float64(n) / elapsed, "reads_per_s": float64(reads*k) / elapsed,
		"p50_us": pct(50), "p99_us": pct(99),
		"read_index_calls": rounds, "read_index_calls_per_s": float64(rounds) / elapsed,
		"read_index_calls_per_read_request": ratio(float64(rounds), float64(reads)),
		"lease_hits":                        hits, "lease_misses": misses, "lease_hit_ratio": ratio(float64(hits), float64(hits+misses)),
		"misses_by_reason": why,
		"leader_changed":   b.leader != leader0,
		// The loop's worst lateness: a stall longer than the lease less
		// a heartbeat interval and a round trip makes acks stale.
		"max_loop_lag_ms": float64(time.Duration(c.sched.maxLate)*benchPace) / 1e6,
	}
}

// issue starts one client request on the leader's loop; its answer
// records the latency and issues the next request while the case runs.
func (b *benchRun) issue() {
	c := b.c
	n := c.nodes[b.leader]
	start := time.Now()
	gen := b.gen
	b.pending++
	rounds := 0 // the read's raft read-index round, if it made one
	done := func(err error, write bool) {
		if gen != b.gen {
			return
		}
		b.pending--
		if !b.running {
			return
		}
		switch {
		case err != nil:
			b.errors++
			if l := c.Leader(); l != 0 {
				b.leader = l
			}
			// Try again after a tick (a new leader may take an election).
			c.sched.after(TickEvery, b.issue)
			return
		case write:
			b.writes++
		default:
			b.reads++
			b.rounds += rounds
		}
		b.lat = append(b.lat, time.Since(start))
		c.sched.after(0, b.issue)
	}
	n.deliver(func() {
		if b.rng.Intn(100) < b.writePct {
			b.seq++
			cmd := Command{Req: "w-" + strconv.Itoa(b.seq), Key: benchKey(b.rng.Intn(b.keys)), Value: benchValue(strconv.Itoa(b.seq))}
			if err := n.propose(cmd, func(err error) { done(err, true) }); err != nil {
				done(err, true)
			}
			return
		}
		keys := make([]string, b.k)
		for i := range keys {
			keys[i] = benchKey(b.rng.Intn(b.keys))
		}
		// A read starts its round trip, if any, before ReadKeys returns.
		before := b.p.readIndexRounds
		b.p.ReadKeys(n, keys, b.level, func(rs []ReadResult) { done(rs[0].Err, false) })
		rounds = b.p.readIndexRounds - before
	})
}
