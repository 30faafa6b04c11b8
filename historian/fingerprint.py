"""A reproducible fingerprint of recorded readings (what a report's figures were computed from).

An auditor must be able to tell that two reports were computed from the same data, and to
recompute the fingerprint from an export without trusting our store. Hashing the text of the
readings would tie the fingerprint to one file format and cost minutes for a city's year, so
the content hash is defined on the readings' *values*, order-free, and folds by addition:

1. every reading (series, time, value, status) gives two 64-bit words
   ``a = mix(mix(mix(t ^ C1) ^ bits(v)) ^ q)`` and ``b = mix(a ^ C2)``, where ``t`` is
   the source time in integer microseconds since 1970-01-01 UTC, ``bits(v)`` the IEEE-754
   binary64 bit pattern of the value (every NaN as ``0x7FF8000000000000``), ``q`` the OPC UA
   status code and ``mix`` the splitmix64 finaliser (Steele, Lea, Flood, "Fast splittable
   pseudorandom number generators", OOPSLA 2014; the constants are in :func:`mix64`);
2. a series' *digest* is the four 32-bit halves of ``a`` and ``b`` (low half first), each
   summed over the series' readings modulo 2^32, written as 32 hexadecimal digits;
3. the *content hash* is the SHA-256 of the UTF-8 lines ``<series>\\t<readings>\\t<digest>\\n``
   of every series with at least one reading, sorted by series name.

Because step 2 is a sum, the digest of a series is the same whether it is computed from an
export in one pass, from daily roll-ups, or over any split of the readings; so the energy
report takes it from its per-night roll-ups in milliseconds, and ``scada historian
fingerprint FILE`` recomputes it from an exported (or any importable) file. The same
(series, time) read twice counts once: the store keeps the later write, exports hold one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

C1 = np.uint64(0x9E3779B97F4A7C15)
C2 = np.uint64(0xD1B54A32D192ED03)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_NAN = np.uint64(0x7FF8000000000000)
_LO = np.uint64(0xFFFFFFFF)
LANES = 4


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place on a uint64 array (wrapping arithmetic); returns ``x``."""
    t = np.empty_like(x)
    for shift, mult in ((30, _M1), (27, _M2)):
        np.right_shift(x, np.uint64(shift), out=t)
        np.bitwise_xor(x, t, out=x)
        np.multiply(x, mult, out=x)
    np.right_shift(x, np.uint64(31), out=t)
    np.bitwise_xor(x, t, out=x)
    return x


