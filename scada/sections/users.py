"""``users:`` section: accounts and roles (owned by the OPC UA issue).

Each entry holds a salted password hash produced by ``scada user add NAME --role ROLE``
(see :mod:`scada.users`); plain-text passwords are rejected at load time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from .common import Ident, Strict

Role = Literal["viewer", "agent", "operator", "engineer", "admin"]


class UserConfig(Strict):
    name: Ident
    role: Role = "viewer"
    password_hash: str
    #: areas (municipalities) this user may see and act on; omitted = every area. Enforced by
    #: the operator API on every front end (OPC UA, web console, CLI through the server).
    areas: list[Ident] | None = None

    @field_validator("password_hash")
    @classmethod
    def _hash(cls, v: str) -> str:
        from ..users import validate_hash

        return validate_hash(v)
