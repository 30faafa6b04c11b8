"""Two sessions on one secure channel (issue 15, OPC UA Part 4 §5.6 / §7.31).

A real asyncua client opens an anonymous session and then an operator session over the *same*
secure channel, and sends each request with one session's AuthenticationToken. Every request
must be judged, performed and audited with the identity of the session whose token it carries:
on main d534391 the anonymous session's Write and Acknowledge succeeded with the operator's
rights, journaled as "operator", and closing the operator session killed the other one.
"""

from __future__ import annotations

import asyncio

import pytest
from asyncua import Client, ua

from scada import quality as Q
from scada.alarms import model as M
from scada.alarms.journal import read_journal
from scada.audit import AuditLog
from scada.clock import RealClock
from scada.loader import load_site
from scada.opcua.alarms import ALARMS_OBJECT, SUFFIX
from scada.runtime import Runtime
from scada.tags import Batch
from scada.users import hash_password
from tests.conftest import free_port
from tests.fixtures.alarms import write_site

PW = {"op1": "pw-operator", "northop": "pw-north"}
LUM = "centre/cab-1/lum-01"
AID = f"{LUM}/lamp_failure"
ACK = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)
SHELVE = ua.NodeId(ua.ObjectIds.AlarmConditionType_ShelvingState_TimedShelve)


@pytest.fixture
async def server(tmp_path):
    port = free_port()
    users = (f"  - {{name: op1, role: operator, password_hash: '{hash_password(PW['op1'], n=2**10)}'}}\n"
             f"  - {{name: northop, role: operator, areas: [north], "
             f"password_hash: '{hash_password(PW['northop'], n=2**10)}'}}\n")
    extra = f"opcua: {{port: {port}, allow_security_none: true, anonymous: viewer}}\nusers:\n{users}"
    site = load_site(write_site(tmp_path, nlum=2, extra=extra), validate_drivers=False)
    rt = Runtime(site, RealClock())
    rt.load_services(only=["alarms", "opcua"])
    await rt.start()
    svc = rt.services["opcua"]
    try:
        await asyncio.wait_for(svc.started.wait(), 30)
        db = rt.tagdb
        vals = {"centre/cab-1/comm_ok": 1.0, "centre/cab-1/contactor": 1.0, f"{LUM}/level": 100.0,
                f"{LUM}/lamp_failure": 0.0, "north/cab-2/power_w": 5.0, "centre/cab-1/power_w": 7.0}
        db.apply(Batch.of([db.index(p) for p in vals], list(vals.values()), Q.Good, rt.clock.time()))
        db.apply(Batch.of([db.index(f"{LUM}/lamp_failure")], [1.0], Q.Good, rt.clock.time()))
        engine = rt.services["alarms"].engine
        for _ in range(200):
            if engine.view(engine.find(AID)).state == M.UNACK_ACTIVE:
                break
            await asyncio.sleep(0.02)
        yield rt, f"opc.tcp://127.0.0.1:{port}/scada", svc.namespace_index
    finally:
        await rt.stop()


def _use(c: Client, token: ua.NodeId) -> None:
    """Send the next requests with ``token`` (the client keeps one channel)."""
    c.uaclient.session.restore_authentication_token(token)


async def _code(coro) -> int:
    try:
        await coro
    except ua.UaStatusCodeError as e:
        return e.code
    return Q.Good


async def _call(c: Client, objid: ua.NodeId, method: ua.NodeId, *args) -> int:
    for _ in range(100):  # the condition node appears once the engine's event went through
        code = await _code(c.get_node(objid).call_method(method, *args))
        if code != Q.BadNodeIdUnknown:
            return code
        await asyncio.sleep(0.05)
    return Q.BadNodeIdUnknown


async def _second_session(c: Client, user: str) -> ua.NodeId:
    await c.create_session()
    await c.activate_session(username=user, password=PW[user])
    return c.uaclient.session.authentication_token


async def _close_session(c: Client, token: ua.NodeId) -> None:
    _use(c, token)
    req = ua.CloseSessionRequest()
    req.DeleteSubscriptions = True
    data = await c.uaclient._send_request(req)  # raw CloseSession: the client keeps its channel
    assert data is not None


