"""Historian parts without sockets: recorder selection, spool bounds and damage, segment
selection and compaction, single writer, line protocol, write-error classification, aggregates
and counter corner cases."""

from __future__ import annotations

import os
from datetime import date

import numpy as np
import pytest

from historian.base import HistorianError, Points, Raw
from historian.embedded import EmbeddedBackend, live_segments
from historian.influx import LineEncoder, classify, escape_tag, line_protocol
from historian.query import aggregate, counter_deltas
from historian.service import HistorianService
from historian.spool import Spool, SpoolFull
from scada import quality as Q
from scada.clock import SteppedClock
from scada.runtime import Runtime
from scada.tags import Batch, PointDef
from tests.fixtures.historian import make_site

T0 = 1_735_689_600.0


@pytest.fixture
def svc(tmp_path):
    site = make_site(tmp_path, cabinets=1, lamps=2, historian="  deadband: {power_w: 5.0}\n  options: {fsync: false}")
    rt = Runtime(site, SteppedClock(T0))
    return rt, HistorianService(rt)


async def test_recorder_deadband_discrete_and_quality(svc):
    rt, h = svc
    p = rt.tagdb.index("centre/cab-1/lum-01/power_w")
    f = rt.tagdb.index("centre/cab-1/lum-01/lamp_failure")
    seq = [(100.0, Q.Good), (103.0, Q.Good), (106.0, Q.Good), (106.5, Q.Good), (106.5, Q.BadCommunicationError),
           (90.0, Q.Good)]
    for k, (v, q) in enumerate(seq):
        await rt.clock.advance_to(T0 + k)
        rt.tagdb.apply(Batch.of([p, f], [v, k % 2], [q, Q.Good], T0 + k))
    pts = h.recorder.take()
    got = {(pts.keys[s], t, v) for s, t, v in zip(pts.sid.tolist(), pts.t.tolist(), pts.v.tolist(), strict=True)}
    power = sorted((t - T0, v) for k, t, v in got if k.endswith("power_w"))
    # 103 is within 5 W of 100; 106 is not; 106.5 only recorded when its quality changes
    assert power == [(0, 100.0), (2, 106.0), (4, 106.5), (5, 90.0)]
    assert sorted(t - T0 for k, t, v in got if k.endswith("lamp_failure")) == [0, 1, 2, 3, 4, 5]
    assert len(h.recorder.take()) == 0
    await h.aclose()


async def test_own_health_not_recorded(svc):
    _rt, h = svc
    h.publish_health()
    assert len(h.recorder.take()) == 0  # _system/historian/* excluded (no feedback loop)
    await h.aclose()


async def test_spool_alarm_above_80_percent_and_dropped_when_full(svc, tmp_path):
    rt, h = svc
    h.spool.max_bytes = 10_000
    p = rt.tagdb.indices_of_point("power_w")
    k = 0
    while h.spool.fill < 0.8:
        rt.tagdb.apply(Batch.of(p, np.full(len(p), 100.0 + 10 * k), Q.Good, T0 + k))
        await h.spool_now()
        k += 1
    h.publish_health()
    assert rt.tagdb.read("_system/historian/spool_alarm").value is True
    for j in range(200):
        rt.tagdb.apply(Batch.of(p, np.full(len(p), 1e6 + 10 * j), Q.Good, T0 + 1000 + j))
        await h.spool_now()
    assert h.spool.dropped > 0 and h.spool.bytes <= 10_000
    h.publish_health()
    assert rt.tagdb.read("_system/historian/dropped").value == h.spool.dropped
    await h.flush()  # the backend takes everything spooled
    h.publish_health()
    assert rt.tagdb.read("_system/historian/spool_alarm").value is False
    await h.aclose()


