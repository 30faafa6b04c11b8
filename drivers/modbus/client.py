"""One Modbus TCP connection per host:port, shared by its unit ids, one request in flight per unit.

Why a small MBAP client of our own instead of pymodbus' client (decided from the figures of
``bench/modbus_poll.py``, see docs/devices/modbus-profile.md):

* Throughput: pymodbus' client costs ~150-250 us of CPU per request; this one a fraction of
  that, which is the difference between a 34,000-luminaire city fitting in a quarter of a
  core or not.
* Transaction ids are checked here (MBAP §3.1.3): a response whose transaction or unit id is
  not the one of a request in flight is *never* assigned to one; it is counted as stale and
  the connection is reset (a late answer to a timed-out request cannot arrive on the new one).
* Malformed frames (bad protocol id, impossible length, wrong function or byte count) are
  counted and reset the connection; the parser never raises ``struct.error`` or
  ``IndexError`` (codec tests pin that).
* Timeouts and reconnect backoff are ours (the pymodbus defaults, 3 s x 4 attempts and a
  reconnect delay growing to 300 s, are far too slow for a city).

pymodbus stays the project's server (simulators and test fixtures). Requests to **one unit id**
are never pipelined (most field devices handle one at a time): :meth:`ModbusLink.lock_for`
gives the lock a station holds for a whole exchange, a write's read-modify-write included, so a
write never interleaves with a poll of the same device. Requests to **different unit ids**
behind one connection (a gateway) go out without waiting for each other, at most
``max_in_flight`` at once, paired with their answers by transaction id (Modbus Messaging on
TCP/IP Implementation Guide V1.0b §3.1.3, §4.2: the transaction identifier exists so that a
client can have several transactions outstanding): four silent units are then detected in
one timeout, not four in a row. ``max_in_flight: 1`` restores strictly one request in flight
per connection, for a gateway that cannot queue requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from drivers.base import Backoff

from .codec import MalformedFrame, frame, parse_header

log = logging.getLogger("drivers.modbus")


class LinkDown(ConnectionError):
    """No connection to the device right now (refused, reset, or waiting for a reconnect)."""


class StaleResponse(MalformedFrame):
    """A response whose transaction/unit id is not the request's (MBAP §3.1.3)."""


class _Protocol(asyncio.Protocol):
    """Splits the byte stream into MBAP frames and hands each to the request waiting for its
    transaction id; anything else fails every request in flight (the stream is no longer
    trusted) and the link resets the connection."""

    __slots__ = ("abandoned", "buf", "closed", "link", "pending", "transport")

    def __init__(self, link: ModbusLink) -> None:
        self.link = link
        self.buf = bytearray()
        #: transaction id -> (unit id, future of the response PDU)
        self.pending: dict[int, tuple[int, asyncio.Future[bytes]]] = {}
        #: transaction ids given up after a timeout while others were in flight: their late
        #: answer is discarded (counted stale), never handed to another request
        self.abandoned: set[int] = set()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 7:
            try:
                tid, _, n, unit = parse_header(bytes(buf[:7]))
            except MalformedFrame as e:
                self.link._broken(self, e, "malformed")
                return
            if len(buf) < 7 + n:
                return
            pdu = bytes(buf[7:7 + n])
            del buf[:7 + n]
            waiting = self.pending.pop(tid, None)
            if waiting is not None and waiting[0] == unit:
                if not waiting[1].done():
                    waiting[1].set_result(pdu)
                continue
            if waiting is None and tid in self.abandoned:
                self.abandoned.discard(tid)
                self.link.stats["stale"] += 1
                continue
            if waiting is not None:
                self.pending[tid] = waiting
            self.link._broken(self, StaleResponse(
                f"{self.link.name}: answer with transaction {tid} unit {unit} matches no request "
                "in flight; discarded"), "stale")
            return

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fail(LinkDown(f"{self.link.name}: connection closed by the device"))

    def fail(self, exc: Exception) -> None:
        pending, self.pending = self.pending, {}
        for _, fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)


