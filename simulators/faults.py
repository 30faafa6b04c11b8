"""Fault injection shared by every simulator: spec parsing, routing by device, control channel.

Every protocol simulator's handle exposes the same API::

    handle.inject(device_path, fault_name, **params)
    handle.clear(device_path, fault_name=None)      # None: every fault of that device
    handle.active_faults() -> list[dict]            # [{"path", "fault", "params"}, ...]
    handle.fault_names(device_path) -> tuple[str, ...]

:class:`FaultRouter` sends each request to the handle that simulates the device (found through
the site's device -> protocol), so ``scada sim --fault lamp_failure:centre/cab-001/lum-03``
and the control channel work for any protocol.

Control channel (``scada sim --control HOST:PORT``): JSON lines over TCP on loopback, one
request per line, one answer per line::

    {"op": "inject", "path": "centre/cab-001/lum-03", "fault": "lamp_failure"}
    {"op": "inject", "path": "centre/cab-001", "fault": "slow", "params": {"delay": 1.5}}
    {"op": "clear", "path": "centre/cab-001"}            # "fault" optional
    {"op": "list"}                                       # active faults
    {"op": "ping"}
    -> {"ok": true, ...}  or  {"ok": false, "error": "..."}

:func:`send_control` is a blocking client for benchmarks and scripts in another process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any, Protocol

log = logging.getLogger("simulators.faults")


class FaultError(ValueError):
    """A fault request that cannot be applied (unknown device, unknown fault, bad parameter)."""


class FaultHandle(Protocol):
    def inject(self, device_path: str, fault_name: str, **params: Any) -> None: ...
    def clear(self, device_path: str, fault_name: str | None = None) -> None: ...
    def active_faults(self) -> list[dict[str, Any]]: ...


def parse_fault_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``NAME:DEVICE_PATH[:key=value,key=value]`` -> (name, path, params).

    Values are parsed as JSON when they can be (numbers, true/false), else kept as strings:
    ``slow:centre/cab-001:delay=1.5``, ``exception:centre/cab-002:code=11``.
    """
    parts = spec.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise FaultError(
            f"fault spec {spec!r}: expected NAME:DEVICE_PATH[:key=value,...], "
            "e.g. lamp_failure:centre/cab-001/lum-03 or slow:centre/cab-001:delay=2"
        )
    name, path = parts[0].strip(), parts[1].strip()
    params: dict[str, Any] = {}
    if len(parts) == 3 and parts[2].strip():
        for item in parts[2].split(","):
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise FaultError(f"fault spec {spec!r}: parameter {item!r} is not key=value")
            try:
                params[key.strip()] = json.loads(raw)
            except json.JSONDecodeError:
                params[key.strip()] = raw.strip()
    return name, path, params


class FaultRouter:
    """Route fault requests to the simulator handle of the device's protocol."""

    def __init__(self, site: Any, handles: dict[str, Any]):
        self.site = site
        self.handles = handles
        #: device path -> protocol (a dict: a flood of 2,000 faults must not scan 34,000 devices each)
        self._protocol = {d.path: d.protocol for d in site.all_devices()}

    def _handle(self, path: str) -> Any:
        if path not in self._protocol:
            raise FaultError(
                f"unknown device {path!r}: expected a device path such as 'area/cabinet' or "
                "'area/cabinet/luminaire' from the site file"
            )
        proto = self._protocol[path]
        h = self.handles.get(proto)
        if h is None:
            raise FaultError(
                f"device {path!r} ({proto}) is not simulated in this process; "
                f"simulated protocols: {', '.join(self.handles) or 'none'}"
            )
        return h

    def inject(self, path: str, fault: str, **params: Any) -> None:
        self._handle(path).inject(path, fault, **params)

    def clear(self, path: str, fault: str | None = None) -> None:
        self._handle(path).clear(path, fault)

    def active_faults(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for h in self.handles.values():
            if hasattr(h, "active_faults"):
                out.extend(h.active_faults())
        return out

    def handle_request(self, req: Any) -> dict[str, Any]:
        """Apply one control-channel request; never raises (errors become the answer)."""
        if not isinstance(req, dict):
            return {"ok": False, "error": "expected a JSON object such as {\"op\": \"ping\"}"}
        op = req.get("op")
        try:
            if op == "ping":
                return {"ok": True}
            if op == "list":
                return {"ok": True, "faults": self.active_faults()}
            if op in ("inject", "clear"):
                path = req.get("path")
                if not isinstance(path, str):
                    raise FaultError(f"{op}: 'path' (device path string) is required")
                fault = req.get("fault")
                if op == "inject":
                    if not isinstance(fault, str):
                        raise FaultError("inject: 'fault' (fault name string) is required")
                    params = req.get("params") or {}
                    if not isinstance(params, dict):
                        raise FaultError("inject: 'params' must be an object")
                    self.inject(path, fault, **params)
                else:
                    self.clear(path, fault if isinstance(fault, str) else None)
                return {"ok": True}
            return {"ok": False, "error": f"unknown op {op!r}: expected inject, clear, list or ping"}
        except (FaultError, TypeError) as e:
            return {"ok": False, "error": str(e)}


class ControlServer:
    """JSON-lines control channel on loopback for injecting faults into a running simulator."""

    def __init__(self, router: FaultRouter, host: str = "127.0.0.1", port: int = 0):
        self.router = router
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                except json.JSONDecodeError as e:
                    ans: dict[str, Any] = {"ok": False, "error": f"not JSON: {e}"}
                else:
                    try:
                        ans = self.router.handle_request(req)
                    except Exception as e:  # a simulator bug must not cost the channel
                        log.exception("control request %r failed", req)
                        ans = {"ok": False, "error": f"simulator failed: {e!r}"}
                    if ans.get("ok") and req.get("op") in ("inject", "clear"):
                        log.info("control: %s %s %s", req["op"], req.get("fault", "*"), req["path"])
                writer.write((json.dumps(ans) + "\n").encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._conns.discard(task)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None


def send_control(host: str, port: int, *requests: dict[str, Any],
                 timeout: float = 5.0) -> list[dict[str, Any]]:
    """Blocking client: send requests on one connection, return the answers (other process)."""
    out: list[dict[str, Any]] = []
    with socket.create_connection((host, port), timeout=timeout) as s:
        f = s.makefile("rwb")
        for req in requests:
            f.write((json.dumps(req) + "\n").encode())
            f.flush()
            line = f.readline()
            if not line:
                raise ConnectionError(f"control channel {host}:{port} closed before answering")
            out.append(json.loads(line))
    return out


async def open_fault_channel(
    site: Any, handles: dict[str, Any], faults: list[tuple[str, str, dict[str, Any]]],
    control: tuple[str, int] | None, echo: Any = print,
) -> ControlServer | None:
    """Apply start-up faults to running simulators and open the control channel (if asked):
    what ``scada sim`` and ``scada demo`` both do. Returns the channel (None when disabled)."""
    router = FaultRouter(site, handles)
    for name, path, params in faults:
        router.inject(path, name, **params)
        echo(f"fault {name} on {path} {params or ''}".rstrip())
    if control is None:
        return None
    server = ControlServer(router, *control)
    await server.start()
    return server
