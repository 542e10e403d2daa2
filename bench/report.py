#!/usr/bin/env python3
"""Turns one bench/run.sh run into bench/results/<stamp>.md and .json.

usage: report.py WORK_DIR OUT_PREFIX
WORK_DIR holds machine.env, fio-<job>.json, keel.json (bench/wal.rs) and
rocksdb-<benchmark>-<N>w.{cmd,out,err,rc,sst} (db_bench runs; or
rocksdb-skipped with the reason when db_bench was not available).
Targets come from design/wal.md "How it is measured"; a miss is reported,
never turned into a failing exit code.
"""
import json
import os
import re
import sys


def load_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("=")
            if key:
                env[key] = value
    return env


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


ROCKSDB_THREADS = (1, 4, 16, 64)
ROCKSDB_BENCHMARKS = ("fillseq", "fillrandom")
NUM = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"


def read_text(path, default=""):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return default


def parse_db_bench(bm, text):
    """One db_bench run's stdout (RocksDB 7.x format), for benchmark bm:

    fillrandom   :    1025.830 micros/op 3840 ops/sec 3.124 seconds 11996 operations;    1.0 MB/s
    Microseconds per write:
    Count: 11996 Average: 1029.0197  StdDev: 1929.11
    Min: 151  Median: 431.9039  Max: 32157
    Percentiles: P50: 431.90 P75: 559.49 P99: 9461.73 P99.9: 14008.00 P99.99: 31350.55

    Returns a dict (None for what is missing) and a list of problems."""
    out, problems = {}, []
    m = re.search(rf"^{re.escape(bm)}\s*:\s*{NUM}\s+micros/op\s+{NUM}\s+ops/sec"
                  rf"(?:\s+{NUM}\s+seconds\s+([0-9]+)\s+operations)?", text, re.M)
    if m:
        out["micros_per_op"] = float(m.group(1))
        out["seconds"] = float(m.group(3)) if m.group(3) else None
        out["operations"] = int(m.group(4)) if m.group(4) else None
        # ops/sec is printed as an integer; operations / seconds is exact.
        if out["operations"] and out["seconds"]:
            out["ops_per_s"] = out["operations"] / out["seconds"]
        else:
            out["ops_per_s"] = float(m.group(2))
        rest = text[m.end():]
    else:
        problems.append(f"no '{bm} : ... micros/op ... ops/sec' line")
        out["ops_per_s"] = None
        rest = text
    lat = {}
    m = re.search(r"^Count:\s*([0-9]+)\s+Average:\s*" + NUM, rest, re.M)
    if m:
        lat["count"], lat["mean"] = int(m.group(1)), float(m.group(2))
    m = re.search(r"^Min:\s*" + NUM + r"\s+Median:\s*" + NUM + r"\s+Max:\s*" + NUM, rest, re.M)
    if m:
        lat["min"], lat["max"] = float(m.group(1)), float(m.group(3))
    m = re.search(r"^Percentiles:(.*)$", rest, re.M)
    if m:
        ps = {k: float(v) for k, v in re.findall(r"P([0-9.]+):\s*" + NUM, m.group(1))}
        for key, name in (("50", "p50"), ("75", "p75"), ("99", "p99"), ("99.9", "p999"), ("99.99", "p9999")):
            lat[name] = ps.get(key)
    else:
        problems.append("no 'Percentiles:' line (was --histogram=1 given?)")
    for name in ("p50", "p99"):
        lat.setdefault(name, None)
    out["lat_us"] = lat
    return out, problems


