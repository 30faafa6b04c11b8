"""A third-party gateway integrated with a profile alone (issue 4): another topic tree, another
payload shape, other units, an ISO 8601 timestamp, a plain-text Last Will, a different command
format; run over a real Mosquitto with the foreign gateway played by a real MQTT client."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from drivers.mqtt.client import MqttConnection, Will
from scada import quality as Q
from scada.loader import load_site
from scada.runtime import Runtime
from tests.fixtures.mqtt import eventually

pytestmark = pytest.mark.system

PROFILES = """
profiles:
  acme-gateway:
    protocol: mqtt
    kind: gateway
    options:
      topics:
        lwt: {pattern: "acme/v2/{gateway}/lwt", format: text}
      availability: {topic: lwt, online: [Online]}
      report_period_s: 300
    points:
      - {name: online, type: bool, source: {topic: lwt, true_values: [Online]}}
  acme-lamp:
    protocol: mqtt
    kind: luminaire
    options:
      topics:
        telemetry: {pattern: "acme/v2/{gateway}/bus{line}/node{address:02d}/telemetry",
                    timestamp: meta.time, timestamp_unit: iso8601}
      commands:
        dim: {topic: "acme/v2/{gateway}/bus{line}/node{address:02d}/cmd", payload: {op: dim, arc: "{value}"},
              value_type: int}
      line_base: 1
      address_base: 1
      report_period_s: 300
    points:
      - {name: level, unit: "%", eu_range: [0, 100], source: {topic: telemetry, field: data.dim, transform: dali_arc}}
      - {name: level_cmd, unit: "%", access: rw, eu_range: [0, 100],
         source: {topic: telemetry, field: data.target_arc, transform: dali_arc, command: dim, tolerance: 0.5}}
      - {name: power_w, unit: W, source: {topic: telemetry, field: data.pwr_mW, scale: 0.001}}
      - {name: energy_wh, unit: Wh, source: {topic: telemetry, field: data.kWh, scale: 1000}}
      - {name: operating_h, unit: h, source: {topic: telemetry, field: data.burn_s, scale: 0.0002777777777777778}}
      - {name: lamp_failure, type: bool, source: {topic: telemetry, field: data.flags, bit: 0}}
      - {name: driver_failure, type: bool, source: {topic: telemetry, field: data.flags, bit: 1}}
      - {name: led_open, type: bool, source: {topic: telemetry, field: data.flags, bit: 2}}
      - {name: lamp_on, type: bool, source: {topic: telemetry, field: state, true_values: ["ON"]}}
      - {name: firmware, type: string, source: {topic: telemetry, field: meta.fw}}
"""


def telemetry(when: datetime, dim: int, target: int, flags: int = 0) -> bytes:
    return json.dumps({
        "meta": {"time": when.isoformat(), "fw": "acme-4.2"},
        "data": {"dim": dim, "target_arc": target, "pwr_mW": 42000, "kWh": 1.234, "burn_s": 3600,
                 "flags": flags},
        "state": "ON" if dim else "OFF",
    }).encode()


async def test_foreign_gateway_profile_maps_topics_payloads_units_and_commands(tmp_path, mosquitto, stepped_clock):
    (tmp_path / "acme.yaml").write_text(PROFILES, encoding="utf-8")
    (tmp_path / "site.yaml").write_text(f"""
site: {{name: foreign, latitude: 47.3, longitude: 5.0}}
areas: [{{id: centre}}]
include: [acme.yaml]
devices:
  - id: acme-7
    profile: acme-gateway
    area: centre
    connection: {{broker: "{mosquitto.address}", gateway: acme-7}}
    children:
      - {{profile: acme-lamp, id: "lamp-{{n}}", count: 3}}
      - {{profile: acme-lamp, id: "lamp-{{n}}", start: 65, count: 1}}
