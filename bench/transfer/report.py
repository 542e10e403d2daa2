#!/usr/bin/env python3
"""Turns one bench/transfer/run.sh run into PREFIX.md and PREFIX.json.

usage: report.py OUT_DIR PREFIX
OUT_DIR holds machine.env, fill.json and runs/ (index.tsv; one JSON per run
from `transfer case`). The goals are those of bench/README.md ("Shard
transfer"); a miss is reported as MISS, never as a failing exit code.
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reportlib import load_env  # noqa: E402

LINK_LABEL = {"equal": "read rate (read ≈ send)", "send": "¼ read rate (send dominates)",
              "read": "4× read rate (read dominates)", "calibrate": "unshaped"}
# The memory goal: at most two batches plus this much.
MEMORY_CONSTANT_MIB = 16


def load_runs(out):
    runs = {}
    with open(os.path.join(out, "runs", "index.tsv")) as f:
        for line in f:
            name, mode, delay, rate, writer = line.rstrip("\n").split("\t")
            path = os.path.join(out, "runs", f"{name}-{mode}.json")
            try:
                with open(path) as r:
                    run = json.load(r)
            except (OSError, ValueError):
                run = None  # the case failed; shown as missing
            runs[(name, mode)] = run
    return runs


def case_of(name):
    """'d100-equal-p2' -> ('d100-equal', 2); 'writer-p1' -> ('writer', 1)."""
    base, _, p = name.rpartition("-p")
    return (base, int(p)) if base and p.isdigit() else (name, 1)


def mbps(run):
    return run["bytes"] / run["drain_s"] / 1e6 if run and run["drain_s"] > 0 else None


def utilisation(run):
    """Bytes on the veth during the backfill over what the shaped rate allows."""
    if not run or not run["rate_bytes"] or run["backfill_s"] <= 0:
        return None
    return run["link_backfill_bytes"] / (run["rate_bytes"] * run["backfill_s"])


def source_growth_mib(run):
    return (run["source"]["peak_rss_kib"] - run["source"]["rss_before_kib"]) / 1024


def source_anon_growth_mib(run):
    """The heap's growth (sampled RssAnon): the batches and buffers, not
    the shard's files mapped for reading, which the peak RSS also counts."""
    return (run["source"]["peak_anon_kib"] - run["source"]["anon_before_kib"]) / 1024


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec=".2f", suffix=""):
    return "–" if v is None else f"{v:{spec}}{suffix}"


def cpu(part):
    return part["cpu_user_s"] + part["cpu_sys_s"] if isinstance(part, dict) else None


def summarise(runs):
    """Per case: each mode's median run numbers and the per-pair speedups."""
    cases = {}
    for (name, mode), run in runs.items():
        base, pair = case_of(name)
        c = cases.setdefault(base, {"pairs": {}})
        c["pairs"].setdefault(pair, {})[mode] = run
    out = {}
    for base, c in cases.items():
        speedups, per_mode = [], {"pipelined": [], "sequential": []}
        for pair in sorted(c["pairs"]):
            p = c["pairs"][pair]
            for mode, run in p.items():
                if run:
                    per_mode[mode].append(run)
            a, b = p.get("pipelined"), p.get("sequential")
            if a and b and a["drain_s"] > 0:
                speedups.append(b["drain_s"] / a["drain_s"])
        row = {"speedup_median": med(speedups), "speedups": speedups}
        for mode, rs in per_mode.items():
            if not rs:
                continue
            row[mode] = {
                "runs": len(rs),
                "delay_us": rs[0]["delay_us"],
                "rate_bytes": rs[0]["rate_bytes"],
                "writer_rate": rs[0]["writer_rate"],
                "drain_s": med([r["drain_s"] for r in rs]),
                "mb_per_s": med([mbps(r) for r in rs]),
                "link_busy": med([utilisation(r) for r in rs]),
                "read_s": med([r["read_s"] for r in rs]),
                "send_s": med([r["send_s"] for r in rs]),
                "batches": med([r["batches"] for r in rs]),
                "final_hold_ms": med([r["final_hold_us"] / 1000 for r in rs]),
                "writer_p99_ms": med([r["writer_p99_us"] / 1000 for r in rs if r["writer_puts"]]),
                "max_batches_in_memory": max(r["max_batches_in_memory"] for r in rs),
                "max_batch_bytes": rs[0]["max_batch_bytes"],
                "source_peak_rss_mib": max(r["source"]["peak_rss_kib"] for r in rs) / 1024,
                "source_growth_mib": max(source_growth_mib(r) for r in rs),
                "source_anon_growth_mib": max(source_anon_growth_mib(r) for r in rs),
                "receiver_peak_rss_mib": max((r["receiver"] or {}).get("peak_rss_kib", 0) for r in rs) / 1024,
                "relay_peak_rss_mib": max((r["relay"] or {}).get("peak_rss_kib", 0) for r in rs) / 1024,
                "cpu_source_s": med([cpu(r["source"]) for r in rs]),
                "cpu_receiver_s": med([cpu(r["receiver"]) for r in rs]),
                "cpu_relay_s": med([cpu(r["relay"]) for r in rs]),
            }
        out[base] = row
    return out


