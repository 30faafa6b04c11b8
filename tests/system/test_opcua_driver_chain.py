"""The whole chain of issue 5: simulated junction (asyncua server) -> OPC UA client driver ->
tag database -> our HMI-facing OPC UA server -> an asyncua client, over loopback."""

from __future__ import annotations

import asyncio

import pytest
from asyncua import Client, ua

from scada import quality as Q
from scada.clock import RealClock
from scada.loader import load_site
from scada.runtime import Runtime
from scada.users import hash_password
from simulators.traffic import serve_site
from tests.conftest import free_port
from tests.fixtures.opcua import endpoint, wait_until, write_site

pytestmark = pytest.mark.system


async def test_junction_to_hmi_client_values_writes_and_loss(tmp_path, stepped_clock):
    hmi_port = free_port()
    site_path = write_site(tmp_path, [
        {"id": "j-8", "profile": "junction-opcua", "area": "centre",
         "connection": {"endpoint": endpoint(free_port())}},
    ], extra={
        "opcua": {"port": hmi_port, "allow_security_none": True, "anonymous": "viewer"},
        "users": [{"name": "op1", "role": "operator", "password_hash": hash_password("pw-op", n=2**10)}],
    })
    site = load_site(str(site_path))
    sim = await serve_site(site, stepped_clock, site.by_protocol()["opcua"])  # controller time
    rt = Runtime(site, RealClock())
    try:
        rt.load_drivers(only=["opcua"])
        rt.load_services(only=["opcua"])
        await rt.start()
        await asyncio.wait_for(rt.services["opcua"].started.wait(), 30)
        await rt.drivers["opcua"].wait_connected(15)
        url = f"opc.tcp://127.0.0.1:{hmi_port}/scada"
        async with Client(url) as viewer:
            ns = await viewer.get_namespace_index("urn:scada:streetlight:tags")
            mode = viewer.get_node(ua.NodeId("centre/j-8/mode", ns))
            await wait_until(lambda: rt.tagdb.read("centre/j-8/mode").quality == Q.Good, what="Good")
            dv = await mode.read_data_value()
            assert dv.Value.Value == 0 and dv.StatusCode.is_good()
            assert dv.SourceTimestamp.timestamp() == stepped_clock.time()  # the controller's time
            state = await viewer.get_node(ua.NodeId("centre/j-8/sg01_state", ns)).read_value()
            assert state == sim.model("centre/j-8").states(stepped_clock.time())[0]

            op = Client(url)
            op.set_user("op1")
            op.set_password("pw-op")
            async with op:
                plan_cmd = op.get_node(ua.NodeId("centre/j-8/plan_cmd", ns))
                await plan_cmd.write_value(ua.Variant(3, ua.VariantType.Int32))
                assert sim.model("centre/j-8").plan_request == 3  # reached the controller
                await wait_until(lambda: rt.tagdb.read("centre/j-8/plan_cmd").value == 3, what="echo")
                assert await viewer.get_node(ua.NodeId("centre/j-8/plan_cmd", ns)).read_value() == 3
                with pytest.raises(ua.UaStatusCodeError) as ei:  # the controller's own refusal
                    await plan_cmd.write_value(ua.Variant(9, ua.VariantType.Int32))
                assert ei.value.code == Q.BadOutOfRange

            await sim.kill("centre/j-8")
            await wait_until(lambda: rt.tagdb.read("centre/j-8/mode").quality == Q.BadCommunicationError,
                             within=2.0, what="BadCommunicationError within 2 keep-alive periods")
            dv = await mode.read_data_value(raise_on_bad_status=False)
            assert dv.StatusCode.value == Q.BadCommunicationError
            await sim.restart("centre/j-8")
            await wait_until(lambda: rt.tagdb.read("centre/j-8/mode").quality == Q.Good, within=15,
                             what="Good again")
            assert (await mode.read_data_value()).StatusCode.is_good()
    finally:
        await rt.stop()
        await sim.aclose()
