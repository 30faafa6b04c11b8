"""One Modbus TCP connection per host:port, shared by its unit ids, one request in flight.

Why a small MBAP client of our own instead of pymodbus' client (decided from the figures of
``bench/modbus_poll.py``, see docs/devices/modbus-profile.md):

* Throughput: pymodbus' client costs ~150-250 us of CPU per request; this one a fraction of
  that, which is the difference between a 34,000-luminaire city fitting in a quarter of a
  core or not.
* Transaction ids are checked here (MBAP §3.1.3): a response whose transaction or unit id is
  not the one of the request in flight is *never* assigned to it; it is counted as stale, the
  connection is reset (a late answer to a timed-out request cannot arrive on the new one).
* Malformed frames (bad protocol id, impossible length, wrong function or byte count) are
  counted and reset the connection; the parser never raises ``struct.error`` or
  ``IndexError`` (codec tests pin that).
* Timeouts and reconnect backoff are ours (the pymodbus defaults, 3 s x 4 attempts and a
  reconnect delay growing to 300 s, are far too slow for a city).

pymodbus stays the project's server (simulators and test fixtures). Requests to one device are
never pipelined: pymodbus 3.16's server drops requests pipelined in one TCP write, and most
field devices handle one at a time. :class:`ModbusLink` holds an :class:`asyncio.Lock` for the
whole request/response exchange so a write never interleaves with a poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from drivers.base import Backoff

from .codec import MalformedFrame, frame, parse_header

log = logging.getLogger("drivers.modbus")


class LinkDown(ConnectionError):
    """No connection to the device right now (refused, reset, or waiting for a reconnect)."""


class StaleResponse(MalformedFrame):
    """A response whose transaction/unit id is not the request's (MBAP §3.1.3)."""


class _Protocol(asyncio.Protocol):
    """Splits the byte stream into MBAP frames; the link waits for them one at a time."""

    __slots__ = ("buf", "closed", "error", "frames", "transport", "waiter")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.frames: deque[tuple[int, int, bytes]] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.error: Exception | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 7 and self.error is None:
            try:
                tid, _, n, unit = parse_header(bytes(buf[:7]))
            except MalformedFrame as e:
                self.error = e
                break
            if len(buf) < 7 + n:
                break
            self.frames.append((tid, unit, bytes(buf[7:7 + n])))
            del buf[:7 + n]
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)


class ModbusLink:
    """A TCP connection to one ``host:port`` (a device or a gateway with several unit ids).

    ``request`` sends one PDU and returns the response PDU; the caller parses it
    (:func:`~drivers.modbus.codec.parse_response`). Errors raised: ``TimeoutError``,
    :class:`LinkDown`, :class:`StaleResponse`, :class:`MalformedFrame`; after any of them the
    connection is closed and reopened on the next request (with backoff after a failed
    connect), so the next exchange starts on a clean stream.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float = 1.0,
        now: Callable[[], float],
        backoff: Backoff | None = None,
    ):
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.lock = asyncio.Lock()
        self._now = now
        self._proto: _Protocol | None = None
        self._tid = 0
        self._retry_at = 0.0
        self.backoff = backoff or Backoff(base=0.5, cap=30.0)
        self.stats = {"requests": 0, "timeouts": 0, "malformed": 0, "stale": 0, "resets": 0,
                      "connects": 0, "connect_failures": 0}

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def waiting(self) -> bool:
        """True while a failed connect's backoff runs (requests fail at once)."""
        return self._proto is None and self._now() < self._retry_at

    @property
    def connected(self) -> bool:
        p = self._proto
        return p is not None and not p.closed

    async def _connect(self) -> _Protocol:
        now = self._now()
        if now < self._retry_at:
            raise LinkDown(f"{self.name}: not connected; next attempt in {self._retry_at - now:.1f} s")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, proto = await loop.create_connection(_Protocol, self.host, self.port)
        except (OSError, TimeoutError) as e:
            self.stats["connect_failures"] += 1
            self._retry_at = self._now() + self.backoff.next()
            raise LinkDown(f"{self.name}: cannot connect ({type(e).__name__}: {e})") from None
        self.stats["connects"] += 1
        self.backoff.reset()
        self._proto = proto
        return proto

    def reset(self) -> None:
        """Close the connection (a stale or malformed frame, a timeout): next request reopens."""
        p = self._proto
        self._proto = None
        if p is not None:
            self.stats["resets"] += 1
            if p.transport is not None:
                p.transport.abort()

    async def aclose(self) -> None:
        p = self._proto
        self._proto = None
        if p is not None and p.transport is not None:
            p.transport.close()
            await asyncio.sleep(0)

    async def request(self, unit: int, pdu: bytes, wait_s: float) -> bytes:
        """One exchange under the connection lock (see :meth:`exchange`)."""
        async with self.lock:
            return await self.exchange(unit, pdu, wait_s)

    async def exchange(self, unit: int, pdu: bytes, wait_s: float) -> bytes:
        """Send ``pdu`` to ``unit`` and wait for its response PDU. Caller holds :attr:`lock`."""
        p = self._proto
        if p is None or p.closed:
            p = await self._connect()
        if p.frames or p.buf:
            # bytes nobody asked for (an unsolicited or duplicated answer): never hand them to
            # this request
            self.stats["stale"] += 1
            self.reset()
            p = await self._connect()
        self._tid = (self._tid + 1) & 0xFFFF
        tid = self._tid
        self.stats["requests"] += 1
        if p.transport is None:
            self.reset()
            raise LinkDown(f"{self.name}: connection has no transport")
        p.transport.write(frame(tid, unit, pdu))
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(wait_s):
                while not p.frames:
                    if p.error is not None:
                        self.stats["malformed"] += 1
                        err = p.error
                        self.reset()
                        raise MalformedFrame(f"{self.name} unit {unit}: {err}")
                    if p.closed:
                        self.reset()
                        raise LinkDown(f"{self.name}: connection closed by the device")
                    p.waiter = loop.create_future()
                    await p.waiter
        except TimeoutError:
            self.stats["timeouts"] += 1
            self.reset()
            raise TimeoutError(f"{self.name} unit {unit}: no answer within {wait_s:g} s") from None
        finally:
            p.waiter = None
        rtid, runit, rpdu = p.frames.popleft()
        if rtid != tid or runit != unit:
            self.stats["stale"] += 1
            self.reset()
            raise StaleResponse(f"{self.name}: answer with transaction {rtid} unit {runit} "
                                f"to request {tid} unit {unit}; discarded")
        if p.frames or p.buf:
            # more than one answer to one request: the stream cannot be trusted any more
            self.stats["stale"] += 1
            self.reset()
        return rpdu
