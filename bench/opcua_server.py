"""Benchmark of the HMI-facing OPC UA server (issue 5): address-space build and notification
throughput, against a bare asyncua server measured in the same run.

    /tmp/venv/bin/python bench/opcua_server.py            # full: 200k and 1.2M variables, 8 s load
    /tmp/venv/bin/python bench/opcua_server.py --quick    # 200k only, 4 s load

Prints:

1. **Build**: for 200,000 and 1,200,000 variables (cabinets of 128 luminaires, 15 points
   each), seconds from service start to a client having browsed Objects -> area -> cabinet ->
   luminaire and read a value, and the server's RSS. Baseline: a bare asyncua server creating
   20,000 variables through ``add_variable`` (folders of 100), extrapolated per variable.
2. **Throughput**: a client in a separate process monitors 10,000 variables (publishing
   interval 100 ms); the server's tag database takes 50,000 updates/s (20,000/s to monitored
   tags, 30,000/s to others). Printed: changes/s reaching the client and server CPU % of one
   core. Baseline: a bare asyncua server (10,000 monitored + 15,000 other variables) fed by
   plain ``write_value`` calls at the same rates. Ratio printed.

Every loop is bounded in count and time; loopback only. The machine is shared (2 cores, other
benchmarks and tests running): figures are noisy, run twice before believing a difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LUM_POINTS = ["level", "level_cmd", "power_w", "energy_wh", "operating_h", "starts", "driver_temp_c",
              "lamp_failure", "driver_failure", "led_open", "led_short", "thermal_derating", "supply_fault",
              "status", "voltage"]
CAB_POINTS = ["contactor", "contactor_cmd", "group_level", "power_w", "energy_wh", "voltage_l1", "voltage_l2",
              "voltage_l3", "door_open", "breaker_tripped", "comm_ok", "temp_c"]
PER_CAB = 128
NS_URI = "urn:scada:streetlight:tags"
MONITORED = 10_000
RATE_MON, RATE_OTHER = 20_000, 30_000


def site_yaml(nvars: int, state: Path, port: int) -> str:
    ncab = max(1, round(nvars / (len(CAB_POINTS) + PER_CAB * len(LUM_POINTS))))
    def pt(n: str) -> str:
        t = "bool" if n in ("lamp_failure", "driver_failure", "led_open", "led_short", "thermal_derating",
                            "supply_fault", "contactor", "contactor_cmd", "door_open", "breaker_tripped",
                            "comm_ok") else "float"
        acc = "rw" if n.endswith("_cmd") or n == "group_level" else "r"
        return f"      - {{name: {n}, type: {t}, access: {acc}, unit: '{'W' if 'power' in n else ''}'}}"
    lines = [f"site: {{name: Bench, latitude: 47.3, longitude: 5.0, state_dir: '{state}'}}",
             "areas: [" + ", ".join(f"{{id: area{a:02d}}}" for a in range(10)) + "]",
             "profiles:", "  lum:", "    kind: luminaire", "    points:", *[pt(n) for n in LUM_POINTS],
             "  cab:", "    kind: cabinet", "    points:", *[pt(n) for n in CAB_POINTS], "devices:"]
    for c in range(ncab):
        lines.append(f"  - {{id: cab-{c:04d}, profile: cab, area: area{c % 10:02d}, "
                     f"children: [{{profile: lum, count: {PER_CAB}, id: 'lum-{{n:03d}}'}}]}}")
    lines.append(f"opcua: {{port: {port}, allow_security_none: true, max_monitored_items_per_subscription: 20000}}")
    return "\n".join(lines) + "\n"


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


async def start_ours(nvars: int, port: int, tmp: Path):
    from scada.clock import RealClock
    from scada.loader import load_site
    from scada.runtime import Runtime

    p = tmp / "site.yaml"
    p.write_text(site_yaml(nvars, tmp / "state", port))
    t0 = time.perf_counter()
    site = load_site(p)
    rt = Runtime(site, RealClock())
    t_db = time.perf_counter() - t0
    rt.load_services(only=["opcua"])
    svc = rt.services["opcua"]
    t1 = time.perf_counter()
    await svc.start()
    return rt, svc, t_db, time.perf_counter() - t1


# ----------------------------------------------------------------------------- build
async def role_build(nvars: int, port: int) -> dict:
    from asyncua import Client, ua

    with tempfile.TemporaryDirectory() as d:
        rss0 = rss_mb()
        rt, svc, t_db, t_start = await start_ours(nvars, port, Path(d))
        t0 = time.perf_counter()
        async with Client(f"opc.tcp://127.0.0.1:{port}/scada", timeout=30) as c:
            ns = await c.get_namespace_index(NS_URI)
            area = c.get_node(ua.NodeId("area00", ns))
            cab = (await area.get_children())[0]
            kids = await cab.get_children()
            classes = [await k.read_node_class() for k in kids]
            lum = next(k for k, nc in zip(kids, classes, strict=True) if nc == ua.NodeClass.Object)
            var = (await lum.get_children())[0]
            await var.read_data_value(raise_on_bad_status=False)
            t_browse = time.perf_counter() - t0
            scada = await c.nodes.objects.get_child(f"{ns}:Scada")
            t1 = time.perf_counter()
            found, _ = await scada.call_method(f"{ns}:FindTags", "area00/cab-0000/*/level",
                                               ua.Variant(0, ua.VariantType.UInt32))
            t_find_prefix = time.perf_counter() - t1
            t1 = time.perf_counter()
            found_all, _ = await scada.call_method(f"{ns}:FindTags", "*/lum-001/power_w",
                                                   ua.Variant(0, ua.VariantType.UInt32))
            t_find_scan = time.perf_counter() - t1
        out = {"find_prefix_s": t_find_prefix, "find_prefix_n": len(found), "find_scan_s": t_find_scan,
               "find_scan_n": len(found_all),"vars": len(rt.tagdb), "tagdb_s": t_db, "server_start_s": t_start, "first_browse_s": t_browse,
               "browsable_after_s": t_start + t_browse, "rss_mb": rss_mb(), "rss_before_mb": rss0,
               "nodes_materialised": svc.lazy.stats["materialised"]}
        await svc.aclose()
        return out


async def role_build_bare(nvars: int, port: int) -> dict:
    from asyncua import Server, ua

    rss0 = rss_mb()
    s = Server()
    await s.init()
    s.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bare")
    ns = await s.register_namespace(NS_URI)
    t0 = time.perf_counter()
    folder = None
    for k in range(nvars):
        if k % 100 == 0:
            folder = await s.nodes.objects.add_folder(ua.NodeId(f"f{k // 100}", ns), f"{ns}:f{k // 100}")
        await folder.add_variable(ua.NodeId(f"v{k}", ns), f"{ns}:v{k}", 0.0)
    dt = time.perf_counter() - t0
    return {"vars": nvars, "build_s": dt, "per_var_ms": dt / nvars * 1e3, "rss_mb": rss_mb(),
            "per_var_kb": (rss_mb() - rss0) * 1024 / nvars}


# ----------------------------------------------------------------------------- throughput
def monitored_paths(nvars: int) -> tuple[list[str], list[str]]:
    """(monitored, other) tag paths: power_w of the first 10,000 luminaires; other float points."""
    ncab = max(1, round(nvars / (len(CAB_POINTS) + PER_CAB * len(LUM_POINTS))))
    lums = [f"area{c % 10:02d}/cab-{c:04d}/lum-{n:03d}" for c in range(ncab) for n in range(1, PER_CAB + 1)]
    mon = [f"{lp}/power_w" for lp in lums[:MONITORED]]
    other = [f"{lp}/{p}" for lp in lums for p in ("level", "energy_wh", "driver_temp_c")][:60_000]
    return mon, other


async def feed(apply, mon_n: int, other_n: int, go: Path, warm: float, dur: float) -> dict:
    """Call ``apply(mon_idx, other_idx, value)`` at RATE_MON / RATE_OTHER per second."""
    import psutil

    proc = psutil.Process()
    for _ in range(6000):  # the client says go once subscribed (bounded: 5 min)
        if await asyncio.to_thread(go.exists):
            break
        await asyncio.sleep(0.05)
    t_start = time.perf_counter()
    tick = 0.01
    done_m = done_o = 0
    cpu0 = None
    t_meas0 = 0.0
    n_meas0 = 0
    v = 0.0
    result = None
    while True:
        now = time.perf_counter() - t_start
        if now > warm + dur + 3.0:  # keep feeding a little after the window: the client measures too
            break
        if cpu0 is None and now >= warm:
            c = proc.cpu_times()
            cpu0, t_meas0, n_meas0 = c.user + c.system, now, done_m + done_o
        want_m = min(int(now * RATE_MON), done_m + RATE_MON)  # catch-up bounded to 1 s
        want_o = min(int(now * RATE_OTHER), done_o + RATE_OTHER)
        v += 1.0
        await apply(done_m, want_m, done_o, want_o, v)
        done_m, done_o = want_m, want_o
        if cpu0 is not None and result is None and now >= warm + dur:
            c = proc.cpu_times()
            cpu = (c.user + c.system - cpu0) / (now - t_meas0) * 100
            result = {"updates_per_s": (done_m + done_o - n_meas0) / (now - t_meas0), "cpu_pct": cpu}
        await asyncio.sleep(tick)
    return result or {"updates_per_s": 0.0, "cpu_pct": 0.0}


async def role_ours(nvars: int, port: int, go: Path, warm: float, dur: float) -> dict:
    import numpy as np

    from scada import quality as Q
    from scada.tags import Batch

    with tempfile.TemporaryDirectory() as d:
        rt, svc, _, _ = await start_ours(nvars, port, Path(d))
        db = rt.tagdb
        mon, other = monitored_paths(nvars)
        mi = np.array([db.index(p) for p in mon], dtype=np.int64)
        oi = np.array([db.index(p) for p in other], dtype=np.int64)
        print("READY", flush=True)

        async def apply(m0, m1, o0, o1, v):
            idx = np.concatenate([mi[np.arange(m0, m1) % len(mi)], oi[np.arange(o0, o1) % len(oi)]])
            vals = v + np.arange(len(idx), dtype=np.float64) * 1e-3
            db.apply(Batch(idx, vals, Q.Good, time.time()))

        out = await feed(apply, len(mi), len(oi), go, warm, dur)
        out["server_notifications"] = svc.stats["notifications"]
        await svc.aclose()
        return out


async def role_bare(nvars: int, port: int, go: Path, warm: float, dur: float) -> dict:
    from asyncua import Server, ua

    s = Server()
    await s.init()
    s.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bare")
    s.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await s.register_namespace(NS_URI)
    mon, other = monitored_paths(nvars)
    other = other[:15_000]
    nodes = {}
    folder = None
    for k, p in enumerate(mon + other):
        if k % 100 == 0:
            folder = await s.nodes.objects.add_folder(ua.NodeId(f"#f{k // 100}", ns), f"{ns}:f{k // 100}")
        nodes[p] = await folder.add_variable(ua.NodeId(p, ns), f"{ns}:{p}", 0.0)
    mn = [nodes[p] for p in mon]
    on = [nodes[p] for p in other]
    await s.start()
    print("READY", flush=True)

    async def apply(m0, m1, o0, o1, v):
        for k in range(m0, m1):
            await mn[k % len(mn)].write_value(v + k * 1e-3)
        for k in range(o0, o1):
            await on[k % len(on)].write_value(v + k * 1e-3)

    out = await feed(apply, len(mn), len(on), go, warm, dur)
    await s.stop()
    return out


async def role_client(nvars: int, url: str, go: Path, warm: float, dur: float) -> dict:
    from asyncua import Client, ua
    from asyncua.common import subscription as subm

    count = [0]
    orig = subm.Subscription.publish_callback

    async def counting(self, result):
        for n in result.NotificationMessage.NotificationData or ():
            if isinstance(n, ua.DataChangeNotification):
                count[0] += len(n.MonitoredItems)
        return None

    subm.Subscription.publish_callback = counting
    mon, _ = monitored_paths(nvars)
    c = Client(url, timeout=60)
    await c.connect()
    try:
        ns = await c.get_namespace_index(NS_URI)
        sub = await c.create_subscription(100, None)
        nodes = [c.get_node(ua.NodeId(p, ns)) for p in mon]
        for k in range(0, len(nodes), 1000):
            await sub.subscribe_data_change(nodes[k:k + 1000], queuesize=10)
        await asyncio.to_thread(go.touch)
        await asyncio.sleep(warm)
        n0, t0 = count[0], time.perf_counter()
        await asyncio.sleep(dur)
        n1, t1 = count[0], time.perf_counter()
    finally:
        try:
            await c.disconnect()
        except (ConnectionError, OSError, ua.UaError):
            pass  # the server may already be closing: the figures are taken
    subm.Subscription.publish_callback = orig
    return {"changes_per_s": (n1 - n0) / (t1 - t0), "items": len(nodes)}


# ----------------------------------------------------------------------------- driver
def run_role(*args: str, timeout: float = 300) -> dict:
    p = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout,
                       cwd=ROOT)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"role {args} failed ({p.returncode}): {p.stderr[-2000:]}")
    return json.loads(lines[-1])


def throughput(kind: str, nvars: int, warm: float, dur: float) -> tuple[dict, dict]:
    from bench._util import free_port

    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        go = Path(d) / "go"
        srv = subprocess.Popen([sys.executable, __file__, "--role", kind, "--vars", str(nvars), "--port", str(port),
                                "--go", str(go), "--warm", str(warm), "--dur", str(dur)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            deadline = time.time() + 180
            while time.time() < deadline:
                line = srv.stdout.readline()
                if not line or line.startswith("READY"):
                    break
            path = "scada" if kind == "ours" else "bare"
            cli = run_role("--role", "client", "--vars", str(nvars), "--url", f"opc.tcp://127.0.0.1:{port}/{path}",
                           "--go", str(go), "--warm", str(warm), "--dur", str(dur), timeout=240)
            out, err = srv.communicate(timeout=120)
        finally:
            if srv.poll() is None:
                srv.kill()
                srv.wait()
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if not lines:
            raise RuntimeError(f"{kind} server failed: {err[-2000:]}")
        return json.loads(lines[-1]), cli


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--role")
    ap.add_argument("--vars", type=int, default=200_000)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--url")
    ap.add_argument("--go")
    ap.add_argument("--warm", type=float, default=2.0)
    ap.add_argument("--dur", type=float, default=8.0)
    a = ap.parse_args()
    if a.role:
        import logging

        logging.basicConfig(level=logging.ERROR)
        go = Path(a.go) if a.go else Path("/nonexistent")
        coro = {
            "build": lambda: role_build(a.vars, a.port),
            "build-bare": lambda: role_build_bare(a.vars, a.port),
            "ours": lambda: role_ours(a.vars, a.port, go, a.warm, a.dur),
            "bare": lambda: role_bare(a.vars, a.port, go, a.warm, a.dur),
            "client": lambda: role_client(a.vars, a.url, go, a.warm, a.dur),
        }[a.role]()
        print(json.dumps(asyncio.run(coro)), flush=True)
        return

    from bench._util import free_port

    sizes = [200_000] if a.quick else [200_000, 1_200_000]
    dur = 4.0 if a.quick else a.dur
    print(f"OPC UA server benchmark (machine: {os.cpu_count()} cores, shared; figures are noisy)")
    bare = run_role("--role", "build-bare", "--vars", "20000", "--port", str(free_port()))
    print(f"\nbare asyncua build: {bare['vars']} variables in {bare['build_s']:.1f} s "
          f"({bare['per_var_ms']:.3f} ms and {bare['per_var_kb']:.1f} KB per variable; folders of 100)")
    print(f"{'variables':>10} {'tagdb s':>8} {'start s':>8} {'browse s':>9} {'RSS MB':>8} "
          f"{'bare est. s':>11} {'bare est. MB':>12}")
    for n in sizes:
        r = run_role("--role", "build", "--vars", str(n), "--port", str(free_port()), timeout=600)
        print(f"{r['vars']:>10} {r['tagdb_s']:>8.1f} {r['server_start_s']:>8.1f} {r['first_browse_s']:>9.2f} "
              f"{r['rss_mb']:>8.0f} {bare['per_var_ms'] * n / 1e3:>11.0f} "
              f"{bare['per_var_kb'] * n / 1024 + 100:>12.0f}")
        print(f"{'':>10} FindTags: {r['find_prefix_n']} tags under one cabinet in {r['find_prefix_s'] * 1e3:.0f} ms; "
              f"{r['find_scan_n']} over the whole city ('*/lum-001/power_w') in {r['find_scan_s'] * 1e3:.0f} ms")
    print(f"\nthroughput: client monitors {MONITORED} items; tag database fed {RATE_MON + RATE_OTHER}/s "
          f"({RATE_MON}/s monitored), {dur:.0f} s measured after warm-up")
    ours, ours_cli = throughput("ours", 200_000, a.warm, dur)
    bare_s, bare_cli = throughput("bare", 200_000, a.warm, dur)
    print(f"{'server':<8} {'updates/s':>10} {'changes/s to client':>20} {'server CPU %':>13}")
    for name, s, c in (("ours", ours, ours_cli), ("bare", bare_s, bare_cli)):
        print(f"{name:<8} {s['updates_per_s']:>10.0f} {c['changes_per_s']:>20.0f} {s['cpu_pct']:>13.0f}")
    eff = lambda s, c: c["changes_per_s"] / max(s["cpu_pct"], 1e-9)  # noqa: E731
    print(f"ratio ours/bare: changes/s x{ours_cli['changes_per_s'] / max(bare_cli['changes_per_s'], 1):.1f}, "
          f"changes per CPU-% x{eff(ours, ours_cli) / max(eff(bare_s, bare_cli), 1e-9):.1f}")


if __name__ == "__main__":
    main()
