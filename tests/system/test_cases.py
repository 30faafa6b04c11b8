"""Regression cases, one folder each (``tests/cases/<protocol>/<name>/``, Telegraf's testcases
habit): a device map and what the device sends go in, the expected tag values and statuses
come out, through real peers (a pymodbus server for Modbus, Mosquitto for MQTT).

A case folder holds:

* ``site.yaml`` - a site (profiles included, from ``config/profiles`` or inline); ``{port}``
  is replaced by the Modbus server's port, ``{broker}`` by the broker's ``host:port``;
* ``registers.yaml`` (Modbus) - ``units: [1, 2]`` and ``polls:``, a list of polls, each a
  mapping ``unit -> table -> {address: [register values]}`` applied before that poll;
* ``payloads.yaml`` (MQTT) - ``messages:``, each ``{topic, json}`` or ``{topic, text}``,
  published in order by a client playing the gateway;
* ``expected.yaml`` - ``tags: {path: {value, status, source_ts}}`` (value compared to 1e-6
  relative, status by name, source_ts optional) and optionally ``health: {name: count}`` for
  the driver's ``_system/<protocol>/`` counters.

The server's clock is stepped from 2026-01-01T00:00:00Z (1767225600), so cases use literal
times. A case is named after what it pins; ``README.md`` in it says why.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from scada import quality as Q
from scada.clock import SteppedClock
from scada.loader import load_site
from scada.runtime import Runtime
from tests.fixtures.mqtt import eventually
from tests.system.test_modbus_driver import Harness

pytestmark = pytest.mark.system

CASES = Path(__file__).resolve().parents[1] / "cases"
REPO = CASES.parents[1]
T0 = 1_767_225_600.0


def discover(protocol: str | None = None) -> list[Any]:
    out = []
    for d in sorted(CASES.glob("*/*/")):
        if (d / "expected.yaml").exists() and protocol in (None, d.parent.name):
            out.append(pytest.param(d, id=f"{d.parent.name}/{d.name}"))
    return out


def load_case_site(case: Path, tmp_path: Path, **subst: Any):
    text = (case / "site.yaml").read_text(encoding="utf-8").replace("{repo}", str(REPO))
    for k, v in subst.items():
        text = text.replace("{" + k + "}", str(v))
    p = tmp_path / "site.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def check_expected(case: Path, db: Any, health: dict[str, float]) -> None:
    exp = yaml.safe_load((case / "expected.yaml").read_text(encoding="utf-8"))
    problems = []
    for path, want in (exp.get("tags") or {}).items():
        got = db.read(path)
        if "status" in want and Q.name(got.quality) != want["status"]:
            problems.append(f"{path}: status {Q.name(got.quality)}, expected {want['status']}")
        if "value" in want:
            v = want["value"]
            ok = got.value == v if isinstance(v, (bool, str)) or v is None or got.value is None else (
                got.value == pytest.approx(v, rel=1e-6, abs=1e-9))
            if not ok:
                problems.append(f"{path}: value {got.value!r}, expected {v!r}")
        if "source_ts" in want and got.source_ts != pytest.approx(float(want["source_ts"])):
            problems.append(f"{path}: source_ts {got.source_ts}, expected {want['source_ts']}")
    for name, want in (exp.get("health") or {}).items():
        if health.get(name, 0.0) != want:
            problems.append(f"health {name}: {health.get(name, 0.0)}, expected {want}")
    assert not problems, f"case {case.parent.name}/{case.name}:\n  " + "\n  ".join(problems)


async def run_modbus(case: Path, tmp_path: Path, modbus_server: Any) -> None:
    spec = yaml.safe_load((case / "registers.yaml").read_text(encoding="utf-8"))
    srv = await modbus_server(units=tuple(spec.get("units", [1])))
    clock = SteppedClock(T0)
    polls = spec["polls"]

    def apply(poll: dict[Any, Any]) -> None:
        for unit, tables in poll.items():
            for table, blocks in tables.items():
                for address, values in blocks.items():
                    if table in ("coil", "discrete"):
                        srv.set_bits(table, int(address), [bool(x) for x in values], int(unit))
                    else:
                        srv.set_registers(table, int(address), [int(x) & 0xFFFF for x in values], int(unit))

    apply(polls[0])
    async with Harness(load_case_site(case, tmp_path, port=srv.port), clock) as h:
        for poll in polls[1:]:
            apply(poll)
            await h.step(float(spec.get("period", 10.0)))
        h.drv._update_health(clock.time() - 10)
        check_expected(case, h.rt.tagdb, h.drv.ctx.health.values)


async def run_mqtt(case: Path, tmp_path: Path, mosquitto: Any) -> None:
    from drivers.mqtt.client import MqttConnection

    spec = yaml.safe_load((case / "payloads.yaml").read_text(encoding="utf-8"))
    site = load_site(load_case_site(case, tmp_path, broker=mosquitto.address))
    clock = SteppedClock(T0)
    rt = Runtime(site, clock)
    rt.load_drivers(["mqtt"])
    gw = MqttConnection(host="127.0.0.1", port=mosquitto.port, client_id=f"case-{case.name}", protocol="3.1.1")
    try:
        gw.start()
        assert await gw.wait_connected(10)
        await rt.start()
        drv = rt.drivers["mqtt"]
        await eventually(lambda: all(b.conn is not None and b.conn.connected for b in drv._brokers.values()),
                         what="driver connected")
        for m in spec["messages"]:
            body = json.dumps(m["json"]).encode() if "json" in m else str(m["text"]).encode()
            assert gw.publish(m["topic"], body, 1, False)
            await asyncio.sleep(0.03)  # one burst per message: applied in order
        n = len(spec["messages"])
        await eventually(lambda: drv.stats["messages"] >= n and not drv._pending, what=f"{n} messages processed")
        drv._update_health()
        check_expected(case, rt.tagdb, drv.ctx.health.values)
    finally:
        await rt.stop()
        await gw.aclose()


@pytest.mark.parametrize("case", discover("modbus"))
async def test_modbus_case(case: Path, tmp_path, modbus_server):
    await run_modbus(case, tmp_path, modbus_server)


@pytest.mark.parametrize("case", discover("mqtt"))
async def test_mqtt_case(case: Path, tmp_path, mosquitto):
    await run_mqtt(case, tmp_path, mosquitto)


def test_every_case_folder_has_a_runner():
    found = {p.values[0].parent.name for p in discover()}
    assert found == {"modbus", "mqtt"}, f"case folders for protocols without a runner: {found}"
