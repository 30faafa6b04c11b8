"""The historian backend interface and the block of points that crosses it.

Every backend (``scada.historians`` entry points: ``embedded``, ``influx``, or a third party's)
stores *series* named by tag path (``centre/cab-01/lum-03/energy_wh``), each point being
(source time, value, OPC UA status code). The contract is deliberately small, as asyncua's
history storage interface is: write a block, read a raw range, list series, plus one
pushed-down aggregate the energy KPI needs over a billion points (:meth:`Backend.buckets`).
Everything else (interval aggregates, time-weighted integrals, counter deltas) is computed
from raw ranges by :mod:`historian.query`, so every backend answers the same way.

Backends are *blocking* (file or HTTP I/O); the service calls them through
``asyncio.to_thread``. Write errors are classified as in Telegraf's influxdb_v2 output:

* :class:`BackendUnavailable` - retry later (server down, 5xx, 429, disk read-only/full); the
  block stays in the spool.
* :class:`BackendRejected` - the data itself is refused (4xx); retrying cannot help, the block
  is set aside and logged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scada import quality as Q
from scada.errors import ScadaError


class HistorianError(ScadaError, RuntimeError):
    """Base of historian errors."""


class BackendUnavailable(HistorianError, ConnectionError):
    """The backend cannot take or serve data right now; try again later."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class BackendRejected(HistorianError, ValueError):
    """The backend refused the data (client error); retrying the same block cannot succeed."""


@dataclass(slots=True)
class Points:
    """A block of points: parallel arrays plus the series keys they refer to.

    ``sid[i]`` indexes ``keys`` (the tag path of point i); ``t`` is the source time in POSIX
    seconds, ``v`` the value (float64; NaN when there is none), ``q`` the OPC UA status code.
    """

    keys: list[str]
    sid: np.ndarray
    t: np.ndarray
    v: np.ndarray
    q: np.ndarray

    def __len__(self) -> int:
        return len(self.sid)

    @classmethod
    def empty(cls) -> Points:
        return cls([], np.zeros(0, np.int32), np.zeros(0), np.zeros(0), np.zeros(0, np.uint32))

    @classmethod
    def of(
        cls,
        keys: Sequence[str],
        sid: Sequence[int] | np.ndarray,
        t: Sequence[float] | np.ndarray,
        v: Sequence[float] | np.ndarray,
        q: Sequence[int] | np.ndarray | int = 0,
    ) -> Points:
        s = np.asarray(sid, dtype=np.int32)
        qa = np.full(len(s), q, np.uint32) if isinstance(q, int) else np.asarray(q, np.uint32)
        return cls(list(keys), s, np.asarray(t, np.float64), np.asarray(v, np.float64), qa)

    def compact_keys(self) -> Points:
        """Keep only the keys actually used (renumbering ``sid``)."""
        used, inv = np.unique(self.sid, return_inverse=True)
        if len(used) == len(self.keys):
            return self
        return Points([self.keys[i] for i in used.tolist()], inv.astype(np.int32),
                      self.t, self.v, self.q)

    @staticmethod
    def concat(blocks: Sequence[Points]) -> Points:
        """Join blocks (keys merged, order of points kept)."""
        blocks = [b for b in blocks if len(b)]
        if not blocks:
            return Points.empty()
        if len(blocks) == 1:
            return blocks[0]
        index: dict[str, int] = {}
        sids = []
        for b in blocks:
            remap = np.array([index.setdefault(k, len(index)) for k in b.keys], dtype=np.int32)
            sids.append(remap[b.sid] if len(b.keys) else b.sid)
        return Points(list(index), np.concatenate(sids), np.concatenate([b.t for b in blocks]),
                      np.concatenate([b.v for b in blocks]), np.concatenate([b.q for b in blocks]))


@dataclass(slots=True)
class Raw:
    """One series' raw range: times (POSIX s), values, status codes, ascending in time."""

    t: np.ndarray
    v: np.ndarray
    q: np.ndarray

    def __len__(self) -> int:
        return len(self.t)

    @classmethod
    def empty(cls) -> Raw:
        return cls(np.zeros(0), np.zeros(0), np.zeros(0, np.uint32))


@dataclass(slots=True)
class Buckets:
    """Per (series, bucket) summary pushed down to the backend for counters.

    Rows are parallel arrays; ``monotonic`` is False when the counter went down inside the
    bucket (reset, rollover, replacement) so the caller recomputes that bucket from raw data.
    Only good points are summarised; ``bad`` counts the others.
    """

    keys: list[str]
    sid: np.ndarray
    bucket: np.ndarray
    first_t: np.ndarray
    first_v: np.ndarray
    last_t: np.ndarray
    last_v: np.ndarray
    vmin: np.ndarray
    vmax: np.ndarray
    count: np.ndarray
    bad: np.ndarray
    monotonic: np.ndarray


