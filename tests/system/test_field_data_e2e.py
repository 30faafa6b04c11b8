"""Field data you can trust (issue 16), through real peers: a Mosquitto broker with a DALI
gateway played by a real MQTT client, and a pymodbus server played as a vendor's controller.

Each rule of the tag database's screening is exercised end to end: implausible readings kept
with BadOutOfRange and counted in the driver's health tags; a source time from 2099 clamped
with BadInvalidTimestamp, one from 2020 never made current; an energy counter going backwards
classified so that the Good series a historian records never steps down (except a confirmed
restart) nor jumps; a device out of service stays BadOutOfService across several polls or
messages whatever the device sends, and is Good again after its next reading once back.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from scada import quality as Q
from tests.fixtures.mqtt import DaliSystem, eventually, load_dali_site
from tests.system.test_modbus_driver import Harness, write_site

pytestmark = pytest.mark.system

GW = "centre/gw-a"
LUM = f"{GW}/lum-001"
Y2099 = 4_070_908_800.0
Y2020 = 1_577_836_800.0


def state(ts: float, **fields: float) -> bytes:
    return json.dumps({"ts": ts, **fields}).encode()


# ----------------------------------------------------------------------------- MQTT
@pytest.fixture
async def dali(tmp_path, mosquitto, stepped_clock):
    site = load_dali_site(tmp_path, mosquitto.address, {"gw-a": [(1, 4)]})
    s = DaliSystem(site, stepped_clock)
    await s.start()
    await eventually(lambda: all(s.db.read(f"{GW}/lum-{n:03d}/level").good for n in range(1, 5)),
                     what="initial states")
    yield s
    await s.stop()


def health(s: DaliSystem, name: str) -> float:
    s.driver._update_health()
    s.rt.publish_health()
    return s.db.read(f"_system/mqtt/{name}").value


async def test_mqtt_implausible_readings_are_kept_not_good_and_counted(dali):
    s, gw = dali, dali.sims["gw-a"]
    t = s.clock.time()
    assert gw.publish_raw(gw.topics[0], state(t, level=150.0, power=-5.0))
    await eventually(lambda: s.db.read(f"{LUM}/level").value == 150.0, what="level 150 arrives")
    for point, value in (("level", 150.0), ("power_w", -5.0)):
        r = s.db.read(f"{LUM}/{point}")
        assert (r.value, r.quality) == (value, Q.BadOutOfRange), point
    assert gw.publish_raw(gw.topics[0], state(t, level=40.0, power=1e12))
    await eventually(lambda: s.db.read(f"{LUM}/level").value == 40.0, what="level 40")
    assert s.db.read(f"{LUM}/level").quality == Q.Good
    assert s.db.read(f"{LUM}/power_w").quality == Q.BadOutOfRange
    assert health(s, "implausible") == 3
    assert health(s, "rejected") == 0  # a well-formed message is not a malformed one


async def test_mqtt_future_and_past_source_times(dali):
    s, gw = dali, dali.sims["gw-a"]
    now = s.clock.time()
    assert gw.publish_raw(gw.topics[1], state(now, level=20.0))
    await eventually(lambda: s.db.read(f"{GW}/lum-002/level").value == 20.0, what="level 20")
    assert gw.publish_raw(gw.topics[1], state(Y2099, level=21.0))
    await eventually(lambda: s.db.read(f"{GW}/lum-002/level").value == 21.0, what="2099 reading")
    r = s.db.read(f"{GW}/lum-002/level")
    assert (r.quality, r.source_ts) == (Q.BadInvalidTimestamp, now)  # clamped to the server's time
    assert gw.publish_raw(gw.topics[1], state(Y2020, level=99.0))  # a replay from 2020
    assert gw.publish_raw(gw.topics[1], state(now, level=22.0))
    await eventually(lambda: s.db.read(f"{GW}/lum-002/level").value == 22.0, what="level 22")
    assert health(s, "late_samples") >= 1  # 99 never became the current value
    assert health(s, "future_samples") >= 1
    assert s.db.read(f"{GW}/lum-002/level").quality == Q.Good


async def test_mqtt_energy_counter_backwards_never_steps_the_good_series_down(dali):
    """The malformed burst of the integrators' report: a counter sent backwards several times.
    What a historian records as Good only ever goes up, except at a confirmed restart."""
    s, gw = dali, dali.sims["gw-a"]
    tag = s.db.index(f"{GW}/lum-003/energy_wh")
    rec: list[tuple[float, float, int]] = []
    s.db.subscribe(lambda ch: rec.extend(zip(ch.source_ts.tolist(), ch.values.tolist(),
                                             ch.quality.tolist(), strict=True)), only=[tag])
    # luminaire-dali: energy_wh counter {max_rate: 0.5} Wh/s, eu_range [0, 1e9]; readings 0.5 s apart
    sent = [5000.0, 5000.25, 5000.5,  # a new level (from 0 Wh) held by 3 readings: rebase
            4000.0, 5000.75,          # a glitch backwards, classified by the next reading
            -1000.0, 5001.0,          # implausible (outside the EU range), then on
            0.25, 0.5, 0.75]          # a restart from zero, confirmed by the next reading
    t0 = s.clock.time()
    for k, e in enumerate(sent):
        assert gw.publish_raw(gw.topics[2], state(t0 + 0.5 * k, energy=e))
    await eventually(lambda: s.db.read(tag).value == 0.75, what="last reading")
    good = [v for _, v, q in rec if q == Q.Good]
    assert good == [5000.5, 5000.75, 5001.0, 0.5, 0.75]
    assert [q for _, v, q in rec if v in (5000.0, 4000.0, 0.25)] == [Q.BadOutOfRange] * 3
    assert health(s, "counter_glitches") == 1 and health(s, "counter_resets") == 2
    assert health(s, "implausible") == 1
    # what the energy KPI computes from those Good points: never negative, never a jump
    from historian.base import Raw
    from historian.query import counter_deltas

    t, v, q = (np.asarray(x) for x in zip(*rec, strict=True))
    d = counter_deltas(Raw(t, v, q.astype(np.uint32)), np.array([t0 - 1, t0 + 60]))
    assert d.delta.tolist() == [0.25 + 0.25 + 0.5 + 0.25]  # the restart counts 0.5 from zero


async def test_mqtt_out_of_service_holds_across_messages(dali):
    s, gw = dali, dali.sims["gw-a"]
    dev = f"{GW}/lum-004"
    assert s.rt.set_out_of_service(dev, True, user="eve", comment="luminaire replaced") == Q.Good
    assert s.rt.set_out_of_service("centre/nope", True) == Q.BadNodeIdUnknown
    t = s.clock.time()
    for k in range(4):  # the gateway keeps reporting Good values
        assert gw.publish_raw(gw.topics[3], state(t + 0.01 * k, level=30.0 + k, power=10.0))
        await eventually(lambda k=k: s.db.read(f"{dev}/level").value == 30.0 + k, what=f"message {k}")
        assert s.db.read(f"{dev}/level").quality == Q.BadOutOfService
        assert s.db.read(f"{dev}/power_w").quality == Q.BadOutOfService
    assert await s.rt.write(f"{dev}/level_cmd", 50) == Q.BadOutOfService
    assert s.rt.set_out_of_service(dev, False) == Q.Good
    assert s.db.read(f"{dev}/level").quality == Q.UncertainLastUsableValue
    assert gw.publish_raw(gw.topics[3], state(t + 0.1, level=35.0))
    await eventually(lambda: s.db.read(f"{dev}/level").quality == Q.Good, what="Good after the next message")


# ----------------------------------------------------------------------------- Modbus
CONTROLLER = """
profiles:
  acme-slc:
    protocol: modbus
    kind: luminaire
    options: {poll_groups: {fast: 2s}, timestamp_point: clock}
    points:
      - {name: level, unit: "%", eu_range: [0, 100], source: {table: input, address: 0, scale: 0.1}}
      - {name: power_w, unit: W, eu_range: [0, 400], source: {table: input, address: 1, type: int16}}
      - {name: energy_wh, unit: Wh, counter: {max_rate: 10.0}, eu_range: [0, 1.0e9], source: {table: input, address: 2, type: uint32}}
      - {name: clock, unit: s, history: false, source: {table: input, address: 4, type: uint32}}
  acme-slc-noclock:
    protocol: modbus
    kind: luminaire
    options: {poll_groups: {fast: 2s}}
    points:
      - {name: level, unit: "%", eu_range: [0, 100], source: {table: input, address: 0, scale: 0.1}}
