"""Condition evaluation, vectorised: one numpy pass per tag-change batch.

Each alarm instance is a row of a column table (tag index, kind, limits, deadband, current raw
level ...). A tag-change batch is turned into the rows it concerns through a CSR index
(tag -> rows), and all those rows are evaluated together with array operations; Python code
runs only for the rows whose level actually changed. This is what lets one process evaluate
the conditions of 200,000 luminaires (DESIGN.md "Scale by construction").

Levels: 0 normal; 1 active (non-limit kinds); for limits +2 HighHigh, +1 High, -1 Low,
-2 LowLow (OPC UA Part 9 ExclusiveLimitStateMachineType: one level at a time).

Quality rules (OPC UA Part 8 status codes; ISA-18.2 basic alarm design, bad-value handling): a condition is not
decided on a value that could not be read. Rows whose tag (or reference tag) is Bad keep their
previous level; the ``quality`` kind is the one that watches the status code itself, and it
ignores BadOutOfService (device under works) and BadWaitingForInitialData (not read yet, e.g.
just after a restart: the restored level is kept until a real value arrives).
"""

from __future__ import annotations

import numpy as np

from scada import quality as Q

from .model import K_DEVIATION, K_DISCRETE, K_LIMIT, K_QUALITY, K_RATE, K_STALE

_BAD = np.uint32(0x80000000)
_OOS = np.uint32(Q.BadOutOfService)
_WAIT = np.uint32(Q.BadWaitingForInitialData)

_FLOAT_FIELDS = ("eq", "hihi", "hi", "lo", "lolo", "db", "tol", "scale", "timeout", "max_rate",
                 "on_delay", "off_delay", "rate_v", "rate_t")
_DEFAULTS = {"eq": 1.0, "hihi": np.nan, "hi": np.nan, "lo": np.nan, "lolo": np.nan, "db": 0.0,
             "tol": 0.0, "scale": 1.0, "timeout": 0.0, "max_rate": np.nan, "on_delay": 0.0,
             "off_delay": 0.0, "rate_v": np.nan, "rate_t": np.nan}


def csr_gather(ptr: np.ndarray, order: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, bool]:
    """Values ``order[ptr[k]:ptr[k+1]]`` for every key ``k`` of ``keys``, concatenated, in one
    vectorised gather; the flag says every key had at most one value (no duplicates possible)."""
    start = ptr[keys]
    cnt = ptr[keys + 1] - start
    sel = cnt > 0
    if not sel.any():
        return np.zeros(0, dtype=np.int64), True
    start, cnt = start[sel], cnt[sel]
    total = int(cnt.sum())
    if total == len(cnt):  # one value per key: the common case
        return order[start], True
    offs = np.repeat(start - np.concatenate(([0], np.cumsum(cnt)[:-1])), cnt)
    return order[offs + np.arange(total)], False


