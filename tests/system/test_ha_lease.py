"""The election of a redundant pair on a real etcd (issue 22): one active at a time with a
growing fencing token, takeover when the active goes, the active fencing itself before its lease
can expire when it is cut off from etcd, the old active rejoining as standby, and a 3-member
etcd cluster losing the member the active talks to."""

from __future__ import annotations

import asyncio
import time

import pytest

from scada.ha.lease import Elector
from scada.ha.role import HaState, Role
from tests.fixtures.etcd import TcpProxy
from tests.fixtures.mqtt import eventually

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

TTL = 3.0
KEY = "/scada/test/active"


class Node:
    """One server's HaState and elector, with a timeline of its role changes."""

    def __init__(self, name: str, endpoints: list[str], timeline: list[tuple[float, str, Role]]):
        self.ha = HaState(name, Role.STARTING)
        self.elector = Elector(self.ha, endpoints, KEY, TTL, {"opcua": f"opc.tcp://{name}:4840"})
        self.task: asyncio.Task[None] | None = None
        self.ha.listen(lambda role: timeline.append((time.monotonic(), name, role)))

    def start(self) -> Node:
        self.task = asyncio.create_task(self.elector.run(), name=f"elector-{self.ha.node}")
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None


def never_two_actives(timeline: list[tuple[float, str, Role]]) -> None:
    """Replay the role changes in order: at no instant were both nodes active."""
    roles: dict[str, Role] = {}
    for t, name, role in sorted(timeline, key=lambda x: x[0]):
        roles[name] = role
        both = [n for n, r in roles.items() if r is Role.ACTIVE]
        assert len(both) <= 1, f"two actives at {t}: {timeline}"


async def test_one_active_takeover_on_graceful_stop_and_growing_tokens(etcd):
    timeline: list = []
    a = Node("a", etcd.endpoints, timeline).start()
    b = Node("b", etcd.endpoints, timeline)
    try:
        await eventually(lambda: a.ha.role is Role.ACTIVE, within=30, what="a active")
        b.start()
        await eventually(lambda: b.ha.role is Role.STANDBY, within=30, what="b standby")
        t1 = a.ha.token
        assert t1 and t1 > 0 and b.ha.holder == "a"
        assert b.ha.holder_info["token"] == t1 and b.ha.holder_info["opcua"] == "opc.tcp://a:4840"
        with pytest.raises(PermissionError, match="active server is a"):
            b.ha.check()
        # a graceful stop revokes the lease: b takes over well within the TTL
        t0 = time.monotonic()
        await a.stop()
        assert a.ha.role is Role.FENCED
        await eventually(lambda: b.ha.role is Role.ACTIVE, within=30, what="b active")
        assert time.monotonic() - t0 < TTL, "a graceful stop hands over without waiting for the TTL"
        assert b.ha.check() > t1
        # a comes back: standby, b keeps its term
        a = Node("a", etcd.endpoints, timeline).start()
        await eventually(lambda: a.ha.role is Role.STANDBY and a.ha.holder == "b", within=30,
                         what="a back as standby")
        assert b.ha.role is Role.ACTIVE
    finally:
        await a.stop()
        await b.stop()
    never_two_actives(timeline)


async def test_partitioned_active_fences_itself_before_the_standby_takes_over(etcd):
    """The active is cut off from etcd (black-holed by a proxy): it must stop writing before
    its lease can expire, i.e. before the standby can win; healed, it rejoins as standby."""
    proxy = await TcpProxy("127.0.0.1", etcd.members[0].client_port).start()
    timeline: list = []
    a = Node("a", [proxy.url], timeline).start()
    b = Node("b", etcd.endpoints, timeline)
    try:
        await eventually(lambda: a.ha.role is Role.ACTIVE, within=30, what="a active")
        b.start()
        await eventually(lambda: b.ha.role is Role.STANDBY, within=30, what="b standby")
        t1 = a.ha.token
        cut = time.monotonic()
        proxy.partition()
        await eventually(lambda: b.ha.role is Role.ACTIVE, within=30, what="b takes over")
        fenced = [t for t, n, r in timeline if n == "a" and r is Role.FENCED and t > cut]
        active_b = [t for t, n, r in timeline if n == "b" and r is Role.ACTIVE]
        assert fenced and active_b and fenced[0] < active_b[-1], timeline
        # a stepped down within lease_ttl/2 (+ one renewal period) of its last renewal
        assert fenced[0] - cut < TTL, (fenced[0] - cut, timeline)
        assert b.ha.check() > t1
        with pytest.raises(PermissionError):
            a.ha.check()
        proxy.heal()
        await eventually(lambda: a.ha.role is Role.STANDBY and a.ha.holder == "b", within=60,
                         what="a rejoins as standby")
        assert b.ha.role is Role.ACTIVE
    finally:
        await a.stop()
        await b.stop()
        await proxy.aclose()
    never_two_actives(timeline)


async def test_deleting_the_election_key_fences_the_holder(etcd):
    """An operator (or a bug) deleting the key: the holder stops writing at once, someone wins
    a new term with a larger token."""
    import aetcd

    timeline: list = []
    a = Node("a", etcd.endpoints, timeline).start()
    b = Node("b", etcd.endpoints, timeline)
    try:
        await eventually(lambda: a.ha.role is Role.ACTIVE, within=30, what="a active")
        b.start()
        await eventually(lambda: b.ha.role is Role.STANDBY, within=30, what="b standby")
        t1 = a.ha.token
        async with aetcd.Client(port=etcd.members[0].client_port) as c:
            await c.delete(KEY.encode())
        await eventually(lambda: any(r is Role.ACTIVE for r in (a.ha.role, b.ha.role))
                         and (a.ha.token or b.ha.token or 0) > t1, within=30, what="a new term")
    finally:
        await a.stop()
        await b.stop()
    assert any(n == "a" and r is Role.FENCED for _, n, r in timeline)
    never_two_actives(timeline)


async def test_three_member_cluster_survives_the_loss_of_the_members_the_pair_talks_to(etcd_cluster):
    timeline: list = []
    eps = etcd_cluster.endpoints
    a = Node("a", eps, timeline).start()
    b = Node("b", eps[1:] + eps[:1], timeline)
    try:
        await eventually(lambda: a.ha.role is Role.ACTIVE, within=30, what="a active")
        b.start()
        await eventually(lambda: b.ha.role is Role.STANDBY, within=30, what="b standby")
        # a talks to member 0: kill it; the other two keep the quorum and the pair goes on
        etcd_cluster.members[0].kill()
        await eventually(lambda: a.elector.etcd.current != eps[0], within=30,
                         what="a moved to another member")
        await eventually(lambda: sum(r is Role.ACTIVE for r in (a.ha.role, b.ha.role)) == 1
                         and b.ha.holder is not None, within=30, what="one active after the loss")
    finally:
        await a.stop()
        await b.stop()
    never_two_actives(timeline)

