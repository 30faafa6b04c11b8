"""Who is asking (:class:`Identity`) and what came of it (:class:`Outcome`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import quality as Q


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller, as every front end hands it to the operator API.

    ``user`` None is an anonymous client (the site maps it to ``viewer`` or refuses it);
    ``role`` None has no rights at all. ``areas`` None may see and act on every area; a set
    restricts the user to those areas (municipalities as tenants), on every front end.
    ``via`` says where the request came from, for the audit log (``opcua 10.0.0.7:50412``,
    ``web 10.0.0.9``, ``server`` for the server's own actions).
    """

    user: str | None
    role: str | None
    areas: frozenset[str] | None = None
    via: str = ""

    @property
    def name(self) -> str:
        return self.user or "anonymous"

    def sees_area(self, area: str) -> bool:
        return self.areas is None or area in self.areas

    def sees(self, path: str) -> bool:
        """May this caller see ``path`` (a tag, device or alarm path ``area/...``)?
        Server tags (``_system/``, ``_schedules/<area>/``) follow the same rule by their area
        component; ``_system`` is visible to unrestricted users only."""
        if self.areas is None:
            return True
        head, _, rest = path.partition("/")
        if head == "_schedules":
            return rest.partition("/")[0] in self.areas
        return head in self.areas

    def with_via(self, via: str) -> Identity:
        return Identity(self.user, self.role, self.areas, via)


#: The server acting on its own behalf (schedules, procedures): every action, every area.
SERVER = Identity("server", "admin", None, "server")


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer of an operator action: an OPC UA status code, a sentence for a person, and
    data for the front end (an override's id, the new alarm state ...)."""

    status: int
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return Q.is_good(self.status)

    @property
    def status_name(self) -> str:
        return Q.name(self.status)


class OperationError(Exception):
    """An operator action refused or failed; carries its :class:`Outcome` (front ends that
    prefer exceptions raise it with :meth:`Outcome.raise_for_status`)."""

    def __init__(self, outcome: Outcome):
        super().__init__(f"{outcome.status_name}: {outcome.message}")
        self.outcome = outcome
