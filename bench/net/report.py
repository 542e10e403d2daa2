#!/usr/bin/env python3
"""Turns one bench/net/run.sh run into OUT_DIR/net.md and OUT_DIR/net.json.

usage: report.py OUT_DIR
OUT_DIR holds net-machine.env and net-runs/ (index.tsv; per run <id>.json
from netbench, <id>.perf from perf stat -x, and <id>.err; notes.txt).
The goals are those of bench/net/README.md ("Goals"); a miss is reported, never turned into a failing exit code.
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reportlib import load_env, read_text  # noqa: E402

VARIANTS = ("naive", "sendmsg", "uring", "redis")
VLABEL = {"naive": "naive (keel, flush per message)", "sendmsg": "batched + sendmsg",
          "uring": "batched + io_uring", "redis": "Redis pub/sub"}
KEEL = "sendmsg"  # the default backend: the goals are checked on it
SENDS_GOAL = {1: 1.02, 10: 0.15, 100: 0.03}
NAIVE_GOAL = {1: 0.97, 10: 2.5, 100: 4.0}


def parse_perf(path):
    """perf stat -x, output: value,unit,event,... -> {event: count or None}."""
    out = {}
    for line in read_text(path).splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split(",")
        if len(parts) < 3:
            continue
        try:
            out[parts[2]] = int(float(parts[0]))
        except ValueError:
            out[parts[2]] = None  # <not counted>, <not supported>
    return out


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def ratio(a, b):
    return a / b if a is not None and b else None


def main():
    out = sys.argv[1]
    runs_dir = os.path.join(out, "net-runs")
    m = load_env(os.path.join(out, "net-machine.env"), missing_ok=True)
    notes = [n for n in read_text(os.path.join(runs_dir, "notes.txt")).splitlines() if n.strip()]

    runs, failures = [], []
    index = read_text(os.path.join(runs_dir, "index.tsv")).splitlines()[1:]
    for line in index:
        rid, rep, variant, subs, depth, rc = line.split("\t")
        base = os.path.join(runs_dir, rid)
        rec = None
        if rc == "0":
            try:
                rec = json.loads(read_text(base + ".json").strip().splitlines()[-1])
            except (ValueError, IndexError):
                rec = None
        if rec is None:
            err = read_text(base + ".err").strip().splitlines()
            failures.append({"id": rid, "exit_status": rc, "error": err[-1] if err else "no output"})
            continue
        rec["rep"] = int(rep)
        perf = parse_perf(base + ".perf") if os.path.exists(base + ".perf") else {}
        rec["perf"] = perf
        dl = rec["delivered"]
        tcp = perf.get("tcp:tcp_sendmsg_locked")
        rec["perf_tcp_per_delivered"] = tcp / dl if tcp is not None and dl else None
        if variant != "redis" and perf:
            # exact send calls seen by the kernel: sendmsg(2) syscalls plus
            # io_uring SENDMSG submissions of the netbench process tree
            sysc = (perf.get("syscalls:sys_enter_sendmsg") or 0) + (perf.get("io_uring:io_uring_submit_req") or 0)
            rec["perf_send_calls"] = sysc
        runs.append(rec)

    subs_list = sorted({r["subs"] for r in runs})
    depths = sorted({r["depth"] for r in runs})
    present = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]

    cells = []
    for n in subs_list:
        for d in depths:
            for v in present:
                rs = [r for r in runs if r["subs"] == n and r["depth"] == d and r["variant"] == v]
                if not rs:
                    continue
                rates = [r["delivered_per_s"] for r in rs]
                c = {
                    "subs": n, "depth": d, "variant": v, "backend": rs[0]["backend"], "runs": len(rs),
                    "delivered_per_s": med(rates), "delivered_per_s_min": min(rates), "delivered_per_s_max": max(rates),
                    "sends_per_delivered": med([r["sends_per_delivered"] for r in rs]),
                    "perf_tcp_per_delivered": med([r["perf_tcp_per_delivered"] for r in rs]),
                    "round_us": med([r["secs"] * 1e6 / r["rounds"] for r in rs]),
                    "round_p50_us": med([r["round_us"]["p50"] for r in rs if "round_us" in r]),
                    # interference-robust view: messages of one round / the median round time
                    "delivered_per_s_at_median_round": med([r["depth"] * r["subs"] / r["round_us"]["p50"] * 1e6
                                                            for r in rs if "round_us" in r]),
                    "p50_us": med([r["lat_us"]["p50"] for r in rs]),
                    "p99_us": med([r["lat_us"]["p99"] for r in rs]),
                    "p999_us": med([r["lat_us"]["p999"] for r in rs]),
                    "pub_cpu_us_per_msg": med([(r["pub_cpu_us"] + (r.get("redis_cpu_us") or 0)) / r["delivered"]
                                               for r in rs]),
                }
                cells.append(c)

    def cell(n, d, v):
        return next((c for c in cells if c["subs"] == n and c["depth"] == d and c["variant"] == v), None)

    for c in cells:
        nv, rd = cell(c["subs"], c["depth"], "naive"), cell(c["subs"], c["depth"], "redis")
        c["rate_vs_naive"] = ratio(c["delivered_per_s"], nv and nv["delivered_per_s"])
        c["rate_vs_redis"] = ratio(c["delivered_per_s"], rd and rd["delivered_per_s"])
        c["p50_vs_naive"] = ratio(c["p50_us"], nv and nv["p50_us"])
        c["p99_vs_naive"] = ratio(c["p99_us"], nv and nv["p99_us"])

    def paired(n, d, v1, v2, get):
        """Median over repetitions of v1's value / v2's value in the same
        repetition (adjacent runs), which cancels slow drifts in load."""
        by = {}
        for r in runs:
            if r["subs"] == n and r["depth"] == d and r["variant"] in (v1, v2):
                by.setdefault(r["rep"], {})[r["variant"]] = get(r)
        return med([x[v1] / x[v2] for x in by.values() if x.get(v1) and x.get(v2)])

    def round_floor(n):
        """The fastest depth-1 round of any variant at n subscribers: two
        cross-process wake-ups plus one send per subscriber. A round of depth
        D does at least that much, so naive's round time at D divided by it
        bounds what any batching can gain over naive on this machine."""
        rs = [c["round_us"] for c in cells if c["subs"] == n and c["depth"] == 1]
        return min(rs) if rs else None

    targets = []

    def target(tid, what, value, goal, cmp, paired_value=None, bound=None):
        if value is None:
            return
        ok = value >= goal if cmp == ">=" else value <= goal
        t = {"id": tid, "what": what, "value": value, "target": goal, "cmp": cmp, "pass": ok,
             "paired_median": paired_value}
        if bound is not None:
            t["bound_on_this_machine"] = bound
        targets.append(t)

    rate = lambda r: r["delivered_per_s"]

    for n in subs_list:
        sub = f"{n} sub{'s' if n > 1 else ''}"
        for d, g in SENDS_GOAL.items():
            c = cell(n, d, KEEL)
            if c:
                target(f"net_sends_d{d}_s{n}", f"{sub}, depth {d}: sends per delivered message <= {g:g}",
                       c["sends_per_delivered"], g, "<=", max(r["sends_per_delivered"] for r in runs
                                                              if r["subs"] == n and r["depth"] == d
                                                              and r["variant"] == KEEL))
        for d, g in NAIVE_GOAL.items():
            c = cell(n, d, KEEL)
            if c:
                nv, fl = cell(n, d, "naive"), round_floor(n)
                bound = nv["round_us"] / fl if nv and fl and d > 1 else None
                target(f"net_rate_naive_d{d}_s{n}", f"{sub}, depth {d}: delivered msg/s >= {g:g} x naive",
                       c["rate_vs_naive"], g, ">=", paired(n, d, KEEL, "naive", rate), bound)
        for d in depths:
            c = cell(n, d, KEEL)
            if c:
                target(f"net_rate_redis_d{d}_s{n}", f"{sub}, depth {d}: delivered msg/s >= 1.0 x Redis pub/sub",
                       c["rate_vs_redis"], 1.0, ">=", paired(n, d, KEEL, "redis", rate))
        c = cell(n, 1, KEEL)
        if c:
            target(f"net_p50_d1_s{n}", f"{sub}, depth 1: p50 latency <= 1.05 x naive", c["p50_vs_naive"], 1.05, "<=",
                   paired(n, 1, KEEL, "naive", lambda r: r["lat_us"]["p50"]))
            target(f"net_p99_d1_s{n}", f"{sub}, depth 1: p99 latency <= 1.10 x naive", c["p99_vs_naive"], 1.10, "<=",
                   paired(n, 1, KEEL, "naive", lambda r: r["lat_us"]["p99"]))

    # io_uring against sendmsg (the contract: opt-in unless it matches).
    uring_cmp = []
    for n in subs_list:
        for d in depths:
            u, s = cell(n, d, "uring"), cell(n, d, "sendmsg")
            if u and s:
                uring_cmp.append({"subs": n, "depth": d, "rate_ratio": ratio(u["delivered_per_s"], s["delivered_per_s"]),
                                  "sends_uring": u["sends_per_delivered"], "sends_sendmsg": s["sends_per_delivered"],
                                  "backend": u["backend"]})
    uring_fell_back = any(c["backend"] != "io_uring" for c in cells if c["variant"] == "uring")
    uring_matches = None
    if uring_cmp and not uring_fell_back:
        uring_matches = all(x["rate_ratio"] is not None and x["rate_ratio"] >= 0.97 and
                            x["sends_uring"] <= x["sends_sendmsg"] * 1.01 + 1e-9 for x in uring_cmp)

    # Counter cross-check, summed over every run of a variant.
    xcheck = []
    for v in present:
        rs = [r for r in runs if r["variant"] == v]
        if not rs or not any(r["perf"] for r in rs):
            continue
        x = {"variant": v, "delivered": sum(r["delivered"] for r in rs),
             "perf_tcp_sendmsg_locked": sum(r["perf"].get("tcp:tcp_sendmsg_locked") or 0 for r in rs)}
        if v != "redis":
            x["keel_sends"] = sum(r["keel"]["sends"] for r in rs)
            x["perf_send_calls"] = sum(r.get("perf_send_calls") or 0 for r in rs)
            x["exact_match"] = x["keel_sends"] == x["perf_send_calls"]
            x["mismatched_runs"] = [r["tag"] for r in rs if r.get("perf_send_calls") is not None
                                    and r["perf_send_calls"] != r["keel"]["sends"]]
        else:
            x["perf_write_calls"] = sum((r["perf"].get("syscalls:sys_enter_write") or 0) +
                                        (r["perf"].get("syscalls:sys_enter_writev") or 0) for r in rs)
            x["rounds"] = sum(r["rounds"] for r in rs)
        xcheck.append(x)

    # Anything a writer did that the benchmark does not expect.
    anomalies = []
    for r in runs:
        k = r.get("keel")
        if not k:
            continue
        if k["events"]:
            anomalies.append(f"{r['tag']}: {k['events']} event callback(s): {k['event']}")
        if k["eagain"] or k["short_sends"]:
            anomalies.append(f"{r['tag']}: {k['short_sends']} short sends, {k['eagain']} EAGAIN")
        quota = 100
        per_sub_round = 1 if r["variant"] == "naive" else -(-r["depth"] // quota)
        expect = r["rounds"] * r["subs"] * (r["depth"] if r["variant"] == "naive" else per_sub_round)
        if k["sends"] != expect:
            anomalies.append(f"{r['tag']}: {k['sends']} sends where {expect} were expected "
                             f"({r['rounds']} rounds x {r['subs']} subscribers x "
                             f"{r['depth'] if r['variant'] == 'naive' else per_sub_round} per round); "
                             f"flush_quota {k['flush_quota']}, flush_size {k['flush_size']}, passes {k['passes']}")

    # other work running (load average above half the cores) makes the numbers noisy
    try:
        busy = max(float(m.get(k, "0").split()[0]) for k in ("loadavg_start", "loadavg_end")) > 0.5 * int(m.get("cores", "1"))
    except (ValueError, IndexError):
        busy = False
    report = {
        "machine": m,
        "config": {"reps": m.get("reps"), "secs": m.get("secs"), "warmup": m.get("warmup"),
                   "pub_cpu": m.get("pub_cpu"), "sub_cpu": m.get("sub_cpu"), "quick": m.get("quick") == "1",
                   "message_bytes": 40, "keel_variant_for_goals": KEEL},
        "cells": cells,
        "targets": targets,
        "uring_vs_sendmsg": {"cells": uring_cmp, "fell_back": uring_fell_back, "matches": uring_matches},
        "crosscheck": xcheck,
        "anomalies": anomalies,
        "failures": failures,
        "notes": notes,
        "busy_machine": busy,
        # one compact record per run (the raw netbench and perf output stay in net-runs/)
        "runs": [{"id": r["tag"], "rep": r["rep"], "variant": r["variant"], "subs": r["subs"], "depth": r["depth"],
                  "backend": r["backend"], "secs": r["secs"], "rounds": r["rounds"], "delivered": r["delivered"],
                  "delivered_per_s": r["delivered_per_s"], "lat_us": r["lat_us"],
                  "sends": r["keel"]["sends"] if r.get("keel") else None,
                  "sends_per_delivered": r["sends_per_delivered"], "perf": r["perf"],
                  "pub_cpu_us": r["pub_cpu_us"], "redis_cpu_us": r.get("redis_cpu_us")} for r in runs],
    }
    with open(os.path.join(out, "net.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")

    L = []
    L.append("## Batched socket writers: pub/sub fan-out on loopback (bench/net)")
    L.append("")
    L.append(f"**Machine:** {m.get('cpu')}, {m.get('cores')} cores, {m.get('mem_gib')} GiB RAM, {m.get('kernel')}, "
             f"clocksource {m.get('clocksource')}, {m.get('rustc')}, {m.get('redis')} (Debian {m.get('redis_pkg')}), "
             f"{m.get('perf')}, keel {m.get('git')}. Load average {m.get('loadavg_start')} at start, "
             f"{m.get('loadavg_end')} at end. Publisher side (publisher process with keel's reactor thread; "
             f"redis-server and its publishing client) on CPU {m.get('pub_cpu')}, subscriber process on CPU "
             f"{m.get('sub_cpu')}" + (f", every benchmark process at nice {m.get('nice')}" if m.get("nice", "0") != "0" else "")
             + f". {m.get('reps')} interleaved repetitions of {m.get('secs')} s per run "
             f"(+ {m.get('warmup')} s warm-up); medians." + (" **Quick mode: not for comparison.**"
                                                              if m.get("quick") == "1" else ""))
    if busy:
        L.append("")
        L.append("**The load average was above 0.5 per core: other work ran during this run, so rates and latency "
                 "tails are noisy and the goal checks below are not conclusive. Final numbers need a quiet machine.**")
    L.append("")
    L.append("One publisher, N TCP loopback subscribers in one other process (epoll), 40 B messages carrying their "
             "CLOCK_MONOTONIC publish time. Depth D: D messages published back to back, one drain point, then the "
             "publisher waits until every subscriber has all D (closed rounds). Latency: the subscriber's read(2) "
             "that completed a message minus its stamp, every message at every subscriber. *naive*: keel with "
             "`KEEL_PUBLISH_FLUSH` on every publish (one send per message per subscriber); *batched*: D publishes "
             "then one `keel_publisher_flush`. Redis: subscribers `SUBSCRIBE` over TCP, the publisher pipelines D "
             "`PUBLISH` commands in one write over Redis's Unix socket and reads the D replies. Sends/delivered: "
             "keel's writer counters; perf column: `tcp:tcp_sendmsg_locked` on the sending process over the "
             "measured window ÷ delivered messages. See bench/net/README.md.")
    L.append("")
    L.append("### Targets (batched + sendmsg, the default backend)")
    L.append("")
    L.append("| target | measured (ratio of medians) | paired: median of per-repetition ratios | goal | result | reachable here |")
    L.append("| --- | ---: | ---: | ---: | --- | ---: |")
    for t in targets:
        sends = t["id"].startswith("net_sends")
        f = (lambda x: "–" if x is None else f"{x:.3f}") if sends else (lambda x: "–" if x is None else f"{x:.2f}×")
        goal = f"{t['cmp']} {t['target']:g}" + ("" if sends else "×")
        bound = t.get("bound_on_this_machine")
        L.append(f"| {t['what']} | {f(t['value'])} | {'worst run ' + f(t['paired_median']) if sends else f(t['paired_median'])} "
                 f"| {goal} | {'PASS' if t['pass'] else '**MISS**'} | {'≤ ' + f(bound) if bound else ''} |")
    if not targets:
        L.append("| (no complete cell) | – | – | – | – | – |")
    L.append("")
    L.append("*Reachable here*: naive's time per round at that depth ÷ the fastest depth-1 round of any variant at the "
             "same subscriber count (two cross-CPU wake-ups and one send per subscriber, which every round pays). "
             "No batching can beat naive by more than that on this machine with closed rounds; where it is below the "
             "goal, the goal cannot be met here whatever the writer does.")
    L.append("")
    for n in subs_list:
        L.append(f"### {n} subscriber{'s' if n > 1 else ''}")
        L.append("")
        L.append("| depth | variant | delivered msg/s (median; min–max) | × naive | × Redis | msg/s at the median round "
                 "| sends / delivered "
                 "| perf tcp_sendmsg_locked / delivered | µs / round: mean, median | p50 µs | p99 µs | p99.9 µs | pub-side CPU µs / msg |")
        L.append("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for d in depths:
            for v in present:
                c = cell(n, d, v)
                if not c:
                    continue
                rr = lambda x: "–" if x is None else f"{x:.2f}×"
                spd = "–" if c["sends_per_delivered"] is None else f"{c['sends_per_delivered']:.4f}"
                ptd = "–" if c["perf_tcp_per_delivered"] is None else f"{c['perf_tcp_per_delivered']:.4f}"
                lbl = VLABEL[v] + ("" if v != "uring" or c["backend"] == "io_uring" else " (fell back to sendmsg)")
                L.append(f"| {d} | {lbl} | {fmt(c['delivered_per_s'])} ({fmt(c['delivered_per_s_min'])}–"
                         f"{fmt(c['delivered_per_s_max'])}) | {rr(c['rate_vs_naive'])} | {rr(c['rate_vs_redis'])} | "
                         f"{fmt(c['delivered_per_s_at_median_round'])} | "
                         f"{spd} | {ptd} | {fmt(c['round_us'], 1)}, {fmt(c['round_p50_us'], 1)} | {fmt(c['p50_us'], 1)} | {fmt(c['p99_us'], 1)} | {fmt(c['p999_us'], 1)} | "
                         f"{fmt(c['pub_cpu_us_per_msg'], 2)} |")
        L.append("")
    L.append("*msg/s at the median round*: D × N ÷ the median round time (first publish to acknowledgement). "
             "On a machine where other work runs, a few rounds stuck behind another process for a scheduler slice "
             "(milliseconds) weigh heavily on the rate; the median round shows what the variant does when it has "
             "the CPUs. The goals use the rate.")
    L.append("")
    L.append("### io_uring against sendmsg")
    L.append("")
    if not uring_cmp:
        L.append("Not measured.")
    elif uring_fell_back:
        L.append("The io_uring backend was not available here (keel fell back to sendmsg), so it was not compared.")
    else:
        L.append("Rate ratio io_uring ÷ sendmsg per cell: " + ", ".join(
            f"{x['subs']}s/d{x['depth']} {x['rate_ratio']:.2f}×" for x in uring_cmp) + ".")
        L.append("")
        L.append(f"**io_uring {'matches' if uring_matches else 'does not match'} sendmsg** "
                 "(criterion: ≥ 0.97× the rate and no more sends per delivered message in every cell) → "
                 + ("it may become the default, on a quiet machine's numbers." if uring_matches
                    else "it stays opt-in."))
    L.append("")
    L.append("### Send counts: keel's counters against perf")
    L.append("")
    if not xcheck:
        L.append("perf was not available: " + ("; ".join(notes) or "no perf output") + ".")
    else:
        L.append("| variant | delivered | keel sends | sendmsg(2) + io_uring SENDMSG (perf) | tcp_sendmsg_locked (perf) | match |")
        L.append("| --- | ---: | ---: | ---: | ---: | --- |")
        for x in xcheck:
            if x["variant"] == "redis":
                L.append(f"| redis-server | {fmt(x['delivered'])} | – | write(2): {fmt(x['perf_write_calls'])} "
                         f"(incl. replies to the publisher, ~1 per round; {fmt(x['rounds'])} rounds) | "
                         f"{fmt(x['perf_tcp_sendmsg_locked'])} | – |")
            else:
                L.append(f"| {x['variant']} | {fmt(x['delivered'])} | {fmt(x['keel_sends'])} | {fmt(x['perf_send_calls'])} | "
                         f"{fmt(x['perf_tcp_sendmsg_locked'])} | "
                         f"{'exact' if x['exact_match'] else '**differs** in ' + ', '.join(x['mismatched_runs'][:5])} |")
        L.append("")
        L.append("`tcp:tcp_sendmsg_locked` fires once per socket-buffer (skb) a send appends to, so it is ≥ the number "
                 "of TCP send calls: a send that tops up a still-queued skb and spills into a new one counts twice. "
                 "The exact call counts are `syscalls:sys_enter_sendmsg` plus `io_uring:io_uring_submit_req` "
                 "filtered to `IORING_OP_SENDMSG`.")
    L.append("")
    if anomalies:
        L.append("**Writer anomalies:** " + "; ".join(anomalies[:20]) + (" …" if len(anomalies) > 20 else "") + ".")
        L.append("")
    if failures:
        L.append("**Failed runs:** " + "; ".join(f"{f['id']} (exit {f['exit_status']}): {f['error']}" for f in failures) + ".")
        L.append("")
    if notes:
        L.append("**Notes:** " + " ".join(notes))
        L.append("")
    L.append("Numbers from a machine with other work running (see the load average) are noisy, the latency tails "
             "most of all; compare only runs from a quiet machine.")
    with open(os.path.join(out, "net.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    print("\n".join(L))
    print(f"\nbench/net: wrote {os.path.join(out, 'net.md')} and {os.path.join(out, 'net.json')}")


if __name__ == "__main__":
    main()
