"""End to end: the project's cabinet simulators (simulators/cabinet.py, pymodbus servers on free
loopback ports) + the Modbus driver + the tag database, on one stepped clock.

Values, units and scaling come from config/profiles/cabinet-modbus.yaml and
luminaire-modbus.yaml; injected faults must show with the right status within 2 poll periods of
the affected group and clear after.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from scada import quality as Q
from scada.loader import load_site
from scada.runtime import Runtime
from simulators.city import start_simulators
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]

SITE = """
site: {{name: e2e, latitude: 47.32, longitude: 5.04}}
areas: [{{id: centre}}]
include:
  - {profiles}/cabinet-modbus.yaml
  - {profiles}/luminaire-modbus.yaml
drivers:
  modbus: {{timeout: 0.5, retries: 1, connect_timeout: 0.5, demote_after: 3, demote_base: 2, demote_cap: 4, startup_spread: 0}}
devices:
  - id: cab-01
    profile: cabinet-modbus
    area: centre
    connection: {{host: 127.0.0.1, port: {p1}}}
    children: [{{profile: luminaire-modbus, count: 10, attrs: {{nominal_w: 60}}}}]
  - id: cab-02
    profile: cabinet-modbus
    area: centre
    connection: {{host: 127.0.0.1, port: {p2}}}
    children: [{{profile: luminaire-modbus, count: 6, attrs: {{nominal_w: 40}}}}]
