"""Memory upkeep and diagnostics for long runs (soak tests, a server that grows in the field).

:func:`trim` hands the C heap's free pages back to the kernel. The runtime calls it every minute
(in a worker thread): a Dijon-size server frees and reallocates megabytes of numpy temporaries,
DuckDB buffers and protocol frames every second, in the main arena and in the worker threads'
arenas, and glibc keeps what it cannot return from the top of each heap. Measured over a
Dijon-size soak: RSS grew ~5 MB/min without it and stayed flat (+-10 MB) with it.

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


_libc: Any = None


def trim() -> int:
    """``malloc_trim(0)`` (glibc): give free heap pages back; returns bytes of RSS released
    (0 where there is no glibc). Blocking for a few ms on a large heap: call it from a thread."""
    libc = _glibc()
    if not libc:
        return 0
    before = rss_bytes()
    libc.malloc_trim(0)
    return max(0, before - rss_bytes())


def _glibc() -> Any:
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
            _libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):
            _libc = False
    return _libc


def tune_malloc(arenas: int = 2, mmap_threshold: int = 128 * 1024) -> bool:
    """``mallopt(M_ARENA_MAX, arenas)``: threads created from now on share ``arenas`` malloc arenas instead
    of up to 8 per core, each fragmenting on its own (the worker threads of ``to_thread``,
    DuckDB's). ``mallopt(M_MMAP_THRESHOLD, mmap_threshold)``: blocks that large always get their
    own mapping, given back to the system when freed. glibc otherwise raises that threshold
    (up to 32 MB) each time such a block is freed, after which the historian's multi-MB numpy
    and DuckDB buffers, allocated and freed by worker threads every second, are cut from the
    arenas' heaps, between long-lived small blocks, and the heaps only grow. The default
    (128 KiB) is glibc's own starting value, held fixed. Returns whether glibc took both."""
    libc = _glibc()
    if not libc:
        return False
    ok = libc.mallopt(-8, arenas) == 1  # M_ARENA_MAX
    return libc.mallopt(-3, int(mmap_threshold)) == 1 and ok  # M_MMAP_THRESHOLD


def type_counts() -> collections.Counter[str]:
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


def duckdb_memory(con: Any) -> dict[str, int]:
    """Bytes the buffer manager of DuckDB connection ``con`` holds, per tag."""
    try:
        rows = con.cursor().sql("select tag, memory_usage_bytes from duckdb_memory()").fetchall()
    except Exception:
        return {}
    return {str(t): int(b) for t, b in rows if b}


def _traced_growth(prev: Any, cur: Any, top: int = 12) -> str:
    stats = cur.compare_to(prev, "lineno")
    return "; ".join(f"{s.traceback[0].filename.rsplit('/', 2)[-1]}:{s.traceback[0].lineno} "
                     f"{s.size_diff / 1024:+.0f} KiB ({s.count_diff:+d})"
                     for s in sorted(stats, key=lambda s: -s.size_diff)[:top])


async def run(interval: float, duckdb_connections: tuple[Any, ...] = ()) -> None:
    """Log a memory report every ``interval`` seconds (see module docstring). With
    ``SCADA_MEMDIAG_TRACE=1`` also trace allocations (tracemalloc, from now on: slows the server
    down noticeably) and log the source lines whose allocations grew most, numpy arrays and byte
    buffers included (they are invisible to the object census)."""
    prev: collections.Counter[str] | None = None
    trace = bool(os.environ.get("SCADA_MEMDIAG_TRACE"))
    snap = None
    if trace:
        import tracemalloc

        tracemalloc.start(1)
    while True:
        counts = await asyncio.to_thread(type_counts)
        growth = "" if prev is None else ", ".join(
            f"{k} {v:+d}" for k, v in (counts - prev).most_common(12))
        prev = counts
        duck = [duckdb_memory(c) for c in duckdb_connections]
        log.warning("memdiag rss=%.1f MB py_blocks=%d objects=%d duckdb=%s grew: %s",
                    rss_bytes() / 2**20, sys.getallocatedblocks(), sum(counts.values()),
                    duck, growth or "-")
        if trace:
            cur = tracemalloc.take_snapshot()
            if snap is not None:
                log.warning("memdiag traced=%.1f MB growth: %s",
                            tracemalloc.get_traced_memory()[0] / 2**20, _traced_growth(snap, cur))
            snap = cur
        await asyncio.sleep(interval)


class RssTrend:
    """The growth of the server's resident memory over a sliding window (default 24 h).

    A server that runs for months must reach a plateau; a leak shows as a steady slope long
    before the machine runs out. Samples (clock time, MB) are averaged into ``bucket_s``
    buckets (a 24 h window keeps 144 of them, a few kilobytes); the slope is the least-squares
    fit over the buckets in the window, in MB per day and in % of the window's mean per day.
    It is *ready* once the buckets span ``min_span_s`` (a fresh server's warm-up is not a
    trend); before that :meth:`slope` returns None.
    """

    def __init__(self, window_s: float = 86400.0, min_span_s: float = 6 * 3600.0,
                 bucket_s: float | None = None):
        if window_s <= 0 or min_span_s <= 0 or min_span_s > window_s:
            raise ValueError("memory trend: need 0 < min_span_s <= window_s")
        self.window_s = float(window_s)
        self.min_span_s = float(min_span_s)
        self.bucket_s = float(bucket_s if bucket_s else window_s / 144.0)
        # (bucket start, sum of MB, samples); the last one is being filled
        self._buckets: collections.deque[list[float]] = collections.deque()

    def add(self, t: float, mb: float) -> None:
        if not (mb > 0):  # 0 or NaN: no reading (not Linux)
            return
        b = self._buckets
        start = t - (t % self.bucket_s)
        if b and b[-1][0] == start:
            b[-1][1] += mb
            b[-1][2] += 1
        elif not b or start > b[-1][0]:
            b.append([start, mb, 1.0])
        # else: a sample from the past (the clock was stepped back): ignored
        while b and b[0][0] < start - self.window_s:
            b.popleft()

    def span(self) -> float:
        """Seconds between the first and the last bucket's middle."""
        b = self._buckets
        return (b[-1][0] - b[0][0]) if len(b) > 1 else 0.0

    def slope(self) -> tuple[float, float] | None:
        """(MB per day, % of the mean per day) over the window, or None before ``min_span_s``."""
        if self.span() < self.min_span_s:
            return None
        n = len(self._buckets)
        ts = [s + self.bucket_s / 2 for s, _, _ in self._buckets]
        ys = [tot / k for _, tot, k in self._buckets]
        mt, my = sum(ts) / n, sum(ys) / n
        den = sum((x - mt) ** 2 for x in ts)
        if den <= 0 or my <= 0:
            return None
        per_s = sum((x - mt) * (y - my) for x, y in zip(ts, ys, strict=True)) / den
        per_day = per_s * 86400.0
        return per_day, 100.0 * per_day / my
