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
    """Every figure of a report (JSON/CSV/HTML render the same object)."""

    inputs: dict[str, Any]
    summary: list[dict[str, Any]]
    monthly: list[dict[str, Any]]
    contract_years: list[dict[str, Any]]
    areas: list[dict[str, Any]]
    cabinets: list[dict[str, Any]]
    worst_cabinets: list[dict[str, Any]]
    luminaires: list[dict[str, Any]]
    uncertainty: str
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "summary": self.summary, "monthly": self.monthly,
                "contract_years": self.contract_years, "areas": self.areas,
                "cabinets": self.cabinets, "worst_cabinets": self.worst_cabinets,
                "luminaires": self.luminaires, "uncertainty": self.uncertainty}


# ---------------------------------------------------------------------------- counters
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
    S, D1 = len(keys), len(edges) - 1
    view = None
    if bk is not None and hasattr(bk, "rows"):  # roll-ups, read block by block below
        view = bk
        fv = lv = ft = lt = cnt = mono = np.zeros((0, 0))
    else:
        if bk is None:
            bk = backend.buckets(keys, edges, counter=True)
        fv = np.full((S, D1), np.nan)
        lv = np.full((S, D1), np.nan)
        ft = np.full((S, D1), np.nan)
        lt = np.full((S, D1), np.nan)
        cnt = np.zeros((S, D1), np.int64)
        mono = np.ones((S, D1), bool)
        ok = (bk.bucket >= 0) & (bk.bucket < D1) & (bk.count > 0)
        s_, k_ = bk.sid[ok], bk.bucket[ok]
        fv[s_, k_], lv[s_, k_] = bk.first_v[ok], bk.last_v[ok]
        ft[s_, k_], lt[s_, k_] = bk.first_t[ok], bk.last_t[ok]
        cnt[s_, k_] = bk.count[ok]
        mono[s_, k_] = bk.monotonic[ok]
    energy_all = np.empty((S, D1))
    status_all = np.empty((S, D1), np.int8)
    resets_all = np.zeros(S, np.int64)
    repl_all = np.zeros(S, np.int64)
    say = progress or (lambda m: None)
    n_slow = 0

    def block(r0: int, r1: int) -> None:
        """Rows r0..r1 (a few thousand series: temporaries stay in cache, no page-fault storm)."""
        nonlocal n_slow
        S_ = r1 - r0
        if view is not None:
            m = view.rows(r0, r1, ("first_t", "first_v", "last_t", "last_v", "count", "mono"))
            fv_, lv_, ft_, lt_, cnt_ = m["first_v"], m["last_v"], m["first_t"], m["last_t"], m["count"]
            mono_ = m["mono"] > 0.5
        else:
            fv_, lv_, ft_, lt_ = fv[r0:r1], lv[r0:r1], ft[r0:r1], lt[r0:r1]
            cnt_, mono_ = cnt[r0:r1], mono[r0:r1]
        keys_ = keys[r0:r1]
        max_w_ = max_w[r0:r1]
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
        rate = (max_w_ / 3600.0)[:, None]
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
            raw = backend.read_raw(keys_[s_], float(edges[0]), float(edges[-1]))
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
        fallback = max_w_ / 3.0  # rated LED power (max_w_ is 3 x rated)
        with np.errstate(invalid="ignore", divide="ignore"):
            rate_h = np.where(h_full > 0, e_full / h_full, fallback)
        est = status == ESTIMATED
        if est.any():
            energy[est] = (rate_h[:, None] * hours[None, :])[est]

        energy_all[r0:r1] = energy
        status_all[r0:r1] = status
        resets_all[r0:r1] = resets
        repl_all[r0:r1] = repl
        n_slow += len(slow)

    for r0 in range(0, S, 2048):
        block(r0, min(S, r0 + 2048))
    if n_slow:
        say(f"{n_slow} counters with resets or jumps were read raw")
    return energy_all[:, 1:], status_all[:, 1:], resets_all, repl_all


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
    inst = np.array([p.installed.toordinal() - e_ord if p.installed else -(10**9) for p in pts], np.int64)
    rem = np.array([p.removed.toordinal() - e_ord if p.removed else 10**9 for p in pts], np.int64)
    active = (nd[None, :] >= inst[:, None]) & (nd[None, :] < rem[:, None])
    legacy = np.array([p.legacy_w for p in pts])
    nominal = np.array([p.nominal_w or p.legacy_w / 2.0 for p in pts])
    cabs = sorted({p.cabinet for p in pts if p.cabinet})
    cab_ix = {c: i for i, c in enumerate(cabs)}
    lum_cab = np.array([cab_ix.get(p.cabinet, -1) for p in pts])
    measured_note = ""
    if inventory.measured_hours and cabs:
        say("routine adjustment: measured cabinet on-time")
        h_cab, n_meas = cabinet_on_hours(backend, cabs, edges[1:], hours)
        hours_l = np.where(lum_cab[:, None] >= 0, h_cab[np.maximum(lum_cab, 0)], hours[None, :])
        measured_note = (f"; measured on-time for {n_meas} of {len(cabs) * D} cabinet-nights, "
                         "astronomical hours for the others")
    else:
        hours_l = hours[None, :]
    in_service_h = hours_l * active  # burning hours of each point while in service
    baseline = legacy[:, None] * in_service_h  # Wh
    say(f"baseline: {L} light points x {D} nights")

    # Option B: luminaire counters
    say("option B: luminaire energy counters")
    max_w = 3.0 * np.maximum(nominal, 1.0)
    night_dates = [d0 - timedelta(days=1) + timedelta(days=k) for k in range(D + 1)]

    def summaries(keys: list[str], counter: bool = True) -> Any:
        if rollups is None:
            return None
        rollups.update(backend, keys, tz, night_dates[0], night_dates[-1], counter=counter)
        if counter:
            return rollups.view(keys, night_dates)
        return rollups.matrices(keys, night_dates, fields=("vmax", "count"))

    e_keys = [f"{p.path}/energy_wh" for p in pts]
    eb, st_b, resets, repl = counter_energy(backend, e_keys, edges, hours_all, max_w, say, summaries(e_keys))
    eb = np.where(active, eb, 0.0)
    st_b = np.where(active, st_b, INACTIVE)

    # Option A: measured full-output power x stipulated hours
    say("option A: measured LED power x burning hours")
    p_keys = [f"{p.path}/power_w" for p in pts]
    if set(backend.series("*/power_w")).isdisjoint(p_keys):
        p_led = nominal  # no power recorded: rated power stands in
    else:
        pk = summaries(p_keys, counter=False) or backend.buckets(p_keys, edges)
        if isinstance(pk, dict):
            pmax = np.where(pk["count"] > 0, pk["vmax"], np.nan)
        else:
            pmax = np.full((L, D + 1), np.nan)
            okp = (pk.bucket >= 0) & (pk.bucket <= D) & (pk.count > 0)
            pmax[pk.sid[okp], pk.bucket[okp]] = pk.vmax[okp]
        pmax[pmax <= 1.0] = np.nan  # nights it never lit say nothing about its power
        n_p = (~np.isnan(pmax)).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            p_led = np.where(n_p > 0, np.nansum(pmax, axis=1) / np.maximum(n_p, 1), nominal)
    ea = p_led[:, None] * in_service_h

    # Option C: cabinet meters against the baseline of the points behind each cabinet
    base_cab = np.zeros((len(cabs), D))
    if len(cabs):  # rows grouped by cabinet, summed per group (np.add.at is slow on 2-D rows)
        order = np.argsort(lum_cab, kind="stable")
        order = order[lum_cab[order] >= 0]
        if len(order):
            grp = lum_cab[order]
            starts = np.flatnonzero(np.r_[True, grp[1:] != grp[:-1]])
            # inventories are usually listed cabinet by cabinet: then no copy is needed
            rows = baseline if np.array_equal(order, np.arange(L)) else baseline[order]
            base_cab[grp[starts]] = np.add.reduceat(rows, starts, axis=0)
    ec = np.zeros((len(cabs), D))
    st_c = np.full((len(cabs), D), ESTIMATED, np.int8)
    if cabinet_meters and cabs:
        say("option C: cabinet energy meters")
        cab_max = np.zeros(len(cabs))
        np.add.at(cab_max, lum_cab[lum_cab >= 0], 3.0 * legacy[lum_cab >= 0])
        c_keys = [f"{c}/energy_wh" for c in cabs]
        ec, st_c, _, _ = counter_energy(backend, c_keys, edges, hours_all, np.maximum(cab_max, 1.0), say,
                                        summaries(c_keys))
        present = (st_c != ESTIMATED).any(axis=1)
        ec = np.where(present[:, None], ec, np.nan)  # a cabinet without a meter: no option C

    say("aggregating")
    res = _assemble(inventory, pts, nd, hours, active, baseline, ea, eb, st_b, resets, repl,
                    cabs, lum_cab, base_cab, ec, st_c, backend, d0, d1, area)
    res.inputs["hours_method"] += measured_note
    return res