"""

STATUS, REPORT = 2.0, 60.0


@pytest.fixture
async def city(tmp_path, stepped_clock):
    path = tmp_path / "site.yaml"
    path.write_text(SITE.format(profiles=REPO / "config" / "profiles", p1=free_port(), p2=free_port()),
                    encoding="utf-8")
    site = load_site(path)
    sims = await start_simulators(site, stepped_clock, ["modbus"])
    rt = Runtime(site, stepped_clock)
    rt.load_drivers(only=["modbus"])
    drv = rt.drivers["modbus"]
    task = asyncio.create_task(drv.run(), name="e2e-modbus-driver")
    city = City(rt, drv, sims["modbus"], stepped_clock)
    await city.step(0)
    try:
        yield city
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await drv.aclose()
        await sims.aclose()


class City:
    def __init__(self, rt, drv, sim, clock):
        self.rt, self.drv, self.sim, self.clock = rt, drv, sim, clock

    async def step(self, seconds: float = STATUS, n: int = 1) -> None:
        for _ in range(n):
            await self.clock.advance(seconds)
            await self.drv.wait_idle()
            await self.sim.settle()
            await self.clock.advance(0)
            await self.drv.wait_idle()

    async def until(self, path: str, pred, max_steps: int, seconds: float = STATUS) -> int:
        """Steps of ``seconds`` taken until ``pred(sample)`` holds (fails after ``max_steps``)."""
        for k in range(max_steps + 1):
            if pred(self.read(path)):
                return k
            await self.step(seconds)
        raise AssertionError(f"{path}: condition not met within {max_steps} steps; now {self.read(path)}")

    def read(self, path: str):
        return self.rt.tagdb.read(path)


def steps_per(period: float) -> int:
    return int(period / STATUS)


async def test_values_units_and_scaling_match_the_simulator(city):
    await city.step()
    cab = city.read("centre/cab-01/voltage_l1")
    assert cab.quality == Q.Good and 200 < cab.value < 260
    assert city.rt.tagdb.info("centre/cab-01/voltage_l1").point.unit == "V"
    assert city.read("centre/cab-01/contactor").quality == Q.Good
    assert city.read("centre/cab-01/energy_wh").quality == Q.Good
    # every luminaire of both cabinets, against the simulator's own model
    w = city.sim.world
    bank = w.bank
    for cab_id, n in (("cab-01", 10), ("cab-02", 6)):
        for k in range(1, n + 1):
            path = f"centre/{cab_id}/lum-{k:02d}"
            _, i = w.lum_path[path]
            for point in ("level", "power_w", "lamp_failure", "status"):
                assert city.read(f"{path}/{point}").quality == Q.Good, (path, point)
            # read at the first poll (t0); the model still holds the same state (nothing moved)
            assert city.read(f"{path}/power_w").value == pytest.approx(float(bank.power_w[i]), abs=0.051)
            assert city.read(f"{path}/level").value == pytest.approx(float(bank.level[i]), abs=0.051)
    assert city.rt.tagdb.info("centre/cab-02/lum-03/power_w").point.unit == "W"
    # the 3-phase meter sums its luminaires plus losses: consistent with the luminaire tags
    lum_sum = sum(city.read(f"centre/cab-01/lum-{k:02d}/power_w").value for k in range(1, 11))
    assert city.read("centre/cab-01/power_w").value >= lum_sum * 0.99


async def test_lamp_failure_shows_within_two_report_periods_and_clears(city):
    path = "centre/cab-01/lum-03/lamp_failure"
    assert city.read(path).value is False
    city.sim.inject("centre/cab-01/lum-03", "lamp_failure")
    k = await city.until(path, lambda s: s.value is True and s.quality == Q.Good, 2 * steps_per(REPORT))
    assert k <= 2 * steps_per(REPORT)
    assert city.read("centre/cab-01/lum-04/lamp_failure").value is False
    city.sim.clear("centre/cab-01/lum-03", "lamp_failure")
    await city.until(path, lambda s: s.value is False, 2 * steps_per(REPORT))


async def test_cabinet_offline_marks_cabinet_and_luminaires_then_recovers(city):
    lum = "centre/cab-01/lum-05/power_w"
    last = city.read(lum)
    city.sim.inject("centre/cab-01", "offline")
    k = await city.until("centre/cab-01/voltage_l1", lambda s: s.quality == Q.BadCommunicationError, 2)
    assert k <= 2
    lost = city.read(lum)
    assert lost.quality == Q.BadCommunicationError
    assert lost.value == last.value and lost.source_ts == last.source_ts
    assert city.read("centre/cab-02/voltage_l1").quality == Q.Good
    assert city.read("centre/cab-02/lum-01/power_w").quality == Q.Good
    city.sim.clear("centre/cab-01", "offline")
    await city.until("centre/cab-01/voltage_l1", lambda s: s.quality == Q.Good, 4)
    # the luminaires' 60 s group is re-read at once after recovery, not a minute later
    await city.step(0)
    assert city.read(lum).quality == Q.Good


@pytest.mark.parametrize("fault, params", [("silent", {}), ("slow", {"delay": 0.1})])
async def test_silent_or_slow_cabinet_does_not_delay_the_others(city, fault, params):
    other = next(s for s in city.drv.stations if s.devices[0].id == "cab-02")
    me = next(s for s in city.drv.stations if s.devices[0].id == "cab-01")
    polls, mine = other.groups[STATUS].polls, me.groups[STATUS].polls
    city.sim.inject("centre/cab-01", fault, **params)
    if fault == "silent":
        k = await city.until("centre/cab-01/voltage_l1", lambda s: s.quality == Q.BadCommunicationError, 2)
    else:
        k = 0
    await city.step(n=5)
    # the others: one poll per period, none skipped or late (time runs on the stepped clock, so
    # "late" can only come from a poll waiting behind the faulty cabinet)
    assert other.groups[STATUS].polls - polls == k + 5
    assert city.read("centre/cab-02/voltage_l1").quality == Q.Good
    assert city.drv.ctx.health.get("late_cycles") == 0
    if fault == "slow":  # slower than usual but within the timeout: still polled, still Good
        assert me.groups[STATUS].polls - mine == 5
        assert city.read("centre/cab-01/voltage_l1").quality == Q.Good
    city.sim.clear("centre/cab-01", fault)
    await city.until("centre/cab-01/voltage_l1", lambda s: s.quality == Q.Good, 4)


@pytest.mark.parametrize("code, status", [(0x04, Q.BadDeviceFailure), (0x06, Q.UncertainLastUsableValue),
                                          (0x02, Q.BadConfigurationError)])
async def test_exception_answers_show_their_status_and_clear(city, code, status):
    city.sim.inject("centre/cab-02", "exception", code=code)
    await city.until("centre/cab-02/voltage_l1", lambda s: s.quality == status, 2)
    city.sim.clear("centre/cab-02", "exception")
    await city.until("centre/cab-02/voltage_l1", lambda s: s.quality == Q.Good, 2)
    assert city.read("centre/cab-01/voltage_l1").quality == Q.Good


async def test_unreachable_luminaire_only_that_one_goes_bad(city):
    city.sim.inject("centre/cab-01/lum-07", "unreachable")
    await city.until("centre/cab-01/lum-07/power_w",
                     lambda s: s.quality == Q.BadCommunicationError, 2 * steps_per(REPORT))
    for other in ("lum-06", "lum-08", "lum-01", "lum-10"):
        assert city.read(f"centre/cab-01/{other}/power_w").quality == Q.Good, other
    assert city.read("centre/cab-01/comm_ok").value is False
    city.sim.clear("centre/cab-01/lum-07", "unreachable")
    await city.until("centre/cab-01/lum-07/power_w", lambda s: s.quality == Q.Good, 2 * steps_per(REPORT))


async def test_group_level_write_reaches_the_luminaires(city):
    assert await city.rt.write("centre/cab-02/group_level", 40.0) == Q.Good
    await city.step(0)
    assert city.read("centre/cab-02/group_level").value == pytest.approx(40.0)
    await city.until("centre/cab-02/lum-02/level_cmd", lambda s: s.value == pytest.approx(40.0),
                     2 * steps_per(REPORT))
    assert await city.rt.write("centre/cab-02/lum-02/level_cmd", 75.5) == Q.Good
    await city.step(0)
    assert city.read("centre/cab-02/lum-02/level_cmd").value == pytest.approx(75.5)
    assert city.drv.ctx.health.get("write_mismatch") == 0
    assert np.all(city.rt.tagdb.quality[city.drv.stations[0].tags] == Q.Good)


@pytest.mark.parametrize("fault, point", [("door_open", "door_open"), ("breaker_trip", "breaker_tripped")])
async def test_cabinet_contacts_show_within_two_status_periods(city, fault, point):
    path = f"centre/cab-02/{point}"
    assert city.read(path).value is False
    city.sim.inject("centre/cab-02", fault)
    k = await city.until(path, lambda s: s.value is True and s.quality == Q.Good, 2)
    assert k <= 2
    city.sim.clear("centre/cab-02", fault)
    await city.until(path, lambda s: s.value is False, 2)
