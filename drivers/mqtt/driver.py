# One module (over ~600 lines): connections, burst-to-batch ingest and command publishing of one MQTT driver share per-gateway state; mapping, client and paho internals are separate.
"""MQTT driver: gateways (DALI-2/D4i or any vendor's) publishing JSON over MQTT.

Everything protocol-specific about a gateway is in its profile (see :mod:`.mapping`); this
module does the plumbing:

* one :class:`~drivers.mqtt.client.MqttConnection` per broker (not per gateway), subscribed
  to each gateway's topics; ``broker: embedded`` starts the in-process amqtt broker;
* messages of one event-loop iteration are decoded together and delivered as **one**
  :class:`~scada.tags.Batch` (a 34,000-luminaire sweep is a few batches, not 34,000 applies);
* gateway availability (retained state / Last Will): offline -> every tag of the gateway and
  its luminaires ``BadCommunicationError`` with the last value kept (OPC UA Part 8 §6.3.2),
  except the availability point itself which reads ``False`` (a fact, with Good quality);
  broker connection lost -> every tag behind that broker ``BadCommunicationError``;
* staleness on the injected clock: a device silent for ``uncertain_after_periods`` reporting
  periods -> ``UncertainLastUsableValue``, after ``bad_after_periods`` ->
  ``BadCommunicationError``;
* bad input counted by reason in ``_system/mqtt/rejected_<reason>`` (and the total in
  ``rejected``), logged at most once a minute per reason, skipped;
* writes publish the profile's command (direct level, group, broadcast: IEC 62386-102 §9.6
  addressing) with QoS 1 and are confirmed only when the gateway's echoed state shows the
  new value (``verify``), else ``BadTimeout``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from paho.mqtt.client import MQTTMessage

from drivers.base import Driver, DriverContext, RateLimitedLog
from scada import quality as Q
from scada.errors import ConfigError
from scada.tags import Batch, PointDef

from .broker import EmbeddedBrokerLease, ensure_embedded_broker
from .client import MqttConnection, TlsSettings
from .mapping import (
    MISSING,
    NON_FINITE,
    NOT_UTF8,
    REASON_TEXT,
    REJECT_REASONS,
    UNKNOWN_TOPIC,
    Availability,
    BrokerConnection,
    CommandDef,
    MqttOptions,
    MqttPointSource,
    MqttProfileOptions,
    Reject,
    Shape,
    build_shapes,
    decode_json,
    decode_text,
    device_segments,
    format_topic,
    get_path,
    is_online,
    raw_for_write,
    render_payload,
    split_path,
)

log = logging.getLogger("drivers.mqtt")

_HEALTH = (
    *(PointDef(f"rejected_{r}", "int", "", f"messages rejected: {REASON_TEXT[r]}") for r in REJECT_REASONS),
    PointDef("messages", "int", "", "MQTT messages received"),
    PointDef("batches", "int", "", "batches delivered to the tag database"),
    PointDef("reconnects", "int", "", "broker reconnections"),
    PointDef("callback_errors", "int", "", "exceptions caught in paho callbacks"),
    PointDef("dropped", "int", "", "outgoing messages refused (offline QoS 0, queue full)"),
    PointDef("gateways_online", "int", "", "gateways whose availability topic says online"),
    PointDef("stale_devices", "int", "", "devices silent beyond their reporting periods"),
    PointDef("brokers_connected", "int", "", "broker connections up"),
)


@dataclass
class _Route:
    shape: Shape | None
    slot: int
    first: int
    #: availability check for a gateway slot on this topic (None for plain data routes)
    avail: Availability | None = None
    avail_keys: tuple[str | int, ...] = ()


@dataclass
class _Broker:
    key: tuple[str, int, str | None]
    embedded: bool
    conn_cfg: BrokerConnection
    routes: dict[str, list[_Route]] = field(default_factory=dict)
    filters: set[str] = field(default_factory=set)
    #: (topic, payload) published after each connection (gateways' query commands)
    queries: list[tuple[str, str]] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    conn: MqttConnection | None = None


@dataclass
class _WriteSpec:
    point: str
    device: str
    broker: _Broker
    gw_slot: int
    command: CommandDef
    topic: str
    segments: dict[str, Any]
    src: MqttPointSource
    timeout: float


_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def _wildcard(template: str, gateway: str) -> str:
    """Subscription filter for a topic template: the gateway segment filled in, every level
    holding another segment replaced by ``+`` (MQTT 3.1.1 §4.7.1.3)."""
    levels = []
    for lvl in template.split("/"):
        filled = lvl.replace("{gateway}", gateway)
        levels.append("+" if "{" in filled else filled)
    return "/".join(levels)


class MqttDriver(Driver):
    """All MQTT devices of a site (gateways and the luminaires behind them)."""

    protocol = "mqtt"
    Connection = BrokerConnection
    PointSource = MqttPointSource
    ProfileOptions = MqttProfileOptions
    Options = MqttOptions
    health_points = _HEALTH

    def __init__(self, ctx: DriverContext):
        super().__init__(ctx)
        self.options = MqttOptions.model_validate(ctx.options or {})
        self._rl = RateLimitedLog(ctx.log, 60.0)
        self._pending: list[tuple[_Broker, str, bytes]] = []
        self._flush_scheduled = False
        self._leases: list[EmbeddedBrokerLease] = []
        self._waiters: dict[int, list[tuple[float, float, asyncio.Future[int]]]] = {}
        self._writes: dict[int, _WriteSpec] = {}
        self.rejects: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        self.stats = {"messages": 0, "batches": 0}
        self._build()

    @classmethod
    def child_segments(cls, options: dict[str, Any]) -> Any:
        """Child n's DALI line and short address, as its topics use them (``line_base``,
        ``address_base``, ``addresses_per_line``): child ids may say ``lamp-{line}-{address}``."""
        try:
            opts = MqttProfileOptions.model_validate(options or {})
        except ValueError:
            return None  # reported with file and line by the options' own validation

        def seg(n: int) -> dict[str, int]:
            d = device_segments("", n, opts)
            return {"line": d["line"], "address": d["address"]}

        return seg

    # ------------------------------------------------------------------ configuration
    def _build(self) -> None:
        ctx = self.ctx
        emb = (self.options.embedded_host, self.options.embedded_port)
        profiles: dict[str, tuple[MqttProfileOptions, dict[str, Shape], list[tuple[str, str, MqttPointSource | None]]]] = {}
        devices = list(ctx.devices)
        n = len(devices)
        self._slot_path: list[str] = []
        self.first = np.zeros(n, dtype=np.int64)
        self.ntags = np.zeros(n, dtype=np.int64)
        self.period = np.full(n, np.inf)
        self.unc_after = np.full(n, np.inf)
        self.bad_after = np.full(n, np.inf)
        self.gw_of = np.zeros(n, dtype=np.int64)
        self.last_msg = np.full(n, ctx.clock.time())
        #: latest source time a device stamped itself (0: none yet); see :meth:`_stamp`
        self.dev_ts = np.zeros(n)
        self.stale = np.zeros(n, dtype=np.int8)  # 0 fresh, 1 uncertain, 2 bad
        self.online: dict[int, bool | None] = {}
        self.line_of = np.full(n, -1, dtype=np.int64)  # DALI line of a child (0-based), -1: none
        self._lf_tag: dict[int, int] = {}  # gateway slot -> tag of its line-faults bit-field
        self._keep_good: dict[int, set[int]] = {}  # gateway slot -> tags left Good when offline
        #: gateway slot -> its bool points reading its availability (source: {availability: true})
        self._avail_tags: dict[int, list[int]] = {}
        #: gateway slot -> seconds of silence after which a data-driven gateway is offline
        self._from_data: dict[int, float] = {}
        self._brokers: dict[tuple[str, int, str | None], _Broker] = {}
        self._broker_of = [None] * n  # type: list[_Broker | None]
        conn_cache: dict[int, BrokerConnection] = {}
        wild_cache: dict[tuple[str, str], str] = {}
        slot_of_path: dict[str, int] = {}
        for s, dev in enumerate(devices):
            slot_of_path[dev.path] = s
        for s, dev in enumerate(devices):
            pname = dev.profile_name
            if pname not in profiles:
                opts = MqttProfileOptions.model_validate(dev.profile.options or {})
                pts: list[tuple[str, str, MqttPointSource | None]] = []
                for p in dev.profile.points:
                    src = MqttPointSource.model_validate(p.source) if p.source else None
                    pts.append((p.name, p.type, src))
                try:
                    shapes = build_shapes(pname, opts, pts)
                except KeyError as e:
                    raise ConfigError(str(e.args[0])) from None
                profiles[pname] = (opts, shapes, pts)
            opts, shapes, pts = profiles[pname]
            cfg = conn_cache.get(id(dev.connection))  # children of a group share one dict
            if cfg is None:
                cfg = conn_cache[id(dev.connection)] = BrokerConnection.model_validate(dev.connection or {})
            host, port = cfg.address(emb)
            key = (host, port, cfg.username)
            b = self._brokers.get(key)
            if b is None:
                b = self._brokers[key] = _Broker(key, cfg.broker == "embedded", cfg)
            self._broker_of[s] = b
            b.slots.append(s)
            gw_slot = slot_of_path.get(dev.parent, s) if dev.parent else s
            self.gw_of[s] = gw_slot
            gateway = cfg.gateway or (dev.id if dev.parent is None else dev.parent.rsplit("/", 1)[-1])
            if dev.first_tag < 0:
                dev.first_tag = ctx.tagdb.index(f"{dev.path}/{dev.profile.points[0].name}")
            self._slot_path.append(dev.path)
            self.first[s] = dev.first_tag
            self.ntags[s] = len(dev.profile.points)
            if opts.report_period_s is not None:
                self.period[s] = opts.report_period_s
                self.unc_after[s] = opts.report_period_s * opts.uncertain_after_periods
                self.bad_after[s] = opts.report_period_s * opts.bad_after_periods
            segs = device_segments(gateway, dev.index if dev.parent else None, opts)
            if dev.parent and dev.index is not None:
                self.line_of[s] = (dev.index - 1) // opts.addresses_per_line
            if opts.line_faults_point is not None:
                names = [p.name for p in dev.profile.points]
                if opts.line_faults_point not in names:
                    raise ConfigError(f"profile {pname!r}: options.line_faults_point "
                                      f"{opts.line_faults_point!r} is not one of its points")
                self._lf_tag[s] = dev.first_tag + names.index(opts.line_faults_point)
            for shape in shapes.values():
                try:
                    topic = format_topic(shape.topic.pattern, segs)
                except KeyError as e:
                    raise ConfigError(f"{dev.path}: {e.args[0]}; this profile's topic cannot be "
                                      f"filled for a {'child' if dev.parent else 'top-level'} device") from None
                b.routes.setdefault(topic, []).append(_Route(shape, s, dev.first_tag))
                wk = (shape.topic.pattern, gateway)
                if wk not in wild_cache:
                    wild_cache[wk] = _wildcard(*wk)
                    b.filters.add(wild_cache[wk])
            if opts.query_on_connect is not None:
                qc = opts.commands[opts.query_on_connect]
                b.queries.append((format_topic(qc.topic, segs),
                                  json.dumps(render_payload(qc.payload, None, segs), separators=(",", ":"))))
            for off, (_name, _dt, src) in enumerate(pts):
                if src is not None and src.availability:
                    self._avail_tags.setdefault(gw_slot, []).append(dev.first_tag + off)
            av = opts.availability
            if av is not None and av.from_data:
                self.online[s] = None
                self._from_data[s] = (av.silence_s if av.silence_s is not None
                                      else float(opts.report_period_s or 0) * opts.bad_after_periods)
                self._keep_good[s] = set()
            elif av is not None and av.topic is not None:
                self.online[s] = None
                t = opts.topic(av.topic)
                topic = format_topic(t.pattern, segs)
                b.routes.setdefault(topic, []).insert(0, _Route(None, s, dev.first_tag, av, split_path(av.field)))
                b.filters.add(_wildcard(t.pattern, gateway))
                keep = set()
                for off, (_name, _dt, src) in enumerate(pts):
                    if src is not None and src.topic == av.topic and split_path(src.field) == split_path(av.field):
                        keep.add(dev.first_tag + off)
                self._keep_good[s] = keep
            for off, (name, _dt, src) in enumerate(pts):
                if src is None or src.command is None:
                    continue
                cmd = opts.commands.get(src.command)
                if cmd is None:
                    raise ConfigError(f"profile {pname!r} point {name!r}: command {src.command!r} "
                                      f"is not one of options.commands ({', '.join(opts.commands) or 'none'})")
                cseg = {**segs, **src.args}
                self._writes[dev.first_tag + off] = _WriteSpec(
                    name, dev.path, b, gw_slot, cmd, format_topic(cmd.topic, cseg), cseg, src,
                    opts.verify_timeout_s)
        self._slot_gw_tags: dict[int, np.ndarray] = {}
        for g, tags_ in self._avail_tags.items():
            self._keep_good.setdefault(g, set()).update(tags_)
        for g in self.online:
            members = np.nonzero(self.gw_of == g)[0]
            tags = np.concatenate([np.arange(self.first[m], self.first[m] + self.ntags[m]) for m in members])
            keep = self._keep_good.get(g, set())
            if keep:
                tags = tags[~np.isin(tags, list(keep))]
            self._slot_gw_tags[g] = tags
        self.ctx.health.set("devices", n)

    def _broker_tags(self, b: _Broker) -> np.ndarray:
        return self._tags_of(np.asarray(b.slots, dtype=np.int64))

    # ------------------------------------------------------------------ running
    async def run(self) -> None:
        try:
            for b in self._brokers.values():
                if b.embedded and not any(le.address == f"{b.key[0]}:{b.key[1]}" for le in self._leases):
                    self._leases.append(await ensure_embedded_broker(b.key[0], b.key[1]))
            for b in self._brokers.values():
                b.conn = self._make_connection(b)
                b.conn.start()
            await self._watch()
        finally:
            await self._close_connections()

    def _make_connection(self, b: _Broker) -> MqttConnection:
        cfg = b.conn_cfg
        site = _SLUG.sub("-", self.ctx.site.name).strip("-").lower()[:40] or "site"
        cid = cfg.client_id or f"{self.options.client_id_prefix}-{site}-{b.key[0]}-{b.key[1]}"
        tls = None
        if cfg.tls:
            tls = TlsSettings(cfg.ca_file, cfg.cert_file, cfg.key_file, cfg.tls_insecure)

        window = self.options.batch_window_ms / 1000.0

        def on_message(msg: MQTTMessage, b: _Broker = b) -> None:
            try:
                topic = msg.topic
            except UnicodeDecodeError:  # brokers should refuse these (MQTT 3.1.1 §4.7.3)
                self._reject(NOT_UTF8, repr(msg._topic[:80]), "topic name is not UTF-8")
                return
            self._pending.append((b, topic, msg.payload))
            if not self._flush_scheduled:
                self._flush_scheduled = True
                if window > 0:
                    asyncio.get_running_loop().call_later(window, self._flush_safe)
                else:
                    asyncio.get_running_loop().call_soon(self._flush_safe)

        def on_connected(session_present: bool, b: _Broker = b) -> None:
            self.ctx.log.info("MQTT broker %s:%d connected (session present: %s, %d subscriptions)",
                              b.key[0], b.key[1], session_present, len(b.filters))
            if b.conn is not None:
                for topic, body in b.queries:
                    b.conn.publish(topic, body, 1, False)

        def on_disconnected(b: _Broker = b) -> None:
            self._flush_safe()  # what arrived before the loss first, then the loss
            self.ctx.health.inc("reconnects")
            self.ctx.mark(self._broker_tags(b), Q.BadCommunicationError)
            for s in b.slots:
                if s in self.online:
                    self.online[s] = None

        return MqttConnection(
            host=b.key[0], port=b.key[1], client_id=cid, name=f"{b.key[0]}:{b.key[1]}",
            # amqtt (embedded) speaks 3.1.1 only; skipping the v5 attempt also avoids the socket
            # amqtt leaves open after refusing a v5 CONNECT
            protocol="3.1.1" if b.embedded and cfg.protocol == "auto" else cfg.protocol,
            clean_start=False, session_expiry=self.options.session_expiry_s,
            keepalive=cfg.keepalive, username=cfg.username, password=cfg.password, tls=tls,
            subscriptions=[(f, 1) for f in sorted(b.filters)], max_queued=self.options.max_queued,
            on_message=on_message, on_connected=on_connected, on_disconnected=on_disconnected,
        )

    async def _close_connections(self) -> None:
        for b in self._brokers.values():
            if b.conn is not None:
                await b.conn.aclose()
                b.conn = None
        leases, self._leases = self._leases, []
        for le in leases:
            await le.release()
        for lst in self._waiters.values():
            for *_, fut in lst:
                if not fut.done():
                    fut.set_result(Q.BadCommunicationError)
        self._waiters.clear()

    async def aclose(self) -> None:
        await self._close_connections()

    async def _watch(self) -> None:
        """Staleness and health, on the injected clock (a SteppedClock makes it exact)."""
        finite = self.period[np.isfinite(self.period)]
        tick = float(min(5.0, finite.min() / 4)) if len(finite) else 5.0
        while True:
            await self.ctx.clock.sleep(tick)
            self.check_staleness()
            self._update_health()

    def check_staleness(self) -> None:
        """Mark devices silent for too long (vectorised over every device)."""
        now = self.ctx.clock.time()
        age = now - self.last_msg
        offline = np.zeros(len(age), dtype=bool)
        for g, st in self.online.items():
            if st is False:
                offline |= self.gw_of == g
        for g, silence in self._from_data.items():
            if self.online.get(g) is not False and age[g] > silence:
                self._set_online(g, False, now, f"no message from it or its devices for {age[g]:.0f} s")
                offline |= self.gw_of == g
        to_bad = (age > self.bad_after) & (self.stale < 2) & ~offline
        to_unc = (age > self.unc_after) & (self.stale < 1) & ~to_bad & ~offline
        db = self.ctx.tagdb
        if to_unc.any():
            slots = np.nonzero(to_unc)[0]
            tags = self._tags_of(slots)
            good = tags[db.quality[tags] == Q.Good]
            self.ctx.mark(good, Q.UncertainLastUsableValue)
            self.stale[slots] = 1
            for s in slots[:3]:
                self._rl.unavailable(f"stale:{s}", "%s: no message for %.0f s (%.1f reporting periods); "
                                     "values now Uncertain_LastUsableValue", self._slot_path[s],
                                     age[s], age[s] / self.period[s])
        if to_bad.any():
            slots = np.nonzero(to_bad)[0]
            self.ctx.mark(self._tags_of(slots), Q.BadCommunicationError)
            self.stale[slots] = 2

    def _tags_of(self, slots: np.ndarray) -> np.ndarray:
        if len(slots) == 0:
            return np.zeros(0, dtype=np.int64)
        f = self.first[slots]
        k = self.ntags[slots]
        total = int(k.sum())
        rep = np.repeat(f - np.concatenate(([0], np.cumsum(k)[:-1])), k)
        return rep + np.arange(total)

    def _update_health(self) -> None:
        h = self.ctx.health
        for r, v in self.rejects.items():
            h.set(f"rejected_{r}", v)
        h.set("rejected", sum(self.rejects.values()))
        h.set("messages", self.stats["messages"])
        h.set("batches", self.stats["batches"])
        conns = [b.conn for b in self._brokers.values() if b.conn is not None]
        h.set("callback_errors", sum(c.stats["callback_errors"] for c in conns))
        h.set("dropped", sum(c.stats["dropped"] for c in conns))
        h.set("brokers_connected", sum(1 for c in conns if c.connected))
        h.set("gateways_online", sum(1 for v in self.online.values() if v))
        h.set("stale_devices", int((self.stale > 0).sum()))
        offline = {g for g, v in self.online.items() if not v}
        up = (self.stale == 0) & ~np.isin(self.gw_of, list(offline)) if offline else (self.stale == 0)
        h.set("connected", int(up.sum()))
        h.set("errors", sum(c.stats["disconnects"] for c in conns))

    # ------------------------------------------------------------------ ingest
    def _reject(self, reason: str, topic: str, detail: str) -> None:
        self.rejects[reason] += 1
        self._rl.every(f"reject:{reason}", time.monotonic(), "MQTT message on %r rejected (%s): %s; "
                       "skipped", topic[:120], reason, detail[:200])

    def _flush_safe(self) -> None:
        self._flush_scheduled = False
        try:
            self.flush()
        except Exception:
            self.ctx.health.inc("errors")
            log.exception("MQTT ingest: a burst of messages could not be processed")

    def feed(self, broker: _Broker, topic: str, payload: bytes) -> None:
        """Queue one message as if received (tests, benchmarks); call :meth:`flush` after."""
        self._pending.append((broker, topic, payload))

    def flush(self) -> None:
        """Decode every pending message and deliver one batch to the tag database."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        self.stats["messages"] += len(pending)
        groups: dict[int, tuple[Shape, list[Any], list[int], list[float], list[int], list[int]]] = {}
        li: list[int] = []
        lv: list[float] = []
        lt: list[float] = []
        lg: list[int] = []
        lslots: list[int] = []
        si: list[int] = []  # string points (rare: firmware versions, states as text)
        sv: list[str] = []
        st: list[float] = []
        now = self.ctx.clock.time()
        avail_events: dict[int, bool] = {}
        lf_touched: set[int] = set()
        # generation of a message = how many earlier messages of the same device are in this
        # burst; each generation is applied as its own batch, in order, so a replayed backlog
        # (persistent session after an outage) keeps every sample (historian) in sequence
        occ: dict[int, int] = {}
        rejects = self.rejects
        for b, topic, payload in pending:
            routes = b.routes.get(topic)
            if routes is None:
                self._reject(UNKNOWN_TOPIC, topic, "not a topic of any configured gateway")
                continue
            obj: Any = None
            decoded = False
            for r in routes:
                shape = r.shape
                try:
                    if r.avail is not None:
                        val = self._avail_value(r, payload)
                        avail_events[r.slot] = is_online(r.avail, val)
                        continue
                    if shape is None:
                        continue
                    if not decoded:
                        obj = (decode_json(payload, shape.max_payload) if shape.topic.format == "json"
                               else decode_text(payload, shape.max_payload))
                        decoded = True
                    fr = shape.decode_fast(obj) if shape.fast else None
                    gen = occ.get(r.slot, 0)
                    if r.slot in self._lf_tag:
                        lf_touched.add(r.slot)
                    if fr is not None:
                        row, ts = fr
                        g = groups.get(id(shape))
                        if g is None:
                            g = groups[id(shape)] = (shape, [], [], [], [], [])
                        g[1].append(row)
                        g[2].append(r.first)
                        g[3].append(self._stamp(r.slot, shape, ts, now))
                        g[4].append(r.slot)
                        g[5].append(gen)
                    else:
                        vals, ts = shape.decode_slow(obj)
                        t = self._stamp(r.slot, shape, ts, now)
                        for k, v in vals:
                            if v.__class__ is str:
                                si.append(r.first + shape.fields[k].offset_in_device)
                                sv.append(v)
                                st.append(t)
                                continue
                            li.append(r.first + shape.fields[k].offset_in_device)
                            lv.append(v)
                            lt.append(t)
                            lg.append(gen)
                        lslots.append(r.slot)
                    occ[r.slot] = gen + 1
                except Reject as e:
                    rejects[e.reason] += 1
                    self._rl.every(f"reject:{e.reason}", time.monotonic(),
                                   "MQTT message on %r rejected (%s): %s; skipped",
                                   topic[:120], e.reason, e.detail[:200])
                    break
        # assemble the batch (one per generation; normally exactly one)
        parts_i: list[np.ndarray] = []
        parts_v: list[np.ndarray] = []
        parts_t: list[np.ndarray] = []
        parts_g: list[np.ndarray] = []
        slots_seen: list[np.ndarray] = []
        for shape, rows, firsts, tss, slots, gens in groups.values():
            vals, ok = shape.convert_rows(rows)
            f = np.asarray(firsts, dtype=np.int64)
            ts = np.asarray(tss, dtype=np.float64)
            sl = np.asarray(slots, dtype=np.int64)
            ge = np.asarray(gens, dtype=np.int64)
            if not ok.all():
                bad = int((~ok).sum())
                rejects[NON_FINITE] += bad
                self._rl.every(f"reject:{NON_FINITE}", time.monotonic(), "MQTT: %d message(s) of %s "
                               "with non-finite numbers rejected; skipped", bad, shape.topic_name)
                vals, f, ts, sl, ge = vals[ok], f[ok], ts[ok], sl[ok], ge[ok]
            k = len(shape.fields)
            parts_i.append((f[:, None] + shape.offsets[None, :]).ravel())
            parts_v.append(vals.ravel())
            parts_t.append(np.repeat(ts, k))
            parts_g.append(np.repeat(ge, k))
            slots_seen.append(sl)
        if li or si:
            parts_i.append(np.asarray(li, dtype=np.int64))
            parts_v.append(np.asarray(lv, dtype=np.float64))
            parts_t.append(np.asarray(lt, dtype=np.float64))
            parts_g.append(np.asarray(lg, dtype=np.int64))
            slots_seen.append(np.asarray(lslots, dtype=np.int64))
        if parts_i:
            idx = np.concatenate(parts_i) if len(parts_i) > 1 else parts_i[0]
            vals = np.concatenate(parts_v) if len(parts_v) > 1 else parts_v[0]
            tss = np.concatenate(parts_t) if len(parts_t) > 1 else parts_t[0]
            if len(occ) == len(pending) or max(occ.values(), default=1) <= 1:
                if len(idx):
                    self.ctx.publish(Batch(idx, vals, Q.Good, tss))
                    self.stats["batches"] += 1
            else:
                gens = np.concatenate(parts_g) if len(parts_g) > 1 else parts_g[0]
                for gen in range(int(gens.max()) + 1):
                    m = gens == gen
                    if m.any():
                        self.ctx.publish(Batch(idx[m], vals[m], Q.Good, tss[m]))
                        self.stats["batches"] += 1
            if si:
                self.ctx.publish(Batch.of(si, sv, Q.Good, st))
            sl = np.concatenate(slots_seen) if slots_seen else np.zeros(0, dtype=np.int64)
            if len(sl):
                self.last_msg[sl] = now
                self.stale[sl] = 0
                # a luminaire's message is also proof of life of the gateway it came through
                gws = self.gw_of[sl]
                self.last_msg[gws] = now
                self.stale[gws] = 0
                if self._from_data:
                    for g in np.unique(gws).tolist():
                        if g in self._from_data and self.online.get(g) is not True:
                            avail_events[g] = True
            if self._waiters:
                self._resolve_waiters(idx, vals)
        for g in lf_touched:
            self._apply_line_faults(g)
        for g, up in avail_events.items():
            self._set_online(g, up, now, "availability topic / Last Will")

    def _set_online(self, g: int, up: bool, now: float, why: str) -> None:
        """Gateway ``g`` is online (or offline): its tags, its availability points, the log."""
        was = self.online.get(g)
        self.online[g] = up
        if not up:
            self.ctx.mark(self._slot_gw_tags[g], Q.BadCommunicationError)
            if was is not False:
                self._rl.unavailable(f"gw:{g}", "gateway %s is offline (%s); its tags are "
                                     "BadCommunicationError", self._slot_path[g], why)
        elif was is not True:
            self.last_msg[self.gw_of == g] = np.maximum(self.last_msg[self.gw_of == g], now)
            self._rl.available(f"gw:{g}", "gateway %s is online again", self._slot_path[g])
        tags = self._avail_tags.get(g)
        if tags and was is not up:
            self.ctx.publish(Batch.of(tags, [1.0 if up else 0.0] * len(tags), Q.Good, now))

    def _stamp(self, slot: int, shape: Shape, ts: float | None, now: float) -> float:
        """Source time of one message (docs/devices/field-data.md, "SourceTimestamp").

        The device's own time when the payload carries it. A message without it on a topic
        whose messages normally carry one (a Last Will the broker publishes for the gateway,
        a partial update) is stamped with the device's last own time: stamping it with our
        reception time would put it ahead of the device's next, correctly stamped message
        (clocks differ by milliseconds to seconds), which would then be refused as older than
        the current value. Topics without a timestamp field are stamped at reception."""
        if ts is not None:
            if ts > self.dev_ts[slot]:
                self.dev_ts[slot] = ts
            return ts
        if shape.ts_keys and self.dev_ts[slot] > 0.0:
            return float(self.dev_ts[slot])
        return now

    def _apply_line_faults(self, g: int) -> None:
        """The gateway says DALI line(s) are down (no bus power, short: IEC 62386-101 §4.3):
        their luminaires cannot answer, so their values are BadCommunicationError now."""
        v = self.ctx.tagdb.value[self._lf_tag[g]]
        if not np.isfinite(v):
            return
        mask = int(v)
        if not mask:
            self._rl.available(f"lines:{g}", "gateway %s: every DALI line up again", self._slot_path[g])
            return
        kids = np.nonzero((self.gw_of == g) & (self.line_of >= 0))[0]
        down = kids[((mask >> self.line_of[kids]) & 1) == 1]
        if len(down):
            self.ctx.mark(self._tags_of(down), Q.BadCommunicationError)
            self.stale[down] = 2
        self._rl.unavailable(f"lines:{g}", "gateway %s reports DALI line(s) %s down: %d luminaires "
                             "BadCommunicationError", self._slot_path[g],
                             [i for i in range(mask.bit_length()) if mask >> i & 1], len(down))

    def _avail_value(self, r: _Route, payload: bytes) -> Any:
        """The availability value: a JSON field, or the whole payload (JSON or plain text such
        as ``Online``/``Offline``); None when unreadable (then it means offline)."""
        if not r.avail_keys:
            try:
                text = payload.decode("utf-8").strip()
            except UnicodeDecodeError:
                return None
            try:
                return json.loads(text)
            except ValueError:
                return text
        try:
            obj = decode_json(payload, 65536)
        except Reject:
            return None
        try:
            v = get_path(obj, r.avail_keys)
        except Reject:
            return None
        return None if v is MISSING else v

    # ------------------------------------------------------------------ writes
    def _resolve_waiters(self, idx: np.ndarray, vals: np.ndarray) -> None:
        for tag in list(self._waiters):
            pos = np.nonzero(idx == tag)[0]
            if not len(pos):
                continue
            v = float(vals[pos[-1]])
            lst = self._waiters[tag]
            rest = []
            for expected, tol, fut in lst:
                if fut.done():
                    continue
                if abs(v - expected) <= tol:
                    fut.set_result(Q.Good)
                else:
                    rest.append((expected, tol, fut))
            if rest:
                self._waiters[tag] = rest
            else:
                del self._waiters[tag]

    async def write(self, tag: int, value: Any) -> int:
        spec = self._writes.get(tag)
        if spec is None:
            return Q.BadNotWritable
        conn = spec.broker.conn
        if conn is None or not conn.connected:
            self._rl.every(f"wr:{spec.device}", time.monotonic(), "write %s/%s refused: broker %s:%d "
                           "not connected", spec.device, spec.point, spec.broker.key[0], spec.broker.key[1])
            return Q.BadCommunicationError
        if self.online.get(spec.gw_slot) is False:
            self.ctx.log.info("write %s/%s refused: gateway %s is offline", spec.device, spec.point,
                              self._slot_path[spec.gw_slot])
            return Q.BadCommunicationError
        try:
            raw = raw_for_write(spec.src, value, spec.command.value_type)
        except ValueError as e:
            self.ctx.log.info("write %s/%s = %r refused: %s", spec.device, spec.point, value, e)
            return Q.BadOutOfRange
        payload = json.dumps(render_payload(spec.command.payload, raw, spec.segments), separators=(",", ":"))
        fut: asyncio.Future[int] | None = None
        pipe = spec.src.pipe
        # the echo shows the value the device can hold (the DALI curve's nearest level)
        expected = pipe.settle(float(value)) if pipe else float(value)
        if spec.src.verify:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(tag, []).append((expected, spec.src.tolerance, fut))
        if not conn.publish(spec.topic, payload, qos=spec.command.qos, retain=spec.command.retain):
            if fut is not None:
                fut.cancel()
            return Q.BadCommunicationError
        if fut is None:
            return Q.Good
        try:
            return await asyncio.wait_for(fut, spec.timeout)
        except TimeoutError:
            self.ctx.log.warning("write %s/%s = %r: no confirming echo from the gateway within %.0f s "
                                 "(BadTimeout); check the gateway and the luminaire", spec.device,
                                 spec.point, value, spec.timeout)
            return Q.BadTimeout
        finally:
            lst = self._waiters.get(tag)
            if lst is not None:
                lst[:] = [w for w in lst if w[2] is not fut]
                if not lst:
                    del self._waiters[tag]

    # ------------------------------------------------------------------ introspection (tests)
    def broker_for(self, device_path: str) -> _Broker:
        for s, p in enumerate(self._slot_path):
            if p == device_path:
                b = self._broker_of[s]
                if b is not None:
                    return b
        raise KeyError(device_path)

    def connection(self, device_path: str) -> MqttConnection | None:
        return self.broker_for(device_path).conn


__all__ = ["MqttDriver"]