def test_spool_round_trip_and_damaged_file(tmp_path):
    sp = Spool(str(tmp_path / "sp"), max_bytes=10**6, fsync=False)
    pts = Points.of(["a/b/c", "a/b/d"], [1, 0, 1], [1.0, 2.0, 3.0], [np.nan, 5.0, 6.0], [Q.Bad, 0, 0])
    name = sp.append(pts)
    back, batch = sp.read(name)
    assert back.keys == ["a/b/c", "a/b/d"] and back.sid.tolist() == [1, 0, 1]
    assert np.isnan(back.v[0]) and back.q.tolist() == [Q.Bad, 0, 0] and batch
    with open(os.path.join(sp.dir, name), "r+b") as f:
        f.write(b"garbage!")
    with pytest.raises(HistorianError, match="damaged"):
        sp.read(name)
    # a block being written (temporary name) is not offered to the forwarder
    open(os.path.join(sp.dir, ".tmp-000000000099.blk"), "wb").close()
    assert sp.pending() == [name]
    # a new Spool on the same directory (restart) sees the blocks in order and keeps numbering
    n2 = sp.append(pts)
    sp2 = Spool(sp.dir, max_bytes=10**6, fsync=False)
    assert sp2.pending() == [name, n2] and sp2.append(pts) > n2
    small = Spool(str(tmp_path / "small"), max_bytes=100, fsync=False)
    with pytest.raises(SpoolFull, match="spool_max_bytes"):
        small.append(pts)
    assert small.dropped == 3


def test_spool_key_table_replay_and_shared_key_strings(tmp_path):
    """Keys live in the spool's key table: a block holds key ids, read hands out the table's
    string objects (a snapshot block of every tag creates no new strings), restart reloads it."""
    d = str(tmp_path / "sp")
    sp = Spool(d, max_bytes=10**7, fsync=False)
    k1 = Points.of(["a/x", "a/y", "b/z"], [2, 0, 1, 2], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], 0)
    n1 = sp.append(k1)
    # unused keys are dropped (compact_keys), known keys are not added again, new ones are
    n2 = sp.append(Points.of(["unused", "b/z", "c/w"], [1, 2, 1], [5.0, 6.0, 7.0], [5.0, 6.0, 7.0], 0))
    assert sp.key_count == 4
    with open(os.path.join(d, "keys.txt"), encoding="utf-8") as f:
        assert f.read() == "a/x\na/y\nb/z\nc/w\n"
    a, batch_a = sp.read(n1)
    b, _ = sp.read(n1)
    assert a.keys == ["a/x", "a/y", "b/z"] and a.sid.tolist() == [2, 0, 1, 2] and batch_a
    assert all(x is y for x, y in zip(a.keys, b.keys, strict=True))
    c, _ = sp.read(n2)
    assert c.keys == ["b/z", "c/w"] and c.sid.tolist() == [0, 1, 0]
    assert c.keys[0] is a.keys[2]
    # restart with blocks pending: the table is reloaded and the blocks replay the same keys
    sp2 = Spool(d, max_bytes=10**7, fsync=False)
    a2, batch2 = sp2.read(n1)
    c2, _ = sp2.read(n2)
    assert (a2.keys, a2.sid.tolist(), a2.t.tolist(), batch2) == (a.keys, a.sid.tolist(), a.t.tolist(), batch_a)
    assert c2.keys == c.keys and c2.keys[0] is a2.keys[2]
    n3 = sp2.append(Points.of(["c/w", "d/v"], [0, 1], [8.0, 9.0], [8.0, 9.0], 0))
    assert sp2.read(n3)[0].keys == ["c/w", "d/v"] and sp2.key_count == 5
    # once every block is stored the next start begins a fresh table (bounded by live series)
    for n in sp2.pending():
        sp2.remove(n)
    sp3 = Spool(d, max_bytes=10**7, fsync=False)
    assert sp3.key_count == 0 and os.path.getsize(os.path.join(d, "keys.txt")) == 0
    assert sp3.read(sp3.append(k1))[0].keys == ["a/x", "a/y", "b/z"]


