"""Our OPC UA server over the wire: values with status and timestamps, writes, audit."""

from __future__ import annotations

import asyncio

from asyncua import ua

from scada import quality as Q
from scada.audit import AuditLog


async def test_read_value_status_and_source_time(hmi):
    hmi.feed({"centre/cab-01/power_w": 1234.5, "centre/cab-01/contactor": True}, source_ts=1_700_000_000.0)
    hmi.feed({"centre/cab-01/lum-01/level": 40.0}, quality=Q.UncertainLastUsableValue, source_ts=1_700_000_100.0)
    async with hmi.client() as c:
        dv = await hmi.node(c, "centre/cab-01/power_w").read_data_value(raise_on_bad_status=False)
        assert dv.Value.Value == 1234.5 and dv.Value.VariantType == ua.VariantType.Double
        assert dv.StatusCode.is_good()
        assert dv.SourceTimestamp.timestamp() == 1_700_000_000.0
        assert (await hmi.node(c, "centre/cab-01/contactor").read_value()) is True
        dv = await hmi.node(c, "centre/cab-01/lum-01/level").read_data_value(raise_on_bad_status=False)
        assert dv.StatusCode.value == Q.UncertainLastUsableValue and dv.Value.Value == 40.0
        # never read: Bad with a null value (Part 4 §7.7.1)
        dv = await hmi.node(c, "north/cab-02/power_w").read_data_value(raise_on_bad_status=False)
        assert dv.StatusCode.value == Q.BadWaitingForInitialData and dv.Value.Value is None
        # metadata
        n = hmi.node(c, "centre/cab-01/group_level")
        assert await n.read_data_type() == ua.NodeId(ua.ObjectIds.Double)
        al = (await n.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value
        assert al & 0x03 == 0x03
        eu = await (await n.get_child("0:EngineeringUnits")).read_value()
        assert eu.DisplayName.Text == "%" and eu.UnitId == (ord("P") << 8 | ord("1"))
        rng = await (await n.get_child("0:EURange")).read_value()
        assert (rng.Low, rng.High) == (0.0, 100.0)
        desc = await n.read_description()
        assert desc.Text == "Cabinet-wide dim level"
        ro = hmi.node(c, "centre/cab-01/power_w")
        assert (await ro.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value & 0x02 == 0


async def test_browse_site_tree(hmi):
    async with hmi.client() as c:
        objects = c.nodes.objects
        names = {(await ch.read_browse_name()).Name for ch in await objects.get_children()}
        assert {"centre", "north", "_system", "Scada"} <= names
        centre = c.get_node(ua.NodeId("centre", hmi.ns))
        cab = await centre.get_child(f"{hmi.ns}:cab-01")
        assert (await cab.read_description()).Text == "Cabinet rue de la Liberté"
        kids = {(await ch.read_browse_name()).Name for ch in await cab.get_children()}
        assert {"contactor", "group_level", "power_w", "label", "lum-01", "lum-02", "lum-03"} <= kids
        lum = await cab.get_child(f"{hmi.ns}:lum-02")
        assert lum.nodeid == ua.NodeId("centre/cab-01/lum-02", hmi.ns)
        assert (await lum.read_attribute(ua.AttributeIds.EventNotifier)).Value.Value == 1


async def test_find_tags_method(hmi):
    async with hmi.client() as c:
        scada = await c.nodes.objects.get_child(f"{hmi.ns}:Scada")
        paths, units = await scada.call_method(f"{hmi.ns}:FindTags", "centre/*/lum-*/level", ua.Variant(0, ua.VariantType.UInt32))
        assert paths == [f"centre/cab-01/lum-{n:02d}/level" for n in (1, 2, 3)]
        assert units == ["%"] * 3


async def test_operator_write_reaches_owner_and_comes_back_viewer_and_anonymous_denied(hmi):
    hmi.feed({"centre/cab-01/group_level": 10.0})
    async with hmi.client("op1") as c:
        n = hmi.node(c, "centre/cab-01/group_level")
        await n.write_value(ua.Variant(55.0, ua.VariantType.Double))
        assert hmi.writes == [("centre/cab-01/group_level", 55.0)]
        assert await n.read_value() == 55.0
        # the driver's real status comes back
        with_fail = hmi.node(c, "centre/cab-01/label")
        try:
            await with_fail.write_value("fail")
            raise AssertionError("write should fail")
        except ua.UaStatusCodeError as e:
            assert e.code == Q.BadDeviceFailure
    for user in (None, "viewer1"):
        async with hmi.client(user) as c:
            n = hmi.node(c, "centre/cab-01/group_level")
            try:
                await n.write_value(ua.Variant(99.0, ua.VariantType.Double))
                raise AssertionError("write should be denied")
            except ua.UaStatusCodeError as e:
                assert e.code == Q.BadUserAccessDenied
    assert len(hmi.writes) == 2  # op's two writes only
    log = [e for e in AuditLog.read(str(hmi.audit_path)) if e["action"] == "tag.write"]
    assert [(e["user"], e["outcome"]) for e in log] == [
        ("op1", "Good"), ("op1", "BadDeviceFailure"), ("anonymous", "BadUserAccessDenied"),
        ("viewer1", "BadUserAccessDenied")]
    assert log[0]["old"] == 10.0 and log[0]["new"] == 55.0 and log[0]["target"] == "centre/cab-01/group_level"


async def test_bad_input_rejected_server_unaffected(hmi):
    hmi.feed({"centre/cab-01/group_level": 10.0})
    async with hmi.client("op1") as c:
        n = hmi.node(c, "centre/cab-01/group_level")
        for value, code in ((ua.Variant("abc", ua.VariantType.String), Q.BadTypeMismatch),
                            (ua.Variant(True, ua.VariantType.Boolean), Q.BadTypeMismatch),
                            (ua.Variant(150.0, ua.VariantType.Double), Q.BadOutOfRange),
                            (ua.Variant(-1, ua.VariantType.Int32), Q.BadOutOfRange)):
            try:
                await n.write_value(value)
                raise AssertionError(f"{value} accepted")
            except ua.UaStatusCodeError as e:
                assert e.code == code, (value, Q.name(e.code))
        ro = hmi.node(c, "centre/cab-01/power_w")
        try:
            await ro.write_value(1.0)
            raise AssertionError("read-only accepted")
        except ua.UaStatusCodeError as e:
            assert e.code == Q.BadNotWritable
        assert hmi.writes == []
        await n.write_value(ua.Variant(20, ua.VariantType.Int32))  # numeric variants convert
        assert await n.read_value() == 20.0
    outcomes = [e["outcome"] for e in AuditLog.read(str(hmi.audit_path)) if e["action"] == "tag.write"]
    assert outcomes == ["BadTypeMismatch", "BadTypeMismatch", "BadOutOfRange", "BadOutOfRange", "BadNotWritable", "Good"]


class _Handler:
    def __init__(self):
        self.q: asyncio.Queue = asyncio.Queue()

    def datachange_notification(self, node, val, data):
        self.q.put_nowait((node.nodeid.Identifier, data.monitored_item.Value))


async def test_subscription_delivers_status_and_source_timestamps(hmi):
    hmi.feed({"centre/cab-01/power_w": 1.0, "centre/cab-01/lum-01/level": 5.0}, source_ts=1_700_000_000.0)
    async with hmi.client() as c:
        h = _Handler()
        sub = await c.create_subscription(50, h)
        await sub.subscribe_data_change([hmi.node(c, "centre/cab-01/power_w")])
        path, dv = await asyncio.wait_for(h.q.get(), 5)  # initial value
        assert path == "centre/cab-01/power_w" and dv.Value.Value == 1.0
        hmi.feed({"centre/cab-01/power_w": 2.5, "centre/cab-01/lum-01/level": 6.0}, source_ts=1_700_000_010.0)
        path, dv = await asyncio.wait_for(h.q.get(), 5)
        assert (path, dv.Value.Value, dv.StatusCode.value) == ("centre/cab-01/power_w", 2.5, Q.Good)
        assert dv.SourceTimestamp.timestamp() == 1_700_000_010.0
        hmi.runtime.tagdb.mark([hmi.runtime.tagdb.index("centre/cab-01/power_w")], Q.BadCommunicationError)
        path, dv = await asyncio.wait_for(h.q.get(), 5)
        assert dv.StatusCode.value == Q.BadCommunicationError and dv.Value.Value is None
        assert dv.SourceTimestamp.timestamp() == 1_700_000_010.0  # last known good kept
        await sub.delete()
        assert hmi.service.stats["notifications"] >= 2
        assert h.q.empty()  # unmonitored lum-01/level never delivered
    assert len(hmi.service.registry) == 0


async def test_client_churn_leaves_nothing_behind(hmi):
    """HMIs come and go (issue 9: 50 clients connecting and disconnecting every second): their
    sessions, subscriptions, monitored items and delivery routes must all go with them."""
    paths = [f"centre/cab-01/lum-0{n}/level" for n in (1, 2, 3)] + ["centre/cab-01/power_w"]
    for round_ in range(3):
        clients = [hmi.client() for _ in range(5)]
        for c in clients:
            await c.connect()
            sub = await c.create_subscription(50, _Handler())
            await sub.subscribe_data_change([hmi.node(c, p) for p in paths])
        hmi.feed({p: float(round_) for p in paths})
        await asyncio.sleep(0.2)
        assert len(hmi.service.registry) == 5 * len(paths)
        for c in clients:
            await c.disconnect()
    svc = hmi.service
    assert len(svc.registry) == 0 and not svc.registry.mask.any()
    assert svc._routes == {}
    assert svc.server.iserver.subscription_service.subscriptions == {}
    assert not [s for s in svc.server.iserver._external_sessions.values() if s.is_activated()]
