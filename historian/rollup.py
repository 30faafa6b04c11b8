"""Daily (per-night) roll-ups of counters, so a year's KPI reads 366 small files instead of a
billion raw values.

One file per point and night (local noon to local noon, as the KPI counts):
``<dir>/night-YYYY-MM-DD.<point>.npy``, one float64 matrix (no zip, read with one ``fromfile``,
each field a contiguous row) holding per series (columns) its id, the first and last good
reading (time, value), the maximum, good and bad counts and a monotonic flag - the
:class:`historian.base.Buckets` summary the KPI consumes. Column 0 is a header: id -1 and, in
the ``count`` row, the highest block sequence number of the embedded store the night was
computed from. Series are numbered in ``<dir>/keys.txt`` (append-only).

Staleness: a night whose time range is touched by a block written after the roll-up (a spool
replay after an outage, a late import) is recomputed on the next :meth:`Rollups.update`; for
non-embedded backends roll-ups are recomputed when asked (``force``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from datetime import date, timedelta

import numpy as np

from scada import astro

from .base import Backend, Buckets

FIELDS = ("first_t", "first_v", "last_t", "last_v", "vmax", "count", "bad", "mono")
ROWS = ("id", *FIELDS)
R = {name: i for i, name in enumerate(ROWS)}
DTYPE = {"count": np.int64, "bad": np.int64, "mono": bool}


class Rollups:
    def __init__(self, directory: str):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self._keys: list[str] = []
        self._index: dict[str, int] = {}
        p = os.path.join(self.dir, "keys.txt")
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                self._keys = [line.rstrip("\n") for line in f if line.strip()]
            self._index = {k: i for i, k in enumerate(self._keys)}

    def _ids(self, keys: Sequence[str]) -> np.ndarray:
        new = [k for k in dict.fromkeys(keys) if k not in self._index]
        if new:
            with open(os.path.join(self.dir, "keys.txt"), "a", encoding="utf-8") as f:
                f.write("".join(k + "\n" for k in new))
            for k in new:
                self._index[k] = len(self._keys)
                self._keys.append(k)
        return np.fromiter((self._index[k] for k in keys), np.int64, len(keys))

    def path(self, night: date, point: str) -> str:
        return os.path.join(self.dir, f"night-{night.isoformat()}.{point}.npy")

    def _load(self, night: date, point: str) -> np.ndarray | None:
        p = self.path(night, point)
        try:
            return np.load(p)
        except FileNotFoundError:
            return None

    def write_night(self, night: date, point: str, keys: Sequence[str], cols: dict[str, np.ndarray],
                    seq: int = -1) -> None:
        """Store one night's summary of ``point`` series (rows parallel to ``keys``), merged with
        the rows already stored for other series; the file is replaced atomically."""
        ids = self._ids(keys)
        mat = np.empty((len(ROWS), len(ids) + 1))
        mat[R["id"], 1:] = ids
        for f in FIELDS:
            mat[R[f], 1:] = cols[f]
        old = self._load(night, point)
        if old is not None:
            keep = ~np.isin(old[R["id"], 1:], ids)
            if keep.any():
                mat = np.concatenate([mat[:, :1], old[:, 1:][:, keep], mat[:, 1:]], axis=1)
                seq = min(seq, int(old[R["count"], 0])) if seq >= 0 else seq
        mat[:, 0] = 0.0
        mat[R["id"], 0], mat[R["count"], 0] = -1, seq
        p = self.path(night, point)
        tmp = p + ".tmp.npy"
        np.save(tmp, mat)
        os.replace(tmp, p)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes (two reports at once must not interleave keys.txt)."""
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # another process may have added keys meanwhile
            p = os.path.join(self.dir, "keys.txt")
            if os.path.exists(p):
                with open(p, encoding="utf-8") as f:
                    self._keys = [line.rstrip("\n") for line in f if line.strip()]
                self._index = {k: i for i, k in enumerate(self._keys)}
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def update(self, backend: Backend, keys: Sequence[str], tz: str, d0: date, d1: date,
               force: bool = False, counter: bool = True) -> int:
        """(Re)compute the nights ``d0..d1`` that are missing or stale; returns how many.
        ``counter``: the series are accumulating counters (cheaper summary, see
        :meth:`historian.base.Backend.buckets`)."""
        with self.locked():
            return self._update(backend, keys, tz, d0, d1, force, counter)

    def _update(self, backend: Backend, keys: Sequence[str], tz: str, d0: date, d1: date,
                force: bool, counter: bool) -> int:
        nights = [d0 + timedelta(days=k) for k in range((d1 - d0).days + 1)]
        point = _point(keys)
        seq_now, blocks = _blocks(backend)
        ids = self._ids(keys)
        todo = [n for n in nights if force or self._stale(n, point, ids, tz, seq_now, blocks)]
        runs: list[list[date]] = []
        for n in todo:  # contiguous runs: one push-down each
            if runs and (n - runs[-1][-1]).days == 1:
                runs[-1].append(n)
            else:
                runs.append([n])
        for run in runs:
            edges = astro.local_noon_utc(astro.to_dates([*run, run[-1] + timedelta(days=1)]), tz)
            bk = backend.buckets(keys, edges, counter=counter)
            for j, night in enumerate(run):
                m = bk.bucket == j
                s = bk.sid[m]
                # series without a point that night are stored as empty rows: known, no data
                full: dict[str, np.ndarray] = {f: np.full(len(keys), np.nan) for f in FIELDS[:5]}
                full.update(count=np.zeros(len(keys), np.int64), bad=np.zeros(len(keys), np.int64),
                            mono=np.ones(len(keys), bool))
                for f, src in (("first_t", bk.first_t), ("first_v", bk.first_v), ("last_t", bk.last_t),
                               ("last_v", bk.last_v), ("vmax", bk.vmax), ("count", bk.count), ("bad", bk.bad),
                               ("mono", bk.monotonic)):
                    full[f][s] = src[m]
                self.write_night(night, point, list(keys), full, seq_now)
        return len(todo)

    def _stale(self, night: date, point: str, ids: np.ndarray, tz: str, seq_now: int,
               blocks: list[tuple[int, int, int]]) -> bool:
        arr = self._load(night, point)
        if arr is None:
            return True
        have = arr[R["id"], 1:]
        if not (len(have) == len(ids) and np.array_equal(have, ids)) and not np.isin(ids, have).all():
            return True
        seq = int(arr[R["count"], 0])
        if seq_now < 0 or seq >= seq_now:
            return False
        a, b = astro.local_noon_utc(astro.to_dates([night, night + timedelta(days=1)]), tz) * 1e6
        return any(hi > seq and tmax >= a and tmin < b for hi, tmin, tmax in blocks)

    def view(self, keys: Sequence[str], nights: Sequence[date]) -> RollupView | None:
        """The stored nights of ``keys`` (memory-mapped, nothing copied yet), or None if a night
        is missing. Read row blocks with :meth:`RollupView.rows`."""
        point = _point(keys)
        ids = np.fromiter((self._index.get(k, -1) for k in keys), np.int64, len(keys))
        arrs = []
        for night in nights:
            try:
                arrs.append(np.load(self.path(night, point), mmap_mode="r"))
            except FileNotFoundError:
                return None
        return RollupView(ids, arrs, len(self._keys))

    def matrices(self, keys: Sequence[str], nights: Sequence[date],
                 fields: Sequence[str] = FIELDS) -> dict[str, np.ndarray] | None:
        """[series, night] float64 matrices of ``fields`` (count and mono as 0.0/1.0), or None
        if a night is missing."""
        v = self.view(keys, nights)
        return None if v is None else v.rows(0, len(keys), fields)

    def buckets(self, keys: Sequence[str], nights: Sequence[date]) -> Buckets | None:
        """The stored summaries as a :class:`Buckets` (bucket = night position)."""
        m = self.matrices(keys, nights)
        if m is None:
            return None
        m = {f: (a.astype(DTYPE[f]) if f in DTYPE else a) for f, a in m.items()}
        s, k = np.nonzero((m["count"] + m["bad"]) > 0)
        return Buckets(list(keys), s.astype(np.int64), k.astype(np.int64), m["first_t"][s, k], m["first_v"][s, k],
                       m["last_t"][s, k], m["last_v"][s, k], np.full(len(s), np.nan), m["vmax"][s, k],
                       m["count"][s, k], m["bad"][s, k], m["mono"][s, k])


