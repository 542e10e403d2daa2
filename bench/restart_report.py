"""The restart sections of the benchmark report (bench/report.py): keel's
recovery of unflushed WAL against RocksDB reopening a database with as many
bytes of unflushed WAL (keel-shard-recovery-p<pair>.json from
`bench/shard.rs --case recovery`, rocksdb-recovery-p<pair>.json from
bench/rocksdb/recovery.py), and the restart at the bound of unflushed WAL
(keel-restart-p<run>.json, `bench/shard.rs --case restart_bound`)."""
import json
import os

from reportlib import median_run, pair_numbers, spread, spread_text

# keel recovers at least this many times faster than RocksDB (RocksDB's
# reopen time over keel's Shard::open time, 1 GiB of unflushed WAL).
ROCKSDB_GOAL = 5.0
# A shard holding the default bound of unflushed WAL restarts within this.
BOUND_GOAL_S = 1.0
CACHES = ("warm", "cold")


def _load(path):
    with open(path) as f:
        return json.load(f)


def restart_results(work):
    """The restart_bound entries of every keel-restart-p<run>.json (each
    with its run number as "pair"; keel-restart.json, from before there were
    several runs, as run 1), or None when the case did not run."""
    runs = []
    paths = [(p, os.path.join(work, f"keel-restart-p{p}.json")) for p in pair_numbers(work, "keel-restart-p{}.json")]
    if not paths and os.path.exists(os.path.join(work, "keel-restart.json")):
        paths = [(1, os.path.join(work, "keel-restart.json"))]
    for p, path in paths:
        for r in _load(path).get("restart_bound") or []:
            runs.append(dict(r, pair=p))
    return runs or None


def recovery_comparison(work, keel_recovery):
    """keel's recovery runs (the shard report's "recovery", each with its
    pair) against RocksDB's of the same pair, per value size and page cache
    state: each pair's times and ratio (RocksDB reopen ÷ keel Shard::open),
    then medians with min and max. Returns (rows, RocksDB runs)."""
    rruns = []
    for p in pair_numbers(work, "rocksdb-recovery-p{}.json"):
        d = _load(os.path.join(work, f"rocksdb-recovery-p{p}.json"))
        rruns += [dict(r, pair=p, db_bench=d.get("db_bench"), opens=d.get("opens")) for r in d.get("recovery", [])]
    rows = []
    for v in sorted({r["value_bytes"] for r in keel_recovery} | {r["value_bytes"] for r in rruns}):
        ks = [k for k in keel_recovery if k["value_bytes"] == v]
        rs = [r for r in rruns if r["value_bytes"] == v]
        for cache in CACHES:
            pairs = []
            for p in sorted({x.get("pair") for x in ks + rs}, key=lambda x: (x is None, x)):
                k = next((x for x in ks if x.get("pair") == p), None)
                r = next((x for x in rs if x.get("pair") == p), None)
                kc, rc = (k or {}).get(cache) or {}, (r or {}).get(cache) or {}
                ko, ro = kc.get("open_s"), rc.get("open_s")
                pairs.append({
                    "pair": p,
                    "keel_wal_bytes": (k or {}).get("wal_bytes"), "keel_puts": (k or {}).get("puts"),
                    "keel_open_s": ko, "keel_read_mib_s": kc.get("read_mib_s"),
                    "keel_recovery_to_read": kc.get("ratio"),
                    "keel_wal_alone": kc.get("wal_only"),
                    "rocksdb_wal_bytes": (r or {}).get("wal_bytes"), "rocksdb_puts": (r or {}).get("puts"),
                    "rocksdb_open_s": ro, "rocksdb_wall_s": rc.get("wall_s"),
                    "rocksdb_log_open_s": rc.get("log_open_s"), "rocksdb_empty_reopen_s": (r or {}).get("empty_reopen_s"),
                    "ratio": ro / ko if ro and ko and ro > 0 else None,
                })
            if not pairs:
                continue
            med = lambda key: (spread(x[key] for x in pairs) or {}).get("median")
            ratio, to_read = spread(x["ratio"] for x in pairs), spread(x["keel_recovery_to_read"] for x in pairs)
            rows.append({
                "value_bytes": v, "cache": cache, "pairs": pairs,
                "keel_wal_bytes": med("keel_wal_bytes"), "keel_puts": med("keel_puts"),
                "keel_open_s": med("keel_open_s"), "keel_read_mib_s": med("keel_read_mib_s"),
                "keel_recovery_to_read": to_read["median"] if to_read else None,
                "keel_recovery_to_read_min": to_read["min"] if to_read else None,
                "keel_recovery_to_read_max": to_read["max"] if to_read else None,
                "rocksdb_wal_bytes": med("rocksdb_wal_bytes"), "rocksdb_puts": med("rocksdb_puts"),
                "rocksdb_open_s": med("rocksdb_open_s"),
                "ratio": ratio["median"] if ratio else None,
                "ratio_min": ratio["min"] if ratio else None,
                "ratio_max": ratio["max"] if ratio else None,
            })
    return rows, rruns