def rocksdb_runs(work):
    """Every db_bench run found in work, or (None, reason) when skipped."""
    skipped = os.path.join(work, "rocksdb-skipped")
    if os.path.exists(skipped):
        return None, read_text(skipped).strip()
    runs = []
    for n in ROCKSDB_THREADS:
        for bm in ROCKSDB_BENCHMARKS:
            base = os.path.join(work, f"rocksdb-{bm}-{n}w")
            if not os.path.exists(base + ".out"):
                continue
            text = read_text(base + ".out")
            r, problems = parse_db_bench(bm, text)
            rc = read_text(base + ".rc", "?").strip()
            if rc != "0":
                problems.insert(0, f"db_bench exit status {rc}")
            sst = read_text(base + ".sst").strip()
            r.update({
                "benchmark": bm, "threads": n,
                "command": read_text(base + ".cmd").strip(),
                "exit_status": rc,
                "sst_files_at_end": int(sst) if sst.isdigit() else None,
                "problems": problems,
            })
            ver = re.search(r"RocksDB:\s+version\s+(\S+)", read_text(base + ".err"))
            r["rocksdb_version"] = ver.group(1) if ver else None
            r["assertions_enabled"] = "Assertions are enabled" in text
            runs.append(r)
    if not runs:
        return None, "no db_bench output found"
    return runs, None


