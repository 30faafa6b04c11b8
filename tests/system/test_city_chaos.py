"""Issue 9 at small size: a generated city runs through the whole pipeline (simulators ->
Modbus/MQTT/OPC UA drivers -> tag database -> alarms, historian, OPC UA server) on real sockets
(a real Mosquitto), while it is hit by every fault of the chaos list, one after the other:

* a cabinet killed (its controller stops answering) and brought back,
* the MQTT broker restarted,
* the historian backend taken away and brought back,
* a junction controller's OPC UA server restarted,
* a flood of lamp failures in one go,
* HMI clients connecting and disconnecting.

Pass: no supervised task ever crashed; affected tags go bad and recover; one alarm per root
cause (a dead cabinet is one red dot, its luminaires suppressed); the flood is detected; zero
historian points lost (counted); poll cycles of the other devices stay on time (+10 %); no
OPC UA session left behind. `bench/city.py --size dijon` runs the same pipeline at city scale.

Real time (the protocols' own timers run on it), reporting periods shortened to 1-2 s so the
whole story takes about a minute; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from asyncua import Client

from commands.core import resolve_state_dir
from scada import quality as Q
from scada.alarms.journal import read_journal
from scada.alarms.metrics import compute as alarm_metrics
from scada.clock import RealClock
from scada.gencity import generate
from scada.loader import load_site
from scada.runtime import Runtime
from simulators.city import start_simulators
from tests.conftest import device_ports, free_port
from tests.fixtures.historian import EmbeddedOutage
from tests.fixtures.mqtt import eventually

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(300)]

PROFILES = Path(__file__).resolve().parents[2] / "config" / "profiles"


def city(tmp_path: Path, broker: str) -> tuple[str, int]:
    """A small generated city with fast reporting periods and a free OPC UA port."""
    prof = tmp_path / "profiles"
    shutil.copytree(PROFILES, prof)
    for name, old, new in (
        ("cabinet-modbus.yaml", "status: 2s", "status: 1s"),
        ("luminaire-modbus.yaml", "report: 60s", "report: 2s"),
        ("luminaire-dali.yaml", "report_period_s: 60", "report_period_s: 2"),
        ("dali-gateway.yaml", "report_period_s: 60", "report_period_s: 2"),
    ):
        p = prof / name
        text = p.read_text()
        assert old in text, f"{name}: expected {old!r} to shorten the period"
        p.write_text(text.replace(old, new))
    site = tmp_path / "city.yaml"
    generate(300, 2, out_path=str(site), profiles_dir=str(prof), seed=5, base_port=device_ports(),
             broker=broker, junctions_per_server=1)
    port = free_port()
    text = site.read_text().replace("schedules:\n", "schedules:\n  enabled: false\n", 1)
    site.write_text(text + f"opcua: {{port: {port}, allow_security_none: true}}\n")
    return str(site), port


def quality_of(rt: Runtime, path: str) -> int:
    return rt.tagdb.read(path).quality


async def test_city_survives_the_chaos_list(tmp_path, mosquitto):
    site_path, opcua_port = city(tmp_path, mosquitto.address)
    site = load_site(site_path)
    resolve_state_dir(site)
    clock = RealClock()
    sims = await start_simulators(site, clock)
    rt = Runtime(site, clock)
    try:
        rt.load_drivers()
        rt.load_services()
        await rt.start()
        db = rt.tagdb
        cabinets = [d for d in site.devices if d.kind == "cabinet"]
        gateways = [d for d in site.devices if d.kind == "gateway"]
        junctions = [d for d in site.devices if d.kind == "junction"]
        assert len(cabinets) >= 3 and gateways and len(junctions) == 2
        lums = [c for d in site.devices for c in d.children]
        await eventually(lambda: all(db.read(f"{lum.path}/level").good for lum in lums), within=60,
                         what="every luminaire read once")
        await eventually(lambda: all(db.read(f"{j.path}/mode").good for j in junctions), within=60,
                         what="junctions subscribed")
        engine = rt.services["alarms"].engine
        hist = rt.services["historian"]
        opcua = rt.services["opcua"]
        await asyncio.wait_for(opcua.started.wait(), 30)
        baseline = {a.alarm_id for a in engine.active()}

        def new_active() -> list:
            return [a for a in engine.active() if a.alarm_id not in baseline and a.active]

        # 1. a cabinet killed: one red dot for it, none for its luminaires; back again after
        victim = cabinets[0]
        others = cabinets[1:]
        mb = rt.drivers["modbus"].ctx.health
        cycles0, late0 = mb.get("cycles"), mb.get("late_cycles")
        sims["modbus"].inject(victim.path, "offline")
        await eventually(lambda: quality_of(rt, f"{victim.path}/voltage_l1") == Q.BadCommunicationError
                         and all(quality_of(rt, f"{c.path}/level") == Q.BadCommunicationError
                                 for c in victim.children), within=30, what="dead cabinet's tags bad")
        await eventually(lambda: any(a.device == victim.path and a.name == "comm_lost" for a in new_active()),
                         within=30, what="comm_lost red dot")
        root = [a for a in new_active() if a.device.startswith(victim.path)]
        assert [(a.device, a.name) for a in root] == [(victim.path, "comm_lost")], root
        assert all(db.read(f"{c.path}/level").good for o in others for c in o.children)
        sims["modbus"].clear(victim.path)
        await eventually(lambda: all(db.read(f"{c.path}/level").good for c in victim.children)
                         and db.read(f"{victim.path}/voltage_l1").good, within=60, what="cabinet back")
        await eventually(lambda: not any(a.device.startswith(victim.path) for a in new_active()),
                         within=30, what="comm_lost cleared")

        # 2. MQTT broker restarted: gateway tags bad, then good again
        gw = gateways[0]
        gw_tag = f"{gw.children[0].path}/power_w"
        await mosquitto.astop()
        await eventually(lambda: quality_of(rt, gw_tag) == Q.BadCommunicationError, within=30,
                         what="DALI tags bad while the broker is down")
        await mosquitto.astart()
        await eventually(lambda: db.read(gw_tag).good, within=60, what="DALI tags good after restart")

        # 3. historian backend away and back: nothing lost (counted after the final flush)
        outage = EmbeddedOutage(hist.backend)
        outage.stop()
        await eventually(lambda: not hist.backend_ok, within=30, what="historian notices the outage")
        await asyncio.sleep(3)
        outage.start()
        await eventually(lambda: hist.backend_ok and not hist.spool.pending(), within=60,
                         what="spool replayed")

        # 4. a junction controller's OPC UA server restarted
        jct = junctions[0]
        sims["opcua"].inject(jct.path, "server_restart")
        await eventually(lambda: quality_of(rt, f"{jct.path}/mode") == Q.BadCommunicationError,
                         within=30, what="junction tags bad during the restart")
        await eventually(lambda: db.read(f"{jct.path}/mode").good, within=60, what="junction back")
        assert db.read(f"{junctions[1].path}/mode").good

        # 5. a flood of lamp failures: every luminaire at once, each its own red dot
        for d in [*cabinets, *gateways]:
            sims[d.protocol].inject(d.path, "lamp_failure")
        await eventually(lambda: sum(a.name == "lamp_failure" for a in new_active()) == len(lums),
                         within=60, what="one lamp_failure red dot per luminaire")
        journal = Path(site.config.site.state_dir) / "alarms"
        m = alarm_metrics(read_journal(journal), clock.time())
        assert m["flood_periods"], "the flood must be detected (ISA-18.2: > 10 alarms in 10 minutes)"
        assert m["per_10min_max"] >= len(lums)

        # 6. HMI clients connecting and disconnecting
        url = f"opc.tcp://127.0.0.1:{opcua_port}/scada"
        for _ in range(15):
            async with Client(url, timeout=10) as c:
                await c.nodes.server.read_browse_name()
        await eventually(lambda: not [s for s in opcua.server.iserver._external_sessions.values()
                                      if s.is_activated()], within=10, what="no session left behind")

        # the server never stopped, and the other stations kept their cycles on time
        assert rt.restarts == 0, "a supervised task crashed during the chaos"
        cycles, late = mb.get("cycles") - cycles0, mb.get("late_cycles") - late0
        assert cycles > 0 and late <= 0.1 * cycles, (cycles, late)
    finally:
        await rt.stop()
        await sims.aclose()
    # historian: every point selected for history was stored by the backend
    c = hist.health_values()
    assert c["dropped"] == 0 and c["spool_blocks"] == 0
    assert hist.counters["written"] == hist.recorder.recorded > 0
