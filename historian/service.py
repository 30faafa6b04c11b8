"""The historian service: recorder -> spool (disk) -> backend, plus reads for OPC UA HistoryRead.

Registered under the ``scada.services`` entry points as ``historian``; other services find it
with ``runtime.services.get("historian")``. Three tasks on the one event loop:

* recorder: every ``flush_interval`` (clock time) or when ``max_block_points`` are queued,
  select the queued changes and append them as one block to the spool (file I/O in a thread);
  every ``snapshot`` period, queue a snapshot of every recorded tag;
* forwarder: hand spooled blocks to the backend in order (in a thread), delete each once
  stored; on :class:`BackendUnavailable` back off (honouring Retry-After) and try again, on
  :class:`BackendRejected` set the block aside and log it;
* health: publish ``_system/historian/*`` (spool fill, alarm past 80 %, backend state,
  counters) once per ``health_interval``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from datetime import date
from typing import Any

import numpy as np

from scada import quality as Q
from scada.runtime import Service
from scada.tags import Batch, PointDef

from .base import Backend, BackendRejected, BackendUnavailable, HistorianError, Raw, load_backend
from .query import aggregate
from .recorder import Recorder
from .spool import Spool, SpoolFull

log = logging.getLogger("historian")

HEALTH = (
    PointDef("recorded", "int", "", "points selected for history since start"),
    PointDef("written", "int", "", "points stored by the backend since start"),
    PointDef("queued", "int", "", "changes waiting in memory for the next block"),
    PointDef("spool_blocks", "int", "", "blocks waiting on disk for the backend"),
    PointDef("spool_bytes", "int", "B", "bytes waiting on disk for the backend"),
    PointDef("spool_fill_pct", "float", "%", "spool use against historian.spool_max_bytes"),
    PointDef("spool_alarm", "bool", "", "spool above 80 %: the backend is down or too slow"),
    PointDef("backend_ok", "bool", "", "the last write to the backend succeeded"),
    PointDef("write_errors", "int", "", "failed backend writes (retried)"),
    PointDef("rejected_blocks", "int", "", "blocks refused by the backend (set aside)"),
    PointDef("dropped", "int", "", "points dropped because the spool was full"),
    PointDef("lag_s", "float", "s", "age of the oldest spooled block the backend has not stored yet"),
)

SPOOL_ALARM_FILL = 0.8


def resolve_dir(site: Any, path: str) -> str:
    """The historian directory: ``historian.path`` under the site's state directory unless
    absolute (``<state_dir>/historian`` holds ``spool/``, ``data/`` and ``rollups/``)."""
    if os.path.isabs(path):
        return path
    return os.path.join(site.config.site.state_dir, path)


class HistorianService(Service):
    name = "historian"

    def __init__(self, runtime: Any, backend: Backend | None = None, *, health_interval: float = 5.0):
        cfg = runtime.site.config.historian
        self.runtime = runtime
        self.cfg = cfg
        self.clock = runtime.clock
        root = resolve_dir(runtime.site, cfg.path)
        self.dir = root
        self.backend = backend or load_backend(cfg.backend, os.path.join(root, "data"), cfg.options)
        self.spool = Spool(os.path.join(root, "spool"), cfg.spool_max_bytes,
                           fsync=bool(cfg.options.get("fsync", True)))
        self.health_first = runtime.tagdb.add_tags("_system/historian", HEALTH)
        self.recorder = Recorder(runtime.tagdb, deadband=cfg.deadband, exclude=cfg.exclude,
                                 swinging_door=cfg.swinging_door, max_block_points=cfg.max_block_points)
        self.recorder.on_full = self._wake_recorder
        # subscribe now, not in run(): changes applied before the task first runs are kept
        self.recorder.start()
        self.health_interval = health_interval
        self.counters = {"written": 0, "write_errors": 0, "rejected_blocks": 0}
        self.backend_ok = True
        self._spooled = asyncio.Event()
        self._full = asyncio.Event()
        self._io = asyncio.Lock()  # one spool append at a time, blocks stay in order
        self._fwd = asyncio.Lock()  # one forwarding pass at a time, blocks stay in order
        self._spooled_at: collections.deque[float] = collections.deque()  # per pending block
        self._alarm_raised = False
        self._next_snapshot: float | None = None
        self._energy_lock = asyncio.Lock()
        self._energy_cache: dict[tuple[Any, ...], tuple[float, dict[str, Any]]] = {}

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        if len(self.runtime.tagdb) != self.recorder.tag_space:
            # services created after us added tags (their _system/* health): record them too
            self.recorder.rebuild()
        self.recorder.start()
        # history starts from the current state of every tag already read (after a restart of
        # this task, or when drivers were faster than us); unread tags are skipped
        self.recorder.snapshot(self.clock.time())
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._record_loop(), name="historian.record")
            tg.create_task(self._forward_loop(), name="historian.forward")
            tg.create_task(self._health_loop(), name="historian.health")

    async def aclose(self) -> None:
        """Spool what is queued (nothing recorded is lost), try one forward pass, close."""
        self.recorder.release_held()
        with contextlib.suppress(HistorianError, OSError):
            await self.spool_now()
        try:
            await asyncio.wait_for(self.forward_now(), timeout=2.0)
        except (TimeoutError, BackendUnavailable):
            log.info("historian: %d blocks stay spooled for the next start", len(self.spool.pending()))
        self.recorder.stop()
        await asyncio.to_thread(self.backend.close)

    def _wake_recorder(self) -> None:
        self._full.set()

    # ------------------------------------------------------------------ recording
    async def _record_loop(self) -> None:
        period = self.cfg.flush_interval
        snap = self.cfg.snapshot
        self._next_snapshot = self.clock.time() + snap if snap else None
        while True:
            sleeper = asyncio.ensure_future(self.clock.sleep(period))
            full = asyncio.ensure_future(self._full.wait())
            try:
                await asyncio.wait((sleeper, full), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                full.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sleeper
                with contextlib.suppress(asyncio.CancelledError):
                    await full
            self._full.clear()
            now = self.clock.time()
            if self._next_snapshot is not None and now >= self._next_snapshot:
                self.recorder.snapshot(self._next_snapshot)
                while self._next_snapshot <= now:
                    self._next_snapshot += snap
            await self.spool_now()

    async def spool_now(self) -> int:
        """Turn queued changes into one spooled block now; returns the number of points."""
        async with self._io:
            pts = self.recorder.take()
            if not len(pts):
                return 0
            try:
                await asyncio.to_thread(self.spool.append, pts)
            except SpoolFull as e:
                log.error("%s", e)
                return 0
            self._spooled_at.append(self.clock.time())
            self._spooled.set()
            return len(pts)

    async def adopt_spool(self, directory: str) -> int:
        """Take over another server's spool (a promoted standby's copy of the dead active's,
        issue 22): every block still there is appended to this server's spool, in order, then
        removed from ``directory``; the forwarder hands them to the backend like its own (the
        backends overwrite a point sent twice). Returns the number of points adopted."""

        def move() -> int:
            other = Spool(directory, self.cfg.spool_max_bytes, fsync=False)
            n = 0
            for name in other.pending():
                try:
                    pts, _batch = other.read(name)
                except HistorianError as e:
                    log.error("historian: adopted block %s unreadable (%s); set aside", name, e)
                    other.set_aside(name, "damaged")
                    continue
                if len(pts):
                    self.spool.append(pts)
                    n += len(pts)
                other.remove(name)
            return n

        async with self._io:
            n = await asyncio.to_thread(move)
        if n:
            log.warning("historian: %d points from the former active's spool adopted", n)
            self._spooled.set()
        return n

    # ------------------------------------------------------------------ forwarding
    async def forward_now(self) -> int:
        """Hand every spooled block to the backend, in order; returns points written.

        Raises :class:`BackendUnavailable` if the backend refuses to take them now.
        """
        async with self._fwd:
            return await self._forward()

    async def _forward(self) -> int:
        written = 0
        for name in self.spool.pending():
            try:
                pts, batch = await asyncio.to_thread(self.spool.read, name)
            except HistorianError as e:
                log.error("%s", e)
                self.spool.set_aside(name, "damaged")
                continue
            except FileNotFoundError:
                continue
            try:
                await asyncio.to_thread(self.backend.write, pts, batch)
            except BackendUnavailable:
                self.backend_ok = False
                self.counters["write_errors"] += 1
                raise
            except BackendRejected as e:
                where = self.spool.set_aside(name, "rejected")
                self.counters["rejected_blocks"] += 1
                log.error("historian backend %s refused a block of %d points (%s); kept in %s",
                          self.backend.name, len(pts), e, where)
                continue
            self.spool.remove(name)
            if self._spooled_at:  # blocks left by a previous run have no entry
                self._spooled_at.popleft()
            if not self.backend_ok:
                log.warning("historian backend %s is back; spool replayed", self.backend.name)
            self.backend_ok = True
            written += len(pts)
            self.counters["written"] += len(pts)
        return written

    async def flush(self) -> int:
        """Spool what is queued and forward everything now (tests, shutdown, reports)."""
        await self.spool_now()
        return await self.forward_now()

    async def _forward_loop(self) -> None:
        delay = 1.0
        while True:
            await self._spooled.wait()
            self._spooled.clear()
            while self.spool.pending():
                try:
                    await self.forward_now()
                    delay = 1.0
                except BackendUnavailable as e:
                    wait = e.retry_after if e.retry_after else delay
                    delay = min(delay * 2, 60.0)
                    if self.counters["write_errors"] <= 3 or self.counters["write_errors"] % 100 == 0:
                        log.warning("historian backend unavailable (%s); %d blocks spooled, retry in %.0f s",
                                    e, len(self.spool.pending()), wait)
                    await self.clock.sleep(wait)

    # ------------------------------------------------------------------ health
    def health_values(self) -> dict[str, float]:
        fill = self.spool.fill
        return {
            "recorded": self.recorder.recorded,
            "written": self.counters["written"],
            "queued": self.recorder.queued,
            "spool_blocks": len(self.spool.pending()),
            "spool_bytes": self.spool.bytes,
            "spool_fill_pct": 100.0 * fill,
            "spool_alarm": float(fill >= SPOOL_ALARM_FILL),
            "backend_ok": float(self.backend_ok),
            "write_errors": self.counters["write_errors"],
            "rejected_blocks": self.counters["rejected_blocks"],
            "dropped": self.spool.dropped + self.recorder.overflow,
            "lag_s": (self.clock.time() - self._spooled_at[0]) if self._spooled_at else 0.0,
        }

    def publish_health(self) -> None:
        vals = self.health_values()
        idx = self.health_first + np.arange(len(HEALTH))
        self.runtime.tagdb.apply(Batch.of(idx, [float(vals[p.name]) for p in HEALTH], Q.Good,
                                          self.clock.time()))
        alarm = vals["spool_alarm"] > 0
        if alarm != self._alarm_raised:
            self._alarm_raised = alarm
            (log.error if alarm else log.warning)(
                "historian spool %s 80 %% (%.0f %% of %d bytes)",
                "above" if alarm else "back below", vals["spool_fill_pct"], self.spool.max_bytes)
            alarms = self.runtime.services.get("alarms")
            setter = getattr(alarms, "set_condition", None)
            if setter is not None:
                try:
                    setter("_system/historian", "spool_high", alarm, priority=2, category="system",
                           message=f"historian spool {vals['spool_fill_pct']:.0f} % full: "
                                   "the historian backend is down or too slow")
                except TypeError:
                    log.debug("alarm engine set_condition has another signature; tag only")

    async def _health_loop(self) -> None:
        while True:
            self.publish_health()
            await self.clock.sleep(self.health_interval)

    # ------------------------------------------------------------------ reads (OPC UA HistoryRead)
    async def read_raw(self, tag_index: int, t0: float, t1: float, max_values: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw history of a tag (OPC UA Part 11 ReadRawModifiedDetails): times, values, codes."""
        key = self.runtime.tagdb.path(int(tag_index))
        raw = await asyncio.to_thread(self.backend.read_raw, key, t0, t1, max_values)
        return raw.t, raw.v, raw.q

    async def read_processed(self, tag_index: int, t0: float, t1: float, interval_s: float,
                             aggregate_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Processed history (OPC UA Part 11 ReadProcessedDetails with a Part 13 aggregate
        named avg/min/max/first/last/count/time_avg/integral): bucket starts, values, codes
        (Good, UncertainDataSubNormal-like Uncertain when bad points were excluded, BadNoData)."""
        key = self.runtime.tagdb.path(int(tag_index))
        raw = await asyncio.to_thread(self.backend.read_raw, key, t0, t1, None)
        if not isinstance(raw, Raw):
            raise HistorianError(f"backend {self.backend.name} returned {type(raw).__name__}")
        a = aggregate(raw, t0, t1, interval_s, aggregate_name)
        q = np.where(a.count == 0, Q.BadNoData, np.where(a.bad > 0, Q.Uncertain, Q.Good)).astype(np.uint32)
        return a.start, a.value, q

    # ------------------------------------------------------------------ energy KPI (web console)
    async def energy_kpi(self, start: date, end: date, area: str | None = None) -> dict[str, Any]:
        """The 65 % savings KPI of the days ``start..end`` (inclusive), as ``scada report energy``
        computes it without ``--inventory`` (:func:`historian.energy.compute` over the site's
        luminaire attributes and this historian's roll-ups): the headline (DATA INSUFFICIENT
        rule of docs/energy-kpi.md), option B by month, by area, and month x area.

        Computed in a worker thread (DuckDB reads block), one at a time, and cached for
        :data:`ENERGY_CACHE_S` of the server clock. ``{"available": False, "detail": ...}`` when
        the site has no luminaire with ``legacy_w`` (or none in ``area``)."""
        key = (start, end, area)
        now = self.clock.time()
        hit = self._energy_cache.get(key)
        if hit is not None and now - hit[0] < ENERGY_CACHE_S:
            return hit[1]
        async with self._energy_lock:
            hit = self._energy_cache.get(key)
            if hit is not None and self.clock.time() - hit[0] < ENERGY_CACHE_S:
                return hit[1]
            try:
                out = await asyncio.to_thread(self._energy_kpi, start, end, area)
            except (ValueError, HistorianError) as e:
                out = {"available": False, "target_pct": 65.0, "detail": f"the KPI cannot be computed: {e}"}
            self._energy_cache[key] = (self.clock.time(), out)
            return out

    def _energy_kpi(self, start: date, end: date, area: str | None) -> dict[str, Any]:
        from . import energy
        from .rollup import Rollups

        site = self.runtime.site
        inv = energy.inventory_from_site(site)
        if not inv.points:
            return {"available": False, "target_pct": energy.TARGET_PCT,
                    "detail": "no luminaire with a legacy_w attribute in the site (the baseline of the KPI)"}
        s = site.config.site
        # the roll-ups beside the store, as `scada report energy` uses them (embedded backend)
        ru = Rollups(os.path.join(self.dir, "rollups")) if self.cfg.backend == "embedded" else None
        areas = sorted({p.area for p in inv.points if area is None or p.area == area})
        if not areas:
            return {"available": False, "target_pct": inv.target_pct,
                    "detail": f"no luminaire with a legacy_w attribute in area {area!r}"}
        kw: dict[str, Any] = {"lat": s.latitude, "lon": s.longitude, "tz": s.timezone, "d0": start, "d1": end,
                              "rollups": ru}
        res = energy.compute(self.backend, inv, area=area, **kw)
        threshold = float(res.inputs["measured_threshold_pct"])
        target = float(res.summary[1]["target_pct"])

        def verdict(pct: float | None, measured: float | None) -> str:
            if measured is None or measured < threshold:
                return "DATA INSUFFICIENT"
            if pct is None:
                return "no baseline"
            return "met" if pct >= target else "NOT met"

        months = [{"month": m["month"], "savings_pct": m["savings_pct_b"], "measured_pct": m["measured_pct"],
                   "baseline_kwh": m["baseline_kwh"], "actual_kwh": m["actual_kwh_b"],
                   "verdict": verdict(m["savings_pct_b"], m["measured_pct"])} for m in res.monthly]
        by_area = [{"area": r["area"], "luminaires": r["luminaires"], "savings_pct": r["savings_pct_b"],
                    "measured_pct": r["measured_pct"], "verdict": verdict(r["savings_pct_b"], r["measured_pct"])}
                   for r in res.areas]
        cells = []
        for a in areas:
            monthly = res.monthly if area is not None or len(areas) == 1 else energy.compute(self.backend, inv, area=a, **kw).monthly
            cells += [{"month": m["month"], "area": a, "savings_pct": m["savings_pct_b"],
                       "measured_pct": m["measured_pct"], "verdict": verdict(m["savings_pct_b"], m["measured_pct"])}
                      for m in monthly]
        b = res.summary[1]
        return {"available": True, "from": str(start), "to": str(end), "area": area or "all",
                "target_pct": target, "measured_threshold_pct": threshold, "headline": res.headline,
                "savings_pct": b["savings_pct"], "measured_pct": b["measured_pct"],
                "target_met": b["target_met"], "verdict": verdict(b["savings_pct"], b["measured_pct"]),
                "months": months, "areas": by_area, "cells": cells,
                "inventory_sha256": inv.sha256, "data_sha256": res.inputs["data_sha256"],
                "method": "option B (luminaire counters), docs/energy-kpi.md; the figure of `scada report energy`"}


ENERGY_CACHE_S = 300.0  # server-clock seconds an energy KPI answer is reused


def create(runtime: Any) -> HistorianService | None:
    """Return the historian service for this runtime, or None when the site disables it."""
    cfg = runtime.site.config.historian
    if not cfg.enabled:
        return None
    return HistorianService(runtime)