def fmt(x, digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def main():
    work, prefix = sys.argv[1], sys.argv[2]
    m = load_env(os.path.join(work, "machine.env"))
    with open(os.path.join(work, "keel.json")) as f:
        keel = {c["name"]: c for c in json.load(f)["cases"]}

    base = fio_fsync(fio_job(work, "fsync4k"))
    alloc = fio_fsync(fio_job(work, "fsync4k_alloc"))
    seq = fio_job(work, "seqwrite")
    seq_mib_s = seq["write"]["io_bytes"] / (1 << 20) / (seq["job_runtime"] / 1000.0)
    F, P = base["ops_per_s"], base["p99_op_us"]

    k4 = keel["sync_4k_1w"]
    one, sixteen = keel["sync_256_1w"], keel["sync_256_16w"]
    none = keel["none_128_1w"]
    targets = [
        {"id": "sync_4k_rate", "what": "1 writer, Sync, 4 KiB: appends/s >= 0.9 x F",
         "value": k4["appends_per_s"] / F, "target": 0.9, "cmp": ">="},
        {"id": "sync_4k_p99", "what": "1 writer, Sync, 4 KiB: p99 <= 1.25 x P",
         "value": k4["lat_us"]["p99"] / P, "target": 1.25, "cmp": "<="},
        {"id": "group_commit", "what": "Sync, 256 B: 16 writers >= 10 x 1 writer (appends/s)",
         "value": sixteen["appends_per_s"] / one["appends_per_s"], "target": 10.0, "cmp": ">="},
        {"id": "none_rate", "what": "1 writer, None, 128 B: >= 2,000,000 appends/s",
         "value": none["appends_per_s"], "target": 2e6, "cmp": ">="},
    ]

    # RocksDB side by side: per thread count, the stronger of fillseq and
    # fillrandom (higher rate, lower p99) against keel's sync_256_<N>w.
    rruns, rskip = rocksdb_runs(work)
    comparison = []
    if rruns:
        for n in ROCKSDB_THREADS:
            k = keel.get(f"sync_256_{n}w")
            rs = [r for r in rruns if r["threads"] == n]
            rates = [r for r in rs if r["ops_per_s"]]
            p99s = [r for r in rs if r["lat_us"].get("p99") is not None]
            best = max(rates, key=lambda r: r["ops_per_s"]) if rates else None
            low = min(p99s, key=lambda r: r["lat_us"]["p99"]) if p99s else None
            c = {
                "threads": n,
                "rocksdb_ops_per_s": best["ops_per_s"] if best else None,
                "rocksdb_ops_per_s_from": best["benchmark"] if best else None,
                "rocksdb_p99_us": low["lat_us"]["p99"] if low else None,
                "rocksdb_p99_us_from": low["benchmark"] if low else None,
                "keel_case": k["name"] if k else None,
                "keel_appends_per_s": k["appends_per_s"] if k else None,
                "keel_p50_us": k["lat_us"]["p50"] if k else None,
                "keel_p99_us": k["lat_us"]["p99"] if k else None,
            }
            c["rate_ratio"] = (c["keel_appends_per_s"] / c["rocksdb_ops_per_s"]
                               if c["keel_appends_per_s"] and c["rocksdb_ops_per_s"] else None)
            c["p99_ratio"] = (c["keel_p99_us"] / c["rocksdb_p99_us"]
                              if c["keel_p99_us"] and c["rocksdb_p99_us"] else None)
            comparison.append(c)
        by_n = {c["threads"]: c for c in comparison}
        for n, goal in ((1, 0.95), (16, 3.0), (64, 3.0)):
            c = by_n[n]
            if c["rate_ratio"] is not None:
                targets.append({"id": f"rocksdb_rate_{n}w",
                                "what": f"Sync, 256 B, {n} writer{'s' if n > 1 else ''}: keel appends/s >= {goal:g} x RocksDB durable puts/s",
                                "value": c["rate_ratio"], "target": goal, "cmp": ">="})
        for n in ROCKSDB_THREADS:
            c = by_n[n]
            if c["p99_ratio"] is not None:
                targets.append({"id": f"rocksdb_p99_{n}w",
                                "what": f"Sync, 256 B, {n} writer{'s' if n > 1 else ''}: keel p99 <= RocksDB p99",
                                "value": c["p99_ratio"], "target": 1.0, "cmp": "<="})

    for t in targets:
        t["pass"] = t["value"] >= t["target"] if t["cmp"] == ">=" else t["value"] <= t["target"]

    report = {
        "stamp": os.path.basename(prefix),
        "machine": m,
        "fio": {
            "fsync4k": base, "fsync4k_alloc": alloc,
            "seqwrite_mib_s": seq_mib_s,
            "F_ops_per_s": F, "P_us": P,
        },
        "keel": list(keel.values()),
        "rocksdb": {"skipped": rskip, "runs": rruns or [], "comparison": comparison},
        "targets": targets,
    }
    with open(prefix + ".json", "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")

    L = []
    L.append(f"# keel WAL benchmark — {report['stamp']}")
    L.append("")
    L.append(f"**Machine:** {m.get('cpu')}, {m.get('cores')} cores, {m.get('mem_gib')} GiB RAM, {m.get('kernel')}, "
             f"bench dir on **{m.get('fs')}** ({m.get('fs_source')}, {m.get('fs_options')}), {m.get('rustc')}, {m.get('fio')}, "
             f"keel {m.get('git')}. Load average {m.get('loadavg_start')} at start, {m.get('loadavg_end')} at end; "
             f"{m.get('secs_per_case')} s per case.")
    L.append("")
    L.append("## Targets")
    L.append("")
    L.append("| target | measured | goal | result |")
    L.append("| --- | ---: | ---: | --- |")
    for t in targets:
        if t["id"] == "none_rate":
            val, goal = fmt(t["value"]) + " /s", fmt(t["target"]) + " /s"
        else:
            val, goal = f"{t['value']:.2f}×", f"{t['cmp']} {t['target']:.2f}×"
        L.append(f"| {t['what']} | {val} | {goal} | {'PASS' if t['pass'] else '**MISS**'} |")
    L.append("")
    L.append("## fio baseline (same directory)")
    L.append("")
    L.append("| job | ops/s | write(2) mean µs | fdatasync p50 µs | fdatasync p99 µs | op p99 µs (fdatasync p99 + write mean) |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in (("fsync4k (F, P): 4 KiB, --overwrite=1", base), ("fsync4k_alloc: 4 KiB, fallocated file (reference)", alloc)):
        L.append(f"| {name} | {fmt(r['ops_per_s'])} | {fmt(r['write_lat_us']['mean'], 1)} | {fmt(r['fdatasync_lat_us']['p50'], 1)} | "
                 f"{fmt(r['fdatasync_lat_us']['p99'], 1)} | {fmt(r['p99_op_us'], 1)} |")
    L.append("")
    L.append(f"F = **{fmt(F)} ops/s**, P = **{fmt(P, 1)} µs**. Buffered sequential write, 1 MiB blocks, 1 GiB ending with fsync: "
             f"**{fmt(seq_mib_s)} MiB/s**.")
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
    if none.get("stall_s") is not None:
        L.append(f"None mode: {fmt(none['stall_s'], 3)} s of the {fmt(none['elapsed_s'], 2)} s went to {none['stall_batches']} "
                 f"batches of 256 appends that took over 1 ms (segment rotation). Per-writer-count ratios vs 1 writer (256 B): "
                 + ", ".join(f"{c['writers']}w {c['appends_per_s'] / one['appends_per_s']:.2f}×"
                             for c in keel.values() if c["name"].startswith("sync_256_")) + ".")
        L.append("")
    L.append("## RocksDB (db_bench, same directory)")
    L.append("")
    if not rruns:
        L.append(f"Not run: {rskip}.")
    else:
        r0 = rruns[0]
        L.append(f"RocksDB {r0.get('rocksdb_version') or '?'} (Debian rocksdb-tools {m.get('rocksdb_tools', '?')})"
                 + (", **built with assertions enabled** (db_bench warns: benchmarks unnecessarily slow; "
                    "this costs CPU, not fdatasyncs)" if any(r["assertions_enabled"] for r in rruns) else "")
                 + ". `--sync=1`: every Put returns after its WAL record is fdatasync'ed; RocksDB group-commits "
                   "concurrent writers too (one leader writes and syncs the WAL for a group). 256 B values, 16 B keys, "
                   "WAL on, no flush during a run. Latency is per Put (db_bench histogram), keel's per append.")
        L.append("")
        L.append("| threads | RocksDB fillseq puts/s | p50 µs | p99 µs | RocksDB fillrandom puts/s | p50 µs | p99 µs "
                 "| keel sync_256 appends/s | p50 µs | p99 µs | keel / RocksDB rate | keel / RocksDB p99 |")
        L.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for c in comparison:
            n = c["threads"]
            cells = [str(n)]
            for bm in ROCKSDB_BENCHMARKS:
                r = next((r for r in rruns if r["threads"] == n and r["benchmark"] == bm), None)
                if r is None:
                    cells += ["–", "–", "–"]
                else:
                    cells += [fmt(r["ops_per_s"]), fmt(r["lat_us"].get("p50"), 1), fmt(r["lat_us"].get("p99"), 1)]
            cells += [fmt(c["keel_appends_per_s"]), fmt(c["keel_p50_us"], 1), fmt(c["keel_p99_us"], 1),
                      "–" if c["rate_ratio"] is None else f"{c['rate_ratio']:.2f}×",
                      "–" if c["p99_ratio"] is None else f"{c['p99_ratio']:.2f}×"]
            L.append("| " + " | ".join(cells) + " |")
        L.append("")
        L.append("Ratios use the stronger RocksDB run at each count: the higher of the fillseq and fillrandom rates, "
                 "the lower of their p99s. Goals (in Targets above): keel ≥ 3× RocksDB at 16 and 64 writers, "
                 "≥ 0.95× at 1 writer, keel p99 ≤ RocksDB p99 at every count.")
        sst = sum(r["sst_files_at_end"] or 0 for r in rruns)
        problems = [f"{r['benchmark']} {r['threads']}w: {p}" for r in rruns for p in r["problems"]]
        if sst:
            L.append("")
            L.append(f"**Warning:** {sst} .sst file(s) were written during the RocksDB runs (a memtable flush): "
                     "those runs measured more than the WAL.")
        if problems:
            L.append("")
            L.append("**db_bench problems:** " + "; ".join(problems) + ".")
        L.append("")
        L.append("Command lines (`--db` is a fresh directory under the bench directory; fillseq ignores `--duration`, "
                 "so its per-thread `--num` comes from the fillrandom rate at the same count):")
        L.append("")
        L.append("```")
        for r in rruns:
            L.append(r["command"])
        L.append("```")
    L.append("")
    L.append("Ratios: keel 4 KiB rate / F; keel 4 KiB p99 / P; 16-writer rate / 1-writer rate (256 B). "
             "See bench/README.md. Numbers from a busy machine (high load average) are noisy.")
    with open(prefix + ".md", "w") as f:
        f.write("\n".join(L) + "\n")
    print("\n".join(L))
    print(f"\nbench: wrote {prefix}.md and {prefix}.json")


if __name__ == "__main__":
    main()