def _bound_rows(runs):
    """Per value size and page cache state: the restart-at-the-bound runs'
    open times (median, min, max) and the run with the median time."""
    rows = []
    for v in sorted({r["value_bytes"] for r in runs or []}):
        for cache in CACHES:
            rs = [r for r in runs if r["value_bytes"] == v and r.get(cache)]
            t = spread(r[cache]["open_s"] for r in rs)
            if t:
                rows.append({"value_bytes": v, "cache": cache, "open_s": t,
                             "median_run": median_run(rs, lambda r: r[cache]["open_s"])})
    return rows


def restart_targets(comparison, bound_runs):
    """The restart goals: keel against RocksDB (median of the pair ratios)
    and the restart at the default bound (median of the runs)."""
    out = []
    for row in comparison:
        if row["ratio"] is None:
            continue
        out.append({"id": f"restart_rocksdb_{row['value_bytes']}b_{row['cache']}",
                    "what": f"Restart: RocksDB reopen time ÷ keel Shard::open time, "
                            f"{(row['keel_wal_bytes'] or 0) / 2**20:,.0f} MiB of unflushed WAL ({row['value_bytes']} B "
                            f"values, page cache {row['cache']}) >= {ROCKSDB_GOAL:g}",
                    "value": row["ratio"], "target": ROCKSDB_GOAL, "cmp": ">=",
                    "min": row["ratio_min"], "max": row["ratio_max"]})
    for row in _bound_rows(bound_runs):
        r, t = row["median_run"], row["open_s"]
        out.append({"id": f"restart_bound_{row['value_bytes']}b_{row['cache']}", "unit": "s",
                    "what": f"Restart at the default bound ({(r.get('bound_bytes') or 0) / 2**20:,.0f} MiB of "
                            f"unflushed WAL, {row['value_bytes']} B values, page cache {row['cache']}): "
                            f"Shard::open <= {BOUND_GOAL_S:g} s",
                    "value": t["median"], "target": BOUND_GOAL_S, "cmp": "<=", "min": t["min"], "max": t["max"]})
    return out


def _fmt_mib(b):
    return "-" if b is None else f"{b / 2**20:,.1f}"


def _n(x, digits=0):
    return "–" if x is None else f"{x:,.{digits}f}"


