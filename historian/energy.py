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

Counters: energy per *night* (local noon to local noon, so a night is never cut in two and
nothing burns at the boundary); an increment between two readings belongs to the night of the
later reading; resets (reading goes down: counted from 0), rollovers, and meter replacements
(an increase faster than 3 x the rated power: not counted, flagged) are handled by
:func:`historian.query.counter_deltas`. Gaps: when readings resume after missing nights, the
counter's increase across the gap is spread over the missing nights in proportion to their
burning hours (*filled*); nights with no reading before or after (start/end of data, or a
point with no data) are *estimated* from the point's own Wh per burning hour over its fully
measured nights (or its rated ``nominal_w``). Completeness = measured nights / nights in service.

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
from datetime import date, timedelta
from typing import Any

import numpy as np
import yaml

from scada import astro
from scada import quality as Q

from .base import Backend
from .query import counter_deltas

log = logging.getLogger("historian.energy")

TARGET_PCT = 65.0
MEASURED, FILLED, ESTIMATED, INACTIVE = 0, 1, 2, 3
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


def _date(v: Any) -> date | None:
    if v in (None, ""):
        return None
    if isinstance(v, date):
        return v
    return date.fromisoformat(str(v))


def load_inventory(path: str) -> Inventory:
    """Read an inventory file (``.yaml``/``.yml`` or ``.csv``); see docs/energy-kpi.md."""
    with open(path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    meta: dict[str, Any] = {}
    if path.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    else:
        doc = yaml.safe_load(data) or {}
        if not isinstance(doc, dict) or "luminaires" not in doc:
            raise ValueError(f"{path}: expected a mapping with a 'luminaires' list")
        rows = doc["luminaires"]
        meta = doc
    pts = []
    for n, r in enumerate(rows, 1):
        try:
            pts.append(LightPoint(
                path=str(r["path"]), legacy_w=float(r["legacy_w"]),
                nominal_w=float(r.get("nominal_w") or 0.0), area=str(r.get("area") or ""),
                cabinet=str(r.get("cabinet") or ""), installed=_date(r.get("installed")),
                removed=_date(r.get("removed")),
            ))
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: luminaire entry {n}: {e!r}; expected path, legacy_w "
                             "[, nominal_w, area, cabinet, installed, removed]") from None
    hours = meta.get("hours") or {}
    contract = meta.get("contract") or {}
    return Inventory(
        pts, path, digest, on=hours.get("on", "sunset"), off=hours.get("off", "sunrise"),
        on_offset_s=float(hours.get("on_offset_s", 0.0)), off_offset_s=float(hours.get("off_offset_s", 0.0)),
        stipulated_hours=(float(hours["stipulated_per_night"]) if hours.get("stipulated_per_night") else None),
        measured_hours=str(hours.get("source", "astronomical")) == "cabinet_on_time",
        contract_start=_date(contract.get("start")), target_pct=float(contract.get("target_pct", TARGET_PCT)),
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
        return {"inputs": self.inputs, "summary": self.summary, "monthly": self.monthly,
                "contract_years": self.contract_years, "areas": self.areas,
                "cabinets": self.cabinets, "worst_cabinets": self.worst_cabinets,
                "luminaires": self.luminaires, "uncertainty": self.uncertainty}


# ---------------------------------------------------------------------------- counters
_CFIELDS = ("first_t", "first_v", "last_t", "last_v", "count", "mono")


class _Summaries:
    """Per-night counter summaries of ``S`` series over ``D1`` nights: a night's row of a field
    over every series (:meth:`night`), or the [series, night] block of some series
    (:meth:`take`). From roll-ups (:class:`historian.rollup.RollupView`, rows read from the
    memory-mapped files) or from a :class:`historian.base.Buckets` push-down."""

    def __init__(self, S: int, D1: int, view: Any = None, bk: Any = None):
        self.S, self.D1, self.view = S, D1, view
        self.m: dict[str, np.ndarray] = {}
        if view is None:  # night-major matrices from the buckets
            m = {f: np.full((D1, S), np.nan) for f in _CFIELDS[:4]}
            m["count"] = np.zeros((D1, S))
            m["mono"] = np.ones((D1, S))
            ok = (bk.bucket >= 0) & (bk.bucket < D1) & (bk.count > 0)
            k_, s_ = bk.bucket[ok], bk.sid[ok]
            for f, src in (("first_t", bk.first_t), ("first_v", bk.first_v), ("last_t", bk.last_t),
                           ("last_v", bk.last_v), ("count", bk.count), ("mono", bk.monotonic)):
                m[f][k_, s_] = src[ok]
            self.m = m

    def night(self, j: int, field: str) -> np.ndarray:
        return self.m[field][j] if self.view is None else self.view.night(j, field)

    def take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        if self.view is not None:
            return self.view.take(idx, _CFIELDS)
        return {f: a[:, idx].T for f, a in self.m.items()}


@dataclass
class CounterTotals:
    """Energy (Wh) of counter series over the result nights, in two parts.

    ``fast`` series (every night measured, checked in one streaming pass over the nights; see
    :func:`counter_totals`) are given as totals only: ``e_l`` per series and ``e_d`` per night
    (summed over the fast series). The other series (``idx``) have their energy and status per
    night (``energy``/``status`` [len(idx), D], the exact computation of docs/energy-kpi.md §4).
    """

    fast: np.ndarray  # bool [S]
    e_l: np.ndarray  # [S]: total over the nights of each fast series (0 for the others)
    e_d: np.ndarray  # [D]: per night, summed over the fast series
    idx: np.ndarray  # [X] the series computed night by night
    energy: np.ndarray  # [X, D]
    status: np.ndarray  # int8 [X, D]
    resets: np.ndarray  # [S]
    replacements: np.ndarray  # [S]
    n_slow: int = 0


def _exact(backend: Backend, keys: Sequence[str], edges: np.ndarray, hours: np.ndarray, max_w: np.ndarray,
           c: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Energy and status per series and night (all ``D1`` nights, the carry night first) of the
    series ``keys`` from their summaries ``c`` ([series, night] arrays of ``_CFIELDS``): gaps
    filled, resets/rollovers/jumps from raw readings, nights without data estimated."""
    fv_, lv_, ft_, lt_, cnt_ = c["first_v"], c["last_v"], c["first_t"], c["last_t"], c["count"]
    mono_ = c["mono"] > 0.5
    S_, D1 = fv_.shape
    has = cnt_ > 0
    # the common case in one pass: the previous reading is last night's (shifted columns);
    # nights after a gap and series with resets/jumps are handled one by one below
    has_prev = np.zeros_like(has)
    has_prev[:, 1:] = has[:, :-1]
    lv_prev = np.full_like(lv_, np.nan)
    lv_prev[:, 1:] = lv_[:, :-1]
    lt_prev = np.full_like(lt_, np.nan)
    lt_prev[:, 1:] = lt_[:, :-1]
    direct = has & has_prev
    within = np.where(has, lv_ - fv_, 0.0)
    cross = np.where(direct, fv_ - lv_prev, 0.0)
    rate = (max_w / 3600.0)[:, None]
    with np.errstate(invalid="ignore"):
        suspicious = (has & (~mono_ | (within > rate * np.maximum(lt_ - ft_, 1.0) + 1e-9))) | (
            direct & ((cross < 0) | (cross > rate * np.maximum(ft_ - lt_prev, 1.0) + 1e-9)))
    slow_mask = suspicious.any(axis=1)
    gaps: list[tuple[int, int, int, float]] = []  # (series, night, previous data night, increase)
    after_gap = has & ~has_prev
    after_gap[:, 0] = False
    for s_, k_ in np.argwhere(after_gap & ~slow_mask[:, None]).tolist():
        earlier = np.flatnonzero(has[s_, :k_])
        if not len(earlier):
            continue  # first reading of the series: nothing before it to link
        p_ = int(earlier[-1])
        inc = float(fv_[s_, k_] - lv_[s_, p_])
        if inc < 0 or inc > float(rate[s_, 0]) * max(float(ft_[s_, k_] - lt_[s_, p_]), 1.0) + 1e-9:
            slow_mask[s_] = True
        else:
            gaps.append((s_, k_, p_, inc))
    gaps = [g for g in gaps if not slow_mask[g[0]]]
    resets = np.zeros(S_, np.int64)
    repl = np.zeros(S_, np.int64)
    slow = np.flatnonzero(slow_mask)
    ks = np.arange(D1)
    for s_ in slow.tolist():  # resets, rollovers, replacements: exact from raw readings
        raw = backend.read_raw(keys[s_], float(edges[0]), float(edges[-1]))
        cd = counter_deltas(raw, edges, max_rate=float(rate[s_, 0]))
        has[s_] = cd.count > 0
        within[s_] = np.where(has[s_], np.nan_to_num(cd.delta) - cd.cross, 0.0)
        d_ = has[s_] & (cd.prev_bucket == ks - 1)
        direct[s_] = d_
        cross[s_] = np.where(d_, cd.cross, 0.0)
        for k_ in np.flatnonzero(has[s_] & (cd.prev_bucket >= 0) & ~d_).tolist():
            gaps.append((s_, k_, int(cd.prev_bucket[k_]), float(cd.cross[k_])))
        resets[s_] = int(cd.resets.sum())
        repl[s_] = int(cd.replacements.sum())
    energy = within + cross
    status = np.where(has, MEASURED, ESTIMATED).astype(np.int8)
    # an increase across a gap is spread over the missing nights and the night of the reading
    # that ends it, in proportion to burning hours (missing nights: FILLED)
    for s_, k_, p_, inc in gaps:
        w = hours[p_ + 1 : k_ + 1].astype(np.float64)
        tot = w.sum()
        share = w / tot if tot > 0 else np.full(len(w), 1.0 / len(w))
        energy[s_, p_ + 1 : k_ + 1] += inc * share
        status[s_, p_ + 1 : k_] = FILLED
    # nights before the first / after the last reading: estimated from the series' own rate,
    # Wh per burning hour over the fully measured nights (ratio of sums), else the rated power
    measured_full = direct & (hours[None, :] > 0)
    e_full = np.where(measured_full, energy, 0.0).sum(axis=1)
    h_full = (measured_full * hours[None, :]).sum(axis=1)
    fallback = max_w / 3.0  # rated LED power (max_w is 3 x rated)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate_h = np.where(h_full > 0, e_full / h_full, fallback)
    est = status == ESTIMATED
    if est.any():
        energy[est] = (rate_h[:, None] * hours[None, :])[est]
    return energy, status, resets, repl, len(slow)


def _fast_pass(src: _Summaries, max_w: np.ndarray, candidates: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass over the nights, a row of all the series at a time (no [series, night] matrix):
    which ``candidates`` have a good reading every night with nothing to correct, and for those
    the energy per series and per night, computed exactly as :func:`_exact` would.

    A series passes when every night has good readings and no decrease (``count`` > 0,
    ``mono``), no increase goes down between nights, and the largest increase within a night
    (across a night boundary) is at most the plausible rate times the *shortest* reading span
    within a night (across a boundary) - which implies the per-night checks of :func:`_exact`,
    so a series that passes would be sent to no correction there. The others are left to
    :func:`_exact` (they may well be fine: the bound is only sufficient)."""
    S, D1 = src.S, src.D1
    inf = np.inf
    cnt_min, mono_min = np.full(S, inf), np.full(S, inf)
    w_max, c_max = np.full(S, -inf), np.full(S, -inf)
    dw_min, c_min, dc_min = np.full(S, inf), np.full(S, inf), np.full(S, inf)
    e_l = np.zeros(S)
    w, c, dt = np.empty(S), np.empty(S), np.empty(S)
    lv_prev = lt_prev = None
    for j in range(D1):
        fv, lv = src.night(j, "first_v"), src.night(j, "last_v")
        ft, lt = src.night(j, "first_t"), src.night(j, "last_t")
        np.minimum(cnt_min, src.night(j, "count"), out=cnt_min)
        np.minimum(mono_min, src.night(j, "mono"), out=mono_min)
        np.subtract(lv, fv, out=w)
        np.maximum(w_max, w, out=w_max)  # NaN propagates: such a series fails the test
        np.subtract(lt, ft, out=dt)
        np.minimum(dw_min, dt, out=dw_min)
        if j:
            np.subtract(fv, lv_prev, out=c)
            np.minimum(c_min, c, out=c_min)
            np.maximum(c_max, c, out=c_max)
            np.subtract(ft, lt_prev, out=dt)
            np.minimum(dc_min, dt, out=dc_min)
            np.add(w, c, out=c)  # the night's energy: within + across the boundary
            e_l += c
        lv_prev, lt_prev = lv, lt
    rate = max_w / 3600.0
    fast = (candidates & (cnt_min > 0) & (mono_min > 0.5)
            & (w_max <= rate * np.maximum(dw_min, 1.0) + 1e-9)
            & (c_min >= 0) & (c_max <= rate * np.maximum(dc_min, 1.0) + 1e-9))
    e_l = np.where(fast, e_l, 0.0)
    # per night totals over the fast series (a second, lighter pass: two rows a night)
    e_d = np.zeros(D1 - 1)
    if fast.any():
        every = bool(fast.all())
        lv_prev = src.night(0, "last_v")
        for j in range(1, D1):
            fv, lv = src.night(j, "first_v"), src.night(j, "last_v")
            np.subtract(lv, fv, out=w)
            np.subtract(fv, lv_prev, out=c)
            np.add(w, c, out=c)
            e_d[j - 1] = c.sum() if every else c[fast].sum()
            lv_prev = lv
    return fast, e_l, e_d


def counter_totals(
    backend: Backend, keys: Sequence[str], edges: np.ndarray, hours: np.ndarray,
    max_w: np.ndarray, progress: Callable[[str], None] | None = None, bk: Any = None,
    fast_ok: np.ndarray | None = None,
) -> CounterTotals:
    """Energy (Wh) of counter series over the nights (see :class:`CounterTotals`).

    ``edges`` has one more leading night than the result (its readings only carry the counter
    across the first boundary). ``bk``: a :class:`historian.rollup.RollupView` or a
    :class:`historian.base.Buckets` of the counters (pushed down to the backend if None).
    ``fast_ok``: the series that may be given as totals only (for the KPI: those in service
    every night); None: every series night by night.
    """
    S, D1 = len(keys), len(edges) - 1
    if bk is None:
        bk = backend.buckets(keys, edges, counter=True)
    src = _Summaries(S, D1, view=bk if hasattr(bk, "night") else None, bk=bk)
    if fast_ok is not None and fast_ok.any():
        fast, e_l, e_d = _fast_pass(src, max_w, np.asarray(fast_ok, bool))
    else:
        fast, e_l, e_d = np.zeros(S, bool), np.zeros(S), np.zeros(D1 - 1)
    idx = np.flatnonzero(~fast)
    energy = np.empty((len(idx), D1 - 1))
    status = np.empty((len(idx), D1 - 1), np.int8)
    resets = np.zeros(S, np.int64)
    repl = np.zeros(S, np.int64)
    n_slow = 0
    for i0 in range(0, len(idx), 2048):  # a few thousand series: temporaries stay in cache
        sel = idx[i0 : i0 + 2048]
        e_, s_, r_, x_, n_ = _exact(backend, [keys[i] for i in sel.tolist()], edges, hours, max_w[sel],
                                    src.take(sel))
        energy[i0 : i0 + len(sel)], status[i0 : i0 + len(sel)] = e_[:, 1:], s_[:, 1:]
        resets[sel], repl[sel] = r_, x_
        n_slow += n_
    if n_slow and progress:
        progress(f"{n_slow} counters with resets or jumps were read raw")
    return CounterTotals(fast, e_l, e_d, idx, energy, status, resets, repl, n_slow)


def counter_energy(
    backend: Backend, keys: Sequence[str], edges: np.ndarray, hours: np.ndarray,
    max_w: np.ndarray, progress: Callable[[str], None] | None = None, bk: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Energy (Wh) per series and night from accumulating counters.

    ``edges`` has one more leading night than the result (its readings only carry the counter
    across the first boundary). Returns (energy[S, D], status[S, D], resets[S], replacements[S])
    with status MEASURED / FILLED / ESTIMATED; nights with no way to know are ESTIMATED from
    the series' own Wh per burning hour (or ``max_w / 3`` ... see the module doc).
    """
    ct = counter_totals(backend, keys, edges, hours, max_w, progress, bk)
    return ct.energy, ct.status, ct.resets, ct.replacements


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
) -> EnergyResult:
    """Savings of the nights ``d0..d1`` (inclusive) for the inventory (see module doc).

    ``rollups`` (:class:`historian.rollup.Rollups`): read per-night counter summaries from
    there, computing missing or stale nights first, instead of scanning raw data.

    Nothing of size luminaires x nights is built for the points in service over the whole
    period whose counters need no correction: their energy is summed while the nights are read
    (:func:`counter_totals`); baseline and option A are sums of burning hours over each point's
    service interval. The other points (added/removed in the period, gaps, resets...) are
    computed night by night.
    """
    say = progress or (lambda m: None)
    pts = [p for p in inventory.points if area is None or p.area == area]
    if not pts:
        raise ValueError(f"no luminaire in the inventory{f' for area {area!r}' if area else ''}")
    days = nights(d0 - timedelta(days=1), d1)  # one carry night first
    edges = astro.local_noon_utc(np.append(days, days[-1] + 1), tz)
    if inventory.stipulated_hours is not None:
        hours_all = np.full(len(days), inventory.stipulated_hours)
    else:
        hours_all = astro.burning_hours(lat, lon, days, tz, inventory.on, inventory.off,
                                        inventory.on_offset_s, inventory.off_offset_s)
    hours = hours_all[1:]
    D = len(days) - 1
    L = len(pts)
    nd = days[1:]
    e_ord = astro._EPOCH_ORD
    inst = np.fromiter((p.installed.toordinal() - e_ord if p.installed else -(10**9) for p in pts), np.int64, L)
    rem = np.fromiter((p.removed.toordinal() - e_ord if p.removed else 10**9 for p in pts), np.int64, L)
    # each point is in service over the nights [a, b) of the period (nights are consecutive)
    a_l = np.clip(inst - nd[0], 0, D)
    b_l = np.maximum(np.clip(rem - nd[0], 0, D), a_l)
    legacy = np.fromiter((p.legacy_w for p in pts), np.float64, L)
    nominal = np.fromiter((p.nominal_w or p.legacy_w / 2.0 for p in pts), np.float64, L)
    cab_of = [p.cabinet for p in pts]
    cabs = sorted(set(cab_of) - {""})
    cab_ix = {c: i for i, c in enumerate(cabs)}
    lum_cab = np.fromiter((cab_ix.get(c, -1) for c in cab_of), np.int64, L)
    C = len(cabs)
    measured_note = ""
    # burning hours by group of points: one group, or per cabinet when measured (+ the points
    # without a cabinet, on astronomical hours)
    if inventory.measured_hours and cabs:
        say("routine adjustment: measured cabinet on-time")
        h_cab, n_meas = cabinet_on_hours(backend, cabs, edges[1:], hours)
        hours_g = np.vstack([h_cab, hours[None, :]])
        grp = np.where(lum_cab >= 0, lum_cab, C)
        measured_note = (f"; measured on-time for {n_meas} of {C * D} cabinet-nights, "
                         "astronomical hours for the others")
    else:
        hours_g = hours[None, :]
        grp = np.zeros(L, np.int64)
    G = len(hours_g)
    cum_h = np.zeros((G, D + 1))
    np.cumsum(hours_g, axis=1, out=cum_h[:, 1:])
    in_service_h = cum_h[grp, b_l] - cum_h[grp, a_l]  # burning hours of each point while in service

    def in_service(w: np.ndarray, g: np.ndarray, n_g: int, a: np.ndarray = a_l, b: np.ndarray = b_l
                   ) -> np.ndarray:
        """[group, night]: sum of ``w`` over the points of each group in service that night."""
        flat = np.concatenate([g * (D + 1) + a, g * (D + 1) + b])
        m = np.bincount(flat, np.concatenate([w, -w]), minlength=n_g * (D + 1)).reshape(n_g, D + 1)
        return np.cumsum(m[:, :D], axis=1)

    act_l = b_l - a_l
    act_d = np.round(in_service(np.ones(L), np.zeros(L, np.int64), 1)[0]).astype(np.int64)
    leg_g = in_service(legacy, grp, G)
    base_l = legacy * in_service_h  # Wh
    base_d = (hours_g * leg_g).sum(0)
    say(f"baseline: {L} light points x {D} nights")

    # Option B: luminaire counters
    say("option B: luminaire energy counters")
    max_w = 3.0 * np.maximum(nominal, 1.0)
    night_dates = [d0 - timedelta(days=1) + timedelta(days=k) for k in range(D + 1)]

    def summaries(keys: list[str], counter: bool = True) -> Any:
        if rollups is None:
            return None
        rollups.update(backend, keys, tz, night_dates[0], night_dates[-1], counter=counter)
        return rollups.view(keys, night_dates)

    e_keys = [f"{p.path}/energy_wh" for p in pts]
    ct = counter_totals(backend, e_keys, edges, hours_all, max_w, say, summaries(e_keys),
                        fast_ok=(a_l == 0) & (b_l == D))
    # the points computed night by night: their nights out of service count for nothing
    X = ct.idx
    n = np.arange(D)
    act_x = (n[None, :] >= a_l[X, None]) & (n[None, :] < b_l[X, None])
    eb_x = np.where(act_x, ct.energy, 0.0)
    st_x = np.where(act_x, ct.status, INACTIVE)
    meas_x, fill_x, est_x = st_x == MEASURED, st_x == FILLED, st_x == ESTIMATED
    eb_l = ct.e_l.copy()
    eb_l[X] = eb_x.sum(1)
    eb_d = ct.e_d + eb_x.sum(0)
    meas_l = np.where(ct.fast, act_l, 0)  # fast points: measured every night, in service every night
    meas_l[X] = meas_x.sum(1)
    fill_l = np.zeros(L, np.int64)
    fill_l[X] = fill_x.sum(1)
    est_l = np.zeros(L, np.int64)
    est_l[X] = est_x.sum(1)
    meas_d = int(ct.fast.sum()) + meas_x.sum(0)
    e_by_status = (float(ct.e_l.sum()) + float(eb_x[meas_x].sum()), float(eb_x[fill_x].sum()),
                   float(eb_x[est_x].sum()))

    # Option A: measured full-output power x stipulated hours
    say("option A: measured LED power x burning hours")
    p_keys = [f"{p.path}/power_w" for p in pts]
    if set(p_keys).isdisjoint(backend.series("*/power_w")):
        p_led = nominal  # no power recorded: rated power stands in
    else:
        pv = summaries(p_keys, counter=False)
        if pv is None:
            pk = backend.buckets(p_keys, edges)
            pm = np.full((D + 1, L), np.nan)
            okp = (pk.bucket >= 0) & (pk.bucket <= D) & (pk.count > 0)
            pm[pk.bucket[okp], pk.sid[okp]] = pk.vmax[okp]

            def pmax_night(j: int) -> np.ndarray:
                return pm[j]
        else:
            def pmax_night(j: int) -> np.ndarray:
                return np.where(pv.night(j, "count") > 0, pv.night(j, "vmax"), np.nan)
        # nights it never lit say nothing about its power: the mean of the nightly maxima > 1 W
        p_sum, n_p = np.zeros(L), np.zeros(L, np.int64)
        for j in range(D + 1):
            pmax = pmax_night(j)
            with np.errstate(invalid="ignore"):
                lit = pmax > 1.0
            p_sum += np.where(lit, pmax, 0.0)
            n_p += lit
        p_led = np.where(n_p > 0, p_sum / np.maximum(n_p, 1), nominal)
    ea_l = p_led * in_service_h
    ea_d = (hours_g * in_service(p_led, grp, G)).sum(0)

    # Option C: cabinet meters against the baseline of the points behind each cabinet
    # (without cabinet meters, or without a cabinet, no option C: nothing is read or shown)
    ec = np.zeros((C, D))
    st_c = np.zeros((C, D), np.int8)
    ec_valid = np.zeros(C, bool)
    if cabinet_meters and cabs:
        say("option C: cabinet energy meters")
        cab_max = np.zeros(C)
        np.add.at(cab_max, lum_cab[lum_cab >= 0], 3.0 * legacy[lum_cab >= 0])
        c_keys = [f"{c}/energy_wh" for c in cabs]
        ec, st_c, _, _ = counter_energy(backend, c_keys, edges, hours_all, np.maximum(cab_max, 1.0), say,
                                        summaries(c_keys))
        present = (st_c != ESTIMATED).any(axis=1)
        ec = np.where(present[:, None], ec, np.nan)  # a cabinet without a meter: no option C
        ec_valid = ~np.isnan(ec).any(axis=1)
    # baseline per night of the cabinets with a meter (the others have no option C)
    if not ec_valid.any():
        base_cab = np.zeros((0, D))
    elif G > 1:  # measured hours: the groups are the cabinets
        base_cab = hours_g[:C][ec_valid] * leg_g[:C][ec_valid]
    else:
        v_ix = np.cumsum(ec_valid) - 1  # cabinet -> row among those with a meter
        on_cab = lum_cab >= 0
        on_cab[on_cab] = ec_valid[lum_cab[on_cab]]
        base_cab = hours[None, :] * in_service(legacy[on_cab], v_ix[lum_cab[on_cab]], int(ec_valid.sum()),
                                               a_l[on_cab], b_l[on_cab])

    say("aggregating")
    lum = {"base": base_l, "eb": eb_l, "ea": ea_l, "act": act_l, "meas": meas_l, "fill": fill_l, "est": est_l,
           "resets": ct.resets, "repl": ct.replacements}
    night = {"base": base_d, "eb": eb_d, "ea": ea_d, "act": act_d, "meas": meas_d}
    res = _assemble(inventory, pts, nd, hours, lum, night, e_by_status, cabs, lum_cab, ec_valid, base_cab, ec, st_c,
                    backend, d0, d1, area)
    res.inputs["hours_method"] += measured_note
    return res


def _pct(saved: float, base: float) -> float | None:
    return round(100.0 * saved / base, 3) if base > 0 else None


def _kwh(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x / 1000.0, 4)


def _luminaire_rows(c: dict[str, Any]) -> list[dict[str, Any]]:
    """The luminaire table from its columns (built when a report asks for it)."""
    return [
        {"luminaire": p.path, "cabinet": p.cabinet, "area": p.area, "legacy_w": p.legacy_w,
         "baseline_kwh": _kwh(b), "actual_kwh_b": _kwh(a), "savings_pct_b": _pct(b - a, b),
         "nights_in_service": int(n_act),
         "completeness_pct": round(100.0 * m_ / n_act, 3) if n_act else None,
         "filled_nights": int(f_), "estimated_nights": int(e_), "counter_resets": int(r_), "meter_replacements": int(x_)}
        for p, b, a, n_act, m_, f_, e_, r_, x_ in zip(
            c["points"], c["base"].tolist(), c["eb"].tolist(), c["act"].tolist(), c["meas"].tolist(),
            c["fill"].tolist(), c["est"].tolist(), c["resets"].tolist(), c["repl"].tolist(), strict=True)
    ]


def _group_rows(cc: dict[str, Any], name: str, sel: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Rows of the groups ``sel`` (all by default) from their sums (see ``group_cols``)."""
    ks = range(len(cc["lab"])) if sel is None else sel.tolist()
    n, gb, ga, gaa, gact, gmeas = (cc[k].tolist() for k in ("n", "base", "eb", "ea", "act", "meas"))
    return [{name: str(cc["lab"][k]), "luminaires": int(n[k]), "baseline_kwh": _kwh(gb[k]),
             "actual_kwh_b": _kwh(ga[k]), "actual_kwh_a": _kwh(gaa[k]), "savings_pct_b": _pct(gb[k] - ga[k], gb[k]),
             "completeness_pct": round(100.0 * gmeas[k] / gact[k], 3) if gact[k] else None}
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
              d0, d1, area) -> EnergyResult:
    """Every table of the report from the totals per luminaire (``lum``) and per night
    (``night``): grouped sums with bincount; the luminaire table is built on demand."""
    D = len(nd)
    target = inv.target_pct
    base_l, eb_l, ea_l, act_l, meas_l = lum["base"], lum["eb"], lum["ea"], lum["act"], lum["meas"]
    base_d, eb_d, ea_d, act_d, meas_d = night["base"], night["eb"], night["ea"], night["act"], night["meas"]
    have_c = bool(ec_valid.any())  # base_cab: rows of the cabinets with a meter only
    cb_d = base_cab.sum(0) if have_c else np.zeros(D)
    ec_d = np.nansum(ec[ec_valid], axis=0) if have_c else np.zeros(D)

    act_n, meas_n = int(act_l.sum()), int(meas_l.sum())
    filled, estim = int(lum["fill"].sum()), int(lum["est"].sum())
    B = float(base_l.sum())

    def summary_row(option: str, actual: float, base: float, complete: float | None) -> dict[str, Any]:
        return {"option": option, "baseline_kwh": _kwh(base), "actual_kwh": _kwh(actual),
                "saved_kwh": _kwh(base - actual), "savings_pct": _pct(base - actual, base),
                "target_pct": target, "target_met": bool(base > 0 and 100 * (base - actual) / base >= target),
                "completeness_pct": complete}

    completeness = round(100.0 * meas_n / act_n, 3) if act_n else None
    summary = [
        summary_row("A: measured power x burning hours", float(ea_l.sum()), B, None),
        summary_row("B: luminaire D4i counters", float(eb_l.sum()), B, completeness),
    ]
    if have_c:
        cc = round(100.0 * float((st_c[ec_valid] == MEASURED).sum()) / st_c[ec_valid].size, 3)
        summary.append(summary_row("C: cabinet meters", float(ec_d.sum()), float(cb_d.sum()), cc))
    # uncertainty: meter accuracy on measured nights, more on filled/estimated ones (option B)
    e_meas, e_fill, e_est = e_by_status
    u_abs = math.sqrt((U_METER * e_meas) ** 2 + (U_FILLED * e_fill) ** 2 + (U_ESTIMATED * e_est) ** 2)
    u_pts = 100.0 * u_abs / B if B > 0 else float("nan")
    uncertainty = (
        f"Option B savings {summary[1]['savings_pct']} % +/- {u_pts:.2f} percentage points (1 sigma; "
        f"docs/energy-kpi.md): {100 * meas_n / max(act_n, 1):.2f} % of luminaire-nights measured, "
        f"{100 * filled / max(act_n, 1):.2f} % filled across gaps, {100 * estim / max(act_n, 1):.2f} % estimated; "
        f"assumed relative uncertainty {U_METER:.0%} measured, {U_FILLED:.0%} filled, {U_ESTIMATED:.0%} estimated."
    )
    for r in summary:
        r["uncertainty_pts"] = round(u_pts, 3) if r["option"].startswith("B") else None

    # months (option B is the contract figure; A and C beside it) and the cumulative trajectory
    day_dates = [date.fromordinal(int(d) + astro._EPOCH_ORD) for d in nd]
    month_lab, mi = np.unique(np.array([f"{x.year:04d}-{x.month:02d}" for x in day_dates]), return_inverse=True)
    M = len(month_lab)

    def by_month(x: np.ndarray) -> list[float]:
        return np.bincount(mi, weights=x.astype(np.float64), minlength=M).tolist()

    mb, mab, maa, mcb, mac = by_month(base_d), by_month(eb_d), by_month(ea_d), by_month(cb_d), by_month(ec_d)
    mact, mmeas, mn, mh = by_month(act_d), by_month(meas_d), by_month(np.ones(D)), by_month(hours)
    monthly = []
    cum_b = cum_a = 0.0
    for k, m in enumerate(month_lab.tolist()):
        b, a_b, a_a = mb[k], mab[k], maa[k]
        cum_b += b
        cum_a += a_b
        monthly.append({
            "month": m, "nights": int(mn[k]), "burning_hours": round(mh[k], 3),
            "baseline_kwh": _kwh(b), "actual_kwh_a": _kwh(a_a), "actual_kwh_b": _kwh(a_b),
            "actual_kwh_c": _kwh(mac[k]) if have_c else None, "savings_pct_a": _pct(b - a_a, b),
            "savings_pct_b": _pct(b - a_b, b), "savings_pct_c": _pct(mcb[k] - mac[k], mcb[k]) if have_c else None,
            "saved_kwh_b": _kwh(b - a_b),
            "completeness_pct": round(100.0 * mmeas[k] / mact[k], 3) if mact[k] else None,
            "cumulative_savings_pct_b": _pct(cum_b - cum_a, cum_b), "target_pct": target,
        })

    # contract years
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
            return np.bincount(inv_, weights=x.astype(np.float64), minlength=G)

        return {"lab": lab, "n": g(np.ones(len(inv_))), "base": g(base_l), "eb": g(eb_l), "ea": g(ea_l),
                "act": g(act_l), "meas": g(meas_l)}

    area_of_pt = [p.area for p in pts]
    area_lab = sorted(set(area_of_pt))
    area_ix = {a: i for i, a in enumerate(area_lab)}
    areas = _group_rows(group_cols(area_lab, np.fromiter((area_ix[a] for a in area_of_pt), np.int64, len(pts))),
                        "area")
    no_cab = bool((lum_cab < 0).any())  # points without a cabinet: the group "" (sorts first)
    cc = group_cols(([""] if no_cab else []) + list(cabs), lum_cab + int(no_cab))
    area_of = {p.cabinet: p.area for p in pts}
    cc["area"] = [area_of.get(c, "") for c in cc["lab"]]
    # option C of the cabinets with a meter: group -> (actual, baseline) Wh
    cab_c = np.flatnonzero(ec_valid)
    cc["c"] = dict(zip((cab_c + int(no_cab)).tolist(), zip(np.nansum(ec[cab_c], axis=1).tolist(),
                                                            base_cab.sum(1).tolist(), strict=True), strict=True))
    # the 10 worst by option B savings: rows built for the candidates only (those within
    # rounding of the 10th lowest), sorted as the whole table would be
    gb, ge = cc["base"], cc["eb"]
    ok = gb > 0
    cand = ok
    if ok.sum() > 10:
        with np.errstate(invalid="ignore", divide="ignore"):
            raw_pct = np.where(ok, 100.0 * (gb - ge) / np.where(ok, gb, 1.0), np.inf)
        cand = ok & (raw_pct <= np.partition(raw_pct, 9)[9] + 0.002)
    worst = sorted(_cabinet_rows(cc, np.flatnonzero(cand)), key=lambda r: r["savings_pct_b"])[:10]
    inputs = {
        "inventory": inv.source, "inventory_sha256": inv.sha256, "period_from": str(d0), "period_to": str(d1),
        "area": area or "all", "nights": D, "luminaires": len(pts), "cabinets": len(cabs),
        "burning_hours": round(float(hours.sum()), 3),
        "hours_method": (f"stipulated {inv.stipulated_hours} h per night" if inv.stipulated_hours is not None
                         else f"astronomical clock {inv.on}{inv.on_offset_s:+.0f}s -> {inv.off}{inv.off_offset_s:+.0f}s"
                         + (" (reference); baseline from measured cabinet on-time" if inv.measured_hours else "")),
        "backend": backend.describe(), "method": "docs/energy-kpi.md (IPMVP options A, B, C)",
    }
    return EnergyResult(inputs, summary, monthly, years, areas, cc, worst, {**lum, "points": pts}, uncertainty)


def _contract_year(start: date, ordinal: int) -> int:
    d = date.fromordinal(ordinal)
    y = d.year - start.year
    if (d.month, d.day) < (start.month, start.day):
        y -= 1
    return y + 1
