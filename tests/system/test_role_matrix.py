"""The role matrix walked cell by cell through every front end (issues 15 and 18).

One table (:mod:`scada.operations.roles`) decides who may do what; ``docs/opcua.md`` prints it.
This test reads the table, performs every action as every role (and anonymously) over OPC UA
and through the real CLI (separate processes, as an operator runs them), and checks that the
answers agree with the table: refused with BadUserAccessDenied exactly where the table says no.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from asyncua import Client, ua

from scada import quality as Q
from scada.audit import AuditLog
from scada.clock import RealClock
from scada.loader import load_site
from scada.opcua.alarms import ALARMS_OBJECT, SUFFIX
from scada.operations import roles as R
from scada.runtime import Runtime
from scada.tags import Batch
from scada.users import hash_password
from tests.conftest import free_port
from tests.fixtures.alarms import write_site
from tests.fixtures.hmi import PASSWORDS, ROLES

REPO = Path(__file__).resolve().parents[2]
WHO = [None, *PASSWORDS]  # anonymous, then one user per role
NLUM = 2 * 2 * 5  # two alarms per caller, five callers, OPC UA and CLI


def role_of(user: str | None) -> str:
    return ROLES[user] if user else "viewer"  # the site maps anonymous to viewer


@pytest.fixture
async def server(tmp_path):
    port = free_port()
    users = "\n".join(f"  - {{name: {n}, role: {ROLES[n]}, password_hash: '{hash_password(pw, n=2**10)}'}}"
                      for n, pw in PASSWORDS.items())
    extra = f"opcua: {{port: {port}, allow_security_none: true, anonymous: viewer}}\nusers:\n{users}\n"
    site = load_site(write_site(tmp_path, nlum=NLUM, extra=extra), validate_drivers=False)
    rt = Runtime(site, RealClock())
    rt.load_services(only=["alarms", "opcua"])

    async def echo(i: int, value):  # behaves like a device: accepts, reports on the next poll
        rt.tagdb.apply(Batch.of([i], [value], Q.Good, rt.clock.time()))
        return Q.Good

    rt.register_writer("centre/cab-1", echo)
    await rt.start()
    try:
        await asyncio.wait_for(rt.services["opcua"].started.wait(), 30)
        db = rt.tagdb
        lums = [f"centre/cab-1/lum-{k:02d}" for k in range(1, NLUM + 1)]
        vals = {"centre/cab-1/comm_ok": 1.0, "centre/cab-1/contactor": 1.0, "centre/cab-1/power_w": 4.0}
        vals.update({f"{x}/level": 100.0 for x in lums})
        vals.update({f"{x}/lamp_failure": 0.0 for x in lums})
        db.apply(Batch.of([db.index(p) for p in vals], list(vals.values()), Q.Good, rt.clock.time()))
        db.apply(Batch.of([db.index(f"{x}/lamp_failure") for x in lums], [1.0] * NLUM, Q.Good, rt.clock.time()))
        engine = rt.services["alarms"].engine
        for _ in range(300):
            if all(engine.view(engine.find(f"{x}/lamp_failure")).active for x in lums):
                break
            await asyncio.sleep(0.02)
        yield rt, f"opc.tcp://127.0.0.1:{port}/scada", rt.services["opcua"].namespace_index
    finally:
        await rt.stop()


async def _code(coro) -> int:
    try:
        await coro
    except ua.UaStatusCodeError as e:
        return e.code
    return Q.Good


async def _call(c: Client, obj: ua.NodeId, method: ua.NodeId, *args) -> int:
    for _ in range(100):
        code = await _code(c.get_node(obj).call_method(method, *args))
        if code != Q.BadNodeIdUnknown:
            return code
        await asyncio.sleep(0.05)
    return Q.BadNodeIdUnknown


def _alarm(k: int) -> str:
    return f"centre/cab-1/lum-{k:02d}/lamp_failure"


async def opcua_attempts(c: Client, ns: int, slot: int) -> dict[str, int]:
    """Perform every action once over OPC UA; return action -> status code. ``slot`` picks
    alarms of this caller so that one caller's success does not change another's answer."""
    S = ua.VariantType.String
    out: dict[str, int] = {}
    dv = await c.get_node(ua.NodeId("centre/cab-1/power_w", ns)).read_data_value(raise_on_bad_status=False)
    out["read"] = dv.StatusCode.value
    out["tag.write"] = await _code(c.get_node(ua.NodeId("centre/cab-1/contactor_cmd", ns)).write_value(
        ua.Variant(True, ua.VariantType.Boolean)))
    a1, a2 = ua.NodeId(_alarm(2 * slot + 1) + SUFFIX, ns), ua.NodeId(_alarm(2 * slot + 2) + SUFFIX, ns)
    out["alarm.acknowledge"] = await _call(c, a1, ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge),
                                           ua.Variant(b"", ua.VariantType.ByteString), ua.LocalizedText("ack"))
    out["alarm.comment"] = await _call(c, a1, ua.NodeId(ua.ObjectIds.ConditionType_AddComment),
                                       ua.Variant(b"", ua.VariantType.ByteString), ua.LocalizedText("note"))
    out["alarm.shelve"] = await _call(c, a2, ua.NodeId(ua.ObjectIds.AlarmConditionType_ShelvingState_TimedShelve),
                                      ua.Variant(60_000.0, ua.VariantType.Double), ua.LocalizedText("shelve"))
    out["device.out_of_service"] = await _call(
        c, ua.NodeId(ALARMS_OBJECT, ns), ua.NodeId(ALARMS_OBJECT + ".SetOutOfService", ns),
        ua.Variant("north/cab-2", S), ua.Variant(False, ua.VariantType.Boolean), ua.Variant("matrix", S))
    out["schedule.override"] = await _call(
        c, ua.NodeId("#Scada", ns), ua.NodeId("#Scada.SetOverride", ns), ua.Variant(80.0, ua.VariantType.Double),
        ua.Variant(10.0, ua.VariantType.Double), ua.Variant("matrix", S), ua.Variant("centre", S),
        ua.Variant("", S), ua.Variant("", S))
    out["address_space.edit"] = await _code(c.nodes.objects.add_folder(ua.NodeId(f"m{slot}", 1), f"1:m{slot}"))
    req = ua.HistoryUpdateRequest()
    req.Parameters = ua.HistoryUpdateParameters(HistoryUpdateDetails=[])
    from asyncua.ua.ua_binary import struct_from_binary

    try:
        data = await c.uaclient._send_request(req)
        out["history.update"] = struct_from_binary(ua.HistoryUpdateResponse, data).ResponseHeader.ServiceResult.value
    except ua.UaStatusCodeError as e:
        out["history.update"] = e.code
    return out


#: the CLI command performing each action (None: no CLI for it); {a} = an alarm of the caller
CLI = {
    "read": ["tags", "centre/cab-1/power_w"],
    "tag.write": ["write", "centre/cab-1/contactor_cmd", "true"],
    "alarm.acknowledge": ["ack", "{a1}", "-m", "cli ack"],
    "alarm.comment": ["comment", "{a1}", "-m", "cli note"],
    "alarm.shelve": ["shelve", "{a2}", "-d", "10min", "-m", "cli shelve"],
    "device.out_of_service": ["out-of-service", "north/cab-2", "--back", "-m", "cli"],
    "schedule.override": ["schedule", "override", "set", "--level", "80", "--minutes", "10", "--reason", "cli",
                          "--area", "centre"],
}


async def cli_attempt(url: str, user: str | None, args: list[str]) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "SCADA_OPCUA_PASSWORD"}
    cmd = [sys.executable, "-m", "cli", *args, "--endpoint", url]
    if user:
        cmd += ["--user", user]
        env["SCADA_OPCUA_PASSWORD"] = PASSWORDS[user]
    p = await asyncio.create_subprocess_exec(*cmd, cwd=str(REPO), env=env, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 120)
    return p.returncode, out.decode() + err.decode()


# 35 CLI processes (five callers in parallel, seven commands each) on top of the OPC UA walk:
# ~60 s on an idle 2-core machine, several minutes when other work shares the cores; bounded
@pytest.mark.timeout(900)
async def test_every_cell_over_opcua_and_the_cli_agrees_with_the_table(server):
    rt, url, ns = server
    rows = {a.name for a in R.ACTIONS if a.opcua}
    mismatches = []
    for slot, user in enumerate(WHO):
        role = role_of(user)
        c = Client(url, timeout=15)
        if user:
            c.set_user(user)
            c.set_password(PASSWORDS[user])
        async with c:
            got = await opcua_attempts(c, ns, slot)
        # every row with an OPC UA service (gis.import has none: web console and CLI through
        # it, walked by tests/unit/test_gis.py and the console's tests)
        assert set(got) == rows, "every row of the table is tried over OPC UA"
        for action, code in got.items():
            denied = code == Q.BadUserAccessDenied
            if denied is R.allows(role, action):
                mismatches.append(("opcua", user, role, action, Q.name(code)))
    # the CLI: the same table, through the real command line (callers in parallel)
    cli_slot = {user: len(WHO) + k for k, user in enumerate(WHO)}

    async def one_caller(user):
        res = []
        for action, args in CLI.items():
            k = cli_slot[user]
            a = [x.format(a1=_alarm(2 * k + 1), a2=_alarm(2 * k + 2)) for x in args]
            rc, text = await cli_attempt(url, user, a)
            res.append((user, action, rc, text))
        return res

    results = [r for rs in await asyncio.gather(*(one_caller(u) for u in WHO)) for r in rs]
    for user, action, rc, text in results:
        role = role_of(user)
        denied = "BadUserAccessDenied" in text
        if denied is R.allows(role, action) or (denied and rc == 0):
            mismatches.append(("cli", user, role, action, rc, text[-300:]))
    assert mismatches == []
    # every refused cell is in the audit log with the caller's identity
    audit = AuditLog.read(str(rt.operations.audit.path))
    refused = {(e["user"], e["action"]) for e in audit if e["outcome"] == "BadUserAccessDenied"}
    for user in WHO:
        for a in R.ACTIONS:
            if a.name != "read" and a.opcua and not R.allows(role_of(user), a.name):
                assert (user or "anonymous", a.name) in refused, (user, a.name)


def test_docs_print_the_table_the_server_enforces():
    """docs/opcua.md carries the role matrix exactly as scada.operations.roles defines it."""
    doc = (REPO / "docs" / "opcua.md").read_text(encoding="utf-8")
    assert R.markdown() in doc, "regenerate the table with `scada roles --markdown`"
