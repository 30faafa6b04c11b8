"""The server as an operator runs it: a real process, stopped by SIGTERM/SIGINT within 5 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

SITE = """\
site: {name: Process test, latitude: 47.3, longitude: 5.0, timezone: Europe/Paris, state_dir: state}
areas: [{id: centre}]
profiles:
  sensor: {protocol: astro, kind: sensor, points: [{name: sun, unit: deg, source: {output: sun_elevation}}]}
devices:
  - {id: s1, profile: sensor, area: centre}
opcua: {enabled: false}
historian: {enabled: false}
"""


def _start(tmp_path, *args):
    p = tmp_path / "site.yaml"
    p.write_text(textwrap.dedent(SITE))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args, str(p)], cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )


def _wait_ready(proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "running:" in line:
            return lines
    proc.kill()
    pytest.fail("server did not become ready:\n" + "".join(lines))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_cleanly_on_signal(tmp_path, sig):
    proc = _start(tmp_path, "run")
    lines = _wait_ready(proc)
    assert "1 devices" not in lines[-1]  # _system/server counts as a device too
    proc.send_signal(sig)
    try:
        rc = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("server did not stop within 10 s of the signal")
    out = proc.stdout.read()
    proc.stdout.close()
    assert rc == 0, out
    assert "shutdown requested" in out


def test_run_with_bad_config_exits_2(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("site: {name: x, latitude: 91, longitude: 0}\nareas: [{id: a}]\n")
    res = subprocess.run([sys.executable, "-m", "cli", "run", str(p)], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), timeout=60)
    assert res.returncode == 2
    assert f"{p}:1: site.latitude" in res.stderr


def test_run_with_a_profile_only_the_driver_can_refuse_exits_2(tmp_path):
    """A Modbus point naming a poll group its profile does not declare (only the driver knows
    the profile's groups): a clear message naming profile and point, exit 2, no traceback."""
    p = tmp_path / "bad.yaml"
    p.write_text(textwrap.dedent("""\
        site: {name: x, latitude: 47, longitude: 5}
        areas: [{id: a}]
        profiles:
          meter:
            protocol: modbus
            kind: meter
            points:
              - {name: e, source: {table: holding, address: 10, type: uint32, poll: hourly}}
        devices:
          - {id: m1, profile: meter, area: a, connection: {host: 127.0.0.1, port: 1502}}
        opcua: {enabled: false}
        historian: {enabled: false}
        """))
    res = subprocess.run([sys.executable, "-m", "cli", "run", str(p)], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert "profile 'meter' point 'e': poll group 'hourly'" in res.stderr, res.stderr
