"""This server's role in a redundant pair, and the fencing check every write to shared state or
to a device goes through (issue 22, docs/redundancy.md).

The role is decided elsewhere (an etcd lease, :mod:`scada.ha.lease`); this module only holds the
answer and tells the parts of the server that care:

* ``single``: no ``ha:`` section, the server is alone and always active (fencing token 0);
* ``starting``: configured for a pair, the lease not decided yet: nothing polls or writes;
* ``standby``: the other server holds the lease; this one follows its state (replication) and
  does not poll, write to devices, run schedules or raise alarms;
* ``active``: this server holds the lease; ``token`` is the fencing token that came with it
  (etcd's revision of the lease key, strictly increasing from one holder to the next);
* ``fenced``: this server was active and lost the lease (or could not renew it in time): it
  stops writing at once and waits to be told it is standby again.

Writers call :meth:`HaState.check` right before the write and carry the token they got with it:
a store receiving a write stamped with a token older than the newest it has seen refuses it
(the token is what makes a paused old active harmless, the lease alone is not enough).

Promotion runs the ``on_promote`` hooks in registration order (replay what the standby followed,
finalise the alarm journal, ...) *before* the role becomes ``active`` and anything starts
polling; demotion sets the role first (writes stop at once) and then runs ``on_demote`` hooks.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import ScadaError

log = logging.getLogger("scada.ha")

Hook = Callable[[int], Awaitable[None]]
DemoteHook = Callable[[str], Awaitable[None]]


class Role(enum.Enum):
    SINGLE = "single"
    STARTING = "starting"
    STANDBY = "standby"
    ACTIVE = "active"
    FENCED = "fenced"


#: roles that may poll devices, write to them and to shared state
WRITING = frozenset({Role.SINGLE, Role.ACTIVE})


class Fenced(ScadaError, PermissionError):
    """A write refused because this server is not the active one of its pair (or a write
    stamped with a fencing token older than one already seen)."""


class HaState:
    """This node's role, its fencing token and who holds the lease (one per runtime)."""

    def __init__(self, node: str = "single", role: Role = Role.SINGLE):
        self.node = node
        self.role = role
        #: fencing token of the current term (0 for a single server, None when not writing)
        self.token: int | None = 0 if role is Role.SINGLE else None
        #: node id of the lease holder (None: nobody holds it or not known yet)
        self.holder: str | None = node if role is Role.SINGLE else None
        #: what the holder published with its lease (its URLs: opcua, web, replication)
        self.holder_info: dict[str, Any] = {}
        #: ``time.monotonic()`` after which this server may no longer write even if the elector
        #: has not run yet (set by the elector at each lease renewal to "last renewal sent +
        #: lease_ttl / 2"): a process frozen past it (a VM paused, a long GC) refuses the write
        #: it wakes up with instead of sending it before the elector fences it. None: no limit.
        self.lease_deadline: float | None = None
        self._promote: list[Hook] = []
        self._demote: list[DemoteHook] = []
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[Role], None]] = []

    # ----------------------------------------------------------------- queries
    @property
    def pair(self) -> bool:
        """True when configured as one server of a redundant pair."""
        return self.role is not Role.SINGLE

    def is_active(self) -> bool:
        return self.role in WRITING

    def check(self) -> int:
        """The fencing token to stamp a write with; :class:`Fenced` when this server may not
        write (standby, starting, fenced)."""
        if self.role not in WRITING or self.token is None:
            raise Fenced(f"server {self.node} is {self.role.value}, not active: write refused "
                         f"(the active server is {self.holder or 'not known yet'})")
        if self.lease_deadline is not None and time.monotonic() > self.lease_deadline:
            raise Fenced(f"server {self.node}: its lease was not renewed in time, write refused "
                         "(stepping down)")
        return self.token

    # ----------------------------------------------------------------- subscriptions
    def on_promote(self, hook: Hook) -> None:
        """``await hook(token)`` before this server becomes active (in registration order)."""
        self._promote.append(hook)

    def on_demote(self, hook: DemoteHook) -> None:
        """``await hook(reason)`` after this server stopped being active."""
        self._demote.append(hook)

    def listen(self, fn: Callable[[Role], None]) -> None:
        """``fn(role)`` on every role change (synchronous, on the event loop)."""
        self._listeners.append(fn)

    async def wait_change(self) -> Role:
        """Wait for the next role change and return the new role."""
        self._changed.clear()
        await self._changed.wait()
        return self.role

    # ----------------------------------------------------------------- transitions (elector)
    async def promote(self, token: int) -> None:
        """Become active with ``token`` (called by the elector once it holds the lease)."""
        if token is None or token <= 0:
            raise ValueError("a fencing token is a positive integer")
        for hook in self._promote:
            await hook(token)
        self.token = token
        self.holder = self.node
        self._set(Role.ACTIVE)
        log.warning("this server (%s) is now ACTIVE, fencing token %d", self.node, token)

    async def demote(self, role: Role, reason: str) -> None:
        """Stop writing at once (``standby`` or ``fenced``), then run the demotion hooks."""
        if role in WRITING:
            raise ValueError(f"demote to {role.value}?")
        was = self.role
        self.token = None
        self._set(role)
        if was is Role.ACTIVE:
            log.warning("this server (%s) is no longer active (%s): %s", self.node, role.value,
                        reason)
            for hook in self._demote:
                await hook(reason)

    def set_holder(self, holder: str | None, info: dict[str, Any] | None = None) -> None:
        """Record who holds the lease (from the elector's watch)."""
        self.holder = holder
        self.holder_info = dict(info or {})

    def _set(self, role: Role) -> None:
        if role is self.role:
            return
        self.role = role
        self._changed.set()
        for fn in list(self._listeners):
            try:
                fn(role)
            except Exception:  # a listener's bug must not stop a failover
                log.exception("HA role listener failed")

    def snapshot(self) -> dict[str, Any]:
        """For ``scada ha status`` and the console."""
        return {"node": self.node, "role": self.role.value, "token": self.token,
                "holder": self.holder, "holder_info": dict(self.holder_info)}
