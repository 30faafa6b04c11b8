# One module (over ~600 lines): the columnar store, its batch apply and its subscriptions share private arrays on the hot path; a split would expose them.
"""The tag database: the hub every value passes through.

Design (issue 2, DESIGN.md "Scale by construction"):

* Tags are grouped by **device**. A device has a path (``centre/cab-012/lum-0345``) and a
  :class:`PointSchema` shared by every device of the same profile; the device's tags are the
  contiguous indices ``first .. first + len(schema) - 1``. A tag's path is
  ``device_path + "/" + point_name``. Metadata (unit, type, description, access, deadband,
  history) lives once per profile point, not once per tag, so a million tags cost a few tens of
  bytes each.
* Live state is columnar: ``value`` (float64), ``quality`` (uint32 OPC UA status code),
  ``source_ts`` and ``server_ts`` (float64 POSIX seconds), ``last_seen`` (time of the last
  sample, changed or not, for staleness), ``deadband`` (float64, absolute). String tags keep
  their text in a side dict; their ``value`` slot is NaN.
* Drivers deliver a :class:`Batch` per poll. :meth:`TagDatabase.apply` finds the changed
  samples in one vectorised pass (quality changed, or ``|new - old| > deadband``; with a
  deadband of 0 any change counts) and hands one :class:`Changes` to every subscriber. Nothing
  is ever called once per tag.
* Only the owning driver writes a tag's live value (or the server, for its computed tags).
  Commands go the other way through :class:`scada.runtime.Runtime.write`.
* Every sample is **screened** on the way in, vectorised over the batch (issue 16, "nothing
  implausible is Good"; :meth:`TagDatabase.apply`): integer points are rounded so every
  consumer sees the same value; a reading outside the point's plausible range keeps its value
  with ``BadOutOfRange`` (or ``UncertainEngineeringUnitsExceeded`` inside a wider
  ``valid_range``); a source time further in the future than ``future_tolerance`` is clamped to
  the server time with ``BadInvalidTimestamp``; a sample older than the tag's current source
  time never becomes the current value; a cumulative counter that goes backwards or jumps is
  held ``BadOutOfRange`` until the next reading classifies it (glitch or restart); and the tags
  of a device **out of service** read ``BadOutOfService`` whatever a driver publishes. The
  database is the one owner of the out-of-service state (:meth:`set_out_of_service`).

Subscribers are plain callables run synchronously inside ``apply``; they must be quick (copy
what they need, queue slow work). An exception in one subscriber is logged and counted, the
others still receive the batch.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from . import quality as Q
from .clock import Clock
from .errors import UnknownTagError

log = logging.getLogger(__name__)

DataType = Literal["float", "int", "bool", "string"]
Access = Literal["r", "rw"]

_NUMERIC = frozenset(("float", "int", "bool"))

#: OPC UA built-in data types a point may declare (Part 6 §5.1.2) and the tag type they hold.
UA_TYPES: dict[str, DataType] = {
    "Boolean": "bool", "SByte": "int", "Byte": "int", "Int16": "int", "UInt16": "int",
    "Int32": "int", "UInt32": "int", "Int64": "int", "UInt64": "int", "Float": "float",
    "Double": "float", "String": "string",
}
#: OPC UA data type of a point that declares none.
DEFAULT_UA_TYPE: dict[str, str] = {"float": "Double", "int": "Int64", "bool": "Boolean", "string": "String"}
#: Values each numeric OPC UA type can hold: a reading outside them cannot be shown as that type.
UA_TYPE_RANGE: dict[str, tuple[float, float]] = {
    "SByte": (-(2.0**7), 2.0**7 - 1), "Byte": (0.0, 2.0**8 - 1),
    "Int16": (-(2.0**15), 2.0**15 - 1), "UInt16": (0.0, 2.0**16 - 1),
    "Int32": (-(2.0**31), 2.0**31 - 1), "UInt32": (0.0, 2.0**32 - 1),
    "Int64": (-(2.0**63), 2.0**63), "UInt64": (0.0, 2.0**64),
    "Float": (-3.4028234663852886e38, 3.4028234663852886e38),
    "Double": (-1.7976931348623157e308, 1.7976931348623157e308),
}

#: Source times up to this many seconds ahead of the server's clock are accepted (the site's
#: ``site.future_tolerance_s`` overrides it): device clocks synchronised by NTP agree within
#: milliseconds; a gateway whose clock runs minutes ahead is misconfigured.
FUTURE_TOLERANCE = 10.0

# per-point screening flags (TagDatabase._p_flags)
_F_INT = 1  # integer point: values rounded
_F_COUNTER = 2  # cumulative counter: backwards steps classified
_F_WIDE = 4  # valid_range wider than the EU range: Uncertain between them
#: screening plans (the per-point gathers of a batch's index set) are kept for batches of at
#: most this many samples (a poll of one station, a gateway's message: the same index set every
#: time), in an LRU of _PLANS_KEPT entries (a few MB at most)
_PLAN_MAX = 128
_PLANS_KEPT = 4096

#: A counter level that differs from the last accepted reading is accepted once this many
#: consecutive readings agree with it (a replaced meter; a restart of a counter without
#: ``max_rate``).
REBASE_AFTER = 3
_COUNTER_STATE = ("_c_ref", "_c_ref_t", "_c_sus", "_c_sus_t", "_c_sus0", "_c_sus0_t", "_c_chain")

#: Counters of the screening, per driver (``_system/<protocol>/<name>`` health tags) and in
#: :attr:`TagDatabase.stats`.
SCREEN_COUNTS = ("implausible", "late_samples", "future_samples", "counter_glitches",
                 "counter_resets")


@dataclass(frozen=True, slots=True)
class PointDef:
    """Metadata of one point of a profile, shared by every device that uses the profile."""

    name: str
    dtype: DataType = "float"
    unit: str = ""
    description: str = ""
    access: Access = "r"
    deadband: float = 0.0
    history: bool = True
    eu_low: float | None = None
    eu_high: float | None = None
    #: OPC UA built-in data type of the node (Part 6 §5.1.2); None: by ``dtype``
    #: (:data:`DEFAULT_UA_TYPE`)
    ua_type: str | None = None
    #: plausible range (OPC UA Part 8 §5.6.2 InstrumentRange); None: the EU range
    valid_low: float | None = None
    valid_high: float | None = None
    #: cumulative counter (energy, operating hours, starts): never decreases except on a restart
    counter: bool = False
    #: counter: largest plausible increase per second (None: unbounded)
    max_rate: float | None = None

    @property
    def writable(self) -> bool:
        return self.access == "rw"

    @property
    def data_type(self) -> str:
        """The OPC UA data type the point is served as."""
        return self.ua_type or DEFAULT_UA_TYPE[self.dtype]

    def plausible(self) -> tuple[float, float, float, float]:
        """(low, high) outside which a reading is ``BadOutOfRange``, then (low, high) outside
        which it is ``UncertainEngineeringUnitsExceeded`` (equal to the first pair unless a wider
        ``valid_range`` is declared). Unbounded sides are the data type's limits, so infinities
        are never plausible."""
        tlo, thi = UA_TYPE_RANGE.get(self.data_type, UA_TYPE_RANGE["Double"])
        elo = tlo if self.eu_low is None else max(tlo, self.eu_low)
        ehi = thi if self.eu_high is None else min(thi, self.eu_high)
        vlo = elo if self.valid_low is None else max(tlo, self.valid_low)
        vhi = ehi if self.valid_high is None else min(thi, self.valid_high)
        if self.dtype in ("bool", "string"):
            return -np.inf, np.inf, -np.inf, np.inf
        return vlo, vhi, max(elo, vlo), min(ehi, vhi)


@dataclass(frozen=True, slots=True)
class PointSchema:
    """An ordered list of points; one instance per profile, shared by its devices."""

    name: str
    points: tuple[PointDef, ...]
    offsets: dict[str, int] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.offsets:
            self.offsets.update({p.name: i for i, p in enumerate(self.points)})
        if len(self.offsets) != len(self.points):
            seen: set[str] = set()
            dup = [p.name for p in self.points if p.name in seen or seen.add(p.name)]  # type: ignore[func-returns-value]
            raise ValueError(f"schema {self.name!r}: duplicate point name(s) {dup}")

    def __len__(self) -> int:
        return len(self.points)


@dataclass(slots=True)
class Batch:
    """Samples from one poll (or one message burst): parallel arrays, one row per sample.

    ``quality`` and ``source_ts`` may be scalars (one code/time for the whole batch).
    ``values`` is float64 for numeric tags; for string tags pass an object array and the
    database takes the slow path for those rows only.
    """

    indices: np.ndarray
    values: np.ndarray
    quality: np.ndarray | int = Q.Good
    source_ts: np.ndarray | float = 0.0

    @classmethod
    def of(
        cls,
        indices: Sequence[int] | np.ndarray,
        values: Sequence[Any] | np.ndarray,
        quality: Sequence[int] | np.ndarray | int = Q.Good,
        source_ts: Sequence[float] | np.ndarray | float = 0.0,
    ) -> Batch:
        idx = np.asarray(indices, dtype=np.int64)
        if isinstance(values, np.ndarray) and values.dtype != object:
            vals = values.astype(np.float64, copy=False)
        else:
            seq = list(values)
            if any(isinstance(v, str) for v in seq):
                vals = np.empty(len(seq), dtype=object)
                vals[:] = seq
            else:
                vals = np.asarray(seq, dtype=np.float64)
        q = quality if isinstance(quality, int) else np.asarray(quality, dtype=np.uint32)
        ts = source_ts if isinstance(source_ts, (int, float)) else np.asarray(source_ts, dtype=np.float64)
        return cls(idx, vals, q, float(ts) if isinstance(ts, (int, float)) else ts)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(slots=True)
class Changes:
    """What changed in one applied batch: handed to every subscriber.

    Arrays are parallel; ``old_values``/``old_quality`` are what the database held before, so
    a subscriber sees transitions (Good -> Bad, 0 -> 1) without keeping its own copy.
    ``server_ts`` is the database's clock time of the apply. String values, if any, are in
    ``strings`` (tag index -> text).
    """

    indices: np.ndarray
    values: np.ndarray
    quality: np.ndarray
    source_ts: np.ndarray
    old_values: np.ndarray
    old_quality: np.ndarray
    server_ts: float
    strings: dict[int, str] | None = None

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True, slots=True)
class Sample:
    """One tag's live state (value, OPC UA status code, source and server timestamps)."""

    value: float | int | bool | str | None
    quality: int
    source_ts: float
    server_ts: float

    @property
    def good(self) -> bool:
        return Q.is_good(self.quality)