async def test_anonymous_and_operator_sessions_on_one_channel_are_judged_apart(server):
    rt, url, ns = server
    engine = rt.services["alarms"].engine
    c = Client(url, timeout=10)
    await c.connect()  # session A: anonymous (viewer)
    try:
        anon = c.uaclient.session.authentication_token
        oper = await _second_session(c, "op1")  # session B: operator, same secure channel
        assert anon != oper
        cmd = c.get_node(ua.NodeId("centre/cab-1/contactor_cmd", ns))
        cond = ua.NodeId(f"{AID}{SUFFIX}", ns)
        ack_m = c.get_node(ACK)

        # --- requests carrying A's token are the anonymous viewer's
        _use(c, anon)
        assert await _code(cmd.write_value(ua.Variant(True, ua.VariantType.Boolean))) == Q.BadUserAccessDenied
        assert await _call(c, cond, ACK, ua.Variant(b"", ua.VariantType.ByteString),
                           ua.LocalizedText("anon ack")) == Q.BadUserAccessDenied
        assert await _call(c, cond, SHELVE, ua.Variant(60_000.0, ua.VariantType.Double),
                           ua.LocalizedText("anon shelve")) == Q.BadUserAccessDenied
        oos = ua.NodeId(ALARMS_OBJECT + ".SetOutOfService", ns)
        assert await _call(c, ua.NodeId(ALARMS_OBJECT, ns), oos, ua.Variant("centre/cab-1", ua.VariantType.String),
                           ua.Variant(True, ua.VariantType.Boolean),
                           ua.Variant("anon", ua.VariantType.String)) == Q.BadUserAccessDenied
        ual = (await cmd.read_attribute(ua.AttributeIds.UserAccessLevel)).Value.Value
        assert ual & 0x01 and not ual & 0x02  # readable, not writable for this session
        assert (await ack_m.read_attribute(ua.AttributeIds.UserExecutable)).Value.Value is False
        assert engine.view(engine.find(AID)).state == M.UNACK_ACTIVE

        # --- the same channel with B's token is the operator
        _use(c, oper)
        ual = (await cmd.read_attribute(ua.AttributeIds.UserAccessLevel)).Value.Value
        assert ual & 0x02
        assert (await ack_m.read_attribute(ua.AttributeIds.UserExecutable)).Value.Value is True
        assert await _call(c, cond, ACK, ua.Variant(b"", ua.VariantType.ByteString),
                           ua.LocalizedText("crew sent")) == Q.Good
        assert engine.view(engine.find(AID)).state == M.ACK_ACTIVE
        # the operator may not shelve either (engineer): judged as operator, not as anonymous
        assert await _call(c, cond, SHELVE, ua.Variant(60_000.0, ua.VariantType.Double),
                           ua.LocalizedText("op shelve")) == Q.BadUserAccessDenied

        # --- audit and journal carry each session's own identity
        audit = AuditLog.read(str(rt.operations.audit.path))
        acts = [(e["user"], e["action"], e["outcome"]) for e in audit if e["action"] != "login"]
        assert ("anonymous", "alarm.acknowledge", "BadUserAccessDenied") in acts
        assert ("anonymous", "alarm.shelve", "BadUserAccessDenied") in acts
        assert ("anonymous", "device.out_of_service", "BadUserAccessDenied") in acts
        assert ("anonymous", "tag.write", "BadUserAccessDenied") in acts
        assert ("op1", "alarm.acknowledge", "Good") in acts
        assert ("op1", "alarm.shelve", "BadUserAccessDenied") in acts
        assert not [a for a in acts if a[0] == "op1" and a[1] != "alarm.acknowledge" and a[2] == "Good"]
        acks = [e for e in read_journal(engine.journal.directory) if e["event"] == "ack"]
        assert [(e["alarm_id"], e["user"]) for e in acks] == [(AID, "op1")]

        # --- closing the operator session leaves the anonymous one working
        await _close_session(c, oper)
        _use(c, anon)
        dv = await c.get_node(ua.NodeId("centre/cab-1/power_w", ns)).read_data_value()
        assert dv.StatusCode.is_good() and dv.Value.Value == 7.0
        # and the closed session's token is refused, not silently mapped to another session
        _use(c, oper)
        assert await _code(c.get_node(ua.NodeId("centre/cab-1/power_w", ns)).read_data_value()) \
            == Q.BadSessionIdInvalid
        _use(c, anon)
    finally:
        await c.disconnect()


