"""Benchmark: one process simulating a 34,000-luminaire city over Modbus TCP.

    /tmp/venv/bin/python bench/modbus_sim.py [--cabinets 708] [--per-cabinet 48] [--duration 30]

What it does (loopback only, every loop bounded in time):

1. writes a site with ``--cabinets`` cabinets of ``--per-cabinet`` luminaires, each cabinet on
   its own free loopback port (the shipped cabinet-modbus / luminaire-modbus profiles);
2. **baseline**: starts, in a separate process, bare pymodbus 3.16 servers (plain SimDevice
   tables, no model) on the same ports, and polls them with the request mix below;
3. **simulator**: starts ``scada sim SITE`` in a separate process and polls it identically;
4. prints, for each, the server process's CPU % of one core (psutil, over the measuring
   window after a warm-up), RSS, requests answered per second, answer latency p50/p99 seen by
   the load generator, and the simulator / baseline CPU ratio.

Request mix (what the Modbus driver asks of a cabinet with the shipped profiles): every
``--cabinet-period`` (2 s) per cabinet: input registers 0-17, discrete inputs 0-4, coil 0,
holding registers 0-1; every ``--lum-period`` (60 s) per cabinet: its luminaire blocks in the
input and holding tables in 125-register reads. Phases are spread evenly over the periods, as
the driver staggers them. One request in flight per connection (no pipelining).

The load generator is a raw asyncio MBAP client in this process (cheaper than a pymodbus
client, so it does not starve the server on a 2-core machine). Figures on a shared machine are
noisy: compare the two phases of one run, not runs on different days.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "config" / "profiles"
BLOCK_BASE, BLOCK_SIZE = 1000, 16


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports BELOW the kernel's ephemeral range.

    Ports from bind(0) are ephemeral: any outgoing connection on the machine may take one
    before our server binds it. Listening ports are picked from 20000 up to the ephemeral
    range instead, checked free with a bind, starting at a random offset (above 22000:
    ``scada gen-city`` cities and demos start at 20000 by default).
    """
    try:
        lo_eph = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        lo_eph = 32768
    lo, hi = 22000, max(22000 + 2 * n + 100, lo_eph)
    start = random.Random().randrange(lo, max(lo + 1, hi - n - 50))
    ports: list[int] = []
    p = start
    while len(ports) < n:
        if p >= hi:
            p = lo
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", p))
                ports.append(p)
            except OSError:
                pass
        p += 1
        if p == start:
            raise RuntimeError(f"fewer than {n} free ports in {lo}-{hi}")
    return ports


