"""Simulated junctions (asyncua servers) -> OPC UA client driver -> tag database, over loopback.

The simulators run on a SteppedClock: the plan only moves when a test advances it, so values
and source timestamps are exact. Network waits are bounded polls on real time.
"""

from __future__ import annotations

import dataclasses

import pytest

from drivers.opcua.driver import OpcUaConnectError
from scada import quality as Q
from simulators.traffic import MODE_FLASHING, MODE_NORMAL, SG_FLASHING_AMBER, SG_GREEN, SG_RED
from tests.conftest import free_port
from tests.fixtures.opcua import (
    FreezableProxy,
    endpoint,
    junction_profiles,
    traffic_rig,
    wait_until,
    write_site,
)

pytestmark = pytest.mark.system

KEEPALIVE_S = 1.0  # tests.fixtures.opcua.FAST: 200 ms x 5


def _all_good(rig, device: str) -> bool:
    tags = rig.tagdb.device_tags(device)
    return bool(all(Q.is_good(int(rig.tagdb.quality[i])) for i in tags))


async def test_values_status_codes_and_source_timestamps(two_endpoints, stepped_clock):
    site, _ = two_endpoints
    async with traffic_rig(site, stepped_clock) as rig:
        for dev in ("centre/j-4", "centre/j-8", "north/j-12"):
            await wait_until(lambda dev=dev: _all_good(rig, dev), what=f"{dev} all Good")
        t0 = stepped_clock.time()
        for dev, groups in (("centre/j-4", 4), ("centre/j-8", 8), ("north/j-12", 12)):
            model = rig.sim.model(dev)
            expected = model.states(t0)
            assert len(expected) == groups
            for g in range(1, groups + 1):
                s = rig.read(f"{dev}/sg{g:02d}_state")
                assert s.value == expected[g - 1]
                assert s.quality == Q.Good
                assert s.source_ts == t0  # the controller's clock, not the server's arrival time
            assert rig.read(f"{dev}/mode").value == MODE_NORMAL
            assert rig.read(f"{dev}/plan").value == 1
            assert rig.read(f"{dev}/cycle_counter").value == 0
            assert rig.read(f"{dev}/conflict").value is False
        # at t0 phase 1 is green, the others red
        assert rig.read("centre/j-8/sg01_state").value == SG_GREEN
        assert rig.read("centre/j-8/sg02_state").value == SG_RED
        # the object name (connection.object) maps {device}: J004 serves centre/j-4
        assert rig.sim.model("centre/j-4").name == "J004"
        h = rig.driver.ctx.health
        assert h.get("connected") == 3 and h.get("sessions") == 2


async def test_plan_cycle_and_fault_changes_arrive(one_endpoint, stepped_clock):
    site, _ = one_endpoint
    async with traffic_rig(site, stepped_clock) as rig:
        await wait_until(lambda: _all_good(rig, "centre/j-8"), what="j-8 Good")
        t0 = stepped_clock.time()
        # one full cycle of plan 1 (90 s) later
        await stepped_clock.advance(90)
        await wait_until(lambda: rig.read("centre/j-8/cycle_counter").value == 1, what="cycle 1")
        assert rig.read("centre/j-8/cycle_counter").source_ts == t0 + 90
        # green moved to phase 2 at 30 s into the cycle
        await stepped_clock.advance(30)
        await wait_until(lambda: rig.read("centre/j-8/sg02_state").value == SG_GREEN, what="sg02 green")
        assert rig.read("centre/j-8/sg01_state").value == SG_RED
        # conflict -> fail-safe flashing amber, latched
        rig.sim.inject("centre/j-8", "conflict")
        await wait_until(lambda: rig.read("centre/j-8/mode").value == MODE_FLASHING, what="flashing")
        await wait_until(lambda: rig.read("centre/j-8/sg05_state").value == SG_FLASHING_AMBER,
                         what="sg05 flashing amber")
        assert rig.read("centre/j-8/conflict").value is True
        assert rig.read("centre/j-8/flashing").value is True
        assert rig.read("centre/j-8/unit_alarm_status").value & 1
        # other junction on the same server untouched
        assert rig.read("north/j-12/mode").value == MODE_NORMAL
        rig.sim.inject("centre/j-8", "clock_drift", seconds=12.5)
        await wait_until(lambda: rig.read("centre/j-8/clock_drift_s").value == 12.5, what="drift")
        # a drifting controller stamps its values with its own (wrong) clock: 12.5 s ahead is
        # beyond the site's 10 s future tolerance, so the time is clamped and the value not Good
        s = rig.read("centre/j-8/clock_drift_s")
        assert (s.source_ts, s.quality) == (stepped_clock.time(), Q.BadInvalidTimestamp)
        rig.sim.inject("centre/j-8", "clock_drift", seconds=4.0)  # within the tolerance: its time
        await wait_until(lambda: rig.read("centre/j-8/clock_drift_s").value == 4.0, what="drift 4 s")
        s = rig.read("centre/j-8/clock_drift_s")
        assert (s.source_ts, s.quality) == (stepped_clock.time() + 4.0, Q.Good)
        # a controller lost by its (shared) server: the server's Bad code, last value kept
        plan = rig.read("north/j-12/plan")
        rig.sim.inject("north/j-12", "offline")
        await wait_until(lambda: rig.read("north/j-12/plan").quality == Q.BadNoCommunication,
                         what="BadNoCommunication from the server")
        assert rig.read("north/j-12/plan").value == plan.value
        assert rig.read("centre/j-8/plan").quality == Q.Good
        rig.sim.clear("north/j-12", "offline")
        await wait_until(lambda: _all_good(rig, "north/j-12"), what="j-12 back")


