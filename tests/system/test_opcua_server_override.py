"""Schedule overrides over OPC UA are an engineer's action (role `override`), audited with the
session's user, and the writer sees who wrote (Runtime.write(user=...))."""

from __future__ import annotations

from asyncua import ua

from scada import quality as Q
from scada.audit import AuditLog
from scada.runtime import current_user
from scada.tags import PointDef, PointSchema


async def test_override_tags_need_the_engineer_role(hmi):
    rt = hmi.runtime
    first = rt.tagdb.add_device("_schedules/centre", PointSchema("override-test", (
        PointDef("override_level", "float", "%", access="rw", eu_low=0, eu_high=100),)))
    seen: list[tuple[str | None, float]] = []

    async def writer(i: int, value):
        seen.append((current_user(), value))
        return Q.Good

    rt.register_writer("_schedules/centre", writer)
    path = "_schedules/centre/override_level"
    assert rt.tagdb.index(path) == first
    dv = ua.DataValue(ua.Variant(100.0, ua.VariantType.Double))

    async def write_as(user: str) -> int:
        async with hmi.client(user) as c:
            params = ua.WriteParameters()
            params.NodesToWrite = [ua.WriteValue(NodeId=ua.NodeId(path, hmi.ns),
                                                 AttributeId=ua.AttributeIds.Value, Value=dv)]
            return (await c.uaclient.write(params))[0].value

    assert await write_as("op1") == Q.BadUserAccessDenied
    assert await write_as("eng1") == Q.Good
    assert seen == [("eng1", 100.0)]
    entries = [e for e in AuditLog.read(str(hmi.audit_path)) if e.get("target") == path]
    assert [(e["user"], e["outcome"]) for e in entries] == [
        ("op1", "BadUserAccessDenied"), ("eng1", "Good")]
