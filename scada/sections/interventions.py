"""``interventions:`` section: work orders, procedures per alarm class, trades, SLA, crews (issue 20).

Example::

    interventions:
      trades: [electrician, signal_technician, civil_works, carpenter, painter]  # precedence
      sla:                              # per alarm/order priority (the maintenance contract)
        1: {respond: 30min, repair: 4h}
        3: {respond: 4h, repair: 3d}
      grouping_radius_m: 60             # open orders this close form one visit
      photo_max_bytes: 300000
      procedures:
        lamp_failure:                   # alarm class = the alarm's name in its profile
          trade: electrician
          steps: [Check the cabinet's contactor, Create a work order]
          auto_create: {priorities: [1, 2, 3]}
      serious:                          # priority 1 or these categories
        priorities: [1]
        categories: [accident]
        steps: [Call the duty manager]
        notify: {channels: [ops_mail], by_municipality: {Dijon: [sms_mayor, mail_mayor]}}
      crews:
        - {id: crew-a, trades: [electrician], shift: "07:00-19:00", position: {lat: 47.32, lon: 5.04}, agents: [agent1]}
      position_max_age: 30min           # tablets' reported positions older than this: base position

See ``docs/interventions.md``.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from .common import Duration, Ident, Strict

DEFAULT_TRADES = ["electrician", "signal_technician", "civil_works", "carpenter", "painter"]
_SHIFT = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-4]):[0-5]\d$")


class Sla(Strict):
    #: time from the alarm (or the order's creation) to the crew on site
    respond: Duration = Field(gt=0)
    #: time from the alarm (or the order's creation) to the repair (order completed)
    repair: Duration = Field(gt=0)


def _default_sla() -> dict[int, Sla]:
    h = 3600.0
    return {1: Sla(respond=h, repair=4 * h), 2: Sla(respond=4 * h, repair=24 * h),
            3: Sla(respond=24 * h, repair=72 * h), 4: Sla(respond=72 * h, repair=7 * 24 * h)}


class AutoCreate(Strict):
    """Create a work order automatically when an alarm of the class is raised with one of
    these priorities (an operator can always create one by hand)."""

    priorities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4])

    @field_validator("priorities")
    @classmethod
    def _p(cls, v: list[int]) -> list[int]:
        if any(not 1 <= p <= 4 for p in v):
            raise ValueError("priorities are 1..4")
        return v


class Procedure(Strict):
    """What the telecontroller does for an alarm class: the steps of the checklist and the
    trade a work order for it needs."""

    trade: Ident | None = None
    steps: list[str] = Field(default_factory=list)
    auto_create: AutoCreate | None = None


class Notify(Strict):
    """Channels of ``alarms.notifications.channels`` to send to (the notification engine
    delivers, queues and retries); ``by_municipality``: the elected official's channels of
    the device's municipality."""

    channels: list[Ident] = Field(default_factory=list)
    by_municipality: dict[str, list[Ident]] = Field(default_factory=dict)


class Serious(Strict):
    """Conditions making an alarm serious, and the steps and notifications added then."""

    priorities: list[int] = Field(default_factory=lambda: [1])
    categories: list[str] = Field(default_factory=lambda: ["accident"])
    steps: list[str] = Field(default_factory=lambda: ["Call the duty manager"])
    notify: Notify = Field(default_factory=Notify)


class Position(Strict):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class Crew(Strict):
    id: Ident
    name: str = ""
    trades: list[Ident] = Field(min_length=1)
    #: local working hours "HH:MM-HH:MM" (overnight shifts wrap: "22:00-06:00")
    shift: str = "00:00-24:00"
    position: Position | None = None
    #: accounts (role agent) of the crew's members: their tablet shows the crew's visits
    agents: list[str] = Field(default_factory=list)

    @field_validator("shift")
    @classmethod
    def _shift(cls, v: str) -> str:
        if not _SHIFT.match(v):
            raise ValueError(f"shift {v!r}: expected HH:MM-HH:MM, e.g. 07:00-15:30")
        return v


class InterventionsConfig(Strict):
    enabled: bool = True
    #: trades in precedence order inside a visit (the electrician before the carpenter)
    trades: list[Ident] = Field(default_factory=lambda: list(DEFAULT_TRADES), min_length=1)
    default_trade: Ident | None = None
    sla: dict[int, Sla] = Field(default_factory=_default_sla)
    grouping_radius_m: float = Field(60.0, ge=0, le=10_000)
    photo_max_bytes: int = Field(300_000, ge=1024, le=20_000_000)
    #: compact the journal into a snapshot after this many records
    snapshot_every: int = Field(5000, ge=10)
    procedures: dict[Ident, Procedure] = Field(default_factory=dict)
    serious: Serious = Field(default_factory=Serious)
    crews: list[Crew] = Field(default_factory=list)
    #: a position reported by a crew's tablet older than this is not used by dispatch (the
    #: crew's ``position`` from this file is, and the proposal says so)
    position_max_age: Duration = Field(1800.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> InterventionsConfig:
        known = set(self.trades)
        if len(known) != len(self.trades):
            raise ValueError("trades: each trade once")
        for p in self.sla:
            if not 1 <= p <= 4:
                raise ValueError(f"sla: priority {p} is not 1..4")
        bad = [f"procedures.{n}.trade: {p.trade}" for n, p in self.procedures.items()
               if p.trade is not None and p.trade not in known]
        bad += [f"crews.{c.id}.trades: {t}" for c in self.crews for t in c.trades if t not in known]
        if self.default_trade is not None and self.default_trade not in known:
            bad.append(f"default_trade: {self.default_trade}")
        if bad:
            raise ValueError("unknown trade (not in interventions.trades): " + "; ".join(bad))
        ids = [c.id for c in self.crews]
        if len(set(ids)) != len(ids):
            raise ValueError("crews: duplicate crew id")
        return self

    def rank(self, trade: str | None) -> int:
        """Precedence of ``trade`` inside a visit (unknown trades last)."""
        try:
            return self.trades.index(trade or "")
        except ValueError:
            return len(self.trades)

    def sla_for(self, priority: int) -> Sla:
        if priority in self.sla:
            return self.sla[priority]
        return self.sla[max(self.sla)] if self.sla else _default_sla()[min(max(priority, 1), 4)]
