"""Pure tests of the MQTT mapping: decoding, every reject reason, conversions, templates."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from drivers.mqtt import mapping as M
from drivers.mqtt.driver import _wildcard
from drivers.mqtt.mapping import (
    MqttPointSource,
    MqttProfileOptions,
    Reject,
    build_shapes,
    decode_json,
    device_segments,
    parse_timestamp,
    raw_for_write,
    render_payload,
)


def reason(fn, *a) -> str:
    with pytest.raises(Reject) as e:
        fn(*a)
    return e.value.reason


# ------------------------------------------------------------------ decoding and reject reasons
@pytest.mark.parametrize(("payload", "why"), [
    (b"x" * 2000, M.TOO_LARGE),
    (b'{"a": "\xff"}', M.NOT_UTF8),
    (b"\xc3\x28", M.NOT_UTF8),
    (b'{"a": 1', M.TRUNCATED),
    (b'{"a": 1,', M.TRUNCATED),
    (b'{"a": "abc', M.TRUNCATED),
    (b'{"a": tr', M.TRUNCATED),
    (b'{"a": -1.5e', M.TRUNCATED),
    (b'[1, 2', M.TRUNCATED),
    (b"", M.TRUNCATED),
    (b"level=3", M.NOT_JSON),
    (b'{"a": 1} trailing', M.NOT_JSON),
    (b"{'a': 1}", M.NOT_JSON),
    (b'{"a": NaN}', M.NON_FINITE),
    (b'{"a": Infinity}', M.NON_FINITE),
    (b'[-Infinity]', M.NON_FINITE),
])
def test_decode_json_reject_reasons(payload, why):
    assert reason(decode_json, payload, 1024) == why


def test_decode_json_accepts_valid_and_keeps_types():
    assert decode_json(b'{"a": 1, "b": 2.5, "c": true, "d": "x", "e": [1]}', 1024) == {
        "a": 1, "b": 2.5, "c": True, "d": "x", "e": [1]}
    assert decode_json(b" 42 ", 1024) == 42


def test_every_reason_has_a_text_and_a_health_point():
    from drivers.mqtt.driver import MqttDriver

    names = {p.name for p in MqttDriver.health_points}
    for r in M.REJECT_REASONS:
        assert M.REASON_TEXT[r]
        assert f"rejected_{r}" in names


@pytest.mark.parametrize(("v", "unit", "t"), [
    (1767225600, "s", 1767225600.0),
    (1767225600123, "ms", 1767225600.123),
    ("2026-01-01T00:00:00Z", "iso8601", 1767225600.0),
    ("2026-01-01T01:00:00+01:00", "iso8601", 1767225600.0),
])
def test_timestamps(v, unit, t):
    assert parse_timestamp(v, unit) == pytest.approx(t)


@pytest.mark.parametrize(("v", "unit"), [
    ("yesterday", "s"), (-5, "s"), (1e300, "s"), (True, "s"), (None, "ms"),
    ("2026-01-01T00:00:00", "iso8601"), ("noon", "iso8601"), (12, "iso8601"),
])
def test_bad_timestamps(v, unit):
    assert reason(parse_timestamp, v, unit) == M.BAD_TIMESTAMP


# ------------------------------------------------------------------ shapes
def shape_for(points, **opts):
    o = MqttProfileOptions.model_validate({"topics": {"state": {"pattern": "d/{gateway}/{line}/{address}", "timestamp": "ts"}}, **opts})
    pts = [(n, t, MqttPointSource.model_validate(src)) for n, t, src in points]
    return build_shapes("p", o, pts)["state"]


LUM = [
    ("level", "float", {"topic": "state", "field": "level"}),
    ("power_w", "float", {"topic": "state", "field": "mw", "scale": 0.001}),
    ("lamp_failure", "bool", {"topic": "state", "field": "flags", "bit": 0}),
    ("supply_fault", "bool", {"topic": "state", "field": "flags", "mask": 96}),
    ("temp", "float", {"topic": "state", "field": "t_k", "offset": -273.15}),
]


def test_fast_path_converts_a_burst_with_numpy():
    sh = shape_for(LUM)
    assert sh.fast
    rows = []
    for obj in ({"ts": 10, "level": 50, "mw": 42000, "flags": 1, "t_k": 300.15},
                {"ts": 11, "level": 0.5, "mw": 0, "flags": 64, "t_k": 273.15}):
        row, _ts = sh.decode_fast(obj)
        rows.append(row)
    vals, ok = sh.convert_rows(rows)
    assert ok.all()
    assert vals.tolist() == [[50, 42.0, 1, 0, pytest.approx(27.0)], [0.5, 0.0, 0, 1, pytest.approx(0.0)]]


def test_fast_path_declines_what_needs_a_reason_and_the_slow_path_gives_it():
    sh = shape_for(LUM)
    assert sh.decode_fast({"level": 1}) is None  # partial update
    assert sh.decode_fast({"level": "x", "mw": 1, "flags": 0, "t_k": 1}) is None
    assert sh.decode_fast([1, 2]) is None
    assert sh.decode_slow({"level": 7})[0] == [(0, 7.0)]
    assert reason(sh.decode_slow, {"level": "bright"}) == M.WRONG_TYPE
    assert reason(sh.decode_slow, {"level": None}) == M.WRONG_TYPE
    assert reason(sh.decode_slow, {"level": [1]}) == M.WRONG_TYPE
    assert reason(sh.decode_slow, [1, 2]) == M.WRONG_TYPE
    assert reason(sh.decode_slow, "text") == M.WRONG_TYPE
    assert reason(sh.decode_slow, {"colour": "warm"}) == M.MISSING_FIELD
    assert reason(sh.decode_slow, {"ts": "noon", "level": 1}) == M.BAD_TIMESTAMP
    assert reason(sh.decode_slow, {"level": 1e308 * 10}) == M.NON_FINITE


def test_non_finite_numbers_in_a_fast_row_are_flagged():
    sh = shape_for(LUM)
    _vals, ok = sh.convert_rows([(1, 2, 0, 0, 3), (float("inf"), 2, 0, 0, 3)])
    assert ok.tolist() == [True, False]


def test_nested_paths_list_indices_true_values_and_strings():
    o = MqttProfileOptions.model_validate({"topics": {"s": "x/{gateway}"}})
    pts = [
        ("g3", "float", MqttPointSource(topic="s", field="groups.3")),
        ("on", "bool", MqttPointSource(topic="s", field="state", true_values=["ON"])),
        ("fw", "string", MqttPointSource(topic="s", field="meta.fw")),
        ("deep", "int", MqttPointSource(topic="s", field="a.b.c")),
    ]
    sh = build_shapes("p", o, pts)["s"]
    assert not sh.fast  # strings and true_values take the slow path
    vals, _ = sh.decode_slow({"groups": [0, 1, 2, 40], "state": "ON", "meta": {"fw": "1.2"}, "a": {"b": {"c": 7}}})
    assert vals == [(0, 40.0), (1, 1.0), (2, "1.2"), (3, 7.0)]
    vals, _ = sh.decode_slow({"state": "OFF", "groups": [1]})
    assert vals == [(1, 0.0)]
    assert reason(sh.decode_slow, {"a": {"b": 5}}) == M.WRONG_TYPE  # 'c' of a number


def test_text_topics_and_unknown_topic_names_fail_at_build():
    o = MqttProfileOptions.model_validate({"topics": {"s": "x/{gateway}"}})
    with pytest.raises(KeyError, match=r"source\.topic 'nope'"):
        build_shapes("p", o, [("a", "float", MqttPointSource(topic="nope", field="a"))])


# ------------------------------------------------------------------ options validation
@pytest.mark.parametrize(("opts", "msg"), [
    ({"topics": {"s": "x/{gw}"}}, "unknown segment"),
    ({"topics": {"s": "x/+/y"}}, "wildcards"),
    ({"topics": {"s": "x"}, "availability": {"topic": "lwt"}}, "availability.topic"),
    ({"topics": {"s": "x"}, "uncertain_after_periods": 5, "bad_after_periods": 2}, "bad_after_periods"),
    ({"topics": {"s": "x"}, "bogus": 1}, "Extra inputs"),
])
def test_profile_options_errors(opts, msg):
    with pytest.raises(ValidationError, match=msg):
        MqttProfileOptions.model_validate(opts)


def test_point_source_and_connection_errors():
    with pytest.raises(ValidationError, match="scale"):
        MqttPointSource(topic="s", scale=0)
    with pytest.raises(ValidationError, match="host:port"):
        M.BrokerConnection(broker="localhost")
    assert M.BrokerConnection(broker="mqtt.example.org:8883").address(("x", 1)) == ("mqtt.example.org", 8883)
    assert M.BrokerConnection().address(("127.0.0.1", 11883)) == ("127.0.0.1", 11883)


# ------------------------------------------------------------------ topics and commands
def test_device_segments_follow_dali_addressing():
    o = MqttProfileOptions()
    assert device_segments("gw", 1, o) == {"gateway": "gw", "line": 0, "address": 0}
    assert device_segments("gw", 64, o) == {"gateway": "gw", "line": 0, "address": 63}
    assert device_segments("gw", 65, o) == {"gateway": "gw", "line": 1, "address": 0}
    o1 = MqttProfileOptions(line_base=1, address_base=1)
    assert device_segments("gw", 130, o1) == {"gateway": "gw", "line": 3, "address": 2}
    assert device_segments("gw", None, o) == {"gateway": "gw"}


def test_wildcards_keep_the_gateway_and_replace_other_levels():
    assert _wildcard("dali/{gateway}/{line}/{address}/state", "gw-1") == "dali/gw-1/+/+/state"
    assert _wildcard("a/{gateway}/bus{line}/node{address:02d}/t", "g") == "a/g/+/+/t"
    assert _wildcard("dali/{gateway}/status", "g") == "dali/g/status"


def test_command_values_and_payload_templates():
    src = MqttPointSource(topic="s", scale=100 / 254)
    assert raw_for_write(src, 50, "int") == 127
    assert raw_for_write(src, 50) == 127
    assert raw_for_write(MqttPointSource(topic="s"), 42.5) == 42.5
    assert raw_for_write(MqttPointSource(topic="s"), 40) == 40
    assert raw_for_write(MqttPointSource(topic="s"), True) is True
    tpl = {"op": "dim", "arc": "{value}", "who": "{gateway}/{group}", "list": ["{value}", 1]}
    assert render_payload(tpl, 127, {"gateway": "g", "group": 3}) == {
        "op": "dim", "arc": 127, "who": "g/3", "list": [127, 1]}


def test_availability_values_compare_by_type():
    av = M.Availability(topic="s", online=[True, "Online"])
    assert M.is_online(av, True) and M.is_online(av, "Online")
    assert not M.is_online(av, 1) and not M.is_online(av, "Offline") and not M.is_online(av, None)
