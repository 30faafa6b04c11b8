"""Planner: profiles + calendars + astronomical clock -> the level of every luminaire at any time.

Pure (no I/O, no runtime): the engine, ``scada schedule preview/explain`` and the benchmark use
it. Everything is vectorised over nights (dates) and over luminaire *classes* - luminaires that
every calendar rule treats alike (same area, group and device-scope matches) - so a year for
200,000 luminaires costs about as much as a year for the few hundred classes they form.

Night of date ``d``: from the profile's ``on`` (default ``dusk`` = the site's switch-on event of
``d``) to its ``off`` (default ``dawn`` = the switch-off event of ``d + 1``). Steps are
*breakpoints* ordered by time; the level at ``t`` is the one of the last breakpoint at or before
``t`` (the first step's level before any breakpoint). Breakpoints outside the night are dropped,
except that one before ``on`` still sets the level at ``on``.

DST: local clock times (``"22:00"``, ``"02:30"``) are converted with :mod:`zoneinfo` once per
date, with ``fold=0``. A time in the spring-forward gap (02:30 on the last Sunday of March in
Europe/Paris) maps to the instant 03:30 CEST (PEP 495: the pre-transition offset), a time in the
doubled hour of October to its first occurrence, so every step happens exactly once per night:
neither a gap nor a doubled step. Anchors (dusk, dawn, virtual midnight) are absolute instants
and are unaffected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from .. import astro
from ..sections.schedules import Profile, Rule, SchedulesConfig, parse_at
from . import calendar

_EPOCH_ORD = date(1970, 1, 1).toordinal()


@dataclass
class Anchors:
    """Per-date anchor instants (POSIX s) of the nights starting on ``days``."""

    days: np.ndarray  # int64 days since epoch (local dates)
    dusk: np.ndarray
    dawn: np.ndarray
    midnight: np.ndarray
    tz: str
    events: dict[str, np.ndarray] = field(default_factory=dict)
    _clock: dict[float, np.ndarray] = field(default_factory=dict)

    @classmethod
    def compute(
        cls, lat: float, lon: float, tz: str, days: np.ndarray, cfg: SchedulesConfig
    ) -> Anchors:
        days = astro.to_dates(days)
        on, off, vm = astro.night_bounds(lat, lon, days, tz, cfg.dusk, cfg.dawn)
        ev = astro.sun_events(lat, lon, days, tz)
        nxt = astro.sun_events(lat, lon, days + 1, tz)
        events = {
            "sunset": ev["sunset"],
            "civil_dusk": ev["civil_dusk"],
            "civil_dawn": nxt["civil_dawn"],
            "sunrise": nxt["sunrise"],
        }
        return cls(days, on, off, vm, tz, events)

    def clock(self, seconds: float) -> np.ndarray:
        """Instant of local time-of-day ``seconds`` in the night of each date: on ``d`` when it
        is noon or later, on ``d + 1`` when before noon (``"02:30"`` is after midnight)."""
        got = self._clock.get(seconds)
        if got is not None:
            return got
        zi = ZoneInfo(self.tz)
        s = seconds % 86400.0
        shift = 0 if s >= 43200.0 else 1
        h, rem = divmod(int(s), 3600)
        m, sec = divmod(rem, 60)
        frac = s - int(s)
        out = np.empty(self.days.size, dtype=np.float64)
        for i, d in enumerate(self.days.ravel()):
            day = date.fromordinal(int(d) + _EPOCH_ORD + shift)
            out[i] = datetime.combine(day, time(h, m, sec), zi).timestamp() + frac
        out = out.reshape(self.days.shape) + (seconds - s)
        self._clock[seconds] = out
        return out

    def at(self, spec: str) -> np.ndarray:
        anchor, off = parse_at(spec)
        if anchor == "clock":
            return self.clock(off)
        base = {"dusk": self.dusk, "dawn": self.dawn, "midnight": self.midnight}[anchor]
        return base + off


@dataclass
class NightPlan:
    """Breakpoints of one profile over D nights: ``times`` (D, K) sorted, ``levels`` (D, K).

    Column 0 is the switch-on, the last finite column the switch-off (level 0); padding is
    ``+inf``. ``labels[k]`` names the step behind column k's level for explanations.
    """

    times: np.ndarray
    levels: np.ndarray
    labels: np.ndarray  # (D, K) object: which step set this level

    def level_at(self, t: float | np.ndarray, night: np.ndarray | int) -> np.ndarray:
        """Level at ``t`` (0 outside the night) for the given night row(s)."""
        tt = self.times[night]
        lv = self.levels[night]
        t = np.asarray(t, dtype=np.float64)
        if tt.ndim == 1:
            k = int(np.searchsorted(tt, t, side="right")) - 1
            return np.asarray(lv[k] if k >= 0 else 0.0)
        k = (tt <= t[..., None]).sum(axis=-1) - 1
        return np.where(
            k >= 0, np.take_along_axis(lv, np.maximum(k, 0)[..., None], -1)[..., 0], 0.0
        )


def plan_profile(profile: Profile, anchors: Anchors) -> NightPlan:
    """Breakpoints of ``profile`` for every night of ``anchors`` (vectorised over nights)."""
    n = anchors.days.size
    on = anchors.at(profile.switch_on)
    off = np.maximum(anchors.at(profile.switch_off), on)
    bp_t: list[np.ndarray] = []
    bp_l: list[float] = []
    bp_n: list[str] = []
    prev = profile.steps[0].level
    for i, st in enumerate(profile.steps):
        bp_t.append(anchors.at(st.at))
        bp_l.append(st.level)
        bp_n.append(f"step {i + 1} ({st.at}: {st.level:g} %)")
        if st.until is not None:
            bp_t.append(anchors.at(st.until))
            bp_l.append(prev)
            bp_n.append(f"end of step {i + 1} (until {st.until}: back to {prev:g} %)")
        prev = st.level
    T = np.stack(bp_t, axis=-1).reshape(n, -1)  # (D, B)
    L = np.asarray(bp_l)
    names = np.asarray(bp_n, dtype=object)
    # level in force at switch-on: last breakpoint at or before `on` (by time, then list order)
    before = T <= on.reshape(n, 1)
    tb = np.where(before, T, -np.inf)
    rev = tb[:, ::-1]
    last = T.shape[1] - 1 - np.argmax(rev, axis=1)
    has = before.any(axis=1)
    on_level = np.where(has, L[last], profile.steps[0].level)
    on_label = np.where(has, names[last], names[0])
    inner = (T > on.reshape(n, 1)) & (T < off.reshape(n, 1))
    Ti = np.where(inner, T, np.inf)
    order = np.argsort(Ti, axis=1, kind="stable")
    Ti = np.take_along_axis(Ti, order, 1)
    Li = L[order]
    Ni = names[order]
    times = np.concatenate([on.reshape(n, 1), Ti, np.full((n, 1), np.inf)], axis=1)
    levels = np.concatenate([on_level.reshape(n, 1), Li, np.zeros((n, 1))], axis=1)
    labels = np.concatenate(
        [
            on_label.reshape(n, 1).astype(object),
            Ni,
            np.full((n, 1), f"switch-off ({profile.switch_off})", dtype=object),
        ],
        axis=1,
    )
    # put switch-off right after the last inner breakpoint (before the +inf padding)
    n_inner = inner.sum(axis=1)
    rows = np.arange(n)
    pos = 1 + n_inner
    # shift padding: place off at `pos`, levels 0
    times[rows, pos] = off.reshape(n)
    levels[rows, pos] = 0.0
    labels[rows, pos] = f"switch-off ({profile.switch_off})"
    k = times.shape[1]
    col = np.arange(k)[None, :]
    pad = col > pos[:, None]
    times = np.where(pad, np.inf, times)
    return NightPlan(times, levels, labels)


@dataclass
class Scope:
    """The luminaires a plan covers: path, area, group attr (parallel lists)."""

    paths: list[str]
    areas: list[str]
    groups: list[object]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Plan:
    """Rule and profile of every luminaire on every night of ``anchors``.

    ``klass[i]``: luminaire i's class (rows of the unique scope mask); ``rule[c, d]``: winning
    rule index (-1: none; ``default_profile`` then applies if set); ``profile[c, d]``: profile
    index in ``profile_names`` (-1: not scheduled).
    """

    cfg: SchedulesConfig
    anchors: Anchors
    scope: Scope
    klass: np.ndarray
    rule: np.ndarray
    profile: np.ndarray
    profile_names: list[str]
    nights: dict[str, NightPlan]

    def levels(self, t: float, night: int) -> np.ndarray:
        """Wanted level of every luminaire at ``t`` in night row ``night``; NaN = unscheduled."""
        per_class = np.full(self.rule.shape[0], np.nan)
        pc = self.profile[:, night]
        for p, name in enumerate(self.profile_names):
            sel = pc == p
            if sel.any():
                per_class[sel] = float(self.nights[name].level_at(t, night))
        return per_class[self.klass]

    def steps(self, classes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Breakpoints of every night for the given classes: times and levels (n, D, K).

        One gather over a (profiles, nights, K) stack; unscheduled rows are all ``+inf``."""
        classes = np.arange(self.rule.shape[0]) if classes is None else np.asarray(classes)
        names = self.profile_names
        d = self.anchors.days.size
        k = max((np_.times.shape[1] for np_ in self.nights.values()), default=1)
        tt = np.full((len(names) + 1, d, k), np.inf)
        lv = np.zeros((len(names) + 1, d, k))
        for p, name in enumerate(names):
            np_ = self.nights.get(name)
            if np_ is not None:
                tt[p, :, : np_.times.shape[1]] = np_.times
                lv[p, :, : np_.levels.shape[1]] = np_.levels
        prof = self.profile[classes]  # (n, D), -1 -> last (empty) slab
        days = np.arange(d)[None, :]
        return tt[prof, days], lv[prof, days]

    def step_times(self, night: int) -> np.ndarray:
        """Every instant something changes in night row ``night`` (sorted, finite)."""
        used = {self.profile_names[p] for p in np.unique(self.profile[:, night]) if p >= 0}
        ts = [self.nights[n].times[night] for n in used]
        if not ts:
            return np.empty(0)
        allt = np.concatenate(ts)
        return np.unique(allt[np.isfinite(allt)])


