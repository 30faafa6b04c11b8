"""The KPI (summed while the nights are read for points in service all period with clean
counters, night by night for the others) against a plain reference written from the method
text (docs/energy-kpi.md §4) on a randomized city: luminaire-night loops over the raw readings,
nothing shared with historian.energy but the burning-hour input. Raw push-down and roll-ups."""

from __future__ import annotations

import math
from datetime import date, timedelta

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
    days = astro.to_dates([D0 - timedelta(days=1)])[0] + np.arange((D1 - D0).days + 3)
    on, off, _ = astro.night_bounds(LAT, LON, days, TZ)
    edges = astro.local_noon_utc(days, TZ)  # edges[j]..edges[j+1]: night j (0: the carry night)
    t = np.arange(edges[0], edges[-1], 900.0)
    lit = np.concatenate(([0.0], np.cumsum(off - on)))
    k = np.searchsorted(on, t, side="right") - 1
    kk = np.maximum(k, 0)
    lit_s = lit[kk] + np.where(k >= 0, np.clip(t - on[kk], 0, (off - on)[kk]), 0.0)
    n_res = len(days) - 2
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


def _reference(inv, series, days, edges, n_res):
    """Per point: (baseline Wh, actual Wh, nights in service, measured, filled, estimated), and
    per night (baseline, actual), written as the method text reads."""
    h = astro.burning_hours(LAT, LON, days[: n_res + 1], TZ)  # h[j]: night j, 0 the carry night
    per_point, night_b, night_a = {}, [[] for _ in range(n_res + 1)], [[] for _ in range(n_res + 1)]
    for p in inv.points:
        t, v = series[p.path]
        data = []  # per night: None or (first value, last value)
        for j in range(n_res + 1):
            sel = (t >= edges[j]) & (t < edges[j + 1])
            data.append((v[sel][0], v[sel][-1]) if sel.any() else None)
        e = [0.0] * (n_res + 1)
        kind = ["estimated"] * (n_res + 1)
        direct = [False] * (n_res + 1)
        last = None  # last night with data
        for j in range(n_res + 1):
            if data[j] is None:
                continue
            kind[j] = "measured"
            e[j] = data[j][1] - data[j][0]
            if last == j - 1:
                e[j] += data[j][0] - data[last][1]
                direct[j] = True
            elif last is not None:  # increase across the gap, spread by burning hours
                inc = data[j][0] - data[last][1]
                w = h[last + 1 : j + 1]
                for m, share in zip(range(last + 1, j + 1), w / w.sum(), strict=True):
                    e[m] += inc * share
                    if m < j:
                        kind[m] = "filled"
            last = j
        full = [j for j in range(1, n_res + 1) if direct[j] and h[j] > 0]
        rate = (math.fsum(e[j] for j in full) / math.fsum(h[j] for j in full)) if full else p.nominal_w
        for j in range(n_res + 1):
            if kind[j] == "estimated":
                e[j] = rate * h[j]
        tot = {"base": [], "act": [], "measured": 0, "filled": 0, "estimated": 0, "nights": 0}
        for j in range(1, n_res + 1):
            day = date.fromordinal(int(days[j]) + astro._EPOCH_ORD)
            if (p.installed and day < p.installed) or (p.removed and day >= p.removed):
                continue
            tot["nights"] += 1
            tot[kind[j]] += 1
            tot["base"].append(p.legacy_w * h[j])
            tot["act"].append(e[j])
            night_b[j].append(p.legacy_w * h[j])
            night_a[j].append(e[j])
        per_point[p.path] = tot
    return per_point, [math.fsum(x) for x in night_b[1:]], [math.fsum(x) for x in night_a[1:]]


@pytest.mark.parametrize("seed", [1, 2])
def test_kpi_matches_reference_on_random_city(tmp_path, seed):
    inv, series, days, edges, n_res = _city(seed)
    b = EmbeddedBackend(str(tmp_path / "store"), {"fsync": False})
    keys = [f"{p.path}/energy_wh" for p in inv.points]
    sid = np.concatenate([np.full(len(series[p.path][0]), i) for i, p in enumerate(inv.points)])
    b.write(Points.of(keys, sid, np.concatenate([series[p.path][0] for p in inv.points]),
                      np.concatenate([series[p.path][1] for p in inv.points])), "all")
    per_point, night_b, night_a = _reference(inv, series, days, edges, n_res)
    kw = {"lat": LAT, "lon": LON, "tz": TZ, "d0": D0, "d1": D1}
    for res in (compute(b, inv, **kw), compute(b, inv, rollups=Rollups(str(tmp_path / "ru")), **kw)):
        rows = {r["luminaire"]: r for r in res.luminaires}
        for path, ref in per_point.items():
            r = rows[path]
            assert r["baseline_kwh"] == pytest.approx(math.fsum(ref["base"]) / 1000, abs=2e-4), path
            assert r["actual_kwh_b"] == pytest.approx(math.fsum(ref["act"]) / 1000, abs=2e-4), path
            assert r["nights_in_service"] == ref["nights"], path
            assert (r["filled_nights"], r["estimated_nights"]) == (ref["filled"], ref["estimated"]), path
            if ref["nights"]:
                assert r["completeness_pct"] == pytest.approx(100 * ref["measured"] / ref["nights"], abs=1e-3)
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
