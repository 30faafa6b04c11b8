"""The auditor's path (issue 17), end to end through the two commands: a CSV of counter readings
in kWh and an inventory CSV (lamp + ballast, LED nominal, commissioning date) become a yearly
report. The data: a calendar year of 15-minute readings at Dijon with counter resets (by day, at
night, on a midnight), both DST nights, a dimmed luminaire, one commissioned on 1 July, one whose
readings stop at 21:00 on 31 December while its lamp burns (a partial last night).

Expected figures are computed here, independently of the code under test: each luminaire's
energy is the integral of its power over the switch-on/off intervals (the astronomical clock's
times are the only shared input) cut at local midnights with zoneinfo, the baseline the legacy
power times the same burning time. Overall, monthly and per-luminaire savings are checked to
0.01 percentage points, energy to the Wh."""

from __future__ import annotations

import json
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from scada import astro

LAT, LON, TZ = 47.322, 5.0415, "Europe/Paris"
ZI = ZoneInfo(TZ)
YEAR = 2026


def _ts(d: date, hh: int = 0, mm: int = 0) -> float:
    return datetime.combine(d, time(hh, mm), ZI).timestamp()


def _nights():
    days = astro.to_dates([date(YEAR - 1, 12, 30)])[0] + np.arange(368)
    on, off, _ = astro.night_bounds(LAT, LON, days, TZ)
    return days, on, off


def _overlap(a: np.ndarray, b: np.ndarray, x: float, y: float) -> float:
    return float(np.clip(np.minimum(b, y) - np.maximum(a, x), 0, None).sum())


class Lum:
    """A luminaire: power ``w1`` from switch-on, ``w2`` after 01:00 local (dimming)."""

    def __init__(self, name, lamp_w, ballast_w, led_w, w1, w2=None, commissioned=None, stop=None, resets=()):
        self.name, self.lamp_w, self.ballast_w, self.led_w = name, lamp_w, ballast_w, led_w
        self.w1, self.w2 = w1, (w1 if w2 is None else w2)
        self.commissioned, self.stop, self.resets = commissioned, stop, resets

    def intervals(self, on, off, days):
        """(start, end, watts) burning intervals."""
        dim = np.array([_ts(date.fromordinal(int(d) + 1 + astro._EPOCH_ORD), 1) for d in days])
        x = np.clip(dim, on, off)
        return [(on, x, self.w1), (x, off, self.w2)]

    def energy(self, ivs, a, b):
        """Wh consumed in [a, b)."""
        return sum(w * _overlap(s, e, a, b) for s, e, w in ivs) / 3600.0


LUMS = [
    Lum("centre/cab-1/lum-01", 150, 20, 40, 40.0),
    Lum("centre/cab-1/lum-02", 150, 20, 40, 60.0, 30.0),  # dimmed after 01:00
    Lum("centre/cab-1/lum-03", 100, 18, 30, 30.0, resets=((3, 20, 14, 0), (6, 11, 2, 0), (9, 2, 0, 0))),
    Lum("centre/cab-1/lum-04", 150, 20, 40, 45.0, commissioned=date(YEAR, 7, 1)),
    Lum("north/cab-2/lum-01", 250, 25, 85, 85.0, stop=(12, 31, 21, 0)),
]


def _readings():
    days, on, off = _nights()
    t = np.arange(_ts(date(YEAR - 1, 12, 31), 0), _ts(date(YEAR + 1, 1, 2), 0), 900.0)
    rows = []
    for lum in LUMS:
        ivs = lum.intervals(on, off, days)
        cum = np.zeros(len(t))
        for s, e, w in ivs:  # cumulative Wh at each reading: integral of the power
            cum += w * np.clip(t[:, None] - s[None, :], 0, (e - s)[None, :]).sum(1) / 3600.0
        v = cum + 12345.678  # a counter that was already running
        tt = t
        if lum.commissioned:
            keep = tt >= _ts(lum.commissioned)
            tt, v = tt[keep], v[keep] - v[keep][0]
        for mo, dd, hh, mm in lum.resets:  # the counter restarts from 0 at a reading time
            tr = _ts(date(YEAR, mo, dd), hh, mm)
            i = int(np.searchsorted(tt, tr))
            v = np.where(tt > tr, v - v[i], v)
        if lum.stop:
            keep = tt <= _ts(date(YEAR, *lum.stop[:2]), *lum.stop[2:])
            tt, v = tt[keep], v[keep]
        rows.append((lum.name, tt, v))
    return rows