def test_spool_reads_v1_blocks_and_odd_keys(tmp_path):
    """A block spooled by the previous version (SCHSPL01, keys in the JSON header) is replayed
    after an upgrade; keys with a newline or backslash survive the line-based key table."""
    import json
    import struct

    d = tmp_path / "sp"
    d.mkdir()
    header = json.dumps({"batch": "old1", "n": 3, "keys": ["a/b/c", "a/b/d"]}).encode()
    body = b"".join((b"SCHSPL01", struct.pack("<I", len(header)), header,
                     np.array([1, 0, 1], "<i4").tobytes(), np.array([1.0, 2.0, 3.0], "<f8").tobytes(),
                     np.array([np.nan, 5.0, 6.0], "<f8").tobytes(), np.array([Q.Bad, 0, 0], "<u4").tobytes()))
    (d / "000000000007.blk").write_bytes(body)
    sp = Spool(str(d), max_bytes=10**7, fsync=False)
    assert sp.pending() == ["000000000007.blk"]
    old, batch = sp.read("000000000007.blk")
    assert batch == "old1" and old.keys == ["a/b/c", "a/b/d"] and old.sid.tolist() == [1, 0, 1]
    assert np.isnan(old.v[0]) and old.q.tolist() == [Q.Bad, 0, 0] and old.t.tolist() == [1.0, 2.0, 3.0]
    odd = ["x/line\nbreak", "x/back\\slash\\n", "x/\u00e9t\u00e9", "x/tab\there"]
    name = sp.append(Points.of(odd, [0, 1, 2, 3], [1.0] * 4, [1.0] * 4, 0))
    assert name > "000000000007.blk"  # numbering continues after the old blocks
    assert Spool(str(d), max_bytes=10**7, fsync=False).read(name)[0].keys == odd


def test_spool_key_table_torn_line_and_missing_key(tmp_path):
    d = str(tmp_path / "sp")
    sp = Spool(d, max_bytes=10**7, fsync=False)
    n1 = sp.append(Points.of(["a/x", "a/y"], [0, 1], [1.0, 2.0], [1.0, 2.0], 0))
    kpath = os.path.join(d, "keys.txt")
    # crash in the middle of adding a key: its block was never renamed into place
    with open(kpath, "ab") as f:
        f.write("b/to\u00e9".encode()[:-1])
    sp2 = Spool(d, max_bytes=10**7, fsync=False)
    assert sp2.key_count == 2 and sp2.read(n1)[0].keys == ["a/x", "a/y"]
    n2 = sp2.append(Points.of(["b/new", "a/y"], [0, 1], [3.0, 4.0], [3.0, 4.0], 0))
    with open(kpath, "rb") as f:
        assert f.read() == b"a/x\na/y\nb/new\n"  # the torn bytes were cut, not glued to b/new
    assert Spool(d, max_bytes=10**7, fsync=False).read(n2)[0].keys == ["b/new", "a/y"]
    # a block naming a key id the table does not have is damaged (and set aside as such)
    with open(kpath, "r+b") as f:
        f.truncate(len(b"a/x\na/y\n"))
    sp3 = Spool(d, max_bytes=10**7, fsync=False)
    with pytest.raises(HistorianError, match=f"{n2}.*damaged"):
        sp3.read(n2)
    assert sp3.read(n1)[0].keys == ["a/x", "a/y"]
    moved = sp3.set_aside(n2, "damaged")
    assert os.path.exists(moved) and sp3.pending() == [n1]
    # a readable block set aside is rewritten self-contained (keys in the header, SCHSPL01)
    rej = sp3.set_aside(n1, "rejected")
    with open(rej, "rb") as f:
        assert f.read(8) == b"SCHSPL01"
    os.replace(rej, os.path.join(d, n1))
    assert Spool(d, max_bytes=10**7, fsync=False).read(n1)[0].keys == ["a/x", "a/y"]


