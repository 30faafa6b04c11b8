"""Alarm templates in device profiles and the ``alarms:`` site section (owned by the alarm issue)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .common import Ident, Strict


class AlarmDef(Strict):
    """One alarm template of a profile, instantiated for every device using the profile."""

    name: Ident
    kind: str = "discrete"
    point: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class AlarmsConfig(Strict):
    enabled: bool = True
    journal: str = "alarms"
    notifications: dict[str, Any] = Field(default_factory=dict)
