"""Queries computed from raw ranges, identical for every backend.

* :func:`aggregate` - per-interval avg, min, max, first, last, count, time-weighted average and
  integral (OPC UA Part 13 aggregates, simplified: stepped interpolation, i.e. a value holds
  until the next point; bad points are excluded *and counted*, as Part 13 asks aggregates to
  report the share of bad data).
* :func:`counter_deltas` - energy per bucket from an accumulating counter, with resets,
  rollovers and meter replacements handled (see the function).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scada import quality as Q

from .base import Raw

AGGREGATES = ("avg", "min", "max", "first", "last", "count", "time_avg", "integral")


@dataclass(slots=True)
class Aggregated:
    start: np.ndarray  # bucket start times
    value: np.ndarray  # NaN where no good point
    count: np.ndarray  # good points per bucket
    bad: np.ndarray  # bad/uncertain points excluded per bucket


def aggregate(raw: Raw, t0: float, t1: float, interval: float, agg: str) -> Aggregated:
    """Aggregate ``raw`` over ``[t0, t1)`` in buckets of ``interval`` seconds.

    Only Good points are used (Uncertain and Bad ones are counted in ``bad``). For
    ``time_avg`` and ``integral`` the last good value before a bucket carries into it and a
    bad point ends the held value (no data is assumed through a bad period).
    """
    if agg not in AGGREGATES:
        raise ValueError(f"unknown aggregate {agg!r}; expected one of {', '.join(AGGREGATES)}")
    if interval <= 0:
        raise ValueError("aggregate interval must be > 0 seconds")
    nb = max(1, int(np.ceil((t1 - t0) / interval)))
    starts = t0 + np.arange(nb) * interval
    out = np.full(nb, np.nan)
    good = Q.good_mask(raw.q) & ~np.isnan(raw.v)
    inside = (raw.t >= t0) & (raw.t < t1)
    b = np.clip(((raw.t - t0) // interval).astype(np.int64), 0, nb - 1)
    count = np.bincount(b[inside & good], minlength=nb)
    bad = np.bincount(b[inside & ~good], minlength=nb)
    gi = inside & good
    tb, vb = b[gi], raw.v[gi]
    if agg in ("avg", "count", "min", "max", "first", "last") and len(tb):
        if agg == "avg":
            s = np.bincount(tb, weights=vb, minlength=nb)
            with np.errstate(invalid="ignore", divide="ignore"):
                out = np.where(count > 0, s / np.maximum(count, 1), np.nan)
        elif agg == "count":
            out = count.astype(np.float64)
        elif agg == "min":
            np.minimum.at(out_init := np.full(nb, np.inf), tb, vb)
            out = np.where(count > 0, out_init, np.nan)
        elif agg == "max":
            np.maximum.at(out_init := np.full(nb, -np.inf), tb, vb)
            out = np.where(count > 0, out_init, np.nan)
        elif agg == "first":
            pos = np.unique(tb, return_index=True)
            out[pos[0]] = vb[pos[1]]
        elif agg == "last":
            rev = np.unique(tb[::-1], return_index=True)
            out[rev[0]] = vb[::-1][rev[1]]
    elif agg == "count":
        out = count.astype(np.float64)
    elif agg in ("time_avg", "integral"):
        out = _time_weighted(raw, good, starts, interval, agg)
    return Aggregated(starts, out, count, bad)


def _time_weighted(raw: Raw, good: np.ndarray, starts: np.ndarray, interval: float, agg: str) -> np.ndarray:
    """Stepped time-weighted integral per bucket (value x seconds) or its average."""
    nb = len(starts)
    t_end = starts[-1] + interval
    # segments [t_i, t_{i+1}) carrying v_i when point i is good
    t = raw.t
    if len(t) == 0:
        return np.full(nb, np.nan)
    nxt = np.append(t[1:], t_end)
    seg_t0 = np.maximum(t, starts[0])
    seg_t1 = np.minimum(nxt, t_end)
    use = good & (seg_t1 > seg_t0)
    edges = np.append(starts, t_end)
    # integral of a step function = difference of the cumulative integral at bucket edges
    a, c, v = seg_t0[use], seg_t1[use], raw.v[use]
    cum_edges = _cum_chunked(edges, a, c, v)
    covered = _cum_chunked(edges, a, c, np.ones_like(v))
    integ = np.diff(cum_edges)
    cov = np.diff(covered)
    if agg == "integral":
        return np.where(cov > 0, integ, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cov > 0, integ / cov, np.nan)


def _cum_chunked(edges: np.ndarray, a: np.ndarray, c: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Cumulative step integral at each edge: full segments before the edge plus the partial
    one containing it (segments sorted and non-overlapping; O(n log n))."""
    if len(a) == 0:
        return np.zeros(len(edges))
    full = np.concatenate(([0.0], np.cumsum(w * (c - a))))
    k = np.searchsorted(a, edges, side="right")  # segments starting at or before the edge
    out = full[np.maximum(k - 1, 0)]
    j = np.maximum(k - 1, 0)
    part = np.where(k > 0, w[j] * np.clip(edges - a[j], 0, c[j] - a[j]), 0.0)
    return np.where(k > 0, out + part, 0.0)


