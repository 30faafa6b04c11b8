"""Schedule engine on a passive site: server-side writers record every command and play the
luminaires (following each command, or ignoring it), the stepped clock runs whole nights."""

from __future__ import annotations

import asyncio
import textwrap
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from scada import quality as Q
from scada.clock import SteppedClock
from scada.loader import load_site
from scada.runtime import Runtime
from scada.schedules.overrides import OverrideStore, new_override
from scada.schedules.service import ScheduleService, create
from scada.tags import Batch

PARIS = ZoneInfo("Europe/Paris")

SCHEDULES = """
schedules:
  profiles:
    standard:
      fade: 30s
      steps:
        - {at: dusk, level: 100}
        - {at: "22:00", level: 70}
        - {at: midnight-1h, until: midnight+4h, level: 40}
      switch_off: dawn+10min
    full:
      steps: [{at: dusk, level: 100}]
  calendars:
    - {name: everyday, profile: standard, priority: 10}
    - {name: holidays, profile: full, holidays: FR, priority: 50}
    - {name: festival, profile: full, dates: ["2026-06-21"], areas: [centre], priority: 90}
"""


def site_yaml(state: str, schedules: str = SCHEDULES, n_cab: int = 4, n_gw: int = 4) -> str:
    return textwrap.dedent(f"""
    site: {{name: test, latitude: 47.322, longitude: 5.041, timezone: Europe/Paris,
            state_dir: {state}}}
    areas: [{{id: centre}}, {{id: chenove}}]
    profiles:
      cab:
        kind: cabinet
        points:
          - {{name: contactor_cmd, type: bool, access: rw}}
          - {{name: group_level, access: rw, eu_range: [0, 100]}}
      gw:
        kind: gateway
        points:
          - {{name: broadcast_level, access: rw, eu_range: [0, 100]}}
          - {{name: group00_level, access: rw, eu_range: [0, 100]}}
          - {{name: group01_level, access: rw, eu_range: [0, 100]}}
      lum:
        kind: luminaire
        points:
          - {{name: level, unit: "%"}}
          - {{name: level_cmd, access: rw, eu_range: [0, 100]}}
          - {{name: lamp_failure, type: bool}}
    devices:
      - id: cab-1
        profile: cab
        area: centre
        children:
          - {{profile: lum, count: {n_cab}, attrs: {{group: 7, nominal_w: 40, legacy_w: 170}}}}
      - id: gw-1
        profile: gw
        area: chenove
        children:
          - {{profile: lum, id: "lum-{{n:03d}}", count: {n_gw}, attrs: {{group: 0, nominal_w: 30, legacy_w: 100}}}}
          - {{profile: lum, id: "lum-{{n:03d}}", start: {n_gw + 1}, count: {n_gw}, attrs: {{group: 1, nominal_w: 30, legacy_w: 100}}}}
    """) + textwrap.dedent(schedules)


