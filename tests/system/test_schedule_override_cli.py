"""``scada schedule override set | list | cancel`` (issue 15): the command line no longer writes
the overrides file under a name it merely claims; it logs in to the running server, whose
operator API checks the role and audits the authenticated identity."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from scada.audit import AuditLog
from scada.clock import RealClock
from scada.loader import load_site
from scada.runtime import Runtime
from scada.users import hash_password
from tests.conftest import free_port
from tests.unit.test_schedule_engine import site_yaml

REPO = Path(__file__).resolve().parents[2]
PW = "secret-password"


async def _scada(*args: str, password: str | None = None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "SCADA_OPCUA_PASSWORD"}
    if password is not None:
        env["SCADA_OPCUA_PASSWORD"] = password
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "cli", *args, cwd=str(REPO), env=env,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 90)
    return p.returncode, out.decode() + err.decode()


async def test_override_through_the_server_role_checked_and_audited(tmp_path):
    port = free_port()
    h = hash_password(PW, n=2**10)
    users = (f"users:\n  - {{name: eve, role: engineer, password_hash: '{h}'}}\n"
             f"  - {{name: olga, role: operator, password_hash: '{h}'}}\n")
    site_file = tmp_path / "site.yaml"
    site_file.write_text(site_yaml(str(tmp_path / "state")) + users
                         + f"opcua: {{port: {port}, allow_security_none: true}}\n")
    rt = Runtime(load_site(site_file), RealClock())
    rt.load_services(only=["schedules", "opcua"])
    await rt.start()
    try:
        await asyncio.wait_for(rt.services["opcua"].started.wait(), 30)
        site = ["--site", str(site_file)]
        # a name on the command line is no identity: olga is an operator, refused and audited
        rc, out = await _scada("schedule", "override", "set", *site, "--user", "olga", "--level", "100",
                               "--reason", "accident", "--area", "centre", password=PW)
        assert rc == 1 and "BadUserAccessDenied" in out, out
        # claiming to be eve without her password gets nowhere either
        rc, out = await _scada("schedule", "override", "set", *site, "--user", "eve", "--level", "100",
                               "--reason", "accident", "--area", "centre", password="guess")
        assert rc == 1 and "BadUserAccessDenied" in out, out
        rc, out = await _scada("schedule", "override", "set", *site, "--user", "eve", "--level", "100",
                               "--minutes", "90", "--reason", "accident rue Monge", "--area", "centre",
                               password=PW)
        assert rc == 0, out
        oid = out.split()[1].rstrip(":")
        data = json.loads((tmp_path / "state" / "schedules" / "overrides.json").read_text())
        assert [(o["id"], o["areas"], o["user"]) for o in data["overrides"]] == [(oid, ["centre"], "eve")]
        rc, out = await _scada("schedule", "override", "list", str(site_file))
        assert oid in out and "accident rue Monge" in out
        rc, out = await _scada("schedule", "override", "cancel", oid, *site, "--user", "olga", password=PW)
        assert rc == 1 and "BadUserAccessDenied" in out
        rc, out = await _scada("schedule", "override", "cancel", oid, *site, "--user", "eve", password=PW)
        assert rc == 0 and "cancelled" in out, out
        rc, out = await _scada("schedule", "override", "list", str(site_file))
        assert "no active override" in out
        log = [(e["user"], e["action"], e["outcome"]) for e in AuditLog.read(rt.operations.audit.path)
               if e["action"] != "login"]
        assert log == [
            ("olga", "schedule.override", "BadUserAccessDenied"),
            ("eve", "schedule.override", "Good"),
            ("olga", "schedule.override", "BadUserAccessDenied"),
            ("eve", "schedule.override", "Good"),
        ]
        logins = [(e["user"], e["outcome"]) for e in AuditLog.read(rt.operations.audit.path)
                  if e["action"] == "login"]
        assert ("eve", "BadUserAccessDenied") in logins
    finally:
        await rt.stop()
