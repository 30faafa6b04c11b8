"""Site files cannot exhaust the machine (issue 15): real hostile files, each loaded by
`scada.loader.load_site` in a child process whose address space is capped at 200 MB above what
the imports use, must be refused with an error naming file:line, in bounded CPU time and memory.

The issue's speed target (< 1 s of CPU each) is a benchmark's figure: `bench/hostile_config.py`
prints it with PASS/FAIL on a quiet machine. Here the bound is 3 s of CPU, which holds on a busy
machine too (shared cores inflate CPU time: the flat million nodes took 1.2 s at load 10 and
~0.5 s quiet). The wall deadline only stops a runaway child.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from scada.errors import ConfigError
from scada.loader import Limits, load_site
from scada.users import hash_password

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
# the hostile files and the capped child that loads them live with their benchmark (the < 1 s
# target is a speed figure: bench/hostile_config.py prints it); here: the refusal, its
# file:line, and a bound that holds on a busy machine
from bench.hostile_config import HEAD, HOSTILE, PROFILE, run_child  # noqa: E402


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_site_file_is_refused_fast_and_small(tmp_path, name):
    text, line, what = HOSTILE[name]
    p = tmp_path / f"{name}.yaml"
    p.write_text(text, encoding="utf-8")
    out = run_child(str(p))  # raises with the child's stderr on a MemoryError or a traceback
    assert out["error"].startswith(f"{p}:{line}: "), out["error"]
    assert what in out["error"], out["error"]
    assert out["cpu"] < 3.0, out
    assert out["grew_mb"] < 200, out


def test_an_include_that_is_not_a_regular_file_is_refused(tmp_path):
    p = tmp_path / "site.yaml"
    p.write_text(HEAD + "include: [/dev/zero]\n")
    with pytest.raises(ConfigError) as ei:
        load_site(p, validate_drivers=False)
    assert ei.value.errors == ["/dev/zero: not a regular file; a site file and its includes must be files"]


def test_limits_count_every_file_of_the_site(tmp_path):
    """The node and byte budgets are the site's, not each file's."""
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "p.yaml").write_text(
        "profiles:\n  s: {points: [" + ", ".join(f"{{name: p{i}}}" for i in range(30)) + "]}\n")
    p = tmp_path / "site.yaml"
    p.write_text(HEAD + "include: [profiles/*.yaml]\n")
    load_site(p, validate_drivers=False, limits=Limits(yaml_nodes=200))
    with pytest.raises(ConfigError) as ei:
        load_site(p, validate_drivers=False, limits=Limits(yaml_nodes=80))
    assert ei.value.errors[0].startswith(f"{tmp_path / 'profiles' / 'p.yaml'}:2: the site holds more "
                                         f"than 80 YAML nodes (all its files together)")
    size = p.stat().st_size
    with pytest.raises(ConfigError) as ei:
        load_site(p, validate_drivers=False, limits=Limits(yaml_bytes=size + 10))
    assert f"({size:,} already read from the site's other files)" in ei.value.errors[0]


def test_device_tag_and_alarm_totals_name_the_device_that_crosses_them(tmp_path):
    p = tmp_path / "site.yaml"
    p.write_text(HEAD + textwrap.dedent("""\
        profiles:
          cab: {points: [{name: a}, {name: b}], alarms: [{name: x, point: a}]}
          lum: {points: [{name: a}, {name: b}, {name: c}], alarms: [{name: x, point: a}, {name: y, point: b}]}
        devices:
          - {id: c1, profile: cab, area: centre, children: [{profile: lum, count: 10}]}
          - {id: c2, profile: cab, area: centre, children: [{profile: lum, count: 10}]}
        """))
    site = load_site(p, validate_drivers=False, limits=Limits(devices=22, tags=64, alarms=42))
    assert sum(1 for _ in site.all_devices()) == 22 and site.tag_count == 64
    for limits, what in ((Limits(devices=21), "22 devices (children included); the limit is 21"),
                         (Limits(tags=63), "64 tags; the limit is 63"),
                         (Limits(alarms=41), "42 alarm instances; the limit is 41")):
        with pytest.raises(ConfigError) as ei:
            load_site(p, validate_drivers=False, limits=limits)
        assert ei.value.errors == [f"{p}:8: devices[1]: with this device the site has {what}; split a bigger city "
                                   f"over several servers (docs/configuration.md, Limits)"]


def test_merge_keys_follow_the_yaml_spec(tmp_path):
    """A mapping's own keys override merged ones (they are not duplicates), and an earlier
    merged mapping overrides a later one."""
    p = tmp_path / "site.yaml"
    p.write_text(HEAD + textwrap.dedent("""\
        profiles:
          base: &base {kind: sensor, description: base, vendor: acme, points: [{name: x}]}
          other: &other {description: other, kind: meter, points: [{name: y}]}
          derived: {<<: [*other, *base], vendor: own}
        """))
    prof = load_site(p, validate_drivers=False).config.profiles["derived"]
    assert (prof.description, prof.kind, prof.vendor) == ("other", "meter", "own")
    p.write_text(HEAD + "profiles:\n  a: {<<: 3, points: [{name: x}]}\n")
    with pytest.raises(ConfigError) as ei:
        load_site(p, validate_drivers=False)
    assert ei.value.errors[0] == f"{p}:4: a merge key '<<' takes a mapping or a list of mappings (e.g. '<<: *defaults')"


def test_a_file_of_only_a_document_marker_is_empty(tmp_path):
    p = tmp_path / "site.yaml"
    p.write_text("---\n# nothing else\n")
    with pytest.raises(ConfigError) as ei:
        load_site(p, validate_drivers=False)
    assert str(ei.value) == f"1 configuration error:\n  {p}:1: the file is empty; expected a mapping of sections"


def test_a_repeat_template_error_is_reported_not_left_unformatted(tmp_path):
    p = tmp_path / "site.yaml"
    p.write_text(HEAD + PROFILE + "devices:\n  - {id: 'd-{n:02d}', profile: s, area: centre, "
                 "repeat: {n: {values: [a, b]}}}\n")
    with pytest.raises(ConfigError) as ei:
        load_site(p, validate_drivers=False)
    assert ei.value.errors[0].startswith(f"{p}:5: devices[0]: template error: ")


def test_users_declared_twice_are_refused(tmp_path):
    h = hash_password("correct horse battery", n=2**10)
    p = tmp_path / "site.yaml"
    p.write_text(HEAD + f"users:\n  - {{name: bob, role: viewer, password_hash: '{h}'}}\n"
                 f"  - {{name: bob, role: admin, password_hash: '{h}'}}\n")
    with pytest.raises(ConfigError) as ei:
        load_site(p, validate_drivers=False)
    assert ei.value.errors == [f"{p}:5: users[1].name: user 'bob' declared twice (also users[0]); "
                               f"one entry per user, with one role"]
