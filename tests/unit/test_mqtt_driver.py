"""The MQTT driver's ingest without sockets: messages fed straight into ``feed``/``flush``.

One batch per burst, ordered batches for repeated devices, availability (Last Will) and
staleness on a SteppedClock (exact periods), rejects counted by reason."""

from __future__ import annotations

import json

import pytest

from scada import quality as Q
from scada.runtime import Runtime
from tests.fixtures.mqtt import load_dali_site

GW = "centre/gw-u"


@pytest.fixture
def rt(tmp_path, stepped_clock):
    site = load_dali_site(tmp_path, "127.0.0.1:1", {"gw-u": [(1, 70)]})  # 2 DALI lines
    r = Runtime(site, stepped_clock)
    r.load_drivers(["mqtt"])
    return r


def state(ts: float, level: float, energy: float = 1.0, faults: int = 0) -> bytes:
    return json.dumps({"ts": ts, "level": level, "target": level, "power": level / 2, "energy": energy,
                       "hours": 2.0, "starts": 4, "temp": 20.0, "supply_v": 230, "faults": faults,
                       "status": 0}).encode()


def feed(drv, topic: str, payload: bytes) -> None:
    drv.feed(drv.broker_for(GW), topic, payload)


def test_a_burst_is_one_batch_and_maps_line_and_address(rt, stepped_clock):
    drv, db = rt.drivers["mqtt"], rt.tagdb
    t = stepped_clock.time()
    for n in range(1, 71):
        line, addr = (n - 1) // 64, (n - 1) % 64
        feed(drv, f"dali/gw-u/{line}/{addr}/state", state(t - 5, n, faults=0b1000001 if n == 66 else 0))
    before = db.stats["batches"]
    drv.flush()
    assert db.stats["batches"] == before + 1
    assert db.read(f"{GW}/lum-001/level").value == 1.0
    assert db.read(f"{GW}/lum-065/level").value == 65.0  # line 1, short address 0
    assert db.read(f"{GW}/lum-070/power_w").value == 35.0
    assert db.read(f"{GW}/lum-066/lamp_failure").value is True
    assert db.read(f"{GW}/lum-066/supply_fault").value is True
    assert db.read(f"{GW}/lum-066/led_short").value is False
    assert db.read(f"{GW}/lum-010/level").source_ts == t - 5


def test_repeated_device_in_a_burst_is_applied_in_order(rt, stepped_clock):
    drv, db = rt.drivers["mqtt"], rt.tagdb
    tag = db.index(f"{GW}/lum-002/level")
    seen: list[float] = []
    db.subscribe(lambda ch: seen.extend(ch.values.tolist()), only=[tag])
    t = stepped_clock.time()
    for k, lvl in enumerate((10.0, 20.0, 30.0)):
        feed(drv, "dali/gw-u/0/1/state", state(t - 3 + k, lvl))  # stamped before now
        feed(drv, "dali/gw-u/0/2/state", state(t - 3 + k, lvl))
    feed(drv, "dali/gw-u/0/1/state", json.dumps({"level": 40}).encode())  # partial (slow path)
    drv.flush()
    assert seen == [10.0, 20.0, 30.0, 40.0]


def test_rejects_are_counted_and_skipped(rt, stepped_clock):
    drv, db = rt.drivers["mqtt"], rt.tagdb
    t = stepped_clock.time()
    feed(drv, "dali/gw-u/0/0/state", b"{oops")
    feed(drv, "dali/gw-u/0/0/state", state(t, 55))
    feed(drv, "dali/gw-u/7/7/state", state(t, 1))
    feed(drv, "dali/gw-u/0/1/state", b'{"level": NaN}')
    feed(drv, "dali/gw-u/0/2/state", state(t, 1).replace(b'"temp": 20.0', b'"temp": 1e999'))
    drv.flush()
    assert db.read(f"{GW}/lum-001/level").value == 55.0
    assert db.read(f"{GW}/lum-003/level").quality == Q.BadWaitingForInitialData
    assert drv.rejects["not_json"] == 1 and drv.rejects["unknown_topic"] == 1
    assert drv.rejects["non_finite"] == 2


def test_last_will_marks_the_gateway_and_its_luminaires_bad_keeping_values(rt, stepped_clock):
    drv, db = rt.drivers["mqtt"], rt.tagdb
    t = stepped_clock.time()
    feed(drv, "dali/gw-u/status", json.dumps({"online": True, "lines_ok": True, "line_faults": 0,
                                              "broadcast": 0, "groups": [0] * 16, "ts": t}).encode())
    feed(drv, "dali/gw-u/0/0/state", state(t, 30))
    drv.flush()
    assert db.read(f"{GW}/online").value is True and db.read(f"{GW}/lines_ok").good
    feed(drv, "dali/gw-u/status", b'{"online":false}')
    drv.flush()
    assert db.read(f"{GW}/online").value is False and db.read(f"{GW}/online").good
    s = db.read(f"{GW}/lum-001/level")
    assert s.quality == Q.BadCommunicationError and s.value == 30.0
    assert db.read(f"{GW}/group05_level").quality == Q.BadCommunicationError
    # while offline, staleness does not fight the gateway state
    stepped_clock._now += 1000
    drv.check_staleness()
    assert db.read(f"{GW}/lum-001/level").quality == Q.BadCommunicationError