def write_site(path: Path, ports: list[int], per_cabinet: int) -> None:
    lines = [
        "site: {name: bench city, latitude: 47.32, longitude: 5.04}",
        "areas: [{id: city}]",
        f'include: ["{PROFILES}/cabinet-modbus.yaml", "{PROFILES}/luminaire-modbus.yaml"]',
        "devices:",
    ]
    lamps = [(30, "SHP-70", 84), (40, "SHP-100", 115), (60, "SHP-150", 170), (100, "SHP-250", 277)]
    for k, port in enumerate(ports, 1):
        w, lamp, lw = lamps[k % len(lamps)]
        lines.append(
            f"  - {{id: cab-{k:04d}, profile: cabinet-modbus, area: city, "
            f"connection: {{host: 127.0.0.1, port: {port}, unit: 1}}, children: "
            f"[{{profile: luminaire-modbus, id: 'lum-{{n:02d}}', count: {per_cabinet}, "
            f"attrs: {{nominal_w: {w}, legacy_lamp: {lamp}, legacy_w: {lw}, group: {k}}}}}]}}"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- baseline server (run in its own process) ------------------------------------------------
async def serve_baseline(ports: list[int], ready_file: str) -> None:
    """Bare pymodbus servers with plain tables: the cost of pymodbus alone."""
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    n = BLOCK_BASE + 64 * BLOCK_SIZE         # registers up to the 64th luminaire block
    servers = []
    for port in ports:
        regs = [SimData(0, count=n, values=7, datatype=DataType.REGISTERS)]
        bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        dev = SimDevice(id=1, simdata=(list(bits), list(bits), list(regs), list(regs)),
                        use_bit_addressing=True)
        srv = ModbusTcpServer([dev], address=("127.0.0.1", port))
        await srv.serve_forever(background=True)
        servers.append(srv)
    await asyncio.to_thread(Path(ready_file).write_text, json.dumps({"pid": os.getpid()}))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    for srv in servers:
        await srv.shutdown()


# --- load generator -------------------------------------------------------------------------
class Stats:
    def __init__(self) -> None:
        self.ok = 0
        self.errors = 0
        self.lat: list[float] = []
        self.measuring = False


async def exchange(reader, writer, tid: int, unit: int, fc: int, addr: int, count: int) -> bool:
    writer.write(struct.pack(">HHHBBHH", tid, 0, 6, unit, fc, addr, count))
    head = await reader.readexactly(7)
    rtid, _proto, length, _unit = struct.unpack(">HHHB", head)
    body = await reader.readexactly(length - 1)
    return rtid == tid and body[0] == fc


async def cabinet_load(port: int, n_lum: int, args, t_start: float, t_end: float,
                       stats: Stats, rng: random.Random) -> None:
    status = [(4, 0, 18), (2, 0, 5), (1, 0, 1), (3, 0, 2)]
    end_reg = BLOCK_BASE + n_lum * BLOCK_SIZE
    lum = [(fc, a, min(125, end_reg - a)) for fc in (4, 3) for a in range(BLOCK_BASE, end_reg, 125)]
    next_status = t_start + rng.uniform(0, args.cabinet_period)
    next_lum = t_start + rng.uniform(0, args.lum_period)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (OSError, TimeoutError):
        stats.errors += 1
        return
    tid = 0
    try:
        while True:
            due = min(next_status, next_lum)
            now = time.monotonic()
            if due >= t_end:
                return
            if due > now:
                await asyncio.sleep(due - now)
            batch = []
            if next_status <= time.monotonic():
                batch += status
                next_status += args.cabinet_period
            if next_lum <= time.monotonic():
                batch += lum
                next_lum += args.lum_period
            for fc, addr, count in batch:
                tid = (tid + 1) & 0xFFFF
                t0 = time.perf_counter()
                try:
                    good = await asyncio.wait_for(exchange(reader, writer, tid, 1, fc, addr, count), 5)
                except (OSError, TimeoutError, asyncio.IncompleteReadError):
                    stats.errors += 1
                    return
                if stats.measuring:
                    if good:
                        stats.ok += 1
                        stats.lat.append(time.perf_counter() - t0)
                    else:
                        stats.errors += 1
    finally:
        writer.close()


async def run_load(ports: list[int], args, pid: int) -> dict:
    proc = psutil.Process(pid)
    stats = Stats()
    rng = random.Random(1)
    t_start = time.monotonic() + 1.0
    t_end = t_start + args.warmup + args.duration
    tasks = [asyncio.create_task(cabinet_load(p, args.per_cabinet, args, t_start, t_end, stats, rng))
             for p in ports]
    await asyncio.sleep(t_start + args.warmup - time.monotonic())
    c0 = proc.cpu_times()
    me0 = psutil.Process().cpu_times()
    w0 = time.monotonic()
    stats.measuring = True
    await asyncio.sleep(max(0.0, t_end - time.monotonic()))
    stats.measuring = False
    wall = time.monotonic() - w0
    c1 = proc.cpu_times()
    me1 = psutil.Process().cpu_times()
    rss = proc.memory_info().rss
    await asyncio.gather(*tasks)
    lat = np.array(stats.lat) * 1000 if stats.lat else np.zeros(1)
    return {
        "cpu_pct": 100.0 * ((c1.user - c0.user) + (c1.system - c0.system)) / wall,
        "loadgen_cpu_pct": 100.0 * ((me1.user - me0.user) + (me1.system - me0.system)) / wall,
        "rss_mb": rss / 2**20,
        "req_per_s": stats.ok / wall,
        "errors": stats.errors,
        "lat_p50_ms": float(np.percentile(lat, 50)),
        "lat_p99_ms": float(np.percentile(lat, 99)),
        "window_s": wall,
    }


def wait_ready(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    t_end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            tail = path.with_suffix(".log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"server process exited with {proc.returncode} before it was "
                               f"ready; its log ends with:\n{tail}")
        if time.monotonic() > t_end:
            proc.kill()
            raise RuntimeError(f"server process not ready after {timeout} s")
        time.sleep(0.1)


def phase(name: str, cmd: list[str], ports: list[int], args, tmp: Path) -> dict:
    ready = tmp / f"{name}.ready"
    log = open(tmp / f"{name}.log", "wb")  # closed in the finally below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        t0 = time.monotonic()
        wait_ready(ready, proc, 120)
        startup = time.monotonic() - t0
        res = asyncio.run(run_load(ports, args, proc.pid))
        res["startup_s"] = startup
        return res
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cabinets", type=int, default=708)
    ap.add_argument("--per-cabinet", type=int, default=48)
    ap.add_argument("--duration", type=float, default=30.0, help="measuring window, s")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--cabinet-period", type=float, default=2.0)
    ap.add_argument("--lum-period", type=float, default=60.0)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--_baseline", nargs=2, metavar=("PORTS_JSON", "READY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._baseline:
        ports = json.loads(Path(args._baseline[0]).read_text())
        asyncio.run(serve_baseline(ports, args._baseline[1]))
        return
    if not (1 <= args.cabinets <= 5000 and 1 <= args.per_cabinet <= 64):
        ap.error("--cabinets 1..5000, --per-cabinet 1..64")
    soft, hard = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)
    if soft < 2 * args.cabinets + 100:
        __import__("resource").setrlimit(__import__("resource").RLIMIT_NOFILE,
                                         (min(hard, 4 * args.cabinets + 256), hard))
    n_lum = args.cabinets * args.per_cabinet
    expected = args.cabinets * (4 / args.cabinet_period
                                + 2 * -(-args.per_cabinet * BLOCK_SIZE // 125) / args.lum_period)
    print(f"city: {args.cabinets} cabinets x {args.per_cabinet} luminaires = {n_lum} luminaires; "
          f"request mix {expected:.0f} req/s expected; window {args.duration:g} s after "
          f"{args.warmup:g} s warm-up; {os.cpu_count()} cores (shared: figures are noisy)")
    with tempfile.TemporaryDirectory(prefix="bench-modbus-sim-") as d:
        tmp = Path(d)
        ports = free_ports(args.cabinets)
        site = tmp / "city.yaml"
        write_site(site, ports, args.per_cabinet)
        (tmp / "ports.json").write_text(json.dumps(ports))
        results = {}
        if not args.skip_baseline:
            try:
                results["baseline"] = phase(
                    "baseline", [sys.executable, __file__, "--_baseline", str(tmp / "ports.json"),
                                 str(tmp / "baseline.ready")], ports, args, tmp)
            except RuntimeError as e:   # e.g. another process took one of the ports meanwhile
                print(f"baseline phase failed, no ratio this run: {e}")
        results["simulator"] = phase(
            "simulator", [sys.executable, str(REPO / "cli.py"), "sim", str(site), "--control", "",
                          "--ready-file", str(tmp / "simulator.ready")], ports, args, tmp)
    print(f"{'server':<11} {'CPU %core':>9} {'RSS MB':>8} {'req/s':>8} {'errors':>6} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'start s':>7} {'loadgen %':>9}")
    for name, r in results.items():
        print(f"{name:<11} {r['cpu_pct']:>9.1f} {r['rss_mb']:>8.0f} {r['req_per_s']:>8.0f} "
              f"{r['errors']:>6} {r['lat_p50_ms']:>7.2f} {r['lat_p99_ms']:>7.2f} "
              f"{r['startup_s']:>7.1f} {r['loadgen_cpu_pct']:>9.1f}")
    sim = results["simulator"]
    target = "met" if sim["cpu_pct"] < 100 else "MISSED"
    print(f"simulator CPU {sim['cpu_pct']:.1f} % of one core for {n_lum} luminaires "
          f"(target < 100 %: {target}); "
          f"{1000 * sim['cpu_pct'] / 100 / max(sim['req_per_s'], 1e-9):.3f} ms CPU per request")
    if "baseline" in results:
        b = results["baseline"]
        print(f"ratio simulator/baseline CPU: {sim['cpu_pct'] / max(b['cpu_pct'], 1e-9):.2f}; "
              f"req/s ratio {sim['req_per_s'] / max(b['req_per_s'], 1e-9):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
