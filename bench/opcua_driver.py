"""Benchmark: traffic-controller simulator cost and the OPC UA client driver's notification path.

Run:  /tmp/venv/bin/python bench/opcua_driver.py [--items 10000] [--rate 10000] [--seconds 8]

Prints
  A. simulator cost: an asyncua server per junction vs many junctions in one server
     (start time and RSS per junction, extrapolated to Dijon 200 / Paris 2000 junctions);
  B. the driver's notification path: a server process changing ``--rate`` values/s over
     ``--items`` monitored items; the driver (one Batch per Publish response into the tag
     database) against a baseline in the same run: asyncua's Subscription with a per-item
     ``datachange_notification`` handler writing a dict (the usual integration). Figures:
     notifications/s received, client CPU % of one core, CPU µs per notification, ratio.
  C. (``--watchdog``) the keep-alive trap: a busy server with ``--items`` items and two
     clients, asyncua's default watchdog (1 s) vs the profile's settings, counting drops.

Every loop is bounded by count and time; loopback only. Figures on a shared 2-core machine
are noisy: run twice and compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import multiprocessing as mp
import resource
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asyncua import Client, Server, ua

logging.basicConfig(level=logging.ERROR)
for name in ("asyncua", "drivers", "scada"):
    logging.getLogger(name).setLevel(logging.CRITICAL)

NS_URI = "urn:bench:opcua-driver"
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


# ----------------------------------------------------------------------------- A
async def simulator_cost(junctions_shared: int) -> None:
    from scada.clock import RealClock
    from simulators.traffic import JunctionModel, _EndpointServer

    clock = RealClock()
    print("A. traffic simulator cost (asyncua servers built in this process)")
    gc.collect()
    r0, t0 = rss_mb(), time.perf_counter()
    solo = []
    for _ in range(3):
        s = _EndpointServer(f"opc.tcp://127.0.0.1:{free_port()}/j", clock,
                            {"J1": JunctionModel("J1", 8, clock.time())})
        await s.build()
        solo.append(s)
    t_solo, r_solo = (time.perf_counter() - t0) / 3, (rss_mb() - r0) / 3
    gc.collect()
    r0, t0 = rss_mb(), time.perf_counter()
    shared = _EndpointServer(f"opc.tcp://127.0.0.1:{free_port()}/j", clock,
                             {f"J{k:04d}": JunctionModel(f"J{k:04d}", 8, clock.time())
                              for k in range(junctions_shared)})
    await shared.build()
    t_sh, r_sh = (time.perf_counter() - t0), rss_mb() - r0
    # the shared server's own start (one empty server) is not a junction's cost
    per_t = max(t_sh - t_solo, 0.0) / junctions_shared
    per_r = max(r_sh - r_solo, 0.0) / junctions_shared
    print(f"   one server per junction : {t_solo * 1000:7.0f} ms, {r_solo:6.1f} MB per junction")
    print(f"   {junctions_shared} junctions in 1 server: {t_sh * 1000:7.0f} ms total; beyond the "
          f"server itself {per_t * 1000:5.1f} ms, {per_r * 1024:5.0f} KB per junction")
    for n, city in ((200, "Dijon"), (2000, "Paris")):
        print(f"   {city:5} {n:5} junctions: per-junction servers {n * t_solo:6.0f} s, "
              f"{n * r_solo / 1024:5.1f} GB | shared (100/server) "
              f"{n * per_t + (n / 100) * t_solo:5.0f} s, {(n * per_r + n / 100 * r_solo) / 1024:5.2f} GB")
    print(f"   ratio (start time per junction): {t_solo / per_t:.0f}x in favour of sharing")


# ----------------------------------------------------------------------------- B: server
def _server_proc(port: int, devices: int, points: int, rate: float, seconds: float, ready) -> None:
    async def main() -> None:
        s = Server()
        await s.init()
        s.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench")
        s.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        ns = await s.register_namespace(NS_URI)
        nodes = []
        for d in range(devices):
            obj = await s.nodes.objects.add_object(ua.NodeId(f"D{d:04d}", ns), f"D{d:04d}")
            for p in range(points):
                v = await obj.add_variable(ua.NodeId(f"D{d:04d}.v{p:02d}", ns), f"v{p:02d}",
                                           ua.Variant(0, ua.VariantType.Int32))
                nodes.append(v.nodeid)
        aspace = s.iserver.aspace
        async with s:
            ready.set()
            n = len(nodes)
            k = 0
            tick = 0.1
            per_tick = max(1, int(rate * tick))
            t_end = time.monotonic() + seconds
            val = 0
            while time.monotonic() < t_end:
                t0 = time.monotonic()
                val += 1
                for _ in range(per_tick):
                    dv = ua.DataValue(ua.Variant(val, ua.VariantType.Int32),
                                      SourceTimestamp=datetime.now(UTC))
                    await aspace.write_attribute_value(nodes[k % n], ua.AttributeIds.Value, dv)
                    k += 1
                await asyncio.sleep(max(0.0, tick - (time.monotonic() - t0)))

    asyncio.run(main())


def _start_server(devices: int, points: int, rate: float, seconds: float) -> tuple[mp.Process, int]:
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    port = free_port()
    p = ctx.Process(target=_server_proc, args=(port, devices, points, rate, seconds, ready), daemon=True)
    p.start()
    if not ready.wait(180):
        p.kill()
        raise RuntimeError("bench server did not start within 180 s")
    return p, port


def _bench_site(tmp: Path, port: int, devices: int, points: int) -> Path:
    import yaml

    prof = {
        "protocol": "opcua", "kind": "other",
        "options": {"namespace": NS_URI, "publishing_interval_ms": 100, "sampling_interval_ms": 0,
                    "keepalive_count": 10, "lifetime_count": 60},
        "points": [{"name": f"v{p:02d}", "type": "int", "source": {"node": f"{{device}}.v{p:02d}"}}
                   for p in range(points)],
    }
    site = {
        "site": {"name": "bench", "latitude": 47.3, "longitude": 5.0, "state_dir": str(tmp)},
        "areas": [{"id": "a"}],
        "profiles": {"bench": prof},
        "devices": [{"id": f"d{d:04d}", "profile": "bench", "area": "a",
                     "connection": {"endpoint": f"opc.tcp://127.0.0.1:{port}/bench", "object": f"D{d:04d}"}}
                    for d in range(devices)],
    }
    path = tmp / "bench-site.yaml"
    path.write_text(yaml.safe_dump(site), encoding="utf-8")
    return path


async def _measure(seconds: float, counter) -> tuple[float, float]:
    """(notifications/s, CPU % of one core) over ``seconds`` after a 1 s warm-up."""
    await asyncio.sleep(1.0)
    n0, c0, t0 = counter(), time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    dn, dc, dt = counter() - n0, time.process_time() - c0, time.monotonic() - t0
    return dn / dt, 100.0 * dc / dt


async def _start_driver(site_path: Path, within_s: float) -> tuple[Any, float]:
    """A Runtime with only the opcua driver, started and connected; (runtime, seconds)."""
    from scada.clock import RealClock
    from scada.loader import load_site
    from scada.runtime import Runtime

    rt = Runtime(load_site(str(site_path)), RealClock())
    rt.load_drivers(only=["opcua"])
    t0 = time.perf_counter()
    await rt.start()
    await rt.drivers["opcua"].wait_connected(within_s)
    return rt, time.perf_counter() - t0


async def driver_path(items: int, rate: float, seconds: float, tmp: Path) -> tuple[float, float]:
    points = 50
    devices = max(1, items // points)
    proc, port = _start_server(devices, points, rate, seconds + 15)
    try:
        rt, t_conn = await _start_driver(_bench_site(tmp, port, devices, points), 60)
        rate_got, cpu = await _measure(seconds, lambda: rt.tagdb.stats["samples"])
        batches = rt.tagdb.stats["batches"]
        await rt.stop()
    finally:
        proc.kill()
        proc.join()
    print(f"   driver  : {devices} devices x {points} items, connected+subscribed in {t_conn:.1f} s; "
          f"{rate_got:8.0f} notifications/s, client CPU {cpu:5.1f} % "
          f"({cpu * 1e4 / max(rate_got, 1):6.1f} µs each), {batches} batches")
    return rate_got, cpu


async def baseline_path(items: int, rate: float, seconds: float) -> tuple[float, float]:
    points = 50
    devices = max(1, items // points)
    proc, port = _start_server(devices, points, rate, seconds + 15)
    got = {"n": 0}
    values: dict[str, object] = {}

    class Handler:
        def datachange_notification(self, node, val, data) -> None:
            values[node.nodeid.Identifier] = val
            got["n"] += 1

    try:
        client = Client(f"opc.tcp://127.0.0.1:{port}/bench", watchdog_intervall=10)
        await client.connect()
        try:
            ns = await client.get_namespace_index(NS_URI)
            sub = await client.create_subscription(100, Handler())
            nodes = [client.get_node(ua.NodeId(f"D{d:04d}.v{p:02d}", ns))
                     for d in range(devices) for p in range(points)]
            for k in range(0, len(nodes), 1000):
                await sub.subscribe_data_change(nodes[k:k + 1000])
            rate_got, cpu = await _measure(seconds, lambda: got["n"])
            await sub.delete()
        finally:
            await client.disconnect()
    finally:
        proc.kill()
        proc.join()
    print(f"   baseline: asyncua Subscription + per-item handler      "
          f"{rate_got:8.0f} notifications/s, client CPU {cpu:5.1f} % "
          f"({cpu * 1e4 / max(rate_got, 1):6.1f} µs each)")
    return rate_got, cpu


# ----------------------------------------------------------------------------- D
def _city_site(tmp: Path, junctions: int, per_endpoint: int) -> tuple[Path, list[int]]:
    import yaml

    profiles = yaml.safe_load((REPO / "config" / "profiles" / "junction-opcua.yaml").read_text())["profiles"]
    ports = [free_port() for _ in range((junctions + per_endpoint - 1) // per_endpoint)]
    devices = [{"id": f"jct-{k:04d}", "profile": ("junction-opcua-4", "junction-opcua",
                                                   "junction-opcua-12")[k % 3],
                "area": "a", "connection": {"endpoint": f"opc.tcp://127.0.0.1:{ports[k // per_endpoint]}/j"}}
               for k in range(junctions)]
    site = {"site": {"name": "bench city", "latitude": 47.3, "longitude": 5.0, "state_dir": str(tmp)},
            "areas": [{"id": "a"}], "profiles": profiles, "devices": devices}
    path = tmp / "city.yaml"
    path.write_text(yaml.safe_dump(site), encoding="utf-8")
    return path, ports


def _city_sim_proc(site_path: str, seconds: float, ready) -> None:
    async def main() -> None:
        from scada.clock import RealClock
        from scada.loader import load_site
        from simulators.traffic import serve_site

        site = load_site(site_path)
        sim = await serve_site(site, RealClock(), site.by_protocol()["opcua"])
        ready.set()
        try:
            await asyncio.sleep(seconds)
        finally:
            await sim.aclose()

    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    asyncio.run(main())


async def city_junctions(junctions: int, per_endpoint: int, seconds: float, tmp: Path) -> None:
    path, ports = _city_site(tmp, junctions, per_endpoint)
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    t0 = time.perf_counter()
    proc = ctx.Process(target=_city_sim_proc, args=(str(path), seconds + 120, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(300):
            raise RuntimeError("city simulator did not start within 300 s")
        t_sim = time.perf_counter() - t0
        rt, t_conn = await _start_driver(path, 120)
        items = sum(len(s.specs) for s in rt.drivers["opcua"].sessions)
        rate, cpu = await _measure(seconds, lambda: rt.tagdb.stats["changes"])
        await rt.stop()
    finally:
        proc.kill()
        proc.join()
    print(f"D. {junctions} junctions on {len(ports)} endpoints ({per_endpoint} per server, simulator in "
          f"its own process, real time): simulator up in {t_sim:.0f} s; driver connected "
          f"{items} items in {t_conn:.1f} s; {rate:.0f} tag changes/s at {cpu:.1f} % of one core")


# ----------------------------------------------------------------------------- C
async def watchdog_trap(items: int, rate: float, seconds: float) -> None:
    """Two clients on one busy server: asyncua's 1 s watchdog vs the profile's 10 s."""
    points = 50
    devices = max(1, items // points)
    proc, port = _start_server(devices, points, rate, seconds + 60)
    drops = {1.0: 0, 10.0: 0}

    async def one(wd: float) -> None:
        c = Client(f"opc.tcp://127.0.0.1:{port}/bench", watchdog_intervall=wd, timeout=10)

        async def lost(exc: Exception) -> None:
            drops[wd] += 1

        c.connection_lost_callback = lost
        await c.connect()
        try:
            ns = await c.get_namespace_index(NS_URI)

            class H:
                def datachange_notification(self, node, val, data) -> None:
                    pass

            sub = await c.create_subscription(500, H())
            nodes = [c.get_node(ua.NodeId(f"D{d:04d}.v{p:02d}", ns))
                     for d in range(devices) for p in range(points)]
            for k in range(0, len(nodes), 2000):
                await sub.subscribe_data_change(nodes[k:k + 2000])
            await asyncio.sleep(seconds)
        finally:
            try:
                await asyncio.wait_for(c.disconnect(), 5)
            except (OSError, ConnectionError, TimeoutError, ua.UaError):
                c.disconnect_socket()

    try:
        await asyncio.gather(one(1.0), one(10.0), return_exceptions=True)
    finally:
        proc.kill()
        proc.join()
    print(f"C. watchdog trap, {devices * points} items, {rate:.0f} changes/s, {seconds:.0f} s: "
          f"connection losses with watchdog 1 s: {drops[1.0]}, with 10 s: {drops[10.0]}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=10_000.0)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--shared", type=int, default=100, help="junctions in the shared server (A)")
    ap.add_argument("--watchdog", action="store_true", help="also run part C (slow: ~1-2 min)")
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--skip-b", action="store_true")
    ap.add_argument("--city", type=int, default=0, metavar="N",
                    help="part D: N simulated junctions (100 per server) read by the driver")
    a = ap.parse_args()
    import tempfile

    if not a.skip_a:
        await simulator_cost(a.shared)
    if a.city:
        with tempfile.TemporaryDirectory() as tmp:
            await city_junctions(a.city, 100, a.seconds, Path(tmp))
    if a.skip_b:
        if a.watchdog:
            await watchdog_trap(a.items, a.rate, max(a.seconds, 30))
        return
    print(f"B. notification path: {a.items} monitored items, server changing {a.rate:.0f} values/s, "
          f"{a.seconds:.0f} s each (server in its own process)")
    with tempfile.TemporaryDirectory() as tmp:
        d_rate, d_cpu = await driver_path(a.items, a.rate, a.seconds, Path(tmp))
    b_rate, b_cpu = await baseline_path(a.items, a.rate, a.seconds)
    d_us = d_cpu * 1e4 / max(d_rate, 1)
    b_us = b_cpu * 1e4 / max(b_rate, 1)
    print(f"   ratio: baseline/driver CPU per notification = {b_us / max(d_us, 1e-9):.1f}x")
    print(f"   peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if a.watchdog:
        await watchdog_trap(a.items, a.rate, max(a.seconds, 30))


if __name__ == "__main__":
    asyncio.run(main())
