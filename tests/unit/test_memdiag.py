"""The opt-in memory report (SCADA_MEMDIAG) and the rss health figure."""

from __future__ import annotations

import asyncio
import logging

import duckdb

from scada import memdiag


def test_rss_is_read_from_proc() -> None:
    assert memdiag.rss_bytes() > 10 * 2**20  # an interpreter with numpy loaded


def test_report_names_growing_types_and_duckdb_memory(caplog) -> None:
    con = duckdb.connect(":memory:")
    con.execute("create table t as select range as x from range(200000)")
    keep: list[object] = []

    class Leak:
        pass

    async def main() -> None:
        task = asyncio.create_task(memdiag.run(0.01, (con,)))
        for _ in range(500):  # bounded: two reports are enough
            await asyncio.sleep(0.01)
            keep.extend(Leak() for _ in range(1000))
            if sum("memdiag rss=" in r.getMessage() for r in caplog.records) >= 2:
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.WARNING, logger="scada.memdiag"):
        asyncio.run(main())
    reports = [r.getMessage() for r in caplog.records if "memdiag rss=" in r.getMessage()]
    assert len(reports) >= 2
    assert "grew: -" in reports[0]  # nothing to compare with yet
    assert "Leak +" in reports[1]
    assert "BASE_TABLE" in reports[0] or "IN_MEMORY_TABLE" in reports[0], reports[0]
    con.close()


def test_trim_gives_fragmented_heap_pages_back() -> None:
    """Blocks of 2 KB (malloc, not pymalloc) with every 64th one kept: the heap top stays in
    use, so glibc cannot shrink it by itself; malloc_trim releases the free pages inside."""
    blocks = [bytes(2048) for _ in range(40_000)]  # ~80 MB
    keep = blocks[::64]
    del blocks
    released = memdiag.trim()
    assert released > 20 * 2**20, released
    assert len(keep) == 625


def test_arena_limit_is_accepted_by_glibc() -> None:
    import threading

    assert memdiag.tune_malloc() is True
    done = []
    threads = [threading.Thread(target=lambda: done.append(bytes(4096))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(done) == 8
