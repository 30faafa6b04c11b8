"""Embedded MQTT broker for ``scada demo``: amqtt, in-process, on the same event loop.

Why: the demo must run with nothing else installed, so when a gateway connection says
``broker: embedded`` the simulator and the driver both call :func:`ensure_embedded_broker`.
The broker is process-wide and reference-counted by ``(host, port)``: in the demo the
simulators start before the runtime, so whichever comes first starts it, and it stops when
the last user releases it. amqtt speaks MQTT 3.1.1 only, so the driver's MQTT 5 -> 3.1.1
fallback is exercised by every demo run. Production sites use a real broker (Mosquitto,
EMQX, a cluster) with ``broker: "host:port"``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

log = logging.getLogger("drivers.mqtt.broker")

#: Default address of the embedded broker (demo only; tests always pick free ports).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11883


@dataclass
class _Entry:
    broker: object
    refs: int


_brokers: dict[tuple[str, int], _Entry] = {}
_lock: asyncio.Lock | None = None
_lock_loop: asyncio.AbstractEventLoop | None = None


def _get_lock() -> asyncio.Lock:
    global _lock, _lock_loop
    loop = asyncio.get_running_loop()
    if _lock is None or _lock_loop is not loop:
        _lock, _lock_loop = asyncio.Lock(), loop
    return _lock


class EmbeddedBrokerLease:
    """A reference to the shared embedded broker; ``await lease.release()`` when done."""

    def __init__(self, host: str, port: int, owned: bool = True):
        self.host = host
        self.port = port
        #: False when the broker belongs to another process (nothing to stop here)
        self.owned = owned
        self._released = not owned

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        await _release(self.host, self.port)


async def ensure_embedded_broker(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> EmbeddedBrokerLease:
    """Start the embedded broker on ``host:port`` unless this process already runs it.

    Returns a lease; the broker stops when every lease has been released. Raises
    ``OSError`` naming the address when the port is taken by something else.
    """
    async with _get_lock():
        key = (host, port)
        entry = _brokers.get(key)
        if entry is None:
            from amqtt.broker import Broker  # imported lazily: only the demo needs it

            config = {
                "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
                # anonymous access, no $SYS publisher, no packet logging: a quiet demo broker
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            }
            broker = Broker(config)
            try:
                await broker.start()
            except Exception as e:
                # another process may already run the embedded broker (simulators started by
                # `scada sim` or a benchmark in their own process): use it if it answers MQTT
                if await asyncio.to_thread(mqtt_answers, host, port):
                    log.info("an MQTT broker already answers on %s:%d (another process's embedded "
                             "broker?); using it", host, port)
                    return EmbeddedBrokerLease(host, port, owned=False)
                raise OSError(
                    f"embedded MQTT broker: cannot listen on {host}:{port} ({e}); another "
                    f"program holds the port: stop it or set drivers.mqtt.embedded_port"
                ) from e
            entry = _brokers[key] = _Entry(broker, 0)
            log.info("embedded MQTT broker (amqtt, MQTT 3.1.1) listening on %s:%d", host, port)
        entry.refs += 1
        return EmbeddedBrokerLease(host, port)


async def _release(host: str, port: int) -> None:
    async with _get_lock():
        key = (host, port)
        entry = _brokers.get(key)
        if entry is None:
            return
        entry.refs -= 1
        if entry.refs > 0:
            return
        del _brokers[key]
        try:
            await entry.broker.shutdown()  # type: ignore[attr-defined]
        except Exception:
            log.exception("embedded MQTT broker on %s:%d failed to shut down cleanly", host, port)
        log.info("embedded MQTT broker on %s:%d stopped", host, port)


def mqtt_answers(host: str, port: int, within: float = 2.0) -> bool:
    """Blocking (run it in a thread): does an MQTT broker answer a 3.1.1 CONNECT there?"""
    import time

    import paho.mqtt.client as mqtt

    got: list[bool] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv311)
    c.on_connect = lambda _c, _u, _f, rc, _p: got.append(not rc.is_failure)
    try:
        c.connect(host, port, 10)
        deadline = time.monotonic() + within
        while not got and time.monotonic() < deadline:
            c.loop(0.05)
        if got:
            c.disconnect()
            c.loop(0.05)
    except OSError:
        return False
    finally:
        sock = c.socket()
        if sock is not None:
            sock.close()
    return bool(got and got[0])


def running_brokers() -> list[tuple[str, int]]:
    """Addresses of embedded brokers currently running in this process (for tests)."""
    return list(_brokers)
