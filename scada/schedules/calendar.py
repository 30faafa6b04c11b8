"""Calendars: which rule applies to which luminaire on which night.

A rule (:class:`scada.sections.schedules.Rule`) has a *date* part (weekdays, public holidays,
explicit dates, a date range) and a *scope* part (areas, devices, luminaire ``group`` attrs).
Both are evaluated as boolean masks - dates x rules and luminaires x rules - so resolving a year
for 200,000 luminaires is a few array operations; the winner is the matching rule of highest
priority, ties broken by the order in the file (deterministic, explainable).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from functools import lru_cache

import numpy as np

from ..sections.schedules import DAYS, Rule

_EPOCH_ORD = date(1970, 1, 1).toordinal()


def easter(year: int) -> date:
    """Gregorian Easter Sunday (anonymous Gregorian algorithm, Meeus *Astronomical Algorithms* ch. 8)."""
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month, day = divmod(h + l_ - 7 * m + 114, 31)
    return date(year, month, day + 1)


@lru_cache(maxsize=256)
def french_holidays(year: int) -> dict[date, str]:
    """The 11 French public holidays (Code du travail, art. L3133-1) of ``year``."""
    e = easter(year)
    return {
        date(year, 1, 1): "Jour de l'an",
        e + timedelta(days=1): "Lundi de Pâques",
        date(year, 5, 1): "Fête du Travail",
        date(year, 5, 8): "Victoire 1945",
        e + timedelta(days=39): "Ascension",
        e + timedelta(days=50): "Lundi de Pentecôte",
        date(year, 7, 14): "Fête nationale",
        date(year, 8, 15): "Assomption",
        date(year, 11, 1): "Toussaint",
        date(year, 11, 11): "Armistice 1918",
        date(year, 12, 25): "Noël",
    }


def holiday_name(d: date, eve: bool = False) -> str | None:
    """Name of the French public holiday on ``d`` (or, with ``eve``, on ``d + 1``)."""
    if eve:
        nxt = d + timedelta(days=1)
        name = french_holidays(nxt.year).get(nxt)
        return f"eve of {name}" if name else None
    return french_holidays(d.year).get(d)


def _days(dates: np.ndarray | Sequence[date]) -> np.ndarray:
    from ..astro import to_dates

    return to_dates(dates)


def date_mask(rules: Sequence[Rule], dates: np.ndarray | Sequence[date]) -> np.ndarray:
    """Boolean (n_dates, n_rules): does rule r's date part match the night starting on date d."""
    days = _days(dates)
    out = np.ones((days.size, len(rules)), dtype=bool)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    for r, rule in enumerate(rules):
        m = out[:, r]
        if rule.days is not None:
            allowed = np.zeros(7, dtype=bool)
            allowed[[DAYS.index(x) for x in rule.days]] = True
            m &= allowed[weekday]
        if rule.holidays is not None:
            shift = 1 if rule.eve else 0
            years = (
                range(
                    (date.fromordinal(int(days.min()) + _EPOCH_ORD + shift)).year,
                    (date.fromordinal(int(days.max()) + _EPOCH_ORD + shift)).year + 1,
                )
                if days.size
                else range(0)
            )
            hol = np.array(
                [h.toordinal() - _EPOCH_ORD for y in years for h in french_holidays(y)],
                dtype=np.int64,
            )
            m &= np.isin(days + shift, hol)
        if rule.dates is not None:
            m &= np.isin(days, np.array([d.toordinal() - _EPOCH_ORD for d in rule.dates]))
        if rule.start is not None:
            m &= days >= rule.start.toordinal() - _EPOCH_ORD
        if rule.end is not None:
            m &= days <= rule.end.toordinal() - _EPOCH_ORD
    return out


def scope_mask(
    rules: Sequence[Rule], areas: Sequence[str], paths: Sequence[str], groups: Sequence[object]
) -> np.ndarray:
    """Boolean (n_luminaires, n_rules): does rule r's scope include luminaire i.

    ``devices`` entries match a luminaire path or any prefix device path (``centre/cab-001``
    covers its luminaires); ``groups`` match the luminaire's ``group`` attr (compared as text).
    """
    n = len(paths)
    out = np.ones((n, len(rules)), dtype=bool)
    area_code, area_names = _factorize(areas)
    group_code, group_names = _factorize([str(g) for g in groups])
    for r, rule in enumerate(rules):
        m = out[:, r]
        if rule.areas is not None:
            m &= np.isin(area_names, rule.areas)[area_code]
        if rule.groups is not None:
            m &= np.isin(group_names, [str(g) for g in rule.groups])[group_code]
        if rule.devices is not None:
            prefixes = tuple(p.rstrip("/") for p in rule.devices)
            m &= np.fromiter(
                (p in prefixes or p.startswith(tuple(x + "/" for x in prefixes)) for p in paths),
                dtype=bool,
                count=n,
            )
    return out


