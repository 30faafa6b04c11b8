"""1,000 malformed messages interleaved with valid ones, over a real Mosquitto.

Zero crashes (no task restart, no paho callback error, no reconnect), every valid value
arrives in order, and every reject is counted under its reason (``_system/mqtt/rejected_*``).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from drivers.mqtt.mapping import REJECT_REASONS
from scada import quality as Q
from tests.fixtures.mqtt import DaliSystem, eventually, load_dali_site

pytestmark = pytest.mark.system

GW = "centre/gw-a"
N_LUM = 8

BAD: list[tuple[str, bytes]] = [
    ("not_json", b"level=42;power=12"),
    ("not_json", b"<xml>42</xml>"),
    ("truncated", b'{"ts": 1767225600, "level": 42.0, "power": 1'),
    ("truncated", b'{"level": 42.0, "faults": tr'),
    ("truncated", b'{"level": "unfinished'),
    ("non_finite", b'{"level": NaN, "power": 3}'),
    ("non_finite", b'{"level": 1, "power": -Infinity}'),
    ("wrong_type", b'{"level": "bright", "power": [1, 2]}'),
    ("wrong_type", b"[1, 2, 3]"),
    ("wrong_type", b'"just text"'),
    ("wrong_type", b'{"level": null}'),
    ("not_utf8", b'{"level": "\xff\xfe"}'),
    ("not_utf8", b"\xc3\x28"),
    ("missing_field", b'{"colour": "warm"}'),
    ("missing_field", b"{}"),
    ("bad_timestamp", b'{"ts": "yesterday", "level": 1}'),
    ("bad_timestamp", b'{"ts": -5, "level": 1}'),
    ("unknown_topic", b'{"level": 1}'),
]


def full_state(ts: float, energy: float, *, power: str = "12.5") -> bytes:
    return (f'{{"ts":{ts},"level":50,"target":50,"power":{power},"energy":{energy},"hours":1.5,'
            f'"starts":3,"temp":30.5,"supply_v":230,"faults":0,"status":768}}').encode()


async def test_thousand_malformed_messages_are_counted_by_reason_and_valid_ones_all_arrive(
        tmp_path, mosquitto, stepped_clock):
    site = load_dali_site(tmp_path, mosquitto.address, {"gw-a": [(1, N_LUM)]})
    s = DaliSystem(site, stepped_clock)
    try:
        await s.start()
        db, gw, drv = s.db, s.sims["gw-a"], s.driver
        # the gateway's answer to the driver's query_on_connect comes first: let it land
        await eventually(lambda: all(db.read(f"{GW}/lum-{n:03d}/level").good for n in range(1, N_LUM + 1)),
                         what="initial states")
        level_tags = {db.index(f"{GW}/lum-{n:03d}/level"): n - 1 for n in range(1, N_LUM + 1)}
        energy_tags = {db.index(f"{GW}/lum-{n:03d}/energy_wh"): n - 1 for n in range(1, N_LUM + 1)}
        got_level: dict[int, list[float]] = {k: [] for k in range(N_LUM)}
        got_energy: dict[int, list[float]] = {k: [] for k in range(N_LUM)}

        def collect(ch):
            for i, v in zip(ch.indices.tolist(), ch.values.tolist(), strict=True):
                if i in level_tags:
                    got_level[level_tags[i]].append(v)
                elif i in energy_tags:
                    got_energy[energy_tags[i]].append(v)

        db.subscribe(collect, only=[*level_tags, *energy_tags])
        t0 = s.clock.time()
        dt = 0.005  # the gateway's own times, in order, never beyond the 10 s future tolerance
        want_level: dict[int, list[float]] = {k: [] for k in range(N_LUM)}
        want_energy: dict[int, list[float]] = {k: [] for k in range(N_LUM)}
        expected = dict.fromkeys(REJECT_REASONS, 0)
        n_bad = 0
        i = 0
        while n_bad < 1000:
            while gw.conn.queued > 400:  # noqa: ASYNC110 - drain paho's bounded queue
                await asyncio.sleep(0.005)
            k = i % N_LUM
            topic = gw.topics[k]
            # a valid message: partial (slow path) or full state (fast path), unique values
            if i % 3 == 0:
                e = 1000.0 + i
                assert gw.publish_raw(topic, full_state(t0 + dt * i, e))
                want_energy[k].append(e)
                want_level[k].append(50.0)
            else:
                v = round(0.01 * i, 2)
                assert gw.publish_raw(topic, json.dumps({"ts": t0 + dt * i, "level": v}).encode())
                want_level[k].append(v)
            # then one or two malformed ones
            for _ in range(1 + i % 2):
                if n_bad >= 1000:
                    break
                reason, payload = BAD[n_bad % len(BAD)]
                if n_bad % 200 == 199:  # five 1 MB payloads
                    reason, payload = "too_large", b'{"pad": "' + b"x" * (1 << 20) + b'"}'
                elif n_bad % 100 == 50:  # a number too large for a double: parsed as inf
                    reason, payload = "non_finite", full_state(t0 + dt * i, 1.0, power="1e999")
                t = f"dali/gw-a/9/{n_bad % 64}/state" if reason == "unknown_topic" else topic
                assert gw.publish_raw(t, payload)
                expected[reason] += 1
                n_bad += 1
            i += 1
        n_valid = i

        await eventually(lambda: sum(drv.rejects.values()) == 1000 and drv.stats["messages"] >= 1000 + n_valid,
                         within=30, what="every message processed")
        assert drv.rejects == expected
        assert all(v > 0 for v in expected.values())  # every reason exercised
        # every valid value arrived, in order (consecutive equal levels are not changes)
        for k in range(N_LUM):
            dedup = [v for j, v in enumerate(want_level[k]) if j == 0 or v != want_level[k][j - 1]]
            assert got_level[k] == dedup, f"luminaire {k}"
            assert got_energy[k] == want_energy[k], f"luminaire {k}"
        # zero crashes: no restart, no callback error, never disconnected
        conn = drv.connection(GW)
        assert s.rt.restarts == 0
        assert conn.stats["callback_errors"] == 0 and conn.stats["connects"] == 1
        assert conn.connected
        # counted by reason as health tags
        drv._update_health()
        s.rt.publish_health()
        for reason, n in expected.items():
            assert db.read(f"_system/mqtt/rejected_{reason}").value == n
        assert db.read("_system/mqtt/rejected").value == 1000
        assert db.read(f"{GW}/lum-001/level").quality == Q.Good
    finally:
        await s.stop()


async def test_simulator_fault_injection_publishes_each_malformed_kind(tmp_path, mosquitto, stepped_clock):
    """The DALI simulator's "malformed payloads" fault: one of each kind, each counted under
    its own reason by the driver, the gateway's valid traffic unaffected."""
    from simulators.dali_gateway import MALFORMED

    site = load_dali_site(tmp_path, mosquitto.address, {"gw-m": [(1, 3)]})
    s = DaliSystem(site, stepped_clock)
    try:
        await s.start()
        gw, drv = s.sims["gw-m"], s.driver
        kinds = [*MALFORMED, "unknown_topic"]
        for kind in kinds:
            assert gw.publish_malformed(kind, k=1)
        await eventually(lambda: sum(drv.rejects.values()) == len(kinds), what="every kind counted")
        assert drv.rejects == dict.fromkeys(REJECT_REASONS, 1)
        assert await s.rt.write("centre/gw-m/lum-002/level_cmd", 25) == Q.Good
    finally:
        await s.stop()
