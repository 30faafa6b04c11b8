"""Site files cannot exhaust the machine (issue 15): real hostile files, each loaded by
`scada.loader.load_site` in a child process whose address space is capped at 200 MB above what
the imports use, must be refused with an error naming file:line, within 1 s of CPU time.

CPU time, not wall time, is what is measured: the machine may be busy with other work, and a
refusal that costs no CPU costs no wall time on a quiet one. The wall deadline only stops a
runaway child.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scada.errors import ConfigError
from scada.loader import Limits, load_site
from scada.users import hash_password

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
HEAD = "site: {name: T, latitude: 47.3, longitude: 5.0}\nareas: [{id: centre}]\n"
PROFILE = "profiles: {s: {points: [{name: x}]}}\n"

CHILD = r"""
import json, resource, sys, time
from scada.errors import ConfigError
from scada.loader import load_site

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024

resource.setrlimit(resource.RLIMIT_AS, (status("VmSize:") + 200 * 2**20, resource.RLIM_INFINITY))
rss0 = status("VmRSS:")
t0 = time.process_time()
try:
    load_site(sys.argv[1])
    first = "loaded"
except ConfigError as e:
    first = e.errors[0]
print(json.dumps({"cpu": time.process_time() - t0, "grew_mb": (status("VmHWM:") - rss0) / 2**20,
                  "error": first}))
"""


def _laughs() -> str:
    """The classic "billion laughs": 9 levels of 9 aliases, 400 bytes, 10^9 strings."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return HEAD + "\n".join(lines) + "\n"


def _merges() -> str:
    """Merge keys doubling at each level: 2^40 keys from 40 lines."""
    return HEAD + "m0: &m0 {k0: 1, k1: 2}\n" + "".join(
        f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}]}}\n" for i in range(1, 40))


KIDS = ", ".join(["{profile: s, id: 'k{n}', count: 4096}"] * 200)

HOSTILE = {
    # name: (file text, line the error names, what the error says)
    "billion_laughs": (_laughs(), 9, "the alias *f repeats 597,871 YAML nodes"),
    "merge_key_bomb": (_merges(), 19, "the alias *m15 repeats"),
    "recursive_alias": (HEAD + "x: &x [1, {y: *x}]\n", 3, "is inside the node its anchor names"),
    "repeat_hundred_million": (
        HEAD + PROFILE + "devices:\n  - {id: 'd{n}', profile: s, area: centre, repeat: {n: 1-100000000}}\n",
        5, "devices[0].repeat makes 100,000,000 devices"),
    "repeat_product": (
        HEAD + PROFILE + "devices:\n  - {id: 'd{a}-{b}', profile: s, area: centre, repeat: {a: 1-10000, b: 1-10001}}\n",
        5, "makes 100,010,000 devices (10,000 x 10,001"),
    "repeat_of_a_large_entry": (
        HEAD + PROFILE + "devices:\n  - {id: 'd{n}', profile: s, area: centre, repeat: {n: 1-50000}, "
        f"children: [{KIDS}]}}\n", 5, "makes 50,000 copies of an entry of 1,413 YAML nodes"),
    "children_a_billion": (
        HEAD + PROFILE + "devices:\n" + "".join(
            f"  - {{id: d{i}, profile: s, area: centre, children: [{KIDS}]}}\n" for i in range(3)),
        6, "devices[1]: with this device the site has 1,638,402 devices (children included); the limit is 1,000,000"),
    "format_width_in_a_repeat": (
        HEAD + PROFILE + "devices:\n  - {id: 'd{n:>999999999}', profile: s, area: centre, repeat: {n: 1-3}}\n",
        5, "width or precision 999999999 in {n:>999999999} is above the limit of 100"),
    "format_width_in_child_ids": (
        HEAD + PROFILE + "devices:\n  - {id: d, profile: s, area: centre, children: "
        "[{profile: s, id: 'k{n:>999999999}', count: 3}]}\n", 5, "width or precision 999999999"),
    "format_width_in_an_alarm_message": (
        HEAD + "profiles: {s: {points: [{name: x}], alarms: [{name: a, point: x, "
        "message: '{value:>999999999}'}]}}\n", 3, "width or precision 999999999"),
    "long_expression": (
        HEAD + PROFILE + "devices:\n  - {id: d, profile: s, area: centre, repeat: {n: 1-2}, description: '${"
        + "*".join(["n"] * 5000) + "}'}\n", 5, "is longer than 200 characters"),
    "huge_integer": (HEAD + "x: " + "7" * 200_000 + "\n", 3, "cannot read this value"),
    "deep_nesting": (HEAD + "x: " + "[" * 100_000 + "]" * 100_000 + "\n", 3, "nest"),
    "flat_million_nodes": (HEAD + "x: [" + ",".join(["1"] * 1_200_000) + "]\n", 3,
                           "the site holds more than 750,000 YAML nodes"),
    "seventeen_megabytes": (HEAD + "# " + "x" * (17 * 2**20) + "\n", 1,
                            "the file is 17,825,865 bytes; a site holds at most 16,777,216 bytes"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_site_file_is_refused_fast_and_small(tmp_path, name):
    text, line, what = HOSTILE[name]
    p = tmp_path / f"{name}.yaml"
    p.write_text(text, encoding="utf-8")
    res = subprocess.run([sys.executable, "-c", CHILD, str(p)], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]  # no MemoryError, no traceback
    out = json.loads(res.stdout)
    assert out["error"].startswith(f"{p}:{line}: "), out["error"]
    assert what in out["error"], out["error"]
    assert out["cpu"] < 1.0, out
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
