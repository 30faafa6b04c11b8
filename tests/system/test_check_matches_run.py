"""`scada check` catches what `scada run` would fail on (issue 15): for each broken site, check
exits 2 naming file:line, and run refuses it too, in one clear message, never a traceback.
Real processes, real files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from scada.users import hash_password
from tests.fixtures.process import run_scada

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

BASE = """\
site: {name: T, latitude: 47.3, longitude: 5.0, timezone: Europe/Paris, state_dir: state}
areas: [{id: centre}]
profiles:
  sensor: {kind: sensor, points: [{name: lux, unit: lx}]}
devices:
  - {id: s1, profile: sensor, area: centre}
opcua: {enabled: false}
"""

HASH = hash_password("correct horse battery", n=2**10)

CASES = {
    # name: (site text, what check says, at which line)
    "only_a_document_marker": ("---\n", "the file is empty; expected a mapping of sections", 1),
    "unknown_historian_backend": (
        BASE + "historian: {backend: duckdb}\n",
        "historian.backend: unknown historian backend 'duckdb'; expected one of embedded, influx", 8),
    "user_declared_twice": (
        BASE + "historian: {enabled: false}\nusers:\n"
        f"  - {{name: bob, role: viewer, password_hash: '{HASH}'}}\n"
        f"  - {{name: bob, role: engineer, password_hash: '{HASH}'}}\n",
        "users[1].name: user 'bob' declared twice (also users[0])", 11),
    "alarm_on_a_point_the_profile_lacks": (
        BASE.replace("points: [{name: lux, unit: lx}]",
                     "points: [{name: lux, unit: lx}], alarms: [{name: dark, kind: limit, point: luxx, lo: 1}]")
        + "historian: {enabled: false}\n",
        "profiles.sensor.alarms[0].point: profile 'sensor' has no point 'luxx'; did you mean 'lux'?", 4),
    "parent_rule_on_a_device_without_parent": (
        BASE.replace("points: [{name: lux, unit: lx}]",
                     "points: [{name: lux, unit: lx}], alarms: [{name: dark, point: lux, "
                     "suppressed_by: [{of: parent, alarm: comm_lost}]}]")
        + "historian: {enabled: false}\n",
        "devices[0].profile: device centre/s1 has no parent, but alarm 'dark' of its profile "
        "'sensor' is suppressed by its parent's", 6),
    "suppression_by_an_alarm_the_profile_lacks": (
        BASE.replace("points: [{name: lux, unit: lx}]",
                     "points: [{name: lux, unit: lx}], alarms: [{name: dark, point: lux, "
                     "suppressed_by: [{of: self, alarm: comm_lots}]}]")
        + "historian: {enabled: false}\n",
        "suppressed_by[0].alarm: profile 'sensor' has no alarm 'comm_lots'", 4),
    "poll_group_only_the_driver_knows": (textwrap.dedent("""\
        site: {name: x, latitude: 47, longitude: 5, state_dir: state}
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
        """), "profile 'meter' point 'e': poll group 'hourly' is not in options.poll_groups", None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_check_refuses_what_run_refuses(tmp_path: Path, name: str):
    text, what, line = CASES[name]
    site = tmp_path / "site.yaml"
    site.write_text(text)
    chk = run_scada("check", str(site))
    assert chk.returncode == 2, chk.stdout + chk.stderr
    assert what in chk.stderr, chk.stderr
    if line is not None:
        assert f"{site}:{line}: " in chk.stderr, chk.stderr
    assert "Traceback" not in chk.stderr
    run = run_scada("run", str(site))
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "running:" not in run.stdout