@dataclass(slots=True)
class CounterDeltas:
    delta: np.ndarray  # counted increase per bucket (NaN: no good point in the bucket)
    resets: np.ndarray  # decreases treated as reset/rollover per bucket
    replacements: np.ndarray  # implausible jumps not counted per bucket
    count: np.ndarray
    bad: np.ndarray
    first_t: np.ndarray
    last_t: np.ndarray
    first_v: np.ndarray
    last_v: np.ndarray
    #: part of ``delta`` that came from the pair (last reading of an earlier bucket, first
    #: reading of this one): spread over a gap by the energy KPI
    cross: np.ndarray
    #: bucket of the reading before this bucket's first reading (-1: none)
    prev_bucket: np.ndarray


def counter_deltas(
    raw: Raw,
    edges: np.ndarray,
    *,
    max_rate: float | None = None,
    rollover: float | None = None,
    carry: tuple[float, float] | None = None,
) -> CounterDeltas:
    """Increase of an accumulating counter (energy Wh) per bucket ``[edges[k], edges[k+1])``.

    Each increment between two consecutive *good* readings belongs to the bucket of the later
    reading. A decrease is a counter reset (the meter restarted from 0: the new reading is
    counted) or, if ``rollover`` is given and the previous reading was in its top 10 %, a
    rollover (``rollover - prev + new``). An increase faster than ``max_rate`` per second
    (e.g. 3 x the luminaire's rated W / 3600 for Wh) is a meter replacement with a different
    reading and is not counted (flagged). ``carry`` = (t, v) of the last good reading before
    ``edges[0]``, so the first bucket gets its share across the boundary.
    """
    nb = len(edges) - 1
    good = Q.good_mask(raw.q) & ~np.isnan(raw.v)
    t, v = raw.t[good], raw.v[good]
    inside = (raw.t >= edges[0]) & (raw.t < edges[-1])
    bad = np.bincount(np.searchsorted(edges, raw.t[inside & ~good], side="right") - 1, minlength=nb)[:nb]
    sel = (t >= edges[0]) & (t < edges[-1])
    if carry is not None:
        t = np.concatenate(([carry[0]], t[sel]))
        v = np.concatenate(([carry[1]], v[sel]))
    else:
        t, v = t[sel], v[sel]
    b = np.searchsorted(edges, t, side="right") - 1
    delta = np.full(nb, np.nan)
    resets = np.zeros(nb, np.int64)
    repl = np.zeros(nb, np.int64)
    first_t = np.full(nb, np.nan)
    last_t = np.full(nb, np.nan)
    first_v = np.full(nb, np.nan)
    last_v = np.full(nb, np.nan)
    inb = (b >= 0) & (b < nb)
    count = np.bincount(b[inb], minlength=nb)[:nb]
    cross = np.zeros(nb)
    prev_bucket = np.full(nb, -1, np.int64)
    if len(t) == 0:
        return CounterDeltas(delta, resets, repl, count, bad, first_t, last_t, first_v, last_v,
                             cross, prev_bucket)
    u, fi = np.unique(b[inb], return_index=True)
    idx_in = np.flatnonzero(inb)
    first_t[u], first_v[u] = t[idx_in[fi]], v[idx_in[fi]]
    ur, li = np.unique(b[inb][::-1], return_index=True)
    last_t[ur], last_v[ur] = t[idx_in[::-1][li]], v[idx_in[::-1][li]]
    if len(t) >= 2:
        d = np.diff(v)
        dt = np.diff(t)
        inc = d.copy()
        dec = d < 0
        if rollover:
            roll = dec & (v[:-1] > 0.9 * rollover)
            inc[roll] = rollover - v[:-1][roll] + v[1:][roll]
            dec &= ~roll
            np.add.at(resets, b[1:][roll & (b[1:] >= 0)], 1)
        inc[dec] = v[1:][dec]  # reset: counted from 0
        if max_rate is not None:
            jump = (inc > max_rate * np.maximum(dt, 1.0))
            inc[jump] = 0.0
            np.add.at(repl, b[1:][jump & (b[1:] >= 0)], 1)
        np.add.at(resets, b[1:][dec & (b[1:] >= 0)], 1)
        tb = b[1:]
        ok = tb >= 0
        s = np.bincount(tb[ok], weights=inc[ok], minlength=nb)[:nb]
        has = np.bincount(tb[ok], minlength=nb)[:nb] > 0
        delta = np.where(has | (count > 0), s, np.nan)
        xm = ok & (b[:-1] != tb)
        cross = np.bincount(tb[xm], weights=inc[xm], minlength=nb)[:nb]
        prev_bucket[tb[xm]] = b[:-1][xm]
    else:
        delta = np.where(count > 0, 0.0, np.nan)
    return CounterDeltas(delta, resets, repl, count, bad, first_t, last_t, first_v, last_v,
                         cross, prev_bucket)
