"""Factory of the alarms service, registered under the ``scada.services`` entry points."""

from __future__ import annotations

from typing import Any


def create(runtime: Any) -> Any:
    """Return the alarms service for this runtime, or None while it is disabled."""
    return None
