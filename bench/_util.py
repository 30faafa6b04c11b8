"""Small helpers shared by the benchmarks: RSS, CPU time, percentiles, result files."""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def save(name: str, figures: dict[str, Any]) -> str:
    """Write figures to bench/results/<name>.json (ignored by git) and return the path."""
    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"machine": machine(), **figures}, f, indent=2)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on loopback right now (the OS picks it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def verdict(value: Any, limit: float, kind: str = "max") -> str:
    """PASS/FAIL of one figure against its target: ``kind`` "max" (value <= limit), "min"
    (value >= limit) or "eq" (value == limit). A missing figure (None) fails: a benchmark that
    could not measure something has not shown it meets the target."""
    if value is None or isinstance(value, str):
        return "FAIL"
    ok = {"max": value <= limit, "min": value >= limit, "eq": value == limit}[kind]
    return "PASS" if ok else "FAIL"
