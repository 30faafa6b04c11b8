"""The energy KPI on a synthetic year with answers derived by hand, on both backends.

Every luminaire burns exactly from sunset to sunrise (the astronomical clock), its D4i counter
integrating its power; readings every 15 minutes. Legacy lamps were 170 W (lamp + ballast):

* constant 40 W LED -> savings 1 - 40/170 = 76.470588 % (exactly, whatever the night lengths);
* a counter reset in daytime loses nothing; a 10-night gap is filled across (flagged, counted
  in completeness); a luminaire added on 1 July counts from then on in baseline and actual;
* an 85 W luminaire in another area saves exactly 50 %.
"""

from __future__ import annotations

from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from historian.base import Points
from historian.energy import Inventory, LightPoint, compute
from scada import astro

pytestmark = pytest.mark.system

LAT, LON, TZ = 47.322, 5.0415, "Europe/Paris"
D0, D1 = date(2025, 1, 1), date(2025, 12, 30)
GAP_NIGHTS = 10


def _year():
    days = np.arange(astro.to_dates([date(2024, 12, 30)])[0], astro.to_dates([date(2026, 1, 2)])[0])
    on, off, _ = astro.night_bounds(LAT, LON, days, TZ)
    t = np.arange(astro.local_noon_utc(days[:1], TZ)[0], off[-1], 900.0)
    lit = np.concatenate(([0.0], np.cumsum(off - on)))
    k = np.searchsorted(on, t, side="right") - 1
    lit_s = lit[np.maximum(k, 0)] + np.where(k >= 0, np.clip(t - on[np.maximum(k, 0)], 0, (off - on)[np.maximum(k, 0)]), 0.0)
    burning = np.where(k >= 0, (t >= on[np.maximum(k, 0)]) & (t < off[np.maximum(k, 0)]), False)
    return t, lit_s, burning


def _data():
    t, lit_s, burning = _year()
    keys, sid, tt, vv = [], [], [], []

    def add(key, times, values):
        keys.append(key)
        sid.append(np.full(len(times), len(keys) - 1))
        tt.append(times)
        vv.append(values)

    e40 = 40.0 * lit_s / 3600.0
    add("centre/cab-1/lum-1/energy_wh", t, e40)
    add("centre/cab-1/lum-1/power_w", t, np.where(burning, 40.0, 0.0))
    # reset at 13:00 UTC on 15 May: counter restarts from 0
    t_reset = astro.local_noon_utc(astro.to_dates([date(2025, 5, 15)]), TZ)[0] + 3600
    e_reset = np.where(t >= t_reset, e40 - e40[np.searchsorted(t, t_reset)] + 0.0, e40)
    add("centre/cab-1/lum-2/energy_wh", t, e_reset)
    # gap: no reading from noon 10 Aug to noon 20 Aug (nights 10..19 Aug missing)
    g0, g1 = astro.local_noon_utc(astro.to_dates([date(2025, 8, 10), date(2025, 8, 20)]), TZ)
    keep = (t < g0) | (t >= g1)
    add("centre/cab-1/lum-3/energy_wh", t[keep], e40[keep])
    # added on 1 July: counter starts at its local midnight
    j1 = astro.local_noon_utc(astro.to_dates([date(2025, 7, 1)]), TZ)[0]
    sel = t >= j1 - 12 * 3600
    add("centre/cab-1/lum-4/energy_wh", t[sel], e40[sel] - e40[sel][0])
    # another area, 85 W
    add("north/cab-2/lum-1/energy_wh", t, 85.0 * lit_s / 3600.0)
    # cabinet meter of cab-1 = sum of its luminaires
    cab = 3 * e40 + np.where(t >= j1 - 12 * 3600, e40 - e40[sel][0], 0.0)
    add("centre/cab-1/energy_wh", t, cab)
    pts = Points.of(keys, np.concatenate(sid), np.concatenate(tt), np.concatenate(vv))
    inv = Inventory(
        [LightPoint("centre/cab-1/lum-1", 170, 40, "centre", "centre/cab-1"),
         LightPoint("centre/cab-1/lum-2", 170, 40, "centre", "centre/cab-1"),
         LightPoint("centre/cab-1/lum-3", 170, 40, "centre", "centre/cab-1"),
         LightPoint("centre/cab-1/lum-4", 170, 40, "centre", "centre/cab-1", installed=date(2025, 7, 1)),
         LightPoint("north/cab-2/lum-1", 170, 85, "north", "north/cab-2")],
        "test inventory", "0" * 64)
    return pts, inv


