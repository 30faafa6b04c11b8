# One module (over ~600 lines): one IPMVP computation (baseline, adjustments, savings, uncertainty) that docs/energy-kpi.md follows step by step.
"""The 65 % energy-savings KPI, computed the IPMVP way (method: docs/energy-kpi.md).

IPMVP framing (EVO, *International Performance Measurement and Verification Protocol*, Core
Concepts 2022):

* **Baseline** - the pre-refurbishment installation: each light point's legacy lamp power
  including ballast losses (``legacy_w``) burning from dusk to dawn.
* **Routine adjustment** - burning hours differ with night length, so the baseline is computed
  for the *reporting period's* nights: ``legacy_w x burning_hours(night)`` from the
  astronomical clock (:func:`scada.astro.burning_hours`, switch-on/off events and offsets as
  the inventory states), or stipulated hours per night when the contract fixes them.
* **Non-routine adjustments** - light points added or removed: each inventory entry has
  ``installed``/``removed`` dates; a point counts in baseline *and* actual only while in
  service, so adding a street neither flatters nor penalises the savings.
* **Reporting period energy**, side by side:

  - Option A (retrofit isolation, key parameter measured): measured full-output LED power
    (mean of the nightly maxima of ``power_w``) x the stipulated burning hours;
  - Option B (retrofit isolation, all parameters measured): the luminaires' D4i energy
    counters ``energy_wh`` (IEC 62386-252 energy reporting);
  - Option C (whole facility): the cabinets' energy meters ``energy_wh``.

Reporting period (docs/energy-kpi.md §2): calendar days, local midnight to local midnight, the
nights at its ends cut at midnight for the baseline hours and the metered energy alike (or, with
``convention="night"``, nights from local noon to local noon). Each night is summarised per
half-night (evening, morning) by :mod:`historian.summary`, reset-aware, once (roll-ups).

Counters (docs/energy-kpi.md §4): between two good readings the counter advances in proportion
to burning time, so its energy at any instant - a midnight, a month's end - is known between its
first and last reading; a reset (reading goes down) counts the new reading from 0; an increase
faster than 3 x the rated power is a meter replacement (not counted, flagged); across a gap the
increase is shared by burning time (*filled*); burning time before the first or after the last
reading is *partial* data: estimated at the point's own Wh per burning hour over its fully
measured half-nights (or its rated ``nominal_w``), or excluded from baseline and actual alike.
The measured share is the share of burning hours covered by readings; under
:data:`MIN_MEASURED_PCT` the headline says the data are insufficient.

Every report carries the inventory's SHA-256 and the fingerprint of the readings it used
(:mod:`historian.fingerprint`).

The inventory (YAML or CSV) is a versioned input: its SHA-256 is printed in every report, so a
figure can be traced to the exact inputs that produced it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import yaml

from scada import astro
from scada import quality as Q

from .base import Backend
from .fingerprint import Fingerprint
from .summary import MatrixView, night_edges, summarize

log = logging.getLogger("historian.energy")

TARGET_PCT = 65.0
#: below this share of the burning hours measured, the headline says the data are insufficient
#: (docs/energy-kpi.md "Completeness"); the inventory's contract may set its own
MIN_MEASURED_PCT = 90.0
MEASURED, FILLED, ESTIMATED, INACTIVE, PARTIAL = 0, 1, 2, 3, 4
#: relative uncertainty assumed for each kind of night (docs/energy-kpi.md "Uncertainty")
U_METER = 0.02  # D4i / cabinet meter accuracy (class 2-like)
U_FILLED = 0.05
U_ESTIMATED = 0.25


@dataclass(slots=True)
class LightPoint:
    path: str
    legacy_w: float
    nominal_w: float = 0.0
    area: str = ""
    cabinet: str = ""
    installed: date | None = None
    removed: date | None = None


@dataclass(slots=True)
class Inventory:
    """Baseline inventory and adjustments (a versioned input)."""

    points: list[LightPoint]
    source: str
    sha256: str
    on: str = "sunset"
    off: str = "sunrise"
    on_offset_s: float = 0.0
    off_offset_s: float = 0.0
    stipulated_hours: float | None = None
    #: routine adjustment from measured on-time: the cabinets' contactor state (``contactor``)
    measured_hours: bool = False
    contract_start: date | None = None
    target_pct: float = TARGET_PCT
    min_measured_pct: float | None = None


def _date(v: Any) -> date | None:
    if v in (None, ""):
        return None
    if isinstance(v, date):
        return v
    return date.fromisoformat(str(v))


#: inventory column aliases (a CSV from an asset register): canonical name -> accepted names
_ALIASES = {"path": ("path", "luminaire", "light_point", "id"), "legacy_w": ("legacy_w", "baseline_w"),
            "lamp_w": ("lamp_w", "legacy_lamp_w"), "ballast_w": ("ballast_w", "ballast_loss_w"),
            "ballast_pct": ("ballast_pct", "ballast_loss_pct"), "nominal_w": ("nominal_w", "led_w", "led_nominal_w"),
            "area": ("area",), "cabinet": ("cabinet",), "installed": ("installed", "commissioned", "commissioning_date"),
            "removed": ("removed", "decommissioned")}


def _field(r: dict[str, Any], name: str) -> Any:
    for k in _ALIASES[name]:
        v = r.get(k)
        if v not in (None, ""):
            return v
    return None


def _legacy_w(r: dict[str, Any]) -> float:
    """``legacy_w`` (lamp + ballast), or ``lamp_w`` plus ``ballast_w`` or ``ballast_pct`` % of it."""
    v = _field(r, "legacy_w")
    if v is not None:
        return float(v)
    lamp = _field(r, "lamp_w")
    if lamp is None:
        raise KeyError("legacy_w (or lamp_w with ballast_w / ballast_pct)")
    w = _field(r, "ballast_w")
    if w is not None:
        return float(lamp) + float(w)
    pct = _field(r, "ballast_pct")
    return float(lamp) * (1.0 + float(pct or 0.0) / 100.0)


def load_inventory(path: str) -> Inventory:
    """Read an inventory file (``.yaml``/``.yml`` or ``.csv``); see docs/energy-kpi.md.

    CSV columns (an asset register's names are accepted too, see ``_ALIASES``): ``path``, the
    legacy power as ``legacy_w`` (lamp + ballast) or ``lamp_w`` with ``ballast_w`` or
    ``ballast_pct``, ``nominal_w`` (LED), ``area``, ``cabinet``, ``installed`` (commissioning
    date), ``removed``. A bad entry is refused with its file, line and field."""
    with open(path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    meta: dict[str, Any] = {}
    if path.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
        where = "line"
        first = 2
    else:
        doc = yaml.safe_load(data) or {}
        if not isinstance(doc, dict) or "luminaires" not in doc:
            raise ValueError(f"{path}: expected a mapping with a 'luminaires' list")
        rows = doc["luminaires"]
        meta = doc
        where, first = "luminaire entry", 1
    pts = []
    for n, r in enumerate(rows, first):
        field_ = "path"
        try:
            p = _field(r, "path")
            if p is None:
                raise KeyError("path")
            field_ = "legacy_w"
            legacy = _legacy_w(r)
            field_ = "nominal_w"
            nominal = float(_field(r, "nominal_w") or 0.0)
            field_ = "installed"
            installed = _date(_field(r, "installed"))
            field_ = "removed"
            removed = _date(_field(r, "removed"))
            if legacy <= 0:
                raise ValueError(f"legacy power must be > 0 W, got {legacy}")
            pts.append(LightPoint(path=str(p), legacy_w=legacy, nominal_w=nominal,
                                  area=str(_field(r, "area") or ""), cabinet=str(_field(r, "cabinet") or ""),
                                  installed=installed, removed=removed))
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: {where} {n}: field {field_}: {e}; expected path, legacy_w (or lamp_w + "
                             "ballast_w / ballast_pct) [, nominal_w, area, cabinet, installed, removed; dates "
                             "as YYYY-MM-DD]") from None
    hours = meta.get("hours") or {}
    contract = meta.get("contract") or {}
    return Inventory(
        pts, path, digest, on=hours.get("on", "sunset"), off=hours.get("off", "sunrise"),
        on_offset_s=float(hours.get("on_offset_s", 0.0)), off_offset_s=float(hours.get("off_offset_s", 0.0)),
        stipulated_hours=(float(hours["stipulated_per_night"]) if hours.get("stipulated_per_night") else None),
        measured_hours=str(hours.get("source", "astronomical")) == "cabinet_on_time",
        contract_start=_date(contract.get("start")), target_pct=float(contract.get("target_pct", TARGET_PCT)),
        min_measured_pct=(float(contract["min_measured_pct"]) if contract.get("min_measured_pct") is not None
                          else None),
    )


def used_series(inv: Inventory) -> list[str]:
    """The series the KPI reads for ``inv``: each luminaire's ``energy_wh`` (option B) and
    ``power_w`` (option A), each cabinet's ``energy_wh`` (option C); sorted."""
    keys = {f"{p.path}/{pt}" for p in inv.points for pt in ("energy_wh", "power_w")}
    keys |= {f"{p.cabinet}/energy_wh" for p in inv.points if p.cabinet}
    return sorted(keys)


def inventory_from_site(site: Any) -> Inventory:
    """Inventory derived from the site's luminaire attributes (``legacy_w``, ``nominal_w``)."""
    pts = []
    for d in site.all_devices():
        if d.kind != "luminaire":
            continue
        legacy = d.attrs.get("legacy_w")
        if legacy is None:
            continue
        pts.append(LightPoint(d.path, float(legacy), float(d.attrs.get("nominal_w") or 0.0), d.area,
                              d.parent or "", _date(d.attrs.get("installed")), _date(d.attrs.get("removed"))))
    canon = json.dumps([[p.path, p.legacy_w, p.nominal_w, p.area, p.cabinet, str(p.installed), str(p.removed)]
                        for p in pts]).encode()
    return Inventory(pts, f"site {site.path} (device attrs)", hashlib.sha256(canon).hexdigest())


@dataclass
class EnergyResult:
    """Every figure of a report (JSON/CSV/HTML render the same object). The luminaire and
    cabinet tables (``luminaires``, ``cabinets``: one row per light point / cabinet) are built
    from their columns when first asked for: a KPI over 34,000 points does not pay for 34,000
    rows it does not show."""

    inputs: dict[str, Any]
    summary: list[dict[str, Any]]
    monthly: list[dict[str, Any]]
    contract_years: list[dict[str, Any]]
    areas: list[dict[str, Any]]
    cabinet_columns: dict[str, Any] = field(repr=False, compare=False)
    worst_cabinets: list[dict[str, Any]]
    luminaire_columns: dict[str, Any] = field(repr=False, compare=False)
    uncertainty: str = ""
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    headline: str = ""
    _luminaires: list[dict[str, Any]] | None = field(default=None, init=False, repr=False, compare=False)
    _cabinets: list[dict[str, Any]] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def luminaires(self) -> list[dict[str, Any]]:
        if self._luminaires is None:
            self._luminaires = _luminaire_rows(self.luminaire_columns)
        return self._luminaires

    @property
    def cabinets(self) -> list[dict[str, Any]]:
        if self._cabinets is None:
            self._cabinets = _cabinet_rows(self.cabinet_columns)
        return self._cabinets

    def as_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "headline": self.headline, "summary": self.summary,
                "monthly": self.monthly, "contract_years": self.contract_years, "areas": self.areas,
                "cabinets": self.cabinets, "worst_cabinets": self.worst_cabinets,
                "luminaires": self.luminaires, "partial_nights": self.tables.get("partial_nights", []),
                "uncertainty": self.uncertainty}


