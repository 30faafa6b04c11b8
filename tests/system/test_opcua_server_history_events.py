"""HistoryRead delegated to the historian service, and the hooks the alarm engine builds on
(device/area nodes, event notifiers, caller's role in method calls), over the wire."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import numpy as np
from asyncua import ua

from scada import quality as Q

T0 = 1_700_000_000.0


class HistorianStandIn:
    """The historian service's read API (historian/service.py) over a fixed series: 25 samples
    every 10 s, the 5th one bad. Only the API shape matters here, not its storage."""

    def __init__(self):
        self.t = T0 + np.arange(25) * 10.0
        self.v = np.arange(25, dtype=np.float64)
        self.q = np.full(25, Q.Good, dtype=np.uint32)
        self.q[4] = Q.BadCommunicationError
        self.calls = []

    async def read_raw(self, tag_index, t0, t1, max_values=None):
        self.calls.append(("raw", tag_index, t0, t1, max_values))
        m = (self.t >= t0) & (self.t <= t1)
        n = max_values or len(self.t)
        return self.t[m][:n], self.v[m][:n], self.q[m][:n]

    async def aclose(self):
        """Runtime.stop closes every registered service."""

    async def read_processed(self, tag_index, t0, t1, interval_s, aggregate_name):
        self.calls.append(("processed", tag_index, t0, t1, interval_s, aggregate_name))
        starts = np.arange(t0, t1, interval_s)
        return starts, np.full(len(starts), 1.5), np.full(len(starts), Q.Good, dtype=np.uint32)


def _dt(t):
    return datetime.fromtimestamp(t, UTC)


async def test_history_raw_with_continuation_and_processed(hmi):
    h = HistorianStandIn()
    hmi.runtime.services["historian"] = h
    path = "centre/cab-01/power_w"
    async with hmi.client() as c:
        n = hmi.node(c, path)
        assert (await n.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value & 0x04  # HistoryRead bit
        dvs = await n.read_raw_history(_dt(T0), _dt(T0 + 1000))
        assert [dv.Value.Value for dv in dvs[:4]] == [0.0, 1.0, 2.0, 3.0] and len(dvs) == 25
        assert dvs[4].StatusCode.value == Q.BadCommunicationError and dvs[4].Value.Value is None
        assert dvs[3].SourceTimestamp == _dt(T0 + 30)
        # paging: 10 values, then the continuation point gives the next 10
        details = ua.ReadRawModifiedDetails(IsReadModified=False, StartTime=_dt(T0), EndTime=_dt(T0 + 1000),
                                            NumValuesPerNode=10)
        r1 = await n.history_read(details)
        assert len(r1.HistoryData.DataValues) == 10 and r1.ContinuationPoint
        r2 = await n.history_read(details, r1.ContinuationPoint)
        assert r2.HistoryData.DataValues[0].Value.Value == 10.0
        # processed: Part 13 Average over 60 s buckets
        pd = ua.ReadProcessedDetails(StartTime=_dt(T0), EndTime=_dt(T0 + 240), ProcessingInterval=60_000,
                                     AggregateType=[ua.NodeId(ua.ObjectIds.AggregateFunction_Average)])
        r = await n.history_read(pd)
        assert [dv.Value.Value for dv in r.HistoryData.DataValues] == [1.5] * 4
        assert h.calls[-1] == ("processed", hmi.runtime.tagdb.index(path), T0, T0 + 240, 60.0, "avg")
        bad = ua.ReadProcessedDetails(StartTime=_dt(T0), EndTime=_dt(T0 + 240), ProcessingInterval=60_000,
                                      AggregateType=[ua.NodeId(ua.ObjectIds.AggregateFunction_StandardDeviationSample)])
        r = await n.history_read(bad)
        assert r.StatusCode.value == ua.StatusCodes.BadAggregateNotSupported


async def test_history_from_the_real_historian(tmp_path):
    """End to end with the historian service (embedded backend): values fed to the tag
    database, recorded, flushed, read back over OPC UA HistoryRead."""
    from tests.fixtures.hmi import start_hmi

    h = await start_hmi(tmp_path, services=("historian", "opcua"))
    try:
        path = "centre/cab-01/power_w"
        now = h.runtime.clock.time()
        for k, v in enumerate((100.0, 150.0, 125.0)):
            h.feed({path: v}, source_ts=now - 30 + k * 10)
        await h.runtime.services["historian"].flush()
        async with h.client() as c:
            dvs = await h.node(c, path).read_raw_history(_dt(now - 60), _dt(now + 1))
        assert [dv.Value.Value for dv in dvs] == [100.0, 150.0, 125.0]
        assert [round(dv.SourceTimestamp.timestamp()) for dv in dvs] == [round(now - 30 + k * 10) for k in range(3)]
    finally:
        await h.runtime.stop()


async def test_no_historian_means_history_unsupported(hmi):
    async with hmi.client() as c:
        n = hmi.node(c, "centre/cab-01/power_w")
        assert not (await n.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value & 0x04
        r = await n.history_read(ua.ReadRawModifiedDetails(IsReadModified=False, StartTime=_dt(T0),
                                                           EndTime=_dt(T0 + 10)))
        assert r.StatusCode.value == ua.StatusCodes.BadHistoryOperationUnsupported


async def test_device_node_pinned_area_events_and_caller_role(hmi):
    svc = hmi.service
    dev = await svc.device_node("centre/cab-01/lum-02")
    cond = await dev.add_object(ua.NodeId("centre/cab-01/lum-02#LampFailure", svc.namespace_index),
                                ua.QualifiedName("LampFailure", svc.namespace_index))
    seen_roles = []

    async def whoami(parent):
        seen_roles.append((svc.user_name(), svc.role_of()))
        return [ua.Variant(svc.role_of() or "", ua.VariantType.String)]

    await cond.add_method(ua.NodeId("centre/cab-01/lum-02#WhoAmI", svc.namespace_index),
                          ua.QualifiedName("WhoAmI", svc.namespace_index), whoami, [], [ua.VariantType.String])
    area = svc.area_node("centre")
    gen = await svc.server.get_event_generator(emitting_node=area)

    class Events:
        def __init__(self):
            self.q = asyncio.Queue()

        def event_notification(self, ev):
            self.q.put_nowait(ev)

    async with hmi.client("eng1") as c:
        lum = c.get_node(ua.NodeId("centre/cab-01/lum-02", hmi.ns))
        names = {(await ch.read_browse_name()).Name for ch in await lum.get_children()}
        assert {"LampFailure", "level", "level_cmd", "starts"} <= names
        node = c.get_node(ua.NodeId("centre/cab-01/lum-02#LampFailure", hmi.ns))
        assert await node.call_method(f"{hmi.ns}:WhoAmI") == "engineer"
        handler = Events()
        sub = await c.create_subscription(50, handler)
        await sub.subscribe_events(c.get_node(ua.NodeId("centre", hmi.ns)))
        gen.event.Message = ua.LocalizedText("lamp failure centre/cab-01/lum-02")
        gen.event.Severity = 700
        await gen.trigger()
        ev = await asyncio.wait_for(handler.q.get(), 5)
        assert ev.Message.Text == "lamp failure centre/cab-01/lum-02" and ev.Severity == 700
        await sub.delete()
    assert seen_roles == [("eng1", "engineer")]
    server_refs = await svc.server_node.get_referenced_nodes(ua.ObjectIds.HasNotifier)
    assert ua.NodeId("centre", hmi.ns) in [n.nodeid for n in server_refs]
