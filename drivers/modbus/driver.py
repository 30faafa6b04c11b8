# One module (over ~600 lines): poll plan, scheduler and write path of one Modbus driver share its per-connection state; codec and client are separate.
"""Modbus TCP driver: profile-driven polling of cabinets, luminaires and any vendor's device.

Shape of the work (docs/devices/modbus-profile.md has the operator's view):

* A **station** is one (host, port, unit id): a cabinet and the luminaires behind it (child
  devices share their parent's connection; child ``n``'s registers start at
  ``block_base + (n-1) * block_size``). Every station gets one task that sleeps on the
  injected clock until one of its poll groups is due, reads every due group's planned requests
  (:mod:`~drivers.modbus.planner`), decodes them vectorised
  (:class:`~drivers.modbus.codec.RequestDecoder`) and publishes **one batch** for the station.
* A **link** is one TCP connection per host:port, shared by the stations (unit ids) behind it,
  with one request in flight (:class:`~drivers.modbus.client.ModbusLink`).
* Failures: each request has a timeout and bounded retries; a station whose poll fails is
  marked ``BadCommunicationError`` (last value and source timestamp kept, OPC UA Part 8), logged
  once; after ``demote_after`` failed polls it is *demoted*: skipped for a growing, jittered
  delay so a dead cabinet costs the others nothing. The first good poll restores ``Good``, logs
  once, and re-reads every group at once. Modbus exception answers (spec §7) map to status
  codes (:data:`~drivers.modbus.codec.READ_EXCEPTION_STATUS`); a coalesced read covering
  several children that gets an exception is split per child so only the failing luminaire
  goes bad.
* Writes go through the same link lock, so they never interleave with a poll, return the
  device's answer as a status code, and are verified by reading back at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.base import Backoff, CycleLog, Driver, DriverContext, PointDef, RateLimitedLog
from drivers.transforms import TransformTable
from scada import quality as Q
from scada.errors import ConfigError
from scada.site import DeviceInstance
from scada.tags import Batch

from . import codec
from .client import LinkDown, ModbusLink
from .codec import (
    TABLE_NAMES,
    ExceptionResponse,
    MalformedFrame,
    PointSource,
    RequestDecoder,
    SourceTable,
)
from .planner import next_due, parse_duration, plan_arrays

log = logging.getLogger("drivers.modbus")


# --------------------------------------------------------------------------- config models
class Connection(BaseModel):
    """A device's ``connection``: where it listens and how patient to be with it."""

    model_config = ConfigDict(extra="forbid")

    host: str
    port: int = Field(502, ge=1, le=65535)
    unit: int = Field(1, ge=0, le=255)
    #: seconds to wait for one answer (default: the site's ``drivers.modbus.timeout``)
    timeout: float | None = Field(None, gt=0, le=60)
    #: extra attempts after a timeout or a malformed answer (default: site's ``retries``)
    retries: int | None = Field(None, ge=0, le=5)
    #: requests outstanding at once on this host:port, to different unit ids (default: the
    #: site's ``max_in_flight``); 1 for a gateway that cannot queue requests
    max_in_flight: int | None = Field(None, ge=1, le=64)


class ProfileOptions(BaseModel):
    """A Modbus profile's ``options``: poll groups and, for child profiles, the block layout."""

    model_config = ConfigDict(extra="forbid")

    #: name -> period ("2s", "500ms", "1m" or seconds)
    poll_groups: dict[str, float] = Field(default_factory=lambda: {"status": 2.0})
    #: group of points whose source names none (default: the first group)
    default_poll: str | None = None
    #: child devices: register of child 1's block, and registers per child
    block_base: int = Field(0, ge=0, le=65535)
    block_size: int = Field(0, ge=0, le=65535)
    #: largest hole (registers or bits) read through to merge two points into one request;
    #: 0 merges only points that touch (no unmapped register is ever read)
    max_gap: int = Field(8, ge=0, le=124)
    #: a point holding the device's own clock (POSIX seconds once scaled: ``type: uint32`` for
    #: seconds, ``uint64`` with ``scale: 0.001`` for milliseconds): the source timestamp of
    #: every point read in the same poll (default: the poll time)
    timestamp_point: str | None = None

    @field_validator("poll_groups", mode="before")
    @classmethod
    def _durations(cls, v: Any) -> Any:
        if not isinstance(v, dict) or not v:
            raise ValueError("expected a mapping of group name to period, e.g. {status: 2s}")
        return {k: parse_duration(d) for k, d in v.items()}

    @model_validator(mode="after")
    def _default(self) -> ProfileOptions:
        if self.default_poll is None:
            self.default_poll = next(iter(self.poll_groups))
        elif self.default_poll not in self.poll_groups:
            raise ValueError(f"default_poll {self.default_poll!r} is not one of the poll_groups "
                             f"({', '.join(self.poll_groups)})")
        return self

    def period(self, group: str | None) -> float:
        return self.poll_groups[group or str(self.default_poll)]


