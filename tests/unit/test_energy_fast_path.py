"""The KPI (summed while the nights are read for points in service all period with a reading in
every half-night, day by day for the others) against a plain reference written from the method
text (docs/energy-kpi.md §4) on a randomized city: loops over each luminaire's raw readings and
half-nights, nothing shared with historian.energy but the switch-on/off times. Raw read and
roll-ups, calendar periods."""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from historian.base import Points
from historian.embedded import EmbeddedBackend
from historian.energy import Inventory, LightPoint, compute
from historian.rollup import Rollups
from scada import astro

LAT, LON, TZ = 47.322, 5.0415, "Europe/Paris"
D0, D1 = date(2025, 1, 1), date(2025, 2, 28)


def _city(seed: int):
    rng = np.random.default_rng(seed)
    days = astro.to_dates([D0 - timedelta(days=1)])[0] + np.arange((D1 - D0).days + 4)
    on, off, _ = astro.night_bounds(LAT, LON, days, TZ)
    edges = astro.local_noon_utc(days, TZ)  # edges[j]..edges[j+1]: night j (0: the carry night)
    t = np.arange(edges[0], edges[-1], 900.0)
    lit = np.concatenate(([0.0], np.cumsum(off - on)))
    k = np.searchsorted(on, t, side="right") - 1
    kk = np.maximum(k, 0)
    lit_s = lit[kk] + np.where(k >= 0, np.clip(t - on[kk], 0, (off - on)[kk]), 0.0)
    n_res = len(days) - 3
    kinds = ["clean"] * 30 + ["gap"] * 3 + ["installed"] * 2 + ["removed"] * 2 + ["late"] * 2 + ["silent"]
    pts, series = [], {}
    for i, kind in enumerate(kinds):
        cab = f"z{i % 2}/cab-{i % 4}"
        installed = removed = None
        keep = rng.random(len(t)) > 0.3  # readings lost at random
        if kind == "gap":
            g = int(rng.integers(10, 40))
            keep &= (t < edges[g]) | (t >= edges[g + int(rng.integers(2, 6))])
        elif kind == "installed":
            installed = D0 + timedelta(days=int(rng.integers(5, 40)))
            keep &= t >= astro.local_noon_utc(astro.to_dates([installed]), TZ)[0]
        elif kind == "removed":
            removed = D0 + timedelta(days=int(rng.integers(5, 40)))
        elif kind == "late":  # first readings on a later night: the nights before are estimated
            keep &= t >= edges[int(rng.integers(3, 10))]
        elif kind == "silent":
            keep[:] = False
        watts = float(rng.uniform(20, 80))
        path = f"{cab}/lum-{i:02d}"
        pts.append(LightPoint(path, float(rng.choice([118.0, 170.0, 250.0])), float(rng.uniform(30, 60)),
                              cab.split("/")[0], cab, installed, removed))
        series[path] = (t[keep], np.round(watts * lit_s[keep] / 3600.0, 2) + float(rng.uniform(0, 5000)))
    return Inventory(pts, "random city", "0" * 64), series, days, edges, n_res


