"""The whole pipeline at city scale (issue 9): simulators -> drivers -> tag database -> alarms,
historian, OPC UA server -> an HMI client, each in its own process, on loopback only.

    python bench/city.py --size small|dijon|paris [--at 12:00] [--duration 180] [--faults 200] [--chaos]
    python bench/city.py --size dijon --at 22:00       # the city's clock starts at 22:00 local time
    python bench/city.py --size dijon --soak 1         # one hour, a fault every minute
    python bench/city.py --size dijon --soak 3 --compress 10   # 30 equivalent hours (issue 23)

What it does:
1. `scada gen-city` writes the city (Dijon: 34,000 luminaires, 200 junctions; Paris: 200,000 and
   2,000) with gateways on a private Mosquitto, luminaires reporting every 60 s, cabinets every
   10 s, junctions every 1 s (the profiles are copied and their periods set accordingly).
2. `scada sim` serves the devices in one or more processes (``--sim-procs``, sharded).
3. `scada run` runs the server in its own process with the embedded historian.
4. An OPC UA client process (this file with ``--client``) subscribes to every alarm event and to a
   sample of 10,000 variables, and reads the server's `_system/` health tags every 5 s.
5. After a warm-up, faults (lamp failures on random luminaires) are flipped through the
   simulators' control channel; fault-to-red-dot latency = the client's receive time of the
   alarm event minus the time the bench flipped the bit (same machine clock).

The hour is explicit (issue 23): ``--at HH:MM`` (default 12:00; ``now`` for the machine's clock)
starts the city's clock, in the server and every simulator process alike, at that local time of
the site today (``scada run/sim --start WHEN --start-ref EPOCH``), whatever the hour of the
machine. By day the schedules keep the cabinets' contactors open, so a lamp failure behind an
open contactor is hidden by design (no red dot, no event); the bench reads those contactors over
OPC UA at the start and end of the window and reports such faults apart.

Time compression (issue 23): ``--compress K`` runs the city's clock (server and simulators,
``--rate K``) K times faster: every poll, report, alarm delay and schedule period is divided by K
in real time, a soak's faults come K times as often (one per city minute), and a soak of H hours
spans H x K equivalent hours, whole days and nights included. Latencies are reported in city
seconds. A soak adds the plateau figures (RSS over the last two thirds within +-3 % of its mean,
least-squares slope < 0.1 % per equivalent hour, PASS/FAIL) and an RSS plot
(bench/results/city-<size>-soak-rss.png, with the ``bench`` extra's matplotlib). The compression
is honest only while the machine keeps up: check that ``modbus_cycles_on_time_pct`` stays 100 %
and compare the growth per fault with an uncompressed run.

Printed and saved to bench/results/city-<size>.json: server CPU % of one core, RSS, sustained tag
updates/s, poll cycles completed on time (%), event-loop lag p50/p99, historian lag,
fault-to-red-dot p50/p99, alarm events, and PASS/FAIL against the targets (issues 9 and 23,
docs/performance.md). Every load loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from bench._util import free_port, percentile, save, verdict  # noqa: E402

SIZES = {"small": (600, 4), "dijon": (34_000, 200), "paris": (200_000, 2_000)}
#: the event loop must never stall longer than this (issue 23)
LOOP_LAG_P99_MS = 250.0
NS_URI = "urn:scada:streetlight:tags"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- process helpers

def free_range(n: int, start: int = 10000, avoid: tuple[int, ...] = ()) -> int:
    """First port p >= start such that p..p+n-1 are all bindable on loopback now (and none of
    ``avoid``, ports already promised to another server of the bench)."""
    p = start
    while p + n < 65000:
        ok = True
        for q in range(p, p + n):
            if q in avoid:
                ok, p = False, q + 1
                break
            with socket.socket() as s:
                # as the servers will: TIME_WAIT leftovers of an earlier run do not block a listener
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", q))
                except OSError:
                    ok, p = False, q + 1
                    break
        if ok:
            return p
    raise RuntimeError(f"no range of {n} free ports on loopback")


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.25)
    return False


class Proc:
    def __init__(self, name: str, args: list[str], workdir: str, env: dict[str, str] | None = None):
        self.name = name
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.p = subprocess.Popen(args, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                  start_new_session=True)

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> float:
        """Signal, wait; return how long it took to exit (kill after ``timeout``)."""
        if not self.alive():
            return 0.0
        t0 = time.monotonic()
        self.p.send_signal(sig)
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(5)
        self.log.close()
        return time.monotonic() - t0

    def tail(self, n: int = 15) -> str:
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-n:])


def send_control(addr: tuple[str, int], req: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """One request on the simulators' JSON-lines control channel (simulators/faults.py)."""
    from simulators.faults import send_control as _send

    return _send(addr[0], addr[1], req, timeout=timeout)[0]


