"""Lazy address space over the tag database (scada.opcua.address_space): pure, no sockets."""

from __future__ import annotations

import numpy as np
from asyncua import ua
from asyncua.server.address_space import NodeData

from scada import quality as Q
from scada.clock import SteppedClock
from scada.opcua.address_space import LazyNodes, MonitorRegistry, make_datavalue, unit_info
from scada.tags import Batch, PointDef, PointSchema, TagDatabase

NS = 2
CAB = PointSchema("cab", (PointDef("power_w", unit="W"), PointDef("group_level", unit="%", access="rw",
                                                                  eu_low=0, eu_high=100),
                          PointDef("label", "string", access="rw")))
LUM = PointSchema("lum", (PointDef("level", unit="%"), PointDef("lamp_failure", "bool"), PointDef("starts", "int")))


def _db(ncab=2, nlum=3):
    db = TagDatabase(SteppedClock(1_700_000_000.0))
    for c in range(ncab):
        db.add_device(f"centre/cab-{c}", CAB)
        for n in range(nlum):
            db.add_device(f"centre/cab-{c}/lum-{n}", LUM)
    db.add_tags("_system/server", (PointDef("tags", "int"),))
    return db


def _lazy(db, cache=100):
    return LazyNodes({}, db, NS, MonitorRegistry(len(db)), cache_size=cache)


def _names(nd: NodeData, forward=True):
    return {r.BrowseName.Name for r in nd.references if r.IsForward == forward
            and r.ReferenceTypeId != ua.NodeId(ua.ObjectIds.HasTypeDefinition)}


def test_tree_and_device_references():
    lazy = _lazy(_db())
    assert sorted(lazy.tree.areas) == ["_system", "centre"]
    cab = lazy[ua.NodeId("centre/cab-1", NS)]
    assert _names(cab) == {"power_w", "group_level", "label", "lum-0", "lum-1", "lum-2"}
    assert [r.BrowseName.Name for r in cab.references if not r.IsForward] == ["centre"]
    lum = lazy[ua.NodeId("centre/cab-1/lum-2", NS)]
    assert _names(lum, forward=False) == {"cab-1"}
    assert lum.attributes[ua.AttributeIds.EventNotifier].value.Value.Value == 1
    assert [r.BrowseName.Name for r in lazy.area_refs("_system")] == ["server"]


def test_variable_metadata_and_properties():
    lazy = _lazy(_db())
    v = lazy[ua.NodeId("centre/cab-0/group_level", NS)]
    a = v.attributes
    assert a[ua.AttributeIds.AccessLevel].value.Value.Value == 0x03
    assert a[ua.AttributeIds.DataType].value.Value.Value == ua.NodeId(ua.ObjectIds.Double)
    assert {r.BrowseName.Name for r in v.references if r.ReferenceTypeId == ua.NodeId(ua.ObjectIds.HasProperty)} \
        == {"EngineeringUnits", "EURange"}
    rng = lazy[ua.NodeId("centre/cab-0/group_level#EURange", NS)]
    assert rng.attributes[ua.AttributeIds.Value].value.Value.Value == ua.Range(0.0, 100.0)
    eu = lazy[ua.NodeId("centre/cab-0/power_w#EngineeringUnits", NS)].attributes[ua.AttributeIds.Value]
    assert eu.value.Value.Value.UnitId == unit_info("W").UnitId == (ord("W") << 16 | ord("T") << 8 | ord("T"))
    assert ua.NodeId("centre/cab-0/power_w#EURange", NS) not in lazy  # no range declared
    ro = lazy[ua.NodeId("centre/cab-0/power_w", NS)]
    assert ro.attributes[ua.AttributeIds.AccessLevel].value.Value.Value == 0x01
    assert lazy[ua.NodeId("centre/cab-0/label", NS)].attributes[ua.AttributeIds.DataType].value.Value.Value \
        == ua.NodeId(ua.ObjectIds.String)


def test_unknown_nodes_are_absent():
    lazy = _lazy(_db())
    for nid in (ua.NodeId("centre/cab-9", NS), ua.NodeId("centre/cab-0/nope", NS), ua.NodeId("centre/cab-0", 3),
                ua.NodeId(12345, NS), ua.NodeId("x#y", NS)):
        assert nid not in lazy
        assert lazy.get(nid) is None


