"""Issue 22's chaos test: a generated city with real simulators (Modbus, MQTT on a real
Mosquitto, OPC UA junctions), a real etcd and both servers of the pair as real ``scada run
--node`` processes, under load (an alarm flood, the schedules stepping at night, HMI clients
subscribed to both servers):

1. the active (a) is cut off from etcd by a black-holing proxy: it fences itself before its
   lease can expire, so before the standby (b) can win; b takes over (it polls, the HMI sees its
   ServiceLevel go to 255 and Good data); healed, a rejoins as standby;
2. kill -9 of the active (b): a takes over after the lease expires; b restarted joins as standby;
3. no two actives writing: from the servers' logs (a fenced before b active, on the machine's
   one clock) and from the writes' audit per fencing token each server publishes (scada ha
   status): every write of a term happened before the first write of the next term.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest
from asyncua import Client, ua

from scada.gencity import generate
from scada.loader import load_site
from scada.users import hash_password
from simulators.faults import send_control
from tests.conftest import device_ports, free_port
from tests.fixtures.etcd import TcpProxy
from tests.fixtures.mqtt import eventually
from tests.fixtures.process import ScadaProcess, run_scada

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(600)]

PROFILES = Path(__file__).resolve().parents[2] / "config" / "profiles"
TTL = 4.0
OP_PASSWORD = "pw-operator"
OP_HASH = hash_password(OP_PASSWORD, n=2**10)
_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z")


def log_time(line: str) -> float:
    m = _TS.match(line)
    assert m, line
    return datetime.strptime(m.group(1) + "+0000", "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def make_pair(tmp: Path, broker: str, etcd_a: str, etcd_b: str) -> dict[str, dict]:
    """The same generated city for both nodes (one directory each: state, OPC UA port)."""
    prof = tmp / "profiles"
    shutil.copytree(PROFILES, prof)
    for name, old, new in (("luminaire-modbus.yaml", "report: 60s", "report: 2s"),
                           ("dali-gateway.yaml", "report_period_s: 60", "report_period_s: 2"),
                           ("luminaire-dali.yaml", "report_period_s: 60", "report_period_s: 2")):
        p = prof / name
        p.write_text(p.read_text().replace(old, new))
    base = device_ports()
    secret = tmp / "pair.secret"
    secret.write_bytes(os.urandom(24).hex().encode() + b"\n")
    os.chmod(secret, 0o600)
    nodes = {n: {"opcua": free_port(), "repl": free_port()} for n in ("a", "b")}
    spec = "\n".join(
        f"    {n}: {{opcua: \"opc.tcp://127.0.0.1:{p['opcua']}/scada\", replication: \"127.0.0.1:{p['repl']}\"}}"
        for n, p in nodes.items())
    for n, etcd in (("a", etcd_a), ("b", etcd_b)):
        d = tmp / n
        d.mkdir()
        (d / "profiles").symlink_to(prof)
        site = d / "city.yaml"
        generate(200, 2, out_path=str(site), profiles_dir=str(d / "profiles"), seed=7,
                 base_port=base, broker=broker, junctions_per_server=1)
        site.write_text(site.read_text() + textwrap_pair(nodes[n]["opcua"], etcd, spec, secret))
        nodes[n]["site"] = str(site)
        nodes[n]["url"] = f"opc.tcp://127.0.0.1:{nodes[n]['opcua']}/scada"
    return nodes


def textwrap_pair(port: int, etcd: str, spec: str, secret: Path) -> str:
    return (f"opcua: {{port: {port}, allow_security_none: true}}\n"
            f"users:\n  - {{name: op1, role: operator, password_hash: '{OP_HASH}'}}\n"
            f"ha:\n  etcd: [\"{etcd}\"]\n  lease_ttl: {TTL:g}s\n  nodes:\n{spec}\n"
            f"  replication: {{secret_file: \"{secret}\"}}\n")


class Hmi:
    """An OPC UA client on one server: ServiceLevel and a few tags, every notification kept."""

    def __init__(self, url: str, tags: list[str]):
        self.url = url
        self.tags = tags
        self.seen: list[tuple[float, str, object, int]] = []
        self.task: asyncio.Task[None] | None = None

    def datachange_notification(self, node, val, data) -> None:
        dv = data.monitored_item.Value
        self.seen.append((time.time(), str(node.nodeid.Identifier), val, dv.StatusCode.value))

    def status_change_notification(self, status) -> None:
        pass

    async def run(self) -> None:
        while True:  # reconnect while the server is down (kill -9, restart)
            try:
                async with Client(self.url, timeout=5) as c:
                    sub = await c.create_subscription(200, self)
                    ns = await c.get_namespace_index("urn:scada:streetlight:tags")
                    nodes = [c.get_node(ua.NodeId(ua.ObjectIds.Server_ServiceLevel))]
                    nodes += [c.get_node(ua.NodeId(t, ns)) for t in self.tags]
                    await sub.subscribe_data_change(nodes)
                    while True:
                        await asyncio.sleep(1)
                        await c.check_connection()
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.5)

    def level(self) -> int | None:
        lv = [v for _, n, v, _ in self.seen if n == str(ua.ObjectIds.Server_ServiceLevel)]
        return int(lv[-1]) if lv else None

    def good_since(self, t: float, tag: str) -> bool:
        return any(ts >= t and n == tag and q == 0 for ts, n, _, q in self.seen)

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class Writer:
    """An operator's HMI writing a cabinet's group level to both servers in turn, every 0.2 s:
    (sent, answered, node, accepted) for each write. The standby refuses (Bad_NotWritable)."""

    def __init__(self, urls: dict[str, str], tag: str):
        self.urls = urls
        self.tag = tag
        self.writes: list[tuple[float, float, str, bool]] = []
        self.task: asyncio.Task[None] | None = None

    async def one(self, node: str, url: str) -> None:
        while True:
            try:
                c = Client(url, timeout=3)
                c.set_user("op1")
                c.set_password(OP_PASSWORD)
                async with c:
                    ns = await c.get_namespace_index("urn:scada:streetlight:tags")
                    n = c.get_node(ua.NodeId(self.tag, ns))
                    for k in range(100_000):
                        t0 = time.time()
                        try:
                            await n.write_value(ua.DataValue(ua.Variant(40.0 + k % 2, ua.VariantType.Double)))
                            ok = True
                        except ua.UaStatusCodeError:
                            ok = False
                        self.writes.append((t0, time.time(), node, ok))
                        await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.5)

    async def run(self) -> None:
        await asyncio.gather(*(self.one(n, u) for n, u in self.urls.items()))

    def accepted(self, node: str, since: float = 0.0) -> list[tuple[float, float, str, bool]]:
        return [w for w in self.writes if w[2] == node and w[3] and w[0] >= since]

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def wait_line(proc: ScadaProcess, text: str, within: float = 120.0,
                    after: float | None = None) -> str:
    """The first log line containing ``text`` logged at or after ``after`` (wall clock)."""
    if after is None:
        return await asyncio.to_thread(proc.wait_for, text, within)
    deadline = time.monotonic() + within
    while True:
        hits = [ln for ln in lines(proc, text) if _TS.match(ln) and log_time(ln) >= after - 0.001]
        if hits:
            return hits[0]
        if time.monotonic() > deadline or proc.proc.poll() is not None:
            pytest.fail(f"never logged {text!r} after {after}:\n{proc.output[-4000:]}")
        await asyncio.sleep(0.1)


def lines(proc: ScadaProcess, text: str) -> list[str]:
    return [ln for ln in proc.output.splitlines() if text in ln]


async def pair_status(site: str) -> dict:
    res = await asyncio.to_thread(run_scada, "ha", "status", "--json", site)
    assert res.returncode in (0, 3), res.stderr
    return json.loads(res.stdout)


async def test_pair_survives_partition_kill_and_rejoin(tmp_path, etcd, mosquitto):
    proxy = await TcpProxy("127.0.0.1", etcd.members[0].client_port).start()
    nodes = make_pair(tmp_path, mosquitto.address, proxy.url, etcd.url)
    site = load_site(nodes["a"]["site"])
    cabinets = [d for d in site.devices if d.kind == "cabinet"]
    gateways = [d for d in site.devices if d.kind == "gateway"]
    sample = f"{cabinets[0].path}/voltage_l1"
    ready = tmp_path / "sim.ready.json"
    night = ["--start", "22:30"]
    sim = ScadaProcess("sim", nodes["a"]["site"], "--ready-file", str(ready), *night)
    procs = [sim]
    hmis: list[Hmi] = []
    writer: Writer | None = None
    try:
        await eventually(lambda: ready.exists(), within=120, what="simulators ready")
        ctl = tuple(json.loads(ready.read_text())["control"])

        def run(n: str) -> ScadaProcess:
            p = ScadaProcess("run", "--node", n, nodes[n]["site"], *night)
            procs.append(p)
            return p

        a = run("a")
        await wait_line(a, "this server (a) is now ACTIVE", 180)
        b = run("b")
        await wait_line(b, "lease holder is a", 180)
        for n in ("a", "b"):
            h = Hmi(nodes[n]["url"], [sample])
            h.task = asyncio.ensure_future(h.run())
            hmis.append(h)
        ha_, hb = hmis
        await eventually(lambda: ha_.level() == 255 and hb.level() == 1, within=120,
                         what="ServiceLevel 255 on the active, 1 on the standby")
        await eventually(lambda: ha_.good_since(0, sample), within=120, what="a polls")
        assert not hb.good_since(0, sample), "the standby must not show Good device data"
        writer = Writer({n: nodes[n]["url"] for n in ("a", "b")}, f"{cabinets[1].path}/group_level")
        writer.task = asyncio.ensure_future(writer.run())
        await eventually(lambda: writer.accepted("a") and any(w[2] == "b" for w in writer.writes),
                         within=60, what="the operator writes through both servers")
        assert not writer.accepted("b"), "the standby refuses writes"

        # load: an alarm flood (every luminaire fails at once) while the pair runs
        await asyncio.to_thread(send_control, *ctl, *[
            {"op": "inject", "path": d.path, "fault": "lamp_failure"} for d in [*cabinets, *gateways]])

        # 1. partition the active from etcd
        t_cut = time.time()
        proxy.partition()
        line_b = await wait_line(b, "this server (b) is now ACTIVE", 120, after=t_cut)
        fenced_a = [ln for ln in lines(a, "this server (a) is no longer active")
                    if log_time(ln) >= t_cut - 0.01]
        assert fenced_a, a.output[-3000:]
        assert log_time(fenced_a[0]) < log_time(line_b), (fenced_a[0], line_b)
        assert log_time(fenced_a[0]) - t_cut < TTL, "a must step down before its lease expires"
        await eventually(lambda: hb.level() == 255 and hb.good_since(log_time(line_b), sample),
                         within=60, what="the HMI sees b active with Good data")
        await eventually(lambda: writer.accepted("b"), within=30, what="b accepts writes")
        await eventually(lambda: ha_.level() == 1, within=30, what="a's ServiceLevel drops")
        proxy.heal()
        await wait_line(a, "lease holder is b", 120, after=t_cut)

        # 2. kill -9 the active (b): a takes over after the lease expires; b comes back standby
        t_kill = time.time()
        b.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(b.kill)
        line_a = await wait_line(a, "this server (a) is now ACTIVE", 120, after=t_kill)
        assert log_time(line_a) - t_kill < 3 * TTL, "takeover within the lease TTL plus a margin"
        await eventually(lambda: ha_.level() == 255 and ha_.good_since(log_time(line_a), sample),
                         within=60, what="the HMI sees a active again with Good data")
        b2 = run("b")
        await wait_line(b2, "lease holder is a", 180)
        await eventually(lambda: hb.level() == 1, within=60, what="restarted b is standby")
        t_end = time.time()
        await eventually(lambda: writer.accepted("a", log_time(line_a)), within=30,
                         what="a accepts writes again")
        await writer.aclose()
        # never two servers accepting writes at once: ordered by time, the accepted writes
        # change server exactly once per failover, and each one of the new server starts after
        # the last one of the old server was answered
        acc = sorted((w for w in writer.writes if w[3]), key=lambda w: w[0])
        switches = [(p, q) for p, q in itertools.pairwise(acc) if p[2] != q[2]]
        assert [(p[2], q[2]) for p, q in switches] == [("a", "b"), ("b", "a")], switches
        assert all(p[1] < q[0] for p, q in switches), switches
        assert not [w for w in writer.writes if w[2] == "b" and w[3] and w[0] > t_end]

        # 3. the writes' audit per term, as each server publishes it in etcd
        async def statuses() -> dict:
            return (await pair_status(nodes["a"]["site"]))["nodes"]

        st: dict = {}
        for _ in range(100):
            st = await statuses()
            if set(st) == {"a", "b"} and st["a"]["role"] == "active" and st["b"]["role"] == "standby":
                break
            await asyncio.sleep(0.5)
        assert st["a"]["role"] == "active" and st["b"]["role"] == "standby", st
        terms: dict[int, list[float]] = {}
        for s in st.values():
            for tok, w in s["writes_by_token"].items():
                terms[int(tok)] = w
        assert len(terms) >= 2, f"a wrote in two terms: {st}"
        order = sorted(terms)
        for t1, t2 in itertools.pairwise(order):
            assert terms[t1][2] < terms[t2][1], f"term {t1} wrote after term {t2} began: {terms}"
        assert st["b"]["writes_by_token"] == {}, "a fresh standby never wrote"
    finally:
        for h in hmis:
            await h.aclose()
        if writer is not None:
            await writer.aclose()
        for p in reversed(procs):
            if p.proc.poll() is None:
                await asyncio.to_thread(p.stop, signal.SIGTERM, 30)
        await proxy.aclose()