class ModbusLink:
    """A TCP connection to one ``host:port`` (a device or a gateway with several unit ids).

    ``exchange`` sends one PDU and returns the response PDU; the caller parses it
    (:func:`~drivers.modbus.codec.parse_response`) and holds :meth:`lock_for` its unit. Errors
    raised: ``TimeoutError``, :class:`LinkDown`, :class:`StaleResponse`,
    :class:`MalformedFrame`. A malformed or stale frame closes the connection (failing every
    request in flight), as does a timeout when no other request is in flight; the next
    exchange reconnects (with backoff after a failed connect) on a clean stream.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float = 1.0,
        now: Callable[[], float],
        backoff: Backoff | None = None,
        max_in_flight: int = 1,
    ):
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.max_in_flight = max(1, int(max_in_flight))
        #: the connection's lock when one request at a time; else each unit has its own
        self.lock = asyncio.Lock()
        self._unit_locks: dict[int, asyncio.Lock] = {}
        self._slots = asyncio.Semaphore(self.max_in_flight)
        self._connecting = asyncio.Lock()
        self._now = now
        self._proto: _Protocol | None = None
        self._tid = 0
        self._retry_at = 0.0
        self.backoff = backoff or Backoff(base=0.5, cap=30.0)
        self.stats = {"requests": 0, "timeouts": 0, "malformed": 0, "stale": 0, "resets": 0,
                      "connects": 0, "connect_failures": 0, "in_flight_peak": 0}

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    def lock_for(self, unit: int) -> asyncio.Lock:
        """The lock a station holds for a whole exchange with ``unit`` (one request in flight
        per unit id; per connection when ``max_in_flight`` is 1)."""
        if self.max_in_flight == 1:
            return self.lock
        lk = self._unit_locks.get(unit)
        if lk is None:
            lk = self._unit_locks[unit] = asyncio.Lock()
        return lk

    @property
    def waiting(self) -> bool:
        """True while a failed connect's backoff runs (requests fail at once)."""
        return self._proto is None and self._now() < self._retry_at

    @property
    def connected(self) -> bool:
        p = self._proto
        return p is not None and not p.closed

    async def _connect(self) -> _Protocol:
        async with self._connecting:
            p = self._proto
            if p is not None and not p.closed:
                return p  # another request connected while this one waited
            now = self._now()
            if now < self._retry_at:
                raise LinkDown(f"{self.name}: not connected; next attempt in {self._retry_at - now:.1f} s")
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self.connect_timeout):
                    _, proto = await loop.create_connection(lambda: _Protocol(self), self.host, self.port)
            except (OSError, TimeoutError) as e:
                self.stats["connect_failures"] += 1
                self._retry_at = self._now() + self.backoff.next()
                raise LinkDown(f"{self.name}: cannot connect ({type(e).__name__}: {e})") from None
            self.stats["connects"] += 1
            self.backoff.reset()
            self._proto = proto
            return proto

    def _broken(self, p: _Protocol, exc: Exception, stat: str) -> None:
        """A frame the stream cannot explain: count it, fail what is in flight, reset."""
        self.stats[stat] += 1
        p.fail(exc)
        if self._proto is p:
            self.reset()

    def reset(self) -> None:
        """Close the connection (a stale or malformed frame, a timeout): next request reopens."""
        p = self._proto
        self._proto = None
        if p is not None:
            self.stats["resets"] += 1
            p.fail(LinkDown(f"{self.name}: connection reset"))
            if p.transport is not None:
                p.transport.abort()

    async def aclose(self) -> None:
        p = self._proto
        self._proto = None
        if p is not None and p.transport is not None:
            p.fail(LinkDown(f"{self.name}: closed"))
            p.transport.close()
            await asyncio.sleep(0)

    async def request(self, unit: int, pdu: bytes, wait_s: float) -> bytes:
        """One exchange under the unit's lock (see :meth:`exchange`)."""
        async with self.lock_for(unit):
            return await self.exchange(unit, pdu, wait_s)

    async def exchange(self, unit: int, pdu: bytes, wait_s: float) -> bytes:
        """Send ``pdu`` to ``unit`` and wait for its response PDU. Caller holds
        :meth:`lock_for` ``unit``. The ``wait_s`` timeout starts when the request is sent (a
        request waiting for a free slot on the connection does not spend it)."""
        async with self._slots:
            p = self._proto
            if p is None or p.closed:
                p = await self._connect()
            if p.transport is None:
                self.reset()
                raise LinkDown(f"{self.name}: connection has no transport")
            self._tid = (self._tid + 1) & 0xFFFF
            tid = self._tid
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            p.pending[tid] = (unit, fut)
            p.abandoned.discard(tid)
            self.stats["requests"] += 1
            if len(p.pending) > self.stats["in_flight_peak"]:
                self.stats["in_flight_peak"] = len(p.pending)
            p.transport.write(frame(tid, unit, pdu))
            try:
                async with asyncio.timeout(wait_s):
                    return await fut
            except TimeoutError:
                self.stats["timeouts"] += 1
                p.pending.pop(tid, None)
                if p.pending:
                    # others are in flight on this connection: keep it, discard a late answer
                    p.abandoned.add(tid)
                elif self._proto is p:
                    self.reset()  # a late answer cannot arrive on the next connection
                raise TimeoutError(f"{self.name} unit {unit}: no answer within {wait_s:g} s") from None
            except MalformedFrame as e:
                raise type(e)(f"{self.name} unit {unit}: {e}") from None