def test_value_callback_reads_the_database_live():
    db = _db()
    lazy = _lazy(db)
    nid = ua.NodeId("centre/cab-0/lum-1/level", NS)
    cb = lazy[nid].attributes[ua.AttributeIds.Value].value_callback
    dv = cb(nid, ua.AttributeIds.Value)
    assert dv.StatusCode.value == Q.BadWaitingForInitialData and dv.Value.Value is None
    i = db.index("centre/cab-0/lum-1/level")
    db.apply(Batch.of([i], [42.5], Q.Good, 1_699_999_990.0))
    dv = cb(nid, ua.AttributeIds.Value)
    assert dv.Value.Value == 42.5 and dv.StatusCode.is_good()
    assert dv.SourceTimestamp.timestamp() == 1_699_999_990.0 and dv.ServerTimestamp.timestamp() == 1_700_000_000.0
    db.mark([i], Q.UncertainLastUsableValue)
    assert cb(nid, ua.AttributeIds.Value).Value.Value == 42.5  # uncertain keeps the value
    db.mark([i], Q.BadCommunicationError)
    assert cb(nid, ua.AttributeIds.Value).Value.Value is None  # Part 4 §7.7.1: Bad -> null
    j = db.index("centre/cab-0/lum-1/lamp_failure")
    db.apply(Batch.of([j, j + 1], [1.0, 7.0]))
    assert make_datavalue(db, j, db.point(j)).Value == ua.Variant(True, ua.VariantType.Boolean)
    assert make_datavalue(db, j + 1, db.point(j + 1)).Value == ua.Variant(7, ua.VariantType.Int64)


def test_cache_bounded_pins_kept_and_monitoring_survives_eviction():
    db = _db(ncab=3, nlum=10)
    lazy = _lazy(db, cache=5)
    nid = ua.NodeId("centre/cab-0/lum-0/level", NS)
    cbs = lazy[nid].attributes[ua.AttributeIds.Value].datachange_callbacks
    cbs[201] = "callback"
    assert lazy.reg.mask[db.index("centre/cab-0/lum-0/level")]
    lazy.pin(ua.NodeId("centre/cab-1", NS))
    for c in range(3):
        for n in range(10):
            lazy[ua.NodeId(f"centre/cab-{c}/lum-{n}/starts", NS)]
    assert len(lazy.cache) == 5 and lazy.stats["evicted"] > 0
    assert ua.NodeId("centre/cab-1", NS) in lazy.pinned
    # re-materialised node still sees the monitored item; asyncua deletes it through the node
    again = lazy[nid].attributes[ua.AttributeIds.Value].datachange_callbacks
    assert dict(again) == {201: "callback"}
    again.pop(201)
    assert not lazy.reg.mask.any() and len(lazy.reg) == 0


def test_base_nodes_win_and_setitem_goes_to_base():
    db = _db()
    base: dict = {}
    lazy = LazyNodes(base, db, NS, MonitorRegistry(len(db)))
    nd = NodeData(ua.NodeId("centre", NS))
    lazy[nd.nodeid] = nd
    assert base[nd.nodeid] is nd and lazy[nd.nodeid] is nd
    assert len(lazy) == 1
    lazy[ua.NodeId("centre/cab-0", NS)]
    assert len(lazy) == 2 and set(lazy) == {nd.nodeid, ua.NodeId("centre/cab-0", NS)}


def test_registry_mask_grows():
    reg = MonitorRegistry(4)
    reg.add(100, 1, "cb")
    assert reg.mask[100] and len(reg.mask) > 100
    assert reg.remove(1) == "cb" and reg.remove(1) is None
    assert not np.any(reg.mask)


def test_devices_added_after_start_are_linked():
    db = _db(ncab=1, nlum=1)
    base: dict = {}
    lazy = LazyNodes(base, db, NS, MonitorRegistry(len(db)))
    area = NodeData(ua.NodeId("centre", NS))
    base[area.nodeid] = area
    lazy.area_nodes = {"centre": area.nodeid}
    cab = lazy.pin(ua.NodeId("centre/cab-0", NS))
    db.add_device("centre/cab-0/lum-9", LUM)
    db.add_tags("centre/virtual", (PointDef("x"),))
    assert ua.NodeId("centre/cab-0/lum-9/level", NS) in lazy
    assert "lum-9" in _names(cab)
    assert [r.BrowseName.Name for r in area.references] == ["virtual"]
    v = lazy[ua.NodeId("centre/virtual/x", NS)]
    assert _names(v, forward=False) == {"virtual"}
