#!/usr/bin/env python3
"""RocksDB's side of the restart comparison (bench/README.md "Restart: keel
against RocksDB"), one pair's worth: for each value size, db_bench puts
into a fresh database (WAL on, nothing flushed) until its WAL files hold the
bytes keel's WAL held in the same pair, is killed with SIGKILL, and a fresh
db_bench reopening a copy of what it left is timed, page cache warm and
cold, best of --opens, each open on its own copy (RocksDB's open writes the
recovered memtable to a level-0 table and starts a new WAL, so a copy can
be reopened once).

usage: recovery.py --db-bench BIN --dir DIR --out FILE.json --mib N
                   [--keel KEEL.json] [--value-bytes V]... [--opens N]

--keel is the keel recovery group of the same pair (bench/shard.rs --case
recovery): its wal_bytes per value size is the target; without it (or for
a value size it lacks), N MiB.

The reopen time is the wall time of `db_bench --use_existing_db=1
--benchmarks=readrandom --num=1 --reads=1` (process start to exit: open,
one read, close) minus the best of three of the same command on a database
with nothing to recover. RocksDB's LOG times DB::Open too (its first line
to "DB pointer"); that is kept beside it as a check.
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime

KEY_BYTES = 16
# Bytes of RocksDB WAL per put beyond the value: write batch header (12),
# type, key length, key, value length (1-2), log record header (7).
WAL_PUT_OVERHEAD = 12 + 1 + 1 + KEY_BYTES + 2 + 7
POLL_S = 0.01


def options(value_bytes, target):
    """db_bench options shared by the fill and the reopens: a memtable about
    twice the WAL (nothing is flushed while filling, nor while replaying),
    no compactions, no compression."""
    return [f"--key_size={KEY_BYTES}", f"--value_size={value_bytes}", "--compression_type=none",
            f"--write_buffer_size={2 * target + (64 << 20)}", "--max_write_buffer_number=2",
            "--disable_auto_compactions=1", "--threads=1", "--seed=1"]


def wal_bytes(db):
    logs = glob.glob(os.path.join(db, "*.log"))
    return sum(os.path.getsize(p) for p in logs), len(logs)


def files_under(d):
    return [os.path.join(root, f) for root, _, names in os.walk(d) for f in names]


def prepare_cache(d, cold):
    """Page cache warm (every file read once) or cold (its pages dropped
    with POSIX_FADV_DONTNEED, per file: no privilege needed, the rest of
    the machine's cache is left alone), after an fdatasync of each."""
    for p in files_under(d):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            if cold:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while os.read(fd, 1 << 20):
                    pass
        finally:
            os.close(fd)


LOG_TIME = re.compile(r"^(\d{4}/\d\d/\d\d-\d\d:\d\d:\d\d\.\d+)")


def log_open(db):
    """From the LOG of the open just done: the seconds from its first line to
    "DB pointer" (DB::Open's span as RocksDB logs it) and the largest
    sequence number of the tables written at open (the puts replayed: a
    fresh database gives every put the next number)."""
    try:
        with open(os.path.join(db, "LOG"), errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None, None
    stamp = lambda line: datetime.strptime(LOG_TIME.match(line).group(1), "%Y/%m/%d-%H:%M:%S.%f")
    span = None
    ptr = next((x for x in lines if "DB pointer" in x and LOG_TIME.match(x)), None)
    if lines and LOG_TIME.match(lines[0]) and ptr:
        span = (stamp(ptr) - stamp(lines[0])).total_seconds()
    seqs = [int(m) for m in re.findall(r'"largest_seqno":\s*([0-9]+)', "\n".join(lines))]
    return span, max(seqs) if seqs else None


def reopen(bin_, db, opts, out_base):
    """One timed db_bench reopen of db; its stdout/stderr go to out_base.*."""
    cmd = [bin_, "--benchmarks=readrandom", "--use_existing_db=1", f"--db={db}", "--num=1", "--reads=1"] + opts
    with open(out_base + ".out", "w") as out, open(out_base + ".err", "w") as err:
        t0 = time.monotonic()
        rc = subprocess.run(cmd, stdout=out, stderr=err, timeout=3600).returncode
        wall = time.monotonic() - t0
    span, seq = log_open(db)
    return {"wall_s": wall, "log_open_s": span, "replayed_puts": seq, "exit_status": rc}, cmd


def fill(bin_, db, opts, value_bytes, target, out_base):
    """Puts until the WAL files hold target bytes, then SIGKILL. Keys are
    drawn from about as many key numbers as puts fit (as keel's writer
    does); --writes lets it run past --num."""
    cmd = [bin_, "--benchmarks=fillrandom", f"--db={db}", "--sync=0", "--disable_wal=0",
           f"--num={max(1, target // (value_bytes + WAL_PUT_OVERHEAD))}", "--writes=1000000000000"] + opts
    with open(out_base + ".out", "w") as out, open(out_base + ".err", "w") as err:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=out, stderr=err)
        reached = False
        while p.poll() is None:
            if wal_bytes(db)[0] >= target:
                p.send_signal(signal.SIGKILL)
                reached = True
                break
            time.sleep(POLL_S)
        rc = p.wait()
        fill_s = time.monotonic() - t0
    return cmd, reached, rc, fill_s


def one_size(a, value_bytes, target):
    base = os.path.join(a.dir, f"rocksdb-recovery-{value_bytes}")
    killed, work, empty = base + "-killed", base + "-open", base + "-empty"
    logs = os.path.join(a.dir, f"rocksdb-recovery-{value_bytes}-logs")
    for d in (killed, work, empty, logs):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(logs)
    opts = options(value_bytes, target)
    problems = []
    r = {"value_bytes": value_bytes, "target_bytes": target}
    cmd, reached, rc, r["fill_s"] = fill(a.db_bench, killed, opts, value_bytes, target, os.path.join(logs, "fill"))
    r["fill_command"] = " ".join(cmd)
    if not reached:
        problems.append(f"the fill ended (exit status {rc}) before its WAL held {target} bytes")
    r["wal_bytes"], r["wal_files"] = wal_bytes(killed)
    r["sst_files_after_fill"] = len(glob.glob(os.path.join(killed, "*.sst")))
    if r["sst_files_after_fill"]:
        problems.append(f"{r['sst_files_after_fill']} .sst file(s) after the fill: a memtable was flushed")
    print(f"bench: RocksDB recovery {value_bytes} B: {r['wal_bytes'] / 2**20:,.0f} MiB of WAL in {r['fill_s']:.1f} s, killed")
    for p in files_under(killed):  # the dead writer's pages written back before anything is timed
        fd = os.open(p, os.O_RDONLY)
        os.fdatasync(fd)
        os.close(fd)
    # The baseline: the same reopen of a database with nothing to recover.
    # Its first open replays the one put of its fill; the next ones time
    # process start, an empty open, a read and close.
    subprocess.run([a.db_bench, "--benchmarks=fillrandom", f"--db={empty}", "--sync=0", "--num=1"] + opts,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    reopen(a.db_bench, empty, opts, os.path.join(logs, "empty"))
    base_runs = [reopen(a.db_bench, empty, opts, os.path.join(logs, "empty"))[0] for _ in range(3)]
    shutil.rmtree(empty, ignore_errors=True)
    r["empty_reopen_s"] = min(x["wall_s"] for x in base_runs)
    r["empty_reopen_runs_s"] = [x["wall_s"] for x in base_runs]
    for cache in ("warm", "cold"):
        runs = []
        for i in range(a.opens):
            shutil.copytree(killed, work)
            prepare_cache(work, cache == "cold")
            x, cmd = reopen(a.db_bench, work, opts, os.path.join(logs, f"{cache}-{i}"))
            shutil.rmtree(work, ignore_errors=True)
            x["open_s"] = x["wall_s"] - r["empty_reopen_s"]
            if x["exit_status"] != 0:
                problems.append(f"{cache} reopen {i + 1}: db_bench exit status {x['exit_status']}")
            runs.append(x)
            print(f"  {cache} page cache: reopen {x['wall_s']:.2f} s wall, {x['open_s']:.2f} s less the empty "
                  f"reopen, DB::Open in its LOG {x['log_open_s']} s, {x['replayed_puts']} puts replayed")
        r["reopen_command"] = " ".join(cmd).replace(work, "COPY")
        ok = [x for x in runs if x["exit_status"] == 0]
        best = min(ok, key=lambda x: x["wall_s"]) if ok else None
        r[cache] = dict(best, runs=runs) if best else None
    shutil.rmtree(killed, ignore_errors=True)
    # What db_bench says of itself (the killed fill's stdout was lost with it).
    text = "".join(open(os.path.join(logs, f"warm-0.{x}"), errors="replace").read() for x in ("out", "err"))
    ver = re.search(r"RocksDB:\s+version\s+(\S+)", text)
    r["rocksdb_version"] = ver.group(1) if ver else None
    r["assertions_enabled"] = "Assertions are enabled" in text
    r["puts"] = (r["warm"] or r["cold"] or {}).get("replayed_puts")
    r["problems"] = problems
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db-bench", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mib", type=int, required=True)
    ap.add_argument("--keel")
    ap.add_argument("--value-bytes", type=int, action="append")
    ap.add_argument("--opens", type=int, default=2)
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    keel = {}
    if a.keel and os.path.exists(a.keel):
        with open(a.keel) as f:
            keel = {rc["value_bytes"]: rc["wal_bytes"] for rc in json.load(f).get("recovery", [])}
    out = []
    for v in a.value_bytes or [100, 4096]:
        target = keel.get(v) or a.mib << 20
        out.append(dict(one_size(a, v, target), target_from="keel" if v in keel else "mib"))
    with open(a.out, "w") as f:
        json.dump({"db_bench": a.db_bench, "opens": a.opens, "recovery": out}, f, indent=1)
        f.write("\n")
    return 0 if all(not r["problems"] for r in out) else 1


if __name__ == "__main__":
    sys.exit(main())
