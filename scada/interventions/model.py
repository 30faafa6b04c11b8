"""Work orders: the lifecycle as one transition table (data), the order record, and the rules
every front end shares (a Maximo-like subset; see ``docs/interventions.md``).

::

    draft -> approved -> scheduled -> in_progress <-> on_hold
                                         |
                                         v
                                     completed -> closed
    (draft, approved, scheduled, on_hold) -> cancelled;  completed -> in_progress (reopen)

Pure: no I/O, no clock (times are passed in). The store (:mod:`.store`) journals the changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

STATES = ("draft", "approved", "scheduled", "in_progress", "on_hold", "completed", "closed", "cancelled")

#: state -> states it may go to; anything else is refused (409 on the API)
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "draft": ("approved", "cancelled"),
    "approved": ("scheduled", "cancelled"),
    "scheduled": ("in_progress", "on_hold", "cancelled"),
    "in_progress": ("on_hold", "completed"),
    "on_hold": ("scheduled", "in_progress", "cancelled"),
    "completed": ("closed", "in_progress"),
    "closed": (),
    "cancelled": (),
}
#: an order is open (repeat alarms attach to it, it is in a visit) until one of these
FINAL = frozenset({"closed", "cancelled"})
#: states whose orders still need someone on site (visits, dispatch): open and not completed
FIELD = frozenset({"draft", "approved", "scheduled", "in_progress", "on_hold"})
ORIGINS = ("alarm", "citizen", "manual")
#: what a field agent can report from the tablet, and the state it leads to
FIELD_ACTIONS: dict[str, str] = {"arrived": "in_progress", "done": "completed", "cannot_complete": "on_hold"}
#: timestamps kept per order for the contract's KPIs (state -> field set on entering it)
STAMPS = {"approved": "approved_at", "scheduled": "dispatched_at", "in_progress": "arrived_at",
          "completed": "completed_at", "closed": "closed_at", "cancelled": "cancelled_at"}


#: the columns the contract's KPIs read (``kpi.json`` beside each snapshot: historian.wo_kpi)
KPI_FIELDS = ("id", "state", "priority", "trade", "area", "created", "alarm_raised", "acked_at", "dispatched_at",
              "arrived_at", "completed_at", "closed_at", "due_respond", "due_repair")


class TransitionError(ValueError):
    """The order's state does not allow this change (HTTP 409, BadInvalidState)."""


def check_transition(frm: str, to: str) -> None:
    if to not in STATES:
        raise ValueError(f"unknown state {to!r}; expected one of {', '.join(STATES)}")
    if to not in TRANSITIONS[frm]:
        allowed = ", ".join(TRANSITIONS[frm]) or "none: the order is " + frm
        raise TransitionError(f"a {frm} order cannot become {to} (allowed: {allowed})")


