"""Historian ingest benchmark: points/s per backend against the backend's raw bulk rate in the
same run, growth check, and disk bytes per point.

    /tmp/venv/bin/python bench/historian.py [--points 4000000] [--tags 20000] [--no-influx]

Embedded store:
  * baseline: ``EmbeddedBackend.write`` of pre-built 500,000-point blocks (Parquet via DuckDB);
  * pipeline: ``TagDatabase.apply`` -> recorder (deadband selection) -> spool file (fsync) ->
    embedded store, i.e. what the server does, at the same point count;
  * growth: the raw write rate of the first and of the last fifth of the run (no slowdown
    expected: every block is a new immutable file, nothing is indexed);
  * disk bytes/point for a slowly changing signal (energy counters, quantised power).
Influx backend against a VictoriaMetrics started here on a free loopback port:
  * baseline: pre-built, gzipped 50,000-line bodies POSTed with urllib (server + HTTP bound);
  * ours: ``InfluxBackend.write`` of the same points in 500,000-point blocks (line building,
    compression as configured, POST of 50,000-line bodies pipelined with the building of the
    next), with ``gzip: auto`` (off on loopback) and with gzip forced on;
  * line building alone.
Every loop is bounded in points; figures are noisy on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from historian.base import Points
from historian.embedded import EmbeddedBackend
from historian.influx import InfluxBackend, line_protocol

T0 = 1_735_689_600.0


def blocks(n_points: int, n_tags: int, block: int, seed: int = 1):
    """Slowly changing values: energy counters growing by whole Wh every 15 minutes; each block
    holds whole rounds of every tag (rounds = block // n_tags)."""
    rng = np.random.default_rng(seed)
    keys = [f"area{t % 23}/cab-{t // 50:04d}/lum-{t % 50:02d}/energy_wh" for t in range(n_tags)]
    rounds = max(1, block // n_tags)
    counter = np.zeros(n_tags)
    made = step = 0
    while made < n_points:
        r = min(rounds, max(1, (n_points - made) // n_tags))
        inc = rng.integers(0, 12, (r, n_tags)).astype(np.float64)
        v = counter + np.cumsum(inc, axis=0)
        counter = v[-1].copy()
        t = T0 + (step + np.arange(r))[:, None] * 900.0 + np.zeros(n_tags)[None, :]
        sid = np.tile(np.arange(n_tags, dtype=np.int32), r)
        yield Points(keys, sid, t.ravel(), v.ravel(), np.zeros(r * n_tags, np.uint32))
        made += r * n_tags
        step += r


def bench_embedded(n_points: int, n_tags: int, tmp: str) -> dict[str, float]:
    out: dict[str, float] = {}
    b = EmbeddedBackend(os.path.join(tmp, "raw"), {"compact_after": 0})
    rates = []
    total = 0
    t_all = time.perf_counter()
    for i, pts in enumerate(blocks(n_points, n_tags, 500_000)):
        t = time.perf_counter()
        b.write(pts, f"r{i}")
        rates.append(len(pts) / (time.perf_counter() - t))
        total += len(pts)
    out["raw_pts_s"] = total / (time.perf_counter() - t_all)
    fifth = max(1, len(rates) // 5)
    out["raw_first_fifth_pts_s"] = float(np.mean(rates[:fifth]))
    out["raw_last_fifth_pts_s"] = float(np.mean(rates[-fifth:]))
    out["disk_bytes_per_point"] = b.stats()["disk_bytes"] / total
    t = time.perf_counter()
    merged = b.compact(min_blocks=2)
    out["compact_s"] = time.perf_counter() - t
    out["compacted_blocks"] = merged
    out["disk_bytes_per_point_compacted"] = b.stats()["disk_bytes"] / total
    b.close()
    site_dir = os.path.join(tmp, "site")
    os.makedirs(site_dir, exist_ok=True)
    with open(os.path.join(site_dir, "site.yaml"), "w") as f:
        f.write(f"""site: {{name: bench, latitude: 47.3, longitude: 5.0, timezone: Europe/Paris, state_dir: {site_dir}/state}}
areas: [{{id: a}}]
profiles:
  lamp: {{kind: luminaire, points: [{{name: energy_wh, unit: Wh}}]}}
devices:
  - {{id: cab, profile: lamp, area: a, children: [{{profile: lamp, count: {min(n_tags, 4096)}}}]}}
""")
    out["pipeline_pts_s"] = asyncio.run(_pipeline(n_points, n_tags, os.path.join(site_dir, "site.yaml")))
    return out


async def _pipeline(n_points: int, n_tags: int, site_file: str) -> float:
    """tagdb.apply -> recorder -> spool (fsync) -> embedded store, blocks of 500,000 points."""
    from historian.service import HistorianService
    from scada.clock import SteppedClock
    from scada.loader import load_site
    from scada.runtime import Runtime
    from scada.tags import Batch

    site = load_site(site_file)
    rt = Runtime(site, SteppedClock(T0))
    h = HistorianService(rt)
    idx = rt.tagdb.indices_of_point("energy_wh")
    n = len(idx)
    v = np.zeros(n)
    made = 0
    t = time.perf_counter()
    k = 0
    while made < n_points:
        v += 1.0  # every tag changes every round: all recorded
        rt.tagdb.apply(Batch.of(idx, v, 0, T0 + k))
        made += n
        k += 1
        if h.recorder.queued >= 500_000:
            await h.spool_now()
            await h.forward_now()
    await h.flush()
    rate = made / (time.perf_counter() - t)
    await h.aclose()
    return rate


def bench_influx(n_points: int, n_tags: int, tmp: str) -> dict[str, float]:
    vm_bin = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
    if not os.path.exists(vm_bin):
        return {}
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([vm_bin, f"-storageDataPath={tmp}/vm", f"-httpListenAddr=127.0.0.1:{port}",
                             "-retentionPeriod=100y", "-loggerLevel=ERROR"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/health", timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        all_pts = list(blocks(n_points, n_tags, 50_000))
        out: dict[str, float] = {}
        t = time.perf_counter()
        bodies = [gzip.compress(b"".join(line_protocol(p, "base")), 1) for p in all_pts]
        out["line_build_gzip_pts_s"] = n_points / (time.perf_counter() - t)
        t = time.perf_counter()
        for body in bodies:
            req = urllib.request.Request(url + "/api/v2/write?bucket=b&precision=ms", data=body, method="POST",
                                         headers={"Content-Encoding": "gzip"})
            urllib.request.urlopen(req, timeout=30).close()
        out["raw_prebuilt_post_pts_s"] = n_points / (time.perf_counter() - t)
        # what the recorder hands over: 500,000-point blocks, cut into 50,000-line bodies
        big = list(blocks(n_points, n_tags, 500_000))
        for label, gz in (("backend_write_pts_s", "auto"), ("backend_write_gzip_pts_s", True)):
            b = InfluxBackend(tmp, {"url": url, "measurement": f"ours_{label}", "batch_lines": 50_000, "gzip": gz})
            t = time.perf_counter()
            for i, p in enumerate(big):
                b.write(p, f"x{i}")
            out[label] = n_points / (time.perf_counter() - t)
            b.close()
        return out
    finally:
        proc.terminate()
        proc.wait(10)


def print_embedded(a: argparse.Namespace, tmp: str) -> None:
    print(f"embedded store, {a.points:,} points over {a.tags:,} tags")
    e = bench_embedded(a.points, a.tags, tmp)
    print(f"  raw bulk write (500k blocks)      {e['raw_pts_s']:>14,.0f} points/s")
    print(f"  first / last fifth of the run     {e['raw_first_fifth_pts_s']:>14,.0f} / "
          f"{e['raw_last_fifth_pts_s']:,.0f} points/s (growth ratio "
          f"{e['raw_last_fifth_pts_s'] / e['raw_first_fifth_pts_s']:.2f})")
    print(f"  recorder pipeline (tagdb->spool->store) {e['pipeline_pts_s']:>8,.0f} points/s "
          f"= {e['pipeline_pts_s'] / e['raw_pts_s']:.2f} x raw")
    print(f"  disk                              {e['disk_bytes_per_point']:>14.2f} bytes/point "
          f"({e['disk_bytes_per_point_compacted']:.2f} after compaction of {e['compacted_blocks']} blocks "
          f"in {e['compact_s']:.1f} s)")


def print_influx(a: argparse.Namespace, tmp: str) -> None:
    print(f"influx backend -> VictoriaMetrics (loopback), {a.influx_points:,} points")
    i = bench_influx(a.influx_points, a.tags, tmp)
    if not i:
        print("  victoria-metrics not installed: skipped")
        return
    print(f"  line protocol build + gzip        {i['line_build_gzip_pts_s']:>14,.0f} points/s")
    print(f"  raw: POST pre-built bodies        {i['raw_prebuilt_post_pts_s']:>14,.0f} points/s")
    raw = i["raw_prebuilt_post_pts_s"]
    print(f"  InfluxBackend.write (gzip auto: off on loopback) {i['backend_write_pts_s']:>11,.0f} points/s "
          f"= {i['backend_write_pts_s'] / raw:.2f} x raw POST")
    print(f"  InfluxBackend.write (gzip level 1)               {i['backend_write_gzip_pts_s']:>11,.0f} points/s "
          f"= {i['backend_write_gzip_pts_s'] / raw:.2f} x raw POST")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=4_000_000)
    ap.add_argument("--influx-points", type=int, default=1_000_000)
    ap.add_argument("--tags", type=int, default=4000)
    ap.add_argument("--no-influx", action="store_true")
    ap.add_argument("--no-embedded", action="store_true", help="only the influx backend")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-historian-")
    try:
        if not a.no_embedded:
            print_embedded(a, tmp)
        if not a.no_influx:
            print_influx(a, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
