"""Open311 benchmark (issue 21): "already known?" at city size, and reports over HTTP.

    python bench/open311.py [--luminaires 200000] [--junctions 2000] [--reports 300]

A city from ``scada gen-city`` (Paris size by default: 200,000 luminaires with their positions,
2,000 junctions); one server process with the alarm, interventions, web (plain HTTP on loopback)
and open311 services on the real clock, no drivers (the bench feeds nothing: every device is
claimed), a client app registered as the CLI does.

1. **Matching**: for 1,000 random points inside Dijon, the devices of the street-light service
   within ``attach_radius_m`` and ``match_radius_m`` (``Open311Service._near``: a binary search
   for the latitude band in the jurisdiction's devices of the service's kinds, sorted once per
   position change, then numpy distances for that band) plus the open-order / active-alarm
   lookup. Baseline: the
   same nearest-device search as a Python loop over every device (what a naive server does).
   Target: < 10 ms per report.
2. **Reports over HTTP**: ``--reports`` POST requests.json, each a few metres from a random
   luminaire of Dijon, one in three next to a luminaire already reported (attaches); timed from
   the client (median, p99). Baseline: ``GET /open311/v2/services.json`` in the same run.
   Target: p99 < 1 s (the report is journaled with fsync before the answer, the work order too).
3. **GET requests.json** answering with every report filed (last 90 days). Target: < 1 s.

Figures saved to bench/results/open311.json; PASS/FAIL against the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._util import free_port, percentile, rss_bytes, save, verdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def run(a: argparse.Namespace, site_path: str, out: dict[str, Any]) -> None:
    import httpx

    from scada.clock import RealClock
    from scada.loader import load_site
    from scada.runtime import Runtime

    t0 = time.time()
    site = load_site(site_path, validate_drivers=False)
    rt = Runtime(site, RealClock())
    rt.load_services(only=["alarms", "interventions", "web", "open311"])
    for d in site.devices:
        rt.claim(d.path)
    await rt.start()
    try:
        web = rt.services["web"]
        await asyncio.wait_for(web.started.wait(), 300)
        svc = rt.services["open311"]
        out["server_start_s"] = round(time.time() - t0, 1)
        out["server_rss_mb"] = round(rss_bytes() / 2**20)
        ix = svc._index
        out["devices_with_positions"] = len(ix["paths"])
        jid = max(svc.area_of_jurisdiction, key=lambda j: int(ix["in"][j].sum()))
        s, w, n, e = svc.jurisdictions[jid]
        out["jurisdiction"] = jid
        lum = [i for i in range(len(ix["paths"])) if ix["in"][jid][i] and ix["kinds"][i] == "luminaire"]
        out["luminaires_in_jurisdiction"] = len(lum)
        rng = random.Random(21)
        code = svc.services["streetlight_out"]

        # ---- 1. matching
        pts = [(rng.uniform(s, n), rng.uniform(w, e)) for _ in range(1000)]
        t = time.perf_counter()
        found = 0
        radius = max(svc.cfg.attach_radius_m, svc.cfg.match_radius_m)
        for lat, lon in pts:  # what submit() does: one search, then the attach radius within it
            around = svc._near(jid, code.kinds, lat, lon, radius)
            svc._known(code, [p for d, p in around if d <= svc.cfg.attach_radius_m])
            found += bool(around)
        out["matching_ms_per_report"] = round((time.perf_counter() - t) * 1000 / len(pts), 3)
        out["matching_points_with_a_device"] = found
        lat_l, lon_l, paths = list(ix["lat"]), list(ix["lon"]), ix["paths"]
        areas, kinds = list(ix["areas"]), list(ix["kinds"])
        in_j = svc.area_of_jurisdiction[jid]
        t = time.perf_counter()
        for lat, lon in pts[:100]:
            best = None
            c = math.cos(math.radians(lat))
            for i in range(len(paths)):
                if areas[i] in in_j and kinds[i] == "luminaire":
                    d = 6_371_000.0 * math.hypot(math.radians(lon_l[i] - lon) * c, math.radians(lat_l[i] - lat))
                    if d <= svc.cfg.match_radius_m and (best is None or d < best[0]):
                        best = (d, paths[i])
        out["baseline_python_loop_ms_per_report"] = round((time.perf_counter() - t) * 1000 / 100, 3)

        # ---- 2. reports over HTTP
        key = svc.clients.add("bench", "", time.time())
        async with httpx.AsyncClient(base_url=web.url.rstrip("/"), timeout=60) as c:
            base = []
            for _ in range(50):
                t = time.perf_counter()
                r = await c.get("/open311/v2/services.json")
                base.append(time.perf_counter() - t)
                assert r.status_code == 200
            posts, created, attached = [], 0, 0
            targets = [lum[rng.randrange(len(lum))] for _ in range(a.reports)]
            for k in range(a.reports):
                i = targets[k - 1] if k % 3 == 2 else targets[k]
                lat = float(ix["lat"][i]) + rng.uniform(-5e-5, 5e-5)
                lon = float(ix["lon"][i]) + rng.uniform(-5e-5, 5e-5)
                form = {"api_key": key, "jurisdiction_id": jid, "service_code": "streetlight_out",
                        "lat": f"{lat:.6f}", "long": f"{lon:.6f}", "attribute[lights_affected]": "one",
                        "description": "dark", "email": "bench@example.org"}
                t = time.perf_counter()
                r = await c.post("/open311/v2/requests.json", data=form)
                posts.append(time.perf_counter() - t)
                assert r.status_code == 201, r.text
                notice = r.json()[0]["service_notice"]
                created += notice.startswith("Thank you")
                attached += notice.startswith("Already known")
            out["post_median_ms"] = round(percentile(posts, 50) * 1000, 1)
            out["post_p99_ms"] = round(percentile(posts, 99) * 1000, 1)
            out["get_services_median_ms"] = round(percentile(base, 50) * 1000, 1)
            out["reports_created_orders"] = created
            out["reports_attached"] = attached
            out["orders"] = len(rt.services["interventions"].store.orders)
            # ---- 3. GET requests
            t = time.perf_counter()
            r = await c.get("/open311/v2/requests.json", params={"jurisdiction_id": jid})
            out["get_requests_ms"] = round((time.perf_counter() - t) * 1000, 1)
            out["get_requests_rows"] = len(r.json())
    finally:
        await rt.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--luminaires", type=int, default=200_000)
    p.add_argument("--junctions", type=int, default=2_000)
    p.add_argument("--reports", type=int, default=300)
    a = p.parse_args()
    work = tempfile.mkdtemp(prefix="open311-")
    out: dict[str, Any] = {"luminaires": a.luminaires, "junctions": a.junctions}
    try:
        site_path = os.path.join(work, "city.yaml")
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "cli", "gen-city", "--luminaires", str(a.luminaires), "--junctions",
                        str(a.junctions), "--out", site_path, "--base-port", "20000"], cwd=REPO, check=True,
                       timeout=900, stdout=subprocess.DEVNULL)
        with open(site_path, "a") as f:
            f.write(f"web: {{enabled: true, host: 127.0.0.1, port: {free_port()}, tls: false}}\n"
                    "opcua: {enabled: false}\n"
                    "open311: {enabled: true, rate: {per_key: 1000000, per_address: 1000000, window: 1min}}\n")
        print(f"city written in {time.time() - t0:.0f} s: {site_path}", flush=True)
        asyncio.run(run(a, site_path, out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res = [
        ("matching per report (ms)", out.get("matching_ms_per_report"), 10.0, "max"),
        ("POST requests p99 (ms)", out.get("post_p99_ms"), 1000.0, "max"),
        ("GET requests, every report (ms)", out.get("get_requests_ms"), 1000.0, "max"),
    ]
    import json

    print("\nfigures:", json.dumps(out, indent=2))
    if out.get("matching_ms_per_report") and out.get("baseline_python_loop_ms_per_report"):
        print(f"matching vs Python loop: {out['baseline_python_loop_ms_per_report'] / out['matching_ms_per_report']:.0f}x")
    for name, v, lim, kind in res:
        print(f"{verdict(v, lim, kind)}  {name}: {v} (target <= {lim})")
    print("saved", save("open311", out))


if __name__ == "__main__":
    main()
