"""Clocks: stepped time wakes sleepers in deadline order; scaled time runs faster."""

from __future__ import annotations

import asyncio

import pytest

from scada.clock import RealClock, ScaledClock, SteppedClock, make_clock


async def test_stepped_clock_runs_periodic_task_exactly():
    clock = SteppedClock(start=0.0)
    ticks: list[float] = []

    async def every_minute():
        while True:
            await clock.sleep(60)
            ticks.append(clock.time())

    t = asyncio.create_task(every_minute())
    await clock.advance(3600)
    assert ticks == [60.0 * k for k in range(1, 61)]
    assert clock.time() == 3600.0
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t


async def test_stepped_clock_orders_sleepers_and_sleep_until():
    clock = SteppedClock(start=100.0)
    order: list[str] = []

    async def sleeper(name: str, dt: float):
        await clock.sleep(dt)
        order.append(f"{name}@{clock.time():.0f}")

    async def until():
        await clock.sleep_until(150.0)
        order.append(f"until@{clock.time():.0f}")

    tasks = [asyncio.create_task(sleeper("b", 30)), asyncio.create_task(sleeper("a", 10)),
             asyncio.create_task(until())]
    await clock.advance(100)
    assert order == ["a@110", "b@130", "until@150"]
    await asyncio.gather(*tasks)
    assert clock.pending == 0


async def test_stepped_clock_refuses_going_back():
    with pytest.raises(ValueError):
        await SteppedClock().advance(-1)


async def test_scaled_clock_runs_faster(monkeypatch):
    real = [100.0]  # the monotonic source, driven by the test
    clock = ScaledClock(rate=1000.0, start=0.0, monotonic=lambda: real[0])
    assert clock.time() == 0.0
    real[0] += 0.05  # 50 ms of real time = 50 simulated seconds
    assert clock.time() == pytest.approx(50.0)
    slept: list[float] = []

    async def fake_sleep(d: float) -> None:
        slept.append(d)

    monkeypatch.setattr("scada.clock.asyncio.sleep", fake_sleep)
    await clock.sleep(50.0)  # asks the loop for 50 ms, not 50 s
    await clock.sleep(-1.0)
    assert slept == [pytest.approx(0.05), 0.0]
    assert clock.real_seconds(10.0) == pytest.approx(0.01)


def test_make_clock_and_validation():
    assert isinstance(make_clock(), RealClock)
    assert isinstance(make_clock(60.0), ScaledClock)
    with pytest.raises(ValueError):
        ScaledClock(rate=0)
    assert SteppedClock(start=5.0).datetime().year == 1970


def test_clock_start_in_the_sites_local_time():
    """`scada run/sim --start` (bench/city.py --at): local time of the site, not of the machine."""
    from datetime import UTC, datetime

    from scada.clock import parse_start

    summer_day = datetime(2026, 6, 21, 15, 0, tzinfo=UTC).timestamp()
    noon = parse_start("12:00", "Europe/Paris", now=summer_day)
    assert datetime.fromtimestamp(noon, UTC) == datetime(2026, 6, 21, 10, 0, tzinfo=UTC)  # CEST
    assert parse_start("2026-12-03T22:00", "Europe/Paris") == datetime(
        2026, 12, 3, 21, 0, tzinfo=UTC).timestamp()  # CET
    assert parse_start("2026-12-03T22:00+00:00", "Europe/Paris") == datetime(
        2026, 12, 3, 22, 0, tzinfo=UTC).timestamp()
    with pytest.raises(ValueError, match="expected HH:MM"):
        parse_start("noon", "Europe/Paris")


def test_processes_started_apart_read_the_same_clock():
    """The same (start, start_ref) gives the same time whenever the process made its clock."""
    import time

    ref = time.time() - 120.0  # the other process made its clock two minutes ago
    clock = make_clock(1.0, start=1_000_000.0, start_ref=ref)
    assert clock.time() == pytest.approx(1_000_120.0, abs=5.0)
