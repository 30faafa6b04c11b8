"""Dimming verification on time (issue 24): on the stepped clock, with the real alarm engine and
a luminaire profile whose own ``dimming_not_followed`` deviation alarm has ``on_delay: 3min``,
the not-followed alarm is raised at fade + ``verify_after`` (+ at most one tick), not at the
profile's on_delay, and clears as soon as the luminaire reports that it obeys again (not at the
next command, hours later)."""

from __future__ import annotations

import asyncio

import pytest

from scada import quality as Q
from scada.alarms import model as M
from scada.clock import SteppedClock
from scada.loader import load_site
from scada.runtime import Runtime
from scada.schedules.service import ScheduleService, create
from scada.tags import Batch
from tests.unit.test_schedule_engine import Plant, local, site_yaml

FADE, VERIFY, TICK = 30.0, 60.0, 10.0
LUM = "centre/cab-1/lum-02"
AID = f"{LUM}/dimming_not_followed"

SCHEDULES = f"""
schedules:
  verify_after: {VERIFY:g}s
  tick: {TICK:g}s
  profiles:
    standard:
      fade: {FADE:g}s
      steps: [{{at: dusk, level: 100}}]
  calendars:
    - {{name: everyday, profile: standard, priority: 10}}
"""

LUM_ALARM = """
      - {name: lamp_failure, type: bool}
    alarms:
      - {name: dimming_not_followed, kind: deviation, point: level, reference: level_cmd,
         tolerance: 5, on_delay: 3min, priority: 3, category: lighting}
"""


@pytest.fixture
async def plant(tmp_path):
    text = site_yaml(str(tmp_path / "state"), SCHEDULES, n_cab=4, n_gw=1)
    text = text.replace("\n      - {name: lamp_failure, type: bool}\n", LUM_ALARM, 1)
    p = tmp_path / "site.yaml"
    p.write_text(text)
    alarms_service = pytest.importorskip("scada.alarms.service")
    clock = SteppedClock(start=local(2026, 1, 15, 17, 0))  # sunset ~17:15 in Dijon
    rt = Runtime(load_site(p), clock)
    pl = Plant(rt)
    svc = create(rt)
    assert isinstance(svc, ScheduleService)
    alarms = alarms_service.create(rt)
    rt.services["alarms"] = alarms
    events: list[M.AlarmEvent] = []
    alarms.engine.listeners.append(events.extend)
    tasks = [asyncio.create_task(svc.run()), asyncio.create_task(alarms.engine.run())]
    try:
        yield rt, pl, svc, alarms, clock, events
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await svc.aclose()
        await alarms.aclose()


def report(rt: Runtime, point: str, value: float) -> None:
    """The luminaire's next poll reports ``point``."""
    rt.tagdb.apply(Batch.of([rt.tagdb.index(f"{LUM}/{point}")], [value], Q.Good, rt.clock.time()))


async def test_not_followed_at_fade_plus_verify_after_and_cleared_when_obeying(plant) -> None:
    rt, pl, svc, _alarms, clock, events = plant
    pl.ignore.add(LUM)
    while not any(p == "centre/cab-1/group_level" and v == 100.0 for _, p, v in pl.log):
        await clock.advance(TICK)
    step = next(t for t, p, v in pl.log if p == "centre/cab-1/group_level" and v == 100.0)
    # the luminaire's own report of the command starts the profile's deviation (3 min on-delay)
    await clock.advance(5)
    report(rt, "level_cmd", 100.0)
    while clock.time() < step + FADE + VERIFY + 4 * 60:
        await clock.advance(TICK)
    raises = [e for e in events if e.alarm_id == AID and e.event == M.RAISE]
    assert len(raises) == 1
    # verify_after governs (not the template's on_delay: that would be step + 5 + 180)
    assert step + FADE + VERIFY <= raises[0].ts <= step + FADE + VERIFY + TICK
    # the luminaire obeys again (e.g. after a reset): its next poll reports the level
    pl.ignore.clear()
    obeyed = clock.time()
    report(rt, "level", 100.0)
    await clock.advance(0)
    clears = [e for e in events if e.alarm_id == AID and e.event == M.CLEAR]
    assert len(clears) == 1 and clears[0].ts == obeyed  # at that report, no command needed
    assert not svc.verifier.failing.any()
    await clock.advance(TICK)
    assert rt.tagdb.read("_schedules/centre/not_followed").value == 0
