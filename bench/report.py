#!/usr/bin/env python3
"""Turns one bench/run.sh run into bench/results/<stamp>.md and .json.

usage: report.py WORK_DIR OUT_PREFIX
WORK_DIR holds machine.env, fio-<job>.json, keel.json (bench/wal.rs, the
keel-only cases), the pairs of the WAL comparison: keel-wal-<N>w-p<pair>.json
and rocksdb-p<pair>-<benchmark>-<N>w.{cmd,out,err,rc,sst} (or rocksdb-skipped
with the reason when there was no db_bench), the reference runs
rocksdb-ref-fillrandom-<N>w.*, the pairs of the shard comparison:
keel-shard-<group>-p<pair>.json (bench/shard.rs) and
rocksdb-shard-<case>-p<pair>.{cmd,out,err,rc}, the keel-only shard groups
keel-shard-<group>.json, RocksDB's side of the restart pairs
rocksdb-recovery-p<pair>.json (bench/rocksdb/recovery.py) and the runs of the
restart at the bound keel-restart-p<run>.json (bench/restart_report.py).
Each comparison is summed up by the median of its per-pair ratios, with
their min and max; goals are judged on the median. The targets are the goals
of bench/README.md; a miss is reported, never turned into a failing exit code.
Charts (bench/charts.py, matplotlib) go beside OUT_PREFIX.md when matplotlib
can be imported.
"""
import glob
import json
import os
import re
import sys

import charts
from dbbench import db_bench_run
from reportlib import load_env, median_run, pair_numbers, read_text, spread, spread_text
from restart_report import recovery_comparison, recovery_markdown, restart_markdown, restart_results, restart_targets
from many_shards_report import many_shards_markdown, many_shards_targets


def fio_job(work, name):
    path = os.path.join(work, f"fio-{name}.json")
    with open(path) as f:
        text = f.read()
    # fio may print notes before the JSON document.
    return json.loads(text[text.index("{"):])["jobs"][0]


def pct(lat, p):
    v = lat.get("percentile", {}).get(f"{p:.6f}")
    return None if v is None else v / 1000.0


def fio_fsync(job):
    """Rate and latencies (us) of a write+fdatasync job."""
    w, s = job["write"], job["sync"]
    out = {
        "ops_per_s": w["iops"],
        "write_lat_us": {"mean": w["lat_ns"]["mean"] / 1000.0, "p50": pct(w["clat_ns"], 50), "p99": pct(w["clat_ns"], 99)},
        "fdatasync_lat_us": {"mean": s["lat_ns"]["mean"] / 1000.0, "p50": pct(s["lat_ns"], 50), "p99": pct(s["lat_ns"], 99),
                             "count": s["lat_ns"].get("N")},
    }
    # P: p99 of fdatasync plus the mean write(2): what one write+fdatasync op
    # costs at the 99th percentile (fio times the two calls separately).
    out["p99_op_us"] = out["fdatasync_lat_us"]["p99"] + out["write_lat_us"]["mean"]
    out["p50_op_us"] = out["fdatasync_lat_us"]["p50"] + out["write_lat_us"]["mean"]
    return out


def fio_comparison(work):
    """fio's fsync4k (F, P) and keel's sync_4k_1w, pair by pair (run back to
    back, fio first). Returns the pairs, fio's run with the median rate,
    keel's run with the median rate (with every rate in runs_appends_per_s)
    and the spreads of the per-pair rate and p99 ratios."""
    pairs = []
    for p in pair_numbers(work, "fio-fsync4k-p{}.json"):
        fio = fio_fsync(fio_job(work, f"fsync4k-p{p}"))
        with open(os.path.join(work, f"keel-4k-p{p}.json")) as f:
            k = json.load(f)["cases"][0]
        pairs.append({
            "pair": p, "fio": fio, "keel": k,
            "rate_ratio": k["appends_per_s"] / fio["ops_per_s"],
            "p99_ratio": k["lat_us"]["p99"] / fio["p99_op_us"],
        })
        # The reference run after keel: fio writing keel's frame size.
        if os.path.exists(os.path.join(work, f"fio-fsync4k_framed-p{p}.json")):
            job = fio_job(work, f"fsync4k_framed-p{p}")
            framed = dict(fio_fsync(job), bs=int(job["job options"]["bs"]))
            if framed["bs"] != k.get("frame_bytes"):
                sys.exit(f"report: fio's fsync4k_framed wrote {framed['bs']} B per op but keel's frame of a "
                         f"{k['record_bytes']} B record is {k.get('frame_bytes')} B: update FRAMED_4K in bench/run.sh")
            pairs[-1].update(framed=framed, framing_cost=framed["ops_per_s"] / fio["ops_per_s"],
                             over_framed=k["appends_per_s"] / framed["ops_per_s"])
    fio_median = median_run([x["fio"] for x in pairs], lambda r: r["ops_per_s"])
    keel_median = median_run([x["keel"] for x in pairs], lambda k: k["appends_per_s"])
    keel_median = dict(keel_median, runs_appends_per_s=[x["keel"]["appends_per_s"] for x in pairs])
    return pairs, fio_median, keel_median, spread(x["rate_ratio"] for x in pairs), spread(x["p99_ratio"] for x in pairs)


ROCKSDB_THREADS = (1, 4, 16, 64)
ROCKSDB_BENCHMARKS = ("fillseq", "fillrandom")
WAL_ORDER = ["sync_4k_1w"] + [f"sync_256_{n}w" for n in ROCKSDB_THREADS] + ["none_128_1w"]