async def test_writes_reach_the_device_and_come_back(one_endpoint, stepped_clock):
    site, _ = one_endpoint
    async with traffic_rig(site, stepped_clock) as rig:
        await wait_until(lambda: _all_good(rig, "north/j-12"), what="j-12 Good")
        model = rig.sim.model("north/j-12")
        assert await rig.runtime.write("north/j-12/plan_cmd", 3) == Q.Good
        assert model.plan_request == 3
        await wait_until(lambda: rig.read("north/j-12/plan_cmd").value == 3, what="plan_cmd echo")
        assert rig.read("north/j-12/plan").value == 1  # takes effect at the end of the cycle
        await stepped_clock.advance(90)
        await wait_until(lambda: rig.read("north/j-12/plan").value == 3, what="plan 3 running")
        assert await rig.runtime.write("north/j-12/force_flash_cmd", True) == Q.Good
        await wait_until(lambda: rig.read("north/j-12/mode").value == MODE_FLASHING, what="forced flash")
        assert await rig.runtime.write("north/j-12/force_flash_cmd", False) == Q.Good
        await wait_until(lambda: rig.read("north/j-12/mode").value == MODE_NORMAL, what="normal again")


async def test_device_refusals_come_back_as_its_status(one_endpoint, stepped_clock):
    site, _ = one_endpoint
    async with traffic_rig(site, stepped_clock) as rig:
        await wait_until(lambda: _all_good(rig, "centre/j-8"), what="j-8 Good")
        model = rig.sim.model("centre/j-8")
        # plan 9 is inside the profile's EU range (1-16) but the controller has plans 1-4
        assert await rig.runtime.write("centre/j-8/plan_cmd", 9) == Q.BadOutOfRange
        assert model.plan_request == 1
        # reset (a method call) refused while the conflict is still present
        rig.sim.inject("centre/j-8", "conflict")
        await wait_until(lambda: rig.read("centre/j-8/conflict").value is True, what="conflict")
        assert await rig.runtime.write("centre/j-8/reset_cmd", True) == Q.BadInvalidState
        assert model.conflict_latched
        # repaired: the same reset is accepted and the junction returns to normal
        rig.sim.clear("centre/j-8", "conflict")
        assert await rig.runtime.write("centre/j-8/reset_cmd", True) == Q.Good
        await wait_until(lambda: rig.read("centre/j-8/mode").value == MODE_NORMAL, what="normal")
        assert rig.read("centre/j-8/conflict").value is False


async def test_kill_and_restart_junction_server(two_endpoints, stepped_clock):
    site, _ = two_endpoints
    async with traffic_rig(site, stepped_clock) as rig:
        for dev in ("centre/j-4", "centre/j-8", "north/j-12"):
            await wait_until(lambda dev=dev: _all_good(rig, dev), what=f"{dev} Good")
        before = rig.read("centre/j-8/sg01_state")
        await rig.sim.kill("centre/j-8")  # server A: j-4 and j-8
        await wait_until(
            lambda: rig.read("centre/j-8/mode").quality == Q.BadCommunicationError
            and rig.read("centre/j-4/mode").quality == Q.BadCommunicationError,
            within=2 * KEEPALIVE_S, what="BadCommunicationError within 2 keep-alive periods",
        )
        lost = rig.read("centre/j-8/sg01_state")
        assert lost.value == before.value and lost.source_ts == before.source_ts  # last value kept
        assert _all_good(rig, "north/j-12")  # the other server is unaffected
        assert "centre/j-8" in rig.driver.failures()
        # the controller keeps running while its server is down
        await stepped_clock.advance(90)
        await rig.sim.restart("centre/j-8")
        await wait_until(lambda: _all_good(rig, "centre/j-8") and _all_good(rig, "centre/j-4"),
                         within=15, what="Good again after restart")
        assert rig.read("centre/j-8/cycle_counter").value == 1
        # subscriptions recreated: a change after the restart still arrives
        rig.sim.inject("centre/j-8", "door_open")
        await wait_until(lambda: rig.read("centre/j-8/door_open").value is True, what="door_open")
        assert rig.driver.ctx.health.get("reconnects") >= 1
        assert rig.driver.failures() == {}


