"""``users:`` section: accounts and roles (owned by the OPC UA issue)."""

from __future__ import annotations

from typing import Literal

from .common import Ident, Strict

Role = Literal["viewer", "operator", "engineer", "admin"]


class UserConfig(Strict):
    name: Ident
    role: Role = "viewer"
    password_hash: str
