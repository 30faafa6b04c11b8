"""Every use of paho-mqtt internals, in one place (issue 18: library internals in one module per
library, with a test). tests/unit/test_paho_internals.py checks each assumption by name, so a
paho upgrade that breaks one fails there, loudly, not as a stalled connection at run time.

The asyncio integration (:mod:`drivers.mqtt.client`) needs four things paho's public API does
not offer in external-loop mode:

* :func:`read_packet` / :func:`handle_rc`: read every complete packet waiting in the socket on
  one readable event (``loop_read`` reads one per call when no QoS flow is pending) and hand
  an error code to paho's own error handling;
* :func:`client_socket` / :func:`swap_socket`: put a :class:`BufferedSocket` (read-ahead,
  coalesced writes) under paho; paho reads and writes only through ``Client._sock``'s
  ``recv`` / ``send`` (``_sock_recv`` / ``_sock_send``);
* :func:`drop_socket`: close the socket without a DISCONNECT (paho has no public "drop the
  socket" call in external-loop mode);
* :class:`LeanClient`: ``on_message`` called straight from paho's private dispatch (no topic
  filter matching, no callback lock: ~10 % of the ingest at 20,000 messages/s).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt


def read_packet(c: mqtt.Client) -> int:
    """Read one packet (``MQTT_ERR_AGAIN`` when the socket has no more)."""
    return c._packet_read()


def handle_rc(c: mqtt.Client, rc: int) -> None:
    """paho's own handling of an error code (connection lost: close, on_disconnect)."""
    c._loop_rc_handle(rc)  # type: ignore[arg-type]


def client_socket(c: mqtt.Client) -> Any:
    """The socket paho reads and writes through (``Client.socket()`` returns the same)."""
    return c._sock


def swap_socket(c: mqtt.Client, sock: Any) -> None:
    """Make paho read and write through ``sock`` (a wrapper of its own socket)."""
    c._sock = sock


def drop_socket(c: mqtt.Client) -> None:
    """Close paho's socket without a DISCONNECT; paho's socket-close callbacks run."""
    c._sock_close()


class LeanClient(mqtt.Client):
    """paho's client with a lean message dispatch (overrides paho's private
    ``Client._handle_on_message``, which reads ``self._userdata``).

    paho matches every incoming topic against its ``message_callback_add`` filters (unused
    here) before calling ``on_message``; at 20,000+ messages/s that costs ~10 % of the ingest.
    The callback-lock is not needed either: every socket write goes through the event loop's
    writer callback, never from inside a callback.
    """

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        cb = self.on_message
        if cb is not None:
            cb(self, self._userdata, message)


class BufferedSocket:
    """A plain TCP socket with a read-ahead buffer and coalesced writes, under paho.

    * paho reads a packet as 1 byte + remaining length byte by byte + body: four ``recv``
      system calls per message. With a burst waiting in the kernel, one 64 KiB ``recv`` now
      serves hundreds of messages.
    * paho writes each packet with its own ``send`` (one PUBACK per QoS 1 message received).
      ``send`` here only queues (up to 256 KiB, then it reports "would block" like a full
      socket); :meth:`flush_out` sends everything queued in one call after paho's write pass.
      ``close`` flushes first so a final DISCONNECT still goes out.

    Everything else is delegated to the real socket. Not used for TLS (ssl sockets buffer
    themselves and paho checks ``pending()`` on them).
    """

    __slots__ = ("_buf", "_notify", "_out", "_out_len", "_pos", "_sock")

    MAX_OUT = 256 * 1024

    def __init__(self, sock: Any, notify: Callable[[], None]):
        self._sock = sock
        self._buf = b""
        self._pos = 0
        self._out: list[bytes] = []
        self._out_len = 0
        #: called when data is queued into an empty buffer: paho also writes from inside its
        #: CONNACK handling (loop_write), outside our writer callback, so a flush is scheduled
        self._notify = notify

    def recv(self, n: int) -> bytes:
        if self._pos >= len(self._buf):
            data = self._sock.recv(65536)  # BlockingIOError propagates: paho treats it as "again"
            if len(data) <= n:
                return data
            self._buf, self._pos = data, 0
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def send(self, data: bytes | bytearray | memoryview) -> int:
        if self._out_len >= self.MAX_OUT and not self.flush_out():
            raise BlockingIOError
        if not self._out:
            self._notify()
        self._out.append(bytes(data))
        self._out_len += len(data)
        return len(data)

    def flush_out(self) -> bool:
        """Send what is queued; True when nothing is left. OSError (reset) propagates."""
        if not self._out:
            return True
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        try:
            n = self._sock.send(data)
        except BlockingIOError:
            n = 0
        rest = data[n:]
        self._out = [rest] if rest else []
        self._out_len = len(rest)
        return not rest

    def close(self) -> None:
        try:
            self.flush_out()
        except OSError:
            pass
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)
