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
from scada.audit import AuditLog
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
        self.audit = AuditLog(os.path.join(self.directory, "audit.log"), runtime.clock)
        self._health_first = runtime.tagdb.add_tags("_system/alarms", HEALTH)
        self.engine: AlarmEngine = build_from_site(
            site, runtime.tagdb, runtime.clock, self.journal,
            on_out_of_service=self._oos, audit=self.audit)
        self.notifier: Notifier | None = None
        if cfg.notifications.channels:
            self.notifier = Notifier(
                cfg.notifications, runtime.clock, self.directory, site=site.name,
                timezone=site.config.site.timezone,
                municipality_of={a.id: a.municipality or a.name or a.id for a in site.config.areas})
            self.engine.listeners.append(self.notifier.on_events)
        self.conditions: Any = None
        self.engine.start()

    def _oos(self, device: str, oos: bool) -> None:
        try:
            self.runtime.set_out_of_service(device, oos)
        except KeyError as e:
            log.error("alarms: cannot set %s out of service in the runtime: %s", device, e)

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

    async def _health(self) -> None:
        while True:
            self.publish_health()
            await self.runtime.clock.sleep(5.0)

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
        self.engine.close()
        self.audit.close()


def create(runtime: Any) -> AlarmService | None:
    """Return the alarms service for this runtime, or None when ``alarms.enabled`` is false."""
    if not runtime.site.config.alarms.enabled:
        return None
    return AlarmService(runtime)