@dataclass(slots=True)
class WorkOrder:
    id: str
    title: str
    state: str
    priority: int
    origin: str
    devices: list[str]
    area: str
    trade: str | None
    created: float
    created_by: str
    due_respond: float
    due_repair: float
    fault: str = ""  # fault class (alarm name); one open order per (device, fault)
    location: tuple[float, float] | None = None
    site: str = ""  # grouping key: the parent device (cabinet, junction) or the device
    alarms: list[str] = field(default_factory=list)  # alarm ids attached
    alarm_raised: float | None = None
    acked_at: float | None = None
    approved_at: float | None = None
    dispatched_at: float | None = None
    arrived_at: float | None = None
    completed_at: float | None = None
    closed_at: float | None = None
    cancelled_at: float | None = None
    crew: str | None = None
    assignee: str | None = None
    notes: list[dict[str, Any]] = field(default_factory=list)
    checklist: list[dict[str, Any]] = field(default_factory=list)
    photos: list[dict[str, Any]] = field(default_factory=list)
    parts: list[dict[str, Any]] = field(default_factory=list)
    resolution: str | None = None
    repeats: int = 0
    #: the day the visit is planned (the site's local date, ``YYYY-MM-DD``): set when the order is
    #: scheduled or assigned to a crew (today unless given); the tablet's "visits of the day"
    planned: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # state changes (ts, from, to, user)

    @property
    def open(self) -> bool:
        return self.state not in FINAL

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (lists and their dicts copied; shallow otherwise: dataclasses.asdict
        deep-copies every value and costs 30x more)."""
        d = {k: getattr(self, k) for k in _FIELDS}
        for k in _LISTS:
            d[k] = [dict(x) if isinstance(x, dict) else x for x in d[k]]
        d["location"] = list(self.location) if self.location else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkOrder:
        try:
            wo = cls(**d)
        except TypeError:  # a field of another version: keep the known ones
            wo = cls(**{k: v for k, v in d.items() if k in _FIELDS})
        if wo.location is not None:
            wo.location = tuple(wo.location)  # type: ignore[assignment]
        return wo

    def summary(self) -> dict[str, Any]:
        """The list row (no notes/photos/history)."""
        return {k: getattr(self, k) for k in (
            "id", "title", "state", "priority", "origin", "devices", "area", "trade", "fault", "site",
            "crew", "assignee", "planned", "created", "due_respond", "due_repair", "repeats", "resolution")} | {
            "location": list(self.location) if self.location else None, "alarms": list(self.alarms)}


_FIELDS = tuple(WorkOrder.__dataclass_fields__)
_LISTS = ("devices", "alarms", "notes", "checklist", "photos", "parts", "history")


def apply(wo: WorkOrder, rec: dict[str, Any]) -> None:
    """Apply one journal record (already validated) to ``wo`` in place."""
    op = rec["op"]
    ts = float(rec["ts"])
    if op == "transition":
        to = rec["to"]
        wo.history.append({"ts": ts, "from": wo.state, "to": to, "user": rec.get("user"),
                           "comment": rec.get("comment", ""), "via": rec.get("via", "")})
        wo.state = to
        stamp = STAMPS.get(to)
        if stamp and getattr(wo, stamp) is None:
            setattr(wo, stamp, ts)
        if to == "in_progress" and rec.get("field") == "arrived":
            wo.arrived_at = wo.arrived_at or ts
        if rec.get("resolution"):
            wo.resolution = rec["resolution"]
        if rec.get("planned"):
            wo.planned = rec["planned"]
    elif op == "assign":
        wo.crew = rec.get("crew")
        wo.assignee = rec.get("assignee")
        if "planned" in rec:
            wo.planned = rec["planned"]
        if wo.dispatched_at is None and (wo.crew or wo.assignee):
            wo.dispatched_at = ts
    elif op == "note":
        wo.notes.append({"ts": ts, "user": rec.get("user"), "text": rec["text"]})
    elif op == "photo":
        wo.photos.append({"ts": ts, "user": rec.get("user"), "file": rec["file"], "bytes": rec["bytes"],
                          "type": rec["type"]})
    elif op == "part":
        wo.parts.append({"ts": ts, "user": rec.get("user"), "ref": rec["ref"], "qty": rec["qty"]})
    elif op == "check":
        for step in wo.checklist:
            if step["id"] == rec["step"]:
                step.update(done=bool(rec.get("done", True)), user=rec.get("user"), ts=ts)
    elif op == "attach":
        if rec["alarm"] not in wo.alarms:
            wo.alarms.append(rec["alarm"])
        wo.repeats += 1
    elif op == "ack":
        if wo.acked_at is None:
            wo.acked_at = ts
    else:
        raise ValueError(f"unknown journal op {op!r}")


def check_day(text: str) -> str:
    """A planned date: ``YYYY-MM-DD`` (the site's local calendar day); ``ValueError`` otherwise."""
    from datetime import date

    try:
        if len(text) == 10:
            return date.fromisoformat(text).isoformat()
    except ValueError:
        pass
    raise ValueError(f"planned {text!r}: expected a date YYYY-MM-DD")


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Equirectangular distance in metres (good to < 0.1 % within a city)."""
    lat = math.radians((a[0] + b[0]) / 2)
    dx = math.radians(b[1] - a[1]) * math.cos(lat)
    dy = math.radians(b[0] - a[0])
    return 6_371_000.0 * math.hypot(dx, dy)