def _pct(saved: float, base: float) -> float | None:
    return round(100.0 * saved / base, 3) if base > 0 else None


def _kwh(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x / 1000.0, 4)


def _assemble(inv, pts, nd, hours, active, baseline, ea, eb, st_b, resets, repl, cabs, lum_cab,
              base_cab, ec, st_c, backend, d0, d1, area) -> EnergyResult:
    """Every table of the report from the per luminaire x night arrays (vectorised: totals per
    luminaire and per night first, then grouped sums with bincount)."""
    D = len(nd)
    target = inv.target_pct
    # per luminaire and per night totals
    base_l, eb_l, ea_l = baseline.sum(1), eb.sum(1), ea.sum(1)
    act_l = active.sum(1)
    meas = st_b == MEASURED
    meas_l = meas.sum(1)
    fill_l = (st_b == FILLED).sum(1)
    est_l = (st_b == ESTIMATED).sum(1)
    base_d, eb_d, ea_d = baseline.sum(0), eb.sum(0), ea.sum(0)
    act_d, meas_d = active.sum(0), meas.sum(0)
    ec_valid = ~np.isnan(ec).any(axis=1) if len(cabs) else np.zeros(0, bool)
    have_c = bool(ec_valid.any())
    cb_d = base_cab[ec_valid].sum(0) if have_c else np.zeros(D)
    ec_d = np.nansum(ec[ec_valid], axis=0) if have_c else np.zeros(D)

    act_n, meas_n = int(act_l.sum()), int(meas_l.sum())
    filled, estim = int(fill_l.sum()), int(est_l.sum())
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
    e_meas = float(eb[meas].sum())
    e_fill = float(eb[st_b == FILLED].sum())
    e_est = float(eb[st_b == ESTIMATED].sum())
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

    def group_rows(labels: list[str], name: str) -> list[dict[str, Any]]:
        lab, inv_ = np.unique(np.array(labels), return_inverse=True)
        G = len(lab)

        def g(x: np.ndarray) -> list[float]:
            return np.bincount(inv_, weights=x.astype(np.float64), minlength=G).tolist()

        n, gb, ga, gaa, gact, gmeas = g(np.ones(len(labels))), g(base_l), g(eb_l), g(ea_l), g(act_l), g(meas_l)
        return [{name: str(lab[k]), "luminaires": int(n[k]), "baseline_kwh": _kwh(gb[k]), "actual_kwh_b": _kwh(ga[k]),
                 "actual_kwh_a": _kwh(gaa[k]), "savings_pct_b": _pct(gb[k] - ga[k], gb[k]),
                 "completeness_pct": round(100.0 * gmeas[k] / gact[k], 3) if gact[k] else None}
                for k in range(G)]

    areas = group_rows([p.area for p in pts], "area")
    cab_rows = group_rows([p.cabinet for p in pts], "cabinet")
    cab_ix = {c: i for i, c in enumerate(cabs)}
    area_of = {p.cabinet: p.area for p in pts}
    ec_tot = np.nansum(ec, axis=1) if len(cabs) else np.zeros(0)
    cb_tot = base_cab.sum(1) if len(cabs) else np.zeros(0)
    for r in cab_rows:
        c = cab_ix.get(r["cabinet"], -1)
        r["area"] = area_of.get(r["cabinet"], "")
        if c >= 0 and ec_valid[c]:
            r["actual_kwh_c"] = _kwh(float(ec_tot[c]))
            r["savings_pct_c"] = _pct(float(cb_tot[c] - ec_tot[c]), float(cb_tot[c]))
        else:
            r["actual_kwh_c"] = r["savings_pct_c"] = None
    worst = sorted((r for r in cab_rows if r["savings_pct_b"] is not None), key=lambda r: r["savings_pct_b"])[:10]
    lums = [
        {"luminaire": p.path, "cabinet": p.cabinet, "area": p.area, "legacy_w": p.legacy_w,
         "baseline_kwh": _kwh(b), "actual_kwh_b": _kwh(a), "savings_pct_b": _pct(b - a, b),
         "nights_in_service": int(n_act),
         "completeness_pct": round(100.0 * m_ / n_act, 3) if n_act else None,
         "filled_nights": int(f_), "estimated_nights": int(e_), "counter_resets": int(r_), "meter_replacements": int(x_)}
        for p, b, a, n_act, m_, f_, e_, r_, x_ in zip(
            pts, base_l.tolist(), eb_l.tolist(), act_l.tolist(), meas_l.tolist(), fill_l.tolist(), est_l.tolist(),
            resets.tolist(), repl.tolist(), strict=True)
    ]
    inputs = {
        "inventory": inv.source, "inventory_sha256": inv.sha256, "period_from": str(d0), "period_to": str(d1),
        "area": area or "all", "nights": D, "luminaires": len(pts), "cabinets": len(cabs),
        "burning_hours": round(float(hours.sum()), 3),
        "hours_method": (f"stipulated {inv.stipulated_hours} h per night" if inv.stipulated_hours is not None
                         else f"astronomical clock {inv.on}{inv.on_offset_s:+.0f}s -> {inv.off}{inv.off_offset_s:+.0f}s"
                         + (" (reference); baseline from measured cabinet on-time" if inv.measured_hours else "")),
        "backend": backend.describe(), "method": "docs/energy-kpi.md (IPMVP options A, B, C)",
    }
    return EnergyResult(inputs, summary, monthly, years, areas, cab_rows, worst, lums, uncertainty)


def _contract_year(start: date, ordinal: int) -> int:
    d = date.fromordinal(ordinal)
    y = d.year - start.year
    if (d.month, d.day) < (start.month, start.day):
        y -= 1
    return y + 1
