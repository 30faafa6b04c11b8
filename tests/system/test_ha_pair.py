"""Two runtimes of one site as a redundant pair on a real etcd (issue 22): only the active polls
and writes; the standby's device tags are not connected (never a stale Good), its writes are
refused naming the active; both OPC UA servers publish non-transparent redundancy
(RedundancySupport Hot, ServerUriArray, ServiceLevel 255 active / 1 standby) and follow a
failover."""

from __future__ import annotations

import asyncio
import json

import pytest
from asyncua import Client, ua

from scada import quality as Q
from scada.clock import RealClock
from scada.loader import load_site
from scada.runtime import Runtime
from tests.conftest import free_port
from tests.fixtures.mqtt import eventually
from tests.fixtures.process import run_scada

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]

SITE = """\
site: {{name: Pair test, latitude: 47.3, longitude: 5.0, timezone: Europe/Paris, state_dir: {state}}}
areas: [{{id: centre}}]
profiles:
  sensor: {{protocol: astro, kind: sensor, points: [{{name: sun, unit: deg, source: {{output: sun_elevation}}}}]}}
  cab:
    kind: cabinet
    points:
      - {{name: group_level, unit: "%", access: rw, eu_range: [0, 100]}}
devices:
  - {{id: s1, profile: sensor, area: centre}}
  - {{id: cab-01, profile: cab, area: centre}}
opcua: {{port: {port}, allow_security_none: true}}
historian: {{enabled: false}}
ha:
  etcd: {etcd}
  lease_ttl: 3s
  nodes:
    a: {{opcua: "opc.tcp://127.0.0.1:{port_a}/scada"}}
    b: {{opcua: "opc.tcp://127.0.0.1:{port_b}/scada"}}
"""


def make_runtime(tmp_path, node: str, ports: dict[str, int], etcd) -> Runtime:
    d = tmp_path / node
    d.mkdir()
    p = d / "site.yaml"
    p.write_text(SITE.format(state=str(d / "state"), port=ports[node], etcd=etcd.endpoints,
                             port_a=ports["a"], port_b=ports["b"]))
    site = load_site(str(p))
    rt = Runtime(site, RealClock(), node=node)
    rt.load_drivers(only=["astro"])
    rt.load_services(only=["opcua"])
    writes: list = []
    rt.writes = writes  # type: ignore[attr-defined]

    async def device(i: int, v: object) -> int:
        writes.append((rt.tagdb.path(i), v))
        return Q.Good

    rt.register_writer("centre/cab-01", device)
    return rt


async def redundancy(url: str) -> tuple[int, int, list[str]]:
    async with Client(url, timeout=10) as c:
        level = await c.get_node(ua.NodeId(ua.ObjectIds.Server_ServiceLevel)).read_value()
        support = await c.get_node(ua.NodeId(ua.ObjectIds.Server_ServerRedundancy_RedundancySupport)).read_value()
        uris = await c.get_node(ua.NodeId(ua.ObjectIds.Server_ServerRedundancy_ServerUriArray)).read_value()
    return int(level), int(support), list(uris)


def test_a_pair_site_needs_a_node_name(tmp_path, etcd):
    from scada.errors import ConfigError

    p = tmp_path / "site.yaml"
    p.write_text(SITE.format(state=str(tmp_path / "state"), port=4840, etcd=etcd.endpoints,
                             port_a=4840, port_b=4841))
    site = load_site(str(p))
    with pytest.raises(ConfigError, match="--node NAME"):
        Runtime(site, RealClock())
    with pytest.raises(ConfigError, match="not a node of the pair"):
        Runtime(site, RealClock(), node="c")


