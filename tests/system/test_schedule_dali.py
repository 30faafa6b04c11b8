"""Schedule steps over a real Mosquitto to simulated DALI gateways: broadcast at dusk, one DALI
group command when only a group changes, "dimming_not_followed" for a luminaire whose gear
ignores commands. Time is a SteppedClock; network delivery is real (waited for with a bound).
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from scada.clock import SteppedClock
from scada.schedules.service import ScheduleService, create

pytest.importorskip("drivers.mqtt.driver")
pytest.importorskip("simulators.dali_gateway")
from tests.fixtures.mqtt import DaliSystem, eventually, load_dali_site

pytestmark = pytest.mark.system

PARIS = ZoneInfo("Europe/Paris")
GW = "centre/gw-a"
SCHEDULES = """
schedules:
  verify_after: 60s
  profiles:
    std:
      steps: [{at: dusk, level: 100}, {at: "18:00", level: 60}]
    bright:
      steps: [{at: dusk, level: 100}]
  calendars:
    - {name: all, profile: std, priority: 10}
    - {name: main-road, profile: bright, groups: [2], priority: 20}
"""


def at(h: int, m: int = 0) -> float:
    return datetime(2026, 1, 15, h, m, tzinfo=PARIS).timestamp()


async def test_dali_broadcast_then_group_command_and_not_followed(tmp_path, mosquitto):
    site = load_dali_site(
        tmp_path, mosquitto.address, {"gw-a": [(1, 8), (65, 4)]}, extra_profiles=SCHEDULES
    )
    site.config.site.state_dir = str(tmp_path / "state")
    clock = SteppedClock(start=at(17, 30))
    s = DaliSystem(site, clock)
    try:
        await s.start()
        calls: list[tuple[str, str, bool]] = []

        class AlarmsAPI:
            def set_condition(self, path, name, active, message="", **kw):
                calls.append((path, name, active))

            async def aclose(self):
                pass

        s.rt.services["alarms"] = AlarmsAPI()
        svc = create(s.rt)
        assert isinstance(svc, ScheduleService)
        sent: list[tuple[str, object]] = []
        orig = s.rt.write

        async def spy(tag, value):
            sent.append((tag, value))
            return await orig(tag, value)

        s.rt.write = spy  # type: ignore[method-assign]
        lums = [f"{GW}/lum-{n:03d}" for n in (*range(1, 9), *range(65, 69))]

        def levels() -> list[float | None]:
            return [s.db.read(p + "/level").value for p in lums]

        await svc.tick()  # 17:30, after dusk: everything at 100 %
        await s.tick(1)
        await eventually(lambda: levels() == [100.0] * 12, what="all luminaires at 100 %")
        assert sent == [(f"{GW}/broadcast_level", 100.0)]

        s.sims["gw-a"].bank.ignore_commands[2] = True  # lum-003's gear stops obeying
        await s.tick(30 * 60)  # 18:00
        await svc.tick()
        assert sent[1:] == [(f"{GW}/group01_level", 60.0)]  # group 2 stays bright: no command
        await s.tick(1)
        await eventually(
            lambda: levels() == [60.0, 60.0, 100.0, *[60.0] * 5, *[100.0] * 4],
            what="group 1 at 60 % except the luminaire ignoring commands",
        )
        await s.tick(90)
        await svc.tick()
        assert calls == [(f"{GW}/lum-003", "dimming_not_followed", True)]
        assert s.db.read("_schedules/centre/not_followed").value == 1
        await svc.aclose()
    finally:
        await s.stop()
