"""Dispatch proposals (pure): the nearest crew that is available (on shift, not busy) and has
the trade of the visit's first task; shifts in the site's time zone, overnight shifts wrap."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from scada.interventions.grouping import group, on_shift, propose
from scada.interventions.model import WorkOrder, check_day

TZ = "Europe/Paris"


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(TZ)).timestamp()


def order(i: int, loc: tuple[float, float], trade: str) -> WorkOrder:
    return WorkOrder(id=f"WO-{i:06d}", title="", state="approved", priority=3, origin="manual", devices=[f"a/d{i}"],
                     area="a", trade=trade, created=0.0, created_by="op", due_respond=1.0, due_repair=2.0,
                     location=loc, site=f"a/d{i}")


def test_shifts_in_the_site_time_zone_and_overnight() -> None:
    assert on_shift("07:00-19:00", ts("2026-01-05T07:00"), TZ)
    assert not on_shift("07:00-19:00", ts("2026-01-05T19:00"), TZ)
    assert not on_shift("07:00-19:00", ts("2026-07-05T06:30"), TZ)  # summer time: local hours still
    assert on_shift("22:00-06:00", ts("2026-01-05T23:30"), TZ) and on_shift("22:00-06:00", ts("2026-01-06T05:59"), TZ)
    assert not on_shift("22:00-06:00", ts("2026-01-06T12:00"), TZ)


def test_proposal_skips_crews_off_shift_busy_or_without_the_trade() -> None:
    vs = group([order(1, (47.32, 5.04), "electrician")], lambda t: 0, 60)
    near = {"id": "near", "trades": ["electrician"], "lat": 47.3201, "lon": 5.0401}
    far = {"id": "far", "trades": ["electrician"], "lat": 47.40, "lon": 5.10}
    painter = {"id": "painter", "trades": ["painter"], "lat": 47.32, "lon": 5.04}
    now = ts("2026-01-05T20:00")
    rows = [c | {"available": on_shift(s, now, TZ)} for c, s in ((near, "07:00-19:00"), (far, "19:00-07:00"),
                                                                   (painter, "00:00-24:00"))]
    propose(vs, rows, ["electrician", "painter"])
    assert vs[0].crew == "far"  # the nearest is off shift at 20:00, the painter lacks the trade
    rows[0]["available"] = True
    propose(vs, rows, ["electrician", "painter"])
    assert vs[0].crew == "near" and vs[0].distance_m < 20


def test_planned_days_are_iso_dates() -> None:
    assert check_day("2026-02-28") == "2026-02-28"
    for bad in ("2026-02-30", "2026-2-3", "20260203", "tomorrow", ""):
        try:
            check_day(bad)
        except ValueError as e:
            assert "YYYY-MM-DD" in str(e)
        else:
            raise AssertionError(bad)