class Options(BaseModel):
    """Site-wide ``drivers.modbus`` options."""

    model_config = ConfigDict(extra="forbid")

    timeout: float = Field(1.0, gt=0, le=60)
    retries: int = Field(1, ge=0, le=5)
    connect_timeout: float = Field(1.0, gt=0, le=60)
    #: requests outstanding at once on one connection, each to a different unit id (Modbus
    #: Messaging on TCP/IP §4.2): N silent units behind a gateway cost one timeout, not N
    max_in_flight: int = Field(8, ge=1, le=64)
    #: stations polled at the same time (bounds sockets and buffers, not throughput)
    concurrency: int = Field(256, ge=1, le=10000)
    #: reconnect backoff after a failed connect: base and cap in seconds
    reconnect_base: float = Field(0.5, gt=0)
    reconnect_cap: float = Field(30.0, gt=0)
    #: failed polls before a station is skipped for a while, and the skip delays
    demote_after: int = Field(2, ge=1)
    demote_base: float = Field(5.0, gt=0)
    demote_cap: float = Field(60.0, gt=0)
    #: spread stations' poll phases over each group's period (not every cabinet in the same ms,
    #: and not every cabinet's 60 s luminaire read in the same 2 s)
    stagger: bool = True
    #: at start, first polls of every group are spread over at most this many seconds
    startup_spread: float = Field(30.0, ge=0)
    #: how long a coalesced read split after an exception stays split before retrying
    split_hold: float = Field(300.0, gt=0)


HEALTH = (
    PointDef("requests", "int", "", "Modbus requests sent"),
    PointDef("timeouts", "int", "", "requests that got no answer in time"),
    PointDef("exceptions", "int", "", "Modbus exception answers (spec §7)"),
    PointDef("malformed", "int", "", "malformed answers (bad header, length, function, byte count)"),
    PointDef("stale", "int", "", "answers with a wrong transaction/unit id, discarded"),
    PointDef("resets", "int", "", "connections reset after a timeout or a bad answer"),
    PointDef("demoted", "int", "", "stations currently skipped after repeated failures"),
    PointDef("write_mismatch", "int", "", "writes whose read-back differed from the value written"),
)


# --------------------------------------------------------------------------- stations
@dataclass(slots=True)
class _Read:
    """A planned read ready to send: its PDU, decoder, the tags it feeds, and the columns of
    its points (kept to split it per device after an exception)."""

    table: str
    start: int
    count: int
    pdu: bytes
    decoder: RequestDecoder
    tags: np.ndarray
    ptags: np.ndarray
    src: np.ndarray
    addr: np.ndarray
    dev: np.ndarray
    sources: SourceTable
    multi: bool
    max_gap: int
    split: list[_Read] | None = None
    split_until: float = 0.0


def _make_reads(tags: np.ndarray, addr: np.ndarray, src: np.ndarray, dev: np.ndarray,
                sources: SourceTable, max_gap: int) -> list[_Read]:
    """Plan the points given as columns into requests (:func:`plan_arrays`) and compile each."""
    out: list[_Read] = []
    for tcode, start, count, rows in plan_arrays(sources.table[src], addr, sources.size[src],
                                                 max_gap=max_gap):
        table = TABLE_NAMES[tcode]
        t, a, s_, d = tags[rows], addr[rows], src[rows], dev[rows]
        dec = RequestDecoder(table, start, count, t, a, s_, sources)
        out.append(_Read(table, start, count, codec.read_pdu(codec.READ_FC[table], start, count),
                         dec, dec.all_tags, t, s_, a, d, sources, bool(len(d) and d.min() != d.max()),
                         max_gap))
    return out


def _covers(rd: _Read, key: str) -> bool:
    """Does read ``rd`` cover the (split) read logged under ``key`` ("table start+count")?"""
    table, _, span = key.partition(" ")
    start, _, count = span.partition("+")
    return table == rd.table and rd.start <= int(start) and int(start) + int(count) <= rd.start + rd.count


def _shift_read(rd: _Read, offset: int) -> _Read:
    return _Read(rd.table, rd.start, rd.count, rd.pdu, rd.decoder.shifted(offset), rd.tags + offset,
                 rd.ptags + offset, rd.src, rd.addr, rd.dev, rd.sources, rd.multi, rd.max_gap)


def _split(rd: _Read) -> list[_Read]:
    """The points of ``rd`` re-planned device by device (to find which child of a coalesced
    read caused an exception)."""
    out: list[_Read] = []
    for d in np.unique(rd.dev).tolist():
        m = rd.dev == d
        out += _make_reads(rd.ptags[m], rd.addr[m], rd.src[m], rd.dev[m], rd.sources, rd.max_gap)
    return out


