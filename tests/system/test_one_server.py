"""One server per state directory, and ports that are taken (issue 15).

Real processes: a second `scada run`/`scada demo` on the state directory of a running server
is refused with the first one's PID; a server killed with SIGKILL leaves no stale lock. A port
already in use is one line naming the port and the setting that chooses it, never a traceback;
`scada demo` moves its default ports to free ones and says which, and its simulators and
drivers meet on the new ones (read back over OPC UA).
"""

from __future__ import annotations

import asyncio
import errno
import re
import signal
import socket
import textwrap
from pathlib import Path

import pytest
from asyncua import Client, ua

from scada.errors import CannotListen
from scada.loader import load_site
from scada.runtime import Runtime
from tests.conftest import free_port
from tests.fixtures.process import REPO, ScadaProcess, run_scada

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]

SITE = """\
site: {{name: One server, latitude: 47.3, longitude: 5.0, timezone: Europe/Paris, state_dir: state}}
areas: [{{id: centre}}]
profiles:
  sensor: {{protocol: astro, kind: sensor, points: [{{name: sun, unit: deg, source: {{output: sun_elevation}}}}]}}
devices:
  - {{id: s1, profile: sensor, area: centre}}
opcua: {{enabled: {opcua}, port: {port}}}
historian: {{enabled: false}}
"""


def site_file(tmp_path: Path, *, opcua: bool = False, port: int = 0) -> Path:
    p = tmp_path / "site.yaml"
    p.write_text(SITE.format(opcua=str(opcua).lower(), port=port or free_port()))
    return p


def hold(port: int, host: str = "127.0.0.1") -> socket.socket:
    """A listening socket on ``port``, as another program would hold it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(1)
    return s


def test_second_server_on_the_same_state_dir_is_refused_until_the_first_is_killed(tmp_path):
    site = site_file(tmp_path)
    state = tmp_path / "state"
    first = ScadaProcess("run", str(site))
    try:
        first.wait_for("running:")
        for cmd in (["run", str(site)], ["demo", "--site", str(site), "--state-dir", str(state)]):
            res = run_scada(*cmd)
            assert res.returncode == 2, res.stdout + res.stderr
            assert f"state directory {state} is in use by PID {first.pid}" in res.stderr, res.stderr
            assert "Traceback" not in res.stderr
            assert "running:" not in res.stdout
        # the first server did not notice anything
        assert first.proc.poll() is None
        first.kill()  # SIGKILL: no clean-up code runs, the kernel drops the lock
        again = ScadaProcess("run", str(site))
        again.wait_for("running:")
        assert again.stop(signal.SIGTERM) == 0, again.output
        assert (state / "scada.lock").read_text().strip() == str(again.pid)
    finally:
        first.kill()


def test_run_with_its_opcua_port_taken_is_one_line_naming_the_setting(tmp_path):
    port = free_port()
    site = site_file(tmp_path, opcua=True, port=port)
    with hold(port):
        res = run_scada("run", str(site))
        assert res.returncode == 2, res.stdout + res.stderr
        assert res.stderr.strip() == (
            f"scada run: cannot listen on 127.0.0.1:{port} for the OPC UA server: address already "
            f"in use; another program holds it: stop it or choose another port with opcua.port "
            f"in {site} (or --opcua-port)"), res.stderr
        other = free_port()
        with hold(other):
            res = run_scada("run", str(site), "--opcua-port", str(other))
        assert res.returncode == 2
        assert res.stderr.strip().endswith(f"127.0.0.1:{other} for the OPC UA server: address already in "
                                           f"use; another program holds it: stop it or choose another "
                                           f"port with --opcua-port"), res.stderr


DEMO_SITE = """\
site: {{name: Ports, latitude: 47.3, longitude: 5.0, timezone: Europe/Paris, state_dir: state}}
areas: [{{id: centre}}]
include: ["{profiles}/*.yaml"]
devices:
  - id: cab-001
    profile: cabinet-modbus
    area: centre
    connection: {{host: 127.0.0.1, port: {modbus}, unit: 1}}
    children:
      - {{profile: luminaire-modbus, id: "lum-{{n:02d}}", start: 1, count: 2}}
  - id: gw-1
    profile: dali-gateway
    area: centre
    connection: {{broker: embedded, gateway: gw-1}}
    children:
      - {{profile: luminaire-dali, id: "lum-{{n:03d}}", start: 1, count: 2}}
  - id: j-1
    profile: junction-opcua-4
    area: centre
    connection: {{endpoint: "opc.tcp://127.0.0.1:{junction}/junction"}}
