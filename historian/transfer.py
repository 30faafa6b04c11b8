# One module (over ~600 lines): import and export share the format readers/writers and the validation of one table shape.
"""Import and export of recorded history: CSV (long and wide), Parquet, InfluxDB line protocol.

An auditor brings readings we did not record (a year of 15-minute counter readings from a
metering contractor) and takes out what we hold. Both go through the historian backend
interface (:meth:`historian.base.Backend.write` / ``read_many``), so they work on every backend.

Import rules (docs/historian.md, "Import and export"):

* **Nothing slips in silently, nothing aborts.** A row that cannot be read (wrong number of
  columns, a value or time that does not parse, no series name, an unknown status, a
  non-finite value on a Good reading, a time outside 1970-2200) is *rejected*: counted by
  reason and reported as ``file:line: reason`` (the first ones on screen, all of them in the
  ``--rejects`` file); every other row is stored. Counter resets, gaps and readings in any
  order are data, not errors.
* **Quality is data.** Each reading keeps its source time and its OPC UA status code: the
  file's status column (a code such as ``0``, ``0x80050000`` or a name such as
  ``BadCommunicationError``), Good when the file has none.
* **Idempotent.** Rows go to the backend in blocks of ``chunk_rows`` whose batch id is the
  SHA-256 of the mapping and of the block's readings as parsed: re-importing the same file skips
  the blocks the store already holds, and on any backend the same (series, time) overwrites.
* CSV and Parquet are parsed by DuckDB (its multi-threaded reader; rejected lines and their
  line numbers from its ``store_rejects`` tables), converted to series ids, times in
  microseconds and scaled values in SQL, and fetched as numpy columns block by block.
  CSV line numbers count physical lines (header = line 1); quoted fields spanning lines are
  not supported.

Times without an offset are local times of ``tz`` (DuckDB's ICU time zones); in the repeated
hour of an autumn DST change such a time is ambiguous, so prefer UTC or explicit offsets.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb
import numpy as np
import yaml

from scada import quality as Q

from .base import Backend, Points
from .fingerprint import Fingerprint

#: unit -> factor to the store's unit (energy in Wh, power in W)
UNITS = {"wh": 1.0, "kwh": 1e3, "mwh": 1e6, "w": 1.0, "kw": 1e3, "mw": 1e6, "1": 1.0}
FORMATS = ("csv", "parquet", "lp")
EXPORT_FORMATS = ("csv", "csv-wide", "parquet", "lp")
_T_LO, _T_HI = 0, 7_258_118_400_000_000  # 1970-01-01 .. 2200-01-01 in microseconds
_STATUS_BY_NAME = {v.lower(): k for k, v in Q.NAMES.items()}


class ImportError_(ValueError):
    """The file or the mapping cannot be imported at all (not a bad row: those are counted)."""


@dataclass
class Mapping:
    """How a file's columns become series, times, values and status codes (all optional).

    Long files: one reading per row, the series from ``tag`` (the full path, e.g.
    ``centre/cab-001/lum-01/energy_wh``) or ``device`` + ``point`` columns, or ``device`` + the
    fixed ``point_name``. Wide files: a time column and one column per series, named by the
    header (``columns`` renames; ``point_name`` is appended to each). ``unit`` (Wh, kWh, MWh,
    W, kW) or ``scale`` multiplies values; ``ts_unit``: ``iso`` (text dates, ``tz`` when they
    carry no offset) or ``s``/``ms``/``us``/``ns`` since 1970 UTC.
    """

    format: str | None = None
    layout: str | None = None  # long | wide (default: long when the tag/device column exists)
    ts: str = "ts"
    tag: str = "tag"
    device: str | None = None
    point: str | None = None
    point_name: str | None = None
    value: str = "value"
    status: str | None = None
    unit: str = "Wh"
    scale: float | None = None
    tz: str = "UTC"
    ts_unit: str = "iso"
    prefix: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    delimiter: str = ","
    # line protocol: the tag holding the series key, the value and status fields, precision
    lp_tag: str = "tag"
    lp_value: str = "v"
    lp_status: str = "q"
    precision: str = "ns"

    @property
    def factor(self) -> float:
        if self.scale is not None:
            return float(self.scale)
        f = UNITS.get(self.unit.lower())
        if f is None:
            raise ImportError_(f"unit {self.unit!r} is not known; expected one of Wh, kWh, MWh, W, kW, MW "
                               "(or give scale: a number)")
        return f

    def canonical(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def load_mapping(path: str, **overrides: Any) -> Mapping:
    """A mapping file (YAML with :class:`Mapping`'s field names), then non-None overrides."""
    data: dict[str, Any] = {}
    if path:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
        if not isinstance(doc, dict):
            raise ImportError_(f"{path}: expected a mapping of options (ts, tag, value, unit, tz, ...)")
        data.update(doc)
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = set(Mapping.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ImportError_(f"{path or 'options'}: unknown mapping field(s) {', '.join(unknown)}; "
                           f"expected some of {', '.join(sorted(known))}")
    m = Mapping(**data)
    _ = m.factor
    if m.ts_unit not in ("iso", "s", "ms", "us", "ns"):
        raise ImportError_(f"ts_unit {m.ts_unit!r}: expected iso, s, ms, us or ns")
    return m


@dataclass
class Reject:
    file: str
    line: int
    reason: str
    text: str = ""


@dataclass
class ImportResult:
    """What an import did: rows read, readings stored, rejects by reason, blocks skipped."""

    files: list[str] = field(default_factory=list)
    rows: int = 0
    stored: int = 0
    skipped_blocks: int = 0
    skipped_readings: int = 0
    rejected: Counter = field(default_factory=Counter)
    examples: list[Reject] = field(default_factory=list)
    series: set[str] = field(default_factory=set)
    t_min: float | None = None
    t_max: float | None = None

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def reject(self, r: Reject, keep: int = 1000) -> None:
        self.rejected[r.reason] += 1
        if len(self.examples) < keep:
            self.examples.append(r)


Progress = Callable[[int, int, str], None]


def detect_format(path: str, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise ImportError_(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
        return fmt
    low = path.lower()
    for ext, f in ((".parquet", "parquet"), (".pq", "parquet"), (".lp", "lp"), (".line", "lp"),
                   (".txt", "lp"), (".csv", "csv"), (".tsv", "csv"), (".csv.gz", "csv")):
        if low.endswith(ext):
            return f
    raise ImportError_(f"{path}: cannot tell the format from the name; give --format csv, parquet or lp")


# ---------------------------------------------------------------------------- reading
@dataclass
class _Block:
    """Readings of one block of rows (already converted) and the rejects found in it."""

    points: Points
    rows: int
    rejects: list[Reject]


def read_file(path: str, m: Mapping, chunk_rows: int = 1_000_000, progress: Progress | None = None
              ) -> Iterator[_Block]:
    """The file's readings in blocks of about ``chunk_rows`` source rows (file order kept)."""
    if not os.path.exists(path):
        raise ImportError_(f"{path}: no such file")
    fmt = detect_format(path, m.format)
    if fmt == "lp":
        yield from _read_lp(path, m, chunk_rows)
    else:
        yield from _read_table(path, fmt, m, chunk_rows, progress)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _status_code(s: str) -> int | None:
    """A status cell: decimal or 0x hex code, or a name (case-insensitive); None if unknown."""
    x = s.strip()
    if x == "":
        return Q.Good
    try:
        code = int(x, 16) if x.lower().startswith("0x") else int(x)
    except ValueError:
        return _STATUS_BY_NAME.get(x.lower())
    return code if 0 <= code <= 0xFFFFFFFF else None


def _header(path: str, delimiter: str) -> list[str]:
    import csv

    with open(path, encoding="utf-8-sig", newline="") as f:
        row = next(csv.reader(f, delimiter=delimiter), None)
    if not row:
        raise ImportError_(f"{path}: empty file (expected a header line naming the columns)")
    return [c.strip() for c in row]


_CSV_REASON = {"MISSING COLUMNS": "missing columns", "TOO MANY COLUMNS": "too many columns",
               "UNQUOTED VALUE": "badly quoted field", "LINE SIZE OVER MAXIMUM": "line too long",
               "INVALID UNICODE": "invalid UTF-8"}


def _read_table(path: str, fmt: str, m: Mapping, chunk_rows: int, progress: Progress | None) -> Iterator[_Block]:
    con = duckdb.connect(":memory:", config={"threads": 2})
    con.execute("SET enable_progress_bar = false")
    try:
        con.execute(f"SET TimeZone = {_lit(m.tz)}")
        if fmt == "csv":
            cols = _header(path, m.delimiter)
            ctype = {c: "VARCHAR" for c in cols}
        else:
            head = con.execute(f"DESCRIBE SELECT * FROM read_parquet({_lit(path)})").fetchall()
            cols = [r[0] for r in head]
            ctype = {r[0]: str(r[1]).upper() for r in head}
        layout = m.layout or ("long" if (m.tag in cols or (m.device and m.device in cols)) else "wide")
        if m.ts not in cols:
            raise ImportError_(f"{path}: no time column {m.ts!r} (columns: {', '.join(cols[:12])}); "
                               "give --ts-col or ts: in the mapping file")
        if layout == "long":
            if m.device and not (m.point or m.point_name):
                raise ImportError_(f"{path}: with a device column give the point column (point:) or a fixed "
                                   "point name (point_name:, e.g. energy_wh)")
            need = [m.value] + ([m.device] + ([m.point] if m.point else []) if m.device else [m.tag])
            missing = [c for c in need + ([m.status] if m.status else []) if c not in cols]
            if missing:
                raise ImportError_(f"{path}: column(s) {', '.join(map(repr, missing))} not found "
                                   f"(columns: {', '.join(cols[:12])}); map them with the options or a mapping file")
            value_cols = [m.value]
        else:
            value_cols = [c for c in cols if c not in (m.ts, m.status)]
            if not value_cols:
                raise ImportError_(f"{path}: a wide file needs a column per series besides {m.ts!r}")
        status_col = m.status if (m.status and m.status in cols) else None
        iso = m.ts_unit == "iso"
        if fmt == "csv":
            # typed read: a cell that does not convert rejects its line (store_rejects keeps the line)
            types = dict(ctype)
            types[m.ts] = "TIMESTAMPTZ" if iso else "DOUBLE"
            for c in value_cols:
                types[c] = "DOUBLE"
            tdef = "{" + ", ".join(f"{_lit(k)}: {_lit(v)}" for k, v in types.items()) + "}"
            src = (f"read_csv({_lit(path)}, header=true, auto_detect=false, delim={_lit(m.delimiter)}, "
                   f"quote='\"', escape='\"', columns={tdef}, store_rejects=true, "
                   "rejects_table='rej_errors', rejects_scan='rej_scans')")
            t_src = _q(m.ts)
        else:
            src = f"read_parquet({_lit(path)})"
            tt = ctype.get(m.ts, "")
            t_src = (f"TRY_CAST({_q(m.ts)} AS TIMESTAMPTZ)" if iso and "TIMESTAMP" not in tt
                     else f"{_q(m.ts)}::TIMESTAMPTZ" if iso else f"TRY_CAST({_q(m.ts)} AS DOUBLE)")
        if iso:
            t_expr = f"epoch_us({t_src})"
        else:
            mult = {"s": 1e6, "ms": 1e3, "us": 1.0, "ns": 1e-3}[m.ts_unit]
            t_expr = f"CAST(round({t_src} * {mult}) AS BIGINT)"
        factor = m.factor
        q_expr = f"CAST({_q(status_col)} AS VARCHAR)" if status_col else "NULL::VARCHAR"
        pre = _lit(m.prefix)
        if layout == "long":
            if m.device:
                pt = _q(m.point) if m.point else _lit(m.point_name or "")
                key = f"{pre} || {_q(m.device)} || '/' || {pt}"
            else:
                key = f"{pre} || {_q(m.tag)}" + (f" || '/' || {_lit(m.point_name)}" if m.point_name else "")
            vals = f"TRY_CAST({_q(m.value)} AS DOUBLE) * {factor!r} AS v"
            sel = f"{key} AS key, {t_expr} AS t, {vals}, {q_expr} AS qs"
        else:
            sel = f"{t_expr} AS t, {q_expr} AS qs, " + ", ".join(
                f"TRY_CAST({_q(c)} AS DOUBLE) * {factor!r} AS c{i}" for i, c in enumerate(value_cols))
        if progress:
            progress(0, 0, f"parsing {os.path.basename(path)}")
        con.execute(f"CREATE TABLE raw AS SELECT {sel} FROM {src}")
        rejects: list[Reject] = []
        rej_lines = np.zeros(0, np.int64)
        if fmt == "csv":
            seen: set[int] = set()
            for line, etype, col, text in con.execute(
                    "SELECT line, error_type, column_name, csv_line FROM rej_errors ORDER BY line").fetchall():
                if int(line) in seen:
                    continue
                seen.add(int(line))
                reason = (("time does not parse" if col == m.ts else "value is not a number") if etype == "CAST"
                          else _CSV_REASON.get(str(etype), str(etype).lower()))
                rejects.append(Reject(path, int(line), reason, str(text or "")[:200]))
            rej_lines = np.array(sorted(seen), np.int64)
        n_raw = int(con.execute("SELECT count(*) FROM raw").fetchone()[0])
        # status cells -> codes (a handful of distinct values), as a CASE expression
        qmap = {s_: _status_code(str(s_)) for (s_,) in con.execute(
            "SELECT DISTINCT qs FROM raw WHERE qs IS NOT NULL").fetchall()}
        known = {k: v for k, v in qmap.items() if v is not None}
        q_case = ("CASE qs " + " ".join(f"WHEN {_lit(k)} THEN {v}" for k, v in known.items()) + " ELSE 0 END"
                  if known else "0")
        q_unknown = ("qs IS NOT NULL AND qs NOT IN (" + ", ".join(_lit(k) for k in known) + ")"
                     if known else "qs IS NOT NULL")
        good = f"(({q_case}) & 3221225472) = 0"
        row_bad = (f"CASE WHEN t IS NULL THEN 'time does not parse' "
                   f"WHEN t < {_T_LO} OR t >= {_T_HI} THEN 'time out of range (1970-2200)' "
                   f"WHEN {q_unknown} THEN 'unknown status' ")
        if layout == "long":
            reason = (row_bad + "WHEN key IS NULL OR key = '' THEN 'no series name' "
                      f"WHEN {good} AND v IS NULL THEN 'no value on a Good reading' "
                      f"WHEN {good} AND NOT isfinite(v) THEN 'value is not finite on a Good reading' ELSE NULL END")
            keys = [k for (k,) in con.execute(
                "SELECT DISTINCT key FROM raw WHERE key IS NOT NULL AND key <> '' ORDER BY key").fetchall()]
            if keys:
                con.execute("CREATE TYPE series_key AS ENUM (SELECT DISTINCT key FROM raw "
                            "WHERE key IS NOT NULL AND key <> '' ORDER BY key)")
            fetch = f"SELECT enum_code(key::series_key) AS sid, t, v, {q_case} AS q FROM raw"
        else:
            reason = row_bad + "ELSE NULL END"
            keys = [m.prefix + m.columns.get(c, c) + (f"/{m.point_name}" if m.point_name else "") for c in value_cols]
            cells = " OR ".join(f"NOT isfinite(c{i})" for i in range(len(value_cols)))
            fetch = f"SELECT t, {q_case} AS q, {', '.join(f'c{i}' for i in range(len(value_cols)))} FROM raw"
        bad = con.execute(f"SELECT rowid AS n, {reason} AS why FROM raw WHERE ({reason}) IS NOT NULL "
                          "ORDER BY n").fetchall()
        bad_cells: list[tuple[int, str]] = []
        if layout == "wide":
            bad_cells = [(int(n), "value is not finite on a Good reading (cell)") for (n,) in con.execute(
                f"SELECT rowid FROM raw WHERE ({reason}) IS NULL AND {good} AND ({cells}) ORDER BY rowid").fetchall()]
        if bad or bad_cells:
            n_arr = np.array([b_[0] for b_ in bad] + [c[0] for c in bad_cells], np.int64)
            lines = _lines_of(n_arr, rej_lines) if fmt == "csv" else n_arr + 1
            for (_, why), ln in zip([*bad, *bad_cells], lines.tolist(), strict=True):
                rejects.append(Reject(path, int(ln), why))
        rejects.sort(key=lambda r: r.line)
        bad_n = np.array(sorted(b_[0] for b_ in bad), np.int64)
        lo = 0
        first = True
        while lo < n_raw or first:
            hi = lo + chunk_rows
            res = con.execute(f"{fetch.replace(' FROM raw', ', rowid AS n FROM raw')} "
                              f"WHERE rowid >= {lo} AND rowid < {hi}").fetchnumpy()
            nb = bad_n[(bad_n >= lo) & (bad_n < hi)]
            if len(nb):  # the rejected rows of this block (their reasons are reported above)
                keep = ~np.isin(np.asarray(res["n"], np.int64), nb)
                res = {k: v[keep] for k, v in res.items()}
            if layout == "long":
                pts = Points(keys, np.asarray(res["sid"], np.int32), np.asarray(res["t"], np.int64) / 1e6,
                             _col(res["v"]), np.asarray(res["q"], np.uint32))
            else:
                pts = _wide_points(keys, res, len(value_cols))
            rows = min(hi, n_raw) - lo + (len(rej_lines) if first else 0)
            yield _Block(pts, max(rows, 0), rejects if first else [])
            first = False
            lo = hi
    finally:
        con.close()


def _col(a: Any) -> np.ndarray:
    return a.astype(np.float64).filled(np.nan) if isinstance(a, np.ma.MaskedArray) else np.asarray(a, np.float64)


def _wide_points(keys: list[str], res: dict[str, Any], n_cols: int) -> Points:
    """Readings of a block of wide rows: a (row, column) cell with a value is a reading (an empty
    cell is none; a non-finite value on a Good row was rejected above)."""
    t = np.asarray(res["t"], np.int64) / 1e6
    q = np.asarray(res["q"], np.uint32)
    sids, ts, vs, qs = [], [], [], []
    for i in range(n_cols):
        c = res[f"c{i}"]
        have = ~np.ma.getmaskarray(c) if isinstance(c, np.ma.MaskedArray) else np.ones(len(t), bool)
        v = _col(c)
        have &= np.isfinite(v) | ((q & np.uint32(0xC0000000)) != 0)
        sids.append(np.full(int(have.sum()), i, np.int32))
        ts.append(t[have])
        vs.append(v[have])
        qs.append(q[have])
    if not sids:
        return Points(keys, np.zeros(0, np.int32), np.zeros(0), np.zeros(0), np.zeros(0, np.uint32))
    return Points(keys, np.concatenate(sids), np.concatenate(ts), np.concatenate(vs), np.concatenate(qs))


def _lines_of(n: np.ndarray, rejected_lines: np.ndarray) -> np.ndarray:
    """File line of accepted data rows ``n`` (0-based among accepted rows; header = line 1):
    the (n+1)-th line from 2 on that is not a rejected line."""
    if not len(rejected_lines):
        return n + 2
    # line L (>= 2) holds accepted row number L - 2 - (rejected lines below L)
    out = n + 2
    for _ in range(len(rejected_lines) + 1):
        below = np.searchsorted(rejected_lines, out, side="right")
        nxt = n + 2 + below
        if np.array_equal(nxt, out):
            break
        out = nxt
    return out


_LP_ESC = re.compile(r"\\(.)")


def _lp_split(s: str, sep: str) -> list[str]:
    """Split on ``sep`` not preceded by a backslash (line protocol escaping)."""
    out, cur, i = [], [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            cur.append(s[i : i + 2])
            i += 2
            continue
        if c == sep:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def _read_lp(path: str, m: Mapping, chunk_rows: int) -> Iterator[_Block]:
    """InfluxDB line protocol: ``measurement,tag=<series>[,...] v=<float>[,q=<status>i] [time]``.
    The series is the tag ``lp_tag`` (``tag``, as our influx backend writes), else
    ``<device tag>/<field>`` for other fields; ``precision`` is the time unit (ns by default)."""
    mult = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}.get(m.precision)
    if mult is None:
        raise ImportError_(f"precision {m.precision!r}: expected s, ms, us or ns")
    factor = m.factor
    index: dict[str, int] = {}
    keys: list[str] = []
    sid: list[int] = []
    tt: list[float] = []
    vv: list[float] = []
    qq: list[int] = []
    rejects: list[Reject] = []
    rows = 0

    def flush() -> _Block:
        nonlocal sid, tt, vv, qq, rejects, rows
        b = _Block(Points(list(keys), np.asarray(sid, np.int32), np.asarray(tt, np.float64),
                          np.asarray(vv, np.float64) * factor, np.asarray(qq, np.uint32)), rows, rejects)
        sid, tt, vv, qq, rejects, rows = [], [], [], [], [], 0
        return b

    with open(path, encoding="utf-8", errors="replace") as f:
        for ln, line in enumerate(f, 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            rows += 1
            try:
                parts = _lp_split(s, " ")
                parts = [p for p in parts if p != ""]
                if len(parts) not in (2, 3):
                    raise ValueError("expected 'measurement,tags fields [time]'")
                head = _lp_split(parts[0], ",")
                tags = dict(_LP_ESC.sub(r"\1", x).split("=", 1) for x in head[1:] if "=" in x)
                fields = {}
                for fv in _lp_split(parts[1], ","):
                    k, _, val = fv.partition("=")
                    fields[_LP_ESC.sub(r"\1", k)] = val
                ts = float(parts[2]) * mult if len(parts) == 3 else None
                if ts is None:
                    raise ValueError("no timestamp")
                status = Q.Good
                if m.lp_status in fields:
                    sv = fields.pop(m.lp_status)
                    code = _status_code(sv.rstrip("iu"))
                    if code is None:
                        raise KeyError("unknown status")
                    status = code
                key_base = tags.get(m.lp_tag)
                if key_base is not None:
                    items = [(m.prefix + key_base + (f"/{m.point_name}" if m.point_name else ""),
                              fields.get(m.lp_value))]
                else:
                    dev = tags.get(m.device or "device")
                    if dev is None:
                        raise LookupError("no series name")
                    items = [(f"{m.prefix}{dev}/{k}", val) for k, val in fields.items()]
                for key, val in items:
                    if val is None:
                        if Q.is_good(status):
                            raise ArithmeticError("no value on a Good reading")
                        x = math.nan
                    else:
                        x = float(val.rstrip("iu"))
                    if Q.is_good(status) and not math.isfinite(x):
                        raise ArithmeticError("value is not finite on a Good reading")
                    if not (_T_LO <= ts * 1e6 < _T_HI):
                        raise OverflowError("time out of range (1970-2200)")
                    i = index.get(key)
                    if i is None:
                        i = index[key] = len(keys)
                        keys.append(key)
                    sid.append(i)
                    tt.append(ts)
                    vv.append(x)
                    qq.append(status)
            except KeyError:
                rejects.append(Reject(path, ln, "unknown status", s[:200]))
            except LookupError:
                rejects.append(Reject(path, ln, "no series name", s[:200]))
            except (ArithmeticError, OverflowError) as e:
                rejects.append(Reject(path, ln, str(e), s[:200]))
            except ValueError:
                rejects.append(Reject(path, ln, "not line protocol", s[:200]))
            if rows >= chunk_rows:
                yield flush()
    yield flush()


# ---------------------------------------------------------------------------- import
def _batch_id(m: Mapping, chunk_rows: int, k: int, p: Points) -> str:
    """The id of block ``k``: SHA-256 of the mapping and of the block's readings as parsed
    (series names, source times, values, status codes). The same file imported again gives the
    same ids (the store skips the blocks it holds); the file itself need not be read twice."""
    h = hashlib.sha256(f"{m.canonical()}|{chunk_rows}|{k}|".encode())
    h.update("\n".join(p.keys).encode())
    for a in (p.sid, p.t, p.v, p.q):
        h.update(np.ascontiguousarray(a).tobytes())
    return "imp" + h.hexdigest()[:32]


def import_file(backend: Backend, path: str, m: Mapping, *, chunk_rows: int = 1_000_000,
                progress: Progress | None = None, result: ImportResult | None = None,
                dry_run: bool = False) -> ImportResult:
    """Import one file into ``backend`` (module doc); returns the running ``result``.

    Block *k* is written by a worker thread while block *k+1* is fetched and converted (both
    DuckDB and the backend's numpy/DuckDB work release the GIL); blocks are written one at a
    time, in order, and a write error stops the import at that block (the blocks before it are
    stored)."""
    from concurrent.futures import Future, ThreadPoolExecutor

    res = result or ImportResult()
    if not os.path.exists(path):
        raise ImportError_(f"{path}: no such file")
    res.files.append(path)
    has_batch = getattr(backend, "has_batch", None)
    with ThreadPoolExecutor(1, thread_name_prefix="import") as pool:
        pending: Future | None = None
        for k, blk in enumerate(read_file(path, m, chunk_rows, progress)):
            res.rows += blk.rows
            for r in blk.rejects:
                res.reject(r)
            p = blk.points
            if len(p):
                used = np.flatnonzero(np.bincount(p.sid, minlength=len(p.keys)))
                res.series.update(p.keys[i] for i in used.tolist())
                lo, hi = float(p.t.min()), float(p.t.max())
                res.t_min = lo if res.t_min is None else min(res.t_min, lo)
                res.t_max = hi if res.t_max is None else max(res.t_max, hi)
                batch = _batch_id(m, chunk_rows, k, p)
                if pending is not None:
                    pending.result()
                    pending = None
                if has_batch is not None and has_batch(batch):
                    res.skipped_blocks += 1
                    res.skipped_readings += len(p)
                else:
                    if not dry_run:
                        pending = pool.submit(backend.write, p, batch)
                    res.stored += len(p)
            if progress:
                progress(res.rows, 0, f"{res.stored:,} readings stored, {res.n_rejected:,} rows rejected")
        if pending is not None:
            pending.result()
    return res


def readings_of(path: str, m: Mapping, chunk_rows: int = 1_000_000) -> Iterator[Points]:
    """Only the good-to-store readings of a file (for :func:`fingerprint_file`)."""
    for blk in read_file(path, m, chunk_rows):
        yield blk.points


def fingerprint_file(path: str, m: Mapping) -> Fingerprint:
    """The fingerprint (historian.fingerprint) of the readings a file holds, as an import of it
    would store them (same (series, time) twice: the later row counts, as in the store)."""
    fp = Fingerprint()
    blocks = list(readings_of(path, m))
    pts = Points.concat(blocks)
    if len(pts):
        pts = _dedupe(pts)
        fp.add_points(pts.keys, pts.sid, pts.t, pts.v, pts.q)
    return fp


def _dedupe(p: Points) -> Points:
    """Keep the last reading of each (series, time) (stable order: the later row wins)."""
    t_us = np.round(p.t * 1e6).astype(np.int64)
    order = np.lexsort((t_us, p.sid))
    s, t = p.sid[order], t_us[order]
    last = np.ones(len(s), bool)
    last[:-1] = (s[1:] != s[:-1]) | (t[1:] != t[:-1])
    keep = order[last]
    return Points(p.keys, p.sid[keep], p.t[keep], p.v[keep], p.q[keep])


# ---------------------------------------------------------------------------- export
def export(backend: Backend, keys: Sequence[str], t0: float, t1: float, path: str, fmt: str, *,
           measurement: str = "scada", progress: Progress | None = None, group: int = 2000) -> Fingerprint:
    """Write the readings of ``keys`` with ``t0 <= t < t1`` to ``path`` as ``fmt`` (EXPORT_FORMATS);
    returns their fingerprint. Long CSV columns: ``ts`` (ISO 8601 UTC, microseconds), ``tag``,
    ``value`` (shortest exact decimal), ``status`` (OPC UA status name, or 0x hex); Parquet the
    same with ``ts`` a timestamp and ``status`` the integer code; line protocol as the influx
    backend writes it (``v`` and ``q`` fields, nanoseconds); wide CSV: one column per series,
    values of Good readings only (a wide table has no room for a status)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    fp = Fingerprint()
    keys = sorted(keys)
    con = duckdb.connect(":memory:", config={"threads": 2})
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE TABLE qnames (q UBIGINT, name VARCHAR)")
    con.executemany("INSERT INTO qnames VALUES (?, ?)", [[k, v] for k, v in Q.NAMES.items()])
    tmp = path + ".tmp"
    parts: list[str] = []
    done = 0
    try:
        for g0 in range(0, len(keys), group):
            ks = list(keys[g0 : g0 + group])
            p = backend.read_many(ks, t0, t1)
            if not len(p):
                continue
            fp.add_points(p.keys, p.sid, p.t, p.v, p.q)
            part = f"{tmp}.{len(parts)}"
            _write_part(con, p, part, fmt, measurement)
            parts.append(part)
            done += len(p)
            if progress:
                progress(g0 + len(ks), len(keys), f"{done:,} readings")
        _join_parts(con, parts, tmp, fmt, keys if fmt == "csv-wide" else None)
        os.replace(tmp, path)
    finally:
        for f in parts:
            if os.path.exists(f):
                os.unlink(f)
        if os.path.exists(tmp):
            os.unlink(tmp)
        con.close()
    return fp


def _write_part(con: duckdb.DuckDBPyConnection, p: Points, out: str, fmt: str, measurement: str) -> None:
    key_arr = np.asarray(p.keys, dtype=object)
    _data = {"k": key_arr[p.sid], "t": np.round(p.t * 1e6).astype(np.int64), "v": p.v,
             "q": p.q.astype(np.int64)}
    con.register("_part", con.sql("SELECT * FROM _data"))
    try:
        if fmt in ("csv", "csv-wide"):
            sql = ("SELECT strftime(make_timestamptz(t), '%Y-%m-%dT%H:%M:%S.%fZ') AS ts, k AS tag, v AS value, "
                   "coalesce(n.name, printf('0x%08X', _part.q)) AS status, t AS t_us FROM _part "
                   "LEFT JOIN qnames n ON n.q = _part.q ORDER BY tag, t_us")
            con.execute(f"COPY ({sql}) TO {_lit(out)} (FORMAT parquet)")
        elif fmt == "parquet":
            con.execute(f"COPY (SELECT make_timestamptz(t) AS ts, k AS tag, v AS value, q::UINTEGER AS status "
                        f"FROM _part ORDER BY tag, ts) TO {_lit(out)} (FORMAT parquet)")
        else:  # line protocol, nanoseconds
            from .influx import escape_tag

            esc = {k: escape_tag(k) for k in p.keys}
            con.execute("CREATE OR REPLACE TEMP TABLE esc (k VARCHAR, e VARCHAR)")
            con.executemany("INSERT INTO esc VALUES (?, ?)", [[k, e] for k, e in esc.items()])
            m = escape_tag(measurement)
            con.execute(
                "COPY (SELECT " + _lit(m + ",tag=") + " || e.e || ' ' || "
                "CASE WHEN isfinite(v) THEN 'v=' || v::VARCHAR || ',' ELSE '' END || 'q=' || q::VARCHAR || 'i ' || "
                "(t * 1000)::VARCHAR AS line FROM _part JOIN esc e ON e.k = _part.k ORDER BY _part.k, t) "
                f"TO {_lit(out)} (FORMAT csv, HEADER false, QUOTE '', ESCAPE '', DELIMITER '\\x1f')")
    finally:
        con.unregister("_part")


def _join_parts(con: duckdb.DuckDBPyConnection, parts: list[str], out: str, fmt: str,
                keys: Sequence[str] | None) -> None:
    if fmt == "lp":
        with open(out, "wb") as w:
            for f in parts:
                with open(f, "rb") as r:
                    while chunk := r.read(1 << 22):
                        w.write(chunk)
        return
    if not parts:  # an empty export still has its header / schema
        if fmt == "parquet":
            con.execute(f"COPY (SELECT NULL::TIMESTAMPTZ AS ts, NULL::VARCHAR AS tag, NULL::DOUBLE AS value, "
                        f"NULL::UINTEGER AS status LIMIT 0) TO {_lit(out)} (FORMAT parquet)")
        else:
            with open(out, "w", encoding="utf-8") as f:
                f.write("ts,tag,value,status\n" if fmt == "csv" else "ts\n")
        return
    files = "[" + ", ".join(_lit(f) for f in parts) + "]"
    if fmt == "parquet":
        con.execute(f"COPY (SELECT * FROM read_parquet({files})) TO {_lit(out)} (FORMAT parquet)")
    elif fmt == "csv":
        con.execute(f"COPY (SELECT ts, tag, value, status FROM read_parquet({files})) TO {_lit(out)} "
                    "(FORMAT csv, HEADER true)")
    else:
        # wide: Good values only, one column per series, rows by time
        cols = ", ".join(f"max(value) FILTER (WHERE tag = {_lit(k)} AND status = 'Good') AS {_q(k)}"
                         for k in (keys or []))
        con.execute(f"COPY (SELECT any_value(ts) AS ts, {cols} FROM read_parquet({files}) GROUP BY t_us "
                    f"ORDER BY t_us) TO {_lit(out)} (FORMAT csv, HEADER true)")
