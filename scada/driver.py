"""The driver contract: what the runtime expects of a protocol driver.

Drivers live in their own packages (``drivers/modbus``, ``drivers/mqtt``, ``drivers/opcua`` or a
third party's) and are found through the ``scada.drivers`` entry-point group; the core never
imports one. As in Telegraf: the constructor validates and opens no connection; ``run`` does the
I/O until cancelled; a failing device adds an error and the others go on.

Class attributes let the loader validate protocol-specific parts of the site file with the
driver's own pydantic models, so errors there also name file, line and field:

* ``Connection``     - a device's merged ``connection`` mapping
* ``PointSource``    - each profile point's ``source`` mapping
* ``ProfileOptions`` - a profile's ``options`` mapping (poll groups, topic templates...)
* ``Options``        - the site-wide ``drivers.<protocol>`` mapping
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from .clock import Clock
from .site import DeviceInstance, Site
from .tags import Batch, Changes, PointDef, TagDatabase

#: Health points every driver publishes under ``_system/<protocol>/``.
STANDARD_HEALTH = (
    PointDef("devices", "int", "", "devices configured for this driver"),
    PointDef("connected", "int", "", "devices currently answering"),
    PointDef("cycle_ms", "float", "ms", "duration of the last complete poll/update cycle"),
    PointDef("cycles", "int", "", "poll cycles completed (polling drivers; 0 for push drivers)"),
    PointDef("late_cycles", "int", "", "poll cycles that did not complete within their period"),
    PointDef("errors", "int", "", "communication errors since start"),
    PointDef("rejected", "int", "", "malformed frames or payloads counted and skipped"),
    # field-data screening by the tag database (scada.tags.TagDatabase._screen)
    PointDef("implausible", "int", "", "readings outside their plausible range, kept with "
             "BadOutOfRange or UncertainEngineeringUnitsExceeded"),
    PointDef("late_samples", "int", "", "samples older than the tag's current value, not made current"),
    PointDef("future_samples", "int", "", "samples stamped beyond the future tolerance, "
             "clamped with BadInvalidTimestamp"),
    PointDef("counter_glitches", "int", "", "counter readings that went backwards or jumped, "
             "classified as glitches"),
    PointDef("counter_resets", "int", "", "counter restarts (or replaced meters) confirmed by the next reading"),
)


class Health:
    """Counters and gauges of one driver, published as ``_system/<protocol>/<name>`` tags.

    Drivers update plain attributes cheaply (``ctx.health.inc("errors")``); the runtime
    publishes them as one batch once a second.
    """

    def __init__(self, points: tuple[PointDef, ...]):
        self.points = points
        self.values: dict[str, float] = {p.name: 0.0 for p in points}

    def set(self, name: str, value: float) -> None:
        self.values[name] = float(value)

    def inc(self, name: str, by: float = 1.0) -> None:
        self.values[name] = self.values.get(name, 0.0) + by

    def get(self, name: str) -> float:
        return self.values.get(name, 0.0)


class DriverContext:
    """What a driver gets from the runtime: its devices, the tag database, the clock."""

    def __init__(
        self,
        *,
        protocol: str,
        site: Site,
        tagdb: TagDatabase,
        clock: Clock,
        devices: list[DeviceInstance],
        options: dict[str, Any] | None = None,
        health: Health | None = None,
    ):
        self.protocol = protocol
        self.site = site
        self.tagdb = tagdb
        self.clock = clock
        self.devices = devices
        self.options = options or {}
        self.health = health or Health(STANDARD_HEALTH)
        self.log = logging.getLogger(f"drivers.{protocol}")

    def publish(self, batch: Batch) -> Changes | None:
        """Deliver one batch of samples to the tag database.

        The database screens it (plausible range, timestamps, counters, out of service) and
        counts what it found in this driver's health tags (``implausible``, ``late_samples``,
        ``future_samples``, ``counter_glitches``, ``counter_resets``)."""
        return self.tagdb.apply(batch, self.health.values)

    def mark(self, indices: np.ndarray | list[int], status: int) -> Changes | None:
        """Set quality on tags keeping their last value (device lost, stale, out of service)."""
        return self.tagdb.mark(indices, status)

    def device_tags(self, dev: DeviceInstance) -> np.ndarray:
        n = len(self.site.schemas[dev.profile_name])
        return np.arange(dev.first_tag, dev.first_tag + n, dtype=np.int64)


class Driver(ABC):
    """One instance per protocol per server, owning every device of that protocol."""

    protocol: ClassVar[str] = ""
    Connection: ClassVar[type[BaseModel] | None] = None
    PointSource: ClassVar[type[BaseModel] | None] = None
    ProfileOptions: ClassVar[type[BaseModel] | None] = None
    Options: ClassVar[type[BaseModel] | None] = None
    #: Extra health points beyond :data:`STANDARD_HEALTH` (e.g. rejects by reason).
    health_points: ClassVar[tuple[PointDef, ...]] = ()

    def __init__(self, ctx: DriverContext):
        self.ctx = ctx

    @abstractmethod
    async def run(self) -> None:
        """Connect, poll/subscribe and publish batches until cancelled. Never returns normally
        while the server runs; raising means "crashed" and the runtime restarts it with backoff."""

    @abstractmethod
    async def write(self, tag: int, value: Any) -> int:
        """Send ``value`` for tag index ``tag`` to its device; return the OPC UA status code of
        the device's answer (``Good`` when the device accepted it). Read-only points never reach
        here: the runtime refuses them first."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Called once on shutdown after ``run`` is cancelled."""

    @classmethod
    def child_segments(cls, options: dict[str, Any]) -> Callable[[int], dict[str, int]] | None:
        """How child ``n`` of a profile with these ``options`` is addressed, as fields its id
        template may use (an MQTT DALI gateway: ``{line}``, ``{address}``). None: ``{n}``
        only. Called by the loader (no I/O); options are the profile's, not yet validated."""
        return None
