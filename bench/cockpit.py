"""The cockpit's live map at Paris size (issue 19): first paint, fault to red dot in the browser,
the server's cost of 50 live sessions, and its memory over session churn. Loopback only.

    python bench/cockpit.py [--size paris|dijon|small] [--faults 100] [--sessions 50]
                            [--load-seconds 30] [--churn-seconds 180] [--json]

What it does (and what it leaves out):
1. `scada gen-city` writes the city (Paris: 200,000 luminaires and 2,000 junctions, with their
   positions) and the bench adds a plain-HTTP loopback console and one operator account.
2. The server runs in its own process (this file with ``--serve``): the real ``Runtime`` with
   the alarm engine and the web console (uvicorn, in its event loop), **without drivers or field
   simulators** (a Paris of simulators would take the two cores the browser and the server
   need); every tag is fed Good values once, like a city whose devices all answered, and
   faults are set in the tag database through a loopback control channel, where a driver
   would put them. The alarm engine, the map's device states, the hub and the browser are
   the real ones.
3. First paint: a fresh headless Chromium page (Debian's, Playwright) logs in and opens /map;
   the figure is the page's own ``performance.now()`` when the first frame with every device
   is drawn (navigation start = 0). Cold (the server encodes the device table) and warm.
4. Fault to red dot: ``--faults`` cabinet doors opened one at a time; each latency is the
   browser's clock when the frame showing the red dot was drawn minus the server's alarm
   transition time carried by the event (one machine, one clock).
5. Live cost: server CPU (psutil, % of one core) over ``--load-seconds`` of faults at
   ``--rate``/s, with no client, then with ``--sessions`` live sessions (one browser page and
   SSE clients, each its own login), against the idle server measured first.
6. Churn: sessions log in, stream, log out (``--sessions`` at a time) for ``--churn-seconds``
   (an hour scaled down: the default is three minutes); server RSS sampled, its least-squares
   slope printed (MB per hour and per 1,000 sessions).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from bench._util import free_port, percentile, save, verdict  # noqa: E402

SIZES = {"small": (600, 4), "dijon": (34_000, 200), "paris": (200_000, 2_000)}
USER, PASSWORD = "bench", "bench-password"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# --------------------------------------------------------------------------- the server process
async def serve(site_path: str, control_port: int) -> None:
    import numpy as np

    from scada import quality as Q
    from scada.clock import RealClock
    from scada.loader import load_site
    from scada.runtime import Runtime
    from scada.tags import Batch

    t0 = time.time()
    site = load_site(site_path, validate_drivers=False)
    rt = Runtime(site, RealClock())
    rt.load_services(only=["alarms", "web"])
    for d in site.devices:  # no drivers: the bench is every device's writer
        rt.claim(d.path)
    await rt.start()
    svc = rt.services["web"]
    await asyncio.wait_for(svc.started.wait(), 300)
    t_map = time.time()
    if getattr(svc.ctx, "map_prewarm", None) is not None:
        await svc.ctx.map_prewarm  # the map's device table, encoded at start
    map_s = time.time() - t_map
    db = rt.tagdb
    n = len(db.value)
    # every tag Good, at values that raise no alarm (the "equals: false" points true, voltages
    # nominal, commands equal to their feedback), as if every device had answered its first poll
    normal = {"mains_ok": 1.0, "comm_ok": 1.0, "online": 1.0, "lines_ok": 1.0,
              "voltage_l1": 230.0, "voltage_l2": 230.0, "voltage_l3": 230.0}
    vals = np.zeros(n)
    fresh: list[int] = []  # energy meters re-read every minute (no stale-meter alarm)
    for d in site.all_devices():
        sch = site.schemas[d.profile_name]
        for name, v in normal.items():
            k = sch.offsets.get(name)
            if k is not None:
                vals[d.first_tag + k] = v
        k = sch.offsets.get("energy_wh")
        if k is not None:
            fresh.append(d.first_tag + k)
    db.apply(Batch.of(np.arange(n), vals, Q.Good, rt.clock.time()))

    async def meters() -> None:
        while True:
            await asyncio.sleep(60)
            db.apply(Batch.of(fresh, vals[fresh], Q.Good, rt.clock.time()))

    meter_task = asyncio.create_task(meters())

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                req = json.loads(line)
                if req["op"] == "set":
                    i = db.index(req["tag"])
                    db.apply(Batch.of([i], [float(req["value"])], Q.Good, rt.clock.time()))
                    out = {"ok": True, "t": rt.clock.time()}
                elif req["op"] == "stats":
                    ms = rt.services["web"].ctx.map_states
                    out = {"ok": True, "clients": len(svc.hub.clients), "sessions": len(svc.sessions),
                           "map": ms.stats, "hub": svc.hub.stats}
                else:
                    out = {"ok": False}
                writer.write((json.dumps(out) + "\n").encode())
                await writer.drain()
        finally:
            writer.close()

    ctl = await asyncio.start_server(handle, "127.0.0.1", control_port)
    print(f"READY {svc.url} load_s={time.time() - t0:.1f} map_table_s={map_s:.1f} tags={n}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with ctl:
            await stop.wait()
    finally:
        meter_task.cancel()
        await rt.stop()


# --------------------------------------------------------------------------- bench side
class Control:
    def __init__(self, port: int):
        self.port = port
        self.rw: Any = None

    async def call(self, **req: Any) -> dict[str, Any]:
        if self.rw is None:
            self.rw = await asyncio.open_connection("127.0.0.1", self.port)
        r, w = self.rw
        w.write((json.dumps(req) + "\n").encode())
        await w.drain()
        return json.loads(await asyncio.wait_for(r.readline(), 30))


def cpu_of(proc: Any) -> float:
    t = proc.cpu_times()
    return t.user + t.system


async def cpu_over(proc: Any, seconds: float, during: Any = None) -> float:
    """% of one core the server used over ``seconds`` (while ``during`` runs, if given)."""
    c0, t0 = cpu_of(proc), time.monotonic()
    task = asyncio.ensure_future(during) if during is not None else None
    await asyncio.sleep(seconds)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return 100.0 * (cpu_of(proc) - c0) / (time.monotonic() - t0)


async def login_http(url: str) -> tuple[Any, str]:
    import httpx

    c = httpx.AsyncClient(base_url=url, timeout=60)
    r = await c.post("/login", json={"user": USER, "password": PASSWORD})
    r.raise_for_status()
    return c, r.json()["csrf"]


async def sse_session(url: str, stop: asyncio.Event, counts: dict[str, int]) -> None:
    """One live session: log in, read /api/map/states and the event stream until ``stop``."""
    c, csrf = await login_http(url)
    try:
        await c.get("/api/map/states")
        async with c.stream("GET", "/api/stream") as r:
            counts["open"] += 1
            async for line in r.aiter_lines():
                if line.startswith("event: map.state"):
                    counts["events"] += 1
                if stop.is_set():
                    break
    finally:
        counts["open"] -= 1
        try:
            await c.post("/logout", headers={"X-CSRF-Token": csrf}, data={"csrf": csrf})
        except Exception:
            pass
        await c.aclose()


async def browser_page(browser: Any, url: str) -> tuple[Any, float]:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
    r = await ctx.request.post(url + "/login", data={"user": USER, "password": PASSWORD})
    assert r.ok, await r.text()
    page = await ctx.new_page()
    await page.goto(url + "/map")
    await page.wait_for_function("() => window.scadaMap && (window.scadaMap.ready || window.scadaMap.error)",
                                 timeout=120_000)
    err = await page.evaluate("() => window.scadaMap.error")
    if err:
        raise RuntimeError(f"the map failed: {err}")
    return page, await page.evaluate("() => window.scadaMap.firstPaint")


async def faults(ctl: Control, page: Any, tags: list[str], rate: float) -> list[float]:
    """Open each door, wait for the browser to draw it red; latencies in seconds."""
    lat: list[float] = []
    for tag in tags:
        t_next = time.monotonic() + 1.0 / rate
        dev = tag.rsplit("/", 1)[0]
        await ctl.call(op="set", tag=tag, value=1)
        try:
            await page.wait_for_function("(p) => { const s = window.scadaMap.seen[p]; return s && s.state === 7; }",
                                         arg=dev, timeout=20_000)
            s = await page.evaluate("(p) => window.scadaMap.seen[p]", dev)
            lat.append(s["t"] - s["server_ts"])
        except Exception as e:  # counted as missing: the p99 then fails
            print(f"  no red dot for {dev}: {e.__class__.__name__}", flush=True)
        await asyncio.sleep(max(0.0, t_next - time.monotonic()))
    return lat


_TOGGLES = {"k": 0}  # carried across runs: every call changes a door (open, then closed again)


async def background_faults(ctl: Control, tags: list[str], rate: float) -> None:
    while True:
        k = _TOGGLES["k"]
        await ctl.call(op="set", tag=tags[k % len(tags)], value=(k // len(tags) + 1) % 2)
        _TOGGLES["k"] = k + 1
        await asyncio.sleep(1.0 / rate)


async def bench(a: argparse.Namespace, url: str, proc: Any, ctl: Control, site: Any, out: dict[str, Any]) -> None:
    from playwright.async_api import async_playwright

    # junction doors: a junction has no stale-meter alarm that could already make it red
    junctions = [d.path for d in site.devices if d.kind == "junction"]
    rng = random.Random(7)
    picks = rng.sample(junctions, min(len(junctions), a.faults * 2 + 50))
    fault_tags = [f"{d}/door_open" for d in picks[: a.faults]]
    load_tags = [f"{d}/door_open" for d in picks[a.faults:]] or fault_tags

    out["idle_cpu_pct"] = round(await cpu_over(proc, a.idle_seconds), 2)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page, cold = await browser_page(browser, url)
            out["first_paint_cold_ms"] = round(cold)
            await page.context.close()
            page, warm = await browser_page(browser, url)
            out["first_paint_warm_ms"] = round(warm)
            out["devices_on_map"] = await page.evaluate("() => window.scadaMap.n")
            print(f"first paint: cold {cold:.0f} ms, warm {warm:.0f} ms ({out['devices_on_map']} devices)", flush=True)
            lat = await faults(ctl, page, fault_tags, a.fault_rate)
            out["faults"] = len(fault_tags)
            out["red_dots_seen"] = len(lat)
            out["fault_to_red_dot_p50_ms"] = round(1000 * percentile(lat, 50), 1) if lat else None
            out["fault_to_red_dot_p99_ms"] = round(1000 * percentile(lat, 99), 1) if len(lat) == len(fault_tags) else None
            out["fault_to_red_dot_max_ms"] = round(1000 * max(lat), 1) if lat else None
            print(f"fault to red dot: p50 {out['fault_to_red_dot_p50_ms']} ms, p99 {out['fault_to_red_dot_p99_ms']} ms "
                  f"({len(lat)}/{len(fault_tags)} seen)", flush=True)
            # live cost: the same fault load without clients, then with the sessions
            out["load_rate_per_s"] = a.rate
            await page.context.close()
            out["load_no_client_cpu_pct"] = round(await cpu_over(proc, a.load_seconds,
                                                                 background_faults(ctl, load_tags, a.rate)), 2)
            page, _ = await browser_page(browser, url)
            stop = asyncio.Event()
            counts = {"open": 0, "events": 0}
            tasks = [asyncio.ensure_future(sse_session(url, stop, counts)) for _ in range(a.sessions - 1)]
            for _ in range(600):
                if counts["open"] >= a.sessions - 1:
                    break
                await asyncio.sleep(0.1)
            out["sessions_open"] = counts["open"] + 1
            ev0 = counts["events"]
            out["load_sessions_cpu_pct"] = round(await cpu_over(proc, a.load_seconds,
                                                                background_faults(ctl, load_tags, a.rate)), 2)
            out["events_received_by_sse_clients"] = counts["events"] - ev0
            out["sessions_cost_vs_idle_pct_of_core"] = round(out["load_sessions_cpu_pct"] - out["idle_cpu_pct"], 2)
            out["sessions_cost_vs_same_load_pct_of_core"] = round(out["load_sessions_cpu_pct"] - out["load_no_client_cpu_pct"], 2)
            print(f"server CPU: idle {out['idle_cpu_pct']} %, faults at {a.rate}/s without clients "
                  f"{out['load_no_client_cpu_pct']} %, with {out['sessions_open']} sessions {out['load_sessions_cpu_pct']} %",
                  flush=True)
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await page.context.close()
        finally:
            await browser.close()
    # churn: sessions come and go; RSS sampled
    samples: list[tuple[float, int]] = []
    t_end = time.monotonic() + a.churn_seconds
    made = 0
    while time.monotonic() < t_end:
        stop = asyncio.Event()
        counts = {"open": 0, "events": 0}
        tasks = [asyncio.ensure_future(sse_session(url, stop, counts)) for _ in range(a.sessions)]
        for _ in range(300):
            if counts["open"] >= a.sessions:
                break
            await asyncio.sleep(0.1)
        await ctl.call(op="set", tag=load_tags[made % len(load_tags)], value=made % 2)
        await asyncio.sleep(1.0)
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        made += a.sessions
        samples.append((time.monotonic(), proc.memory_info().rss))
    out["churn_sessions"] = made
    st = await ctl.call(op="stats")
    out["after_churn_server"] = {"sessions": st["sessions"], "stream_clients": st["clients"],
                                 "map_state_updates": st["map"]["updates"]}
    out["churn_seconds"] = a.churn_seconds
    if len(samples) >= 3:
        import numpy as np

        t = np.array([s[0] for s in samples]) - samples[0][0]
        mb = np.array([s[1] for s in samples]) / 2**20
        half = len(samples) // 3  # after warm-up
        slope = float(np.polyfit(t[half:], mb[half:], 1)[0]) if len(samples) - half >= 3 else float("nan")
        per_session = slope * (t[-1] - t[half]) / max(1, made * (len(samples) - half) / len(samples))
        out["churn_rss_mb"] = {"first": round(float(mb[0]), 1), "last": round(float(mb[-1]), 1),
                               "min": round(float(mb.min()), 1), "max": round(float(mb.max()), 1)}
        out["churn_rss_slope_mb_per_hour"] = round(slope * 3600, 1)
        out["churn_rss_kb_per_session"] = round(per_session * 1024, 2)
        print(f"churn: {made} sessions in {a.churn_seconds:.0f} s, RSS {mb[0]:.0f} -> {mb[-1]:.0f} MB, slope after "
              f"warm-up {slope * 3600:.1f} MB/h ({per_session * 1024:.2f} KB per session)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=list(SIZES), default="paris")
    p.add_argument("--faults", type=int, default=100)
    p.add_argument("--fault-rate", type=float, default=4.0, help="faults per second (latency run)")
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--rate", type=float, default=2.0, help="alarm transitions per second (cost run)")
    p.add_argument("--idle-seconds", type=float, default=15.0)
    p.add_argument("--load-seconds", type=float, default=30.0)
    p.add_argument("--churn-seconds", type=float, default=180.0, help="an hour of churn, scaled down")
    p.add_argument("--serve", nargs=2, metavar=("SITE", "CONTROL_PORT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        asyncio.run(serve(a.serve[0], int(a.serve[1])))
        return
    import psutil

    from scada.loader import load_site
    from scada.users import hash_password

    work = tempfile.mkdtemp(prefix="cockpit-")
    server = None
    out: dict[str, Any] = {"size": a.size}
    try:
        lum, jct = SIZES[a.size]
        site_path = os.path.join(work, "city.yaml")
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "cli", "gen-city", "--luminaires", str(lum), "--junctions", str(jct),
                        "--out", site_path, "--base-port", "20000"], cwd=REPO, check=True, timeout=900,
                       stdout=subprocess.DEVNULL)
        web_port, ctl_port = free_port(), free_port()
        with open(site_path, "a") as f:
            f.write(f"web: {{enabled: true, host: 127.0.0.1, port: {web_port}, tls: false, max_stream_clients: 300, "
                    f"max_sessions: 5000, login_rate: {{per_address: 1000000, per_account: 1000000, window: 1min}}}}\n"
                    f"opcua: {{enabled: false}}\n"
                    f"users:\n  - {{name: {USER}, role: operator, password_hash: '{hash_password(PASSWORD, n=2**10)}'}}\n")
        print(f"city written in {time.time() - t0:.0f} s: {site_path}", flush=True)
        site = load_site(site_path, validate_drivers=False)
        server = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", site_path, str(ctl_port)],
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=open(os.path.join(work, "server.log"), "w"),
                                  text=True)
        line = server.stdout.readline()
        if not line.startswith("READY"):
            with open(os.path.join(work, "server.log")) as f:
                raise SystemExit(f"the server did not start: {line!r}\n{f.read()[-3000:]}")
        url = line.split()[1].rstrip("/")
        print(line.strip(), flush=True)
        out["server_start"] = line.strip()
        proc = psutil.Process(server.pid)
        out["server_rss_mb_at_start"] = round(proc.memory_info().rss / 2**20)
        asyncio.run(bench(a, url, proc, Control(ctl_port), site, out))
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(work, ignore_errors=True)
    res = [
        ("map first paint, warm (ms)", out.get("first_paint_warm_ms"), 3000, "max"),
        ("map first paint, cold (ms)", out.get("first_paint_cold_ms"), 3000, "max"),
        ("fault to red dot p99 (ms)", out.get("fault_to_red_dot_p99_ms"), 1000, "max"),
        (f"{a.sessions} live sessions, server CPU above idle (% of a core)",
         out.get("sessions_cost_vs_idle_pct_of_core"), 10.0, "max"),
    ]
    print("\nfigures:", json.dumps(out, indent=2))
    for name, v, lim, kind in res:
        print(f"{verdict(v, lim, kind)}  {name}: {v} (target {'<=' if kind == 'max' else '>='} {lim})")
    print(f"memory slope over churn: {out.get('churn_rss_slope_mb_per_hour')} MB/h, "
          f"{out.get('churn_rss_kb_per_session')} KB per session (no fixed target: printed)")
    print("saved", save(f"cockpit-{a.size}", out))


if __name__ == "__main__":
    main()