async def test_silence_goes_uncertain_then_bad_at_the_configured_periods(rt, stepped_clock):
    drv, db = rt.drivers["mqtt"], rt.tagdb
    t0 = stepped_clock.time()
    feed(drv, "dali/gw-u/0/0/state", state(t0, 30))
    feed(drv, "dali/gw-u/0/1/state", state(t0, 30))
    drv.flush()
    for minute in range(1, 7):  # lum-002 keeps reporting every 60 s, lum-001 is silent
        await stepped_clock.advance(60)
        feed(drv, "dali/gw-u/0/1/state", state(stepped_clock.time(), 30, energy=minute))
        drv.flush()
        drv.check_staleness()
        q = db.read(f"{GW}/lum-001/power_w").quality
        if minute < 3:  # 2.5 periods
            assert q == Q.Good, minute
        elif minute < 6:  # 5 periods
            assert q == Q.UncertainLastUsableValue, minute
        else:
            assert q == Q.BadCommunicationError
        assert db.read(f"{GW}/lum-002/power_w").quality == Q.Good
    assert db.read(f"{GW}/lum-001/power_w").value == 15.0  # last value kept
    # a never-heard luminaire ends Bad too (not Uncertain: it has no usable value)
    assert db.read(f"{GW}/lum-040/power_w").quality == Q.BadCommunicationError
    feed(drv, "dali/gw-u/0/0/state", state(stepped_clock.time(), 31))
    drv.flush()
    assert db.read(f"{GW}/lum-001/power_w").quality == Q.Good


async def test_writes_refused_without_a_connection(rt):
    drv, db = rt.drivers["mqtt"], rt.tagdb
    assert await rt.write(f"{GW}/lum-001/level_cmd", 50) == Q.BadCommunicationError
    assert await drv.write(db.index(f"{GW}/lum-001/power_w"), 5) == Q.BadNotWritable


def test_profile_cross_references_are_config_errors(tmp_path, stepped_clock):
    from scada.errors import ConfigError
    from scada.loader import load_site

    (tmp_path / "s.yaml").write_text("""
site: {name: bad, latitude: 47.3, longitude: 5.0}
areas: [{id: centre}]
profiles:
  g:
    protocol: mqtt
    kind: gateway
    options: {topics: {s: "x/{gateway}"}}
    points:
      - {name: a, access: rw, source: {topic: s, field: a, command: nope}}
devices:
  - {id: g1, profile: g, area: centre, connection: {broker: "127.0.0.1:1883"}}
""", encoding="utf-8")
    r = Runtime(load_site(tmp_path / "s.yaml"), stepped_clock)
    with pytest.raises(ConfigError, match=r"profile 'g' point 'a': command 'nope' is not one of options\.commands"):
        r.load_drivers(["mqtt"])


def test_line_faults_bit_field_marks_that_lines_luminaires_bad_at_once(rt, stepped_clock):
    drv, db = rt.drivers["mqtt"], rt.tagdb
    t = stepped_clock.time()
    feed(drv, "dali/gw-u/0/0/state", state(t, 30))
    feed(drv, "dali/gw-u/1/0/state", state(t, 40))  # child 65: line 1
    feed(drv, "dali/gw-u/status", json.dumps({"online": True, "lines_ok": False, "line_faults": 2}).encode())
    drv.flush()
    assert db.read(f"{GW}/line_faults").value == 2
    assert db.read(f"{GW}/lum-065/level").quality == Q.BadCommunicationError
    assert db.read(f"{GW}/lum-065/level").value == 40.0
    assert db.read(f"{GW}/lum-070/level").quality == Q.BadCommunicationError
    assert db.read(f"{GW}/lum-001/level").quality == Q.Good
    assert db.read(f"{GW}/lines_ok").quality == Q.Good


def test_a_topic_name_that_is_not_utf8_is_counted_not_fatal(rt):
    import paho.mqtt.client as mqtt

    drv = rt.drivers["mqtt"]
    conn = drv._make_connection(drv.broker_for(GW))  # no I/O until started
    conn.on_message(mqtt.MQTTMessage(1, b"dali/gw-u/\xff/0/state"))
    assert drv.rejects["not_utf8"] == 1
    assert drv._pending == []
