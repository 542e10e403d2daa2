"""db_bench's output, read for bench/report.py: one run's rate, latency
histogram, version and what else it printed (keys found by reads, files per
level after a load)."""
import os
import re

from reportlib import read_text

NUM = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"


def parse_db_bench(bm, text):
    """One db_bench run's stdout (RocksDB 7.8 and 10.4 print the same), for benchmark bm:

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


def db_bench_run(work, name, bm):
    """The db_bench run that bench/run.sh left in work as name.{cmd,out,err,rc}
    (and name.sst, the .sst files left at its end, for the WAL runs), parsed
    for benchmark bm; None when there is no such run."""
    base = os.path.join(work, name)
    if not os.path.exists(base + ".out"):
        return None
    text = read_text(base + ".out")
    r, problems = parse_db_bench(bm, text)
    rc = read_text(base + ".rc", "?").strip()
    if rc != "0":
        problems.insert(0, f"db_bench exit status {rc}")
    sst = read_text(base + ".sst").strip()
    found = re.search(r"\(\s*([0-9]+) of ([0-9]+) found\)", text)
    ver = re.search(r"RocksDB:\s+version\s+(\S+)", read_text(base + ".err") + text)
    r.update({
        "benchmark": bm,
        "command": read_text(base + ".cmd").strip(),
        "exit_status": rc,
        "sst_files_at_end": int(sst) if sst.isdigit() else None,
        "found": int(found.group(1)) if found else None,
        "reads": int(found.group(2)) if found else None,
        "problems": problems,
        "rocksdb_version": ver.group(1) if ver else None,
        "assertions_enabled": "Assertions are enabled" in text,
    })
    lv = re.search(r"^Level Files Size\(MB\)\n-+\n((?:\s*[0-9]+\s+[0-9]+\s+[0-9]+\n?)+)", text, re.M)
    if lv:
        r["levels"] = [[int(x) for x in line.split()] for line in lv.group(1).strip().splitlines()]
    return r
