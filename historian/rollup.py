"""Per-night roll-ups of counters and power, so a year's KPI reads 366 small files instead of a
billion raw values.

One file per point and night (local noon to local noon):
``<dir>/night-YYYY-MM-DD.<point>.npy``, one float64 matrix (no zip, read with one ``fromfile``,
each field a contiguous row) holding per series (columns) its id and the fields of
:data:`historian.summary.FIELDS`: per half-night (evening to local midnight, morning after it)
the first and last good reading, the good readings and the reset-aware sum of the increments
inside it; per night the bad readings, resets, fastest increase, maximum and fingerprint lanes.
Resets are thus resolved when the night is rolled up, once: a report never re-reads a
luminaire's year because its counter was reset (issue 17). Column 0 is a header: id -1, in
the ``e_count`` row the highest block sequence number of the embedded store the night was
computed from, in the ``e_first_t`` row a 52-bit hash of the id row (so a reader checks that a
night holds exactly its series without reading the ids), in the ``vmax`` row the layout
version (:data:`FORMAT`; a file of another layout is recomputed). Series are numbered in
``<dir>/keys.txt`` (append-only). Files are memory-mapped and the maps kept (per path, file
identity and modification time) for the next report in the same process.

Staleness: a night whose time range is touched by a block written after the roll-up (a spool
replay after an outage, a late import) is recomputed on the next :meth:`Rollups.update`; for
non-embedded backends roll-ups are recomputed when asked (``force``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
from collections.abc import Iterator, Sequence
from datetime import date, timedelta

import numpy as np

from scada import astro

from .base import Backend
from .summary import FIELDS, MISSING, night_edges, summarize

ROWS = ("id", *FIELDS)
R = {name: i for i, name in enumerate(ROWS)}
#: layout version, in the header of the ``vmax`` row (files of another layout are recomputed)
FORMAT = 4.0
_HEADERS: dict[bytes, tuple[tuple[int, ...], bool, np.dtype]] = {}


def ids_hash(ids: np.ndarray) -> float:
    """52-bit hash of an id row (exact as a float64; never 0, which means "not recorded")."""
    h = int.from_bytes(hashlib.blake2b(np.asarray(ids, np.int64).tobytes(), digest_size=8).digest(), "little")
    return float((h >> 12) or 1)


def _open_npy(path: str) -> np.ndarray:
    """Memory-map a ``.npy`` matrix (a plain ndarray over the map; the header parse is cached)."""
    with open(path, "rb") as f:
        head = f.read(10)
        if head[:6] != b"\x93NUMPY" or head[6] != 1:
            return np.load(path, mmap_mode="r").view(np.ndarray)
        hlen = int.from_bytes(head[8:10], "little")
        raw = f.read(hlen)
        meta = _HEADERS.get(raw)
        if meta is None:
            f.seek(8)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            meta = _HEADERS[raw] = (shape, fortran, dtype)
        shape, fortran, dtype = meta
        if not shape or not all(shape):
            return np.zeros(shape, dtype)
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.ndarray(shape, dtype, buffer=mm, offset=10 + hlen, order="F" if fortran else "C")


class Rollups:
    def __init__(self, directory: str):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self._keys: list[str] = []
        self._index: dict[str, int] = {}
        self._maps: dict[str, tuple[tuple[int, int, int], np.ndarray]] = {}
        self._ids_cache: dict[tuple[str, ...], np.ndarray] = {}
        p = os.path.join(self.dir, "keys.txt")
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                self._keys = [line.rstrip("\n") for line in f if line.strip()]
            self._index = {k: i for i, k in enumerate(self._keys)}

    def _ids(self, keys: Sequence[str]) -> np.ndarray:
        tk = tuple(keys)
        hit = self._ids_cache.get(tk)
        if hit is not None:
            return hit
        new = [k for k in dict.fromkeys(keys) if k not in self._index]
        if new:
            with open(os.path.join(self.dir, "keys.txt"), "a", encoding="utf-8") as f:
                f.write("".join(k + "\n" for k in new))
            for k in new:
                self._index[k] = len(self._keys)
                self._keys.append(k)
        ids = np.fromiter((self._index[k] for k in keys), np.int64, len(keys))
        if len(self._ids_cache) > 8:
            self._ids_cache.clear()
        self._ids_cache[tk] = ids
        return ids

    def path(self, night: date, point: str) -> str:
        return os.path.join(self.dir, f"night-{night.isoformat()}.{point}.npy")

    def _load(self, night: date, point: str) -> np.ndarray | None:
        p = self.path(night, point)
        try:
            return np.load(p)
        except FileNotFoundError:
            return None

    def _map(self, night: date, point: str) -> np.ndarray | None:
        """The night's matrix, memory-mapped (read-only); the map is reused while the file is
        the same (a rewrite replaces the file: new inode)."""
        p = self.path(night, point)
        try:
            st = os.stat(p)
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        hit = self._maps.get(p)
        if hit is not None and hit[0] == key:
            return hit[1]
        try:
            arr = _open_npy(p)
        except FileNotFoundError:
            return None
        self._maps[p] = (key, arr)
        return arr

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
        if old is not None and old.shape[0] == len(ROWS) and old[R["vmax"], 0] == FORMAT:
            keep = ~np.isin(old[R["id"], 1:], ids)
            if keep.any():
                mat = np.concatenate([mat[:, :1], old[:, 1:][:, keep], mat[:, 1:]], axis=1)
                seq = min(seq, int(old[R["e_count"], 0])) if seq >= 0 else seq
        mat[:, 0] = 0.0
        mat[R["id"], 0], mat[R["e_count"], 0] = -1, seq
        mat[R["e_first_t"], 0] = ids_hash(mat[R["id"], 1:])
        mat[R["vmax"], 0] = FORMAT
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
        """(Re)compute the nights ``d0..d1`` that are missing or stale; returns how many."""
        with self.locked():
            return self._update(backend, keys, tz, d0, d1, force)

    def _update(self, backend: Backend, keys: Sequence[str], tz: str, d0: date, d1: date, force: bool) -> int:
        nights = [d0 + timedelta(days=k) for k in range((d1 - d0).days + 1)]
        point = _point(keys)
        seq_now, blocks = _blocks(backend)
        ids = self._ids(keys)
        h = ids_hash(ids)
        todo = [n for n in nights if force or self._stale(n, point, ids, h, tz, seq_now, blocks)]
        runs: list[list[date]] = []
        # contiguous runs, a few million readings at most each (one scan, one sort)
        per_run = max(1, 3_000_000 // max(1, 100 * len(keys)))
        for n in todo:
            if runs and (n - runs[-1][-1]).days == 1 and len(runs[-1]) < per_run:
                runs[-1].append(n)
            else:
                runs.append([n])
        for run in runs:
            edges = night_edges(astro.to_dates(run), tz)
            sm = summarize(backend, keys, edges)
            for j, night in enumerate(run):
                self.write_night(night, point, list(keys), {f: sm[f][j] for f in FIELDS}, seq_now)
        return len(todo)

    def _stale(self, night: date, point: str, ids: np.ndarray, h: float, tz: str, seq_now: int,
               blocks: list[tuple[int, int, int]]) -> bool:
        arr = self._map(night, point)
        if arr is None or arr.shape[0] != len(ROWS) or arr[R["vmax"], 0] != FORMAT:
            return True
        if not _aligned(arr, ids, h):
            have = arr[R["id"], 1:]
            if not np.isin(ids, have).all():
                return True
        seq = int(arr[R["e_count"], 0])
        if seq_now < 0 or seq >= seq_now:
            return False
        a, b = astro.local_noon_utc(astro.to_dates([night, night + timedelta(days=1)]), tz) * 1e6
        return any(hi > seq and tmax >= a and tmin < b for hi, tmin, tmax in blocks)

    def view(self, keys: Sequence[str], nights: Sequence[date]) -> RollupView | None:
        """The stored nights of ``keys`` (memory-mapped, nothing copied yet), or None if a night
        is missing. Read row blocks with :meth:`RollupView.rows`."""
        point = _point(keys)
        ids = self._ids(keys)
        arrs = []
        for night in nights:
            arr = self._map(night, point)
            if arr is None:
                return None
            arrs.append(arr)
        return RollupView(ids, arrs, len(self._keys))


class RollupView:
    """Per-night roll-up arrays (memory-mapped) of a list of series: a night's row of one field
    over all the series (:meth:`night`, a view into the file when the night holds exactly these
    series), or row blocks [series, night] (:meth:`rows`, :meth:`take`), so a year of 34,000
    luminaires never needs its 12 M-cell matrices allocated at once."""

    def __init__(self, ids: np.ndarray, arrs: list[np.ndarray], n_keys: int):
        self.ids = ids
        self.arrs = arrs
        h = ids_hash(ids)
        self._aligned = [_aligned(a, ids, h) for a in arrs]
        self._n_keys = n_keys
        self._pos: dict[int, np.ndarray] = {}  # night -> file column of each series (-1: absent)
        self._pos_by_hash: dict[float, np.ndarray] = {}

    def _positions(self, j: int) -> np.ndarray:
        pos = self._pos.get(j)
        if pos is None:
            arr = self.arrs[j]
            h = float(arr[R["e_first_t"], 0]) if arr.shape[1] else 0.0
            pos = self._pos_by_hash.get(h) if h else None
            if pos is None:
                fid = np.asarray(arr[R["id"], 1:]).astype(np.int64)
                lut = np.full(max(self._n_keys, int(fid.max(initial=-1)) + 1, 1), -1, np.int64)
                lut[fid] = np.arange(len(fid))
                ok = (self.ids >= 0) & (self.ids < len(lut))
                pos = np.full(len(self.ids), -1, np.int64)
                pos[ok] = lut[self.ids[ok]]
                if h:
                    self._pos_by_hash[h] = pos
            self._pos[j] = pos
        return pos

    def night(self, j: int, field: str) -> np.ndarray:
        """Field ``field`` of night ``j`` for every series (float64; read-only when a view)."""
        arr = self.arrs[j]
        if self._aligned[j]:
            return arr[R[field], 1:]
        pos = self._positions(j)
        out = np.full(len(self.ids), MISSING[field])
        ok = pos >= 0
        out[ok] = arr[R[field], 1 + pos[ok]]
        return out

    def block(self, j: int, field: str, n: int) -> np.ndarray:
        """[n, series]: the ``n`` consecutive fields from ``field`` of night ``j``."""
        arr = self.arrs[j]
        r = R[field]
        if self._aligned[j]:
            return arr[r : r + n, 1:]
        return np.vstack([self.night(j, f) for f in ROWS[r : r + n]])

    def take(self, idx: np.ndarray, fields: Sequence[str] = FIELDS) -> dict[str, np.ndarray]:
        """[len(idx), night] float64 arrays of ``fields`` for the series ``idx``."""
        idx = np.asarray(idx, np.int64)
        N = len(self.arrs)
        out = {f: np.empty((N, len(idx))) for f in fields}
        for j, arr in enumerate(self.arrs):
            if self._aligned[j]:
                for f in fields:
                    out[f][j] = arr[R[f], 1 + idx]
                continue
            pos = self._positions(j)[idx]
            ok = pos >= 0
            for f in fields:
                out[f][j] = MISSING[f]
                out[f][j, ok] = arr[R[f], 1 + pos[ok]]
        return {f: a.T for f, a in out.items()}

    def rows(self, r0: int, r1: int, fields: Sequence[str] = FIELDS) -> dict[str, np.ndarray]:
        """[series r0..r1, night] float64 arrays of ``fields``."""
        S_, N = r1 - r0, len(self.arrs)
        # filled night by night as contiguous rows of [night, series], returned transposed
        out = {f: np.empty((N, S_)) for f in fields}
        for j, (arr, aligned) in enumerate(zip(self.arrs, self._aligned, strict=True)):
            if aligned:
                for f in fields:
                    out[f][j] = arr[R[f], 1 + r0 : 1 + r1]
                continue
            pos = self._positions(j)[r0:r1]
            ok = pos >= 0
            for f in fields:
                out[f][j] = MISSING[f]
                out[f][j, ok] = arr[R[f], 1 + pos[ok]]
        return {f: a.T for f, a in out.items()}


def _aligned(arr: np.ndarray, ids: np.ndarray, h: float) -> bool:
    """Does the night's matrix hold exactly the series ``ids``, in this order (``h``: their
    :func:`ids_hash`)? Files with the hash in their header are checked without reading the ids."""
    if arr.shape[1] != len(ids) + 1:
        return False
    stored = float(arr[R["e_first_t"], 0])
    if stored:
        return stored == h
    return bool(np.array_equal(arr[R["id"], 1:], ids.astype(np.float64)))


def _point(keys: Sequence[str]) -> str:
    """The point name shared by ``keys`` (``energy_wh``): roll-ups are kept per point."""
    if keys and (keys[0].endswith("/energy_wh") or keys[0].endswith("/power_w")) and len(keys) > 1000:
        # a city's key list: check a sample fast, then all with one string operation
        name = keys[0].rsplit("/", 1)[1]
        if "".join(k[-len(name) - 1 :] for k in keys) == ("/" + name) * len(keys):
            return name
    if keys:
        name = keys[0].rsplit("/", 1)[-1]
        suffix = "/" + name
        if all(k.endswith(suffix) for k in keys):
            return name
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