def goals(s):
    g = []
    eq = s.get("d100-equal", {})
    sp = eq.get("speedup_median")
    g.append({"goal": "at +0.1 ms, link at the read rate: pipelined ≥ 1.8× sequential (median of pairs)",
              "value": sp, "shown": fmt(sp, ".2f", "×"), "pass": sp is not None and sp >= 1.8})
    busy = eq.get("pipelined", {}).get("link_busy")
    g.append({"goal": "at +0.1 ms, link at the read rate: link ≥ 90 % busy during the pipelined backfill",
              "value": busy, "shown": fmt(None if busy is None else busy * 100, ".0f", " %"),
              "pass": busy is not None and busy >= 0.9})
    p = eq.get("pipelined", {})
    if p:
        limit = 2 * p["max_batch_bytes"] / 2**20 + MEMORY_CONSTANT_MIB
        ok = p["max_batches_in_memory"] <= 2 and p["source_anon_growth_mib"] <= limit
        g.append({"goal": f"source memory ≤ 2 batches + {MEMORY_CONSTANT_MIB} MiB (peak anonymous RSS growth during the transfer ≤ {limit:.0f} MiB)",
                  "value": p["source_anon_growth_mib"],
                  "shown": f"{p['source_anon_growth_mib']:.1f} MiB, {p['max_batches_in_memory']} batches at once "
                           f"(peak RSS growth {p['source_growth_mib']:.1f} MiB, with the mapped shard files)", "pass": ok})
    w = s.get("writer", {}).get("pipelined", {})
    hold = w.get("final_hold_ms")
    g.append({"goal": "final hold < 10 ms with a writer at 50 % of the shard's durable rate",
              "value": hold, "shown": fmt(hold, ".1f", " ms"), "pass": hold is not None and hold < 10})
    return g


