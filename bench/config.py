"""`scada check` on a generated city (issue 2): time and peak memory.

Generates a city with `scada gen-city` (default: 200,000 luminaires and 2,000 junctions, the
Paris-size target), then runs `scada check` on it in a fresh process and reports wall time and
peak RSS. Baseline in the same run: a bare libyaml parse of the same file (the floor any
checker pays). Target: < 10 s.

    python bench/config.py [--luminaires 200000] [--junctions 2000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from bench._util import save  # noqa: E402

CHILD = r"""
import resource, sys, time
t0 = time.perf_counter()
mode, path = sys.argv[1], sys.argv[2]
if mode == "check":
    from scada.loader import load_site
    from commands.core import summary
    site = load_site(path)
    text = summary(site)
    n = site.tag_count
else:
    import yaml
    with open(path) as f:
        yaml.load(f, Loader=yaml.CSafeLoader)
    n = 0
dt = time.perf_counter() - t0
print(f"{dt:.3f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024} {n}")
"""


def run_child(mode: str, path: str) -> tuple[float, int, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, path], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stdout}\n{out.stderr}")
    dt, rss, n = out.stdout.split()
    return float(dt), int(rss), int(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--luminaires", type=int, default=200_000)
    ap.add_argument("--junctions", type=int, default=2_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        site = os.path.join(tmp, "city.yaml")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cli", "gen-city", "--luminaires", str(a.luminaires),
                        "--junctions", str(a.junctions), "--out", site], cwd=REPO, check=True,
                       capture_output=True, timeout=300)
        gen_s = time.perf_counter() - t0
        size = os.path.getsize(site)
        lines = sum(1 for _ in open(site))
        # process start-up + imports are part of what an engineer waits for: time the whole check
        t0 = time.perf_counter()
        check_s, check_rss, tags = run_child("check", site)
        check_wall = time.perf_counter() - t0
        parse_s, parse_rss, _ = run_child("parse", site)
    figures = {
        "luminaires": a.luminaires, "junctions": a.junctions, "site_lines": lines, "site_bytes": size,
        "tags": tags, "gen_city_s": round(gen_s, 2), "check_s": round(check_s, 2),
        "check_wall_s_with_startup": round(check_wall, 2), "check_peak_rss_mb": round(check_rss / 2**20),
        "baseline_yaml_parse_s": round(parse_s, 2), "ratio_check_vs_parse": round(check_s / parse_s, 2),
        "target_s": 10,
    }
    print(f"city: {a.luminaires:,} luminaires, {a.junctions:,} junctions -> {lines:,} lines "
          f"({size / 1e6:.1f} MB), {tags:,} tags; generated in {gen_s:.1f} s")
    print(f"  scada check: {check_s:.2f} s ({check_wall:.2f} s with process start-up), "
          f"peak RSS {check_rss / 2**20:.0f} MB   target < 10 s")
    print(f"  baseline bare libyaml parse: {parse_s:.2f} s (peak {parse_rss / 2**20:.0f} MB) "
          f"-> check costs {check_s / parse_s:.1f}x the parse")
    print(f"  figures saved to {save('config', figures)}")


if __name__ == "__main__":
    main()