def build_plan(
    cfg: SchedulesConfig, anchors: Anchors, scope: Scope, rules: Sequence[Rule] | None = None
) -> Plan:
    """Resolve calendars for every luminaire class and night, and plan each used profile."""
    rules = list(cfg.calendars if rules is None else rules)
    sm = calendar.scope_mask(rules, scope.areas, scope.paths, scope.groups)
    uniq, klass = calendar.classes(sm)
    dm = calendar.date_mask(rules, anchors.days)
    rule = calendar.resolve(dm, uniq, [r.priority for r in rules])
    names = list(cfg.profiles)
    pidx = {n: i for i, n in enumerate(names)}
    rule_prof = np.array([pidx[r.profile] for r in rules] + [-1], dtype=np.int32)
    default = pidx[cfg.default_profile] if cfg.default_profile else -1
    prof = rule_prof[rule]  # rule -1 -> last entry -1
    prof = np.where(rule < 0, default, prof)
    used = {names[p] for p in np.unique(prof) if p >= 0}
    nights = {n: plan_profile(cfg.profiles[n], anchors) for n in used}
    return Plan(cfg, anchors, scope, np.asarray(klass).reshape(-1), rule, prof, names, nights)


def nights_around(t: float, tz: str) -> np.ndarray:
    """The night containing ``t`` and the next one, as day numbers."""
    d = astro.night_of(t, tz)
    n = d.toordinal() - _EPOCH_ORD
    return np.array([n, n + 1], dtype=np.int64)