def _expected():
    """Per luminaire and month: (baseline Wh, actual Wh), from the burning intervals."""
    days, on, off = _nights()
    out = {}
    for lum in LUMS:
        ivs = lum.intervals(on, off, days)
        legacy = lum.lamp_w + lum.ballast_w
        per_month = {}
        for m in range(1, 13):
            a = _ts(max(date(YEAR, m, 1), lum.commissioned or date(YEAR, 1, 1)))
            b = _ts(date(YEAR + (m == 12), m % 12 + 1, 1))
            burn = _overlap(on, off, a, b) / 3600.0
            per_month[m] = (legacy * burn, lum.energy(ivs, a, b))
        out[lum.name] = per_month
    return out


def _write_inputs(tmp_path):
    csv = tmp_path / "readings.csv"
    with open(csv, "w") as f:
        f.write("time,luminaire,kwh\n")
        for name, t, v in _readings():
            dev = name
            for x, y in zip(t.tolist(), v.tolist(), strict=True):
                f.write(f"{datetime.fromtimestamp(x, ZI).isoformat()},{dev},{y / 1000:.9f}\n")
    inv = tmp_path / "inventory.csv"
    with open(inv, "w") as f:
        f.write("luminaire,lamp_w,ballast_w,led_w,area,cabinet,commissioned\n")
        for lum in LUMS:
            cab = lum.name.rsplit("/", 1)[0]
            f.write(f"{lum.name},{lum.lamp_w},{lum.ballast_w},{lum.led_w},{cab.split('/')[0]},{cab},"
                    f"{lum.commissioned or ''}\n")
    return csv, inv


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    csv, inv = _write_inputs(tmp)
    store = str(tmp / "store")
    run = CliRunner()
    r = run.invoke(main, ["historian", "import", str(csv), "--store", store, "--ts-col", "time",
                          "--device-col", "luminaire", "--point", "energy_wh", "--value-col", "kwh", "--unit", "kWh"])
    assert r.exit_code == 0, r.output
    assert "rows rejected                   0" in r.output
    base = ["report", "energy", "--store", store, "--inventory", str(inv), "--lat", str(LAT), "--lon", str(LON),
            "--tz", TZ, "--from", f"{YEAR}-01-01", "--to", f"{YEAR}-12-31", "--format", "json"]
    r = run.invoke(main, base)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    return {"tmp": tmp, "store": store, "inv": inv, "base": base, "rep": rep}


def test_yearly_report_matches_independent_figures(audit):
    rep, exp = audit["rep"], _expected()
    lum = {r["luminaire"]: r for r in rep["luminaires"]}
    B = A = 0.0
    for name, months in exp.items():
        b = sum(x[0] for x in months.values())
        a = sum(x[1] for x in months.values())
        B, A = B + b, A + a
        assert lum[name]["baseline_kwh"] == pytest.approx(b / 1000, abs=1e-3), name  # to the Wh
        assert lum[name]["actual_kwh_b"] == pytest.approx(a / 1000, abs=1e-3), name
        assert lum[name]["savings_pct_b"] == pytest.approx(100 * (1 - a / b), abs=0.005), name
    row = rep["summary"][1]
    assert row["baseline_kwh"] == pytest.approx(B / 1000, abs=1e-3)
    assert row["actual_kwh"] == pytest.approx(A / 1000, abs=1e-3)
    assert row["savings_pct"] == pytest.approx(100 * (1 - A / B), abs=0.005)
    for m, r in enumerate(rep["monthly"], 1):
        b = sum(exp[n][m][0] for n in exp)
        a = sum(exp[n][m][1] for n in exp)
        assert r["month"] == f"{YEAR}-{m:02d}"
        assert r["baseline_kwh"] == pytest.approx(b / 1000, abs=1e-3), r["month"]
        assert r["actual_kwh_b"] == pytest.approx(a / 1000, abs=1e-3), r["month"]
        assert r["savings_pct_b"] == pytest.approx(100 * (1 - a / b), abs=0.005), r["month"]
    # the reporting period is the calendar year, local midnight to local midnight
    assert rep["inputs"]["period"].startswith(f"{YEAR}-01-01T00:00:00+01:00 to {YEAR + 1}-01-01T00:00:00+01:00")
    assert lum["centre/cab-1/lum-03"]["counter_resets"] == 3
    assert lum["centre/cab-1/lum-04"]["days_in_service"] == 184
    assert rep["headline"].startswith("Option B (the contract figure)")