def _words(t_us: np.ndarray, v: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two 64-bit words ``a``, ``b`` of each reading (module doc)."""
    a = np.asarray(t_us, np.int64).astype(np.uint64) ^ C1
    vv = np.ascontiguousarray(v, np.float64)
    bits = vv.view(np.uint64)
    nan = np.isnan(vv)
    if nan.any():
        bits = bits.copy()
        bits[nan] = _NAN
    with np.errstate(over="ignore"):
        mix64(a)
        np.bitwise_xor(a, bits, out=a)
        mix64(a)
        np.bitwise_xor(a, np.asarray(q, np.uint32).astype(np.uint64), out=a)
        mix64(a)
        b = a ^ C2
        mix64(b)
    return a, b


def lane_sums(group: np.ndarray, n_groups: int, t_us: np.ndarray, v: np.ndarray, q: np.ndarray) -> np.ndarray:
    """[4, n_groups] sums modulo 2^32 (as float64, exact) of the readings' words per group."""
    out = np.zeros((LANES, n_groups), np.uint64)
    g_all = np.asarray(group, np.int64)
    step = 1 << 20  # np.bincount sums in float64: exact below 2^53, so 2^20 words of 32 bits at most
    for i in range(0, len(g_all), step):
        g = g_all[i : i + step]
        a, b = _words(t_us[i : i + step], v[i : i + step], q[i : i + step])
        for k, (w, hi) in enumerate(((a, False), (a, True), (b, False), (b, True))):
            word = (w >> np.uint64(32)) if hi else (w & _LO)
            s = np.bincount(g, weights=word.astype(np.float64), minlength=n_groups)
            out[k] = (out[k] + s.astype(np.uint64)) & _LO
    return out.astype(np.float64)


def fold(lanes: np.ndarray, axis: int = -1) -> np.ndarray:
    """Sum lane values (float64 holding integers < 2^32) modulo 2^32 along ``axis``."""
    s = np.asarray(lanes, np.float64).sum(axis=axis)  # < 2^53 for fewer than 2^21 terms
    return np.mod(s, 4294967296.0)


def digest_hex(lanes4: Iterable[float]) -> str:
    return "".join(f"{int(x) & 0xFFFFFFFF:08x}" for x in lanes4)


@dataclass
class Fingerprint:
    """Readings count, time range, per-series counts and the content hash (module doc)."""

    counts: dict[str, int] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    t_min: float | None = None
    t_max: float | None = None

    @property
    def readings(self) -> int:
        return sum(self.counts.values())

    def content_hash(self) -> str:
        c, d = self.counts, self.digests
        text = "".join([f"{k}\t{c[k]}\t{d[k]}\n" for k in sorted(c) if c[k]])
        return hashlib.sha256(text.encode()).hexdigest()

    def add_series(self, key: str, count: int, lanes4: np.ndarray, t_min: float | None, t_max: float | None) -> None:
        """Fold one series' partial (count, 4 lane sums, time range) into the fingerprint."""
        if count <= 0:
            return
        old = self.digests.get(key)
        if old is not None:
            prev = np.array([int(old[i * 8 : i * 8 + 8], 16) for i in range(LANES)], np.float64)
            lanes4 = fold(np.vstack([prev, lanes4]), axis=0)
        self.digests[key] = digest_hex(lanes4)
        self.counts[key] = self.counts.get(key, 0) + int(count)
        if t_min is not None:
            self.t_min = t_min if self.t_min is None else min(self.t_min, t_min)
        if t_max is not None:
            self.t_max = t_max if self.t_max is None else max(self.t_max, t_max)

    def add_arrays(self, keys: list[str], counts: np.ndarray, lanes: np.ndarray, t_min: np.ndarray,
                   t_max: np.ndarray) -> None:
        """Fold many series' partials at once (``lanes`` [4, n]; series with count 0 skipped)."""
        have = np.flatnonzero(np.asarray(counts) > 0)
        if not len(have):
            return
        if any(keys[i] in self.counts for i in have.tolist()):
            for i in have.tolist():
                self.add_series(keys[i], int(counts[i]), lanes[:, i], float(t_min[i]), float(t_max[i]))
            return
        ln = np.mod(np.asarray(lanes)[:, have], 4294967296.0).astype(">u4")
        hexes = np.ascontiguousarray(ln.T).tobytes().hex()  # 32 hex digits per series, lanes in order
        ks = [keys[i] for i in have.tolist()]
        self.digests.update(zip(ks, [hexes[32 * i : 32 * i + 32] for i in range(len(ks))], strict=True))
        self.counts.update(zip(ks, np.asarray(counts)[have].astype(np.int64).tolist(), strict=True))
        lo, hi = float(np.min(np.asarray(t_min)[have])), float(np.max(np.asarray(t_max)[have]))
        self.t_min = lo if self.t_min is None else min(self.t_min, lo)
        self.t_max = hi if self.t_max is None else max(self.t_max, hi)

    def add_points(self, keys: list[str], sid: np.ndarray, t: np.ndarray, v: np.ndarray, q: np.ndarray) -> None:
        """Fold raw readings (``sid`` indexing ``keys``, ``t`` POSIX seconds) in."""
        if len(sid) == 0:
            return
        t_us = np.round(np.asarray(t, np.float64) * 1e6).astype(np.int64)
        n = len(keys)
        lanes = lane_sums(sid, n, t_us, v, q)
        cnt = np.bincount(sid, minlength=n)
        tmin = np.full(n, np.inf)
        tmax = np.full(n, -np.inf)
        np.minimum.at(tmin, sid, t)
        np.maximum.at(tmax, sid, t)
        for i in np.flatnonzero(cnt).tolist():
            self.add_series(keys[i], int(cnt[i]), lanes[:, i], float(tmin[i]), float(tmax[i]))

    def as_dict(self, time_fmt: Any = None) -> dict[str, Any]:
        f = time_fmt or (lambda x: x)
        return {"readings": self.readings, "series": sum(1 for c in self.counts.values() if c),
                "from": None if self.t_min is None else f(self.t_min),
                "to": None if self.t_max is None else f(self.t_max),
                "content_sha256": self.content_hash()}
