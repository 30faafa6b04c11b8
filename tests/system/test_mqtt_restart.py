"""Broker restart mid-stream over a real Mosquitto (persistence on).

The driver must notice, mark every tag BadCommunicationError (values kept), reconnect with
backoff, resubscribe, and come back Good; QoS 1 states a persistent-session gateway published
while the broker was down (queued by the gateway) or while only the driver was still away
(queued by the broker for the driver's persistent session) all arrive, in order.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from drivers.base import Backoff
from scada import quality as Q
from tests.fixtures.mqtt import DaliSystem, eventually, load_dali_site

pytestmark = pytest.mark.system

GW = "centre/gw-a"


async def test_broker_restart_bad_then_good_and_no_qos1_state_lost(tmp_path, mosquitto, stepped_clock):
    site = load_dali_site(tmp_path, mosquitto.address, {"gw-a": [(1, 6)]})
    s = DaliSystem(site, stepped_clock)
    try:
        await s.start()
        await s.tick(1)
        db, gw, drv = s.db, s.sims["gw-a"], s.driver
        await eventually(lambda: db.read(f"{GW}/lum-006/level").good, what="first states")
        tag = db.index(f"{GW}/lum-001/level")
        seen: list[float] = []
        db.subscribe(lambda ch: seen.extend(ch.values[ch.indices == tag].tolist()), only=[tag])
        reconnects0 = drv.ctx.health.get("reconnects")

        # after the restart the gateway comes back first, the driver 1-2 s later (its persistent
        # session on the broker queues what the gateway publishes meanwhile)
        gw.conn.backoff = Backoff(base=0.05, cap=0.1)
        drv.connection(GW).backoff = Backoff(base=2.0, cap=2.0)
        await mosquitto.astop()
        await eventually(lambda: db.read(f"{GW}/lum-003/power_w").quality == Q.BadCommunicationError,
                         what="tags Bad after the broker went away")
        assert db.read(f"{GW}/online").quality == Q.BadCommunicationError
        assert db.read(f"{GW}/lum-003/power_w").value is not None  # last value kept

        # while the broker is down the gateway keeps publishing QoS 1 states (queued by paho)
        for k, level in enumerate((11.0, 12.0, 13.0)):
            payload = json.dumps({"ts": s.clock.time() + k, "level": level}).encode()
            assert gw.publish_raw("dali/gw-a/0/0/state", payload, qos=1)
        await mosquitto.astart()
        await gw.conn.wait_connected(10)
        for k, level in enumerate((14.0, 15.0)):
            payload = json.dumps({"ts": s.clock.time() + 10 + k, "level": level}).encode()
            assert gw.publish_raw("dali/gw-a/0/0/state", payload, qos=1)
        assert not drv.connection(GW).connected  # published while the driver is still away

        await eventually(lambda: drv.connection(GW).connected, within=15, what="driver reconnect")
        await s.tick(1)  # the gateway's post-reconnect full state
        await eventually(lambda: all(db.read(f"{GW}/lum-{n:03d}/power_w").good for n in range(1, 7)),
                         what="tags Good again")
        await eventually(lambda: [v for v in seen if v in (11, 12, 13, 14, 15)] == [11, 12, 13, 14, 15],
                         what=f"every QoS 1 state of the outage, in order (saw {seen})")
        assert db.read(f"{GW}/online").value is True and db.read(f"{GW}/online").good
        assert drv.ctx.health.get("reconnects") == reconnects0 + 1
        assert drv.connection(GW).session_present  # the broker kept our session across its restart
        assert np.isfinite(db.read(f"{GW}/lum-001/energy_wh").value)
    finally:
        await s.stop()
