# One module (over ~600 lines): what every part of the engine shares (identity, restore, journal-then-announce, operator actions); pipeline, transitions, store, codec and declare are split out.
"""The alarm engine: conditions in, ISA-18.2 alarm states out, every transition journaled first.

Data flow (DESIGN.md "the tag database is the hub"): tag changes -> conditions -> transitions
-> journal -> listeners. The engine is split by concern:

* :mod:`scada.alarms.pipeline`: tag changes -> conditions (vectorised) -> on-/off-delays ->
  suppression -> transitions, and the timer (delays, stale timeouts, shelve expiry);
* :mod:`scada.alarms.transitions`: the ISA-18.2 / OPC UA Part 9 transitions as one table;
* :mod:`scada.alarms.store`: the state columns (level, acked, shelved, suppressed, oos ...);
* :mod:`scada.alarms.codec`: the journal line format (one writer, one reader);
* :mod:`scada.alarms.declare`: alarm instances and suppression rules from the site;
* this module: the engine itself (identity of alarms, start and restore from the journal,
  journal-then-announce in :meth:`AlarmEngine._commit`, queries and the operator actions).

Transitions update the OPC UA Part 9 flags (ActiveState, AckedState, ShelvingState,
SuppressedState, OutOfServiceState), are written to the journal in **one** write per batch, and
only then handed to the listeners (OPC UA Alarms & Conditions, notifications).

Operator actions (acknowledge, comment, shelve, unshelve, out-of-service) take a comment and
are journaled with the user. Who may perform them, in which areas, and the audit log are the
operator API's (:mod:`scada.operations`), which calls these methods.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from scada.clock import Clock
from scada.ha.role import Fenced
from scada.sections.alarms import PRIORITY_SEVERITY, AlarmDef, AlarmsConfig
from scada.tags import TagDatabase

from . import codec, transitions
from . import model as M
from .conditions import ConditionTable
from .declare import Declarations, _Pending, build_from_site  # noqa: F401  (build_from_site: public here)
from .journal import Journal, current_states
from .pipeline import EvaluationPipeline, _Bulk
from .store import AlarmStore
from .suppression import SuppressionTable

log = logging.getLogger("scada.alarms")

Listener = Callable[[list[M.AlarmEvent]], None]


class _Fmt(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class _Ids:
    """``ids[c]`` = ``device/name`` of row ``c``, made on demand (no string kept per alarm)."""

    __slots__ = ("_e",)

    def __init__(self, engine: AlarmEngine):
        self._e = engine

    def __getitem__(self, c: int) -> str:
        return f"{self._e.device[c]}/{self._e.name[c]}"

    def __len__(self) -> int:
        return self._e.n


class _ById:
    """Alarm id -> row through the device index (a device has tens of alarms at most)."""

    __slots__ = ("_e",)

    def __init__(self, engine: AlarmEngine):
        self._e = engine

    def get(self, alarm_id: str, default: int | None = None) -> int | None:
        device, _, name = alarm_id.rpartition("/")
        names = self._e.name
        for c in self._e.by_device.get(device, ()):
            if names[c] == name:
                return c
        return default

    def __contains__(self, alarm_id: object) -> bool:
        return isinstance(alarm_id, str) and self.get(alarm_id) is not None

    def __getitem__(self, alarm_id: str) -> int:
        c = self.get(alarm_id)
        if c is None:
            raise KeyError(alarm_id)
        return c

    def __len__(self) -> int:
        return self._e.n

    def items(self) -> Iterator[tuple[str, int]]:
        ids = self._e.ids
        return ((ids[c], c) for c in range(self._e.n))


class AlarmEngine(Declarations, EvaluationPipeline):
    """Alarm instances of one server; see the module docstring."""

    def __init__(self, tagdb: TagDatabase, clock: Clock, journal: Journal, *,
                 config: AlarmsConfig | None = None,
                 on_out_of_service: Callable[[str, bool], None] | None = None):
        self.tagdb = tagdb
        self.clock = clock
        self.journal = journal
        if journal.snapshot is None:
            journal.snapshot = self.snapshot
        self.config = config or AlarmsConfig()
        #: optional hook called with (device, oos) after each out-of-service change the engine
        #: follows (the state itself lives in the tag database)
        self.on_out_of_service = on_out_of_service
        self.cond = ConditionTable()
        self.supp = SuppressionTable()
        # per-alarm metadata (Python lists: touched only on transitions)
        #: alarm ids (``device/name``) made on demand: a city has millions of potential alarms
        self.ids = _Ids(self)
        self.device: list[str] = []
        self.area: list[str] = []
        self.name: list[str] = []
        self.category: list[str] = []
        self.priority: list[int] = []
        self.severity: list[int] = []
        self.template: list[str] = []
        self.location: list[str] = []
        self.unit: list[str] = []
        #: current message; None = the template's text without value (computed when needed)
        self.msg: list[str | None] = []
        #: cache of a raise line's tail (identity + message) for static templates, built on the
        #: alarm's first raise; None = not built yet or the template shows the value
        self._tail: list[bytes | None] = []
        self._dyn: set[int] = set()  # rows whose template shows {value} or {limit}
        self.by_id = _ById(self)
        self.by_device: dict[str, list[int]] = {}
        self.shelve_info: dict[int, tuple[str, str]] = {}
        #: devices out of service according to the journal, applied to the tag database (the
        #: one owner of that state) when the engine starts
        self._restored_oos: set[str] = set()
        self._restoring = False
        #: events of the last out-of-service change (returned by :meth:`set_out_of_service`)
        self._oos_events: list[M.AlarmEvent] = []
        self._pending_rules: list[_Pending] = []
        self._parent_of: dict[str, str] = {}
        self._specs: dict[int, tuple[AlarmDef, dict[str, float]]] = {}
        #: the alarms' state columns (scada.alarms.store): level, acked, shelved ...
        self.st = AlarmStore(1024, self.config.chatter.count)
        self._any_ext = False
        self.listeners: list[Listener] = []
        #: batches journaled but not announced yet: waiting for their fsync (fsync "always")
        self._deferred: deque[tuple[concurrent.futures.Future[Any], list[M.AlarmEvent]]] = deque()
        self.seq = journal.last_seq
        self.stats = {"evaluations": 0, "batches": 0, "transitions": 0, "hidden_transitions": 0,
                      "journal_errors": 0, "listener_errors": 0}
        self._stale_rows = np.zeros(0, dtype=np.int64)
        self._started = False
        self._following = False
        self._t0 = 0.0
        self._sub: object | None = None
        self._wake = asyncio.Event()
        tagdb.on_out_of_service(self._on_out_of_service)

    @property
    def following(self) -> bool:
        """A standby's engine (:mod:`scada.ha.replication`): the states come from the active's
        journal (:meth:`apply_replicated`); no evaluation, no journal write (the journal does
        not even rotate: its files are the active's), no operator action until
        :meth:`take_over`."""
        return self._following

    @following.setter
    def following(self, on: bool) -> None:
        self._following = bool(on)
        self.journal.readonly = bool(on)

    @property
    def oos_devices(self) -> set[str]:
        """Devices out of service: read from the tag database, which owns that state."""
        return set(self.tagdb.out_of_service_devices())

    def _grow(self, need: int) -> None:
        if self.st.grow(need):
            self.supp.grow_conds(self.st.cap)

    def _trim(self, cap: int) -> None:
        """Give back the spare capacity of the doubling growth once the site is declared."""
        self.st.trim(cap)
        for name in self.cond._ARRAYS:
            a = getattr(self.cond, name)
            if len(a) > cap:
                setattr(self.cond, name, a[:cap].copy())

    # ------------------------------------------------------------------ definition
    def message_of(self, c: int) -> str:
        m = self.msg[c]
        return self._message(c, float("nan"), 0) if m is None else m

    def _prefix(self, c: int) -> str:
        """The identity members of a journal line (:func:`scada.alarms.codec.identity`)."""
        return codec.identity(self.ids[c], self.device[c], self.area[c], self.name[c],
                              self.category[c], self.priority[c], self.severity[c],
                              bool(self.cond.kind[c] == M.K_EXTERNAL))

    def _tail_of(self, c: int) -> bytes:
        """Identity + message of a raise line; cached for static templates."""
        t = self._tail[c]
        if t is None:
            t = codec.message_tail(self._prefix(c), self.message_of(c))
            if c not in self._dyn:
                self._tail[c] = t
        return t

    @property
    def n(self) -> int:
        return self.cond.n

    # ------------------------------------------------------------------ start / restore
    def start(self) -> None:
        """Resolve rules, restore the journal's states, subscribe, evaluate current values.

        Idempotent. After a restart the restored level of each alarm is also its raw level, so
        a fault still present when data comes back does not raise (and journal) twice.
        """
        if self._started:
            return
        self._resolve_rules()
        self._trim(self.n + max(64, self.n // 16))
        self.cond.build_index(len(self.tagdb))
        self.supp.build(len(self.tagdb), len(self.st.level))
        self._stale_rows = np.nonzero(self.cond.kind[: self.n] == M.K_STALE)[0]
        self._restore()
        self._started = True
        self._t0 = self.clock.time()  # stale timeouts of never-seen tags count from here
        self._sub = self.tagdb.subscribe(self._on_changes, name="alarms")
        if not self.following:
            self._evaluate_all()
        # devices the journal says are under works: back out of service in the tag database
        # (no new journal lines: these are the journal's own state)
        self._set_oos_quietly(self._restored_oos)

    def _evaluate_all(self) -> None:
        """Suppression from scratch and every tag condition on the current values."""
        now = self.clock.time()
        events: list[Any] = []
        # suppression from scratch, compared with the restored flags
        self.supp.update(self.supp.all_rules(), self.cond.raw, self.tagdb.value,
                         self.tagdb.quality)
        rows = np.arange(self.n, dtype=np.int64)
        want = self.supp.suppressed(rows)
        diff = rows[want != self.st.suppressed[: self.n]]
        self._set_suppressed(diff, want[diff], now, events)
        tagged = rows[self.cond.tag[: self.n] >= 0]
        tagged = tagged[self.cond.kind[tagged] != M.K_EXTERNAL]
        self._process(tagged, now, events, tags=None)
        self._commit(events)

    def _set_oos_quietly(self, devices: set[str]) -> None:
        """Make the tag database's out-of-service devices ``devices`` (the journal's own state:
        no new journal lines)."""
        now = self.oos_devices
        self._restoring = True
        try:
            for d, oos in [(d, False) for d in sorted(now - devices)] + [
                    (d, True) for d in sorted(devices - now)]:
                try:
                    self.tagdb.set_out_of_service(d, oos)
                except KeyError:
                    log.warning("alarms: %s was out of service in the journal but is no longer "
                                "configured; ignored", d)
        finally:
            self._restoring = False

    def _restore(self) -> None:
        alarms, devices, raised = current_states(self.journal.directory)
        if not alarms and not devices:
            return
        self._restored_oos = {d for d, e in devices.items() if e.get("event") == M.OUT_OF_SERVICE}
        for aid, e in alarms.items():
            c = self.by_id.get(aid)
            if c is None:
                if e.get("kind") == "external":
                    c = self._external_row(e["device"], e["name"], e.get("category", "system"),
                                           int(e.get("priority", 3)), int(e.get("severity", 500)),
                                           e.get("area"))
                else:
                    continue
            self._set_row(c, e)
            if self.device[c] in self._restored_oos:
                self.st.oos[c] = True
            if self.st.level[c] and aid in raised:
                self.st.raised_at[c] = raised[aid]
        log.info("alarms: restored %d alarm states (%d active, %d unacknowledged, %d shelved, "
                 "%d devices out of service) from %s", len(alarms),
                 int((self.st.level[: self.n] != 0).sum()), int((~self.st.acked[: self.n]).sum()),
                 int((self.st.shelved[: self.n] != 0).sum()), len(self._restored_oos),
                 self.journal.directory)

    def _set_row(self, c: int, e: dict[str, Any]) -> None:
        """Row ``c`` to the state a journal line says (the last line of an alarm is its
        state); its raw level too, so a fault still present does not raise it again."""
        lvl = int(e.get("active") or 0)
        self.st.level[c] = lvl
        self.cond.raw[c] = lvl
        self.st.acked[c] = bool(e.get("acked", True))
        self.st.shelved[c] = int(e.get("shelved") or 0)
        su = e.get("shelve_until")
        self.st.shelve_until[c] = float(su) if isinstance(su, (int, float)) else np.nan
        if self.st.shelved[c]:
            self.shelve_info[c] = (e.get("user") or "", e.get("comment") or "")
        else:
            self.shelve_info.pop(c, None)
        self.st.suppressed[c] = bool(e.get("suppressed"))
        self.st.oos[c] = bool(e.get("oos"))
        if c in self._dyn:
            self.msg[c] = e.get("message") or None
        v = e.get("value")
        self.st.value[c] = float(v) if isinstance(v, (int, float)) else np.nan

    # ------------------------------------------------------------------ standby (issue 22)
    def follow(self) -> None:
        """Become a standby's copy: stop evaluating, journaling and taking operator actions;
        the states now come from :meth:`apply_replicated` (scada.ha.replication)."""
        self.following = True
        self._pending_clear()

    def _pending_clear(self) -> None:
        n = self.n
        self.st.pend_t[:n] = np.nan
        self.st.pend_level[:n] = 0
        self.st.unsupp_t[:n] = np.nan

    def apply_replicated(self, entries: Iterable[dict[str, Any]],
                         events: bool = True) -> list[M.AlarmEvent]:
        """Apply the active's journal lines, in order, to this standby's states (hot standby).

        Each line carries the alarm's whole state after its transition, so applying it is
        setting the row (what a restart's restore does, line by line); the columns are written
        once per run of lines (a 10,000-alarm flood is a few array assignments). Device lines
        put the device out of / back in service in the tag database without journaling.
        Returns the transitions as events (same ``seq`` and message as the active's) for the
        listeners a standby keeps (OPC UA, consoles; not the notifier: the active sent those),
        or nothing when ``events`` is false."""
        out: list[M.AlarmEvent] = []
        cols: dict[int, tuple[Any, ...]] = {}  # row -> its last line's state (last one wins)
        raised: dict[int, float] = {}
        now = self.clock.time()
        for e in entries:
            seq = int(e.get("seq") or 0)
            if seq > self.seq:
                self.seq = seq
            ts = e.get("ts")
            ts = float(ts) if isinstance(ts, (int, float)) else now
            if not e.get("name"):
                ev = e.get("event")
                if ev in (M.OUT_OF_SERVICE, M.IN_SERVICE):
                    self._write_cols(cols, raised)  # the device's rows follow the line order
                    cur = self.oos_devices
                    dev = str(e.get("device", ""))
                    self._set_oos_quietly(cur | {dev} if ev == M.OUT_OF_SERVICE else cur - {dev})
                continue
            aid = e.get("alarm_id")
            if not isinstance(aid, str):
                continue
            c = self.by_id.get(aid)
            if c is None:
                if e.get("kind") != "external":
                    continue
                c = self._external_row(e["device"], e["name"], e.get("category", "system"),
                                       int(e.get("priority", 3)), int(e.get("severity", 500)),
                                       e.get("area"))
            lv = int(e.get("active") or 0)
            acked = bool(e.get("acked", True))
            sh = int(e.get("shelved") or 0)
            su = e.get("shelve_until")
            su = float(su) if isinstance(su, (int, float)) else None
            sup = bool(e.get("suppressed"))
            oos = bool(e.get("oos"))
            v = e.get("value")
            v = float(v) if isinstance(v, (int, float)) else None
            cols[c] = (lv, acked, sh, su, sup, oos, v)
            if sh:
                self.shelve_info[c] = (e.get("user") or "", e.get("comment") or "")
            elif c in self.shelve_info:
                del self.shelve_info[c]
            if c in self._dyn:
                self.msg[c] = e.get("message") or None
            event = str(e.get("event", "state"))
            if event == M.RAISE:
                raised[c] = ts
            if events:
                msg = e.get("message")
                out.append(M.AlarmEvent(
                    seq, ts, c, aid, self.device[c], self.area[c], self.name[c],
                    self.category[c], self.priority[c], self.severity[c], event,
                    str(e.get("state") or M.state_name(lv != 0, acked, sh, sup, oos)), lv, acked,
                    sh, sup, oos, v, msg if isinstance(msg, str) else self.message_of(c),
                    e.get("user"), e.get("comment"), su))
        self._write_cols(cols, raised)
        self.stats["transitions"] += len(out)
        return out

    def _write_cols(self, cols: dict[int, tuple[Any, ...]], raised: dict[int, float]) -> None:
        """Write the collected rows' states into the columns (and their raw level: a fault
        still present when this standby takes over is not raised again)."""
        if cols:
            rows = np.fromiter(cols.keys(), dtype=np.int64, count=len(cols))
            lv, acked, sh, su, sup, oos, v = zip(*cols.values(), strict=True)
            st = self.st
            st.level[rows] = lv
            self.cond.raw[rows] = lv
            st.acked[rows] = acked
            st.shelved[rows] = sh
            st.shelve_until[rows] = np.array(su, dtype=np.float64)  # None -> NaN
            st.suppressed[rows] = sup
            st.oos[rows] = oos
            st.value[rows] = np.array(v, dtype=np.float64)
            cols.clear()
        if raised:
            self.st.raised_at[np.fromiter(raised.keys(), dtype=np.int64, count=len(raised))] = \
                np.fromiter(raised.values(), dtype=np.float64, count=len(raised))
            raised.clear()

    def announce(self, events: list[M.AlarmEvent], exclude: Iterable[Listener] = ()) -> None:
        """Hand ``events`` to the listeners, except ``exclude`` (replication on a standby)."""
        skip = list(exclude)
        if not skip:
            self._announce(events)
            return
        keep = [fn for fn in self.listeners if fn not in skip]
        saved, self.listeners = self.listeners, keep
        try:
            self._announce(events)
        finally:
            self.listeners = saved

    def reload(self) -> None:
        """Forget every state and restore them from the journal directory (a standby whose
        copy of a journal file was replaced: the old active rejoining with transitions the new
        active never received)."""
        n = self.n
        self.st.reset(n)
        self.cond.raw[:n] = 0
        self.shelve_info.clear()
        self._restored_oos = set()
        self.journal.reopen()
        self.seq = self.journal.last_seq
        self._restore()
        self._set_oos_quietly(self._restored_oos)

    def take_over(self) -> None:
        """Promotion of a standby: the journal continues where the active's stopped (same
        files, next sequence number) and the engine evaluates again. The replicated states
        are authoritative: nothing is re-evaluated now (the standby's tags hold no device
        data yet); the new active's first polls arrive as changes and evaluate as usual, so
        a fault the old active already raised is not raised twice (raw level = level)."""
        self.journal.reopen()
        self.seq = max(self.seq, self.journal.last_seq)
        self._t0 = self.clock.time()
        self.following = False
        self._wake.set()

    def _writable(self) -> None:
        if self.following:
            raise Fenced("this server is the standby: alarm actions are taken on the active "
                         "server")

    def snapshot(self) -> dict[str, Any]:
        """Every alarm not in its default state (Normal, in service, not shelved/suppressed),
        and the devices out of service, as of ``seq`` (see :class:`Journal`); columnar, built
        from the arrays (a few ms for 10,000 active alarms)."""
        n = self.n
        rows = self.st.not_default(n)
        rl = rows.tolist()

        def floats(a: np.ndarray) -> list[float | None]:
            return [None if math.isnan(v) else v for v in a[rows].tolist()]

        lv = self.st.level[rows].tolist()
        ack = self.st.acked[rows].tolist()
        sh = self.st.shelved[rows].tolist()
        sup = self.st.suppressed[rows].tolist()
        oos = self.st.oos[rows].tolist()
        cols: dict[str, list[Any]] = {
            "alarm_id": [self.ids[c] for c in rl],
            "device": [self.device[c] for c in rl],
            "area": [self.area[c] for c in rl],
            "name": [self.name[c] for c in rl],
            "category": [self.category[c] for c in rl],
            "priority": [self.priority[c] for c in rl],
            "severity": [self.severity[c] for c in rl],
            "kind": ["external" if k == M.K_EXTERNAL else "" for k in
                     self.cond.kind[rows].tolist()],
            "active": lv, "acked": ack, "shelved": sh, "suppressed": sup, "oos": oos,
            "state": [M.state_name(a != 0, b, c, d, e)
                      for a, b, c, d, e in zip(lv, ack, sh, sup, oos, strict=True)],
            "shelve_until": floats(self.st.shelve_until),
            "raised_ts": floats(self.st.raised_at),
            "value": floats(self.st.value),
            "message": [self.message_of(c) for c in rl],
            "user": [self.shelve_info.get(c, ("", ""))[0] or None for c in rl],
            "comment": [self.shelve_info.get(c, ("", ""))[1] or None for c in rl],
        }
        return {"seq": self.seq, "alarms": cols, "devices": sorted(self.oos_devices)}

    def close(self) -> None:
        if self._sub is not None:
            self.tagdb.unsubscribe(self._sub)
            self._sub = None
        self.journal.close()

    async def aclose(self) -> None:
        """:meth:`close` from the event loop: the journal's last fsync and close in a thread."""
        if self._sub is not None:
            self.tagdb.unsubscribe(self._sub)
            self._sub = None
        await asyncio.to_thread(self.journal.close)

    # ------------------------------------------------------------------ evaluation
    def _message(self, c: int, v: float, lv: int) -> str:
        val = "" if v is None or (isinstance(v, float) and math.isnan(v)) else (
            f"{v:g}" if isinstance(v, float) else str(v))
        try:
            return self.template[c].format_map(_Fmt(
                device=self.device[c], area=self.area[c], name=self.name[c],
                location=self.location[c], value=val, unit=self.unit[c],
                limit=M.LEVEL_NAMES.get(lv, ""),
            ))
        except (ValueError, IndexError, AttributeError) as e:
            return f"{self.device[c]} {self.name[c]} (message template error: {e})"

    def _event(self, c: int, event: str, now: float, *, user: str | None = None,
               comment: str | None = None, seq: int | None = None) -> M.AlarmEvent:
        if seq is None:
            self.seq += 1
            seq = self.seq
        lv = int(self.st.level[c])
        acked = bool(self.st.acked[c])
        sh = int(self.st.shelved[c])
        sup = bool(self.st.suppressed[c])
        oos = bool(self.st.oos[c])
        v = float(self.st.value[c])
        su = float(self.st.shelve_until[c])
        return M.AlarmEvent(
            seq, now, c, self.ids[c], self.device[c], self.area[c], self.name[c],
            self.category[c], self.priority[c], self.severity[c], event,
            M.state_name(lv != 0, acked, sh, sup, oos), lv, acked, sh, sup, oos,
            None if math.isnan(v) else v, self.message_of(c), user, comment,
            None if math.isnan(su) else su,
        )

    def _line(self, e: M.AlarmEvent) -> bytes:
        return codec.event_line(e, self._prefix(e.cond))

    def _commit(self, events: list[Any], extra_lines: Iterable[bytes] = ()) -> None:
        """Journal (one write), then announce. A journal failure is logged and counted but the
        alarms are still announced: the operator must see the fault even if the disk is full.

        ``events`` holds :class:`AlarmEvent` objects and :class:`_Bulk` raises; the bulk raises
        become events after the write, then their chattering check runs (its events are
        journaled in a second write, still before anything is announced)."""
        lines = list(extra_lines)
        if not events:
            if lines:
                self._write(lines)
            return
        bulk = False
        for item in events:
            if isinstance(item, _Bulk):
                lines.extend(item.lines)
                bulk = True
            else:
                lines.append(self._line(item))
        self._write(lines)
        if bulk:
            out: list[M.AlarmEvent] = []
            late: list[M.AlarmEvent] = []
            for item in events:
                if not isinstance(item, _Bulk):
                    out.append(item)
                    continue
                for k, c in enumerate(item.rows.tolist()):
                    out.append(self._event(c, item.event, item.ts, seq=item.seq0 + k))
                if item.event == M.RAISE:
                    for c in self._chatter(item.rows, item.ts).tolist():
                        self._on_chatter(c, item.ts, late)
            if late:
                self._write([self._line(e) for e in late])
                out.extend(late)
            events = out
        # journal.fsync "always": the writer thread's fsync must finish before anyone is told
        # (and announcements keep their order behind earlier batches still waiting)
        wait = self.journal.pending()
        if wait is None and self._deferred:
            wait = self._deferred[-1][0]
        if wait is None:
            self._announce(events)
            return
        self._deferred.append((wait, events))
        asyncio.wrap_future(wait).add_done_callback(lambda _f: self._drain())

    def _drain(self) -> None:
        """Announce the batches whose journal fsync finished, in journal order."""
        while self._deferred and self._deferred[0][0].done():
            fut, events = self._deferred.popleft()
            if not fut.cancelled() and fut.exception() is not None:
                self.stats["journal_errors"] += 1
                log.error("alarm journal %s: fsync failed (%s); alarms are still announced but "
                          "may not survive a power cut", self.journal.path, fut.exception())
            self._announce(events)

    async def durable(self) -> None:
        """Wait until the transitions made so far are on disk (``alarms.fsync: always``; at
        once for the other policies): the operator API returns after it."""
        try:
            await self.journal.durable()
        except OSError:
            pass  # counted and logged when the batch is announced (_drain)

    def _announce(self, events: list[M.AlarmEvent]) -> None:
        for fn in tuple(self.listeners):
            try:
                fn(events)
            except Exception:
                self.stats["listener_errors"] += 1
                k = self.stats["listener_errors"]
                if k <= 5 or k % 1000 == 0:  # rate-limited: a broken listener in a flood
                    log.exception("alarm listener %r failed on %d events (error #%d; the "
                                  "journal has them)", fn, len(events), k)

    def _on_chatter(self, c: int, now: float, events: list[Any]) -> None:
        cfg = self.config.chatter
        events.append(self._event(c, M.CHATTER, now, user="system",
                                  comment=f"chattering: {cfg.count} raises within {cfg.window:g} s"))
        if cfg.auto_shelve and not self.st.shelved[c]:
            self.st.shelved[c] = transitions.SHELVING[(M.UNSHELVED, "timed")]
            self.st.shelve_until[c] = now + cfg.auto_shelve
            self.shelve_info[c] = ("system", "auto-shelved: chattering")
            events.append(self._event(c, M.SHELVE, now, user="system",
                                      comment="auto-shelved: chattering"))
            self._wake.set()

    def _write(self, lines: list[bytes]) -> None:
        try:
            self.journal.write(lines)
        except OSError as e:
            self.stats["journal_errors"] += 1
            log.error("alarm journal %s: write of %d transitions failed (%s); alarms are still "
                      "announced but not persisted - free disk space or fix permissions",
                      self.journal.path, len(lines), e)

    # ------------------------------------------------------------------ timer
    # ------------------------------------------------------------------ queries
    def find(self, alarm_id: str) -> int:
        c = self.by_id.get(alarm_id)
        if c is None:
            raise M.UnknownAlarm(f"unknown alarm {alarm_id!r} (expected area/device/name, "
                                 f"see `scada alarms`)")
        return c

    def view(self, c: int) -> M.AlarmEvent:
        """Current state of one alarm shaped as an event (``event='state'``, ``seq`` 0)."""
        lv = int(self.st.level[c])
        v = float(self.st.value[c])
        su = float(self.st.shelve_until[c])
        return M.AlarmEvent(
            0, float(self.st.raised_at[c]) if not math.isnan(self.st.raised_at[c]) else 0.0, c,
            self.ids[c], self.device[c], self.area[c], self.name[c], self.category[c],
            self.priority[c], self.severity[c], "state",
            M.state_name(lv != 0, bool(self.st.acked[c]), int(self.st.shelved[c]),
                         bool(self.st.suppressed[c]), bool(self.st.oos[c])),
            lv, bool(self.st.acked[c]), int(self.st.shelved[c]), bool(self.st.suppressed[c]),
            bool(self.st.oos[c]), None if math.isnan(v) else v, self.message_of(c),
            shelve_until=None if math.isnan(su) else su,
        )

    def retained(self) -> np.ndarray:
        """Rows an operator must see (OPC UA Part 9 Retain): active or unacknowledged."""
        return self.st.retained(self.n)

    def active(self, include_hidden: bool = False) -> list[M.AlarmEvent]:
        """The red dots: retained alarms not shelved/suppressed/out of service (unless asked)."""
        r = self.retained()
        if not include_hidden:
            r = r[~self.st.hidden(r)]
        return [self.view(c) for c in r.tolist()]

    def counts(self) -> dict[str, int]:
        return self.st.counts(self.n)

    # ------------------------------------------------------------------ operator actions
    # Role checks, area checks and the audit log are the operator API's (scada/operations);
    # these methods change the state, journal it with the user's name and notify listeners.
    def acknowledge(self, alarm_id: str, *, user: str | None, comment: str = "") -> M.AlarmEvent:
        """ISA-18.2 acknowledge (OPC UA Part 9 AcknowledgeableConditionType.Acknowledge)."""
        self._writable()
        c = self.find(alarm_id)
        new, fx = transitions.next_state(transitions.state_code(int(self.st.level[c]), bool(self.st.acked[c])),
                               transitions.ACK)
        if fx & transitions.REFUSE:
            raise M.InvalidAlarmState(f"{alarm_id} is already acknowledged")
        self.st.acked[c] = (new & 1) == 0
        e = self._event(c, M.ACK, self.clock.time(), user=user, comment=comment)
        self._commit([e])
        return e

    def add_comment(self, alarm_id: str, *, user: str | None, comment: str) -> M.AlarmEvent:
        """OPC UA Part 9 ConditionType.AddComment."""
        self._writable()
        c = self.find(alarm_id)
        e = self._event(c, M.COMMENT, self.clock.time(), user=user, comment=comment)
        self._commit([e])
        return e

    def shelve(self, alarm_id: str, *, user: str | None, comment: str,
               duration: float | None = None) -> M.AlarmEvent:
        """Shelve (ISA-18.2 shelving; OPC UA Part 9 ShelvedStateMachineType TimedShelve /
        OneShotShelve).

        ``duration`` seconds (timed) or None (one-shot: until the alarm returns to normal)."""
        self._writable()
        if not comment:
            raise ValueError(f"shelving {alarm_id} needs a reason (comment)")
        if duration is not None and duration <= 0:
            raise ValueError(f"shelving {alarm_id}: duration must be > 0 s, got {duration}")
        c = self.find(alarm_id)
        now = self.clock.time()
        self.st.shelved[c] = transitions.SHELVING[(int(self.st.shelved[c]),
                                                   "oneshot" if duration is None else "timed")]
        self.st.shelve_until[c] = np.nan if duration is None else now + duration
        self.shelve_info[c] = (user or "", comment)
        e = self._event(c, M.SHELVE, now, user=user, comment=comment)
        self._commit([e])
        self._wake.set()
        return e

    def unshelve(self, alarm_id: str, *, user: str | None, comment: str = "") -> M.AlarmEvent:
        self._writable()
        c = self.find(alarm_id)
        new = transitions.SHELVING[(int(self.st.shelved[c]), "unshelve")]
        if new is None:
            raise M.InvalidAlarmState(f"{alarm_id} is not shelved")
        self.st.shelved[c] = new
        self.st.shelve_until[c] = np.nan
        self.shelve_info.pop(c, None)
        e = self._event(c, M.UNSHELVE, self.clock.time(), user=user, comment=comment)
        self._commit([e])
        return e

    def set_out_of_service(self, device: str, oos: bool, *, user: str | None,
                           comment: str = "") -> list[M.AlarmEvent]:
        """Put a device under works (ISA-18.2 out-of-service), for the existing callers; role
        checks and audit are the operations layer's.

        The state itself is not kept here: this delegates to the tag database, the one owner
        (:meth:`scada.runtime.Runtime.set_out_of_service` is the entry point), and the engine
        follows the change in :meth:`_on_out_of_service`. Returns the alarm events journaled
        (none when the device already was in that state)."""
        self._writable()
        try:
            self.tagdb.device_index(device)
        except KeyError:
            raise M.UnknownAlarm(f"unknown device {device!r}") from None
        self._oos_events = []
        self.tagdb.set_out_of_service(device, oos, user=user, comment=comment)
        events, self._oos_events = self._oos_events, []
        return events

    def _on_out_of_service(self, device: str, oos: bool, user: str | None, comment: str) -> None:
        """The tag database put ``device`` out of service (or back): hide (show) its alarms
        (OPC UA Part 9 OutOfServiceState) and journal the change, one device line plus one
        event per alarm of the device, in one write."""
        rows = self.by_device.get(device, [])
        for c in rows:
            self.st.oos[c] = oos
        if self.on_out_of_service is not None:
            self.on_out_of_service(device, oos)
        if self._restoring:
            return
        if self.following:
            log.warning("alarms: %s put %s service on the standby: not journaled (the active "
                        "server's journal is the one that counts)", device,
                        "out of" if oos else "back in")
            return
        now = self.clock.time()
        self.seq += 1
        ev = M.OUT_OF_SERVICE if oos else M.IN_SERVICE
        dev_line = codec.device_line(self.seq, now, device, oos, user, comment)
        events = [self._event(c, ev, now, user=user, comment=comment) for c in rows]
        self._commit(events, extra_lines=[dev_line])
        self._oos_events = events

    # ------------------------------------------------------------------ external conditions
    def set_condition(self, device_path: str, name: str, active: bool, *,
                      message: str | None = None, priority: int = 3, category: str = "system",
                      severity: int | None = None, value: float | None = None) -> None:
        """Raise or clear a condition computed by another service (the schedule engine's
        "dimming not followed", a historian backlog ...). Created on first use; journaled and
        announced like any other alarm.

        If the device already has a tag-based alarm of that name (a profile's
        ``dimming_not_followed`` deviation), the external condition is OR-ed into it: the alarm
        is active while either the tags or the other service say so (one alarm, one red dot);
        the profile's priority, category and message template are kept. The other service's
        own timing decides for its condition (the schedule engine's ``fade + verify_after``):
        the template's ``on_delay`` applies to the tag condition only, so the external one
        raises the alarm at once, even while the tag condition's delay is running."""
        if not 1 <= priority <= 4:
            raise ValueError(f"alarm {device_path}/{name}: priority must be 1..4, got {priority}")
        if self.following:
            return  # a standby reports nothing: the active's journal is the one that counts
        aid = f"{device_path}/{name}"
        c = self.by_id.get(aid)
        if c is not None and int(self.cond.kind[c]) != M.K_EXTERNAL:
            self._any_ext = True
        if c is None:
            if not active:
                return
            c = self._external_row(device_path, name, category, priority,
                                   severity or PRIORITY_SEVERITY[priority])
        rows = np.asarray([c], dtype=np.int64)
        immediate = False
        if int(self.cond.kind[c]) != M.K_EXTERNAL:
            self.st.ext_on[c] = bool(active)
            lv = int(self._combine(rows, self.cond.evaluate(
                rows, self.tagdb.value, self.tagdb.quality, self.clock.time()))[0])
            immediate = bool(active) and int(self.st.level[c]) == 0
        else:
            if message:
                self._set_template(c, message.replace("{", "{{").replace("}", "}}"))
            lv = 1 if active else 0
        if int(self.cond.raw[c]) == lv and not immediate:
            return
        self.cond.raw[c] = lv
        now = self.clock.time()
        if value is not None:
            self.st.value[c] = value
        events: list[Any] = []
        levels = np.asarray([lv], dtype=np.int8)
        self._after_raw(rows, levels, now, events, immediate=immediate)
        self._commit(events)
