"""Per-night summaries of counter (and power) series, computed reset-aware from raw readings.

The energy KPI never needs a reading-by-reading pass again once a night is summarised: each
night (local noon to local noon) is cut at local midnight into an *evening* half (``e_``) and a
*morning* half (``m_``), and per series and half-night we keep the first and last good reading
(time, value), the number of good readings and ``inc``: the sum of the increments between
consecutive good readings *inside* the half-night, reset-aware (a reading below the previous one
is a counter reset: the new reading is the energy since the reset and is counted; IEC 62386-252
energy counters restart from 0 when a control gear is replaced). Per night we keep the bad
readings, the resets, ``rmax`` (the fastest increase between two readings, Wh/s: a jump faster
than the luminaire can burn sends the series back to the raw readings, see
:mod:`historian.energy`), the maximum (``vmax``, for power) and the four fingerprint lane sums
of every reading (good or not, :mod:`historian.fingerprint`).

The increments *between* half-nights (last reading of one, first of the next with data) are
left to the KPI: how such an increment is shared between the two sides depends on the burning
hours, which depend on the inventory's switching times.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import date, datetime, time
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

from scada import astro
from scada import quality as Q

from .base import Points
from .fingerprint import lane_sums

HALF = ("first_t", "first_v", "last_t", "last_v", "inc")
NIGHT = ("resets", "rmax", "vmax", "e_count", "m_count", "bad", "h0", "h1", "h2", "h3")
#: the rows of a night, in file order: what is read together is adjacent (counts and bad
#: readings, the four fingerprint lanes)
FIELDS = (*(f"e_{f}" for f in HALF), *(f"m_{f}" for f in HALF), *NIGHT)
#: value of a field for a series without data that night
MISSING = {f: (0.0 if f.endswith(("count", "inc")) or f in ("bad", "resets", "h0", "h1", "h2", "h3") else
               (0.0 if f == "rmax" else np.nan)) for f in FIELDS}


@lru_cache(maxsize=64)
def _midnight_table(tz: str, first: int, last: int) -> np.ndarray:
    zi = ZoneInfo(tz)
    return np.array([datetime.combine(date.fromordinal(d + astro._EPOCH_ORD), time(0), zi).timestamp()
                     for d in range(first, last + 1)])


def local_midnight_utc(days: np.ndarray, tz: str) -> np.ndarray:
    """POSIX time of 00:00 local (civil) time on each local date (days since the epoch)."""
    days = np.asarray(days, np.int64)
    if days.size == 0:
        return np.empty(days.shape)
    first, last = int(days.min()), int(days.max())
    return _midnight_table(tz, first, last)[days - first]


def night_edges(days: np.ndarray, tz: str) -> np.ndarray:
    """Half-night edges of the nights starting on ``days`` (consecutive local dates)."""
    days = np.asarray(days, np.int64)
    return half_edges(astro.local_noon_utc(np.append(days, days[-1] + 1), tz), local_midnight_utc(days + 1, tz))


def half_edges(noons: np.ndarray, midnights: np.ndarray) -> np.ndarray:
    """Edges of the half-nights of N nights: noon_0, midnight_0, noon_1, ..., noon_N
    (``noons`` has N+1 entries, ``midnights`` N: the local midnight inside each night)."""
    e = np.empty(2 * len(midnights) + 1)
    e[0::2] = noons
    e[1::2] = midnights
    return e


def night_summaries(p: Points, n_series: int, edges: np.ndarray,
                    max_rate: np.ndarray | None = None, chunk: int = 1 << 20) -> dict[str, np.ndarray]:
    """See :func:`_summaries`; computed by blocks of whole series of about ``chunk`` readings,
    so the temporaries stay a few MB and are reused (a night of a city is millions of rows)."""
    K = len(edges) - 1
    N = K // 2
    out = {f: np.full((N, n_series), MISSING[f]) for f in FIELDS}
    if max_rate is not None:
        out["repl"] = np.zeros((N, n_series))
    if len(p) == 0:
        return out
    sid = np.asarray(p.sid, np.int64)
    rows = np.cumsum(np.bincount(sid, minlength=n_series))
    cuts = np.unique(np.searchsorted(rows, np.arange(chunk, int(rows[-1]), chunk), side="left"))
    s_edges = [0, *(int(c) + 1 for c in cuts.tolist() if c + 1 < n_series), n_series]
    for s0, s1 in itertools.pairwise(s_edges):
        r0 = int(rows[s0 - 1]) if s0 else 0
        r1 = int(rows[s1 - 1])
        if r1 <= r0:
            continue
        part = Points(p.keys, (sid[r0:r1] - s0), p.t[r0:r1], p.v[r0:r1], p.q[r0:r1])
        sub = _summaries(part, s1 - s0, edges, None if max_rate is None else np.asarray(max_rate)[s0:s1])
        for f, a in sub.items():
            out[f][:, s0:s1] = a
    return out


def _summaries(p: Points, n_series: int, edges: np.ndarray,
               max_rate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Summaries [night, series] of every field of :data:`FIELDS` from readings ``p`` sorted by
    (series, time) (``p.sid`` < ``n_series``; :meth:`Backend.read_many` gives that order), over
    the half-nights ``edges`` (:func:`half_edges`). ``max_rate`` (Wh/s per series): an increase
    faster than that is a meter replacement, not counted; their number per night is returned
    as ``repl`` (only then)."""
    K = len(edges) - 1
    N = K // 2
    S = n_series
    out = {f: np.full((N, S), MISSING[f]) for f in FIELDS}
    if max_rate is not None:
        out["repl"] = np.zeros((N, S))
    if len(p) == 0:
        return out
    sid = np.asarray(p.sid, np.int64)
    t = np.asarray(p.t, np.float64)
    b = np.searchsorted(edges, t, side="right") - 1
    inside = (b >= 0) & (b < K)
    sid, t, b = sid[inside], t[inside], b[inside]
    v, q = p.v[inside], p.q[inside]
    # fingerprint lanes and bad counts: every reading of the night
    night = b // 2
    g_all = night * S + sid
    lanes = lane_sums(g_all, N * S, np.round(t * 1e6).astype(np.int64), v, q)
    for k in range(4):
        out[f"h{k}"] = lanes[k].reshape(N, S)
    good = Q.good_mask(q) & ~np.isnan(v)
    out["bad"] = np.bincount(g_all[~good], minlength=N * S).reshape(N, S).astype(np.float64)
    sid, t, b, v = sid[good], t[good], b[good], v[good]
    if len(t) == 0:
        return out
    # runs of one (series, half-night): contiguous, readings sorted by (series, time)
    g = b * S + sid
    start = np.ones(len(g), bool)
    start[1:] = g[1:] != g[:-1]
    first = np.flatnonzero(start)
    last = np.append(first[1:] - 1, len(g) - 1)
    gk = g[first]
    hb, hs = b[first] % 2, sid[first]
    hn = b[first] // 2
    cnt = last - first + 1
    # increments between consecutive readings of the same run, reset-aware
    same = ~start[1:]
    d = np.diff(v)
    dt = np.diff(t)
    inc = np.where(d < 0, v[1:], d)
    reset = same & (d < 0)
    rate = inc / np.maximum(dt, 1.0)
    if max_rate is not None:
        mr = np.asarray(max_rate, np.float64)[sid[1:]]
        jump = same & (inc > mr * np.maximum(dt, 1.0) + 1e-9)
        inc = np.where(jump, 0.0, inc)
    inc = np.where(same, inc, 0.0)
    run_of = np.cumsum(start) - 1  # run index of each reading
    inc_run = np.bincount(run_of[1:], weights=inc, minlength=len(first))
    flat_n = hn * S + hs
    for half, pre in ((0, "e_"), (1, "m_")):
        sel = hb == half
        for f, val in (("first_t", t[first]), ("first_v", v[first]), ("last_t", t[last]), ("last_v", v[last]),
                       ("count", cnt.astype(np.float64)), ("inc", inc_run)):
            out[pre + f].reshape(-1)[flat_n[sel]] = val[sel]
    night_r = np.repeat(flat_n, cnt)[1:]  # night cell of each increment's later reading
    NS = N * S
    out["resets"] = np.bincount(night_r[reset], minlength=NS).reshape(N, S).astype(np.float64)
    # per run (readings are contiguous per series and half-night): fastest increase and maximum,
    # then the two halves of a night together
    # the pair across local midnight inside a night (last evening reading -> first morning one)
    # counts in the night's fastest increase too: the KPI then checks only the noon edges
    mid = ~same & (sid[1:] == sid[:-1]) & (b[1:] == b[:-1] + 1) & (b[1:] % 2 == 1)
    rate_in = np.where(same | mid, rate, 0.0)
    r_rate = np.maximum.reduceat(np.append(rate_in, 0.0), first) if len(rate) else np.zeros(len(first))
    r_vmax = np.maximum.reduceat(v, first)
    rmax = np.zeros(NS)
    vmax = np.full(NS, -np.inf)
    for half in (0, 1):
        sel = hb == half
        cells = flat_n[sel]
        rmax[cells] = np.maximum(rmax[cells], r_rate[sel])
        vmax[cells] = np.maximum(vmax[cells], r_vmax[sel])
    out["rmax"] = rmax.reshape(N, S)
    out["vmax"] = np.where(np.isfinite(vmax), vmax, np.nan).reshape(N, S)
    if max_rate is not None:
        out["repl"] = np.zeros((N, S))
    if len(p) == 0:
        return out
    sid = np.asarray(p.sid, np.int64)
    t = np.asarray(p.t, np.float64)
    b = np.searchsorted(edges, t, side="right") - 1
    inside = (b >= 0) & (b < K)
    sid, t, b = sid[inside], t[inside], b[inside]
    v, q = p.v[inside], p.q[inside]
    # fingerprint lanes and bad counts: every reading of the night
    night = b // 2
    g_all = night * S + sid
    lanes = lane_sums(g_all, N * S, np.round(t * 1e6).astype(np.int64), v, q)
    for k in range(4):
        out[f"h{k}"] = lanes[k].reshape(N, S)
    good = Q.good_mask(q) & ~np.isnan(v)
    out["bad"] = np.bincount(g_all[~good], minlength=N * S).reshape(N, S).astype(np.float64)
    sid, t, b, v = sid[good], t[good], b[good], v[good]
    if len(t) == 0:
        return out
    # runs of one (series, half-night): contiguous, readings sorted by (series, time)
    g = b * S + sid
    start = np.ones(len(g), bool)
    start[1:] = g[1:] != g[:-1]
    first = np.flatnonzero(start)
    last = np.append(first[1:] - 1, len(g) - 1)
    gk = g[first]
    hb, hs = b[first] % 2, sid[first]
    hn = b[first] // 2
    cnt = last - first + 1
    # increments between consecutive readings of the same run, reset-aware
    same = ~start[1:]
    d = np.diff(v)
    dt = np.diff(t)
    inc = np.where(d < 0, v[1:], d)
    reset = same & (d < 0)
    rate = inc / np.maximum(dt, 1.0)
    if max_rate is not None:
        mr = np.asarray(max_rate, np.float64)[sid[1:]]
        jump = same & (inc > mr * np.maximum(dt, 1.0) + 1e-9)
        inc = np.where(jump, 0.0, inc)
    inc = np.where(same, inc, 0.0)
    run_of = np.cumsum(start) - 1  # run index of each reading
    inc_run = np.bincount(run_of[1:], weights=inc, minlength=len(first))
    flat_n = hn * S + hs
    for half, pre in ((0, "e_"), (1, "m_")):
        sel = hb == half
        for f, val in (("first_t", t[first]), ("first_v", v[first]), ("last_t", t[last]), ("last_v", v[last]),
                       ("count", cnt.astype(np.float64)), ("inc", inc_run)):
            out[pre + f].reshape(-1)[flat_n[sel]] = val[sel]
    night_r = np.repeat(hn * S + hs, cnt)[1:]  # night cell of each increment's later reading
    NS = N * S
    out["resets"] = np.bincount(night_r[reset], minlength=NS).reshape(N, S).astype(np.float64)
    rmax = np.zeros(NS)
    np.maximum.at(rmax, night_r[same], np.where(same, rate, 0.0)[same])
    out["rmax"] = rmax.reshape(N, S)
    vmax = np.full(NS, -np.inf)
    np.maximum.at(vmax, np.repeat(flat_n, cnt), v)
    out["vmax"] = np.where(np.isfinite(vmax), vmax, np.nan).reshape(N, S)
    if max_rate is not None:
        out["repl"] = np.bincount(night_r[jump], minlength=NS).reshape(N, S).astype(np.float64)
    del gk
    return out


def summarize(backend, keys: Sequence[str], edges: np.ndarray, max_rate: np.ndarray | None = None
              ) -> dict[str, np.ndarray]:
    """:func:`night_summaries` of ``keys`` read from ``backend`` over ``edges``."""
    p = backend.read_many(list(keys), float(edges[0]), float(edges[-1]))
    return night_summaries(p, len(keys), edges, max_rate)


class MatrixView:
    """Night summaries held in memory ([night, series] arrays per field), with the reading
    interface of :class:`historian.rollup.RollupView`."""

    def __init__(self, m: dict[str, np.ndarray]):
        self.m = m

    def night(self, j: int, field: str) -> np.ndarray:
        return self.m[field][j]

    def take(self, idx: np.ndarray, fields: Sequence[str] = FIELDS) -> dict[str, np.ndarray]:
        return {f: self.m[f][:, idx].T for f in fields}

    def block(self, j: int, field: str, n: int) -> np.ndarray:
        i = FIELDS.index(field)
        return np.vstack([self.m[f][j] for f in FIELDS[i : i + n]])
