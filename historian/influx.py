"""The ``influx`` backend: InfluxDB line protocol over the InfluxDB v2 write API.

Works with any server speaking ``POST /api/v2/write``: InfluxDB 2.x/3.x, VictoriaMetrics
single-node or cluster (vminsert) - how a metropolis scales the historian past one machine.

Why plain HTTP (``urllib`` in the service's worker thread) rather than influxdb-client's write
API: the client's batching buffer lives in memory and drops a batch after its retries (only a
log line and an error callback tell), and ``flush()`` does not flush in some releases; building
``Point`` objects runs at ~66,000 points/s. Here the disk spool owns durability, lines are built
in bulk from the numpy block (~1 M points/s, see bench/historian.py), and every HTTP outcome is
classified as in Telegraf's ``outputs/influxdb_v2``:

* 2xx - stored; 413 (payload too large) - the batch is split in two and both halves retried;
* 429 / 5xx / connection errors, and 401/403/404/405 (token, bucket or URL to fix: the data is
  fine) - :class:`BackendUnavailable` with the server's ``Retry-After`` when given (the block
  stays spooled; the forwarder backs off);
* 400 / 422 / other 4xx - :class:`BackendRejected` (bad data; the block is set aside and logged).

Series model: measurement ``scada`` (option ``measurement``), tag ``tag=<tag path>``, fields
``v`` (float) and ``q`` (OPC UA status code, integer), timestamp in milliseconds (option
``precision``). VictoriaMetrics turns these into metrics ``scada_v`` and ``scada_q`` with label
``tag``; it does not keep the bucket name as a label, so give each site its own
``measurement`` when several share one VictoriaMetrics. Same series and time overwrite in
InfluxDB; in VictoriaMetrics run with ``-dedup.minScrapeInterval=1ms`` to get the same.

Queries: VictoriaMetrics' ``/api/v1/export`` (raw samples, one JSON line per series) and
``/api/v1/label/tag/values``; InfluxDB 2.x through Flux on ``/api/v2/query`` (option
``flavor: influxdb2``). See docs/historian.md for what was tested against which server.
"""

from __future__ import annotations

import fnmatch
import gzip
import http.client
import json
import logging
import math
import re
import time as _time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import Backend, BackendRejected, BackendUnavailable, Buckets, Points, Raw
from .query import buckets_from_raw

log = logging.getLogger("historian.influx")

_ESC = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\="})
_PREC = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def escape_tag(value: str) -> str:
    """Escape a tag key/value for line protocol (comma, space, equals sign)."""
    return value.translate(_ESC)


def line_protocol(points: Points, measurement: str = "scada", precision: str = "ms") -> list[bytes]:
    """Build line-protocol lines for a block, one per point (bulk, no per-point objects).

    NaN/inf values carry only the ``q`` field (a line needs at least one field; line protocol
    has no NaN).
    """
    mult = _PREC[precision]
    prefixes = [f"{escape_tag(measurement)},tag={escape_tag(k)} " for k in points.keys]
    pref = [prefixes[i] for i in points.sid.tolist()]
    ts = np.round(points.t * mult).astype(np.int64).tolist()
    qs = points.q.tolist()
    vals = points.v
    finite = np.isfinite(vals)
    vs = vals.tolist()
    if finite.all():
        text = "".join([f"{p}v={v!r},q={q}i {t}\n" for p, v, q, t in zip(pref, vs, qs, ts, strict=True)])
    else:
        fl = finite.tolist()
        text = "".join([
            (f"{p}v={v!r},q={q}i {t}\n" if f else f"{p}q={q}i {t}\n")
            for p, v, q, t, f in zip(pref, vs, qs, ts, fl, strict=True)
        ])
    return [text.encode()]


