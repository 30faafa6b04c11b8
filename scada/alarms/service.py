"""Factory of the alarms service, registered under the ``scada.services`` entry points.

The engine is built, restored from the journal and subscribed to the tag database in
:func:`create` (before any driver runs, so no batch is missed); :meth:`AlarmService.run` runs
the timer task, the notifier, the health tags and, when the OPC UA server service exists, the
OPC UA Alarms & Conditions model on it.

Other services reach the engine through ``runtime.services.get("alarms")``: ``.engine`` (the
:class:`~scada.alarms.engine.AlarmEngine`) and the shortcut :meth:`AlarmService.set_condition`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from scada import quality as Q
from scada.runtime import Service
from scada.tags import Batch, PointDef

from .engine import AlarmEngine, build_from_site
from .journal import Journal
from .notify import Notifier

log = logging.getLogger("scada.alarms")

HEALTH = (
    PointDef("alarms", "int", "", "alarm instances"),
    PointDef("active", "int", "", "annunciated alarms (active or unacknowledged)"),
    PointDef("unacknowledged", "int", "", "annunciated unacknowledged alarms"),
    PointDef("suppressed", "int", "", "alarms suppressed by design"),
    PointDef("shelved", "int", "", "shelved alarms"),
    PointDef("out_of_service", "int", "", "alarms of devices out of service"),
    PointDef("chattering", "int", "", "alarms flagged as chattering"),
    PointDef("evaluations", "int", "", "condition evaluations since start"),
    PointDef("transitions", "int", "", "alarm transitions since start"),
    PointDef("journal_errors", "int", "", "journal writes that failed"),
)

#: ``_system/notify/<channel>/*``: one set per notification channel
NOTIFY_HEALTH = (
    PointDef("queued", "int", "", "notifications waiting in the channel's durable queue"),
    PointDef("failed", "int", "", "failed delivery attempts since start"),
    PointDef("dead_letters", "int", "", "notifications given up since start (dead letters)"),
    PointDef("last_success", "float", "s", "POSIX time of the last delivery (NaN: none yet)"),
    PointDef("down", "bool", "", "the channel failed more than its retries and is retrying"),
)


def state_dir(site: Any) -> str:
    d = site.config.site.state_dir
    if not os.path.isabs(d):
        d = os.path.join(os.path.dirname(os.path.abspath(site.path)), d)
    return d


def alarms_dir(site: Any) -> str:
    return os.path.join(state_dir(site), site.config.alarms.journal)


class AlarmService(Service):
    name = "alarms"

    def __init__(self, runtime: Any):
        self.runtime = runtime
        site = runtime.site
        cfg = site.config.alarms
        self.directory = alarms_dir(site)
        self.journal = Journal(self.directory, fsync=cfg.fsync, fsync_interval=cfg.fsync_interval,
                               rotate_bytes=int(cfg.rotate_mb * 1024 * 1024))
        self._health_first = runtime.tagdb.add_tags("_system/alarms", HEALTH)
        # out of service: the tag database owns the state (Runtime.set_out_of_service is the
        # entry point); the engine follows its changes, no callback needed
        self.engine: AlarmEngine = build_from_site(
            site, runtime.tagdb, runtime.clock, self.journal)
        self.notifier: Notifier | None = None
        self._notify_first: dict[str, int] = {}
        if cfg.notifications.channels:
            ops = getattr(runtime, "operations", None)
            self.notifier = make_notifier(site, self.engine, runtime.clock, self.directory,
                                          audit=(lambda: ops.audit) if ops is not None else None)
            for ch in cfg.notifications.channels:
                self._notify_first[ch] = runtime.tagdb.add_tags(f"_system/notify/{ch}",
                                                                NOTIFY_HEALTH)
        self.conditions: Any = None
        self._memory_high = False
        ha = getattr(runtime, "ha", None)
        if ha is not None and ha.pair and not ha.is_active():
            # one of a redundant pair, not (yet) active: the states follow the active's
            # journal (scada.ha.replication); nothing is evaluated or journaled here
            self.engine.following = True
        self.engine.start()

    def set_condition(self, device_path: str, name: str, active: bool, **kw: Any) -> None:
        """See :meth:`AlarmEngine.set_condition`."""
        self.engine.set_condition(device_path, name, active, **kw)

    def publish_health(self) -> None:
        c = self.engine.counts()
        st = self.engine.stats
        vals = [c["alarms"], c["active"], c["unacknowledged"], c["suppressed"], c["shelved"],
                c["out_of_service"], c["chattering"], st["evaluations"], st["transitions"],
                st["journal_errors"]]
        self.runtime.tagdb.apply(Batch.of(range(self._health_first, self._health_first + len(vals)),
                                          [float(v) for v in vals], Q.Good,
                                          self.runtime.clock.time()))
        if self.notifier is not None:
            idx: list[int] = []
            vals: list[float] = []
            for ch, h in self.notifier.health().items():
                first = self._notify_first[ch]
                idx += range(first, first + len(NOTIFY_HEALTH))
                vals += [h[p.name] for p in NOTIFY_HEALTH]
            self.runtime.tagdb.apply(Batch.of(idx, vals, Q.Good, self.runtime.clock.time()))

    async def _health(self) -> None:
        while True:
            self.publish_health()
            self.check_memory()
            await self.runtime.clock.sleep(5.0)

    def check_memory(self) -> None:
        """``_system/server/memory_growth``: the server's RSS trend over the configured window
        (:class:`scada.memdiag.RssTrend`, fed by the runtime's health task) above
        ``alarms.memory_growth.threshold_pct_per_day``; cleared below half of it."""
        cfg = self.runtime.site.config.alarms.memory_growth
        trend = getattr(self.runtime, "memory_trend", None)
        if not cfg.enabled or trend is None:
            return
        s = trend.slope()
        if s is None:
            return
        mb_day, pct_day = s
        limit = cfg.threshold_pct_per_day / (2.0 if self._memory_high else 1.0)
        high = pct_day > limit
        if high == self._memory_high:
            return
        self._memory_high = high
        hours = trend.span() / 3600.0
        self.engine.set_condition(
            "_system/server", "memory_growth", high, priority=cfg.priority, category="system",
            value=pct_day,
            message=f"server memory grows {pct_day:.1f} % a day ({mb_day:+.0f} MB/day over the "
                    f"last {hours:.0f} h; threshold {cfg.threshold_pct_per_day:g} %/day): "
                    f"a leak or an unbounded cache; plan a restart and report it")

    def _attach_opcua(self) -> None:
        opcua = self.runtime.services.get("opcua")
        if opcua is None or self.conditions is not None:
            return
        try:
            from ..opcua.alarms import AlarmConditions
        except ImportError as e:  # asyncua missing: the server cannot exist either
            log.error("alarms: OPC UA Alarms & Conditions unavailable: %s", e)
            return
        self.conditions = AlarmConditions(self.engine, opcua)
        self.conditions.attach()

    async def run(self) -> None:
        self._attach_opcua()
        parts = [self.engine.run(), self._health()]
        if self.notifier is not None:
            parts.append(self.notifier.run())
        tasks = [asyncio.create_task(p, name=f"alarms:{i}") for i, p in enumerate(parts)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()  # re-raise for the runtime's supervisor
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        if self.conditions is not None:
            await self.conditions.close()
        await self.engine.aclose()


def make_notifier(site: Any, engine: AlarmEngine, clock: Any, directory: str,
                  audit: Any = None) -> Notifier:
    """The notifier of ``site.config.alarms.notifications`` wired to ``engine``: it reads the
    alarms' state at send time, raises the channel-down alarms through ``set_condition``,
    describes devices from the site model and records replays in the audit log ``audit()``
    returns (the server's, opened on first use). Registered as an engine listener."""
    municipality_of = {a.id: a.municipality or a.name or a.id for a in site.config.areas}

    def state_of(alarm_id: str) -> Any:
        c = engine.by_id.get(alarm_id)
        return None if c is None else engine.view(c)

    def channel_down(channel: str, down: bool, reason: str) -> None:
        # _system/notify/<channel>/down, priority 2: raised when a channel fails more than its
        # retries, cleared when it delivers again
        engine.set_condition(
            f"_system/notify/{channel}", "down", down, priority=2, category="system",
            message=f"notification channel {channel} is down ({reason}): notifications are "
                    f"queued and sent when it answers; check its server and settings")

    def replayed(req: dict[str, Any], ids: list[str], name: str) -> None:
        # authorised by the file system (write access to the state directory); the account
        # is the request file's owner
        if audit is not None:
            audit().record(user=req.get("owner"), action="notify.replay",
                         target=req.get("channel") or "dead letters",
                         outcome="Good" if ids else "BadNothingToDo",
                         via=f"request file {name}", ids=ids, asked_as=req.get("user"))

    n = Notifier(site.config.alarms.notifications, clock, directory, site=site.name,
                 timezone=site.config.site.timezone, municipality_of=municipality_of,
                 state_of=state_of, describe=describer(site, municipality_of),
                 on_down=channel_down, on_replay=replayed)
    engine.listeners.append(n.on_events)
    return n


def describer(site: Any, municipality_of: dict[str, str]) -> Any:
    """``device path -> where it is`` for notifications: coordinates (its own, else its
    parent's), the ``address``/``description`` attributes, its cabinet (parent) and the
    municipality of its area. The device index is built on first use."""
    index: dict[str, Any] = {}

    def describe(path: str) -> dict[str, Any]:
        if not index:
            index.update((d.path, d) for d in site.all_devices())
        d = index.get(path)
        if d is None:
            return {}
        parent = index.get(d.parent) if d.parent else None
        loc = d.location or (parent.location if parent is not None else None)
        out: dict[str, Any] = {}
        if loc is not None:
            out["location"] = (loc.lat, loc.lon)
        for key in ("address", "description"):
            if d.attrs.get(key):
                out[key] = str(d.attrs[key])
        if parent is not None:
            out["cabinet"] = {"path": parent.path, **({"description": str(
                parent.attrs["description"])} if parent.attrs.get("description") else {})}
        if municipality_of.get(d.area) and municipality_of[d.area] != d.area:
            out["municipality"] = municipality_of[d.area]
        return out

    return describe


def create(runtime: Any) -> AlarmService | None:
    """Return the alarms service for this runtime, or None when ``alarms.enabled`` is false."""
    if not runtime.site.config.alarms.enabled:
        return None
    return AlarmService(runtime)
