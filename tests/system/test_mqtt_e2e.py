"""End to end over a real Mosquitto: simulated DALI gateways -> broker -> MQTT driver -> tags.

Time is a SteppedClock (simulated reporting periods are exact); network delivery is real, so
assertions wait for it with ``eventually`` (a bound, not a timing assertion).
"""

from __future__ import annotations

import numpy as np
import pytest

from scada import quality as Q
from simulators.luminaire import FAULT_LAMP, FAULT_OVERVOLT
from tests.fixtures.mqtt import DaliSystem, eventually, load_dali_site

pytestmark = pytest.mark.system

GW = "centre/gw-a"


@pytest.fixture
async def system(tmp_path, mosquitto, stepped_clock):
    site = load_dali_site(tmp_path, mosquitto.address, {"gw-a": [(1, 8), (65, 4)]})
    s = DaliSystem(site, stepped_clock)
    try:
        await s.start()
        await s.tick(1)
        await eventually(lambda: all(s.db.read(f"{GW}/lum-{n:03d}/level").good for n in (*range(1, 9), *range(65, 69))),
                         what="first state of every luminaire")
        yield s
    finally:
        await s.stop()


async def test_values_units_and_timestamps_match_the_model(system):
    db, gw = system.db, system.sims["gw-a"]
    bank = gw.bank
    await system.sims["gw-a"].conn.wait_connected(1)
    # bring the lamps up so the numbers are not all zero, then a minute of operation
    assert await system.rt.write(f"{GW}/broadcast_level", 70) == Q.Good
    await system.tick(60)
    gw.publish_states(np.arange(gw.n), system.clock.time())
    t_pub = system.clock.time()
    await eventually(lambda: db.read(f"{GW}/lum-068/energy_wh").source_ts == t_pub, what="republished states")
    for k, path in ((0, f"{GW}/lum-001"), (8, f"{GW}/lum-065"), (11, f"{GW}/lum-068")):
        assert gw.line[k] == (0 if k < 8 else 1)

        def near(point, model_value, k=k, path=path):
            # equal within the point's deadband (smaller changes are not applied, by design)
            db_ = db.info(f"{path}/{point}").point.deadband
            return db.read(f"{path}/{point}").value == pytest.approx(model_value, abs=max(db_, 0.001))

        assert near("level", bank.level[k])
        assert near("power_w", bank.power_w[k])
        assert near("energy_wh", bank.energy_wh[k])
        assert near("operating_h", bank.operating_h[k])
        assert near("driver_temp_c", bank.driver_temp_c[k])
        assert db.read(f"{path}/starts").value == int(bank.starts[k])
        assert db.read(f"{path}/energy_wh").source_ts == t_pub  # the gateway's ts field
    assert db.read(f"{GW}/lum-001/level").value == pytest.approx(70.0)
    assert db.read(f"{GW}/lum-001/energy_wh").value > 0
    assert db.info(f"{GW}/lum-001/power_w").point.unit == "W"
    assert db.info(f"{GW}/lum-001/energy_wh").point.unit == "Wh"
    assert db.read(f"{GW}/online").value is True
    assert db.read(f"{GW}/lines_ok").value is True
    assert system.driver.rejects == dict.fromkeys(system.driver.rejects, 0)


async def test_diagnostic_flags_follow_injected_faults(system):
    db, gw = system.db, system.sims["gw-a"]
    gw.bank.inject(2, FAULT_LAMP)
    gw.bank.inject(9, FAULT_OVERVOLT)
    await system.tick(1)
    await eventually(lambda: db.read(f"{GW}/lum-003/lamp_failure").value is True, what="lamp failure")
    await eventually(lambda: db.read(f"{GW}/lum-066/supply_fault").value is True, what="supply fault")
    assert db.read(f"{GW}/lum-003/driver_failure").value is False
    assert db.read(f"{GW}/lum-066/lamp_failure").value is False
    assert db.read(f"{GW}/lum-003/status").value & 0x1
    gw.bank.clear(2)
    await system.tick(1)
    await eventually(lambda: db.read(f"{GW}/lum-003/lamp_failure").value is False, what="lamp failure cleared")