# --------------------------------------------------------------------------- the city
def prepare_city(work: str, size: str, broker_port: int, opcua_port: int,
                 snapshot: float | None = None) -> tuple[str, Any]:
    lum, jct = SIZES[size]
    prof = os.path.join(work, "profiles")
    shutil.copytree(os.path.join(REPO, "config", "profiles"), prof)
    # issue 9's periods: luminaires 60 s, cabinets 10 s, junctions 1 s
    cab = os.path.join(prof, "cabinet-modbus.yaml")
    with open(cab) as f:
        text = f.read()
    with open(cab, "w") as f:
        f.write(text.replace("status: 2s", "status: 10s"))
    site_path = os.path.join(work, "city.yaml")
    # gen-city: cabinets from base (at most one per 20 luminaires, plus one per area), junction
    # endpoints from base + lum // 20 + 33, one per 100 junctions
    base = free_range(lum // 20 + 33 + jct // 100 + 2, avoid=(broker_port, opcua_port))
    subprocess.run([sys.executable, "-m", "cli", "gen-city", "--luminaires", str(lum), "--junctions",
                    str(jct), "--out", site_path, "--profiles", prof, "--base-port", str(base),
                    "--broker", f"127.0.0.1:{broker_port}"], cwd=REPO, check=True, timeout=600)
    with open(site_path, "a") as f:
        f.write(f"opcua: {{port: {opcua_port}, allow_security_none: true}}\n")
        if snapshot:  # historian snapshots more often than the default 15 min (memory checks)
            f.write(f"historian: {{snapshot: {snapshot:g}s}}\n")
    from scada.loader import load_site

    return site_path, load_site(site_path)


# --------------------------------------------------------------------------- the HMI client
async def client_main(cfg: dict[str, Any], events_f: Any, health_f: Any) -> None:
    """Subscribe to every alarm event and a sample of variables; log events and health.

    The log files are line-buffered and small writes; they are opened by the caller, outside
    the event loop."""
    from asyncua import Client

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    counts = {"datachanges": 0, "events": 0}
    # asyncua's default 1 s watchdog drops sessions on a busy server (issue 5): 10 s holds
    for attempt in range(10):
        client = Client(cfg["endpoint"], timeout=60, watchdog_intervall=10.0)
        client.session_timeout = 600_000
        try:
            await _client_session(client, cfg, events_f, health_f, stop, counts)
            return
        except (ConnectionError, TimeoutError, OSError) as e:
            health_f.write(json.dumps({"t": time.time(), "error": f"session lost: {e!r}"}) + "\n")
            if stop.is_set() or attempt == 9:
                raise
            await asyncio.sleep(5)


async def _client_session(client: Any, cfg: dict[str, Any], events_f: Any, health_f: Any,
                          stop: asyncio.Event, counts: dict[str, int]) -> None:
    from asyncua import ua

    class Handler:
        def event_notification(self, ev: Any) -> None:
            counts["events"] += 1
            fields = ev.get_event_props_as_fields_dict()

            def val(name: str) -> Any:
                v = fields.get(name)
                v = getattr(v, "Value", v)
                return getattr(v, "Text", v)

            events_f.write(json.dumps({
                "t": time.time(), "source": str(val("SourceName")), "name": str(val("ConditionName")),
                "active": bool(val("ActiveState/Id")) if val("ActiveState/Id") is not None else None,
                "retain": bool(val("Retain")) if val("Retain") is not None else None,
                "severity": val("Severity"),
            }) + "\n")

        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            counts["datachanges"] += 1

    async with client:
        ns = await client.get_namespace_index(NS_URI)
        handler = Handler()
        esub = await client.create_subscription(200, handler)
        await esub.subscribe_events(client.nodes.server, ua.ObjectIds.AlarmConditionType)
        dsub = await client.create_subscription(1000, handler)
        nodes = [client.get_node(ua.NodeId(p, ns)) for p in cfg["sample"]]
        for k in range(0, len(nodes), 1000):
            await dsub.subscribe_data_change(nodes[k:k + 1000], queuesize=1)
        health_nodes = [client.get_node(ua.NodeId(p, ns)) for p in cfg["health_tags"]]
        health_f.write(json.dumps({"t": time.time(), "ready": True}) + "\n")
        while not stop.is_set():
            try:
                vals = await client.read_values(health_nodes) if health_nodes else []
            except Exception as e:  # the bench keeps reading; a failed read is logged as such
                health_f.write(json.dumps({"t": time.time(), "error": repr(e)}) + "\n")
                vals = []
            rec = {"t": time.time(), **counts}
            rec.update({p: v for p, v in zip(cfg["health_tags"], vals, strict=False)})
            health_f.write(json.dumps(rec, default=float) + "\n")
            try:
                await asyncio.wait_for(stop.wait(), 5.0)
            except TimeoutError:
                pass


async def churn_main(url: str, clients: int, seconds: float) -> None:
    """``clients`` OPC UA clients connecting and disconnecting every second, for ``seconds``."""
    from asyncua import Client

    async def one() -> bool:
        try:
            async with Client(url, timeout=10) as c:
                await c.nodes.server.read_browse_name()
            return True
        except Exception:  # counted: the server may refuse sessions at its bound
            return False

    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    ok = failed = 0
    while loop.time() < end:
        t0 = loop.time()
        res = await asyncio.gather(*(one() for _ in range(clients)))
        ok += sum(res)
        failed += len(res) - sum(res)
        await asyncio.sleep(max(0.0, 1.0 - (loop.time() - t0)))
    print(json.dumps({"sessions_ok": ok, "sessions_failed": failed}), flush=True)


class RssSampler(threading.Thread):
    """Samples the server's RSS every ``every`` seconds as (monotonic time, bytes), bounded by
    ``limit_s``; one steady series for the memory figures (max, end, growth per hour)."""

    def __init__(self, server: Proc, every: float = 10.0, limit_s: float = 48 * 3600) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.server, self.every, self.limit_s = server, every, limit_s
        self.samples: list[tuple[float, int]] = [(time.monotonic(), server.rss())]
        self._halt = threading.Event()

    def run(self) -> None:
        t_end = time.monotonic() + self.limit_s
        while not self._halt.wait(self.every) and time.monotonic() < t_end:
            try:
                self.samples.append((time.monotonic(), self.server.rss()))
            except OSError:  # the server exited; the bench reports that separately
                return

    def stop(self) -> None:
        """Stop sampling; the last sample is taken now."""
        self._halt.set()
        self.join(5)
        self.samples.append((time.monotonic(), self.server.rss()))


#: a soak's plateau (issue 23): RSS over the last two thirds within +-3 % of its mean and a
#: least-squares slope under 0.1 % per (equivalent) hour
SOAK_TARGETS = [
    ("soak_rss_last_two_thirds_max_deviation_pct", "max", 3.0, "<= 3 % (a plateau)"),
    ("soak_rss_last_two_thirds_abs_slope_pct_per_equiv_hour", "max", 0.1, "< 0.1 %/equivalent hour"),
]


def plateau(samples: list[tuple[float, int]], compress: float = 1.0) -> dict[str, Any]:
    """The plateau figures over the last two thirds of the samples: the largest deviation of
    RSS from its mean (%) and the absolute least-squares slope per equivalent hour (real hour
    divided by ``compress``), as % of the mean."""
    import numpy as np

    if len(samples) < 6:
        return {}
    t0, t1 = samples[0][0], samples[-1][0]
    tail = [(t, r) for t, r in samples if t - t0 >= (t1 - t0) / 3]
    t = np.array([x[0] for x in tail]) / 3600.0
    mb = np.array([x[1] for x in tail]) / 2**20
    mean = float(mb.mean())
    slope = float(np.polyfit(t - t[0], mb, 1)[0]) / compress if t[-1] > t[0] else 0.0
    return {
        "soak_rss_last_two_thirds_mean_mb": round(mean),
        "soak_rss_last_two_thirds_max_deviation_pct": round(float(100 * np.abs(mb - mean).max() / mean), 2),
        "soak_rss_last_two_thirds_abs_slope_pct_per_equiv_hour": round(abs(100 * slope / mean), 3),
        "soak_equivalent_hours": round((t1 - t0) / 3600.0 * compress, 2),
    }


def plot_rss(samples: list[tuple[float, int]], compress: float, path: str) -> str | None:
    """RSS against equivalent hours as a PNG (matplotlib, the `bench` extra); None without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[city] no RSS plot: pip install -e '.[bench]' (matplotlib)", flush=True)
        return None
    t0 = samples[0][0]
    xs = [(t - t0) / 3600.0 * compress for t, _ in samples]
    ys = [r / 2**20 for _, r in samples]
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    ax.plot(xs, ys, lw=1)
    ax.set_xlabel("equivalent hours" if compress != 1 else "hours")
    ax.set_ylabel("server RSS (MB)")
    ax.set_ylim(0, max(ys) * 1.15)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def memory_growth(samples: list[tuple[float, int]], warmup_share: float = 1 / 6,
                  compress: float = 1.0) -> dict[str, Any]:
    """Memory growth per hour after warm-up: the least-squares slope of RSS against time over the
    samples after the first ``warmup_share`` of the window, as % of their mean per hour. RSS
    moves by tens of MB as the historian's snapshot buffers come and go, so two end points alone
    say more about where those fall than about a trend; the end-point figure is printed too."""
    import numpy as np

    if len(samples) < 3:
        return {}
    t0 = samples[0][0]
    warm = [(t, r) for t, r in samples if t - t0 >= warmup_share * (samples[-1][0] - t0)]
    t = np.array([x[0] for x in warm]) / 3600.0
    mb = np.array([x[1] for x in warm]) / 2**20
    slope = float(np.polyfit(t - t[0], mb, 1)[0]) if len(warm) >= 3 and t[-1] > t[0] else 0.0
    hours = max(1e-9, t[-1] - t[0])
    return {
        **plateau(samples, compress),
        "soak_memory_growth_pct_per_hour": round(100.0 * slope / float(mb.mean()), 2),
        "soak_memory_growth_mb_per_hour": round(slope, 1),
        "soak_memory_growth_endpoints_pct_per_hour": round(float(100.0 * (mb[-1] - mb[0]) / mb[0] / hours), 2),
        "soak_rss_mb_after_warmup": {"first": round(float(mb[0])), "last": round(float(mb[-1])),
                                     "min": round(float(mb.min())), "max": round(float(mb.max())),
                                     "samples": len(warm), "every_s": round(float(3600 * hours / max(1, len(warm) - 1)), 1)},
    }


def run_chaos(a: Any, site: Any, work: str, controls: list, shard_of: dict[str, int], procs: list,
              server: Proc, ccfg: dict[str, Any], opcua_port: int, rng: random.Random, tm0: float,
              duration: float) -> dict[str, Any]:
    """The chaos list of issue 9 against the running city; returns what was checked."""
    from scada.alarms.journal import read_journal
    from scada.alarms.metrics import compute as alarm_metrics

    def ctl(path: str, req: dict[str, Any]) -> dict[str, Any]:
        top = "/".join(path.split("/")[:2])
        return send_control(controls[shard_of.get(top, 0)], {**req, "path": path})

    def at(offset: float) -> None:
        while time.monotonic() < tm0 + offset:
            time.sleep(min(1.0, tm0 + offset - time.monotonic()))

    def health_last() -> dict[str, Any]:
        rows = read_jsonl(ccfg["health"])
        return rows[-1] if rows else {}

    report: dict[str, Any] = {}
    restarts0 = health_last().get("_system/server/task_restarts", 0)
    cabinets = [d for d in site.devices if d.kind == "cabinet"]
    killed = rng.sample(cabinets, max(1, len(cabinets) // 20))
    t_kill = time.time()
    at(10)
    refused = []
    for d in killed:
        ans = ctl(d.path, {"op": "inject", "fault": "offline"})
        if not ans.get("ok", True):
            refused.append((d.path, ans))
    report["kill_refused"] = refused[:5]
    at(70)
    for d in killed:
        ctl(d.path, {"op": "clear"})
    report["cabinets_killed_60s"] = len(killed)
    # MQTT broker restart
    at(90)
    mosq = next(p for p in procs if p.name == "mosquitto")
    mosq.stop(signal.SIGTERM)
    time.sleep(5)
    mosq.p = subprocess.Popen(mosq.p.args, cwd=REPO, stdout=mosq.log if not mosq.log.closed else subprocess.DEVNULL,
                              stderr=subprocess.STDOUT, start_new_session=True)
    report["broker_restarted"] = True
    # junction server restart
    at(110)
    junctions = [d for d in site.devices if d.kind == "junction"]
    if junctions:
        ctl(junctions[0].path, {"op": "inject", "fault": "server_restart"})
        report["junction_server_restarted"] = junctions[0].connection.get("endpoint")
    # historian backend away (its segment directory replaced by a file), back after --outage
    at(120)
    segdir = os.path.join(site.config.site.state_dir if os.path.isabs(site.config.site.state_dir)
                          else os.path.join(work, site.config.site.state_dir), "historian", "data", "segments")
    away = segdir + ".away"
    outage_on = os.path.isdir(segdir)
    if outage_on:
        os.replace(segdir, away)
        with open(segdir, "w") as f:
            f.write("outage\n")
    # flood: 2,000 lamp failures within one minute
    at(150)
    lums = [c for d in site.devices for c in d.children]
    flood = rng.sample(lums, min(2000, len(lums)))
    for k, d in enumerate(flood):
        ctl(d.path, {"op": "inject", "fault": "lamp_failure"})
        if k % 50 == 49:
            time.sleep(1.4)
    report["flood_lamp_failures"] = len(flood)
    # 50 HMI clients connecting and disconnecting every second, for a minute
    at(220)
    rss_before_churn = server.rss()
    churn = subprocess.run([sys.executable, os.path.abspath(__file__), "--churn",
                            f"opc.tcp://127.0.0.1:{opcua_port}/scada", "50", "60"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    try:
        report["hmi_churn"] = json.loads(churn.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        report["hmi_churn"] = {"error": churn.stderr[-500:]}
    time.sleep(60)
    rss_after = server.rss()
    report["rss_mb_before_churn"] = round(rss_before_churn / 2**20)
    report["rss_mb_60s_after_churn"] = round(rss_after / 2**20)
    report["rss_back_within_5pct"] = rss_after <= rss_before_churn * 1.05
    # historian back
    at(120 + a.outage)
    if outage_on:
        os.unlink(segdir)
        os.replace(away, segdir)
    # the spool drains; then every recorded point is either stored or still queued in memory
    drain_end = time.monotonic() + max(30.0, tm0 + duration - 5 - time.monotonic())
    while time.monotonic() < drain_end:
        time.sleep(5)
        if (health_last().get("_system/historian/spool_blocks") or 0) == 0:
            break
    at(duration - 5)
    last = health_last()
    # one red dot per root cause: each killed cabinet raised comm_lost, its luminaires nothing
    events = [e for e in read_jsonl(ccfg["events"]) if e["t"] >= t_kill]
    killed_paths = {d.path for d in killed}
    comm = {e["source"] for e in events if e["name"] == "comm_lost" and e.get("active")}
    # a red dot is an annunciated alarm: active and Retain (suppressed ones arrive with Retain false)
    under = [e for e in events if e.get("active") and e.get("retain") and e["name"] != "lamp_failure"
             and any(e["source"].startswith(p + "/") for p in killed_paths)]
    report["killed_cabinets_with_one_comm_lost"] = len(comm & killed_paths)
    report["red_dots_under_killed_cabinets"] = len(under)
    report["red_dots_under_killed_by_name"] = dict(collections.Counter(
        e["name"] for e in under).most_common(5))
    report["killed_cabinet_events_by_name"] = dict(collections.Counter(
        e["name"] for e in events if e["source"] in killed_paths).most_common(5))
    journal = os.path.join(os.path.dirname(os.path.dirname(segdir)).rsplit("/historian", 1)[0], "alarms")
    m = alarm_metrics(read_journal(journal), time.time())
    report["flood_detected"] = bool(m["flood_periods"])
    report["server_alive"] = server.alive()
    report["task_restarts"] = (last.get("_system/server/task_restarts", 0) or 0) - (restarts0 or 0)
    h = {k: last.get(f"_system/historian/{k}") or 0 for k in
         ("recorded", "written", "queued", "spool_blocks", "dropped", "rejected_blocks")}
    report["historian"] = h
    # recorded = points put in blocks (queued changes are not blocks yet); once the spool has
    # drained, every one of them must have been written
    report["historian_points_lost"] = h["recorded"] - h["written"] if not h["spool_blocks"] else None
    try:  # an independent count: what the store holds, read by another process (this one)
        from historian.embedded import EmbeddedBackend
        report["historian_store_points"] = EmbeddedBackend(os.path.dirname(segdir)).count()
    except Exception as e:  # reported, not fatal: the figures above stand
        report["historian_store_points"] = repr(e)
    # affected tags recover: each killed cabinet's comm_lost came back to normal
    cleared = {e["source"] for e in events if e["name"] == "comm_lost" and e.get("active") is False}
    report["killed_cabinets_recovered"] = len(cleared & killed_paths)
    return report


def sim_specs(sim_procs: int, junction_procs: int) -> list[tuple[list[str], int, int]]:
    """(protocols, shard, shards) of each simulator process; no protocol list means all."""
    if not junction_procs:
        return [([], i, sim_procs) for i in range(sim_procs)]
    return ([(["modbus", "mqtt"], i, sim_procs) for i in range(sim_procs)]
            + [(["opcua"], j, junction_procs) for j in range(junction_procs)])


# --------------------------------------------------------------------------- orchestration
def env_pair(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` of ``--server-env``."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def read_jsonl(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return out


def health_tags(site: Any) -> list[str]:
    out = ["_system/server/updates_per_s", "_system/server/changes_per_s", "_system/server/loop_lag_ms",
           "_system/server/tags", "_system/server/task_restarts", "_system/server/trim_ms"]
    for proto in site.by_protocol():
        out += [f"_system/{proto}/{p}" for p in ("connected", "cycle_ms", "late_cycles", "errors", "cycles")]
    out += [f"_system/historian/{p}" for p in ("lag_s", "recorded", "written", "queued", "spool_blocks",
                                                "spool_fill_pct", "dropped", "rejected_blocks")]
    return out


def read_points(endpoint: str, paths: list[str]) -> dict[str, Any]:
    """Current values of ``paths`` read from the server over OPC UA (one Read)."""
    from asyncua import Client, ua

    async def go() -> dict[str, Any]:
        async with Client(endpoint, timeout=60) as c:
            ns = await c.get_namespace_index(NS_URI)
            vals = await c.read_values([c.get_node(ua.NodeId(p, ns)) for p in paths]) if paths else []
            return dict(zip(paths, vals, strict=True))

    return asyncio.run(go())


def dark_by_design(site: Any, victims: list[str], endpoint: str) -> tuple[set[str], dict[str, Any]]:
    """The victims behind a cabinet whose contactor is open (read now over OPC UA): their lamp
    failures are suppressed by design (alarms.suppressed_by: contactor off)."""
    devs = {d.path: d for d in site.devices}
    parents = sorted({v.rsplit("/", 1)[0] for v in victims})
    with_contactor = [p for p in parents if p in devs
                      and "contactor" in site.schemas[devs[p].profile_name].offsets]
    vals = read_points(endpoint, [f"{p}/contactor" for p in with_contactor])
    open_ = {p for p in with_contactor if vals.get(f"{p}/contactor") in (False, 0)}
    return {v for v in victims if v.rsplit("/", 1)[0] in open_}, {
        "cabinets_read": len(with_contactor), "contactors_open": len(open_)}


def targets(size: str, period: float) -> list[tuple[str, str, float, str]]:
    """(figure, kind, limit, text) of every figure with a target (issues 9 and 23,
    docs/performance.md); kind as in :func:`bench._util.verdict`."""
    out = [
        ("server_alive", "eq", True, "alive"),
        ("loop_lag_ms_p99", "max", LOOP_LAG_P99_MS, f"<= {LOOP_LAG_P99_MS:g} ms"),
        ("modbus_cycles_on_time_pct", "min", 100.0, "100 % (no cycle late)"),
        ("devices_disconnected_at_end", "max", 0, "0"),
        ("fault_to_red_dot_s_p99", "max", period + 0.25, f"<= {period:g} + 0.25 s"),
        ("annunciable_faults_unseen", "max", 0, "0 (every fault that can show is a red dot)"),
        ("events_for_faults_hidden_by_design", "max", 0, "0 (no event for a lamp dark by design)"),
        ("alarm_events_per_fault_in_window", "max", 2.0,
         "<= 2 (events bounded by what the faults explain)"),
        ("server_stop_s", "max", 5.0, "<= 5 s"),
    ]
    if size == "dijon":
        out += [("server_cpu_pct_of_one_core", "max", 25.0, "< 25 % of one core"),
                ("server_rss_mb_max", "max", 1536.0, "< 1.5 GB")]
    elif size == "paris":
        out += [("server_cpu_pct_of_one_core", "max", 100.0, "< 100 % of one core")]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--duration", type=float, default=None, help="measurement window, s")
    ap.add_argument("--warmup", type=float, default=75.0, help="seconds before measuring")
    ap.add_argument("--faults", type=int, default=200)
    ap.add_argument("--at", default="12:00", metavar="HH:MM",
                    help="local time of the site at which the city's clock starts, today "
                         "(or YYYY-MM-DDTHH:MM); 'now' runs on the machine's clock (default 12:00)")
    ap.add_argument("--sample", type=int, default=10_000, help="variables the client monitors")
    ap.add_argument("--sim-procs", type=int, default=None, help="simulator processes (lighting)")
    ap.add_argument("--junction-procs", type=int, default=None,
                    help="separate simulator processes for junctions (0: with the lighting)")
    ap.add_argument("--soak", type=float, default=None, metavar="HOURS")
    ap.add_argument("--compress", type=float, default=1.0, metavar="K",
                    help="time compression: the city's clock (server and simulators) runs K times "
                         "faster, so every poll, report and schedule period is divided by K and "
                         "a soak's fault rate multiplied by K; figures in city time")
    ap.add_argument("--chaos", action="store_true",
                    help="run the chaos list (cabinets killed, broker and junction restarts, "
                         "historian outage, lamp-failure flood, HMI churn) instead of plain faults")
    ap.add_argument("--outage", type=float, default=600.0, help="historian outage in --chaos, s")
    ap.add_argument("--churn", nargs=3, metavar=("URL", "CLIENTS", "SECONDS"), help=argparse.SUPPRESS)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--snapshot", type=float, default=None, metavar="SECONDS",
                    help="historian snapshot period (default: the site default, 15 min)")
    ap.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE", type=env_pair,
                    help="environment of the server process only (repeatable), e.g. "
                         "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 (docs/operations.md)")
    ap.add_argument("--client", metavar="CFG", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.churn:
        asyncio.run(churn_main(a.churn[0], int(a.churn[1]), float(a.churn[2])))
        return
    if a.client:
        with open(a.client) as f:
            cfg = json.load(f)
        with open(cfg["events"], "a", buffering=1) as ev, open(cfg["health"], "a", buffering=1) as hl:
            asyncio.run(client_main(cfg, ev, hl))
        return
    rng = random.Random(42)
    duration = a.duration or (3600 * a.soak if a.soak else (a.outage + 300 if a.chaos else 180.0))
    sim_procs = a.sim_procs or {"small": 1, "dijon": 1, "paris": 3}[a.size]
    junction_procs = a.junction_procs if a.junction_procs is not None else {"small": 0, "dijon": 0, "paris": 2}[a.size]
    work = tempfile.mkdtemp(prefix=f"city-{a.size}-")
    procs: list[Proc] = []
    figures: dict[str, Any] = {"size": a.size, "luminaires": SIZES[a.size][0], "junctions": SIZES[a.size][1]}
    server_env = dict(a.server_env)
    if server_env:
        figures["server_env"] = server_env
    try:
        broker_port, opcua_port = free_port(), free_port()
        with open(os.path.join(work, "mosquitto.conf"), "w") as f:
            f.write(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n")
        mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        procs.append(Proc("mosquitto", [mosq, "-c", os.path.join(work, "mosquitto.conf")], work))
        if not wait_port(broker_port, 10):
            raise SystemExit("mosquitto did not start:\n" + procs[-1].tail())
        t0 = time.monotonic()
        site_path, site = prepare_city(work, a.size, broker_port, opcua_port, a.snapshot)
        print(f"[city] {a.size}: {site.tag_count:,} tags in {sum(1 for _ in site.all_devices()):,} devices, "
              f"generated in {time.monotonic() - t0:.1f} s (work dir {work})", flush=True)
        # one clock for the whole city: every process reads `start` at the real instant `ref`
        tz = ZoneInfo(site.config.site.timezone)
        clock_args: list[str] = []
        start = ref = None
        K = float(a.compress)
        if K < 1:
            raise SystemExit("--compress: K must be >= 1")
        if a.at == "now" and K != 1:  # one scaled clock for every process, from now
            start = ref = time.time()
            clock_args = ["--start", datetime.fromtimestamp(start, tz).isoformat(),
                          "--start-ref", repr(ref)]
        if a.at != "now":
            from scada.clock import parse_start

            try:
                start = parse_start(a.at, site.config.site.timezone)
            except ValueError as e:
                raise SystemExit(f"--at: {e}") from None
            ref = time.time()
            clock_args = ["--start", datetime.fromtimestamp(start, tz).isoformat(),
                          "--start-ref", repr(ref)]
        if K != 1:
            clock_args += ["--rate", repr(K)]
            figures["compress"] = K

        def city_time(real: float) -> str:
            t = real if start is None else start + (real - ref) * K
            return datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M:%S %Z")

        figures["city_clock"] = ("machine clock" if start is None
                                 else f"starts at {city_time(ref)} ({site.config.site.timezone})"
                                 + (f", {K:g}x real time" if K != 1 else ""))
        print(f"[city] city clock: {figures['city_clock']}", flush=True)

        # simulators: lighting (Modbus + DALI) sharded over sim_procs processes; at Paris size the
        # junction controllers get processes of their own (asyncua creates ~92,000 monitored items
        # server-side: sharing a process with 68,000 lighting devices starved their sessions)
        specs = sim_specs(sim_procs, junction_procs)
        ready_files = []
        for k, (protos, i, m) in enumerate(specs):
            rf = os.path.join(work, f"sim{k}.ready.json")
            ready_files.append(rf)
            args = [x for p in protos for x in ("--protocol", p)]
            procs.append(Proc(f"sim{k}", [sys.executable, "-m", "cli", "sim", site_path, *args, "--shard",
                                           f"{i}/{m}", "--ready-file", rf, *clock_args], work))
        sims = procs[-len(specs):]
        t0 = time.monotonic()
        while not all(os.path.exists(r) for r in ready_files):
            if time.monotonic() - t0 > 900 or not all(s.alive() for s in sims):
                raise SystemExit("simulators did not start:\n" + "\n".join(s.tail() for s in sims))
            time.sleep(1)
        controls = []
        for rf in ready_files:
            with open(rf) as f:
                info = json.load(f)
            controls.append(tuple(info["control"]))
        figures["sim_start_s"] = round(time.monotonic() - t0, 1)
        print(f"[city] {len(specs)} simulator process(es) ready in {figures['sim_start_s']} s", flush=True)

        # server
        t0 = time.monotonic()
        server = Proc("server", [sys.executable, "-m", "cli", "run", site_path, *clock_args], work,
                      server_env)
        procs.append(server)
        if not wait_port(opcua_port, 600):
            raise SystemExit("server did not open its OPC UA port:\n" + server.tail(40))
        figures["server_start_s"] = round(time.monotonic() - t0, 1)
        print(f"[city] server up (OPC UA port open) in {figures['server_start_s']} s", flush=True)

        # HMI client
        lums = [d.path for d in site.all_devices() if d.kind == "luminaire"]
        sample = [f"{p}/power_w" for p in rng.sample(lums, min(a.sample, len(lums)))]
        ccfg = {"endpoint": f"opc.tcp://127.0.0.1:{opcua_port}/scada", "sample": sample,
                "health_tags": health_tags(site), "events": os.path.join(work, "events.jsonl"),
                "health": os.path.join(work, "health.jsonl")}
        cfg_path = os.path.join(work, "client.json")
        with open(cfg_path, "w") as f:
            json.dump(ccfg, f)
        client = Proc("client", [sys.executable, os.path.abspath(__file__), "--client", cfg_path], work)
        procs.append(client)
        t0 = time.monotonic()
        while not any(r.get("ready") for r in read_jsonl(ccfg["health"])):
            if time.monotonic() - t0 > 300 or not client.alive():
                raise SystemExit("client did not subscribe:\n" + client.tail(30))
            time.sleep(1)
        print(f"[city] client subscribed ({len(sample):,} variables + alarm events); "
              f"warming up {a.warmup:.0f} s", flush=True)
        time.sleep(a.warmup)

        # measurement window with faults
        period = 60.0
        # a soak: a fault every city minute (every 60 / K real seconds)
        n_faults = a.faults if not a.soak else int(duration // (60 / K))
        victims = rng.sample(lums, min(n_faults, len(lums))) if not a.chaos else []
        dark0: set[str] = set()
        contactors: dict[str, Any] = {}
        if victims and not a.soak:
            dark0, contactors = dark_by_design(site, victims, ccfg["endpoint"])
        figures["window_starts_at_city_time"] = city_time(time.time())
        t_window = time.time()
        cpu0, tm0 = server.cpu_seconds(), time.monotonic()
        sampler = RssSampler(server)
        sampler.start()
        health_mark = len(read_jsonl(ccfg["health"]))
        from commands.sim import shard_key

        order: dict[tuple, int] = {}
        shard_of: dict[str, int] = {}  # top-level device -> index of its simulator process
        for d in site.devices:  # the same split as `scada sim --shard` (by listening address)
            k = order.setdefault(shard_key(d), len(order))
            if junction_procs and d.protocol == "opcua":
                shard_of[d.path] = sim_procs + k % junction_procs
            else:
                shard_of[d.path] = k % sim_procs
        injected: list[tuple[str, float]] = []
        refused: list[str] = []
        inject_window = (max(1.0, duration - (period + 15) / K) if not a.soak
                         else duration - period / K)
        chaos_report: dict[str, Any] = {}
        if a.chaos:
            chaos_report = run_chaos(a, site, work, controls, shard_of, procs, server, ccfg,
                                     opcua_port, rng, tm0, duration)
        for k, path in enumerate(victims):
            at = tm0 + k * inject_window / max(1, len(victims))
            while time.monotonic() < at:
                time.sleep(min(1.0, at - time.monotonic()))
            parent = path.rsplit("/", 1)[0]
            ctl = controls[shard_of.get(parent, 0)]
            if a.soak:  # a soak crosses dusk and dawn: each fault's contactor at its injection
                try:
                    dark0 |= dark_by_design(site, [path], ccfg["endpoint"])[0]
                except Exception as e:  # counted as annunciable; reported
                    figures["contactor_read_error"] = repr(e)
            t_flip = time.time()
            ans = send_control(ctl, {"op": "inject", "path": path, "fault": "lamp_failure"})
            if ans.get("ok"):
                injected.append((path, t_flip))
            else:
                refused.append(f"{path}: {ans.get('error')}")
            if a.soak and k >= 2:  # a soak's faults are repaired two minutes later
                old_path = victims[k - 2]
                send_control(controls[shard_of.get(old_path.rsplit("/", 1)[0], 0)],
                             {"op": "clear", "path": old_path})
        while time.monotonic() < tm0 + duration:
            time.sleep(min(5.0, tm0 + duration - time.monotonic()))
        cpu1, tm1 = server.cpu_seconds(), time.monotonic()
        sampler.stop()
        alive = server.alive()
        # dark by design = contactor open at both ends of the window (a schedule step inside
        # the window makes a fault neither: it is left out of both counts)
        dark1: set[str] = set(dark0) if a.soak else set()
        if victims and not a.soak and alive:
            try:
                dark1, _ = dark_by_design(site, victims, ccfg["endpoint"])
            except Exception as e:  # reported; the other figures stand
                figures["contactor_read_error"] = repr(e)
                dark1 = dark0
        dark = dark0 & dark1
        unsure = dark0 ^ dark1
        stop_s = server.stop(signal.SIGTERM)
        client.stop(signal.SIGTERM)

        # figures
        events = read_jsonl(ccfg["events"])
        first_seen: dict[str, float] = {}
        for ev in events:
            # a red dot is an annunciated alarm: active and Retain
            if ev["name"] == "lamp_failure" and ev.get("active") and ev.get("retain"):
                first_seen.setdefault(ev["source"], ev["t"])
        expected = [(p, t) for p, t in injected if p not in dark and p not in unsure]
        # in city seconds (real seconds x K): the targets are the devices' periods
        lat = [(first_seen[p] - t) * K for p, t in expected if p in first_seen and first_seen[p] >= t]
        in_window = [ev for ev in events if ev["t"] >= t_window]
        dark_events = [ev for ev in in_window if ev["source"] in dark]
        health = read_jsonl(ccfg["health"])[health_mark:]
        ups = [h.get("_system/server/updates_per_s") for h in health if h.get("_system/server/updates_per_s") is not None]
        lag = [h.get("_system/server/loop_lag_ms") for h in health if h.get("_system/server/loop_lag_ms") is not None]
        hist_lag = [h.get("_system/historian/lag_s") for h in health if h.get("_system/historian/lag_s") is not None]
        trims = [h.get("_system/server/trim_ms") for h in health if h.get("_system/server/trim_ms")]

        def delta(key: str) -> float | None:
            vals = [h[key] for h in health if isinstance(h.get(key), (int, float))]
            return (vals[-1] - vals[0]) if len(vals) >= 2 else None

        cycles_on_time = {}
        for proto in site.by_protocol():
            late, cyc = delta(f"_system/{proto}/late_cycles"), delta(f"_system/{proto}/cycles")
            if late is not None and cyc:
                cycles_on_time[proto] = round(100.0 * (1 - late / cyc), 2)
            elif late is not None:
                cycles_on_time[proto] = f"push (subscriptions), late cycles: {late:.0f}"
        connected = {}
        for proto, devs in site.by_protocol().items():
            vals = [h.get(f"_system/{proto}/connected") for h in health
                    if h.get(f"_system/{proto}/connected") is not None]
            connected[proto] = f"{int(vals[-1]) if vals else '?'} of {len(devs)}"
        cpu_pct = 100.0 * (cpu1 - cpu0) / (tm1 - tm0)
        disconnected = 0
        for proto, devs in site.by_protocol().items():
            vals = [h.get(f"_system/{proto}/connected") for h in health
                    if h.get(f"_system/{proto}/connected") is not None]
            disconnected += len(devs) - int(vals[-1]) if vals else len(devs)
        mb_on_time = cycles_on_time.get("modbus")
        figures.update({
            "duration_s": round(tm1 - tm0), "server_alive": alive, "server_stop_s": round(stop_s, 2),
            "server_cpu_pct_of_one_core": round(cpu_pct, 1),
            "server_rss_mb_max": round(max(r for _, r in sampler.samples) / 2**20),
            "server_rss_mb_end": round(sampler.samples[-1][1] / 2**20),
            "tag_updates_per_s_median": round(percentile(ups, 50)) if ups else None,
            "devices_connected_at_end": connected,
            "poll_cycles_on_time_pct": cycles_on_time,
            "loop_lag_ms_p50": round(percentile(lag, 50), 1) if lag else None,
            "loop_lag_ms_p99": round(percentile(lag, 99), 1) if lag else None,
            "historian_lag_s_max": round(max(hist_lag), 2) if hist_lag else None,
            "malloc_trim_ms_max": round(max(trims), 1) if trims else None,
            "faults_injected": len(injected), "faults_refused": refused[:5],
            "faults_hidden_by_design": len([p for p, _ in injected if p in dark]),
            "faults_under_a_schedule_step": len([p for p, _ in injected if p in unsure]),
            "contactors": contactors,
            "faults_annunciable": len(expected), "faults_seen": len(lat),
            "annunciable_faults_unseen": len(expected) - len(lat),
            "fault_to_red_dot_s_p50": round(percentile(lat, 50), 3) if lat else None,
            "fault_to_red_dot_s_p99": round(percentile(lat, 99), 3) if lat else None,
            "luminaire_report_period_s": period,
            "alarm_events_received": len(events),
            "alarm_events_in_window": len(in_window),
            "alarm_events_per_fault_in_window": (round(len(in_window) / len(injected), 2)
                                                 if injected else None),
            "events_for_faults_hidden_by_design": len(dark_events),
            "alarm_events_in_window_by_name": dict(collections.Counter(
                f'{ev["name"]} ({"red dot" if ev.get("retain") else "hidden" if ev.get("active") else "cleared"})'
                for ev in in_window).most_common(8)),
            "client_datachanges": (health[-1].get("datachanges") if health else None),
            "devices_disconnected_at_end": disconnected,
            "modbus_cycles_on_time_pct": mb_on_time if isinstance(mb_on_time, float) else None,
            "window_ends_at_city_time": city_time(time.time()),
        })
        if a.chaos or a.soak:  # the chaos list and the soak have their own checks
            figures["alarm_events_per_fault_in_window"] = None
        verdicts = {}
        for name, kind, limit, text in targets(a.size, period):
            v = figures.get(name)
            if v is None and name == "alarm_events_per_fault_in_window" and (a.chaos or a.soak):
                continue
            if v is None and name == "fault_to_red_dot_s_p99" and not expected:
                continue  # nothing could show (every victim dark): nothing to time
            if v is None and name == "modbus_cycles_on_time_pct" and "modbus" not in cycles_on_time:
                continue
            verdicts[name] = {"value": v, "target": text, "verdict": verdict(v, limit, kind)}
        figures["verdicts"] = verdicts
        if chaos_report:
            figures["chaos"] = chaos_report
        if a.soak:
            figures["soak_availability_pct"] = cycles_on_time
            figures.update(memory_growth(sampler.samples, compress=K))
            for name, kind, limit, text in SOAK_TARGETS:
                v = figures.get(name)
                verdicts[name] = {"value": v, "target": text, "verdict": verdict(v, limit, kind)}
            png = plot_rss(sampler.samples, K, os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"city-{a.size}-soak-rss.png"))
            if png:
                figures["soak_rss_plot"] = png
        at_tag = "" if a.at == "now" else "-" + a.at.replace(":", "")[-4:]
        path = save(f"city-{a.size}" + ("-soak" if a.soak else "") + at_tag, figures)
        print(json.dumps(figures, indent=2))
        print(f"[city] {a.size}, city clock {figures['city_clock']}; window "
              f"{figures['window_starts_at_city_time']} - {figures['window_ends_at_city_time']}")
        for name, v in verdicts.items():
            print(f"  {v['verdict']:4}  {name:38} {v['value']!s:>12}   target {v['target']}")
        failed = [n for n, v in verdicts.items() if v["verdict"] == "FAIL"]
        print(f"[city] {'FAIL: ' + ', '.join(failed) if failed else 'PASS: every figure within its target'}")
        print(f"[city] figures saved to {path}")
    finally:
        for p in reversed(procs):
            try:
                p.stop(signal.SIGTERM, timeout=15)
            except Exception as e:  # cleanup must go on for the others
                print(f"[city] could not stop {p.name}: {e!r}", file=sys.stderr)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"[city] work directory kept: {work}")


if __name__ == "__main__":
    main()
