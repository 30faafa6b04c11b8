"""kill -9 during an alarm flood: the journal keeps every announced transition exactly once, and
a restarted engine restores the states without raising anything twice."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scada.alarms import model as M
from scada.alarms.journal import read_journal, replay
from scada.clock import SteppedClock
from scada.tags import Batch
from tests.fixtures.alarms import make_env

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
NLUM = 1500

CHILD = """
import asyncio, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, {repo!r})
from scada.clock import SteppedClock
from scada.tags import Batch
from tests.fixtures.alarms import make_env

async def main():
    clock = SteppedClock()
    env = make_env(Path({tmp!r}), clock, nlum={nlum})
    db = env.tagdb
    idx = np.array([db.index(f"centre/cab-1/lum-{{n:02d}}/lamp_failure") for n in range(1, {nlum} + 1)])
    ok = [db.index("centre/cab-1/comm_ok"), db.index("centre/cab-1/contactor")]
    db.apply(Batch.of(ok, [1.0, 1.0], 0, clock.time()))
    env.engine.listeners.append(lambda evs: print("announced", evs[-1].seq, flush=True))
    print("ready", flush=True)
    rng = np.random.default_rng(1)
    for k in range(100000):
        # a flood: a random half of the lamps fail or recover in one batch
        vals = (rng.random(len(idx)) < 0.5).astype(float)
        db.apply(Batch.of(idx, vals, 0, clock.time()))
        await clock.advance(3600)  # an hour between floods: no chattering

asyncio.run(main())
"""


def test_kill_9_during_flood_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    code = CHILD.format(repo=str(REPO), tmp=str(tmp_path), nlum=NLUM)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO)
    announced = 0
    floods = 0
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    deadline = time.monotonic() + 60
    try:
        while floods < 8 and time.monotonic() < deadline:
            if not sel.select(timeout=1):
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for ln in lines:
                if ln.startswith(b"announced"):
                    announced = max(announced, int(ln.split()[1]))
                    floods += 1
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(10)
        sel.close()
        err = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    assert floods >= 8, f"child did not flood: {err[-2000:]}"
    assert proc.returncode == -signal.SIGKILL

    # the journal: every announced transition is there, exactly once, seq contiguous
    jdir = tmp_path / "state" / "alarms"
    entries = read_journal(jdir)
    seqs = [e["seq"] for e in entries]
    assert len(seqs) == len(set(seqs)), "duplicated journal lines"
    assert seqs == list(range(1, len(seqs) + 1)), "gap in the journal"
    assert seqs[-1] >= announced > 0

    # restart: states restored exactly as the journal says; no transition journaled twice
    clock = SteppedClock()
    env = make_env(tmp_path, clock, nlum=NLUM)
    try:
        e = env.engine
        assert e.seq == seqs[-1]
        states, _ = replay(read_journal(jdir))
        active = {a for a, s in states.items() if s["active"]}
        assert active, "the flood left no active alarm to restore"
        for a, s in states.items():
            v = e.view(e.find(a))
            assert (v.state, v.active, v.acked) == (s["state"], s["active"], s["acked"]), a
        # the devices report the faults they still have: nothing is raised again
        db = env.tagdb
        names = [f"centre/cab-1/lum-{n:02d}/lamp_failure" for n in range(1, NLUM + 1)]
        idx = np.array([db.index(p) for p in names])
        vals = np.array([1.0 if p in active else 0.0 for p in names])
        before = e.seq
        db.apply(Batch.of(idx, vals, 0, clock.time()))
        assert [x for x in env.events if x.event == M.RAISE] == []
        # then they recover: exactly one clear per restored active alarm
        db.apply(Batch.of(idx, np.zeros(len(idx)), 0, clock.time()))
        clears = [x.alarm_id for x in env.events if x.event == M.CLEAR]
        assert sorted(clears) == sorted(active)
        assert e.seq == before + len(env.events)
    finally:
        env.engine.close()