# ---------------------------------------------------------------------------- counters
@dataclass
class Timeline:
    """The half-night buckets of the nights read for a period and the days they make up.

    Nights ``n_0 .. n_{N-1}`` (the period's nights plus one before and one after, whose readings
    carry the counters across the period's ends) are cut at local noon and local midnight into
    ``K = 2N`` buckets (``edges``). Each bucket has its astronomical burning interval
    ``[bs, be]`` (switch-on/off from :func:`scada.astro.night_bounds` clipped to the bucket) and
    its baseline burning ``hours`` (astronomical, or the stipulated hours of the night shared
    in proportion). ``day_of[k]``: the period day (0..D-1) bucket k counts in, or -1: with the
    *calendar* convention a day is local midnight to local midnight (the morning half of the
    previous night and the evening half of its own), with the *night* convention the night
    starting that day (noon to noon).
    """

    edges: np.ndarray
    bs: np.ndarray
    be: np.ndarray
    hours: np.ndarray
    day_of: np.ndarray
    D: int
    convention: str
    tz: str = "UTC"

    @property
    def K(self) -> int:
        return len(self.bs)

    @property
    def Bc(self) -> np.ndarray:
        """Cumulative astronomical burning seconds at each edge."""
        return np.concatenate(([0.0], np.cumsum(self.be - self.bs)))

    def B(self, t: np.ndarray) -> np.ndarray:
        """Cumulative burning seconds at times ``t`` (NaN stays NaN)."""
        t = np.asarray(t, np.float64)
        k = np.clip(np.searchsorted(self.edges, np.nan_to_num(t, nan=self.edges[0]), side="right") - 1,
                    0, self.K - 1)
        out = self.Bc[k] + np.clip(t - self.bs[k], 0.0, self.be[k] - self.bs[k])
        return np.where(np.isnan(t), np.nan, out)

    def per_day(self, x: np.ndarray) -> np.ndarray:
        """Sum bucket values (last axis, K) into the period's days (last axis, D)."""
        x = np.asarray(x, np.float64)
        sel = self.day_of >= 0
        out = np.zeros((*x.shape[:-1], self.D))
        for k in np.flatnonzero(sel).tolist():
            out[..., self.day_of[k]] += x[..., k]
        return out