""", encoding="utf-8")
    site = load_site(tmp_path / "site.yaml")
    commands: list[tuple[str, dict]] = []
    when = datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)

    def on_command(msg) -> None:
        body = json.loads(msg.payload)
        commands.append((msg.topic, body))
        # the foreign gateway echoes the new target in its telemetry
        gw.publish(msg.topic.replace("/cmd", "/telemetry"), telemetry(when, body["arc"], body["arc"]), 1)

    gw = MqttConnection(host="127.0.0.1", port=mosquitto.port, client_id="acme-7", protocol="3.1.1",
                        will=Will("acme/v2/acme-7/lwt", b"Offline", 1, True),
                        subscriptions=[("acme/v2/acme-7/+/+/cmd", 1)], on_message=on_command)
    rt = Runtime(site, stepped_clock)
    rt.load_drivers(["mqtt"])
    try:
        gw.start()
        assert await gw.wait_connected(10)
        gw.publish("acme/v2/acme-7/lwt", b"Online", 1, retain=True)
        await rt.start()
        drv = rt.drivers["mqtt"]
        await eventually(lambda: drv.connection("centre/acme-7") is not None
                         and drv.connection("centre/acme-7").connected, what="driver connected")
        gw.publish("acme/v2/acme-7/bus1/node01/telemetry", telemetry(when, 200, 200, flags=5), 1)
        gw.publish("acme/v2/acme-7/bus1/node03/telemetry", telemetry(when, 0, 0), 1)
        gw.publish("acme/v2/acme-7/bus2/node01/telemetry", telemetry(when, 254, 254), 1)  # child 65
        db = rt.tagdb
        await eventually(lambda: db.read("centre/acme-7/lamp-65/level").good, what="telemetry")
        lamp = "centre/acme-7/lamp-1"
        # DALI arc power levels on the IEC 62386-102 logarithmic curve, not a linear scale
        assert db.read(f"{lamp}/level").value == pytest.approx(10 ** (199 / (253 / 3) - 1))  # 22.9 %
        assert db.read(f"{lamp}/power_w").value == pytest.approx(42.0)
        assert db.read(f"{lamp}/energy_wh").value == pytest.approx(1234.0)
        assert db.read(f"{lamp}/operating_h").value == pytest.approx(1.0)
        assert db.read(f"{lamp}/lamp_failure").value is True
        assert db.read(f"{lamp}/driver_failure").value is False
        assert db.read(f"{lamp}/led_open").value is True
        assert db.read(f"{lamp}/lamp_on").value is True
        assert db.read(f"{lamp}/firmware").value == "acme-4.2"
        assert db.read(f"{lamp}/level").source_ts == when.timestamp()
        assert db.read("centre/acme-7/lamp-3/lamp_on").value is False
        assert db.read("centre/acme-7/lamp-65/level").value == pytest.approx(100.0)
        assert db.read("centre/acme-7/lamp-2/level").quality == Q.BadWaitingForInitialData
        assert db.read("centre/acme-7/online").value is True
        assert sum(drv.rejects.values()) == 0

        assert await rt.write(f"{lamp}/level_cmd", 50) == Q.Good
        assert await rt.write(f"{lamp}/level_cmd", 33) == Q.Good  # arc 213.4 -> 213, echo 32.7 %
        assert commands == [("acme/v2/acme-7/bus1/node01/cmd", {"op": "dim", "arc": 229}),
                            ("acme/v2/acme-7/bus1/node01/cmd", {"op": "dim", "arc": 213})]
        assert db.read(f"{lamp}/level_cmd").value == pytest.approx(10 ** (212 / (253 / 3) - 1))

        gw.publish("acme/v2/acme-7/lwt", b"Offline", 1, retain=True)
        await eventually(lambda: db.read(f"{lamp}/power_w").quality == Q.BadCommunicationError,
                         what="offline by the foreign Last Will payload")
        assert db.read("centre/acme-7/online").value is False
        assert db.read(f"{lamp}/power_w").value == pytest.approx(42.0)
    finally:
        await rt.stop()
        await gw.aclose()
