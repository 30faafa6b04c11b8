"""``alarms.fsync: always`` without blocking the event loop: every batch is fsynced in the
journal's writer thread, and still nothing is announced, and no operator action returns, before
its transitions are on disk (docs/alarms.md, Durability)."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from scada import quality as Q
from scada.alarms import model as M
from scada.alarms.journal import Journal, read_journal
from scada.loader import load_site
from scada.operations import Identity
from scada.runtime import Runtime
from scada.tags import Batch
from tests.fixtures.alarms import make_env, write_site

LUM = "centre/cab-1/lum-01"


@pytest.fixture
def fsyncs(monkeypatch):
    """Which threads called os.fsync (the real one is still called: this records, it does not
    stand in for the disk)."""
    seen: list[int] = []
    real = os.fsync

    def spy(fd: int) -> None:
        seen.append(threading.get_ident())
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


async def test_always_fsyncs_in_the_writer_thread_and_durable_waits_for_it(tmp_path, fsyncs):
    j = Journal(str(tmp_path), fsync="always", rotate_bytes=300)
    for k in range(1, 6):  # rotations too: old files closed behind their fsyncs
        j.write([b'{"seq":%d,"ts":1.0,"alarm_id":"a/d/x","name":"x","event":"raise"}\n' % k])
    await j.durable()
    assert j.pending() is None and j.stats["fsyncs"] == 5 == len(fsyncs)
    assert threading.get_ident() not in fsyncs  # never on the event loop's thread
    assert [e["seq"] for e in read_journal(tmp_path)] == [1, 2, 3, 4, 5]
    j.close()


def test_without_an_event_loop_always_fsyncs_in_line(tmp_path, fsyncs):
    j = Journal(str(tmp_path), fsync="always")
    j.write([b'{"seq":1,"ts":1.0}\n'])
    assert fsyncs == [threading.get_ident()] and j.pending() is None
    j.close()


async def test_the_engine_announces_only_after_the_fsync(tmp_path, stepped_clock, fsyncs):
    env = make_env(tmp_path, stepped_clock, alarms_extra="fsync: always")
    seen_at_announce: list[int] = []
    env.engine.listeners.append(lambda evs: seen_at_announce.append(len(fsyncs)))
    try:
        env.set({f"{LUM}/level": 100, f"{LUM}/level_cmd": 100, f"{LUM}/lamp_failure": 0})
        before = len(fsyncs)
        env.set({f"{LUM}/lamp_failure": 1})  # a raise: journaled now, fsynced in the thread
        await env.engine.durable()
        for _ in range(100):  # the announcement is scheduled back on the loop: wait for it
            if seen_at_announce:
                break
            await asyncio.sleep(0)
        assert seen_at_announce and seen_at_announce[0] > before
        assert [e.event for e in env.events if e.alarm_id == f"{LUM}/lamp_failure"] == ["raise"]
        assert threading.get_ident() not in fsyncs
    finally:
        env.engine.close()


async def test_an_operator_action_returns_once_on_disk(tmp_path, stepped_clock, fsyncs):
    site = load_site(write_site(tmp_path, nlum=2, alarms_extra="fsync: always"),
                     validate_drivers=False)
    rt = Runtime(site, stepped_clock)
    rt.load_services(only=["alarms"])
    db = rt.tagdb
    aid = "centre/cab-1/lum-01/lamp_failure"
    db.apply(Batch.of([db.index("centre/cab-1/comm_ok"), db.index("centre/cab-1/contactor"),
                       db.index(aid)], [1.0, 1.0, 1.0], Q.Good, stepped_clock.time()))
    engine = rt.services["alarms"].engine
    try:
        await engine.durable()
        done = len(fsyncs)
        out = await rt.operations.acknowledge(Identity("olga", "operator", None, "test"), aid, "crew")
        assert out.ok and engine.view(engine.find(aid)).state == M.ACK_ACTIVE
        assert len(fsyncs) > done and engine.journal.pending() is None  # on disk on return
        assert read_journal(engine.journal.directory)[-1]["event"] == "ack"
        assert threading.get_ident() not in fsyncs[done:]
    finally:
        rt.operations.close()
        engine.close()
