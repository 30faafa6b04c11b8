"""The recorder: tag-database change batches in, blocks of points out (to the spool).

* The subscriber callback runs inside :meth:`TagDatabase.apply` and must be quick: it only
  copies the arrays of the batch onto a list. Selection and writing happen in the recorder's
  task (and the file I/O in a thread).
* Selection (vectorised per batch): discrete points (bool/int) keep every change; analog
  points keep a change when its quality differs from the last *recorded* one or the value
  moved more than the historian deadband of the point (``historian.deadband`` by point name,
  on top of the tag database's own deadband). Values are stored with their OPC UA status code
  and *source* timestamp (OPC UA Part 11 §4: history keeps the source time).
* Snapshots: every ``snapshot`` period each recorded tag is written once at the snapshot time
  with its current value and quality, so a flat signal still has points (time-weighted
  averages and counter reads per interval need them). A snapshot point is stamped with the
  snapshot time, not the stale source time, because it asserts "the value was still this".
* A status change without a new reading (a lost device: the tag database keeps the last good
  source time, OPC UA Part 8) is recorded at the server time of the change, and per tag history
  only moves forward (a sample whose source time is not after the last one seen is stamped with
  the server time, at least 1 ms later): "Bad since 14:02" never overwrites the good value
  recorded at 13:58.
* Swinging-door compression (Bristol 1990, as in OSIsoft PI's archive compression) for the
  analog points named in ``historian.swinging_door`` (deviation by point name): the held value
  is archived when the line from the last archived point to the new value would leave the
  door of the values in between; so every value seen is within the deviation of the straight
  lines between archived points (tested). The held value is archived at quality changes,
  snapshots and shutdown, so nothing is delayed for ever. Vectorised across tags per batch.
* Strings are not recorded (numeric history only; documented in docs/historian.md).
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Any

import numpy as np

from scada import quality as Q
from scada.tags import Changes, TagDatabase

from .base import Points

log = logging.getLogger("historian.recorder")


class Recorder:
    def __init__(
        self,
        tagdb: TagDatabase,
        *,
        deadband: dict[str, float] | None = None,
        exclude: list[str] | None = None,
        swinging_door: dict[str, float] | None = None,
        max_block_points: int = 500_000,
    ) -> None:
        self.tagdb = tagdb
        self.max_block_points = max_block_points
        self._deadband_by_point = dict(deadband or {})
        self._sdt_by_point = dict(swinging_door or {})
        self._exclude = list(exclude or [])
        self._queue: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]] = []
        self.queued = 0
        self.recorded = 0
        self.seen = 0
        self.overflow = 0
        self._handle: Any = None
        self._paths: dict[int, str] = {}
        self._n = 0
        self._build()
        self.on_full: Any = None  # callable set by the service: wake the writer early

    def _build(self) -> None:
        """Per-tag arrays: recorded?, analog?, historian deadband, last recorded state."""
        db = self.tagdb
        n = len(db)
        self._n = n
        self.recorded_mask = np.zeros(n, bool)
        self.analog = np.zeros(n, bool)
        self.hdb = np.zeros(n, np.float64)
        self.sdt = np.zeros(n, np.float64)
        for d, dev in db.devices():
            if any(fnmatch.fnmatchcase(dev + "/x", pat) or fnmatch.fnmatchcase(dev, pat.rstrip("/*"))
                   for pat in self._exclude):
                continue
            first = db.device_first(d)
            for k, p in enumerate(db.device_schema(d).points):
                if not p.history or p.dtype == "string":
                    continue
                i = first + k
                self.recorded_mask[i] = True
                self.analog[i] = p.dtype == "float"
                self.hdb[i] = self._deadband_by_point.get(p.name, 0.0)
                if self.analog[i]:
                    self.sdt[i] = self._sdt_by_point.get(p.name, 0.0)
        self.last_v = np.full(n, np.nan)
        self.last_q = np.full(n, 0xFFFFFFFF, np.uint32)
        self.last_t = np.full(n, -np.inf)  # time of the last sample seen (after the rule below)
        # swinging door state: archived point, held point, slope bounds
        self.a_t = np.full(n, np.nan)
        self.a_v = np.full(n, np.nan)
        self.h_t = np.full(n, np.nan)
        self.h_v = np.full(n, np.nan)
        self.h_q = np.zeros(n, np.uint32)
        self.has_h = np.zeros(n, bool)
        self.up = np.full(n, np.inf)
        self.lo = np.full(n, -np.inf)

    @property
    def tag_space(self) -> int:
        """Number of tags of the database when the per-tag arrays were built."""
        return self._n

    def rebuild(self) -> None:
        """Re-read the tag database (tags were added) and re-subscribe; queued changes stay."""
        was = self._handle is not None
        self.stop()
        self._build()
        if was:
            self.start()

    @property
    def tag_count(self) -> int:
        return int(self.recorded_mask.sum())

    def start(self) -> None:
        if self._handle is not None:
            return
        self._handle = self.tagdb.subscribe(
            self._on_changes, name="historian.recorder", only=np.flatnonzero(self.recorded_mask)
        )

    def stop(self) -> None:
        if self._handle is not None:
            self.tagdb.unsubscribe(self._handle)
            self._handle = None

    # ------------------------------------------------------------------ callback (quick)
    def _on_changes(self, ch: Changes) -> None:
        if self.queued > 20 * self.max_block_points:
            # the writer task is not running (or far behind): bound memory, count the loss
            self.overflow += len(ch.indices)
            return
        # a device lost (tagdb.mark): status turns non-Good, value unchanged, source time kept
        # at the last good reading (OPC UA Part 8) - history records it when it happened
        v, ov = ch.values, ch.old_values
        status_only = (ch.quality != ch.old_quality) & ((v == ov) | (np.isnan(v) & np.isnan(ov))) & ~Q.good_mask(ch.quality)
        t = np.where(status_only, ch.server_ts, ch.source_ts) if status_only.any() else ch.source_ts.copy()
        self._queue.append((ch.indices.copy(), v.copy(), ch.quality.copy(), t, ch.server_ts))
        self.queued += len(ch.indices)
        if self.queued >= self.max_block_points and self.on_full is not None:
            self.on_full()

    def snapshot(self, now: float) -> None:
        """Queue every recorded tag's current state, stamped ``now`` (see module doc)."""
        db = self.tagdb
        idx = np.flatnonzero(self.recorded_mask[: len(db)])
        if len(idx) == 0:
            return
        q = db.quality[idx]
        ok = q != Q.BadWaitingForInitialData  # never read: nothing to assert
        idx = idx[ok]
        self._queue.append((idx, db.value[idx].copy(), db.quality[idx].copy(), np.full(len(idx), now), now))
        self.queued += len(idx)
        self._force = idx

    # ------------------------------------------------------------------ selection (task)
    def take(self) -> Points:
        """Everything queued so far, filtered by deadband, as one block (may be empty)."""
        chunks, self._queue = self._queue, []
        self.queued = 0
        if not chunks:
            return Points.empty()
        force = getattr(self, "_force", None)
        self._force = None
        out_i, out_v, out_q, out_t = [], [], [], []
        for idx, v, q, t, server_ts in chunks:
            self.seen += len(idx)
            # history per tag only moves forward: a sample whose source time is not after the
            # last one seen (a status change marked without a new reading keeps its old source
            # time) is stamped with the server time of the change (at least 1 ms later), so it
            # never overwrites what was recorded before
            if server_ts != -np.inf:
                lt = self.last_t[idx]
                stale = ~(t > lt)
                if stale.any():
                    t = np.where(stale, np.maximum(server_ts, lt + 0.001), t)
                self.last_t[idx] = t
            forced = force is not None and idx is force
            sd = self.sdt[idx] > 0
            if sd.any():
                for part in self._swinging_door(idx[sd], v[sd], q[sd], t[sd], forced):
                    out_i.append(part[0])
                    out_v.append(part[1])
                    out_q.append(part[2])
                    out_t.append(part[3])
                if sd.all():
                    continue
                idx, v, q, t = idx[~sd], v[~sd], q[~sd], t[~sd]
            if forced:
                keep = np.ones(len(idx), bool)
            else:
                lv = self.last_v[idx]
                moved = ~(np.abs(v - lv) <= self.hdb[idx])  # NaN on either side counts as moved
                keep = ~self.analog[idx] | (q != self.last_q[idx]) | moved
            if not keep.all():
                idx, v, q, t = idx[keep], v[keep], q[keep], t[keep]
            if len(idx) == 0:
                continue
            self.last_v[idx] = v
            self.last_q[idx] = q
            out_i.append(idx)
            out_v.append(v)
            out_q.append(q)
            out_t.append(t)
        if not out_i:
            return Points.empty()
        idx = np.concatenate(out_i)
        uniq, inv = np.unique(idx, return_inverse=True)
        keys = [self._path(int(i)) for i in uniq]
        self.recorded += len(idx)
        return Points(keys, inv.astype(np.int32), np.concatenate(out_t),
                      np.concatenate(out_v), np.concatenate(out_q).astype(np.uint32))

    def _swinging_door(self, idx: np.ndarray, v: np.ndarray, q: np.ndarray, t: np.ndarray,
                       forced: bool) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """One swinging-door step per tag (vectorised); returns the archived rows, held ones
        first. A tag appearing twice in the batch is handled in successive rounds."""
        out: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        _, first = np.unique(idx, return_index=True)
        if len(first) < len(idx):
            rest = np.ones(len(idx), bool)
            rest[first] = False
            out += self._swinging_door(idx[first], v[first], q[first], t[first], forced)
            return out + self._swinging_door(idx[rest], v[rest], q[rest], t[rest], forced)
        dev = self.sdt[idx]
        a_t, a_v = self.a_t[idx], self.a_v[idx]
        dt = t - a_t
        restart = (forced | np.isnan(a_t) | (q != self.last_q[idx]) | ~Q.good_mask(q) | ~(dt > 0)
                   | np.isnan(v))
        with np.errstate(invalid="ignore", divide="ignore"):
            su = (v + dev - a_v) / dt
            sl = (v - dev - a_v) / dt
            sc = (v - a_v) / dt
        held = self.has_h[idx]
        up0, lo0 = self.up[idx], self.lo[idx]
        # the line archived -> current must pass within the deviation of every value between
        # them (the door of those values), else the held value is archived: that guarantees
        # every recorded value is within the deviation of the archived polyline
        broken = ~restart & held & ((sc > up0) | (sc < lo0))
        nup = np.minimum(up0, su)
        nlo = np.maximum(lo0, sl)
        emit_held = held & (restart | broken)
        if emit_held.any():
            hi = idx[emit_held]
            out.append((hi, self.h_v[hi].copy(), self.h_q[hi].copy(), self.h_t[hi].copy()))
        # new archived point: the held one (door broken) or the current one (restart)
        na_t = np.where(broken, self.h_t[idx], np.where(restart, t, a_t))
        na_v = np.where(broken, self.h_v[idx], np.where(restart, v, a_v))
        if restart.any():
            out.append((idx[restart], v[restart], q[restart], t[restart]))
        with np.errstate(invalid="ignore", divide="ignore"):
            dt2 = t - na_t
            bu = (v + dev - na_v) / dt2
            bl = (v - dev - na_v) / dt2
        self.up[idx] = np.where(restart, np.inf, np.where(broken, bu, nup))
        self.lo[idx] = np.where(restart, -np.inf, np.where(broken, bl, nlo))
        self.a_t[idx], self.a_v[idx] = na_t, na_v
        keep_h = ~restart
        self.has_h[idx] = keep_h
        self.h_t[idx] = np.where(keep_h, t, np.nan)
        self.h_v[idx] = v
        self.h_q[idx] = q
        self.last_q[idx] = q
        self.last_v[idx] = v
        return out

    def release_held(self) -> None:
        """Queue every swinging-door held value (shutdown): recorded, not lost."""
        hi = np.flatnonzero(self.has_h)
        if len(hi):
            self._queue.append((hi, self.h_v[hi].copy(), self.h_q[hi].copy(), self.h_t[hi].copy(), -np.inf))
            self.queued += len(hi)
            self._force = self._queue[-1][0]
            self.has_h[hi] = False
            self.a_t[hi] = np.nan

    def _path(self, i: int) -> str:
        p = self._paths.get(i)
        if p is None:
            p = self._paths[i] = self.tagdb.path(i)
        return p