class RollupView:
    """Per-night roll-up arrays (memory-mapped) of a list of series, read by row blocks so a
    year of 34,000 luminaires never needs its 12 M-cell matrices allocated at once."""

    def __init__(self, ids: np.ndarray, arrs: list[np.ndarray], n_keys: int):
        self.ids = ids
        self.arrs = arrs
        self._ids_f = ids.astype(np.float64)
        self._aligned = [a.shape[1] == len(ids) + 1 and np.array_equal(a[R["id"], 1:], self._ids_f)
                         for a in arrs]
        self._n_keys = n_keys

    def rows(self, r0: int, r1: int, fields: Sequence[str] = FIELDS) -> dict[str, np.ndarray]:
        """[series r0..r1, night] float64 arrays of ``fields``."""
        S_, N = r1 - r0, len(self.arrs)
        # filled night by night as contiguous rows of [night, series], returned transposed
        out = {f: np.empty((N, S_)) for f in fields}
        pos = None
        for j, (arr, aligned) in enumerate(zip(self.arrs, self._aligned, strict=True)):
            if aligned:
                for f in fields:
                    out[f][j] = arr[R[f], 1 + r0 : 1 + r1]
                continue
            for f in fields:
                out[f][j] = np.nan if f in FIELDS[:5] else float(f == "mono")
            if pos is None:
                pos = np.full(max(self._n_keys, 1), -1, np.int64)
                sel = self.ids[r0:r1]
                pos[sel[sel >= 0]] = np.flatnonzero(sel >= 0)
            r = pos[np.minimum(np.asarray(arr[R["id"], 1:]).astype(np.int64), len(pos) - 1)]
            ok = r >= 0
            for f in fields:
                out[f][j, r[ok]] = np.asarray(arr[R[f], 1:])[ok]
        return {f: a.T for f, a in out.items()}


def _point(keys: Sequence[str]) -> str:
    """The point name shared by ``keys`` (``energy_wh``): roll-ups are kept per point."""
    names = {k.rsplit("/", 1)[-1] for k in keys}
    if len(names) != 1:
        raise ValueError(f"roll-ups are per point; got keys of points {sorted(names)[:5]}")
    return names.pop()


def _blocks(backend: Backend) -> tuple[int, list[tuple[int, int, int]]]:
    """(highest block seq, [(last seq, tmin us, tmax us)]) of an embedded store, else (-1, [])."""
    segdir = getattr(backend, "segdir", None)
    if segdir is None or not os.path.isdir(segdir):
        return -1, []
    from .embedded import live_segments

    segs = live_segments(os.listdir(segdir))
    return max((s.hi for s in segs), default=-1), [(s.hi, s.tmin, s.tmax) for s in segs]
