"""``schedules:`` section: dimming profiles and calendars (owned by the schedules issue)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .common import Strict


class SchedulesConfig(Strict):
    enabled: bool = True
    profiles: dict[str, Any] = Field(default_factory=dict)
    calendars: list[Any] = Field(default_factory=list)
