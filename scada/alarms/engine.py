"""The alarm engine: conditions in, ISA-18.2 alarm states out, every transition journaled first.

Data flow (DESIGN.md "the tag database is the hub"):

1. The engine subscribes once to the :class:`~scada.tags.TagDatabase`. Each change batch is
   turned into the condition rows it concerns and evaluated in one vectorised pass
   (:mod:`scada.alarms.conditions`); suppression rules whose source changed are re-evaluated
   (:mod:`scada.alarms.suppression`).
2. Rows whose raw level changed go through the on-/off-delay filter (ISA-18.2 basic alarm
   design: alarm on-delay / off-delay): with no delay they transition at once, otherwise a deadline
   is set and the timer task (on the injected :class:`~scada.clock.Clock`) fires it if the level
   held for the whole delay.
3. Transitions update the OPC UA Part 9 flags (ActiveState, AckedState, ShelvingState,
   SuppressedState, OutOfServiceState), are written to the journal in **one** write per batch,
   and only then handed to the listeners (OPC UA Alarms & Conditions, notifications).

Operator actions (acknowledge, comment, shelve, unshelve, out-of-service) take a comment and
are journaled with the user. Who may perform them, in which areas, and the audit log are the
operator API's (:mod:`scada.operations`), which calls these methods.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from scada.clock import Clock
from scada.errors import ConfigError
from scada.sections.alarms import PRIORITY_SEVERITY, AlarmDef, AlarmsConfig
from scada.tags import Changes, TagDatabase

from . import codec, transitions
from . import model as M
from .conditions import ConditionTable
from .journal import Journal, current_states
from .store import AlarmStore
from .suppression import SRC_ALARM, SRC_POINT, SuppressionTable

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


@dataclass(slots=True)
class _Bulk:
    """Raises of one batch: journal lines now, AlarmEvent objects after the write."""

    seq0: int
    rows: np.ndarray
    ts: float
    lines: list[bytes]
    event: str = M.RAISE


@dataclass(slots=True)
class _Pending:
    """A suppression rule waiting for the whole site to be declared."""

    target: int
    device: str
    parent: str | None
    rule: Any


class AlarmEngine:
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
        self.seq = journal.last_seq
        self.stats = {"evaluations": 0, "batches": 0, "transitions": 0, "hidden_transitions": 0,
                      "journal_errors": 0, "listener_errors": 0}
        self._stale_rows = np.zeros(0, dtype=np.int64)
        self._started = False
        self._t0 = 0.0
        self._sub: object | None = None
        self._wake = asyncio.Event()
        tagdb.on_out_of_service(self._on_out_of_service)

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
    def add_alarm(self, device: str, area: str, adef: AlarmDef, *, parent: str | None = None,
                  location: str = "", first_tag: int = -1) -> int:
        """Instantiate one alarm template for one device; returns the condition row.
        ``first_tag`` (the device's first tag index, if known) spares the path lookups."""
        spec = self._spec(adef)
        if first_tag >= 0:
            schema = self.tagdb.device_schema(int(self.tagdb.device_of[first_tag]))
            off = schema.offsets.get(adef.point or "")
            tag = first_tag + off if off is not None else None
            roff = schema.offsets.get(adef.reference) if adef.reference else None
            ref = first_tag + roff if roff is not None else None
        else:
            tag = self.tagdb.find(f"{device}/{adef.point}")
            ref = self.tagdb.find(f"{device}/{adef.reference}") if adef.reference else None
        if tag is None:
            raise ConfigError(
                f"alarm {adef.name!r} of {device}: the device has no point {adef.point!r}; "
                f"fix the alarm template's 'point' (or the profile's points)"
            )
        fields = spec
        if adef.reference is not None:
            if ref is None:
                raise ConfigError(
                    f"alarm {adef.name!r} of {device}: the device has no reference point "
                    f"{adef.reference!r}; fix the alarm template's 'reference'"
                )
            fields = {**spec, "ref": ref}
        c = self._new_row(M.KIND_CODES[adef.kind], tag, device, area, adef.name, adef.category,
                          adef.priority, adef.effective_severity, adef.message, location,
                          self.tagdb.point(tag).unit, fields)
        for rule in adef.suppressed_by:
            self._pending_rules.append(_Pending(c, device, parent, rule))
        if parent is not None:
            self._parent_of[device] = parent
        return c

    def _spec(self, adef: AlarmDef) -> dict[str, float]:
        """The condition-table fields of a template (computed once per template)."""
        key = id(adef)
        hit = self._specs.get(key)
        if hit is not None and hit[0] is adef:
            return hit[1]
        fields: dict[str, float] = {
            "eq": adef.equals, "db": adef.deadband, "tol": adef.tolerance, "scale": adef.scale,
            "timeout": adef.timeout, "on_delay": adef.on_delay, "off_delay": adef.off_delay,
        }
        for k in ("hihi", "hi", "lo", "lolo", "max_rate"):
            v = getattr(adef, k)
            if v is not None:
                fields[k] = v
        self._specs[key] = (adef, fields)
        return fields

    def _new_row(self, kind: int, tag: int, device: str, area: str, name: str, category: str,
                 priority: int, severity: int, template: str, location: str, unit: str,
                 fields: dict[str, float]) -> int:
        if self.by_id.get(f"{device}/{name}") is not None:
            raise ConfigError(f"alarm {device}/{name!r} declared twice; alarm names must be "
                              f"unique per device")
        c = self.cond.add(kind, tag, **fields)
        self._grow(c + 1)
        self.device.append(device)
        self.area.append(area)
        self.name.append(name)
        self.category.append(category)
        self.priority.append(priority)
        self.severity.append(severity)
        self.template.append("")
        self.location.append(location)
        self.unit.append(unit)
        self.msg.append(None)
        self._tail.append(None)
        self._set_template(c, template or "{device} {name}")
        self.by_device.setdefault(device, []).append(c)
        return c

    def add_rows(self, adef: AlarmDef, tags: np.ndarray, refs: np.ndarray | None,
                 devices: list[str], areas: list[str], locations: list[str], unit: str,
                 parents: list[str | None] | None = None) -> np.ndarray:
        """Instantiate one template for many devices at once (site loading: a profile's
        template over all its devices); returns the rows. The caller guarantees the names are
        unique per device (one profile per device, unique names per profile)."""
        m = len(tags)
        fields = self._spec(adef)
        rows = self.cond.add_many(M.KIND_CODES[adef.kind], tags, refs, fields)
        c0 = int(rows[0]) if m else self.cond.n
        self._grow(c0 + m)
        template = adef.message or "{device} {name}"
        self.device.extend(devices)
        self.area.extend(areas)
        self.name.extend([adef.name] * m)
        self.category.extend([adef.category] * m)
        self.priority.extend([adef.priority] * m)
        self.severity.extend([adef.effective_severity] * m)
        self.template.extend([template] * m)
        self.location.extend(locations)
        self.unit.extend([unit] * m)
        self.msg.extend([None] * m)
        self._tail.extend([None] * m)
        if "{value" in template or "{limit" in template:
            self._dyn.update(range(c0, c0 + m))
        bd = self.by_device
        for k, d in enumerate(devices):
            bd.setdefault(d, []).append(c0 + k)
        if parents is not None:
            for d, par in zip(devices, parents, strict=True):
                if par is not None:
                    self._parent_of[d] = par
        return rows

    def _set_template(self, c: int, template: str) -> None:
        self.template[c] = template
        self._tail[c] = None
        if "{value" in template or "{limit" in template:
            self._dyn.add(c)
        else:
            self._dyn.discard(c)
            self.msg[c] = None

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

    def _resolve_rules(self) -> None:
        """The templates' ``suppressed_by`` of alarms added one by one (:meth:`add_alarm`;
        site loading resolves them per profile in :func:`build_from_site`)."""
        cache: dict[tuple[str, str, str], int | None] = {}
        for p in self._pending_rules:
            owner = p.device if p.rule.of == "self" else p.parent
            if owner is None:
                raise ConfigError(
                    f"alarm {self.ids[p.target]!r}: suppression rule refers to the parent device, "
                    f"but {p.device} has no parent; use 'of: self' or remove the rule"
                )
            if p.rule.alarm is not None:
                what, kind, name, eq = "alarm", SRC_ALARM, p.rule.alarm, 1.0
            else:
                what, kind, name, eq = "point", SRC_POINT, p.rule.point, float(p.rule.equals)
            key = (owner, what, name)
            if key not in cache:
                cache[key] = (self.by_id.get(f"{owner}/{name}") if kind == SRC_ALARM
                              else self.tagdb.find(f"{owner}/{name}"))
            src = cache[key]
            if src is None:
                raise ConfigError(f"alarm {self.ids[p.target]!r}: suppression rule names {what} "
                                  f"{name!r} of {owner}, which has no such {what}")
            self.supp.add(p.target, kind, src, eq)
        self._pending_rules.clear()
        self._resolve_child_rules()
        self._parent_of.clear()
        self._specs.clear()

    def _resolve_child_rules(self) -> None:
        """``alarms.suppressed_by``: one group per (device, rule) with the selected alarms."""
        rules = self.config.suppressed_by
        if not rules:
            return
        sources: dict[tuple[str, int], tuple[int, int, float] | None] = {}
        for k, r in enumerate(rules):
            pairs = (self._parent_of.items() if r.of == "parent"
                     else ((d, d) for d in self.by_device))
            sel = None if r.alarms is None else set(r.alarms)
            for dev, owner in pairs:
                key = (owner, k)
                if key not in sources:
                    if r.alarm is not None:
                        src = self.by_id.get(f"{owner}/{r.alarm}")
                        sources[key] = None if src is None else (SRC_ALARM, src, 1.0)
                    else:
                        tag = self.tagdb.find(f"{owner}/{r.point}")
                        sources[key] = None if tag is None else (SRC_POINT, tag, float(r.equals))
                s = sources[key]
                if s is None:
                    continue
                rows = self.by_device.get(dev, [])
                members = rows if sel is None else [c for c in rows if self.name[c] in sel]
                if not members:
                    continue
                g = self.supp.group_of(("device", dev, k), members)
                self.supp.add_group_rule(g, *s)

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
        # devices the journal says are under works: back out of service in the tag database
        # (no new journal lines: these are the journal's own state)
        self._restoring = True
        try:
            for d in sorted(self._restored_oos):
                try:
                    self.tagdb.set_out_of_service(d, True)
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
            lvl = int(e.get("active") or 0)
            self.st.level[c] = lvl
            self.cond.raw[c] = lvl
            self.st.acked[c] = bool(e.get("acked", True))
            self.st.shelved[c] = int(e.get("shelved") or 0)
            su = e.get("shelve_until")
            self.st.shelve_until[c] = float(su) if isinstance(su, (int, float)) else np.nan
            if self.st.shelved[c]:
                self.shelve_info[c] = (e.get("user") or "", e.get("comment") or "")
            self.st.suppressed[c] = bool(e.get("suppressed"))
            self.st.oos[c] = bool(e.get("oos")) or self.device[c] in self._restored_oos
            if c in self._dyn:
                self.msg[c] = e.get("message") or None
            v = e.get("value")
            self.st.value[c] = float(v) if isinstance(v, (int, float)) else np.nan
            if lvl and aid in raised:
                self.st.raised_at[c] = raised[aid]
        log.info("alarms: restored %d alarm states (%d active, %d unacknowledged, %d shelved, "
                 "%d devices out of service) from %s", len(alarms),
                 int((self.st.level[: self.n] != 0).sum()), int((~self.st.acked[: self.n]).sum()),
                 int((self.st.shelved[: self.n] != 0).sum()), len(self._restored_oos),
                 self.journal.directory)

    def snapshot(self) -> dict[str, Any]:
        """Every alarm not in its default state (Normal, in service, not shelved/suppressed),
        and the devices out of service, as of ``seq`` (see :class:`Journal`); columnar, built
        from the arrays (a few ms for 10,000 active alarms)."""
        n = self.n
        rows = np.nonzero((self.st.level[:n] != 0) | ~self.st.acked[:n] | (self.st.shelved[:n] != 0)
                          | self.st.suppressed[:n] | self.st.oos[:n])[0]
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

    # ------------------------------------------------------------------ evaluation
    def _on_changes(self, ch: Changes) -> None:
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
            self.st.shelved[c] = M.TIMED
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
            self.st.shelved[c] = M.UNSHELVED
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
                self.due(now)
                nxt = self.next_deadline(self.clock.time())
                await M.sleep_or_wake(self.clock, nxt - self.clock.time(), self._wake)
        finally:
            fs.cancel()
            await asyncio.gather(fs, return_exceptions=True)

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
        c = self.find(alarm_id)
        e = self._event(c, M.COMMENT, self.clock.time(), user=user, comment=comment)
        self._commit([e])
        return e

    def shelve(self, alarm_id: str, *, user: str | None, comment: str,
               duration: float | None = None) -> M.AlarmEvent:
        """Shelve (ISA-18.2 shelving; OPC UA Part 9 ShelvedStateMachineType TimedShelve /
        OneShotShelve).

        ``duration`` seconds (timed) or None (one-shot: until the alarm returns to normal)."""
        if not comment:
            raise ValueError(f"shelving {alarm_id} needs a reason (comment)")
        if duration is not None and duration <= 0:
            raise ValueError(f"shelving {alarm_id}: duration must be > 0 s, got {duration}")
        c = self.find(alarm_id)
        now = self.clock.time()
        self.st.shelved[c] = M.ONESHOT if duration is None else M.TIMED
        self.st.shelve_until[c] = np.nan if duration is None else now + duration
        self.shelve_info[c] = (user or "", comment)
        e = self._event(c, M.SHELVE, now, user=user, comment=comment)
        self._commit([e])
        self._wake.set()
        return e

    def unshelve(self, alarm_id: str, *, user: str | None, comment: str = "") -> M.AlarmEvent:
        c = self.find(alarm_id)
        if not self.st.shelved[c]:
            raise M.InvalidAlarmState(f"{alarm_id} is not shelved")
        self.st.shelved[c] = M.UNSHELVED
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
        now = self.clock.time()
        self.seq += 1
        ev = M.OUT_OF_SERVICE if oos else M.IN_SERVICE
        dev_line = codec.device_line(self.seq, now, device, oos, user, comment)
        events = [self._event(c, ev, now, user=user, comment=comment) for c in rows]
        self._commit(events, extra_lines=[dev_line])
        self._oos_events = events

    # ------------------------------------------------------------------ external conditions
    def _external_row(self, device: str, name: str, category: str, priority: int,
                      severity: int, area: str | None = None) -> int:
        c = self._new_row(M.K_EXTERNAL, -1, device, area or device.split("/", 1)[0], name,
                          category, priority, severity, "{device} {name}", "", "", {})
        if self._started:
            self.supp.grow_conds(len(self.st.level))
        return c

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

    def _combine(self, rows: np.ndarray, new: np.ndarray) -> np.ndarray:
        """Tag evaluation OR external condition (see :meth:`set_condition`)."""
        if self._any_ext:
            ext = self.st.ext_on[rows] & (new == 0)
            if ext.any():
                new = np.where(ext, np.int8(1), new)
        return new


def build_from_site(site: Any, tagdb: TagDatabase, clock: Clock, journal: Journal, **kw: Any) -> AlarmEngine:
    """One alarm instance per (device, profile alarm template) of the site, built per profile
    with array operations (a template over all the devices of its profile at once), so a city
    of 200,000 luminaires loads in seconds."""
    cfg = site.config.alarms
    eng = AlarmEngine(tagdb, clock, journal, config=cfg, **kw)
    errors: list[str] = []
    groups: dict[str, list[Any]] = {}
    for dev in site.all_devices():
        if dev.profile.alarms:
            groups.setdefault(dev.profile_name, []).append(dev)
    parent_rules: list[tuple[np.ndarray, list[Any], Any, str]] = []
    for pname, devs in groups.items():
        prof = devs[0].profile
        schema = site.schemas[pname]
        names = [a.name for a in prof.alarms]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            errors.append(f"profile {pname!r}: alarm name(s) {dups} declared twice (alarm "
                          f"templates of the profile and of alarm_templates files); names must be "
                          f"unique per device")
            continue
        first = np.asarray([tagdb.device_first(tagdb.device_index(d.path)) for d in devs],
                           dtype=np.int64)
        paths = [d.path for d in devs]
        areas = [d.area for d in devs]
        locs = [f"{d.location.lat:.5f},{d.location.lon:.5f}" if d.location else "" for d in devs]
        parents = [d.parent for d in devs]
        rows_of: dict[str, np.ndarray] = {}
        for adef in prof.alarms:
            off = schema.offsets.get(adef.point or "")
            if off is None:
                errors.append(f"profile {pname!r}, alarm {adef.name!r}: the profile has no point "
                              f"{adef.point!r}; fix the alarm template's 'point'")
                continue
            refs = None
            if adef.reference is not None:
                roff = schema.offsets.get(adef.reference)
                if roff is None:
                    errors.append(f"profile {pname!r}, alarm {adef.name!r}: the profile has no "
                                  f"reference point {adef.reference!r}")
                    continue
                refs = first + roff
            rows_of[adef.name] = eng.add_rows(adef, first + off, refs, paths, areas, locs,
                                              schema.points[off].unit, parents)
        for adef in prof.alarms:
            targets = rows_of.get(adef.name)
            if targets is None:
                continue
            for rule in adef.suppressed_by:
                if rule.of == "parent":
                    parent_rules.append((targets, devs, rule, adef.name))
                elif rule.alarm is not None:
                    src = rows_of.get(rule.alarm)
                    if src is None:
                        errors.append(f"profile {pname!r}, alarm {adef.name!r}: suppression rule "
                                      f"names alarm {rule.alarm!r}, which the profile does not have")
                        continue
                    eng.supp.add_many(targets, SRC_ALARM, src)
                else:
                    poff = schema.offsets.get(rule.point)
                    if poff is None:
                        errors.append(f"profile {pname!r}, alarm {adef.name!r}: suppression rule "
                                      f"names point {rule.point!r}, which the profile does not have")
                        continue
                    eng.supp.add_many(targets, SRC_POINT, first + poff, float(rule.equals))
    # rules on the parent device, once every device's alarms exist
    cache: dict[tuple[str, str, str], int | None] = {}
    for targets, devs, rule, aname in parent_rules:
        kind = SRC_ALARM if rule.alarm is not None else SRC_POINT
        srcs = np.empty(len(devs), dtype=np.int64)
        for k, d in enumerate(devs):
            if d.parent is None:
                errors.append(f"alarm {d.path}/{aname}: suppression rule refers to the parent "
                              f"device, but {d.path} has no parent; use 'of: self'")
                break
            key = (d.parent, "a" if rule.alarm is not None else "p", rule.alarm or rule.point)
            if key not in cache:
                cache[key] = (eng.by_id.get(f"{d.parent}/{rule.alarm}") if rule.alarm is not None
                              else tagdb.find(f"{d.parent}/{rule.point}"))
            s = cache[key]
            if s is None:
                errors.append(f"alarm {d.path}/{aname}: suppression rule names "
                              f"{'alarm' if rule.alarm else 'point'} "
                              f"{rule.alarm or rule.point!r} of {d.parent}, which has none")
                break
            srcs[k] = s
        else:
            eng.supp.add_many(targets, kind, srcs, 1.0 if rule.equals is None else float(rule.equals))
    if errors:
        raise ConfigError(sorted(set(errors))[:50])
    return eng
