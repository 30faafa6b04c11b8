"""The driver's notification path without sockets: one Publish response -> one Batch.

The driver is built from a real site (its constructor validates and opens no connection) and
fed PublishResults as asyncua's publish loop would hand them over.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from asyncua import ua

from scada import quality as Q
from scada.errors import ConfigError
from scada.loader import load_site
from scada.runtime import Runtime
from tests.fixtures.opcua import junction_profiles, write_site


@pytest.fixture
def runtime(tmp_path, stepped_clock):
    site = write_site(tmp_path, [
        {"id": "j-1", "profile": "junction-opcua-4", "area": "centre",
         "connection": {"endpoint": "opc.tcp://127.0.0.1:1/a"}},
        {"id": "j-2", "profile": "junction-opcua-4", "area": "centre",
         "connection": {"endpoint": "opc.tcp://127.0.0.1:1/a"}},
        {"id": "j-3", "profile": "junction-opcua", "area": "north",
         "connection": {"endpoint": "opc.tcp://127.0.0.1:2/b"}},
    ])
    rt = Runtime(load_site(str(site)), stepped_clock)
    rt.load_drivers(only=["opcua"])
    return rt


def _item(tag: int, value, vt=None, status=Q.Good, ts=None):
    v = ua.Variant(value, vt) if vt is not None else ua.Variant(value)
    dv = ua.DataValue(v, StatusCode=ua.StatusCode(status), SourceTimestamp=ts)
    return ua.MonitoredItemNotification(ClientHandle=tag, Value=dv)


def _publish(items, seq: int = 1) -> ua.PublishResult:
    msg = ua.NotificationMessage(SequenceNumber=seq, NotificationData=[ua.DataChangeNotification(MonitoredItems=items)])
    return ua.PublishResult(SubscriptionId=1, NotificationMessage=msg)


def test_sessions_grouped_by_endpoint(runtime):
    drv = runtime.drivers["opcua"]
    assert len(drv.sessions) == 2
    assert sorted(len(s.devices) for s in drv.sessions) == [1, 2]


async def test_one_publish_response_is_one_batch(runtime):
    db = runtime.tagdb
    drv = runtime.drivers["opcua"]
    sess = next(s for s in drv.sessions if len(s.devices) == 2)
    mode1, plan1 = db.index("centre/j-1/mode"), db.index("centre/j-1/plan")
    mode2, drift2 = db.index("centre/j-2/mode"), db.index("centre/j-2/clock_drift_s")
    ts = datetime(2025, 12, 31, 23, 59, tzinfo=UTC)  # the device's time, before the server's now
    before = db.stats["batches"]
    sess._on_publish(_publish([
        _item(mode1, 1, ua.VariantType.Int32, ts=ts),
        _item(plan1, 2, ua.VariantType.Int32, Q.UncertainLastUsableValue, ts=ts),
        _item(mode2, 0, ua.VariantType.Int32, ts=ts),
        _item(drift2, 1.5, ua.VariantType.Double, ts=ts),
    ]))
    assert db.stats["batches"] == before + 1
    assert db.read(mode1).value == 1 and db.read(mode1).source_ts == ts.timestamp()
    assert db.read(plan1).value == 2 and db.read(plan1).quality == Q.UncertainLastUsableValue
    assert db.read(drift2).value == 1.5
    # a bad code without a value keeps the last value; a mistyped value is rejected and counted
    sess._on_publish(_publish([
        ua.MonitoredItemNotification(ClientHandle=mode1, Value=ua.DataValue(
            ua.Variant(None), StatusCode=ua.StatusCode(Q.BadSensorFailure))),
        _item(mode2, "normal", ts=ts),
        _item(999_999, 1, ua.VariantType.Int32),  # unknown handle
    ], seq=2))
    s = db.read(mode1)
    assert (s.value, s.quality, s.source_ts) == (1, Q.BadSensorFailure, ts.timestamp())
    assert db.read(mode2).quality == Q.BadConfigurationError
    assert drv.ctx.health.get("rejected") == 2
    # keep-alive (no data) changes nothing
    n = db.stats["batches"]
    sess._on_publish(ua.PublishResult(SubscriptionId=1, NotificationMessage=ua.NotificationMessage()))
    assert db.stats["batches"] == n


async def test_bad_status_change_notification_signals_a_dead_session(runtime):
    import asyncio

    sess = runtime.drivers["opcua"].sessions[0]
    sess._lost = asyncio.Event()
    msg = ua.NotificationMessage(NotificationData=[ua.StatusChangeNotification(
        Status=ua.StatusCode(ua.StatusCodes.BadTimeout))])
    sess._on_publish(ua.PublishResult(SubscriptionId=1, NotificationMessage=msg))
    assert sess._lost.is_set() and "BadTimeout" in sess._lost_reason


def test_constructor_reports_every_bad_device(tmp_path, stepped_clock):
    profiles = junction_profiles()
    profiles["junction-opcua-4"]["points"][0]["source"] = {"node": "{device}.L{index}.Mode"}
    site = write_site(tmp_path, [
        {"id": "j-1", "profile": "junction-opcua-4", "area": "centre",
         "connection": {"endpoint": "opc.tcp://127.0.0.1:1/a"}},
        {"id": "j-2", "profile": "junction-opcua", "area": "centre",
         "connection": {"endpoint": "opc.tcp://127.0.0.1:1/a", "security_policy": "Basic256Sha256",
                        "mode": "Sign", "certificate": str(tmp_path / "missing.der"),
                        "private_key": str(tmp_path / "missing.pem")}},
    ], profiles=profiles)
    rt = Runtime(load_site(str(site)), stepped_clock)
    with pytest.raises(ConfigError) as ei:
        rt.load_drivers(only=["opcua"])
    text = str(ei.value)
    assert "centre/j-1" in text and "uses {index}" in text
    assert "centre/j-2" in text and "missing.der" in text
