"""The acknowledge / shelve cells of the role matrix over the wire: each role calls the alarm
engine's Part 9 methods (Acknowledge, TimedShelve) on our server; allowed and denied calls are
both audited by the alarm service."""

from __future__ import annotations

import asyncio

from asyncua import Client, ua

from scada.audit import AuditLog
from scada.clock import RealClock
from scada.loader import load_site
from scada.opcua.alarms import SUFFIX
from scada.operations import allows
from scada.runtime import Runtime
from scada.tags import Batch
from scada.users import hash_password
from tests.conftest import free_port
from tests.fixtures.alarms import write_site
from tests.fixtures.hmi import PASSWORDS, ROLES

ACK = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)
SHELVE = ua.NodeId(ua.ObjectIds.AlarmConditionType_ShelvingState_TimedShelve)


async def _call(node, method, *args) -> int:
    for _ in range(100):  # the condition node appears once the engine's event is processed
        try:
            await node.call_method(method, *args)
            return ua.StatusCodes.Good
        except ua.UaStatusCodeError as e:
            if e.code != ua.StatusCodes.BadNodeIdUnknown:
                return e.code
        await asyncio.sleep(0.05)
    return ua.StatusCodes.BadNodeIdUnknown


async def test_acknowledge_and_shelve_by_role_over_the_wire(tmp_path):
    port = free_port()
    users = "\n".join(f"  - {{name: {n}, role: {ROLES[n]}, password_hash: '{hash_password(pw, n=2**10)}'}}"
                      for n, pw in PASSWORDS.items())
    extra = f"opcua: {{port: {port}, allow_security_none: true}}\nusers:\n{users}\n"
    site = load_site(write_site(tmp_path, nlum=4, extra=extra), validate_drivers=False)
    rt = Runtime(site, RealClock())
    rt.load_services(only=["alarms", "opcua"])
    await rt.start()
    try:
        svc = rt.services["opcua"]
        await asyncio.wait_for(svc.started.wait(), 30)
        db = rt.tagdb
        lums = [f"centre/cab-1/lum-0{k}" for k in range(1, 5)]
        values = {"centre/cab-1/comm_ok": 1.0, "centre/cab-1/contactor": 1.0}
        values.update({f"{lum}/level": 100.0 for lum in lums})
        values.update({f"{lum}/lamp_failure": 0.0 for lum in lums})
        db.apply(Batch.of([db.index(p) for p in values], list(values.values()), 0, rt.clock.time()))
        db.apply(Batch.of([db.index(f"{lum}/lamp_failure") for lum in lums], [1.0] * 4, 0, rt.clock.time()))
        url = f"opc.tcp://127.0.0.1:{port}/scada"
        for (user, pw), lum in zip(PASSWORDS.items(), lums, strict=True):
            role = ROLES[user]
            c = Client(url, timeout=10)
            c.set_user(user)
            c.set_password(pw)
            async with c:
                cond = c.get_node(ua.NodeId(f"{lum}/lamp_failure{SUFFIX}", svc.namespace_index))
                code = await _call(cond, ACK, ua.Variant(b"", ua.VariantType.ByteString),
                                   ua.LocalizedText(f"ack by {user}"))
                want = ua.StatusCodes.Good if allows(role, "alarm.acknowledge") else ua.StatusCodes.BadUserAccessDenied
                assert code == want, (user, code)
                code = await _call(cond, SHELVE, ua.Variant(60_000.0, ua.VariantType.Double),
                                   ua.LocalizedText(f"shelved by {user}"))
                want = ua.StatusCodes.Good if allows(role, "alarm.shelve") else ua.StatusCodes.BadUserAccessDenied
                assert code == want, (user, code)
        audit = AuditLog.read(str(rt.operations.audit.path))
        seen = {(e["user"], e["action"], e["outcome"]) for e in audit}
        for user, role in ROLES.items():
            for action in ("alarm.acknowledge", "alarm.shelve"):
                outcome = "Good" if allows(role, action) else "BadUserAccessDenied"
                assert (user, action, outcome) in seen, (user, action, outcome)
    finally:
        await rt.stop()
