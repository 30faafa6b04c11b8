"""The role matrix: who may do what, in one table that the server, the docs and the tests read.

OPC UA itself has no role model (Part 3 §4.8 leaves user authorisation to the server; Part 18
describes well-known roles, which we follow loosely). Roles are ordered: each role may do
everything the roles before it may. An action names the *least* role allowed to perform it;
``None`` means nobody (the action exists so that its refusal is documented and audited).

Every front end (OPC UA services and methods, the CLI, the web console, the field tablet)
maps its requests onto these actions and asks :func:`allows`; ``docs/opcua.md`` prints this
table (``scada roles --markdown`` regenerates it) and ``tests/system/test_role_matrix.py``
walks it cell by cell over OPC UA and through the CLI.

Users may further be restricted to some areas (municipalities): see
:class:`scada.operations.Identity`.

Client applications are not people on the ladder: a registered Open311 client app (its API
key is its authentication) acts as ``open311:<client>`` with the **service role**
``citizen-app``, which is outside the ordered roles and may do exactly the actions listed for it
in :data:`SERVICE_ROLES` (file a citizen report), nothing else, not even ``read``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..users import ROLES, Role, check_role

__all__ = ["ACTIONS", "BY_NAME", "ROLES", "SERVICE_ROLES", "Action", "Role", "action", "allows", "check_role",
           "markdown"]

_RANK = {r: i for i, r in enumerate(ROLES)}

#: roles outside the ladder, for client applications (never given to a user account): the
#: actions each may perform, and only those
SERVICE_ROLES: dict[str, frozenset[str]] = {
    "citizen-app": frozenset({"wo.citizen"}),
}


@dataclass(frozen=True, slots=True)
class Action:
    """One row of the role matrix."""

    name: str
    min_role: Role | None  # None: nobody may
    what: str
    opcua: tuple[str, ...] = ()  # OPC UA services / methods performing it
    cli: tuple[str, ...] = ()  # CLI commands performing it
    web: tuple[str, ...] = ()  # web console actions performing it


#: The matrix. Order = the order of the documentation table.
ACTIONS: tuple[Action, ...] = (
    Action("read", "viewer",
           "browse, read values with status and source time, subscribe, read history and alarms",
           opcua=("Browse", "Read", "TranslateBrowsePathsToNodeIds", "CreateSubscription",
                  "CreateMonitoredItems", "HistoryRead", "ConditionRefresh", "FindTags"),
           cli=("tags", "watch", "alarms", "history"),
           web=("GET /api/* (me, alarms, history, devices, trend, schedules, energy, system)",
                "GET /api/stream")),
    Action("tag.write", "operator", "write a setpoint through the owning driver (dim level, plan)",
           opcua=("Write (Value of a writable tag)",), cli=("write",), web=("POST /api/write",)),
    Action("alarm.acknowledge", "operator", "acknowledge an alarm (ISA-18.2; Part 9 Acknowledge)",
           opcua=("Acknowledge",), cli=("ack",), web=("POST /api/alarms/ack",)),
    Action("alarm.comment", "operator", "add a comment to an alarm (Part 9 AddComment)",
           opcua=("AddComment",), cli=("comment",), web=("POST /api/alarms/comment",)),
    Action("alarm.shelve", "engineer",
           "shelve or unshelve an alarm (Part 9 TimedShelve, OneShotShelve, Unshelve)",
           opcua=("TimedShelve", "OneShotShelve", "Unshelve"), cli=("shelve",),
           web=("POST /api/alarms/shelve", "POST /api/alarms/unshelve")),
    Action("device.out_of_service", "engineer",
           "put a device out of service for works, or back (ISA-18.2 out of service)",
           opcua=("RemoveFromService", "PlaceInService", "SetOutOfService"), cli=("out-of-service",),
           web=("POST /api/devices/out-of-service",)),
    Action("schedule.override", "engineer",
           "override dimming schedules, extend or cancel an override",
           opcua=("SetOverride", "CancelOverride", "Write _schedules/<area>/override_*"),
           cli=("schedule override set", "schedule override cancel"),
           web=("POST /api/overrides", "POST /api/overrides/{id}/cancel")),
    Action("gis.import", "engineer",
           "import device positions from a GIS file (GeoJSON, CSV, shapefile)",
           cli=("gis import",), web=("POST /api/gis/import",)),
    Action("wo.create", "operator", "create a work order (by hand, from an alarm or a citizen report)",
           cli=("wo create",), web=("POST /api/wo",)),
    Action("wo.citizen", "operator",
           "file a citizen report: attach it to the open order or active alarm of its device, "
           "else create a work order (origin citizen)",
           web=("POST /open311/v2/requests.{json,xml} (api_key)",)),
    Action("wo.transition", "operator",
           "move a work order through its lifecycle (approve, schedule, hold, complete, close, cancel), "
           "add notes, parts and checklist steps; close over an active fault with a comment",
           cli=("wo transition",), web=("POST /api/wo/{id}/transition", "POST /api/wo/{id}/record")),
    Action("wo.assign", "operator", "assign a work order to a crew or an agent (dispatch)",
           cli=("wo assign",), web=("POST /api/wo/{id}/assign",)),
    Action("wo.field", "agent",
           "report from the field tablet on the own crew's orders: arrived, done (note, photo), cannot complete; "
           "the crew's position",
           web=("POST /api/tablet/action", "POST /api/tablet/position")),
    Action("procedure.step", "operator", "mark a step of an alarm's procedure done",
           web=("POST /api/procedures/step",)),
    Action("address_space.edit", "admin", "add or delete nodes and references",
           opcua=("AddNodes", "DeleteNodes", "AddReferences", "DeleteReferences")),
    Action("history.update", None, "change recorded history (only the historian writes it)",
           opcua=("HistoryUpdate",)),
)

BY_NAME: dict[str, Action] = {a.name: a for a in ACTIONS}


def action(name: str) -> Action:
    """The row ``name``; an unknown action is a programming error (``ValueError`` naming it)."""
    a = BY_NAME.get(name)
    if a is None:
        raise ValueError(f"unknown action {name!r}; expected one of {', '.join(BY_NAME)}")
    return a


def allows(role: str | None, name: str) -> bool:
    """True when ``role`` may perform action ``name``. Unknown roles and ``None`` (a client the
    site refuses) may do nothing."""
    need = action(name).min_role
    if need is None:
        return False
    if role in SERVICE_ROLES:
        return name in SERVICE_ROLES[role]
    return _RANK.get(role or "", -1) >= _RANK[need]


def least_role_text(name: str) -> str:
    need = action(name).min_role
    return f"the {need} role" if need else "a role nobody has (refused to all)"


def markdown() -> str:
    """The role matrix as a Markdown table (docs/opcua.md embeds it; a test compares them)."""
    web = any(a.web for a in ACTIONS)
    cols = (*ROLES, *SERVICE_ROLES)
    head = "| action | " + " | ".join(cols) + " | OPC UA | CLI |" + (" web |" if web else "")
    sep = "|---|" + "---|" * len(cols) + "---|---|" + ("---|" if web else "")
    rows = [head, sep]
    for a in ACTIONS:
        cells = ["yes" if allows(r, a.name) else "no" for r in cols]
        rows.append(f"| `{a.name}`: {a.what} | " + " | ".join(cells) + " | "
                    + ", ".join(a.opcua) + " | " + ", ".join(f"`scada {c}`" for c in a.cli) + " |"
                    + (" " + ", ".join(a.web) + " |" if web else ""))
    return "\n".join(rows) + "\n"
