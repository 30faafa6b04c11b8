"""``schedules:`` section: dimming profiles, calendars and execution settings (issue 7).

Every model is strict (unknown keys are errors), so the loader reports a mistyped field with its
file, line and path. Semantics are in docs/schedules.md; in short::

    schedules:
      dusk: sunset            # switch-on event: sunset | civil_dusk | nautical_dusk
      dawn: sunrise           # switch-off event: sunrise | civil_dawn | nautical_dawn
      profiles:
        standard:
          fade: 30s
          steps:
            - {at: dusk, level: 100}
            - {at: "22:00", level: 70}
            - {at: midnight-1h, until: midnight+4h, level: 40}
          switch_off: dawn+10min   # when the night ends (default: dawn)
      calendars:
        - {name: everyday, profile: standard, priority: 10}
        - {name: holidays, profile: full, holidays: FR, priority: 50}
        - {name: fete, profile: full, dates: ["2026-06-21"], areas: [centre], priority: 90}

``midnight`` is the *virtual midnight* of :mod:`scada.astro` (midpoint of dusk and dawn).
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from datetime import date
from typing import Any, Literal

from pydantic import Field, ModelWrapValidatorHandler, field_validator, model_validator

from .common import Duration, Ident, Strict

#: ``dusk``, ``dawn``, ``midnight`` (virtual) or ``HH:MM`` local time, with an optional signed
#: offset such as ``+10min``, ``-1h``, ``+1h30min``.
_AT = re.compile(
    r"^\s*(?P<anchor>dusk|dawn|midnight|(?P<h>\d{1,2}):(?P<m>\d{2}))"
    r"\s*(?P<off>(?:[+-]\s*(?:\d+(?:\.\d+)?\s*(?:h|min|m|s)\s*)+)*)$"
)
_OFF = re.compile(r"([+-])|(\d+(?:\.\d+)?)\s*(h|min|m|s)")
_UNIT = {"h": 3600.0, "min": 60.0, "m": 60.0, "s": 1.0}

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

#: profile names of the ``schedules:`` section being validated, so a rule naming an unknown
#: profile is reported at its own line (``schedules.calendars[3].profile``)
_PROFILES: ContextVar[frozenset[str] | None] = ContextVar("schedule_profiles", default=None)


def parse_at(v: str) -> tuple[str, float]:
    """``"midnight-1h"`` -> ``("midnight", -3600.0)``; ``"22:00"`` -> ``("clock", 79200.0)``."""
    if not isinstance(v, str):
        raise ValueError(
            f"expected dusk, dawn, midnight or HH:MM with an optional offset; got {v!r}"
        )
    m = _AT.match(v)
    if not m:
        raise ValueError(
            f"expected dusk, dawn, midnight or HH:MM with an optional offset such as "
            f"'midnight-1h' or 'dawn+10min'; got {v!r}"
        )
    off, sign = 0.0, 1.0
    for s, n, u in _OFF.findall(m["off"]):
        if s:
            sign = 1.0 if s == "+" else -1.0
        else:
            off += sign * float(n) * _UNIT[u]
    if m["h"] is not None:
        h, mi = int(m["h"]), int(m["m"])
        if h > 23 or mi > 59:
            raise ValueError(f"{v!r}: expected a local time 00:00..23:59")
        return "clock", h * 3600.0 + mi * 60.0 + off
    return m["anchor"], off


class Step(Strict):
    """From ``at`` on, the level is ``level`` %; with ``until``, the previous level comes back then."""

    at: str
    level: float = Field(ge=0, le=100)
    until: str | None = None

    @field_validator("at", "until")
    @classmethod
    def _at(cls, v: str | None) -> str | None:
        if v is not None:
            parse_at(v)
        return v


class Profile(Strict):
    """Levels over one night, between ``switch_on`` (default dusk) and ``switch_off`` (dawn).

    (Not ``on``/``off``: YAML 1.1 reads those keys as booleans.)"""

    description: str = ""
    switch_on: str = "dusk"
    switch_off: str = "dawn"
    #: Transition time of each step: the gear fades (DALI fade time, driver ramp); the check of
    #: "dimming not followed" waits this long plus the verification window.
    fade: Duration = 0.0
    steps: list[Step] = Field(min_length=1)

    @field_validator("switch_on", "switch_off")
    @classmethod
    def _at(cls, v: str) -> str:
        parse_at(v)
        return v


class Rule(Strict):
    """One calendar rule: when it applies, to what, with which profile and priority.

    All given conditions must hold (AND); a missing condition matches everything. Among the
    rules that match a luminaire on a night, the highest ``priority`` wins; ties go to the rule
    listed first (deterministic). Dates are the date the night *starts* on (evening).
    """

    name: Ident
    profile: str
    priority: int = 0
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = None
    #: ``FR``: French public holidays (incl. Easter Monday, Ascension, Whit Monday); the night
    #: *before* a holiday counts as a holiday night when ``eve: true``.
    holidays: Literal["FR"] | None = None
    eve: bool = False
    dates: list[date] | None = None
    start: date | None = Field(None, alias="from")
    end: date | None = Field(None, alias="to")
    areas: list[str] | None = None
    devices: list[str] | None = None
    groups: list[int | str] | None = None

    model_config = Strict.model_config | {"populate_by_name": True}

    @field_validator("profile")
    @classmethod
    def _known(cls, v: str) -> str:
        names = _PROFILES.get()
        if names is not None and v not in names:
            raise ValueError(
                f"unknown schedule profile {v!r}; defined: {', '.join(sorted(names)) or 'none'}"
            )
        return v

    @model_validator(mode="after")
    def _range(self) -> Rule:
        if self.start and self.end and self.end < self.start:
            raise ValueError("to: the end of the date range is before its start ('from')")
        return self


class Photocell(Strict):
    """Light sensor as the switching source, with hysteresis; astro clock when its quality is bad."""

    tag: str
    on_lux: float = Field(20.0, ge=0)
    off_lux: float = Field(40.0, ge=0)
    #: the sensor may move switching by at most this much from the astronomical times
    max_shift: Duration = 3600.0

    @model_validator(mode="after")
    def _hyst(self) -> Photocell:
        if self.off_lux <= self.on_lux:
            raise ValueError("off_lux must be above on_lux (hysteresis)")
        return self


class SchedulesConfig(Strict):
    enabled: bool = True
    dusk: Literal["sunset", "civil_dusk", "nautical_dusk"] = "sunset"
    dawn: Literal["sunrise", "civil_dawn", "nautical_dawn"] = "sunrise"
    profiles: dict[Ident, Profile] = Field(default_factory=dict)
    calendars: list[Rule] = Field(default_factory=list)
    #: used when no rule matches a luminaire (None: such luminaires are left alone)
    default_profile: str | None = None
    #: a luminaire's reported level must be within this many % of the command ...
    tolerance: float = Field(5.0, ge=0, le=100)
    #: ... by this long after the step (plus the profile's fade): about N polls of the luminaires
    verify_after: Duration = 180.0
    #: commands per second sent to the drivers (protects gateways and cabinets)
    rate_limit: float = Field(50.0, gt=0)
    #: how often overrides written by the CLI are picked up, and the engine re-evaluates
    tick: Duration = 10.0
    photocell: Photocell | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _with_profiles(cls, data: Any, handler: ModelWrapValidatorHandler[SchedulesConfig]):
        profiles = data.get("profiles") if isinstance(data, dict) else None
        names = frozenset(profiles) if isinstance(profiles, dict) else None
        token = _PROFILES.set(names)
        try:
            return handler(data)
        finally:
            _PROFILES.reset(token)

    @field_validator("default_profile")
    @classmethod
    def _default(cls, v: str | None) -> str | None:
        names = _PROFILES.get()
        if v is not None and names is not None and v not in names:
            raise ValueError(
                f"unknown schedule profile {v!r}; defined: {', '.join(sorted(names)) or 'none'}"
            )
        return v
