"""Pure read-planning tests: coalescing, max gap, the 125/2000 limits, poll grids."""

from __future__ import annotations

import pytest

from drivers.modbus.codec import PointSource
from drivers.modbus.planner import PointRef, next_due, parse_duration, plan_reads, split_by_device


def ref(tag: int, address: int, table: str = "holding", device: int = 0, **kw) -> PointRef:
    return PointRef(tag, PointSource(table=table, address=address, **kw), address, device)


def spans(reads):
    return [(r.table, r.start, r.count) for r in reads]


def test_adjacent_and_small_gaps_coalesce():
    pts = [ref(1, 0), ref(2, 1, type="float32"), ref(3, 5), ref(4, 14)]
    assert spans(plan_reads(pts, max_gap=8)) == [("holding", 0, 15)]
    assert spans(plan_reads(pts, max_gap=3)) == [("holding", 0, 6), ("holding", 14, 1)]
    assert spans(plan_reads(pts, max_gap=0)) == [("holding", 0, 3), ("holding", 5, 1), ("holding", 14, 1)]


def test_points_keep_their_request_and_unsorted_input():
    pts = [ref(4, 14), ref(1, 0), ref(3, 5)]
    r = plan_reads(pts, max_gap=1)
    assert [[p.tag for p in x.points] for x in r] == [[1], [3], [4]]


def test_overlapping_points_share_registers():
    pts = [ref(1, 10), ref(2, 10, bit=0), ref(3, 10, bit=15), ref(4, 11)]
    r = plan_reads(pts, max_gap=0)
    assert spans(r) == [("holding", 10, 2)]
    assert sorted(p.tag for p in r[0].points) == [1, 2, 3, 4]


def test_register_limit_125():
    pts = [ref(i, i) for i in range(300)]
    r = plan_reads(pts, max_gap=8)
    assert spans(r) == [("holding", 0, 125), ("holding", 125, 125), ("holding", 250, 50)]
    # a two-register value never straddles a request boundary
    pts = [ref(i, 2 * i, type="uint32") for i in range(100)]
    r = plan_reads(pts)
    assert all(x.count <= 125 for x in r) and r[0].count == 124
    assert sum(len(x.points) for x in r) == 100


def test_bit_limit_2000_and_tables_never_mix():
    pts = [ref(i, i, table="coil") for i in range(4500)]
    r = plan_reads(pts)
    assert spans(r) == [("coil", 0, 2000), ("coil", 2000, 2000), ("coil", 4000, 500)]
    mixed = [ref(1, 0), ref(2, 1, table="input"), ref(3, 0, table="discrete"), ref(4, 2)]
    assert spans(plan_reads(mixed)) == [("holding", 0, 3), ("input", 1, 1), ("discrete", 0, 1)]


def test_custom_limits_and_oversize_point():
    pts = [ref(i, i) for i in range(10)]
    assert len(plan_reads(pts, max_registers=4)) == 3
    with pytest.raises(ValueError, match="exceeds one request"):
        plan_reads([ref(1, 0, type="string", count=10)], max_registers=8)
    with pytest.raises(ValueError):
        plan_reads(pts, max_gap=-1)


def test_luminaire_blocks_behind_a_cabinet():
    # 48 luminaires x 16-register blocks, 5 points each (level, power, energy u32, status)
    pts = []
    for n in range(48):
        b = 100 + 16 * n
        pts += [ref(5 * n, b, device=n), ref(5 * n + 1, b + 1, device=n),
                ref(5 * n + 2, b + 2, type="uint32", device=n), ref(5 * n + 3, b + 4, device=n)]
    r = plan_reads(pts, max_gap=12)
    # 8 blocks fit one request: 7 * 16 + 5 = 117 <= 125 registers
    assert len(r) == 6 and all(x.count == 117 for x in r)
    parts = split_by_device(r[0])
    assert [x.devices for x in parts] == [{d} for d in sorted(r[0].devices)]
    assert sum(len(x.points) for x in parts) == len(r[0].points)


def test_durations_and_grid():
    assert parse_duration("2s") == 2.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1m") == 60.0
    assert parse_duration(3) == 3.0
    for bad in ("fast", "0s", -1, True):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert next_due(100.0, 2.0, 0.5) == 100.5
    assert next_due(100.5, 2.0, 0.5) == 100.5
    assert next_due(100.6, 2.0, 0.5) == 102.5