async def test_direct_group_and_broadcast_commands_are_verified_by_echo(system):
    db, rt, gw = system.db, system.rt, system.sims["gw-a"]
    assert await rt.write(f"{GW}/lum-002/level_cmd", 55) == Q.Good
    assert gw.bank.target[1] == 55.0
    assert db.read(f"{GW}/lum-002/level_cmd").value == 55.0  # the echo, already applied
    assert gw.bank.target[0] == 0.0  # nobody else moved
    # group 2 = the luminaires of the second child group (line 1)
    assert await rt.write(f"{GW}/group02_level", 35) == Q.Good
    assert db.read(f"{GW}/group02_level").value == 35.0
    await eventually(lambda: all(db.read(f"{GW}/lum-{n:03d}/level_cmd").value == 35.0 for n in range(65, 69)),
                     what="group echo on every member")
    assert db.read(f"{GW}/lum-001/level_cmd").value == 0.0
    assert await rt.write(f"{GW}/broadcast_level", 80) == Q.Good
    await eventually(lambda: all(db.read(f"{GW}/lum-{n:03d}/level_cmd").value == 80.0
                                 for n in (*range(1, 9), *range(65, 69))), what="broadcast echo")
    assert db.read(f"{GW}/group02_level").value == 80.0  # DALI broadcast sets every group
    await system.tick(1)
    await eventually(lambda: db.read(f"{GW}/lum-065/level").value == 80.0, what="actual level")


async def test_write_without_echo_times_out_and_offline_gateway_is_refused(system):
    rt, gw, drv = system.rt, system.sims["gw-a"], system.driver
    tag = system.db.index(f"{GW}/lum-004/level_cmd")
    drv._writes[tag].timeout = 0.3
    gw.bank.ignore_commands[3] = True  # the gear does not follow: target stays, no confirming echo
    assert await rt.write(f"{GW}/lum-004/level_cmd", 40) == Q.BadTimeout
    await gw.disconnect()
    await eventually(lambda: system.db.read(f"{GW}/online").value is False, what="Last Will")
    assert await rt.write(f"{GW}/lum-001/level_cmd", 40) == Q.BadCommunicationError
    assert not drv._waiters


async def test_gateway_lost_marks_everything_bad_keeping_values_then_recovers(system):
    db, gw = system.db, system.sims["gw-a"]
    before = db.read(f"{GW}/lum-001/power_w")
    await gw.disconnect()  # TCP dropped: Mosquitto publishes the retained Last Will
    await eventually(lambda: db.read(f"{GW}/online").value is False, what="Last Will")
    assert db.read(f"{GW}/online").quality == Q.Good  # a fact: the gateway is offline
    lost = db.read(f"{GW}/lum-001/power_w")
    assert lost.quality == Q.BadCommunicationError
    assert lost.value == before.value and lost.source_ts == before.source_ts
    assert db.read(f"{GW}/group01_level").quality == Q.BadCommunicationError
    assert db.read(f"{GW}/lum-065/level").quality == Q.BadCommunicationError
    assert system.driver.online[system.driver._slot_path.index(GW)] is False
    gw.reconnect()
    await gw.conn.wait_connected(10)
    await system.tick(1)  # birth: status + every state republished
    await eventually(lambda: db.read(f"{GW}/lum-001/power_w").quality == Q.Good, what="recovery")
    assert db.read(f"{GW}/online").value is True
    assert db.read(f"{GW}/lum-068/level").good


async def test_silent_luminaire_goes_uncertain_then_bad_on_the_clock(system):
    db, gw = system.db, system.sims["gw-a"]
    gw.silence(4)  # lum-005 stops reporting; everyone else reports every 60 s
    # margins of 30 s: receipt time (not the gateway's clock) decides, and delivery is real time
    for _ in range(18):  # 180 s > 2.5 periods of 60 s
        await system.tick(10, settle=0.03)
    assert db.read(f"{GW}/lum-005/power_w").quality == Q.UncertainLastUsableValue
    assert db.read(f"{GW}/lum-006/power_w").quality == Q.Good
    for _ in range(15):  # 330 s > 5 periods
        await system.tick(10, settle=0.03)
    assert db.read(f"{GW}/lum-005/power_w").quality == Q.BadCommunicationError
    assert db.read(f"{GW}/lum-005/power_w").value is not None  # last value kept
    assert db.read(f"{GW}/lum-006/power_w").quality == Q.Good
    assert db.read(f"{GW}/group01_level").quality == Q.Good  # the gateway itself is alive
    assert db.read(f"{GW}/online").quality == Q.Good
    assert system.driver.stale[system.driver._slot_path.index(f"{GW}/lum-005")] == 2
    gw.silence(4, False)
    for _ in range(7):
        await system.tick(10, settle=0.03)
    await eventually(lambda: db.read(f"{GW}/lum-005/power_w").quality == Q.Good, what="luminaire back")


