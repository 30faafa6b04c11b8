"""Nothing recorded is lost across a clean restart (SIGTERM) or a crash (kill -9) of a recording
server process: every point is counted afterwards in the embedded store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from historian.embedded import EmbeddedBackend
from historian.service import HistorianService
from scada.clock import SteppedClock
from scada.runtime import Runtime
from tests.fixtures.historian import make_site

pytestmark = pytest.mark.system

CHILD = textwrap.dedent("""
    import asyncio, signal, sys
    import numpy as np
    from scada.loader import load_site
    from scada.runtime import Runtime
    from scada.clock import RealClock
    from scada.tags import Batch
    from historian.service import HistorianService

    async def main():
        site = load_site(sys.argv[1])
        site.config.historian.flush_interval = 0.05
        rt = Runtime(site, RealClock())
        h = HistorianService(rt)
        rt.add_service(h)
        tags = rt.tagdb.indices_of_point("power_w")
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await rt.start()
        await asyncio.sleep(0.1)  # let the services start (no start-up snapshot of our values)
        k = 0
        while not stop.is_set() and k < 100000:
            rt.tagdb.apply(Batch.of(tags, np.full(len(tags), float(k)), 0, 1735700000.0 + k))
            if k % 10 == 9:
                await h.spool_now()           # everything up to k is now on disk
                print("durable", k, flush=True)
            k += 1
            await asyncio.sleep(0.002)
        await rt.stop()
        print("stopped", k - 1, flush=True)

    asyncio.run(main())
""")


def _count(site_dir, rt, tags):
    b = EmbeddedBackend(os.path.join(site_dir, "historian", "data"))
    try:
        return [b.read_raw(rt.tagdb.path(int(i)), 0, 2e9).v.tolist() for i in tags]
    finally:
        b.close()


def _spawn(site_path):
    return subprocess.Popen([sys.executable, "-c", CHILD, str(site_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=os.getcwd())


def _wait_durable(proc, at_least: int) -> int:
    last = -1
    for line in proc.stdout:
        if line.startswith("durable"):
            last = int(line.split()[1])
            if last >= at_least:
                return last
    raise AssertionError(f"child ended early: {proc.stderr.read()}")


async def _replay(site) -> Runtime:
    """Start the historian again on the same state (as the next server start would)."""
    rt = Runtime(site, SteppedClock())
    h = HistorianService(rt)
    await h.flush()
    await h.aclose()
    return rt


async def test_kill_9_loses_nothing_made_durable(tmp_path):
    site = make_site(tmp_path, cabinets=2, lamps=5)
    proc = _spawn(site.path)
    try:
        last = _wait_durable(proc, 300)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    rt = await _replay(site)
    tags = rt.tagdb.indices_of_point("power_w")
    series = _count(str(tmp_path / "state"), rt, tags)
    for vals in series:
        # every point acknowledged as durable is there, once, in order (later ones may be too)
        assert vals[: last + 1] == [float(k) for k in range(last + 1)]
        assert vals == sorted(set(vals))


async def test_sigterm_restart_loses_nothing(tmp_path):
    site = make_site(tmp_path, cabinets=2, lamps=5)
    proc = _spawn(site.path)
    try:
        _wait_durable(proc, 200)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stopped = [ln for ln in out.splitlines() if ln.startswith("stopped")]
    assert stopped, err
    last = int(stopped[-1].split()[1])
    rt = await _replay(site)
    tags = rt.tagdb.indices_of_point("power_w")
    for vals in _count(str(tmp_path / "state"), rt, tags):
        assert vals == [float(k) for k in range(last + 1)]  # every applied point, exactly once
