"""The server's memory trend (issue 23): a plateau raises nothing, a steady growth raises
``_system/server/memory_growth`` once the samples span ``min_span``, and it clears when the
memory levels off. Samples are synthetic (the process's real RSS is not under the test's
control); time is the stepped clock's."""

from __future__ import annotations

import math

import pytest

from scada.alarms import model as M
from scada.loader import load_site
from scada.memdiag import RssTrend
from scada.runtime import Runtime
from tests.fixtures.alarms import write_site

H = 3600.0


def test_plateau_growth_and_warmup():
    tr = RssTrend(window_s=24 * H, min_span_s=6 * H)
    for k in range(5 * 60):  # 5 h of one sample a minute: still warming up
        tr.add(k * 60.0, 800.0 + (k % 7))
    assert tr.slope() is None
    for k in range(5 * 60, 30 * 60):  # a plateau with noise, then past the window
        tr.add(k * 60.0, 800.0 + (k % 7))
    mb_day, pct = tr.slope()
    assert abs(mb_day) < 2 and abs(pct) < 0.3
    assert tr.span() <= 24 * H
    grow = RssTrend(window_s=24 * H, min_span_s=6 * H)
    for k in range(12 * 60):  # +10 MB/h over 12 h
        grow.add(k * 60.0, 800.0 + 10.0 * k / 60.0)
    mb_day, pct = grow.slope()
    assert mb_day == pytest.approx(240.0, rel=0.02)
    assert pct == pytest.approx(100 * 240.0 / 860.0, rel=0.03)


def test_trend_ignores_missing_and_past_samples():
    tr = RssTrend(window_s=10 * H, min_span_s=H)
    tr.add(0.0, 0.0)
    tr.add(0.0, math.nan)
    assert tr.span() == 0
    for k in range(200):
        tr.add(k * 60.0, 500.0)
    tr.add(10.0, 5000.0)  # from the past (clock stepped back): ignored
    assert tr.slope()[0] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        RssTrend(window_s=H, min_span_s=2 * H)


async def test_memory_growth_alarm_raised_and_cleared(tmp_path, stepped_clock):
    site = load_site(write_site(tmp_path, nlum=2, alarms_extra="""
        memory_growth: {window: 12h, min_span: 3h, threshold_pct_per_day: 5, priority: 2}
        """), validate_drivers=False)
    rt = Runtime(site, stepped_clock)
    rt.load_services(["alarms"])
    svc = rt.services["alarms"]
    try:
        t0 = stepped_clock.time()
        for k in range(6 * 60):  # 6 h of +2 MB/h on 800 MB: 6 %/day
            rt.memory_trend.add(t0 + k * 60.0, 800.0 + 2.0 * k / 60.0)
            if k == 2 * 60:
                svc.check_memory()  # 2 h: not a trend yet
                assert "_system/server/memory_growth" not in svc.engine.by_id
        svc.check_memory()
        aid = "_system/server/memory_growth"
        v = svc.engine.view(svc.engine.find(aid))
        assert v.state == M.UNACK_ACTIVE and v.priority == 2
        assert "% a day" in v.message
        # levels off: the slope over the 12 h window falls below half the threshold
        for k in range(6 * 60, 30 * 60):
            rt.memory_trend.add(t0 + k * 60.0, 812.0)
        svc.check_memory()
        assert svc.engine.view(svc.engine.find(aid)).state == M.UNACK_RTN
    finally:
        await svc.aclose()
