"""``opcua:`` section: the HMI-facing OPC UA server (owned by the OPC UA issue)."""

from __future__ import annotations

from pydantic import Field

from .common import Strict


class OpcUaServerConfig(Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(4840, ge=0, le=65535)
    allow_security_none: bool = False
    anonymous: str = "viewer"
