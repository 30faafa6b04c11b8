"""Runtime: write routing and refusals, out of service, supervision with restart, health tags."""

from __future__ import annotations

import asyncio
import textwrap

import pytest

from scada import quality as Q
from scada.clock import SteppedClock
from scada.loader import load_site
from scada.runtime import Runtime, Service, coerce, current_user
from scada.tags import Batch, PointDef

SITE = """\
site: {name: Test, latitude: 47.3, longitude: 5.0, timezone: Europe/Paris}
areas: [{id: centre}]
profiles:
  lamp:
    kind: luminaire
    points:
      - {name: level_cmd, unit: "%", access: rw, eu_range: [0, 100]}
      - {name: level, unit: "%"}
      - {name: lit, type: bool, access: rw}
      - {name: label, type: string, access: rw}
      - {name: starts, type: int, access: rw}
devices:
  - {id: lum-1, profile: lamp, area: centre}
  - {id: lum-2, profile: lamp, area: centre}
"""


@pytest.fixture
def site(tmp_path):
    p = tmp_path / "site.yaml"
    p.write_text(textwrap.dedent(SITE))
    return load_site(p)


@pytest.fixture
def rt(site):
    return Runtime(site, SteppedClock())


async def test_write_goes_to_owner_and_returns_its_status(rt):
    seen = []

    async def handler(tag: int, value):
        seen.append((rt.tagdb.path(tag), value))
        return Q.Good if value < 90 else Q.BadDeviceFailure

    rt.register_writer("centre/lum-1", handler)
    assert await rt.write("centre/lum-1/level_cmd", 40) == Q.Good
    assert await rt.write("centre/lum-1/level_cmd", "95") == Q.BadDeviceFailure
    assert seen == [("centre/lum-1/level_cmd", 40.0), ("centre/lum-1/level_cmd", 95.0)]


async def test_write_refusals(rt):
    async def handler(tag, value):
        return Q.Good

    rt.register_writer("centre/lum-1", handler)
    assert await rt.write("centre/lum-1/level", 10) == Q.BadNotWritable
    assert await rt.write("centre/lum-1/nope", 10) == Q.BadNodeIdUnknown
    assert await rt.write("centre/lum-1/level_cmd", 101) == Q.BadOutOfRange
    assert await rt.write("centre/lum-1/level_cmd", "high") == Q.BadTypeMismatch
    assert await rt.write("centre/lum-1/lit", 2) == Q.BadTypeMismatch
    assert await rt.write("centre/lum-1/lit", "on") == Q.Good
    assert await rt.write("centre/lum-1/starts", 1.5) == Q.BadTypeMismatch
    assert await rt.write("centre/lum-1/label", 3) == Q.BadTypeMismatch
    # no driver and no handler owns lum-2
    assert await rt.write("centre/lum-2/level_cmd", 10) == Q.BadNotWritable


async def test_failing_writer_reports_internal_error(rt):
    async def handler(tag, value):
        raise RuntimeError("device library bug")

    rt.register_writer("centre/lum-1", handler)
    assert await rt.write("centre/lum-1/level_cmd", 10) == Q.BadInternalError


async def test_out_of_service(rt):
    rt.tagdb.apply(Batch.of([1], [50.0]))
    rt.set_out_of_service("centre/lum-1", True)
    assert rt.tagdb.read("centre/lum-1/level").quality == Q.BadOutOfService
    assert rt.tagdb.read("centre/lum-1/level").value == 50.0
    assert await rt.write("centre/lum-1/level_cmd", 10) == Q.BadOutOfService
    rt.set_out_of_service("centre/lum-1", False)
    assert rt.tagdb.read("centre/lum-1/level").quality == Q.UncertainLastUsableValue


def test_coerce():
    f = PointDef("x", "float")
    assert coerce(f, "2.5") == 2.5 and coerce(f, float("nan")) is None and coerce(f, True) is None
    assert coerce(PointDef("x", "int"), "3") == 3
    assert coerce(PointDef("x", "bool"), 1) is True
    assert coerce(PointDef("x", "string"), "a") == "a"


class Flaky(Service):
    name = "flaky"

    def __init__(self):
        self.runs = 0
        self.closed = False

    async def run(self):
        self.runs += 1
        if self.runs < 3:
            raise RuntimeError(f"crash #{self.runs}")
        await asyncio.Event().wait()

    async def aclose(self):
        self.closed = True


async def test_crashed_task_restarts_and_stop_closes(rt, monkeypatch, caplog):
    real_sleep = asyncio.sleep

    async def fast_sleep(d, *a, **k):  # backoff delays collapse to a loop turn
        await real_sleep(0)

    svc = Flaky()
    rt.add_service(svc)
    monkeypatch.setattr("scada.runtime.asyncio.sleep", fast_sleep)
    await rt.start()
    for _ in range(200):
        if svc.runs >= 3:
            break
        await real_sleep(0)
    monkeypatch.undo()
    assert svc.runs == 3 and rt.restarts >= 2
    assert "task service:flaky crashed" in caplog.text
    await rt.stop()
    assert svc.closed


async def test_health_tags(rt):
    rt.tagdb.apply(Batch.of([0, 1], [1.0, 2.0]))
    rt.publish_health()
    assert rt.tagdb.read("_system/server/tags").value == len(rt.tagdb)
    assert rt.tagdb.read("_system/server/devices").value == 3
    assert rt.tagdb.read("_system/server/tags").quality == Q.Good


async def test_write_carries_the_caller(rt):
    seen = []

    async def handler(tag, value):
        seen.append(current_user())
        return Q.Good

    rt.register_writer("centre/lum-1", handler)
    await rt.write("centre/lum-1/level_cmd", 10, user="eve")
    await rt.write("centre/lum-1/level_cmd", 10)
    assert seen == ["eve", None] and current_user() is None


class SlowToClose(Service):
    name = "slow"

    async def run(self):
        await asyncio.Event().wait()

    async def aclose(self):
        await asyncio.sleep(30)


async def test_stop_keeps_its_budget_and_names_what_was_slow(site, caplog):
    rt = Runtime(site, SteppedClock(), shutdown_timeout=0.3)
    rt.add_service(SlowToClose())
    flaky = Flaky()
    flaky.runs = 3  # runs normally
    rt.add_service(flaky)
    await rt.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await rt.stop()  # must not raise, must not wait 30 s
    assert loop.time() - t0 < 5.0
    assert "service:slow did not close within the 0 s shutdown budget" in caplog.text
    assert flaky.closed


def test_cycle_log_ring_keeps_the_last_cycles_in_order():
    from drivers.base import CycleLog

    log = CycleLog(4)
    assert list(log) == [] and list(reversed(log)) == []
    for k in range(3):
        log.append((float(k), 0.1 * k, 2.0))
    assert [t for t, _, _ in log] == [0.0, 1.0, 2.0]
    for k in range(3, 10):
        log.append((float(k), 0.1 * k, 2.0))
    assert len(log) == 4
    assert [t for t, _, _ in log] == [6.0, 7.0, 8.0, 9.0]
    assert [t for t, _, _ in reversed(log)] == [9.0, 8.0, 7.0, 6.0]