class Plant:
    """Server-side writers standing in for the devices: record commands, move luminaire levels."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.log: list[tuple[float, str, object]] = []
        self.ignore: set[str] = set()
        self.contactor: dict[str, bool] = {}
        for d in rt.site.all_devices():
            rt.register_writer(d.path, self._handler)
        self.lum = {d.path: d for d in rt.site.all_devices() if d.kind == "luminaire"}
        self._set(list(self.lum), 0.0)  # every luminaire reports (off) from the start

    def _set(self, paths: list[str], level: float) -> None:
        idx, vals = [], []
        for p in paths:
            if p in self.ignore:
                continue
            idx.append(self.rt.tagdb.index(p + "/level"))
            vals.append(level)
        if idx:
            self.rt.tagdb.apply(Batch.of(idx, vals, Q.Good, self.rt.clock.time()))

    async def _handler(self, i: int, value: object) -> int:
        path = self.rt.tagdb.path(i)
        dev, _, point = path.rpartition("/")
        self.log.append((self.rt.clock.time(), path, value))
        kids = [p for p in self.lum if p.startswith(dev + "/")]
        if point == "contactor_cmd":
            self.contactor[dev] = bool(value)
            if not value:
                self._set(kids, 0.0)
        elif point in ("group_level", "broadcast_level"):
            self._set(kids, float(value))
        elif point.startswith("group") and point.endswith("_level"):
            g = int(point[5:7])
            self._set([p for p in kids if int(self.lum[p].attrs["group"]) == g], float(value))
        elif point == "level_cmd":
            self._set([dev], float(value))
        return Q.Good


def local(y, mo, d, h, mi=0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=PARIS).timestamp()


@pytest.fixture
def make(tmp_path):
    async def _make(start: float, schedules: str = SCHEDULES, **kw):
        p = tmp_path / "site.yaml"
        p.write_text(site_yaml(str(tmp_path / "state"), schedules, **kw))
        site = load_site(p)
        clock = SteppedClock(start=start)
        rt = Runtime(site, clock)
        plant = Plant(rt)
        svc = create(rt)
        assert isinstance(svc, ScheduleService)
        rt.add_service(svc)
        return rt, plant, svc, clock

    return _make


async def run_until(clock: SteppedClock, svc: ScheduleService, t_end: float, step: float = 60.0):
    task = asyncio.create_task(svc.run())
    try:
        while clock.time() < t_end:
            await clock.advance(min(step, t_end - clock.time()))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_night_steps_group_commands_only(make):
    # Thursday 15 January 2026, a plain weekday: sunset ~17:15, sunrise next day ~08:25
    rt, plant, svc, clock = await make(local(2026, 1, 15, 12))
    await run_until(clock, svc, local(2026, 1, 16, 12))
    tags = [p for _, p, _ in plant.log]
    # no individual luminaire command: the cabinet register and the DALI broadcast suffice
    assert not [t for t in tags if t.endswith("/level_cmd")]
    cab = [(t, v) for t, p, v in plant.log if p == "centre/cab-1/group_level"]
    assert [v for _, v in cab] == [100.0, 70.0, 40.0, 70.0]
    times = [datetime.fromtimestamp(t, PARIS).strftime("%H:%M") for t, _ in cab]
    assert times[1] == "22:00"
    con = [(t, v) for t, p, v in plant.log if p == "centre/cab-1/contactor_cmd"]
    # at start-up (noon) the engine puts the plant in the day state, then on at dusk, off at dawn
    assert [v for _, v in con] == [False, True, False]
    # contactor on at sunset (17:1x), off 10 min after sunrise (08:3x)
    on_local = datetime.fromtimestamp(con[1][0], PARIS)
    assert (on_local.hour, on_local.minute // 10) == (17, 1)
    off_local = datetime.fromtimestamp(con[2][0], PARIS)
    assert (off_local.hour, off_local.minute // 10) == (8, 3)
    bc = [v for _, p, v in plant.log if p == "chenove/gw-1/broadcast_level"]
    assert bc == [0.0, 100.0, 70.0, 40.0, 70.0, 0.0]
    # one command per device per change: cabinet 4 levels + 3 contactor, gateway 6 broadcasts
    assert len(plant.log) == 4 + 3 + 6
    # the luminaires followed: no dimming-not-followed
    assert svc.verifier.failing.sum() == 0
    assert rt.tagdb.read("_schedules/centre/not_followed").value == 0


async def test_ignoring_luminaire_raises_not_followed_and_alarm_api(make):
    rt, plant, svc, clock = await make(local(2026, 1, 15, 16))
    plant.ignore.add("centre/cab-1/lum-03")

    calls = []

    class Alarms:
        def set_condition(self, path, cond, active, message="", **kw):
            calls.append((path, cond, active, message))

    rt.services["alarms"] = Alarms()
    await run_until(clock, svc, local(2026, 1, 15, 18))
    assert ("centre/cab-1/lum-03", "dimming_not_followed", True) in [c[:3] for c in calls]
    assert len({c[0] for c in calls}) == 1
    assert "commanded 100 %" in calls[0][3]
    assert rt.tagdb.read("_schedules/centre/not_followed").value == 1
    # it starts following again: the alarm clears at the next step's check
    plant.ignore.clear()
    await run_until(clock, svc, local(2026, 1, 15, 22, 10))
    assert calls[-1][:3] == ("centre/cab-1/lum-03", "dimming_not_followed", False)


async def test_holiday_and_festival_priority(make):
    # 14 July 2026 (Fête nationale): holiday profile "full": no dimming steps at all
    _rt, plant, svc, clock = await make(local(2026, 7, 14, 12))
    await run_until(clock, svc, local(2026, 7, 15, 12), step=300)
    cab = [v for _, p, v in plant.log if p == "centre/cab-1/group_level"]
    assert cab == [100.0]


async def test_override_wins_and_expires(make, tmp_path):
    rt, plant, svc, clock = await make(local(2026, 1, 15, 23, 30))
    await run_until(clock, svc, local(2026, 1, 15, 23, 35))
    assert svc.wanted(clock.time())[0] == 70.0
    # an accident: centre at 100 % for 2 h, written by the CLI into the shared store
    store = OverrideStore(str(tmp_path / "state" / "schedules"))
    store.add(
        new_override(
            level=100,
            minutes=120,
            reason="accident",
            user="eve",
            now=clock.time(),
            areas=["centre"],
        )
    )
    n0 = len(plant.log)
    await run_until(clock, svc, local(2026, 1, 16, 1, 0))
    after = plant.log[n0:]
    assert ("centre/cab-1/group_level", 100.0) in [(p, v) for _, p, v in after]
    # chenove is not overridden: it went to 40 % at virtual midnight - 1 h as planned
    assert ("chenove/gw-1/broadcast_level", 40.0) in [(p, v) for _, p, v in after]
    assert rt.tagdb.read("_schedules/centre/override_active").value is True
    await run_until(clock, svc, local(2026, 1, 16, 2, 0))
    last = [v for _, p, v in plant.log if p == "centre/cab-1/group_level"][-1]
    assert last == 40.0  # override expired at 01:35: back to the plan
    assert rt.tagdb.read("_schedules/centre/override_active").value is False


async def test_opcua_style_override_tags(make):
    """The override tags are written through the operator API (as the OPC UA server does):
    an engineer's action, audited with the identity and the outcome."""
    from scada.audit import AuditLog
    from scada.operations import Identity

    rt, plant, svc, clock = await make(local(2026, 1, 15, 23, 0))
    ops, eve, olga = rt.operations, Identity("eve", "engineer"), Identity("olga", "operator")
    await run_until(clock, svc, local(2026, 1, 15, 23, 5))
    assert (await ops.write(olga, "_schedules/chenove/override_level", 100)).status == Q.BadUserAccessDenied
    assert (await ops.write(eve, "_schedules/chenove/override_minutes", 30)).status == Q.Good
    assert (await ops.write(eve, "_schedules/chenove/override_level", 100)).status == Q.Good
    assert (await ops.write(eve, "_schedules/chenove/override_level", 150)).status == Q.BadOutOfRange
    await run_until(clock, svc, local(2026, 1, 15, 23, 10))
    assert plant.log[-1][1:] == ("chenove/gw-1/broadcast_level", 100.0)
    assert (await ops.write(eve, "_schedules/chenove/override_minutes", 0)).status == Q.Good  # cancel
    await run_until(clock, svc, local(2026, 1, 15, 23, 15))
    assert plant.log[-1][1:] == ("chenove/gw-1/broadcast_level", 70.0)
    log = [(e["user"], e["action"], e["target"], e["outcome"]) for e in AuditLog.read(ops.audit.path)]
    assert log == [
        ("olga", "schedule.override", "_schedules/chenove/override_level", "BadUserAccessDenied"),
        ("eve", "schedule.override", "_schedules/chenove/override_minutes", "Good"),
        ("eve", "schedule.override", "_schedules/chenove/override_level", "Good"),
        ("eve", "schedule.override", "_schedules/chenove/override_level", "BadOutOfRange"),
        ("eve", "schedule.override", "_schedules/chenove/override_minutes", "Good"),
    ]