@dataclass(slots=True)
class _Group:
    period: float
    reads: list[_Read]
    #: every read of the group decoded in one pass over their concatenated data
    decoder: RequestDecoder | None = None
    next: float = 0.0
    #: grid of this group's polls: phase + k * period
    phase: float = 0.0
    #: time of the first poll
    first: float = 0.0
    #: a write to a point of this group happened after this many polls had started
    reread_after: int = -1
    polls: int = 0


@dataclass(slots=True)
class _Layout:
    """A profile compiled once: its sources as columns and each point's poll period."""

    sources: SourceTable
    period: np.ndarray
    by_period: dict[float, np.ndarray]
    options: ProfileOptions
    #: offset of the point holding the device's clock (None: sources are stamped at the poll)
    ts_offset: int | None = None
    #: point offset -> its named transforms (one Pipeline object per profile point)
    pipes: dict[int, Any] = field(default_factory=dict)


@dataclass(eq=False)
class Station:
    """One (host, port, unit): its devices, poll plan and health state."""

    key: tuple[str, int, int]
    link: ModbusLink
    unit: int
    timeout: float
    retries: int
    devices: list[DeviceInstance]
    groups: dict[float, _Group]
    tags: np.ndarray
    up: bool | None = None
    failures: int = 0
    demoted_until: float = 0.0
    demote: Backoff = field(default_factory=Backoff)
    #: set by :meth:`wake_up` (a write to read back, a recovery): poll without waiting
    woken: bool = False
    sleeper: asyncio.Task[None] | None = None
    polls: int = 0
    #: tag -> (value written, polls started before the write): a poll already under way when
    #: the write went out may have read the old value, so only a later poll verifies it
    verify: dict[int, tuple[float, int]] = field(default_factory=dict)
    started: int = 0
    #: devices stamping their own values: (first tag, end tag, tag of the clock point)
    clocks: list[tuple[int, int, int]] = field(default_factory=list)
    #: named transforms (DALI curve, tables, bit fields) of the station's points
    xf: TransformTable | None = None
    #: reads answered with a Modbus exception at their last attempt (keys of the log lines)
    failing: set[str] = field(default_factory=set)

    def wake_up(self) -> None:
        """Cut the station's sleep short (it then polls whatever group is due)."""
        self.woken = True
        if self.sleeper is not None and not self.sleeper.done():
            self.sleeper.cancel()

    @property
    def name(self) -> str:
        host, port, unit = self.key
        return f"{self.devices[0].path} ({host}:{port} unit {unit})"


