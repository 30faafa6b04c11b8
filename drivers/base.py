"""Shared driver machinery: re-exports the contract and small helpers every driver needs.

* :class:`Backoff` - exponential backoff with full jitter for reconnects (so 700 cabinets that
  drop together do not reconnect together).
* :class:`RateLimitedLog` - log once when a device becomes unavailable and once when it is back
  (Home Assistant's habit), and at most one line per interval for repeated errors.
"""

from __future__ import annotations

import logging
import random

from scada.driver import STANDARD_HEALTH, Driver, DriverContext, Health
from scada.tags import Batch, Changes, PointDef, Sample

__all__ = [
    "STANDARD_HEALTH",
    "Backoff",
    "Batch",
    "Changes",
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