devices:
  - {id: slc-1, profile: acme-slc, area: a, connection: {host: 127.0.0.1, port: PORT, unit: 1}}
  - {id: slc-2, profile: acme-slc-noclock, area: a, connection: {host: 127.0.0.1, port: PORT, unit: 2}}
"""


def regs(srv, level: float, power: int, energy: int, clock: float, unit: int = 1) -> None:
    c = int(clock)
    srv.set_registers("input", 0, [int(level * 10), power & 0xFFFF, energy >> 16, energy & 0xFFFF,
                                   c >> 16, c & 0xFFFF], unit)


@pytest.fixture
async def slc(tmp_path, modbus_server, stepped_clock):
    srv = await modbus_server(units=(1, 2))
    site = write_site(tmp_path, CONTROLLER.replace("PORT", str(srv.port)))
    now = stepped_clock.time()
    regs(srv, 50.0, 40, 1000, now)
    srv.set_registers("input", 0, [500], 2)
    async with Harness(site, stepped_clock) as h:
        await h.step()
        assert h.read("a/slc-1/level").good
        yield srv, h


async def test_modbus_implausible_register_and_device_clock(slc):
    srv, h = slc
    now = h.clock.time()
    # the device's clock register (set to the start time before the first poll); a source time
    # is the time of the sample that changed the value
    assert h.read("a/slc-1/level").source_ts == now - 2.0
    first_poll = h.read("a/slc-2/level").source_ts  # no clock register: the poll's time
    assert now - 2.0 <= first_poll <= now
    regs(srv, 120.0, -5, 1000, h.clock.time() + 2)
    await h.step()
    for point, value in (("level", 120.0), ("power_w", -5.0)):
        r = h.read(f"a/slc-1/{point}")
        assert (r.value, r.quality) == (value, Q.BadOutOfRange), point
    assert h.health("implausible") == 2
    # the controller's clock jumps to 2099: clamped to the server's time, not Good
    regs(srv, 60.0, 40, 1001, Y2099)
    await h.step()
    r = h.read("a/slc-1/level")
    assert (r.value, r.quality, r.source_ts) == (60.0, Q.BadInvalidTimestamp, h.clock.time())
    # then to 2020: older than the current values, never made current
    regs(srv, 70.0, 40, 1002, Y2020)
    await h.step()
    assert h.read("a/slc-1/level").value == 60.0
    assert h.health("late_samples") == 4  # every point of the device in that poll
    regs(srv, 75.0, 40, 1003, h.clock.time() + 2)
    await h.step()
    r = h.read("a/slc-1/level")
    assert (r.value, r.quality, r.source_ts) == (75.0, Q.Good, h.clock.time())


async def test_modbus_counter_backwards_and_out_of_service_across_polls(slc):
    srv, h = slc
    good: list[float] = []
    tag = h.rt.tagdb.index("a/slc-1/energy_wh")
    h.rt.tagdb.subscribe(lambda ch: good.extend(ch.values[ch.quality == Q.Good].tolist()), only=[tag])
    for e in (1010, 500, 1020, 1030):  # one glitch: held BadOutOfRange, then classified
        regs(srv, 50.0, 40, e, h.clock.time() + 2)
        await h.step()
        assert h.read("a/slc-1/energy_wh").quality == (Q.BadOutOfRange if e == 500 else Q.Good)
    assert good == [1010.0, 1020.0, 1030.0]
    assert h.health("counter_glitches") == 1
    # out of service: several polls with fresh Good answers, the tags stay BadOutOfService
    assert h.rt.set_out_of_service("a/slc-1", True, user="eve", comment="works") == Q.Good
    for k in range(4):
        regs(srv, 10.0 + k, 40, 1040 + k, h.clock.time() + 2)
        await h.step()
        r = h.read("a/slc-1/level")
        assert (r.value, r.quality) == (10.0 + k, Q.BadOutOfService)
        assert h.read("a/slc-2/level").quality == Q.Good  # the other unit is untouched
    assert h.rt.tagdb.is_out_of_service("a/slc-1")
    assert h.rt.set_out_of_service("a/slc-1", False) == Q.Good
    regs(srv, 20.0, 40, 1050, h.clock.time() + 2)
    await h.step()
    r = h.read("a/slc-1/level")
    assert (r.value, r.quality) == (20.0, Q.Good)
    # a station failing while out of service keeps BadOutOfService, not BadCommunicationError
    h.rt.set_out_of_service("a/slc-1", True)
    await srv.stop()
    await h.step(n=2)
    assert h.read("a/slc-1/level").quality == Q.BadOutOfService
    assert h.read("a/slc-2/level").quality == Q.BadCommunicationError


def test_struct_words():  # the helper packs like the device (uint32 high word first)
    assert struct.unpack(">I", struct.pack(">HH", 1000 >> 16, 1000 & 0xFFFF))[0] == 1000
