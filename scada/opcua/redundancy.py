"""OPC UA non-transparent redundancy for a redundant pair (Part 4 §6.6.2, Part 5 §6.3.7-6.3.8;
issue 22, docs/redundancy.md "OPC UA clients").

Both servers of a pair run an OPC UA server with its own ApplicationUri
(``urn:scada:<site>:server:<node>``) and publish in ``Server.ServerRedundancy``:

* ``RedundancySupport = Hot`` (the standby has the configuration loaded and follows the active's
  alarm state; it does not poll devices, so its live values are Bad until it takes over);
* ``ServerUriArray``: the ApplicationUris of both servers (the object's type definition is
  changed to ``NonTransparentRedundancyType``, which defines that property);
* ``Server.ServiceLevel``: 255 on the active (and a single server), 1 (Part 4 §6.6.2.4.2
  "NoData") on the standby or a fenced server, 0 ("Maintenance") while the election is not
  decided. A client of a non-transparent pair connects to both and uses the one with the
  higher ServiceLevel, switching when it changes (Part 4 §6.6.2.4.5.2 "Cold/Warm/Hot" client
  failover): this is how HMIs follow a failover by themselves.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from asyncua import Node, ua

from ..ha.role import HaState, Role

log = logging.getLogger("scada.opcua.redundancy")

SERVICE_LEVEL = {Role.SINGLE: 255, Role.ACTIVE: 255, Role.STANDBY: 1, Role.FENCED: 1,
                 Role.STARTING: 0}


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "site"


def application_uri(site_name: str, node: str | None = None) -> str:
    """The server's ApplicationUri; each server of a pair has its own."""
    base = f"urn:scada:{_slug(site_name)}:server"
    return f"{base}:{node}" if node else base


def pair_uris(site: Any) -> list[str]:
    ha = site.config.ha
    return [application_uri(site.name, n) for n in ha.nodes] if ha is not None else []


async def install(server: Any, ha: HaState, site: Any) -> None:
    """Write the redundancy nodes of a freshly built server (before it listens)."""
    session = server.iserver.isession
    if ha.pair:
        red = Node(session, ua.NodeId(ua.ObjectIds.Server_ServerRedundancy))
        try:
            await red.delete_reference(ua.ObjectIds.ServerRedundancyType,
                                       ua.ObjectIds.HasTypeDefinition)
            await red.add_reference(ua.NodeId(ua.ObjectIds.NonTransparentRedundancyType),
                                    ua.ObjectIds.HasTypeDefinition)
        except Exception as e:  # the values below are what clients read; the type is a nicety
            log.info("OPC UA: ServerRedundancy type definition left as is (%s)", e)
        await Node(session, ua.NodeId(ua.ObjectIds.Server_ServerRedundancy_RedundancySupport)).write_value(
            ua.Variant(ua.RedundancySupport.Hot, ua.VariantType.Int32))
        await Node(session, ua.NodeId(ua.ObjectIds.Server_ServerRedundancy_ServerUriArray)).write_value(
            ua.Variant(pair_uris(site), ua.VariantType.String))
    else:
        await Node(session, ua.NodeId(ua.ObjectIds.Server_ServerRedundancy_RedundancySupport)).write_value(
            ua.Variant(ua.RedundancySupport.None_, ua.VariantType.Int32))
    await set_service_level(server, ha.role)


async def set_service_level(server: Any, role: Role) -> None:
    level = SERVICE_LEVEL[role]
    await Node(server.iserver.isession, ua.NodeId(ua.ObjectIds.Server_ServiceLevel)).write_value(
        ua.Variant(level, ua.VariantType.Byte))
    log.info("OPC UA ServiceLevel %d (%s)", level, role.value)


class ServiceLevelFollower:
    """Keeps ``ServiceLevel`` equal to the role's level (listener of :class:`HaState`)."""

    def __init__(self, ha: HaState, get_server: Any):
        self._get = get_server
        self._pending: set[asyncio.Future[None]] = set()
        ha.listen(self._changed)

    def _changed(self, role: Role) -> None:
        server = self._get()
        if server is None:
            return  # install() writes the level when the server starts
        t = asyncio.ensure_future(self._write(server, role))
        self._pending.add(t)
        t.add_done_callback(self._pending.discard)

    async def _write(self, server: Any, role: Role) -> None:
        try:
            await set_service_level(server, role)
        except Exception:
            log.exception("OPC UA: could not update ServiceLevel")