def day_number(d: date) -> int:
    return d.toordinal() - _EPOCH_ORD


def fmt_local(t: float, tz: str) -> str:
    if not np.isfinite(t):
        return "--:--"
    return datetime.fromtimestamp(t, ZoneInfo(tz)).strftime("%H:%M")


def date_of(day: int) -> date:
    return date.fromordinal(int(day) + _EPOCH_ORD)


__all__ = [
    "Anchors",
    "NightPlan",
    "Plan",
    "Scope",
    "build_plan",
    "date_of",
    "day_number",
    "fmt_local",
    "nights_around",
    "plan_profile",
    "timedelta",
]


def power_fraction(level_pct: np.ndarray | float) -> np.ndarray:
    """Input-power fraction of an LED luminaire's rated power at light level ``level_pct``.

    ``f(x) = 0.08 + 0.62 x + 0.30 x^2`` for ``x > 0`` (0 when off): the dimming curve of the
    project's luminaire model (simulators/luminaire.py docstring; driver losses make 10 % light
    draw ~14.5 % power). Duplicated here on purpose: the server never imports simulators.
    """
    x = np.asarray(level_pct, dtype=np.float64) * 0.01
    return np.where(x > 0.0, 0.08 + x * (0.62 + 0.30 * x), 0.0)


def night_energy_per_w(night: NightPlan, row: int) -> float:
    """Energy (Wh) per W of rated LED power over night ``row``: sum of segment hours x f(level)."""
    t = night.times[row]
    lv = night.levels[row]
    fin = np.isfinite(t)
    t, lv = t[fin], lv[fin]
    if t.size < 2:
        return 0.0
    return float(np.sum(np.diff(t) / 3600.0 * power_fraction(lv[:-1])))