def _factorize(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(code per value, distinct values): membership tests then run on the few distinct values."""
    index: dict[str, int] = {}
    codes = np.fromiter(
        (index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=len(values)
    )
    names = np.empty(len(index), dtype=object)
    names[:] = list(index)
    return codes, names


def classes(scope_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of a (n, R) scope mask and each row's class: luminaires every rule treats
    alike. Rows are packed into integers (R <= 62) so this is a 1-D unique, not a row sort."""
    n, r = scope_m.shape
    if r == 0:
        return np.ones((1, 0), dtype=bool), np.zeros(n, dtype=np.int64)
    if r <= 62:
        keys = scope_m.astype(np.int64) @ (np.int64(1) << np.arange(r, dtype=np.int64))
        uk, klass = np.unique(keys, return_inverse=True)
        uniq = ((uk[:, None] >> np.arange(r, dtype=np.int64)) & 1).astype(bool)
        return uniq, klass.reshape(-1)
    uniq, klass = np.unique(scope_m, axis=0, return_inverse=True)
    return uniq, np.asarray(klass).reshape(-1)


def resolve(date_m: np.ndarray, scope_m: np.ndarray, priorities: Sequence[int]) -> np.ndarray:
    """Winning rule index per (luminaire-class, date): int (n_scope, n_dates), -1 when none.

    ``scope_m`` is (n, R), ``date_m`` is (D, R). Priority order: higher priority first, then the
    rule listed first. Uses a rank per rule so the argmax over a boolean product is the winner.
    """
    n_rules = len(priorities)
    if n_rules == 0:
        return np.full((scope_m.shape[0], date_m.shape[0]), -1, dtype=np.int32)
    order = sorted(range(n_rules), key=lambda r: (-priorities[r], r))  # best first
    rank = np.empty(n_rules, dtype=np.int64)
    rank[order] = np.arange(n_rules)[::-1] + 1  # best rule -> highest score
    # score[i, d] = max over r of scope[i, r] & date[d, r] * rank[r]
    s = scope_m.astype(np.int64) * rank  # (n, R)
    best = np.zeros((scope_m.shape[0], date_m.shape[0]), dtype=np.int64)
    for r in range(n_rules):  # R is small (tens); n x D can be large: loop over rules
        cand = np.where(date_m[None, :, r], s[:, r : r + 1], 0)
        np.maximum(best, cand, out=best)
    by_rank = np.full(n_rules + 1, -1, dtype=np.int32)
    by_rank[rank] = np.arange(n_rules, dtype=np.int32)
    return by_rank[best]


def explain_rules(
    rules: Sequence[Rule], night: date, area: str, path: str, group: object
) -> list[tuple[Rule, bool, str]]:
    """For each rule (file order): (rule, matches, why) for one luminaire and one night."""
    out: list[tuple[Rule, bool, str]] = []
    dm = date_mask(rules, [night])[0]
    sm = scope_mask(rules, [area], [path], [group])[0]
    for r, rule in enumerate(rules):
        why: list[str] = []
        if rule.days is not None:
            wd = DAYS[night.weekday()]
            why.append(f"{wd} {'in' if wd in rule.days else 'not in'} days {rule.days}")
        if rule.holidays is not None:
            name = holiday_name(night, rule.eve)
            why.append(f"holiday {name!r}" if name else "not a holiday night")
        if rule.dates is not None:
            why.append(f"{night} {'listed' if night in rule.dates else 'not listed'}")
        if rule.start is not None or rule.end is not None:
            why.append(f"range {rule.start or '...'}..{rule.end or '...'}")
        if rule.areas is not None:
            why.append(f"area {area} {'in' if area in rule.areas else 'not in'} {rule.areas}")
        if rule.devices is not None:
            why.append(f"devices {rule.devices}")
        if rule.groups is not None:
            why.append(
                f"group {group} {'in' if str(group) in map(str, rule.groups) else 'not in'} "
                f"{rule.groups}"
            )
        if not why:
            why.append("applies to everything, every night")
        out.append((rule, bool(dm[r] and sm[r]), "; ".join(why)))
    return out
