"""The alarm evaluation pipeline: tag changes -> conditions -> transitions.

1. :meth:`EvaluationPipeline._on_changes` (the engine's tag-database subscription) turns a
   change batch into the condition rows it concerns and evaluates them in one vectorised pass
   (:mod:`scada.alarms.conditions`); suppression rules whose source changed are re-evaluated
   (:mod:`scada.alarms.suppression`).
2. Rows whose raw level changed go through the on-/off-delay filter (:meth:`_schedule`, ISA-18.2
   alarm on-delay / off-delay); delayed ones get a deadline that the timer (:meth:`due`,
   :meth:`run`, on the injected clock) fires if the level held for the whole delay.
3. Level changes become transitions by the table of :mod:`scada.alarms.transitions`
   (:meth:`_apply_levels`): raises and clears of a flood in bulk (:meth:`_bulk`, lines from
   :func:`scada.alarms.codec.bulk_lines`), alarms hidden by design silently
   (:meth:`_hidden_levels`). The engine then journals and announces them (``_commit``).

A mixin of :class:`~scada.alarms.engine.AlarmEngine`: it works on the engine's store
(``self.st``), condition and suppression tables.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from scada.tags import Changes

from . import codec, transitions
from . import model as M


@dataclass(slots=True)
class _Bulk:
    """Raises of one batch: journal lines now, AlarmEvent objects after the write."""

    seq0: int
    rows: np.ndarray
    ts: float
    lines: list[bytes]
    event: str = M.RAISE


class EvaluationPipeline:
    """Evaluation, delays, suppression and the timer of the alarm engine (see the module)."""

    def _on_changes(self, ch: Changes) -> None:
        if self.following:  # a standby: the active evaluates (scada.ha.replication)
            return
        rows = self.cond.rows_for(ch.indices)
        srules = self.supp.rules_for(ch.indices, None) if self.supp.n else None
        if len(rows) == 0 and (srules is None or len(srules) == 0):
            return
        events: list[Any] = []
        self._process(rows, ch.server_ts, events, tags=srules)
        self._commit(events)

    def _process(self, rows: np.ndarray, now: float, events: list[Any],
                 tags: np.ndarray | None) -> None:
        """Evaluate ``rows``; apply suppression changes, then immediate level transitions."""
        self.stats["batches"] += 1
        self.stats["evaluations"] += len(rows)
        new = self._combine(rows, self.cond.evaluate(rows, self.tagdb.value, self.tagdb.quality,
                                                     now))
        chg = new != self.cond.raw[rows]
        rc = rows[chg]
        lc = new[chg]
        self.cond.raw[rc] = lc
        self._after_raw(rc, lc, now, events, tag_rules=tags)

    def _after_raw(self, rc: np.ndarray, lc: np.ndarray, now: float, events: list[Any],
                   tag_rules: np.ndarray | None = None, immediate: bool = False) -> None:
        if self.supp.n:
            rules = self.supp.rules_for(None, rc) if len(rc) else np.zeros(0, dtype=np.int64)
            if tag_rules is not None and len(tag_rules):
                rules = np.unique(np.concatenate([rules, tag_rules]))
            if len(rules):
                tg, st = self.supp.update(rules, self.cond.raw, self.tagdb.value,
                                          self.tagdb.quality)
                diff = st != self.st.suppressed[tg]
                self._set_suppressed(tg[diff], st[diff], now, events)
        if len(rc):
            r, lv = self._schedule(rc, lc, now, immediate)
            if len(r):
                self._apply_levels(r, lv, now, events)

    def _schedule(self, rows: np.ndarray, levels: np.ndarray, now: float,
                  immediate: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """On-/off-delay filter: returns the rows that transition now; the others get a
        deadline (or lose theirs when the raw level went back to the announced one).
        ``immediate``: no delay (a condition whose own service already timed it)."""
        same = levels == self.st.level[rows]
        self.st.pend_t[rows[same]] = np.nan
        r = rows[~same]
        lv = levels[~same]
        if not len(r):
            return r, lv
        delay = np.where(lv != 0, self.cond.on_delay[r], self.cond.off_delay[r])
        later = (delay > 0) & (not immediate)
        if later.any():
            rl = r[later]
            self.st.pend_t[rl] = now + delay[later]
            self.st.pend_level[rl] = lv[later]
            self._wake.set()
        now_r = r[~later]
        self.st.pend_t[now_r] = np.nan
        return now_r, lv[~later]

    def _apply_levels(self, rows: np.ndarray, levels: np.ndarray, now: float,
                      events: list[Any]) -> None:
        """Level changes that passed the delays: the new state of each row is a look-up in the
        transition table (:mod:`scada.alarms.transitions`); raises and clears go out in bulk."""
        st = self.st
        tags = self.cond.tag[rows]
        vals = np.where(tags >= 0, self.tagdb.value[tags], st.value[rows])
        old = st.level[rows]
        ev = transitions.level_events(old, levels)
        state = transitions.state_of(old, st.acked[rows])
        by_design = st.suppressed[rows] | st.oos[rows]
        new = transitions.NEXT[by_design.astype(np.int8), state, ev]
        fx = transitions.EFFECTS[state, ev]
        quiet = ~transitions.journaled(st.shelved[rows], st.suppressed[rows], st.oos[rows])
        if quiet.any():
            self._hidden_levels(rows[quiet], levels[quiet], vals[quiet], new[quiet], fx[quiet],
                                now)
            keep = ~quiet
            rows, levels, vals, ev, new, fx = (rows[keep], levels[keep], vals[keep], ev[keep],
                                               new[keep], fx[keep])
            if not len(rows):
                return
        up = ev == transitions.RAISE
        if up.any():
            self._bulk(M.RAISE, rows[up], levels[up], vals[up], new[up], now, events)
        # clears in bulk too (a flood ends as one batch), except one-shot shelved alarms
        down = (ev == transitions.CLEAR) & (st.shelved[rows] != M.ONESHOT)
        if down.any():
            self._bulk(M.CLEAR, rows[down], levels[down], vals[down], new[down], now, events)
        rest = ~up & ~down
        for c, lv, v, e, s, f in zip(rows[rest].tolist(), levels[rest].tolist(),
                                     vals[rest].tolist(), ev[rest].tolist(), new[rest].tolist(),
                                     fx[rest].tolist(), strict=True):
            st.level[c] = lv
            st.value[c] = v
            st.acked[c] = (s & 1) == 0
            if f & transitions.MESSAGE:
                self.msg[c] = self._message(c, v, lv)
            events.append(self._event(c, transitions.EVENT_NAMES[e], now))
            if e == transitions.CLEAR:  # a one-shot shelved alarm returning to normal
                st.shelved[c] = transitions.SHELVING[(M.ONESHOT, "normal")]
                self.shelve_info.pop(c, None)
                events.append(self._event(c, M.UNSHELVE, now, user="system",
                                          comment="one-shot shelve ended: returned to normal"))
        self.stats["transitions"] += len(rows)

    def _hidden_levels(self, rows: np.ndarray, levels: np.ndarray, vals: np.ndarray,
                       new: np.ndarray, fx: np.ndarray, now: float) -> None:
        """Level changes of alarms suppressed by design or out of service: the state moves,
        nothing is journaled or announced.

        ISA-18.2 / IEC 62682 designed suppression and out-of-service: the operator is not to be
        told about these alarms, and an OPC UA client would receive each as an event with
        Retain false that it must discard (OPC UA Part 9, 5.5.2 Retain). At dawn, with the
        cabinets' contactors open by schedule, every luminaire's "dimming not followed" goes
        active behind its suppression: journaling and announcing each one was one event per
        luminaire per day (200,000 at Paris size) for nothing an operator may see. What the
        operator must see is covered by :meth:`_set_suppressed`: an alarm active or unacknowledged
        when its suppression starts gets one ``suppress`` event, and one still active when the
        suppression ends is annunciated then (``unsuppress``), with the level, value and message
        kept here. A hidden raise leaves the alarm unacknowledged (it is a new alarm the
        operator has not seen); a hidden return to normal needs no acknowledgement (nobody was
        shown it)."""
        st = self.st
        st.level[rows] = levels
        st.value[rows] = vals
        st.raised_at[rows[(fx & transitions.RAISED_AT) != 0]] = now
        st.acked[rows] = (new & 1) == 0  # the table's "hidden by design" column
        if self._dyn:
            dyn = self._dyn
            for c, lv, v, f in zip(rows.tolist(), levels.tolist(), vals.tolist(), fx.tolist(),
                                   strict=True):
                if f & transitions.MESSAGE and c in dyn:
                    self.msg[c] = self._message(c, v, lv)
        self.stats["transitions"] += len(rows)
        self.stats["hidden_transitions"] += len(rows)

    def _bulk(self, event: str, rows: np.ndarray, levels: np.ndarray, vals: np.ndarray,
              new: np.ndarray, now: float, events: list[Any]) -> None:
        """Raise (or clear) many alarms at once: a flood is one batch. State is updated with
        array operations; each journal line is one bytes formatting of (seq, level, value) and
        a precomputed per-alarm tail (identity and message). The AlarmEvent objects for the
        listeners are made after the journal write (in :meth:`_commit`), so a 10,000-alarm
        flood reaches the journal in milliseconds."""
        n = len(rows)
        self.st.level[rows] = levels
        self.st.value[rows] = vals
        # the transition table's new states (an alarm suppressed by design that returns to
        # normal needs no acknowledgement: nobody was shown it)
        self.st.acked[rows] = (new & 1) == 0
        if event == M.RAISE:
            self.st.raised_at[rows] = now
        sh = self.st.shelved[rows]
        sup = self.st.suppressed[rows]
        oos = self.st.oos[rows]
        acked = self.st.acked[rows]
        seq0 = self.seq + 1
        self.seq += n
        rl, ll, vl = rows.tolist(), levels.tolist(), vals.tolist()
        if self._dyn and event == M.RAISE:
            dyn = self._dyn
            for k, c in enumerate(rl):  # templates that show the value / limit
                if c in dyn:
                    self.msg[c] = self._message(c, vl[k], ll[k])
        lines = codec.bulk_lines(seq0, now, event, rl, ll, vl, acked, sh,
                                 self.st.shelve_until[rows], sup, oos, self._tail, self._tail_of,
                                 self._prefix, self.message_of)
        events.append(_Bulk(seq0, rows, now, lines, event))

    def _chatter(self, rows: np.ndarray, now: float) -> np.ndarray:
        """Record a raise of ``rows`` at ``now``; return the rows that just became chattering
        (``chatter.count`` raises within ``chatter.window``)."""
        return self.st.record_raise(rows, now, self.config.chatter.window)

    def _set_suppressed(self, rows: np.ndarray, states: np.ndarray, now: float,
                        events: list[Any], *, immediate: bool = False) -> None:
        """Suppression starts at once. For an alarm still active or unacknowledged it ends
        only once the alarm's own point has been sampled after the cause cleared, and no
        sooner than ``unsuppress_delay`` (at the latest ``unsuppress_max_wait`` after, if the
        device stays silent): the children of a cabinet that just came back, or of a
        contactor closed at dusk, report their new values first and clear silently instead of
        flashing as red dots. A fixed delay alone is not enough: luminaires behind a cabinet
        are read once a minute, so ten seconds after dusk most of them still showed the dark
        level of the day and 30,000 "dimming not followed" alarms were annunciated at once.

        Only alarms an operator could see (active or unacknowledged) get a journaled
        suppress/unsuppress event; for an alarm in Normal the flag changes silently, and so do
        its level changes while it stays suppressed (:meth:`_hidden_levels`). A gateway going
        offline thus journals a handful of lines, not one per alarm of its 256 luminaires."""
        if not len(rows):
            return
        retained = (self.st.level[rows] != 0) | ~self.st.acked[rows]
        on = states.astype(bool)
        self.st.unsupp_t[rows[on]] = np.nan
        self.st.unsupp_from[rows[on]] = np.nan
        delay = self.config.unsuppress_delay
        if not immediate and delay > 0:
            wait = ~on & retained
            if wait.any():
                w = rows[wait]
                fresh = w[np.isnan(self.st.unsupp_t[w])]
                if len(fresh):
                    self.st.unsupp_t[fresh] = now + delay
                    self.st.unsupp_from[fresh] = now
                    self._wake.set()
                rows, on, retained = rows[~wait], on[~wait], retained[~wait]
        self.st.suppressed[rows] = on
        for c, s in zip(rows[retained].tolist(), on[retained].tolist(), strict=True):
            events.append(self._event(c, M.SUPPRESS if s else M.UNSUPPRESS, now, user="system"))

    def due(self, now: float) -> None:
        """Fire delays, stale timeouts and shelve expiries that are due at ``now``."""
        n = self.n
        events: list[Any] = []
        # stale: no sample for `timeout`
        if len(self._stale_rows):
            r = self._stale_rows
            tags = self.cond.tag[r]
            seen = np.maximum(self.tagdb.last_seen[tags], self._t0)
            q = self.tagdb.quality[tags]
            want = ((now - seen) >= self.cond.timeout[r]) & (q != np.uint32(0x808D0000))
            cur = self.cond.raw[r] != 0
            flip = want != cur
            if flip.any():
                rc = r[flip]
                lc = want[flip].astype(np.int8)
                self.cond.raw[rc] = lc
                self._after_raw(rc, lc, now, events)
        # delays
        pt = self.st.pend_t[:n]
        with np.errstate(invalid="ignore"):
            due = np.nonzero(pt <= now)[0]
        if len(due):
            # fire in deadline order
            due = due[np.argsort(pt[due], kind="stable")]
            lv = self.st.pend_level[due].copy()
            self.st.pend_t[due] = np.nan
            keep = lv != self.st.level[due]
            self._apply_levels(due[keep], lv[keep], now, events)
        # delayed end of suppression, once the alarm's point reported after the cause cleared
        ut = self.st.unsupp_t[:n]
        with np.errstate(invalid="ignore"):
            ud = np.nonzero(ut <= now)[0]
        if len(ud):
            still = self.supp.suppressed(ud)
            since = self.st.unsupp_from[ud]
            tags = self.cond.tag[ud]
            seen = np.where(tags >= 0, self.tagdb.last_seen[np.maximum(tags, 0)], np.inf)
            limit = since + self.config.unsuppress_max_wait
            with np.errstate(invalid="ignore"):
                go = still | np.isnan(since) | (seen > since) | (limit <= now)
            if not go.all():  # not reported yet: look again in a second, up to the limit
                w = ud[~go]
                self.st.unsupp_t[w] = np.minimum(now + 1.0, limit[~go])
                ud = ud[go]
            self.st.unsupp_t[ud] = np.nan
            self.st.unsupp_from[ud] = np.nan
            ud = ud[~still[go] & self.st.suppressed[ud]]
            self._set_suppressed(ud, np.zeros(len(ud), dtype=np.bool_), now, events,
                                 immediate=True)
        # timed shelving expiry
        su = self.st.shelve_until[:n]
        with np.errstate(invalid="ignore"):
            exp = np.nonzero((su <= now) & (self.st.shelved[:n] == M.TIMED))[0]
        for c in exp.tolist():
            self.st.shelved[c] = transitions.SHELVING[(M.TIMED, "expired")]
            self.st.shelve_until[c] = np.nan
            self.shelve_info.pop(c, None)
            events.append(self._event(c, M.UNSHELVE, now, user="system",
                                      comment="timed shelve expired"))
        self._commit(events)

    def next_deadline(self, now: float) -> float:
        n = self.n
        cands = [now + self.config.max_tick]
        with np.errstate(invalid="ignore"):
            if n:
                pt = self.st.pend_t[:n]
                if not np.isnan(pt).all():
                    cands.append(float(np.nanmin(pt)))
                ut = self.st.unsupp_t[:n]
                if not np.isnan(ut).all():
                    cands.append(float(np.nanmin(ut)))
                su = np.where(self.st.shelved[:n] == M.TIMED, self.st.shelve_until[:n], np.nan)
                if not np.isnan(su).all():
                    cands.append(float(np.nanmin(su)))
            if len(self._stale_rows):
                r = self._stale_rows
                idle = self.cond.raw[r] == 0
                if idle.any():
                    rr = r[idle]
                    seen = np.maximum(self.tagdb.last_seen[self.cond.tag[rr]], self._t0)
                    cands.append(float(np.min(seen + self.cond.timeout[rr])))
                if (~idle).any():
                    cands.append(now + max(1.0, float(np.min(self.cond.timeout[r[~idle]])) / 4))
        return max(now, min(cands))

    async def run(self) -> None:
        """Timer task: sleeps on the clock until the next deadline (or until woken by a new
        delay), so stepped-clock tests fire delays exactly at their deadline."""
        self.start()
        fs = asyncio.create_task(self.journal.run_fsync(), name="alarms:fsync")
        try:
            while True:
                self._wake.clear()
                now = self.clock.time()
                if not self.following:
                    self.due(now)
                nxt = self.next_deadline(self.clock.time())
                await M.sleep_or_wake(self.clock, nxt - self.clock.time(), self._wake)
        finally:
            fs.cancel()
            await asyncio.gather(fs, return_exceptions=True)

    def _combine(self, rows: np.ndarray, new: np.ndarray) -> np.ndarray:
        """Tag evaluation OR external condition (see :meth:`set_condition`)."""
        if self._any_ext:
            ext = self.st.ext_on[rows] & (new == 0)
            if ext.any():
                new = np.where(ext, np.int8(1), new)
        return new
