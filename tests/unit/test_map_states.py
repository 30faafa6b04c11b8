"""Device states of the live map (scada/web/map_api.DeviceStates): the worst ISA-18.2 state of a
device's alarms, communication lost from its quality alarm, suppression by design, recomputed
per transition for the devices concerned and published per area. A runtime with the real alarm
engine on a stepped clock; the publisher is the hub's signature, recorded."""

from __future__ import annotations

import pytest

from scada import quality as Q
from scada.loader import load_site
from scada.operations import Identity
from scada.runtime import Runtime
from scada.tags import Batch
from scada.web.map_api import COMM_LOST, NORMAL, SUPPRESSED, UNACK_ACTIVE, DeviceStates
from tests.fixtures.alarms import write_site


@pytest.fixture
async def rt(tmp_path, stepped_clock):
    site = load_site(write_site(tmp_path, nlum=3), validate_drivers=False)
    rt = Runtime(site, stepped_clock)
    rt.load_services(only=["alarms"])
    rt.services["alarms"].engine.start()
    db = rt.tagdb
    vals = {"centre/cab-1/comm_ok": 1.0, "centre/cab-1/contactor": 1.0, "north/cab-2/comm_ok": 1.0,
            "north/cab-2/contactor": 1.0}
    vals.update({f"centre/cab-1/lum-0{k}/{p}": v for k in (1, 2, 3) for p, v in (("level", 100.0), ("lamp_failure", 0.0))})
    db.apply(Batch.of([db.index(p) for p in vals], list(vals.values()), Q.Good, stepped_clock.time()))
    yield rt
    rt.operations.close()


def test_worst_state_comm_lost_and_suppression(rt):
    sent: list[tuple[str, dict, str | None]] = []
    ms = DeviceStates(rt, lambda kind, data, area=None: sent.append((kind, data, area)))
    who = Identity("a", "admin")
    assert ms.snapshot(who) == []
    db, clock = rt.tagdb, rt.clock
    # a lamp failure: the luminaire is red (priority of its alarm), published to its area only
    db.apply(Batch.of([db.index("centre/cab-1/lum-02/lamp_failure")], [1.0], Q.Good, clock.time()))
    assert ms.states == {"centre/cab-1/lum-02": (UNACK_ACTIVE, ms.engine.priority[ms.engine.find(
        "centre/cab-1/lum-02/lamp_failure")])}
    kind, data, area = sent[-1]
    assert (kind, area) == ("map.state", "centre") and data["d"][0][:2] == ["centre/cab-1/lum-02", UNACK_ACTIVE]
    assert data["ts"] == clock.time()
    # the cabinet stops answering: its comm_lost (quality) alarm is red until acknowledged, then
    # "communication lost"; its luminaires' alarms are suppressed by design
    db.mark(db.device_tags("centre/cab-1"), Q.BadCommunicationError)
    db.mark(list(db.device_tags("centre/cab-1/lum-02")), Q.BadCommunicationError)
    assert ms.states["centre/cab-1"][0] == UNACK_ACTIVE
    rt.services["alarms"].engine.acknowledge("centre/cab-1/comm_lost", user="a")
    assert ms.states["centre/cab-1"] == (COMM_LOST, 1)
    assert ms.states["centre/cab-1/lum-02"][0] == SUPPRESSED
    # a restricted user's snapshot holds their areas only
    assert ms.snapshot(Identity("n", "operator", frozenset({"north"}))) == []
    # back: the cabinet answers, the lamp is repaired; acknowledged -> normal, no longer listed
    db.apply(Batch.of([db.index("centre/cab-1/comm_ok")], [1.0], Q.Good, clock.time()))
    assert "centre/cab-1" not in ms.states  # acknowledged and back to normal: normal
    n_eval = ms.stats["devices_evaluated"]
    db.apply(Batch.of([db.index("north/cab-2/comm_ok")], [1.0], Q.Good, clock.time()))
    assert ms.stats["devices_evaluated"] - n_eval <= 1  # per transition, the devices concerned only
    ms.close()
    assert ms.evaluate(["north/cab-2"]) == {"north/cab-2": (NORMAL, 0)}