async def test_mixed_levels_use_one_dali_group_command(make):
    sched = (
        SCHEDULES + "    - {name: g1, profile: full, groups: [1], areas: [chenove], priority: 60}\n"
    )
    rt, plant, svc, clock = await make(local(2026, 1, 15, 21, 0), schedules=sched)
    await run_until(clock, svc, local(2026, 1, 15, 22, 5))
    tags = [(p, v) for _, p, v in plant.log]
    # dusk already passed at start-up: one broadcast at 100 %; at 22:00 only DALI group 0 dims
    # (group 1 stays at 100 % under the g1 rule): one group command, nothing else
    assert [t for t in tags if t[0].startswith("chenove")] == [
        ("chenove/gw-1/broadcast_level", 100.0),
        ("chenove/gw-1/group00_level", 70.0),
    ]
    for i in range(1, 5):
        assert rt.tagdb.read(f"chenove/gw-1/lum-{i:03d}/level").value == 70.0
        assert rt.tagdb.read(f"chenove/gw-1/lum-{i + 4:03d}/level").value == 100.0


def test_commander_minimal_plans(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(site_yaml(str(tmp_path), n_cab=10, n_gw=8))
    site = load_site(p)
    from scada.schedules.engine import Commander, Fleet

    f = Fleet(site)
    c = Commander(f)
    paths = np.array(f.paths)
    w = np.full(len(f), 60.0)
    cmds = c.plan(w)
    assert [(x.tag, x.value) for x in cmds] == [
        ("centre/cab-1/contactor_cmd", True),
        ("centre/cab-1/group_level", 60.0),
        ("chenove/gw-1/broadcast_level", 60.0),
    ]
    for x in cmds:
        c.mark_sent(x)
    assert c.plan(w) == []  # steady state: nothing to send
    # one luminaire of each device overridden: one individual command each, no broad command
    w2 = w.copy()
    w2[paths == "centre/cab-1/lum-03"] = 100.0
    w2[paths == "chenove/gw-1/lum-011"] = 100.0
    assert sorted((x.tag, x.value) for x in c.plan(w2)) == [
        ("centre/cab-1/lum-03/level_cmd", 100.0),
        ("chenove/gw-1/lum-011/level_cmd", 100.0),
    ]
    # all but one cabinet luminaire change: cabinet register at the mode + one exception
    w3 = np.where(np.char.startswith(paths.astype(str), "centre"), 30.0, 60.0)
    w3[paths == "centre/cab-1/lum-05"] = 60.0
    got = [(x.tag, x.value) for x in c.plan(w3)]
    assert got == [("centre/cab-1/group_level", 30.0), ("centre/cab-1/lum-05/level_cmd", 60.0)]
    # everything off: contactor opens, the gateway gets broadcast 0
    off = c.plan(np.zeros(len(f)))
    assert [(x.tag, x.value) for x in off] == [
        ("chenove/gw-1/broadcast_level", 0.0),
        ("centre/cab-1/contactor_cmd", False),
    ]
    # a refused command is not marked sent: planned again
    assert len(c.plan(np.zeros(len(f)))) == 2


@pytest.mark.parametrize("night", [(2026, 3, 28), (2026, 10, 24)])
async def test_dst_nights_one_step_each(make, night):
    """Step at 02:30 local: on 29 March it does not exist (gap), on 25 October it happens twice."""
    sched = """
    schedules:
      profiles:
        p:
          steps:
            - {at: dusk, level: 100}
            - {at: "02:30", level: 30}
            - {at: "05:00", level: 60}
      calendars:
        - {name: all, profile: p}
    """
    y, m, d = night
    _rt, plant, svc, clock = await make(local(y, m, d, 12), schedules=sched)
    await run_until(clock, svc, local(y, m, d + 1, 12), step=120)
    cab = [(t, v) for t, p, v in plant.log if p == "centre/cab-1/group_level"]
    assert [v for _, v in cab] == [100.0, 30.0, 60.0]
    t30 = datetime.fromtimestamp(cab[1][0], UTC)
    # March: 02:30 does not exist -> 01:30 UTC (the CET reading, i.e. 03:30 CEST);
    # October: 02:30 happens twice -> only the first one, 02:30 CEST = 00:30 UTC
    assert (t30.hour, t30.minute) == ((1, 30) if m == 3 else (0, 30))


async def test_disabled_or_empty_schedules_give_no_service(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(site_yaml(str(tmp_path), schedules="schedules: {enabled: false}\n"))
    rt = Runtime(load_site(p), SteppedClock())
    assert create(rt) is None


def test_wanted_is_nan_for_unscheduled(make):
    sched = """
    schedules:
      profiles:
        p: {steps: [{at: dusk, level: 80}]}
      calendars:
        - {name: c, profile: p, areas: [centre]}
    """

    async def go():
        _rt, _plant, svc, clock = await make(local(2026, 1, 15, 20), schedules=sched)
        w = svc.wanted(clock.time())
        return w, svc.fleet.areas

    w, areas = asyncio.run(go())
    assert np.all(w[np.array(areas) == "centre"] == 80)
    assert np.isnan(w[np.array(areas) == "chenove"]).all()


async def test_photocell_hysteresis_window_and_fallback(make):
    sched = SCHEDULES.replace(
        "schedules:\n", "schedules:\n  photocell: {tag: centre/ws-1/lux, on_lux: 20, off_lux: 40}\n"
    )
    rt, _plant, svc, clock = await make(local(2026, 1, 15, 13, 0), schedules=sched)
    from scada.tags import PointDef

    lux = rt.tagdb.add_tag("centre/ws-1/lux", PointDef("lux", unit="lx"))

    def sensor(v: float, q: int = Q.Good) -> None:
        rt.tagdb.apply(Batch.of([lux], [v], q, clock.time()))

    lum = svc.fleet.paths.index("centre/cab-1/lum-01")
    sensor(5.0)  # dark at 13:00 (a covered cell): outside max_shift of dusk -> ignored
    assert svc.wanted(clock.time())[lum] == 0.0
    await clock.advance_to(local(2026, 1, 15, 16, 40))  # dusk ~17:14: inside the 1 h window
    assert svc.wanted(clock.time())[lum] == 100.0  # storm: lights on early
    sensor(30.0)  # between the thresholds: stays on (hysteresis)
    assert svc.wanted(clock.time())[lum] == 100.0
    sensor(50.0)  # bright again: off
    assert svc.wanted(clock.time())[lum] == 0.0
    sensor(30.0)
    assert svc.wanted(clock.time())[lum] == 0.0
    await clock.advance_to(local(2026, 1, 15, 17, 30))  # after dusk, the cell still sees light
    assert svc.wanted(clock.time())[lum] == 0.0
    sensor(30.0, Q.BadCommunicationError)  # sensor lost: astronomical clock decides
    assert svc.wanted(clock.time())[lum] == 100.0


async def test_not_followed_reaches_the_real_alarm_engine(make):
    alarms_service = pytest.importorskip("scada.alarms.service")
    rt, plant, svc, clock = await make(local(2026, 1, 15, 17, 0))
    alarms = alarms_service.create(rt)
    assert alarms is not None
    rt.services["alarms"] = alarms
    plant.ignore.add("centre/cab-1/lum-02")
    try:
        await run_until(clock, svc, local(2026, 1, 15, 17, 40))
        active = {a.alarm_id: a for a in alarms.engine.active()}
        a = active["centre/cab-1/lum-02/dimming_not_followed"]
        assert a.category == "lighting" and a.priority == 3
        assert "commanded 100 %" in a.message
        assert [k for k in active if k.endswith("dimming_not_followed")] == [a.alarm_id]
    finally:
        await alarms.aclose()


async def test_override_survives_restart_and_refused_write_is_retried(make, tmp_path):
    rt, _plant, _svc, clock = await make(local(2026, 1, 15, 23, 0))
    store = OverrideStore(str(tmp_path / "state" / "schedules"))
    store.add(
        new_override(
            level=90,
            minutes=60,
            reason="event",
            user="eve",
            now=clock.time(),
            devices=["chenove/gw-1"],
        )
    )
    # a fresh service (server restart) on the same state directory picks the override up
    rt2 = Runtime(rt.site, clock)
    plant2 = Plant(rt2)
    svc2 = create(rt2)
    refuse = {"n": 1}
    orig = plant2._handler

    async def flaky(i, value):
        if refuse["n"] and rt2.tagdb.path(i).endswith("broadcast_level"):
            refuse["n"] -= 1
            return Q.BadCommunicationError  # gateway busy: refused once
        return await orig(i, value)

    rt2.register_writer("chenove/gw-1", flaky)
    await svc2.tick()
    assert ("chenove/gw-1/broadcast_level", 90.0) not in [(p, v) for _, p, v in plant2.log]
    await clock.advance(10)
    await svc2.tick()
    assert plant2.log[-1][1:] == ("chenove/gw-1/broadcast_level", 90.0)
    await clock.advance(3600)
    await svc2.tick()
    # expired at 00:00: back to the plan (40 % from virtual midnight - 1 h)
    assert plant2.log[-1][1:] == ("chenove/gw-1/broadcast_level", 40.0)


async def test_rate_limit_spreads_commands_over_clock_seconds(make):
    sched = SCHEDULES.replace("schedules:\n", "schedules:\n  rate_limit: 2\n")
    _rt, plant, svc, clock = await make(local(2026, 1, 15, 20, 0), schedules=sched, n_cab=3)
    # six luminaires with different levels -> individual commands, at most 2 per second
    paths = svc.fleet.paths
    wanted = np.array([10.0 * (k + 1) for k in range(len(paths))])
    svc.wanted = lambda t: wanted  # type: ignore[method-assign]
    task = asyncio.create_task(svc.tick())
    for _ in range(10):
        await clock.advance(1.0)
    await task
    times = [t for t, p, _ in plant.log if p.endswith("level_cmd")]
    assert len(times) >= 6
    per_second = np.unique(np.floor(np.array(times) - times[0]), return_counts=True)[1]
    assert per_second.max() <= 2
