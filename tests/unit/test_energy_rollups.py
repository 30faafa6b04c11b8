"""Per-night roll-ups give the same KPI as the raw data, and a block written later for a night
already rolled up (a spool replay after an outage) makes that night be recomputed."""

from __future__ import annotations

from datetime import date

import numpy as np

from historian.base import Points
from historian.embedded import EmbeddedBackend
from historian.energy import Inventory, LightPoint, compute
from historian.rollup import Rollups
from scada import astro

LAT, LON, TZ = 47.322, 5.0415, "Europe/Paris"


def _counter(watts: float, days: int):
    d = astro.to_dates([date(2024, 12, 31)])[0] + np.arange(days + 2)
    on, off, _ = astro.night_bounds(LAT, LON, d, TZ)
    t = np.arange(astro.local_noon_utc(d[:1], TZ)[0], off[-1], 900.0)
    lit = np.concatenate(([0.0], np.cumsum(off - on)))
    k = np.searchsorted(on, t, side="right") - 1
    kk = np.maximum(k, 0)
    return t, watts * (lit[kk] + np.where(k >= 0, np.clip(t - on[kk], 0, (off - on)[kk]), 0)) / 3600


def test_rollups_match_raw_and_follow_late_blocks(tmp_path):
    b = EmbeddedBackend(str(tmp_path / "store"), {"fsync": False})
    inv = Inventory([LightPoint(f"a/cab/l{i}", 170.0, 40.0, "a", "a/cab") for i in range(3)], "t", "0" * 64)
    keys = [f"a/cab/l{i}/energy_wh" for i in range(3)]
    t, e = _counter(40.0, 31)
    gap = (t < t[0] + 10 * 86400) | (t > t[0] + 12 * 86400)  # l2 misses two nights at first
    pts = Points.of(keys, np.r_[np.zeros(len(t)), np.ones(len(t)), np.full(gap.sum(), 2)],
                    np.r_[t, t, t[gap]], np.r_[e, 1.5 * e, e[gap]])
    b.write(pts, "first")
    kw = {"lat": LAT, "lon": LON, "tz": TZ, "d0": date(2025, 1, 1), "d1": date(2025, 1, 30), "convention": "night"}
    raw = compute(b, inv, **kw)
    ru = Rollups(str(tmp_path / "rollups"))
    rolled = compute(b, inv, rollups=ru, **kw)
    assert rolled.luminaires == raw.luminaires and rolled.monthly == raw.monthly
    assert [r["filled_days"] for r in rolled.luminaires] == [0, 0, 2]
    assert ru.update(b, keys, TZ, date(2024, 12, 31), date(2025, 1, 31)) == 0  # all fresh
    # the missing readings arrive late (replayed from a spool): those nights are recomputed
    late = ~gap
    b.write(Points.of(keys, np.full(late.sum(), 2), t[late], e[late]), "late")
    assert ru.update(b, keys, TZ, date(2024, 12, 31), date(2025, 1, 31)) >= 2
    again = compute(b, inv, rollups=ru, **kw)
    assert [r["filled_days"] for r in again.luminaires] == [0, 0, 0]
    assert again.luminaires == compute(b, inv, **kw).luminaires
    b.close()


def test_night_summaries_are_reset_aware():
    """One night, one counter: readings in the evening, a reset at 22:00, a jump, a bad reading;
    the summary's halves, resets, fastest increase and fingerprint lanes, by hand."""
    from historian.fingerprint import Fingerprint
    from historian.summary import night_edges, night_summaries
    from scada import quality as Q

    day = astro.to_dates([date(2025, 3, 1)])[0]
    e = night_edges(np.array([day]), TZ)  # noon, midnight, next noon
    noon, mid = e[0], e[1]
    t = np.array([noon + 3600, mid - 7200, mid - 3600, mid - 1800, mid, mid + 1800, mid + 3600])
    v = np.array([100.0, 150.0, 10.0, 20.0, 30.0, 40.0, 5000.0])  # reset at 23:00, jump at 01:00
    q = np.zeros(len(t), np.uint32)
    t = np.append(t, mid + 5400)
    v = np.append(v, np.nan)
    q = np.append(q, Q.BadCommunicationError)
    p = Points.of(["a/l/energy_wh"], np.zeros(len(t)), t, v, q)
    s = night_summaries(p, 1, e)
    assert (s["e_first_v"][0, 0], s["e_last_v"][0, 0], s["e_count"][0, 0]) == (100.0, 20.0, 4)
    assert s["e_inc"][0, 0] == 50.0 + 10.0 + 10.0  # 100->150, reset: 10 counted, 10->20
    assert (s["m_first_v"][0, 0], s["m_last_v"][0, 0], s["m_count"][0, 0]) == (30.0, 5000.0, 3)
    assert s["m_inc"][0, 0] == 10.0 + 4960.0
    assert s["resets"][0, 0] == 1 and s["bad"][0, 0] == 1
    assert s["rmax"][0, 0] == 4960.0 / 1800.0
    # with a plausible bound the jump is not counted, and flagged
    s2 = night_summaries(p, 1, e, max_rate=np.array([1.0]))
    assert s2["m_inc"][0, 0] == 10.0 and s2["repl"][0, 0] == 1
    fp = Fingerprint()
    fp.add_points(p.keys, p.sid, p.t, p.v, p.q)
    mine = Fingerprint()
    mine.add_series("a/l/energy_wh", 8, np.array([s[f"h{i}"][0, 0] for i in range(4)]), None, None)
    assert mine.content_hash() == fp.content_hash()
