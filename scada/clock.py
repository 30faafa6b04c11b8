"""One time source for everything: drivers, alarms, schedules, historian and simulators.

No module calls ``time.time()`` or ``datetime.now()`` directly; they ask a :class:`Clock`.

* :class:`RealClock` - wall-clock time, ``asyncio.sleep``.
* :class:`ScaledClock` - simulated time running ``rate`` times faster than real time from a
  chosen start (a simulated night in minutes, a year in hours).
* :class:`SteppedClock` - time moves only when a test calls :meth:`SteppedClock.advance`;
  sleepers wake in time order, so time-dependent logic is tested exactly and a simulated year
  takes seconds.

Times are POSIX seconds (UTC) as ``float``; use :meth:`Clock.datetime` for an aware datetime.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time as _time
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime


class Clock(ABC):
    """Time source. ``time()`` is simulated epoch seconds; ``rate`` is sim-seconds per real second."""

    rate: float = 1.0

    @abstractmethod
    def time(self) -> float:
        """Current (possibly simulated) POSIX time in seconds."""

    @abstractmethod
    async def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` of this clock's time."""

    async def sleep_until(self, t: float) -> None:
        """Sleep until this clock reads ``t`` (returns at once if already past)."""
        dt = t - self.time()
        if dt > 0:
            await self.sleep(dt)
        else:
            await asyncio.sleep(0)

    def datetime(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def real_seconds(self, sim_seconds: float) -> float:
        """How long ``sim_seconds`` of this clock last in real time (for socket timeouts)."""
        return sim_seconds / self.rate if self.rate > 0 else sim_seconds


class RealClock(Clock):
    """Wall-clock time."""

    rate = 1.0

    def time(self) -> float:
        return _time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock(Clock):
    """Simulated time: starts at ``start`` (default: now) and runs ``rate`` times faster."""

    def __init__(self, rate: float = 1.0, start: float | None = None, *,
                 monotonic: Callable[[], float] = _time.monotonic):
        if rate <= 0:
            raise ValueError(f"clock rate must be > 0, got {rate}")
        self.rate = float(rate)
        self._monotonic = monotonic  # injectable: tests drive it instead of waiting
        self._mono0 = monotonic()
        self._start = _time.time() if start is None else float(start)

    def time(self) -> float:
        return self._start + (self._monotonic() - self._mono0) * self.rate

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(self.real_seconds(max(0.0, seconds)))


class SteppedClock(Clock):
    """Time that only moves when told to. For tests and batch simulation.

    ``await clock.advance(3600)`` moves time forward one hour, waking every sleeper whose
    deadline falls inside that hour in deadline order, and letting the event loop run the woken
    tasks before moving on, so a task that sleeps every 60 s runs exactly 60 times.
    """

    rate = float("inf")

    def __init__(self, start: float = 1_767_225_600.0):  # 2026-01-01T00:00:00Z
        self._now = float(start)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self._now

    def real_seconds(self, sim_seconds: float) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    @property
    def pending(self) -> int:
        """Number of tasks currently sleeping on this clock."""
        return sum(1 for *_, f in self._sleepers if not f.done())

    async def _settle(self, rounds: int = 5) -> None:
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float, settle_rounds: int = 5) -> None:
        """Move time forward by ``seconds``, waking sleepers in deadline order."""
        if seconds < 0:
            raise ValueError("time does not run backwards")
        target = self._now + seconds
        await self._settle(settle_rounds)
        while self._sleepers and self._sleepers[0][0] <= target:
            t, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self._now = max(self._now, t)
            fut.set_result(None)
            await self._settle(settle_rounds)
        self._now = target
        await self._settle(settle_rounds)

    async def advance_to(self, t: float) -> None:
        await self.advance(max(0.0, t - self._now))


def make_clock(rate: float = 1.0, start: float | None = None,
               start_ref: float | None = None) -> Clock:
    """Real clock for rate 1 with no start, else a :class:`ScaledClock`.

    ``start_ref`` (POSIX seconds of the real clock) is the real instant at which the clock
    reads ``start``: processes started one after the other (simulators, then the server) with
    the same pair read the same time, instead of each starting at ``start`` when it starts."""
    if rate == 1.0 and start is None:
        return RealClock()
    if start is not None and start_ref is not None:
        start += (_time.time() - start_ref) * rate
    return ScaledClock(rate=rate, start=start)


def parse_start(text: str, timezone: str, *, now: float | None = None) -> float:
    """POSIX time of a clock start given as the site's local time: ``HH:MM`` (today in
    ``timezone``), ``YYYY-MM-DDTHH:MM[:SS]`` (in ``timezone``) or the same with a UTC offset or
    ``Z``. Raises ValueError naming the accepted forms."""
    from datetime import time as dtime
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(timezone)
    t = text.strip()
    try:
        if len(t) <= 5 and ":" in t:
            hhmm = dtime.fromisoformat(t if len(t) == 5 else "0" + t)
            today = datetime.fromtimestamp(_time.time() if now is None else now, tz).date()
            dt = datetime.combine(today, hhmm, tz)
        else:
            dt = datetime.fromisoformat(t)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=tz)
    except ValueError:
        raise ValueError(f"clock start {text!r}: expected HH:MM (today, {timezone} time) or an "
                         f"ISO 8601 date-time such as 2026-12-03T12:00 ({timezone} unless it "
                         f"carries an offset)") from None
    return dt.timestamp()