class Backend(ABC):
    """Storage behind the historian. Constructed from the site's ``historian:`` section.

    ``path`` is the backend's directory (absolute; the embedded store lives there, the influx
    backend keeps nothing there but may); ``options`` the section's free ``options`` mapping.
    """

    name = "backend"

    def __init__(self, path: str, options: dict[str, Any] | None = None) -> None:
        self.path = path
        self.options = dict(options or {})

    def describe(self) -> str:
        """One line for logs and reports (engine, location)."""
        return f"{self.name} at {self.path}"

    @abstractmethod
    def write(self, points: Points, batch_id: str) -> None:
        """Store a block durably. Same (series, time) overwrites; a block already stored under
        ``batch_id`` may be skipped (replays are idempotent). Raises :class:`BackendUnavailable`
        or :class:`BackendRejected`."""

    @abstractmethod
    def read_raw(self, key: str, t0: float, t1: float, limit: int | None = None) -> Raw:
        """Points of one series with ``t0 <= t < t1``, ascending, all qualities."""

    @abstractmethod
    def series(self, pattern: str | None = None) -> list[str]:
        """Known series keys; ``pattern`` is a shell glob on the key (``*/energy_wh``)."""

    def buckets(self, keys: Sequence[str], edges: np.ndarray, counter: bool = False) -> Buckets:
        """Summaries per series and bucket ``[edges[k], edges[k+1])`` (good points only).

        The default reads each series raw; columnar backends push it down. ``counter=True``
        allows a cheaper summary for accumulating counters (first/last may be min/max; resets
        then show across buckets, see :func:`historian.energy.counter_energy`).
        """
        return buckets_from_raw(self, keys, edges)

    def read_many(self, keys: Sequence[str], t0: float, t1: float) -> Points:
        """Readings of several series with ``t0 <= t < t1``, all qualities, sorted by series
        (in the order of ``keys``) then time; ``sid`` indexes ``keys``. The default reads each
        series raw; columnar backends push it down."""
        sids, ts, vs, qs = [], [], [], []
        for i, k in enumerate(keys):
            raw = self.read_raw(k, t0, t1)
            if len(raw):
                sids.append(np.full(len(raw), i, np.int32))
                ts.append(raw.t)
                vs.append(raw.v)
                qs.append(raw.q)
        if not sids:
            return Points(list(keys), np.zeros(0, np.int32), np.zeros(0), np.zeros(0), np.zeros(0, np.uint32))
        return Points(list(keys), np.concatenate(sids), np.concatenate(ts), np.concatenate(vs),
                      np.concatenate(qs).astype(np.uint32))

    def has_batch(self, batch_id: str) -> bool:
        """Does the store already hold the block written under ``batch_id``? (Imports skip such
        blocks; False when the backend cannot tell: same series + time then overwrite.)"""
        return False

    def flush(self) -> None:  # noqa: B027 - optional
        """Make everything written so far visible to readers (optional)."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release files or connections."""

    def stats(self) -> dict[str, float]:
        """Figures for health tags and benchmarks (disk bytes, segments, ...)."""
        return {}


def buckets_from_raw(backend: Backend, keys: Sequence[str], edges: np.ndarray) -> Buckets:
    """Generic :meth:`Backend.buckets`: one raw read per series (for backends without push-down)."""
    rows: dict[str, list] = {k: [] for k in ("sid", "bucket", "ft", "fv", "lt", "lv", "mn", "mx", "n", "bad", "mono")}
    nb = len(edges) - 1
    for s, key in enumerate(keys):
        raw = backend.read_raw(key, float(edges[0]), float(edges[-1]))
        if not len(raw):
            continue
        b = np.searchsorted(edges, raw.t, side="right") - 1
        good = Q.good_mask(raw.q) & ~np.isnan(raw.v)
        for k in np.unique(b[(b >= 0) & (b < nb)]).tolist():
            m = b == k
            g = m & good
            rows["sid"].append(s)
            rows["bucket"].append(k)
            rows["n"].append(int(g.sum()))
            rows["bad"].append(int((m & ~good).sum()))
            if g.any():
                tv, vv = raw.t[g], raw.v[g]
                rows["ft"].append(tv[0])
                rows["fv"].append(vv[0])
                rows["lt"].append(tv[-1])
                rows["lv"].append(vv[-1])
                rows["mn"].append(vv.min())
                rows["mx"].append(vv.max())
                rows["mono"].append(bool(np.all(np.diff(vv) >= 0)))
            else:
                for c in ("ft", "fv", "lt", "lv", "mn", "mx"):
                    rows[c].append(np.nan)
                rows["mono"].append(True)
    f = lambda c: np.asarray(rows[c], np.float64)  # noqa: E731
    return Buckets(list(keys), np.asarray(rows["sid"], np.int64), np.asarray(rows["bucket"], np.int64),
                   f("ft"), f("fv"), f("lt"), f("lv"), f("mn"), f("mx"),
                   np.asarray(rows["n"], np.int64), np.asarray(rows["bad"], np.int64),
                   np.asarray(rows["mono"], bool))


def load_backend(name: str, path: str, options: dict[str, Any] | None = None) -> Backend:
    """Instantiate the ``scada.historians`` entry point ``name``."""
    from importlib.metadata import entry_points

    eps = {ep.name: ep for ep in entry_points(group="scada.historians")}
    if name not in eps:
        raise HistorianError(
            f"historian backend {name!r} is not installed (installed: {', '.join(sorted(eps))}); "
            "set historian.backend in the site file to one of these"
        )
    cls = eps[name].load()
    return cls(path, options)