def test_partial_last_night_is_estimated_and_shown(audit):
    rep = audit["rep"]
    lum = {r["luminaire"]: r for r in rep["luminaires"]}["north/cab-2/lum-01"]
    # its own rate (85 W) over the hours after its last reading: 1 - 85/275 exactly
    assert lum["savings_pct_b"] == pytest.approx(100 * (1 - 85 / 275), abs=0.005)
    assert lum["partial_days"] == 1 and lum["measured_pct"] < 100.0
    _days, on, off = _nights()
    d31 = date(YEAR, 12, 31)
    total = _overlap(on, off, _ts(d31), _ts(d31 + timedelta(days=1)))
    measured = _overlap(on, off, _ts(d31), _ts(d31, 21))
    (row,) = [r for r in rep["partial_nights"] if r["luminaire"] == "north/cab-2/lum-01"]
    assert row["day"] == str(d31) and row["status"] == "partial"
    assert row["measured_pct"] == pytest.approx(100 * measured / total, abs=1e-3)
    assert row["estimated_kwh"] == pytest.approx(85 * (total - measured) / 3600 / 1000, abs=1e-6)


def test_exclude_partial_and_insufficient_data(audit, tmp_path):
    run = CliRunner()
    r = run.invoke(main, [*audit["base"], "--partial", "exclude"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    lum = {x["luminaire"]: x for x in rep["luminaires"]}["north/cab-2/lum-01"]
    _days, on, off = _nights()
    d31 = date(YEAR, 12, 31)
    excluded = _overlap(on, off, _ts(d31, 21), _ts(d31 + timedelta(days=1))) / 3600
    full = _overlap(on, off, _ts(date(YEAR, 1, 1)), _ts(date(YEAR + 1, 1, 1))) / 3600
    assert lum["baseline_kwh"] == pytest.approx(275 * (full - excluded) / 1000, abs=1e-3)
    assert lum["savings_pct_b"] == pytest.approx(100 * (1 - 85 / 275), abs=0.005)
    assert "excluded" in rep["inputs"]["partial_data"]
    # the months add up to the year, baseline and both options, with the hours excluded
    for col, opt in (("baseline_kwh", 1), ("actual_kwh_b", 1), ("actual_kwh_a", 0)):
        total = rep["summary"][opt]["baseline_kwh" if col == "baseline_kwh" else "actual_kwh"]
        assert sum(m[col] for m in rep["monthly"]) == pytest.approx(total, abs=2e-3), col
    # a period with no reading at all: the headline says so, no target verdict
    inv = tmp_path / "other.csv"
    inv.write_text("path,legacy_w,nominal_w\nsouth/cab-9/lum-01,170,40\n")
    base = list(audit["base"])
    base[base.index(str(audit["inv"]))] = str(inv)
    r = run.invoke(main, base)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["headline"].startswith("DATA INSUFFICIENT: 0.00 % of the burning hours measured")
    assert rep["summary"][1]["target_met"] is None and rep["summary"][1]["measured_pct"] == 0.0


def test_night_convention_is_stated(audit):
    r = CliRunner().invoke(main, [*audit["base"], "--convention", "night"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert "local noon to local noon" in rep["inputs"]["period"]
    days, on, off = _nights()
    # nights starting 1 Jan .. 31 Dec: the morning of 1 Jan 2027 in, that of 1 Jan 2026 out
    lum = {x["luminaire"]: x for x in rep["luminaires"]}["centre/cab-1/lum-01"]
    sel = (days >= astro.to_dates([date(YEAR, 1, 1)])[0]) & (days <= astro.to_dates([date(YEAR, 12, 31)])[0])
    assert lum["baseline_kwh"] == pytest.approx(170 * (off - on)[sel].sum() / 3600 / 1000, abs=1e-3)


def test_fingerprint_recomputed_from_an_export(audit):
    rep, tmp = audit["rep"], audit["tmp"]
    inp = rep["inputs"]
    assert inp["data_series"] == len(LUMS) and inp["data_readings"] > 150_000
    assert inp["product"].startswith("city-scada ") and inp["command"].startswith("scada report energy")
    a, b = inp["data_export"].split("--from ")[1].split(" --to ")
    b = b.split(" --out")[0]
    out = tmp / "used.csv"
    r = CliRunner().invoke(main, ["historian", "export", "--store", audit["store"], "--inventory", str(audit["inv"]),
                                  "--from", a, "--to", b, "--out", str(out)])
    assert r.exit_code == 0, r.output
    r2 = CliRunner().invoke(main, ["historian", "fingerprint", str(out), "--status-col", "status"])
    assert f"content sha256: {inp['data_sha256']}" in r2.output
    assert f"{inp['data_readings']:,} readings" in r2.output


def test_store_without_a_location_is_refused(audit):
    base = [a for a in audit["base"] if a not in ("--lat", str(LAT), "--lon", str(LON))]
    r = CliRunner().invoke(main, base)
    assert r.exit_code == 2 and "with --store give --lat, --lon and --tz" in r.output