def test_spool_read_creates_no_key_strings(tmp_path):
    """Reading a 100,000-key block (a snapshot) twice hands out the same string objects, the
    ones of the key table: no per-block key strings for the allocator to fragment."""
    n = 100_000
    keys = [f"cab{i // 100:04d}/lamp{i % 100:02d}/power_w" for i in range(n)]
    sp = Spool(str(tmp_path / "sp"), max_bytes=10**9, fsync=False)
    pts = Points.of(keys, np.arange(n), np.full(n, T0), np.ones(n), 0)
    name = sp.append(pts)
    a, _ = sp.read(name)
    b, _ = sp.read(name)
    assert a.keys == keys
    assert [id(k) for k in a.keys] == [id(k) for k in b.keys]
    assert all(x is y for x, y in zip(a.keys, keys, strict=True))  # the recorder's own strings
    # after a restart the strings come from the reloaded table, still shared across reads
    sp2 = Spool(sp.dir, max_bytes=10**9, fsync=False)
    c, _ = sp2.read(name)
    d, _ = sp2.read(name)
    assert c.keys == keys and all(x is y for x, y in zip(c.keys, d.keys, strict=True))


def test_live_segments_prefers_compactions():
    names = ["0000000001_0_9_a.parquet", "0000000002_0_9_b.parquet", "c0000000001-0000000002_0_9.parquet",
             "0000000003_0_9_c.parquet", "c0000000001-0000000003_0_9.parquet", ".tmp-x", "series.tsv"]
    assert [s.name for s in live_segments(names)] == ["c0000000001-0000000003_0_9.parquet"]
    assert [s.name for s in live_segments(names[:4])] == ["c0000000001-0000000002_0_9.parquet",
                                                          "0000000003_0_9_c.parquet"]


def test_embedded_compaction_keeps_later_writes_and_single_writer(tmp_path):
    b = EmbeddedBackend(str(tmp_path / "s"), {"fsync": False, "compact_after": 0})
    key = ["x/y/z"]
    for k in range(10):
        b.write(Points.of(key, [0, 0], [T0 + k, T0 + 100], [float(k), float(k)]), f"b{k}")
    reader = EmbeddedBackend(str(tmp_path / "s"))  # another process would do the same
    before = reader.read_raw(key[0], T0, T0 + 200)
    assert b.compact(min_blocks=4) == 10
    after = reader.read_raw(key[0], T0, T0 + 200)
    assert before.v.tolist() == after.v.tolist() == [*range(10), 9.0]  # later block wins at T0+100
    assert b.stats()["segments"] == 1
    other = EmbeddedBackend(str(tmp_path / "s"))
    with pytest.raises(HistorianError, match=r"writer\.lock"):
        other.write(Points.of(key, [0], [T0], [1.0]), "z")
    for x in (b, reader, other):
        x.close()


def test_embedded_remembers_recent_batches_only_and_blocks_log_stays_bounded(tmp_path):
    """One block a second is 31 M batch ids a year: the writer keeps the last
    ``remember_batches`` (in memory and in blocks.log), which still skips a replayed block."""
    path = str(tmp_path / "s")
    key = ["x/y/z"]
    b = EmbeddedBackend(path, {"fsync": False, "compact_after": 4, "remember_batches": 5})
    for k in range(23):
        b.write(Points.of(key, [0], [T0 + k], [float(k)]), f"b{k}")
    assert list(b._batches) == [f"b{k}" for k in range(18, 23)]
    with open(os.path.join(path, "blocks.log")) as f:
        lines = f.read().split()
    assert 5 <= len(lines) <= 10 and lines[-1] == "b22"  # rewritten when it reached 10 lines
    b.write(Points.of(key, [0], [T0 + 22], [-1.0]), "b22")  # a replay: skipped
    b.close()
    again = EmbeddedBackend(path, {"fsync": False, "remember_batches": 5})
    again.write(Points.of(key, [0], [T0 + 21], [-1.0]), "b21")  # replay after a restart: skipped
    assert again.read_raw(key[0], T0, T0 + 30).v.tolist() == [float(k) for k in range(23)]
    assert list(again._batches) == [f"b{k}" for k in range(18, 23)]
    again.write(Points.of(key, [0], [T0 + 1], [-1.0]), "b1")  # long forgotten: written again
    assert again.read_raw(key[0], T0 + 1, T0 + 2).v.tolist() == [-1.0]
    again.close()


