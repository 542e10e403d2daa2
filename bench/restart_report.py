"""The restart-at-the-bound section of the benchmark report (bench/report.py):
keel-restart.json, written by `bench/shard.rs --case restart_bound`."""
import json
import os


def restart_results(work):
    """The restart_bound entries of keel-restart.json, or None when the case
    did not run."""
    path = os.path.join(work, "keel-restart.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get("restart_bound") or None


def _fmt_mib(b):
    return "-" if b is None else f"{b / 2**20:,.1f}"


def restart_markdown(runs):
    """Markdown lines for the section."""
    L = ["### Restart at the bound of unflushed WAL (keel only)", ""]
    if not runs:
        return L + ["Not run (no keel-restart.json).", ""]
    L.append("A child process pins its shard's WAL from the first record (as a transfer or a lagging follower "
             "would), writes the given amount with the flush running as usual (so the WAL retains all of it, "
             "flushed), then holds the flush and writes until the next put would have to wait for it: the "
             "unflushed WAL is at `max_unflushed_wal_bytes` (the default). It is then killed with SIGKILL. "
             "**Shard::open** = a fresh process opening a copy of the directory, best of 2. Replay starts past "
             "what the segment files hold, so it reads only the unflushed tail, however much WAL is retained. "
             "Page cache **warm**: every file read once before; **cold**: posix_fadvise(POSIX_FADV_DONTNEED) on "
             "every file of the shard (per file, no root needed; the rest of the machine's cache is left alone).")
    L.append("")
    L.append("| values | written through the pin MiB | WAL files MiB | unflushed MiB (bound) | page cache | Shard::open s | "
             "replayed records | replayed MiB |")
    L.append("| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for r in runs:
        for cache in ("warm", "cold"):
            c = r.get(cache)
            if not c:
                continue
            o = c.get("shard_open") or {}
            L.append(f"| {r['value_bytes']} B | {r.get('pinned_mib', '-')} | {_fmt_mib(r.get('wal_bytes'))} | {_fmt_mib(r.get('unflushed_bytes'))} "
                     f"({_fmt_mib(r.get('bound_bytes'))}) | {cache} | {c['open_s']:.3f} | "
                     f"{o.get('replayed_records', '-'):,} | {_fmt_mib(o.get('replayed_bytes'))} |")
    L.append("")
    return L
