"""Factory of the opcua service, registered under the ``scada.services`` entry points."""

from __future__ import annotations

from typing import Any


def create(runtime: Any) -> Any:
    """Return the HMI-facing OPC UA server for this runtime, or None when ``opcua.enabled`` is off."""
    if not runtime.site.config.opcua.enabled:
        return None
    from .server import OpcUaService

    return OpcUaService(runtime)
