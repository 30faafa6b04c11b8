"""Hostile site files (issue 15): each is refused with an error naming file:line in < 1 s of CPU
and < 200 MB, whatever it asks for.

    python bench/hostile_config.py

Every file of :data:`HOSTILE` (the same ones `tests/unit/test_config_limits.py` checks for the
error text) is loaded by ``scada.loader.load_site`` in a child process whose address space is
capped at 200 MB above what the imports use; the child reports the CPU time of the load and the
growth of its peak RSS. Baseline, in the same run: the CPU time of loading the smallest valid
site (what any load costs). Target: < 1 s of CPU and < 200 MB each, PASS/FAIL per file. CPU time,
not wall time, is measured (a busy machine stretches wall time, less so CPU time; measure on a
quiet machine all the same: SMT siblings and caches shared with other work inflate it too).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_TARGET_S = 1.0
GROWTH_TARGET_MB = 200.0

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


def run_child(path: str, timeout: float = 120.0) -> dict:
    """Load ``path`` in a capped child process: {"cpu", "grew_mb", "error"} (error: the first
    error line, or "loaded")."""
    res = subprocess.run([sys.executable, "-c", CHILD, path], cwd=REPO, capture_output=True,
                         text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{path}: the child failed (rc {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout)


def main() -> int:
    sys.path.insert(0, REPO)
    from bench._util import verdict

    failed = 0
    with tempfile.TemporaryDirectory() as d:
        base = os.path.join(d, "valid.yaml")
        with open(base, "w", encoding="utf-8") as f:
            f.write(HEAD + PROFILE)
        b = run_child(base)
        print(f"baseline: loading the smallest valid site: {b['cpu']:.3f} s CPU, +{b['grew_mb']:.1f} MB")
        for name in sorted(HOSTILE):
            text, _line, _what = HOSTILE[name]
            p = os.path.join(d, f"{name}.yaml")
            with open(p, "w", encoding="utf-8") as f:
                f.write(text)
            r = run_child(p)
            v = "PASS" if (verdict(r["cpu"], CPU_TARGET_S) == "PASS"
                           and verdict(r["grew_mb"], GROWTH_TARGET_MB) == "PASS"
                           and r["error"] != "loaded") else "FAIL"
            failed += v == "FAIL"
            print(f"  {v:4}  {name:28} {r['cpu']:6.3f} s CPU ({r['cpu'] / max(b['cpu'], 1e-6):5.1f}x the baseline)"
                  f"  +{r['grew_mb']:6.1f} MB   {r['error'][-70:]}")
    print(f"{'PASS' if not failed else 'FAIL'}: {len(HOSTILE) - failed} of {len(HOSTILE)} hostile files "
          f"refused in < {CPU_TARGET_S:g} s CPU and < {GROWTH_TARGET_MB:g} MB")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