def recovery_markdown(comparison, rruns, m):
    """Markdown lines for keel's recovery against RocksDB's reopen."""
    L = ["### Restart: keel against RocksDB (recovery of unflushed WAL)", ""]
    if not comparison:
        return L + ["Not run (no keel-shard-recovery-p*.json).", ""]
    n_pairs = max(len(r["pairs"]) for r in comparison)
    L.append("**keel**: a child process puts until the WAL holds the given amount in full segments "
             "(Durability::None, `flush_interval` None, `seal_bytes` 16 GiB and `max_unflushed_wal_bytes` raised "
             "to 1 TiB: nothing is flushed or sealed, the writer never waits) and is killed with SIGKILL. "
             "**Shard::open** = a fresh process opening a copy of the directory (segment load, the WAL's recovery "
             "scan, replay of every record into the appendable segment; the first flush pass runs after `open` "
             "returns, on the flush thread), best of 2, each on its own copy (open persists and truncates). "
             "**RocksDB** (`bench/rocksdb/recovery.py`): db_bench `fillrandom --sync=0` (WAL on, 16 B keys, the same "
             "value size, a memtable twice the WAL: nothing flushed, no compactions, no compression) is killed "
             "with SIGKILL once its WAL files (`*.log`) hold as many bytes as keel's WAL of the same pair. "
             "**Reopen** = the wall time of `db_bench --use_existing_db=1 --benchmarks=readrandom --num=1 "
             "--reads=1` on a copy (RocksDB's default recovery: WAL replay into the memtable, then the recovered "
             "memtable written to a level-0 table inside DB::Open) minus the best of three of the same command on "
             "a database with nothing to recover; best of 2, each on its own copy. RocksDB's LOG times DB::Open "
             "itself (first line to `DB pointer`): in the pair table as a check. Page cache **warm**: every file "
             "read once before each open; **cold**: every file's pages dropped (posix_fadvise DONTNEED, per file, "
             "no root needed) before each open. "
             + f"Both sides ran in {n_pairs} interleaved pair(s) (keel, RocksDB, keel, RocksDB, ...); the ratio "
               "is the median of the per-pair ratios (min–max in brackets), times are medians of the pairs. "
               "**keel recovery ÷ read**: the figure this case used to be judged on, reported without a goal: "
               "read time ÷ open time over the same bytes, where read is plain 1 MiB read(2) calls over the full "
               "WAL segments (warm: best of 3 after a warm-up, which is memory bandwidth; cold: best of 2, the "
               "device's sequential read bandwidth).")
    L.append("")
    if rruns:
        ver = next((r["rocksdb_version"] for r in rruns if r.get("rocksdb_version")), "?")
        asserts = ", **built with assertions enabled**" if any(r.get("assertions_enabled") for r in rruns) else ""
        note = f" **{m['rocksdb_note']}.**" if m.get("rocksdb_note") else ""
        L.append(f"RocksDB {ver} (`{rruns[0].get('db_bench')}`{asserts}).{note}")
    else:
        L.append("RocksDB not run (no rocksdb-recovery-p*.json): keel's numbers only.")
    L.append("")
    L.append("| values | page cache | keel WAL MiB (puts) | RocksDB WAL MiB (puts) | keel Shard::open s | RocksDB reopen s "
             "| RocksDB ÷ keel: median (min–max) | goal | keel recovery ÷ read (min–max) | read MiB/s |")
    L.append("| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for r in comparison:
        goal = f">= {ROCKSDB_GOAL:g}×"
        if r["ratio"] is not None:
            goal += " PASS" if r["ratio"] >= ROCKSDB_GOAL else " **MISS**"
        pct = lambda x: None if x is None else 100 * x
        L.append(f"| {r['value_bytes']} B | {r['cache']} | {_fmt_mib(r['keel_wal_bytes'])} ({_n(r['keel_puts'])}) | "
                 f"{_fmt_mib(r['rocksdb_wal_bytes'])} ({_n(r['rocksdb_puts'])}) | {_n(r['keel_open_s'], 2)} | "
                 f"{_n(r['rocksdb_open_s'], 2)} | "
                 f"{spread_text(r['ratio'], r['ratio_min'], r['ratio_max'], 2, '×')} | {goal} | "
                 f"{spread_text(pct(r['keel_recovery_to_read']), pct(r['keel_recovery_to_read_min']), pct(r['keel_recovery_to_read_max']), 1, ' %')} | "
                 f"{_n(r['keel_read_mib_s'])} |")
    L.append("")
    L.append("Every pair, in the order they ran (keel first). RocksDB reopen = wall − the empty reopen; "
             "**WAL alone** = keel's `Wal::open` and reading every record without a shard (a fresh process): "
             "the WAL's part of keel's recovery.")
    L.append("")
    L.append("| values | page cache | pair | keel Shard::open s | keel WAL alone: open s / read records s | RocksDB reopen s "
             "| RocksDB wall s | empty reopen s | RocksDB DB::Open in its LOG s | RocksDB ÷ keel |")
    L.append("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in comparison:
        for x in r["pairs"]:
            w = x["keel_wal_alone"] or {}
            L.append(f"| {r['value_bytes']} B | {r['cache']} | {x['pair'] if x['pair'] is not None else '–'} | "
                     f"{_n(x['keel_open_s'], 2)} | {_n(w.get('open_s'), 2)} / {_n(w.get('read_s'), 2)} | "
                     f"{_n(x['rocksdb_open_s'], 2)} | {_n(x['rocksdb_wall_s'], 2)} | {_n(x['rocksdb_empty_reopen_s'], 3)} | "
                     f"{_n(x['rocksdb_log_open_s'], 2)} | {_n(x['ratio'], 2)}{'' if x['ratio'] is None else '×'} |")
    L.append("")
    problems = [f"{r['value_bytes']} B pair {r['pair']}: {p}" for r in rruns for p in r.get("problems", [])]
    if problems:
        L += ["**RocksDB recovery problems:** " + "; ".join(problems) + ".", ""]
    first = [r for r in rruns if r["pair"] == min(x["pair"] for x in rruns)]
    if first:
        L += ["db_bench command lines (first pair; `COPY` is the copy each reopen opens):", "", "```"]
        for r in first:
            L += [r["fill_command"], r.get("reopen_command", "")]
        L += ["```", ""]
    return L


def restart_markdown(runs):
    """Markdown lines for the restart at the bound."""
    L = ["### Restart at the bound of unflushed WAL (keel only)", ""]
    if not runs:
        return L + ["Not run (no keel-restart-p*.json).", ""]
    n = len({r["pair"] for r in runs})
    L.append("A child process pins its shard's WAL from the first record (as a transfer or a lagging follower "
             "would), writes the given amount with the flush running as usual (so the WAL retains all of it, "
             "flushed), then holds the flush and writes until the next put would have to wait for it: the "
             "unflushed WAL is at `max_unflushed_wal_bytes` (the default). It is then killed with SIGKILL. "
             "**Shard::open** = a fresh process opening a copy of the directory, best of 2. Replay starts past "
             "what the segment files hold, so it reads only the unflushed tail, however much WAL is retained. "
             "Page cache **warm**: every file read once before; **cold**: posix_fadvise(POSIX_FADV_DONTNEED) on "
             "every file of the shard (per file, no root needed; the rest of the machine's cache is left alone). "
             f"The case ran {n} time(s): open times are the median (min–max) of the runs, the other columns come "
             f"from the run with the median time; goal: under {BOUND_GOAL_S:g} s.")
    L.append("")
    L.append("| values | written through the pin MiB | WAL files MiB | unflushed MiB (bound) | page cache | Shard::open s | "
             "replayed records | replayed MiB |")
    L.append("| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for row in _bound_rows(runs):
        r, t = row["median_run"], row["open_s"]
        o = r[row["cache"]].get("shard_open") or {}
        L.append(f"| {r['value_bytes']} B | {r.get('pinned_mib', '-')} | {_fmt_mib(r.get('wal_bytes'))} | "
                 f"{_fmt_mib(r.get('unflushed_bytes'))} ({_fmt_mib(r.get('bound_bytes'))}) | {row['cache']} | "
                 f"{spread_text(t['median'], t['min'], t['max'], 3)} | "
                 f"{o.get('replayed_records', '-'):,} | {_fmt_mib(o.get('replayed_bytes'))} |")
    L.append("")
    return L
