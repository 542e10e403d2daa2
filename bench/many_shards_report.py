"""The many-shards section of the benchmark report (bench/report.py): the
"many_shards" results of `bench/shard.rs --case many_shards`
(keel-shard-many_shards.json, found under "shards"), and their targets."""

# Goals for thousands of shards in one engine (bench/README.md).
DISK_KIB_GOAL = 1024
RSS_KIB_GOAL = 256
REOPEN_SHARDS = 10_000
REOPEN_S_GOAL = 10.0
# Threads beyond the engine's own workers (its flush pool and WAL workers,
# the same whatever the count) that a shard count may add: none is
# expected; one for a thread of the phase before still exiting.
THREAD_SLACK = 1


def _runs(runs):
    return sorted(runs or [], key=lambda r: r["shards"])


def many_shards_targets(runs):
    """Targets on the largest shard count run (the reopen goal scaled to
    10,000 shards when the run had fewer, as KEEL_BENCH_QUICK=1 does)."""
    runs = _runs(runs)
    if not runs:
        return []
    big = runs[-1]
    n = big["shards"]
    at = f"{n:,} shards in one engine"
    out = [
        {"id": "many_shards_threads", "unit": "threads", "cmp": "<=",
         "what": f"Many shards: threads the engine adds with {at} <= its workers ({big['engine_threads']}) + {THREAD_SLACK}",
         "value": big["threads_added"], "target": big["engine_threads"] + THREAD_SLACK},
        {"id": "many_shards_disk", "unit": "KiB", "cmp": "<=",
         "what": f"Many shards: disk per idle shard (one key, reopened), {at}",
         "value": big["disk_kib_per_shard"], "target": DISK_KIB_GOAL},
        {"id": "many_shards_rss", "unit": "KiB", "cmp": "<=",
         "what": f"Many shards: resident memory per idle shard (one key, reopened), {at}",
         "value": big["rss_kib_per_shard"], "target": RSS_KIB_GOAL},
    ]
    scaled = "" if n == REOPEN_SHARDS else f" (scaled from {n:,})"
    out.append({"id": "many_shards_reopen", "unit": "s", "cmp": "<=",
                "what": f"Many shards: reopening {REOPEN_SHARDS:,} shards with one key each{scaled}",
                "value": big["reopen"]["s"] * REOPEN_SHARDS / n, "target": REOPEN_S_GOAL})
    return out


def many_shards_markdown(runs):
    """Markdown lines for the section."""
    L = ["### Many shards in one engine (keel only)", ""]
    runs = _runs(runs)
    if not runs:
        return L + ["Not run (no many_shards results).", ""]
    L.append(f"One engine per shard count, in a child process allowed {runs[0]['nofile']:,} descriptors (the engine's "
             f"descriptor cache takes half), `Options::default()` but durability NONE; {runs[0]['threads']} threads "
             "create, open and close the shards. **create**: `open_shard(id, true)`; **close empty**, **open empty**: "
             "close them all and open them again unwritten; **write**: one put each; **close**: each shard after its "
             "write; **reopen**: `open_shard(id, false)`, each shard recovered with its key; **read**: every key read "
             "back. Threads, descriptors and resident memory are what the process gained since before the engine "
             "opened, measured at rest after the reopen (after the creation in parentheses); disk is st_blocks × 512 "
             "of everything under `shards/` (the WAL segment is preallocated).")
    L.append("")
    L.append("| shards | create s | close empty s | open empty s | write s | close s | reopen s (ms a shard) | read s | "
             "engine close s | threads added (after create) / engine's | descriptors (cache bound) | RSS KiB a shard (anon) | "
             "disk KiB a shard |")
    L.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        e = r.get("empty") or {}
        L.append(f"| {r['shards']:,} | {r['create']['s']:.2f} | {r['close_empty']['s']:.2f} | {r['open_empty']['s']:.2f} | "
                 f"{r['write']['s']:.2f} | {r['close']['s']:.2f} | {r['reopen']['s']:.2f} ({r['reopen']['ms_per_shard']:.3f}) | "
                 f"{r['read']['s']:.3f} | {r['engine_close_s']:.2f} | {r['threads_added']} ({e.get('threads_added', '-')}) / "
                 f"{r['engine_threads']} | {r['fds_added']:,} ({r['max_open_files']}) | "
                 f"{r['rss_kib_per_shard']:,.1f} ({r['rss_anon_kib_per_shard']:,.1f}) | {r['disk_kib_per_shard']:,.1f} |")
    L.append("")
    return L