def test_line_protocol_escapes_and_nan():
    pts = Points.of(["a b/c,d=e", "ok/x"], [0, 1], [T0 + 0.0015, T0], [1.5, np.nan], [0, Q.BadCommunicationError])
    text = b"".join(line_protocol(pts, "scada", "ms")).decode()
    assert text == (r"scada,tag=a\ b/c\,d\=e v=1.5,q=0i 1735689600002" + "\n"
                    f"scada,tag=ok/x q={Q.BadCommunicationError}i 1735689600000\n")


def _line_protocol_reference(pts: Points, measurement: str = "scada", precision: str = "ms") -> str:
    """The plain per-point builder the vectorised one must match byte for byte."""
    mult = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[precision]
    out = []
    for s, t, v, q in zip(pts.sid.tolist(), pts.t.tolist(), pts.v.tolist(), pts.q.tolist(), strict=True):
        head = f"{escape_tag(measurement)},tag={escape_tag(pts.keys[s])} "
        field = f"v={v!r},q={q}i" if np.isfinite(v) else f"q={q}i"
        out.append(f"{head}{field} {int(np.round(t * mult))}\n")
    return "".join(out)


@pytest.mark.parametrize("kind", ["integral", "fractional", "mixed", "non_finite", "huge", "signed_zero"])
def test_line_encoder_matches_per_point_reference(kind):
    rng = np.random.default_rng(7)
    n = 2000
    keys = ["a b", "c,d", "e=f", "plain/x", "ünï/cödé"]
    v = {
        "integral": rng.integers(-10**6, 10**6, n).astype(np.float64),
        "fractional": rng.normal(0, 1e3, n),
        "mixed": np.where(rng.random(n) < 0.5, rng.integers(0, 99, n), rng.random(n) * 1e-7),
        "non_finite": rng.choice([np.nan, np.inf, -np.inf, 1.0, 2.5, 1e300], n),
        "huge": rng.choice([1e15, 1e15 - 1, 2.0**53, 1e16, 1e22, -1e15, 123.0], n),
        "signed_zero": rng.choice([0.0, -0.0, 5.0], n),
    }[kind]
    t = T0 + rng.integers(0, 50, n) * 0.25 + rng.choice([0.0, 0.0004, 0.0015], n)
    q = rng.choice([0, 0, Q.BadCommunicationError, Q.UncertainLastUsableValue], n).astype(np.uint32)
    pts = Points(keys, rng.integers(0, len(keys), n).astype(np.int32), t, v, q)
    for precision in ("ms", "s", "ns"):
        got = LineEncoder("m x", precision).encode(pts).decode()
        assert got == _line_protocol_reference(pts, "m x", precision)
    # every value comes back as the same float64 (sign of zero included)
    back = [ln.split(" v=")[1].split(",q=")[0] for ln in got.splitlines() if " v=" in ln]
    fin = v[np.isfinite(v)]
    assert np.array_equal(np.array([float(x) for x in back]), fin)
    assert np.array_equal(np.signbit(np.array([float(x) for x in back])), np.signbit(fin))


def test_line_encoder_integral_fast_path_and_prefix_cache():
    enc = LineEncoder("scada", "ms")
    pts = Points.of(["k"], [0, 0], [T0, T0 + 1], [41.0, -7.0])
    assert enc.encode(pts) == b"scada,tag=k v=41.0,q=0i 1735689600000\nscada,tag=k v=-7.0,q=0i 1735689601000\n"
    pts2 = Points.of(["new", "k"], [1, 0], [T0, T0], [0.5, 1.0])  # keys list differs per block
    assert enc.encode(pts2) == b"scada,tag=k v=0.5,q=0i 1735689600000\nscada,tag=new v=1.0,q=0i 1735689600000\n"
    assert enc.encode(Points.empty()) == b""
    small = LineEncoder("scada", "ms", cache_size=1)
    assert small.encode(pts2) == enc.encode(pts2)  # cache cleared when full, output unchanged


