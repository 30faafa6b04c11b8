"""The DALI gateway simulator speaks the shared fault API (simulators/faults.py): the same
``inject``/``clear`` calls, the same control channel and ``scada sim --fault`` as the Modbus
cabinets, verified through Mosquitto and the real MQTT driver."""

from __future__ import annotations

import pytest

from scada import quality as Q
from simulators.faults import FaultError, FaultRouter
from tests.fixtures.mqtt import DaliSystem, eventually, load_dali_site

pytestmark = pytest.mark.system

GW = "centre/gw-a"


@pytest.fixture
async def system(tmp_path, mosquitto, stepped_clock):
    site = load_dali_site(tmp_path, mosquitto.address, {"gw-a": [(1, 8)]})
    s = DaliSystem(site, stepped_clock)
    try:
        await s.start()
        await s.tick(1)
        await eventually(lambda: all(s.db.read(f"{GW}/lum-{n:03d}/level").good for n in range(1, 9)),
                         what="first state of every luminaire")
        yield s
    finally:
        await s.stop()


async def test_luminaire_and_gateway_faults_through_the_shared_api(system):
    db, sims = system.db, system.sims
    sims.inject(f"{GW}/lum-003", "lamp_failure")
    await system.tick(1)
    await eventually(lambda: db.read(f"{GW}/lum-003/lamp_failure").value is True, what="lamp failure")
    assert db.read(f"{GW}/lum-004/lamp_failure").value is False
    assert sims.active_faults() == [{"path": f"{GW}/lum-003", "fault": "lamp_failure", "params": {}}]
    sims.clear(f"{GW}/lum-003")
    await system.tick(1)
    await eventually(lambda: db.read(f"{GW}/lum-003/lamp_failure").value is False, what="cleared")
    assert sims.active_faults() == []

    # a gateway fault: the TCP connection drops, the broker fires the Last Will
    sims.inject(GW, "disconnect")
    await eventually(lambda: db.read(f"{GW}/lum-001/power_w").quality == Q.BadCommunicationError,
                     what="gateway lost")
    sims.clear(GW, "disconnect")
    await sims["gw-a"].conn.wait_connected(10)
    await system.tick(1)
    await eventually(lambda: db.read(f"{GW}/lum-001/power_w").quality == Q.Good, what="gateway back")


async def test_unknown_faults_and_devices_are_clear_errors(system):
    sims = system.sims
    with pytest.raises(FaultError, match="unknown fault 'meltdown'"):
        sims.inject(f"{GW}/lum-001", "meltdown")
    with pytest.raises(FaultError, match="is a gateway fault"):
        sims.inject(f"{GW}/lum-001", "disconnect")
    with pytest.raises(FaultError, match="no simulated DALI luminaire"):
        sims.inject("centre/gw-zz/lum-001", "lamp_failure")
    assert "lamp_failure" in sims.fault_names(GW) and "disconnect" in sims.fault_names(GW)
    # the control channel routes by device and answers an error instead of failing
    router = FaultRouter(system.site, {"mqtt": sims})
    assert router.handle_request({"op": "inject", "path": f"{GW}/lum-002", "fault": "silent"}) == {"ok": True}
    ans = router.handle_request({"op": "inject", "path": f"{GW}/lum-002", "fault": "nope"})
    assert ans["ok"] is False and "unknown fault 'nope'" in ans["error"]
