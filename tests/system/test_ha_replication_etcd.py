"""Replication wired by the site file and driven by the real elector (issue 22): two runtimes
of one site (``ha:`` section with the nodes' replication addresses and the shared secret), a
real etcd; the lease holder serves, the other follows it found through the lease; when the
active goes, the standby is promoted by its elector and its
alarm states are the former active's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scada.clock import RealClock
from scada.ha.role import Role
from scada.loader import load_site
from scada.runtime import Runtime
from scada.tags import Batch
from tests.conftest import free_port
from tests.fixtures.alarms import write_site
from tests.fixtures.ha_replication import journal_states, secret_file, states, wait_for

pytestmark = pytest.mark.system
NLUM = 200

HA = """
ha:
  etcd: [{etcd}]
  lease_ttl: 3s
  nodes:
    a: {{replication: "127.0.0.1:{pa}"}}
    b: {{replication: "127.0.0.1:{pb}"}}
  replication: {{secret_file: {secret}}}
"""


def runtime(tmp: Path, node: str, extra: str) -> Runtime:
    d = tmp / node
    d.mkdir()
    site = load_site(write_site(d, NLUM, extra), validate_drivers=False)
    rt = Runtime(site, RealClock(), node=node)
    rt.load_services(only=["alarms", "replication"])
    for dev in site.all_devices():
        rt.claim(dev.path)
    return rt


async def test_the_lease_holder_serves_the_other_follows_and_takes_over(tmp_path: Path,
                                                                       etcd: Any) -> None:
    pa, pb = free_port(), free_port()
    extra = HA.format(etcd=", ".join(etcd.endpoints), pa=pa, pb=pb,
                      secret=secret_file(tmp_path))
    a = runtime(tmp_path, "a", extra)
    b = runtime(tmp_path, "b", extra)
    assert a.services["alarms"].engine.following  # one of a pair, not active yet
    started = []
    try:
        await a.start()
        started.append(a)
        await wait_for(lambda: a.ha.is_active(), "a active")
        await b.start()
        started.append(b)
        await wait_for(lambda: b.ha.role is Role.STANDBY and b.services["replication"].connected,
                       "b standby, following a through the lease's holder info")
        ea, eb = a.services["alarms"].engine, b.services["alarms"].engine
        assert not ea.following and eb.following
        db = a.tagdb
        ok = [db.index("centre/cab-1/comm_ok"), db.index("centre/cab-1/contactor")]
        db.apply(Batch.of(ok, [1.0, 1.0], 0, a.clock.time()))
        lamps = np.array([db.index(f"centre/cab-1/lum-{n:02d}/lamp_failure")
                          for n in range(1, NLUM + 1)])
        db.apply(Batch.of(lamps, (np.arange(NLUM) % 3 == 0).astype(float), 0, a.clock.time()))
        aid = ea.active()[0].alarm_id
        ea.acknowledge(aid, user="alice", comment="seen")
        await ea.durable()  # synchronous replication: returns once the standby has it
        assert eb.seq == ea.seq
        st = b.services["replication"].status()
        assert st["role"] == "standby" and st["last_token"] == a.ha.token
        token_a = a.ha.token
        # the active goes (a clean stop gives the lease back; the kill -9 of an active is
        # test_ha_replication_kill.py): b's elector promotes it, the hooks run first
        await a.stop()
        started.remove(a)
        await wait_for(lambda: b.ha.is_active(), "b promoted by its elector")
        assert b.ha.token > token_a
        assert b.services["replication"].last_promotion["seconds"] >= 0
        assert not eb.following
        jsb = journal_states(eb.journal.directory)
        assert {k: states(eb)[k] for k in jsb} == jsb == journal_states(ea.journal.directory)
        assert eb.view(eb.find(aid)).acked
    finally:
        for rt in started:
            await rt.stop()
