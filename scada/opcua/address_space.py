"""The site's address space, built lazily from the tag database (OPC UA Part 3 §5, Part 8 §5).

Why lazy: a bare asyncua server costs ~7.6 KB and ~0.2 ms per variable created through its
AddNodes path (and is quadratic in children per parent), so mirroring a 200,000-tag city up
front costs minutes and over a gigabyte. Here nothing per tag exists until a client touches
it:

* :class:`LazyNodes` replaces ``AddressSpace._nodes`` (the same hook asyncua's own shelf
  loader uses). Standard nodes and the few real ones we create (area folders, the ``Scada``
  object and its methods) live in a plain dict; a NodeId of our namespace that is not there
  is *materialised* from the tag database on first access (browse, read, translate, monitor)
  and kept in a bounded LRU cache. Device objects handed to other services
  (:meth:`LazyNodes.pin`, used by the alarm engine for its conditions) are never evicted.
* A variable's Value attribute has a value callback that reads the tag database's columns at
  the time of the read: no copy of 200,000 values is kept in the OPC UA layer.
* Monitored items: asyncua registers a data-change callback in the Value attribute's
  ``datachange_callbacks`` mapping. For our variables that mapping is a
  :class:`_TagCallbacks` view onto :class:`MonitorRegistry`, which keeps a boolean mask of
  monitored tags; the server's tag-database subscriber looks only at changed rows under that
  mask (one numpy gather per batch), so unmonitored updates cost the OPC UA layer nothing
  more than that gather.

NodeIds (namespace URI from ``opcua.namespace_uri``, default ``urn:scada:streetlight:tags``):

* area folder ``ns=N;s=<area>``, device object ``ns=N;s=<device path>``, variable
  ``ns=N;s=<tag path>`` (the tag path itself, e.g. ``centre/cab-01/lum-03/level``);
* properties ``ns=N;s=<tag path>#EngineeringUnits`` and ``#EURange`` (Part 8 §5.3.2
  AnalogItemType). ``#`` cannot appear in a tag path, so these never collide.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from asyncua import ua
from asyncua.server.address_space import AttributeValue, NodeData

from .. import quality as Q
from ..tags import UA_TYPES

if TYPE_CHECKING:
    from ..tags import PointDef, TagDatabase

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Part 3 §8.57 AccessLevel bits.
READ, WRITE, HIST_READ = 0x01, 0x02, 0x04

VARIANT = {
    "float": ua.VariantType.Double,
    "int": ua.VariantType.Int64,
    "bool": ua.VariantType.Boolean,
    "string": ua.VariantType.String,
}
DATATYPE = {
    "float": ua.NodeId(ua.ObjectIds.Double),
    "int": ua.NodeId(ua.ObjectIds.Int64),
    "bool": ua.NodeId(ua.ObjectIds.Boolean),
    "string": ua.NodeId(ua.ObjectIds.String),
}
# a point's declared OPC UA data type (PointDef.data_type: Byte, UInt16, Float ... Part 6 §5.1.2)
VARIANT.update({name: getattr(ua.VariantType, name) for name in UA_TYPES})
DATATYPE.update({name: ua.NodeId(getattr(ua.ObjectIds, name)) for name in UA_TYPES})

#: UNECE Recommendation 20 common codes for the units our profiles use (Part 8 §5.6.3).
UNECE = {
    "%": "P1", "W": "WTT", "kW": "KWT", "Wh": "WHR", "kWh": "KWH", "V": "VLT", "A": "AMP",
    "°C": "CEL", "degC": "CEL", "C": "CEL", "h": "HUR", "s": "SEC", "ms": "C26", "Hz": "HTZ",
    "lx": "LUX", "min": "MIN", "d": "DAY", "var": "D44", "VA": "D46", "1/s": "S4",
}
UNECE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"

_R_ORGANIZES = ua.NodeId(ua.ObjectIds.Organizes)
_R_HAS_COMPONENT = ua.NodeId(ua.ObjectIds.HasComponent)
_R_HAS_PROPERTY = ua.NodeId(ua.ObjectIds.HasProperty)
_R_HAS_TYPEDEF = ua.NodeId(ua.ObjectIds.HasTypeDefinition)
_T_BASE_OBJECT = ua.NodeId(ua.ObjectIds.BaseObjectType)
_T_FOLDER = ua.NodeId(ua.ObjectIds.FolderType)
_T_BASE_VAR = ua.NodeId(ua.ObjectIds.BaseDataVariableType)
_T_ANALOG = ua.NodeId(ua.ObjectIds.AnalogItemType)
_T_PROPERTY = ua.NodeId(ua.ObjectIds.PropertyType)


def unit_info(unit: str) -> ua.EUInformation:
    code = UNECE.get(unit, "")
    uid = -1
    if code:
        uid = 0
        for ch in code:
            uid = (uid << 8) | ord(ch)
    return ua.EUInformation(NamespaceUri=UNECE_URI, UnitId=uid, DisplayName=ua.LocalizedText(unit),
                            Description=ua.LocalizedText(unit))


def ts(t: float) -> datetime | None:
    """POSIX seconds -> aware datetime (None for 'never')."""
    if not t:
        return None
    return datetime.fromtimestamp(t, UTC)


def make_datavalue(tagdb: TagDatabase, i: int, p: PointDef) -> ua.DataValue:
    """The DataValue of tag ``i`` from the database columns.

    Part 4 §7.7.1: when the status is Bad the value is to be ignored and the server returns
    null; Uncertain values keep their (last usable) value. Source timestamp is the device's,
    server timestamp the database's apply time.
    """
    q = int(tagdb.quality[i])
    vt = VARIANT[p.data_type]
    if q & 0x80000000:
        var = ua.Variant(None, ua.VariantType.Null)
    else:
        v = tagdb.value_of(i) if p.dtype == "string" else tagdb.value[i]
        var = _variant(p.dtype, v, vt)
    return ua.DataValue(var, ua.StatusCode(q), ts(float(tagdb.source_ts[i])), ts(float(tagdb.server_ts[i])))


def _variant(dtype: str, v: Any, vt: ua.VariantType) -> ua.Variant:
    if v is None:
        return ua.Variant(None, ua.VariantType.Null)
    if dtype == "string":
        return ua.Variant(str(v), vt)
    fv = float(v)
    if fv != fv:  # NaN: never read
        return ua.Variant(None, ua.VariantType.Null)
    if dtype == "float":
        return ua.Variant(fv, vt)
    if dtype == "bool":
        return ua.Variant(bool(fv), vt)
    return ua.Variant(round(fv), vt)  # integer points: already whole (the tag database rounds)


# ----------------------------------------------------------------------------- monitoring
class MonitorRegistry:
    """Which tags are monitored, by which asyncua monitored items (handle -> callback).

    ``mask[i]`` is True while at least one monitored item watches tag ``i``; the server's
    change subscriber gathers ``mask[changes.indices]`` and only handles those rows.
    """

    def __init__(self, n: int):
        self.mask = np.zeros(max(16, n), dtype=np.bool_)
        self.by_tag: dict[int, dict[int, Callable[..., Any]]] = {}
        self.tag_of: dict[int, int] = {}
        #: called with each handle removed (the server forgets its delivery route)
        self.on_remove: Callable[[int], Any] | None = None

    def add(self, i: int, handle: int, cb: Callable[..., Any]) -> None:
        if i >= len(self.mask):
            m = np.zeros(max(i + 1, 2 * len(self.mask)), dtype=np.bool_)
            m[: len(self.mask)] = self.mask
            self.mask = m
        self.by_tag.setdefault(i, {})[handle] = cb
        self.tag_of[handle] = i
        self.mask[i] = True

    def remove(self, handle: int) -> Callable[..., Any] | None:
        i = self.tag_of.pop(handle, None)
        if i is None:
            return None
        if self.on_remove is not None:
            self.on_remove(handle)
        cbs = self.by_tag.get(i, {})
        cb = cbs.pop(handle, None)
        if not cbs:
            self.by_tag.pop(i, None)
            self.mask[i] = False
        return cb

    def __len__(self) -> int:
        return len(self.tag_of)


class _TagCallbacks(MutableMapping):
    """``AttributeValue.datachange_callbacks`` of a tag's Value: a view onto the registry.

    Lives as long as the materialised node, but the registry outlives cache eviction, so a
    monitored item created on a node that is later evicted and re-materialised still gets
    its notifications and can still be deleted.
    """

    __slots__ = ("i", "reg")

    def __init__(self, reg: MonitorRegistry, i: int):
        self.reg = reg
        self.i = i

    def __getitem__(self, handle: int) -> Callable[..., Any]:
        return self.reg.by_tag.get(self.i, {})[handle]

    def __setitem__(self, handle: int, cb: Callable[..., Any]) -> None:
        self.reg.add(self.i, handle, cb)

    def __delitem__(self, handle: int) -> None:
        if self.reg.remove(handle) is None:
            raise KeyError(handle)

    def __iter__(self) -> Iterator[int]:
        return iter(dict(self.reg.by_tag.get(self.i, {})))

    def __len__(self) -> int:
        return len(self.reg.by_tag.get(self.i, {}))


# ----------------------------------------------------------------------------- tree
class SiteTree:
    """Parent/child structure of areas and devices, derived from the tag database paths.

    A device's parent is the nearest ancestor path that is itself a device (a luminaire's
    cabinet), else its area folder (the first path segment). Devices registered after the
    server started (computed tags of other services) are picked up by :meth:`update`.
    """

    def __init__(self, tagdb: TagDatabase):
        self.tagdb = tagdb
        self.index: dict[str, int] = {}
        self.areas: dict[str, list[int]] = {}
        self.children: dict[int, list[int]] = {}
        self.parent: dict[int, int] = {}
        self.names: list[str] = []
        self.update()

    def update(self) -> list[int]:
        """Take in devices added since the last call; return them."""
        new = []
        for d in range(len(self.names), self.tagdb.device_count):
            path = self.tagdb.device_path(d)
            self.index[path] = d
            parts = path.split("/")
            parent = -1
            name = "/".join(parts[1:]) or parts[0]
            for k in range(len(parts) - 1, 1, -1):
                p = self.index.get("/".join(parts[:k]))
                if p is not None:
                    parent = p
                    name = "/".join(parts[k:])
                    break
            self.names.append(name)
            if parent >= 0:
                self.parent[d] = parent
                self.children.setdefault(parent, []).append(d)
            else:
                self.areas.setdefault(parts[0], []).append(d)
            new.append(d)
        return new

    def area_of(self, d: int) -> str:
        return self.tagdb.device_path(d).split("/", 1)[0]


# ----------------------------------------------------------------------------- nodes
def _attr(value: Any, vt: ua.VariantType) -> AttributeValue:
    return AttributeValue(ua.DataValue(ua.Variant(value, vt)))


def _ref(reftype: ua.NodeId, target: ua.NodeId, forward: bool, browse: ua.QualifiedName,
         display: str, nodeclass: ua.NodeClass, typedef: ua.NodeId | None = None) -> ua.ReferenceDescription:
    r = ua.ReferenceDescription()
    r.ReferenceTypeId = reftype
    r.IsForward = forward
    r.NodeId = target
    r.BrowseName = browse
    r.DisplayName = ua.LocalizedText(display)
    r.NodeClass = nodeclass
    if typedef is not None:
        r.TypeDefinition = typedef
    return r


class LazyNodes(MutableMapping):
    """``AddressSpace._nodes`` that materialises our namespace's nodes on access."""

    def __init__(self, base: dict[ua.NodeId, NodeData], tagdb: TagDatabase, ns: int,
                 registry: MonitorRegistry, *, cache_size: int = 20_000,
                 historizing: Callable[[PointDef], bool] = lambda p: False,
                 area_nodes: dict[str, ua.NodeId] | None = None,
                 descriptions: dict[str, str] | None = None):
        self.base = base
        self.tagdb = tagdb
        self.ns = ns
        self.reg = registry
        self.cache: OrderedDict[ua.NodeId, NodeData] = OrderedDict()
        self.cache_size = cache_size
        self.pinned: dict[ua.NodeId, NodeData] = {}
        self.tree = SiteTree(tagdb)
        self.historizing = historizing
        self.area_nodes = area_nodes if area_nodes is not None else {}
        self.descriptions = descriptions or {}
        self.stats = {"materialised": 0, "evicted": 0}

    # --------------------------------------------------------------- mapping protocol
    def __getitem__(self, nodeid: ua.NodeId) -> NodeData:
        if self.tagdb.device_count != len(self.tree.names):
            self._grow()
        nd = self.base.get(nodeid)
        if nd is not None:
            return nd
        nd = self.pinned.get(nodeid)
        if nd is not None:
            return nd
        nd = self.cache.get(nodeid)
        if nd is not None:
            self.cache.move_to_end(nodeid)
            return nd
        nd = self._materialise(nodeid)
        if nd is None:
            raise KeyError(nodeid)
        self.cache[nodeid] = nd
        self.stats["materialised"] += 1
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
            self.stats["evicted"] += 1
        return nd

    def get(self, nodeid: ua.NodeId, default: Any = None) -> Any:
        try:
            return self[nodeid]
        except KeyError:
            return default

    def __contains__(self, nodeid: object) -> bool:
        if nodeid in self.base or nodeid in self.pinned or nodeid in self.cache:
            return True
        return isinstance(nodeid, ua.NodeId) and self._resolve(nodeid) is not None

    def __setitem__(self, nodeid: ua.NodeId, nd: NodeData) -> None:
        self.base[nodeid] = nd

    def __delitem__(self, nodeid: ua.NodeId) -> None:
        for d in (self.base, self.pinned, self.cache):
            if nodeid in d:
                del d[nodeid]
                return
        raise KeyError(nodeid)

    def __iter__(self) -> Iterator[ua.NodeId]:
        yield from list(self.base)
        yield from list(self.pinned)
        yield from list(self.cache)

    def __len__(self) -> int:
        return len(self.base) + len(self.pinned) + len(self.cache)

    def pin(self, nodeid: ua.NodeId) -> NodeData:
        """Materialise ``nodeid`` and keep it for good (other services add nodes under it)."""
        nd = self[nodeid]
        self.cache.pop(nodeid, None)
        if nodeid not in self.base:
            self.pinned[nodeid] = nd
        return nd

    # --------------------------------------------------------------- resolution
    def _resolve(self, nodeid: ua.NodeId) -> tuple[str, Any] | None:
        """('tag', i) | ('device', d) | ('prop', (i, name)) | None for our string NodeIds."""
        if nodeid.NamespaceIndex != self.ns or nodeid.NodeIdType != ua.NodeIdType.String:
            return None
        s = nodeid.Identifier
        if not isinstance(s, str):
            return None
        if "#" in s:
            path, _, prop = s.partition("#")
            i = self.tagdb.find(path)
            if i is None:
                return None
            p = self.tagdb.point(i)
            if (prop == "EngineeringUnits" and p.unit) or (
                prop == "EURange" and p.eu_low is not None and p.eu_high is not None
            ):
                return ("prop", (i, prop))
            return None
        if self.tagdb.device_count != len(self.tree.names):
            self._grow()
        i = self.tagdb.find(s)
        if i is not None:
            return ("tag", i)
        d = self.tree.index.get(s)
        if d is not None:
            return ("device", d)
        return None

    def _grow(self) -> None:
        """Devices were added to the tag database after start: link them into the tree."""
        for d in self.tree.update():
            p = self.tree.parent.get(d)
            if p is not None:
                pid = ua.NodeId(self.tagdb.device_path(p), self.ns)
                self.cache.pop(pid, None)  # re-materialised with the new child
                pinned = self.pinned.get(pid)
                if pinned is not None:
                    pinned.references.extend(r for r in self.device_refs(p) if r.NodeId not in
                                             {x.NodeId for x in pinned.references})
                continue
            area = self.tree.area_of(d)
            anode = self.base.get(self.area_nodes.get(area, ua.NodeId(area, self.ns)))
            if anode is not None:
                name = self.tree.names[d]
                anode.references.append(_ref(_R_ORGANIZES, ua.NodeId(self.tagdb.device_path(d), self.ns), True,
                                             self._qn(name), name, ua.NodeClass.Object, _T_BASE_OBJECT))

    def tag_index(self, nodeid: ua.NodeId) -> int | None:
        """Tag index of one of our variable NodeIds (None for anything else)."""
        if nodeid.NamespaceIndex != self.ns or not isinstance(nodeid.Identifier, str):
            return None
        return self.tagdb.find(nodeid.Identifier)

    def _materialise(self, nodeid: ua.NodeId) -> NodeData | None:
        r = self._resolve(nodeid)
        if r is None:
            return None
        kind, arg = r
        if kind == "tag":
            return self._variable(nodeid, arg)
        if kind == "device":
            return self._device(nodeid, arg)
        return self._property(nodeid, *arg)

    def _qn(self, name: str) -> ua.QualifiedName:
        return ua.QualifiedName(name, self.ns)

    def _common(self, nd: NodeData, nodeclass: ua.NodeClass, name: str, description: str) -> None:
        a = nd.attributes
        a[ua.AttributeIds.NodeId] = _attr(nd.nodeid, ua.VariantType.NodeId)
        a[ua.AttributeIds.NodeClass] = _attr(nodeclass, ua.VariantType.Int32)
        a[ua.AttributeIds.BrowseName] = _attr(self._qn(name), ua.VariantType.QualifiedName)
        a[ua.AttributeIds.DisplayName] = _attr(ua.LocalizedText(name), ua.VariantType.LocalizedText)
        a[ua.AttributeIds.Description] = _attr(ua.LocalizedText(description), ua.VariantType.LocalizedText)
        a[ua.AttributeIds.WriteMask] = _attr(0, ua.VariantType.UInt32)
        a[ua.AttributeIds.UserWriteMask] = _attr(0, ua.VariantType.UInt32)

    def _parent_ref(self, d: int) -> ua.ReferenceDescription:
        p = self.tree.parent.get(d)
        if p is not None:
            path = self.tagdb.device_path(p)
            return _ref(_R_ORGANIZES, ua.NodeId(path, self.ns), False, self._qn(self.tree.names[p]),
                        self.tree.names[p], ua.NodeClass.Object, _T_BASE_OBJECT)
        area = self.tree.area_of(d)
        target = self.area_nodes.get(area, ua.NodeId(area, self.ns))
        return _ref(_R_ORGANIZES, target, False, self._qn(area), area, ua.NodeClass.Object, _T_FOLDER)

    def device_refs(self, d: int) -> list[ua.ReferenceDescription]:
        """Forward references of device ``d``: its points (HasComponent) and child devices."""
        db = self.tagdb
        path = db.device_path(d)
        refs = []
        for p in db.device_schema(d).points:
            refs.append(_ref(_R_HAS_COMPONENT, ua.NodeId(f"{path}/{p.name}", self.ns), True,
                             self._qn(p.name), p.name, ua.NodeClass.Variable, self._var_type(p)))
        for c in self.tree.children.get(d, ()):
            name = self.tree.names[c]
            refs.append(_ref(_R_ORGANIZES, ua.NodeId(db.device_path(c), self.ns), True, self._qn(name),
                             name, ua.NodeClass.Object, _T_BASE_OBJECT))
        return refs

    def area_refs(self, area: str) -> list[ua.ReferenceDescription]:
        db = self.tagdb
        return [
            _ref(_R_ORGANIZES, ua.NodeId(db.device_path(d), self.ns), True, self._qn(self.tree.names[d]),
                 self.tree.names[d], ua.NodeClass.Object, _T_BASE_OBJECT)
            for d in self.tree.areas.get(area, ())
        ]

    def _device(self, nodeid: ua.NodeId, d: int) -> NodeData:
        nd = NodeData(nodeid)
        db = self.tagdb
        path = db.device_path(d)
        desc = self.descriptions.get(path) or f"{db.device_schema(d).name} {path}"
        self._common(nd, ua.NodeClass.Object, self.tree.names[d], desc)
        # Part 3 §5.4: EventNotifier bit 0 SubscribeToEvents (alarms of the device)
        nd.attributes[ua.AttributeIds.EventNotifier] = _attr(1, ua.VariantType.Byte)
        nd.references.append(_ref(_R_HAS_TYPEDEF, _T_BASE_OBJECT, True, ua.QualifiedName("BaseObjectType", 0),
                                  "BaseObjectType", ua.NodeClass.ObjectType))
        nd.references.append(self._parent_ref(d))
        nd.references.extend(self.device_refs(d))
        return nd

    def _var_type(self, p: PointDef) -> ua.NodeId:
        return _T_ANALOG if p.dtype in ("float", "int") and (p.unit or p.eu_low is not None) else _T_BASE_VAR

    def _variable(self, nodeid: ua.NodeId, i: int) -> NodeData:
        db = self.tagdb
        d, p = int(db.device_of[i]), db.point(i)
        nd = NodeData(nodeid)
        self._common(nd, ua.NodeClass.Variable, p.name, p.description)
        a = nd.attributes
        access = READ | (WRITE if p.writable else 0)
        hist = self.historizing(p)
        if hist:
            access |= HIST_READ
        val = AttributeValue(None)
        val.value_callback = lambda _nid, _attr, i=i, p=p: make_datavalue(db, i, p)
        val.datachange_callbacks = _TagCallbacks(self.reg, i)  # type: ignore[assignment]
        a[ua.AttributeIds.Value] = val
        a[ua.AttributeIds.DataType] = _attr(DATATYPE[p.data_type], ua.VariantType.NodeId)
        a[ua.AttributeIds.ValueRank] = _attr(-1, ua.VariantType.Int32)
        a[ua.AttributeIds.ArrayDimensions] = _attr([], ua.VariantType.UInt32)
        a[ua.AttributeIds.AccessLevel] = _attr(access, ua.VariantType.Byte)
        a[ua.AttributeIds.UserAccessLevel] = _attr(access, ua.VariantType.Byte)
        a[ua.AttributeIds.MinimumSamplingInterval] = _attr(0.0, ua.VariantType.Double)
        a[ua.AttributeIds.Historizing] = _attr(hist, ua.VariantType.Boolean)
        tdef = self._var_type(p)
        nd.references.append(_ref(_R_HAS_TYPEDEF, tdef, True, ua.QualifiedName("", 0), "", ua.NodeClass.VariableType))
        dev_path = db.device_path(d)
        nd.references.append(_ref(_R_HAS_COMPONENT, ua.NodeId(dev_path, self.ns), False,
                                  self._qn(self.tree.names[d]), self.tree.names[d], ua.NodeClass.Object,
                                  _T_BASE_OBJECT))
        path = f"{dev_path}/{p.name}"
        if p.unit:
            nd.references.append(_ref(_R_HAS_PROPERTY, ua.NodeId(f"{path}#EngineeringUnits", self.ns), True,
                                      ua.QualifiedName("EngineeringUnits", 0), "EngineeringUnits",
                                      ua.NodeClass.Variable, _T_PROPERTY))
        if p.eu_low is not None and p.eu_high is not None:
            nd.references.append(_ref(_R_HAS_PROPERTY, ua.NodeId(f"{path}#EURange", self.ns), True,
                                      ua.QualifiedName("EURange", 0), "EURange", ua.NodeClass.Variable,
                                      _T_PROPERTY))
        return nd

    def _property(self, nodeid: ua.NodeId, i: int, prop: str) -> NodeData:
        p = self.tagdb.point(i)
        nd = NodeData(nodeid)
        self._common(nd, ua.NodeClass.Variable, prop, "")
        nd.attributes[ua.AttributeIds.BrowseName] = _attr(ua.QualifiedName(prop, 0), ua.VariantType.QualifiedName)
        if prop == "EngineeringUnits":
            value, dtype = unit_info(p.unit), ua.NodeId(ua.ObjectIds.EUInformation)
        else:
            value, dtype = ua.Range(float(p.eu_low), float(p.eu_high)), ua.NodeId(ua.ObjectIds.Range)
        a = nd.attributes
        a[ua.AttributeIds.Value] = AttributeValue(ua.DataValue(ua.Variant(value, ua.VariantType.ExtensionObject)))
        a[ua.AttributeIds.DataType] = _attr(dtype, ua.VariantType.NodeId)
        a[ua.AttributeIds.ValueRank] = _attr(-1, ua.VariantType.Int32)
        a[ua.AttributeIds.ArrayDimensions] = _attr([], ua.VariantType.UInt32)
        a[ua.AttributeIds.AccessLevel] = _attr(READ, ua.VariantType.Byte)
        a[ua.AttributeIds.UserAccessLevel] = _attr(READ, ua.VariantType.Byte)
        a[ua.AttributeIds.MinimumSamplingInterval] = _attr(0.0, ua.VariantType.Double)
        a[ua.AttributeIds.Historizing] = _attr(False, ua.VariantType.Boolean)
        nd.references.append(_ref(_R_HAS_TYPEDEF, _T_PROPERTY, True, ua.QualifiedName("PropertyType", 0),
                                  "PropertyType", ua.NodeClass.VariableType))
        owner = self.tagdb.path(i)
        nd.references.append(_ref(_R_HAS_PROPERTY, ua.NodeId(owner, self.ns), False, self._qn(p.name), p.name,
                                  ua.NodeClass.Variable))
        return nd


def status_of(q: int) -> ua.StatusCode:
    return ua.StatusCode(int(q))


__all__ = ["LazyNodes", "MonitorRegistry", "Q", "SiteTree", "make_datavalue", "unit_info"]
