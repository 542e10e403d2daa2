package keel

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"
)

// A callback that does not return to keel — a panic, or runtime.Goexit
// (t.FailNow, t.Fatal and t.SkipNow call it) — must end the program when
// keel runs it on one of Go's threads (a read's goroutine for ReadIndex,
// Connect's for a Node's OnEvent): otherwise it unwinds through keel's C
// and Rust frames without running their cleanup. These tests run the
// callback in a child process (this test binary again, with an
// environment variable set) and want it dead of it.

// runCrashingChild runs the calling test again in a child process with
// env set, and fails unless the child dies as a Go panic does (exit
// status 2, "panic: " and want in its output). It returns the output.
// The child's temporary directories go under this test's own: a child
// that dies runs no cleanup, and its t.TempDir would stay behind.
func runCrashingChild(t *testing.T, env, want string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), env, "TMPDIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "panic: ") || !strings.Contains(string(out), want) {
		t.Fatalf("the child did not die of %q (%v); output:\n%s", want, err, out)
	}
	return string(out)
}

// goexitsInside runs call on a goroutine of its own and reports whether
// that goroutine ended by runtime.Goexit before call returned.
func goexitsInside(call func()) bool {
	returned := make(chan bool, 1)
	go func() {
		ok := false
		defer func() { returned <- ok }()
		call()
		ok = true
	}()
	return !<-returned
}

// A ReadIndex that calls runtime.Goexit (t.FailNow in a test's host)
// ended the read's goroutine inside keel, with keel's read-index call
// never finished: the shard's next linearizable read waited past its
// timeout and its Close forever.
func TestLeaseReadIndexGoexitCrashes(t *testing.T) {
	if os.Getenv("KEEL_TEST_READINDEX_GOEXIT") != "" {
		readIndexGoexitChild(t)
		return
	}
	runCrashingChild(t, "KEEL_TEST_READINDEX_GOEXIT=1", "Goexit")
}

func readIndexGoexitChild(t *testing.T) {
	e, _ := openEngineT(t, "", nil)
	s, err := e.OpenShard(1, true)
	if err != nil {
		t.Fatal(err)
	}
	must(t, s.ConfigureConsensus(LeaseOptions{
		SelfID: 1, Lease: 700 * time.Millisecond, ElectionTimeoutMin: time.Second,
		MaxClockDrift: 100 * time.Millisecond, MaxRoundTrip: 100 * time.Millisecond, ManualClock: true,
		ReadIndex: func() (uint64, error) {
			runtime.Goexit()
			return 0, nil
		},
	}))
	must(t, s.Consensus().SetRole(RoleLeader, 5, 0))
	if goexitsInside(func() { s.GetWith([]byte("k"), &ReadOptions{Level: ReadLinearizable}) }) {
		// Reached only when the Goexit did not end the program; the
		// shard's close (the engine's, at cleanup) would hang.
		fmt.Println("the read's goroutine ended inside keel")
		os.Exit(0)
	}
}

// As TestNodeOnEventPanicInConnectCrashes, with runtime.Goexit for the
// panic: Connect's goroutine ended inside keel, the dialed socket leaked.
func TestNodeOnEventGoexitInConnectCrashes(t *testing.T) {
	if addr := os.Getenv("KEEL_TEST_ONEVENT_GOEXIT"); addr != "" {
		n := openNodeT(t, nodeEngineT(t), &NodeOptions{NodeID: 1, OnEvent: func(peer uint64, err error) {
			if err != nil {
				runtime.Goexit()
			}
		}})
		if goexitsInside(func() { n.Connect(2, addr) }) {
			fmt.Println("Connect's goroutine ended inside keel")
		}
		return
	}
	ln, err := net.Listen("tcp", nonLoopbackIP(t)+":0")
	if err != nil {
		t.Skipf("cannot listen on a non-loopback address: %v", err)
	}
	defer ln.Close()
	runCrashingChild(t, "KEEL_TEST_ONEVENT_GOEXIT="+ln.Addr().String(), "Goexit")
}

// A panic in ReadIndex, unlike a Goexit, is the read's ErrPanic
// (LeaseOptions.ReadIndex), and the shard goes on: the next read calls
// ReadIndex again.
func TestLeaseReadIndexPanicIsErrPanic(t *testing.T) {
	s := leaseShard(t)
	calls := 0
	must(t, s.ConfigureConsensus(LeaseOptions{
		SelfID: 1, Lease: 700 * time.Millisecond, ElectionTimeoutMin: time.Second,
		MaxClockDrift: 100 * time.Millisecond, MaxRoundTrip: 100 * time.Millisecond, ManualClock: true,
		ReadIndex: func() (uint64, error) {
			if calls++; calls == 1 {
				panic("ReadIndex panics on purpose")
			}
			return 0, nil
		},
	}))
	must(t, s.Consensus().SetRole(RoleLeader, 5, 0))
	linearizable := &ReadOptions{Level: ReadLinearizable}
	if _, err := s.GetWith([]byte("k"), linearizable); !errors.Is(err, ErrPanic) {
		t.Fatalf("read whose ReadIndex panicked: %v, want ErrPanic", err)
	}
	if v, err := s.GetWith([]byte("k"), linearizable); err != nil || string(v.Bytes) != "v" || calls != 2 {
		t.Fatalf("next read: %q, %v after %d calls", v.Bytes, err, calls)
	}
	must(t, s.Close())
}
