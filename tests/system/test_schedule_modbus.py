"""A simulated evening through the real Modbus driver and cabinet simulators, on a SteppedClock.

The schedule service commands the cabinets (contactor at dusk, cabinet-wide ``group_level`` per
step, contactor off at the end of the night) over Modbus TCP on loopback; the simulated
luminaires follow and report their level back through the driver's polls. A luminaire with the
simulator fault ``ignore_commands`` raises "dimming_not_followed".
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from scada import quality as Q
from scada.loader import load_site
from scada.runtime import Runtime
from scada.schedules.service import ScheduleService, create
from tests.conftest import free_port

pytest.importorskip("drivers.modbus.driver")
serve_site = pytest.importorskip("simulators.cabinet").serve_site

pytestmark = pytest.mark.system

PARIS = ZoneInfo("Europe/Paris")
PROFILES = Path(__file__).resolve().parents[2] / "config" / "profiles"


def write_site(tmp_path: Path) -> Path:
    # the shipped profiles, with the cabinets' 2 s status poll slowed to 20 s so a simulated
    # evening takes a few seconds of real time
    for name in ("cabinet-modbus", "luminaire-modbus"):
        data = yaml.safe_load((PROFILES / f"{name}.yaml").read_text(encoding="utf-8"))
        opts = data["profiles"][name]["options"]
        if "status" in opts.get("poll_groups", {}):
            opts["poll_groups"]["status"] = "20s"
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    p1, p2 = free_port(), free_port()
    text = f"""
site: {{name: schedtest, latitude: 47.322, longitude: 5.041, timezone: Europe/Paris,
        state_dir: {tmp_path / "state"}}}
areas: [{{id: a}}, {{id: b}}]
include: ["cabinet-modbus.yaml", "luminaire-modbus.yaml"]
drivers:
  modbus: {{timeout: 0.25, retries: 0, connect_timeout: 0.5}}
devices:
  - id: c1
    profile: cabinet-modbus
    area: a
    connection: {{host: 127.0.0.1, port: {p1}, unit: 1}}
    children:
      - {{profile: luminaire-modbus, id: "l{{n:02d}}", count: 6, attrs: {{nominal_w: 60, legacy_w: 170, group: 1}}}}
  - id: c2
    profile: cabinet-modbus
    area: b
    connection: {{host: 127.0.0.1, port: {p2}, unit: 1}}
    children:
      - {{profile: luminaire-modbus, id: "l{{n:02d}}", count: 4, attrs: {{nominal_w: 40, legacy_w: 100, group: 2}}}}
schedules:
  verify_after: 150s
  tick: 20s
  profiles:
    evening:
      fade: 20s
      steps:
        - {{at: dusk, level: 100}}
        - {{at: "18:00", level: 50}}
        - {{at: "18:30", level: 30}}
      switch_off: "19:00"
  calendars:
    - {{name: all, profile: evening}}
"""
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return path


class Night:
    def __init__(self, tmp_path: Path, clock):
        self.site = load_site(write_site(tmp_path))
        self.clock = clock
        self.rt = Runtime(self.site, clock)
        self.rt.load_drivers(only=["modbus"])
        self.drv = self.rt.drivers["modbus"]
        self.alarms: list[tuple[str, str, bool, str]] = []
        rt = self.rt

        class AlarmsAPI:  # the alarm service's external-condition API, recorded
            def set_condition(_, path, name, active, message="", **kw):
                self.alarms.append((path, name, active, message))

        rt.services["alarms"] = AlarmsAPI()
        svc = create(rt)
        assert isinstance(svc, ScheduleService)
        self.svc = svc
        self.writes: list[tuple[float, str, object]] = []
        orig = rt.write

        async def spy(tag, value):
            self.writes.append((clock.time(), tag, value))
            return await orig(tag, value)

        rt.write = spy  # type: ignore[method-assign]
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Night:
        self.sim = await serve_site(self.site, self.clock, self.site.by_protocol()["modbus"])
        self.tasks = [
            asyncio.create_task(self.drv.run(), name="sched-modbus"),
            asyncio.create_task(self.svc.run(), name="sched-service"),
        ]
        await self.step(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.drv.aclose()
        await self.svc.aclose()
        await self.sim.aclose()

    async def step(self, seconds: float) -> None:
        await self.clock.advance(seconds)
        await self.drv.wait_idle()
        await self.clock.advance(0)
        await self.drv.wait_idle()

    async def until(self, t: float, step: float = 10.0) -> None:
        while self.clock.time() < t:
            await self.step(min(step, t - self.clock.time()))

    def level(self, path: str):
        return self.rt.tagdb.read(path + "/level")


def at(h: int, m: int = 0) -> float:
    return datetime(2026, 1, 15, h, m, tzinfo=PARIS).timestamp()


async def test_evening_followed_through_modbus_and_ignoring_luminaire_alarmed(tmp_path):
    from scada.clock import SteppedClock

    clock = SteppedClock(start=at(16, 50))
    async with Night(tmp_path, clock) as n:
        n.sim.inject("a/c1/l04", "ignore_commands")
        await n.until(at(17, 40))
        # dusk (~17:14): contactors closed, cabinets at 100 %, luminaires report 100 %
        assert n.rt.tagdb.read("a/c1/contactor").value is True
        assert n.level("a/c1/l01").value == pytest.approx(100.0)
        await n.until(at(18, 10))
        assert n.level("a/c1/l01").value == pytest.approx(50.0)
        assert n.level("b/c2/l03").value == pytest.approx(50.0)
        assert n.level("a/c1/l04").value != pytest.approx(50.0)  # ignores commands
        await n.until(at(18, 40))
        for p in ("a/c1/l01", "a/c1/l06", "b/c2/l01"):
            lv = n.level(p)
            assert lv.quality == Q.Good and lv.value == pytest.approx(30.0)
        # one alarm, for the luminaire that ignores commands, raised through the alarm API
        raised = {(p, name) for p, name, active, _ in n.alarms if active}
        assert raised == {("a/c1/l04", "dimming_not_followed")}
        assert n.rt.tagdb.read("_schedules/a/not_followed").value == 1
        assert n.rt.tagdb.read("_schedules/b/not_followed").value == 0
        await n.until(at(19, 10))
        assert n.rt.tagdb.read("a/c1/contactor").value is False
        # commands: only cabinet registers and contactors, never a luminaire's level_cmd
        tags = [t for _, t, _ in n.writes]
        assert not [t for t in tags if t.endswith("level_cmd")]
        c1 = [v for _, t, v in n.writes if t == "a/c1/group_level"]
        assert c1 == [100.0, 50.0, 30.0]
        # the profile's fade goes to the cabinet's fade register once, before the first level
        c1_all = [(t, v) for _, t, v in n.writes if t.startswith("a/c1/") and "contactor" not in t]
        assert c1_all[0] == ("a/c1/group_fade_s", 20.0)
        assert [t for t, _ in c1_all].count("a/c1/group_fade_s") == 1
        assert n.rt.tagdb.read("a/c1/group_fade_s").value == pytest.approx(20.0)
        con = [v for _, t, v in n.writes if t == "a/c1/contactor_cmd"]
        assert con == [False, True, False]