async def test_closing_the_first_session_leaves_the_second_working(server):
    _rt, url, ns = server
    c = Client(url, timeout=10)
    await c.connect()
    try:
        anon = c.uaclient.session.authentication_token
        oper = await _second_session(c, "op1")
        await _close_session(c, anon)
        _use(c, oper)
        node = c.get_node(ua.NodeId("centre/cab-1/contactor_cmd", ns))
        # the operator's write reaches the runtime (no driver owns the tag here: BadNotWritable
        # from the runtime, not BadUserAccessDenied from the role check)
        code = await _code(node.write_value(ua.Variant(True, ua.VariantType.Boolean)))
        assert code != Q.BadUserAccessDenied and code != Q.BadSessionIdInvalid
        dv = await c.get_node(ua.NodeId("north/cab-2/power_w", ns)).read_data_value()
        assert dv.Value.Value == 5.0
    finally:
        await c.disconnect()


async def test_restricted_session_beside_an_unrestricted_one_reads_and_browses_its_areas_only(server):
    """TranslateBrowsePaths, Read and Browse of nodes outside the user's areas are judged with
    the restricted session's identity, whatever the other session on the channel may do."""
    rt, url, ns = server
    c = Client(url, timeout=10)
    await c.connect()  # anonymous viewer: every area
    try:
        anon = c.uaclient.session.authentication_token
        north = await _second_session(c, "northop")  # operator restricted to area north
        centre_tag = c.get_node(ua.NodeId("centre/cab-1/power_w", ns))
        north_tag = c.get_node(ua.NodeId("north/cab-2/power_w", ns))
        objects = c.nodes.objects

        _use(c, north)
        assert await _code(centre_tag.read_data_value()) == Q.BadUserAccessDenied
        assert (await north_tag.read_data_value()).Value.Value == 5.0
        assert await _code(objects.get_child([f"{ns}:centre"])) == ua.StatusCodes.BadNoMatch
        assert (await objects.get_child([f"{ns}:north"])).nodeid == ua.NodeId("north", ns)
        names = {(await ch.read_browse_name()).Name for ch in await objects.get_children()}
        assert "north" in names and "centre" not in names
        cmd = c.get_node(ua.NodeId("centre/cab-1/contactor_cmd", ns))
        assert await _code(cmd.write_value(ua.Variant(True, ua.VariantType.Boolean))) == Q.BadUserAccessDenied

        _use(c, anon)
        assert (await centre_tag.read_data_value()).Value.Value == 7.0
        assert (await objects.get_child([f"{ns}:centre"])).nodeid == ua.NodeId("centre", ns)
        names = {(await ch.read_browse_name()).Name for ch in await objects.get_children()}
        assert {"north", "centre"} <= names
        audit = AuditLog.read(str(rt.operations.audit.path))
        refused = [e for e in audit if e["user"] == "northop" and e["action"] == "tag.write"]
        assert [(e["target"], e["outcome"], e.get("reason")) for e in refused] == [
            ("centre/cab-1/contactor_cmd", "BadUserAccessDenied", "area")]
    finally:
        await c.disconnect()


async def test_a_session_cannot_touch_another_sessions_subscription(server):
    rt, url, _ns = server
    c = Client(url, timeout=10)
    await c.connect()
    try:
        anon = c.uaclient.session.authentication_token
        oper = await _second_session(c, "op1")
        _use(c, oper)
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = 1000
        params.RequestedLifetimeCount = 600
        params.RequestedMaxKeepAliveCount = 20
        params.PublishingEnabled = True
        req = ua.CreateSubscriptionRequest()
        req.Parameters = params
        from asyncua.ua.ua_binary import struct_from_binary

        resp = struct_from_binary(ua.CreateSubscriptionResponse, await c.uaclient._send_request(req))
        resp.ResponseHeader.ServiceResult.check()
        sid = resp.Parameters.SubscriptionId
        _use(c, anon)
        res = await c.uaclient.delete_subscriptions([sid])
        assert [r.value for r in res] == [Q.BadSubscriptionIdInvalid]
        assert sid in rt.services["opcua"].server.iserver.subscription_service.subscriptions
        _use(c, oper)
        assert [r.value for r in await c.uaclient.delete_subscriptions([sid])] == [Q.Good]
        _use(c, anon)
    finally:
        await c.disconnect()
