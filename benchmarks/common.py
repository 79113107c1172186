"""What every benchmark script shares: where results go, the statistics, the table format,
the machine's description and the log line."""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def percentile(values, q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    data = sorted(float(v) for v in values)
    if not data:
        return math.nan
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * min(max(q, 0.0), 100.0) / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize(seconds) -> dict:
    """n, median, p10, p90, p99, mean, min, max of durations given in seconds, as
    milliseconds, and the spread: (p90 - p10) / median, how noisy the series is."""
    data = [float(s) for s in seconds]
    if not data:
        return {"n": 0}
    ms = [s * 1000.0 for s in data]
    median = percentile(ms, 50)
    return {
        "n": len(ms),
        "median_ms": median,
        "p10_ms": percentile(ms, 10),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "mean_ms": sum(ms) / len(ms),
        "min_ms": min(ms),
        "max_ms": max(ms),
        "spread": (percentile(ms, 90) - percentile(ms, 10)) / median if median > 0 else None,
    }


def ratio(value, base):
    """value / base, or None when either is missing or base is not positive."""
    try:
        value, base = float(value), float(base)
    except (TypeError, ValueError):
        return None
    if base <= 0 or math.isnan(base) or math.isnan(value):
        return None
    return value / base


def fmt(value, unit: str = "", digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "x":
        return f"{value:.{digits}f}x"
    if unit == "B":
        return f"{value:,.0f} B"
    return f"{value:.{digits}f}{unit}"


def format_table(headers, rows, title: str | None = None) -> str:
    """A plain-text table (markdown pipes, so it pastes into an issue as is)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    out = [f"\n{title}"] if title else []
    out.append(line(cells[0]))
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def machine_info() -> dict:
    from importlib import metadata

    info = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["mem_total_gib"] = round(int(mem[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    for dist in (
        "qiskit",
        "qiskit-aer",
        "qiskit-ibm-runtime",
        "celery",
        "kombu",
        "billiard",
        "redis",
        "numpy",
        "session-broker",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    info["versions"] = versions
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        info["git_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