def timeline(lat: float, lon: float, tz: str, d0: date, d1: date, inv: Inventory, convention: str) -> Timeline:
    if convention not in ("calendar", "night"):
        raise ValueError(f"period convention {convention!r}: expected 'calendar' (local midnight to local "
                         "midnight) or 'night' (local noon to local noon)")
    days = nights(d0 - timedelta(days=1), d1 + timedelta(days=1))
    N, D = len(days), len(days) - 2
    edges = night_edges(days, tz)
    on, off, _ = astro.night_bounds(lat, lon, days, tz, inv.on, inv.off)
    on, off = on + inv.on_offset_s, np.maximum(off + inv.off_offset_s, on + inv.on_offset_s)
    lo, hi = edges[:-1], edges[1:]
    on_k, off_k = np.repeat(on, 2), np.repeat(off, 2)
    bs = np.clip(on_k, lo, hi)
    be = np.maximum(np.clip(off_k, lo, hi), bs)
    hours = (be - bs) / 3600.0
    if inv.stipulated_hours is not None:
        night_h = hours.reshape(N, 2).sum(1)
        share = np.where(night_h[:, None] > 0, hours.reshape(N, 2) / np.where(night_h > 0, night_h, 1.0)[:, None],
                         0.5)
        hours = (inv.stipulated_hours * share).reshape(-1)
    k = np.arange(2 * N)
    if convention == "calendar":
        day_of = np.where((k >= 1) & (k <= 2 * D), (k - 1) // 2, -1)
    else:
        day_of = np.where((k >= 2) & (k < 2 * D + 2), k // 2 - 1, -1)
    return Timeline(edges, bs, be, hours, day_of.astype(np.int64), D, convention, tz)


@dataclass
class CounterTotals:
    """Energy (Wh) of counter series over the period's days, in two parts.

    ``fast`` series (a good reading in every half-night, no implausible jump: one streaming
    pass over the nights, see :func:`counter_totals`) are given as totals only: ``e_l`` per
    series and ``e_d`` per day. The others (``idx``) per day: ``energy``, ``status`` and the
    burning hours ``meas_h`` (covered by readings in the day), ``fill_h`` (inside a gap: the
    increase across it is known, its share interpolated), ``est_h`` (not covered: estimated).
    """

    fast: np.ndarray
    e_l: np.ndarray
    e_d: np.ndarray
    idx: np.ndarray
    energy: np.ndarray
    status: np.ndarray
    meas_h: np.ndarray
    fill_h: np.ndarray
    est_h: np.ndarray
    est_e: np.ndarray
    resets: np.ndarray
    replacements: np.ndarray
    readings: np.ndarray
    lanes: np.ndarray
    t_first: np.ndarray
    t_last: np.ndarray
    n_slow: int = 0


_HALF = ("first_t", "first_v", "last_t", "last_v", "count", "inc")


def _buckets(c: dict[str, np.ndarray], f: str) -> np.ndarray:
    """[series, K] of a half-night field from its evening and morning [series, N] arrays."""
    e, m = c["e_" + f], c["m_" + f]
    out = np.empty((e.shape[0], 2 * e.shape[1]))
    out[:, 0::2], out[:, 1::2] = e, m
    return out


def _exact(tl: Timeline, max_w: np.ndarray, c: dict[str, np.ndarray], period: np.ndarray, partial: str
           ) -> dict[str, np.ndarray]:
    """Energy, status and hours per series and day (docs/energy-kpi.md §4) from half-night
    summaries ``c`` ([series, night] arrays): the counter's energy at each bucket edge is
    interpolated between the readings around it in proportion to burning time; a bucket's
    measured energy is the difference at its edges; burning time outside the first..last
    reading is estimated at the series' own rate (or excluded)."""
    ft, fv, lt, lv = (_buckets(c, f) for f in ("first_t", "first_v", "last_t", "last_v"))
    cnt, inc = _buckets(c, "count"), _buckets(c, "inc")
    S, K = cnt.shape
    rate = (max_w / 3600.0)[:, None]
    has = cnt > 0
    ar = np.arange(K)
    last_upto = np.maximum.accumulate(np.where(has, ar, -1), axis=1)
    next_from = np.minimum.accumulate(np.where(has, ar, K)[:, ::-1], axis=1)[:, ::-1]
    prevd = np.concatenate([np.full((S, 1), -1), last_upto[:, :-1]], axis=1)
    okx = has & (prevd >= 0)
    pi = np.maximum(prevd, 0)
    lv_p = np.take_along_axis(lv, pi, 1)
    lt_p = np.take_along_axis(lt, pi, 1)
    with np.errstate(invalid="ignore"):
        x = fv - lv_p
        rx = okx & (x < 0)  # reset between two half-nights: the new reading counts from 0
        x = np.where(rx, fv, x)
        jump = okx & (x > rate * np.maximum(ft - lt_p, 1.0) + 1e-9)
    x = np.where(okx & ~jump, x, 0.0)
    inc = np.where(has, inc, 0.0)
    ecum = np.cumsum(x + inc, axis=1)  # energy at each data bucket's last reading
    # energy at the edges: between the last data bucket before the edge and the first after it
    p_e = np.concatenate([np.full((S, 1), -1), last_upto], axis=1)  # [S, K+1]
    n_e = np.concatenate([next_from, np.full((S, 1), K)], axis=1)
    defined = (p_e >= 0) & (n_e < K)
    pe, ne = np.maximum(p_e, 0), np.minimum(n_e, K - 1)
    Bc = tl.Bc
    b_lo = tl.B(np.take_along_axis(lt, pe, 1))
    b_hi = tl.B(np.take_along_axis(ft, ne, 1))
    den = b_hi - b_lo
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(defined & (den > 0), (Bc[None, :] - b_lo) / np.where(den > 0, den, 1.0), 0.0)
    w = np.clip(w, 0.0, 1.0)
    e_edge = np.where(defined, np.take_along_axis(ecum, pe, 1) + np.take_along_axis(x, ne, 1) * w, np.nan)
    # the first and last reading bound what is measured
    f_b = next_from[:, 0]
    l_b = last_upto[:, -1]
    any_data = f_b < K
    fi, li = np.minimum(f_b, K - 1), np.maximum(l_b, 0)
    T0 = np.where(any_data, ft[np.arange(S), fi], np.nan)
    T1 = np.where(any_data, lt[np.arange(S), li], np.nan)
    e_T0 = np.where(any_data, ecum[np.arange(S), fi] - inc[np.arange(S), fi], np.nan)
    e_T1 = np.where(any_data, ecum[np.arange(S), li], np.nan)
    lo_e = np.where(defined[:, :-1], e_edge[:, :-1], np.where(ar[None, :] == f_b[:, None], e_T0[:, None], np.nan))
    hi_e = np.where(defined[:, 1:], e_edge[:, 1:], np.where(ar[None, :] == l_b[:, None], e_T1[:, None], np.nan))
    meas_e = np.nan_to_num(hi_e - lo_e)
    # burning time of each bucket covered by [T0, T1]
    edges = tl.edges
    a_ = np.maximum(edges[None, :-1], T0[:, None])
    b_ = np.minimum(edges[None, 1:], T1[:, None])
    cov_s = np.where(b_ > a_, tl.B(b_) - tl.B(a_), 0.0)
    cov_s = np.nan_to_num(cov_s)
    burn = (tl.be - tl.bs)[None, :]
    inside = (T0[:, None] <= edges[None, :-1]) & (edges[None, 1:] <= T1[:, None])
    share = np.where(burn > 0, np.clip(cov_s / np.where(burn > 0, burn, 1.0), 0.0, 1.0), inside.astype(float))
    share = np.where(share >= 1.0 - 1e-9, 1.0, share)  # cumulative sums round: covered is covered
    h = tl.hours[None, :]
    meas_h = np.where(has, h * share, 0.0)
    fill_h = np.where(has, 0.0, h * share)
    est_h = h * (1.0 - share)
    # own rate over fully measured buckets (a reading in it and in both neighbours)
    full = has & np.concatenate([np.zeros((S, 1), bool), has[:, :-1]], 1) & np.concatenate(
        [has[:, 1:], np.zeros((S, 1), bool)], 1) & (h > 0) & (share >= 1.0 - 1e-9)
    e_full = np.where(full, meas_e, 0.0).sum(1)
    h_full = np.where(full, h, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        own = np.where(h_full > 0, e_full / h_full, max_w / 3.0)
    est_e = own[:, None] * est_h
    energy = meas_e + (est_e if partial == "estimate" else 0.0)
    resets = (rx & period[None, :]).sum(1) + c["resets"][:, 1:-1].sum(1)
    return {"energy": tl.per_day(energy), "meas_h": tl.per_day(meas_h), "fill_h": tl.per_day(fill_h),
            "est_h": tl.per_day(est_h), "est_e": tl.per_day(est_e), "resets": resets,
            "repl": (jump & period[None, :]).sum(1)}


def _day_status(meas_h: np.ndarray, fill_h: np.ndarray, est_h: np.ndarray) -> np.ndarray:
    eps = 1e-9
    st = np.full(meas_h.shape, PARTIAL, np.int8)
    st[(est_h <= eps) & (fill_h <= eps)] = MEASURED
    st[(est_h <= eps) & (fill_h > eps)] = FILLED
    st[(meas_h + fill_h <= eps) & (est_h > eps)] = ESTIMATED
    st[(meas_h + fill_h + est_h <= eps)] = MEASURED  # no burning at all that day (polar day)
    return st


def _fast_pass(src: Any, tl: Timeline, max_w: np.ndarray, candidates: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Streaming over the half-nights, a row of all the series at a time (no [series, night]
    matrix): which ``candidates`` have a good reading in every half-night and no increase faster
    than plausible (the series whose nights :func:`_exact` would compute as all measured), and
    for those the energy per series and per day and the resets, exactly as :func:`_exact`."""
    S = len(max_w)
    N = tl.K // 2
    rate = max_w / 3600.0
    ok = candidates.copy()
    lvp = ltp = None
    x, dt = np.empty(S), np.empty(S)
    rate_tol = rate + 1e-9
    for j in range(N):
        # the night's fastest increase covers its own pairs and the one across its midnight
        ok &= src.night(j, "rmax") <= rate_tol
        ok &= src.night(j, "e_count") > 0
        ok &= src.night(j, "m_count") > 0
        fv, ft = src.night(j, "e_first_v"), src.night(j, "e_first_t")
        if lvp is not None:  # the increase across the noon edge from the night before
            np.subtract(fv, lvp, out=x)
            np.copyto(x, fv, where=x < 0)
            np.subtract(ft, ltp, out=dt)
            np.maximum(dt, 1.0, out=dt)
            np.multiply(dt, rate, out=dt)
            with np.errstate(invalid="ignore"):
                ok &= x <= dt + 1e-9
        lvp, ltp = src.night(j, "m_last_v"), src.night(j, "m_last_t")
    fast = ok
    e_l = np.zeros(S)
    e_d = np.zeros(tl.D)
    resets = np.zeros(S)
    if not fast.any():
        return fast, e_l, e_d, resets
    # second pass over the fast series only (a gather per row unless every series is fast):
    # nothing but finite numbers, so plain sums (np.dot would go through BLAS: slow here)
    fi = None if fast.all() else np.flatnonzero(fast)
    F = S if fi is None else len(fi)

    def row(j: int, f: str) -> np.ndarray:
        r = src.night(j, f)
        return r if fi is None else r[fi]

    e_f, res_f = np.zeros(F), np.zeros(F)
    x, en_prev = np.empty(F), np.zeros(F)
    bef, aft, den, w = np.empty(F), np.empty(F), np.empty(F), np.empty(F)
    lvp = ltp = None
    k = 0
    for j in range(N):
        if 1 <= j < N - 1:
            res_f += row(j, "resets")
        for half in ("e_", "m_"):
            fv, ft, inc = row(j, half + "first_v"), row(j, half + "first_t"), row(j, half + "inc")
            if k == 0:
                en = inc.copy()
            else:
                np.subtract(fv, lvp, out=x)
                neg = x < 0
                np.copyto(x, fv, where=neg)
                if tl.day_of[k] >= 0:
                    res_f += neg
                # the increase across edge k: its share before the edge is the burning time
                # from the last reading to the edge over the burning time between the readings
                # (both 0 when nothing burns: then all of it after the edge)
                if float(ltp.min()) >= tl.be[k - 1]:  # nothing burns before the edge (noon)
                    w.fill(0.0)
                elif float(ft.max()) <= max(tl.bs[k], tl.edges[k]):
                    # nothing burns between the edge and the next reading (a reading on the
                    # midnight edge, or lamps not yet on): all of it before the edge, where
                    # something burnt after the last reading
                    if tl.be[k - 1] <= tl.bs[k - 1]:
                        w.fill(0.0)
                    else:
                        np.multiply(x, ltp < tl.be[k - 1], out=w)
                else:
                    np.maximum(ltp, tl.bs[k - 1], out=bef)
                    np.subtract(tl.be[k - 1], bef, out=bef)
                    np.maximum(bef, 0.0, out=bef)
                    np.minimum(ft, tl.be[k], out=aft)
                    np.subtract(aft, tl.bs[k], out=aft)
                    np.maximum(aft, 0.0, out=aft)
                    np.add(bef, aft, out=den)
                    np.maximum(den, 1e-30, out=den)
                    np.divide(bef, den, out=w)
                    np.multiply(w, x, out=w)
                en_prev += w
                d = tl.day_of[k - 1]
                if d >= 0:
                    e_f += en_prev
                    e_d[d] += float(en_prev.sum())
                en = x - w + inc
            en_prev = en
            lvp, ltp = row(j, half + "last_v"), row(j, half + "last_t")
            k += 1
    if fi is None:
        return fast, e_f, e_d, res_f
    e_l[fi], resets[fi] = e_f, res_f
    return fast, e_l, e_d, resets


def counter_totals(backend: Backend, keys: Sequence[str], tl: Timeline, max_w: np.ndarray,
                   progress: Callable[[str], None] | None = None, src: Any = None,
                   fast_ok: np.ndarray | None = None, partial: str = "estimate") -> CounterTotals:
    """Energy (Wh) of counter series over the period's days (see :class:`CounterTotals`).

    ``src``: per-night summaries (:class:`historian.rollup.RollupView`, or None: computed from
    the raw readings). ``fast_ok``: the series that may be given as totals only (for the KPI:
    those in service every day); None: every series day by day. Series with an increase faster
    than ``max_w`` allows are summarised again from their raw readings with that bound (the jump
    is a meter replacement: not counted, flagged)."""
    S, N = len(keys), tl.K // 2
    if src is None:
        src = MatrixView(summarize(backend, keys, tl.edges))
    # readings, fingerprint lanes, time range: a pass over the nights
    readings = np.zeros(S)
    lanes = np.zeros((4, S))
    for j in range(N):
        readings += src.block(j, "e_count", 3).sum(axis=0)  # good readings of both halves, bad ones
        lanes += src.block(j, "h0", 4)
    # the time range of the good readings: the first night with any from the start, the last
    # one from the end (only the range over all series is reported)
    t_lo = t_hi = np.nan
    for j in range(N):
        t_lo = np.fmin.reduce(np.fmin(src.night(j, "e_first_t"), src.night(j, "m_first_t")))
        if not np.isnan(t_lo):
            break
    for j in reversed(range(N)):
        t_hi = np.fmax.reduce(np.fmax(src.night(j, "e_last_t"), src.night(j, "m_last_t")))
        if not np.isnan(t_hi):
            break
    t_first = np.full(S, t_lo if np.isfinite(t_lo) else np.inf)
    t_last = np.full(S, t_hi if np.isfinite(t_hi) else -np.inf)
    lanes = np.mod(lanes, 4294967296.0)
    if fast_ok is not None and fast_ok.any():
        fast, e_l, e_d, res_f = _fast_pass(src, tl, max_w, np.asarray(fast_ok, bool))
    else:
        fast, e_l, e_d, res_f = np.zeros(S, bool), np.zeros(S), np.zeros(tl.D), np.zeros(S)
    idx = np.flatnonzero(~fast)
    D = tl.D
    out = {f: np.zeros((len(idx), D)) for f in ("energy", "meas_h", "fill_h", "est_h", "est_e")}
    resets, repl = res_f.copy(), np.zeros(S)
    period = tl.day_of >= 0
    n_slow = 0
    fields = [*(h + f for h in ("e_", "m_") for f in _HALF), "resets", "rmax"]
    for i0 in range(0, len(idx), 2048):  # a few thousand series: temporaries stay in cache
        sel = idx[i0 : i0 + 2048]
        c = src.take(sel, fields)
        mw = max_w[sel]
        jumpy = (c["rmax"] > (mw / 3600.0)[:, None] + 1e-9).any(axis=1)
        if jumpy.any():  # meter replacements: those series again from raw, jumps not counted
            js = sel[jumpy]
            again = summarize(backend, [keys[i] for i in js.tolist()], tl.edges, max_w[js] / 3600.0)
            for f in fields:
                c[f][jumpy] = again[f].T
            repl[js] += again["repl"][1:-1].sum(0)
            n_slow += len(js)
        r = _exact(tl, mw, c, period, partial)
        for f in out:
            out[f][i0 : i0 + len(sel)] = r[f]
        resets[sel] = r["resets"]
        repl[sel] += r["repl"]
    if n_slow and progress:
        progress(f"{n_slow} counters with implausible jumps were read raw")
    status = _day_status(out["meas_h"], out["fill_h"], out["est_h"])
    return CounterTotals(fast, e_l, e_d, idx, out["energy"], status, out["meas_h"], out["fill_h"], out["est_h"],
                         out["est_e"], resets, repl, readings, lanes, t_first, t_last, n_slow)


def counter_energy(backend: Backend, keys: Sequence[str], tl: Timeline, max_w: np.ndarray,
                   progress: Callable[[str], None] | None = None, src: Any = None,
                   partial: str = "estimate") -> CounterTotals:
    """Every series day by day (cabinet meters, tests): :func:`counter_totals` without totals."""
    return counter_totals(backend, keys, tl, max_w, progress, src, None, partial)


def cabinet_on_hours(backend: Backend, cabs: Sequence[str], edges: np.ndarray, fallback: np.ndarray
                     ) -> tuple[np.ndarray, int]:
    """Hours each cabinet's contactor was closed per night ``[edges[k], edges[k+1])``, from the
    recorded ``<cabinet>/contactor`` state (a state holds until the next recorded one; a bad
    status ends it). Nights without any good contactor state use ``fallback`` (astronomical
    hours). Returns (hours[C, D], number of measured cabinet-nights)."""
    from .query import _cum_chunked

    D = len(edges) - 1
    out = np.tile(np.asarray(fallback, np.float64), (len(cabs), 1))
    n = 0
    for c, cab in enumerate(cabs):
        raw = backend.read_raw(f"{cab}/contactor", float(edges[0]) - 86400.0, float(edges[-1]))
        if not len(raw):
            continue
        good = Q.good_mask(raw.q) & ~np.isnan(raw.v)
        t_end = np.append(raw.t[1:], edges[-1])
        a = np.maximum(raw.t, edges[0])
        b = np.minimum(t_end, edges[-1])
        use = good & (b > a)
        on = use & (raw.v > 0.5)
        on_s = np.diff(_cum_chunked(edges, a[on], b[on], np.ones(int(on.sum()))))
        known_s = np.diff(_cum_chunked(edges, a[use], b[use], np.ones(int(use.sum()))))
        measured = known_s > 0.5 * np.diff(edges)  # at least half the night has a known state
        out[c, measured] = on_s[measured] / 3600.0
        n += int(measured.sum())
    return out[:, :D], n


# ---------------------------------------------------------------------------- KPI
def nights(d0: date, d1: date) -> np.ndarray:
    """Local dates d0..d1 inclusive as days since the epoch."""
    return np.arange(astro.to_dates([d0])[0], astro.to_dates([d1])[0] + 1, dtype=np.int64)


def compute(
    backend: Backend,
    inventory: Inventory,
    *,
    lat: float,
    lon: float,
    tz: str,
    d0: date,
    d1: date,
    area: str | None = None,
    cabinet_meters: bool = True,
    progress: Callable[[str], None] | None = None,
    rollups: Any = None,
    convention: str = "calendar",
    partial: str = "estimate",
    min_measured_pct: float | None = None,
) -> EnergyResult:
    """Savings of the days ``d0..d1`` (inclusive) for the inventory (see module doc).

    ``convention``: ``calendar`` (the period is local midnight of ``d0`` to local midnight after
    ``d1``; nights are cut at the boundaries, baseline hours and metered energy alike) or
    ``night`` (the nights starting ``d0..d1``, local noon to local noon). ``partial``: burning
    time not covered by readings is ``estimate``d at the luminaire's own rate, or ``exclude``d
    from baseline and actual alike. ``min_measured_pct`` (default: the inventory's, else
    :data:`MIN_MEASURED_PCT`): below that share of burning hours measured the headline says the
    data are insufficient. ``rollups`` (:class:`historian.rollup.Rollups`; None: a temporary
    one): the per-night summaries, missing or stale nights computed first.

    Nothing of size luminaires x days is built for the points in service over the whole period
    whose counters have a reading in every half-night: their energy is summed while the nights
    are read (:func:`counter_totals`). The others are computed day by day.
    """
    if partial not in ("estimate", "exclude"):
        raise ValueError(f"partial {partial!r}: expected 'estimate' or 'exclude'")
    if rollups is None:
        # without a roll-up store, the nights are summarised into a temporary one: the same
        # computation, memory bounded by a run of nights whatever the period
        import shutil
        import tempfile

        from .rollup import Rollups

        tmp = tempfile.mkdtemp(prefix="kpi-rollups-")
        try:
            return compute(backend, inventory, lat=lat, lon=lon, tz=tz, d0=d0, d1=d1, area=area,
                           cabinet_meters=cabinet_meters, progress=progress, rollups=Rollups(tmp),
                           convention=convention, partial=partial, min_measured_pct=min_measured_pct)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    say = progress or (lambda m: None)
    pts = [p for p in inventory.points if area is None or p.area == area]
    if not pts:
        raise ValueError(f"no luminaire in the inventory{f' for area {area!r}' if area else ''}")
    tl = timeline(lat, lon, tz, d0, d1, inventory, convention)
    D, K = tl.D, tl.K
    hours = tl.per_day(tl.hours)
    L = len(pts)
    nd = nights(d0, d1)
    inst, rem, legacy, nominal = _point_arrays(inventory, area, pts)
    # each point is in service over the days [a, b) of the period (days are consecutive)
    a_l = np.clip(inst - nd[0], 0, D)
    b_l = np.maximum(np.clip(rem - nd[0], 0, D), a_l)
    cab_of = [p.cabinet for p in pts]
    cabs = sorted(set(cab_of) - {""})
    cab_ix = {c: i for i, c in enumerate(cabs)}
    lum_cab = np.fromiter((cab_ix.get(c, -1) for c in cab_of), np.int64, L)
    C = len(cabs)
    measured_note = ""
    if inventory.measured_hours and cabs:
        say("routine adjustment: measured cabinet on-time")
        h_cab, n_meas = cabinet_on_hours(backend, cabs, tl.edges, tl.hours)
        hours_g = np.vstack([tl.per_day(h_cab), hours[None, :]])
        grp = np.where(lum_cab >= 0, lum_cab, C)
        measured_note = (f"; measured on-time for {n_meas} of {C * K} cabinet half-nights, "
                         "astronomical hours for the others")
    else:
        hours_g = hours[None, :]
        grp = np.zeros(L, np.int64)
    G = len(hours_g)
    cum_h = np.zeros((G, D + 1))
    np.cumsum(hours_g, axis=1, out=cum_h[:, 1:])
    in_service_h = cum_h[grp, b_l] - cum_h[grp, a_l]

    def in_service(w: np.ndarray, g: np.ndarray, n_g: int, a: np.ndarray = a_l, b: np.ndarray = b_l
                   ) -> np.ndarray:
        """[group, day]: sum of ``w`` over the points of each group in service that day."""
        flat = np.concatenate([g * (D + 1) + a, g * (D + 1) + b])
        m = np.bincount(flat, np.concatenate([w, -w]), minlength=n_g * (D + 1)).reshape(n_g, D + 1)
        return np.cumsum(m[:, :D], axis=1)

    act_l = b_l - a_l
    act_d = np.round(in_service(np.ones(L), np.zeros(L, np.int64), 1)[0]).astype(np.int64)
    leg_g = in_service(legacy, grp, G)
    base_l = legacy * in_service_h  # Wh
    base_d = (hours_g * leg_g).sum(0)
    act_hd = (hours_g * in_service(np.ones(L), grp, G)).sum(0)  # luminaire burning hours per day
    say(f"baseline: {L} light points x {D} days ({convention} periods)")

    night_dates = [d0 - timedelta(days=1) + timedelta(days=k) for k in range(D + 2)]

    def summaries(keys: list[str]) -> Any:
        if rollups is None:
            return None
        rollups.update(backend, keys, tz, night_dates[0], night_dates[-1])
        return rollups.view(keys, night_dates)

    # Option B: luminaire counters
    say("option B: luminaire energy counters")
    max_w = 3.0 * np.maximum(nominal, 1.0)
    e_keys = [f"{p.path}/energy_wh" for p in pts]
    ct = counter_totals(backend, e_keys, tl, max_w, say, summaries(e_keys), fast_ok=(a_l == 0) & (b_l == D),
                        partial=partial)
    X = ct.idx
    n = np.arange(D)
    act_x = (n[None, :] >= a_l[X, None]) & (n[None, :] < b_l[X, None])
    eb_x = np.where(act_x, ct.energy, 0.0)
    st_x = np.where(act_x, ct.status, INACTIVE)
    h_x = hours_g[grp[X]] if G > 1 else np.broadcast_to(hours[None, :], (len(X), D))
    # hours measured / filled / estimated, scaled to the group's baseline hours of the day
    with np.errstate(invalid="ignore", divide="ignore"):
        tot_x = ct.meas_h + ct.fill_h + ct.est_h
        scale = np.where(tot_x > 0, h_x / np.where(tot_x > 0, tot_x, 1.0), 0.0)
    mh_x = np.where(act_x, ct.meas_h * scale, 0.0)
    fh_x = np.where(act_x, ct.fill_h * scale, 0.0)
    eh_x = np.where(act_x, ct.est_h * scale, 0.0)
    ee_x = np.where(act_x, ct.est_e, 0.0)
    eb_l = ct.e_l.copy()
    eb_l[X] = eb_x.sum(1)
    eb_d = ct.e_d + eb_x.sum(0)
    excl_l = np.zeros(L)  # burning hours excluded (partial="exclude")
    if partial == "exclude" and len(X):
        excl_l[X] = eh_x.sum(1)
        base_l = base_l - legacy * excl_l
        base_d = base_d - (legacy[X, None] * eh_x).sum(0)
    fast_h = np.where(ct.fast, in_service_h, 0.0)
    mh_l = fast_h.copy()
    mh_l[X] = mh_x.sum(1)
    mh_d = (hours_g * in_service(ct.fast.astype(float), grp, G)).sum(0) + mh_x.sum(0)
    counts = {}
    for name, code in (("meas", MEASURED), ("fill", FILLED), ("est", ESTIMATED), ("part", PARTIAL)):
        c_l = np.zeros(L, np.int64)
        c_l[X] = (st_x == code).sum(1)
        counts[name] = c_l
    counts["meas"] = counts["meas"] + np.where(ct.fast, act_l, 0)
    meas_d = int(ct.fast.sum()) + (st_x == MEASURED).sum(0)
    e_est = float(ee_x.sum()) if partial == "estimate" else 0.0
    e_fill = float(eb_x[st_x == FILLED].sum())
    e_by_status = (float(eb_l.sum()) - e_fill - e_est, e_fill, e_est)
    partial_rows = _partial_rows(pts, X, st_x, mh_x, fh_x, eh_x, ee_x, nd, partial)

    # Option A: measured full-output power x burning hours
    say("option A: measured LED power x burning hours")
    p_keys = [f"{p.path}/power_w" for p in pts]
    if set(p_keys).isdisjoint(backend.series("*/power_w")):
        p_led = nominal  # no power recorded: rated power stands in
    else:
        pv = summaries(p_keys)
        if pv is None:
            pv = MatrixView(summarize(backend, p_keys, tl.edges))
        # nights it never lit say nothing about its power: the mean of the nightly maxima > 1 W
        p_sum, n_p = np.zeros(L), np.zeros(L, np.int64)
        for j in range(1, D + 1):
            pmax = pv.night(j, "vmax")
            with np.errstate(invalid="ignore"):
                lit = pmax > 1.0
            p_sum += np.where(lit, pmax, 0.0)
            n_p += lit
        p_led = np.where(n_p > 0, p_sum / np.maximum(n_p, 1), nominal)
    ea_l = p_led * (in_service_h - excl_l)
    ea_d = (hours_g * in_service(p_led, grp, G)).sum(0)
    if partial == "exclude" and len(X):
        ea_d = ea_d - (p_led[X, None] * eh_x).sum(0)

    # Option C: cabinet meters against the baseline of the points behind each cabinet
    ec = np.zeros((C, D))
    st_c = np.zeros((C, D), np.int8)
    ec_valid = np.zeros(C, bool)
    c_totals = None
    if cabinet_meters and cabs and not {f"{c}/energy_wh" for c in cabs}.isdisjoint(backend.series("*/energy_wh")):
        say("option C: cabinet energy meters")
        cab_max = np.zeros(C)
        np.add.at(cab_max, lum_cab[lum_cab >= 0], 3.0 * legacy[lum_cab >= 0])
        c_keys = [f"{c}/energy_wh" for c in cabs]
        c_totals = counter_energy(backend, c_keys, tl, np.maximum(cab_max, 1.0), say, summaries(c_keys))
        ec, st_c = c_totals.energy, c_totals.status
        present = c_totals.readings > 0
        ec = np.where(present[:, None], ec, np.nan)  # a cabinet without a meter: no option C
        ec_valid = ~np.isnan(ec).any(axis=1)
    if not ec_valid.any():
        base_cab = np.zeros((0, D))
    elif G > 1:
        base_cab = hours_g[:C][ec_valid] * leg_g[:C][ec_valid]
    else:
        v_ix = np.cumsum(ec_valid) - 1
        on_cab = lum_cab >= 0
        on_cab[on_cab] = ec_valid[lum_cab[on_cab]]
        base_cab = hours[None, :] * in_service(legacy[on_cab], v_ix[lum_cab[on_cab]], int(ec_valid.sum()),
                                               a_l[on_cab], b_l[on_cab])

    say("aggregating")
    fp = Fingerprint()
    used = [(e_keys, ct)] + ([(c_keys, c_totals)] if c_totals is not None else [])
    for keys_, tot in used:
        fp.add_arrays(keys_, tot.readings, tot.lanes, tot.t_first, tot.t_last)
    lum = {"base": base_l, "eb": eb_l, "ea": ea_l, "act": act_l, "meas": counts["meas"], "fill": counts["fill"],
           "est": counts["est"], "part": counts["part"], "resets": ct.resets, "repl": ct.replacements,
           "mh": mh_l, "h": in_service_h, "readings": ct.readings}
    night = {"base": base_d, "eb": eb_d, "ea": ea_d, "act": act_d, "meas": meas_d, "mh": mh_d, "h": act_hd}
    threshold = (min_measured_pct if min_measured_pct is not None else
                 inventory.min_measured_pct if inventory.min_measured_pct is not None else MIN_MEASURED_PCT)
    res = _assemble(inventory, pts, nd, hours, lum, night, e_by_status, cabs, lum_cab, ec_valid, base_cab, ec,
                    st_c, backend, d0, d1, area, tl, partial, threshold, fp, e_keys)
    res.inputs["hours_method"] += measured_note
    res.tables["partial_nights"] = partial_rows
    return res


_ARRAYS: dict[tuple[int, str | None], tuple[Any, tuple[np.ndarray, ...]]] = {}


def _point_arrays(inv: Inventory, area: str | None, pts: list[LightPoint]) -> tuple[np.ndarray, ...]:
    """(installed, removed as days since the epoch; legacy W, nominal W) of the points, kept for
    the next report on the same inventory in this process (an inventory is not changed once
    loaded: a new file is a new Inventory)."""
    hit = _ARRAYS.get((id(inv.points), area))
    if hit is not None and hit[0] is inv.points:
        return hit[1]
    L, e_ord = len(pts), astro._EPOCH_ORD
    arrays = (np.fromiter((p.installed.toordinal() - e_ord if p.installed else -(10**9) for p in pts), np.int64, L),
              np.fromiter((p.removed.toordinal() - e_ord if p.removed else 10**9 for p in pts), np.int64, L),
              np.fromiter((p.legacy_w for p in pts), np.float64, L),
              np.fromiter((p.nominal_w or p.legacy_w / 2.0 for p in pts), np.float64, L))
    if len(_ARRAYS) > 8:
        _ARRAYS.clear()
    _ARRAYS[(id(inv.points), area)] = (inv.points, arrays)
    return arrays


def _partial_rows(pts: list[LightPoint], X: np.ndarray, st: np.ndarray, mh: np.ndarray, fh: np.ndarray,
                  eh: np.ndarray, ee: np.ndarray, nd: np.ndarray, partial: str) -> list[dict[str, Any]]:
    """One row per luminaire-day not fully measured (partial, filled or estimated)."""
    rows = []
    names = {MEASURED: "measured", FILLED: "filled", ESTIMATED: "estimated", PARTIAL: "partial"}
    for i, k in np.argwhere((st == PARTIAL) | (st == FILLED) | (st == ESTIMATED)).tolist():
        tot = mh[i, k] + fh[i, k] + eh[i, k]
        rows.append({"luminaire": pts[int(X[i])].path,
                     "day": str(date.fromordinal(int(nd[k]) + astro._EPOCH_ORD)), "status": names[int(st[i, k])],
                     "burning_h": round(float(tot), 4),
                     "measured_pct": round(100.0 * float(mh[i, k]) / tot, 3) if tot > 0 else None,
                     "filled_pct": round(100.0 * float(fh[i, k]) / tot, 3) if tot > 0 else None,
                     "estimated_kwh": round(float(ee[i, k]) / 1000.0, 6) if partial == "estimate" else None,
                     "treatment": ("estimated at the luminaire's own rate" if partial == "estimate"
                                   else "excluded from baseline and actual") if eh[i, k] > 1e-9 else
                     "increase across the gap shared by burning hours"})
    return rows


def _pct(saved: float, base: float) -> float | None:
    return round(100.0 * saved / base, 3) if base > 0 else None


def _kwh(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x / 1000.0, 4)


def _luminaire_rows(c: dict[str, Any]) -> list[dict[str, Any]]:
    """The luminaire table from its columns (built when a report asks for it)."""
    return [
        {"luminaire": p.path, "cabinet": p.cabinet, "area": p.area, "legacy_w": p.legacy_w,
         "baseline_kwh": _kwh(b), "actual_kwh_b": _kwh(a), "savings_pct_b": _pct(b - a, b),
         "days_in_service": int(n_act),
         "measured_pct": round(100.0 * mh / h, 3) if h > 0 else None,
         "measured_days": int(m_), "partial_days": int(pa_), "filled_days": int(f_), "estimated_days": int(e_),
         "counter_resets": int(r_), "meter_replacements": int(x_), "readings": int(rd_)}
        for p, b, a, n_act, mh, h, m_, pa_, f_, e_, r_, x_, rd_ in zip(
            c["points"], c["base"].tolist(), c["eb"].tolist(), c["act"].tolist(), c["mh"].tolist(), c["h"].tolist(),
            c["meas"].tolist(), c["part"].tolist(), c["fill"].tolist(), c["est"].tolist(), c["resets"].tolist(),
            c["repl"].tolist(), c["readings"].tolist(), strict=True)
    ]


def _group_rows(cc: dict[str, Any], name: str, sel: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Rows of the groups ``sel`` (all by default) from their sums (see ``group_cols``)."""
    ks = range(len(cc["lab"])) if sel is None else sel.tolist()
    n, gb, ga, gaa, gmh, gh = (cc[k].tolist() for k in ("n", "base", "eb", "ea", "mh", "h"))
    return [{name: str(cc["lab"][k]), "luminaires": int(n[k]), "baseline_kwh": _kwh(gb[k]),
             "actual_kwh_b": _kwh(ga[k]), "actual_kwh_a": _kwh(gaa[k]), "savings_pct_b": _pct(gb[k] - ga[k], gb[k]),
             "measured_pct": round(100.0 * gmh[k] / gh[k], 3) if gh[k] > 0 else None}
            for k in ks]


def _cabinet_rows(cc: dict[str, Any], sel: np.ndarray | None = None) -> list[dict[str, Any]]:
    """The cabinet table (or its rows ``sel``), with option C where the cabinet has a meter."""
    rows = _group_rows(cc, "cabinet", sel)
    for k, r in zip(range(len(rows)) if sel is None else sel.tolist(), rows, strict=True):
        r["area"] = cc["area"][k]
        if k in cc["c"] and r["cabinet"]:
            e, b = cc["c"][k]
            r["actual_kwh_c"] = _kwh(float(e))
            r["savings_pct_c"] = _pct(float(b - e), float(b))
        else:
            r["actual_kwh_c"] = r["savings_pct_c"] = None
    return rows


def _assemble(inv, pts, nd, hours, lum, night, e_by_status, cabs, lum_cab, ec_valid, base_cab, ec, st_c, backend,
              d0, d1, area, tl, partial, threshold, fp, e_keys) -> EnergyResult:
    """Every table of the report from the totals per luminaire (``lum``) and per day
    (``night``): grouped sums with bincount; the luminaire table is built on demand."""
    D = len(nd)
    target = inv.target_pct
    base_l, eb_l, ea_l = lum["base"], lum["eb"], lum["ea"]
    base_d, eb_d, ea_d = night["base"], night["eb"], night["ea"]
    have_c = bool(ec_valid.any())  # base_cab: rows of the cabinets with a meter only
    cb_d = base_cab.sum(0) if have_c else np.zeros(D)
    ec_d = np.nansum(ec[ec_valid], axis=0) if have_c else np.zeros(D)
    H, MH = float(lum["h"].sum()), float(lum["mh"].sum())
    measured = round(100.0 * MH / H, 3) if H > 0 else 0.0
    sufficient = measured >= threshold
    B = float(base_l.sum())

    def summary_row(option: str, actual: float, base: float, complete: float | None) -> dict[str, Any]:
        met = bool(base > 0 and 100 * (base - actual) / base >= target)
        return {"option": option, "baseline_kwh": _kwh(base), "actual_kwh": _kwh(actual),
                "saved_kwh": _kwh(base - actual), "savings_pct": _pct(base - actual, base),
                "target_pct": target, "target_met": met if sufficient else None,
                "measured_pct": complete}

    summary = [
        summary_row("A: measured power x burning hours", float(ea_l.sum()), B, None),
        summary_row("B: luminaire D4i counters", float(eb_l.sum()), B, measured),
    ]
    if have_c:
        cc_ = round(100.0 * float((st_c[ec_valid] == MEASURED).sum()) / st_c[ec_valid].size, 3)
        summary.append(summary_row("C: cabinet meters", float(ec_d.sum()), float(cb_d.sum()), cc_))
    e_meas, e_fill, e_est = e_by_status
    u_abs = math.sqrt((U_METER * e_meas) ** 2 + (U_FILLED * e_fill) ** 2 + (U_ESTIMATED * e_est) ** 2)
    u_pts = 100.0 * u_abs / B if B > 0 else float("nan")
    n_days = int(lum["act"].sum())
    part, fill, est = int(lum["part"].sum()), int(lum["fill"].sum()), int(lum["est"].sum())
    uncertainty = (
        f"Option B savings {summary[1]['savings_pct']} % +/- {u_pts:.2f} percentage points (1 sigma; "
        f"docs/energy-kpi.md): {measured:.2f} % of the burning hours measured; of {n_days:,} luminaire-days, "
        f"{part:,} partial, {fill:,} filled across gaps, {est:,} estimated; assumed relative uncertainty "
        f"{U_METER:.0%} measured, {U_FILLED:.0%} filled, {U_ESTIMATED:.0%} estimated."
    )
    for r in summary:
        r["uncertainty_pts"] = round(u_pts, 3) if r["option"].startswith("B") else None
    b_pct = summary[1]["savings_pct"]
    if not sufficient:
        headline = (f"DATA INSUFFICIENT: {measured:.2f} % of the burning hours measured, under the {threshold:g} % "
                    f"required (docs/energy-kpi.md, completeness): no savings figure can be signed off. The "
                    f"{'estimated' if partial == 'estimate' else 'partial'} figure, {b_pct} %, is for information only.")
    else:
        headline = (f"Option B (the contract figure): {b_pct} % saved against the {target:g} % target: "
                    f"{'met' if summary[1]['target_met'] else 'NOT met'}; {measured:.2f} % of the burning hours "
                    f"measured (threshold {threshold:g} %).")

    day_dates = [date.fromordinal(int(d) + astro._EPOCH_ORD) for d in nd]
    month_lab, mi = np.unique(np.array([f"{x.year:04d}-{x.month:02d}" for x in day_dates]), return_inverse=True)
    M = len(month_lab)

    def by_month(x: np.ndarray) -> list[float]:
        return np.bincount(mi, weights=np.asarray(x, np.float64), minlength=M).tolist()

    mb, mab, maa, mcb, mac = by_month(base_d), by_month(eb_d), by_month(ea_d), by_month(cb_d), by_month(ec_d)
    mmh, mhh, mn, mh = by_month(night["mh"]), by_month(night["h"]), by_month(np.ones(D)), by_month(hours)
    monthly = []
    cum_b = cum_a = 0.0
    for k, m in enumerate(month_lab.tolist()):
        b, a_b, a_a = mb[k], mab[k], maa[k]
        cum_b += b
        cum_a += a_b
        monthly.append({
            "month": m, "days": int(mn[k]), "burning_hours": round(mh[k], 3),
            "baseline_kwh": _kwh(b), "actual_kwh_a": _kwh(a_a), "actual_kwh_b": _kwh(a_b),
            "actual_kwh_c": _kwh(mac[k]) if have_c else None, "savings_pct_a": _pct(b - a_a, b),
            "savings_pct_b": _pct(b - a_b, b), "savings_pct_c": _pct(mcb[k] - mac[k], mcb[k]) if have_c else None,
            "saved_kwh_b": _kwh(b - a_b),
            "measured_pct": round(100.0 * mmh[k] / mhh[k], 3) if mhh[k] > 0 else None,
            "cumulative_savings_pct_b": _pct(cum_b - cum_a, cum_b), "target_pct": target,
        })

    start = inv.contract_start or d0
    yi = np.array([_contract_year(start, x.toordinal()) if x >= start else 0 for x in day_dates])
    years = []
    for y in sorted(set(yi.tolist())):
        sel = yi == y
        b, a = float(base_d[sel].sum()), float(eb_d[sel].sum())
        days_sel = [x for x, s_ in zip(day_dates, sel.tolist(), strict=True) if s_]
        years.append({"contract_year": int(y), "from": str(days_sel[0]), "to": str(days_sel[-1]),
                      "baseline_kwh": _kwh(b), "actual_kwh_b": _kwh(a), "savings_pct_b": _pct(b - a, b),
                      "target_pct": target})

    def group_cols(lab: list[str], inv_: np.ndarray) -> dict[str, Any]:
        """Sums per group: ``lab`` the sorted group names, ``inv_`` each point's group."""
        G = len(lab)

        def g(x: np.ndarray) -> np.ndarray:
            return np.bincount(inv_, weights=np.asarray(x, np.float64), minlength=G)

        return {"lab": lab, "n": g(np.ones(len(inv_))), "base": g(base_l), "eb": g(eb_l), "ea": g(ea_l),
                "mh": g(lum["mh"]), "h": g(lum["h"])}

    area_of_pt = [p.area for p in pts]
    area_lab = sorted(set(area_of_pt))
    area_ix = {a: i for i, a in enumerate(area_lab)}
    areas = _group_rows(group_cols(area_lab, np.fromiter((area_ix[a] for a in area_of_pt), np.int64, len(pts))),
                        "area")
    no_cab = bool((lum_cab < 0).any())
    cc = group_cols(([""] if no_cab else []) + list(cabs), lum_cab + int(no_cab))
    area_of = {p.cabinet: p.area for p in pts}
    cc["area"] = [area_of.get(c, "") for c in cc["lab"]]
    cab_c = np.flatnonzero(ec_valid)
    cc["c"] = dict(zip((cab_c + int(no_cab)).tolist(), zip(np.nansum(ec[cab_c], axis=1).tolist(),
                                                            base_cab.sum(1).tolist(), strict=True), strict=True))
    gb, ge = cc["base"], cc["eb"]
    ok = gb > 0
    cand = ok
    if ok.sum() > 10:
        with np.errstate(invalid="ignore", divide="ignore"):
            raw_pct = np.where(ok, 100.0 * (gb - ge) / np.where(ok, gb, 1.0), np.inf)
        cand = ok & (raw_pct <= np.partition(raw_pct, 9)[9] + 0.002)
    worst = sorted(_cabinet_rows(cc, np.flatnonzero(cand)), key=lambda r: r["savings_pct_b"])[:10]
    zi = ZoneInfo(tl.tz)
    iso = (lambda t: datetime.fromtimestamp(t, zi).isoformat(timespec="seconds"))  # noqa: E731
    p0, p1 = tl.edges[np.flatnonzero(tl.day_of >= 0)[0]], tl.edges[np.flatnonzero(tl.day_of >= 0)[-1] + 1]
    fpd = fp.as_dict(iso)
    inputs = {
        "inventory": inv.source, "inventory_sha256": inv.sha256, "period_from": str(d0), "period_to": str(d1),
        "period": (f"{iso(p0)} to {iso(p1)} (" + ("calendar days: local midnight to local midnight; the nights "
                   "at its ends are cut at midnight, baseline hours and metered energy alike"
                   if tl.convention == "calendar" else "nights: local noon to local noon, each night counted "
                   "whole on the date it starts") + ")"),
        "area": area or "all", "days": D, "luminaires": len(pts), "cabinets": len(cabs),
        "burning_hours": round(float(hours.sum()), 3),
        "hours_method": (f"stipulated {inv.stipulated_hours} h per night" if inv.stipulated_hours is not None
                         else f"astronomical clock {inv.on}{inv.on_offset_s:+.0f}s -> {inv.off}{inv.off_offset_s:+.0f}s"
                         + (" (reference); baseline from measured cabinet on-time" if inv.measured_hours else "")),
        "partial_data": ("burning time not covered by readings estimated at each luminaire's own Wh per burning hour"
                         if partial == "estimate" else "burning time not covered by readings excluded from baseline "
                         "and actual"),
        "measured_threshold_pct": threshold,
        "data_readings": fpd["readings"], "data_series": fpd["series"],
        "data_first_reading": fpd["from"], "data_last_reading": fpd["to"],
        "data_sha256": fpd["content_sha256"],
        "data_export": (f"scada historian export --inventory {inv.source} --from {iso(tl.edges[0])} "
                        f"--to {iso(tl.edges[-1])} --out FILE; scada historian fingerprint FILE --status-col status "
                        "gives data_sha256 (docs/historian.md, data fingerprint)"),
        "backend": backend.describe(), "method": "docs/energy-kpi.md (IPMVP options A, B, C)",
    }
    return EnergyResult(inputs, summary, monthly, years, areas, cc, worst, {**lum, "points": pts}, uncertainty,
                        headline=headline)


def _contract_year(start: date, ordinal: int) -> int:
    d = date.fromordinal(ordinal)
    y = d.year - start.year
    if (d.month, d.day) < (start.month, start.day):
        y -= 1
    return y + 1
