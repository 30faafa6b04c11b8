"""Broken site files: every error names file, line, field path and what was expected.

Each case writes a small site (and sometimes a profile file) and asserts the exact
``file:line: field`` prefix of the message, so a regression in line tracking is caught.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from scada.errors import ConfigError
from scada.loader import load_site

BASE = """\
site:
  name: Test city
  latitude: 47.32
  longitude: 5.04
  timezone: Europe/Paris
areas:
  - {id: centre, name: Centre}
  - {id: north, name: North}
profiles:
  lamp:
    kind: luminaire
    points:
      - {name: level, unit: "%", access: rw, eu_range: [0, 100]}
      - {name: power_w, unit: W, deadband: 0.5}
  cabinet:
    kind: cabinet
    points:
      - {name: contactor, type: bool}
devices:
  - id: cab-001
    profile: cabinet
    area: centre
    children:
      - {profile: lamp, id: "lum-{n:02d}", count: 4}
"""


def write(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load_site(path, validate_drivers=False)
    assert isinstance(ei.value, ValueError)  # ConfigError is a ValueError too
    return ei.value.errors


def one_error(path: Path) -> str:
    errs = errors_of(path)
    assert len(errs) == 1, errs
    return errs[0]


def test_base_site_is_valid(tmp_path):
    site = load_site(write(tmp_path, BASE), validate_drivers=False)
    assert [d.path for d in site.all_devices()] == [
        "centre/cab-001", *(f"centre/cab-001/lum-0{i}" for i in range(1, 5))
    ]
    assert site.tag_count == 1 + 4 * 2


CASES = [
    # (name, replace old -> new in BASE, expected line, expected field, expected words)
    ("latitude out of range", ("latitude: 47.32", "latitude: 147.3"), 3, "site.latitude", "less than or equal to 90"),
    ("longitude out of range", ("longitude: 5.04", "longitude: -200"), 4, "site.longitude", "greater than or equal to -180"),
    ("bad timezone", ("Europe/Paris", "Europe/Dijon"), 5, "site.timezone", "IANA time zone"),
    ("latitude not a number", ("latitude: 47.32", "latitude: north"), 3, "site.latitude", "valid number"),
    ("unknown key in site", ("  timezone: Europe/Paris\n", "  timezone: Europe/Paris\n  tiemzone: UTC\n"), 6, "site.tiemzone", "did you mean 'timezone'"),
    ("unknown top-level section", ("devices:\n", "devises: []\ndevices:\n"), 19, "devises", "unknown key 'devises'; did you mean 'devices'"),
    ("missing site name", ("  name: Test city\n", ""), 1, "site.name", "required field is missing"),
    ("bad area id", ("{id: north, name: North}", "{id: north side, name: North}"), 8, "areas[1].id", "identifier"),
    ("bad point type", ("{name: contactor, type: bool}", "{name: contactor, type: boolean}"), 18, "profiles.cabinet.points[0].type", "'float', 'int', 'bool' or 'string'"),
    ("bad access", ('access: rw,', 'access: write,'), 13, "profiles.lamp.points[0].access", "'r' or 'rw'"),
    ("negative deadband", ("deadband: 0.5", "deadband: -1"), 14, "profiles.lamp.points[1].deadband", "greater than or equal to 0"),
    ("reversed eu_range", ("eu_range: [0, 100]", "eu_range: [100, 0]"), 13, "profiles.lamp.points[0]", "low < high"),
    ("duplicate point", ("      - {name: power_w, unit: W, deadband: 0.5}", "      - {name: level, unit: W}"), 14, "profiles.lamp.points[1].name", "duplicate point name 'level'"),
    ("profile without points", ("    kind: cabinet\n    points:\n      - {name: contactor, type: bool}\n", "    kind: cabinet\n    points: []\n"), 17, "profiles.cabinet.points", "at least 1 item"),
    ("bad device kind", ("kind: cabinet", "kind: cupboard"), 16, "profiles.cabinet.kind", "'cabinet'"),
    ("unknown profile", ("    profile: cabinet\n", "    profile: cabinett\n"), 21, "devices[0].profile", "unknown profile 'cabinett'; did you mean 'cabinet'"),
    ("unknown child profile", ("{profile: lamp,", "{profile: lampe,"), 24, "devices[0].children[0].profile", "unknown profile 'lampe'"),
    ("unknown area", ("    area: centre\n", "    area: centr\n"), 22, "devices[0].area", "unknown area 'centr'; did you mean 'centre'"),
    ("child count zero", ("count: 4}", "count: 0}"), 24, "devices[0].children[0].count", "greater than or equal to 1"),
    ("child count not int", ("count: 4}", "count: four}"), 24, "devices[0].children[0].count", "valid integer"),
    ("bad child id template", ('id: "lum-{n:02d}"', 'id: "lum-{i}"'), 24, "devices[0].children[0].id", "bad id template"),
    ("unknown device key", ("    area: centre\n", "    area: centre\n    adress: 3\n"), 23, "devices[0].adress", "unknown key 'adress'"),
    ("device id with slash", ("id: cab-001", "id: cab/001"), 20, "devices[0].id", "no '/'"),
    ("bad location", ("    area: centre\n", "    area: centre\n    location: {lat: 95, lon: 5}\n"), 23, "devices[0].location.lat", "less than or equal to 90"),
    ("historian unknown key", ("devices:\n", "historian: {backend: embedded, pth: x}\ndevices:\n"), 19, "historian.pth", "unknown key 'pth'"),
    ("opcua port out of range", ("devices:\n", "opcua: {port: 70000}\ndevices:\n"), 19, "opcua.port", "less than or equal to 65535"),
    ("bad user role", ("devices:\n", "users:\n  - {name: bob, role: boss, password_hash: x}\ndevices:\n"), 20, "users[0].role", "'viewer', 'agent', 'operator', 'engineer' or 'admin'"),
    ("no areas", ("areas:\n  - {id: centre, name: Centre}\n  - {id: north, name: North}\n", "areas: []\n"), 6, "areas", "at least 1 item"),
]


@pytest.mark.parametrize(("old_new", "line", "field", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_config(tmp_path, old_new, line, field, words):
    old, new = old_new
    assert old in BASE, f"test case does not apply: {old!r}"
    p = write(tmp_path, BASE.replace(old, new, 1))
    errs = errors_of(p)
    msg = errs[0]  # consequences may follow (no areas -> the device's area is unknown too)
    assert msg.startswith(f"{p}:{line}: {field}"), msg
    assert words in msg, msg


def test_yaml_syntax_error_names_line(tmp_path):
    p = write(tmp_path, BASE.replace("  - {id: north, name: North}", "  - {id: north, name: North"))
    msg = one_error(p)
    assert msg.startswith(f"{p}:9: YAML syntax error"), msg


def test_duplicate_key_names_both_lines(tmp_path):
    p = write(tmp_path, BASE.replace("  longitude: 5.04\n", "  longitude: 5.04\n  latitude: 40\n"))
    msg = one_error(p)
    assert msg == f"{p}:5: duplicate key 'latitude' (first at line 3)"


def test_duplicate_device(tmp_path):
    p = write(tmp_path, BASE + "  - {id: cab-001, profile: cabinet, area: centre}\n")
    msg = one_error(p)
    assert msg.startswith(f"{p}:25: devices[1].id: duplicate device 'centre/cab-001'"), msg


def test_duplicate_area(tmp_path):
    p = write(tmp_path, BASE.replace("{id: north, name: North}", "{id: centre, name: North}"))
    msg = one_error(p)
    assert msg.startswith(f"{p}:8: areas[1].id: duplicate area id 'centre'"), msg


def test_overlapping_child_groups_are_duplicate_tags(tmp_path):
    p = write(tmp_path, BASE + '      - {profile: lamp, id: "lum-{n:02d}", start: 3, count: 4}\n')
    msg = one_error(p)
    assert msg.startswith(f"{p}:25: devices[0].children[1].id: child ids ['lum-03', 'lum-04']"), msg


def test_empty_file(tmp_path):
    p = write(tmp_path, "")
    assert one_error(p) == f"{p}:1: the file is empty; expected a mapping of sections"


def test_not_utf8(tmp_path):
    p = tmp_path / "site.yaml"
    p.write_bytes(b"site:\n  name: Caf\xe9\n")
    assert "not UTF-8" in one_error(p)


def test_missing_file(tmp_path):
    assert "cannot read file" in one_error(tmp_path / "nope.yaml")


def test_error_in_included_profile_names_that_file(tmp_path):
    (tmp_path / "profiles").mkdir()
    prof = write(tmp_path, """\
        profiles:
          sensor:
            kind: sensor
            points:
              - {name: lux, unit: lx, type: double}
        """, "profiles/sensor.yaml")
    site = write(tmp_path, BASE.replace("profiles:\n", "include: [profiles/*.yaml]\nprofiles:\n", 1))
    msg = one_error(site)
    assert msg.startswith(f"{prof}:5: profiles.sensor.points[0].type"), msg


def test_include_matching_nothing(tmp_path):
    site = write(tmp_path, BASE.replace("profiles:\n", "include: [nowhere/*.yaml]\nprofiles:\n", 1))
    msg = one_error(site)
    assert msg.startswith(f"{site}:9: include[0]: no file matches 'nowhere/*.yaml'"), msg


def test_profile_defined_twice_across_files(tmp_path):
    (tmp_path / "p").mkdir()
    other = write(tmp_path, "profiles:\n  lamp:\n    points: [{name: x}]\n", "p/lamp.yaml")
    site = write(tmp_path, BASE.replace("profiles:\n", "include: [p/*.yaml]\nprofiles:\n", 1))
    msg = one_error(site)
    assert msg.startswith(f"{other}:2: profiles.lamp: duplicate profile (already defined at {site}:11)"), msg


def test_alarm_templates_for_unknown_profile(tmp_path):
    (tmp_path / "p").mkdir()
    tpl = write(tmp_path, "alarm_templates:\n  lampe:\n    - {name: lamp_failure, point: level}\n", "p/alarms.yaml")
    site = write(tmp_path, BASE.replace("profiles:\n", "include: [p/*.yaml]\nprofiles:\n", 1))
    msg = one_error(site)
    assert msg.startswith(f"{tpl}:2: alarm_templates.lampe: unknown profile 'lampe'"), msg


def test_repeat_expansion_and_template_errors(tmp_path):
    ok = write(tmp_path, BASE + (
        '  - id: "cab-{n:03d}"\n'
        "    repeat: {n: 2-4}\n"
        "    profile: cabinet\n"
        "    area: north\n"
        '    attrs: {port: "${5020 + n}", label: "C{n}"}\n'
    ))
    site = load_site(ok, validate_drivers=False)
    cabs = [d for d in site.devices if d.area == "north"]
    assert [d.id for d in cabs] == ["cab-002", "cab-003", "cab-004"]
    assert [d.attrs["port"] for d in cabs] == [5022, 5023, 5024]
    assert cabs[0].attrs["label"] == "C2"
    bad = write(tmp_path, BASE + '  - {id: "x-{n}", repeat: {n: 5-1}, profile: cabinet, area: north}\n', "bad.yaml")
    msg = one_error(bad)
    assert msg.startswith(f"{bad}:25: devices[1].repeat: range '5-1': end before start"), msg


def test_every_error_at_once(tmp_path):
    text = (BASE.replace("latitude: 47.32", "latitude: 100")
            .replace("kind: cabinet", "kind: cupboard")
            .replace("deadband: 0.5", "deadband: -2")
            .replace("    area: centre\n", "    area: south\n"))
    errs = errors_of(write(tmp_path, text))
    assert [e.split(": ")[1] for e in errs] == [
        "site.latitude", "profiles.lamp.points[1].deadband", "profiles.cabinet.kind",
        "devices[0].area"]


def test_unknown_protocol_with_drivers_checked(tmp_path):
    p = write(tmp_path, BASE.replace("    kind: cabinet\n", "    kind: cabinet\n    protocol: bacnet\n"))
    with pytest.raises(ConfigError) as ei:
        load_site(p)
    msg = ei.value.errors[0]
    assert msg.startswith(f"{p}:17: profiles.cabinet.protocol: unknown protocol 'bacnet'; expected one of"), msg


def test_cli_check_exits_2_with_errors(tmp_path):
    from click.testing import CliRunner

    from cli import main

    p = write(tmp_path, BASE.replace("latitude: 47.32", "latitude: 100"))
    res = CliRunner().invoke(main, ["check", str(p)])
    assert res.exit_code == 2
    assert f"{p}:3: site.latitude" in res.output
    # every configured tag needs a writer: profiles without a protocol are refused (issue 16)
    passive = write(tmp_path, BASE, "passive.yaml")
    res = CliRunner().invoke(main, ["check", str(passive)])
    assert res.exit_code == 2
    assert f"{passive}:20: device centre/cab-001 (4 child devices: centre/cab-001/lum-01" in res.output
    assert "profile 'cabinet', 'lamp' has no protocol, so nothing writes its tags" in res.output
    ok = write(tmp_path, BASE.replace("    kind: luminaire\n", "    kind: luminaire\n    protocol: astro\n")
               .replace("    kind: cabinet\n", "    kind: cabinet\n    protocol: astro\n")
               .replace('unit: "%", access: rw, eu_range: [0, 100]}', 'unit: deg, source: {output: sun_elevation}}')
               .replace("deadband: 0.5}", "deadband: 0.5, source: {output: sun_elevation}}")
               .replace("type: bool}", "type: bool, source: {output: night}}"), "ok.yaml")
    res = CliRunner().invoke(main, ["check", str(ok)])
    assert res.exit_code == 0, res.output
    assert "5 devices" in res.output and "9 tags" in res.output