class InfluxBackend(Backend):
    """Options: ``url`` (required), ``token``, ``org``, ``bucket`` (default ``scada``),
    ``measurement``, ``precision`` (ms), ``flavor`` (``victoriametrics`` | ``influxdb2``),
    ``batch_lines`` (50,000), ``timeout`` (s), ``gzip`` (true), ``retries`` (2)."""

    name = "influx"

    def __init__(self, path: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(path, options)
        o = self.options
        if not o.get("url"):
            raise ValueError(
                "historian backend 'influx' needs historian.options.url "
                "(e.g. http://127.0.0.1:8428 for VictoriaMetrics, http://127.0.0.1:8086 for InfluxDB)"
            )
        self.url = str(o["url"]).rstrip("/")
        self.token = str(o.get("token", ""))
        self.org = str(o.get("org", ""))
        self.bucket = str(o.get("bucket", "scada"))
        self.measurement = str(o.get("measurement", "scada"))
        self.precision = str(o.get("precision", "ms"))
        if self.precision not in _PREC:
            raise ValueError(f"historian.options.precision must be one of {sorted(_PREC)}")
        self.flavor = str(o.get("flavor", "victoriametrics"))
        if self.flavor not in ("victoriametrics", "influxdb2"):
            raise ValueError("historian.options.flavor must be 'victoriametrics' or 'influxdb2'")
        self.batch_lines = int(o.get("batch_lines", 50_000))
        self.timeout = float(o.get("timeout", 10.0))
        self.gzip = bool(o.get("gzip", True))
        self.retries = int(o.get("retries", 2))
        self.requests = 0
        self.written_points = 0

    def describe(self) -> str:
        return f"influx line protocol to {self.url} ({self.flavor}, bucket {self.bucket})"

    # ------------------------------------------------------------------ HTTP
    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"User-Agent": "city-scada-historian"}
        if self.token:
            h["Authorization"] = f"Token {self.token}"
        h.update(extra or {})
        return h

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers=self._headers(headers))
        self.requests += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers or {})
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            # HTTPException: the server closed or garbled the answer (e.g. stopped mid-request)
            raise BackendUnavailable(f"historian server {self.url} unreachable: {e!r}") from e

    # ------------------------------------------------------------------ writing
    def write(self, points: Points, batch_id: str) -> None:
        if not len(points):
            return
        n = len(points)
        for a in range(0, n, self.batch_lines):
            sl = slice(a, min(n, a + self.batch_lines))
            part = Points(points.keys, points.sid[sl], points.t[sl], points.v[sl], points.q[sl])
            self._post(part, depth=0)
        self.written_points += n

    def _post(self, part: Points, depth: int) -> None:
        body = b"".join(line_protocol(part, self.measurement, self.precision))
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.gzip:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        q = urllib.parse.urlencode({"org": self.org, "bucket": self.bucket, "precision": self.precision})
        delay = 0.2
        for attempt in range(self.retries + 1):
            status, text, hdrs = self._request("POST", f"/api/v2/write?{q}", body, headers)
            action = classify(status, len(part))
            if action == "ok":
                return
            msg = text[:300].decode(errors="replace")
            if action == "split":
                half = len(part) // 2
                log.info("historian server says batch of %d lines too large; splitting", len(part))
                for sl in (slice(0, half), slice(half, len(part))):
                    self._post(Points(part.keys, part.sid[sl], part.t[sl], part.v[sl], part.q[sl]), depth + 1)
                return
            if action == "retry":
                retry_after = _retry_after(hdrs)
                if attempt < self.retries and (retry_after or 0) <= 1.0:
                    _time.sleep(retry_after or delay)  # worker thread, not the event loop
                    delay *= 2
                    continue
                raise BackendUnavailable(f"historian server {self.url} answered {status}: {msg}",
                                         retry_after=retry_after)
            raise BackendRejected(f"historian server {self.url} refused {len(part)} points "
                                  f"with HTTP {status}: {msg}")

    def flush(self) -> None:
        """Make written samples searchable now (VictoriaMetrics buffers for a few seconds)."""
        if self.flavor == "victoriametrics":
            self._request("GET", "/internal/force_flush")

    # ------------------------------------------------------------------ reading
    def series(self, pattern: str | None = None) -> list[str]:
        if self.flavor == "influxdb2":
            rows = self._flux(
                f'import "influxdata/influxdb/schema"\n'
                f'schema.tagValues(bucket: "{self.bucket}", tag: "tag", '
                f'predicate: (r) => r._measurement == "{self.measurement}", start: 0)'
            )
            keys = sorted(r["_value"] for r in rows)
        else:
            q = urllib.parse.urlencode({"match[]": f"{self.measurement}_q", "start": "0"})
            status, text, _ = self._request("GET", f"/api/v1/label/tag/values?{q}")
            self._check(status, text)
            keys = sorted(json.loads(text)["data"])
        return [k for k in keys if fnmatch.fnmatchcase(k, pattern)] if pattern else keys

    def read_raw(self, key: str, t0: float, t1: float, limit: int | None = None) -> Raw:
        if self.flavor == "influxdb2":
            return self._read_flux(key, t0, t1, limit)
        got = self._export([key], t0, t1)
        raw = got.get(key, Raw.empty())
        if limit and len(raw) > limit:
            raw = Raw(raw.t[:limit], raw.v[:limit], raw.q[:limit])
        return raw

    def _export(self, keys: Sequence[str], t0: float, t1: float) -> dict[str, Raw]:
        """Raw samples of many series in one request (VictoriaMetrics /api/v1/export)."""
        out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        rx = "|".join(re.escape(k) for k in keys)
        match = f'{{__name__=~"{self.measurement}_(v|q)",tag=~"{_promql_str(rx)}"}}'
        q = urllib.parse.urlencode({"match[]": match, "start": f"{t0:.3f}",
                                    "end": f"{max(t0, t1 - 0.001):.3f}"})
        status, text, _ = self._request("GET", f"/api/v1/export?{q}")
        self._check(status, text)
        for line in text.splitlines():
            if not line.strip():
                continue
            d = json.loads(line)
            name = d["metric"]["__name__"].rsplit("_", 1)[1]
            key = d["metric"]["tag"]
            ts = np.asarray(d["timestamps"], np.int64)
            vs = np.asarray(d["values"], np.float64)
            prev = out.setdefault(key, {}).get(name)
            if prev is not None:
                ts, vs = np.concatenate((prev[0], ts)), np.concatenate((prev[1], vs))
            out[key][name] = (ts, vs)
        res: dict[str, Raw] = {}
        for key, f in out.items():
            tq, vq = f.get("q", (np.zeros(0, np.int64), np.zeros(0)))
            tv, vv = f.get("v", (np.zeros(0, np.int64), np.zeros(0)))
            t_all = np.union1d(tq, tv)
            v = np.full(len(t_all), np.nan)
            q = np.zeros(len(t_all), np.uint32)
            v[np.searchsorted(t_all, tv)] = vv
            q[np.searchsorted(t_all, tq)] = vq.astype(np.uint32)
            t = t_all / 1000.0
            keep = (t >= t0) & (t < t1)
            res[key] = Raw(t[keep], v[keep], q[keep])
        return res

    def buckets(self, keys: Sequence[str], edges: np.ndarray, counter: bool = False) -> Buckets:
        if self.flavor == "influxdb2":
            return buckets_from_raw(self, keys, edges)
        cache: dict[str, Raw] = {}
        for a in range(0, len(keys), 200):
            cache.update(self._export(keys[a : a + 200], float(edges[0]), float(edges[-1])))

        class _Cached:
            def read_raw(self, key: str, t0: float, t1: float, limit: int | None = None) -> Raw:
                return cache.get(key, Raw.empty())

        return buckets_from_raw(_Cached(), keys, edges)  # type: ignore[arg-type]

    def _check(self, status: int, text: bytes) -> None:
        if status >= 500 or status == 429:
            raise BackendUnavailable(f"historian server {self.url} answered {status}: {text[:200]!r}")
        if status >= 400:
            raise BackendRejected(f"historian server {self.url} refused the query ({status}): {text[:300]!r}")

    # ------------------------------------------------------------------ InfluxDB 2.x (Flux)
    def _flux(self, query: str) -> list[dict[str, str]]:
        body = json.dumps({"query": query, "type": "flux",
                           "dialect": {"header": True, "annotations": []}}).encode()
        q = urllib.parse.urlencode({"org": self.org})
        status, text, _ = self._request("POST", f"/api/v2/query?{q}", body,
                                        {"Content-Type": "application/json", "Accept": "application/csv"})
        self._check(status, text)
        import csv
        import io

        return [r for r in csv.DictReader(io.StringIO(text.decode())) if r.get("_value") is not None]

    def _read_flux(self, key: str, t0: float, t1: float, limit: int | None) -> Raw:
        k = key.replace("\\", "\\\\").replace('"', '\\"')
        lim = f" |> limit(n: {int(limit)})" if limit else ""
        rows = self._flux(
            f'from(bucket: "{self.bucket}") |> range(start: {_rfc3339(t0)}, stop: {_rfc3339(t1)}) '
            f'|> filter(fn: (r) => r._measurement == "{self.measurement}" and r.tag == "{k}") '
            '|> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
            f' |> sort(columns: ["_time"]){lim}'
        )
        from datetime import datetime

        t = np.array([datetime.fromisoformat(r["_time"].replace("Z", "+00:00")).timestamp() for r in rows])
        v = np.array([float(r["v"]) if r.get("v") else math.nan for r in rows])
        q = np.array([int(r["q"]) if r.get("q") else 0 for r in rows], np.uint32)
        return Raw(t, v, q)

    def stats(self) -> dict[str, float]:
        return {"requests": float(self.requests), "written_points": float(self.written_points)}


def classify(status: int, lines: int) -> str:
    """What to do with a write answer (after Telegraf outputs/influxdb_v2 errors.go): ``ok``;
    ``split`` (413 with more than one line); ``retry`` (429, 5xx, and 401/403/404/405: a
    token, bucket or URL problem an operator fixes - the data itself is fine, so it stays
    spooled); ``reject`` (400, 422 and other 4xx: the data is refused, retrying cannot help)."""
    if 200 <= status < 300:
        return "ok"
    if status == 413 and lines > 1:
        return "split"
    if status in (429, 401, 403, 404, 405) or status >= 500:
        return "retry"
    return "reject"


def _retry_after(headers: dict[str, str]) -> float | None:
    for k, v in headers.items():
        if k.lower() == "retry-after":
            try:
                return max(0.0, float(v))
            except ValueError:
                return None
    return None


def _promql_str(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _rfc3339(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