def _reference(inv, series, days, n_res):
    """Per point (baseline Wh, actual Wh, days in service, measured/partial/filled/estimated days,
    measured hours, hours) and per day (baseline, actual), as the method text reads: the
    counter's energy at any time is interpolated between the readings around it in proportion
    to burning time; a calendar day's energy is the difference at its midnights; burning time
    before the first or after the last reading is estimated at the point's own Wh per burning
    hour over its fully measured half-nights (a reading in it and in both neighbours)."""
    zi = ZoneInfo(TZ)
    nts = days[: n_res + 2]  # nights d0-1 .. d1+1
    on, off, _ = astro.night_bounds(LAT, LON, nts, TZ)

    def at(d, hh):
        return datetime.combine(date.fromordinal(int(d) + astro._EPOCH_ORD), time(hh), zi).timestamp()

    edges = []
    for d in nts:
        edges += [at(d, 12), at(d + 1, 0)]
    edges.append(at(nts[-1] + 1, 12))

    def B(x):
        return float(np.clip(x - on, 0, off - on).sum())

    K = len(edges) - 1
    hours = [(B(edges[k + 1]) - B(edges[k])) / 3600 for k in range(K)]
    per_point, day_b, day_a = {}, [[] for _ in range(n_res)], [[] for _ in range(n_res)]
    for p in inv.points:
        t, v = series[p.path]
        E = np.concatenate(([0.0], np.cumsum(np.where(np.diff(v) < 0, v[1:], np.diff(v)))))

        def E_at(x, t=t, E=E):
            i = int(np.searchsorted(t, x, side="right")) - 1
            if t[i] == x:
                return E[i]
            b0, b1 = B(t[i]), B(t[i + 1])
            return E[i] + (E[i + 1] - E[i]) * ((B(x) - b0) / (b1 - b0) if b1 > b0 else 0.0)

        meas, share, has = [0.0] * K, [0.0] * K, [False] * K
        for k in range(K):
            a, b = edges[k], edges[k + 1]
            has[k] = bool(((t >= a) & (t < b)).any())
            if len(t):
                lo, hi = max(a, t[0]), min(b, t[-1])
                if hi > lo:
                    meas[k] = E_at(hi) - E_at(lo)
                    share[k] = (B(hi) - B(lo)) / (B(b) - B(a)) if B(b) > B(a) else 1.0
                elif hi == lo and B(b) == B(a):
                    share[k] = 1.0
            share[k] = 1.0 if share[k] > 1 - 1e-9 else share[k]
        full = [k for k in range(1, K - 1) if has[k - 1] and has[k] and has[k + 1] and hours[k] > 0
                and share[k] == 1.0]
        rate = math.fsum(meas[k] for k in full) / math.fsum(hours[k] for k in full) if full else p.nominal_w
        energy = [meas[k] + rate * hours[k] * (1 - share[k]) for k in range(K)]
        tot = {"base": [], "act": [], "measured": 0, "partial": 0, "filled": 0, "estimated": 0, "nights": 0,
               "mh": 0.0, "h": 0.0}
        for i in range(n_res):
            day = D0 + timedelta(days=i)
            if (p.installed and day < p.installed) or (p.removed and day >= p.removed):
                continue
            ks = (2 * i + 1, 2 * i + 2)  # the morning of the night before, the evening of its own
            mh = sum(hours[k] * share[k] for k in ks if has[k])
            fh = sum(hours[k] * share[k] for k in ks if not has[k])
            eh = sum(hours[k] * (1 - share[k]) for k in ks)
            kind = ("measured" if eh <= 1e-9 and fh <= 1e-9 else "filled" if eh <= 1e-9 else
                    "estimated" if mh + fh <= 1e-9 else "partial")
            tot["nights"] += 1
            tot[kind] += 1
            tot["mh"] += mh
            tot["h"] += sum(hours[k] for k in ks)
            b_ = p.legacy_w * sum(hours[k] for k in ks)
            e_ = sum(energy[k] for k in ks)
            tot["base"].append(b_)
            tot["act"].append(e_)
            day_b[i].append(b_)
            day_a[i].append(e_)
        per_point[p.path] = tot
    return per_point, [math.fsum(x) for x in day_b], [math.fsum(x) for x in day_a]


@pytest.mark.parametrize("seed", [1, 2])
def test_kpi_matches_reference_on_random_city(tmp_path, seed):
    inv, series, days, _edges, n_res = _city(seed)
    b = EmbeddedBackend(str(tmp_path / "store"), {"fsync": False})
    keys = [f"{p.path}/energy_wh" for p in inv.points]
    sid = np.concatenate([np.full(len(series[p.path][0]), i) for i, p in enumerate(inv.points)])
    b.write(Points.of(keys, sid, np.concatenate([series[p.path][0] for p in inv.points]),
                      np.concatenate([series[p.path][1] for p in inv.points])), "all")
    per_point, night_b, night_a = _reference(inv, series, days, n_res)
    kw = {"lat": LAT, "lon": LON, "tz": TZ, "d0": D0, "d1": D1}
    for res in (compute(b, inv, **kw), compute(b, inv, rollups=Rollups(str(tmp_path / "ru")), **kw)):
        rows = {r["luminaire"]: r for r in res.luminaires}
        for path, ref in per_point.items():
            r = rows[path]
            assert r["baseline_kwh"] == pytest.approx(math.fsum(ref["base"]) / 1000, abs=2e-4), path
            assert r["actual_kwh_b"] == pytest.approx(math.fsum(ref["act"]) / 1000, abs=2e-4), path
            assert r["days_in_service"] == ref["nights"], path
            assert (r["filled_days"], r["estimated_days"], r["partial_days"], r["measured_days"]) == (
                ref["filled"], ref["estimated"], ref["partial"], ref["measured"]), path
            if ref["nights"]:
                assert r["measured_pct"] == pytest.approx(100 * ref["mh"] / ref["h"], abs=1e-3), path
        base = math.fsum(night_b)
        act = math.fsum(night_a)
        row = res.summary[1]
        assert row["baseline_kwh"] == pytest.approx(base / 1000, abs=2e-4)
        assert row["actual_kwh"] == pytest.approx(act / 1000, abs=2e-4)
        assert row["savings_pct"] == pytest.approx(100 * (base - act) / base, abs=1e-3)
        assert len(res.summary) == 2  # no cabinet meter recorded: no option C
        # months: January and February from the nightly sums
        for m, sl in ((0, slice(0, 31)), (1, slice(31, None))):
            assert res.monthly[m]["baseline_kwh"] == pytest.approx(math.fsum(night_b[sl]) / 1000, abs=2e-4)
            assert res.monthly[m]["actual_kwh_b"] == pytest.approx(math.fsum(night_a[sl]) / 1000, abs=2e-4)
        # groups: the sums of their points
        for r in res.cabinets:
            mine = [v for k, v in per_point.items() if k.startswith(r["cabinet"] + "/")]
            assert r["actual_kwh_b"] == pytest.approx(math.fsum(x for v in mine for x in v["act"]) / 1000, abs=2e-4)
        worst = sorted(res.cabinets, key=lambda r: r["savings_pct_b"])[:10]
        assert res.worst_cabinets == worst
    b.close()