async def test_only_the_active_polls_and_writes_and_opcua_says_who_is_active(tmp_path, etcd):
    ports = {"a": free_port(), "b": free_port()}
    a = make_runtime(tmp_path, "a", ports, etcd)
    b = make_runtime(tmp_path, "b", ports, etcd)
    started = []
    try:
        await a.start()
        started.append(a)
        await eventually(lambda: a.ha.is_active() and a.tagdb.read("centre/s1/sun").good,
                         within=60, what="a active and polling")
        await b.start()
        started.append(b)
        await eventually(lambda: b.ha.role.value == "standby", within=60, what="b standby")
        # the standby polls nothing: its device tags never show Good
        assert b.tagdb.read("centre/s1/sun").quality in (Q.BadNotConnected,
                                                          Q.BadWaitingForInitialData)
        assert "driver:astro" not in b._tasks
        # writes: the active's reach the device, the standby's are refused naming the active
        assert await a.write("centre/cab-01/group_level", 40) == Q.Good
        assert await b.write("centre/cab-01/group_level", 60) == Q.BadNotWritable
        assert a.writes == [("centre/cab-01/group_level", 40.0)] and b.writes == []
        assert list(a.ha_writes) == [a.ha.token] and a.ha_writes[a.ha.token][0] == 1
        assert b.ha_refused == 1 and not b.ha_writes
        for rt in (a, b):
            await asyncio.wait_for(rt.services["opcua"].started.wait(), 30)
        url = {n: f"opc.tcp://127.0.0.1:{p}/scada" for n, p in ports.items()}
        uris = ["urn:scada:pair-test:server:a", "urn:scada:pair-test:server:b"]
        assert await redundancy(url["a"]) == (255, ua.RedundancySupport.Hot, uris)
        assert await redundancy(url["b"]) == (1, ua.RedundancySupport.Hot, uris)

        # scada ha status reads etcd: a holds the lease, both nodes report their roles
        site_file = str(tmp_path / "a" / "site.yaml")
        await eventually(lambda: b.elector.stats["campaigns"] > 0,
                         within=10, what="statuses published")
        res = await asyncio.to_thread(run_scada, "ha", "status", site_file)
        assert res.returncode == 0, res.stderr
        assert f"lease holder: a  fencing token {a.ha.token}" in res.stdout, res.stdout
        rows = {ln.split()[0]: ln.split()[1] for ln in res.stdout.splitlines()[3:]}
        assert rows == {"a": "active", "b": "standby"}, res.stdout

        # the active goes (a clean stop gives the lease back): b takes over, polls, writes
        token_a = a.ha.token
        await a.stop()
        started.remove(a)
        await eventually(lambda: b.ha.is_active() and b.tagdb.read("centre/s1/sun").good,
                         within=60, what="b active and polling")
        assert b.ha.token > token_a
        assert await b.write("centre/cab-01/group_level", 60) == Q.Good
        assert b.writes == [("centre/cab-01/group_level", 60.0)]
        await eventually(lambda: b.elector._published == (b.ha.role, "b"), within=10,
                         what="b's new role published")
        res = await asyncio.to_thread(run_scada, "ha", "status", "--json", site_file)
        pair = json.loads(res.stdout)
        assert res.returncode == 0 and pair["holder"]["node"] == "b"
        assert pair["holder"]["token"] == b.ha.token and set(pair["nodes"]) == {"b"}
        assert pair["nodes"]["b"]["role"] == "active", pair

        async def level_b() -> int:
            return (await redundancy(url["b"]))[0]

        for _ in range(100):  # the ServiceLevel write follows the role change on the loop
            if await level_b() == 255:
                break
            await asyncio.sleep(0.1)
        assert await level_b() == 255
    finally:
        for rt in started:
            await rt.stop()


async def test_demoted_server_stops_polling_and_shows_not_connected(tmp_path, etcd):
    """An active that loses its term (here: the key deleted by an operator) stops its drivers
    at once and marks their tags BadNotConnected; a new term starts them again."""
    import aetcd

    ports = {"a": free_port(), "b": free_port()}
    a = make_runtime(tmp_path, "a", ports, etcd)
    try:
        await a.start()
        await eventually(lambda: a.ha.is_active() and a.tagdb.read("centre/s1/sun").good,
                         within=60, what="a active and polling")
        t1 = a.ha.token
        seen = []
        a.ha.listen(lambda role: seen.append((role.value, a.tagdb.read("centre/s1/sun").quality,
                                              "driver:astro" in a._tasks)))
        async with aetcd.Client(port=etcd.members[0].client_port) as c:
            await c.delete(b"/scada/pair-test/active")
        await eventually(lambda: a.ha.is_active() and a.ha.token > t1
                         and a.tagdb.read("centre/s1/sun").good, within=60,
                         what="a active again in a new term")
        # the runtime's own listener ran first: drivers stopped and tags marked at once
        assert seen[0] == ("fenced", Q.BadNotConnected, False), seen
    finally:
        await a.stop()


def test_scada_run_of_a_pair_without_node_exits_2(tmp_path, etcd):
    p = tmp_path / "site.yaml"
    p.write_text(SITE.format(state=str(tmp_path / "state"), port=free_port(), etcd=etcd.endpoints,
                             port_a=4840, port_b=4841))
    res = run_scada("run", str(p))
    assert res.returncode == 2, res.stderr
    assert "redundant pair (ha.nodes: a, b)" in res.stderr and "--node NAME" in res.stderr
    assert "Traceback" not in res.stderr
    res = run_scada("run", "--node", "c", str(p))
    assert res.returncode == 2 and "--node c: not a node of the pair" in res.stderr
    res = run_scada("check", str(p))  # checking a pair's file needs no node name (the test
    assert "--node" not in res.stderr   # site's passive cabinet is what it reports)
    assert "cab-01: profile 'cab' has no protocol" in res.stderr
