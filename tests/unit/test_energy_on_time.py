"""Routine adjustment from measured cabinet on-time: the baseline burns while the cabinet's
contactor was closed (recorded state), astronomical hours where no state was recorded."""

from __future__ import annotations

from datetime import date

import numpy as np

from historian.base import Points
from historian.embedded import EmbeddedBackend
from historian.energy import Inventory, LightPoint, compute
from scada import astro
from scada import quality as Q

LAT, LON, TZ = 47.322, 5.0415, "Europe/Paris"


def test_baseline_from_contactor_on_time(tmp_path):
    b = EmbeddedBackend(str(tmp_path / "s"), {"fsync": False})
    days = astro.to_dates([date(2024, 12, 31)])[0] + np.arange(33)
    on, off, _ = astro.night_bounds(LAT, LON, days, TZ)
    on_c, off_c = on + 1800.0, off - 1800.0  # the cabinet switches 30 min late, 30 min early
    # contactor states: closed at on_c, open at off_c; a bad reading in the middle of night 10
    t = np.ravel(np.column_stack([on_c, off_c]))
    v = np.tile([1.0, 0.0], len(on_c))
    q = np.zeros(len(t), np.uint32)
    # a bad status in the day before night 5: the state is unknown until the next closing, so
    # night 5 keeps its measured value (known for more than half the night)
    t = np.append(t, off_c[4] + 3600.0)
    v = np.append(v, np.nan)
    q = np.append(q, Q.BadCommunicationError)
    order = np.argsort(t)
    b.write(Points.of(["a/cab-1/contactor"], np.zeros(len(t)), t[order], v[order], q[order]), "c")
    inv = Inventory([LightPoint("a/cab-1/l1", 170.0, 40.0, "a", "a/cab-1"),
                     LightPoint("a/cab-2/l1", 170.0, 40.0, "a", "a/cab-2")], "t", "0" * 64,
                    measured_hours=True)
    res = compute(b, inv, lat=LAT, lon=LON, tz=TZ, d0=date(2025, 1, 1), d1=date(2025, 1, 31), convention="night")
    lum = {r["luminaire"]: r for r in res.luminaires}
    nights = slice(1, 32)
    measured_h = ((off_c - on_c)[nights]).sum() / 3600.0
    astro_h = astro.burning_hours(LAT, LON, days[nights], TZ).sum()
    assert abs(lum["a/cab-1/l1"]["baseline_kwh"] - 170.0 * measured_h / 1000) < 1e-3
    assert abs(measured_h - (astro_h - 31.0)) < 1e-6  # one hour less per night
    assert abs(lum["a/cab-2/l1"]["baseline_kwh"] - 170.0 * astro_h / 1000) < 1e-3  # no contactor data
    assert "measured on-time for 66 of 132 cabinet half-nights" in res.inputs["hours_method"]
    b.close()