class ModbusDriver(Driver):
    """Polls every Modbus device of the site; see the module docstring."""

    protocol = "modbus"
    Connection = Connection
    PointSource = PointSource
    ProfileOptions = ProfileOptions
    Options = Options
    health_points = HEALTH

    def __init__(self, ctx: DriverContext):
        super().__init__(ctx)
        self.options = Options.model_validate(ctx.options or {})
        self.links: dict[tuple[str, int], ModbusLink] = {}
        self.stations: list[Station] = []
        #: first tag of a device -> (its station, the device, its block base, its layout)
        self._by_device: dict[int, tuple[Station, DeviceInstance, int, _Layout]] = {}
        self._sem = asyncio.Semaphore(self.options.concurrency)
        self._rlog = RateLimitedLog(ctx.log, interval=60.0)
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        #: per station poll: (clock time at completion, seconds from scheduled start to
        #: completion, shortest period of the groups polled)
        self.cycle_log = CycleLog(200_000)
        # building a city's plans allocates ~10^5 small arrays and no cycles: without pausing
        # the cyclic GC, its full collections took more time than the planning itself
        was = gc.isenabled()
        gc.disable()
        try:
            self._build()
        finally:
            if was:
                gc.enable()

    # ------------------------------------------------------------------ planning (no I/O)
    def _build(self) -> None:
        errors: list[str] = []
        layouts: dict[str, _Layout] = {}
        by_key: dict[tuple[str, int, int], list[DeviceInstance]] = {}
        conns: dict[tuple[str, int, int], Connection] = {}
        for dev in self.ctx.devices:
            try:
                conn = Connection.model_validate(dev.connection)
                if dev.profile_name not in layouts:
                    layouts[dev.profile_name] = self._layout(dev, errors)
            except ValueError as e:
                errors.append(f"{dev.path}: {e}")
                continue
            key = (conn.host, conn.port, conn.unit)
            by_key.setdefault(key, []).append(dev)
            conns.setdefault(key, conn)
        if errors:
            raise ConfigError(errors)
        keys = list(by_key)
        t0 = self.ctx.clock.time()
        plans: dict[tuple[tuple[str, int, int], ...], dict[float, _Group]] = {}
        for i, key in enumerate(keys):
            conn = conns[key]
            link = self.links.get(key[:2])
            if link is None:
                # the most careful device on a connection sets its concurrency
                lim = min((c.max_in_flight or self.options.max_in_flight) for k, c in conns.items()
                          if k[:2] == key[:2])
                link = ModbusLink(
                    conn.host, conn.port, connect_timeout=self.options.connect_timeout,
                    now=self.ctx.clock.time,
                    backoff=Backoff(self.options.reconnect_base, self.options.reconnect_cap),
                    max_in_flight=lim,
                )
                self.links[key[:2]] = link
            devs = by_key[key]
            groups = self._plan_station(devs, layouts, plans, errors)
            tags = [self.ctx.device_tags(dev) for dev in devs]
            st = Station(
                key=key, link=link, unit=conn.unit,
                timeout=conn.timeout or self.options.timeout,
                retries=self.options.retries if conn.retries is None else conn.retries,
                devices=devs, groups=groups,
                tags=np.concatenate(tags) if tags else np.zeros(0, np.int64),
                demote=Backoff(self.options.demote_base, self.options.demote_cap),
            )
            frac = i / len(keys) if self.options.stagger else 0.0
            for g in groups.values():
                g.phase = t0 + frac * g.period
                g.first = t0 + frac * min(g.period, self.options.startup_spread)
            self.stations.append(st)
            xf = {}
            for dev in devs:
                lay = layouts[dev.profile_name]
                if lay.ts_offset is not None:
                    st.clocks.append((dev.first_tag, dev.first_tag + len(lay.sources.sources),
                                      dev.first_tag + lay.ts_offset))
                for off, pipe in lay.pipes.items():
                    xf[dev.first_tag + off] = pipe
                self._by_device[dev.first_tag] = (st, dev, self._block_base(dev, lay.options, []), lay)
            if xf:
                st.xf = TransformTable(xf)
        if errors:
            raise ConfigError(errors)

    def _plan_station(self, devs: list[DeviceInstance], layouts: dict[str, _Layout],
                      plans: dict[tuple[tuple[str, int, int], ...], dict[float, _Group]],
                      errors: list[str]) -> dict[float, _Group]:
        """Poll groups of one station: its points planned per (period, profile).

        Planned per profile because each profile's ``max_gap`` knows its own register map
        (reading through a hole a device does not map raises 0x02). Stations of the same shape
        (same profiles, blocks and tag layout) share one plan, shifted to their tags.
        """
        ref = devs[0].first_tag
        bases = [self._block_base(dev, layouts[dev.profile_name].options, errors) for dev in devs]
        shape = tuple((dev.profile_name, b, dev.first_tag - ref) for dev, b in zip(devs, bases, strict=True))
        template = plans.get(shape)
        if template is None:
            cols: dict[tuple[float, str], list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]] = {}
            for d_i, (dev, base) in enumerate(zip(devs, bases, strict=True)):
                lay = layouts[dev.profile_name]
                end = base + lay.sources.address + lay.sources.size
                if len(end) and int(end.max()) > 65536:
                    errors.append(f"{dev.path}: registers past 65535 (block_base + (n-1)*block_size + "
                                  f"address): check block_base/block_size of {dev.profile_name!r}")
                    continue
                for period, idx in lay.by_period.items():
                    cols.setdefault((period, dev.profile_name), []).append(
                        (dev.first_tag - ref + idx, base + lay.sources.address[idx], idx, d_i))
            template = {}
            for (period, pname), parts in sorted(cols.items()):
                lay = layouts[pname]
                try:
                    reads = _make_reads(
                        np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                        np.concatenate([p[2] for p in parts]),
                        np.concatenate([np.full(len(p[0]), p[3], np.int64) for p in parts]),
                        lay.sources, lay.options.max_gap)
                except ValueError as e:
                    errors.append(f"{devs[0].path}: profile {pname!r}: {e}")
                    continue
                template.setdefault(period, _Group(period, [])).reads.extend(reads)
            for g in template.values():
                g.decoder = RequestDecoder.combine(
                    [rd.decoder for rd in g.reads],
                    [(rd.count + 7) // 8 if rd.table in codec.BIT_TABLES else 2 * rd.count for rd in g.reads])
            plans[shape] = template
        return {p: _Group(p, [_shift_read(rd, ref) for rd in g.reads],
                          g.decoder.shifted(ref) if g.decoder is not None else None)
                for p, g in template.items()}

    @staticmethod
    def _layout(dev: DeviceInstance, errors: list[str]) -> _Layout:
        """Compile a profile once: options, sources as columns, poll period of each point."""
        po = ProfileOptions.model_validate(dev.profile.options)
        sources = [PointSource.model_validate(p.source) for p in dev.profile.points]
        periods = []
        for pc, src in zip(dev.profile.points, sources, strict=True):
            if src.poll is not None and src.poll not in po.poll_groups:
                errors.append(f"profile {dev.profile_name!r} point {pc.name!r}: poll group {src.poll!r} "
                              f"is not in options.poll_groups ({', '.join(po.poll_groups)})")
                periods.append(po.period(None))
            else:
                periods.append(po.period(src.poll))
        period = np.asarray(periods, dtype=np.float64)
        by_period = {float(p): np.flatnonzero(period == p) for p in np.unique(period)}
        ts_offset = None
        if po.timestamp_point is not None:
            names = [pc.name for pc in dev.profile.points]
            if po.timestamp_point not in names:
                errors.append(f"profile {dev.profile_name!r}: options.timestamp_point "
                              f"{po.timestamp_point!r} is not one of its points ({', '.join(names)})")
            else:
                ts_offset = names.index(po.timestamp_point)
        pipes = {k: src.pipe for k, src in enumerate(sources) if src.transform}
        return _Layout(SourceTable(sources), period, by_period, po, ts_offset, pipes)

    @staticmethod
    def _block_base(dev: DeviceInstance, po: ProfileOptions, errors: list[str]) -> int:
        """First register of a child's block, from the child profile's block layout."""
        if dev.parent is None or dev.index is None:
            return 0
        if po.block_size == 0:
            errors.append(f"{dev.path}: child of {dev.parent} but profile {dev.profile_name!r} "
                          "has no options.block_size; set block_base and block_size")
            return 0
        return po.block_base + (dev.index - 1) * po.block_size

    # ------------------------------------------------------------------ running
    async def run(self) -> None:
        h = self.ctx.health
        h.set("devices", len(self.ctx.devices))
        tasks = [asyncio.create_task(self._station_loop(st), name=f"modbus:{st.name}")
                 for st in self.stations if st.groups]
        tasks.append(asyncio.create_task(self._housekeeping(), name="modbus:health"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        for link in self.links.values():
            await link.aclose()

    async def wait_idle(self) -> None:
        """Wait until no station is polling (tests step the clock, then wait for the I/O)."""
        quiet = 0
        while quiet < 5:
            await asyncio.sleep(0)
            if self._busy:
                quiet = 0
                await self._idle.wait()
            else:
                quiet += 1

    async def _sleep_or_wake(self, st: Station, t: float) -> None:
        """Sleep on the clock until ``t`` unless :meth:`Station.wake_up` cuts it short.

        One task per sleep (cancelled to wake), not a sleeper and a waiter raced with
        ``asyncio.wait``: this runs 350 times a second in a 700-cabinet city.
        """
        if st.woken:
            st.woken = False
            return
        st.sleeper = asyncio.ensure_future(self.ctx.clock.sleep_until(t))
        try:
            await st.sleeper
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                raise  # the station itself is being cancelled
        finally:
            st.sleeper = None
        st.woken = False

    async def _station_loop(self, st: Station) -> None:
        clock = self.ctx.clock
        # first poll of each group soon after start (spread over startup_spread), then on the
        # group's own grid phase + k * period (spread over the period across stations)
        for g in st.groups.values():
            g.next = max(clock.time(), g.first)
        while True:
            due_t = min(g.next for g in st.groups.values())
            if st.demoted_until > due_t:
                due_t = st.demoted_until
            if due_t > clock.time():
                await self._sleep_or_wake(st, due_t)
            now = clock.time()
            if st.demoted_until > now:
                continue
            due = [g for g in st.groups.values() if g.next <= now]
            if not due:
                continue
            # a demoted station's skipped slots are not "late": count from when it resumed
            scheduled = max(min(g.next for g in due), st.demoted_until)
            self._busy += 1
            self._idle.clear()
            try:
                st.started += 1
                seq = st.started
                async with self._sem:
                    await self._poll(st, due, seq)
            except Exception as e:  # a bug must not stop this station's polling, nor the others'
                self.ctx.health.inc("errors")
                self._rlog.every(f"crash:{st.key}", clock.time(), "modbus: %s poll failed "
                                 "unexpectedly: %r (station marked bad, polling goes on)", st.name, e,
                                 level=logging.ERROR)
                self._station_failed(st, e)
            finally:
                self._busy -= 1
                if self._busy == 0:
                    self._idle.set()
            done = clock.time()
            took = done - scheduled
            period = min(g.period for g in due)
            self.cycle_log.append((done, took, period))
            self.ctx.health.inc("cycles")
            if took > period:
                self.ctx.health.inc("late_cycles")
            for g in due:
                g.polls += 1
                g.next = next_due(done, g.period, g.phase)
                if g.next <= done:
                    g.next += g.period
                if g.reread_after >= seq:  # written during this poll: read it back now
                    g.next = done

    async def _housekeeping(self) -> None:
        """Health gauges once a second (clock time): connected devices, demoted, cycle_ms."""
        clock = self.ctx.clock
        last = clock.time()
        while True:
            await clock.sleep(1.0)
            self._update_health(last)
            last = clock.time()

    def _update_health(self, since: float) -> None:
        h = self.ctx.health
        h.set("connected", sum(len(s.devices) for s in self.stations if s.up))
        h.set("demoted", sum(1 for s in self.stations if s.demoted_until > self.ctx.clock.time()))
        recent = []
        for t, took, _ in reversed(self.cycle_log):
            if t < since:
                break
            recent.append(took)
        if recent:
            h.set("cycle_ms", 1000.0 * max(recent))
        for name, key in (("requests", "requests"), ("timeouts", "timeouts"),
                          ("malformed", "malformed"), ("stale", "stale"), ("resets", "resets")):
            h.set(name, sum(lk.stats[key] for lk in self.links.values()))
        h.set("rejected", h.get("malformed") + h.get("stale"))

    # ------------------------------------------------------------------ polling
    async def _exchange(self, st: Station, pdu: bytes) -> bytes:
        """One request with bounded retries; returns the checked response data.

        A timeout, a malformed or stale answer, or a lost connection is retried up to
        ``retries`` times (the link has already reset the connection); a link waiting out its
        reconnect backoff fails at once. A Modbus exception is an answer: never retried.
        """
        link = st.link
        last: Exception | None = None
        for _ in range(1 + st.retries):
            try:
                async with link.lock_for(st.unit):
                    rpdu = await link.exchange(st.unit, pdu, st.timeout)
            except (TimeoutError, LinkDown, MalformedFrame) as e:
                self.ctx.health.inc("errors")
                last = e
                if link.waiting:
                    break
                continue
            try:
                return codec.parse_response(pdu, rpdu)
            except ExceptionResponse:
                self.ctx.health.inc("exceptions")
                raise
            except MalformedFrame as e:
                link.stats["malformed"] += 1
                link.reset()
                self.ctx.health.inc("errors")
                last = e
        raise last if last is not None else LinkDown(f"{st.name}: no attempt made")

    async def _poll(self, st: Station, due: list[_Group], seq: int) -> None:
        clock = self.ctx.clock
        vals: list[np.ndarray] = []
        tags: list[np.ndarray] = []
        texts: list[tuple[int, str]] = []
        marks: list[tuple[np.ndarray, int]] = []
        try:
            for g in due:
                await self._poll_group(st, g, vals, tags, texts, marks)
        except (TimeoutError, LinkDown, MalformedFrame) as e:
            self._station_failed(st, e)
            return
        now = clock.time()
        if tags:
            idx = np.concatenate(tags) if len(tags) > 1 else tags[0]
            v = np.concatenate(vals) if len(vals) > 1 else vals[0]
            if st.xf is not None:
                v = st.xf.apply(idx, v)
            self.ctx.publish(Batch(idx, v, Q.Good, self._stamps(st, idx, v, now)))
            if st.verify:
                self._check_writes(st, idx, v, seq)
        if texts:
            arr = np.empty(len(texts), dtype=object)
            arr[:] = [t for _, t in texts]
            self.ctx.publish(Batch(np.asarray([k for k, _ in texts], np.int64), arr, Q.Good, float(now)))
        for idx_bad, status in marks:
            self.ctx.mark(idx_bad, status)
        st.polls += 1
        if st.up is not True:
            was_down = st.up is False
            st.up = True
            st.failures = 0
            st.demote.reset()
            st.demoted_until = 0.0
            if was_down:
                self._rlog.available(st.name, "modbus: %s answers again", st.name)
                # refresh every group now: the slow groups were marked bad too
                for g in st.groups.values():
                    if g not in due:
                        g.next = now
                st.wake_up()

    @staticmethod
    def _stamps(st: Station, idx: np.ndarray, v: np.ndarray, now: float) -> float | np.ndarray:
        """Source timestamps of one poll (docs/devices/field-data.md, "SourceTimestamp"): the
        poll time, except for the points of a device whose profile names a ``timestamp_point``
        read in the same poll, which carry the device's own clock (the tag database then
        refuses a time beyond the future tolerance and a time older than the current value)."""
        if not st.clocks:
            return float(now)
        ts = np.full(len(idx), float(now))
        for lo, hi, clock_tag in st.clocks:
            pos = np.flatnonzero(idx == clock_tag)
            if len(pos) and np.isfinite(v[pos[0]]):
                ts[(idx >= lo) & (idx < hi)] = float(v[pos[0]])
        return ts

    async def _poll_group(self, st: Station, g: _Group, vals: list[np.ndarray], tags: list[np.ndarray],
                          texts: list[tuple[int, str]], marks: list[tuple[np.ndarray, int]]) -> None:
        """Every read of one group; when all answered, one decode over their joined data."""
        now = self.ctx.clock.time()
        results: list[bytes | ExceptionResponse | None] = []
        whole = g.decoder is not None
        for rd in g.reads:
            if rd.split is not None:
                if now < rd.split_until:
                    results.append(None)  # read child by child below
                    whole = False
                    continue
                rd.split = None
            try:
                results.append(await self._exchange(st, rd.pdu))
            except ExceptionResponse as e:
                results.append(e)
                whole = False
        if whole and g.decoder is not None:
            v, tx = g.decoder.decode(b"".join(results))  # type: ignore[arg-type]
            vals.append(v)
            tags.append(g.decoder.tags)
            texts.extend(tx)
            if st.failing:
                for rd in g.reads:
                    self._answered(st, rd)
            return
        for rd, res in zip(g.reads, results, strict=True):
            if res is None:
                for sub in rd.split or ():
                    await self._read_one(st, sub, vals, tags, texts, marks, split_ok=False)
            elif isinstance(res, ExceptionResponse):
                await self._on_exception(st, rd, res, vals, tags, texts, marks, split_ok=True)
            else:
                v, tx = rd.decoder.decode(res)
                vals.append(v)
                tags.append(rd.decoder.tags)
                texts.extend(tx)
                self._answered(st, rd)

    @staticmethod
    def _exc_key(rd: _Read) -> str:
        return f"{rd.table} {rd.start}+{rd.count}"

    def _answered(self, st: Station, rd: _Read) -> None:
        """A read answered with data: if its last answer was an exception, say it once
        (Home Assistant's habit: unavailable once, back once)."""
        if not st.failing:
            return
        key = self._exc_key(rd)
        if key in st.failing:
            st.failing.discard(key)
            self._rlog.available(f"exc:{st.name}:{key}", "modbus: %s answers again (%s %d+%d: no more "
                                 "exception)", st.name, rd.table, rd.start, rd.count)
        elif rd.split is None and any(k.startswith(rd.table + " ") for k in st.failing):
            # a coalesced read answering again covers the split reads that had failed
            for k in [k for k in st.failing if _covers(rd, k)]:
                st.failing.discard(k)
                self._rlog.available(f"exc:{st.name}:{k}", "modbus: %s answers again (%s: no more "
                                     "exception)", st.name, k)

    async def _read_one(self, st: Station, rd: _Read, vals: list[np.ndarray], tags: list[np.ndarray],
                        texts: list[tuple[int, str]], marks: list[tuple[np.ndarray, int]],
                        *, split_ok: bool) -> None:
        try:
            data = await self._exchange(st, rd.pdu)
        except ExceptionResponse as e:
            await self._on_exception(st, rd, e, vals, tags, texts, marks, split_ok=split_ok)
            return
        v, tx = rd.decoder.decode(data)
        vals.append(v)
        tags.append(rd.decoder.tags)
        texts.extend(tx)
        self._answered(st, rd)

    async def _on_exception(self, st: Station, rd: _Read, e: ExceptionResponse, vals: list[np.ndarray],
                            tags: list[np.ndarray], texts: list[tuple[int, str]],
                            marks: list[tuple[np.ndarray, int]], *, split_ok: bool) -> None:
        """A read answered with a Modbus exception (spec §7): split a read over several
        children to find the one at fault, else mark its points with the mapped status."""
        if split_ok and rd.multi:
            rd.split = _split(rd)
            rd.split_until = self.ctx.clock.time() + self.options.split_hold
            for sub in rd.split:
                await self._read_one(st, sub, vals, tags, texts, marks, split_ok=False)
            return
        status = codec.read_status(e.code)
        key = self._exc_key(rd)
        st.failing.add(key)
        self._rlog.unavailable(f"exc:{st.name}:{key}", "modbus: %s %s %d+%d: %s -> %s (logged "
                               "once, and once more when data comes back)", st.name, rd.table,
                               rd.start, rd.count, e, Q.name(status))
        marks.append((rd.tags, status))

    def _station_failed(self, st: Station, e: Exception) -> None:
        now = self.ctx.clock.time()
        st.failures += 1
        self.ctx.mark(st.tags, Q.BadCommunicationError)
        if st.up is not False:
            st.up = False
            self._rlog.unavailable(st.name, "modbus: %s unavailable: %s (values kept, marked "
                                   "BadCommunicationError; check power, cabling and address)", st.name, e)
        if st.failures >= self.options.demote_after:
            st.demoted_until = now + st.demote.next()

    def _check_writes(self, st: Station, idx: np.ndarray, v: np.ndarray, seq: int) -> None:
        pos = {int(t): k for k, t in enumerate(idx.tolist())
               if int(t) in st.verify and st.verify[int(t)][1] < seq}
        for tag, k in pos.items():
            want, _ = st.verify.pop(tag)
            got = float(v[k])
            loc = self._locate(tag)
            scale = loc[1].scale if loc is not None else 1.0
            tol = max(1e-6, abs(scale) / 2, abs(want) * 1e-6)
            if not math.isfinite(got) or abs(got - want) > tol:
                self.ctx.health.inc("write_mismatch")
                self._rlog.every(f"mismatch:{tag}", self.ctx.clock.time(),
                                 "modbus: %s read back %s after writing %s (the device changed or "
                                 "refused the value)", self.ctx.tagdb.path(tag), got, want)

    # ------------------------------------------------------------------ writes
    def _locate(self, tag: int) -> tuple[Station, PointSource, int, float] | None:
        """(station, source, absolute address, poll period) of a tag of this driver."""
        d = int(self.ctx.tagdb.device_of[tag])
        entry = self._by_device.get(self.ctx.tagdb.device_first(d))
        if entry is None:
            return None
        st, dev, base, lay = entry
        off = tag - dev.first_tag
        if not 0 <= off < len(lay.sources.sources):
            return None
        src = lay.sources.sources[off]
        return st, src, base + src.address, float(lay.period[off])

    async def write(self, tag: int, value: Any) -> int:
        """Write ``value`` (engineering units) to the point's register(s) or coil.

        Single 16-bit registers use function 0x06, wider types 0x10, coils 0x05 (spec §6.5,
        §6.6, §6.12); a bool in a register is read-modify-written under the link lock. The
        returned status is the device's answer (:data:`~drivers.modbus.codec.WRITE_EXCEPTION_STATUS`);
        the next poll, started at once, reads the point back and counts a mismatch.
        """
        loc = self._locate(tag)
        path = self.ctx.tagdb.path(tag)
        if loc is None:
            log.warning("modbus write to %s: not a Modbus point of this driver", path)
            return Q.BadNodeIdUnknown
        st, src, address, period = loc
        pipe = st.xf.get(tag) if st.xf is not None else None
        want_value = value
        if pipe is not None and not isinstance(value, (bool, str)):
            try:
                value = pipe.inverse(float(value))  # e.g. % -> DALI arc level
            except ValueError as e:
                log.warning("modbus write to %s refused: %s", path, e)
                return Q.BadOutOfRange
        if not src.writable:
            log.warning("modbus write to %s refused: the point is in the %s table, read-only on "
                        "the device (make it a holding register or coil in the profile)", path, src.table)
            return Q.BadNotWritable
        try:
            if src.table == "coil":
                pdus = [codec.write_coil_pdu(address, bool(value))]
            elif src.type == "bool" and src.bit is not None:
                pdus = []  # read-modify-write below
            else:
                regs = codec.encode_value(src, value)
                pdus = [codec.write_register_pdu(address, regs[0]) if len(regs) == 1
                        else codec.write_registers_pdu(address, regs)]
        except (codec.CodecError, TypeError, ValueError) as e:
            log.warning("modbus write to %s refused: %s", path, e)
            return Q.BadOutOfRange
        try:
            async with st.link.lock_for(st.unit):
                if not pdus:
                    rq = codec.read_pdu(codec.FC_READ_HOLDING, address, 1)
                    data = codec.parse_response(rq, await st.link.exchange(st.unit, rq, st.timeout))
                    word = (data[0] << 8) | data[1]
                    pdus = [codec.write_register_pdu(
                        address, codec.set_bit(word, src.bit or 0, bool(value), src.byte_order))]
                for pdu in pdus:
                    codec.parse_response(pdu, await st.link.exchange(st.unit, pdu, st.timeout))
        except ExceptionResponse as e:
            self.ctx.health.inc("exceptions")
            status = codec.write_status(e.code)
            log.warning("modbus write %s = %r: device answered %s -> %s", path, value, e, Q.name(status))
            if status != Q.Good:
                return status
        except TimeoutError as e:
            self.ctx.health.inc("errors")
            log.warning("modbus write %s = %r failed: %s", path, value, e)
            return Q.BadTimeout
        except (LinkDown, MalformedFrame) as e:
            self.ctx.health.inc("errors")
            log.warning("modbus write %s = %r failed: %s", path, value, e)
            return Q.BadCommunicationError
        want = float(want_value) if not isinstance(want_value, str) else math.nan
        if pipe is not None and math.isfinite(want):
            want = pipe.settle(want)  # the read-back shows the curve's / table's nearest value
        if math.isfinite(want):
            st.verify[tag] = (want, st.started)
        # read back at once: the group of the written point is due now
        g = st.groups.get(period)
        if g is not None:
            g.next = min(g.next, self.ctx.clock.time())
            g.reread_after = st.started
            st.wake_up()
        return Q.Good
