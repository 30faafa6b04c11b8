"""Run every simulated device of a site: one simulator per protocol, found by entry point.

``serve_site(site, clock, devices)`` (async) must start serving the given devices on the
addresses their ``connection`` names and return a handle with ``async aclose()``; the handle
also exposes that simulator's fault-injection API.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any

from scada.clock import Clock
from scada.site import Site

log = logging.getLogger("simulators")


class CitySimulators:
    """Handles of the running protocol simulators, by protocol name."""

    def __init__(self) -> None:
        self.handles: dict[str, Any] = {}

    def __getitem__(self, protocol: str) -> Any:
        return self.handles[protocol]

    def __contains__(self, protocol: str) -> bool:
        return protocol in self.handles

    async def aclose(self) -> None:
        for proto, h in reversed(list(self.handles.items())):
            try:
                await h.aclose()
            except Exception:
                log.exception("simulator %s failed to close", proto)
        self.handles.clear()

    async def __aenter__(self) -> CitySimulators:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def start_simulators(
    site: Site, clock: Clock, protocols: list[str] | None = None
) -> CitySimulators:
    """Start a simulator for each protocol of the site that has one installed."""
    eps = {ep.name: ep for ep in entry_points(group="scada.simulators")}
    sims = CitySimulators()
    by_proto = site.by_protocol()
    try:
        for proto, devices in by_proto.items():
            if protocols is not None and proto not in protocols:
                continue
            ep = eps.get(proto)
            if ep is None:
                log.warning("no simulator installed for protocol %s; %d devices not simulated",
                            proto, len(devices))
                continue
            serve = ep.load()
            sims.handles[proto] = await serve(site, clock, devices)
            log.info("simulating %d %s devices", len(devices), proto)
    except BaseException:
        await sims.aclose()
        raise
    return sims
