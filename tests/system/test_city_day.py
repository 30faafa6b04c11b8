"""Issue 23: a whole simulated day of a small generated city, counted in alarm events.

By day the schedules keep the cabinets' contactors open: every luminaire behind them is dark by
design, and its "dimming not followed" (level 0, command 100) and "lamp failure" are suppressed
(alarms.suppressed_by: contactor off). The server used to journal and send each of those as a
Suppressed raise, one event per luminaire each morning (113,845 events in three minutes at Paris
size), and to annunciate them at dusk before their next poll had shown the light.

Here the whole pipeline runs for 24 hours of a SteppedClock from noon (Europe/Paris, a fixed
winter date: nothing depends on the real time of day): cabinet and DALI gateway simulators on
real sockets (Modbus TCP, a real Mosquitto), the runtime with its drivers, alarms, schedules and
OPC UA server, and a real OPC UA client subscribed to every alarm event. Three faults:

* a lamp failure at 13:00 behind an open contactor: hidden by design (no event); annunciated at
  dusk when the contactor closes and the lamp's poll confirms it; hidden again at dawn;
* a DALI lamp failure at 14:00: a red dot at once (no contactor hides it);
* a lamp failure at 20:00, repaired at 21:00: raised and cleared (left unacknowledged, so hidden
  at dawn with the others).

Pass: the events over the day are the ones these faults explain and nothing else; a lamp that
stays off by day produces no event after the first; the client received every one of them.
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from asyncua import Client, ua

from commands.core import resolve_state_dir
from scada.alarms import model as M
from scada.clock import SteppedClock
from scada.gencity import generate
from scada.loader import load_site
from scada.runtime import Runtime
from simulators.city import start_simulators
from tests.conftest import device_ports, free_port
from tests.fixtures.mqtt import eventually

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(900)]

PROFILES = Path(__file__).resolve().parents[2] / "config" / "profiles"
PARIS = ZoneInfo("Europe/Paris")
STEP = 30.0  # seconds of simulated time per step: the cabinets' status poll period here


def at(day: int, h: int, m: int = 0) -> float:
    return datetime(2026, 12, 2 + day, h, m, tzinfo=PARIS).timestamp()


def city(tmp_path: Path, broker: str) -> tuple[str, int]:
    """60 light points (cabinets and a DALI gateway), no junction, the shipped profiles with the
    cabinets' status poll at 30 s; luminaires report every 60 s as shipped."""
    prof = tmp_path / "profiles"
    shutil.copytree(PROFILES, prof)
    cab = prof / "cabinet-modbus.yaml"
    text = cab.read_text()
    assert "status: 2s" in text
    cab.write_text(text.replace("status: 2s", "status: 30s"))
    site = tmp_path / "city.yaml"
    generate(60, 0, out_path=str(site), profiles_dir=str(prof), seed=3, base_port=device_ports(),
             broker=broker)
    port = free_port()
    site.write_text(site.read_text() + "historian: {enabled: false}\n"
                    f"opcua: {{port: {port}, allow_security_none: true}}\n")
    return str(site), port


