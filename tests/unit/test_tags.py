"""Tag database: registration, lookup, vectorised change detection, quality, fan-out."""

from __future__ import annotations

import numpy as np
import pytest

from scada import quality as Q
from scada.clock import SteppedClock
from scada.errors import UnknownTagError
from scada.tags import Batch, PointDef, PointSchema, TagDatabase

LUM = PointSchema("lum", (
    PointDef("level", "float", "%", access="rw", eu_low=0, eu_high=100),
    PointDef("power_w", "float", "W", deadband=0.5),
    PointDef("lamp_failure", "bool"),
    PointDef("starts", "int"),
    PointDef("label", "string"),
))


@pytest.fixture
def db():
    d = TagDatabase(SteppedClock(start=1000.0))
    d.add_device("centre/cab-1/lum-01", LUM)
    d.add_device("centre/cab-1/lum-02", LUM)
    return d


def test_paths_and_indices(db):
    assert len(db) == 10
    assert db.index("centre/cab-1/lum-02/power_w") == 6
    assert db.path(6) == "centre/cab-1/lum-02/power_w"
    info = db.info("centre/cab-1/lum-01/level")
    assert (info.device, info.point.unit, info.writable) == ("centre/cab-1/lum-01", "%", True)
    assert list(db.paths())[:2] == ["centre/cab-1/lum-01/level", "centre/cab-1/lum-01/power_w"]
    assert list(db.indices_of_point("power_w")) == [1, 6]
    with pytest.raises(UnknownTagError, match="unknown tag 'centre/cab-1/lum-03/level'"):
        db.index("centre/cab-1/lum-03/level")
    with pytest.raises(KeyError):  # UnknownTagError is a KeyError too
        db.index("nope")


def test_initial_quality_is_waiting_for_initial_data(db):
    s = db.read("centre/cab-1/lum-01/power_w")
    assert s.quality == Q.BadWaitingForInitialData and s.value is None and not s.good


def test_first_read_is_a_change_then_deadband_filters(db):
    got = []
    db.subscribe(got.append)
    ch = db.apply(Batch.of([0, 1], [50.0, 30.0], Q.Good, 1000.0))
    assert list(ch.indices) == [0, 1] and list(ch.old_quality) == [Q.BadWaitingForInitialData] * 2
    # power moves by 0.4 W (< deadband 0.5): no change; level by 0.1 (deadband 0): change
    ch = db.apply(Batch.of([0, 1], [50.1, 30.4], Q.Good, 1001.0))
    assert list(ch.indices) == [0]
    # now 0.6 W from the last *published* value 30.0: change
    ch = db.apply(Batch.of([1], [30.6], Q.Good, 1002.0))
    assert list(ch.indices) == [1] and ch.old_values[0] == 30.0
    assert len(got) == 3
    assert db.read(1).value == pytest.approx(30.6) and db.read(1).source_ts == 1002.0


def test_same_value_different_quality_is_a_change(db):
    db.apply(Batch.of([1], [30.0], Q.Good))
    ch = db.apply(Batch.of([1], [30.0], Q.UncertainLastUsableValue))
    assert ch is not None and ch.quality[0] == Q.UncertainLastUsableValue


def test_nothing_changed_returns_none_and_updates_last_seen(db, stepped_clock):
    db.apply(Batch.of([0], [1.0]))
    db.clock._now = 2000.0
    assert db.apply(Batch.of([0], [1.0])) is None
    assert db.last_seen[0] == 2000.0


def test_mark_keeps_value_and_source_timestamp(db):
    db.apply(Batch.of([0, 1], [42.0, 7.0], Q.Good, 1000.0))
    db.clock._now = 1500.0
    ch = db.mark([0, 1], Q.BadCommunicationError)
    assert len(ch) == 2
    s = db.read(0)
    assert (s.value, s.quality, s.source_ts, s.server_ts) == (42.0, Q.BadCommunicationError, 1000.0, 1500.0)
    assert db.mark([0, 1], Q.BadCommunicationError) is None  # no change, nothing published


def test_typed_reads(db):
    db.apply(Batch.of([2, 3], [1.0, 17.0]))
    assert db.read(2).value is True
    assert db.read(3).value == 17 and isinstance(db.read(3).value, int)


def test_string_tags(db):
    got = []
    db.subscribe(got.append)
    ch = db.apply(Batch.of([4, 0], ["Rue de la Liberté", 80.0]))
    assert len(ch) == 2 and ch.strings == {4: "Rue de la Liberté"}
    assert db.read(4).value == "Rue de la Liberté"
    assert db.read(0).value == 80.0
    assert db.apply(Batch.of([4], ["Rue de la Liberté"])) is None


def test_filtered_subscriber_sees_only_its_tags(db):
    mine, all_ = [], []
    db.subscribe(mine.append, only=[5, 6])
    db.subscribe(all_.append)
    db.apply(Batch.of([0, 1, 6], [1.0, 2.0, 3.0]))
    db.apply(Batch.of([0], [9.0]))
    assert [list(c.indices) for c in mine] == [[6]]
    assert len(all_) == 2


def test_filtered_subscriber_after_growth(db):
    mine = []
    db.subscribe(mine.append, only=[1])
    first = db.add_device("north/cab-9", PointSchema("one", (PointDef("x"),)))
    db.apply(Batch.of([first, 1], [1.0, 2.0]))
    assert [list(c.indices) for c in mine] == [[1]]


def test_failing_subscriber_does_not_starve_others(db, caplog):
    got = []

    def boom(ch):
        raise RuntimeError("subscriber bug")

    db.subscribe(boom, name="boom")
    db.subscribe(got.append)
    db.apply(Batch.of([0], [1.0]))
    assert len(got) == 1 and db.stats["subscriber_errors"] == 1
    assert "subscriber boom failed" in caplog.text


def test_nan_handling(db):
    db.apply(Batch.of([0], [float("nan")]))  # bad read delivered as NaN with Good quality
    assert db.apply(Batch.of([0], [float("nan")])) is None  # NaN == NaN for change detection
    ch = db.apply(Batch.of([0], [5.0]))
    assert ch is not None


def test_growth_keeps_state():
    db = TagDatabase(SteppedClock(), capacity=16)
    schema = PointSchema("s", (PointDef("a"), PointDef("b")))
    for i in range(100):
        db.add_device(f"a/d{i}", schema)
    db.apply(Batch.of(np.arange(200), np.arange(200, dtype=float)))
    for i in range(100, 300):
        db.add_device(f"a/d{i}", schema)
    assert db.read("a/d99/b").value == 199.0
    assert db.read("a/d299/b").quality == Q.BadWaitingForInitialData


def test_duplicate_device_and_bad_schema():
    db = TagDatabase(SteppedClock())
    s = PointSchema("s", (PointDef("a"),))
    db.add_device("a/x", s)
    with pytest.raises(ValueError, match="duplicate device path 'a/x'"):
        db.add_device("a/x", s)
    with pytest.raises(ValueError, match="duplicate point name"):
        PointSchema("bad", (PointDef("a"), PointDef("a")))


def test_snapshot(db):
    db.apply(Batch.of([0, 4], [3.0, "x"]))
    snap = db.snapshot([0, 4])
    assert list(snap.quality) == [Q.Good, Q.Good] and snap.strings == {4: "x"}


def test_batch_of_scalars_broadcast(db):
    b = Batch.of([0, 1, 5], [1, 2, 3], Q.UncertainLastUsableValue, 934.0)
    ch = db.apply(b)
    assert list(ch.quality) == [Q.UncertainLastUsableValue] * 3
    assert list(ch.source_ts) == [934.0] * 3
