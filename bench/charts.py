"""Charts of one benchmark report, drawn by bench/report.py as PNG files
beside the markdown (<stamp>-<name>.png) with matplotlib, when it can be
imported (bench/run.sh installs it from PyPI into a venv).

Each chart draws from the report's JSON and is left out, with the reason,
when its data is missing, so that a report of a partial run (or an older
benchmark without some case) still renders:

- rocksdb: keel against RocksDB by thread count, durable puts: the WAL's
  sync_256_<N>w and the shards' durable_put_<N>t (rates, and ratios with
  the min–max of their pairs);
- shard-cost: cost per shard against shard count, from any list of records
  under "shards" that have a "shards" count and numbers named *_per_shard;
- restart: restart time against unflushed bytes, from the shard recovery
  case (wal_bytes, warm/cold open_s) and from any records under "shards"
  with "unflushed_bytes" and "restart_s" (grouped by "series" when given),
  the restart at the bound of unflushed WAL (report["restart_bound"]) and
  RocksDB's reopen with as many bytes of unflushed WAL
  (report["restart_rocksdb"]).
"""
import os

KEEL, ROCKSDB, REFERENCE = "#1f77b4", "#d62728", "#7f7f7f"


def draw(report, prefix):
    """Draws every chart it has data for. Returns one dict per chart:
    {"title", "file"} (file name relative to the report) when drawn,
    {"title", "missing"} (the reason) when not."""
    titles = {"rocksdb": "keel against RocksDB by thread count (durable puts)",
              "shard-cost": "Cost per shard against shard count",
              "restart": "Restart time against unflushed bytes"}
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return [{"title": "Charts", "missing": f"matplotlib cannot be imported ({e}); bench/run.sh installs it "
                                               "into a venv"}]
    out = []
    for name, fn in (("rocksdb", threads_chart), ("shard-cost", shard_cost_chart), ("restart", restart_chart)):
        path = f"{prefix}-{name}.png"
        missing = fn(plt, report, path, titles[name])
        if missing:
            out.append({"title": titles[name], "missing": missing})
        else:
            out.append({"title": titles[name], "file": os.path.basename(path)})
    return out


def markdown(drawn):
    """The report's "Charts" section for what draw() returned."""
    L = ["## Charts", ""]
    for c in drawn:
        if "file" in c:
            L += [f"![{c['title']}]({c['file']})", ""]
        else:
            L += [f"*{c['title']}*: not drawn ({c['missing']}).", ""]
    return L


def records(obj, need):
    """Every dict found under obj (through nested dicts and lists) that has
    all the keys in need."""
    if isinstance(obj, dict):
        if all(k in obj for k in need):
            yield obj
        for v in obj.values():
            yield from records(v, need)
    elif isinstance(obj, list):
        for v in obj:
            yield from records(v, need)


