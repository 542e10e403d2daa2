#!/usr/bin/env python3
"""Turns one bench/lease/run.sh run into OUT_DIR/lease.md and OUT_DIR/lease.json.

usage: report.py OUT_DIR
OUT_DIR holds lease-runs.jsonl (the lines lease_bench printed) and
lease-machine.env (load averages). The goals are those of
bench/lease/README.md; a miss is reported, never turned into a failing
exit code.
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reportlib import load_env, read_text  # noqa: E402

COST_GOAL = 1.10  # a lease read costs at most 1.1 x a plain local get
K8_CALLS_GOAL = 1.0  # lease off, k = 8: read-index calls per request


def fmt(x, digits=0):
    return "–" if x is None else f"{x:,.{digits}f}"


def main():
    out = sys.argv[1]
    lines = [json.loads(s) for s in read_text(os.path.join(out, "lease-runs.jsonl")).splitlines() if s.strip()]
    m = load_env(os.path.join(out, "lease-machine.env"), missing_ok=True)
    config = next((x for x in lines if x["kind"] == "config"), None)
    cases = [x for x in lines if x["kind"] == "case"]
    pairs = [x for x in lines if x["kind"] == "cost_pair"]
    if config is None or not cases:
        sys.exit("bench/lease: lease-runs.jsonl has no cases")

    targets = []
    fresh_calls = sum(c["read_index_calls"] for c in cases if c["lease"])
    targets.append({"id": "lease_fresh_read_index", "what": "lease on and fresh: read-index calls",
                    "value": fresh_calls, "target": 0, "cmp": "<="})
    ratios = [p["plain_reads_per_s"] / p["lease_reads_per_s"] for p in pairs if p["lease_reads_per_s"]]
    if ratios:
        targets.append({"id": "lease_read_cost", "what": "a lease read costs <= 1.1 x a plain local get "
                        "(plain reads/s / lease reads/s, median of the pairs)",
                        "value": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                        "target": COST_GOAL, "cmp": "<="})
    k8 = [c for c in cases if c["k"] == 8 and not c["lease"]]
    if k8:
        worst = max(c["read_index_calls_per_read_request"] for c in k8)
        targets.append({"id": "k8_read_index_per_request", "what": "k = 8, lease off: read-index calls per request "
                        "(worst of 0 % and 10 % writes)", "value": worst, "target": K8_CALLS_GOAL, "cmp": "<="})
    for t in targets:
        t["pass"] = t["value"] <= t["target"]

    report = {"machine": m, "config": config, "cases": cases, "cost_pairs": pairs, "targets": targets}
    with open(os.path.join(out, "lease.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")

    L = ["## Lease reads (bench/lease)", ""]
    L.append(f"One shard of {config['keys']:,} keys ({config['key_bytes']} B keys, {config['value_bytes']} B values) "
             f"read through the C API by {config['threads']} client threads, {config['secs']} s per case; the host's "
             f"consensus is simulated in the process: quorum acks every {config['heartbeat_ms']} ms (lease "
             f"{config['lease_ms']} ms) and a read-index that takes {config['read_index_us']:g} µs and answers the "
             f"last applied index. Writes are puts applied through keel_shard_apply at the next raft index. "
             f"Load average {m.get('loadavg_start', '?')} at start, {m.get('loadavg_end', '?')} at end.")
    L.append("")
    L.append("| target | measured | goal | result |")
    L.append("| --- | ---: | ---: | --- |")
    for t in targets:
        if t["id"] == "lease_read_cost":
            val = f"{t['value']:.2f}× ({t['min']:.2f}–{t['max']:.2f})"
            goal = f"<= {t['target']:.2f}×"
        elif t["id"] == "lease_fresh_read_index":
            val, goal = fmt(t["value"]), "0"
        else:
            val, goal = f"{t['value']:.3f}", f"<= {t['target']:.0f}"
        L.append(f"| {t['what']} | {val} | {goal} | {'PASS' if t['pass'] else '**MISS**'} |")
    L.append("")
    L.append("| reads per request | writes | lease | requests/s | reads/s | p50 µs | p99 µs | read-index calls/s | "
             "calls per read request | lease hit ratio |")
    L.append("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in cases:
        hit = f"{100 * c['lease_hit_ratio']:.2f} %" if c["lease"] else "–"
        L.append(f"| {c['k']} | {c['write_pct']} % | {'on' if c['lease'] else 'off'} | {fmt(c['requests_per_s'])} | "
                 f"{fmt(c['reads_per_s'])} | {fmt(c['p50_us'], 1)} | {fmt(c['p99_us'], 1)} | "
                 f"{fmt(c['read_index_calls_per_s'])} | {c['read_index_calls_per_read_request']:.3f} | {hit} |")
    L.append("")
    if pairs:
        L.append("Cost of the lease check, one thread, the same keys, interleaved pairs (the order alternates): "
                 + "; ".join(f"pair {p['pair']}: plain {fmt(p['plain_reads_per_s'])}/s, lease "
                             f"{fmt(p['lease_reads_per_s'])}/s" for p in pairs) + ".")
        L.append("")
    L.append("k > 1 reads go through one read session (keel_shard_read_begin): one lease check or one read-index "
             "per request, not one per read. With the lease off, concurrent misses share the read-index in flight, "
             "so calls per request fall below 1 with two client threads.")
    with open(os.path.join(out, "lease.md"), "w") as f:
        f.write("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