def wal_comparison(work):
    """keel's sync_256_<N>w against RocksDB's durable puts at N threads, pair
    by pair. A pair's RocksDB side is the stronger of its fillseq and
    fillrandom runs (higher rate, lower p99). Returns the comparison rows,
    every db_bench run, keel's median-rate run per N, and the reason when
    RocksDB did not run."""
    skipped = os.path.join(work, "rocksdb-skipped")
    skip = read_text(skipped).strip() if os.path.exists(skipped) else None
    rows, runs, keel_median = [], [], {}
    for n in ROCKSDB_THREADS:
        pairs, keel_runs = [], []
        for p in pair_numbers(work, f"keel-wal-{n}w-p{{}}.json"):
            with open(os.path.join(work, f"keel-wal-{n}w-p{p}.json")) as f:
                k = json.load(f)["cases"][0]
            k["pair"] = p
            keel_runs.append(k)
            rs = [r for r in (db_bench_run(work, f"rocksdb-p{p}-{bm}-{n}w", bm) for bm in ROCKSDB_BENCHMARKS) if r]
            for r in rs:
                r.update({"threads": n, "pair": p})
            runs += rs
            rates = [r for r in rs if r["ops_per_s"]]
            p99s = [r for r in rs if r["lat_us"].get("p99") is not None]
            best = max(rates, key=lambda r: r["ops_per_s"]) if rates else None
            low = min(p99s, key=lambda r: r["lat_us"]["p99"]) if p99s else None
            pair = {
                "pair": p,
                "keel_appends_per_s": k["appends_per_s"], "keel_p50_us": k["lat_us"]["p50"],
                "keel_p99_us": k["lat_us"]["p99"],
                "rocksdb_ops_per_s": best["ops_per_s"] if best else None,
                "rocksdb_ops_per_s_from": best["benchmark"] if best else None,
                "rocksdb_p99_us": low["lat_us"]["p99"] if low else None,
                "rocksdb_p99_us_from": low["benchmark"] if low else None,
            }
            pair["rate_ratio"] = (pair["keel_appends_per_s"] / pair["rocksdb_ops_per_s"]
                                  if pair["keel_appends_per_s"] and pair["rocksdb_ops_per_s"] else None)
            pair["p99_ratio"] = (pair["keel_p99_us"] / pair["rocksdb_p99_us"]
                                 if pair["keel_p99_us"] and pair["rocksdb_p99_us"] else None)
            pairs.append(pair)
        km = median_run(keel_runs, lambda k: k["appends_per_s"])
        if km:
            km = dict(km, runs_appends_per_s=[k["appends_per_s"] for k in keel_runs])
            keel_median[n] = km
        ref = db_bench_run(work, f"rocksdb-ref-fillrandom-{n}w", "fillrandom")
        if ref:
            ref.update({"threads": n, "pair": None, "reference": True})
            runs.append(ref)
        rate, p99 = spread(x["rate_ratio"] for x in pairs), spread(x["p99_ratio"] for x in pairs)
        med = lambda key: (spread(x[key] for x in pairs) or {}).get("median")
        rows.append({
            "threads": n,
            "pairs": pairs,
            "keel_case": km["name"] if km else None,
            "keel_appends_per_s": med("keel_appends_per_s"),
            "keel_p50_us": med("keel_p50_us"),
            "keel_p99_us": med("keel_p99_us"),
            "rocksdb_ops_per_s": med("rocksdb_ops_per_s"),
            "rocksdb_p99_us": med("rocksdb_p99_us"),
            "rate_ratio": rate["median"] if rate else None,
            "rate_ratio_min": rate["min"] if rate else None,
            "rate_ratio_max": rate["max"] if rate else None,
            "p99_ratio": p99["median"] if p99 else None,
            "p99_ratio_min": p99["min"] if p99 else None,
            "p99_ratio_max": p99["max"] if p99 else None,
            "reference_ops_per_s": ref["ops_per_s"] if ref else None,
            "reference_p99_us": ref["lat_us"].get("p99") if ref else None,
        })
    return rows, runs, keel_median, skip


PAIRS_TEXT = ("Both sides ran in {n} interleaved pairs (keel, RocksDB, keel, RocksDB, ...); a ratio is the median "
              "of the per-pair ratios, with their min–max in brackets, and goals are judged on the median.")


def rocksdb_name(runs, path):
    """RocksDB <version> (`<db_bench path>`, and whether it was built with
    assertions), from what the runs printed."""
    ver = next((r["rocksdb_version"] for r in runs if r.get("rocksdb_version")), "?")
    asserts = ", **built with assertions enabled**" if any(r.get("assertions_enabled") for r in runs) else ""
    return f"RocksDB {ver} (`{path or 'db_bench'}`{asserts})"


def fmt_ratio(median, lo=None, hi=None, digits=2):
    """1.34× (1.20–1.41): a median ratio and the spread of its pairs."""
    return spread_text(median, lo, hi, digits, "×")


