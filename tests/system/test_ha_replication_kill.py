"""kill -9 of the active under an alarm flood (issue 22): the active is a real process, the
standby a real runtime in this test, the stream a real loopback socket. With synchronous
replication no transition the active announced is missing on the standby, the standby's
states are those of its journal (byte-identical prefix of the dead active's), and after its
promotion nothing is raised twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from scada.alarms import model as M
from scada.alarms.journal import journal_files, read_journal, replay
from scada.ha.role import Role
from scada.tags import Batch
from tests.conftest import free_port
from tests.fixtures.ha_replication import (
    good_cabinet,
    journal_states,
    make_node,
    start,
    states,
    wait_for,
)

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
NLUM = 1500

ACTIVE = """
import asyncio, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, {repo!r})
from scada.tags import Batch
from tests.fixtures.ha_replication import make_node, start, good_cabinet

async def main():
    a = make_node(Path({tmp!r}), "a", {port}, {{"a": "127.0.0.1:{port}"}}, nlum={nlum})
    await start(a)
    await a.rt.ha.promote(5)
    good_cabinet(a)
    lamps = a.lamps({nlum})
    told = asyncio.Event()
    def announced(evs):
        print("announced", evs[-1].seq, flush=True)
        told.set()
    a.engine.listeners.append(announced)
    print("ready", flush=True)
    while a.repl.status()["peer"] is None:
        await asyncio.sleep(0.01)
    print("followed", flush=True)
    rng = np.random.default_rng(1)
    for k in range(100000):
        # a flood: a random half of the lamps fail or recover in one batch
        told.clear()
        vals = (rng.random({nlum}) < 0.5).astype(float)
        a.rt.tagdb.apply(Batch.of(lamps, vals, 0, a.clock.time()))
        await asyncio.wait_for(told.wait(), 30)
        await a.clock.advance(3600)  # an hour between floods: no chattering

asyncio.run(main())
"""


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def test_kill_9_of_the_active_under_flood_loses_and_duplicates_nothing(
        tmp_path: Path) -> None:
    pa, pb = free_port(), free_port()
    code = ACTIVE.format(repo=str(REPO), tmp=str(tmp_path), port=pa, nlum=NLUM)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=REPO, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    b = make_node(tmp_path, "b", pb, {"a": f"127.0.0.1:{pa}"}, nlum=NLUM)
    announced = 0
    floods = 0
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line == b"ready\n", line
        await start(b)
        b.rt.ha.set_holder("a", {"replication": f"127.0.0.1:{pa}"})
        await b.rt.ha.demote(Role.STANDBY, "test: a holds the lease")
        while floods < 10:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line, "the active died on its own"
            if line.startswith(b"announced"):
                announced = max(announced, int(line.split()[1]))
                floods += 1
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        err = await proc.stderr.read() if proc.stderr else b""
    assert proc.returncode == -signal.SIGKILL, err.decode()[-3000:]
    try:
        eb = b.engine
        await wait_for(lambda: not b.repl.connected, "the standby to see the active gone")
        # no transition the active announced is missing on the standby
        assert eb.seq >= announced > 0
        # the standby's journal is a byte-identical prefix of the dead active's
        ja_dir = str(tmp_path / "a" / "state" / "alarms")
        fa, fb = journal_files(ja_dir), journal_files(eb.journal.directory)
        assert [os.path.basename(f) for f in fb] == [os.path.basename(f) for f in fa]
        for x, y in zip(fa, fb, strict=True):
            da, db_ = await asyncio.to_thread(_read, x), await asyncio.to_thread(_read, y)
            assert da[:len(db_)] == db_
        ja = [e for e in read_journal(ja_dir) if e["seq"] <= eb.seq]
        seqs = [e["seq"] for e in read_journal(eb.journal.directory)]
        assert seqs == list(range(1, eb.seq + 1)), "gap or duplicate in the standby's journal"
        # the hot states are the journal's (as a restart of the active would restore them)
        jsb = journal_states(eb.journal.directory)
        assert {k: states(eb)[k] for k in jsb} == jsb
        # promotion: nothing is raised twice when the devices report their faults again
        events: list[M.AlarmEvent] = []
        eb.listeners.append(events.extend)
        await b.rt.ha.promote(6)
        assert b.rt.ha.role is Role.ACTIVE
        st, _ = replay(ja)
        active = {aid for aid, e in st.items() if e["active"]}
        assert active
        db = b.rt.tagdb
        lamps = b.lamps(NLUM)
        names = [db.path(int(i)).rsplit("/", 1)[0] + "/lamp_failure" for i in lamps]
        good_cabinet(b)
        db.apply(Batch.of(lamps, np.array([1.0 if n in active else 0.0 for n in names]), 0,
                          b.clock.time()))
        assert [e for e in events if e.event == M.RAISE] == []
        db.apply(Batch.of(lamps, np.zeros(NLUM), 0, b.clock.time()))
        assert sorted(e.alarm_id for e in events if e.event == M.CLEAR) == sorted(
            a for a in active if a.endswith("lamp_failure"))
        seqs = [e["seq"] for e in read_journal(eb.journal.directory)]
        assert seqs == list(range(1, len(seqs) + 1))
    finally:
        await b.rt.stop()
