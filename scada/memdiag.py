"""Memory diagnostics for long runs (soak tests, a server that grows in the field).

``SCADA_MEMDIAG=SECONDS scada run ...`` logs, every SECONDS, the process RSS, the Python heap
(blocks allocated by the object allocator), what DuckDB holds, and the object types whose
counts grew most since the previous report. A full ``gc.get_objects()`` walk costs about a
second on a Dijon-size server, which is why this is opt-in and meant for minutes-apart reports.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import os
import sys
from typing import Any

log = logging.getLogger("scada.memdiag")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def type_counts() -> collections.Counter[str]:
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


def duckdb_memory(con: Any) -> dict[str, int]:
    """Bytes the buffer manager of DuckDB connection ``con`` holds, per tag."""
    try:
        rows = con.cursor().sql("select tag, memory_usage_bytes from duckdb_memory()").fetchall()
    except Exception:
        return {}
    return {str(t): int(b) for t, b in rows if b}


async def run(interval: float, duckdb_connections: tuple[Any, ...] = ()) -> None:
    """Log a memory report every ``interval`` seconds (see module docstring)."""
    prev: collections.Counter[str] | None = None
    while True:
        counts = await asyncio.to_thread(type_counts)
        growth = "" if prev is None else ", ".join(
            f"{k} {v:+d}" for k, v in (counts - prev).most_common(12))
        prev = counts
        duck = [duckdb_memory(c) for c in duckdb_connections]
        log.warning("memdiag rss=%.1f MB py_blocks=%d objects=%d duckdb=%s grew: %s",
                    rss_bytes() / 2**20, sys.getallocatedblocks(), sum(counts.values()),
                    duck, growth or "-")
        if os.environ.get("SCADA_MEMDIAG_TRIM"):
            import ctypes
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            log.warning("memdiag after malloc_trim rss=%.1f MB", rss_bytes() / 2**20)
        await asyncio.sleep(interval)