def fmt(x, digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


# Shards vs RocksDB: keel case name -> (db_bench benchmark whose line gives the
# rate, goal for keel / RocksDB ops/s or None when there is no goal).
SHARD_CASES = (
    ("durable_put_1t", "fillrandom", 1.0),
    ("durable_put_16t", "fillrandom", 3.0),
    ("durable_put_64t", "fillrandom", 3.0),
    ("buffered_put_1t", "fillrandom", 1.0),
    ("read_random_1t", "readrandom", 1.3),
    ("read_random_2t", "readrandom", 1.3),
    ("posting_append_1t", "mergerandom", None),
)
SHARD_LABELS = {
    "durable_put_1t": "durable puts, 1 thread (keel Sync / RocksDB --sync=1)",
    "durable_put_16t": "durable puts, 16 threads (keel Sync / RocksDB --sync=1)",
    "durable_put_64t": "durable puts, 64 threads (keel Sync / RocksDB --sync=1)",
    "buffered_put_1t": "buffered puts, 1 thread (keel None / RocksDB --sync=0, WAL on)",
    "read_random_1t": "random reads, 1 thread",
    "read_random_2t": "random reads, 2 threads",
    "posting_append_1t": "posting appends, 1 thread (keel append / RocksDB merge, stringappend)",
}
# keel only, against durable_put_64t of the same pair: the total over 64
# shards of one engine is not lower than one shard's.
SPREAD_CASE, SPREAD_BASE = "durable_put_64shards_64t", "durable_put_64t"
# The references beside the spread case: the same threads on one shard of an
# engine (through its commit log, like the spread case), and as many shards
# opened alone.
SPREAD_ENGINE_ONE, SPREAD_ALONE = "durable_put_engine_64t", "durable_put_64alone_64t"


def shard_results(work, skipped_reason):
    """The keel shard groups and the db_bench shard runs, paired by case and
    pair number (keel-shard-<group>-p<pair>.json against
    rocksdb-shard-<case>-p<pair>.*); keel-only groups come without a pair
    number."""
    paths = sorted(glob.glob(os.path.join(work, "keel-shard-*.json")))
    if not paths:
        return None
    keel = {"params": {}, "cases": [], "memory": None, "recovery": []}
    extra = {}
    for path in paths:
        with open(path) as f:
            part = json.load(f)
        m = re.search(r"-p([0-9]+)\.json$", path)
        for c in part.get("cases", []):
            c["pair"] = int(m.group(1)) if m else None
        keel["params"] = part.get("params") or keel["params"]
        keel["cases"] += part.get("cases", [])
        keel["memory"] = part.get("memory") or keel["memory"]
        keel["recovery"] += [dict(rc, pair=int(m.group(1)) if m else None) for rc in part.get("recovery", [])]
        # Keys other groups may add (kept for the JSON and the charts).
        for key, value in part.items():
            if key in keel:
                continue
            if isinstance(value, list):
                extra.setdefault(key, []).extend(value)
            elif value is not None:
                extra[key] = value
    rows, runs, keel_median = [], [], []
    for name, bm, goal in SHARD_CASES:
        ks = [c for c in keel["cases"] if c["name"] == name]
        numbers = sorted({c["pair"] for c in ks if c["pair"] is not None}
                         | set(pair_numbers(work, f"rocksdb-shard-{name}-p{{}}.out")))
        pairs, rs = [], []
        for p in numbers:
            k = next((c for c in ks if c["pair"] == p), None)
            r = db_bench_run(work, f"rocksdb-shard-{name}-p{p}", bm)
            if r:
                r.update({"case": name, "pair": p})
                rs.append(r)
            kr, rr = (k or {}).get("ops_per_s"), (r or {}).get("ops_per_s")
            pairs.append({"pair": p, "keel_ops_per_s": kr, "rocksdb_ops_per_s": rr,
                          "ratio": kr / rr if kr and rr else None})
        runs += rs
        # The runs with the median rate stand for each side in the table.
        k = median_run(ks, lambda c: c["ops_per_s"])
        r = median_run(rs, lambda x: x["ops_per_s"])
        if k:
            keel_median.append(k)
        ratio = spread(x["ratio"] for x in pairs)
        med = lambda key: (spread(x[key] for x in pairs) or {}).get("median")
        rows.append({
            "case": name,
            "pairs": pairs,
            "keel_ops_per_s": med("keel_ops_per_s"),
            "keel_p50_us": k["lat_us"]["p50"] if k else None,
            "keel_p99_us": k["lat_us"]["p99"] if k else None,
            "keel_ops": k["ops"] if k else None,
            "keel_found": k["found"] if k and name.startswith("read") else None,
            "rocksdb_ops_per_s": med("rocksdb_ops_per_s"),
            "rocksdb_p50_us": r["lat_us"].get("p50") if r else None,
            "rocksdb_p99_us": r["lat_us"].get("p99") if r else None,
            "rocksdb_ops": r.get("operations") if r else None,
            "rocksdb_found": r.get("found") if r else None,
            "goal": goal,
            "ratio": ratio["median"] if ratio else None,
            "ratio_min": ratio["min"] if ratio else None,
            "ratio_max": ratio["max"] if ratio else None,
        })
    if keel.get("memory"):
        keel["memory"]["per_million_keys"] = memory_per_million(keel["memory"])
    out = dict(extra)
    out.update({
        "params": keel.get("params", {}),
        "keel": keel_median,
        "keel_runs": keel["cases"],
        "memory": keel.get("memory"),
        "recovery": keel.get("recovery", []),
        "rocksdb": {"skipped": skipped_reason, "runs": runs},
        "comparison": rows,
        "spread": spread_comparison(keel["cases"]),
    })
    return out


MEMORY_POINTS = (("after_load", "after load and settle"), ("after_reading_every_key", "after reading every key once"),
                 ("after_malloc_trim", "after malloc_trim(0)"))


def memory_per_million(mem):
    """Growth over the process before the shard opened, per million keys
    (MiB); WAL mappings apart, in MiB per shard."""
    per_m = 1e6 / mem["keys"] / 1024.0  # KiB for all keys -> MiB per million keys
    b = mem["before_open"]
    out = {}
    for key, _ in MEMORY_POINTS:
        r = mem.get(key)
        if not r:
            continue
        total = (r["total_kib"] - b["total_kib"]) * per_m
        wal_kib = r["wal_map_kib"] - b["wal_map_kib"]
        out[key] = {"rss_mib": total, "rss_without_wal_mib": total - wal_kib * per_m,
                    "anon_mib": (r["anon_kib"] - b["anon_kib"]) * per_m,
                    "tables_mib": (r["sst_map_kib"] - b["sst_map_kib"]) * per_m,
                    "wal_map_mib_per_shard": wal_kib / 1024.0}
    return out


def shard_targets(sh):
    out = []
    for row in sh["comparison"]:
        if row["goal"] is not None and row["ratio"] is not None:
            out.append({"id": f"shard_{row['case']}", "what": f"Shards: {SHARD_LABELS[row['case']]}: keel ops/s >= "
                        f"{row['goal']:g} x RocksDB", "value": row["ratio"], "target": row["goal"], "cmp": ">=",
                        "min": row["ratio_min"], "max": row["ratio_max"]})
    sp = sh["spread"]
    if sp["ratio"] is not None:
        out.append({"id": f"shard_{SPREAD_CASE}", "what": "Shards: durable puts over 64 shards of one engine, 64 threads "
                    "(one per shard) >= 1 x one shard at 64 threads (keel ops/s)", "value": sp["ratio"], "target": 1.0,
                    "cmp": ">=", "min": sp["ratio_min"], "max": sp["ratio_max"]})
    return out


def spread_comparison(keel_runs):
    """keel's durable puts spread over 64 shards against one shard at 64
    threads, pair by pair (both in the same durable_put group), with the
    references of one shard of an engine and of 64 shards opened alone."""
    by_pair = {}
    for c in keel_runs:
        if c["name"] in (SPREAD_CASE, SPREAD_BASE, SPREAD_ENGINE_ONE, SPREAD_ALONE):
            by_pair.setdefault(c["pair"], {})[c["name"]] = c["ops_per_s"]
    ratio_of = lambda x, a, b: x[a] / x[b] if x.get(a) and x.get(b) else None
    pairs = [{"pair": p, "spread_ops_per_s": x.get(SPREAD_CASE), "one_shard_ops_per_s": x.get(SPREAD_BASE),
              "engine_one_ops_per_s": x.get(SPREAD_ENGINE_ONE), "alone_ops_per_s": x.get(SPREAD_ALONE),
              "ratio": ratio_of(x, SPREAD_CASE, SPREAD_BASE),
              "engine_one_over_one": ratio_of(x, SPREAD_ENGINE_ONE, SPREAD_BASE),
              "over_engine_one": ratio_of(x, SPREAD_CASE, SPREAD_ENGINE_ONE),
              "over_alone": ratio_of(x, SPREAD_CASE, SPREAD_ALONE)}
             for p, x in sorted(by_pair.items(), key=lambda kv: (kv[0] is None, kv[0]))]
    out = {"pairs": pairs}
    for key in ("spread_ops_per_s", "one_shard_ops_per_s", "engine_one_ops_per_s", "alone_ops_per_s"):
        out[key] = (spread(x[key] for x in pairs) or {}).get("median")
    for key in ("ratio", "engine_one_over_one", "over_engine_one", "over_alone"):
        r = spread(x[key] for x in pairs) or {}
        out.update({key: r.get("median"), f"{key}_min": r.get("min"), f"{key}_max": r.get("max")})
    return out


def shard_markdown(sh, m):
    L = ["## Shards vs RocksDB (db_bench, same directory)", ""]
    p = sh["params"]
    rr_all = sh["rocksdb"]["runs"]
    L.append(f"keel shards (`bench/shard.rs`, one shard, `Options::default()` but for the durability) against "
             f"the db_bench of {rocksdb_name(rr_all, m.get('db_bench'))} with its defaults (16 B keys, "
             f"{p.get('value_bytes', 100)} B values, 64 MiB memtable, "
             "automatic compactions) plus `--compression_type=none --bloom_bits=16` and a 2 GiB block cache. Keys are "
             "drawn uniformly with repeats from [0, num) on both sides (db_bench `fillrandom`/`readrandom`); both sides "
             "do the same number of operations per thread in each put case. Rates are aggregate ops/s over all "
             "threads; latencies are per operation. "
             f"{PAIRS_TEXT.format(n=max((len(r['pairs']) for r in sh['comparison']), default=0))} "
             "Rates are the medians of the pairs; latencies and operation counts come from the run with the "
             "median rate on each side.")
    L.append("")
    # The db_bench runs with the median rate stand for RocksDB in the notes.
    rr = [x for x in (median_run([y for y in rr_all if y["case"] == c], lambda y: y["ops_per_s"])
                      for c, _, _ in SHARD_CASES) if x]
    if sh["rocksdb"]["skipped"]:
        L.append(f"RocksDB not run: {sh['rocksdb']['skipped']}. keel's numbers only.")
        L.append("")
    L.append("| case | ops (keel / RocksDB) | keel ops/s | p50 µs | p99 µs | RocksDB ops/s | p50 µs | p99 µs "
             "| keel / RocksDB: median (min–max) | goal |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for row in sh["comparison"]:
        goal = "no goal (see below)" if row["goal"] is None else f">= {row['goal']:.2f}×"
        if row["goal"] is not None and row["ratio"] is not None:
            goal += " PASS" if row["ratio"] >= row["goal"] else " **MISS**"
        L.append(f"| {SHARD_LABELS[row['case']]} | {fmt(row['keel_ops'])} / {fmt(row['rocksdb_ops'])} | "
                 f"{fmt(row['keel_ops_per_s'])} | {fmt(row['keel_p50_us'], 1)} | {fmt(row['keel_p99_us'], 1)} | "
                 f"{fmt(row['rocksdb_ops_per_s'])} | {fmt(row['rocksdb_p50_us'], 1)} | {fmt(row['rocksdb_p99_us'], 1)} | "
                 f"{fmt_ratio(row['ratio'], row['ratio_min'], row['ratio_max'])} | {goal} |")
    L.append("")
    L.append("Per pair, in the order they ran (keel / RocksDB ops/s): "
             + "; ".join(f"{row['case']} " + ", ".join(fmt_ratio(x["ratio"]) for x in row["pairs"])
                         for row in sh["comparison"] if row["pairs"]) + ".")
    L.append("")
    sp = sh.get("spread")
    if sp and sp["pairs"]:
        L.append(f"**Durable puts over 64 shards** (keel only, `{SPREAD_CASE}`, "
                 "in the durable-put group of each pair): one engine, 64 shards, 64 threads each putting into its "
                 f"own shard (Durability::Sync, {fmt(p.get('sync64_ops'))} puts a thread, as in `{SPREAD_BASE}`): "
                 f"{fmt(sp['spread_ops_per_s'])} ops/s against {fmt(sp['one_shard_ops_per_s'])} ops/s on one shard, "
                 f"{fmt_ratio(sp['ratio'], sp['ratio_min'], sp['ratio_max'])} (per pair: "
                 + ", ".join(fmt_ratio(x["ratio"]) for x in sp["pairs"]) + "; goal: not lower, >= 1.00×).")
        if sp.get("over_engine_one") is not None:
            L.append("")
            L.append(f"For reference, `{SPREAD_ENGINE_ONE}` ran the same 64 threads on one shard of an engine, whose "
                     "writes are made durable through the engine's commit log as the spread case's are: "
                     f"{fmt(sp['engine_one_ops_per_s'])} ops/s, "
                     f"{fmt_ratio(sp['engine_one_over_one'], sp['engine_one_over_one_min'], sp['engine_one_over_one_max'])} "
                     f"of the shard opened alone (`{SPREAD_BASE}`: the commit log's part of the gap); the spread case made "
                     f"{fmt_ratio(sp['over_engine_one'], sp['over_engine_one_min'], sp['over_engine_one_max'])} of it "
                     "(spreading's part). Per pair (one engine shard / one shard, spread / one engine shard): "
                     + "; ".join(f"{fmt_ratio(x['engine_one_over_one'])}, {fmt_ratio(x['over_engine_one'])}"
                                 for x in sp["pairs"]) + ".")
        if sp.get("over_alone") is not None:
            L.append("")
            L.append(f"For reference, `{SPREAD_ALONE}` ran the same puts on 64 shards opened alone, each with its own "
                     f"flush thread, WAL workers and fdatasyncs: {fmt(sp['alone_ops_per_s'])} ops/s. The engine's "
                     f"shards made {fmt_ratio(sp['over_alone'], sp['over_alone_min'], sp['over_alone_max'])} that "
                     "(per pair: " + ", ".join(fmt_ratio(x["over_alone"]) for x in sp["pairs"]) + ").")
        L.append("")
    kc = {c["name"]: c for c in sh["keel"]}
    notes = []
    reads = [r for r in sh["comparison"] if r["case"].startswith("read")]
    hits = []
    for r in reads:
        k = kc.get(r["case"])
        rk = next((x for x in rr if x["case"] == r["case"]), None)
        kh = k["found"] / k["ops"] if k and k["ops"] else None
        rh = rk["found"] / rk["reads"] if rk and rk.get("found") is not None and rk.get("reads") else None
        hits.append(f"{r['case']}: keel {fmt(None if kh is None else 100 * kh, 1)} %, RocksDB {fmt(None if rh is None else 100 * rh, 1)} %")
    load = kc.get("read_random_1t")
    if load:
        st = load.get("stats", {})
        seal = load.get("seal_bytes") or 0
        notes.append(f"**Read data set:** {fmt(p.get('load_keys'))} buffered puts (the buffered-put case), then keel "
                     f"settled in {fmt(load.get('settle_s'), 2)} s (flush passes until sealing and merging stop) to "
                     f"{st.get('sealed_segments')} immutable segment(s) holding {fmt(st.get('sealed_bytes', 0) / 2**20, 1)} MiB "
                     f"and an appendable segment of {fmt(st.get('appendable_bytes', 0) / 2**20, 1)} MiB "
                     f"({fmt(st.get('appendable_keys'))} keys); seal_bytes is {fmt(seal / 2**20)} MiB, so "
                     f"{fmt(100 * st.get('sealed_bytes', 0) / max(1, st.get('sealed_bytes', 0) + st.get('appendable_bytes', 0)), 0)} % "
                     "of the bytes are in immutable segments. RocksDB ran `waitforcompaction` after its load; its "
                     "files per level (files/MB) after the load: "
                     + next((", ".join(f"L{lv[0]} {lv[1]}/{lv[2]}" for lv in x["levels"] if lv[1])
                             or "none (everything still in the memtable)"
                             for x in rr if x["case"] == "buffered_put_1t" and x.get("levels")), "–")
                     + " (the read runs reopen the database, and RocksDB writes what its WAL replay recovers to a level-0 "
                     "file at open). Reads run for the case length on each side; the share of reads that found their key: "
                     + "; ".join(hits) + " (the same key distribution gives the same share).")
    notes.append("**Posting appends** have no goal: RocksDB's `mergerandom` with the `stringappend` merge operator has "
                 "the same meaning (each operation adds an item to the end of the key's list, a read returns the whole "
                 "list), but RocksDB only logs the operand and stores it in the memtable; the concatenation is paid "
                 "later, by reads and compactions, while keel appends to the list in place (and copies a list that "
                 "lives in an immutable segment into the appendable one on its first append). So this compares the "
                 "write path only.")
    if any(x.get("assertions_enabled") for x in rr_all):
        notes.append("This db_bench is **built with assertions enabled** (it warns that benchmarks are "
                     "unnecessarily slow); this costs RocksDB CPU on every operation, most visible in the buffered "
                     "and read cases.")
    problems = [f"{x['case']} pair {x['pair']}: {pr}" for x in rr_all for pr in x["problems"]]
    if problems:
        notes.append("**db_bench problems:** " + "; ".join(problems) + ".")
    for n in notes:
        L.append(n)
        L.append("")

    mem = sh.get("memory")
    L.append("### Resident memory per million keys (keel only)")
    L.append("")
    if not mem:
        L.append("Not measured.")
    else:
        st = mem.get("stats", {})
        L.append(f"A fresh process loads {fmt(mem['keys'])} distinct keys ({mem['key_bytes']} B keys, {mem['value_bytes']} B "
                 f"values, random order, Durability::None, default options) and settles ({st.get('sealed_segments')} "
                 f"immutable segment(s), {fmt(st.get('appendable_keys'))} keys left in the appendable segment). "
                 "Resident memory is VmRSS, RssAnon and RssFile of /proc/self/status minus their values before the "
                 "shard was opened; /proc/self/smaps splits the file-backed part into table (.sst) mappings, which "
                 "count once touched, and WAL segment mappings. The WAL maps its active segment and its prepared "
                 "spare and pre-faults them (MADV_POPULATE_READ) in Durability::None: a fixed cost per open shard, "
                 "not per key, so it is listed apart and left out of the per-key column. db_bench does not report "
                 "its memory, so there is no RocksDB column.")
        L.append("")
        L.append("| when | RSS growth MiB / M keys | without WAL mappings, MiB / M keys | heap (anon) MiB / M keys | "
                 "tables (mmap) MiB / M keys | WAL mappings MiB (per shard) |")
        L.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        for key, label in MEMORY_POINTS:
            row = mem["per_million_keys"].get(key)
            if not row:
                continue
            wal = row["wal_map_mib_per_shard"]
            L.append(f"| {label} | {fmt(row['rss_mib'], 1)} | **{fmt(row['rss_without_wal_mib'], 1)}** | {fmt(row['anon_mib'], 1)} | "
                     f"{fmt(row['tables_mib'], 1)} | {fmt(wal, 1)} |")
        L.append("")
        raw = (mem["key_bytes"] + mem["value_bytes"]) * 1e6 / 2**20
        L.append(f"Raw key + value bytes: {raw:.1f} MiB per million keys.")
    L.append("")
    if rr:
        L.append("db_bench command lines (shard workloads; every pair runs the same):")
        L.append("")
        L.append("```")
        for x in rr:
            L.append(x["command"])
        L.append("```")
        L.append("")
    return L


def wal_rocksdb_markdown(comparison, runs, skip, m):
    """The section that sets keel's sync_256_<N>w against RocksDB's durable
    puts: medians of the pairs, then every pair, then the command lines."""
    L = ["## RocksDB (db_bench, same directory)", ""]
    compared = [r for r in runs if not r.get("reference")]
    ref = [r for r in runs if r.get("reference")]
    if not compared:
        L += [f"Not run: {skip or 'no db_bench output found'}.", ""]
        return L
    n_pairs = max(len(c["pairs"]) for c in comparison)
    L.append(f"{rocksdb_name(compared, m.get('db_bench'))}."
             + (f" **{m['rocksdb_note']}.**" if m.get("rocksdb_note") else "")
             + " `--sync=1`: every Put returns after its WAL record is fdatasync'ed; RocksDB group-commits "
               "concurrent writers too (one leader writes and syncs the WAL for a group). 256 B values, 16 B keys, "
               "WAL on, no flush during a run. Latency is per Put (db_bench histogram), keel's per append. "
             + PAIRS_TEXT.format(n=n_pairs)
             + " A pair's RocksDB side is the stronger of its fillseq and fillrandom runs: the higher rate, the lower "
               "p99. Rates and p99s below are the medians of the pairs.")
    L.append("")
    head = ("| threads | keel sync_256 appends/s | keel p99 µs | RocksDB puts/s | RocksDB p99 µs "
            "| keel / RocksDB rate | keel / RocksDB p99 |")
    align = "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    if ref:
        head += " reference puts/s | reference p99 µs |"
        align += " ---: | ---: |"
    L += [head, align]
    for c in comparison:
        cells = [str(c["threads"]), fmt(c["keel_appends_per_s"]), fmt(c["keel_p99_us"], 1),
                 fmt(c["rocksdb_ops_per_s"]), fmt(c["rocksdb_p99_us"], 1),
                 fmt_ratio(c["rate_ratio"], c["rate_ratio_min"], c["rate_ratio_max"]),
                 fmt_ratio(c["p99_ratio"], c["p99_ratio_min"], c["p99_ratio_max"])]
        if ref:
            cells += [fmt(c["reference_ops_per_s"]), fmt(c["reference_p99_us"], 1)]
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    L.append("Goals (in Targets above): keel ≥ 3× RocksDB at 16 and 64 writers, ≥ 0.95× at 1 writer, keel p99 ≤ "
             "RocksDB p99 at every count.")
    if ref:
        L.append("")
        L.append(f"**Reference** (not judged): {rocksdb_name(ref, m.get('db_bench_ref'))}, Debian package rocksdb-tools "
                 f"{m.get('rocksdb_tools', '?')}: one fillrandom run per count, after that count's pairs.")
    L.append("")
    L.append("Every pair, in the order it ran (keel first):")
    L.append("")
    L.append("| threads | pair | keel appends/s | keel p99 µs | RocksDB fillseq puts/s | fillrandom puts/s "
             "| RocksDB p99 µs (lower) | rate ratio | p99 ratio |")
    L.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in comparison:
        for x in c["pairs"]:
            rate = {r["benchmark"]: r["ops_per_s"] for r in compared
                    if r["threads"] == c["threads"] and r["pair"] == x["pair"]}
            L.append(f"| {c['threads']} | {x['pair']} | {fmt(x['keel_appends_per_s'])} | {fmt(x['keel_p99_us'], 1)} | "
                     f"{fmt(rate.get('fillseq'))} | {fmt(rate.get('fillrandom'))} | {fmt(x['rocksdb_p99_us'], 1)} | "
                     f"{fmt_ratio(x['rate_ratio'])} | {fmt_ratio(x['p99_ratio'])} |")
    sst = sum(r["sst_files_at_end"] or 0 for r in runs)
    problems = [f"{r['benchmark']} {r['threads']}w {'reference' if r.get('reference') else 'pair ' + str(r['pair'])}: {p}"
                for r in runs for p in r["problems"]]
    if sst:
        L.append("")
        L.append(f"**Warning:** {sst} .sst file(s) were written during the RocksDB runs (a memtable flush): "
                 "those runs measured more than the WAL.")
    if problems:
        L.append("")
        L.append("**db_bench problems:** " + "; ".join(problems) + ".")
    L.append("")
    L.append("Command lines of the first pair and of the reference (`--db` is a fresh directory under the bench "
             "directory; fillseq ignores `--duration`, so its per-thread `--num` comes from the fillrandom rate of the "
             "same pair):")
    L.append("")
    L.append("```")
    for r in runs:
        if r.get("reference") or r["pair"] == 1:
            L.append(r["command"])
    L.append("```")
    L.append("")
    return L


def not_run(m, section, why):
    """The line of a section that has no results: skipped on purpose, or why not."""
    if section in m.get("skipped", "").split():
        return "Not run (skipped with BENCH_SKIP)."
    return f"Not run ({why})."


def main():
    work, prefix = sys.argv[1], sys.argv[2]
    m = load_env(os.path.join(work, "machine.env"))
    with open(os.path.join(work, "keel.json")) as f:
        keel = {c["name"]: c for c in json.load(f)["cases"]}
    # The paired keel cases: the run with the median rate stands for each.
    comparison, rruns, keel_median, rskip = wal_comparison(work)
    for n, k in keel_median.items():
        keel[k["name"]] = k
    fio_pairs, base, keel["sync_4k_1w"], rate_4k, p99_4k = fio_comparison(work)
    keel = dict(sorted(keel.items(), key=lambda kv: WAL_ORDER.index(kv[0]) if kv[0] in WAL_ORDER else 99))

    alloc = fio_fsync(fio_job(work, "fsync4k_alloc"))
    # The framed reference (fio writing keel's frame size), where it ran.
    framed = median_run([x["framed"] for x in fio_pairs if "framed" in x], lambda r: r["ops_per_s"])
    framing_cost = spread(x["framing_cost"] for x in fio_pairs if "framing_cost" in x)
    over_framed = spread(x["over_framed"] for x in fio_pairs if "over_framed" in x)
    seq = fio_job(work, "seqwrite")
    seq_mib_s = seq["write"]["io_bytes"] / (1 << 20) / (seq["job_runtime"] / 1000.0)
    # F and P: the medians of fio's runs, for the tables; the targets are
    # judged on the per-pair ratios.
    F = spread(x["fio"]["ops_per_s"] for x in fio_pairs)["median"]
    P = spread(x["fio"]["p99_op_us"] for x in fio_pairs)["median"]

    one, sixteen = keel["sync_256_1w"], keel["sync_256_16w"]
    none = keel["none_128_1w"]
    targets = [
        {"id": "sync_4k_rate", "what": "1 writer, Sync, 4 KiB: appends/s >= 0.9 x F",
         "value": rate_4k["median"], "target": 0.9, "cmp": ">=", "min": rate_4k["min"], "max": rate_4k["max"]},
        {"id": "sync_4k_p99", "what": "1 writer, Sync, 4 KiB: p99 <= 1.25 x P",
         "value": p99_4k["median"], "target": 1.25, "cmp": "<=", "min": p99_4k["min"], "max": p99_4k["max"]},
        {"id": "group_commit", "what": "Sync, 256 B: 16 writers >= 10 x 1 writer (appends/s)",
         "value": sixteen["appends_per_s"] / one["appends_per_s"], "target": 10.0, "cmp": ">="},
        {"id": "none_rate", "what": "1 writer, None, 128 B: >= 2,000,000 appends/s",
         "value": none["appends_per_s"], "target": 2e6, "cmp": ">="},
    ]

    if any(c["rate_ratio"] is not None or c["p99_ratio"] is not None for c in comparison):
        by_n = {c["threads"]: c for c in comparison}
        for n, goal in ((1, 0.95), (16, 3.0), (64, 3.0)):
            c = by_n[n]
            if c["rate_ratio"] is not None:
                targets.append({"id": f"rocksdb_rate_{n}w",
                                "what": f"Sync, 256 B, {n} writer{'s' if n > 1 else ''}: keel appends/s >= {goal:g} x RocksDB durable puts/s",
                                "value": c["rate_ratio"], "target": goal, "cmp": ">=",
                                "min": c["rate_ratio_min"], "max": c["rate_ratio_max"]})
        for n in ROCKSDB_THREADS:
            c = by_n[n]
            if c["p99_ratio"] is not None:
                targets.append({"id": f"rocksdb_p99_{n}w",
                                "what": f"Sync, 256 B, {n} writer{'s' if n > 1 else ''}: keel p99 <= RocksDB p99",
                                "value": c["p99_ratio"], "target": 1.0, "cmp": "<=",
                                "min": c["p99_ratio_min"], "max": c["p99_ratio_max"]})

    shards = shard_results(work, rskip)
    if shards:
        targets.extend(shard_targets(shards))
        targets.extend(many_shards_targets(shards.get("many_shards")))
    restart_bound = restart_results(work)
    recovery, recovery_rocksdb = recovery_comparison(work, (shards or {}).get("recovery", []))
    targets.extend(restart_targets(recovery, restart_bound))
    # bench/net writes its own section (net.md, net.json with its targets,
    # shown in its own table rather than the ratio table below).
    net_path = os.path.join(work, "net.json")
    net = json.load(open(net_path)) if os.path.exists(net_path) else None
    # bench/lease likewise (lease.md, lease.json).
    lease_path = os.path.join(work, "lease.json")
    lease = json.load(open(lease_path)) if os.path.exists(lease_path) else None

    for t in targets:
        t["pass"] = t["value"] >= t["target"] if t["cmp"] == ">=" else t["value"] <= t["target"]

    report = {
        "stamp": os.path.basename(prefix),
        "machine": m,
        "fio": {
            "fsync4k": base, "fsync4k_alloc": alloc,
            "fsync4k_pairs": [{"pair": x["pair"], "fio_ops_per_s": x["fio"]["ops_per_s"], "fio_p99_op_us": x["fio"]["p99_op_us"],
                               "keel_appends_per_s": x["keel"]["appends_per_s"], "keel_p99_us": x["keel"]["lat_us"]["p99"],
                               "rate_ratio": x["rate_ratio"], "p99_ratio": x["p99_ratio"],
                               "framed_ops_per_s": x["framed"]["ops_per_s"] if "framed" in x else None,
                               "framing_cost": x.get("framing_cost"), "over_framed": x.get("over_framed")}
                              for x in fio_pairs],
            "fsync4k_framed": framed, "framing_cost": framing_cost, "over_framed": over_framed,
            "seqwrite_mib_s": seq_mib_s,
            "F_ops_per_s": F, "P_us": P,
        },
        "keel": list(keel.values()),
        "rocksdb": {"skipped": rskip, "runs": rruns or [], "comparison": comparison},
        "shards": shards,
        "net": net,
        "lease": lease,
        "restart_bound": restart_bound,
        "restart_rocksdb": {"comparison": recovery, "runs": recovery_rocksdb},
        "targets": targets,
    }
    report["charts"] = charts.draw(report, prefix)
    with open(prefix + ".json", "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")

    L = []
    L.append(f"# keel benchmark (WAL, shards, socket writers) — {report['stamp']}")
    L.append("")
    L.append(f"**Machine:** {m.get('cpu')}, {m.get('cores')} cores, {m.get('mem_gib')} GiB RAM, {m.get('kernel')}, "
             f"bench dir on **{m.get('fs')}** ({m.get('fs_source')}, {m.get('fs_options')}), {m.get('rustc')}, {m.get('fio')}, "
             f"keel {m.get('git')}. Load average {m.get('loadavg_start')} at start, {m.get('loadavg_end')} at end; "
             f"{m.get('secs_per_case')} s per case"
             + (" (**KEEL_BENCH_QUICK=1: a smoke run with small sizes, not for comparing**)" if m.get("quick") == "1" else "")
             + (f"; sections skipped (BENCH_SKIP): {m['skipped']}" if m.get("skipped") else "")
             + ".")
    L.append("")
    L.append("## Targets")
    L.append("")
    L.append("| target | measured (against RocksDB: median of the pairs, min–max) | goal | result |")
    L.append("| --- | ---: | ---: | --- |")
    for t in targets:
        if t["id"] == "none_rate":
            val, goal = fmt(t["value"]) + " /s", fmt(t["target"]) + " /s"
        elif t.get("unit") == "s":
            val = f"{t['value']:.2f} s" + (f" ({t['min']:.2f}–{t['max']:.2f})" if t.get("min") != t.get("max") else "")
            goal = f"{t['cmp']} {t['target']:.2f} s"
        elif t.get("unit") == "%":
            val, goal = f"{100 * t['value']:.1f} %", f"{t['cmp']} {100 * t['target']:.0f} %"
        elif t.get("unit"):
            val, goal = f"{t['value']:,.2f} {t['unit']}", f"{t['cmp']} {t['target']:,g} {t['unit']}"
        else:
            val, goal = fmt_ratio(t["value"], t.get("min"), t.get("max")), f"{t['cmp']} {t['target']:.2f}×"
        L.append(f"| {t['what']} | {val} | {goal} | {'PASS' if t['pass'] else '**MISS**'} |")
    L.append("")
    L.extend(charts.markdown(report["charts"]))
    L.append("## fio baseline (same directory)")
    L.append("")
    L.append("| job | ops/s | write(2) mean µs | fdatasync p50 µs | fdatasync p99 µs | op p99 µs (fdatasync p99 + write mean) |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    jobs = [("fsync4k (F, P): 4 KiB, --overwrite=1 (the pair with the median rate)", base),
            ("fsync4k_alloc: 4 KiB, fallocated file (reference)", alloc)]
    if framed:
        jobs.append((f"fsync4k_framed: {fmt(framed['bs'])} B (keel's frame of a 4 KiB record), --overwrite=1 "
                     "(reference; the pair with the median rate)", framed))
    for name, r in jobs:
        L.append(f"| {name} | {fmt(r['ops_per_s'])} | {fmt(r['write_lat_us']['mean'], 1)} | {fmt(r['fdatasync_lat_us']['p50'], 1)} | "
                 f"{fmt(r['fdatasync_lat_us']['p99'], 1)} | {fmt(r['p99_op_us'], 1)} |")
    L.append("")
    L.append(f"F = **{fmt(F)} ops/s**, P = **{fmt(P, 1)} µs** (medians of {len(fio_pairs)} runs). fsync4k and keel's sync_4k_1w "
             f"ran in {len(fio_pairs)} interleaved pairs (fio, keel, fio, keel, ...); the 4 KiB targets are the medians of the "
             "per-pair ratios, min–max in brackets. Per pair (fio ops/s, keel appends/s, rate ratio; fio P µs, keel p99 µs, "
             "p99 ratio): " + "; ".join(
                 f"{fmt(x['fio']['ops_per_s'])}, {fmt(x['keel']['appends_per_s'])}, {x['rate_ratio']:.2f}×; "
                 f"{fmt(x['fio']['p99_op_us'], 1)}, {fmt(x['keel']['lat_us']['p99'], 1)}, {x['p99_ratio']:.2f}×" for x in fio_pairs) + ". "
             f"Buffered sequential write, 1 MiB blocks, 1 GiB ending with fsync: **{fmt(seq_mib_s)} MiB/s**.")
    L.append("")
    if framed:
        L.append(f"A 4 KiB record takes {fmt(framed['bs'])} B in keel's log (its frame header and the record), so each "
                 "of its appends dirties two pages where fsync4k's dirties one. `fsync4k_framed` ran fio's fsync4k job "
                 "with that many bytes per op right after keel in each pair: fio itself made "
                 f"{fmt_ratio(framing_cost['median'], framing_cost['min'], framing_cost['max'])} of its 4 KiB rate "
                 f"(the cost of the second page, with no other difference), and keel made "
                 f"{fmt_ratio(over_framed['median'], over_framed['min'], over_framed['max'])} of fio's framed rate. "
                 "Per pair (fsync4k_framed ops/s, its rate / the pair's fsync4k, keel / it): " + "; ".join(
                     f"{fmt(x['framed']['ops_per_s'])}, {x['framing_cost']:.2f}×, {x['over_framed']:.2f}×"
                     for x in fio_pairs if "framed" in x) + ". No goal: it is there to read the 4 KiB rate target by.")
        L.append("")
    L.append("## keel WAL")
    L.append("")
    L.append("| case | durability | writers | record | appends/s | p50 µs | p99 µs | p99.9 µs | segments used |")
    L.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in keel.values():
        lat = c["lat_us"]
        L.append(f"| {c['name']} | {c['durability']} | {c['writers']} | {c['record_bytes']} B | {fmt(c['appends_per_s'])} | "
                 f"{fmt(lat['p50'], 1)} | {fmt(lat['p99'], 1)} | {fmt(lat['p999'], 1)} | {c['segments']} |")
    L.append("")
    L.append("The sync_256 cases ran once per pair of the RocksDB comparison; the row is the run with the median rate "
             "(rates of every run: " + "; ".join(f"{c['name']} " + ", ".join(fmt(x) for x in c["runs_appends_per_s"])
                                                  for c in keel.values() if c.get("runs_appends_per_s")) + ").")
    L.append("")
    if none.get("stall_s") is not None:
        L.append(f"None mode: {fmt(none['stall_s'], 3)} s of the {fmt(none['elapsed_s'], 2)} s went to {none['stall_batches']} "
                 f"batches of 256 appends that took over 1 ms (segment rotation). Per-writer-count ratios vs 1 writer (256 B): "
                 + ", ".join(f"{c['writers']}w {c['appends_per_s'] / one['appends_per_s']:.2f}×"
                             for c in keel.values() if c["name"].startswith("sync_256_")) + ".")
        L.append("")
    L.extend(wal_rocksdb_markdown(comparison, rruns, rskip, m))
    if shards:
        L.extend(shard_markdown(shards, m))
        L.extend(recovery_markdown(recovery, recovery_rocksdb, m))
        L.extend(restart_markdown(restart_bound))
        L.extend(many_shards_markdown(report["shards"].get("many_shards")))
    else:
        L.append("## Shards vs RocksDB")
        L.append("")
        L.append("Not run (no keel-shard-*.json).")
        L.append("")
    if net:
        L += read_text(os.path.join(work, "net.md")).rstrip("\n").split("\n")
        L.append("")
    else:
        L += ["## Batched socket writers", "", not_run(m, "net", "bench/net produced no net.json"), ""]
    if lease:
        L += read_text(os.path.join(work, "lease.md")).rstrip("\n").split("\n")
        L.append("")
    else:
        L += ["## Lease reads (bench/lease)", "", not_run(m, "lease", "bench/lease produced no lease.json"), ""]
    L.append("Ratios: keel 4 KiB rate / F; keel 4 KiB p99 / P; 16-writer rate / 1-writer rate (256 B). "
             "See bench/README.md. Numbers from a busy machine (high load average) are noisy.")
    with open(prefix + ".md", "w") as f:
        f.write("\n".join(L) + "\n")
    print("\n".join(L))
    print(f"\nbench: wrote {prefix}.md and {prefix}.json")


if __name__ == "__main__":
    main()