def test_write_error_classification():
    assert classify(204, 10) == "ok"
    assert classify(413, 10) == "split" and classify(413, 1) == "reject"
    assert classify(429, 10) == classify(503, 10) == classify(500, 10) == "retry"
    assert classify(401, 10) == classify(403, 10) == classify(404, 10) == "retry"  # fix config, keep data
    assert classify(400, 10) == classify(422, 10) == "reject"


def test_time_weighted_average_and_integral():
    raw = Raw(np.array([0.0, 600.0, 1800.0]), np.array([10.0, 20.0, 0.0]), np.zeros(3, np.uint32))
    a = aggregate(raw, 0.0, 3600.0, 3600.0, "time_avg")
    assert a.value.tolist() == [(10 * 600 + 20 * 1200 + 0 * 1800) / 3600]
    i = aggregate(raw, 0.0, 3600.0, 1800.0, "integral")
    assert i.value.tolist() == [10 * 600 + 20 * 1200, 0.0]
    with pytest.raises(ValueError, match="unknown aggregate"):
        aggregate(raw, 0, 1, 1, "median")


def test_counter_rollover_and_replacement():
    edges = np.array([0.0, 1000.0, 2000.0])
    # 16-bit counter rolls over 65535 -> 5; then a replaced meter starts at 50,000
    raw = Raw(np.array([0.0, 400, 800, 1200, 1600, 1700]), np.array([65500.0, 65530, 5, 15, 50_000, 50_010]),
              np.zeros(6, np.uint32))
    d = counter_deltas(raw, edges, rollover=65536.0, max_rate=1.0)
    assert d.delta.tolist() == [30.0 + 11.0, 10.0 + 10.0]
    assert d.resets.tolist() == [1, 0] and d.replacements.tolist() == [0, 1]
    # bad readings are skipped and counted
    raw2 = Raw(np.array([0.0, 10, 20]), np.array([1.0, 1e9, 3.0]), np.array([0, Q.BadCommunicationError, 0], np.uint32))
    d2 = counter_deltas(raw2, np.array([0.0, 100.0]))
    assert d2.delta.tolist() == [2.0] and d2.bad.tolist() == [1]


async def test_swinging_door_keeps_every_value_within_deviation(tmp_path):
    site = make_site(tmp_path, cabinets=1, lamps=3,
                     historian="  swinging_door: {power_w: 0.5}\n  options: {fsync: false}")
    rt = Runtime(site, SteppedClock(T0 + 4000))  # readings of the last 4,000 s (none ahead of now)
    h = HistorianService(rt)
    tags = rt.tagdb.indices_of_point("power_w")
    rng = np.random.default_rng(3)
    n = 400
    walk = np.cumsum(rng.normal(0, 0.3, (n, len(tags))), axis=0) + 50.0
    walk[:, 0] = 10.0 + 0.1 * np.arange(n)  # a pure ramp: two points suffice
    walk[150:, 1] = walk[150, 1]  # flat after a corner
    for k in range(n):
        rt.tagdb.apply(Batch.of(tags, walk[k], Q.Good, T0 + 10.0 * k))
    pts = h.recorder.take()
    h.recorder.release_held()
    pts = Points.concat([pts, h.recorder.take()])
    times = T0 + 10.0 * np.arange(n)
    for j, i in enumerate(tags.tolist()):
        sel = np.array([pts.keys[s] == rt.tagdb.path(i) for s in pts.sid.tolist()])
        t, v = pts.t[sel], pts.v[sel]
        last_change = np.flatnonzero(np.diff(walk[:, j]) != 0)[-1] + 1  # the tag database's last change
        assert t[0] == times[0] and t[-1] == times[last_change] and np.all(np.diff(t) > 0)
        rebuilt = np.interp(times, t, v)  # what a trend draws between archived points
        assert np.max(np.abs(rebuilt - walk[:, j])) <= 0.5 + 1e-9
        if j == 0:
            assert len(t) == 2  # the ramp: first and last point only
        assert len(t) < n / 2  # it does compress
    await h.aclose()


