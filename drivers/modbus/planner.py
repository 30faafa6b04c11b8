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

import numpy as np

from .codec import MAX_READ_BITS, MAX_READ_REGISTERS, TABLE_CODE, TABLE_NAMES, PointSource


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


def plan_arrays(
    table: np.ndarray,
    address: np.ndarray,
    size: np.ndarray,
    *,
    max_gap: int = 8,
    max_registers: int = MAX_READ_REGISTERS,
    max_bits: int = MAX_READ_BITS,
) -> list[tuple[int, int, int, np.ndarray]]:
    """Coalesce points given as columns (table code, absolute address, size) into the fewest
    requests within the limits; returns ``(table code, start, count, member rows)``.

    Greedy over points sorted by (table, address): a point joins the current request when it
    starts at most ``max_gap`` registers (bits) after the request's end and the request then
    spans no more than the limit; otherwise it opens a new request. Greedy is optimal here:
    any split that keeps every request within the limit and gaps within ``max_gap`` needs at
    least as many cuts. Table codes: :data:`~drivers.modbus.codec.TABLE_CODE`.
    """
    if max_gap < 0:
        raise ValueError("max_gap must be >= 0")
    table = np.asarray(table, dtype=np.int64)
    address = np.asarray(address, dtype=np.int64)
    size = np.asarray(size, dtype=np.int64)
    order = np.lexsort((-size, address, table))
    limits = [max_registers, max_registers, max_bits, max_bits]
    over = size > np.asarray(limits, dtype=np.int64)[table]
    if over.any():
        i = int(np.flatnonzero(over)[0])
        raise ValueError(f"point of {int(size[i])} registers exceeds one request ({limits[int(table[i])]})")
    t_s = table[order].tolist()
    a_s = address[order].tolist()
    e_s = (address + size)[order].tolist()
    out: list[tuple[int, int, int, np.ndarray]] = []
    cur_t, cur_start, cur_end, first = -1, 0, 0, 0
    for k, (t, a, e) in enumerate(zip(t_s, a_s, e_s, strict=True)):
        if t == cur_t:
            new_end = e if e > cur_end else cur_end
            if a - cur_end <= max_gap and new_end - cur_start <= limits[t]:
                cur_end = new_end
                continue
        if cur_t >= 0:
            out.append((cur_t, cur_start, cur_end - cur_start, order[first:k]))
        cur_t, cur_start, cur_end, first = t, a, e, k
    if cur_t >= 0:
        out.append((cur_t, cur_start, cur_end - cur_start, order[first:]))
    return out


def plan_reads(
    points: Iterable[PointRef],
    *,
    max_gap: int = 8,
    max_registers: int = MAX_READ_REGISTERS,
    max_bits: int = MAX_READ_BITS,
) -> list[PlannedRead]:
    """:func:`plan_arrays` for a list of :class:`PointRef` (tests, small devices)."""
    pts = list(points)
    plans = plan_arrays(
        np.asarray([TABLE_CODE[p.source.table] for p in pts], dtype=np.int64),
        np.asarray([p.address for p in pts], dtype=np.int64),
        np.asarray([p.size for p in pts], dtype=np.int64),
        max_gap=max_gap, max_registers=max_registers, max_bits=max_bits,
    )
    return [PlannedRead(TABLE_NAMES[t], start, count, [pts[i] for i in rows.tolist()])
            for t, start, count, rows in plans]


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
