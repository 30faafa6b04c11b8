"""The mapping language (issue 16), without sockets: named transforms, vendors' word-order
names, OPC UA data types, child ids with {line}/{address} and offsets, the schema editors
read, the astronomical clock as a writer, and the refusal of tags nothing writes."""

from __future__ import annotations

import json
import struct
import textwrap

import numpy as np
import pytest
from asyncua import ua

from drivers.modbus.codec import PointSource, decode_value, encode_value
from drivers.mqtt.mapping import MqttPointSource, raw_for_write
from drivers.transforms import BitField, Lookup, Pipeline, dali_arc_to_percent, percent_to_dali_arc
from scada import quality as Q
from scada.clock import SteppedClock
from scada.errors import ConfigError
from scada.loader import load_site
from scada.runtime import Runtime
from scada.tags import Batch, PointDef, PointSchema, TagDatabase


# ----------------------------------------------------------------------------- transforms
def test_dali_logarithmic_curve_iec_62386_102():
    x = dali_arc_to_percent(np.array([0, 1, 85, 170, 254, 255, -1, 1000, 12.5]))
    assert x[0] == 0.0 and x[1] == pytest.approx(0.1) and x[4] == pytest.approx(100.0)
    assert x[2] == pytest.approx(1.0, rel=0.01) and x[3] == pytest.approx(10.0, rel=0.01)  # a decade per 253/3
    assert np.isnan(x[5:]).all()  # MASK (255), negative, beyond 254, not whole: no level
    assert [percent_to_dali_arc(p) for p in (0, 0.01, 0.1, 1.0, 50.0, 100.0)] == [0, 1, 1, 85, 229, 254]
    for arc in range(1, 255):  # the inverse finds every level back
        assert percent_to_dali_arc(float(dali_arc_to_percent(np.array([arc]))[0])) == arc
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percent_to_dali_arc(120)


def test_lookup_and_bit_fields():
    lk = Lookup.model_validate({"lookup": {0: 0, 1: 50, "2": 100}})
    assert lk.forward(np.array([0, 2, 7])).tolist()[:2] == [0.0, 100.0] and np.isnan(lk.forward(np.array([7]))[0])
    assert Lookup.model_validate({"lookup": {0: 1}, "default": -1}).forward(np.array([3.0])).tolist() == [-1.0]
    assert lk.inverse(50) == 1.0
    with pytest.raises(ValueError, match="not one of"):
        lk.inverse(42)
    bf = BitField(bits=(4, 6))
    assert bf.forward(np.array([0b0101_0000, 0b1111_1111, -1.0])).tolist()[:2] == [5.0, 7.0]
    with pytest.raises(ValueError, match="read-only"):
        bf.inverse(3)


def test_mqtt_source_with_the_dali_curve_writes_arc_levels():
    src = MqttPointSource.model_validate({"topic": "t", "field": "arc", "transform": "dali_arc", "command": "c"})
    assert raw_for_write(src, 50.0, "int") == 229 and raw_for_write(src, 0, "int") == 0
    assert src.pipe.settle(50.0) == pytest.approx(50.5, abs=0.05)  # the level the gear will show
    with pytest.raises(ValueError):
        raw_for_write(src, 101.0, "int")
    with pytest.raises(ValueError, match="unknown transform"):
        MqttPointSource.model_validate({"topic": "t", "transform": "dali_log"})
    chain = MqttPointSource.model_validate({"topic": "t", "transform": [{"bits": [0, 7]}, "dali_arc"]})
    assert isinstance(chain.pipe, Pipeline) and chain.pipe.forward(np.array([0x1FE]))[0] == pytest.approx(100.0)


# ----------------------------------------------------------------------------- word orders
@pytest.mark.parametrize("name, wire", [
    ("ABCD", b"\x41\x42\x43\x44"), ("CDAB", b"\x43\x44\x41\x42"),
    ("BADC", b"\x42\x41\x44\x43"), ("DCBA", b"\x44\x43\x42\x41"),
])
def test_vendor_byte_order_names(name, wire):
    value = struct.unpack(">f", b"\x41\x42\x43\x44")[0]
    src = PointSource(address=0, type="float32", word_order=name)
    assert decode_value(src, wire) == value
    assert bytes(np.asarray(encode_value(src, value), dtype=">u2").tobytes()) == wire


# ----------------------------------------------------------------------------- data types
def test_points_declare_their_opcua_data_type():
    from scada.opcua.address_space import DATATYPE, make_datavalue

    db = TagDatabase(SteppedClock())
    db.add_device("a/d", PointSchema("s", (PointDef("arc", "int", ua_type="Byte"), PointDef("f", ua_type="Float"))))
    db.apply(Batch.of([0, 1], [254.4, 1.5], Q.Good, db.clock.time()))
    assert make_datavalue(db, 0, db.point(0)).Value == ua.Variant(254, ua.VariantType.Byte)
    assert make_datavalue(db, 1, db.point(1)).Value == ua.Variant(1.5, ua.VariantType.Float)
    assert DATATYPE[db.point(0).data_type] == ua.NodeId(ua.ObjectIds.Byte)


