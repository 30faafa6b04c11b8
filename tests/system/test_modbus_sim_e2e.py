"""End to end: simulated cabinets -> Modbus driver -> tag database, on a SteppedClock.

The simulator serves the site's cabinets on free loopback ports; the runtime's Modbus driver
polls them through the shipped profiles (config/profiles/*-modbus.yaml). Values, units,
scaling and word orders are checked against the simulator's own model, then writes and faults
are followed through to the tags' values and status codes.
"""

from __future__ import annotations

import pytest

from scada import quality as Q
from simulators.cabinet import LINE_LOSS, serve_site
from tests.conftest import free_port
from tests.system.test_modbus_driver import Harness
from tests.system.test_modbus_sim import write_site

pytestmark = pytest.mark.system

# Timeouts are real seconds: 2 s, not 0.25 s, so a busy machine's slow answer is not taken
# for a silent device (it made the historian e2e test fail under CPU load, issue 15); a silent
# device costs 2 s of real time per poll.
DRIVER_OPTS = """drivers:
  modbus: {timeout: 2.0, retries: 0, connect_timeout: 2.0, demote_after: 2, demote_base: 4, demote_cap: 8, startup_spread: 0}
"""


class E2E(Harness):
    """The Modbus driver harness of test_modbus_driver.py, with our simulators as the devices."""

    def __init__(self, tmp_path, clock):
        super().__init__(write_site(tmp_path, free_port(), free_port(), DRIVER_OPTS), clock)
        self.sim = None

    async def __aenter__(self) -> E2E:
        self.sim = await serve_site(self.site, self.clock, self.site.by_protocol()["modbus"])
        try:
            return await super().__aenter__()
        except BaseException:
            await self.sim.aclose()
            raise

    async def __aexit__(self, *exc: object) -> None:
        try:
            await super().__aexit__(*exc)
        finally:
            await self.sim.aclose()

    def tag(self, path: str):
        return self.read(path)

    def lum(self, path: str) -> int:
        return self.sim.world.lum_path[path][1]


@pytest.fixture
async def e2e(tmp_path, stepped_clock):
    async with E2E(tmp_path, stepped_clock) as h:
        yield h


async def test_values_units_scaling_and_word_orders(e2e):
    await e2e.step(2.0)
    w = e2e.sim.world
    cab = w.by_path["a/c1"]
    v = e2e.tag("a/c1/voltage_l1")
    assert v.quality == Q.Good and v.value == pytest.approx(cab.phase_v[0], abs=0.05)
    assert e2e.rt.tagdb.info("a/c1/voltage_l1").point.unit == "V"
    expected_w = w.bank.power_w[cab.lum].sum() * (1 + LINE_LOSS) + 6.0
    assert e2e.tag("a/c1/power_w").value == pytest.approx(expected_w, abs=0.1)
    assert e2e.tag("a/c1/energy_wh").value == round(cab.meter_wh)      # low word first
    assert e2e.tag("a/c1/contactor").value is True
    assert e2e.tag("a/c1/door_open").value is False
    assert e2e.tag("a/c1/comm_ok").value is True
    assert e2e.tag("a/c3/luminaires_faulty").value == 0                 # unit 7 on shared port
    i = e2e.lum("a/c1/l14")
    b = w.bank
    assert e2e.tag("a/c1/l14/level").value == pytest.approx(100.0)
    assert e2e.tag("a/c1/l14/power_w").value == pytest.approx(b.power_w[i], abs=0.05)
    assert e2e.tag("a/c1/l14/energy_wh").value == pytest.approx(b.energy_wh[i], abs=0.05)
    assert e2e.tag("a/c1/l14/operating_h").value == pytest.approx(b.operating_h[i], abs=0.001)
    assert e2e.tag("a/c1/l14/starts").value == 1
    assert e2e.tag("a/c1/l14/driver_temp_c").value == pytest.approx(b.driver_temp_c[i], abs=0.25)  # deadband 0.2
    assert e2e.tag("a/c1/l14/lamp_failure").value is False
    assert e2e.tag("a/c3/l32/level").quality == Q.Good


async def test_group_level_write_reaches_every_luminaire(e2e):
    await e2e.step(2.0)
    status = await e2e.rt.write("a/c1/group_level", 40.0)
    assert status == Q.Good
    await e2e.step(60.0)
    assert e2e.tag("a/c1/group_level").value == pytest.approx(40.0)
    for n in (1, 12, 20):
        assert e2e.tag(f"a/c1/l{n:02d}/level").value == pytest.approx(40.0)
        assert e2e.tag(f"a/c1/l{n:02d}/level_cmd").value == pytest.approx(40.0)
    assert e2e.tag("a/c2/l01/level").value == pytest.approx(100.0)


async def test_faults_show_on_tags_and_clear(e2e):
    await e2e.step(60.0)
    e2e.sim.inject("a/c1/l03", "lamp_failure")
    e2e.sim.inject("a/c1", "door_open")
    await e2e.step(60.0)
    assert e2e.tag("a/c1/l03/lamp_failure").value is True
    assert e2e.tag("a/c1/l03/level").value == 0.0
    assert e2e.tag("a/c1/door_open").value is True
    # a silent cabinet: its tags go Bad (last value kept), the others stay Good
    e2e.sim.inject("a/c1", "silent")
    await e2e.step(2.0, n=2)
    v = e2e.tag("a/c1/voltage_l1")
    assert v.quality == Q.BadCommunicationError and v.value > 200
    assert e2e.tag("a/c3/voltage_l1").quality == Q.Good
    e2e.sim.clear("a/c1")
    await e2e.step(10.0, n=2)
    assert e2e.tag("a/c1/voltage_l1").quality == Q.Good
    assert e2e.tag("a/c1/door_open").value is False
    await e2e.step(60.0)
    assert e2e.tag("a/c1/l03/lamp_failure").value is False


async def test_unreachable_luminaire_goes_bad_alone(e2e):
    await e2e.step(60.0)
    e2e.sim.inject("a/c1/l05", "unreachable")
    await e2e.step(60.0, n=2)
    assert e2e.tag("a/c1/l05/level").quality == Q.BadCommunicationError
    assert e2e.tag("a/c1/l04/level").quality == Q.Good
    assert e2e.tag("a/c1/l06/level").quality == Q.Good
    assert e2e.tag("a/c1/comm_ok").value is False
    e2e.sim.clear("a/c1/l05", "unreachable")
    await e2e.step(60.0, n=2)
    assert e2e.tag("a/c1/l05/level").quality == Q.Good
