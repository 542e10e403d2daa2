"""Helpers shared by the benchmark report scripts (bench/report.py and
bench/net/report.py): reading the files a run leaves behind."""
import glob
import os
import re


def load_env(path, missing_ok=False):
    """KEY=value lines (machine.env) as a dict; a missing file is an empty
    dict when missing_ok, else an error."""
    env = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.rstrip("\n").partition("=")
                if key:
                    env[key] = value
    except OSError:
        if not missing_ok:
            raise
    return env


def read_text(path, default=""):
    """The whole file as text (undecodable bytes replaced), or `default`
    when it cannot be read."""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return default


def spread(values):
    """Median, min and max of the numbers in values (None ignored): how the
    report sums up the per-pair ratios of a keel-against-RocksDB comparison.
    None when there is no number."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    mid = len(v) // 2
    median = v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2
    return {"median": median, "min": v[0], "max": v[-1], "n": len(v)}


def median_run(runs, key):
    """The run whose key(run) is the (lower) median among those that have
    one: the run whose latencies and counts stand for all of them. None when
    no run has a value."""
    have = sorted((r for r in runs if r is not None and key(r) is not None), key=key)
    return have[(len(have) - 1) // 2] if have else None


def pair_numbers(work, pattern):
    """The pair numbers of the files in work matching pattern (one '{}' for
    the number), ascending."""
    rx = re.compile(re.escape(pattern).replace(re.escape("{}"), "([0-9]+)") + "$")
    found = (rx.match(os.path.basename(p)) for p in glob.glob(os.path.join(work, pattern.replace("{}", "*"))))
    return sorted(int(m.group(1)) for m in found if m)


def spread_text(median, lo, hi, digits, unit=""):
    """1.34× (1.20–1.41): a median and the min–max it came from."""
    if median is None:
        return "–"
    out = f"{median:.{digits}f}{unit}"
    if lo is not None and hi is not None and (lo != median or hi != median):
        out += f" ({lo:.{digits}f}–{hi:.{digits}f})"
    return out