def main():
    out, prefix = sys.argv[1], sys.argv[2]
    env = load_env(os.path.join(out, "machine.env"))
    with open(os.path.join(out, "fill.json")) as f:
        fill = json.load(f)
    runs = load_runs(out)
    s = summarise(runs)
    g = goals(s)
    failed = sorted(f"{n}-{m}" for (n, m), r in runs.items() if r is None)

    md = ["# keel shard transfer: pipelined against sequential", ""]
    md.append(f"Machine: {env.get('cpu', '?')}, {env.get('cores', '?')} cores, {env.get('kernel', '?')}; "
              f"keel {env.get('git', '?')}; load average {env.get('loadavg_start', '?')} at start, "
              f"{env.get('loadavg_end', '?')} at end.")
    try:
        busy = float(env.get("loadavg_start", "0").split()[0]) > int(env.get("cores", "0"))
    except ValueError:
        busy = False
    if busy:
        md.append("")
        md.append("**Other work was running**: the load average at start was above the number of cores, "
                  "so source, receiver and relay competed for CPU with it; the numbers are noisy.")
    if env.get("quick") == "1":
        md.append("")
        md.append("**Quick run** (`KEEL_BENCH_QUICK=1`): a small backlog and few pairs; a smoke test, not numbers to compare.")
    md += ["", f"Backlog: {fill['ops']:,} puts (100 B, every 5th 4 KiB, every 2000th 1 MiB; "
           f"{fill['value_bytes'] / 1e6:.1f} MB of values), sent as a snapshot; "
           f"{env.get('pairs', '?')} pairs per case (pipelined, then sequential); "
           f"read rate (unshaped calibration) {int(env.get('read_rate', 0)) / 1e6:.0f} MB/s; "
           f"the shard's durable put rate {fill['durable_puts_per_s']:.0f}/s.", ""]
    md += ["The link is a veth pair between two network namespaces, shaped with tbf on the source's side. "
           "The added round trip comes from a relay process in the receiver's namespace that holds each chunk "
           "for half the delay in each direction. The relay terminates TCP on both sides, so the source's TCP sees "
           "the relay's acks: this adds delay to keel's own step/ACK exchange but does not reproduce TCP's "
           "ack timing over a long path (window growth, delayed acks). Source, receiver and relay share the "
           "machine's cores with whatever else runs (see the load average).", ""]
    md += ["What the columns include: a send lasts until the receiver acknowledges the step. A batch of WAL records is "
           "acknowledged once it is durable in the receiver's WAL, so its send time carries the receiver's write and "
           "fsync; a batch of snapshot entries on arrival (it is installed while the next one travels); send time "
           "also holds the BEGIN step (the receiver creates the shard) and SNAPSHOT_END (it flushes the snapshot). "
           "The source's heap growth (anon) includes the snapshot's copy of the appendable segment's keys: at most "
           "1 MiB, since a bigger appendable segment is sealed into a table first.", ""]
    md += ["## Goals (at +0.1 ms)", "", "| goal | measured | |", "| --- | --- | --- |"]
    for x in g:
        md.append(f"| {x['goal']} | {x['shown']} | {'pass' if x['pass'] else '**MISS**'} |")
    md += ["", "## Cases", "",
           "Medians over the pairs; speedup = sequential drain ÷ pipelined drain per pair, median (min–max). "
           "Link busy = bytes on the veth during the backfill ÷ (shaped rate × backfill time). "
           "CPU = user + system seconds of each process during the case.", "",
           "| +RTT | link | mode | drain s | MB/s | speedup | link busy | read s / send s | batches | hold ms | "
           "src RSS MiB (growth, anon growth) | rcv RSS MiB | CPU src / rcv / relay s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def key(base):
        if base == "calibrate":
            return (0, 0, "")
        if base == "writer":
            return (2, 0, "")
        d, _, link = base.partition("-")
        return (1, int(d[1:]), ["equal", "send", "read"].index(link) if link in ("equal", "send", "read") else 9)

    for base in sorted(s, key=key):
        row = s[base]
        link = "writer" if base == "writer" else base.partition("-")[2] or base
        for mode in ("pipelined", "sequential"):
            r = row.get(mode)
            if not r:
                continue
            sp = ""
            if mode == "pipelined" and row["speedups"]:
                sp = f"{row['speedup_median']:.2f}× ({min(row['speedups']):.2f}–{max(row['speedups']):.2f})"
            rate = f"{r['rate_bytes'] / 1e6:.0f} MB/s" if r["rate_bytes"] else "unshaped"
            label = LINK_LABEL.get(link, f"read rate, writer {r['writer_rate']}/s")
            md.append(
                f"| {r['delay_us'] / 1000:g} ms | {label}, {rate} | {mode} | {fmt(r['drain_s'], '.3f')} | "
                f"{fmt(r['mb_per_s'], '.1f')} | {sp} | {fmt(None if r['link_busy'] is None else r['link_busy'] * 100, '.0f', ' %')} | "
                f"{r['read_s']:.3f} / {r['send_s']:.3f} | {r['batches']:.0f} | {fmt(r['final_hold_ms'], '.1f')} | "
                f"{r['source_peak_rss_mib']:.0f} ({r['source_growth_mib']:.0f}, {r['source_anon_growth_mib']:.1f}) | {r['receiver_peak_rss_mib']:.0f} | "
                f"{fmt(r['cpu_source_s'])} / {fmt(r['cpu_receiver_s'])} / {fmt(r['cpu_relay_s'])} |")
    w = s.get("writer", {})
    if w:
        md += ["", "## Writer during the drain", "",
               "A writer puts 100 B values at half the shard's durable rate (sync puts) for the whole transfer.", "",
               "| mode | writer p99 ms | final hold ms |", "| --- | --- | --- |"]
        for mode in ("pipelined", "sequential"):
            r = w.get(mode)
            if r:
                md.append(f"| {mode} | {fmt(r['writer_p99_ms'], '.1f')} | {fmt(r['final_hold_ms'], '.1f')} |")
    if failed:
        md += ["", "Failed runs (no numbers): " + ", ".join(failed)]
    md.append("")
    with open(prefix + ".md", "w") as f:
        f.write("\n".join(md))
    with open(prefix + ".json", "w") as f:
        json.dump({"machine": env, "fill": fill, "goals": g, "cases": s, "failed": failed}, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"bench/transfer: report in {prefix}.md")


if __name__ == "__main__":
    main()