def save(plt, fig, path, title):
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def threads_chart(plt, report, path, title):
    wal = [c for c in (report.get("rocksdb") or {}).get("comparison", []) if c.get("keel_appends_per_s")]
    shards = report.get("shards") or {}
    sh = []
    for row in shards.get("comparison", []):
        name = row.get("case", "")
        if name.startswith("durable_put_") and row.get("keel_ops_per_s"):
            sh.append(dict(row, threads=int(name[len("durable_put_"):].rstrip("t"))))
    if not wal and not sh:
        return "no WAL or shard durable-put results"
    fig, (rate_ax, ratio_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = (("WAL", wal, "keel_appends_per_s", "rocksdb_ops_per_s", "rate_ratio", "-"),
              ("shard", sh, "keel_ops_per_s", "rocksdb_ops_per_s", "ratio", "--"))
    for label, rows, kkey, rkey, qkey, style in series:
        if not rows:
            continue
        n = [r["threads"] for r in rows]
        rate_ax.plot(n, [r[kkey] for r in rows], style, marker="o", color=KEEL, label=f"keel {label}")
        if any(r.get(rkey) for r in rows):
            rate_ax.plot(n, [r.get(rkey) or float("nan") for r in rows], style, marker="s", color=ROCKSDB,
                         label=f"RocksDB {label}")
        q = [(r["threads"], r[qkey], r.get(qkey + "_min"), r.get(qkey + "_max")) for r in rows if r.get(qkey)]
        if q:
            x, y = [a[0] for a in q], [a[1] for a in q]
            lo = [a[1] - (a[2] if a[2] is not None else a[1]) for a in q]
            hi = [(a[3] if a[3] is not None else a[1]) - a[1] for a in q]
            ratio_ax.errorbar(x, y, yerr=[lo, hi], fmt=style, marker="o", capsize=4,
                              color=KEEL if label == "WAL" else "#2ca02c", label=f"{label}: median, min–max of pairs")
    ref = [c for c in wal if c.get("reference_ops_per_s")]
    if ref:
        rate_ax.plot([c["threads"] for c in ref], [c["reference_ops_per_s"] for c in ref], ":", marker="^",
                     color=REFERENCE, label="RocksDB WAL, reference build")
    for t in report.get("targets", []):
        # Goals on the rate ratios: rocksdb_rate_<N>w and shard_durable_put_<N>t.
        tid = t.get("id", "")
        for pre, post in (("rocksdb_rate_", "w"), ("shard_durable_put_", "t")):
            if tid.startswith(pre) and tid.endswith(post) and tid[len(pre):-len(post)].isdigit():
                ratio_ax.plot([int(tid[len(pre):-len(post)])], [t["target"]], "_", markersize=18, mew=2,
                              color="black")
    ratio_ax.plot([], [], "_", markersize=12, mew=2, color="black", label="goal")
    ratio_ax.axhline(1.0, color=REFERENCE, lw=0.8)
    ticks = sorted({r["threads"] for r in wal + sh})
    for ax in (rate_ax, ratio_ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xticks([], minor=True)
        ax.set_xlabel("threads (writers)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    rate_ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator
    rate_ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    rate_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    rate_ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    rate_ax.set_ylabel("durable puts (appends) / s")
    rate_ax.set_title("rate, median of the pairs")
    ratio_ax.set_ylabel("keel / RocksDB")
    ratio_ax.set_title("rate ratio")
    ratio_ax.set_ylim(bottom=0)
    save(plt, fig, path, title)
    return None


def shard_cost_chart(plt, report, path, title):
    rows = [r for r in records(report.get("shards") or {}, ("shards",))
            if isinstance(r["shards"], (int, float)) and any(k.endswith("_per_shard") for k in r)]
    metrics = sorted({k for r in rows for k, v in r.items() if k.endswith("_per_shard") and isinstance(v, (int, float))})
    if not metrics:
        return "no results with a shard count and *_per_shard numbers in this run"
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    for ax, key in zip(axes[0], metrics):
        pts = sorted((r["shards"], r[key]) for r in rows if isinstance(r.get(key), (int, float)))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", marker="o", color=KEEL)
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("shards")
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(True, which="both", alpha=0.3)
    save(plt, fig, path, title)
    return None


def restart_chart(plt, report, path, title):
    shards = report.get("shards") or {}
    series = {}
    for rc in shards.get("recovery") or []:
        for cache in ("warm", "cold"):
            r = rc.get(cache)
            if r and r.get("open_s") and rc.get("wal_bytes"):
                series.setdefault(f"recovery, {rc.get('value_bytes', '?')} B values, page cache {cache}", []).append(
                    (rc["wal_bytes"] / 2**20, r["open_s"]))
    # The restart at the bound (bench/restart_report.py): one point per
    # value size and page cache state.
    for rb in report.get("restart_bound") or []:
        for cache in ("warm", "cold"):
            r = rb.get(cache)
            if r and r.get("open_s") and rb.get("unflushed_bytes"):
                series.setdefault(f"at the bound, {rb.get('value_bytes', '?')} B values, page cache {cache}", []).append(
                    (rb["unflushed_bytes"] / 2**20, r["open_s"]))
    # RocksDB reopening a database with as many bytes of unflushed WAL
    # (bench/restart_report.py): one point per pair.
    for row in (report.get("restart_rocksdb") or {}).get("comparison") or []:
        for x in row["pairs"]:
            if x.get("rocksdb_open_s") and x.get("rocksdb_wal_bytes"):
                series.setdefault(f"RocksDB reopen, {row['value_bytes']} B values, page cache {row['cache']}", []).append(
                    (x["rocksdb_wal_bytes"] / 2**20, x["rocksdb_open_s"]))
    for r in records(shards, ("unflushed_bytes", "restart_s")):
        if isinstance(r["unflushed_bytes"], (int, float)) and isinstance(r["restart_s"], (int, float)):
            series.setdefault(str(r.get("series", "restart")), []).append((r["unflushed_bytes"] / 2**20, r["restart_s"]))
    if not series:
        return "no restart or recovery results in this run"
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)
    for label, pts in sorted(series.items()):
        pts.sort()
        rocksdb = label.startswith("RocksDB")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--" if rocksdb else "-", marker="s" if rocksdb else "o",
                label=label)
    ax.set_xlabel("unflushed WAL, MiB")
    ax.set_ylabel("restart (Shard::open; RocksDB: reopen), s")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save(plt, fig, path, title)
    return None
