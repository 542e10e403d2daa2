// Command keel-example shows the Go binding of keel. First the write-ahead
// log: many goroutines append concurrently (group-committed in sync mode),
// the log is closed and reopened, and every record is read back and
// checked. Then a shard: values, a posting list, an atomic batch, the
// engine closed and reopened, and the data read back. It exits non-zero on
// any failure.
//
//	go run . [-dir DIR] [-engine-dir DIR] [-writers N] [-records N]
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"sync"
	"time"

	"keel"
)

func main() {
	dir := flag.String("dir", "", "WAL directory (default: a fresh temporary directory, removed afterwards)")
	writers := flag.Int("writers", 16, "goroutines appending concurrently")
	perWriter := flag.Int("records", 200, "records appended by each goroutine")
	engineDir := flag.String("engine-dir", "", "engine directory (default: a fresh temporary directory, removed afterwards)")
	flag.Parse()
	if err := run(*dir, *writers, *perWriter); err != nil {
		fmt.Fprintln(os.Stderr, "keel-example: FAILED:", err)
		os.Exit(1)
	}
	if err := runShard(*engineDir); err != nil {
		fmt.Fprintln(os.Stderr, "keel-example: shard: FAILED:", err)
		os.Exit(1)
	}
}

func run(dir string, writers, perWriter int) error {
	if dir == "" {
		tmp, err := os.MkdirTemp("", "keel-example-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	fmt.Printf("keel %s, WAL in %s\n", keel.Version(), dir)

	// Write phase: sync durability, so each Append returns once its record
	// is on disk; concurrent writers share fsyncs.
	wal, err := keel.Open(dir, &keel.Options{Durability: keel.DurabilitySync})
	if err != nil {
		return err
	}
	start := time.Now()
	written, err := appendConcurrently(wal, writers, perWriter)
	if err != nil {
		wal.Close()
		return err
	}
	elapsed := time.Since(start)
	if err := wal.Sync(); err != nil {
		wal.Close()
		return err
	}
	if err := wal.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	fmt.Printf("appended %d records from %d goroutines in %v (%.0f durable appends/s)\n",
		len(written), writers, elapsed.Round(time.Millisecond), float64(len(written))/elapsed.Seconds())

	// Read phase: reopen (recovery) and compare every record.
	wal, err = keel.Open(dir, nil)
	if err != nil {
		return fmt.Errorf("reopen: %w", err)
	}
	defer wal.Close()
	last, err := wal.LastSeq()
	if err != nil {
		return err
	}
	if last != uint64(len(written)) {
		return fmt.Errorf("recovered LastSeq %d, want %d", last, len(written))
	}
	r, err := wal.NewReader(0, keel.ReadDurable)
	if err != nil {
		return err
	}
	defer r.Close()
	var n, nbytes int
	for {
		seq, data, err := r.Next()
		if err == keel.ErrNoMore {
			break
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if want, ok := written[seq]; !ok || !bytes.Equal(data, want) {
			return fmt.Errorf("record %d read back differs from what was written", seq)
		}
		n++
		nbytes += len(data)
	}
	if n != len(written) {
		return fmt.Errorf("read back %d records, want %d", n, len(written))
	}
	fmt.Printf("reopened and verified %d records (%d bytes), seqs 1..%d: OK\n", n, nbytes, last)
	return nil
}

// appendConcurrently starts writers goroutines that append perWriter
// records each and returns what was written under each sequence number.
func appendConcurrently(wal *keel.WAL, writers, perWriter int) (map[uint64][]byte, error) {
	var (
		mu       sync.Mutex
		written  = make(map[uint64][]byte, writers*perWriter)
		firstErr error
		wg       sync.WaitGroup
	)
	for g := 0; g < writers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				rec := []byte(fmt.Sprintf("writer %d record %d %s", g, i, bytes.Repeat([]byte{'x'}, i%64)))
				seq, err := wal.Append(rec)
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = fmt.Errorf("writer %d: %w", g, err)
					}
					mu.Unlock()
					return
				}
				if _, dup := written[seq]; dup && firstErr == nil {
					firstErr = fmt.Errorf("sequence %d handed out twice", seq)
				}
				written[seq] = rec
				mu.Unlock()
			}
		}(g)
	}
	wg.Wait()
	return written, firstErr
}

// runShard writes to shard 1 of an engine, closes the engine (which closes
// the shard), reopens it and reads everything back.
func runShard(dir string) error {
	if dir == "" {
		tmp, err := os.MkdirTemp("", "keel-example-engine-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	eng, err := keel.OpenEngine(dir, nil)
	if err != nil {
		return err
	}
	// On error paths: Close closes the shards still open (and reports
	// ErrClosed, ignored here, for an engine already closed).
	defer func() { eng.Close() }()
	sh, err := eng.OpenShard(1, true)
	if err != nil {
		return err
	}
	if _, err := sh.Put([]byte("user/1"), []byte("ada")); err != nil {
		return err
	}
	// A posting list grows one item per Append.
	for _, user := range []string{"user/1", "user/2"} {
		if _, err := sh.Append([]byte("tag/go"), []byte(user)); err != nil {
			return err
		}
	}
	// A batch is applied atomically, in one call into the library.
	var b keel.Batch
	b.Put([]byte("user/2"), []byte("grace"))
	b.Append([]byte("tag/rust"), []byte("user/2"))
	_, last, err := sh.Write(&b)
	if err != nil {
		return err
	}
	fmt.Printf("shard: wrote versions 1..%d in %s\n", last, dir)
	// A key holds a value or a posting list, not both.
	if _, err := sh.Append([]byte("user/1"), []byte("x")); !errors.Is(err, keel.ErrWrongKind) {
		return fmt.Errorf("append to a value: got %v, want ErrWrongKind", err)
	}
	if err := eng.Close(); err != nil {
		return err
	}

	// Reopen: the shard recovers its segments and WAL.
	if eng, err = keel.OpenEngine(dir, nil); err != nil {
		return err
	}
	if sh, err = eng.OpenShard(1, false); err != nil {
		return err
	}
	tag, err := sh.Get([]byte("tag/go"))
	if err != nil {
		return err
	}
	items, err := tag.Items()
	if err != nil {
		return err
	}
	if len(items) != 2 || string(items[0]) != "user/1" || string(items[1]) != "user/2" {
		return fmt.Errorf("tag/go holds %q after reopening", items)
	}
	fmt.Printf("shard: reopened; tag/go = %q (version %d)\n", items, tag.Version)
	it, err := sh.ScanPrefix([]byte("user/"))
	if err != nil {
		return err
	}
	n := 0
	for it.Next() {
		fmt.Printf("shard:   %s = %s (version %d)\n", it.Key(), it.Value().Bytes, it.Value().Version)
		n++
	}
	it.Close()
	if err := it.Err(); err != nil {
		return err
	}
	if n != 2 {
		return fmt.Errorf("scan of user/ found %d keys, want 2", n)
	}
	return eng.Close() // also closes sh
}
