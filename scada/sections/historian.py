"""``historian:`` section (owned by the historian issue)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .common import Strict


class HistorianConfig(Strict):
    """Where values are stored. ``backend`` names a ``scada.historians`` entry point."""

    enabled: bool = True
    backend: str = "embedded"
    path: str = "historian"
    options: dict[str, Any] = Field(default_factory=dict)
