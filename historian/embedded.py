# One module (over ~600 lines): one storage backend (segments, manifest, compaction, queries) behind the historian interface.
"""The embedded historian: immutable Parquet segments in one directory, queried with DuckDB.

Why this engine (measurements in docs/historian.md): SQLite with an index slows from
~280,000 to ~62,000 rows/s as the table grows, a single DuckDB database file admits one
writing process only, while DuckDB writes numpy columns to a zstd Parquet file at tens of
millions of points/s and scans many Parquet files in parallel. So every flushed block becomes
one *immutable* file, written to a temporary name, fsynced and renamed into place:

* ingest cost does not depend on the size of the store (no index to maintain);
* any other process (``scada report``, ``scada history``) reads a consistent set of files while
  the server writes - nothing is ever modified in place;
* sorted (series, time) columns with zstd and delta encoding give ~1-2 bytes/point for slowly
  changing values.

Layout of ``<dir>``::

    series.tsv                       append-only "id<TAB>tag path" lines
    blocks.log                       batch ids of the last stored blocks (idempotent replays)
    segments/<seq>_<tmin>_<tmax>_<batch>.parquet       one per written block
    segments/c<seqlo>-<seqhi>_<tmin>_<tmax>.parquet    compaction of blocks seqlo..seqhi
    writer.lock                      held (flock) by the one writing process

Times are stored as int64 microseconds (``t``), the series as uint32 (``sid``), the value as
double (``v``), the OPC UA status code as uint32 (``q``) and the block number as uint32 (``b``,
constant per block: run-length encoded to almost nothing). Same (series, time) written twice:
the later block wins (overwrite) when reading raw values. Compaction only concatenates (12 M
points/s here; a de-duplicating GROUP BY ran at 0.4 M/s), rows keep their ``b``. A block whose batch id is
already stored is skipped, so spool replays after a crash are idempotent.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np

from scada.files import replace_text

from .base import Backend, BackendUnavailable, Buckets, HistorianError, Points, Raw

log = logging.getLogger("historian.embedded")

_SEG = re.compile(r"^(?:(\d+)|c(\d+)-(\d+))_(-?\d+)_(-?\d+)(?:_([A-Za-z0-9]+))?\.parquet$")
US = 1_000_000


@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    lo: int  # first block sequence number covered
    hi: int  # last block sequence number covered
    tmin: int  # microseconds
    tmax: int
    batch: str
    compacted: bool


def parse_segment(name: str) -> Segment | None:
    m = _SEG.match(name)
    if not m:
        return None
    if m.group(1) is not None:
        lo = hi = int(m.group(1))
        comp = False
    else:
        lo, hi = int(m.group(2)), int(m.group(3))
        comp = True
    return Segment(name, lo, hi, int(m.group(4)), int(m.group(5)), m.group(6) or "", comp)


def live_segments(names: Sequence[str]) -> list[Segment]:
    """The segments a reader should use: a block covered by a compaction is left out.

    Compaction writes the merged file before deleting its sources, so for a moment both exist;
    sequence ranges make the choice unambiguous without any manifest.
    """
    segs = [s for s in (parse_segment(n) for n in names) if s is not None]
    comps = sorted((s for s in segs if s.compacted), key=lambda s: (s.lo, -s.hi))
    ranges: list[tuple[int, int]] = []
    for c in comps:
        if ranges and c.lo >= ranges[-1][0] and c.hi <= ranges[-1][1]:
            continue
        ranges.append((c.lo, c.hi))
    out = []
    for s in segs:
        covered = any(lo <= s.lo and s.hi <= hi and (lo, hi) != (s.lo, s.hi) for lo, hi in ranges)
        if s.compacted and (s.lo, s.hi) in ranges and not covered:
            out.append(s)
        elif not s.compacted and not covered:
            out.append(s)
    out.sort(key=lambda s: s.lo)
    return out


class EmbeddedBackend(Backend):
    """Parquet segments + DuckDB. Options: ``compact_after`` (blocks, default 64),
    ``zstd_level`` (default 3), ``fsync`` (default true), ``remember_batches`` (default 10,000:
    batch ids kept, in memory and in ``blocks.log``, to skip replayed blocks; a spool replays
    only blocks written since its last acknowledgement, so a few would do)."""

    name = "embedded"

    def _install(self, tmp: str, name: str) -> None:
        """Make a finished segment file durable (fsync if configured) and visible atomically
        under its final name: readers never see a partial segment."""
        if self.fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, os.path.join(self.segdir, name))
    def __init__(self, path: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(path, options)
        self.segdir = os.path.join(path, "segments")
        self.compact_after = int(self.options.get("compact_after", 64))
        self.fsync = bool(self.options.get("fsync", True))
        self.zstd_level = int(self.options.get("zstd_level", 3))
        # no external file cache: it does not cache local files anyway, but keeps an entry for
        # every Parquet file ever read, and compaction keeps making and deleting files (~2 MB/h)
        self._con = duckdb.connect(":memory:", config={"threads": int(self.options.get("threads", 2)),
                                                      "enable_external_file_cache": False})
        self._lock = threading.Lock()
        # series ids are read by query threads while the writer thread adds new ones
        self._series_lock = threading.RLock()
        self._lockfile: int | None = None
        self._sid: dict[str, int] = {}
        self._keys: list[str] = []
        self._series_size = -1
        self._seq = -1
        # the last ``remember_batches`` batch ids written, oldest first: one block a second is
        # 31 M ids a year, so neither this nor blocks.log may keep them all
        self.remember_batches = max(1, int(self.options.get("remember_batches", 10_000)))
        self._batches: OrderedDict[str, None] = OrderedDict()
        self._log_lines = 0
        self.written_points = 0

    def describe(self) -> str:
        return f"embedded (Parquet segments + DuckDB {duckdb.__version__}) at {self.path}"

    # ------------------------------------------------------------------ series ids
    def _series_path(self) -> str:
        return os.path.join(self.path, "series.tsv")

    def _load_series(self) -> None:
        with self._series_lock:
            self._load_series_locked()

    def _load_series_locked(self) -> None:
        p = self._series_path()
        try:
            size = os.path.getsize(p)
        except FileNotFoundError:
            return
        if size == self._series_size:
            return
        with open(p, encoding="utf-8") as f:
            data = f.read()
        keys: dict[str, int] = {}
        for line in data.splitlines():
            sid, sep, key = line.partition("\t")
            if sep and sid.isdigit():  # a torn last line (crash mid-append) is ignored
                keys[key] = int(sid)
        self._sid = keys
        n = max(keys.values(), default=-1) + 1
        self._keys = [""] * n
        for k, i in keys.items():
            self._keys[i] = k
        self._series_size = size

    def _ids(self, keys: Sequence[str]) -> np.ndarray:
        with self._series_lock:
            return self._ids_locked(keys)

    def _ids_locked(self, keys: Sequence[str]) -> np.ndarray:
        self._load_series_locked()
        new = [k for k in dict.fromkeys(keys) if k not in self._sid]
        if new:
            start = len(self._keys)
            lines = []
            for j, k in enumerate(new):
                if "\t" in k or "\n" in k:
                    raise HistorianError(f"series key {k!r} contains a tab or newline")
                lines.append(f"{start + j}\t{k}\n")
            with open(self._series_path(), "a", encoding="utf-8") as f:
                f.write("".join(lines))
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            for j, k in enumerate(new):
                self._sid[k] = start + j
                self._keys.append(k)
            self._series_size = os.path.getsize(self._series_path())
        return np.array([self._sid[k] for k in keys], dtype=np.uint32)

    # ------------------------------------------------------------------ writing
    def _open_writer(self) -> None:
        if self._lockfile is not None:
            return
        os.makedirs(self.segdir, exist_ok=True)
        fd = os.open(os.path.join(self.path, "writer.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise HistorianError(
                f"historian directory {self.path} is being written by another process "
                "(writer.lock is held); stop the other server or give this one its own directory"
            ) from None
        self._lockfile = fd
        names = os.listdir(self.segdir)
        for n in names:
            if n.startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.segdir, n))  # torn write from a crash
        segs = [s for s in (parse_segment(n) for n in names) if s is not None]
        self._seq = max((s.hi for s in segs), default=-1)
        # batch ids of blocks already folded into compactions (replays after a crash skip them)
        try:
            with open(os.path.join(self.path, "blocks.log"), encoding="utf-8") as f:
                lines = [ln.strip() for ln in f if ln.strip()]
        except FileNotFoundError:
            lines = []
        self._log_lines = len(lines)
        for b in lines[-self.remember_batches:]:
            self._remember(b)
        for s in sorted((s for s in segs if s.batch), key=lambda s: s.lo):
            self._remember(s.batch)

    def _remember(self, batch: str) -> None:
        self._batches[batch] = None
        self._batches.move_to_end(batch)
        while len(self._batches) > self.remember_batches:
            self._batches.popitem(last=False)

    def _log_batch(self, batch: str) -> None:
        """Append ``batch`` to blocks.log; past twice ``remember_batches`` lines, rewrite it
        (atomically) with the ids still remembered, so the file stays bounded too."""
        log_path = os.path.join(self.path, "blocks.log")
        if self._log_lines >= 2 * self.remember_batches:
            replace_text(log_path, "".join(b + "\n" for b in self._batches), self.fsync)
            self._log_lines = len(self._batches)
            return
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(batch + "\n")
        self._log_lines += 1

    def write(self, points: Points, batch_id: str) -> None:
        """Write one block as one immutable segment (see module doc)."""
        if not len(points):
            return
        batch = re.sub(r"[^A-Za-z0-9]", "", batch_id)[:40]
        with self._lock:
            try:
                self._open_writer()
                if batch and batch in self._batches:
                    return
                sids = self._ids(points.keys)[points.sid]
                t = np.round(points.t * US).astype(np.int64)
                order = np.lexsort((t, sids))
                sids, t = sids[order], t[order]
                v, q = points.v[order], points.q[order]
                # same series and time inside one block: the later point wins
                dup = (sids[1:] == sids[:-1]) & (t[1:] == t[:-1])
                if dup.any():
                    keep = np.ones(len(t), bool)
                    # lexsort is stable: among equal keys the original order is kept, so the
                    # last of a run is the latest write
                    keep[:-1][dup] = False
                    sids, t, v, q = sids[keep], t[keep], v[keep], q[keep]
                self._seq += 1
                name = f"{self._seq:010d}_{int(t.min())}_{int(t.max())}_{batch or 'x'}.parquet"
                self._copy({"sid": sids, "t": t, "v": v, "q": q,
                            "b": np.full(len(t), self._seq, np.uint32)}, name)
                if batch:
                    self._remember(batch)
                    self._log_batch(batch)
                self.written_points += len(t)
            except (OSError, duckdb.IOException) as e:
                raise BackendUnavailable(
                    f"embedded historian cannot write to {self.segdir}: {e}; points stay in the "
                    "spool and are replayed when the directory is writable again"
                ) from e
        if self.compact_after and self._seq % self.compact_after == self.compact_after - 1:
            self.compact()

    def _copy(self, data: dict[str, np.ndarray], name: str) -> None:
        tmp = os.path.join(self.segdir, f".tmp-{name}")
        cur = self._con.cursor()
        try:
            cur.register("_block", _relation(cur, data))
            cur.execute(
                f"COPY (SELECT sid::UINTEGER AS sid, t, v, q::UINTEGER AS q, b::UINTEGER AS b FROM _block) TO '{tmp}' "
                f"(FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL {self.zstd_level}, "
                "ROW_GROUP_SIZE 122880)"
            )
        finally:
            cur.close()
        self._install(tmp, name)

    def compact(self, min_blocks: int = 8, fan_in: int = 8, max_level: int = 4) -> int:
        """Merge the uncompacted blocks into one file, then merge runs of ``fan_in`` compacted
        files of the same level (level = log_fan_in of blocks covered / min_blocks) into the
        next level, up to ``max_level``; so a year of one-second blocks stays a few dozen files.

        Returns the number of raw blocks merged. Readers never see a partial state: a merged
        file appears (rename) before its sources are deleted, and :func:`live_segments`
        prefers it from that moment. Rows keep their block number ``b``.
        """
        with self._lock:
            self._open_writer()
            segs = live_segments(os.listdir(self.segdir))
            raw = [s for s in segs if not s.compacted]
            if len(raw) < min_blocks:
                return 0
            if not self._merge(raw):
                return 0
            merged = len(raw)
            while True:  # tiers
                comps = [s for s in live_segments(os.listdir(self.segdir)) if s.compacted]

                def level(sg: Segment) -> int:
                    return int(np.log((sg.hi - sg.lo + 1) / max(min_blocks, 1)) / np.log(fan_in) + 1e-9)

                run: list[Segment] = []
                for sg in comps:
                    if run and (level(sg) != level(run[-1]) or sg.lo != run[-1].hi + 1):
                        run = []
                    run.append(sg)
                    if len(run) == fan_in:
                        break
                if len(run) < fan_in or level(run[0]) >= max_level or not self._merge(run):
                    return merged

    def _merge(self, segs: list[Segment]) -> bool:
        files = [os.path.join(self.segdir, sg.name) for sg in segs]
        lo, hi = segs[0].lo, segs[-1].hi
        tmin, tmax = min(sg.tmin for sg in segs), max(sg.tmax for sg in segs)
        name = f"c{lo:010d}-{hi:010d}_{tmin}_{tmax}.parquet"
        tmp = os.path.join(self.segdir, f".tmp-{name}")
        cur = self._con.cursor()
        try:
            # plain concatenation: every row keeps its block number ``b``, which decides
            # between two values of the same series and time at read time (later wins)
            cur.execute(
                f"COPY (SELECT sid, t, v, q, b FROM read_parquet({files!r})) "
                f"TO '{tmp}' (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL {self.zstd_level}, "
                "ROW_GROUP_SIZE 122880)"
            )
        except duckdb.Error as e:
            log.warning("compaction of blocks %d-%d failed (%s); will retry later", lo, hi, e)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            return False
        finally:
            cur.close()
        self._install(tmp, name)
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f)
        return True

    # ------------------------------------------------------------------ reading
    def _files(self, t0: float | None = None, t1: float | None = None) -> list[str]:
        try:
            names = os.listdir(self.segdir)
        except FileNotFoundError:
            return []
        a = -(2**62) if t0 is None else int(t0 * US)
        b = 2**62 if t1 is None else int(t1 * US)
        return [os.path.join(self.segdir, s.name) for s in live_segments(names)
                if s.tmax >= a and s.tmin < b]

    def _query(self, sql_of, t0: float | None, t1: float | None, params: list[Any]) -> dict[str, np.ndarray] | None:
        """Run a query over the live files; retried once if compaction removed a file."""
        for attempt in range(3):
            files = self._files(t0, t1)
            if not files:
                return None
            cur = self._con.cursor()
            try:
                return cur.execute(sql_of(files), params).fetchnumpy()
            except duckdb.IOException:
                if attempt == 2:
                    raise
            finally:
                cur.close()
        return None

    def series(self, pattern: str | None = None) -> list[str]:
        self._load_series()
        keys = sorted(self._sid)
        return [k for k in keys if fnmatch.fnmatchcase(k, pattern)] if pattern else keys

    def read_raw(self, key: str, t0: float, t1: float, limit: int | None = None) -> Raw:
        self._load_series()
        sid = self._sid.get(key)
        if sid is None:
            return Raw.empty()
        lim = f" LIMIT {int(limit)}" if limit else ""
        res = self._query(
            lambda files: "SELECT t, arg_max(v, b) AS v, arg_max(q, b) AS q "
            f"FROM read_parquet({files!r}) WHERE sid = ? AND t >= ? AND t < ? "
            f"GROUP BY t ORDER BY t{lim}",
            t0, t1, [sid, int(t0 * US), int(t1 * US)],
        )
        if res is None or len(res["t"]) == 0:
            return Raw.empty()
        return Raw(np.asarray(res["t"], np.int64) / US, _floats(res["v"]),
                   np.asarray(res["q"], np.uint32))

    def has_batch(self, batch_id: str) -> bool:
        batch = re.sub(r"[^A-Za-z0-9]", "", batch_id)[:40]
        with self._lock:
            self._open_writer()
            return bool(batch) and batch in self._batches

    def read_many(self, keys: Sequence[str], t0: float, t1: float) -> Points:
        """One scan for many series, sorted by (series in the order of ``keys``, time); of a same
        (series, time) written by several blocks the later block's reading is kept.

        DuckDB only filters and fetches (an ORDER BY of a night of a city, millions of rows, cost
        3-6x more here); numpy sorts one int64 key (series, time) with a stable sort, which is
        fast on the runs the segments already hold (each block is sorted by series and time)."""
        self._load_series()
        empty = Points(list(keys), np.zeros(0, np.int32), np.zeros(0), np.zeros(0), np.zeros(0, np.uint32))
        known = [(i, self._sid[k]) for i, k in enumerate(keys) if k in self._sid]
        if not known:
            return empty
        sid_arr = np.array([s for _, s in known], dtype=np.uint32)
        local = np.full(int(sid_arr.max()) + 1, -1, np.int64)
        local[sid_arr] = [i for i, _ in known]
        everything = len(known) == len(self._sid)
        sel = "TRUE" if everything else "sid IN (SELECT unnest(?::UINTEGER[]))"
        params = [] if everything else [sid_arr.tolist()]
        a_us, b_us = round(t0 * US), round(t1 * US)
        res = self._query(
            lambda files: f"SELECT sid, t, v, q, b FROM read_parquet({files!r}) WHERE t >= {a_us} "
            f"AND t < {b_us} AND {sel}", t0, t1, params)
        if res is None or len(res["t"]) == 0:
            return empty
        sid = np.asarray(res["sid"], np.int64)
        ls = local[np.minimum(sid, len(local) - 1)]
        ls[sid >= len(local)] = -1
        t = np.asarray(res["t"], np.int64)
        keep = ls >= 0
        if not keep.all():
            ls, t = ls[keep], t[keep]
        lo = int(t.min())
        span = int(t.max()) - lo + 1
        if len(keys) * span < 2**62:
            key = ls * span + (t - lo)
            order = np.argsort(key, kind="stable")
            k = key[order]
        else:  # a very long range of many series: two keys
            order = np.lexsort((t, ls))
            k = None
        blk = np.asarray(res["b"], np.int64)
        blk = blk if keep.all() else blk[keep]
        if k is None:
            dup = (ls[order][1:] == ls[order][:-1]) & (t[order][1:] == t[order][:-1])
        else:
            dup = k[1:] == k[:-1]
        if dup.any():  # same series and time from several blocks: sort those by block too
            order = np.lexsort((blk, t, ls))
            s2, t2 = ls[order], t[order]
            last = np.ones(len(order), bool)
            last[:-1] = (s2[1:] != s2[:-1]) | (t2[1:] != t2[:-1])
            order = order[last]
        v = _floats(res["v"])
        q = np.asarray(res["q"], np.uint32)
        if not keep.all():
            v, q = v[keep], q[keep]
        return Points(list(keys), ls[order].astype(np.int32), t[order] / US, v[order], q[order])

    def buckets(self, keys: Sequence[str], edges: np.ndarray, counter: bool = False) -> Buckets:
        """Summaries pushed down to DuckDB: one pass over the segments, grouped by series and
        bucket; buckets where the value went down are flagged non-monotonic. ``counter``: the
        cheaper form for accumulating counters (see the SQL)."""
        self._load_series()
        keys = [k for k in keys if k in self._sid]
        edges_us = np.round(np.asarray(edges, np.float64) * US).astype(np.int64)
        if not keys or len(edges_us) < 2:
            return _empty_buckets(keys)
        sid_arr = np.array([self._sid[k] for k in keys], dtype=np.uint32)
        local = np.full(max(self._sid.values()) + 1, -1, np.int64)
        local[sid_arr] = np.arange(len(keys))
        sel = ("sid IN (SELECT unnest(?::UINTEGER[]))" if len(keys) < len(self._sid) else "TRUE")
        good = "(q & 2147483648::UINTEGER) = 0"

        bucket = _bucket_sql(edges_us)
        rng = f"t >= {int(edges_us[0])} AND t < {int(edges_us[-1])} AND {sel}"
        def sql(files: list[str]) -> str:
            src = f"read_parquet({files!r})"
            if counter:
                # counters: first/last of a monotonic night are its min/max; a reset shows as a
                # night whose min is below the previous night's max, and the KPI re-reads those
                # series raw. ~3x cheaper than arg_min/arg_max (56 M values/s here)
                return (
                    f"SELECT sid, {bucket} AS bucket, min(t) AS first_t, min(v) AS first_v, max(t) AS last_t, "
                    "max(v) AS last_v, min(v) AS vmin, max(v) AS vmax, count(*) AS cnt, 0 AS bad "
                    f"FROM {src} WHERE {rng} AND {good} GROUP BY ALL ORDER BY sid, bucket"
                )
            return (
                "SELECT sid, bucket, "
                f"min(t) FILTER (WHERE {good}) AS first_t, arg_min(v, t) FILTER (WHERE {good}) AS first_v, "
                f"max(t) FILTER (WHERE {good}) AS last_t, arg_max(v, t) FILTER (WHERE {good}) AS last_v, "
                f"min(v) FILTER (WHERE {good}) AS vmin, max(v) FILTER (WHERE {good}) AS vmax, "
                f"count(*) FILTER (WHERE {good}) AS cnt, count(*) FILTER (WHERE NOT {good}) AS bad "
                f"FROM (SELECT sid, t, v, q, {bucket} AS bucket FROM {src} WHERE {rng}) "
                "GROUP BY ALL ORDER BY sid, bucket"
            )

        params = [sid_arr.tolist()] if len(keys) < len(self._sid) else []
        res = self._query(sql, float(edges[0]), float(edges[-1]), params)
        if res is None:
            return _empty_buckets(keys)
        return _to_buckets(keys, local[np.asarray(res["sid"], np.int64)], res)

    def stats(self) -> dict[str, float]:
        files = self._files()
        size = 0
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                size += os.path.getsize(f)
        return {"segments": float(len(files)), "disk_bytes": float(size),
                "written_points": float(self.written_points)}

    def count(self) -> int:
        res = self._query(lambda files: f"SELECT count(*) AS n FROM read_parquet({files!r})", None, None, [])
        return 0 if res is None else int(res["n"][0])

    def close(self) -> None:
        with self._lock:
            if self._lockfile is not None:
                fcntl.flock(self._lockfile, fcntl.LOCK_UN)
                os.close(self._lockfile)
                self._lockfile = None
            self._con.close()


def _relation(cur: duckdb.DuckDBPyConnection, data: dict[str, np.ndarray]) -> Any:
    """A DuckDB relation over numpy columns (zero copy; no pandas or pyarrow needed)."""
    _block = data
    return cur.sql("SELECT * FROM _block")


def _bucket_sql(edges_us: np.ndarray) -> str:
    """SQL for "index of the bucket [edges[k], edges[k+1]) holding t" without a join.

    Edges are nearly evenly spaced (local noons: 24 h apart, 23 or 25 h at DST changes). For a
    regular bucket k, ``(t - e0 + rel_k) // span`` is exact with ``rel_k = span*k - (e_k - e0)``,
    constant between irregular buckets; irregular buckets are matched by an explicit range.
    """
    e = [int(x) for x in edges_us]
    e0 = e[0]
    nb = len(e) - 1
    if nb <= 1:
        return "0"
    span = int(np.median(np.diff(edges_us)))
    irregular = [k for k in range(nb) if e[k + 1] - e[k] != span]
    case = [f"WHEN t >= {e[k]} AND t < {e[k + 1]} THEN {k}" for k in irregular]
    rel_parts = []
    prev_rel = None
    for k in range(nb):
        rel = span * k - (e[k] - e0)
        if rel != prev_rel:
            rel_parts.append((e[k], rel))
            prev_rel = rel
    if len(rel_parts) == 1:
        rel_sql = str(rel_parts[0][1])
    else:
        rel_sql = "CASE " + " ".join(f"WHEN t < {rel_parts[i + 1][0]} THEN {rel_parts[i][1]}"
                                     for i in range(len(rel_parts) - 1)) + f" ELSE {rel_parts[-1][1]} END"
    arith = f"((t - {e0} + {rel_sql}) // {span})"
    return f"(CASE {' '.join(case)} ELSE {arith} END)" if case else arith


def _floats(a: Any) -> np.ndarray:
    """A fetched column as float64 with SQL NULL (DuckDB reads NaN from numpy as NULL) -> NaN."""
    if isinstance(a, np.ma.MaskedArray):
        return a.astype(np.float64).filled(np.nan)
    return np.asarray(a, np.float64)


def _empty_buckets(keys: Sequence[str]) -> Buckets:
    z = np.zeros(0)
    return Buckets(list(keys), np.zeros(0, np.int64), np.zeros(0, np.int64), z, z, z, z, z, z,
                   np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool))


def _to_buckets(keys: Sequence[str], sid: np.ndarray, res: dict[str, Any]) -> Buckets:
    def f(name: str) -> np.ndarray:
        return _floats(res[name])

    first_t, last_t = f("first_t") / US, f("last_t") / US
    first_v, last_v, vmin, vmax = f("first_v"), f("last_v"), f("vmin"), f("vmax")
    cnt = np.nan_to_num(f("cnt")).astype(np.int64)
    bad = np.nan_to_num(f("bad")).astype(np.int64)
    # monotonic: the series never went down inside the bucket, as far as min/max can tell
    mono = (np.isnan(vmin) | ((vmin >= first_v) & (vmax <= last_v)))
    return Buckets(list(keys), sid.astype(np.int64), np.asarray(res["bucket"], np.int64),
                   first_t, first_v, last_t, last_v, vmin, vmax, cnt, bad, mono)
