"""Shared driver machinery: re-exports the contract and small helpers every driver needs.

* :class:`Backoff` - exponential backoff with full jitter for reconnects (so 700 cabinets that
  drop together do not reconnect together).
* :class:`RateLimitedLog` - log once when a device becomes unavailable and once when it is back
  (Home Assistant's habit), and at most one line per interval for repeated errors.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import numpy as np

from scada.driver import STANDARD_HEALTH, Driver, DriverContext, Health
from scada.tags import Batch, Changes, PointDef, Sample

__all__ = [
    "STANDARD_HEALTH",
    "Backoff",
    "Batch",
    "Changes",
    "CycleLog",
    "Driver",
    "DriverContext",
    "Health",
    "PointDef",
    "RateLimitedLog",
    "Sample",
]


class Backoff:
    """Exponential backoff with full jitter: delay in [0, min(cap, base * 2**attempt)]."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None):
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        hi = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt += 1
        return self._rng.uniform(hi / 2, hi)

    def reset(self) -> None:
        self.attempt = 0


class CycleLog:
    """The last ``capacity`` poll cycles as (end time, duration, period), in preallocated numpy
    rings: 24 bytes a cycle allocated once, so a server polling 60 stations a second does not
    grow by a Python tuple per poll for its first hour. Iterates oldest first; ``reversed``
    newest first (health gauges look at the last second only)."""

    def __init__(self, capacity: int = 200_000):
        self._a = np.zeros((capacity, 3), dtype=np.float64)
        self._n = 0  # cycles ever appended

    def append(self, item: tuple[float, float, float]) -> None:
        self._a[self._n % len(self._a)] = item
        self._n += 1

    def __len__(self) -> int:
        return min(self._n, len(self._a))

    def _order(self) -> np.ndarray:
        cap = len(self._a)
        if self._n <= cap:
            return np.arange(self._n)
        start = self._n % cap
        return np.concatenate((np.arange(start, cap), np.arange(start)))

    def __iter__(self) -> Iterator[tuple[float, float, float]]:
        for row in self._a[self._order()]:
            yield (float(row[0]), float(row[1]), float(row[2]))

    def __reversed__(self) -> Iterator[tuple[float, float, float]]:
        cap = len(self._a)
        for k in range(self._n - 1, max(-1, self._n - 1 - cap), -1):
            row = self._a[k % cap]
            yield (float(row[0]), float(row[1]), float(row[2]))


class RateLimitedLog:
    """Availability transitions logged once each; repeated messages at most once per interval."""

    def __init__(self, log: logging.Logger, interval: float = 60.0):
        self.log = log
        self.interval = interval
        self._down: set[str] = set()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def unavailable(self, key: str, msg: str, *args: object) -> None:
        if key not in self._down:
            self._down.add(key)
            self.log.warning(msg, *args)

    def available(self, key: str, msg: str, *args: object) -> None:
        if key in self._down:
            self._down.discard(key)
            self.log.info(msg, *args)

    def every(self, key: str, now: float, msg: str, *args: object, level: int = logging.WARNING) -> None:
        last = self._last.get(key)
        if last is None or now - last >= self.interval:
            n = self._suppressed.pop(key, 0)
            suffix = f" ({n} similar messages suppressed)" if n else ""
            self.log.log(level, msg + suffix, *args)
            self._last[key] = now
        else:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
