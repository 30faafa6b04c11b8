# One module (over ~600 lines): one paho connection on the event loop (connect, backoff, fallback, socket plumbing); paho internals are _paho.py.
"""paho-mqtt on the asyncio event loop: no hidden network thread.

paho's external-loop mode (``examples/loop_asyncio.py``): the socket is registered with
``loop.add_reader``/``add_writer`` from paho's socket callbacks and a task calls
``loop_misc`` (keepalive PINGREQ, MQTT 3.1.1 §3.1.2.10) once a second. Around that:

* **Connect off the loop.** ``Client.connect``/``reconnect`` resolve and open the TCP (and
  TLS) connection synchronously, so they run in ``asyncio.to_thread``; socket registrations
  paho requests from that thread are handed to the loop thread with ``call_soon_threadsafe``.
* **Reconnect with backoff** (:class:`drivers.base.Backoff`, full jitter) and resubscribe on
  every CONNACK (idempotent; it also re-delivers retained gateway states).
* **MQTT 5 with 3.1.1 fallback.** ``protocol: auto`` tries MQTT 5 first; a CONNACK
  "unsupported protocol version" (or a broker that drops a v5 CONNECT) switches to 3.1.1 for
  good. Persistent session either way: MQTT 5 ``clean_start=False`` + Session Expiry Interval
  (§3.1.2.11.2), MQTT 3.1.1 ``clean_session=False`` (§3.1.2.4).
* **paho traps.** An exception escaping a callback can leave paho's loop half dead, so every
  callback is wrapped: the error is counted in ``callback_errors``, logged rate-limited and the
  connection is recycled. paho's outgoing queue is unbounded and memory-only: it is bounded
  with ``max_queued_messages_set`` and QoS 0 messages are dropped (and counted) while offline.
* **Bursts.** On each readable event all complete packets in the socket buffer are read (not
  one per event loop iteration) so ``on_message`` sees a whole burst; the driver turns a burst
  into one batch for the tag database.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.base import Backoff, RateLimitedLog

from . import _paho
from ._paho import BufferedSocket

log = logging.getLogger("drivers.mqtt.client")

#: Seconds to wait for CONNACK and SUBACK after the TCP connection is up.
CONNACK_TIMEOUT = 5.0
#: Packets read per readable event at most (so one busy connection cannot starve the loop).
MAX_PACKETS_PER_WAKEUP = 5000


@dataclass
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass
class TlsSettings:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


class MqttConnection:
    """One MQTT client connection kept alive on the running event loop.

    ``on_message(msg)``, ``on_connected(session_present)`` and ``on_disconnected()`` are plain
    callables run on the loop thread; they must be quick.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        name: str = "",
        protocol: str = "auto",
        clean_start: bool = False,
        session_expiry: int = 86400,
        keepalive: int = 30,
        username: str | None = None,
        password: str | None = None,
        tls: TlsSettings | None = None,
        will: Will | None = None,
        subscriptions: list[tuple[str, int]] | None = None,
        max_queued: int = 1000,
        max_inflight: int = 100,
        on_message: Callable[[mqtt.MQTTMessage], None] | None = None,
        on_connected: Callable[[bool], None] | None = None,
        on_disconnected: Callable[[], None] | None = None,
        backoff: Backoff | None = None,
    ):
        self.host, self.port = host, port
        self.client_id = client_id
        self.name = name or f"{client_id}@{host}:{port}"
        self.protocol_pref = protocol
        self.protocol = mqtt.MQTTv311 if protocol == "3.1.1" else mqtt.MQTTv5
        self.clean_start = clean_start
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        self.username, self.password = username, password
        self.tls = tls
        self.will = will
        self.subscriptions = list(subscriptions or [])
        self.max_queued = max_queued
        self.max_inflight = max_inflight
        self.on_message = on_message
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.backoff = backoff or Backoff(base=0.5, cap=15.0)
        self.connected = False
        self.session_present = False
        self.stats = {"connects": 0, "disconnects": 0, "callback_errors": 0, "dropped": 0,
                      "messages": 0, "published": 0}
        self._rl = RateLimitedLog(log, 30.0)
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_tid = 0
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._connected_evt = asyncio.Event()
        self._sock: Any = None
        self._want_reconnect = False
        self._fallback_tried = False
        self._closing = False
        self._sub_mid = -1
        self._fallback_pending = False
        self._connecting = False
        self._flush_scheduled = False
        self._held: list[tuple[str, bytes | str, int, bool]] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the connection task (returns at once; see :meth:`wait_connected`)."""
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._loop_tid = threading.get_ident()
            self._task = asyncio.create_task(self._run(), name=f"mqtt:{self.name}")

    async def wait_connected(self, within: float | None = None) -> bool:
        """Wait until connected (CONNACK and SUBACK received); False after ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                await self._connected_evt.wait()
        except TimeoutError:
            return False
        return True

    async def aclose(self, *, graceful: bool = True, flush_within: float = 2.0) -> None:
        """Disconnect (a clean DISCONNECT: the broker does not send the Will) and stop.

        QoS 1 messages still in flight get ``flush_within`` seconds to be acknowledged first,
        and the socket is read dry before closing: closing with unread data makes the kernel
        answer with a TCP reset, which some brokers (amqtt) handle by leaking the connection.
        """
        self._closing = True
        c = self._client
        if c is not None and self.connected and graceful:
            deadline = time.monotonic() + flush_within
            while self.queued and self.connected and time.monotonic() < deadline:  # noqa: ASYNC110 - paho has no ack event
                await asyncio.sleep(0.01)
            self._on_readable()
            try:
                c.disconnect()
                c.loop_write()
            except (OSError, ValueError):
                pass
        await self._stop_task()
        self._teardown_socket()

    async def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT (the broker publishes the Will).

        Fault injection for simulators and tests: "gateway lost its network".
        """
        self._closing = True
        await self._stop_task()
        self._teardown_socket()

    async def _stop_task(self) -> None:
        t, self._task = self._task, None
        if t is not None:
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)

    def _teardown_socket(self) -> None:
        self._unregister(self._sock)
        c, self._client = self._client, None
        if c is not None:
            sock = c.socket()
            if sock is not None:
                self._unregister(sock)
                try:
                    sock.close()
                except OSError:
                    pass
        self._set_connected(False, notify=True)

    # ------------------------------------------------------------------ publishing
    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> bool:
        """Queue a message; False (and counted) when refused: QoS 0 while offline, queue full.

        QoS 1 messages published while offline stay in paho's (bounded) queue and go out after
        reconnecting, which with a persistent session is what makes the outage lossless.
        """
        c = self._client
        if c is None or (qos == 0 and not self.connected):
            self.stats["dropped"] += 1
            return False
        if self._connecting:
            # paho is not thread-safe: while the worker thread runs connect() the message
            # waits here (bounded like paho's queue) and is handed over once it returns
            if len(self._held) + self.queued >= self.max_queued:
                self.stats["dropped"] += 1
                return False
            self._held.append((topic, payload, qos, retain))
            self.stats["published"] += 1
            return True
        info = c.publish(topic, payload, qos=qos, retain=retain)
        if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            if info.rc == mqtt.MQTT_ERR_NO_CONN and qos == 0:
                self.stats["dropped"] += 1
                return False
            self.stats["published"] += 1
            return True
        self.stats["dropped"] += 1
        self._rl.every(f"drop:{self.name}", time.monotonic(), "MQTT %s: outgoing queue full "
                       "(%d messages); message to %s dropped", self.name, self.max_queued, topic)
        return False

    @property
    def queued(self) -> int:
        c = self._client
        return len(getattr(c, "_out_messages", ())) if c is not None else 0

    # ------------------------------------------------------------------ paho client
    def _make_client(self) -> mqtt.Client:
        v5 = self.protocol == mqtt.MQTTv5
        c = _paho.LeanClient(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else self.clean_start,
            protocol=self.protocol,
        )
        c.suppress_exceptions = True  # second line of defence; our wrappers come first
        c.max_queued_messages_set(self.max_queued)
        c.max_inflight_messages_set(self.max_inflight)
        if self.username is not None:
            c.username_pw_set(self.username, self.password)
        if self.tls is not None:
            ctx = ssl.create_default_context(cafile=self.tls.ca_file)
            if self.tls.cert_file:
                ctx.load_cert_chain(self.tls.cert_file, self.tls.key_file)
            if self.tls.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            c.tls_set_context(ctx)
        if self.will is not None:
            c.will_set(self.will.topic, self.will.payload, self.will.qos, self.will.retain)
        c.on_connect = self._wrap(self._on_connect)
        c.on_disconnect = self._wrap(self._on_disconnect)
        c.on_message = self._wrap(self._on_message)
        c.on_subscribe = self._wrap(self._on_subscribe)
        c.on_socket_open = self._wrap(self._on_socket_open)
        c.on_socket_close = self._wrap(self._on_socket_close)
        c.on_socket_register_write = self._wrap(self._on_register_write)
        c.on_socket_unregister_write = self._wrap(self._on_unregister_write)
        return c

    def _connect_blocking(self, c: mqtt.Client, first: bool) -> None:
        """Runs in a worker thread: TCP/TLS connect and CONNECT queued."""
        if not first:
            c.reconnect()
            return
        if self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry
            c.connect(self.host, self.port, self.keepalive, clean_start=self.clean_start,
                      properties=props)
        else:
            c.connect(self.host, self.port, self.keepalive)

    async def _run(self) -> None:
        """Keep the connection up until cancelled. Liveness: an unexpected error anywhere in
        one connection cycle is logged, counted in ``callback_errors`` and followed by a
        fresh client after the backoff; the task itself never dies silently."""
        while True:
            try:
                await self._cycle()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats["callback_errors"] += 1
                log.exception("MQTT %s: connection task failed; starting over with a new client",
                              self.name)
                self._set_connected(False, notify=True)
                self._teardown_client_socket()
                self._client = None
                await asyncio.sleep(self.backoff.next())

    async def _cycle(self) -> None:
        first = True
        while True:
            if self._client is None:
                self._client = self._make_client()
                first = True
            self._lost.clear()
            self._want_reconnect = False
            try:
                self._connecting = True
                try:
                    await asyncio.to_thread(self._connect_blocking, self._client, first)
                finally:
                    self._connecting = False
                    self._release_held()
                first = False
            except (OSError, ssl.SSLError, ValueError) as e:
                self._rl.unavailable(f"conn:{self.name}", "MQTT %s: cannot connect to %s:%d (%s); "
                                     "retrying with backoff", self.name, self.host, self.port, e)
                self._teardown_client_socket()
                await asyncio.sleep(self.backoff.next())
                continue
            # wait for CONNACK / loss, ticking loop_misc (keepalive) every second
            connack_deadline = time.monotonic() + CONNACK_TIMEOUT
            while not self._lost.is_set():
                try:
                    await asyncio.wait_for(self._lost.wait(), 1.0)
                except TimeoutError:
                    pass
                c = self._client
                if c is None or self._lost.is_set():
                    break
                if self._want_reconnect:
                    self._teardown_client_socket()
                    break
                if not self.connected and time.monotonic() > connack_deadline:
                    self._rl.unavailable(f"conn:{self.name}", "MQTT %s: no CONNACK/SUBACK from %s:%d "
                                         "within %.0f s; reconnecting", self.name, self.host,
                                         self.port, CONNACK_TIMEOUT)
                    if (self.protocol_pref == "auto" and self.protocol == mqtt.MQTTv5
                            and not self._fallback_tried):
                        self._switch_to_311()  # a 3.1.1 broker silently ignoring v5
                    else:
                        self._teardown_client_socket()
                    break
                try:
                    c.loop_misc()
                except Exception:
                    self._callback_failed("loop_misc")
            self._set_connected(False, notify=True)
            if self._fallback_pending:
                self._fallback_pending = False
                self._drop_client()
                continue  # retry at once with MQTT 3.1.1
            if self._closing:
                return
            await asyncio.sleep(self.backoff.next())

    def _release_held(self) -> None:
        held, self._held = self._held, []
        c = self._client
        for topic, payload, qos, retain in held:
            if c is None:
                self.stats["dropped"] += 1
                continue
            c.publish(topic, payload, qos=qos, retain=retain)

    def _teardown_client_socket(self) -> None:
        c = self._client
        if c is None:
            return
        sock = c.socket()
        if sock is not None:
            self._unregister(sock)
        try:
            _paho.drop_socket(c)
        except (OSError, AttributeError):
            pass
        self._sock = None

    # ------------------------------------------------------------------ socket plumbing
    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        if threading.get_ident() == self._loop_tid:
            fn(*args)
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._register_reader, sock)

    def _register_reader(self, sock: Any) -> None:
        if self._loop is None or sock.fileno() < 0:
            return
        c = self._client
        if self._closing or c is None or _paho.client_socket(c) is not sock:
            # a connect that finished in its worker thread after we were closed or replaced
            try:
                sock.close()
            except OSError:
                pass
            return
        if not isinstance(sock, ssl.SSLSocket):
            sock = BufferedSocket(sock, self._schedule_flush)
            _paho.swap_socket(c, sock)
        self._sock = sock
        self._loop.add_reader(sock, self._on_readable)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._unregister, sock)

    def _unregister(self, sock: Any) -> None:
        if self._loop is None or sock is None:
            return
        try:
            if sock.fileno() >= 0:
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
        except (OSError, ValueError):
            pass
        if sock is self._sock:
            self._sock = None

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._add_writer, sock)

    def _add_writer(self, sock: Any) -> None:
        if self._loop is not None and sock.fileno() >= 0:
            self._loop.add_writer(sock, self._on_writable)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._remove_writer, sock)

    def _remove_writer(self, sock: Any) -> None:
        if self._loop is not None and sock.fileno() >= 0:
            self._loop.remove_writer(sock)

    def _on_readable(self) -> None:
        c = self._client
        if c is None:
            return
        try:
            # paho's loop_read() reads one packet per call when no QoS flow is pending; read
            # every complete packet waiting in the socket instead so a burst is one burst.
            for _ in range(MAX_PACKETS_PER_WAKEUP):
                if c.socket() is None:
                    return
                rc = _paho.read_packet(c)
                if rc == mqtt.MQTT_ERR_AGAIN:
                    return
                if rc > 0:
                    _paho.handle_rc(c, rc)
                    return
            # budget used up: continue on the next loop iteration (the read-ahead buffer may
            # hold data the selector will not signal again)
            if self._loop is not None:
                self._loop.call_soon(self._on_readable)
        except Exception:
            self._callback_failed("read")

    def _on_writable(self) -> None:
        c = self._client
        if c is None:
            return
        try:
            c.loop_write()
            self._flush_out(c)
        except Exception:
            self._callback_failed("write")

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        c = self._client
        if c is not None:
            try:
                self._flush_out(c)
            except Exception:
                self._callback_failed("flush")

    def _flush_out(self, c: mqtt.Client) -> None:
        """Send what paho's write pass queued in the socket wrapper, in one system call."""
        sock = _paho.client_socket(c)
        if not isinstance(sock, BufferedSocket):
            return
        try:
            done = sock.flush_out()
        except OSError:
            _paho.handle_rc(c, mqtt.MQTT_ERR_CONN_LOST)
            return
        if not done and self._loop is not None:
            self._loop.add_writer(sock, self._on_writable)  # paho thinks it is all written

    # ------------------------------------------------------------------ callbacks
    def _wrap(self, fn: Callable[..., None]) -> Callable[..., None]:
        def wrapped(*args: Any) -> None:
            try:
                fn(*args)
            except Exception:
                self._callback_failed(fn.__name__)

        return wrapped

    def _callback_failed(self, where: str) -> None:
        self.stats["callback_errors"] += 1
        n = self.stats["callback_errors"]
        if n <= 5 or n % 1000 == 0:
            log.exception("MQTT %s: error in %s (#%d); the connection is recycled", self.name, where, n)
        self._want_reconnect = True
        self._on_loop(self._lost.set)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            unsupported = rc.value in (0x84, 0x01) or "protocol version" in str(rc).lower()
            if unsupported and self.protocol_pref == "auto" and self.protocol == mqtt.MQTTv5:
                log.info("MQTT %s: broker %s:%d does not speak MQTT 5; falling back to 3.1.1",
                         self.name, self.host, self.port)
                # never close paho's socket from inside its callback (it holds its callback
                # lock): the connection task rebuilds the client
                self._switch_to_311()
                return
            self._rl.unavailable(f"conn:{self.name}", "MQTT %s: broker %s:%d refused the "
                                 "connection: %s (check username/password/client id)",
                                 self.name, self.host, self.port, rc)
            self._want_reconnect = True
            self._lost.set()
            return
        self.session_present = bool(getattr(flags, "session_present", False))
        self.stats["connects"] += 1
        self.backoff.reset()
        self._rl.available(f"conn:{self.name}", "MQTT %s: connected to %s:%d again",
                           self.name, self.host, self.port)
        if self.subscriptions:
            # "connected" once the SUBACK is in: a publisher starting right after our CONNACK
            # must not overtake our subscriptions (MQTT 3.1.1 §3.8.4: SUBACK confirms them)
            _, self._sub_mid = client.subscribe(self.subscriptions)
        else:
            self._set_connected(True, notify=True)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        if mid != self._sub_mid:
            return
        failed = [str(r) for r in rcs if getattr(r, "is_failure", False)]
        if failed:
            log.warning("MQTT %s: broker refused %d of %d subscriptions (%s): check its ACL",
                        self.name, len(failed), len(self.subscriptions), ", ".join(sorted(set(failed))))
        self._set_connected(True, notify=True)

    def _switch_to_311(self) -> None:
        self._fallback_tried = True
        self.protocol = mqtt.MQTTv311
        self._fallback_pending = True
        self._lost.set()

    def _drop_client(self) -> None:
        """Forget the paho client (protocol change): the next attempt builds a new one."""
        self._teardown_client_socket()
        self._client = None
        self._lost.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if self.connected:
            self.stats["disconnects"] += 1
            if not self._closing:
                self._rl.unavailable(f"conn:{self.name}", "MQTT %s: connection to %s:%d lost (%s); "
                                     "reconnecting", self.name, self.host, self.port, rc)
        elif (self.protocol_pref == "auto" and self.protocol == mqtt.MQTTv5 and not self._closing
              and not self._fallback_tried and self.stats["connects"] == 0):
            # some 3.1.1-only brokers close the socket on a v5 CONNECT instead of answering
            self._switch_to_311()
        self._set_connected(False, notify=True)
        self._lost.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.stats["messages"] += 1
        if self.on_message is not None:
            self.on_message(msg)

    def _set_connected(self, up: bool, notify: bool) -> None:
        if up == self.connected:
            return
        self.connected = up
        if up:
            self._connected_evt.set()
            cb = self.on_connected
            if notify and cb is not None:
                try:
                    cb(self.session_present)
                except Exception:
                    log.exception("MQTT %s: on_connected handler failed", self.name)
        else:
            self._connected_evt.clear()
            cb2 = self.on_disconnected
            if notify and cb2 is not None:
                try:
                    cb2()
                except Exception:
                    log.exception("MQTT %s: on_disconnected handler failed", self.name)
