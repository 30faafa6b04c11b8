"""End to end: simulated junctions (OPC UA servers) -> OPC UA client driver -> tag database ->
our OPC UA server -> an HMI client, and an operator's write back down to the junction."""

from __future__ import annotations

import asyncio

import yaml
from asyncua import Client, ua

from scada import quality as Q
from scada.audit import AuditLog
from scada.clock import SteppedClock
from scada.users import hash_password
from tests.conftest import free_port
from tests.fixtures.opcua import traffic_rig, wait_until


async def test_junction_values_and_operator_write_through_our_server(one_endpoint):
    site_path, _ = one_endpoint
    port = free_port()
    site = yaml.safe_load(site_path.read_text())
    site["opcua"] = {"port": port, "allow_security_none": True}
    site["users"] = [{"name": "op1", "role": "operator", "password_hash": hash_password("pw", n=2**10)}]
    site_path.write_text(yaml.safe_dump(site, sort_keys=False))
    from scada.opcua.server import OpcUaService

    async with traffic_rig(site_path, SteppedClock()) as rig:
        svc = OpcUaService(rig.runtime)
        await svc.start()
        rig.runtime.add_service(svc)
        await wait_until(lambda: rig.read("centre/j-8/plan").good, 15, "junction plan reported")
        url = f"opc.tcp://127.0.0.1:{port}/scada"
        ns = svc.namespace_index
        async with Client(url, timeout=5) as c:
            dv = await c.get_node(ua.NodeId("centre/j-8/plan", ns)).read_data_value()
            local = rig.read("centre/j-8/plan")
            assert dv.Value.Value == local.value and dv.StatusCode.is_good()
            assert dv.SourceTimestamp.timestamp() == local.source_ts
            assert await c.get_node(ua.NodeId("centre/j-8/plan_cmd", ns)).read_data_type() == \
                ua.NodeId(ua.ObjectIds.Int64)
        op = Client(url, timeout=5)
        op.set_user("op1")
        op.set_password("pw")
        async with op:
            node = op.get_node(ua.NodeId("centre/j-8/plan_cmd", ns))
            await node.write_value(ua.Variant(3, ua.VariantType.Int64))
            await wait_until(lambda: rig.read("centre/j-8/plan_cmd").value == 3, 10,
                             "plan request echoed by the junction")
            for _ in range(50):  # comes back through the driver's subscription
                if (await node.read_value()) == 3:
                    break
                await asyncio.sleep(0.05)
            assert await node.read_value() == 3
            try:
                await node.write_value(ua.Variant(99, ua.VariantType.Int64))
                raise AssertionError("out-of-range plan accepted")
            except ua.UaStatusCodeError as e:
                assert e.code == Q.BadOutOfRange
        writes = [(e["target"], e["outcome"]) for e in AuditLog.read(str(rig.runtime.operations.audit.path))
                  if e["action"] == "tag.write"]
        assert writes == [("centre/j-8/plan_cmd", "Good"), ("centre/j-8/plan_cmd", "BadOutOfRange")]