def test_kpi_synthetic_year(historian_backend):
    b = historian_backend
    pts, inv = _data()
    for a in range(0, len(pts), 200_000):
        sl = slice(a, a + 200_000)
        b.write(Points(pts.keys, pts.sid[sl], pts.t[sl], pts.v[sl], pts.q[sl]), f"y{a}")
    b.flush()
    res = compute(b, inv, lat=LAT, lon=LON, tz=TZ, d0=D0, d1=D1)
    lum = {r["luminaire"]: r for r in res.luminaires}
    exact = round(100 * (1 - 40 / 170), 3)
    assert exact == 76.471
    for name in ("centre/cab-1/lum-1", "centre/cab-1/lum-2", "centre/cab-1/lum-3", "centre/cab-1/lum-4"):
        assert lum[name]["savings_pct_b"] == pytest.approx(exact, abs=1e-3), name
    assert lum["north/cab-2/lum-1"]["savings_pct_b"] == pytest.approx(50.0, abs=1e-3)
    n_days = (D1 - D0).days + 1
    assert lum["centre/cab-1/lum-1"]["measured_pct"] == 100.0
    assert lum["centre/cab-1/lum-2"]["counter_resets"] == 1
    # calendar days 10..20 Aug touch the gap (its evening of the 10th .. morning of the 20th)
    assert lum["centre/cab-1/lum-3"]["filled_days"] == GAP_NIGHTS + 1
    days = astro.to_dates([D0])[0] + np.arange(-1, n_days + 1)
    on, off, _ = astro.night_bounds(LAT, LON, days, TZ)
    mid = np.array([datetime.combine(date.fromordinal(int(d) + 1 + astro._EPOCH_ORD), time(0), ZoneInfo(TZ)).timestamp()
                    for d in days])
    # burning hours of each calendar day: morning of the previous night + evening of its own
    h_day = (np.maximum(off[:-2] - mid[:-2], 0) + np.maximum(mid[1:-1] - on[1:-1], 0))[: n_days] / 3600
    h_day = (np.clip(off[:-1] - mid[:-1], 0, None) + np.clip(mid[1:] - on[1:], 0, None))[:n_days] / 3600
    gap = (days[1:-1] >= astro.to_dates([date(2025, 8, 10)])[0]) & (days[1:-1] < astro.to_dates([date(2025, 8, 20)])[0])
    gap_h = (off[1:-1][gap] - on[1:-1][gap]).sum() / 3600
    assert lum["centre/cab-1/lum-3"]["measured_pct"] == pytest.approx(100 * (1 - gap_h / h_day.sum()), abs=1e-3)
    assert lum["centre/cab-1/lum-4"]["days_in_service"] == (D1 - date(2025, 7, 1)).days + 1
    h_july = h_day[days[1:-1] >= astro.to_dates([date(2025, 7, 1)])[0]].sum()
    base_kwh = 170 * (4 * h_day.sum() + h_july) / 1000
    actual_kwh = (40 * (3 * h_day.sum() + h_july) + 85 * h_day.sum()) / 1000
    b_row = res.summary[1]
    assert b_row["baseline_kwh"] == pytest.approx(base_kwh, abs=1e-3)  # kWh to 4 decimals
    assert b_row["actual_kwh"] == pytest.approx(actual_kwh, abs=1e-3)
    assert b_row["savings_pct"] == pytest.approx(100 * (1 - actual_kwh / base_kwh), abs=1e-3)
    areas = {r["area"]: r for r in res.areas}
    assert areas["centre"]["savings_pct_b"] == pytest.approx(exact, abs=1e-3)
    assert areas["north"]["savings_pct_b"] == pytest.approx(50.0, abs=1e-3)
    cabs = {r["cabinet"]: r for r in res.cabinets}
    assert cabs["centre/cab-1"]["savings_pct_c"] == pytest.approx(exact, abs=1e-3)
    assert cabs["north/cab-2"]["savings_pct_c"] is None  # no meter recorded
    assert len(res.monthly) == 12 and res.monthly[6]["month"] == "2025-07"
    assert res.inputs["inventory_sha256"] == "0" * 64
    # the night convention (noon to noon, a night counted whole on its date) stays available
    nres = compute(b, inv, lat=LAT, lon=LON, tz=TZ, d0=D0, d1=D1, convention="night")
    h = astro.burning_hours(LAT, LON, days[1:-1], TZ)
    h_july = h[days[1:-1] >= astro.to_dates([date(2025, 7, 1)])[0]].sum()
    assert nres.summary[1]["baseline_kwh"] == pytest.approx(170 * (4 * h.sum() + h_july) / 1000, abs=1e-3)
    assert {r["luminaire"]: r for r in nres.luminaires}["centre/cab-1/lum-3"]["filled_days"] == GAP_NIGHTS
    assert "local noon to local noon" in nres.inputs["period"]