async def test_swinging_door_archives_held_value_on_quality_change(tmp_path):
    site = make_site(tmp_path, cabinets=1, lamps=1,
                     historian="  swinging_door: {power_w: 1.0}\n  options: {fsync: false}")
    rt = Runtime(site, SteppedClock(T0))
    h = HistorianService(rt)
    i = rt.tagdb.index("centre/cab-1/lum-01/power_w")
    for k, (v, q) in enumerate([(10.0, Q.Good), (10.2, Q.Good), (10.4, Q.Good), (10.4, Q.BadCommunicationError)]):
        await rt.clock.advance_to(T0 + k)
        rt.tagdb.apply(Batch.of([i], [v], q, T0 + k))
    pts = h.recorder.take()
    key = pts.keys.index("centre/cab-1/lum-01/power_w")
    rows = [(t - T0, v, q) for s, t, v, q in zip(pts.sid.tolist(), pts.t.tolist(), pts.v.tolist(),
                                                   pts.q.tolist(), strict=True) if s == key]
    assert rows == [(0.0, 10.0, Q.Good), (2.0, 10.4, Q.Good), (3.0, 10.4, Q.BadCommunicationError)]
    await h.aclose()


async def test_tags_added_after_the_historian_are_recorded(svc):
    rt, h = svc
    first = rt.tagdb.add_tags("_system/other", [PointDef("uptime_s", "float")])
    h.recorder.rebuild()
    rt.tagdb.apply(Batch.of([first], [5.0], Q.Good, T0))
    pts = h.recorder.take()
    assert pts.keys == ["_system/other/uptime_s"] and pts.v.tolist() == [5.0]
    await h.aclose()


def test_bucket_sql_matches_searchsorted_across_dst():
    import duckdb

    from historian.embedded import _bucket_sql
    from scada import astro

    days = astro.to_dates([date(2025, 3, 1)])[0] + np.arange(250)  # both 2025 DST changes
    edges = np.round(astro.local_noon_utc(days, "Europe/Paris") * 1e6).astype(np.int64)
    rng = np.random.default_rng(5)
    t = np.sort(rng.integers(edges[0], edges[-1], 200_000))
    t = np.concatenate([t, edges[:-1], edges[1:-1] - 1])  # exactly on and just before edges
    con = duckdb.connect()
    data = {"t": t}  # noqa: F841 - read by DuckDB's replacement scan
    got = con.execute(f"SELECT {_bucket_sql(edges)} AS b FROM data").fetchnumpy()["b"]
    np.testing.assert_array_equal(got, np.searchsorted(edges, t, side="right") - 1)


async def test_history_read_raw_and_processed_for_opcua(svc):
    rt, h = svc
    i = rt.tagdb.index("centre/cab-1/power_w")
    for k in range(6):
        q = Q.BadCommunicationError if k == 4 else Q.Good
        await rt.clock.advance_to(T0 + 600 * k)  # a reading is never stamped ahead of now
        rt.tagdb.apply(Batch.of([i], [100.0 + 10 * k], q, T0 + 600 * k))
    await h.flush()
    t, v, q = await h.read_raw(i, T0, T0 + 3600, 3)
    assert t.tolist() == [T0, T0 + 600, T0 + 1200] and v.tolist() == [100.0, 110.0, 120.0]
    starts, vals, codes = await h.read_processed(i, T0, T0 + 5400, 1800, "avg")
    assert starts.tolist() == [T0, T0 + 1800, T0 + 3600]
    assert vals[0] == 110.0 and vals[1] == 140.0 and np.isnan(vals[2])  # 140: (130 + 150) / 2
    # bucket 1 had a bad point excluded: uncertain; bucket 2 has no point: no data
    assert codes.tolist() == [Q.Good, Q.Uncertain, Q.BadNoData]
    await h.aclose()