drivers: {{mqtt: {{embedded_port: {mqtt}}}}}
historian: {{enabled: false}}
opcua: {{allow_security_none: true}}
"""


async def test_demo_moves_its_taken_default_ports_and_runs_on_the_new_ones(tmp_path):
    modbus, junction, mqtt = free_port(), free_port(), free_port()
    site = tmp_path / "demo.yaml"
    site.write_text(DEMO_SITE.format(profiles=REPO / "config" / "profiles", modbus=modbus,
                                     junction=junction, mqtt=mqtt))
    held = [hold(p) for p in (modbus, junction, mqtt)]
    try:
        held.append(hold(4840))  # the demo's default OPC UA port
    except OSError as e:
        assert e.errno == errno.EADDRINUSE  # taken by someone else: just as good
    demo = ScadaProcess("demo", "--site", str(site), "--duration", "200")
    try:
        line = demo.wait_for("running:", timeout=120)
        out = demo.output
        assert "Traceback" not in out
        for port, what, setting in (
            (4840, "the OPC UA server", "opcua.port in"),
            (modbus, "the modbus simulator of centre/cab-001", f"connection.port of device centre/cab-001 at {site}:5"),
            (junction, "the opcua simulator of centre/j-1", f"connection.endpoint of device centre/j-1 at {site}:17"),
            (mqtt, "the embedded MQTT broker", f"drivers.mqtt.embedded_port in {site}"),
        ):
            m = re.search(rf"port {port} for {re.escape(what)} is in use; the demo uses 127\.0\.0\.1:(\d+) "
                          rf"instead \({re.escape(setting)}", out)
            assert m, f"no move of {port} ({what}) in:\n{out}"
        url = demo.wait_for("opcua: opc.tcp://").split()[1]
        assert url != "opc.tcp://127.0.0.1:4840/scada" and line
        # simulators and drivers met on the moved ports: every device's values arrive Good
        async with Client(url, timeout=10) as c:
            ns = await c.get_namespace_index("urn:scada:streetlight:tags")
            paths = ["centre/cab-001/voltage_l1", "centre/gw-1/lum-001/level", "centre/j-1/mode"]
            nodes = [c.get_node(ua.NodeId(p, ns)) for p in paths]
            for _ in range(180):  # bounded in count: a condition awaited, not a duration
                dvs = await c.read_attributes(nodes, ua.AttributeIds.Value)
                if all(dv.StatusCode.is_good() for dv in dvs):
                    break
                await asyncio.sleep(0.5)
            else:
                raise AssertionError([(p, dv.StatusCode.name) for p, dv in zip(paths, dvs, strict=True)])
        assert demo.stop() == 0, demo.output[-3000:]
    finally:
        demo.kill()
        for s in held:
            s.close()


def test_demo_with_an_explicit_port_taken_is_refused(tmp_path):
    site = site_file(tmp_path, opcua=True)
    port = free_port()
    with hold(port):
        res = run_scada("demo", "--site", str(site), "--opcua-port", str(port))
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.strip() == (
        f"scada demo: cannot listen on 127.0.0.1:{port} for the OPC UA server: address already in "
        f"use; another program holds it: stop it or choose another port with --opcua-port"), res.stderr


async def test_a_port_taken_after_the_check_stops_the_server_with_one_error(tmp_path):
    """The rarer race: the port is free when checked, taken before the OPC UA server binds.
    The runtime stops and raises the one-line error instead of restarting the service forever."""
    port = free_port()
    site = load_site(site_file(tmp_path, opcua=True, port=port))
    site.config.site.state_dir = str(tmp_path / "state")
    rt = Runtime(site)
    rt.load_services(only=["opcua"])
    readies: list[bool] = []
    with hold(port):
        with pytest.raises(CannotListen, match=rf"cannot listen on 127\.0\.0\.1:{port}.*opcua\.port"):
            await asyncio.wait_for(rt.serve_forever(lambda: readies.append(True)), 60)
    assert readies == []  # never said it was running
    assert rt.restarts == 0


def test_run_with_a_state_dir_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "state").write_text("a file where the state directory should be\n")
    site = site_file(tmp_path)
    res = run_scada("run", str(site))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().startswith(f"scada run: cannot use the state directory {tmp_path / 'state'} "
                                         f"(site.state_dir in {site})"), res.stderr
    assert textwrap.dedent(res.stderr).count("\n") == 1


def test_sim_with_a_device_port_taken_names_the_device_and_its_line(tmp_path):
    modbus, junction, mqtt = free_port(), free_port(), free_port()
    site = tmp_path / "demo.yaml"
    site.write_text(DEMO_SITE.format(profiles=REPO / "config" / "profiles", modbus=modbus,
                                     junction=junction, mqtt=mqtt))
    with hold(modbus):
        res = run_scada("sim", str(site), "--protocol", "modbus", "--duration", "1")
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.strip() == (
        f"scada sim: cannot listen on 127.0.0.1:{modbus} for the modbus simulator of centre/cab-001: "
        f"address already in use; another program holds it: stop it or choose another port with "
        f"connection.port of device centre/cab-001 at {site}:5"), res.stderr


def test_run_with_the_embedded_broker_port_held_by_another_program(tmp_path):
    """`scada run` shares an MQTT broker already answering on drivers.mqtt.embedded_port (the
    one `scada sim` starts); a port held by something that is not an MQTT broker is refused."""
    mqtt = free_port()
    site = tmp_path / "site.yaml"
    site.write_text(textwrap.dedent(f"""\
        site: {{name: Broker, latitude: 47.3, longitude: 5.0, state_dir: state}}
        areas: [{{id: centre}}]
        include: ["{REPO / 'config' / 'profiles'}/*.yaml"]
        devices:
          - {{id: gw-1, profile: dali-gateway, area: centre, connection: {{broker: embedded, gateway: gw-1}}}}
        drivers: {{mqtt: {{embedded_port: {mqtt}}}}}
        historian: {{enabled: false}}
        opcua: {{enabled: false}}
        """))
    with hold(mqtt):
        res = run_scada("run", str(site))
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.strip() == (
        f"scada run: cannot listen on 127.0.0.1:{mqtt} for the embedded MQTT broker: address already "
        f"in use; another program holds it: stop it or choose another port with "
        f"drivers.mqtt.embedded_port in {site}"), res.stderr