class EventCounter:
    """A real OPC UA client's event handler: (source, condition, active, retain) of each."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, bool, bool]] = []

    def event_notification(self, ev) -> None:
        f = ev.get_event_props_as_fields_dict()

        def val(name: str):
            v = f.get(name)
            v = getattr(v, "Value", v)
            return getattr(v, "Text", v)

        self.events.append((str(val("SourceName")), str(val("ConditionName")),
                            bool(val("ActiveState/Id")), bool(val("Retain"))))


async def test_a_day_of_the_city_makes_only_the_events_its_faults_explain(tmp_path, mosquitto):
    site_path, opcua_port = city(tmp_path, mosquitto.address)
    site = load_site(site_path)
    resolve_state_dir(site)
    clock = SteppedClock(start=at(1, 12))
    sims = await start_simulators(site, clock)
    rt = Runtime(site, clock)
    client = None
    try:
        assert await sims["mqtt"].wait_connected(10), "simulated gateways not connected"
        rt.load_drivers()
        rt.load_services()
        await rt.start()
        db = rt.tagdb
        mb, mq = rt.drivers["modbus"], rt.drivers["mqtt"]
        engine = rt.services["alarms"].engine
        announced: list[M.AlarmEvent] = []
        engine.listeners.append(announced.extend)
        opcua = rt.services["opcua"]
        await asyncio.wait_for(opcua.started.wait(), 30)
        client = Client(f"opc.tcp://127.0.0.1:{opcua_port}/scada", timeout=30)
        await client.connect()
        counter = EventCounter()
        sub = await client.create_subscription(100, counter)
        await sub.subscribe_events(client.nodes.server, ua.ObjectIds.AlarmConditionType)

        cabinets = [d for d in site.devices if d.kind == "cabinet"]
        gateways = [d for d in site.devices if d.kind == "gateway"]
        assert cabinets and gateways
        modbus_lums = [c.path for d in cabinets for c in d.children]
        dali_lums = [c.path for d in gateways for c in d.children]
        gws = sims["mqtt"].gateways

        base = {"pub": 0, "msg": 0}

        async def settle() -> None:
            """The polls and reports of this instant have reached the tag database."""
            await mb.wait_idle()
            await clock.advance(0)
            await mb.wait_idle()
            sent = sum(g.published for g in gws.values()) - base["pub"]
            await eventually(lambda: mq.stats["messages"] - base["msg"] >= sent, within=10,
                             what="DALI reports delivered")

        async def run_until(t: float) -> None:
            while clock.time() < t:
                await clock.advance(min(STEP, t - clock.time()))
                await settle()

        def events_of(path: str, since: float = 0.0, until: float = float("inf")) -> list:
            return [(e.event, e.state) for e in announced
                    if e.device == path and since <= e.ts < until]

        for _ in range(10):  # the first polls and reports (sent before the driver subscribed
            await clock.advance(STEP)  # are not counted)
            await mb.wait_idle()
        await eventually(lambda: all(db.read(f"{p}/level").good for p in modbus_lums + dali_lums),
                         within=30, what="every luminaire read once")
        base.update(pub=sum(g.published for g in gws.values()), msg=mq.stats["messages"])
        await run_until(at(1, 12, 30))  # the schedule has opened the contactors (day)
        assert all(db.read(f"{c.path}/contactor").value == 0 for c in cabinets)
        baseline = len(announced)

        dark, dali, night = modbus_lums[0], dali_lums[0], modbus_lums[-1]
        await run_until(at(1, 13))
        sims["modbus"].inject(dark, "lamp_failure")    # hidden by design: no event
        await run_until(at(1, 14))
        sims["mqtt"].inject(dali, "lamp_failure")      # a red dot at once
        await run_until(at(1, 16))
        # the dark luminaires' "dimming not followed" is active behind its suppression
        quiet = engine.view(engine.find(f"{modbus_lums[1]}/dimming_not_followed"))
        assert quiet.active and quiet.suppressed
        assert engine.counts()["suppressed"] >= len(modbus_lums)
        await run_until(at(1, 20))                     # dusk is at ~16:55
        assert all(db.read(f"{c.path}/contactor").value == 1 for c in cabinets)
        # at night only the failed lamps' own "dimming not followed" stays suppressed
        hidden = {(a.device, a.name) for a in engine.active(include_hidden=True) if a.suppressed}
        assert hidden == {(dark, "dimming_not_followed"), (dali, "dimming_not_followed")}
        sims["modbus"].inject(night, "lamp_failure")
        await run_until(at(1, 21))
        sims["modbus"].clear(night, "lamp_failure")
        await run_until(at(2, 12))                     # dawn ~08:12, contactors open 10 min later
        assert all(db.read(f"{c.path}/contactor").value == 0 for c in cabinets)

        day = announced[baseline:]
        # a lamp that stays off by day: nothing by day, annunciated at dusk (its poll confirmed
        # the failure), hidden at dawn, and nothing after that first event of the morning
        assert events_of(dark, until=at(1, 16, 30)) == []
        assert [ev for ev, _ in events_of(dark)] == ["unsuppress", "suppress"]
        dawn = next(e.ts for e in announced if e.device == dark and e.event == "suppress")
        assert at(2, 8) < dawn < at(2, 9)
        assert events_of(dali) == [("raise", M.UNACK_ACTIVE)]
        # returned to normal unacknowledged (Unack-RTN, still retained): hidden at dawn
        assert events_of(night) == [("raise", M.UNACK_ACTIVE), ("clear", M.UNACK_RTN),
                                    ("suppress", M.SUPPRESSED)]
        # every event of the day is explained by one of the three faults
        assert {e.device for e in day} == {dark, dali, night}, [
            (e.alarm_id, e.event, e.state) for e in day if e.device not in (dark, dali, night)]
        assert len(day) == 6
        # and the HMI client got the same, red dots with Retain
        await eventually(lambda: len(counter.events) >= len(announced), within=30,
                         what="every announced event at the OPC UA client")
        got = [(s, n, a, r) for s, n, a, r in counter.events if s in (dark, dali, night)]
        assert (dark, "lamp_failure", True, True) in got        # dusk: a red dot
        assert (dark, "lamp_failure", True, False) in got       # dawn: hidden again
        assert (dali, "lamp_failure", True, True) in got
        assert len(counter.events) == len(announced)
        assert rt.restarts == 0
    finally:
        if client is not None:
            await client.disconnect()
        await rt.stop()
        await sims.aclose()
