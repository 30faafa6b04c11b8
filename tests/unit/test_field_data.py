"""Field data you can trust (issue 16): the tag database's screening, without sockets.

Plausible ranges (EU range by default, ``valid_range`` for an instrument that may exceed it),
integer rounding and OPC UA data-type limits, future and late source times, cumulative counters
classified (glitch / restart / out of order) so the historian's counter deltas never see a
negative or huge step, and the one owner of the out-of-service state. The same rules run
through real peers in ``tests/system/test_field_data_e2e.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from historian.base import Raw
from historian.query import counter_deltas
from scada import quality as Q
from scada.clock import SteppedClock
from scada.tags import SCREEN_COUNTS, Batch, PointDef, PointSchema, TagDatabase

T0 = 1_767_225_600.0

LAMP = PointSchema("lamp", (
    PointDef("arc", "int", "", eu_low=0, eu_high=254),
    PointDef("power_w", "float", "W", eu_low=0, eu_high=500),
    PointDef("lux", "float", "lx", eu_low=0, eu_high=100, valid_low=-5, valid_high=1000),
    PointDef("energy_wh", "float", "Wh", counter=True, max_rate=1.0),
    PointDef("starts", "int", "", ua_type="UInt16"),
    PointDef("temp_c", "float", "degC"),
    PointDef("label", "string"),
    PointDef("hours", "float", "h", counter=True),
))


@pytest.fixture
def db() -> TagDatabase:
    d = TagDatabase(SteppedClock(start=T0))
    d.add_device("centre/gw/lum-1", LAMP)
    d.add_device("centre/gw/lum-2", LAMP)
    return d


def tag(db: TagDatabase, path: str) -> int:
    return db.index(f"centre/gw/{path}")


def put(db: TagDatabase, values: dict[str, float], ts: float | None = None,
        counts: dict[str, float] | None = None, quality: int = Q.Good):
    idx = [tag(db, p) for p in values]
    return db.apply(Batch.of(idx, list(values.values()), quality,
                             db.clock.time() if ts is None else ts), counts)


# ----------------------------------------------------------------------------- ranges
def test_readings_outside_the_eu_range_keep_their_value_with_bad_out_of_range(db):
    """The DALI gateway of the integrators' report: arc 1000, -1, 255 on [0, 254], power -5 W
    and 1e12 W: kept, never Good, counted."""
    counts: dict[str, float] = {}
    put(db, {"lum-1/arc": 1000, "lum-2/arc": -1, "lum-1/power_w": -5}, counts=counts)
    for p, v in (("lum-1/arc", 1000), ("lum-2/arc", -1), ("lum-1/power_w", -5.0)):
        s = db.read(tag(db, p))
        assert (s.value, s.quality) == (v, Q.BadOutOfRange), p
    put(db, {"lum-1/arc": 255, "lum-2/arc": 254, "lum-1/power_w": 1e12, "lum-2/power_w": 42.0},
        counts=counts)
    assert db.read(tag(db, "lum-1/arc")).quality == Q.BadOutOfRange
    assert db.read(tag(db, "lum-1/power_w")).quality == Q.BadOutOfRange
    assert db.read(tag(db, "lum-2/arc")).quality == Q.Good  # the edge of the range is plausible
    assert db.read(tag(db, "lum-2/power_w")).quality == Q.Good
    assert counts["implausible"] == 5 and db.stats["implausible"] == 5
    put(db, {"lum-1/arc": 100})
    assert db.read(tag(db, "lum-1/arc")).quality == Q.Good  # plausible again: Good again


def test_a_wider_valid_range_makes_readings_beyond_the_eu_range_uncertain(db):
    put(db, {"lum-1/lux": 250, "lum-2/lux": -3})
    assert db.read(tag(db, "lum-1/lux")).quality == Q.UncertainEngineeringUnitsExceeded
    assert db.read(tag(db, "lum-2/lux")).quality == Q.UncertainEngineeringUnitsExceeded
    put(db, {"lum-1/lux": 1500, "lum-2/lux": 50})
    assert db.read(tag(db, "lum-1/lux")).quality == Q.BadOutOfRange
    assert db.read(tag(db, "lum-2/lux")).quality == Q.Good


def test_points_without_a_range_refuse_infinities_and_their_data_type_limits(db):
    put(db, {"lum-1/temp_c": float("inf"), "lum-1/starts": 70000, "lum-2/starts": -1,
             "lum-2/temp_c": -40.0})
    assert db.read(tag(db, "lum-1/temp_c")).quality == Q.BadOutOfRange
    assert db.read(tag(db, "lum-1/starts")).quality == Q.BadOutOfRange  # UInt16
    assert db.read(tag(db, "lum-2/starts")).quality == Q.BadOutOfRange
    assert db.read(tag(db, "lum-2/temp_c")).quality == Q.Good


def test_a_source_quality_already_bad_is_kept(db):
    put(db, {"lum-1/arc": 1000}, quality=Q.BadSensorFailure)
    assert db.read(tag(db, "lum-1/arc")).quality == Q.BadSensorFailure


def test_integer_points_are_rounded_so_every_consumer_sees_the_same_number(db):
    seen: list[float] = []
    db.subscribe(lambda ch: seen.extend(ch.values.tolist()))
    put(db, {"lum-1/arc": 254.6, "lum-2/arc": 17.4, "lum-1/power_w": 12.34})
    assert db.read(tag(db, "lum-1/arc")).value == 255 and db.read(tag(db, "lum-1/arc")).quality == Q.BadOutOfRange
    assert db.read(tag(db, "lum-2/arc")).value == 17
    assert seen == [255.0, 17.0, 12.34]  # what the historian records is what OPC UA shows


# ----------------------------------------------------------------------------- timestamps
def test_a_source_time_in_the_future_is_clamped_with_bad_invalid_timestamp(db):
    counts: dict[str, float] = {}
    put(db, {"lum-1/power_w": 10.0}, ts=T0 + 5.0, counts=counts)  # within the 10 s tolerance
    assert db.read(tag(db, "lum-1/power_w")).quality == Q.Good
    y2099 = 4_070_908_800.0
    put(db, {"lum-1/power_w": 11.0, "lum-2/power_w": 12.0}, ts=y2099, counts=counts)
    s = db.read(tag(db, "lum-1/power_w"))
    assert (s.value, s.quality, s.source_ts) == (11.0, Q.BadInvalidTimestamp, T0)
    assert counts["future_samples"] == 2


def test_an_older_sample_never_replaces_a_newer_value(db):
    counts: dict[str, float] = {}
    put(db, {"lum-1/power_w": 20.0, "lum-2/power_w": 21.0}, ts=T0 - 10, counts=counts)
    y2020 = 1_577_836_800.0
    ch = put(db, {"lum-1/power_w": 99.0, "lum-2/power_w": 22.0}, ts=y2020, counts=counts)
    assert ch is None
    s = db.read(tag(db, "lum-1/power_w"))
    assert (s.value, s.quality, s.source_ts) == (20.0, Q.Good, T0 - 10)
    assert counts["late_samples"] == 2
    put(db, {"lum-1/power_w": 23.0}, ts=T0 - 10)  # the same time is not older: applied
    assert db.read(tag(db, "lum-1/power_w")).value == 23.0
    # text points follow the same rule
    db.apply(Batch.of([tag(db, "lum-1/label")], ["new"], Q.Good, T0 - 5))
    db.apply(Batch.of([tag(db, "lum-1/label")], ["old"], Q.Good, T0 - 50))
    assert db.read(tag(db, "lum-1/label")).value == "new"


def test_a_server_clock_stepped_back_does_not_freeze_values():
    clock = SteppedClock(start=T0)
    d = TagDatabase(clock)
    d.add_device("a/b", LAMP)
    i = d.index("a/b/power_w")
    d.apply(Batch.of([i], [1.0], Q.Good, T0))
    d.clock = SteppedClock(start=T0 - 3600)  # NTP stepped the server clock back an hour
    d.apply(Batch.of([i], [2.0], Q.Good, T0 - 3600))
    assert d.read(i).value == 2.0


# ----------------------------------------------------------------------------- counters
def run_counter(db: TagDatabase, series: list[float], step: float = 60.0, path: str = "lum-1/energy_wh"):
    """Feed one counter reading per step; return what a historian would record (every change)."""
    i = tag(db, path)
    rec_t, rec_v, rec_q = [], [], []

    def rec(ch):
        m = ch.indices == i
        rec_t.extend(ch.source_ts[m].tolist())
        rec_v.extend(ch.values[m].tolist())
        rec_q.extend(ch.quality[m].tolist())

    h = db.subscribe(rec)
    counts: dict[str, float] = {}
    clock: SteppedClock = db.clock  # type: ignore[assignment]
    for k, v in enumerate(series):
        clock._now = T0 + step * (k + 1)
        put(db, {path: v}, counts=counts)
    db.unsubscribe(h)
    return Raw(np.asarray(rec_t), np.asarray(rec_v), np.asarray(rec_q, dtype=np.uint32)), counts


def test_counter_glitch_is_held_bad_and_the_next_reading_classifies_it(db):
    raw, counts = run_counter(db, [1000, 1010, 400, 1020, 1030])
    assert raw.q.tolist() == [Q.Good, Q.Good, Q.BadOutOfRange, Q.Good, Q.Good]
    assert counts == {"counter_glitches": 1}
    d = counter_deltas(raw, np.array([T0, T0 + 1e6]))
    assert d.delta.tolist() == [30.0] and d.resets.tolist() == [0]  # 1000 -> 1030, nothing else


def test_counter_restart_is_confirmed_by_the_next_reading(db):
    raw, counts = run_counter(db, [5000, 5010, 3, 9, 15])
    assert raw.q.tolist() == [Q.Good, Q.Good, Q.BadOutOfRange, Q.Good, Q.Good]
    assert counts == {"counter_resets": 1}
    d = counter_deltas(raw, np.array([T0, T0 + 1e6]))
    # 5000 -> 5010 (+10), restart: 9 counted from 0 (+9), 9 -> 15 (+6)
    assert d.delta.tolist() == [25.0] and d.resets.tolist() == [1]


def test_counter_jump_faster_than_max_rate_is_suspect(db):
    raw, counts = run_counter(db, [100, 110, 1e9, 120])  # max_rate 1 Wh/s, 60 s apart
    assert raw.q.tolist() == [Q.Good, Q.Good, Q.BadOutOfRange, Q.Good]
    assert counts == {"counter_glitches": 1}


def test_out_of_order_counter_reading_is_late_not_a_reset(db):
    i = tag(db, "lum-1/energy_wh")
    counts: dict[str, float] = {}
    db.apply(Batch.of([i], [200.0], Q.Good, T0 - 10), counts)
    db.apply(Batch.of([i], [150.0], Q.Good, T0 - 70), counts)  # an older reading, replayed
    db.apply(Batch.of([i], [205.0], Q.Good, T0), counts)
    assert counts == {"late_samples": 1}
    assert db.read(i).value == 205.0 and db.read(i).quality == Q.Good


def test_malformed_burst_of_counters_gives_the_true_consumption(db):
    """The integrators' burst: counters stepping backwards again and again (their counter-delta
    function then gave 2,645,226 Wh for a luminaire that used 111 Wh). Here 64 counters with
    random glitches, a restart and an out-of-order repeat: the historian's deltas over what the
    tag database recorded equal the true consumption, never negative."""
    clock = SteppedClock(start=T0)
    d = TagDatabase(clock)
    schema = PointSchema("m", (PointDef("energy_wh", "float", "Wh", counter=True, max_rate=0.5),))
    tags = np.asarray([d.add_device(f"a/lum-{k}", schema) for k in range(64)], dtype=np.int64)
    rng = np.random.default_rng(16)
    true = rng.uniform(1e5, 1e6, 64)
    true_used = np.zeros(64)
    rec: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    d.subscribe(lambda ch: rec.append((ch.indices.copy(), ch.source_ts.copy(), ch.values.copy(),
                                       ch.quality.copy())))
    glitches = 0
    for step in range(200):
        clock._now = T0 + 60.0 * (step + 1)
        inc = rng.uniform(0, 3.0, 64)  # up to 180 W
        true += inc
        true_used += inc
        sent = true.copy()
        bad = (rng.random(64) < 0.1) & (step > 0)  # a first reading cannot be judged: see _counters
        glitches += int(bad.sum())
        sent[bad] = rng.uniform(0, true[bad])  # backwards, anywhere below
        if step == 100:
            true[5] = 0.0  # luminaire 5's driver replaced: its counter restarts from 0
            sent[5] = 0.0
        d.apply(Batch(tags, sent, Q.Good, clock.time()))
    idx = np.concatenate([r[0] for r in rec])
    t = np.concatenate([r[1] for r in rec])
    v = np.concatenate([r[2] for r in rec])
    q = np.concatenate([r[3] for r in rec])
    total = 0.0
    for k, i in enumerate(tags.tolist()):
        m = idx == i
        cd = counter_deltas(Raw(t[m], v[m], q[m]), np.array([T0, T0 + 1e6]))
        assert cd.delta[0] >= 0
        lost = 1 if k == 5 else 0  # the restart is confirmed one reading late: that step is lost
        assert cd.delta[0] <= true_used[k] + 1e-6
        assert cd.delta[0] >= true_used[k] - 3.0 * (2 + lost) - 1e-6, k  # a glitch at the end
        total += cd.delta[0]
    assert abs(total - true_used.sum()) < 0.01 * true_used.sum()
    assert d.stats["counter_glitches"] > 0.9 * glitches - 64 and d.stats["counter_resets"] == 1


# ----------------------------------------------------------------------------- out of service
def test_out_of_service_holds_whatever_the_driver_publishes_until_back_in_service(db):
    seen: list[tuple[str, bool, str | None, str]] = []
    db.on_out_of_service(lambda *a: seen.append(a))
    put(db, {"lum-1/power_w": 10.0, "lum-2/power_w": 10.0})
    assert db.set_out_of_service("centre/gw/lum-1", True, user="eve", comment="works")
    assert not db.set_out_of_service("centre/gw/lum-1", True)  # already: no change, no event
    assert seen == [("centre/gw/lum-1", True, "eve", "works")]
    for k in range(5):  # several polls: the driver keeps publishing Good values
        put(db, {"lum-1/power_w": 11.0 + k, "lum-2/power_w": 11.0 + k})
        db.mark([tag(db, "lum-1/arc")], Q.BadCommunicationError)
        s = db.read(tag(db, "lum-1/power_w"))
        assert (s.value, s.quality) == (11.0 + k, Q.BadOutOfService)
        assert db.read(tag(db, "lum-1/arc")).quality == Q.BadOutOfService
        assert db.read(tag(db, "lum-2/power_w")).quality == Q.Good
    assert db.out_of_service_devices() == ["centre/gw/lum-1"]
    db.set_out_of_service("centre/gw/lum-1", False)
    assert db.read(tag(db, "lum-1/power_w")).quality == Q.UncertainLastUsableValue
    assert db.read(tag(db, "lum-1/arc")).quality == Q.BadWaitingForInitialData  # never read
    put(db, {"lum-1/power_w": 20.0})
    assert db.read(tag(db, "lum-1/power_w")).quality == Q.Good
    assert db.out_of_service_devices() == []


def test_screen_counts_are_the_standard_health_points():
    from scada.driver import STANDARD_HEALTH

    names = {p.name for p in STANDARD_HEALTH}
    assert set(SCREEN_COUNTS) <= names