@dataclass(frozen=True, slots=True)
class TagInfo:
    """Everything known about one tag's definition."""

    index: int
    path: str
    device: str
    device_index: int
    point: PointDef

    @property
    def writable(self) -> bool:
        return self.point.writable


Subscriber = Callable[[Changes], None]


class _Sub:
    __slots__ = ("errors", "fn", "mask", "name")

    def __init__(self, fn: Subscriber, name: str, mask: np.ndarray | None):
        self.fn = fn
        self.name = name
        self.mask = mask
        self.errors = 0


OosListener = Callable[[str, bool, "str | None", str], None]


class TagDatabase:
    """Columnar live state of every tag; batches in, batches of changes out."""

    def __init__(self, clock: Clock, capacity: int = 1024, *,
                 future_tolerance: float = FUTURE_TOLERANCE):
        self.clock = clock
        #: seconds a source time may lie ahead of the server's clock (see :meth:`apply`)
        self.future_tolerance = float(future_tolerance)
        self._n = 0
        cap = max(16, capacity)
        self.value = np.full(cap, np.nan, dtype=np.float64)
        self.quality = np.full(cap, Q.BadWaitingForInitialData, dtype=np.uint32)
        self.source_ts = np.zeros(cap, dtype=np.float64)
        self.server_ts = np.zeros(cap, dtype=np.float64)
        self.last_seen = np.zeros(cap, dtype=np.float64)
        self.deadband = np.zeros(cap, dtype=np.float64)
        self.device_of = np.zeros(cap, dtype=np.int32)
        self.is_string = np.zeros(cap, dtype=np.bool_)
        #: row of each tag's point in the point table (shared by every device of a schema)
        self.pid = np.zeros(cap, dtype=np.int32)
        self._strings: dict[int, str] = {}
        # point table: one row per point of each schema, small enough to stay in cache
        self._schema_base: dict[int, int] = {}
        self._schema_ncounters: dict[int, int] = {}
        self._schemas_kept: list[PointSchema] = []
        self._p_vlo = np.zeros(0)
        self._p_vhi = np.zeros(0)
        self._p_elo = np.zeros(0)
        self._p_ehi = np.zeros(0)
        self._p_rate = np.zeros(0)
        self._p_flags = np.zeros(0, dtype=np.uint8)
        self._has_int = False
        # cumulative counters: sorted tag indices and, parallel, the last accepted reading and
        # time, and a pending suspect reading (NaN: none)
        # counter slot of a tag = first slot of its device + ordinal of its point among the
        # schema's counters (two gathers over the counter rows of a batch; no per-tag array)
        self._p_cidx = np.zeros(0, dtype=np.int64)  # point row -> counter ordinal (-1: none)
        self._dev_cbase = np.zeros(64, dtype=np.int64)  # device -> its first counter slot
        self._c_n = 0  # counter slots registered
        self._c_pending = 0  # counters with suspect readings pending
        self._c_ref = np.zeros(0)
        self._c_ref_t = np.zeros(0)
        self._c_sus = np.zeros(0)  # last suspect reading of the pending chain
        self._c_sus_t = np.zeros(0)
        self._c_sus0 = np.zeros(0)  # first suspect reading of the pending chain
        self._c_sus0_t = np.zeros(0)
        self._c_chain = np.zeros(0, dtype=np.int32)  # suspects pending (0: none)
        # out of service, per device (the one owner of this state)
        self._dev_oos = np.zeros(64, dtype=np.bool_)
        self._oos_n = 0
        self._oos_listeners: list[OosListener] = []
        #: latest source time stored (a poll stamped at least this late cannot hold late samples)
        self._max_ts = 0.0
        # devices
        self._dev_paths: list[str] = []
        self._dev_index: dict[str, int] = {}
        self._dev_first: list[int] = []
        self._dev_schema: list[PointSchema] = []
        self._dev_attrs: list[dict[str, Any] | None] = []
        self._subs: list[_Sub] = []
        #: screening plans by index set (see :meth:`_plan`); emptied when devices are added
        self._plans: OrderedDict[tuple[str, bytes], tuple[Any, ...]] = OrderedDict()
        self.stats = {"batches": 0, "samples": 0, "changes": 0, "subscriber_errors": 0,
                      **dict.fromkeys(SCREEN_COUNTS, 0)}

    # ------------------------------------------------------------------ definition
    def __len__(self) -> int:
        return self._n

    @property
    def device_count(self) -> int:
        return len(self._dev_paths)

    def _grow(self, need: int) -> None:
        cap = len(self.value)
        if need <= cap:
            return
        new = max(need, cap * 2)
        for name, fill in (
            ("value", np.nan),
            ("quality", Q.BadWaitingForInitialData),
            ("source_ts", 0.0),
            ("server_ts", 0.0),
            ("last_seen", 0.0),
            ("deadband", 0.0),
            ("device_of", 0),
            ("is_string", False),
            ("pid", 0),
        ):
            old = getattr(self, name)
            arr = np.full(new, fill, dtype=old.dtype)
            arr[:cap] = old
            setattr(self, name, arr)

    def add_device(
        self, path: str, schema: PointSchema, attrs: dict[str, Any] | None = None
    ) -> int:
        """Register a device and its tags; return the index of its first tag."""
        if path in self._dev_index:
            raise ValueError(f"duplicate device path {path!r}")
        if not schema.points:
            raise ValueError(f"device {path!r}: schema {schema.name!r} has no points")
        first = self._n
        k = len(schema.points)
        self._grow(first + k)
        d = len(self._dev_paths)
        self._dev_paths.append(path)
        self._dev_index[path] = d
        self._dev_first.append(first)
        self._dev_schema.append(schema)
        self._dev_attrs.append(attrs)
        sl = slice(first, first + k)
        self.device_of[sl] = d
        self.deadband[sl] = [p.deadband for p in schema.points]
        self.is_string[sl] = [p.dtype == "string" for p in schema.points]
        base = self._point_rows(schema)
        self.pid[sl] = np.arange(base, base + k, dtype=np.int32)
        if d >= len(self._dev_oos):
            for name in ("_dev_oos", "_dev_cbase"):
                old_arr = getattr(self, name)
                grown = np.zeros(2 * len(old_arr), dtype=old_arr.dtype)
                grown[: len(old_arr)] = old_arr
                setattr(self, name, grown)
        self._dev_cbase[d] = self._c_n
        self._c_n += self._schema_ncounters[base]
        self._plans.clear()
        self._n = first + k
        return first

    def _point_rows(self, schema: PointSchema) -> int:
        """First row of ``schema``'s points in the point table (added on first use)."""
        base = self._schema_base.get(id(schema))
        if base is not None:
            return base
        base = len(self._p_flags)
        self._schema_base[id(schema)] = base
        self._schemas_kept.append(schema)  # keeps id(schema) unique while we hold it
        rows = [p.plausible() for p in schema.points]
        flags = [(_F_INT if p.dtype == "int" else 0) | (_F_COUNTER if p.counter else 0)
                 | (_F_WIDE if r[:2] != r[2:] else 0) for p, r in zip(schema.points, rows, strict=True)]
        self._p_vlo = np.concatenate((self._p_vlo, [r[0] for r in rows]))
        self._p_vhi = np.concatenate((self._p_vhi, [r[1] for r in rows]))
        self._p_elo = np.concatenate((self._p_elo, [r[2] for r in rows]))
        self._p_ehi = np.concatenate((self._p_ehi, [r[3] for r in rows]))
        self._p_rate = np.concatenate((self._p_rate, [
            np.inf if p.max_rate is None else float(p.max_rate) for p in schema.points]))
        self._p_flags = np.concatenate((self._p_flags, np.asarray(flags, dtype=np.uint8)))
        self._has_int = self._has_int or any(f & _F_INT for f in flags)
        is_c = [bool(f & _F_COUNTER) for f in flags]
        self._p_cidx = np.concatenate((self._p_cidx, np.where(is_c, np.cumsum(is_c) - 1, -1).astype(np.int64)))
        self._schema_ncounters[base] = sum(is_c)
        return base

    def add_tag(self, path: str, point: PointDef | None = None, **kw: Any) -> int:
        """Register a single tag (a one-point device). For system and computed tags."""
        dev, _, name = path.rpartition("/")
        if not dev or not name:
            raise ValueError(f"tag path {path!r} needs a device part and a point name")
        p = point if point is not None else PointDef(name=name, **kw)
        if p.name != name:
            raise ValueError(f"point name {p.name!r} does not match path {path!r}")
        if dev in self._dev_index:
            # extend an existing single-tag device group is not possible (contiguity); use a
            # distinct pseudo-device per single tag instead
            raise ValueError(f"device {dev!r} already registered; declare its points together")
        return self.add_device(dev, PointSchema(f"single:{path}", (p,)))

    def add_tags(self, device: str, points: Iterable[PointDef]) -> int:
        """Register a group of tags under one pseudo-device (``_system/modbus``)."""
        pts = tuple(points)
        return self.add_device(device, PointSchema(f"group:{device}", pts))

    # ------------------------------------------------------------------ lookup
    def index(self, path: str) -> int:
        """Tag index of ``path``; raises :class:`UnknownTagError` naming the path."""
        dev, _, point = path.rpartition("/")
        d = self._dev_index.get(dev)
        if d is not None:
            off = self._dev_schema[d].offsets.get(point)
            if off is not None:
                return self._dev_first[d] + off
        raise UnknownTagError(f"unknown tag {path!r}")

    def find(self, path: str) -> int | None:
        try:
            return self.index(path)
        except UnknownTagError:
            return None

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self.find(path) is not None

    def device_index(self, path: str) -> int:
        try:
            return self._dev_index[path]
        except KeyError:
            raise UnknownTagError(f"unknown device {path!r}") from None

    def device_path(self, d: int) -> str:
        return self._dev_paths[d]

    def device_first(self, d: int) -> int:
        return self._dev_first[d]

    def device_schema(self, d: int) -> PointSchema:
        return self._dev_schema[d]

    def device_tags(self, path: str) -> range:
        d = self.device_index(path)
        f = self._dev_first[d]
        return range(f, f + len(self._dev_schema[d]))

    def devices(self) -> Iterator[tuple[int, str]]:
        return enumerate(self._dev_paths)

    def path(self, i: int) -> str:
        d, p = self._locate(i)
        return f"{self._dev_paths[d]}/{p.name}"

    def _locate(self, i: int) -> tuple[int, PointDef]:
        if not 0 <= i < self._n:
            raise UnknownTagError(f"unknown tag index {i}")
        d = int(self.device_of[i])
        return d, self._dev_schema[d].points[i - self._dev_first[d]]

    def info(self, i_or_path: int | str) -> TagInfo:
        i = self.index(i_or_path) if isinstance(i_or_path, str) else int(i_or_path)
        d, p = self._locate(i)
        return TagInfo(i, f"{self._dev_paths[d]}/{p.name}", self._dev_paths[d], d, p)

    def point(self, i: int) -> PointDef:
        return self._locate(i)[1]

    def paths(self) -> Iterator[str]:
        for d, dev in enumerate(self._dev_paths):
            for p in self._dev_schema[d].points:
                yield f"{dev}/{p.name}"

    def indices_of_point(self, point_name: str, schema: PointSchema | None = None) -> np.ndarray:
        """Indices of every tag named ``point_name`` (optionally only for one schema)."""
        out: list[int] = []
        for d, sch in enumerate(self._dev_schema):
            if schema is not None and sch is not schema:
                continue
            off = sch.offsets.get(point_name)
            if off is not None:
                out.append(self._dev_first[d] + off)
        return np.asarray(out, dtype=np.int64)

    # ------------------------------------------------------------------ reading
    def read(self, i_or_path: int | str) -> Sample:
        i = self.index(i_or_path) if isinstance(i_or_path, str) else int(i_or_path)
        _, p = self._locate(i)
        return Sample(
            self._typed(i, p), int(self.quality[i]), float(self.source_ts[i]), float(self.server_ts[i])
        )

    def _typed(self, i: int, p: PointDef) -> Any:
        if p.dtype == "string":
            return self._strings.get(i)
        v = float(self.value[i])
        if math.isnan(v):
            return None
        if p.dtype == "bool":
            return bool(v)
        if p.dtype == "int":
            return int(v)
        return v

    def value_of(self, i: int) -> Any:
        return self._typed(i, self._locate(i)[1])

    # ------------------------------------------------------------------ subscribers
    def subscribe(
        self, fn: Subscriber, name: str = "", only: np.ndarray | Sequence[int] | None = None
    ) -> object:
        """Call ``fn(changes)`` after each apply that changed something.

        ``only``: tag indices this subscriber cares about; it then receives only those rows
        (filtered with one boolean gather per batch). Returns a handle for :meth:`unsubscribe`.
        """
        mask = None
        if only is not None:
            mask = np.zeros(max(len(self.value), self._n), dtype=np.bool_)
            mask[np.asarray(only, dtype=np.int64)] = True
        sub = _Sub(fn, name or getattr(fn, "__qualname__", repr(fn)), mask)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, handle: object) -> None:
        try:
            self._subs.remove(handle)  # type: ignore[arg-type]
        except ValueError:
            pass

    def _publish(self, ch: Changes) -> None:
        for sub in tuple(self._subs):
            out = ch
            if sub.mask is not None:
                m = sub.mask[ch.indices] if len(sub.mask) >= self._n else _grow_mask(sub, self._n)[ch.indices]
                if not m.any():
                    continue
                if not m.all():
                    out = Changes(
                        ch.indices[m], ch.values[m], ch.quality[m], ch.source_ts[m],
                        ch.old_values[m], ch.old_quality[m], ch.server_ts,
                        {k: v for k, v in ch.strings.items() if sub.mask[k]} if ch.strings else None,
                    )
            try:
                sub.fn(out)
            except Exception:
                sub.errors += 1
                self.stats["subscriber_errors"] += 1
                if sub.errors <= 5 or sub.errors % 1000 == 0:
                    log.exception("subscriber %s failed on a batch of %d changes (error #%d)",
                                  sub.name, len(out), sub.errors)

    # ------------------------------------------------------------------ writing live state
    def apply(self, batch: Batch, counts: dict[str, float] | None = None) -> Changes | None:
        """Apply one batch of samples; publish and return what changed (None if nothing).

        Samples are screened first (:meth:`_screen`); ``counts`` (a driver's health values)
        receives the screening counters (:data:`SCREEN_COUNTS`) of this batch.
        """
        idx = batch.indices
        n = len(idx)
        if n == 0:
            return None
        now = self.clock.time()
        self.stats["batches"] += 1
        self.stats["samples"] += n
        vals = batch.values
        if vals.dtype == object:
            return self._apply_objects(batch, now, counts)
        q = batch.quality
        qa = np.full(n, q, dtype=np.uint32) if isinstance(q, int) else q
        ts = batch.source_ts
        tsa = np.full(n, ts if ts else now, dtype=np.float64) if isinstance(ts, float) else ts
        vals, qa, tsa, keep = self._screen(idx, vals, qa, tsa, now, counts, own_q=isinstance(q, int),
                                           ts_scalar=(ts or now) if isinstance(ts, float) else None)
        if keep is not None:
            idx, vals, qa, tsa = idx[keep], vals[keep], qa[keep], tsa[keep]
            if not len(idx):
                return None
        old_v = self.value[idx]
        old_q = self.quality[idx]
        diff = np.abs(vals - old_v)
        changed = (qa != old_q) | (diff > self.deadband[idx]) | (np.isnan(vals) != np.isnan(old_v))
        self.last_seen[idx] = now
        if not changed.any():
            return None
        if changed.all():
            ci, cv, cq, cts, ov, oq = idx, vals, qa, tsa, old_v, old_q
        else:
            ci = idx[changed]
            cv, cq, cts, ov, oq = vals[changed], qa[changed], tsa[changed], old_v[changed], old_q[changed]
        self.value[ci] = cv
        self.quality[ci] = cq
        self.source_ts[ci] = cts
        self.server_ts[ci] = now
        top = float(tsa[0]) if isinstance(ts, float) else float(cts.max())
        if top > self._max_ts:
            self._max_ts = top
        ch = Changes(ci, cv, cq, cts, ov, oq, now)
        self.stats["changes"] += len(ci)
        self._publish(ch)
        return ch

    def _count(self, counts: dict[str, float] | None, name: str, k: int) -> None:
        self.stats[name] += k
        if counts is not None:
            counts[name] = counts.get(name, 0.0) + k

    def _screen(self, idx: np.ndarray, vals: np.ndarray, qa: np.ndarray, tsa: np.ndarray,
                now: float, counts: dict[str, float] | None, *, own_q: bool,
                ts_scalar: float | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Screen numeric samples before they can become current values (issue 16).

        Returns (values, qualities, source times, rows to keep or None for all); the batch's
        own arrays are copied before any change. In order:

        1. integer points: rounded half up, so the OPC UA server, the historian and the alarms
           see the same number (254.6 -> 255, never 254 on one side and 254.6 on the other);
        2. plausibility: outside ``valid_range`` (else the EU range, else the data type's
           limits), or not a number (a Good NaN: a float register holding NaN, a transform's
           raw value outside its domain) -> ``BadOutOfRange``; outside the EU range but inside a wider
           ``valid_range`` -> ``UncertainEngineeringUnitsExceeded`` (OPC UA Part 8 §5.6.2 EURange
           and InstrumentRange). The value is kept beside the code. Samples already Bad keep
           their own code;
        3. a source time later than now + ``future_tolerance`` is clamped to now with
           ``BadInvalidTimestamp`` (Part 4 §7.39);
        4. a sample older than the tag's current source time is dropped (it may not replace a
           newer value). A current source time that is itself beyond the tolerance (the server's
           clock was stepped back) does not count;
        5. cumulative counters (:meth:`_counters`);
        6. a device out of service: ``BadOutOfService`` whatever the driver said.

        All of it is a handful of numpy passes over the batch: the checks are per point-table
        row (a few hundred rows, cache-resident), gathered through :attr:`pid`.
        """
        pid, elo, ehi, m, counters, cplan = self._plan(idx)
        if m is not None:
            vals = np.where(m, np.floor(vals + 0.5), vals)
        out = np.greater_equal(vals, elo)  # False for NaN: not plausible
        np.logical_not(out, out=out)
        out |= np.greater(vals, ehi)
        n_out = int(np.count_nonzero(out))
        horizon = now + self.future_tolerance
        if ts_scalar is not None and ts_scalar >= self._max_ts:
            # one source time for the batch (a poll), not older than any stored: nothing is
            # late; no gather of the current source times
            # one source time for the whole batch: all rows are in the future or none
            n_fut = len(tsa) if ts_scalar > horizon else 0
            fut = np.ones(len(tsa), dtype=np.bool_) if n_fut else None
            late = None
            n_late = 0
        else:
            fut = tsa > horizon
            n_fut = int(np.count_nonzero(fut))
            cur_ts = np.take(self.source_ts, idx)
            late = (tsa < cur_ts) & (cur_ts <= horizon)
            n_late = int(np.count_nonzero(late))
        if not (n_out or n_fut or n_late or counters is not None or self._oos_n):
            return vals, qa, tsa, None
        if n_late and n_out and late is not None:
            out &= ~late  # a late sample is not made current: not counted as implausible either
            n_out = int(np.count_nonzero(out))
        if not own_q:
            qa = qa.copy()
        usable = (qa & np.uint32(0x80000000)) == 0  # not already Bad
        if n_out:
            rows = np.flatnonzero(out & usable)
            if len(rows):
                v = vals[rows]
                p = pid[rows]
                hard = ((v < self._p_vlo[p]) | (v > self._p_vhi[p]) | np.isnan(v)
                        | ((self._p_flags[p] & _F_WIDE) == 0))
                qa[rows] = np.where(hard, np.uint32(Q.BadOutOfRange),
                                    np.uint32(Q.UncertainEngineeringUnitsExceeded))
                self._count(counts, "implausible", len(rows))
                usable[rows[hard]] = False
        if n_fut:
            tsa = tsa.copy()
            tsa[fut] = now
            qa[fut & usable] = Q.BadInvalidTimestamp
            usable &= ~fut
            self._count(counts, "future_samples", n_fut)
        keep = None
        if n_late and late is not None:
            keep = ~late
            self._count(counts, "late_samples", n_late)
        if counters is not None:
            crows, cpos, crate = cplan
            if keep is None and (qa[crows] == Q.Good).all():
                # every counter row usable (the common case): the plan's slots and rates
                self._counters(None, None, vals[crows], tsa[crows], crows, qa, counts,
                               pos=cpos, rate=crate)
            else:
                crow = counters & (qa == Q.Good)  # Good after the checks above: usable
                if keep is not None:
                    crow &= keep
                rows = np.flatnonzero(crow)
                if len(rows):
                    self._counters(idx[rows], pid[rows], vals[rows], tsa[rows], rows, qa, counts)
        if self._oos_n:
            qa[self._dev_oos[self.device_of[idx]]] = Q.BadOutOfService
        return vals, qa, tsa, keep

    def _plan(self, idx: np.ndarray) -> tuple[Any, ...]:
        """What screening needs of a batch's index set alone: (point rows, plausible low, high,
        integer mask or None, counter mask or None). Kept in an LRU for small batches, whose
        index sets repeat (a station's poll, a gateway's message): the gathers then cost one
        dict lookup. The arrays are never written to."""
        small = len(idx) <= _PLAN_MAX
        if small:
            key = (idx.dtype.char, idx.tobytes())
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
        # np.take: numpy's fancy indexing with an int32 index array is ~2.5x slower
        pid = np.take(self.pid, idx)
        m = counters = None
        if self._has_int or self._c_n:
            pf = np.take(self._p_flags, pid)
            if self._has_int:
                mi = (pf & _F_INT).view(np.bool_)  # _F_INT is bit 0: the byte is 0 or 1 there
                if mi.any():
                    m = mi
            if self._c_n:
                cm = (pf & _F_COUNTER) != 0
                if cm.any():
                    counters = cm
        cplan = None
        if counters is not None:
            crows = np.flatnonzero(counters)
            cplan = (crows, self._counter_slots(idx[crows], pid[crows]),
                     np.take(self._p_rate, pid[crows]))
        plan = (pid, np.take(self._p_elo, pid), np.take(self._p_ehi, pid), m, counters, cplan)
        if small:
            self._plans[key] = plan
            if len(self._plans) > _PLANS_KEPT:
                self._plans.popitem(last=False)
        return plan

    def _counters(self, tags: np.ndarray | None, pid: np.ndarray | None, v: np.ndarray, t: np.ndarray,
                  rows: np.ndarray, qa: np.ndarray, counts: dict[str, float] | None, *,
                  pos: np.ndarray | None = None, rate: np.ndarray | None = None) -> None:
        """Classify Good readings of cumulative counters against the last accepted one.

        A reading that *continues* the counter (not lower, and not higher than ``max_rate`` x
        the elapsed time allows) is accepted. Any other is *suspect*: kept with
        ``BadOutOfRange``, so no delta is ever computed from it (the historian's counter
        deltas and the energy KPI use Good points only). Later readings classify it:

        * the next reading continues the last accepted one -> the suspects were **glitches**;
        * the counter **restarted** from zero (a reset, a replaced control gear): the first
          suspect is no more than ``max_rate`` x the time since the last accepted reading, and
          the next reading continues from the suspect -> accepted from that reading on;
        * a new level held by :data:`REBASE_AFTER` consecutive consistent readings (a meter
          replaced with another reading, or a counter without ``max_rate`` that restarted) ->
          accepted from the last of them.

        Out-of-order readings (older than the current one) never get here: they are late. The
        very first reading has nothing to be judged against and is accepted. Vectorised over
        the batch; ``tags`` are unique within one batch.
        """
        self._materialize_counters()
        if pos is None or rate is None:  # else given by the batch's plan (:meth:`_plan`)
            pos = self._counter_slots(tags, pid)
            rate = np.take(self._p_rate, pid)
        ref, ref_t = np.take(self._c_ref, pos), np.take(self._c_ref_t, pos)
        with np.errstate(invalid="ignore"):
            step = v - ref
            cont = (step >= 0) & (step <= rate * np.maximum(t - ref_t, 1.0))
        if self._c_pending == 0 and cont.all():
            # the common case: every counter continues and none has suspects pending
            self._c_ref[pos] = v
            self._c_ref_t[pos] = t
            return
        bad_v = np.isnan(v)
        if bad_v.any():  # a Good NaN is "no value": nothing to classify
            ok = ~bad_v
            if ok.any():
                self._counters(None, None, v[ok], t[ok], rows[ok], qa, counts,
                               pos=pos[ok], rate=rate[ok])
            return
        cont |= np.isnan(ref)  # a first reading is accepted
        sus, sus_t = self._c_sus[pos], self._c_sus_t[pos]
        chain = self._c_chain[pos]
        with np.errstate(invalid="ignore"):
            has = chain > 0
            from_sus = has & (v >= sus) & (v - sus <= rate * np.maximum(t - sus_t, 1.0))
            from_zero = self._c_sus0[pos] <= rate * np.maximum(self._c_sus0_t[pos] - ref_t, 1.0)
        accept_chain = ~cont & from_sus & (from_zero | (chain + 1 >= REBASE_AFTER))
        grow = ~cont & from_sus & ~accept_chain
        new = ~cont & ~from_sus
        acc = cont | accept_chain
        glitches = int(chain[has & (cont | new)].sum())
        self._c_pending += int(np.count_nonzero(new & ~has)) - int(np.count_nonzero(has & acc))
        pa, pg, pn = pos[acc], pos[grow], pos[new]
        self._c_ref[pa], self._c_ref_t[pa] = v[acc], t[acc]
        self._c_chain[pa] = 0
        self._c_sus[pg], self._c_sus_t[pg] = v[grow], t[grow]
        self._c_chain[pg] += 1
        self._c_sus[pn], self._c_sus_t[pn] = v[new], t[new]
        self._c_sus0[pn], self._c_sus0_t[pn] = v[new], t[new]
        self._c_chain[pn] = 1
        held = grow | new
        if held.any():
            qa[rows[held]] = Q.BadOutOfRange
        if glitches:
            self._count(counts, "counter_glitches", glitches)
        n_restart = int(np.count_nonzero(accept_chain))
        if n_restart:
            self._count(counts, "counter_resets", n_restart)

    def _counter_slots(self, tags: np.ndarray, pid: np.ndarray) -> np.ndarray:
        """Counter slot of each tag: its device's first slot + its point's counter ordinal."""
        pos = np.take(self._dev_cbase, np.take(self.device_of, tags))
        pos += np.take(self._p_cidx, pid)
        return pos

    def _materialize_counters(self) -> None:
        """Size the counter state for every counter slot registered so far."""
        have = len(self._c_ref)
        if have >= self._c_n:
            return
        k = max(self._c_n, 2 * have) - have
        for name in _COUNTER_STATE:
            arr = getattr(self, name)
            fill = 0 if name == "_c_chain" or name.endswith("_t") else np.nan
            setattr(self, name, np.concatenate((arr, np.full(k, fill, dtype=arr.dtype))))

    def _apply_objects(self, batch: Batch, now: float, counts: dict[str, float] | None) -> Changes | None:
        """Batches holding text (string points): the same rules, row by row (rare and small)."""
        idx = batch.indices
        n = len(idx)
        qa = np.array(np.broadcast_to(np.asarray(batch.quality, dtype=np.uint32), (n,)))
        ts = batch.source_ts
        tsa = np.array(np.broadcast_to(
            np.asarray(ts if (not isinstance(ts, float) or ts) else now, dtype=np.float64), (n,)))
        num = ~self.is_string[idx]
        if num.any():  # numeric rows of a mixed batch: screened like any numeric batch
            r = np.flatnonzero(num)
            nv = np.asarray([np.nan if x is None else float(x) for x in batch.values[r]], dtype=np.float64)
            nv, nq, nt, keep = self._screen(idx[r], nv, qa[r], tsa[r], now, counts, own_q=True)
            vals = batch.values.copy()
            vals[r] = nv
            qa[r], tsa[r] = nq, nt
            drop = r[~keep] if keep is not None else r[:0]
        else:
            vals = batch.values
            drop = r = np.zeros(0, dtype=np.int64)
        horizon = now + self.future_tolerance
        srows = np.flatnonzero(~num)
        keep_rows = np.ones(n, dtype=np.bool_)
        keep_rows[drop] = False
        if len(srows):  # text rows: timestamps and out of service
            fut = tsa[srows] > horizon
            if fut.any():
                qa[srows[fut & ((qa[srows] & np.uint32(0x80000000)) == 0)]] = Q.BadInvalidTimestamp
                tsa[srows[fut]] = now
                self._count(counts, "future_samples", int(fut.sum()))
            cur = self.source_ts[idx[srows]]
            late = (tsa[srows] < cur) & (cur <= horizon)
            if late.any():
                keep_rows[srows[late]] = False
                self._count(counts, "late_samples", int(late.sum()))
            if self._oos_n:
                qa[srows[self._dev_oos[self.device_of[idx[srows]]]]] = Q.BadOutOfService
        rows: list[int] = []
        new_vals = np.full(n, np.nan)
        strings: dict[int, str] = {}
        for k in np.flatnonzero(keep_rows).tolist():
            i = int(idx[k])
            v = vals[k]
            self.last_seen[i] = now
            if self.is_string[i]:
                s = None if v is None else str(v)
                if s != self._strings.get(i) or qa[k] != self.quality[i]:
                    rows.append(k)
                    if s is not None:
                        strings[i] = s
                        self._strings[i] = s
            else:
                fv = float("nan") if v is None else float(v)
                new_vals[k] = fv
                old = self.value[i]
                if qa[k] != self.quality[i] or abs(fv - old) > self.deadband[i] or (
                    math.isnan(fv) != math.isnan(old)
                ):
                    rows.append(k)
        if not rows:
            return None
        r = np.asarray(rows, dtype=np.int64)
        ci = idx[r]
        ov = self.value[ci].copy()
        oq = self.quality[ci].copy()
        cv = new_vals[r]
        num = ~self.is_string[ci]
        self.value[ci[num]] = cv[num]
        self.quality[ci] = qa[r]
        self.source_ts[ci] = tsa[r]
        self.server_ts[ci] = now
        self._max_ts = max(self._max_ts, float(tsa[r].max()))
        ch = Changes(ci, cv, np.array(qa[r]), np.array(tsa[r]), ov, oq, now, strings or None)
        self.stats["changes"] += len(ci)
        self._publish(ch)
        return ch

    def mark(self, indices: np.ndarray | Sequence[int], status: int, source_ts: float | None = None) -> Changes | None:
        """Set the quality of tags without touching their values (last value kept).

        Used when a device is lost (``BadCommunicationError``) or goes stale
        (``UncertainLastUsableValue``). Only tags whose quality actually changes are published.
        The source timestamp is kept unless given: OPC UA Part 8 keeps the time the value was
        last known good. Tags of a device out of service keep ``BadOutOfService``.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if self._oos_n and len(idx):
            idx = idx[~self._dev_oos[self.device_of[idx]]]
        return self._mark(idx, status, source_ts)

    def _mark(self, idx: np.ndarray, status: int, source_ts: float | None = None) -> Changes | None:
        if len(idx) == 0:
            return None
        now = self.clock.time()
        old_q = self.quality[idx]
        changed = old_q != np.uint32(status)
        if not changed.any():
            return None
        ci = idx[changed]
        self.quality[ci] = status
        if source_ts is not None:
            self.source_ts[ci] = source_ts
            self._max_ts = max(self._max_ts, float(source_ts))
        self.server_ts[ci] = now
        v = self.value[ci]
        ch = Changes(
            ci, v.copy(), self.quality[ci].copy(), self.source_ts[ci].copy(), v.copy(),
            old_q[changed], now,
            {i: self._strings[i] for i in ci.tolist() if i in self._strings} or None
            if self.is_string[ci].any() else None,
        )
        self.stats["changes"] += len(ci)
        self._publish(ch)
        return ch

    # ------------------------------------------------------------------ out of service
    def set_out_of_service(self, device: str | int, oos: bool, *, user: str | None = None,
                           comment: str = "") -> bool:
        """Put a device under works, or back in service; True when its state changed.

        The tag database is the one owner of this state (ISA-18.2 / OPC UA Part 9
        out-of-service; Part 8 ``BadOutOfService``): while a device is out of service every one
        of its tags reads ``BadOutOfService`` whatever its driver publishes (the values still
        follow the device, with that code). Back in service, tags holding a value read
        ``UncertainLastUsableValue`` (the others ``BadWaitingForInitialData``) until the next
        sample. Listeners (:meth:`on_out_of_service`: the alarm engine) are called with
        ``(device path, oos, user, comment)`` after the change.

        :class:`scada.runtime.Runtime.set_out_of_service` is the entry point for commands;
        this method raises :class:`UnknownTagError` for an unknown device.
        """
        d = device if isinstance(device, int) else self.device_index(device)
        if not 0 <= d < len(self._dev_paths):
            raise UnknownTagError(f"unknown device index {d}")
        if bool(self._dev_oos[d]) == bool(oos):
            return False
        self._dev_oos[d] = bool(oos)
        self._oos_n += 1 if oos else -1
        first = self._dev_first[d]
        idx = np.arange(first, first + len(self._dev_schema[d]), dtype=np.int64)
        if oos:
            self._mark(idx, Q.BadOutOfService)
        else:
            known = ~np.isnan(self.value[idx]) | np.asarray(
                [int(i) in self._strings for i in idx.tolist()]) if self.is_string[idx].any() \
                else ~np.isnan(self.value[idx])
            self._mark(idx[known], Q.UncertainLastUsableValue)
            self._mark(idx[~known], Q.BadWaitingForInitialData)
        path = self._dev_paths[d]
        for fn in tuple(self._oos_listeners):
            try:
                fn(path, bool(oos), user, comment)
            except Exception:
                log.exception("out-of-service listener %r failed for %s", fn, path)
        return True

    def is_out_of_service(self, device: str | int) -> bool:
        d = device if isinstance(device, int) else self.device_index(device)
        return bool(self._dev_oos[d])

    def out_of_service_devices(self) -> list[str]:
        """Paths of the devices out of service now."""
        if not self._oos_n:
            return []
        return [self._dev_paths[d] for d in np.flatnonzero(self._dev_oos[: len(self._dev_paths)]).tolist()]

    def on_out_of_service(self, fn: OosListener) -> None:
        """Call ``fn(device_path, oos, user, comment)`` after each out-of-service change."""
        self._oos_listeners.append(fn)

    def snapshot(self, indices: np.ndarray | Sequence[int] | None = None) -> Changes:
        """Current state of ``indices`` (all tags if None) shaped as a :class:`Changes`."""
        idx = np.arange(self._n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        v = self.value[idx].copy()
        q = self.quality[idx].copy()
        strings = None
        if self.is_string[idx].any():
            strings = {int(i): self._strings[int(i)] for i in idx[self.is_string[idx]] if int(i) in self._strings}
        return Changes(idx, v, q, self.source_ts[idx].copy(), v, q, self.clock.time(), strings)


def _grow_mask(sub: _Sub, n: int) -> np.ndarray:
    """Extend a subscriber's filter mask after tags were added (new tags: not selected)."""
    m = np.zeros(n, dtype=np.bool_)
    if sub.mask is not None:
        m[: len(sub.mask)] = sub.mask
    sub.mask = m
    return m
