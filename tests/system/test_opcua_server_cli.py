"""The CLI client (``scada tags / watch / write / user add``) against our server, in a
separate process as an operator would run it."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from scada import quality as Q
from scada.users import verify

SCADA = [sys.executable, "-m", "cli"]


async def _scada(*args: str, env: dict | None = None, stdin: str | None = None) -> tuple[int, str, str]:
    full_env = {k: v for k, v in os.environ.items() if k != "SCADA_OPCUA_PASSWORD"}
    full_env.update(env or {})
    p = await asyncio.create_subprocess_exec(*SCADA, *args, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.PIPE,
                                             env=full_env)
    out, err = await asyncio.wait_for(p.communicate(stdin.encode() if stdin is not None else b""), 60)
    return p.returncode, out.decode(), err.decode()


async def test_tags_json_and_table(hmi):
    hmi.feed({"centre/cab-01/lum-01/level": 12.5, "centre/cab-01/lum-02/level": 50.0}, source_ts=1_700_000_000.0)
    rc, out, err = await _scada("tags", "centre/*/lum-*/level", "--endpoint", hmi.url, "--json")
    assert rc == 0, err
    rows = json.loads(out)
    assert [r["path"] for r in rows] == [f"centre/cab-01/lum-0{n}/level" for n in (1, 2, 3)]
    assert rows[0] == {"path": "centre/cab-01/lum-01/level", "value": 12.5, "unit": "%", "status": "Good",
                       "source_time": "2023-11-14T22:13:20+00:00"}
    assert rows[2]["status"] == "BadWaitingForInitialData" and rows[2]["value"] is None
    rc, out, err = await _scada("tags", "north/*", "--endpoint", hmi.url)
    assert rc == 0, err
    assert "north/cab-02/power_w" in out and "BadWaitingForInitialData" in out


async def test_write_as_operator_and_refusals(hmi, tmp_path):
    """Passwords come from the environment, a file or a prompt: never the command line."""
    hmi.feed({"centre/cab-01/group_level": 10.0})
    rc, out, err = await _scada("write", "centre/cab-01/group_level", "65", "--endpoint", hmi.url,
                                "--user", "op1", env={"SCADA_OPCUA_PASSWORD": "pw-operator"})
    assert rc == 0, err
    assert "Good" in out and hmi.writes == [("centre/cab-01/group_level", 65.0)]
    pw = tmp_path / "pw"
    pw.write_text("pw-operator\n")
    rc, out, err = await _scada("write", "centre/cab-01/group_level", "66", "--endpoint", hmi.url,
                                "--user", "op1", "--password-file", str(pw))
    assert rc == 0, err
    rc, out, err = await _scada("write", "centre/cab-01/group_level", "67", "--endpoint", hmi.url,
                                "--user", "op1", stdin="pw-operator\n")  # the prompt
    assert rc == 0, err
    assert [v for _, v in hmi.writes] == [65.0, 66.0, 67.0]
    rc, out, err = await _scada("write", "centre/cab-01/group_level", "70", "--endpoint", hmi.url)
    assert rc == 1 and "BadUserAccessDenied" in out
    rc, out, err = await _scada("write", "centre/cab-01/group_level", "70", "--endpoint", hmi.url,
                                "--user", "op1", env={"SCADA_OPCUA_PASSWORD": "wrong"})
    assert rc == 1 and "BadUserAccessDenied" in err and "locked" in err
    rc, out, err = await _scada("write", "centre/cab-01/group_level", "70", "--endpoint", hmi.url,
                                "--user", "op1", "--password", "pw-operator")
    assert rc == 2 and "No such option '--password'" in err
    assert hmi.runtime.tagdb.read("centre/cab-01/group_level").value == 67.0


async def test_watch_prints_changes(hmi):
    hmi.feed({"centre/cab-01/power_w": 100.0})
    p = await asyncio.create_subprocess_exec(
        *SCADA, "watch", "centre/cab-01/power_w", "--endpoint", hmi.url, "--json", "--count", "2",
        "--interval", "50", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    line = await asyncio.wait_for(p.stdout.readline(), 30)
    assert json.loads(line)["value"] == 100.0
    hmi.runtime.tagdb.mark([hmi.runtime.tagdb.index("centre/cab-01/power_w")], Q.BadCommunicationError)
    line = await asyncio.wait_for(p.stdout.readline(), 30)
    assert json.loads(line)["status"] == "BadCommunicationError"
    await asyncio.wait_for(p.wait(), 30)
    assert p.returncode == 0


async def test_user_add_prints_a_verifiable_hash(tmp_path):
    rc, out, err = await _scada("user", "add", "alice", "--role", "operator", env={"SCADA_NEW_PASSWORD": "s3cret!"})
    assert rc == 0, err
    assert "s3cret" not in out
    h = out.split("password_hash: '")[1].split("'")[0]
    assert verify("s3cret!", h) and not verify("other", h)
    f = tmp_path / "users.yaml"
    rc, out, err = await _scada("user", "add", "bob", "--role", "engineer", "--out", str(f), env=None)
    assert rc == 0 and "generated password for bob" in err
    assert f.read_text().startswith("users:\n  - {name: bob, role: engineer")


async def test_tags_against_a_junction_simulator_by_browsing(tmp_path):
    """Servers without FindTags (a junction controller) are browsed along the pattern's path."""
    from scada.clock import SteppedClock
    from scada.loader import load_site
    from simulators.traffic import serve_site
    from tests.conftest import free_port
    from tests.fixtures.opcua import endpoint, write_site

    port = free_port()
    p = write_site(tmp_path, [{"id": "j-8", "profile": "junction-opcua", "area": "centre",
                               "connection": {"endpoint": endpoint(port)}}])
    site = load_site(str(p))
    sim = await serve_site(site, SteppedClock(), site.by_protocol()["opcua"])
    try:
        rc, out, err = await _scada("tags", "j-8/Status/*", "--endpoint", endpoint(port), "--json",
                                    "--namespace", "urn:city-scada:traffic-controller")
    finally:
        await sim.aclose()
    assert rc == 0, err
    rows = {r["path"]: r for r in json.loads(out)}
    assert {"j-8/Status/Mode", "j-8/Status/Plan"} <= set(rows)
    assert rows["j-8/Status/Plan"]["status"] == "Good" and isinstance(rows["j-8/Status/Plan"]["value"], int)
