"""The same backend test-suite on every historian backend (embedded store; influx line protocol
to a real VictoriaMetrics): write, read back with status and source time, overwrite on replay,
quality-aware aggregates, counter buckets, series listing."""

from __future__ import annotations

import numpy as np
import pytest

from historian.base import Points
from historian.query import aggregate, counter_deltas
from scada import quality as Q

pytestmark = pytest.mark.system

T0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z (in the past: VictoriaMetrics refuses the future)


def _write(b, pts: Points, batch: str) -> None:
    b.write(pts, batch)
    b.flush()


def test_write_read_back_with_quality_and_source_time(historian_backend):
    b = historian_backend
    keys = ["centre/cab-1/lum-01/power_w", "centre/cab-1/lum-02/power_w"]
    n = 50
    t = T0 + np.arange(n) * 60.0 + 0.25  # sub-second source times survive (ms precision)
    v = np.arange(n) * 1.5
    q = np.where(np.arange(n) % 10 == 3, Q.BadCommunicationError, Q.Good).astype(np.uint32)
    pts = Points.of(keys, np.r_[np.zeros(n), np.ones(n)], np.r_[t, t], np.r_[v, -v], np.r_[q, q])
    _write(b, pts, "b1")
    raw = b.read_raw(keys[1], T0, T0 + 3600)
    assert len(raw) == n
    np.testing.assert_allclose(raw.t, t, atol=1e-3)
    np.testing.assert_allclose(raw.v, -v)
    assert raw.q.tolist() == q.tolist()
    assert b.series("centre/*/power_w") == keys
    # half-open range, ascending
    part = b.read_raw(keys[0], t[10], t[20])
    assert len(part) == 10 and np.all(np.diff(part.t) > 0)


def test_replay_overwrites_same_series_and_time(historian_backend):
    b = historian_backend
    key = ["centre/cab-1/energy_wh"]
    t = T0 + np.arange(20) * 900.0
    _write(b, Points.of(key, np.zeros(20), t, np.arange(20.0)), "a")
    _write(b, Points.of(key, np.zeros(20), t, np.arange(20.0)), "a")  # replay of the same block
    raw = b.read_raw(key[0], T0, T0 + 86400)
    assert raw.v.tolist() == list(np.arange(20.0))
    if b.name == "embedded":
        # a later block with other values for the same times wins. VictoriaMetrics' dedup keeps
        # one sample per timestamp but not necessarily the later one (docs/historian.md).
        _write(b, Points.of(key, np.zeros(5), t[:5], np.full(5, 99.0)), "b")
        raw = b.read_raw(key[0], T0, T0 + 86400)
        assert raw.v.tolist() == [99.0] * 5 + list(np.arange(5.0, 20.0))


def test_nan_value_keeps_its_status(historian_backend):
    b = historian_backend
    key = ["centre/j-1/state"]
    _write(b, Points.of(key, [0, 0], [T0, T0 + 1], [np.nan, 2.0], [Q.BadNotConnected, Q.Good]), "n")
    raw = b.read_raw(key[0], T0, T0 + 10)
    assert np.isnan(raw.v[0]) and raw.q.tolist() == [Q.BadNotConnected, Q.Good]


def test_aggregates_exclude_and_count_bad_points(historian_backend):
    b = historian_backend
    key = ["centre/cab-1/power_w"]
    t = T0 + np.arange(120) * 60.0  # 2 hours, one point a minute
    v = np.where(np.arange(120) < 60, 100.0, 200.0)
    q = np.zeros(120, np.uint32)
    q[30:40] = Q.BadCommunicationError
    v[30:40] = 1e6  # a bad point's value must not leak into any aggregate
    _write(b, Points.of(key, np.zeros(120), t, v, q), "agg")
    raw = b.read_raw(key[0], T0, T0 + 7200)
    avg = aggregate(raw, T0, T0 + 7200, 3600, "avg")
    assert avg.value.tolist() == [100.0, 200.0]
    assert avg.count.tolist() == [50, 60] and avg.bad.tolist() == [10, 0]
    integ = aggregate(raw, T0, T0 + 7200, 3600, "integral")
    # stepped: the bad period (10 min) holds no value; 50 min x 100 W + 60 min x 200 W
    assert integ.value.tolist() == [100.0 * 50 * 60, 200.0 * 3600]
    assert aggregate(raw, T0, T0 + 7200, 3600, "max").value.tolist() == [100.0, 200.0]
    assert aggregate(raw, T0, T0 + 7200, 3600, "last").value.tolist() == [100.0, 200.0]


def test_counter_buckets_flag_resets(historian_backend):
    b = historian_backend
    keys = ["a/l1/energy_wh", "a/l2/energy_wh"]
    t = T0 + np.arange(96 * 2) * 900.0  # two days of 15-minute readings
    c1 = np.arange(192) * 10.0
    c2 = c1.copy()
    c2[100:] -= c2[100]  # counter reset on day 2 (reading 100 is 0)
    _write(b, Points.of(keys, np.r_[np.zeros(192), np.ones(192)], np.r_[t, t], np.r_[c1, c2]), "c")
    edges = T0 + np.arange(3) * 86400.0
    bk = b.buckets(keys, edges)
    rows = {(bk.keys[s], k): i for i, (s, k) in enumerate(zip(bk.sid.tolist(), bk.bucket.tolist(), strict=True))}
    i = rows[("a/l1/energy_wh", 1)]
    assert bk.monotonic[i] and bk.last_v[i] - bk.first_v[i] == 950.0 and bk.count[i] == 96
    assert not bk.monotonic[rows[("a/l2/energy_wh", 1)]]
    raw = b.read_raw(keys[1], edges[0], edges[-1])
    d = counter_deltas(raw, edges)
    # day 1: 95 increments of 10 Wh. Day 2: 96 increments (the one across midnight belongs to
    # the later reading); across the reset the new reading (0 Wh since reset) is counted.
    assert d.delta.tolist() == [950.0, 950.0] and d.resets.tolist() == [0, 1]