async def test_dali_line_down_is_reported_and_its_luminaires_go_stale(system):
    db, gw = system.db, system.sims["gw-a"]
    gw.set_line_down(1)
    await eventually(lambda: db.read(f"{GW}/lines_ok").value is False, what="lines_ok false")
    assert db.read(f"{GW}/line_faults").value == 2
    # a command to a dead line reaches nobody: no echo
    tag = system.db.index(f"{GW}/lum-066/level_cmd")
    system.driver._writes[tag].timeout = 0.3
    assert await system.rt.write(f"{GW}/lum-066/level_cmd", 20) == Q.BadTimeout
    # the gateway said so: line 1's luminaires are Bad at once (no waiting for staleness),
    # last values kept; line 0 is untouched
    assert db.read(f"{GW}/lum-066/level").quality == Q.BadCommunicationError
    assert db.read(f"{GW}/lum-065/power_w").value is not None
    assert db.read(f"{GW}/lum-002/level").quality == Q.Good
    for _ in range(34):  # and they stay Bad while silent (340 s > 5 periods)
        await system.tick(10, settle=0.02)
    assert db.read(f"{GW}/lum-066/level").quality == Q.BadCommunicationError
    assert db.read(f"{GW}/lum-002/level").quality == Q.Good
    gw.set_line_down(1, False)
    await system.tick(1)
    await eventually(lambda: db.read(f"{GW}/lum-066/level").good and db.read(f"{GW}/lines_ok").value,
                     what="line back")


async def test_driver_arriving_after_the_gateways_gets_every_state_at_once(tmp_path, mosquitto, stepped_clock):
    """query_on_connect: the driver asks each gateway for its full state after connecting, so a
    server (re)started after its gateways does not wait a reporting period for its values."""
    site = load_dali_site(tmp_path, mosquitto.address, {"gw-q": [(1, 5)]})
    s = DaliSystem(site, stepped_clock)
    try:
        await s.start(runtime=False)
        await s.tick(1)  # the gateway's first full state goes out before anyone listens
        await s.start(sims=False)
        # no clock advance: the values come from the gateway's answer to the query command
        await eventually(lambda: all(s.db.read(f"centre/gw-q/lum-{n:03d}/power_w").good for n in range(1, 6)),
                         what="states answering the query")
        assert s.sims["gw-q"].commands >= 1
    finally:
        await s.stop()


async def test_fade_time_ramps_the_actual_level_and_query_republishes(system):
    """A DAPC with a fade time (IEC 62386-102 §9.5): the target is echoed at once, the actual
    level follows linearly over the fade, reported on change at every simulator tick."""
    db, gw = system.db, system.sims["gw-a"]
    tag = db.index(f"{GW}/lum-003/level")
    seen: list[float] = []
    db.subscribe(lambda ch: seen.extend(ch.values.tolist()), only=[tag])
    assert gw.publish_raw("dali/gw-a/0/2/set", b'{"level": 100, "fade": 10}')  # as a controller would
    await eventually(lambda: db.read(f"{GW}/lum-003/level_cmd").value == 100.0, what="target echo")
    for _ in range(12):
        await system.tick(1, settle=0.03)
    await eventually(lambda: db.read(f"{GW}/lum-003/level").value == 100.0, what="end of fade")
    ramp = [v for v in seen if 0 < v < 100]
    assert len(ramp) >= 5 and ramp == sorted(ramp)  # intermediate levels, rising
    # query one luminaire: its state comes back even without a change
    before = system.driver.stats["messages"]
    assert gw.publish_raw("dali/gw-a/query", b'{"line": 0, "address": 2}')
    await eventually(lambda: system.driver.stats["messages"] > before, what="query answer")