class ConditionTable:
    """Column store of every condition row and its raw (undelayed) level."""

    def __init__(self, capacity: int = 1024):
        cap = max(16, capacity)
        self.n = 0
        self.tag = np.full(cap, -1, dtype=np.int64)
        self.ref = np.full(cap, -1, dtype=np.int64)
        self.kind = np.zeros(cap, dtype=np.int8)
        self.raw = np.zeros(cap, dtype=np.int8)
        for f in _FLOAT_FIELDS:
            setattr(self, f, np.full(cap, _DEFAULTS[f], dtype=np.float64))
        self._ptr: np.ndarray = np.zeros(1, dtype=np.int64)
        self._rows: np.ndarray = np.zeros(0, dtype=np.int64)
        self._is_ref: np.ndarray = np.zeros(1, dtype=np.bool_)
        self.has_ref = False

    _ARRAYS = ("tag", "ref", "kind", "raw", *_FLOAT_FIELDS)

    def _grow(self, need: int) -> None:
        cap = len(self.tag)
        if need <= cap:
            return
        new = max(need, cap * 2)
        for name in self._ARRAYS:
            old = getattr(self, name)
            fill = -1 if name in ("tag", "ref") else (_DEFAULTS.get(name, 0))
            arr = np.full(new, fill, dtype=old.dtype)
            arr[:cap] = old
            setattr(self, name, arr)

    def add(self, kind: int, tag: int = -1, **fields: float) -> int:
        """Append a row; returns its number (the alarm's condition id)."""
        c = self.n
        self._grow(c + 1)
        self.kind[c] = kind
        self.tag[c] = tag
        for k, v in fields.items():
            if k == "ref":
                self.ref[c] = int(v)
                self.has_ref = self.has_ref or int(v) >= 0
            else:
                getattr(self, k)[c] = np.nan if v is None else v
        self.n = c + 1
        return c

    def add_many(self, kind: int, tags: np.ndarray, refs: np.ndarray | None,
                 fields: dict[str, float]) -> np.ndarray:
        """Append one row per tag, all of the same template; returns their row numbers."""
        m = len(tags)
        c0 = self.n
        self._grow(c0 + m)
        sl = slice(c0, c0 + m)
        self.kind[sl] = kind
        self.tag[sl] = tags
        if refs is not None:
            self.ref[sl] = refs
            self.has_ref = self.has_ref or bool((refs >= 0).any())
        for k, v in fields.items():
            getattr(self, k)[sl] = np.nan if v is None else v
        self.n = c0 + m
        return np.arange(c0, c0 + m, dtype=np.int64)

    # ------------------------------------------------------------------ tag -> rows index
    def build_index(self, ntags: int) -> None:
        """CSR index: rows watching tag t are ``_rows[_ptr[t]:_ptr[t+1]]`` (tag and reference)."""
        n = self.n
        tags = np.concatenate([self.tag[:n], self.ref[:n]])
        rows = np.concatenate([np.arange(n, dtype=np.int64)] * 2)
        keep = tags >= 0
        tags, rows = tags[keep], rows[keep]
        order = np.argsort(tags, kind="stable")
        self._rows = rows[order]
        counts = np.bincount(tags, minlength=ntags) if len(tags) else np.zeros(ntags, dtype=np.int64)
        self._is_ref = np.zeros(max(ntags, 1), dtype=np.bool_)
        refs = self.ref[:n]
        self._is_ref[refs[refs >= 0]] = True
        self._ptr = np.zeros(max(ntags, len(counts)) + 1, dtype=np.int64)
        np.cumsum(counts, out=self._ptr[1:len(counts) + 1])
        self._ptr[len(counts) + 1:] = self._ptr[len(counts)]

    def rows_for(self, tags: np.ndarray) -> np.ndarray:
        """Rows concerned by the changed ``tags`` (vectorised CSR gather, duplicates removed)."""
        t = tags[tags < len(self._ptr) - 1]
        rows, one_each = csr_gather(self._ptr, self._rows, t)
        if not one_each or (self.has_ref and self._is_ref[t].any()):
            # a row is reached twice only through its tag and its reference tag
            rows = np.unique(rows)
        return rows

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, rows: np.ndarray, value: np.ndarray, quality: np.ndarray,
                 now: float) -> np.ndarray:
        """New raw levels of ``rows`` from the live tag arrays (does not store them; updates
        the rate-of-change memory of rate rows)."""
        cur = self.raw[rows]
        new = cur.copy()
        kind = self.kind[rows]
        tag = self.tag[rows]
        v = value[tag]
        q = quality[tag]
        bad = (q & _BAD) != 0
        usable = ~bad

        m = (kind == K_DISCRETE) & usable
        if m.any():
            new[m] = np.abs(v[m] - self.eq[rows[m]]) < 1e-9

        m = (kind == K_LIMIT) & usable
        if m.any():
            r = rows[m]
            c = cur[m]
            x = v[m]
            db = self.db[r]
            hihi = np.where(c == 2, self.hihi[r] - db, self.hihi[r])
            hi = np.where(c >= 1, self.hi[r] - db, self.hi[r])
            lolo = np.where(c == -2, self.lolo[r] + db, self.lolo[r])
            lo = np.where(c <= -1, self.lo[r] + db, self.lo[r])
            lvl = np.zeros(len(r), dtype=np.int8)
            lvl[x <= lo] = -1
            lvl[x <= lolo] = -2
            lvl[x >= hi] = 1
            lvl[x >= hihi] = 2
            new[m] = lvl

        m = kind == K_DEVIATION
        if m.any():
            r = rows[m]
            ref = self.ref[r]
            ok = usable[m] & ((quality[ref] & _BAD) == 0)
            dev = np.abs(v[m] - value[ref] * self.scale[r])
            thr = np.where(cur[m] != 0, self.tol[r] - self.db[r], self.tol[r])
            lvl = np.where(ok, dev > thr, cur[m]).astype(np.int8)
            new[m] = lvl

        m = kind == K_QUALITY
        if m.any():
            qq = q[m]
            hold = (qq == _OOS) | (qq == _WAIT)
            new[m] = np.where(hold, cur[m], bad[m]).astype(np.int8)

        m = (kind == K_STALE) & usable
        if m.any():
            new[m] = 0

        m = kind == K_RATE
        if m.any():
            r = rows[m]
            ok = usable[m]
            dt = now - self.rate_t[r]
            with np.errstate(invalid="ignore", divide="ignore"):
                rate = np.abs(v[m] - self.rate_v[r]) / dt
            decided = ok & (dt > 0) & np.isfinite(rate)
            new[m] = np.where(decided, rate > self.max_rate[r], cur[m]).astype(np.int8)
            upd = r[ok]
            self.rate_v[upd] = v[m][ok]
            self.rate_t[upd] = now
        return new

    def evaluate_loop(self, rows: np.ndarray, value: np.ndarray, quality: np.ndarray,
                      now: float) -> np.ndarray:
        """Reference implementation, one row at a time in Python (benchmark baseline and a
        cross-check of :meth:`evaluate` in the unit tests)."""
        out = np.empty(len(rows), dtype=np.int8)
        for k, c in enumerate(rows.tolist()):
            cur = int(self.raw[c])
            t = int(self.tag[c])
            x = float(value[t])
            q = int(quality[t])
            bad = bool(q & 0x80000000)
            kind = int(self.kind[c])
            lvl = cur
            if kind == K_QUALITY:
                lvl = cur if q in (Q.BadOutOfService, Q.BadWaitingForInitialData) else int(bad)
            elif bad:
                lvl = cur
            elif kind == K_DISCRETE:
                lvl = int(abs(x - float(self.eq[c])) < 1e-9)
            elif kind == K_LIMIT:
                db = float(self.db[c])
                hihi, hi = float(self.hihi[c]), float(self.hi[c])
                lo, lolo = float(self.lo[c]), float(self.lolo[c])
                if cur == 2:
                    hihi -= db
                if cur >= 1:
                    hi -= db
                if cur == -2:
                    lolo += db
                if cur <= -1:
                    lo += db
                lvl = 0
                if x >= hihi:
                    lvl = 2
                elif x >= hi:
                    lvl = 1
                elif x <= lolo:
                    lvl = -2
                elif x <= lo:
                    lvl = -1
            elif kind == K_DEVIATION:
                ref = int(self.ref[c])
                if not int(quality[ref]) & 0x80000000:
                    thr = float(self.tol[c]) - (float(self.db[c]) if cur else 0.0)
                    lvl = int(abs(x - float(value[ref]) * float(self.scale[c])) > thr)
            elif kind == K_STALE:
                lvl = 0
            elif kind == K_RATE:
                dt = now - float(self.rate_t[c])
                if dt > 0 and not np.isnan(dt):
                    lvl = int(abs(x - float(self.rate_v[c])) / dt > float(self.max_rate[c]))
                self.rate_v[c] = x
                self.rate_t[c] = now
            out[k] = lvl
        return out