SITE = """\
site: {name: t, latitude: 47.3, longitude: 5.0}
areas: [{id: centre}]
profiles:
  gw:
    protocol: mqtt
    kind: gateway
    options: {topics: {s: "v/{gateway}/s"}, availability: {from_data: true, silence_s: 120}}
    points: [{name: online, type: bool, source: {availability: true}}]
  lamp:
    protocol: mqtt
    kind: luminaire
    options: {topics: {s: "v/{gateway}/{line}/{address}"}, addresses_per_line: 16, address_base: 0}
    points:
      - {name: level, unit: "%", eu_range: [0, 100], source: {topic: s, field: arc, transform: dali_arc}}
      - {name: mode, data_type: Byte, source: {topic: s, field: m}}
devices:
  - id: gw-1
    profile: gw
    area: centre
    connection: {broker: "127.0.0.1:1883"}
    children:
      - {profile: lamp, id: "lamp-{line}-{address:02d}", count: 18}
      - {profile: lamp, id: "node-{n-1:03d}", start: 100, count: 2}
"""


def test_child_ids_from_line_address_and_offsets(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(SITE, encoding="utf-8")
    site = load_site(p)
    ids = [d.id for d in site.devices[0].children]
    assert ids[:2] == ["lamp-0-00", "lamp-0-01"] and ids[16:18] == ["lamp-1-00", "lamp-1-01"]
    assert ids[18:] == ["node-099", "node-100"]
    assert site.schemas["lamp"].points[1].data_type == "Byte" and site.schemas["lamp"].points[1].dtype == "int"
    p.write_text(SITE.replace("lamp-{line}-{address:02d}", "lamp-{bus}"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"s.yaml:\d+: devices\[0\].children\[0\].id: bad id template .*unknown field \{bus\}"):
        load_site(p)


def test_schema_has_every_drivers_mapping_keys():
    from scada.schema import site_json_schema

    s = json.loads(json.dumps(site_json_schema()))
    d = s["$defs"]
    assert {"modbus", "mqtt", "opcua", "astro"} <= set(s["properties"]["drivers"]["properties"]) | {"astro"}
    protocols = {c["if"]["properties"]["protocol"]["const"] for c in d["ProfileConfig"]["allOf"]}
    assert {"modbus", "mqtt", "opcua", "astro"} <= protocols
    assert "CDAB" in d["modbus.PointSource"]["properties"]["word_order"]["enum"]
    assert {"transform", "availability", "topic", "field"} <= set(d["mqtt.PointSource"]["properties"])
    assert "timestamp_point" in d["modbus.ProfileOptions"]["properties"]
    assert "from_data" in d["mqtt.Availability"]["properties"]
    assert {"max_in_flight", "host"} <= set(d["modbus.ConnectionDefaults"]["properties"])
    assert "required" not in d["modbus.ConnectionDefaults"]  # a profile's defaults need no host
    assert {"valid_range", "data_type", "counter"} <= set(d["PointConfig"]["properties"])


# ----------------------------------------------------------------------------- writers
ASTRO = """\
site: {name: t, latitude: 47.32, longitude: 5.04}
areas: [{id: centre}]
profiles:
  astro-clock:
    protocol: astro
    options: {period_s: 60}
    points:
      - {name: sun_elevation, unit: deg, source: {output: sun_elevation}}
      - {name: night, type: bool, source: {output: night}}
  passive:
    points: [{name: x}]
devices:
  - {id: astro, profile: astro-clock, area: centre}
"""


async def test_astronomical_clock_writes_its_tags_and_passive_devices_are_refused(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text(textwrap.dedent(ASTRO), encoding="utf-8")
    noon = 1_767_268_800.0  # 2026-01-01 12:00 UTC: the sun is up over Dijon
    rt = Runtime(load_site(p), SteppedClock(noon))
    rt.load_drivers()
    rt.drivers["astro"].compute()
    elev = rt.tagdb.read("centre/astro/sun_elevation")
    assert elev.good and 15 < elev.value < 25 and rt.tagdb.read("centre/astro/night").value is False
    p.write_text(textwrap.dedent(ASTRO) + "  - {id: dummy, profile: passive, area: centre}\n", encoding="utf-8")
    rt = Runtime(load_site(p), SteppedClock(noon))
    with pytest.raises(ConfigError, match="device centre/dummy: profile 'passive' has no protocol"):
        rt.load_drivers()
    rt = Runtime(load_site(p), SteppedClock(noon))
    rt.claim("centre/dummy")  # a service (or a test) that writes its values says so
    rt.load_drivers()
