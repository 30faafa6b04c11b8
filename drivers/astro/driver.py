"""Astronomical clock driver (``protocol: astro``): the server computes a device's tags.

A profile of this protocol maps each point to one output of the astronomical clock
(:mod:`scada.astro`, NOAA/Meeus) at the device's location (its ``location``, else the site's):

* ``sun_elevation`` - geometric solar elevation in degrees (no refraction);
* ``night`` - true while the sun is below ``options.night_below_deg`` (-6: civil twilight,
  "between civil dusk and civil dawn"; -0.833 for sunset/sunrise);

recomputed every ``options.period_s`` seconds of the injected clock, each as one batch stamped
with the clock's time. This gives the demo's ``centre/astro/*`` tags a writer: a configured tag
that nothing writes would stay BadWaitingForInitialData forever, which the runtime refuses.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from drivers.base import Batch, Driver, DriverContext
from scada import astro
from scada import quality as Q


class PointSource(BaseModel):
    """A point's ``source``: which output of the astronomical clock it holds."""

    model_config = ConfigDict(extra="forbid")

    output: Literal["sun_elevation", "night"]


class ProfileOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: seconds between two computations
    period_s: float = Field(60.0, gt=0, le=3600)
    #: the sun's elevation (deg) below which it is night: -6 civil, -0.833 sunset/sunrise
    night_below_deg: float = Field(-6.0, ge=-18.0, le=0.0)


class AstroDriver(Driver):
    """Every ``protocol: astro`` device of the site."""

    protocol = "astro"
    PointSource = PointSource
    ProfileOptions = ProfileOptions

    def __init__(self, ctx: DriverContext):
        super().__init__(ctx)
        site = ctx.site.config.site
        self.rows: list[tuple[int, str, float, float, float]] = []  # tag, output, lat, lon, below
        self.period = 3600.0
        for dev in ctx.devices:
            opts = ProfileOptions.model_validate(dev.profile.options or {})
            self.period = min(self.period, opts.period_s)
            lat = dev.location.lat if dev.location else site.latitude
            lon = dev.location.lon if dev.location else site.longitude
            for off, p in enumerate(dev.profile.points):
                src = PointSource.model_validate(p.source)
                self.rows.append((dev.first_tag + off, src.output, lat, lon, opts.night_below_deg))
        ctx.health.set("devices", len(ctx.devices))

    def compute(self) -> None:
        """One batch with every output at the clock's time."""
        if not self.rows:
            return
        now = self.ctx.clock.time()
        lat = np.asarray([r[2] for r in self.rows])
        lon = np.asarray([r[3] for r in self.rows])
        elev = astro.solar_elevation(lat, lon, np.full(len(self.rows), now))
        vals = [float(e) if r[1] == "sun_elevation" else float(e < r[4]) for r, e in zip(self.rows, elev, strict=True)]
        self.ctx.publish(Batch.of([r[0] for r in self.rows], vals, Q.Good, now))
        self.ctx.health.set("connected", len(self.ctx.devices))
        self.ctx.health.inc("cycles")

    async def run(self) -> None:
        while True:
            self.compute()
            await self.ctx.clock.sleep(self.period)

    async def write(self, tag: int, value: Any) -> int:
        return Q.BadNotWritable
