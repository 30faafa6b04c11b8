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

Subscribers are plain callables run synchronously inside ``apply``; they must be quick (copy
what they need, queue slow work). An exception in one subscriber is logged and counted, the
others still receive the batch.
"""

from __future__ import annotations

import logging
import math
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

    @property
    def writable(self) -> bool:
        return self.access == "rw"


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


class TagDatabase:
    """Columnar live state of every tag; batches in, batches of changes out."""

    def __init__(self, clock: Clock, capacity: int = 1024):
        self.clock = clock
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
        self._strings: dict[int, str] = {}
        # devices
        self._dev_paths: list[str] = []
        self._dev_index: dict[str, int] = {}
        self._dev_first: list[int] = []
        self._dev_schema: list[PointSchema] = []
        self._dev_attrs: list[dict[str, Any] | None] = []
        self._subs: list[_Sub] = []
        self.stats = {"batches": 0, "samples": 0, "changes": 0, "subscriber_errors": 0}

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
        ):
            old = getattr(self, name)
            arr = np.full(new, fill, dtype=old.dtype)
            arr[:cap] = old
            setattr(self, name, arr)

    def reserve(self, n_tags: int) -> None:
        """Pre-size the arrays (avoids repeated growth while loading a city)."""
        self._grow(n_tags)

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
        self._n = first + k
        return first

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

    def device_attrs(self, d: int) -> dict[str, Any]:
        return self._dev_attrs[d] or {}

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
    def apply(self, batch: Batch) -> Changes | None:
        """Apply one batch of samples; publish and return what changed (None if nothing)."""
        idx = batch.indices
        n = len(idx)
        if n == 0:
            return None
        now = self.clock.time()
        self.stats["batches"] += 1
        self.stats["samples"] += n
        vals = batch.values
        if vals.dtype == object:
            return self._apply_objects(batch, now)
        q = batch.quality
        qa = np.full(n, q, dtype=np.uint32) if isinstance(q, int) else q
        ts = batch.source_ts
        tsa = np.full(n, ts if ts else now, dtype=np.float64) if isinstance(ts, float) else ts
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
        ch = Changes(ci, cv, cq, cts, ov, oq, now)
        self.stats["changes"] += len(ci)
        self._publish(ch)
        return ch

    def _apply_objects(self, batch: Batch, now: float) -> Changes | None:
        idx = batch.indices
        n = len(idx)
        qa = np.broadcast_to(np.asarray(batch.quality, dtype=np.uint32), (n,))
        ts = batch.source_ts
        tsa = np.broadcast_to(np.asarray(ts if (not isinstance(ts, float) or ts) else now, dtype=np.float64), (n,))
        rows: list[int] = []
        new_vals = np.full(n, np.nan)
        strings: dict[int, str] = {}
        for k in range(n):
            i = int(idx[k])
            v = batch.values[k]
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
        ch = Changes(ci, cv, np.array(qa[r]), np.array(tsa[r]), ov, oq, now, strings or None)
        self.stats["changes"] += len(ci)
        self._publish(ch)
        return ch

    def mark(self, indices: np.ndarray | Sequence[int], status: int, source_ts: float | None = None) -> Changes | None:
        """Set the quality of tags without touching their values (last value kept).

        Used when a device is lost (``BadCommunicationError``), put out of service
        (``BadOutOfService``) or goes stale (``UncertainLastUsableValue``). Only tags whose
        quality actually changes are published. The source timestamp is kept unless given:
        OPC UA Part 8 keeps the time the value was last known good.
        """
        idx = np.asarray(indices, dtype=np.int64)
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
