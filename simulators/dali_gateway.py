"""DALI-2 / D4i gateway simulator speaking MQTT (the topic tree of profile ``dali-gateway``).

Each gateway serves 1-4 DALI lines of up to 64 short addresses (IEC 62386-102 §7.2) and 16
groups, its luminaires modelled by the shared vectorised :class:`~simulators.luminaire.
LuminaireBank`. Topics (``docs/devices/dali-mqtt.md``)::

    dali/<gw>/status                   retained {"online", "lines_ok", "line_faults", "broadcast",
                                       "groups": [16], "ts"}; Last Will {"online": false}
    dali/<gw>/birth                    {"gateway", "lines", "luminaires", "firmware", "ts"}
    dali/<gw>/<line>/<addr>/state      {"ts", "level", "target", "power", "energy", "hours",
                                       "starts", "temp", "supply_v", "faults", "status"}
    dali/<gw>/<line>/<addr>/set        command {"level": %, "fade": s}   (DAPC, short address)
    dali/<gw>/group/<g>/set            command {"level": %, "fade": s}   (group address)
    dali/<gw>/broadcast/set            command {"level": %, "fade": s}   (broadcast)
    dali/<gw>/query                    command {} or {"line": l, "address": a}: republish state
    dali/<gw>/ack                      confirmation of every command {"cmd", "result", ...}

State is published on change (level, target or fault bits) and every ``period`` seconds per
luminaire, spread evenly over the period so 34,000 luminaires are a steady ~570 msg/s, not a
burst. Every command is confirmed by the echoed state of the luminaires it reached (target
level), by the retained status for group/broadcast, and by an ``ack``.

**One MQTT connection per gateway.** A gateway's offline state must come from its own Last
Will (MQTT 3.1.1 §3.1.2.5), which is per connection, so gateways cannot share one. The cost is
per message, not per connection: Dijon's ~10,000 DALI luminaires behind ~70 gateways (or the
whole 34,000 at 256 per gateway: 133 connections) are one socket and one small keepalive task
each on the loop; publishing is ~25 µs per message, ~1.5 % of a core at 570 msg/s.

Fault injection (handle methods): gateway disconnect (TCP dropped: the broker fires the Will),
one DALI line down, a luminaire that stops reporting, malformed payloads of every kind the
driver must reject, and luminaire fault bits (lamp, driver, LED open/short, thermal, supply).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from paho.mqtt.client import MQTTMessage

from drivers.mqtt.broker import EmbeddedBrokerLease, ensure_embedded_broker
from drivers.mqtt.client import MqttConnection, Will
from drivers.mqtt.mapping import BrokerConnection, MqttOptions
from scada.clock import Clock
from scada.site import DeviceInstance, Site
from simulators.luminaire import FAULT_NAMES, LuminaireBank

log = logging.getLogger("simulators.dali_gateway")

LINE_SIZE = 64
MAX_LINES = 4
GROUPS = 16
FIRMWARE = "scada-sim-dali 1.0"

#: Malformed payloads the gateway can be told to publish (fault injection), by reject reason.
MALFORMED: dict[str, bytes] = {
    "not_json": b"level=42;power=12",
    "truncated": b'{"ts": 1767225600, "level": 42.0, "power": 1',
    "non_finite": b'{"level": NaN, "power": Infinity}',
    "wrong_type": b'{"level": "bright", "power": [1, 2]}',
    "not_utf8": b'{"level": "\xff\xfe"}',
    "too_large": b'{"pad": "' + b"x" * (1024 * 1024) + b'"}',
    "missing_field": b'{"colour": "warm"}',
    "bad_timestamp": b'{"ts": "yesterday", "level": 1}',
}


@dataclass
class SimGatewayConfig:
    gateway: str
    host: str
    port: int
    embedded: bool
    period: float = 60.0
    tick: float = 1.0
    qos: int = 1


class SimGateway:
    """One gateway: its lines, luminaires, MQTT connection and fault switches."""

    def __init__(self, cfg: SimGatewayConfig, clock: Clock, children: list[DeviceInstance],
                 seed: int = 0, client_prefix: str = "sim"):
        self.cfg = cfg
        self.clock = clock
        self.id = cfg.gateway
        n = len(children)
        if n > LINE_SIZE * MAX_LINES:
            raise ValueError(f"gateway {cfg.gateway}: {n} luminaires > {MAX_LINES} lines x {LINE_SIZE}")
        self.n = n
        self.index = np.asarray([c.index or (k + 1) for k, c in enumerate(children)], dtype=np.int64)
        self.line = (self.index - 1) // LINE_SIZE
        self.address = (self.index - 1) % LINE_SIZE
        self.lines = int(self.line.max()) + 1 if n else 1
        self.group = np.asarray([int(c.attrs.get("group", 0)) % GROUPS for c in children], dtype=np.int64)
        nominal = np.asarray([float(c.attrs.get("nominal_w", 40.0)) for c in children], dtype=np.float64)
        now = clock.time()
        self.bank = LuminaireBank(n, nominal if n else 40.0, start_time=now, seed=seed)
        if n:
            self.bank.set_powered(None, True, now)
        self.topics = [f"dali/{self.id}/{ln}/{a}/state" for ln, a in zip(self.line, self.address, strict=True)]
        self._by_addr = {(int(ln), int(a)): k for k, (ln, a) in enumerate(zip(self.line, self.address, strict=True))}
        # reporting: each luminaire at its own phase of the period
        self.next_report = now + (np.arange(n) + 0.5) * (cfg.period / max(n, 1))
        self._pub_level = np.full(n, np.nan)
        self._pub_target = np.full(n, np.nan)
        self._pub_faults = np.full(n, -1, dtype=np.int64)
        self.silent = np.zeros(n, dtype=bool)
        self.line_down = np.zeros(MAX_LINES, dtype=bool)
        self.group_level: list[float] = [0.0] * GROUPS
        self.broadcast: float = 0.0
        self.published = 0
        self.commands = 0
        will = Will(f"dali/{self.id}/status", b'{"online":false}', 1, True)
        self.conn = MqttConnection(
            host=cfg.host, port=cfg.port, client_id=f"{client_prefix}-{self.id}", name=f"sim {self.id}",
            # amqtt (embedded) is MQTT 3.1.1 only and mis-parses a v5 CONNECT carrying a Will
            protocol="3.1.1" if cfg.embedded else "auto", clean_start=False, session_expiry=3600, keepalive=30, will=will,
            subscriptions=[(f"dali/{self.id}/+/+/set", 1), (f"dali/{self.id}/broadcast/set", 1),
                           (f"dali/{self.id}/query", 1)],
            max_queued=max(1000, 4 * n + 100), max_inflight=1000,
            on_message=self._on_message, on_connected=self._on_connected,
        )
        self._task: asyncio.Task[None] | None = None
        self._full_pending = False
        self._next_status = now + cfg.period
        #: luminaire device path -> child number k (0-based)
        self.paths: dict[str, int] = {c.path: k for k, c in enumerate(children)}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.conn.start()
        self._task = asyncio.create_task(self._ticker(), name=f"dali-sim:{self.id}")

    async def aclose(self) -> None:
        t, self._task = self._task, None
        if t is not None:
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)
        # a clean shutdown says offline itself (a clean DISCONNECT does not fire the Will)
        if self.conn.connected:
            self.conn.publish(f"dali/{self.id}/status", b'{"online":false}', 1, True)
        await self.conn.aclose()

    def _on_connected(self, session_present: bool) -> None:
        now = self.clock.time()
        self.conn.publish(f"dali/{self.id}/birth", json.dumps({
            "gateway": self.id, "lines": self.lines, "luminaires": self.n, "firmware": FIRMWARE,
            "ts": now}), 1, False)
        self.publish_status()
        self._full_pending = True  # republish every state at the next tick (after a reconnect)

    async def _ticker(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("DALI gateway simulator %s: tick failed", self.id)
            await self.clock.sleep(self.cfg.tick)

    # ------------------------------------------------------------------ publishing
    def publish_status(self) -> None:
        down = int(sum(1 << i for i in range(MAX_LINES) if self.line_down[i]))
        self.conn.publish(f"dali/{self.id}/status", json.dumps({
            "online": True, "lines": self.lines, "lines_ok": down == 0, "line_faults": down,
            "broadcast": self.broadcast, "groups": self.group_level, "ts": self.clock.time(),
        }, separators=(",", ":")), 1, True)

    def tick(self) -> None:
        """Step the model and publish what changed plus what is due (on the clock)."""
        now = self.clock.time()
        if now >= self._next_status and self.conn.connected:
            self._next_status = now + self.cfg.period  # retained heartbeat, once a period
            self.publish_status()
        if not self.n:
            return
        b = self.bank
        b.step(now)
        faults = b.faults.astype(np.int64)
        changed = (b.level != self._pub_level) | (b.target != self._pub_target) | (faults != self._pub_faults)
        due = self.next_report <= now
        full = self._full_pending and self.conn.connected
        if full:
            self._full_pending = False  # republish everything, keep each one's reporting phase
        send = (changed | due | full) & ~self.silent & ~self.line_down[self.line]
        if due.any():
            # next report one period later (catch up without a burst after a long pause)
            self.next_report[due] += self.cfg.period * np.maximum(1, np.ceil((now - self.next_report[due]) / self.cfg.period))
        if send.any():
            self.publish_states(np.nonzero(send)[0], now)

    def publish_states(self, ks: np.ndarray, now: float) -> None:
        b = self.bank
        status = b.status_word()
        lv, tg, pw, en = b.level[ks], b.target[ks], b.power_w[ks], b.energy_wh[ks]
        hs, st, tc, sv = b.operating_h[ks], b.starts[ks], b.driver_temp_c[ks], b.supply_v[ks]
        fl, ss = b.faults[ks], status[ks]
        pub = self.conn.publish
        qos = self.cfg.qos
        topics = self.topics
        for j, k in enumerate(ks.tolist()):
            payload = (
                f'{{"ts":{now:.3f},"level":{lv[j]:.2f},"target":{tg[j]:.2f},"power":{pw[j]:.2f},'
                f'"energy":{en[j]:.3f},"hours":{hs[j]:.3f},"starts":{st[j]},"temp":{tc[j]:.2f},'
                f'"supply_v":{sv[j]:.1f},"faults":{fl[j]},"status":{ss[j]}}}'
            )
            if pub(topics[k], payload, qos, False):
                self.published += 1
        self._pub_level[ks] = lv
        self._pub_target[ks] = tg
        self._pub_faults[ks] = fl.astype(np.int64)

    # ------------------------------------------------------------------ commands
    def _ack(self, cmd: str, result: str, **extra: Any) -> None:
        self.conn.publish(f"dali/{self.id}/ack", json.dumps({"cmd": cmd, "result": result, **extra,
                                                             "ts": self.clock.time()}), 1, False)

    def _on_message(self, msg: MQTTMessage) -> None:
        parts = msg.topic.split("/")
        try:
            body = json.loads(msg.payload.decode("utf-8")) if msg.payload else {}
        except (UnicodeDecodeError, ValueError):
            self._ack(msg.topic, "malformed")
            return
        if not isinstance(body, dict):
            self._ack(msg.topic, "malformed")
            return
        now = self.clock.time()
        self.commands += 1
        if parts[-1] == "query":
            if "line" in body and "address" in body:
                ln, ad = body["line"], body["address"]
                if type(ln) is not int or type(ad) is not int:
                    self._ack("query", "invalid")
                    return
                k = self._by_addr.get((ln, ad))
                if k is not None and not self.silent[k] and not self.line_down[self.line[k]]:
                    self.publish_states(np.asarray([k]), now)
            else:
                self.publish_status()
                self.publish_states(np.nonzero(~self.silent & ~self.line_down[self.line])[0], now)
            self._ack("query", "ok")
            return
        level = body.get("level")
        fade = body.get("fade", 0) or 0
        if type(level) not in (int, float) or not 0 <= level <= 100 or type(fade) not in (int, float):
            self._ack(msg.topic, "invalid", level=level)
            return
        if len(parts) == 4 and parts[2] == "broadcast":
            sel = np.ones(self.n, dtype=bool)
            self.broadcast = float(level)
            self.group_level = [float(level)] * GROUPS
            what: dict[str, Any] = {"cmd": "broadcast"}
        elif len(parts) == 5 and parts[2] == "group":
            g = int(parts[3]) if parts[3].isdigit() else -1
            if not 0 <= g < GROUPS:
                self._ack(msg.topic, "invalid_group")
                return
            sel = self.group == g
            self.group_level[g] = float(level)
            what = {"cmd": "group", "group": g}
        elif len(parts) == 5 and parts[2].isdigit() and parts[3].isdigit():
            k = self._by_addr.get((int(parts[2]), int(parts[3])))
            if k is None:
                self._ack(msg.topic, "no_such_address")
                return
            sel = np.zeros(self.n, dtype=bool)
            sel[k] = True
            what = {"cmd": "direct", "line": int(parts[2]), "address": int(parts[3])}
        else:
            self._ack(msg.topic, "unknown_command")
            return
        reach = sel & ~self.line_down[self.line]
        if reach.any():
            self.bank.command(np.nonzero(reach)[0], float(level), now, float(fade))
        if what["cmd"] != "direct":
            self.publish_status()
        # echo: the state of every reached luminaire (target = the new level), now
        ks = np.nonzero(reach & ~self.silent)[0]
        if len(ks):
            self.publish_states(ks, now)
        self._ack(what.pop("cmd"), "ok" if reach.any() or not sel.any() else "line_down",
                  level=level, reached=int(reach.sum()), **what)

    # ------------------------------------------------------------------ faults
    def set_line_down(self, line: int, down: bool = True) -> None:
        """DALI line ``line`` loses bus power: its luminaires stop answering (IEC 62386-101)."""
        self.line_down[line] = down
        if not down:
            ks = np.nonzero(self.line == line)[0]
            self.next_report[ks] = self.clock.time()
        self.publish_status()

    def silence(self, k: int, silent: bool = True) -> None:
        """Luminaire ``k`` (0-based child number) stops (or resumes) reporting."""
        self.silent[k] = silent

    def publish_raw(self, topic: str, payload: bytes, qos: int = 1) -> bool:
        return self.conn.publish(topic, payload, qos, False)

    def publish_malformed(self, kind: str, k: int = 0) -> bool:
        """Publish a payload the driver must reject with reason ``kind`` (or ``unknown_topic``)."""
        if kind == "unknown_topic":
            return self.publish_raw(f"dali/{self.id}/9/99/state", b'{"level": 1}')
        return self.publish_raw(self.topics[k], MALFORMED[kind])

    async def disconnect(self) -> None:
        """Network loss: drop the TCP connection, no DISCONNECT: the broker fires the Will."""
        await self.conn.abort()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def reconnect(self) -> None:
        """Come back after :meth:`disconnect` (same client id: the persistent session resumes)."""
        old = self.conn
        self.conn = MqttConnection(
            host=old.host, port=old.port, client_id=old.client_id, name=old.name,
            protocol=old.protocol_pref,
            clean_start=False, session_expiry=3600, keepalive=30, will=old.will,
            subscriptions=old.subscriptions, max_queued=old.max_queued, max_inflight=1000,
            on_message=self._on_message, on_connected=self._on_connected,
        )
        self.start()


#: Faults of a gateway device (``area/gw-xxxx``) and of a DALI luminaire behind it, as named by
#: the shared fault API (``simulators/faults.py``): ``disconnect`` drops the TCP connection (the
#: broker fires the Will; clearing reconnects), ``line_down`` (param ``line``, default 0),
#: ``malformed`` (params ``kind``, ``count``: one-shot); per luminaire the D4i bits of
#: :data:`~simulators.luminaire.FAULT_NAMES`, ``silent`` (stops reporting), ``ignore_commands``,
#: ``energy_reset`` (one-shot). A luminaire fault named on the gateway applies to all its luminaires.
GATEWAY_FAULTS = ("disconnect", "line_down", "malformed")
LUMINAIRE_FAULTS = (*FAULT_NAMES, "silent", "ignore_commands", "energy_reset")


class DaliSimulators:
    """Handle returned by :func:`serve_site`: every simulated gateway, and the fault API."""

    def __init__(self) -> None:
        self.gateways: dict[str, SimGateway] = {}
        self.by_path: dict[str, SimGateway] = {}  # gateway device path -> gateway
        self._leases: list[EmbeddedBrokerLease] = []
        self._active: dict[tuple[str, str], dict[str, Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ shared fault API
    def fault_names(self, device_path: str) -> tuple[str, ...]:
        if device_path in self.by_path:
            return GATEWAY_FAULTS + LUMINAIRE_FAULTS
        self.gateway_of(device_path)  # raises KeyError naming the path
        return LUMINAIRE_FAULTS

    def _targets(self, device_path: str) -> tuple[SimGateway, np.ndarray | int]:
        gw = self.by_path.get(device_path)
        if gw is not None:
            return gw, np.arange(gw.n)
        return self.gateway_of(device_path)

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def inject(self, device_path: str, fault_name: str, **params: Any) -> None:
        """Apply ``fault_name`` to a gateway or luminaire (see :data:`LUMINAIRE_FAULTS`)."""
        from simulators.faults import FaultError

        try:
            gw, ks = self._targets(device_path)
        except KeyError as e:
            raise FaultError(str(e.args[0])) from None
        now = gw.clock.time()
        if fault_name in GATEWAY_FAULTS:
            if device_path not in self.by_path:
                raise FaultError(f"{device_path}: {fault_name!r} is a gateway fault; name the gateway")
            if fault_name == "disconnect":
                self._spawn(gw.disconnect())
            elif fault_name == "line_down":
                gw.set_line_down(int(params.get("line", 0)), True)
            else:
                kind = str(params.get("kind", "not_json"))
                if kind not in MALFORMED and kind != "unknown_topic":
                    raise FaultError(f"malformed kind {kind!r}: expected one of {', '.join(MALFORMED)}, unknown_topic")
                for _ in range(int(params.get("count", 1))):
                    gw.publish_malformed(kind)
                return  # one-shot
        elif fault_name in FAULT_NAMES:
            gw.bank.step(now)
            gw.bank.inject(ks, FAULT_NAMES[fault_name])
        elif fault_name == "silent":
            gw.silent[ks] = True
        elif fault_name == "ignore_commands":
            gw.bank.ignore_commands[ks] = True
        elif fault_name == "energy_reset":
            gw.bank.step(now)
            gw.bank.reset_energy(ks)
            return  # one-shot
        else:
            raise FaultError(f"{device_path}: unknown fault {fault_name!r}; expected one of "
                             f"{', '.join(self.fault_names(device_path))}")
        self._active[(device_path, fault_name)] = dict(params)

    def clear(self, device_path: str, fault_name: str | None = None) -> None:
        """Undo ``fault_name`` (every fault of the device when None)."""
        names = [f for (p, f) in list(self._active) if p == device_path and fault_name in (None, f)]
        for name in names:
            params = self._active.pop((device_path, name))
            gw, ks = self._targets(device_path)
            if name == "disconnect":
                gw.reconnect()
            elif name == "line_down":
                gw.set_line_down(int(params.get("line", 0)), False)
            elif name in FAULT_NAMES:
                gw.bank.step(gw.clock.time())
                gw.bank.clear(ks, FAULT_NAMES[name])
            elif name == "silent":
                gw.silent[ks] = False
            elif name == "ignore_commands":
                gw.bank.ignore_commands[ks] = False

    def active_faults(self) -> list[dict[str, Any]]:
        return [{"path": p, "fault": f, "params": prm} for (p, f), prm in self._active.items()]

    def __getitem__(self, gateway: str) -> SimGateway:
        return self.gateways[gateway]

    def gateway_of(self, device_path: str) -> tuple[SimGateway, int]:
        """(gateway, child number k) of a luminaire path (``area/gw/lum-07``)."""
        for g in self.gateways.values():
            if device_path in g.paths:
                return g, g.paths[device_path]
        raise KeyError(f"no simulated DALI luminaire {device_path!r}")

    async def wait_connected(self, within: float = 10.0) -> bool:
        results = await asyncio.gather(*(g.conn.wait_connected(within) for g in self.gateways.values()))
        return all(results)

    async def aclose(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        gws = list(self.gateways.values())
        await asyncio.gather(*(g.aclose() for g in gws), return_exceptions=True)
        self.gateways.clear()
        leases, self._leases = self._leases, []
        for le in leases:
            await le.release()


async def serve_site(site: Site, clock: Clock, devices: list[DeviceInstance], *,
                     period: float | None = None, tick: float = 1.0, client_prefix: str = "sim") -> DaliSimulators:
    """Simulate every DALI gateway among ``devices`` (entry point ``scada.simulators: mqtt``).

    Gateways are the devices without a parent; their luminaires are the children among
    ``devices``. ``broker: embedded`` starts (or shares) the in-process amqtt broker.
    """
    opts = MqttOptions.model_validate(site.config.drivers.get("mqtt", {}) or {})
    emb = (opts.embedded_host, opts.embedded_port)
    handle = DaliSimulators()
    children: dict[str, list[DeviceInstance]] = {}
    for d in devices:
        if d.parent is not None:
            children.setdefault(d.parent, []).append(d)
    try:
        for seed, d in enumerate(dv for dv in devices if dv.parent is None):
            cfg = BrokerConnection.model_validate(d.connection or {})
            host, port = cfg.address(emb)
            if cfg.broker == "embedded" and not handle._leases:
                handle._leases.append(await ensure_embedded_broker(host, port))
            kids = sorted(children.get(d.path, []), key=lambda c: c.index or 0)
            rp = period or float((d.profile.options or {}).get("report_period_s", 60.0) or 60.0)
            if kids:
                rp = period or float((kids[0].profile.options or {}).get("report_period_s", rp) or rp)
            gw = SimGateway(SimGatewayConfig(cfg.gateway or d.id, host, port, cfg.broker == "embedded",
                                             period=rp, tick=tick), clock, kids, seed=seed,
                            client_prefix=client_prefix)
            handle.gateways[gw.id] = gw
            handle.by_path[d.path] = gw
            gw.start()
    except BaseException:
        await handle.aclose()
        raise
    return handle