async def test_frozen_connection_detected_by_keepalive(tmp_path, stepped_clock):
    """No socket error at all: only the missing Publish responses reveal the dead session."""
    sim_port = free_port()
    proxy = FreezableProxy(sim_port)
    await proxy.start()
    try:
        site = write_site(tmp_path, [
            {"id": "j-1", "profile": "junction-opcua-4", "area": "centre",
             "connection": {"endpoint": endpoint(proxy.port), "object": "j-1"}},
        ])
        # the simulator serves the real port; the driver goes through the proxy
        from scada.loader import load_site
        from scada.runtime import Runtime
        from simulators.traffic import serve_site

        s = load_site(str(site))
        dev = s.by_protocol()["opcua"][0]
        sim_dev = dataclasses.replace(dev, connection={**dev.connection, "endpoint": endpoint(sim_port)})
        sim = await serve_site(s, stepped_clock, [sim_dev])
        rt = Runtime(s, stepped_clock)
        try:
            rt.load_drivers(only=["opcua"])
            await rt.start()
            drv = rt.drivers["opcua"]
            await drv.wait_connected(15)
            await wait_until(lambda: rt.tagdb.read("centre/j-1/mode").quality == Q.Good, what="Good")
            proxy.frozen = True
            await wait_until(
                lambda: rt.tagdb.read("centre/j-1/mode").quality == Q.BadCommunicationError,
                # 2 keep-alive periods after the last Publish response (which came up to one
                # period before the freeze), plus slack for a loaded machine
                within=3 * KEEPALIVE_S + 1.0, what="BadCommunicationError from keep-alive silence",
            )
            assert "Publish" in (drv.sessions[0].last_error or "")
            proxy.frozen = False
            await wait_until(lambda: rt.tagdb.read("centre/j-1/mode").quality == Q.Good,
                             within=15, what="Good after unfreezing")
        finally:
            await rt.stop()
            await sim.aclose()
    finally:
        await proxy.aclose()


async def test_unreachable_devices_listed_and_do_not_delay_others(tmp_path, stepped_clock):
    dead1, dead2, live = free_port(), free_port(), free_port()
    # a device that accepts TCP but never answers (its connect attempt runs into the timeout):
    # a frozen proxy in front of the live simulator
    hung = FreezableProxy(live)
    hung.frozen = True
    await hung.start()
    site = write_site(tmp_path, [
        {"id": "j-live", "profile": "junction-opcua-4", "area": "centre",
         "connection": {"endpoint": endpoint(live)}},
        {"id": "j-dead1", "profile": "junction-opcua-4", "area": "centre",
         "connection": {"endpoint": endpoint(dead1)}},
        {"id": "j-dead2", "profile": "junction-opcua-4", "area": "north",
         "connection": {"endpoint": endpoint(dead2)}},
        {"id": "j-hung", "profile": "junction-opcua-4", "area": "north",
         "connection": {"endpoint": endpoint(hung.port)}},
    ])
    try:
        async with traffic_rig(site, stepped_clock, simulate=["centre/j-live"], connect=False) as rig:
            # the live junction is served while the hung one is still in its connect timeout
            await wait_until(lambda: _all_good(rig, "centre/j-live"), within=4, what="live Good")
            with pytest.raises(OpcUaConnectError) as ei:
                await rig.driver.wait_connected(1)
            assert set(ei.value.failures) == {"centre/j-dead1", "north/j-dead2", "north/j-hung"}
            assert "centre/j-dead1" in str(ei.value) and "north/j-dead2" in str(ei.value)
            assert "ConnectionRefused" in ei.value.failures["centre/j-dead1"]
            assert "Refused" not in ei.value.failures["north/j-hung"]  # still waiting, not refused
            assert rig.read("centre/j-dead1/mode").quality == Q.BadCommunicationError
            assert await rig.runtime.write("centre/j-dead1/plan_cmd", 2) == Q.BadCommunicationError
    finally:
        await hung.aclose()


async def test_browse_paths_and_unknown_nodes(tmp_path, stepped_clock):
    port = free_port()
    profiles = junction_profiles()
    prof = profiles["junction-opcua-4"]
    for p in prof["points"]:
        if p["name"] == "mode":
            p["source"] = {"browse_path": "{device}/Status/Mode"}
        if p["name"] == "detector_fault":
            p["source"] = {"node": "{device}.Alarms.NoSuchThing"}
        if p["name"] == "door_open":
            p["source"] = {"browse_path": "{device}/Alarms/NoSuchDoor"}
    site = write_site(tmp_path, [
        {"id": "j-1", "profile": "junction-opcua-4", "area": "centre",
         "connection": {"endpoint": endpoint(port)}},
    ], profiles=profiles)
    async with traffic_rig(site, stepped_clock) as rig:
        await wait_until(lambda: rig.read("centre/j-1/mode").quality == Q.Good, what="mode via browse path")
        assert rig.read("centre/j-1/mode").value == MODE_NORMAL
        await wait_until(lambda: rig.read("centre/j-1/detector_fault").quality == Q.BadNodeIdUnknown,
                         what="unknown node marked")
        assert Q.is_bad(rig.read("centre/j-1/door_open").quality)
        assert rig.read("centre/j-1/plan").quality == Q.Good
