"""OPC UA Alarms & Conditions over the wire: a real asyncua client against our server (free
port) receives the condition events, acknowledges with operator credentials (works) and
anonymously (denied), calls ConditionRefresh; the CLI's client path shelves and takes a device
out of service through the same methods."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua

from scada.alarms import model as M
from scada.alarms.journal import read_journal
from scada.clock import RealClock
from scada.loader import load_site
from scada.opcua.alarms import SUFFIX
from scada.opcua.client import ClientError, call_action
from scada.runtime import Runtime
from scada.tags import Batch
from scada.users import hash_password
from tests.conftest import free_port
from tests.fixtures.alarms import write_site

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
PASSWORDS = {"op1": ("operator", "pw-operator"), "eng1": ("engineer", "pw-engineer")}
LUM = "centre/cab-1/lum-01"
AID = f"{LUM}/lamp_failure"


class Collector:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.new = asyncio.Event()

    def event_notification(self, event: Any) -> None:
        self.events.append(event)
        self.new.set()

    async def wait_for(self, pred: Any) -> Any:
        async with asyncio.timeout(10):
            while True:
                for e in self.events:
                    if pred(e):
                        return e
                self.new.clear()
                await self.new.wait()


async def until(pred: Any) -> None:
    for _ in range(500):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("condition not reached within 10 s")


def f(e: Any, name: str) -> Any:
    return getattr(e, name, None)


@pytest.fixture
async def server(tmp_path):
    port = free_port()
    users = "\n".join(f"  - {{name: {n}, role: {r}, password_hash: '{hash_password(pw, n=2**10)}'}}"
                      for n, (r, pw) in PASSWORDS.items())
    extra = (f"opcua: {{port: {port}, allow_security_none: true, anonymous: viewer}}\n"
             f"users:\n{users}\n")
    site = load_site(write_site(tmp_path, nlum=4, extra=extra), validate_drivers=False)
    rt = Runtime(site, RealClock())
    rt.load_services(only=["alarms", "opcua"])
    await rt.start()
    svc = rt.services["opcua"]
    await asyncio.wait_for(svc.started.wait(), 30)
    alarms = rt.services["alarms"]
    await until(lambda: alarms.conditions is not None and hasattr(alarms.conditions, "ns"))
    url = f"opc.tcp://127.0.0.1:{port}/scada"
    try:
        yield rt, url
    finally:
        await rt.stop()


def feed(rt: Runtime, values: dict[str, float]) -> None:
    db = rt.tagdb
    db.apply(Batch.of([db.index(p) for p in values], list(values.values()), 0, rt.clock.time()))


async def test_events_ack_roles_and_refresh_over_the_wire(server) -> None:
    rt, url = server
    engine = rt.services["alarms"].engine
    feed(rt, {"centre/cab-1/comm_ok": 1, "centre/cab-1/contactor": 1, f"{LUM}/lamp_failure": 0,
              f"{LUM}/level": 100})
    op = Client(url, timeout=10)
    op.set_user("op1")
    op.set_password(PASSWORDS["op1"][1])
    anon = Client(url, timeout=10)
    async with op, anon:
        ns = await op.get_namespace_index("urn:scada:streetlight:tags")
        col = Collector()
        sub = await op.create_subscription(50, col)
        await sub.subscribe_events(op.nodes.server, ua.ObjectIds.AlarmConditionType)
        area_col = Collector()
        sub2 = await op.create_subscription(50, area_col)
        await sub2.subscribe_events(op.get_node(ua.NodeId("centre", ns)),
                                    ua.ObjectIds.AlarmConditionType)

        # a fault: the red dot arrives as a condition event, on the Server and the area
        feed(rt, {f"{LUM}/lamp_failure": 1})
        ev = await col.wait_for(lambda e: f(e, "ConditionName") == "lamp_failure"
                                and f(e, "ActiveState/Id") is True)
        assert f(ev, "Retain") is True
        assert f(ev, "AckedState/Id") is False
        assert f(ev, "SourceName") == LUM
        assert f(ev, "Severity") == 500
        await area_col.wait_for(lambda e: f(e, "ConditionName") == "lamp_failure")
        cond = op.get_node(ua.NodeId(AID + SUFFIX, ns))
        # a generic client browsing the device finds a typed condition instance
        assert (await cond.read_type_definition()) == ua.NodeId(ua.ObjectIds.OffNormalAlarmType)
        dev = op.get_node(ua.NodeId(LUM, ns))
        conds = await dev.get_referenced_nodes(refs=ua.ObjectIds.HasCondition)
        assert cond.nodeid in [n.nodeid for n in conds]
        ack = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)

        # anonymous (viewer): denied, state unchanged
        with pytest.raises(ua.UaStatusCodeError) as exc:
            await anon.get_node(cond.nodeid).call_method(
                ack, ua.Variant(f(ev, "EventId"), ua.VariantType.ByteString),
                ua.LocalizedText("not me"))
        assert exc.value.code == ua.StatusCodes.BadUserAccessDenied
        assert engine.view(engine.find(AID)).state == M.UNACK_ACTIVE

        # operator: works, with the event's EventId; the acked event follows
        await cond.call_method(ack, ua.Variant(f(ev, "EventId"), ua.VariantType.ByteString),
                               ua.LocalizedText("crew on the way"))
        await col.wait_for(lambda e: f(e, "ConditionName") == "lamp_failure"
                           and f(e, "AckedState/Id") is True)
        assert engine.view(engine.find(AID)).state == M.ACK_ACTIVE
        j = [e for e in read_journal(engine.journal.directory) if e["event"] == "ack"]
        assert (j[-1]["user"], j[-1]["comment"]) == ("op1", "crew on the way")
        # a second acknowledge: already acked
        with pytest.raises(ua.UaStatusCodeError) as exc:
            await cond.call_method(ack, ua.Variant(b"", ua.VariantType.ByteString),
                                   ua.LocalizedText(""))
        assert exc.value.code == ua.StatusCodes.BadConditionBranchAlreadyAcked

        # ConditionRefresh: RefreshStart, the retained red dot, RefreshEnd
        col.events.clear()
        await op.nodes.server.call_method(
            ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),
            ua.Variant(sub.subscription_id, ua.VariantType.UInt32))
        await col.wait_for(lambda e: f(e, "EventType") == ua.NodeId(ua.ObjectIds.RefreshEndEventType))
        kinds = [f(e, "EventType") for e in col.events]
        assert kinds[0] == ua.NodeId(ua.ObjectIds.RefreshStartEventType)
        retained = [e for e in col.events if f(e, "ConditionName")]
        assert [f(e, "ConditionName") for e in retained] == ["lamp_failure"]
        assert f(retained[0], "AckedState/Id") is True
        await sub.delete()
        await sub2.delete()

    # a client connecting later (an HMI restarted) gets the red dots with ConditionRefresh
    late = Client(url, timeout=10)
    async with late:
        col = Collector()
        sub = await late.create_subscription(50, col)
        await sub.subscribe_events(late.nodes.server, ua.ObjectIds.AlarmConditionType)
        await late.nodes.server.call_method(
            ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh2),
            ua.Variant(sub.subscription_id, ua.VariantType.UInt32),
            ua.Variant(0, ua.VariantType.UInt32))
        await col.wait_for(lambda e: f(e, "EventType") == ua.NodeId(ua.ObjectIds.RefreshEndEventType))
        assert [f(e, "ConditionName") for e in col.events if f(e, "ConditionName")] == ["lamp_failure"]
        await sub.delete()


async def test_cli_actions_go_through_the_methods(server) -> None:
    rt, url = server
    engine = rt.services["alarms"].engine
    feed(rt, {"centre/cab-1/comm_ok": 1, "centre/cab-1/contactor": 1, f"{LUM}/lamp_failure": 1})
    # the condition node exists once its event went out
    await until(lambda: rt.services["alarms"].conditions.stats["events"] > 0)
    with pytest.raises(ClientError, match="BadUserAccessDenied"):
        await call_action(url, "op1", PASSWORDS["op1"][1], "shelve", alarm_id=AID,
                          duration=600, comment="lamp ordered")
    msg = await call_action(url, "eng1", PASSWORDS["eng1"][1], "shelve", alarm_id=AID,
                            duration=600, comment="lamp ordered")
    assert "done" in msg
    v = engine.view(engine.find(AID))
    assert v.state == M.SHELVED and v.shelve_until is not None
    await call_action(url, "eng1", PASSWORDS["eng1"][1], "unshelve", alarm_id=AID, comment="")
    # the real command line, in its own process
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "ack", AID, "--endpoint", url, "--user", "op1",
        "-m", "seen", cwd=str(REPO), env={**os.environ, "SCADA_OPCUA_PASSWORD": PASSWORDS["op1"][1]},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "acknowledge" in out.decode() and "done" in out.decode()
    assert engine.view(engine.find(AID)).state == M.ACK_ACTIVE
    ack = [e for e in read_journal(engine.journal.directory) if e["event"] == "ack"][-1]
    assert (ack["user"], ack["comment"]) == ("op1", "seen")
    await call_action(url, "eng1", PASSWORDS["eng1"][1], "out_of_service",
                      device="north/cab-2", oos=True, comment="cabinet replaced")
    assert "north/cab-2" in engine.oos_devices
    from scada import quality as Q

    assert rt.tagdb.read("north/cab-2/power_w").quality == Q.BadOutOfService
    with pytest.raises(ClientError, match="BadUserAccessDenied"):
        await call_action(url, None, None, "acknowledge", alarm_id=AID, comment="")


async def test_a_flood_in_one_publishing_interval_reaches_the_client_whole(tmp_path) -> None:
    """30 red dots raised in one batch, a client publishing once a second with the default queue
    size: every event arrives (the event queue is not the data-change bound of 10, which used to
    drop the oldest events of a batch - a cabinet's root cause before its luminaires')."""
    port = free_port()
    site = load_site(write_site(tmp_path, nlum=30, extra=(
        f"opcua: {{port: {port}, allow_security_none: true, anonymous: viewer}}\n")),
        validate_drivers=False)
    rt = Runtime(site, RealClock())
    rt.load_services(only=["alarms", "opcua"])
    await rt.start()
    try:
        await asyncio.wait_for(rt.services["opcua"].started.wait(), 30)
        alarms = rt.services["alarms"]
        await until(lambda: alarms.conditions is not None and hasattr(alarms.conditions, "ns"))
        lums = [f"centre/cab-1/lum-{k:02d}" for k in range(1, 31)]
        feed(rt, {"centre/cab-1/comm_ok": 1, "centre/cab-1/contactor": 1,
                  **{f"{lum}/lamp_failure": 0 for lum in lums}})
        async with Client(f"opc.tcp://127.0.0.1:{port}/scada", timeout=10) as c:
            col = Collector()
            sub = await c.create_subscription(1000, col)
            await sub.subscribe_events(c.nodes.server, ua.ObjectIds.AlarmConditionType)
            feed(rt, {f"{lum}/lamp_failure": 1 for lum in lums})  # one batch
            await until(lambda: len({f(e, "SourceName") for e in col.events
                                     if f(e, "ConditionName") == "lamp_failure"}) >= 30)
            got = {f(e, "SourceName") for e in col.events if f(e, "ConditionName") == "lamp_failure"}
            assert got == set(lums)
    finally:
        await rt.stop()
