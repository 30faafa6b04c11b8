"""Replication of a redundant pair (issue 22): two real runtimes on loopback sockets; the
standby's alarm states follow the active's (hot), and a promoted standby continues the journal
without raising anything twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from scada.alarms import model as M
from scada.alarms.journal import read_journal, replay
from scada.ha.role import Fenced, Role
from scada.tags import Batch
from tests.conftest import free_port
from tests.fixtures.ha_replication import (
    good_cabinet,
    journal_states,
    make_active,
    make_node,
    make_standby,
    start,
    states,
    visible_states,
    wait_for,
)

pytestmark = pytest.mark.system
NLUM = 300


async def test_standby_follows_alarm_flood_hot_and_takes_over(tmp_path: Path) -> None:
    pa, pb = free_port(), free_port()
    peers = {"a": f"127.0.0.1:{pa}", "b": f"127.0.0.1:{pb}"}
    a = make_node(tmp_path, "a", pa, peers, nlum=NLUM)
    b = make_node(tmp_path, "b", pb, peers, nlum=NLUM)
    try:
        await start(a)
        await start(b)
        await make_active(a, 7)
        await make_standby(b, a)
        good_cabinet(a)
        lamps = a.lamps(NLUM)
        rng = np.random.default_rng(3)
        ea, eb = a.engine, b.engine
        for k in range(12):
            vals = (rng.random(NLUM) < 0.5).astype(float)
            a.rt.tagdb.apply(Batch.of(lamps, vals, 0, a.clock.time()))
            if k == 4:  # operator actions are replicated with who made them
                active = [x.alarm_id for x in ea.active()][:5]
                for aid in active[:3]:
                    ea.acknowledge(aid, user="alice", comment="seen")
                ea.shelve(active[3], user="bob", comment="lamp known broken", duration=7200)
                ea.set_out_of_service("north/cab-2", True, user="carol", comment="works")
            await a.clock.advance(3600)
        await wait_for(lambda: eb.seq == ea.seq, "the standby to receive every transition")
        assert visible_states(eb) == visible_states(ea)
        jsb = journal_states(eb.journal.directory)
        assert {k: states(eb)[k] for k in jsb} == jsb == journal_states(ea.journal.directory)
        assert eb.oos_devices == ea.oos_devices == {"north/cab-2"}
        assert b.repl.status()["connected"] is True
        assert a.repl.status()["standbys"], a.repl.status()
        # the standby evaluates nothing and refuses operator actions
        b.rt.tagdb.apply(Batch.of(b.lamps(NLUM), np.ones(NLUM), 0, b.clock.time()))
        assert eb.seq == ea.seq
        with pytest.raises(Fenced):
            eb.acknowledge(ea.active()[0].alarm_id, user="alice")
        # the standby's journal is byte-for-byte the active's
        ja = read_journal(ea.journal.directory)
        jb = read_journal(eb.journal.directory)
        assert ja == jb

        # the active stops (its lease is lost); the standby is promoted with a newer token
        await a.rt.ha.demote(Role.FENCED, "test: lease lost")
        await a.rt.stop()
        events: list[M.AlarmEvent] = []
        eb.listeners.append(events.extend)
        await b.rt.ha.promote(8)
        assert b.rt.ha.role is Role.ACTIVE
        assert b.repl.last_promotion["seconds"] >= 0
        # the devices report the faults they still have: nothing raised twice
        st, _ = replay(ja)
        activ = {aid for aid, e in st.items() if e["active"]}
        lamps_b = b.lamps(NLUM)
        names = [b.rt.tagdb.path(int(i)) for i in lamps_b]
        still = np.array([1.0 if n.rsplit("/", 1)[0] + "/lamp_failure" in activ else 0.0
                          for n in names])
        good_cabinet(b)
        b.rt.tagdb.apply(Batch.of(lamps_b, still, 0, b.clock.time()))
        assert [e for e in events if e.event == M.RAISE] == []
        # the journal continues where the active's stopped
        before = eb.seq
        b.rt.tagdb.apply(Batch.of(lamps_b, np.zeros(NLUM), 0, b.clock.time()))
        clears = [e for e in events if e.event == M.CLEAR]
        assert clears and all(e.alarm_id.endswith("lamp_failure") for e in clears)
        seqs = [e["seq"] for e in read_journal(eb.journal.directory)]
        assert seqs == list(range(1, len(seqs) + 1))
        assert seqs[-1] == eb.seq > before
        # operator actions are taken again on the new active
        eb.acknowledge(clears[0].alarm_id, user="alice", comment="after failover")
    finally:
        for n in (a, b):
            if n.rt._tasks:
                await n.rt.stop()


async def test_old_active_rejoins_as_standby_and_its_diverged_journal_is_replaced(
        tmp_path: Path) -> None:
    pa, pb = free_port(), free_port()
    peers = {"a": f"127.0.0.1:{pa}", "b": f"127.0.0.1:{pb}"}
    a = make_node(tmp_path, "a", pa, peers, nlum=50)
    b = make_node(tmp_path, "b", pb, peers, nlum=50)
    try:
        await start(a)
        await make_active(a, 3)
        good_cabinet(a)
        lamps = a.lamps(50)
        a.rt.tagdb.apply(Batch.of(lamps, np.ones(50), 0, a.clock.time()))
        # b is down while a raises more: b never gets these (a's copy will diverge later)
        await start(b)
        await b.rt.ha.promote(4)  # b becomes active on its own (a partitioned away, say)
        good_cabinet(b)
        b.rt.tagdb.apply(Batch.of(b.lamps(50)[:10], np.ones(10), 0, b.clock.time()))
        # a learns it lost: fenced, then standby following b
        await a.rt.ha.demote(Role.FENCED, "test: lease lost")
        await make_standby(a, b)
        ea, eb = a.engine, b.engine
        await wait_for(lambda: a.repl.status().get("connected") and ea.seq == eb.seq
                       and visible_states(ea) == visible_states(eb), "the old active to follow the new one")
        assert a.repl.status()["diverged"] >= 1
        div = list((tmp_path / "a" / "state" / "replication" / "diverged").rglob("journal*"))
        assert div, "the old active's own journal is kept aside"
        # an old token is refused from now on
        assert a.repl.last_token == 4
    finally:
        for n in (a, b):
            if n.rt._tasks:
                await n.rt.stop()


async def test_wrong_secret_and_malformed_frames_are_counted_and_refused(tmp_path: Path) -> None:
    pa = free_port()
    a = make_node(tmp_path, "a", pa, {"a": f"127.0.0.1:{pa}"}, nlum=5)
    try:
        await start(a)
        await make_active(a, 1)
        # garbage: a length past the limit
        r, w = await asyncio.open_connection("127.0.0.1", pa)
        await r.readexactly(4)
        w.write(b"\xff\xff\xff\xff" + b"x" * 10)
        await w.drain()
        w.close()
        await wait_for(lambda: a.repl.counters["malformed"] >= 1, "the malformed frame counted")
        # a client with the wrong secret
        bad = tmp_path / "other.secret"
        bad.write_bytes(b"another-secret-entirely-wrong")
        pb = free_port()
        b = make_node(tmp_path, "b", pb, {"a": f"127.0.0.1:{pa}"}, nlum=5, secret=str(bad))
        try:
            await start(b)
            await make_standby(b, a)
            await wait_for(lambda: a.repl.counters["auth_failures"] >= 1, "the refusal")
            assert not b.repl.connected
        finally:
            await b.rt.stop()
        assert a.rt.ha.role is Role.ACTIVE  # the server keeps running
    finally:
        await a.rt.stop()


async def test_a_stale_active_is_refused_and_frames_with_an_old_token_too(tmp_path: Path) -> None:
    """A standby that has seen fencing token 10 refuses an active holding token 5 (a paused
    old active whose lease another server took since), and the active refuses to serve it."""
    pa, pb = free_port(), free_port()
    peers = {"a": f"127.0.0.1:{pa}", "b": f"127.0.0.1:{pb}"}
    a = make_node(tmp_path, "a", pa, peers, nlum=5)
    b = make_node(tmp_path, "b", pb, peers, nlum=5)
    (tmp_path / "b" / "state" / "replication" / "token").write_text("10\n")
    b.repl.last_token = b.repl._load_token()
    try:
        await start(a)
        await start(b)
        await make_active(a, 5)
        await make_standby(b, a)
        await wait_for(lambda: a.repl.counters["refused_tokens"] >= 1, "the stale active to refuse")
        assert not b.repl.connected and b.repl.last_token == 10
        good_cabinet(a)
        a.rt.tagdb.apply(Batch.of(a.lamps(5), np.ones(5), 0, a.clock.time()))
        assert b.engine.seq == 0  # nothing of the stale active's reached the standby
    finally:
        for n in (a, b):
            await n.rt.stop()
