"""The traffic-controller simulator seen by a plain asyncua client (no driver in between)."""

from __future__ import annotations

import pytest
from asyncua import Client, ua

from scada import quality as Q
from scada.loader import load_site
from simulators.faults import FaultError
from simulators.traffic import FAULTS, NAMESPACE, serve_site
from tests.conftest import free_port
from tests.fixtures.opcua import endpoint, wait_until, write_site

pytestmark = pytest.mark.system


@pytest.fixture
async def sim_two_junctions(tmp_path, stepped_clock):
    port = free_port()
    site = load_site(str(write_site(tmp_path, [
        {"id": "j-a", "profile": "junction-opcua-4", "area": "centre",
         "connection": {"endpoint": endpoint(port), "object": "JA"}},
        {"id": "j-b", "profile": "junction-opcua-12", "area": "centre",
         "connection": {"endpoint": endpoint(port), "object": "JB"}},
    ])))
    sim = await serve_site(site, stepped_clock, site.by_protocol()["opcua"])
    try:
        yield sim, endpoint(port)
    finally:
        await sim.aclose()


async def test_information_model_browse_read_and_source_time(sim_two_junctions, stepped_clock):
    _, url = sim_two_junctions
    async with Client(url) as c:
        ns = await c.get_namespace_index(NAMESPACE)
        names = {(await n.read_browse_name()).Name for n in await c.nodes.objects.get_children()}
        assert {"JA", "JB"} <= names  # two junctions, one server
        groups = await c.nodes.objects.get_child([f"{ns}:JB", f"{ns}:SignalGroups"])
        assert len(await groups.get_children()) == 12
        state = c.get_node(ua.NodeId("JB.SignalGroups.SG01.State", ns))
        assert state == await c.nodes.objects.get_child(
            [f"{ns}:JB", f"{ns}:SignalGroups", f"{ns}:SG01", f"{ns}:State"])
        dv = await state.read_data_value()
        assert dv.Value.VariantType == ua.VariantType.Int32
        # variables are built directly in the address space: check what a generic HMI reads
        assert await state.read_data_type() == ua.NodeId(ua.ObjectIds.Int32)
        assert (await state.read_browse_name()).Name == "State"
        sg01 = await c.nodes.objects.get_child([f"{ns}:JB", f"{ns}:SignalGroups", f"{ns}:SG01"])
        names = sorted([(await n.read_browse_name()).Name for n in await sg01.get_children()])
        assert names == ["AmberLampFailure", "GreenLampFailure", "RedLampFailure", "State"]
        assert (await state.get_parent()).nodeid == sg01.nodeid
        plan_req = c.get_node(ua.NodeId("JB.Commands.PlanRequest", ns))
        assert await plan_req.get_access_level() == {ua.AccessLevel.CurrentRead, ua.AccessLevel.CurrentWrite}
        assert await state.get_access_level() == {ua.AccessLevel.CurrentRead}
        assert dv.SourceTimestamp.timestamp() == stepped_clock.time()
        assert await c.get_node(ua.NodeId("JA.Status.Mode", ns)).read_value() == 0


async def test_commands_by_variable_and_method_with_device_status(sim_two_junctions):
    sim, url = sim_two_junctions
    async with Client(url) as c:
        ns = await c.get_namespace_index(NAMESPACE)
        req = c.get_node(ua.NodeId("JA.Commands.PlanRequest", ns))
        await req.write_value(ua.Variant(2, ua.VariantType.Int32))
        assert sim.model("centre/j-a").plan_request == 2
        with pytest.raises(ua.UaStatusCodeError) as ei:
            await req.write_value(ua.Variant(7, ua.VariantType.Int32))
        assert ei.value.code == Q.BadOutOfRange
        # a read-only status variable cannot be written
        with pytest.raises(ua.UaStatusCodeError):
            await c.get_node(ua.NodeId("JA.Status.Mode", ns)).write_value(ua.Variant(1, ua.VariantType.Int32))
        obj = c.get_node(ua.NodeId("JB", ns))
        await obj.call_method(ua.NodeId("JB.SetFlashing", ns), ua.Variant(True, ua.VariantType.Boolean))
        assert sim.model("centre/j-b").forced_flash
        assert await c.get_node(ua.NodeId("JB.Status.Flashing", ns)).read_value() is True
        sim.inject("centre/j-b", "red_lamp_failure", group=12)
        await sim.settle()
        assert await c.get_node(ua.NodeId("JB.SignalGroups.SG12.RedLampFailure", ns)).read_value() is True
        with pytest.raises(ua.UaStatusCodeError) as ei:
            await obj.call_method(ua.NodeId("JB.ResetFaults", ns))
        assert ei.value.code == Q.BadInvalidState
        # JA, on the same server, is unaffected
        assert await c.get_node(ua.NodeId("JA.Status.Flashing", ns)).read_value() is False


async def test_server_restart_fault_and_unknown_names(sim_two_junctions, stepped_clock):
    sim, url = sim_two_junctions
    with pytest.raises(FaultError, match="no simulated junction 'centre/nope'"):
        sim.inject("centre/nope", "door_open")
    with pytest.raises(ValueError, match="unknown fault 'lightning'"):
        sim.inject("centre/j-a", "lightning")
    sim.inject("centre/j-a", "server_restart", down_s=30)
    await wait_until(lambda: not sim.servers[url].running, what="server down")
    with pytest.raises(OSError):
        async with Client(url, timeout=1) as c:
            await c.get_namespace_array()
    await stepped_clock.advance(30)
    await sim.settle()
    async with Client(url) as c:
        ns = await c.get_namespace_index(NAMESPACE)
        assert await c.get_node(ua.NodeId("JA.Status.Plan", ns)).read_value() == 1


async def test_offline_silent_and_fault_bookkeeping(sim_two_junctions, stepped_clock):
    sim, url = sim_two_junctions
    assert sim.fault_names("centre/j-a") == FAULTS
    sim.inject("centre/j-a", "offline")
    sim.inject("centre/j-b", "red_lamp_failure", group=2)
    sim.inject("centre/j-b", "red_lamp_failure", group=7)
    sim.inject("centre/j-b", "silent")
    await sim.settle()
    assert {(f["path"], f["fault"]) for f in sim.active_faults()} == {
        ("centre/j-a", "offline"), ("centre/j-b", "red_lamp_failure@2"),
        ("centre/j-b", "red_lamp_failure@7"), ("centre/j-b", "silent")}
    async with Client(url) as c:
        ns = await c.get_namespace_index(NAMESPACE)
        dv = await c.get_node(ua.NodeId("JA.Status.Mode", ns)).read_data_value(raise_on_bad_status=False)
        assert dv.StatusCode.value == Q.BadNoCommunication
        with pytest.raises(ua.UaStatusCodeError) as ei:  # an offline controller takes no command
            await c.get_node(ua.NodeId("JA.Commands.PlanRequest", ns)).write_value(
                ua.Variant(2, ua.VariantType.Int32))
        assert ei.value.code == Q.BadNoCommunication
        # silent: the controller went flashing (red lamp failure) but its values do not move
        flashing = c.get_node(ua.NodeId("JB.Status.Flashing", ns))
        assert sim.model("centre/j-b").mode == 1 and await flashing.read_value() is False
        sim.clear("centre/j-b")  # every fault of j-b (the red-lamp latch stays until reset)
        sim.clear("centre/j-a", "offline")
        await sim.settle()
        assert await flashing.read_value() is True
        assert await c.get_node(ua.NodeId("JA.Status.Mode", ns)).read_value() == 0
    assert sim.active_faults() == []
