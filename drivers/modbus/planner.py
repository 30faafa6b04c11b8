"""Pure read planning: which Modbus requests fetch a set of points, as few as possible.

Spec limits (Modbus Application Protocol V1.1b3 §6.1-§6.4): one read returns at most 125
registers (0x03/0x04) or 2000 bits (0x01/0x02). Reading a few unused registers between two
points costs far less than a second round trip, so points closer than ``max_gap`` are
coalesced into one request (Telegraf's and Home Assistant's "optimize" habit); a gap larger
than that, or a request that would exceed the limit, starts a new request. Overlapping points
(a status word and its bits) share the registers they overlap.

Nothing here does I/O; the driver turns each :class:`PlannedRead` into a
:class:`~drivers.modbus.codec.RequestDecoder` and a request on the connection.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .codec import BIT_TABLES, MAX_READ_BITS, MAX_READ_REGISTERS, PointSource

#: table order of the planned requests (registers first: they carry most points)
_TABLE_ORDER = {"holding": 0, "input": 1, "coil": 2, "discrete": 3}


@dataclass(frozen=True, slots=True)
class PointRef:
    """One point to read: its tag, its source and its absolute PDU address."""

    tag: int
    source: PointSource
    address: int
    device: int = 0  # which device (of a station) it belongs to, for splitting on exceptions

    @property
    def size(self) -> int:
        return self.source.size

    @property
    def end(self) -> int:
        return self.address + self.source.size


@dataclass(slots=True)
class PlannedRead:
    """One read request: table, first address, quantity and the points it covers."""

    table: str
    start: int
    count: int
    points: list[PointRef] = field(default_factory=list)

    @property
    def devices(self) -> set[int]:
        return {p.device for p in self.points}


def plan_reads(
    points: Iterable[PointRef],
    *,
    max_gap: int = 8,
    max_registers: int = MAX_READ_REGISTERS,
    max_bits: int = MAX_READ_BITS,
) -> list[PlannedRead]:
    """Coalesce ``points`` into the fewest requests within the limits.

    Greedy over points sorted by (table, address): a point joins the current request when it
    starts at most ``max_gap`` registers (bits) after the request's end and the request then
    spans no more than the limit; otherwise it opens a new request. Greedy is optimal here:
    any split that keeps every request within the limit and gaps within ``max_gap`` needs at
    least as many cuts.
    """
    if max_gap < 0:
        raise ValueError("max_gap must be >= 0")
    out: list[PlannedRead] = []
    cur: PlannedRead | None = None
    for p in sorted(points, key=lambda p: (_TABLE_ORDER[p.source.table], p.address, -p.size)):
        limit = max_bits if p.source.table in BIT_TABLES else max_registers
        if p.size > limit:
            raise ValueError(f"point of {p.size} registers exceeds one request ({limit})")
        if cur is not None and cur.table == p.source.table:
            end = cur.start + cur.count
            new_end = max(end, p.end)
            if p.address - end <= max_gap and new_end - cur.start <= limit:
                cur.count = new_end - cur.start
                cur.points.append(p)
                continue
        cur = PlannedRead(p.source.table, p.address, p.size, [p])
        out.append(cur)
    return out


def split_by_device(read: PlannedRead, *, max_gap: int = 8) -> list[PlannedRead]:
    """The same points as ``read``, planned per device: used when a coalesced request over
    several children got a Modbus exception, to find which child it belongs to."""
    by_dev: dict[int, list[PointRef]] = {}
    for p in read.points:
        by_dev.setdefault(p.device, []).append(p)
    out: list[PlannedRead] = []
    for dev in sorted(by_dev):
        out.extend(plan_reads(by_dev[dev], max_gap=max_gap))
    return out


# --------------------------------------------------------------------------- poll periods
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(v: Any) -> float:
    """``2s``, ``500ms``, ``1m``, ``1h`` or a number of seconds -> seconds (> 0)."""
    if isinstance(v, bool):
        raise ValueError(f"expected a duration such as '2s' or '500ms', got {v!r}")
    if isinstance(v, (int, float)):
        sec = float(v)
    else:
        m = _DURATION.match(str(v))
        if not m:
            raise ValueError(f"expected a duration such as '2s', '500ms' or '1m', got {v!r}")
        sec = float(m.group(1)) * _UNIT[m.group(2)]
    if not sec > 0:
        raise ValueError(f"a poll period must be > 0, got {v!r}")
    return sec


def next_due(now: float, period: float, phase: float) -> float:
    """First time >= now on the grid ``phase + k * period`` (every station keeps its own
    phase so a city's cabinets are not all asked in the same millisecond)."""
    k = -(-(now - phase) // period)  # ceil
    return phase + k * period
