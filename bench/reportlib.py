"""Helpers shared by the benchmark report scripts (bench/report.py and
bench/net/report.py): reading the files a run leaves behind."""


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
